//! Multi-node behaviour, judged from what clients received: a leader killed
//! under load loses no acknowledged write, bad joins change nothing, and a
//! node cut off from the majority refuses writes but serves local reads, and
//! replicas with different local settings hold the same state (equal digests).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster_harness::{
    join_args, Cluster, Options, CONVERGE_LIMIT, JOIN_LIMIT, LEADER_LIMIT, START_LIMIT,
};
use crate::common::Client;

/// Concurrent writers per node.
const WRITERS_PER_NODE: usize = 3;
/// Per-write timeout: above the server's no-leader wait (5 s), so a write
/// that waits out an election still gets its answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause after a failed write, so writers of a dead node do not spin.
const FAILED_WRITE_PAUSE: Duration = Duration::from_millis(50);
/// Hard stop for every writer, whatever the test's phases do.
const WRITERS_LIMIT: Duration = Duration::from_secs(45);
/// Most writes one writer makes.
const MAX_WRITES_PER_WRITER: usize = 20_000;
/// Longest to wait for the first acknowledged write after the kill, and
/// after the restart on the restarted node.
const RESUME_LIMIT: Duration = Duration::from_secs(15);
/// Acknowledged writes (per node where one is named) that show writes
/// flow in a phase of the failover test.
const ACKS_PER_PHASE: usize = 30;
/// Longest a cut node may go on hearing a leader (a few election timeouts).
const CUT_LIMIT: Duration = Duration::from_secs(10);
/// Longest a failing `cradle join` may run before it must have exited.
const EXIT_LIMIT: Duration = Duration::from_secs(30);

/// What one create got back.
#[derive(Debug, Clone)]
enum Outcome {
    /// A 2xx; the body's uuid and revision if it could be read.
    Acked {
        uuid: Option<String>,
        revision: Option<u64>,
    },
    /// A non-2xx answer with its error code and message.
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// No answer (connection refused or reset, timeout): unknown whether it
    /// committed.
    Failed(String),
}

#[derive(Debug, Clone)]
struct Attempt {
    name: String,
    node: usize,
    sent: Instant,
    done: Instant,
    outcome: Outcome,
}

impl Attempt {
    fn acked(&self) -> bool {
        matches!(self.outcome, Outcome::Acked { .. })
    }
}

fn mac(n: u32) -> String {
    format!(
        "52:54:01:{:02x}:{:02x}:{:02x}",
        (n >> 16) & 0xff,
        (n >> 8) & 0xff,
        n & 0xff
    )
}

/// Creates machines with fresh names on one node until told to stop. A
/// failed write is never retried: the next attempt has a new name.
async fn writer(
    client: Client,
    node: usize,
    next: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Attempt>>>,
) {
    let deadline = Instant::now() + WRITERS_LIMIT;
    let token = client.token.clone().expect("token");
    for _ in 0..MAX_WRITES_PER_WRITER {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return;
        }
        let n = next.fetch_add(1, Ordering::Relaxed);
        let name = format!("fo-{n}");
        let body = json!({"name": name, "hardware_addrs": [mac(n)]});
        let sent = Instant::now();
        let result = client
            .http
            .post(client.url("/api/v1/machines"))
            .bearer_auth(&token)
            .json(&body)
            .timeout(WRITE_TIMEOUT)
            .send()
            .await;
        let outcome = match result {
            Ok(response) => {
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if status.is_success() {
                    Outcome::Acked {
                        uuid: body["uuid"].as_str().map(str::to_string),
                        revision: body["revision"].as_u64(),
                    }
                } else {
                    Outcome::Rejected {
                        status: status.as_u16(),
                        code: body["code"].as_str().unwrap_or("").to_string(),
                        message: body["message"].as_str().unwrap_or("").to_string(),
                    }
                }
            }
            Err(e) => Outcome::Failed(e.to_string()),
        };
        let attempt = Attempt {
            name,
            node,
            sent,
            done: Instant::now(),
            outcome,
        };
        let failed = !attempt.acked();
        log.lock().expect("attempt log").push(attempt);
        if failed {
            tokio::time::sleep(FAILED_WRITE_PAUSE).await;
        }
    }
}

/// Waits until some acknowledged write was sent after `since` (through
/// `node` if given); returns when it completed.
async fn wait_for_ack(
    log: &Mutex<Vec<Attempt>>,
    since: Instant,
    node: Option<usize>,
    limit: Duration,
) -> Option<Instant> {
    wait_for_acks(log, since, node, 1, limit).await
}

/// Waits until `count` acknowledged writes were sent after `since` (through
/// `node` if given); returns when the first of them completed.
async fn wait_for_acks(
    log: &Mutex<Vec<Attempt>>,
    since: Instant,
    node: Option<usize>,
    count: usize,
    limit: Duration,
) -> Option<Instant> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let done: Vec<Instant> = log
            .lock()
            .expect("attempt log")
            .iter()
            .filter(|a| a.acked() && a.sent >= since && node.is_none_or(|n| a.node == n))
            .map(|a| a.done)
            .collect();
        if done.len() >= count {
            return done.into_iter().min();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_loses_no_acknowledged_write() {
    let test_started = Instant::now();
    let mut cluster = Cluster::start(3).await;
    eprintln!(
        "3-node cluster up in {:.1} s",
        test_started.elapsed().as_secs_f64()
    );

    let next = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let mut writers = Vec::new();
    for node in 0..3 {
        for _ in 0..WRITERS_PER_NODE {
            writers.push(tokio::spawn(writer(
                cluster.client(node),
                node,
                next.clone(),
                stop.clone(),
                log.clone(),
            )));
        }
    }

    // Writes flow on all three; then SIGKILL the leader.
    for node in 0..3 {
        let flowing =
            wait_for_acks(&log, test_started, Some(node), ACKS_PER_PHASE, RESUME_LIMIT).await;
        assert!(flowing.is_some(), "writes through node {node} do not flow");
    }
    let old_leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let before_kill = log.lock().unwrap().iter().filter(|a| a.acked()).count();
    assert!(before_kill > 0, "no write acknowledged before the kill");
    let killed_at = Instant::now();
    cluster.kill(old_leader);
    eprintln!("killed the leader, node {old_leader}, after {before_kill} acknowledged writes");

    // Writes resume through the survivors.
    let resumed = wait_for_ack(&log, killed_at, None, RESUME_LIMIT).await;
    let resumed = resumed.unwrap_or_else(|| {
        panic!("no write acknowledged within {RESUME_LIMIT:?} of killing the leader")
    });
    let new_leader = cluster.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, old_leader);
    let flowing = wait_for_acks(&log, resumed, None, ACKS_PER_PHASE, RESUME_LIMIT).await;
    assert!(flowing.is_some(), "writes do not flow under the new leader");

    // The old leader restarts, rejoins, takes writes again and catches up.
    let restarted_at = Instant::now();
    let restart_took = cluster.restart(old_leader).await;
    let rejoined = wait_for_ack(&log, restarted_at, Some(old_leader), RESUME_LIMIT).await;
    assert!(
        rejoined.is_some(),
        "the restarted node {old_leader} acknowledged no write within {RESUME_LIMIT:?}"
    );
    let flowing = wait_for_acks(
        &log,
        restarted_at,
        Some(old_leader),
        ACKS_PER_PHASE,
        RESUME_LIMIT,
    )
    .await;
    assert!(flowing.is_some(), "writes through the restarted node stall");
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        tokio::time::timeout(WRITE_TIMEOUT + Duration::from_secs(5), writer)
            .await
            .expect("writer stops")
            .expect("writer task");
    }
    let commit = cluster.wait_converged(Duration::from_secs(30)).await;
    let attempts = std::mem::take(&mut *log.lock().unwrap());

    // Figures.
    let mut acked_done: Vec<Instant> = attempts
        .iter()
        .filter(|a| a.acked())
        .map(|a| a.done)
        .collect();
    acked_done.sort();
    let max_gap = acked_done
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let mut rejected: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed: BTreeMap<&str, usize> = BTreeMap::new();
    for attempt in &attempts {
        match &attempt.outcome {
            Outcome::Acked { .. } => {}
            Outcome::Rejected {
                status,
                code,
                message,
            } => {
                *rejected
                    .entry(format!("{status} {code}: {message}"))
                    .or_default() += 1
            }
            Outcome::Failed(error) => *failed.entry(error.as_str()).or_default() += 1,
        }
    }
    let after_kill = attempts
        .iter()
        .filter(|a| a.acked() && a.sent >= killed_at)
        .count();
    eprintln!(
        "{} writes: {} acknowledged ({after_kill} sent after the kill), rejected {rejected:?}, without answer {failed:?}",
        attempts.len(),
        acked_done.len(),
    );
    eprintln!(
        "write gap: first acknowledged write sent after the kill completed {:.0} ms after it; longest pause between acknowledgements {:.0} ms; restart to following a leader {:.1} s; converged at commit index {commit}",
        (resumed - killed_at).as_secs_f64() * 1e3,
        max_gap.as_secs_f64() * 1e3,
        restart_took.as_secs_f64(),
    );

    // Judge from what clients received: every acknowledged create is on
    // every node exactly once, with the uuid and revision it was
    // acknowledged with.
    let mut acked: BTreeMap<&str, (&Option<String>, &Option<u64>)> = BTreeMap::new();
    for attempt in &attempts {
        if let Outcome::Acked { uuid, revision } = &attempt.outcome {
            let earlier = acked.insert(&attempt.name, (uuid, revision));
            assert!(earlier.is_none(), "{} acknowledged twice", attempt.name);
        }
    }
    let attempted: BTreeSet<&str> = attempts.iter().map(|a| a.name.as_str()).collect();
    let mut reference: Option<BTreeSet<(String, String, u64)>> = None;
    for node in cluster.running() {
        let listed = cluster.list_all(node, "machines").await;
        let mut by_name: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        let mut everything = BTreeSet::new();
        for machine in &listed {
            let name = machine["name"].as_str().expect("name").to_string();
            let uuid = machine["uuid"].as_str().expect("uuid").to_string();
            let revision = machine["revision"].as_u64().expect("revision");
            by_name
                .entry(name.clone())
                .or_default()
                .push((uuid.clone(), revision));
            everything.insert((name, uuid, revision));
        }
        for (name, copies) in &by_name {
            assert_eq!(copies.len(), 1, "node {node} lists {name} {copies:?}");
            assert!(
                attempted.contains(name.as_str()),
                "node {node} lists {name}, which no client created"
            );
        }
        let mut missing = Vec::new();
        for (name, (uuid, revision)) in &acked {
            match by_name.get(*name).map(|c| &c[0]) {
                None => missing.push(*name),
                Some((listed_uuid, listed_revision)) => {
                    if let Some(uuid) = uuid {
                        assert_eq!(listed_uuid, uuid, "node {node}: uuid of {name}");
                    }
                    if let Some(revision) = revision {
                        assert_eq!(listed_revision, revision, "node {node}: revision of {name}");
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "node {node} lacks {} of {} acknowledged writes, e.g. {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(10)]
        );
        let unacknowledged = by_name.len() - acked.len();
        eprintln!(
            "node {node}: {} machines, all {} acknowledged ones exactly once; {unacknowledged} committed without an acknowledgement",
            by_name.len(),
            acked.len()
        );
        match &reference {
            None => reference = Some(everything),
            Some(reference) => assert!(
                *reference == everything,
                "node {node} lists other machines than the first node: {} vs {}",
                everything.len(),
                reference.len()
            ),
        }
    }
    let mut revisions = BTreeSet::new();
    for node in cluster.running() {
        let status = cluster.try_status(node).await.expect("status");
        revisions.insert(status["revision"].as_u64());
        let voter = status["members"].as_array().is_some_and(|ms| {
            ms.iter()
                .any(|m| m["id"].as_u64() == cluster.nodes[old_leader].id && m["voter"] == true)
        });
        assert!(voter, "node {node} does not list the old leader as a voter");
    }
    assert_eq!(revisions.len(), 1, "revisions differ: {revisions:?}");
    eprintln!(
        "failover test took {:.1} s",
        test_started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_joins_change_nothing() {
    let mut cluster = Cluster::start(1).await;
    let first_id = cluster.nodes[0].id.expect("first node id");
    let alone = cluster.cluster_nodes(0).await;
    assert_eq!(
        alone.iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![first_id]
    );
    let token = cluster.create_join_token(0, 3600, 1).await;
    assert_eq!(
        token.ca_hash, cluster.ca_hash,
        "join command pins another CA"
    );
    let (id, secret) = token.token.split_once('.').expect("<id>.<secret>");

    // A join that must fail: `cradle join` exits non-zero and membership
    // is unchanged. Each attempt gets a fresh slot (data dir, addresses).
    async fn refused(cluster: &mut Cluster, what: &str, args: Vec<String>) {
        let members = cluster.cluster_nodes(0).await;
        let slot = cluster.add_slot();
        let status = cluster.run_to_exit(slot, &args, EXIT_LIMIT).await;
        assert!(
            !status.success(),
            "join with {what} succeeded; log:\n{}",
            cluster.nodes[slot].log_tail()
        );
        assert_eq!(
            cluster.cluster_nodes(0).await,
            members,
            "join with {what} changed membership"
        );
    }

    let wrong_hash = format!("sha256:{}", "00".repeat(32));
    refused(
        &mut cluster,
        "a wrong --ca-hash",
        join_args(&token.token, &wrong_hash, &token.endpoint),
    )
    .await;
    refused(
        &mut cluster,
        "a malformed --ca-hash",
        join_args(&token.token, "md5:1234", &token.endpoint),
    )
    .await;
    let wrong_secret: String = secret
        .chars()
        .map(|c| if c == 'a' { 'b' } else { 'a' })
        .collect();
    let ca_hash = cluster.ca_hash.clone();
    for (what, bad) in [
        ("a token without a dot", "garbage".to_string()),
        ("an empty secret", format!("{id}.")),
        ("an empty id", format!(".{secret}")),
        ("an unknown id", format!("nosuchid.{secret}")),
        ("a wrong secret", format!("{id}.{wrong_secret}")),
    ] {
        refused(
            &mut cluster,
            what,
            join_args(&bad, &ca_hash, &token.endpoint),
        )
        .await;
    }

    // None of those consumed the one use: the token still joins a node.
    let slot = cluster.add_slot();
    let took = cluster.join_with(slot, &token).await;
    assert!(took < JOIN_LIMIT);
    let second_id = cluster.nodes[slot].id.expect("joined node id");
    let pair = cluster.cluster_nodes(0).await;
    assert_eq!(
        pair.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>(),
        {
            let mut want = vec![(first_id, true), (second_id, true)];
            want.sort();
            want
        },
        "after one good join"
    );
    assert_eq!(
        cluster.cluster_nodes(slot).await,
        pair,
        "members differ by node"
    );

    // Now it is used up. (An expired token is refused by `cradle join` in
    // `join_tokens::join_refuses_a_ca_that_does_not_match_the_pin`, where
    // the node's clock can be moved instead of waited for.)
    refused(&mut cluster, "a used-up token", token.args()).await;

    // A node will not remove the node it is answering from without force.
    for (via, id) in [(0, first_id), (slot, second_id)] {
        let reply = cluster
            .client(via)
            .delete(&format!("/api/v1/cluster/nodes/{id}"))
            .await;
        assert!(
            reply.status.is_client_error() && !reply.code().is_empty(),
            "DELETE of node {id} through itself: {} {:?}",
            reply.status,
            reply.body
        );
        assert_eq!(cluster.cluster_nodes(0).await, pair);
    }

    // A join sent to a follower is served there: the Join command reaches
    // the leader through the log and the follower signs with the
    // replicated CA.
    let leader = cluster.wait_leader(LEADER_LIMIT).await;
    let follower = if leader == 0 { slot } else { 0 };
    let mut via_follower = cluster.create_join_token(0, 3600, 1).await;
    via_follower.endpoint = format!("https://{}", cluster.nodes[follower].api_addr);
    let third = cluster.add_slot();
    assert!(cluster.join_with(third, &via_follower).await < JOIN_LIMIT);
    let third_id = cluster.nodes[third]
        .id
        .expect("node joined through a follower");
    assert!(cluster
        .cluster_nodes(0)
        .await
        .iter()
        .any(|m| m.0 == third_id));
    cluster.wait_converged(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_majority_refuses_writes_and_serves_reads() {
    let no_leader_wait = Duration::from_millis(1_500);
    let mut cluster = Cluster::start_with(
        3,
        Options {
            no_leader_wait_ms: no_leader_wait.as_millis() as u64,
            ..Options::default()
        },
    )
    .await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (survivor, other) = (followers[0], followers[1]);
    let before = cluster
        .client(survivor)
        .post(
            "/api/v1/machines",
            json!({"name": "before", "hardware_addrs": [mac(1)]}),
        )
        .await
        .expect(201);
    let before_uuid = before.body["uuid"].as_str().expect("uuid").to_string();
    cluster.wait_converged(Duration::from_secs(10)).await;

    // Two of three gone: the survivor cannot elect a leader.
    cluster.kill(leader);
    cluster.kill(other);
    let api = cluster.client(survivor);
    let started = Instant::now();
    let reply = api
        .post(
            "/api/v1/machines",
            json!({"name": "during", "hardware_addrs": [mac(2)]}),
        )
        .await;
    let waited = started.elapsed();
    eprintln!(
        "write without a majority: {} {:?} after {} ms",
        reply.status,
        reply.body,
        waited.as_millis()
    );
    reply.expect_error(503, "no_leader");
    assert!(
        waited + Duration::from_millis(100) >= no_leader_wait && waited < no_leader_wait * 4,
        "the write failed after {waited:?}, not after about {no_leader_wait:?}"
    );
    // Local reads go on; a linearizable read cannot.
    let read = api
        .get(&format!("/api/v1/machines/{before_uuid}"))
        .await
        .expect(200);
    assert_eq!(read.body["name"], "before");
    let reply = api.get("/api/v1/machines?consistent=true").await;
    assert_eq!(
        reply.status, 503,
        "consistent read without a majority: {:?}",
        reply.body
    );

    // A majority again: writes resume on the same node.
    cluster.restart(other).await;
    cluster.wait_leader(Duration::from_secs(10)).await;
    api.post(
        "/api/v1/machines",
        json!({"name": "after", "hardware_addrs": [mac(3)]}),
    )
    .await
    .expect(201);
    cluster.restart(leader).await;
    cluster.wait_converged(Duration::from_secs(20)).await;
    for node in cluster.running() {
        let mut names: Vec<String> = cluster
            .list_all(node, "machines")
            .await
            .iter()
            .map(|m| m["name"].as_str().unwrap_or("").to_string())
            .collect();
        names.sort();
        // "during" found no leader to propose it, so it must not appear.
        assert_eq!(names, ["after", "before"], "node {node}");
    }
}

/// Replicas started with different node-local settings (the per-node event
/// retention that used to decide which events apply deleted, snapshot
/// cadence, token lifetimes) apply the same entries to the same state: every
/// node reports the same state digest at the same index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_different_local_settings_report_equal_digests() {
    let mut cluster = Cluster::start(3).await;
    for (i, retention, snapshot_every, token_ttl) in
        [(1, "20", "25", "600"), (2, "5000", "1000", "7200")]
    {
        cluster.kill(i);
        let args: Vec<String> = [
            "server",
            "--event-retention",
            retention,
            "--snapshot-every",
            snapshot_every,
            "--token-ttl-secs",
            token_ttl,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        cluster.spawn(i, &args).unwrap_or_else(|e| panic!("{e}"));
        cluster
            .wait_api(i, START_LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        cluster
            .wait_ready(i, START_LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    cluster.wait_converged(CONVERGE_LIMIT).await;

    // A short feed, so trimming happens within the test.
    cluster
        .client(0)
        .patch(
            "/api/v1/prefs/prefs",
            json!([{"op": "replace", "path": "/event_retention", "value": 16}]),
        )
        .await
        .expect(200);
    let mut uuids = Vec::new();
    for n in 0..40u32 {
        let via = cluster.client((n % 3) as usize);
        let reply = via
            .post(
                "/api/v1/machines",
                json!({"name": format!("d{n}"), "hardware_addrs": [mac(1000 + n)]}),
            )
            .await
            .expect(201);
        uuids.push(reply.body["uuid"].as_str().expect("uuid").to_string());
    }
    for (n, uuid) in uuids.iter().take(10).enumerate() {
        let via = cluster.client(n % 3);
        via.delete(&format!("/api/v1/machines/{uuid}"))
            .await
            .expect(200);
    }
    let commit = cluster.wait_converged(CONVERGE_LIMIT).await;

    let mut digests = BTreeSet::new();
    for i in cluster.running() {
        let status = cluster.try_status(i).await.expect("status");
        eprintln!(
            "node {i}: applied {} digest {} at {}",
            status["applied_index"], status["state_digest"], status["state_digest_index"]
        );
        assert_eq!(status["applied_index"].as_u64(), Some(commit));
        let digest = status["state_digest"].as_str().expect("a digest");
        assert_eq!(digest.len(), 64, "{digest}");
        digests.insert((
            status["state_digest_index"].as_u64().expect("an index"),
            digest.to_string(),
        ));
    }
    assert_eq!(digests.len(), 1, "nodes disagree: {digests:?}");
    // Every node has registered the log format it reads.
    let members = cluster
        .client(0)
        .get("/api/v1/cluster/nodes")
        .await
        .expect(200);
    let members = members.body.as_array().expect("members");
    assert_eq!(members.len(), 3, "{members:?}");
    for member in members {
        assert_eq!(
            member["log_format"],
            cradle::store::frames::NEWEST_FORMAT,
            "{member}"
        );
    }
}

/// The test cluster's own faults do what they say, judged from the nodes'
/// status: a cut follower hears no leader (and, with pre-vote, starts no
/// election), the majority keeps its leader and term and writes through the
/// cut node are refused; after the heal every node converges to the same
/// state under the same leader and term; a paused leader is replaced and
/// rejoins when resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_heal_and_pause_isolate_a_node() {
    let mut cluster = Cluster::start_with(
        3,
        Options {
            relay: true,
            no_leader_wait_ms: 1_500,
            ..Options::default()
        },
    )
    .await;
    let leader = cluster.wait_leader(LEADER_LIMIT).await;
    let term = |status: &Value| status["term"].as_u64().expect("term");
    let term_before = term(&cluster.try_status(leader).await.expect("status"));
    let follower = (0..3).find(|&i| i != leader).unwrap();

    cluster.cut(follower);
    let started = Instant::now();
    loop {
        let status = cluster.try_status(follower).await.expect("status");
        if status["leader"].is_null() {
            // Cut off, it hears no leader; pre-vote keeps it from starting
            // elections it cannot win, so its term stays.
            assert_eq!(term(&status), term_before, "the cut node started elections");
            break;
        }
        assert!(
            started.elapsed() < CUT_LIMIT,
            "the cut node still named leader {} after {CUT_LIMIT:?}",
            status["leader"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The majority neither heard the cut node's elections nor lost its leader.
    assert_eq!(cluster.wait_leader(LEADER_LIMIT).await, leader);
    let majority_term = term(&cluster.try_status(leader).await.expect("status"));
    assert_eq!(majority_term, term_before, "vote requests crossed the cut");
    cluster
        .client(leader)
        .post(
            "/api/v1/machines",
            json!({"name": "during-cut", "hardware_addrs": [mac(10)]}),
        )
        .await
        .expect(201);
    let refused = cluster
        .client(follower)
        .post(
            "/api/v1/machines",
            json!({"name": "on-the-cut-node", "hardware_addrs": [mac(11)]}),
        )
        .await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);

    cluster.heal(follower);
    cluster.wait_converged(Duration::from_secs(30)).await;
    // Back, it deposes nobody: same leader, same term.
    assert_eq!(cluster.wait_leader(LEADER_LIMIT).await, leader);
    let healed_term = term(&cluster.try_status(leader).await.expect("status"));
    assert_eq!(healed_term, term_before, "the heal caused an election");
    let digests = cluster.assert_same_digests(Duration::from_secs(30)).await;
    eprintln!("after the heal: {digests:?}");
    let leader = cluster.wait_leader(LEADER_LIMIT).await;
    let names: Vec<String> = cluster
        .list_all(follower, "machines")
        .await
        .iter()
        .map(|m| m["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(names, ["during-cut"], "the healed node's state");

    // A stopped leader is replaced; resumed, it follows again.
    let term_before = term(&cluster.try_status(leader).await.expect("status"));
    cluster.pause(leader);
    let new_leader = cluster.wait_leader(LEADER_LIMIT).await;
    assert_ne!(new_leader, leader);
    let new_term = term(&cluster.try_status(new_leader).await.expect("status"));
    assert!(new_term > term_before);
    cluster.resume(leader);
    cluster.wait_converged(Duration::from_secs(30)).await;
    cluster.assert_same_digests(Duration::from_secs(30)).await;
}
