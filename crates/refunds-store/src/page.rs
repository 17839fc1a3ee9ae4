//! Pages of refunds in (created_at, tenant_id, id) order, either direction,
//! from a read snapshot.
//!
//! Per tenant, the planner's index yields candidates already in created
//! order for each value (several values, such as `status=failed,cancelled`,
//! are merged); windowed indexes, whose values match few refunds, are read
//! whole and sorted. Tenants are merged by the full sort key. Candidates are
//! checked against the whole filter on their row.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::Bound;

use redb::{ReadOnlyTable, ReadTransaction};
use refunds_domain::{RefundState, Timestamp};

use crate::keys::{self, CountDim, Index, TenantNo};
use crate::query::{Filter, for_each_with_value, plan};
use crate::read::decode_row_state;
use crate::tiers::IndexTables;
use crate::{StoreError, tables};

/// The sort key of a refund: (created_at, tenant_id, id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SortKey {
    pub created_at: Timestamp,
    pub tenant_id: String,
    pub id: String,
}

impl SortKey {
    pub fn of(state: &RefundState) -> SortKey {
        SortKey { created_at: state.created_at(), tenant_id: state.tenant_id.clone(), id: state.id.clone() }
    }
}

/// The order refunds are walked in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ascending,
    Descending,
}

pub struct PageRequest<'a> {
    /// The tenants in scope, with their ids.
    pub tenants: &'a [(String, TenantNo)],
    pub filter: &'a Filter,
    pub direction: Direction,
    /// Start beyond this key, in the walk's direction.
    pub after: Option<&'a SortKey>,
    /// Whether the refund at `after` itself, when it matches, starts the page.
    pub include_after: bool,
    /// Matches to skip first (offset pagination).
    pub skip: u64,
    /// Matches to return at most.
    pub take: usize,
}

/// One candidate from one ordered stream: (created_at, tenant index, id).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    created_at: Timestamp,
    tenant: usize,
    id: String,
    /// Where the refund's row lives (the index entry's value).
    home: u32,
    /// The index key alone proves the match (no row check needed).
    keys_suffice: bool,
}

/// Returns up to `take` matching refunds in the walk's order.
pub fn page_in(txn: &ReadTransaction, request: &PageRequest<'_>) -> Result<Vec<RefundState>, StoreError> {
    let filter = &request.filter.deduplicated();
    if !filter.can_match() || request.take == 0 {
        return Ok(Vec::new());
    }
    let counts = txn.open_table(tables::COUNTS)?;
    let refunds = txn.open_table(tables::REFUNDS)?;
    let descending = request.direction == Direction::Descending;
    // Tenants in sort-key order, so ties on created_at break by tenant id.
    let mut tenants: Vec<&(String, TenantNo)> = request.tenants.iter().collect();
    tenants.sort();

    let mut streams: Vec<Box<dyn Iterator<Item = Result<Candidate, StoreError>>>> = Vec::new();
    let mut pre_skipped = 0;
    for (position, (_, tenant)) in tenants.iter().enumerate() {
        let tenant = *tenant;
        // Narrow the created range by the starting key where it is this tenant's.
        let (mut min, mut max) = (filter.created_min, filter.created_max);
        if let Some(after) = request.after {
            match request.direction {
                Direction::Ascending => min = Some(min.map_or(after.created_at, |m| m.max(after.created_at))),
                Direction::Descending => max = Some(max.map_or(after.created_at, |m| m.min(after.created_at))),
            }
        }
        let counter = |dim: CountDim, values: &[Vec<u8>]| -> Result<u64, StoreError> {
            let mut n = 0;
            for value in values {
                n += counts.get(keys::count_key(tenant, dim, value).as_slice())?.map_or(0, |v| v.value());
            }
            Ok(n)
        };
        if filter.only_amount_and_created() {
            let table = IndexTables::open(txn, Index::Amount)?;
            let walk = AmountWindows {
                table,
                tenant,
                position,
                amounts: (filter.amount_min.unwrap_or(0), filter.amount_max.unwrap_or(u64::MAX)),
                created: (min, max),
                descending,
                next: None,
                buffer: Vec::new().into_iter(),
            };
            streams.push(Box::new(walk.start()?));
            continue;
        }
        let plan = plan(filter, &counter)?;
        let keys_suffice = filter.answered_by_keys(plan.index);
        let table = IndexTables::open(txn, plan.index)?;
        for value in &plan.values {
            if plan.index.windowed() {
                let mut found = Vec::new();
                for_each_with_value(&table, plan.index, tenant, value, min, max, |created_at, id, home| {
                    found.push(Candidate { created_at, tenant: position, id: id.to_owned(), home, keys_suffice });
                    Ok(())
                })?;
                found.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
                if descending {
                    found.reverse();
                }
                streams.push(Box::new(found.into_iter().map(Ok)));
                continue;
            }
            let prefix = keys::index_prefix(tenant, value);
            let lower = match min {
                Some(t) => [prefix.as_slice(), &keys::time_bytes(t)].concat(),
                None => prefix.clone(),
            };
            let upper = match max.and_then(|t| Timestamp::from_millis(t.millis() + 1)) {
                Some(t) => [prefix.as_slice(), &keys::time_bytes(t)].concat(),
                None => prefix_end(&prefix),
            };
            let mut range =
                table.main().range::<&[u8]>((Bound::Included(lower.as_slice()), Bound::Excluded(upper.as_slice())))?;
            // An offset into the only stream, whose keys prove the match, is
            // skipped on the range itself: no candidate is built for it.
            if keys_suffice && request.after.is_none() && request.tenants.len() == 1 && plan.values.len() == 1 {
                while pre_skipped < request.skip {
                    let entry = if descending { range.next_back() } else { range.next() };
                    let Some(entry) = entry else { break };
                    entry?;
                    pre_skipped += 1;
                }
            }
            let prefix_len = prefix.len();
            let entries = range.map(move |entry| {
                let (key, home) = entry?;
                let (created_at, id) = keys::split_index_key(key.value(), prefix_len)
                    .ok_or_else(|| StoreError::Corrupt("index key".into()))?;
                Ok(Candidate { created_at, tenant: position, id: id.to_owned(), home: home.value(), keys_suffice })
            });
            if descending {
                streams.push(Box::new(entries.rev()));
            } else {
                streams.push(Box::new(entries));
            }
        }
    }

    let mut merge = Merge::new(streams, descending)?;
    let mut skipped = pre_skipped;
    let mut out = Vec::with_capacity(request.take.min(1024));
    while let Some(candidate) = merge.next()? {
        let tenant_id = &tenants[candidate.tenant].0;
        if let Some(after) = request.after {
            let key = (candidate.created_at, tenant_id.as_str(), candidate.id.as_str());
            let bound = (after.created_at, after.tenant_id.as_str(), after.id.as_str());
            let beyond = if descending { key < bound } else { key > bound } || request.include_after && key == bound;
            if !beyond {
                continue;
            }
        }
        // Offsets skip on keys alone when the keys prove the match.
        if candidate.keys_suffice && skipped < request.skip {
            skipped += 1;
            continue;
        }
        let tenant = tenants[candidate.tenant].1;
        let row = refunds
            .get(keys::row_key(tenant, candidate.home, &candidate.id).as_slice())?
            .ok_or_else(|| StoreError::Corrupt(format!("index names a missing refund {}", candidate.id)))?;
        let state = decode_row_state(row.value())?;
        if !candidate.keys_suffice && !filter.matches(&state) {
            continue;
        }
        if skipped < request.skip {
            skipped += 1;
            continue;
        }
        out.push(state);
        if out.len() == request.take {
            break;
        }
    }
    Ok(out)
}

/// The refunds of one tenant with an amount within bounds (and created
/// within bounds), in walk order, from the amount index: one created window
/// at a time, the first in the walk's direction first, each window's matches
/// sorted by (created_at, id). The keys prove the match, so a page of 20
/// reads the matches of a window or two and 20 rows, where walking refunds
/// by created_at would read every refund's row until 20 match.
struct AmountWindows {
    /// Both tiers of the amount index.
    table: IndexTables,
    tenant: TenantNo,
    position: usize,
    amounts: (u64, u64),
    created: (Option<Timestamp>, Option<Timestamp>),
    descending: bool,
    /// The next window to read, if any is left within the created bounds.
    next: Option<u32>,
    buffer: std::vec::IntoIter<Candidate>,
}

impl AmountWindows {
    /// Positions the walk on its first window.
    fn start(mut self) -> Result<AmountWindows, StoreError> {
        let bits = Index::Amount.window_bits();
        let first = if self.descending {
            self.created.1.map_or(u32::MAX, |t| keys::window_of(t, bits))
        } else {
            self.created.0.map_or(0, |t| keys::window_of(t, bits))
        };
        self.next = self.existing_window(first)?;
        Ok(self)
    }

    /// The first window at or beyond `from`, in the walk's direction, that
    /// holds keys of the tenant in either tier and lies within the created
    /// bounds.
    fn existing_window(&self, from: u32) -> Result<Option<u32>, StoreError> {
        let mut nearest: Option<u32> = None;
        for table in self.table.tiers() {
            if let Some(window) = self.existing_window_in(table, from)? {
                nearest = Some(match nearest {
                    Some(other) if self.descending => other.max(window),
                    Some(other) => other.min(window),
                    None => window,
                });
            }
        }
        Ok(nearest)
    }

    fn existing_window_in(
        &self,
        table: &ReadOnlyTable<&'static [u8], u32>,
        from: u32,
    ) -> Result<Option<u32>, StoreError> {
        let prefix = self.tenant.prefix();
        let found = if self.descending {
            // The last key before the window after `from`.
            let end = match from.checked_add(1) {
                Some(after) => keys::windowed_prefix(self.tenant, after, &[]),
                None => prefix_end(&prefix),
            };
            table.range::<&[u8]>((Bound::Included(prefix.as_slice()), Bound::Excluded(end.as_slice())))?.next_back()
        } else {
            let at = keys::windowed_prefix(self.tenant, from, &[]);
            table.range::<&[u8]>((Bound::Included(at.as_slice()), Bound::Unbounded))?.next()
        };
        let Some(entry) = found else { return Ok(None) };
        let (key, _) = entry?;
        let key = key.value();
        if !key.starts_with(&prefix) {
            return Ok(None);
        }
        let window = keys::window_of_key(key).ok_or_else(|| StoreError::Corrupt("index key".into()))?;
        let bits = Index::Amount.window_bits();
        let inside = if self.descending {
            self.created.0.is_none_or(|t| window >= keys::window_of(t, bits))
        } else {
            self.created.1.is_none_or(|t| window <= keys::window_of(t, bits))
        };
        Ok(inside.then_some(window))
    }

    /// The matches of `window` in both tiers, sorted in the walk's order.
    fn read(&self, window: u32) -> Result<Vec<Candidate>, StoreError> {
        let mut found = Vec::new();
        for table in self.table.tiers() {
            self.read_in(table, window, &mut found)?;
        }
        found.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        if self.descending {
            found.reverse();
        }
        Ok(found)
    }

    fn read_in(
        &self,
        table: &ReadOnlyTable<&'static [u8], u32>,
        window: u32,
        found: &mut Vec<Candidate>,
    ) -> Result<(), StoreError> {
        let (min, max) = self.amounts;
        let start = keys::windowed_prefix(self.tenant, window, &keys::amount_value(min));
        for entry in table.range::<&[u8]>((Bound::Included(start.as_slice()), Bound::Unbounded))? {
            let (key, home) = entry?;
            let key = key.value();
            // Past `tenant | window`: another window or tenant.
            if key.get(..8) != start.get(..8) {
                break;
            }
            let (amount, created_at, id) =
                keys::split_amount_key(key).ok_or_else(|| StoreError::Corrupt("index key".into()))?;
            if amount > max {
                break;
            }
            if self.created.0.is_none_or(|t| created_at >= t) && self.created.1.is_none_or(|t| created_at <= t) {
                found.push(Candidate {
                    created_at,
                    tenant: self.position,
                    id: id.to_owned(),
                    home: home.value(),
                    keys_suffice: true,
                });
            }
        }
        Ok(())
    }

    fn step(&mut self) -> Result<Option<Candidate>, StoreError> {
        loop {
            if let Some(candidate) = self.buffer.next() {
                return Ok(Some(candidate));
            }
            let Some(window) = self.next else { return Ok(None) };
            self.buffer = self.read(window)?.into_iter();
            let beyond = if self.descending { window.checked_sub(1) } else { window.checked_add(1) };
            self.next = match beyond {
                Some(from) => self.existing_window(from)?,
                None => None,
            };
        }
    }
}

impl Iterator for AmountWindows {
    type Item = Result<Candidate, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step().transpose()
    }
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// K-way merge of ordered candidate streams by (created_at, tenant, id).
struct Merge {
    streams: Vec<Box<dyn Iterator<Item = Result<Candidate, StoreError>>>>,
    heap: BinaryHeap<HeapItem>,
}

struct HeapItem {
    candidate: Candidate,
    stream: usize,
    descending: bool,
}

impl HeapItem {
    fn key(&self) -> (Timestamp, usize, &str) {
        (self.candidate.created_at, self.candidate.tenant, &self.candidate.id)
    }
}

impl PartialEq for HeapItem {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for HeapItem {}

impl PartialOrd for HeapItem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for HeapItem {
    /// BinaryHeap pops the greatest: the smallest key when ascending.
    fn cmp(&self, other: &Self) -> Ordering {
        let order = self.key().cmp(&other.key());
        if self.descending { order } else { order.reverse() }
    }
}

impl Merge {
    fn new(
        mut streams: Vec<Box<dyn Iterator<Item = Result<Candidate, StoreError>>>>,
        descending: bool,
    ) -> Result<Merge, StoreError> {
        let mut heap = BinaryHeap::with_capacity(streams.len());
        for (stream, iter) in streams.iter_mut().enumerate() {
            if let Some(candidate) = iter.next().transpose()? {
                heap.push(HeapItem { candidate, stream, descending });
            }
        }
        Ok(Merge { streams, heap })
    }

    fn next(&mut self) -> Result<Option<Candidate>, StoreError> {
        let Some(top) = self.heap.pop() else { return Ok(None) };
        if let Some(candidate) = self.streams[top.stream].next().transpose()? {
            self.heap.push(HeapItem { candidate, stream: top.stream, descending: top.descending });
        }
        Ok(Some(top.candidate))
    }
}
