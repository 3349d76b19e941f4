#!/usr/bin/env bash
# Before/after for a serving change: two builds or settings of vae-serve, alternated pass by pass
# so that the machine's drift hits both alike, each driven by wrk on POST /classify (one 28×28 PNG)
# and GET /sample?n=1 at concurrency 1 and 64. Prints the median of the passes per cell.
#
#   bench/serve_ab.sh BEFORE AFTER [PASSES] [SECONDS]     (defaults: 3 passes, 10 s)
#
# BEFORE and AFTER are a binary, optionally after settings: "VAE_INFERENCE_INT8=true target/release/vae-serve".
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
BEFORE=$1 AFTER=$2 PASSES=${3:-3} SECONDS_PER_RUN=${4:-10}
PORT=${PORT:-18680}
OUT=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$OUT"' EXIT
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
python3 bench/digit_png.py ../shared/data/mnist "$OUT/digit.png"

for pass in $(seq "$PASSES"); do
  for side in before after; do
    binary=$BEFORE; [ "$side" = after ] && binary=$AFTER
    start_vae_serve "$binary"
    for c in 1 64; do
      for endpoint in classify sample; do
        url="http://127.0.0.1:$PORT/classify" body=$OUT/digit.png type=image/png
        [ "$endpoint" = sample ] && url="http://127.0.0.1:$PORT/sample?n=1&label=3&seed=0" body="" type=""
        BODY=$body CONTENT_TYPE=$type wrk -t "$((c < 2 ? 1 : 2))" -c "$c" -d "${SECONDS_PER_RUN}s" -s bench/wrk_request.lua "$url" \
          | grep '^{' | sed "s/^{/{\"side\": \"$side\", \"endpoint\": \"$endpoint\", \"c\": $c, /" >>"$OUT/runs.jsonl"
      done
    done
    kill "$server"
    wait "$server" 2>/dev/null || true
    server=""
  done
done

python3 - "$OUT/runs.jsonl" <<'PYEOF'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
assert all(r["non2xx"] == 0 and r["errors"] == 0 for r in runs), "some requests failed"
cell = lambda side, endpoint, c, key: statistics.median(r[key] for r in runs if (r["side"], r["endpoint"], r["c"]) == (side, endpoint, c))
print("| endpoint | concurrency | before req/s | after req/s | after / before | before p99 ms | after p99 ms |")
print("|---|---|---|---|---|---|---|")
for endpoint in ("classify", "sample"):
    for c in (1, 64):
        b, a = cell("before", endpoint, c, "rps"), cell("after", endpoint, c, "rps")
        print(f"| {endpoint} | {c} | {b:.0f} | {a:.0f} | {a / b:.2f} | {cell('before', endpoint, c, 'p99_ms'):.2f} | {cell('after', endpoint, c, 'p99_ms'):.2f} |")
PYEOF
