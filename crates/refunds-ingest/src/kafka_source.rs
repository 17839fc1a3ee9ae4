//! Consuming a Kafka topic into the store, with an exactly-once effect.
//!
//! Three threads:
//!
//! - the **poll thread** owns the consumer group membership: it polls
//!   messages, validates them (off the writer's thread) and cuts batches by
//!   size and deadline;
//! - the **writer thread** applies each batch in ONE write transaction that
//!   also records, per partition, the next offset to consume
//!   (`kafka:<topic>:<partition>` checkpoints). Commits are atomic; by
//!   default every one is durable, else one per `durable_every` (and the
//!   last). After a durable commit it
//!   commits the same offsets to Kafka (only so that lag tools see progress)
//!   and tells the dead-letter thread how far the outbox is durable;
//! - the **dead-letter thread** produces the outbox's dead letters to
//!   `<topic>.dlq` and marks them sent once the broker acknowledges them.
//!
//! The store, not Kafka, holds the truth about positions: on assignment every
//! partition is positioned at the store's checkpoint (or the beginning of the
//! partition when the store has none), and the writer drops any message below
//! the checkpoint it holds, so redeliveries, rebalances and crashes (which roll
//! the store back to its last durable commit together with its offsets) never
//! apply an event twice or skip one.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use refunds_store::{Batch, CheckpointDelta, Durability, Item, SourcePos, Store};

use crate::now;

/// How to consume.
#[derive(Debug, Clone)]
pub struct KafkaParams {
    /// `bootstrap.servers`.
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    /// Where dead letters are produced (`<topic>.dlq` by default).
    pub dlq_topic: String,
    /// Most events per write transaction.
    pub batch_events: usize,
    /// A batch is cut at most this long after its first message.
    pub batch_wait: Duration,
    /// How often a commit is made durable (zero: every commit).
    pub durable_every: Duration,
    /// Extra librdkafka settings for the consumer and the producer (SASL,
    /// TLS, timeouts, ...). They override the defaults set here, except the
    /// ones the guarantee rests on (`enable.auto.commit`,
    /// `enable.auto.offset.store`), which are refused.
    pub options: Vec<(String, String)>,
    /// Consume each partition only below this offset (the rest is dropped):
    /// `verify` rebuilds exactly up to the live store's positions.
    pub stop_at: Option<HashMap<i32, i64>>,
    /// Produce the outbox to the DLQ topic (off for `verify`'s throwaway store).
    pub produce_dead_letters: bool,
    /// Commit offsets to Kafka for lag tools (off for throwaway groups).
    pub commit_offsets: bool,
}

impl KafkaParams {
    pub fn new(brokers: &str, topic: &str, group_id: &str) -> KafkaParams {
        KafkaParams {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            group_id: group_id.to_owned(),
            dlq_topic: format!("{topic}.dlq"),
            batch_events: crate::DEFAULT_BATCH_EVENTS,
            batch_wait: Duration::from_millis(100),
            durable_every: Duration::from_millis(crate::DEFAULT_DURABLE_EVERY_MS),
            options: Vec::new(),
            stop_at: None,
            produce_dead_letters: true,
            commit_offsets: true,
        }
    }

    /// The settings the guarantee rests on cannot be overridden, and every
    /// other one must be a setting librdkafka knows with a value it accepts
    /// (checked by creating, not connecting, a consumer and a producer).
    pub fn check_options(&self) -> Result<(), IngestError> {
        for (key, _) in &self.options {
            if PINNED_CONSUMER_OPTIONS.contains(&key.as_str()) {
                return Err(IngestError::Config(format!(
                    "kafka option {key} cannot be set: the store, not Kafka, keeps the consumer's offsets"
                )));
            }
        }
        consumer_config(self).create::<BaseConsumer>().map_err(|e| IngestError::Config(format!("consumer: {e}")))?;
        producer_config(self)
            .create::<BaseProducer>()
            .map_err(|e| IngestError::Config(format!("dead-letter producer: {e}")))?;
        Ok(())
    }
}

const PINNED_CONSUMER_OPTIONS: &[&str] = &["enable.auto.commit", "enable.auto.offset.store", "group.id"];

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("invalid Kafka configuration: {0}")]
    Config(String),
    #[error("failed to create the Kafka client: {0}")]
    Client(#[source] KafkaError),
    #[error("the store failed: {0}")]
    Store(#[from] refunds_store::StoreError),
    #[error("failed to start a thread: {0}")]
    Thread(#[from] std::io::Error),
    /// An I/O error (disk full, say) left the store unusable until it is
    /// closed and reopened; nothing of the failed batch was applied.
    #[error("the store must be reopened after an I/O error: {0}")]
    StoreFailed(String),
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The checkpoint name of one partition.
pub fn checkpoint_name(topic: &str, partition: i32) -> String {
    format!("kafka:{topic}:{partition}")
}

// ---------------------------------------------------------------------------
// Status shared with the API

/// Live figures of the consumer, read by `/v1/status`, `/readyz` and the
/// list responses' freshness headers.
#[derive(Debug, Default)]
pub struct IngestStatus {
    inner: Mutex<StatusInner>,
}

#[derive(Debug, Default)]
struct StatusInner {
    topic: String,
    /// Partitions assigned to this instance now.
    assigned: Vec<i32>,
    /// Next offset to apply, per partition, as the store holds it.
    applied: BTreeMap<i32, i64>,
    /// Last known high watermark and low watermark, per partition.
    high_watermarks: BTreeMap<i32, i64>,
    low_watermarks: BTreeMap<i32, i64>,
    /// Whether the first assignment has happened and been positioned.
    assigned_once: bool,
    /// Set after a failed store write, cleared by the next success.
    store_error: Option<String>,
    /// When the first message of this run was polled.
    first_message_at: Option<Instant>,
}

/// One partition's progress, as `/v1/status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionFigures {
    pub topic: String,
    pub partition: i32,
    /// The next offset to apply (Kafka's committed-offset convention): every
    /// message below it is in the store.
    pub applied_offset: i64,
    pub high_watermark: Option<i64>,
    /// `high_watermark - max(applied_offset, low watermark)`.
    pub lag: Option<i64>,
}

impl IngestStatus {
    pub fn new(topic: &str) -> IngestStatus {
        IngestStatus { inner: Mutex::new(StatusInner { topic: topic.to_owned(), ..StatusInner::default() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The assigned partitions' figures, by partition.
    pub fn partitions(&self) -> Vec<PartitionFigures> {
        let inner = self.lock();
        inner
            .assigned
            .iter()
            .map(|&partition| {
                let applied_offset = inner.applied.get(&partition).copied().unwrap_or(0);
                let high_watermark = inner.high_watermarks.get(&partition).copied();
                let low = inner.low_watermarks.get(&partition).copied().unwrap_or(0);
                let lag = high_watermark.map(|hw| (hw - applied_offset.max(low)).max(0));
                PartitionFigures { topic: inner.topic.clone(), partition, applied_offset, high_watermark, lag }
            })
            .collect()
    }

    /// Messages applied over the assigned partitions (the sum of their next
    /// offsets), without building the per-partition figures.
    pub fn applied_total(&self) -> i64 {
        let inner = self.lock();
        inner.assigned.iter().map(|p| inner.applied.get(p).copied().unwrap_or(0)).sum()
    }

    /// Total lag over the assigned partitions; `None` until partitions are
    /// assigned and every high watermark is known.
    pub fn total_lag(&self) -> Option<i64> {
        if !self.lock().assigned_once {
            return None;
        }
        let partitions = self.partitions();
        if partitions.is_empty() {
            return None;
        }
        partitions.iter().map(|p| p.lag).sum()
    }

    /// Why the consumer is not ready, or `None` when it is: partitions are
    /// assigned, the store writes, and the lag is at most `max_lag`.
    pub fn not_ready_reason(&self, max_lag: i64) -> Option<String> {
        if let Some(err) = &self.lock().store_error {
            return Some(format!("the store cannot write: {err}"));
        }
        match self.total_lag() {
            None => Some("waiting for partitions to be assigned and their high watermarks".to_owned()),
            Some(lag) if lag > max_lag => Some(format!("lag {lag} is above {max_lag}")),
            Some(_) => None,
        }
    }

    /// Forgets everything but the topic: a new store is being consumed into.
    pub fn reset(&self) {
        let mut inner = self.lock();
        let topic = std::mem::take(&mut inner.topic);
        *inner = StatusInner { topic, ..StatusInner::default() };
    }

    /// When the first message of this run was polled.
    pub fn first_message_at(&self) -> Option<Instant> {
        self.lock().first_message_at
    }

    fn set_applied(&self, offsets: &HashMap<i32, i64>) {
        {
            let mut inner = self.lock();
            for (&partition, &offset) in offsets {
                inner.applied.insert(partition, offset);
            }
            inner.store_error = None;
        }
        self.publish_gauges();
    }

    /// Per-partition gauges: applied offset, high watermark and lag.
    fn publish_gauges(&self) {
        for p in self.partitions() {
            let labels = [("topic", p.topic.clone()), ("partition", p.partition.to_string())];
            metrics::gauge!("refund_projector_partition_applied_offset", &labels).set(p.applied_offset as f64);
            if let Some(hw) = p.high_watermark {
                metrics::gauge!("refund_projector_partition_high_watermark", &labels).set(hw as f64);
            }
            if let Some(lag) = p.lag {
                metrics::gauge!("refund_projector_partition_lag_events", &labels).set(lag as f64);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The consumer context: positions partitions at the store's checkpoints.

struct ConsumeContext {
    store: Arc<Store>,
    topic: String,
    status: Arc<IngestStatus>,
}

impl ClientContext for ConsumeContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        {
            let mut inner = self.status.lock();
            for (&partition, figures) in &topic.partitions {
                // librdkafka reports the internal "UA" partition as -1, and -1
                // offsets for partitions it has not fetched yet.
                if partition < 0 || figures.hi_offset < 0 {
                    continue;
                }
                inner.high_watermarks.insert(partition, figures.hi_offset);
                inner.low_watermarks.insert(partition, figures.lo_offset.max(0));
            }
        }
        self.status.publish_gauges();
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(facility = fac, "librdkafka: {log_message}")
            }
            L::Warning => tracing::warn!(facility = fac, "librdkafka: {log_message}"),
            L::Notice | L::Info => tracing::info!(facility = fac, "librdkafka: {log_message}"),
            L::Debug => tracing::debug!(facility = fac, "librdkafka: {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, "kafka: {reason}");
    }
}

impl ConsumerContext for ConsumeContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), rdkafka::consumer::RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut assigned = Vec::new();
                for element in tpl.elements() {
                    assigned.push((element.topic().to_owned(), element.partition()));
                }
                let mut applied = HashMap::new();
                for (topic, partition) in &assigned {
                    let offset = match self.store.checkpoint(&checkpoint_name(topic, *partition)) {
                        Ok(Some(checkpoint)) => {
                            let next = i64::try_from(checkpoint.position).unwrap_or(i64::MAX);
                            applied.insert(*partition, next);
                            Offset::Offset(next)
                        }
                        Ok(None) => Offset::Beginning,
                        Err(error) => {
                            // Without the stored position the partition could
                            // only be read from the beginning: harmless (the
                            // writer drops what it has), so do that.
                            tracing::error!(%error, partition, "cannot read the stored offset; reading from the beginning");
                            Offset::Beginning
                        }
                    };
                    if let Err(error) = tpl.set_partition_offset(topic, *partition, offset) {
                        tracing::error!(%error, partition, "cannot position the partition");
                    }
                }
                let result = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                if let Err(error) = result {
                    tracing::error!(%error, "assignment failed");
                }
                let partitions: Vec<i32> = assigned.iter().map(|(_, p)| *p).collect();
                tracing::info!(?partitions, "partitions assigned; positioned at the store's offsets");
                let mut inner = self.status.lock();
                for (partition, offset) in applied {
                    inner.applied.insert(partition, offset);
                }
                if cooperative {
                    inner.assigned.extend(partitions);
                } else {
                    inner.assigned = partitions;
                }
                inner.assigned.sort_unstable();
                inner.assigned.dedup();
                inner.assigned_once = true;
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(partitions = ?revoked, "partitions revoked");
                let result = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(error) = result {
                    tracing::error!(%error, "unassignment failed");
                }
                let mut inner = self.status.lock();
                inner.assigned.retain(|p| !revoked.contains(p));
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed");
                let _ = consumer.unassign();
                self.status.lock().assigned.clear();
            }
        }
    }
}

type Consumer_ = BaseConsumer<ConsumeContext>;

/// The consumer's librdkafka settings (public so that a benchmark can read a
/// topic with exactly the same configuration).
pub fn consumer_config(params: &KafkaParams) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &params.brokers)
        .set("group.id", &params.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "1000")
        // A topic created after the consumer started is found within 5 s
        // (librdkafka's default is 5 min).
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("fetch.wait.max.ms", "100")
        .set("queued.max.messages.kbytes", "262144")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // Messages up to the contract's 256 KiB limit and beyond (a larger
        // one is dead-lettered as too_large, so it must still be fetched).
        .set("fetch.message.max.bytes", "4194304")
        .set("max.partition.fetch.bytes", "4194304");
    for (key, value) in &params.options {
        config.set(key, value);
    }
    config
}

fn producer_config(params: &KafkaParams) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &params.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .set("message.max.bytes", "8388608")
        .set("linger.ms", "5");
    for (key, value) in &params.options {
        // Consumer-only settings would make the producer refuse to start.
        if !is_consumer_only(key) {
            config.set(key, value);
        }
    }
    config
}

fn is_consumer_only(key: &str) -> bool {
    key.starts_with("fetch.")
        || key.starts_with("auto.")
        || key.starts_with("session.")
        || key.starts_with("heartbeat.")
        || key.starts_with("group.")
        || key.starts_with("partition.assignment")
        || key.starts_with("max.poll")
        || key.starts_with("queued.")
        || key.starts_with("max.partition")
        || key == "isolation.level"
        || key == "enable.partition.eof"
}

// ---------------------------------------------------------------------------
// Running

/// Asks a running [`consume`] to stop: the current batch is finished (or
/// abandoned when the store cannot write), the last commit made durable, the
/// group left.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Totals of one [`consume`] run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestReport {
    pub messages: u64,
    pub applied: u64,
    pub duplicate: u64,
    pub conflicting_duplicate: u64,
    pub invalid: u64,
    /// Messages below the store's checkpoint, dropped (redeliveries).
    pub skipped: u64,
    pub dead_letters_sent: u64,
}

impl std::ops::AddAssign for IngestReport {
    fn add_assign(&mut self, other: IngestReport) {
        self.messages += other.messages;
        self.applied += other.applied;
        self.duplicate += other.duplicate;
        self.conflicting_duplicate += other.conflicting_duplicate;
        self.invalid += other.invalid;
        self.skipped += other.skipped;
        self.dead_letters_sent += other.dead_letters_sent;
    }
}

/// Consumes until `shutdown` is triggered. Blocks the calling thread, which
/// becomes the poll thread.
pub fn consume(
    store: Arc<Store>,
    params: &KafkaParams,
    status: Arc<IngestStatus>,
    shutdown: Shutdown,
) -> Result<IngestReport, IngestError> {
    params.check_options()?;
    let context = ConsumeContext { store: store.clone(), topic: params.topic.clone(), status: status.clone() };
    let consumer: Arc<Consumer_> =
        Arc::new(consumer_config(params).create_with_context(context).map_err(IngestError::Client)?);
    consumer.subscribe(&[params.topic.as_str()]).map_err(IngestError::Client)?;
    let dead_letters = DeadLetterSender::start(store.clone(), params)?;

    let (tx, rx) = sync_channel::<PolledBatch>(1);
    let writer = {
        let store = store.clone();
        let consumer = consumer.clone();
        let params = params.clone();
        let status = status.clone();
        let outbox = dead_letters.handle();
        let shutdown = shutdown.clone();
        thread::Builder::new()
            .name("kafka-writer".to_owned())
            .spawn(move || write_batches(&store, &consumer, &params, &status, &outbox, &rx, &shutdown))?
    };
    let mut messages = 0u64;
    let topic: Arc<str> = Arc::from(params.topic.as_str());
    while !shutdown.is_triggered() {
        let batch = poll_batch(&consumer, &topic, params, &shutdown);
        if batch.items.is_empty() {
            // Idle: a writer that stopped (the store failed) must be noticed
            // here too, or nothing would ever hand it a batch to fail on.
            if writer.is_finished() {
                break;
            }
            continue;
        }
        if messages == 0 {
            status.lock().first_message_at.get_or_insert(batch.started);
        }
        let Some(sent) = send_batch(&tx, batch, &consumer, &topic, params, &shutdown, &writer) else {
            break;
        };
        messages += sent;
    }
    drop(tx);
    let written = writer.join().unwrap_or_else(|_| {
        tracing::error!("the writer thread panicked");
        WriterReport::default()
    });
    let sent = dead_letters.stop();
    // Dropping the consumer closes it: it leaves the group.
    drop(consumer);
    if let Some(why) = written.store_failed {
        return Err(IngestError::StoreFailed(why));
    }
    tracing::info!(messages, applied = written.applied, "consumer stopped");
    Ok(IngestReport {
        messages,
        applied: written.applied,
        duplicate: written.duplicate,
        conflicting_duplicate: written.conflicting_duplicate,
        invalid: written.invalid,
        skipped: written.skipped,
        dead_letters_sent: sent,
    })
}

/// Hands a batch to the writer; returns how many messages it held, or `None`
/// (abandoning the batch) on shutdown or when the writer is gone. While the
/// writer is busy with a batch and another waits for it, this one keeps
/// growing (up to `batch_events`) instead of waiting: when the consumer is
/// behind, batches are then full, and a big batch costs less per event (the
/// deadline of `batch_wait` is for light traffic). Measured with
/// `scripts/bench-kafka.sh`: batches averaged 18.6k events without this, 37k
/// with it, and the durable ingest went from 46k to 62k events/s.
fn send_batch(
    tx: &SyncSender<PolledBatch>,
    mut batch: PolledBatch,
    consumer: &Consumer_,
    topic: &Arc<str>,
    params: &KafkaParams,
    shutdown: &Shutdown,
    writer: &thread::JoinHandle<WriterReport>,
) -> Option<u64> {
    let (received, handed_over) = loop {
        let len = batch.items.len() as u64;
        match tx.try_send(batch) {
            Ok(()) => break (len, true),
            Err(TrySendError::Disconnected(_)) => break (len, false),
            Err(TrySendError::Full(back)) => {
                if writer.is_finished() {
                    break (len, false);
                }
                batch = back;
                // On shutdown the batch in hand is still handed over: the
                // writer finishes it and makes it durable.
                if shutdown.is_triggered() || batch.items.len() >= params.batch_events {
                    thread::sleep(Duration::from_millis(1));
                    continue;
                }
                let deadline = Instant::now() + Duration::from_millis(2);
                while batch.items.len() < params.batch_events && Instant::now() < deadline {
                    poll_one(consumer, topic, &mut batch.items, Duration::from_millis(1));
                }
            }
        }
    };
    metrics::counter!("refund_projector_events_received_total", "source" => "kafka").increment(received);
    handed_over.then_some(received)
}

struct PolledBatch {
    items: Vec<Item>,
    started: Instant,
}

/// Polls until the batch is full, its deadline passes, or shutdown.
fn poll_batch(consumer: &Consumer_, topic: &Arc<str>, params: &KafkaParams, shutdown: &Shutdown) -> PolledBatch {
    let mut items = Vec::new();
    let started = Instant::now();
    let mut first_at: Option<Instant> = None;
    while items.len() < params.batch_events && !shutdown.is_triggered() {
        let wait = match first_at {
            Some(first) => match params.batch_wait.checked_sub(first.elapsed()) {
                Some(left) => left,
                None => break,
            },
            None => Duration::from_millis(100),
        };
        match poll_one(consumer, topic, &mut items, wait) {
            Polled::Message => {
                first_at.get_or_insert_with(Instant::now);
            }
            Polled::Nothing if first_at.is_none() => break,
            Polled::Nothing => {}
        }
    }
    PolledBatch { items, started }
}

enum Polled {
    Message,
    Nothing,
}

/// Polls one message into `items`, waiting at most `wait` for it.
fn poll_one(consumer: &Consumer_, topic: &Arc<str>, items: &mut Vec<Item>, wait: Duration) -> Polled {
    let Some(result) = consumer.poll(wait) else { return Polled::Nothing };
    let message = match result {
        Ok(message) => message,
        Err(error) => {
            // Transport errors while a broker is away: librdkafka
            // reconnects by itself; keep polling.
            tracing::warn!(%error, "poll failed");
            return Polled::Nothing;
        }
    };
    let raw = message.payload().unwrap_or_default().to_vec();
    let topic = if **topic == *message.topic() { topic.clone() } else { Arc::from(message.topic()) };
    // Validated and packed here, on the consumer's thread, not the writer's.
    let source = SourcePos::Kafka { topic, partition: message.partition(), offset: message.offset() };
    items.push(Item::received(source, now(), raw, message.key().map(<[u8]>::to_vec)));
    Polled::Message
}

#[derive(Debug, Clone, Default)]
struct WriterReport {
    applied: u64,
    duplicate: u64,
    conflicting_duplicate: u64,
    invalid: u64,
    skipped: u64,
    /// Set when the writer stopped because the store must be reopened.
    store_failed: Option<String>,
}

/// Runs on the writer thread.
fn write_batches(
    store: &Store,
    consumer: &Consumer_,
    params: &KafkaParams,
    status: &IngestStatus,
    outbox: &OutboxHandle,
    rx: &Receiver<PolledBatch>,
    shutdown: &Shutdown,
) -> WriterReport {
    let mut report = WriterReport::default();
    // The next offset to apply per partition: what the store holds.
    let mut applied: HashMap<i32, i64> = HashMap::new();
    let prefix = format!("kafka:{}:", params.topic);
    match store.checkpoints_with_prefix(&prefix) {
        Ok(checkpoints) => {
            for (name, checkpoint) in checkpoints {
                if let Some(partition) = name.strip_prefix(&prefix).and_then(|p| p.parse::<i32>().ok()) {
                    applied.insert(partition, i64::try_from(checkpoint.position).unwrap_or(i64::MAX));
                }
            }
        }
        Err(error) => tracing::error!(%error, "cannot read the stored offsets"),
    }
    status.set_applied(&applied);
    let mut last_durable = Instant::now();
    let mut undurable = false;
    loop {
        let polled = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(polled) => Some(polled),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let Some(polled) = polled else {
            // Idle: make the last commits durable so offsets and dead letters
            // go out without waiting for more traffic.
            if undurable
                && last_durable.elapsed() >= params.durable_every
                && commit_durable(store, consumer, params, status, outbox, &applied, shutdown)
            {
                last_durable = Instant::now();
                undurable = false;
            }
            continue;
        };
        let (batch, advanced, skipped) = store_batch(polled.items, &applied, params);
        report.skipped += skipped;
        if batch.items.is_empty() {
            continue;
        }
        let durable = last_durable.elapsed() >= params.durable_every;
        let durability = if durable { Durability::Immediate } else { Durability::None };
        // partition:from..to of every partition in the batch.
        let offsets = batch
            .checkpoints
            .iter()
            .map(|c| format!("{}:{}..{}", c.source.rsplit(':').next().unwrap_or(""), c.from, c.to))
            .collect::<Vec<_>>()
            .join(",");
        let span = tracing::info_span!("batch", events = batch.items.len(), %offsets, durable, duration_ms = tracing::field::Empty).entered();
        let applying = Instant::now();
        let summary = match apply_with_retry(store, &batch, durability, status, shutdown) {
            Applied::Done(summary) => summary,
            // Shutdown while the store could not write: the batch is
            // abandoned whole; its offsets were not recorded.
            Applied::Stopped => break,
            Applied::Reopen(why) => {
                report.store_failed = Some(why);
                return report;
            }
        };
        span.record("duration_ms", millis(applying.elapsed()));
        tracing::debug!(
            applied = summary.applied,
            duplicate = summary.duplicate,
            invalid = summary.invalid,
            since_poll_ms = millis(polled.started.elapsed()),
            "batch committed"
        );
        drop(span);
        report.applied += summary.applied;
        report.duplicate += summary.duplicate;
        report.conflicting_duplicate += summary.conflicting_duplicate;
        report.invalid += summary.invalid;
        applied.extend(advanced);
        status.set_applied(&applied);
        if durable {
            last_durable = Instant::now();
            undurable = false;
            after_durable(store, consumer, params, outbox, &applied);
        } else {
            undurable = true;
        }
    }
    if undurable {
        commit_durable(store, consumer, params, status, outbox, &applied, shutdown);
    }
    report
}

/// Drops messages the store already holds and builds the store batch with
/// one checkpoint per partition. Returns the batch, the new next offsets and
/// how many messages were dropped.
fn store_batch(items: Vec<Item>, applied: &HashMap<i32, i64>, params: &KafkaParams) -> (Batch, HashMap<i32, i64>, u64) {
    let topic = params.topic.as_str();
    let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    let mut kept = Vec::with_capacity(items.len());
    let mut skipped = 0;
    for item in items {
        let SourcePos::Kafka { partition, offset, .. } = item.source else {
            continue;
        };
        let next = applied.get(&partition).copied().unwrap_or(0);
        let seen = ranges.get(&partition).map(|r| r.1);
        let beyond = params.stop_at.as_ref().is_some_and(|stop| offset >= stop.get(&partition).copied().unwrap_or(0));
        if offset < next || seen.is_some_and(|last| offset <= last) || beyond {
            skipped += 1;
            continue;
        }
        let range = ranges.entry(partition).or_insert((offset, offset));
        range.1 = offset;
        kept.push(item);
    }
    let mut checkpoints = Vec::with_capacity(ranges.len());
    let mut advanced = HashMap::new();
    for (partition, (first, last)) in ranges {
        let from = applied.get(&partition).copied().unwrap_or(first).min(first);
        checkpoints.push(CheckpointDelta {
            source: checkpoint_name(topic, partition),
            from: u64::try_from(from).unwrap_or(0),
            to: u64::try_from(last + 1).unwrap_or(0),
            state: Vec::new(),
            restart: false,
        });
        advanced.insert(partition, last + 1);
    }
    (Batch { items: kept, checkpoints }, advanced, skipped)
}

/// Applies a batch, retrying with backoff while the store cannot write.
/// Returns `None` when shutdown comes first.
/// What became of a batch handed to the store.
enum Applied {
    Done(refunds_store::BatchSummary),
    /// Shutdown came first.
    Stopped,
    /// An I/O error: redb refuses every later write until the store is
    /// reopened.
    Reopen(String),
}

/// redb's answer to a failed write (ENOSPC, EIO): the database must be closed
/// and reopened before it writes again.
fn needs_reopen(error: &refunds_store::StoreError) -> bool {
    matches!(error, refunds_store::StoreError::Storage(redb::Error::Io(_) | redb::Error::PreviousIo))
}

fn apply_with_retry(
    store: &Store,
    batch: &Batch,
    durability: Durability,
    status: &IngestStatus,
    shutdown: &Shutdown,
) -> Applied {
    let mut backoff = Duration::from_millis(100);
    loop {
        match store.apply_batch(batch, durability) {
            Ok(summary) => return Applied::Done(summary),
            Err(error) if needs_reopen(&error) => {
                tracing::error!(%error, "store write failed; offsets stay where they are; reopening the store");
                status.lock().store_error = Some(error.to_string());
                return Applied::Reopen(error.to_string());
            }
            Err(error) => {
                tracing::error!(%error, retry_in_ms = millis(backoff), "store write failed; offsets stay where they are");
                status.lock().store_error = Some(error.to_string());
                let until = Instant::now() + backoff;
                while Instant::now() < until {
                    if shutdown.is_triggered() {
                        return Applied::Stopped;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// An empty durable commit: makes every earlier atomic commit durable.
fn commit_durable(
    store: &Store,
    consumer: &Consumer_,
    params: &KafkaParams,
    status: &IngestStatus,
    outbox: &OutboxHandle,
    applied: &HashMap<i32, i64>,
    shutdown: &Shutdown,
) -> bool {
    if !matches!(apply_with_retry(store, &Batch::default(), Durability::Immediate, status, shutdown), Applied::Done(_))
    {
        return false;
    }
    after_durable(store, consumer, params, outbox, applied);
    true
}

/// What may leave the process once a commit is durable: Kafka offsets (for
/// lag tools) and the dead letters recorded so far.
fn after_durable(
    store: &Store,
    consumer: &Consumer_,
    params: &KafkaParams,
    outbox: &OutboxHandle,
    applied: &HashMap<i32, i64>,
) {
    match store.last_dead_letter_sequence() {
        Ok(seq) => outbox.durable_up_to(seq),
        Err(error) => tracing::error!(%error, "cannot read the dead-letter outbox"),
    }
    let mut tpl = TopicPartitionList::new();
    for (&partition, &offset) in applied {
        if tpl.add_partition_offset(&params.topic, partition, Offset::Offset(offset)).is_err() {
            continue;
        }
    }
    if params.commit_offsets
        && tpl.count() > 0
        && let Err(error) = consumer.commit(&tpl, CommitMode::Async)
    {
        // Partitions no longer assigned, or a broker away: the store has
        // the offsets; Kafka's copy only feeds lag tools.
        tracing::debug!(%error, "offset commit to Kafka failed");
    }
}

// ---------------------------------------------------------------------------
// Dead letters: the outbox, produced to the DLQ topic.

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_assigned_with_known_watermarks_and_the_lag_at_most_the_bound() {
        let status = IngestStatus::new("t");
        assert!(status.not_ready_reason(1_000).is_some(), "nothing assigned yet");
        {
            let mut inner = status.lock();
            inner.assigned = vec![0, 1];
            inner.assigned_once = true;
            inner.high_watermarks.insert(0, 5_000);
        }
        assert!(status.not_ready_reason(1_000).unwrap().contains("high watermarks"), "partition 1 unknown");
        status.lock().high_watermarks.insert(1, 700);
        status.set_applied(&HashMap::from([(0, 4_000), (1, 0)]));
        // Lag 1,000 + 700 = 1,700: above 1,000, within 2,000.
        assert_eq!(status.total_lag(), Some(1_700));
        assert_eq!(status.applied_total(), 4_000);
        assert!(status.not_ready_reason(1_000).unwrap().contains("1700"));
        assert_eq!(status.not_ready_reason(2_000), None);
        // Retention moved partition 1's start: lag counts from the low watermark.
        status.lock().low_watermarks.insert(1, 600);
        assert_eq!(status.total_lag(), Some(1_100));
        status.lock().store_error = Some("disk full".to_owned());
        assert!(status.not_ready_reason(2_000).unwrap().contains("disk full"));
    }

    #[test]
    fn a_dead_letter_over_the_limit_is_cut_on_a_character_boundary_and_says_so() {
        let raw = format!("{}é{}", "x".repeat(DLQ_RAW_LIMIT - 1), "y".repeat(10));
        let doc =
            serde_json::json!({"reason": "too_large", "message": "m", "raw": raw, "source": {}, "received_at": "t"});
        let value = dlq_value(&doc);
        assert_eq!(value["raw"].as_str().unwrap().len(), DLQ_RAW_LIMIT - 1);
        assert_eq!(value["raw_truncated"], true);
        assert_eq!(value["raw_bytes"], raw.len());
        let small = serde_json::json!({"reason": "malformed_json", "message": "m", "raw": "{", "source": {}, "received_at": "t"});
        let value = dlq_value(&small);
        assert_eq!(value["raw"], "{");
        assert!(value.get("raw_truncated").is_none());
    }
}

struct DeliveryContext {
    delivered: Mutex<Vec<u64>>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, sequence: Box<u64>) {
        match result {
            Ok(_) => self.delivered.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(*sequence),
            Err((error, _)) => tracing::warn!(%error, sequence = *sequence, "dead letter not delivered; will retry"),
        }
    }
}

/// Tells the dead-letter thread how far the outbox is durable.
#[derive(Clone)]
pub(crate) struct OutboxHandle(Arc<(AtomicU64, Mutex<bool>, Condvar)>);

impl OutboxHandle {
    fn durable_up_to(&self, sequence: u64) {
        self.0.0.fetch_max(sequence, Ordering::SeqCst);
        let (_, flag, wake) = &*self.0;
        *flag.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        wake.notify_one();
    }

    fn wait(&self, timeout: Duration) {
        let (_, flag, wake) = &*self.0;
        let guard = flag.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut guard, _) =
            wake.wait_timeout_while(guard, timeout, |woken| !*woken).unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = false;
    }
}

struct DeadLetterSender {
    handle: OutboxHandle,
    thread: thread::JoinHandle<u64>,
    stop: Arc<AtomicBool>,
}

impl DeadLetterSender {
    fn start(store: Arc<Store>, params: &KafkaParams) -> Result<DeadLetterSender, IngestError> {
        let producer: BaseProducer<DeliveryContext> = producer_config(params)
            .create_with_context(DeliveryContext { delivered: Mutex::new(Vec::new()) })
            .map_err(IngestError::Client)?;
        // What the store holds at open is durable (a crash rolls back to the
        // last durable commit).
        let handle = OutboxHandle(Arc::new((
            AtomicU64::new(store.last_dead_letter_sequence()?),
            Mutex::new(true),
            Condvar::new(),
        )));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let handle = handle.clone();
            let stop = stop.clone();
            let topic = params.dlq_topic.clone();
            let enabled = params.produce_dead_letters;
            thread::Builder::new()
                .name("kafka-dead-letters".to_owned())
                .spawn(move || send_dead_letters(&store, &producer, &topic, &handle, &stop, enabled))?
        };
        Ok(DeadLetterSender { handle, thread, stop })
    }

    fn handle(&self) -> OutboxHandle {
        self.handle.clone()
    }

    /// Sends what is durable (bounded in time), then stops.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.durable_up_to(0);
        self.thread.join().unwrap_or(0)
    }
}

fn send_dead_letters(
    store: &Store,
    producer: &BaseProducer<DeliveryContext>,
    topic: &str,
    handle: &OutboxHandle,
    stop: &AtomicBool,
    enabled: bool,
) -> u64 {
    let mut sent = 0;
    let mut failures = 0u32;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let durable = handle.0.0.load(Ordering::SeqCst);
        let attempt =
            if enabled { send_once(store, producer, topic, durable, if stopping { 3 } else { 30 }) } else { Ok(0) };
        match attempt {
            Ok(n) => {
                sent += n;
                failures = 0;
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, "dead letters stay in the outbox; will retry");
            }
        }
        if stopping {
            return sent;
        }
        let wait = if failures > 0 {
            Duration::from_millis(500 * u64::from(failures.min(20)))
        } else {
            Duration::from_secs(1)
        };
        handle.wait(wait);
    }
}

/// Most bytes of `raw` a DLQ message carries: the broker's default
/// `max.message.bytes` is 1 MiB, and a `too_large` message may be bigger than
/// that once escaped into JSON. The store keeps the whole text.
const DLQ_RAW_LIMIT: usize = 64 * 1024;

/// The DLQ message value: the file DLQ's fields plus the source; `raw` cut
/// at [`DLQ_RAW_LIMIT`] bytes (on a character boundary) with
/// `raw_truncated` and `raw_bytes` when longer.
fn dlq_value(doc: &serde_json::Value) -> serde_json::Value {
    let raw = doc["raw"].as_str().unwrap_or_default();
    let mut value = serde_json::json!({
        "reason": doc["reason"],
        "message": doc["message"],
        "raw": raw,
        "source": doc["source"],
        "received_at": doc["received_at"],
    });
    if raw.len() > DLQ_RAW_LIMIT {
        let mut end = DLQ_RAW_LIMIT;
        while !raw.is_char_boundary(end) {
            end -= 1;
        }
        value["raw"] = serde_json::json!(&raw[..end]);
        value["raw_truncated"] = serde_json::json!(true);
        value["raw_bytes"] = serde_json::json!(raw.len());
    }
    value
}

/// Produces the durable pending dead letters of Kafka sources and marks the
/// acknowledged ones sent. Returns how many were marked.
fn send_once(
    store: &Store,
    producer: &BaseProducer<DeliveryContext>,
    topic: &str,
    durable_up_to: u64,
    flush_seconds: u64,
) -> Result<u64, String> {
    let mut marked = 0;
    // Pages through the outbox: letters of other destinations (a replayed
    // file's) stay behind without blocking these.
    let mut after = 0;
    loop {
        let pending = store.pending_dead_letters_after(after, 5_000).map_err(|e| e.to_string())?;
        let Some(last) = pending.last().map(|l| l.sequence) else {
            return Ok(marked);
        };
        if pending[0].sequence > durable_up_to {
            return Ok(marked);
        }
        after = last;
        let letters: Vec<_> = pending
            .into_iter()
            .filter(|l| l.sequence <= durable_up_to && l.document.pointer("/source/topic").is_some())
            .collect();
        if letters.is_empty() {
            continue;
        }
        for letter in &letters {
            let doc = &letter.document;
            let text = |pointer: &str| match doc.pointer(pointer) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            let headers = OwnedHeaders::new()
                .insert(Header { key: "reason", value: Some(text("/reason").as_bytes()) })
                .insert(Header { key: "message", value: Some(text("/message").as_bytes()) })
                .insert(Header { key: "source_topic", value: Some(text("/source/topic").as_bytes()) })
                .insert(Header { key: "source_partition", value: Some(text("/source/partition").as_bytes()) })
                .insert(Header { key: "source_offset", value: Some(text("/source/offset").as_bytes()) });
            let value = serde_json::to_vec(&dlq_value(doc)).map_err(|e| e.to_string())?;
            let key = doc.get("key").and_then(|k| k.as_str()).map(str::as_bytes);
            let mut record = BaseRecord::<[u8], [u8], Box<u64>>::with_opaque_to(topic, Box::new(letter.sequence))
                .payload(&value[..])
                .headers(headers);
            if let Some(key) = key {
                record = record.key(key);
            }
            let mut record = record;
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                        producer.poll(Duration::from_millis(50));
                        record = back;
                    }
                    Err((error, _)) => return Err(format!("cannot produce to {topic}: {error}")),
                }
            }
        }
        let flushed = producer.flush(Duration::from_secs(flush_seconds));
        let delivered = std::mem::take(
            &mut *producer.context().delivered.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if !delivered.is_empty() {
            store.mark_dead_letters_sent(&delivered).map_err(|e| e.to_string())?;
            metrics::counter!("refund_projector_dead_letters_sent_total", "destination" => "kafka")
                .increment(delivered.len() as u64);
            marked += delivered.len() as u64;
        }
        if let Err(error) = flushed {
            return Err(format!("{} dead letters not acknowledged: {error}", letters.len() - delivered.len()));
        }
        if delivered.len() < letters.len() {
            return Err(format!("{} dead letters not acknowledged", letters.len() - delivered.len()));
        }
    }
}
