"""Writes the first MNIST test digit as a 28×28 greyscale PNG (the benchmarks' request body).

    python3 bench/digit_png.py MNIST_DIR OUT.png

Standard library only, so it runs with any Python (the device machine's included). Other scripts
import `test_digits` and `png`.
"""
import gzip
import struct
import sys
import zlib


def test_digits(mnist_dir):
    """The canonical test set: (28×28 pixel rows as bytes, label) per digit."""
    pixels = gzip.open(f"{mnist_dir}/t10k-images-idx3-ubyte.gz").read()[16:]
    labels = gzip.open(f"{mnist_dir}/t10k-labels-idx1-ubyte.gz").read()[8:]
    return [(pixels[i * 784:(i + 1) * 784], labels[i]) for i in range(len(labels))]


def png(pixels):
    """A 28×28 greyscale PNG of 784 pixel bytes."""
    rows = b"".join(b"\0" + pixels[r * 28:(r + 1) * 28] for r in range(28))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


if __name__ == "__main__":
    mnist_dir, out = sys.argv[1:]
    open(out, "wb").write(png(test_digits(mnist_dir)[0][0]))
