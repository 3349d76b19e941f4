"""TorchServe peer: the shipped model (bench/peer_model.py, the same weights and arithmetic)
behind TorchServe's batching, doing per request what vae-serve does. One handler serves three
registered models, told apart by name:

- `classifier`: POST /classify of one PNG: decode it, classify it, answer the label, its name
  and every class probability as JSON;
- `sampler`: GET /sample?n=N&label=L&seed=S: N prior draws of class L, decoded, as one PNG;
- `reconstructor`: POST /reconstruct of one PNG: the reconstruction from the posterior mean as a
  base64 PNG with −log p(x|z), the KL and the ELBO.

Each batch goes through the network once, as vae-serve's batches do. Packed by
bench/classify_peers.sh with torch-model-archiver (this file as the handler, peer_model.py as an
extra file); the model folder comes in VAE_PEER_MODEL.
"""
import os

import torch

from peer_model import answer, build, build_encoder, classify_pngs, reconstruct_pngs, sample_pngs

_model = None


def _load():
    torch.set_num_threads(1)  # one per worker: TorchServe runs one worker per core
    torch.set_grad_enabled(False)
    config, classes, classify, decode = build(os.environ["VAE_PEER_MODEL"])
    return config, classes, classify, decode, build_encoder(os.environ["VAE_PEER_MODEL"])


def _text(value):
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def handle(data, context):
    """TorchServe's entry point: `data` is the batch, one dict per request."""
    global _model
    if _model is None:
        _model = _load()
    if data is None:
        return None
    config, classes, classify, decode, encode = _model
    served = context.manifest["model"]["modelName"]
    bodies = [request.get("data") or request.get("body") for request in data]
    if served == "sampler":
        for i in range(len(data)):
            context.set_response_content_type(i, "image/png")
        asked = [(int(_text(r.get("n", 1))), int(_text(r.get("label", 0))), int(_text(r.get("seed", 0)))) for r in data]
        return sample_pngs(decode, config["latent_dim"], classes, asked)
    if served == "reconstructor":
        return reconstruct_pngs(classify, encode, decode, bodies)
    return [answer(config["label_names"], probs) for probs in classify_pngs(classify, bodies)]
