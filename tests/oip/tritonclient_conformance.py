"""Open Inference Protocol conformance of a running vae-serve, driven by the official Triton
clients (tritonclient[http,grpc] from PyPI), not by our own code.

Run by tests/open_inference_protocol.rs against the real server:
    python tritonclient_conformance.py --http HOST:PORT [--grpc HOST:PORT] --digits DIR [--api-key KEY]
DIR holds digits.u8 (N×1×28×28 MNIST test digits), digit-NNN.png (the same digits as PNG
files) and labels.json. The model `mnist-ssvae` (semi-supervised) and `plain` (an MLP VAE,
no classifier) must be published. Exits non-zero, naming the check, on the first failure.
"""

import argparse
import base64
import json
import pathlib
import sys
import urllib.error
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

MODEL = "mnist-ssvae"
PLAIN = "plain"


class Protocol:
    """The calls that differ between tritonclient's HTTP and gRPC modules."""

    def __init__(self, kind, url):
        self.kind = kind
        self.module = httpclient if kind == "http" else grpcclient
        self.client = self.module.InferenceServerClient(url=url)

    def tensor(self, name, array, datatype, binary=True):
        tensor = self.module.InferInput(name, list(array.shape), datatype)
        if self.kind == "http":
            tensor.set_data_from_numpy(array, binary_data=binary)
        else:
            tensor.set_data_from_numpy(array)
        return tensor

    def output(self, name, binary=True):
        if self.kind == "http":
            return self.module.InferRequestedOutput(name, binary_data=binary)
        return self.module.InferRequestedOutput(name)

    def metadata(self, name, version=""):
        if self.kind == "http":
            return self.client.get_model_metadata(name, version)
        return self.client.get_model_metadata(name, version, as_json=True)

    def server_metadata(self):
        if self.kind == "http":
            return self.client.get_server_metadata()
        return self.client.get_server_metadata(as_json=True)

    def infer(self, inputs, outputs=None, model=MODEL, version="", parameters=None, request_id=""):
        return self.client.infer(model, inputs, model_version=version, outputs=outputs, parameters=parameters, request_id=request_id)


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def refused(call, needle, what):
    try:
        call()
    except InferenceServerException as error:
        check(needle.lower() in str(error).lower(), f"{what}: the error `{error}` does not mention `{needle}`")
        return
    raise AssertionError(f"{what}: the server accepted it")


def post_json(base, path, body):
    request = urllib.request.Request(f"http://{base}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def get_json(base, path):
    with urllib.request.urlopen(f"http://{base}{path}", timeout=60) as answer:
        return json.loads(answer.read())


def conformance(protocol, http_base, digits, pngs, labels):
    n = len(labels)
    proto = protocol.kind
    check(protocol.client.is_server_live(), f"{proto}: server live")
    check(protocol.client.is_server_ready(), f"{proto}: server ready")
    server = protocol.server_metadata()
    check(server["name"] == "vae-serve" and "binary_tensor_data" in server["extensions"], f"{proto}: server metadata {server}")
    check(protocol.client.is_model_ready(MODEL), f"{proto}: model ready")
    check(protocol.client.is_model_ready(MODEL, "1"), f"{proto}: version 1 ready")
    check(not protocol.client.is_model_ready("no-such-model"), f"{proto}: an unknown model is not ready")

    metadata = protocol.metadata(MODEL)
    check(metadata["name"] == MODEL and "1" in metadata["versions"], f"{proto}: model metadata {metadata}")
    shapes = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in metadata["inputs"] + metadata["outputs"]}
    check(shapes["image"] == ("FP32", [-1, 1, 28, 28]), f"{proto}: image metadata {shapes['image']}")
    check(shapes["probabilities"] == ("FP32", [-1, 10]), f"{proto}: probabilities metadata")
    check(shapes["image_bytes"] == ("BYTES", [-1]), f"{proto}: image_bytes metadata")
    plain = protocol.metadata(PLAIN)
    check("probabilities" not in [t["name"] for t in plain["outputs"]], f"{proto}: a model without a classifier lists probabilities")
    check(protocol.metadata(MODEL, "1")["name"] == MODEL, f"{proto}: version-pinned metadata")

    # /classify's answers, for the same PNG files, are the reference.
    encoded = [base64.b64encode(png).decode() for png in pngs]
    classified = post_json(http_base, "/classify", {"images": encoded})["results"]
    reference = np.array([[r["probabilities"][str(k)] for k in range(10)] for r in classified], dtype=np.float32)
    reference_labels = np.array([r["label"] for r in classified])
    check((reference_labels == labels).mean() > 0.8, f"{proto}: the model classifies the test digits")

    wanted = ["probabilities", "label"]
    pixels = digits.astype(np.float32) / 255.0
    for binary in (False, True) if proto == "http" else (True,):
        result = protocol.infer([protocol.tensor("image", pixels, "FP32", binary)], [protocol.output(o, binary) for o in wanted], request_id="batch-64")
        check(result.get_response()["id"] == "batch-64" if proto == "http" else result.get_response().id == "batch-64", f"{proto}: request id echoed")
        probabilities = result.as_numpy("probabilities")
        check(probabilities.shape == (n, 10), f"{proto}: probabilities shape {probabilities.shape}")
        check(np.allclose(probabilities, reference, atol=1e-5), f"{proto} binary={binary}: FP32 image answers differ from /classify by {np.abs(probabilities - reference).max()}")
        check((result.as_numpy("label") == reference_labels).all(), f"{proto}: labels differ from /classify")

    as_uint8 = protocol.infer([protocol.tensor("image", digits, "UINT8")], [protocol.output("probabilities")]).as_numpy("probabilities")
    check(np.allclose(as_uint8, reference, atol=1e-5), f"{proto}: UINT8 image answers differ from /classify")
    files = np.array(pngs, dtype=np.object_)
    from_files = protocol.infer([protocol.tensor("image_bytes", files, "BYTES")], [protocol.output("probabilities")]).as_numpy("probabilities")
    check(np.allclose(from_files, reference, atol=1e-5), f"{proto}: image_bytes answers differ from /classify")
    # Without a client library: JSON with the files as base64 strings, as the README's curl does.
    if proto == "http":
        document = {"inputs": [{"name": "image_bytes", "shape": [n], "datatype": "BYTES", "data": encoded}], "outputs": [{"name": "label"}]}
        answer = post_json(http_base, f"/v2/models/{MODEL}/infer", document)
        check(answer["outputs"][0]["data"] == reference_labels.tolist(), f"{proto}: base64 image_bytes in JSON: {answer}")
    # Batch independence: one digit alone gets what it got in the batch of 64.
    alone = protocol.infer([protocol.tensor("image", pixels[5:6], "FP32")], [protocol.output("probabilities")]).as_numpy("probabilities")
    check(np.allclose(alone[0], reference[5], atol=1e-5), f"{proto}: a digit alone differs from the same digit in a batch")

    # Every output. No outputs named: all that an analysis gives.
    every = protocol.infer([protocol.tensor("image", pixels[:4], "FP32")])
    for name in ["probabilities", "label", "mean", "log_var", "reconstruction", "elbo"]:
        value = every.as_numpy(name)
        expected = [4] + shapes[name][1][1:]
        check(value is not None and list(value.shape) == expected, f"{proto}: output {name} shape {None if value is None else value.shape}, not {expected}")
    encoded_codes = post_json(http_base, "/encode", {"images": encoded[:4]})["results"]
    check(np.allclose(every.as_numpy("mean"), np.array([r["mean"] for r in encoded_codes]), atol=1e-5), f"{proto}: mean differs from /encode")
    check(np.allclose(every.as_numpy("log_var"), np.array([r["log_var"] for r in encoded_codes]), atol=1e-5), f"{proto}: log_var differs from /encode")
    reconstructed = post_json(http_base, "/reconstruct", {"images": encoded[:4]})["results"]
    check(np.allclose(every.as_numpy("elbo"), np.array([r["elbo"] for r in reconstructed]), rtol=1e-4), f"{proto}: elbo differs from /reconstruct")
    reconstruction = every.as_numpy("reconstruction")
    check(reconstruction.min() >= 0.0 and reconstruction.max() <= 1.0, f"{proto}: reconstruction outside [0, 1]")

    # Generation: by parameters as GET /sample does, then from the very codes it drew.
    sampled = get_json(http_base, "/sample?n=4&seed=7&label=3&format=json")
    by_parameters = protocol.infer([], [protocol.output("samples")], parameters={"n": 4, "seed": 7, "label": "3"}).as_numpy("samples")
    check(by_parameters.shape == (4, 1, 28, 28), f"{proto}: samples shape {by_parameters.shape}")
    codes = np.array(sampled["latents"], dtype=np.float32)
    from_codes = protocol.infer(
        [protocol.tensor("z", codes, "FP32"), protocol.tensor("label", np.full(4, 3, dtype=np.int64), "INT64")], [protocol.output("samples")]
    ).as_numpy("samples")
    check(np.allclose(by_parameters, from_codes, atol=1e-5), f"{proto}: samples from the drawn codes differ from the samples drawn")
    judged = protocol.infer([protocol.tensor("image", from_codes, "FP32")], [protocol.output("label")]).as_numpy("label")
    check((judged == 3).sum() >= 2, f"{proto}: samples of label 3 classified as {judged}")
    plain_samples = protocol.infer([], [protocol.output("samples")], model=PLAIN, parameters={"n": 2}).as_numpy("samples")
    check(plain_samples.shape == (2, 1, 28, 28), f"{proto}: samples of a model without labels")

    # Version-pinned calls.
    pinned = protocol.infer([protocol.tensor("image", pixels[:2], "FP32")], [protocol.output("label")], version="1").as_numpy("label")
    check((pinned == reference_labels[:2]).all(), f"{proto}: version-pinned inference")

    # Errors.
    image = protocol.tensor("image", pixels[:2], "FP32")
    refused(lambda: protocol.infer([image], model="no-such-model"), "no-such-model", f"{proto}: unknown model")
    refused(lambda: protocol.infer([image], version="99"), "not found", f"{proto}: unknown version")
    refused(lambda: protocol.infer([protocol.tensor("pixels", pixels[:2], "FP32")]), "unknown input `pixels`", f"{proto}: unknown input")
    refused(lambda: protocol.infer([protocol.tensor("image", pixels[:2].reshape(2, 784), "FP32")]), "does not match", f"{proto}: wrong shape")
    refused(lambda: protocol.infer([protocol.tensor("image", digits[:2].astype(np.int64), "INT64")]), "datatype INT64", f"{proto}: wrong datatype")
    refused(lambda: protocol.infer([image], [protocol.output("probabilities")], model=PLAIN), "unknown output `probabilities`", f"{proto}: probabilities of a model without a classifier")
    refused(lambda: protocol.infer([image], [protocol.output("samples")]), "not produced by an analysis", f"{proto}: samples asked of an analysis")
    refused(lambda: protocol.infer([protocol.tensor("image_bytes", np.array([b"not an image"], dtype=np.object_), "BYTES")]), "unsupported", f"{proto}: bytes that are no image")
    print(f"{proto}: every check passed")


def repository(http_base):
    client = httpclient.InferenceServerClient(url=http_base)
    index = {(m["name"], m["version"]): m["state"] for m in client.get_model_repository_index()}
    check(index.get((MODEL, "1")) == "READY", f"repository index: {index}")
    client.unload_model(PLAIN)
    index = {(m["name"], m["version"]): m["state"] for m in client.get_model_repository_index()}
    check(index.get((PLAIN, "1")) == "UNAVAILABLE", f"after unload: {index}")
    client.load_model(PLAIN)
    check(client.is_model_ready(PLAIN), "after load")
    refused(lambda: client.load_model("no-such-model"), "no-such-model", "loading an unknown model")
    print("repository: every check passed")


def authentication(http_base, grpc_base, key, digits):
    """Against a server with VAE_API_KEY=key: inference needs the key, probes do not."""
    pixels = digits[:1].astype(np.float32) / 255.0
    for protocol in (Protocol("http", http_base), Protocol("grpc", grpc_base)):
        check(protocol.client.is_server_live() and protocol.client.is_server_ready(), f"{protocol.kind}: probes need no key")
        image = protocol.tensor("image", pixels, "FP32")
        refused(lambda: protocol.infer([image]), "unauthenticated" if protocol.kind == "grpc" else "VAE_API_KEY", f"{protocol.kind}: inference without the key")
        refused(lambda: protocol.client.infer(MODEL, [image], headers={"authorization": "Bearer wrong"}), "VAE_API_KEY", f"{protocol.kind}: a wrong key")
        answer = protocol.client.infer(MODEL, [image], outputs=[protocol.output("label")], headers={"authorization": f"Bearer {key}"})
        check(answer.as_numpy("label").shape == (1,), f"{protocol.kind}: inference with the key")
    request = urllib.request.Request(f"http://{http_base}/v2/models/{MODEL}/infer", data=b"{}", method="POST")
    try:
        urllib.request.urlopen(request, timeout=60)
        raise AssertionError("http: a request without the key was answered")
    except urllib.error.HTTPError as error:
        body = json.loads(error.read())
        check(error.code == 401 and set(body) == {"error"}, f"http: 401 in the protocol's form, not {error.code} {body}")
    print("authentication: every check passed")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", required=True)
    parser.add_argument("--grpc")
    parser.add_argument("--digits", required=True, type=pathlib.Path)
    parser.add_argument("--api-key", help="the server's VAE_API_KEY: run the authentication checks only")
    args = parser.parse_args()
    labels = np.array(json.loads((args.digits / "labels.json").read_text()))
    digits = np.fromfile(args.digits / "digits.u8", dtype=np.uint8).reshape(len(labels), 1, 28, 28)
    pngs = [(args.digits / f"digit-{i:03}.png").read_bytes() for i in range(len(labels))]
    if args.api_key:
        authentication(args.http, args.grpc, args.api_key, digits)
        return
    conformance(Protocol("http", args.http), args.http, digits, pngs, labels)
    if args.grpc:
        conformance(Protocol("grpc", args.grpc), args.http, digits, pngs, labels)
    repository(args.http)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
