//! `demo`: the whole system in one process, as a new user runs it.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::command;

/// `demo` on a free port with `extra` arguments: the child and its stdout
/// lines (stderr is drained).
fn spawn_demo(extra: &[&str]) -> (std::process::Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut child = command()
        .args(["demo", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || for _ in BufReader::new(stderr).lines() {});
    let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, stdout)
}

/// The demo's banner: its stdout lines up to and including the "Ctrl-C" one.
fn read_banner(stdout: &mut impl Iterator<Item = std::io::Result<String>>) -> Vec<String> {
    let mut banner = Vec::new();
    while let Some(Ok(line)) = stdout.next() {
        let done = line.starts_with("Ctrl-C");
        banner.push(line);
        if done {
            break;
        }
    }
    banner
}

#[test]
fn demo_prints_a_working_key_and_curl_line_serves_growing_right_numbers_and_stops_on_sigterm() {
    let (mut child, mut stdout) = spawn_demo(&["--rate", "3000"]);
    let banner = read_banner(&mut stdout);
    let text = banner.join("\n");
    let curl = banner.iter().find(|l| l.trim_start().starts_with("curl -H 'Authorization: Api-Key")).expect(&text);
    let header = curl.split('\'').nth(1).unwrap().to_owned();
    let url = curl.split('\'').nth(3).unwrap().to_owned();
    let base = url.split("/v1/").next().unwrap().to_owned();
    let (key_name, key_value) = header.split_once(": ").unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let get = |path: &str| -> (u16, Value) {
        let response = agent.get(format!("{base}{path}")).header(key_name, key_value).call().unwrap();
        let status = response.status().as_u16();
        (status, serde_json::from_str(&response.into_body().read_to_string().unwrap()).unwrap_or(Value::Null))
    };

    // Ready once assigned and caught up; refunds accumulate; the numbers agree.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut counts = Vec::new();
    while counts.len() < 3 || counts.windows(2).all(|w| w[0] == w[1]) {
        assert!(Instant::now() < deadline, "the demo never served growing numbers: {counts:?}\n{text}");
        let (status, body) = get(&url[base.len()..]);
        if status == 200 && body["count"].as_u64().unwrap_or(0) > 0 {
            counts.push(body["count"].as_u64().unwrap());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "counts never go back: {counts:?}");
    // The printed summary line answers with groups that add up to its count.
    let summary = banner.iter().find(|l| l.contains("/v1/refunds/summary?")).expect(&text);
    let summary_url = summary.split('\'').nth(3).unwrap().to_owned();
    let (status, body) = get(&summary_url[base.len()..]);
    assert_eq!((status, body["object"].as_str()), (200, Some("summary")), "{body}");
    let grouped: u64 = body["groups"].as_array().unwrap().iter().map(|g| g["count"].as_u64().unwrap()).sum();
    assert!(grouped > 0 && Some(grouped) == body["count"].as_u64(), "{body}");
    // Ready once caught up: the producer may run up to 5,000 events ahead
    // of the store on a loaded machine, so readiness may take a moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get("/readyz");
        if status == 200 {
            break;
        }
        eprintln!("demo not ready yet: {body}");
        assert!(Instant::now() < deadline, "the demo never became ready: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = get("/v1/status");
    assert_eq!(status, 200);
    assert_eq!(body["partitions"].as_array().unwrap().len(), 3);
    let (_, page) = get("/v1/refunds?limit=100");
    assert!(page["results"].as_array().unwrap().iter().all(|r| r["object"] == "refund"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, status) = get("/v1/status");
        if status["events_invalid"].as_u64().unwrap_or(0) > 0 && status["dead_letters_pending"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "dead letters never reached the DLQ topic: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "demo exit: {status}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the demo ignored SIGTERM for 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn demo_accepts_a_keys_file_beside_its_own_key_and_follows_its_edits() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let entry = "[[keys]]\nid = \"extra\"\nsecret = \"secret-extra\"\ntenant = \"*\"\nscopes = [\"refunds:read\"]\n";
    std::fs::write(&keys, entry).unwrap();
    let (mut child, mut stdout) = spawn_demo(&["--rate", "100", "--api-keys", keys.to_str().unwrap()]);
    let banner = read_banner(&mut stdout);
    let curl = banner.iter().find(|l| l.trim_start().starts_with("curl -H 'Authorization: Api-Key")).unwrap();
    let demo_header = curl.split('\'').nth(1).unwrap().split_once(": ").unwrap().1.to_owned();
    let url = curl.split('\'').nth(3).unwrap().to_owned();
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let status = |authorization: &str| -> u16 {
        agent.get(&url).header("Authorization", authorization).call().unwrap().status().as_u16()
    };
    assert_eq!(status("Api-Key secret-extra"), 200);
    std::fs::write(&keys, "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while status("Api-Key secret-extra") != 401 {
        assert!(Instant::now() < deadline, "the removed key still works after 5 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(&demo_header), 200, "the demo's own key is not in the file and stays");
    let _ = child.kill();
    let _ = child.wait();
}
