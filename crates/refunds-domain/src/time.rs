//! Millisecond UTC timestamps: the strict RFC 3339 parser of the contract and
//! the one rendering the API uses (`YYYY-MM-DDTHH:MM:SS.sssZ`).

use std::fmt;

/// Milliseconds since the UNIX epoch, UTC. Ordered like the instants it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Smallest and largest instants RFC 3339 can write (years 0000 and 9999).
const MIN_MS: i64 = -62_167_219_200_000;
const MAX_MS: i64 = 253_402_300_799_999;

impl Timestamp {
    pub const MIN: Timestamp = Timestamp(MIN_MS);
    pub const MAX: Timestamp = Timestamp(MAX_MS);

    pub fn from_millis(ms: i64) -> Option<Timestamp> {
        (MIN_MS..=MAX_MS).contains(&ms).then_some(Timestamp(ms))
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    /// Parses RFC 3339 `date-time` exactly as the RFC's grammar writes it:
    /// `T`/`t` between date and time, `Z`/`z` or `+HH:MM`/`-HH:MM` offset, any
    /// number of fraction digits (truncated to milliseconds). A leap second
    /// (`:60`) is accepted and lands on the following second.
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        let b = text.as_bytes();
        if b.len() < 20 {
            return None;
        }
        let year = digits(b, 0, 4)?;
        let month = digits(b, 5, 2)?;
        let day = digits(b, 8, 2)?;
        let hour = digits(b, 11, 2)?;
        let minute = digits(b, 14, 2)?;
        let second = digits(b, 17, 2)?;
        if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
            return None;
        }
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
            return None;
        }
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        let mut pos = 19;
        let mut millis = 0;
        if b[pos] == b'.' {
            pos += 1;
            let start = pos;
            while pos < b.len() && b[pos].is_ascii_digit() {
                if pos - start < 3 {
                    millis = millis * 10 + i64::from(b[pos] - b'0');
                }
                pos += 1;
            }
            if pos == start {
                return None;
            }
            for _ in (pos - start)..3 {
                millis *= 10;
            }
        }
        let offset_minutes = match &b[pos..] {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
                let oh = digits(b, pos + 1, 2)?;
                let om = digits(b, pos + 4, 2)?;
                if oh > 23 || om > 59 {
                    return None;
                }
                let minutes = oh * 60 + om;
                if *sign == b'-' { -minutes } else { minutes }
            }
            _ => return None,
        };
        let days = days_from_civil(year, month, day);
        let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
        Timestamp::from_millis(seconds * 1_000 + millis)
    }

    /// Builds the timestamp of a calendar date and time in UTC, if it exists.
    pub fn from_utc_parts(year: i64, month: i64, day: i64, hour: i64, minute: i64, second: i64) -> Option<Timestamp> {
        if !(0..=9999).contains(&year) || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
            return None;
        }
        if !(0..=23).contains(&hour) || !(0..=59).contains(&minute) || !(0..=59).contains(&second) {
            return None;
        }
        let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second;
        Timestamp::from_millis(seconds * 1_000)
    }
}

impl fmt::Display for Timestamp {
    /// `YYYY-MM-DDTHH:MM:SS.sssZ`, the only form the API renders.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.rem_euclid(1_000);
        let total_seconds = self.0.div_euclid(1_000);
        let days = total_seconds.div_euclid(86_400);
        let secs_of_day = total_seconds.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            secs_of_day / 3_600,
            secs_of_day / 60 % 60,
            secs_of_day % 60
        )
    }
}

fn digits(b: &[u8], start: usize, len: usize) -> Option<i64> {
    let slice = b.get(start..start + len)?;
    slice.iter().try_fold(0i64, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0')))
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

pub(crate) fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Option<String> {
        Timestamp::parse_rfc3339(text).map(|t| t.to_string())
    }

    #[test]
    fn utc_with_millis_round_trips() {
        assert_eq!(parse("2026-02-22T10:32:15.123Z").as_deref(), Some("2026-02-22T10:32:15.123Z"));
    }

    #[test]
    fn offsets_are_normalized_to_utc() {
        assert_eq!(parse("2026-02-22T10:32:15+05:30").as_deref(), Some("2026-02-22T05:02:15.000Z"));
        assert_eq!(parse("2026-01-01T00:30:00-01:00").as_deref(), Some("2026-01-01T01:30:00.000Z"));
        assert_eq!(parse("2026-01-01T00:00:00-00:00").as_deref(), Some("2026-01-01T00:00:00.000Z"));
    }

    #[test]
    fn lower_case_separators_are_rfc_3339() {
        assert_eq!(parse("2026-02-22t10:32:15.5z").as_deref(), Some("2026-02-22T10:32:15.500Z"));
    }

    #[test]
    fn fractions_are_truncated_not_rounded() {
        assert_eq!(parse("2026-02-22T10:32:15.123999999Z").as_deref(), Some("2026-02-22T10:32:15.123Z"));
        assert_eq!(parse("2026-02-22T10:32:15.9Z").as_deref(), Some("2026-02-22T10:32:15.900Z"));
        assert_eq!(parse("1969-12-31T23:59:59.9999Z").as_deref(), Some("1969-12-31T23:59:59.999Z"));
    }

    #[test]
    fn leap_second_lands_on_the_next_second() {
        assert_eq!(parse("2016-12-31T23:59:60Z").as_deref(), Some("2017-01-01T00:00:00.000Z"));
    }

    #[test]
    fn malformed_dates_are_rejected() {
        for bad in [
            "2026-02-30T10:00:00Z",
            "2025-02-29T10:00:00Z",
            "2026-13-01T10:00:00Z",
            "2026-02-22 10:32:15Z",
            "2026-02-22T10:32:15",
            "2026-02-22T10:32:15.Z",
            "2026-02-22T24:00:00Z",
            "2026-02-22T10:32:15+0530",
            "2026-02-22T10:32:15+05:30 ",
            "2026-2-22T10:32:15Z",
            "2026-02-22",
            "",
        ] {
            assert_eq!(parse(bad), None, "{bad} must be rejected");
        }
        assert!(parse("2024-02-29T10:00:00Z").is_some());
    }

    #[test]
    fn extreme_years_render_with_four_digits() {
        assert_eq!(parse("0000-01-01T00:00:00Z").as_deref(), Some("0000-01-01T00:00:00.000Z"));
        assert_eq!(parse("9999-12-31T23:59:59.999Z").as_deref(), Some("9999-12-31T23:59:59.999Z"));
        assert_eq!(parse("0000-01-01T00:00:00+00:01"), None);
    }
}
