#!/usr/bin/env bash
# BENCHMARKS.md (2): Check throughput and latency of nmp-authz against a do-nothing tonic
# ext_authz server (examples/noop_authz.rs), measured in the same run with the same load
# (nmp-authz loadtest, full speed, bounded). Loopback only.
#   ./scripts/bench-grpc.sh [REQUESTS] [CONNECTIONS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-200000}
connections=${2:-2}
concurrency=${3:-64}
cargo build --release --locked --bin nmp-authz --example noop_authz
bin=target/release/nmp-authz
noop=target/release/examples/noop_authz
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
"$bin" serve --grpc-addr 127.0.0.1:19391 --http-addr 127.0.0.1:19392 2>/dev/null &
pids+=($!)
"$noop" 127.0.0.1:19393 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do  # bounded readiness poll
    curl -fsS http://127.0.0.1:19392/health/ready >/dev/null 2>&1 && break
    sleep 0.1
done
run() {
    "$bin" loadtest --target "$1" --requests "$requests" --connections "$connections" \
        --concurrency "$concurrency" --json
}
# Warm both up, then measure each.
run 127.0.0.1:19393 >/dev/null; run 127.0.0.1:19391 >/dev/null
noop_json=$(run 127.0.0.1:19393)
authz_json=$(run 127.0.0.1:19391)
python3 - "$noop_json" "$authz_json" <<'PY'
import json, sys
noop, authz = json.loads(sys.argv[1]), json.loads(sys.argv[2])
def line(name, r):
    l = r["latency_us"]
    print(f"{name:10} {r['throughput_rps']:>10.0f} req/s  p50 {l['p50']:>6} µs  p99 {l['p99']:>6} µs  "
          f"allowed {r['allowed']}  denied {r['denied']}  errors {r['errors']}")
line("noop", noop)
line("nmp-authz", authz)
print(f"ratio      {authz['throughput_rps'] / noop['throughput_rps']:.1%} of the do-nothing server's throughput")
PY
