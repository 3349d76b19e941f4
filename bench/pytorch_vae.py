"""Reference: the same BN MLP-VAE / conv BN-VAE in plain PyTorch (eager), for side-by-side timing.

Same layers, initialisation family, Adam, cosine schedule (per step, to 1% of the base rate),
batch size and data as `vae-serve train --validation-fraction 0`. Prints one JSON object.
"""
import argparse
import gzip
import json
import math
import os
import struct
import time

import torch
from torch import nn
import torch.nn.functional as F


def read_idx(path):
    with (gzip.open(path) if path.endswith(".gz") else open(path, "rb")) as f:
        data = f.read()
    rank = data[3]
    dims = struct.unpack(">" + "I" * rank, data[4 : 4 + 4 * rank])
    return torch.frombuffer(bytearray(data[4 + 4 * rank :]), dtype=torch.uint8).view(*dims)


def load(dir_, prefix):
    images = read_idx(os.path.join(dir_, f"{prefix}-images-idx3-ubyte.gz")).float().div(255).unsqueeze(1)
    labels = read_idx(os.path.join(dir_, f"{prefix}-labels-idx1-ubyte.gz")).long()
    return images, labels


def bn_mlp(sizes):
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers)


class MlpVae(nn.Module):
    def __init__(self, hidden, latent):
        super().__init__()
        self.encoder = bn_mlp([784] + hidden)
        self.mean = nn.Linear(hidden[-1], latent)
        self.log_var = nn.Linear(hidden[-1], latent)
        self.decoder = bn_mlp([latent] + hidden[::-1])
        self.output = nn.Linear(hidden[0], 784)

    def forward(self, x):
        h = self.encoder(x.flatten(1))
        mean, log_var = self.mean(h), self.log_var(h)
        z = mean + (0.5 * log_var).exp() * torch.randn_like(mean)
        return self.output(self.decoder(z)).view_as(x), mean, log_var


class ConvVae(nn.Module):
    def __init__(self, hidden, latent, channels):
        super().__init__()
        c1, c2 = channels
        self.down = nn.Sequential(
            nn.Conv2d(1, c1, 4, 2, 1), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.Conv2d(c1, c2, 4, 2, 1), nn.BatchNorm2d(c2), nn.ReLU(),
        )
        flat = c2 * 7 * 7
        self.encoder = bn_mlp([flat] + hidden)
        self.mean = nn.Linear(hidden[-1], latent)
        self.log_var = nn.Linear(hidden[-1], latent)
        self.decoder = bn_mlp([latent] + hidden[::-1] + [flat])
        self.c2 = c2
        self.up = nn.Sequential(
            nn.ConvTranspose2d(c2, c1, 4, 2, 1), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.ConvTranspose2d(c1, 1, 4, 2, 1),
        )

    def forward(self, x):
        h = self.encoder(self.down(x).flatten(1))
        mean, log_var = self.mean(h), self.log_var(h)
        z = mean + (0.5 * log_var).exp() * torch.randn_like(mean)
        return self.up(self.decoder(z).view(-1, self.c2, 7, 7)), mean, log_var


def negative_elbo(model, x):
    logits, mean, log_var = model(x)
    nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    kl = 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum(1)
    return (nll + kl).mean()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--architecture", choices=["mlp", "conv"], default="mlp")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", default="512,256")
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--conv-channels", default="16,32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    train_x, _ = load(a.data, "train")
    test_x, _ = load(a.data, "t10k")
    hidden = [int(h) for h in a.hidden.split(",")]
    model = MlpVae(hidden, a.latent_dim) if a.architecture == "mlp" else ConvVae(hidden, a.latent_dim, [int(c) for c in a.conv_channels.split(",")])
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    steps = train_x.shape[0] // a.batch_size
    total = steps * a.epochs
    epoch_seconds = []
    for epoch in range(a.epochs):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(train_x.shape[0])
        for step in range(steps):
            t = (epoch * steps + step) / total
            for g in opt.param_groups:
                g["lr"] = a.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))
            x = train_x[order[step * a.batch_size : (step + 1) * a.batch_size]]
            loss = negative_elbo(model, x)
            opt.zero_grad()
            loss.backward()
            opt.step()
        epoch_seconds.append(time.perf_counter() - start)
    model.eval()
    with torch.no_grad():
        test = sum(negative_elbo(model, test_x[i : i + 500]).item() * 500 for i in range(0, test_x.shape[0], 500)) / test_x.shape[0]
    print(json.dumps({
        "implementation": "pytorch-eager",
        "torch": torch.__version__,
        "architecture": a.architecture,
        "epochs": a.epochs,
        "mean_epoch_seconds": sum(epoch_seconds) / len(epoch_seconds),
        "images_per_second": steps * a.batch_size / (sum(epoch_seconds) / len(epoch_seconds)),
        "test_negative_elbo": test,
    }))


if __name__ == "__main__":
    main()
