//! The replicated fleet state: commands proposed through Raft, applied by
//! [`apply`], and read back from the local copy.
//!
//! Architecture invariant: state changes only through [`Store::submit`],
//! which goes through the Raft log. Reads come from the local replica (fast,
//! possibly a little stale); [`Store::read_barrier`] makes the next read
//! linearizable.
//!
//! Writes are group-committed: concurrent submissions are gathered into one
//! log entry (a framed batch, see [`frames`]), so many small writes share one
//! log append and one fsync.
//!
//! Every write carries a deadline: one still queued when its deadline
//! passes (behind a batch in flight, or while no leader is known) is
//! refused with [`StoreError::DeadlineExceeded`] and never proposed, and a
//! forwarded batch carries its earliest deadline so the leader refuses it
//! too once that has passed.
//!
//! Nothing unbounded reaches the log: [`Store::submit`] checks the limits in
//! [`limits`] before proposing, and `apply` checks them again.
//!
//! Reads go through a [`View`] ([`Store::view`]): one consistent snapshot of
//! the state with typed getters and index lookups. The single-read helpers
//! here each take a view of their own. Changes are followed with a
//! [`Watch`] ([`Store::watch`]): every committed change in order, or an
//! explicit reset.

pub mod apply;
pub mod command;
pub mod dhcp;
pub mod digest;
pub mod events;
pub mod frames;
pub mod keys;
pub mod limits;
pub mod object;
pub mod query;
pub mod record;
pub mod view;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use cradle_raft::{RaftNode, WriteError};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};
use tokio::time::Instant;

pub use command::{Command, LeaseRequest, Rejection, Reply};
pub use events::{Action, Event};
pub use query::{ListQuery, Page};
pub use view::{ParamsError, View};
pub use watch::{Change, ResetReason, Watch, WatchError};

use crate::model::{ObjectKind, Prefs, DEFAULT_MAX_OBJECT_BYTES, PREFS_KEY};

/// Most commands gathered into one log entry.
const MAX_BATCH_COMMANDS: usize = 512;
/// Log entries in flight at once. One: openraft makes each client write
/// durable before taking the next, so a second entry in flight only splits
/// what would have been one larger batch (measured: 1 in flight gives ~40%
/// more creates/s than 4 on one node, and more on three).
///
/// One slot does not let a stalled leader stall every write here: a batch
/// forwarded to a leader that stops answering is abandoned (as
/// `outcome_unknown`) once another leader is elected, and the next batch
/// goes to the new one (see `RaftNode::write_before`).
const MAX_BATCHES_IN_FLIGHT: usize = 1;
/// Submissions waiting to be batched before callers are pushed back on.
const PROPOSAL_QUEUE: usize = 16_384;
/// Times one batch is offered to the leader. A batch goes out with the
/// earliest deadline among its commands; when the leader refuses it as
/// late, the commands whose own deadline has not passed go again without
/// the expired ones. A refusal each time means the leader's clock is ahead
/// of this node's: the rest fail as expired by it.
const MAX_PROPOSE_ROUNDS: usize = 3;
/// How long a write may wait to be proposed unless told otherwise
/// ([`Store::with_write_timeout`]).
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("no leader could be reached in time")]
    NoLeader,
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// The leader cannot reach a quorum; nothing was proposed.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// Proposed or sent, but no answer in time: it may or may not apply.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// The write's deadline passed before it was proposed (it waited in the
    /// queue, or for a leader, too long). Nothing was proposed.
    #[error("the deadline passed before the write could be proposed; nothing was written")]
    DeadlineExceeded,
    #[error("internal: {0}")]
    Internal(String),
}

impl From<WriteError> for StoreError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::NoLeader => StoreError::NoLeader,
            // The last known leader is gone: to a client that is no leader.
            WriteError::Unreachable(_) => StoreError::NoLeader,
            WriteError::NoQuorum(m) => StoreError::NoQuorum(m),
            WriteError::Indeterminate(m) | WriteError::Timeout(m) => StoreError::OutcomeUnknown(m),
            WriteError::DeadlineExceeded => StoreError::DeadlineExceeded,
            other => StoreError::Internal(other.to_string()),
        }
    }
}

/// A committed write's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub revision: u64,
    pub object: Option<Value>,
}

struct Proposal {
    command: Command,
    deadline: Instant,
    reply: oneshot::Sender<Result<Reply, StoreError>>,
}

#[derive(Clone)]
pub struct Store {
    raft: Arc<RaftNode>,
    events: broadcast::Sender<Event>,
    proposals: mpsc::Sender<Proposal>,
    write_timeout: Duration,
}

/// A [`Store`] that does not keep the node alive: for callbacks the Raft
/// node itself holds (peer admission), which would otherwise make a cycle
/// that keeps the database open after shutdown.
#[derive(Clone)]
pub struct WeakStore {
    raft: std::sync::Weak<RaftNode>,
    events: broadcast::Sender<Event>,
    proposals: mpsc::WeakSender<Proposal>,
    write_timeout: Duration,
}

impl WeakStore {
    /// The store, while the node runs.
    pub fn upgrade(&self) -> Option<Store> {
        Some(Store {
            raft: self.raft.upgrade()?,
            events: self.events.clone(),
            proposals: self.proposals.upgrade()?,
            write_timeout: self.write_timeout,
        })
    }
}

impl Store {
    pub fn downgrade(&self) -> WeakStore {
        WeakStore {
            raft: Arc::downgrade(&self.raft),
            events: self.events.clone(),
            proposals: self.proposals.downgrade(),
            write_timeout: self.write_timeout,
        }
    }

    /// Wraps a running Raft node whose state machine app is [`apply::CradleApp`]
    /// built with the same `events` sender. Submissions wait in a queue until
    /// the returned [`Batcher`] runs (the node runs it as a background task,
    /// so it stops with the node's shutdown).
    pub fn new(raft: Arc<RaftNode>, events: broadcast::Sender<Event>) -> (Self, Batcher) {
        let (proposals, queue) = mpsc::channel(PROPOSAL_QUEUE);
        let batcher = Batcher {
            raft: raft.clone(),
            queue,
        };
        let store = Store {
            raft,
            events,
            proposals,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
        };
        (store, batcher)
    }

    /// Sets how long from now [`Store::write_deadline`] gives a write.
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// The deadline of a write made now on behalf of an API request: the
    /// configured write timeout from now.
    pub fn write_deadline(&self) -> Instant {
        Instant::now() + self.write_timeout
    }

    pub fn raft(&self) -> &Arc<RaftNode> {
        &self.raft
    }

    /// Proposes `command` and waits until it is committed and applied.
    /// Commands over the limits are refused here, before anything is
    /// proposed. If `deadline` passes before the command is proposed, it
    /// fails with [`StoreError::DeadlineExceeded`] and is never applied;
    /// once proposed, its outcome is awaited (bounded by the Raft layer).
    pub async fn submit(&self, command: Command, deadline: Instant) -> Result<Done, StoreError> {
        self.check_limits(&command)?;
        if Instant::now() >= deadline {
            return Err(StoreError::DeadlineExceeded);
        }
        let (reply, answer) = oneshot::channel();
        self.proposals
            .send(Proposal {
                command,
                deadline,
                reply,
            })
            .await
            .map_err(|_| StoreError::Unavailable("store is shutting down".into()))?;
        let reply = answer
            .await
            .map_err(|_| StoreError::Unavailable("store is shutting down".into()))??;
        match reply {
            Reply::Done { revision, object } => Ok(Done { revision, object }),
            Reply::Rejected(rejection) => Err(StoreError::Rejected(rejection)),
            Reply::Batch { .. } => Err(StoreError::OutcomeUnknown(
                "the reply does not match the request".into(),
            )),
        }
    }

    /// The proposer's side of the limits `apply` enforces, judged against
    /// this replica's prefs.
    fn check_limits(&self, command: &Command) -> Result<(), Rejection> {
        match command {
            Command::Create { object, .. } | Command::Replace { object, .. } => {
                limits::check_value(object, self.max_object_bytes(), "the object")
            }
            Command::Patch { patch, .. } => limits::check_patch(patch),
            _ => Ok(()),
        }
    }

    /// The cluster prefs as this replica has them (defaults before
    /// bootstrap).
    pub fn prefs(&self) -> Result<Prefs, StoreError> {
        Ok(self
            .get_typed::<Prefs>(ObjectKind::Prefs, PREFS_KEY)?
            .unwrap_or_default())
    }

    fn max_object_bytes(&self) -> usize {
        let limit = self
            .prefs()
            .map(|p| p.max_object_bytes)
            .unwrap_or(DEFAULT_MAX_OBJECT_BYTES);
        usize::try_from(limit).unwrap_or(usize::MAX)
    }

    /// Proposes the deletion of up to `limit` token records that expired
    /// before `now_unix`; returns how many went.
    pub async fn purge_expired_tokens(&self, now_unix: u64, limit: u32) -> Result<u64, StoreError> {
        let done = self
            .submit(
                Command::PurgeExpiredTokens { now_unix, limit },
                self.write_deadline(),
            )
            .await?;
        Ok(done
            .object
            .as_ref()
            .and_then(|o| o.get("purged"))
            .and_then(Value::as_u64)
            .unwrap_or(0))
    }

    /// Waits until this replica has applied everything committed when the
    /// call began (linearizable read).
    pub async fn read_barrier(&self) -> Result<(), StoreError> {
        Ok(self.raft.read_barrier().await?)
    }

    /// A consistent view of the local replica's state: every read through it
    /// sees one state (see [`view`]).
    pub fn view(&self) -> Result<View<'_>, StoreError> {
        let read = self
            .raft
            .read_view()
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        View::new(read)
    }

    /// The object of `kind` at `key` in the local replica.
    pub fn get(&self, kind: ObjectKind, key: &str) -> Result<Option<Value>, StoreError> {
        self.view()?.get_value(kind, key)
    }

    /// The object decoded as its model type.
    pub fn get_typed<T: serde::de::DeserializeOwned>(
        &self,
        kind: ObjectKind,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.get(kind, key)? {
            Some(value) => serde_json::from_value(value).map(Some).map_err(|e| {
                StoreError::Internal(format!("corrupt {} {key:?}: {e}", kind.as_str()))
            }),
            None => Ok(None),
        }
    }

    pub fn list(&self, kind: ObjectKind, query: &ListQuery) -> Result<Page, StoreError> {
        let view = self.view()?;
        query::list(view.read(), kind, query)
    }

    /// The revision of the last applied change.
    pub fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.view()?.revision())
    }

    /// This replica's state digest and the log index of the last entry it
    /// covers (`None` before the first entry applied by a build that keeps
    /// one). Entries after that index, if any, changed no application state.
    pub fn state_digest(&self) -> Result<Option<digest::DigestRecord>, StoreError> {
        Ok(self
            .view()?
            .meta(keys::META_DIGEST)?
            .as_deref()
            .and_then(digest::DigestRecord::decode))
    }

    /// The key bearer tokens are signed with; `None` before bootstrap.
    pub fn signing_key(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.view()?.signing_key()
    }

    pub fn is_bootstrapped(&self) -> Result<bool, StoreError> {
        self.view()?.is_bootstrapped()
    }

    /// Stored events after `since`, oldest first, at most `limit`.
    pub fn events_after(&self, since: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.view()?.events_after(since, limit)
    }

    /// The oldest revision still in the event log, if any.
    pub fn oldest_event(&self) -> Result<Option<u64>, StoreError> {
        self.view()?.oldest_event()
    }

    /// The cluster CA (certificate PEM, key PEM), held in replicated state
    /// so any voter can admit a joining node.
    pub fn cluster_ca(&self) -> Result<Option<(String, String)>, StoreError> {
        self.view()?.cluster_ca()
    }

    /// One join token record, by id.
    pub fn join_token(
        &self,
        id: &str,
    ) -> Result<Option<crate::cluster::state::JoinToken>, StoreError> {
        self.view()?.join_token(id)
    }

    pub fn join_tokens(&self) -> Result<Vec<crate::cluster::state::JoinToken>, StoreError> {
        self.view()?.join_tokens()
    }

    /// Every node ever registered, removed ones included, in id order.
    pub fn cluster_nodes(&self) -> Result<Vec<crate::cluster::state::ClusterNode>, StoreError> {
        self.view()?.cluster_nodes()
    }

    pub fn cluster_node(
        &self,
        id: u64,
    ) -> Result<Option<crate::cluster::state::ClusterNode>, StoreError> {
        self.view()?.cluster_node(id)
    }

    /// Follows committed changes after `since` (`None`: from now); see
    /// [`watch`].
    pub fn watch(&self, since: Option<u64>) -> Result<Watch, WatchError> {
        Watch::start(self.clone(), since)
    }

    /// Follows the changes after `view`, for a cache loaded from it; see
    /// [`watch`].
    pub fn watch_after(&self, view: &View<'_>) -> Watch {
        Watch::after(self.clone(), view)
    }

    /// The raw live feed (events as they commit, no gap handling); use
    /// [`Store::watch`], which delivers every change or says it cannot.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

fn cf<'a>(db: &'a rocksdb::DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, StoreError> {
    db.cf_handle(name)
        .ok_or_else(|| StoreError::Internal(format!("missing column family {name}")))
}

/// The group-commit task of a [`Store`]: see [`Batcher::run`].
pub struct Batcher {
    raft: Arc<RaftNode>,
    queue: mpsc::Receiver<Proposal>,
}

impl Batcher {
    /// Gathers proposals into batches until `shutdown` fires (or every
    /// [`Store`] is gone), then waits for the batches in flight to be
    /// answered. Proposals still queued then are refused as "shutting down":
    /// they were never proposed.
    pub async fn run(self, mut shutdown: crate::service::Shutdown) {
        let in_flight = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
        tokio::select! {
            () = batch_proposals(self.raft, self.queue, in_flight.clone()) => {}
            () = shutdown.requested() => {}
        }
        let permits = u32::try_from(MAX_BATCHES_IN_FLIGHT).unwrap_or(u32::MAX);
        let _ = in_flight.acquire_many(permits).await;
    }
}

/// Gathers whatever proposals are waiting into one batch and keeps a few
/// batches in flight, so throughput grows with load instead of with fsyncs.
/// Deadlines are judged as proposals leave the queue: one that expired while
/// waiting (behind a batch in flight, or for a leader) is refused here.
async fn batch_proposals(
    raft: Arc<RaftNode>,
    mut queue: mpsc::Receiver<Proposal>,
    in_flight: Arc<Semaphore>,
) {
    while let Some(first) = queue.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let now = Instant::now();
        let mut batch = Vec::new();
        let mut next = Some(first);
        while batch.len() < MAX_BATCH_COMMANDS {
            let proposal = match next.take() {
                Some(p) => p,
                None => match queue.try_recv() {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            if proposal.deadline <= now {
                let _ = proposal.reply.send(Err(StoreError::DeadlineExceeded));
            } else {
                batch.push(proposal);
            }
        }
        if batch.is_empty() {
            continue;
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose(&raft, batch).await;
            drop(permit);
        });
    }
}

/// One command of a batch, encoded.
struct Encoded {
    bytes: Vec<u8>,
    deadline: Instant,
    reply: oneshot::Sender<Result<Reply, StoreError>>,
}

async fn propose(raft: &RaftNode, batch: Vec<Proposal>) {
    let format = match entry_format(raft) {
        Ok(format) => format,
        Err(e) => {
            for proposal in batch {
                let _ = proposal.reply.send(Err(e.clone()));
            }
            return;
        }
    };
    // Each command is encoded on its own: one that cannot be fails alone.
    let mut pending = Vec::with_capacity(batch.len());
    for proposal in batch {
        if let Err(rejection) = command::check_format(&proposal.command, format) {
            let _ = proposal.reply.send(Err(StoreError::Rejected(rejection)));
            continue;
        }
        match serde_json::to_vec(&proposal.command) {
            Ok(bytes) => pending.push(Encoded {
                bytes,
                deadline: proposal.deadline,
                reply: proposal.reply,
            }),
            Err(e) => {
                let _ = proposal
                    .reply
                    .send(Err(StoreError::Internal(format!("encoding command: {e}"))));
            }
        }
    }
    for _ in 0..MAX_PROPOSE_ROUNDS {
        let now = Instant::now();
        let (live, expired): (Vec<_>, Vec<_>) = pending.into_iter().partition(|p| p.deadline > now);
        for p in expired {
            let _ = p.reply.send(Err(StoreError::DeadlineExceeded));
        }
        let Some(deadline) = live.iter().map(|p| p.deadline).min() else {
            return;
        };
        // Always framed, even one command: the envelope carries the format.
        let parts: Vec<&[u8]> = live.iter().map(|p| &p.bytes[..]).collect();
        let payload = match frames::encode(format, &parts) {
            Ok(payload) => payload,
            Err(e) => {
                for p in live {
                    let _ = p.reply.send(Err(StoreError::Internal(e.to_string())));
                }
                return;
            }
        };
        let replies = match raft.write_before(payload, deadline).await {
            Ok(bytes) => match_replies(&bytes, live.len()),
            // Nothing was proposed: try the others without the expired.
            Err(WriteError::DeadlineExceeded) => {
                pending = live;
                continue;
            }
            Err(e) => {
                let e = StoreError::from(e);
                (0..live.len()).map(|_| Err(e.clone())).collect()
            }
        };
        for (p, reply) in live.into_iter().zip(replies) {
            let _ = p.reply.send(reply);
        }
        return;
    }
    for p in pending {
        let _ = p.reply.send(Err(StoreError::DeadlineExceeded));
    }
}

/// The format to write the next entry in: the newest every registered node
/// reads (as this replica knows the registry) that this build writes. A
/// replica behind on the registry only ever sees older formats registered
/// (a node's format rises when it upgrades), so it errs towards the older
/// format, which every node reads.
fn entry_format(raft: &RaftNode) -> Result<u32, StoreError> {
    use keys::{decode_u32, CF_META, META_BOOTSTRAPPED, META_LOG_FORMAT};
    let db = raft.db();
    let meta = cf(&db, CF_META)?;
    let read = |key: &[u8]| {
        db.get_cf(meta, key)
            .map_err(|e| StoreError::Internal(e.to_string()))
    };
    let cluster_reads = match read(META_LOG_FORMAT)?.and_then(|b| decode_u32(&b)) {
        Some(format) => format,
        // Before bootstrap only this node is registered.
        None if read(META_BOOTSTRAPPED)?.is_none() => frames::NEWEST_FORMAT,
        // State from before formats were registered: the first one.
        None => frames::FORMAT_V1,
    };
    Ok(command::entry_format(
        cluster_reads,
        frames::OLDEST_FORMAT..=frames::NEWEST_FORMAT,
    )?)
}

/// Pairs an applied entry's reply with its `count` waiters. The entry was
/// committed, so a reply that cannot be read or matched means the outcome is
/// unknown to this node, not that the command failed.
fn match_replies(bytes: &[u8], count: usize) -> Vec<Result<Reply, StoreError>> {
    let unknown = |why: &str| {
        StoreError::OutcomeUnknown(format!(
            "the write was committed but its reply {why}; check before retrying"
        ))
    };
    let decode = |frame: &[u8]| {
        serde_json::from_slice::<Reply>(frame).map_err(|_| unknown("could not be decoded"))
    };
    match frames::decode(bytes, frames::readable_formats()) {
        Ok((_, parts)) if parts.len() == count => parts.into_iter().map(decode).collect(),
        _ => (0..count)
            .map(|_| Err(unknown("does not match the batch")))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cradle_raft::{NodeConfig, NodeInfo};
    use serde_json::json;

    fn profile(name: &str) -> Command {
        Command::Create {
            kind: ObjectKind::Profiles,
            object: json!({ "name": name }),
        }
    }

    /// Writes queued behind a batch that cannot be proposed (no leader yet)
    /// whose deadline passes meanwhile are refused with `DeadlineExceeded`
    /// once the queue moves, and never applied.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_expired_in_the_queue_are_refused_and_never_applied() {
        let dir = tempfile::tempdir().unwrap();
        let (events, _) = broadcast::channel(64);
        let app = Arc::new(apply::CradleApp::new(events.clone()));
        let info = NodeInfo {
            rpc_addr: "127.0.0.1:1".into(),
            api_addr: "127.0.0.1:2".into(),
        };
        let raft = Arc::new(
            RaftNode::open(NodeConfig::new(1, dir.path(), info), app)
                .await
                .unwrap(),
        );
        let (store, batcher) = Store::new(raft.clone(), events);
        let (_stop, shutdown) = crate::service::Shutdown::new();
        tokio::spawn(batcher.run(shutdown));

        // No leader yet: the first write waits for one, holding the only
        // batch slot, and the next ones wait in the queue behind it.
        let long = Instant::now() + Duration::from_secs(30);
        let first = tokio::spawn({
            let store = store.clone();
            async move { store.submit(profile("first"), long).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let short = Instant::now() + Duration::from_millis(300);
        let late: Vec<_> = (0..3)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(
                    async move { store.submit(profile(&format!("late-{i}")), short).await },
                )
            })
            .collect();
        // An already expired write is refused without being queued.
        assert!(matches!(
            store.submit(profile("past"), Instant::now()).await,
            Err(StoreError::DeadlineExceeded)
        ));
        tokio::time::sleep_until(short + Duration::from_millis(200)).await;
        raft.initialize_single().await.unwrap();

        let first = first
            .await
            .unwrap()
            .expect("the first write, within its deadline");
        for task in late {
            let result = task.await.unwrap();
            assert!(
                matches!(result, Err(StoreError::DeadlineExceeded)),
                "{result:?}"
            );
        }
        for name in ["late-0", "late-1", "late-2", "past"] {
            assert_eq!(store.get(ObjectKind::Profiles, name).unwrap(), None);
        }
        assert!(store.get(ObjectKind::Profiles, "first").unwrap().is_some());
        // Nothing of the refused writes took a revision.
        let next = store
            .submit(profile("next"), store.write_deadline())
            .await
            .unwrap();
        assert_eq!(next.revision, first.revision + 1);
        raft.shutdown().await.unwrap();
    }
}
