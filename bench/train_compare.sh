#!/usr/bin/env bash
# Training speed and quality, vae-serve against the same models in PyTorch eager, run in the same
# invocation and alternating (ours, theirs, ours, theirs, …) so both see the same machine state.
#
#   bench/train_compare.sh [EPOCHS] [ROUNDS] [ARCHITECTURES]
#
# Needs `make build` first (release binary, .venv with torch). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-5}
ROUNDS=${2:-2}
ARCHITECTURES=${3:-"mlp conv"}
DATA=${VAE_BENCH_DATA:-../shared/data}
THREADS=${VAE_THREADS:-$(nproc)}
BIN=./target/release/vae-serve
PY=./.venv/bin/python
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

echo "| model | epochs | vae-serve s/epoch | PyTorch s/epoch | ratio (ours/PyTorch) | vae-serve test −ELBO | PyTorch test −ELBO |"
echo "|---|---|---|---|---|---|---|"
for arch in $ARCHITECTURES; do
  for round in $(seq "$ROUNDS"); do
    "$BIN" train --device cpu --threads "$THREADS" --data-dir "$DATA" --dataset mnist --architecture "$arch" \
      --name "bench-$arch" --models-dir "$OUT/models" --epochs "$EPOCHS" --validation-fraction 0 --no-bn-recompute \
      --seed "$round" 2>/dev/null > "$OUT/ours-$arch-$round.json"
    "$PY" bench/pytorch_vae.py --data "$DATA/mnist" --architecture "$arch" --epochs "$EPOCHS" --threads "$THREADS" \
      --seed "$round" 2>/dev/null > "$OUT/torch-$arch-$round.json"
  done
  python3 - "$OUT" "$arch" "$EPOCHS" <<'PYEOF'
import glob, json, sys
out, arch, epochs = sys.argv[1:]
def runs(who):
    return [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{who}-{arch}-*.json"))]
ours = [r["metrics"] for r in runs("ours")]
theirs = runs("torch")
mean = lambda xs: sum(xs) / len(xs)
o_s = mean([r["mean_epoch_seconds"] for r in ours]); t_s = mean([r["mean_epoch_seconds"] for r in theirs])
o_e = mean([r["test_negative_elbo"] for r in ours]); t_e = mean([r["test_negative_elbo"] for r in theirs])
print(f"| {arch} BN-VAE | {epochs} | {o_s:.3f} | {t_s:.3f} | {o_s / t_s:.2f}× | {o_e:.2f} | {t_e:.2f} |")
PYEOF
done
