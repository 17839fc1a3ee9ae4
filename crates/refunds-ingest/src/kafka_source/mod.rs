//! Consuming a Kafka topic into the store, with an exactly-once effect.
//!
//! Three threads:
//!
//! - the **poll thread** assigns itself every partition of the topic at the
//!   store's positions (see [`history`]: one store holds the whole topic,
//!   and a partition whose history is incomplete is never consumed in
//!   silence), reads every partition from its own queue and hands the
//!   messages over oldest first by timestamp (see [`merge`]: a batch then
//!   covers one stretch of time, as a replay's does), validates them (off
//!   the writer's thread) and cuts batches by size and deadline;
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
//! The store, not Kafka, holds the truth about positions: every partition is
//! positioned at the store's checkpoint (offset 0 when the store has none),
//! and the writer drops any message below the checkpoint it holds, so
//! redeliveries and crashes (which roll the store back to its last durable
//! commit together with its offsets) never apply an event twice or skip one.
//! The consumer group is used only to publish those offsets for lag tools:
//! it has no members, so several instances sharing a group id each build the
//! whole projection, and a restarted instance resumes at once.
//!
//! The files follow the threads: [`config`] (settings), [`status`] (the
//! figures the API reads), [`history`] (the assignment and its history
//! checks), [`merge`] (the partition queues), [`poll`] (the poll thread),
//! [`writer`] (the writer thread) and [`dead_letters`] (the dead-letter
//! thread).

mod config;
mod dead_letters;
mod history;
mod merge;
mod poll;
mod status;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use refunds_store::{Item, Store};

pub use config::{KafkaParams, consumer_config};
pub use history::{GapPolicy, GapReason, HistoryGap, TopicSettings, find_gap};
pub use status::{IngestStatus, PartitionFigures};

use dead_letters::DeadLetterSender;
use history::Assignment;
use merge::Merger;
use poll::{ConsumeContext, Consumer_, PolledBatch, poll_batch, send_batch};
use writer::{FromPoller, WriterReport, write_batches};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("invalid Kafka configuration: {0}")]
    Config(String),
    #[error("failed to create the Kafka client: {0}")]
    Client(#[source] KafkaError),
    #[error("the store failed: {0}")]
    Store(#[from] refunds_store::StoreError),
    /// A partition's history is incomplete and the policy is to refuse.
    #[error("{0}; pass --accept-history-gap to consume past it (the gap is recorded in the store)")]
    HistoryGap(String),
    #[error("{0}")]
    CompactedTopic(String),
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
    let context = ConsumeContext { topic: params.topic.clone(), status: status.clone() };
    let consumer: Arc<Consumer_> =
        Arc::new(consumer_config(params).create_with_context(context).map_err(IngestError::Client)?);
    let dead_letters = DeadLetterSender::start(store.clone(), params)?;

    let (tx, rx) = sync_channel::<PolledBatch>(1);
    let (spent_tx, spent) = channel::<Vec<Item>>();
    let writer = {
        let store = store.clone();
        let consumer = consumer.clone();
        let params = params.clone();
        let status = status.clone();
        let outbox = dead_letters.handle();
        let shutdown = shutdown.clone();
        thread::Builder::new().name("kafka-writer".to_owned()).spawn(move || {
            let poller = FromPoller { batches: rx, spent: spent_tx };
            write_batches(&store, &consumer, &params, &status, &outbox, &poller, &shutdown)
        })?
    };
    let mut messages = 0u64;
    let mut failed = None;
    let mut assignment = Assignment::new(params);
    let mut merger = Merger::new(consumer.clone(), &params.topic);
    while !shutdown.is_triggered() {
        if assignment.due() {
            // Between batches: a gap is accepted before any message past it
            // is polled, and reaches the writer after every one before it.
            let mut plan = match assignment.refresh(&consumer, &store, params, &status) {
                Ok(plan) => plan,
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            };
            if !plan.accept.is_empty() {
                let accept = std::mem::take(&mut plan.accept);
                let gaps = PolledBatch { accept, items: Vec::new(), started: Instant::now() };
                if tx.send(gaps).is_err() {
                    break;
                }
            }
            if !plan.is_empty()
                && let Err(error) = plan.execute(&consumer, &mut merger, &params.topic)
            {
                failed = Some(error);
                break;
            }
        }
        // Frees the batches applied meanwhile, here where they were allocated.
        spent.try_iter().for_each(drop);
        let batch = poll_batch(&mut merger, &mut assignment, params, &shutdown);
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
        let Some(sent) = send_batch(&tx, batch, &mut merger, &mut assignment, params, &shutdown, &writer) else {
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
    // The partition queues hold the consumer; dropping it closes it.
    drop(merger);
    drop(consumer);
    if let Some(why) = written.store_failed {
        return Err(IngestError::StoreFailed(why));
    }
    if let Some(error) = failed {
        return Err(error);
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
