#!/usr/bin/env bash
# Validates deploy/: the Kubernetes manifests against the Kubernetes schemas (kubernetes-validate,
# strict: unknown fields are errors) at the oldest version they need and the newest, the KServe
# objects against the CRD schemas vendored in deploy/kserve/crd/, and that every manifest runs
# the same image. Then breaks a copy of a manifest for each validator and checks it fails, so a
# green run means the validators can see a fault. Prints ok/not ok lines and "N passed, M failed".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
VENV=${PREDICTD_DEPLOY_VENV:-target/deploy-venv}
# 1.30: the first release whose schema has the preStop sleep action the Deployment uses.
OLDEST=1.30
NEWEST=1.37

KUBE=(deploy/kubernetes/*.yaml deploy/batch-job.yaml)
KSERVE=(deploy/kserve/*.yaml)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/predictd-deploy.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
PASSED=0
FAILED=0

ok() { echo "ok - $1"; PASSED=$((PASSED + 1)); }
not_ok() { echo "not ok - $1: $(printf '%s' "$2" | tr '\n' ' ' | cut -c1-600)"; FAILED=$((FAILED + 1)); }
passes() { # WHAT CMD...: ok when CMD exits 0
    local what=$1 out
    shift
    if out=$("$@" 2>&1); then ok "$what"; else not_ok "$what" "$out"; fi
}
fails() { # WHAT PATTERN CMD...: ok when CMD exits non-zero and says PATTERN (the fault planted)
    local what=$1 pattern=$2 out
    shift 2
    if out=$("$@" 2>&1); then
        not_ok "$what" "passed: $out"
    elif grep -qF -- "$pattern" <<<"$out"; then
        ok "$what"
    else
        not_ok "$what" "failed without naming '$pattern': $out"
    fi
}

if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -r tests/deploy/requirements.txt
fi

kube() { "$VENV/bin/kubernetes-validate" --strict --quiet "$@"; }
kserve() { "$VENV/bin/python" tests/deploy/kserve_schema.py deploy/kserve/crd "$@"; }
one_image() { # MANIFEST...: every container image: line names the same image
    local images
    images=$(sed -n 's/^ *image: *//p' "$@" | sort -u)
    [ "$(wc -l <<<"$images")" -eq 1 ] || { echo "images differ:" $images; return 1; }
}

passes "Kubernetes manifests validate against Kubernetes $OLDEST (strict)" kube -k "$OLDEST" "${KUBE[@]}"
passes "Kubernetes manifests validate against Kubernetes $NEWEST (strict)" kube -k "$NEWEST" "${KUBE[@]}"
passes "ClusterServingRuntime and InferenceServices validate against KServe's CRDs" kserve "${KSERVE[@]}"
passes "every manifest runs the same image" one_image "${KUBE[@]}" "${KSERVE[@]}"

# Each validator against a planted fault.
sed 's/readOnlyRootFilesystem/readOnlyRootFileSystem/' deploy/kubernetes/deployment.yaml >"$TMP/deployment.yaml"
fails "a misspelt Deployment field is refused" "readOnlyRootFileSystem" kube -k "$NEWEST" "$TMP/deployment.yaml"
sed 's/port: 8001, targetPort: grpc/port: "8001", targetPort: grpc/' deploy/kubernetes/service.yaml >"$TMP/service.yaml"
fails "a Service port given as a string is refused" "'8001' is not of type" kube -k "$NEWEST" "$TMP/service.yaml"
sed 's/^  protocolVersions:/  protocolVersion:/' deploy/kserve/cluster-serving-runtime.yaml >"$TMP/runtime.yaml"
fails "a misspelt ClusterServingRuntime field is refused" "'protocolVersion' was unexpected" kserve "$TMP/runtime.yaml"
sed 's/autoSelect: true/autoSelect: "yes"/' deploy/kserve/cluster-serving-runtime.yaml >"$TMP/runtime-type.yaml"
fails "a ClusterServingRuntime field of the wrong type is refused" "'yes' is not of type 'boolean'" kserve "$TMP/runtime-type.yaml"
sed 's/modelFormat: { name: onnx }/modelFormat: { version: "1" }/' deploy/kserve/inference-service.yaml >"$TMP/isvc.yaml"
fails "an InferenceService whose model format has no name is refused" "'name' is a required property" kserve "$TMP/isvc.yaml"
sed 's|image: registry.example.com/predictd:.*|image: registry.example.com/predictd:other|' deploy/batch-job.yaml >"$TMP/batch-job.yaml"
fails "a manifest running another image is caught" "images differ" one_image deploy/kubernetes/deployment.yaml "$TMP/batch-job.yaml"

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
