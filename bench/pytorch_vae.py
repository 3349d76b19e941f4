"""Reference: the same BN MLP-VAE, conv BN-VAE and semi-supervised (M2) VAE in PyTorch, eager or
compiled (`--compile`: torch.compile, inductor), for side-by-side timing and time-to-quality.

With `--manifest` (the manifest.json of a model `vae-serve train --no-bn-recompute` made) it
trains what that run trained: its layers, optimizer (Adam; SGD with Nesterov momentum; the
"rescaling" RMSprop with Nesterov momentum) and learning rate, batch size, labelled examples,
classifier weight, label in the encoder and the classifier's shifted view. Always the cosine
schedule (per step, to 1% of the base rate), the same objective and data handling: a seeded
validation split held out of the training images and scored after every epoch (population BN
statistics), labelled examples (balanced per class) appended to every batch of the
semi-supervised model. Epoch seconds count training steps only, as vae-serve's do; compiled, the
first epoch also holds the compilation, so `mean_epoch_seconds` is then the mean of the others
and `first_epoch_seconds` is reported beside it. Prints one JSON object.
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
    """M2: classifier q(y|x); the decoder sees [z, one-hot y], and so does the encoder when
    `label_in_encoder` (q(z|x, y))."""

    def __init__(self, hidden, latent, classes=10, label_in_encoder=False):
        super().__init__()
        self.classes = classes
        self.label_in_encoder = label_in_encoder
        self.classifier = nn.Sequential(bn_mlp([784] + hidden), nn.Linear(hidden[-1], classes))
        self.encoder = bn_mlp([784 + (classes if label_in_encoder else 0)] + hidden)
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


def m2_objective(model, x, labels, alpha=1.0, classifier_view=None):
    """(loss, −ELBO, log q(y|x)) as vae-serve computes them; labels < 0 mark unlabelled examples.
    The classifier reads `classifier_view` when given (the shifted batch)."""
    k, batch = model.classes, x.shape[0]
    log_probs = model.classifier((x if classifier_view is None else classifier_view).flatten(1)).log_softmax(1)
    labelled = labels >= 0
    safe = labels.clamp_min(0)
    y_all = F.one_hot(torch.arange(k, device=x.device).repeat_interleave(batch), k).float()
    x_all = x.repeat(k, 1, 1, 1)
    if model.label_in_encoder:  # encoded once per label
        h = model.encoder(torch.cat([x_all.flatten(1), y_all], 1))
    else:  # encoded once
        h = model.encoder(x.flatten(1))
    mean, log_var = model.mean(h), model.log_var(h)
    z = mean + (0.5 * log_var).exp() * torch.randn_like(mean)
    kl = kl_standard_normal(mean, log_var)
    if model.label_in_encoder:
        z_all, kl_all = z, kl.view(k, batch).t()
    else:
        z_all, kl_all = z.repeat(k, 1), kl.unsqueeze(1).expand(batch, k)
    logits = model.output(model.decoder(torch.cat([z_all, y_all], 1))).view(k * batch, *x.shape[1:])
    nll_all = bernoulli_nll(logits, x_all).view(k, batch).t()
    probs = log_probs.exp()

    def observed_or_expected(per_label):
        return torch.where(labelled, per_label.gather(1, safe.unsqueeze(1)).squeeze(1), (probs * per_label).sum(1))

    neg_entropy = torch.where(labelled, torch.zeros_like(probs[:, 0]), (probs * log_probs).sum(1))
    reconstruction = (observed_or_expected(nll_all) + neg_entropy).mean()
    kl_mean = observed_or_expected(kl_all).mean()
    n_labelled = labelled.float().sum().clamp_min(1)
    cross_entropy = (-log_probs.gather(1, safe.unsqueeze(1)).squeeze(1) * labelled.float()).sum() / n_labelled
    neg_elbo = reconstruction + kl_mean + math.log(k)
    loss = reconstruction + kl_mean + alpha * cross_entropy * (n_labelled / batch)
    return loss, neg_elbo, log_probs


def random_shift(x, max_shift):
    """Each image moved by its own whole-pixel offset in [-max_shift, max_shift] per axis, zeros
    filling in: one affine grid and one nearest-neighbour sample, as vae-serve's augmentation."""
    n, _, height, width = x.shape
    offsets = torch.randint(-max_shift, max_shift + 1, (n, 2), device=x.device).float()
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2], theta[:, 1, 2] = offsets[:, 0] * 2 / width, offsets[:, 1] * 2 / height
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


class RescalingRmsprop(torch.optim.Optimizer):
    """The 2015 project's "rescaling" RMSprop with Nesterov momentum, as vae-serve's: r ← ρr +
    (1−ρ)g², ĝ = g/(√r + ε), v ← μv + ĝ, θ ← θ − η(ĝ + μv)."""

    def __init__(self, params, lr, momentum, rms_decay, eps):
        super().__init__(params, dict(lr=lr, momentum=momentum, rms_decay=rms_decay, eps=eps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if not self.state[p]:
                    self.state[p]["rms"], self.state[p]["velocity"] = torch.zeros_like(p), torch.zeros_like(p)
            grads = [p.grad for p in params]
            rms = [self.state[p]["rms"] for p in params]
            velocity = [self.state[p]["velocity"] for p in params]
            torch._foreach_lerp_(rms, torch._foreach_mul(grads, grads), 1 - group["rms_decay"])
            scaled = torch._foreach_div(grads, torch._foreach_add(torch._foreach_sqrt(rms), group["eps"]))
            torch._foreach_mul_(velocity, group["momentum"])
            torch._foreach_add_(velocity, scaled)
            torch._foreach_add_(params, scaled, alpha=-group["lr"])
            torch._foreach_add_(params, velocity, alpha=-group["lr"] * group["momentum"])


def optimizer_for(parameters, config):
    """The optimizer a vae-serve manifest's `training.optimizer` names."""
    kind, lr = config["kind"], config["learning_rate"]
    if kind == "adam":
        return torch.optim.Adam(parameters, lr=lr, betas=(config["beta1"], config["beta2"]), eps=config["epsilon"])
    if kind == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=config["momentum"], nesterov=True)
    return RescalingRmsprop(parameters, lr, config["momentum"], config["rms_decay"], config["epsilon"])


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


# What this reference does not implement: a manifest must leave these at vae-serve's defaults.
UNSUPPORTED = {("kl_warmup_epochs",): 0.0, ("schedule", "kind"): "cosine", ("schedule", "min_factor"): 0.01,
               ("model", "likelihood", "kind"): "bernoulli", ("model", "unlabeled_objective"): "marginalize",
               ("model", "label_consistency_weight"): 0.0, ("optimizer", "weight_decay"): 0.0,
               ("optimizer", "grad_clip"): None, ("optimizer", "ema_decay"): None}


def recipe(a):
    """The training options to reproduce: a vae-serve manifest's, or the flags' (Adam)."""
    if a.manifest is None:
        return {"batch_size": a.batch_size, "labeled": a.labeled, "labeled_batch_size": a.batch_size, "augment_shift": 0,
                "model": {"architecture": a.architecture, "hidden": [int(h) for h in a.hidden.split(",")],
                          "latent_dim": a.latent_dim, "conv_channels": [int(c) for c in a.conv_channels.split(",")],
                          "classifier_weight": a.classifier_weight, "label_in_encoder": False},
                "optimizer": {"kind": "adam", "learning_rate": a.lr, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8}}
    training = json.load(open(a.manifest))["training"]
    for path, expected in UNSUPPORTED.items():
        value = training
        for key in path:
            value = value[key]
        if value != expected:
            raise SystemExit(f"{a.manifest}: {'.'.join(path)} = {value!r}; this reference only trains {expected!r}")
    return training


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--manifest", help="train what this vae-serve manifest.json's `training` options trained")
    p.add_argument("--architecture", choices=["mlp", "conv", "semi-supervised"], default="mlp")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", default="512,256")
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--conv-channels", default="16,16")
    p.add_argument("--labeled", type=int, default=100, help="semi-supervised: labelled examples, balanced")
    p.add_argument("--classifier-weight", type=float, default=10.0, help="semi-supervised: α")
    p.add_argument("--validation-fraction", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda: the data then lives on the device")
    p.add_argument("--compile", nargs="?", const="default", help="torch.compile the training step's forward and loss (mode)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    options = recipe(a)
    config = options["model"]
    architecture, hidden, batch_size = config["architecture"], config["hidden"], options["batch_size"]
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    generator = torch.Generator().manual_seed(a.seed)
    all_x, all_y = load(a.data, "train")
    test_x, test_y = load(a.data, "t10k")
    order = torch.randperm(all_x.shape[0], generator=generator)
    held_out = int(all_x.shape[0] * a.validation_fraction)
    val_x, val_y = all_x[order[:held_out]], all_y[order[:held_out]]
    train_x, train_y = all_x[order[held_out:]], all_y[order[held_out:]]
    semi_supervised = architecture == "semi-supervised"
    if architecture == "mlp":
        model = MlpVae(hidden, config["latent_dim"])
    elif architecture == "conv":
        model = ConvVae(hidden, config["latent_dim"], config["conv_channels"])
    else:
        model = SemiSupervisedVae(hidden, config["latent_dim"], label_in_encoder=config["label_in_encoder"])
        labelled = balanced_subset(train_y, options["labeled"] // 10, generator)
        lab_x, lab_y = train_x[labelled].to(a.device), train_y[labelled].to(a.device)
    model.to(a.device)
    train_x, val_x, val_y, test_x, test_y = (t.to(a.device) for t in (train_x, val_x, val_y, test_x, test_y))
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    lr = options["optimizer"]["learning_rate"]
    opt = optimizer_for(model.parameters(), options["optimizer"])

    def training_loss(x, labels):
        if not semi_supervised:
            return negative_elbo(model, x)
        view = random_shift(x, options["augment_shift"]) if options["augment_shift"] else None
        return m2_objective(model, x, labels, config["classifier_weight"], view)[0]

    # Evaluation stays eager: its batch size and batch-norm mode differ, and it is not timed.
    step_loss = torch.compile(training_loss, mode=None if a.compile == "default" else a.compile) if a.compile else training_loss
    steps = train_x.shape[0] // batch_size
    total = steps * a.epochs
    history = []
    for epoch in range(a.epochs):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(train_x.shape[0], device=a.device)
        for step in range(steps):
            t = (epoch * steps + step) / total
            for g in opt.param_groups:
                g["lr"] = lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))
            x = train_x[order[step * batch_size : (step + 1) * batch_size]]
            labels = None
            if semi_supervised:
                pick = torch.randint(lab_x.shape[0], (options["labeled_batch_size"],), device=a.device)
                labels = torch.cat([torch.full((batch_size,), -1, dtype=torch.long, device=a.device), lab_y[pick]])
                x = torch.cat([x, lab_x[pick]])
            loss = step_loss(x, labels)
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
    timed = history[1:] if a.compile and len(history) > 1 else history
    mean_seconds = sum(m["seconds"] for m in timed) / len(timed)
    print(json.dumps({
        "implementation": f"pytorch-compile ({a.compile})" if a.compile else "pytorch-eager",
        "torch": torch.__version__,
        "architecture": architecture,
        "device": a.device,
        "epochs": a.epochs,
        "options": options,
        "mean_epoch_seconds": mean_seconds,
        "first_epoch_seconds": history[0]["seconds"],
        "images_per_second": steps * batch_size / mean_seconds,
        "test_negative_elbo": test_elbo,
        "test_accuracy": test_accuracy,
        "history": history,
    }))


if __name__ == "__main__":
    main()
