//! The wire event of contract section 1 and its validation.
//!
//! Validation is a pure function of the message bytes. It returns either a
//! [`RefundEvent`] or an [`InvalidEvent`] carrying the contract's reason code
//! and a message that names the offending field. When several rules break,
//! the first in the contract's order wins: too_large, malformed_json,
//! unsupported_schema_version, unknown_event_type, schema_violation.

use std::fmt;

use serde_json::{Map, Value};

use crate::time::Timestamp;

/// Largest accepted message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Largest accepted compact serialization of `refund.metadata`, in bytes.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
pub(crate) const MAX_ID_BYTES: usize = 128;
pub(crate) const MAX_TEXT_BYTES: usize = 256;

/// The lifecycle event types, in rank order (the last three are terminal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    Queued,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl EventType {
    pub const ALL: [EventType; 5] =
        [EventType::Queued, EventType::Processing, EventType::Completed, EventType::Failed, EventType::Cancelled];

    /// The full wire name, `refund.completed`.
    pub fn wire_name(self) -> &'static str {
        match self {
            EventType::Queued => "refund.queued",
            EventType::Processing => "refund.processing",
            EventType::Completed => "refund.completed",
            EventType::Failed => "refund.failed",
            EventType::Cancelled => "refund.cancelled",
        }
    }

    /// The status a refund has when this event wins, `completed`.
    pub fn status_name(self) -> &'static str {
        &self.wire_name()["refund.".len()..]
    }

    pub fn from_wire_name(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.wire_name() == name)
    }

    pub fn from_status_name(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.status_name() == name)
    }

    /// queued 0, processing 1, terminal 2.
    pub fn rank(self) -> u8 {
        match self {
            EventType::Queued => 0,
            EventType::Processing => 1,
            EventType::Completed | EventType::Failed | EventType::Cancelled => 2,
        }
    }

    /// A stable one-byte code, used in store keys.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<EventType> {
        EventType::ALL.get(usize::from(code)).copied()
    }
}

/// The contract's machine-readable reasons for an invalid event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidReason {
    TooLarge,
    MalformedJson,
    UnsupportedSchemaVersion,
    UnknownEventType,
    SchemaViolation,
}

impl InvalidReason {
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidReason::TooLarge => "too_large",
            InvalidReason::MalformedJson => "malformed_json",
            InvalidReason::UnsupportedSchemaVersion => "unsupported_schema_version",
            InvalidReason::UnknownEventType => "unknown_event_type",
            InvalidReason::SchemaViolation => "schema_violation",
        }
    }
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message was rejected: data for the dead-letter destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidEvent {
    pub reason: InvalidReason,
    pub message: String,
}

impl InvalidEvent {
    fn new(reason: InvalidReason, message: impl Into<String>) -> InvalidEvent {
        InvalidEvent { reason, message: message.into() }
    }

    fn schema(message: impl Into<String>) -> InvalidEvent {
        InvalidEvent::new(InvalidReason::SchemaViolation, message)
    }
}

impl fmt::Display for InvalidEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for InvalidEvent {}

/// The optional free-text refund attributes, in the contract's field order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextField {
    OrderNo,
    TransactionId,
    ExternalRefundId,
    Processor,
    PaymentMethodType,
    ProductType,
    StoreId,
    ReferenceId,
    Reason,
    FailureReason,
}

impl TextField {
    pub const COUNT: usize = 10;
    pub const ALL: [TextField; TextField::COUNT] = [
        TextField::OrderNo,
        TextField::TransactionId,
        TextField::ExternalRefundId,
        TextField::Processor,
        TextField::PaymentMethodType,
        TextField::ProductType,
        TextField::StoreId,
        TextField::ReferenceId,
        TextField::Reason,
        TextField::FailureReason,
    ];

    /// The field's key inside `refund`, and in the rendered refund object.
    pub fn name(self) -> &'static str {
        match self {
            TextField::OrderNo => "order_no",
            TextField::TransactionId => "transaction_id",
            TextField::ExternalRefundId => "external_refund_id",
            TextField::Processor => "processor",
            TextField::PaymentMethodType => "payment_method_type",
            TextField::ProductType => "product_type",
            TextField::StoreId => "store_id",
            TextField::ReferenceId => "reference_id",
            TextField::Reason => "reason",
            TextField::FailureReason => "failure_reason",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The optional refund attributes an event may carry. `None` means the event
/// carries no value for that field (absent or null on the wire).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefundFields {
    pub amount: Option<u64>,
    /// Upper case.
    pub currency: Option<String>,
    pub original_amount: Option<u64>,
    /// Indexed by [`TextField::index`]; `processor` is lower case (Unicode rules).
    pub text: [Option<String>; TextField::COUNT],
    /// Compact JSON text of an object.
    pub initiated_by: Option<String>,
    /// Compact JSON text of an object.
    pub metadata: Option<String>,
}

impl RefundFields {
    pub fn text(&self, field: TextField) -> Option<&str> {
        self.text[field.index()].as_deref()
    }
}

/// A valid event, normalized (UTC milliseconds, upper-case currency,
/// lower-case processor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundEvent {
    pub event_id: String,
    pub kind: EventType,
    pub occurred_at: Timestamp,
    pub refund_id: String,
    pub tenant_id: String,
    pub fields: RefundFields,
}

impl RefundEvent {
    /// The order key of events within a refund: (occurred_at, event_id).
    pub fn version(&self) -> (Timestamp, &str) {
        (self.occurred_at, &self.event_id)
    }
}

/// Validates one message (a Kafka value or one line of an event file).
pub fn validate(raw: &[u8]) -> Result<RefundEvent, InvalidEvent> {
    if raw.len() > MAX_MESSAGE_BYTES {
        return Err(InvalidEvent::new(
            InvalidReason::TooLarge,
            format!("message is {} bytes, more than the limit of {MAX_MESSAGE_BYTES}", raw.len()),
        ));
    }
    let text = std::str::from_utf8(raw).map_err(|err| {
        InvalidEvent::new(InvalidReason::MalformedJson, format!("message is not valid UTF-8 ({err})"))
    })?;
    // The typed pass takes the valid events; the rest are decided and worded
    // on the parsed value (see the `wire` module).
    match crate::wire::accept(text) {
        Some(event) => Ok(event),
        None => validate_text(text),
    }
}

/// Validates UTF-8 message text by way of a parsed [`Value`]: the general
/// validator, which decides every case the typed pass declines.
pub(crate) fn validate_text(text: &str) -> Result<RefundEvent, InvalidEvent> {
    let value: Value = serde_json::from_str(text)
        .map_err(|err| InvalidEvent::new(InvalidReason::MalformedJson, format!("message is not valid JSON ({err})")))?;
    validate_value(&value)
}

/// Validates an already parsed message. Size and encoding are the caller's.
pub fn validate_value(value: &Value) -> Result<RefundEvent, InvalidEvent> {
    let Value::Object(top) = value else {
        return Err(InvalidEvent::schema("event must be a JSON object"));
    };
    check_schema_version(top)?;
    let kind = match top.get("type") {
        Some(Value::String(name)) => EventType::from_wire_name(name).ok_or_else(|| {
            InvalidEvent::new(
                InvalidReason::UnknownEventType,
                format!(
                    "type {name:?} is not one of refund.queued, refund.processing, refund.completed, refund.failed, refund.cancelled"
                ),
            )
        })?,
        None | Some(Value::Null) => return Err(InvalidEvent::schema("type is required")),
        Some(_) => return Err(InvalidEvent::schema("type must be a string")),
    };
    let event_id = required_id(top, "event_id", "event_id")?;
    let occurred_at = match top.get("occurred_at") {
        None | Some(Value::Null) => return Err(InvalidEvent::schema("occurred_at is required")),
        Some(Value::String(text)) => Timestamp::parse_rfc3339(text)
            .ok_or_else(|| InvalidEvent::schema("occurred_at must be an RFC 3339 date-time with an offset"))?,
        Some(_) => return Err(InvalidEvent::schema("occurred_at must be a string")),
    };
    let refund = match top.get("refund") {
        None | Some(Value::Null) => return Err(InvalidEvent::schema("refund is required")),
        Some(Value::Object(refund)) => refund,
        Some(_) => return Err(InvalidEvent::schema("refund must be an object")),
    };
    let refund_id = required_id(refund, "id", "refund.id")?;
    let tenant_id = required_id(refund, "tenant_id", "refund.tenant_id")?;
    let fields = validate_fields(refund, kind)?;
    Ok(RefundEvent { event_id, kind, occurred_at, refund_id, tenant_id, fields })
}

fn check_schema_version(top: &Map<String, Value>) -> Result<(), InvalidEvent> {
    match top.get("schema_version") {
        None | Some(Value::Null) => Ok(()),
        // `1.0` parses as a float and is deliberately not the integer 1.
        Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(()),
        Some(other) => Err(InvalidEvent::new(
            InvalidReason::UnsupportedSchemaVersion,
            format!("schema_version {other} is not supported; the only supported version is 1"),
        )),
    }
}

fn required_id(object: &Map<String, Value>, key: &str, path: &str) -> Result<String, InvalidEvent> {
    match object.get(key) {
        None | Some(Value::Null) => Err(InvalidEvent::schema(format!("{path} is required"))),
        Some(Value::String(s)) if (1..=MAX_ID_BYTES).contains(&s.len()) => Ok(s.clone()),
        Some(Value::String(_)) => {
            Err(InvalidEvent::schema(format!("{path} must be a string of 1 to {MAX_ID_BYTES} bytes")))
        }
        Some(_) => Err(InvalidEvent::schema(format!("{path} must be a string"))),
    }
}

fn validate_fields(refund: &Map<String, Value>, kind: EventType) -> Result<RefundFields, InvalidEvent> {
    let amount = optional_integer(refund, "amount", 1, "refund.amount must be a positive integer")?;
    let currency = match refund.get("currency") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() == 3 && s.bytes().all(|b| b.is_ascii_alphabetic()) => {
            Some(s.to_ascii_uppercase())
        }
        Some(_) => {
            return Err(InvalidEvent::schema("refund.currency must be a string of 3 ASCII letters"));
        }
    };
    if kind == EventType::Queued {
        if amount.is_none() {
            return Err(InvalidEvent::schema("refund.amount is required on refund.queued"));
        }
        if currency.is_none() {
            return Err(InvalidEvent::schema("refund.currency is required on refund.queued"));
        }
    }
    let original_amount =
        optional_integer(refund, "original_amount", 0, "refund.original_amount must be an integer >= 0")?;
    let mut text: [Option<String>; TextField::COUNT] = Default::default();
    for field in TextField::ALL {
        let value = optional_text(refund, field.name())?;
        text[field.index()] = match field {
            TextField::Processor => value.map(|p| p.to_lowercase()),
            _ => value,
        };
    }
    Ok(RefundFields {
        amount,
        currency,
        original_amount,
        text,
        initiated_by: optional_object(refund, "initiated_by", None)?,
        metadata: optional_object(refund, "metadata", Some(MAX_METADATA_BYTES))?,
    })
}

fn optional_integer(
    refund: &Map<String, Value>,
    key: &str,
    minimum: u64,
    message: &str,
) -> Result<Option<u64>, InvalidEvent> {
    match refund.get(key) {
        None | Some(Value::Null) => Ok(None),
        // Only integer literals pass: `2500.0` and `1e3` parse as floats.
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v >= minimum => Ok(Some(v)),
            _ => Err(InvalidEvent::schema(message)),
        },
        Some(_) => Err(InvalidEvent::schema(message)),
    }
}

fn optional_text(refund: &Map<String, Value>, key: &str) -> Result<Option<String>, InvalidEvent> {
    match refund.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if (1..=MAX_TEXT_BYTES).contains(&s.len()) => Ok(Some(s.clone())),
        Some(_) => Err(InvalidEvent::schema(format!("refund.{key} must be a string of 1 to {MAX_TEXT_BYTES} bytes"))),
    }
}

fn optional_object(
    refund: &Map<String, Value>,
    key: &str,
    max_bytes: Option<usize>,
) -> Result<Option<String>, InvalidEvent> {
    match refund.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value @ Value::Object(_)) => {
            let compact = canonical_json(value);
            match max_bytes {
                Some(max) if compact.len() > max => Err(InvalidEvent::schema(format!(
                    "refund.{key} is {} bytes serialized, more than the limit of {max}",
                    compact.len()
                ))),
                _ => Ok(Some(compact)),
            }
        }
        Some(_) => Err(InvalidEvent::schema(format!("refund.{key} must be an object"))),
    }
}

/// Compact JSON with every object's keys sorted: equal JSON values (which the
/// contract treats as the same event) always give equal bytes, so the
/// projection cannot depend on which of two equal events arrived first.
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    // serde_json writes UTF-8 only.
    String::from_utf8(out).unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned())
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_compact(key.as_str(), out);
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_compact(scalar, out),
    }
}

/// serde_json's compact form, as `Value`'s `Display` writes it.
fn write_compact(value: &(impl serde::Serialize + ?Sized), out: &mut Vec<u8>) {
    // Writing a string or a scalar into a Vec cannot fail.
    let _ = serde_json::to_writer(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":[{"d":1,"c":2}],"x":"\u00e9"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":"é","y":[{"c":2,"d":1}]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":{"x":"é","y":[{"c":2,"d":1}]},"b":1}"#);
        assert_eq!(canonical_json(&a), canonical_json(&b));
    }
}
