#!/usr/bin/env bash
# Builds and runs raftcron with the given arguments, installing the system packages the
# build needs first. Quick start: scripts/run.sh dev
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# raftcron-shim too: a worker starts it for every run when it sits beside raftcron.
cargo build --quiet --bins
exec cargo run --quiet --bin raftcron -- "$@"
