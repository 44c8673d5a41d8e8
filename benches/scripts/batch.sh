#!/usr/bin/env bash
# `predictd batch` against a pyarrow + onnxruntime script: one command, ratios from one run.
# Builds predictd (release), installs tests/interop/requirements.txt (pyarrow, onnxruntime,
# scikit-learn) into the interop venv if it is not there yet, then runs benches/scripts/batch_speed.py
# (arguments are passed on: --rows, --repeat, --batch-rows).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${PREDICTD_INTEROP_VENV:-$PWD/target/interop-venv}
if [ ! -x "$VENV/bin/python" ]; then
    "$(command -v python3.11 || command -v python3)" -m venv "$VENV"
fi
if ! cmp -s tests/interop/requirements.txt "$VENV/interop-requirements.txt"; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
    cp tests/interop/requirements.txt "$VENV/interop-requirements.txt"
fi
cargo build --release --quiet
exec "$VENV/bin/python" benches/scripts/batch_speed.py "$@"
