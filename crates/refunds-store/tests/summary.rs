//! Summaries against a generated store: every figure equals a brute-force
//! sum over the exported refunds, whatever the filter, grouping and periods.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use refunds_domain::{EventType, TextField, Timestamp};
use refunds_store::{
    Batch, Dim, Durability, Filter, Item, SourcePos, Store, StoreParams, Summary, SummaryRequest, TenantNo, count_in,
    summary_in,
};
use serde_json::{Value, json};

const DAY: i64 = 86_400_000;

struct Generated {
    _dir: tempfile::TempDir,
    store: Store,
    refunds: Vec<Value>,
    order_nos: Vec<String>,
}

/// A store replayed from a generated stream with duplicates and reordering,
/// in batches of uneven sizes, so that refunds change across batches (status
/// moves, fields that become known later, created_at moving earlier).
fn generated() -> &'static Generated {
    static STORE: OnceLock<Generated> = OnceLock::new();
    STORE.get_or_init(|| {
        let params = refunds_generate::GenerateParams {
            refunds: 4000,
            seed: 15,
            dup_rate: 0.1,
            shuffle_window: 400,
            invalid_rate: 0.0,
            // Created times spread over two years (realistic arrival packs
            // a small stream into hours); the shuffle window and the
            // duplicates bring the disorder.
            arrival: refunds_generate::Arrival::Ordered,
        };
        let mut out = Vec::new();
        refunds_generate::generate(&params, &mut out).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), &StoreParams { cache_bytes: 64 << 20 }).unwrap();
        let lines: Vec<&[u8]> = out.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        let sizes = [1usize, 7, 300, 64, 1500, 3];
        let (mut at, mut i) = (0, 0);
        while at < lines.len() {
            let n = sizes[i % sizes.len()].min(lines.len() - at);
            let items = lines[at..at + n]
                .iter()
                .enumerate()
                .map(|(k, l)| {
                    let source = SourcePos::File { path: Arc::from("gen.ndjson"), line: (at + k + 1) as u64 };
                    Item::received(source, Timestamp::from_millis(1_000).unwrap(), l.to_vec(), None)
                })
                .collect();
            store.apply_batch(&Batch { items, checkpoints: vec![] }, Durability::None).unwrap();
            at += n;
            i += 1;
        }
        let mut exported = Vec::new();
        store.export(&mut exported).unwrap();
        let refunds: Vec<Value> =
            String::from_utf8(exported).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let order_nos = refunds.iter().step_by(97).filter_map(|r| r["order_no"].as_str().map(str::to_owned)).collect();
        Generated { _dir: dir, store, refunds, order_nos }
    })
}

/// A period rule for tests: fixed-offset calendars of `width` ms, starting
/// `offset` ms after the UTC epoch's grid (a +05:45 day, an odd LMT-like
/// offset that no kept slot aligns with, UTC hours, 7-day weeks).
#[derive(Debug, Clone, Copy)]
struct Grid {
    offset: i64,
    width: i64,
}

impl Grid {
    fn period_of(self, ms: i64) -> (i64, i64) {
        let start = (ms - self.offset).div_euclid(self.width) * self.width + self.offset;
        (start, start + self.width)
    }
}

fn arb_grid() -> impl Strategy<Value = Option<Grid>> {
    prop_oneof![
        Just(None),
        Just(Some(Grid { offset: 0, width: DAY })),
        Just(Some(Grid { offset: -(5 * 60 + 45) * 60_000, width: DAY })),
        Just(Some(Grid { offset: 19 * 60_000 + 32_000, width: DAY })),
        Just(Some(Grid { offset: 0, width: 3_600_000 })),
        Just(Some(Grid { offset: 4 * DAY, width: 7 * DAY })),
        Just(Some(Grid { offset: 5 * 3_600_000, width: 30 * DAY })),
    ]
}

fn arb_time() -> impl Strategy<Value = i64> {
    // The generated refunds are created over 2024 and 2025; some bounds on a
    // day or quarter-hour edge, some anywhere.
    let start = 1_704_067_200_000i64;
    prop_oneof![
        (0..730i64).prop_map(move |d| start + d * DAY),
        (0..730 * 96i64).prop_map(move |q| start + q * 900_000),
        (0..730 * DAY).prop_map(move |ms| start + ms),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    filter: Filter,
    group_by: Vec<Dim>,
    grid: Option<Grid>,
    one_tenant: Option<usize>,
}

fn arb_case() -> impl Strategy<Value = Case> {
    let some = |values: &'static [&'static str]| {
        proptest::sample::subsequence(values, 0..=2).prop_map(|v| v.into_iter().map(str::to_owned).collect::<Vec<_>>())
    };
    let filters = (
        proptest::sample::subsequence(EventType::ALL.to_vec(), 0..=2),
        some(&["USD", "EUR", "KWD", "XXX"]),
        some(&["stripe", "adyen", "klarna"]),
        some(&["credit_card", "wallet"]),
        some(&["e_commerce", "in_store"]),
        proptest::option::weighted(0.3, arb_time()),
        proptest::option::weighted(0.3, arb_time()),
        proptest::option::weighted(0.15, 0..20_000u64),
        proptest::option::weighted(0.15, 0..20_000u64),
        proptest::option::weighted(0.1, 0..1000usize),
    );
    // Filters mostly on one or two dimensions, as dashboards ask.
    let filter = (filters, proptest::sample::subsequence(vec![0usize, 1, 2, 3, 4], 0..=2)).prop_map(
        |((statuses, currencies, processors, methods, products, cmin, cmax, amin, amax, order), keep)| Filter {
            statuses: if keep.contains(&0) { statuses } else { vec![] },
            currencies: if keep.contains(&1) { currencies } else { vec![] },
            processors: if keep.contains(&2) { processors } else { vec![] },
            payment_method_types: if keep.contains(&3) { methods } else { vec![] },
            product_types: if keep.contains(&4) { products } else { vec![] },
            exact: order
                .map(|i| {
                    let order_nos = &generated().order_nos;
                    vec![(TextField::OrderNo, order_nos[i % order_nos.len()].clone())]
                })
                .unwrap_or_default(),
            created_min: cmin.map(|ms| Timestamp::from_millis(ms).unwrap()),
            created_max: cmax.map(|ms| Timestamp::from_millis(ms).unwrap()),
            amount_min: amin,
            amount_max: amax,
        },
    );
    (
        filter,
        proptest::sample::subsequence(Dim::ALL.to_vec(), 0..=2).prop_shuffle(),
        arb_grid(),
        proptest::option::of(0..40usize),
    )
        .prop_map(|(filter, group_by, grid, one_tenant)| Case { filter, group_by, grid, one_tenant })
}

type Cells = BTreeMap<(Option<i64>, Vec<Option<String>>), (u64, BTreeMap<String, (u64, u128)>)>;

/// The definition, on the exported refunds (independent of the store's
/// filter code and kept rows).
fn brute_force(refunds: &[Value], tenants: &[String], case: &Case) -> (Cells, u64) {
    let f = &case.filter;
    let mut cells = Cells::new();
    let mut count = 0;
    for r in refunds {
        if !tenants.iter().any(|t| r["tenant_id"] == t.as_str()) {
            continue;
        }
        let text = |key: &str| r[key].as_str().map(str::to_owned);
        let one_of = |values: &[String], key: &str| values.is_empty() || values.iter().any(|v| r[key] == v.as_str());
        let statuses: Vec<String> = f.statuses.iter().map(|s| s.status_name().to_owned()).collect();
        let created = Timestamp::parse_rfc3339(r["created_at"].as_str().unwrap()).unwrap();
        let amount = r["amount"].as_u64();
        let matches = one_of(&statuses, "status")
            && one_of(&f.currencies, "currency")
            && one_of(&f.processors, "processor")
            && one_of(&f.payment_method_types, "payment_method_type")
            && one_of(&f.product_types, "product_type")
            && f.exact.iter().all(|(field, v)| r[field.name()] == v.as_str())
            && f.created_min.is_none_or(|m| created >= m)
            && f.created_max.is_none_or(|m| created <= m)
            && (f.amount_min.is_none() && f.amount_max.is_none()
                || amount.is_some_and(|a| f.amount_min.is_none_or(|m| a >= m) && f.amount_max.is_none_or(|m| a <= m)));
        if !matches {
            continue;
        }
        count += 1;
        let period = case.grid.map(|g| g.period_of(created.millis()).0);
        let values = case.group_by.iter().map(|d| text(d.name())).collect();
        let cell = cells.entry((period, values)).or_default();
        cell.0 += 1;
        if let (Some(amount), Some(currency)) = (amount, text("currency")) {
            let entry = cell.1.entry(currency).or_default();
            entry.0 += 1;
            entry.1 += u128::from(amount);
        }
    }
    (cells, count)
}

fn cells_of(summary: &Summary) -> Cells {
    summary
        .groups
        .iter()
        .map(|g| {
            let amounts = g.amounts.iter().map(|a| (a.currency.to_string(), (a.refunds, a.amount))).collect();
            ((g.period_start, g.values.to_vec()), (g.count, amounts))
        })
        .collect()
}

fn summarize(store: &Store, tenants: &[TenantNo], case: &Case) -> (Summary, u64) {
    let txn = store.read().unwrap();
    let period_of = case.grid.map(|g| move |ms: i64| g.period_of(ms));
    let request = SummaryRequest {
        filter: &case.filter,
        group_by: &case.group_by,
        period_of: period_of.as_ref().map(|f| f as &dyn Fn(i64) -> (i64, i64)),
    };
    let summary = summary_in(&txn, tenants, &request).unwrap();
    let count = count_in(&txn, tenants, &case.filter).unwrap();
    (summary, count)
}

/// Amount bounds only, with status and currency filters and groups: the
/// requests the amount-bucket rows answer. Bounds fall on bucket edges (a
/// power of two, a 64th of one, one before), anywhere, or beyond every amount.
fn arb_amount_case() -> impl Strategy<Value = Case> {
    let bound = || {
        prop_oneof![
            (0..24u32, 0..64u64, -1..=1i64).prop_map(|(e, m, d)| (((64 + m) << e) >> 6).saturating_add_signed(d)),
            0..3_000_000u64,
            Just(u64::MAX),
        ]
    };
    let filter = (
        proptest::sample::subsequence(EventType::ALL.to_vec(), 0..=2),
        proptest::sample::subsequence(vec!["USD", "EUR", "JPY", "XXX"], 0..=2),
        proptest::option::weighted(0.8, bound()),
        proptest::option::weighted(0.8, bound()),
    )
        .prop_filter("some amount bound", |(_, _, min, max)| min.is_some() || max.is_some())
        .prop_map(|(statuses, currencies, amount_min, amount_max)| Filter {
            statuses,
            currencies: currencies.into_iter().map(str::to_owned).collect(),
            amount_min,
            amount_max,
            ..Filter::default()
        });
    (
        filter,
        proptest::sample::subsequence(vec![Dim::Status, Dim::Currency], 0..=2).prop_shuffle(),
        proptest::option::of(0..40usize),
    )
        .prop_map(|(filter, group_by, one_tenant)| Case { filter, group_by, grid: None, one_tenant })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn a_summary_equals_the_brute_force_sums_and_the_lists_count(case in arb_case()) {
        check(&case)?;
    }

    #[test]
    fn a_summary_of_amount_bounds_equals_the_brute_force_sums(case in arb_amount_case()) {
        check(&case)?;
    }
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let generated = generated();
    let all = generated.store.tenants();
    let scope: Vec<(String, TenantNo)> = match case.one_tenant {
        Some(i) => vec![all[i % all.len()].clone()],
        None => all,
    };
    let names: Vec<String> = scope.iter().map(|(t, _)| t.clone()).collect();
    let numbers: Vec<TenantNo> = scope.iter().map(|(_, n)| *n).collect();
    let (summary, list_count) = summarize(&generated.store, &numbers, case);
    let (expected, expected_count) = brute_force(&generated.refunds, &names, case);

    prop_assert_eq!(summary.count, list_count, "count is the list's count");
    prop_assert_eq!(summary.count, expected_count);
    prop_assert_eq!(
        summary.groups.iter().map(|g| g.count).sum::<u64>(),
        if summary.groups.is_empty() { 0 } else { summary.count }
    );
    if case.group_by.is_empty() && case.grid.is_none() {
        prop_assert!(summary.groups.is_empty());
    } else {
        prop_assert_eq!(cells_of(&summary), expected.clone());
    }
    // Totals: the groups' amounts added per currency.
    let mut totals: BTreeMap<String, (u64, u128)> = BTreeMap::new();
    for (_, amounts) in expected.values() {
        for (c, (n, s)) in amounts {
            let e = totals.entry(c.clone()).or_default();
            e.0 += n;
            e.1 += s;
        }
    }
    let got: BTreeMap<String, (u64, u128)> =
        summary.amounts.iter().map(|a| (a.currency.to_string(), (a.refunds, a.amount))).collect();
    prop_assert_eq!(got, totals);
    // Ordered by currency; groups by period, then values.
    prop_assert!(summary.amounts.windows(2).all(|w| w[0].currency < w[1].currency));
    prop_assert!(summary.groups.windows(2).all(|w| w[0].period_start <= w[1].period_start));
    Ok(())
}

fn store_with(lines: &[String]) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb"), &StoreParams { cache_bytes: 16 << 20 }).unwrap();
    let items = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let source = SourcePos::File { path: Arc::from("t.ndjson"), line: i as u64 + 1 };
            Item::received(source, Timestamp::from_millis(1_000).unwrap(), l.as_bytes().to_vec(), None)
        })
        .collect();
    store.apply_batch(&Batch { items, checkpoints: vec![] }, Durability::None).unwrap();
    (dir, store)
}

fn queued(refund: &str, at: &str, amount: u64, currency: &str) -> String {
    json!({"event_id": format!("e-{refund}"), "type": "refund.queued", "occurred_at": at,
        "refund": {"id": refund, "tenant_id": "org_1", "amount": amount, "currency": currency}})
    .to_string()
}

#[test]
fn sums_pass_64_bits_exactly() {
    let max = u64::MAX;
    let (_dir, store) = store_with(&[
        queued("r1", "2025-01-01T00:00:00Z", max, "usd"),
        queued("r2", "2025-01-01T00:00:01Z", max, "usd"),
        queued("r3", "2025-01-01T00:00:02Z", max, "USD"),
        queued("r4", "2025-01-02T00:00:02Z", 5, "eur"),
    ]);
    let tenants: Vec<TenantNo> = store.tenants().into_iter().map(|(_, n)| n).collect();
    for grid in [None, Some(Grid { offset: 0, width: DAY }), Some(Grid { offset: 1, width: DAY })] {
        let case = Case { filter: Filter::default(), group_by: vec![Dim::Currency], grid, one_tenant: None };
        let (summary, count) = summarize(&store, &tenants, &case);
        assert_eq!((summary.count, count), (4, 4));
        assert_eq!(&*summary.amounts[0].currency, "EUR");
        assert_eq!(&*summary.amounts[1].currency, "USD");
        assert_eq!(summary.amounts[1].amount, 3 * u128::from(max), "{grid:?}");
        assert_eq!(summary.amounts[1].refunds, 3);
    }
}

#[test]
fn a_refund_without_amount_or_currency_counts_but_adds_no_amount() {
    let processing = json!({"event_id": "p1", "type": "refund.processing", "occurred_at": "2025-01-01T00:00:00Z",
        "refund": {"id": "r9", "tenant_id": "org_1", "processor": "Stripe"}})
    .to_string();
    let (_dir, store) = store_with(&[processing, queued("r1", "2025-01-01T00:00:00Z", 10, "usd")]);
    let tenants: Vec<TenantNo> = store.tenants().into_iter().map(|(_, n)| n).collect();
    for group_by in [vec![Dim::Status], vec![Dim::Processor, Dim::Currency]] {
        let case = Case { filter: Filter::default(), group_by: group_by.clone(), grid: None, one_tenant: None };
        let (summary, _) = summarize(&store, &tenants, &case);
        assert_eq!(summary.count, 2);
        assert_eq!(summary.amounts.len(), 1);
        assert_eq!((summary.amounts[0].amount, summary.amounts[0].refunds), (10, 1));
        let without = summary
            .groups
            .iter()
            .find(|g| g.values.contains(&Some("processing".into())) || g.values[0] == Some("stripe".into()))
            .unwrap();
        assert_eq!(without.count, 1);
        assert!(without.amounts.is_empty(), "{group_by:?}: {without:?}");
        // A value the refund lacks sorts last.
        if group_by[0] == Dim::Processor {
            assert_eq!(summary.groups.last().unwrap().values[0], None);
        }
    }
}
