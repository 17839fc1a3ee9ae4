//! Black-box suites: each test runs the built `refund-projector` binary (or,
//! for the schema, checks the published JSON Schema against the validator;
//! for the docs, checks that their links resolve).

mod api;
mod compose;
mod credentials;
mod demo;
mod docs;
mod helpers;
mod list;
mod rebuild;
mod replay;
mod schema;
mod summary;
