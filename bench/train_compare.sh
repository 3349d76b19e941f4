#!/usr/bin/env bash
# Training speed and time-to-quality, vae-serve against the same models in PyTorch, eager and
# compiled (torch.compile, inductor on CPU), run in the same invocation and alternating (ours,
# eager, compiled, ours, …) so all see the same machine. PyTorch trains what vae-serve trained:
# bench/pytorch_vae.py reads the options from the manifest of vae-serve's run (today's recipe per
# architecture: layers, optimizer, learning rate, classifier weight, label in the encoder, the
# classifier's shifted view).
#
#   bench/train_compare.sh [ROUNDS] [SPECS]
#
# SPECS is a list of ARCHITECTURE:EPOCHS:TARGET, TARGET being the validation −ELBO (nats) whose
# first crossing times quality: the training seconds (evaluation excluded, as in s/epoch) of the
# epochs up to and including the first one at or under TARGET. All hold out a seeded 10% of the
# training images for validation. The compiled run's s/epoch leaves out its first epoch, which
# holds the compilation (shown apart); its time to target includes it. Needs `make build` first.
# Prints a Markdown table.
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

echo "| model | epochs | vae-serve s/epoch | PyTorch eager s/epoch | PyTorch compiled s/epoch (compile s) | ours / eager | ours / compiled | target val −ELBO | s to target: ours, eager, compiled | test −ELBO: ours, eager, compiled | test accuracy: ours, eager, compiled |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for spec in $SPECS; do
  IFS=: read -r arch epochs target <<< "$spec"
  for round in $(seq "$ROUNDS"); do
    "$BIN" train --device cpu --threads "$THREADS" --data-dir "$DATA" --dataset mnist --architecture "$arch" \
      --name "bench-$arch-$round" --models-dir "$OUT/models" --epochs "$epochs" --validation-fraction 0.1 --no-bn-recompute \
      --seed "$round" 2>/dev/null > "$OUT/ours-$arch-$round.json"
    manifest=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["path"])' "$OUT/ours-$arch-$round.json")/manifest.json
    for mode in eager compiled; do
      compile=(); [ "$mode" = compiled ] && compile=(--compile)
      "$PY" bench/pytorch_vae.py --data "$DATA/mnist" --manifest "$manifest" --epochs "$epochs" --threads "$THREADS" \
        --validation-fraction 0.1 --seed "$round" "${compile[@]}" 2>"$OUT/$mode.log" > "$OUT/$mode-$arch-$round.json" \
        || { cat "$OUT/$mode.log" >&2; exit 1; }
    done
  done
  python3 - "$OUT" "$arch" "$epochs" "$target" <<'PYEOF'
import glob, json, sys
out, arch, epochs, target = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
def runs(who):
    return [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{who}-{arch}-*.json"))]
ours, eager, compiled = runs("ours"), runs("eager"), runs("compiled")
mean = lambda xs: sum(xs) / len(xs)
def time_to_target(history):
    elapsed = 0.0
    for m in history:
        elapsed += m["seconds"]
        if m["validation_negative_elbo"] is not None and m["validation_negative_elbo"] <= target:
            return elapsed
    return None
def shown_time(rs):
    times = [time_to_target(r["history"]) for r in rs]
    reached = [t for t in times if t is not None]
    return f"{mean(reached):.1f}" + ("" if len(reached) == len(times) else f" ({len(reached)}/{len(times)} runs)") if reached else "not reached"
o_s = mean([r["metrics"]["mean_epoch_seconds"] for r in ours])
e_s, c_s = (mean([r["mean_epoch_seconds"] for r in rs]) for rs in (eager, compiled))
compile_s = mean([r["first_epoch_seconds"] - r["mean_epoch_seconds"] for r in compiled])
elbo = ", ".join(f"{mean(v):.2f}" for v in ([r["metrics"]["test_negative_elbo"] for r in ours],
                                             [r["test_negative_elbo"] for r in eager], [r["test_negative_elbo"] for r in compiled]))
accuracy = "–"
if arch == "semi-supervised":
    accuracy = ", ".join(f"{100 * mean(v):.1f}%" for v in ([r["metrics"]["test_accuracy"] for r in ours],
                                                           [r["test_accuracy"] for r in eager], [r["test_accuracy"] for r in compiled]))
print(f"| {arch} | {epochs} | {o_s:.3f} | {e_s:.3f} | {c_s:.3f} ({compile_s:.0f}) | {o_s / e_s:.2f}× | {o_s / c_s:.2f}× | {target:g} | "
      f"{shown_time(ours)}, {shown_time(eager)}, {shown_time(compiled)} | {elbo} | {accuracy} |")
PYEOF
done
