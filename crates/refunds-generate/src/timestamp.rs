//! Instants of the generated stream and the ways an `occurred_at` is
//! written: mostly `YYYY-MM-DDTHH:MM:SS.sssZ`, sometimes without a fraction,
//! with sub-millisecond digits, with an offset or in lower case, so that
//! consumers see every form RFC 3339 allows.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use refunds_domain::Timestamp;

use crate::ndjson::push_digits;

pub(crate) const SECOND: i64 = 1_000;
pub(crate) const MINUTE: i64 = 60 * SECOND;
pub(crate) const HOUR: i64 = 60 * MINUTE;
pub(crate) const DAY: i64 = 24 * HOUR;
/// 2024-01-01T00:00:00Z.
pub(crate) const START_MS: i64 = 1_704_067_200_000;
/// 2026-01-01T00:00:00Z.
pub(crate) const END_MS: i64 = 1_767_225_600_000;

/// How an `occurred_at` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TsFormat {
    /// 0, 3 or 6 fraction digits (6: three extra sub-millisecond digits).
    pub(crate) frac_digits: u8,
    /// Sub-millisecond digits for `frac_digits == 6`.
    pub(crate) micros: u16,
    /// Offset from UTC in minutes; `None` writes `Z`.
    pub(crate) offset_minutes: Option<i16>,
    /// Lower-case `t` and `z`.
    pub(crate) lower: bool,
}

impl TsFormat {
    pub(crate) const MILLIS_Z: TsFormat = TsFormat { frac_digits: 3, micros: 0, offset_minutes: None, lower: false };

    /// The instant this format can represent for `ms` (seconds drop the
    /// milliseconds).
    pub(crate) fn representable(self, ms: i64) -> i64 {
        if self.frac_digits == 0 { ms.div_euclid(SECOND) * SECOND } else { ms }
    }
}

pub(crate) fn random_ts_format(rng: &mut ChaCha8Rng) -> TsFormat {
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

/// Writes `ms` (UTC milliseconds) in `format`; milliseconds are dropped when
/// the format has no fraction.
pub(crate) fn push_timestamp(buf: &mut String, ms: i64, format: TsFormat) {
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

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

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
}
