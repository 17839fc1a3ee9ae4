//! The API's JSON rendering of a refund, shared by `export` and the HTTP API
//! so that both always print the same bytes for the same state.

use std::fmt::Write;

use crate::event::{EventType, TextField};
use crate::state::RefundState;
use crate::time::Timestamp;

/// The refund object of contract section 3: every key present, in a fixed
/// order, null when unknown, `initiated_by` `{}` when none.
pub fn render_refund(state: &RefundState) -> String {
    let mut out = String::with_capacity(640);
    out.push_str("{\"object\":\"refund\",\"id\":");
    push_json_str(&mut out, &state.id);
    out.push_str(",\"tenant_id\":");
    push_json_str(&mut out, &state.tenant_id);
    out.push_str(",\"status\":\"");
    out.push_str(state.status.status_name());
    out.push_str("\",\"amount\":");
    push_opt_uint(&mut out, state.amount());
    out.push_str(",\"currency\":");
    push_opt_str(&mut out, state.currency());
    out.push_str(",\"original_amount\":");
    push_opt_uint(&mut out, state.original_amount.as_ref().map(|(v, _)| *v));
    for field in TextField::ALL {
        out.push_str(",\"");
        out.push_str(field.name());
        out.push_str("\":");
        push_opt_str(&mut out, state.text(field));
    }
    out.push_str(",\"initiated_by\":");
    out.push_str(state.initiated_by.as_ref().map_or("{}", |(v, _)| v.as_str()));
    out.push_str(",\"metadata\":");
    out.push_str(state.metadata.as_ref().map_or("null", |(v, _)| v.as_str()));
    out.push_str(",\"created_at\":");
    push_time(&mut out, Some(state.created_at()));
    out.push_str(",\"updated_at\":");
    push_time(&mut out, Some(state.updated_at));
    for (key, kind) in [
        ("completed_at", EventType::Completed),
        ("failed_at", EventType::Failed),
        ("cancelled_at", EventType::Cancelled),
    ] {
        out.push_str(",\"");
        out.push_str(key);
        out.push_str("\":");
        push_time(&mut out, state.terminal_at(kind));
    }
    let _ = write!(out, ",\"event_count\":{}}}", state.event_count);
    out
}

fn push_json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a str always serializes"));
}

fn push_opt_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(out, s),
        None => out.push_str("null"),
    }
}

fn push_opt_uint(out: &mut String, v: Option<u64>) {
    match v {
        Some(v) => {
            let _ = write!(out, "{v}");
        }
        None => out.push_str("null"),
    }
}

fn push_time(out: &mut String, t: Option<Timestamp>) {
    match t {
        Some(t) => {
            let _ = write!(out, "\"{t}\"");
        }
        None => out.push_str("null"),
    }
}
