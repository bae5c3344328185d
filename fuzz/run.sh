#!/usr/bin/env bash
# Builds the DHCP packet fuzz target and runs it for SECONDS (default 60),
# seeded with the captured client packets. Prints libFuzzer's final stats
# (stat::number_of_executed_units is the exec count). A crash leaves its
# input under fuzz/artifacts/dhcp_packet/ and fails the script.
#
# Usage: fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH"
seconds="${1:-60}"
case "$seconds" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# libFuzzer needs nightly flags; use the nightly toolchain when installed,
# else let stable accept them.
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

# The fuzz crate has no lock file of its own: start from the project's, so
# it builds the same dependency versions (cargo adds libfuzzer-sys).
cp ../Cargo.lock Cargo.lock

corpus=corpus/dhcp_packet
mkdir -p "$corpus"
for capture in ../tests/data/dhcp/*.bin; do
    if [ -e "$capture" ]; then cp "$capture" "$corpus/"; fi
done

# No sanitizer: the crate forbids unsafe code, so AddressSanitizer would
# only slow the run; debug assertions (overflow checks) stay on.
cargo "${toolchain[@]}" fuzz run --sanitizer none dhcp_packet "$corpus" -- \
    -max_total_time="$seconds" -max_len=1600 -print_final_stats=1
