#!/usr/bin/env bash
# Creates .venv (inside the clone) with the Python packages the interop tests drive our services
# with (real peers: the openai client, pyzmq, ...), listed in scripts/requirements-test.txt.
# Re-running is cheap: nothing is installed when the requirements have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."

req=scripts/requirements-test.txt
stamp=.venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo ".venv up to date"
  exit 0
fi
# pyenv's python3 shim resolves to the machine's default CPython (3.11).
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req"
echo "$want" > "$stamp"
echo ".venv ready: $(.venv/bin/python --version)"
