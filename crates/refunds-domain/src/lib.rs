//! Refund lifecycle events and their projection, with no IO.
//!
//! - [`event::validate`] turns message bytes into a [`RefundEvent`] or an
//!   [`InvalidEvent`] with the contract's reason code and a message naming the
//!   field.
//! - [`state::merge`] folds a distinct event into a refund's state. It is a
//!   join: the state is a function of the *set* of events, never of their
//!   order or batching (proptests in `tests/merge_props.rs` say so).
//! - [`render::render_refund`] is the one JSON rendering of a refund.

pub mod codec;
pub mod event;
pub mod render;
pub mod state;
pub mod time;
mod wire;

pub use event::{
    EventType, InvalidEvent, InvalidReason, RefundEvent, RefundFields, TextField, canonical_json, validate,
};
pub use render::render_refund;
pub use state::{RefundState, Version, merge, merge_all};
pub use time::Timestamp;
