"""The shipped semi-supervised model's classifier and decoder rebuilt in PyTorch from its own
model.safetensors, for the peer servers the benchmarks compare vae-serve with (the same weights,
the same arithmetic: linear → inference-mode batch norm → ReLU per hidden layer)."""
import base64
import functools
import io
import json
import math
import os

import torch.nn.functional as F
import torch
from PIL import Image
from safetensors.torch import load_file

EPS = 1e-5


@functools.lru_cache
def _load(model_dir):
    """(config, weights) of a model folder, read once however many parts are built from it."""
    manifest = json.load(open(os.path.join(model_dir, "manifest.json")))
    if manifest["config"]["architecture"] != "semi-supervised":
        raise SystemExit(f"{model_dir}: the peers rebuild the MLP semi-supervised model only, not "
                         f"{manifest['config']['architecture']!r} (bench/lib.sh's SERVED_MODEL)")
    return manifest["config"], load_file(os.path.join(model_dir, "model.safetensors"))


def bn_mlp(w, prefix, x, layers):
    for i in range(layers):
        x = F.linear(x, w[f"{prefix}.fc{i}.weight"], w[f"{prefix}.fc{i}.bias"])
        x = F.batch_norm(x, w[f"{prefix}.bn{i}.running_mean"], w[f"{prefix}.bn{i}.running_var"],
                         w[f"{prefix}.bn{i}.weight"], w[f"{prefix}.bn{i}.bias"], False, 0.0, EPS)
        x = F.relu(x)
    return x


def build_encoder(model_dir):
    """encode(x, probabilities) -> (mean, log_var): q(z|x), reading the class probabilities
    after the pixels when the model's encoder reads the label."""
    config, w = _load(model_dir)
    layers = len(config["hidden"])

    def encode(x, probabilities):
        h = x.flatten(1)
        if config.get("label_in_encoder"):
            h = torch.cat([h, probabilities], 1)
        h = bn_mlp(w, "encoder", h, layers)
        return (F.linear(h, w["encoder.mean.weight"], w["encoder.mean.bias"]),
                F.linear(h, w["encoder.log_var.weight"], w["encoder.log_var.bias"]))

    return encode


def build(model_dir):
    """(config, classes, classify(x) -> probabilities, decode(z, y) -> intensities)."""
    config, w = _load(model_dir)
    layers = len(config["hidden"])
    k = len(config["label_names"])

    def classify(x):
        h = bn_mlp(w, "classifier", x.flatten(1), layers)
        return F.linear(h, w["classifier.logits.weight"], w["classifier.logits.bias"]).softmax(1)

    def decode(z, y):
        h = bn_mlp(w, "decoder", torch.cat([z, y], 1), layers)
        return torch.sigmoid(F.linear(h, w["decoder.output.weight"], w["decoder.output.bias"]))

    return config, k, classify, decode


def png_pixels(body):
    """One uploaded image as the 784 greyscale bytes the classifier reads (what POST /classify does)."""
    image = Image.open(io.BytesIO(body)).convert("L").resize((28, 28))
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)


def as_images(pixels):
    """Greyscale bytes [N, 784] as the model's input: intensities in [0, 1], [N, 1, 28, 28]."""
    return pixels.float().div(255).view(-1, 1, 28, 28)


def classify_pngs(classify, bodies):
    """Class probabilities, one row per PNG body, from one forward pass over all of them."""
    return classify(as_images(torch.stack([png_pixels(b) for b in bodies]))).tolist()


def answer(names, probs):
    """The JSON answer of vae-serve's POST /classify for one image's class probabilities."""
    best = max(range(len(names)), key=lambda i: probs[i])
    return {"results": [{"label": best, "name": names[best], "probability": probs[best],
                         "probabilities": dict(zip(names, probs))}]}


def png_of(image):
    """A greyscale PNG of one image [H, W] with intensities in [0, 1]."""
    out = io.BytesIO()
    Image.frombytes("L", (image.shape[1], image.shape[0]), bytes(image.mul(255).round().byte().flatten().tolist())).save(out, "PNG")
    return out.getvalue()


def grid_png(images):
    """A PNG of images [n, 28, 28] in [0, 1] on a square-ish grid with 2-pixel gaps, as /sample draws."""
    n = images.shape[0]
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = torch.zeros(rows * 30 + 2, columns * 30 + 2)
    for i in range(n):
        r, c = divmod(i, columns)
        grid[2 + r * 30: 30 + r * 30, 2 + c * 30: 30 + c * 30] = images[i]
    return png_of(grid)


def sample_pngs(decode, latent, classes, asked):
    """What GET /sample?n=N&label=L&seed=S answers, per (N, L, S) asked: N decoded prior draws of
    class L as one PNG. One decoder pass for all of them, as a batch of vae-serve's."""
    z = torch.cat([torch.randn(n, latent, generator=torch.Generator().manual_seed(seed)) for n, _, seed in asked])
    y = torch.cat([F.one_hot(torch.full((n,), label), classes).float() for n, label, _ in asked])
    images = decode(z, y).view(-1, 28, 28)
    pngs, offset = [], 0
    for n, _, _ in asked:
        pngs.append(grid_png(images[offset:offset + n]))
        offset += n
    return pngs


def reconstruct_pngs(classify, encode, decode, bodies):
    """What POST /reconstruct answers per uploaded PNG: the reconstruction from the posterior mean
    (the decoder and, where it reads one, the encoder given the class probabilities) as a base64
    PNG, with −log p(x|z), the KL and the ELBO in nats."""
    x = as_images(torch.stack([png_pixels(b) for b in bodies]))
    probabilities = classify(x)
    mean, log_var = encode(x, probabilities)
    intensities = decode(mean, probabilities)
    flat = x.flatten(1)
    nll = F.binary_cross_entropy(intensities.clamp(1e-7, 1 - 1e-7), flat, reduction="none").sum(1)
    kl = 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum(1)
    return [{"results": [{"reconstruction": base64.b64encode(png_of(intensities[i].view(28, 28))).decode(),
                          "reconstruction_error": nll[i].item(), "kl": kl[i].item(), "elbo": -(nll[i] + kl[i]).item()}]}
            for i in range(x.shape[0])]
