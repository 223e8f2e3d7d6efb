#!/usr/bin/env bash
# The test command (README "Two commands", and what .ci/run runs): installs what the tests
# need beyond cargo, then runs every test. Extra arguments go to `cargo test`.
#   - openssl (the command-line tool): an independent verifier of every certificate vector;
#   - a Python virtualenv with pinned grpcio and py-spiffe (scripts/py-venv.sh): real
#     SPIFFE clients in another language against a real agent;
#   - a throw-away PostgreSQL cluster (scripts/pg.sh), stopped and removed on exit: the
#     PostgreSQL datastore's tests run against it (KEYCARD_TEST_POSTGRES_URL).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v openssl >/dev/null; then
  echo "test.sh: installing openssl" >&2
  apt-get install -y openssl >&2
fi
KEYCARD_PYTHON="${KEYCARD_PYTHON:-$(scripts/py-venv.sh)}"
export KEYCARD_PYTHON
eval "$(scripts/pg.sh start)"
trap 'scripts/pg.sh stop "$KEYCARD_PG_DIR"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
cargo test --workspace --locked "$@"
