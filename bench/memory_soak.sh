#!/usr/bin/env bash
# Memory under sustained load: the release binary with the shipped model, driven for MINUTES by
# three concurrent oha load generators (classify and reconstruct posting one MNIST digit,
# sample with random seeds and labels). Every 10 s it reads resident memory from /proc, split into
# anonymous pages (heap, stacks) and file pages (the mapped code of libtorch and the binary), and
# the C heap's bytes in use and free (the server's vae_malloc_bytes gauges).
# Prints a Markdown summary; the samples stay in bench/out/memory-soak.csv.
#
#   bench/memory_soak.sh [MINUTES]
#
# Needs `make build` and oha (installed with cargo when missing). In oha's --rand-regex-url a dot
# is literal and `?` needs a class: `[?]`. Fails if any request was not answered 200.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
MINUTES=${1:-10}
BIN=./target/release/vae-serve
PY=./.venv/bin/python
OUT=$(mktemp -d)
mkdir -p bench/out
CSV=bench/out/memory-soak.csv
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT
command -v oha >/dev/null || cargo install oha --locked >&2

"$PY" bench/digit_png.py ../shared/data/mnist "$OUT/digit.png"

RUST_LOG=warn "$BIN" serve --addr 127.0.0.1:18280 --models-dir models --database "$OUT/soak.db" --default-model "$SERVED_MODEL" 2>"$OUT/serve.log" &
pid=$!
wait_up http://127.0.0.1:18280/readyz 10
# "RSS_KB,RSS_ANON_KB,RSS_FILE_KB"
rss_kb() { awk '/^VmRSS/ {t = $2} /^RssAnon/ {a = $2} /^RssFile/ {f = $2} END {printf "%d,%d,%d", t, a, f}' "/proc/$pid/status"; }
# "RSS_KB,RSS_ANON_KB,RSS_FILE_KB,HEAP_IN_USE_KB,HEAP_FREE_KB"
sample() {
  curl -fs http://127.0.0.1:18280/metrics | awk -v rss="$(rss_kb)" '
    /^vae_malloc_bytes\{state="in_use"\}/ {used = $2 / 1024}
    /^vae_malloc_bytes\{state="free"\}/ {free = $2 / 1024}
    END {printf "%s,%d,%d\n", rss, used, free}'
}

echo "seconds,rss_kb,rss_anon_kb,rss_file_kb,heap_in_use_kb,heap_free_kb" > "$CSV"
echo "0,$(sample)" >> "$CSV"
duration="${MINUTES}m"
oha -z "$duration" -c 16 --no-tui --output-format json -m POST -T image/png -D "$OUT/digit.png" http://127.0.0.1:18280/classify > "$OUT/classify.json" &
oha -z "$duration" -c 8 --no-tui --output-format json -m POST -T image/png -D "$OUT/digit.png" http://127.0.0.1:18280/reconstruct > "$OUT/reconstruct.json" &
oha -z "$duration" -c 8 --no-tui --output-format json --rand-regex-url 'http://127.0.0.1:18280/sample[?]n=(1|4|16)&label=[0-9]&seed=[0-9]{1,6}' > "$OUT/sample.json" &
start=$(date +%s)
while [ $(( $(date +%s) - start )) -lt $(( MINUTES * 60 )) ]; do
  sleep 10
  echo "$(( $(date +%s) - start )),$(sample)" >> "$CSV"
done
wait $(jobs -p | grep -v "^$pid$") 2>/dev/null || true
sleep 5
echo "$(( $(date +%s) - start )),$(sample)" >> "$CSV"
kill "$pid"; wait "$pid" 2>/dev/null || true

"$PY" - "$CSV" "$OUT" "$MINUTES" <<'PYEOF'
import csv, json, sys
path, out, minutes = sys.argv[1], sys.argv[2], int(sys.argv[3])
table = list(csv.DictReader(open(path)))
def series(column):
    return [(int(r["seconds"]), int(r[column]) / 1024) for r in table]
def slope(points):
    """Least-squares slope (MiB per minute) over the loaded samples after the first minute."""
    xs, ys = [s / 60 for s, _ in points], [m for _, m in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
rows = series("rss_kb")
idle, after = rows[0][1], rows[-1][1]
loaded = rows[1:-1]
warm = [m for s, m in loaded if s >= 60]
def after_first_minute(column):
    return [p for p in series(column)[1:-1] if p[0] >= 60]
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
print(f"{requests} requests in {minutes} minutes. From minute 1 to the end (least-squares slope, first to last sample):")
for column, what in [("rss_kb", "resident memory"), ("rss_anon_kb", "of which anonymous pages (heap, stacks)"),
                     ("rss_file_kb", "of which file pages (mapped code and data of the binary and libtorch)"),
                     ("heap_in_use_kb", "C heap in live allocations"), ("heap_free_kb", "free bytes the C heap keeps")]:
    points = after_first_minute(column)
    print(f"- {what}: **{slope(points):+.2f} MiB/min** ({points[0][1]:.1f} → {points[-1][1]:.1f} MiB)")
if failed:
    sys.exit(f"{failed} requests were not answered 200: the soak did not load what it claims")
PYEOF
