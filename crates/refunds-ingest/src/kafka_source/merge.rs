//! One queue per partition, merged by message timestamp.
//!
//! Left to itself, librdkafka hands its consumer queue one partition's fetch
//! at a time while the consumer is behind, so the partitions of a batch sit
//! thousands of offsets apart: the batch spans several times the stretch of
//! time that as many events in arrival order span, and its index keys land on
//! that many more pages (docs/benchmarks.md, "Why Kafka costs more than a
//! replay").
//!
//! So each partition is read from its own queue, split from the consumer's
//! before the partition is assigned (no message of it can then come through
//! the consumer's queue, and its order is the queue's), read ahead a little,
//! and handed over oldest first by message timestamp, the time the webhook
//! receiver produced it. A partition with nothing read ahead does not hold the
//! others back: ingest never waits for a quiet partition, and a partition that
//! fell behind is drained first once its messages arrive, because they are the
//! oldest. A partition not read from fills its prefetch queue and librdkafka
//! stops fetching it (the prefetch limits apply per partition queue: see
//! `config`), so the partitions advance together.
//!
//! Within a partition the order is the partition's, which is all the
//! exactly-once effect rests on (the writer's checkpoint of a partition is
//! the offset after the last one it applied); the order across partitions only
//! decides which refunds share a batch.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use refunds_store::{Item, SourcePos};

use super::IngestError;
use super::history::Assignment;
use super::poll::{ConsumeContext, Consumer_};
use crate::now;

/// Most messages read ahead from one partition at a time.
const READ_AHEAD: usize = 256;
/// Every this many messages handed over, the quiet partitions and the
/// consumer's own queue (statistics, errors) are looked at again.
const LOOK_AROUND_EVERY: usize = 256;
/// Events of the consumer's own queue served per look.
const MAIN_QUEUE_EVENTS: usize = 8;
/// Longest sleep between looks while nothing is read ahead; a partition
/// queue that turns non-empty wakes the sleeper before.
const WAIT_SLICE: Duration = Duration::from_millis(10);

/// Messages read ahead, per partition, handed over oldest first.
#[derive(Debug)]
pub(super) struct ReadAhead<T> {
    partitions: BTreeMap<i32, VecDeque<(i64, T)>>,
}

impl<T> Default for ReadAhead<T> {
    fn default() -> ReadAhead<T> {
        ReadAhead { partitions: BTreeMap::new() }
    }
}

impl<T> ReadAhead<T> {
    /// Adds a partition's next message, stamped `timestamp`.
    pub(super) fn push(&mut self, partition: i32, timestamp: i64, message: T) {
        self.partitions.entry(partition).or_default().push_back((timestamp, message));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.partitions.values().all(VecDeque::is_empty)
    }

    pub(super) fn len(&self, partition: i32) -> usize {
        self.partitions.get(&partition).map_or(0, VecDeque::len)
    }

    /// The oldest of the partitions' next messages (the lowest partition
    /// among equal timestamps), with its partition.
    pub(super) fn pop_oldest(&mut self) -> Option<(i32, T)> {
        let (&partition, _) = self
            .partitions
            .iter()
            .filter_map(|(partition, queue)| Some((partition, queue.front()?.0)))
            .min_by_key(|&(&partition, timestamp)| (timestamp, partition))?;
        let (_, message) = self.partitions.get_mut(&partition)?.pop_front()?;
        Some((partition, message))
    }

    /// Drops what was read ahead from a partition.
    pub(super) fn forget(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }
}

/// Set by librdkafka's threads when a partition queue turns non-empty.
#[derive(Default)]
struct Wake {
    woken: Mutex<bool>,
    signal: Condvar,
}

impl Wake {
    fn notify(&self) {
        *self.woken.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.signal.notify_one();
    }

    /// Sleeps until notified (or `at_most`), and clears the notice.
    fn wait(&self, at_most: Duration) {
        let woken = self.woken.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut woken, _) =
            self.signal.wait_timeout_while(woken, at_most, |woken| !*woken).unwrap_or_else(PoisonError::into_inner);
        *woken = false;
    }
}

/// The poll thread's partition queues and what it read ahead from them.
pub(super) struct Merger {
    consumer: Arc<Consumer_>,
    topic: String,
    queues: BTreeMap<i32, PartitionQueue<ConsumeContext>>,
    read_ahead: ReadAhead<Item>,
    wake: Arc<Wake>,
    handed_over: usize,
}

impl Merger {
    pub(super) fn new(consumer: Arc<Consumer_>, topic: &str) -> Merger {
        Merger {
            consumer,
            topic: topic.to_owned(),
            queues: BTreeMap::new(),
            read_ahead: ReadAhead::default(),
            wake: Arc::default(),
            handed_over: 0,
        }
    }

    /// Gives a partition its own queue. Called before the partition is
    /// assigned, so that none of its messages reach the consumer's queue.
    pub(super) fn split(&mut self, partition: i32) -> Result<(), IngestError> {
        let mut queue = self.consumer.split_partition_queue(&self.topic, partition).ok_or_else(|| {
            IngestError::Config(format!("partition {partition} of {} cannot have its own queue", self.topic))
        })?;
        let wake = self.wake.clone();
        queue.set_nonempty_callback(move || wake.notify());
        self.queues.insert(partition, queue);
        Ok(())
    }

    /// Forgets an unassigned partition and what was read ahead from it (none
    /// of it was handed over, so the partition's position is still before it).
    pub(super) fn forget(&mut self, partition: i32) {
        self.queues.remove(&partition);
        self.read_ahead.forget(partition);
    }

    /// The oldest message read ahead, reading more first when needed;
    /// waits at most `wait` for one.
    pub(super) fn next(&mut self, assignment: &mut Assignment, wait: Duration) -> Option<Item> {
        if self.handed_over >= LOOK_AROUND_EVERY || self.read_ahead.is_empty() {
            self.look_around(assignment);
        }
        let deadline = Instant::now() + wait;
        loop {
            if let Some((partition, item)) = self.read_ahead.pop_oldest() {
                self.handed_over += 1;
                if self.read_ahead.len(partition) == 0 {
                    self.read(partition, assignment);
                }
                if let SourcePos::Kafka { offset, .. } = item.source {
                    assignment.saw(partition, offset);
                }
                return Some(item);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.wake.wait(left.min(WAIT_SLICE));
            self.look_around(assignment);
        }
    }

    /// Serves the consumer's own queue (callbacks, errors) and reads ahead
    /// from every partition that has nothing read ahead.
    fn look_around(&mut self, assignment: &mut Assignment) {
        self.handed_over = 0;
        // `poll` answers `None` both when the queue is empty and when it
        // served an event (statistics, a log line, a commit's result), so a
        // few are served each time whatever it answers.
        for _ in 0..MAIN_QUEUE_EVENTS {
            // Only a partition assigned before it was split could send a
            // message here; it is read ahead like any other.
            if let Some(result) = self.consumer.poll(Duration::ZERO)
                && let Some((partition, timestamp, message)) = received(result, assignment)
            {
                self.read_ahead.push(partition, timestamp, message);
            }
        }
        let quiet: Vec<i32> =
            self.queues.keys().copied().filter(|&partition| self.read_ahead.len(partition) == 0).collect();
        for partition in quiet {
            self.read(partition, assignment);
        }
    }

    /// Reads ahead from one partition's queue, without waiting.
    fn read(&mut self, partition: i32, assignment: &mut Assignment) {
        let Some(queue) = self.queues.get(&partition) else { return };
        while self.read_ahead.len(partition) < READ_AHEAD {
            let Some(result) = queue.poll(Duration::ZERO) else { break };
            if let Some((partition, timestamp, message)) = received(result, assignment) {
                self.read_ahead.push(partition, timestamp, message);
            }
        }
    }
}

/// A polled message as an item (validated and packed here, on the poll
/// thread, not the writer's), with its partition and timestamp; `None` for
/// an error, which is reported or logged.
fn received(result: KafkaResult<BorrowedMessage<'_>>, assignment: &mut Assignment) -> Option<(i32, i64, Item)> {
    let message = match result {
        Ok(message) => message,
        Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => {
            // A position the partition no longer has (`auto.offset.reset`
            // is `error`): the partition stopped; judge it as a gap.
            tracing::warn!("a partition's position is out of its range; checking the partitions for a history gap");
            assignment.out_of_range();
            return None;
        }
        Err(error) => {
            // Transport errors while a broker is away: librdkafka
            // reconnects by itself; keep polling.
            tracing::warn!(%error, "poll failed");
            return None;
        }
    };
    let raw = message.payload().unwrap_or_default().to_vec();
    let topic = assignment.topic();
    let topic = if **topic == *message.topic() { topic.clone() } else { Arc::from(message.topic()) };
    let (partition, offset) = (message.partition(), message.offset());
    // A message without a timestamp (an old producer) is handed over first.
    let timestamp = message.timestamp().to_millis().unwrap_or(i64::MIN);
    let source = SourcePos::Kafka { topic, partition, offset };
    let item = Item::received(source, now(), raw, message.key().map(<[u8]>::to_vec));
    Some((partition, timestamp, item))
}

#[cfg(test)]
mod tests {
    use super::ReadAhead;

    #[test]
    fn messages_are_handed_over_oldest_first_and_in_partition_order() {
        let mut read_ahead = ReadAhead::default();
        // Partition 1 is behind partition 0 and 2; partition 2 has a
        // message stamped earlier than one before it (a producer's clock
        // step): the partition's order still wins.
        for (partition, timestamp, offset) in [(0, 10, 0), (0, 20, 1), (0, 30, 2), (1, 5, 0), (1, 25, 1), (2, 12, 0)] {
            read_ahead.push(partition, timestamp, (partition, offset));
        }
        read_ahead.push(2, 11, (2, 1));
        let mut order = Vec::new();
        while let Some((partition, message)) = read_ahead.pop_oldest() {
            assert_eq!(partition, message.0);
            order.push(message);
        }
        assert_eq!(order, [(1, 0), (0, 0), (2, 0), (2, 1), (0, 1), (1, 1), (0, 2)]);
    }

    #[test]
    fn equal_timestamps_go_lowest_partition_first_and_a_forgotten_partition_is_gone() {
        let mut read_ahead = ReadAhead::default();
        read_ahead.push(3, 7, "3a");
        read_ahead.push(1, 7, "1a");
        read_ahead.push(2, 7, "2a");
        read_ahead.push(2, 8, "2b");
        read_ahead.forget(1);
        assert_eq!(read_ahead.len(1), 0);
        assert_eq!(read_ahead.pop_oldest(), Some((2, "2a")));
        assert_eq!(read_ahead.pop_oldest(), Some((3, "3a")));
        assert_eq!(read_ahead.pop_oldest(), Some((2, "2b")));
        assert!(read_ahead.is_empty());
        assert_eq!(read_ahead.pop_oldest(), None);
    }
}
