# baton-engine, Baton's CPU inference engine, in a small Debian image. The
# model is NOT in the image: mount it (e.g. -v $PWD/.cache/models:/models:ro).
#
# From source (BuildKit; repository root as context):
#   docker build -f docker/engine.Dockerfile -t baton/engine .
# From binaries built on the host:
#   docker build -f docker/engine.Dockerfile --target prebuilt -t baton/engine target/docker-context
#
# Run (decode role; prefill engines also need --kv-host <their name> --kv-port 8001):
#   docker run -v $PWD/.cache/models:/models:ro -p 8000:8000 baton/engine \
#     --model /models/SmolLM2-135M-Instruct.Q4_1.gguf --host 0.0.0.0 --port 8000 --role decode
ARG BUILDER_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUNTIME_IMAGE} AS runtime-base
RUN set -eux; \
    if ! command -v curl >/dev/null; then \
      apt-get update; \
      apt-get install -y --no-install-recommends curl ca-certificates; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --gid 10001 baton; \
    useradd --uid 10001 --gid baton --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin baton; \
    mkdir -p /models

FROM runtime-base AS app
ENV BATON_PORT=8000 RUST_LOG=info
USER baton:baton
VOLUME ["/models"]
# 8000: OpenAI API + /metrics; 8001: KV pull listener of prefill engines.
EXPOSE 8000 8001
# The model takes a few seconds to load before /health answers.
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${BATON_PORT}/health" >/dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/baton-engine"]
CMD ["--model", "/models/model.gguf", "--host", "0.0.0.0", "--port", "8000"]

# ---- target `prebuilt`: binaries from the context folder (bin/baton-engine) --
FROM app AS prebuilt
COPY bin/baton-engine /usr/local/bin/

FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p baton-native --bin baton-engine \
 && mkdir -p /out \
 && cp target/release/baton-engine /out/ \
 && strip --strip-debug /out/*

FROM app AS runtime
COPY --from=builder /out/baton-engine /usr/local/bin/
