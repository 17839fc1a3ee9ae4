//! `serve` on a loopback port over a store filled by `replay`, driven by a
//! real HTTP client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::helpers::{command, export, generate, replay};

const KEYS: &str = r#"
[[keys]]
id = "tenant-a"
secret = "secret-a"
tenant = "TENANT_A"
scopes = ["refunds:read"]

[[keys]]
id = "ops"
secret = "secret-ops"
tenant = "*"
scopes = ["refunds:read", "admin"]

[[keys]]
id = "all-readonly"
secret = "secret-all"
tenant = "*"
scopes = ["refunds:read"]

[[keys]]
id = "no-scope"
secret = "secret-none"
tenant = "TENANT_A"
scopes = []
"#;

pub struct Server {
    child: Child,
    base: String,
}

impl Server {
    pub fn start(db: &Path, keys: &Path) -> Server {
        Server::start_with(db, keys, &[])
    }

    pub fn start_with(db: &Path, keys: &Path, extra: &[&str]) -> Server {
        let mut cmd = Server::command(db, keys);
        cmd.args(extra);
        Server::spawn(cmd)
    }

    /// `serve` of `db` with `keys` on a free loopback port, for more
    /// arguments or environment before [`Server::spawn`].
    pub fn command(db: &Path, keys: &Path) -> std::process::Command {
        let mut cmd = command();
        cmd.args(["serve", "--db", db.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .args(["--api-keys", keys.to_str().unwrap()]);
        cmd
    }

    /// Starts `cmd` (a `serve` command line) and waits for its address.
    pub fn spawn(mut cmd: std::process::Command) -> Server {
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let base = loop {
            let line = lines.next().expect("serve printed its address").unwrap();
            if let Some(address) = line.strip_prefix("listening on ") {
                break address.trim().to_owned();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, base }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The body of a 200 as sent (checked against the OpenAPI document too).
    pub fn get_text(&self, path: &str, auth: Option<&str>) -> String {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut request = agent.get(format!("{}{path}", self.base));
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let response = request.call().expect("the server answers");
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let body = response.into_body().read_to_string().unwrap();
        conforms_to_openapi(path, 200, &serde_json::from_str(&body).unwrap());
        body
    }

    pub fn get(&self, path: &str, auth: Option<&str>) -> (u16, Value, Option<String>) {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut request = agent.get(format!("{}{path}", self.base));
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let response = request.call().expect("the server answers");
        let status = response.status().as_u16();
        let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().read_to_string().unwrap();
        let json = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: body is not JSON: {body}"));
        conforms_to_openapi(path, status, &json);
        (status, json, challenge)
    }
}

/// Every response the tests receive must match `schemas/openapi.json`.
fn conforms_to_openapi(path: &str, status: u16, body: &Value) {
    static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| {
        let text = std::fs::read_to_string(crate::helpers::repo_root().join("schemas/openapi.json")).unwrap();
        serde_json::from_str(&text).expect("the OpenAPI document is JSON")
    });
    let route = path.split('?').next().unwrap();
    let template = match route.split('/').collect::<Vec<_>>()[..] {
        ["", "v1", "refunds"] => "/v1/refunds",
        ["", "v1", "refunds", "summary"] => "/v1/refunds/summary",
        ["", "v1", "refunds", _] => "/v1/refunds/{id}",
        ["", "v1", "refunds", _, "events"] => "/v1/refunds/{id}/events",
        _ => route,
    };
    let schema =
        match doc["paths"][template]["get"]["responses"][status.to_string()]["content"]["application/json"]["schema"]
            .clone()
        {
            Value::Null if status >= 400 => serde_json::json!({"$ref": "#/components/schemas/ErrorResponse"}),
            Value::Null => panic!("the OpenAPI document has no {status} response for GET {template}"),
            schema => schema,
        };
    // Validate against the schema with the document's components in reach.
    let mut root = serde_json::json!({"components": doc["components"].clone()});
    for (key, value) in schema.as_object().unwrap() {
        root[key] = value.clone();
    }
    let validator = jsonschema::validator_for(&root).expect("the response schema compiles");
    if let Some(error) = validator.iter_errors(body).next() {
        panic!(
            "GET {path} -> {status} does not match the OpenAPI document: {error} at {}\n{body}",
            error.instance_path()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A replayed store with two tenants of interest and the keys file.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub db: PathBuf,
    pub keys: PathBuf,
    pub events: PathBuf,
    /// Exported refunds, ordered by (tenant, id).
    pub refunds: Vec<Value>,
    pub tenant_a: String,
    pub tenant_b: String,
}

pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    generate(&events, 400, 21, Some((0.1, 50, 0.0)));
    let db = dir.path().join("store.redb");
    replay(&events, &db, None);
    let refunds: Vec<Value> = export(&db).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut tenants: Vec<String> = refunds.iter().map(|r| r["tenant_id"].as_str().unwrap().to_owned()).collect();
    tenants.dedup();
    assert!(tenants.len() >= 2, "the generator spreads refunds over tenants");
    let (tenant_a, tenant_b) = (tenants[0].clone(), tenants[1].clone());
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, KEYS.replace("TENANT_A", &tenant_a)).unwrap();
    Fixture { db, keys, events, refunds, tenant_a, tenant_b, _dir: dir }
}

fn first_of<'a>(refunds: &'a [Value], tenant: &str) -> &'a Value {
    refunds.iter().find(|r| r["tenant_id"] == tenant).unwrap()
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

#[test]
fn a_refund_is_served_as_exported_to_every_accepted_credential_form() {
    let f = fixture();
    let server = Server::start(&f.db, &f.keys);
    let refund = first_of(&f.refunds, &f.tenant_a);
    let path = format!("/v1/refunds/{}", refund["id"].as_str().unwrap());
    for auth in [
        "Api-Key secret-a".to_owned(),
        "api-key secret-a".to_owned(),
        "Bearer secret-a".to_owned(),
        basic("secret-a", ""),
        basic("tenant-a", "secret-a"),
    ] {
        let (status, body, _) = server.get(&path, Some(&auth));
        assert_eq!(status, 200, "{auth}: {body}");
        assert_eq!(&body, refund, "{auth}");
    }
}

fn jwt(claims: &Value, secret: &[u8]) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hmac::{Hmac, Mac};
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{header}.{payload}").as_bytes());
    format!("Bearer {header}.{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

#[test]
fn jwts_signed_with_the_configured_secret_carry_tenant_and_scope() {
    let f = fixture();
    let server = Server::start_with(&f.db, &f.keys, &["--jwt-secret", "jwt-test-secret"]);
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let own = first_of(&f.refunds, &f.tenant_a);
    let foreign = first_of(&f.refunds, &f.tenant_b)["id"].as_str().unwrap().to_owned();
    let tenant_token = jwt(
        &serde_json::json!({"sub": "u1", "tenant_id": f.tenant_a, "scope": "refunds:read", "exp": exp}),
        b"jwt-test-secret",
    );
    let (status, body, _) = server.get(&format!("/v1/refunds/{}", own["id"].as_str().unwrap()), Some(&tenant_token));
    assert_eq!((status, &body), (200, own));
    assert_eq!(
        server.get(&format!("/v1/refunds/{foreign}"), Some(&tenant_token)).0,
        404,
        "a tenant JWT sees only its tenant"
    );
    let (status, body, _) = server.get("/v1/refunds?limit=1", Some(&tenant_token));
    assert_eq!(status, 200);
    assert_eq!(
        body["count"].as_u64().unwrap(),
        f.refunds.iter().filter(|r| r["tenant_id"] == f.tenant_a.as_str()).count() as u64
    );
    assert_eq!(server.get("/v1/status", Some(&tenant_token)).0, 403);
    let admin_token =
        jwt(&serde_json::json!({"tenant_id": "*", "scope": "refunds:read admin", "exp": exp}), b"jwt-test-secret");
    assert_eq!(server.get("/v1/status", Some(&admin_token)).0, 200);
    let expired = jwt(&serde_json::json!({"tenant_id": "*", "scope": "admin", "exp": exp - 3600}), b"jwt-test-secret");
    assert_eq!(server.get("/v1/status", Some(&expired)).0, 401);
    let forged = jwt(&serde_json::json!({"tenant_id": "*", "scope": "admin", "exp": exp}), b"guess");
    assert_eq!(server.get("/v1/status", Some(&forged)).0, 401);
    // Without --jwt-secret, no JWT is accepted (one process owns a store at a time).
    drop(server);
    let plain = Server::start(&f.db, &f.keys);
    assert_eq!(plain.get("/v1/status", Some(&admin_token)).0, 401);
}

#[test]
fn a_tenant_key_can_neither_read_nor_probe_another_tenants_refunds() {
    let f = fixture();
    let server = Server::start(&f.db, &f.keys);
    let own = first_of(&f.refunds, &f.tenant_a)["id"].as_str().unwrap().to_owned();
    let foreign = first_of(&f.refunds, &f.tenant_b)["id"].as_str().unwrap().to_owned();
    let key = Some("Api-Key secret-a");
    for route in ["", "/events"] {
        let (status, body, _) = server.get(&format!("/v1/refunds/{foreign}{route}"), key);
        assert_eq!(status, 404, "foreign refund{route}: {body}");
        assert!(!body.to_string().contains(&f.tenant_b), "the error reveals nothing of the other tenant");
        let (status, _, _) = server.get(&format!("/v1/refunds/{own}{route}"), key);
        assert_eq!(status, 200, "own refund{route}");
        let (status, body, _) = server.get(&format!("/v1/refunds/{foreign}{route}?tenant_id={}", f.tenant_b), key);
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "forbidden");
        let (status, _, _) = server.get(&format!("/v1/refunds/{own}{route}?owner_id={}", f.tenant_a), key);
        assert_eq!(status, 200, "naming one's own tenant is fine");
    }
    let (status, _, _) = server.get("/v1/status", key);
    assert_eq!(status, 403, "status needs admin");
}

#[test]
fn keys_for_every_tenant_read_any_refund_but_only_admins_filter_by_tenant() {
    let f = fixture();
    let server = Server::start(&f.db, &f.keys);
    let refund = first_of(&f.refunds, &f.tenant_b);
    let path = format!("/v1/refunds/{}", refund["id"].as_str().unwrap());
    for key in ["Api-Key secret-ops", "Api-Key secret-all"] {
        let (status, body, _) = server.get(&path, Some(key));
        assert_eq!((status, &body), (200, refund), "{key}");
    }
    let with_tenant = format!("{path}?tenant_id={}", f.tenant_b);
    assert_eq!(server.get(&with_tenant, Some("Api-Key secret-ops")).0, 200);
    assert_eq!(server.get(&with_tenant, Some("Api-Key secret-all")).0, 403);
    assert_eq!(server.get(&format!("{path}?tenant_id={}", f.tenant_a), Some("Api-Key secret-ops")).0, 404);
    assert_eq!(server.get("/v1/refunds/ref_does_not_exist", Some("Api-Key secret-ops")).0, 404);
    assert_eq!(server.get(&path, Some("Api-Key secret-none")).0, 403, "a key without refunds:read");
}

#[test]
fn the_audit_trail_lists_every_received_event_with_outcome_and_source() {
    let f = fixture();
    let server = Server::start(&f.db, &f.keys);
    // A refund with a repeated event in the noisy stream.
    let lines: Vec<String> = std::fs::read_to_string(&f.events).unwrap().lines().map(str::to_owned).collect();
    let refund = f
        .refunds
        .iter()
        .find(|r| {
            let id = r["id"].as_str().unwrap();
            lines.iter().filter(|l| l.contains(id)).count() as u64 > r["event_count"].as_u64().unwrap()
        })
        .expect("some refund got a repeated event");
    let id = refund["id"].as_str().unwrap();
    let (status, body, _) = server.get(&format!("/v1/refunds/{id}/events"), Some("Api-Key secret-ops"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["refund_id"], id);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), lines.iter().filter(|l| l.contains(id)).count(), "every received event is listed");
    let applied = results.iter().filter(|e| e["outcome"] == "applied").count() as u64;
    assert_eq!(applied, refund["event_count"].as_u64().unwrap());
    assert!(results.iter().any(|e| e["outcome"] == "duplicate"));
    for entry in results {
        let line = usize::try_from(entry["source"]["line"].as_u64().unwrap()).unwrap();
        assert_eq!(entry["source"]["file"], f.events.to_str().unwrap());
        let original: Value = serde_json::from_str(&lines[line - 1]).unwrap();
        assert_eq!(entry["payload"], original, "the payload is the event at that line");
        assert_eq!(entry["event_id"], original["event_id"]);
        assert_eq!(entry["type"], original["type"]);
    }
    let keys: Vec<(String, String)> = results
        .iter()
        .map(|e| (e["occurred_at"].as_str().unwrap().to_owned(), e["event_id"].as_str().unwrap().to_owned()))
        .collect();
    assert!(keys.windows(2).all(|w| w[0] <= w[1]), "ordered by (occurred_at, event_id)");
}

/// Contract section 2, Identity: a conflicting repeat is listed with the
/// refund its event id was first applied to, even when the new copy names a
/// refund that does not exist.
#[test]
fn a_conflicting_repeat_naming_another_refund_is_in_the_trail_of_the_first_one() {
    let dir = tempfile::tempdir().unwrap();
    let event = |refund: &str, event_type: &str, event_id: &str, at: &str| {
        json!({
            "event_id": event_id,
            "type": event_type,
            "occurred_at": at,
            "refund": {"id": refund, "tenant_id": "org_1", "amount": 2500, "currency": "USD"},
        })
        .to_string()
    };
    let lines = [
        event("ref_1", "refund.queued", "evt_1", "2026-01-01T00:00:00Z"),
        event("ref_1", "refund.completed", "evt_2", "2026-01-01T00:01:00Z"),
        event("ref_nowhere", "refund.queued", "evt_1", "2026-01-01T00:02:00Z"),
    ];
    let events = dir.path().join("events.ndjson");
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    let db = dir.path().join("store.redb");
    replay(&events, &db, None);
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, KEYS.replace("TENANT_A", "org_1")).unwrap();
    let server = Server::start(&db, &keys);
    let (status, body, _) = server.get("/v1/refunds/ref_1/events", Some("Api-Key secret-a"));
    assert_eq!(status, 200, "{body}");
    let outcomes: Vec<(&str, &str, &str)> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event_id"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
                e["payload"]["refund"]["id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("evt_1", "applied", "ref_1"),
            ("evt_2", "applied", "ref_1"),
            ("evt_1", "conflicting_duplicate", "ref_nowhere")
        ]
    );
    assert_eq!(server.get("/v1/refunds/ref_nowhere/events", Some("Api-Key secret-a")).0, 404);
    assert_eq!(server.get("/v1/refunds/ref_1", Some("Api-Key secret-a")).1["event_count"], 2);
}

#[test]
fn errors_are_json_with_the_contracts_codes() {
    let f = fixture();
    let server = Server::start(&f.db, &f.keys);
    let id = f.refunds[0]["id"].as_str().unwrap();
    let (status, body, challenge) = server.get(&format!("/v1/refunds/{id}"), None);
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")));
    assert!(challenge.is_some(), "401 carries WWW-Authenticate");
    let (status, _, challenge) = server.get(&format!("/v1/refunds/{id}"), Some("Api-Key wrong"));
    assert_eq!(status, 401);
    assert!(challenge.is_some());
    assert_eq!(
        server.get(&format!("/v1/refunds/{id}"), Some(&basic("ops", "secret-a"))).0,
        401,
        "id of one key, secret of another"
    );

    let admin = Some("Api-Key secret-ops");
    let (status, body, _) = server.get(&format!("/v1/refunds/{id}?Tenant_id=x"), admin);
    assert_eq!(
        (status, &body["error"]["code"], &body["error"]["param"]),
        (400, &Value::from("unknown_parameter"), &Value::from("Tenant_id"))
    );
    let (status, body, _) = server.get(&format!("/v1/refunds/{id}?tenant_id=a&tenant_id=b"), admin);
    assert_eq!((status, &body["error"]["code"]), (400, &Value::from("invalid_parameter")));
    let (status, body, _) = server.get(&format!("/v1/refunds/{id}?tenant_id=a&owner_id=a"), admin);
    assert_eq!((status, &body["error"]["param"]), (400, &Value::from("owner_id")));
    let (status, body, _) = server.get("/v1/refunds/%FF%FE", admin);
    assert_eq!((status, &body["error"]["code"]), (404, &Value::from("not_found")), "an id that is not UTF-8");
    let (status, _, _) = server.get("/v1/refunds?status=%FF", admin);
    assert_eq!(status, 400, "a query that is not UTF-8");
    let (status, body, _) = server.get("/v2/nothing", admin);
    assert_eq!((status, &body["error"]["code"]), (404, &Value::from("not_found")));
}

#[test]
fn freshness_parameters_are_checked_on_every_route_and_a_replayed_store_has_no_kafka_position() {
    let f = fixture();
    let server = Server::start(&f.db, &f.keys);
    let admin = Some("Api-Key secret-ops");
    let id = f.refunds[0]["id"].as_str().unwrap();
    let routes = [
        "/v1/refunds".to_owned(),
        format!("/v1/refunds/{id}"),
        format!("/v1/refunds/{id}/events"),
        "/v1/status".to_owned(),
    ];
    let refused = [
        ("max_wait_ms=10", "max_wait_ms"),
        ("min_position=t:0:1&max_wait_ms=10001", "max_wait_ms"),
        ("min_position=t:0:1&max_wait_ms=-1", "max_wait_ms"),
        ("min_position=t:0:1&max_wait_ms=soon", "max_wait_ms"),
        ("min_position=t:0", "min_position"),
        ("min_position=t:x:1", "min_position"),
        ("min_position=t:0:1,", "min_position"),
        ("min_position=t%20x:0:1", "min_position"),
        ("min_position=t:0:1&min_position=t:0:2", "min_position"),
        // A well-formed position of a topic this store never applied.
        ("min_position=refunds:0:1", "min_position"),
    ];
    for route in &routes {
        for (query, param) in refused {
            let (status, body, _) = server.get(&format!("{route}?{query}"), admin);
            assert_eq!(
                (status, body["error"]["code"].as_str(), body["error"]["param"].as_str()),
                (400, Some("invalid_parameter"), Some(param)),
                "{route}?{query}: {body}"
            );
        }
    }
    // Nobody waits, or learns about topics, without credentials.
    assert_eq!(server.get("/v1/refunds?min_position=refunds:0:1", None).0, 401);

    // A store filled by replay has applied nothing from Kafka: no position,
    // but the newest arrival, on every /v1 response, errors included.
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    for (path, expected) in
        [("/v1/refunds?limit=1", 200), ("/v1/status", 200), ("/v1/refunds/nope", 404), ("/v1/refunds?limit=0", 400)]
    {
        let response =
            agent.get(format!("{}{path}", server.base)).header("Authorization", "Api-Key secret-ops").call().unwrap();
        assert_eq!(response.status().as_u16(), expected, "{path}");
        assert!(response.headers().get("x-refunds-position").is_none(), "{path}");
        let at = response.headers().get("x-last-applied-at").map(|v| v.to_str().unwrap().to_owned());
        assert!(at.as_deref().is_some_and(|t| t.ends_with('Z') && t.len() == 24), "{path}: {at:?}");
    }
    let (_, status, _) = server.get("/v1/status", admin);
    assert_eq!(status["position"], Value::Null);
}

#[test]
fn openapi_json_is_served_and_documents_every_route() {
    let f = fixture();
    let server = Server::start(&f.db, &f.keys);
    let (status, served, _) = server.get("/openapi.json", None);
    assert_eq!(status, 200);
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(crate::helpers::repo_root().join("schemas/openapi.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(served, file);
    assert_eq!(served["openapi"], "3.1.0");
    let mut paths: Vec<&str> = served["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/admin/export",
            "/healthz",
            "/metrics",
            "/openapi.json",
            "/readyz",
            "/v1/refunds",
            "/v1/refunds/summary",
            "/v1/refunds/{id}",
            "/v1/refunds/{id}/events",
            "/v1/status"
        ]
    );
    // Every list parameter the server knows is documented, and no other.
    let documented: Vec<&str> = served["paths"]["/v1/refunds"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in &documented {
        let (status, body, _) = server.get(&format!("/v1/refunds?{name}=zzz"), Some("Api-Key secret-ops"));
        assert_ne!(body["error"]["code"], "unknown_parameter", "{name} is documented but unknown ({status})");
    }
    let (_, body, _) = server.get("/v1/refunds?undocumented=1", Some("Api-Key secret-ops"));
    assert_eq!(body["error"]["code"], "unknown_parameter");
}

#[test]
fn health_needs_no_credentials_and_status_reports_the_replay() {
    let f = fixture();
    let server = Server::start(&f.db, &f.keys);
    assert_eq!(server.get("/healthz", None).0, 200);
    assert_eq!(server.get("/readyz", None).0, 200);
    let (status, body, _) = server.get("/v1/status", Some("Api-Key secret-ops"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["refunds"].as_u64().unwrap(), f.refunds.len() as u64);
    let applied: u64 = f.refunds.iter().map(|r| r["event_count"].as_u64().unwrap()).sum();
    assert_eq!(body["events_applied"].as_u64().unwrap(), applied);
    assert!(body["events_duplicate"].as_u64().unwrap() > 0);
    assert_eq!(body["partitions"], Value::Array(vec![]));
    // A replayed store accepted no history gap; serve reads no topic.
    assert_eq!(body["history_gaps"], Value::Array(vec![]));
    assert_eq!(body["topic_settings"], Value::Null);
    assert!(body["store_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn metrics_are_prometheus_text_without_credentials_and_count_requests_by_route() {
    let f = fixture();
    let server = Server::start(&f.db, &f.keys);
    for _ in 0..3 {
        assert_eq!(server.get("/v1/refunds?limit=1", Some("Api-Key secret-ops")).0, 200);
    }
    assert_eq!(server.get("/v1/refunds/nope", Some("Api-Key secret-ops")).0, 404);
    let response = ureq::get(format!("{}/metrics", server.base)).call().expect("/metrics answers without credentials");
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.into_body().read_to_string().unwrap();
    let line = |prefix: &str| -> f64 {
        let found = text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
        found.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(line("refund_projector_http_requests_total{route=\"/v1/refunds\",status=\"200\"}"), 3.0);
    assert_eq!(line("refund_projector_http_requests_total{route=\"/v1/refunds/{id}\",status=\"404\"}"), 1.0);
    assert_eq!(line("refund_projector_refunds "), f.refunds.len() as f64);
    assert!(line("refund_projector_store_size_bytes ") > 0.0);
    assert!(text.contains("# TYPE refund_projector_http_request_duration_seconds histogram"), "{text}");
}

#[test]
fn admin_export_streams_one_snapshot_with_its_checkpoints_to_admins_only() {
    let f = fixture();
    let server = Server::start(&f.db, &f.keys);
    assert_eq!(server.get("/admin/export", None).0, 401);
    assert_eq!(server.get("/admin/export", Some("Api-Key secret-a")).0, 403);
    let response = ureq::get(format!("{}/admin/export", server.base))
        .header("Authorization", "Api-Key secret-ops")
        .call()
        .unwrap();
    let text = response.into_body().with_config().limit(1 << 30).read_to_string().unwrap();
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert!(header["checkpoints"].as_object().unwrap().keys().any(|k| k.starts_with("file:")), "{header}");
    let body: Vec<Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(body, f.refunds, "the rest is the export");
}

#[test]
fn json_logs_carry_one_span_per_request_with_route_status_tenant_and_key_id_and_never_the_secret() {
    let f = fixture();
    let mut child = command()
        .args(["--log-format", "json", "serve", "--db", f.db.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(["--api-keys", f.keys.to_str().unwrap()])
        .env("RUST_LOG", "info,refunds_api=debug")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok);
    let base = lines.by_ref().find_map(|l| l.strip_prefix("listening on ").map(str::to_owned)).unwrap();
    let server = Server { child, base };
    assert_eq!(server.get("/v1/refunds?limit=1", Some("Api-Key secret-a")).0, 200);
    assert_eq!(server.get("/v1/refunds?limit=1", Some("Api-Key wrong-secret")).0, 401);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 && Instant::now() < deadline {
        let Some(line) = lines.next() else { break };
        assert!(!line.contains("secret-a") && !line.contains("wrong-secret"), "a secret in the logs: {line}");
        let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
        if event["span"]["name"] == "request" {
            seen.push(event);
        }
    }
    assert_eq!(seen.len(), 2, "one request event each: {seen:?}");
    let ok = &seen[0]["span"];
    assert_eq!((&ok["route"], &ok["status"], &ok["key_id"]), (&json!("/v1/refunds"), &json!(200), &json!("tenant-a")));
    assert_eq!(ok["tenant"], json!(f.tenant_a));
    assert_eq!(seen[1]["span"]["status"], 401);
    assert!(seen[1]["span"].get("key_id").is_none(), "no key id for bad credentials");
}

#[test]
fn a_config_file_supplies_flags_the_command_line_does_not_and_a_typo_is_named() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("refund-projector.toml");
    std::fs::write(
        &config,
        format!(
            "db = {:?}\napi_keys = {:?}\nlisten = \"127.0.0.1:1\"\n",
            f.db.to_str().unwrap(),
            f.keys.to_str().unwrap()
        ),
    )
    .unwrap();
    // --listen on the command line beats the file's unusable port 1.
    let mut child = command()
        .args(["serve", "--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let first = BufReader::new(stderr).lines().map_while(Result::ok).find(|l| l.starts_with("listening on "));
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.is_some(), "serve started from the config file");

    std::fs::write(&config, "db = \"x.redb\"\nlisten_adress = \"127.0.0.1:0\"\n").unwrap();
    let output = command().args(["serve", "--config", config.to_str().unwrap()]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("listen_adress"), "the error names the bad key: {stderr}");
}

#[test]
fn sigterm_stops_the_server_promptly_and_closes_its_store() {
    let f = fixture();
    let mut server = Server::start(&f.db, &f.keys);
    assert_eq!(server.get("/healthz", None).0, 200);
    let pid = i32::try_from(server.child.id()).unwrap();
    let sent = send_sigterm(pid);
    assert!(sent, "SIGTERM was delivered");
    let started = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "graceful exit, got {status}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still running 10 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The store was closed: its next open needs no repair (which reads every
    // page: minutes on a big store). A killed server's store does.
    let reopen = |what: &str| {
        let out = command().args(["export", "--db", f.db.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "export after {what}");
        let repaired = String::from_utf8_lossy(&out.stderr).contains("not closed cleanly");
        (String::from_utf8(out.stdout).unwrap(), repaired)
    };
    let (after_sigterm, repaired) = reopen("SIGTERM");
    assert!(!repaired, "a server stopped by SIGTERM left its store to be repaired");
    let mut killed = Server::start(&f.db, &f.keys);
    assert_eq!(killed.get("/healthz", None).0, 200);
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let (after_kill, repaired) = reopen("SIGKILL");
    assert!(repaired, "the check must see a store left open");
    assert_eq!(after_kill, after_sigterm, "a repair loses nothing");
}

/// Sends SIGTERM with the `kill` command (the workspace forbids `unsafe`).
fn send_sigterm(pid: i32) -> bool {
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().is_ok_and(|s| s.success())
}

/// The binary turns transparent huge pages off for itself (see
/// `refunds_ingest::disable_transparent_huge_pages`); the kernel reports the
/// process flag as `THP_enabled` in /proc/PID/status.
#[cfg(target_os = "linux")]
#[test]
fn the_server_runs_without_transparent_huge_pages() {
    let f = fixture();
    let server = Server::start(&f.db, &f.keys);
    assert_eq!(server.get("/healthz", None).0, 200);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let flag = status.lines().find_map(|line| line.strip_prefix("THP_enabled:")).map(str::trim);
    assert_eq!(flag, Some("0"), "THP_enabled of the server process in:\n{status}");
}
