//! `rebuild` (a fresh store from the source's beginning, swapped in
//! atomically) and `verify` (a rebuild into a temporary store, diffed with
//! the live export).
//!
//! The swap is a `rename(2)` of `<db>.rebuild` over `<db>`: atomic on one
//! file system. A `run` or `serve` process holding the old file notices
//! within a second (the file at the path has another inode), opens the new
//! store, serves it from the next request on and restarts its consumer from
//! the new store's offsets; the old store serves until that moment, so the
//! API never stops.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use refunds_ingest::file_source::{Input, ReplayParams, replay};
use refunds_ingest::kafka_source::{IngestStatus, KafkaParams, Shutdown, consume};

use crate::open_store;

/// Where a rebuild reads the events from.
pub enum Source {
    File(PathBuf),
    Kafka(KafkaParams),
}

/// `<db>.rebuild`, next to the live store (same file system, so the rename
/// is atomic).
fn rebuild_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".rebuild");
    db.with_file_name(name)
}

pub fn rebuild(db: &Path, source: Source) -> anyhow::Result<()> {
    let target = rebuild_path(db);
    if target.exists() {
        std::fs::remove_file(&target).with_context(|| format!("failed to remove the stale {}", target.display()))?;
    }
    let started = Instant::now();
    // Compacted before the swap: the live store keeps serving meanwhile, and
    // the store swapped in holds no free pages.
    let built = build_into(&target, source, None, "rebuild").and_then(|refunds| {
        crate::compact_if_worthwhile(&mut crate::open_store(&target)?, &target);
        Ok(refunds)
    });
    let refunds = match built {
        Ok(refunds) => refunds,
        Err(error) => {
            // Nothing half-built is left beside the live store.
            let _ = std::fs::remove_file(&target);
            return Err(error);
        }
    };
    std::fs::rename(&target, db)
        .with_context(|| format!("failed to swap {} in as {}", target.display(), db.display()))?;
    eprintln!(
        "rebuilt {} in {:.1}s: {refunds} refunds; swapped in (a running run or serve picks it up within a second)",
        db.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Builds a fresh store at `target` from `source` with a progress bar;
/// Kafka partitions stop at `stop_at` when given, else once caught up.
/// Returns the number of refunds.
fn build_into(target: &Path, source: Source, stop_at: Option<HashMap<i32, i64>>, label: &str) -> anyhow::Result<u64> {
    match source {
        Source::File(path) => {
            let mut store = open_store(target)?;
            let params = ReplayParams::new(Input::File(path.clone()));
            let bar = bar(std::fs::metadata(&path).map(|m| m.len()).ok(), label, "bytes");
            replay(&mut store, &params, |p| bar.set_position(p.bytes))
                .with_context(|| format!("replay of {} failed", path.display()))?;
            bar.finish_and_clear();
            Ok(store.stats()?.refunds)
        }
        Source::Kafka(mut params) => {
            let store = Arc::new(open_store(target)?);
            // A group of its own that commits nothing and produces no dead
            // letters: the live instance owns the DLQ; the rebuilt store's
            // outbox is produced by whoever runs it next (at least once).
            let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
            params.group_id = format!("{}-{label}-{}-{stamp}", params.group_id, std::process::id());
            params.commit_offsets = false;
            params.produce_dead_letters = false;
            params.stop_at = stop_at.clone();
            let status = Arc::new(IngestStatus::new(&params.topic));
            let shutdown = Shutdown::new();
            let consumer = {
                let (store, status, shutdown, params) =
                    (store.clone(), status.clone(), shutdown.clone(), params.clone());
                std::thread::spawn(move || consume(store, &params, status, shutdown))
            };
            let bar = bar(None, label, "events");
            loop {
                if consumer.is_finished() {
                    break;
                }
                let partitions = status.partitions();
                let applied: i64 = partitions.iter().map(|p| p.applied_offset).sum();
                let goal: i64 = partitions.iter().map(|p| p.high_watermark.unwrap_or(0)).sum();
                bar.set_length(u64::try_from(goal).unwrap_or(0));
                bar.set_position(u64::try_from(applied).unwrap_or(0));
                let done = match &stop_at {
                    // Every partition at the live position, or at its end.
                    Some(stop) => {
                        !partitions.is_empty()
                            && partitions.iter().all(|p| {
                                p.applied_offset >= stop.get(&p.partition).copied().unwrap_or(0) || p.lag == Some(0)
                            })
                    }
                    None => status.total_lag() == Some(0),
                };
                if done {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            shutdown.trigger();
            let report = consumer.join().map_err(|_| anyhow::anyhow!("the consumer panicked"))??;
            bar.finish_and_clear();
            tracing::info!(applied = report.applied, invalid = report.invalid, "{label}: consumed");
            let refunds = store.stats()?.refunds;
            drop(store);
            Ok(refunds)
        }
    }
}

fn bar(total: Option<u64>, label: &str, unit: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let template = if unit == "bytes" {
        format!("{label} {{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{bytes}}/{{total_bytes}} ({{eta}})")
    } else {
        format!("{label} {{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} events ({{eta}})")
    };
    let bar = ProgressBar::new(total.unwrap_or(0))
        .with_style(ProgressStyle::with_template(&template).expect("the template is valid"));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Where `verify` reads the live projection from.
pub enum Live<'a> {
    /// Open the store file (no other process may hold it).
    File(&'a Path),
    /// `GET <url>/admin/export` of a running instance, with an admin key.
    Url { base: &'a str, authorization: &'a str },
}

/// Rebuilds into a temporary store and diffs its export with the live one.
/// Returns whether they are identical.
pub fn verify(live: Live<'_>, source: Source) -> anyhow::Result<bool> {
    let dir = tempfile::tempdir().context("failed to create a temporary directory")?;
    let live_export = dir.path().join("live.ndjson");
    let (checkpoints, live_gaps) = match live {
        Live::File(db) => {
            anyhow::ensure!(db.exists(), "the store {} does not exist", db.display());
            let store = open_store(db).context("open it while no other process holds it, or pass --url")?;
            let mut out = BufWriter::new(File::create(&live_export)?);
            store.export_with_checkpoints(&mut out).context("failed to export the live store")?;
            out.flush()?;
            drop(out);
            split_header(&live_export)?
        }
        Live::Url { base, authorization } => {
            fetch_export(base, authorization, &live_export)?;
            split_header(&live_export)?
        }
    };
    let stop_at = match &source {
        Source::Kafka(params) => {
            let prefix = format!("kafka:{}:", params.topic);
            let stop: HashMap<i32, i64> = checkpoints
                .iter()
                .filter_map(|(name, pos)| Some((name.strip_prefix(&prefix)?.parse().ok()?, *pos)))
                .collect();
            Some(stop)
        }
        Source::File(_) => None,
    };
    let rebuilt_db = dir.path().join("rebuilt.redb");
    build_into(&rebuilt_db, source, stop_at, "verify")?;
    let rebuilt_export = dir.path().join("rebuilt.ndjson");
    let rebuilt_gaps = {
        let store = open_store(&rebuilt_db)?;
        let mut out = BufWriter::new(File::create(&rebuilt_export)?);
        store.export(&mut out).context("failed to export the rebuilt store")?;
        out.flush()?;
        store.history_gaps()?
    };
    let live_body = dir.path().join("live.body.ndjson");
    let mut stdout = io::stdout().lock();
    // A store that accepted a gap lacks that history for good: say so with
    // every verdict.
    for gap in &live_gaps {
        writeln!(stdout, "history gap accepted by the live store: {gap}")?;
    }
    for gap in &rebuilt_gaps {
        writeln!(stdout, "history gap accepted by the rebuild:    {}", gap.to_json())?;
    }
    diff_exports(&live_body, &rebuilt_export, &mut stdout)
}

/// Splits the `{"checkpoints": ...}` first line off the export at `path`
/// (the rest goes to `live.body.ndjson` beside it); returns the positions.
fn split_header(path: &Path) -> anyhow::Result<(HashMap<String, i64>, Vec<serde_json::Value>)> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut header = String::new();
    reader.read_line(&mut header)?;
    let header: serde_json::Value = serde_json::from_str(&header).context("the export has no checkpoints line")?;
    let checkpoints = header["checkpoints"]
        .as_object()
        .context("the export's first line has no checkpoints")?
        .iter()
        .filter_map(|(name, pos)| Some((name.clone(), pos.as_i64()?)))
        .collect();
    let gaps = header["history_gaps"].as_array().cloned().unwrap_or_default();
    let mut body = BufWriter::new(File::create(path.with_file_name("live.body.ndjson"))?);
    io::copy(&mut reader, &mut body)?;
    body.flush()?;
    Ok((checkpoints, gaps))
}

fn fetch_export(base: &str, authorization: &str, to: &Path) -> anyhow::Result<()> {
    let url = format!("{}/admin/export", base.trim_end_matches('/'));
    let (status, mut reader) = crate::produce::http_get(&url, Some(authorization))?;
    if status != 200 {
        let mut body = String::new();
        reader.take(4096).read_to_string(&mut body)?;
        bail!("{url} answered {status}: {body}");
    }
    let mut out = BufWriter::new(File::create(to)?);
    io::copy(&mut reader, &mut out)?;
    out.flush()?;
    Ok(())
}

/// Merges two exports ordered by (tenant_id, id) and prints every
/// difference (the first 20 in full). Returns whether they are identical.
fn diff_exports(live: &Path, rebuilt: &Path, out: &mut impl Write) -> anyhow::Result<bool> {
    let mut a = BufReader::new(File::open(live)?).lines();
    let mut b = BufReader::new(File::open(rebuilt)?).lines();
    let key = |line: &str| -> anyhow::Result<(String, String)> {
        let value: serde_json::Value = serde_json::from_str(line).context("an export line is not JSON")?;
        let text = |k: &str| value[k].as_str().unwrap_or_default().to_owned();
        Ok((text("tenant_id"), text("id")))
    };
    let (mut next_a, mut next_b) = (a.next().transpose()?, b.next().transpose()?);
    let (mut compared, mut only_live, mut only_rebuilt, mut changed, mut shown) = (0u64, 0u64, 0u64, 0u64, 0u32);
    let mut show = |out: &mut dyn Write, what: &str, line: &str| -> io::Result<()> {
        if shown < 20 {
            writeln!(out, "{what} {line}")?;
        }
        shown += 1;
        Ok(())
    };
    loop {
        match (&next_a, &next_b) {
            (None, None) => break,
            (Some(la), None) => {
                only_live += 1;
                show(out, "only in the live store:", la)?;
                next_a = a.next().transpose()?;
            }
            (None, Some(lb)) => {
                only_rebuilt += 1;
                show(out, "only in the rebuild:   ", lb)?;
                next_b = b.next().transpose()?;
            }
            (Some(la), Some(lb)) => {
                let (ka, kb) = (key(la)?, key(lb)?);
                match ka.cmp(&kb) {
                    std::cmp::Ordering::Less => {
                        only_live += 1;
                        show(out, "only in the live store:", la)?;
                        next_a = a.next().transpose()?;
                    }
                    std::cmp::Ordering::Greater => {
                        only_rebuilt += 1;
                        show(out, "only in the rebuild:   ", lb)?;
                        next_b = b.next().transpose()?;
                    }
                    std::cmp::Ordering::Equal => {
                        compared += 1;
                        if la != lb {
                            changed += 1;
                            show(out, "live:   ", la)?;
                            show(out, "rebuilt:", lb)?;
                        }
                        next_a = a.next().transpose()?;
                        next_b = b.next().transpose()?;
                    }
                }
            }
        }
    }
    let identical = only_live == 0 && only_rebuilt == 0 && changed == 0;
    writeln!(
        out,
        "verify: {compared} refunds in both, {changed} differ, {only_live} only in the live store, {only_rebuilt} only in \
         the rebuild: {}",
        if identical { "identical" } else { "DIFFERENT" }
    )?;
    Ok(identical)
}
