//! Sources of refund events. A source reads messages, validates them off the
//! writer's thread, cuts batches, and hands each batch to the store together
//! with the source position it reaches, so that data and position commit in
//! one transaction.
//!
//! - [`file_source`]: NDJSON files and stdin (`replay`).

pub mod file_source;
