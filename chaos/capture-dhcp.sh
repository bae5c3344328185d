#!/usr/bin/env bash
# Captures the DHCP packets of real clients as test data for the packet codec.
#
# In namespaces of its own (198.18.8.0/24), it runs Kea (raw sockets, memfile)
# on a bridge so that each client gets an OFFER and goes on to REQUEST, and
# tcpdump on that bridge. The clients:
#   dhclient   ISC dhclient, in a client namespace
#   udhcpc     busybox udhcpc, in a client namespace
#   ipxe-bios  QEMU (TCG, 128 MiB, SeaBIOS) booting from the network with the
#              iPXE ROM of ipxe-qemu on an e1000: iPXE is QEMU's PXE ROM, so
#              its first DISCOVER is both "a PXE ROM" and "iPXE" (user class
#              iPXE, option 175)
#   ovmf       QEMU (TCG, 256 MiB) with OVMF and a virtio NIC without option
#              ROM: the UEFI firmware's own PXE client (NetworkPkg PxeBcDxe)
# and saves the first DISCOVER and REQUEST of each, UDP payload only, as
# tests/data/dhcp/<client>-<type>.bin (and the whole capture as
# <dir>/capture.pcap).
#
# Usage: sudo chaos/capture-dhcp.sh [OUT_DIR]   (default tests/data/dhcp)
#        CAPTURE_CLIENTS="dhclient udhcpc ipxe-bios ovmf" picks clients.
# Needs root, iproute2, python3, tcpdump, kea-dhcp4-server, busybox,
# isc-dhcp-client, qemu-system-x86, ipxe-qemu, ovmf (packaging/install-deps.sh).

set -euo pipefail

LAB_SCRIPT=capture-dhcp.sh
LAB_TAG="cd"
LAB_DEADLINE_S=400
LAB_SUMMARY_PREFIX=capture
ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib/dhcp-lab.sh
source "$ROOT_DIR/chaos/lib/dhcp-lab.sh"
PCAP_PY="$ROOT_DIR/chaos/lib/dhcp_pcap.py"

readonly NS_LAN="${LAB_PFX}-lan"   # bridge, Kea, tcpdump, the VMs' taps
readonly NS_DH="${LAB_PFX}-dh"     # dhclient
readonly NS_UD="${LAB_PFX}-ud"     # udhcpc
readonly BR=cd-br0
readonly SRV_IP=198.18.8.1
readonly VM_BIOS_S=90 VM_UEFI_S=150 CLIENT_S=30
readonly BIOS_MEM_MIB=128 UEFI_MEM_MIB=256
declare -A MAC=(
    [dhclient]=52:54:00:cd:00:01 [udhcpc]=52:54:00:cd:00:02
    [ipxe-bios]=52:54:00:cd:00:03 [ovmf]=52:54:00:cd:00:04
)
# SMBIOS UUIDs, so that option 97 carries a machine GUID as on real hardware.
readonly UUID_BIOS=8c9d0e1f-2a3b-4c5d-8e6f-7a8b9c0d1e2f
readonly UUID_UEFI=1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b
CLIENTS=${CAPTURE_CLIENTS:-dhclient udhcpc ipxe-bios ovmf}

build() {
    lab_add_ns "$NS_LAN"
    lab_bridge "$NS_LAN" "$BR"
    ip -n "$NS_LAN" addr add "$SRV_IP/24" dev "$BR"
    lab_add_ns "$NS_DH"
    lab_attach "$NS_LAN" "$BR" "$NS_DH" cd-dhe "${MAC[dhclient]}"
    lab_add_ns "$NS_UD"
    lab_attach "$NS_LAN" "$BR" "$NS_UD" cd-ude "${MAC[udhcpc]}"
    kea_config "$LAB_WORK/kea.json" "$BR" raw 198.18.8.0/24 "198.18.8.100 - 198.18.8.200" \
        "$LAB_WORK/leases4.csv" 600 \
        ', "next-server": "198.18.8.1", "boot-file-name": "undionly.kpxe", "option-data": [ { "name": "routers", "data": "198.18.8.1" } ]'
    kea_start "$NS_LAN" "$LAB_WORK/kea.json" "$LAB_WORK/kea.out"
    wait_until "Kea listening" 15 udp_listening "$NS_LAN" 67 || abort "Kea did not start: $(tail -n 5 "$LAB_WORK/kea.out")"
    lab_bg ip netns exec "$NS_LAN" tcpdump -i "$BR" -U -s 0 -w "$LAB_WORK/capture.pcap" \
        'udp and (port 67 or port 68)' 2>"$LAB_WORK/tcpdump.err" 3>&-
    TCPDUMP_PID=$LAB_LAST_PID
    wait_until "tcpdump listening" 10 grep -q 'listening on' "$LAB_WORK/tcpdump.err" ||
        abort "tcpdump did not start: $(cat "$LAB_WORK/tcpdump.err")"
}

# seen CLIENT TYPE: the capture holds a TYPE from CLIENT's MAC.
seen() {
    python3 "$PCAP_PY" save "$LAB_WORK/capture.pcap" "${MAC[$1]}" "$2" /dev/null
}

seen_both() { seen "$1" discover && seen "$1" request; }

# A no-op client script: the capture needs only the exchange, and no client
# may touch the host's files (resolv.conf) or routes.
noop_script() {
    printf '#!/bin/sh\nexit 0\n' >"$LAB_WORK/noop.sh"
    chmod 755 "$LAB_WORK/noop.sh"
}

run_dhclient() {
    # Debian's dhclient.conf sends this host's name; the test data carries a
    # fixed one instead.
    sed 's/^send host-name = gethostname();/send host-name "cradle-lab";/' /etc/dhcp/dhclient.conf \
        >"$LAB_WORK/dhclient.conf"
    lab_bg timeout -k 2 "$CLIENT_S" ip netns exec "$NS_DH" dhclient -4 -d -1 -v \
        -cf "$LAB_WORK/dhclient.conf" -lf "$LAB_WORK/dhclient.leases" -pf "$LAB_WORK/dhclient.pid" -sf "$LAB_WORK/noop.sh" \
        cd-dhe >"$LAB_WORK/dhclient.out" 2>&1 3>&-
    CMD[dhclient]="ip netns exec NS dhclient -4 -d -1 -v -cf DEBIAN_CONF_WITH_FIXED_HOSTNAME -lf LEASES -pf PID -sf NOOP_SCRIPT IFACE"
    wait_until "dhclient DISCOVER and REQUEST" "$CLIENT_S" seen_both dhclient || true
    lab_stop_pid "$LAB_LAST_PID"
}

run_udhcpc() {
    lab_bg timeout -k 2 "$CLIENT_S" ip netns exec "$NS_UD" busybox udhcpc -f -q -i cd-ude \
        -t 5 -T 2 -s "$LAB_WORK/noop.sh" >"$LAB_WORK/udhcpc.out" 2>&1 3>&-
    CMD[udhcpc]="ip netns exec NS busybox udhcpc -f -q -i IFACE -t 5 -T 2 -s NOOP_SCRIPT"
    wait_until "udhcpc DISCOVER and REQUEST" "$CLIENT_S" seen_both udhcpc || true
    lab_stop_pid "$LAB_LAST_PID"
}

# run_vm CLIENT TAP SECONDS QEMU_ARGS...: QEMU with a tap on the bridge,
# bounded by SECONDS, stopped once both packets are captured.
run_vm() {
    local client=$1 tap=$2 limit=$3
    shift 3
    ip -n "$NS_LAN" tuntap add dev "$tap" mode tap
    ip -n "$NS_LAN" link set "$tap" master "$BR" up
    lab_bg timeout -k 3 "$limit" ip netns exec "$NS_LAN" qemu-system-x86_64 -accel tcg \
        -nodefaults -display none -serial none -monitor none -no-reboot \
        -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" "$@" \
        >"$LAB_WORK/$client.out" 2>&1 </dev/null 3>&-
    CMD[$client]="qemu-system-x86_64 -accel tcg -nodefaults -display none -serial none -monitor none -no-reboot -netdev tap,id=n0,ifname=TAP,script=no,downscript=no $*"
    wait_until "$client DISCOVER and REQUEST" "$limit" seen_both "$client" || true
    lab_stop_pid "$LAB_LAST_PID"
    ip -n "$NS_LAN" link del "$tap" 2>/dev/null || true
}

declare -A CMD=()

main() {
    local out=${1:-$ROOT_DIR/tests/data/dhcp} c t file
    [[ $out == /* ]] || out="$PWD/$out"
    local tool
    for tool in ip python3 tcpdump kea-dhcp4 busybox dhclient qemu-system-x86_64; do
        command -v "$tool" >/dev/null || { echo "error: $tool is required (packaging/install-deps.sh)" >&2; exit 2; }
    done
    lab_init
    mkdir -p "$out"
    noop_script
    build
    pass "lab up: Kea on $NS_LAN/$BR ($SRV_IP), tcpdump on $BR"
    for c in $CLIENTS; do
        log "=== $c (${MAC[$c]}) ==="
        case $c in
            dhclient) run_dhclient ;;
            udhcpc) run_udhcpc ;;
            ipxe-bios)
                run_vm ipxe-bios cd-tb "$VM_BIOS_S" -m "$BIOS_MEM_MIB" -boot n -uuid "$UUID_BIOS" \
                    -device "e1000,netdev=n0,mac=${MAC[ipxe-bios]},romfile=/usr/lib/ipxe/qemu/pxe-e1000.rom" ;;
            ovmf)
                run_vm ovmf cd-tu "$VM_UEFI_S" -m "$UEFI_MEM_MIB" -boot n -uuid "$UUID_UEFI" -bios /usr/share/qemu/OVMF.fd \
                    -device "virtio-net-pci,netdev=n0,mac=${MAC[ovmf]},romfile=" ;;
            *) fail "unknown client $c"; continue ;;
        esac
        for t in discover request; do
            file="$out/$c-$t.bin"
            if python3 "$PCAP_PY" save "$LAB_WORK/capture.pcap" "${MAC[$c]}" "$t" "$file"; then
                pass "$c: $t captured ($(stat -c %s "$file") bytes) -> ${file#"$ROOT_DIR"/}"
            else
                fail "$c: no $t captured"
            fi
        done
        log "command: ${CMD[$c]:-}"
    done
    lab_stop_pid "$TCPDUMP_PID"
    cp "$LAB_WORK/capture.pcap" "$out/capture.pcap"
    python3 "$PCAP_PY" list "$out/capture.pcap" | sed 's/^/  /' >&3
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
