#!/usr/bin/env bash
# Builds the images the compose cluster runs, with no container registry:
#   debian:bookworm-slim   made locally (debootstrap --variant=minbase, docker import) when
#                          absent, with the runtime's libraries preinstalled; the
#                          Dockerfile's base, so FROM finds it without pulling
#   raftcron:local         the Dockerfile's `prebuilt` target around the host-built binary
#   raftcron-haproxy:local a debootstrap rootfs with Debian's haproxy
#   raftcron-prometheus:local  one with Debian's prometheus (the compose `monitoring` profile)
# Base images are cached: an existing tag is reused (REBUILD_BASE=1 forces a rebuild).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
t0=$SECONDS
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
work="${ROOTFS_DIR:-/var/tmp/raftcron-rootfs}"

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# debootstrap SUITE-DIR INCLUDE TAG CHANGES...: a minimal Debian imported as an image.
import_rootfs() {
  local dir=$1 include=$2 tag=$3
  shift 3
  if have_image "$tag" && [ -z "${REBUILD_BASE:-}" ]; then
    echo "image $tag exists; reusing it"
    return
  fi
  command -v debootstrap >/dev/null || scripts/install-deps.sh debootstrap
  rm -rf "$dir"
  mkdir -p "$dir"
  echo "debootstrap bookworm into $dir (+ $include)"
  debootstrap --variant=minbase --include="$include" bookworm "$dir" "$mirror" >"$dir.log" 2>&1 ||
    { tail -20 "$dir.log"; exit 1; }
  # Slim it like the official image: no apt lists, docs or caches.
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/usr/share/doc/* "$dir"/usr/share/man/*
  tar -C "$dir" -c . | docker import "$@" - "$tag" >/dev/null
  rm -rf "$dir"
  echo "imported $tag"
}

import_rootfs "$work/base" librocksdb7.8,ca-certificates debian:bookworm-slim \
  --change 'CMD ["bash"]'
import_rootfs "$work/haproxy" haproxy,ca-certificates raftcron-haproxy:local \
  --change 'USER haproxy' \
  --change 'CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]'
# The package makes /var/lib/prometheus/metrics2 its user's (the dir above it is root's):
# the TSDB goes there, and the compose volume mounted on /var/lib/prometheus starts from
# it, ownership included.
import_rootfs "$work/prometheus" prometheus,ca-certificates raftcron-prometheus:local \
  --change 'USER prometheus' \
  --change 'WORKDIR /var/lib/prometheus/metrics2' \
  --change 'ENTRYPOINT ["/usr/bin/prometheus"]' \
  --change 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/var/lib/prometheus/metrics2"]'
echo "base images ready in $((SECONDS - t0))s"

scripts/build-release.sh dist
docker build --target prebuilt -t raftcron:local -f Dockerfile "$root"
echo "raftcron:local: $(docker image inspect raftcron:local --format '{{.Size}}' | awk '{printf "%.1f MB", $1/1e6}')"
echo "images built in $((SECONDS - t0))s"
