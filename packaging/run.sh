#!/usr/bin/env bash
# Builds Cradle and runs a single node with embedded defaults (data in
# ./data, HTTPS API on 8443). Extra arguments go to `cradle server`.
set -euo pipefail
cd "$(dirname "$0")/.."
# rustup (if install-deps.sh just ran it) puts cargo here without changing
# this shell's PATH.
export PATH="$HOME/.cargo/bin:$PATH"
exec cargo run --release --locked --bin cradle -- server "$@"
