//! Read-your-writes (contract section 3, "Freshness and read-your-writes"):
//! `X-Refunds-Position` and `X-Last-Applied-At` on every `/v1` response, and
//! `min_position` / `max_wait_ms` on every `/v1` route.
//!
//! One middleware does it for every route, so no handler knows of it:
//!
//! - It takes `min_position` and `max_wait_ms` out of the query string (the
//!   handler sees the rest, and refuses what it does not know as before).
//! - With `min_position`, it checks the caller's credentials first (nobody
//!   waits without them), then waits until the store's published positions
//!   reach every element: [`Store::subscribe_positions`], woken by the commit
//!   that gets there. A waiting request holds a channel receiver and a timer,
//!   no snapshot, lock or thread. The handler then opens its snapshot, which
//!   is at or past the commit that woke it.
//! - At most `max_waiting` requests wait at once (10,000 unless configured);
//!   one more is answered 503 `not_caught_up` at once, so a flood costs a
//!   bounded amount of memory.
//! - Handlers that read a snapshot set both headers from it; the middleware
//!   sets them from the last commit on every other `/v1` response (errors
//!   included), so each one carries a position.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use refunds_store::{Positions, Store};

use crate::AppState;
use crate::error::ApiError;

pub const POSITION_HEADER: HeaderName = HeaderName::from_static("x-refunds-position");
pub const LAST_APPLIED_HEADER: HeaderName = HeaderName::from_static("x-last-applied-at");

/// Waiting requests allowed at once unless configured.
pub const DEFAULT_MAX_WAITING: usize = 10_000;
/// `max_wait_ms` when not given, and its upper bound.
const DEFAULT_WAIT: Duration = Duration::from_millis(1_000);
const MAX_WAIT_MS: u64 = 10_000;
/// A position element's topic: Kafka's own rule for topic names.
const MAX_TOPIC_LEN: usize = 249;

/// The requests waiting for a position now, and how many may.
#[derive(Debug)]
pub struct Waiters {
    waiting: AtomicUsize,
    max: usize,
}

impl Waiters {
    pub fn new(max: usize) -> Waiters {
        Waiters { waiting: AtomicUsize::new(0), max }
    }

    /// Takes a place, or `None` when every place is taken.
    fn enter(&self) -> Option<Place<'_>> {
        let before = self.waiting.fetch_add(1, Ordering::AcqRel);
        let place = Place(&self.waiting);
        (before < self.max).then_some(place)
    }
}

impl Default for Waiters {
    fn default() -> Waiters {
        Waiters::new(DEFAULT_MAX_WAITING)
    }
}

/// A waiting request's place; given back when dropped (the request answered
/// or its client gone).
struct Place<'a>(&'a AtomicUsize);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Parses a position: `topic:partition:offset` elements, comma separated.
/// An element repeated for one partition keeps its highest offset.
pub fn parse_position(value: &str) -> Result<Positions, String> {
    let mut offsets = std::collections::BTreeMap::new();
    for element in value.split(',') {
        let malformed = || format!("{element:?} is not topic:partition:offset");
        let mut parts = element.rsplitn(3, ':');
        let (Some(offset), Some(partition), Some(topic)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed());
        };
        let valid_topic = !topic.is_empty()
            && topic.len() <= MAX_TOPIC_LEN
            && topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid_topic {
            return Err(format!("{element:?} does not name a Kafka topic"));
        }
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let (true, true) = (digits(partition), digits(offset)) else {
            return Err(malformed());
        };
        let partition: i32 = partition.parse().map_err(|_| malformed())?;
        let offset: i64 = offset.parse().map_err(|_| malformed())?;
        let slot = offsets.entry((topic.to_owned(), partition)).or_insert(offset);
        *slot = (*slot).max(offset);
    }
    Ok(Positions::new(offsets))
}

/// What a request asks of freshness.
#[derive(Debug)]
struct Wanted {
    position: Positions,
    max_wait: Duration,
}

/// Takes `min_position` and `max_wait_ms` out of `query`: what they ask, and
/// the query without them.
fn take_parameters(query: &str) -> Result<(Option<Wanted>, String), ApiError> {
    let mut kept = Vec::new();
    let mut min_position = None;
    let mut max_wait = None;
    for segment in query.split('&') {
        let name = segment.split('=').next().unwrap_or_default();
        let decoded: Vec<(String, String)> = serde_urlencoded::from_str(segment)
            .map_err(|_| ApiError::invalid("query", "the query string is not valid URL encoding"))?;
        let slot = match decoded.first().map(|(n, _)| n.as_str()) {
            Some("min_position") => &mut min_position,
            Some("max_wait_ms") => &mut max_wait,
            _ => {
                if !name.is_empty() || !segment.is_empty() {
                    kept.push(segment);
                }
                continue;
            }
        };
        let (name, value) = decoded.into_iter().next().unwrap_or_default();
        if value.is_empty() {
            return Err(ApiError::invalid(&name, format!("{name} must not be empty")));
        }
        if slot.replace(value).is_some() {
            return Err(ApiError::invalid(&name, format!("{name} is given more than once")));
        }
    }
    let max_wait = match max_wait {
        None => DEFAULT_WAIT,
        Some(_) if min_position.is_none() => {
            return Err(ApiError::invalid("max_wait_ms", "max_wait_ms needs min_position"));
        }
        Some(text) => match text.parse::<u64>() {
            Ok(ms) if ms <= MAX_WAIT_MS => Duration::from_millis(ms),
            _ => {
                return Err(ApiError::invalid(
                    "max_wait_ms",
                    format!("max_wait_ms must be an integer between 0 and {MAX_WAIT_MS}"),
                ));
            }
        },
    };
    let wanted = match min_position {
        None => None,
        Some(text) => Some(Wanted {
            position: parse_position(&text)
                .map_err(|problem| ApiError::invalid("min_position", format!("min_position: {problem}")))?,
            max_wait,
        }),
    };
    Ok((wanted, kept.join("&")))
}

/// The middleware of every route (see the module documentation).
pub async fn freshness(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path != "/v1" && !path.starts_with("/v1/") {
        return next.run(request).await;
    }
    let waits = matches!(*request.method(), Method::GET | Method::HEAD);
    if waits && let Some(query) = request.uri().query() {
        match take_parameters(query) {
            Err(error) => return with_positions(&state, error.into_response()),
            Ok((None, _)) => {}
            Ok((Some(wanted), rest)) => {
                // Cloned: the request's body may not be shared across the wait.
                let headers = request.headers().clone();
                if let Err(error) = wait(&state, &headers, &wanted).await {
                    return with_positions(&state, error.into_response());
                }
                *request.uri_mut() = without_query(request.uri(), &rest);
            }
        }
    }
    let response = next.run(request).await;
    with_positions(&state, response)
}

fn without_query(uri: &Uri, query: &str) -> Uri {
    let path_and_query = match query {
        "" => uri.path().to_owned(),
        query => format!("{}?{query}", uri.path()),
    };
    // The path and the rest of the query were valid in `uri`.
    path_and_query.parse().unwrap_or_else(|_| uri.clone())
}

/// Sets the freshness headers from the last commit when the handler did not
/// set them from its snapshot.
fn with_positions(state: &AppState, mut response: Response) -> Response {
    if response.headers().contains_key(POSITION_HEADER) || response.headers().contains_key(LAST_APPLIED_HEADER) {
        return response;
    }
    if let Some(store) = state.store.get() {
        set_headers(response.headers_mut(), &store.positions(), store.last_applied_at());
    }
    response
}

/// `X-Refunds-Position` (absent while nothing is applied from Kafka) and
/// `X-Last-Applied-At` (absent while nothing is applied).
pub fn set_headers(headers: &mut HeaderMap, positions: &Positions, last_applied_at: Option<refunds_domain::Timestamp>) {
    if !positions.is_empty()
        && let Ok(value) = HeaderValue::from_str(&positions.to_string())
    {
        headers.insert(POSITION_HEADER, value);
    }
    if let Some(at) = last_applied_at
        && let Ok(value) = HeaderValue::from_str(&at.to_string())
    {
        headers.insert(LAST_APPLIED_HEADER, value);
    }
}

/// Waits until the store reaches `wanted`, within its `max_wait`.
async fn wait(state: &AppState, headers: &HeaderMap, wanted: &Wanted) -> Result<(), ApiError> {
    crate::routes::authenticate(state, headers)?;
    let mut store = crate::routes::current_store(state)?;
    let consumed = state.ingest.as_ref().and_then(|ingest| ingest.topic());
    let current = store.positions();
    for (topic, _, _) in wanted.position.iter() {
        if consumed.as_deref() != Some(topic) && !current.has_topic(topic) {
            return Err(ApiError::invalid(
                "min_position",
                format!("min_position names topic {topic}, which this instance neither consumes nor has applied"),
            ));
        }
    }
    if current.reaches(&wanted.position) {
        return Ok(());
    }
    if state.ingest.is_none() {
        return Err(not_caught_up(&current, &wanted.position, "no consumer feeds this store (serve)"));
    }
    let Some(_place) = state.waiters.enter() else {
        metrics::counter!("refund_projector_position_waits_total", "outcome" => "refused").increment(1);
        return Err(not_caught_up(
            &current,
            &wanted.position,
            &format!("{} requests are waiting already, the most this instance allows", state.waiters.max),
        ));
    };
    metrics::counter!("refund_projector_position_waits_started_total").increment(1);
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + wanted.max_wait);
    let outcome = loop {
        let mut positions = store.subscribe_positions();
        // The receiver alone keeps nothing of the store open.
        drop(store);
        let woken = tokio::time::timeout_at(deadline, positions.wait_for(|p| p.reaches(&wanted.position)))
            .await
            .map(|reached| reached.is_ok());
        match woken {
            Ok(true) => break true,
            Err(_) => break false,
            // The store was closed (a reopen after an I/O error, or a
            // rebuilt store swapped in): wait on its successor.
            Ok(false) => match successor(state, deadline).await {
                Some(next) => store = next,
                None => break false,
            },
        }
    };
    let outcome_label = if outcome { "reached" } else { "timed_out" };
    metrics::counter!("refund_projector_position_waits_total", "outcome" => outcome_label).increment(1);
    metrics::histogram!("refund_projector_position_wait_seconds").record(started.elapsed().as_secs_f64());
    if outcome {
        return Ok(());
    }
    let current = state.store.get().map(|s| s.positions()).unwrap_or_default();
    Err(not_caught_up(&current, &wanted.position, &format!("waited {} ms", wanted.max_wait.as_millis())))
}

/// The store in the slot once there is one again, unless `deadline` passes.
async fn successor(state: &AppState, deadline: tokio::time::Instant) -> Option<Arc<Store>> {
    loop {
        if let Some(store) = state.store.get() {
            return Some(store);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + Duration::from_millis(20))).await;
    }
}

/// 503 `not_caught_up`, naming the partitions behind.
fn not_caught_up(current: &Positions, wanted: &Positions, why: &str) -> ApiError {
    let behind: Vec<String> = current
        .behind(wanted)
        .iter()
        .map(|(topic, partition, offset, applied)| match applied {
            Some(applied) => format!("{topic}:{partition} is at {applied}, not {offset}"),
            None => format!("{topic}:{partition} has nothing applied, not {offset}"),
        })
        .collect();
    let behind = if behind.is_empty() { "the store is behind".to_owned() } else { behind.join("; ") };
    ApiError::NotCaughtUp { message: format!("min_position is not reached ({why}): {behind}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_strictly_and_keep_the_highest_offset_of_a_partition() {
        let parsed = parse_position("refunds:0:41,refunds:2:7,other.t-1:0:0,refunds:0:40").unwrap();
        assert_eq!(parsed.to_string(), "other.t-1:0:0,refunds:0:41,refunds:2:7");
        for bad in [
            "refunds",
            "refunds:0",
            "refunds:0:",
            ":0:1",
            "refunds:-1:1",
            "refunds:0:-1",
            "refunds:0:1x",
            "refunds:0:1,",
            "re funds:0:1",
            "refunds:99999999999:1",
            "refunds:0:99999999999999999999",
        ] {
            assert!(parse_position(bad).is_err(), "{bad:?} parsed");
        }
        // A topic name may not hold a colon, so the last two fields are split off.
        assert!(parse_position("a:b:0:1").is_err());
    }

    #[test]
    fn the_freshness_parameters_are_taken_out_of_the_query_and_checked() {
        let (wanted, rest) = take_parameters("status=failed&min_position=t%3A0%3A5&max_wait_ms=250&limit=2").unwrap();
        let wanted = wanted.unwrap();
        assert_eq!(rest, "status=failed&limit=2");
        assert_eq!(wanted.position.to_string(), "t:0:5");
        assert_eq!(wanted.max_wait, Duration::from_millis(250));
        let (wanted, rest) = take_parameters("min_position=t:0:5").unwrap();
        assert_eq!((wanted.unwrap().max_wait, rest.as_str()), (DEFAULT_WAIT, ""));
        let (wanted, rest) = take_parameters("limit=2").unwrap();
        assert!(wanted.is_none());
        assert_eq!(rest, "limit=2");
        let param = |query: &str| match take_parameters(query) {
            Err(ApiError::InvalidParameter { param, .. }) => param,
            other => panic!("{query}: {other:?}"),
        };
        assert_eq!(param("max_wait_ms=10"), "max_wait_ms");
        assert_eq!(param("min_position=t:0:1&max_wait_ms=10001"), "max_wait_ms");
        assert_eq!(param("min_position=t:0:1&max_wait_ms=-1"), "max_wait_ms");
        assert_eq!(param("min_position=t:0:1&max_wait_ms=1.5"), "max_wait_ms");
        assert_eq!(param("min_position=t:0:x"), "min_position");
        assert_eq!(param("min_position="), "min_position");
        assert_eq!(param("min_position=t:0:1&min_position=t:0:2"), "min_position");
    }

    #[test]
    fn waiters_past_the_bound_are_refused_and_places_come_back() {
        let waiters = Waiters::new(2);
        let a = waiters.enter().unwrap();
        let _b = waiters.enter().unwrap();
        assert!(waiters.enter().is_none());
        drop(a);
        assert!(waiters.enter().is_some());
        assert_eq!(waiters.waiting.load(Ordering::Acquire), 1);
    }
}
