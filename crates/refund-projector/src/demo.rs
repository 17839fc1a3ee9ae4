//! `refund-projector demo`: the whole system in one process with nothing
//! installed. librdkafka's in-process mock cluster stands in for Kafka; a
//! producer thread writes the `generate` model's events (with duplicates,
//! reordering and a few invalid events) at a steady rate; the consumer,
//! the store and the API are the ones `run` uses.
//!
//! Facts about the mock cluster this relies on: it keeps only about 5 MiB per
//! partition and silently drops older data, so the producer never runs more
//! than [`MAX_AHEAD`] events ahead of what the store has applied; topics are
//! created with the mock's own call (its admin API times out); and
//! `fetch.wait.max.ms` is set low (it otherwise stalls a caught-up consumer
//! for 500 ms).

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, Producer};
use refunds_generate::{GenerateParams, generate};
use refunds_ingest::kafka_source::{GapPolicy, IngestStatus, KafkaParams, Shutdown};

use crate::service::{ServiceParams, Started, run_service};

/// Most events the producer may be ahead of the store.
const MAX_AHEAD: i64 = 5_000;

pub struct DemoParams {
    pub db: Option<PathBuf>,
    pub listen: String,
    /// Events per second the producer writes.
    pub rate: u32,
    /// Refunds the producer generates before it stops (about three events each).
    pub refunds: u64,
    pub seed: u64,
    pub partitions: i32,
    /// Keys accepted besides the demo key (reloaded like `run`'s).
    pub api_keys: Option<PathBuf>,
    pub jwt: crate::credentials::JwtArgs,
}

pub fn run_demo(params: DemoParams) -> anyhow::Result<()> {
    anyhow::ensure!(params.rate > 0, "--rate must be at least 1");
    anyhow::ensure!(params.partitions > 0, "--partitions must be at least 1");
    let cluster = MockCluster::new(1).context("failed to start the in-process Kafka cluster")?;
    let topic = "refund-events";
    cluster.create_topic(topic, params.partitions, 1).context("failed to create the demo topic")?;
    cluster.create_topic(&format!("{topic}.dlq"), 1, 1).context("failed to create the dead-letter topic")?;
    let brokers = cluster.bootstrap_servers();

    let temp;
    let db = match &params.db {
        Some(db) => db.clone(),
        None => {
            temp = tempfile::tempdir().context("failed to create a temporary directory")?;
            temp.path().join("refunds.redb")
        }
    };
    let secret = demo_secret()?;
    let keys = format!("[[keys]]\nid = \"demo\"\nsecret = \"{secret}\"\ntenant = \"*\"\nscopes = [\"admin\"]\n");
    let (auth, watch) = params.jwt.credentials(params.api_keys.as_deref(), Some(keys))?.split();

    let mut kafka = KafkaParams::new(&brokers, topic, "refund-projector-demo");
    kafka.options.push(("fetch.wait.max.ms".to_owned(), "10".to_owned()));
    kafka.batch_wait = Duration::from_millis(50);
    // The in-process cluster is new every run, so a kept `--db` store lies
    // past the end of its partitions: the demo accepts that gap (listed in
    // /v1/status) and consumes the new topic from its start. The mock does
    // not answer DescribeConfigs, and its topic is the demo's own.
    kafka.on_history_gap = GapPolicy::Accept;
    kafka.check_topic = false;
    let service = ServiceParams {
        db: &db,
        listen: &params.listen,
        auth,
        watch,
        kafka,
        ready_max_lag: 1_000,
        max_waiting_requests: refunds_api::DEFAULT_MAX_WAITING,
        summary_cache_bytes: refunds_api::DEFAULT_SUMMARY_CACHE_BYTES,
        stall_after: Some(Duration::from_millis(crate::DEFAULT_STALL_AFTER_MS)),
    };

    let mut producer_thread = None;
    let result = run_service(service, |started: Started<'_>| {
        print_banner(started.address, &secret, &db, params.db.is_none());
        let producer = DemoProducer {
            brokers: brokers.clone(),
            topic: topic.to_owned(),
            rate: params.rate,
            generate: GenerateParams::new(params.refunds, params.seed),
            status: started.status.clone(),
            shutdown: started.shutdown.clone(),
        };
        producer_thread = thread::Builder::new().name("demo-producer".to_owned()).spawn(move || producer.run()).ok();
    });
    if let Some(thread) = producer_thread {
        match thread.join() {
            Ok(Ok(produced)) => tracing::info!(produced, "demo producer stopped"),
            Ok(Err(error)) => tracing::warn!(%error, "demo producer failed"),
            Err(_) => tracing::warn!("demo producer panicked"),
        }
    }
    drop(cluster);
    result
}

fn demo_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for the demo key: {e}"))?;
    Ok(format!("demo_{}", hex::encode(bytes)))
}

fn print_banner(address: std::net::SocketAddr, secret: &str, db: &std::path::Path, temporary: bool) {
    let base = format!("http://{address}");
    let header = format!("Authorization: Api-Key {secret}");
    let store = if temporary { format!("{} (temporary)", db.display()) } else { db.display().to_string() };
    println!(
        "refund-projector demo: in-process Kafka, producer, consumer, store and API\n\
         \n  API        {base}\n  store      {store}\n  demo key   {secret} (every tenant, admin)\n\
         \nTry:\n\
         \n  curl -H '{header}' '{base}/v1/refunds?limit=5'\
         \n  curl -H '{header}' '{base}/v1/refunds?status=completed&currency=USD&limit=5'\
         \n  curl -H '{header}' '{base}/v1/refunds/summary?group_by=status,currency&interval=day&tz=Europe/Berlin'\
         \n  curl -H '{header}' '{base}/v1/status'\
         \n  curl '{base}/readyz'\
         \n  curl '{base}/metrics'\n\
         \nCtrl-C stops it.\n"
    );
    let _ = io::stdout().flush();
}

struct DemoProducer {
    brokers: String,
    topic: String,
    rate: u32,
    generate: GenerateParams,
    status: Arc<IngestStatus>,
    shutdown: Shutdown,
}

impl DemoProducer {
    /// Produces the generated stream until it ends or shutdown. Returns the
    /// number of messages produced.
    fn run(self) -> anyhow::Result<u64> {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("linger.ms", "5")
            .create()
            .context("failed to create the demo producer")?;
        let mut lines = LineProducer {
            producer: &producer,
            topic: &self.topic,
            pending: Vec::new(),
            produced: 0,
            interval: Duration::from_secs_f64(1.0 / f64::from(self.rate)),
            next_at: Instant::now(),
            status: &self.status,
            shutdown: &self.shutdown,
        };
        match generate(&self.generate, &mut lines) {
            Ok(_) => {}
            // The stop signal surfaces as a broken pipe (not Interrupted: write_all retries that).
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {}
            Err(error) => return Err(error).context("the demo producer failed"),
        }
        let produced = lines.produced;
        let _ = producer.flush(Duration::from_secs(2));
        Ok(produced)
    }
}

/// A `Write` that produces each line as one message, keyed by its refund
/// id, at a steady rate and never far ahead of the store.
struct LineProducer<'a> {
    producer: &'a BaseProducer,
    topic: &'a str,
    pending: Vec<u8>,
    produced: u64,
    interval: Duration,
    next_at: Instant,
    status: &'a IngestStatus,
    shutdown: &'a Shutdown,
}

impl LineProducer<'_> {
    fn produce(&mut self, line: &[u8]) -> io::Result<()> {
        // Steady rate, and no more than MAX_AHEAD unapplied messages.
        loop {
            if self.shutdown.is_triggered() {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stopping"));
            }
            let applied = self.status.applied_total();
            let ahead = i64::try_from(self.produced).unwrap_or(i64::MAX) - applied;
            let now = Instant::now();
            if ahead < MAX_AHEAD && now >= self.next_at {
                break;
            }
            let wait = if ahead >= MAX_AHEAD { Duration::from_millis(20) } else { self.next_at - now };
            thread::sleep(wait.min(Duration::from_millis(50)));
        }
        self.next_at = (self.next_at + self.interval).max(Instant::now() - Duration::from_secs(1));
        crate::produce::send_line(self.producer, self.topic, line).map_err(|e| io::Error::other(e.to_string()))?;
        self.produced += 1;
        Ok(())
    }
}

impl Write for LineProducer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.produce(&line[..line.len() - 1])?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
