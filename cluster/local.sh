#!/usr/bin/env bash
# A local 3-node raftcron cluster as plain processes on 127.0.0.1:
#   HTTP 8081-8083, RPC 9081-9083, configs config/node{1,2,3}.toml, data and logs in data/.
#
#   cluster/local.sh up      build, start the three nodes, wait until they have a leader
#   cluster/local.sh status  the cluster view (members, leader, term, indexes)
#   cluster/local.sh down    SIGTERM the nodes (the leader hands over first) and wait
#
# The admin API key is $RAFTCRON_API_KEY, or "local-dev-key" when unset.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAFTCRON_API_KEY="${RAFTCRON_API_KEY:-local-dev-key}"
bin="${CARGO_TARGET_DIR:-target}/debug/raftcron"

up() {
  scripts/install-deps.sh
  cargo build --quiet --bin raftcron
  mkdir -p data
  for i in 1 2 3; do
    if [ -f "data/node$i.pid" ] && kill -0 "$(cat "data/node$i.pid")" 2>/dev/null; then
      echo "node $i already running (pid $(cat "data/node$i.pid"))"
      continue
    fi
    "$bin" serve --config "config/node$i.toml" >>"data/node$i.log" 2>&1 &
    echo $! >"data/node$i.pid"
    echo "node $i started (pid $!, log data/node$i.log)"
  done
  for _ in $(seq 1 100); do
    healthy=0
    for i in 1 2 3; do
      if curl -fsS "http://127.0.0.1:808$i/api/health" >/dev/null 2>&1; then healthy=$((healthy + 1)); fi
    done
    if [ "$healthy" -eq 3 ]; then
      echo "cluster up: http://127.0.0.1:8081/api (and 8082, 8083); API key: $RAFTCRON_API_KEY"
      return 0
    fi
    sleep 0.2
  done
  echo "error: the cluster did not elect a leader within 20s; see data/node*.log" >&2
  return 1
}

down() {
  for i in 1 2 3; do
    [ -f "data/node$i.pid" ] || continue
    pid=$(cat "data/node$i.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "data/node$i.pid"
    echo "node $i stopped"
  done
}

status() {
  "$bin" cluster --server http://127.0.0.1:8081 status
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
