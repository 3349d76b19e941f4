#!/usr/bin/env bash
# Training speed and time-to-quality, vae-serve against the same models in PyTorch eager, run in
# the same invocation and alternating (ours, theirs, ours, theirs, …) so both see the same machine.
#
#   bench/train_compare.sh [ROUNDS] [SPECS]
#
# SPECS is a list of ARCHITECTURE:EPOCHS:TARGET, TARGET being the validation −ELBO (nats) whose
# first crossing times quality: the training seconds (evaluation excluded, as in s/epoch) of the
# epochs up to and including the first one at or under TARGET. Both sides hold out a seeded 10%
# of the training images for validation. Needs `make build` first. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
SPECS=${2:-"mlp:20:115 conv:20:115 semi-supervised:8:135"}
DATA=${VAE_BENCH_DATA:-../shared/data}
THREADS=${VAE_THREADS:-$(nproc)}
BIN=./target/release/vae-serve
PY=./.venv/bin/python
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

echo "| model | epochs | vae-serve s/epoch | PyTorch s/epoch | ratio (ours/PyTorch) | target val −ELBO | vae-serve s to target | PyTorch s to target | vae-serve test −ELBO | PyTorch test −ELBO | vae-serve / PyTorch test accuracy |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for spec in $SPECS; do
  IFS=: read -r arch epochs target <<< "$spec"
  for round in $(seq "$ROUNDS"); do
    "$BIN" train --device cpu --threads "$THREADS" --data-dir "$DATA" --dataset mnist --architecture "$arch" \
      --name "bench-$arch" --models-dir "$OUT/models" --epochs "$epochs" --validation-fraction 0.1 --no-bn-recompute \
      --seed "$round" 2>/dev/null > "$OUT/ours-$arch-$round.json"
    "$PY" bench/pytorch_vae.py --data "$DATA/mnist" --architecture "$arch" --epochs "$epochs" --threads "$THREADS" \
      --validation-fraction 0.1 --seed "$round" 2>/dev/null > "$OUT/torch-$arch-$round.json"
  done
  python3 - "$OUT" "$arch" "$epochs" "$target" <<'PYEOF'
import glob, json, sys
out, arch, epochs, target = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
def runs(who):
    return [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{who}-{arch}-*.json"))]
ours, theirs = runs("ours"), runs("torch")
mean = lambda xs: sum(xs) / len(xs)
def time_to_target(history):
    elapsed = 0.0
    for m in history:
        elapsed += m["seconds"]
        if m["validation_negative_elbo"] is not None and m["validation_negative_elbo"] <= target:
            return elapsed
    return None
def shown_time(times):
    reached = [t for t in times if t is not None]
    return f"{mean(reached):.1f}" + ("" if len(reached) == len(times) else f" ({len(reached)}/{len(times)} runs reached it)") if reached else "not reached"
o_s = mean([r["metrics"]["mean_epoch_seconds"] for r in ours]); t_s = mean([r["mean_epoch_seconds"] for r in theirs])
o_e = mean([r["metrics"]["test_negative_elbo"] for r in ours]); t_e = mean([r["test_negative_elbo"] for r in theirs])
o_q = shown_time([time_to_target(r["history"]) for r in ours]); t_q = shown_time([time_to_target(r["history"]) for r in theirs])
accuracy = "–"
if arch == "semi-supervised":
    accuracy = f"{100 * mean([r['metrics']['test_accuracy'] for r in ours]):.1f}% / {100 * mean([r['test_accuracy'] for r in theirs]):.1f}%"
print(f"| {arch} | {epochs} | {o_s:.3f} | {t_s:.3f} | {o_s / t_s:.2f}× | {target:g} | {o_q} | {t_q} | {o_e:.2f} | {t_e:.2f} | {accuracy} |")
PYEOF
done
