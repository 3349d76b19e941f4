#!/usr/bin/env bash
# Provisions the test tools: Debian's PostgreSQL server binaries (the tests make throw-away
# clusters with them; no server is started here), and, pinned in the project virtualenv that
# setup-libtorch.sh made, schemathesis (the API contract test), the official Triton clients (the
# Open Inference Protocol conformance test) and kubernetes-validate (the deployment manifests).
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv

# PostgreSQL's server binaries, for the throw-away clusters of the storage and replica tests. The
# package starts no server in a container; where it does (systemd), the tests never use it.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! command -v initdb >/dev/null; then
  scripts/apt-install.sh setup-test-tools postgresql
fi
# name==version, and the pip requirement that installs it.
TOOLS=(
  "schemathesis==4.32.5 schemathesis==4.32.5"
  "tritonclient==2.73.0 tritonclient[http,grpc]==2.73.0"
  "kubernetes-validate==1.37.0 kubernetes-validate==1.37.0"
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
