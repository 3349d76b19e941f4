#!/usr/bin/env bash
# The conv model's speed/quality trade-off over its channel widths: seconds per epoch (mean of
# epochs 2-4, alternating with the MLP, 2 threads) and, with SEEDS set, the test −ELBO after the
# 60-epoch quality run for each seed (`--threads 1`, two runs at a time).
#
#   bench/conv_tradeoff.sh [ROUNDS] ["16,32 16,16 ..."]
#   SEEDS="0 1 2" bench/conv_tradeoff.sh 3 "16,32 16,16"      (about 25 minutes on 2 cores)
#
# Needs `make build`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
CHANNELS=${2:-"16,32 16,16"}
BIN=./target/release/vae-serve
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
common=(--device cpu --data-dir ../shared/data --dataset mnist --validation-fraction 0 --name run)

# epoch_seconds ARGS... -> mean seconds of epochs 2..4, from the JSON summary `train` prints
epoch_seconds() {
  "$BIN" train "${common[@]}" --threads 2 --epochs 4 --no-bn-recompute --models-dir "$(mktemp -d "$OUT/t.XXXX")" "$@" 2>/dev/null \
    | python3 -c "import json, sys; s = [e['seconds'] for e in json.load(sys.stdin)['history'][1:]]; print('%.3f' % (sum(s) / len(s)))"
}

declare -A total
for _ in $(seq "$ROUNDS"); do
  total[mlp]=$(echo "${total[mlp]:-0} + $(epoch_seconds --architecture mlp)" | bc -l)
  for c in $CHANNELS; do
    total[$c]=$(echo "${total[$c]:-0} + $(epoch_seconds --architecture conv --conv-channels "$c")" | bc -l)
  done
done
mlp=$(echo "${total[mlp]} / $ROUNDS" | bc -l)

# test_elbo CHANNELS SEED -> test −ELBO of a 60-epoch run
test_elbo() {
  "$BIN" train "${common[@]}" --threads 1 --epochs 60 --architecture conv --conv-channels "$1" --seed "$2" --models-dir "$(mktemp -d "$OUT/q.XXXX")" 2>/dev/null \
    | python3 -c "import json, sys; print('%.2f' % json.load(sys.stdin)['metrics']['test_negative_elbo'])"
}

printf "| conv channels | s/epoch | × MLP (%.3f s) | test −ELBO by seed (60 epochs) |\n" "$mlp"
echo "|---|---|---|---|"
for c in $CHANNELS; do
  seconds=$(echo "${total[$c]} / $ROUNDS" | bc -l)
  elbos="not run (set SEEDS)"
  if [ -n "${SEEDS:-}" ]; then
    elbos=""
    for s in $SEEDS; do test_elbo "$c" "$s" > "$OUT/elbo-$s" & done
    wait
    for s in $SEEDS; do elbos="$elbos seed $s: $(cat "$OUT/elbo-$s");"; done
  fi
  printf "| %s | %.3f | %.2f× | %s |\n" "$c" "$seconds" "$(echo "$seconds / $mlp" | bc -l)" "$elbos"
done
