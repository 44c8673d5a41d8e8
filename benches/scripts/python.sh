#!/usr/bin/env bash
# The Python package against onnxruntime: in one process, on Dask and on Spark. One command,
# ratios from one run (arguments go to benches/scripts/python/run.py: --rows, --repeat). Uses
# the venv that python/run_tests.sh builds, installing the package first.
set -euo pipefail
cd "$(dirname "$0")/../.."
PREDICTD_SETUP_ONLY=1 python/run_tests.sh
export PYTHONPATH=$PWD/benches/scripts/python
exec "${PREDICTD_PYTHON_VENV:-$PWD/target/python-venv}/bin/python" -P benches/scripts/python/run.py "$@"
