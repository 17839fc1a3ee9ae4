//! `refund-projector`: the command line. Each subcommand builds typed params
//! for the library crates and reports errors once, here.

mod config;
mod credentials;
mod demo;
mod produce;
mod rebuild;
mod service;
mod telemetry;

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use refunds_ingest::file_source::{Input, ReplayParams, ReplayProgress, replay};
use refunds_ingest::kafka_source::{GapPolicy, KafkaParams};
use refunds_store::{Store, StoreParams};
use telemetry::LogFormat;

/// Projects refund lifecycle events into a redb store and serves list queries.
///
/// Every flag can also be set through an environment variable
/// `REFUND_PROJECTOR_<FLAG>` (for example `REFUND_PROJECTOR_DB`) or in a TOML
/// `--config` file (`db = "refunds.redb"`, librdkafka settings in a `[kafka]`
/// table); a flag beats the environment, which beats the file.
#[derive(Debug, Parser)]
#[command(name = "refund-projector", version, about, long_about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "REFUND_PROJECTOR_LOG_FORMAT")]
    log_format: LogFormat,
    /// TOML file of settings: flag names as keys, `[kafka]` for librdkafka.
    #[arg(long, global = true, env = "REFUND_PROJECTOR_CONFIG")]
    config: Option<PathBuf>,
    /// The store's page cache, in MiB (redb's cache: the process's RSS grows
    /// up to about this much above its base as the store is read and
    /// written).
    #[arg(long, global = true, default_value_t = 256, env = "REFUND_PROJECTOR_CACHE_MIB")]
    cache_mib: usize,
    #[command(subcommand)]
    command: Command,
}

/// What `run` and `demo` share: the API's credentials.
#[derive(Debug, clap::Args)]
struct KafkaArgs {
    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "REFUND_PROJECTOR_BROKERS")]
    brokers: String,
    /// Topic of refund events.
    #[arg(long, default_value = "refund-events", env = "REFUND_PROJECTOR_TOPIC")]
    topic: String,
    /// Consumer group, used only to publish the store's offsets for lag
    /// tools: every instance consumes every partition of the topic, so
    /// instances sharing a group id each build the whole projection.
    #[arg(long, default_value = "refund-projector", env = "REFUND_PROJECTOR_GROUP_ID")]
    group_id: String,
    /// Dead-letter topic [default: <topic>.dlq].
    #[arg(long, env = "REFUND_PROJECTOR_DLQ_TOPIC")]
    dlq_topic: Option<String>,
    /// A librdkafka setting for the consumer and the dead-letter producer
    /// (SASL, TLS, ...), as key=value; repeatable.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", value_parser = parse_key_value, env = "REFUND_PROJECTOR_KAFKA_OPTION", value_delimiter = ';')]
    kafka_options: Vec<(String, String)>,
    /// Most events per write transaction.
    #[arg(long, default_value_t = refunds_ingest::DEFAULT_BATCH_EVENTS, env = "REFUND_PROJECTOR_BATCH_EVENTS")]
    batch_events: usize,
    /// A batch is committed at most this many milliseconds after its first message.
    #[arg(long, default_value_t = 100, env = "REFUND_PROJECTOR_BATCH_WAIT_MS")]
    batch_wait_ms: u64,
    /// Milliseconds between durable (fsynced) commits; 0 makes every commit
    /// durable. Kafka offsets and dead letters leave the process only after a
    /// durable commit.
    #[arg(long, default_value_t = refunds_ingest::DEFAULT_DURABLE_EVERY_MS, env = "REFUND_PROJECTOR_DURABLE_EVERY_MS")]
    durable_every_ms: u64,
    /// `/readyz` is 503 while the total lag is above this many events.
    #[arg(long, default_value_t = 1_000, env = "REFUND_PROJECTOR_READY_MAX_LAG")]
    ready_max_lag: i64,
    /// The consumer counts as stalled when events wait (lag above zero) and
    /// nothing has been applied for this many milliseconds: `/readyz` answers
    /// 503 with the reason, `refund_projector_consumer_stalled` is 1 and an
    /// error is logged once per stall. 0 turns the check off.
    #[arg(long, default_value_t = DEFAULT_STALL_AFTER_MS, env = "REFUND_PROJECTOR_STALL_AFTER_MS")]
    stall_after_ms: u64,
    /// Consume past a history gap: records deleted (retention) before the
    /// store applied them, or a store position past a partition's end (a
    /// recreated topic). The store then misses that history for good; the
    /// gap is recorded in it and listed in `/v1/status` `history_gaps` for
    /// its whole life. Without it such a partition is not consumed and
    /// `/readyz` answers 503 with the reason.
    #[arg(long, env = "REFUND_PROJECTOR_ACCEPT_HISTORY_GAP", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    accept_history_gap: bool,
    /// Most requests that may wait at once for a `min_position` the store
    /// has not reached; one more is answered 503 `not_caught_up` at once.
    /// A waiting request costs its connection (about 20 KiB) and no thread.
    #[arg(long, default_value_t = refunds_api::DEFAULT_MAX_WAITING, env = "REFUND_PROJECTOR_MAX_WAITING_REQUESTS")]
    max_waiting_requests: usize,
}

impl KafkaArgs {
    fn params(&self) -> KafkaParams {
        let mut params = KafkaParams::new(&self.brokers, &self.topic, &self.group_id);
        if let Some(dlq) = &self.dlq_topic {
            params.dlq_topic = dlq.clone();
        }
        params.options = self.kafka_options.clone();
        params.batch_events = self.batch_events.max(1);
        params.batch_wait = Duration::from_millis(self.batch_wait_ms);
        params.durable_every = Duration::from_millis(self.durable_every_ms);
        params.on_history_gap = if self.accept_history_gap { GapPolicy::Accept } else { GapPolicy::Hold };
        params
    }
}

/// What `run` and `serve` share: where the API listens and who may call it.
#[derive(Debug, clap::Args)]
struct ApiArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080", env = "REFUND_PROJECTOR_LISTEN")]
    listen: String,
    /// TOML file of API keys (`[[keys]]` with id, secret_sha256 or secret,
    /// tenant, scopes). Read again on SIGHUP and when it changes on disk; a
    /// file that no longer parses keeps the keys in use.
    #[arg(long, env = "REFUND_PROJECTOR_API_KEYS")]
    api_keys: PathBuf,
    #[command(flatten)]
    jwt: credentials::JwtArgs,
    /// Memory, in MiB, for rendered summary answers of the newest snapshot:
    /// a dashboard reloading a summary before the next commit gets the kept
    /// answer. 0 computes every one.
    #[arg(long, default_value_t = refunds_api::DEFAULT_SUMMARY_CACHE_BYTES >> 20, env = "REFUND_PROJECTOR_SUMMARY_CACHE_MIB")]
    summary_cache_mib: usize,
}

/// Where `rebuild` and `verify` read the events: a file, or a topic from its
/// beginning.
#[derive(Debug, clap::Args)]
struct SourceArgs {
    /// Rebuild from this NDJSON event file (what `replay` applied).
    #[arg(long, env = "REFUND_PROJECTOR_INPUT", conflicts_with = "brokers")]
    input: Option<PathBuf>,
    /// Rebuild from this Kafka cluster's topic, from the beginning.
    #[arg(long, env = "REFUND_PROJECTOR_BROKERS")]
    brokers: Option<String>,
    /// Topic of refund events.
    #[arg(long, default_value = "refund-events", env = "REFUND_PROJECTOR_TOPIC")]
    topic: String,
    /// Prefix of the throwaway consumer group (it commits no offsets).
    #[arg(long, default_value = "refund-projector", env = "REFUND_PROJECTOR_GROUP_ID")]
    group_id: String,
    /// A librdkafka setting, as key=value; repeatable.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", value_parser = parse_key_value, env = "REFUND_PROJECTOR_KAFKA_OPTION", value_delimiter = ';')]
    kafka_options: Vec<(String, String)>,
    /// Build from the topic even when a partition's beginning was deleted
    /// (retention): the result then lacks that history (the gap is recorded
    /// in it). Without it the build refuses to start.
    #[arg(long, env = "REFUND_PROJECTOR_ACCEPT_HISTORY_GAP", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    accept_history_gap: bool,
}

impl SourceArgs {
    fn source(&self) -> anyhow::Result<rebuild::Source> {
        match (&self.input, &self.brokers) {
            (Some(input), None) => Ok(rebuild::Source::File(input.clone())),
            (None, Some(brokers)) => {
                let mut params = KafkaParams::new(brokers, &self.topic, &self.group_id);
                params.options = self.kafka_options.clone();
                params.on_history_gap = if self.accept_history_gap { GapPolicy::Accept } else { GapPolicy::Refuse };
                params.check_options()?;
                Ok(rebuild::Source::Kafka(params))
            }
            _ => anyhow::bail!("give the source: --input FILE or --brokers HOSTS [--topic T]"),
        }
    }
}

/// Milliseconds without an applied event, while events wait, after which
/// the consumer counts as stalled, by default: a minute. A healthy consumer
/// with events waiting commits a batch at least every `--batch-wait-ms`
/// (100 ms) plus the commit, and a broker outage of a few seconds or a
/// rebuild's swap stays well under it; a minute of nothing is a stuck thread,
/// a store that cannot write, or a broker gone for good.
pub const DEFAULT_STALL_AFTER_MS: u64 = 60_000;

fn stall_after(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole system in one process with nothing installed: an in-process
    /// Kafka cluster, a producer of realistic events, the consumer, the store
    /// and the API. Prints the address, a demo key and ready curl lines.
    Demo {
        /// The store file [default: a temporary directory, removed at exit].
        #[arg(long, env = "REFUND_PROJECTOR_DB")]
        db: Option<PathBuf>,
        /// Address to listen on; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:8080", env = "REFUND_PROJECTOR_LISTEN")]
        listen: String,
        /// Events per second the demo producer writes.
        #[arg(long, default_value_t = 500, env = "REFUND_PROJECTOR_RATE")]
        rate: u32,
        /// Refunds the producer generates before it stops (about three events each).
        #[arg(long, default_value_t = 1_000_000, env = "REFUND_PROJECTOR_REFUNDS")]
        refunds: u64,
        /// Seed of the generated events.
        #[arg(long, default_value_t = 1, env = "REFUND_PROJECTOR_SEED")]
        seed: u64,
        /// Partitions of the demo topic.
        #[arg(long, default_value_t = 3, env = "REFUND_PROJECTOR_PARTITIONS")]
        partitions: i32,
        /// TOML file of API keys accepted besides the demo key, read again
        /// on SIGHUP and when it changes on disk.
        #[arg(long, env = "REFUND_PROJECTOR_API_KEYS")]
        api_keys: Option<PathBuf>,
        #[command(flatten)]
        jwt: credentials::JwtArgs,
    },
    /// Consume a Kafka topic into the store and serve the API.
    ///
    /// Each event takes effect exactly once: a batch and the next offset of
    /// every partition in it commit in one store transaction, and partitions
    /// resume from the store's offsets. SIGTERM or Ctrl-C finish the batch,
    /// make it durable, leave the group and exit.
    Run {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// The store file (created if missing).
        #[arg(long, env = "REFUND_PROJECTOR_DB")]
        db: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Apply an NDJSON event file (or `-` for stdin) to the store.
    ///
    /// Invalid lines go to the dead-letter file. Re-running the same input
    /// applies nothing twice; after a crash, re-running resumes where the last
    /// durable commit ended.
    Replay {
        /// Event file, one JSON event per line; `-` reads stdin.
        #[arg(long, env = "REFUND_PROJECTOR_INPUT")]
        input: PathBuf,
        /// The store file (created if missing).
        #[arg(long, env = "REFUND_PROJECTOR_DB")]
        db: PathBuf,
        /// Dead-letter file: invalid lines are appended as
        /// `{"reason", "message", "line", "raw"}`. Without it, dead letters stay
        /// in the store's outbox.
        #[arg(long, env = "REFUND_PROJECTOR_DLQ")]
        dlq: Option<PathBuf>,
        /// Events per write transaction.
        #[arg(long, default_value_t = refunds_ingest::DEFAULT_BATCH_EVENTS, env = "REFUND_PROJECTOR_BATCH_EVENTS")]
        batch_events: usize,
        /// Milliseconds between durable (fsynced) commits; 0 makes every
        /// commit durable. Commits in between are atomic and replayed from the
        /// input after a crash.
        #[arg(long, default_value_t = refunds_ingest::DEFAULT_DURABLE_EVERY_MS, env = "REFUND_PROJECTOR_DURABLE_EVERY_MS")]
        durable_every_ms: u64,
        /// Leave the file as the replay left it. By default, once the input
        /// is applied, a file that is over a tenth free pages (space freed by
        /// copy-on-write commits) is compacted, as `compact` does.
        #[arg(long, env = "REFUND_PROJECTOR_NO_COMPACT", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
        no_compact: bool,
    },
    /// Build a fresh store from the beginning of the source into `<db>.rebuild`
    /// while the live store keeps serving, compact it (as `replay` does), then
    /// swap it in atomically (a running `run` or `serve` picks it up within a
    /// second).
    Rebuild {
        /// The live store file.
        #[arg(long, env = "REFUND_PROJECTOR_DB")]
        db: PathBuf,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Rebuild into a temporary store and diff its export with the live
    /// store's, printing the differences; exits 1 if there are any. With
    /// `--url`, the live projection is read from a running instance (at one
    /// snapshot, with the source positions it covers); otherwise `--db` is
    /// opened (no other process may hold it).
    Verify {
        /// The live store file (when no process holds it).
        #[arg(long, env = "REFUND_PROJECTOR_DB", required_unless_present = "url")]
        db: Option<PathBuf>,
        /// A running instance, e.g. http://127.0.0.1:8080.
        #[arg(long, env = "REFUND_PROJECTOR_URL", requires = "api_key")]
        url: Option<String>,
        /// An admin key's secret for `--url`.
        #[arg(long, env = "REFUND_PROJECTOR_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Print every refund, as the API renders it, one JSON object per line,
    /// ordered by (tenant_id, id).
    Export {
        /// The store file.
        #[arg(long, env = "REFUND_PROJECTOR_DB")]
        db: PathBuf,
    },
    /// Print every table of a store with its rows and size, largest first:
    /// where the store's bytes go.
    Tables {
        /// The store file.
        #[arg(long, env = "REFUND_PROJECTOR_DB")]
        db: PathBuf,
    },
    /// Shrink a store file to its tables: move pages to the front and cut
    /// the free space behind them. Needs the store to itself (stop `run` or
    /// `serve` first).
    Compact {
        /// The store file.
        #[arg(long, env = "REFUND_PROJECTOR_DB")]
        db: PathBuf,
    },
    /// Serve the HTTP API over an existing store (no consumer).
    ///
    /// Prints `listening on http://ADDR` on stderr once it accepts requests;
    /// SIGTERM or Ctrl-C stop it after the requests in flight.
    Serve {
        /// The store file.
        #[arg(long, env = "REFUND_PROJECTOR_DB")]
        db: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Produce an NDJSON event file (or `-` for stdin) to a Kafka topic, one
    /// message per line keyed by its refund id; blank lines are skipped.
    Produce {
        /// Kafka bootstrap servers, comma separated.
        #[arg(long, env = "REFUND_PROJECTOR_BROKERS")]
        brokers: String,
        /// Topic to produce to.
        #[arg(long, default_value = "refund-events", env = "REFUND_PROJECTOR_TOPIC")]
        topic: String,
        /// Event file, one JSON event per line; `-` reads stdin.
        #[arg(long, env = "REFUND_PROJECTOR_INPUT")]
        input: PathBuf,
        /// Create the topic (with this many partitions) and `<topic>.dlq` when
        /// they do not exist.
        #[arg(long, env = "REFUND_PROJECTOR_CREATE_PARTITIONS")]
        create_partitions: Option<i32>,
        /// A librdkafka setting, as key=value; repeatable.
        #[arg(long = "kafka-option", value_name = "KEY=VALUE", value_parser = parse_key_value, env = "REFUND_PROJECTOR_KAFKA_OPTION", value_delimiter = ';')]
        kafka_options: Vec<(String, String)>,
    },
    /// Exit 0 if `GET URL` answers 200 (a container health check, e.g.
    /// `probe http://127.0.0.1:8080/readyz`).
    Probe {
        /// An http:// URL.
        url: String,
    },
    /// Print a realistic, seeded synthetic event stream (NDJSON) on stdout.
    Generate {
        /// Number of refunds (about three events each).
        #[arg(long, env = "REFUND_PROJECTOR_REFUNDS")]
        refunds: u64,
        /// Seed: the same seed gives the same bytes.
        #[arg(long, default_value_t = 1, env = "REFUND_PROJECTOR_SEED")]
        seed: u64,
        /// Probability that an event is repeated (same JSON, maybe reformatted).
        #[arg(long, default_value_t = 0.0, env = "REFUND_PROJECTOR_DUP_RATE")]
        dup_rate: f64,
        /// Lines are emitted through a buffer of this many lines, picked at
        /// random (0: no reordering).
        #[arg(long, default_value_t = 0, env = "REFUND_PROJECTOR_SHUFFLE_WINDOW")]
        shuffle_window: usize,
        /// Probability that an invalid line follows an event.
        #[arg(long, default_value_t = 0.0, env = "REFUND_PROJECTOR_INVALID_RATE")]
        invalid_rate: f64,
        /// How the events of refunds interleave: `realistic` (a busy
        /// platform's webhooks: a refund a second, outcomes minutes to days
        /// later, 3% delivered again hours later) or `ordered` (refunds spread
        /// over two years, few in flight at once).
        #[arg(long, value_enum, default_value_t = ArrivalArg::Realistic, env = "REFUND_PROJECTOR_ARRIVAL")]
        arrival: ArrivalArg,
    },
}

/// `generate --arrival`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ArrivalArg {
    Realistic,
    Ordered,
}

/// mimalloc instead of glibc's malloc: the apply path allocates and frees
/// millions of small keys and rows per second, and glibc's free-list work
/// (`unlink_chunk`, `_int_free`) was about a tenth of the replay profile;
/// measured on 912,612 generated events, replay went from 36.5k to 43.7k
/// events/s with this alone.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = match config::args_with_config(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    let _ = CACHE_BYTES.set(cli.cache_mib.max(1) << 20);
    telemetry::init_tracing(cli.log_format);
    refunds_ingest::disable_transparent_huge_pages();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo { db, listen, rate, refunds, seed, partitions, api_keys, jwt } => {
            demo::run_demo(demo::DemoParams { db, listen, rate, refunds, seed, partitions, api_keys, jwt })
        }
        Command::Run { kafka, db, api } => {
            let (auth, watch) = api.jwt.credentials(Some(&api.api_keys), None)?.split();
            let params = kafka.params();
            params.check_options()?;
            let service = service::ServiceParams {
                db: &db,
                listen: &api.listen,
                auth,
                watch,
                kafka: params,
                ready_max_lag: kafka.ready_max_lag,
                stall_after: stall_after(kafka.stall_after_ms),
                max_waiting_requests: kafka.max_waiting_requests,
                summary_cache_bytes: api.summary_cache_mib << 20,
            };
            service::run_service(service, |_| {})
        }
        Command::Replay { input, db, dlq, batch_events, durable_every_ms, no_compact } => {
            let mut params = ReplayParams::new(Input::from_arg(&input));
            params.dlq = dlq;
            params.batch_events = batch_events;
            params.durable_every = Duration::from_millis(durable_every_ms);
            run_replay(&db, &params, !no_compact)
        }
        Command::Export { db } => {
            let store = open_store(&db)?;
            let stdout = io::stdout();
            let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
            store.export(&mut out).context("failed to export")?;
            out.flush().context("failed to write the export")?;
            Ok(())
        }
        Command::Tables { db } => print_table_sizes(&db),
        Command::Compact { db } => {
            anyhow::ensure!(db.exists(), "the store {} does not exist", db.display());
            let mut store = open_store(&db)?;
            compact(&mut store, &db)
        }
        Command::Serve { db, api } => run_serve(&db, &api),
        Command::Produce { brokers, topic, input, create_partitions, kafka_options } => {
            let params = produce::ProduceParams {
                brokers: &brokers,
                topic: &topic,
                input: &input,
                create_partitions,
                options: &kafka_options,
            };
            let produced = produce::produce(&params)?;
            eprintln!("produced {} messages to {topic}", produced.count);
            // Alone on stdout, for a script's `min_position`.
            println!("{}", produced.position);
            Ok(())
        }
        Command::Probe { url } => produce::probe(&url),
        Command::Rebuild { db, source } => rebuild::rebuild(&db, source.source()?),
        Command::Verify { db, url, api_key, source } => {
            let authorization = api_key.map(|k| format!("Api-Key {k}")).unwrap_or_default();
            let live = match (&url, &db) {
                (Some(base), _) => rebuild::Live::Url { base, authorization: &authorization },
                (None, Some(db)) => rebuild::Live::File(db),
                (None, None) => anyhow::bail!("give --db or --url"),
            };
            if rebuild::verify(live, source.source()?)? {
                Ok(())
            } else {
                std::process::exit(1);
            }
        }
        Command::Generate { refunds, seed, dup_rate, shuffle_window, invalid_rate, arrival } => {
            anyhow::ensure!((0.0..=1.0).contains(&dup_rate), "--dup-rate must be between 0 and 1");
            anyhow::ensure!((0.0..=1.0).contains(&invalid_rate), "--invalid-rate must be between 0 and 1");
            let arrival = match arrival {
                ArrivalArg::Realistic => refunds_generate::Arrival::Realistic,
                ArrivalArg::Ordered => refunds_generate::Arrival::Ordered,
            };
            let params =
                refunds_generate::GenerateParams { refunds, seed, dup_rate, shuffle_window, invalid_rate, arrival };
            let stdout = io::stdout();
            let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
            refunds_generate::generate(&params, &mut out).context("failed to write events")?;
            out.flush().context("failed to write events")?;
            Ok(())
        }
    }
}

fn run_serve(db: &Path, api: &ApiArgs) -> anyhow::Result<()> {
    let listen = api.listen.as_str();
    let (auth, watch) = api.jwt.credentials(Some(&api.api_keys), None)?.split();
    anyhow::ensure!(db.exists(), "the store {} does not exist; create it with replay or run", db.display());
    let store = open_store(db)?;
    let mut state = refunds_api::AppState::new(std::sync::Arc::new(store), std::sync::Arc::new(auth), db);
    state.metrics = telemetry::metrics_renderer();
    state.answers = std::sync::Arc::new(refunds_api::Answers::new(api.summary_cache_mib << 20));
    // A rebuilt store renamed over this one is picked up within a second.
    {
        let slot = state.store.clone();
        let db = db.to_path_buf();
        let mut opened = service::file_identity(&db);
        std::thread::Builder::new()
            .name("store-watch".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    if let Some(store) = service::swapped_store(&db, &mut opened) {
                        slot.replace(std::sync::Arc::new(store));
                    }
                }
            })
            .context("failed to start the store watcher")?;
    }
    let slot = state.store.clone();
    let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
    watch.start(&state.auth, &runtime)?;
    let served = runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("failed to listen on {listen}"))?;
        let address = listener.local_addr().context("failed to read the listening address")?;
        eprintln!("listening on http://{address}");
        tracing::info!(%address, "serving the API");
        axum::serve(listener, refunds_api::router(state))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("the server failed")
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    service::close_store(&slot);
    served
}

fn print_table_sizes(db: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(db.exists(), "the store {} does not exist", db.display());
    let store = open_store(db)?;
    let sizes = store.table_sizes().context("failed to read the tables")?;
    let mib = |bytes: u64| bytes as f64 / 1_048_576.0;
    println!("{:<24} {:>12} {:>10} {:>10} {:>10} {:>10}", "table", "rows", "MiB", "stored", "metadata", "unused");
    let (mut bytes, mut rows) = (0, 0);
    for size in &sizes {
        bytes += size.bytes;
        rows += size.rows;
        println!(
            "{:<24} {:>12} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            size.name,
            size.rows,
            mib(size.bytes),
            mib(size.stored_bytes),
            mib(size.metadata_bytes),
            mib(size.fragmented_bytes)
        );
    }
    println!("{:<24} {:>12} {:>10.1}", "all tables", rows, mib(bytes));
    println!("{:<24} {:>12} {:>10.1}", "file", "", mib(Store::file_bytes(db)));
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

/// `--cache-mib`, in bytes, set once at start.
static CACHE_BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

pub(crate) fn open_store(db: &Path) -> anyhow::Result<Store> {
    let mut params = StoreParams::default();
    if let Some(&bytes) = CACHE_BYTES.get() {
        params.cache_bytes = bytes;
    }
    Store::open(db, &params).with_context(|| format!("failed to open the store {}", db.display()))
}

/// Gives the file's free pages back, with a spinner on a terminal.
pub(crate) fn compact(store: &mut Store, db: &Path) -> anyhow::Result<()> {
    let spinner = if io::stderr().is_terminal() {
        let spinner = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").expect("the template is valid"),
        );
        spinner.set_message(format!("compacting {}", db.display()));
        spinner.enable_steady_tick(Duration::from_millis(200));
        spinner
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let compacted = store.compact(db);
    spinner.finish_and_clear();
    let (before, after) = compacted.context("failed to compact the store")?;
    let mib = |bytes: u64| bytes as f64 / 1_048_576.0;
    eprintln!(
        "compacted {} from {:.1} MiB to {:.1} MiB in {:.1?}",
        db.display(),
        mib(before),
        mib(after),
        started.elapsed()
    );
    Ok(())
}

/// After a store is built: compacts it when over a tenth of its file is
/// free pages. A replay leaves about a third (each commit rewrites the pages
/// it changes elsewhere in the file, and the pages it frees are kept for
/// later commits); serving needs none of them. The store is whole either
/// way, so a compaction that fails is a warning, not a failed build.
pub(crate) fn compact_if_worthwhile(store: &mut Store, db: &Path) {
    let unused = match store.unused_bytes(db) {
        Ok(unused) => unused,
        Err(error) => {
            tracing::warn!(%error, "cannot read the store's page counts; not compacting");
            return;
        }
    };
    if unused.saturating_mul(10) > Store::file_bytes(db)
        && let Err(error) = compact(store, db)
    {
        tracing::warn!(
            "{error:#}; the store is complete but keeps its free pages (`refund-projector compact` gives them back)"
        );
    }
}

fn run_replay(db: &Path, params: &ReplayParams, compact: bool) -> anyhow::Result<()> {
    let mut store = open_store(db)?;
    let started = Instant::now();
    let bar = replay_bar(&params.input);
    let progress = replay(&mut store, params, |p| {
        bar.set_position(p.bytes);
        bar.set_message(format!("{} applied, {} duplicate, {} invalid", p.applied, p.duplicate, p.invalid));
    });
    bar.finish_and_clear();
    let progress = progress.with_context(|| format!("replay of {} failed", params.input.name()))?;
    eprintln!("{}", summary_line(&progress, started.elapsed()));
    if compact {
        compact_if_worthwhile(&mut store, db);
    }
    Ok(())
}

/// A bar over the input's bytes on a terminal; nothing otherwise.
fn replay_bar(input: &Input) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let total = match input {
        Input::File(path) => File::open(path).and_then(|f| f.metadata()).map(|m| m.len()).ok(),
        Input::Stdin => None,
    };
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta}) {msg}",
            )
            .expect("the template is valid"),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bytes} {msg}").expect("the template is valid"),
        ),
    };
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn summary_line(p: &ReplayProgress, elapsed: Duration) -> String {
    let new_lines = p.lines - p.resumed_lines;
    let rate = new_lines as f64 / elapsed.as_secs_f64().max(1e-9);
    let peak = peak_rss_bytes().map(|b| format!("; peak RSS {} MiB", b >> 20)).unwrap_or_default();
    format!(
        "replayed {new_lines} lines in {:.1}s ({rate:.0} lines/s): {} applied, {} duplicate, {} conflicting duplicate, \
         {} invalid ({} written to the dead-letter file), {} blank; {} lines already applied by an earlier run{peak}",
        elapsed.as_secs_f64(),
        p.applied,
        p.duplicate,
        p.conflicting_duplicate,
        p.invalid,
        p.dead_letters_written,
        p.blank,
        p.resumed_lines,
    )
}

/// The process's peak resident set size, where the OS reports it (Linux).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
