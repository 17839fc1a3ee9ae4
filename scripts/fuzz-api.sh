#!/usr/bin/env bash
# Fuzzes the HTTP API with schemathesis, a tool nobody here wrote: every check
# it has, against `refund-projector serve` over a replayed store, once per
# credential form (API key, bearer secret, HS256 JWT, Basic secret, Basic
# id:secret, and a key bound to one tenant). The settings and the one check
# widened for the contract's sake, with the reason, are in
# scripts/fuzz/schemathesis.toml. Exits non-zero on any failure (a 5xx among
# them).
#
#   scripts/fuzz-api.sh                 needs target/release/refund-projector
#   FUZZ_EXAMPLES=300 scripts/fuzz-api.sh    more examples per operation
#
# schemathesis is installed (pinned) from PyPI into a virtual environment
# under ~/.cache, once.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
BIN="${BIN:-target/release/refund-projector}"
EXAMPLES="${FUZZ_EXAMPLES:-100}"
VENV="${FUZZ_VENV:-${HOME:-/tmp}/.cache/refund-projector/schemathesis-$SCHEMATHESIS_VERSION}"

if [ ! -x "$VENV/bin/schemathesis" ]; then
  echo "installing schemathesis $SCHEMATHESIS_VERSION into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

dir="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

"$BIN" generate --refunds 2000 --seed 3 --dup-rate 0.05 --shuffle-window 100 --invalid-rate 0.01 >"$dir/events.ndjson"
"$BIN" replay --input "$dir/events.ndjson" --db "$dir/store.redb" 2>/dev/null
"$BIN" export --db "$dir/store.redb" >"$dir/export.ndjson"
tenant="$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["tenant_id"])' "$dir/export.ndjson")"
cat >"$dir/keys.toml" <<KEYS
[[keys]]
id = "ops"
secret = "fuzz-ops-secret"
tenant = "*"
scopes = ["admin"]

[[keys]]
id = "dashboard"
secret = "fuzz-dashboard-secret"
tenant = "$tenant"
scopes = ["refunds:read"]
KEYS
jwt_secret="fuzz-jwt-secret"
"$BIN" serve --db "$dir/store.redb" --listen 127.0.0.1:0 --api-keys "$dir/keys.toml" --jwt-secret "$jwt_secret" \
  2>"$dir/serve.log" &
pid=$!
base=""
for _ in $(seq 1 100); do
  base="$(sed -n 's/^listening on //p' "$dir/serve.log" | head -1)"
  [ -n "$base" ] && break
  sleep 0.1
done
[ -n "$base" ] || { cat "$dir/serve.log" >&2; echo "serve did not start" >&2; exit 1; }

jwt="$(python3 - "$jwt_secret" <<'PY'
import base64, hashlib, hmac, json, sys, time
def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"sub": "fuzz", "tenant_id": "*", "scope": "refunds:read admin",
                         "exp": int(time.time()) + 3600}).encode())
signature = hmac.new(sys.argv[1].encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
print(f"{header}.{claims}.{b64(signature)}")
PY
)"
basic() { printf '%s' "$1" | base64 -w0; }

forms=(
  "Api-Key fuzz-ops-secret"
  "Bearer fuzz-ops-secret"
  "Bearer $jwt"
  "Basic $(basic 'fuzz-ops-secret:')"
  "Basic $(basic 'ops:fuzz-ops-secret')"
  "Api-Key fuzz-dashboard-secret"
)
names=("api-key" "bearer-secret" "bearer-jwt" "basic-secret" "basic-id-secret" "tenant-key")
passed=0
failed=0
for i in "${!forms[@]}"; do
  echo "== schemathesis: ${names[$i]} ($EXAMPLES examples per operation)"
  if "$VENV/bin/schemathesis" --config-file scripts/fuzz/schemathesis.toml run "$base/openapi.json" \
      --checks all --header "Authorization: ${forms[$i]}" --max-examples "$EXAMPLES" --seed "$((i + 1))" \
      --no-color --output-truncate true >"$dir/run.log" 2>&1; then
    passed=$((passed + 1))
    grep -E 'generated|passed' "$dir/run.log" | tail -2
  else
    failed=$((failed + 1))
    cat "$dir/run.log"
  fi
done
# The server's side: no request may have produced a 5xx other than 503.
if grep -Eq 'status=5[0-9][0-9]' "$dir/serve.log" && grep -E 'status=5[0-9][0-9]' "$dir/serve.log" | grep -vq 'status=503'; then
  echo "the server answered a 5xx:" >&2
  grep -E 'status=5[0-9][0-9]' "$dir/serve.log" | grep -v 'status=503' | head >&2
  failed=$((failed + 1))
fi
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
