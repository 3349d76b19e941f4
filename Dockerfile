# syntax=docker/dockerfile:1
# vae-serve container: build stage provisions libtorch from a torch wheel and builds the release
# binary; the runtime stage carries only the binary, the torch libraries and the shipped models.
#
#   docker build -t vae-serve .                          # CPU (torch's CPU-only wheel, small)
#   docker build -t vae-serve:cuda --build-arg VARIANT=cuda .   # CUDA (PyPI wheel with CUDA libs)
#
# The binary records libtorch's directory as an rpath, so both stages keep torch at the same path.

ARG VARIANT=cpu
ARG TORCH_VERSION=2.11.0
# Where the CPU image gets torch: its CPU-only index by default; empty means pip's default index
# (PyPI), which is what a network with only PyPI reaches (scripts/container-test.sh builds so).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

FROM rust:1-bookworm AS build
ARG VARIANT
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv && rm -rf /var/lib/apt/lists/*
# torch goes into /opt/torch with `pip --target`, so libtorch sits at /opt/torch/torch whatever the
# Python version, and the build reads it there (LIBTORCH) without importing torch. CPU: the torch
# wheel alone, then only the CUDA runtime and CUPTI that PyPI's (CUDA) build of libtorch_cpu links,
# at the cuda-toolkit version torch pins; torch's own CUDA libraries are deleted in the same step,
# so the layer is about 0.7 GB where the wheel with all its dependencies is 4.6 GB (a build on a
# small disk ran out of space committing it). CUDA: the wheel with every dependency.
RUN python3 -m venv /opt/pip \
 && if [ "$VARIANT" = "cpu" ]; then \
      /opt/pip/bin/pip install --no-cache-dir --no-deps --target /opt/torch ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}" \
      && cuda_runtime=$(sed -n 's/^Requires-Dist: cuda-toolkit\[[^]]*\]\([^;]*\);.*/cuda-toolkit[cudart,cupti]\1/p' /opt/torch/torch-*.dist-info/METADATA) \
      && if [ -n "$cuda_runtime" ]; then /opt/pip/bin/pip install --no-cache-dir --target /opt/torch "$cuda_runtime"; fi \
      && rm -f /opt/torch/torch/lib/libtorch_cuda*.so /opt/torch/torch/lib/libc10_cuda.so /opt/torch/torch/lib/libtorch_nvshmem.so /opt/torch/torch/lib/libtorch_python.so; \
    else \
      /opt/pip/bin/pip install --no-cache-dir --target /opt/torch "torch==${TORCH_VERSION}"; \
    fi
ENV LIBTORCH=/opt/torch/torch
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
# The target folder goes in the same step: it is gigabytes, and nothing later reuses it.
RUN cargo build --release --locked && cp target/release/vae-serve /usr/local/bin/vae-serve && rm -rf target
# What the runtime stage carries of torch, at the same paths. CPU: only the libraries the binary
# loads, as ldd resolves them (libtorch_cpu, libc10, and the two CUDA runtime libraries that even
# PyPI's CUDA build of libtorch_cpu links): well under 1 GB of the wheel's 4.6. CUDA: the whole
# site-packages, since libtorch_cuda (loaded at start-up) and cuDNN open further libraries lazily.
RUN mkdir /runtime \
 && if [ "$VARIANT" = "cpu" ]; then \
      ldd /usr/local/bin/vae-serve | awk '$3 ~ "^/opt/torch/" {print $3}' | xargs realpath -s | xargs cp --parents -t /runtime; \
    else \
      cp -a --parents /opt/torch /runtime; \
    fi

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/vae-serve --uid 10001 vae
# torch's shared libraries (and, for CUDA, the nvidia-* wheels they load) at the build path.
COPY --from=build /runtime/opt/torch /opt/torch
COPY --from=build /usr/local/bin/vae-serve /usr/local/bin/vae-serve
COPY --chown=vae:vae models /var/lib/vae-serve/models
# jobs/: running jobs' checkpoints, a volume of its own when replicas share them.
RUN mkdir -p /var/lib/vae-serve/data /var/lib/vae-serve/jobs && chown vae:vae /var/lib/vae-serve/data /var/lib/vae-serve/jobs
USER vae
WORKDIR /var/lib/vae-serve
ENV VAE_ADDR=0.0.0.0:8080 \
    VAE_GRPC_ADDR=0.0.0.0:8081 \
    VAE_MODELS_DIR=/var/lib/vae-serve/models \
    VAE_DATA_DIR=/var/lib/vae-serve/data \
    VAE_DATABASE=/var/lib/vae-serve/data/vae-serve.db \
    VAE_DEVICE=auto \
    VAE_LOG_FORMAT=json
# HTTP (REST and Open Inference Protocol) and the protocol's gRPC service.
EXPOSE 8080 8081
# The port VAE_ADDR gives (8080 unless changed at run time).
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 CMD curl -fsS "http://127.0.0.1:${VAE_ADDR##*:}/healthz" || exit 1
ENTRYPOINT ["vae-serve"]
CMD ["serve"]
