#!/usr/bin/env bash
# Memory under sustained load: the release binary with the shipped model, driven for MINUTES by
# three concurrent oha load generators (classify and reconstruct posting one MNIST digit,
# sample with random seeds and labels), resident memory read from /proc every 10 s.
# Prints a Markdown summary; the samples stay in bench/out/memory-soak.csv.
#
#   bench/memory_soak.sh [MINUTES]
#
# Needs `make build` and oha (installed with cargo when missing). In oha's --rand-regex-url a dot
# is literal and `?` needs a class: `[?]`. Fails if any request was not answered 200.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-10}
BIN=./target/release/vae-serve
PY=./.venv/bin/python
OUT=$(mktemp -d)
mkdir -p bench/out
CSV=bench/out/memory-soak.csv
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT
command -v oha >/dev/null || cargo install oha --locked >&2

"$PY" bench/digit_png.py ../shared/data/mnist "$OUT/digit.png"

RUST_LOG=warn "$BIN" serve --addr 127.0.0.1:18280 --models-dir models --database "$OUT/soak.db" --default-model mnist-ssvae 2>"$OUT/serve.log" &
pid=$!
for _ in $(seq 100); do curl -fs http://127.0.0.1:18280/readyz >/dev/null 2>&1 && break; sleep 0.1; done
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }

echo "seconds,rss_kb" > "$CSV"
echo "0,$(rss_kb)" >> "$CSV"
duration="${MINUTES}m"
oha -z "$duration" -c 16 --no-tui --output-format json -m POST -T image/png -D "$OUT/digit.png" http://127.0.0.1:18280/classify > "$OUT/classify.json" &
oha -z "$duration" -c 8 --no-tui --output-format json -m POST -T image/png -D "$OUT/digit.png" http://127.0.0.1:18280/reconstruct > "$OUT/reconstruct.json" &
oha -z "$duration" -c 8 --no-tui --output-format json --rand-regex-url 'http://127.0.0.1:18280/sample[?]n=(1|4|16)&label=[0-9]&seed=[0-9]{1,6}' > "$OUT/sample.json" &
start=$(date +%s)
while [ $(( $(date +%s) - start )) -lt $(( MINUTES * 60 )) ]; do
  sleep 10
  echo "$(( $(date +%s) - start )),$(rss_kb)" >> "$CSV"
done
wait $(jobs -p | grep -v "^$pid$") 2>/dev/null || true
sleep 5
echo "$(( $(date +%s) - start )),$(rss_kb)" >> "$CSV"
kill "$pid"; wait "$pid" 2>/dev/null || true

"$PY" - "$CSV" "$OUT" "$MINUTES" <<'PYEOF'
import csv, json, sys
path, out, minutes = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [(int(r["seconds"]), int(r["rss_kb"]) / 1024) for r in csv.DictReader(open(path))]
idle, after = rows[0][1], rows[-1][1]
loaded = [r for r in rows[1:-1]]
warm = [m for s, m in loaded if s >= 60]
# Least-squares slope over the loaded samples after the first minute (MiB per minute).
xs = [s / 60 for s, m in loaded if s >= 60]
mean_x, mean_y = sum(xs) / len(xs), sum(warm) / len(warm)
slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, warm)) / sum((x - mean_x) ** 2 for x in xs)
requests, failed = 0, 0
for name in ("classify", "reconstruct", "sample"):
    r = json.load(open(f"{out}/{name}.json"))
    codes = r.get("statusCodeDistribution", {})
    requests += sum(codes.values())
    # Requests cut off by the deadline show up as errors, not statuses; a generator with no
    # answered request at all (a wrong URL) is a failure.
    failed += sum(codes.values()) - codes.get("200", 0) + (0 if codes else 1)
    print(f"- `{name}`: {r['summary']['requestsPerSec']:.0f} req/s, {codes.get('200', 0)}/{sum(codes.values())} answered 200")
print()
print("| phase | resident memory (MiB) |")
print("|---|---|")
print(f"| idle, model not yet loaded | {idle:.0f} |")
print(f"| after the first minute of load | {warm[0]:.0f} |")
print(f"| highest under load | {max(m for _, m in loaded):.0f} |")
print(f"| end of {minutes} minutes of load | {loaded[-1][1]:.0f} |")
print(f"| 5 s after the load stopped | {after:.0f} |")
print()
print(f"{requests} requests in {minutes} minutes. Slope from minute 1 to the end: **{slope:+.2f} MiB/min** "
      f"(growth {warm[-1] - warm[0]:+.1f} MiB).")
if failed:
    sys.exit(f"{failed} requests were not answered 200: the soak did not load what it claims")
PYEOF
