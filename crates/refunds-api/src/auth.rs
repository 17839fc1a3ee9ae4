//! Credentials: API keys from a TOML file, HS256 JWTs signed with shared
//! secrets, and RS256/ES256 JWTs from an identity provider's JWKS.
//!
//! Secrets are kept only as SHA-256 digests and compared in constant time;
//! neither a secret nor a token is ever logged or echoed (only key ids and JWT
//! subjects are). Accepted `Authorization` forms (scheme names in any case):
//! `Api-Key <secret>`, `Bearer <secret>`, `Bearer <JWT>`,
//! `Basic base64(<secret>:)` and `Basic base64(<key id>:<secret>)`.
//!
//! Rotation: the keys file is read again on demand ([`Auth::reload_keys`],
//! called by the binary on SIGHUP and when the file changes) and swapped in
//! whole, so a request sees the old key set or the new one, never a mix; a
//! file that no longer parses keeps the previous keys and is reported in
//! [`Auth::status_json`] and the `refund_projector_api_keys_reload_*`
//! metrics. Several JWT secrets may be accepted at once, and a JWKS is
//! fetched again periodically (by the binary) and on an unknown `kid`.
//!
//! JWTs are verified with the `jsonwebtoken` crate (its pure-Rust
//! `rust_crypto` backend: RustCrypto's `rsa`, `p256`, `hmac`, `sha2`, so
//! nothing to link and nothing native to build). It is the most used JWT
//! crate for Rust, maintained, and does the parts that are easy to get
//! subtly wrong by hand: JOSE header and base64url parsing, constant-time
//! HMAC comparison, PKCS#1 v1.5 and ECDSA verification, JWK decoding, and
//! `aud` as a string or an array. The known RSA timing advisory concerns
//! private-key operations, which this service never does (it only verifies
//! with public keys). Which key may verify which algorithm is decided in
//! [`jwt`], not left to the token.

mod jwt;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use self::jwt::{JwksSource, Refresh};
use self::jwt::{Verifier, now_ms, rfc3339};
use crate::error::ApiError;
use crate::params::Params;

/// Who is asking, after authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Key id or JWT subject; safe to log.
    pub name: String,
    /// `None` for `"*"`: every tenant.
    pub tenant: Option<String>,
    pub read: bool,
    pub admin: bool,
}

#[derive(Debug, Deserialize)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    secret_sha256: Option<String>,
    secret: Option<String>,
    tenant: String,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Debug, Clone)]
struct Key {
    id: String,
    digest: [u8; 32],
    tenant: Option<String>,
    read: bool,
    admin: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("failed to read the API keys file {path}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid API keys file {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("invalid JWT settings: {0}")]
    Jwt(String),
}

/// What the credentials are built from.
#[derive(Default)]
pub struct AuthParams {
    /// The API keys file, read now and again by [`Auth::reload_keys`].
    pub api_keys: Option<PathBuf>,
    /// Keys in the file's TOML form that are never reloaded (the demo's).
    pub fixed_keys: Option<String>,
    /// Secrets HS256 tokens may be signed with; any of them verifies.
    pub jwt_secrets: Vec<String>,
    /// Where RS256/ES256 keys come from.
    pub jwks: Option<JwksSource>,
    /// When set, a JWT's `iss` must equal it.
    pub jwt_issuer: Option<String>,
    /// When set, a JWT's `aud` (a string or an array) must contain it.
    pub jwt_audience: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct KeysState {
    /// UNIX ms of the last load that was swapped in.
    loaded_at_ms: Option<i64>,
    /// Why the file's current content is not in use; `None` when it is.
    error: Option<String>,
    /// The last error logged, so that one broken file is logged once.
    logged_error: Option<String>,
}

/// The configured credentials. Shared by every request; the key set and the
/// JWKS are replaced in place while serving.
pub struct Auth {
    keys: RwLock<Arc<Vec<Key>>>,
    fixed: Vec<Key>,
    keys_file: Option<PathBuf>,
    keys_state: Mutex<KeysState>,
    jwt: Verifier,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only: never a digest, a secret or a key.
        f.debug_struct("Auth").field("keys_file", &self.keys_file).finish_non_exhaustive()
    }
}

impl Auth {
    pub fn new(params: AuthParams) -> Result<Auth, AuthConfigError> {
        let fixed = match &params.fixed_keys {
            Some(text) => {
                parse_keys(text).map_err(|message| AuthConfigError::Invalid { path: "(built in)".into(), message })?
            }
            None => Vec::new(),
        };
        let from_file = match &params.api_keys {
            Some(path) => read_keys(path)?,
            None => Vec::new(),
        };
        let jwt = Verifier::new(&params.jwt_secrets, params.jwt_issuer, params.jwt_audience, params.jwks)
            .map_err(AuthConfigError::Jwt)?;
        let loaded_at_ms = params.api_keys.as_ref().map(|_| now_ms());
        Ok(Auth {
            keys: RwLock::new(Arc::new(from_file)),
            fixed,
            keys_file: params.api_keys,
            keys_state: Mutex::new(KeysState { loaded_at_ms, ..KeysState::default() }),
            jwt,
        })
    }

    /// Keys from `path`, HS256 JWTs with `jwt_secret`.
    pub fn load(path: &Path, jwt_secret: Option<&str>) -> Result<Auth, AuthConfigError> {
        Auth::new(AuthParams {
            api_keys: Some(path.to_path_buf()),
            jwt_secrets: jwt_secret.into_iter().map(str::to_owned).collect(),
            ..AuthParams::default()
        })
    }

    /// Fixed keys from TOML text, HS256 JWTs with `jwt_secret`.
    pub fn from_toml(text: &str, jwt_secret: Option<&str>) -> Result<Auth, String> {
        Auth::new(AuthParams {
            fixed_keys: Some(text.to_owned()),
            jwt_secrets: jwt_secret.into_iter().map(str::to_owned).collect(),
            ..AuthParams::default()
        })
        .map_err(|e| match e {
            AuthConfigError::Invalid { message, .. } => message,
            other => other.to_string(),
        })
    }

    /// The API keys file, when there is one.
    pub fn keys_file(&self) -> Option<&Path> {
        self.keys_file.as_deref()
    }

    /// Reads the keys file again and swaps its keys in whole. A file that
    /// cannot be read or parsed keeps the keys in use, and the problem is
    /// logged (once per distinct problem, or on every `reason` "SIGHUP":
    /// the operator asked), shown in `/v1/status` and counted in
    /// `refund_projector_api_keys_reload_errors_total`, with
    /// `refund_projector_api_keys_reload_failed` at 1 until a good file is
    /// read. Returns the number of keys loaded, or the problem.
    pub fn reload_keys(&self, reason: &str) -> Result<usize, String> {
        let Some(path) = &self.keys_file else {
            return Ok(0);
        };
        let result = read_keys(path);
        let mut state = self.keys_state.lock().unwrap_or_else(PoisonError::into_inner);
        let outcome = match result {
            Ok(keys) => {
                let count = keys.len();
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
                state.loaded_at_ms = Some(now_ms());
                state.error = None;
                state.logged_error = None;
                tracing::info!(path = %path.display(), keys = count, reason, "API keys reloaded");
                Ok(count)
            }
            Err(error) => {
                let message = error_text(&error);
                if state.logged_error.as_deref() != Some(message.as_str()) || reason == "SIGHUP" {
                    tracing::error!(error = %message, reason, "API keys not reloaded; the previous keys stay in use");
                    state.logged_error = Some(message.clone());
                }
                metrics::counter!("refund_projector_api_keys_reload_errors_total").increment(1);
                state.error = Some(message.clone());
                Err(message)
            }
        };
        publish_keys_metrics(&state, self.keys.read().unwrap_or_else(PoisonError::into_inner).len() + self.fixed.len());
        outcome
    }

    /// Sets the credential gauges (once the metrics recorder is installed).
    pub fn publish_metrics(&self) {
        let state = self.keys_state.lock().unwrap_or_else(PoisonError::into_inner);
        metrics::counter!("refund_projector_api_keys_reload_errors_total").increment(0);
        if self.jwt.jwks().is_some() {
            metrics::gauge!("refund_projector_jwks_keys").set(0.0);
        }
        publish_keys_metrics(&state, self.keys.read().unwrap_or_else(PoisonError::into_inner).len() + self.fixed.len());
    }

    /// Fetches the JWKS again (no-op without `--jwks`); whether its keys
    /// were replaced.
    pub fn refresh_jwks(&self, why: Refresh) -> bool {
        self.jwt.jwks().is_some_and(|jwks| jwks.refresh(why))
    }

    /// Whether the last JWKS fetch failed.
    pub fn jwks_failing(&self) -> bool {
        self.jwt.jwks().is_some_and(jwt::Jwks::failing)
    }

    /// Whether a JWKS is configured.
    pub fn has_jwks(&self) -> bool {
        self.jwt.jwks().is_some()
    }

    /// The `auth` object of `/v1/status`: when the keys were loaded, why the
    /// file on disk is not in use (never a secret: see [`error_text`]), and
    /// the JWKS's state.
    pub fn status_json(&self) -> serde_json::Value {
        let state = self.keys_state.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner).len() + self.fixed.len();
        serde_json::json!({
            "keys": keys,
            "keys_file": self.keys_file.as_ref().map(|p| p.display().to_string()),
            "keys_loaded_at": state.loaded_at_ms.map(rfc3339),
            "keys_reload_error": state.error,
            "jwt_secrets": self.jwt.secret_count(),
            "jwks": self.jwt.jwks().map(jwt::Jwks::status_json),
        })
    }

    /// Authenticates an `Authorization` header value.
    pub fn authenticate(&self, header: Option<&str>, now_unix: i64) -> Result<Caller, ApiError> {
        let header = header.ok_or_else(|| ApiError::unauthorized("credentials are required"))?;
        let (scheme, credentials) = header.trim().split_once(' ').ok_or_else(bad_credentials)?;
        let credentials = credentials.trim();
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner).clone();
        let keys = KeySet { file: &keys, fixed: &self.fixed };
        match scheme.to_ascii_lowercase().as_str() {
            "api-key" => keys.by_secret(credentials),
            "bearer" => match keys.by_secret(credentials) {
                Ok(caller) => Ok(caller),
                Err(_) if credentials.matches('.').count() == 2 => self.by_jwt(credentials, now_unix),
                Err(err) => Err(err),
            },
            "basic" => {
                let decoded = STANDARD.decode(credentials).map_err(|_| bad_credentials())?;
                let decoded = String::from_utf8(decoded).map_err(|_| bad_credentials())?;
                let (user, password) = decoded.split_once(':').ok_or_else(bad_credentials)?;
                if password.is_empty() {
                    return keys.by_secret(user);
                }
                let key = keys.iter().find(|k| k.id == user).ok_or_else(bad_credentials)?;
                if bool::from(key.digest.ct_eq(&sha256(password.as_bytes()))) {
                    Ok(key.caller())
                } else {
                    Err(bad_credentials())
                }
            }
            _ => Err(ApiError::unauthorized("unsupported authorization scheme")),
        }
    }

    fn by_jwt(&self, token: &str, now_unix: i64) -> Result<Caller, ApiError> {
        if !self.jwt.accepts_jwts() {
            return Err(ApiError::unauthorized("JWTs are not accepted here"));
        }
        let claims = self.jwt.verify(token, now_unix)?;
        let admin = claims.scope.split(' ').any(|s| s == "admin");
        let read = admin || claims.scope.split(' ').any(|s| s == "refunds:read");
        let name = claims.sub.unwrap_or_else(|| "jwt".to_owned());
        let tenant = (claims.tenant != "*").then_some(claims.tenant);
        Ok(Caller { name, tenant, read, admin })
    }
}

/// The keys a request is checked against: one snapshot of the file's, and
/// the fixed ones.
struct KeySet<'a> {
    file: &'a [Key],
    fixed: &'a [Key],
}

impl KeySet<'_> {
    fn iter(&self) -> impl Iterator<Item = &Key> {
        self.file.iter().chain(self.fixed)
    }

    fn by_secret(&self, secret: &str) -> Result<Caller, ApiError> {
        let digest = sha256(secret.as_bytes());
        // Compare against every key so the time does not depend on which matched.
        let mut found = None;
        for key in self.iter() {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        found.map(Key::caller).ok_or_else(bad_credentials)
    }
}

fn publish_keys_metrics(state: &KeysState, keys: usize) {
    metrics::gauge!("refund_projector_api_keys_reload_failed").set(if state.error.is_some() { 1.0 } else { 0.0 });
    metrics::gauge!("refund_projector_api_keys").set(keys as f64);
    if let Some(at) = state.loaded_at_ms {
        metrics::gauge!("refund_projector_api_keys_loaded_timestamp_seconds").set(at as f64 / 1000.0);
    }
}

fn read_keys(path: &Path) -> Result<Vec<Key>, AuthConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| AuthConfigError::Read { path: path.display().to_string(), source })?;
    parse_keys(&text).map_err(|message| AuthConfigError::Invalid { path: path.display().to_string(), message })
}

/// An error about the keys file, safe to log and show: a path, an I/O
/// error, or a parse error as [`toml_error`] renders it (never the file's
/// content, which may hold a secret).
fn error_text(error: &AuthConfigError) -> String {
    match error {
        AuthConfigError::Read { path, source } => format!("failed to read the API keys file {path}: {source}"),
        other => other.to_string(),
    }
}

fn parse_keys(text: &str) -> Result<Vec<Key>, String> {
    let file: KeysFile = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    let mut keys = Vec::with_capacity(file.keys.len());
    for entry in file.keys {
        let digest = match (&entry.secret_sha256, &entry.secret) {
            (Some(hex_digest), None) => {
                let bytes = hex::decode(hex_digest.trim())
                    .map_err(|_| format!("key {}: secret_sha256 is not hex", entry.id))?;
                <[u8; 32]>::try_from(bytes.as_slice())
                    .map_err(|_| format!("key {}: secret_sha256 must be 64 hex digits", entry.id))?
            }
            (None, Some(secret)) => sha256(secret.as_bytes()),
            _ => return Err(format!("key {}: give exactly one of secret_sha256 and secret", entry.id)),
        };
        let tenant = (entry.tenant != "*").then_some(entry.tenant);
        let admin = entry.scopes.iter().any(|s| s == "admin");
        let read = admin || entry.scopes.iter().any(|s| s == "refunds:read");
        keys.push(Key { id: entry.id, digest, tenant, read, admin });
    }
    Ok(keys)
}

/// `line L, column C: message`, without the source excerpt the TOML error's
/// `Display` adds (it would echo a secret on the broken line) and with
/// quoted values in the message elided.
fn toml_error(text: &str, error: &toml::de::Error) -> String {
    let mut message = String::with_capacity(error.message().len());
    let mut quoted = false;
    for c in error.message().chars() {
        if c == '"' {
            if quoted {
                message.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted {
            message.push(c);
        }
    }
    let message = message.trim().replace('\n', " ");
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

impl Caller {
    /// The tenant a request is confined to: the caller's own, or for a `"*"`
    /// caller the one named by `tenant_id`/`owner_id` (admin only), or `None`
    /// for every tenant. Naming another tenant than one's own is a 403.
    pub fn requested_tenant(&self, params: &Params) -> Result<Option<String>, ApiError> {
        let named = params.aliased("tenant_id")?;
        match (&self.tenant, named) {
            (Some(own), None) => Ok(Some(own.clone())),
            (Some(own), Some((_, tenant))) if tenant == own => Ok(Some(own.clone())),
            (Some(_), Some((param, _))) => Err(ApiError::Forbidden {
                message: "this key cannot read other tenants".into(),
                param: Some(param.into()),
            }),
            (None, Some((_, tenant))) if self.admin => Ok(Some(tenant.to_owned())),
            (None, Some((param, _))) => Err(ApiError::Forbidden {
                message: "filtering by tenant needs the admin scope".into(),
                param: Some(param.into()),
            }),
            (None, None) => Ok(None),
        }
    }
}

impl Key {
    fn caller(&self) -> Caller {
        Caller { name: self.id.clone(), tenant: self.tenant.clone(), read: self.read, admin: self.admin }
    }
}

fn bad_credentials() -> ApiError {
    ApiError::unauthorized("invalid credentials")
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hmac::{Hmac, Mac};

    use super::*;

    const KEYS: &str = r#"
        [[keys]]
        id = "dashboard"
        secret = "s3cret"
        tenant = "org_a"
        scopes = ["refunds:read"]

        [[keys]]
        id = "ops"
        secret_sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
        tenant = "*"
        scopes = ["refunds:read", "admin"]
    "#;

    fn auth() -> Auth {
        Auth::from_toml(KEYS, Some("jwt-secret")).unwrap()
    }

    fn jwt(claims: serde_json::Value, secret: &[u8]) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{header}.{payload}").as_bytes());
        format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn every_accepted_form_authenticates_the_same_key() {
        let auth = auth();
        let basic_secret = format!("Basic {}", STANDARD.encode("s3cret:"));
        let basic_id = format!("Basic {}", STANDARD.encode("dashboard:s3cret"));
        for header in ["Api-Key s3cret", "api-key s3cret", "Bearer s3cret", "BEARER s3cret", &basic_secret, &basic_id] {
            let caller = auth.authenticate(Some(header), 0).unwrap_or_else(|e| panic!("{header}: {e:?}"));
            assert_eq!(caller.name, "dashboard");
            assert_eq!(caller.tenant.as_deref(), Some("org_a"));
            assert!(caller.read && !caller.admin);
        }
        // "secret" hashes to the digest in the file.
        assert!(auth.authenticate(Some("Api-Key secret"), 0).unwrap().admin);
    }

    #[test]
    fn basic_with_one_keys_id_and_anothers_secret_is_refused() {
        let header = format!("Basic {}", STANDARD.encode("ops:s3cret"));
        assert!(matches!(auth().authenticate(Some(&header), 0), Err(ApiError::Unauthorized { .. })));
    }

    #[test]
    fn missing_unknown_and_malformed_credentials_are_refused() {
        let auth = auth();
        for header in [None, Some("Api-Key nope"), Some("Token s3cret"), Some("Bearer"), Some("Basic !!!")] {
            assert!(matches!(auth.authenticate(header, 0), Err(ApiError::Unauthorized { .. })), "{header:?}");
        }
    }

    #[test]
    fn a_valid_jwt_carries_tenant_scope_and_subject() {
        let token = jwt(
            serde_json::json!({"sub": "u1", "tenant_id": "org_b", "scope": "refunds:read", "exp": 1000}),
            b"jwt-secret",
        );
        let caller = auth().authenticate(Some(&format!("Bearer {token}")), 1000).unwrap();
        assert_eq!(caller, Caller { name: "u1".into(), tenant: Some("org_b".into()), read: true, admin: false });
    }

    #[test]
    fn jwts_that_are_expired_forged_incomplete_or_unconfigured_are_refused() {
        let claims = serde_json::json!({"tenant_id": "*", "scope": "admin", "exp": 1000});
        let good = format!("Bearer {}", jwt(claims.clone(), b"jwt-secret"));
        assert!(auth().authenticate(Some(&good), 1060).is_ok(), "60 s of leeway");
        assert!(auth().authenticate(Some(&good), 1061).is_err(), "expired");
        let forged = format!("Bearer {}", jwt(claims, b"other"));
        assert!(auth().authenticate(Some(&forged), 0).is_err());
        for missing in ["exp", "tenant_id", "scope"] {
            let mut claims = serde_json::json!({"tenant_id": "*", "scope": "admin", "exp": 1000});
            claims.as_object_mut().unwrap().remove(missing);
            let token = format!("Bearer {}", jwt(claims, b"jwt-secret"));
            assert!(auth().authenticate(Some(&token), 0).is_err(), "without {missing}");
        }
        let without_secret = Auth::from_toml(KEYS, None).unwrap();
        assert!(without_secret.authenticate(Some(&good), 0).is_err(), "no --jwt-secret, no JWTs");
    }

    fn jwt_with(header: &str, claims: &serde_json::Value, secret: &[u8]) -> String {
        let header = URL_SAFE_NO_PAD.encode(header);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{header}.{payload}").as_bytes());
        format!("Bearer {header}.{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    fn with_jwt(params: AuthParams) -> Auth {
        Auth::new(AuthParams { fixed_keys: Some(KEYS.to_owned()), ..params }).unwrap()
    }

    fn refused(auth: &Auth, header: &str, now: i64) -> bool {
        matches!(auth.authenticate(Some(header), now), Err(ApiError::Unauthorized { .. }))
    }

    #[test]
    fn nbf_is_honoured_with_the_same_leeway_as_exp() {
        let claims = serde_json::json!({"tenant_id": "*", "scope": "admin", "exp": 5000, "nbf": 1060});
        let token = format!("Bearer {}", jwt(claims, b"jwt-secret"));
        assert!(refused(&auth(), &token, 999), "more than 60 s before nbf");
        assert!(auth().authenticate(Some(&token), 1000).is_ok(), "60 s before nbf: within the leeway");
        assert!(auth().authenticate(Some(&token), 1060).is_ok());
        let fractional = serde_json::json!({"tenant_id": "*", "scope": "admin", "exp": 1000.9, "nbf": 10.5});
        let token = format!("Bearer {}", jwt(fractional, b"jwt-secret"));
        assert!(auth().authenticate(Some(&token), 1060).is_ok(), "NumericDate may have a fraction");
        assert!(refused(&auth(), &token, 1061));
        for bad in [serde_json::json!("1000"), serde_json::json!(null), serde_json::json!([1])] {
            let claims = serde_json::json!({"tenant_id": "*", "scope": "admin", "exp": 5000, "nbf": bad});
            assert!(refused(&auth(), &format!("Bearer {}", jwt(claims, b"jwt-secret")), 1000), "nbf {bad}");
        }
    }

    #[test]
    fn any_of_several_secrets_verifies_and_no_other_does() {
        let auth = with_jwt(AuthParams { jwt_secrets: vec!["old".into(), "new".into()], ..AuthParams::default() });
        let claims = serde_json::json!({"tenant_id": "*", "scope": "admin", "exp": 1000});
        for secret in [b"old".as_slice(), b"new"] {
            assert!(auth.authenticate(Some(&format!("Bearer {}", jwt(claims.clone(), secret))), 0).is_ok());
        }
        assert!(refused(&auth, &format!("Bearer {}", jwt(claims, b"other")), 0));
        assert!(Auth::new(AuthParams { jwt_secrets: vec![String::new()], ..AuthParams::default() }).is_err());
    }

    #[test]
    fn issuer_and_audience_when_set_must_match_and_aud_may_be_an_array() {
        let auth = with_jwt(AuthParams {
            jwt_secrets: vec!["s".into()],
            jwt_issuer: Some("https://idp".into()),
            jwt_audience: Some("refunds".into()),
            ..AuthParams::default()
        });
        let header = r#"{"alg":"HS256","typ":"JWT"}"#;
        let base = serde_json::json!({"tenant_id": "*", "scope": "admin", "exp": 1000, "iss": "https://idp"});
        let cases = [
            (serde_json::json!("refunds"), Some("https://idp"), true),
            (serde_json::json!(["x", "refunds"]), Some("https://idp"), true),
            (serde_json::json!(["x", "y"]), Some("https://idp"), false),
            (serde_json::json!("refunds-other"), Some("https://idp"), false),
            (serde_json::json!(null), Some("https://idp"), false),
            (serde_json::json!("refunds"), Some("https://idp/"), false),
            (serde_json::json!("refunds"), None, false),
        ];
        for (aud, iss, accepted) in cases {
            let mut claims = base.clone();
            match iss {
                Some(iss) => claims["iss"] = iss.into(),
                None => {
                    claims.as_object_mut().unwrap().remove("iss");
                }
            }
            if aud.is_null() {
                claims.as_object_mut().unwrap().remove("aud");
            } else {
                claims["aud"] = aud.clone();
            }
            let result = auth.authenticate(Some(&jwt_with(header, &claims, b"s")), 0);
            assert_eq!(result.is_ok(), accepted, "aud {aud}, iss {iss:?}: {result:?}");
        }
        // Without --jwt-audience a token's aud is not checked.
        let plain = with_jwt(AuthParams { jwt_secrets: vec!["s".into()], ..AuthParams::default() });
        let claims = serde_json::json!({"tenant_id": "*", "scope": "admin", "exp": 1000, "aud": "anything"});
        assert!(plain.authenticate(Some(&jwt_with(header, &claims, b"s")), 0).is_ok());
    }

    #[test]
    fn only_hs256_goes_to_the_secrets_and_none_or_other_algorithms_are_refused() {
        let auth = auth();
        let claims = serde_json::json!({"tenant_id": "*", "scope": "admin", "exp": 1000});
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"HS384","typ":"JWT"}"#,
            r#"{"alg":"RS256","typ":"JWT","kid":"k"}"#,
            r#"{"typ":"JWT"}"#,
        ] {
            assert!(refused(&auth, &jwt_with(header, &claims, b"jwt-secret"), 0), "{header}");
        }
        let unsigned = jwt_with(r#"{"alg":"none"}"#, &claims, b"");
        let unsigned = format!("{}.", unsigned.rsplit_once('.').unwrap().0);
        assert!(refused(&auth, &unsigned, 0));
    }

    /// RFC 7515 A.3's P-256 public key.
    const EC_JWK: &str = r#"{"kty":"EC","crv":"P-256","kid":"a3",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    fn counting_jwks(document: String) -> (Auth, Arc<std::sync::atomic::AtomicUsize>) {
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = fetches.clone();
        let source = JwksSource {
            label: "test".into(),
            fetch: Box::new(move || {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(document.clone())
            }),
        };
        (with_jwt(AuthParams { jwks: Some(source), ..AuthParams::default() }), fetches)
    }

    #[test]
    fn unknown_kids_fetch_the_jwks_at_most_once_a_minute_and_hs256_is_refused_without_secrets() {
        let (auth, fetches) = counting_jwks(format!(r#"{{"keys":[{EC_JWK}]}}"#));
        assert!(auth.refresh_jwks(Refresh::Start));
        assert_eq!(auth.status_json()["jwks"]["kids"], serde_json::json!(["a3"]));
        let claims = serde_json::json!({"tenant_id": "*", "scope": "admin", "exp": 1000});
        for i in 0..20 {
            let header = format!(r#"{{"alg":"ES256","kid":"random-{i}"}}"#);
            assert!(refused(&auth, &jwt_with(&header, &claims, b"x"), 0));
        }
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 2, "start, then one for the first unknown kid");
        // A known kid with a bad signature, an algorithm the key is not for.
        assert!(refused(&auth, &jwt_with(r#"{"alg":"ES256","kid":"a3"}"#, &claims, b"x"), 0));
        assert!(refused(&auth, &jwt_with(r#"{"alg":"RS256","kid":"a3"}"#, &claims, b"x"), 0));
        let hs = jwt_with(r#"{"alg":"HS256","kid":"a3"}"#, &claims, EC_JWK.as_bytes());
        assert!(refused(&auth, &hs, 0), "no secret configured: a JWK is never one");
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn a_jwks_without_usable_keys_or_unparsable_keeps_the_keys_it_had() {
        let (auth, _) = counting_jwks(
            r#"{"keys":[{"kty":"EC","crv":"P-384","kid":"p384","x":"AA","y":"AA"},{"kty":"oct","k":"c2VjcmV0","kid":"hmac"}]}"#
                .to_owned(),
        );
        assert!(!auth.refresh_jwks(Refresh::Start));
        let status = auth.status_json();
        assert!(status["jwks"]["error"].as_str().unwrap().contains("no usable"), "{status}");
        assert!(!status["jwks"]["error"].as_str().unwrap().contains("c2VjcmV0"), "{status}");
        assert!(auth.jwks_failing());
        let (auth, _) = counting_jwks("<html>".to_owned());
        assert!(!auth.refresh_jwks(Refresh::Start));
        assert!(auth.jwks_failing());
    }

    #[test]
    fn a_reloaded_file_replaces_the_keys_whole_and_a_broken_one_keeps_them_without_echoing_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, KEYS).unwrap();
        let auth = Auth::new(AuthParams { api_keys: Some(path.clone()), ..AuthParams::default() }).unwrap();
        assert!(auth.authenticate(Some("Api-Key s3cret"), 0).is_ok());
        std::fs::write(
            &path,
            "[[keys]]\nid = \"new\"\nsecret = \"fresh\"\ntenant = \"t\"\nscopes = [\"refunds:read\"]\n",
        )
        .unwrap();
        assert_eq!(auth.reload_keys("test"), Ok(1));
        assert!(refused(&auth, "Api-Key s3cret", 0), "the old set is gone whole");
        assert_eq!(auth.authenticate(Some("Api-Key fresh"), 0).unwrap().name, "new");

        for broken in [
            "[[keys]]\nid = \"x\"\nsecret = \"hunter2-unterminated\ntenant = \"*\"\n",
            "[[keys]]\nid = \"x\"\nsecret = \"hunter2\"\ntenant = \"*\"\nscopes = \"hunter2\"\n",
            "[[keys]]\nid = \"x\"\nsecret = \"hunter2\"\nsecret_sha256 = \"00\"\ntenant = \"*\"\n",
            "[[keys]]\nid = \"x\"\nsecret = \"hunter2\"\ntenant = \"*\"\nscope = [\"admin\"]\n",
        ] {
            std::fs::write(&path, broken).unwrap();
            let error = auth.reload_keys("test").unwrap_err();
            assert!(!error.contains("hunter2"), "{error}");
            assert_eq!(auth.status_json()["keys_reload_error"], error.as_str());
            assert!(auth.authenticate(Some("Api-Key fresh"), 0).is_ok(), "kept: {error}");
        }
        std::fs::remove_file(&path).unwrap();
        assert!(auth.reload_keys("test").is_err(), "a missing file keeps the keys too");
        assert!(auth.authenticate(Some("Api-Key fresh"), 0).is_ok());
        std::fs::write(&path, KEYS).unwrap();
        assert_eq!(auth.reload_keys("test"), Ok(2));
        assert_eq!(auth.status_json()["keys_reload_error"], serde_json::Value::Null);
    }

    #[test]
    fn a_toml_error_names_its_line_and_column() {
        let error = parse_keys("[[keys]]\nid = \"a\"\nsecret = 5\ntenant = \"*\"\n").unwrap_err();
        assert!(error.starts_with("line 3, column "), "{error}");
    }
}
