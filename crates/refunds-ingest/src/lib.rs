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
/// 100,000 or 200,000 (with more memory held), all with one durable commit
/// a second. With every commit durable (the default since), 75,000 was
/// within the noise of 50,000 for 200-250 MiB more peak RSS. A live consumer
/// that keeps up cuts smaller batches anyway (`batch_wait`).
pub const DEFAULT_BATCH_EVENTS: usize = 50_000;

/// Milliseconds between durable commits, by default: 0, every commit is
/// durable. With redb 4.6 a non-durable commit leaves its pages in redb's
/// write buffer, and the next transactions write them out one page at a
/// time as they allocate new pages, inside redb's allocator lock, which the
/// three threads that fill a batch's tables then queue for. A durable commit
/// writes them all at once and leaves the buffer empty. Replaying 912,612
/// generated events on 2 cores took 5-19% less time with every commit
/// durable than with one durable commit a second (4 interleaved pairs,
/// 2026-12-02), and each batch's Kafka offsets and dead letters can leave the
/// process as soon as it commits. A positive interval is still accepted, for
/// disks where an fsync per batch costs more.
pub const DEFAULT_DURABLE_EVERY_MS: u64 = 0;
pub mod kafka_source;

use std::time::{SystemTime, UNIX_EPOCH};

use refunds_domain::Timestamp;

/// Turns transparent huge pages off for this process; the binary and the
/// benchmarks call it first thing. On a machine that backs every fresh
/// anonymous region with a 2 MiB page (`enabled=always`), each batch's
/// buffers fault in whole huge pages that the kernel zeroes, and mimalloc
/// hands them back within a second: on the 2-core development machine that
/// zeroing was a quarter of the replay profile and half its system time.
/// With 4 KiB pages only what is touched is zeroed; replay of 912,612 events
/// went from 13.6-16.6 s to 11.4-12.3 s in three interleaved pairs, and its
/// user time did not grow. On a machine whose THP setting is `madvise` or
/// `never` this changes nothing.
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(err) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(%err, "could not disable transparent huge pages");
    }
}

/// The wall clock, as the `received_at` of messages.
pub(crate) fn now() -> Timestamp {
    let ms =
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Timestamp::from_millis(ms).unwrap_or(Timestamp::MIN)
}
