//! A row of `refunds`: `varint(len) | encoded RefundState | audit sequences`.
//!
//! Keeping a refund's audit sequences in its row (varints, increasing) spares
//! a separate per-event index: the row is rewritten once per batch anyway.

pub(crate) fn encode(state: &[u8], old_seqs: &[u8], new_seqs: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + state.len() + old_seqs.len() + 5 * new_seqs.len());
    put_varint(&mut out, state.len() as u64);
    out.extend_from_slice(state);
    out.extend_from_slice(old_seqs);
    for &seq in new_seqs {
        put_varint(&mut out, seq);
    }
    out
}

/// The same row with more sequences at the end.
pub(crate) fn append_seqs(row: &[u8], new_seqs: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(row.len() + 5 * new_seqs.len());
    out.extend_from_slice(row);
    for &seq in new_seqs {
        put_varint(&mut out, seq);
    }
    out
}

/// Splits a row into (encoded state, encoded sequences).
pub(crate) fn split(row: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, header) = get_varint(row)?;
    let end = header.checked_add(usize::try_from(len).ok()?)?;
    Some((row.get(header..end)?, &row[end..]))
}

/// Decodes the sequences part of a row.
pub(crate) fn seqs(mut bytes: &[u8]) -> Option<Vec<u64>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (seq, used) = get_varint(bytes)?;
        out.push(seq);
        bytes = &bytes[used..];
    }
    Some(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v.to_le_bytes()[0] | 0x80);
        v >>= 7;
    }
    out.push(v.to_le_bytes()[0]);
}

fn get_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_grow_by_appending() {
        let row = encode(b"state", &[], &[1, 300, 70_000]);
        let row = append_seqs(&row, &[u64::MAX]);
        let (state, seq_bytes) = split(&row).unwrap();
        assert_eq!(state, b"state");
        assert_eq!(seqs(seq_bytes).unwrap(), [1, 300, 70_000, u64::MAX]);
        let rewritten = encode(b"new state", seq_bytes, &[5]);
        let (state, seq_bytes) = split(&rewritten).unwrap();
        assert_eq!(state, b"new state");
        assert_eq!(seqs(seq_bytes).unwrap(), [1, 300, 70_000, u64::MAX, 5]);
    }
}
