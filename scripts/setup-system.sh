#!/usr/bin/env bash
# Installs the Debian packages the tests use, if they are missing:
#   prometheus  promtool parses our /metrics output in tests (the real Prometheus parser)
#   g++         the build compiles libzmq from source (zmq-sys, for llmd-kv-index's ZMQ sockets)
# Needs root (CI and the dev machines run as root); prints what it would install otherwise.
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v c++ >/dev/null 2>&1 || missing+=(g++)

if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]} (run as root: apt-get install ${missing[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
