//! Time values of list filters: RFC 3339, `YYYY-MM-DD`, UNIX seconds,
//! `DD/MM/YYYY HH:MM` and `DD/MM/YYYY` (the last four in UTC). A value covers
//! its whole unit: as an upper bound it means the unit's last millisecond.

use refunds_domain::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Lower,
    Upper,
}

/// Parses a time filter value; `None` when no accepted format matches.
pub fn parse_time(text: &str, bound: Bound) -> Option<Timestamp> {
    let (start, unit_ms) = parse_with_unit(text.trim())?;
    match bound {
        Bound::Lower => Some(start),
        Bound::Upper => Timestamp::from_millis(start.millis() + unit_ms - 1).or(Some(Timestamp::MAX)),
    }
}

fn parse_with_unit(text: &str) -> Option<(Timestamp, i64)> {
    if let Some(t) = Timestamp::parse_rfc3339(text) {
        let fraction_digits =
            text.find('.').map_or(0, |dot| text[dot + 1..].bytes().take_while(u8::is_ascii_digit).count());
        let unit = match fraction_digits {
            0 => 1_000,
            1 => 100,
            2 => 10,
            _ => 1,
        };
        return Some((t, unit));
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let seconds: i64 = text.parse().ok()?;
        return Some((Timestamp::from_millis(seconds.checked_mul(1_000)?)?, 1_000));
    }
    let number =
        |s: &str| -> Option<i64> { (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())? };
    if let [y, m, d] = text.split('-').collect::<Vec<_>>()[..]
        && y.len() == 4
        && m.len() == 2
        && d.len() == 2
    {
        return Some((Timestamp::from_utc_parts(number(y)?, number(m)?, number(d)?, 0, 0, 0)?, 86_400_000));
    }
    let (date, time) = match text.split_once(' ') {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let [d, m, y] = date.split('/').collect::<Vec<_>>()[..] else { return None };
    if d.len() != 2 || m.len() != 2 || y.len() != 4 {
        return None;
    }
    let (year, month, day) = (number(y)?, number(m)?, number(d)?);
    match time {
        None => Some((Timestamp::from_utc_parts(year, month, day, 0, 0, 0)?, 86_400_000)),
        Some(time) => {
            let (h, min) = time.split_once(':')?;
            if h.len() != 2 || min.len() != 2 {
                return None;
            }
            Some((Timestamp::from_utc_parts(year, month, day, number(h)?, number(min)?, 0)?, 60_000))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str, bound: Bound) -> String {
        parse_time(text, bound).unwrap().to_string()
    }

    #[test]
    fn each_format_covers_its_whole_unit_as_an_upper_bound() {
        assert_eq!(at("2025-12-31", Bound::Lower), "2025-12-31T00:00:00.000Z");
        assert_eq!(at("2025-12-31", Bound::Upper), "2025-12-31T23:59:59.999Z");
        assert_eq!(at("31/12/2025 23:59", Bound::Upper), "2025-12-31T23:59:59.999Z");
        assert_eq!(at("31/12/2025 23:59", Bound::Lower), "2025-12-31T23:59:00.000Z");
        assert_eq!(at("31/12/2025", Bound::Upper), "2025-12-31T23:59:59.999Z");
        assert_eq!(at("1711929600", Bound::Lower), "2024-04-01T00:00:00.000Z");
        assert_eq!(at("1711929600", Bound::Upper), "2024-04-01T00:00:00.999Z");
        assert_eq!(at("2024-04-30T23:59:59Z", Bound::Upper), "2024-04-30T23:59:59.999Z");
        assert_eq!(at("2024-04-30T23:59:59.5Z", Bound::Upper), "2024-04-30T23:59:59.599Z");
        assert_eq!(at("2024-04-30T23:59:59.123Z", Bound::Upper), "2024-04-30T23:59:59.123Z");
        assert_eq!(at("2024-04-30T23:59:59+02:00", Bound::Lower), "2024-04-30T21:59:59.000Z");
    }

    #[test]
    fn other_text_is_not_a_time() {
        for bad in [
            "",
            "yesterday",
            "2025-13-01",
            "31/02/2025",
            "2025/12/31",
            "31-12-2025",
            "1.5",
            "-5",
            "31/12/2025 24:00",
            "2025-1-01",
        ] {
            assert_eq!(parse_time(bad, Bound::Lower), None, "{bad}");
        }
    }
}
