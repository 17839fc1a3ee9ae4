//! Audit entries: every received valid event with its outcome, source
//! position, arrival time and original payload.
//!
//! Entry layout in `AUDIT_LOG`: `outcome(1) | received_at(8) | source tag(1) |
//! source name number(4) | position(8, or partition 4 + offset 8) | packing(1)
//! | payload`. The event's id, type and occurred_at are read back from the
//! payload.
//!
//! The payload is the message as received, packed: packing 0 stores it as is,
//! packing 1 stores its length (4 bytes, big-endian) and an LZ4 block
//! compressed against [`PAYLOAD_DICTIONARY`], whichever is shorter. The log is
//! the largest table of the store (about 40% of it stored raw), and
//! the dictionary halves a typical event, so a replay writes a sixth less.

use std::borrow::Cow;

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

/// What packing 1 compresses against: the contract's sample event, compact,
/// after the five event types, so that field names, their order and the
/// common values cost a few bytes each. It is part of the store format: any
/// change needs a new packing number (or format version).
pub(crate) const PAYLOAD_DICTIONARY: &[u8] = br#""type":"refund.queued","type":"refund.processing","type":"refund.completed","type":"refund.failed","type":"refund.cancelled",{"schema_version":1,"event_id":"evt_7Hq2...","type":"refund.completed","occurred_at":"2026-02-22T10:32:15.123Z","refund":{"id":"ref_abc123","tenant_id":"org_xyz789","amount":2500,"currency":"USD","original_amount":10000,"order_no":"ORDER-12345","transaction_id":"ch_1N4HbSKz9cXRvFYr","external_refund_id":"re_1N4HcTKz9cXRvFYs","processor":"stripe","payment_method_type":"credit_card","product_type":"e_commerce","store_id":"store123","reference_id":"reference_id_0","reason":"product_defective","failure_reason":null,"initiated_by":{"type":"user","id":"usr_1","email":"ops@example.com"},"metadata":{"ticketId":"SUP-1234"}}}"#;

const PACKED_RAW: u8 = 0;
const PACKED_LZ4: u8 = 1;
/// Larger than any message a source accepts (256 KiB): a packed length above
/// it is corruption, not an allocation to make.
const MAX_PAYLOAD: usize = 1 << 20;

#[cfg(test)]
pub(crate) fn encode_entry(outcome: Outcome, received_at: Timestamp, source: StoredSource, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(30 + payload.len());
    encode_entry_into(&mut out, outcome, received_at, source, payload, None);
    out
}

/// Appends the entry's bytes to `out` (so one buffer serves a whole batch),
/// packing `payload` unless `packed` already holds it packed.
pub(crate) fn encode_entry_into(
    out: &mut Vec<u8>,
    outcome: Outcome,
    received_at: Timestamp,
    source: StoredSource,
    payload: &[u8],
    packed: Option<&PackedPayload>,
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
    match packed {
        Some(packed) => out.extend_from_slice(&packed.0),
        None => pack_payload(out, payload),
    }
}

/// A message packed for the audit log (`packing | payload`). A source packs
/// each valid message on its own thread ([`PackedPayload::pack`], about a
/// microsecond), so that the writer only copies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedPayload(Box<[u8]>);

impl PackedPayload {
    pub fn pack(payload: &[u8]) -> PackedPayload {
        // Compressed into a scratch buffer with room for the worst case, then
        // copied out at its size: batches in flight hold hundreds of
        // thousands of these, and the worst-case room was 100 MiB of RSS.
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            pack_payload(scratch, payload);
            PackedPayload(Box::from(scratch.as_slice()))
        })
    }
}

/// Appends `packing | payload`, compressed when that is shorter.
fn pack_payload(out: &mut Vec<u8>, payload: &[u8]) {
    let start = out.len();
    let length = u32::try_from(payload.len()).ok().filter(|&n| (n as usize) <= MAX_PAYLOAD);
    if let Some(length) = length {
        out.push(PACKED_LZ4);
        out.extend_from_slice(&length.to_be_bytes());
        let body = out.len();
        out.resize(body + lz4_flex::block::get_maximum_output_size(payload.len()), 0);
        if let Ok(written) = lz4_flex::block::compress_into_with_dict(payload, &mut out[body..], PAYLOAD_DICTIONARY)
            && written + 4 < payload.len()
        {
            out.truncate(body + written);
            return;
        }
        out.truncate(start);
    }
    out.push(PACKED_RAW);
    out.extend_from_slice(payload);
}

pub(crate) struct DecodedEntry<'a> {
    pub outcome: Outcome,
    pub received_at: Timestamp,
    pub source: StoredSource,
    /// `packing | payload`, unpacked by [`DecodedEntry::payload`].
    packed: &'a [u8],
}

impl DecodedEntry<'_> {
    /// The message as received; `None` when the packing is corrupt.
    pub fn payload(&self) -> Option<Cow<'_, [u8]>> {
        let (&packing, rest) = self.packed.split_first()?;
        match packing {
            PACKED_RAW => Some(Cow::Borrowed(rest)),
            PACKED_LZ4 => {
                let length = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                if length > MAX_PAYLOAD {
                    return None;
                }
                let mut payload = vec![0; length];
                let written =
                    lz4_flex::block::decompress_into_with_dict(&rest[4..], &mut payload, PAYLOAD_DICTIONARY).ok()?;
                (written == length).then_some(Cow::Owned(payload))
            }
            _ => None,
        }
    }

    /// The message as received, parsed: what the API shows and what a
    /// repeat is compared against. Entry `seq` is named in the error.
    pub fn payload_json(&self, seq: u64) -> Result<serde_json::Value, crate::StoreError> {
        let payload =
            self.payload().ok_or_else(|| crate::StoreError::Corrupt(format!("audit payload {seq} packing")))?;
        serde_json::from_slice(&payload).map_err(|_| crate::StoreError::Corrupt(format!("audit payload {seq}")))
    }
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
    Some(DecodedEntry { outcome, received_at, source, packed: &bytes[rest..] })
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
    use proptest::prelude::*;

    use super::*;

    const SOURCE: StoredSource = StoredSource::File { name: 1, line: 7 };

    fn round_trip(payload: &[u8]) -> Vec<u8> {
        let at = Timestamp::from_millis(0).unwrap();
        let bytes = encode_entry(Outcome::Applied, at, SOURCE, payload);
        let packed = encode_entry_into_packed(payload);
        assert_eq!(bytes, packed, "packed by the source or by the store, the entry is the same");
        decode_entry(&bytes).unwrap().payload().unwrap().into_owned()
    }

    fn encode_entry_into_packed(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let at = Timestamp::from_millis(0).unwrap();
        encode_entry_into(&mut out, Outcome::Applied, at, SOURCE, payload, Some(&PackedPayload::pack(payload)));
        out
    }

    #[test]
    fn a_typical_event_is_stored_in_under_two_thirds_of_its_size() {
        let event = br#"{"schema_version":1,"event_id":"evt_zd6Jb6f2D0GYgpEX","type":"refund.processing","occurred_at":"2024-01-01T00:03:59.590Z","refund":{"id":"ref_L4kk5BDh6aIh","tenant_id":"org_WB0ljTxuro","order_no":"ORDER-97637539","transaction_id":"ch_kfHDYHzE1xorU03r","external_refund_id":"re_xFM0JqqenclckBMm","processor":"checkout","payment_method_type":"debit_card","product_type":"e_commerce","store_id":"store8","reference_id":"reference_id_35662","reason":"fraudulent","metadata":{"ticketId":"SUP-563572"}}}"#;
        let packed = PackedPayload::pack(event);
        assert_eq!(packed.0[0], PACKED_LZ4);
        assert!(packed.0.len() * 3 < event.len() * 2, "{} of {} bytes", packed.0.len(), event.len());
        assert_eq!(round_trip(event), event);
    }

    #[test]
    fn what_does_not_compress_is_stored_as_is() {
        for payload in [&b""[..], b"{}", b"\x00\xff\x13\x37 not json at all"] {
            assert_eq!(PackedPayload::pack(payload).0[0], PACKED_RAW);
            assert_eq!(round_trip(payload), payload);
        }
    }

    #[test]
    fn corrupt_packing_is_refused_not_trusted() {
        let at = Timestamp::from_millis(0).unwrap();
        let good = encode_entry(Outcome::Applied, at, SOURCE, &[b'a'; 200]);
        let header = good.len() - PackedPayload::pack(&[b'a'; 200]).0.len();
        assert_eq!(good[header], PACKED_LZ4);
        let mut unknown = good.clone();
        unknown[header] = 9;
        let mut truncated = good.clone();
        truncated.truncate(good.len() - 2);
        let mut longer = good.clone();
        longer[header + 1..header + 5].copy_from_slice(&300u32.to_be_bytes());
        let mut huge = good.clone();
        huge[header + 1..header + 5].copy_from_slice(&u32::MAX.to_be_bytes());
        for bytes in [unknown, truncated, longer, huge, good[..header].to_vec()] {
            assert_eq!(decode_entry(&bytes).and_then(|e| e.payload().map(Cow::into_owned)), None);
        }
    }

    /// Bytes of any kind, and text that shares much with the dictionary and
    /// repeats itself (what LZ4 works on).
    fn payloads() -> impl Strategy<Value = Vec<u8>> {
        const PARTS: [&[u8]; 6] = [
            br#""refund":{"id":"#,
            br#""tenant_id":"org_"#,
            b"processor",
            b"12345",
            br"\u00e9",
            "\u{1f4b8}".as_bytes(),
        ];
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2000),
            proptest::collection::vec(0..PARTS.len(), 0..200)
                .prop_map(|picks| picks.into_iter().flat_map(|i| PARTS[i].iter().copied()).collect()),
        ]
    }

    proptest! {
        #[test]
        fn any_payload_comes_back_byte_for_byte(payload in payloads()) {
            prop_assert_eq!(round_trip(&payload), payload);
        }
    }

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
            assert_eq!(entry.payload().unwrap().as_ref(), b"{\"a\":1}");
        }
    }
}
