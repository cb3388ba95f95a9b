# syntax=docker/dockerfile:1
# The three wscluster images, from the repository root (the whole Cargo workspace is the build
# context):
#
#   docker build --target operator -t ghcr.io/wscluster/wscluster-operator:0.1.0 .
#   docker build --target proxy    -t ghcr.io/wscluster/wscluster-proxy:0.1.0 .
#   docker build --target node     -t ghcr.io/wscluster/wscluster-node:0.1.0 .
#
# One build stage compiles the three release binaries against the committed Cargo.lock
# (--locked); BuildKit caches it, so the second and third image reuse it. Each image is
# distroless: glibc and CA certificates only, no shell, no package manager.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and target dir between builds; the binaries are copied
# out of the cached target dir because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p wscluster-node --bin wscluster-node \
      -p wscluster-proxy --bin wscluster-proxy \
      -p wscluster-operator --bin wscluster-operator \
 && for bin in wscluster-node wscluster-proxy wscluster-operator; do \
      install -D -m 0755 "target/release/$bin" "/out/$bin"; \
    done

# What every image shares.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.source="https://github.com/wscluster/wscluster" \
      org.opencontainers.image.licenses="Apache-2.0"
# 65532 is distroless's "nonroot" user; numeric so the kubelet can check runAsNonRoot.
USER 65532:65532

FROM runtime AS node
LABEL org.opencontainers.image.title="wscluster-node" \
      org.opencontainers.image.description="Reference stateful WebSocket server for wscluster (WebSocket, API, /healthz, /readyz, /metrics on 8080)"
COPY --from=build /out/wscluster-node /usr/local/bin/wscluster-node
# 8080: WebSocket, HTTP API, /healthz, /readyz and /metrics (--listen).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/wscluster-node"]

FROM runtime AS proxy
LABEL org.opencontainers.image.title="wscluster-proxy" \
      org.opencontainers.image.description="wscluster proxy: routes WebSocket upgrades and HTTP to the owner of each key"
COPY --from=build /out/wscluster-proxy /usr/local/bin/wscluster-proxy
# 8080: clients (--listen); 9090: /healthz, /readyz, /metrics (--admin-listen).
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/wscluster-proxy"]

# Last, so a plain `docker build .` gives the operator.
FROM runtime AS operator
LABEL org.opencontainers.image.title="wscluster-operator" \
      org.opencontainers.image.description="wscluster operator: reconciles WsClusters and streams their rings"
COPY --from=build /out/wscluster-operator /usr/local/bin/wscluster-operator
# 7400: ring stream (--ring-listen); 9090: /healthz, /readyz, /metrics (--admin-listen).
EXPOSE 7400 9090
ENTRYPOINT ["/usr/local/bin/wscluster-operator"]
CMD ["run"]
