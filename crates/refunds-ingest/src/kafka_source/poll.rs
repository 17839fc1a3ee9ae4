//! The poll thread: it takes messages from the partition queues (oldest
//! first, see [`super::merge`]) and cuts batches by size and deadline.

use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use refunds_store::Item;

use super::history::{Acceptance, Assignment};
use super::merge::Merger;
use super::writer::WriterReport;
use super::{IngestStatus, KafkaParams, Shutdown};

pub(super) struct ConsumeContext {
    pub(super) topic: String,
    pub(super) status: Arc<IngestStatus>,
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

/// No rebalance callback: every instance assigns itself every partition
/// (see `history`), so there is no group membership to rebalance.
impl ConsumerContext for ConsumeContext {}

pub(super) type Consumer_ = BaseConsumer<ConsumeContext>;

/// Hands a batch to the writer; returns how many messages it held, or `None`
/// (abandoning the batch) on shutdown or when the writer is gone. While the
/// writer is busy with a batch and another waits for it, this one keeps
/// growing (up to `batch_events`) instead of waiting: when the consumer is
/// behind, batches are then full, and a big batch costs less per event (the
/// deadline of `batch_wait` is for light traffic). Measured with
/// `scripts/bench-kafka.sh`: batches averaged 18.6k events without this, 37k
/// with it, and the durable ingest went from 46k to 62k events/s.
pub(super) fn send_batch(
    tx: &SyncSender<PolledBatch>,
    mut batch: PolledBatch,
    merger: &mut Merger,
    assignment: &mut Assignment,
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
                    match merger.next(assignment, Duration::from_millis(1)) {
                        Some(item) => batch.items.push(item),
                        None => break,
                    }
                }
            }
        }
    };
    metrics::counter!("refund_projector_events_received_total", "source" => "kafka").increment(received);
    handed_over.then_some(received)
}

pub(super) struct PolledBatch {
    /// History gaps to record before the items (always alone: a batch is cut
    /// before a gap is accepted).
    pub(super) accept: Vec<Acceptance>,
    pub(super) items: Vec<Item>,
    pub(super) started: Instant,
}

/// Polls until the batch is full, its deadline passes, or shutdown.
pub(super) fn poll_batch(
    merger: &mut Merger,
    assignment: &mut Assignment,
    params: &KafkaParams,
    shutdown: &Shutdown,
) -> PolledBatch {
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
        match merger.next(assignment, wait) {
            Some(item) => {
                items.push(item);
                first_at.get_or_insert_with(Instant::now);
            }
            None if first_at.is_none() => break,
            None => {}
        }
    }
    PolledBatch { accept: Vec::new(), items, started }
}
