#!/usr/bin/env bash
# `/classify` throughput and p99 with one and two torch threads on the model thread, batching on
# and off: requests/s and p99 (ms) at concurrency 1 and 64, 4 s of oha each.
#
#   bench/inference_threads.sh [ROUNDS]
#
# Needs `make build` and oha (installed with cargo when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-1}
BIN=./target/release/vae-serve
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT
command -v oha >/dev/null || cargo install oha --locked >&2
./.venv/bin/python bench/digit_png.py ../shared/data/mnist "$OUT/digit.png"

# run BATCH THREADS -> one table row
run() {
  VAE_MAX_BATCH_SIZE=$1 RUST_LOG=warn "$BIN" serve --inference-threads "$2" --addr 127.0.0.1:18480 \
    --models-dir models --database "$OUT/$1-$2.db" --default-model mnist-ssvae 2>/dev/null &
  local pid=$!
  for _ in $(seq 100); do curl -fs http://127.0.0.1:18480/readyz >/dev/null 2>&1 && break; sleep 0.1; done
  local row="| $([ "$1" = 1 ] && echo unbatched || echo batched) | $2 |"
  for c in 1 64; do
    row="$row $(oha -z 4s -c "$c" --no-tui --output-format json -m POST -T image/png -D "$OUT/digit.png" http://127.0.0.1:18480/classify \
      | python3 -c "import json, sys; r = json.load(sys.stdin); print('%d, p99 %.2f ms |' % (r['summary']['requestsPerSec'], r['latencyPercentiles']['p99'] * 1000))")"
  done
  echo "$row"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "| batching | model-thread threads | c=1 req/s | c=64 req/s |"
echo "|---|---|---|---|"
for _ in $(seq "$ROUNDS"); do
  for batch in 64 1; do
    for threads in 2 1; do run "$batch" "$threads"; done
  done
done
