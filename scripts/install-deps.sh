#!/usr/bin/env bash
# Installs the Debian packages that building and testing raftcron need, when missing:
#   librocksdb-dev  RocksDB 7.8 from Debian, linked instead of compiling the bundled C++
#                   (a cold build drops from ~19 min to ~2 min on 2 cores)
#   libclang-dev    bindgen, for the RocksDB bindings
# Extra package names given as arguments are installed too (the chaos suite passes
# iproute2 iptables faketime).
set -euo pipefail
pkgs=(librocksdb-dev libclang-dev "$@")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
