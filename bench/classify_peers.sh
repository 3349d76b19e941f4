#!/usr/bin/env bash
# POST /classify of one 28×28 PNG against the strongest peer measured so far, TorchServe with its
# batching (2 workers, batchSize 16, maxBatchDelay 2 ms, one torch thread per worker, logging at
# WARN), serving the same weights and doing the same work (bench/torchserve_handler.py: decode the
# PNG, classify, answer JSON). vae-serve runs in float32 and with VAE_INFERENCE_INT8=true. The
# servers take turns, pass by pass; wrk drives each at concurrency 1 and 64; the table has the
# median of the passes and each server's ratio to TorchServe.
#
#   bench/classify_peers.sh [PASSES] [SECONDS]     (defaults: 3 passes, 10 s; needs `make build`;
#                                                   installs TorchServe 0.12.0 into .venv-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
PASSES=${1:-3} SECONDS_PER_RUN=${2:-10}
BIN=./target/release/vae-serve
MODEL=$PWD/models/mnist-ssvae/v1
LOG_CONFIG=$PWD/bench/torchserve_log4j2.xml
PEERS=$PWD/.venv-bench
PORT=18880
OUT=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; PATH=$PEERS/bin:$PATH torchserve --stop >/dev/null 2>&1; rm -rf "$OUT"' EXIT
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
command -v java >/dev/null || { echo "TorchServe needs Java 17 (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
if [ ! -x "$PEERS/bin/python" ]; then
  # The peers' own packages, kept apart from the test tools; torch comes from the project's .venv.
  python3 -m venv "$PEERS"
  echo "$PWD/.venv/lib/python3.11/site-packages" >"$PEERS/lib/python3.11/site-packages/project-venv.pth"
fi
"$PEERS/bin/python" -c 'import ts, model_archiver, yaml, safetensors, PIL' 2>/dev/null ||
  "$PEERS/bin/python" -m pip install --quiet torchserve==0.12.0 torch-model-archiver==0.12.0 PyYAML safetensors pillow >&2
python3 bench/digit_png.py ../shared/data/mnist "$OUT/digit.png"

mkdir -p "$OUT/store"
"$PEERS/bin/torch-model-archiver" --model-name classifier --version 1 --handler bench/torchserve_handler.py \
  --extra-files bench/peer_model.py --export-path "$OUT/store" --archive-format no-archive --force
cat >"$OUT/config.properties" <<PROPERTIES
inference_address=http://127.0.0.1:$PORT
management_address=http://127.0.0.1:$((PORT + 1))
metrics_address=http://127.0.0.1:$((PORT + 2))
disable_token_authorization=true
models={"classifier": {"1": {"defaultVersion": true, "marName": "classifier", "minWorkers": 2, "maxWorkers": 2, "batchSize": 16, "maxBatchDelay": 2, "responseTimeout": 120}}}
PROPERTIES

wait_for() { for _ in $(seq 600); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "no answer from $1" >&2; exit 1; }

# start NAME: runs that server on $PORT and sets `url` to its /classify.
start() {
  case $1 in
    torchserve)
      (cd "$OUT" && VAE_PEER_MODEL=$MODEL PATH=$PEERS/bin:$PATH torchserve --start --ncs --disable-token-auth \
        --model-store "$OUT/store" --models classifier=classifier --ts-config "$OUT/config.properties" \
        --log-config "$LOG_CONFIG" >"$OUT/torchserve.log" 2>&1)
      wait_for "http://127.0.0.1:$PORT/ping"
      # The workers load the model after /ping answers; one answered prediction shows they are up.
      until curl -fs -H 'content-type: image/png' --data-binary @"$OUT/digit.png" "http://127.0.0.1:$PORT/predictions/classifier" >/dev/null; do sleep 0.5; done
      url="http://127.0.0.1:$PORT/predictions/classifier" ;;
    vae-serve*)
      local int8=false; [ "$1" = "vae-serve int8" ] && int8=true
      VAE_INFERENCE_INT8=$int8 RUST_LOG=warn "$BIN" serve --addr "127.0.0.1:$PORT" --grpc-addr "" --models-dir models \
        --database "$OUT/db.sqlite" --default-model mnist-ssvae >"$OUT/vae-serve.log" 2>&1 &
      server=$!
      wait_for "http://127.0.0.1:$PORT/readyz"
      url="http://127.0.0.1:$PORT/classify" ;;
  esac
}

stop() {
  if [ "$1" = torchserve ]; then
    PATH=$PEERS/bin:$PATH torchserve --stop >/dev/null 2>&1
    while curl -fs "http://127.0.0.1:$PORT/ping" >/dev/null 2>&1; do sleep 0.2; done
  else
    kill "$server"
    wait "$server" 2>/dev/null || true
    server=""
  fi
}

SERVERS=("vae-serve float32" "vae-serve int8" torchserve)
for _ in $(seq "$PASSES"); do
  for name in "${SERVERS[@]}"; do
    start "$name"
    for c in 1 64; do
      threads=$((c < 2 ? 1 : 2))
      BODY="$OUT/digit.png" CONTENT_TYPE=image/png wrk -t "$threads" -c "$c" -d 2s -s bench/wrk_request.lua "$url" >/dev/null
      BODY="$OUT/digit.png" CONTENT_TYPE=image/png wrk -t "$threads" -c "$c" -d "${SECONDS_PER_RUN}s" -s bench/wrk_request.lua "$url" |
        grep '^{' | sed "s/^{/{\"server\": \"$name\", \"c\": $c, /" >>"$OUT/runs.jsonl"
    done
    stop "$name"
  done
done

python3 - "$OUT/runs.jsonl" <<'PYEOF'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
bad = [r for r in runs if r["non2xx"] or r["errors"]]
assert not bad, f"failed requests: {bad}"
median = lambda server, c, key: statistics.median(r[key] for r in runs if (r["server"], r["c"]) == (server, c))
print("| server | c=1 req/s | c=1 p99 ms | c=64 req/s | c=64 p99 ms | c=64 / TorchServe |")
print("|---|---|---|---|---|---|")
for server in ("vae-serve float32", "vae-serve int8", "torchserve"):
    print(f"| {server} | {median(server, 1, 'rps'):.0f} | {median(server, 1, 'p99_ms'):.2f} | {median(server, 64, 'rps'):.0f} | "
          f"{median(server, 64, 'p99_ms'):.2f} | {median(server, 64, 'rps') / median('torchserve', 64, 'rps'):.2f}× |")
PYEOF
