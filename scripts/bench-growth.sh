#!/usr/bin/env bash
# Ingest as the store grows: the last million events of a big realistic
# stream into a store that already holds the rest, against the first million
# into an empty store, in the same run. Prints both rates, their ratio and
# peak RSS per build, with the machine.
#
#   scripts/bench-growth.sh                          # 3,300,000 refunds (9.4M events), this build, 2 rounds
#   BINS="/tmp/old /tmp/new" scripts/bench-growth.sh # two builds, interleaved on copies of one base store
#   REFUNDS=330000 LAST=100000 scripts/bench-growth.sh   # a quick run
#
# The base store (every event but the last LAST) is replayed once, by the
# first of BINS, with `--no-compact` as a store that a consumer fills stays;
# each round then gives each build a copy of it and an empty store. Replays
# use the default cache and durable commits. The 10x input is 4 GB and the
# base store about 7 GB; the run takes about half an hour on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins -q
BINS="${BINS:-$PWD/target/release/refund-projector}"
REFUNDS="${REFUNDS:-3300000}"
LAST="${LAST:-1000000}"
ROUNDS="${ROUNDS:-2}"
work=$(mktemp -d "${TMPDIR:-/tmp}/refund-growth.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/ {print $2}') GiB"
first_bin=${BINS%% *}
"$first_bin" generate --refunds "$REFUNDS" --seed 1 > "$work/all.ndjson"
total=$(wc -l < "$work/all.ndjson")
head -n "$(( total - LAST ))" "$work/all.ndjson" > "$work/base.ndjson"
tail -n "$LAST" "$work/all.ndjson" > "$work/last.ndjson"
head -n "$LAST" "$work/all.ndjson" > "$work/first.ndjson"
rm "$work/all.ndjson"
sync
echo "arrival: realistic; $total events; base store: the first $(( total - LAST )), replayed by $first_bin"
"$first_bin" replay --input "$work/base.ndjson" --db "$work/base.redb" --no-compact 2>&1 | grep "^replayed "
rm "$work/base.ndjson"

# replay BIN INPUT DB: the replay's own summary line.
replay() {
  "$1" replay --input "$2" --db "$3" --no-compact 2>&1 | grep '^replayed '
}
rate() { sed -n 's/^replayed [0-9]* lines in [0-9.]*s (\([0-9]*\) lines\/s).*/\1/p'; }
rss() { sed -n 's/.*peak RSS \([0-9]*\) MiB.*/\1/p'; }

for round in $(seq "$ROUNDS"); do
  for bin in $BINS; do
    cp "$work/base.redb" "$work/grown.redb"
    sync
    last=$(replay "$bin" "$work/last.ndjson" "$work/grown.redb")
    rm -f "$work/grown.redb" "$work/empty.redb"
    first=$(replay "$bin" "$work/first.ndjson" "$work/empty.redb")
    rm -f "$work/empty.redb"
    printf 'round %s, %s: last %s into the grown store %s events/s (peak RSS %s MiB); first %s into an empty store %s events/s (peak RSS %s MiB); last/first %.2f\n' \
      "$round" "$bin" "$LAST" "$(rate <<<"$last")" "$(rss <<<"$last")" "$LAST" "$(rate <<<"$first")" "$(rss <<<"$first")" \
      "$(awk -v a="$(rate <<<"$last")" -v b="$(rate <<<"$first")" 'BEGIN {print a / b}')"
  done
done
