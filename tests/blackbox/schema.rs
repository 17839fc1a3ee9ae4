//! The published JSON Schema and the Rust validator must never disagree on
//! the sample events in `schemas/examples/`.

use std::path::Path;

use refunds_domain::validate;
use serde_json::Value;

use crate::helpers::repo_root;

fn schema_validator() -> jsonschema::Validator {
    let path = repo_root().join("schemas/refund-event.v1.schema.json");
    let schema: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("the schema is JSON");
    jsonschema::options().should_validate_formats(true).build(&schema).expect("the schema compiles")
}

/// (file name, expected reason from the `<reason>--` prefix, bytes)
fn samples(dir: &str) -> Vec<(String, Option<String>, Vec<u8>)> {
    let dir = repo_root().join("schemas/examples").join(dir);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let reason = name.split_once("--").map(|(r, _)| r.to_owned());
            (name, reason, std::fs::read(Path::new(&p)).unwrap())
        })
        .collect();
    out.sort();
    assert!(out.len() >= 5, "{} holds too few samples", dir.display());
    out
}

fn schema_accepts(validator: &jsonschema::Validator, bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes).is_ok_and(|value| validator.is_valid(&value))
}

#[test]
fn schema_and_validator_accept_every_valid_sample() {
    let validator = schema_validator();
    for (name, _, bytes) in samples("valid") {
        assert!(schema_accepts(&validator, &bytes), "schema rejects valid/{name}");
        if let Err(err) = validate(&bytes) {
            panic!("validator rejects valid/{name}: {err}");
        }
    }
}

#[test]
fn schema_and_validator_reject_every_invalid_sample_with_the_named_reason() {
    let validator = schema_validator();
    for (name, reason, bytes) in samples("invalid") {
        let reason = reason.unwrap_or_else(|| panic!("invalid/{name} lacks a `<reason>--` prefix"));
        assert!(!schema_accepts(&validator, &bytes), "schema accepts invalid/{name}");
        match validate(&bytes) {
            Ok(_) => panic!("validator accepts invalid/{name}"),
            Err(err) => assert_eq!(err.reason.as_str(), reason, "invalid/{name}: {}", err.message),
        }
    }
}

/// What JSON Schema cannot say (numeric equality of 1.0 and 1, byte lengths,
/// serialized sizes) is documented by these samples: the schema accepts them
/// and the validator, following the contract, rejects them.
#[test]
fn beyond_schema_samples_pass_the_schema_and_fail_the_validator() {
    let validator = schema_validator();
    for (name, reason, bytes) in samples("beyond-schema") {
        assert!(schema_accepts(&validator, &bytes), "schema rejects beyond-schema/{name}; move it to invalid/");
        let reason = reason.unwrap_or_else(|| panic!("beyond-schema/{name} lacks a `<reason>--` prefix"));
        match validate(&bytes) {
            Ok(_) => panic!("validator accepts beyond-schema/{name}"),
            Err(err) => assert_eq!(err.reason.as_str(), reason, "beyond-schema/{name}: {}", err.message),
        }
    }
}
