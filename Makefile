# The two commands a newcomer needs: `make run` and `make test`. Both provision libtorch first.
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
# tch's build finds libtorch through the virtualenv's python; build.rs turns its lib dir into an rpath.
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(VENV)/bin:$(PATH)
export VAE_DATA_DIR ?= $(abspath $(CURDIR)/../shared/data)

.PHONY: setup browser-setup test-tools build run test lint fuzz container-test openapi fmt

setup:
	@scripts/setup-libtorch.sh

# Chromium and playwright-core for the console's end-to-end test.
browser-setup:
	@scripts/setup-browser-tests.sh

# schemathesis and tritonclient, for the OpenAPI contract and Open Inference Protocol tests.
test-tools: setup
	@scripts/setup-test-tools.sh

build: setup
	cargo build --release --locked

run: build
	./target/release/vae-serve serve

test: setup browser-setup test-tools
	cargo test --locked -- --test-threads=2

# Formatting and lints gate every CI run (.ci/run).
lint: setup
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

# Every cargo-fuzz target for FUZZ_SECONDS (default 60) from the committed seed corpus.
fuzz: setup
	@scripts/fuzz.sh

# The Dockerfile built with podman (base images made offline) and the image run and checked.
container-test:
	@scripts/container-test.sh

openapi: build
	./target/release/vae-serve openapi > openapi/openapi.json
