//! The HTTP API of refund-projector (contract section 3), over a read-only
//! view of the store.
//!
//! Guarantees: every `/v1` route authenticates; a caller sees only its own
//! tenant's refunds, and an error never reveals whether another tenant's
//! refund exists; every error is a JSON body with a stable code; the only 5xx
//! is 503. Store reads run on the blocking pool.

mod auth;
mod error;
mod list;
mod params;
mod routes;
mod time_param;

use std::sync::Arc;

pub use auth::{Auth, AuthConfigError, Caller};
pub use error::ApiError;
use refunds_store::Store;
pub use routes::router;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub auth: Arc<Auth>,
    /// The store file, for `store_bytes`.
    pub db_path: Arc<std::path::Path>,
}
