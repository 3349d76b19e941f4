"""Open Inference Protocol peers for bench/v2_compare.sh, each serving the shipped model's
classifier from its own model.safetensors (bench/peer_model.py) with dynamic batching on, and
answering `probabilities` for an FP32 `image` input [N, 1, 28, 28]:

  python bench/v2_peers.py mlserver --model models/mnist-ssvae/v1 --port P   # Seldon MLServer, adaptive batching
  python bench/v2_peers.py pytriton --model models/mnist-ssvae/v1 --port P   # Triton (PyTriton), dynamic batcher

Both batch up to --max-batch rows, waiting at most --max-delay-ms (16 and 2 by default, as the
issue's peer runs). Ports P+1 and P+2 are the peers' gRPC and metrics ports.

`mlserver --input png` instead takes what POST /classify takes, an uploaded PNG, in MLServer's way
of carrying files: a BYTES input of base64 strings ("parameters": {"content_type": "base64"}),
one per image; it decodes and classifies them (bench/classify_peers.sh).
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent

# The body of the MLServer runtime's predict per input form: `probabilities` from `payload`.
PREDICT = {
    "tensor": "probabilities = self.classify(torch.from_numpy(NumpyCodec.decode_input(payload.inputs[0]))).numpy()",
    "png": "probabilities = np.array(classify_pngs(self.classify, Base64Codec.decode_input(payload.inputs[0])), dtype=np.float32)",
}


def mlserver(args):
    # MLServer loads the runtime class by module path from its working directory.
    root = pathlib.Path(tempfile.mkdtemp(prefix="mlserver-peer-"))
    (root / "peer_runtime.py").write_text(f'''
import sys
sys.path.insert(0, {str(HERE)!r})
import torch
from mlserver import MLModel
import numpy as np
from mlserver.codecs import Base64Codec, NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from peer_model import build, classify_pngs

class Classifier(MLModel):
    async def load(self):
        torch.set_grad_enabled(False)
        torch.set_num_threads({args.threads})
        _, _, self.classify, _ = build({str(pathlib.Path(args.model).resolve())!r})
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        {PREDICT[args.input]}
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("probabilities", probabilities)])
''')
    (root / "settings.json").write_text(json.dumps({
        "http_port": args.port, "grpc_port": args.port + 1, "metrics_port": args.port + 2, "debug": False,
    }))
    model = root / "mnist-ssvae"
    model.mkdir()
    (model / "model-settings.json").write_text(json.dumps({
        "name": "mnist-ssvae", "implementation": "peer_runtime.Classifier",
        "max_batch_size": args.max_batch, "max_batch_time": args.max_delay_ms / 1000,
    }))
    os.chdir(root)
    os.execv(os.path.join(os.path.dirname(sys.executable), "mlserver"), ["mlserver", "start", str(root)])


def pytriton(args):
    import numpy as np
    import torch
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    sys.path.insert(0, str(HERE))
    from peer_model import build

    # Triton's Python-backend stub embeds the first libpython3.11 the loader finds; with a
    # Python not installed by the system (pyenv), that is Debian's 3.11.2 under this
    # interpreter's own standard library, and the stub fails to start. Point it at ours.
    import sysconfig
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [sysconfig.get_config_var("LIBDIR"), os.environ.get("LD_LIBRARY_PATH")]))

    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    _, classes, classify, _ = build(args.model)

    @batch
    def infer(image):
        with torch.no_grad():
            return {"probabilities": classify(torch.from_numpy(image)).numpy()}

    config = TritonConfig(http_port=args.port, grpc_port=args.port + 1, metrics_port=args.port + 2)
    with Triton(config=config) as triton:
        triton.bind(
            model_name="mnist-ssvae",
            infer_func=infer,
            inputs=[Tensor(name="image", dtype=np.float32, shape=(1, 28, 28))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(classes,))],
            config=ModelConfig(max_batch_size=64, batcher=DynamicBatcher(max_queue_delay_microseconds=int(args.max_delay_ms * 1000),
                                                                          preferred_batch_size=[args.max_batch])),
        )
        triton.serve()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("peer", choices=["mlserver", "pytriton"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-delay-ms", type=float, default=2.0)
    parser.add_argument("--input", choices=sorted(PREDICT), default="tensor", help="mlserver: what a request carries")
    args = parser.parse_args()
    {"mlserver": mlserver, "pytriton": pytriton}[args.peer](args)


if __name__ == "__main__":
    main()
