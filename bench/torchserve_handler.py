"""TorchServe peer: the shipped model's classifier (bench/peer_model.py, the same weights and
arithmetic) behind TorchServe's batching, doing what POST /classify does for one PNG: decode it,
classify it, answer the label, its name and every class probability as JSON.

Packed by bench/classify_peers.sh with torch-model-archiver (this file as the handler,
peer_model.py as an extra file); the model folder comes in VAE_PEER_MODEL.
"""
import os

import torch

from peer_model import answer, build, classify_pngs

_model = None


def _load():
    torch.set_num_threads(1)  # one per worker: TorchServe runs one worker per core
    torch.set_grad_enabled(False)
    config, _, classify, _ = build(os.environ["VAE_PEER_MODEL"])
    return config["label_names"], classify


def handle(data, context):
    """TorchServe's entry point: `data` is the batch, one dict per request."""
    global _model
    if _model is None:
        _model = _load()
    if data is None:
        return None
    names, classify = _model
    bodies = [request.get("data") or request.get("body") for request in data]
    return [answer(names, probs) for probs in classify_pngs(classify, bodies)]
