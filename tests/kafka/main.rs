//! End-to-end suites against a real Apache Kafka broker (KRaft, started by
//! `scripts/kafka/kafka.sh`; `scripts/test.sh` starts it and passes its
//! address in `REFUND_PROJECTOR_TEST_KAFKA`). Each test has its own topic; they
//! run one at a time (one stops the broker) under [`BROKER`].
//!
//! The exactly-once check used throughout: every message of the topic is
//! recorded exactly once, so after catch-up `events_applied +
//! events_duplicate + events_conflicting_duplicate + events_invalid` equals
//! the number of messages produced, whatever crashed or restarted meanwhile.

mod freshness;
#[path = "../blackbox/helpers.rs"]
#[allow(dead_code)]
mod helpers;
mod history;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

use helpers::{command, export, generate, replay};

/// One test at a time: they share one broker, and one of them stops it.
static BROKER: Mutex<()> = Mutex::new(());

fn broker() -> (MutexGuard<'static, ()>, String) {
    let guard = BROKER.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let bootstrap = std::env::var("REFUND_PROJECTOR_TEST_KAFKA").unwrap_or_else(|_| {
        panic!(
            "REFUND_PROJECTOR_TEST_KAFKA is not set: these tests need a real broker. Run scripts/test.sh, or \
             scripts/kafka/kafka.sh start && scripts/kafka/kafka.sh wait and set it to 127.0.0.1:19092"
        )
    });
    (guard, bootstrap)
}

const KEYS: &str = "[[keys]]\nid = \"ops\"\nsecret = \"secret-ops\"\ntenant = \"*\"\nscopes = [\"admin\"]\n";
const ADMIN: &str = "Api-Key secret-ops";

fn unique_topic(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("e2e-{name}-{}", nanos % 1_000_000_000)
}

fn create_topics(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin client");
    let dlq = format!("{topic}.dlq");
    let topics = [
        NewTopic::new(topic, partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let results = runtime.block_on(admin.create_topics(&topics, &AdminOptions::new())).expect("create topics");
    for result in results {
        result.unwrap_or_else(|(name, err)| panic!("creating topic {name} failed: {err}"));
    }
}

/// Produces every non-blank line of `file` as one message keyed by its refund
/// id (when it has one). Returns the number of messages.
fn produce_file(bootstrap: &str, topic: &str, file: &Path) -> u64 {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("message.max.bytes", "8000000")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .expect("producer");
    let bytes = std::fs::read(file).unwrap();
    let mut count = 0;
    for line in bytes.split(|&b| b == b'\n') {
        if line.iter().all(|&b| b == b' ' || b == b'\t') {
            continue;
        }
        let key = serde_json::from_slice::<Value>(line)
            .ok()
            .and_then(|v| v.pointer("/refund/id").and_then(Value::as_str).map(str::to_owned));
        let mut record = BaseRecord::<str, [u8]>::to(topic).payload(line);
        if let Some(key) = key.as_deref() {
            record = record.key(key);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
        count += 1;
    }
    producer.flush(Duration::from_secs(60)).expect("every message is acknowledged");
    count
}

/// Every message of a topic: (key, value, headers).
fn consume_topic(bootstrap: &str, topic: &str) -> Vec<(Option<String>, Value, BTreeMap<String, String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        assert!(Instant::now() < deadline, "reading {topic} took over 60 s");
        let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = message.expect("consume");
        let key = message.key().map(|k| String::from_utf8_lossy(k).into_owned());
        let value: Value = serde_json::from_slice(message.payload().unwrap_or_default()).expect("a DLQ value is JSON");
        let mut headers = BTreeMap::new();
        if let Some(hs) = message.headers() {
            for h in hs.iter() {
                headers.insert(h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned());
            }
        }
        out.push((key, value, headers));
        if ends.get(&message.partition()).is_some_and(|&end| message.offset() + 1 >= end) {
            ends.remove(&message.partition());
        }
    }
    out
}

/// The generator marks each invalid line with `inv_<reason>_`: (reason, raw).
fn invalid_lines(file: &Path) -> Vec<(String, String)> {
    let reasons =
        ["too_large", "malformed_json", "unsupported_schema_version", "unknown_event_type", "schema_violation"];
    let bytes = std::fs::read(file).unwrap();
    let mut out = Vec::new();
    for line in bytes.split(|&b| b == b'\n') {
        let text = String::from_utf8_lossy(line);
        let Some(at) = text.find("inv_") else { continue };
        let reason = reasons.iter().find(|r| text[at + 4..].starts_with(&format!("{r}_"))).expect("known marker");
        out.push((reason.to_string(), text.into_owned()));
    }
    out.sort();
    out
}

/// A `refund-projector run` child process.
struct Runner {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

struct Instance<'a> {
    bootstrap: &'a str,
    topic: &'a str,
    group: &'a str,
    db: &'a Path,
    keys: &'a Path,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl Runner {
    fn start(instance: &Instance<'_>) -> Runner {
        let mut child = command()
            .args(["run", "--brokers", instance.bootstrap, "--topic", instance.topic, "--group-id", instance.group])
            .args(["--db", instance.db.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .args(["--api-keys", instance.keys.to_str().unwrap()])
            .args(&instance.extra)
            .envs(instance.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("run starts");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let base = loop {
            let Some(Ok(line)) = lines.next() else {
                let status = child.wait().unwrap();
                panic!("run exited ({status}) before listening:\n{}", log.lock().unwrap().join("\n"));
            };
            log.lock().unwrap().push(line.clone());
            if let Some(address) = line.strip_prefix("listening on ") {
                break address.trim().to_owned();
            }
        };
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Runner { child, base, log }
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let response = agent.get(format!("{}{path}", self.base)).header("Authorization", ADMIN).call();
        match response {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.into_body().read_to_string().unwrap();
                (status, serde_json::from_str(&body).unwrap_or(Value::Null))
            }
            Err(err) => panic!("GET {path} failed: {err}\n{}", self.log_tail()),
        }
    }

    /// Any route, no credentials needed beyond the admin key: (status,
    /// headers, body text).
    fn raw_get(&self, path: &str) -> (u16, BTreeMap<String, String>, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let response = agent.get(format!("{}{path}", self.base)).header("Authorization", ADMIN).call().unwrap();
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        (status, headers, response.into_body().read_to_string().unwrap())
    }

    fn status(&self) -> Value {
        let (code, body) = self.get("/v1/status");
        assert_eq!(code, 200, "{body}");
        body
    }

    fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until every one of `messages` is recorded, the lag is zero and
    /// the outbox is empty.
    fn wait_caught_up(&mut self, messages: u64, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            assert!(self.child.try_wait().unwrap().is_none(), "run exited early:\n{}", self.log_tail());
            let (code, status) = self.get("/v1/status");
            if code == 503 {
                // The store is being reopened (after an I/O error): not yet.
                assert!(Instant::now() < deadline, "still unavailable after {timeout:?}:\n{}", self.log_tail());
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            assert_eq!(code, 200, "{status}");
            if recorded(&status) == messages
                && status["dead_letters_pending"] == 0
                && status["partitions"].as_array().is_some_and(|ps| !ps.is_empty() && ps.iter().all(|p| p["lag"] == 0))
            {
                return status;
            }
            assert!(
                recorded(&status) <= messages,
                "more events recorded than messages produced ({} > {messages}): {status}",
                recorded(&status)
            );
            assert!(Instant::now() < deadline, "not caught up after {timeout:?}: {status}\n{}", self.log_tail());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM; returns the exit status and how long the exit took.
    fn terminate(mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(started.elapsed() < Duration::from_secs(30), "run ignored SIGTERM for 30 s:\n{}", self.log_tail());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Events recorded by the store: applied, repeated or dead-lettered.
fn recorded(status: &Value) -> u64 {
    ["events_applied", "events_duplicate", "events_conflicting_duplicate", "events_invalid"]
        .iter()
        .map(|k| status[k].as_u64().unwrap_or(0))
        .sum()
}

struct Scenario {
    dir: tempfile::TempDir,
    bootstrap: String,
    topic: String,
    events: PathBuf,
    keys: PathBuf,
    messages: u64,
}

impl Scenario {
    fn new(bootstrap: &str, name: &str, refunds: u64, seed: u64, partitions: i32) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events.ndjson");
        generate(&events, refunds, seed, Some((0.05, 300, 0.004)));
        let keys = dir.path().join("keys.toml");
        std::fs::write(&keys, KEYS).unwrap();
        let topic = unique_topic(name);
        create_topics(bootstrap, &topic, partitions);
        let started = Instant::now();
        let messages = produce_file(bootstrap, &topic, &events);
        eprintln!("{name}: produced {messages} messages to {topic} in {:.1?}", started.elapsed());
        Scenario { dir, bootstrap: bootstrap.to_owned(), topic, events, keys, messages }
    }

    fn db(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn instance<'a>(&'a self, group: &'a str, db: &'a Path) -> Instance<'a> {
        Instance {
            bootstrap: &self.bootstrap,
            topic: &self.topic,
            group,
            db,
            keys: &self.keys,
            extra: Vec::new(),
            env: Vec::new(),
        }
    }

    /// The export of `replay` over the same file: what the topic must give.
    fn replay_export(&self) -> String {
        let db = self.db("replayed.redb");
        replay(&self.events, &db, None);
        export(&db)
    }

    /// Every invalid line is in the DLQ with its reason, and nothing else is.
    /// `exactly_once`: each exactly once (no crash happened).
    fn assert_dead_letters(&self, exactly_once: bool) {
        // A DLQ message carries at most 64 KiB of the raw text (cut on a
        // character boundary, with raw_truncated and raw_bytes).
        let cut = |raw: String| -> String {
            let mut end = raw.len().min(64 * 1024);
            while !raw.is_char_boundary(end) {
                end -= 1;
            }
            raw[..end].to_owned()
        };
        let expected: Vec<(String, String)> = invalid_lines(&self.events);
        let full_lengths: std::collections::BTreeSet<usize> = expected.iter().map(|(_, raw)| raw.len()).collect();
        let mut expected: Vec<(String, String)> = expected.into_iter().map(|(r, raw)| (r, cut(raw))).collect();
        expected.sort();
        assert!(!expected.is_empty(), "the stream has invalid lines");
        let letters = consume_topic(&self.bootstrap, &format!("{}.dlq", self.topic));
        let mut got: Vec<(String, String)> = Vec::new();
        for (_, value, headers) in &letters {
            let reason = value["reason"].as_str().expect("a reason").to_owned();
            assert_eq!(headers.get("reason"), Some(&reason), "the reason header matches the body");
            assert_eq!(headers.get("source_topic"), Some(&self.topic));
            assert!(headers.contains_key("source_partition") && headers.contains_key("source_offset"));
            assert!(!value["message"].as_str().unwrap_or("").is_empty(), "a message names the field");
            if value["raw_truncated"] == true {
                let bytes = usize::try_from(value["raw_bytes"].as_u64().unwrap()).unwrap();
                assert!(full_lengths.contains(&bytes), "raw_bytes {bytes} is an invalid line's length");
            }
            got.push((reason, value["raw"].as_str().expect("raw").to_owned()));
        }
        got.sort();
        if exactly_once {
            assert_eq!(got.len(), expected.len(), "one dead letter per invalid event");
        }
        let mut distinct = got.clone();
        distinct.dedup();
        let mut expected_distinct = expected.clone();
        expected_distinct.dedup();
        assert_eq!(distinct, expected_distinct, "the DLQ holds exactly the invalid events, with their reasons");
    }
}

#[test]
fn a_million_events_through_kafka_export_like_replay_and_dead_letter_every_invalid_one() {
    let (_guard, bootstrap) = broker();
    // CI runs about 440k messages (the issue allows sizing down to 200k for
    // CI time); E2E_REFUNDS=330000 gives the full million.
    let refunds: u64 = std::env::var("E2E_REFUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(150_000);
    let scenario = Scenario::new(&bootstrap, "million", refunds, 11, 6);
    assert!(scenario.messages >= 200_000 || refunds < 150_000, "{} messages", scenario.messages);
    let db = scenario.db("consumed.redb");
    let mut runner = Runner::start(&scenario.instance("g-million", &db));
    let started = Instant::now();
    let status = runner.wait_caught_up(scenario.messages, Duration::from_secs(600));
    eprintln!("million: {} messages ingested in {:.1?}", scenario.messages, started.elapsed());
    assert_eq!(status["partitions"].as_array().unwrap().len(), 6);
    let (exit, took) = runner.terminate();
    assert!(exit.success(), "{exit}");
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
    assert_eq!(export(&db), scenario.replay_export(), "the consumed store exports like replay of the same file");
    scenario.assert_dead_letters(true);
}

/// A small xorshift, seeded from the clock and printed, for kill moments.
fn rng() -> impl FnMut(u64) -> u64 {
    let mut state =
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % (1 << 63)) as u64 | 1;
    eprintln!("kill-moment seed {state}");
    move |bound| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    }
}

#[test]
fn sigkill_at_five_random_moments_then_restart_gives_the_same_export_and_applies_nothing_twice() {
    let (_guard, bootstrap) = broker();
    let scenario = Scenario::new(&bootstrap, "sigkill", 70_000, 12, 6);
    assert!(scenario.messages >= 200_000, "{} messages", scenario.messages);
    let db = scenario.db("consumed.redb");
    // Every instance assigns itself every partition: a restart resumes at
    // once, with no group membership to wait out.
    let instance = scenario.instance("g-sigkill", &db);
    // Five random moments mid-ingest: kill once the store has recorded a
    // random share of the topic, one share drawn in each fifth of 10-90% of
    // it (each restart resumes from the last durable commit). Drawn over the
    // whole range, four targets once fell within 5,000 messages of each
    // other, and a single batch of 30,000 carried the ingest past all of
    // them: every later kill then came after the end.
    let mut next = rng();
    let slice = scenario.messages * 16 / 100;
    let targets: Vec<u64> = (0..5).map(|i| scenario.messages / 10 + i * slice + next(slice)).collect();
    let mut seen_progress = Vec::new();
    let mut resumed_in = Vec::new();
    for (kill, target) in targets.into_iter().enumerate() {
        let spawned = Instant::now();
        let runner = Runner::start(&instance);
        // A restarted instance resumes at once: no group membership of the
        // killed process to wait out.
        let durable = recorded(&runner.status());
        // A kill that landed after the last batch's commit leaves nothing to
        // resume: there is no first batch to time then.
        if durable < scenario.messages {
            while recorded(&runner.status()) <= durable && spawned.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(5));
            }
            resumed_in.push(spawned.elapsed());
            if spawned.elapsed() >= Duration::from_secs(5) {
                eprintln!(
                    "sigkill: start {} (from {durable} of {} recorded) was slow:\n{}",
                    kill + 1,
                    scenario.messages,
                    runner.log_tail()
                );
            }
        } else {
            eprintln!("sigkill: start {} found every message recorded", kill + 1);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let at = loop {
            let n = recorded(&runner.status());
            if n >= target || Instant::now() > deadline {
                break n;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        runner.kill();
        eprintln!("sigkill: kill {} at {at} recorded (target {target})", kill + 1);
        seen_progress.push(at);
    }
    eprintln!("sigkill: each start applied its first batch after {resumed_in:?}");
    assert!(resumed_in.len() > 2, "most starts had something to resume: {seen_progress:?}");
    assert!(
        resumed_in.iter().all(|d| *d < Duration::from_secs(5)),
        "every restart after a SIGKILL resumes within 5 s: {resumed_in:?}"
    );
    let mut runner = Runner::start(&instance);
    let status = runner.wait_caught_up(scenario.messages, Duration::from_secs(300));
    assert_eq!(recorded(&status), scenario.messages, "every message recorded exactly once");
    let (exit, _) = runner.terminate();
    assert!(exit.success());
    let mid = seen_progress.iter().filter(|&&n| n > 0 && n < scenario.messages).count();
    assert!(mid >= 3, "most kills landed mid-ingest: {seen_progress:?}");
    assert_eq!(export(&db), scenario.replay_export());
    scenario.assert_dead_letters(false);
}

#[test]
fn two_instances_with_different_groups_each_build_the_whole_projection() {
    let (_guard, bootstrap) = broker();
    let scenario = Scenario::new(&bootstrap, "replicas", 20_000, 13, 4);
    let (db_a, db_b) = (scenario.db("a.redb"), scenario.db("b.redb"));
    let mut instance_a = scenario.instance("g-replica-a", &db_a);
    instance_a.extra = vec!["--log-format".into(), "json".into()];
    instance_a.env = vec![("RUST_LOG".into(), "info,refunds_ingest=debug".into())];
    let mut a = Runner::start(&instance_a);
    let mut b = Runner::start(&scenario.instance("g-replica-b", &db_b));
    let status = a.wait_caught_up(scenario.messages, Duration::from_secs(300));
    b.wait_caught_up(scenario.messages, Duration::from_secs(300));
    // Caught up: ready, fresh, and the metrics agree with the status.
    assert_eq!(a.raw_get("/readyz").0, 200);
    let (_, headers, _) = a.raw_get("/v1/refunds?limit=1");
    assert_eq!(headers.get("x-consumer-lag").map(String::as_str), Some("0"), "{headers:?}");
    assert!(headers.contains_key("x-last-applied-at"), "{headers:?}");
    let (_, _, metrics) = a.raw_get("/metrics");
    let metric = |prefix: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix}:\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(metric("refund_projector_events_applied_total "), status["events_applied"].as_f64().unwrap());
    assert_eq!(metric("refund_projector_events_received_total{source=\"kafka\"} "), scenario.messages as f64);
    let invalid: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("refund_projector_events_invalid_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(invalid, status["events_invalid"].as_f64().unwrap());
    let lag_lines: Vec<&str> =
        metrics.lines().filter(|l| l.starts_with("refund_projector_partition_lag_events{")).collect();
    assert_eq!(lag_lines.len(), 4, "{lag_lines:?}");
    assert!(lag_lines.iter().all(|l| l.ends_with(" 0")), "{lag_lines:?}");
    // JSON logs: one span per batch with its size, offsets and duration.
    let batches: Vec<Value> = a
        .log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["span"]["name"] == "batch")
        .collect();
    assert!(!batches.is_empty(), "batch spans in the JSON logs:\n{}", a.log_tail());
    let events: u64 = batches.iter().map(|b| b["span"]["events"].as_u64().unwrap()).sum();
    assert_eq!(events, scenario.messages, "the batch spans account for every message");
    let span = &batches[0]["span"];
    assert!(span["offsets"].as_str().unwrap().contains(".."), "{span}");
    assert!(span["duration_ms"].is_u64() && span["durable"].is_boolean(), "{span}");
    assert!(a.terminate().0.success());
    assert!(b.terminate().0.success());
    let (export_a, export_b) = (export(&db_a), export(&db_b));
    assert!(!export_a.is_empty());
    assert_eq!(export_a, export_b, "both replicas hold the same projection");
    assert_eq!(export_a, scenario.replay_export());
}

/// The JSON log's batch spans: per batch, each partition's offsets as
/// `(partition, from, to)`.
fn batch_offsets(runner: &Runner) -> Vec<Vec<(i32, i64, i64)>> {
    let log = runner.log.lock().unwrap();
    log.iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| entry["span"]["name"] == "batch")
        .map(|entry| {
            let offsets = entry["span"]["offsets"].as_str().expect("offsets").to_owned();
            offsets
                .split(',')
                .map(|one| {
                    let (partition, range) = one.split_once(':').expect("partition:from..to");
                    let (from, to) = range.split_once("..").expect("from..to");
                    (partition.parse().unwrap(), from.parse().unwrap(), to.parse().unwrap())
                })
                .collect()
        })
        .collect()
}

#[test]
fn a_batch_takes_every_partition_at_the_same_moment_while_instances_of_the_group_join_and_leave() {
    let (_guard, bootstrap) = broker();
    // The whole topic is there before the consumer starts: it is behind
    // from its first batch to its last, and small batches make that last
    // while other instances come and go.
    let scenario = Scenario::new(&bootstrap, "merge", 30_000, 17, 6);
    let db = scenario.db("a.redb");
    let mut instance = scenario.instance("g-merge", &db);
    instance.extra = ["--log-format", "json", "--batch-events", "2000"].map(String::from).to_vec();
    instance.env = vec![("RUST_LOG".into(), "info,refunds_ingest=debug".into())];
    let mut a = Runner::start(&instance);
    let deadline = Instant::now() + Duration::from_secs(60);
    while recorded(&a.status()) == 0 {
        assert!(Instant::now() < deadline, "nothing recorded after a minute:\n{}", a.log_tail());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Another instance with the same group id starts while the first one
    // ingests and vanishes (SIGKILL); a third starts and stops cleanly.
    // Instances assign themselves every partition and never join the
    // group's membership, so there is no rebalance: neither may disturb the
    // first one's partitions or batches.
    let b = Runner::start(&scenario.instance("g-merge", &scenario.db("b.redb")));
    std::thread::sleep(Duration::from_millis(300));
    b.kill();
    let c = Runner::start(&scenario.instance("g-merge", &scenario.db("c.redb")));
    std::thread::sleep(Duration::from_millis(300));
    assert!(c.terminate().0.success());
    eprintln!(
        "merge: the other instances came and went while the first recorded {} of {} events",
        recorded(&a.status()),
        scenario.messages
    );
    a.wait_caught_up(scenario.messages, Duration::from_secs(300));

    // Each partition's messages were produced at the same rate (keys spread
    // evenly), so partitions read in step by timestamp stay at the same
    // fraction of their length after every batch. Reading them a fetch at a
    // time (4 MiB, thousands of messages) puts them far apart. Until every
    // partition has sent its first fetch, the others go on without it (on a
    // topic just created, one partition's first fetch came after 15
    // batches in one run), so the partitions must come into step before
    // half the topic is read, and stay in step from then on.
    let batches = batch_offsets(&a);
    let mut length: BTreeMap<i32, i64> = BTreeMap::new();
    for &(partition, _, to) in batches.iter().flatten() {
        let end = length.entry(partition).or_default();
        *end = (*end).max(to);
    }
    assert_eq!(length.len(), 6, "{length:?}");
    assert_eq!(length.values().sum::<i64>(), i64::try_from(scenario.messages).unwrap(), "{length:?}");
    assert!(batches.len() >= 20, "the consumer was behind for many batches: {}", batches.len());
    let mut position: BTreeMap<i32, i64> = length.keys().map(|&partition| (partition, 0)).collect();
    let mut in_step_at = None;
    for batch in &batches {
        for &(partition, _, to) in batch {
            position.insert(partition, to);
        }
        if position.values().any(|&to| to == 0) {
            continue;
        }
        let at: Vec<f64> = position.iter().map(|(partition, &to)| to as f64 / length[partition] as f64).collect();
        let spread = at.iter().copied().fold(f64::MIN, f64::max) - at.iter().copied().fold(f64::MAX, f64::min);
        if in_step_at.is_none() {
            if spread < 0.1 {
                in_step_at = Some(position.values().sum::<i64>());
            }
            continue;
        }
        assert!(spread < 0.1, "after a batch the partitions are {spread:.3} of their length apart: {position:?}");
    }
    let total = i64::try_from(scenario.messages).unwrap();
    let in_step_at = in_step_at.expect("the partitions never came within a tenth of their length of each other");
    assert!(in_step_at <= total / 2, "the partitions came into step only at {in_step_at} of {total} messages");
    assert!(a.terminate().0.success());
    assert_eq!(export(&db), scenario.replay_export(), "the first instance's store exports like replay");
}

#[test]
fn readyz_is_503_until_partitions_are_assigned_then_200_once_caught_up() {
    let (_guard, bootstrap) = broker();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, KEYS).unwrap();
    let topic = unique_topic("ready");
    let db = dir.path().join("store.redb");
    let mut instance = Instance {
        bootstrap: &bootstrap,
        topic: &topic,
        group: "g-ready",
        db: &db,
        keys: &keys,
        extra: vec![],
        env: vec![],
    };
    instance.extra = vec!["--kafka-option".into(), "topic.metadata.refresh.interval.ms=500".into()];
    // The topic does not exist yet: nothing can be assigned.
    let runner = Runner::start(&instance);
    std::thread::sleep(Duration::from_secs(2));
    let (code, _, body) = runner.raw_get("/readyz");
    assert_eq!(code, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    create_topics(&bootstrap, &topic, 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    while runner.raw_get("/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never ready:\n{}", runner.log_tail());
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = runner.status();
    assert_eq!(status["partitions"].as_array().unwrap().len(), 2, "{status}");
    assert!(runner.terminate().0.success());
}

#[test]
fn rebuild_swaps_in_under_a_live_run_with_no_failed_request_and_verify_finds_it_identical() {
    let (_guard, bootstrap) = broker();
    let scenario = Scenario::new(&bootstrap, "rebuild", 15_000, 16, 3);
    let db = scenario.db("live.redb");
    let mut runner = Runner::start(&scenario.instance("g-rebuild", &db));
    runner.wait_caught_up(scenario.messages, Duration::from_secs(300));
    let refunds = runner.status()["refunds"].clone();
    // An audit entry's received_at tells the stores apart.
    let (_, page) = runner.get("/v1/refunds?limit=1");
    let id = page["results"][0]["id"].as_str().unwrap().to_owned();
    let tenant = page["results"][0]["tenant_id"].as_str().unwrap().to_owned();
    let trail = format!("/v1/refunds/{id}/events?tenant_id={tenant}");
    let received_before = runner.get(&trail).1["results"][0]["received_at"].clone();

    // Requests keep flowing during the rebuild and the swap.
    let base = runner.base.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            let mut answers = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let response =
                    agent.get(format!("{base}/v1/refunds?limit=1")).header("Authorization", ADMIN).call().unwrap();
                let status = response.status().as_u16();
                let body: Value = serde_json::from_str(&response.into_body().read_to_string().unwrap()).unwrap();
                answers.push((status, body["count"].clone()));
                std::thread::sleep(Duration::from_millis(10));
            }
            answers
        })
    };
    let rebuild = command()
        .args(["rebuild", "--db", db.to_str().unwrap(), "--brokers", &bootstrap, "--topic", &scenario.topic])
        .output()
        .unwrap();
    assert!(rebuild.status.success(), "{}", String::from_utf8_lossy(&rebuild.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    while runner.get(&trail).1["results"][0]["received_at"] == received_before {
        assert!(Instant::now() < deadline, "run never swapped the rebuilt store in:\n{}", runner.log_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let answers = hammer.join().unwrap();
    assert!(answers.len() > 10, "{} requests during the rebuild", answers.len());
    assert!(answers.iter().all(|(s, c)| *s == 200 && *c == refunds), "every request answered, same count: {answers:?}");

    // The restarted consumer resumes from the new store's offsets: more
    // events arrive, and every message is recorded exactly once in it.
    let more = scenario.db("more.ndjson");
    generate(&more, 500, 17, None);
    let extra = produce_file(&bootstrap, &scenario.topic, &more);
    let status = runner.wait_caught_up(scenario.messages + extra, Duration::from_secs(120));
    assert_eq!(recorded(&status), scenario.messages + extra);

    // verify against the live instance, at one snapshot of it.
    let verify = command()
        .args(["verify", "--url", &runner.base, "--api-key", "secret-ops", "--brokers", &bootstrap])
        .args(["--topic", &scenario.topic])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{stdout}{}", String::from_utf8_lossy(&verify.stderr));
    assert!(stdout.contains("0 differ, 0 only in the live store, 0 only in the rebuild: identical"), "{stdout}");
    assert!(runner.terminate().0.success());
}

/// A small tmpfs of our own (the suite runs as root): a disk that fills up.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs", dir.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "mounting a tmpfs needs root: {}", String::from_utf8_lossy(&out.stderr));
        SmallDisk { dir }
    }

    fn grow(&self, megabytes: u32) {
        let out = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={megabytes}m"), self.dir.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Kafka's committed offsets of a group, per partition.
fn committed_offsets(bootstrap: &str, topic: &str, group: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(n) => Some((e.partition(), n)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_full_disk_holds_the_consumer_back_with_no_offset_past_what_was_applied_and_it_resumes_once_space_is_freed() {
    let (_guard, bootstrap) = broker();
    let scenario = Scenario::new(&bootstrap, "diskfull", 45_000, 18, 3);
    let disk = SmallDisk::mount(12);
    let db = disk.dir.path().join("live.redb");
    let mut instance = scenario.instance("g-diskfull", &db);
    // A consumer that cannot write is alive but stuck: the stall check says
    // so within a second here.
    instance.extra = vec!["--stall-after-ms".into(), "1000".into()];
    let mut runner = Runner::start(&instance);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, _, body) = runner.raw_get("/readyz");
        if code == 503 && (body.contains("cannot write") || body.contains("reopened")) {
            break;
        }
        assert!(Instant::now() < deadline, "the disk never filled: {body}\n{}", runner.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    // While the disk is full the store fails, is reopened at its last durable
    // commit and fails again; at no moment does Kafka's committed offset pass
    // what the store has applied, or the store record more than was sent.
    let applied = |runner: &Runner| -> Option<(u64, BTreeMap<i32, i64>)> {
        let (code, status) = runner.get("/v1/status");
        (code == 200).then(|| {
            let offsets = status["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (i32::try_from(p["partition"].as_i64().unwrap()).unwrap(), p["applied_offset"].as_i64().unwrap())
                })
                .collect();
            (recorded(&status), offsets)
        })
    };
    let mut samples = Vec::new();
    for _ in 0..30 {
        if let Some(sample) = applied(&runner) {
            samples.push(sample);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(samples.len() >= 2, "status answers between reopen attempts");
    assert!(samples.iter().all(|s| s.0 < scenario.messages), "the full disk holds the ingest back: {samples:?}");
    let committed = committed_offsets(&bootstrap, &scenario.topic, "g-diskfull", 3);
    let stored = applied(&runner).map(|s| s.1).unwrap_or_default();
    for (partition, committed) in committed {
        // (An empty status between reopens says nothing either way.)
        if let Some(&applied_offset) = stored.get(&partition) {
            assert!(
                committed <= applied_offset,
                "partition {partition}: Kafka has {committed}, the store {applied_offset}"
            );
        }
    }
    // The child's log is read by another thread: give the line a moment.
    let says_why = || runner.log.lock().unwrap().iter().any(|l| l.contains("No space left on device"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !says_why() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(says_why(), "the log says why:\n{}", runner.log_tail());
    let stalled = |runner: &Runner| -> Option<f64> {
        let (_, _, metrics) = runner.raw_get("/metrics");
        metrics
            .lines()
            .find(|l| l.starts_with("refund_projector_consumer_stalled "))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while stalled(&runner) != Some(1.0) {
        assert!(Instant::now() < deadline, "never counted as stalled:\n{}", runner.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    let stall_errors =
        || runner.log.lock().unwrap().iter().filter(|l| l.contains("ERROR") && l.contains("is stalled")).count();
    assert!(stall_errors() >= 1, "a stall is logged as an error:\n{}", runner.log_tail());

    disk.grow(600);
    let status = runner.wait_caught_up(scenario.messages, Duration::from_secs(180));
    let deadline = Instant::now() + Duration::from_secs(10);
    while stalled(&runner) != Some(0.0) {
        assert!(Instant::now() < deadline, "still counted as stalled once caught up:\n{}", runner.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(recorded(&status), scenario.messages, "every message recorded exactly once, without a restart");
    assert!(runner.terminate().0.success());
    assert_eq!(export(&db), scenario.replay_export());
}

#[test]
fn the_consumer_rides_out_a_ten_second_broker_outage_without_restarting() {
    let (_guard, bootstrap) = broker();
    let scenario = Scenario::new(&bootstrap, "outage", 60_000, 14, 3);
    let db = scenario.db("consumed.redb");
    let mut runner = Runner::start(&scenario.instance("g-outage", &db));
    // Stop the broker once ingest is under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    while recorded(&runner.status()) == 0 {
        assert!(Instant::now() < deadline, "ingest never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kafka = helpers::repo_root().join("scripts/kafka/kafka.sh");
    let stop = std::process::Command::new(&kafka).arg("stop").env("KEEP_STATE", "1").output().unwrap();
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    let during = recorded(&runner.status());
    std::thread::sleep(Duration::from_secs(10));
    assert!(runner.child.try_wait().unwrap().is_none(), "run exited while the broker was away");
    let (code, _) = runner.get("/v1/refunds?limit=1");
    assert_eq!(code, 200, "the API serves while the broker is away");
    let start = std::process::Command::new(&kafka).arg("start").output().unwrap();
    assert!(start.status.success(), "{}", String::from_utf8_lossy(&start.stderr));
    let wait = std::process::Command::new(&kafka).args(["wait", "120"]).output().unwrap();
    assert!(wait.status.success(), "{}", String::from_utf8_lossy(&wait.stderr));
    eprintln!("outage: broker stopped at {during} of {} recorded", scenario.messages);
    let status = runner.wait_caught_up(scenario.messages, Duration::from_secs(300));
    assert_eq!(recorded(&status), scenario.messages);
    assert!(runner.terminate().0.success());
    assert_eq!(export(&db), scenario.replay_export());
    scenario.assert_dead_letters(false);
}

#[test]
fn sigterm_mid_ingest_exits_cleanly_within_ten_seconds_and_a_restart_applies_nothing_twice() {
    let (_guard, bootstrap) = broker();
    let scenario = Scenario::new(&bootstrap, "sigterm", 40_000, 15, 3);
    let db = scenario.db("consumed.redb");
    let instance = scenario.instance("g-sigterm", &db);
    let runner = Runner::start(&instance);
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_stop = loop {
        let n = recorded(&runner.status());
        if n > 0 {
            break n;
        }
        assert!(Instant::now() < deadline, "ingest never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    let (exit, took) = runner.terminate();
    assert!(exit.success(), "SIGTERM exit: {exit}");
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
    eprintln!("sigterm: stopped at {at_stop} of {} recorded, exit took {took:?}", scenario.messages);

    let mut runner = Runner::start(&instance);
    let status = runner.wait_caught_up(scenario.messages, Duration::from_secs(300));
    assert_eq!(recorded(&status), scenario.messages, "nothing recorded twice across the restart");
    let (exit, took) = runner.terminate();
    assert!(exit.success() && took < Duration::from_secs(10), "{exit} after {took:?}");

    // A third start over a caught-up topic applies nothing at all.
    let mut runner = Runner::start(&instance);
    let before = recorded(&status);
    let status = runner.wait_caught_up(scenario.messages, Duration::from_secs(120));
    assert_eq!(recorded(&status), before);
    assert!(runner.terminate().0.success());
    assert_eq!(export(&db), scenario.replay_export());
}

/// The status of `GET /v1/refunds?limit=1` on `runner` with `authorization`.
fn refunds_status(runner: &Runner, authorization: &str) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let response =
        agent.get(format!("{}/v1/refunds?limit=1", runner.base)).header("Authorization", authorization).call();
    response.unwrap_or_else(|e| panic!("GET failed: {e}\n{}", runner.log_tail())).status().as_u16()
}

#[test]
fn a_key_revoked_in_the_file_is_refused_within_seconds_while_run_keeps_consuming() {
    let (_guard, bootstrap) = broker();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let reader = "[[keys]]\nid = \"reader\"\nsecret = \"secret-reader\"\ntenant = \"*\"\nscopes = [\"refunds:read\"]\n";
    std::fs::write(&keys, format!("{KEYS}\n{reader}")).unwrap();
    let topic = unique_topic("revoke");
    create_topics(&bootstrap, &topic, 2);
    let (first, second) = (dir.path().join("first.ndjson"), dir.path().join("second.ndjson"));
    generate(&first, 1_500, 31, None);
    generate(&second, 1_500, 32, None);
    let first_messages = produce_file(&bootstrap, &topic, &first);
    let db = dir.path().join("store.redb");
    let instance = Instance {
        bootstrap: &bootstrap,
        topic: &topic,
        group: "g-revoke",
        db: &db,
        keys: &keys,
        extra: vec![],
        env: vec![],
    };
    let mut runner = Runner::start(&instance);
    let before = runner.wait_caught_up(first_messages, Duration::from_secs(120));
    assert_eq!(refunds_status(&runner, "Api-Key secret-reader"), 200);

    // Revoke "reader" while events keep arriving.
    let producing = {
        let (bootstrap, topic, second) = (bootstrap.clone(), topic.clone(), second.clone());
        std::thread::spawn(move || produce_file(&bootstrap, &topic, &second))
    };
    std::fs::write(&keys, KEYS).unwrap();
    let revoked = Instant::now();
    while refunds_status(&runner, "Api-Key secret-reader") != 401 {
        assert!(revoked.elapsed() < Duration::from_secs(5), "the revoked key still works:\n{}", runner.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("revoked within {:?}", revoked.elapsed());
    let second_messages = producing.join().unwrap();
    let at_revocation = runner.wait_caught_up(first_messages + second_messages, Duration::from_secs(120));
    assert!(at_revocation["events_applied"].as_u64().unwrap() > before["events_applied"].as_u64().unwrap());
    // And the consumer goes on after the reload.
    let third = dir.path().join("third.ndjson");
    generate(&third, 500, 33, None);
    let third_messages = produce_file(&bootstrap, &topic, &third);
    let after = runner.wait_caught_up(first_messages + second_messages + third_messages, Duration::from_secs(120));
    assert!(
        after["events_applied"].as_u64().unwrap() > at_revocation["events_applied"].as_u64().unwrap(),
        "events are applied after the reload: {at_revocation} -> {after}"
    );
    assert_eq!(refunds_status(&runner, "Api-Key secret-reader"), 401);
    assert_eq!(after["auth"]["keys"], 1, "{after}");
    assert!(runner.log_tail().contains("API keys reloaded"), "{}", runner.log_tail());
    assert!(runner.terminate().0.success());
}
