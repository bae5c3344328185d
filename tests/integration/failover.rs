//! A frozen leader, judged from what clients received: with the leader
//! stopped (SIGSTOP) while clients write to every node, the other nodes
//! acknowledge writes again within about one election, not when the freeze
//! ends; after SIGCONT no acknowledged write is lost and the old leader
//! follows. A frozen follower returns without an election.
//!
//! A cut link and its heal are tested in the raft crate's in-process cluster
//! (`cluster_tests.rs`), where the test controls the network.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster_harness::{Cluster, Options};
use crate::common::Client;

/// Concurrent writers per node.
const WRITERS_PER_NODE: usize = 3;
/// Per-write timeout: longer than the freeze, so a write sent to the frozen
/// node gets its answer after SIGCONT instead of a client timeout.
const WRITE_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause after a failed write, so writers do not spin.
const FAILED_WRITE_PAUSE: Duration = Duration::from_millis(50);
/// Hard stop for every writer.
const WRITERS_LIMIT: Duration = Duration::from_secs(60);
/// Most writes one writer makes.
const MAX_WRITES_PER_WRITER: usize = 20_000;
/// How long the leader stays stopped.
const FREEZE: Duration = Duration::from_secs(5);
/// Longest pause between acknowledged writes allowed on a node that was not
/// frozen. One election takes about 1–1.5 s here; the bound is generous so
/// a loaded machine does not make the test flaky, yet below the freeze, so
/// writes held until the freeze ends fail it.
const GAP_BOUND: Duration = Duration::from_secs(4);

/// What one create got back.
#[derive(Debug, Clone)]
struct Attempt {
    name: String,
    node: usize,
    sent: Instant,
    done: Instant,
    /// `None` for a 2xx; otherwise the error code, or the client error.
    error: Option<String>,
}

fn mac(n: u32) -> String {
    format!(
        "52:54:02:{:02x}:{:02x}:{:02x}",
        (n >> 16) & 0xff,
        (n >> 8) & 0xff,
        n & 0xff
    )
}

/// Creates machines with fresh names through one node until told to stop;
/// a failed write is never retried (the next attempt has a new name).
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
        let name = format!("fz-{n}");
        let sent = Instant::now();
        let result = client
            .http
            .post(client.url("/api/v1/machines"))
            .bearer_auth(&token)
            .json(&json!({"name": name, "hardware_addrs": [mac(n)]}))
            .timeout(WRITE_TIMEOUT)
            .send()
            .await;
        let error = match result {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => {
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                Some(format!("{status} {}", body["code"].as_str().unwrap_or("")))
            }
            Err(e) => Some(format!("no answer: {e}")),
        };
        let failed = error.is_some();
        log.lock().expect("attempt log").push(Attempt {
            name,
            node,
            sent,
            done: Instant::now(),
            error,
        });
        if failed {
            tokio::time::sleep(FAILED_WRITE_PAUSE).await;
        }
    }
}

/// The longest time between consecutive acknowledgements of writes sent
/// through `node`, over the window `[from, to]` (its ends count as
/// acknowledgements, so a node that acknowledges nothing after `from` has a
/// gap up to `to`).
fn longest_gap(attempts: &[Attempt], node: usize, from: Instant, to: Instant) -> Duration {
    let mut times: Vec<Instant> = attempts
        .iter()
        .filter(|a| a.node == node && a.error.is_none() && a.done >= from && a.done <= to)
        .map(|a| a.done)
        .collect();
    times.push(from);
    times.push(to);
    times.sort();
    times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_leader_costs_one_election() {
    let mut cluster = Cluster::start(3).await;
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

    tokio::time::sleep(Duration::from_secs(2)).await;
    let frozen = cluster.wait_leader(Duration::from_secs(10)).await;
    let term_before = cluster.try_status(frozen).await.expect("status")["term"]
        .as_u64()
        .expect("term");
    let acked_before = log
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.error.is_none())
        .count();
    assert!(acked_before > 0, "no write acknowledged before the freeze");
    let paused_at = Instant::now();
    cluster.pause(frozen);
    tokio::time::sleep(FREEZE).await;
    cluster.resume(frozen);
    let resumed_at = Instant::now();
    eprintln!(
        "froze the leader (slot {frozen}, term {term_before}) for {:.1} s after {acked_before} acknowledged writes",
        (resumed_at - paused_at).as_secs_f64()
    );

    // Writes go on for a while after SIGCONT, so the old leader's own
    // clients are answered and it rejoins under load.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped_at = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        tokio::time::timeout(WRITE_TIMEOUT + Duration::from_secs(5), writer)
            .await
            .expect("writer stops")
            .expect("writer task");
    }
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let commit = cluster.wait_converged(Duration::from_secs(30)).await;
    let term_after = cluster.try_status(leader).await.expect("status")["term"]
        .as_u64()
        .expect("term");
    let attempts = std::mem::take(&mut *log.lock().unwrap());

    // Figures: per node, the longest pause between acknowledgements from
    // the freeze until the writers stopped, and when the first write sent
    // after the freeze began was acknowledged.
    let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &attempts {
        if let Some(e) = &a.error {
            *errors.entry(e.as_str()).or_default() += 1;
        }
    }
    let mut gaps = Vec::new();
    for node in 0..3 {
        let gap = longest_gap(&attempts, node, paused_at, stopped_at);
        let first = attempts
            .iter()
            .filter(|a| a.node == node && a.error.is_none() && a.sent >= paused_at)
            .map(|a| a.done)
            .min()
            .map(|t| format!("{:.0} ms", (t - paused_at).as_secs_f64() * 1e3))
            .unwrap_or_else(|| "never".into());
        eprintln!(
            "slot {node}{}: longest gap between acknowledged writes from SIGSTOP on {:.0} ms; first write sent after SIGSTOP acknowledged after {first}",
            if node == frozen { " (frozen)" } else { "" },
            gap.as_secs_f64() * 1e3
        );
        if node != frozen {
            gaps.push(gap);
        }
    }
    gaps.sort();
    eprintln!(
        "{} writes, {} acknowledged, errors {errors:?}; term {term_before} -> {term_after} ({} elections); converged at {commit}",
        attempts.len(),
        attempts.iter().filter(|a| a.error.is_none()).count(),
        term_after - term_before,
    );
    for (i, gap) in gaps.iter().enumerate() {
        assert!(
            *gap < GAP_BOUND,
            "a node that was not frozen acknowledged no write for {gap:?} (bound {GAP_BOUND:?}); gaps {gaps:?}, errors {errors:?} (index {i})"
        );
    }

    // No acknowledged write is lost, and none is applied twice.
    let acked: BTreeSet<&str> = attempts
        .iter()
        .filter(|a| a.error.is_none())
        .map(|a| a.name.as_str())
        .collect();
    let attempted: BTreeSet<&str> = attempts.iter().map(|a| a.name.as_str()).collect();
    for node in cluster.running() {
        let listed = cluster.list_all(node, "machines").await;
        let mut names = BTreeSet::new();
        for machine in &listed {
            let name = machine["name"].as_str().expect("name").to_string();
            assert!(
                attempted.contains(name.as_str()),
                "slot {node} lists {name}, which no client created"
            );
            assert!(names.insert(name.clone()), "slot {node} lists {name} twice");
        }
        let missing: Vec<&&str> = acked.iter().filter(|n| !names.contains(**n)).collect();
        assert!(
            missing.is_empty(),
            "slot {node} lacks {} of {} acknowledged writes, e.g. {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(10)]
        );
    }
}

/// Every running node's `(leader, term)` view, polled every 50 ms for
/// `watch`; a node that does not answer a poll is left out of it.
async fn views(cluster: &Cluster, watch: Duration) -> BTreeSet<(Option<u64>, Option<u64>)> {
    let mut seen = BTreeSet::new();
    let started = Instant::now();
    while started.elapsed() < watch {
        for node in cluster.running() {
            if let Some(status) = cluster.try_status(node).await {
                seen.insert((status["leader"].as_u64(), status["term"].as_u64()));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

/// A follower that was stopped while the leader went on writing comes back
/// as a follower: it does not start an election when it wakes (its election
/// timer ran out long ago, but it has no majority of pre-votes while the
/// others hear the leader), so the leader and term stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_follower_returns_without_an_election() {
    // Election timeouts above a loaded machine's scheduling stalls, yet far
    // below the freeze, so the woken follower's election timer has run out.
    let options = Options {
        election_min_ms: 1_000,
        election_max_ms: 2_000,
        ..Options::default()
    };
    let mut cluster = Cluster::start_with(3, options).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let status = cluster.try_status(leader).await.expect("status");
    let before = (status["node_id"].as_u64(), status["term"].as_u64());
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let client = cluster.client(leader);

    cluster.pause(follower);
    let paused_at = Instant::now();
    let mut written = 0u32;
    while paused_at.elapsed() < FREEZE {
        client
            .post(
                "/api/v1/machines",
                crate::common::machine(100_000 + written),
            )
            .await
            .expect(201);
        written += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.resume(follower);
    let seen = views(&cluster, Duration::from_secs(3)).await;
    eprintln!(
        "froze follower slot {follower} for {FREEZE:?} ({written} writes meanwhile); (leader, term) before {before:?}, views after SIGCONT {seen:?}"
    );
    // The woken follower may say it knows no leader until the next
    // heartbeat reaches it; an election would show as another term.
    assert!(
        seen.iter()
            .all(|(leader, term)| *term == before.1 && (leader.is_none() || *leader == before.0)),
        "the returning follower changed the leader or term: before {before:?}, after {seen:?}"
    );
    cluster.wait_converged(Duration::from_secs(30)).await;
}
