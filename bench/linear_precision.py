"""Time of the shipped classifier's three layers in PyTorch alone, one thread, per batch size, in
float32 and in the int8 form that VAE_INFERENCE_INT8 serves (batch norm folded into the weights,
`quantized::linear_dynamic` with one scale per output unit), with bf16 beside them. Why int8 and
not a 16-bit type: at a few rows a product is bound by reading the weights.

    .venv-bench/bin/python bench/linear_precision.py [MODEL_DIR]     (default models/mnist-ssvae/v1;
    .venv-bench is the peers' virtualenv that bench/classify_peers.sh makes, with safetensors)
"""
import os
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
from peer_model import EPS, build  # noqa: E402

torch.set_num_threads(1)
torch.set_grad_enabled(False)
model_dir = sys.argv[1] if len(sys.argv) > 1 else "models/mnist-ssvae/v1"
_, _, classify, _ = build(model_dir)
w = load_file(os.path.join(model_dir, "model.safetensors"))


def folded(i):
    """Layer i of the classifier with its batch norm folded in, as vae-serve folds it."""
    scale = w[f"classifier.bn{i}.weight"] / (w[f"classifier.bn{i}.running_var"] + EPS).sqrt()
    weight = w[f"classifier.fc{i}.weight"] * scale[:, None]
    bias = (w[f"classifier.fc{i}.bias"] - w[f"classifier.bn{i}.running_mean"]) * scale + w[f"classifier.bn{i}.bias"]
    return weight, bias


layers = [folded(0), folded(1), (w["classifier.logits.weight"], w["classifier.logits.bias"])]


def int8_layer(weight, bias):
    scales = (weight.abs().amax(1) / 127).clamp_min(1e-12).double()
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    return torch.ops.quantized.linear_prepack(torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8), bias)


packed = [int8_layer(*layer) for layer in layers]
bf16 = [(weight.bfloat16(), bias.bfloat16()) for weight, bias in layers]


def int8(x):
    x = torch.ops.quantized.linear_relu_dynamic(x.flatten(1), packed[0])
    x = torch.ops.quantized.linear_relu_dynamic(x, packed[1])
    return torch.ops.quantized.linear_dynamic(x, packed[2]).softmax(1)


def bfloat16(x):
    x = x.flatten(1).bfloat16()
    for i, (weight, bias) in enumerate(bf16):
        x = F.linear(x, weight, bias)
        x = x.relu() if i < 2 else x
    return x.float().softmax(1)


print("| rows | float32 µs | int8 µs | bf16 µs | int8 max probability error |")
print("|---|---|---|---|---|")
for rows in (1, 4, 12, 32, 64):
    x = torch.rand(rows, 1, 28, 28)
    times = []
    for fn in (classify, int8, bfloat16):
        for _ in range(200):
            fn(x)
        start = time.perf_counter()
        for _ in range(2000):
            fn(x)
        times.append((time.perf_counter() - start) / 2000 * 1e6)
    error = (int8(x) - classify(x)).abs().max().item()
    print(f"| {rows} | {times[0]:.0f} | {times[1]:.0f} | {times[2]:.0f} | {error:.4f} |")
