#!/usr/bin/env bash
# The container, built and run for real with Debian's podman. No container registry is reachable
# here, so the two base images the Dockerfile names are made offline first: Debian bookworm from
# Debian's archive (debootstrap, then podman import), the build stage's one with this machine's
# own Rust toolchain copied in. The Dockerfile is built unchanged except for build args, then the
# image is run and checked: non-root user, /healthz and /readyz, POST /classify of a test digit,
# the Open Inference Protocol (/v2 readiness and metadata, the gRPC listener), the HEALTHCHECK
# command, SIGTERM → exit 0. Prints the image size. Only the base images are kept in podman's
# store, so a second run only rebuilds the project.
#
#   scripts/container-test.sh            (as root; installs podman, runc and debootstrap if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${TAG:-localhost/vae-serve:test}
PORT=${PORT:-18480}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
DATA_DIR=${VAE_DATA_DIR:-../shared/data}
log() { echo "container-test: $*" >&2; }

missing=()
for tool in podman:podman runc:runc debootstrap:debootstrap; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  scripts/apt-install.sh container-test "${missing[@]}"
fi

# Images left by a run that was stopped before its clean-up are gigabytes each.
podman image prune -f >/dev/null 2>&1 || true
# The build needs room for torch's CPU libraries (0.7 GB), a release build and the image: say how much
# there is, so that a full disk reads as one.
store=$(podman info --format '{{.Store.GraphRoot}}' 2>/dev/null || echo /var/lib/containers/storage)
mkdir -p "$store"
log "free space for podman's store ($store): $(df -h --output=avail "$store" | tail -1 | tr -d ' ')"

work=$(mktemp -d)
container=""
cleanup() {
  [ -n "$container" ] && podman rm -f "$container" >/dev/null 2>&1 || true
  # The image, its build's intermediate layers and the build stage are gigabytes; only the two
  # base images stay, so that a second run skips debootstrap.
  podman rmi -f "$TAG" >/dev/null 2>&1 || true
  podman images -a --format '{{.ID}} {{.Repository}}' | awk '$2 == "<none>" {print $1}' | xargs -r podman rmi -f >/dev/null 2>&1 || true
  podman image prune -f >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# A Debian rootfs with `packages`, trusting the CA certificates this machine trusts (package
# registries are reached through a proxy that the host trusts).
rootfs() {
  local dir=$1 packages=$2
  debootstrap --variant=minbase --include="$packages" bookworm "$dir" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/"
    chroot "$dir" update-ca-certificates >/dev/null
  fi
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
}

if ! podman image exists docker.io/library/debian:bookworm-slim; then
  log "making debian:bookworm-slim with debootstrap"
  rootfs "$work/debian" ca-certificates
  tar -C "$work/debian" -c . | podman import --change 'CMD ["bash"]' - docker.io/library/debian:bookworm-slim >/dev/null
  rm -rf "$work/debian"
fi
if ! podman image exists docker.io/library/rust:1-bookworm; then
  log "making rust:1-bookworm: Debian with build tools and this machine's Rust toolchain"
  rootfs "$work/rust" ca-certificates,build-essential,pkg-config,python3,curl,git
  toolchain=$(rustc --print sysroot)
  mkdir -p "$work/rust/usr/local/rust"
  tar -C "$toolchain" --exclude=./share/doc -c . | tar -C "$work/rust/usr/local/rust" -x
  tar -C "$work/rust" -c . | podman import \
    --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["bash"]' - docker.io/library/rust:1-bookworm >/dev/null
  rm -rf "$work/rust"
fi

log "building $TAG from the Dockerfile (torch from pip's default index)"
started=$(date +%s)
# The docker image format keeps HEALTHCHECK (OCI's has no such field).
podman build --format docker --isolation=chroot --network=host --pull=never --build-arg TORCH_INDEX_URL= -t "$TAG" . >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; exit 1; }
log "built in $(($(date +%s) - started)) s; image size $(podman image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1 / 1e6}')"

container=$(podman run -d --runtime runc --cgroup-manager=cgroupfs --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
  --network=host -e VAE_ADDR="127.0.0.1:$PORT" -e VAE_GRPC_ADDR="127.0.0.1:$((PORT + 1))" -e VAE_DEVICE=cpu "$TAG")
base="http://127.0.0.1:$PORT"
for _ in $(seq 120); do
  curl -fsS "$base/readyz" >/dev/null 2>&1 && break
  sleep 1
done
fail() { log "FAILED: $*"; podman logs "$container" 2>&1 | tail -30 >&2; exit 1; }
# Answers and logs are read whole before they are searched: under pipefail, `producer | grep -q`
# fails whenever grep stops reading at its first match while the producer is still writing (SIGPIPE).
# That is how "gRPC listening", present in the log, once read as absent.
contains() { grep -qF -- "$2" <<<"$1"; }
get() { curl -fsS "$base$1" || true; }

uid=$(podman exec "$container" id -u)
[ "$uid" != 0 ] || fail "the container runs as root"
log "runs as uid $uid ($(podman exec "$container" id -un))"
contains "$(get /healthz)" '"ok"' || fail "/healthz"
contains "$(get /readyz)" '"default_model":true' || fail "/readyz: the shipped model is not served"
log "/healthz and /readyz answer 200, the shipped model is served"
python3 bench/digit_png.py "$DATA_DIR/mnist" "$work/digit.png"
answer=$(curl -fsS -H 'content-type: image/png' --data-binary @"$work/digit.png" "$base/classify")
contains "$answer" '"label":7' || fail "the first MNIST test digit (a 7) was classified as: $answer"
log "POST /classify of the first test digit: 7"
contains "$(get /v2/health/ready)" '"ready":true' || fail "/v2/health/ready"
contains "$(get /v2/models/mnist-ssvae)" '"name":"probabilities"' || fail "/v2/models/mnist-ssvae metadata"
contains "$(podman logs "$container" 2>&1)" "gRPC listening" || fail "the gRPC service did not start"
log "Open Inference Protocol: /v2/health/ready, model metadata, gRPC listening"
# The Dockerfile's HEALTHCHECK command, run inside the container as the engine would.
podman healthcheck run "$container" >/dev/null || fail "the HEALTHCHECK command failed"
log "HEALTHCHECK passes"
podman stop --time 30 "$container" >/dev/null
code=$(podman inspect --format '{{.State.ExitCode}}' "$container")
[ "$code" = 0 ] || fail "SIGTERM stopped it with exit code $code"
log "SIGTERM: exit 0"
echo "container-test: 6 passed, 0 failed"
