//! Experiment, not product code: how much would splitting the store by tenant
//! into N redb files, each applied by its own thread, speed up replay?
//! `cargo run --release --example shard_experiment -- FILE DIR SHARDS`
use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use refunds_domain::{Timestamp, validate};
use refunds_store::{Batch, Durability, Item, ItemKind, SourcePos, Store, StoreParams};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (input, dir, shards) = (&args[1], &args[2], args[3].parse::<usize>().unwrap());
    let mut stores: Vec<Store> = (0..shards)
        .map(|i| {
            Store::open(&std::path::Path::new(dir).join(format!("shard-{i}.redb")), &StoreParams::default()).unwrap()
        })
        .collect();
    let (tx, rx) = sync_channel::<Vec<Vec<Item>>>(2);
    let path: Arc<str> = Arc::from(input.as_str());
    let input = input.clone();
    let reader = std::thread::spawn(move || {
        let file = BufReader::with_capacity(1 << 20, std::fs::File::open(&input).unwrap());
        let mut parts: Vec<Vec<Item>> = (0..shards).map(|_| Vec::new()).collect();
        let mut n = 0;
        for (i, line) in file.split(b'\n').enumerate() {
            let line = line.unwrap();
            let kind = match validate(&line) {
                Ok(e) => ItemKind::Valid(Box::new(e)),
                Err(e) => ItemKind::Invalid(e),
            };
            let shard = match &kind {
                ItemKind::Valid(e) => {
                    usize::try_from(xxhash_rust::xxh3::xxh3_64(e.tenant_id.as_bytes()) % shards as u64).unwrap()
                }
                ItemKind::Invalid(_) => 0,
            };
            let source = SourcePos::File { path: path.clone(), line: i as u64 + 1 };
            parts[shard].push(Item {
                source,
                received_at: Timestamp::from_millis(0).unwrap(),
                raw: line,
                packed: None,
                key: None,
                kind,
            });
            n += 1;
            if n == 20_000 {
                tx.send(std::mem::replace(&mut parts, (0..shards).map(|_| Vec::new()).collect())).unwrap();
                n = 0;
            }
        }
        tx.send(parts).unwrap();
    });
    let started = Instant::now();
    let mut last_durable = Instant::now();
    let mut total = 0;
    let mut sizes = vec![0u64; shards];
    for parts in rx {
        let durable = last_durable.elapsed().as_secs() >= 1;
        if durable {
            last_durable = Instant::now();
        }
        let durability = if durable { Durability::Immediate } else { Durability::None };
        total += parts.iter().map(Vec::len).sum::<usize>();
        for (size, part) in sizes.iter_mut().zip(&parts) {
            *size += part.len() as u64;
        }
        std::thread::scope(|scope| {
            for (store, items) in stores.iter_mut().zip(parts) {
                scope.spawn(move || store.apply_batch(&Batch { items, checkpoints: vec![] }, durability).unwrap());
            }
        });
    }
    for store in &mut stores {
        store.apply_batch(&Batch::default(), Durability::Immediate).unwrap();
    }
    reader.join().unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{shards} shards: {total} events in {secs:.2}s = {:.0} events/s; events per shard {sizes:?}",
        total as f64 / secs
    );
}
