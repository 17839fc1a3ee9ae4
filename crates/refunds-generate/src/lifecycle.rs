//! The refund lifecycle model: refund `k` of `N` is planned from the main
//! RNG stream only (its tenant, attributes, outcome and the timestamps of its
//! events), and each of its events is rendered to its final line when
//! planned.
//!
//! Mix (per refund): outcome completed 85% / failed 12% / cancelled 3%, plus
//! 1.5% left in flight (queued or processing); processing skipped 20% (75% for
//! cancellations); queued event lost 1%, late 2%; a second, conflicting
//! terminal event 1%. Under [`Arrival::Realistic`], 3% of events are also
//! delivered again later (drawn from a stream of their own, so both models
//! plan the same refunds with the same shapes; only the times differ).

use std::cmp::Ordering;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Arrival;
use crate::attributes::{RESOLUTIONS, Refund, TENANT_ZIPF, TENANTS, refund_attributes};
use crate::ndjson::ObjectWriter;
use crate::random::{log_uniform, mix64, pick, push_base62_random, push_base62_u64};
use crate::timestamp::{DAY, END_MS, HOUR, MINUTE, SECOND, START_MS, TsFormat, push_timestamp, random_ts_format};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Queued,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl Kind {
    pub(crate) fn wire(self) -> &'static str {
        match self {
            Kind::Queued => "refund.queued",
            Kind::Processing => "refund.processing",
            Kind::Completed => "refund.completed",
            Kind::Failed => "refund.failed",
            Kind::Cancelled => "refund.cancelled",
        }
    }
}

/// Mean time between two new refunds under [`Arrival::Realistic`]: about
/// 86,000 refunds a day, so 330,000 refunds (1M events) span four days and a
/// refund's events interleave with those of the tens of thousands created
/// while it was in flight.
const REALISTIC_GAP_MS: u128 = 1_000;
/// Share of events a webhook sender delivers twice under [`Arrival::Realistic`].
const RETRY_RATE: f64 = 0.03;

/// One valid event, rendered, waiting for its arrival time.
pub(crate) struct Pending {
    /// Arrival time (UTC ms): the order of the stream.
    pub(crate) key: i64,
    /// Tie-breaker: planning order.
    pub(crate) seq: u64,
    pub(crate) line: String,
    /// For invalid lines that pretend to belong to the same refund.
    pub(crate) refund_id: String,
    pub(crate) tenant: usize,
    /// A webhook retry: a second delivery of an event planned before it.
    pub(crate) retry: bool,
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

/// Plans refunds one at a time from the main RNG stream, with the ids'
/// keys and the tenants drawn from it first.
pub(crate) struct Planner {
    rng: ChaCha8Rng,
    /// Webhook retries, apart from `rng`.
    retry_rng: ChaCha8Rng,
    refunds: u64,
    arrival: Arrival,
    pub(crate) tenants: Vec<String>,
    tenant_cdf: Vec<f64>,
    refund_key: u64,
    event_key: u64,
    prev_t0: i64,
    seq: u64,
    plan: Vec<PlannedEvent>,
}

impl Planner {
    pub(crate) fn new(refunds: u64, seed: u64, arrival: Arrival) -> Planner {
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
            retry_rng: crate::noise::noise_rng(seed, crate::noise::STREAM_RETRY),
            refunds,
            arrival,
            tenants,
            tenant_cdf,
            prev_t0: START_MS,
            seq: 0,
            plan: Vec::with_capacity(8),
        }
    }

    /// Plans refund `k` into `batch` and returns the watermark: no event of
    /// this refund or any later one arrives before it.
    pub(crate) fn plan_refund(&mut self, k: u64, batch: &mut Vec<Pending>) -> i64 {
        let n = u128::from(self.refunds.max(1));
        let span = match self.arrival {
            Arrival::Ordered => u128::try_from(END_MS - START_MS).expect("positive"),
            Arrival::Realistic => (n * REALISTIC_GAP_MS).min(u128::try_from(END_MS - START_MS).expect("positive")),
        };
        let realistic = self.arrival == Arrival::Realistic;
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

        let refund = refund_attributes(rng, k, self.refund_key, &self.tenant_cdf);

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
            last +=
                if realistic { log_uniform(rng, 20 * SECOND, 40 * MINUTE) } else { log_uniform(rng, SECOND, 2 * HOUR) };
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
            let retry = &mut self.retry_rng;
            let retry_at = (realistic && retry.random_bool(RETRY_RATE))
                .then(|| event.arrival + log_uniform(retry, MINUTE, 6 * HOUR));
            if let Some(at) = retry_at {
                batch.push(Pending {
                    key: at,
                    seq: self.seq,
                    line: line.clone(),
                    refund_id: refund.id.clone(),
                    tenant: refund.tenant,
                    retry: true,
                });
                self.seq += 1;
            }
            batch.push(Pending {
                key: event.arrival,
                seq: self.seq,
                line,
                refund_id: refund.id.clone(),
                tenant: refund.tenant,
                retry: false,
            });
            self.seq += 1;
        }
        base.min(t0) - SECOND
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

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use refunds_domain::{EventType, RefundEvent, TextField};

    use crate::testing::{N, clean};

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
}
