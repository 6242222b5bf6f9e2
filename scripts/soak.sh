#!/usr/bin/env bash
# Soak: sustained load through Envoy (envoy/quickstart.yaml) to nmp-authz, on loopback, while
# its policy file is rewritten every 4 s (one user's access flips each time), for SECONDS
# (default 600). Reports requests, wrong decisions, errors, nmp-authz's RSS, file descriptors and
# threads at start and end; exits non-zero on any wrong decision or error, RSS growth beyond
# 16 MiB over the warm sample, or more file descriptors at the end than at the start.
# The test suite runs the same code for two minutes (tests/soak.rs).
#
#   scripts/soak.sh [SECONDS] [--release]     NMP_AUTHZ_SOAK_RATE=600 (requests/s, total)
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
seconds=600
profile=()
for arg in "$@"; do
    case "$arg" in
        -h | --help) usage; exit 0 ;;
        --release) profile=(--release) ;;
        *[!0-9]* | '') echo "soak.sh: SECONDS must be a whole number, got '$arg'" >&2; exit 2 ;;
        *) seconds="$arg" ;;
    esac
done
if [ "$seconds" -lt 12 ]; then
    echo "soak.sh: at least 12 seconds (two policy changes)" >&2
    exit 2
fi
export PATH="$PWD/.venv/bin:$PATH"
command -v envoy >/dev/null || { echo "soak.sh: envoy not found: run ./scripts/test.sh once (it installs .venv)" >&2; exit 1; }
NMP_AUTHZ_SOAK_SECONDS="$seconds" exec cargo test --locked "${profile[@]}" --test soak -- \
    --ignored --exact soak_command --nocapture
