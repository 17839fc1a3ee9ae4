//! The noise laid over the valid events, each on an RNG stream of its own
//! (ChaCha stream ids) so that the set of distinct valid events depends only
//! on `(refunds, seed)`:
//! - duplicates: the same bytes, or the same JSON with its keys reordered and
//!   other whitespace;
//! - reordering: lines go through a window written in random order;
//! - invalid lines of every reason. Each carries the marker
//!   `inv_<reason>_<n>`, which valid lines never contain. The first five
//!   cover every reason, then every 50th is `too_large`, the rest
//!   malformed_json 30%, schema_violation 35%, unknown_event_type 20%,
//!   unsupported_schema_version 15%.

use std::io::{self, Write};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};

use crate::ndjson::LineWriter;
use crate::random::pick;
use crate::timestamp::{TsFormat, push_timestamp};

// ChaCha stream ids of the seed, one per kind of noise: the main stream (the
// valid events) is stream 0 and never sees how much noise is drawn.
pub(crate) const STREAM_DUP: u64 = 1;
pub(crate) const STREAM_SHUFFLE: u64 = 2;
pub(crate) const STREAM_INVALID: u64 = 3;
/// Webhook retries of [`crate::Arrival::Realistic`].
pub(crate) const STREAM_RETRY: u64 = 4;

/// The RNG of one kind of noise: `seed` on its own ChaCha stream.
pub(crate) fn noise_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Lines out through a window of `window` lines written in random order
/// (0 or 1: no reordering).
pub(crate) struct ShuffleWindow<W: Write> {
    out: LineWriter<W>,
    window: usize,
    buffer: Vec<Vec<u8>>,
    rng: ChaCha8Rng,
}

impl<W: Write> ShuffleWindow<W> {
    pub(crate) fn new(out: W, window: usize, rng: ChaCha8Rng) -> ShuffleWindow<W> {
        ShuffleWindow { out: LineWriter::new(out), window, buffer: Vec::with_capacity(window.min(1 << 16)), rng }
    }

    pub(crate) fn line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.window <= 1 {
            return self.out.write_line(line);
        }
        if self.buffer.len() < self.window {
            self.buffer.push(line.to_vec());
            return Ok(());
        }
        let index = self.rng.random_range(0..self.buffer.len());
        let mut slot = std::mem::take(&mut self.buffer[index]);
        self.out.write_line(&slot)?;
        slot.clear();
        slot.extend_from_slice(line);
        self.buffer[index] = slot;
        Ok(())
    }

    /// Writes what the window still holds and flushes; returns the number of
    /// lines written.
    pub(crate) fn finish(&mut self) -> io::Result<u64> {
        while !self.buffer.is_empty() {
            let index = self.rng.random_range(0..self.buffer.len());
            let line = self.buffer.swap_remove(index);
            self.out.write_line(&line)?;
        }
        self.out.flush()?;
        Ok(self.out.lines())
    }
}

/// The same JSON value with its object keys reordered and other whitespace
/// (still one line).
pub(crate) fn reformat(line: &str, rng: &mut ChaCha8Rng) -> String {
    fn reorder(value: &mut Value, rng: &mut ChaCha8Rng) {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
                entries.shuffle(rng);
                for (_, v) in &mut entries {
                    reorder(v, rng);
                }
                *map = entries.into_iter().collect();
            }
            Value::Array(items) => items.iter_mut().for_each(|v| reorder(v, rng)),
            _ => {}
        }
    }
    let mut value: Value = serde_json::from_str(line).expect("a generated line is JSON");
    reorder(&mut value, rng);
    let compact = value.to_string();
    let style = rng.random_range(0..3u32);
    let mut out = String::with_capacity(compact.len() + compact.len() / 4);
    if rng.random_bool(0.2) {
        out.push(' ');
    }
    let (mut in_string, mut escaped) = (false, false);
    for ch in compact.chars() {
        if in_string {
            out.push(ch);
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_string = false;
            }
            continue;
        }
        match (ch, style) {
            ('"', _) => {
                in_string = true;
                out.push(ch);
            }
            (':' | ',', 0) => {
                out.push(ch);
                out.push(' ');
            }
            (':', 1) => out.push_str(" : "),
            ('{' | '[', 2) => {
                out.push(ch);
                out.push(' ');
            }
            ('}' | ']', 2) => {
                out.push(' ');
                out.push(ch);
            }
            (':' | ',', 2) => {
                out.push(ch);
                out.push('\t');
            }
            _ => out.push(ch),
        }
    }
    if rng.random_bool(0.2) {
        out.push(' ');
    }
    out
}

/// Invalid lines: every one carries `inv_<reason>_<n>` in its raw text.
pub(crate) struct InvalidLines {
    pub(crate) rng: ChaCha8Rng,
    count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Invalid {
    TooLarge,
    MalformedJson,
    UnsupportedSchemaVersion,
    UnknownEventType,
    SchemaViolation,
}

impl Invalid {
    fn code(self) -> &'static str {
        match self {
            Invalid::TooLarge => "too_large",
            Invalid::MalformedJson => "malformed_json",
            Invalid::UnsupportedSchemaVersion => "unsupported_schema_version",
            Invalid::UnknownEventType => "unknown_event_type",
            Invalid::SchemaViolation => "schema_violation",
        }
    }
}

/// The `refund` object of an invalid line's template.
fn refund_of(top: &mut Map<String, Value>) -> &mut Map<String, Value> {
    top.get_mut("refund").and_then(Value::as_object_mut).expect("refund object")
}

/// The contract's size limit for a message.
const MAX_LINE_BYTES: usize = 256 * 1024;

impl InvalidLines {
    pub(crate) fn new(rng: ChaCha8Rng) -> InvalidLines {
        InvalidLines { rng, count: 0 }
    }

    pub(crate) fn line(&mut self, refund_id: &str, tenant: &str, at: i64) -> Vec<u8> {
        let n = self.count;
        self.count += 1;
        // The first five cover every reason; then about 2% are too large.
        let reason = match n {
            0 => Invalid::SchemaViolation,
            1 => Invalid::MalformedJson,
            2 => Invalid::UnknownEventType,
            3 => Invalid::UnsupportedSchemaVersion,
            4 => Invalid::TooLarge,
            _ if n % 50 == 49 => Invalid::TooLarge,
            _ => pick(
                &mut self.rng,
                &[
                    (Invalid::MalformedJson, 30),
                    (Invalid::UnsupportedSchemaVersion, 15),
                    (Invalid::UnknownEventType, 20),
                    (Invalid::SchemaViolation, 35),
                ],
            ),
        };
        let marker = format!("inv_{}_{n}", reason.code());
        let mut ts = String::with_capacity(24);
        push_timestamp(&mut ts, at, TsFormat::MILLIS_Z);
        let rng = &mut self.rng;
        let kind =
            pick(rng, &[("refund.queued", 3), ("refund.processing", 2), ("refund.completed", 3), ("refund.failed", 1)]);
        let mut refund = Map::new();
        refund.insert("id".into(), json!(refund_id));
        refund.insert("tenant_id".into(), json!(tenant));
        refund.insert("amount".into(), json!(rng.random_range(100..50_000u64)));
        refund.insert("currency".into(), json!("USD"));
        refund.insert("processor".into(), json!("stripe"));
        let mut top = Map::new();
        top.insert("schema_version".into(), json!(1));
        top.insert("event_id".into(), json!(marker));
        top.insert("type".into(), json!(kind));
        top.insert("occurred_at".into(), json!(ts));
        top.insert("refund".into(), Value::Object(refund));
        let compact = |top: &Map<String, Value>| Value::Object(top.clone()).to_string();

        match reason {
            Invalid::TooLarge => {
                // A huge attachment in metadata, spliced in as text: the
                // refund object is the last member, so the line ends in `}}`.
                let pad = MAX_LINE_BYTES + rng.random_range(1..20_000);
                let small = compact(&top);
                let mut text = String::with_capacity(small.len() + pad + 64);
                text.push_str(&small[..small.len() - 2]);
                text.push_str(r#","metadata":{"ticketId":"SUP-1","attachment":""#);
                text.push_str(&"A".repeat(pad));
                text.push_str(r#""}}}"#);
                if rng.random_bool(0.3) {
                    // Oversized and malformed: the size rule comes first.
                    text.truncate(text.len() - 3);
                }
                text.into_bytes()
            }
            Invalid::MalformedJson => {
                let text = compact(&top);
                match rng.random_range(0..100u32) {
                    0..35 => {
                        let after = text.find(&marker).expect("marker") + marker.len() + 1;
                        let cut = rng.random_range(after..text.len() - 1);
                        text.as_bytes()[..cut].to_vec()
                    }
                    35..60 => {
                        let garbage = ["}", ",", " x", "]", " {\"event_id\":\"again\"}", "garbage"];
                        format!("{text}{}", garbage[rng.random_range(0..garbage.len())]).into_bytes()
                    }
                    60..75 => {
                        // Invalid UTF-8 inside a string; the marker stays ASCII.
                        refund_of(&mut top).insert("metadata".into(), json!({"note": "@@BYTES@@"}));
                        let text = compact(&top);
                        let bad: [&[u8]; 4] = [b"\xff\xfe", b"caf\xc3", b"\xc3\x28", b"\xed\xa0\x80"];
                        let (head, tail) = text.split_once("@@BYTES@@").expect("placeholder");
                        let mut bytes = head.as_bytes().to_vec();
                        bytes.extend_from_slice(bad[rng.random_range(0..bad.len())]);
                        bytes.extend_from_slice(tail.as_bytes());
                        bytes
                    }
                    75..88 => text.replace('"', "'").into_bytes(),
                    _ => {
                        refund_of(&mut top).insert("amount".into(), json!("@@NAN@@"));
                        compact(&top).replace("\"@@NAN@@\"", "NaN").into_bytes()
                    }
                }
            }
            Invalid::UnsupportedSchemaVersion => {
                let versions = [
                    json!(2),
                    json!("1"),
                    json!(1.0),
                    json!(0),
                    json!(-1),
                    json!("v1"),
                    json!(true),
                    json!({"major": 1}),
                ];
                top.insert("schema_version".into(), versions[rng.random_range(0..versions.len())].clone());
                if rng.random_bool(0.3) {
                    // Also an unknown type: the version rule comes first.
                    top.insert("type".into(), json!("refund.refunded"));
                }
                compact(&top).into_bytes()
            }
            Invalid::UnknownEventType => {
                let types = [
                    "refund.refunded",
                    "REFUND.COMPLETED",
                    "refund.Completed",
                    "refund.succeeded",
                    "refund.canceled",
                    "charge.refunded",
                    "refund.updated",
                    "refund.queued ",
                    "",
                ];
                top.insert("type".into(), json!(types[rng.random_range(0..types.len())]));
                if rng.random_bool(0.2) {
                    // Also a bad amount: the type rule comes first.
                    refund_of(&mut top).insert("amount".into(), json!(0));
                }
                if rng.random_bool(0.2) {
                    top.remove("schema_version");
                }
                compact(&top).into_bytes()
            }
            Invalid::SchemaViolation => Self::schema_violation(rng, &mut top, &marker).into_bytes(),
        }
    }

    fn schema_violation(rng: &mut ChaCha8Rng, top: &mut Map<String, Value>, marker: &str) -> String {
        let refund = refund_of;
        match rng.random_range(0..30u32) {
            0 => {
                refund(top).insert("amount".into(), json!(0));
            }
            1 => {
                refund(top).insert("amount".into(), json!(-2500));
            }
            2 => {
                refund(top).insert("amount".into(), json!(2500.0));
            }
            3 => {
                refund(top).insert("amount".into(), json!("2500"));
            }
            4 => {
                refund(top).remove("tenant_id");
            }
            5 => {
                refund(top).insert("tenant_id".into(), Value::Null);
            }
            6 => {
                refund(top).insert("tenant_id".into(), json!(""));
            }
            7 => {
                refund(top).insert("currency".into(), json!("US"));
            }
            8 => {
                refund(top).insert("currency".into(), json!("USDT"));
            }
            9 => {
                refund(top).insert("currency".into(), json!("€UR"));
            }
            10 => {
                refund(top).insert("currency".into(), json!(840));
            }
            11 => {
                top.insert("type".into(), json!("refund.queued"));
                refund(top).remove("amount");
            }
            12 => {
                top.insert("type".into(), json!("refund.queued"));
                refund(top).remove("currency");
            }
            13 => {
                top.insert("occurred_at".into(), json!("2025-13-01T00:00:00Z"));
            }
            14 => {
                top.insert("occurred_at".into(), json!("2025-06-01T10:00:00"));
            }
            15 => {
                top.insert("occurred_at".into(), json!("2025-06-01 10:00:00Z"));
            }
            16 => {
                top.insert("occurred_at".into(), json!(1_748_772_000));
            }
            17 => {
                top.insert("occurred_at".into(), json!("2024-02-30T12:00:00.000Z"));
            }
            18 => {
                top.remove("type");
            }
            19 => {
                top.insert("type".into(), json!(42));
            }
            20 => {
                // The marker moves to refund.id.
                top.remove("event_id");
                refund(top).insert("id".into(), json!(marker));
            }
            21 => {
                top.insert("event_id".into(), json!(""));
                refund(top).insert("id".into(), json!(marker));
            }
            22 => {
                top.insert("event_id".into(), json!(format!("{marker}_{}", "x".repeat(130))));
            }
            23 => {
                top.remove("refund");
            }
            24 => {
                top.insert("refund".into(), json!([marker]));
            }
            25 => {
                // Valid JSON, not an object.
                return match rng.random_range(0..3u32) {
                    0 => json!([marker, {"type": "refund.completed"}]).to_string(),
                    1 => json!(marker).to_string(),
                    _ => json!([Value::Object(top.clone())]).to_string(),
                };
            }
            26 => {
                refund(top).insert("processor".into(), json!(""));
            }
            27 => {
                refund(top).insert("store_id".into(), json!("s".repeat(300)));
            }
            28 => {
                refund(top).insert("original_amount".into(), json!(-1));
            }
            _ => match rng.random_range(0..3u32) {
                0 => {
                    refund(top).insert("metadata".into(), json!("ticket SUP-1"));
                }
                1 => {
                    refund(top).insert("initiated_by".into(), json!("system"));
                }
                _ => {
                    refund(top).insert("metadata".into(), json!({"ticketId": "SUP-2", "log": "L".repeat(17 * 1024)}));
                }
            },
        }
        Value::Object(top.clone()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use refunds_domain::{InvalidReason, validate};

    use super::*;
    use crate::GenerateParams;
    use crate::testing::{REASONS, canonical, check_invalid, clean_lines, lines, marker, params, run};

    #[test]
    fn generate_invalid_lines_cover_every_reason() {
        let (bytes, summary) = run(&params(20_000, 11, 0.0, 0, 0.05));
        let mut seen: HashMap<InvalidReason, usize> = HashMap::new();
        let mut not_utf8 = 0;
        for line in lines(&bytes) {
            if marker(line).is_none() {
                continue;
            }
            *seen.entry(check_invalid(line)).or_default() += 1;
            if std::str::from_utf8(line).is_err() {
                not_utf8 += 1;
            }
        }
        assert_eq!(seen.values().sum::<usize>() as u64, summary.invalid);
        for (code, reason) in REASONS {
            assert!(seen.get(&reason).is_some_and(|&n| n > 0), "{code} missing: {seen:?}");
        }
        let too_large = seen[&InvalidReason::TooLarge] as f64 / summary.invalid as f64;
        assert!((0.01..=0.04).contains(&too_large), "{too_large}");
        assert!(not_utf8 > 0, "some invalid UTF-8 lines");
        let share = summary.invalid as f64 / summary.valid_events as f64;
        assert!((0.045..0.055).contains(&share), "{share}");
    }

    #[test]
    fn generate_first_invalid_lines_cover_every_reason() {
        let (bytes, summary) = run(&params(100, 3, 0.0, 0, 0.1));
        assert!(summary.invalid >= 5, "{summary:?}");
        let reasons: HashSet<_> =
            lines(&bytes).into_iter().filter(|l| marker(l).is_some()).map(check_invalid).collect();
        assert_eq!(reasons.len(), 5);
    }

    #[test]
    fn generate_shuffle_window() {
        let base = params(1_000, 5, 0.0, 0, 0.0);
        let (w0, _) = run(&base);
        let (w1, _) = run(&GenerateParams { shuffle_window: 1, ..base.clone() });
        let (w50, _) = run(&GenerateParams { shuffle_window: 50, ..base.clone() });
        assert!(w0 == w1, "a window of 1 does not reorder");
        let (l0, l50) = (lines(&w0), lines(&w50));
        let mut sorted0 = l0.clone();
        let mut sorted50 = l50.clone();
        sorted0.sort_unstable();
        sorted50.sort_unstable();
        assert!(sorted0 == sorted50, "the same lines");
        let at: HashMap<&[u8], i64> =
            l0.iter().map(|l| (*l, validate(l).expect("valid").occurred_at.millis())).collect();
        let inversions = |lines: &[&[u8]]| lines.windows(2).filter(|w| at[w[1]] < at[w[0]]).count();
        // Without a window, only late queued events go back in time.
        let (i0, i50) = (inversions(&l0), inversions(&l50));
        assert!(i0 * 30 < l0.len(), "{i0} inversions without a window");
        assert!(i50 > l0.len() / 4, "{i50} inversions with a window of 50");
        let position: HashMap<&[u8], usize> = l0.iter().enumerate().map(|(i, l)| (*l, i)).collect();
        let moved = l50.iter().enumerate().filter(|(i, l)| position[*l] != *i).count();
        let far = l50.iter().enumerate().filter(|(i, l)| position[*l].abs_diff(*i) > 500).count();
        assert!(moved > l0.len() / 2 && far < l0.len() / 100, "{moved} moved, {far} far");
    }

    #[test]
    fn reformat_keeps_the_json_value_and_changes_the_bytes() {
        let line = clean_lines()[0];
        let text = std::str::from_utf8(line).expect("UTF-8");
        let original: Value = serde_json::from_str(text).expect("JSON");
        let mut rng = noise_rng(1, STREAM_DUP);
        let mut changed = 0;
        for _ in 0..20 {
            let variant = reformat(text, &mut rng);
            assert!(!variant.contains('\n'), "one line");
            let value: Value = serde_json::from_str(&variant).expect("JSON");
            assert_eq!(canonical(&value), canonical(&original));
            changed += usize::from(variant != text);
        }
        assert!(changed >= 19, "{changed} of 20 reformatted copies differ");
    }
}
