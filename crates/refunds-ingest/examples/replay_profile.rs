//! Replays a file into a fresh store and prints the rate; for profiling the
//! apply path without the CLI. `cargo run --release --example replay_profile -- FILE DB`
use std::path::PathBuf;
use std::time::Instant;

use refunds_ingest::file_source::{Input, ReplayParams, replay};
use refunds_store::{Store, StoreParams};

/// The allocator the `refund-projector` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // As the binary does.
    refunds_ingest::disable_transparent_huge_pages();
    let args: Vec<String> = std::env::args().collect();
    let input = PathBuf::from(&args[1]);
    let db = PathBuf::from(&args[2]);
    let cache_mb: usize = std::env::var("CACHE_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let mut store = Store::open(&db, &StoreParams { cache_bytes: cache_mb << 20 }).expect("open");
    let mut params = ReplayParams::new(Input::File(input));
    params.batch_events =
        std::env::var("BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(refunds_ingest::DEFAULT_BATCH_EVENTS);
    if let Some(ms) = std::env::var("DURABLE_MS").ok().and_then(|v| v.parse().ok()) {
        params.durable_every = std::time::Duration::from_millis(ms);
    }
    let started = Instant::now();
    let progress = replay(&mut store, &params, |_| {}).expect("replay");
    let secs = started.elapsed().as_secs_f64();
    if std::env::var_os("TABLE_STATS").is_some() {
        table_stats(&store);
    }
    println!(
        "{} lines, {} applied in {secs:.2}s: {:.0} events/s, store {} MiB",
        progress.lines,
        progress.applied,
        progress.lines as f64 / secs,
        Store::file_bytes(&db) >> 20
    );
}

#[allow(dead_code)]
fn table_stats(store: &Store) {
    use redb::{ReadableDatabase, ReadableTableMetadata, TableHandle};
    let txn = store.database().begin_read().unwrap();
    for handle in txn.list_tables().unwrap() {
        let table = txn.open_untyped_table(handle.clone()).unwrap();
        let s = table.stats().unwrap();
        println!(
            "{:24} entries {:>9} stored {:>6} MiB leaf pages {:>7} fragmented {:>6} MiB",
            handle.name(),
            table.len().unwrap(),
            s.stored_bytes() >> 20,
            s.leaf_pages(),
            s.fragmented_bytes() >> 20
        );
    }
}
