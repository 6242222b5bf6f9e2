#!/usr/bin/env bash
# BENCHMARKS.md (2): Check throughput and latency of nmp-authz against a do-nothing tonic
# ext_authz server (examples/noop_authz.rs), measured in the same run with the same load
# (nmp-authz-loadtest, full speed, bounded). Loopback only.
#   ./scripts/bench-grpc.sh [REQUESTS] [CONNECTIONS] [CONCURRENCY] [ROUNDS] [REQUESTS_FILE]
# Each round loads both servers, in alternating order; the figures are the rounds' medians
# (this machine's neighbours make single runs swing by ±15%). Without REQUESTS_FILE the
# load tester's built-in mix is sent; benches/mix-jwt-authn.json is the production shape.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-100000}
connections=${2:-2}
concurrency=${3:-64}
rounds=${4:-5}
mix=()
if [ -n "${5:-}" ]; then mix=(--requests-file "$5"); fi
cargo build --release --locked -p nmp-authz --bin nmp-authz --example noop_authz
cargo build --release --locked -p nmp-authz-loadtest
bin=target/release/nmp-authz
loadtest=target/release/nmp-authz-loadtest
noop=target/release/examples/noop_authz
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
${SERVE_ENV:+env $SERVE_ENV} "$bin" serve --grpc-addr 127.0.0.1:19391 --http-addr 127.0.0.1:19392 2>/dev/null &
pids+=($!)
"$noop" 127.0.0.1:19393 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do  # bounded readiness poll
    curl -fsS http://127.0.0.1:19392/health/ready >/dev/null 2>&1 && break
    sleep 0.1
done
# CPU seconds (user + system) a process has used so far, from /proc.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }
run() {
    "$loadtest" --target "$1" --requests "$2" --connections "$connections" \
        --concurrency "$concurrency" "${mix[@]}" --json
}
# Warm both up, then measure.
run 127.0.0.1:19393 20000 >/dev/null
run 127.0.0.1:19391 20000 >/dev/null
results=()
for round in $(seq "$rounds"); do
    if (( round % 2 )); then order=(19393 19391); else order=(19391 19393); fi
    for port in "${order[@]}"; do
        if [ "$port" = 19391 ]; then pid=${pids[0]}; else pid=${pids[1]}; fi
        before=$(cpu "$pid")
        report=$(run "127.0.0.1:$port" "$requests" | tr -d '\n')
        results+=("$port $(cpu "$pid") $before $report")
    done
done
report=$(mktemp)
printf '%s\n' "${results[@]}" >"$report"
python3 - "$report" <<'PY'
import json, statistics, sys
runs = {"19393": [], "19391": []}
for line in open(sys.argv[1]):
    port, after, before, report = line.split(" ", 3)
    report = json.loads(report)
    # Server CPU per Check: what the server would cost on cores of its own.
    report["server_cpu_us"] = (float(after) - float(before)) * 1e6 / report["requests"]
    runs[port].append(report)
def median(rs, f):
    return statistics.median(f(r) for r in rs)
def line(name, rs):
    r = rs[-1]
    rps = median(rs, lambda r: r["throughput_rps"])
    p50 = median(rs, lambda r: r["latency_us"]["p50"])
    p99 = median(rs, lambda r: r["latency_us"]["p99"])
    cpu = median(rs, lambda r: r["server_cpu_us"])
    print(f"{name:10} {rps:>8.0f} req/s  p50 {p50:>6.0f} µs  p99 {p99:>6.0f} µs  "
          f"server CPU {cpu:>5.1f} µs/Check  "
          f"(last round: allowed {r['allowed']} denied {r['denied']} errors {r['errors']})")
noop, authz = runs["19393"], runs["19391"]
line("noop", noop)
line("nmp-authz", authz)
ratios = sorted(a["throughput_rps"] / n["throughput_rps"] for n, a in zip(noop, authz))
print("per-round ratios " + " ".join(f"{r:.0%}" for r in ratios))
print(f"ratio      {statistics.median(ratios):.1%} of the do-nothing server's throughput (median of {len(ratios)} rounds)")
cpu_ratios = sorted(n["server_cpu_us"] / a["server_cpu_us"] for n, a in zip(noop, authz))
print(f"CPU ratio  {statistics.median(cpu_ratios):.1%}: the do-nothing server's CPU per Check over nmp-authz's "
      f"(rounds: {' '.join(f'{r:.0%}' for r in cpu_ratios)})")
PY
rm -f "$report"
