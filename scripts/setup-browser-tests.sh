#!/usr/bin/env bash
# Provisions the web console's browser test: Debian's Chromium and playwright-core (pinned in
# tests/e2e/package-lock.json). Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
CHROMIUM=${CHROMIUM_PATH:-/usr/bin/chromium}

if [ ! -x "$CHROMIUM" ]; then
  scripts/apt-install.sh setup-browser-tests chromium || { echo "setup-browser-tests: or set CHROMIUM_PATH" >&2; exit 1; }
fi
if [ ! -f tests/e2e/node_modules/playwright-core/package.json ]; then
  echo "setup-browser-tests: installing playwright-core from npm" >&2
  (cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
fi
