#!/usr/bin/env bash
# Provisions the test tools, pinned, in the project virtualenv that setup-libtorch.sh made:
# schemathesis (the API contract test) and the official Triton clients (the Open Inference
# Protocol conformance test). Idempotent: a second run only checks the installed versions.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
# name==version, and the pip requirement that installs it.
TOOLS=(
  "schemathesis==4.32.5 schemathesis==4.32.5"
  "tritonclient==2.73.0 tritonclient[http,grpc]==2.73.0"
)

for tool in "${TOOLS[@]}"; do
  read -r pinned requirement <<<"$tool"
  name=${pinned%%==*}
  version=${pinned##*==}
  installed=$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
  if [ "$installed" != "$version" ]; then
    echo "setup-test-tools: installing $requirement into $VENV" >&2
    "$VENV/bin/pip" install --quiet "$requirement"
  fi
done
