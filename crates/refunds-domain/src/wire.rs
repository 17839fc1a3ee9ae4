//! The fast path of [`crate::event::validate`]: one typed pass over a message
//! that is valid in every respect, with no `serde_json::Value` of the whole
//! message and no allocation for its keys.
//!
//! It is only an accelerator. Whatever it cannot accept whole (a broken rule,
//! a repeated key, a value of an unexpected type) it hands back as `None`, and
//! the general validator, which works on a parsed [`Value`], decides the case
//! and words the error. So this path has one duty: when it accepts a message,
//! the general validator must accept it too and return the same event. The
//! tests in `tests/validation.rs` hold the two to that, sample by sample and
//! on generated messages.
//!
//! Values of unknown fields are parsed as a [`Value`] and dropped rather than
//! skipped, because skipping is laxer than parsing: serde_json's skip accepts
//! a lone surrogate escape or an out-of-range number, which the general
//! validator rejects as `malformed_json`.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::event::{
    EventType, MAX_ID_BYTES, MAX_METADATA_BYTES, MAX_TEXT_BYTES, RefundEvent, RefundFields, TextField, canonical_json,
};
use crate::time::Timestamp;

/// The event in `text` if it breaks no rule; `None` leaves the case to the
/// general validator.
pub(crate) fn accept(text: &str) -> Option<RefundEvent> {
    let mut de = serde_json::Deserializer::from_str(text);
    let top = (&mut de).deserialize_map(TopVisitor).ok()?;
    de.end().ok()?;
    top.into_event()
}

/// A slot that is filled at most once: a key repeated within one object is
/// left to the general validator, which lets the last one win.
fn fill<T, E: de::Error>(slot: &mut Option<T>, value: T) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::custom("repeated key"));
    }
    *slot = Some(value);
    Ok(())
}

/// An object key, borrowed from the message unless it holds escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key<'de>, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The top-level fields; each outer `Option` says whether the key was seen.
#[derive(Default)]
struct Top<'de> {
    schema_version: Option<Option<u64>>,
    event_id: Option<Option<String>>,
    kind: Option<Option<Key<'de>>>,
    occurred_at: Option<Option<Key<'de>>>,
    refund: Option<Option<Refund>>,
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
        let mut top = Top::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match key.as_ref() {
                "schema_version" => fill(&mut top.schema_version, map.next_value()?)?,
                "event_id" => fill(&mut top.event_id, map.next_value()?)?,
                "type" => fill(&mut top.kind, map.next_value()?)?,
                "occurred_at" => fill(&mut top.occurred_at, map.next_value()?)?,
                "refund" => fill(&mut top.refund, map.next_value()?)?,
                _ => drop(map.next_value::<Value>()?),
            }
        }
        Ok(top)
    }
}

impl Top<'_> {
    fn into_event(self) -> Option<RefundEvent> {
        if !matches!(self.schema_version, None | Some(None) | Some(Some(1))) {
            return None;
        }
        let kind = EventType::from_wire_name(&self.kind??.0)?;
        let event_id = id(self.event_id??)?;
        let occurred_at = Timestamp::parse_rfc3339(&self.occurred_at??.0)?;
        let mut refund = self.refund??;
        let refund_id = id(refund.id.take()??)?;
        let tenant_id = id(refund.tenant_id.take()??)?;
        let fields = refund.into_fields(kind)?;
        Some(RefundEvent { event_id, kind, occurred_at, refund_id, tenant_id, fields })
    }
}

fn id(text: String) -> Option<String> {
    (1..=MAX_ID_BYTES).contains(&text.len()).then_some(text)
}

/// The fields of `refund`; each outer `Option` says whether the key was seen.
#[derive(Default)]
struct Refund {
    id: Option<Option<String>>,
    tenant_id: Option<Option<String>>,
    amount: Option<Option<u64>>,
    currency: Option<Option<String>>,
    original_amount: Option<Option<u64>>,
    text: [Option<Option<String>>; TextField::COUNT],
    initiated_by: Option<Option<Value>>,
    metadata: Option<Option<Value>>,
}

impl<'de> Deserialize<'de> for Refund {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Refund, D::Error> {
        deserializer.deserialize_map(RefundVisitor)
    }
}

struct RefundVisitor;

impl<'de> Visitor<'de> for RefundVisitor {
    type Value = Refund;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a refund object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Refund, A::Error> {
        let mut refund = Refund::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match key.as_ref() {
                "id" => fill(&mut refund.id, map.next_value()?)?,
                "tenant_id" => fill(&mut refund.tenant_id, map.next_value()?)?,
                "amount" => fill(&mut refund.amount, map.next_value()?)?,
                "currency" => fill(&mut refund.currency, map.next_value()?)?,
                "original_amount" => fill(&mut refund.original_amount, map.next_value()?)?,
                "initiated_by" => fill(&mut refund.initiated_by, map.next_value()?)?,
                "metadata" => fill(&mut refund.metadata, map.next_value()?)?,
                other => match TextField::ALL.into_iter().find(|field| field.name() == other) {
                    Some(field) => fill(&mut refund.text[field.index()], map.next_value()?)?,
                    None => drop(map.next_value::<Value>()?),
                },
            }
        }
        Ok(refund)
    }
}

impl Refund {
    fn into_fields(self, kind: EventType) -> Option<RefundFields> {
        let amount = self.amount.flatten();
        if amount == Some(0) {
            return None;
        }
        let currency = match self.currency.flatten() {
            None => None,
            Some(mut c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()) => {
                c.make_ascii_uppercase();
                Some(c)
            }
            Some(_) => return None,
        };
        if kind == EventType::Queued && (amount.is_none() || currency.is_none()) {
            return None;
        }
        let mut text: [Option<String>; TextField::COUNT] = Default::default();
        for (field, value) in TextField::ALL.into_iter().zip(self.text) {
            text[field.index()] = match value.flatten() {
                None => None,
                Some(value) if (1..=MAX_TEXT_BYTES).contains(&value.len()) => Some(match field {
                    TextField::Processor => value.to_lowercase(),
                    _ => value,
                }),
                Some(_) => return None,
            };
        }
        Some(RefundFields {
            amount,
            currency,
            original_amount: self.original_amount.flatten(),
            text,
            initiated_by: object(self.initiated_by.flatten(), usize::MAX)?,
            metadata: object(self.metadata.flatten(), MAX_METADATA_BYTES)?,
        })
    }
}

/// `Some(None)` for an absent or null object, `Some(Some(canonical JSON))`
/// for an object within `max_bytes`, `None` for anything else.
fn object(value: Option<Value>, max_bytes: usize) -> Option<Option<String>> {
    match value {
        None => Some(None),
        Some(value @ Value::Object(_)) => {
            let compact = canonical_json(&value);
            (compact.len() <= max_bytes).then_some(Some(compact))
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::accept;
    use crate::event::validate_text;

    /// The typed pass may decline anything, but what it accepts the general
    /// validator must accept as the very same event.
    #[track_caller]
    fn agrees(text: &str) -> bool {
        match accept(text) {
            Some(fast) => {
                assert_eq!(validate_text(text), Ok(fast), "the typed pass accepted {text}");
                true
            }
            None => false,
        }
    }

    fn samples(dir: &str) -> Vec<(String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/examples").join(dir);
        let mut samples: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
            .map(|entry| {
                let path = entry.unwrap().path();
                (path.display().to_string(), std::fs::read_to_string(&path).unwrap())
            })
            .collect();
        samples.sort();
        assert!(!samples.is_empty(), "no samples in {}", dir.display());
        samples
    }

    #[test]
    fn the_typed_pass_takes_every_plain_valid_sample_and_no_invalid_one() {
        for (path, text) in samples("valid") {
            assert!(agrees(&text), "the typed pass declined the valid sample {path}");
        }
        for dir in ["invalid", "beyond-schema"] {
            for (path, text) in samples(dir) {
                assert!(!agrees(&text), "the typed pass accepted the invalid sample {path}");
            }
        }
    }

    /// An object's members as (key, JSON text), in writing order.
    type Entries = Vec<(String, String)>;

    /// A valid event as entries, top level and `refund`.
    fn base() -> (Entries, Entries) {
        let entry = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let top = vec![
            entry("schema_version", "1"),
            entry("event_id", r#""evt_1""#),
            entry("type", r#""refund.queued""#),
            entry("occurred_at", r#""2026-02-22T10:32:15.123Z""#),
        ];
        let refund = vec![
            entry("id", r#""ref_1""#),
            entry("tenant_id", r#""org_1""#),
            entry("amount", "2500"),
            entry("currency", r#""usd""#),
            entry("original_amount", "10000"),
            entry("processor", r#""Stripe""#),
            entry("order_no", r#""ORDER-1""#),
            entry("initiated_by", r#"{"type":"user","id":"usr_1"}"#),
            entry("metadata", r#"{"b":[1,{"y":2,"x":"\u00e9"}],"a":null}"#),
        ];
        (top, refund)
    }

    /// Values that break, bend or keep a rule, for any field.
    fn alternative(pick: u8) -> String {
        let long = |n: usize| format!("\"{}\"", "x".repeat(n));
        let alternatives = [
            "null".to_owned(),
            "0".to_owned(),
            "-1".to_owned(),
            "-0".to_owned(),
            "1".to_owned(),
            "2".to_owned(),
            "1.0".to_owned(),
            "1e3".to_owned(),
            "1e400".to_owned(),
            "18446744073709551616".to_owned(),
            r#""1""#.to_owned(),
            r#""""#.to_owned(),
            r#""EUR""#.to_owned(),
            r#""e$r""#.to_owned(),
            r#""ÜSD""#.to_owned(),
            r#""refund.completed""#.to_owned(),
            r#""refund.unknown""#.to_owned(),
            r#""2026-02-22T10:32:15+01:00""#.to_owned(),
            r#""2026-02-30T10:32:15Z""#.to_owned(),
            r#""e\u0076t_\"q\"""#.to_owned(),
            r#""\ud800""#.to_owned(),
            "{}".to_owned(),
            "[]".to_owned(),
            r#"["ref_1","org_1"]"#.to_owned(),
            "true".to_owned(),
            r#"{"k":{"j":[1,2,{"i":"\ud83d\ude00"}]}}"#.to_owned(),
            long(128),
            long(129),
            long(256),
            long(257),
            format!(r#"{{"k":{}}}"#, long(16_384 - 8)),
            format!(r#"{{"k":{}}}"#, long(16_384 - 7)),
        ];
        alternatives[usize::from(pick) % alternatives.len()].clone()
    }

    const KEYS: [&str; 14] = [
        "schema_version",
        "event_id",
        "type",
        "occurred_at",
        "refund",
        "id",
        "tenant_id",
        "amount",
        "currency",
        "processor",
        "metadata",
        "initiated_by",
        "event\\u005fid",
        "unknown",
    ];

    fn render(entries: &[(String, String)]) -> String {
        let fields: Vec<String> = entries.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", fields.join(","))
    }

    /// Applies one edit to a list of entries.
    fn edit(entries: &mut Vec<(String, String)>, op: u8, a: u8, b: u8) {
        let at = |len: usize| usize::from(a) % len.max(1);
        match op % 6 {
            0 if !entries.is_empty() => {
                let i = at(entries.len());
                entries[i].1 = alternative(b);
            }
            1 if !entries.is_empty() => {
                let i = at(entries.len());
                let repeat = (entries[i].0.clone(), alternative(b));
                entries.push(repeat);
            }
            2 if !entries.is_empty() => {
                entries.remove(at(entries.len()));
            }
            3 => entries.push((KEYS[usize::from(b) % KEYS.len()].to_owned(), alternative(a))),
            4 if !entries.is_empty() => {
                let i = at(entries.len());
                entries[i].0 = KEYS[usize::from(b) % KEYS.len()].to_owned();
            }
            _ => {
                let by = at(entries.len());
                entries.rotate_left(by);
            }
        }
    }

    /// The edited message, and whether an object in it repeats a key.
    fn message(edits: &[(bool, u8, u8, u8)], wrapper: u8) -> (String, bool) {
        let (mut top, mut refund) = base();
        for &(in_refund, op, a, b) in edits {
            edit(if in_refund { &mut refund } else { &mut top }, op, a, b);
        }
        top.push(("refund".to_owned(), render(&refund)));
        let repeats = |entries: &[(String, String)]| {
            let mut keys: Vec<String> = entries.iter().map(|(k, _)| k.replace("\\u005f", "_")).collect();
            keys.sort();
            keys.windows(2).any(|w| w[0] == w[1])
        };
        let repeated = repeats(&top) || repeats(&refund);
        let text = render(&top);
        let text = match wrapper % 8 {
            0 => format!("[{text}]"),
            1 => format!("{text} x"),
            2 => format!(" \n{text}\t "),
            _ => text,
        };
        (text, repeated)
    }

    #[test]
    fn the_typed_pass_takes_the_unedited_event() {
        assert!(agrees(&message(&[], 3).0));
        assert!(agrees(&message(&[], 2).0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn the_typed_pass_agrees_with_the_general_validator(
            edits in proptest::collection::vec((any::<bool>(), any::<u8>(), any::<u8>(), any::<u8>()), 0..5),
            wrapper in any::<u8>(),
        ) {
            let (text, repeated) = message(&edits, wrapper);
            let taken = agrees(&text);
            // It declines a valid event only for a repeated key.
            if validate_text(&text).is_ok() && !repeated {
                prop_assert!(taken, "the typed pass declined the valid {}", text);
            }
        }
    }
}
