#!/usr/bin/env bash
# Triton's perf_analyzer driving predictd over KServe v2 gRPC and HTTP, the way people measure
# Triton, at concurrency 1, 4 and 16, batch-1 requests. Prints one table row per run, from
# perf_analyzer's own CSV (client-side throughput and latency percentiles, server-side queue
# and compute time from ModelStatistics).
#
#   benches/scripts/perf_analyzer.sh [MODEL...]        (default: digits_mlp digits_cnn)
#
# Uses the interop suite's venv (tests/interop/requirements.txt: tritonclient 2.41.0 ships
# perf_analyzer) and needs Debian's libb64-0d. Builds and serves the release binary.
# Settings: PA_CONCURRENCY (default "1 4 16"), PA_INTERVAL_MS (default 2000).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
cd "$REPO"
VENV=${PREDICTD_INTEROP_VENV:-$REPO/target/interop-venv}
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(digits_mlp digits_cnn)
CONCURRENCY=${PA_CONCURRENCY:-1 4 16}
INTERVAL=${PA_INTERVAL_MS:-2000}

if [ ! -x "$VENV/bin/perf_analyzer" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
fi
ldconfig -p | grep -c 'libb64\.so\.0d' >/dev/null || {
    echo "perf_analyzer needs libb64: apt-get install libb64-0d" >&2
    exit 1
}
CUDART=$("$VENV/bin/python" -c 'import nvidia.cuda_runtime, os; print(os.path.join(nvidia.cuda_runtime.__path__[0], "lib"))')

cargo build --release --quiet
TMP=$(mktemp -d "${TMPDIR:-/tmp}/predictd-pa.XXXXXX")
read -r GRPC_PORT HTTP_PORT < <("$VENV/bin/python" tests/interop/check.py ports 2)
target/release/predictd serve --models models --grpc-addr "127.0.0.1:$GRPC_PORT" \
    --http-addr "127.0.0.1:$HTTP_PORT" >"$TMP/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$TMP"' EXIT
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$HTTP_PORT/v2/health/ready" && break
    sleep 0.1
done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
echo "perf_analyzer $("$VENV/bin/pip" show tritonclient | grep ^Version | cut -d' ' -f2), measurement interval ${INTERVAL} ms, batch 1; perf_analyzer shares the cores with the server"
printf '%-12s %-5s %4s %9s %8s %8s %8s %9s %9s\n' model proto conc "infer/s" "p50 µs" "p90 µs" "p99 µs" "queue µs" "infer µs"
for model in "${MODELS[@]}"; do
    for proto in grpc http; do
        port=$GRPC_PORT
        [ "$proto" = http ] && port=$HTTP_PORT
        for c in $CONCURRENCY; do
            csv=$TMP/$model-$proto-$c.csv
            if ! LD_LIBRARY_PATH=$CUDART "$VENV/bin/perf_analyzer" -m "$model" -u "127.0.0.1:$port" \
                -i "$proto" --concurrency-range "$c" --measurement-interval "$INTERVAL" \
                --stability-percentage 25 --max-trials 6 -f "$csv" >"$TMP/out.txt" 2>&1; then
                echo "$model $proto c=$c: perf_analyzer failed:" >&2
                tail -n 5 "$TMP/out.txt" >&2
                continue
            fi
            # CSV columns by name: Inferences/Second, p50/p90/p99 latency, Server Queue, Server Compute Infer.
            "$VENV/bin/python" - "$csv" "$model" "$proto" "$c" <<'EOF'
import csv, sys
path, model, proto, c = sys.argv[1:]
row = next(csv.DictReader(open(path)))
print(f"{model:<12} {proto:<5} {c:>4} {float(row['Inferences/Second']):>9.0f} "
      f"{row['p50 latency']:>8} {row['p90 latency']:>8} {row['p99 latency']:>8} "
      f"{row['Server Queue']:>9} {row['Server Compute Infer']:>9}")
EOF
        done
    done
done
