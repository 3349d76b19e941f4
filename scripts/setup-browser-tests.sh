#!/usr/bin/env bash
# Provisions the web console's browser test: Debian's Chromium and playwright-core (pinned in
# tests/e2e/package-lock.json). Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
CHROMIUM=${CHROMIUM_PATH:-/usr/bin/chromium}

if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "setup-browser-tests: $CHROMIUM is missing; install Debian's chromium (sudo apt-get install chromium) or set CHROMIUM_PATH" >&2
    exit 1
  fi
  echo "setup-browser-tests: installing Debian's chromium (one-off)" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Fresh machines may have no package lists yet.
  apt-get install -y -qq chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
fi
if [ ! -f tests/e2e/node_modules/playwright-core/package.json ]; then
  echo "setup-browser-tests: installing playwright-core from npm" >&2
  (cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
fi
