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
pub mod events;
pub mod frames;
pub mod keys;
pub mod limits;
pub mod object;
pub mod query;
pub mod view;
pub mod watch;

use std::sync::Arc;

use cradle_raft::{RaftNode, WriteError};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};

pub use command::{Command, Rejection, Reply};
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
const MAX_BATCHES_IN_FLIGHT: usize = 1;
/// Submissions waiting to be batched before callers are pushed back on.
const PROPOSAL_QUEUE: usize = 16_384;

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
    reply: oneshot::Sender<Result<Reply, StoreError>>,
}

#[derive(Clone)]
pub struct Store {
    raft: Arc<RaftNode>,
    events: broadcast::Sender<Event>,
    proposals: mpsc::Sender<Proposal>,
}

/// A [`Store`] that does not keep the node alive: for callbacks the Raft
/// node itself holds (peer admission), which would otherwise make a cycle
/// that keeps the database open after shutdown.
#[derive(Clone)]
pub struct WeakStore {
    raft: std::sync::Weak<RaftNode>,
    events: broadcast::Sender<Event>,
    proposals: mpsc::WeakSender<Proposal>,
}

impl WeakStore {
    /// The store, while the node runs.
    pub fn upgrade(&self) -> Option<Store> {
        Some(Store {
            raft: self.raft.upgrade()?,
            events: self.events.clone(),
            proposals: self.proposals.upgrade()?,
        })
    }
}

impl Store {
    pub fn downgrade(&self) -> WeakStore {
        WeakStore {
            raft: Arc::downgrade(&self.raft),
            events: self.events.clone(),
            proposals: self.proposals.downgrade(),
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
        };
        (store, batcher)
    }

    pub fn raft(&self) -> &Arc<RaftNode> {
        &self.raft
    }

    /// Proposes `command` and waits until it is committed and applied.
    /// Commands over the limits are refused here, before anything is
    /// proposed.
    pub async fn submit(&self, command: Command) -> Result<Done, StoreError> {
        self.check_limits(&command)?;
        let (reply, answer) = oneshot::channel();
        self.proposals
            .send(Proposal { command, reply })
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
            .submit(Command::PurgeExpiredTokens { now_unix, limit })
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
        // Still straight from the database, not through a view: a list taken
        // during a snapshot install can mix the two states (`View::read` is
        // what it would iterate instead).
        query::list(&self.raft.db(), kind, query)
    }

    /// The revision of the last applied change.
    pub fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.view()?.revision())
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
async fn batch_proposals(
    raft: Arc<RaftNode>,
    mut queue: mpsc::Receiver<Proposal>,
    in_flight: Arc<Semaphore>,
) {
    while let Some(first) = queue.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose(&raft, batch).await;
            drop(permit);
        });
    }
}

async fn propose(raft: &RaftNode, batch: Vec<Proposal>) {
    let (commands, waiters): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    // Each command is encoded on its own: one that cannot be fails alone.
    let mut encoded = Vec::with_capacity(commands.len());
    let mut senders = Vec::with_capacity(waiters.len());
    for (command, waiter) in commands.iter().zip(waiters) {
        match serde_json::to_vec(command) {
            Ok(bytes) => {
                encoded.push(bytes);
                senders.push(waiter);
            }
            Err(e) => {
                let _ = waiter.send(Err(StoreError::Internal(format!("encoding command: {e}"))));
            }
        }
    }
    let payload = match encoded.len() {
        0 => return,
        1 => encoded.pop().unwrap_or_default(),
        _ => match frames::encode(&encoded) {
            Ok(payload) => payload,
            Err(e) => {
                for waiter in senders {
                    let _ = waiter.send(Err(StoreError::Internal(e.to_string())));
                }
                return;
            }
        },
    };
    let framed = senders.len() > 1;
    let replies = match raft.write(payload).await {
        Ok(bytes) => match_replies(&bytes, framed, senders.len()),
        Err(e) => {
            let e = StoreError::from(e);
            (0..senders.len()).map(|_| Err(e.clone())).collect()
        }
    };
    for (waiter, reply) in senders.into_iter().zip(replies) {
        let _ = waiter.send(reply);
    }
}

/// Pairs an applied entry's reply with its `count` waiters. The entry was
/// committed, so a reply that cannot be read or matched means the outcome is
/// unknown to this node, not that the command failed.
fn match_replies(bytes: &[u8], framed: bool, count: usize) -> Vec<Result<Reply, StoreError>> {
    let unknown = |why: &str| {
        StoreError::OutcomeUnknown(format!(
            "the write was committed but its reply {why}; check before retrying"
        ))
    };
    let decode = |frame: &[u8]| {
        serde_json::from_slice::<Reply>(frame).map_err(|_| unknown("could not be decoded"))
    };
    if !framed {
        return vec![decode(bytes)];
    }
    match frames::decode(bytes) {
        Ok(parts) if parts.len() == count => parts.into_iter().map(decode).collect(),
        _ => (0..count)
            .map(|_| Err(unknown("does not match the batch")))
            .collect(),
    }
}
