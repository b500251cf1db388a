#!/usr/bin/env bash
# The API contract: schemathesis (pinned, from PyPI, in a venv of its own) with every
# check against `raftcron dev`'s /api/openapi.json — no 5xx, responses as documented, no
# schema-valid request refused, no status code the document does not list, no invalid
# request accepted. Cluster membership writes are left out (they would change the
# cluster under test). A fixed seed and a bounded number of examples keep it
# reproducible and within a few minutes.
#
#   scripts/schemathesis.sh              # CI's run
#   EXAMPLES=200 scripts/schemathesis.sh # a longer one
set -euo pipefail
cd "$(dirname "$0")/.."
SCHEMATHESIS_VERSION=4.32.5
venv="${SCHEMATHESIS_VENV:-/var/tmp/raftcron-schemathesis-$SCHEMATHESIS_VERSION}"
scripts/install-deps.sh python3-venv
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi
cargo build --quiet --bins  # raftcron and raftcron-shim, which its workers start per run
bin="${CARGO_TARGET_DIR:-target}/debug/raftcron"
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
key="schemathesis-admin-key"
RAFTCRON_API_KEY="$key" "$bin" dev --data-dir "$dir/data" --http "127.0.0.1:$port" --no-worker >"$dir/dev.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$port/api/health" >/dev/null 2>&1 && break
  sleep 0.2
done
cd scripts
RAFTCRON_ST_KEY="$key" SCHEMATHESIS_HOOKS=schemathesis_hooks "$venv/bin/schemathesis" --config-file schemathesis.toml \
  run "http://127.0.0.1:$port/api/openapi.json" --checks all \
  --exclude-path-regex '^/api/cluster/(nodes|transfer-leader)' \
  --seed "${SEED:-20261130}" --max-examples "${EXAMPLES:-25}" --request-timeout 15 \
  --suppress-health-check all
