#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU: runs the vae-serve binary built elsewhere against
# that machine's own torch 2.11.0 libraries, confirms CUDA is used, trains each model for a few
# epochs next to the PyTorch reference on the same GPU (eager, and compiled with CUDA graphs),
# runs a short serving benchmark, and prints Markdown tables like BENCHMARKS.md's.
#
#   scripts/gpu-check.sh [BINARY] [DATA_DIR]      (defaults: .device/vae-serve .device/data)
#
# Prepare on the build machine: `make build`, then copy target/release/vae-serve, oha and the
# MNIST folder into the git-ignored .device/ (the device tool carries it). VAE_DEVICE=cpu runs
# the same script on a CPU machine, to check the script itself.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-.device/vae-serve}
DATA=${2:-.device/data}
DEVICE=${VAE_DEVICE:-cuda}
EPOCHS=${VAE_GPU_EPOCHS:-3}
PY=${PYTHON:-python3}
OHA=${OHA:-$(command -v oha || echo .device/oha)}
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT

TORCH_LIB=$("$PY" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"

echo "## GPU check: $(date -u +%F), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), device $DEVICE"
echo
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/- GPU: /' || echo "- nvidia-smi: not available"
"$PY" -W ignore -c 'import torch; print(f"- PyTorch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")'

# CUDA must really be used: the binary logs the device it chose, and fails when CUDA was asked for and is missing.
RUST_LOG=info "$BIN" train --device "$DEVICE" --threads 2 --data-dir "$DATA" --dataset mnist --architecture mlp \
  --name gpu-probe --models-dir "$OUT/models" --epochs 1 --max-train 1000 --validation-fraction 0 > /dev/null 2> "$OUT/probe.log" \
  || { cat "$OUT/probe.log" >&2; echo "vae-serve could not train on $DEVICE" >&2; exit 1; }
echo "- vae-serve: $(grep -m1 -o 'device=[^ ]*' "$OUT/probe.log" | head -1 || echo 'device not logged')"
echo

echo "| model | epochs | vae-serve s/epoch | PyTorch eager s/epoch | PyTorch compiled, CUDA graphs s/epoch | ours / eager | ours / compiled | vae-serve test −ELBO | PyTorch eager test −ELBO |"
echo "|---|---|---|---|---|---|---|---|---|"
for arch in mlp conv semi-supervised; do
  "$BIN" train --device "$DEVICE" --threads 2 --data-dir "$DATA" --dataset mnist --architecture "$arch" --name "gpu-$arch" \
    --models-dir "$OUT/models" --epochs "$EPOCHS" --validation-fraction 0 --no-bn-recompute 2>/dev/null > "$OUT/ours-$arch.json"
  # PyTorch trains what vae-serve just trained (the options in its manifest).
  manifest=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["path"])' "$OUT/ours-$arch.json")/manifest.json
  "$PY" bench/pytorch_vae.py --data "$DATA/mnist" --manifest "$manifest" --epochs "$EPOCHS" --device "$DEVICE" --threads 2 \
    2>/dev/null > "$OUT/eager-$arch.json"
  "$PY" bench/pytorch_vae.py --data "$DATA/mnist" --manifest "$manifest" --epochs "$EPOCHS" --device "$DEVICE" --threads 2 \
    --compile reduce-overhead 2>"$OUT/compiled.log" > "$OUT/compiled-$arch.json" || { tail -5 "$OUT/compiled.log" >&2; echo '{}' > "$OUT/compiled-$arch.json"; }
  "$PY" - "$OUT" "$arch" "$EPOCHS" <<'PYEOF'
import json, sys
out, arch, epochs = sys.argv[1:]
ours, eager, compiled = (json.load(open(f"{out}/{who}-{arch}.json")) for who in ("ours", "eager", "compiled"))
# The first epoch pays for CUDA context, kernel selection, caching-allocator warm-up (and compilation).
steady = lambda history: sum(m["seconds"] for m in history[1:]) / max(1, len(history) - 1)
o, e = steady(ours["history"]), steady(eager["history"])
c = steady(compiled["history"]) if "history" in compiled else None
shown = lambda v, fmt: "failed" if v is None else format(v, fmt)
print(f"| {arch} | {epochs} (first excluded) | {o:.3f} | {e:.3f} | {shown(c, '.3f')} | {o / e:.2f}× | "
      f"{shown(c and o / c, '.2f')}× | {ours['metrics']['test_negative_elbo']:.2f} | {eager['test_negative_elbo']:.2f} |")
PYEOF
done
echo

if [ ! -x "$OHA" ]; then echo "(no oha: serving benchmark skipped)"; exit 0; fi
VAE_MAX_BATCH_SIZE=64 RUST_LOG=warn "$BIN" serve --device "$DEVICE" --addr 127.0.0.1:18380 \
  --models-dir models --database "$OUT/serve.db" --default-model mnist-ssvae 2> "$OUT/serve.log" &
for _ in $(seq 300); do curl -fs http://127.0.0.1:18380/readyz >/dev/null 2>&1 && break; sleep 0.1; done
"$PY" bench/digit_png.py "$DATA/mnist" "$OUT/digit.png"
echo "| endpoint | concurrency | requests/s | p50 ms | p99 ms | 200s / all |"
echo "|---|---|---|---|---|---|"
for c in 1 64; do
  for endpoint in "sample?n=1&label=3" classify; do
    args=(-z 3s -c "$c" --no-tui --output-format json)
    [ "$endpoint" = classify ] && args+=(-m POST -T image/png -D "$OUT/digit.png")
    "$OHA" "${args[@]}" "http://127.0.0.1:18380/$endpoint" > "$OUT/run.json"
    "$PY" - "$OUT/run.json" "$endpoint" "$c" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1])); codes = r.get("statusCodeDistribution", {})
print(f"| {sys.argv[2]} | {sys.argv[3]} | {r['summary']['requestsPerSec']:.0f} | {r['latencyPercentiles']['p50'] * 1000:.2f} | {r['latencyPercentiles']['p99'] * 1000:.2f} | {codes.get('200', 0)}/{sum(codes.values())} |")
PYEOF
  done
done
grep -m1 -o 'device=[^ ]*' "$OUT/serve.log" | head -1 | sed 's/^/- server: /' || true
