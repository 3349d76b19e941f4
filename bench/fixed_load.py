"""Sends exactly N requests at concurrency C over keep-alive connections and checks every answer.

    python3 bench/fixed_load.py URL BODY_FILE CONCURRENCY N

POST with BODY_FILE as image/png for /classify and /reconstruct, GET otherwise. A fixed count, not a
duration, so that an instruction count divided by N is a per-request figure (bench/callgrind_requests.sh).
Standard library only.
"""
import http.client
import sys
import threading
import urllib.parse

url, body_file, concurrency, total = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
parts = urllib.parse.urlsplit(url)
path = parts.path + (f"?{parts.query}" if parts.query else "")
post = parts.path.endswith(("/classify", "/reconstruct"))
body = open(body_file, "rb").read() if post else None
failures = []


def client(count):
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    for _ in range(count):
        if post:
            connection.request("POST", path, body=body, headers={"content-type": "image/png"})
        else:
            connection.request("GET", path)
        answer = connection.getresponse()
        answer.read()
        if answer.status != 200:
            failures.append(answer.status)
    connection.close()


shares = [total // concurrency + (1 if i < total % concurrency else 0) for i in range(concurrency)]
threads = [threading.Thread(target=client, args=(share,)) for share in shares if share]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
if failures:
    sys.exit(f"{len(failures)} of {total} requests failed: {sorted(set(failures))}")
print(f"{total} requests at concurrency {concurrency}: all 200")
