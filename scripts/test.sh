#!/usr/bin/env bash
# The test command (README "Two commands", and what .ci/run runs): installs what the tests
# need beyond cargo, then runs every test. Extra arguments go to `cargo test`.
#   - openssl (the command-line tool): an independent verifier of every certificate vector;
#   - a Python virtualenv with pinned grpcio and py-spiffe (scripts/py-venv.sh): real
#     SPIFFE clients in another language against a real agent.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v openssl >/dev/null; then
  echo "test.sh: installing openssl" >&2
  apt-get install -y openssl >&2
fi
KEYCARD_PYTHON="${KEYCARD_PYTHON:-$(scripts/py-venv.sh)}"
export KEYCARD_PYTHON
exec cargo test --workspace --locked "$@"
