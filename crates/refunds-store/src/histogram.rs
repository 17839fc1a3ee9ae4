//! Histogram rows in `counts`: exact counts of a tenant's refunds per bucket
//! of created_at (by status and currency) and per bucket of amount, so that a
//! count over a range reads a few dozen rows instead of every matching
//! refund.
//!
//! - Created: `tenant | 0x10 | level | status | currency | bucket`, with
//!   level 0 a day and level 1 32 days (UTC, from 1970-01-01). Each refund
//!   counts in its (status, currency) row (currency `000` when it has none)
//!   and in the (any, any) row (`0xff`, `0xffffff`). A filter on status or
//!   currency sums one row per combination it admits: the tenant's
//!   currencies come from its currency counters, the statuses are five. A
//!   range is the whole 32-day and whole-day buckets inside it, and the parts
//!   of a day at its two ends, which are counted from an index (none for
//!   date-only bounds).
//! - Amount: `tenant | 0x11 | level | bucket`, where the bucket of level `k`
//!   is `amount / (100 * 100^k)`, k = 0..=3: a tree over amounts in steps of
//!   100 minor units, so `amount_min=1000&amount_max=5000` is 40 adjacent
//!   rows of level 0 plus the row of 5000 itself: multiples of 100 also have
//!   an exact row (level `0xff`), so a bound on or one past a step needs no
//!   scan; other bounds count the rest of their step from the amount index.
//!
//! A refund adds one to each row it falls in: 4 created rows (2 levels x 2)
//! and 4 amount rows (5 for a multiple of 100). Changing status moves only
//! its (status, currency) rows. A batch sums its changes per row before
//! writing, so the upper levels cost one write per tenant and batch.
//! Measured on a replay of 912,612 generated events (50,000-event batches,
//! whose refunds were created over about a month): hours as the finest
//! created level made 51,000 row writes per batch (replay 20% slower), days
//! make 8,600; a decimal amount tree of 18 levels made 12,200, this one 7,800.

use std::ops::Bound;

use redb::ReadableTable;
use refunds_domain::{EventType, RefundState, Timestamp};

use crate::StoreError;
use crate::keys::{self, CountDim, TenantNo};

const CREATED: u8 = 0x10;
const AMOUNT: u8 = 0x11;
const ANY_STATUS: u8 = 0xff;
const ANY_CURRENCY: [u8; 3] = [0xff; 3];
const NO_CURRENCY: [u8; 3] = [0; 3];

/// The bucket widths of the created levels, in milliseconds.
const CREATED_WIDTHS: [i64; 2] = [86_400_000, 32 * 86_400_000];
/// Minor units per amount bucket of level 0; each level is 100x the one below.
pub const AMOUNT_UNIT: u64 = 100;
/// Levels of 100, 10^4, 10^6 and 10^8 minor units. A range's middle at the
/// top level reads every row there is in it: amounts of a million or more
/// (in units of a hundredth) are rare, so those rows are few.
const AMOUNT_LEVELS: u8 = 4;
const AMOUNT_FACTOR: u64 = 100;
/// The level of the rows that count one amount, a multiple of 100: bounds
/// such as `amount_max=5000` (or `amount_min=1001`) need no scan.
const EXACT: u8 = 0xff;

fn ordered(bucket: i64) -> [u8; 8] {
    ((bucket as u64) ^ (1 << 63)).to_be_bytes()
}

/// A currency as the 3 bytes of a histogram key; `None` if it is not 3 bytes
/// (validation admits only 3 ASCII letters, so such a value matches nothing).
fn currency_bytes(currency: &str) -> Option<[u8; 3]> {
    currency.as_bytes().try_into().ok()
}

/// A histogram row's key, held inline (a batch makes tens of thousands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowKey {
    bytes: [u8; 18],
    len: u8,
}

impl RowKey {
    fn new(parts: &[&[u8]]) -> RowKey {
        let mut bytes = [0; 18];
        let mut len = 0;
        for part in parts {
            bytes[len..len + part.len()].copy_from_slice(part);
            len += part.len();
        }
        RowKey { bytes, len: u8::try_from(len).expect("at most 18 bytes") }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

fn created_key(tenant: TenantNo, level: u8, status: u8, currency: [u8; 3], bucket: i64) -> RowKey {
    RowKey::new(&[&tenant.prefix(), &[CREATED, level, status], &currency, &ordered(bucket)])
}

fn amount_key(tenant: TenantNo, level: u8, bucket: u64) -> RowKey {
    RowKey::new(&[&tenant.prefix(), &[AMOUNT, level], &bucket.to_be_bytes()])
}

/// The created-histogram rows `state` counts in.
pub fn created_rows(tenant: TenantNo, state: &RefundState, out: &mut Vec<RowKey>) {
    let created = state.created_at().millis();
    let currency = state.currency().and_then(currency_bytes).unwrap_or(NO_CURRENCY);
    for (level, width) in (0u8..).zip(CREATED_WIDTHS) {
        let bucket = created.div_euclid(width);
        out.push(created_key(tenant, level, ANY_STATUS, ANY_CURRENCY, bucket));
        out.push(created_key(tenant, level, state.status.code(), currency, bucket));
    }
}

/// The amount-histogram rows `state` counts in (none without an amount).
pub fn amount_rows(tenant: TenantNo, state: &RefundState, out: &mut Vec<RowKey>) {
    let Some(amount) = state.amount() else { return };
    let mut bucket = amount / AMOUNT_UNIT;
    for level in 0..AMOUNT_LEVELS {
        out.push(amount_key(tenant, level, bucket));
        bucket /= AMOUNT_FACTOR;
    }
    if amount.is_multiple_of(AMOUNT_UNIT) {
        out.push(amount_key(tenant, EXACT, amount));
    }
}

/// Whether a change from `old` to `new` moves any histogram row.
pub fn moved(old: &RefundState, new: &RefundState) -> (bool, bool) {
    let created = (old.created_at(), old.status, old.currency()) != (new.created_at(), new.status, new.currency());
    (created, old.amount() != new.amount())
}

/// Buckets `[start, end)` of one level: a run of adjacent rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    level: u8,
    start: i128,
    end: i128,
}

/// Splits `[lo, hi)` (in units of the finest level) into runs of whole
/// buckets, level `k + 1` being `factors[k]` times as wide as level `k`,
/// using the widest buckets that fit; the top level takes whatever is left.
fn decompose(mut lo: i128, mut hi: i128, factors: &[i128]) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut width = 1i128;
    for (level, factor) in (0u8..).zip(factors.iter().copied().chain(std::iter::once(0))) {
        if lo >= hi {
            break;
        }
        if factor == 0 {
            // The top level: everything left.
            runs.push(Run { level, start: lo.div_euclid(width), end: hi.div_euclid(width) });
            break;
        }
        let up = width * factor;
        let left_end = (lo.div_euclid(up) + i128::from(lo.rem_euclid(up) != 0)) * up;
        let right_start = hi.div_euclid(up) * up;
        if left_end >= right_start {
            // No whole bucket of the next level fits: this level covers it all.
            runs.push(Run { level, start: lo.div_euclid(width), end: hi.div_euclid(width) });
            break;
        }
        if lo < left_end {
            runs.push(Run { level, start: lo.div_euclid(width), end: left_end.div_euclid(width) });
        }
        if right_start < hi {
            runs.push(Run { level, start: right_start.div_euclid(width), end: hi.div_euclid(width) });
        }
        (lo, hi) = (left_end, right_start);
        width = up;
    }
    runs
}

fn sum_range(counts: &impl ReadableTable<&'static [u8], u64>, start: &[u8], end: &[u8]) -> Result<u64, StoreError> {
    let mut n = 0;
    for entry in counts.range::<&[u8]>((Bound::Included(start), Bound::Excluded(end)))? {
        n += entry?.1.value();
    }
    Ok(n)
}

/// The part of a created range the histogram answers: whole days
/// `[from, to)` in milliseconds.
pub struct CreatedSpan {
    pub from: i64,
    pub to: i64,
}

/// The whole days inside `[min, max]` (inclusive milliseconds), if any.
pub fn created_span(min: Option<Timestamp>, max: Option<Timestamp>) -> Option<CreatedSpan> {
    let day = CREATED_WIDTHS[0];
    let min = min.unwrap_or(Timestamp::MIN).millis();
    let max = max.unwrap_or(Timestamp::MAX).millis();
    let from = min.div_euclid(day) + i64::from(min.rem_euclid(day) != 0);
    // Timestamps end in year 9999, so `max + 1` cannot overflow.
    let to = (max + 1).div_euclid(day);
    (from < to).then(|| CreatedSpan { from: from * day, to: to * day })
}

/// The (status, currency) rows whose sum counts a filter's statuses and
/// currencies (empty lists: any), given the currencies the tenant has.
pub fn combinations(
    counts: &impl ReadableTable<&'static [u8], u64>,
    tenant: TenantNo,
    statuses: &[EventType],
    currencies: &[String],
) -> Result<Vec<(u8, [u8; 3])>, StoreError> {
    if statuses.is_empty() && currencies.is_empty() {
        return Ok(vec![(ANY_STATUS, ANY_CURRENCY)]);
    }
    let statuses: Vec<u8> = if statuses.is_empty() {
        EventType::ALL.iter().map(|s| s.code()).collect()
    } else {
        statuses.iter().map(|s| s.code()).collect()
    };
    let currencies: Vec<[u8; 3]> = if currencies.is_empty() {
        // Every currency the tenant's refunds have, and none.
        let prefix = keys::count_key(tenant, CountDim::Currency, &[]);
        let mut found = vec![NO_CURRENCY];
        for entry in counts.range::<&[u8]>((Bound::Included(prefix.as_slice()), Bound::Unbounded))? {
            let (key, _) = entry?;
            let Some(currency) = key.value().strip_prefix(prefix.as_slice()) else { break };
            found.extend(std::str::from_utf8(currency).ok().and_then(currency_bytes));
        }
        found
    } else {
        // A value that is not 3 bytes matches no refund.
        currencies.iter().filter_map(|c| currency_bytes(c)).collect()
    };
    Ok(statuses.iter().flat_map(|&s| currencies.iter().map(move |&c| (s, c))).collect())
}

/// Refunds of `tenant` created within `span` in the rows of `combinations`.
pub fn count_created(
    counts: &impl ReadableTable<&'static [u8], u64>,
    tenant: TenantNo,
    span: &CreatedSpan,
    combinations: &[(u8, [u8; 3])],
) -> Result<u64, StoreError> {
    let day = i128::from(CREATED_WIDTHS[0]);
    let factors = [i128::from(CREATED_WIDTHS[1] / CREATED_WIDTHS[0])];
    let runs = decompose(i128::from(span.from) / day, i128::from(span.to) / day, &factors);
    let bucket = |b: i128| i64::try_from(b).expect("buckets of i64 milliseconds fit an i64");
    let mut n = 0;
    for &(status, currency) in combinations {
        for run in &runs {
            let start = created_key(tenant, run.level, status, currency, bucket(run.start));
            let end = created_key(tenant, run.level, status, currency, bucket(run.end));
            n += sum_range(counts, start.as_slice(), end.as_slice())?;
        }
    }
    Ok(n)
}

/// The part of an amount range the histogram answers: whole steps
/// `[from, to)` in minor units.
pub struct AmountSpan {
    pub from: u128,
    pub to: u128,
}

/// The whole steps of 100 inside `[min, max]`, if any.
pub fn amount_span(min: u64, max: u64) -> Option<AmountSpan> {
    let unit = u128::from(AMOUNT_UNIT);
    let from = u128::from(min).div_ceil(unit) * unit;
    let to = (u128::from(max) + 1) / unit * unit;
    (from < to).then_some(AmountSpan { from, to })
}

/// Refunds of `tenant` with an amount within `span`.
pub fn count_amount(
    counts: &impl ReadableTable<&'static [u8], u64>,
    tenant: TenantNo,
    span: &AmountSpan,
) -> Result<u64, StoreError> {
    let unit = u128::from(AMOUNT_UNIT);
    let factors = [i128::from(AMOUNT_FACTOR); AMOUNT_LEVELS as usize - 1];
    let (lo, hi) = ((span.from / unit) as i128, (span.to / unit) as i128);
    let mut n = 0;
    for run in decompose(lo, hi, &factors) {
        // Buckets are at most (u64::MAX + 1) / 100.
        let bucket = |b: i128| u64::try_from(b).expect("amount buckets fit a u64");
        let start = amount_key(tenant, run.level, bucket(run.start));
        let end = amount_key(tenant, run.level, bucket(run.end));
        n += sum_range(counts, start.as_slice(), end.as_slice())?;
    }
    Ok(n)
}

/// Refunds of `tenant` with exactly `amount`, if that amount has its own row
/// (multiples of 100 do).
pub fn count_exact_amount(
    counts: &impl ReadableTable<&'static [u8], u64>,
    tenant: TenantNo,
    amount: u64,
) -> Result<Option<u64>, StoreError> {
    if !amount.is_multiple_of(AMOUNT_UNIT) {
        return Ok(None);
    }
    Ok(Some(counts.get(amount_key(tenant, EXACT, amount).as_slice())?.map_or(0, |v| v.value())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every unit of `[lo, hi)` is covered by exactly one run's bucket.
    fn covers_exactly(lo: i128, hi: i128, factors: &[i128]) {
        let runs = decompose(lo, hi, factors);
        let mut widths = vec![1i128];
        for f in factors {
            widths.push(widths.last().unwrap() * f);
        }
        let mut covered: Vec<i128> = Vec::new();
        for run in &runs {
            let w = widths[usize::from(run.level)];
            assert!(run.start < run.end, "{run:?}");
            covered.extend(run.start * w..run.end * w);
        }
        covered.sort();
        assert_eq!(covered, (lo..hi).collect::<Vec<_>>(), "{lo}..{hi}: {runs:?}");
    }

    #[test]
    fn a_range_is_covered_by_disjoint_whole_buckets() {
        for lo in -30..60 {
            for hi in lo..lo + 130 {
                covers_exactly(lo, hi, &[24]);
                covers_exactly(lo, hi, &[32]);
                covers_exactly(lo, hi, &[10, 10]);
                covers_exactly(lo, hi, &[3, 4, 5]);
            }
        }
    }

    #[test]
    fn wide_ranges_use_few_rows() {
        // 1,000..5,000 in steps of 100: one run of 40 buckets of level 0.
        assert_eq!(decompose(10, 50, &[100; 3]), vec![Run { level: 0, start: 10, end: 50 }]);
        // 0..10^9 in steps of 100: one run of level 3 (10^8 minor units each).
        assert_eq!(decompose(0, 10_000_000, &[100; 3]), vec![Run { level: 3, start: 0, end: 10 }]);
        // 90 days: whole 32-day buckets in the middle.
        let runs = decompose(5, 5 + 90, &[32]);
        assert_eq!(runs.len(), 3, "{runs:?}");
    }

    #[test]
    fn created_span_holds_the_whole_days_only() {
        let t = |ms: i64| Some(Timestamp::from_millis(ms).unwrap());
        let h = 86_400_000;
        assert!(created_span(t(1), t(h - 1)).is_none());
        let s = created_span(t(0), t(h - 1)).unwrap();
        assert_eq!((s.from, s.to), (0, h));
        let s = created_span(t(1), t(3 * h)).unwrap();
        assert_eq!((s.from, s.to), (h, 3 * h));
        let s = created_span(t(-h - 5), t(-1)).unwrap();
        assert_eq!((s.from, s.to), (-h, 0));
        assert!(created_span(None, None).is_some());
    }

    #[test]
    fn amount_span_holds_the_whole_steps_only() {
        let s = amount_span(1000, 5000).unwrap();
        assert_eq!((s.from, s.to), (1000, 5000));
        let s = amount_span(950, 5099).unwrap();
        assert_eq!((s.from, s.to), (1000, 5100));
        assert!(amount_span(1, 99).is_none());
        let s = amount_span(0, u64::MAX).unwrap();
        assert_eq!(s.from, 0);
        assert!(s.to <= u128::from(u64::MAX) + 1);
    }
}
