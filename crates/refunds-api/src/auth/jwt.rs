//! JWT verification: HS256 with shared secrets, RS256 and ES256 with the
//! keys of a JWKS (an identity provider's), the key chosen by the token's
//! `kid`.
//!
//! Signatures, the JOSE header, JWK decoding and `iss`/`aud` are the
//! `jsonwebtoken` crate's work (see the parent module for why that crate);
//! `exp` and `nbf` are checked here against the caller's clock so that the
//! 60 s leeway boundaries are the same everywhere and testable.
//!
//! Which key may verify which token is decided here, before the crate sees
//! the token: an HS256 token is tried only against the `--jwt-secret`s, an
//! RS256/ES256 token only against the JWKS key its `kid` names, and only when
//! that key is of the token's algorithm (an RSA key for RS256, a P-256 key
//! for ES256, and the JWK's own `alg` when it states one). `alg: none` and
//! every other algorithm are refused. So no public key ever serves as an
//! HMAC secret, and no secret as a public key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// Leeway on `exp` and `nbf`, in seconds: clocks of issuers and of this
/// service may disagree by this much.
pub const JWT_LEEWAY_SECONDS: i64 = 60;

/// An unknown `kid` fetches the JWKS again at most this often: a flood of
/// tokens naming random keys must not become a flood of fetches.
pub const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(60);

/// Where the JWKS comes from: a fetch (a file read or an HTTP GET) returning
/// the document's text, and a label for logs and `/v1/status` (a path, or a
/// URL without credentials or query string).
pub struct JwksSource {
    pub label: String,
    pub fetch: Box<dyn Fn() -> Result<String, String> + Send + Sync>,
}

/// A key of the JWKS, with the one algorithm it verifies.
struct KeyOfSet {
    key: DecodingKey,
    alg: Algorithm,
}

/// The JWKS as last fetched, keyed by `kid` (`None`: a key without a kid,
/// for tokens without one).
type KeyMap = HashMap<Option<String>, KeyOfSet>;

#[derive(Debug, Clone, Default)]
struct JwksState {
    /// UNIX ms of the last fetch that replaced the keys.
    refreshed_at_ms: Option<i64>,
    /// UNIX ms of the last fetch, whatever its outcome.
    attempted_at_ms: Option<i64>,
    /// Why the last fetch was not used; `None` after a good one.
    error: Option<String>,
    kids: Vec<String>,
    fetches: u64,
    /// The last error logged, so that a fetch failing the same way every
    /// retry is logged once.
    logged_error: Option<String>,
}

pub struct Jwks {
    source: JwksSource,
    keys: RwLock<Arc<KeyMap>>,
    state: Mutex<JwksState>,
    /// When an unknown `kid` last caused a fetch.
    unknown_kid_fetch: Mutex<Option<Instant>>,
    /// Serializes fetches (periodic, file change, unknown kid).
    fetching: Mutex<()>,
}

/// Why a fetch was made, for logs.
#[derive(Debug, Clone, Copy)]
pub enum Refresh {
    Start,
    Hangup,
    Periodic,
    Changed,
    UnknownKid,
}

impl Refresh {
    fn as_str(self) -> &'static str {
        match self {
            Refresh::Start => "start",
            Refresh::Hangup => "SIGHUP",
            Refresh::Periodic => "periodic",
            Refresh::Changed => "changed",
            Refresh::UnknownKid => "unknown kid",
        }
    }
}

impl Jwks {
    pub fn new(source: JwksSource) -> Jwks {
        Jwks {
            source,
            keys: RwLock::new(Arc::new(HashMap::new())),
            state: Mutex::new(JwksState::default()),
            unknown_kid_fetch: Mutex::new(None),
            fetching: Mutex::new(()),
        }
    }

    fn key(&self, kid: Option<&str>) -> Option<(DecodingKey, Algorithm)> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner).clone();
        keys.get(&kid.map(str::to_owned)).map(|k| (k.key.clone(), k.alg))
    }

    /// Fetches and parses the JWKS; replaces the keys when it holds at least
    /// one usable key. A failed fetch, or a document without a usable key,
    /// keeps the keys it had (an identity provider's outage or a bad deploy
    /// must not lock every caller out) and records why. Returns whether the
    /// keys were replaced.
    pub fn refresh(&self, why: Refresh) -> bool {
        let _one_at_a_time = self.fetching.lock().unwrap_or_else(PoisonError::into_inner);
        let fetched = (self.source.fetch)().and_then(|text| parse_jwks(&text));
        metrics::counter!("refund_projector_jwks_fetches_total", "outcome" => if fetched.is_ok() { "ok" } else { "error" })
            .increment(1);
        let now = now_ms();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.fetches += 1;
        state.attempted_at_ms = Some(now);
        let replaced = match fetched {
            Ok((keys, skipped)) => {
                let mut kids: Vec<String> = keys.keys().map(|k| k.clone().unwrap_or_default()).collect();
                kids.sort();
                if kids != state.kids || state.error.is_some() || matches!(why, Refresh::Start | Refresh::Hangup) {
                    tracing::info!(source = %self.source.label, kids = ?kids, skipped = ?skipped, why = why.as_str(), "JWKS loaded");
                }
                metrics::gauge!("refund_projector_jwks_keys").set(keys.len() as f64);
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
                state.kids = kids;
                state.refreshed_at_ms = Some(now);
                state.error = None;
                state.logged_error = None;
                true
            }
            Err(error) => {
                if state.logged_error.as_deref() != Some(error.as_str()) {
                    tracing::error!(source = %self.source.label, %error, why = why.as_str(), "JWKS refresh failed; keeping the keys it had");
                    state.logged_error = Some(error.clone());
                }
                state.error = Some(error);
                false
            }
        };
        metrics::gauge!("refund_projector_jwks_refresh_failed").set(if state.error.is_some() { 1.0 } else { 0.0 });
        if let Some(at) = state.refreshed_at_ms {
            metrics::gauge!("refund_projector_jwks_refreshed_timestamp_seconds").set(at as f64 / 1000.0);
        }
        replaced
    }

    /// Whether the last fetch failed (the refresher retries sooner then).
    pub fn failing(&self) -> bool {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).error.is_some()
    }

    /// For a token naming a key the set lacks: fetch again, unless an
    /// unknown kid already did within [`UNKNOWN_KID_REFETCH`].
    fn refresh_for_unknown_kid(&self) -> bool {
        {
            let mut last = self.unknown_kid_fetch.lock().unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < UNKNOWN_KID_REFETCH) {
                return false;
            }
            *last = Some(Instant::now());
        }
        // The fetch blocks (a file read, or an HTTP GET with a timeout); on
        // the multi-threaded runtime the worker is handed over meanwhile.
        let in_multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if in_multi_thread {
            tokio::task::block_in_place(|| self.refresh(Refresh::UnknownKid))
        } else {
            self.refresh(Refresh::UnknownKid)
        }
    }

    pub fn status_json(&self) -> Value {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner).clone();
        json!({
            "source": self.source.label,
            "kids": state.kids,
            "refreshed_at": state.refreshed_at_ms.map(rfc3339),
            "attempted_at": state.attempted_at_ms.map(rfc3339),
            "fetches": state.fetches,
            "error": state.error,
        })
    }
}

/// Parses a JWKS document into the keys this service can use, and the
/// kids of those it skips (other key types, curves or algorithms,
/// encryption keys), so that one exotic key does not void the set.
fn parse_jwks(text: &str) -> Result<(KeyMap, Vec<String>), String> {
    let document: Value = serde_json::from_str(text).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
    let Some(entries) = document.get("keys").and_then(Value::as_array) else {
        return Err("the JWKS has no \"keys\" array".to_owned());
    };
    let mut keys = KeyMap::new();
    let mut skipped = Vec::new();
    for entry in entries {
        let kid = entry.get("kid").and_then(Value::as_str).map(str::to_owned);
        match usable_key(entry) {
            Some(key) => {
                keys.insert(kid, key);
            }
            None => skipped.push(kid.unwrap_or_default()),
        }
    }
    if keys.is_empty() {
        return Err(format!("the JWKS has no usable RS256 or ES256 (P-256) signing key ({} skipped)", skipped.len()));
    }
    Ok((keys, skipped))
}

fn usable_key(entry: &Value) -> Option<KeyOfSet> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).ok()?;
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(params) if params.curve == EllipticCurve::P256 => Algorithm::ES256,
        _ => return None,
    };
    let stated_ok = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(_) => false,
    };
    if !stated_ok {
        return None;
    }
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(KeyOfSet { key, alg })
}

/// The accepted JWTs.
pub struct Verifier {
    secrets: Vec<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    jwks: Option<Jwks>,
}

/// What a verified token says.
#[derive(Debug, PartialEq, Eq)]
pub struct Claims {
    pub sub: Option<String>,
    pub tenant: String,
    pub scope: String,
}

impl Verifier {
    pub fn new(
        secrets: &[String],
        issuer: Option<String>,
        audience: Option<String>,
        jwks: Option<JwksSource>,
    ) -> Result<Verifier, String> {
        let mut keys = Vec::with_capacity(secrets.len());
        for secret in secrets {
            if secret.is_empty() {
                return Err("an empty --jwt-secret would let anyone sign tokens".to_owned());
            }
            keys.push(DecodingKey::from_secret(secret.as_bytes()).map_err(|e| format!("--jwt-secret: {e}"))?);
        }
        Ok(Verifier { secrets: keys, issuer, audience, jwks: jwks.map(Jwks::new) })
    }

    pub fn jwks(&self) -> Option<&Jwks> {
        self.jwks.as_ref()
    }

    pub fn secret_count(&self) -> usize {
        self.secrets.len()
    }

    pub fn accepts_jwts(&self) -> bool {
        !self.secrets.is_empty() || self.jwks.is_some()
    }

    /// Verifies `token` at `now_unix` (seconds).
    pub fn verify(&self, token: &str, now_unix: i64) -> Result<Claims, ApiError> {
        // An unparsable header, or an `alg` the crate does not know (`none`
        // among them), ends here.
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        let claims = match header.alg {
            Algorithm::HS256 => {
                if self.secrets.is_empty() {
                    return Err(ApiError::unauthorized("HS256 JWTs are not accepted here"));
                }
                // Any configured secret may have signed it (rotation). A
                // signature that fails is tried against the next one; any
                // other failure (issuer, audience, shape) is the token's.
                let validation = self.validation(Algorithm::HS256);
                let mut result = Err(invalid());
                for secret in &self.secrets {
                    match jsonwebtoken::decode::<Map<String, Value>>(token, secret, &validation) {
                        Ok(data) => {
                            result = Ok(data.claims);
                            break;
                        }
                        Err(e) if *e.kind() == ErrorKind::InvalidSignature => {}
                        Err(e) => {
                            result = Err(refusal(e.kind()));
                            break;
                        }
                    }
                }
                result?
            }
            Algorithm::RS256 | Algorithm::ES256 => {
                let jwks = self
                    .jwks
                    .as_ref()
                    .ok_or_else(|| ApiError::unauthorized("RS256 and ES256 JWTs are not accepted here"))?;
                let kid = header.kid.as_deref();
                let (key, alg) = match jwks.key(kid) {
                    Some(found) => found,
                    None => {
                        jwks.refresh_for_unknown_kid();
                        jwks.key(kid)
                            .ok_or_else(|| ApiError::unauthorized("the token's signing key (kid) is unknown"))?
                    }
                };
                if alg != header.alg {
                    return Err(ApiError::unauthorized("the token's algorithm does not match its key"));
                }
                jsonwebtoken::decode::<Map<String, Value>>(token, &key, &self.validation(alg))
                    .map_err(|e| refusal(e.kind()))?
                    .claims
            }
            _ => return Err(ApiError::unauthorized("the token's algorithm is not accepted")),
        };
        check_claims(&claims, now_unix)
    }

    /// The crate checks the signature, `iss` and `aud`; `exp` and `nbf`
    /// are [`check_claims`]'s.
    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        match &self.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                validation.required_spec_claims.insert("iss".to_owned());
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            // Without --jwt-audience a token's `aud` is not checked (the
            // crate would otherwise refuse every token that has one).
            None => validation.validate_aud = false,
        }
        validation
    }
}

/// `exp` (required) and `nbf` (when present) with [`JWT_LEEWAY_SECONDS`];
/// `tenant_id` and `scope` required strings; `sub` optional.
pub fn check_claims(claims: &Map<String, Value>, now_unix: i64) -> Result<Claims, ApiError> {
    let exp = numeric_date(claims, "exp")?.ok_or_else(|| ApiError::unauthorized("the token has no exp"))?;
    if exp + JWT_LEEWAY_SECONDS < now_unix {
        return Err(ApiError::unauthorized("the token has expired"));
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && nbf - JWT_LEEWAY_SECONDS > now_unix
    {
        return Err(ApiError::unauthorized("the token is not valid yet (nbf)"));
    }
    let tenant = claims.get("tenant_id").and_then(Value::as_str).ok_or_else(invalid)?;
    let scope = claims.get("scope").and_then(Value::as_str).ok_or_else(invalid)?;
    let sub = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
    Ok(Claims { sub, tenant: tenant.to_owned(), scope: scope.to_owned() })
}

/// A NumericDate claim, in whole seconds (a fraction is dropped); a
/// present value that is not a number is an invalid token.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, ApiError> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => {
            if let Some(seconds) = value.as_i64() {
                return Ok(Some(seconds));
            }
            match value.as_f64() {
                #[allow(clippy::cast_possible_truncation)] // clamped to the i64 range first
                Some(seconds) if seconds.is_finite() => {
                    Ok(Some(seconds.floor().clamp(i64::MIN as f64, i64::MAX as f64) as i64))
                }
                _ => Err(ApiError::unauthorized(format!("the token's {name} is not a number"))),
            }
        }
    }
}

fn invalid() -> ApiError {
    ApiError::unauthorized("invalid credentials")
}

/// The 401 message for a token the crate refused; names the claim, never
/// echoes a value.
fn refusal(kind: &ErrorKind) -> ApiError {
    match kind {
        ErrorKind::InvalidIssuer => ApiError::unauthorized("the token's issuer (iss) is not accepted"),
        ErrorKind::InvalidAudience => ApiError::unauthorized("the token's audience (aud) is not accepted"),
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" || claim == "aud" => {
            ApiError::unauthorized(format!("the token has no {claim}"))
        }
        _ => invalid(),
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub fn rfc3339(ms: i64) -> String {
    refunds_domain::Timestamp::from_millis(ms).map(|t| t.to_string()).unwrap_or_default()
}
