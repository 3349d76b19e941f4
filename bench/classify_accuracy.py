"""Accuracy of a running server on the 10,000 MNIST test digits, through POST /classify: each
digit sent as a PNG, 64 to a request (JSON base64), as a client would. Prints one JSON line with
the accuracy; with --labels-out, also writes the predicted labels (one per line), so that two
settings of the server can be compared label by label.

    python3 bench/classify_accuracy.py URL MNIST_DIR [--labels-out FILE] [--compare FILE]

Standard library only.
"""
import argparse
import base64
import http.client
import json
import os
import sys
import urllib.parse

sys.path.insert(0, os.path.dirname(__file__))
from digit_png import png, test_digits  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("url")
parser.add_argument("mnist_dir")
parser.add_argument("--labels-out")
parser.add_argument("--compare", help="labels written by an earlier run: report the share that agree")
args = parser.parse_args()

parts = urllib.parse.urlsplit(args.url)
connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
digits = test_digits(args.mnist_dir)
predicted = []
for start in range(0, len(digits), 64):
    batch = digits[start:start + 64]
    body = json.dumps({"images": [base64.b64encode(png(pixels)).decode() for pixels, _ in batch]})
    connection.request("POST", parts.path or "/classify", body=body, headers={"content-type": "application/json"})
    answer = connection.getresponse()
    text = answer.read()
    if answer.status != 200:
        sys.exit(f"POST {args.url} answered {answer.status}: {text[:300]!r}")
    predicted += [result["label"] for result in json.loads(text)["results"]]
correct = sum(p == label for p, (_, label) in zip(predicted, digits))
report = {"url": args.url, "digits": len(digits), "accuracy": correct / len(digits)}
if args.compare:
    earlier = [int(line) for line in open(args.compare)]
    report["agreement"] = sum(a == b for a, b in zip(earlier, predicted)) / len(digits)
if args.labels_out:
    open(args.labels_out, "w").write("".join(f"{p}\n" for p in predicted))
print(json.dumps(report))
