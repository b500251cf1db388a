#!/usr/bin/env bash
# Builds the release `raftcron` binary and copies it to OUT_DIR (default: dist/).
# The Dockerfile's builder stage runs this, and so does CI on the host (through
# cluster/docker/build-images.sh), so what the stage does is exercised.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"
scripts/install-deps.sh
cargo build --release --locked --bin raftcron --bin raftcron-shim
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$out"
# raftcron-shim: the per-run supervisor alone (no RocksDB), which a worker starts for
# every run when it sits beside raftcron.
for bin in raftcron raftcron-shim; do
  cp "$target/release/$bin" "$out/$bin"
  echo "built $out/$bin ($(du -h "$out/$bin" | cut -f1))"
done
