//! Read-your-writes across replicas: a client that produces an event and
//! reads with the offset the broker acknowledged never sees the state before
//! its write, from a replica ahead or one held behind; a client passing each
//! response's position to the next request never sees time go backwards,
//! whichever replica answers; and a thousand requests waiting for a position
//! far ahead leave ingest alone and each get their answer.

use serde_json::json;

use super::*;

/// One lifecycle event of a refund of tenant `org_rw`.
fn event(refund: &str, step: usize, kind: &str) -> String {
    let mut refund_json = json!({"id": refund, "tenant_id": "org_rw", "processor": "stripe"});
    if kind == "queued" {
        refund_json = json!({
            "id": refund, "tenant_id": "org_rw", "amount": 1250, "currency": "EUR", "processor": "stripe",
            "payment_method_type": "card", "product_type": "e_commerce",
        });
    }
    json!({
        "schema_version": 1,
        "event_id": format!("evt_{refund}_{step}"),
        "type": format!("refund.{kind}"),
        "occurred_at": format!("2026-01-01T10:0{step}:00.000Z"),
        "refund": refund_json,
    })
    .to_string()
}

/// `refund-projector produce` of one line: the position it prints.
fn produce_line(bootstrap: &str, topic: &str, dir: &Path, line: &str) -> String {
    let file = dir.join("line.ndjson");
    std::fs::write(&file, format!("{line}\n")).unwrap();
    let output = command()
        .args(["produce", "--brokers", bootstrap, "--topic", topic, "--input", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let position = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let fields: Vec<&str> = position.split(':').collect();
    assert!(
        fields.len() == 3 && fields[0] == topic && fields[1].parse::<i32>().is_ok() && fields[2].parse::<i64>().is_ok(),
        "one element, topic:partition:offset: {position:?}"
    );
    position
}

/// Parses a position into (topic, partition) -> offset.
fn position_map(position: &str) -> BTreeMap<(String, i32), i64> {
    position
        .split(',')
        .map(|element| {
            let mut fields = element.rsplitn(3, ':');
            let offset = fields.next().unwrap().parse().unwrap();
            let partition = fields.next().unwrap().parse().unwrap();
            ((fields.next().unwrap().to_owned(), partition), offset)
        })
        .collect()
}

fn reaches(position: &str, wanted: &str) -> bool {
    let have = position_map(position);
    position_map(wanted).iter().all(|(key, offset)| have.get(key).is_some_and(|h| h >= offset))
}

fn metric(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn keys_file(dir: &Path) -> PathBuf {
    let keys = dir.join("keys.toml");
    std::fs::write(&keys, KEYS).unwrap();
    keys
}

#[test]
fn a_client_reads_its_own_write_from_a_replica_ahead_and_from_one_held_behind() {
    let (_guard, bootstrap) = broker();
    let dir = tempfile::tempdir().unwrap();
    let topic = unique_topic("ryw");
    create_topics(&bootstrap, &topic, 3);
    let events = dir.path().join("events.ndjson");
    generate(&events, 300, 5, None);
    let mut messages = produce_file(&bootstrap, &topic, &events);
    let keys = keys_file(dir.path());
    let (db_a, db_b) = (dir.path().join("a.redb"), dir.path().join("b.redb"));
    let instance = |group, db, extra: &[&str]| Instance {
        bootstrap: &bootstrap,
        topic: &topic,
        group,
        db,
        keys: &keys,
        extra: extra.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
    };
    let mut a = Runner::start(&instance("ryw-a", &db_a, &[]));
    // B commits a batch two seconds after its first message: it is behind
    // every write for two seconds.
    let mut b = Runner::start(&instance("ryw-b", &db_b, &["--batch-wait-ms", "2000"]));
    a.wait_caught_up(messages, Duration::from_secs(120));
    b.wait_caught_up(messages, Duration::from_secs(120));

    let steps = [("queued", "queued"), ("processing", "processing"), ("completed", "completed")];
    for refund in ["ref_rywFirst", "ref_rywSecond"] {
        for (step, (kind, status)) in steps.iter().enumerate() {
            let written = produce_line(&bootstrap, &topic, dir.path(), &event(refund, step, kind));
            messages += 1;
            let path = format!("/v1/refunds/{refund}?min_position={written}");
            if refund == "ref_rywFirst" && step == 0 {
                // Without min_position, B still answers from before the write.
                let (code, headers, _) = b.raw_get(&format!("/v1/refunds/{refund}"));
                assert_eq!(code, 404, "B is held behind, so the new refund is not there yet");
                assert!(!reaches(&headers["x-refunds-position"], &written), "{headers:?}");
            }

            let (code, headers, body) = a.raw_get(&format!("{path}&max_wait_ms=5000"));
            assert_eq!(code, 200, "A: {body}");
            let refund_json: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(refund_json["status"], *status, "A shows the write: {body}");
            assert!(reaches(&headers["x-refunds-position"], &written), "{headers:?} vs {written}");

            // B within 100 ms: still behind, so 503 rather than the old state.
            let (code, headers, body) = b.raw_get(&format!("{path}&max_wait_ms=100"));
            assert_eq!(code, 503, "B: {body}");
            let error: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(error["error"]["code"], "not_caught_up", "{body}");
            let partition = written.rsplit(':').nth(1).unwrap();
            assert!(
                error["error"]["message"].as_str().unwrap().contains(&format!("{topic}:{partition} is at")),
                "the message names the partition behind: {body}"
            );
            assert_eq!(headers.get("retry-after").map(String::as_str), Some("1"), "{headers:?}");
            let current = &headers["x-refunds-position"];
            assert!(!reaches(current, &written), "the current position, behind the write: {current}");

            // B with time to catch up: the write, once its batch commits.
            let asked = Instant::now();
            let (code, headers, body) = b.raw_get(&format!("{path}&max_wait_ms=5000"));
            assert_eq!(code, 200, "B: {body}");
            let refund_json: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(refund_json["status"], *status, "B shows the write: {body}");
            assert!(reaches(&headers["x-refunds-position"], &written), "{headers:?} vs {written}");
            assert!(asked.elapsed() < Duration::from_secs(5), "answered within max_wait_ms");
        }
    }
    a.wait_caught_up(messages, Duration::from_secs(30));
    let (_, _, metrics) = b.raw_get("/metrics");
    assert!(metric(&metrics, "refund_projector_position_waits_started_total ") >= 12.0, "{metrics}");
    assert!(metric(&metrics, "refund_projector_position_waits_total{outcome=\"timed_out\"} ") >= 6.0);
    assert!(metric(&metrics, "refund_projector_position_waits_total{outcome=\"reached\"} ") >= 6.0);
    assert!(metric(&metrics, "refund_projector_position_wait_seconds_count ") >= 12.0);
    // /v1/status carries the same position as the header of its response.
    let (_, headers, body) = a.raw_get("/v1/status");
    let status: Value = serde_json::from_str(&body).unwrap();
    let last = status["position"].as_str().unwrap().to_owned();
    assert_eq!(Some(&last), headers.get("x-refunds-position"));
    assert!(a.terminate().0.success());

    // `serve` over A's store: the same position; one not reached is 503 at
    // once, since no consumer will ever reach it.
    let mut serve = command()
        .args(["serve", "--db", db_a.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(["--api-keys", keys.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(serve.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("serve printed its address").unwrap();
        if let Some(address) = line.strip_prefix("listening on ") {
            break address.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let get = |path: &str| {
        let response = agent.get(format!("{base}{path}")).header("Authorization", ADMIN).call().unwrap();
        let position = response.headers().get("x-refunds-position").map(|v| v.to_str().unwrap().to_owned());
        (response.status().as_u16(), position)
    };
    assert_eq!(get(&format!("/v1/refunds?limit=1&min_position={last}")), (200, Some(last.clone())));
    let ahead: String = position_map(&last)
        .iter()
        .map(|((topic, partition), offset)| format!("{topic}:{partition}:{}", offset + 1))
        .collect::<Vec<_>>()
        .join(",");
    let asked = Instant::now();
    assert_eq!(get(&format!("/v1/refunds?limit=1&min_position={ahead}&max_wait_ms=5000")), (503, Some(last)));
    assert!(asked.elapsed() < Duration::from_secs(2), "serve answers at once: {:?}", asked.elapsed());
    let _ = serve.kill();
    let _ = serve.wait();
}

#[test]
fn a_client_passing_each_responses_position_never_sees_a_refund_go_back_across_replicas() {
    let (_guard, bootstrap) = broker();
    let dir = tempfile::tempdir().unwrap();
    let topic = unique_topic("monotonic");
    create_topics(&bootstrap, &topic, 3);
    let keys = keys_file(dir.path());
    let events = dir.path().join("events.ndjson");
    // In arrival order, so a refund's status only moves forward in the topic.
    generate(&events, 600, 9, None);
    let lines: Vec<String> = std::fs::read_to_string(&events).unwrap().lines().map(str::to_owned).collect();
    let (db_a, db_b) = (dir.path().join("a.redb"), dir.path().join("b.redb"));
    let mut runners = Vec::new();
    for (group, db, extra) in
        [("mono-a", &db_a, vec![]), ("mono-b", &db_b, vec!["--batch-wait-ms".into(), "700".into()])]
    {
        runners.push(Runner::start(&Instance {
            bootstrap: &bootstrap,
            topic: &topic,
            group,
            db,
            keys: &keys,
            extra,
            env: Vec::new(),
        }));
    }

    // Events keep arriving, about 400 a second.
    let producing = {
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        std::thread::spawn(move || {
            let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
            for chunk in lines.chunks(20) {
                for line in chunk {
                    let value: Value = serde_json::from_str(line).unwrap();
                    let key = value["refund"]["id"].as_str().unwrap().to_owned();
                    producer.send(BaseRecord::to(&topic).key(&key).payload(line)).unwrap();
                }
                producer.flush(Duration::from_secs(10)).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
            lines.len() as u64
        })
    };

    let rank =
        |status: &str| ["queued", "processing", "completed", "failed", "cancelled"].iter().position(|s| *s == status);
    let mut seen: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut position: Option<String> = None;
    let mut last_count = 0;
    let mut reads = 0;
    let mut b_waited;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = producing.is_finished();
        let runner = &runners[reads % 2];
        let mut path = "/v1/refunds?limit=100&ordering=created".to_owned();
        if let Some(position) = &position {
            path.push_str(&format!("&min_position={position}&max_wait_ms=5000"));
        }
        let (code, headers, body) = runner.raw_get(&path);
        assert_eq!(code, 200, "{body}");
        let page: Value = serde_json::from_str(&body).unwrap();
        let count = page["count"].as_u64().unwrap();
        assert!(count >= last_count, "read {reads}: count went back from {last_count} to {count}");
        last_count = count;
        for refund in page["results"].as_array().unwrap() {
            let id = refund["id"].as_str().unwrap().to_owned();
            let events = refund["event_count"].as_u64().unwrap();
            let status = refund["status"].as_str().unwrap().to_owned();
            if let Some((before_events, before_status)) = seen.get(&id) {
                assert!(
                    events >= *before_events,
                    "read {reads}: {id} went back from {before_events} events to {events}"
                );
                assert!(
                    rank(&status) >= rank(before_status),
                    "read {reads}: {id} went back from {before_status} to {status}"
                );
            }
            seen.insert(id, (events, status));
        }
        if let Some(new) = headers.get("x-refunds-position") {
            if let Some(old) = &position {
                assert!(reaches(new, old), "read {reads}: the position went back from {old} to {new}");
            }
            position = Some(new.clone());
        }
        reads += 1;
        if done && reads % 2 == 0 {
            let (_, _, metrics) = runners[1].raw_get("/metrics");
            b_waited = metric(&metrics, "refund_projector_position_waits_total{outcome=\"reached\"} ") > 0.0;
            let (_, _, body) = runners[0].raw_get("/v1/status");
            let status: Value = serde_json::from_str(&body).unwrap();
            let (_, _, body) = runners[1].raw_get("/v1/status");
            let other: Value = serde_json::from_str(&body).unwrap();
            let caught_up = |s: &Value| s["partitions"].as_array().unwrap().iter().all(|p| p["lag"] == 0);
            if recorded(&status) == recorded(&other) && recorded(&status) > 0 && caught_up(&status) && caught_up(&other)
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "replicas did not catch up");
    }
    let produced = producing.join().unwrap();
    assert!(reads > 20, "the client read while events arrived ({reads} reads)");
    assert!(b_waited, "the replica held behind had to wait for a position at least once");
    for runner in &runners {
        assert_eq!(recorded(&runner.status()), produced);
    }
}

/// A raw HTTP/1.1 GET on its own connection, on a small thread of its own:
/// the status code and the body.
fn raw_request(address: String, path: String) -> std::thread::JoinHandle<(u16, String)> {
    use std::io::{Read, Write};
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: {ADMIN}\r\nConnection: close\r\n\r\n");
    std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut stream = std::net::TcpStream::connect(&address).expect("connect");
            stream.write_all(request.as_bytes()).unwrap();
            let mut response = Vec::new();
            stream.read_to_end(&mut response).unwrap();
            let text = String::from_utf8_lossy(&response).into_owned();
            let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
            (code, body)
        })
        .unwrap()
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_thousand_requests_waiting_for_a_far_position_leave_ingest_flat_and_each_gets_its_answer() {
    let (_guard, bootstrap) = broker();
    let dir = tempfile::tempdir().unwrap();
    let topic = unique_topic("waiters");
    create_topics(&bootstrap, &topic, 4);
    let events = dir.path().join("events.ndjson");
    generate(&events, 25_000, 21, Some((0.05, 300, 0.0)));
    let messages = produce_file(&bootstrap, &topic, &events);
    let keys = keys_file(dir.path());
    const WAITERS: usize = 1_000;
    let far = format!("{topic}:0:1000000000");

    // The same ingest twice, into fresh stores: alone, then under the waiters.
    let mut figures = Vec::new();
    for (round, waiters) in [0, WAITERS].into_iter().enumerate() {
        let db = dir.path().join(format!("round-{round}.redb"));
        let mut runner = Runner::start(&Instance {
            bootstrap: &bootstrap,
            topic: &topic,
            group: "waiters",
            db: &db,
            keys: &keys,
            extra: Vec::new(),
            env: Vec::new(),
        });
        let started = Instant::now();
        let address = runner.base.trim_start_matches("http://").to_owned();
        let path = format!("/v1/refunds?limit=1&min_position={far}&max_wait_ms=10000");
        let answers: Vec<_> = (0..waiters).map(|_| raw_request(address.clone(), path.clone())).collect();
        runner.wait_caught_up(messages, Duration::from_secs(120));
        let ingest = started.elapsed();
        let pid = runner.child.id();
        let mut codes = BTreeMap::new();
        for answer in answers {
            let (code, body) = answer.join().unwrap();
            assert!(code != 503 || body.contains("not_caught_up"), "{code} {body}");
            *codes.entry(code).or_insert(0) += 1;
        }
        if waiters > 0 {
            // Every waiter got its answer once its wait ran out: 503.
            assert_eq!(codes, BTreeMap::from([(503, waiters)]), "{codes:?}");
            let (_, _, metrics) = runner.raw_get("/metrics");
            assert_eq!(
                metric(&metrics, "refund_projector_position_waits_total{outcome=\"timed_out\"} "),
                waiters as f64
            );
            assert_eq!(metric(&metrics, "refund_projector_position_wait_seconds_count "), waiters as f64);
        }
        let rss = peak_rss_kib(pid);
        eprintln!(
            "waiters={waiters}: {messages} events in {ingest:.2?} ({:.0} events/s), peak RSS {} MiB",
            messages as f64 / ingest.as_secs_f64(),
            rss / 1024
        );
        figures.push((ingest, rss));
        assert!(runner.terminate().0.success());
    }
    let ((alone, rss_alone), (loaded, rss_loaded)) = (figures[0], figures[1]);
    let ratio = alone.as_secs_f64() / loaded.as_secs_f64();
    eprintln!("ingest rate with {WAITERS} waiters / without: {ratio:.2}; peak RSS {rss_loaded} KiB / {rss_alone} KiB");
    // Loose bounds (two cores shared with the test itself): what fails is
    // waiters that poll, hold snapshots or threads, not noise.
    assert!(ratio > 0.6, "ingest slowed to {ratio:.2}x under {WAITERS} waiters");
    assert!(rss_loaded < rss_alone + 64 * 1024, "peak RSS {rss_loaded} KiB against {rss_alone} KiB without waiters");
}
