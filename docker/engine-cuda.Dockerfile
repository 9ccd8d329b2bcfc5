# baton-engine built with the CUDA backend (`--features cuda`) on NVIDIA's CUDA
# 13 runtime image (driver API, NVRTC and cuBLAS are loaded at run time, so the
# build itself needs no CUDA toolkit). Also ships baton-cuda-bench.
#
# The engine runs on GPU 0 with `--device cuda` (the default `auto` falls back
# to the CPU when no GPU is usable). Not run on this project's machines (no
# GPU, no registry for the base image): see docs/RELIABILITY.md.
#
#   docker build -f docker/engine-cuda.Dockerfile -t baton/engine-cuda .
#   docker run --gpus all -v $PWD/.cache/models:/models:ro -p 8000:8000 baton/engine-cuda \
#     --model /models/SmolLM2-135M-Instruct.Q4_1.gguf --device cuda --host 0.0.0.0 --port 8000
# Prebuilt (host: cargo build --release -p baton-native --features cuda --bins;
# copy baton-engine → bin/baton-engine-cuda, baton-cuda-bench → bin/):
#   docker build -f docker/engine-cuda.Dockerfile --target prebuilt target/docker-context
ARG BUILDER_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04

FROM ${RUNTIME_IMAGE} AS runtime-base
RUN set -eux; \
    if ! command -v curl >/dev/null; then \
      apt-get update; \
      apt-get install -y --no-install-recommends curl ca-certificates; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --gid 10001 baton; \
    useradd --uid 10001 --gid baton --create-home --home-dir /home/baton \
      --shell /usr/sbin/nologin baton; \
    mkdir -p /models

FROM runtime-base AS app
# NVRTC's JIT cache lives in $HOME/.nv/ComputeCache (mount a volume there to
# keep the ~11 s first-start compile across restarts).
ENV BATON_PORT=8000 RUST_LOG=info HOME=/home/baton \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER baton:baton
VOLUME ["/models"]
EXPOSE 8000 8001
HEALTHCHECK --interval=5s --timeout=3s --start-period=120s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${BATON_PORT}/health" >/dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/baton-engine"]
CMD ["--model", "/models/model.gguf", "--device", "cuda", "--host", "0.0.0.0", "--port", "8000"]

FROM app AS prebuilt
COPY bin/baton-engine-cuda /usr/local/bin/baton-engine
COPY bin/baton-cuda-bench /usr/local/bin/

FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p baton-native --features cuda --bins \
 && mkdir -p /out \
 && cp target/release/baton-engine target/release/baton-cuda-bench /out/ \
 && strip --strip-debug /out/*

FROM app AS runtime
COPY --from=builder /out/baton-engine /out/baton-cuda-bench /usr/local/bin/
