#!/usr/bin/env bash
# API load benchmark: a store of about 1M events (generate --refunds 330000),
# `serve` on loopback, and wrk (Debian's package) against six list query shapes,
# five summary shapes and a cursor walk, at 8 and 64 connections. Prints
# requests/s and p50/p99 per shape.
#
#   scripts/bench-api.sh                  # 330,000 refunds
#   REFUNDS=3300000 scripts/bench-api.sh  # the 10x store
#   DURATION=10s scripts/bench-api.sh
#   STORE=/tmp/big.redb REFUNDS=3300000 scripts/bench-api.sh  # keep the store for the next run
#   ARRIVAL=ordered scripts/bench-api.sh  # generate's --arrival model (default realistic)
#   ONLY=S CONNS=8 scripts/bench-api.sh   # the summary shapes only, at 8 connections only
#   ACCEPT_ENCODING=identity scripts/bench-api.sh  # plain bodies (default: what a browser asks, gzip)
#   SUMMARY_CACHE_MIB=0 scripts/bench-api.sh  # compute every summary (serve --summary-cache-mib)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
need_wrk
# BIN=path serves with another build (the one that built a kept STORE).
if [ -z "${BIN:-}" ]; then cargo build --release --bins -q; fi
bin=${BIN:-$PWD/target/release/refund-projector}
refunds=${REFUNDS:-330000}
arrival=${ARRIVAL:-realistic}
duration=${DURATION:-5s}
work=$(mktemp -d "${TMPDIR:-/tmp}/refund-api-bench.XXXXXX")
trap 'kill $server 2>/dev/null && wait $server 2>/dev/null || true; rm -rf "$work"' EXIT

# STORE=path keeps the store there (built once, reused by later runs).
store=${STORE:-$work/store.redb}
if [ ! -e "$store" ]; then
  echo "arrival: $arrival"
  "$bin" generate --refunds "$refunds" --seed 1 --arrival "$arrival" > "$work/events.ndjson"
  "$bin" replay --input "$work/events.ndjson" --db "$store" 2>&1 | tail -n 1
  rm -f "$work/events.ndjson"
fi
write_bench_keys "$work/keys.toml"
# Passed only when set, so that BIN may be a build from before the flag.
cache_flag=()
if [ -n "${SUMMARY_CACHE_MIB:-}" ]; then cache_flag=(--summary-cache-mib "$SUMMARY_CACHE_MIB"); fi
"$bin" serve --db "$store" --listen 127.0.0.1:0 --api-keys "$work/keys.toml" "${cache_flag[@]}" 2> "$work/serve.log" &
server=$!
for _ in $(seq 3000); do grep -q "listening on" "$work/serve.log" && break; sleep 0.1; done  # a big store may need a repair first
base=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$work/serve.log")
auth="Authorization: Api-Key bench"
# Dashboards run in browsers, which ask for compressed bodies; summaries
# honour it (lists are always plain).
accept="Accept-Encoding: ${ACCEPT_ENCODING:-gzip, deflate, br}"

# The biggest tenant, one of its order numbers, its newest month.
big=$(biggest_tenant "$base")
sample=$(curl -s -H "$auth" "$base/v1/refunds?tenant_id=$big&limit=1")
order_no=$(echo "$sample" | python3 -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["order_no"])')
newest=$(echo "$sample" | python3 -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["created_at"][:10])')
month_ago=$(python3 -c "import datetime; print((datetime.date.fromisoformat('$newest') - datetime.timedelta(days=30)).isoformat())")

declare -A shapes=(
  [Q1_newest]="/v1/refunds?tenant_id=$big&limit=20"
  [Q2_status]="/v1/refunds?tenant_id=$big&status=completed&limit=20"
  [Q3_currency_30d_status]="/v1/refunds?tenant_id=$big&currency=USD&created_after=$month_ago&created_before=$newest&status=completed&limit=20"
  [Q4_order_no]="/v1/refunds?tenant_id=$big&order_no=$order_no&limit=20"
  [Q5_offset_10000]="/v1/refunds?tenant_id=$big&offset=10000&limit=20"
  [Q6_amount_range]="/v1/refunds?tenant_id=$big&amount_min=1000&amount_max=5000&limit=20"
  # Dashboard summaries (GET /v1/refunds/summary).
  [S1_day_status_currency]="/v1/refunds/summary?tenant_id=$big&group_by=status,currency&interval=day"
  [S2_day_new_york]="/v1/refunds/summary?tenant_id=$big&group_by=status,currency&interval=day&tz=America/New_York"
  [S3_failed_processor_week]="/v1/refunds/summary?tenant_id=$big&status=failed&group_by=processor&interval=week"
  [S4_all_tenants_currency]="/v1/refunds/summary?group_by=currency"
  [S5_amount_range_status]="/v1/refunds/summary?tenant_id=$big&amount_min=1000&amount_max=5000&group_by=status"
)
# ONLY=regex keeps the shapes whose names match (ONLY=S runs the summaries).
if [ -n "${ONLY:-}" ]; then
  for name in "${!shapes[@]}"; do [[ $name =~ $ONLY ]] || unset "shapes[$name]"; done
fi

# The cursor walk: 200 consecutive cursor pages, requested round-robin.
paths="$work/cursor_paths.txt"
cursor=$(curl -s -H "$auth" "$base/v1/refunds?tenant_id=$big&limit=20" | python3 -c 'import json,sys; print(json.load(sys.stdin)["next_cursor"])')
path="/v1/refunds?tenant_id=$big&limit=20&cursor=$cursor"
for _ in $(seq 200); do
  echo "$path" >> "$paths"
  next=$(curl -s -H "$auth" "$base$path" | python3 -c 'import json,sys; print(json.load(sys.stdin)["next"] or "")')
  [ -n "$next" ] || break
  path=$next
done
cat > "$work/walk.lua" <<LUA
local paths = {}
for line in io.lines("$paths") do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i], {["Authorization"] = "Api-Key bench"})
end
LUA
cat > "$work/report.lua" <<'LUA'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.0f %.2f %.2f %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.errors.status, summary.requests))
end
LUA

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); store: $refunds refunds; wrk -t2 -d$duration"
echo "$accept; serve --summary-cache-mib ${SUMMARY_CACHE_MIB:-default}"
printf '%-24s %5s %10s %9s %9s %8s\n' shape conns req/s p50_ms p99_ms non2xx
run() {
  local name=$1 connections=$2 script=$3 url=$4
  local line
  line=$(wrk -t2 -c"$connections" -d"$duration" -H "$auth" -H "$accept" -s "$script" "$url" | grep '^RESULT')
  read -r _ rps p50 p99 errors _ <<< "$line"
  printf '%-24s %5s %10s %9s %9s %8s\n' "$name" "$connections" "$rps" "$p50" "$p99" "$errors"
}
cat "$work/report.lua" >> "$work/walk.lua"
# Warm up (caches, connections) with every shape before measuring any.
for name in "${!shapes[@]}"; do
  wrk -t2 -c8 -d1s -H "$auth" -H "$accept" "$base${shapes[$name]}" > /dev/null
done
wrk -t2 -c8 -d1s -H "$auth" -s "$work/walk.lua" "$base/" > /dev/null
for connections in ${CONNS:-8 64}; do
  for name in $(echo "${!shapes[@]}" | tr ' ' '\n' | sort); do
    run "$name" "$connections" "$work/report.lua" "$base${shapes[$name]}"
  done
  if [ -z "${ONLY:-}" ] || [[ cursor_walk =~ $ONLY ]]; then run cursor_walk "$connections" "$work/walk.lua" "$base/"; fi
done
