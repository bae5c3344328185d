# shellcheck shell=bash
# Variables named in the header below are set by the including script.
# shellcheck disable=SC2034,SC2153
# Helpers for the DHCP lab scripts (chaos/capture-dhcp.sh, chaos/dhcp-cluster.sh,
# chaos/dhcp-bench.sh). Sourced, never run.
#
# The including script sets, before sourcing:
#   LAB_SCRIPT  its file name (stale-run detection looks for it in /proc/PID/cmdline)
#   LAB_TAG     two letters; every namespace is LAB_TAG-<pid>-<role>, every link
#               LAB_TAG-<short>, so runs and scripts never collide
#   LAB_DEADLINE_S  the whole run's bound, enforced by a watchdog
# and calls lab_init after its own traps are wanted (lab_init installs them).
#
# Rules kept here for every script: addresses in 198.18.0.0/15 only; every
# namespace and link created and deleted by the script that made it; every loop
# bounded in count and time; only processes this run started are signalled,
# by PID.

LAB_RUN_ID=$$
LAB_PFX="${LAB_TAG}-${LAB_RUN_ID}"
LAB_WORK=""
LAB_PASSED=0
LAB_FAILED=0
LAB_ABORTED=""
LAB_CREATED_NS=()
LAB_PIDS=()          # every background process started, stopped at exit
LAB_WATCHDOG_PID=""
LAB_START_SECONDS=$SECONDS
LAB_CLEANUP_HOOK=""  # a function the script wants called first at exit
LAB_FINAL_HOOK=""    # and one called last, after the summary line
LAB_SUMMARY_PREFIX=${LAB_SUMMARY_PREFIX:-chaos}

exec 3>&1
log() { printf '[%4ds] %s\n' "$((SECONDS - LAB_START_SECONDS))" "$*" >&3; }
pass() { LAB_PASSED=$((LAB_PASSED + 1)); log "PASS: $*"; }
fail() { LAB_FAILED=$((LAB_FAILED + 1)); log "FAIL: $*"; }
check() {
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
abort() {
    fail "$*"
    LAB_ABORTED="$*"
    exit 1
}

lab_script_alive() {
    local pid=$1
    [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$LAB_SCRIPT"
}

# lab_bg COMMAND...: runs COMMAND in the background, remembered for cleanup.
# Sets LAB_LAST_PID.
lab_bg() {
    "$@" &
    LAB_LAST_PID=$!
    LAB_PIDS+=("$LAB_LAST_PID")
}

# lab_stop_pid PID [SECONDS]: SIGTERM, then SIGKILL after SECONDS (default 5).
lab_stop_pid() {
    local pid=$1 limit=${2:-5} n
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((n = 0; n < limit * 10; n++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Kills whatever still runs in a namespace of ours (all started by this run),
# then deletes it (which deletes its links).
lab_delete_ns() {
    local ns=$1 pid
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
        kill -KILL "$pid" 2>/dev/null || true
    done
    ip netns delete "$ns" 2>/dev/null || true
}

lab_add_ns() {
    ip netns add "$1"
    LAB_CREATED_NS+=("$1")
    ip -n "$1" link set lo up
    ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
}

# Namespaces and work dirs of earlier runs of this script that are gone.
lab_cleanup_stale() {
    local ns pid dir
    while read -r ns _; do
        [[ $ns =~ ^${LAB_TAG}-([0-9]+)-[a-z0-9]+$ ]] || continue
        pid=${BASH_REMATCH[1]}
        if [[ $pid != "$LAB_RUN_ID" ]] && ! lab_script_alive "$pid"; then
            log "removing stale namespace $ns (run $pid is gone)"
            lab_delete_ns "$ns"
        fi
    done < <(ip netns list 2>/dev/null)
    for dir in /tmp/"${LAB_TAG}"-lab-*; do
        [[ -d $dir && $dir =~ ^/tmp/${LAB_TAG}-lab-([0-9]+)- ]] || continue
        pid=${BASH_REMATCH[1]}
        if [[ $pid != "$LAB_RUN_ID" ]] && ! lab_script_alive "$pid"; then
            log "removing stale work dir $dir"
            rm -rf "$dir"
        fi
    done
}

lab_cleanup() {
    local rc=$? pid ns
    trap - EXIT INT TERM
    set +e
    [[ -n $LAB_CLEANUP_HOOK ]] && "$LAB_CLEANUP_HOOK"
    [[ -n $LAB_WATCHDOG_PID ]] && kill "$LAB_WATCHDOG_PID" 2>/dev/null
    for pid in "${LAB_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${LAB_PIDS[@]}"; do
        lab_stop_pid "$pid" 3
    done
    for ns in "${LAB_CREATED_NS[@]}"; do
        lab_delete_ns "$ns"
    done
    [[ -n $LAB_WATCHDOG_PID ]] && wait "$LAB_WATCHDOG_PID" 2>/dev/null
    if [[ -n $LAB_WORK && -d $LAB_WORK ]]; then
        if [[ -n ${CHAOS_LOG_DIR:-} ]]; then
            mkdir -p "$CHAOS_LOG_DIR" && cp -r "$LAB_WORK"/. "$CHAOS_LOG_DIR"/ 2>/dev/null
            log "work dir copied to $CHAOS_LOG_DIR"
        fi
        rm -rf "$LAB_WORK"
    fi
    [[ -n $LAB_ABORTED ]] && log "aborted: $LAB_ABORTED"
    if ((rc != 0 && LAB_FAILED == 0)) || [[ $LAB_ABORTED == interrupted || $LAB_ABORTED == terminated* ]]; then
        LAB_FAILED=$((LAB_FAILED + 1))
        log "FAIL: ${LAB_ABORTED:-exited with status $rc outside a check}"
    fi
    log "run time $((SECONDS - LAB_START_SECONDS))s"
    echo "${LAB_SUMMARY_PREFIX}: ${LAB_PASSED} passed, ${LAB_FAILED} failed" >&3
    [[ -n ${LAB_FINAL_HOOK:-} ]] && "$LAB_FINAL_HOOK"
    if ((LAB_FAILED > 0)); then exit 1; fi
    exit 0
}

# lab_init: root check, traps, watchdog, stale cleanup, work dir ($LAB_WORK).
lab_init() {
    [[ $EUID -eq 0 ]] || { echo "error: run as root (network namespaces)" >&2; exit 2; }
    trap lab_cleanup EXIT
    trap 'LAB_ABORTED="interrupted"; exit 130' INT
    trap 'LAB_ABORTED="terminated (deadline ${LAB_DEADLINE_S}s or signal)"; exit 143' TERM
    (
        end=$((SECONDS + LAB_DEADLINE_S))
        while ((SECONDS < end)); do sleep 1; done
        log "deadline of ${LAB_DEADLINE_S}s reached"
        kill -TERM "$LAB_RUN_ID"
    ) &
    LAB_WATCHDOG_PID=$!
    lab_cleanup_stale
    LAB_WORK=$(mktemp -d "/tmp/${LAB_TAG}-lab-${LAB_RUN_ID}-XXXXXX")
    chmod 755 "$LAB_WORK"
}

# wait_until DESCRIPTION SECONDS COMMAND...: polls COMMAND (every 0.5 s, a
# bounded number of tries) until it succeeds; 1 on timeout, at once when
# COMMAND returns 2.
wait_until() {
    local what=$1 limit=$2 tries=0 rc
    shift 2
    local deadline=$((SECONDS + limit))
    while ((tries < limit * 10)); do
        tries=$((tries + 1))
        rc=0
        "$@" || rc=$?
        ((rc == 0)) && return 0
        if ((rc == 2)); then
            log "gave up after ${tries} tries: $what"
            return 1
        fi
        ((SECONDS >= deadline)) && break
        sleep 0.5
    done
    log "timed out after ${limit}s (${tries} tries): $what"
    return 1
}

# lab_bridge NS BRIDGE: a bridge in NS, STP off, no forwarding delay.
lab_bridge() {
    ip -n "$1" link add "$2" type bridge stp_state 0 forward_delay 0
    ip -n "$1" link set "$2" up
}

# lab_attach BRIDGE_NS BRIDGE NS NAME MAC [ADDR/LEN]: a veth pair, NAME in NS
# (with MAC, and ADDR if given), NAME's peer (NAME with its last letter
# replaced by b) on BRIDGE.
lab_attach() {
    local brns=$1 br=$2 ns=$3 name=$4 mac=$5 addr=${6:-}
    local peer="${name%?}b"
    ip -n "$brns" link add "$peer" type veth peer name "$name" netns "$ns"
    ip -n "$brns" link set "$peer" master "$br" up
    ip -n "$ns" link set "$name" address "$mac"
    [[ -n $addr ]] && ip -n "$ns" addr add "$addr" dev "$name"
    ip -n "$ns" link set "$name" up
}

# ----------------------------------------------------------------- Kea ------

# kea_config FILE IFACE SOCKET_TYPE SUBNET POOL LEASE_FILE LEASE_SECS [EXTRA_SUBNET_JSON]
# writes a kea-dhcp4 config: memfile (persisted), one subnet, WARN logging.
kea_config() {
    local file=$1 iface=$2 socket=$3 subnet=$4 pool=$5 leases=$6 secs=$7 extra=${8:-}
    cat >"$file" <<EOF
{ "Dhcp4": {
  "interfaces-config": { "interfaces": [ "$iface" ], "dhcp-socket-type": "$socket" },
  "lease-database": { "type": "memfile", "persist": true, "name": "$leases", "lfc-interval": 0 },
  "valid-lifetime": $secs, "renew-timer": $((secs / 2)), "rebind-timer": $((secs * 7 / 8)),
  "authoritative": true,
  "subnet4": [ { "id": 1, "subnet": "$subnet", "pools": [ { "pool": "$pool" } ]$extra } ],
  "loggers": [ { "name": "kea-dhcp4", "severity": "WARN",
                 "output_options": [ { "output": "${file%.json}.log" } ] } ]
} }
EOF
}

# kea_start NS CONFIG LOG: kea-dhcp4 in NS, in the background; sets LAB_LAST_PID.
kea_start() {
    local ns=$1 cfg=$2 out=$3 dir
    dir=$(dirname "$cfg")
    lab_bg ip netns exec "$ns" env KEA_PIDFILE_DIR="$dir" KEA_LOCKFILE_DIR="$dir" \
        kea-dhcp4 -c "$cfg" >"$out" 2>&1 </dev/null 3>&-
}

# udp_listening NS PORT: something in NS listens on UDP PORT.
udp_listening() {
    ip netns exec "$1" ss -H -lun "sport = :$2" 2>/dev/null | grep -q .
}

# -------------------------------------------------------------- Cradle ------
# A Cradle cluster in namespaces, formed as chaos/cluster-partition.sh forms
# it (one-voter cluster on node 1, `cradle login --ca-hash`, join tokens).
# The including script sets CR_BIN, CR_NS (array, index 1..N: namespace of
# node i), CR_IP (array: node i's address), CR_CLI_NS (where the CLI runs),
# CR_NODE_ARGS (function: extra `server`/`join` arguments for node i) and
# calls cr_form N. Data dirs, the CLI's session and logs go to CR_DIR (default
# LAB_WORK), so that one run can form several clusters one after another.

CR_CLI_TIMEOUT_S=${CR_CLI_TIMEOUT_S:-20}
CR_START_TIMEOUT_S=${CR_START_TIMEOUT_S:-60}
CR_PASSWORD="lab-$$-${RANDOM}${RANDOM}"
CR_PID=()
CR_ID=()
CR_CUT=()
CR_NODE_ENV=(
    CRADLE_LOG="${CRADLE_LOG:-info,openraft=warn}"
    NO_COLOR=1
    CRADLE_HEARTBEAT_MS=100
    CRADLE_ELECTION_MIN_MS=300
    CRADLE_ELECTION_MAX_MS=600
    CRADLE_NO_LEADER_WAIT_MS=3000
)

# cr_cli i ARGS...: the CLI against node i, from CR_CLI_NS (from the node's
# own namespace while it is cut off).
cr_cli() {
    local i=$1 ns=$CR_CLI_NS
    shift
    if [[ ${CR_CUT[i]:-0} == 1 ]]; then ns=${CR_NS[i]}; fi
    timeout -k 2 "$CR_CLI_TIMEOUT_S" ip netns exec "$ns" \
        env CRADLE_CONFIG_DIR="${CR_DIR:-$LAB_WORK}/client" CRADLE_ENDPOINT="https://${CR_IP[i]}:8443" \
        "$CR_BIN" "$@" 3>&-
}

cr_json() {
    python3 -c '
import json, sys
d = json.load(sys.stdin)
v = eval(sys.argv[1])
print("" if v is None else (json.dumps(v) if isinstance(v, (dict, list, bool)) else v))
' "$1"
}

cr_status() { cr_cli "$1" status -o json 2>/dev/null; }

cr_field() {
    local st
    st=$(cr_status "$1") || return 1
    cr_json "$2" <<<"$st"
}

cr_listen_args() {
    local i=$1
    echo "--data-dir ${CR_DIR:-$LAB_WORK}/n$i --api-listen ${CR_IP[i]}:8443 --rpc-listen ${CR_IP[i]}:8444 --advertise-host ${CR_IP[i]}"
}

# cr_run i ARGS...: the binary in node i's namespace, logging to ${CR_DIR:-$LAB_WORK}/n$i.log.
cr_run() {
    local i=$1
    shift
    ip netns exec "${CR_NS[i]}" env "${CR_NODE_ENV[@]}" CRADLE_ADMIN_PASSWORD="$CR_PASSWORD" \
        "$CR_BIN" "$@" >>"${CR_DIR:-$LAB_WORK}/n$i.log" 2>&1 3>&- &
    CR_PID[i]=$!
    log "node $i: started pid ${CR_PID[i]}: cradle $(printf '%s ' "$@" | sed -E 's/(--token )[^ ]+/\1<redacted>/')"
}

# cr_restart i: node i again on its data dir (after a kill).
cr_restart() {
    local i=$1
    # shellcheck disable=SC2046 # word lists by design
    cr_run "$i" server $(cr_listen_args "$i") $("$CR_NODE_ARGS" "$i")
}

cr_alive() { [[ -n ${CR_PID[$1]:-} ]] && kill -0 "${CR_PID[$1]}" 2>/dev/null; }

cr_answers() {
    cr_alive "$1" || { log "node $1 exited"; return 2; }
    cr_status "$1" >/dev/null
}

cr_learn_id() {
    local id
    id=$(cr_field "$1" "d['node_id']") || return 1
    [[ -n $id ]] || return 1
    CR_ID[$1]=$id
}

cr_is_voter_on() {
    local id=${CR_ID[$2]}
    [[ -n $id ]] || return 1
    [[ $(cr_field "$1" "any(m['id'] == $id and m['voter'] for m in d['members'])") == true ]]
}

cr_login() {
    CRADLE_PASSWORD="$CR_PASSWORD" timeout -k 2 "$CR_CLI_TIMEOUT_S" \
        ip netns exec "$CR_CLI_NS" env CRADLE_CONFIG_DIR="${CR_DIR:-$LAB_WORK}/client" \
        "$CR_BIN" login "https://${CR_IP[1]}:8443" --user admin --ca-hash "$CR_CA_HASH" \
        >>"${CR_DIR:-$LAB_WORK}/client.log" 2>&1 3>&-
}

cr_join() {
    local i=$1 line token hash url
    line=$(cr_cli 1 token create --ttl 1h --uses 1 2>>"${CR_DIR:-$LAB_WORK}/client.log") ||
        abort "node $i: cradle token create failed"
    [[ $line =~ --token[[:space:]]+([^[:space:]]+) ]] || abort "no --token in the join line"
    token=${BASH_REMATCH[1]}
    [[ $line =~ --ca-hash[[:space:]]+(sha256:[0-9a-fA-F]+) ]] || abort "no --ca-hash in the join line"
    hash=${BASH_REMATCH[1]}
    [[ $line =~ (https://[^[:space:]]+) ]] || abort "no URL in the join line"
    url=${BASH_REMATCH[1]}
    [[ $url =~ ^https://198\.1[89]\.[0-9]+\.[0-9]+(:[0-9]+)?/?$ ]] ||
        abort "join line URL $url is not a lab address (198.18.0.0/15)"
    # shellcheck disable=SC2046 # word lists by design
    cr_run "$i" join --token "$token" --ca-hash "$hash" "$url" $(cr_listen_args "$i") $("$CR_NODE_ARGS" "$i")
    wait_until "node $i answering after join" "$CR_START_TIMEOUT_S" cr_answers "$i" ||
        abort "node $i did not come up after cradle join"
    cr_learn_id "$i" || abort "node $i: no node_id in its status"
    wait_until "node $i a voter" "$CR_START_TIMEOUT_S" cr_is_voter_on 1 "$i" ||
        abort "node $i never became a voter"
}

# cr_form N: node 1 founds the cluster, nodes 2..N join.
cr_form() {
    local n=$1 i
    mkdir -p "${CR_DIR:-$LAB_WORK}/client"
    chmod 700 "${CR_DIR:-$LAB_WORK}/client"
    # shellcheck disable=SC2046 # word lists by design
    cr_run 1 server $(cr_listen_args 1) $("$CR_NODE_ARGS" 1)
    wait_until "node 1 writing its CA" "$CR_START_TIMEOUT_S" test -s "${CR_DIR:-$LAB_WORK}/n1/ca.pem" ||
        abort "node 1 wrote no ca.pem"
    CR_CA_HASH=$(python3 -c '
import hashlib, ssl, sys
print("sha256:" + hashlib.sha256(ssl.PEM_cert_to_DER_cert(open(sys.argv[1]).read())).hexdigest())
' "${CR_DIR:-$LAB_WORK}/n1/ca.pem")
    wait_until "cradle login to node 1" "$CR_START_TIMEOUT_S" cr_login || abort "cradle login failed"
    cr_learn_id 1 || abort "node 1: no node_id in its status"
    for ((i = 2; i <= n; i++)); do
        cr_join "$i"
    done
}

# cr_view MODE NODE...: as cluster-partition.sh's cluster_view: "leader"
# prints the agreed leader's index; "converged" also wants the others
# followers at the same applied index.
cr_view() {
    local mode=$1 i
    shift
    for i in "$@"; do
        cr_status "$i" >"${CR_DIR:-$LAB_WORK}/status.$i" || return 1
    done
    python3 - "$mode" "${CR_DIR:-$LAB_WORK}" "$@" <<'PY'
import json, sys

mode, work, nodes = sys.argv[1], sys.argv[2], sys.argv[3:]
st = {i: json.load(open(f"{work}/status.{i}")) for i in nodes}
leaders = {s.get("leader") for s in st.values()}
terms = {s.get("term") for s in st.values()}
if len(leaders) != 1 or None in leaders or len(terms) != 1:
    sys.exit(1)
leader_id = leaders.pop()
found = [i for i, s in st.items() if s.get("node_id") == leader_id]
if not found or st[found[0]].get("role") != "leader":
    sys.exit(1)
if mode == "converged":
    if any(s.get("role") != "follower" for i, s in st.items() if i != found[0]):
        sys.exit(1)
    applied = {s.get("applied_index") for s in st.values()}
    if len(applied) != 1 or None in applied:
        sys.exit(1)
print(found[0])
PY
}
cr_leader() { cr_view leader "$@"; }
cr_converged() { cr_view converged "$@" >/dev/null; }

# cr_create_subnet NAME CIDR POOL_START POOL_END LEASE_SECS: through the CLI
# (`cradle subnets create -f -`, a JSON document on stdin), full mode.
cr_create_subnet() {
    printf '{"name":"%s","cidr":"%s","pools":[{"start":"%s","end":"%s"}],"lease_secs":%s,"mode":"full"}\n' \
        "$1" "$2" "$3" "$4" "$5" | cr_cli 1 subnets create -f - -o json >>"${CR_DIR:-$LAB_WORK}/client.log" 2>&1
}

# cr_leases i FILE: node i's own view of the leases (a local read), JSON.
cr_leases() {
    cr_cli "$1" leases list --stale -o json >"$2" 2>>"${CR_DIR:-$LAB_WORK}/client.log"
}

# DHCP-SKIP: `cradle server` takes the DHCP flags before it answers DHCP, so
# the flags alone do not say the server is there. Until it is wired in, the
# Cradle runs of dhcp-cluster.sh and dhcp-bench.sh are skipped unless
# CRADLE_DHCP_WIRED=1; with the wiring, change the default below to 1 (or drop
# the variable).
CR_DHCP_WIRED=${CRADLE_DHCP_WIRED:-0}

# cr_has_dhcp: the binary serves DHCP (see DHCP-SKIP) and has the flags.
cr_has_dhcp() {
    [[ $CR_DHCP_WIRED == 1 ]] && "$CR_BIN" server --help 2>/dev/null | grep -q -- '--dhcp-listen'
}

# cr_stop i: SIGTERM node i (SIGKILL after 10 s).
cr_stop() {
    lab_stop_pid "${CR_PID[$1]:-}" 10
    CR_PID[$1]=""
}
