#!/usr/bin/env bash
# Installs what building and testing Cradle needs on Debian 12: a C toolchain
# and clang (bindgen), Debian's RocksDB to link against (compiling RocksDB
# from source takes most of an hour on 2 cores), protoc, iproute2 for the
# namespace chaos tests, python3-venv for the contract test's venv, and
# etcd-server, the reference cradle-cluster-bench measures Cradle against (the
# bench runs its own members on 127.0.1.x; it never uses the service Debian
# may start on install).
# Installs Rust with rustup only if cargo is missing.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

packages=(build-essential pkg-config clang libclang-dev librocksdb-dev libsnappy-dev
          protobuf-compiler iproute2 python3 python3-venv ca-certificates curl etcd-server)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  # Debian 12's packaged Rust is too old for this workspace.
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
