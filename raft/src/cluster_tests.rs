//! In-process clusters over real gRPC on loopback: formation, forwarding,
//! failover, restart catch-up (by log and by snapshot), bounded waits.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::node::{NodeConfig, NodeError, RaftNode, RaftRole, WriteError};
use crate::test_support::{dump, get, KvApp, CF_COUNTERS, CF_KV};
use crate::types::{NodeId, NodeInfo};

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(10);

struct TestNode {
    id: NodeId,
    node: RaftNode,
    app: Arc<KvApp>,
    info: NodeInfo,
    dir: PathBuf,
    stop_server: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), NodeError>>>,
}

fn config(id: NodeId, dir: &Path, info: NodeInfo) -> NodeConfig {
    let mut config = NodeConfig::new(id, dir, info);
    config.forward_timeout_ms = 3_000;
    config.no_leader_wait_ms = 5_000;
    config.learner_catch_up_ms = 8_000;
    config
}

/// Opens a node, retrying while a just-stopped predecessor on the same
/// directory still holds the RocksDB lock (its tasks wind down async).
async fn open_node(config: NodeConfig, app: Arc<KvApp>) -> RaftNode {
    let deadline = Instant::now() + WAIT;
    loop {
        match RaftNode::open(config.clone(), app.clone()).await {
            Ok(node) => return node,
            Err(e) if Instant::now() < deadline && e.to_string().contains("lock") => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("opening node {}: {e}", config.node_id),
        }
    }
}

async fn start(
    id: NodeId,
    dir: &Path,
    listener: TcpListener,
    tune: &dyn Fn(&mut NodeConfig),
) -> TestNode {
    let addr = listener.local_addr().unwrap().to_string();
    let info = NodeInfo {
        rpc_addr: addr.clone(),
        api_addr: format!("api-of-{id}"),
    };
    let mut cfg = config(id, dir, info.clone());
    tune(&mut cfg);
    let app = KvApp::new();
    let node = open_node(cfg, app.clone()).await;
    let (stop_tx, stop_rx) = oneshot::channel();
    let serving = node.clone();
    let server = tokio::spawn(async move {
        serving
            .serve_rpc(listener, async move {
                let _ = stop_rx.await;
            })
            .await
    });
    TestNode {
        id,
        node,
        app,
        info,
        dir: dir.to_path_buf(),
        stop_server: Some(stop_tx),
        server: Some(server),
    }
}

impl TestNode {
    /// Stops the node the way a crash looks to its peers: Raft stops and its
    /// port closes.
    async fn stop(&mut self) {
        self.node.shutdown().await.unwrap();
        if let Some(tx) = self.stop_server.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(WAIT, server)
                .await
                .expect("rpc server stops")
                .unwrap()
                .unwrap();
        }
    }

    /// Opens the node again on the same directory and address.
    async fn restart(self, tune: &dyn Fn(&mut NodeConfig)) -> TestNode {
        // Bind the handle so it drops here: fields left to `..` would live
        // (and keep the database locked) until the end of this function.
        let TestNode {
            id,
            info,
            dir,
            node,
            ..
        } = self;
        drop(node);
        let listener = bind_addr(&info.rpc_addr).await;
        start(id, &dir, listener, tune).await
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

async fn bind_addr(addr: &str) -> TcpListener {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("rebinding {addr}: {e}"),
        }
    }
}

/// Polls `check` until it holds, failing the test after [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_leader(nodes: &[&TestNode]) -> NodeId {
    let mut leader = None;
    eventually("a leader that every live node agrees on", || {
        let views: Vec<_> = nodes.iter().map(|n| n.node.status()).collect();
        let found = views
            .iter()
            .find(|s| s.state == RaftRole::Leader)
            .map(|s| s.node_id)
            .filter(|id| views.iter().all(|s| s.current_leader == Some(*id)));
        leader = found;
        async move { found.is_some() }
    })
    .await;
    leader.unwrap()
}

async fn write(node: &TestNode, cmd: &str) -> String {
    let reply = node.node.write(cmd.as_bytes().to_vec()).await;
    String::from_utf8(reply.unwrap_or_else(|e| panic!("write {cmd:?} via node {}: {e}", node.id)))
        .unwrap()
}

/// Forms a cluster of `nodes` with the first as initial leader.
async fn form(nodes: &[&TestNode]) {
    let first = nodes[0];
    first.node.initialize_single().await.unwrap();
    // Idempotent, as the brief promises.
    first.node.initialize_single().await.unwrap();
    assert_eq!(wait_leader(&[first]).await, first.id);
    for n in &nodes[1..] {
        first.node.add_learner(n.id, n.info.clone()).await.unwrap();
    }
    let voters: BTreeSet<NodeId> = nodes.iter().map(|n| n.id).collect();
    first.node.change_membership(voters.clone()).await.unwrap();
    let status = first.node.status();
    let got: BTreeSet<NodeId> = status
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    assert_eq!(got, voters);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_forward_fail_over_and_catch_up() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let plain = |_: &mut NodeConfig| {};
    let n1 = start(1, dirs[0].path(), bind().await, &plain).await;
    let n2 = start(2, dirs[1].path(), bind().await, &plain).await;
    let n3 = start(3, dirs[2].path(), bind().await, &plain).await;
    assert!(!n2.node.is_initialized().await);
    form(&[&n1, &n2, &n3]).await;
    assert!(n2.node.is_initialized().await);

    // Writes through the leader and through both followers (forwarded).
    assert_eq!(write(&n1, "put greeting hello").await, "");
    assert_eq!(write(&n2, "incr hits").await, "1");
    assert_eq!(write(&n3, "incr hits").await, "2");
    assert_eq!(write(&n3, "put greeting bye").await, "hello");
    // Unknown commands get the application's error reply, not a failure.
    assert_eq!(write(&n2, "frobnicate").await, "error");

    // A linearizable read on a follower sees every acknowledged write.
    n3.node.read_barrier().await.unwrap();
    assert_eq!(
        get(&n3.node.db(), CF_COUNTERS, "hits").as_deref(),
        Some("2")
    );
    n2.node.read_barrier().await.unwrap();
    assert_eq!(
        get(&n2.node.db(), CF_COUNTERS, "hits").as_deref(),
        Some("2")
    );

    // Concurrent writes through the leader and a follower share the cached
    // channel and are each applied exactly once.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let via = if i % 2 == 0 {
            n1.node.clone()
        } else {
            n3.node.clone()
        };
        tasks.push(tokio::spawn(async move {
            via.write(b"incr burst".to_vec()).await
        }));
    }
    let mut replies = BTreeSet::new();
    for task in tasks {
        let reply = task.await.unwrap().unwrap();
        replies.insert(String::from_utf8(reply).unwrap().parse::<u32>().unwrap());
    }
    assert_eq!(replies, (1..=200).collect::<BTreeSet<u32>>());

    // Membership changes forward from a follower too (a no-op change here).
    n2.node
        .change_membership(BTreeSet::from([1, 2, 3]))
        .await
        .unwrap();

    let status = n1.node.status();
    assert_eq!(status.state, RaftRole::Leader);
    assert_eq!(status.members.len(), 3);
    assert!(status.committed >= status.applied && status.applied.is_some());
    assert!(
        status.members.iter().all(|m| m.matched_index.is_some()),
        "leader knows every member's progress: {status:?}"
    );

    // Kill the leader. A write right away still succeeds: it waits (bounded)
    // while the dead leader refuses connections and a new one is elected.
    let mut n1 = n1;
    n1.stop().await;
    let started = Instant::now();
    assert_eq!(write(&n2, "incr hits").await, "3");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let new_leader = wait_leader(&[&n2, &n3]).await;
    assert_ne!(new_leader, 1);
    let follower = if new_leader == 2 { &n3 } else { &n2 };
    assert_eq!(write(follower, "incr hits").await, "4");

    // The old leader comes back as a follower and catches up.
    let n1 = n1.restart(&plain).await;
    let target = n2.node.status().applied.unwrap();
    n1.node.wait_applied(target, WAIT).await.unwrap();
    assert_eq!(
        get(&n1.node.db(), CF_COUNTERS, "hits").as_deref(),
        Some("4")
    );
    assert_eq!(dump(&n1.node.db()), dump(&n2.node.db()));
    assert_eq!(write(&n1, "incr hits").await, "5");

    for mut n in [n1, n2, n3] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_catches_up_by_snapshot_after_purge() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let small = |c: &mut NodeConfig| {
        c.snapshot_every_entries = 20;
        c.logs_kept_after_snapshot = 5;
        // Several chunks per snapshot, to exercise chunked transfer.
        c.snapshot_chunk_bytes = 512;
    };
    let n1 = start(1, dirs[0].path(), bind().await, &small).await;
    let n2 = start(2, dirs[1].path(), bind().await, &small).await;
    let mut n3 = start(3, dirs[2].path(), bind().await, &small).await;
    form(&[&n1, &n2, &n3]).await;
    assert_eq!(write(&n1, "put before down").await, "");
    let n3_applied = n3.node.status().applied;
    n3.stop().await;

    // Enough writes for several snapshots and purges while node 3 is down.
    for i in 0..120 {
        write(&n1, &format!("incr k{}", i % 7)).await;
        write(&n2, &format!("put key{i} value{i}")).await;
    }
    let leader_status = n1.node.status();
    let snapshot_index = leader_status.snapshot.expect("leader built a snapshot");
    assert!(snapshot_index > 100, "{leader_status:?}");
    // The leader purges only while no replication to node 3 is in flight,
    // which with writes flowing is rare; once they stop it purges.
    let needed = n3_applied.unwrap_or(0);
    eventually("the leader to purge the log node 3 needs", || {
        let purged = n1.node.status().purged;
        async move { purged.is_some_and(|p| p > needed) }
    })
    .await;

    let n3 = n3.restart(&small).await;
    let target = n1.node.status().applied.unwrap();
    n3.node.wait_applied(target, WAIT).await.unwrap();
    assert!(
        n3.app.installed() >= 1,
        "node 3 caught up by installing a snapshot"
    );
    // Readers learn of the install: views carry a new install epoch, and
    // watchers were told.
    let view = n3.node.read_view().unwrap();
    assert!(view.install_epoch() >= 1);
    assert!(view.applied_index() >= target);
    assert_eq!(*n3.node.snapshot_installs().borrow(), view.install_epoch());
    drop(view);
    eventually("node 3's state to match the leader's", || {
        let same = dump(&n3.node.db()) == dump(&n1.node.db());
        async move { same }
    })
    .await;
    assert_eq!(get(&n3.node.db(), CF_COUNTERS, "k0").as_deref(), Some("18"));
    // And it takes part in the cluster afterwards.
    assert_eq!(write(&n3, "put after up").await, "");

    for mut n in [n1, n2, n3] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_leader_fail_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let short = |c: &mut NodeConfig| c.no_leader_wait_ms = 300;
    let mut n = start(7, dir.path(), bind().await, &short).await;
    let started = Instant::now();
    assert_eq!(
        n.node.write(b"incr x".to_vec()).await,
        Err(WriteError::NoLeader)
    );
    assert_eq!(n.node.read_barrier().await, Err(WriteError::NoLeader));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(
        n.node.wait_applied(5, Duration::from_millis(100)).await,
        Err(WriteError::Timeout(_))
    ));
    n.stop().await;
    // After shutdown, requests fail at once instead of hanging.
    assert!(matches!(
        n.node.write(b"incr x".to_vec()).await,
        Err(WriteError::Fatal(_))
    ));
    assert_eq!(n.node.status().state, RaftRole::Shutdown);
}

/// A throwaway CA and helpers to issue node certificates from it.
struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    fn issue(&self, server_name: Option<&str>) -> crate::network::PeerTls {
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "cradle-peer".to_string()])
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        crate::network::PeerTls {
            ca_pem: self.cert.pem().into_bytes(),
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
            server_name: server_name.map(str::to_string),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_talk_over_mutual_tls_and_reject_strangers() {
    let ca = TestCa::new();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let tls1 = ca.issue(None);
    let tls2 = ca.issue(Some("cradle-peer"));
    let with1 = move |c: &mut NodeConfig| c.peer_tls = Some(tls1.clone());
    let with2 = move |c: &mut NodeConfig| c.peer_tls = Some(tls2.clone());
    let n1 = start(1, dirs[0].path(), bind().await, &with1).await;
    let n2 = start(2, dirs[1].path(), bind().await, &with2).await;
    form(&[&n1, &n2]).await;
    assert_eq!(write(&n2, "incr tls").await, "1");
    n2.node.read_barrier().await.unwrap();
    assert_eq!(get(&n2.node.db(), CF_COUNTERS, "tls").as_deref(), Some("1"));

    // A client with a certificate from another CA is refused, as is one
    // speaking plain HTTP/2.
    let leader = wait_leader(&[&n1, &n2]).await;
    let leader_addr = if leader == 1 {
        &n1.info.rpc_addr
    } else {
        &n2.info.rpc_addr
    };
    let req = crate::forward::ForwardRequest::Write(crate::types::Payload(b"incr tls".to_vec()));
    let stranger = crate::network::Peers::new(Some(TestCa::new().issue(None).client_config()));
    let result = stranger
        .forward(leader, leader_addr, &req, Duration::from_secs(3), None)
        .await;
    // Refused at the handshake, so certainly not proposed.
    assert!(
        matches!(result, Err(crate::forward::CallError::NotSent(_))),
        "stranger was served: {result:?}"
    );
    // One that trusts the cluster CA but whose own certificate is not from
    // it is refused by the server's client verification.
    let mut impostor_tls = TestCa::new().issue(None);
    impostor_tls.ca_pem = ca.cert.pem().into_bytes();
    let impostor = crate::network::Peers::new(Some(impostor_tls.client_config()));
    let result = impostor
        .forward(leader, leader_addr, &req, Duration::from_secs(3), None)
        .await;
    assert!(result.is_err(), "impostor was served: {result:?}");
    let plain = crate::network::Peers::new(None);
    let result = plain
        .forward(leader, leader_addr, &req, Duration::from_secs(3), None)
        .await;
    assert!(result.is_err(), "plain client was served: {result:?}");
    assert_eq!(write(&n1, "incr tls").await, "2");

    for mut n in [n1, n2] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_arriving_after_its_deadline_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut n1 = start(1, dir.path(), bind().await, &|_| {}).await;
    form(&[&n1]).await;
    assert_eq!(write(&n1, "incr late").await, "1");
    let peers = crate::network::Peers::new(None);
    let channel = peers.channel(1, &n1.info.rpc_addr).await.unwrap();
    let mut client = crate::proto::raft_peer_client::RaftPeerClient::new(channel);
    let late = crate::forward::ForwardEnvelope {
        // As if held up in a cut link for a minute.
        deadline_unix_ms: crate::forward::unix_ms() - 60_000,
        request: crate::forward::ForwardRequest::Write(crate::types::Payload(
            b"incr late".to_vec(),
        )),
    };
    let reply = client
        .forward(crate::proto::Payload {
            data: serde_json::to_vec(&late).unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    let refused: Result<crate::forward::ForwardReply, crate::forward::ForwardFailure> =
        serde_json::from_slice(&reply.data).unwrap();
    assert!(
        matches!(refused, Err(crate::forward::ForwardFailure::Expired(_))),
        "{refused:?}"
    );
    assert_eq!(
        write(&n1, "incr late").await,
        "2",
        "the late write was applied"
    );
    n1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_the_state_machine_cannot_apply_stops_raft_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(1, dir.path(), bind().await, &|_| {}).await;
    form(&[&node]).await;
    assert_eq!(write(&node, "put a 1").await, "");
    let halted = node.node.write(b"halt".to_vec()).await;
    assert!(halted.is_err(), "{halted:?}");
    let mut stopped = None;
    eventually("the node reporting why it stopped", || {
        stopped = node.node.status().stopped;
        let found = stopped.is_some();
        async move { found }
    })
    .await;
    let stopped = stopped.unwrap();
    assert!(stopped.contains("apply halted at log index"), "{stopped}");
    // Nothing after the entry is applied either.
    assert!(node.node.write(b"put b 1".to_vec()).await.is_err());
    assert_eq!(get(&node.node.db(), CF_KV, "b"), None);
    assert_eq!(get(&node.node.db(), CF_KV, "a").as_deref(), Some("1"));
}

/// How long a follower stays cut off in the partition tests.
const CUT: Duration = Duration::from_secs(10);

/// What cutting a follower off for [`CUT`] and healing did.
struct CutAndHeal {
    /// How much the cut-off node's term rose while it was cut off.
    cut_term_rise: u64,
    /// The leader the cut-off node reported at the end of the cut.
    leader_seen_while_cut: Option<NodeId>,
    /// The leader and its term before the cut.
    before: (NodeId, u64),
    /// The nodes' (leader, term) views, polled for a while after the heal,
    /// once the healed node caught up.
    after: Vec<(Option<NodeId>, u64)>,
}

/// Forms a 3-node cluster, cuts a follower off for [`CUT`] while writes go
/// on through the leader, heals, and watches the cluster for a few election
/// timeouts after the healed node has caught up.
async fn cut_and_heal(pre_vote: bool) -> CutAndHeal {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // Election timeouts well above a loaded test machine's scheduling
    // stalls, so only the cut can cause an election.
    let tune = move |c: &mut NodeConfig| {
        c.pre_vote = pre_vote;
        c.election_min_ms = 1_000;
        c.election_max_ms = 2_000;
    };
    let n1 = start(1, dirs[0].path(), bind().await, &tune).await;
    let n2 = start(2, dirs[1].path(), bind().await, &tune).await;
    let n3 = start(3, dirs[2].path(), bind().await, &tune).await;
    form(&[&n1, &n2, &n3]).await;
    let nodes = [&n1, &n2, &n3];
    let leader_id = wait_leader(&nodes).await;
    let leader = nodes.iter().find(|n| n.id == leader_id).unwrap();
    let cut = nodes.iter().find(|n| n.id != leader_id).unwrap();
    assert_eq!(write(leader, "incr before").await, "1");
    let term = leader.node.status().term;
    let cut_term = cut.node.status().term;

    cut.node.set_cut(true);
    let cut_at = Instant::now();
    let mut writes = 0u32;
    while cut_at.elapsed() < CUT {
        write(leader, "incr during").await;
        writes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cut_status = cut.node.status();
    let cut_term_rise = cut_status.term - cut_term;
    cut.node.set_cut(false);

    // Let the healed node catch up, then give any disruption a few
    // election timeouts to show.
    eventually("the healed node to catch up", || {
        let applied = leader.node.status().applied;
        let caught_up = cut.node.status().applied >= applied;
        async move { caught_up }
    })
    .await;
    let mut after = Vec::new();
    let watch_from = Instant::now();
    while watch_from.elapsed() < Duration::from_secs(3) {
        for n in nodes {
            let s = n.node.status();
            after.push((s.current_leader, s.term));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(writes > 0);
    for mut n in [n1, n2, n3] {
        n.stop().await;
    }
    CutAndHeal {
        cut_term_rise,
        leader_seen_while_cut: cut_status.current_leader,
        before: (leader_id, term),
        after,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_and_healed_does_not_depose_the_leader() {
    let seen = cut_and_heal(true).await;
    let terms: BTreeSet<u64> = seen.after.iter().map(|(_, t)| *t).collect();
    eprintln!(
        "with pre-vote: the cut-off node's term rose by {} during a {CUT:?} cut; (leader, term) before the heal {:?}, views after it {:?}",
        seen.cut_term_rise,
        seen.before,
        seen.after.iter().collect::<BTreeSet<_>>()
    );
    assert_eq!(seen.cut_term_rise, 0, "the cut-off node started elections");
    // Still a follower at the old term, but it says it has no leader.
    assert_eq!(seen.leader_seen_while_cut, None);
    // No election: the term never moves and every leader named is the old
    // one (the healed node may report none for a moment, until the
    // leader's next heartbeat reaches it).
    assert!(
        seen.after.iter().all(|(leader, term)| {
            *term == seen.before.1 && leader.is_none_or(|l| l == seen.before.0)
        }),
        "the heal changed the leader or term: before {:?}, after {:?} (terms {terms:?})",
        seen.before,
        seen.after.iter().collect::<BTreeSet<_>>(),
    );
}

/// Without pre-vote (openraft's own elections and leader lease), the same
/// cut shows what pre-vote prevents: the cut-off node raises its term, and
/// on its return the leader steps down for an election nobody needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pre_vote_a_healed_follower_forces_an_election() {
    let seen = cut_and_heal(false).await;
    eprintln!(
        "without pre-vote: the cut-off node's term rose by {} during a {CUT:?} cut; (leader, term) before the heal {:?}, views after it {:?}",
        seen.cut_term_rise,
        seen.before,
        seen.after.iter().collect::<BTreeSet<_>>()
    );
    assert!(
        seen.cut_term_rise > 0,
        "the cut-off node started no election"
    );
    assert!(
        seen.after.iter().any(|(_, term)| *term > seen.before.1),
        "the heal left the term unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_past_its_deadline_is_refused_and_not_applied() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let n1 = start(1, dirs[0].path(), bind().await, &|_| {}).await;
    let n2 = start(2, dirs[1].path(), bind().await, &|_| {}).await;
    form(&[&n1, &n2]).await;
    let leader = wait_leader(&[&n1, &n2]).await;
    let (leader, follower) = if leader == 1 { (&n1, &n2) } else { (&n2, &n1) };
    assert_eq!(write(follower, "incr d").await, "1");

    // Already past: refused before anything is sent, here and forwarded.
    for via in [leader, follower] {
        assert_eq!(
            via.node
                .write_before(b"incr d".to_vec(), Instant::now())
                .await,
            Err(WriteError::DeadlineExceeded)
        );
    }
    // A forwarded request whose caller's deadline passes on the way is
    // refused by the leader, with a reply that says so.
    let peers = crate::network::Peers::new(None);
    let req = crate::forward::ForwardRequest::Write(crate::types::Payload(b"incr d".to_vec()));
    let refused = peers
        .forward(
            leader.id,
            &leader.info.rpc_addr,
            &req,
            Duration::from_secs(3),
            Some(Instant::now()),
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(crate::forward::CallError::Remote(
                crate::forward::ForwardFailure::Expired(_)
            ))
        ),
        "{refused:?}"
    );
    // With no leader, a write fails at its deadline (not after the longer
    // no-leader wait), and is not applied once a leader is back.
    let leader_id = leader.id;
    let (mut old_leader, survivor) = if leader_id == 1 { (n1, n2) } else { (n2, n1) };
    old_leader.stop().await;
    let started = Instant::now();
    let result = survivor
        .node
        .write_before(
            b"incr d".to_vec(),
            Instant::now() + Duration::from_millis(800),
        )
        .await;
    assert_eq!(result, Err(WriteError::DeadlineExceeded));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let old_leader = old_leader.restart(&|_| {}).await;
    assert_eq!(
        write(&survivor, "incr d").await,
        "2",
        "a refused write applied"
    );
    for mut n in [old_leader, survivor] {
        n.stop().await;
    }
}
