//! `GET /v1/refunds/summary`: exact counts and per-currency amount totals of
//! the refunds a list filter matches, grouped by up to two dimensions and by
//! period of created_at in a time zone's local calendar.
//!
//! Filters, aliases, their errors and the tenant rules are the list's
//! ([`crate::list::parse_filter`], [`crate::list::tenant_scope`]); paging and
//! ordering parameters are unknown here. The sums come from
//! [`refunds_store::summary_in`] on one read snapshot.
//!
//! Time zones are chrono-tz's: the IANA database compiled in (no dependency
//! on the host's zoneinfo files, the same answer on every machine), on top
//! of chrono, which the project already uses. A local hour, day, ISO week
//! (from Monday) or calendar month is the interval of instants whose local
//! time falls in it: in a DST fall-back the repeated hour is two periods
//! with different offsets, a skipped hour does not exist, and a day starting
//! in a gap starts at the transition.

use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use refunds_store::{CurrencyAmount, Dim, Filter, Summary, SummaryRequest, TenantNo, summary_in};

use crate::AppState;
use crate::error::{ApiError, store_unavailable};
use crate::params::Params;

/// The list's filter parameters (every spelling), and the summary's own.
pub const KNOWN: &[&str] = crate::list::with_filter_parameters!("group_by", "interval", "tz");

/// The most periods a summary may span, from the first matching refund's to
/// the last one's.
pub const MAX_PERIODS: u32 = 1000;

const DIMENSIONS: &str = "status, currency, processor, payment_method_type, product_type";

/// A calendar unit of `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Hour,
    Day,
    Week,
    Month,
}

impl Interval {
    fn parse(value: &str) -> Option<Interval> {
        Some(match value {
            "hour" => Interval::Hour,
            "day" => Interval::Day,
            "week" => Interval::Week,
            "month" => Interval::Month,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Interval::Hour => "hour",
            Interval::Day => "day",
            Interval::Week => "week",
            Interval::Month => "month",
        }
    }
}

/// A parsed summary request (the tenant scope is resolved against the store).
#[derive(Debug)]
pub struct SummaryQuery {
    filter: Filter,
    group_by: Vec<Dim>,
    interval: Option<Interval>,
    tz: Tz,
}

/// Parses everything but the tenant scope; needs no store.
pub fn parse(params: &Params) -> Result<SummaryQuery, ApiError> {
    let filter = crate::list::parse_filter(params)?;
    let mut group_by = Vec::new();
    if let Some(value) = params.get("group_by") {
        for name in value.split(',').map(str::trim) {
            let dim = Dim::from_name(name).ok_or_else(|| {
                ApiError::invalid("group_by", format!("group_by must be a comma list of at most two of {DIMENSIONS}"))
            })?;
            if group_by.contains(&dim) {
                return Err(ApiError::invalid("group_by", format!("group_by names {name} twice")));
            }
            group_by.push(dim);
        }
        if group_by.len() > 2 {
            return Err(ApiError::invalid("group_by", "group_by takes at most two dimensions"));
        }
    }
    let interval = match params.get("interval") {
        None => None,
        Some(value) => Some(
            Interval::parse(value)
                .ok_or_else(|| ApiError::invalid("interval", "interval must be one of hour, day, week, month"))?,
        ),
    };
    let tz = match params.get("tz") {
        None => Tz::UTC,
        Some(value) => Tz::from_str(value).map_err(|_| {
            ApiError::invalid("tz", "tz must be an IANA time zone name, such as UTC, Europe/Berlin or Asia/Kolkata")
        })?,
    };
    Ok(SummaryQuery { filter, group_by, interval, tz })
}

pub(crate) async fn summary(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = crate::routes::authenticate(&state, &headers)?;
    let params = Params::parse(query.as_deref(), KNOWN)?;
    let request = parse(&params)?;
    let gzip = accepts_gzip(&headers);
    let answers = state.answers.clone();
    let snapshot = crate::routes::read_identified(&state, move |store, txn, id| {
        let tenants = crate::list::tenant_scope(store, &caller, &params)?;
        // The answer is a function of the snapshot, the tenants, the
        // parameters and the encoding: the caller's rights are settled by
        // the scope.
        let key = || {
            let names: Vec<&str> = tenants.iter().map(|(name, _)| name.as_str()).collect();
            format!("{gzip}|{names:?}|{:?}", params.pairs())
        };
        answers.get_or_compute(id, key, || {
            let body = execute(txn, &tenants, &request)?;
            Ok(if gzip { compress(body.as_bytes()) } else { Bytes::from(body) })
        })
    })
    .await?;
    let mut headers = crate::routes::snapshot_headers(&state, &snapshot);
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    Ok((headers, snapshot.value).into_response())
}

/// Whether the client takes a gzip body (`Accept-Encoding` naming `gzip`
/// or `*` with a non-zero weight, RFC 9110 section 12.5.3). A summary can
/// run to hundreds of kilobytes of JSON, which gzip makes about a tenth;
/// browsers ask for it, `curl` only with `--compressed`.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut star = false;
    for item in
        headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','))
    {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let weight = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            return weight > 0.0;
        }
        if coding == "*" {
            star = weight > 0.0;
        }
    }
    star
}

/// gzip at a fast level: an answer is compressed once per snapshot (see
/// [`crate::answers`]), on the request's read thread.
fn compress(body: &[u8]) -> Bytes {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 6), flate2::Compression::fast());
    encoder.write_all(body).expect("writing to memory");
    Bytes::from(encoder.finish().expect("writing to memory"))
}

/// Runs the summary in the request's read snapshot and renders the body.
pub fn execute(
    txn: &refunds_store::ReadTransaction,
    tenants: &[(String, TenantNo)],
    request: &SummaryQuery,
) -> Result<String, ApiError> {
    let tenant_nos: Vec<TenantNo> = tenants.iter().map(|(_, n)| *n).collect();
    let summary = summarize(txn, &tenant_nos, request)?;
    Ok(render(request, &summary))
}

/// The summary of a parsed request within a read transaction, with the
/// period limit checked.
pub fn summarize(
    txn: &refunds_store::ReadTransaction,
    tenants: &[TenantNo],
    request: &SummaryQuery,
) -> Result<Summary, ApiError> {
    let periods = request.interval.map(|interval| Calendar { interval, tz: request.tz });
    let period_of = periods.as_ref().map(|c| move |ms: i64| c.period_of(ms));
    let store_request = SummaryRequest {
        filter: &request.filter,
        group_by: &request.group_by,
        period_of: period_of.as_ref().map(|f| f as &dyn Fn(i64) -> (i64, i64)),
    };
    let summary = summary_in(txn, tenants, &store_request).map_err(|e| store_unavailable(&e))?;
    if let (Some(calendar), Some(first), Some(last)) = (
        periods.as_ref(),
        summary.groups.first().and_then(|g| g.period_start),
        summary.groups.last().and_then(|g| g.period_start),
    ) {
        let mut period = first;
        let mut n = 1;
        while period < last {
            period = calendar.period_of(period).1;
            n += 1;
            if n > MAX_PERIODS {
                return Err(ApiError::invalid(
                    "interval",
                    format!(
                        "the matching refunds span more than {MAX_PERIODS} periods (interval={}); \
                         narrow the created range (created_after, created_before) or use a longer interval",
                        calendar.interval.name()
                    ),
                ));
            }
        }
    }
    Ok(summary)
}

/// Periods of a local calendar.
#[derive(Debug, Clone, Copy)]
pub struct Calendar {
    pub interval: Interval,
    pub tz: Tz,
}

const HOUR_MS: i64 = 3_600_000;

impl Calendar {
    /// `[start, end)` (ms) of the period holding the instant `ms`.
    pub fn period_of(&self, ms: i64) -> (i64, i64) {
        // Clamped so that the period always holds `ms`, whatever a zone's
        // history does (an offset change inside a local hour).
        let start = self.start_of(ms).min(ms);
        let end = match self.interval {
            Interval::Hour => {
                // An hour is an hour long unless the offset changes inside it.
                let mut end = start + HOUR_MS;
                if self.start_of(end - 1) != start {
                    let (mut lo, mut hi) = (start, end - 1);
                    while hi - lo > 1 {
                        let mid = lo + (hi - lo) / 2;
                        if self.start_of(mid) == start { lo = mid } else { hi = mid }
                    }
                    end = hi;
                }
                end
            }
            _ => {
                let local = self.local(start).date();
                let next = match self.interval {
                    Interval::Day => local.succ_opt(),
                    Interval::Week => local.checked_add_days(chrono::Days::new(7)),
                    _ => local.checked_add_months(chrono::Months::new(1)),
                };
                next.map_or(i64::MAX, |date| self.first_instant(date.and_hms_opt(0, 0, 0).expect("midnight")))
            }
        };
        (start, end.max(ms + 1))
    }

    /// The zone's offset from UTC at `ms`, in ms.
    fn offset_ms(&self, ms: i64) -> i64 {
        let utc = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
        i64::from(self.tz.offset_from_utc_datetime(&utc.naive_utc()).fix().local_minus_utc()) * 1000
    }

    fn local(&self, ms: i64) -> NaiveDateTime {
        let utc = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
        utc.with_timezone(&self.tz).naive_local()
    }

    /// The start (ms) of the period holding `ms`.
    fn start_of(&self, ms: i64) -> i64 {
        let local = self.local(ms);
        let date = local.date();
        let day_start = |d: NaiveDate| d.and_hms_opt(0, 0, 0).expect("midnight");
        match self.interval {
            Interval::Hour => {
                // The local hour's start at the offset `ms` has, unless the
                // offset changed since (a fall-back within the hour, Lord
                // Howe's half-hour shifts): then the transition starts it.
                let into_hour = i64::from(local.minute()) * 60_000
                    + i64::from(local.second()) * 1000
                    + i64::from(local.nanosecond() / 1_000_000);
                let candidate = ms - into_hour;
                let offset = self.offset_ms(ms);
                if self.offset_ms(candidate) == offset {
                    return candidate;
                }
                let (mut lo, mut hi) = (candidate, ms);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if self.offset_ms(mid) == offset { hi = mid } else { lo = mid }
                }
                hi
            }
            Interval::Day => self.first_instant(day_start(date)),
            Interval::Week => {
                let monday = date - Duration::days(i64::from(date.weekday().num_days_from_monday()));
                self.first_instant(day_start(monday))
            }
            Interval::Month => self.first_instant(day_start(date.with_day(1).expect("the first of a month"))),
        }
    }

    /// The first instant whose local time is `local` or later (the start of
    /// a period beginning at `local`): its earlier occurrence when repeated,
    /// the transition when `local` falls in a gap.
    fn first_instant(&self, local: NaiveDateTime) -> i64 {
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(t) => t.timestamp_millis(),
            LocalResult::Ambiguous(a, b) => a.timestamp_millis().min(b.timestamp_millis()),
            LocalResult::None => {
                // Local time runs forward through a gap: find where it
                // reaches `local` (offsets lie within ±1 day).
                let guess = local.and_utc().timestamp_millis();
                let (mut lo, mut hi) = (guess - 2 * 86_400_000, guess + 2 * 86_400_000);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if self.local(mid) >= local { hi = mid } else { lo = mid }
                }
                hi
            }
        }
    }

    /// RFC 3339 with the zone's offset at that instant, to the millisecond.
    pub fn render(&self, ms: i64) -> String {
        let utc = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
        utc.with_timezone(&self.tz).format("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string()
    }
}

fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).expect("a string serializes"));
    }
}

fn push_amounts(out: &mut String, amounts: &[CurrencyAmount]) {
    out.push('[');
    for (i, a) in amounts.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"currency\":");
        push_json_str(out, &a.currency);
        // u128 written as digits: an exact JSON integer past 64 bits.
        out.push_str(",\"amount\":");
        out.push_str(itoa::Buffer::new().format(a.amount));
        out.push_str(",\"refunds\":");
        out.push_str(itoa::Buffer::new().format(a.refunds));
        out.push('}');
    }
    out.push(']');
}

/// The response body. Written by hand: sums are u128 and must stay exact
/// JSON integers, which `serde_json::Value` cannot hold.
pub fn render(request: &SummaryQuery, summary: &Summary) -> String {
    let calendar = request.interval.map(|interval| Calendar { interval, tz: request.tz });
    let mut out = String::with_capacity(256 + summary.groups.len() * 160);
    out.push_str("{\"object\":\"summary\",\"count\":");
    out.push_str(itoa::Buffer::new().format(summary.count));
    out.push_str(",\"group_by\":[");
    for (i, dim) in request.group_by.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, dim.name());
    }
    out.push_str("],\"interval\":");
    match request.interval {
        Some(interval) => push_json_str(&mut out, interval.name()),
        None => out.push_str("null"),
    }
    out.push_str(",\"tz\":");
    push_json_str(&mut out, request.tz.name());
    out.push_str(",\"amounts\":");
    push_amounts(&mut out, &summary.amounts);
    out.push_str(",\"groups\":[");
    // Groups of one period are adjacent: its start is rendered once.
    let mut rendered: Option<(i64, String)> = None;
    for (i, group) in summary.groups.iter().enumerate() {
        out.push_str(if i > 0 { ",{" } else { "{" });
        if let (Some(calendar), Some(start)) = (&calendar, group.period_start) {
            if rendered.as_ref().is_none_or(|(at, _)| *at != start) {
                rendered = Some((start, calendar.render(start)));
            }
            out.push_str("\"period_start\":\"");
            out.push_str(rendered.as_ref().map_or("", |(_, text)| text.as_str()));
            out.push_str("\",");
        }
        for (dim, value) in request.group_by.iter().zip(group.values.iter()) {
            push_json_str(&mut out, dim.name());
            out.push(':');
            match value {
                Some(v) => push_json_str(&mut out, v),
                None => out.push_str("null"),
            }
            out.push(',');
        }
        out.push_str("\"count\":");
        out.push_str(itoa::Buffer::new().format(group.count));
        out.push_str(",\"amounts\":");
        push_amounts(&mut out, &group.amounts);
        out.push('}');
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use refunds_domain::Timestamp;
    use refunds_store::{Batch, Durability, Item, SourcePos, Store, StoreParams};
    use serde_json::json;

    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        Timestamp::parse_rfc3339(rfc3339).unwrap().millis()
    }

    fn calendar(interval: Interval, tz: &str) -> Calendar {
        Calendar { interval, tz: Tz::from_str(tz).unwrap() }
    }

    /// The rendered start and the length in hours of the period holding `at`.
    fn period(interval: Interval, tz: &str, at: &str) -> (String, f64) {
        let c = calendar(interval, tz);
        let (start, end) = c.period_of(ms(at));
        (c.render(start), (end - start) as f64 / 3_600_000.0)
    }

    #[test]
    fn local_days_follow_dst_23_and_25_hours() {
        assert_eq!(
            period(Interval::Day, "Europe/Berlin", "2025-03-30T12:00:00Z"),
            ("2025-03-30T00:00:00.000+01:00".to_owned(), 23.0)
        );
        assert_eq!(
            period(Interval::Day, "Europe/Berlin", "2025-10-26T12:00:00Z"),
            ("2025-10-26T00:00:00.000+02:00".to_owned(), 25.0)
        );
        assert_eq!(
            period(Interval::Day, "America/New_York", "2025-03-09T12:00:00Z"),
            ("2025-03-09T00:00:00.000-05:00".to_owned(), 23.0)
        );
        assert_eq!(
            period(Interval::Day, "America/New_York", "2025-11-02T12:00:00Z"),
            ("2025-11-02T00:00:00.000-04:00".to_owned(), 25.0)
        );
        assert_eq!(
            period(Interval::Day, "UTC", "2025-11-02T12:00:00Z"),
            ("2025-11-02T00:00:00.000+00:00".to_owned(), 24.0)
        );
    }

    #[test]
    fn a_repeated_hour_is_two_periods_and_a_skipped_hour_none() {
        // New York, 2025-11-02: 01:00-02:00 happens at -04:00, then at -05:00.
        assert_eq!(
            period(Interval::Hour, "America/New_York", "2025-11-02T05:30:00Z"),
            ("2025-11-02T01:00:00.000-04:00".to_owned(), 1.0)
        );
        assert_eq!(
            period(Interval::Hour, "America/New_York", "2025-11-02T06:30:00Z"),
            ("2025-11-02T01:00:00.000-05:00".to_owned(), 1.0)
        );
        // 2025-03-09: 01:59:59.999 -05:00 is followed by 03:00 -04:00.
        let c = calendar(Interval::Hour, "America/New_York");
        let (start, end) = c.period_of(ms("2025-03-09T06:59:59.999Z"));
        assert_eq!(c.render(start), "2025-03-09T01:00:00.000-05:00");
        assert_eq!(c.render(end), "2025-03-09T03:00:00.000-04:00");
        // Berlin's hour after the spring gap.
        assert_eq!(
            period(Interval::Hour, "Europe/Berlin", "2025-03-30T01:00:00Z"),
            ("2025-03-30T03:00:00.000+02:00".to_owned(), 1.0)
        );
    }

    #[test]
    fn half_and_quarter_hour_zones_start_their_days_off_the_utc_hour() {
        assert_eq!(
            period(Interval::Day, "Asia/Kolkata", "2025-06-01T18:29:59.999Z"),
            ("2025-06-01T00:00:00.000+05:30".to_owned(), 24.0)
        );
        assert_eq!(
            period(Interval::Day, "Asia/Kolkata", "2025-06-01T18:30:00Z"),
            ("2025-06-02T00:00:00.000+05:30".to_owned(), 24.0)
        );
        assert_eq!(
            period(Interval::Day, "Asia/Kathmandu", "2025-06-01T18:15:00Z"),
            ("2025-06-02T00:00:00.000+05:45".to_owned(), 24.0)
        );
        assert_eq!(
            period(Interval::Hour, "Asia/Kathmandu", "2025-06-01T18:14:59.999Z"),
            ("2025-06-01T23:00:00.000+05:45".to_owned(), 1.0)
        );
    }

    #[test]
    fn weeks_start_on_monday_across_a_month_end_and_months_are_local() {
        // Wednesday 2025-12-31 lies in the ISO week from Monday 2025-12-29.
        assert_eq!(
            period(Interval::Week, "Europe/Berlin", "2025-12-31T12:00:00Z"),
            ("2025-12-29T00:00:00.000+01:00".to_owned(), 168.0)
        );
        // Sunday 23:30 local is still the week before.
        assert_eq!(
            period(Interval::Week, "America/New_York", "2026-01-05T04:30:00Z"),
            ("2025-12-29T00:00:00.000-05:00".to_owned(), 168.0)
        );
        // The week of the fall-back is an hour longer.
        assert_eq!(period(Interval::Week, "Europe/Berlin", "2025-10-26T12:00:00Z").1, 169.0);
        // A month of the local calendar: Berlin's March has 743 hours.
        assert_eq!(
            period(Interval::Month, "Europe/Berlin", "2025-03-31T21:59:59.999Z"),
            ("2025-03-01T00:00:00.000+01:00".to_owned(), 743.0)
        );
        assert_eq!(
            period(Interval::Month, "Europe/Berlin", "2025-03-31T22:00:00Z"),
            ("2025-04-01T00:00:00.000+02:00".to_owned(), 720.0)
        );
        assert_eq!(
            period(Interval::Month, "Asia/Kathmandu", "2025-01-31T18:14:59.999Z").0,
            "2025-01-01T00:00:00.000+05:45"
        );
        assert_eq!(
            period(Interval::Month, "Asia/Kathmandu", "2025-01-31T18:15:00Z").0,
            "2025-02-01T00:00:00.000+05:45"
        );
    }

    #[test]
    fn a_day_starting_in_a_gap_starts_at_the_transition() {
        // Sao Paulo moved its clocks from 00:00 to 01:00 on 2018-11-04.
        assert_eq!(
            period(Interval::Day, "America/Sao_Paulo", "2018-11-04T12:00:00Z"),
            ("2018-11-04T01:00:00.000-02:00".to_owned(), 23.0)
        );
    }

    /// Whatever a zone's history does (half-hour DST on Lord Howe, Chatham's
    /// +12:45, Monrovia's -00:44:30 until 1972, Sao Paulo's midnight gap),
    /// every period holds the instant asked about, starts where the one
    /// before it ends, and is found again from its own start.
    #[test]
    fn periods_hold_their_instant_and_tile_time_in_odd_zones() {
        let zones =
            ["Australia/Lord_Howe", "Pacific/Chatham", "Africa/Monrovia", "America/Sao_Paulo", "America/St_Johns"];
        let windows = ["1972-01-01T00:00:00Z", "2018-11-01T00:00:00Z", "2025-04-01T00:00:00Z", "2025-09-30T00:00:00Z"];
        for zone in zones {
            for interval in [Interval::Hour, Interval::Day, Interval::Week, Interval::Month] {
                let c = calendar(interval, zone);
                for window in windows {
                    let from = ms(window);
                    let mut t = from;
                    while t < from + 10 * 86_400_000 {
                        let (start, end) = c.period_of(t);
                        assert!(start <= t && t < end, "{zone} {interval:?} {t}: {start}..{end}");
                        assert_eq!(c.period_of(start), (start, end), "{zone} {interval:?} {t}");
                        assert_eq!(
                            c.period_of(end).0,
                            end,
                            "{zone} {interval:?} {t}: the next period starts at the end"
                        );
                        t += 13 * 60_000;
                    }
                }
            }
        }
    }

    fn store_with(created: &[&str]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), &StoreParams { cache_bytes: 8 << 20 }).unwrap();
        let items = created
            .iter()
            .enumerate()
            .map(|(i, at)| {
                let raw = json!({"event_id": format!("e{i}"), "type": "refund.queued", "occurred_at": at,
                    "refund": {"id": format!("r{i}"), "tenant_id": "org_1", "amount": 100 + i, "currency": "EUR",
                        "processor": "stripe"}})
                .to_string();
                let source = SourcePos::File { path: Arc::from("t"), line: i as u64 + 1 };
                Item::received(source, Timestamp::from_millis(0).unwrap(), raw.into_bytes(), None)
            })
            .collect();
        store.apply_batch(&Batch { items, checkpoints: vec![] }, Durability::None).unwrap();
        (dir, store)
    }

    /// (period_start, count) of a summary over the whole store.
    fn buckets(store: &Store, query: &str) -> Vec<(String, u64)> {
        let params = Params::parse(Some(query), KNOWN).unwrap();
        let request = parse(&params).unwrap();
        let txn = store.read().unwrap();
        let summary = summarize(&txn, &[store.tenant_no("org_1").unwrap()], &request).unwrap();
        let calendar = Calendar { interval: request.interval.unwrap(), tz: request.tz };
        summary.groups.iter().map(|g| (calendar.render(g.period_start.unwrap()), g.count)).collect()
    }

    #[test]
    fn refunds_one_ms_around_a_local_midnight_land_in_their_days() {
        // Around local midnights of Berlin (23- and 25-hour days), New York,
        // Kolkata and Kathmandu: one ms before, at, and after.
        let cases = [
            ("Europe/Berlin", "2025-03-29T23:00:00Z", "2025-03-30T00:00:00.000+01:00", "2025-03-29T00:00:00.000+01:00"),
            ("Europe/Berlin", "2025-10-26T23:00:00Z", "2025-10-27T00:00:00.000+01:00", "2025-10-26T00:00:00.000+02:00"),
            (
                "America/New_York",
                "2025-11-02T04:00:00Z",
                "2025-11-02T00:00:00.000-04:00",
                "2025-11-01T00:00:00.000-04:00",
            ),
            (
                "America/New_York",
                "2025-03-10T04:00:00Z",
                "2025-03-10T00:00:00.000-04:00",
                "2025-03-09T00:00:00.000-05:00",
            ),
            ("Asia/Kolkata", "2025-06-01T18:30:00Z", "2025-06-02T00:00:00.000+05:30", "2025-06-01T00:00:00.000+05:30"),
            (
                "Asia/Kathmandu",
                "2025-06-01T18:15:00Z",
                "2025-06-02T00:00:00.000+05:45",
                "2025-06-01T00:00:00.000+05:45",
            ),
        ];
        for (tz, midnight, day, day_before) in cases {
            let at = ms(midnight);
            let times: Vec<String> =
                [at - 1, at, at + 1].iter().map(|&t| Timestamp::from_millis(t).unwrap().to_string()).collect();
            let refs: Vec<&str> = times.iter().map(String::as_str).collect();
            let (_dir, store) = store_with(&refs);
            for group in ["", "&group_by=processor"] {
                let got = buckets(&store, &format!("interval=day&tz={tz}{group}"));
                assert_eq!(got, vec![(day_before.to_owned(), 1), (day.to_owned(), 2)], "{tz} {midnight} {group}");
            }
            // A created bound at the midnight itself cuts exactly there.
            let got = buckets(&store, &format!("interval=day&tz={tz}&created_after={}", times[1]));
            assert_eq!(got, vec![(day.to_owned(), 2)], "{tz}");
        }
    }

    #[test]
    fn months_and_weeks_bucket_refunds_at_their_edges() {
        let (_dir, store) = store_with(&[
            "2025-01-31T23:59:59.999+01:00",
            "2025-02-01T00:00:00+01:00",
            "2025-12-28T23:59:59.999+01:00", // Sunday
            "2025-12-29T00:00:00+01:00",     // Monday
            "2026-01-01T00:00:00+01:00",     // Thursday, same ISO week
        ]);
        assert_eq!(
            buckets(&store, "interval=month&tz=Europe/Berlin"),
            vec![
                ("2025-01-01T00:00:00.000+01:00".to_owned(), 1),
                ("2025-02-01T00:00:00.000+01:00".to_owned(), 1),
                ("2025-12-01T00:00:00.000+01:00".to_owned(), 2),
                ("2026-01-01T00:00:00.000+01:00".to_owned(), 1),
            ]
        );
        let weeks = buckets(&store, "interval=week&tz=Europe/Berlin&created_after=2025-12-01");
        assert_eq!(
            weeks,
            vec![("2025-12-22T00:00:00.000+01:00".to_owned(), 1), ("2025-12-29T00:00:00.000+01:00".to_owned(), 2)]
        );
    }

    #[test]
    fn more_than_a_thousand_periods_is_refused_on_interval() {
        let (_dir, store) = store_with(&["2025-01-01T00:00:00Z", "2025-03-01T00:00:00Z"]);
        let params = Params::parse(Some("interval=hour"), KNOWN).unwrap();
        let txn = store.read().unwrap();
        let error = summarize(&txn, &[store.tenant_no("org_1").unwrap()], &parse(&params).unwrap()).unwrap_err();
        assert!(
            matches!(&error, ApiError::InvalidParameter { param, message } if param == "interval" && message.contains("created")),
            "{error:?}"
        );
        // 1,000 hours exactly is fine; 1,001 is not.
        let (_dir, store) = store_with(&["2025-01-01T00:00:00Z", "2025-02-11T15:59:59Z"]);
        let txn = store.read().unwrap();
        assert!(summarize(&txn, &[store.tenant_no("org_1").unwrap()], &parse(&params).unwrap()).is_ok());
        let (_dir, store) = store_with(&["2025-01-01T00:00:00Z", "2025-02-11T16:00:00Z"]);
        let txn = store.read().unwrap();
        assert!(summarize(&txn, &[store.tenant_no("org_1").unwrap()], &parse(&params).unwrap()).is_err());
    }

    #[test]
    fn group_by_interval_and_tz_errors_name_their_parameter() {
        for (query, param) in [
            ("group_by=amount", "group_by"),
            ("group_by=status,status", "group_by"),
            ("group_by=status,currency,processor", "group_by"),
            ("group_by=status,", "group_by"),
            ("interval=year", "interval"),
            ("interval=Day", "interval"),
            ("tz=Europe/Nowhere", "tz"),
            ("tz=%2B05:00", "tz"),
            ("state=done", "state"),
        ] {
            let params = Params::parse(Some(query), KNOWN).unwrap();
            let error = parse(&params).unwrap_err();
            assert!(matches!(&error, ApiError::InvalidParameter { param: p, .. } if p == param), "{query}: {error:?}");
        }
        for query in [
            "limit=5",
            "ordering=created",
            "order=chronological",
            "offset=0",
            "page=1",
            "cursor=x",
            "starting_after=r",
            "ending_before=r",
            "page_size=5",
            "Group_by=status",
        ] {
            assert!(matches!(Params::parse(Some(query), KNOWN), Err(ApiError::UnknownParameter { .. })), "{query}");
        }
    }

    #[test]
    fn the_body_writes_sums_past_64_bits_as_exact_integers() {
        let request =
            parse(&Params::parse(Some("group_by=currency&interval=day&tz=Asia/Kolkata"), KNOWN).unwrap()).unwrap();
        let big = u128::from(u64::MAX) * 3;
        let amounts = vec![CurrencyAmount { currency: std::sync::Arc::from("USD"), amount: big, refunds: 3 }];
        let summary = Summary {
            count: 3,
            amounts: amounts.clone(),
            groups: vec![refunds_store::SummaryGroup {
                period_start: Some(ms("2025-11-30T18:30:00Z")),
                values: vec![Some("USD".to_owned())].into(),
                count: 3,
                amounts,
            }],
        };
        let body = render(&request, &summary);
        assert!(body.contains("\"amount\":55340232221128654845"), "{body}");
        assert_eq!(
            body,
            "{\"object\":\"summary\",\"count\":3,\"group_by\":[\"currency\"],\"interval\":\"day\",\"tz\":\"Asia/Kolkata\",\
             \"amounts\":[{\"currency\":\"USD\",\"amount\":55340232221128654845,\"refunds\":3}],\
             \"groups\":[{\"period_start\":\"2025-12-01T00:00:00.000+05:30\",\"currency\":\"USD\",\"count\":3,\
             \"amounts\":[{\"currency\":\"USD\",\"amount\":55340232221128654845,\"refunds\":3}]}]}"
        );
    }
}
