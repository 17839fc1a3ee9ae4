//! The store against real redb files in a temp dir.

use std::sync::Arc;

use proptest::prelude::*;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use refunds_domain::{Timestamp, validate};
use refunds_store::keys::{CountDim, Index, count_key};
use refunds_store::{
    Batch, CheckpointDelta, Durability, Item, ItemKind, Outcome, PackedPayload, SourcePos, Store, StoreError,
    StoreParams, tables,
};
use serde_json::json;

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store.redb"), &StoreParams { cache_bytes: 16 << 20 }).unwrap();
    (dir, store)
}

fn event(tenant: &str, refund: &str, event_id: &str, kind: &str, at: &str, extra: serde_json::Value) -> String {
    let mut refund_obj = json!({"id": refund, "tenant_id": tenant});
    if kind == "refund.queued" {
        refund_obj["amount"] = json!(1000);
        refund_obj["currency"] = json!("usd");
    }
    for (k, v) in extra.as_object().unwrap() {
        refund_obj[k] = v.clone();
    }
    json!({"event_id": event_id, "type": kind, "occurred_at": at, "refund": refund_obj}).to_string()
}

fn item(line: u64, raw: &str) -> Item {
    let kind = match validate(raw.as_bytes()) {
        Ok(e) => ItemKind::Valid(Box::new(e)),
        Err(e) => ItemKind::Invalid(e),
    };
    Item {
        source: SourcePos::File { path: Arc::from("events.ndjson"), line },
        received_at: Timestamp::from_millis(1_000).unwrap(),
        raw: raw.as_bytes().to_vec(),
        // Both ways a payload reaches the audit log: packed by the source, or
        // left to the store.
        packed: line.is_multiple_of(2).then(|| PackedPayload::pack(raw.as_bytes())),
        key: None,
        kind,
    }
}

fn batch(lines: &[String]) -> Batch {
    Batch { items: lines.iter().enumerate().map(|(i, l)| item(i as u64 + 1, l)).collect(), checkpoints: vec![] }
}

fn export(store: &Store) -> String {
    let mut out = Vec::new();
    store.export(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// Every index entry (with the row's home as its value), every home and
/// every counter, recomputed from the rows, must equal what the incremental
/// writes left behind.
fn assert_indexes_match_rows(store: &Store) {
    let txn = store.database().begin_read().unwrap();
    let refunds = txn.open_table(tables::REFUNDS).unwrap();
    let mut expected_index: Vec<(usize, (Vec<u8>, u32))> = Vec::new();
    let mut expected_homes: Vec<(Vec<u8>, u32)> = Vec::new();
    let mut expected_counts: std::collections::BTreeMap<Vec<u8>, u64> = Default::default();
    for row in refunds.iter().unwrap() {
        let (key, value) = row.unwrap();
        let key = key.value();
        let tenant = refunds_store::TenantNo(u32::from_be_bytes(key[..4].try_into().unwrap()));
        let home = u32::from_be_bytes(key[4..8].try_into().unwrap());
        let state = refunds_store::decode_row_state(value.value()).unwrap();
        assert_eq!(key, refunds_store::keys::row_key(tenant, home, &state.id));
        expected_homes.push((refunds_store::keys::refund_key(tenant, &state.id), home));
        for (i, index) in Index::ALL.iter().enumerate() {
            if let Some(k) = index.key_of(tenant, &state) {
                expected_index.push((i, (k, home)));
            }
        }
        for dim in CountDim::ALL {
            if let Some(v) = dim.value_of(&state) {
                *expected_counts.entry(count_key(tenant, dim, &v)).or_default() += 1;
            }
        }
        let mut rows = Vec::new();
        refunds_store::histogram::created_rows(tenant, &state, &mut rows);
        refunds_store::histogram::amount_rows(tenant, &state, &mut rows);
        for key in rows {
            *expected_counts.entry(key.as_slice().to_vec()).or_default() += 1;
        }
    }
    for (i, index) in Index::ALL.iter().enumerate() {
        // A windowed index in both its tiers, each key in one of them.
        let mut actual: Vec<(Vec<u8>, u32)> = Vec::new();
        for tier in std::iter::once(index.table().unwrap()).chain(index.recent_table()) {
            let table = txn.open_table(tier).unwrap();
            actual.extend(table.iter().unwrap().map(|r| r.unwrap()).map(|(k, v)| (k.value().to_vec(), v.value())));
        }
        actual.sort();
        let mut expected: Vec<(Vec<u8>, u32)> =
            expected_index.iter().filter(|(j, _)| *j == i).map(|(_, k)| k.clone()).collect();
        expected.sort();
        assert_eq!(actual, expected, "index {index:?} disagrees with the rows");
    }
    // Both tiers of the homes, each key in one of them.
    let mut actual_homes: Vec<(Vec<u8>, u32)> = Vec::new();
    for tier in [tables::REFUND_HOMES, tables::REFUND_HOMES_RECENT] {
        let homes = txn.open_table(tier).unwrap();
        actual_homes.extend(homes.iter().unwrap().map(|r| r.unwrap()).map(|(k, v)| (k.value().to_vec(), v.value())));
    }
    actual_homes.sort();
    expected_homes.sort();
    assert_eq!(actual_homes, expected_homes, "refund_homes disagrees with the rows");
    let counts = txn.open_table(tables::COUNTS).unwrap();
    let actual: std::collections::BTreeMap<Vec<u8>, u64> =
        counts.iter().unwrap().map(|r| r.unwrap()).map(|(k, v)| (k.value().to_vec(), v.value())).collect();
    assert_eq!(actual, expected_counts, "counters disagree with the rows");
}

#[test]
fn a_repeated_event_is_a_duplicate_and_changes_nothing() {
    let (_dir, store) = open();
    let queued = event("org_1", "ref_1", "evt_1", "refund.queued", "2026-01-01T00:00:00Z", json!({}));
    // Same JSON, other key order and spacing.
    let reordered: serde_json::Value = serde_json::from_str(&queued).unwrap();
    let reordered = format!(
        "{{ \"refund\": {}, \"occurred_at\": \"2026-01-01T00:00:00Z\", \"type\": \"refund.queued\", \"event_id\": \"evt_1\" }}",
        reordered["refund"]
    );
    let first = store.apply_batch(&batch(std::slice::from_ref(&queued)), Durability::None).unwrap();
    assert_eq!(first.applied, 1);
    let before = export(&store);
    let second = store.apply_batch(&batch(&[queued, reordered]), Durability::None).unwrap();
    assert_eq!((second.applied, second.duplicate), (0, 2));
    assert_eq!(export(&store), before);
    let stats = store.stats().unwrap();
    assert_eq!((stats.events_applied, stats.events_duplicate, stats.refunds), (1, 2, 1));
}

/// A first sighting repeated inside its own batch: the first copy claims
/// the identity, the second finds that claim, and the claim is in the store
/// for the next batch.
#[test]
fn an_event_repeated_within_its_first_batch_is_applied_once() {
    let (_dir, store) = open();
    let queued = event("org_1", "ref_1", "evt_1", "refund.queued", "2026-01-01T00:00:00Z", json!({}));
    let other = event("org_1", "ref_2", "evt_2", "refund.queued", "2026-01-01T00:00:01Z", json!({}));
    let first = store.apply_batch(&batch(&[queued.clone(), other, queued.clone()]), Durability::None).unwrap();
    assert_eq!((first.applied, first.duplicate), (2, 1));
    let second = store.apply_batch(&batch(std::slice::from_ref(&queued)), Durability::None).unwrap();
    assert_eq!((second.applied, second.duplicate), (0, 1));
    let stats = store.stats().unwrap();
    assert_eq!((stats.events_applied, stats.events_duplicate, stats.refunds), (2, 2, 2));
    assert_indexes_match_rows(&store);
}

#[test]
fn a_repeated_event_id_with_other_content_is_a_conflicting_duplicate_in_the_audit_trail() {
    let (_dir, store) = open();
    let a = event("org_1", "ref_1", "evt_1", "refund.queued", "2026-01-01T00:00:00Z", json!({"order_no": "A"}));
    let b = event("org_1", "ref_1", "evt_1", "refund.queued", "2026-01-01T00:00:00Z", json!({"order_no": "B"}));
    let summary = store.apply_batch(&batch(&[a, b]), Durability::None).unwrap();
    assert_eq!((summary.applied, summary.conflicting_duplicate), (1, 1));
    let refund = store.get_refund("org_1", "ref_1").unwrap().unwrap();
    assert_eq!(refund.text(refunds_domain::TextField::OrderNo), Some("A"), "the first applied wins");
    let trail = store.audit_trail("org_1", "ref_1").unwrap();
    let outcomes: Vec<Outcome> = trail.iter().map(|e| e.outcome).collect();
    assert_eq!(outcomes, [Outcome::Applied, Outcome::ConflictingDuplicate]);
    assert_eq!(trail[1].payload["refund"]["order_no"], "B");
    assert_eq!(trail[0].source, SourcePos::File { path: Arc::from("events.ndjson"), line: 1 });
}

#[test]
fn a_conflicting_repeat_naming_an_unknown_refund_creates_no_refund() {
    let (_dir, store) = open();
    let at = "2026-01-01T00:00:00Z";
    let applied = event("org_1", "ref_1", "evt_1", "refund.queued", at, json!({}));
    // The same event id naming other refunds: conflicting duplicates, in the
    // applied event's batch and in a later one.
    let same_batch = event("org_1", "ref_2", "evt_1", "refund.queued", at, json!({}));
    let later = event("org_1", "ref_3", "evt_1", "refund.queued", at, json!({}));
    let first = store.apply_batch(&batch(&[applied, same_batch]), Durability::None).unwrap();
    assert_eq!((first.applied, first.conflicting_duplicate), (1, 1));
    let second = store.apply_batch(&batch(&[later]), Durability::None).unwrap();
    assert_eq!(second.conflicting_duplicate, 1);
    assert_indexes_match_rows(&store);
    assert!(store.get_refund("org_1", "ref_2").unwrap().is_none());
    assert_eq!(store.stats().unwrap().refunds, 1);
    // Its own first event still creates it.
    let own = event("org_1", "ref_2", "evt_2", "refund.queued", at, json!({}));
    assert_eq!(store.apply_batch(&batch(&[own]), Durability::None).unwrap().applied, 1);
    assert!(store.get_refund("org_1", "ref_2").unwrap().is_some());
    assert_indexes_match_rows(&store);
}

/// Contract section 2, Identity: a conflicting repeat is listed with the
/// refund its event id was first applied to, whatever refund it names: one
/// unknown (in the applied event's batch or a later one), one created in the
/// same batch, or one that already exists.
#[test]
fn a_conflicting_repeat_is_in_the_trail_of_the_refund_its_event_id_was_first_applied_to() {
    let (_dir, store) = open();
    let at = "2026-01-01T00:00:00Z";
    let applied = event("org_1", "ref_1", "evt_1", "refund.queued", at, json!({}));
    let other = event("org_1", "ref_4", "evt_4", "refund.queued", at, json!({}));
    let unknown_same_batch = event("org_1", "ref_2", "evt_1", "refund.queued", at, json!({}));
    store.apply_batch(&batch(&[applied.clone(), other.clone(), unknown_same_batch]), Durability::None).unwrap();
    // Later batches that do not name ref_1 at all.
    let unknown_later = event("org_1", "ref_3", "evt_1", "refund.queued", at, json!({}));
    let existing = event("org_1", "ref_4", "evt_1", "refund.queued", at, json!({}));
    store.apply_batch(&batch(&[unknown_later, existing]), Durability::None).unwrap();
    let created_alongside = event("org_1", "ref_5", "evt_5", "refund.queued", at, json!({}));
    let names_it = event("org_1", "ref_5", "evt_1", "refund.processing", at, json!({}));
    let summary = store.apply_batch(&batch(&[created_alongside, names_it]), Durability::None).unwrap();
    assert_eq!((summary.applied, summary.conflicting_duplicate), (1, 1));

    let trail = store.audit_trail("org_1", "ref_1").unwrap();
    let outcomes: Vec<(&str, Outcome)> = trail.iter().map(|e| (e.event_id.as_str(), e.outcome)).collect();
    assert_eq!(
        outcomes,
        [
            ("evt_1", Outcome::Applied),
            ("evt_1", Outcome::ConflictingDuplicate),
            ("evt_1", Outcome::ConflictingDuplicate),
            ("evt_1", Outcome::ConflictingDuplicate),
            ("evt_1", Outcome::ConflictingDuplicate),
        ],
        "ref_1 lists its event and every conflicting repeat of it"
    );
    let named: Vec<&str> = trail.iter().map(|e| e.payload["refund"]["id"].as_str().unwrap()).collect();
    assert_eq!(named, ["ref_1", "ref_2", "ref_3", "ref_4", "ref_5"], "each entry keeps the payload as received");
    for (refund, own) in [("ref_4", "evt_4"), ("ref_5", "evt_5")] {
        let trail = store.audit_trail("org_1", refund).unwrap();
        let ids: Vec<(&str, Outcome)> = trail.iter().map(|e| (e.event_id.as_str(), e.outcome)).collect();
        assert_eq!(ids, [(own, Outcome::Applied)], "{refund} lists only its own event");
    }
    for refund in ["ref_2", "ref_3"] {
        assert!(store.get_refund("org_1", refund).unwrap().is_none(), "{refund} was never created");
        assert!(store.audit_trail("org_1", refund).unwrap().is_empty(), "{refund} has no trail");
    }
    assert_eq!(store.get_refund("org_1", "ref_1").unwrap().unwrap().event_count, 1, "the repeats changed nothing");
    assert_eq!(store.stats().unwrap().events_conflicting_duplicate, 4);
    assert_indexes_match_rows(&store);
}

#[test]
fn tenants_never_shadow_each_other_with_equal_event_ids() {
    let (_dir, store) = open();
    let a = event("org_a", "ref_1", "evt_1", "refund.queued", "2026-01-01T00:00:00Z", json!({}));
    let b = event("org_b", "ref_1", "evt_1", "refund.queued", "2026-01-01T00:00:00Z", json!({}));
    let summary = store.apply_batch(&batch(&[a, b]), Durability::None).unwrap();
    assert_eq!(summary.applied, 2);
    assert!(store.get_refund("org_a", "ref_1").unwrap().is_some());
    assert!(store.get_refund("org_b", "ref_1").unwrap().is_some());
    assert_eq!(store.tenants().len(), 2);
}

#[test]
fn audit_trail_is_ordered_by_occurred_at_then_event_id_then_arrival() {
    let (_dir, store) = open();
    let lines = [
        event("org_1", "ref_1", "evt_c", "refund.completed", "2026-01-01T00:00:02Z", json!({})),
        event("org_1", "ref_1", "evt_b", "refund.processing", "2026-01-01T00:00:01Z", json!({})),
        event("org_1", "ref_1", "evt_a", "refund.queued", "2026-01-01T00:00:01Z", json!({})),
        event("org_1", "ref_1", "evt_a", "refund.queued", "2026-01-01T00:00:01Z", json!({})),
    ];
    store.apply_batch(&batch(&lines), Durability::None).unwrap();
    let trail = store.audit_trail("org_1", "ref_1").unwrap();
    let ids: Vec<(&str, Outcome)> = trail.iter().map(|e| (e.event_id.as_str(), e.outcome)).collect();
    assert_eq!(
        ids,
        [
            ("evt_a", Outcome::Applied),
            ("evt_a", Outcome::Duplicate),
            ("evt_b", Outcome::Applied),
            ("evt_c", Outcome::Applied)
        ]
    );
    assert_eq!(trail[3].event_type, "refund.completed");
}

#[test]
fn invalid_items_land_in_the_dead_letter_outbox_until_marked_sent() {
    let (_dir, store) = open();
    let summary = store.apply_batch(&batch(&["{not json".to_owned()]), Durability::None).unwrap();
    assert_eq!(summary.invalid, 1);
    let pending = store.pending_dead_letters(10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].document["reason"], "malformed_json");
    assert_eq!(pending[0].document["raw"], "{not json");
    assert_eq!(pending[0].document["source"]["line"], 1);
    store.mark_dead_letters_sent(&[pending[0].sequence]).unwrap();
    assert!(store.pending_dead_letters(10).unwrap().is_empty());
    assert_eq!(store.stats().unwrap().events_invalid, 1);
}

#[test]
fn the_outbox_pages_by_sequence_so_one_destination_passes_anothers_letters() {
    let (_dir, store) = open();
    let lines: Vec<String> = (0..5).map(|i| format!("{{not json {i}")).collect();
    store.apply_batch(&batch(&lines), Durability::None).unwrap();
    let all = store.pending_dead_letters(10).unwrap();
    assert_eq!(all.len(), 5);
    let after_two = store.pending_dead_letters_after(all[1].sequence, 10).unwrap();
    let seqs: Vec<u64> = after_two.iter().map(|l| l.sequence).collect();
    assert_eq!(seqs, all[2..].iter().map(|l| l.sequence).collect::<Vec<_>>());
    assert_eq!(store.pending_dead_letters_after(all[1].sequence, 1).unwrap().len(), 1);
    store.mark_dead_letters_sent(&[all[2].sequence]).unwrap();
    let left: Vec<u64> =
        store.pending_dead_letters_after(all[1].sequence, 10).unwrap().iter().map(|l| l.sequence).collect();
    assert_eq!(left, [all[3].sequence, all[4].sequence]);
}

#[test]
fn a_batch_overlapping_the_checkpoint_is_refused_and_changes_nothing() {
    let (_dir, store) = open();
    let delta = |from, to| CheckpointDelta { source: "file:x".into(), from, to, state: vec![], restart: false };
    let mut first = batch(&[event("org_1", "ref_1", "evt_1", "refund.queued", "2026-01-01T00:00:00Z", json!({}))]);
    first.checkpoints = vec![delta(0, 1)];
    store.apply_batch(&first, Durability::Immediate).unwrap();
    assert_eq!(store.checkpoint("file:x").unwrap().unwrap().position, 1);
    let mut again = batch(&[event("org_1", "ref_2", "evt_2", "refund.queued", "2026-01-01T00:00:00Z", json!({}))]);
    again.checkpoints = vec![delta(0, 1)];
    let err = store.apply_batch(&again, Durability::Immediate).unwrap_err();
    assert!(matches!(err, StoreError::CheckpointOverlap { from: 0, stored: 1, .. }), "{err}");
    assert!(store.get_refund("org_1", "ref_2").unwrap().is_none(), "nothing of a refused batch is applied");
}

#[test]
fn reopening_the_store_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let before = {
        let store = Store::open(&path, &StoreParams::default()).unwrap();
        let lines = [event("org_1", "ref_1", "evt_1", "refund.queued", "2026-01-01T00:00:00Z", json!({}))];
        store.apply_batch(&batch(&lines), Durability::Immediate).unwrap();
        export(&store)
    };
    let store = Store::open(&path, &StoreParams::default()).unwrap();
    assert_eq!(export(&store), before);
    // Interned names survive: a new event of the same tenant lands in the same tenant.
    let lines = [event("org_1", "ref_2", "evt_2", "refund.queued", "2026-01-01T00:00:01Z", json!({}))];
    store.apply_batch(&batch(&lines), Durability::Immediate).unwrap();
    assert_eq!(store.tenants().len(), 1);
    assert_eq!(export(&store).lines().count(), 2);
}

#[test]
fn a_non_durable_commit_is_synced_in_the_background_and_a_durable_one_needs_no_help() {
    let (_dir, store) = open();
    let lines = [event("org_1", "ref_1", "evt_1", "refund.queued", "2026-01-01T00:00:00Z", json!({}))];
    store.apply_batch(&batch(&lines), Durability::Immediate).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(store.background_syncs(), 0, "a durable commit syncs itself");

    let lines = [event("org_1", "ref_2", "evt_2", "refund.queued", "2026-01-01T00:00:01Z", json!({}))];
    store.apply_batch(&batch(&lines), Durability::None).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.background_syncs() == 0 {
        assert!(std::time::Instant::now() < deadline, "no background sync followed the non-durable commit");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(export(&store).lines().count(), 2);
}

const TYPES: [&str; 5] =
    ["refund.queued", "refund.processing", "refund.completed", "refund.failed", "refund.cancelled"];

fn arb_event() -> impl Strategy<Value = String> {
    (
        0..2usize,
        0..4usize,
        0..12usize,
        0..5usize,
        0..4i64,
        proptest::option::of(1..4u64),
        proptest::option::of(prop_oneof![Just("usd"), Just("EUR")]),
        proptest::option::of(prop_oneof![Just("Stripe"), Just("adyen")]),
        proptest::option::of(prop_oneof![Just(json!({})), Just(json!({"k": 1}))]),
    )
        .prop_map(|(t, r, e, kind, second, amount, currency, processor, metadata)| {
            let mut extra = json!({});
            if let Some(a) = amount {
                extra["amount"] = json!(a * 1000);
            }
            if let Some(c) = currency {
                extra["currency"] = json!(c);
            }
            if let Some(p) = processor {
                extra["processor"] = json!(p);
            }
            if let Some(m) = metadata {
                extra["metadata"] = m;
            }
            // The event id names the whole content, so equal ids are true duplicates.
            let event_id = format!("evt_{t}_{r}_{e}_{kind}_{second}_{extra}");
            event(
                &format!("org_{t}"),
                &format!("ref_{r}"),
                &event_id,
                TYPES[kind],
                &format!("2026-01-01T00:00:0{second}Z"),
                extra,
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any permutation of a stream, with repeats, in any split into batches,
    /// gives the same export, and the indexes and counters always agree with
    /// the rows.
    #[test]
    fn export_depends_only_on_the_set_of_events(
        events in proptest::collection::vec(arb_event(), 1..40),
        seed in any::<u64>(),
        cuts in proptest::collection::vec(1..10usize, 1..8),
    ) {
        let (_dir_a, a) = open();
        for chunk in events.chunks(7) {
            a.apply_batch(&batch(chunk), Durability::None).unwrap();
        }
        let mut shuffled = events.clone();
        shuffled.extend(events.iter().take(5).cloned());
        let mut rng = seed;
        for i in (1..shuffled.len()).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (rng >> 33) as usize % (i + 1));
        }
        let (_dir_b, b) = open();
        let mut rest: &[String] = &shuffled;
        let mut cut = cuts.iter().cycle();
        while !rest.is_empty() {
            let n = (*cut.next().unwrap()).min(rest.len());
            b.apply_batch(&batch(&rest[..n]), Durability::None).unwrap();
            rest = &rest[n..];
        }
        prop_assert_eq!(export(&a), export(&b));
        assert_indexes_match_rows(&a);
        assert_indexes_match_rows(&b);
        let (sa, sb) = (a.stats().unwrap(), b.stats().unwrap());
        prop_assert_eq!(sa.events_applied, sb.events_applied);
        prop_assert_eq!(sa.refunds, sb.refunds);
    }
}

fn arb_filter() -> impl Strategy<Value = refunds_store::Filter> {
    use refunds_domain::{EventType, TextField};
    (
        proptest::collection::vec(
            prop_oneof![Just(EventType::Queued), Just(EventType::Completed), Just(EventType::Failed)],
            0..3,
        ),
        proptest::collection::vec(prop_oneof![Just("USD".to_owned()), Just("EUR".to_owned())], 0..2),
        proptest::collection::vec(prop_oneof![Just("stripe".to_owned()), Just("adyen".to_owned())], 0..2),
        proptest::option::of(0..5i64),
        proptest::option::of(0..5i64),
        proptest::option::of(0..5000u64),
        proptest::option::of(0..5000u64),
        any::<bool>(),
    )
        .prop_map(|(statuses, currencies, processors, cmin, cmax, amin, amax, by_order)| refunds_store::Filter {
            statuses,
            currencies,
            processors,
            created_min: cmin.map(|s| Timestamp::from_millis(1_767_225_600_000 + s * 1000).unwrap()),
            created_max: cmax.map(|s| Timestamp::from_millis(1_767_225_600_000 + s * 1000).unwrap()),
            amount_min: amin,
            amount_max: amax,
            exact: if by_order { vec![(TextField::OrderNo, "ORDER-1".to_owned())] } else { vec![] },
            ..Default::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Counters, index scans and the plain definition always agree.
    #[test]
    fn count_equals_the_number_of_refunds_matching_the_filter(
        events in proptest::collection::vec(arb_event(), 1..60),
        filters in proptest::collection::vec(arb_filter(), 1..12),
        order_no_of in proptest::collection::vec(any::<bool>(), 60),
    ) {
        let (_dir, store) = open();
        // Give some refunds an order number so the exact-match plan is used.
        let events: Vec<String> = events
            .iter()
            .zip(&order_no_of)
            .map(|(e, tag)| {
                let mut v: serde_json::Value = serde_json::from_str(e).unwrap();
                if *tag && v["type"] == "refund.queued" {
                    v["refund"]["order_no"] = json!("ORDER-1");
                    v["event_id"] = json!(format!("{}-o", v["event_id"].as_str().unwrap()));
                }
                v.to_string()
            })
            .collect();
        store.apply_batch(&batch(&events), Durability::None).unwrap();
        let tenants: Vec<_> = store.tenants().into_iter().map(|(_, t)| t).collect();
        let rendered: Vec<serde_json::Value> = export(&store).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        for filter in &filters {
            // The definition, on the rendered refunds, independent of `Filter::matches`.
            let ms = |t: Option<Timestamp>| t.map(|t| t.to_string());
            let expected = rendered
                .iter()
                .filter(|r| {
                    let one_of = |values: &[String], key: &str| values.is_empty() || values.iter().any(|v| r[key] == v.as_str());
                    let statuses: Vec<String> = filter.statuses.iter().map(|s| s.status_name().to_owned()).collect();
                    let created = r["created_at"].as_str().unwrap().to_owned();
                    let amount = r["amount"].as_u64();
                    one_of(&statuses, "status")
                        && one_of(&filter.currencies, "currency")
                        && one_of(&filter.processors, "processor")
                        && filter.exact.iter().all(|(f, v)| r[f.name()] == v.as_str())
                        && ms(filter.created_min).is_none_or(|min| created >= min)
                        && ms(filter.created_max).is_none_or(|max| created <= max)
                        && (filter.amount_min.is_none() && filter.amount_max.is_none()
                            || amount.is_some_and(|a| filter.amount_min.is_none_or(|m| a >= m) && filter.amount_max.is_none_or(|m| a <= m)))
                })
                .count() as u64;
            prop_assert_eq!(store.count(&tenants, filter).unwrap(), expected, "{:?}", filter);
        }
    }
}

#[test]
fn exact_match_counts_span_every_created_window_and_respect_bounds() {
    use refunds_domain::TextField;
    let (_dir, store) = open();
    let day = 86_400_000i64;
    let start = 1_767_225_600_000i64; // 2026-01-01
    let at = |k: i64| Timestamp::from_millis(start + k * 40 * day).unwrap();
    // Windows are about 3.1 days: refunds 40 days apart fall in several of them,
    // and other tenants' refunds sit between them in the key space.
    let lines: Vec<String> = (0..8)
        .flat_map(|k| {
            let order = if k % 2 == 0 { "ORDER-1" } else { "ORDER-2" };
            ["org_a", "org_b"].map(|t| {
                event(
                    t,
                    &format!("ref_{k}"),
                    &format!("evt_{t}_{k}"),
                    "refund.queued",
                    &at(k).to_string(),
                    json!({"order_no": order, "store_id": "s1", "amount": 100 * (k + 1)}),
                )
            })
        })
        .collect();
    store.apply_batch(&batch(&lines), Durability::None).unwrap();
    let tenant_a: Vec<_> = store.tenants().into_iter().filter(|(t, _)| t == "org_a").map(|(_, n)| n).collect();
    let count = |field: TextField, value: &str, min: Option<i64>, max: Option<i64>| {
        let filter = refunds_store::Filter {
            exact: vec![(field, value.to_owned())],
            created_min: min.map(at),
            created_max: max.map(at),
            ..Default::default()
        };
        store.count(&tenant_a, &filter).unwrap()
    };
    assert_eq!(count(TextField::OrderNo, "ORDER-1", None, None), 4);
    assert_eq!(count(TextField::OrderNo, "ORDER-1", Some(1), None), 3);
    assert_eq!(count(TextField::OrderNo, "ORDER-1", Some(2), Some(4)), 2);
    assert_eq!(count(TextField::OrderNo, "ORDER-2", Some(7), Some(7)), 1);
    assert_eq!(count(TextField::StoreId, "s1", None, None), 8);
    assert_eq!(count(TextField::OrderNo, "ORDER-3", None, None), 0);
    // Amount ranges are counted from the windowed amount index's keys.
    let amounts = |min: u64, max: u64, from: Option<i64>| {
        let filter = refunds_store::Filter {
            amount_min: Some(min),
            amount_max: Some(max),
            created_min: from.map(at),
            ..Default::default()
        };
        store.count(&tenant_a, &filter).unwrap()
    };
    assert_eq!(amounts(300, 600, None), 4);
    assert_eq!(amounts(300, 600, Some(3)), 3);
    assert_eq!(amounts(0, u64::MAX, None), 8);
    assert_eq!(amounts(801, 5000, None), 0);
    assert_indexes_match_rows(&store);
}

/// Two ids whose 64-bit hashes collide stay two events. Real collisions are
/// out of reach, so the test plants one: it points evt_b's identity slot at
/// evt_a's audit entry, as a collision would.
#[test]
fn an_event_id_whose_hash_slot_another_id_holds_is_still_its_own_event() {
    use refunds_store::keys::event_slot;
    let (_dir, store) = open();
    let a = event("org_1", "ref_1", "evt_a", "refund.queued", "2026-01-01T00:00:00Z", json!({}));
    store.apply_batch(&batch(std::slice::from_ref(&a)), Durability::None).unwrap();
    let tenant = store.tenant_no("org_1").unwrap();
    {
        let txn = store.database().begin_write().unwrap();
        {
            // A new slot is in the recent tier (see `the_identity_and_home_tiers_...`).
            let mut slots = txn.open_table(tables::EVENT_IDS_RECENT).unwrap();
            let holder = slots.get(&event_slot(tenant, "evt_a")).unwrap().unwrap().value();
            slots.insert(&event_slot(tenant, "evt_b"), holder).unwrap();
        }
        txn.commit().unwrap();
    }
    let b = event("org_1", "ref_2", "evt_b", "refund.queued", "2026-01-01T00:00:01Z", json!({}));
    let first = store.apply_batch(&batch(std::slice::from_ref(&b)), Durability::None).unwrap();
    assert_eq!(first.applied, 1, "evt_b is not a repeat of evt_a");
    let again = store.apply_batch(&batch(&[b, a]), Durability::None).unwrap();
    assert_eq!((again.applied, again.duplicate), (0, 2), "both ids are still recognized");
    assert!(store.get_refund("org_1", "ref_2").unwrap().is_some());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Walking pages by key, in either direction, over one tenant or all,
    /// returns exactly the matching refunds in (created_at, tenant_id, id)
    /// order, each once; skipping by offset agrees.
    #[test]
    fn page_walks_return_every_match_once_in_sort_order(
        events in proptest::collection::vec(arb_event(), 1..60),
        filter in arb_filter(),
        descending in any::<bool>(),
        one_tenant in any::<bool>(),
        page_size in 1..5usize,
    ) {
        use refunds_store::{Direction, PageRequest, SortKey, page_in};
        let (_dir, store) = open();
        store.apply_batch(&batch(&events), Durability::None).unwrap();
        let mut tenants = store.tenants();
        if one_tenant {
            tenants.truncate(1);
        }
        let direction = if descending { Direction::Descending } else { Direction::Ascending };
        // Expected: every refund in scope matching the filter, sorted by the key.
        let mut expected: Vec<SortKey> = Vec::new();
        for line in export(&store).lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let tenant_id = v["tenant_id"].as_str().unwrap();
            if !tenants.iter().any(|(t, _)| t == tenant_id) {
                continue;
            }
            let state = store.get_refund(tenant_id, v["id"].as_str().unwrap()).unwrap().unwrap();
            if filter.matches(&state) {
                expected.push(SortKey::of(&state));
            }
        }
        expected.sort();
        if descending {
            expected.reverse();
        }
        let txn = store.read().unwrap();
        let mut walked = Vec::new();
        let mut after: Option<SortKey> = None;
        loop {
            let page = page_in(&txn, &PageRequest { tenants: &tenants, filter: &filter, direction, after: after.as_ref(), include_after: false, skip: 0, take: page_size }).unwrap();
            walked.extend(page.iter().map(SortKey::of));
            if page.len() < page_size {
                break;
            }
            after = page.last().map(SortKey::of);
        }
        prop_assert_eq!(&walked, &expected);
        // Including the starting key starts the page on it when it matches.
        for key in &walked {
            let page = page_in(&txn, &PageRequest { tenants: &tenants, filter: &filter, direction, after: Some(key), include_after: true, skip: 0, take: 1 }).unwrap();
            prop_assert_eq!(page.first().map(SortKey::of), Some(key.clone()));
        }
        let skip = expected.len() as u64 / 2;
        let by_offset = page_in(&txn, &PageRequest { tenants: &tenants, filter: &filter, direction, after: None, include_after: false, skip, take: 1000 }).unwrap();
        prop_assert_eq!(by_offset.iter().map(SortKey::of).collect::<Vec<_>>(), expected[skip as usize..].to_vec());
        let tenant_nos: Vec<_> = tenants.iter().map(|(_, n)| *n).collect();
        prop_assert_eq!(refunds_store::count_in(&txn, &tenant_nos, &filter).unwrap(), expected.len() as u64);
    }
}

/// A time near the day boundaries of 100 days from 2026-01-01 (or anywhere
/// in them), so that ranges span whole days and whole 32-day buckets.
fn arb_time() -> impl Strategy<Value = i64> {
    let start = 1_767_225_600_000i64;
    let day = 86_400_000i64;
    (0..100i64, prop_oneof![Just(0i64), Just(1), Just(day - 1), Just(-1), 0..day])
        .prop_map(move |(d, offset)| start + d * day + offset)
}

/// An amount near the histogram's steps (100, 1,000, ...), or any.
fn arb_amount() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop_oneof![Just(1u64), Just(99), Just(100), Just(101), Just(999), Just(1000), Just(1001)],
        prop_oneof![Just(4999u64), Just(5000), Just(5001), Just(99_999), Just(100_000), Just(1_000_000_000_000)],
        1..20_000u64,
    ]
}

fn arb_spread_event() -> impl Strategy<Value = String> {
    (0..2usize, 0..8usize, 0..5usize, arb_time(), proptest::option::of(arb_amount()), 0..4usize).prop_map(
        |(t, r, kind, at, amount, currency)| {
            // A queued event always has one (`event` adds USD); others may not.
            let mut extra = json!({});
            if let Some(currency) = ["usd", "EUR", "gbp"].get(currency) {
                extra["currency"] = json!(currency);
            }
            if let Some(a) = amount {
                extra["amount"] = json!(a);
            }
            let at = Timestamp::from_millis(at).unwrap().to_string();
            event(
                &format!("org_{t}"),
                &format!("ref_{r}"),
                &format!("evt_{t}_{r}_{kind}_{at}_{extra}"),
                TYPES[kind],
                &at,
                extra,
            )
        },
    )
}

fn arb_range_filter() -> impl Strategy<Value = refunds_store::Filter> {
    use refunds_domain::EventType;
    let status = prop_oneof![
        Just(EventType::Queued),
        Just(EventType::Processing),
        Just(EventType::Completed),
        Just(EventType::Failed)
    ];
    (
        proptest::collection::vec(status, 0..3),
        proptest::collection::vec(
            prop_oneof![Just("USD".to_owned()), Just("EUR".to_owned()), Just("JPY".to_owned())],
            0..3,
        ),
        proptest::option::of(arb_time()),
        proptest::option::of(arb_time()),
        proptest::option::of(arb_amount()),
        proptest::option::of(arb_amount()),
        any::<bool>(),
    )
        .prop_map(|(statuses, currencies, cmin, cmax, amin, amax, by_amount)| {
            let t = |ms: Option<i64>| ms.map(|ms| Timestamp::from_millis(ms).unwrap());
            if by_amount {
                // Amount bounds alone: what the amount histogram answers.
                refunds_store::Filter { amount_min: amin, amount_max: amax, ..Default::default() }
            } else {
                refunds_store::Filter {
                    statuses,
                    currencies,
                    created_min: t(cmin),
                    created_max: t(cmax),
                    ..Default::default()
                }
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Created ranges by status and currency, and amount ranges, counted from
    /// the histogram rows and the scans at their ends, equal the refunds that
    /// match, after batches that move refunds between buckets (later statuses,
    /// late queued events that change created_at, amounts that change).
    #[test]
    fn histogram_counts_equal_the_refunds_in_the_range(
        events in proptest::collection::vec(arb_spread_event(), 1..50),
        filters in proptest::collection::vec(arb_range_filter(), 1..16),
    ) {
        let (_dir, store) = open();
        for chunk in events.chunks(9) {
            store.apply_batch(&batch(chunk), Durability::None).unwrap();
        }
        assert_indexes_match_rows(&store);
        let tenants: Vec<_> = store.tenants().into_iter().map(|(_, t)| t).collect();
        let states: Vec<_> = export(&store)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| store.get_refund(v["tenant_id"].as_str().unwrap(), v["id"].as_str().unwrap()).unwrap().unwrap())
            .collect();
        let named = store.tenants();
        let txn = store.read().unwrap();
        for filter in &filters {
            let expected = states.iter().filter(|s| filter.matches(s)).count() as u64;
            prop_assert_eq!(store.count(&tenants, filter).unwrap(), expected, "{:?}", filter);
            // Pages too (amount ranges walk the amount index by window), in
            // both directions, by cursor and by offset.
            use refunds_store::{Direction, PageRequest, SortKey, page_in};
            let mut sorted: Vec<SortKey> = states.iter().filter(|s| filter.matches(s)).map(SortKey::of).collect();
            sorted.sort();
            for direction in [Direction::Ascending, Direction::Descending] {
                if direction == Direction::Descending {
                    sorted.reverse();
                }
                let mut walked: Vec<SortKey> = Vec::new();
                loop {
                    let request = PageRequest { tenants: &named, filter, direction, after: walked.last(), include_after: false, skip: 0, take: 3 };
                    let page = page_in(&txn, &request).unwrap();
                    walked.extend(page.iter().map(SortKey::of));
                    if page.len() < 3 {
                        break;
                    }
                }
                prop_assert_eq!(&walked, &sorted, "{:?} {:?}", filter, direction);
                let skip = sorted.len() / 3;
                let request = PageRequest { tenants: &named, filter, direction, after: None, include_after: false, skip: skip as u64, take: 1000 };
                let by_offset: Vec<SortKey> = page_in(&txn, &request).unwrap().iter().map(SortKey::of).collect();
                prop_assert_eq!(&by_offset[..], &sorted[skip..], "{:?} {:?} offset {}", filter, direction, skip);
            }
        }
    }
}

/// `EVENT_IDS` is declared with `&[u8; 12]` keys (compared as one slice, not
/// byte by byte, and never copied into a `Vec`), which redb gives the type
/// name of `[u8; 12]`: a store whose table was created with `[u8; 12]` keys
/// must open and read unchanged, so that the change needed no new format.
#[test]
fn the_identity_table_opens_under_either_spelling_of_its_key_type() {
    use redb::TableHandle;
    use refunds_store::keys::{TenantNo, event_slot};
    use refunds_store::tables;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slots.redb");
    let slot = event_slot(TenantNo(7), "evt_a");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let as_array: redb::TableDefinition<[u8; 12], u64> = redb::TableDefinition::new(tables::EVENT_IDS.name());
            txn.open_table(as_array).unwrap().insert(slot, 42).unwrap();
        }
        txn.commit().unwrap();
    }
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(tables::EVENT_IDS).unwrap();
    assert_eq!(table.get(&slot).unwrap().map(|v| v.value()), Some(42));
}

/// Identity slots, refund homes and the windowed indexes' keys go to a
/// recent tier that is swept into the main one once it is big enough (65,536
/// keys or more for slots and homes, 16,384 for the indexes). Two stores fed the same 100,000 events in batches of
/// different sizes sweep at different events; across the sweeps, every
/// repeat is still recognised (of an event whose slot was swept and of one
/// whose slot was not), every later event finds its refund's home in either
/// tier, every page and count by a windowed index (order number, store,
/// amount, each with created bounds) equals the refunds that match, in
/// order, and the two stores export the same.
#[test]
fn the_recent_tiers_are_swept_without_losing_a_repeat_a_home_or_an_index_key() {
    use refunds_domain::TextField;
    use refunds_store::{Direction, Filter, PageRequest, SortKey};
    const REFUNDS: usize = 70_000;
    // Created a second apart from 2026-01-01, so that refunds span several
    // amount windows (about 3 days each) and two text windows.
    let created = |r: usize| Timestamp::from_millis(1_767_225_600_000 + r as i64 * 7_000).unwrap();
    let queued = |r: usize| {
        let attributes = json!({
            "order_no": format!("O{}", r % 700),
            "store_id": format!("S{}", r % 3),
            "amount": 1 + (r * 7919) % 100_000,
        });
        event("org_1", &format!("ref_{r}"), &format!("q_{r}"), "refund.queued", &created(r).to_string(), attributes)
    };
    let completed = |r: usize| {
        event("org_1", &format!("ref_{r}"), &format!("c_{r}"), "refund.completed", "2026-03-01T00:00:00Z", json!({}))
    };
    let mut lines: Vec<String> = (0..REFUNDS).map(queued).collect();
    // Later: outcomes of early refunds (homes swept by then) and of the
    // last ones (homes still recent), repeats of both kinds of queued
    // events, and repeats of outcomes of this stretch itself.
    lines.extend((0..10_000).map(completed));
    lines.extend((REFUNDS - 5_000..REFUNDS).map(completed));
    lines.extend((0..5_000).map(queued));
    lines.extend((REFUNDS - 5_000..REFUNDS).map(queued));
    lines.extend((0..5_000).map(completed));
    // And a few new refunds last, whose keys stay in the recent tiers.
    const LATE: usize = 300;
    lines.extend((REFUNDS..REFUNDS + LATE).map(queued));
    assert_eq!(lines.len(), 100_300);
    let feed = |batch_events: usize| {
        let (dir, store) = open();
        let (mut applied, mut duplicate) = (0, 0);
        for chunk in lines.chunks(batch_events) {
            let summary = store.apply_batch(&batch(chunk), Durability::None).unwrap();
            applied += summary.applied;
            duplicate += summary.duplicate;
        }
        assert_eq!((applied, duplicate), (85_300, 15_000), "batches of {batch_events}");
        (dir, store)
    };
    let (_a, by_20k) = feed(20_000);
    let (_b, by_7k) = feed(7_000);
    let filters = [
        Filter { exact: vec![(TextField::OrderNo, "O5".into())], ..Default::default() },
        Filter {
            exact: vec![(TextField::OrderNo, "O699".into())],
            created_min: Some(created(20_000)),
            created_max: Some(created(60_000)),
            ..Default::default()
        },
        Filter {
            exact: vec![(TextField::StoreId, "S1".into())],
            created_min: Some(created(65_000)),
            ..Default::default()
        },
        Filter { amount_min: Some(1_000), amount_max: Some(1_500), ..Default::default() },
        Filter {
            amount_min: Some(99_000),
            created_min: Some(created(30_000)),
            created_max: Some(created(69_000)),
            ..Default::default()
        },
    ];
    for store in [&by_20k, &by_7k] {
        let txn = store.database().begin_read().unwrap();
        let len = |table: redb::TableDefinition<&[u8], u32>| txn.open_table(table).unwrap().len().unwrap();
        let (main, recent) = (len(tables::REFUND_HOMES), len(tables::REFUND_HOMES_RECENT));
        let all = (REFUNDS + LATE) as u64;
        assert!(main >= 16_384 && recent > 0 && main + recent == all, "homes: main {main}, recent {recent}");
        let (main, recent) = (len(tables::BY_ORDER_NO), len(tables::BY_ORDER_NO_RECENT));
        assert!(main >= 16_384 && recent > 0 && main + recent == all, "order_no: main {main}, recent {recent}");
        let slots = |table: redb::TableDefinition<&[u8; 12], u64>| txn.open_table(table).unwrap().len().unwrap();
        let (main, recent) = (slots(tables::EVENT_IDS), slots(tables::EVENT_IDS_RECENT));
        assert!(main >= 65_536 && recent > 0 && main + recent == 85_300, "slots: main {main}, recent {recent}");
        drop(txn);
        assert_indexes_match_rows(store);
        let done = store.get_refund("org_1", "ref_3").unwrap().unwrap();
        assert_eq!(done.status, refunds_domain::EventType::Completed);

        let states: Vec<_> =
            (0..REFUNDS + LATE).map(|r| store.get_refund("org_1", &format!("ref_{r}")).unwrap().unwrap()).collect();
        let tenants = store.tenants();
        let numbers: Vec<_> = tenants.iter().map(|(_, n)| *n).collect();
        for filter in &filters {
            let mut expected: Vec<SortKey> = states.iter().filter(|s| filter.matches(s)).map(SortKey::of).collect();
            expected.sort();
            assert!(!expected.is_empty(), "{filter:?} matches something");
            assert_eq!(store.count(&numbers, filter).unwrap(), expected.len() as u64, "{filter:?}");
            for direction in [Direction::Ascending, Direction::Descending] {
                // Pages of 50, each starting after the last one's end.
                let mut walked: Vec<SortKey> = Vec::new();
                loop {
                    let txn = store.database().begin_read().unwrap();
                    let request = PageRequest {
                        tenants: &tenants,
                        filter,
                        direction,
                        after: walked.last(),
                        include_after: false,
                        skip: 0,
                        take: 50,
                    };
                    let page = refunds_store::page_in(&txn, &request).unwrap();
                    let done = page.len() < 50;
                    walked.extend(page.iter().map(SortKey::of));
                    if done {
                        break;
                    }
                }
                if direction == Direction::Descending {
                    walked.reverse();
                }
                assert_eq!(walked, expected, "{filter:?} {direction:?}");
            }
        }
    }
    assert_eq!(export(&by_20k), export(&by_7k));

    // Reopened, the store's writer loads the filters of the main tiers that
    // the sweeps saved: repeats of swept and of recent events, and outcomes
    // of refunds of both tiers, are still known.
    let path = _b.path().join("store.redb");
    drop(by_7k);
    let store = Store::open(&path, &StoreParams { cache_bytes: 16 << 20 }).unwrap();
    let mut again: Vec<String> = (0..2_000).chain(REFUNDS..REFUNDS + LATE).map(queued).collect();
    again.extend((0..2_000).map(completed));
    let fresh = (0..3).map(|r| completed(20_000 + r));
    let summary =
        store.apply_batch(&batch(&again.iter().cloned().chain(fresh).collect::<Vec<_>>()), Durability::None).unwrap();
    assert_eq!((summary.applied, summary.duplicate), (3, 4_300));
}

/// A store of the format before the tiers (every key in the main tables, no
/// recent ones) opens as the current format, its keys found; a store of any
/// other format is refused.
#[test]
fn a_store_of_the_format_before_the_tiers_is_taken_as_it_is_and_others_are_refused() {
    use refunds_store::OpenError;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let params = StoreParams { cache_bytes: 16 << 20 };
    let queued = event("org_1", "ref_1", "evt_1", "refund.queued", "2026-01-01T00:00:00Z", json!({}));
    let completed = event("org_1", "ref_1", "evt_2", "refund.completed", "2026-01-01T00:01:00Z", json!({}));
    {
        let store = Store::open(&path, &params).unwrap();
        store.apply_batch(&batch(std::slice::from_ref(&queued)), Durability::Immediate).unwrap();
    }
    // As the older format left it: the keys in the main tables, no recent ones.
    let set_format = |format: &str| {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(tables::META).unwrap().insert("format", format.as_bytes()).unwrap();
        txn.commit().unwrap();
    };
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let recent = txn.open_table(tables::REFUND_HOMES_RECENT).unwrap();
            let mut main = txn.open_table(tables::REFUND_HOMES).unwrap();
            for entry in recent.iter().unwrap() {
                let (k, v) = entry.unwrap();
                main.insert(k.value(), v.value()).unwrap();
            }
            let recent = txn.open_table(tables::EVENT_IDS_RECENT).unwrap();
            let mut main = txn.open_table(tables::EVENT_IDS).unwrap();
            for entry in recent.iter().unwrap() {
                let (k, v) = entry.unwrap();
                main.insert(k.value(), v.value()).unwrap();
            }
        }
        txn.delete_table(tables::REFUND_HOMES_RECENT).unwrap();
        txn.delete_table(tables::EVENT_IDS_RECENT).unwrap();
        txn.commit().unwrap();
    }
    set_format("refunds-store/8");
    {
        let store = Store::open(&path, &params).unwrap();
        let again = store.apply_batch(&batch(&[queued.clone(), completed]), Durability::Immediate).unwrap();
        assert_eq!((again.applied, again.duplicate), (1, 1), "the older store's event is known");
        let state = store.get_refund("org_1", "ref_1").unwrap().unwrap();
        assert_eq!(state.status, refunds_domain::EventType::Completed);
        assert_indexes_match_rows(&store);
    }
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let format = txn.open_table(tables::META).unwrap().get("format").unwrap().unwrap().value().to_vec();
        assert_eq!(format, b"refunds-store/9", "the store now says it has the recent tiers");
    }
    for refused in ["refunds-store/7", "refunds-store/10"] {
        set_format(refused);
        match Store::open(&path, &params) {
            Err(OpenError::Format { found, .. }) => assert_eq!(found, refused),
            Err(other) => panic!("{refused}: {other}"),
            Ok(_) => panic!("{refused} was opened"),
        }
    }
}
