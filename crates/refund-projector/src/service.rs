//! `run` (and the consuming half of `demo`): the Kafka consumer and the API
//! in one process, over one store, stopped together by SIGTERM or Ctrl-C.

use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use refunds_api::{AppState, Auth, HeldGap, IngestProbe, PartitionLag, StoreSlot};
use refunds_ingest::kafka_source::{IngestError, IngestReport, IngestStatus, KafkaParams, Shutdown, consume};
use refunds_store::Store;

/// The consumer's status, as the API asks for it.
struct Probe {
    status: Arc<IngestStatus>,
    ready_max_lag: i64,
    stall_after: Option<Duration>,
}

impl IngestProbe for Probe {
    fn topic(&self) -> Option<String> {
        Some(self.status.topic())
    }

    fn partitions(&self) -> Vec<PartitionLag> {
        self.status
            .partitions()
            .into_iter()
            .map(|p| PartitionLag {
                topic: p.topic,
                partition: p.partition,
                applied_offset: p.applied_offset,
                high_watermark: p.high_watermark,
                lag: p.lag,
            })
            .collect()
    }

    fn not_ready_reason(&self) -> Option<String> {
        self.status.not_ready_reason(self.ready_max_lag, self.stall_after)
    }

    fn total_lag(&self) -> Option<i64> {
        self.status.total_lag()
    }

    fn held_gaps(&self) -> Vec<HeldGap> {
        self.status
            .held_gaps()
            .into_iter()
            .map(|gap| HeldGap {
                topic: gap.topic,
                partition: gap.partition,
                needed: gap.needed,
                available: gap.available,
                reason: gap.reason.as_str().to_owned(),
            })
            .collect()
    }

    fn topic_settings(&self) -> Option<serde_json::Value> {
        let settings = self.status.topic_settings()?;
        Some(serde_json::json!({
            "topic": self.status.topic(),
            "cleanup_policy": settings.cleanup_policy,
            "retention_ms": settings.retention_ms,
            "retention_bytes": settings.retention_bytes,
            "warnings": settings.warnings,
        }))
    }
}

pub struct ServiceParams<'a> {
    pub db: &'a Path,
    pub listen: &'a str,
    pub auth: Auth,
    /// What keeps `auth` current (keys file, JWKS, SIGHUP).
    pub watch: crate::credentials::Watch,
    pub kafka: KafkaParams,
    pub ready_max_lag: i64,
    /// A consumer with events waiting that applies nothing for this long is
    /// stalled (`None`: never).
    pub stall_after: Option<Duration>,
    /// Most requests waiting for a `min_position` at once.
    pub max_waiting_requests: usize,
    /// Bound of the kept summary answers (0: none kept).
    pub summary_cache_bytes: usize,
}

/// What a caller of [`run_service`] may do once the API listens (the demo
/// prints its banner and starts its producer there).
pub struct Started<'a> {
    pub address: std::net::SocketAddr,
    pub status: &'a Arc<IngestStatus>,
    pub shutdown: &'a Shutdown,
}

/// Consumes and serves until SIGTERM or Ctrl-C, then stops the consumer
/// (finishing or abandoning its batch atomically, making the last commit
/// durable, leaving the group) and the server.
pub fn run_service(params: ServiceParams<'_>, on_started: impl FnOnce(Started<'_>)) -> anyhow::Result<()> {
    // The slot holds the only long-lived handle: a reopen after an I/O
    // error must be able to close the store.
    let store = Arc::new(crate::open_store(params.db)?);
    let status = Arc::new(IngestStatus::new(&params.kafka.topic));
    let shutdown = Shutdown::new();
    let mut state = AppState::new(store, Arc::new(params.auth), params.db);
    state.ingest = Some(Arc::new(Probe {
        status: status.clone(),
        ready_max_lag: params.ready_max_lag,
        stall_after: params.stall_after,
    }));
    state.metrics = crate::telemetry::metrics_renderer();
    state.waiters = Arc::new(refunds_api::Waiters::new(params.max_waiting_requests));
    state.answers = Arc::new(refunds_api::Answers::new(params.summary_cache_bytes));

    let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
    params.watch.start(&state.auth, &runtime)?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(params.listen))
        .with_context(|| format!("failed to listen on {}", params.listen))?;
    let address = listener.local_addr().context("failed to read the listening address")?;

    let consumer = {
        let slot = state.store.clone();
        let status = status.clone();
        let shutdown = shutdown.clone();
        let kafka = params.kafka.clone();
        let db = params.db.to_path_buf();
        thread::Builder::new()
            .name("kafka-supervisor".to_owned())
            .spawn(move || {
                let result = supervise(&slot, &db, &kafka, &status, &shutdown);
                // However it ends, the server goes with it.
                shutdown.trigger();
                result
            })
            .context("failed to start the consumer")?
    };

    // The stall watchdog has a thread of its own, so that a stuck poll or
    // writer thread, or a store being reopened, is still seen.
    if let Some(after) = params.stall_after {
        let (status, shutdown) = (status.clone(), shutdown.clone());
        thread::Builder::new()
            .name("stall-watch".to_owned())
            .spawn(move || {
                while !shutdown.is_triggered() {
                    status.check_stall(after);
                    thread::sleep(Duration::from_millis(250));
                }
            })
            .context("failed to start the stall watchdog")?;
    }
    eprintln!("listening on http://{address}");
    tracing::info!(%address, topic = %params.kafka.topic, group = %params.kafka.group_id, "consuming and serving");
    on_started(Started { address, status: &status, shutdown: &shutdown });

    let server_shutdown = shutdown.clone();
    let slot = state.store.clone();
    let served = runtime.block_on(async move {
        axum::serve(listener, refunds_api::router(state))
            .with_graceful_shutdown(async move {
                tokio::select! {
                    () = crate::shutdown_signal() => {}
                    () = wait_for(server_shutdown.clone()) => {}
                }
                server_shutdown.trigger();
            })
            .await
    });
    shutdown.trigger();
    let stopping = Instant::now();
    let report = consumer.join().map_err(|_| anyhow::anyhow!("the consumer thread panicked"))?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    close_store(&slot);
    let report = report.context("the consumer failed")?;
    tracing::info!(
        applied = report.applied,
        duplicate = report.duplicate,
        invalid = report.invalid,
        skipped = report.skipped,
        dead_letters_sent = report.dead_letters_sent,
        stop_ms = u64::try_from(stopping.elapsed().as_millis()).unwrap_or(u64::MAX),
        "stopped"
    );
    served.context("the server failed")?;
    Ok(())
}

/// The identity of the file at `path` (device, inode): a rebuilt store is
/// renamed over the live one, which changes it.
pub fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// If the file at `db` is no longer the one `current` was opened from,
/// opens the new one. Logs and keeps the current store when it cannot.
pub fn swapped_store(db: &Path, opened: &mut Option<(u64, u64)>) -> Option<Store> {
    let now = file_identity(db);
    if now.is_none() || now == *opened {
        return None;
    }
    match crate::open_store(db) {
        Ok(store) => {
            tracing::info!(db = %db.display(), "the store file was replaced (rebuild); serving the new store");
            *opened = now;
            Some(store)
        }
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "the store file changed but cannot be opened yet");
            None
        }
    }
}

/// Runs the consumer over the slot's store; when the store file is replaced
/// (`rebuild`), swaps the new store into the API at once and restarts the
/// consumer on it (it resumes from the new store's offsets).
fn supervise(
    slot: &StoreSlot,
    db: &Path,
    kafka: &KafkaParams,
    status: &Arc<IngestStatus>,
    shutdown: &Shutdown,
) -> Result<IngestReport, IngestError> {
    let mut opened = file_identity(db);
    let mut total = IngestReport::default();
    // Consecutive store failures, for the backoff between reopen attempts.
    let mut failures: u32 = 0;
    let mut last_failure = Instant::now();
    loop {
        let Some(store) = slot.get() else {
            return Ok(total);
        };
        let run = Shutdown::new();
        let consumer = {
            let (kafka, status, run) = (kafka.clone(), status.clone(), run.clone());
            thread::Builder::new().name("kafka-poll".to_owned()).spawn(move || consume(store, &kafka, status, run))?
        };
        let swapped = loop {
            for _ in 0..10 {
                if shutdown.is_triggered() || consumer.is_finished() {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
            if shutdown.is_triggered() || consumer.is_finished() {
                break false;
            }
            if let Some(store) = swapped_store(db, &mut opened) {
                // The API reads the new store from the next request on.
                slot.replace(Arc::new(store));
                break true;
            }
        };
        run.trigger();
        let joined = consumer.join().map_err(|_| IngestError::Config("the consumer thread panicked".to_owned()))?;
        let report = match joined {
            Err(IngestError::StoreFailed(why)) => {
                failures = if last_failure.elapsed() < Duration::from_secs(60) { failures + 1 } else { 1 };
                last_failure = Instant::now();
                let backoff = Duration::from_secs(1 << failures.min(5)).min(Duration::from_secs(30));
                tracing::warn!(%why, retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX), "closing and reopening the store; the API answers 503 meanwhile");
                reopen(slot, db, shutdown, backoff);
                // The reopened store is back at its last durable commit.
                status.reset();
                opened = file_identity(db);
                continue;
            }
            other => other?,
        };
        total += report;
        if !swapped {
            return Ok(total);
        }
        status.reset();
    }
}

/// Closes the store (once the requests in flight let go of it) and opens it
/// again, retrying with backoff (1 s doubling to 30 s) until it opens or
/// shutdown: redb writes nothing more after an I/O error until reopened.
fn reopen(slot: &StoreSlot, db: &Path, shutdown: &Shutdown, wait: Duration) {
    close_store(slot);
    let until = Instant::now() + wait;
    while Instant::now() < until && !shutdown.is_triggered() {
        thread::sleep(Duration::from_millis(50));
    }
    let mut backoff = Duration::from_secs(1);
    while !shutdown.is_triggered() {
        match crate::open_store(db) {
            Ok(store) => {
                tracing::info!(db = %db.display(), "store reopened; consuming again from its offsets");
                slot.replace(Arc::new(store));
                return;
            }
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX), "cannot reopen the store");
                let until = Instant::now() + backoff;
                while Instant::now() < until && !shutdown.is_triggered() {
                    thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Closes the store in `slot` once no request holds it (up to 10 s), so
/// that redb marks the file clean: a store left open at exit is repaired on
/// its next open, which reads every page (minutes for a 10 GB store).
pub(crate) fn close_store(slot: &StoreSlot) {
    if let Some(store) = slot.take() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&store) > 1 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        drop(store);
    }
}

/// Resolves once `shutdown` is triggered from elsewhere (the consumer
/// failing to start, say).
async fn wait_for(shutdown: Shutdown) {
    while !shutdown.is_triggered() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
