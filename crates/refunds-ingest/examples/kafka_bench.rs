//! Kafka ingest benchmark against a real broker (`scripts/bench-kafka.sh`
//! runs it): produces an NDJSON event file to a fresh topic, then, in the same
//! run, (1) reads and discards the whole topic with the consumer's own
//! librdkafka configuration (the raw rate), then, in `ROUNDS` interleaved
//! rounds (2 by default), (2) replays the same file into a fresh store, as
//! `refund-projector replay` does, and (3) ingests the topic into a fresh
//! store with durable commits (the ingest rate, from the first poll to the
//! final durable commit). Prints every rate and the ratios Kafka/replay and
//! Kafka/raw.
//!
//! Usage: [DURABLE_MS=N] [ROUNDS=N] kafka_bench BROKERS EVENTS.ndjson [PARTITIONS] [STORE_DIR]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message};
use refunds_ingest::file_source::{self, Input, ReplayParams};
use refunds_ingest::kafka_source::{IngestStatus, KafkaParams, Shutdown, consume, consumer_config};
use refunds_store::{Store, StoreParams};

/// The allocator the `refund-projector` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // As the binary does.
    refunds_ingest::disable_transparent_huge_pages();
    let args: Vec<String> = std::env::args().collect();
    let brokers = args.get(1).expect("usage: kafka_bench BROKERS EVENTS.ndjson [PARTITIONS] [STORE_DIR]").clone();
    let events = PathBuf::from(args.get(2).expect("an events file"));
    let partitions: i32 = args.get(3).map_or(6, |p| p.parse().expect("partitions"));
    let store_dir = args.get(4).map_or_else(std::env::temp_dir, PathBuf::from);
    let suffix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let topic = format!("bench-{suffix}");

    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("admin client");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dlq = format!("{topic}.dlq");
    let new = [
        NewTopic::new(&topic, partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
    ];
    for result in runtime.block_on(admin.create_topics(&new, &AdminOptions::new())).expect("create topics") {
        result.expect("topic created");
    }

    let started = Instant::now();
    let total = produce(&brokers, &topic, &events);
    println!(
        "produced {total} messages to {topic} ({partitions} partitions) in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let mut params = KafkaParams::new(&brokers, &topic, &format!("{topic}-ingest"));
    // As `--durable-every-ms`: milliseconds between durable commits (0, the default: every commit).
    // As `REFUND_PROJECTOR_KAFKA_OPTION`: librdkafka settings, `k1=v1;k2=v2`.
    if let Ok(options) = std::env::var("KAFKA_OPTIONS") {
        for pair in options.split(';') {
            if let Some((k, v)) = pair.split_once('=') {
                params.options.push((k.to_owned(), v.to_owned()));
            }
        }
    }
    if let Some(ms) = std::env::var("DURABLE_MS").ok().and_then(|v| v.parse().ok()) {
        params.durable_every = Duration::from_millis(ms);
    }
    let raw = raw_read(&params, &topic, total);
    println!(
        "raw read: {total} messages in {:.2}s = {:.0} messages/s",
        raw.as_secs_f64(),
        total as f64 / raw.as_secs_f64()
    );

    // Interleaved rounds: a replay of the same file (its lines in the order
    // they were produced), then a Kafka ingest of the topic by a new group,
    // each into a fresh store with the same durability (`DURABLE_MS`).
    let rounds: u32 = std::env::var("ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let (mut replays, mut ingests) = (Duration::ZERO, Duration::ZERO);
    for round in 1..=rounds {
        let replayed = replay(&events, &store_dir, total, params.durable_every);
        let mut round_params = params.clone();
        round_params.group_id = format!("{topic}-ingest-{round}");
        let ingested = ingest(&round_params, &topic, total, &store_dir);
        println!("round {round}: kafka/replay {:.2}", replayed.as_secs_f64() / ingested.as_secs_f64());
        replays += replayed;
        ingests += ingested;
    }
    println!(
        "ratio kafka/replay: {:.2} (total times over {rounds} interleaved rounds)",
        replays.as_secs_f64() / ingests.as_secs_f64()
    );
    println!("ratio ingest/raw: {:.2}", raw.as_secs_f64() / (ingests.as_secs_f64() / f64::from(rounds)));
}

/// Replays the events file into a fresh store, as `refund-projector replay`
/// does; the time from the start to the final durable commit.
fn replay(events: &std::path::Path, store_dir: &std::path::Path, total: u64, durable_every: Duration) -> Duration {
    let dir = tempfile::tempdir_in(store_dir).expect("a store directory");
    let mut store = Store::open(&dir.path().join("replay.redb"), &StoreParams::default()).expect("store");
    let mut params = ReplayParams::new(Input::File(events.to_path_buf()));
    params.durable_every = durable_every;
    let started = Instant::now();
    let used = Usage::now();
    let progress = file_source::replay(&mut store, &params, |_| {}).expect("replay");
    let took = started.elapsed();
    let used = Usage::now().since(&used);
    println!(
        "replay: {} lines ({} applied, {} duplicate, {} invalid) in {:.2}s = {:.0} events/s durable; {used}",
        progress.lines,
        progress.applied,
        progress.duplicate,
        progress.invalid,
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
    );
    took
}

/// Ingests the topic into a fresh store with durable commits; the time from
/// the first poll to the final durable commit.
fn ingest(params: &KafkaParams, topic: &str, total: u64, store_dir: &std::path::Path) -> Duration {
    let dir = tempfile::tempdir_in(store_dir).expect("a store directory");
    let store = Arc::new(Store::open(&dir.path().join("bench.redb"), &StoreParams::default()).expect("store"));
    let status = Arc::new(IngestStatus::new(topic));
    let used = Usage::now();
    let shutdown = Shutdown::new();
    let consumer = {
        let (store, status, shutdown, params) = (store.clone(), status.clone(), shutdown.clone(), params.clone());
        std::thread::spawn(move || consume(store, &params, status, shutdown))
    };
    let total_i64 = i64::try_from(total).unwrap();
    loop {
        let applied: i64 = status.partitions().iter().map(|p| p.applied_offset).sum();
        if applied >= total_i64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let applied_at = Instant::now();
    shutdown.trigger();
    let report = consumer.join().expect("consumer thread").expect("consume");
    let durable_at = Instant::now();
    let used = Usage::now().since(&used);
    let first = status.first_message_at().expect("a first message");
    let ingest = durable_at - first;
    println!(
        "kafka ingest: {total} messages ({} applied, {} duplicate, {} invalid) in {:.2}s = {:.0} events/s durable \
         (all applied after {:.2}s; store {} MiB); {used}",
        report.applied,
        report.duplicate,
        report.invalid,
        ingest.as_secs_f64(),
        total as f64 / ingest.as_secs_f64(),
        (applied_at - first).as_secs_f64(),
        Store::file_bytes(&dir.path().join("bench.redb")) >> 20,
    );
    ingest
}

fn produce(brokers: &str, topic: &str, events: &std::path::Path) -> u64 {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("message.max.bytes", "8000000")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .expect("producer");
    let bytes = std::fs::read(events).expect("the events file");
    let mut count = 0;
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.iter().all(|&b| b == b' ' || b == b'\t')) {
        let key = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.pointer("/refund/id").and_then(|id| id.as_str()).map(str::to_owned));
        let mut record = BaseRecord::<str, [u8]>::to(topic).payload(line);
        if let Some(key) = key.as_deref() {
            record = record.key(key);
        }
        while let Err((_, back)) = producer.send(record) {
            record = back;
            producer.poll(Duration::from_millis(10));
        }
        producer.poll(Duration::ZERO);
        count += 1;
    }
    producer.flush(Duration::from_secs(120)).expect("every message acknowledged");
    count
}

/// Reads the whole topic with the ingest's consumer settings and discards
/// it; the time from the first message to the last.
fn raw_read(params: &KafkaParams, topic: &str, total: u64) -> Duration {
    let mut config = consumer_config(params);
    config.set("group.id", format!("{topic}-raw"));
    // The ingest starts from its store's checkpoints and refuses to guess
    // (`auto.offset.reset=error`); this reader has none, so it starts at the
    // beginning.
    config.set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer = config.create().expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut seen = 0u64;
    let mut bytes = 0usize;
    let mut first = None;
    while seen < total {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            bytes += message.payload().map_or(0, <[u8]>::len);
            seen += 1;
        }
    }
    std::hint::black_box(bytes);
    first.map_or(Duration::ZERO, |f| f.elapsed())
}

/// The process's CPU time and bytes written to storage, from `/proc/self`
/// (zero elsewhere): where two runs of equal wall time differ.
struct Usage {
    user_s: f64,
    system_s: f64,
    written: u64,
    /// The broker's CPU time, when it runs on this machine (`BROKER_PID`):
    /// it takes the same cores as the ingest while serving its fetches.
    broker_s: Option<f64>,
}

/// A process's user + system CPU seconds, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15, in clock ticks (100 a second on Linux).
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok()).map(|t| t / 100.0);
    Some((ticks(14)?, ticks(15)?))
}

impl Usage {
    fn now() -> Usage {
        let (user_s, system_s) = cpu_seconds("self").unwrap_or_default();
        let broker_s = std::env::var("BROKER_PID").ok().and_then(|pid| cpu_seconds(&pid)).map(|(u, s)| u + s);
        let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
        let written = io
            .lines()
            .find_map(|line| line.strip_prefix("write_bytes: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Usage { user_s, system_s, written, broker_s }
    }

    fn since(&self, start: &Usage) -> Usage {
        Usage {
            user_s: self.user_s - start.user_s,
            system_s: self.system_s - start.system_s,
            written: self.written.saturating_sub(start.written),
            broker_s: self.broker_s.zip(start.broker_s).map(|(now, then)| now - then),
        }
    }
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cpu {:.1}s user + {:.1}s system, {} MiB written", self.user_s, self.system_s, self.written >> 20)?;
        if let Some(broker_s) = self.broker_s {
            write!(f, "; broker cpu {broker_s:.1}s")?;
        }
        Ok(())
    }
}
