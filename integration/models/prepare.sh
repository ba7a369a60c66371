#!/usr/bin/env bash
# Makes the models the model tests, the demo and the benchmark run, and
# ONNX Runtime's outputs for them: the "light" model-zoo architectures the
# `onnx` wheel ships, and a digits classifier trained here with
# scikit-learn. Everything comes from PyPI packages into a venv of its own;
# nothing is downloaded from a model hub.
#
#   integration/models/prepare.sh [OUT_DIR]   (default: target/models)
#
# Idempotent: does nothing once OUT_DIR/READY exists. Needs python3 with
# the venv module (Debian: python3-venv).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
OUT=${1:-${VACCEL_MODELS_DIR:-$TOP/target/models}}
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9
if [ -e "$OUT/READY" ]; then
    exit 0
fi
VENV=$OUT/venv
if [ ! -x "$VENV/bin/python" ]; then
    echo "models: creating a Python venv in $VENV" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    -r "$HERE/requirements.txt"
"$VENV/bin/python" "$HERE/prepare.py" "$OUT"
touch "$OUT/READY"
