#!/usr/bin/env bash
# Soak: `demo` (a producer at a steady rate, the consumer, the store and the
# API in one process) under concurrent readers for SECONDS (default 600),
# printing RSS, store size, the readers' p99 and error counts every minute.
# It fails on any 5xx or error log line, and, from 10 minutes on, when RSS
# grows more than 10% after the two-minute warm-up or the p99 doubles.
#
#   scripts/bench-soak.sh [SECONDS]      SOAK_RATE, SOAK_READERS, SOAK_REPORT_SECONDS
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins -p refund-projector >/dev/null
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
SOAK_SECONDS="${1:-600}" cargo test --release -p refund-projector-tests --test soak -- --nocapture 2>&1 |
  grep -v '^running\|^$\|^test result: ok. 0'
