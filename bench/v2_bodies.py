"""Open Inference Protocol request bodies for bench/v2_compare.sh, from the first MNIST test
digits: one digit and a batch of 64, each as Triton's binary tensor form (a JSON header, then
the FP32 pixels; the header's length goes in Inference-Header-Content-Length) and as JSON.

    python bench/v2_bodies.py MNIST_DIR OUT_DIR   ->  one.bin one.len one.json batch.bin batch.len batch.json
"""
import gzip
import json
import struct
import sys

mnist_dir, out = sys.argv[1:]
raw = gzip.open(f"{mnist_dir}/t10k-images-idx3-ubyte.gz").read()[16:]
for name, rows in [("one", 1), ("batch", 64)]:
    pixels = [b / 255.0 for b in raw[: rows * 784]]
    shape = [rows, 1, 28, 28]
    header = json.dumps({
        "inputs": [{"name": "image", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": 4 * len(pixels)}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }).encode()
    open(f"{out}/{name}.bin", "wb").write(header + struct.pack(f"<{len(pixels)}f", *pixels))
    open(f"{out}/{name}.len", "w").write(str(len(header)))
    document = {"inputs": [{"name": "image", "shape": shape, "datatype": "FP32", "data": pixels}], "outputs": [{"name": "probabilities"}]}
    open(f"{out}/{name}.json", "w").write(json.dumps(document))
