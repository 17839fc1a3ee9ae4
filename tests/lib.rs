//! Black-box suites for refund-projector live in `blackbox/`; this library is
//! empty so that the crate can be a workspace member.
