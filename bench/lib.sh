# Helpers the bench scripts share (`. bench/lib.sh` from the repository root).

# wait_for URL SECONDS LOG COMMAND...: runs COMMAND every 0.1 s until it succeeds, for at most
# SECONDS; otherwise names URL, prints the end of LOG when given, and fails.
wait_for() {
  local url=$1 tries=$(($2 * 10)) log=$3
  shift 3
  for _ in $(seq "$tries"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "no answer from $url" >&2
  if [ -n "$log" ]; then tail -20 "$log" >&2; fi
  return 1
}

# wait_up URL [SECONDS] [LOG]: waits (default 60 s) until a GET of URL answers a 200.
wait_up() { wait_for "$1" "${2:-60}" "${3:-}" curl -fs "$1"; }

# wait_answer URL BODY CONTENT_TYPE [SECONDS] [LOG]: waits (default 60 s) until a POST of the file
# BODY to URL answers a 200, for servers (and endpoints) without a GET to ask.
wait_answer() { wait_for "$1" "${4:-60}" "${5:-}" curl -fs -H "content-type: $3" --data-binary @"$2" "$1"; }

# The model every serving benchmark measures: the MLP semi-supervised model whose weights the
# Python peers rebuild (bench/peer_model.py reads models/mnist-ssvae/v1), pinned because the
# shipped default is the conv model since mnist-ssvae@4. Versions 1 to 3 classify and sample with
# the same arithmetic, so the serving numbers recorded before the pin stay comparable.
SERVED_MODEL=mnist-ssvae@1
# Its folder, from which the peers load it.
SERVED_MODEL_DIR=models/${SERVED_MODEL%@*}/v${SERVED_MODEL#*@}

# start_vae_serve SERVER: starts SERVER (a binary, optionally after settings:
# "VAE_INFERENCE_INT8=true target/release/vae-serve") serving $SERVED_MODEL on 127.0.0.1:$PORT with
# its database and log in $OUT, sets `server` to its pid and waits until it is ready.
start_vae_serve() {
  # shellcheck disable=SC2086 # the settings and the binary are words of one argument
  env RUST_LOG=warn $1 serve --addr "127.0.0.1:$PORT" --grpc-addr "" --models-dir models --database "$OUT/db.sqlite" \
    --default-model "$SERVED_MODEL" 2>"$OUT/server.log" &
  server=$!
  wait_up "http://127.0.0.1:$PORT/readyz" 20 "$OUT/server.log"
}
