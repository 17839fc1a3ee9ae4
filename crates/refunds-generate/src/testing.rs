//! Helpers shared by the tests of every module. Debug builds are slow at
//! JSON, so the expensive checks share two cached runs of 6,000 refunds
//! (about 17,000 events).

use std::sync::OnceLock;

use refunds_domain::event::validate_value;
use refunds_domain::{InvalidReason, RefundEvent, validate};
use serde_json::Value;

use crate::{GenerateParams, GenerateSummary, Stats, generate, generate_inner};

pub(crate) fn params(
    refunds: u64,
    seed: u64,
    dup_rate: f64,
    shuffle_window: usize,
    invalid_rate: f64,
) -> GenerateParams {
    GenerateParams { refunds, seed, dup_rate, shuffle_window, invalid_rate, arrival: crate::Arrival::Ordered }
}

pub(crate) fn run(params: &GenerateParams) -> (Vec<u8>, GenerateSummary) {
    let mut out = Vec::new();
    let summary = generate(params, &mut out).expect("generate");
    (out, summary)
}

pub(crate) fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    assert!(bytes.is_empty() || bytes.ends_with(b"\n"), "output ends with a newline");
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    lines.pop();
    lines
}

/// Substring search; fast on UTF-8 (the common case in debug builds).
pub(crate) fn contains(haystack: &[u8], needle: &str) -> bool {
    match std::str::from_utf8(haystack) {
        Ok(text) => text.contains(needle),
        Err(_) => haystack.windows(needle.len()).any(|w| w == needle.as_bytes()),
    }
}

pub(crate) const REASONS: [(&str, InvalidReason); 5] = [
    ("too_large", InvalidReason::TooLarge),
    ("malformed_json", InvalidReason::MalformedJson),
    ("unsupported_schema_version", InvalidReason::UnsupportedSchemaVersion),
    ("unknown_event_type", InvalidReason::UnknownEventType),
    ("schema_violation", InvalidReason::SchemaViolation),
];

/// The reason named by a line's `inv_<reason>_` marker.
pub(crate) fn marker(line: &[u8]) -> Option<InvalidReason> {
    if !contains(line, "inv_") {
        return None;
    }
    let reason = REASONS.iter().find(|(code, _)| contains(line, &format!("inv_{code}_")));
    Some(reason.unwrap_or_else(|| panic!("a bad marker: {}", String::from_utf8_lossy(line))).1)
}

/// Checks a marked line: invalid, for the reason its marker names.
pub(crate) fn check_invalid(line: &[u8]) -> InvalidReason {
    let expected = marker(line).expect("marked");
    let err = validate(line).expect_err("a marked line is invalid");
    let shown = String::from_utf8_lossy(&line[..line.len().min(300)]);
    assert_eq!(err.reason, expected, "{err}: {shown}");
    assert!(!line.iter().all(|b| *b == b' ' || *b == b'\t'), "not blank");
    assert!(!line.contains(&b'\r'));
    expected
}

/// Key order does not matter: objects with sorted keys.
pub(crate) fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), canonical(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

pub(crate) const N: u64 = 6_000;
pub(crate) const SEED: u64 = 7;

pub(crate) struct Clean {
    pub(crate) bytes: Vec<u8>,
    pub(crate) summary: GenerateSummary,
    pub(crate) stats: Stats,
    /// Each line, validated and parsed.
    pub(crate) events: Vec<(RefundEvent, Value)>,
}

pub(crate) fn clean() -> &'static Clean {
    static CLEAN: OnceLock<Clean> = OnceLock::new();
    CLEAN.get_or_init(|| {
        let mut bytes = Vec::new();
        let (summary, stats) = generate_inner(&params(N, SEED, 0.0, 0, 0.0), &mut bytes).expect("generate");
        let events = lines(&bytes)
            .into_iter()
            .map(|line| {
                let value: Value = serde_json::from_slice(line).expect("JSON");
                let event =
                    validate_value(&value).unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(line)));
                (event, value)
            })
            .collect();
        Clean { bytes, summary, stats, events }
    })
}

pub(crate) fn noisy() -> &'static (Vec<u8>, GenerateSummary) {
    static NOISY: OnceLock<(Vec<u8>, GenerateSummary)> = OnceLock::new();
    NOISY.get_or_init(|| run(&params(N, SEED, 0.05, 50, 0.05)))
}

/// The lines of the clean run.
pub(crate) fn clean_lines() -> Vec<&'static [u8]> {
    lines(&clean().bytes)
}
