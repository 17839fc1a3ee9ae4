//! Two tiers for the tables whose keys land at random places: the event
//! identity slots (hashes), the refund homes (refund ids, which follow no
//! order of arrival), and the windowed indexes (order numbers, ids and
//! amounts, in no order within a created window that may hold weeks of
//! refunds).
//!
//! A copy-on-write commit rewrites every page it touches. A batch's random
//! keys touch pages all over such a table, so once the table has fewer pages
//! than the batch has keys, a commit rewrites nearly all of it, and the bytes
//! written per event grow with the store. So new keys go to a small `recent`
//! tier, and the recent tier is moved into the `main` one in one sweep once
//! it holds about `sqrt(main × b)` keys (at least `b`), for `b` about the new keys of a
//! full batch. A batch then
//! rewrites the recent tier's few pages, and every so many batches the main
//! tier's pages once, instead of most of the main tier's pages every batch.
//! That bound is the size at which the two costs are even: for `n` keys in
//! the main tier and `b` new keys per batch, a recent tier of `r` keys costs
//! about `r` (its pages) plus `n × b / r` (a sweep every `r / b` batches)
//! key-pages per batch, least at `r = sqrt(n × b)`.
//!
//! A windowed index sends to its recent tier only the keys of windows that a
//! batch fills densely (`index_jobs`, `DENSE_SHARE`); the keys of a sparse
//! window cost a page each in either tier and go straight to the main one.
//!
//! A key is in one tier only: it is looked up in the recent tier, then the
//! main one, and inserted only where neither has it. Both tiers are read from
//! one snapshot, so a sweep is atomic with the batch whose commit makes it.
//! A windowed index is read by visiting both tiers ([`IndexTables`]): every
//! reader of those indexes collects, counts or sorts what it visits, so the
//! order across tiers does not matter.
//!
//! The identity slots and the homes are looked up key by key, most of them
//! new keys; a Bloom filter of each of those two main tiers (`main_keys`)
//! spares those lookups the main tier.

use std::cmp::Ordering;
use std::iter::Peekable;
use std::ops::Range;

use redb::{
    AccessGuard, Key, Range as TableRange, ReadOnlyTable, ReadTransaction, ReadableTable, ReadableTableMetadata,
    StorageError, Table, TableDefinition, TableHandle, Value, WriteTransaction,
};

use crate::keys::Index;
use crate::main_keys::{MainFilters, MainKeys};
use crate::tables;

/// A table kept in two tiers.
pub(crate) struct Tier<K: Key + 'static, V: Value + 'static> {
    recent: TableDefinition<'static, K, V>,
    main: TableDefinition<'static, K, V>,
    /// About the new keys a full batch brings (see [`sweep_at`]).
    batch_keys: u64,
}

// Not derived: a derive would ask `K` and `V` to be `Copy`.
impl<K: Key + 'static, V: Value + 'static> Clone for Tier<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K: Key + 'static, V: Value + 'static> Copy for Tier<K, V> {}

/// Event identity slots: `tenant | xxh3-64(event id)` -> audit sequence.
/// A batch of 50,000 events claims about that many.
pub(crate) const EVENT_SLOTS: Tier<&[u8; 12], u64> =
    Tier { recent: tables::EVENT_IDS_RECENT, main: tables::EVENT_IDS, batch_keys: 1 << 16 };
/// Refund homes: `tenant | refund id` -> home. A batch names a new refund
/// for about one event in three, but sweeping as often as that asks made
/// the 1M-event replays slower (7 sweeps instead of 3, +0.2 s), so the
/// homes sweep as rarely as the identity slots.
pub(crate) const HOMES: Tier<&[u8], u32> =
    Tier { recent: tables::REFUND_HOMES_RECENT, main: tables::REFUND_HOMES, batch_keys: 1 << 16 };

/// The tiers of a windowed index (a key per new refund); `None` for the
/// other indexes.
pub(crate) fn index_tier(index: Index) -> Option<Tier<&'static [u8], u32>> {
    Some(Tier { recent: index.recent_table()?, main: index.table()?, batch_keys: 1 << 14 })
}

/// Every tiered table of the store, in one list: what the store creates is
/// what every batch settles.
fn every_tier() -> impl Iterator<Item = AnyTier> {
    [AnyTier::Slots(EVENT_SLOTS), AnyTier::Homes(HOMES)]
        .into_iter()
        .chain(Index::ALL.into_iter().filter_map(index_tier).map(AnyTier::Index))
}

/// The tiered tables, by key type and by whether a filter is kept of the
/// main tier.
enum AnyTier {
    Slots(Tier<&'static [u8; 12], u64>),
    Homes(Tier<&'static [u8], u32>),
    Index(Tier<&'static [u8], u32>),
}

/// Creates both tiers of every tiered table.
pub(crate) fn create_all(txn: &WriteTransaction) -> Result<(), redb::TableError> {
    for tier in every_tier() {
        match tier {
            AnyTier::Slots(tier) => tier.create(txn)?,
            AnyTier::Homes(tier) | AnyTier::Index(tier) => tier.create(txn)?,
        }
    }
    Ok(())
}

/// Sweeps every recent tier that has reached its bound (see [`Tier::settle`]);
/// called once a batch's keys are in, so a sweep takes them along. The
/// keys swept into the identity slots and the homes go into their filters,
/// and a filter so changed is stored in the same transaction.
pub(crate) fn settle_all(txn: &WriteTransaction, filters: &mut MainFilters) -> Result<(), redb::Error> {
    for tier in every_tier() {
        match tier {
            AnyTier::Slots(tier) => tier.settle(txn, filters.slots.as_mut())?,
            AnyTier::Homes(tier) => tier.settle(txn, filters.homes.as_mut())?,
            AnyTier::Index(tier) => tier.settle(txn, None)?,
        };
    }
    filters.save_changed(txn)
}

/// Removes `key` from whichever tier holds it; with no recent tier, from
/// the main table.
pub(crate) fn remove_from_either<'a, K: Key + 'static, V: Value + 'static>(
    recent: Option<&mut Table<'_, K, V>>,
    main: &mut Table<'_, K, V>,
    key: &K::SelfType<'a>,
) -> Result<(), StorageError> {
    let removed = match recent {
        Some(recent) => recent.remove(key)?.is_some(),
        None => false,
    };
    if !removed {
        main.remove(key)?;
    }
    Ok(())
}

/// Both tiers of a table, open in one transaction.
pub(crate) struct Tiered<T> {
    recent: T,
    main: T,
}

impl<K: Key + 'static, V: Value + 'static> Tier<K, V> {
    pub(crate) fn create(self, txn: &WriteTransaction) -> Result<(), redb::TableError> {
        txn.open_table(self.recent)?;
        txn.open_table(self.main)?;
        Ok(())
    }

    /// The main tier's table name.
    pub(crate) fn main_name(&self) -> &str {
        self.main.name()
    }

    pub(crate) fn open<'t>(self, txn: &'t WriteTransaction) -> Result<Tiered<Table<'t, K, V>>, redb::TableError> {
        Ok(Tiered { recent: txn.open_table(self.recent)?, main: txn.open_table(self.main)? })
    }

    pub(crate) fn open_read(self, txn: &ReadTransaction) -> Result<Tiered<ReadOnlyTable<K, V>>, redb::TableError> {
        Ok(Tiered { recent: txn.open_table(self.recent)?, main: txn.open_table(self.main)? })
    }

    /// Moves the recent tier into the main one if it has reached
    /// [`sweep_at`] the main tier's size; says whether it did. The recent
    /// tier is then deleted whole (its pages freed, not rewritten) and
    /// created again, empty.
    /// The swept keys go into `filter` too, and a filter up to date with
    /// the main tier before the sweep is so after it.
    pub(crate) fn settle(self, txn: &WriteTransaction, mut filter: Option<&mut MainKeys>) -> Result<bool, redb::Error> {
        {
            let Tiered { recent, mut main } = self.open(txn)?;
            let before = main.len()?;
            if recent.len()? < sweep_at(before, self.batch_keys) {
                return Ok(false);
            }
            for entry in recent.iter()? {
                let (key, value) = entry?;
                main.insert(key.value(), value.value())?;
                if let Some(filter) = filter.as_deref_mut() {
                    filter.add(K::as_bytes(&key.value()).as_ref());
                }
            }
            if let Some(filter) = filter {
                filter.swept(before, main.len()?);
            }
        }
        txn.delete_table(self.recent)?;
        txn.open_table(self.recent)?;
        Ok(true)
    }
}

/// How many keys the recent tier holds before it is moved into a main tier
/// of `main` keys, for about `batch_keys` new keys a batch (see the module
/// documentation).
pub(crate) fn sweep_at(main: u64, batch_keys: u64) -> u64 {
    main.saturating_mul(batch_keys).isqrt().max(batch_keys)
}

impl<T> Tiered<T> {
    /// The main tier.
    pub(crate) fn main(&self) -> &T {
        &self.main
    }

    /// The value of `key`, from whichever tier holds it.
    pub(crate) fn get<'a, K: Key + 'static, V: Value + 'static>(
        &self,
        key: &K::SelfType<'a>,
    ) -> Result<Option<AccessGuard<'_, V>>, StorageError>
    where
        T: ReadableTable<K, V>,
    {
        match self.recent.get(key)? {
            Some(value) => Ok(Some(value)),
            None => self.main.get(key),
        }
    }
}

impl<K: Key + 'static, V: Value + 'static> Tiered<Table<'_, K, V>> {
    /// [`Tiered::get`], asking the main tier only if its `filter` (see
    /// `MainFilters::current`) may hold the key.
    pub(crate) fn get_filtered<'a>(
        &self,
        key: &K::SelfType<'a>,
        filter: &MainKeys,
    ) -> Result<Option<AccessGuard<'_, V>>, StorageError> {
        match self.recent.get(key)? {
            Some(value) => Ok(Some(value)),
            None if filter.may_hold(K::as_bytes(key).as_ref()) => self.main.get(key),
            None => Ok(None),
        }
    }

    /// Inserts a key that neither tier holds (the caller looked it up).
    pub(crate) fn insert_new<'k, 'v>(
        &mut self,
        key: &K::SelfType<'k>,
        value: &V::SelfType<'v>,
    ) -> Result<(), StorageError> {
        self.recent.insert(key, value)?;
        Ok(())
    }

    /// Removes a key from whichever tier holds it.
    pub(crate) fn remove<'a>(&mut self, key: &K::SelfType<'a>) -> Result<(), StorageError> {
        remove_from_either(Some(&mut self.recent), &mut self.main, key)
    }
}

impl Tiered<ReadOnlyTable<&'static [u8], u32>> {
    /// The entries of both tiers in `range`, in key order.
    pub(crate) fn range(&self, range: Range<&[u8]>) -> Result<Merged<'_>, StorageError> {
        Ok(Merged { recent: self.recent.range(range.clone())?.peekable(), main: self.main.range(range)?.peekable() })
    }
}

/// A secondary index open for reading: its table, and for a windowed index
/// its recent tier too.
pub(crate) struct IndexTables {
    main: ReadOnlyTable<&'static [u8], u32>,
    recent: Option<ReadOnlyTable<&'static [u8], u32>>,
}

impl IndexTables {
    pub(crate) fn open(txn: &ReadTransaction, index: Index) -> Result<IndexTables, redb::TableError> {
        let main = txn.open_table(index.table().expect("every listed index has a table"))?;
        let recent = index.recent_table().map(|recent| txn.open_table(recent)).transpose()?;
        Ok(IndexTables { main, recent })
    }

    /// The whole of an index kept in one tier; the main tier of another.
    pub(crate) fn main(&self) -> &ReadOnlyTable<&'static [u8], u32> {
        &self.main
    }

    /// Every tier: each key of the index is in exactly one.
    pub(crate) fn tiers(&self) -> impl Iterator<Item = &ReadOnlyTable<&'static [u8], u32>> {
        std::iter::once(&self.main).chain(self.recent.as_ref())
    }
}

type Entry<'a> = Result<(AccessGuard<'a, &'static [u8]>, AccessGuard<'a, u32>), StorageError>;

/// Two tiers' ranges merged in key order (no key is in both).
pub(crate) struct Merged<'a> {
    recent: Peekable<TableRange<'a, &'static [u8], u32>>,
    main: Peekable<TableRange<'a, &'static [u8], u32>>,
}

impl<'a> Iterator for Merged<'a> {
    type Item = Entry<'a>;

    fn next(&mut self) -> Option<Entry<'a>> {
        let order = match (self.recent.peek(), self.main.peek()) {
            (None, None) => return None,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            // An error is handed over first, whichever tier it came from.
            (Some(Err(_)), _) => Ordering::Less,
            (_, Some(Err(_))) => Ordering::Greater,
            (Some(Ok((recent, _))), Some(Ok((main, _)))) => recent.value().cmp(main.value()),
        };
        if order == Ordering::Greater { self.main.next() } else { self.recent.next() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::main_keys::MainKeys;

    #[test]
    fn the_recent_tier_grows_with_the_square_root_of_the_main_one() {
        assert_eq!(sweep_at(0, 1 << 16), 1 << 16);
        assert_eq!(sweep_at(1 << 16, 1 << 16), 1 << 16);
        assert_eq!(sweep_at(1 << 20, 1 << 16), 1 << 18);
        assert_eq!(sweep_at(9_400_000, 1 << 16), 784_881);
        assert_eq!(sweep_at(1 << 20, 1 << 14), 1 << 17);
        assert_eq!(sweep_at(u64::MAX, 1 << 14), u64::MAX.isqrt());
    }

    #[test]
    fn a_main_tiers_filter_has_every_key_swept_into_it_and_is_saved_with_the_sweep() {
        use crate::main_keys::{covering, save_if_changed};
        const MAIN: TableDefinition<&[u8], u32> = TableDefinition::new("test");
        const RECENT: TableDefinition<&[u8], u32> = TableDefinition::new("test_recent");
        let tier = Tier { recent: RECENT, main: MAIN, batch_keys: 8 };
        let file = tempfile::NamedTempFile::new().unwrap();
        let db = redb::Database::create(file.path()).unwrap();
        let key = |n: u32| format!("refund-{n}").into_bytes();
        // One batch of `keys`, each looked up first as a batch does; commits
        // unless `abort`. Says whether the batch swept.
        let batch = |kept: &mut Option<MainKeys>, keys: std::ops::Range<u32>, abort: bool| {
            let txn = db.begin_write().unwrap();
            {
                let mut tiered = tier.open(&txn).unwrap();
                let filter = covering(kept, &txn, "test", &tiered.main).unwrap();
                for n in keys {
                    assert!(tiered.get_filtered(&key(n).as_slice(), filter).unwrap().is_none(), "{n} is new");
                    tiered.insert_new(&key(n).as_slice(), &n).unwrap();
                }
            }
            let swept = tier.settle(&txn, kept.as_mut()).unwrap();
            save_if_changed(kept, &txn, "test").unwrap();
            if abort {
                txn.abort().unwrap()
            } else {
                txn.commit().unwrap()
            }
            swept
        };
        let mut kept = None;
        for n in 0..40 {
            batch(&mut kept, n * 5..n * 5 + 5, false);
        }
        // A writer that keeps its filter, and one that opens the store anew.
        let mut opened = None;
        for filter in [&mut kept, &mut opened] {
            let txn = db.begin_write().unwrap();
            let tiered = tier.open(&txn).unwrap();
            let swept = tiered.main.len().unwrap();
            assert!(swept >= 150 && tiered.recent.len().unwrap() > 0, "{swept} keys swept");
            let filter = covering(filter, &txn, "test", &tiered.main).unwrap();
            assert!(filter.stored(), "kept or loaded, not built from the tier");
            for n in 0..200 {
                assert_eq!(tiered.get_filtered(&key(n).as_slice(), filter).unwrap().unwrap().value(), n);
            }
            let wrongly_held = (1000..11_000).filter(|&n| filter.may_hold(&key(n))).count();
            assert!(wrongly_held < 300, "{wrongly_held} of 10,000 absent keys may be held");
        }
        // A sweep whose transaction fails: the kept filter took keys the
        // tier does not have and is replaced by the stored one, which lacks
        // them as the tier does.
        assert!(batch(&mut kept, 200..400, true));
        assert!(kept.as_ref().unwrap().may_hold(&key(300)));
        batch(&mut kept, 400..401, false);
        let lacking = (200..400).filter(|&n| !kept.as_ref().unwrap().may_hold(&key(n))).count();
        assert!(lacking > 190, "{lacking} of the failed sweep's keys are gone");
    }

    #[test]
    fn exactly_the_windowed_indexes_have_a_recent_tier() {
        for index in Index::ALL {
            assert_eq!(index_tier(index).is_some(), index.windowed(), "{index:?}");
        }
    }
}
