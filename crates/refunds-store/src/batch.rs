//! What a source hands to the store: one batch, applied in one transaction.

use std::sync::Arc;

use refunds_domain::{InvalidEvent, RefundEvent, Timestamp, validate};

use crate::audit::PackedPayload;

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourcePos {
    /// `line` is 1-based.
    File {
        path: Arc<str>,
        line: u64,
    },
    Kafka {
        topic: Arc<str>,
        partition: i32,
        offset: i64,
    },
}

/// One received message, validated.
#[derive(Debug, Clone)]
pub struct Item {
    pub source: SourcePos,
    pub received_at: Timestamp,
    /// The message as received.
    pub raw: Vec<u8>,
    /// `raw` packed for the audit log by the source, off the writer's
    /// thread; `None` (an invalid message, or a source that leaves it to the
    /// store) is packed while the batch is applied.
    pub packed: Option<PackedPayload>,
    /// The message key, for sources that have one (Kafka); a dead letter
    /// keeps it so that it can be produced with the same key.
    pub key: Option<Vec<u8>>,
    pub kind: ItemKind,
}

impl Item {
    /// A message as a source receives it: validated, and when valid packed
    /// for the audit log, both on the calling (source's) thread so that the
    /// writer does neither.
    pub fn received(source: SourcePos, received_at: Timestamp, raw: Vec<u8>, key: Option<Vec<u8>>) -> Item {
        let (kind, packed) = match validate(&raw) {
            Ok(event) => (ItemKind::Valid(Box::new(event)), Some(PackedPayload::pack(&raw))),
            Err(invalid) => (ItemKind::Invalid(invalid), None),
        };
        Item { source, received_at, raw, packed, key, kind }
    }
}

#[derive(Debug, Clone)]
pub enum ItemKind {
    Valid(Box<RefundEvent>),
    Invalid(InvalidEvent),
}

/// The advance of one source over a batch: positions in `(from, to]` are in
/// the batch. `state` is the source's own resume data (opaque to the store).
/// `restart` says the source starts over on purpose (a file whose content no
/// longer matches its checkpoint); otherwise a delta starting before the
/// stored position is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointDelta {
    pub source: String,
    pub from: u64,
    pub to: u64,
    pub state: Vec<u8>,
    pub restart: bool,
}

/// A source's stored position: everything up to `position` is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub position: u64,
    pub state: Vec<u8>,
}

impl Checkpoint {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.state.len());
        out.extend_from_slice(&self.position.to_be_bytes());
        out.extend_from_slice(&self.state);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        let position = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        Some(Checkpoint { position, state: bytes[8..].to_vec() })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub items: Vec<Item>,
    pub checkpoints: Vec<CheckpointDelta>,
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchSummary {
    pub applied: u64,
    pub duplicate: u64,
    pub conflicting_duplicate: u64,
    pub invalid: u64,
    pub refunds_created: u64,
    pub refunds_touched: u64,
}
