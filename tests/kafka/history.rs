//! A store is one projection of the whole topic: history deleted before the
//! store applied it (retention, here DeleteRecords), a store position past a
//! recreated topic's end, a compacted topic, and instances sharing a group id
//! are never served in silence.

use serde_json::json;

use super::*;

fn admin(bootstrap: &str) -> (AdminClient<DefaultClientContext>, tokio::runtime::Runtime) {
    let admin = ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin client");
    (admin, tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap())
}

/// Deletes every record of `partition` below `before`, as retention does.
fn delete_records(bootstrap: &str, topic: &str, partition: i32, before: i64) {
    let (admin, runtime) = admin(bootstrap);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(before)).unwrap();
    let result = runtime.block_on(admin.delete_records(&tpl, &AdminOptions::new())).expect("delete records");
    let low = result.elements()[0].offset();
    assert_eq!(low, Offset::Offset(before), "the partition now starts at {before}");
}

fn delete_topic(bootstrap: &str, topic: &str) {
    let (admin, runtime) = admin(bootstrap);
    let results = runtime.block_on(admin.delete_topics(&[topic], &AdminOptions::new())).expect("delete topic");
    for result in results {
        result.unwrap_or_else(|(name, err)| panic!("deleting topic {name} failed: {err}"));
    }
}

fn create_topic_with(bootstrap: &str, topic: &str, partitions: i32, config: &[(&str, &str)]) {
    let (admin, runtime) = admin(bootstrap);
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (key, value) in config {
        new = new.set(key, value);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // A topic just deleted may still be marked for deletion.
        let results = runtime.block_on(admin.create_topics([&new], &AdminOptions::new())).expect("create topic");
        match results.into_iter().next().unwrap() {
            Ok(_) => return,
            Err((_, code)) if Instant::now() < deadline => {
                eprintln!("creating {topic}: {code}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err((name, code)) => panic!("creating topic {name} failed: {code}"),
        }
    }
}

impl Runner {
    /// Waits until `/readyz` answers 503 with a body containing `needle`.
    fn wait_not_ready_with(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let (code, _, body) = self.raw_get("/readyz");
            if code == 503 && body.contains(needle) {
                return body;
            }
            assert!(Instant::now() < deadline, "/readyz never said {needle:?}: {code} {body}\n{}", self.log_tail());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Waits for the process to exit by itself.
    fn wait_exit(mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200));
                let log = self.log.lock().unwrap().join("\n");
                return (status, log);
            }
            assert!(Instant::now() < deadline, "run did not exit:\n{}", self.log_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The one gap of `/v1/status`.
fn only_gap(status: &Value) -> Value {
    let gaps = status["history_gaps"].as_array().unwrap_or_else(|| panic!("no history_gaps: {status}"));
    assert_eq!(gaps.len(), 1, "{status}");
    gaps[0].clone()
}

fn metric(runner: &Runner, prefix: &str) -> Option<f64> {
    let (_, _, metrics) = runner.raw_get("/metrics");
    metrics.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn a_fresh_replica_of_a_topic_whose_start_was_deleted_refuses_to_serve_until_told_and_then_lists_the_gap() {
    let (_guard, bootstrap) = broker();
    let scenario = Scenario::new(&bootstrap, "gap", 2_000, 21, 1);
    assert!(scenario.messages > 3_000, "{} messages", scenario.messages);
    delete_records(&bootstrap, &scenario.topic, 0, 3_000);

    // A fresh store needs offset 0: not consumed, not ready, and said
    // everywhere an operator looks.
    let db = scenario.db("fresh.redb");
    let runner = Runner::start(&scenario.instance("g-gap", &db));
    let body = runner.wait_not_ready_with("history gap", Duration::from_secs(60));
    assert!(body.contains("partition 0") && body.contains("3000") && body.contains("--accept-history-gap"), "{body}");
    let status = runner.status();
    let gap = only_gap(&status);
    assert_eq!(
        (&gap["partition"], &gap["needed"], &gap["available"], &gap["reason"], &gap["accepted"]),
        (&json!(0), &json!(0), &json!(3_000), &json!("records_deleted"), &json!(false)),
        "{status}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(recorded(&runner.status()), 0, "nothing past the gap is applied");
    assert_eq!(metric(&runner, "refund_projector_history_gaps{state=\"held\"}"), Some(1.0));
    assert!(runner.logged("ERROR") && runner.logged("history gap on"), "{}", runner.log_tail());
    // The broker's default retention (7 days) is finite: warned about.
    let warnings = status["topic_settings"]["warnings"].as_array().cloned().unwrap_or_default();
    assert!(warnings.iter().any(|w| w.as_str().unwrap().contains("retention.ms=")), "{status}");
    assert!(runner.terminate().0.success());

    // rebuild refuses to build a store that would differ from the topic's
    // whole history, and leaves nothing behind.
    let live = scenario.db("live.redb");
    let rebuild = command()
        .args(["rebuild", "--db", live.to_str().unwrap(), "--brokers", &bootstrap, "--topic", &scenario.topic])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&rebuild.stderr);
    assert!(!rebuild.status.success() && stderr.contains("history gap") && stderr.contains("3000"), "{stderr}");
    assert!(!live.exists() && !scenario.db("live.redb.rebuild").exists());

    // Told to: consumes from the partition's start; the gap stays listed,
    // accepted, across restarts, without the flag.
    let mut accepting = scenario.instance("g-gap", &db);
    accepting.extra = vec!["--accept-history-gap".into()];
    let mut runner = Runner::start(&accepting);
    let remaining = scenario.messages - 3_000;
    let status = runner.wait_caught_up(remaining, Duration::from_secs(120));
    let gap = only_gap(&status);
    assert_eq!((&gap["needed"], &gap["available"], &gap["accepted"]), (&json!(0), &json!(3_000), &json!(true)));
    assert!(gap["accepted_at"].is_string(), "{gap}");
    assert_eq!(runner.raw_get("/readyz").0, 200);
    assert!(runner.terminate().0.success());
    let mut runner = Runner::start(&scenario.instance("g-gap", &db));
    let status = runner.wait_caught_up(remaining, Duration::from_secs(60));
    assert_eq!(only_gap(&status)["accepted"], true, "{status}");
    assert_eq!(runner.raw_get("/readyz").0, 200);
    assert!(runner.terminate().0.success());

    // verify with the flag builds the same partial projection, and says
    // which history both lack.
    let verify = command()
        .args(["verify", "--db", db.to_str().unwrap(), "--brokers", &bootstrap, "--topic", &scenario.topic])
        .arg("--accept-history-gap")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{stdout}{}", String::from_utf8_lossy(&verify.stderr));
    assert!(stdout.contains("history gap accepted by the live store") && stdout.contains("identical"), "{stdout}");
}

#[test]
fn a_consumer_down_past_retention_holds_at_the_gap_and_a_recreated_topic_is_never_dropped_in_silence() {
    let (_guard, bootstrap) = broker();
    let scenario = Scenario::new(&bootstrap, "down", 1_000, 22, 1);
    let db = scenario.db("store.redb");
    let mut runner = Runner::start(&scenario.instance("g-down", &db));
    runner.wait_caught_up(scenario.messages, Duration::from_secs(120));
    assert!(runner.terminate().0.success());
    let stopped_at = i64::try_from(scenario.messages).unwrap();

    // While it is down, more arrives and retention deletes past its position.
    let more = scenario.db("more.ndjson");
    generate(&more, 1_000, 23, None);
    let extra = produce_file(&bootstrap, &scenario.topic, &more);
    delete_records(&bootstrap, &scenario.topic, 0, stopped_at + 500);
    let runner = Runner::start(&scenario.instance("g-down", &db));
    runner.wait_not_ready_with("history gap", Duration::from_secs(60));
    let gap = only_gap(&runner.status());
    assert_eq!((&gap["needed"], &gap["available"]), (&json!(stopped_at), &json!(stopped_at + 500)), "{gap}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(recorded(&runner.status()), scenario.messages, "nothing past the gap is applied");
    assert!(runner.terminate().0.success());

    // The topic deleted and recreated under the store: its position lies
    // past the new partition's end. Held, never dropping the new messages.
    delete_topic(&bootstrap, &scenario.topic);
    create_topic_with(&bootstrap, &scenario.topic, 1, &[("retention.ms", "-1")]);
    let newer = scenario.db("newer.ndjson");
    generate(&newer, 100, 24, None);
    let fresh = produce_file(&bootstrap, &scenario.topic, &newer);
    assert!(fresh < scenario.messages + extra);
    let runner = Runner::start(&scenario.instance("g-down", &db));
    runner.wait_not_ready_with("recreated", Duration::from_secs(60));
    let status = runner.status();
    let gap = only_gap(&status);
    assert_eq!(
        (&gap["needed"], &gap["available"], &gap["reason"]),
        (&json!(stopped_at), &json!(fresh), &json!("offset_beyond_end")),
        "{status}"
    );
    assert!(status["topic_settings"]["warnings"].as_array().unwrap().is_empty(), "retention.ms=-1: {status}");
    assert!(runner.terminate().0.success());

    // Told to: the new topic is consumed from its start, every new message.
    let mut accepting = scenario.instance("g-down", &db);
    accepting.extra = vec!["--accept-history-gap".into()];
    let mut runner = Runner::start(&accepting);
    let status = runner.wait_caught_up(scenario.messages + fresh, Duration::from_secs(120));
    let gap = only_gap(&status);
    assert_eq!((&gap["reason"], &gap["accepted"]), (&json!("offset_beyond_end"), &json!(true)), "{status}");
    assert_eq!(status["partitions"][0]["applied_offset"], json!(fresh), "{status}");
    assert!(runner.terminate().0.success());
}

#[test]
fn a_gap_met_mid_run_is_accepted_and_the_partition_resumes_past_it_with_nothing_else_lost() {
    let (_guard, bootstrap) = broker();
    let scenario = Scenario::new(&bootstrap, "midrun", 30_000, 25, 1);
    let end = i64::try_from(scenario.messages).unwrap();
    let cut = end * 4 / 5;
    // A consumer that prefetches a few thousand messages and applies small
    // batches, so that it is far behind when retention strikes, and has
    // messages read ahead when it meets the deleted offsets.
    let db = scenario.db("store.redb");
    let mut instance = scenario.instance("g-midrun", &db);
    instance.extra = ["--accept-history-gap", "--batch-events", "50"].map(String::from).to_vec();
    for option in ["queued.max.messages.kbytes=1024", "max.partition.fetch.bytes=65536"] {
        instance.extra.extend(["--kafka-option".to_owned(), option.to_owned()]);
    }
    let runner = Runner::start(&instance);
    let deadline = Instant::now() + Duration::from_secs(60);
    while recorded(&runner.status()) < 2_000 {
        assert!(Instant::now() < deadline, "nothing applied:\n{}", runner.log_tail());
        std::thread::sleep(Duration::from_millis(20));
    }
    delete_records(&bootstrap, &scenario.topic, 0, cut);

    // It meets the deleted offsets while running, accepts the gap, drops the
    // partition's queue and read-ahead, and consumes again from the new start.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        let status = runner.status();
        let done = status["history_gaps"].as_array().is_some_and(|g| g.len() == 1)
            && status["partitions"][0]["applied_offset"] == json!(end)
            && status["partitions"][0]["lag"] == 0
            && status["dead_letters_pending"] == 0;
        if done {
            break status;
        }
        assert!(Instant::now() < deadline, "never resumed past the gap: {status}\n{}", runner.log_tail());
        std::thread::sleep(Duration::from_millis(200));
    };
    let gap = only_gap(&status);
    assert_eq!((&gap["available"], &gap["accepted"]), (&json!(cut), &json!(true)), "{gap}");
    let needed = gap["needed"].as_i64().unwrap();
    eprintln!("midrun: the gap was met at offset {needed} of {end}; the partition starts at {cut}");
    assert!((2_000..cut).contains(&needed), "the gap was met mid-run, not at start: {gap}");
    assert_eq!(
        recorded(&status),
        u64::try_from(needed + end - cut).unwrap(),
        "every message before the gap and from the new start recorded once, none from inside it: {status}"
    );
    assert!(runner.terminate().0.success());

    // The store equals a replay of exactly those messages.
    // Lines as bytes: the noise includes lines that are not UTF-8.
    let bytes = std::fs::read(&scenario.events).unwrap();
    let lines: Vec<&[u8]> =
        bytes.split(|&b| b == b'\n').filter(|l| !l.iter().all(|&b| b == b' ' || b == b'\t')).collect();
    assert_eq!(lines.len(), usize::try_from(end).unwrap(), "one message per non-blank line");
    let mut kept = Vec::new();
    for (offset, line) in (0..).zip(&lines) {
        if offset < needed || offset >= cut {
            kept.extend_from_slice(line);
            kept.push(b'\n');
        }
    }
    let expected = scenario.db("expected.ndjson");
    std::fs::write(&expected, kept).unwrap();
    let replayed = scenario.db("expected.redb");
    replay(&expected, &replayed, None);
    assert!(export(&db) == export(&replayed), "the store differs from a replay of the messages around the gap");
}

#[test]
fn a_compacted_topic_is_refused_at_start_with_the_reason() {
    let (_guard, bootstrap) = broker();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, KEYS).unwrap();
    let topic = unique_topic("compact");
    create_topic_with(&bootstrap, &topic, 1, &[("cleanup.policy", "compact")]);
    let db = dir.path().join("store.redb");
    let instance = Instance {
        bootstrap: &bootstrap,
        topic: &topic,
        group: "g-compact",
        db: &db,
        keys: &keys,
        extra: vec![],
        env: vec![],
    };
    let (exit, log) = Runner::start(&instance).wait_exit(Duration::from_secs(60));
    assert!(!exit.success(), "{log}");
    assert!(log.contains("cleanup.policy=compact") && log.contains("refund id"), "{log}");
}

#[test]
fn two_instances_given_the_same_group_id_each_build_the_whole_projection_and_stay_current() {
    let (_guard, bootstrap) = broker();
    let scenario = Scenario::new(&bootstrap, "samegroup", 2_000, 25, 6);
    let (db_a, db_b) = (scenario.db("a.redb"), scenario.db("b.redb"));
    let mut a = Runner::start(&scenario.instance("g-same", &db_a));
    let mut b = Runner::start(&scenario.instance("g-same", &db_b));
    a.wait_caught_up(scenario.messages, Duration::from_secs(120));
    let status = b.wait_caught_up(scenario.messages, Duration::from_secs(120));
    assert_eq!(status["partitions"].as_array().unwrap().len(), 6, "{status}");
    // Updates for every partition keep reaching both.
    let more = scenario.db("more.ndjson");
    generate(&more, 300, 26, None);
    let extra = produce_file(&bootstrap, &scenario.topic, &more);
    a.wait_caught_up(scenario.messages + extra, Duration::from_secs(120));
    b.wait_caught_up(scenario.messages + extra, Duration::from_secs(120));
    assert_eq!((a.raw_get("/readyz").0, b.raw_get("/readyz").0), (200, 200));
    assert!(a.terminate().0.success() && b.terminate().0.success());
    let replayed = scenario.db("replayed-both.redb");
    replay(&scenario.events, &replayed, None);
    replay(&more, &replayed, None);
    assert_eq!(export(&db_a), export(&replayed), "every refund of every partition in the first store");
    assert_eq!(export(&db_b), export(&replayed), "and in the second");
}
