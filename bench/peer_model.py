"""The shipped semi-supervised model's classifier and decoder rebuilt in PyTorch from its own
model.safetensors, for the peer servers the benchmarks compare vae-serve with (the same weights,
the same arithmetic: linear → inference-mode batch norm → ReLU per hidden layer)."""
import io
import json
import os

import torch.nn.functional as F
import torch
from PIL import Image
from safetensors.torch import load_file

EPS = 1e-5


def bn_mlp(w, prefix, x, layers):
    for i in range(layers):
        x = F.linear(x, w[f"{prefix}.fc{i}.weight"], w[f"{prefix}.fc{i}.bias"])
        x = F.batch_norm(x, w[f"{prefix}.bn{i}.running_mean"], w[f"{prefix}.bn{i}.running_var"],
                         w[f"{prefix}.bn{i}.weight"], w[f"{prefix}.bn{i}.bias"], False, 0.0, EPS)
        x = F.relu(x)
    return x


def build(model_dir):
    """(config, classes, classify(x) -> probabilities, decode(z, y) -> intensities)."""
    manifest = json.load(open(os.path.join(model_dir, "manifest.json")))
    w = load_file(os.path.join(model_dir, "model.safetensors"))
    config = manifest["config"]
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


def classify_pngs(classify, bodies):
    """Class probabilities, one row per PNG body, from one forward pass over all of them."""
    return classify(torch.stack([png_pixels(b) for b in bodies]).float().div(255).view(-1, 1, 28, 28)).tolist()


def answer(names, probs):
    """The JSON answer of vae-serve's POST /classify for one image's class probabilities."""
    best = max(range(len(names)), key=lambda i: probs[i])
    return {"results": [{"label": best, "name": names[best], "probability": probs[best],
                         "probabilities": dict(zip(names, probs))}]}
