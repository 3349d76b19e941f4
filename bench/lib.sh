# Helpers the bench scripts share (`. bench/lib.sh` from the repository root).

# wait_up URL [SECONDS] [LOG]: waits (default 60 s) until URL answers a 200; otherwise names it,
# prints the end of LOG when given, and fails.
wait_up() {
  local url=$1 tries=$((${2:-60} * 10)) log=${3:-}
  for _ in $(seq "$tries"); do
    curl -fs "$url" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "no answer from $url" >&2
  if [ -n "$log" ]; then tail -20 "$log" >&2; fi
  return 1
}
