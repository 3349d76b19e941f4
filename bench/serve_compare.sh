#!/usr/bin/env bash
# Serving throughput and latency: vae-serve with dynamic batching on and off, and a FastAPI +
# uvicorn + PyTorch peer serving the same weights, all driven by the same HTTP load generator
# (oha) in one invocation. Also records vae-serve's resident memory idle, under load and after.
#
#   bench/serve_compare.sh [SECONDS_PER_RUN]
#
# Needs `make build`; installs oha (cargo) and the peer's Python packages (.venv) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SECONDS_PER_RUN=${1:-5}
BIN=./target/release/vae-serve
PY=./.venv/bin/python
MODEL=$SERVED_MODEL_DIR
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT

command -v oha >/dev/null || cargo install oha --locked >&2
"$PY" -c 'import fastapi, uvicorn, safetensors, PIL' 2>/dev/null || "$PY" -m pip install --quiet fastapi uvicorn safetensors pillow >&2

# One MNIST test digit as a PNG request body.
"$PY" bench/digit_png.py ../shared/data/mnist "$OUT/digit.png"

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# load NAME URL METHOD CONCURRENCY -> appends a JSON line to $OUT/results.jsonl
load() {
  local name=$1 url=$2 method=$3 c=$4
  local args=(-z "${SECONDS_PER_RUN}s" -c "$c" --no-tui --output-format json)
  if [ "$method" = POST ]; then args+=(-m POST -T image/png -D "$OUT/digit.png"); fi
  oha "${args[@]}" "$url" > "$OUT/run.json"
  "$PY" - "$OUT/run.json" "$name" "$url" "$c" >> "$OUT/results.jsonl" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1])); name, url, c = sys.argv[2:]
codes = r.get("statusCodeDistribution", {})
print(json.dumps({"server": name, "endpoint": url.split("/", 3)[3], "c": int(c),
                  "rps": r["summary"]["requestsPerSec"], "p50": r["latencyPercentiles"]["p50"] * 1000,
                  "p99": r["latencyPercentiles"]["p99"] * 1000, "ok": codes.get("200", 0), "total": sum(codes.values())}))
PYEOF
}

run_suite() {
  local name=$1 base=$2 with_reconstruct=$3
  for c in 1 16 64; do
    load "$name" "$base/sample?n=1&label=3&seed=0" GET "$c"
    load "$name" "$base/classify" POST "$c"
    if [ "$with_reconstruct" = yes ]; then load "$name" "$base/reconstruct" POST "$c"; fi
  done
}

for mode in batched unbatched; do
  batch=64; [ "$mode" = unbatched ] && batch=1
  VAE_MAX_BATCH_SIZE=$batch RUST_LOG=warn "$BIN" serve --addr 127.0.0.1:18180 \
    --models-dir models --database "$OUT/$mode.db" --default-model "$SERVED_MODEL" 2>"$OUT/$mode.log" &
  pid=$!
  wait_up http://127.0.0.1:18180/readyz
  idle=$(rss_kb $pid)
  run_suite "vae-serve ($mode)" http://127.0.0.1:18180 yes
  after=$(rss_kb $pid)
  echo "{\"memory\": \"$mode\", \"idle_kb\": $idle, \"after_load_kb\": $after}" >> "$OUT/results.jsonl"
  kill $pid; wait $pid 2>/dev/null || true
done

"$PY" bench/fastapi_peer.py --model "$MODEL" --port 18190 2>"$OUT/peer.log" &
peer=$!
wait_up "http://127.0.0.1:18190/sample?n=1"
run_suite "FastAPI + PyTorch" http://127.0.0.1:18190 no
kill $peer; wait $peer 2>/dev/null || true

"$PY" - "$OUT/results.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
runs = [r for r in rows if "server" in r]
print("| server | endpoint | concurrency | requests/s | p50 ms | p99 ms | 200s / all |")
print("|---|---|---|---|---|---|---|")
for r in runs:
    print(f"| {r['server']} | {r['endpoint']} | {r['c']} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['ok']}/{r['total']} |")
by = {(r["server"], r["endpoint"], r["c"]): r["rps"] for r in runs}
print()
for endpoint in ["sample?n=1&label=3&seed=0", "classify"]:
    b, u, f = (by.get((s, endpoint, 64)) for s in ["vae-serve (batched)", "vae-serve (unbatched)", "FastAPI + PyTorch"])
    if b and u and f:
        print(f"- `{endpoint.split('?')[0]}` at concurrency 64: batched/unbatched **{b / u:.2f}×**, vae-serve/FastAPI **{b / f:.2f}×**")
for r in rows:
    if "memory" in r:
        print(f"- resident memory ({r['memory']}): idle {r['idle_kb'] / 1024:.0f} MiB, after the load runs {r['after_load_kb'] / 1024:.0f} MiB")
PYEOF
