#!/usr/bin/env bash
# The conv model's speed/quality trade-off over variants of its flags: seconds per epoch on CPU
# (mean of epochs 2-4, alternating with the MLP, 2 threads) and, with SEEDS set, the test −ELBO
# of a 60-epoch run for each seed (`--threads 1`, JOBS runs at a time, on QUALITY_DEVICE).
#
#   bench/conv_tradeoff.sh [ROUNDS] [VARIANT...]     VARIANT: extra `train` flags, quoted
#   bench/conv_tradeoff.sh 3 "" "--conv-channels 16,32"                   (the default 16,16, and 16,32)
#   SEEDS="0 1 2" bench/conv_tradeoff.sh 3 "" "--optimizer rmsprop --learning-rate 2.5e-4"   (about 15 minutes on 2 cores)
#   SEEDS="0 1 2" JOBS=12 QUALITY_DEVICE=cuda BIN=.device/vae-serve DATA=.device/data \
#     bench/conv_tradeoff.sh 0 "" "--ema-decay 0.999"                      (quality only, on a GPU)
#
# ROUNDS=0 skips the timing. Needs `make build` (or BIN).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
shift || true
VARIANTS=("$@")
[ ${#VARIANTS[@]} -gt 0 ] || VARIANTS=("" "--optimizer rmsprop --learning-rate 2.5e-4")
BIN=${BIN:-./target/release/vae-serve}
DATA=${DATA:-../shared/data}
JOBS=${JOBS:-2}
QUALITY_DEVICE=${QUALITY_DEVICE:-cpu}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
common=(--data-dir "$DATA" --dataset mnist --validation-fraction 0 --name run)

# epoch_seconds ARGS... -> mean seconds of epochs 2..4, from the JSON summary `train` prints
# (the averaged weights of --ema-decay need the BN recomputation, so those runs keep it)
epoch_seconds() {
  local json recompute=--no-bn-recompute
  [[ "$*" == *--ema-decay* ]] && recompute=
  json=$("$BIN" train "${common[@]}" --device cpu --threads 2 --epochs 4 $recompute --models-dir "$(mktemp -d "$OUT/t.XXXX")" "$@" 2>"$OUT/timing.log") \
    || { grep -m1 Error "$OUT/timing.log" >&2; return 1; }
  python3 -c "import json, sys; s = [e['seconds'] for e in json.load(sys.stdin)['history'][1:]]; print('%.3f' % (sum(s) / len(s)))" <<< "$json"
}

# add KEY ARGS...: times one run and adds its seconds to total[KEY] (a failed run stops the script)
declare -A total
add() {
  local key=$1 seconds
  shift
  seconds=$(epoch_seconds "$@")
  total[$key]=$(echo "${total[$key]:-0} + $seconds" | bc -l)
}
for _ in $(seq "$ROUNDS"); do
  add mlp --architecture mlp
  for i in "${!VARIANTS[@]}"; do
    # shellcheck disable=SC2086 # a variant is a list of flags
    add "$i" --architecture conv ${VARIANTS[$i]}
  done
done

# quality_run VARIANT_INDEX SEED -> $OUT/q-INDEX-SEED: the test −ELBO of a 60-epoch run, or "failed"
quality_run() {
  # shellcheck disable=SC2086
  "$BIN" train "${common[@]}" --device "$QUALITY_DEVICE" --threads 1 --epochs "${QUALITY_EPOCHS:-60}" --architecture conv ${VARIANTS[$1]} --seed "$2" \
    --models-dir "$(mktemp -d "$OUT/q.XXXX")" 2>"$OUT/q-$1-$2.log" \
    | python3 -c "import json, sys; print('%.2f' % json.load(sys.stdin)['metrics']['test_negative_elbo'])" > "$OUT/q-$1-$2" 2>/dev/null \
    || { echo failed > "$OUT/q-$1-$2"; grep -m1 Error "$OUT/q-$1-$2.log" >&2 || true; }
  echo "done: ${VARIANTS[$1]:-(default)}, seed $2: $(cat "$OUT/q-$1-$2")" >&2
}
if [ -n "${SEEDS:-}" ]; then
  for i in "${!VARIANTS[@]}"; do
    for s in $SEEDS; do
      while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
      quality_run "$i" "$s" &
    done
  done
  wait
fi

header="| conv variant (flags beyond the default) | s/epoch | × MLP |"
rule="|---|---|---|"
for s in ${SEEDS:-}; do header="$header seed $s |"; rule="$rule---|"; done
[ -n "${SEEDS:-}" ] && { header="$header mean |"; rule="$rule---|"; }
echo "MLP: $( [ "$ROUNDS" -gt 0 ] && printf '%.3f s/epoch' "$(echo "${total[mlp]} / $ROUNDS" | bc -l)" || echo 'not timed'); quality runs on $QUALITY_DEVICE, ${QUALITY_EPOCHS:-60} epochs"
echo "$header"
echo "$rule"
for i in "${!VARIANTS[@]}"; do
  row="| ${VARIANTS[$i]:-(default)} |"
  if [ "$ROUNDS" -gt 0 ]; then
    seconds=$(echo "${total[$i]} / $ROUNDS" | bc -l)
    row="$row $(printf '%.3f | %.2f×' "$seconds" "$(echo "$seconds / (${total[mlp]} / $ROUNDS)" | bc -l)") |"
  else
    row="$row – | – |"
  fi
  if [ -n "${SEEDS:-}" ]; then
    values=()
    for s in $SEEDS; do values+=("$(cat "$OUT/q-$i-$s")"); row="$row ${values[-1]} |"; done
    row="$row $(printf '%s\n' "${values[@]}" | python3 -c "import sys; v = [float(x) for x in sys.stdin if x.strip() != 'failed']; print('**%.2f**' % (sum(v) / len(v)) if v else 'failed')") |"
  fi
  echo "$row"
done
