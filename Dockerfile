# syntax=docker/dockerfile:1
# The scaivault-audit image: the release binary on distroless (glibc, CA certificates, no shell),
# running as uid/gid 65532 with the data directory on the /data volume.
#
#   docker build -t scaivault-audit:0.1.0 .
#   docker run --rm -p 8080:8080 -v scaivault-audit-data:/data scaivault-audit:0.1.0
#
# Not built by this repository's CI (its machines have no Docker); docs/deployment.md says so.

# ---- build ----------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Manifests first: the dependency download layer survives edits of the sources.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo fetch --locked \
    && rm -rf src
COPY . .
# The target directory is a BuildKit cache mount (kept between builds, not part of the layer),
# so the binary is copied out of it.
RUN --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin scaivault-audit \
    && install -D -m 0755 target/release/scaivault-audit /out/scaivault-audit \
    && mkdir -p /out/data /out/exports

# ---- runtime --------------------------------------------------------------------------------
# cc: glibc and libgcc for the Rust binary (same Debian 12 glibc as the builder), CA certificates
# for ScaiKey, ScaiVault and the object stores. ':nonroot' runs as 65532:65532.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="scaivault-audit" \
      org.opencontainers.image.description="Audit-log service of the ScaiVault secrets manager" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/scaivault-audit /usr/local/bin/scaivault-audit
# An empty /data owned by the runtime user, so a fresh named volume is writable.
COPY --from=build --chown=65532:65532 /out/data /data
# The standalone default root of `file` export destinations (beside /data); unused in Kubernetes.
COPY --from=build --chown=65532:65532 /out/exports /exports
USER 65532:65532
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/scaivault-audit"]
CMD ["serve", "--data-dir", "/data", "--listen", "0.0.0.0:8080"]
# No shell or curl in the image: the binary probes itself, over HTTPS when TLS_CERT_FILE /
# TLS_KEY_FILE are set (the same environment as the server). Give it the --listen of CMD when
# you change that.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/scaivault-audit", "healthcheck", "--listen", "0.0.0.0:8080"]
