#!/usr/bin/env bash
# Kafka ingest benchmark against a real broker: generates about 1M events
# (REFUNDS=330000), starts a single-node broker (scripts/kafka/kafka.sh) unless
# BROKERS is given, produces them to a fresh 6-partition topic, then prints the
# raw read rate of the consumer's configuration and, in ROUNDS interleaved
# rounds (default 2), the durable rate of a replay of the same file and of a
# Kafka ingest of the topic, each into a fresh store, with the ratios
# Kafka/replay and Kafka/raw and the machine it ran on. ARRIVAL picks
# generate's --arrival model (realistic by default, or ordered). KAFKA_OPTIONS
# ("k1=v1;k2=v2") passes librdkafka settings to the consumer, as
# REFUND_PROJECTOR_KAFKA_OPTION does for `run`.
set -euo pipefail
cd "$(dirname "$0")/.."
REFUNDS="${REFUNDS:-330000}"
PARTITIONS="${PARTITIONS:-6}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"; [[ -n "${STARTED_BROKER:-}" ]] && scripts/kafka/kafka.sh stop >/dev/null 2>&1 || true' EXIT

cargo build --release --bins --examples -p refund-projector -p refunds-ingest >/dev/null 2>&1
if [[ -z "${BROKERS:-}" ]]; then
  export KAFKA_PORT="${KAFKA_PORT:-39092}" KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-39093}"
  export KAFKA_STATE_DIR="$WORK/kafka"
  scripts/kafka/kafka.sh start >/dev/null 2>&1
  STARTED_BROKER=1
  scripts/kafka/kafka.sh wait 180 >/dev/null 2>&1
  BROKERS="127.0.0.1:$KAFKA_PORT"
  # The broker shares the cores: kafka_bench reports its CPU time per phase.
  BROKER_PID="$(cat "$KAFKA_STATE_DIR/kafka.pid")"
  export BROKER_PID
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
ARRIVAL="${ARRIVAL:-realistic}"
echo "arrival: $ARRIVAL"
target/release/refund-projector generate --refunds "$REFUNDS" --seed 1 --dup-rate 0.02 --shuffle-window 64 --invalid-rate 0.002 --arrival "$ARRIVAL" >"$WORK/events.ndjson"
echo "events: $(wc -l <"$WORK/events.ndjson") lines, $(du -h "$WORK/events.ndjson" | cut -f1)"
target/release/examples/kafka_bench "$BROKERS" "$WORK/events.ndjson" "$PARTITIONS" "$WORK"
