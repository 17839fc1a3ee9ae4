//! The NDJSON writer: JSON objects written field by field straight into a
//! line (no `serde_json::Value` per event), and lines written out one per
//! `\n`, counted.

use std::io::{self, Write};

/// Upper-case hexadecimal digits, for `\u00XX` escapes.
const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Appends the last `width` decimal digits of `value`, zero-padded.
pub(crate) fn push_digits(buf: &mut String, value: i64, width: u32) {
    let mut div = 10i64.pow(width - 1);
    let value = value.rem_euclid(10i64.pow(width));
    while div > 0 {
        let digit = u8::try_from((value / div) % 10).expect("a digit");
        buf.push(char::from(b'0' + digit));
        div /= 10;
    }
}

/// Appends `text` as a JSON string literal.
pub(crate) fn push_json_str(buf: &mut String, text: &str) {
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
                buf.push(char::from(HEX[usize::try_from(u32::from(c) & 15).expect("< 16")]));
            }
            c => buf.push(c),
        }
    }
    buf.push('"');
}

/// A JSON object written field by field into a line.
pub(crate) struct ObjectWriter<'a> {
    buf: &'a mut String,
    first: bool,
}

impl<'a> ObjectWriter<'a> {
    pub(crate) fn open(buf: &'a mut String) -> ObjectWriter<'a> {
        buf.push('{');
        ObjectWriter { buf, first: true }
    }

    pub(crate) fn key(&mut self, key: &str) -> &mut String {
        if !self.first {
            self.buf.push(',');
        }
        self.first = false;
        self.buf.push('"');
        self.buf.push_str(key);
        self.buf.push_str("\":");
        self.buf
    }

    pub(crate) fn str(&mut self, key: &str, value: &str) {
        push_json_str(self.key(key), value);
    }

    pub(crate) fn num(&mut self, key: &str, value: u64) {
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

    pub(crate) fn raw(&mut self, key: &str, json: &str) {
        self.key(key).push_str(json);
    }

    pub(crate) fn close(self) {
        self.buf.push('}');
    }
}

/// Lines out to `W`, each followed by `\n`.
pub(crate) struct LineWriter<W: Write> {
    out: W,
    lines: u64,
}

impl<W: Write> LineWriter<W> {
    pub(crate) fn new(out: W) -> LineWriter<W> {
        LineWriter { out, lines: 0 }
    }

    pub(crate) fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        self.out.write_all(line)?;
        self.out.write_all(b"\n")?;
        self.lines += 1;
        Ok(())
    }

    /// Lines written so far.
    pub(crate) fn lines(&self) -> u64 {
        self.lines
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn push_digits_zero_pads_and_keeps_the_last_digits() {
        let mut buf = String::new();
        push_digits(&mut buf, 7, 3);
        push_digits(&mut buf, 12_345, 2);
        push_digits(&mut buf, -5, 2);
        assert_eq!(buf, "0074595");
    }

    #[test]
    fn push_json_str_round_trips_through_a_json_parser() {
        let texts = ["plain", "quote \" and backslash \\", "new\nline\rcr\ttab", "\u{1}\u{1f} control", "返品 café"];
        for text in texts {
            let mut buf = String::new();
            push_json_str(&mut buf, text);
            let parsed: Value = serde_json::from_str(&buf).unwrap_or_else(|err| panic!("{err}: {buf}"));
            assert_eq!(parsed, json!(text), "{buf}");
        }
        let mut buf = String::new();
        push_json_str(&mut buf, "\u{1f}");
        assert_eq!(buf, r#""\u001F""#);
    }

    #[test]
    fn object_writer_writes_compact_json_in_field_order() {
        let mut line = String::new();
        let mut top = ObjectWriter::open(&mut line);
        top.num("schema_version", 1);
        top.str("type", "refund.queued");
        top.num("amount", 18_446_744_073_709_551_615);
        top.num("zero", 0);
        let inner = top.key("refund");
        let mut refund = ObjectWriter::open(inner);
        refund.str("id", "ref_1");
        refund.raw("metadata", "{}");
        refund.close();
        top.close();
        assert_eq!(
            line,
            r#"{"schema_version":1,"type":"refund.queued","amount":18446744073709551615,"zero":0,"refund":{"id":"ref_1","metadata":{}}}"#
        );
        let empty = &mut String::new();
        ObjectWriter::open(empty).close();
        assert_eq!(empty, "{}");
    }

    #[test]
    fn line_writer_ends_every_line_and_counts_them() {
        let mut out = Vec::new();
        let mut writer = LineWriter::new(&mut out);
        writer.write_line(b"{}").unwrap();
        writer.write_line(b"").unwrap();
        assert_eq!(writer.lines(), 2);
        writer.flush().unwrap();
        assert_eq!(out, b"{}\n\n");
    }
}
