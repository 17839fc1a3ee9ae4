//! Credentials that change while `serve` runs: JWTs from a JWKS served by
//! the test on a loopback port (RSA and P-256 keys generated here, tokens
//! signed here), several `--jwt-secret`s, `nbf`, issuer and audience, and
//! an API keys file edited, broken, fixed and reloaded on SIGHUP.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::api::{Server, fixture};
use crate::helpers::command;

/// A signing key made for the test, with its public JWK.
pub struct TestKey {
    pub kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    pub jwk: Value,
}

impl TestKey {
    pub fn rsa(kid: &str) -> TestKey {
        use rsa::Generate;
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let private = rsa::PrivateKey::generate();
        let der = private.to_pkcs1_der().unwrap();
        let public = private.to_public_key();
        let jwk = json!({
            "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(public.n().to_be_bytes_trimmed_vartime()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_be_bytes_trimmed_vartime()),
        });
        TestKey { kid: kid.to_owned(), alg: Algorithm::RS256, encoding: EncodingKey::from_rsa_der(der.as_bytes()), jwk }
    }

    pub fn ec(kid: &str) -> TestKey {
        use p256::elliptic_curve::Generate;
        use p256::pkcs8::EncodePrivateKey;
        let secret = p256::SecretKey::generate();
        let der = secret.to_pkcs8_der().unwrap();
        let point = secret.public_key().to_sec1_bytes();
        assert_eq!(point.len(), 65, "an uncompressed P-256 point");
        // No "alg": the key type and curve decide (ES256).
        let jwk = json!({
            "kty": "EC", "kid": kid, "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        });
        TestKey { kid: kid.to_owned(), alg: Algorithm::ES256, encoding: EncodingKey::from_ec_der(der.as_bytes()), jwk }
    }

    /// A token with this key's algorithm and kid.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, Some(&self.kid), claims)
    }

    fn sign_as(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// A JWKS on a loopback port, counting the fetches.
pub struct JwksServer {
    pub url: String,
    body: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    pub fn start(keys: &[&TestKey]) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        let server =
            JwksServer { url, body: Arc::new(Mutex::new(String::new())), fetches: Arc::new(AtomicUsize::new(0)) };
        server.publish(keys);
        let (body, fetches) = (server.body.clone(), server.fetches.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                // The request line and headers, up to the blank line.
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                fetches.fetch_add(1, Ordering::SeqCst);
                let body = body.lock().unwrap().clone();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        server
    }

    /// Replaces the served key set.
    pub fn publish(&self, keys: &[&TestKey]) {
        let keys: Vec<&Value> = keys.iter().map(|k| &k.jwk).collect();
        *self.body.lock().unwrap() = json!({"keys": keys}).to_string();
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn now() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

/// Claims for every tenant with the admin scope, valid for an hour.
fn admin_claims() -> Value {
    json!({"sub": "svc", "tenant_id": "*", "scope": "refunds:read admin", "exp": now() + 3600,
           "iss": "https://idp.test", "aud": "refunds-api"})
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    if value.is_null() {
        claims.as_object_mut().unwrap().remove(key);
    } else {
        claims[key] = value;
    }
    claims
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The status of `GET /v1/refunds?limit=1` with `auth`.
fn status_with(server: &Server, auth: &str) -> u16 {
    let (status, body, challenge) = server.get("/v1/refunds?limit=1", Some(auth));
    if status == 401 {
        assert!(challenge.is_some(), "a 401 carries WWW-Authenticate: {body}");
    }
    status
}

/// Polls until `GET /v1/refunds` with `auth` answers `want`; the time it took.
fn wait_for_status(server: &Server, auth: &str, want: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got = status_with(server, auth);
        if got == want {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "still {got} (not {want}) after {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /metrics` as text.
fn metrics(server: &Server) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    agent.get(format!("{}/metrics", server.base())).call().unwrap().into_body().read_to_string().unwrap()
}

/// The value of an unlabelled sample in a Prometheus exposition.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn auth_status(server: &Server) -> Value {
    let (status, body, _) = server.get("/v1/status", Some("Api-Key secret-ops"));
    assert_eq!(status, 200, "{body}");
    body["auth"].clone()
}

#[test]
fn rs256_and_es256_tokens_from_a_jwks_url_are_checked_by_kid_issuer_audience_and_time() {
    let f = fixture();
    let (rsa, ec) = (TestKey::rsa("rsa-1"), TestKey::ec("ec-1"));
    let jwks = JwksServer::start(&[&rsa, &ec]);
    let server = Server::start_with(
        &f.db,
        &f.keys,
        &["--jwks", &jwks.url, "--jwt-issuer", "https://idp.test", "--jwt-audience", "refunds-api"],
    );
    let claims = admin_claims();
    assert_eq!(status_with(&server, &bearer(&rsa.sign(&claims))), 200, "RS256");
    assert_eq!(status_with(&server, &bearer(&ec.sign(&claims))), 200, "ES256");

    // A tenant's token sees only its tenant.
    let tenant = json!({"tenant_id": f.tenant_a, "scope": "refunds:read", "exp": now() + 60,
                        "iss": "https://idp.test", "aud": ["other", "refunds-api"]});
    let (status, body, _) = server.get("/v1/refunds?limit=1", Some(&bearer(&ec.sign(&tenant))));
    assert_eq!(status, 200, "aud as an array containing the audience: {body}");
    let own = f.refunds.iter().filter(|r| r["tenant_id"] == f.tenant_a.as_str()).count();
    assert_eq!(body["count"].as_u64(), Some(own as u64), "{body}");

    for (what, claims) in [
        ("wrong issuer", with(admin_claims(), "iss", json!("https://evil.test"))),
        ("no issuer", with(admin_claims(), "iss", Value::Null)),
        ("wrong audience", with(admin_claims(), "aud", json!("someone-else"))),
        ("audience array without ours", with(admin_claims(), "aud", json!(["a", "b"]))),
        ("no audience", with(admin_claims(), "aud", Value::Null)),
        ("expired beyond the leeway", with(admin_claims(), "exp", json!(now() - 120))),
        ("nbf beyond the leeway", with(admin_claims(), "nbf", json!(now() + 120))),
        ("no exp", with(admin_claims(), "exp", Value::Null)),
        ("no tenant_id", with(admin_claims(), "tenant_id", Value::Null)),
    ] {
        assert_eq!(status_with(&server, &bearer(&rsa.sign(&claims))), 401, "{what}");
    }
    let within_leeway = with(with(admin_claims(), "nbf", json!(now() + 30)), "exp", json!(now() - 30));
    assert_eq!(status_with(&server, &bearer(&rsa.sign(&within_leeway))), 200, "nbf and exp within 60 s of leeway");

    // The key decides the algorithm, not the token.
    let rs_with_ec_kid = rsa.sign_as(Algorithm::RS256, Some("ec-1"), &claims);
    assert_eq!(status_with(&server, &bearer(&rs_with_ec_kid)), 401, "RS256 naming a P-256 key");
    let es_with_rsa_kid = ec.sign_as(Algorithm::ES256, Some("rsa-1"), &claims);
    assert_eq!(status_with(&server, &bearer(&es_with_rsa_kid)), 401, "ES256 naming an RSA key");
    // HS256 keyed with the RSA key's public modulus: no secret is configured,
    // and a JWK never serves as one.
    let n = rsa.jwk["n"].as_str().unwrap().to_owned();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".to_owned());
    let confused = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(n.as_bytes()).unwrap()).unwrap();
    assert_eq!(status_with(&server, &bearer(&confused)), 401, "HS256 with a public key as the secret");
    // alg none, with the payload of a good token.
    let good = rsa.sign(&claims);
    let payload = good.split('.').nth(1).unwrap();
    let none = format!("{}.{payload}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#));
    assert_eq!(status_with(&server, &bearer(&none)), 401, "alg none");
    // A forged signature: another key's, under this kid.
    let impostor = TestKey::rsa("rsa-1");
    assert_eq!(status_with(&server, &bearer(&impostor.sign(&claims))), 401, "signed by another key");

    let auth = auth_status(&server);
    assert_eq!(auth["jwks"]["kids"], json!(["ec-1", "rsa-1"]), "{auth}");
    assert_eq!(auth["jwks"]["error"], Value::Null, "{auth}");
    assert_eq!(auth["jwks"]["source"], jwks.url.as_str(), "{auth}");
}

#[test]
fn a_jwks_rotation_is_followed_by_the_periodic_refresh() {
    let f = fixture();
    let (old, new) = (TestKey::rsa("2026-01"), TestKey::ec("2026-02"));
    let jwks = JwksServer::start(&[&old]);
    let server = Server::start_with(&f.db, &f.keys, &["--jwks", &jwks.url, "--jwks-refresh-secs", "1"]);
    let claims = with(with(admin_claims(), "iss", Value::Null), "aud", Value::Null);
    let (old_token, new_token) = (bearer(&old.sign(&claims)), bearer(&new.sign(&claims)));
    assert_eq!(status_with(&server, &old_token), 200);
    // The provider publishes the next key beside the current one, then
    // retires the current one.
    jwks.publish(&[&old, &new]);
    wait_for_status(&server, &new_token, 200, Duration::from_secs(5));
    assert_eq!(status_with(&server, &old_token), 200, "both keys during the overlap");
    jwks.publish(&[&new]);
    wait_for_status(&server, &old_token, 401, Duration::from_secs(5));
    assert_eq!(status_with(&server, &new_token), 200);
    assert_eq!(auth_status(&server)["jwks"]["kids"], json!(["2026-02"]));
}

#[test]
fn an_unknown_kid_fetches_the_jwks_again_but_a_flood_of_them_at_most_once_a_minute() {
    let f = fixture();
    let (first, second, third) = (TestKey::rsa("k1"), TestKey::ec("k2"), TestKey::ec("k3"));
    let jwks = JwksServer::start(&[&first]);
    let server = Server::start_with(&f.db, &f.keys, &["--jwks", &jwks.url]);
    let claims = with(with(admin_claims(), "iss", Value::Null), "aud", Value::Null);
    assert_eq!(status_with(&server, &bearer(&first.sign(&claims))), 200);
    assert_eq!(jwks.fetches(), 1, "fetched once at start");
    // A key published after the start is fetched on its first token.
    jwks.publish(&[&first, &second]);
    assert_eq!(status_with(&server, &bearer(&second.sign(&claims))), 200, "new kid, fetched on demand");
    assert_eq!(jwks.fetches(), 2);
    // Random kids: refused, and no more fetches within the minute.
    for i in 0..100 {
        let token = second.sign_as(Algorithm::ES256, Some(&format!("random-{i}")), &claims);
        assert_eq!(status_with(&server, &bearer(&token)), 401);
    }
    jwks.publish(&[&first, &second, &third]);
    assert_eq!(status_with(&server, &bearer(&third.sign(&claims))), 401, "within the minute, k3 waits");
    assert_eq!(jwks.fetches(), 2, "a flood of unknown kids fetched nothing more");
    assert_eq!(status_with(&server, &bearer(&first.sign(&claims))), 200, "known keys still work");
}

#[test]
fn a_jwks_that_cannot_be_fetched_at_start_is_reported_and_api_keys_still_work_then_a_file_is_followed() {
    let f = fixture();
    // A port that was just free: nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let server = Server::start_with(&f.db, &f.keys, &["--jwks", &format!("http://user:pw@{closed}/jwks?token=t")]);
    assert_eq!(status_with(&server, "Api-Key secret-ops"), 200, "API keys work without the JWKS");
    let auth = auth_status(&server);
    assert!(auth["jwks"]["error"].is_string(), "{auth}");
    assert_eq!(auth["jwks"]["source"], format!("http://{closed}/jwks"), "no credentials shown: {auth}");
    assert!(!auth.to_string().contains("pw") && !auth.to_string().contains("token=t"), "{auth}");
    assert_eq!(sample(&metrics(&server), "refund_projector_jwks_refresh_failed"), Some(1.0));
    let key = TestKey::ec("file-1");
    let claims = with(with(admin_claims(), "iss", Value::Null), "aud", Value::Null);
    assert_eq!(status_with(&server, &bearer(&key.sign(&claims))), 401);
    drop(server);

    // A JWKS file is read at start and again when it changes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, json!({"keys": [key.jwk]}).to_string()).unwrap();
    let server = Server::start_with(&f.db, &f.keys, &["--jwks", path.to_str().unwrap()]);
    assert_eq!(status_with(&server, &bearer(&key.sign(&claims))), 200);
    let next = TestKey::rsa("file-2");
    std::fs::write(&path, json!({"keys": [next.jwk]}).to_string()).unwrap();
    wait_for_status(&server, &bearer(&key.sign(&claims)), 401, Duration::from_secs(5));
    assert_eq!(status_with(&server, &bearer(&next.sign(&claims))), 200);
}

fn hs256(claims: &Value, secret: &str) -> String {
    bearer(
        &jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap(),
    )
}

#[test]
fn every_configured_jwt_secret_is_accepted_from_flags_environment_or_config_file_and_no_other() {
    let f = fixture();
    let claims = json!({"sub": "u", "tenant_id": "*", "scope": "admin", "exp": now() + 600});
    let check = |server: &Server| {
        assert_eq!(status_with(server, &hs256(&claims, "secret-one")), 200, "the first secret");
        assert_eq!(status_with(server, &hs256(&claims, "secret-two")), 200, "the second secret");
        assert_eq!(status_with(server, &hs256(&claims, "secret-three")), 401, "a secret not configured");
        let future = with(claims.clone(), "nbf", json!(now() + 120));
        assert_eq!(status_with(server, &hs256(&future, "secret-one")), 401, "nbf in the future");
        let soon = with(claims.clone(), "nbf", json!(now() + 30));
        assert_eq!(status_with(server, &hs256(&soon, "secret-two")), 200, "nbf within the leeway");
    };
    let flags = Server::start_with(&f.db, &f.keys, &["--jwt-secret", "secret-one", "--jwt-secret", "secret-two"]);
    check(&flags);
    assert_eq!(auth_status(&flags)["jwt_secrets"], 2);
    drop(flags);

    let mut cmd = Server::command(&f.db, &f.keys);
    cmd.env("REFUND_PROJECTOR_JWT_SECRET", "secret-one,secret-two");
    let env = Server::spawn(cmd);
    check(&env);
    drop(env);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "jwt_secret = [\"secret-one\", \"secret-two\"]\n").unwrap();
    let mut cmd = Server::command(&f.db, &f.keys);
    cmd.args(["--config", config.to_str().unwrap()]);
    let file = Server::spawn(cmd);
    check(&file);
}

const KEYS_V1: &str = r#"
[[keys]]
id = "ops"
secret = "secret-ops"
tenant = "*"
scopes = ["refunds:read", "admin"]

[[keys]]
id = "dashboard"
secret = "secret-dash"
tenant = "*"
scopes = ["refunds:read"]
"#;

#[test]
fn a_key_removed_from_the_file_is_refused_within_seconds_and_a_broken_file_keeps_the_keys_until_fixed() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, KEYS_V1).unwrap();
    let server = Server::start(&f.db, &keys);
    assert_eq!(status_with(&server, "Api-Key secret-dash"), 200);
    let loaded_at = auth_status(&server)["keys_loaded_at"].clone();
    assert!(loaded_at.is_string(), "{loaded_at}");

    // Revoke "dashboard" by editing the file in place.
    let revoked = KEYS_V1.split("[[keys]]\nid = \"dashboard\"").next().unwrap().to_owned();
    std::fs::write(&keys, &revoked).unwrap();
    let took = wait_for_status(&server, "Api-Key secret-dash", 401, Duration::from_secs(5));
    eprintln!("revoked within {took:?}");
    assert_eq!(status_with(&server, "Api-Key secret-ops"), 200);
    let auth = auth_status(&server);
    assert_eq!(auth["keys_reload_error"], Value::Null, "{auth}");
    assert_ne!(auth["keys_loaded_at"], loaded_at, "{auth}");

    // A broken file: an unterminated string holding a secret.
    std::fs::write(
        &keys,
        format!("{revoked}\n[[keys]]\nid = \"new\"\nsecret = \"leaky-secret-value\ntenant = \"*\"\n"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let auth = loop {
        let auth = auth_status(&server);
        if auth["keys_reload_error"].is_string() {
            break auth;
        }
        assert!(Instant::now() < deadline, "the broken file is not reported: {auth}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let error = auth["keys_reload_error"].as_str().unwrap();
    assert!(error.contains("line"), "names the place: {error}");
    assert!(!error.contains("leaky"), "never the secret: {error}");
    assert_eq!(status_with(&server, "Api-Key secret-ops"), 200, "the previous keys stay in use");
    assert_eq!(status_with(&server, "Api-Key secret-dash"), 401, "and the revocation with them");
    let exposition = metrics(&server);
    assert_eq!(sample(&exposition, "refund_projector_api_keys_reload_failed"), Some(1.0), "{exposition}");
    assert!(sample(&exposition, "refund_projector_api_keys_reload_errors_total").is_some_and(|n| n >= 1.0));
    assert!(!exposition.contains("leaky"));

    // Fixed: the new key works and the error clears.
    std::fs::write(
        &keys,
        format!(
            "{revoked}\n[[keys]]\nid = \"new\"\nsecret = \"secret-new\"\ntenant = \"*\"\nscopes = [\"refunds:read\"]\n"
        ),
    )
    .unwrap();
    wait_for_status(&server, "Api-Key secret-new", 200, Duration::from_secs(5));
    assert_eq!(auth_status(&server)["keys_reload_error"], Value::Null);
    assert_eq!(sample(&metrics(&server), "refund_projector_api_keys_reload_failed"), Some(0.0));
}

#[test]
fn sighup_reloads_the_keys_file_and_the_server_keeps_serving() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, KEYS_V1).unwrap();
    let server = Server::start(&f.db, &keys);
    assert_eq!(status_with(&server, "Api-Key secret-dash"), 200);
    // Same length, same inode, same modification time: only SIGHUP can
    // tell the server the content changed.
    let modified = std::fs::metadata(&keys).unwrap().modified().unwrap();
    let rotated = KEYS_V1.replace("secret-dash", "secret-DASH");
    assert_eq!(rotated.len(), KEYS_V1.len());
    {
        let mut file = std::fs::OpenOptions::new().write(true).open(&keys).unwrap();
        file.write_all(rotated.as_bytes()).unwrap();
        file.set_modified(modified).unwrap();
    }
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(status_with(&server, "Api-Key secret-dash"), 200, "no change seen without SIGHUP");
    let sent = std::process::Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().unwrap();
    assert!(sent.success());
    wait_for_status(&server, "Api-Key secret-dash", 401, Duration::from_secs(5));
    assert_eq!(status_with(&server, "Api-Key secret-DASH"), 200);
    // Still alive after a second SIGHUP.
    let sent = std::process::Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().unwrap();
    assert!(sent.success());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status_with(&server, "Api-Key secret-ops"), 200);
}

#[test]
fn credential_problems_are_logged_without_a_secret_a_token_or_a_urls_credentials() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, KEYS_V1).unwrap();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut child = command()
        .args([
            "serve",
            "--db",
            f.db.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--api-keys",
            keys.to_str().unwrap(),
        ])
        .args(["--jwks", &format!("http://idp-user:idp-password@{closed}/jwks?access_token=query-secret")])
        .args(["--log-format", "json"])
        .env("REFUND_PROJECTOR_JWT_SECRET", "hs-secret-one,hs-secret-two")
        .env("RUST_LOG", "info,refunds_api=debug")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("serve printed its address").unwrap();
        log.lock().unwrap().push(line.clone());
        if let Some(address) = line.strip_prefix("listening on ") {
            break address.trim().to_owned();
        }
    };
    let sink = log.clone();
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| sink.lock().unwrap().push(l)));
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let call = |authorization: &str| -> u16 {
        let response = agent.get(format!("{base}/v1/refunds?limit=1")).header("Authorization", authorization).call();
        response.unwrap().status().as_u16()
    };
    let claims = json!({"sub": "svc-logged", "tenant_id": "*", "scope": "refunds:read", "exp": now() + 600});
    let good = hs256(&claims, "hs-secret-two");
    assert_eq!(call(&good), 200);
    let forged = hs256(&claims, "hs-guess");
    assert_eq!(call(&forged), 401);
    let unknown_kid = TestKey::ec("nobody").sign(&claims);
    assert_eq!(call(&bearer(&unknown_kid)), 401);
    assert_eq!(call("Api-Key secret-dash"), 200);
    assert_eq!(call("Api-Key not-a-key"), 401);
    std::fs::write(&keys, "[[keys]]\nid = \"x\"\nsecret = \"file-secret-value\ntenant = \"*\"\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let sent = std::process::Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    std::thread::sleep(Duration::from_millis(500));
    let _ = child.kill();
    let _ = child.wait();
    let log = log.lock().unwrap().join("\n");
    assert!(log.contains("API keys not reloaded"), "the broken file is logged:\n{log}");
    assert!(log.contains("JWKS refresh failed"), "the failing JWKS is logged:\n{log}");
    assert!(log.contains("svc-logged"), "the JWT's subject is logged:\n{log}");
    for secret in [
        "hs-secret-one",
        "hs-secret-two",
        "hs-guess",
        "secret-dash",
        "not-a-key",
        "file-secret-value",
        "idp-password",
        "idp-user",
        "query-secret",
        good.trim_start_matches("Bearer "),
        forged.trim_start_matches("Bearer "),
        unknown_kid.as_str(),
    ] {
        assert!(!log.contains(secret), "{secret} appears in the log:\n{log}");
    }
}
