#!/usr/bin/env bash
# Installs Playwright's library (npm `playwright-core`, pinned in tests/ops/browser/package-lock.json)
# into tests/ops/browser/node_modules: tests/ops/test_demo_page.py drives Debian's Chromium
# (/usr/bin/chromium, from scripts/setup-system.sh) with it. playwright-core downloads no browser.
# Re-running is cheap: nothing is installed when the lock file has not changed.
set -euo pipefail
cd "$(dirname "$0")/../tests/ops/browser"

stamp=node_modules/.package-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "playwright-core up to date"
  exit 0
fi
npm ci --silent --no-audit --no-fund
echo "$want" > "$stamp"
echo "playwright-core ready: $(node -p 'require("playwright-core/package.json").version')"
