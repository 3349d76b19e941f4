"""Reference: the same BN MLP-VAE, conv BN-VAE and semi-supervised (M2) VAE in plain PyTorch
(eager), for side-by-side timing and time-to-quality.

Same layers, initialisation family, Adam, cosine schedule (per step, to 1% of the base rate),
batch size, objective and data handling as `vae-serve train --no-bn-recompute`: a seeded
validation split held out of the training images and scored after every epoch (population BN
statistics), labelled examples (balanced, 10 per class per 100) appended to every batch of the
semi-supervised model. Epoch seconds count training steps only, as vae-serve's do. Prints one
JSON object.
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


class SemiSupervisedVae(nn.Module):
    """M2: classifier q(y|x); the decoder sees [z, one-hot y]."""

    def __init__(self, hidden, latent, classes=10):
        super().__init__()
        self.classes = classes
        self.classifier = nn.Sequential(bn_mlp([784] + hidden), nn.Linear(hidden[-1], classes))
        self.encoder = bn_mlp([784] + hidden)
        self.mean = nn.Linear(hidden[-1], latent)
        self.log_var = nn.Linear(hidden[-1], latent)
        self.decoder = bn_mlp([latent + classes] + hidden[::-1])
        self.output = nn.Linear(hidden[0], 784)


def bernoulli_nll(logits, x):
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def kl_standard_normal(mean, log_var):
    return 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum(1)


def negative_elbo(model, x):
    logits, mean, log_var = model(x)
    return (bernoulli_nll(logits, x) + kl_standard_normal(mean, log_var)).mean()


def m2_objective(model, x, labels, alpha=1.0):
    """(loss, −ELBO) as vae-serve computes them; labels < 0 mark unlabelled examples."""
    k, batch = model.classes, x.shape[0]
    log_probs = model.classifier(x.flatten(1)).log_softmax(1)
    h = model.encoder(x.flatten(1))
    mean, log_var = model.mean(h), model.log_var(h)
    z = mean + (0.5 * log_var).exp() * torch.randn_like(mean)
    kl = kl_standard_normal(mean, log_var)
    labelled = labels >= 0
    safe = labels.clamp_min(0)
    y_all = F.one_hot(torch.arange(k, device=x.device).repeat_interleave(batch), k).float()
    logits = model.output(model.decoder(torch.cat([z.repeat(k, 1), y_all], 1))).view(k * batch, *x.shape[1:])
    nll_all = bernoulli_nll(logits, x.repeat(k, 1, 1, 1)).view(k, batch).t()
    probs = log_probs.exp()
    expected = (probs * nll_all).sum(1)
    observed = nll_all.gather(1, safe.unsqueeze(1)).squeeze(1)
    neg_entropy = (probs * log_probs).sum(1)
    reconstruction = torch.where(labelled, observed, expected + neg_entropy).mean()
    n_labelled = labelled.float().sum().clamp_min(1)
    cross_entropy = (-log_probs.gather(1, safe.unsqueeze(1)).squeeze(1) * labelled.float()).sum() / n_labelled
    neg_elbo = reconstruction + kl.mean() + math.log(k)
    loss = reconstruction + kl.mean() + alpha * cross_entropy * (n_labelled / batch)
    return loss, neg_elbo, log_probs


def balanced_subset(labels, per_class, generator):
    picks = []
    for c in range(int(labels.max()) + 1):
        members = (labels == c).nonzero().squeeze(1)
        picks.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(picks)


def evaluate(model, x, y, semi_supervised):
    """Mean −ELBO over x (population BN statistics) and, for M2, classification accuracy."""
    model.eval()
    total, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, x.shape[0], 500):
            xb, yb = x[i : i + 500], y[i : i + 500]
            if semi_supervised:
                _, neg_elbo, log_probs = m2_objective(model, xb, torch.full_like(yb, -1))
                correct += int((log_probs.argmax(1) == yb).sum())
            else:
                neg_elbo = negative_elbo(model, xb)
            total += neg_elbo.item() * xb.shape[0]
    model.train()
    return total / x.shape[0], (correct / x.shape[0] if semi_supervised else None)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--architecture", choices=["mlp", "conv", "semi-supervised"], default="mlp")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", default="512,256")
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--conv-channels", default="16,16")
    p.add_argument("--labeled", type=int, default=100, help="semi-supervised: labelled examples, balanced")
    p.add_argument("--classifier-weight", type=float, default=10.0, help="semi-supervised: α, as vae-serve train's default")
    p.add_argument("--validation-fraction", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda: the data then lives on the device")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    generator = torch.Generator().manual_seed(a.seed)
    all_x, all_y = load(a.data, "train")
    test_x, test_y = load(a.data, "t10k")
    order = torch.randperm(all_x.shape[0], generator=generator)
    held_out = int(all_x.shape[0] * a.validation_fraction)
    val_x, val_y = all_x[order[:held_out]], all_y[order[:held_out]]
    train_x, train_y = all_x[order[held_out:]], all_y[order[held_out:]]
    hidden = [int(h) for h in a.hidden.split(",")]
    semi_supervised = a.architecture == "semi-supervised"
    if a.architecture == "mlp":
        model = MlpVae(hidden, a.latent_dim)
    elif a.architecture == "conv":
        model = ConvVae(hidden, a.latent_dim, [int(c) for c in a.conv_channels.split(",")])
    else:
        model = SemiSupervisedVae(hidden, a.latent_dim)
        labelled = balanced_subset(train_y, a.labeled // 10, generator)
        lab_x, lab_y = train_x[labelled].to(a.device), train_y[labelled].to(a.device)
    model.to(a.device)
    train_x, val_x, val_y, test_x, test_y = (t.to(a.device) for t in (train_x, val_x, val_y, test_x, test_y))
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    steps = train_x.shape[0] // a.batch_size
    total = steps * a.epochs
    history = []
    for epoch in range(a.epochs):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(train_x.shape[0], device=a.device)
        for step in range(steps):
            t = (epoch * steps + step) / total
            for g in opt.param_groups:
                g["lr"] = a.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))
            x = train_x[order[step * a.batch_size : (step + 1) * a.batch_size]]
            if semi_supervised:
                pick = torch.randint(lab_x.shape[0], (a.batch_size,), device=a.device)
                labels = torch.cat([torch.full((a.batch_size,), -1, dtype=torch.long, device=a.device), lab_y[pick]])
                loss, _, _ = m2_objective(model, torch.cat([x, lab_x[pick]]), labels, a.classifier_weight)
            else:
                loss = negative_elbo(model, x)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sync()
        seconds = time.perf_counter() - start
        metrics = {"epoch": epoch + 1, "seconds": seconds, "validation_negative_elbo": None, "validation_accuracy": None}
        if held_out:
            metrics["validation_negative_elbo"], metrics["validation_accuracy"] = evaluate(model, val_x, val_y, semi_supervised)
        history.append(metrics)
    test_elbo, test_accuracy = evaluate(model, test_x, test_y, semi_supervised)
    mean_seconds = sum(m["seconds"] for m in history) / len(history)
    print(json.dumps({
        "implementation": "pytorch-eager",
        "torch": torch.__version__,
        "architecture": a.architecture,
        "device": a.device,
        "epochs": a.epochs,
        "mean_epoch_seconds": mean_seconds,
        "images_per_second": steps * a.batch_size / mean_seconds,
        "test_negative_elbo": test_elbo,
        "test_accuracy": test_accuracy,
        "history": history,
    }))


if __name__ == "__main__":
    main()
