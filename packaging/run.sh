#!/usr/bin/env bash
# Builds Cradle and runs a single node with embedded defaults (data in
# ./data, HTTPS API on 8443). Extra arguments go to `cradle server`.
set -euo pipefail
cd "$(dirname "$0")/.."
# rustup (if install-deps.sh just ran it) puts cargo here without changing
# this shell's PATH.
export PATH="$HOME/.cargo/bin:$PATH"
# Every API connection holds a file descriptor until it ends, and the
# connection cap (--api-max-connections) plus about 1024 descriptors for
# RocksDB and peer RPC must fit under the open-files limit: the stock soft
# limit of 1024 is too low. Raise the soft limit to the hard one, and the
# hard one to 65536 where allowed (root). The server also raises its soft
# limit itself and lowers its cap, with a warning, if it still does not fit.
# The systemd unit, once packaged, sets LimitNOFILE= instead.
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt 65536 ]; then
    ulimit -n 65536 2>/dev/null || true
fi
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
exec cargo run --release --locked --bin cradle -- server "$@"
