#!/usr/bin/env bash
# System calls per POST /classify (one 28×28 PNG) at concurrency 64: `perf trace -s` on the server
# for 3 s while wrk drives it, each call's count divided by the `writev` count (hyper writes each
# answer with one `writev`; counting answers through /metrics would also count those answered
# while perf attaches).
#
#   bench/syscalls_per_request.sh [SERVER]     (default ./target/release/vae-serve)
#
# SERVER is a binary, optionally after settings: "VAE_INFERENCE_INT8=true target/release/vae-serve".
# Needs perf (apt-get install linux-perf) with kernel.perf_event_paranoid ≤ 2, and wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SERVER=${1:-./target/release/vae-serve}
PORT=${PORT:-18694}
OUT=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$OUT"' EXIT
command -v perf >/dev/null && command -v wrk >/dev/null || { echo "needs perf and wrk" >&2; exit 1; }
python3 bench/digit_png.py ../shared/data/mnist "$OUT/digit.png"

start_vae_serve "$SERVER"
BODY=$OUT/digit.png CONTENT_TYPE=image/png wrk -t 2 -c 64 -d 9s -s bench/wrk_request.lua "http://127.0.0.1:$PORT/classify" \
  | grep '^{' >"$OUT/wrk.json" &
load=$!
sleep 2
perf trace -s -p "$server" -o "$OUT/trace.txt" -- sleep 3 >/dev/null 2>&1
wait "$load"
echo "load: $(cat "$OUT/wrk.json")"
# The summary lists each thread's calls; summed over threads, per call.
python3 - "$OUT/trace.txt" <<'PYEOF'
import collections, re, sys
calls = collections.Counter()
for line in open(sys.argv[1]):
    match = re.match(r"\s+([a-z_0-9]+)\s+(\d+)\s", line)
    if match:
        calls[match[1]] += int(match[2])
answers = calls["writev"]
print("| system call | per answer |")
print("|---|---|")
for name, count in calls.most_common(8):
    print(f"| `{name}` | {count / answers:.2f} |")
PYEOF
