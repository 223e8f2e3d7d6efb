#!/usr/bin/env bash
# The one test command (README.md): sets up whatever the tests need, then runs them all.
set -euo pipefail
cd "$(dirname "$0")/.."

# A Python with grpcio, for the test that runs a real grpcio client (as py-spiffe uses)
# against the Workload API socket. The virtualenv is kept outside the clone and reused.
GRPCIO_VERSION=1.85.1
PROTOBUF_VERSION=7.36.2
venv="${KEYCARD_PY_VENV:-/tmp/keycard-py-venv}"
if ! "$venv/bin/python" -c "
import sys, grpc, google.protobuf
sys.exit(grpc.__version__ != '$GRPCIO_VERSION' or google.protobuf.__version__ != '$PROTOBUF_VERSION')
" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "grpcio==$GRPCIO_VERSION" "protobuf==$PROTOBUF_VERSION"
fi
export KEYCARD_PYTHON="$venv/bin/python"

cargo test --workspace --locked "$@"
