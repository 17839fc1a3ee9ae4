//! `generate`, `replay` and `export`, run as a user would run them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{command, export, generate, replay, run_ok};

/// (line number, reason named by the generator's `inv_<reason>_` marker, raw text)
fn expected_dead_letters(events: &[u8]) -> BTreeMap<u64, (String, String)> {
    let reasons =
        ["too_large", "malformed_json", "unsupported_schema_version", "unknown_event_type", "schema_violation"];
    let mut expected = BTreeMap::new();
    for (i, line) in events.split(|&b| b == b'\n').enumerate() {
        let text = String::from_utf8_lossy(line);
        let Some(at) = text.find("inv_") else { continue };
        let reason = reasons
            .iter()
            .find(|r| text[at + 4..].starts_with(&format!("{r}_")))
            .unwrap_or_else(|| panic!("line {} has an unknown marker", i + 1));
        expected.insert(i as u64 + 1, (reason.to_string(), text.into_owned()));
    }
    expected
}

fn read_dlq(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).expect("every dead letter is one JSON object")).collect()
}

#[test]
fn a_noisy_stream_replays_to_the_export_of_its_distinct_valid_events() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean.ndjson");
    let noisy = dir.path().join("noisy.ndjson");
    generate(&clean, 3_000, 7, None);
    generate(&noisy, 3_000, 7, Some((0.2, 500, 0.02)));

    // The distinct valid events, sorted: another order, no repeats, no noise.
    let mut lines: Vec<String> = std::fs::read_to_string(&clean).unwrap().lines().map(str::to_owned).collect();
    lines.sort();
    let sorted = dir.path().join("sorted.ndjson");
    std::fs::write(&sorted, lines.join("\n") + "\n").unwrap();

    replay(&sorted, &dir.path().join("sorted.redb"), None);
    let dlq = dir.path().join("dlq.ndjson");
    replay(&noisy, &dir.path().join("noisy.redb"), Some(&dlq));
    let from_sorted = export(&dir.path().join("sorted.redb"));
    let from_noisy = export(&dir.path().join("noisy.redb"));
    assert!(from_sorted.lines().count() >= 2_900, "most generated refunds are exported");
    assert!(from_sorted == from_noisy, "duplicates, reordering and invalid lines must not change the projection");

    // Exactly the invalid lines, each once, with the right reason.
    let expected = expected_dead_letters(&std::fs::read(&noisy).unwrap());
    assert!(expected.len() > 20, "the generator produced invalid lines");
    let letters = read_dlq(&dlq);
    let mut actual = BTreeMap::new();
    for letter in &letters {
        let line = letter["line"].as_u64().expect("line is a number");
        let reason = letter["reason"].as_str().unwrap().to_owned();
        assert!(letter["message"].as_str().is_some_and(|m| !m.is_empty()), "a message explains {letter}");
        let raw = letter["raw"].as_str().unwrap().to_owned();
        assert!(actual.insert(line, (reason, raw)).is_none(), "line {line} dead-lettered twice");
    }
    assert_eq!(actual.len(), expected.len());
    for (line, (reason, raw)) in &expected {
        let (got_reason, got_raw) = &actual[line];
        assert_eq!(got_reason, reason, "line {line}");
        assert_eq!(got_raw, raw, "line {line}: raw is the line as text");
    }
}

#[test]
fn replaying_the_same_input_again_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    generate(&events, 500, 3, Some((0.1, 50, 0.02)));
    let db = dir.path().join("store.redb");
    let dlq = dir.path().join("dlq.ndjson");
    replay(&events, &db, Some(&dlq));
    let first = export(&db);
    let letters = read_dlq(&dlq).len();
    let again = replay(&events, &db, Some(&dlq));
    let summary = String::from_utf8_lossy(&again.stderr);
    assert!(summary.contains(" 0 applied"), "second run applied something: {summary}");
    assert!(summary.contains(" 0 duplicate"), "second run re-read applied lines: {summary}");
    assert_eq!(export(&db), first);
    assert_eq!(read_dlq(&dlq).len(), letters, "no dead letter is written twice");
}

#[test]
fn stdin_replays_like_a_file_and_blank_lines_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    generate(&events, 200, 5, None);
    let text = std::fs::read_to_string(&events).unwrap();
    let with_blanks: String = text.lines().flat_map(|l| [l, "", "  \t "]).collect::<Vec<_>>().join("\n");

    let from_file = dir.path().join("file.redb");
    replay(&events, &from_file, None);

    let from_stdin = dir.path().join("stdin.redb");
    let dlq = dir.path().join("dlq.ndjson");
    let mut child = command()
        .args(["replay", "--input", "-", "--db", from_stdin.to_str().unwrap(), "--dlq", dlq.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(with_blanks.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains(" 0 invalid"), "blank lines are not invalid");
    assert_eq!(read_dlq(&dlq).len(), 0);
    assert_eq!(export(&from_stdin), export(&from_file));
}

#[test]
fn replay_of_a_missing_file_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = command()
        .args(["replay", "--input", "/nonexistent/events.ndjson", "--db", dir.path().join("s.redb").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/events.ndjson"), "the error names the input: {stderr}");
}

#[test]
fn replay_killed_at_several_points_then_rerun_gives_the_uninterrupted_export() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    generate(&events, 40_000, 11, Some((0.1, 300, 0.01)));

    let reference = dir.path().join("reference.redb");
    replay(&events, &reference, None);
    let expected_export = export(&reference);

    let db = dir.path().join("killed.redb");
    let dlq = dir.path().join("dlq.ndjson");
    let args = [
        "replay",
        "--input",
        events.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--dlq",
        dlq.to_str().unwrap(),
        "--batch-events",
        "1000",
        "--durable-every-ms",
        "20",
    ];
    let mut killed_mid_run = 0;
    for delay_ms in [150, 250, 400, 300, 600] {
        let mut child = command().args(args).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
    }
    assert!(killed_mid_run >= 3, "only {killed_mid_run} kills hit a running replay; the input is too small");
    run_ok(&args);
    assert!(export(&db) == expected_export, "kill -9 and re-run must give the uninterrupted export");

    // Every invalid line reached the dead-letter file at least once.
    let expected = expected_dead_letters(&std::fs::read(&events).unwrap());
    let seen: std::collections::BTreeSet<u64> = read_dlq(&dlq).iter().map(|l| l["line"].as_u64().unwrap()).collect();
    for line in expected.keys() {
        assert!(seen.contains(line), "invalid line {line} was lost");
    }
    assert!(seen.iter().all(|l| expected.contains_key(l)), "only invalid lines are dead-lettered");
}

#[test]
fn tables_lists_every_table_with_its_rows_and_a_total_within_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (events, db) = (dir.path().join("events.ndjson"), dir.path().join("store.redb"));
    generate(&events, 2_000, 4, Some((0.05, 50, 0.0)));
    // Small batches: many commits, each leaving freed pages behind.
    let replay_args = |db: &Path| {
        ["replay", "--input", events.to_str().unwrap(), "--db", db.to_str().unwrap(), "--batch-events", "100"]
            .map(String::from)
            .to_vec()
    };
    let mut args = replay_args(&db);
    args.push("--no-compact".into());
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let output = run_ok(&["tables", "--db", db.to_str().unwrap()]);
    let text = String::from_utf8(output.stdout).unwrap();
    let rows: BTreeMap<&str, Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields[0], fields[1..].to_vec())
        })
        .collect();
    let refunds = export(&db).lines().count();
    assert_eq!(rows["refunds"][0], refunds.to_string(), "{text}");
    // Tables kept in two tiers hold each key in one of them.
    let tiers = |table: &str| -> u64 {
        [table.to_owned(), format!("{table}_recent")].iter().map(|t| rows[t.as_str()][0].parse::<u64>().unwrap()).sum()
    };
    assert_eq!(tiers("refund_homes"), refunds as u64, "{text}");
    assert!(tiers("event_ids") > 0 && tiers("by_order_no") > 0, "{text}");
    for table in ["audit_log", "by_created", "by_status", "checkpoints", "counts"] {
        assert!(rows[table][0].parse::<u64>().unwrap() > 0, "{table}: {text}");
    }
    // "all tables" is two words: its rows and MiB come after them.
    let total: f64 =
        text.lines().find(|l| l.starts_with("all tables")).unwrap().split_whitespace().nth(3).unwrap().parse().unwrap();
    let file: f64 = rows["file"][0].parse().unwrap();
    assert!(total > 0.0 && total <= file, "{text}");

    // `compact` cuts the free space and keeps every refund and trail.
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let before = (size(&db), export(&db));
    assert!(file > total * 1.3, "the replay left free pages: {text}");
    let output = run_ok(&["compact", "--db", db.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("compacted"), "{output:?}");
    assert!(size(&db) < before.0, "{} -> {}", before.0, size(&db));
    assert_eq!(export(&db), before.1);
    replay(&events, &db, None);
    assert_eq!(export(&db), before.1, "a compacted store takes more of the same input as before");

    // Without --no-compact the same replay compacts by itself.
    let by_itself = dir.path().join("by-itself.redb");
    let output = run_ok(&replay_args(&by_itself).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(String::from_utf8_lossy(&output.stderr).contains("compacted"), "{output:?}");
    assert!(size(&by_itself) * 10 < before.0 * 8, "{} against {} uncompacted", size(&by_itself), before.0);
    assert_eq!(export(&by_itself), before.1);
}
