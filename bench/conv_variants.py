"""Seconds per 10k-image epoch of conv-VAE variants in PyTorch eager (2 threads, batch 100),
to see what the conv model's cost is made of. Random inputs: only the time matters here.

    .venv/bin/python bench/conv_variants.py
"""
import sys
import time

import torch
from torch import nn

sys.path.insert(0, "bench")
from pytorch_vae import ConvVae, MlpVae, negative_elbo  # noqa: E402

torch.set_num_threads(2)


def seconds_per_epoch(model, channels_last=False):
    x = torch.rand(100, 1, 28, 28)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters())
    for step in range(120):
        if step == 20:
            start = time.perf_counter()
        loss = negative_elbo(model, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / 100 * 100


def with_decoder_upsampling(up):
    model = ConvVae([512, 256], 32, [16, 32])
    model.up = up
    return model


torch.manual_seed(0)
variants = {
    "MLP 512,256 (reference)": lambda: MlpVae([512, 256], 32),
    "conv 16,32, hidden 512,256 (the default then)": lambda: ConvVae([512, 256], 32, [16, 32]),
    "16,32, channels-last tensors": None,
    "16,32, sub-pixel upsampling (conv + pixel shuffle)": lambda: with_decoder_upsampling(nn.Sequential(
        nn.Conv2d(32, 16 * 4, 3, 1, 1), nn.PixelShuffle(2), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 3, 1, 1), nn.PixelShuffle(2))),
    "16,32, resize-convolution upsampling": lambda: with_decoder_upsampling(nn.Sequential(
        nn.Upsample(scale_factor=2), nn.Conv2d(32, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Upsample(scale_factor=2), nn.Conv2d(16, 1, 3, 1, 1))),
    "conv 16,32, hidden 512": lambda: ConvVae([512], 32, [16, 32]),
    "conv 16,32, hidden 256": lambda: ConvVae([256], 32, [16, 32]),
}
print("| variant | s/epoch |")
print("|---|---|")
for name, build in variants.items():
    seconds = seconds_per_epoch(ConvVae([512, 256], 32, [16, 32]), channels_last=True) if build is None else seconds_per_epoch(build())
    print(f"| {name} | {seconds:.2f} |")
