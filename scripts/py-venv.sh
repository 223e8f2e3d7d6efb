#!/usr/bin/env bash
# Makes (once) the Python virtualenv the interop tests use, with exactly the versions pinned
# in tests/requirements.txt (grpcio, as py-spiffe uses it, and py-spiffe itself), and prints
# its interpreter's path. Later runs reuse it while the requirements are unchanged.
# KEYCARD_PY_VENV chooses the directory (default /tmp/keycard-py-venv).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${KEYCARD_PY_VENV:-/tmp/keycard-py-venv}"
req="$root/tests/requirements.txt"
stamp="$venv/keycard-requirements.txt"
# Two test processes may ask at once: one builds, the other waits and reuses.
exec 9>"$venv.lock"
flock 9
if [ -x "$venv/bin/python" ] && cmp -s "$req" "$stamp"; then
  echo "$venv/bin/python"
  exit 0
fi
command -v python3 >/dev/null || {
  echo "py-venv: python3 is missing; install it (apt-get install -y python3 python3-venv)" >&2
  exit 1
}
rm -rf "$venv"
python3 -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
cp "$req" "$stamp"
echo "$venv/bin/python"
