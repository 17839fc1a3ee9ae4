//! Bloom filters of the identity slots' and the homes' main tiers (see
//! `tiers`), so that a batch looks a new key up in the recent tier only.
//!
//! Most keys a batch looks up are new: every new event's identity slot, and
//! the home of every new refund. At 10x (9 million slots) a main tier is far
//! larger than the page cache, and each such lookup read a leaf page back.
//! A filter answers "surely not there" for 99% of them from memory.
//!
//! A filter may hold keys its tier does not have (a sweep whose transaction
//! failed), never lack one the tier has: every key enters a main tier by a
//! sweep, and the sweep adds it to the filter ([`MainKeys::add`]). The
//! filter is saved in the store (`main_filters`) in the transaction of the
//! sweep that changed it, with the main tier's length it covers. A writer
//! keeps its filter between batches; it loads the saved one when it has
//! none or its own does not cover the tier (a batch that failed after its
//! sweep), and builds one from the tier when the saved one does not cover
//! it either (a store written by a build without filters, or written on by
//! one since) or the tier has outgrown it. A main tier only grows, and only
//! by sweeps, so a filter that covers its length covers its keys.
//!
//! The filter is blocked: a key sets seven bits of one 64-byte block, so a
//! lookup reads one cache line. Its layout is this module's own, not a
//! library's, because it is kept on disk: a change of hashing would
//! otherwise make a stored filter lack keys. [`LAYOUT`] is saved with it.

use redb::{Key, ReadableTable, ReadableTableMetadata, Table, Value, WriteTransaction};

use crate::tables;
use crate::tiers::{EVENT_SLOTS, HOMES, Tiered};

/// Bits of filter per key it is sized for: about 1% of absent keys are
/// still looked up in the main tier.
const BITS_PER_KEY: u64 = 10;
/// Bits a key sets in its block.
const PROBES: u32 = 7;
/// Blocks per stored chunk (1 MiB).
const CHUNK_BLOCKS: usize = 1 << 14;
/// The chunk number of a filter's header.
const HEADER: u32 = u32::MAX;
/// The version of the stored layout: bump it when the hashing or the block
/// choice changes, and every stored filter is built again.
const LAYOUT: u32 = 1;

/// A blocked Bloom filter.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Bloom {
    blocks: Vec<[u64; 8]>,
}

impl Bloom {
    fn for_keys(keys: u64) -> Bloom {
        let blocks = usize::try_from(keys.saturating_mul(BITS_PER_KEY).div_ceil(512).max(1)).unwrap_or(usize::MAX);
        Bloom { blocks: vec![[0; 8]; blocks] }
    }

    /// The block of `key` and its bits there, as (word, mask) pairs.
    fn probes(&self, key: &[u8]) -> (usize, [(usize, u64); PROBES as usize]) {
        let hash = xxhash_rust::xxh3::xxh3_128(key).to_le_bytes();
        let half = |at: usize| u64::from_le_bytes(hash[at..at + 8].try_into().expect("8 bytes"));
        let (low, high) = (half(0), half(8));
        // Multiply-shift: the block from the low half, uniform over any count.
        let block = usize::try_from((u128::from(low) * self.blocks.len() as u128) >> 64).expect("below the count");
        let bits = std::array::from_fn(|i| {
            let bit = (high >> (9 * i)) & 511;
            ((bit >> 6) as usize, 1u64 << (bit & 63))
        });
        (block, bits)
    }

    fn insert(&mut self, key: &[u8]) {
        let (block, bits) = self.probes(key);
        let block = &mut self.blocks[block];
        for (word, mask) in bits {
            block[word] |= mask;
        }
    }

    fn may_hold(&self, key: &[u8]) -> bool {
        let (block, bits) = self.probes(key);
        let block = &self.blocks[block];
        bits.iter().all(|&(word, mask)| block[word] & mask != 0)
    }
}

/// The filter of one main tier, as the writer keeps it between batches.
pub(crate) struct MainKeys {
    bloom: Bloom,
    /// The main tier's length the filter covers.
    keys: u64,
    /// Whether the store has this filter as it is.
    saved: bool,
}

impl MainKeys {
    /// The keys the filter was sized for; past them it is built again.
    fn capacity(&self) -> u64 {
        capacity_of(self.bloom.blocks.len())
    }

    /// Whether the filter covers a main tier of `len` keys.
    fn covers(&self, len: u64) -> bool {
        self.keys == len && len <= self.capacity()
    }

    /// Whether the store has this filter as it is (loaded, or saved since
    /// its last change).
    #[cfg(test)]
    pub(crate) fn stored(&self) -> bool {
        self.saved
    }

    /// False only if the main tier surely lacks `key`.
    pub(crate) fn may_hold(&self, key: &[u8]) -> bool {
        self.bloom.may_hold(key)
    }

    /// Adds a key a sweep moves into the main tier.
    pub(crate) fn add(&mut self, key: &[u8]) {
        self.bloom.insert(key);
        self.saved = false;
    }

    /// After a sweep from a tier of `before` keys to one of `after`: a
    /// filter that covered the tier covers it still.
    pub(crate) fn swept(&mut self, before: u64, after: u64) {
        if self.keys == before {
            self.keys = after;
        }
    }

    /// A filter of every key of `main`, sized for 1.5 times them (at least 2^16).
    fn build<K: Key + 'static, V: Value + 'static>(main: &Table<'_, K, V>) -> Result<MainKeys, redb::Error> {
        let keys = main.len()?;
        let mut bloom = Bloom::for_keys(keys.saturating_add(keys / 2).max(1 << 16));
        for entry in main.iter()? {
            let (key, _) = entry?;
            bloom.insert(K::as_bytes(&key.value()).as_ref());
        }
        Ok(MainKeys { bloom, keys, saved: false })
    }

    /// The stored filter of the tier `name`, if there is one of this layout
    /// that covers the tier's `len` keys; its blocks are read only then.
    fn load(saved: &Table<'_, (&str, u32), &[u8]>, name: &str, len: u64) -> Result<Option<MainKeys>, redb::Error> {
        let Some(header) = saved.get((name, HEADER))? else { return Ok(None) };
        let header = header.value();
        let field = |at: usize| header.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        let (Some(layout), Some(keys), Some(blocks)) = (field(0), field(8), field(16)) else { return Ok(None) };
        let Ok(blocks) = usize::try_from(blocks) else { return Ok(None) };
        if layout != u64::from(LAYOUT) || blocks == 0 || keys != len || len > capacity_of(blocks) {
            return Ok(None);
        }
        let mut bloom = Bloom { blocks: Vec::with_capacity(blocks) };
        let Ok(chunks) = u32::try_from(blocks.div_ceil(CHUNK_BLOCKS)) else { return Ok(None) };
        for chunk in 0..chunks {
            let Some(bytes) = saved.get((name, chunk))? else { return Ok(None) };
            for block in bytes.value().chunks_exact(64) {
                bloom.blocks.push(std::array::from_fn(|w| {
                    u64::from_le_bytes(block[w * 8..w * 8 + 8].try_into().expect("8 bytes"))
                }));
            }
        }
        if bloom.blocks.len() != blocks {
            return Ok(None);
        }
        Ok(Some(MainKeys { bloom, keys, saved: true }))
    }

    /// Stores the filter of the tier `name`, replacing the one stored.
    fn save(&mut self, saved: &mut Table<'_, (&str, u32), &[u8]>, name: &str) -> Result<(), redb::Error> {
        let mut bytes = Vec::with_capacity(CHUNK_BLOCKS * 64);
        let mut chunks = 0u32;
        for chunk in self.bloom.blocks.chunks(CHUNK_BLOCKS) {
            bytes.clear();
            bytes.extend(chunk.iter().flatten().flat_map(|word| word.to_le_bytes()));
            saved.insert((name, chunks), bytes.as_slice())?;
            chunks += 1;
        }
        // The chunks of a smaller filter stored before.
        while saved.remove((name, chunks))?.is_some() {
            chunks += 1;
        }
        let header: Vec<u8> = [u64::from(LAYOUT), self.keys, self.bloom.blocks.len() as u64]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        saved.insert((name, HEADER), header.as_slice())?;
        self.saved = true;
        Ok(())
    }
}

/// The keys a filter of `blocks` blocks is sized for.
fn capacity_of(blocks: usize) -> u64 {
    blocks as u64 * 512 / BITS_PER_KEY
}

/// The filters of the identity slots' and the homes' main tiers.
#[derive(Default)]
pub(crate) struct MainFilters {
    pub(crate) slots: Option<MainKeys>,
    pub(crate) homes: Option<MainKeys>,
}

impl MainFilters {
    /// The two filters, each kept, loaded or built so that it covers its
    /// main tier as `txn` sees it.
    pub(crate) fn current(
        &mut self,
        txn: &WriteTransaction,
        slots: &Tiered<Table<'_, &'static [u8; 12], u64>>,
        homes: &Tiered<Table<'_, &'static [u8], u32>>,
    ) -> Result<(&MainKeys, &MainKeys), redb::Error> {
        Ok((
            covering(&mut self.slots, txn, EVENT_SLOTS.main_name(), slots.main())?,
            covering(&mut self.homes, txn, HOMES.main_name(), homes.main())?,
        ))
    }

    /// Stores each filter the store does not have as it is (built, or
    /// changed by a sweep), in the batch's transaction.
    pub(crate) fn save_changed(&mut self, txn: &WriteTransaction) -> Result<(), redb::Error> {
        save_if_changed(&mut self.slots, txn, EVENT_SLOTS.main_name())?;
        save_if_changed(&mut self.homes, txn, HOMES.main_name())
    }
}

/// Stores `kept`, the filter of the main tier `name`, unless the store has it as it is.
pub(crate) fn save_if_changed(
    kept: &mut Option<MainKeys>,
    txn: &WriteTransaction,
    name: &str,
) -> Result<(), redb::Error> {
    if let Some(filter) = kept
        && !filter.saved
    {
        filter.save(&mut txn.open_table(tables::MAIN_FILTERS)?, name)?;
    }
    Ok(())
}

/// `kept` if it covers `main` (`name`), else the stored filter if it does,
/// else one built from `main`.
pub(crate) fn covering<'f, K: Key + 'static, V: Value + 'static>(
    kept: &'f mut Option<MainKeys>,
    txn: &WriteTransaction,
    name: &str,
    main: &Table<'_, K, V>,
) -> Result<&'f MainKeys, redb::Error> {
    let len = main.len()?;
    if kept.as_ref().is_some_and(|filter| !filter.covers(len)) {
        *kept = None;
    }
    if kept.is_none() {
        let started = std::time::Instant::now();
        let (filter, how) = match MainKeys::load(&txn.open_table(tables::MAIN_FILTERS)?, name, len)? {
            Some(stored) => (stored, "loaded"),
            None => (MainKeys::build(main)?, "built"),
        };
        tracing::debug!(
            table = name,
            keys = len,
            how,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "main tier filter"
        );
        *kept = Some(filter);
    }
    Ok(kept.as_ref().expect("set above"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_holds_what_was_added_and_wrongly_about_one_absent_key_in_a_hundred() {
        let mut bloom = Bloom::for_keys(100_000);
        for n in 0..100_000u32 {
            bloom.insert(&n.to_be_bytes());
        }
        assert!((0..100_000u32).all(|n| bloom.may_hold(&n.to_be_bytes())));
        let wrong = (100_000..1_100_000u32).filter(|n| bloom.may_hold(&n.to_be_bytes())).count();
        assert!((2_000..20_000).contains(&wrong), "{wrong} of 1,000,000 absent keys");
    }

    #[test]
    fn a_saved_filter_loads_as_it_was_and_a_smaller_one_replaces_it_whole() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let db = redb::Database::create(file.path()).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut saved = txn.open_table(tables::MAIN_FILTERS).unwrap();
            let mut big = MainKeys { bloom: Bloom::for_keys(3_000_000), keys: 7, saved: false };
            for n in 0..1000u32 {
                big.add(&n.to_le_bytes());
            }
            big.save(&mut saved, "t").unwrap();
            let loaded = MainKeys::load(&saved, "t", 7).unwrap().unwrap();
            assert_eq!((&loaded.bloom, loaded.keys, loaded.saved), (&big.bloom, 7, true));
            assert!(MainKeys::load(&saved, "t", 8).unwrap().is_none(), "it covers 7 keys, not 8");
            assert!(big.bloom.blocks.len() > 2 * CHUNK_BLOCKS);

            let mut small = MainKeys { bloom: Bloom::for_keys(1000), keys: 9, saved: false };
            small.add(b"x");
            small.save(&mut saved, "t").unwrap();
            let loaded = MainKeys::load(&saved, "t", 9).unwrap().unwrap();
            assert_eq!((&loaded.bloom, loaded.keys), (&small.bloom, 9));
            assert_eq!(saved.len().unwrap(), 2, "one chunk and the header");
            assert!(MainKeys::load(&saved, "other", 9).unwrap().is_none());
        }
        txn.commit().unwrap();
    }
}
