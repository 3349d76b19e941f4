#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for FUZZ_SECONDS each (default 60), starting
# from the committed seed corpus in fuzz/corpus/<target>/, which it only reads: what libFuzzer
# finds goes to a scratch corpus. A crash stops the run (its input is kept in fuzz/artifacts/) and
# should become a regression test. Prints the executions per target.
#
# cargo fuzz passes flags that rustc accepts only on nightly (-Zsanitizer=address); the machine's
# one toolchain is stable, so RUSTC_BOOTSTRAP=1 lets this same stable compiler take them.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
CARGO_FUZZ_VERSION=0.13.2
export LIBTORCH_USE_PYTORCH=1 PATH="$PWD/.venv/bin:$HOME/.cargo/bin:$PATH" RUSTC_BOOTSTRAP=1

if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io" >&2
  cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
# The targets link libtorch (through the library) but get no rpath from its build script.
export LD_LIBRARY_PATH="$(.venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cd fuzz
cargo fuzz build -O
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
printf '%-20s %12s %10s\n' target executions exec/s
for target in $(cargo fuzz list); do
  mkdir -p "$scratch/$target"
  cargo fuzz run -O "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=4096 -print_final_stats=1 >"$scratch/$target.log" 2>&1 \
    || { tail -40 "$scratch/$target.log" >&2; echo "fuzz: $target failed; its input is in fuzz/artifacts/$target/" >&2; exit 1; }
  runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$scratch/$target.log")
  printf '%-20s %12s %10s\n' "$target" "$runs" "$((runs / FUZZ_SECONDS))"
done
