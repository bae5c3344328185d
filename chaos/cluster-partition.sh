#!/usr/bin/env bash
# Chaos scenario: network partitions of a 3-node Cradle cluster.
#
# Builds a lab of network namespaces (a bridge namespace, three node
# namespaces and a client namespace, all on 198.18.0.0/24), forms a 3-node
# cluster with join tokens, then
#   (a) cuts one follower off: the majority keeps taking writes, the cut-off
#       node refuses writes (no_leader) but serves stale reads; heal; it
#       converges;
#   (b) cuts the leader off: the majority elects a new leader and keeps taking
#       writes, while writes sent to the old leader are not acknowledged;
#       heal; the old leader steps down and converges.
# Every verdict comes from what the clients received: each write the client
# got a success for must exist exactly once on every node at the end.
#
# Usage: sudo chaos/cluster-partition.sh [path-to-cradle-binary]
#        (default: target/debug/cradle, relative to the workspace root)
# Environment: CHAOS_LOG_DIR=DIR copies the node logs there before cleanup.
#
# Needs root, iproute2, python3 and coreutils. Sends traffic only inside its
# own namespaces (198.18.0.0/24 and loopback); adds nothing to the root
# namespace. See chaos/README.md.

set -euo pipefail

# ---------------------------------------------------------------- settings --

readonly SCRIPT_NAME=cluster-partition.sh
ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT_DIR

# Bounds (seconds) for every wait.
readonly DEADLINE_S=280         # the whole run, enforced by a watchdog
readonly CLI_TIMEOUT_S=20       # one client command
readonly START_TIMEOUT_S=60     # a node answering after start/join
readonly FORM_TIMEOUT_S=60      # a joined node becoming a voter
readonly ELECT_TIMEOUT_S=20     # a new leader after a cut
readonly CONVERGE_TIMEOUT_S=40  # a healed node catching up
readonly OLD_WRITES_TIMEOUT_S=60  # the writes sent to a cut-off leader
readonly STOP_TIMEOUT_S=10      # a node exiting after SIGTERM

# Raft timing for the nodes, as environment variables (read by both `cradle
# server` and `cradle join`).
readonly NODE_ENV=(
    CRADLE_LOG="${CRADLE_LOG:-info,openraft=warn}"
    NO_COLOR=1
    CRADLE_HEARTBEAT_MS=100
    CRADLE_ELECTION_MIN_MS=300
    CRADLE_ELECTION_MAX_MS=600
    CRADLE_NO_LEADER_WAIT_MS=3000
)

# Error codes that say a write was refused because no leader (or, on a
# cut-off leader, no quorum) could be reached, with nothing proposed: the
# client may retry, so such a write must never show up later.
readonly CUT_WRITE_CODES="no_leader no_quorum unavailable"
# Error codes that honestly say a write's outcome is unknown (it may have
# been sent to a leader that did not answer). Accepted only for the write sent
# right after a cut, before the node can know its leader is gone; a 500
# `internal` is not such a code.
readonly UNKNOWN_OUTCOME_CODES="outcome_unknown"

readonly ADMIN_PASSWORD="chaos-$$-${RANDOM}${RANDOM}"

# Names: everything carries this run's id (the script's PID), so a stale lab
# from a crashed run never collides with this one.
readonly RUN_ID=$$
readonly PFX="cr-${RUN_ID}"
readonly NS_BR="${PFX}-br"
readonly NS_CL="${PFX}-cl"
readonly NS_N=("" "${PFX}-n1" "${PFX}-n2" "${PFX}-n3")
readonly IP_N=("" 198.18.0.1 198.18.0.2 198.18.0.3)
readonly IP_CL=198.18.0.100
readonly BRIDGE=cr-br0
readonly NODES=(1 2 3)

# State.
WORK=""
CFG=""
PASSED=0
FAILED=0
ABORTED=""
DUMPED=0
CREATED_NS=()
PID_N=("" "" "" "")
CUT=(0 0 0 0)
ID_OF=("" "" "" "")      # Raft node id of node i
BG_PIDS=()
WATCHDOG_PID=""
ACKED=()                 # every machine name a client got a success for
MAC_SEQ=0
START_SECONDS=$SECONDS

# ----------------------------------------------------------------- helpers --

# Progress goes to fd 3 (the original stdout), so that command substitutions
# never swallow it.
exec 3>&1
log() { printf '[%4ds] %s\n' "$((SECONDS - START_SECONDS))" "$*" >&3; }

pass() {
    PASSED=$((PASSED + 1))
    log "PASS: $*"
}

fail() {
    FAILED=$((FAILED + 1))
    log "FAIL: $*"
}

# check DESCRIPTION COMMAND...: a pass or a fail, never aborts.
check() {
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

# dump_logs [LINES]: the last lines of every node's log, to the progress fd.
dump_logs() {
    local i lines=${1:-30}
    [[ -n $WORK ]] || return 0
    DUMPED=1
    for i in "${NODES[@]}"; do
        if [[ -f $WORK/n$i.log ]]; then
            echo "----- last $lines lines of node $i (${IP_N[i]}) log -----"
            tail -n "$lines" "$WORK/n$i.log" | cut -c1-400 || true
        fi
    done >&3
    echo "-----" >&3
}

# abort MESSAGE: a failed step the rest cannot run without.
abort() {
    fail "$*"
    ABORTED="$*"
    dump_logs 40
    exit 1
}

script_alive() {
    local pid=$1
    [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$SCRIPT_NAME"
}

# stop_pid PID WHAT: SIGTERM, then SIGKILL after STOP_TIMEOUT_S.
stop_pid() {
    local pid=$1 what=$2 n
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((n = 0; n < STOP_TIMEOUT_S * 10; n++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "$what (pid $pid) still running ${STOP_TIMEOUT_S}s after SIGTERM: killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

# Kills whatever still runs in a namespace of ours (every such process was
# started by this script), then deletes the namespace.
delete_ns() {
    local ns=$1 pid
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
        kill -KILL "$pid" 2>/dev/null || true
    done
    ip netns delete "$ns" 2>/dev/null || true
}

cleanup() {
    local rc=$? i pid ns
    trap - EXIT INT TERM
    set +e
    [[ -n $WATCHDOG_PID ]] && kill "$WATCHDOG_PID" 2>/dev/null
    for pid in "${BG_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for i in "${NODES[@]}"; do
        stop_pid "${PID_N[i]}" "node $i"
    done
    for ns in "${CREATED_NS[@]}"; do
        delete_ns "$ns"
    done
    for pid in "${PID_N[@]}" "${BG_PIDS[@]}" "$WATCHDOG_PID"; do
        [[ -n $pid ]] && wait "$pid" 2>/dev/null
    done
    if ((FAILED > 0 || rc != 0)) && ((!DUMPED)); then
        dump_logs 40
    fi
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ -n ${CHAOS_LOG_DIR:-} ]]; then
            mkdir -p "$CHAOS_LOG_DIR" && cp "$WORK"/n*.log "$CHAOS_LOG_DIR"/ 2>/dev/null
            log "node logs copied to $CHAOS_LOG_DIR"
        fi
        rm -rf "$WORK"
    fi
    if [[ -n $ABORTED ]]; then
        log "aborted: $ABORTED"
    fi
    if ((rc != 0 && FAILED == 0)) || [[ $ABORTED == interrupted || $ABORTED == terminated* ]]; then
        # Cut short outside a check (a signal, a bug in this script): a failure.
        FAILED=$((FAILED + 1))
        log "FAIL: ${ABORTED:-exited with status $rc outside a check}"
    fi
    log "run time $((SECONDS - START_SECONDS))s"
    # To fd 3: the trap may run inside a function whose stdout is redirected.
    echo "chaos: ${PASSED} passed, ${FAILED} failed" >&3
    if ((FAILED > 0)); then exit 1; fi
    exit 0
}

# wait_until DESCRIPTION SECONDS COMMAND...: polls COMMAND until it succeeds,
# at most SECONDS (and a bounded number of tries); returns 1 on timeout, or
# at once when COMMAND returns 2 (no point waiting longer).
wait_until() {
    local what=$1 limit=$2 tries=0 rc
    shift 2
    local deadline=$((SECONDS + limit))
    while ((tries < limit * 10)); do
        tries=$((tries + 1))
        rc=0
        "$@" || rc=$?
        if ((rc == 0)); then return 0; fi
        if ((rc == 2)); then
            log "gave up after ${tries} tries: $what"
            dump_logs 20
            return 1
        fi
        if ((SECONDS >= deadline)); then break; fi
        sleep 0.5
    done
    log "timed out after ${limit}s (${tries} tries): $what"
    dump_logs 20
    return 1
}

# The CLI against node i's API, from the client namespace; from the node's
# own namespace while it is cut off (nothing on the bridge reaches it then).
cli_at() {
    local i=$1 ns=$NS_CL
    shift
    if ((CUT[i])); then ns=${NS_N[i]}; fi
    timeout -k 2 "$CLI_TIMEOUT_S" ip netns exec "$ns" \
        env CRADLE_CONFIG_DIR="$CFG" CRADLE_ENDPOINT="https://${IP_N[i]}:8443" \
        "$BIN" "$@"
}

# json EXPR: evaluates a Python expression over the JSON document on stdin
# (bound to d); prints "" for null.
json() {
    python3 -c '
import json, sys
d = json.load(sys.stdin)
v = eval(sys.argv[1])
print("" if v is None else (json.dumps(v) if isinstance(v, (dict, list, bool)) else v))
' "$1"
}

# status_of i: node i's status JSON (`cradle status -o json`) on stdout.
status_of() {
    cli_at "$1" status -o json 2>/dev/null
}

# field_of i EXPR: one field of node i's status.
field_of() {
    local st
    st=$(status_of "$1") || return 1
    json "$2" <<<"$st"
}

# index_of_id ID: which of our nodes has that Raft id.
index_of_id() {
    local i
    for i in "${NODES[@]}"; do
        if [[ -n ${ID_OF[i]} && ${ID_OF[i]} == "$1" ]]; then
            echo "$i"
            return 0
        fi
    done
    return 1
}

# names_on i: the machine names node i holds, one per line, read locally.
names_on() {
    local out
    out=$(cli_at "$1" machines list --stale -o json) || return 1
    json '"\n".join(m["name"] for m in d)' <<<"$out"
}

next_mac() {
    MAC_SEQ=$((MAC_SEQ + 1))
    MAC=$(printf '52:54:00:c4:%02x:%02x' $(((MAC_SEQ >> 8) & 255)) $((MAC_SEQ & 255)))
}

# write_at i NAME: creates a machine through node i, in this shell (not in a
# command substitution: it updates ACKED and MAC_SEQ). Sets OUTCOME to "ok",
# the error code the client printed, or "timeout"; records the name in ACKED
# on success.
write_at() {
    local i=$1 name=$2 err rc=0 mac
    err=$WORK/write.$name.err
    next_mac
    mac=$MAC
    cli_at "$i" machines create --name "$name" --mac "$mac" -o json >/dev/null 2>"$err" || rc=$?
    if ((rc == 0)); then
        ACKED+=("$name")
        OUTCOME=ok
    elif ((rc == 124 || rc == 137)); then
        OUTCOME=timeout
    else
        OUTCOME=$(sed -n 's/^error: \([a-z_]*\): .*/\1/p' "$err" | head -n 1)
        [[ -n $OUTCOME ]] || OUTCOME="rc$rc:$(head -c 200 "$err" | tr '\n' ' ')"
        log "  write $name via node $i: $(head -n 1 "$err")"
    fi
    echo "$name $OUTCOME" >>"$WORK/outcomes"
    rm -f "$err"
}

# ------------------------------------------------------------ the lab -------

cleanup_stale() {
    local ns pid dir
    while read -r ns _; do
        [[ $ns =~ ^cr-([0-9]+)-(br|cl|n[0-9]+)$ ]] || continue
        pid=${BASH_REMATCH[1]}
        if [[ $pid != "$RUN_ID" ]] && ! script_alive "$pid"; then
            log "removing stale namespace $ns (run $pid is gone)"
            delete_ns "$ns"
        fi
    done < <(ip netns list 2>/dev/null)
    for dir in /tmp/cr-chaos-*; do
        [[ -d $dir && $dir =~ ^/tmp/cr-chaos-([0-9]+)- ]] || continue
        pid=${BASH_REMATCH[1]}
        if [[ $pid != "$RUN_ID" ]] && ! script_alive "$pid"; then
            log "removing stale work dir $dir"
            rm -rf "$dir"
        fi
    done
}

add_ns() {
    ip netns add "$1"
    CREATED_NS+=("$1")
    ip -n "$1" link set lo up
}

# attach NS SHORT ADDR: a veth pair cr-<short>e (in NS) / cr-<short>b (on the
# bridge), NS's end addressed ADDR/24.
attach() {
    local ns=$1 short=$2 addr=$3
    ip -n "$NS_BR" link add "cr-${short}b" type veth peer name "cr-${short}e" netns "$ns"
    ip -n "$NS_BR" link set "cr-${short}b" master "$BRIDGE"
    ip -n "$NS_BR" link set "cr-${short}b" up
    ip -n "$ns" addr add "$addr/24" dev "cr-${short}e"
    ip -n "$ns" link set "cr-${short}e" up
}

build_lab() {
    local i
    add_ns "$NS_BR"
    ip -n "$NS_BR" link add "$BRIDGE" type bridge
    ip -n "$NS_BR" link set "$BRIDGE" up
    for i in "${NODES[@]}"; do
        add_ns "${NS_N[i]}"
        attach "${NS_N[i]}" "n$i" "${IP_N[i]}"
    done
    add_ns "$NS_CL"
    attach "$NS_CL" cl "$IP_CL"
}

# lab_reaches: from the client namespace, every node's address answers (a
# TCP connection to a closed port is refused, which proves the path).
lab_reaches() {
    ip netns exec "$NS_CL" python3 -c '
import socket, sys
for host in sys.argv[1:]:
    try:
        socket.create_connection((host, 9), timeout=1).close()
    except ConnectionRefusedError:
        pass
' "${IP_N[@]:1}" 2>/dev/null
}

cut_node() {
    ip -n "$NS_BR" link set "cr-n${1}b" down
    CUT[$1]=1
    log "cut off node $1 (${IP_N[$1]})"
}

heal_node() {
    ip -n "$NS_BR" link set "cr-n${1}b" up
    CUT[$1]=0
    log "healed node $1 (${IP_N[$1]})"
}

listen_args() {
    local i=$1
    echo "--data-dir $WORK/n$i --api-listen ${IP_N[i]}:8443 --rpc-listen ${IP_N[i]}:8444 --advertise-host ${IP_N[i]}"
}

# run_node i ARGS...: starts the binary in node i's namespace, logging to
# $WORK/n$i.log.
run_node() {
    local i=$1
    shift
    ip netns exec "${NS_N[i]}" env "${NODE_ENV[@]}" CRADLE_ADMIN_PASSWORD="$ADMIN_PASSWORD" \
        "$BIN" "$@" >>"$WORK/n$i.log" 2>&1 3>&- &
    PID_N[i]=$!
    log "node $i: started pid ${PID_N[i]}: cradle $(printf '%s ' "$@" | sed -E 's/(--token )[^ ]+/\1<redacted>/')"
}

node_alive() {
    kill -0 "${PID_N[$1]}" 2>/dev/null
}

# node_answers i: node i is running and answers an authenticated status call.
node_answers() {
    node_alive "$1" || { log "node $1 exited"; return 2; }
    status_of "$1" >/dev/null
}

ca_hash() {
    python3 -c '
import hashlib, ssl, sys
print("sha256:" + hashlib.sha256(ssl.PEM_cert_to_DER_cert(open(sys.argv[1]).read())).hexdigest())
' "$1"
}

try_login() {
    CRADLE_PASSWORD="$ADMIN_PASSWORD" timeout -k 2 "$CLI_TIMEOUT_S" \
        ip netns exec "$NS_CL" env CRADLE_CONFIG_DIR="$CFG" \
        "$BIN" login "https://${IP_N[1]}:8443" --user admin --ca-hash "$CA_HASH" \
        >>"$WORK/client.log" 2>&1
}

# is_voter_on i j: node i's status lists node j's Raft id as a voter.
is_voter_on() {
    local id=${ID_OF[$2]}
    [[ -n $id ]] || return 1
    [[ $(field_of "$1" "any(m['id'] == $id and m['voter'] for m in d['members'])") == true ]]
}

role_is() {
    [[ $(field_of "$1" "d['role']") == "$2" ]]
}

learn_id() {
    local id
    id=$(field_of "$1" "d['node_id']") || return 1
    [[ -n $id ]] || return 1
    ID_OF[$1]=$id
}

join_node() {
    local i=$1 line token hash url
    line=$(cli_at 1 token create --ttl 1h --uses 1 2>>"$WORK/client.log") ||
        abort "node $i: \`cradle token create --ttl 1h --uses 1\` failed: $(grep -v '^$' "$WORK/client.log" | tail -n 4 | tr '\n' ' ')"
    log "join line: $(sed -E 's/(--token[[:space:]]+)[^[:space:]]+/\1<redacted>/' <<<"$line")"
    [[ $line =~ --token[[:space:]]+([^[:space:]]+) ]] || abort "no --token in the join line: $line"
    token=${BASH_REMATCH[1]}
    [[ $line =~ --ca-hash[[:space:]]+(sha256:[0-9a-fA-F]+) ]] || abort "no --ca-hash in the join line"
    hash=${BASH_REMATCH[1]}
    check "join line carries the CA fingerprint of ca.pem" [ "${hash,,}" == "$CA_HASH" ]
    [[ $line =~ (https://[^[:space:]]+) ]] || abort "no URL in the join line"
    url=${BASH_REMATCH[1]}
    # Never follow an address outside the lab.
    [[ $url =~ ^https://198\.1[89]\.[0-9]+\.[0-9]+(:[0-9]+)?/?$ ]] ||
        abort "join line URL $url is not a lab address (198.18.0.0/15)"
    # shellcheck disable=SC2046 # listen_args is a word list by design
    run_node "$i" join --token "$token" --ca-hash "$hash" "$url" $(listen_args "$i")
    wait_until "node $i answering after join" "$START_TIMEOUT_S" node_answers "$i" ||
        abort "node $i did not come up after \`cradle join\`"
    learn_id "$i" || abort "node $i: no node_id in its status"
    wait_until "node $i (id ${ID_OF[i]}) a voter" "$FORM_TIMEOUT_S" is_voter_on 1 "$i" ||
        abort "node $i never became a voter"
    pass "node $i joined with a join token and became a voter (id ${ID_OF[i]})"
}

form_cluster() {
    # shellcheck disable=SC2046
    run_node 1 server $(listen_args 1)
    wait_until "node 1 to write its CA" "$START_TIMEOUT_S" test -s "$WORK/n1/ca.pem" ||
        abort "node 1 wrote no $WORK/n1/ca.pem"
    CA_HASH=$(ca_hash "$WORK/n1/ca.pem") || abort "cannot fingerprint $WORK/n1/ca.pem"
    log "CA fingerprint $CA_HASH"
    wait_until "cradle login to node 1" "$START_TIMEOUT_S" try_login ||
        abort "cradle login to node 1 failed: $(grep -v '^$' "$WORK/client.log" | tail -n 4 | tr '\n' ' ')"
    learn_id 1 || abort "node 1: no node_id in its status"
    wait_until "node 1 leader" "$ELECT_TIMEOUT_S" role_is 1 leader ||
        abort "node 1 did not become leader of its one-voter cluster"
    pass "node 1 started a one-voter cluster and logged in"
    join_node 2
    join_node 3
}

# --------------------------------------------------------- cluster views ----

# cluster_view MODE NODE...: fetches the given nodes' status once each and
# judges them together. MODE leader: all report the same leader in the same
# term, and that leader is one of them and says so itself; prints its index.
# MODE converged: that, the others are followers, and all have applied the
# same index.
cluster_view() {
    local mode=$1 i
    shift
    for i in "$@"; do
        status_of "$i" >"$WORK/status.$i" || return 1
    done
    python3 - "$mode" "$WORK" "$@" <<'PY'
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

agreed_leader() { cluster_view leader "$@"; }

converged() { cluster_view converged "$@" >/dev/null; }

describe() {
    local i st
    for i in "${NODES[@]}"; do
        if st=$(status_of "$i"); then
            log "  node $i: $(json '"role=%s leader=%s term=%s commit=%s applied=%s health=%s" % (d["role"], d["leader"], d["term"], d["commit_index"], d["applied_index"], d.get("health", "-"))' <<<"$st")"
        else
            log "  node $i: no status"
        fi
    done
}

# has_all i NAME...: node i holds every named machine (local read).
has_all() {
    local i=$1 names n
    shift
    names=$(names_on "$i") || return 1
    for n in "$@"; do
        grep -qxF -- "$n" <<<"$names" || return 1
    done
}

# ------------------------------------------------------------- scenario -----

phase_a() {
    local lead f m others=() i n ok name pre=() t0
    log "=== (a) cut off a follower ==="
    lead=$(agreed_leader "${NODES[@]}") || abort "(a) the cluster has no agreed leader"
    for i in "${NODES[@]}"; do ((i == lead)) || others+=("$i"); done
    f=${others[0]}
    m=${others[1]}
    log "leader is node $lead; cutting follower $f"

    for i in "${NODES[@]}"; do
        name="pa-pre-$i"
        write_at "$i" "$name"
        check "(a) write through node $i before the cut acknowledged ($OUTCOME)" [ "$OUTCOME" == ok ]
        [[ $OUTCOME == ok ]] && pre+=("$name")
    done
    wait_until "all three converged before the cut" "$CONVERGE_TIMEOUT_S" converged "${NODES[@]}" ||
        { describe; abort "(a) the cluster did not converge before the cut"; }

    cut_node "$f"
    ok=0
    for n in 1 2 3 4 5 6; do
        if ((n % 2)); then i=$lead; else i=$m; fi
        write_at "$i" "pa-maj-$n"
        [[ $OUTCOME == ok ]] && ok=$((ok + 1))
    done
    check "(a) writes continue on the majority ($ok/6 acknowledged)" [ "$ok" -eq 6 ]

    # The first write reaches the cut-off node while it still believes in its
    # leader; the next ones after it has noticed (no leader, or campaigning).
    cut_write "$f" pa-cut-1 "just after the cut" "$UNKNOWN_OUTCOME_CODES"
    if wait_until "node $f noticing it lost its leader" "$ELECT_TIMEOUT_S" lost_leader "$f"; then
        log "(a) cut-off node $f now reports role $(field_of "$f" "d['role']" || echo '?')"
    else
        fail "(a) cut-off node $f still reports a leader ${ELECT_TIMEOUT_S}s after the cut"
    fi
    cut_write "$f" pa-cut-2 "once it noticed"
    cut_write "$f" pa-cut-3 "once it noticed"

    if has_all "$f" "${pre[@]}"; then
        pass "(a) cut-off node $f serves stale reads (holds all ${#pre[@]} writes from before the cut)"
    else
        fail "(a) cut-off node $f: stale read failed or misses writes from before the cut"
    fi

    heal_node "$f"
    if wait_until "node $f converging after heal" "$CONVERGE_TIMEOUT_S" converged "${NODES[@]}"; then
        pass "(a) healed node $f converged (same leader, term and applied index)"
    else
        describe
        fail "(a) healed node $f did not converge within ${CONVERGE_TIMEOUT_S}s"
    fi
    if wait_until "node $f holding every acknowledged write" 10 has_all "$f" "${ACKED[@]}"; then
        pass "(a) healed node $f holds every acknowledged write"
    else
        fail "(a) healed node $f misses acknowledged writes"
    fi
}

# lost_leader i: node i reports no leader, or is campaigning.
lost_leader() {
    local st
    st=$(status_of "$1") || return 1
    [[ $(json "d['role'] == 'candidate' or d['leader'] is None" <<<"$st") == true ]]
}

# cut_write i NAME WHEN [EXTRA_CODES]: a write to cut-off node i must fail
# with a code that says the leader could not be reached (nothing was
# proposed), or one of EXTRA_CODES.
cut_write() {
    local i=$1 name=$2 when=$3 codes="$CUT_WRITE_CODES ${4:-}" t0=$SECONDS
    write_at "$i" "$name"
    if [[ " $codes " == *" $OUTCOME "* ]]; then
        pass "(a) cut-off node $i refuses write $name $when ($OUTCOME, after $((SECONDS - t0))s)"
    elif [[ $OUTCOME == ok ]]; then
        fail "(a) cut-off node $i acknowledged write $name $when"
    else
        pass "(a) cut-off node $i did not acknowledge write $name $when"
        fail "(a) cut-off node $i: write $name $when gave '$OUTCOME' after $((SECONDS - t0))s, want one of: $codes"
    fi
}

# Writes sent to the cut-off old leader, in the background; one outcome line
# per write ("NAME OUTCOME") in $WORK/old-writes.
old_leader_writes() {
    local old=$1 n pids=()
    for n in 1 2 3; do
        (
            # A MAC range of its own: this runs in a copy of the shell,
            # beside the majority writes.
            MAC_SEQ=$((40000 + 100 * n))
            write_at "$old" "pb-old-$n"
            echo "pb-old-$n $OUTCOME" >>"$WORK/old-writes"
        ) &
        pids+=($!)
    done
    wait "${pids[@]}" || true
}

bg_done() { ! kill -0 "$1" 2>/dev/null; }

phase_b() {
    local old term0 others=() i n ok newl name outcome old_acked=() st role term1
    log "=== (b) cut off the leader ==="
    old=$(agreed_leader "${NODES[@]}") || abort "(b) the cluster has no agreed leader"
    term0=$(field_of "$old" "d['term']") || abort "(b) no status from the leader"
    for i in "${NODES[@]}"; do ((i == old)) || others+=("$i"); done
    log "leader is node $old (term $term0); cutting it off"

    cut_node "$old"
    : >"$WORK/old-writes"
    old_leader_writes "$old" &
    BG_PIDS+=($!)
    local writer=$!

    if newl=$(wait_until "a new leader among nodes ${others[*]}" "$ELECT_TIMEOUT_S" agreed_leader "${others[@]}"); then
        newl=${newl##*$'\n'}
        pass "(b) the majority elected a new leader: node $newl"
    else
        describe
        abort "(b) the majority (nodes ${others[*]}) elected no leader within ${ELECT_TIMEOUT_S}s"
    fi

    ok=0
    for n in 1 2 3 4 5 6; do
        i=${others[$((n % 2))]}
        write_at "$i" "pb-maj-$n"
        [[ $OUTCOME == ok ]] && ok=$((ok + 1))
    done
    check "(b) writes continue on the majority ($ok/6 acknowledged)" [ "$ok" -eq 6 ]

    if st=$(status_of "$old"); then
        log "(b) cut-off old leader reports $(json '"role=%s term=%s leader=%s health=%s" % (d["role"], d["term"], d["leader"], d.get("health", "-"))' <<<"$st")"
    fi
    check "(b) cut-off old leader still serves stale reads" names_on "$old" >/dev/null

    wait_until "the writes sent to the old leader to finish" "$OLD_WRITES_TIMEOUT_S" bg_done "$writer" ||
        fail "(b) writes to the old leader still running after ${OLD_WRITES_TIMEOUT_S}s"
    wait "$writer" 2>/dev/null || true
    while read -r name outcome; do
        log "(b) write $name to the cut-off old leader: $outcome"
        if [[ $outcome == ok ]]; then
            # Only acceptable if the majority has it (checked after heal).
            ACKED+=("$name")
            old_acked+=("$name")
            log "(b) the cut-off old leader acknowledged $name: it must exist on the majority"
        else
            pass "(b) the cut-off old leader did not acknowledge $name ($outcome)"
        fi
    done <"$WORK/old-writes"
    [[ -s $WORK/old-writes ]] || fail "(b) no write to the old leader was recorded"

    heal_node "$old"
    if wait_until "node $old stepping down and converging" "$CONVERGE_TIMEOUT_S" converged "${NODES[@]}"; then
        role=$(field_of "$old" "d['role']") || role="?"
        term1=$(field_of "$old" "d['term']") || term1="?"
        check "(b) old leader $old stepped down (role $role, term $term0 -> $term1)" \
            [ "$role" == follower ]
        pass "(b) the cluster converged after heal (same leader, term and applied index)"
    else
        describe
        fail "(b) old leader $old did not step down and converge within ${CONVERGE_TIMEOUT_S}s"
    fi
    for name in "${old_acked[@]}"; do
        if has_all "${others[0]}" "$name" && has_all "${others[1]}" "$name"; then
            pass "(b) $name, acknowledged by the cut-off old leader, exists on the majority"
        else
            fail "(b) $name was acknowledged by the cut-off old leader but is not on the majority"
        fi
    done
}

final_check() {
    local i name outcome c names total=${#ACKED[@]} bad counts=() refused=() unknown=()
    log "=== final: every acknowledged write exactly once on every node ==="
    while read -r name outcome; do
        [[ $outcome == ok ]] && continue
        if [[ " $CUT_WRITE_CODES " == *" ${outcome%% *} "* ]]; then
            refused+=("$name")
        else
            unknown+=("$name")
        fi
    done <"$WORK/outcomes"
    for i in "${NODES[@]}"; do
        if ! names=$(names_on "$i"); then
            fail "final: node $i: cannot list machines"
            continue
        fi
        bad=0
        for name in "${ACKED[@]}"; do
            c=$(grep -cxF -- "$name" <<<"$names" || true)
            if [[ $c != 1 ]]; then
                log "final: node $i holds $c copies of acknowledged $name"
                bad=$((bad + 1))
            fi
        done
        check "final: node $i holds each of the $total acknowledged writes exactly once" [ "$bad" -eq 0 ]
        bad=0
        for name in "${refused[@]}"; do
            if grep -qxF -- "$name" <<<"$names"; then
                log "final: node $i holds $name, refused with $CUT_WRITE_CODES (nothing proposed)"
                bad=$((bad + 1))
            fi
        done
        check "final: node $i holds none of the ${#refused[@]} writes refused as not proposed" [ "$bad" -eq 0 ]
        for name in "${unknown[@]}"; do
            if grep -qxF -- "$name" <<<"$names"; then
                log "final: node $i holds $name, whose write failed with an unknown outcome (allowed)"
            fi
        done
        counts+=("$(grep -c . <<<"$names" || true)")
    done
    if ((${#counts[@]} == ${#NODES[@]})) &&
        [[ $(printf '%s\n' "${counts[@]}" | sort -u | wc -l) -eq 1 ]]; then
        pass "final: every node holds the same number of machines (${counts[*]})"
    else
        fail "final: the nodes hold different numbers of machines, or did not answer (${counts[*]})"
    fi
}

main() {
    local bin_arg=${1:-target/debug/cradle}
    if [[ ${1:-} == -h || ${1:-} == --help ]]; then
        sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
    fi
    [[ $EUID -eq 0 ]] || { echo "error: run as root (network namespaces): sudo $0" >&2; exit 2; }
    [[ $bin_arg == /* ]] || bin_arg="$ROOT_DIR/$bin_arg"
    [[ -x $bin_arg ]] || { echo "error: no cradle binary at $bin_arg (cargo build --bin cradle)" >&2; exit 2; }
    BIN=$(realpath "$bin_arg")
    local tool
    for tool in ip python3 timeout; do
        command -v "$tool" >/dev/null || { echo "error: $tool is required" >&2; exit 2; }
    done

    trap cleanup EXIT
    trap 'ABORTED="interrupted"; exit 130' INT
    trap 'ABORTED="terminated (deadline ${DEADLINE_S}s or signal)"; exit 143' TERM

    # Watchdog: polls in short sleeps, so stopping it leaves nothing behind.
    (
        end=$((SECONDS + DEADLINE_S))
        while ((SECONDS < end)); do sleep 1; done
        log "deadline of ${DEADLINE_S}s reached"
        kill -TERM "$RUN_ID"
    ) &
    WATCHDOG_PID=$!

    log "cradle binary: $BIN; run id $RUN_ID"
    cleanup_stale
    WORK=$(mktemp -d "/tmp/cr-chaos-${RUN_ID}-XXXXXX")
    CFG=$WORK/client
    mkdir -p "$CFG"
    chmod 700 "$WORK"
    : >"$WORK/outcomes"

    build_lab
    wait_until "the lab bridge forwarding" 15 lab_reaches || abort "the lab network does not forward"
    pass "lab up: bridge $NS_BR/$BRIDGE, nodes ${NS_N[*]:1}, client $NS_CL"

    form_cluster
    wait_until "three nodes converged" "$CONVERGE_TIMEOUT_S" converged "${NODES[@]}" ||
        { describe; abort "the 3-node cluster did not converge after forming"; }
    pass "3-node cluster formed and converged"
    describe

    phase_a
    describe
    phase_b
    describe
    final_check
}

# Sourcing the file (for trying its parts by hand) defines the functions only.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
