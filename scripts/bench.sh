#!/usr/bin/env bash
# raftcron's benchmarks, side by side with etcd, in one run: writes (wrk), failover
# (direct and through HAProxy), firing and runs. Writes bench/results/<date>.md with the
# tables and SVG plots; bench/README.md explains how to read them.
#
#   scripts/bench.sh                    the full run (~25 min on 2 cores)
#   scripts/bench.sh --quick            a few seconds per row (CI: proves the script works)
#   scripts/bench.sh --baseline REV     also build REV (a git worktree, its own target dir)
#                                       and measure it in the same run: before/after tables
#   scripts/bench.sh --only writes,failover   a subset (writes, failover, firing, runs, scale)
#   scripts/bench.sh --only scale --scale 100000,1000000   task counts of the scale phase
#   scripts/bench.sh --only scale --scale 1000000 --scale-seed snapshot --scale-runs-per-task 10
#                                       the scale phase from a generated state (raftcron debug
#                                       generate + snapshot restore) instead of loading via the API
#
# Needs root or sudo for the Debian packages (etcd-server, wrk, haproxy) on first use.
# All traffic stays on 127.0.0.1; every phase is bounded in count and time.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/raftcron-target}"
args=()
baseline=""
while (($#)); do
  case "$1" in
    --baseline) baseline="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done

t=$SECONDS
scripts/install-deps.sh etcd-server wrk haproxy python3-matplotlib
cargo build --release --locked --bins --benches
builds=(--build "now=$PWD:$CARGO_TARGET_DIR")
if [ -n "$baseline" ]; then
  tree="/var/tmp/raftcron-baseline-$(git rev-parse --short "$baseline")"
  [ -d "$tree" ] || git worktree add --detach "$tree" "$baseline"
  (cd "$tree" && CARGO_TARGET_DIR="$CARGO_TARGET_DIR-baseline" cargo build --release --locked --bins --benches)
  builds=(--build "before=$tree:$CARGO_TARGET_DIR-baseline" --build "after=$PWD:$CARGO_TARGET_DIR")
fi
echo "bench: built in $((SECONDS - t)) s"
# Debian's python3, where python3-matplotlib is installed (not a pyenv or venv python).
/usr/bin/python3 bench/bench.py "${builds[@]}" "${args[@]}"
echo "bench: done in $((SECONDS - t)) s"
