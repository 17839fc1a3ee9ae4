//! Placeholder: the synthetic event generator is being written.
