//! Draws shared by the lifecycle model and the noise: weighted picks,
//! log-uniform amounts and delays, and identifiers that are unique by
//! construction.

use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;

pub(crate) const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `len` random base-62 characters, ten from each 64-bit draw.
pub(crate) fn push_base62_random(buf: &mut String, rng: &mut ChaCha8Rng, len: usize) {
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
pub(crate) fn push_base62_u64(buf: &mut String, mut value: u64) {
    let mut digits = [b'0'; 11];
    for slot in digits.iter_mut().rev() {
        *slot = BASE62[usize::try_from(value % 62).expect("< 62")];
        value /= 62;
    }
    buf.extend(digits.iter().map(|&b| char::from(b)));
}

/// A bijection on u64 (the splitmix64 finalizer).
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform draw in `[0, 1)` mapped log-uniformly onto `[low, high]`.
#[allow(clippy::cast_possible_truncation)] // bounded by `high`
pub(crate) fn log_uniform(rng: &mut ChaCha8Rng, low: i64, high: i64) -> i64 {
    let (lo, hi) = ((low as f64).ln(), (high as f64).ln());
    let value = (lo + rng.random::<f64>() * (hi - lo)).exp();
    (value as i64).clamp(low, high)
}

pub(crate) fn pick<T: Copy>(rng: &mut ChaCha8Rng, table: &[(T, u32)]) -> T {
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::SeedableRng;

    use super::*;

    #[test]
    fn push_base62_u64_writes_eleven_digits_and_keeps_distinct_values_distinct() {
        let mut seen = HashSet::new();
        for value in [0, 1, 61, 62, u64::MAX, u64::MAX - 1, 1 << 63] {
            let mut text = String::new();
            push_base62_u64(&mut text, value);
            assert_eq!(text.len(), 11, "{text}");
            assert!(text.bytes().all(|b| BASE62.contains(&b)), "{text}");
            assert!(seen.insert(text), "{value}");
        }
        let mut text = String::new();
        push_base62_u64(&mut text, 62);
        assert_eq!(text, "00000000010");
    }

    #[test]
    fn push_base62_random_writes_exactly_the_asked_length() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for len in [0, 1, 9, 10, 11, 16, 25] {
            let mut text = String::new();
            push_base62_random(&mut text, &mut rng, len);
            assert_eq!(text.len(), len);
            assert!(text.bytes().all(|b| BASE62.contains(&b)), "{text}");
        }
    }

    #[test]
    fn mix64_is_injective_on_a_sample() {
        let mixed: HashSet<u64> = (0..100_000u64).map(mix64).collect();
        assert_eq!(mixed.len(), 100_000);
        assert_ne!(mix64(1), 1);
    }

    #[test]
    fn log_uniform_stays_in_bounds_and_favours_small_values() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let draws: Vec<i64> = (0..10_000).map(|_| log_uniform(&mut rng, 100, 1_000_000)).collect();
        assert!(draws.iter().all(|d| (100..=1_000_000).contains(d)));
        // Log-uniform: each decade holds about a quarter of the draws.
        let below_1000 = draws.iter().filter(|&&d| d < 1_000).count();
        assert!((2_000..3_000).contains(&below_1000), "{below_1000}");
    }

    #[test]
    fn pick_follows_the_weights_and_never_picks_a_zero_weight() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let table = [("a", 3), ("never", 0), ("b", 1)];
        let picks: Vec<&str> = (0..8_000).map(|_| pick(&mut rng, &table)).collect();
        assert!(!picks.contains(&"never"));
        let a = picks.iter().filter(|p| **p == "a").count();
        assert!((5_600..6_400).contains(&a), "{a}");
    }
}
