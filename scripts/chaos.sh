#!/usr/bin/env bash
# Runs the chaos suite (jepsen/): installs what it needs (iproute2, iptables, faketime),
# builds raftcron and the harness, and passes the arguments to `jepsen run`.
#
#   scripts/chaos.sh                                    # CI's short run (~2 min)
#   scripts/chaos.sh --nemesis all --time-limit 1800    # the 30-minute run
#
# Needs root: nodes run in network namespaces, faults use iptables and signals.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh iproute2 iptables faketime
cargo build --quiet --bin raftcron
(cd jepsen && cargo build --quiet)
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  raftcron_bin="$CARGO_TARGET_DIR/debug/raftcron"
  jepsen_bin="$CARGO_TARGET_DIR/debug/jepsen"
else
  raftcron_bin="$PWD/target/debug/raftcron"
  jepsen_bin="$PWD/jepsen/target/debug/jepsen"
fi
if [ "$#" -eq 0 ]; then
  # Every nemesis family once: 8 faults of 5 s with 3 s of calm after each.
  set -- --nemesis kill,pause,partition,clock,flaky,delay,membership,all --time-limit 85 --fault-s 5 --calm-s 3 --seed "${CHAOS_SEED:-1}"
fi
exec "$jepsen_bin" run --bin "$raftcron_bin" "$@"
