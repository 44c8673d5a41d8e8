#!/usr/bin/env bash
# Builds and installs the Python package into a venv (pip install ./python, as the README says),
# then runs its tests. Needs python3 and the Rust toolchain; everything else comes from PyPI.
# The venv is ${PREDICTD_PYTHON_VENV:-target/python-venv}; PREDICTD_BIN is the predictd binary
# the tests compare with (default: target/debug/predictd, built here if missing).
# PREDICTD_SETUP_ONLY=1 stops after installing (benches/scripts/python.sh uses it).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PREDICTD_PYTHON_VENV:-$PWD/target/python-venv}
if [ ! -x "$VENV/bin/python" ]; then
    "$(command -v python3.11 || command -v python3)" -m venv "$VENV"
fi
if ! cmp -s python/requirements-test.txt "$VENV/requirements-test.txt"; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r python/requirements-test.txt
    cp python/requirements-test.txt "$VENV/requirements-test.txt"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check ./python
[ -z "${PREDICTD_SETUP_ONLY:-}" ] || exit 0
cargo build --quiet --bin predictd
export PREDICTD_BIN=${PREDICTD_BIN:-$PWD/target/debug/predictd}
exec "$VENV/bin/python" -m pytest -q python/tests "$@"
