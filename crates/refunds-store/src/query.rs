//! Counting refunds that match a filter, from one read snapshot.
//!
//! The planner answers from the `counts` rows when the filter is a tenant
//! plus at most one low-cardinality dimension (the dashboard's common
//! questions), from the histogram rows when it is a created range by status
//! and currency or an amount range (see [`crate::histogram`]), and otherwise
//! scans the most selective index range, checking the remaining predicates on
//! each refund. Either way the count is exact.

use std::ops::Bound;

use redb::{ReadOnlyTable, ReadTransaction};
use refunds_domain::{EventType, RefundState, TextField, Timestamp};

use crate::histogram;
use crate::keys::{self, CountDim, Index, TenantNo};
use crate::read::decode_row_state;
use crate::tiers::IndexTables;
use crate::{Store, StoreError, tables};

/// A list filter, already normalized (currency upper case, processor lower
/// case). Every list is an OR; an empty list does not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub statuses: Vec<EventType>,
    pub currencies: Vec<String>,
    pub processors: Vec<String>,
    pub payment_method_types: Vec<String>,
    pub product_types: Vec<String>,
    /// Exact matches on order_no, transaction_id, external_refund_id, store_id, reference_id.
    pub exact: Vec<(TextField, String)>,
    /// Inclusive bounds on created_at.
    pub created_min: Option<Timestamp>,
    pub created_max: Option<Timestamp>,
    /// Inclusive bounds on amount; a refund without an amount never matches them.
    pub amount_min: Option<u64>,
    pub amount_max: Option<u64>,
}

impl Filter {
    /// Whether a refund matches every predicate.
    pub fn matches(&self, state: &RefundState) -> bool {
        let any = |values: &[String], value: Option<&str>| {
            values.is_empty() || value.is_some_and(|v| values.iter().any(|x| x == v))
        };
        let created = state.created_at();
        (self.statuses.is_empty() || self.statuses.contains(&state.status))
            && any(&self.currencies, state.currency())
            && any(&self.processors, state.text(TextField::Processor))
            && any(&self.payment_method_types, state.text(TextField::PaymentMethodType))
            && any(&self.product_types, state.text(TextField::ProductType))
            && self.exact.iter().all(|(field, value)| state.text(*field) == Some(value.as_str()))
            && self.created_min.is_none_or(|min| created >= min)
            && self.created_max.is_none_or(|max| created <= max)
            && (self.amount_min.is_none() && self.amount_max.is_none()
                || state.amount().is_some_and(|a| {
                    self.amount_min.is_none_or(|min| a >= min) && self.amount_max.is_none_or(|max| a <= max)
                }))
    }

    /// False when a range is inverted (`amount_min > amount_max`, or the
    /// created bounds), which the contract answers with an empty list.
    pub fn can_match(&self) -> bool {
        self.amount_min.zip(self.amount_max).is_none_or(|(min, max)| min <= max)
            && self.created_min.zip(self.created_max).is_none_or(|(min, max)| min <= max)
    }

    /// The same filter with each list's repeated values removed.
    pub fn deduplicated(&self) -> Filter {
        fn unique<T: Ord + Clone>(values: &[T]) -> Vec<T> {
            let mut values = values.to_vec();
            values.sort();
            values.dedup();
            values
        }
        Filter {
            statuses: unique(&self.statuses),
            currencies: unique(&self.currencies),
            processors: unique(&self.processors),
            payment_method_types: unique(&self.payment_method_types),
            product_types: unique(&self.product_types),
            exact: self.exact.clone(),
            ..self.clone()
        }
    }

    /// Whether `index`'s keys (value and created_at) answer every predicate.
    pub(crate) fn answered_by_keys(&self, index: Index) -> bool {
        let no_amount = self.amount_min.is_none() && self.amount_max.is_none();
        let lists = [
            (Index::Status, !self.statuses.is_empty()),
            (Index::Currency, !self.currencies.is_empty()),
            (Index::Text(TextField::Processor), !self.processors.is_empty()),
            (Index::Text(TextField::PaymentMethodType), !self.payment_method_types.is_empty()),
            (Index::Text(TextField::ProductType), !self.product_types.is_empty()),
        ];
        let others_unused = lists.iter().all(|(i, used)| *i == index || !used);
        let exact_ok = match index {
            Index::Text(field) if self.exact.len() == 1 => self.exact[0].0 == field,
            _ => self.exact.is_empty(),
        };
        no_amount && others_unused && exact_ok && index != Index::Amount
    }

    /// Whether the filter is amount bounds, optionally with created bounds, and nothing else.
    pub(crate) fn only_amount_and_created(&self) -> bool {
        (self.amount_min.is_some() || self.amount_max.is_some())
            && self.statuses.is_empty()
            && self.currencies.is_empty()
            && self.processors.is_empty()
            && self.payment_method_types.is_empty()
            && self.product_types.is_empty()
            && self.exact.is_empty()
    }

    /// The histogram that counts this filter, if any: created bounds (or
    /// both a status and a currency list) with no predicate beyond status and
    /// currency, or amount bounds alone.
    fn histogram(&self) -> Option<Histogram> {
        let created = self.created_min.is_some() || self.created_max.is_some();
        if self.only_amount_and_created() {
            return (!created).then_some(Histogram::Amount);
        }
        let others = !self.processors.is_empty()
            || !self.payment_method_types.is_empty()
            || !self.product_types.is_empty()
            || !self.exact.is_empty()
            || self.amount_min.is_some()
            || self.amount_max.is_some();
        let both_lists = !self.statuses.is_empty() && !self.currencies.is_empty();
        (!others && (created || both_lists)).then_some(Histogram::Created)
    }

    /// The one low-cardinality dimension a counter row can answer, if the
    /// filter is nothing but that (or nothing at all).
    fn counter_dimension(&self) -> Option<(CountDim, Vec<Vec<u8>>)> {
        let ranged = self.created_min.is_some()
            || self.created_max.is_some()
            || self.amount_min.is_some()
            || self.amount_max.is_some();
        if ranged || !self.exact.is_empty() {
            return None;
        }
        let dims: Vec<(CountDim, Vec<Vec<u8>>)> = [
            (CountDim::Status, self.statuses.iter().map(|s| keys::status_value(*s)).collect::<Vec<_>>()),
            (CountDim::Currency, self.currencies.iter().map(|c| c.as_bytes().to_vec()).collect()),
            (CountDim::Processor, self.processors.iter().map(|p| keys::text_value(p)).collect()),
            (CountDim::PaymentMethodType, self.payment_method_types.iter().map(|p| keys::text_value(p)).collect()),
            (CountDim::ProductType, self.product_types.iter().map(|p| keys::text_value(p)).collect()),
        ]
        .into_iter()
        .filter(|(_, values)| !values.is_empty())
        .collect();
        match dims.len() {
            0 => Some((CountDim::All, vec![Vec::new()])),
            1 => dims.into_iter().next(),
            _ => None,
        }
    }
}

/// Which histogram rows answer a count.
enum Histogram {
    Created,
    Amount,
}

/// How a scan finds its candidates: one index and the value prefixes to read.
pub(crate) struct Plan {
    pub(crate) index: Index,
    pub(crate) values: Vec<Vec<u8>>,
}

/// Sums the counter rows of one dimension's values.
pub(crate) type Counter<'a> = dyn Fn(CountDim, &[Vec<u8>]) -> Result<u64, StoreError> + 'a;

pub(crate) fn plan(filter: &Filter, counts: &Counter<'_>) -> Result<Plan, StoreError> {
    if let Some((field, value)) = filter.exact.first() {
        return Ok(Plan { index: Index::Text(*field), values: vec![keys::text_value(value)] });
    }
    let mut best = Plan { index: Index::Created, values: vec![Vec::new()] };
    let mut best_count = counts(CountDim::All, &[Vec::new()])?;
    let candidates = [
        (CountDim::Status, Index::Status, filter.statuses.iter().map(|s| keys::status_value(*s)).collect::<Vec<_>>()),
        (CountDim::Currency, Index::Currency, filter.currencies.iter().map(|c| c.as_bytes().to_vec()).collect()),
        (
            CountDim::Processor,
            Index::Text(TextField::Processor),
            filter.processors.iter().map(|p| keys::text_value(p)).collect(),
        ),
        (
            CountDim::PaymentMethodType,
            Index::Text(TextField::PaymentMethodType),
            filter.payment_method_types.iter().map(|p| keys::text_value(p)).collect(),
        ),
        (
            CountDim::ProductType,
            Index::Text(TextField::ProductType),
            filter.product_types.iter().map(|p| keys::text_value(p)).collect(),
        ),
    ];
    for (dim, index, values) in candidates {
        if values.is_empty() {
            continue;
        }
        let n = counts(dim, &values)?;
        if n < best_count {
            best_count = n;
            best = Plan { index, values };
        }
    }
    Ok(best)
}

impl Store {
    /// The exact number of refunds of `tenants` matching `filter`.
    pub fn count(&self, tenants: &[TenantNo], filter: &Filter) -> Result<u64, StoreError> {
        let txn = self.read()?;
        count_in(&txn, tenants, filter)
    }
}

/// Counts within a read transaction (so a page and its count share a snapshot).
pub fn count_in(txn: &ReadTransaction, tenants: &[TenantNo], filter: &Filter) -> Result<u64, StoreError> {
    // A value listed twice must not be counted twice.
    let filter = &filter.deduplicated();
    if !filter.can_match() {
        return Ok(0);
    }
    let counts = txn.open_table(tables::COUNTS)?;
    let mut total = 0;
    for &tenant in tenants {
        let counter = |dim: CountDim, values: &[Vec<u8>]| -> Result<u64, StoreError> {
            let mut n = 0;
            for value in values {
                n += counts.get(keys::count_key(tenant, dim, value).as_slice())?.map_or(0, |v| v.value());
            }
            Ok(n)
        };
        if let Some((dim, values)) = filter.counter_dimension() {
            total += counter(dim, &values)?;
            continue;
        }
        let plan = plan(filter, &counter)?;
        total += match filter.histogram() {
            Some(Histogram::Created) => count_created(txn, &counts, tenant, filter, &plan)?,
            Some(Histogram::Amount) => count_amount(txn, &counts, tenant, filter)?,
            None => scan_count(txn, tenant, filter, &plan)?,
        };
    }
    Ok(total)
}

/// Counts with the created histogram: the whole days of the range from its
/// rows (one per status and currency the filter admits), the parts of a day
/// at either end by a scan.
fn count_created(
    txn: &ReadTransaction,
    counts: &ReadOnlyTable<&'static [u8], u64>,
    tenant: TenantNo,
    filter: &Filter,
    plan: &Plan,
) -> Result<u64, StoreError> {
    let Some(span) = histogram::created_span(filter.created_min, filter.created_max) else {
        return scan_count(txn, tenant, filter, plan);
    };
    let combinations = histogram::combinations(counts, tenant, &filter.statuses, &filter.currencies)?;
    let mut n = histogram::count_created(counts, tenant, &span, &combinations)?;
    // An unbounded end starts (or ends) with the first (or last) timestamp.
    if filter.created_min.unwrap_or(Timestamp::MIN).millis() < span.from {
        let before = Timestamp::from_millis(span.from - 1).expect("within the filter's bounds");
        n += scan_count(txn, tenant, &Filter { created_max: Some(before), ..filter.clone() }, plan)?;
    }
    if filter.created_max.unwrap_or(Timestamp::MAX).millis() >= span.to {
        let after = Timestamp::from_millis(span.to).expect("within the filter's bounds");
        n += scan_count(txn, tenant, &Filter { created_min: Some(after), ..filter.clone() }, plan)?;
    }
    Ok(n)
}

/// Counts an amount range with the amount histogram: whole steps of 100 from
/// its rows; a bound on a multiple of 100 (or one past it) from the exact
/// rows; the rest of a step at either end from the amount index.
fn count_amount(
    txn: &ReadTransaction,
    counts: &ReadOnlyTable<&'static [u8], u64>,
    tenant: TenantNo,
    filter: &Filter,
) -> Result<u64, StoreError> {
    let table = IndexTables::open(txn, Index::Amount)?;
    let (min, max) = (filter.amount_min.unwrap_or(0), filter.amount_max.unwrap_or(u64::MAX));
    let scan = |min: u64, max: u64| {
        count_amount_range(&table, tenant, &Filter { amount_min: Some(min), amount_max: Some(max), ..filter.clone() })
    };
    let Some(span) = histogram::amount_span(min, max) else {
        if min == max
            && let Some(n) = histogram::count_exact_amount(counts, tenant, min)?
        {
            return Ok(n);
        }
        return scan(min, max);
    };
    let mut n = histogram::count_amount(counts, tenant, &span)?;
    let from = u64::try_from(span.from).expect("the span starts within the filter's bounds");
    if min < from {
        // `[min, from)`: all of the step before `from` but its first amount, or a scan.
        let step = from - histogram::AMOUNT_UNIT;
        n += match histogram::count_exact_amount(counts, tenant, step)? {
            Some(first) if min == step + 1 => {
                histogram::count_amount(counts, tenant, &histogram::AmountSpan { from: step.into(), to: from.into() })?
                    - first
            }
            _ => scan(min, from - 1)?,
        };
    }
    if let Ok(to) = u64::try_from(span.to)
        && to <= max
    {
        // `[to, max]`: the exact row of `to` alone, or a scan.
        n += match histogram::count_exact_amount(counts, tenant, to)? {
            Some(exact) if max == to => exact,
            _ => scan(to, max)?,
        };
    }
    Ok(n)
}

fn scan_count(txn: &ReadTransaction, tenant: TenantNo, filter: &Filter, plan: &Plan) -> Result<u64, StoreError> {
    let index_only = filter.answered_by_keys(plan.index);
    if !index_only && filter.only_amount_and_created() {
        let table = IndexTables::open(txn, Index::Amount)?;
        return count_amount_range(&table, tenant, filter);
    }
    let table = IndexTables::open(txn, plan.index)?;
    let refunds = txn.open_table(tables::REFUNDS)?;
    let mut n = 0;
    for value in &plan.values {
        for_each_with_value(
            &table,
            plan.index,
            tenant,
            value,
            filter.created_min,
            filter.created_max,
            |_, refund_id, home| {
                // Keys alone answer the filter when it asks nothing beyond them.
                if index_only {
                    n += 1;
                    return Ok(());
                }
                let row = refunds
                    .get(keys::row_key(tenant, home, refund_id).as_slice())?
                    .ok_or_else(|| StoreError::Corrupt(format!("index names a missing refund {refund_id}")))?;
                if filter.matches(&decode_row_state(row.value())?) {
                    n += 1;
                }
                Ok(())
            },
        )?;
    }
    Ok(n)
}

/// Counts the refunds with an amount in the filter's bounds (and created in
/// its bounds) from the amount index's keys: one range per created window.
fn count_amount_range(table: &IndexTables, tenant: TenantNo, filter: &Filter) -> Result<u64, StoreError> {
    let (min, max) = (keys::amount_value(filter.amount_min.unwrap_or(0)), filter.amount_max.unwrap_or(u64::MAX));
    let mut n = 0;
    skip_scan(table, Index::Amount, tenant, filter.created_min, filter.created_max, &min, |key, _| {
        let (amount, created, _) =
            keys::split_amount_key(key).ok_or_else(|| StoreError::Corrupt("index key".into()))?;
        if amount > max {
            return Ok(Step::NextWindow);
        }
        if filter.created_min.is_none_or(|m| created >= m) && filter.created_max.is_none_or(|m| created <= m) {
            n += 1;
        }
        Ok(Step::Take)
    })?;
    Ok(n)
}

/// Calls `f(refund id, home)` for every refund of `tenant` with an amount in
/// the filter's bounds and created in its bounds, from the amount index's
/// keys: one range per created window.
pub(crate) fn for_each_in_amount_range(
    table: &IndexTables,
    tenant: TenantNo,
    filter: &Filter,
    mut f: impl FnMut(&str, u32) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let (min, max) = (keys::amount_value(filter.amount_min.unwrap_or(0)), filter.amount_max.unwrap_or(u64::MAX));
    skip_scan(table, Index::Amount, tenant, filter.created_min, filter.created_max, &min, |key, home| {
        let (amount, created, refund_id) =
            keys::split_amount_key(key).ok_or_else(|| StoreError::Corrupt("index key".into()))?;
        if amount > max {
            return Ok(Step::NextWindow);
        }
        if filter.created_min.is_none_or(|m| created >= m) && filter.created_max.is_none_or(|m| created <= m) {
            f(refund_id, home)?;
        }
        Ok(Step::Take)
    })
}

/// Calls `f(created_at, refund id, home)` for every refund of `tenant` with
/// `value` under `index` and created within the bounds, in (created_at, id)
/// order for an unwindowed index, and in no particular order for a windowed
/// one (tier by tier, window by window).
pub(crate) fn for_each_with_value(
    table: &IndexTables,
    index: Index,
    tenant: TenantNo,
    value: &[u8],
    created_min: Option<Timestamp>,
    created_max: Option<Timestamp>,
    mut f: impl FnMut(Timestamp, &str, u32) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    if !index.windowed() {
        let prefix = keys::index_prefix(tenant, value);
        return scan_prefix(table.main(), &prefix, created_min, created_max, &mut f);
    }
    let seek = match created_min {
        Some(min) => [value, &keys::time_bytes(min)].concat(),
        None => value.to_vec(),
    };
    // After `tenant | window` (8 bytes): the value, created_at and id.
    skip_scan(table, index, tenant, created_min, created_max, &seek, |key, home| {
        if key.get(8..8 + value.len()) != Some(value) {
            return Ok(Step::NextWindow);
        }
        let (created, refund_id) =
            keys::split_index_key(key, 8 + value.len()).ok_or_else(|| StoreError::Corrupt("index key".into()))?;
        if created_max.is_some_and(|max| created > max) {
            // Later windows hold later refunds still.
            return Ok(Step::Stop);
        }
        f(created, refund_id, home)?;
        Ok(Step::Take)
    })
}

/// What a skip scan does after an entry of the window it is in.
enum Step {
    Take,
    NextWindow,
    Stop,
}

/// A skip scan over the created windows of `tenant` in a windowed index,
/// within the created bounds, one tier after the other: see
/// [`skip_scan_tier`]. A `Stop` ends the tier it was given in.
fn skip_scan(
    tables: &IndexTables,
    index: Index,
    tenant: TenantNo,
    created_min: Option<Timestamp>,
    created_max: Option<Timestamp>,
    seek: &[u8],
    mut visit: impl FnMut(&[u8], u32) -> Result<Step, StoreError>,
) -> Result<(), StoreError> {
    for table in tables.tiers() {
        skip_scan_tier(table, index, tenant, created_min, created_max, seek, &mut visit)?;
    }
    Ok(())
}

/// A skip scan of one tier: one seek per window that holds keys, to
/// `tenant | window | seek`, then `visit(key, home)` for the window's entries
/// in key order until it moves on. The first key past the window names the
/// next window that has keys, however many lie between.
fn skip_scan_tier(
    table: &ReadOnlyTable<&'static [u8], u32>,
    index: Index,
    tenant: TenantNo,
    created_min: Option<Timestamp>,
    created_max: Option<Timestamp>,
    seek: &[u8],
    visit: &mut impl FnMut(&[u8], u32) -> Result<Step, StoreError>,
) -> Result<(), StoreError> {
    let tenant_prefix = tenant.prefix();
    let bits = index.window_bits();
    let last = created_max.map_or(u32::MAX, |t| keys::window_of(t, bits));
    let mut window = created_min.map_or(0, |t| keys::window_of(t, bits));
    while window <= last {
        let start = keys::windowed_prefix(tenant, window, seek);
        let mut next_window = None;
        for entry in table.range::<&[u8]>((Bound::Included(start.as_slice()), Bound::Unbounded))? {
            let (key, home) = entry?;
            let key = key.value();
            if !key.starts_with(&tenant_prefix) {
                break;
            }
            let found = keys::window_of_key(key).ok_or_else(|| StoreError::Corrupt("index key".into()))?;
            if found == window {
                match visit(key, home.value())? {
                    Step::Take => continue,
                    Step::NextWindow => next_window = window.checked_add(1),
                    Step::Stop => return Ok(()),
                }
            } else {
                // No key of this window lies at or after `seek`.
                next_window = Some(found);
            }
            break;
        }
        match next_window {
            Some(next) => window = next,
            None => break,
        }
    }
    Ok(())
}

/// Every key starting with `prefix` (followed by created_at and id), within the bounds.
fn scan_prefix(
    table: &ReadOnlyTable<&'static [u8], u32>,
    prefix: &[u8],
    created_min: Option<Timestamp>,
    created_max: Option<Timestamp>,
    f: &mut impl FnMut(Timestamp, &str, u32) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let start = match created_min {
        Some(min) => [prefix, &keys::time_bytes(min)].concat(),
        None => prefix.to_vec(),
    };
    for entry in table.range::<&[u8]>((Bound::Included(start.as_slice()), Bound::Unbounded))? {
        let (key, home) = entry?;
        let key = key.value();
        if !key.starts_with(prefix) {
            break;
        }
        let (created, refund_id) =
            keys::split_index_key(key, prefix.len()).ok_or_else(|| StoreError::Corrupt("index key".into()))?;
        if created_max.is_some_and(|max| created > max) {
            break;
        }
        f(created, refund_id, home.value())?;
    }
    Ok(())
}
