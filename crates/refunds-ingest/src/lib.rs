//! Sources of refund events. A source reads messages, validates them off the
//! writer's thread, cuts batches, and hands each batch to the store together
//! with the source position it reaches, so that data and position commit in
//! one transaction.
//!
//! - [`file_source`]: NDJSON files and stdin (`replay`).
//! - [`kafka_source`]: a Kafka topic through a consumer group (`run`, `demo`).

pub mod file_source;
pub mod kafka_source;

use std::time::{SystemTime, UNIX_EPOCH};

use refunds_domain::Timestamp;

/// The wall clock, as the `received_at` of messages.
pub(crate) fn now() -> Timestamp {
    let ms =
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Timestamp::from_millis(ms).unwrap_or(Timestamp::MIN)
}
