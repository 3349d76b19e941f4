#!/usr/bin/env bash
# `/classify` (one MNIST digit per request) under server settings given as environment variables:
# requests/s and p99 at concurrency 1, 16 and 64, 4 s of oha each, one server start per setting.
#
#   bench/serving_knobs.sh [ROUNDS] [SETTINGS...]
#
# A setting is comma-separated VAR=VALUE pairs for `vae-serve serve` (e.g.
# VAE_MAX_BATCH_SIZE=1,VAE_INFERENCE_THREADS=2); `defaults` is the server as shipped. Without
# settings it compares the defaults with one change each: batching off, a 2 ms batching wait,
# and 2 or 8 malloc arenas in place of two per core.
# Needs `make build` and oha (installed with cargo when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ROUNDS=${1:-1}
shift || true
SETTINGS=("$@")
[ ${#SETTINGS[@]} -gt 0 ] || SETTINGS=(defaults VAE_MAX_BATCH_SIZE=1 VAE_MAX_BATCH_DELAY_MS=2 MALLOC_ARENA_MAX=2 MALLOC_ARENA_MAX=8)
BIN=./target/release/vae-serve
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT
command -v oha >/dev/null || cargo install oha --locked >&2
./.venv/bin/python bench/digit_png.py ../shared/data/mnist "$OUT/digit.png"

# run SETTING -> one table row
run() {
  local vars=()
  [ "$1" = defaults ] || IFS=, read -ra vars <<< "$1"
  rm -f "$OUT/knobs.db"
  env "${vars[@]}" RUST_LOG=warn "$BIN" serve --addr 127.0.0.1:18480 --models-dir models --database "$OUT/knobs.db" \
    --default-model "$SERVED_MODEL" 2>/dev/null &
  local pid=$!
  wait_up http://127.0.0.1:18480/readyz 10
  local row="| $1 |"
  for c in 1 16 64; do
    row="$row $(oha -z 4s -c "$c" --no-tui --output-format json -m POST -T image/png -D "$OUT/digit.png" http://127.0.0.1:18480/classify \
      | python3 -c "import json, sys; r = json.load(sys.stdin); print('%d, p99 %.2f ms |' % (r['summary']['requestsPerSec'], r['latencyPercentiles']['p99'] * 1000))")"
  done
  echo "$row"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "| setting | c=1 req/s | c=16 req/s | c=64 req/s |"
echo "|---|---|---|---|"
for _ in $(seq "$ROUNDS"); do
  for setting in "${SETTINGS[@]}"; do run "$setting"; done
done
