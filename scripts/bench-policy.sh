#!/usr/bin/env bash
# BENCHMARKS.md (4) and (5): resident memory with 100k bindings, the time to reload them, and
# Check latency while they reload. Loopback only; bounded in requests and time.
#   ./scripts/bench-policy.sh [BINDINGS] [RATE] [SECONDS]
# Starts nmp-authz on the built-in catalog plus a policy file of BINDINGS bindings (users and
# groups across 1,000 workspaces); reports VmRSS/VmHWM against the quickstart server; then
# loads it at RATE Checks/s for SECONDS twice, first with the policy left alone, then with the
# file replaced (a new revision) every 3 s, and reports both latency distributions and every
# reload's duration (read + parse + compile, from the server's log).
set -euo pipefail
cd "$(dirname "$0")/.."
bindings=${1:-100000}
rate=${2:-2000}
seconds=${3:-30}
cargo build --release --locked -p nmp-authz --bin nmp-authz
cargo build --release --locked -p nmp-authz-loadtest
exec python3 - "$bindings" "$rate" "$seconds" <<'PY'
import json, os, signal, socket, subprocess, sys, tempfile, threading, time, urllib.request

bindings, rate, seconds = (int(a) for a in sys.argv[1:4])
bin = "target/release/nmp-authz"
work = tempfile.mkdtemp(prefix="nmp-authz-bench-")
policy = os.path.join(work, "bindings.yaml")


def write_policy(generation):
    """BINDINGS bindings; `generation` changes one of them, so each write is a new revision."""
    roles = ["Viewer", "Editor", "Admin"]
    lines = ["authz:", "  principals:"]
    for n in range(bindings):
        who = f"group-{n // 10}" if n % 10 == 0 else f"user-{n}@example.com"
        lines.append(f'    "{who}": {{workspaces: {{ws-{n % 1000}: [{roles[n % 3]}]}}}}')
    lines.append(f'    "generation-{generation}@example.com": {{workspaces: {{ws-0: [Viewer]}}}}')
    temporary = policy + ".new"
    with open(temporary, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(temporary, policy)  # atomic, as a ConfigMap update is


def wait_ready(http_port, process, log):
    for _ in range(600):  # bounded: 60 s
        if process.poll() is not None:
            sys.exit(f"nmp-authz exited with {process.returncode}; its log: {log}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health/ready", timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    sys.exit("nmp-authz did not become ready in 60 s")


def memory(pid):
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def serve(grpc_port, name, config=None):
    args = [bin, "serve", "--grpc-addr", f"127.0.0.1:{grpc_port}",
            "--http-addr", f"127.0.0.1:{grpc_port + 1}"]
    if config:
        args += ["--config", config]
    env = dict(os.environ, NMP_AUTHZ_LOG_FORMAT="json")
    log = os.path.join(work, f"{name}.log")
    process = subprocess.Popen(args, env=env, stderr=open(log, "w"))
    wait_ready(grpc_port + 1, process, log)
    return process, log


write_policy(0)
config = os.path.join(work, "config.yaml")
with open(config, "w") as f:
    f.write(f"""auth:
  allow_unsigned_jwt: true
  policy_data_refresh_interval: 60
policy:
  sources:
    - builtin: true
    - file: {policy}
""")

# (4) Memory: the quickstart server, then the same catalog with BINDINGS bindings.
quickstart, _ = serve(19601, "quickstart")
base = memory(quickstart.pid)
quickstart.terminate(); quickstart.wait()
started = time.monotonic()
server, log_path = serve(19611, "server", config)
startup = time.monotonic() - started
loaded = memory(server.pid)
print(f"memory     quickstart: RSS {base['VmRSS']:.1f} MiB; with {bindings} bindings: RSS "
      f"{loaded['VmRSS']:.1f} MiB (peak {loaded['VmHWM']:.1f} MiB while loading); "
      f"start to ready {startup:.2f} s")

# (5) Checks at a fixed rate, without and with reloads: users and groups that are bound.
mix = os.path.join(work, "mix.json")
with open(mix, "w") as f:
    json.dump([{"method": "GET", "path": f"/apis/models/v2/workspaces/ws-{n % 1000}/models",
                "subject": f"user-{n}@example.com"} for n in (1, 2, 4, 5, 7, 8)], f)


def load():
    out = subprocess.run(["target/release/nmp-authz-loadtest", "--target", "127.0.0.1:19611", "--rate", str(rate),
                          "--duration", str(seconds), "--requests", str(rate * seconds),
                          "--concurrency", "64", "--requests-file", mix, "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def line(name, r):
    l = r["latency_us"]
    print(f"{name:10} {r['throughput_rps']:.0f} Checks/s  p50 {l['p50']} µs  p99 {l['p99']} µs  "
          f"p99.9 {l['p99_9']} µs  max {l['max']} µs  allowed {r['allowed']} denied {r['denied']} "
          f"errors {r['errors']}")


line("steady", load())
stop = threading.Event()
writes = [0]


def rewrite():
    while not stop.wait(3):
        writes[0] += 1
        write_policy(writes[0])


writer = threading.Thread(target=rewrite)
writer.start()
during = load()
stop.set(); writer.join()
time.sleep(1)
server.send_signal(signal.SIGTERM); server.wait()
line("reloading", during)
loads = [json.loads(l)["fields"] for l in open(log_path) if '"policy loaded"' in l]
times = sorted(f["load_ms"] for f in loads[1:])  # the first is the start-up load
if times:
    print(f"reloads    {len(times)} of {bindings} bindings (file replaced {writes[0]} times): "
          f"read+parse+compile median {times[len(times) // 2]} ms, max {times[-1]} ms")
PY
