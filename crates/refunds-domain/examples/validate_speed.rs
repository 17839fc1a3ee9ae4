//! Times `validate` over every line of an event file and prints lines/s.
//!
//!   cargo run --release -p refunds-domain --example validate_speed -- events.ndjson
use std::time::Instant;

fn main() {
    let path = std::env::args().nth(1).expect("usage: validate_speed EVENTS.ndjson");
    let data = std::fs::read(&path).expect("read the event file");
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    for round in 0..3 {
        let start = Instant::now();
        let valid = lines.iter().filter(|line| refunds_domain::event::validate(line).is_ok()).count();
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "round {round}: {} lines, {valid} valid, {seconds:.2} s, {:.2} µs/line",
            lines.len(),
            seconds * 1e6 / lines.len() as f64
        );
    }
}
