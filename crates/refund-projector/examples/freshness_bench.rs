//! What read-your-writes costs, in one process: a real store (a replay of
//! generated events, then Kafka checkpoints written the way the consumer
//! writes them), the real API on a loopback port, real HTTP clients.
//!
//! 1. The p99 latency of a list request with a `min_position` the store has
//!    already reached, against the same request without it: rounds of each,
//!    interleaved, 8 connections.
//! 2. The time from a durable commit to the answer of a request waiting for
//!    it: each round, 20 requests for one refund (what a client reads after
//!    its write) wait for the next offset, then one batch moving the
//!    checkpoint there is committed durably; each request's answer time minus
//!    the moment the commit call returned.
//!
//! The consumer itself is not running (the commits are made here, as the
//! writer thread makes them), so the figures are the API's and the store's.
//!
//! ```sh
//! cargo run --release -p refund-projector --example freshness_bench
//! REFUNDS=330000 ROUND_SECONDS=3 cargo run --release -p refund-projector --example freshness_bench
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use refunds_api::{AppState, Auth, IngestProbe, PartitionLag};
use refunds_ingest::file_source::{Input, ReplayParams, replay};
use refunds_store::{Batch, CheckpointDelta, Durability, Store, StoreParams};

const TOPIC: &str = "bench";
const CONNECTIONS: usize = 8;
const WAITERS: usize = 20;

/// A consumer of `bench`, caught up, as the API asks about it.
struct Consumer;

impl IngestProbe for Consumer {
    fn topic(&self) -> Option<String> {
        Some(TOPIC.to_owned())
    }
    fn partitions(&self) -> Vec<PartitionLag> {
        Vec::new()
    }
    fn not_ready_reason(&self) -> Option<String> {
        None
    }
    fn total_lag(&self) -> Option<i64> {
        Some(0)
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Moves the checkpoint of `bench` partition 0 from `from` to `to` in one
/// durable commit, as the consumer's writer does after a batch.
fn commit(store: &Store, from: u64, to: u64) -> anyhow::Result<()> {
    let delta = CheckpointDelta { source: format!("kafka:{TOPIC}:0"), from, to, state: Vec::new(), restart: false };
    store.apply_batch(&Batch { items: Vec::new(), checkpoints: vec![delta] }, Durability::Immediate)?;
    Ok(())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

fn get(agent: &ureq::Agent, url: &str) -> u16 {
    let response = agent.get(url).header("Authorization", "Api-Key bench").call().expect("request");
    let status = response.status().as_u16();
    let _ = response.into_body().read_to_vec();
    status
}

/// Latencies of `path` from `CONNECTIONS` clients for `seconds`.
fn load(base: &str, path: &str, seconds: u64) -> Vec<Duration> {
    let url = format!("{base}{path}");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let agent = agent();
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    assert_eq!(get(&agent, &url), 200, "{url}");
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    clients.into_iter().flat_map(|c| c.join().expect("client")).collect()
}

/// The `percent` percentile of sorted latencies (nearest rank).
fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    let rank = (sorted.len() * percent).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let refunds = env("REFUNDS", 100_000);
    let rounds = env("ROUNDS", 6);
    let round_seconds = env("ROUND_SECONDS", 2);
    let commits = env("COMMITS", 200);
    let dir = tempfile::tempdir()?;
    let events = dir.path().join("events.ndjson");
    let db = dir.path().join("store.redb");

    eprintln!("generating and replaying {refunds} refunds");
    let params = refunds_generate::GenerateParams {
        refunds,
        seed: 7,
        dup_rate: 0.02,
        shuffle_window: 200,
        invalid_rate: 0.0,
        arrival: refunds_generate::Arrival::Realistic,
    };
    refunds_generate::generate(&params, std::io::BufWriter::new(std::fs::File::create(&events)?))?;
    let mut store = Store::open(&db, &StoreParams::default())?;
    replay(&mut store, &ReplayParams::new(Input::File(events.clone())), |_| {})?;
    let store = Arc::new(store);
    commit(&store, 0, 1)?;

    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, "[[keys]]\nid = \"bench\"\nsecret = \"bench\"\ntenant = \"*\"\nscopes = [\"admin\"]\n")?;
    let mut state = AppState::new(store.clone(), Arc::new(Auth::load(&keys, None)?), Path::new(&db));
    state.ingest = Some(Arc::new(Consumer));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let base = format!("http://{}", listener.local_addr()?);
    runtime.spawn(async move { axum::serve(listener, refunds_api::router(state)).await });

    // 1. A position already reached, against none.
    let plain = "/v1/refunds?limit=20&status=completed".to_owned();
    let reached = format!("{plain}&min_position={TOPIC}:0:0");
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            without.extend(load(&base, &plain, round_seconds));
            with.extend(load(&base, &reached, round_seconds));
        } else {
            with.extend(load(&base, &reached, round_seconds));
            without.extend(load(&base, &plain, round_seconds));
        }
    }
    without.sort();
    with.sort();
    let (p99_without, p99_with) = (percentile(&without, 99), percentile(&with, 99));
    println!(
        "list, {CONNECTIONS} connections, {rounds} interleaved rounds of {round_seconds} s, {refunds} refunds:\n  \
         without min_position: {} requests, p50 {:.3} ms, p99 {:.3} ms\n  \
         with a reached one:   {} requests, p50 {:.3} ms, p99 {:.3} ms\n  \
         p99 with / without: {:.3}",
        without.len(),
        ms(percentile(&without, 50)),
        ms(p99_without),
        with.len(),
        ms(percentile(&with, 50)),
        ms(p99_with),
        p99_with.as_secs_f64() / p99_without.as_secs_f64()
    );

    // 2. From a durable commit to the answers waiting for it.
    let refund = {
        let response =
            agent().get(format!("{base}/v1/refunds?limit=1")).header("Authorization", "Api-Key bench").call()?;
        let page: serde_json::Value = serde_json::from_slice(&response.into_body().read_to_vec()?)?;
        let first = &page["results"][0];
        format!(
            "{}?tenant_id={}",
            first["id"].as_str().unwrap_or_default(),
            first["tenant_id"].as_str().unwrap_or_default()
        )
    };
    let mut answers = Vec::new();
    let mut commit_times = Vec::new();
    for i in 1..=commits {
        let waiting: Vec<_> = (0..WAITERS)
            .map(|_| {
                let url = format!("{base}/v1/refunds/{refund}&min_position={TOPIC}:0:{i}&max_wait_ms=5000");
                std::thread::spawn(move || {
                    assert_eq!(get(&agent(), &url), 200, "{url}");
                    Instant::now()
                })
            })
            .collect();
        // Time for every request to arrive and start waiting.
        std::thread::sleep(Duration::from_millis(30));
        let started = Instant::now();
        commit(&store, i, i + 1)?;
        let committed = Instant::now();
        commit_times.push(committed - started);
        for waiter in waiting {
            answers.push(waiter.join().expect("waiter").saturating_duration_since(committed));
        }
    }
    answers.sort();
    commit_times.sort();
    println!(
        "durable commit to a waiting request's answer, {commits} commits x {WAITERS} waiters:\n  \
         p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (the commit itself: p50 {:.3} ms)",
        ms(percentile(&answers, 50)),
        ms(percentile(&answers, 99)),
        ms(*answers.last().unwrap_or(&Duration::ZERO)),
        ms(percentile(&commit_times, 50)),
    );
    Ok(())
}
