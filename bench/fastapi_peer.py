"""Peer serving baseline: FastAPI + uvicorn + PyTorch serving the same semi-supervised model from
the same model.safetensors, with the same two requests as vae-serve:

  POST /classify  (raw image/png body)   -> predicted label and class probabilities (JSON)
  GET  /sample?n=1&label=3&seed=0        -> PNG grid of decoded samples

Run: .venv/bin/python bench/fastapi_peer.py --model models/mnist-ssvae/v1 --port 8090 [--workers 2 --threads 1]
(pip install fastapi uvicorn safetensors pillow into .venv first; bench/serve_compare.sh does.)
Each uvicorn worker is its own process with its own copy of the model and --threads torch threads.
"""
import argparse
import os
import pathlib

import torch
import uvicorn
from fastapi import FastAPI, Request, Response

from peer_model import answer, build, classify_pngs, sample_pngs


def create_app():
    """The app of one worker; uvicorn's worker processes build it from the environment main() sets."""
    torch.set_num_threads(int(os.environ["VAE_PEER_THREADS"]))
    torch.set_grad_enabled(False)
    config, k, classify, decode = build(os.environ["VAE_PEER_MODEL"])
    names = config["label_names"]
    latent = config["latent_dim"]
    app = FastAPI()

    @app.post("/classify")
    async def classify_route(request: Request):
        return answer(names, classify_pngs(classify, [await request.body()])[0])

    @app.get("/sample")
    def sample_route(n: int = 16, label: int = 0, seed: int = 0):
        return Response(sample_pngs(decode, latent, k, [(n, label, seed)])[0], media_type="image/png")

    return app


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads per worker")
    a = p.parse_args()
    os.environ["VAE_PEER_MODEL"] = a.model
    os.environ["VAE_PEER_THREADS"] = str(a.threads)
    uvicorn.run("fastapi_peer:create_app", factory=True, app_dir=str(pathlib.Path(__file__).parent),
                host="127.0.0.1", port=a.port, workers=a.workers, log_level="warning")


if __name__ == "__main__":
    main()
