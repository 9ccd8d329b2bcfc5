# baton-mock-engine: the protocol-faithful fake engine of the end-to-end tests
# (OpenAI / vLLM NIXL / SGLang PD roles, deterministic tokens, fault knobs).
# Useful to try the gateway and the compose stack without a model:
#   docker build -f docker/mock-engine.Dockerfile --target prebuilt -t baton/mock-engine target/docker-context
#   docker run -p 8000:8000 baton/mock-engine --flavor openai --host 0.0.0.0 --port 8000
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
      --shell /usr/sbin/nologin baton

FROM runtime-base AS app
ENV BATON_PORT=8000
USER baton:baton
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${BATON_PORT}/health" >/dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/baton-mock-engine"]
CMD ["--host", "0.0.0.0", "--port", "8000"]

FROM app AS prebuilt
COPY bin/baton-mock-engine /usr/local/bin/

FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p baton-e2e --bin baton-mock-engine \
 && mkdir -p /out && cp target/release/baton-mock-engine /out/ && strip --strip-debug /out/*

FROM app AS runtime
COPY --from=builder /out/baton-mock-engine /usr/local/bin/
