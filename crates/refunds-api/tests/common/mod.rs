//! What the api tests share: a store in a temp dir, events to fill it, and
//! requests through the router without a socket.

#![allow(dead_code)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, Response};
use refunds_api::{AppState, Auth, router};
use refunds_domain::{Timestamp, validate};
use refunds_store::{Batch, Durability, Item, ItemKind, SourcePos, Store, StoreParams};
use serde_json::{Value, json};
use tower::ServiceExt;

pub const KEYS: &str = r#"
[[keys]]
id = "ops"
secret = "ops"
tenant = "*"
scopes = ["admin"]

[[keys]]
id = "acme"
secret = "acme"
tenant = "acme"
scopes = ["refunds:read"]
"#;

/// 2026-01-01T00:00:00Z, in milliseconds.
pub const START_MS: i64 = 1_767_225_600_000;

pub struct App {
    pub dir: tempfile::TempDir,
    pub store: Arc<Store>,
    pub router: axum::Router,
}

impl App {
    pub fn new() -> App {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Arc::new(Store::open(&path, &StoreParams { cache_bytes: 16 << 20 }).unwrap());
        let state = AppState::new(store.clone(), Arc::new(Auth::from_toml(KEYS, None).unwrap()), path.as_path());
        App { dir, store, router: router(state) }
    }

    pub fn apply(&self, events: &[Value]) {
        let items = events.iter().enumerate().map(|(i, e)| item(i as u64 + 1, e)).collect();
        self.store.apply_batch(&Batch { items, checkpoints: vec![] }, Durability::None).unwrap();
    }

    /// Sends `method uri` with the admin key; returns the response.
    pub async fn send(&self, method: &str, uri: &str) -> Response<Body> {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("Authorization", "Api-Key ops")
            .body(Body::empty())
            .unwrap();
        self.router.clone().oneshot(request).await.unwrap()
    }

    /// `GET uri` with the admin key: the status and the JSON body.
    pub async fn get(&self, uri: &str) -> (u16, Value) {
        let response = self.send("GET", uri).await;
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("{uri}: the body is not JSON")))
    }

    /// `GET uri`, insisting on 200.
    pub async fn ok(&self, uri: &str) -> Value {
        let (status, body) = self.get(uri).await;
        assert_eq!(status, 200, "{uri}: {body}");
        body
    }
}

/// An event of `refund` in `tenant`, `second` seconds after [`START_MS`].
pub fn event(tenant: &str, refund: &str, event_type: &str, second: i64, extra: Value) -> Value {
    let at = Timestamp::from_millis(START_MS + second * 1000).unwrap();
    let mut body = json!({"id": refund, "tenant_id": tenant});
    if event_type == "refund.queued" {
        body["amount"] = json!(100);
        body["currency"] = json!("USD");
    }
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    json!({
        "event_id": format!("evt_{tenant}_{refund}_{event_type}"),
        "type": event_type,
        "occurred_at": at.to_string(),
        "refund": body,
    })
}

fn item(line: u64, event: &Value) -> Item {
    let raw = event.to_string();
    let kind = ItemKind::Valid(Box::new(validate(raw.as_bytes()).unwrap()));
    Item {
        source: SourcePos::File { path: Arc::from("test"), line },
        received_at: Timestamp::from_millis(START_MS).unwrap(),
        raw: raw.into_bytes(),
        packed: None,
        key: None,
        kind,
    }
}
