//! A seeded, streaming, realistic synthetic refund event stream: NDJSON,
//! one event per line, as `refund-projector generate` writes it and as the
//! demo, the benchmarks and the tests feed it to the projector.
//!
//! The same parameters give the same bytes. The set of distinct valid events
//! depends only on `(refunds, seed)`; the noise flags only add repeats,
//! reordering and invalid lines around them.
//!
//! Design:
//! - [`lifecycle`]: refund `k` of `N` is planned from the main RNG stream
//!   only: its tenant (Zipf-skewed over 40 tenants), attributes
//!   ([`attributes`]), outcome and the timestamps of its events. Its queued
//!   event happens at about `2024-01-01 + k * gap` (plus jitter), with the
//!   gap set by the [`Arrival`] model: one second for `Realistic` (a busy
//!   platform's traffic, so tens of thousands of refunds are in flight at
//!   once), `2 years / N` for `Ordered`; later events seconds to days after,
//!   and under `Realistic` some delivered again hours later. Every event is
//!   rendered to its final line when planned ([`ndjson`]).
//! - Planned events wait in a min-heap keyed by arrival time. Before refund `k`
//!   is planned, every pending event that arrives before anything refund `k`
//!   or a later refund can produce is written, so the stream comes out in
//!   exact arrival order while memory holds only the refunds in flight
//!   (a few days' worth), never all `N`.
//! - [`noise`] sits behind that, on separate RNG streams: duplicates, a
//!   shuffle window and invalid lines.
//! - Ids are unique by construction: a bijective mix of the refund index (and
//!   event index) with a seed-derived key, written in base 62 ([`random`]).

mod attributes;
mod lifecycle;
mod ndjson;
mod noise;
mod random;
#[cfg(test)]
mod testing;
mod timestamp;

use std::collections::BinaryHeap;
use std::io::{self, Write};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::lifecycle::{Pending, Planner};
use crate::noise::{InvalidLines, STREAM_DUP, STREAM_INVALID, STREAM_SHUFFLE, ShuffleWindow, noise_rng, reformat};

/// Default probability of a duplicate after each valid event.
pub const DEFAULT_DUP_RATE: f64 = 0.02;
/// Default shuffle window, in lines.
pub const DEFAULT_SHUFFLE_WINDOW: usize = 64;
/// Default probability of an invalid line after each valid event.
pub const DEFAULT_INVALID_RATE: f64 = 0.002;

/// How a refund's events spread over time, and so how many refunds' events
/// interleave in the stream. Both write every event in arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arrival {
    /// Webhook traffic of a busy platform: a new refund about every second,
    /// its processing event 20 s to 40 min later, its outcome seconds to
    /// days later, and 3% of events delivered a second time 1 min to 6 h
    /// later (a webhook retry: the same bytes). A refund's events are
    /// interleaved with those of tens of thousands of others, so a status
    /// change usually lands on a refund created long before.
    #[default]
    Realistic,
    /// Refunds spread evenly over two years whatever their number, the
    /// processing event 1 s to 2 h after the queued one, no retries: few
    /// refunds are in flight at once, so the stream is close to refund
    /// order. Its bytes are those of the generator before `Realistic` existed.
    Ordered,
}

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
    pub arrival: Arrival,
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
            arrival: Arrival::default(),
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenerateSummary {
    pub refunds: u64,
    /// Distinct valid events (each written once, plus its duplicates).
    pub valid_events: u64,
    /// Extra copies of valid events (webhook retries included).
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
    let mut planner = Planner::new(params.refunds, params.seed, params.arrival);
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

/// Valid events in arrival order, with their noise, out through the
/// shuffle window.
struct Emitter<W: Write> {
    sink: ShuffleWindow<W>,
    dup_rate: f64,
    dup_rng: ChaCha8Rng,
    invalid_rate: f64,
    invalid: InvalidLines,
    summary: GenerateSummary,
}

impl<W: Write> Emitter<W> {
    fn new(params: &GenerateParams, out: W) -> Emitter<W> {
        Emitter {
            sink: ShuffleWindow::new(out, params.shuffle_window, noise_rng(params.seed, STREAM_SHUFFLE)),
            dup_rate: params.dup_rate,
            dup_rng: noise_rng(params.seed, STREAM_DUP),
            invalid_rate: params.invalid_rate,
            invalid: InvalidLines::new(noise_rng(params.seed, STREAM_INVALID)),
            summary: GenerateSummary::default(),
        }
    }

    fn emit_valid(&mut self, pending: &Pending, tenants: &[String]) -> io::Result<()> {
        self.sink.line(pending.line.as_bytes())?;
        if pending.retry {
            // A webhook delivered again: the same bytes, no noise of its own.
            self.summary.duplicates += 1;
            return Ok(());
        }
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
        self.summary.lines = self.sink.finish()?;
        Ok(self.summary)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use refunds_domain::event::validate_value;
    use serde_json::Value;

    use super::*;
    use crate::testing::{N, canonical, check_invalid, clean, lines, marker, noisy, params, run};

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
    fn generate_memory_is_bounded_by_refunds_in_flight() {
        let stats = clean().stats;
        assert!(stats.peak_pending < usize::try_from(N / 20).unwrap(), "{stats:?}");
        // Denser streams keep more refunds in flight, but never all of them.
        let (_, stats) = generate_inner(&params(3_000, 1, 0.0, 0, 0.0), io::sink()).unwrap();
        assert!(stats.peak_pending < 3_000 / 20, "{stats:?}");
    }

    /// Mean number of lines between the first and the last event of a
    /// refund: how far apart a refund's lifecycle lies in the stream.
    fn mean_spread(bytes: &[u8]) -> f64 {
        let mut span: HashMap<String, (usize, usize)> = HashMap::new();
        for (i, line) in lines(bytes).iter().enumerate() {
            let value: Value = serde_json::from_slice(line).expect("JSON");
            let id = value["refund"]["id"].as_str().expect("an id").to_owned();
            span.entry(id).and_modify(|(_, last)| *last = i).or_insert((i, i));
        }
        let spreads: Vec<usize> = span.values().map(|(first, last)| last - first).filter(|&d| d > 0).collect();
        spreads.iter().sum::<usize>() as f64 / spreads.len() as f64
    }

    #[test]
    fn realistic_arrival_interleaves_many_refunds_and_delivers_some_events_twice() {
        let ordered = params(3_000, 5, 0.0, 0, 0.0);
        let realistic = GenerateParams { arrival: Arrival::Realistic, ..ordered.clone() };
        let (bytes, summary) = run(&realistic);
        assert!(bytes == run(&realistic).0, "same params, same bytes");
        let (ordered_bytes, ordered_summary) = run(&ordered);
        // The same refunds and lifecycle shapes; only times and retries differ.
        assert_eq!(summary.refunds, ordered_summary.refunds);
        assert_eq!(summary.valid_events, ordered_summary.valid_events);
        assert_eq!(ordered_summary.duplicates, 0);
        // Retries are exact copies of an event already written.
        let mut written: HashMap<&[u8], usize> = HashMap::new();
        for line in lines(&bytes) {
            validate_value(&serde_json::from_slice(line).expect("JSON")).expect("every line is valid");
            *written.entry(line).or_default() += 1;
        }
        assert_eq!(written.len() as u64, summary.valid_events);
        assert_eq!(written.values().map(|&n| n as u64 - 1).sum::<u64>(), summary.duplicates);
        let retry_share = summary.duplicates as f64 / summary.valid_events as f64;
        assert!((0.02..0.04).contains(&retry_share), "{retry_share}");
        // A refund's events lie far apart: thousands of others between them.
        let (spread, ordered_spread) = (mean_spread(&bytes), mean_spread(&ordered_bytes));
        assert!(spread > 20.0 * ordered_spread, "realistic {spread:.1} lines, ordered {ordered_spread:.1}");
    }

    #[test]
    fn realistic_memory_is_bounded_by_the_traffic_in_flight_not_the_stream() {
        let params = GenerateParams { arrival: Arrival::Realistic, ..params(200_000, 2, 0.0, 0, 0.0) };
        let (summary, stats) = generate_inner(&params, io::sink()).unwrap();
        // About 31,000 s of mean delay at one refund a second.
        assert!(stats.peak_pending < 100_000, "{stats:?} for {} events", summary.valid_events);
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
