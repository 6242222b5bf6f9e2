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
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

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
cargo clippy --locked --all-targets -- -D warnings
echo "== tests"
cargo test --locked --all-targets
