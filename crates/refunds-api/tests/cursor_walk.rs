//! A cursor walk across which new refunds are applied to the store returns
//! every refund whose sort key did not change exactly once. In-process over
//! the router, since a redb file has one owner.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use refunds_api::{AppState, Auth, router};
use refunds_domain::{Timestamp, validate};
use refunds_store::{Batch, Durability, Item, ItemKind, SourcePos, Store, StoreParams};
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;
use common::KEYS;

fn queued(tenant: &str, id: &str, second: i64) -> Item {
    let at = Timestamp::from_millis(1_767_225_600_000 + second * 1000).unwrap();
    let raw = json!({
        "event_id": format!("evt_{tenant}_{id}"),
        "type": "refund.queued",
        "occurred_at": at.to_string(),
        "refund": {"id": id, "tenant_id": tenant, "amount": 100, "currency": "USD"},
    })
    .to_string();
    let kind = ItemKind::Valid(Box::new(validate(raw.as_bytes()).unwrap()));
    Item {
        source: SourcePos::File { path: Arc::from("test"), line: 1 },
        received_at: at,
        raw: raw.into_bytes(),
        packed: None,
        key: None,
        kind,
    }
}

async fn get(app: &axum::Router, uri: &str) -> Value {
    let request = Request::get(uri).header("Authorization", "Api-Key ops").body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200, "{uri}");
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_walk_sees_every_unchanged_refund_once_while_refunds_are_inserted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("store.redb"), &StoreParams { cache_bytes: 16 << 20 }).unwrap());
    // 60 refunds over two tenants, with many equal created_at values.
    let original: Vec<Item> =
        (0..60).map(|i| queued(if i % 3 == 0 { "org_b" } else { "org_a" }, &format!("ref_{i:03}"), i / 4)).collect();
    store.apply_batch(&Batch { items: original, checkpoints: vec![] }, Durability::None).unwrap();
    let state = AppState::new(
        store.clone(),
        Arc::new(Auth::from_toml(KEYS, None).unwrap()),
        dir.path().join("store.redb").as_path(),
    );
    let app = router(state);

    for ordering in ["-created", "created"] {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut uri = format!("/v1/refunds?limit=7&ordering={ordering}");
        let mut round = 0;
        loop {
            let page = get(&app, &uri).await;
            for refund in page["results"].as_array().unwrap() {
                let key = format!("{}/{}", refund["tenant_id"].as_str().unwrap(), refund["id"].as_str().unwrap());
                *seen.entry(key).or_default() += 1;
            }
            // Between pages, new refunds land before, inside and after the walk.
            round += 1;
            let inserted: Vec<Item> = [-5, 3, 7, 20]
                .iter()
                .map(|&second| queued("org_a", &format!("new_{ordering}_{round}_{second}"), second))
                .collect();
            store.apply_batch(&Batch { items: inserted, checkpoints: vec![] }, Durability::None).unwrap();
            match page["next_cursor"].as_str() {
                Some(cursor) if page["has_more"] == true => {
                    uri = format!("/v1/refunds?limit=7&ordering={ordering}&cursor={cursor}")
                }
                _ => break,
            }
        }
        for i in 0..60 {
            let key = format!("{}/ref_{i:03}", if i % 3 == 0 { "org_b" } else { "org_a" });
            assert_eq!(seen.get(&key), Some(&1), "{ordering}: {key} must be seen exactly once");
        }
        assert!(seen.values().all(|&n| n == 1), "{ordering}: nothing is returned twice");
    }
}
