#!/usr/bin/env bash
# Installs what building and testing Cradle needs on Debian 12: a C toolchain
# and clang (bindgen), Debian's RocksDB to link against (compiling RocksDB
# from source takes most of an hour on 2 cores), protoc, iproute2 for the
# namespace chaos tests, python3-venv for the contract test's venv, and
# etcd-server, the reference cradle-cluster-bench measures Cradle against (the
# bench runs its own members on 127.0.1.x; it never uses the service Debian
# may start on install); and for the DHCP tests: kea-admin (perfdhcp, the
# load generator), kea-dhcp4-server (the peer the DHCP lab and benchmark
# compare with), busybox (udhcpc) and isc-dhcp-client (dhclient) as real
# clients, tcpdump, and qemu-system-x86 + ipxe-qemu + ovmf to capture the
# DHCP packets of iPXE and UEFI firmware (chaos/capture-dhcp.sh). Services
# these packages ship are kept from starting while installing (the chaos
# scripts run their own servers inside network namespaces).
# Installs Rust with rustup only if cargo is missing.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

packages=(build-essential pkg-config clang libclang-dev librocksdb-dev libsnappy-dev
          protobuf-compiler iproute2 python3 python3-venv ca-certificates curl etcd-server
          kea-admin kea-dhcp4-server busybox isc-dhcp-client tcpdump
          qemu-system-x86 ipxe-qemu ovmf)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  # kea-dhcp4-server would otherwise start a DHCP server on the host; a
  # policy-rc.d that denies every start is put in place only when none exists.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, from cradle install-deps.sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  rc=0
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" || rc=$?
  if [ "$made_policy" -eq 1 ]; then
    $SUDO rm -f /usr/sbin/policy-rc.d
  fi
  [ "$rc" -eq 0 ] || exit "$rc"
fi

if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  # Debian 12's packaged Rust is too old for this workspace.
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
