//! Sources of refund events. A source reads messages, validates them off the
//! writer's thread, cuts batches, and hands each batch to the store together
//! with the source position it reaches, so that data and position commit in
//! one transaction.
//!
//! - [`file_source`]: NDJSON files and stdin (`replay`).
//! - [`kafka_source`]: a Kafka topic through a consumer group (`run`, `demo`).

pub mod file_source;

/// Most events per write transaction, by default. A commit's cost grows with
/// the pages it copies, not with its events, so bigger batches are cheaper per
/// event up to about this size: replaying 912,612 generated events on 2 cores
/// measured ~68k events/s at 20,000, ~80k at 50,000, and no better at
/// 100,000 or 200,000 (with more memory held). A live consumer that keeps up
/// cuts smaller batches anyway (`batch_wait`).
pub const DEFAULT_BATCH_EVENTS: usize = 50_000;
pub mod kafka_source;

use std::time::{SystemTime, UNIX_EPOCH};

use refunds_domain::Timestamp;

/// The wall clock, as the `received_at` of messages.
pub(crate) fn now() -> Timestamp {
    let ms =
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Timestamp::from_millis(ms).unwrap_or(Timestamp::MIN)
}
