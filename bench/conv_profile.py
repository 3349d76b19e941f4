"""Where a conv-VAE training step spends its time, by ATen operator: the PyTorch eager version of
the conv model with 16,32 channels (the default when this was written), hidden 512,256, latent 32,
batch 100, Adam, 2 threads; 30 profiled steps after 20 warm-up steps. Random inputs: only the time matters here.

    .venv/bin/python bench/conv_profile.py
"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, "bench")
from pytorch_vae import ConvVae, negative_elbo  # noqa: E402

torch.set_num_threads(2)
torch.manual_seed(0)
model = ConvVae([512, 256], 32, [16, 32])
x = torch.rand(100, 1, 28, 28)
opt = torch.optim.Adam(model.parameters())


def step():
    loss = negative_elbo(model, x)
    opt.zero_grad()
    loss.backward()
    opt.step()


for _ in range(20):
    step()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(30):
        step()
print(f"parameters: {sum(p.numel() for p in model.parameters())}")
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
