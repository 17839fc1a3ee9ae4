//! Summary answers kept per snapshot (`answers.rs`) are never stale and
//! never cross tenants, and come gzipped when the client asks.

mod common;

use std::io::Read;

use axum::body::Body;
use axum::http::Request;
use common::{App, event};
use serde_json::{Value, json};
use tower::ServiceExt;

/// `GET uri` with `key`, and `Accept-Encoding` when given: the response's
/// `Content-Encoding`, `Vary` and its body, decoded.
async fn get(app: &App, uri: &str, key: &str, accept: Option<&str>) -> (Option<String>, Option<String>, Value) {
    let mut request = Request::builder().uri(uri).header("Authorization", format!("Api-Key {key}"));
    if let Some(accept) = accept {
        request = request.header("Accept-Encoding", accept);
    }
    let response = app.router.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), 200, "{uri}");
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let (encoding, vary) = (header("content-encoding"), header("vary"));
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap();
    let text = match encoding.as_deref() {
        Some("gzip") => {
            let mut text = String::new();
            flate2::read::GzDecoder::new(bytes.as_ref()).read_to_string(&mut text).unwrap();
            text
        }
        None => String::from_utf8(bytes.to_vec()).unwrap(),
        Some(other) => panic!("unexpected content-encoding {other}"),
    };
    (encoding, vary, serde_json::from_str(&text).unwrap())
}

fn counts(summary: &Value) -> Vec<(String, u64)> {
    let groups = summary["groups"].as_array().unwrap();
    groups.iter().map(|g| (g["status"].as_str().unwrap().to_owned(), g["count"].as_u64().unwrap())).collect()
}

#[tokio::test]
async fn every_commit_shows_in_the_next_answer_to_the_same_request() {
    let app = App::new();
    app.apply(&[
        event("acme", "re_1", "refund.queued", 0, json!({})),
        event("globex", "re_2", "refund.queued", 1, json!({})),
    ]);
    let uri = "/v1/refunds/summary?group_by=status";
    let first = get(&app, uri, "ops", None).await.2;
    assert_eq!(counts(&first), [("queued".to_owned(), 2)]);
    assert_eq!(get(&app, uri, "ops", None).await.2, first, "the same snapshot, the same answer");

    app.apply(&[event("acme", "re_3", "refund.queued", 2, json!({}))]);
    assert_eq!(counts(&get(&app, uri, "ops", None).await.2), [("queued".to_owned(), 3)]);
    app.apply(&[event("acme", "re_1", "refund.completed", 3, json!({}))]);
    let after = get(&app, uri, "ops", None).await.2;
    assert_eq!(counts(&after), [("queued".to_owned(), 2), ("completed".to_owned(), 1)]);
    assert_eq!(after["count"], 3);
}

#[tokio::test]
async fn the_same_request_answers_each_caller_for_its_own_tenants() {
    let app = App::new();
    app.apply(&[
        event("acme", "re_1", "refund.queued", 0, json!({})),
        event("globex", "re_2", "refund.queued", 1, json!({})),
        event("globex", "re_3", "refund.queued", 2, json!({})),
    ]);
    let uri = "/v1/refunds/summary?group_by=currency";
    // The admin's answer is kept first; the tenant's key must not get it.
    assert_eq!(get(&app, uri, "ops", None).await.2["count"], 3);
    assert_eq!(get(&app, uri, "acme", None).await.2["count"], 1);
    assert_eq!(get(&app, uri, "ops", None).await.2["count"], 3);
    assert_eq!(get(&app, &format!("{uri}&tenant_id=globex"), "ops", None).await.2["count"], 2);
}

#[tokio::test]
async fn a_summary_comes_gzipped_when_the_client_takes_gzip() {
    let app = App::new();
    let events: Vec<Value> =
        (0..200).map(|i| event("acme", &format!("re_{i}"), "refund.queued", i * 3_600, json!({}))).collect();
    app.apply(&events);
    let uri = "/v1/refunds/summary?group_by=status,currency&interval=day";
    let plain = get(&app, uri, "ops", None).await;
    assert_eq!(plain.0, None);
    assert_eq!(plain.1.as_deref(), Some("accept-encoding"));
    assert_eq!(plain.2["groups"].as_array().unwrap().len(), 9, "200 hours are 9 days");
    for (accept, gzip) in [
        ("gzip", true),
        ("gzip, deflate, br, zstd", true),
        ("br;q=1.0, GZIP;q=0.5", true),
        ("x-gzip", true),
        ("*", true),
        ("gzip;q=0", false),
        ("*;q=0", false),
        ("*, gzip;q=0", false),
        ("identity", false),
        ("deflate, br", false),
    ] {
        // Twice: computed, then kept.
        for _ in 0..2 {
            let (encoding, vary, body) = get(&app, uri, "ops", Some(accept)).await;
            assert_eq!(encoding.as_deref(), gzip.then_some("gzip"), "Accept-Encoding: {accept}");
            assert_eq!(vary.as_deref(), Some("accept-encoding"));
            assert_eq!(body, plain.2, "Accept-Encoding: {accept}");
        }
    }
}
