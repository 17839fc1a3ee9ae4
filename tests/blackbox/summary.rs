//! `GET /v1/refunds/summary` over HTTP against a replayed store: figures
//! against the export and the list's count, tenant rules, and every error.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::api::{Server, fixture};
use crate::helpers::replay;

const ADMIN: Option<&str> = Some("Api-Key secret-ops");
const TENANT_A: Option<&str> = Some("Api-Key secret-a");

type Cells = BTreeMap<(String, String, String), (u64, BTreeMap<String, (u64, u128)>)>;

/// Brute force over the export: (UTC day, status, currency) -> count and
/// per-currency (refunds with an amount, sum).
fn by_day_status_currency(refunds: &[Value], keep: impl Fn(&Value) -> bool) -> Cells {
    let mut cells = Cells::new();
    for r in refunds.iter().filter(|r| keep(r)) {
        let text = |k: &str| r[k].as_str().map_or("null".to_owned(), str::to_owned);
        let day = format!("{}T00:00:00.000+00:00", &r["created_at"].as_str().unwrap()[..10]);
        let cell = cells.entry((day, text("status"), text("currency"))).or_default();
        cell.0 += 1;
        if let (Some(amount), Some(currency)) = (r["amount"].as_u64(), r["currency"].as_str()) {
            let e = cell.1.entry(currency.to_owned()).or_default();
            e.0 += 1;
            e.1 += u128::from(amount);
        }
    }
    cells
}

fn cells_of(body: &Value) -> Cells {
    body["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let text = |k: &str| g[k].as_str().map_or("null".to_owned(), str::to_owned);
            let amounts = g["amounts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    let sum = u128::from(a["amount"].as_u64().unwrap());
                    (a["currency"].as_str().unwrap().to_owned(), (a["refunds"].as_u64().unwrap(), sum))
                })
                .collect();
            ((text("period_start"), text("status"), text("currency")), (g["count"].as_u64().unwrap(), amounts))
        })
        .collect()
}

#[test]
fn a_summary_equals_the_export_and_the_lists_count_for_every_caller() {
    let f = fixture();
    let server = Server::start(&f.db, &f.keys);
    let query = "group_by=status,currency&interval=day";
    let cases = [
        (ADMIN, String::new(), None),
        (ADMIN, format!("&tenant_id={}", f.tenant_b), Some(f.tenant_b.clone())),
        (TENANT_A, String::new(), Some(f.tenant_a.clone())),
        (Some("Api-Key secret-all"), String::new(), None),
    ];
    for (auth, tenant, only) in cases {
        let path = format!("/v1/refunds/summary?{query}{tenant}");
        let (status, body, _) = server.get(&path, auth);
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["object"], "summary");
        assert_eq!(body["group_by"], json!(["status", "currency"]));
        assert_eq!((&body["interval"], &body["tz"]), (&json!("day"), &json!("UTC")));
        let expected =
            by_day_status_currency(&f.refunds, |r| only.as_ref().is_none_or(|t| r["tenant_id"] == t.as_str()));
        assert_eq!(cells_of(&body), expected, "{path}");
        let (_, list, _) = server.get(&format!("/v1/refunds?limit=1{tenant}"), auth);
        assert_eq!(body["count"], list["count"], "{path}");
        let sum: u64 = body["groups"].as_array().unwrap().iter().map(|g| g["count"].as_u64().unwrap()).sum();
        assert_eq!(Some(sum), body["count"].as_u64());
        // Groups by day, then status by rank (then name), then currency.
        let rank = |s: &str| ["queued", "processing", "cancelled", "completed", "failed"].iter().position(|x| *x == s);
        let keys: Vec<(String, Option<usize>, String)> = body["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                let currency = g["currency"].as_str().map_or("\u{10ffff}".to_owned(), str::to_owned);
                (g["period_start"].as_str().unwrap().to_owned(), rank(g["status"].as_str().unwrap()), currency)
            })
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{path}: groups out of order");
    }
    // Filters and aliases are the list's: the count matches for each, and
    // for each kind of kept rows a grouping picks (every dimension, or
    // status and currency only: by amount bucket for amount bounds).
    for (filter, group_by) in [
        "status=completed,failed",
        "state=succeeded",
        "currency_code=usd",
        "processor=STRIPE&payment_method_type=credit_card",
        "created_after=2024-06-01&created_before=2025-01-31T12:00:00Z",
        "from=1717200000&to=2024-12-31",
        "minimum_amount=1000&maximum_amount=5000",
        "amount_min=9000&amount_max=10",
        "amount_min=1000&amount_max=5000&status=completed,failed",
        "amount_min=130",
    ]
    .into_iter()
    .flat_map(|filter| [(filter, "processor"), (filter, "status,currency")])
    {
        let (status, body, _) = server.get(&format!("/v1/refunds/summary?{filter}&group_by={group_by}"), ADMIN);
        assert_eq!(status, 200, "{filter}: {body}");
        let (_, list, _) = server.get(&format!("/v1/refunds?{filter}&limit=1"), ADMIN);
        assert_eq!(body["count"], list["count"], "{filter} by {group_by}");
        let sum: u64 = body["groups"].as_array().unwrap().iter().map(|g| g["count"].as_u64().unwrap()).sum();
        assert_eq!(Some(sum), body["count"].as_u64(), "{filter} by {group_by}");
    }
    // Without group_by and interval: totals only.
    let (_, body, _) = server.get("/v1/refunds/summary?tz=Asia/Kathmandu", TENANT_A);
    assert_eq!(body["groups"], json!([]));
    assert_eq!(body["interval"], Value::Null);
    let totals: u64 = body["amounts"].as_array().unwrap().iter().map(|a| a["refunds"].as_u64().unwrap()).sum();
    let with_amount = f
        .refunds
        .iter()
        .filter(|r| r["tenant_id"] == f.tenant_a.as_str() && r["amount"].is_u64() && r["currency"].is_string());
    assert_eq!(totals, with_amount.count() as u64);
}

/// `GET path` as `auth` with `Accept-Encoding: accept`: the status, the
/// `Content-Encoding` and `Vary` headers, and the body decoded.
fn get_encoded(server: &Server, path: &str, auth: &str, accept: &str) -> (u16, Option<String>, Option<String>, String) {
    use std::io::Read;
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let response = agent
        .get(format!("{}{path}", server.base()))
        .header("Authorization", auth)
        .header("Accept-Encoding", accept)
        .call()
        .expect("the server answers");
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let (status, encoding, vary) = (response.status().as_u16(), header("content-encoding"), header("vary"));
    let bytes = response.into_body().read_to_vec().unwrap();
    let text = if encoding.as_deref() == Some("gzip") {
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes.as_slice()).read_to_string(&mut text).expect("a gzip body");
        text
    } else {
        String::from_utf8(bytes).unwrap()
    };
    (status, encoding, vary, text)
}

#[test]
fn a_summary_is_gzipped_when_asked_and_the_same_with_or_without_kept_answers() {
    let f = fixture();
    let kept = Server::start(&f.db, &f.keys);
    // A store file is open in one process at a time.
    let copy = f.db.with_extension("copy.redb");
    std::fs::copy(&f.db, &copy).unwrap();
    let computed = Server::start_with(&copy, &f.keys, &["--summary-cache-mib", "0"]);
    let admin = ADMIN.unwrap();
    for query in [
        "group_by=status,currency&interval=day",
        "group_by=processor&interval=week&tz=America/New_York&status=failed",
        "group_by=currency",
        "amount_min=1000&amount_max=5000&group_by=status",
    ] {
        let path = format!("/v1/refunds/summary?{query}");
        let plain = computed.get_text(&path, ADMIN);
        for server in [&kept, &computed] {
            for (accept, gzip) in [("gzip, deflate, br", true), ("gzip;q=0, identity", false), ("br", false)] {
                // Twice: the second may be a kept answer.
                for _ in 0..2 {
                    let (status, encoding, vary, body) = get_encoded(server, &path, admin, accept);
                    assert_eq!(status, 200, "{path}");
                    assert_eq!(encoding.as_deref(), gzip.then_some("gzip"), "{path} with {accept}");
                    assert_eq!(vary.as_deref(), Some("accept-encoding"), "{path}");
                    assert_eq!(body, plain, "{path} with {accept}: the same bytes once decoded");
                }
            }
        }
    }
    // The first server answered repeats from kept answers; the second
    // computed every one.
    let answers = |server: &Server, outcome: &str| -> u64 {
        let metrics = ureq::get(format!("{}/metrics", server.base())).call().unwrap().into_body().read_to_string();
        let line = format!("refund_projector_summary_answers_total{{outcome=\"{outcome}\"}} ");
        metrics.unwrap().lines().find_map(|l| l.strip_prefix(line.as_str())).map_or(0, |n| n.parse().unwrap())
    };
    assert!(answers(&kept, "hit") >= 4 * 3, "a repeat in the same snapshot is a kept answer");
    assert_eq!((answers(&computed, "hit"), answers(&computed, "miss")), (0, 0), "--summary-cache-mib 0 keeps none");
    assert!(answers(&computed, "uncached") >= 4 * 3 * 2);
    // An error is never gzipped or kept.
    let (status, encoding, _, body) = get_encoded(&kept, "/v1/refunds/summary?group_by=nope", admin, "gzip");
    assert_eq!((status, encoding), (400, None), "{body}");
    assert!(body.contains("group_by"), "{body}");
}

#[test]
fn every_summary_error_is_a_400_401_403_or_405_naming_its_cause() {
    let f = fixture();
    let server = Server::start(&f.db, &f.keys);
    for (query, code, param) in [
        ("group_by=amount", "invalid_parameter", "group_by"),
        ("group_by=status,currency,processor", "invalid_parameter", "group_by"),
        ("group_by=currency,currency", "invalid_parameter", "group_by"),
        ("group_by=", "invalid_parameter", "group_by"),
        ("interval=year", "invalid_parameter", "interval"),
        ("tz=Mars/Olympus", "invalid_parameter", "tz"),
        ("interval=day&interval=week", "invalid_parameter", "interval"),
        ("status=done", "invalid_parameter", "status"),
        ("status=queued&state=queued", "invalid_parameter", "state"),
        ("amount_min=-1", "invalid_parameter", "amount_min"),
        ("created_after=yesterday", "invalid_parameter", "created_after"),
        ("limit=10", "unknown_parameter", "limit"),
        ("page_size=10", "unknown_parameter", "page_size"),
        ("offset=0", "unknown_parameter", "offset"),
        ("page=2", "unknown_parameter", "page"),
        ("cursor=abc", "unknown_parameter", "cursor"),
        ("starting_after=ref_1", "unknown_parameter", "starting_after"),
        ("ending_before=ref_1", "unknown_parameter", "ending_before"),
        ("ordering=created", "unknown_parameter", "ordering"),
        ("order=chronological", "unknown_parameter", "order"),
        ("Group_by=status", "unknown_parameter", "Group_by"),
    ] {
        let (status, body, _) = server.get(&format!("/v1/refunds/summary?{query}"), ADMIN);
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(
            (body["error"]["code"].as_str(), body["error"]["param"].as_str()),
            (Some(code), Some(param)),
            "{query}"
        );
    }

    let (status, body, challenge) = server.get("/v1/refunds/summary", None);
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")));
    assert!(challenge.is_some(), "401 carries WWW-Authenticate");
    assert_eq!(server.get("/v1/refunds/summary", Some("Api-Key wrong")).0, 401);
    let foreign = format!("/v1/refunds/summary?tenant_id={}", f.tenant_b);
    let (status, body, _) = server.get(&foreign, TENANT_A);
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")));
    assert!(!body.to_string().contains(&f.tenant_b));
    assert_eq!(server.get(&foreign, Some("Api-Key secret-all")).0, 403, "a * key without admin cannot name a tenant");
    assert_eq!(server.get("/v1/refunds/summary", Some("Api-Key secret-none")).0, 403, "no refunds:read scope");
    // Naming one's own tenant is fine.
    assert_eq!(server.get(&format!("/v1/refunds/summary?owner_id={}", f.tenant_a), TENANT_A).0, 200);

    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let response = agent
        .post(format!("{}/v1/refunds/summary", server.base()))
        .header("Authorization", "Api-Key secret-ops")
        .send("")
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert!(response.headers().get("allow").unwrap().to_str().unwrap().contains("GET"));
    let body: Value = serde_json::from_str(&response.into_body().read_to_string().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[test]
fn summary_is_never_taken_for_a_refund_id_and_sums_pass_64_bits() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    let max = u64::MAX;
    let mut lines: Vec<String> = [("summary", max), ("ref_2", max), ("ref_3", 7)]
        .iter()
        .enumerate()
        .map(|(i, (id, amount))| {
            json!({"event_id": format!("evt_{i}"), "type": "refund.queued", "occurred_at": format!("2025-11-0{}T23:30:00Z", i + 1),
                "refund": {"id": id, "tenant_id": "org_big", "amount": amount, "currency": "usd"}})
            .to_string()
        })
        .collect();
    // Another tenant's refund two years earlier: more than 1,000 hours apart.
    lines.push(
        json!({"event_id": "evt_far", "type": "refund.queued", "occurred_at": "2023-11-01T00:00:00Z",
            "refund": {"id": "ref_far", "tenant_id": "org_far", "amount": 1, "currency": "eur"}})
        .to_string(),
    );
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    let db = dir.path().join("store.redb");
    replay(&events, &db, None);
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, "[[keys]]\nid = \"ops\"\nsecret = \"s\"\ntenant = \"*\"\nscopes = [\"admin\"]\n").unwrap();
    let server = Server::start(&db, &keys);
    // The refund whose id is `summary` is still reachable by id through its events.
    let (status, trail, _) = server.get("/v1/refunds/summary/events", Some("Api-Key s"));
    assert_eq!((status, trail["refund_id"].as_str()), (200, Some("summary")));
    // More than 1,000 periods between the first and last matching refund.
    let (status, body, _) = server.get("/v1/refunds/summary?interval=hour", Some("Api-Key s"));
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("interval")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("created"), "{body}");
    // A narrower created range (or one tenant) makes the same interval fine.
    let (status, _, _) = server.get("/v1/refunds/summary?interval=hour&created_after=2025-01-01", Some("Api-Key s"));
    assert_eq!(status, 200);
    let raw = server.get_text(
        "/v1/refunds/summary?tenant_id=org_big&interval=day&tz=Europe/Berlin&group_by=currency",
        Some("Api-Key s"),
    );
    let total = 2 * u128::from(max) + 7;
    assert!(raw.starts_with("{\"object\":\"summary\",\"count\":3,"), "{raw}");
    assert!(raw.contains(&format!("\"amounts\":[{{\"currency\":\"USD\",\"amount\":{total},\"refunds\":3}}]")), "{raw}");
    // 23:30 UTC is the next local day in Berlin (+01:00 in November).
    for (day, amount) in [("2025-11-02", max), ("2025-11-03", max), ("2025-11-04", 7)] {
        assert!(
            raw.contains(&format!(
                "{{\"period_start\":\"{day}T00:00:00.000+01:00\",\"currency\":\"USD\",\"count\":1,\"amounts\":[{{\"currency\":\"USD\",\"amount\":{amount},\"refunds\":1}}]}}"
            )),
            "{day}: {raw}"
        );
    }
}
