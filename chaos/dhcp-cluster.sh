#!/usr/bin/env bash
# Chaos scenario: real DHCP clients against a 3-node Cradle cluster.
#
# Builds a lab of network namespaces on 198.18.16.0/20 (a bridge, three node
# namespaces, a relay namespace where perfdhcp plays a relay agent, and a
# client namespace where udhcpc and dhclient run on macvlans and perfdhcp
# broadcasts), forms a 3-node cluster whose nodes serve DHCP, creates a subnet
# through the CLI, then
#   (a) 500 clients (480 udhcpc, 20 dhclient) all get distinct addresses;
#   (b) SIGKILL the leader during a perfdhcp run (relayed to a follower);
#   (c) SIGKILL the owner of a client mid-exchange (3 clients);
#   (d) partition one node during broadcast load, then heal (and check that
#       the healed node's return causes no election);
#   (e) SIGSTOP the leader for 3 s during relayed load.
# After each, from the clients' own records only (the udhcpc script's env,
# dhclient's lease files, perfdhcp's lease list, captures taken in the client
# namespaces): no address acknowledged to two clients for overlapping times;
# every acknowledged lease present on every surviving node (`cradle leases
# list` on each, once `cradle status` shows convergence); how many clients
# needed more than one retransmission.
#
# Usage: sudo chaos/dhcp-cluster.sh [path-to-cradle-binary]
#        (default: target/debug/cradle, relative to the workspace root)
# Environment: DHCP_SERVER=cradle (default) | kea: the server under test; kea
#   runs one kea-dhcp4 (memfile) in node 1's namespace, where killing the
#   leader or the owner means killing Kea and starting it again, to prove the
#   clients and the verdicts. CHAOS_LOG_DIR=DIR keeps the work dir (node
#   logs, client records, captures). DHCP_LAB_CLIENTS=N scales (a) down.
#
# Needs root, iproute2, python3, coreutils, tcpdump, kea-admin (perfdhcp),
# busybox, isc-dhcp-client, and kea-dhcp4-server for DHCP_SERVER=kea. Sends
# traffic only inside its own namespaces. See chaos/README.md.

set -euo pipefail

LAB_SCRIPT=dhcp-cluster.sh
LAB_TAG="dc"
LAB_DEADLINE_S=290
ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib/dhcp-lab.sh
source "$ROOT_DIR/chaos/lib/dhcp-lab.sh"
LIB="$ROOT_DIR/chaos/lib"

SERVER=${DHCP_SERVER:-cradle}
readonly NS_BR="${LAB_PFX}-br" NS_RL="${LAB_PFX}-rl" NS_CL="${LAB_PFX}-cl"
readonly BR=dc-br0
readonly SUBNET=198.18.16.0/20 PREFIX=20
readonly POOL_START=198.18.17.0 POOL_END=198.18.31.250
readonly LEASE_SECS=600          # longer than the run: every ACK overlaps every later one
readonly IP_RL=198.18.16.100 IP_CL=198.18.16.101
readonly NODES=(1 2 3)
CR_NS=("" "${LAB_PFX}-n1" "${LAB_PFX}-n2" "${LAB_PFX}-n3")
CR_IP=("" 198.18.16.1 198.18.16.2 198.18.16.3)
CR_CLI_NS=$NS_RL
CR_NODE_ARGS=node_dhcp_args
readonly CLIENTS_A=${DHCP_LAB_CLIENTS:-500}
readonly DHCLIENTS_A=20
readonly WAVE=100                # udhcpc processes at once
readonly WAVE_TIMEOUT_S=40
readonly CONVERGE_TIMEOUT_S=40
readonly PERFDHCP_RATE=40 PERFDHCP_SECS=8 PERFDHCP_CLIENTS=250

KEA_PID=""
DEAD=()                          # node indexes killed and not yet restarted
REC=""                           # client records

node_dhcp_args() { echo "--dhcp-listen 0.0.0.0:67 --dhcp-interface dc-n${1}e"; }

# ------------------------------------------------------------------ lab ----

build_lab() {
    local i
    lab_add_ns "$NS_BR"
    lab_bridge "$NS_BR" "$BR"
    ip netns exec "$NS_BR" sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true
    for i in "${NODES[@]}"; do
        lab_add_ns "${CR_NS[i]}"
        lab_attach "$NS_BR" "$BR" "${CR_NS[i]}" "dc-n${i}e" "02:dc:ff:00:00:0$i" "${CR_IP[i]}/$PREFIX"
    done
    lab_add_ns "$NS_RL"
    lab_attach "$NS_BR" "$BR" "$NS_RL" dc-rle 02:dc:ff:00:01:00 "$IP_RL/$PREFIX"
    lab_add_ns "$NS_CL"
    lab_attach "$NS_BR" "$BR" "$NS_CL" dc-cle 02:dc:ff:00:02:00 "$IP_CL/$PREFIX"
}

# macvlans MAC_PREFIX FIRST COUNT: macvlan dc-m<n> on dc-cle in the client
# namespace, MAC MAC_PREFIX:<n/256>:<n%256>, in one batch.
macvlans() {
    local pfx=$1 first=$2 count=$3 n
    for ((n = first; n < first + count; n++)); do
        printf 'link add link dc-cle name dc-m%d address %s:%02x:%02x type macvlan mode bridge\n' \
            "$n" "$pfx" $((n >> 8)) $((n & 255))
        printf 'link set dc-m%d up\n' "$n"
    done >"$LAB_WORK/macvlans.batch"
    ip -n "$NS_CL" -batch "$LAB_WORK/macvlans.batch"
}

mac_of() { printf '%s:%02x:%02x' "$1" $(($2 >> 8)) $(($2 & 255)); }

# ------------------------------------------------------- server under test --

start_kea() {
    kea_config "$LAB_WORK/kea.json" dc-n1e raw "$SUBNET" "$POOL_START - $POOL_END" \
        "$LAB_WORK/kea-leases4.csv" "$LEASE_SECS"
    kea_start "${CR_NS[1]}" "$LAB_WORK/kea.json" "$LAB_WORK/kea.out"
    KEA_PID=$LAB_LAST_PID
    wait_until "Kea listening" 15 udp_listening "${CR_NS[1]}" 67 ||
        abort "Kea did not start: $(tail -n 5 "$LAB_WORK/kea.out")"
}

srv_start() {
    if [[ $SERVER == kea ]]; then
        start_kea
        pass "Kea (memfile) serving $SUBNET from ${CR_NS[1]}"
        return
    fi
    cr_form 3
    wait_until "three nodes converged" "$CONVERGE_TIMEOUT_S" cr_converged "${NODES[@]}" ||
        abort "the 3-node cluster did not converge after forming"
    pass "3-node cluster formed, every node with --dhcp-listen 0.0.0.0:67 --dhcp-interface dc-nXe"
    cr_create_subnet lab "$SUBNET" "$POOL_START" "$POOL_END" "$LEASE_SECS" ||
        abort "cradle subnets create failed: $(tail -n 3 "$LAB_WORK/client.log")"
    pass "subnet $SUBNET (pool $POOL_START-$POOL_END, full mode) created with cradle subnets create"
    # Every node answers clients from its own copy: all must hold the subnet.
    wait_until "the subnet applied on every node" "$CONVERGE_TIMEOUT_S" cr_converged "${NODES[@]}" ||
        abort "the nodes did not converge after the subnet was created"
    wait_until "every node listening on UDP 67" 20 all_listening ||
        abort "not every node listens on UDP 67"
}

all_listening() {
    local i
    for i in "${NODES[@]}"; do udp_listening "${CR_NS[i]}" 67 || return 1; done
}

alive_nodes() {
    local i
    for i in "${NODES[@]}"; do
        [[ " ${DEAD[*]} " == *" $i "* ]] || echo "$i"
    done
}

# srv_leader: the node the scenarios treat as leader (Kea: its node).
srv_leader() {
    if [[ $SERVER == kea ]]; then echo 1; return; fi
    local l
    # shellcheck disable=SC2046
    l=$(wait_until "an agreed leader" "$CONVERGE_TIMEOUT_S" cr_leader $(alive_nodes)) || return 1
    echo "${l##*$'\n'}"
}

# srv_kill i: SIGKILL the server on node i.
srv_kill() {
    if [[ $SERVER == kea ]]; then
        kill -KILL "$KEA_PID" 2>/dev/null || true
        wait "$KEA_PID" 2>/dev/null || true
        log "SIGKILL Kea (pid $KEA_PID)"
    else
        kill -KILL "${CR_PID[$1]}" 2>/dev/null || true
        wait "${CR_PID[$1]}" 2>/dev/null || true
        log "SIGKILL node $1 (pid ${CR_PID[$1]})"
    fi
    DEAD+=("$1")
}

srv_revive() {
    local i=$1
    if [[ $SERVER == kea ]]; then start_kea; else cr_restart "$i"; fi
    local d=() x
    for x in "${DEAD[@]}"; do [[ $x == "$i" ]] || d+=("$x"); done
    DEAD=("${d[@]}")
}

srv_converged() {
    [[ $SERVER == kea ]] && return 0
    # shellcheck disable=SC2046
    wait_until "nodes $(alive_nodes | tr '\n' ' ')converged" "$CONVERGE_TIMEOUT_S" cr_converged $(alive_nodes)
}

srv_term() {
    if [[ $SERVER == kea ]]; then echo 0; else cr_field "$1" "d['term']"; fi
}

# srv_owner MAC: the node that answered MAC's last exchange (Cradle records
# it on the lease); Kea: its node.
srv_owner() {
    if [[ $SERVER == kea ]]; then echo 1; return; fi
    local id i out
    out=$(cr_cli "$(alive_nodes | head -n 1)" leases list "hardware_addr=$1" -o json 2>/dev/null) || return 1
    id=$(cr_json 'd[0]["node"] if d else None' <<<"$out") || return 1
    for i in "${NODES[@]}"; do
        [[ ${CR_ID[i]:-} == "$id" ]] && { echo "$i"; return 0; }
    done
    return 1
}

# --------------------------------------------------------------- clients ----

udhcpc_script() {
    cat >"$LAB_WORK/udhcpc.sh" <<EOF
#!/bin/sh
# The client's own record: what udhcpc passed its script on each ACK.
case "\$1" in
    bound|renew) echo "\$(cat /sys/class/net/\$interface/address) \$ip \$lease \$(date +%s.%N)" >>"$REC/udhcpc.txt" ;;
esac
exit 0
EOF
    printf '#!/bin/sh\nexit 0\n' >"$LAB_WORK/noop.sh"
    chmod 755 "$LAB_WORK/udhcpc.sh" "$LAB_WORK/noop.sh"
}

# udhcpc_on IFACE [REQUESTED_IP]: one DORA, bounded (5 DISCOVERs 3 s apart).
udhcpc_on() {
    local req=()
    [[ -n ${2:-} ]] && req=(-r "$2")
    timeout -k 2 "$WAVE_TIMEOUT_S" ip netns exec "$NS_CL" busybox udhcpc -f -q -n -t 5 -T 3 \
        -i "$1" -s "$LAB_WORK/udhcpc.sh" "${req[@]}" >>"$REC/udhcpc-$1.log" 2>&1 3>&- </dev/null
}

dhclient_on() {
    local ifc=$1 mac=$2
    timeout -k 2 "$WAVE_TIMEOUT_S" ip netns exec "$NS_CL" dhclient -4 -d -1 \
        -lf "$REC/dhclient/$mac.leases" -pf "$LAB_WORK/dhclient-$ifc.pid" -sf "$LAB_WORK/noop.sh" \
        "$ifc" >>"$REC/dhclient-$ifc.log" 2>&1 3>&- </dev/null &
    echo $!
}

# capture NS IFACE NAME: tcpdump in a client namespace for the whole run.
capture() {
    lab_bg ip netns exec "$1" tcpdump -i "$2" -U -s 400 -w "$REC/$3.pcap" \
        'udp and (port 67 or port 68)' 2>"$LAB_WORK/tcpdump-$3.err" 3>&-
    wait_until "tcpdump on $1/$2" 10 grep -q 'listening on' "$LAB_WORK/tcpdump-$3.err" ||
        abort "tcpdump did not start in $1"
}

# perfdhcp_run NAME NS TARGET_ARGS...: perfdhcp in NS, its output (the
# client's lease list, -x l) framed by start/end times in $REC/NAME.out.
# Runs in the background; sets PERF_PID.
perfdhcp_run() {
    local name=$1 ns=$2
    shift 2
    (
        echo "# start $(date +%s.%N)"
        echo "# perfdhcp $*"
        timeout -k 2 $((PERFDHCP_SECS + 20)) ip netns exec "$ns" perfdhcp -4 -x l -W 1500000 "$@" 2>&1 3>&- || true
        echo "# end $(date +%s.%N)"
    ) >"$REC/$name.out" &
    PERF_PID=$!
    LAB_PIDS+=("$PERF_PID")
}

perf_field() {
    # perf_field FILE SECTION FIELD: e.g. REQUEST-ACK "received packets"
    awk -v sec="$2" -v f="$3" '
        index($0, "***Statistics for: " sec) == 1 { on = 1; next }
        /^\*\*\*/ { on = 0 }
        on && index($0, f ":") == 1 { sub(/^[^:]*: */, ""); print $1; exit }' "$1"
}

perf_summary() {
    local f=$REC/$1.out
    echo "DISCOVER $(perf_field "$f" DISCOVER-OFFER 'sent packets') sent/$(perf_field "$f" DISCOVER-OFFER 'received packets') offered, REQUEST $(perf_field "$f" REQUEST-ACK 'sent packets') sent/$(perf_field "$f" REQUEST-ACK 'received packets') acked, drops $(perf_field "$f" DISCOVER-OFFER 'drops ratio')% / $(perf_field "$f" REQUEST-ACK 'drops ratio')%"
}

# --------------------------------------------------------------- verdict ----

# verdict LABEL: the clients' records against every surviving node's leases.
verdict() {
    local label=$1 i args=() out rc=0
    srv_converged || fail "$label: the surviving nodes did not converge within ${CONVERGE_TIMEOUT_S}s"
    if [[ $SERVER == kea ]]; then
        args+=(--kea "kea=$LAB_WORK/kea-leases4.csv")
    else
        for i in $(alive_nodes); do
            if cr_leases "$i" "$LAB_WORK/leases.$i.json"; then
                args+=(--node "n$i=$LAB_WORK/leases.$i.json")
            else
                fail "$label: node $i: cradle leases list failed"
            fi
        done
    fi
    local f
    for f in "$REC"/*.out; do [[ -e $f ]] && args+=(--perfdhcp "$f"); done
    for f in "$REC"/dhclient/*.leases; do [[ -e $f ]] && args+=(--dhclient "$f"); done
    for f in "$REC"/*.pcap; do [[ -e $f ]] && args+=(--pcap "$f"); done
    out=$(python3 "$LIB/dhcp_verdict.py" --udhcpc "$REC/udhcpc.txt" --lease-secs "$LEASE_SECS" \
        --require-present --json "$LAB_WORK/verdict.json" "${args[@]}") || rc=$?
    # shellcheck disable=SC2001 # indents every line
    sed 's/^/    /' <<<"$out" >&3
    if ((rc == 0)); then
        pass "$label: no address acknowledged to two clients; every acknowledged lease on every surviving node"
    else
        fail "$label: duplicate or missing leases (see above)"
    fi
    RETRANS_OVER_1=$(cr_json 'd["retrans_over_1"]' <"$LAB_WORK/verdict.json" 2>/dev/null || echo "?")
    log "$label: clients needing more than one retransmission so far: $RETRANS_OVER_1"
}

# ------------------------------------------------------------- scenarios ----

scenario_a() {
    local n total=$CLIENTS_A nd=$DHCLIENTS_A nu pids=() pid got
    ((nd > total)) && nd=0
    nu=$((total - nd))
    log "=== (a) $total clients: $nu udhcpc + $nd dhclient, on macvlans ==="
    macvlans 02:dc:00:00 1 "$total"
    local t0=$SECONDS
    log "(a) $nu udhcpc, $WAVE at a time"
    for ((n = 1; n <= nu; n++)); do
        udhcpc_on "dc-m$n" &
        pids+=($!)
        if ((${#pids[@]} >= WAVE)); then
            wait "${pids[@]}" 2>/dev/null || true
            pids=()
        fi
    done
    local dpids=()
    for ((n = nu + 1; n <= total; n++)); do
        dpids+=("$(dhclient_on "dc-m$n" "$(mac_of 02:dc:00:00 "$n")")")
    done
    wait "${pids[@]}" 2>/dev/null || true
    log "(a) udhcpc done after $((SECONDS - t0))s; $nd dhclient started"
    wait_until "$nd dhclient leases" "$WAVE_TIMEOUT_S" dhclient_all_bound "$nd" || true
    log "(a) dhclient bound after $((SECONDS - t0))s"
    for pid in "${dpids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${dpids[@]}"; do lab_stop_pid "$pid" 3; done
    got=$(python3 - "$REC" <<'PY'
import glob, sys
rec = sys.argv[1]
pairs = set()
for line in open(f"{rec}/udhcpc.txt"):
    p = line.split()
    if len(p) == 4:
        pairs.add((p[0], p[1]))
import re
for f in glob.glob(f"{rec}/dhclient/*.leases"):
    m = re.findall(r"fixed-address ([0-9.]+);", open(f).read())
    if m:
        pairs.add((f.rsplit("/", 1)[1][:-7], m[-1]))
clients = {c for c, _ in pairs}
addrs = {a for _, a in pairs}
print(len(clients), len(addrs))
PY
)
    log "(a) took $((SECONDS - t0))s; clients bound / distinct addresses: $got"
    check "(a) all $total clients got a lease ($got)" [ "${got%% *}" -eq "$total" ]
    check "(a) $total clients hold $total distinct addresses" [ "${got##* }" -eq "$total" ]
    verdict "(a)"
}

dhclient_all_bound() {
    local want=$1 have
    have=$(grep -l 'fixed-address' "$REC"/dhclient/*.leases 2>/dev/null | wc -l)
    ((have >= want))
}

# A relay target for perfdhcp: a follower (so that killing or stopping the
# leader does not take the relay's only server away); Kea: its node.
relay_target() {
    local lead=$1 i
    [[ $SERVER == kea ]] && { echo 1; return; }
    for i in $(alive_nodes); do
        ((i == lead)) || { echo "$i"; return; }
    done
}

scenario_b() {
    local lead target
    log "=== (b) SIGKILL the leader during a perfdhcp run ==="
    lead=$(srv_leader) || abort "(b) no agreed leader"
    target=$(relay_target "$lead")
    log "leader node $lead; perfdhcp relays to node $target (${CR_IP[target]})"
    perfdhcp_run b "$NS_RL" -l "$IP_RL" -R "$PERFDHCP_CLIENTS" -r "$PERFDHCP_RATE" -p "$PERFDHCP_SECS" \
        -b mac=02:dc:01:00:00:00 "${CR_IP[target]}"
    sleep 3
    srv_kill "$lead"
    # Kea has no partner to take over: it is restarted at once (its memfile
    # keeps the leases); the gap is its restart.
    [[ $SERVER == kea ]] && srv_revive "$lead"
    wait "$PERF_PID" 2>/dev/null || true
    log "(b) perfdhcp: $(perf_summary b)"
    check "(b) perfdhcp got ACKs after the kill" perf_has_acks b
    verdict "(b) after the leader's death"
    if [[ $SERVER != kea ]]; then
        srv_revive "$lead"
        wait_until "node $lead back" 60 cr_answers "$lead" || fail "(b) node $lead did not come back"
    fi
}

perf_has_acks() {
    local n
    n=$(perf_field "$REC/$1.out" REQUEST-ACK 'received packets')
    [[ -n $n && $n -gt 0 ]]
}

# (c): per client, a first DORA names its owner; then the owner is killed
# and the client starts over (same MAC, asking for its address), timed by the
# client's own record.
scenario_c() {
    local k ifc mac owner ip t0 t1 lines0 ok
    log "=== (c) SIGKILL a client's owner mid-exchange ==="
    macvlans 02:dc:03:00 1001 3
    for k in 1001 1002 1003; do
        ifc=dc-m$k
        mac=$(mac_of 02:dc:03:00 "$k")
        udhcpc_on "$ifc" || true
        ip=$(awk -v m="$mac" '$1 == m { ip = $2 } END { print ip }' "$REC/udhcpc.txt")
        [[ -n $ip ]] || { fail "(c) client $mac got no first lease"; continue; }
        owner=$(srv_owner "$mac") || { fail "(c) no owner recorded for $mac"; continue; }
        log "(c) client $mac holds $ip, answered by node $owner"
        lines0=$(wc -l <"$REC/udhcpc.txt")
        t0=$(date +%s.%N)
        srv_kill "$owner"
        udhcpc_on "$ifc" "$ip" &
        local upid=$!
        [[ $SERVER == kea ]] && { sleep 1; srv_revive "$owner"; }
        wait "$upid" 2>/dev/null || true
        ok=$(awk -v m="$mac" -v n="$lines0" 'NR > n && $1 == m { print $2, $4 }' "$REC/udhcpc.txt" | tail -n 1)
        if [[ -n $ok ]]; then
            t1=${ok##* }
            pass "(c) client $mac bound again (${ok%% *}) $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')s after its owner (node $owner) was killed"
        else
            fail "(c) client $mac got no lease after its owner (node $owner) was killed"
        fi
        [[ $SERVER == kea ]] || { srv_revive "$owner"; wait_until "node $owner back" 60 cr_answers "$owner" || true; }
        srv_converged || true
    done
    verdict "(c)"
}

scenario_d() {
    local lead cut term0 termc term1 lead1
    log "=== (d) partition one node during broadcast load, then heal ==="
    lead=$(srv_leader) || abort "(d) no agreed leader"
    if [[ $SERVER == kea ]]; then cut=1; else cut=$(relay_target "$lead"); fi
    term0=$(srv_term "$lead") || term0="?"
    perfdhcp_run d "$NS_CL" -l dc-cle -R "$PERFDHCP_CLIENTS" -r "$PERFDHCP_RATE" -p "$PERFDHCP_SECS" \
        -b mac=02:dc:04:00:00:00
    sleep 2
    ip -n "$NS_BR" link set "dc-n${cut}b" down
    CR_CUT[cut]=1
    log "cut off node $cut (leader node $lead, term $term0)"
    sleep 3
    # The term just before the heal: an election during the cut (the
    # majority's own, under load) is not the healed node's doing.
    termc=$(srv_term "$lead") || termc="?"
    ip -n "$NS_BR" link set "dc-n${cut}b" up
    CR_CUT[cut]=0
    log "healed node $cut"
    wait "$PERF_PID" 2>/dev/null || true
    log "(d) perfdhcp (broadcast): $(perf_summary d)"
    check "(d) perfdhcp got ACKs" perf_has_acks d
    verdict "(d) after heal"
    if [[ $SERVER != kea ]]; then
        lead1=$(srv_leader) || lead1="?"
        term1=$(srv_term "$lead1") || term1="?"
        log "(d) leader/term before the cut: node $lead/$term0; just before the heal: $termc; after heal: node $lead1/$term1"
        [[ $term0 == "$termc" ]] || log "(d) note: the majority held an election during the cut (term $term0 -> $termc)"
        check "(d) the healed node's return caused no election (term $termc -> $term1)" [ "$termc" == "$term1" ]
    fi
}

scenario_e() {
    local lead target
    log "=== (e) SIGSTOP the leader for 3 s ==="
    lead=$(srv_leader) || abort "(e) no agreed leader"
    target=$(relay_target "$lead")
    perfdhcp_run e "$NS_RL" -l "$IP_RL" -R "$PERFDHCP_CLIENTS" -r "$PERFDHCP_RATE" -p "$PERFDHCP_SECS" \
        -b mac=02:dc:05:00:00:00 "${CR_IP[target]}"
    sleep 2
    local pid
    if [[ $SERVER == kea ]]; then pid=$KEA_PID; else pid=${CR_PID[lead]}; fi
    kill -STOP "$pid"
    log "SIGSTOP node $lead (pid $pid)"
    sleep 3
    kill -CONT "$pid"
    log "SIGCONT node $lead"
    wait "$PERF_PID" 2>/dev/null || true
    log "(e) perfdhcp: $(perf_summary e)"
    check "(e) perfdhcp got ACKs" perf_has_acks e
    verdict "(e)"
}

lab_hook() {
    # A stopped process ignores SIGTERM until continued.
    local i
    [[ -n $KEA_PID ]] && kill -CONT "$KEA_PID" 2>/dev/null
    for i in "${NODES[@]}"; do
        [[ -n ${CR_PID[i]:-} ]] && kill -CONT "${CR_PID[i]}" 2>/dev/null
        [[ -n ${CR_PID[i]:-} ]] && LAB_PIDS+=("${CR_PID[i]}")
    done
    return 0
}

main() {
    local bin_arg=${1:-target/debug/cradle} tool
    if [[ ${1:-} == -h || ${1:-} == --help ]]; then
        sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
    fi
    [[ $SERVER == cradle || $SERVER == kea ]] || { echo "error: DHCP_SERVER must be cradle or kea" >&2; exit 2; }
    for tool in ip python3 timeout tcpdump perfdhcp busybox dhclient; do
        command -v "$tool" >/dev/null || { echo "error: $tool is required (packaging/install-deps.sh)" >&2; exit 2; }
    done
    if [[ $SERVER == cradle ]]; then
        [[ $bin_arg == /* ]] || bin_arg="$ROOT_DIR/$bin_arg"
        [[ -x $bin_arg ]] || { echo "error: no cradle binary at $bin_arg (cargo build --bin cradle)" >&2; exit 2; }
        CR_BIN=$(realpath "$bin_arg")
        if ! cr_has_dhcp; then
            echo "error: $CR_BIN has no DHCP server (no --dhcp-listen)" >&2
            exit 2
        fi
    else
        command -v kea-dhcp4 >/dev/null || { echo "error: kea-dhcp4 is required" >&2; exit 2; }
    fi

    LAB_CLEANUP_HOOK=lab_hook
    lab_init
    log "server under test: $SERVER${CR_BIN:+ ($CR_BIN)}; run id $LAB_RUN_ID"
    REC=$LAB_WORK/records
    mkdir -p "$REC/dhclient"
    : >"$REC/udhcpc.txt"
    udhcpc_script
    build_lab
    pass "lab up: bridge $NS_BR/$BR, nodes ${CR_NS[*]:1}, relay $NS_RL ($IP_RL), clients $NS_CL"
    capture "$NS_CL" dc-cle clients
    capture "$NS_RL" dc-rle relay
    srv_start
    scenario_a
    scenario_b
    scenario_c
    scenario_d
    scenario_e
    log "=== final ==="
    verdict "final"
    log "clients needing more than one retransmission over the whole run: $RETRANS_OVER_1"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
