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

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use refunds_store::{CurrencyAmount, Dim, Filter, Store, Summary, SummaryRequest, TenantNo, summary_in};

use crate::AppState;
use crate::error::{ApiError, store_unavailable};
use crate::params::Params;

/// The list's filter parameters (every spelling), and the summary's own.
pub const KNOWN: &[&str] = &[
    "status",
    "state",
    "currency",
    "currency_code",
    "processor",
    "payment_method_type",
    "product_type",
    "order_no",
    "transaction_id",
    "payment_id",
    "external_refund_id",
    "store_id",
    "reference_id",
    "tenant_id",
    "owner_id",
    "created_after",
    "created_before",
    "created_at_min",
    "created_at_max",
    "from",
    "to",
    "create_time_start",
    "create_time_end",
    "created[gte]",
    "created[lte]",
    "amount_min",
    "amount_max",
    "minimum_amount",
    "maximum_amount",
    "group_by",
    "interval",
    "tz",
];

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
    let (body, last_applied_at) = crate::routes::read(&state, move |store| {
        let tenants = crate::list::tenant_scope(store, &caller, &params)?;
        let body = execute(store, &tenants, &request)?;
        Ok((body, store.last_applied_at()))
    })
    .await?;
    Ok((crate::routes::freshness_headers(&state, last_applied_at), body).into_response())
}

/// Runs the summary on one read snapshot and renders the response body.
pub fn execute(store: &Store, tenants: &[(String, TenantNo)], request: &SummaryQuery) -> Result<String, ApiError> {
    let txn = store.read().map_err(|e| store_unavailable(&e))?;
    let tenant_nos: Vec<TenantNo> = tenants.iter().map(|(_, n)| *n).collect();
    let summary = summarize(&txn, &tenant_nos, request)?;
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
        let start = self.start_of(ms);
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
        (start, end.max(start + 1))
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
                let hour = date.and_hms_opt(local.hour(), 0, 0).expect("a whole hour");
                match self.tz.from_local_datetime(&hour) {
                    LocalResult::Single(t) => t.timestamp_millis(),
                    // The repeated hour: the occurrence `ms` is in.
                    LocalResult::Ambiguous(a, b) => {
                        let (a, b) = (a.timestamp_millis(), b.timestamp_millis());
                        if b.max(a) <= ms { b.max(a) } else { b.min(a) }
                    }
                    LocalResult::None => self.first_instant(hour).min(ms),
                }
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
    out.push_str(&serde_json::to_string(s).expect("a string serializes"));
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
        out.push_str(&format!(",\"amount\":{},\"refunds\":{}}}", a.amount, a.refunds));
    }
    out.push(']');
}

/// The response body. Written by hand: sums are u128 and must stay exact
/// JSON integers, which `serde_json::Value` cannot hold.
pub fn render(request: &SummaryQuery, summary: &Summary) -> String {
    let calendar = request.interval.map(|interval| Calendar { interval, tz: request.tz });
    let mut out = String::with_capacity(256 + summary.groups.len() * 160);
    out.push_str(&format!("{{\"object\":\"summary\",\"count\":{},\"group_by\":[", summary.count));
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
    for (i, group) in summary.groups.iter().enumerate() {
        out.push_str(if i > 0 { ",{" } else { "{" });
        if let (Some(calendar), Some(start)) = (&calendar, group.period_start) {
            out.push_str("\"period_start\":");
            push_json_str(&mut out, &calendar.render(start));
            out.push(',');
        }
        for (dim, value) in request.group_by.iter().zip(&group.values) {
            push_json_str(&mut out, dim.name());
            out.push(':');
            match value {
                Some(v) => push_json_str(&mut out, v),
                None => out.push_str("null"),
            }
            out.push(',');
        }
        out.push_str(&format!("\"count\":{},\"amounts\":", group.count));
        push_amounts(&mut out, &group.amounts);
        out.push('}');
    }
    out.push_str("]}");
    out
}
