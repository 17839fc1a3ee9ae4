//! The TOML `--config` file: every flag by name (`db = "refunds.redb"`,
//! `group_id` or `group-id`), and librdkafka settings in a `[kafka]` table.
//!
//! Precedence is flag, then environment variable, then file, then default:
//! the file's settings are appended to the command line only for flags that
//! neither the command line nor the environment gives. A key that no
//! command knows is an error naming it (a typo must not pass silently); a key
//! another command knows (a shared file with `brokers` read by `serve`) is
//! ignored.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::CommandFactory;

use crate::Cli;

/// `args` with the config file's settings appended.
pub fn args_with_config(args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let Some(path) = config_path(&args) else {
        return Ok(args);
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("failed to read the config file {}", path.display()))?;
    let table: toml::Table =
        text.parse().with_context(|| format!("invalid TOML in the config file {}", path.display()))?;
    merge(args, &table, &path.display().to_string())
}

fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(value) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(value));
        }
    }
    std::env::var_os("REFUND_PROJECTOR_CONFIG").map(PathBuf::from)
}

fn merge(mut args: Vec<OsString>, table: &toml::Table, path: &str) -> anyhow::Result<Vec<OsString>> {
    let cli = Cli::command();
    let given: Vec<String> = args.iter().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    let subcommand = given.iter().find_map(|a| cli.find_subcommand(a));
    let Some(subcommand) = subcommand else {
        // No command yet: clap reports that.
        return Ok(args);
    };
    let known_anywhere = |long: &str| {
        cli.get_arguments()
            .chain(cli.get_subcommands().flat_map(|s| s.get_arguments()))
            .any(|a| a.get_long() == Some(long))
    };
    let mut extra: Vec<OsString> = Vec::new();
    for (key, value) in table {
        if key == "kafka" {
            let toml::Value::Table(options) = value else {
                bail!("{path}: [kafka] must be a table of librdkafka settings");
            };
            if subcommand.get_arguments().all(|a| a.get_long() != Some("kafka-option")) {
                continue;
            }
            // A list merges per key: command line, then environment, then
            // file. Once any --kafka-option is on the command line clap
            // ignores the environment, so its entries are passed on as
            // arguments too.
            let from_env: Vec<String> = std::env::var(KAFKA_OPTION_ENV)
                .map(|v| v.split(';').filter(|s| !s.trim().is_empty()).map(str::to_owned).collect())
                .unwrap_or_default();
            for entry in &from_env {
                let key = entry.split('=').next().unwrap_or_default();
                if !given.iter().any(|a| a.starts_with(&format!("{key}="))) {
                    extra.push("--kafka-option".into());
                    extra.push(entry.into());
                }
            }
            for (option, value) in options {
                let prefix = format!("{option}=");
                let given_before = given.iter().chain(&from_env).any(|a| a.starts_with(&prefix));
                if given_before {
                    continue;
                }
                extra.push("--kafka-option".into());
                extra.push(
                    format!("{option}={}", scalar(value).with_context(|| format!("{path}: kafka.{option}"))?).into(),
                );
            }
            continue;
        }
        let long = key.replace('_', "-");
        if long == "config" {
            bail!("{path}: a config file cannot name another (config)");
        }
        let arg = cli.get_arguments().chain(subcommand.get_arguments()).find(|a| a.get_long() == Some(long.as_str()));
        let Some(arg) = arg else {
            if known_anywhere(&long) {
                continue;
            }
            bail!("{path}: unknown setting {key} (no command has a --{long} flag)");
        };
        let on_line = given.iter().any(|a| *a == format!("--{long}") || a.starts_with(&format!("--{long}=")));
        let in_env = arg.get_env().is_some_and(|name| std::env::var_os(name).is_some());
        if on_line || in_env {
            continue;
        }
        let values: Vec<&toml::Value> = match value {
            toml::Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for value in values {
            extra.push(format!("--{long}").into());
            extra.push(scalar(value).with_context(|| format!("{path}: {key}"))?.into());
        }
    }
    args.extend(extra);
    Ok(args)
}

const KAFKA_OPTION_ENV: &str = "REFUND_PROJECTOR_KAFKA_OPTION";

fn scalar(value: &toml::Value) -> anyhow::Result<String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(_) | toml::Value::Table(_) => bail!("expected a string, number or boolean"),
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn file_settings_fill_only_what_the_command_line_leaves() {
        let table: toml::Table =
            "db = \"from-file.redb\"\nlisten = \"127.0.0.1:9\"\ngroup_id = \"g\"\n[kafka]\n\"security.protocol\" = \"SASL_SSL\"\n"
                .parse()
                .unwrap();
        let args = merge(os(&["rp", "run", "--db", "line.redb"]), &table, "c.toml").unwrap();
        let args = strings(args);
        assert!(!args.contains(&"from-file.redb".to_owned()), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["--listen", "127.0.0.1:9"]), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["--group-id", "g"]), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["--kafka-option", "security.protocol=SASL_SSL"]), "{args:?}");
    }

    #[test]
    fn the_example_config_names_only_known_settings() {
        let table: toml::Table = include_str!("../../../config/refund-projector.example.toml").parse().unwrap();
        let args = strings(merge(os(&["rp", "run"]), &table, "example").unwrap());
        assert!(args.windows(2).any(|w| w == ["--group-id", "refunds-dashboard"]), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["--kafka-option", "sasl.mechanisms=SCRAM-SHA-512"]), "{args:?}");
        Cli::try_parse_from(args).expect("the example parses as a run command line");
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        let table: toml::Table = "brokres = \"x\"\n".parse().unwrap();
        let err = merge(os(&["rp", "run"]), &table, "c.toml").unwrap_err().to_string();
        assert!(err.contains("brokres"), "{err}");
    }

    #[test]
    fn a_key_of_another_command_is_ignored() {
        let table: toml::Table = "brokers = \"b:9092\"\ndb = \"x.redb\"\n".parse().unwrap();
        let args = strings(merge(os(&["rp", "serve"]), &table, "c.toml").unwrap());
        assert!(!args.contains(&"b:9092".to_owned()), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["--db", "x.redb"]), "{args:?}");
    }
}
