#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, the release build of
# the binary, a real single-node Kafka broker (KRaft, from Maven Central jars)
# for the end-to-end suite, the alert rules' tests (promtool), schemathesis
# against the API, then every test of the workspace (unit, proptests,
# black-box, Kafka end-to-end, a one-minute soak). The broker is stopped and its files removed
# at exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --release -- -D warnings
# Every target in one build: the tests' dev-dependencies unify features of
# shared crates, so building only --bins here would compile most of the
# workspace twice (measured: 82 crates again under cargo test).
echo "== cargo build --release (all targets)"
cargo build --workspace --all-targets --release

# A broker of our own on ports nobody else uses, with its state in a temp dir.
export KAFKA_PORT="${KAFKA_PORT:-29092}"
export KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-29093}"
export KAFKA_STATE_DIR="${KAFKA_STATE_DIR:-$(mktemp -d)/kafka}"
trap 'scripts/kafka/kafka.sh stop >/dev/null 2>&1 || true' EXIT
echo "== kafka broker (127.0.0.1:$KAFKA_PORT)"
scripts/kafka/kafka.sh start
scripts/kafka/kafka.sh wait 180
export REFUND_PROJECTOR_TEST_KAFKA="127.0.0.1:$KAFKA_PORT"

echo "== prometheus alert rules (promtool)"
if ! command -v promtool >/dev/null 2>&1; then
  # Debian's prometheus package ships promtool (no daemon starts in CI).
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool check rules config/alerts.yml
promtool test rules config/alerts.test.yml

echo "== API fuzzing (schemathesis)"
scripts/fuzz-api.sh

echo "== cargo test --release"
cargo test --workspace --release
