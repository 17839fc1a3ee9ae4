//! `verify` and `rebuild` over replayed stores, and `serve` picking up a
//! rebuilt store without a restart.

use std::time::{Duration, Instant};

use crate::api::Server;
use crate::helpers::{command, export, generate, replay};

#[test]
fn verify_finds_a_replayed_store_identical_and_names_the_refunds_that_differ() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, db) = (dir.path().join("a.ndjson"), dir.path().join("b.ndjson"), dir.path().join("live.redb"));
    generate(&a, 1_500, 21, Some((0.1, 100, 0.01)));
    generate(&b, 5, 22, None);
    replay(&a, &db, None);
    let verify = |input: &std::path::Path| {
        command().args(["verify", "--db", db.to_str().unwrap(), "--input", input.to_str().unwrap()]).output().unwrap()
    };
    let same = verify(&a);
    let stdout = String::from_utf8_lossy(&same.stdout);
    assert!(same.status.success(), "{stdout}{}", String::from_utf8_lossy(&same.stderr));
    assert!(stdout.contains("1500 refunds in both, 0 differ") && stdout.contains("identical"), "{stdout}");

    // Five refunds the file does not explain.
    replay(&b, &db, None);
    let different = verify(&a);
    let stdout = String::from_utf8_lossy(&different.stdout);
    assert_eq!(different.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("5 only in the live store"), "{stdout}");
    let extra_ids: Vec<String> = std::fs::read_to_string(&b)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["refund"]["id"].as_str().map(str::to_owned))
        .collect();
    for id in &extra_ids {
        assert!(stdout.contains(id.as_str()), "the difference names {id}: {stdout}");
    }
}

#[test]
fn rebuild_swaps_a_fresh_store_under_a_running_serve_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, db) = (dir.path().join("a.ndjson"), dir.path().join("b.ndjson"), dir.path().join("live.redb"));
    generate(&a, 2_000, 23, Some((0.05, 50, 0.005)));
    generate(&b, 7, 24, None);
    replay(&a, &db, None);
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, "[[keys]]\nid = \"ops\"\nsecret = \"s\"\ntenant = \"*\"\nscopes = [\"admin\"]\n").unwrap();
    let server = Server::start(&db, &keys);
    let count = || server.get("/v1/refunds?limit=1", Some("Api-Key s"));
    let (status, body, _) = count();
    assert_eq!((status, body["count"].as_u64()), (200, Some(2_000)));

    // The projection changes (here: more events in the source), so rebuild.
    let both = dir.path().join("both.ndjson");
    let mut text = std::fs::read(&a).unwrap();
    text.extend(std::fs::read(&b).unwrap());
    std::fs::write(&both, text).unwrap();
    let rebuild =
        command().args(["rebuild", "--db", db.to_str().unwrap(), "--input", both.to_str().unwrap()]).output().unwrap();
    assert!(rebuild.status.success(), "{}", String::from_utf8_lossy(&rebuild.stderr));
    assert!(!dir.path().join("live.redb.rebuild").exists(), "the rebuilt file was renamed over the live one");

    // serve swaps the new store in within a second or so; every request on
    // the way answers 200, with the old count or the new.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body, _) = count();
        assert_eq!(status, 200, "{body}");
        let n = body["count"].as_u64().unwrap();
        assert!(n == 2_000 || n == 2_007, "{n}");
        if n == 2_007 {
            break;
        }
        assert!(Instant::now() < deadline, "serve never picked up the rebuilt store");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server);
    let rebuilt = export(&db);
    let expected_db = dir.path().join("expected.redb");
    replay(&both, &expected_db, None);
    assert_eq!(rebuilt, export(&expected_db));
}
