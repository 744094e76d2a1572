#!/usr/bin/env bash
# Installs the Debian packages the build and the tests use, if they are missing:
#   g++         the build compiles libzmq from source (zmq-sys, for llmd-kv-index's ZMQ sockets)
#   prometheus  promtool parses our /metrics output in tests (the real Prometheus parser), and
#               tests/ops runs a real Prometheus over the demo
#   python3-venv, python3-pip  the test venvs (.venv, .venv-envoy), where python3 lacks them
#   chromium    the demo page's browser test (tests/ops/test_demo_page.py), headless
#   fonts-dejavu-core  text in that page's screenshot
#   nodejs, npm Playwright (playwright-core, tests/ops/browser) drives that Chromium
# Needs root (CI and the dev machines run as root); otherwise says what to install and fails.
# Re-running is cheap: nothing is installed when everything is there.
set -euo pipefail

missing=()
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)

if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]} (as root: apt-get install ${missing[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
