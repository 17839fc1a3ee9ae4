//! Logs (tracing: text on a terminal, JSON on request) and the Prometheus
//! recorder behind `GET /metrics`.

use std::io;
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Log level from `RUST_LOG` (default `info`), on stderr.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's metrics recorder (once) and returns what renders
/// `/metrics`. `None` if another recorder was installed first.
pub fn metrics_renderer() -> Option<Arc<dyn Fn() -> String + Send + Sync>> {
    let handle = PROMETHEUS.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".to_owned()),
                &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            )
            .ok()?
            .set_buckets_for_metric(
                Matcher::Full("refund_projector_batch_events".to_owned()),
                &[1.0, 10.0, 100.0, 1_000.0, 5_000.0, 10_000.0, 20_000.0, 50_000.0],
            )
            .ok()?
            .install_recorder();
        match recorder {
            Ok(handle) => {
                // Histogram samples wait in the recorder until drained: by a
                // scrape, or by this upkeep. Without it a process nobody
                // scrapes grows by every request's and batch's sample (the
                // soak measured about 2-3 MiB a minute under 1,000 requests/s).
                let upkeep = handle.clone();
                let spawned = std::thread::Builder::new().name("metrics-upkeep".to_owned()).spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                });
                if let Err(error) = spawned {
                    tracing::warn!(%error, "metrics upkeep not started; histograms drain only when scraped");
                }
                Some(handle)
            }
            Err(error) => {
                tracing::warn!(%error, "metrics recorder not installed");
                None
            }
        }
    });
    let handle = handle.clone()?;
    describe_metrics();
    Some(Arc::new(move || handle.render()))
}

/// HELP texts and units. Each metric is emitted next to the code it
/// describes: the store (`apply_batch`), the sources (received, partitions,
/// dead letters sent), the API (requests; store size and outbox at scrape).
fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("refund_projector_events_received_total", Unit::Count, "Messages read from a source, by source.");
    describe_counter!("refund_projector_events_applied_total", Unit::Count, "Distinct valid events applied.");
    describe_counter!("refund_projector_events_duplicate_total", Unit::Count, "Repeated events (equal JSON).");
    describe_counter!(
        "refund_projector_events_conflicting_duplicate_total",
        Unit::Count,
        "Repeated event ids with different content."
    );
    describe_counter!("refund_projector_events_invalid_total", Unit::Count, "Invalid messages, by reason.");
    describe_counter!("refund_projector_refunds_created_total", Unit::Count, "Refunds first seen.");
    describe_counter!(
        "refund_projector_dead_letters_sent_total",
        Unit::Count,
        "Dead letters delivered, by destination."
    );
    describe_gauge!(
        "refund_projector_dead_letters_pending",
        Unit::Count,
        "Dead letters in the outbox, not yet delivered."
    );
    describe_gauge!("refund_projector_refunds", Unit::Count, "Refunds in the store.");
    describe_gauge!("refund_projector_store_size_bytes", Unit::Bytes, "Size of the store file.");
    describe_gauge!(
        "refund_projector_last_applied_event_timestamp_seconds",
        Unit::Seconds,
        "Arrival time (UNIX seconds) of the newest applied event."
    );
    describe_gauge!("refund_projector_partition_applied_offset", "Next offset to apply, per partition.");
    describe_gauge!("refund_projector_partition_high_watermark", "High watermark, per partition.");
    describe_gauge!("refund_projector_partition_lag_events", Unit::Count, "Messages not yet applied, per partition.");
    describe_histogram!("refund_projector_batch_events", Unit::Count, "Messages per applied batch.");
    describe_histogram!(
        "refund_projector_batch_apply_duration_seconds",
        Unit::Seconds,
        "Time to apply one batch, commit included."
    );
    describe_histogram!("refund_projector_store_commit_duration_seconds", Unit::Seconds, "Time of the store commit.");
    describe_counter!(
        "refund_projector_http_requests_total",
        Unit::Count,
        "HTTP requests, by route template and status."
    );
    describe_histogram!(
        "refund_projector_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency, by route template."
    );
    // Credentials (refunds_api::auth): the keys file and the JWKS.
    describe_gauge!("refund_projector_api_keys", Unit::Count, "API keys accepted now.");
    describe_gauge!(
        "refund_projector_api_keys_reload_failed",
        "1 while the API keys file on disk cannot be used (the previous keys stay in use), else 0."
    );
    describe_counter!(
        "refund_projector_api_keys_reload_errors_total",
        Unit::Count,
        "Reloads of the API keys file that failed (unreadable or invalid)."
    );
    describe_gauge!(
        "refund_projector_api_keys_loaded_timestamp_seconds",
        Unit::Seconds,
        "When the API keys in use were read (UNIX seconds)."
    );
    describe_counter!("refund_projector_jwks_fetches_total", Unit::Count, "JWKS fetches, by outcome (ok, error).");
    describe_gauge!("refund_projector_jwks_refresh_failed", "1 while the last JWKS fetch failed, else 0.");
    describe_gauge!("refund_projector_jwks_keys", Unit::Count, "JWKS keys in use (RS256 and ES256).");
    describe_gauge!(
        "refund_projector_jwks_refreshed_timestamp_seconds",
        Unit::Seconds,
        "When the JWKS keys in use were fetched (UNIX seconds)."
    );
}
