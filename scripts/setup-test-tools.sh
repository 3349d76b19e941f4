#!/usr/bin/env bash
# Provisions the API contract test's tool: schemathesis (pinned) in the project virtualenv that
# setup-libtorch.sh made. Idempotent: a second run only checks the installed version.
set -euo pipefail
cd "$(dirname "$0")/.."
SCHEMATHESIS_VERSION=4.32.5
VENV=.venv

installed=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null || true)
if [ "$installed" != "$SCHEMATHESIS_VERSION" ]; then
  echo "setup-test-tools: installing schemathesis==$SCHEMATHESIS_VERSION into $VENV" >&2
  "$VENV/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi
