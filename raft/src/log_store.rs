//! The Raft log and the vote, in the `raft_log` and `raft_meta` column
//! families.
//!
//! Every write openraft relies on after a crash (append, vote, truncate,
//! purge) goes out as one synced `WriteBatch` before it is reported done: an
//! acknowledged entry must survive kill -9. Because the state machine shares
//! this database and its write-ahead log, each synced write here also makes
//! every earlier unsynced state-machine write durable.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::store::{cf_handle, CF_RAFT_LOG, CF_RAFT_META};
use crate::types::{NodeId, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// The committed log index as last reported by openraft, shared with the node
/// handle for status reports (openraft's metrics do not carry it).
#[derive(Debug, Default)]
pub(crate) struct CommittedIndex(AtomicU64);

impl CommittedIndex {
    /// Stored as index + 1 so that 0 can mean "nothing committed yet".
    pub(crate) fn get(&self) -> Option<u64> {
        self.0.load(Ordering::Acquire).checked_sub(1)
    }

    fn set(&self, index: Option<u64>) {
        let raw = index.map_or(0, |i| i.saturating_add(1));
        self.0.store(raw, Ordering::Release);
    }
}

/// The log store handed to openraft; clones share the database.
#[derive(Clone)]
pub(crate) struct LogStore {
    db: Arc<DB>,
    committed: Arc<CommittedIndex>,
}

/// Log keys are big-endian so RocksDB's byte order is index order.
pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

fn encode<T: Serialize>(value: &T, subject: ErrorSubject<NodeId>) -> StorageResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| io_err(subject, ErrorVerb::Write, e))
}

fn decode<T: DeserializeOwned>(bytes: &[u8], subject: ErrorSubject<NodeId>) -> StorageResult<T> {
    serde_json::from_slice(bytes).map_err(|e| io_err(subject, ErrorVerb::Read, e))
}

/// Runs blocking RocksDB work (fsync above all) off the async worker threads.
async fn blocking<T, F>(subject: ErrorSubject<NodeId>, f: F) -> StorageResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> StorageResult<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) => Err(io_err(subject, ErrorVerb::Write, join)),
    }
}

impl LogStore {
    pub(crate) fn new(db: Arc<DB>, committed: Arc<CommittedIndex>) -> StorageResult<Self> {
        let store = LogStore { db, committed };
        // Seed the shared committed index so status is right before the
        // first commit after a restart.
        let committed = store.stored_committed()?;
        store.committed.set(committed.map(|c| c.index));
        Ok(store)
    }

    /// `Option<LogId>` is what is stored, so a stored `null` reads as None.
    fn stored_committed(&self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self
            .meta::<Option<LogId<NodeId>>>(KEY_COMMITTED, ErrorSubject::Store)?
            .flatten())
    }

    fn meta<T: DeserializeOwned>(&self, key: &[u8], subject: ErrorSubject<NodeId>) -> StorageResult<Option<T>> {
        let cf = cf_handle(&self.db, CF_RAFT_META).map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?;
        match self.db.get_cf(cf, key) {
            Ok(Some(bytes)) => decode(&bytes, subject).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(io_err(subject, ErrorVerb::Read, e)),
        }
    }

    /// Writes `batch` with sync in a blocking task.
    async fn write_synced(&self, batch: WriteBatch, subject: ErrorSubject<NodeId>) -> StorageResult<()> {
        let db = self.db.clone();
        let err_subject = subject.clone();
        blocking(subject, move || {
            db.write_opt(batch, &synced())
                .map_err(|e| io_err(err_subject, ErrorVerb::Write, e))
        })
        .await
    }

    fn last_entry_log_id(&self) -> StorageResult<Option<LogId<NodeId>>> {
        let cf = cf_handle(&self.db, CF_RAFT_LOG).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        match self.db.iterator_cf(cf, IteratorMode::End).next() {
            None => Ok(None),
            Some(Err(e)) => Err(io_err(ErrorSubject::Logs, ErrorVerb::Read, e)),
            Some(Ok((_, value))) => {
                let entry: Entry<TypeConfig> = decode(&value, ErrorSubject::Logs)?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => match i.checked_add(1) {
                Some(next) => next,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let cf = cf_handle(&self.db, CF_RAFT_LOG).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let from = index_key(start);
        let mut entries = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::From(&from, Direction::Forward)) {
            let (key, value) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            let index = key_index(&key)
                .ok_or_else(|| io_err(ErrorSubject::Logs, ErrorVerb::Read, "log key is not 8 bytes"))?;
            if !range.contains(&index) {
                break;
            }
            let entry: Entry<TypeConfig> = decode(&value, ErrorSubject::LogIndex(index))?;
            if entry.log_id.index != index {
                return Err(io_err(
                    ErrorSubject::LogIndex(index),
                    ErrorVerb::Read,
                    format!("entry stored under index {index} has log id {}", entry.log_id),
                ));
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id = self.meta::<LogId<NodeId>>(KEY_LAST_PURGED, ErrorSubject::Logs)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let cf = cf_handle(&self.db, CF_RAFT_META).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, KEY_VOTE, encode(vote, ErrorSubject::Vote)?);
        self.write_synced(batch, ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.meta(KEY_VOTE, ErrorSubject::Vote)
    }

    /// Not synced: a lost committed index is re-learned from the leader, and
    /// the next synced log write makes it durable anyway.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        let cf = cf_handle(&self.db, CF_RAFT_META).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        let bytes = encode(&committed, ErrorSubject::Store)?;
        self.db
            .put_cf(cf, KEY_COMMITTED, bytes)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.committed.set(committed.map(|c| c.index));
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        self.stored_committed()
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = cf_handle(&self.db, CF_RAFT_LOG).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            let bytes = encode(&entry, ErrorSubject::Log(entry.log_id))?;
            batch.put_cf(cf, index_key(entry.log_id.index), bytes);
        }
        // Report done only once the batch is fsynced: openraft counts this
        // node towards the quorum on that signal.
        match self.write_synced(batch, ErrorSubject::Logs).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        tracing::debug!(%log_id, "truncating log from here on");
        let cf = cf_handle(&self.db, CF_RAFT_LOG).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        let mut batch = WriteBatch::default();
        // delete_range excludes its end, so the largest possible key goes
        // separately.
        batch.delete_range_cf(cf, index_key(log_id.index), index_key(u64::MAX));
        batch.delete_cf(cf, index_key(u64::MAX));
        self.write_synced(batch, ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        tracing::debug!(%log_id, "purging log up to here");
        let log_cf = cf_handle(&self.db, CF_RAFT_LOG).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        let meta_cf = cf_handle(&self.db, CF_RAFT_META).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        let mut batch = WriteBatch::default();
        // The purge marker and the deletion go in one batch: after a crash
        // the log never has a hole that the marker does not explain.
        batch.put_cf(meta_cf, KEY_LAST_PURGED, encode(&log_id, ErrorSubject::Logs)?);
        match log_id.index.checked_add(1) {
            Some(end) => batch.delete_range_cf(log_cf, index_key(0), index_key(end)),
            None => {
                batch.delete_range_cf(log_cf, index_key(0), index_key(u64::MAX));
                batch.delete_cf(log_cf, index_key(u64::MAX));
            }
        }
        self.write_synced(batch, ErrorSubject::Logs).await
    }
}
