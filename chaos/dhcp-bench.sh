#!/usr/bin/env bash
# DHCP benchmark: Kea (memfile), a 1-node and a 3-node Cradle, measured in
# one run by the peer benchmark's dhcp-bench.sh (../shared/peerbench, its
# `ramp` test: the highest DORA rate with < 1 % drops), with perfdhcp as a
# relay agent that sends to one node (198.18.0.1), in the peer benchmark's
# `--servers 3` lab (namespaces pb-hub, pb-cli, pb-srv1..3, 198.18.0.0/24).
# Then the DHCP service gap after SIGKILL of the leader and of a client's
# owner, as real clients (udhcpc, retransmitting every second) see it.
#
# Ends with exactly one line:
#   dhcp-bench: kea=<N>/s cradle1=<N>/s cradle3=<N>/s ratio1=<x.xx> ratio3=<x.xx>
#
# Usage: sudo chaos/dhcp-bench.sh [path-to-cradle-binary]
#        (default target/release/cradle; build it with cargo build --release --bin cradle)
# Environment:
#   PEERBENCH_DIR   the peer benchmark (default ../shared/peerbench beside the workspace)
#   BENCH_PARTS     "throughput failover" (default both)
#   FAILOVER_TRIALS kills of each kind (default 10)
#   FAILOVER_RETRANSMIT_S  the failover clients' retransmission interval
#                   (udhcpc -T, default 1 s, as iPXE's first retries; RFC 2131
#                   clients wait ~4 s, which hides gaps shorter than that)
#   FAILOVER_SERVER cradle (default) | kea: Kea is killed and restarted at once
#                   (it has no partner), which proves the client-side measurement
#   PB_*            passed on to the peer benchmark (PB_REPEAT, PB_PIN, ...)
# Not run in CI (several minutes). Needs root and what packaging/install-deps.sh installs.

set -euo pipefail

LAB_SCRIPT=dhcp-bench.sh
LAB_TAG="cb"
LAB_DEADLINE_S=${BENCH_DEADLINE_S:-1500}
LAB_SUMMARY_PREFIX=dhcp-bench-checks
ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib/dhcp-lab.sh
source "$ROOT_DIR/chaos/lib/dhcp-lab.sh"

PB_DIR=${PEERBENCH_DIR:-$ROOT_DIR/../shared/peerbench}
PARTS=${BENCH_PARTS:-throughput failover}
TRIALS=${FAILOVER_TRIALS:-10}
FO_SERVER=${FAILOVER_SERVER:-cradle}
# The peer benchmark's lab and lease subnet (peerbench/lib.sh, dhcp-bench.sh).
CR_NS=("" pb-srv1 pb-srv2 pb-srv3)
CR_IP=("" 198.18.0.1 198.18.0.2 198.18.0.3)
CR_CLI_NS=pb-cli
CR_NODE_ARGS=bench_node_args
readonly PB_SUBNET=198.18.0.0/15 PB_POOL_START=198.18.1.0 PB_POOL_END=198.19.255.254 PB_LEASE_SECS=120
readonly FO_BOUND_S=20           # one failover client, at most
readonly FO_CLIENTS_LEADER=3     # clients started at each leader kill
readonly FO_RETRANSMIT_S=${FAILOVER_RETRANSMIT_S:-1}
LAB_OWNED=0
KEA_PID=""

bench_node_args() { echo "--dhcp-listen 0.0.0.0:67 --dhcp-interface pb-eth0"; }

lab_hook() {
    local i
    for i in 1 2 3; do
        [[ -n ${CR_PID[i]:-} ]] && LAB_PIDS+=("${CR_PID[i]}")
    done
    [[ -n $KEA_PID ]] && LAB_PIDS+=("$KEA_PID")
    # Our macvlans live in pb-cli, which is not ours to delete.
    ip -n pb-cli -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' |
        grep -E '^pb-fo[0-9]+$' | while read -r l; do ip -n pb-cli link del "$l" 2>/dev/null; done
    if ((LAB_OWNED)); then
        for i in "${LAB_PIDS[@]}"; do kill -TERM "$i" 2>/dev/null; done
        for i in "${LAB_PIDS[@]}"; do lab_stop_pid "$i" 5; done
        "$PB_DIR/lab.sh" down >&3 2>&1 || true
    fi
    return 0
}

# ------------------------------------------------------------ throughput ----

# prepare_cluster N DIR: a fresh N-node cluster in pb-srv1..N with the lease
# subnet, then node 1 stopped: the peer benchmark starts it again as its
# custom server (its DHCP port opens only once the subnet exists, so the
# first ramp step is not spent waiting for the CLI).
prepare_cluster() {
    local n=$1 i
    CR_DIR=$2
    mkdir -p "$CR_DIR"
    cr_form "$n"
    if ((n > 1)); then
        wait_until "$n nodes converged" 60 cr_converged $(seq 1 "$n") || abort "the $n-node cluster did not converge"
    fi
    printf '{"name":"bench","cidr":"%s","pools":[{"start":"%s","end":"%s"}],"lease_secs":%s,"mode":"full"}\n' \
        "$PB_SUBNET" "$PB_POOL_START" "$PB_POOL_END" "$PB_LEASE_SECS" |
        cr_cli 1 subnets create -f - -o json >>"$CR_DIR/client.log" 2>&1 ||
        abort "cradle subnets create failed: $(tail -n 3 "$CR_DIR/client.log")"
    cr_stop 1
    if ((n > 1)); then
        # The other two elect a leader before node 1 returns.
        wait_until "a leader among nodes 2..$n" 30 cr_leader $(seq 2 "$n") >/dev/null ||
            abort "nodes 2..$n elected no leader"
    fi
    log "cluster of $n prepared in $CR_DIR; node 1 stopped for the benchmark to start"
    for ((i = 2; i <= n; i++)); do log "  node $i runs as pid ${CR_PID[i]}"; done
}

# node1_command: the custom server line for the peer benchmark (node 1 on its
# prepared data dir, in the foreground, with the lab's Raft timing).
node1_command() {
    NODE1_CMD=(env "${CR_NODE_ENV[@]}" "$CR_BIN" server --data-dir "$CR_DIR/n1"
        --api-listen "{ip}:8443" --rpc-listen "{ip}:8444" --advertise-host "{ip}"
        --dhcp-listen 0.0.0.0:67 --dhcp-interface "{iface}")
}

# peerbench LABEL ARGS...: the peer benchmark's dhcp-bench.sh (ramp), its
# result lines appended to $LAB_WORK/results.
peerbench() {
    local label=$1
    shift
    log "peerbench: PB_DHCP_TESTS=ramp SRV_NS=pb-srv1 SRV_IP=198.18.0.1 PB_CUSTOM_NAME=$label dhcp-bench.sh $*"
    PB_DHCP_TESTS=ramp SRV_NS=pb-srv1 SRV_IP=198.18.0.1 PB_CUSTOM_NAME=$label \
        "$PB_DIR/dhcp-bench.sh" "$@" 2>"$LAB_WORK/peerbench-$label.err" 3>&- |
        tee -a "$LAB_WORK/results" >&3 || true
    grep -E '^\[.*(ramp|ERROR)' "$LAB_WORK/peerbench-$label.err" | sed 's/^/  /' >&3 || true
}

# rate SERVER_LABEL: the sustainable rate the ramp found (its "offered"), the
# median over PB_REPEAT runs.
rate() {
    awk -v s="$1" '$1 == "DHCP" && $0 ~ (" server=" s " ") && / test=ramp / {
        for (i = 1; i <= NF; i++) if ($i ~ /^offered=/) { split($i, kv, "="); print kv[2] + 0 } }' \
        "$LAB_WORK/results" | sort -g | awk '{ v[++n] = $1 }
        END { if (n == 0) print 0; else if (n % 2) print v[(n + 1) / 2]; else print (v[n / 2] + v[n / 2 + 1]) / 2 }'
}

throughput() {
    local kea c1=0 c3=0 r1 r3
    : >"$LAB_WORK/results"
    if ((CRADLE_OK)); then
        prepare_cluster 1 "$LAB_WORK/c1"
        node1_command
        peerbench cradle1 kea custom -- "${NODE1_CMD[@]}"
        c1=$(rate cradle1)
        prepare_cluster 3 "$LAB_WORK/c3"
        node1_command
        peerbench cradle3 custom -- "${NODE1_CMD[@]}"
        c3=$(rate cradle3)
        # Node 1 back under our control for the failover part.
        cr_restart 1
        wait_until "node 1 back in the cluster" 60 cr_converged 1 2 3 || fail "node 1 did not rejoin"
    else
        peerbench kea kea
    fi
    kea=$(rate kea)
    check "kea measured (ramp: $kea/s)" [ "$kea" -gt 0 ]
    r1=$(awk -v a="$c1" -v b="$kea" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    r3=$(awk -v a="$c3" -v b="$kea" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    BENCH_LINE="dhcp-bench: kea=${kea}/s cradle1=${c1}/s cradle3=${c3}/s ratio1=${r1} ratio3=${r3}"
}

# -------------------------------------------------------------- failover ----

fo_script() {
    cat >"$LAB_WORK/fo-udhcpc.sh" <<EOF
#!/bin/sh
case "\$1" in
    bound|renew) echo "\$(cat /sys/class/net/\$interface/address) \$ip \$lease \$(date +%s.%N)" >>"$LAB_WORK/fo-bound.txt" ;;
esac
exit 0
EOF
    chmod 755 "$LAB_WORK/fo-udhcpc.sh"
    : >"$LAB_WORK/fo-bound.txt"
}

FO_SEQ=0
# fo_client: a fresh macvlan pb-fo<n> in pb-cli; sets FO_IF and FO_MAC.
fo_client() {
    FO_SEQ=$((FO_SEQ + 1))
    FO_IF=pb-fo$FO_SEQ
    FO_MAC=$(printf '02:cb:00:00:%02x:%02x' $((FO_SEQ >> 8)) $((FO_SEQ & 255)))
    ip -n pb-cli link add link pb-eth0 name "$FO_IF" address "$FO_MAC" type macvlan mode bridge
    ip -n pb-cli link set "$FO_IF" up
}

fo_drop() { ip -n pb-cli link del "$1" 2>/dev/null || true; }

# fo_dora IFACE: one DORA by udhcpc, a DISCOVER every FO_RETRANSMIT_S, bounded; its
# stdout ("sending discover", "sending select") is the retransmission record.
fo_dora() {
    timeout -k 2 "$FO_BOUND_S" ip netns exec pb-cli busybox udhcpc -f -q -n \
        -t $((FO_BOUND_S / FO_RETRANSMIT_S + 1)) -T "$FO_RETRANSMIT_S" \
        -i "$1" -s "$LAB_WORK/fo-udhcpc.sh" >"$LAB_WORK/fo-$1.log" 2>&1 3>&- </dev/null
}

# fo_result IFACE MAC T0: "GAP RETRANSMISSIONS" of that client since T0, or
# "none N".
fo_result() {
    local t1 sends
    t1=$(awk -v m="$2" '$1 == m { t = $4 } END { print t }' "$LAB_WORK/fo-bound.txt")
    sends=$(grep -cE '(sending|broadcasting) (discover|select)' "$LAB_WORK/fo-$1.log" || true)
    # A DORA sends one discover and one select; the rest are retransmissions.
    if [[ -n $t1 ]]; then
        awk -v a="$3" -v b="$t1" -v s="$sends" 'BEGIN { printf "%.3f %d\n", b - a, (s > 2 ? s - 2 : 0) }'
    else
        echo "none $sends"
    fi
}

fo_kill() {
    if [[ $FO_SERVER == kea ]]; then
        kill -KILL "$KEA_PID" 2>/dev/null || true
        wait "$KEA_PID" 2>/dev/null || true
    else
        kill -KILL "${CR_PID[$1]}" 2>/dev/null || true
        wait "${CR_PID[$1]}" 2>/dev/null || true
    fi
}

fo_revive() {
    if [[ $FO_SERVER == kea ]]; then
        start_kea
    else
        cr_restart "$1"
        wait_until "node $1 back" 60 cr_converged 1 2 3 || fail "node $1 did not rejoin"
    fi
}

start_kea() {
    mkdir -p "$LAB_WORK/kea"
    kea_config "$LAB_WORK/kea/kea.json" pb-eth0 raw "$PB_SUBNET" "$PB_POOL_START - $PB_POOL_END" \
        "$LAB_WORK/kea/leases4.csv" "$PB_LEASE_SECS"
    kea_start pb-srv1 "$LAB_WORK/kea/kea.json" "$LAB_WORK/kea/out"
    KEA_PID=$LAB_LAST_PID
    wait_until "Kea listening" 15 udp_listening pb-srv1 67 || abort "Kea did not start"
}

leader_of_three() {
    local l
    l=$(wait_until "an agreed leader" 30 cr_leader 1 2 3) || return 1
    echo "${l##*$'\n'}"
}

owner_of() {
    local out id i
    out=$(cr_cli 1 leases list "hardware_addr=$1" -o json 2>/dev/null) || return 1
    id=$(cr_json 'd[0]["node"] if d else None' <<<"$out") || return 1
    for i in 1 2 3; do [[ ${CR_ID[i]:-} == "$id" ]] && { echo "$i"; return 0; }; done
    return 1
}

# One kind of kill, TRIALS times; "GAP RETRANS" lines to $LAB_WORK/fo-KIND.
failover_kind() {
    local kind=$1 t victim t0 res k ifs=() macs=() pids=() worst
    : >"$LAB_WORK/fo-$kind"
    for ((t = 1; t <= TRIALS; t++)); do
        ifs=() macs=() pids=()
        if [[ $kind == owner ]]; then
            fo_client
            fo_dora "$FO_IF" || true
            if [[ $FO_SERVER == kea ]]; then victim=1; else victim=$(owner_of "$FO_MAC") || victim=""; fi
            [[ -n $victim ]] || { fail "owner trial $t: no owner recorded for $FO_MAC"; fo_drop "$FO_IF"; continue; }
            ifs=("$FO_IF") macs=("$FO_MAC")
            # Its first record is not the one measured.
            sed -i "/^$FO_MAC /d" "$LAB_WORK/fo-bound.txt"
        else
            if [[ $FO_SERVER == kea ]]; then victim=1; else victim=$(leader_of_three) || victim=""; fi
            [[ -n $victim ]] || { fail "leader trial $t: no agreed leader"; continue; }
            for ((k = 0; k < FO_CLIENTS_LEADER; k++)); do
                fo_client
                ifs+=("$FO_IF") macs+=("$FO_MAC")
            done
        fi
        t0=$(date +%s.%N)
        fo_kill "$victim"
        for k in "${!ifs[@]}"; do
            fo_dora "${ifs[k]}" &
            pids+=($!)
        done
        [[ $FO_SERVER == kea ]] && fo_revive "$victim"
        wait "${pids[@]}" 2>/dev/null || true
        worst=""
        for k in "${!ifs[@]}"; do
            res=$(fo_result "${ifs[k]}" "${macs[k]}" "$t0")
            echo "$res" >>"$LAB_WORK/fo-$kind"
            worst+=" ${macs[k]}:${res// /s,}rtx"
            fo_drop "${ifs[k]}"
        done
        log "  $kind kill $t/$TRIALS (node $victim):$worst"
        [[ $FO_SERVER == kea ]] || fo_revive "$victim"
    done
}

# fo_summary KIND: "median M s, max X s, N of K clients bound, R needed > 1 retransmission"
fo_summary() {
    sort -g "$LAB_WORK/fo-$1" | awk '{ n++ } $1 != "none" { g[++b] = $1 } $2 > 1 { r++ }
        END {
            if (b == 0) { printf "no client bound (%d tried)", n; exit }
            m = (b % 2) ? g[(b + 1) / 2] : (g[b / 2] + g[b / 2 + 1]) / 2
            printf "median %.2f s, max %.2f s, %d of %d clients bound, %d needed more than one retransmission", m, g[b], b, n, r + 0
        }'
}

failover() {
    log "=== failover: $TRIALS kills of the leader and $TRIALS of a client's owner ($FO_SERVER) ==="
    fo_script
    if [[ $FO_SERVER == kea ]]; then
        start_kea
    elif [[ ${CR_PID[1]:-} == "" ]]; then
        CR_DIR=$LAB_WORK/fo
        mkdir -p "$CR_DIR"
        cr_form 3
        wait_until "3 nodes converged" 60 cr_converged 1 2 3 || abort "no 3-node cluster for the failover part"
        printf '{"name":"bench","cidr":"%s","pools":[{"start":"%s","end":"%s"}],"lease_secs":%s,"mode":"full"}\n' \
            "$PB_SUBNET" "$PB_POOL_START" "$PB_POOL_END" "$PB_LEASE_SECS" |
            cr_cli 1 subnets create -f - -o json >>"$CR_DIR/client.log" 2>&1 || abort "cradle subnets create failed"
    fi
    failover_kind leader
    failover_kind owner
    FO_LEADER=$(fo_summary leader)
    FO_OWNER=$(fo_summary owner)
    log "failover gap after SIGKILL of the leader: $FO_LEADER"
    log "failover gap after SIGKILL of a client's owner: $FO_OWNER"
    check "every failover client got a lease" bash -c "! grep -q '^none' '$LAB_WORK/fo-leader' '$LAB_WORK/fo-owner'"
}

main() {
    local bin_arg=${1:-target/release/cradle} tool
    if [[ ${1:-} == -h || ${1:-} == --help ]]; then
        sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
    fi
    [[ -x $PB_DIR/dhcp-bench.sh && -x $PB_DIR/lab.sh ]] ||
        { echo "error: no peer benchmark at $PB_DIR (set PEERBENCH_DIR)" >&2; exit 2; }
    for tool in ip python3 timeout perfdhcp busybox kea-dhcp4; do
        command -v "$tool" >/dev/null || { echo "error: $tool is required (packaging/install-deps.sh)" >&2; exit 2; }
    done
    [[ $bin_arg == /* ]] || bin_arg="$ROOT_DIR/$bin_arg"
    CRADLE_OK=0
    if [[ -x $bin_arg ]]; then
        CR_BIN=$(realpath "$bin_arg")
        cr_has_dhcp && CRADLE_OK=1
    fi
    LAB_CLEANUP_HOOK=lab_hook
    BENCH_LINE="dhcp-bench: kea=0/s cradle1=0/s cradle3=0/s ratio1=0.00 ratio3=0.00"
    lab_init
    if ((!CRADLE_OK)); then
        log "SKIP: no Cradle DHCP server to measure at $bin_arg (not wired in yet, see DHCP-SKIP in lib/dhcp-lab.sh; CRADLE_DHCP_WIRED=1 forces it): Kea only; Cradle figures print as 0"
        [[ $FO_SERVER == kea ]] || PARTS=${PARTS//failover/}
    fi
    if ! [[ -e /run/netns/pb-srv1 && -e /run/netns/pb-srv3 && -e /run/netns/pb-cli ]]; then
        "$PB_DIR/lab.sh" up --servers 3 >&3 2>&1 || abort "peerbench lab.sh up --servers 3 failed"
        LAB_OWNED=1
    fi
    [[ " $PARTS " == *" throughput "* ]] && throughput
    [[ " $PARTS " == *" failover "* ]] && failover
    log "=== results ==="
    if [[ -s $LAB_WORK/results ]]; then sed 's/^/  /' "$LAB_WORK/results" >&3; fi
    [[ -n ${FO_LEADER:-} ]] && log "failover ($FO_SERVER): leader kill: $FO_LEADER; owner kill: $FO_OWNER"
    return 0
}

# The figures line comes last, after the checks' summary (zeros for what was
# not measured).
print_line() {
    [[ -n ${BENCH_LINE:-} ]] && echo "$BENCH_LINE" >&3
    return 0
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    # lab_cleanup (on EXIT) prints the checks' summary; the figures follow it.
    LAB_FINAL_HOOK=print_line
    main "$@"
fi
