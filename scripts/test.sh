#!/usr/bin/env bash
# The one test command (README.md): sets up whatever the tests need, then runs them all.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
