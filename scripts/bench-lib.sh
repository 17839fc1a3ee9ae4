# What the API benchmarks share; sourced by bench-api.sh and
# bench-summary-live.sh, not run.

# wrk (Debian's package), installed when missing.
need_wrk() {
  command -v wrk >/dev/null || { echo "installing wrk"; apt-get install -y -qq wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }; }
}

# write_bench_keys FILE: the key `bench` (secret `bench`), admin of every tenant.
write_bench_keys() {
  cat > "$1" <<TOML
[[keys]]
id = "bench"
secret = "bench"
tenant = "*"
scopes = ["admin"]
TOML
}

# biggest_tenant BASE_URL: the tenant holding most of the newest 100 refunds.
biggest_tenant() {
  curl -s -H "Authorization: Api-Key bench" "$1/v1/refunds?limit=100" |
    python3 -c 'import json,sys,collections; r=json.load(sys.stdin)["results"]; print(collections.Counter(x["tenant_id"] for x in r).most_common(1)[0][0])'
}
