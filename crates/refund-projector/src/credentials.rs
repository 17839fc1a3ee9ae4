//! The API's credentials while serving (`run`, `serve`, `demo`): the JWT
//! flags, and what keeps the credentials current without a restart.
//!
//! - The `--api-keys` file is read again on SIGHUP and when it changes on
//!   disk: a stat every second (inode, length, modification time) sees an
//!   edit in place and a new file renamed over it alike, so a revoked key
//!   stops working within about a second. SIGHUP is handled for the life of
//!   the process (without a handler it would end it).
//! - A `--jwks` URL is fetched at start, then every `--jwks-refresh-secs`
//!   (after a failed fetch, sooner: 10 s doubling up to that interval), on
//!   SIGHUP, and on a token naming an unknown `kid` (at most once a minute,
//!   see `refunds_api::auth`). A `--jwks` file is read at start, on SIGHUP
//!   and when it changes on disk.
//! - A JWKS that cannot be fetched at start does not stop the process: API
//!   keys and HS256 tokens still work, RS256/ES256 tokens are refused until
//!   a fetch succeeds, and the failure is logged, shown in `/v1/status`
//!   (`auth.jwks.error`) and in `refund_projector_jwks_refresh_failed`.
//!   An identity provider's outage must not take down a service that other
//!   credentials still reach; the metric is what pages.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use refunds_api::{Auth, AuthParams, JwksSource, Refresh};

/// The JWT flags `run`, `serve` and `demo` share.
#[derive(Clone, clap::Args)]
pub struct JwtArgs {
    /// Secret that HS256 JWTs are signed with; without one, HS256 JWTs are
    /// refused. Repeatable: a token signed with any of them is accepted, so
    /// a secret can be rotated without refusals. In the environment, several
    /// secrets are comma separated (a secret cannot contain a comma); in the
    /// config file, a string or a list of strings.
    #[arg(
        long = "jwt-secret",
        value_name = "SECRET",
        env = "REFUND_PROJECTOR_JWT_SECRET",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub jwt_secrets: Vec<String>,
    /// An identity provider's JWKS (a file path, or an http:// or https://
    /// URL): RS256 and ES256 JWTs are verified with the key named by their
    /// `kid`. A URL is fetched at start, every --jwks-refresh-secs, on SIGHUP
    /// and on an unknown `kid` (at most once a minute); a file is read again
    /// when it changes.
    #[arg(long, value_name = "PATH_OR_URL", env = "REFUND_PROJECTOR_JWKS", hide_env_values = true)]
    pub jwks: Option<String>,
    /// Seconds between fetches of a --jwks URL.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..), env = "REFUND_PROJECTOR_JWKS_REFRESH_SECS")]
    pub jwks_refresh_secs: u64,
    /// When set, a JWT's `iss` must be exactly this (every JWT, HS256 included).
    #[arg(long, env = "REFUND_PROJECTOR_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// When set, a JWT's `aud` (a string, or an array of strings) must
    /// contain this (every JWT, HS256 included).
    #[arg(long, env = "REFUND_PROJECTOR_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

impl std::fmt::Debug for JwtArgs {
    /// Without the secrets, and the JWKS URL without credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtArgs")
            .field("jwt_secrets", &self.jwt_secrets.len())
            .field("jwks", &self.jwks.as_deref().map(redact_url))
            .field("jwks_refresh_secs", &self.jwks_refresh_secs)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .finish()
    }
}

/// Where the JWKS comes from.
#[derive(Debug, Clone)]
enum JwksAt {
    File(PathBuf),
    Url(String),
}

/// The credentials to serve with, and how to keep them current.
pub struct Credentials {
    pub auth: Auth,
    jwks: Option<JwksAt>,
    jwks_refresh: Duration,
}

impl JwtArgs {
    /// Reads the keys file (a broken one at start is an error: nothing good
    /// to fall back on) and sets up the JWT verification.
    pub fn credentials(&self, api_keys: Option<&Path>, fixed_keys: Option<String>) -> anyhow::Result<Credentials> {
        let jwks = self.jwks.as_deref().map(|at| {
            if at.starts_with("http://") || at.starts_with("https://") {
                JwksAt::Url(at.to_owned())
            } else {
                JwksAt::File(PathBuf::from(at.strip_prefix("file://").unwrap_or(at)))
            }
        });
        let source = jwks.clone().map(|at| match at {
            JwksAt::File(path) => JwksSource {
                label: path.display().to_string(),
                fetch: Box::new(move || {
                    std::fs::read_to_string(&path).map_err(|e| format!("failed to read the JWKS file: {e}"))
                }),
            },
            JwksAt::Url(url) => JwksSource { label: redact_url(&url), fetch: Box::new(http_fetcher(url)) },
        });
        let auth = Auth::new(AuthParams {
            api_keys: api_keys.map(Path::to_path_buf),
            fixed_keys,
            // Empty items (a trailing comma in the environment) are no
            // secret; an empty HMAC key would let anyone sign.
            jwt_secrets: self.jwt_secrets.iter().filter(|s| !s.is_empty()).cloned().collect(),
            jwks: source,
            jwt_issuer: self.jwt_issuer.clone(),
            jwt_audience: self.jwt_audience.clone(),
        })?;
        Ok(Credentials { auth, jwks, jwks_refresh: Duration::from_secs(self.jwks_refresh_secs) })
    }
}

/// What keeps the credentials current once serving.
pub struct Watch {
    jwks: Option<JwksAt>,
    jwks_refresh: Duration,
}

impl Credentials {
    pub fn split(self) -> (Auth, Watch) {
        (self.auth, Watch { jwks: self.jwks, jwks_refresh: self.jwks_refresh })
    }
}

impl Watch {
    /// Publishes the credential metrics, fetches the JWKS once, handles
    /// SIGHUP on `runtime` and starts the watcher threads. Call it once the
    /// metrics recorder is installed and before serving.
    pub fn start(self, auth: &Arc<Auth>, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
        auth.publish_metrics();
        if auth.has_jwks() {
            auth.refresh_jwks(Refresh::Start);
        }
        let (hup_keys, keys_rx) = mpsc::channel::<()>();
        let (hup_jwks, jwks_rx) = mpsc::channel::<()>();
        {
            let _entered = runtime.enter();
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("failed to handle SIGHUP")?;
            runtime.spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the API keys and the JWKS");
                    let _ = hup_keys.send(());
                    let _ = hup_jwks.send(());
                }
            });
        }
        if let Some(path) = auth.keys_file().map(Path::to_path_buf) {
            let auth = auth.clone();
            thread::Builder::new()
                .name("keys-watch".to_owned())
                .spawn(move || watch_keys(&auth, &path, &keys_rx))
                .context("failed to start the API keys watcher")?;
        }
        if let Some(at) = self.jwks {
            let auth = auth.clone();
            let every = self.jwks_refresh;
            thread::Builder::new()
                .name("jwks-refresh".to_owned())
                .spawn(move || watch_jwks(&auth, &at, every, &jwks_rx))
                .context("failed to start the JWKS refresher")?;
        }
        Ok(())
    }
}

/// What tells a file's content changed without reading it: device, inode,
/// length and modification time (ns). `None` while the file is missing.
fn file_stamp(path: &Path) -> Option<(u64, u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

fn watch_keys(auth: &Auth, path: &Path, hup: &mpsc::Receiver<()>) {
    // The stamp of the content in use (or last tried): taken before reading,
    // so a write racing the read changes it again and is read next round.
    let mut seen = file_stamp(path);
    loop {
        let reason = match hup.recv_timeout(Duration::from_secs(1)) {
            Ok(()) => "SIGHUP",
            Err(RecvTimeoutError::Timeout) => "changed on disk",
            Err(RecvTimeoutError::Disconnected) => {
                thread::sleep(Duration::from_secs(1));
                "changed on disk"
            }
        };
        let now = file_stamp(path);
        if reason == "SIGHUP" || now != seen {
            // A file being written (truncated, then filled) must not be read
            // half way: wait until it holds still for a moment. An empty
            // file in between would otherwise revoke every key for a second.
            thread::sleep(SETTLE);
            let settled = file_stamp(path);
            if reason != "SIGHUP" && settled != now {
                continue;
            }
            seen = settled;
            let _ = auth.reload_keys(reason);
        }
    }
}

/// How long a changed file must hold still before it is read.
const SETTLE: Duration = Duration::from_millis(200);

fn watch_jwks(auth: &Auth, at: &JwksAt, every: Duration, hup: &mpsc::Receiver<()>) {
    let mut seen = match at {
        JwksAt::File(path) => file_stamp(path),
        JwksAt::Url(_) => None,
    };
    let mut failures: u32 = u32::from(auth.jwks_failing());
    let mut due = Instant::now() + next_wait(failures, every);
    loop {
        let hangup = match hup.recv_timeout(Duration::from_secs(1)) {
            Ok(()) => true,
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => {
                thread::sleep(Duration::from_secs(1));
                false
            }
        };
        let why = match at {
            JwksAt::File(path) => {
                let now = file_stamp(path);
                if hangup {
                    Some(Refresh::Hangup)
                } else if now != seen {
                    thread::sleep(SETTLE);
                    let settled = file_stamp(path);
                    if settled == now {
                        seen = now;
                        Some(Refresh::Changed)
                    } else {
                        None
                    }
                } else {
                    None
                }
            }
            JwksAt::Url(_) if hangup => Some(Refresh::Hangup),
            JwksAt::Url(_) if Instant::now() >= due => Some(Refresh::Periodic),
            JwksAt::Url(_) => None,
        };
        if let Some(why) = why {
            auth.refresh_jwks(why);
            failures = if auth.jwks_failing() { failures.saturating_add(1) } else { 0 };
            due = Instant::now() + next_wait(failures, every);
        }
    }
}

/// The wait before the next periodic fetch: the interval, or after
/// failures 10 s doubling up to it.
fn next_wait(failures: u32, every: Duration) -> Duration {
    if failures == 0 {
        return every;
    }
    Duration::from_secs(10u64 << (failures - 1).min(10)).min(every)
}

/// GETs the JWKS: 5 s at most, 1 MiB at most; https with the system's
/// trusted roots (OpenSSL's, the library librdkafka already links).
fn http_fetcher(url: String) -> impl Fn() -> Result<String, String> + Send + Sync {
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::NativeTls)
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .tls_config(tls)
        .build()
        .into();
    let shown = redact_url(&url);
    move || {
        // An error may quote the URL: show it without its credentials.
        let mut response = agent
            .get(&url)
            .header("Accept", "application/json")
            .call()
            .map_err(|e| format!("fetching the JWKS failed: {e}").replace(&url, &shown))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(format!("fetching the JWKS answered HTTP {status}"));
        }
        response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .map_err(|e| format!("reading the JWKS failed: {e}"))
    }
}

/// A URL as logs and `/v1/status` may show it: without user info, query
/// string or fragment (where credentials sometimes travel).
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if path.is_empty() { format!("{scheme}://{host}") } else { format!("{scheme}://{host}/{path}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_credentials_or_query() {
        assert_eq!(redact_url("https://user:pw@idp.example/jwks.json?token=x#f"), "https://idp.example/jwks.json");
        assert_eq!(redact_url("http://127.0.0.1:9/keys"), "http://127.0.0.1:9/keys");
        assert_eq!(redact_url("http://h"), "http://h");
        assert_eq!(redact_url("/etc/jwks.json"), "/etc/jwks.json");
    }

    #[test]
    fn retries_after_failures_back_off_up_to_the_interval() {
        let every = Duration::from_secs(300);
        assert_eq!(next_wait(0, every), every);
        assert_eq!(next_wait(1, every), Duration::from_secs(10));
        assert_eq!(next_wait(2, every), Duration::from_secs(20));
        assert_eq!(next_wait(9, every), every);
        assert_eq!(next_wait(u32::MAX, every), every);
    }
}
