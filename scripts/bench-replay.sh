#!/usr/bin/env bash
# Replay benchmark: generate a realistic stream, replay it into a fresh store
# with durable commits, and print events/s, the compaction that follows, store
# size and peak RSS.
#
#   scripts/bench-replay.sh                 # 330,000 refunds (about 1M events), realistic arrival
#   REFUNDS="100000 330000 1000000" scripts/bench-replay.sh   # RSS as the input grows
#   ARRIVAL="ordered realistic ordered realistic" scripts/bench-replay.sh   # both arrival models, interleaved
#
# ARRIVAL is generate's --arrival: realistic (the default: a busy platform's
# webhooks, each refund's events spread over minutes to days, interleaved with
# tens of thousands of others) or ordered (refunds spread over two years).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins -q
bin=target/release/refund-projector
work=$(mktemp -d "${TMPDIR:-/tmp}/refund-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/ {print $2}') GiB"
for refunds in ${REFUNDS:-330000}; do
for arrival in ${ARRIVAL:-realistic}; do
  events="$work/events-$refunds.ndjson"
  "$bin" generate --refunds "$refunds" --seed 1 --arrival "$arrival" > "$events"
  sync  # the 400 MB just written must not be flushed during the timed replay
  lines=$(wc -l < "$events")
  rm -f "$work/store.redb"
  start=$(date +%s.%N)
  out=$("$bin" replay --input "$events" --db "$work/store.redb" 2>&1)
  end=$(date +%s.%N)
  seconds=$(awk -v a="$start" -v b="$end" 'BEGIN {print b - a}')
  store_mib=$(( $(stat -c %s "$work/store.redb") / 1048576 ))
  summary=$(grep '^replayed ' <<<"$out" | tail -n 1)
  applying=$(sed -n 's/^replayed [0-9]* lines in \([0-9.]*\)s.*/\1/p' <<<"$summary")
  peak=$(sed -n 's/.*peak RSS \([0-9]*\) MiB.*/\1/p' <<<"$summary")
  # The replay's rate is over the applying; the compaction that follows it
  # (when over a tenth of the file is free pages) is printed apart.
  printf 'refunds %s, %s arrival: %s events in %.2f s = %.0f events/s durable; %s; %.2f s in all; store %s MiB; peak RSS %s MiB; input %s MiB\n' \
    "$refunds" "$arrival" "$lines" "$applying" "$(awk -v n="$lines" -v s="$applying" 'BEGIN {print n / s}')" \
    "$(grep '^compacted ' <<<"$out" || echo 'not compacted')" "$seconds" "$store_mib" "$peak" \
    "$(( $(stat -c %s "$events") / 1048576 ))"
  rm -f "$events"
done
done
