//! The projection store: one redb file holding the refunds, an index for
//! every list filter, exact counters, the audit trail, source checkpoints and
//! the dead-letter outbox.
//!
//! # Guarantees
//!
//! - A [`Batch`] is applied in ONE write transaction together with the source
//!   positions it covers ([`CheckpointDelta`]). A crash rolls back to the last
//!   durable commit, data and positions together, so a batch is never half
//!   applied; a delta that overlaps the stored position is refused, so a batch
//!   is never applied twice.
//! - Events are distinct by (tenant, event id). A repeated id is recorded in
//!   the audit trail as `duplicate` (equal JSON) or `conflicting_duplicate`
//!   and changes nothing else; a conflicting repeat is listed with the refund
//!   its event id was first applied to, whatever refund it names.
//! - Readers see committed snapshots: a page and its count come from one
//!   [`redb::ReadTransaction`].
//!
//! # Key layout
//!
//! Tenant ids are interned to a 4-byte big-endian number (`names`), so every
//! tenant-scoped key starts with a fixed `tenant` prefix. `refunds` is keyed
//! `tenant | home | refund id` and holds the compact encoded state followed by
//! the audit sequences of the refund's events; the home is the arrival epoch
//! of the refund's first event (`keys::home_of`), so new rows cluster at the
//! end of each tenant instead of at random places, and `refund_homes` maps
//! `tenant | refund id` to it. Each secondary
//! index (`by_created`, `by_status`, `by_currency`, `by_amount`, and one per
//! exact-match text filter) is keyed `tenant | value | created_at | refund id`
//! with the refund's home as the value, so an index entry leads straight to
//! its row: status is one byte (rank order), currency three,
//! amount eight big-endian, text values carry a 2-byte length, and
//! `created_at` is big-endian milliseconds with the sign bit flipped. The refund
//! id comes last, unprefixed, so keys sort by (created_at, id) within a value
//! and a filtered page in either direction is one range scan inside one
//! tenant. The indexes of nearly unique or spread values (amount, order_no,
//! transaction_id, external_refund_id, store_id, reference_id) insert a
//! created-at window after the tenant (`Index::window_bits`: about 3 days for
//! amount, 12 for the text values), so
//! that new refunds touch few pages; a value is then read window by window.
//! `counts` holds exact refund counts per `tenant | dimension | value` for the
//! low-cardinality filters, and histogram rows (see [`histogram`]) that count
//! created ranges by status and currency and amount ranges in a few reads.
//! `summaries` keeps per-tenant rows of counts and u128 amount sums by
//! status, currency (and the other low-cardinality dimensions) and created
//! time slot, for dashboard summaries (see [`summary`]).
//! `event_ids` maps `tenant | xxh3-64(event id)` to the
//! audit sequence of the applied event. `event_ids`, `refund_homes` and the
//! windowed indexes take keys at random places, so each is kept in two tiers
//! (see `tiers.rs`): new keys go to a small `_recent` table, swept into the
//! main one now and then; `audit_log` is an append-only log by
//! sequence (payloads LZ4-packed, see `audit`), and each `refunds` row ends with the sequences of its refund's
//! entries, the conflicting repeats of its events included. `audit_orphans`
//! lists entries by the refund id they name instead; the trail reads it, the
//! apply path writes nothing there.

mod apply;
mod audit;
mod batch;
mod gaps;
pub mod histogram;
mod index_jobs;
pub mod keys;
mod main_keys;
pub mod page;
mod positions;
pub mod query;
mod read;
mod row;
pub mod summary;
pub mod tables;
mod tiers;
mod writeback;

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;

use redb::{Database, ReadableDatabase, ReadableTable};

pub use audit::{AuditEntry, Outcome, PackedPayload};
pub use batch::{Batch, BatchSummary, Checkpoint, CheckpointDelta, Item, ItemKind, SourcePos};
pub use gaps::{AcceptedGap, history_gaps_in};
pub use keys::TenantNo;
pub use page::{Direction, PageRequest, SortKey, page_in};
pub use positions::{Positions, last_applied_at_in, positions_in};
pub use query::{Filter, count_in};
pub use read::{DeadLetter, ExportError, StoreStats, TableSize, decode_row_state, source_json};
pub use redb::{Durability, ReadTransaction};
pub use summary::{CurrencyAmount, Dim, Summary, SummaryGroup, SummaryRequest, summary_in};

/// The on-disk format this build writes. A store of another format is
/// refused, except [`UPGRADED_FORMAT`].
const FORMAT_VERSION: &[u8] = b"refunds-store/9";
/// The format before the identity slots, the refund homes and the windowed
/// indexes were kept in two tiers (`tiers`): the same tables with every key
/// in the main tier, so such a store is taken as it is, its recent tiers
/// created empty. A build of that
/// format refuses the store from then on, since it would not read them.
const UPGRADED_FORMAT: &[u8] = b"refunds-store/8";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("failed to open the store at {path}: {source}")]
    Database { path: String, source: redb::DatabaseError },
    #[error("the store at {path} has format {found:?}; this build reads {expected:?}")]
    Format { path: String, found: String, expected: String },
    #[error(transparent)]
    Storage(#[from] redb::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store operation failed: {0}")]
    Storage(#[from] redb::Error),
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    #[error("batch for {source_name} starts at {from} but the store has applied up to {stored}")]
    CheckpointOverlap { source_name: String, from: u64, stored: u64 },
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(err: $t) -> StoreError {
                StoreError::Storage(err.into())
            }
        }
    )*};
}
storage_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    redb::CompactionError
);

/// Tuning for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreParams {
    /// redb page cache, in bytes.
    pub cache_bytes: usize,
}

impl Default for StoreParams {
    fn default() -> StoreParams {
        StoreParams { cache_bytes: 256 * 1024 * 1024 }
    }
}

pub struct Store {
    /// Syncs the file in the background after non-durable commits; first, so
    /// that it ends before the database closes.
    writeback: Option<writeback::Writeback>,
    db: Database,
    /// Interned names known to be committed. Behind a lock so that one
    /// `Store` can be shared by a writer and concurrent readers.
    names: RwLock<Names>,
    /// Key of the HMAC that makes list cursors tamper-evident; generated once
    /// per store and kept in it, so cursors survive restarts.
    cursor_key: [u8; 32],
    /// Arrival time (ms) of the newest applied event, `i64::MIN` for none:
    /// the freshness every list response reports, without a table read.
    last_applied_ms: std::sync::atomic::AtomicI64,
    /// The Kafka positions of the last commit, for requests waiting to read
    /// their own writes (see `positions`).
    positions: tokio::sync::watch::Sender<std::sync::Arc<Positions>>,
    /// This store's number among the stores opened by the process.
    instance: u64,
    /// The writer's Bloom filters of the identity and homes main tiers
    /// (see `main_keys`), loaded or built at its first batch.
    main_filters: std::sync::Mutex<main_keys::MainFilters>,
}

/// The committed state a read transaction sees: equal ids, equal contents,
/// so an answer computed from one snapshot serves every request that reads
/// the same one. The store counts its commits in the snapshot itself
/// ([`Write::commit`]), so the id is read from the read transaction, exact
/// whatever a concurrent commit is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SnapshotId {
    store: u64,
    commits: u64,
}

/// The `meta` key of the commit count.
const COMMITS: &str = "commits";

/// A write transaction of the store. Every write of the store begins here,
/// so that every commit is counted ([`SnapshotId`]): no two committed states
/// share a count. (`unused_bytes` opens one that it aborts.)
pub(crate) struct Write(redb::WriteTransaction);

impl Write {
    pub(crate) fn begin(db: &Database) -> Result<Write, redb::Error> {
        Ok(Write(db.begin_write()?))
    }

    /// Counts the commit, then makes it.
    pub(crate) fn commit(self) -> Result<(), redb::Error> {
        {
            let mut meta = self.0.open_table(tables::META)?;
            let commits = commits_in(meta.get(COMMITS)?.as_ref().map(|v| v.value()))?;
            meta.insert(COMMITS, (commits + 1).to_le_bytes().as_slice())?;
        }
        self.0.commit()?;
        Ok(())
    }
}

impl std::ops::Deref for Write {
    type Target = redb::WriteTransaction;

    fn deref(&self) -> &redb::WriteTransaction {
        &self.0
    }
}

impl std::ops::DerefMut for Write {
    fn deref_mut(&mut self) -> &mut redb::WriteTransaction {
        &mut self.0
    }
}

fn commits_in(stored: Option<&[u8]>) -> Result<u64, redb::Error> {
    stored.map_or(Ok(0), |bytes| {
        <[u8; 8]>::try_from(bytes)
            .map(u64::from_le_bytes)
            .map_err(|_| redb::Error::Corrupted("commit count".to_owned()))
    })
}

impl SnapshotId {
    /// Whether `self` is the newer of two snapshots of one store; `None` for
    /// snapshots of different stores (a rebuilt store swapped in).
    pub fn newer_than(self, other: SnapshotId) -> Option<bool> {
        (self.store == other.store).then_some(self.commits > other.commits)
    }
}

impl Store {
    /// Opens (or creates) the store file and its tables.
    pub fn open(path: &Path, params: &StoreParams) -> Result<Store, OpenError> {
        let shown = path.display().to_string();
        let warned = std::cell::Cell::new(false);
        let db = Database::builder()
            .set_cache_size(params.cache_bytes)
            // Only a store that was not closed (a crash, a kill) needs this;
            // it reads every page, so on a big store it takes minutes.
            .set_repair_callback(move |session| {
                if !warned.replace(true) {
                    tracing::warn!(db = %shown, "the store was not closed cleanly; repairing it before use");
                }
                tracing::debug!(progress = session.progress(), "repairing the store");
            })
            .create(path)
            .map_err(|source| OpenError::Database { path: path.display().to_string(), source })?;
        let txn = Write::begin(&db)?;
        {
            let mut meta = txn.open_table(tables::META).map_err(redb::Error::from)?;
            let found = meta.get("format").map_err(redb::Error::from)?.map(|v| v.value().to_vec());
            match found {
                None => {
                    meta.insert("format", FORMAT_VERSION).map_err(redb::Error::from)?;
                }
                Some(found) if found == FORMAT_VERSION => {}
                Some(found) if found == UPGRADED_FORMAT => {
                    meta.insert("format", FORMAT_VERSION).map_err(redb::Error::from)?;
                }
                Some(found) => {
                    return Err(OpenError::Format {
                        path: path.display().to_string(),
                        found: String::from_utf8_lossy(&found).into_owned(),
                        expected: String::from_utf8_lossy(FORMAT_VERSION).into_owned(),
                    });
                }
            }
            if meta.get("cursor_key").map_err(redb::Error::from)?.is_none() {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key).map_err(|e| {
                    OpenError::Storage(redb::Error::Corrupted(format!("no randomness for the cursor key: {e}")))
                })?;
                meta.insert("cursor_key", key.as_slice()).map_err(redb::Error::from)?;
            }
            apply::create_tables(&txn).map_err(|e| match e {
                StoreError::Storage(err) => OpenError::Storage(err),
                other => OpenError::Storage(redb::Error::Corrupted(other.to_string())),
            })?;
        }
        txn.commit()?;

        let mut names = HashMap::new();
        let mut names_by_number = HashMap::new();
        {
            let read = db.begin_read().map_err(redb::Error::from)?;
            let table = read.open_table(tables::NAMES).map_err(redb::Error::from)?;
            for row in table.iter().map_err(redb::Error::from)? {
                let (name, number) = row.map_err(redb::Error::from)?;
                names.insert(name.value().to_owned(), number.value());
                names_by_number.insert(number.value(), name.value().to_owned());
            }
        }
        let cursor_key = {
            let read = db.begin_read().map_err(redb::Error::from)?;
            let meta = read.open_table(tables::META).map_err(redb::Error::from)?;
            let stored = meta.get("cursor_key").map_err(redb::Error::from)?;
            let bytes = stored.map(|v| v.value().to_vec()).unwrap_or_default();
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| OpenError::Storage(redb::Error::Corrupted("cursor key".to_owned())))?
        };
        let store = Store {
            writeback: writeback::Writeback::start(path),
            db,
            names: RwLock::new(Names { by_name: names, by_number: names_by_number }),
            cursor_key,
            last_applied_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
            positions: tokio::sync::watch::Sender::new(std::sync::Arc::default()),
            instance: {
                static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
            main_filters: std::sync::Mutex::default(),
        };
        store.publish_positions().map_err(|e| OpenError::Storage(redb::Error::Corrupted(e.to_string())))?;
        if let Some(at) =
            store.stats().map_err(|e| OpenError::Storage(redb::Error::Corrupted(e.to_string())))?.last_applied_at
        {
            store.last_applied_ms.store(at.millis(), std::sync::atomic::Ordering::Relaxed);
        }
        Ok(store)
    }

    /// The id of the state `txn` (a read transaction of this store) sees.
    pub fn snapshot_id(&self, txn: &ReadTransaction) -> Result<SnapshotId, StoreError> {
        let meta = txn.open_table(tables::META)?;
        let commits = commits_in(meta.get(COMMITS)?.as_ref().map(|v| v.value()))?;
        Ok(SnapshotId { store: self.instance, commits })
    }

    /// Arrival time of the newest applied event, as of the last commit.
    pub fn last_applied_at(&self) -> Option<refunds_domain::Timestamp> {
        match self.last_applied_ms.load(std::sync::atomic::Ordering::Relaxed) {
            i64::MIN => None,
            ms => refunds_domain::Timestamp::from_millis(ms),
        }
    }

    pub fn cursor_key(&self) -> &[u8; 32] {
        &self.cursor_key
    }

    /// Background syncs of the store file finished so far (see
    /// `writeback`): one follows each burst of non-durable commits.
    pub fn background_syncs(&self) -> u64 {
        self.writeback.as_ref().map_or(0, writeback::Writeback::syncs)
    }

    /// The redb database, for read transactions of the query layer.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The tenant number of a tenant id, if the store has seen that tenant.
    pub fn tenant_no(&self, tenant_id: &str) -> Option<TenantNo> {
        self.names().by_name.get(&tenant_name(tenant_id)).copied().map(TenantNo)
    }

    /// Every tenant, sorted by tenant id.
    pub fn tenants(&self) -> Vec<(String, TenantNo)> {
        let names = self.names();
        let mut tenants: Vec<(String, TenantNo)> = names
            .by_name
            .iter()
            .filter_map(|(name, &n)| name.strip_prefix(TENANT_KIND).map(|t| (t.to_owned(), TenantNo(n))))
            .collect();
        tenants.sort();
        tenants
    }

    fn name_of(&self, number: u32) -> Option<String> {
        self.names().by_number.get(&number).map(|n| n.split_once(':').map_or(n.as_str(), |(_, rest)| rest).to_owned())
    }

    fn names(&self) -> std::sync::RwLockReadGuard<'_, Names> {
        // A panic while holding the lock cannot leave the maps half-updated
        // (each insert is whole), so a poisoned lock is still usable.
        self.names.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Interned names: `kind:name` <-> number.
#[derive(Debug, Default)]
struct Names {
    by_name: HashMap<String, u32>,
    by_number: HashMap<u32, String>,
}

const TENANT_KIND: &str = "tenant:";
const FILE_KIND: &str = "file:";
const TOPIC_KIND: &str = "topic:";

fn tenant_name(tenant_id: &str) -> String {
    format!("{TENANT_KIND}{tenant_id}")
}
