#!/usr/bin/env bash
# Runs every cargo fuzz target (or those named) for SECONDS each (default 600), two at a time
# on two cores, and prints per target its executions, executions per second, coverage (edges)
# and corpus size, from libFuzzer's final statistics. Needs nightly and cargo-fuzz; see
# fuzz/README.md. Logs go to fuzz/logs/<target>.log.
#   benches/scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_EACH=${1:-600}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(v1_request kserve_grpc_request kserve_json_request onnx_model batch_input)
JOBS=${FUZZ_JOBS:-2}

cargo +nightly fuzz build -O >/dev/null
mkdir -p fuzz/logs
run() {
    local target=$1
    mkdir -p "fuzz/corpus/$target"
    # -rss_limit_mb: a model or file that makes the engine allocate gigabytes is a finding too.
    cargo +nightly fuzz run -O "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$SECONDS_EACH" -print_final_stats=1 -rss_limit_mb=2048 -timeout=30 \
        >"fuzz/logs/$target.log" 2>&1
}
pids=()
status=0
for target in "${TARGETS[@]}"; do
    run "$target" &
    pids+=($!)
    if [ ${#pids[@]} -ge "$JOBS" ]; then
        wait "${pids[0]}" || status=1
        pids=("${pids[@]:1}")
    fi
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done

printf '%-22s %12s %10s %8s %8s %s\n' target executions exec/s edges corpus outcome
for target in "${TARGETS[@]}"; do
    log=fuzz/logs/$target.log
    stat() { grep -m1 "^stat::$1:" "$log" | awk '{print $2}'; }
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
    edges=$(grep -oE 'cov: [0-9]+' <<<"$last" | awk '{print $2}')
    corpus=$(grep -oE 'corp: [0-9]+' <<<"$last" | awk '{print $2}')
    outcome=ok
    grep -qE '^==[0-9]+==|panicked|SUMMARY: libFuzzer' "$log" && outcome="CRASH (see $log)"
    printf '%-22s %12s %10s %8s %8s %s\n' "$target" "$(stat number_of_executed_units)" \
        "$(stat average_exec_per_sec)" "${edges:-?}" "${corpus:-?}" "$outcome"
done
exit "$status"
