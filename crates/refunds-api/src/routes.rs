//! Routes and handlers.

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use refunds_domain::RefundState;
use refunds_store::{AuditEntry, ReadTransaction, SnapshotId, Store, source_json};
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, store_unavailable};
use crate::params::Params;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/refunds", get(list_refunds))
        // A static segment wins over `{id}` in axum's router, so `summary`
        // is never taken for a refund id (a test pins it).
        .route("/v1/refunds/summary", get(crate::summary::summary))
        .route("/v1/refunds/{id}", get(get_refund))
        .route("/v1/refunds/{id}/events", get(get_refund_events))
        .route("/v1/status", get(status))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/admin/export", get(admin_export))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::freshness::freshness))
        .layer(axum::middleware::from_fn(observe))
        .with_state(state)
}

/// The route template of a path, for metric labels and logs (never the raw
/// path: ids would make a label per refund).
fn route_template(path: &str) -> &'static str {
    match path.split('/').collect::<Vec<_>>()[..] {
        ["", "v1", "refunds"] => "/v1/refunds",
        ["", "v1", "refunds", "summary"] => "/v1/refunds/summary",
        ["", "v1", "refunds", _] => "/v1/refunds/{id}",
        ["", "v1", "refunds", _, "events"] => "/v1/refunds/{id}/events",
        ["", "v1", "status"] => "/v1/status",
        ["", "healthz"] => "/healthz",
        ["", "readyz"] => "/readyz",
        ["", "metrics"] => "/metrics",
        ["", "openapi.json"] => "/openapi.json",
        ["", "admin", "export"] => "/admin/export",
        _ => "unmatched",
    }
}

/// One span per request (route, status, tenant, key id; never a secret),
/// and the request counter and latency histogram.
async fn observe(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let route = route_template(request.uri().path());
    let method = request.method().clone();
    let span = tracing::info_span!(
        "request",
        %method,
        route,
        status = tracing::field::Empty,
        tenant = tracing::field::Empty,
        key_id = tracing::field::Empty,
    );
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    span.record("status", status);
    let status_label = status.to_string();
    metrics::counter!("refund_projector_http_requests_total", "route" => route, "status" => status_label).increment(1);
    metrics::histogram!("refund_projector_http_request_duration_seconds", "route" => route)
        .record(elapsed.as_secs_f64());
    span.in_scope(|| {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if status >= 500 && status != 503 {
            tracing::warn!(micros, "request failed");
        } else {
            tracing::debug!(micros, "request");
        }
    });
    response
}

/// The OpenAPI 3.1 document of this API, kept in `schemas/openapi.json`; the
/// black-box suite validates every response it receives against it.
pub const OPENAPI: &str = include_str!("../../../schemas/openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn no_route() -> ApiError {
    ApiError::not_found("no such route")
}

/// A known route, another method: axum adds the `Allow` header (every route
/// serves GET, and HEAD with it).
async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::MethodNotAllowed { method: method.to_string() }
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// `serve` opens the store before it listens, so it is ready once it
/// answers; with a consumer, once partitions are assigned and the lag is
/// under the configured bound.
async fn readyz(State(state): State<AppState>) -> Response {
    let reason = match state.store.get() {
        None => Some("the store is being reopened".to_owned()),
        Some(_) => state.ingest.as_ref().and_then(|ingest| ingest.not_ready_reason()),
    };
    match reason {
        None => axum::Json(json!({"status": "ready"})).into_response(),
        Some(reason) => ApiError::Unavailable { message: reason }.into_response(),
    }
}

/// Prometheus text exposition. The store's size and outbox are read here, at
/// scrape time.
async fn metrics(State(state): State<AppState>) -> Response {
    metrics::gauge!("refund_projector_store_size_bytes").set(Store::file_bytes(&state.db_path) as f64);
    let stats = match state.store.get() {
        Some(store) => tokio::task::spawn_blocking(move || store.stats()).await.ok().and_then(Result::ok),
        None => None,
    };
    if let Some(stats) = stats {
        metrics::gauge!("refund_projector_dead_letters_pending").set(stats.dead_letters_pending as f64);
        metrics::gauge!("refund_projector_refunds").set(stats.refunds as f64);
    }
    let body = state.metrics.as_ref().map(|render| render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// `GET /admin/export` (admin): the store's export from one snapshot,
/// preceded by the line `{"checkpoints": {...}}` of the source positions that
/// snapshot covers. Streamed: `refund-projector verify --url` reads it to
/// compare a live store with a rebuild up to exactly those positions.
async fn admin_export(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate_admin(&state, &headers, query.as_deref(), "/admin/export")?;
    let store = current_store(&state)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter { tx, buffer: Vec::with_capacity(CHUNK) };
        if let Err(error) = store
            .export_with_checkpoints(&mut out)
            .map(|_| ())
            .and_then(|()| out.flush_chunk().map_err(refunds_store::ExportError::from))
        {
            // The client sees a truncated body (no final newline-terminated
            // refund count line is promised); log why.
            tracing::warn!(%error, "export stream ended early");
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], axum::body::Body::from_stream(stream)).into_response())
}

const CHUNK: usize = 256 * 1024;

/// A `Write` that hands 256 KiB chunks to the response body.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    buffer: Vec<u8>,
}

impl ChunkWriter {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(chunk).map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client gone"))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= CHUNK {
            self.flush_chunk()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.flush_chunk()
    }
}

/// The headers of a response read from one snapshot: its content type, the
/// snapshot's position and newest arrival, and (with a consumer) the events
/// not yet applied.
pub(crate) fn snapshot_headers<T>(state: &AppState, snapshot: &Snapshot<T>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    crate::freshness::set_headers(&mut headers, &snapshot.positions, snapshot.last_applied_at);
    if let Some(lag) = state.ingest.as_ref().and_then(|ingest| ingest.total_lag()) {
        headers.insert("x-consumer-lag", header::HeaderValue::from(lag));
    }
    headers
}

pub(crate) fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let header = headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let caller = state.auth.authenticate(header, now)?;
    let span = tracing::Span::current();
    span.record("key_id", caller.name.as_str());
    span.record("tenant", caller.tenant.as_deref().unwrap_or("*"));
    if !caller.read {
        return Err(ApiError::forbidden("this key lacks the refunds:read scope"));
    }
    Ok(caller)
}

/// An admin route taking no parameters: the caller must hold `admin`.
fn authenticate_admin(state: &AppState, headers: &HeaderMap, query: Option<&str>, route: &str) -> Result<(), ApiError> {
    let caller = authenticate(state, headers)?;
    if !caller.admin {
        return Err(ApiError::forbidden(format!("{route} needs the admin scope")));
    }
    Params::parse(query, &[])?;
    Ok(())
}

/// The store, or 503 while it is being reopened.
pub(crate) fn current_store(state: &AppState) -> Result<std::sync::Arc<Store>, ApiError> {
    state.store.get().ok_or_else(|| ApiError::Unavailable { message: "the store is being reopened".to_owned() })
}

/// What a handler read from one snapshot, with that snapshot's freshness.
pub(crate) struct Snapshot<T> {
    pub(crate) value: T,
    positions: std::sync::Arc<refunds_store::Positions>,
    last_applied_at: Option<refunds_domain::Timestamp>,
}

/// Store reads running on an async worker right now.
static INLINE_READS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs a store read in one snapshot, and reads that snapshot's position
/// and newest arrival: on this async worker while no other read runs on one
/// (most reads take well under a millisecond, and handing them to another
/// thread cost a fifth of the server's time), else on the blocking pool, so
/// that a slow read never holds every worker.
pub(crate) async fn read<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Store, &ReadTransaction) -> Result<T, ApiError> + Send + 'static,
) -> Result<Snapshot<T>, ApiError> {
    use std::sync::atomic::Ordering;
    let store = current_store(state)?;
    let in_snapshot = move |store: &Store| -> Result<Snapshot<T>, ApiError> {
        let txn = store.read().map_err(|e| store_unavailable(&e))?;
        let value = f(store, &txn)?;
        let positions = refunds_store::positions_in(&txn).map_err(|e| store_unavailable(&e))?;
        let last_applied_at = refunds_store::last_applied_at_in(&txn).map_err(|e| store_unavailable(&e))?;
        Ok(Snapshot { value, positions: std::sync::Arc::new(positions), last_applied_at })
    };
    if INLINE_READS.fetch_add(1, Ordering::AcqRel) == 0 {
        struct Leave;
        impl Drop for Leave {
            fn drop(&mut self) {
                INLINE_READS.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _leave = Leave;
        // A panic answers 503, as it does from the blocking pool.
        return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| in_snapshot(&store)))
            .unwrap_or_else(|_| Err(store_unavailable(&"a store read panicked")));
    }
    INLINE_READS.fetch_sub(1, Ordering::AcqRel);
    tokio::task::spawn_blocking(move || in_snapshot(&store)).await.map_err(|e| store_unavailable(&e))?
}

/// [`read`], telling `f` which committed state the snapshot holds (see
/// [`refunds_store::SnapshotId`]); only routes that keep answers pay for it.
pub(crate) async fn read_identified<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Store, &ReadTransaction, SnapshotId) -> Result<T, ApiError> + Send + 'static,
) -> Result<Snapshot<T>, ApiError> {
    read(state, move |store, txn| {
        let id = store.snapshot_id(txn).map_err(|e| store_unavailable(&e))?;
        f(store, txn, id)
    })
    .await
}

/// The tenant a single-refund request is about: the requested tenant, or for
/// a `"*"` caller naming none, the only tenant holding that id. Never reveals
/// another tenant's refund.
fn resolve_tenant(
    store: &Store,
    txn: &ReadTransaction,
    caller: &Caller,
    params: &Params,
    refund_id: &str,
) -> Result<String, ApiError> {
    if let Some(tenant) = caller.requested_tenant(params)? {
        return Ok(tenant);
    }
    let mut holders = Vec::new();
    for (tenant, _) in store.tenants() {
        if store.get_refund_in(txn, &tenant, refund_id).map_err(|e| store_unavailable(&e))?.is_some() {
            holders.push(tenant);
        }
    }
    match holders.len() {
        0 => Err(ApiError::not_found(format!("no refund {refund_id}"))),
        1 => Ok(holders.remove(0)),
        _ => Err(ApiError::invalid("tenant_id", "this refund id exists under several tenants; give tenant_id")),
    }
}

fn find_refund(
    store: &Store,
    txn: &ReadTransaction,
    caller: &Caller,
    params: &Params,
    id: &str,
) -> Result<RefundState, ApiError> {
    let tenant = resolve_tenant(store, txn, caller, params, id)?;
    store
        .get_refund_in(txn, &tenant, id)
        .map_err(|e| store_unavailable(&e))?
        .ok_or_else(|| ApiError::not_found(format!("no refund {id}")))
}

async fn list_refunds(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers)?;
    let params = Params::parse(query.as_deref(), crate::list::KNOWN)?;
    let snapshot = read(&state, move |store, txn| {
        let request = crate::list::parse(store, &caller, &params, params.pairs())?;
        crate::list::execute(store, txn, &request)
    })
    .await?;
    Ok((snapshot_headers(&state, &snapshot), snapshot.value).into_response())
}

/// What both single-refund routes start with: the caller, the parameters
/// and the id (an id that is not valid UTF-8 once decoded names no refund).
fn single_refund_request(
    state: &AppState,
    id: Result<Path<String>, PathRejection>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<(Caller, Params, String), ApiError> {
    let caller = authenticate(state, headers)?;
    let params = Params::parse(query, &["tenant_id", "owner_id"])?;
    let Path(id) = id.map_err(|_| ApiError::not_found("no such refund"))?;
    Ok((caller, params, id))
}

async fn get_refund(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (caller, params, id) = single_refund_request(&state, id, query.as_deref(), &headers)?;
    let snapshot = read(&state, move |store, txn| {
        let refund = find_refund(store, txn, &caller, &params, &id)?;
        Ok(refunds_domain::render_refund(&refund))
    })
    .await?;
    Ok((snapshot_headers(&state, &snapshot), snapshot.value).into_response())
}

async fn get_refund_events(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (caller, params, id) = single_refund_request(&state, id, query.as_deref(), &headers)?;
    let snapshot = read(&state, move |store, txn| {
        let refund = find_refund(store, txn, &caller, &params, &id)?;
        let trail = store.audit_trail_in(txn, &refund.tenant_id, &refund.id).map_err(|e| store_unavailable(&e))?;
        let results: Vec<Value> = trail.iter().map(audit_json).collect();
        Ok(json!({"object": "list", "refund_id": refund.id, "results": results}).to_string())
    })
    .await?;
    Ok((snapshot_headers(&state, &snapshot), snapshot.value).into_response())
}

fn audit_json(entry: &AuditEntry) -> Value {
    json!({
        "event_id": entry.event_id,
        "type": entry.event_type,
        "occurred_at": entry.occurred_at.to_string(),
        "received_at": entry.received_at.to_string(),
        "outcome": entry.outcome.as_str(),
        "source": source_json(&entry.source),
        "payload": entry.payload,
    })
}

async fn status(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate_admin(&state, &headers, query.as_deref(), "/v1/status")?;
    let path = state.db_path.clone();
    let snapshot = read(&state, |_, txn| {
        let stats = Store::stats_in(txn).map_err(|e| store_unavailable(&e))?;
        let accepted = refunds_store::history_gaps_in(txn).map_err(|e| store_unavailable(&e))?;
        Ok((stats, accepted))
    })
    .await?;
    let (stats, accepted) = &snapshot.value;
    let position = (!snapshot.positions.is_empty()).then(|| snapshot.positions.to_string());
    // Held gaps (not consumed, not ready) and accepted ones (recorded in
    // the store for its whole life), by topic, partition and offset.
    let mut history_gaps: Vec<(String, i32, i64, Value)> = Vec::new();
    for gap in state.ingest.as_ref().map(|ingest| ingest.held_gaps()).unwrap_or_default() {
        let value = json!({
            "topic": gap.topic, "partition": gap.partition, "needed": gap.needed,
            "available": gap.available, "reason": gap.reason, "accepted": false,
        });
        history_gaps.push((gap.topic, gap.partition, gap.needed, value));
    }
    for gap in accepted.iter().cloned() {
        let mut value = gap.to_json();
        value["accepted"] = json!(true);
        history_gaps.push((gap.topic, gap.partition, gap.needed, value));
    }
    history_gaps.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
    let history_gaps: Vec<Value> = history_gaps.into_iter().map(|(_, _, _, value)| value).collect();
    let topic_settings = state.ingest.as_ref().and_then(|ingest| ingest.topic_settings());
    let partitions: Vec<Value> = state
        .ingest
        .as_ref()
        .map(|ingest| ingest.partitions())
        .unwrap_or_default()
        .iter()
        .map(|p| {
            json!({
                "topic": p.topic,
                "partition": p.partition,
                "applied_offset": p.applied_offset,
                "high_watermark": p.high_watermark,
                "lag": p.lag,
            })
        })
        .collect();
    let body = json!({
            "events_applied": stats.events_applied,
            "events_duplicate": stats.events_duplicate,
            "events_conflicting_duplicate": stats.events_conflicting_duplicate,
            "events_invalid": stats.events_invalid,
            "dead_letters_pending": stats.dead_letters_pending,
            "refunds": stats.refunds,
            "last_applied_at": stats.last_applied_at.map(|t| t.to_string()),
            "store_bytes": Store::file_bytes(&path),
            "partitions": partitions,
            "history_gaps": history_gaps,
            "topic_settings": topic_settings,
            "position": position,
            "auth": state.auth.status_json(),
    });
    Ok((StatusCode::OK, snapshot_headers(&state, &snapshot), body.to_string()).into_response())
}
