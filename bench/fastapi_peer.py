"""Peer serving baseline: FastAPI + uvicorn + PyTorch serving the same semi-supervised model from
the same model.safetensors, with the same two requests as vae-serve:

  POST /classify  (raw image/png body)   -> predicted label and class probabilities (JSON)
  GET  /sample?n=1&label=3&seed=0        -> PNG grid of decoded samples

Run: .venv/bin/python bench/fastapi_peer.py --model models/mnist-ssvae/v1 --port 8090
(pip install fastapi uvicorn safetensors pillow into .venv first; bench/serve_compare.sh does.)
"""
import argparse
import io
import math
import os

import torch
import torch.nn.functional as F
import uvicorn
from fastapi import FastAPI, Request, Response
from PIL import Image

from peer_model import build


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    config, k, classify, decode = build(a.model)
    names = config["label_names"]
    latent = config["latent_dim"]
    app = FastAPI()

    @app.post("/classify")
    async def classify_route(request: Request):
        body = await request.body()
        image = Image.open(io.BytesIO(body)).convert("L").resize((28, 28))
        x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).float().div(255).view(1, 1, 28, 28)
        probs = classify(x)[0].tolist()
        best = max(range(k), key=lambda i: probs[i])
        return {"results": [{"label": best, "name": names[best], "probability": probs[best],
                             "probabilities": dict(zip(names, probs))}]}

    @app.get("/sample")
    def sample_route(n: int = 16, label: int = 0, seed: int = 0):
        torch.manual_seed(seed)
        z = torch.randn(n, latent)
        y = F.one_hot(torch.full((n,), label), k).float()
        images = decode(z, y).view(n, 28, 28)
        columns = math.ceil(math.sqrt(n))
        rows = math.ceil(n / columns)
        grid = torch.zeros(rows * 30 + 2, columns * 30 + 2)
        for i in range(n):
            r, c = divmod(i, columns)
            grid[2 + r * 30: 30 + r * 30, 2 + c * 30: 30 + c * 30] = images[i]
        out = io.BytesIO()
        Image.frombytes("L", (grid.shape[1], grid.shape[0]), bytes(grid.mul(255).round().byte().flatten().tolist())).save(out, "PNG")
        return Response(out.getvalue(), media_type="image/png")

    uvicorn.run(app, host="127.0.0.1", port=a.port, workers=1, log_level="warning")


if __name__ == "__main__":
    main()
