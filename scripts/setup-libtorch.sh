#!/usr/bin/env bash
# Provisions libtorch for the build: a project-local virtualenv with the pinned torch wheel from PyPI.
# Idempotent: a second run only checks the installed version.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=2.11.0
VENV=.venv
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
installed=$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$installed" != "$TORCH_VERSION" ]; then
  echo "setup-libtorch: installing torch==$TORCH_VERSION into $VENV (one-off, a few GB)" >&2
  "$VENV/bin/pip" install --quiet "torch==$TORCH_VERSION"
fi
