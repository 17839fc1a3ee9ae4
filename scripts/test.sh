#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, the release build of
# the binary, then every test of the workspace (unit, proptests, black-box).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --release -- -D warnings
echo "== cargo build --release"
cargo build --workspace --bins --release
echo "== cargo test --release"
cargo test --workspace --release
