#!/usr/bin/env bash
# The whole test suite: unit and integration tests, then (as root, where
# network namespaces can be made) the chaos scenarios. Ends with one line:
# "all: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

log=$(mktemp)
trap 'rm -f "$log"' EXIT

cargo test --workspace --locked 2>&1 | tee "$log"
cargo_status=${PIPESTATUS[0]}
passed=$(awk '/^test result:/ {s += $4} END {print s + 0}' "$log")
failed=$(awk '/^test result:/ {s += $6} END {print s + 0}' "$log")
if [ "$cargo_status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  failed=1 # a build failure or a crashed test binary
fi

if [ "$(id -u)" -eq 0 ] && command -v ip >/dev/null 2>&1; then
  cargo build --locked --bin cradle
  for scenario in chaos/*.sh; do
    [ -f "$scenario" ] || continue
    echo "== $scenario"
    if bash "$scenario" target/debug/cradle; then
      passed=$((passed + 1))
    else
      failed=$((failed + 1))
      echo "chaos scenario failed: $scenario"
    fi
  done
else
  echo "chaos scenarios skipped: they need root and iproute2 (network namespaces)"
fi

echo "all: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
