#!/usr/bin/env bash
# Runs each fuzz target (fuzz/fuzz_targets) for a bounded time, one after the other:
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     # default: 60 s each, all six targets
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). cargo-fuzz passes rustc flags that
# only nightly accepts; with a stable toolchain this lets it act as nightly (RUSTC_BOOTSTRAP=1).
# FUZZ_TOOLCHAIN=nightly uses an installed nightly instead. No sanitizer (the code has no
# `unsafe`: the Envoy module's C ABI is not built into the fuzz crate; coverage guidance still
# works), debug assertions on (integer overflow panics).
#
# Each target starts from its checked-in corpus fuzz/corpus/<target>/ and grows a working
# corpus under fuzz/target/corpus/<target>/ (not checked in). A crash or wrong decision stops
# that target, leaves the input in fuzz/artifacts/<target>/, and makes this script exit 1:
# copy the input into fuzz/corpus/<target>/ (tests/fuzz_regressions.rs then replays it on every
# `cargo test`) and fix the cause. Bounds per input: 10 s, 2 GiB RSS, 8 KiB.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "fuzz.sh: SECONDS must be a positive whole number, got '$seconds'" >&2
    exit 2
fi
shift || true
all=(matching token check_request policy_load pdp_input module_request)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
for t in "${targets[@]}"; do
    if [ ! -f "fuzz/fuzz_targets/$t.rs" ]; then
        echo "fuzz.sh: unknown target '$t' (known: ${all[*]})" >&2
        exit 2
    fi
done
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is required: cargo install cargo-fuzz --locked" >&2
    exit 1
fi

toolchain=()
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
    toolchain=("+$FUZZ_TOOLCHAIN")
else
    export RUSTC_BOOTSTRAP=1
fi
flags=(--sanitizer none --debug-assertions)

echo "== cargo fuzz build"
cargo "${toolchain[@]}" fuzz build "${flags[@]}"

mkdir -p fuzz/target/logs
failed=()
for t in "${targets[@]}"; do
    work="fuzz/target/corpus/$t"
    mkdir -p "$work" "fuzz/artifacts/$t"
    log="fuzz/target/logs/$t.log"
    echo "== $t: ${seconds}s (log: $log)"
    # The working corpus comes first: libFuzzer adds new inputs there, never to the seeds.
    if cargo "${toolchain[@]}" fuzz run "${flags[@]}" "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
        -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
        failed+=("$t")
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    peak=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)
    echo "   $t: $result, $execs execs ($rate/s), ${cov:-cov: ?}, peak RSS ${peak} MB, corpus $(find "$work" -type f | wc -l) files"
    if [ "$result" = FAILED ]; then
        grep -m 5 -E 'panicked|ERROR|Test unit written|SUMMARY' "$log" | sed 's/^/   /' || true
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz.sh: all targets ran ${seconds}s without a failure"
