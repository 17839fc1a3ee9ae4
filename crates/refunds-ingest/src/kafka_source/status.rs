//! Live figures of the consumer, shared with the API.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::history::{HistoryGap, TopicSettings};

/// Live figures of the consumer, read by `/v1/status`, `/readyz` and the
/// list responses' freshness headers.
#[derive(Debug, Default)]
pub struct IngestStatus {
    inner: Mutex<StatusInner>,
}

#[derive(Debug, Default)]
pub(super) struct StatusInner {
    pub(super) topic: String,
    /// Partitions assigned to this instance now.
    pub(super) assigned: Vec<i32>,
    /// Next offset to apply, per partition, as the store holds it.
    pub(super) applied: BTreeMap<i32, i64>,
    /// Last known high watermark and low watermark, per partition.
    pub(super) high_watermarks: BTreeMap<i32, i64>,
    pub(super) low_watermarks: BTreeMap<i32, i64>,
    /// Whether the first assignment has happened and been positioned.
    pub(super) assigned_once: bool,
    /// Set after a failed store write, cleared by the next success.
    pub(super) store_error: Option<String>,
    /// When the first message of this run was polled.
    pub(super) first_message_at: Option<Instant>,
    /// Partitions not consumed because their history is incomplete.
    pub(super) held_gaps: BTreeMap<i32, HistoryGap>,
    /// The topic does not exist (yet).
    pub(super) topic_missing: bool,
    /// The topic's retention and cleanup settings, once read.
    pub(super) topic_settings: Option<TopicSettings>,
    /// When the consumer last made progress: the applied offsets passed
    /// `progress_mark`, their highest sum so far. Both are kept across
    /// [`IngestStatus::reset`], so that a store reopened at its last durable
    /// commit does not count as progress.
    pub(super) progress_at: Option<Instant>,
    pub(super) progress_mark: i64,
    /// Whether the last stall check found the consumer stalled.
    pub(super) stalled: bool,
}

impl StatusInner {
    /// `high_watermark - max(applied, low watermark)`, at least 0; `None`
    /// while the high watermark is unknown.
    fn lag_of(&self, partition: i32) -> Option<i64> {
        let high = *self.high_watermarks.get(&partition)?;
        let applied = self.applied.get(&partition).copied().unwrap_or(0);
        let low = self.low_watermarks.get(&partition).copied().unwrap_or(0);
        Some((high - applied.max(low)).max(0))
    }
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
        let inner =
            StatusInner { topic: topic.to_owned(), progress_at: Some(Instant::now()), ..StatusInner::default() };
        IngestStatus { inner: Mutex::new(inner) }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
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
                let lag = inner.lag_of(partition);
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

    /// Why the consumer is not ready, or `None` when it is: no partition is
    /// held back by a history gap, partitions are assigned, the store writes,
    /// the consumer is not stalled (see [`IngestStatus::stall`]) and the lag
    /// is at most `max_lag`.
    pub fn not_ready_reason(&self, max_lag: i64, stall_after: Option<Duration>) -> Option<String> {
        {
            let inner = self.lock();
            if let Some(err) = &inner.store_error {
                return Some(format!("the store cannot write: {err}"));
            }
            if !inner.held_gaps.is_empty() {
                let gaps: Vec<String> = inner.held_gaps.values().map(HistoryGap::describe).collect();
                return Some(format!(
                    "{}; the store would serve a partial projection, so these partitions are not consumed: restart \
                     with --accept-history-gap to consume past the gap (it stays listed in /v1/status history_gaps), \
                     or rebuild from a complete source",
                    gaps.join("; ")
                ));
            }
            if inner.topic_missing && !inner.assigned_once {
                return Some(format!("waiting for topic {} to exist", inner.topic));
            }
        }
        if let Some(stalled) = stall_after.and_then(|after| self.stall(after, Instant::now())) {
            return Some(stalled);
        }
        match self.total_lag() {
            None => Some("waiting for partitions to be assigned and their high watermarks".to_owned()),
            Some(lag) if lag > max_lag => Some(format!("lag {lag} is above {max_lag}")),
            Some(_) => None,
        }
    }

    /// Why the consumer counts as stalled at `now`, or `None`: it is alive
    /// but stuck when events wait in the partitions it consumes (lag above
    /// zero) and nothing has been applied for `stall_after`.
    pub fn stall(&self, stall_after: Duration, now: Instant) -> Option<String> {
        let inner = self.lock();
        let since = inner.progress_at?;
        let idle = now.checked_duration_since(since)?;
        if idle < stall_after {
            return None;
        }
        // Held partitions wait for an operator, not for the consumer.
        let lag: i64 =
            inner.assigned.iter().filter(|p| !inner.held_gaps.contains_key(p)).filter_map(|&p| inner.lag_of(p)).sum();
        (lag > 0).then(|| {
            format!("the consumer is stalled: {lag} events wait and nothing was applied for {} s", idle.as_secs())
        })
    }

    /// Checks for a stall now: sets the `refund_projector_consumer_stalled`
    /// gauge, logs an error once when a stall begins and a line when it
    /// ends. Returns whether the consumer is stalled.
    pub fn check_stall(&self, stall_after: Duration) -> bool {
        let reason = self.stall(stall_after, Instant::now());
        let stalled = reason.is_some();
        let was = std::mem::replace(&mut self.lock().stalled, stalled);
        metrics::gauge!("refund_projector_consumer_stalled").set(if stalled { 1.0 } else { 0.0 });
        match (was, reason) {
            (false, Some(reason)) => tracing::error!(
                stall_after_ms = u64::try_from(stall_after.as_millis()).unwrap_or(u64::MAX),
                "{reason}; /readyz answers 503 until it applies again"
            ),
            (true, None) => tracing::info!("the consumer applies again; no longer stalled"),
            _ => {}
        }
        stalled
    }

    /// A partition's (low, high) watermarks, as read from the broker.
    pub(super) fn set_watermarks(&self, partition: i32, (low, high): (i64, i64)) {
        let mut inner = self.lock();
        inner.low_watermarks.insert(partition, low.max(0));
        inner.high_watermarks.insert(partition, high);
    }

    /// Progress counts from here: a partition's position moved back on
    /// purpose (an accepted gap of a recreated topic).
    pub(super) fn progressed(&self) {
        let mut inner = self.lock();
        inner.progress_mark = inner.applied.values().sum();
        inner.progress_at = Some(Instant::now());
    }

    /// The topic consumed.
    pub fn topic(&self) -> String {
        self.lock().topic.clone()
    }

    /// Partitions held back by a history gap, by partition.
    pub fn held_gaps(&self) -> Vec<HistoryGap> {
        self.lock().held_gaps.values().cloned().collect()
    }

    /// The topic's retention and cleanup settings, once read.
    pub fn topic_settings(&self) -> Option<TopicSettings> {
        self.lock().topic_settings.clone()
    }

    pub(super) fn hold(&self, gap: HistoryGap) {
        let held = {
            let mut inner = self.lock();
            inner.held_gaps.insert(gap.partition, gap);
            inner.held_gaps.len()
        };
        metrics::gauge!("refund_projector_history_gaps", "state" => "held").set(held as f64);
    }

    /// The partitions this instance covers (consumed or held back); `known`
    /// once every one of them has been positioned or judged.
    pub(super) fn set_partitions(&self, partitions: Vec<i32>, known: bool) {
        let mut inner = self.lock();
        inner.topic_missing = false;
        inner.assigned = partitions;
        inner.assigned_once |= known;
    }

    /// Forgets what belongs to the store: a new store (a rebuild swapped
    /// in, a store reopened after an I/O error) is being consumed into. The
    /// topic's partitions, watermarks and settings, and the progress mark of
    /// the stall check, stay.
    pub fn reset(&self) {
        let mut inner = self.lock();
        inner.applied.clear();
        inner.held_gaps.clear();
        inner.store_error = None;
        inner.first_message_at = None;
        metrics::gauge!("refund_projector_history_gaps", "state" => "held").set(0.0);
    }

    /// When the first message of this run was polled.
    pub fn first_message_at(&self) -> Option<Instant> {
        self.lock().first_message_at
    }

    pub(super) fn set_applied(&self, offsets: &HashMap<i32, i64>) {
        {
            let mut inner = self.lock();
            for (&partition, &offset) in offsets {
                inner.applied.insert(partition, offset);
            }
            inner.store_error = None;
            let total: i64 = inner.applied.values().sum();
            if total > inner.progress_mark {
                inner.progress_mark = total;
                inner.progress_at = Some(Instant::now());
            }
        }
        self.publish_gauges();
    }

    /// Per-partition gauges: applied offset, high watermark and lag.
    pub(super) fn publish_gauges(&self) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_assigned_with_known_watermarks_and_the_lag_at_most_the_bound() {
        let status = IngestStatus::new("t");
        assert!(status.not_ready_reason(1_000, None).is_some(), "nothing assigned yet");
        {
            let mut inner = status.lock();
            inner.assigned = vec![0, 1];
            inner.assigned_once = true;
            inner.high_watermarks.insert(0, 5_000);
        }
        assert!(status.not_ready_reason(1_000, None).unwrap().contains("high watermarks"), "partition 1 unknown");
        status.lock().high_watermarks.insert(1, 700);
        status.set_applied(&HashMap::from([(0, 4_000), (1, 0)]));
        // Lag 1,000 + 700 = 1,700: above 1,000, within 2,000.
        assert_eq!(status.total_lag(), Some(1_700));
        assert_eq!(status.applied_total(), 4_000);
        assert!(status.not_ready_reason(1_000, None).unwrap().contains("1700"));
        assert_eq!(status.not_ready_reason(2_000, None), None);
        // Retention moved partition 1's start: lag counts from the low watermark.
        status.lock().low_watermarks.insert(1, 600);
        assert_eq!(status.total_lag(), Some(1_100));
        status.lock().store_error = Some("disk full".to_owned());
        assert!(status.not_ready_reason(2_000, None).unwrap().contains("disk full"));
    }

    #[test]
    fn stalled_only_while_events_wait_and_nothing_is_applied_for_the_bound() {
        let status = IngestStatus::new("t");
        let after = Duration::from_secs(60);
        {
            let mut inner = status.lock();
            inner.assigned = vec![0, 1];
            inner.assigned_once = true;
            inner.high_watermarks.extend([(0, 100), (1, 50)]);
        }
        status.set_applied(&HashMap::from([(0, 40), (1, 50)]));
        let start = status.lock().progress_at.unwrap();
        assert_eq!(status.stall(after, start + Duration::from_secs(59)), None, "not idle long enough");
        let stalled = status.stall(after, start + Duration::from_secs(61)).expect("60 events wait");
        assert!(stalled.contains("60 events") && stalled.contains("61 s"), "{stalled}");
        // A store reopened at the same offsets is no progress; applying is.
        status.reset();
        {
            let mut inner = status.lock();
            inner.assigned = vec![0, 1];
            inner.assigned_once = true;
            inner.high_watermarks.extend([(0, 100), (1, 50)]);
        }
        status.set_applied(&HashMap::from([(0, 40), (1, 50)]));
        assert!(status.stall(after, start + Duration::from_secs(61)).is_some());
        status.set_applied(&HashMap::from([(0, 41)]));
        let moved = status.lock().progress_at.unwrap();
        assert!(moved > start);
        assert_eq!(status.stall(after, moved + Duration::from_secs(30)), None);
        // Caught up: idle is not stalled.
        status.set_applied(&HashMap::from([(0, 100)]));
        assert_eq!(status.stall(after, Instant::now() + Duration::from_secs(3_600)), None);
        // Readiness says so, before the lag bound.
        status.set_applied(&HashMap::from([(0, 99)]));
        status.lock().progress_at = Some(Instant::now() - Duration::from_secs(120));
        status.lock().high_watermarks.insert(0, 5_000);
        let reason = status.not_ready_reason(1_000, Some(after)).unwrap();
        assert!(reason.contains("stalled"), "{reason}");
        assert!(status.not_ready_reason(1_000, None).unwrap().contains("above 1000"));
    }
}
