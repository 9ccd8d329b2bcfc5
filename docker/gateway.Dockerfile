# baton-gateway (and the baton-bench load generator) in a small Debian image.
#
# From source (BuildKit; repository root as context):
#   docker build -f docker/gateway.Dockerfile -t baton/gateway .
# From binaries built on the host (no Rust image needed; see docker/README.md):
#   docker build -f docker/gateway.Dockerfile --target prebuilt -t baton/gateway target/docker-context
#
# Stage order matters: the legacy (non-BuildKit) builder runs every stage up to
# --target, so `prebuilt` comes before the Rust builder stage.
ARG BUILDER_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- runtime base: glibc, curl for HEALTHCHECK, an unprivileged user --------
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
ENV BATON_PORT=30000 RUST_LOG=info
USER baton:baton
EXPOSE 30000 29000
# Liveness of the gateway process (GET /health answers 200 while it runs;
# /readiness says whether every pool has a healthy worker).
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${BATON_PORT}/health" >/dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/baton-gateway"]
CMD ["--host", "0.0.0.0", "--port", "30000", "--prometheus-host", "0.0.0.0", "--prometheus-port", "29000"]

# ---- target `prebuilt`: binaries from the context folder ---------------------
# Context: a folder with bin/baton-gateway and bin/baton-bench
# (docker/stack.sh fills target/docker-context from target/release).
FROM app AS prebuilt
COPY bin/baton-gateway bin/baton-bench /usr/local/bin/

# ---- builder: compile from source --------------------------------------------
FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p baton-gateway -p baton-loadgen \
 && mkdir -p /out \
 && cp target/release/baton-gateway target/release/baton-bench /out/ \
 && strip --strip-debug /out/*

# ---- default target: runtime image from the builder --------------------------
FROM app AS runtime
COPY --from=builder /out/baton-gateway /out/baton-bench /usr/local/bin/
