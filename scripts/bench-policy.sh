#!/usr/bin/env bash
# BENCHMARKS.md (4), (5) and "Scaling": resident memory with many bindings, the time to reload
# them, and Check latency while they reload. Loopback only; bounded in requests and time.
#
#   ./scripts/bench-policy.sh [BINDINGS] [RATE] [SECONDS] [SOURCE]
# Starts nmp-authz on the built-in catalog plus BINDINGS bindings (users and groups across
# 1,000 workspaces) from SOURCE: `yaml` (a policy file, the default) or `bundle` (NMP's
# opa-bundle.tar.gz, data.json holding the document under authz, envoy and common, served
# over loopback HTTP with an ETag as NMP serves it; polled every second); reports
# VmRSS/VmHWM against the quickstart server; then loads it at RATE Checks/s for SECONDS twice,
# first with the policy left alone, then with a new revision every 3 s, and reports both
# latency distributions and every reload's duration (read + parse + compile, from the
# server's log; a bundle's includes its download).
#
#   ./scripts/bench-policy.sh scale [SOURCE] [RELOADS] [BINDINGS...]
# The scaling table: for each BINDINGS (default 1000 10000 100000 1000000) a fresh server,
# RELOADS (default 5) new revisions one after another, no Checks: RSS when ready, RSS steady
# after the first reload (2 s after it), peak (VmHWM over the whole run) and the median
# reload time.
#
# NMP_AUTHZ_BIN=PATH runs that server binary instead of building this checkout's (to compare
# with another commit's build; the load generator is still this checkout's).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${NMP_AUTHZ_BIN:-}" ] || cargo build --release --locked -p nmp-authz --bin nmp-authz
cargo build --release --locked -p nmp-authz-loadtest
exec python3 - "$@" <<'PY'
import gzip, hashlib, http.server, io, json, os, signal, subprocess, sys, tarfile, tempfile
import threading, time, urllib.request

bin = os.environ.get("NMP_AUTHZ_BIN") or "target/release/nmp-authz"
work = tempfile.mkdtemp(prefix="nmp-authz-bench-")
roles = ["Viewer", "Editor", "Admin"]


def principals_json(bindings):
    """The bindings as the body of `principals` (without braces), built once per size."""
    parts = []
    for n in range(bindings):
        who = f"group-{n // 10}" if n % 10 == 0 else f"user-{n}@example.com"
        parts.append(f'"{who}": {{"workspaces": {{"ws-{n % 1000}": ["{roles[n % 3]}"]}}}}')
    return ",".join(parts)


class Policy:
    """BINDINGS bindings from a YAML file or an NMP bundle; `write(generation)` changes one
    binding, so each write is a new revision."""

    def __init__(self, source, bindings):
        self.source, self.bindings = source, bindings
        if source == "yaml":
            self.path = os.path.join(work, "bindings.yaml")
            self.lines = ["authz:", "  principals:"] + [
                f'    "{who}": {{workspaces: {{ws-{n % 1000}: [{roles[n % 3]}]}}}}'
                for n, who in ((n, f"group-{n // 10}" if n % 10 == 0 else f"user-{n}@example.com")
                               for n in range(bindings))]
        else:
            self.body = principals_json(bindings)
            self.bundle, self.etag = b"", ""
            handler = self.handler()
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            threading.Thread(target=self.server.serve_forever, daemon=True).start()
            self.url = f"http://127.0.0.1:{self.server.server_address[1]}/opa-bundle.tar.gz"

    def handler(self):
        policy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                bundle, etag = policy.bundle, policy.etag
                if self.headers.get("If-None-Match", "").strip('"') == etag:
                    self.send_response(304)
                    self.send_header("ETag", f'"{etag}"')
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("ETag", f'"{etag}"')
                self.send_header("Content-Length", str(len(bundle)))
                self.end_headers()
                self.wfile.write(bundle)

            def log_message(self, *args):
                pass

        return Handler

    def source_config(self):
        if self.source == "yaml":
            return f"- file: {self.path}"
        return f"- bundle_url: {self.url}"

    def write(self, generation):
        marker = f"generation-{generation}@example.com"
        if self.source == "yaml":
            lines = self.lines + [f'    "{marker}": {{workspaces: {{ws-0: [Viewer]}}}}']
            temporary = self.path + ".new"
            with open(temporary, "w") as f:
                f.write("\n".join(lines) + "\n")
            os.replace(temporary, self.path)  # atomic, as a ConfigMap update is
            return
        authz = (f'{{"principals": {{"{marker}": {{"workspaces": {{"ws-0": ["Viewer"]}}}}'
                 + ("," if self.body else "") + self.body + "}}")
        data = f'{{"authz": {authz}, "envoy": {authz}, "common": {authz}}}'.encode()
        manifest = json.dumps({"revision": str(generation), "roots": ["authz", "envoy", "common"]})
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            for name, content in (("data.json", data), (".manifest", manifest.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        bundle = gzip.compress(raw.getvalue(), compresslevel=6)
        self.bundle, self.etag = bundle, hashlib.md5(bundle).hexdigest()


def wait_ready(http_port, process, log):
    for _ in range(1200):  # bounded: 120 s
        if process.poll() is not None:
            sys.exit(f"nmp-authz exited with {process.returncode}; its log: {log}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health/ready", timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    sys.exit("nmp-authz did not become ready in 120 s")


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


def config_for(policy):
    config = os.path.join(work, "config.yaml")
    with open(config, "w") as f:
        f.write(f"""auth:
  allow_unsigned_jwt: true
  policy_data_refresh_interval: {60 if policy.source == "yaml" else 1}
policy:
  sources:
    - builtin: true
    {policy.source_config()}
""")
    return config


def load_times(log_path):
    """load_ms of every "policy loaded" line, the start-up load first."""
    return [json.loads(l)["fields"]["load_ms"] for l in open(log_path) if '"policy loaded"' in l]


def wait_loads(log_path, count, process):
    for _ in range(1200):  # bounded: 120 s
        if process.poll() is not None:
            sys.exit(f"nmp-authz exited with {process.returncode}; its log: {log_path}")
        if len(load_times(log_path)) >= count:
            return
        time.sleep(0.05)
    sys.exit(f"no policy load number {count} within 120 s; log: {log_path}")


def median(values):
    return sorted(values)[len(values) // 2]


def scale(source, reloads, sizes):
    print(f"source {source}; {reloads} reloads each; RSS and peak in MiB, reload in ms")
    print("| bindings | RSS ready | RSS steady | peak (VmHWM) | reload median | reload max |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        policy = Policy(source, size)
        policy.write(0)
        server, log = serve(19611, f"scale-{size}", config_for(policy))
        ready = memory(server.pid)
        steady = None
        for generation in range(1, reloads + 1):
            policy.write(generation)
            wait_loads(log, generation + 1, server)
            if generation == 1:
                time.sleep(2)
                steady = memory(server.pid)
        time.sleep(2)
        end = memory(server.pid)
        server.send_signal(signal.SIGTERM); server.wait()
        times = load_times(log)[1:]
        print(f"| {size:,} | {ready['VmRSS']:.1f} | {steady['VmRSS']:.1f} (after all: "
              f"{end['VmRSS']:.1f}) | {end['VmHWM']:.1f} | {median(times)} | {max(times)} |",
              flush=True)
        if source == "bundle":
            policy.server.shutdown()


def under_load(bindings, rate, seconds, source):
    policy = Policy(source, bindings)
    policy.write(0)
    config = config_for(policy)
    # (4) Memory: the quickstart server, then the same catalog with BINDINGS bindings.
    quickstart, _ = serve(19601, "quickstart")
    base = memory(quickstart.pid)
    quickstart.terminate(); quickstart.wait()
    started = time.monotonic()
    server, log_path = serve(19611, "server", config)
    startup = time.monotonic() - started
    loaded = memory(server.pid)
    print(f"memory     quickstart: RSS {base['VmRSS']:.1f} MiB; with {bindings} bindings ({source}): "
          f"RSS {loaded['VmRSS']:.1f} MiB (peak {loaded['VmHWM']:.1f} MiB while loading); "
          f"start to ready {startup:.2f} s")

    # (5) Checks at a fixed rate, without and with reloads: users and groups that are bound.
    mix = os.path.join(work, "mix.json")
    with open(mix, "w") as f:
        json.dump([{"method": "GET", "path": f"/apis/models/v2/workspaces/ws-{n % 1000}/models",
                    "subject": f"user-{n}@example.com"} for n in (1, 2, 4, 5, 7, 8)], f)

    def load():
        out = subprocess.run(["target/release/nmp-authz-loadtest", "--target", "127.0.0.1:19611",
                              "--rate", str(rate), "--duration", str(seconds),
                              "--requests", str(rate * seconds), "--concurrency", "64",
                              "--requests-file", mix, "--json"],
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
            policy.write(writes[0])

    writer = threading.Thread(target=rewrite)
    writer.start()
    during = load()
    stop.set(); writer.join()
    time.sleep(2)
    after = memory(server.pid)
    server.send_signal(signal.SIGTERM); server.wait()
    line("reloading", during)
    times = sorted(load_times(log_path)[1:])  # the first is the start-up load
    if times:
        print(f"reloads    {len(times)} of {bindings} bindings (new revision {writes[0]} times): "
              f"read+parse+compile median {median(times)} ms, max {times[-1]} ms; afterwards RSS "
              f"{after['VmRSS']:.1f} MiB, peak {after['VmHWM']:.1f} MiB")


args = sys.argv[1:]
if args[:1] == ["scale"]:
    source = args[1] if len(args) > 1 else "bundle"
    reloads = int(args[2]) if len(args) > 2 else 5
    sizes = [int(a) for a in args[3:]] or [1000, 10000, 100000, 1000000]
    scale(source, reloads, sizes)
else:
    bindings, rate, seconds = (int(a) for a in (args + ["100000", "2000", "30"][len(args):])[:3])
    under_load(bindings, rate, seconds, args[3] if len(args) > 3 else "yaml")
PY
