//! The compact binary form of [`RefundState`] kept in the store's primary table.
//!
//! Versions are written once in a sorted table and referenced by index from
//! each slot, so a refund whose fields all came from two events stores two
//! event ids, not fifteen. The encoding is canonical: equal states encode to
//! equal bytes.

use std::fmt;
use std::sync::Arc;

use crate::event::{EventType, TextField};
use crate::state::{RefundState, Slot, Version};
use crate::time::Timestamp;

const FORMAT: u8 = 1;

/// The bytes did not hold a state written by [`RefundState::encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(&'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "corrupt refund row: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

impl RefundState {
    pub fn encode(&self) -> Vec<u8> {
        let mut versions: Vec<&Version> = std::iter::once(&self.status_version).chain(self.slot_versions()).collect();
        versions.sort();
        versions.dedup();

        let mut out = Vec::with_capacity(256);
        out.push(FORMAT);
        put_str(&mut out, &self.tenant_id);
        put_str(&mut out, &self.id);
        put_uint(&mut out, versions.len() as u64);
        for v in &versions {
            put_int(&mut out, v.occurred_at.millis());
            put_str(&mut out, &v.event_id);
        }
        let index_of = |v: &Version| versions.binary_search(&v).expect("every version is in the table") as u64;
        out.push(self.status.code());
        put_uint(&mut out, index_of(&self.status_version));
        match self.first_queued_at {
            Some(t) => {
                out.push(1);
                put_int(&mut out, t.millis());
            }
            None => out.push(0),
        }
        put_int(&mut out, self.first_event_at.millis());
        put_int(&mut out, self.updated_at.millis());
        put_uint(&mut out, self.event_count);
        let slot_header = |out: &mut Vec<u8>, version: Option<&Version>| {
            put_uint(out, version.map_or(0, |v| index_of(v) + 1));
        };
        for slot in [&self.amount, &self.original_amount] {
            slot_header(&mut out, slot.as_ref().map(|(_, v)| v));
            if let Some((value, _)) = slot {
                put_uint(&mut out, *value);
            }
        }
        let strings = [&self.currency, &self.initiated_by, &self.metadata].into_iter().chain(&self.text);
        for slot in strings {
            slot_header(&mut out, slot.as_ref().map(|(_, v)| v));
            if let Some((value, _)) = slot {
                put_str(&mut out, value);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<RefundState, DecodeError> {
        let mut r = Reader { bytes, pos: 0 };
        if r.byte()? != FORMAT {
            return Err(DecodeError("unknown format"));
        }
        let tenant_id = r.string()?;
        let id = r.string()?;
        let count = r.uint()?;
        let mut versions = Vec::with_capacity(usize::try_from(count).map_err(|_| DecodeError("version count"))?);
        for _ in 0..count {
            let occurred_at = r.timestamp()?;
            let event_id: Arc<str> = Arc::from(r.string()?);
            versions.push(Version { occurred_at, event_id });
        }
        let version_at = |index: u64| -> Result<Version, DecodeError> {
            usize::try_from(index).ok().and_then(|i| versions.get(i)).cloned().ok_or(DecodeError("version index"))
        };
        let status = EventType::from_code(r.byte()?).ok_or(DecodeError("status"))?;
        let status_version = version_at(r.uint()?)?;
        let first_queued_at = match r.byte()? {
            0 => None,
            _ => Some(r.timestamp()?),
        };
        let first_event_at = r.timestamp()?;
        let updated_at = r.timestamp()?;
        let event_count = r.uint()?;
        let uint_slot = |r: &mut Reader| -> Result<Slot<u64>, DecodeError> {
            match r.uint()? {
                0 => Ok(None),
                i => Ok(Some((r.uint()?, version_at(i - 1)?))),
            }
        };
        let amount = uint_slot(&mut r)?;
        let original_amount = uint_slot(&mut r)?;
        let string_slot = |r: &mut Reader| -> Result<Slot<String>, DecodeError> {
            match r.uint()? {
                0 => Ok(None),
                i => Ok(Some((r.string()?, version_at(i - 1)?))),
            }
        };
        let currency = string_slot(&mut r)?;
        let initiated_by = string_slot(&mut r)?;
        let metadata = string_slot(&mut r)?;
        let mut text: [Slot<String>; TextField::COUNT] = Default::default();
        for slot in &mut text {
            *slot = string_slot(&mut r)?;
        }
        if r.pos != bytes.len() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(RefundState {
            tenant_id,
            id,
            status,
            status_version,
            first_queued_at,
            first_event_at,
            updated_at,
            event_count,
            amount,
            currency,
            original_amount,
            text,
            initiated_by,
            metadata,
        })
    }
}

fn put_uint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v.to_le_bytes()[0] | 0x80);
        v >>= 7;
    }
    out.push(v.to_le_bytes()[0]);
}

fn put_int(out: &mut Vec<u8>, v: i64) {
    put_uint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_uint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.bytes.get(self.pos).ok_or(DecodeError("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    fn uint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError("varint too long"))
    }

    fn timestamp(&mut self) -> Result<Timestamp, DecodeError> {
        let zigzag = self.uint()?;
        let v = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
        Timestamp::from_millis(v).ok_or(DecodeError("timestamp out of range"))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let len = usize::try_from(self.uint()?).map_err(|_| DecodeError("length"))?;
        let end = self.pos.checked_add(len).filter(|&e| e <= self.bytes.len()).ok_or(DecodeError("truncated"))?;
        let s = std::str::from_utf8(&self.bytes[self.pos..end]).map_err(|_| DecodeError("utf-8"))?;
        self.pos = end;
        Ok(s.to_owned())
    }
}
