//! Known routes answer a method they do not serve with 405 and an `Allow`
//! header; unknown routes stay 404; HEAD is served wherever GET is.

mod common;

use common::App;
use serde_json::Value;

const ROUTES: [&str; 9] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/v1/refunds",
    "/v1/refunds/ref_1",
    "/v1/refunds/ref_1/events",
    "/v1/status",
    "/admin/export",
];

#[tokio::test]
async fn a_known_route_answers_an_unserved_method_with_405_and_allow() {
    let app = App::new();
    for route in ROUTES {
        for method in ["POST", "PUT", "PATCH", "DELETE", "TRACE", "OPTIONS"] {
            let response = app.send(method, route).await;
            assert_eq!(response.status(), 405, "{method} {route}");
            let allow = response.headers().get("allow").map(|v| v.to_str().unwrap().to_owned());
            let mut allowed: Vec<String> =
                allow.unwrap_or_default().split(',').map(|m| m.trim().to_owned()).filter(|m| !m.is_empty()).collect();
            allowed.sort();
            assert_eq!(allowed, ["GET", "HEAD"], "{method} {route}: the Allow header");
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(body["error"]["code"], "method_not_allowed", "{method} {route}: {body}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains(method), "{method} {route}: the message names the method: {message}");
        }
    }
}

#[tokio::test]
async fn head_is_served_wherever_get_is_and_unknown_routes_stay_404() {
    let app = App::new();
    app.apply(&[common::event("org_a", "ref_1", "refund.queued", 0, serde_json::json!({}))]);
    for route in ROUTES {
        let get = app.send("GET", route).await.status();
        let response = app.send("HEAD", route).await;
        assert_eq!(response.status(), get, "HEAD {route} answers as GET does");
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        assert!(bytes.is_empty(), "HEAD {route} has no body");
    }
    for method in ["GET", "POST", "TRACE"] {
        let response = app.send(method, "/v2/nothing").await;
        assert_eq!(response.status(), 404, "{method} of an unknown route");
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
}
