#!/usr/bin/env bash
# POST /classify of one 28×28 PNG against the peers a team would deploy instead, each serving the
# same weights and doing the same work (decode the PNG, classify, answer JSON; bench/peer_model.py):
#   - TorchServe 0.12 with batching (2 workers, batchSize 16, maxBatchDelay 2 ms, one torch thread
#     per worker, logging at WARN; bench/torchserve_handler.py);
#   - FastAPI + uvicorn, 2 worker processes, one torch thread each (bench/fastapi_peer.py);
#   - LitServe with batching (16 / 2 ms, 2 workers; bench/litserve_peer.py), the PNG base64 in JSON;
#   - MLServer with adaptive batching (16 / 2 ms; bench/v2_peers.py --input png), the PNG as a
#     base64 BYTES input of an Open Inference Protocol request;
#   - the floor: an axum server answering vae-serve's own JSON for the digit without any work
#     (examples/http_floor.rs), the cost of HTTP alone.
# vae-serve runs with its defaults (dynamic batching), with VAE_INFERENCE_INT8=true, and unbatched
# (VAE_MAX_BATCH_SIZE=1). The servers take turns, pass by pass; wrk drives each at concurrency 1
# and 64 (2 s warm-up, then the timed run); the table has the median of the passes and the ratios
# to TorchServe and to the floor. oha cross-checks the batched/unbatched ratio at concurrency 64.
# vae-serve (float32, int8) and TorchServe also serve GET /sample?n=1 and POST /reconstruct of the
# digit, TorchServe through the same handler registered as `sampler` and `reconstructor`; a second
# table has those. Every server's answer is checked (the digit's label; the reconstruction's
# error against vae-serve's; a PNG for samples) before it is timed.
#
#   bench/classify_peers.sh [PASSES] [SECONDS]     (defaults: 3 passes, 10 s; needs `make build`;
#                                                   installs the peers into .venv-bench and oha)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
PASSES=${1:-3} SECONDS_PER_RUN=${2:-10}
BIN=./target/release/vae-serve
MODEL=$PWD/$SERVED_MODEL_DIR
LOG_CONFIG=$PWD/bench/torchserve_log4j2.xml
PEERS=$PWD/.venv-bench
PORT=18880
OUT=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill -- "-$server" 2>/dev/null; PATH=$PEERS/bin:$PATH torchserve --stop >/dev/null 2>&1; rm -rf "$OUT"' EXIT
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
command -v java >/dev/null || { echo "TorchServe needs Java 17 (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
command -v oha >/dev/null || cargo install oha --locked >&2
LIBTORCH_USE_PYTORCH=1 PATH=$PWD/.venv/bin:$PATH cargo build --release --locked --example http_floor >&2
if [ ! -x "$PEERS/bin/python" ]; then
  # The peers' own packages, kept apart from the test tools; torch comes from the project's .venv.
  python3 -m venv "$PEERS"
  echo "$PWD/.venv/lib/python3.11/site-packages" >"$PEERS/lib/python3.11/site-packages/project-venv.pth"
fi
"$PEERS/bin/python" -c 'import ts, model_archiver, yaml, safetensors, PIL, fastapi, uvicorn, litserve, mlserver' 2>/dev/null ||
  "$PEERS/bin/python" -m pip install --quiet torchserve==0.12.0 torch-model-archiver==0.12.0 PyYAML safetensors pillow \
    fastapi==0.115.14 uvicorn==0.55.0 litserve==0.2.19 mlserver==1.7.1 'uvloop<0.22' >&2
python3 bench/digit_png.py ../shared/data/mnist "$OUT/digit.png"
python3 - "$OUT" <<'PYEOF'
import base64, json, sys
out = sys.argv[1]
png = base64.b64encode(open(f"{out}/digit.png", "rb").read()).decode()
json.dump({"image": png}, open(f"{out}/litserve.json", "w"))
json.dump({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [png],
                       "parameters": {"content_type": "base64"}}]}, open(f"{out}/mlserver.json", "w"))
PYEOF

# One handler, registered three times; it tells them apart by name.
mkdir -p "$OUT/store"
TS_MODELS=(classifier sampler reconstructor)
settings=() registered=()
for model in "${TS_MODELS[@]}"; do
  registered+=("$model=$model")
  "$PEERS/bin/torch-model-archiver" --model-name "$model" --version 1 --handler bench/torchserve_handler.py \
    --extra-files bench/peer_model.py --export-path "$OUT/store" --archive-format no-archive --force
  settings+=("\"$model\": {\"1\": {\"defaultVersion\": true, \"marName\": \"$model\", \"minWorkers\": 2, \"maxWorkers\": 2, \"batchSize\": 16, \"maxBatchDelay\": 2, \"responseTimeout\": 120}}")
done
cat >"$OUT/config.properties" <<PROPERTIES
inference_address=http://127.0.0.1:$PORT
management_address=http://127.0.0.1:$((PORT + 1))
metrics_address=http://127.0.0.1:$((PORT + 2))
disable_token_authorization=true
models={$(IFS=,; echo "${settings[*]}")}
PROPERTIES

# ask URL BODY CONTENT_TYPE: one request, its answer on stdout; fails unless it is a 200.
ask() { curl -fs -H "content-type: $3" --data-binary @"$2" "$1"; }

# start NAME: runs that server on $PORT (in its own process group) and sets url, body, content_type.
start() {
  local base="http://127.0.0.1:$PORT"
  url="$base/classify" body="$OUT/digit.png" content_type=image/png
  case $1 in
    torchserve)
      (cd "$OUT" && VAE_PEER_MODEL=$MODEL PATH=$PEERS/bin:$PATH torchserve --start --ncs --disable-token-auth \
        --model-store "$OUT/store" --models "${registered[@]}" --ts-config "$OUT/config.properties" \
        --log-config "$LOG_CONFIG" >"$OUT/torchserve.log" 2>&1)
      url="$base/predictions/classifier" ;;
    vae-serve*)
      local int8=false unbatched=()
      [ "$1" = "vae-serve int8" ] && int8=true
      [ "$1" = "vae-serve unbatched" ] && unbatched=(--max-batch-size 1)
      VAE_INFERENCE_INT8=$int8 RUST_LOG=warn setsid "$BIN" serve --addr "127.0.0.1:$PORT" --grpc-addr "" --models-dir models \
        --database "$OUT/db.sqlite" --default-model "$SERVED_MODEL" "${unbatched[@]}" >"$OUT/server.log" 2>&1 &
      server=$! ;;
    "fastapi ×2")
      setsid "$PEERS/bin/python" bench/fastapi_peer.py --model "$MODEL" --port "$PORT" --workers 2 --threads 1 >"$OUT/server.log" 2>&1 &
      server=$! ;;
    litserve)
      setsid "$PEERS/bin/python" bench/litserve_peer.py --model "$MODEL" --port "$PORT" >"$OUT/server.log" 2>&1 &
      server=$! body="$OUT/litserve.json" content_type=application/json ;;
    mlserver)
      setsid "$PEERS/bin/python" bench/v2_peers.py mlserver --input png --model "$MODEL" --port "$PORT" >"$OUT/server.log" 2>&1 &
      server=$! url="$base/v2/models/mnist-ssvae/infer" body="$OUT/mlserver.json" content_type=application/json ;;
    "axum floor")
      setsid target/release/examples/http_floor "127.0.0.1:$PORT" "$OUT/answer-vae-serve-float32.json" >"$OUT/server.log" 2>&1 &
      server=$! ;;
  esac
  wait_answer "$url" "$body" "$content_type" 120
  ask "$url" "$body" "$content_type" >"$OUT/answer-${1// /-}.json"
  # The other endpoints, where this server has them.
  case $1 in
    "vae-serve float32" | "vae-serve int8") sample_url="$base/sample?n=1&label=3&seed=0" reconstruct_url="$base/reconstruct" ;;
    torchserve) sample_url="$base/predictions/sampler?n=1&label=3&seed=0" reconstruct_url="$base/predictions/reconstructor" ;;
    *) sample_url="" reconstruct_url="" ;;
  esac
  if [ -n "$sample_url" ]; then
    wait_answer "$reconstruct_url" "$body" "$content_type" 120
    ask "$reconstruct_url" "$body" "$content_type" >"$OUT/reconstruct-${1// /-}.json"
    curl -fs "$sample_url" | head -c 4 | tail -c 3 >"$OUT/sample-${1// /-}.txt"
  fi
}

alive() { local state; state=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $state != Z* ]]; }
port_taken() { curl -s -o /dev/null "http://127.0.0.1:$PORT/"; }

# stop NAME: stops it and waits until it is gone and the port free for the next one; what is
# still there after 10 s (MLServer holds on after SIGTERM) gets SIGKILL.
stop() {
  if [ "$1" = torchserve ]; then
    PATH=$PEERS/bin:$PATH torchserve --stop >/dev/null 2>&1
  else
    kill -- "-$server" 2>/dev/null || true
  fi
  for _ in $(seq 50); do
    port_taken || { [ -n "$server" ] && alive "$server"; } || break
    sleep 0.2
  done
  if [ -n "$server" ]; then
    kill -9 -- "-$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  elif port_taken; then
    pkill -9 -f org.pytorch.serve || true
  fi
  for _ in $(seq 50); do port_taken || break; sleep 0.2; done
  port_taken && { echo "port $PORT still taken after stopping $1" >&2; exit 1; }
  server=""
}

# record NAME C TOOL [ENDPOINT]: the timed run's JSON line for that server, concurrency, load
# generator and endpoint (classify unless named).
record() { sed "s/^{/{\"server\": \"$1\", \"c\": $2, \"tool\": \"$3\", \"endpoint\": \"${4:-classify}\", /" >>"$OUT/runs.jsonl"; }

# timed_wrk NAME ENDPOINT URL [BODY CONTENT_TYPE]: a 2 s warm-up and the timed run at concurrency 1 and 64.
timed_wrk() {
  local name=$1 endpoint=$2 target=$3 payload=${4:-} type=${5:-}
  for c in 1 64; do
    threads=$((c < 2 ? 1 : 2))
    BODY=$payload CONTENT_TYPE=$type wrk -t "$threads" -c "$c" -d 2s -s bench/wrk_request.lua "$target" >/dev/null
    BODY=$payload CONTENT_TYPE=$type wrk -t "$threads" -c "$c" -d "${SECONDS_PER_RUN}s" -s bench/wrk_request.lua "$target" |
      grep '^{' | record "$name" "$c" wrk "$endpoint"
  done
}

timed_oha() {
  oha -z "${SECONDS_PER_RUN}s" -c 64 --wait-ongoing-requests-after-deadline --no-tui --output-format json -m POST -T "$content_type" -D "$body" "$url" |
    python3 -c 'import json, sys; r = json.load(sys.stdin); c = r["statusCodeDistribution"]
print(json.dumps({"rps": r["summary"]["requestsPerSec"], "p99_ms": r["latencyPercentiles"]["p99"] * 1000,
                  "non2xx": sum(n for s, n in c.items() if s != "200"), "errors": sum(r.get("errorDistribution", {}).values())}))'
}

SERVERS=("vae-serve float32" "vae-serve int8" "vae-serve unbatched" torchserve "fastapi ×2" litserve mlserver "axum floor")
for _ in $(seq "$PASSES"); do
  for name in "${SERVERS[@]}"; do
    start "$name"
    timed_wrk "$name" classify "$url" "$body" "$content_type"
    if [ -n "$sample_url" ]; then
      timed_wrk "$name" sample "$sample_url"
      timed_wrk "$name" reconstruct "$reconstruct_url" "$body" "$content_type"
    fi
    if [ "$name" = "vae-serve float32" ] || [ "$name" = "vae-serve unbatched" ]; then
      timed_oha | record "$name" 64 oha classify
    fi
    stop "$name"
  done
done

versions=$("$PEERS/bin/python" -m pip list 2>/dev/null | awk '$1 ~ /^(torchserve|fastapi|uvicorn|litserve|mlserver|torch)$/ {printf "%s %s, ", $1, $2}')
python3 - "$OUT" "$versions$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $(oha --version)" <<'PYEOF'
import glob, json, os, statistics, sys
out, versions = sys.argv[1:]
for path in glob.glob(f"{out}/answer-*.json"):
    a = json.load(open(path))
    probs = a["outputs"][0]["data"] if "outputs" in a else a["results"][0]["probabilities"].values()
    probs = list(probs)
    assert probs.index(max(probs)) == 7, f"{os.path.basename(path)} does not classify the test digit as 7: {a}"
reconstructions = {os.path.basename(p): json.load(open(p))["results"][0]["reconstruction_error"] for p in glob.glob(f"{out}/reconstruct-*.json")}
# Within 1%: int8 moves it by about 0.3%.
assert max(reconstructions.values()) - min(reconstructions.values()) < 0.01 * max(reconstructions.values()), \
    f"the servers' reconstructions of the digit differ: {reconstructions}"
for path in glob.glob(f"{out}/sample-*.txt"):
    assert open(path).read() == "PNG", f"{os.path.basename(path)}: the sample is not a PNG"
runs = [json.loads(line) for line in open(f"{out}/runs.jsonl")]
bad = [r for r in runs if r["non2xx"] or r["errors"]]
assert not bad, f"failed requests: {bad}"
def median(server, c, key, tool="wrk", endpoint="classify"):
    return statistics.median(r[key] for r in runs if (r["server"], r["c"], r["tool"], r["endpoint"]) == (server, c, tool, endpoint))
def servers(endpoint):
    return list(dict.fromkeys(r["server"] for r in runs if r["endpoint"] == endpoint))
def cells(server, endpoint):
    """Requests/s and p99 at concurrency 1 and 64, and the ratio to TorchServe at 64."""
    m = lambda c, key: median(server, c, key, endpoint=endpoint)
    return (f"{m(1, 'rps'):.0f} | {m(1, 'p99_ms'):.2f} | {m(64, 'rps'):.0f} | {m(64, 'p99_ms'):.2f} | "
            f"{m(64, 'rps') / median('torchserve', 64, 'rps', endpoint=endpoint):.2f}×")
print(f"Versions: {versions}. wrk at concurrency 1 (1 thread) and 64 (2 threads); medians of the passes.")
print()
print("| server | c=1 req/s | c=1 p99 ms | c=64 req/s | c=64 p99 ms | c=64 / TorchServe | c=64 / axum floor |")
print("|---|---|---|---|---|---|---|")
for s in servers("classify"):
    print(f"| {s} | {cells(s, 'classify')} | {100 * median(s, 64, 'rps') / median('axum floor', 64, 'rps'):.0f}% |")
print()
print("GET /sample?n=1&label=3&seed=0 and POST /reconstruct of the digit (TorchServe: the same handler as `sampler` and `reconstructor`):")
print()
print("| server | endpoint | c=1 req/s | c=1 p99 ms | c=64 req/s | c=64 p99 ms | c=64 / TorchServe |")
print("|---|---|---|---|---|---|---|")
for endpoint in ("sample", "reconstruct"):
    for s in servers(endpoint):
        print(f"| {s} | {endpoint} | {cells(s, endpoint)} |")
print()
ratio = lambda tool: median("vae-serve float32", 64, "rps", tool) / median("vae-serve unbatched", 64, "rps", tool)
print(f"Batched / unbatched vae-serve at concurrency 64: {ratio('wrk'):.2f}× with wrk, {ratio('oha'):.2f}× with oha.")
PYEOF
