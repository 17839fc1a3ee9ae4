//! `refunds_domain::validate` against every rule of contract section 1 and the
//! precise points of section 5: reason codes, their precedence, and messages
//! that name the offending field.

use refunds_domain::event::{MAX_MESSAGE_BYTES, MAX_METADATA_BYTES};
use refunds_domain::{EventType, InvalidReason, RefundEvent, TextField, validate};
use serde_json::{Value, json};

/// The example event of contract section 1.
fn example() -> Value {
    json!({
        "schema_version": 1,
        "event_id": "evt_7Hq2",
        "type": "refund.completed",
        "occurred_at": "2026-02-22T10:32:15.123Z",
        "refund": {
            "id": "ref_abc123",
            "tenant_id": "org_xyz789",
            "amount": 2500,
            "currency": "USD",
            "original_amount": 10000,
            "order_no": "ORDER-12345",
            "transaction_id": "ch_1N4HbSKz9cXRvFYr",
            "external_refund_id": "re_1N4HcTKz9cXRvFYs",
            "processor": "stripe",
            "payment_method_type": "credit_card",
            "product_type": "e_commerce",
            "store_id": "store123",
            "reference_id": "reference_id_0",
            "reason": "product_defective",
            "failure_reason": null,
            "initiated_by": {"type": "user", "id": "usr_1", "email": "ops@example.com"},
            "metadata": {"ticketId": "SUP-1234"}
        }
    })
}

/// The smallest valid event of the given type: only the required fields.
fn minimal(kind: &str) -> Value {
    let mut event = json!({
        "event_id": "evt_1",
        "type": kind,
        "occurred_at": "2026-02-22T10:32:15.123Z",
        "refund": {"id": "ref_1", "tenant_id": "org_1"}
    });
    if kind == "refund.queued" {
        event["refund"]["amount"] = json!(2500);
        event["refund"]["currency"] = json!("USD");
    }
    event
}

/// The example event with one change, as message bytes.
fn example_with(change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut event = example();
    change(&mut event);
    serde_json::to_vec(&event).unwrap()
}

/// The example event with `refund.<key>` set to `value`.
fn with_refund_field(key: &str, value: Value) -> Vec<u8> {
    example_with(|e| e["refund"][key] = value)
}

/// The example event without `refund.<key>`.
fn without_refund_field(key: &str) -> Vec<u8> {
    example_with(|e| {
        e["refund"].as_object_mut().unwrap().remove(key);
    })
}

/// The example event with top-level `key` set to `value`.
fn with_top_field(key: &str, value: Value) -> Vec<u8> {
    example_with(|e| e[key] = value)
}

fn without_top_field(key: &str) -> Vec<u8> {
    example_with(|e| {
        e.as_object_mut().unwrap().remove(key);
    })
}

fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

#[track_caller]
fn accepted(raw: &[u8]) -> RefundEvent {
    match validate(raw) {
        Ok(event) => event,
        Err(err) => panic!("expected a valid event, got {err} for {}", preview(raw)),
    }
}

/// Asserts the rejection reason, and that the message names `field` (when
/// the rule is about a field).
#[track_caller]
fn rejected(raw: &[u8], reason: InvalidReason, field: Option<&str>) -> String {
    let err = match validate(raw) {
        Ok(event) => panic!("expected {reason}, got a valid event {event:?} for {}", preview(raw)),
        Err(err) => err,
    };
    assert_eq!(err.reason, reason, "wrong reason ({err}) for {}", preview(raw));
    if let Some(field) = field {
        assert!(err.message.contains(field), "message {:?} does not name the field {field:?}", err.message);
    }
    err.message
}

#[track_caller]
fn schema_violation(raw: &[u8], field: &str) -> String {
    rejected(raw, InvalidReason::SchemaViolation, Some(field))
}

fn preview(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    text.chars().take(300).collect()
}

/// A valid event padded (with an unknown field) to exactly `size` bytes.
fn valid_event_of_size(size: usize) -> Vec<u8> {
    let mut event = example();
    event["padding"] = json!("");
    let bare = to_bytes(&event).len();
    event["padding"] = json!("x".repeat(size - bare));
    let raw = to_bytes(&event);
    assert_eq!(raw.len(), size);
    raw
}

/// A metadata object whose compact serialization is exactly `size` bytes.
fn metadata_of_compact_size(size: usize) -> Value {
    // `{"k":""}` is 8 bytes.
    let metadata = json!({"k": "x".repeat(size - 8)});
    assert_eq!(metadata.to_string().len(), size);
    metadata
}

// ---------------------------------------------------------------------------
// Valid events and their normalization

#[test]
fn the_contract_example_is_valid_and_kept_as_given() {
    let event = accepted(&to_bytes(&example()));
    assert_eq!(event.event_id, "evt_7Hq2");
    assert_eq!(event.kind, EventType::Completed);
    assert_eq!(event.occurred_at.to_string(), "2026-02-22T10:32:15.123Z");
    assert_eq!(event.refund_id, "ref_abc123");
    assert_eq!(event.tenant_id, "org_xyz789");
    let f = &event.fields;
    assert_eq!(f.amount, Some(2500));
    assert_eq!(f.currency.as_deref(), Some("USD"));
    assert_eq!(f.original_amount, Some(10000));
    assert_eq!(f.text(TextField::OrderNo), Some("ORDER-12345"));
    assert_eq!(f.text(TextField::TransactionId), Some("ch_1N4HbSKz9cXRvFYr"));
    assert_eq!(f.text(TextField::ExternalRefundId), Some("re_1N4HcTKz9cXRvFYs"));
    assert_eq!(f.text(TextField::Processor), Some("stripe"));
    assert_eq!(f.text(TextField::PaymentMethodType), Some("credit_card"));
    assert_eq!(f.text(TextField::ProductType), Some("e_commerce"));
    assert_eq!(f.text(TextField::StoreId), Some("store123"));
    assert_eq!(f.text(TextField::ReferenceId), Some("reference_id_0"));
    assert_eq!(f.text(TextField::Reason), Some("product_defective"));
    assert_eq!(f.text(TextField::FailureReason), None);
    let initiated_by: Value = serde_json::from_str(f.initiated_by.as_deref().unwrap()).unwrap();
    assert_eq!(initiated_by, json!({"type": "user", "id": "usr_1", "email": "ops@example.com"}));
    assert_eq!(f.metadata.as_deref(), Some(r#"{"ticketId":"SUP-1234"}"#));
}

#[test]
fn every_one_of_the_five_types_is_accepted() {
    for (name, kind) in [
        ("refund.queued", EventType::Queued),
        ("refund.processing", EventType::Processing),
        ("refund.completed", EventType::Completed),
        ("refund.failed", EventType::Failed),
        ("refund.cancelled", EventType::Cancelled),
    ] {
        assert_eq!(accepted(&to_bytes(&minimal(name))).kind, kind, "{name}");
    }
}

#[test]
fn amount_and_currency_are_optional_on_every_type_but_queued() {
    for kind in ["refund.processing", "refund.completed", "refund.failed", "refund.cancelled"] {
        let event = accepted(&to_bytes(&minimal(kind)));
        assert_eq!(event.fields, Default::default(), "{kind}");
    }
}

#[test]
fn a_minimal_queued_event_needs_only_amount_and_currency_besides_the_ids() {
    let event = accepted(&to_bytes(&minimal("refund.queued")));
    assert_eq!(event.fields.amount, Some(2500));
    assert_eq!(event.fields.currency.as_deref(), Some("USD"));
}

#[test]
fn optional_fields_given_as_null_count_as_absent() {
    let mut event = minimal("refund.completed");
    for key in [
        "amount",
        "currency",
        "original_amount",
        "order_no",
        "transaction_id",
        "external_refund_id",
        "processor",
        "payment_method_type",
        "product_type",
        "store_id",
        "reference_id",
        "reason",
        "failure_reason",
        "initiated_by",
        "metadata",
    ] {
        event["refund"][key] = Value::Null;
    }
    assert_eq!(accepted(&to_bytes(&event)).fields, Default::default());
}

#[test]
fn unknown_fields_are_ignored_at_the_top_and_inside_refund() {
    let raw = example_with(|e| {
        e["schema_revision"] = json!([1, 2, {"x": null}]);
        e["Type"] = json!(42);
        e["refund"]["extra"] = json!({"anything": [true]});
        e["refund"]["Amount"] = json!("not a number");
    });
    assert_eq!(accepted(&raw), accepted(&to_bytes(&example())));
}

#[test]
fn schema_version_absent_means_version_1() {
    assert_eq!(accepted(&without_top_field("schema_version")), accepted(&to_bytes(&example())));
}

#[test]
fn schema_version_null_means_absent() {
    assert_eq!(accepted(&with_top_field("schema_version", Value::Null)), accepted(&to_bytes(&example())));
}

#[test]
fn whitespace_around_the_json_is_allowed() {
    let mut raw = b" \t".to_vec();
    raw.extend(to_bytes(&example()));
    raw.extend(b" \r\n");
    accepted(&raw);
}

// ---------------------------------------------------------------------------
// Whole message size: too_large

#[test]
fn a_message_of_exactly_256_kib_is_accepted() {
    assert_eq!(MAX_MESSAGE_BYTES, 256 * 1024);
    accepted(&valid_event_of_size(256 * 1024));
}

#[test]
fn a_message_of_256_kib_plus_1_is_too_large() {
    rejected(&valid_event_of_size(256 * 1024 + 1), InvalidReason::TooLarge, None);
}

#[test]
fn size_is_checked_before_utf_8_so_oversized_garbage_is_too_large() {
    rejected(&vec![0xff; 256 * 1024 + 1], InvalidReason::TooLarge, None);
}

#[test]
fn size_is_checked_before_json_so_oversized_broken_json_is_too_large() {
    let mut raw = b"{\"event_id\": ".to_vec();
    raw.resize(256 * 1024 + 1, b'[');
    rejected(&raw, InvalidReason::TooLarge, None);
}

#[test]
fn size_is_checked_before_the_schema_version() {
    let mut event = example();
    event["schema_version"] = json!(2);
    event["type"] = json!("refund.bogus");
    event["padding"] = json!("x".repeat(256 * 1024));
    rejected(&to_bytes(&event), InvalidReason::TooLarge, None);
}

// ---------------------------------------------------------------------------
// malformed_json

#[test]
fn bytes_that_are_not_utf_8_are_malformed_json() {
    rejected(b"\xff\xfe\x00{", InvalidReason::MalformedJson, None);
}

/// `event` as bytes with one invalid UTF-8 byte inside the `order_no` string.
fn with_invalid_utf_8(event: &Value) -> Vec<u8> {
    let text = String::from_utf8(to_bytes(event)).unwrap();
    assert!(text.contains("ORDER-12345"));
    text.replace("ORDER-12345", "ORDER-\u{1}").into_bytes().into_iter().map(|b| if b == 1 { 0xff } else { b }).collect()
}

#[test]
fn invalid_utf_8_inside_an_otherwise_valid_event_is_malformed_json() {
    rejected(&with_invalid_utf_8(&example()), InvalidReason::MalformedJson, None);
}

#[test]
fn non_utf_8_bytes_are_malformed_json_even_with_an_unsupported_schema_version() {
    let mut event = example();
    event["schema_version"] = json!(2);
    event["type"] = json!("refund.reversed");
    rejected(&with_invalid_utf_8(&event), InvalidReason::MalformedJson, None);
}

#[test]
fn truncated_or_trailing_garbage_json_is_malformed_json() {
    let good = to_bytes(&example());
    let truncated = &good[..good.len() - 1];
    rejected(truncated, InvalidReason::MalformedJson, None);
    let mut trailing = good.clone();
    trailing.extend(b"x");
    rejected(&trailing, InvalidReason::MalformedJson, None);
    let mut two = good.clone();
    two.extend(&good);
    rejected(&two, InvalidReason::MalformedJson, None);
}

#[test]
fn an_empty_message_is_malformed_json() {
    rejected(b"", InvalidReason::MalformedJson, None);
    rejected(b"   ", InvalidReason::MalformedJson, None);
}

#[test]
fn single_quoted_or_commented_json_is_malformed_json() {
    rejected(b"{'type': 'refund.queued'}", InvalidReason::MalformedJson, None);
    rejected(b"{\"type\": \"refund.queued\" /* c */}", InvalidReason::MalformedJson, None);
}

// ---------------------------------------------------------------------------
// Valid JSON that is not an object

#[test]
fn valid_json_that_is_not_an_object_is_a_schema_violation() {
    for raw in [&b"[]"[..], b"[{\"type\":\"refund.queued\"}]", b"\"refund.queued\"", b"1", b"true", b"null"] {
        rejected(raw, InvalidReason::SchemaViolation, None);
    }
}

// ---------------------------------------------------------------------------
// schema_version: unsupported_schema_version

#[test]
fn schema_version_2_is_unsupported() {
    rejected(
        &with_top_field("schema_version", json!(2)),
        InvalidReason::UnsupportedSchemaVersion,
        Some("schema_version"),
    );
}

#[test]
fn schema_version_string_1_is_unsupported() {
    rejected(
        &with_top_field("schema_version", json!("1")),
        InvalidReason::UnsupportedSchemaVersion,
        Some("schema_version"),
    );
}

#[test]
fn schema_version_1_point_0_is_not_the_integer_1_and_is_unsupported() {
    let raw =
        String::from_utf8(to_bytes(&example())).unwrap().replace("\"schema_version\":1", "\"schema_version\":1.0");
    assert!(raw.contains("1.0"));
    rejected(raw.as_bytes(), InvalidReason::UnsupportedSchemaVersion, Some("schema_version"));
}

#[test]
fn schema_version_1e0_is_not_the_integer_1_and_is_unsupported() {
    let raw =
        String::from_utf8(to_bytes(&example())).unwrap().replace("\"schema_version\":1", "\"schema_version\":1e0");
    rejected(raw.as_bytes(), InvalidReason::UnsupportedSchemaVersion, Some("schema_version"));
}

#[test]
fn every_other_schema_version_value_is_unsupported() {
    for value in [json!(0), json!(-1), json!(3), json!(true), json!([1]), json!({"v": 1}), json!("")] {
        rejected(
            &with_top_field("schema_version", value),
            InvalidReason::UnsupportedSchemaVersion,
            Some("schema_version"),
        );
    }
}

// ---------------------------------------------------------------------------
// type: unknown_event_type or schema_violation

#[test]
fn an_unknown_type_string_is_an_unknown_event_type() {
    rejected(&with_top_field("type", json!("refund.reversed")), InvalidReason::UnknownEventType, Some("type"));
}

#[test]
fn event_types_are_case_sensitive() {
    for name in [
        "Refund.Completed",
        "REFUND.COMPLETED",
        "refund.Completed",
        "refund.canceled",
        "completed",
        "refund.completed ",
        " refund.completed",
        "",
    ] {
        rejected(&with_top_field("type", json!(name)), InvalidReason::UnknownEventType, Some("type"));
    }
}

#[test]
fn a_missing_type_is_a_schema_violation() {
    schema_violation(&without_top_field("type"), "type");
}

#[test]
fn a_null_type_counts_as_missing_and_is_a_schema_violation() {
    schema_violation(&with_top_field("type", Value::Null), "type");
}

#[test]
fn a_non_string_type_is_a_schema_violation() {
    for value in [json!(2), json!(true), json!(["refund.completed"]), json!({"name": "refund.completed"})] {
        schema_violation(&with_top_field("type", value), "type");
    }
}

// ---------------------------------------------------------------------------
// Precedence: too_large, malformed_json, unsupported_schema_version,
// unknown_event_type, schema_violation

#[test]
fn unsupported_schema_version_wins_over_an_unknown_type() {
    let raw = example_with(|e| {
        e["schema_version"] = json!(2);
        e["type"] = json!("refund.reversed");
    });
    rejected(&raw, InvalidReason::UnsupportedSchemaVersion, Some("schema_version"));
}

#[test]
fn unsupported_schema_version_wins_over_a_missing_type() {
    let raw = example_with(|e| {
        e["schema_version"] = json!("1");
        e.as_object_mut().unwrap().remove("type");
    });
    rejected(&raw, InvalidReason::UnsupportedSchemaVersion, Some("schema_version"));
}

#[test]
fn unsupported_schema_version_wins_over_schema_violations() {
    let raw = example_with(|e| {
        e["schema_version"] = json!(2);
        e["event_id"] = json!("");
        e["refund"]["amount"] = json!(-5);
    });
    rejected(&raw, InvalidReason::UnsupportedSchemaVersion, Some("schema_version"));
}

#[test]
fn unknown_event_type_wins_over_schema_violations() {
    let raw = example_with(|e| {
        e["type"] = json!("refund.reversed");
        e.as_object_mut().unwrap().remove("event_id");
        e["occurred_at"] = json!("yesterday");
        e["refund"] = json!("not an object");
    });
    rejected(&raw, InvalidReason::UnknownEventType, Some("type"));
}

#[test]
fn unknown_event_type_wins_over_a_missing_queued_amount() {
    let raw = example_with(|e| {
        e["type"] = json!("refund.Queued");
        e["refund"].as_object_mut().unwrap().remove("amount");
    });
    rejected(&raw, InvalidReason::UnknownEventType, Some("type"));
}

// ---------------------------------------------------------------------------
// event_id, refund.id, refund.tenant_id: required strings of 1..=128 bytes

#[test]
fn ids_of_exactly_128_bytes_are_accepted() {
    let id = "i".repeat(128);
    assert_eq!(accepted(&with_top_field("event_id", json!(id))).event_id, id);
    assert_eq!(accepted(&with_refund_field("id", json!(id))).refund_id, id);
    assert_eq!(accepted(&with_refund_field("tenant_id", json!(id))).tenant_id, id);
}

#[test]
fn ids_of_129_bytes_are_schema_violations() {
    let id = json!("i".repeat(129));
    schema_violation(&with_top_field("event_id", id.clone()), "event_id");
    schema_violation(&with_refund_field("id", id.clone()), "refund.id");
    schema_violation(&with_refund_field("tenant_id", id), "refund.tenant_id");
}

#[test]
fn id_length_is_measured_in_bytes_not_characters() {
    // 64 two-byte characters are 128 bytes; one more ASCII byte is 129.
    let ok = "é".repeat(64);
    assert_eq!(accepted(&with_top_field("event_id", json!(ok))).event_id, ok);
    let too_long = json!(format!("{ok}a"));
    schema_violation(&with_top_field("event_id", too_long.clone()), "event_id");
    schema_violation(&with_refund_field("id", too_long.clone()), "refund.id");
    schema_violation(&with_refund_field("tenant_id", too_long), "refund.tenant_id");
}

#[test]
fn empty_ids_are_schema_violations() {
    schema_violation(&with_top_field("event_id", json!("")), "event_id");
    schema_violation(&with_refund_field("id", json!("")), "refund.id");
    schema_violation(&with_refund_field("tenant_id", json!("")), "refund.tenant_id");
}

#[test]
fn missing_ids_are_schema_violations() {
    schema_violation(&without_top_field("event_id"), "event_id");
    schema_violation(&without_refund_field("id"), "refund.id");
    schema_violation(&without_refund_field("tenant_id"), "refund.tenant_id");
}

#[test]
fn null_ids_count_as_missing_and_are_schema_violations() {
    schema_violation(&with_top_field("event_id", Value::Null), "event_id");
    schema_violation(&with_refund_field("id", Value::Null), "refund.id");
    schema_violation(&with_refund_field("tenant_id", Value::Null), "refund.tenant_id");
}

#[test]
fn non_string_ids_are_schema_violations() {
    for value in [json!(12345), json!(["evt_1"]), json!({"id": "x"}), json!(true)] {
        schema_violation(&with_top_field("event_id", value.clone()), "event_id");
        schema_violation(&with_refund_field("id", value.clone()), "refund.id");
        schema_violation(&with_refund_field("tenant_id", value), "refund.tenant_id");
    }
}

// ---------------------------------------------------------------------------
// occurred_at: required RFC 3339 with offset, normalized to UTC milliseconds

fn occurred_at(text: &str) -> String {
    accepted(&with_top_field("occurred_at", json!(text))).occurred_at.to_string()
}

#[test]
fn occurred_at_with_an_offset_is_normalized_to_utc() {
    assert_eq!(occurred_at("2026-02-22T16:02:15.123+05:30"), "2026-02-22T10:32:15.123Z");
    assert_eq!(occurred_at("2026-02-22T09:32:15.123-01:00"), "2026-02-22T10:32:15.123Z");
}

#[test]
fn occurred_at_offset_can_cross_a_day_and_year_boundary() {
    assert_eq!(occurred_at("2025-12-31T23:30:00-01:00"), "2026-01-01T00:30:00.000Z");
    assert_eq!(occurred_at("2026-01-01T00:30:00+01:00"), "2025-12-31T23:30:00.000Z");
}

#[test]
fn occurred_at_fractions_are_truncated_to_milliseconds_not_rounded() {
    assert_eq!(occurred_at("2026-02-22T10:32:15.123999999Z"), "2026-02-22T10:32:15.123Z");
    assert_eq!(occurred_at("2026-02-22T10:32:15.9999Z"), "2026-02-22T10:32:15.999Z");
}

#[test]
fn occurred_at_accepts_any_number_of_fraction_digits_including_none() {
    assert_eq!(occurred_at("2026-02-22T10:32:15Z"), "2026-02-22T10:32:15.000Z");
    assert_eq!(occurred_at("2026-02-22T10:32:15.1Z"), "2026-02-22T10:32:15.100Z");
    assert_eq!(occurred_at("2026-02-22T10:32:15.12Z"), "2026-02-22T10:32:15.120Z");
    assert_eq!(occurred_at(&format!("2026-02-22T10:32:15.{}Z", "7".repeat(30))), "2026-02-22T10:32:15.777Z");
}

#[test]
fn occurred_at_accepts_lower_case_t_and_z() {
    assert_eq!(occurred_at("2026-02-22t10:32:15.123z"), "2026-02-22T10:32:15.123Z");
}

#[test]
fn occurred_at_accepts_minus_zero_offset() {
    assert_eq!(occurred_at("2026-02-22T10:32:15.123-00:00"), "2026-02-22T10:32:15.123Z");
}

#[test]
fn occurred_at_with_equal_instants_in_different_offsets_is_equal() {
    let a = accepted(&with_top_field("occurred_at", json!("2026-02-22T10:32:15.5Z")));
    let b = accepted(&with_top_field("occurred_at", json!("2026-02-22T11:32:15.500999+01:00")));
    assert_eq!(a.occurred_at, b.occurred_at);
}

#[test]
fn occurred_at_without_an_offset_is_a_schema_violation() {
    schema_violation(&with_top_field("occurred_at", json!("2026-02-22T10:32:15.123")), "occurred_at");
}

#[test]
fn occurred_at_that_is_not_rfc_3339_is_a_schema_violation() {
    for text in [
        "2026-02-22",
        "2026-02-22 10:32:15Z",
        "2026-02-30T10:32:15Z",
        "2026-02-22T25:32:15Z",
        "2026-02-22T10:32:15+0530",
        "22/02/2026 10:32",
        "1771756335",
        "yesterday",
        "",
    ] {
        schema_violation(&with_top_field("occurred_at", json!(text)), "occurred_at");
    }
}

#[test]
fn occurred_at_as_a_number_is_a_schema_violation() {
    schema_violation(&with_top_field("occurred_at", json!(1_771_756_335_123_u64)), "occurred_at");
}

#[test]
fn a_missing_occurred_at_is_a_schema_violation() {
    schema_violation(&without_top_field("occurred_at"), "occurred_at");
}

#[test]
fn a_null_occurred_at_counts_as_missing_and_is_a_schema_violation() {
    schema_violation(&with_top_field("occurred_at", Value::Null), "occurred_at");
}

// ---------------------------------------------------------------------------
// refund: required object

#[test]
fn a_missing_refund_is_a_schema_violation() {
    schema_violation(&without_top_field("refund"), "refund");
}

#[test]
fn a_null_refund_counts_as_missing_and_is_a_schema_violation() {
    schema_violation(&with_top_field("refund", Value::Null), "refund");
}

#[test]
fn a_refund_that_is_not_an_object_is_a_schema_violation() {
    for value in [json!("ref_1"), json!([{"id": "ref_1"}]), json!(1)] {
        schema_violation(&with_top_field("refund", value), "refund");
    }
}

// ---------------------------------------------------------------------------
// refund.amount: integer minor units > 0, required on queued

#[test]
fn amount_of_2500_point_0_is_a_schema_violation() {
    let raw = String::from_utf8(to_bytes(&example())).unwrap().replace("\"amount\":2500", "\"amount\":2500.0");
    assert!(raw.contains("2500.0"));
    schema_violation(raw.as_bytes(), "refund.amount");
}

#[test]
fn amount_in_exponent_notation_is_not_an_integer_and_is_a_schema_violation() {
    let raw = String::from_utf8(to_bytes(&example())).unwrap().replace("\"amount\":2500", "\"amount\":2.5e3");
    schema_violation(raw.as_bytes(), "refund.amount");
}

#[test]
fn amount_of_zero_is_a_schema_violation() {
    schema_violation(&with_refund_field("amount", json!(0)), "refund.amount");
}

#[test]
fn a_negative_amount_is_a_schema_violation() {
    schema_violation(&with_refund_field("amount", json!(-2500)), "refund.amount");
}

#[test]
fn amount_as_a_string_is_a_schema_violation() {
    schema_violation(&with_refund_field("amount", json!("2500")), "refund.amount");
}

#[test]
fn a_fractional_amount_is_a_schema_violation() {
    schema_violation(&with_refund_field("amount", json!(25.5)), "refund.amount");
}

#[test]
fn amount_of_1_and_of_u64_max_are_accepted() {
    assert_eq!(accepted(&with_refund_field("amount", json!(1))).fields.amount, Some(1));
    assert_eq!(accepted(&with_refund_field("amount", json!(u64::MAX))).fields.amount, Some(u64::MAX));
}

#[test]
fn amount_is_required_on_queued() {
    let mut event = minimal("refund.queued");
    event["refund"].as_object_mut().unwrap().remove("amount");
    schema_violation(&to_bytes(&event), "refund.amount");
}

#[test]
fn a_null_amount_on_queued_counts_as_missing() {
    let mut event = minimal("refund.queued");
    event["refund"]["amount"] = Value::Null;
    schema_violation(&to_bytes(&event), "refund.amount");
}

// ---------------------------------------------------------------------------
// refund.currency: 3 ASCII letters, stored upper case, required on queued

#[test]
fn currency_is_stored_upper_case() {
    for given in ["usd", "Usd", "uSd", "USD"] {
        assert_eq!(
            accepted(&with_refund_field("currency", json!(given))).fields.currency.as_deref(),
            Some("USD"),
            "{given}"
        );
    }
}

#[test]
fn currency_that_is_not_3_ascii_letters_is_a_schema_violation() {
    for given in [
        json!("US"),
        json!("USDD"),
        json!("U5D"),
        json!("U D"),
        json!(""),
        // Three bytes, but not three ASCII letters.
        json!("ÜS"),
        json!("ÜSD"),
        json!(840),
        json!(["USD"]),
    ] {
        schema_violation(&with_refund_field("currency", given), "refund.currency");
    }
}

#[test]
fn currency_is_required_on_queued() {
    let mut event = minimal("refund.queued");
    event["refund"].as_object_mut().unwrap().remove("currency");
    schema_violation(&to_bytes(&event), "refund.currency");
}

#[test]
fn a_null_currency_on_queued_counts_as_missing() {
    let mut event = minimal("refund.queued");
    event["refund"]["currency"] = Value::Null;
    schema_violation(&to_bytes(&event), "refund.currency");
}

// ---------------------------------------------------------------------------
// refund.original_amount: optional integer >= 0

#[test]
fn original_amount_of_zero_is_accepted() {
    assert_eq!(accepted(&with_refund_field("original_amount", json!(0))).fields.original_amount, Some(0));
}

#[test]
fn a_negative_original_amount_is_a_schema_violation() {
    schema_violation(&with_refund_field("original_amount", json!(-1)), "refund.original_amount");
}

#[test]
fn original_amount_of_10000_point_0_is_a_schema_violation() {
    let raw = String::from_utf8(to_bytes(&example()))
        .unwrap()
        .replace("\"original_amount\":10000", "\"original_amount\":10000.0");
    assert!(raw.contains("10000.0"));
    schema_violation(raw.as_bytes(), "refund.original_amount");
}

#[test]
fn original_amount_as_a_string_is_a_schema_violation() {
    schema_violation(&with_refund_field("original_amount", json!("10000")), "refund.original_amount");
}

// ---------------------------------------------------------------------------
// refund.processor: optional string, lower-cased with Unicode rules

fn processor(given: &str) -> Option<String> {
    accepted(&with_refund_field("processor", json!(given))).fields.text(TextField::Processor).map(str::to_owned)
}

#[test]
fn processor_is_stored_lower_case() {
    assert_eq!(processor("Stripe").as_deref(), Some("stripe"));
    assert_eq!(processor("STRIPE").as_deref(), Some("stripe"));
}

#[test]
fn processor_is_lower_cased_with_unicode_rules() {
    assert_eq!(processor("ÅDYEN").as_deref(), Some("ådyen"));
    assert_eq!(processor("ÉPAY").as_deref(), Some("épay"));
    // Final sigma: Unicode, not per-character, lower-casing.
    assert_eq!(processor("ΟΔΟΣ").as_deref(), Some("οδος"));
}

#[test]
fn processor_length_is_measured_before_lower_casing_so_a_growing_value_is_accepted() {
    // U+0130 is 2 bytes and lower-cases to "i\u{307}", 3 bytes.
    let given = "\u{130}".repeat(128);
    assert_eq!(given.len(), 256);
    let stored = processor(&given).unwrap();
    assert_eq!(stored, "i\u{307}".repeat(128));
    assert_eq!(stored.len(), 384);
}

#[test]
fn processor_length_is_measured_before_lower_casing_so_a_shrinking_value_is_rejected() {
    // U+212A KELVIN SIGN is 3 bytes and lower-cases to "k", 1 byte.
    let given = "\u{212A}".repeat(86);
    assert_eq!(given.len(), 258);
    assert_eq!(given.to_lowercase().len(), 86);
    schema_violation(&with_refund_field("processor", json!(given)), "refund.processor");
}

#[test]
fn an_empty_processor_is_a_schema_violation() {
    schema_violation(&with_refund_field("processor", json!("")), "refund.processor");
}

// ---------------------------------------------------------------------------
// Other refund.* strings: optional, 1..=256 bytes, stored as given

const OTHER_STRINGS: [TextField; 9] = [
    TextField::OrderNo,
    TextField::TransactionId,
    TextField::ExternalRefundId,
    TextField::PaymentMethodType,
    TextField::ProductType,
    TextField::StoreId,
    TextField::ReferenceId,
    TextField::Reason,
    TextField::FailureReason,
];

#[test]
fn other_strings_are_stored_exactly_as_given() {
    for field in OTHER_STRINGS {
        let given = " Mixed Case\twith spaces é ";
        let event = accepted(&with_refund_field(field.name(), json!(given)));
        assert_eq!(event.fields.text(field), Some(given), "{}", field.name());
    }
}

#[test]
fn optional_strings_of_1_byte_and_of_256_bytes_are_accepted() {
    for field in TextField::ALL {
        for given in ["a".to_owned(), "a".repeat(256)] {
            let event = accepted(&with_refund_field(field.name(), json!(given)));
            assert_eq!(event.fields.text(field).map(str::len), Some(given.len()), "{}", field.name());
        }
    }
}

#[test]
fn optional_strings_of_257_bytes_are_schema_violations() {
    for field in TextField::ALL {
        schema_violation(&with_refund_field(field.name(), json!("a".repeat(257))), &format!("refund.{}", field.name()));
    }
}

#[test]
fn optional_string_length_is_measured_in_bytes_not_characters() {
    for field in TextField::ALL {
        // 128 two-byte characters are 256 bytes: accepted.
        accepted(&with_refund_field(field.name(), json!("é".repeat(128))));
        // 86 three-byte characters are 258 bytes, only 86 characters: rejected.
        schema_violation(&with_refund_field(field.name(), json!("€".repeat(86))), &format!("refund.{}", field.name()));
        // 128 two-byte characters and one more byte are 257 bytes: rejected.
        schema_violation(
            &with_refund_field(field.name(), json!(format!("{}a", "é".repeat(128)))),
            &format!("refund.{}", field.name()),
        );
    }
}

#[test]
fn empty_optional_strings_are_schema_violations() {
    for field in TextField::ALL {
        schema_violation(&with_refund_field(field.name(), json!("")), &format!("refund.{}", field.name()));
    }
}

#[test]
fn non_string_optional_strings_are_schema_violations() {
    for field in TextField::ALL {
        for value in [json!(12345), json!(true), json!(["x"]), json!({"x": 1})] {
            schema_violation(&with_refund_field(field.name(), value), &format!("refund.{}", field.name()));
        }
    }
}

// ---------------------------------------------------------------------------
// refund.initiated_by: optional object

#[test]
fn initiated_by_is_kept_as_canonical_compact_json() {
    let raw = with_refund_field("initiated_by", json!({"type": "system", "id": "cron"}));
    assert_eq!(accepted(&raw).fields.initiated_by.as_deref(), Some(r#"{"id":"cron","type":"system"}"#));
}

#[test]
fn an_absent_initiated_by_is_none() {
    assert_eq!(accepted(&without_refund_field("initiated_by")).fields.initiated_by, None);
}

#[test]
fn an_empty_initiated_by_object_is_a_value() {
    assert_eq!(accepted(&with_refund_field("initiated_by", json!({}))).fields.initiated_by.as_deref(), Some("{}"));
}

#[test]
fn initiated_by_that_is_not_an_object_is_a_schema_violation() {
    for value in [json!("usr_1"), json!(["usr_1"]), json!(1), json!(false)] {
        schema_violation(&with_refund_field("initiated_by", value), "refund.initiated_by");
    }
}

// ---------------------------------------------------------------------------
// refund.metadata: optional object, at most 16 KiB compact serialization

#[test]
fn empty_metadata_object_is_accepted_as_a_value() {
    assert_eq!(accepted(&with_refund_field("metadata", json!({}))).fields.metadata.as_deref(), Some("{}"));
}

#[test]
fn metadata_of_exactly_16384_compact_bytes_is_accepted() {
    assert_eq!(MAX_METADATA_BYTES, 16 * 1024);
    let metadata = metadata_of_compact_size(16 * 1024);
    let event = accepted(&with_refund_field("metadata", metadata.clone()));
    assert_eq!(event.fields.metadata, Some(metadata.to_string()));
}

#[test]
fn metadata_of_16385_compact_bytes_is_a_schema_violation() {
    schema_violation(&with_refund_field("metadata", metadata_of_compact_size(16 * 1024 + 1)), "refund.metadata");
}

#[test]
fn metadata_size_ignores_the_whitespace_of_the_message() {
    // Pretty-printed, the metadata takes well over 16 KiB in the message;
    // compact, exactly 16384 bytes.
    let metadata = json!({
        "a": "x".repeat(16 * 1024 - 20),
        "b": [1, 2, 3]
    });
    assert_eq!(metadata.to_string().len(), 16 * 1024);
    let mut event = example();
    event["refund"]["metadata"] = metadata.clone();
    let pretty = serde_json::to_string_pretty(&event).unwrap();
    let padded = pretty.replace("\"b\": [", "\"b\":                                  [");
    let event = accepted(padded.as_bytes());
    assert_eq!(event.fields.metadata, Some(metadata.to_string()));
}

#[test]
fn metadata_size_is_measured_in_bytes_of_utf_8() {
    // 8 bytes of `{"k":""}` plus 8188 two-byte characters: 16384 bytes.
    let ok = json!({"k": "é".repeat(8188)});
    assert_eq!(ok.to_string().len(), 16 * 1024);
    accepted(&with_refund_field("metadata", ok));
    let too_big = json!({"k": format!("{}a", "é".repeat(8188))});
    schema_violation(&with_refund_field("metadata", too_big), "refund.metadata");
}

#[test]
fn metadata_that_is_not_an_object_is_a_schema_violation() {
    for value in [json!("ticket"), json!([{"ticketId": "SUP-1"}]), json!(1), json!(true)] {
        schema_violation(&with_refund_field("metadata", value), "refund.metadata");
    }
}

#[test]
fn nested_metadata_is_kept_whole() {
    let metadata = json!({"a": {"b": [1, {"c": null}]}, "d": "é"});
    let event = accepted(&with_refund_field("metadata", metadata.clone()));
    let stored: Value = serde_json::from_str(event.fields.metadata.as_deref().unwrap()).unwrap();
    assert_eq!(stored, metadata);
}

// ---------------------------------------------------------------------------
// Messages

#[test]
fn messages_name_the_field_for_every_schema_violation_of_a_refund_field() {
    // A representative bad value per field, each message checked for the path.
    let cases: Vec<(&str, Value)> = vec![
        ("id", json!(1)),
        ("tenant_id", json!("")),
        ("amount", json!(0)),
        ("currency", json!("dollars")),
        ("original_amount", json!(-1)),
        ("order_no", json!("")),
        ("transaction_id", json!(1)),
        ("external_refund_id", json!("x".repeat(300))),
        ("processor", json!([])),
        ("payment_method_type", json!({})),
        ("product_type", json!(false)),
        ("store_id", json!("")),
        ("reference_id", json!(0.5)),
        ("reason", json!("")),
        ("failure_reason", json!(7)),
        ("initiated_by", json!("me")),
        ("metadata", json!([])),
    ];
    for (key, value) in cases {
        schema_violation(&with_refund_field(key, value), &format!("refund.{key}"));
    }
}

#[test]
fn the_invalid_event_displays_its_reason_code_and_message() {
    let err = validate(&with_refund_field("amount", json!(0))).unwrap_err();
    let shown = err.to_string();
    assert!(shown.starts_with("schema_violation"), "{shown}");
    assert!(shown.contains("refund.amount"), "{shown}");
    for (reason, code) in [
        (InvalidReason::TooLarge, "too_large"),
        (InvalidReason::MalformedJson, "malformed_json"),
        (InvalidReason::UnsupportedSchemaVersion, "unsupported_schema_version"),
        (InvalidReason::UnknownEventType, "unknown_event_type"),
        (InvalidReason::SchemaViolation, "schema_violation"),
    ] {
        assert_eq!(reason.as_str(), code);
    }
}
