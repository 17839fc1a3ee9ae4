#!/usr/bin/env bash
# Summaries while the store changes: `demo --db` on a copy of each given store
# (its producer writes RATE events/s, so its consumer commits many times a
# second), then wrk with 8 connections on S1 and S2 of bench-api.sh, asking
# for gzip as a browser does. Prints p99, requests/s and how the answers were
# served (computed, shared, kept) per store, ROUNDS times, stores interleaved.
#
#   scripts/bench-summary-live.sh /tmp/1x.redb /tmp/10x.redb
#   RATE=200 ROUNDS=1 DURATION=5s scripts/bench-summary-live.sh /tmp/1x.redb
#
# The stores are kept by bench-api.sh (STORE=...); each run works on a copy.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: $0 STORE.redb [STORE.redb ...]" >&2; exit 2; }
source scripts/bench-lib.sh
need_wrk
if [ -z "${BIN:-}" ]; then cargo build --release --bins -q; fi
bin=${BIN:-$PWD/target/release/refund-projector}
rate=${RATE:-1000}
duration=${DURATION:-10s}
work=$(mktemp -d "${TMPDIR:-/tmp}/refund-live-bench.XXXXXX")
demo=
trap '[ -n "$demo" ] && kill $demo 2>/dev/null && wait $demo 2>/dev/null; rm -rf "$work"' EXIT
write_bench_keys "$work/keys.toml"
auth="Authorization: Api-Key bench"
accept="Accept-Encoding: gzip, deflate, br"
answers() {
  curl -s "$1/metrics" | sed -n 's/^refund_projector_summary_answers_total{outcome="\([a-z]*\)"} \([0-9]*\)/\1=\2/p' | sort | tr '\n' ' '
}
commits() {
  curl -s "$1/metrics" | sed -n 's/^refund_projector_batch_events_count \([0-9]*\)/\1/p'
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); demo --rate $rate; wrk -t2 -c8 -d$duration; $accept"
for round in $(seq "${ROUNDS:-2}"); do
  for store in "$@"; do
    cp "$store" "$work/live.redb"
    # Another seed than the stores' (1): new refunds, not duplicates.
    "$bin" demo --db "$work/live.redb" --listen 127.0.0.1:0 --rate "$rate" --seed 7 --api-keys "$work/keys.toml" \
      > "$work/demo.out" 2> "$work/demo.err" &
    demo=$!
    for _ in $(seq 3000); do grep -q "http://" "$work/demo.out" 2>/dev/null && break; sleep 0.1; done
    base=$(grep -o 'http://127.0.0.1:[0-9]*' "$work/demo.out" | head -n 1)
    big=$(biggest_tenant "$base")
    sleep 10  # the consumer reaches its steady rate
    before=$(commits "$base")
    echo "== round $round, $store"
    for shape in "S1 group_by=status,currency&interval=day" "S2 group_by=status,currency&interval=day&tz=America/New_York"; do
      url="$base/v1/refunds/summary?tenant_id=$big&${shape#* }"
      result=$(wrk -t2 -c8 -d"$duration" --latency -H "$auth" -H "$accept" "$url")
      p99=$(echo "$result" | awk '$1 == "99%" {print $2}')
      rps=$(echo "$result" | awk '/^Requests\/sec/ {print $2}')
      echo "${shape%% *} p99 $p99 requests/s $rps"
    done
    echo "commits during the run: $(( $(commits "$base") - before )); answers: $(answers "$base")"
    kill -TERM "$demo"
    wait "$demo" || true
    demo=
    rm -f "$work/live.redb"
  done
done
