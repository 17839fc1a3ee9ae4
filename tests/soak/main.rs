//! A soak: `demo` (producer at a steady rate, consumer, store, API in one
//! process) under concurrent readers (list pages, single refunds, audit
//! trails) for a configurable time, reporting the process's RSS, the store's
//! size, the readers' p99 and error counts at every interval.
//!
//! - `SOAK_SECONDS` (default 60: what `scripts/test.sh` runs), `SOAK_REPORT_SECONDS`
//!   (default 60, or 15 for runs under 10 minutes), `SOAK_RATE` (events per
//!   second, default 500), `SOAK_READERS` (default 4), `SOAK_CACHE_MIB` (the
//!   store's page cache, default 32: the RSS grows by up to the cache's size
//!   as the store grows, so a run that judges RSS growth after the warm-up
//!   keeps the cache below the store's size by then).
//! - Always asserted: no 5xx, no ERROR line in the process's log, a clean
//!   exit on SIGTERM. From 10 minutes on, also: RSS at the end at most 10%
//!   above RSS after the warm-up (the first two minutes), and the last
//!   interval's p99 at most twice the first one after the warm-up, plus 5 ms.
//!
//! `scripts/bench-soak.sh` runs it for 10 minutes and prints the table.

#[path = "../blackbox/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Latencies (µs) and failures of the requests of one interval.
#[derive(Default)]
struct Window {
    micros: Vec<u64>,
    server_errors: u64,
    other_errors: u64,
}

fn p99_ms(micros: &mut [u64]) -> f64 {
    if micros.is_empty() {
        return 0.0;
    }
    micros.sort_unstable();
    let at = (micros.len() * 99).div_ceil(100).saturating_sub(1);
    micros[at] as f64 / 1000.0
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// One reader: a list page with a random filter, one of its refunds, and
/// that refund's audit trail, over and over until `stop`.
fn read_loop(base: &str, header: &str, window: &Mutex<Window>, stop: &AtomicBool, seed: u64) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let (name, value) = header.split_once(": ").unwrap();
    let mut state = seed | 1;
    let mut next = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % bound as u64).unwrap_or(0)
    };
    let filters =
        ["", "status=completed", "status=failed,cancelled", "currency=USD", "ordering=created", "amount_min=1000"];
    let mut ids: Vec<(String, String)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let path = match next(3) {
            0 => format!("/v1/refunds?limit=20&{}", filters[next(filters.len())]),
            1 if !ids.is_empty() => {
                let (tenant, id) = &ids[next(ids.len())];
                format!("/v1/refunds/{id}?tenant_id={tenant}")
            }
            2 if !ids.is_empty() => {
                let (tenant, id) = &ids[next(ids.len())];
                format!("/v1/refunds/{id}/events?tenant_id={tenant}")
            }
            _ => "/v1/refunds?limit=20".to_owned(),
        };
        let started = Instant::now();
        let response = agent.get(format!("{base}{path}")).header(name, value).call();
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut window = window.lock().unwrap();
        match response {
            Ok(response) => {
                let status = response.status().as_u16();
                window.micros.push(micros);
                if status >= 500 {
                    window.server_errors += 1;
                } else if status != 200 {
                    window.other_errors += 1;
                }
                drop(window);
                if status == 200 && path.starts_with("/v1/refunds?") {
                    let body: Value = serde_json::from_str(&response.into_body().read_to_string().unwrap_or_default())
                        .unwrap_or(Value::Null);
                    for refund in body["results"].as_array().into_iter().flatten() {
                        if let (Some(t), Some(i)) = (refund["tenant_id"].as_str(), refund["id"].as_str()) {
                            if ids.len() >= 1_000 {
                                let at = next(ids.len());
                                ids[at] = (t.to_owned(), i.to_owned());
                            } else {
                                ids.push((t.to_owned(), i.to_owned()));
                            }
                        }
                    }
                }
            }
            Err(_) => window.other_errors += 1,
        }
    }
}

#[test]
fn demo_under_concurrent_readers_keeps_memory_latency_and_errors_flat() {
    let seconds = env_u64("SOAK_SECONDS", 60);
    let long = seconds >= 600;
    let report_every = Duration::from_secs(env_u64("SOAK_REPORT_SECONDS", if long { 60 } else { 15 }));
    let rate = env_u64("SOAK_RATE", 500);
    let readers = env_u64("SOAK_READERS", 4);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.redb");
    let mut child = helpers::command()
        .args(["demo", "--listen", "127.0.0.1:0", "--rate", &rate.to_string(), "--db", db.to_str().unwrap()])
        .args(["--cache-mib", &env_u64("SOAK_CACHE_MIB", 32).to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let log = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
    }
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut curl = None;
    while let Some(Ok(line)) = stdout.next() {
        if line.trim_start().starts_with("curl -H 'Authorization: Api-Key") && curl.is_none() {
            curl = Some(line.clone());
        }
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    let curl = curl.expect("the demo prints a curl line");
    let header = curl.split('\'').nth(1).unwrap().to_owned();
    let url = curl.split('\'').nth(3).unwrap().to_owned();
    let base = url.split("/v1/").next().unwrap().to_owned();

    let window = Arc::new(Mutex::new(Window::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..readers)
        .map(|i| {
            let (base, header, window, stop) = (base.clone(), header.clone(), window.clone(), stop.clone());
            std::thread::spawn(move || read_loop(&base, &header, &window, &stop, 0x9e37_79b9 + i))
        })
        .collect();

    let started = Instant::now();
    let pid = child.id();
    let mut rows: Vec<(u64, f64, f64, u64, f64, u64, u64)> = Vec::new();
    eprintln!("soak: {seconds} s, demo at {rate} events/s, {readers} readers");
    eprintln!(
        "{:>6} {:>9} {:>10} {:>9} {:>8} {:>5} {:>7}",
        "s", "RSS MiB", "store MiB", "requests", "p99 ms", "5xx", "other"
    );
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(report_every.min(Duration::from_secs(seconds).saturating_sub(started.elapsed())));
        let mut taken = std::mem::take(&mut *window.lock().unwrap());
        let row = (
            started.elapsed().as_secs(),
            rss_mib(pid),
            std::fs::metadata(&db).map_or(0, |m| m.len()) as f64 / (1024.0 * 1024.0),
            taken.micros.len() as u64,
            p99_ms(&mut taken.micros),
            taken.server_errors,
            taken.other_errors,
        );
        eprintln!("{:>6} {:>9.1} {:>10.1} {:>9} {:>8.2} {:>5} {:>7}", row.0, row.1, row.2, row.3, row.4, row.5, row.6);
        rows.push(row);
        assert!(child.try_wait().unwrap().is_none(), "the demo exited during the soak");
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(200));

    let requests: u64 = rows.iter().map(|r| r.3).sum();
    let server_errors: u64 = rows.iter().map(|r| r.5).sum();
    assert!(requests > 0, "the readers made requests");
    assert_eq!(server_errors, 0, "no 5xx in {requests} requests");
    let errors: Vec<String> = log.lock().unwrap().iter().filter(|l| l.contains("ERROR")).cloned().collect();
    assert!(errors.is_empty(), "error lines in the demo's log:\n{}", errors.join("\n"));
    assert!(exit.success(), "demo exit: {exit}");
    if long {
        let warm = rows.iter().find(|r| r.0 >= 120).expect("a report after the warm-up");
        let last = rows.last().unwrap();
        assert!(last.1 <= warm.1 * 1.10, "RSS grew from {:.1} to {:.1} MiB after the warm-up", warm.1, last.1);
        assert!(last.4 <= warm.4 * 2.0 + 5.0, "p99 went from {:.2} to {:.2} ms", warm.4, last.4);
    }
}
