//! `refund-projector generate`: a seeded, streaming, realistic synthetic
//! refund event stream (NDJSON, one event per line).
//!
//! Design:
//! - Refund `k` of `N` is planned from the main RNG stream only: its tenant
//!   (Zipf-skewed over 40 tenants), attributes, outcome and the timestamps of
//!   its events. Its queued event happens at about
//!   `2024-01-01 + k * 2 years / N` (plus jitter); later events seconds to days
//!   after. Every event is rendered to its final line when planned.
//! - Planned events wait in a min-heap keyed by arrival time. Before refund `k`
//!   is planned, every pending event that arrives before anything refund `k`
//!   or a later refund can produce is written, so the stream comes out in
//!   exact arrival order while memory holds only the refunds in flight
//!   (a few days' worth), never all `N`.
//! - Noise sits behind that, on separate RNG streams (ChaCha stream ids), so
//!   the set of distinct valid events depends only on `(refunds, seed)`:
//!   duplicates (same bytes, or the same JSON with keys reordered and other
//!   whitespace), invalid lines (each carries the marker `inv_<reason>_`,
//!   which valid lines never contain), and a shuffle window.
//! - Ids are unique by construction: a bijective mix of the refund index (and
//!   event index) with a seed-derived key, written in base 62.
//!
//! Mix (per refund): outcome completed 85% / failed 12% / cancelled 3%, plus
//! 1.5% left in flight (queued or processing); processing skipped 20% (75% for
//! cancellations); queued event lost 1%, late 2%; a second, conflicting
//! terminal event 1%. Invalid lines: the first five cover every reason, then
//! every 50th is `too_large`, the rest malformed_json 30%, schema_violation
//! 35%, unknown_event_type 20%, unsupported_schema_version 15%.

#![allow(dead_code)]

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io::{self, Write};

use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use refunds_domain::Timestamp;
use serde_json::{Map, Value, json};

/// Default probability of a duplicate after each valid event.
pub const DEFAULT_DUP_RATE: f64 = 0.02;
/// Default shuffle window, in lines.
pub const DEFAULT_SHUFFLE_WINDOW: usize = 64;
/// Default probability of an invalid line after each valid event.
pub const DEFAULT_INVALID_RATE: f64 = 0.002;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// Number of refunds (about three events each).
    pub refunds: u64,
    pub seed: u64,
    /// Probability, per valid event, of also writing a duplicate of it.
    pub dup_rate: f64,
    /// Lines go through a buffer of this many lines, written in random order
    /// (0 or 1: no reordering).
    pub shuffle_window: usize,
    /// Probability, per valid event, of also writing one invalid line.
    pub invalid_rate: f64,
}

impl GenerateParams {
    /// `refunds` refunds from `seed`, with the default noise.
    pub fn new(refunds: u64, seed: u64) -> GenerateParams {
        GenerateParams {
            refunds,
            seed,
            dup_rate: DEFAULT_DUP_RATE,
            shuffle_window: DEFAULT_SHUFFLE_WINDOW,
            invalid_rate: DEFAULT_INVALID_RATE,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenerateSummary {
    pub refunds: u64,
    /// Distinct valid events (each written once, plus its duplicates).
    pub valid_events: u64,
    /// Extra copies of valid events.
    pub duplicates: u64,
    /// Invalid lines.
    pub invalid: u64,
    /// All lines written.
    pub lines: u64,
}

/// Writes the event stream described by `params` to `out`, one event per
/// `\n`-terminated line. Wrap `out` in a `BufWriter`: lines are written with
/// two small `write_all` calls each.
pub fn generate<W: Write>(params: &GenerateParams, out: W) -> io::Result<GenerateSummary> {
    generate_inner(params, out).map(|(summary, _)| summary)
}

/// Internal figures, for tests.
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    /// Most events waiting in the heap at once.
    peak_pending: usize,
}

fn generate_inner<W: Write>(params: &GenerateParams, out: W) -> io::Result<(GenerateSummary, Stats)> {
    for (name, rate) in [("dup_rate", params.dup_rate), ("invalid_rate", params.invalid_rate)] {
        if !(0.0..=1.0).contains(&rate) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name} must be between 0 and 1, got {rate}"),
            ));
        }
    }
    let mut planner = Planner::new(params.refunds, params.seed);
    let mut emitter = Emitter::new(params, out);
    let mut heap: BinaryHeap<Pending> = BinaryHeap::new();
    let mut batch: Vec<Pending> = Vec::with_capacity(8);
    let mut stats = Stats::default();
    for k in 0..params.refunds {
        let watermark = planner.plan_refund(k, &mut batch);
        while heap.peek().is_some_and(|p| p.key < watermark) {
            let pending = heap.pop().expect("peeked");
            emitter.emit_valid(&pending, &planner.tenants)?;
        }
        heap.extend(batch.drain(..));
        stats.peak_pending = stats.peak_pending.max(heap.len());
    }
    while let Some(pending) = heap.pop() {
        emitter.emit_valid(&pending, &planner.tenants)?;
    }
    let mut summary = emitter.finish()?;
    summary.refunds = params.refunds;
    Ok((summary, stats))
}

// ---------------------------------------------------------------------------
// Time

const SECOND: i64 = 1_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// 2024-01-01T00:00:00Z.
const START_MS: i64 = 1_704_067_200_000;
/// 2026-01-01T00:00:00Z.
const END_MS: i64 = 1_767_225_600_000;

/// How an `occurred_at` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TsFormat {
    /// 0, 3 or 6 fraction digits (6: three extra sub-millisecond digits).
    frac_digits: u8,
    /// Sub-millisecond digits for `frac_digits == 6`.
    micros: u16,
    /// Offset from UTC in minutes; `None` writes `Z`.
    offset_minutes: Option<i16>,
    /// Lower-case `t` and `z`.
    lower: bool,
}

impl TsFormat {
    const MILLIS_Z: TsFormat = TsFormat { frac_digits: 3, micros: 0, offset_minutes: None, lower: false };

    /// The instant this format can represent for `ms` (seconds drop the
    /// milliseconds).
    fn representable(self, ms: i64) -> i64 {
        if self.frac_digits == 0 { ms.div_euclid(SECOND) * SECOND } else { ms }
    }
}

fn random_ts_format(rng: &mut ChaCha8Rng) -> TsFormat {
    const OFFSETS: [i16; 8] = [120, -300, 330, 540, -180, 60, 0, -420];
    let roll = rng.random_range(0..100u32);
    let frac = |rng: &mut ChaCha8Rng| [0u8, 3, 3, 6][rng.random_range(0..4usize)];
    let mut format = TsFormat::MILLIS_Z;
    match roll {
        0..80 => {}
        80..87 => format.frac_digits = 0,
        87..93 => format.frac_digits = 6,
        93..98 => {
            format.frac_digits = frac(rng);
            format.offset_minutes = Some(OFFSETS[rng.random_range(0..OFFSETS.len())]);
        }
        _ => {
            format.frac_digits = frac(rng);
            format.lower = true;
        }
    }
    if format.frac_digits == 6 {
        format.micros = rng.random_range(0..1000u16);
    }
    format
}

fn push_digits(buf: &mut String, value: i64, width: u32) {
    let mut div = 10i64.pow(width - 1);
    let value = value.rem_euclid(10i64.pow(width));
    while div > 0 {
        let digit = u8::try_from((value / div) % 10).expect("a digit");
        buf.push(char::from(b'0' + digit));
        div /= 10;
    }
}

/// Writes `ms` (UTC milliseconds) in `format`; milliseconds are dropped when
/// the format has no fraction.
fn push_timestamp(buf: &mut String, ms: i64, format: TsFormat) {
    let offset = i64::from(format.offset_minutes.unwrap_or(0));
    // The domain's rendering, `YYYY-MM-DDTHH:MM:SS.sssZ`, of the local time.
    let local =
        Timestamp::from_millis(ms + offset * MINUTE).expect("generated times are within years 0000-9999").to_string();
    buf.push_str(&local[..10]);
    buf.push(if format.lower { 't' } else { 'T' });
    buf.push_str(&local[11..19]);
    if format.frac_digits >= 3 {
        buf.push('.');
        buf.push_str(&local[20..23]);
        if format.frac_digits == 6 {
            push_digits(buf, i64::from(format.micros), 3);
        }
    }
    match format.offset_minutes {
        None => buf.push(if format.lower { 'z' } else { 'Z' }),
        Some(minutes) => {
            buf.push(if minutes < 0 { '-' } else { '+' });
            let minutes = i64::from(minutes).abs();
            push_digits(buf, minutes / 60, 2);
            buf.push(':');
            push_digits(buf, minutes % 60, 2);
        }
    }
}

// ---------------------------------------------------------------------------
// Small helpers

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `len` random base-62 characters, ten from each 64-bit draw.
fn push_base62_random(buf: &mut String, rng: &mut ChaCha8Rng, len: usize) {
    let mut left = len;
    while left > 0 {
        let mut bits = rng.next_u64();
        for _ in 0..left.min(10) {
            buf.push(char::from(BASE62[usize::try_from(bits % 62).expect("< 62")]));
            bits /= 62;
        }
        left = left.saturating_sub(10);
    }
}

/// `value` in exactly 11 base-62 digits (62^11 > 2^64), so distinct values
/// give distinct strings.
fn push_base62_u64(buf: &mut String, mut value: u64) {
    let mut digits = [b'0'; 11];
    for slot in digits.iter_mut().rev() {
        *slot = BASE62[usize::try_from(value % 62).expect("< 62")];
        value /= 62;
    }
    buf.extend(digits.iter().map(|&b| char::from(b)));
}

/// A bijection on u64 (the splitmix64 finalizer).
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform draw in `[0, 1)` mapped log-uniformly onto `[low, high]`.
#[allow(clippy::cast_possible_truncation)] // bounded by `high`
fn log_uniform(rng: &mut ChaCha8Rng, low: i64, high: i64) -> i64 {
    let (lo, hi) = ((low as f64).ln(), (high as f64).ln());
    let value = (lo + rng.random::<f64>() * (hi - lo)).exp();
    (value as i64).clamp(low, high)
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, table: &[(T, u32)]) -> T {
    let total: u32 = table.iter().map(|(_, w)| w).sum();
    let mut roll = rng.random_range(0..total);
    for &(item, weight) in table {
        if roll < weight {
            return item;
        }
        roll -= weight;
    }
    unreachable!("roll < total")
}

/// Appends `text` as a JSON string literal.
fn push_json_str(buf: &mut String, text: &str) {
    buf.push('"');
    for ch in text.chars() {
        match ch {
            '"' => buf.push_str("\\\""),
            '\\' => buf.push_str("\\\\"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            '\t' => buf.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                buf.push_str("\\u00");
                push_digits(buf, i64::from(u32::from(c) >> 4), 1);
                buf.push(char::from(BASE62[usize::try_from(u32::from(c) & 15).expect("< 16")]));
            }
            c => buf.push(c),
        }
    }
    buf.push('"');
}

/// A JSON object written field by field into a line.
struct ObjectWriter<'a> {
    buf: &'a mut String,
    first: bool,
}

impl<'a> ObjectWriter<'a> {
    fn open(buf: &'a mut String) -> ObjectWriter<'a> {
        buf.push('{');
        ObjectWriter { buf, first: true }
    }

    fn key(&mut self, key: &str) -> &mut String {
        if !self.first {
            self.buf.push(',');
        }
        self.first = false;
        self.buf.push('"');
        self.buf.push_str(key);
        self.buf.push_str("\":");
        self.buf
    }

    fn str(&mut self, key: &str, value: &str) {
        push_json_str(self.key(key), value);
    }

    fn num(&mut self, key: &str, value: u64) {
        let buf = self.key(key);
        let mut digits = [0u8; 20];
        let mut len = 0;
        let mut v = value;
        loop {
            digits[len] = b'0' + u8::try_from(v % 10).expect("a digit");
            len += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        buf.extend(digits[..len].iter().rev().map(|&b| char::from(b)));
    }

    fn raw(&mut self, key: &str, json: &str) {
        self.key(key).push_str(json);
    }

    fn close(self) {
        self.buf.push('}');
    }
}

// ---------------------------------------------------------------------------
// Catalogs

const TENANTS: usize = 40;
/// Zipf exponent: with 40 tenants the biggest holds about 30% of refunds.
const TENANT_ZIPF: f64 = 1.2;

const CURRENCIES: [(&str, u32); 11] = [
    ("USD", 48),
    ("EUR", 18),
    ("GBP", 10),
    ("CAD", 6),
    ("AUD", 5),
    ("JPY", 5),
    ("BRL", 3),
    ("CHF", 2),
    ("SEK", 1),
    ("KWD", 1),
    ("MXN", 1),
];
const PROCESSORS: [(&str, u32); 7] =
    [("stripe", 34), ("adyen", 20), ("paypal", 18), ("braintree", 10), ("checkout", 9), ("worldpay", 7), ("klarna", 2)];
const PAYMENT_METHODS: [(&str, u32); 5] =
    [("credit_card", 45), ("debit_card", 20), ("wallet", 15), ("bank_transfer", 12), ("bnpl", 8)];
const PRODUCT_TYPES: [(&str, u32); 4] =
    [("e_commerce", 55), ("subscription", 20), ("marketplace", 15), ("in_store", 10)];
const REASONS: [(&str, u32); 5] =
    [("requested_by_customer", 50), ("product_defective", 18), ("duplicate", 12), ("fraudulent", 6), ("other", 14)];
const FAILURE_REASONS: [(&str, u32); 7] = [
    ("insufficient_funds", 25),
    ("processor_declined", 25),
    ("expired_or_canceled_card", 15),
    ("account_closed", 12),
    ("lost_or_stolen_card", 8),
    ("charge_disputed", 8),
    ("unknown", 7),
];
const FIRST_NAMES: [&str; 8] = ["ana", "ben", "chloe", "dmitri", "emeka", "fatima", "goran", "hana"];
const LAST_NAMES: [&str; 8] = ["silva", "okafor", "nguyen", "muller", "kowalski", "tanaka", "garcia", "smith"];
const EMAIL_DOMAINS: [&str; 4] = ["example.com", "acme.test", "shop.example.org", "corp.test"];
const SYSTEM_ACTORS: [&str; 4] =
    ["sys_auto_refund", "sys_chargeback_sync", "sys_fraud_engine", "sys_subscription_cancel"];
const CHANNELS: [&str; 4] = ["email", "chat", "phone", "web"];
const NOTES: [&str; 6] = [
    "customer returned the item",
    "Kunde hat die Ware zurückgeschickt",
    "colis endommagé à la livraison",
    "返品を受け付けました",
    "customer said \"wrong size\"",
    "partial refund: shipping kept",
];
const RESOLUTIONS: [&str; 4] = ["auto_approved", "agent_approved", "escalated", "closed"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Queued,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl Kind {
    fn wire(self) -> &'static str {
        match self {
            Kind::Queued => "refund.queued",
            Kind::Processing => "refund.processing",
            Kind::Completed => "refund.completed",
            Kind::Failed => "refund.failed",
            Kind::Cancelled => "refund.cancelled",
        }
    }
}

// ---------------------------------------------------------------------------
// Planning valid events (main RNG stream only)

/// One valid event, rendered, waiting for its arrival time.
struct Pending {
    /// Arrival time (UTC ms): the order of the stream.
    key: i64,
    /// Tie-breaker: planning order.
    seq: u64,
    line: String,
    /// For invalid lines that pretend to belong to the same refund.
    refund_id: String,
    tenant: usize,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.key, self.seq) == (other.key, other.seq)
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    /// Reversed, so `BinaryHeap` pops the earliest arrival.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.key, other.seq).cmp(&(self.key, self.seq))
    }
}

/// The attributes a refund keeps across its events.
struct Refund {
    id: String,
    tenant: usize,
    currency: &'static str,
    processor: &'static str,
    amount: u64,
    original_amount: u64,
    order_no: String,
    transaction_id: String,
    external_refund_id: String,
    payment_method: &'static str,
    product_type: &'static str,
    store_id: Option<String>,
    reference_id: Option<String>,
    reason: &'static str,
    failure_reason: &'static str,
    initiated_by: Option<String>,
    metadata: Option<String>,
    ticket: u32,
}

/// One event of a refund's plan.
#[derive(Debug, Clone, Copy)]
struct PlannedEvent {
    kind: Kind,
    /// The instant written in `occurred_at` (UTC ms).
    at: i64,
    format: TsFormat,
    /// Arrival time: `at`, except for a late queued event.
    arrival: i64,
    /// Carry amount and currency (the first event of a refund whose queued
    /// event is lost).
    force_amount: bool,
}

struct Planner {
    rng: ChaCha8Rng,
    refunds: u64,
    tenants: Vec<String>,
    tenant_cdf: Vec<f64>,
    refund_key: u64,
    event_key: u64,
    prev_t0: i64,
    seq: u64,
    plan: Vec<PlannedEvent>,
}

impl Planner {
    fn new(refunds: u64, seed: u64) -> Planner {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tenants: Vec<String> = Vec::with_capacity(TENANTS);
        while tenants.len() < TENANTS {
            let mut name = String::from("org_");
            push_base62_random(&mut name, &mut rng, 10);
            if !tenants.contains(&name) {
                tenants.push(name);
            }
        }
        let mut tenant_cdf = Vec::with_capacity(TENANTS);
        let mut total = 0.0;
        for rank in 1..=TENANTS {
            total += (rank as f64).powf(-TENANT_ZIPF);
            tenant_cdf.push(total);
        }
        for value in &mut tenant_cdf {
            *value /= total;
        }
        Planner {
            refund_key: rng.random(),
            event_key: rng.random(),
            rng,
            refunds,
            tenants,
            tenant_cdf,
            prev_t0: START_MS,
            seq: 0,
            plan: Vec::with_capacity(8),
        }
    }

    /// Plans refund `k` into `batch` and returns the watermark: no event of
    /// this refund or any later one arrives before it.
    fn plan_refund(&mut self, k: u64, batch: &mut Vec<Pending>) -> i64 {
        let span = u128::try_from(END_MS - START_MS).expect("positive");
        let n = u128::from(self.refunds.max(1));
        let step = i64::try_from(span / n).expect("fits");
        let base = START_MS + i64::try_from(u128::from(k) * span / n).expect("fits");
        let rng = &mut self.rng;

        // Usually just after its slot; sometimes at the very same millisecond
        // as the previous refund (a batch submitted at once).
        let t0 = if k > 0 && rng.random_bool(0.01) {
            self.prev_t0
        } else {
            base + rng.random_range(0..=(2 * step).clamp(1, 6 * HOUR))
        };
        self.prev_t0 = t0;

        let refund = Self::refund_attributes(rng, k, self.refund_key, &self.tenant_cdf);

        // Outcome and lifecycle shape.
        let stuck = rng.random_bool(0.015);
        let final_kind = if stuck {
            if rng.random_bool(0.4) { Kind::Queued } else { Kind::Processing }
        } else {
            pick(rng, &[(Kind::Completed, 850), (Kind::Failed, 120), (Kind::Cancelled, 30)])
        };
        let has_processing = match final_kind {
            Kind::Queued => false,
            Kind::Processing => true,
            Kind::Cancelled => rng.random_bool(0.25),
            _ => rng.random_bool(0.8),
        };
        let has_later = final_kind != Kind::Queued;
        let lost_queued = has_later && rng.random_bool(0.01);
        let late_queued = has_later && !lost_queued && rng.random_bool(0.02);
        let double_terminal = !stuck && rng.random_bool(0.01);

        let plan = &mut self.plan;
        plan.clear();
        let mut push = |rng: &mut ChaCha8Rng, kind: Kind, at: i64| {
            let format = random_ts_format(rng);
            let at = format.representable(at);
            plan.push(PlannedEvent { kind, at, format, arrival: at, force_amount: false });
        };
        push(rng, Kind::Queued, t0);
        let mut last = t0;
        if has_processing {
            last += log_uniform(rng, SECOND, 2 * HOUR);
            push(rng, Kind::Processing, last);
        }
        if !stuck {
            if double_terminal {
                // A processor reports one outcome, then another (say `failed`
                // after `completed`); the later one wins.
                let first = match final_kind {
                    Kind::Completed => {
                        if rng.random_bool(0.7) {
                            Kind::Failed
                        } else {
                            Kind::Cancelled
                        }
                    }
                    Kind::Failed => Kind::Completed,
                    _ => Kind::Failed,
                };
                last += log_uniform(rng, SECOND, 3 * DAY);
                push(rng, first, last);
                last += log_uniform(rng, MINUTE, 5 * DAY);
            } else if final_kind == Kind::Cancelled {
                last += log_uniform(rng, MINUTE, 2 * DAY);
            } else {
                last += log_uniform(rng, SECOND, 3 * DAY);
            }
            push(rng, final_kind, last);
        }
        if lost_queued {
            plan.remove(0);
            plan[0].force_amount = true;
        } else if late_queued {
            // Arrives after the later events, but happened just before the
            // first of them.
            let next_at = plan[1].at;
            let last_arrival = plan.iter().map(|e| e.arrival).max().expect("non-empty");
            let queued = &mut plan[0];
            queued.at = queued.format.representable(next_at - rng.random_range(1..=1_500));
            queued.arrival = last_arrival + log_uniform(rng, SECOND, HOUR);
        }

        for (index, event) in plan.iter().enumerate() {
            let mut line = String::with_capacity(640);
            let event_index = u64::try_from(index).expect("small");
            Self::render(
                rng,
                &refund,
                &self.tenants[refund.tenant],
                event,
                mix64((k << 3 | event_index).wrapping_add(self.event_key)),
                &mut line,
            );
            batch.push(Pending {
                key: event.arrival,
                seq: self.seq,
                line,
                refund_id: refund.id.clone(),
                tenant: refund.tenant,
            });
            self.seq += 1;
        }
        base.min(t0) - SECOND
    }

    fn refund_attributes(rng: &mut ChaCha8Rng, k: u64, refund_key: u64, tenant_cdf: &[f64]) -> Refund {
        let mut id = String::with_capacity(16);
        id.push_str("ref_");
        push_base62_random(&mut id, rng, 1);
        push_base62_u64(&mut id, mix64(k.wrapping_add(refund_key)));

        let roll: f64 = rng.random();
        let tenant = tenant_cdf.partition_point(|&c| c <= roll).min(TENANTS - 1);

        let amount = match rng.random_range(0..100u32) {
            0..3 => rng.random_range(1..100),
            3..90 => log_uniform(rng, 100, 50_000),
            90..99 => log_uniform(rng, 50_000, 2_000_000),
            _ => log_uniform(rng, 2_000_000, 50_000_000),
        };
        let amount = u64::try_from(amount).expect("positive");
        let original_amount = if rng.random_bool(0.45) {
            amount
        } else {
            amount + u64::try_from(log_uniform(rng, 1, 9 * 1_000)).expect("positive") * amount / 1_000
        };

        let mut transaction_id = String::from("ch_");
        push_base62_random(&mut transaction_id, rng, 16);
        let mut external_refund_id = String::from("re_");
        push_base62_random(&mut external_refund_id, rng, 16);

        let product_type = pick(rng, &PRODUCT_TYPES);
        let store_id = (product_type == "in_store" || rng.random_bool(0.67))
            .then(|| format!("store{}", rng.random_range(1..=500u32)));
        let reference_id = rng.random_bool(0.5).then(|| format!("reference_id_{}", rng.random_range(0..1_000_000u32)));

        let initiated_by = rng.random_bool(0.8).then(|| {
            let mut json = String::with_capacity(96);
            let mut obj = ObjectWriter::open(&mut json);
            match rng.random_range(0..100u32) {
                0..55 => {
                    obj.str("type", "user");
                    let mut id = String::from("usr_");
                    push_base62_random(&mut id, rng, 8);
                    obj.str("id", &id);
                    if rng.random_bool(0.8) {
                        let email = format!(
                            "{}.{}@{}",
                            FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())],
                            LAST_NAMES[rng.random_range(0..LAST_NAMES.len())],
                            EMAIL_DOMAINS[rng.random_range(0..EMAIL_DOMAINS.len())]
                        );
                        obj.str("email", &email);
                    }
                }
                55..80 => {
                    obj.str("type", "system");
                    obj.str("id", SYSTEM_ACTORS[rng.random_range(0..SYSTEM_ACTORS.len())]);
                }
                _ => {
                    obj.str("type", "api");
                    let mut id = String::from("key_");
                    push_base62_random(&mut id, rng, 10);
                    obj.str("id", &id);
                    if rng.random_bool(0.2) {
                        obj.str("email", "ops@example.com");
                    }
                }
            }
            obj.close();
            json
        });

        let ticket = rng.random_range(1_000..1_000_000u32);
        let metadata = rng.random_bool(0.6).then(|| {
            let mut json = String::with_capacity(128);
            let mut obj = ObjectWriter::open(&mut json);
            obj.str("ticketId", &format!("SUP-{ticket}"));
            if rng.random_bool(0.4) {
                obj.str("channel", CHANNELS[rng.random_range(0..CHANNELS.len())]);
            }
            if rng.random_bool(0.15) {
                obj.str("note", NOTES[rng.random_range(0..NOTES.len())]);
            }
            if rng.random_bool(0.1) {
                obj.raw("tags", r#"["vip","repeat_customer"]"#);
            }
            if rng.random_bool(0.05) {
                obj.raw("source", r#"{"app":"support-dashboard","version":"3.2.1"}"#);
            }
            obj.close();
            json
        });

        Refund {
            id,
            tenant,
            currency: pick(rng, &CURRENCIES),
            processor: pick(rng, &PROCESSORS),
            amount,
            original_amount,
            order_no: format!("ORDER-{}", rng.random_range(10_000..100_000_000u64)),
            transaction_id,
            external_refund_id,
            payment_method: pick(rng, &PAYMENT_METHODS),
            product_type,
            store_id,
            reference_id,
            reason: pick(rng, &REASONS),
            failure_reason: pick(rng, &FAILURE_REASONS),
            initiated_by,
            metadata,
            ticket,
        }
    }

    /// Renders one valid event as a compact JSON line.
    fn render(
        rng: &mut ChaCha8Rng,
        refund: &Refund,
        tenant: &str,
        event: &PlannedEvent,
        event_code: u64,
        line: &mut String,
    ) {
        let mut top = ObjectWriter::open(line);
        match rng.random_range(0..100u32) {
            0..90 => top.num("schema_version", 1),
            90..97 => {}
            _ => top.raw("schema_version", "null"),
        }
        let buf = top.key("event_id");
        buf.push_str("\"evt_");
        push_base62_random(buf, rng, 5);
        push_base62_u64(buf, event_code);
        buf.push('"');
        top.str("type", event.kind.wire());
        let buf = top.key("occurred_at");
        buf.push('"');
        push_timestamp(buf, event.at, event.format);
        buf.push('"');
        if rng.random_bool(0.03) {
            top.str("producer", "refund-service@1.14.2");
        }

        let buf = top.key("refund");
        let mut r = ObjectWriter::open(buf);
        r.str("id", &refund.id);
        r.str("tenant_id", tenant);

        let queued = event.kind == Kind::Queued;
        let snapshot = queued || rng.random_bool(0.35);
        if queued || event.force_amount || rng.random_bool(0.3) {
            r.num("amount", refund.amount);
            let currency = match rng.random_range(0..100u32) {
                0..5 => refund.currency.to_ascii_lowercase(),
                5..7 => {
                    let mut c = refund.currency.to_ascii_lowercase();
                    c[..1].make_ascii_uppercase();
                    c
                }
                _ => refund.currency.to_owned(),
            };
            r.str("currency", &currency);
            r.num("original_amount", refund.original_amount);
        }
        if snapshot {
            r.str("order_no", &refund.order_no);
        }
        if snapshot || rng.random_bool(0.4) {
            r.str("transaction_id", &refund.transaction_id);
        }
        let external_p = match event.kind {
            Kind::Queued => 0.05,
            Kind::Processing => 0.85,
            Kind::Completed => 0.95,
            Kind::Failed => 0.5,
            Kind::Cancelled => 0.1,
        };
        if rng.random_bool(external_p) {
            r.str("external_refund_id", &refund.external_refund_id);
        }
        if snapshot || rng.random_bool(0.7) {
            match rng.random_range(0..100u32) {
                0..5 => {
                    let mut p = refund.processor.to_owned();
                    p[..1].make_ascii_uppercase();
                    r.str("processor", &p);
                }
                5..7 => r.str("processor", &refund.processor.to_ascii_uppercase()),
                _ => r.str("processor", refund.processor),
            }
        }
        if snapshot {
            r.str("payment_method_type", refund.payment_method);
            r.str("product_type", refund.product_type);
            if let Some(store) = &refund.store_id {
                r.str("store_id", store);
            }
            if let Some(reference) = &refund.reference_id {
                r.str("reference_id", reference);
            }
            r.str("reason", refund.reason);
        }
        if event.kind == Kind::Failed {
            r.str("failure_reason", refund.failure_reason);
        } else if rng.random_bool(0.15) {
            r.raw("failure_reason", "null");
        }
        if let Some(initiated_by) = refund.initiated_by.as_deref().filter(|_| snapshot) {
            r.raw("initiated_by", initiated_by);
        }
        if queued {
            if let Some(metadata) = &refund.metadata {
                r.raw("metadata", metadata);
            }
        } else if rng.random_bool(0.01) {
            r.raw("metadata", "{}");
        } else if refund.metadata.is_some() && rng.random_bool(0.15) {
            let buf = r.key("metadata");
            let mut m = ObjectWriter::open(buf);
            m.str("ticketId", &format!("SUP-{}", refund.ticket));
            m.str("resolution", RESOLUTIONS[rng.random_range(0..RESOLUTIONS.len())]);
            m.close();
        } else if let Some(metadata) = refund.metadata.as_deref().filter(|_| snapshot) {
            r.raw("metadata", metadata);
        }
        if rng.random_bool(0.02) {
            r.raw("livemode", "false");
        }
        r.close();
        top.close();
    }
}

// ---------------------------------------------------------------------------
// Noise and output (separate RNG streams)

const STREAM_DUP: u64 = 1;
const STREAM_SHUFFLE: u64 = 2;
const STREAM_INVALID: u64 = 3;

fn noise_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Lines out, through the shuffle window.
struct Sink<W: Write> {
    out: W,
    window: usize,
    buffer: Vec<Vec<u8>>,
    rng: ChaCha8Rng,
    lines: u64,
}

impl<W: Write> Sink<W> {
    fn write_now(&mut self, line: &[u8]) -> io::Result<()> {
        self.out.write_all(line)?;
        self.out.write_all(b"\n")?;
        self.lines += 1;
        Ok(())
    }

    fn line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.window <= 1 {
            return self.write_now(line);
        }
        if self.buffer.len() < self.window {
            self.buffer.push(line.to_vec());
            return Ok(());
        }
        let index = self.rng.random_range(0..self.buffer.len());
        let mut slot = std::mem::take(&mut self.buffer[index]);
        self.write_now(&slot)?;
        slot.clear();
        slot.extend_from_slice(line);
        self.buffer[index] = slot;
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        while !self.buffer.is_empty() {
            let index = self.rng.random_range(0..self.buffer.len());
            let line = self.buffer.swap_remove(index);
            self.write_now(&line)?;
        }
        self.out.flush()
    }
}

struct Emitter<W: Write> {
    sink: Sink<W>,
    dup_rate: f64,
    dup_rng: ChaCha8Rng,
    invalid_rate: f64,
    invalid: InvalidLines,
    summary: GenerateSummary,
}

impl<W: Write> Emitter<W> {
    fn new(params: &GenerateParams, out: W) -> Emitter<W> {
        Emitter {
            sink: Sink {
                out,
                window: params.shuffle_window,
                buffer: Vec::with_capacity(params.shuffle_window.min(1 << 16)),
                rng: noise_rng(params.seed, STREAM_SHUFFLE),
                lines: 0,
            },
            dup_rate: params.dup_rate,
            dup_rng: noise_rng(params.seed, STREAM_DUP),
            invalid_rate: params.invalid_rate,
            invalid: InvalidLines { rng: noise_rng(params.seed, STREAM_INVALID), count: 0 },
            summary: GenerateSummary::default(),
        }
    }

    fn emit_valid(&mut self, pending: &Pending, tenants: &[String]) -> io::Result<()> {
        self.sink.line(pending.line.as_bytes())?;
        self.summary.valid_events += 1;
        if self.dup_rate > 0.0 && self.dup_rng.random_bool(self.dup_rate) {
            if self.dup_rng.random_bool(0.5) {
                self.sink.line(pending.line.as_bytes())?;
            } else {
                let variant = reformat(&pending.line, &mut self.dup_rng);
                self.sink.line(variant.as_bytes())?;
            }
            self.summary.duplicates += 1;
        }
        if self.invalid_rate > 0.0 && self.invalid.rng.random_bool(self.invalid_rate) {
            let line = self.invalid.line(&pending.refund_id, &tenants[pending.tenant], pending.key);
            self.sink.line(&line)?;
            self.summary.invalid += 1;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<GenerateSummary> {
        self.sink.finish()?;
        self.summary.lines = self.sink.lines;
        Ok(self.summary)
    }
}

/// The same JSON value with its object keys reordered and other whitespace
/// (still one line).
fn reformat(line: &str, rng: &mut ChaCha8Rng) -> String {
    fn reorder(value: &mut Value, rng: &mut ChaCha8Rng) {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
                entries.shuffle(rng);
                for (_, v) in &mut entries {
                    reorder(v, rng);
                }
                *map = entries.into_iter().collect();
            }
            Value::Array(items) => items.iter_mut().for_each(|v| reorder(v, rng)),
            _ => {}
        }
    }
    let mut value: Value = serde_json::from_str(line).expect("a generated line is JSON");
    reorder(&mut value, rng);
    let compact = value.to_string();
    let style = rng.random_range(0..3u32);
    let mut out = String::with_capacity(compact.len() + compact.len() / 4);
    if rng.random_bool(0.2) {
        out.push(' ');
    }
    let (mut in_string, mut escaped) = (false, false);
    for ch in compact.chars() {
        if in_string {
            out.push(ch);
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_string = false;
            }
            continue;
        }
        match (ch, style) {
            ('"', _) => {
                in_string = true;
                out.push(ch);
            }
            (':' | ',', 0) => {
                out.push(ch);
                out.push(' ');
            }
            (':', 1) => out.push_str(" : "),
            ('{' | '[', 2) => {
                out.push(ch);
                out.push(' ');
            }
            ('}' | ']', 2) => {
                out.push(' ');
                out.push(ch);
            }
            (':' | ',', 2) => {
                out.push(ch);
                out.push('\t');
            }
            _ => out.push(ch),
        }
    }
    if rng.random_bool(0.2) {
        out.push(' ');
    }
    out
}

/// Invalid lines: every one carries `inv_<reason>_<n>` in its raw text.
struct InvalidLines {
    rng: ChaCha8Rng,
    count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Invalid {
    TooLarge,
    MalformedJson,
    UnsupportedSchemaVersion,
    UnknownEventType,
    SchemaViolation,
}

impl Invalid {
    fn code(self) -> &'static str {
        match self {
            Invalid::TooLarge => "too_large",
            Invalid::MalformedJson => "malformed_json",
            Invalid::UnsupportedSchemaVersion => "unsupported_schema_version",
            Invalid::UnknownEventType => "unknown_event_type",
            Invalid::SchemaViolation => "schema_violation",
        }
    }
}

/// The `refund` object of an invalid line's template.
fn refund_of(top: &mut Map<String, Value>) -> &mut Map<String, Value> {
    top.get_mut("refund").and_then(Value::as_object_mut).expect("refund object")
}

/// The contract's size limit for a message.
const MAX_LINE_BYTES: usize = 256 * 1024;

impl InvalidLines {
    fn line(&mut self, refund_id: &str, tenant: &str, at: i64) -> Vec<u8> {
        let n = self.count;
        self.count += 1;
        // The first five cover every reason; then about 2% are too large.
        let reason = match n {
            0 => Invalid::SchemaViolation,
            1 => Invalid::MalformedJson,
            2 => Invalid::UnknownEventType,
            3 => Invalid::UnsupportedSchemaVersion,
            4 => Invalid::TooLarge,
            _ if n % 50 == 49 => Invalid::TooLarge,
            _ => pick(
                &mut self.rng,
                &[
                    (Invalid::MalformedJson, 30),
                    (Invalid::UnsupportedSchemaVersion, 15),
                    (Invalid::UnknownEventType, 20),
                    (Invalid::SchemaViolation, 35),
                ],
            ),
        };
        let marker = format!("inv_{}_{n}", reason.code());
        let mut ts = String::with_capacity(24);
        push_timestamp(&mut ts, at, TsFormat::MILLIS_Z);
        let rng = &mut self.rng;
        let kind =
            pick(rng, &[("refund.queued", 3), ("refund.processing", 2), ("refund.completed", 3), ("refund.failed", 1)]);
        let mut refund = Map::new();
        refund.insert("id".into(), json!(refund_id));
        refund.insert("tenant_id".into(), json!(tenant));
        refund.insert("amount".into(), json!(rng.random_range(100..50_000u64)));
        refund.insert("currency".into(), json!("USD"));
        refund.insert("processor".into(), json!("stripe"));
        let mut top = Map::new();
        top.insert("schema_version".into(), json!(1));
        top.insert("event_id".into(), json!(marker));
        top.insert("type".into(), json!(kind));
        top.insert("occurred_at".into(), json!(ts));
        top.insert("refund".into(), Value::Object(refund));
        let compact = |top: &Map<String, Value>| Value::Object(top.clone()).to_string();

        match reason {
            Invalid::TooLarge => {
                // A huge attachment in metadata, spliced in as text: the
                // refund object is the last member, so the line ends in `}}`.
                let pad = MAX_LINE_BYTES + rng.random_range(1..20_000);
                let small = compact(&top);
                let mut text = String::with_capacity(small.len() + pad + 64);
                text.push_str(&small[..small.len() - 2]);
                text.push_str(r#","metadata":{"ticketId":"SUP-1","attachment":""#);
                text.push_str(&"A".repeat(pad));
                text.push_str(r#""}}}"#);
                if rng.random_bool(0.3) {
                    // Oversized and malformed: the size rule comes first.
                    text.truncate(text.len() - 3);
                }
                text.into_bytes()
            }
            Invalid::MalformedJson => {
                let text = compact(&top);
                match rng.random_range(0..100u32) {
                    0..35 => {
                        let after = text.find(&marker).expect("marker") + marker.len() + 1;
                        let cut = rng.random_range(after..text.len() - 1);
                        text.as_bytes()[..cut].to_vec()
                    }
                    35..60 => {
                        let garbage = ["}", ",", " x", "]", " {\"event_id\":\"again\"}", "garbage"];
                        format!("{text}{}", garbage[rng.random_range(0..garbage.len())]).into_bytes()
                    }
                    60..75 => {
                        // Invalid UTF-8 inside a string; the marker stays ASCII.
                        refund_of(&mut top).insert("metadata".into(), json!({"note": "@@BYTES@@"}));
                        let text = compact(&top);
                        let bad: [&[u8]; 4] = [b"\xff\xfe", b"caf\xc3", b"\xc3\x28", b"\xed\xa0\x80"];
                        let (head, tail) = text.split_once("@@BYTES@@").expect("placeholder");
                        let mut bytes = head.as_bytes().to_vec();
                        bytes.extend_from_slice(bad[rng.random_range(0..bad.len())]);
                        bytes.extend_from_slice(tail.as_bytes());
                        bytes
                    }
                    75..88 => text.replace('"', "'").into_bytes(),
                    _ => {
                        refund_of(&mut top).insert("amount".into(), json!("@@NAN@@"));
                        compact(&top).replace("\"@@NAN@@\"", "NaN").into_bytes()
                    }
                }
            }
            Invalid::UnsupportedSchemaVersion => {
                let versions = [
                    json!(2),
                    json!("1"),
                    json!(1.0),
                    json!(0),
                    json!(-1),
                    json!("v1"),
                    json!(true),
                    json!({"major": 1}),
                ];
                top.insert("schema_version".into(), versions[rng.random_range(0..versions.len())].clone());
                if rng.random_bool(0.3) {
                    // Also an unknown type: the version rule comes first.
                    top.insert("type".into(), json!("refund.refunded"));
                }
                compact(&top).into_bytes()
            }
            Invalid::UnknownEventType => {
                let types = [
                    "refund.refunded",
                    "REFUND.COMPLETED",
                    "refund.Completed",
                    "refund.succeeded",
                    "refund.canceled",
                    "charge.refunded",
                    "refund.updated",
                    "refund.queued ",
                    "",
                ];
                top.insert("type".into(), json!(types[rng.random_range(0..types.len())]));
                if rng.random_bool(0.2) {
                    // Also a bad amount: the type rule comes first.
                    refund_of(&mut top).insert("amount".into(), json!(0));
                }
                if rng.random_bool(0.2) {
                    top.remove("schema_version");
                }
                compact(&top).into_bytes()
            }
            Invalid::SchemaViolation => Self::schema_violation(rng, &mut top, &marker).into_bytes(),
        }
    }

    fn schema_violation(rng: &mut ChaCha8Rng, top: &mut Map<String, Value>, marker: &str) -> String {
        let refund = refund_of;
        match rng.random_range(0..30u32) {
            0 => {
                refund(top).insert("amount".into(), json!(0));
            }
            1 => {
                refund(top).insert("amount".into(), json!(-2500));
            }
            2 => {
                refund(top).insert("amount".into(), json!(2500.0));
            }
            3 => {
                refund(top).insert("amount".into(), json!("2500"));
            }
            4 => {
                refund(top).remove("tenant_id");
            }
            5 => {
                refund(top).insert("tenant_id".into(), Value::Null);
            }
            6 => {
                refund(top).insert("tenant_id".into(), json!(""));
            }
            7 => {
                refund(top).insert("currency".into(), json!("US"));
            }
            8 => {
                refund(top).insert("currency".into(), json!("USDT"));
            }
            9 => {
                refund(top).insert("currency".into(), json!("€UR"));
            }
            10 => {
                refund(top).insert("currency".into(), json!(840));
            }
            11 => {
                top.insert("type".into(), json!("refund.queued"));
                refund(top).remove("amount");
            }
            12 => {
                top.insert("type".into(), json!("refund.queued"));
                refund(top).remove("currency");
            }
            13 => {
                top.insert("occurred_at".into(), json!("2025-13-01T00:00:00Z"));
            }
            14 => {
                top.insert("occurred_at".into(), json!("2025-06-01T10:00:00"));
            }
            15 => {
                top.insert("occurred_at".into(), json!("2025-06-01 10:00:00Z"));
            }
            16 => {
                top.insert("occurred_at".into(), json!(1_748_772_000));
            }
            17 => {
                top.insert("occurred_at".into(), json!("2024-02-30T12:00:00.000Z"));
            }
            18 => {
                top.remove("type");
            }
            19 => {
                top.insert("type".into(), json!(42));
            }
            20 => {
                // The marker moves to refund.id.
                top.remove("event_id");
                refund(top).insert("id".into(), json!(marker));
            }
            21 => {
                top.insert("event_id".into(), json!(""));
                refund(top).insert("id".into(), json!(marker));
            }
            22 => {
                top.insert("event_id".into(), json!(format!("{marker}_{}", "x".repeat(130))));
            }
            23 => {
                top.remove("refund");
            }
            24 => {
                top.insert("refund".into(), json!([marker]));
            }
            25 => {
                // Valid JSON, not an object.
                return match rng.random_range(0..3u32) {
                    0 => json!([marker, {"type": "refund.completed"}]).to_string(),
                    1 => json!(marker).to_string(),
                    _ => json!([Value::Object(top.clone())]).to_string(),
                };
            }
            26 => {
                refund(top).insert("processor".into(), json!(""));
            }
            27 => {
                refund(top).insert("store_id".into(), json!("s".repeat(300)));
            }
            28 => {
                refund(top).insert("original_amount".into(), json!(-1));
            }
            _ => match rng.random_range(0..3u32) {
                0 => {
                    refund(top).insert("metadata".into(), json!("ticket SUP-1"));
                }
                1 => {
                    refund(top).insert("initiated_by".into(), json!("system"));
                }
                _ => {
                    refund(top).insert("metadata".into(), json!({"ticketId": "SUP-2", "log": "L".repeat(17 * 1024)}));
                }
            },
        }
        Value::Object(top.clone()).to_string()
    }
}

#[cfg(test)]
mod tests {
    //! Debug builds are slow at JSON, so the expensive checks share two
    //! cached runs of 6,000 refunds (about 17,000 events) and the 20,000-refund
    //! run only validates its invalid lines.

    use std::collections::{HashMap, HashSet};
    use std::sync::OnceLock;

    use refunds_domain::event::validate_value;
    use refunds_domain::{EventType, InvalidReason, RefundEvent, TextField, Timestamp, validate};

    use super::*;

    fn params(refunds: u64, seed: u64, dup_rate: f64, shuffle_window: usize, invalid_rate: f64) -> GenerateParams {
        GenerateParams { refunds, seed, dup_rate, shuffle_window, invalid_rate }
    }

    fn run(params: &GenerateParams) -> (Vec<u8>, GenerateSummary) {
        let mut out = Vec::new();
        let summary = generate(params, &mut out).expect("generate");
        (out, summary)
    }

    fn lines(bytes: &[u8]) -> Vec<&[u8]> {
        assert!(bytes.is_empty() || bytes.ends_with(b"\n"), "output ends with a newline");
        let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        lines.pop();
        lines
    }

    /// Substring search; fast on UTF-8 (the common case in debug builds).
    fn contains(haystack: &[u8], needle: &str) -> bool {
        match std::str::from_utf8(haystack) {
            Ok(text) => text.contains(needle),
            Err(_) => haystack.windows(needle.len()).any(|w| w == needle.as_bytes()),
        }
    }

    const REASONS: [(&str, InvalidReason); 5] = [
        ("too_large", InvalidReason::TooLarge),
        ("malformed_json", InvalidReason::MalformedJson),
        ("unsupported_schema_version", InvalidReason::UnsupportedSchemaVersion),
        ("unknown_event_type", InvalidReason::UnknownEventType),
        ("schema_violation", InvalidReason::SchemaViolation),
    ];

    /// The reason named by a line's `inv_<reason>_` marker.
    fn marker(line: &[u8]) -> Option<InvalidReason> {
        if !contains(line, "inv_") {
            return None;
        }
        let reason = REASONS.iter().find(|(code, _)| contains(line, &format!("inv_{code}_")));
        Some(reason.unwrap_or_else(|| panic!("a bad marker: {}", String::from_utf8_lossy(line))).1)
    }

    /// Checks a marked line: invalid, for the reason its marker names.
    fn check_invalid(line: &[u8]) -> InvalidReason {
        let expected = marker(line).expect("marked");
        let err = validate(line).expect_err("a marked line is invalid");
        let shown = String::from_utf8_lossy(&line[..line.len().min(300)]);
        assert_eq!(err.reason, expected, "{err}: {shown}");
        assert!(!line.iter().all(|b| *b == b' ' || *b == b'\t'), "not blank");
        assert!(!line.contains(&b'\r'));
        expected
    }

    /// Key order does not matter: objects with sorted keys.
    fn canonical(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), canonical(v))).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
            other => other.clone(),
        }
    }

    const N: u64 = 6_000;
    const SEED: u64 = 7;

    struct Clean {
        bytes: Vec<u8>,
        summary: GenerateSummary,
        stats: Stats,
        /// Each line, validated and parsed.
        events: Vec<(RefundEvent, Value)>,
    }

    fn clean() -> &'static Clean {
        static CLEAN: OnceLock<Clean> = OnceLock::new();
        CLEAN.get_or_init(|| {
            let mut bytes = Vec::new();
            let (summary, stats) = generate_inner(&params(N, SEED, 0.0, 0, 0.0), &mut bytes).expect("generate");
            let events = lines(&bytes)
                .into_iter()
                .map(|line| {
                    let value: Value = serde_json::from_slice(line).expect("JSON");
                    let event =
                        validate_value(&value).unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(line)));
                    (event, value)
                })
                .collect();
            Clean { bytes, summary, stats, events }
        })
    }

    fn noisy() -> &'static (Vec<u8>, GenerateSummary) {
        static NOISY: OnceLock<(Vec<u8>, GenerateSummary)> = OnceLock::new();
        NOISY.get_or_init(|| run(&params(N, SEED, 0.05, 50, 0.05)))
    }

    #[test]
    fn generate_is_deterministic() {
        let p = params(2_000, 99, 0.05, 40, 0.05);
        let (a, sa) = run(&p);
        let (b, sb) = run(&p);
        assert_eq!(sa, sb);
        assert!(a == b, "same params, same bytes");
        let (c, _) = run(&GenerateParams { seed: 100, ..p });
        assert!(a != c, "another seed, another stream");
    }

    #[test]
    fn generate_clean_run_is_all_valid_and_distinct() {
        let clean = clean();
        let summary = clean.summary;
        let text = std::str::from_utf8(&clean.bytes).expect("clean output is UTF-8");
        assert!(!text.contains("inv_"), "no valid line contains the invalid marker");
        assert_eq!(summary.refunds, N);
        assert_eq!(summary.lines, u64::try_from(clean.events.len()).unwrap());
        assert_eq!(summary.valid_events, summary.lines);
        assert_eq!((summary.duplicates, summary.invalid), (0, 0));
        assert!(summary.valid_events > 2 * N && summary.valid_events < 4 * N, "{summary:?}");
        let mut event_ids = HashSet::new();
        let mut refund_tenant = HashMap::new();
        for (event, value) in &clean.events {
            assert!(event_ids.insert(event.event_id.as_str()), "unique event ids");
            assert!(event.event_id.starts_with("evt_") && event.event_id.len() == 20, "{}", event.event_id);
            assert!(event.refund_id.starts_with("ref_") && event.refund_id.len() == 16, "{}", event.refund_id);
            assert!(event.tenant_id.starts_with("org_"));
            assert_eq!(
                refund_tenant.entry(event.refund_id.as_str()).or_insert(event.tenant_id.as_str()),
                &event.tenant_id,
                "a refund keeps its tenant"
            );
            if event.kind == EventType::Queued {
                assert!(event.fields.amount.is_some() && event.fields.currency.is_some());
            }
            assert_eq!(event.kind == EventType::Failed, event.fields.text(TextField::FailureReason).is_some());
            if let (Some(amount), Some(original)) = (event.fields.amount, event.fields.original_amount) {
                assert!(original >= amount);
            }
            for key in ["event_id", "type", "occurred_at", "refund"] {
                assert!(value.get(key).is_some(), "{key}");
            }
        }
        assert_eq!(refund_tenant.len(), usize::try_from(N).unwrap());
    }

    #[test]
    fn generate_noise_keeps_the_set_of_valid_events() {
        let clean = clean();
        let (noisy_bytes, noisy_summary) = noisy();
        assert_eq!(noisy_summary.valid_events, clean.summary.valid_events);
        let clean_lines = lines(&clean.bytes);
        let by_bytes: HashMap<&[u8], usize> = clean_lines.iter().enumerate().map(|(i, l)| (*l, i)).collect();
        let by_id: HashMap<&str, usize> =
            clean.events.iter().enumerate().map(|(i, (e, _))| (e.event_id.as_str(), i)).collect();
        let mut seen = vec![0usize; clean_lines.len()];
        let (mut exact, mut reformatted, mut invalid) = (0u64, 0u64, 0u64);
        let noisy_lines = lines(noisy_bytes);
        for line in &noisy_lines {
            if let Some(&i) = by_bytes.get(line) {
                seen[i] += 1;
                exact += 1;
            } else if marker(line).is_some() {
                check_invalid(line);
                invalid += 1;
            } else {
                // Not byte-identical to a clean line: the same JSON value.
                let value: Value = serde_json::from_slice(line).expect("JSON");
                let event = validate_value(&value).expect("valid");
                let i = by_id[event.event_id.as_str()];
                assert_eq!(canonical(&value), canonical(&clean.events[i].1));
                seen[i] += 1;
                reformatted += 1;
            }
        }
        assert!(seen.iter().all(|&n| n >= 1), "every valid event is there");
        assert_eq!(noisy_summary.lines, u64::try_from(noisy_lines.len()).unwrap());
        assert_eq!(noisy_summary.invalid, invalid);
        assert_eq!(noisy_summary.valid_events + noisy_summary.duplicates, exact + reformatted);
        let byte_copies = exact - noisy_summary.valid_events;
        assert!(byte_copies > 0 && reformatted > 0, "{byte_copies} byte copies, {reformatted} reformatted");
        let dup_share = noisy_summary.duplicates as f64 / noisy_summary.valid_events as f64;
        assert!((0.04..0.06).contains(&dup_share), "{dup_share}");
        let invalid_share = invalid as f64 / noisy_summary.valid_events as f64;
        assert!((0.04..0.06).contains(&invalid_share), "{invalid_share}");
    }

    #[test]
    fn generate_status_mix() {
        let mut winners: HashMap<&str, &RefundEvent> = HashMap::new();
        for (event, _) in &clean().events {
            if event.kind.rank() != 2 {
                continue;
            }
            let entry = winners.entry(&event.refund_id).or_insert(event);
            if event.version() > entry.version() {
                *entry = event;
            }
        }
        let total = winners.len() as f64;
        assert!(total > 0.97 * N as f64, "most refunds reach a terminal state: {total}");
        let share = |kind| winners.values().filter(|e| e.kind == kind).count() as f64 / total;
        let (completed, failed, cancelled) =
            (share(EventType::Completed), share(EventType::Failed), share(EventType::Cancelled));
        assert!((0.82..=0.88).contains(&completed), "completed {completed}");
        assert!((0.09..=0.15).contains(&failed), "failed {failed}");
        assert!((0.015..=0.045).contains(&cancelled), "cancelled {cancelled}");
    }

    #[test]
    fn generate_is_varied() {
        let events = &clean().events;
        let mut currencies = HashSet::new();
        let mut processors = HashSet::new();
        let mut raw_currencies = HashSet::new();
        let mut raw_processors = HashSet::new();
        let mut tenants: HashMap<&str, usize> = HashMap::new();
        let mut queued_at: HashMap<Timestamp, usize> = HashMap::new();
        let mut amounts = Vec::new();
        let mut offsets = 0;
        let mut fractions = HashSet::new();
        for (event, value) in events {
            let refund = &value["refund"];
            if let Some(c) = refund["currency"].as_str() {
                raw_currencies.insert(c);
                currencies.insert(c.to_ascii_uppercase());
            }
            if let Some(p) = refund["processor"].as_str() {
                raw_processors.insert(p);
                processors.insert(p.to_lowercase());
            }
            let at = value["occurred_at"].as_str().unwrap().as_bytes();
            if matches!(at[at.len() - 6], b'+' | b'-') {
                offsets += 1;
            }
            fractions.insert(
                at.iter()
                    .position(|&b| b == b'.')
                    .map_or(0, |dot| at[dot + 1..].iter().take_while(|b| b.is_ascii_digit()).count()),
            );
            if event.kind == EventType::Queued {
                *tenants.entry(&event.tenant_id).or_default() += 1;
                *queued_at.entry(event.occurred_at).or_default() += 1;
                amounts.push(event.fields.amount.unwrap());
            }
        }
        assert!(currencies.len() >= 7, "{currencies:?}");
        assert!(processors.len() >= 5, "{processors:?}");
        assert!(raw_currencies.len() > currencies.len(), "some currencies in lower or mixed case");
        assert!(raw_processors.len() > processors.len(), "some processors in mixed case");
        assert!(offsets > 100, "non-Z offsets: {offsets}");
        assert!(fractions.is_superset(&HashSet::from([0, 3, 6])), "{fractions:?}");
        assert!(queued_at.values().any(|&n| n > 1), "equal timestamps across refunds");
        assert_eq!(tenants.len(), TENANTS);
        let queued: usize = tenants.values().sum();
        let biggest = *tenants.values().max().unwrap() as f64 / queued as f64;
        assert!((0.25..=0.37).contains(&biggest), "biggest tenant {biggest}");
        let typical = amounts.iter().filter(|&&a| (100..=50_000).contains(&a)).count() as f64 / amounts.len() as f64;
        assert!((0.8..=0.95).contains(&typical), "{typical}");
        assert!(amounts.iter().any(|&a| a > 1_000_000));
    }

    #[test]
    fn generate_lifecycle_anomalies() {
        let mut by_refund: HashMap<&str, Vec<(usize, &RefundEvent)>> = HashMap::new();
        for (position, (event, _)) in clean().events.iter().enumerate() {
            by_refund.entry(&event.refund_id).or_default().push((position, event));
        }
        let (mut lost, mut late, mut double, mut no_processing) = (0, 0, 0, 0);
        for events in by_refund.values() {
            let queued: Vec<_> = events.iter().filter(|(_, e)| e.kind == EventType::Queued).collect();
            let terminal = events.iter().filter(|(_, e)| e.kind.rank() == 2).count();
            if let Some((position, q)) = queued.first() {
                if events.iter().any(|(p, e)| e.kind != EventType::Queued && p < position) {
                    late += 1;
                    let others = events.iter().filter(|(_, e)| e.kind != EventType::Queued);
                    assert!(others.clone().all(|(_, e)| e.occurred_at > q.occurred_at));
                }
            } else {
                lost += 1;
                let first = events[0].1;
                assert!(first.fields.amount.is_some() && first.fields.currency.is_some());
            }
            if terminal > 1 {
                double += 1;
            }
            if terminal > 0 && !events.iter().any(|(_, e)| e.kind == EventType::Processing) {
                no_processing += 1;
            }
        }
        let share = |n: usize| n as f64 / N as f64;
        assert!((0.005..=0.015).contains(&share(lost)), "lost queued {lost}");
        assert!((0.012..=0.03).contains(&share(late)), "late queued {late}");
        assert!((0.005..=0.015).contains(&share(double)), "double terminal {double}");
        assert!((0.15..=0.28).contains(&share(no_processing)), "no processing {no_processing}");
    }

    #[test]
    fn generate_invalid_lines_cover_every_reason() {
        let (bytes, summary) = run(&params(20_000, 11, 0.0, 0, 0.05));
        let mut seen: HashMap<InvalidReason, usize> = HashMap::new();
        let mut not_utf8 = 0;
        for line in lines(&bytes) {
            if marker(line).is_none() {
                continue;
            }
            *seen.entry(check_invalid(line)).or_default() += 1;
            if std::str::from_utf8(line).is_err() {
                not_utf8 += 1;
            }
        }
        assert_eq!(seen.values().sum::<usize>() as u64, summary.invalid);
        for (code, reason) in REASONS {
            assert!(seen.get(&reason).is_some_and(|&n| n > 0), "{code} missing: {seen:?}");
        }
        let too_large = seen[&InvalidReason::TooLarge] as f64 / summary.invalid as f64;
        assert!((0.01..=0.04).contains(&too_large), "{too_large}");
        assert!(not_utf8 > 0, "some invalid UTF-8 lines");
        let share = summary.invalid as f64 / summary.valid_events as f64;
        assert!((0.045..0.055).contains(&share), "{share}");
    }

    #[test]
    fn generate_first_invalid_lines_cover_every_reason() {
        let (bytes, summary) = run(&params(100, 3, 0.0, 0, 0.1));
        assert!(summary.invalid >= 5, "{summary:?}");
        let reasons: HashSet<_> =
            lines(&bytes).into_iter().filter(|l| marker(l).is_some()).map(check_invalid).collect();
        assert_eq!(reasons.len(), 5);
    }

    #[test]
    fn generate_shuffle_window() {
        let base = params(1_000, 5, 0.0, 0, 0.0);
        let (w0, _) = run(&base);
        let (w1, _) = run(&GenerateParams { shuffle_window: 1, ..base.clone() });
        let (w50, _) = run(&GenerateParams { shuffle_window: 50, ..base.clone() });
        assert!(w0 == w1, "a window of 1 does not reorder");
        let (l0, l50) = (lines(&w0), lines(&w50));
        let mut sorted0 = l0.clone();
        let mut sorted50 = l50.clone();
        sorted0.sort_unstable();
        sorted50.sort_unstable();
        assert!(sorted0 == sorted50, "the same lines");
        let at: HashMap<&[u8], i64> =
            l0.iter().map(|l| (*l, validate(l).expect("valid").occurred_at.millis())).collect();
        let inversions = |lines: &[&[u8]]| lines.windows(2).filter(|w| at[w[1]] < at[w[0]]).count();
        // Without a window, only late queued events go back in time.
        let (i0, i50) = (inversions(&l0), inversions(&l50));
        assert!(i0 * 30 < l0.len(), "{i0} inversions without a window");
        assert!(i50 > l0.len() / 4, "{i50} inversions with a window of 50");
        let position: HashMap<&[u8], usize> = l0.iter().enumerate().map(|(i, l)| (*l, i)).collect();
        let moved = l50.iter().enumerate().filter(|(i, l)| position[*l] != *i).count();
        let far = l50.iter().enumerate().filter(|(i, l)| position[*l].abs_diff(*i) > 500).count();
        assert!(moved > l0.len() / 2 && far < l0.len() / 100, "{moved} moved, {far} far");
    }

    #[test]
    fn generate_timestamps_round_trip() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..20_000 {
            let ms = rng.random_range(START_MS - 400 * DAY..END_MS + 400 * DAY);
            let format = random_ts_format(&mut rng);
            let mut text = String::new();
            push_timestamp(&mut text, ms, format);
            let parsed = Timestamp::parse_rfc3339(&text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(parsed.millis(), format.representable(ms), "{text}");
        }
        let mut text = String::new();
        push_timestamp(&mut text, START_MS + 123, TsFormat::MILLIS_Z);
        assert_eq!(text, "2024-01-01T00:00:00.123Z");
        text.clear();
        let format = TsFormat { frac_digits: 6, micros: 456, offset_minutes: Some(-330), lower: true };
        push_timestamp(&mut text, END_MS - 1, format);
        assert_eq!(text, "2025-12-31t18:29:59.999456-05:30");
    }

    #[test]
    fn generate_memory_is_bounded_by_refunds_in_flight() {
        let stats = clean().stats;
        assert!(stats.peak_pending < usize::try_from(N / 20).unwrap(), "{stats:?}");
        // Denser streams keep more refunds in flight, but never all of them.
        let (_, stats) = generate_inner(&params(3_000, 1, 0.0, 0, 0.0), io::sink()).unwrap();
        assert!(stats.peak_pending < 3_000 / 20, "{stats:?}");
    }

    #[test]
    fn generate_edge_cases() {
        let (bytes, summary) = run(&params(0, 1, 0.5, 10, 0.5));
        assert!(bytes.is_empty());
        assert_eq!(summary, GenerateSummary::default());
        let (bytes, summary) = run(&params(1, 1, 1.0, 1_000, 1.0));
        assert_eq!(summary.lines, 3 * summary.valid_events);
        assert_eq!(lines(&bytes).len(), usize::try_from(summary.lines).unwrap());
        assert!(generate(&params(1, 1, 1.5, 0, 0.0), io::sink()).is_err());
        assert!(generate(&params(1, 1, 0.0, 0, f64::NAN), io::sink()).is_err());
    }
}
