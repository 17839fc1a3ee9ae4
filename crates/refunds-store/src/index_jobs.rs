//! Step three of applying a batch: the index entries and the counters of the
//! refunds the batch changed. Each index table and the counters table is one
//! job; this thread and a worker take jobs in turn, each job owning its table
//! (a redb write transaction lets distinct tables be mutated from distinct
//! threads), and each job writes its keys sorted, by cursor runs.

use std::ops::{Bound, Range};

// The batch-local maps hash millions of short keys per second; foldhash is
// several times cheaper than SipHash and they face no untrusted key choice
// that could degrade them beyond one batch.
use foldhash::HashMap;
use redb::{CursorError, ReadableTable, Table, WriteTransaction};
use refunds_domain::{RefundState, TextField};

use crate::keys::{self, CountDim, Index, TenantNo};
use crate::tiers;
use crate::{StoreError, tables};
use crate::{histogram, summary};

/// A refund whose state a batch changed.
pub(crate) struct Change {
    pub(crate) tenant: TenantNo,
    pub(crate) home: u32,
    pub(crate) old: Option<RefundState>,
    pub(crate) new: RefundState,
}

/// Writes the index entries and the counter rows of `changes`: every table
/// is a job, taken by whichever of this thread and a worker is free.
pub(crate) fn write_index_entries_and_counts(txn: &WriteTransaction, changes: &[Change]) -> Result<(), StoreError> {
    let mut jobs = Vec::with_capacity(INDEX_JOB_ORDER.len() + 1);
    jobs.push(IndexJob::Counts(txn.open_table(tables::COUNTS)?));
    jobs.push(IndexJob::Summaries(txn.open_table(tables::SUMMARIES)?));
    for index in INDEX_JOB_ORDER {
        let table = txn.open_table(index.table().expect("listed indexes have tables"))?;
        let recent = index.recent_table().map(|recent| txn.open_table(recent)).transpose()?;
        jobs.push(IndexJob::Entries(index, table, recent));
    }
    jobs.reverse();
    let jobs = std::sync::Mutex::new(jobs);
    let run = || run_index_jobs(&jobs, changes);
    std::thread::scope(|indexes| {
        let worker = indexes.spawn(run);
        let here = run();
        worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)).and(here)
    })
}

/// The order in which the index jobs are taken, after the counters (the
/// longest job): by the time each took in a profile of 912,612 generated
/// events, longest first, so that the two threads finish close together
/// (the spread indexes cost about three times the low-cardinality ones).
const INDEX_JOB_ORDER: [Index; 12] = [
    Index::Amount,
    Index::Text(TextField::TransactionId),
    Index::Text(TextField::OrderNo),
    Index::Text(TextField::ExternalRefundId),
    Index::Text(TextField::ReferenceId),
    Index::Text(TextField::StoreId),
    Index::Created,
    Index::Status,
    Index::Currency,
    Index::Text(TextField::Processor),
    Index::Text(TextField::PaymentMethodType),
    Index::Text(TextField::ProductType),
];

/// One table's share of step three.
enum IndexJob<'t> {
    /// An index, with its recent tier if it has one (see `tiers`).
    Entries(Index, Table<'t, &'static [u8], u32>, Option<Table<'t, &'static [u8], u32>>),
    Counts(Table<'t, &'static [u8], u64>),
    Summaries(Table<'t, &'static [u8], &'static [u8]>),
}

/// Takes jobs off the shared stack (its end is the next job) until none is
/// left. Two threads run this at once: whichever is free takes the next
/// table, so the split follows the machine rather than a fixed guess.
fn run_index_jobs(jobs: &std::sync::Mutex<Vec<IndexJob<'_>>>, changes: &[Change]) -> Result<(), StoreError> {
    loop {
        let job = jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
        match job {
            None => return Ok(()),
            Some(IndexJob::Entries(index, table, recent)) => write_index_entries(index, table, recent, changes)?,
            Some(IndexJob::Counts(mut counts)) => apply_count_deltas(&mut counts, &count_deltas(changes))?,
            Some(IndexJob::Summaries(mut table)) => summary::apply_summary_deltas(
                &mut table,
                changes.iter().map(|c| summary::SummaryChange { tenant: c.tenant, old: c.old.as_ref(), new: &c.new }),
            )?,
        }
    }
}

/// Step three for one index table: the keys the changes remove and insert,
/// in key order. A key ends with its refund id and each refund is coalesced,
/// so no key is both removed and inserted by one batch. An index kept in two
/// tiers takes its new keys in the `recent` one, and a key is removed from
/// whichever tier holds it.
fn write_index_entries<'t>(
    index: Index,
    mut table: Table<'t, &'static [u8], u32>,
    mut recent: Option<Table<'t, &'static [u8], u32>>,
    changes: &[Change],
) -> Result<(), StoreError> {
    // Every key of the batch in one buffer, named by ranges: two keys per
    // change and index would otherwise be two allocations.
    let mut keys: Vec<u8> = Vec::with_capacity(changes.len() * 48);
    let mut old_key: Vec<u8> = Vec::with_capacity(128);
    let mut removes: Vec<Range<usize>> = Vec::new();
    // (key, home, created_at in ms) of every key inserted.
    let mut inserts: Vec<(Range<usize>, u32, i64)> = Vec::new();
    for change in changes {
        let start = keys.len();
        let has_new = index.write_key(change.tenant, &change.new, &mut keys);
        old_key.clear();
        let has_old = change.old.as_ref().is_some_and(|old| index.write_key(change.tenant, old, &mut old_key));
        if has_old && has_new && old_key[..] == keys[start..] {
            keys.truncate(start);
            continue;
        }
        if has_new {
            inserts.push((start..keys.len(), change.home, change.new.created_at().millis()));
        }
        if has_old {
            let start = keys.len();
            keys.extend_from_slice(&old_key);
            removes.push(start..keys.len());
        }
    }
    let key = |range: &Range<usize>| &keys[range.clone()];
    removes.sort_unstable_by(|a, b| key(a).cmp(key(b)));
    for range in &removes {
        tiers::remove_from_either(recent.as_mut(), &mut table, &key(range))?;
    }
    inserts.sort_unstable_by(|a, b| key(&a.0).cmp(key(&b.0)));
    let entry = |(range, home, _): &(Range<usize>, u32, i64)| (key(range), *home);
    // A key already present carries the same home (it is fixed): leave it.
    let Some(recent) = recent.as_mut() else {
        insert_sorted(&mut table, &inserts, entry)?;
        return Ok(());
    };
    // Keys sort by `tenant | window` first: each run of equal heads is one
    // window's share of the batch.
    let dense_span = (1i64 << index.window_bits()) / DENSE_SHARE;
    let head = |(range, _, _): &(Range<usize>, u32, i64)| keys::windowed_head(key(range));
    let mut created: Vec<i64> = Vec::new();
    for run in inserts.chunk_by(|a, b| head(a) == head(b)) {
        // The middle 80% of the run's creation times: a late first event of
        // an old refund does not make a dense run look spread.
        created.clear();
        created.extend(run.iter().map(|&(_, _, at)| at));
        let tail = created.len() / 10;
        let low = *created.select_nth_unstable(tail).1;
        let high_at = created.len() - 1 - tail;
        let high = *created.select_nth_unstable(high_at).1;
        if high - low < dense_span {
            insert_sorted(recent, run, entry)?;
        } else {
            insert_sorted(&mut table, run, entry)?;
        }
    }
    Ok(())
}

/// A windowed index's new keys of one tenant and window go to its recent
/// tier only when the batch's share of them was created (the middle 80% of
/// them) within a `1/DENSE_SHARE` part of the window. Their window then holds many times
/// more keys than the batch brings, spread over pages the batch would
/// otherwise rewrite for a key or two each: as webhooks arrive, a refund a
/// second, a batch's new refunds were created within a few hours of a 12-day
/// window. When the batch's keys span the window (refunds spread over years,
/// a batch's new refunds over weeks), the window holds few more keys than
/// the batch brings, the batch rewrites its pages whichever tier takes the
/// keys, and the main tier spares the sweep that would rewrite them again.
/// Measured on 1M events in ordered arrival: every key sent to the recent
/// tier made the replay 18% slower; a window's keys sent there when it took
/// 64 or more of a batch's keys, also 18%.
const DENSE_SHARE: i64 = 8;

/// The counter changes of a batch, summed per counter row, sorted by key.
fn count_deltas(changes: &[Change]) -> Vec<(Vec<u8>, i64)> {
    let mut deltas: HashMap<Vec<u8>, i64> = HashMap::default();
    let mut histogram: HashMap<histogram::RowKey, i64> = HashMap::default();
    histogram.reserve(changes.len());
    let mut rows = Vec::new();
    for Change { tenant, old, new, .. } in changes {
        for dim in CountDim::ALL {
            let old_value = old.as_ref().and_then(|s| dim.value_of(s));
            let new_value = dim.value_of(new);
            if old_value == new_value {
                continue;
            }
            if let Some(v) = old_value {
                *deltas.entry(keys::count_key(*tenant, dim, &v)).or_default() -= 1;
            }
            if let Some(v) = new_value {
                *deltas.entry(keys::count_key(*tenant, dim, &v)).or_default() += 1;
            }
        }
        let (created_moved, amount_moved) = old.as_ref().map_or((true, true), |old| histogram::moved(old, new));
        for (moved, rows_of) in [
            (created_moved, histogram::created_rows as fn(TenantNo, &RefundState, &mut Vec<histogram::RowKey>)),
            (amount_moved, histogram::amount_rows),
        ] {
            if !moved {
                continue;
            }
            if let Some(old) = old {
                rows_of(*tenant, old, &mut rows);
                for key in rows.drain(..) {
                    *histogram.entry(key).or_default() -= 1;
                }
            }
            rows_of(*tenant, new, &mut rows);
            for key in rows.drain(..) {
                *histogram.entry(key).or_default() += 1;
            }
        }
    }
    let mut all: Vec<(Vec<u8>, i64)> = deltas.into_iter().filter(|(_, d)| *d != 0).collect();
    all.extend(histogram.into_iter().filter(|(_, d)| *d != 0).map(|(k, d)| (k.as_slice().to_vec(), d)));
    all.sort_unstable();
    all
}

/// Inserts entries sorted by key. Each run of keys that falls into one gap
/// between existing keys goes through one cursor (redb splices such runs into
/// the leaves instead of descending the tree for every key). A key that is
/// already present is left as it is; returns how many were.
pub(crate) fn insert_sorted<'e, V: redb::Value + 'static, E>(
    table: &mut Table<'_, &'static [u8], V>,
    entries: &'e [E],
    entry: impl Fn(&'e E) -> (&'e [u8], V::SelfType<'e>),
) -> Result<usize, StoreError> {
    let (mut next, mut present) = (0, 0);
    while let Some(first) = entries.get(next) {
        let mut cursor = table.lower_bound_mut(Bound::Included(entry(first).0))?;
        let run_start = next;
        while let Some(e) = entries.get(next) {
            let (key, value) = entry(e);
            match cursor.insert_before(key, value) {
                Ok(()) => next += 1,
                Err(CursorError::UnorderedKey) => break,
                Err(err) => return Err(redb::Error::from(err).into()),
            }
        }
        cursor.close()?;
        if next == run_start {
            // The gap's next entry is this very key: it is already there.
            next += 1;
            present += 1;
        }
    }
    Ok(present)
}

fn apply_count_deltas(counts: &mut Table<'_, &'static [u8], u64>, deltas: &[(Vec<u8>, i64)]) -> Result<(), StoreError> {
    for (key, delta) in deltas {
        let current = counts.get(key.as_slice())?.map_or(0, |v| v.value());
        let updated = current
            .checked_add_signed(*delta)
            .ok_or_else(|| StoreError::Corrupt(format!("count would go negative ({current} {delta:+})")))?;
        if updated == 0 {
            counts.remove(key.as_slice())?;
        } else {
            counts.insert(key.as_slice(), updated)?;
        }
    }
    Ok(())
}
