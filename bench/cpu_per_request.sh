#!/usr/bin/env bash
# CPU time per request, split by who spends it, while wrk drives POST /classify (one 28×28 PNG) at
# concurrency 64: wrk itself, the server's runtime threads (HTTP, decoding, JSON), its model thread,
# and the rest of the server. The same for the floor (examples/http_floor.rs: the same HTTP stack,
# a fixed answer). Read from /proc (user + system ticks per thread) around each run, so it counts
# what the cores did, waits and wake-ups included, which instruction counts do not.
#
#   bench/cpu_per_request.sh [SERVER] [SECONDS]     (defaults: ./target/release/vae-serve, 10 s)
#
# SERVER is a binary, optionally after settings: "VAE_INFERENCE_INT8=true target/release/vae-serve".
# Prints one markdown row per server and, from the floor's rate, the CPU a request may take for
# vae-serve to answer 40% of it (issue 18) on the cores this machine has.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SERVER=${1:-./target/release/vae-serve} SECONDS_PER_RUN=${2:-10}
PORT=${PORT:-18780}
OUT=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$OUT"' EXIT
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
python3 bench/digit_png.py ../shared/data/mnist "$OUT/digit.png"
LIBTORCH_USE_PYTORCH=1 PATH=$PWD/.venv/bin:$PATH cargo build --release --locked --example http_floor >&2

# thread_ticks PID: one line per thread, "name<TAB>user+system ticks".
thread_ticks() {
  for stat in /proc/"$1"/task/*/stat; do
    # The name is in parentheses and may hold spaces; fields 14 and 15 follow it.
    sed -E 's/^[0-9]+ \((.*)\) [A-Za-z] (([^ ]+ ){10})([0-9]+) ([0-9]+) .*/\1\t\4 \5/' "$stat" | awk -F'\t' '{split($2, t, " "); print $1 "\t" t[1] + t[2]}'
  done
}

# measure NAME: wrk at concurrency 64 against the server started as $server, with tick snapshots.
measure() {
  # Warm-up: the model thread's first batches and the allocator's first pages.
  BODY=$OUT/digit.png CONTENT_TYPE=image/png wrk -t 2 -c 64 -d 2s -s bench/wrk_request.lua "http://127.0.0.1:$PORT/classify" >/dev/null
  thread_ticks "$server" >"$OUT/$1.before"
  BODY=$OUT/digit.png CONTENT_TYPE=image/png /usr/bin/time -f '%U %S' -o "$OUT/$1.wrk" \
    wrk -t 2 -c 64 -d "${SECONDS_PER_RUN}s" -s bench/wrk_request.lua "http://127.0.0.1:$PORT/classify" | grep '^{' >"$OUT/$1.json"
  thread_ticks "$server" >"$OUT/$1.after"
}

start_vae_serve "$SERVER"
measure vae-serve
kill "$server"; wait "$server" 2>/dev/null || true; server=""

curl -fs -H 'content-type: image/png' --data-binary @"$OUT/digit.png" "http://127.0.0.1:$PORT/classify" >/dev/null 2>&1 && { echo "port $PORT busy" >&2; exit 1; }
echo '{"results":[{"label":7}]}' >"$OUT/answer.json"
target/release/examples/http_floor "127.0.0.1:$PORT" "$OUT/answer.json" 2>"$OUT/floor.log" &
server=$!
wait_answer "http://127.0.0.1:$PORT/classify" "$OUT/digit.png" image/png 20 "$OUT/floor.log"
measure floor

python3 - "$OUT" "$(getconf CLK_TCK)" "$(nproc)" <<'PYEOF'
import json, sys
out, tick, cores = sys.argv[1], 1e6 / int(sys.argv[2]), int(sys.argv[3])
def ticks(path):
    by_name = {}
    for line in open(path):
        name, value = line.rstrip("\n").split("\t")
        by_name.setdefault(name, []).append(int(value))
    return by_name
rows = {}
for name in ("vae-serve", "floor"):
    run = json.load(open(f"{out}/{name}.json"))
    assert run["non2xx"] == 0 and run["errors"] == 0, f"{name}: some requests failed"
    before, after = ticks(f"{out}/{name}.before"), ticks(f"{out}/{name}.after")
    spent = {thread: (sum(after[thread]) - sum(before.get(thread, [0]))) * tick for thread in after}
    runtime = sum(v for t, v in spent.items() if t.startswith("tokio-r"))
    model = sum(v for t, v in spent.items() if t.startswith("model-"))
    user, system = map(float, open(f"{out}/{name}.wrk").read().split())
    n = run["requests"]
    rows[name] = dict(rps=run["rps"], wrk=(user + system) * 1e6 / n, runtime=runtime / n, model=model / n,
                      other=(sum(spent.values()) - runtime - model) / n)
print("| server | req/s | wrk µs/request | runtime threads µs/request | model thread µs/request | rest of the server µs/request | all µs/request |")
print("|---|---|---|---|---|---|---|")
for name, r in rows.items():
    total = r["wrk"] + r["runtime"] + r["model"] + r["other"]
    print(f"| {name} | {r['rps']:.0f} | {r['wrk']:.1f} | {r['runtime']:.1f} | {r['model']:.1f} | {r['other']:.1f} | {total:.1f} |")
target = 0.4 * rows["floor"]["rps"]
print(f"\n40% of the floor is {target:.0f} req/s: at most {cores * 1e6 / target:.1f} µs of CPU per request on {cores} cores, wrk's included.")
PYEOF
