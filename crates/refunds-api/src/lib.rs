//! The HTTP API of refund-projector (contract section 3), over a read-only
//! view of the store.
//!
//! Guarantees: every `/v1` route authenticates; a caller sees only its own
//! tenant's refunds, and an error never reveals whether another tenant's
//! refund exists; every error is a JSON body with a stable code; the only 5xx
//! is 503. Store reads run on the blocking pool.

mod answers;
mod auth;
mod error;
mod freshness;
mod list;
mod params;
mod routes;
mod summary;
mod time_param;

use std::sync::Arc;

pub use answers::{Answers, DEFAULT_BYTES as DEFAULT_SUMMARY_CACHE_BYTES};
pub use auth::{Auth, AuthConfigError, AuthParams, Caller, JwksSource, Refresh};
pub use error::ApiError;
pub use freshness::{DEFAULT_MAX_WAITING, Waiters, parse_position};
use refunds_store::Store;
pub use routes::router;

/// The store the API reads. Replaceable while serving: a rebuilt store is
/// swapped in atomically, and requests in flight finish on the one they began
/// with. Empty while a store that hit an I/O error is closed and reopened
/// (requests then get 503 `unavailable`).
pub struct StoreSlot(std::sync::RwLock<Option<Arc<Store>>>);

impl StoreSlot {
    pub fn new(store: Arc<Store>) -> StoreSlot {
        StoreSlot(std::sync::RwLock::new(Some(store)))
    }

    pub fn get(&self) -> Option<Arc<Store>> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Swaps in `store`; returns the one it replaces.
    pub fn replace(&self, store: Arc<Store>) -> Option<Arc<Store>> {
        self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner).replace(store)
    }

    /// Empties the slot, for a reopen.
    pub fn take(&self) -> Option<Arc<Store>> {
        self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<StoreSlot>,
    pub auth: Arc<Auth>,
    /// The store file, for `store_bytes`.
    pub db_path: Arc<std::path::Path>,
    /// The consumer feeding the store, when there is one (`run`, `demo`):
    /// readiness, per-partition figures and freshness come from it.
    pub ingest: Option<Arc<dyn IngestProbe>>,
    /// Renders `/metrics`; without it `/metrics` is an empty exposition.
    pub metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// Requests waiting for a `min_position`, and how many may.
    pub waiters: Arc<Waiters>,
    /// Summary answers of the newest snapshot.
    pub answers: Arc<Answers>,
}

impl AppState {
    /// The API over a store with no consumer (`serve`).
    pub fn new(store: Arc<Store>, auth: Arc<Auth>, db_path: &std::path::Path) -> AppState {
        AppState {
            store: Arc::new(StoreSlot::new(store)),
            auth,
            db_path: Arc::from(db_path),
            ingest: None,
            metrics: None,
            waiters: Arc::new(Waiters::default()),
            answers: Arc::new(Answers::default()),
        }
    }
}

/// One partition's progress, as `/v1/status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// The next offset to apply: every message below it is in the store.
    pub applied_offset: i64,
    pub high_watermark: Option<i64>,
    pub lag: Option<i64>,
}

/// A partition whose history the store cannot get whole, held back (not
/// consumed) by the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldGap {
    pub topic: String,
    pub partition: i32,
    pub needed: i64,
    pub available: i64,
    pub reason: String,
}

/// What the API asks of the consumer feeding the store.
pub trait IngestProbe: Send + Sync {
    /// The topic consumed: `min_position` may name it before anything of it
    /// is applied.
    fn topic(&self) -> Option<String> {
        None
    }
    /// The partitions assigned to this instance.
    fn partitions(&self) -> Vec<PartitionLag>;
    /// Why the instance is not ready to serve, or `None` when it is.
    fn not_ready_reason(&self) -> Option<String>;
    /// Total lag in events over the assigned partitions, when known.
    fn total_lag(&self) -> Option<i64>;
    /// Partitions not consumed because their history is incomplete.
    fn held_gaps(&self) -> Vec<HeldGap> {
        Vec::new()
    }
    /// The topic's retention and cleanup settings, as `/v1/status` shows them.
    fn topic_settings(&self) -> Option<serde_json::Value> {
        None
    }
}
