//! The writer thread: applies each batch in ONE write transaction together
//! with the next offset of every partition in it, makes commits durable, then
//! lets the offsets and the dead letters leave the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use refunds_store::{AcceptedGap, Batch, CheckpointDelta, Durability, Item, SourcePos, Store};

use super::dead_letters::OutboxHandle;
use super::history::{HistoryGap, gap_source};
use super::poll::{Consumer_, PolledBatch};
use super::{IngestStatus, KafkaParams, Shutdown, checkpoint_name, millis};
use crate::now;

#[derive(Debug, Clone, Default)]
pub(super) struct WriterReport {
    pub(super) applied: u64,
    pub(super) duplicate: u64,
    pub(super) conflicting_duplicate: u64,
    pub(super) invalid: u64,
    pub(super) skipped: u64,
    /// Set when the writer stopped because the store must be reopened.
    pub(super) store_failed: Option<String>,
}

/// The writer's ends of the channels to the poll thread.
pub(super) struct FromPoller {
    pub(super) batches: Receiver<PolledBatch>,
    /// Applied batches' items go back to be freed by the poll thread that
    /// allocated them (as a replay's reader does: mimalloc frees fastest on
    /// the owning thread).
    pub(super) spent: Sender<Vec<Item>>,
}

/// Runs on the writer thread.
pub(super) fn write_batches(
    store: &Store,
    consumer: &Consumer_,
    params: &KafkaParams,
    status: &IngestStatus,
    outbox: &OutboxHandle,
    poller: &FromPoller,
    shutdown: &Shutdown,
) -> WriterReport {
    let FromPoller { batches: rx, spent } = poller;
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
    // The batch taken off the poll thread during the last commit.
    let mut next: Option<PolledBatch> = None;
    loop {
        let polled = match next.take().map_or_else(|| rx.recv_timeout(Duration::from_millis(200)), Ok) {
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
        for acceptance in &polled.accept {
            if let Err(why) = record_gap(store, status, &acceptance.gap) {
                // Consuming past a gap that is not recorded would hide it:
                // stop, as for any store failure (the gap is judged again
                // once the store is reopened).
                report.store_failed = Some(why);
                return report;
            }
            applied.insert(acceptance.gap.partition, acceptance.gap.resume_at);
            status.set_applied(&applied);
            status.progressed();
        }
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
        // Once the batch's changes are made and only the commit is left, the
        // next batch is taken, so that the poll thread fills the one after
        // while this thread writes pages, not while both apply threads need
        // the cores.
        let mut take_next = || {
            if next.is_none() {
                match rx.try_recv() {
                    Ok(polled) => next = Some(polled),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
                }
            }
        };
        let summary = match apply_with_retry(store, &batch, durability, status, shutdown, &mut take_next) {
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
        let _ = spent.send(batch.items);
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

/// Records an accepted history gap and moves the partition's checkpoint to
/// where consuming resumes, in one durable transaction.
fn record_gap(store: &Store, status: &IngestStatus, gap: &HistoryGap) -> Result<(), String> {
    let accepted = AcceptedGap {
        topic: gap.topic.clone(),
        partition: gap.partition,
        needed: gap.needed,
        available: gap.available,
        reason: gap.reason.as_str().to_owned(),
        accepted_at: now(),
    };
    match store.accept_history_gap(&accepted, &gap_source(gap), gap.resume_at) {
        Ok(()) => {
            let accepted = store.history_gaps().map_or(0, |gaps| gaps.len());
            metrics::gauge!("refund_projector_history_gaps", "state" => "accepted").set(accepted as f64);
            Ok(())
        }
        Err(error) => {
            metrics::counter!("refund_projector_store_write_errors_total").increment(1);
            tracing::error!(%error, partition = gap.partition, "cannot record the accepted history gap");
            status.lock().store_error = Some(error.to_string());
            Err(error.to_string())
        }
    }
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
    before_commit: &mut dyn FnMut(),
) -> Applied {
    let mut backoff = Duration::from_millis(100);
    loop {
        match store.apply_batch_then(batch, durability, &mut *before_commit) {
            Ok(summary) => return Applied::Done(summary),
            Err(error) if needs_reopen(&error) => {
                metrics::counter!("refund_projector_store_write_errors_total").increment(1);
                tracing::error!(%error, "store write failed; offsets stay where they are; reopening the store");
                status.lock().store_error = Some(error.to_string());
                return Applied::Reopen(error.to_string());
            }
            Err(error) => {
                metrics::counter!("refund_projector_store_write_errors_total").increment(1);
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
    if !matches!(
        apply_with_retry(store, &Batch::default(), Durability::Immediate, status, shutdown, &mut || {}),
        Applied::Done(_)
    ) {
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
