//! Credentials: API keys from a TOML file and HS256 JWTs.
//!
//! Secrets are kept only as SHA-256 digests and compared in constant time;
//! neither a secret nor a token is ever logged or echoed (only key ids and JWT
//! subjects are). Accepted `Authorization` forms (scheme names in any case):
//! `Api-Key <secret>`, `Bearer <secret>`, `Bearer <JWT>`,
//! `Basic base64(<secret>:)` and `Basic base64(<key id>:<secret>)`.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::params::Params;

/// JWT `exp` leeway, in seconds.
const JWT_LEEWAY_SECONDS: i64 = 60;

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
}

/// The configured credentials.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    keys: Vec<Key>,
    jwt_secret: Option<Vec<u8>>,
}

impl Auth {
    pub fn load(path: &Path, jwt_secret: Option<&str>) -> Result<Auth, AuthConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| AuthConfigError::Read { path: path.display().to_string(), source })?;
        Auth::from_toml(&text, jwt_secret)
            .map_err(|message| AuthConfigError::Invalid { path: path.display().to_string(), message })
    }

    pub fn from_toml(text: &str, jwt_secret: Option<&str>) -> Result<Auth, String> {
        let file: KeysFile = toml::from_str(text).map_err(|e| e.to_string())?;
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
        Ok(Auth { keys, jwt_secret: jwt_secret.map(|s| s.as_bytes().to_vec()) })
    }

    /// Authenticates an `Authorization` header value.
    pub fn authenticate(&self, header: Option<&str>, now_unix: i64) -> Result<Caller, ApiError> {
        let header = header.ok_or_else(|| ApiError::unauthorized("credentials are required"))?;
        let (scheme, credentials) = header.trim().split_once(' ').ok_or_else(bad_credentials)?;
        let credentials = credentials.trim();
        match scheme.to_ascii_lowercase().as_str() {
            "api-key" => self.by_secret(credentials),
            "bearer" => match self.by_secret(credentials) {
                Ok(caller) => Ok(caller),
                Err(_) if credentials.matches('.').count() == 2 => self.by_jwt(credentials, now_unix),
                Err(err) => Err(err),
            },
            "basic" => {
                let decoded = STANDARD.decode(credentials).map_err(|_| bad_credentials())?;
                let decoded = String::from_utf8(decoded).map_err(|_| bad_credentials())?;
                let (user, password) = decoded.split_once(':').ok_or_else(bad_credentials)?;
                if password.is_empty() {
                    return self.by_secret(user);
                }
                let key = self.keys.iter().find(|k| k.id == user).ok_or_else(bad_credentials)?;
                if bool::from(key.digest.ct_eq(&sha256(password.as_bytes()))) {
                    Ok(key.caller())
                } else {
                    Err(bad_credentials())
                }
            }
            _ => Err(ApiError::unauthorized("unsupported authorization scheme")),
        }
    }

    fn by_secret(&self, secret: &str) -> Result<Caller, ApiError> {
        let digest = sha256(secret.as_bytes());
        // Compare against every key so the time does not depend on which matched.
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        found.map(Key::caller).ok_or_else(bad_credentials)
    }

    fn by_jwt(&self, token: &str, now_unix: i64) -> Result<Caller, ApiError> {
        let secret = self.jwt_secret.as_deref().ok_or_else(|| ApiError::unauthorized("JWTs are not accepted here"))?;
        let claims = verify_hs256(token, secret).ok_or_else(bad_credentials)?;
        let exp = claims.get("exp").and_then(serde_json::Value::as_i64).ok_or_else(bad_credentials)?;
        if exp + JWT_LEEWAY_SECONDS < now_unix {
            return Err(ApiError::unauthorized("the token has expired"));
        }
        let tenant = claims.get("tenant_id").and_then(|v| v.as_str()).ok_or_else(bad_credentials)?;
        let scope = claims.get("scope").and_then(|v| v.as_str()).ok_or_else(bad_credentials)?;
        let admin = scope.split(' ').any(|s| s == "admin");
        let read = admin || scope.split(' ').any(|s| s == "refunds:read");
        let name = claims.get("sub").and_then(|v| v.as_str()).unwrap_or("jwt").to_owned();
        Ok(Caller { name, tenant: (tenant != "*").then(|| tenant.to_owned()), read, admin })
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

/// Verifies an HS256 JWT and returns its claims. Only `alg: HS256` is
/// accepted (no `none`, no algorithm confusion).
fn verify_hs256(token: &str, secret: &[u8]) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut parts = token.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    if header.get("alg")?.as_str()? != "HS256" {
        return None;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    // The signature covers `header.payload`, everything before the last dot.
    mac.update(&token.as_bytes()[..token.rfind('.')?]);
    mac.verify_slice(&URL_SAFE_NO_PAD.decode(signature).ok()?).ok()?;
    match serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()? {
        serde_json::Value::Object(claims) => Some(claims),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
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
}
