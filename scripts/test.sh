#!/usr/bin/env bash
# Runs the whole test suite (unit, multi-node in-process clusters, real processes with
# SIGKILL), installing the system packages the build needs first. Uses cargo-nextest
# when installed (each test in its own process), cargo test otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
# faketime: the clock-skew process test runs a node under libfaketime; python3: the
# python executor tests.
scripts/install-deps.sh faketime python3
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --no-fail-fast "$@"
else
  exec cargo test --no-fail-fast "$@"
fi
