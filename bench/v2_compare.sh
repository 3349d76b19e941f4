#!/usr/bin/env bash
# The Open Inference Protocol against the servers that speak it, each serving the shipped
# model's classifier from the same model.safetensors with dynamic batching on: vae-serve
# (defaults), Triton's own server through PyTriton (dynamic batcher, 16 rows / 2 ms) and Seldon
# MLServer (adaptive batching, 16 / 2 ms). One load generator for all: wrk, with keep-alive
# connections, posting the same bodies (bench/v2_bodies.py): one digit or a batch of 64, in
# Triton's binary form where the server takes it, and as JSON. vae-serve's own POST /classify
# of the same digit as a PNG is the reference for the protocol's cost. Each server runs alone.
#
#   bench/v2_compare.sh [SECONDS_PER_CELL]     (needs `make build`; installs the peers into .venv-bench)
#
# Prints a markdown table; raw results in bench/out/v2-compare.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SECONDS_PER_CELL=${1:-5}
BIN=./target/release/vae-serve
MODEL=$SERVED_MODEL_DIR
PEERS=.venv-bench
PY=$PEERS/bin/python
OUT=$(mktemp -d)
mkdir -p bench/out
RESULTS=bench/out/v2-compare.jsonl
: > "$RESULTS"
trap 'kill $(jobs -p) 2>/dev/null || true; pkill -f tritonserver 2>/dev/null || true; rm -rf "$OUT"' EXIT

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
if [ ! -x "$PY" ]; then
  # The peers' own packages, kept apart from the test tools; torch comes from the project's .venv.
  python3 -m venv "$PEERS"
  echo "$PWD/.venv/lib/python3.11/site-packages" > "$PEERS/lib/python3.11/site-packages/project-venv.pth"
fi
"$PY" -c 'import mlserver, pytriton, safetensors' 2>/dev/null \
  || "$PY" -m pip install --quiet mlserver==1.7.1 'uvloop<0.22' nvidia-pytriton==0.7.0 safetensors >&2
python3 bench/v2_bodies.py ../shared/data/mnist "$OUT"
python3 bench/digit_png.py ../shared/data/mnist "$OUT/digit.png"

# SIGTERM, then SIGKILL if it is still there after 10 s (MLServer's workers can hold it up).
stop() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}


# cell SERVER FORM URL BODY HEADER_LENGTH CONTENT_TYPE ROWS
cell() {
  local server=$1 form=$2 url=$3 body=$4 header_length=$5 content_type=$6 rows=$7
  # The answer must be a 200 before it is timed.
  local status
  status=$(curl -s -o /dev/null -w '%{http_code}' -X POST --data-binary @"$body" \
    ${header_length:+-H "Inference-Header-Content-Length: $header_length"} ${content_type:+-H "Content-Type: $content_type"} "$url")
  [ "$status" = 200 ] || { echo "$server $form: HTTP $status from $url" >&2; exit 1; }
  for c in 1 16 64; do
    local threads=$(( c < 2 ? 1 : 2 ))
    BODY=$body HEADER_LENGTH=$header_length CONTENT_TYPE=$content_type \
      wrk -t"$threads" -c"$c" -d1s -s bench/wrk_request.lua "$url" >/dev/null
    local line
    line=$(BODY=$body HEADER_LENGTH=$header_length CONTENT_TYPE=$content_type \
      wrk -t"$threads" -c"$c" -d"${SECONDS_PER_CELL}s" -s bench/wrk_request.lua "$url" | tail -1)
    python3 -c 'import json, sys; r = json.loads(sys.argv[1]); r.update(server=sys.argv[2], form=sys.argv[3], c=int(sys.argv[4]), rows=int(sys.argv[5])); print(json.dumps(r))' \
      "$line" "$server" "$form" "$c" "$rows" >> "$RESULTS"
  done
}

# v2_cells SERVER INFER_URL BINARY: the protocol's cells against one server's infer endpoint.
v2_cells() {
  local server=$1 infer=$2 binary=$3
  if [ "$binary" = yes ]; then
    cell "$server" "binary, 1 digit" "$infer" "$OUT/one.bin" "$(cat "$OUT/one.len")" "" 1
    cell "$server" "binary, 64 digits" "$infer" "$OUT/batch.bin" "$(cat "$OUT/batch.len")" "" 64
  fi
  cell "$server" "JSON, 1 digit" "$infer" "$OUT/one.json" "" application/json 1
  cell "$server" "JSON, 64 digits" "$infer" "$OUT/batch.json" "" application/json 64
}

dir=$(mktemp -d)
cp -r models "$dir/"
"$BIN" serve --addr 127.0.0.1:18700 --grpc-addr "" --models-dir "$dir/models" --database "$dir/db.sqlite" \
  --default-model "$SERVED_MODEL" >"$OUT/vae.log" 2>&1 &
vae=$!
wait_up http://127.0.0.1:18700/readyz
v2_cells vae-serve "http://127.0.0.1:18700/v2/models/mnist-ssvae/versions/${SERVED_MODEL#*@}/infer" yes
cell vae-serve "POST /classify, PNG, 1 digit" http://127.0.0.1:18700/classify "$OUT/digit.png" "" image/png 1
stop "$vae"

"$PY" bench/v2_peers.py pytriton --model "$MODEL" --port 18710 >"$OUT/pytriton.log" 2>&1 &
triton=$!
wait_up http://127.0.0.1:18710/v2/models/mnist-ssvae/ready || { tail -20 "$OUT/pytriton.log" >&2; exit 1; }
v2_cells "Triton $("$PY" -c 'import importlib.metadata as m; print("(PyTriton " + m.version("nvidia-pytriton") + ")")')" http://127.0.0.1:18710/v2/models/mnist-ssvae/infer yes
stop "$triton"; pkill -f tritonserver 2>/dev/null || true

"$PY" bench/v2_peers.py mlserver --model "$MODEL" --port 18720 >"$OUT/mlserver.log" 2>&1 &
mlserver=$!
wait_up http://127.0.0.1:18720/v2/models/mnist-ssvae/ready || { tail -20 "$OUT/mlserver.log" >&2; exit 1; }
v2_cells "MLServer $("$PY" -c 'import importlib.metadata as m; print(m.version("mlserver"))')" http://127.0.0.1:18720/v2/models/mnist-ssvae/infer no
stop "$mlserver"

python3 - "$RESULTS" <<'PYEOF'
# The table, from the raw results.
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| server | request | c=1 req/s, p99 ms | c=16 req/s, p99 ms | c=64 req/s, p99 ms | c=64 rows/s | non-2xx, errors |")
print("|---|---|---|---|---|---|---|")
cells = {}
for r in rows:
    cells.setdefault((r["server"], r["form"]), {})[r["c"]] = r
for (server, form), by_c in cells.items():
    row = " | ".join(f"{by_c[c]['rps']:.0f}, {by_c[c]['p99_ms']:.2f}" for c in (1, 16, 64))
    bad = sum(by_c[c]["non2xx"] for c in by_c), sum(by_c[c]["errors"] for c in by_c)
    print(f"| {server} | {form} | {row} | {by_c[64]['rps'] * by_c[64]['rows']:.0f} | {bad[0]}, {bad[1]} |")
PYEOF
