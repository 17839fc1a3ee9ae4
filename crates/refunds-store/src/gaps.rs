//! Accepted history gaps: stretches of a Kafka partition that the store will
//! never apply because an operator chose to consume past them (records
//! deleted by retention before the store applied them, or a topic recreated
//! under the store). Each is recorded in the same durable transaction that
//! moves the partition's checkpoint, and is never removed: the store says for
//! its whole life that its projection lacks that history.

use redb::{ReadableDatabase, ReadableTable};
use refunds_domain::Timestamp;
use serde_json::json;

use crate::batch::Checkpoint;
use crate::{Store, StoreError, tables};

/// One accepted gap of a Kafka partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedGap {
    pub topic: String,
    pub partition: i32,
    /// The next offset the store needed (its checkpoint, or 0 for a fresh store).
    pub needed: i64,
    /// What the partition had: its first offset for `records_deleted`, its
    /// end (high watermark) for `offset_beyond_end`.
    pub available: i64,
    /// `records_deleted`, `offset_beyond_end` or `partition_missing`.
    pub reason: String,
    pub accepted_at: Timestamp,
}

impl AcceptedGap {
    fn key(&self) -> String {
        format!("kafka:{}:{}:{:020}", self.topic, self.partition, self.needed.max(0))
    }

    /// The JSON form `/v1/status` and the export header show.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "topic": self.topic,
            "partition": self.partition,
            "needed": self.needed,
            "available": self.available,
            "reason": self.reason,
            "accepted_at": self.accepted_at.to_string(),
        })
    }

    fn from_json(value: &serde_json::Value) -> Option<AcceptedGap> {
        Some(AcceptedGap {
            topic: value["topic"].as_str()?.to_owned(),
            partition: i32::try_from(value["partition"].as_i64()?).ok()?,
            needed: value["needed"].as_i64()?,
            available: value["available"].as_i64()?,
            reason: value["reason"].as_str()?.to_owned(),
            accepted_at: Timestamp::parse_rfc3339(value["accepted_at"].as_str()?)?,
        })
    }
}

impl Store {
    /// Records `gap` and moves the checkpoint `source` to `resume_at` (the
    /// next offset to apply), in one durable transaction.
    pub fn accept_history_gap(&self, gap: &AcceptedGap, source: &str, resume_at: i64) -> Result<(), StoreError> {
        let txn = crate::Write::begin(&self.db)?;
        {
            let mut gaps = txn.open_table(tables::HISTORY_GAPS)?;
            let value = serde_json::to_vec(&gap.to_json()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            gaps.insert(gap.key().as_str(), value.as_slice())?;
            let mut checkpoints = txn.open_table(tables::CHECKPOINTS)?;
            let position = u64::try_from(resume_at).unwrap_or(0);
            checkpoints.insert(source, Checkpoint { position, state: Vec::new() }.encode().as_slice())?;
        }
        txn.commit()?;
        self.publish_positions()
    }

    /// Every accepted gap, by topic, partition and offset.
    pub fn history_gaps(&self) -> Result<Vec<AcceptedGap>, StoreError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        history_gaps_in(&txn)
    }
}

/// [`Store::history_gaps`] of the snapshot `txn`.
pub fn history_gaps_in(txn: &redb::ReadTransaction) -> Result<Vec<AcceptedGap>, StoreError> {
    let table = txn.open_table(tables::HISTORY_GAPS)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        let (key, value) = row?;
        let gap = serde_json::from_slice::<serde_json::Value>(value.value())
            .ok()
            .and_then(|v| AcceptedGap::from_json(&v))
            .ok_or_else(|| StoreError::Corrupt(format!("history gap {}", key.value())))?;
        out.push(gap);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accepted_gap_is_kept_with_the_moved_checkpoint_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let gap = AcceptedGap {
            topic: "t".into(),
            partition: 2,
            needed: 3_000,
            available: 1_000,
            reason: "offset_beyond_end".into(),
            accepted_at: Timestamp::from_millis(1_700_000_000_000).unwrap(),
        };
        {
            let store = Store::open(&path, &crate::StoreParams::default()).unwrap();
            assert!(store.history_gaps().unwrap().is_empty());
            store.accept_history_gap(&gap, "kafka:t:2", 0).unwrap();
        }
        let store = Store::open(&path, &crate::StoreParams::default()).unwrap();
        assert_eq!(store.history_gaps().unwrap(), vec![gap]);
        // The checkpoint moved back: a recreated topic is consumed from its start.
        assert_eq!(store.checkpoint("kafka:t:2").unwrap().unwrap().position, 0);
    }
}
