//! [`RaftNode`]: the handle the application holds. It opens the database,
//! starts openraft over the log store, state machine and network, serves
//! peer RPC, and turns client writes, linearizable reads and membership
//! changes into leader operations, forwarding them when this node is not
//! the leader. It also runs the pre-vote round that decides whether this
//! node may start an election ([`crate::prevote`]). No openraft type crosses
//! this module's public API.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;
use openraft::error::{InitializeError, RaftError};
use openraft::metrics::WaitError;
use openraft::{Config, Raft, ServerState, SnapshotPolicy};
use rocksdb::DB;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};

use crate::forward::{
    matched_index, CallError, ForwardFailure, ForwardReply, ForwardRequest, LeaderOps,
};
use crate::log_store::{CommittedIndex, LogStore};
use crate::network::{
    NetworkFactory, PeerAdmission, PeerService, PeerTls, Peers, MAX_MESSAGE_BYTES,
};
use crate::prevote::{LeaderContact, PreVoteRequest};
use crate::proto::raft_peer_server::RaftPeerServer;
use crate::state_machine::{ReadView, Readers, StateMachine};
use crate::store::{open_db, StateMachineApp, StoreError};
use crate::types::{NodeId, NodeInfo, Payload, TypeConfig};

/// How a node runs. Build with [`NodeConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's Raft id: unique in the cluster, never reused.
    pub node_id: NodeId,
    /// Holds `db/` (RocksDB) and `snapshots/`.
    pub data_dir: PathBuf,
    /// How other members reach this node.
    pub info: NodeInfo,
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time in
    /// `[election_min_ms, election_max_ms)` starts an election.
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_every_entries: u64,
    /// Log entries kept after they are in a snapshot, so a follower a
    /// little behind catches up from the log instead of a full snapshot.
    pub logs_kept_after_snapshot: u64,
    /// Size of one snapshot chunk on the wire.
    pub snapshot_chunk_bytes: u64,
    /// Bound on sending one snapshot chunk, and on the receiver installing
    /// the last one (which includes loading the whole snapshot).
    pub snapshot_timeout_ms: u64,
    /// Bound on one leader operation (commit of a write, a read index, a
    /// membership change), locally or forwarded.
    pub forward_timeout_ms: u64,
    /// How long a request waits for a leader to exist (or to become
    /// reachable) before failing with [`WriteError::NoLeader`].
    pub no_leader_wait_ms: u64,
    /// How long [`RaftNode::add_learner`] waits for the learner to catch up.
    pub learner_catch_up_ms: u64,
    /// Mutual TLS for peer RPC; plain HTTP/2 when `None`.
    pub peer_tls: Option<PeerTls>,
    /// The local address connections to peers leave from; the system's
    /// choice when `None`.
    pub peer_source_ip: Option<std::net::IpAddr>,
    /// With mutual TLS: decides, per call, whether a peer's leaf certificate
    /// (DER) still belongs to the cluster. The TLS handshake has already
    /// checked it was signed by the cluster CA; this refuses certificates of
    /// removed members.
    pub peer_admission: Option<PeerAdmission>,
    /// Start an election only after a pre-vote round succeeds (see
    /// [`crate::prevote`]). Off gives openraft's plain elections, where a
    /// node returning from a partition deposes the leader.
    pub pre_vote: bool,
}

impl NodeConfig {
    /// Production defaults for a node on a LAN.
    pub fn new(node_id: NodeId, data_dir: impl Into<PathBuf>, info: NodeInfo) -> Self {
        NodeConfig {
            node_id,
            data_dir: data_dir.into(),
            info,
            heartbeat_ms: 100,
            election_min_ms: 300,
            election_max_ms: 600,
            snapshot_every_entries: 20_000,
            logs_kept_after_snapshot: 10_000,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_timeout_ms: 60_000,
            forward_timeout_ms: 5_000,
            no_leader_wait_ms: 5_000,
            learner_catch_up_ms: 60_000,
            peer_tls: None,
            peer_source_ip: None,
            peer_admission: None,
            pre_vote: true,
        }
    }

    fn raft_config(&self) -> Result<Config, NodeError> {
        if self.snapshot_every_entries == 0 {
            return Err(NodeError::Config(
                "snapshot_every_entries must be positive".into(),
            ));
        }
        // Leave room for the chunk header and gRPC framing.
        if self.snapshot_chunk_bytes == 0
            || self.snapshot_chunk_bytes > (MAX_MESSAGE_BYTES / 2) as u64
        {
            return Err(NodeError::Config(format!(
                "snapshot_chunk_bytes must be in 1..={}",
                MAX_MESSAGE_BYTES / 2
            )));
        }
        let config = Config {
            cluster_name: "cradle".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            // Over TLS and with a large state, sending and installing takes
            // far longer than openraft's defaults allow.
            // Also bounds each non-last chunk (send_snapshot_timeout is
            // deprecated and left at 0).
            install_snapshot_timeout: self.snapshot_timeout_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes,
            replication_lag_threshold: self.snapshot_every_entries.saturating_mul(2),
            // Each purge is a synced write; do it in batches.
            purge_batch_size: (self.snapshot_every_entries / 4).clamp(1, 256),
            ..Config::default()
        };
        config
            .validate()
            .map_err(|e| NodeError::Config(e.to_string()))
    }
}

/// Failures opening, initializing, serving or stopping a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("peer rpc server: {0}")]
    Rpc(String),
}

/// Why a write, read barrier, membership change or wait failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// No leader was known (or reachable) within the wait bound. Nothing
    /// was proposed.
    #[error("no raft leader within the wait bound")]
    NoLeader,
    /// The leader is known but could not be reached. Nothing was proposed.
    #[error("leader unreachable: {0}")]
    Unreachable(String),
    /// The leader cannot hear from a quorum of voters. Nothing was proposed.
    #[error("leader has no quorum: {0}")]
    NoQuorum(String),
    /// The request was proposed or sent, but its outcome is unknown (no
    /// answer in time, connection lost mid-call): it may or may not apply.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// A bounded wait ran out (e.g. for the local state to catch up).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The cluster refused the request (membership change in progress,
    /// unknown learner, empty voter set, ...).
    #[error("rejected: {0}")]
    Rejected(String),
    /// Raft has stopped on this node or the leader (shut down or a storage
    /// failure).
    #[error("raft stopped: {0}")]
    Fatal(String),
    /// The caller's deadline passed before the request was proposed (no
    /// leader in time, or the leader received it too late). Nothing was
    /// proposed.
    #[error("deadline passed before the request was proposed")]
    DeadlineExceeded,
}

impl From<ForwardFailure> for WriteError {
    fn from(failure: ForwardFailure) -> Self {
        match failure {
            ForwardFailure::NotLeader { .. } => WriteError::NoLeader,
            ForwardFailure::NoQuorum(s) => WriteError::NoQuorum(s),
            ForwardFailure::Indeterminate(s) => WriteError::Indeterminate(s),
            ForwardFailure::Timeout(s) => WriteError::Timeout(s),
            ForwardFailure::Rejected(s) => WriteError::Rejected(s),
            ForwardFailure::Fatal(s) => WriteError::Fatal(s),
            ForwardFailure::Expired(_) => WriteError::DeadlineExceeded,
        }
    }
}

/// A node's role in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftRole {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

/// One member of the current membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: NodeId,
    pub info: NodeInfo,
    pub voter: bool,
    /// Last log index known replicated to this member; only the leader
    /// knows (None elsewhere, and for members not yet replicated to).
    pub matched_index: Option<u64>,
    /// Milliseconds since this member last answered a Raft call from this
    /// node (None: never, or this node itself). On the leader, a growing
    /// value means the member is down or cut off.
    pub answered_ms_ago: Option<u64>,
}

/// A snapshot of this node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    pub node_id: NodeId,
    pub state: RaftRole,
    /// The leader this node follows. `None` when it knows none, or when it
    /// is not the leader and has heard from none for twice the longest
    /// election timeout: with pre-vote a cut-off follower keeps its term and
    /// would otherwise go on naming a leader it cannot reach.
    pub current_leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    pub applied: Option<u64>,
    /// Last log index covered by the current snapshot.
    pub snapshot: Option<u64>,
    /// Last log index removed from the log (it is in the snapshot).
    pub purged: Option<u64>,
    /// On the leader: milliseconds since a quorum last acknowledged it.
    /// A growing value means the leader is cut off.
    pub quorum_ack_age_ms: Option<u64>,
    pub members: Vec<MemberStatus>,
    /// Why Raft stopped on this node, if it stopped on an error (a storage
    /// fault, or the state machine halting at an entry it cannot apply).
    pub stopped: Option<String>,
    /// A membership change is half done: the log's latest membership is a
    /// joint configuration, and commits need a majority of the old voters
    /// and of the new.
    pub membership_joint: bool,
}

/// Shared state behind [`RaftNode`].
struct Inner {
    id: NodeId,
    info: NodeInfo,
    raft: Raft<TypeConfig>,
    db: Arc<DB>,
    readers: Arc<Readers>,
    peers: Arc<Peers>,
    committed: Arc<CommittedIndex>,
    leader_ops: Arc<LeaderOps>,
    contact: Arc<LeaderContact>,
    forward_timeout: Duration,
    no_leader_wait: Duration,
    learner_catch_up: Duration,
    /// A leader heard within this long means there is no election to hold.
    election_min: Duration,
    /// How long a pre-vote round waits for answers.
    pre_vote_timeout: Duration,
    /// How often the pre-vote gate re-decides.
    pre_vote_every: Duration,
    /// A follower that heard no leader for this long reports none.
    leader_silence: Duration,
    opened: Instant,
    server_tls: Option<ServerTlsConfig>,
    peer_admission: Option<PeerAdmission>,
    /// Set once by shutdown; stops the peer RPC server and the pre-vote gate.
    stop: watch::Sender<bool>,
}

/// Margin a forwarding node gives the leader beyond the leader's own bound,
/// so the leader's answer (even a timeout) arrives before the caller gives up.
const FORWARD_MARGIN: Duration = Duration::from_millis(1_000);
/// Polling bounds while waiting for a leader to appear or change.
const POLL_MIN: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(50);
/// Once another leader is elected while a request is forwarded to the old
/// one, how long an answer already on its way is still awaited.
const LEADER_CHANGE_GRACE: Duration = Duration::from_millis(100);

impl Inner {
    /// The leader this node currently knows of, with its address.
    /// The leader to send to: openraft's, unless it has been silent for
    /// `leader_silence`. With pre-vote a cut-off follower starts no election,
    /// so openraft keeps naming the leader it lost; forwarding to it would
    /// only time out (`outcome_unknown`) where `no_leader` is the truth.
    fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader.filter(|id| self.leader_heard(*id))?;
        let info = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, info))
    }

    /// Whether `leader` still counts as this node's leader: it is this
    /// node, or it was heard within `leader_silence` (or the node has just
    /// opened and had no time to hear it).
    fn leader_heard(&self, leader: NodeId) -> bool {
        leader == self.id
            || self.contact.heard_within(self.leader_silence)
            || self.opened.elapsed() < self.leader_silence
    }

    /// How long a forwarding node waits for the leader's answer to `req`.
    fn forward_bound(&self, req: &ForwardRequest) -> Duration {
        match req {
            ForwardRequest::AddLearner { .. } => {
                self.forward_timeout + self.learner_catch_up + FORWARD_MARGIN
            }
            _ => self.forward_timeout + FORWARD_MARGIN,
        }
    }

    /// Runs `req` on the leader, here or forwarded, waiting up to
    /// `no_leader_wait` for a reachable leader. Retries only when the
    /// request certainly was not proposed. With a `deadline`, nothing is
    /// proposed after it (by this node's clock, or the leader's for a
    /// forwarded request): the call fails with
    /// [`WriteError::DeadlineExceeded`] instead.
    async fn call_leader(
        &self,
        req: ForwardRequest,
        deadline: Option<Instant>,
    ) -> Result<ForwardReply, WriteError> {
        // A stopped node's view of the leader is frozen; do not act on it.
        if *self.stop.borrow() {
            return Err(WriteError::Fatal("this node is shut down".into()));
        }
        // A read index proposes nothing, so losing its answer is harmless.
        let retry_lost = matches!(req, ForwardRequest::ReadIndex);
        let no_leader_by = Instant::now() + self.no_leader_wait;
        let give_up = deadline.map_or(no_leader_by, |d| d.min(no_leader_by));
        let mut hint: Option<(NodeId, NodeInfo)> = None;
        let mut unreachable: Option<String> = None;
        let mut poll = POLL_MIN;
        loop {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(WriteError::DeadlineExceeded);
            }
            let target = hint.take().or_else(|| self.leader());
            let result = match &target {
                None => None,
                Some((id, _)) if *id == self.id => Some(
                    self.leader_ops
                        .execute(req.clone())
                        .await
                        .map_err(CallError::Remote),
                ),
                Some((id, info)) => Some(self.forward(*id, info, &req, deadline).await),
            };
            let mut follow_hint = false;
            match result {
                Some(Ok(reply)) => return Ok(reply),
                None => {}
                Some(Err(CallError::Remote(ForwardFailure::NotLeader { leader_id, leader }))) => {
                    // The node we asked knows a different leader: ask it
                    // next without waiting.
                    if let (Some(id), Some(info)) = (leader_id, leader) {
                        if target.as_ref().map(|t| t.0) != Some(id) {
                            hint = Some((id, info));
                            follow_hint = true;
                        }
                    }
                }
                Some(Err(CallError::NotSent(e))) => unreachable = Some(e),
                Some(Err(CallError::Lost(e))) if retry_lost => unreachable = Some(e),
                Some(Err(CallError::Lost(e))) => return Err(WriteError::Indeterminate(e)),
                Some(Err(CallError::Remote(failure))) => return Err(failure.into()),
            }
            let now = Instant::now();
            if now >= give_up {
                if deadline.is_some_and(|d| now >= d) {
                    return Err(WriteError::DeadlineExceeded);
                }
                return Err(unreachable.map_or(WriteError::NoLeader, WriteError::Unreachable));
            }
            if !follow_hint {
                tokio::time::sleep(poll.min(give_up - now)).await;
                poll = (poll * 2).min(POLL_MAX);
            }
        }
    }

    /// Forwards `req` to `id`, the leader as far as this node knows. If
    /// another leader is elected meanwhile (a higher term with a leader that
    /// is not `id`), the call is abandoned after a short grace: the old
    /// leader may be frozen or cut off, and everything queued behind this
    /// request should go to the new one instead of waiting out the forward
    /// timeout. Abandoned means sent and unanswered, so its outcome is
    /// unknown ([`CallError::Lost`]): it may still apply if the old leader
    /// had replicated it.
    async fn forward(
        &self,
        id: NodeId,
        info: &NodeInfo,
        req: &ForwardRequest,
        deadline: Option<Instant>,
    ) -> Result<ForwardReply, CallError> {
        let mut metrics = self.raft.metrics();
        let term = metrics.borrow().current_term;
        let call = self
            .peers
            .forward(id, &info.rpc_addr, req, self.forward_bound(req), deadline);
        tokio::pin!(call);
        // The guard `wait_for` returns is not `Send`: keep only the id.
        let replaced = async move {
            metrics
                .wait_for(|m| {
                    m.current_term > term && m.current_leader.is_some_and(|leader| leader != id)
                })
                .await
                .map(|m| m.current_leader)
        };
        let new_leader = tokio::select! {
            result = &mut call => return result,
            changed = replaced => match changed {
                Ok(leader) => leader,
                // Raft stopped; the call is bounded on its own.
                Err(_) => return call.await,
            },
        };
        match tokio::time::timeout(LEADER_CHANGE_GRACE, &mut call).await {
            Ok(result) => result,
            Err(_) => {
                tracing::info!(
                    old_leader = id,
                    ?new_leader,
                    "abandoning a request forwarded to a replaced leader"
                );
                Err(CallError::Lost(format!(
                    "node {id} did not answer and node {} was elected leader meanwhile; the request may still apply",
                    new_leader.map_or_else(|| "?".to_string(), |l| l.to_string())
                )))
            }
        }
    }

    /// Whether this node may start an election now: it is a voter, has not
    /// heard from a leader within the shortest election timeout, and a
    /// majority of voters (of each half of a joint configuration), itself
    /// included, have not either.
    async fn pre_vote(&self) -> bool {
        let (state, term, configs, others) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            let configs: Vec<BTreeSet<NodeId>> = membership.get_joint_config().clone();
            let others: Vec<(NodeId, NodeInfo)> = membership
                .voter_ids()
                .filter(|id| *id != self.id)
                .filter_map(|id| membership.get_node(&id).map(|n| (id, n.clone())))
                .collect();
            (m.state, m.current_term, configs, others)
        };
        if matches!(
            state,
            ServerState::Leader | ServerState::Learner | ServerState::Shutdown
        ) || !configs.iter().any(|c| c.contains(&self.id))
        {
            return false;
        }
        if self.contact.heard_within(self.election_min) {
            return false;
        }
        let req = PreVoteRequest {
            candidate: self.id,
            term,
        };
        let mut asks: futures::stream::FuturesUnordered<_> = others
            .iter()
            .map(|(id, info)| async {
                let granted = self
                    .peers
                    .pre_vote(*id, &info.rpc_addr, &req, self.pre_vote_timeout)
                    .await;
                (*id, granted)
            })
            .collect();
        let quorum = |granted: &BTreeSet<NodeId>| {
            configs
                .iter()
                .all(|c| c.iter().filter(|id| granted.contains(id)).count() * 2 > c.len())
        };
        let mut granted = BTreeSet::from([self.id]);
        // Decide as soon as a majority granted: a frozen or cut-off voter
        // (often the old leader) must not hold the round up to its timeout.
        while !quorum(&granted) {
            match asks.next().await {
                Some((id, true)) => {
                    granted.insert(id);
                }
                Some((_, false)) => {}
                None => return false,
            }
        }
        true
    }
}

/// Keeps openraft's elections switched on only while a pre-vote round
/// succeeds (see [`crate::prevote`]). Holds the node weakly, so a dropped
/// node is not kept alive; ends on shutdown.
async fn gate_elections(inner: Weak<Inner>, mut stopped: watch::Receiver<bool>) {
    let mut allowed = false;
    loop {
        let Some(node) = inner.upgrade() else {
            return;
        };
        let allow = node.pre_vote().await;
        if allow != allowed {
            node.raft.runtime_config().elect(allow);
            tracing::debug!(node_id = node.id, allow, "elections");
            allowed = allow;
        }
        let every = node.pre_vote_every;
        drop(node);
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// The handle the application uses. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &self.inner.id)
            .field("info", &self.inner.info)
            .finish_non_exhaustive()
    }
}

impl RaftNode {
    /// Opens (or creates) the node's storage under `config.data_dir` and
    /// starts Raft. Peers reach it once [`RaftNode::serve_rpc`] runs.
    pub async fn open(
        config: NodeConfig,
        app: Arc<dyn StateMachineApp>,
    ) -> Result<RaftNode, NodeError> {
        let raft_config = Arc::new(config.raft_config()?);
        if config.peer_tls.is_some() {
            PeerTls::install_crypto_provider();
        }
        tokio::fs::create_dir_all(&config.data_dir)
            .await
            .map_err(StoreError::from)?;
        let db_path = config.data_dir.join("db");
        let cfs = app.column_families();
        let db = tokio::task::spawn_blocking(move || open_db(&db_path, cfs))
            .await
            .map_err(|e| NodeError::Raft(format!("opening database: {e}")))??;
        let db = Arc::new(db);

        let committed = Arc::new(CommittedIndex::default());
        let log_store = LogStore::new(db.clone(), committed.clone())
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let state_machine =
            StateMachine::open(db.clone(), app, config.data_dir.join("snapshots")).await?;
        let readers = state_machine.readers();
        let peers = Arc::new(
            Peers::new(config.peer_tls.as_ref().map(PeerTls::client_config))
                .with_source_ip(config.peer_source_ip),
        );
        let network = NetworkFactory {
            local_id: config.node_id,
            peers: peers.clone(),
        };
        let raft = Raft::new(
            config.node_id,
            raft_config,
            network,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        // With pre-vote, elections start only through its gate: switch them
        // off before openraft's first tick can start one.
        if config.pre_vote {
            raft.runtime_config().elect(false);
        }
        let (stop, stopped) = watch::channel(false);
        let leader_ops = Arc::new(LeaderOps {
            raft: raft.clone(),
            timeout: Duration::from_millis(config.forward_timeout_ms),
            learner_catch_up: Duration::from_millis(config.learner_catch_up_ms),
        });
        let inner = Arc::new(Inner {
            id: config.node_id,
            info: config.info.clone(),
            raft,
            db,
            readers,
            peers,
            committed,
            leader_ops,
            contact: Arc::new(LeaderContact::default()),
            forward_timeout: Duration::from_millis(config.forward_timeout_ms),
            no_leader_wait: Duration::from_millis(config.no_leader_wait_ms),
            learner_catch_up: Duration::from_millis(config.learner_catch_up_ms),
            election_min: Duration::from_millis(config.election_min_ms),
            pre_vote_timeout: Duration::from_millis(config.election_min_ms),
            pre_vote_every: Duration::from_millis(config.heartbeat_ms),
            leader_silence: Duration::from_millis(config.election_max_ms.saturating_mul(2)),
            opened: Instant::now(),
            server_tls: config.peer_tls.as_ref().map(PeerTls::server_config),
            peer_admission: config.peer_admission.clone(),
            stop,
        });
        if config.pre_vote {
            tokio::spawn(gate_elections(Arc::downgrade(&inner), stopped));
        }
        tracing::info!(node_id = config.node_id, data_dir = %config.data_dir.display(), "raft node open");
        Ok(RaftNode { inner })
    }

    /// The database, for the application's reads of committed state.
    pub fn db(&self) -> Arc<DB> {
        self.inner.db.clone()
    }

    /// A consistent view of the committed state: every read through it sees
    /// one RocksDB snapshot, and never a half-installed Raft snapshot.
    pub fn read_view(&self) -> Result<ReadView<'_>, StoreError> {
        self.inner.readers.view()
    }

    /// Changes each time a Raft snapshot replaced the state machine's
    /// contents (see [`ReadView::install_epoch`]).
    pub fn snapshot_installs(&self) -> watch::Receiver<u64> {
        self.inner.readers.subscribe_installs()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// Serves peer RPC on `listener` until `shutdown` completes or the node
    /// shuts down.
    pub async fn serve_rpc(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), NodeError> {
        let inner = &self.inner;
        let service = RaftPeerServer::new(PeerService {
            raft: inner.raft.clone(),
            leader: inner.leader_ops.clone(),
            admission: inner.peer_admission.clone(),
            contact: inner.contact.clone(),
            pre_vote_window: inner.election_min,
            peers: inner.peers.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut builder = Server::builder();
        if let Some(tls) = &self.inner.server_tls {
            builder = builder
                .tls_config(tls.clone())
                .map_err(|e| NodeError::Rpc(format!("TLS config: {e}")))?;
        }
        let mut stopped = self.inner.stop.subscribe();
        let stop = async move {
            tokio::select! {
                () = shutdown => {}
                // An error means the node is gone: stop as well.
                _ = stopped.wait_for(|s| *s) => {}
            }
        };
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        builder
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop)
            .await
            .map_err(|e| NodeError::Rpc(e.to_string()))
    }

    /// Whether this node has a membership (was initialized or joined).
    pub async fn is_initialized(&self) -> bool {
        match self.inner.raft.is_initialized().await {
            Ok(initialized) => initialized,
            // Stopped: answer from the last metrics.
            Err(_) => {
                let metrics = self.inner.raft.metrics();
                let m = metrics.borrow();
                let has_members = m.membership_config.membership().nodes().next().is_some();
                has_members
            }
        }
    }

    /// Makes this node a one-voter cluster of itself. Ok if the node is
    /// already initialized.
    pub async fn initialize_single(&self) -> Result<(), NodeError> {
        let members = BTreeMap::from([(self.inner.id, self.inner.info.clone())]);
        match self.inner.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(NodeError::Raft(e.to_string())),
        }
    }

    /// Proposes `payload` and returns the application's reply once it is
    /// committed and applied on the leader. Followers forward to the leader;
    /// if another leader is elected while the forwarded write is unanswered
    /// (the old one froze or was cut off), the call ends at once with
    /// [`WriteError::Indeterminate`] instead of waiting out the forward
    /// timeout, so what the caller queued behind it can go to the new leader.
    pub async fn write(&self, payload: Vec<u8>) -> Result<Vec<u8>, WriteError> {
        self.write_inner(payload, None).await
    }

    /// [`RaftNode::write`], but nothing is proposed once `deadline` has
    /// passed: no leader by then, or the leader received the forwarded
    /// write after it, gives [`WriteError::DeadlineExceeded`]. Once
    /// proposed, the outcome is awaited as for any write.
    pub async fn write_before(
        &self,
        payload: Vec<u8>,
        deadline: Instant,
    ) -> Result<Vec<u8>, WriteError> {
        self.write_inner(payload, Some(deadline)).await
    }

    async fn write_inner(
        &self,
        payload: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>, WriteError> {
        match self
            .inner
            .call_leader(ForwardRequest::Write(Payload(payload)), deadline)
            .await?
        {
            ForwardReply::Written(reply) => Ok(reply.0),
            other => Err(WriteError::Fatal(format!(
                "unexpected reply to a write: {other:?}"
            ))),
        }
    }

    /// Returns once this node's state machine has applied everything that
    /// was committed when the call started: a read from [`RaftNode::db`]
    /// afterwards is linearizable.
    pub async fn read_barrier(&self) -> Result<(), WriteError> {
        let index = match self
            .inner
            .call_leader(ForwardRequest::ReadIndex, None)
            .await?
        {
            ForwardReply::ReadIndex(index) => index,
            other => {
                return Err(WriteError::Fatal(format!(
                    "unexpected reply to a read index: {other:?}"
                )))
            }
        };
        match index {
            Some(index) => self.wait_applied(index, self.inner.forward_timeout).await,
            None => Ok(()),
        }
    }

    /// Adds `id` as a learner and waits (up to `learner_catch_up_ms`) for it
    /// to catch up. On [`WriteError::Timeout`] the learner is added and
    /// still catching up.
    pub async fn add_learner(&self, id: NodeId, info: NodeInfo) -> Result<(), WriteError> {
        self.inner
            .call_leader(ForwardRequest::AddLearner { id, info }, None)
            .await
            .map(|_| ())
    }

    /// Makes `voters` the voter set (through joint consensus). Voters not
    /// listed leave the cluster; learners not listed stay learners.
    pub async fn change_membership(&self, voters: BTreeSet<NodeId>) -> Result<(), WriteError> {
        self.inner
            .call_leader(ForwardRequest::ChangeMembership { voters }, None)
            .await
            .map(|_| ())
    }

    /// This node's view of the cluster, from the latest metrics.
    pub fn status(&self) -> RaftStatus {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, info)| MemberStatus {
                id: *id,
                info: info.clone(),
                voter: voters.contains(id),
                matched_index: matched_index(&m, *id),
                answered_ms_ago: (*id != m.id)
                    .then(|| self.inner.peers.answered_ago(*id))
                    .flatten()
                    .map(|ago| u64::try_from(ago.as_millis()).unwrap_or(u64::MAX)),
            })
            .collect();
        RaftStatus {
            node_id: m.id,
            state: match m.state {
                ServerState::Leader => RaftRole::Leader,
                ServerState::Follower => RaftRole::Follower,
                ServerState::Candidate => RaftRole::Candidate,
                ServerState::Learner => RaftRole::Learner,
                ServerState::Shutdown => RaftRole::Shutdown,
            },
            current_leader: m
                .current_leader
                .filter(|leader| self.inner.leader_heard(*leader)),
            term: m.current_term,
            last_log_index: m.last_log_index,
            committed: self.inner.committed.get(),
            applied: m.last_applied.map(|l| l.index),
            snapshot: m.snapshot.map(|l| l.index),
            purged: m.purged.map(|l| l.index),
            quorum_ack_age_ms: m.millis_since_quorum_ack,
            members,
            stopped: m.running_state.as_ref().err().map(|e| e.to_string()),
            membership_joint: membership.get_joint_config().len() > 1,
        }
    }

    /// Waits until this node has applied `index`, up to `timeout`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), WriteError> {
        self.inner
            .raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "wait_applied")
            .await
            .map(|_| ())
            .map_err(|e| match e {
                WaitError::Timeout(..) => {
                    WriteError::Timeout(format!("index {index} not applied within {timeout:?}"))
                }
                WaitError::ShuttingDown => WriteError::Fatal("raft stopped".into()),
            })
    }

    /// Cuts this node off from its peers (every call out fails, every call
    /// in is refused) or heals the cut.
    #[cfg(test)]
    pub(crate) fn set_cut(&self, cut: bool) {
        self.inner.peers.set_cut(cut);
    }

    /// Stops Raft and the peer RPC server. The database closes when the
    /// last handle to it (this node and any [`RaftNode::db`] clone) drops.
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        self.inner.stop.send_replace(true);
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| NodeError::Raft(format!("shutdown: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send<T: Send>(_: &T) {}
    fn is_send_sync<T: Send + Sync>() {}

    /// The application awaits these inside spawned tasks and axum handlers;
    /// this fails to compile if one stops being `Send`.
    #[allow(dead_code)]
    fn handle_and_futures_are_send(node: RaftNode, listener: TcpListener) {
        is_send_sync::<RaftNode>();
        is_send(&node.write(Vec::new()));
        is_send(&node.write_before(Vec::new(), Instant::now()));
        is_send(&node.read_barrier());
        is_send(&node.add_learner(2, NodeInfo::default()));
        is_send(&node.change_membership(BTreeSet::new()));
        is_send(&node.wait_applied(1, Duration::from_secs(1)));
        is_send(&node.serve_rpc(listener, async {}));
        is_send(&node.initialize_single());
        is_send(&node.is_initialized());
        is_send(&node.shutdown());
        is_send(&RaftNode::open(
            NodeConfig::new(1, "/nonexistent", NodeInfo::default()),
            unreachable_app(),
        ));
    }

    #[allow(dead_code)]
    fn unreachable_app() -> Arc<dyn StateMachineApp> {
        crate::test_support::KvApp::new()
    }

    #[test]
    fn config_is_validated() {
        let base = NodeConfig::new(1, "/tmp/x", NodeInfo::default());
        assert!(base.raft_config().is_ok());
        let mut bad = base.clone();
        bad.election_min_ms = 50;
        assert!(matches!(bad.raft_config(), Err(NodeError::Config(_))));
        let mut bad = base.clone();
        bad.snapshot_every_entries = 0;
        assert!(matches!(bad.raft_config(), Err(NodeError::Config(_))));
        let mut bad = base;
        bad.snapshot_chunk_bytes = MAX_MESSAGE_BYTES as u64;
        assert!(matches!(bad.raft_config(), Err(NodeError::Config(_))));
    }
}
