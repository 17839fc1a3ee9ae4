//! Contract section 2: a refund's state is a function of the *set* of its
//! distinct valid events.
//!
//! Events are generated as wire JSON (all five types, occurred_at from a range
//! of a few instants written in several RFC 3339 forms so that equal
//! timestamps are common, event ids from a tiny alphabet, every optional field
//! absent, null or set, metadata small objects including `{}`), go through
//! `validate`, and are folded with `merge`. The properties:
//!
//! (a) any permutation gives an equal state, equal `encode()` bytes and equal
//!     `render_refund` output;
//! (b) folding chunk by chunk, persisting each state with `encode` and
//!     reloading it with `decode` between chunks, gives the same;
//! (c) `decode(encode(s)) == s` and re-encoding gives the same bytes, for
//!     every intermediate state;
//! (d) the rendering equals an independent reference implementation written
//!     from the text of contract section 2, compared as JSON values;
//! (e) `merge_all` of a chunk equals folding it event by event.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use chrono::{DateTime, FixedOffset, Utc};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::ValueTree;
use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
use refunds_domain::{RefundEvent, RefundState, merge, merge_all, render_refund, validate};
use serde_json::{Map, Value, json};

/// 2026-02-22T10:32:15.000Z
const BASE_MS: i64 = 1_771_756_335_000;
/// occurred_at is BASE_MS + STEP_MS * k for k in 0..STEPS: six instants that
/// cross a second boundary.
const STEP_MS: i64 = 250;
const STEPS: i64 = 6;

const TYPES: [&str; 5] =
    ["refund.queued", "refund.processing", "refund.completed", "refund.failed", "refund.cancelled"];

/// The contract's rank of each entry of `TYPES`.
const RANKS: [u8; 5] = [0, 1, 2, 2, 2];

const TEXT_FIELDS: [&str; 10] = [
    "order_no",
    "transaction_id",
    "external_refund_id",
    "processor",
    "payment_method_type",
    "product_type",
    "store_id",
    "reference_id",
    "reason",
    "failure_reason",
];

/// (tenant_id, refund id): one id under two tenants, and a second refund.
const REFUNDS: [(&str, &str); 3] = [("org_a", "ref_1"), ("org_b", "ref_1"), ("org_a", "ref_2")];

/// A field on the wire: absent, explicitly null, or set.
#[derive(Debug, Clone, PartialEq)]
enum Wire<T> {
    Absent,
    Null,
    Set(T),
}

impl<T> Wire<T> {
    fn value(&self) -> Option<&T> {
        match self {
            Wire::Set(v) => Some(v),
            Wire::Absent | Wire::Null => None,
        }
    }
}

/// One generated event, as the test knows it (before the wire).
#[derive(Debug, Clone)]
struct Spec {
    refund: usize,
    event_id: String,
    kind: usize,
    ms: i64,
    time_style: u8,
    schema_version: Wire<u8>,
    amount: Wire<u64>,
    currency: Wire<String>,
    original_amount: Wire<u64>,
    text: Vec<Wire<String>>,
    initiated_by: Wire<Value>,
    metadata: Wire<Value>,
}

impl Spec {
    fn key(&self) -> (String, String) {
        let (tenant, id) = REFUNDS[self.refund];
        (tenant.to_owned(), id.to_owned())
    }

    /// The (occurred_at, event_id) order of the contract.
    fn version(&self) -> (i64, &str) {
        (self.ms, &self.event_id)
    }

    fn to_json(&self) -> Value {
        let (tenant, id) = REFUNDS[self.refund];
        let mut refund = Map::new();
        refund.insert("id".into(), json!(id));
        refund.insert("tenant_id".into(), json!(tenant));
        put(&mut refund, "amount", &self.amount, |v| json!(v));
        put(&mut refund, "currency", &self.currency, |v| json!(v));
        put(&mut refund, "original_amount", &self.original_amount, |v| json!(v));
        for (name, wire) in TEXT_FIELDS.iter().zip(&self.text) {
            put(&mut refund, name, wire, |v| json!(v));
        }
        put(&mut refund, "initiated_by", &self.initiated_by, Clone::clone);
        put(&mut refund, "metadata", &self.metadata, Clone::clone);
        refund.insert("future_field".into(), json!({"ignored": true}));
        let mut event = Map::new();
        put(&mut event, "schema_version", &self.schema_version, |v| json!(v));
        event.insert("event_id".into(), json!(self.event_id));
        event.insert("type".into(), json!(TYPES[self.kind]));
        event.insert("occurred_at".into(), json!(occurred_at_text(self.ms, self.time_style)));
        event.insert("refund".into(), Value::Object(refund));
        Value::Object(event)
    }

    fn validated(&self) -> RefundEvent {
        let raw = serde_json::to_vec(&self.to_json()).unwrap();
        validate(&raw)
            .unwrap_or_else(|err| panic!("generated event is invalid: {err}: {}", String::from_utf8_lossy(&raw)))
    }
}

fn put<T>(object: &mut Map<String, Value>, key: &str, wire: &Wire<T>, f: impl Fn(&T) -> Value) {
    match wire {
        Wire::Absent => {}
        Wire::Null => {
            object.insert(key.to_owned(), Value::Null);
        }
        Wire::Set(v) => {
            object.insert(key.to_owned(), f(v));
        }
    }
}

/// The same instant written in one of several RFC 3339 forms.
fn occurred_at_text(ms: i64, style: u8) -> String {
    let utc = DateTime::<Utc>::from_timestamp_millis(ms).unwrap();
    match style {
        0 => utc.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        1 => utc.format("%Y-%m-%dt%H:%M:%S%.3fz").to_string(),
        2 => utc
            .with_timezone(&FixedOffset::east_opt(5 * 3600 + 1800).unwrap())
            .format("%Y-%m-%dT%H:%M:%S%.3f%:z")
            .to_string(),
        // Extra fraction digits are truncated, never rounded.
        3 => utc.format("%Y-%m-%dT%H:%M:%S%.3f987654-00:00").to_string(),
        _ => utc.with_timezone(&FixedOffset::west_opt(3600).unwrap()).format("%Y-%m-%dT%H:%M:%S%.6f%:z").to_string(),
    }
}

fn render_time(ms: i64) -> Value {
    let utc = DateTime::<Utc>::from_timestamp_millis(ms).unwrap();
    json!(utc.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

// ---------------------------------------------------------------------------
// Generators

fn wire<T: Debug + Clone + 'static>(value: impl Strategy<Value = T> + 'static) -> impl Strategy<Value = Wire<T>> {
    prop_oneof![
        3 => Just(Wire::Absent),
        1 => Just(Wire::Null),
        3 => value.prop_map(Wire::Set),
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-2i64..3).prop_map(Value::from),
        select(vec!["x", "Y", "é", ""]).prop_map(Value::from),
        Just(json!({"nested": [1, {"k": "v"}]})),
        Just(json!([])),
    ]
}

/// Small objects, `{}` included; keys in generated (not sorted) order.
fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::vec((select(vec!["a", "b", "ticketId"]), json_leaf()), 0..4).prop_map(|pairs| {
        let mut object = Map::new();
        for (key, value) in pairs {
            object.insert(key.to_owned(), value);
        }
        Value::Object(object)
    })
}

fn text_value() -> impl Strategy<Value = String> {
    select(vec!["stripe", "Stripe", "ÅDYEN", "ådyen", "ORDER-1", "x y", "é"]).prop_map(str::to_owned)
}

fn spec() -> impl Strategy<Value = Spec> {
    let identity = (
        0..REFUNDS.len(),
        // A tiny alphabet: ids collide across refunds and order by bytes
        // ('A' < '_' < 'a', and a prefix sorts first).
        select(vec!["a", "A", "b", "_", "aa", "aA", "a_", "Ab", "_b", "ba"]).prop_map(str::to_owned),
        0..TYPES.len(),
        0..STEPS,
        0u8..5,
    );
    let fields = (
        wire(Just(1u8)),
        wire(1u64..4),
        wire(select(vec!["usd", "USD", "eUr", "GBP"]).prop_map(str::to_owned)),
        wire(0u64..3),
        prop::collection::vec(wire(text_value()), TEXT_FIELDS.len()),
        wire(json_object()),
        wire(json_object()),
    );
    (identity, fields).prop_map(
        |(
            (refund, event_id, kind, step, time_style),
            (schema_version, amount, currency, original_amount, text, initiated_by, metadata),
        )| {
            let mut spec = Spec {
                refund,
                event_id,
                kind,
                ms: BASE_MS + STEP_MS * step,
                time_style,
                schema_version,
                amount,
                currency,
                original_amount,
                text,
                initiated_by,
                metadata,
            };
            // refund.queued requires amount and currency.
            if spec.kind == 0 {
                if spec.amount.value().is_none() {
                    spec.amount = Wire::Set(3);
                }
                if spec.currency.value().is_none() {
                    spec.currency = Wire::Set("usd".to_owned());
                }
            }
            spec
        },
    )
}

/// A set of events for a few refunds: event ids distinct within a refund.
fn event_set() -> impl Strategy<Value = Vec<Spec>> {
    prop::collection::vec(spec(), 1..16).prop_map(|specs| {
        let mut seen = BTreeSet::new();
        specs.into_iter().filter(|s| seen.insert((s.refund, s.event_id.clone()))).collect()
    })
}

/// A set of events and a permutation of their indexes.
fn event_set_and_permutation() -> impl Strategy<Value = (Vec<Spec>, Vec<usize>)> {
    event_set().prop_flat_map(|specs| {
        let n = specs.len();
        (Just(specs), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
    })
}

// ---------------------------------------------------------------------------
// Folding

type Key = (String, String);
type States = BTreeMap<Key, RefundState>;

fn key_of(event: &RefundEvent) -> Key {
    (event.tenant_id.clone(), event.refund_id.clone())
}

/// Folds a stream of distinct events into per-refund states, checking the
/// codec round trip (c) on every intermediate state.
fn fold<'a>(states: &mut States, events: impl IntoIterator<Item = &'a RefundEvent>) -> Result<(), TestCaseError> {
    for event in events {
        let key = key_of(event);
        let prior = states.remove(&key);
        let next = merge(prior, event);
        check_round_trip(&next)?;
        states.insert(key, next);
    }
    Ok(())
}

fn fold_all<'a>(events: impl IntoIterator<Item = &'a RefundEvent>) -> Result<States, TestCaseError> {
    let mut states = States::new();
    fold(&mut states, events)?;
    Ok(states)
}

fn check_round_trip(state: &RefundState) -> Result<(), TestCaseError> {
    let bytes = state.encode();
    let decoded = RefundState::decode(&bytes).map_err(|err| TestCaseError::fail(format!("decode failed: {err}")))?;
    prop_assert_eq!(&decoded, state);
    prop_assert_eq!(decoded.encode(), bytes);
    prop_assert_eq!(render_refund(&decoded), render_refund(state));
    Ok(())
}

/// What a store would keep and serve for each refund.
fn observe(states: &States) -> BTreeMap<Key, (RefundState, Vec<u8>, String)> {
    states.iter().map(|(k, s)| (k.clone(), (s.clone(), s.encode(), render_refund(s)))).collect()
}

// ---------------------------------------------------------------------------
// The reference implementation, from the text of contract section 2

fn reference(specs: &[Spec]) -> BTreeMap<Key, Value> {
    let mut by_refund: BTreeMap<Key, Vec<&Spec>> = BTreeMap::new();
    for spec in specs {
        by_refund.entry(spec.key()).or_default().push(spec);
    }
    by_refund
        .into_iter()
        .map(|(key, events)| {
            let rendered = reference_refund(&key, &events);
            (key, rendered)
        })
        .collect()
}

fn reference_refund((tenant, id): &Key, events: &[&Spec]) -> Value {
    // status: the type of the event with the greatest (rank, occurred_at, event_id).
    let winner = events.iter().max_by(|a, b| (RANKS[a.kind], a.version()).cmp(&(RANKS[b.kind], b.version()))).unwrap();
    let status = TYPES[winner.kind].strip_prefix("refund.").unwrap();
    // created_at: smallest occurred_at among queued events, else among all.
    let queued_min = events.iter().filter(|e| e.kind == 0).map(|e| e.ms).min();
    let all_min = events.iter().map(|e| e.ms).min().unwrap();
    let created_at = queued_min.unwrap_or(all_min);
    // updated_at: the greatest occurred_at.
    let updated_at = events.iter().map(|e| e.ms).max().unwrap();
    let terminal_at = |name: &str| {
        if status == name { render_time(winner.ms) } else { Value::Null }
    };
    // Every other field: the value of the event with the greatest
    // (occurred_at, event_id) among those carrying a non-null value.
    let latest = |get: &dyn Fn(&Spec) -> Option<Value>| -> Option<Value> {
        events.iter().filter_map(|e| get(e).map(|v| (e.version(), v))).max_by(|a, b| a.0.cmp(&b.0)).map(|(_, v)| v)
    };
    let mut object = Map::new();
    object.insert("object".into(), json!("refund"));
    object.insert("id".into(), json!(id));
    object.insert("tenant_id".into(), json!(tenant));
    object.insert("status".into(), json!(status));
    object.insert("amount".into(), latest(&|e| e.amount.value().map(|v| json!(v))).unwrap_or(Value::Null));
    object.insert(
        "currency".into(),
        latest(&|e| e.currency.value().map(|v| json!(v.to_ascii_uppercase()))).unwrap_or(Value::Null),
    );
    object.insert(
        "original_amount".into(),
        latest(&|e| e.original_amount.value().map(|v| json!(v))).unwrap_or(Value::Null),
    );
    for (i, name) in TEXT_FIELDS.iter().enumerate() {
        let value = latest(&|e| {
            e.text[i].value().map(|v| if *name == "processor" { json!(v.to_lowercase()) } else { json!(v) })
        });
        object.insert((*name).into(), value.unwrap_or(Value::Null));
    }
    object.insert("initiated_by".into(), latest(&|e| e.initiated_by.value().cloned()).unwrap_or_else(|| json!({})));
    object.insert("metadata".into(), latest(&|e| e.metadata.value().cloned()).unwrap_or(Value::Null));
    object.insert("created_at".into(), render_time(created_at));
    object.insert("updated_at".into(), render_time(updated_at));
    object.insert("completed_at".into(), terminal_at("completed"));
    object.insert("failed_at".into(), terminal_at("failed"));
    object.insert("cancelled_at".into(), terminal_at("cancelled"));
    object.insert("event_count".into(), json!(events.len()));
    Value::Object(object)
}

/// The contract's refund object keys, section 3.
const REFUND_KEYS: [&str; 25] = [
    "object",
    "id",
    "tenant_id",
    "status",
    "amount",
    "currency",
    "original_amount",
    "order_no",
    "transaction_id",
    "external_refund_id",
    "processor",
    "payment_method_type",
    "product_type",
    "store_id",
    "reference_id",
    "reason",
    "failure_reason",
    "initiated_by",
    "metadata",
    "created_at",
    "updated_at",
    "completed_at",
    "failed_at",
    "cancelled_at",
    "event_count",
];

// ---------------------------------------------------------------------------
// Properties

/// XorShift rather than the default ChaCha: unoptimized ChaCha alone would
/// take most of the run time in a debug build.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, rng_algorithm: RngAlgorithm::XorShift, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(384))]

    /// (a) Any permutation of the set: equal state, bytes and rendering.
    #[test]
    fn any_permutation_gives_the_same_state_bytes_and_rendering(
        (specs, order) in event_set_and_permutation()
    ) {
        let events: Vec<RefundEvent> = specs.iter().map(Spec::validated).collect();
        let in_order = observe(&fold_all(&events)?);
        let permuted = observe(&fold_all(order.iter().map(|&i| &events[i]))?);
        prop_assert_eq!(&permuted, &in_order);
        let reversed = observe(&fold_all(events.iter().rev())?);
        prop_assert_eq!(&reversed, &in_order);
    }

    /// (b) Chunk by chunk, with each state persisted (encode) and reloaded
    /// (decode) between chunks, in a permuted order: the same as one fold.
    #[test]
    fn folding_chunk_by_chunk_through_the_codec_gives_the_same_result(
        (specs, order) in event_set_and_permutation(),
        chunk_sizes in prop::collection::vec(1usize..5, 1..16),
    ) {
        let events: Vec<RefundEvent> = specs.iter().map(Spec::validated).collect();
        let expected = observe(&fold_all(&events)?);

        let permuted: Vec<&RefundEvent> = order.iter().map(|&i| &events[i]).collect();
        let mut stored: BTreeMap<Key, Vec<u8>> = BTreeMap::new();
        let mut in_memory = States::new();
        let mut rest = &permuted[..];
        let mut sizes = chunk_sizes.iter().cycle();
        while !rest.is_empty() {
            let size = (*sizes.next().unwrap()).min(rest.len());
            let (chunk, tail) = rest.split_at(size);
            rest = tail;
            // In memory: fold the chunk, then continue from where it left off.
            fold(&mut in_memory, chunk.iter().copied())?;
            // Through the store: load the touched refunds, fold, write back.
            let mut loaded = States::new();
            for event in chunk {
                let key = key_of(event);
                if let Some(bytes) = stored.get(&key) {
                    let state = RefundState::decode(bytes)
                        .map_err(|err| TestCaseError::fail(err.to_string()))?;
                    loaded.insert(key, state);
                }
            }
            fold(&mut loaded, chunk.iter().copied())?;
            for (key, state) in &loaded {
                stored.insert(key.clone(), state.encode());
            }
        }
        prop_assert_eq!(&observe(&in_memory), &expected);
        let reloaded: States = stored
            .iter()
            .map(|(k, bytes)| (k.clone(), RefundState::decode(bytes).unwrap()))
            .collect();
        prop_assert_eq!(&observe(&reloaded), &expected);
    }

    /// (e) `merge_all`, as the store applies a batch (the refund's prior
    /// state, then all its events of the batch at once), equals folding the
    /// same events one by one.
    #[test]
    fn merging_a_chunk_at_once_equals_folding_it_event_by_event(
        (specs, order) in event_set_and_permutation(),
        split in any::<prop::sample::Index>(),
    ) {
        let events: Vec<RefundEvent> = specs.iter().map(Spec::validated).collect();
        let permuted: Vec<&RefundEvent> = order.iter().map(|&i| &events[i]).collect();
        let (before, chunk) = permuted.split_at(split.index(permuted.len() + 1));
        let mut expected = fold_all(before.iter().copied())?;
        let mut prior = expected.clone();
        fold(&mut expected, chunk.iter().copied())?;
        let mut by_refund: BTreeMap<Key, Vec<&RefundEvent>> = BTreeMap::new();
        for event in chunk {
            by_refund.entry(key_of(event)).or_default().push(event);
        }
        for (key, mut events) in by_refund {
            let merged = merge_all(prior.remove(&key), &mut events).expect("the chunk has events for it");
            prior.insert(key, merged);
        }
        prop_assert_eq!(observe(&prior), observe(&expected));
    }

    /// (c) The codec round-trips every state, and encoding is canonical.
    #[test]
    fn decode_of_encode_is_the_identity_and_re_encoding_gives_the_same_bytes(
        specs in event_set()
    ) {
        let events: Vec<RefundEvent> = specs.iter().map(Spec::validated).collect();
        // `fold` checks every intermediate state; check the final ones again
        // explicitly, and that a truncated row never decodes silently.
        for state in fold_all(&events)?.values() {
            let bytes = state.encode();
            let decoded = RefundState::decode(&bytes).unwrap();
            prop_assert_eq!(&decoded, state);
            prop_assert_eq!(decoded.encode(), bytes.clone());
            prop_assert!(RefundState::decode(&bytes[..bytes.len() - 1]).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(RefundState::decode(&longer).is_err());
        }
    }

    /// (d) The rendering equals the reference implementation of section 2.
    #[test]
    fn the_state_matches_the_reference_implementation_of_the_contract(
        (specs, order) in event_set_and_permutation()
    ) {
        let events: Vec<RefundEvent> = specs.iter().map(Spec::validated).collect();
        let states = fold_all(order.iter().map(|&i| &events[i]))?;
        let expected = reference(&specs);
        prop_assert_eq!(
            states.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
        for (key, state) in &states {
            let rendered = render_refund(state);
            let actual: Value = serde_json::from_str(&rendered)
                .map_err(|err| TestCaseError::fail(format!("{err}: {rendered}")))?;
            let keys: Vec<&str> = actual.as_object().unwrap().keys().map(String::as_str).collect();
            prop_assert_eq!(&keys[..], &REFUND_KEYS[..]);
            prop_assert_eq!(&actual, &expected[key], "refund {:?}", key);
        }
    }
}

// ---------------------------------------------------------------------------
// The generator produces the shapes the properties are about

#[test]
fn the_generator_covers_the_interesting_shapes() {
    let mut runner = TestRunner::new_with_rng(config(1), TestRng::deterministic_rng(RngAlgorithm::XorShift));
    let strategy = event_set();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for _ in 0..500 {
        let specs = strategy.new_tree(&mut runner).unwrap().current();
        let mut by_refund: BTreeMap<Key, Vec<&Spec>> = BTreeMap::new();
        for spec in &specs {
            by_refund.entry(spec.key()).or_default().push(spec);
        }
        for events in by_refund.values() {
            let queued: Vec<i64> = events.iter().filter(|e| e.kind == 0).map(|e| e.ms).collect();
            let others_min = events.iter().filter(|e| e.kind != 0).map(|e| e.ms).min();
            if queued.is_empty() {
                seen.insert("no queued event");
            }
            if queued.iter().min().zip(others_min).is_some_and(|(q, o)| *q > o) {
                seen.insert("queued later than another event");
            }
            if events.iter().filter(|e| RANKS[e.kind] == 2).count() >= 2 {
                seen.insert("several terminal events");
            }
            let mut times: Vec<i64> = events.iter().map(|e| e.ms).collect();
            times.sort_unstable();
            if times.windows(2).any(|w| w[0] == w[1]) {
                seen.insert("equal occurred_at");
            }
            if events.iter().any(|e| RANKS[e.kind] < 2 && events.iter().any(|t| RANKS[t.kind] == 2 && t.ms < e.ms)) {
                seen.insert("non-terminal event after a terminal one");
            }
            if events.iter().any(|e| e.metadata.value().is_some_and(|m| m.as_object().unwrap().is_empty())) {
                seen.insert("metadata {}");
            }
            if events.len() >= 4 {
                seen.insert("four or more events");
            }
            for (i, name) in TYPES.iter().enumerate() {
                if events.iter().any(|e| e.kind == i) {
                    seen.insert(name);
                }
            }
        }
        if specs.iter().any(|a| specs.iter().any(|b| a.refund != b.refund && a.event_id == b.event_id)) {
            seen.insert("one event_id in two refunds");
        }
    }
    for shape in [
        "no queued event",
        "queued later than another event",
        "several terminal events",
        "equal occurred_at",
        "non-terminal event after a terminal one",
        "metadata {}",
        "four or more events",
        "one event_id in two refunds",
        "refund.queued",
        "refund.processing",
        "refund.completed",
        "refund.failed",
        "refund.cancelled",
    ] {
        assert!(seen.contains(shape), "never generated: {shape}");
    }
}

#[test]
fn every_time_style_names_the_same_instant() {
    for style in 0..5 {
        for step in 0..STEPS {
            let ms = BASE_MS + STEP_MS * step;
            let text = occurred_at_text(ms, style);
            let parsed = refunds_domain::Timestamp::parse_rfc3339(&text).unwrap();
            assert_eq!(parsed.millis(), ms, "{text}");
        }
    }
}
