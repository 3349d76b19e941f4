"""Writes the first MNIST test digit as a 28×28 greyscale PNG (the benchmarks' request body).

    python3 bench/digit_png.py MNIST_DIR OUT.png

Standard library only, so it runs with any Python (the device machine's included).
"""
import gzip
import struct
import sys
import zlib

mnist_dir, out = sys.argv[1:]
pixels = gzip.open(f"{mnist_dir}/t10k-images-idx3-ubyte.gz").read()[16:16 + 784]
rows = b"".join(b"\0" + pixels[r * 28:(r + 1) * 28] for r in range(28))


def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


header = struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)
open(out, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
