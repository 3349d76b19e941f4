"""LitServe peer for bench/classify_peers.sh: the shipped model's classifier (bench/peer_model.py,
the same weights and arithmetic) behind LitServe's batching (16 requests or 2 ms, as TorchServe's
run), one torch thread in each of two inference workers, one per core.

LitServe reads JSON request bodies, so the PNG comes base64-encoded: POST /classify with
{"image": "<base64 PNG>"}; the worker decodes it, classifies the batch and answers vae-serve's JSON.

    .venv-bench/bin/python bench/litserve_peer.py --model models/mnist-ssvae/v1 --port 8091
"""
import argparse
import base64

import litserve as ls
import torch

from peer_model import answer, as_images, build, png_pixels


class Classifier(ls.LitAPI):
    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def setup(self, device):
        torch.set_num_threads(1)
        torch.set_grad_enabled(False)
        config, _, self.classify, _ = build(self.model)
        self.names = config["label_names"]

    def decode_request(self, request):
        return png_pixels(base64.b64decode(request["image"]))

    def predict(self, pixels):
        return self.classify(as_images(pixels)).tolist()

    def encode_response(self, probs):
        return answer(self.names, probs)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    api = Classifier(a.model, max_batch_size=16, batch_timeout=0.002, api_path="/classify")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=a.workers)
    server.run(port=a.port, host="127.0.0.1", generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
