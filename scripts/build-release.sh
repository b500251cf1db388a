#!/usr/bin/env bash
# Builds the release `raftcron` binary and copies it to OUT_DIR (default: dist/).
# The Dockerfile's builder stage runs this, and so does CI on the host (through
# cluster/docker/build-images.sh), so what the stage does is exercised.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"
scripts/install-deps.sh
cargo build --release --locked --bin raftcron
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$out"
cp "$target/release/raftcron" "$out/raftcron"
echo "built $out/raftcron ($(du -h "$out/raftcron" | cut -f1))"
