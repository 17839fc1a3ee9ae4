//! Summaries: exact refund counts and per-currency amount totals of a
//! filter, grouped by up to two dimensions and by period of created_at, from
//! one read snapshot.
//!
//! # Kept aggregates
//!
//! `summaries` holds per-tenant rows of (count, refunds with an amount, sum
//! of amounts), kept in the batch's write transaction like the counters.
//! A row is keyed `tenant | family | row | status | currency [| processor |
//! payment_method_type | product_type]` and its value holds the row's
//! totals, then its non-empty time slots: `slot, count, refunds with amount,
//! sum`, varints, the sum a u128 (a sum of amounts up to 2^64-1 passes 64
//! bits). A row wholly inside one period and the created bounds is read
//! from its totals alone. Three families:
//!
//! - [`TOTALS`]: status and currency, no time: one slot for all history.
//!   Answers summaries without `interval` or created bounds (the "every
//!   tenant by currency" dashboard) in a few dozen rows per tenant.
//! - [`DAYS`]: status and currency, one row per UTC day with 96
//!   quarter-hour slots. Every zone in use today has an offset that is a
//!   whole number of quarter hours (Asia/Kathmandu +05:45 days start at :15
//!   UTC), so any local hour, day, week or month is a union of whole slots.
//!   A row per day rather than per hour or quarter keeps the rows a batch
//!   rewrites few (a batch's refunds share their days) and a whole-history
//!   summary short: the biggest generated tenant has about 20 rows a day.
//! - [`FULL`]: all five dimensions, one row per 32 UTC days with a slot per
//!   day: for filters and groups on processor, payment_method_type or
//!   product_type. Rows of all five dimensions are nearly one per refund at a
//!   finer grain, so they are kept coarse; a period edge inside a day is
//!   counted from the created index (below).
//! - [`AMOUNTS`]: status and currency, one row per amount bucket (exact
//!   below 128 minor units, then 64 buckets per power of two, so a bucket
//!   spans at most 1/64 of its amounts): for amount bounds without created
//!   bounds or periods. A bucket wholly inside the bounds is read from its
//!   row; the one or two buckets a bound cuts are counted from the amount
//!   index, refund by refund.
//!
//! [`TOTALS`] and [`DAYS`] rows are also kept for every tenant together,
//! under [`EVERY_TENANT`]: a summary over every tenant of its snapshot (an
//! admin without `tenant_id`) reads those instead of each tenant's.
//!
//! A slot that lies in one period and wholly inside the created bounds is
//! added from the row. A slot that straddles a period edge or a created bound
//! (a zone whose offset is not a whole quarter hour, a local day of a FULL
//! summary, a created bound inside a slot) is counted instead by walking the
//! refunds of that slot's time range through the created index, each checked
//! against the filter, so the result stays exact. Requests no family covers
//! (exact-match fields; amount bounds with created bounds, periods or a
//! processor, payment method or product type) walk the matching refunds
//! through the most selective index, as a count does.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use foldhash::HashMap;
use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, Table};
use refunds_domain::{EventType, RefundState, TextField, Timestamp};

use crate::keys::{self, CountDim, Index, TenantNo};
use crate::query::{self, Filter};
use crate::read::decode_row_state;
use crate::tiers::IndexTables;
use crate::{StoreError, tables};

/// A dimension a summary can group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Status,
    Currency,
    Processor,
    PaymentMethodType,
    ProductType,
}

impl Dim {
    pub const ALL: [Dim; 5] = [Dim::Status, Dim::Currency, Dim::Processor, Dim::PaymentMethodType, Dim::ProductType];

    /// The name of the dimension in the API (`group_by` values, group keys).
    pub fn name(self) -> &'static str {
        match self {
            Dim::Status => "status",
            Dim::Currency => "currency",
            Dim::Processor => "processor",
            Dim::PaymentMethodType => "payment_method_type",
            Dim::ProductType => "product_type",
        }
    }

    pub fn from_name(name: &str) -> Option<Dim> {
        Dim::ALL.into_iter().find(|d| d.name() == name)
    }

    fn text_field(self) -> Option<TextField> {
        match self {
            Dim::Processor => Some(TextField::Processor),
            Dim::PaymentMethodType => Some(TextField::PaymentMethodType),
            Dim::ProductType => Some(TextField::ProductType),
            Dim::Status | Dim::Currency => None,
        }
    }

    fn value_of(self, state: &RefundState) -> Option<&str> {
        match self {
            Dim::Status => Some(state.status.status_name()),
            Dim::Currency => state.currency(),
            text => state.text(text.text_field().expect("text dimensions have a field")),
        }
    }
}

/// The period of an instant (ms): `[start, end)`, periods being contiguous
/// and ordered like the instants in them.
pub type PeriodOf<'a> = &'a dyn Fn(i64) -> (i64, i64);

/// What to summarize.
pub struct SummaryRequest<'a> {
    pub filter: &'a Filter,
    /// At most a few dimensions, distinct, in the order groups sort by.
    pub group_by: &'a [Dim],
    /// Groups by period of created_at when given.
    pub period_of: Option<PeriodOf<'a>>,
}

/// Refunds of one currency: how many have an amount, and its sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrencyAmount {
    /// Shared by every entry of the currency (a summary may hold thousands).
    pub currency: Arc<str>,
    pub amount: u128,
    pub refunds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryGroup {
    /// Start (ms) of the period, when the request has periods.
    pub period_start: Option<i64>,
    /// One value per `group_by` dimension, in its order (`None`: no value);
    /// shared by the group's cells of every period.
    pub values: Arc<[Option<String>]>,
    pub count: u64,
    pub amounts: Vec<CurrencyAmount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    pub count: u64,
    /// By currency.
    pub amounts: Vec<CurrencyAmount>,
    /// Non-empty groups, by period start and then by the `group_by` values
    /// (status by rank then name, other values by byte order, none last).
    /// Empty without `group_by` and periods.
    pub groups: Vec<SummaryGroup>,
}

/// One family of kept rows: which dimensions its keys hold, and the widths
/// of its rows and slots in ms (0 for the families without time), or rows
/// by amount bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Family {
    tag: u8,
    full: bool,
    row_ms: i64,
    slot_ms: i64,
    by_amount: bool,
}

const DAY_MS: i64 = 86_400_000;
pub(crate) const TOTALS: Family = Family { tag: 0x20, full: false, row_ms: 0, slot_ms: 0, by_amount: false };
pub(crate) const DAYS: Family =
    Family { tag: 0x21, full: false, row_ms: DAY_MS, slot_ms: 15 * 60_000, by_amount: false };
pub(crate) const FULL: Family =
    Family { tag: 0x22, full: true, row_ms: 32 * DAY_MS, slot_ms: DAY_MS, by_amount: false };
pub(crate) const AMOUNTS: Family = Family { tag: 0x23, full: false, row_ms: 0, slot_ms: 0, by_amount: true };
const FAMILIES: [Family; 4] = [TOTALS, DAYS, FULL, AMOUNTS];
const NO_CURRENCY: [u8; 3] = [0; 3];
/// The tenant number of the rows kept for every tenant together (names are
/// numbered from 1 up and never reach it).
pub(crate) const EVERY_TENANT: TenantNo = TenantNo(u32::MAX);
/// The families also kept under [`EVERY_TENANT`].
const ROLLED_UP: [Family; 2] = [TOTALS, DAYS];
const TEXT_DIMS: [TextField; 3] = [TextField::Processor, TextField::PaymentMethodType, TextField::ProductType];

/// The amount bucket of an amount: the amount itself below 128, then 64
/// buckets per power of two (so that bucket `b` of `[2^e, 2^(e+1))` is
/// `2^(e-6)` wide). Increasing with the amount, and at most 3,775.
pub(crate) fn amount_bucket(amount: u64) -> u16 {
    if let Ok(small @ 0..128) = u16::try_from(amount) {
        return small;
    }
    let e = 63 - amount.leading_zeros();
    let mantissa = u32::try_from(amount >> (e - 6)).expect("seven bits") - 64;
    u16::try_from((e - 5) * 64 + mantissa).expect("at most 3,775 buckets")
}

/// The amounts `[low, high]` of an amount bucket.
pub(crate) fn bucket_range(bucket: u16) -> (u64, u64) {
    if bucket < 128 {
        return (u64::from(bucket), u64::from(bucket));
    }
    let (e, mantissa) = (u32::from(bucket / 64) + 5, u64::from(bucket % 64) + 64);
    let low = mantissa << (e - 6);
    (low, low + ((1u64 << (e - 6)) - 1))
}

impl Family {
    /// (row, slot) of an instant.
    fn place(self, ms: i64) -> (i64, u8) {
        if self.row_ms == 0 {
            return (0, 0);
        }
        let slot = ms.rem_euclid(self.row_ms) / self.slot_ms;
        (ms.div_euclid(self.row_ms), u8::try_from(slot).expect("at most 96 slots a row"))
    }

    /// Slots in a row.
    fn slots(self) -> i64 {
        if self.row_ms == 0 { 1 } else { self.row_ms / self.slot_ms }
    }

    /// The instants `[start, end]` of a slot.
    fn slot_range(self, row: i64, slot: u8) -> (i64, i64) {
        if self.row_ms == 0 {
            return (i64::MIN, i64::MAX);
        }
        let start = row * self.row_ms + i64::from(slot) * self.slot_ms;
        (start, start + self.slot_ms - 1)
    }

    fn row_prefix(self, tenant: TenantNo, row: i64) -> Vec<u8> {
        let mut key = Vec::with_capacity(48);
        key.extend_from_slice(&tenant.prefix());
        key.push(self.tag);
        key.extend_from_slice(&((row as u64) ^ (1 << 63)).to_be_bytes());
        key
    }

    /// The row key of a refund (and its slot); `None` when the family does
    /// not hold the refund (a refund without an amount has no amount bucket).
    fn key_of(self, tenant: TenantNo, state: &RefundState) -> Option<(Vec<u8>, u8)> {
        let (row, slot) = match self.by_amount {
            true => (i64::from(amount_bucket(state.amount()?)), 0),
            false => self.place(state.created_at().millis()),
        };
        let mut key = self.row_prefix(tenant, row);
        key.push(state.status.code());
        let currency = state.currency().and_then(|c| <[u8; 3]>::try_from(c.as_bytes()).ok());
        key.extend_from_slice(&currency.unwrap_or(NO_CURRENCY));
        if self.full {
            for field in TEXT_DIMS {
                let text = state.text(field).unwrap_or("");
                let len = u16::try_from(text.len()).expect("text values are at most 256 bytes");
                key.extend_from_slice(&len.to_be_bytes());
                key.extend_from_slice(text.as_bytes());
            }
        }
        Some((key, slot))
    }

    /// What a refund adds to its slot: (count, refunds with an amount, sum).
    fn contribution(state: &RefundState) -> (i64, i64, i128) {
        match (state.amount(), state.currency()) {
            (Some(amount), Some(_)) => (1, 1, i128::from(amount)),
            _ => (1, 0, 0),
        }
    }

    /// Whether a change from `old` to `new` moves anything in this family.
    fn moved(self, old: &RefundState, new: &RefundState) -> bool {
        let narrow = (old.created_at(), old.status, old.currency(), old.amount())
            != (new.created_at(), new.status, new.currency(), new.amount());
        narrow || self.full && TEXT_DIMS.iter().any(|f| old.text(*f) != new.text(*f))
    }
}

/// The dimension values of a kept row's key (after the row number), as the
/// key holds them (UTF-8 is checked only for a value that names a new group).
struct RowDims<'k> {
    status: EventType,
    currency: Option<&'k [u8]>,
    texts: [Option<&'k [u8]>; 3],
}

fn parse_dims(rest: &[u8], full: bool) -> Option<RowDims<'_>> {
    let status = EventType::from_code(*rest.first()?)?;
    let currency = rest.get(1..4)?;
    let currency = (currency != NO_CURRENCY).then_some(currency);
    let mut texts = [None; 3];
    if full {
        let mut at = 4;
        for text in &mut texts {
            let len = usize::from(u16::from_be_bytes(rest.get(at..at + 2)?.try_into().ok()?));
            let value = rest.get(at + 2..at + 2 + len)?;
            *text = (len > 0).then_some(value);
            at += 2 + len;
        }
    }
    Some(RowDims { status, currency, texts })
}

impl RowDims<'_> {
    fn value(&self, dim: Dim) -> Option<&[u8]> {
        match dim {
            Dim::Status => Some(self.status.status_name().as_bytes()),
            Dim::Currency => self.currency,
            Dim::Processor => self.texts[0],
            Dim::PaymentMethodType => self.texts[1],
            Dim::ProductType => self.texts[2],
        }
    }

    fn matches(&self, filter: &Filter) -> bool {
        let any = |values: &[String], value: Option<&[u8]>| {
            values.is_empty() || value.is_some_and(|v| values.iter().any(|x| x.as_bytes() == v))
        };
        (filter.statuses.is_empty() || filter.statuses.contains(&self.status))
            && any(&filter.currencies, self.currency)
            && any(&filter.processors, self.texts[0])
            && any(&filter.payment_method_types, self.texts[1])
            && any(&filter.product_types, self.texts[2])
    }
}

// ---------------------------------------------------------------------------
// Slot values

/// One slot's aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Slot {
    count: u64,
    with_amount: u64,
    sum: u128,
}

impl std::ops::AddAssign for Slot {
    fn add_assign(&mut self, other: Slot) {
        self.count += other.count;
        self.with_amount += other.with_amount;
        self.sum += other.sum;
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u128) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u128> {
    // Most counts are one byte.
    if let Some(&byte) = bytes.get(*at)
        && byte < 0x80
    {
        *at += 1;
        return Some(u128::from(byte));
    }
    let mut v: u128 = 0;
    for shift in (0..133).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        v |= u128::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The row's totals over its slots (what a summary reads when the whole
/// row lies in one period), moving `at` past them.
fn read_totals(bytes: &[u8], at: &mut usize) -> Option<Slot> {
    let count = u64::try_from(get_varint(bytes, at)?).ok()?;
    let with_amount = u64::try_from(get_varint(bytes, at)?).ok()?;
    let sum = get_varint(bytes, at)?;
    Some(Slot { count, with_amount, sum })
}

fn decode_slots(bytes: &[u8]) -> Option<Vec<(u8, Slot)>> {
    let mut out = Vec::new();
    let mut at = 0;
    read_totals(bytes, &mut at)?;
    while at < bytes.len() {
        out.push(next_slot(bytes, &mut at)?);
    }
    Some(out)
}

/// The slot at `at` of a row's value, moving `at` past it.
fn next_slot(bytes: &[u8], at: &mut usize) -> Option<(u8, Slot)> {
    let slot = *bytes.get(*at)?;
    *at += 1;
    let count = u64::try_from(get_varint(bytes, at)?).ok()?;
    let with_amount = u64::try_from(get_varint(bytes, at)?).ok()?;
    let sum = get_varint(bytes, at)?;
    Some((slot, Slot { count, with_amount, sum }))
}

/// A row's slots, decoded as they are read (no allocation per row).
fn slots_of(bytes: &[u8]) -> impl Iterator<Item = Result<(u8, Slot), StoreError>> + '_ {
    let mut at = 0;
    let totals = read_totals(bytes, &mut at);
    let mut failed = totals.is_none();
    std::iter::from_fn(move || {
        if std::mem::take(&mut failed) {
            at = bytes.len();
            return Some(Err(StoreError::Corrupt("summary row".into())));
        }
        (at < bytes.len()).then(|| next_slot(bytes, &mut at).ok_or_else(|| StoreError::Corrupt("summary row".into())))
    })
}

/// A row's value: its totals, then `slot, count, refunds with amount, sum`
/// for each non-empty slot in slot order, all varints but the slot byte.
fn encode_slots(slots: &[(u8, Slot)], out: &mut Vec<u8>) {
    let mut totals = Slot::default();
    for (_, value) in slots {
        totals.count += value.count;
        totals.with_amount += value.with_amount;
        totals.sum += value.sum;
    }
    put_varint(out, u128::from(totals.count));
    put_varint(out, u128::from(totals.with_amount));
    put_varint(out, totals.sum);
    for (slot, value) in slots {
        out.push(*slot);
        put_varint(out, u128::from(value.count));
        put_varint(out, u128::from(value.with_amount));
        put_varint(out, value.sum);
    }
}

// ---------------------------------------------------------------------------
// Apply

/// A change of one slot: (count, refunds with an amount, sum).
type Delta = (i64, i64, i128);

/// Per currency: (code, refunds with an amount, sum).
type CurrencySums = Vec<([u8; 3], u64, u128)>;

/// A refund's change as the summary rows see it.
pub(crate) struct SummaryChange<'c> {
    pub(crate) tenant: TenantNo,
    pub(crate) old: Option<&'c RefundState>,
    pub(crate) new: &'c RefundState,
}

/// Applies the changes of a batch to the kept rows: deltas summed per (row,
/// slot), then each row read, changed and written once, in key order.
pub(crate) fn apply_summary_deltas<'c>(
    table: &mut Table<'_, &'static [u8], &'static [u8]>,
    changes: impl Iterator<Item = SummaryChange<'c>>,
) -> Result<(), StoreError> {
    let mut deltas: HashMap<(Vec<u8>, u8), Delta> = HashMap::default();
    let every = ROLLED_UP.map(|family| (family, EVERY_TENANT));
    for change in changes {
        let own = FAMILIES.map(|family| (family, change.tenant));
        for (family, tenant) in own.into_iter().chain(every) {
            if change.old.is_some_and(|old| !family.moved(old, change.new)) {
                continue;
            }
            if let Some(old) = change.old
                && let Some(key) = family.key_of(tenant, old)
            {
                let (c, a, s) = Family::contribution(old);
                let d = deltas.entry(key).or_default();
                *d = (d.0 - c, d.1 - a, d.2 - s);
            }
            if let Some(key) = family.key_of(tenant, change.new) {
                let (c, a, s) = Family::contribution(change.new);
                let d = deltas.entry(key).or_default();
                *d = (d.0 + c, d.1 + a, d.2 + s);
            }
        }
    }
    let mut sorted: Vec<((Vec<u8>, u8), Delta)> = deltas.into_iter().filter(|(_, d)| *d != (0, 0, 0)).collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let corrupt = |key: &[u8]| StoreError::Corrupt(format!("summary row {key:?}"));
    let mut value = Vec::new();
    let mut at = 0;
    while at < sorted.len() {
        let key = sorted[at].0.0.clone();
        let mut slots = match table.get(key.as_slice())? {
            Some(stored) => decode_slots(stored.value()).ok_or_else(|| corrupt(&key))?,
            None => Vec::new(),
        };
        while let Some(((k, slot), (dc, da, ds))) = sorted.get(at).filter(|e| e.0.0 == key) {
            let i = match slots.binary_search_by_key(slot, |(s, _)| *s) {
                Ok(i) => i,
                Err(i) => {
                    slots.insert(i, (*slot, Slot::default()));
                    i
                }
            };
            let s = &mut slots[i].1;
            let negative = || StoreError::Corrupt(format!("summary row {k:?} would go negative"));
            s.count = s.count.checked_add_signed(*dc).ok_or_else(negative)?;
            s.with_amount = s.with_amount.checked_add_signed(*da).ok_or_else(negative)?;
            s.sum = if *ds >= 0 { s.sum.checked_add(ds.unsigned_abs()) } else { s.sum.checked_sub(ds.unsigned_abs()) }
                .ok_or_else(negative)?;
            if s.count == 0 {
                slots.remove(i);
            }
            at += 1;
        }
        if slots.is_empty() {
            table.remove(key.as_slice())?;
        } else {
            value.clear();
            encode_slots(&slots, &mut value);
            table.insert(key.as_slice(), value.as_slice())?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Query

/// Sums per (period, group), merged across tenants.
#[derive(Default)]
struct Sums {
    /// Group ids by the group's values as [`Sums::group_of`] encodes them.
    group_ids: HashMap<Vec<u8>, u32>,
    groups: Vec<Vec<Option<String>>>,
    /// (period start or `i64::MIN`, group id) -> count, and per currency
    /// (refunds with an amount, sum).
    cells: HashMap<(i64, u32), (u64, CurrencySums)>,
    /// Scratch space for a group's encoded values.
    key: Vec<u8>,
}

impl Sums {
    /// The id of the group whose `group_by` values are `value(dim)`;
    /// allocates only for a group not met before.
    fn group_of<'v>(&mut self, group_by: &[Dim], value: impl Fn(Dim) -> Option<&'v [u8]>) -> Result<u32, StoreError> {
        let mut key = std::mem::take(&mut self.key);
        key.clear();
        for &dim in group_by {
            match value(dim) {
                None => key.push(0),
                Some(v) => {
                    key.push(1);
                    key.extend_from_slice(&(v.len() as u64).to_be_bytes());
                    key.extend_from_slice(v);
                }
            }
        }
        let id = match self.group_ids.get(key.as_slice()) {
            Some(&id) => id,
            None => {
                let id = u32::try_from(self.groups.len()).expect("fewer than 2^32 groups");
                let text =
                    |v: &[u8]| String::from_utf8(v.to_vec()).map_err(|_| StoreError::Corrupt("summary row".into()));
                let values = group_by.iter().map(|d| value(*d).map(text).transpose()).collect::<Result<_, _>>()?;
                self.groups.push(values);
                self.group_ids.insert(key.clone(), id);
                id
            }
        };
        self.key = key;
        Ok(id)
    }

    /// The group of a kept row's dimension part (`None`: the filter
    /// excludes the row).
    fn row_group(
        &mut self,
        dims_bytes: &[u8],
        full: bool,
        filter: &Filter,
        group_by: &[Dim],
    ) -> Result<Option<u32>, StoreError> {
        let dims = parse_dims(dims_bytes, full).ok_or_else(|| StoreError::Corrupt("summary row".into()))?;
        if !dims.matches(filter) {
            return Ok(None);
        }
        self.group_of(group_by, |d| dims.value(d)).map(Some)
    }

    fn add(&mut self, period: i64, group: u32, currency: Option<[u8; 3]>, slot: Slot) {
        let cell = self.cells.entry((period, group)).or_default();
        cell.0 += slot.count;
        let Some(currency) = currency.filter(|_| slot.with_amount > 0) else { return };
        match cell.1.iter_mut().find(|(c, _, _)| *c == currency) {
            Some(entry) => {
                entry.1 += slot.with_amount;
                entry.2 += slot.sum;
            }
            None => cell.1.push((currency, slot.with_amount, slot.sum)),
        }
    }
}

/// A small cache of the periods met last (a day's slots fall in one to a
/// few periods), so that the zone rules run once per period, not per slot.
struct Periods<'a> {
    period_of: Option<PeriodOf<'a>>,
    recent: Vec<(i64, i64)>,
}

impl Periods<'_> {
    /// The period `[start, end)` holding all of `[a, b]`, or `None` when an
    /// edge lies inside.
    fn range_of(&mut self, a: i64, b: i64) -> Option<(i64, i64)> {
        let Some(period_of) = self.period_of else { return Some((i64::MIN, i64::MAX)) };
        let found = match self.recent.iter().find(|(s, e)| (*s..*e).contains(&a)) {
            Some(&p) => p,
            None => {
                let p = period_of(a);
                if self.recent.len() >= 8 {
                    self.recent.remove(0);
                }
                self.recent.push(p);
                p
            }
        };
        (found.0 <= a && b < found.1).then_some(found)
    }

    fn of(&mut self, t: i64) -> i64 {
        match self.range_of(t, t) {
            Some((start, _)) => start,
            // A rule whose period does not hold the instant it was asked
            // about (it should not happen): that period, uncached.
            None => self.period_of.map_or(i64::MIN, |period_of| period_of(t).0),
        }
    }
}

/// The kept family that answers a request, if any.
fn family_for(filter: &Filter, group_by: &[Dim], periods: bool) -> Option<Family> {
    if !filter.exact.is_empty() {
        return None;
    }
    let narrow = group_by.iter().all(|d| matches!(d, Dim::Status | Dim::Currency))
        && filter.processors.is_empty()
        && filter.payment_method_types.is_empty()
        && filter.product_types.is_empty();
    let created = filter.created_min.is_some() || filter.created_max.is_some();
    if filter.amount_min.is_some() || filter.amount_max.is_some() {
        return (narrow && !periods && !created).then_some(AMOUNTS);
    }
    Some(match (narrow, periods || created) {
        (true, false) => TOTALS,
        (true, true) => DAYS,
        (false, _) => FULL,
    })
}

/// The summary of `request` over `tenants`, within one read transaction (so
/// that it agrees with a list's `count` from the same snapshot).
pub fn summary_in(
    txn: &ReadTransaction,
    tenants: &[TenantNo],
    request: &SummaryRequest<'_>,
) -> Result<Summary, StoreError> {
    let filter = &request.filter.deduplicated();
    let mut sums = Sums::default();
    if !filter.can_match() {
        return Ok(finish(sums, request));
    }
    let mut periods = Periods { period_of: request.period_of, recent: Vec::new() };
    let family = family_for(filter, request.group_by, request.period_of.is_some());
    let refunds = txn.open_table(tables::REFUNDS)?;
    let summaries = txn.open_table(tables::SUMMARIES)?;
    let created = IndexTables::open(txn, Index::Created)?;
    // Refunds of slots that a period edge or a created bound cuts, counted
    // one by one through the created index.
    // A refund read one by one: added when it matches the filter.
    let walk = |sums: &mut Sums, periods: &mut Periods<'_>, state: &RefundState| match filter.matches(state) {
        true => add_refund(sums, periods, request.group_by, state),
        false => Ok(()),
    };
    let walk_slots = |tenant: TenantNo, ranges: &[(i64, i64)], sums: &mut Sums, periods: &mut Periods<'_>| {
        for &(from, to) in ranges {
            let (from, to) = (Timestamp::from_millis(from), Timestamp::from_millis(to));
            query::for_each_with_value(&created, Index::Created, tenant, &[], from, to, |_, id, home| {
                walk(sums, periods, &load(&refunds, tenant, home, id)?)
            })?;
        }
        Ok::<_, StoreError>(())
    };
    if let Some(family) = family.filter(|f| ROLLED_UP.contains(f))
        && tenants.len() > 1
        && every_tenant_in(txn, tenants)?
    {
        let splits = read_family(&summaries, EVERY_TENANT, family, filter, request.group_by, &mut periods, &mut sums)?;
        let splits = merge_ranges(splits);
        for &tenant in tenants {
            walk_slots(tenant, &splits, &mut sums, &mut periods)?;
        }
        return Ok(finish(sums, request));
    }
    for &tenant in tenants {
        match family {
            Some(AMOUNTS) => {
                let edges = read_amounts(&summaries, tenant, filter, request.group_by, &mut sums)?;
                let table = IndexTables::open(txn, Index::Amount)?;
                for (low, high) in edges {
                    let edge = Filter { amount_min: Some(low), amount_max: Some(high), ..filter.clone() };
                    query::for_each_in_amount_range(&table, tenant, &edge, |id, home| {
                        walk(&mut sums, &mut periods, &load(&refunds, tenant, home, id)?)
                    })?;
                }
            }
            Some(family) => {
                let splits =
                    read_family(&summaries, tenant, family, filter, request.group_by, &mut periods, &mut sums)?;
                walk_slots(tenant, &merge_ranges(splits), &mut sums, &mut periods)?;
            }
            None if filter.only_amount_and_created() => {
                let table = IndexTables::open(txn, Index::Amount)?;
                query::for_each_in_amount_range(&table, tenant, filter, |id, home| {
                    walk(&mut sums, &mut periods, &load(&refunds, tenant, home, id)?)
                })?;
            }
            None => {
                let counts = txn.open_table(tables::COUNTS)?;
                let counter = |dim: CountDim, values: &[Vec<u8>]| -> Result<u64, StoreError> {
                    let mut n = 0;
                    for value in values {
                        n += counts.get(keys::count_key(tenant, dim, value).as_slice())?.map_or(0, |v| v.value());
                    }
                    Ok(n)
                };
                let plan = query::plan(filter, &counter)?;
                let table = IndexTables::open(txn, plan.index)?;
                for value in &plan.values {
                    query::for_each_with_value(
                        &table,
                        plan.index,
                        tenant,
                        value,
                        filter.created_min,
                        filter.created_max,
                        |_, id, home| walk(&mut sums, &mut periods, &load(&refunds, tenant, home, id)?),
                    )?;
                }
            }
        }
    }
    Ok(finish(sums, request))
}

/// Whether `tenants` are every tenant the snapshot holds (then the
/// [`EVERY_TENANT`] rows hold exactly their sums).
fn every_tenant_in(txn: &ReadTransaction, tenants: &[TenantNo]) -> Result<bool, StoreError> {
    let mut stored: Vec<u32> = crate::read::tenants_in(txn)?.into_iter().map(|(_, n)| n.0).collect();
    let mut asked: Vec<u32> = tenants.iter().map(|t| t.0).collect();
    asked.sort_unstable();
    asked.dedup();
    stored.sort_unstable();
    Ok(asked == stored)
}

fn load(
    refunds: &ReadOnlyTable<&'static [u8], &'static [u8]>,
    tenant: TenantNo,
    home: u32,
    refund_id: &str,
) -> Result<RefundState, StoreError> {
    let row = refunds
        .get(keys::row_key(tenant, home, refund_id).as_slice())?
        .ok_or_else(|| StoreError::Corrupt(format!("index names a missing refund {refund_id}")))?;
    decode_row_state(row.value())
}

fn add_refund(
    sums: &mut Sums,
    periods: &mut Periods<'_>,
    group_by: &[Dim],
    state: &RefundState,
) -> Result<(), StoreError> {
    let period = periods.of(state.created_at().millis());
    let group = sums.group_of(group_by, |d| d.value_of(state).map(str::as_bytes))?;
    let (_, with_amount, sum) = Family::contribution(state);
    let currency = state.currency().and_then(|c| <[u8; 3]>::try_from(c.as_bytes()).ok());
    let slot = Slot { count: 1, with_amount: with_amount as u64, sum: sum.unsigned_abs() };
    sums.add(period, group, currency, slot);
    Ok(())
}

/// The row number of a kept row's key (after the tenant and the family tag).
fn row_of(key: &[u8]) -> Result<i64, StoreError> {
    let row_bytes: [u8; 8] =
        key.get(5..13).and_then(|b| b.try_into().ok()).ok_or_else(|| StoreError::Corrupt("summary row".into()))?;
    Ok((u64::from_be_bytes(row_bytes) ^ (1 << 63)) as i64)
}

/// The currency of a kept row's dimension part.
fn row_currency(dims_bytes: &[u8]) -> Option<[u8; 3]> {
    dims_bytes.get(1..4).and_then(|c| <[u8; 3]>::try_from(c).ok()).filter(|c| *c != NO_CURRENCY)
}

/// Adds a tenant's kept rows of `family` to `sums`; returns the slot ranges
/// (inclusive ms) that must be counted refund by refund instead.
fn read_family(
    table: &ReadOnlyTable<&'static [u8], &'static [u8]>,
    tenant: TenantNo,
    family: Family,
    filter: &Filter,
    group_by: &[Dim],
    periods: &mut Periods<'_>,
    sums: &mut Sums,
) -> Result<BTreeSet<(i64, i64)>, StoreError> {
    let created_min = filter.created_min.map_or(i64::MIN, Timestamp::millis);
    let created_max = filter.created_max.map_or(i64::MAX, Timestamp::millis);
    let first_row = filter.created_min.map_or(i64::MIN, |t| family.place(t.millis()).0);
    let last_row = filter.created_max.map_or(i64::MAX, |t| family.place(t.millis()).0);
    let start = family.row_prefix(tenant, if family.row_ms == 0 { 0 } else { first_row });
    let mut end = tenant.prefix().to_vec();
    end.push(family.tag + 1);
    let mut splits = BTreeSet::new();
    let corrupt = || StoreError::Corrupt("summary row".into());
    let mut visit = |key: &[u8], value: &[u8]| -> Result<bool, StoreError> {
        let row = row_of(key)?;
        if row > last_row {
            return Ok(false);
        }
        let dims_bytes = &key[13..];
        let Some(group) = sums.row_group(dims_bytes, family.full, filter, group_by)? else { return Ok(true) };
        let currency = row_currency(dims_bytes);
        // A row wholly inside the bounds and one period (a UTC day of a
        // UTC summary) is added in one step.
        let (row_first, _) = family.slot_range(row, 0);
        let (_, row_last) = family.slot_range(row, u8::try_from(family.slots() - 1).expect("at most 96 slots"));
        if row_first >= created_min
            && row_last <= created_max
            && let Some((period, _)) = periods.range_of(row_first, row_last)
        {
            let total = read_totals(value, &mut 0).ok_or_else(corrupt)?;
            sums.add(period, group, currency, total);
            return Ok(true);
        }
        // Otherwise slot by slot, consecutive slots of one period summed
        // before they are added.
        let mut run: Option<((i64, i64), Slot)> = None;
        for slot in slots_of(value) {
            let (slot, value) = slot?;
            let (a, b) = family.slot_range(row, slot);
            if b < created_min || a > created_max {
                continue;
            }
            let inside = a >= created_min && b <= created_max;
            if inside
                && let Some(((start, end), total)) = &mut run
                && *start <= a
                && b < *end
            {
                *total += value;
                continue;
            }
            if let Some(((start, _), total)) = run.take() {
                sums.add(start, group, currency, total);
            }
            match periods.range_of(a, b).filter(|_| inside) {
                Some(period) => run = Some((period, value)),
                None => {
                    splits.insert((a.max(created_min), b.min(created_max)));
                }
            }
        }
        if let Some(((start, _), total)) = run {
            sums.add(start, group, currency, total);
        }
        Ok(true)
    };
    let mut statuses: Vec<u8> = filter.statuses.iter().map(|s| s.code()).collect();
    statuses.sort_unstable();
    statuses.dedup();
    if statuses.is_empty() {
        for entry in table.range::<&[u8]>((Bound::Included(start.as_slice()), Bound::Excluded(end.as_slice())))? {
            let (key, value) = entry?;
            if !visit(key.value(), value.value())? {
                break;
            }
        }
        return Ok(splits);
    }
    // A status filter reads only its statuses' rows: status follows the row
    // number in the key, so each row is one seek per status (and one to the
    // next row that exists), instead of every row of every status.
    let mut next = start;
    loop {
        let Some(first) =
            table.range::<&[u8]>((Bound::Included(next.as_slice()), Bound::Excluded(end.as_slice())))?.next()
        else {
            break;
        };
        let row = row_of(first?.0.value())?;
        if row > last_row {
            break;
        }
        for &status in &statuses {
            let mut from = family.row_prefix(tenant, row);
            from.push(status);
            let mut to = family.row_prefix(tenant, row);
            to.push(status + 1);
            for entry in table.range::<&[u8]>((Bound::Included(from.as_slice()), Bound::Excluded(to.as_slice())))? {
                let (key, value) = entry?;
                visit(key.value(), value.value())?;
            }
        }
        match row.checked_add(1) {
            Some(after) if family.row_ms != 0 => next = family.row_prefix(tenant, after),
            _ => break,
        }
    }
    Ok(splits)
}

/// Adds a tenant's [`AMOUNTS`] rows of the buckets wholly inside the
/// filter's amount bounds to `sums`; returns the amount ranges (inclusive)
/// of the buckets a bound cuts, to be counted refund by refund.
fn read_amounts(
    table: &ReadOnlyTable<&'static [u8], &'static [u8]>,
    tenant: TenantNo,
    filter: &Filter,
    group_by: &[Dim],
    sums: &mut Sums,
) -> Result<Vec<(u64, u64)>, StoreError> {
    let (min, max) = (filter.amount_min.unwrap_or(0), filter.amount_max.unwrap_or(u64::MAX));
    let (first, last) = (amount_bucket(min), amount_bucket(max));
    let start = AMOUNTS.row_prefix(tenant, i64::from(first));
    let end = AMOUNTS.row_prefix(tenant, i64::from(last) + 1);
    let mut edges = Vec::new();
    for entry in table.range::<&[u8]>((Bound::Included(start.as_slice()), Bound::Excluded(end.as_slice())))? {
        let (key, value) = entry?;
        let (key, value) = (key.value(), value.value());
        let bucket = u16::try_from(row_of(key)?).map_err(|_| StoreError::Corrupt("summary amount bucket".into()))?;
        let (low, high) = bucket_range(bucket);
        if low < min || high > max {
            let edge = (low.max(min), high.min(max));
            if edges.last() != Some(&edge) {
                edges.push(edge);
            }
            continue;
        }
        let dims_bytes = &key[13..];
        let Some(group) = sums.row_group(dims_bytes, false, filter, group_by)? else { continue };
        let total = read_totals(value, &mut 0).ok_or_else(|| StoreError::Corrupt("summary row".into()))?;
        sums.add(i64::MIN, group, row_currency(dims_bytes), total);
    }
    Ok(edges)
}

/// Adjacent or overlapping inclusive ranges joined.
fn merge_ranges(ranges: BTreeSet<(i64, i64)>) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Orders the sums: the distinct groups are sorted once, then the cells by
/// (period, group order), integers only.
fn finish(sums: Sums, request: &SummaryRequest<'_>) -> Summary {
    let rank = |dim: Dim, value: &Option<String>| -> (u8, u8) {
        match (dim, value) {
            (_, None) => (1, 0),
            (Dim::Status, Some(s)) => (0, EventType::from_status_name(s).map_or(9, EventType::rank)),
            _ => (0, 0),
        }
    };
    let mut order: Vec<u32> = (0..u32::try_from(sums.groups.len()).expect("fewer than 2^32 groups")).collect();
    order.sort_by(|&x, &y| {
        let (x, y) = (&sums.groups[x as usize], &sums.groups[y as usize]);
        for (i, dim) in request.group_by.iter().enumerate() {
            let (a, b) = (&x[i], &y[i]);
            let order = rank(*dim, a).cmp(&rank(*dim, b)).then_with(|| a.cmp(b));
            if order.is_ne() {
                return order;
            }
        }
        std::cmp::Ordering::Equal
    });
    let mut position = vec![0u32; order.len()];
    for (at, &group) in (0u32..).zip(&order) {
        position[group as usize] = at;
    }
    let values: Vec<Arc<[Option<String>]>> = sums.groups.into_iter().map(Arc::from).collect();
    let mut currencies: Vec<([u8; 3], Arc<str>)> = Vec::new();
    let mut currency = |code: [u8; 3]| -> Arc<str> {
        if let Some((_, name)) = currencies.iter().find(|(c, _)| *c == code) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(String::from_utf8_lossy(&code).as_ref());
        currencies.push((code, name.clone()));
        name
    };

    let mut total = Summary::default();
    let mut all: Vec<([u8; 3], u64, u128)> = Vec::new();
    let grouped = !request.group_by.is_empty() || request.period_of.is_some();
    let mut cells: Vec<_> = sums.cells.into_iter().filter(|(_, (count, _))| *count > 0).collect();
    cells.sort_unstable_by_key(|((period, group), _)| (*period, position[*group as usize]));
    let mut groups = Vec::with_capacity(if grouped { cells.len() } else { 0 });
    for ((period, group), (count, amounts)) in cells {
        total.count += count;
        for (code, n, sum) in &amounts {
            match all.iter_mut().find(|(c, _, _)| c == code) {
                Some(entry) => {
                    entry.1 += n;
                    entry.2 += sum;
                }
                None => all.push((*code, *n, *sum)),
            }
        }
        if grouped {
            groups.push(SummaryGroup {
                period_start: request.period_of.is_some().then_some(period),
                values: values[group as usize].clone(),
                count,
                amounts: render_amounts(amounts, &mut currency),
            });
        }
    }
    total.amounts = render_amounts(all, &mut currency);
    total.groups = groups;
    total
}

fn render_amounts(
    mut amounts: Vec<([u8; 3], u64, u128)>,
    currency: &mut impl FnMut([u8; 3]) -> Arc<str>,
) -> Vec<CurrencyAmount> {
    amounts.sort_unstable_by_key(|(c, _, _)| *c);
    amounts
        .into_iter()
        .filter(|(_, n, _)| *n > 0)
        .map(|(c, refunds, amount)| CurrencyAmount { currency: currency(c), amount, refunds })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_values_round_trip_beyond_64_bits() {
        let slots = vec![
            (0, Slot { count: 1, with_amount: 0, sum: 0 }),
            (7, Slot { count: 3, with_amount: 2, sum: u128::from(u64::MAX) * 2 }),
            // The row's totals reach the top of each type without passing it.
            (95, Slot { count: u64::MAX - 4, with_amount: u64::MAX - 2, sum: u128::MAX - u128::from(u64::MAX) * 2 }),
        ];
        let mut bytes = Vec::new();
        encode_slots(&slots, &mut bytes);
        assert_eq!(decode_slots(&bytes).unwrap(), slots);
        assert!(decode_slots(&bytes[..bytes.len() - 1]).is_none());
    }

    #[test]
    fn a_slot_lies_in_its_row_and_covers_its_width() {
        for family in [DAYS, FULL] {
            for ms in [-DAY_MS - 1, -1, 0, 1, 15 * 60_000 - 1, 15 * 60_000, DAY_MS * 33 + 5] {
                let (row, slot) = family.place(ms);
                let (a, b) = family.slot_range(row, slot);
                assert!(a <= ms && ms <= b, "{family:?} {ms}: {a}..={b}");
                assert_eq!(b - a + 1, family.slot_ms);
            }
        }
        assert_eq!(DAYS.place(DAY_MS - 1).1, 95);
        assert_eq!(FULL.place(32 * DAY_MS - 1).1, 31);
    }

    #[test]
    fn amount_buckets_tile_the_amounts_in_order_and_stay_narrow() {
        let mut edges = vec![0, 1, 127, 128, 129, 130, 255, 256, 1000, 1023, 1024, 4999, 5000, u64::MAX - 1, u64::MAX];
        edges.extend((7..64).flat_map(|e| [(1u64 << e) - 1, 1 << e, (1 << e) + 1, 3 << (e - 1)]));
        for amount in edges {
            let bucket = amount_bucket(amount);
            let (low, high) = bucket_range(bucket);
            assert!(low <= amount && amount <= high, "{amount}: bucket {bucket} is {low}..={high}");
            assert!((high - low) <= low / 64, "{amount}: bucket {bucket} is {low}..={high}");
            if low > 0 {
                assert_eq!(bucket_range(bucket - 1).1, low - 1, "bucket {bucket} follows the one before");
            }
        }
        assert_eq!(amount_bucket(u64::MAX), 3775);
        assert_eq!(bucket_range(3775).1, u64::MAX);
    }

    #[test]
    fn ranges_merge_when_they_touch() {
        let ranges: BTreeSet<(i64, i64)> = [(0, 9), (10, 19), (30, 39), (35, 36)].into_iter().collect();
        assert_eq!(merge_ranges(ranges), vec![(0, 19), (30, 39)]);
    }
}
