//! `docker-compose.yml` and the `Dockerfile` checked against the binary (no
//! Docker engine runs on the development machines): services, ports, health
//! checks, the image's entrypoint, and every flag they pass.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::{repo_root, run_ok};

fn compose() -> Value {
    let text = std::fs::read_to_string(repo_root().join("docker-compose.yml")).unwrap();
    serde_norway::from_str(&text).expect("docker-compose.yml is YAML")
}

/// The long flags a subcommand accepts, from its `--help`.
fn flags_of(subcommand: &str) -> BTreeSet<String> {
    let help = String::from_utf8(run_ok(&[subcommand, "--help"]).stdout).unwrap();
    help.split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-').to_owned())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Asserts that `args` (a subcommand and its flags) is a command line the
/// binary accepts, flag by flag.
fn assert_accepted(args: &[String], context: &str) {
    let subcommand = &args[0];
    let flags = flags_of(subcommand);
    for arg in &args[1..] {
        if let Some(flag) = arg.strip_prefix("--") {
            let flag = flag.split('=').next().unwrap();
            assert!(flags.contains(flag), "{context}: `{subcommand}` has no --{flag} (it has {flags:?})");
        }
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn flag_value<'a>(args: &'a [String], flag: &str) -> &'a str {
    let at = args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("{flag} in {args:?}"));
    &args[at + 1]
}

fn port_of(address: &str) -> &str {
    address.rsplit(':').next().unwrap()
}

#[test]
fn compose_services_ports_health_checks_and_flags_agree_with_the_binary() {
    let doc = compose();
    let services = doc["services"].as_object().expect("services");
    for name in ["kafka", "kafka-init", "refund-projector", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "service {name}");
    }

    let kafka = &services["kafka"];
    assert!(kafka["image"].as_str().unwrap().starts_with("apache/kafka:"), "the official Apache Kafka image");
    assert_eq!(kafka["environment"]["KAFKA_PROCESS_ROLES"], "broker,controller", "KRaft, one node");
    assert!(kafka["healthcheck"]["test"].is_array(), "kafka has a health check");

    let app = &services["refund-projector"];
    assert_eq!(app["build"], ".");
    assert!(repo_root().join("Dockerfile").exists());
    let command = strings(&app["command"]);
    assert_eq!(command[0], "run");
    assert_accepted(&command, "refund-projector service");
    assert_eq!(flag_value(&command, "--brokers"), "kafka:9092", "the broker is the kafka service");
    let listen_port = port_of(flag_value(&command, "--listen"));
    let published: Vec<String> = strings(&app["ports"]);
    assert!(published.iter().any(|p| port_of(p) == listen_port), "{published:?} publishes port {listen_port}");
    assert_eq!(app["depends_on"]["kafka"]["condition"], "service_healthy");
    assert_eq!(app["depends_on"]["kafka-init"]["condition"], "service_completed_successfully");

    let health = strings(&app["healthcheck"]["test"]);
    assert_eq!(health[..3], ["CMD", "refund-projector", "probe"]);
    assert_eq!(health[3], format!("http://127.0.0.1:{listen_port}/readyz"), "the health check probes /readyz");
    run_ok(&["probe", "--help"]);

    let keys = flag_value(&command, "--api-keys");
    let mounted = strings(&app["volumes"])
        .into_iter()
        .find(|v| v.split(':').nth(1) == Some(keys))
        .unwrap_or_else(|| panic!("{keys} is mounted"));
    let keys_file = repo_root().join(mounted.split(':').next().unwrap().trim_start_matches("./"));
    let keys_toml: toml::Table = std::fs::read_to_string(&keys_file).unwrap().parse().unwrap();
    assert!(keys_toml["keys"].as_array().is_some_and(|k| !k.is_empty()));
    let db = flag_value(&command, "--db");
    assert!(
        strings(&app["volumes"]).iter().any(|v| db.starts_with(v.split(':').nth(1).unwrap())),
        "the store is on a volume"
    );

    // The one-shot service: a pipeline of two refund-projector commands.
    let init = &services["kafka-init"];
    assert_eq!(init["restart"], "no");
    let script = strings(&init["command"]).join(" ");
    let stages: Vec<&str> = script.split('|').map(str::trim).collect();
    assert_eq!(stages.len(), 2, "{script}");
    for stage in &stages {
        let words: Vec<String> = stage.split_whitespace().map(str::to_owned).collect();
        assert_eq!(words[0], "refund-projector", "{stage}");
        assert_accepted(&words[1..], "kafka-init");
    }
    let produce: Vec<String> = stages[1].split_whitespace().map(str::to_owned).collect();
    assert_eq!(flag_value(&produce, "--topic"), flag_value(&command, "--topic"), "init produces to the consumed topic");
    assert!(produce.iter().any(|w| w == "--create-partitions"), "init creates the topics");

    for name in ["prometheus", "grafana"] {
        assert_eq!(strings(&services[name]["profiles"]), ["monitoring"], "{name} is in the monitoring profile");
    }
    let prometheus: Value =
        serde_norway::from_str(&std::fs::read_to_string(repo_root().join("config/prometheus.yml")).unwrap()).unwrap();
    let job = &prometheus["scrape_configs"][0];
    assert_eq!(job["metrics_path"], "/metrics");
    assert_eq!(strings(&job["static_configs"][0]["targets"]), [format!("refund-projector:{listen_port}")]);
}

#[test]
fn the_grafana_dashboard_charts_lag_apply_rate_dead_letters_and_latency_from_metrics_the_binary_emits() {
    let text = std::fs::read_to_string(repo_root().join("config/grafana/dashboards/refund-projector.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let described = std::fs::read_to_string(repo_root().join("crates/refund-projector/src/telemetry.rs")).unwrap();
    let titles: Vec<String> =
        dashboard["panels"].as_array().unwrap().iter().map(|p| p["title"].as_str().unwrap().to_lowercase()).collect();
    for wanted in ["lag", "apply rate", "dead letters", "api latency"] {
        assert!(titles.iter().any(|t| t.contains(wanted)), "a panel for {wanted}: {titles:?}");
    }
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for at in expr.match_indices("refund_projector_").map(|(i, _)| i) {
                let name: String = expr[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                let name = name.trim_end_matches("_bucket");
                assert!(described.contains(&format!("\"{name}\"")), "{name} (in {expr}) is a metric the binary emits");
            }
        }
    }
}

#[test]
fn the_dockerfile_builds_in_stages_and_runs_the_binary_as_a_non_root_user() {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    let stages: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let last_stage = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let runtime = &lines[last_stage..];
    let instruction = |name: &str| -> Option<&str> {
        runtime.iter().rev().find(|l| l.starts_with(&format!("{name} "))).map(|l| l[name.len() + 1..].trim())
    };
    assert!(stages.last().unwrap().contains("slim"), "a small runtime image: {}", stages.last().unwrap());
    let user = instruction("USER").expect("the runtime stage sets USER");
    assert!(!user.starts_with("root") && !user.starts_with('0'), "non-root: {user}");
    let entrypoint: Vec<String> = serde_json::from_str(instruction("ENTRYPOINT").unwrap()).expect("exec form");
    assert_eq!(entrypoint, ["refund-projector"]);
    assert!(
        runtime.iter().any(|l| l.starts_with("COPY --from=builder") && l.ends_with("/usr/local/bin/refund-projector")),
        "the binary is copied from the builder onto the PATH"
    );
    let cmd: Vec<String> = serde_json::from_str(instruction("CMD").unwrap()).expect("exec form");
    assert_accepted(&cmd, "Dockerfile CMD");
    let listen_port = port_of(flag_value(&cmd, "--listen")).to_owned();
    assert_eq!(instruction("EXPOSE"), Some(listen_port.as_str()));
    let health_at = runtime.iter().position(|l| l.starts_with("HEALTHCHECK")).expect("a HEALTHCHECK");
    let health = runtime[health_at..].iter().find(|l| l.starts_with("CMD ")).unwrap();
    let health: Vec<String> = serde_json::from_str(&health[4..]).unwrap();
    assert_eq!(health, ["refund-projector", "probe", &format!("http://127.0.0.1:{listen_port}/readyz")]);
}
