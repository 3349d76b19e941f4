#!/usr/bin/env bash
# Instructions per request, counted by callgrind: stable on a noisy shared machine where requests
# per second are not. The server runs under `valgrind --tool=callgrind` with instrumentation off; after
# a warm-up, it is switched on and the counts zeroed, a fixed number of requests is sent at a given concurrency
# (bench/fixed_load.py, outside valgrind), instrumentation is switched off and the process's whole
# instruction count (every thread: HTTP, model thread, torch; the dump's `totals:`, since its
# `summary:` wraps around after a zero) is divided by the requests sent.
#
#   bench/callgrind_requests.sh [SERVER]     (default ./target/release/vae-serve)
#
# SERVER is a binary, optionally after settings: "VAE_INFERENCE_INT8=true target/release/vae-serve";
# or the floor, target/release/examples/http_floor (`/classify` at concurrency 1 only).
#
# Prints one markdown row per endpoint × concurrency. Needs valgrind (apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SERVER=${1:-./target/release/vae-serve}
settings=${SERVER% *} binary=${SERVER##* }
[ "$settings" = "$SERVER" ] && settings=""
PORT=${PORT:-18580}
OUT=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$OUT"' EXIT
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
python3 bench/digit_png.py ../shared/data/mnist "$OUT/digit.png"

# The floor (examples/http_floor.rs) answers a fixed body on the same HTTP stack: what HTTP alone costs.
floor=false
[ "$(basename "$binary")" = http_floor ] && floor=true
if $floor; then
  echo '{"results":[{"label":7}]}' >"$OUT/answer.json"
  arguments=("127.0.0.1:$PORT" "$OUT/answer.json") ready=/classify
else
  arguments=(serve --addr "127.0.0.1:$PORT" --grpc-addr "" --models-dir models --database "$OUT/db.sqlite" --default-model "$SERVED_MODEL")
  ready=/readyz
fi
# valgrind runs every thread of the server on one core, one at a time.
# shellcheck disable=SC2086 # settings are words
env RUST_LOG=warn $settings valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.out" \
  "$binary" "${arguments[@]}" 2>"$OUT/server.log" &
server=$!
if $floor; then
  wait_answer "http://127.0.0.1:$PORT$ready" "$OUT/digit.png" image/png 120 "$OUT/server.log"
else
  wait_up "http://127.0.0.1:$PORT$ready" 120 "$OUT/server.log"
fi

# count ENDPOINT CONCURRENCY REQUESTS: instructions of the whole process per request.
count() {
  local endpoint=$1 c=$2 n=$3
  python3 bench/fixed_load.py "http://127.0.0.1:$PORT$endpoint" "$OUT/digit.png" "$c" 50 >/dev/null # warm-up
  callgrind_control --instr=on "$server" >/dev/null
  callgrind_control --zero "$server" >/dev/null
  python3 bench/fixed_load.py "http://127.0.0.1:$PORT$endpoint" "$OUT/digit.png" "$c" "$n" >/dev/null
  callgrind_control --instr=off "$server" >/dev/null
  rm -f "$OUT"/callgrind.out*
  callgrind_control --dump "$server" >/dev/null
  local total
  total=$(cat "$OUT"/callgrind.out* | awk '/^totals:/ {s += $2} END {printf "%d", s}')
  echo "| \`$endpoint\` | $c | $n | $((total / n)) |"
}

echo "| endpoint | concurrency | requests | instructions per request |"
echo "|---|---|---|---|"
count /classify 1 300
$floor && exit 0
count /classify 64 640
count "/sample?n=1&label=3&seed=0" 64 640
