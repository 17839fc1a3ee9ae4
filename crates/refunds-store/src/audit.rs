//! Audit entries: every received valid event with its outcome, source
//! position, arrival time and original payload.
//!
//! Entry layout in `AUDIT_LOG`: `outcome(1) | received_at(8) | source tag(1) |
//! source name number(4) | position(8, or partition 4 + offset 8) | payload`.
//! The event's id, type and occurred_at are read back from the payload.

use refunds_domain::Timestamp;

use crate::batch::SourcePos;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    ConflictingDuplicate,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::ConflictingDuplicate => "conflicting_duplicate",
        }
    }

    fn code(self) -> u8 {
        match self {
            Outcome::Applied => 0,
            Outcome::Duplicate => 1,
            Outcome::ConflictingDuplicate => 2,
        }
    }

    fn from_code(code: u8) -> Option<Outcome> {
        [Outcome::Applied, Outcome::Duplicate, Outcome::ConflictingDuplicate].get(usize::from(code)).copied()
    }
}

/// A source position with its name interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoredSource {
    File { name: u32, line: u64 },
    Kafka { name: u32, partition: i32, offset: i64 },
}

#[cfg(test)]
pub(crate) fn encode_entry(outcome: Outcome, received_at: Timestamp, source: StoredSource, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(30 + payload.len());
    encode_entry_into(&mut out, outcome, received_at, source, payload);
    out
}

/// Appends the entry's bytes to `out` (so one buffer serves a whole batch).
pub(crate) fn encode_entry_into(
    out: &mut Vec<u8>,
    outcome: Outcome,
    received_at: Timestamp,
    source: StoredSource,
    payload: &[u8],
) {
    out.push(outcome.code());
    out.extend_from_slice(&received_at.millis().to_be_bytes());
    match source {
        StoredSource::File { name, line } => {
            out.push(0);
            out.extend_from_slice(&name.to_be_bytes());
            out.extend_from_slice(&line.to_be_bytes());
        }
        StoredSource::Kafka { name, partition, offset } => {
            out.push(1);
            out.extend_from_slice(&name.to_be_bytes());
            out.extend_from_slice(&partition.to_be_bytes());
            out.extend_from_slice(&offset.to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

pub(crate) struct DecodedEntry<'a> {
    pub outcome: Outcome,
    pub received_at: Timestamp,
    pub source: StoredSource,
    pub payload: &'a [u8],
}

pub(crate) fn decode_entry(bytes: &[u8]) -> Option<DecodedEntry<'_>> {
    let outcome = Outcome::from_code(*bytes.first()?)?;
    let received_at = Timestamp::from_millis(i64::from_be_bytes(bytes.get(1..9)?.try_into().ok()?))?;
    let name = u32::from_be_bytes(bytes.get(10..14)?.try_into().ok()?);
    let (source, rest) = match bytes.get(9)? {
        0 => {
            let line = u64::from_be_bytes(bytes.get(14..22)?.try_into().ok()?);
            (StoredSource::File { name, line }, 22)
        }
        1 => {
            let partition = i32::from_be_bytes(bytes.get(14..18)?.try_into().ok()?);
            let offset = i64::from_be_bytes(bytes.get(18..26)?.try_into().ok()?);
            (StoredSource::Kafka { name, partition, offset }, 26)
        }
        _ => return None,
    };
    Some(DecodedEntry { outcome, received_at, source, payload: &bytes[rest..] })
}

/// One entry of a refund's audit trail, as the API renders it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub sequence: u64,
    pub event_id: String,
    pub event_type: String,
    pub occurred_at: Timestamp,
    pub received_at: Timestamp,
    pub outcome: Outcome,
    pub source: SourcePos,
    pub payload: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_for_both_kinds_of_source() {
        let at = Timestamp::from_millis(1_700_000_000_123).unwrap();
        for source in
            [StoredSource::File { name: 3, line: 42 }, StoredSource::Kafka { name: 9, partition: 5, offset: 1 << 40 }]
        {
            let bytes = encode_entry(Outcome::ConflictingDuplicate, at, source, b"{\"a\":1}");
            let entry = decode_entry(&bytes).unwrap();
            assert_eq!(entry.outcome, Outcome::ConflictingDuplicate);
            assert_eq!(entry.received_at, at);
            assert_eq!(entry.source, source);
            assert_eq!(entry.payload, b"{\"a\":1}");
        }
    }
}
