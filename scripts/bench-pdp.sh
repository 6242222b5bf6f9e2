#!/usr/bin/env bash
# BENCHMARKS.md (6): NMP's own PDP against nmp-authz's, in one run, called the way NMP's services
# call them: NMP's AuthClient.authorize_request over one pooled keep-alive httpx client, one call
# at a time. Loopback only; bounded in calls and time.
#   ./scripts/bench-pdp.sh [CALLS] [ROUNDS]
# Starts NMP 0.3.0 (`nmp services run --services auth,entities`, auth on, its embedded PDP, from
# .venv-nmp, which ./scripts/test.sh installs) and a release nmp-authz that follows NMP's bundle
# with its PDP listener on TCP and on a Unix socket; seeds NMP; then, ROUNDS times, sends CALLS
# sequential `allow` calls (a mix of allowed and denied requests) to each of the three, in turn,
# and reports the median over rounds of each one's p50, p90, p99 and max.
set -euo pipefail
cd "$(dirname "$0")/.."
calls=${1:-300}
rounds=${2:-5}
[ -x .venv-nmp/bin/python ] || { echo "bench-pdp.sh: .venv-nmp is missing: run ./scripts/test.sh first" >&2; exit 1; }
cargo build --release --locked --bin nmp-authz
exec .venv-nmp/bin/python - "$calls" "$rounds" <<'PY'
import asyncio, json, os, socket, statistics, subprocess, sys, tempfile, time, urllib.request

calls, rounds = (int(a) for a in sys.argv[1:3])
work = tempfile.mkdtemp(prefix="nmp-authz-bench-pdp-")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, process, what, limit=120):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{what} exited with {process.returncode}; see {work}")
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"{what} not ready within {limit} s; see {work}")


nmp_port, authz_http, authz_grpc, pdp_port = (free_port() for _ in range(4))
pdp_socket = os.path.join(work, "pdp.sock")
with open(os.path.join(work, "nmp-authz.yaml"), "w") as f:
    f.write(f"""auth:
  bootstrap_bindings: false
  policy_data_refresh_interval: 1
policy:
  sources:
    - bundle_url: http://127.0.0.1:{nmp_port}/apis/auth/v2/iam/opa-bundle.tar.gz
      principal_id: service:nmp-authz
  bootstrap:
    - builtin: true
pdp:
  addr: 127.0.0.1:{pdp_port}
  unix_socket: {pdp_socket}
""")
with open(os.path.join(work, "nmp.yaml"), "w") as f:
    f.write("auth:\n  enabled: true\n  admin_email: admin@example.com\n  on_invalid_plugin: deny_route\n")
env = dict(os.environ, NMP_DATA_DIR=os.path.join(work, "data"), NMP_CONFIG_FILE_PATH=os.path.join(work, "nmp.yaml"),
           HOME=work, NMP_BASE_URL=f"http://127.0.0.1:{nmp_port}", RUST_LOG="warn")
env.pop("NMP_AUTH_POLICY_DECISION_POINT_BASE_URL", None)  # NMP's services use NMP's own PDP here
authz = subprocess.Popen(["target/release/nmp-authz", "serve", "--config", os.path.join(work, "nmp-authz.yaml"),
                          "--grpc-addr", f"127.0.0.1:{authz_grpc}", "--http-addr", f"127.0.0.1:{authz_http}"],
                         stdout=open(os.path.join(work, "nmp-authz.log"), "w"), stderr=subprocess.STDOUT, env=env)
nmp = subprocess.Popen([".venv-nmp/bin/nmp", "services", "run", "--config", os.path.join(work, "nmp.yaml"),
                        "--services", "auth,entities", "--host", "127.0.0.1", "--port", str(nmp_port)],
                       stdout=open(os.path.join(work, "nmp.log"), "w"), stderr=subprocess.STDOUT, env=env)
try:
    wait_http(f"http://127.0.0.1:{nmp_port}/health/ready", nmp, "NMP")
    subprocess.run([".venv-nmp/bin/python", "-m", "nmp.platform_seed"], env=env, capture_output=True, timeout=120)
    wait_http(f"http://127.0.0.1:{authz_http}/health/ready", authz, "nmp-authz")

    from nmp.common.auth import AuthClient, Principal
    from nmp.common.config import AuthConfig
    from nmp.common.platform_endpoint import parse_platform_endpoint

    targets = {
        "NMP (embedded PDP, TCP)": ("embedded", f"http://127.0.0.1:{nmp_port}"),
        "nmp-authz (PDP listener, TCP)": ("embedded", f"http://127.0.0.1:{pdp_port}"),
        "nmp-authz (PDP listener, Unix socket)": ("embedded", f"unix://{pdp_socket}"),
    }
    # What services ask: reads and writes in a workspace, by users with and without access.
    mix = [
        ("admin@example.com", "POST", "/apis/models/v2/workspaces/default/models"),
        ("bob@example.com", "GET", "/apis/models/v2/workspaces/default/models"),
        ("bob@example.com", "DELETE", "/apis/models/v2/workspaces/system/models/m1"),
        ("carol@example.com", "GET", "/apis/entities/v2/workspaces"),
    ]

    async def round_of(provider, base, calls=calls):
        config = AuthConfig(enabled=True, policy_decision_point_base_url=base, policy_decision_point_provider=provider)
        async with parse_platform_endpoint(base).async_http_client(timeout=5) as client:
            latencies, answers = [], []
            for i in range(calls):
                who, method, path = mix[i % len(mix)]
                auth = AuthClient(principal=Principal(id=who, email=who), config=config, http_client=client,
                                  service_name="bench")
                started = time.perf_counter()
                result = await auth.authorize_request(method, path)
                latencies.append((time.perf_counter() - started) * 1000)
                answers.append(result.allowed)
            return latencies, answers

    def percentile(values, p):
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    # NMP's own PDP reloads its bindings on its refresh interval, nmp-authz on its bundle poll:
    # wait (bounded) until both have the seeded ones and answer the mix alike.
    async def answers_now(provider, base):
        return (await round_of(provider, base, len(mix)))[1]

    deadline = time.monotonic() + 120
    while len(seen := {tuple(asyncio.run(answers_now(*t))) for t in targets.values()}) != 1:
        if time.monotonic() > deadline:
            sys.exit("the PDPs did not come to agree on the mix within 120 s")
        time.sleep(1)
    agreed = list(seen.pop())
    disagreements = {name: 0 for name in targets}

    async def floor_round():
        """The client alone: the same pooled httpx client, GET nmp-authz's /health/live."""
        async with parse_platform_endpoint(f"unix://{pdp_socket}").async_http_client(timeout=5) as client:
            base = parse_platform_endpoint(f"unix://{pdp_socket}").connect_base_url
            latencies = []
            for _ in range(calls):
                started = time.perf_counter()
                (await client.get(f"{base}/health/live")).raise_for_status()
                latencies.append((time.perf_counter() - started) * 1000)
            return latencies

    results = {name: [] for name in targets}
    floor = "floor: httpx GET /health/live (socket)"
    results[floor] = []
    for _ in range(rounds):
        for name, (provider, base) in targets.items():  # interleaved: the machine's drift hits all
            latencies, allowed = asyncio.run(round_of(provider, base))
            results[name].append({p: percentile(latencies, p) for p in (50, 90, 99, 100)})
            disagreements[name] += sum(a != agreed[i % len(mix)] for i, a in enumerate(allowed))
        latencies = asyncio.run(floor_round())
        results[floor].append({p: percentile(latencies, p) for p in (50, 90, 99, 100)})
    expected = [agreed[i % len(mix)] for i in range(calls)]
    print(f"{calls} sequential allow calls per round, {rounds} rounds, medians of the rounds' percentiles (ms);"
          f" {sum(expected)} of {calls} allowed when the PDPs agree")
    for name, wrong in disagreements.items():
        if wrong:
            print(f"  {name}: {wrong} of {calls * rounds} answers differed from the agreed ones")
    print(f"{'PDP':40} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}")
    for name, per_round in results.items():
        row = [statistics.median(r[p] for r in per_round) for p in (50, 90, 99, 100)]
        print(f"{name:40} " + " ".join(f"{v:7.3f}" for v in row))
finally:
    for process in (nmp, authz):
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
PY
