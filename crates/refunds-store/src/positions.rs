//! How far the store has applied each Kafka partition, as read-your-writes
//! needs it: the offset of the last applied message of every partition with
//! anything applied, read from a snapshot's `checkpoints` (a checkpoint holds
//! the next offset to apply, so the position is one less).
//!
//! Every commit that moves a Kafka checkpoint publishes the new positions on
//! a [`tokio::sync::watch`] channel, after the commit and after the interned
//! names it added are visible, so a reader woken by it opens a snapshot at or
//! past what it was told. Waiting on the channel holds no transaction, lock or
//! thread.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use redb::{ReadTransaction, ReadableDatabase};

use crate::batch::Checkpoint;
use crate::{Store, StoreError, tables};

/// Checkpoint names of Kafka sources: `kafka:<topic>:<partition>` (a topic
/// name has no `:`).
const KAFKA_PREFIX: &str = "kafka:";

/// Per (topic, partition), the offset of the last applied message: that
/// message and every one before it are in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions(BTreeMap<(String, i32), i64>);

impl Positions {
    pub fn new(offsets: BTreeMap<(String, i32), i64>) -> Positions {
        Positions(offsets)
    }

    /// The last applied offset of `topic` partition `partition`, if any.
    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0.get(&(topic.to_owned(), partition)).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every (topic, partition, offset), ordered by topic and partition.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.0.iter().map(|((topic, partition), offset)| (topic.as_str(), *partition, *offset))
    }

    /// Whether some partition of `topic` has a position.
    pub fn has_topic(&self, topic: &str) -> bool {
        self.0.keys().any(|(t, _)| t == topic)
    }

    /// The elements of `wanted` this position has not reached, as (topic,
    /// partition, wanted offset, applied offset or none).
    pub fn behind<'a>(&self, wanted: &'a Positions) -> Vec<(&'a str, i32, i64, Option<i64>)> {
        wanted
            .iter()
            .filter_map(|(topic, partition, offset)| {
                let applied = self.get(topic, partition);
                (applied.is_none_or(|applied| applied < offset)).then_some((topic, partition, offset, applied))
            })
            .collect()
    }

    /// Whether every element of `wanted` is applied here.
    pub fn reaches(&self, wanted: &Positions) -> bool {
        wanted.iter().all(|(topic, partition, offset)| self.get(topic, partition).is_some_and(|a| a >= offset))
    }
}

/// `topic:partition:offset` elements, comma separated (empty for none).
impl fmt::Display for Positions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (topic, partition, offset)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{topic}:{partition}:{offset}")?;
        }
        Ok(())
    }
}

/// The positions of the snapshot `txn`.
pub fn positions_in(txn: &ReadTransaction) -> Result<Positions, StoreError> {
    let table = txn.open_table(tables::CHECKPOINTS)?;
    let mut out = BTreeMap::new();
    for row in table.range(KAFKA_PREFIX..)? {
        let (name, value) = row?;
        let name = name.value();
        let Some(rest) = name.strip_prefix(KAFKA_PREFIX) else {
            break;
        };
        let parsed = rest.rsplit_once(':').and_then(|(topic, partition)| Some((topic, partition.parse().ok()?)));
        let Some((topic, partition)) = parsed else {
            continue;
        };
        let checkpoint =
            Checkpoint::decode(value.value()).ok_or_else(|| StoreError::Corrupt(format!("checkpoint of {name}")))?;
        if let Some(last) = checkpoint.position.checked_sub(1).and_then(|last| i64::try_from(last).ok()) {
            out.insert((topic.to_owned(), partition), last);
        }
    }
    Ok(Positions(out))
}

/// The arrival time of the newest applied event in the snapshot `txn`.
pub fn last_applied_at_in(txn: &ReadTransaction) -> Result<Option<refunds_domain::Timestamp>, StoreError> {
    let stats = txn.open_table(tables::STATS)?;
    Ok(stats
        .get(crate::read::stat_names::LAST_APPLIED_AT)?
        .and_then(|v| refunds_domain::Timestamp::from_millis(v.value() as i64)))
}

impl Store {
    /// The positions of the last commit, updated after every commit that
    /// moves a Kafka checkpoint. A receiver waits without holding anything of
    /// the store; it sees an error once this store is closed.
    pub fn subscribe_positions(&self) -> tokio::sync::watch::Receiver<Arc<Positions>> {
        self.positions.subscribe()
    }

    /// The positions of the last commit.
    pub fn positions(&self) -> Arc<Positions> {
        self.positions.borrow().clone()
    }

    /// Reads the positions of the newest snapshot and publishes them, when
    /// they changed.
    pub(crate) fn publish_positions(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_read()?;
        let positions = positions_in(&txn)?;
        drop(txn);
        self.positions.send_if_modified(|current| {
            let changed = **current != positions;
            if changed {
                *current = Arc::new(positions);
            }
            changed
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions(elements: &[(&str, i32, i64)]) -> Positions {
        Positions(elements.iter().map(|&(t, p, o)| ((t.to_owned(), p), o)).collect())
    }

    #[test]
    fn a_position_reaches_another_only_when_every_element_is_applied() {
        let applied = positions(&[("a", 0, 10), ("a", 1, 5), ("b", 0, 0)]);
        assert!(applied.reaches(&positions(&[("a", 0, 10), ("b", 0, 0)])));
        assert!(applied.reaches(&Positions::default()));
        assert!(!applied.reaches(&positions(&[("a", 0, 11)])));
        // A partition with nothing applied has not reached even offset 0.
        assert!(!applied.reaches(&positions(&[("a", 2, 0)])));
        assert_eq!(
            applied.behind(&positions(&[("a", 0, 11), ("a", 1, 5), ("a", 2, 0)])),
            vec![("a", 0, 11, Some(10)), ("a", 2, 0, None)]
        );
        assert_eq!(applied.to_string(), "a:0:10,a:1:5,b:0:0");
        assert_eq!(Positions::default().to_string(), "");
    }

    #[test]
    fn positions_follow_kafka_checkpoints_and_ignore_other_sources() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), &crate::StoreParams::default()).unwrap();
        let mut seen = store.subscribe_positions();
        assert!(store.positions().is_empty());
        let delta = |source: &str, from: u64, to: u64| crate::CheckpointDelta {
            source: source.to_owned(),
            from,
            to,
            state: Vec::new(),
            restart: false,
        };
        let batch = crate::Batch {
            items: Vec::new(),
            checkpoints: vec![delta("kafka:t.x-1:10", 0, 8), delta("kafka:t.x-1:2", 0, 1), delta("file:/a", 0, 7)],
        };
        store.apply_batch(&batch, crate::Durability::Immediate).unwrap();
        assert!(seen.has_changed().unwrap());
        let expected = positions(&[("t.x-1", 2, 0), ("t.x-1", 10, 7)]);
        assert_eq!(*seen.borrow_and_update().clone(), expected);
        assert_eq!(positions_in(&store.read().unwrap()).unwrap(), expected);
        // A commit that moves no Kafka checkpoint wakes nobody.
        let batch = crate::Batch { items: Vec::new(), checkpoints: vec![delta("file:/a", 7, 9)] };
        store.apply_batch(&batch, crate::Durability::Immediate).unwrap();
        assert!(!seen.has_changed().unwrap());
        drop(store);
        assert!(seen.has_changed().is_err(), "a closed store ends the channel");
    }
}
