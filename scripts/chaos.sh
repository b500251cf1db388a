#!/usr/bin/env bash
# Runs the chaos suite (jepsen/): installs what it needs (iproute2, iptables, faketime),
# builds raftcron and the harness, and passes the arguments to `jepsen run`.
#
#   scripts/chaos.sh                                    # CI's short runs (~6 min)
#   scripts/chaos.sh --nemesis all --time-limit 1800    # the 30-minute run
#
# Needs root: nodes run in network namespaces, faults use iptables and signals.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh iproute2 iptables faketime
cargo build --quiet --bins  # raftcron and raftcron-shim, which its workers start per run
(cd jepsen && cargo build --quiet)
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  raftcron_bin="$CARGO_TARGET_DIR/debug/raftcron"
  jepsen_bin="$CARGO_TARGET_DIR/debug/jepsen"
else
  raftcron_bin="$PWD/target/debug/raftcron"
  jepsen_bin="$PWD/jepsen/target/debug/jepsen"
fi
if [ "$#" -eq 0 ]; then
  # CI: every nemesis family exactly once, faults of 5 s with 2 s of calm, snapshots every
  # 100 entries, all nodes on lossyfs (the power faults need it) ...
  # A seed per commit: each commit sees other fault choices, and a failure is reproduced
  # with CHAOS_SEED=<the seed printed here>.
  seed="${CHAOS_SEED:-$((16#$(git rev-parse --short=7 HEAD 2>/dev/null || echo 1)))}"
  echo "chaos seed: $seed"
  # The runs and schedule workloads share two workers, which face the worker families.
  "$jepsen_bin" run --bin "$raftcron_bin" --once --seed "$seed" --fault-s 5 --calm-s 2 --snapshot-every 100 \
    --workload register,set,runs,schedule \
    --nemesis kill,kill-majority,kill-all,power,power-majority,power-all,pause,partition,clock,flaky,delay,leader,membership,membership-partition,worker-kill,worker-pause,worker-freeze,worker-partition,worker-leader,all
  # ... then openraft#2080's partial partition, which needs 5 nodes, held 20 s: writes
  # must succeed while it lasts.
  exec "$jepsen_bin" run --bin "$raftcron_bin" --once --seed "$seed" --nodes 5 --fault-s 5 --calm-s 2 \
    --bridge-hold-s 20 --nemesis bridge-hold,partition
fi
exec "$jepsen_bin" run --bin "$raftcron_bin" "$@"
