#!/usr/bin/env bash
# The whole test suite: unit and integration tests, the API contract test
# (schemathesis against a running server), then (as root, where network
# namespaces can be made) the chaos scenarios. Ends with one line:
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

cargo build --locked --bin cradle
bin="${CARGO_TARGET_DIR:-target}/debug/cradle"

# The contract test: the OpenAPI document against a running server.
echo "== packaging/contract-test.sh"
if packaging/contract-test.sh "$bin"; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
  echo "contract test failed: packaging/contract-test.sh"
fi

if [ "$(id -u)" -eq 0 ] && command -v ip >/dev/null 2>&1; then
  for scenario in chaos/*.sh; do
    [ -f "$scenario" ] || continue
    case $scenario in
      # Not scenarios: the capture remakes test data (QEMU, minutes), the
      # benchmark measures (many minutes, release build); both run by hand.
      chaos/capture-*.sh | chaos/*-bench.sh) continue ;;
    esac
    echo "== $scenario"
    if bash "$scenario" "$bin"; then
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
