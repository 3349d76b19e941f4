"""The hostile-client cases of issue 14 against a running vae-serve with its default settings
and the shipped model, measured with ordinary clients.

    python3 bench/hostile_clients.py 127.0.0.1:8080

1. A body over VAE_MAX_BODY_BYTES (12 MiB against 10 MiB) sent by Python's http.client, which
   sends the whole body before reading: which status it reads, or which error it gets.
2. 3,000 connections that send half a request line and stop (slowloris): how many are refused
   with a 503 (over VAE_MAX_CONNECTIONS), closed, or still open 1 s and 12 s later.
3. 600 GET /sample?n=256 whose clients hang up at once, then one fresh request: how long it
   waits, and how many of the 600 the model ran (vae_inference_requests_total).

Standard library only.
"""
import http.client
import re
import socket
import sys
import time

host, port = sys.argv[1].rsplit(":", 1)
port = int(port)


def metric(name):
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    found = re.search(r"^" + re.escape(name) + r" (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


# 1. Oversized body, whole before reading.
connection = http.client.HTTPConnection(host, port, timeout=30)
try:
    connection.request("POST", "/classify", body=b"x" * (12 * 1024 * 1024), headers={"content-type": "image/png"})
    answer = f"HTTP {connection.getresponse().status}"
except OSError as error:
    answer = type(error).__name__
print(f"| 12 MiB body from http.client | {answer} |")


# 2. Slowloris.
def state(sock):
    sock.setblocking(False)
    try:
        data = sock.recv(4096)
        return "closed" if not data else ("refused (503)" if data.startswith(b"HTTP/1.1 503") else "answered")
    except BlockingIOError:
        return "open"
    except ConnectionResetError:
        return "closed"


socks = []
for _ in range(3000):
    sock = socket.create_connection((host, port))
    sock.sendall(b"GET /healthz HT")
    socks.append(sock)
time.sleep(1)
first = [state(s) for s in socks]
still = [s for s, st in zip(socks, first) if st == "open"]
time.sleep(11)
later = [state(s) for s in still]
counts = lambda states: ", ".join(f"{states.count(k)} {k}" for k in sorted(set(states)))
print(f"| 3000 half-sent request lines, after 1 s | {counts(first)} |")
print(f"| the ones still open, 11 s later | {counts(later)} |")
for sock in socks:
    sock.close()

# 3. Abandoned requests.
before = metric('vae_inference_requests_total{model="mnist-ssvae@1",outcome="ok"}')
for seed in range(600):
    sock = socket.create_connection((host, port))
    sock.sendall(f"GET /sample?n=256&seed={seed} HTTP/1.1\r\nhost: bench\r\n\r\n".encode())
    sock.close()
started = time.perf_counter()
connection = http.client.HTTPConnection(host, port, timeout=30)
connection.request("GET", "/sample?n=1")
status = connection.getresponse().status
waited = time.perf_counter() - started
time.sleep(3)
ran = metric('vae_inference_requests_total{model="mnist-ssvae@1",outcome="ok"}') - before - 1
dropped = metric('vae_inference_requests_total{model="mnist-ssvae@1",outcome="abandoned"}')
print(f"| a fresh /sample?n=1 after 600 abandoned /sample?n=256 | HTTP {status} in {waited * 1000:.1f} ms |")
print(f"| of the 600, run by the model / dropped from its queue | {ran:.0f} / {dropped:.0f} (the rest never queued) |")
