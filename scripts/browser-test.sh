#!/usr/bin/env bash
# The web dashboard (/ui/) in a real browser: Debian's headless Chromium, driven through
# Debian's chromedriver by Selenium (pinned, from PyPI, in a venv of its own; the driver
# is named, so Selenium Manager downloads nothing), against a one-node cluster with a
# worker and then a three-node one (tests/browser/README.md lists what is checked).
# Screenshots of every page, axe results, the nodes' logs and, for a failure, the page
# it failed on go to the output directory.
#
#   scripts/browser-test.sh                        # CI's run
#   scripts/browser-test.sh -k xss -k login        # only tests whose name has "xss" or "login"
#   BROWSER_OUT=/tmp/ui scripts/browser-test.sh    # elsewhere than ${TMPDIR:-/tmp}/raftcron-browser
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
SELENIUM_VERSION=4.27.1
AXE_CORE_PYTHON_VERSION=0.1.0 # ships axe-core 4.4.3 as axe_core_python/axe.min.js
venv="${BROWSER_VENV:-/var/tmp/raftcron-browser-venv}"
out="${BROWSER_OUT:-${TMPDIR:-/tmp}/raftcron-browser}"
scripts/install-deps.sh chromium chromium-driver python3-venv
has() { "$venv/bin/pip" freeze 2>/dev/null | grep -qixF "$1"; }
if ! has "selenium==$SELENIUM_VERSION" || ! has "axe-core-python==$AXE_CORE_PYTHON_VERSION"; then
  python3 -m venv --clear "$venv"
  "$venv/bin/pip" install -q "selenium==$SELENIUM_VERSION" "axe-core-python==$AXE_CORE_PYTHON_VERSION"
fi
cargo build --quiet --bins # raftcron and raftcron-shim, which the worker starts per run
bin="${CARGO_TARGET_DIR:-target}/debug/raftcron"
status=0
# The suite bounds each of its waits; this bounds the whole (SIGTERM lets it stop its
# nodes, worker and browsers; SIGKILL 15 s later if it has not).
timeout --kill-after=15 "${BROWSER_TIMEOUT_S:-240}" \
  "$venv/bin/python" tests/browser/test_dashboard.py "$bin" --out "$out" "$@" || status=$?
[ "$status" -ne 124 ] || echo "browser tests: stopped after ${BROWSER_TIMEOUT_S:-240} s"
echo "browser-test.sh took $((SECONDS - started)) s (screenshots, axe results, logs: $out)"
exit "$status"
