# raftcron container image: a Rust build stage and a debian:bookworm-slim runtime.
#
#   docker build -t raftcron .                       # builds from source (rust:1-bookworm)
#   docker build --target prebuilt -t raftcron .     # packages dist/raftcron, built on the host
#                                                    # by scripts/build-release.sh
#
# Stage order matters for Docker's legacy builder, which processes every stage before the
# target in file order: `prebuilt` comes before `builder`, so packaging a prebuilt binary
# never needs the Rust image. `cluster/docker/build-images.sh` makes both base images
# locally when no registry is reachable.
#
# Configuration comes from RAFTCRON_<SECTION>_<KEY> environment variables and/or a config
# file mounted at /etc/raftcron/raftcron.toml (`serve --config ...`); data lives in the
# /var/lib/raftcron volume. Runs as the unprivileged user `raftcron`.

ARG RUNTIME_BASE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1-bookworm

# --- runtime base: only what the binary links (Debian's RocksDB 7.8 and its compression
# libraries), plus the user, the data dir and the container contract.
FROM ${RUNTIME_BASE} AS runtime-base
# Extra Debian packages for the tasks a worker runs (e.g. "python3 curl").
ARG EXTRA_PACKAGES=""
RUN set -eux; \
    missing=""; \
    for p in librocksdb7.8 ca-certificates ${EXTRA_PACKAGES}; do \
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"; \
    done; \
    if [ -n "$missing" ]; then \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --system --gid 10001 raftcron; \
    useradd --system --uid 10001 --gid raftcron --home-dir /var/lib/raftcron --shell /usr/sbin/nologin raftcron; \
    mkdir -p /var/lib/raftcron /etc/raftcron; \
    chown raftcron:raftcron /var/lib/raftcron
ENV RAFTCRON_NODE_DATA_DIR=/var/lib/raftcron \
    RAFTCRON_NODE_HTTP_ADDR=0.0.0.0:8080 \
    RAFTCRON_NODE_RPC_ADDR=0.0.0.0:9080
VOLUME ["/var/lib/raftcron"]
WORKDIR /var/lib/raftcron
EXPOSE 8080 9080
USER raftcron
HEALTHCHECK --interval=5s --timeout=4s --start-period=10s --retries=3 CMD ["raftcron", "healthcheck"]
ENTRYPOINT ["raftcron"]
CMD ["serve"]

# --- prebuilt: the runtime with binaries built outside Docker (dist/raftcron and
# dist/raftcron-shim, the per-run supervisor a worker starts beside it).
FROM runtime-base AS prebuilt
COPY dist/raftcron dist/raftcron-shim /usr/local/bin/

# --- builder: the same build script CI runs on the host.
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN scripts/build-release.sh /out

# --- runtime (default target): the runtime with the binary from the builder.
FROM runtime-base AS runtime
COPY --from=builder /out/raftcron /out/raftcron-shim /usr/local/bin/
