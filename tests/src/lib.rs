//! black-box test crate
