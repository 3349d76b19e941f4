#!/usr/bin/env bash
# Where the server's CPU goes under load: `perf record` on vae-serve while wrk drives POST /classify
# (one 28×28 PNG) at concurrency 64, then the share of samples per thread, per library and per
# function, and the mean inference batch size from /metrics.
#
#   bench/perf_profile.sh [SERVER] [SECONDS]     (defaults: ./target/release/vae-serve, 8 s)
#
# SERVER is a binary, optionally after settings: "VAE_INFERENCE_INT8=true target/release/vae-serve".
# Needs perf (apt-get install linux-perf) with kernel.perf_event_paranoid ≤ 2, and wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SERVER=${1:-./target/release/vae-serve} SECONDS_RECORDED=${2:-8}
PORT=${PORT:-18690}
OUT=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$OUT"' EXIT
command -v perf >/dev/null && command -v wrk >/dev/null || { echo "needs perf and wrk" >&2; exit 1; }
python3 bench/digit_png.py ../shared/data/mnist "$OUT/digit.png"

start_vae_serve "$SERVER"

url="http://127.0.0.1:$PORT/classify"
BODY=$OUT/digit.png CONTENT_TYPE=image/png wrk -t 2 -c 64 -d 3s -s bench/wrk_request.lua "$url" >/dev/null
BODY=$OUT/digit.png CONTENT_TYPE=image/png wrk -t 2 -c 64 -d "$((SECONDS_RECORDED + 4))s" -s bench/wrk_request.lua "$url" \
  | grep '^{' >"$OUT/wrk.json" &
load=$!
sleep 2
perf record -F 2999 -p "$server" -o "$OUT/perf.data" -- sleep "$SECONDS_RECORDED" 2>/dev/null
wait "$load"
echo "load during the recording: $(cat "$OUT/wrk.json")"
curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^vae_inference_batch_size_sum/ {s = $2} /^vae_inference_batch_size_count/ {c = $2}
  END {printf "mean inference batch size since start: %.1f\n", s / c}'

report() { perf report -i "$OUT/perf.data" --no-children -g none --stdio --sort "$1" 2>/dev/null | grep -v '^#' | grep -v '^$' | head -"$2"; }
echo "## samples per thread"; report comm 6
echo "## per library"; report dso 8
echo "## per function"; report dso,sym 25 | cut -c1-160
