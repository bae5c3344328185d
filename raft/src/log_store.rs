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

use crate::store::{blocking, cf_handle, StoreError, CF_RAFT_LOG, CF_RAFT_META};
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

fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl ToString,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        what: "raft log record",
        detail: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: "raft log record",
        detail: e.to_string(),
    })
}

impl LogStore {
    pub(crate) fn new(db: Arc<DB>, committed: Arc<CommittedIndex>) -> Result<Self, StoreError> {
        let store = LogStore { db, committed };
        // Seed the shared committed index so status is right before the
        // first commit after a restart.
        let committed = store.stored_committed()?;
        store.committed.set(committed.map(|c| c.index));
        Ok(store)
    }

    /// `Option<LogId>` is what is stored, so a stored `null` reads as None.
    fn stored_committed(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        Ok(self.meta::<Option<LogId<NodeId>>>(KEY_COMMITTED)?.flatten())
    }

    fn meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        let cf = cf_handle(&self.db, CF_RAFT_META)?;
        match self.db.get_cf(cf, key)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Writes `batch` with sync, in a blocking task.
    async fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let db = self.db.clone();
        blocking(move || Ok(db.write_opt(batch, &synced())?)).await
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        let cf = cf_handle(&self.db, CF_RAFT_LOG)?;
        match self.db.iterator_cf(cf, IteratorMode::End).next() {
            None => Ok(None),
            Some(item) => {
                let (_, value) = item?;
                let entry: Entry<TypeConfig> = decode(&value)?;
                Ok(Some(entry.log_id))
            }
        }
    }

    fn read_range<RB: RangeBounds<u64>>(
        &self,
        range: &RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => match i.checked_add(1) {
                Some(next) => next,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let cf = cf_handle(&self.db, CF_RAFT_LOG)?;
        let from = index_key(start);
        let mut entries = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward))
        {
            let (key, value) = item?;
            let index = key_index(&key).ok_or_else(|| StoreError::Corrupt {
                what: "raft log key",
                detail: format!("{} bytes, expected 8", key.len()),
            })?;
            if !range.contains(&index) {
                break;
            }
            let entry: Entry<TypeConfig> = decode(&value)?;
            if entry.log_id.index != index {
                return Err(StoreError::Corrupt {
                    what: "raft log entry",
                    detail: format!("stored under index {index} but has log id {}", entry.log_id),
                });
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    fn encode_entries<I>(&self, entries: I) -> Result<WriteBatch, StoreError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>>,
    {
        let cf = cf_handle(&self.db, CF_RAFT_LOG)?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put_cf(cf, index_key(entry.log_id.index), encode(&entry)?);
        }
        Ok(batch)
    }

    fn truncate_batch(&self, index: u64) -> Result<WriteBatch, StoreError> {
        let cf = cf_handle(&self.db, CF_RAFT_LOG)?;
        let mut batch = WriteBatch::default();
        // delete_range excludes its end, so the largest possible key goes
        // separately.
        batch.delete_range_cf(cf, index_key(index), index_key(u64::MAX));
        batch.delete_cf(cf, index_key(u64::MAX));
        Ok(batch)
    }

    fn purge_batch(&self, log_id: &LogId<NodeId>) -> Result<WriteBatch, StoreError> {
        let log_cf = cf_handle(&self.db, CF_RAFT_LOG)?;
        let meta_cf = cf_handle(&self.db, CF_RAFT_META)?;
        let mut batch = WriteBatch::default();
        // The purge marker and the deletion go in one batch: after a crash
        // the log never has a gap that the marker does not explain.
        batch.put_cf(meta_cf, KEY_LAST_PURGED, encode(log_id)?);
        match log_id.index.checked_add(1) {
            Some(end) => batch.delete_range_cf(log_cf, index_key(0), index_key(end)),
            None => {
                batch.delete_range_cf(log_cf, index_key(0), index_key(u64::MAX));
                batch.delete_cf(log_cf, index_key(u64::MAX));
            }
        }
        Ok(batch)
    }

    fn vote_batch(&self, vote: &Vote<NodeId>) -> Result<WriteBatch, StoreError> {
        let cf = cf_handle(&self.db, CF_RAFT_META)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, KEY_VOTE, encode(vote)?);
        Ok(batch)
    }

    fn save_committed_unsynced(&self, committed: &Option<LogId<NodeId>>) -> Result<(), StoreError> {
        let cf = cf_handle(&self.db, CF_RAFT_META)?;
        self.db.put_cf(cf, KEY_COMMITTED, encode(committed)?)?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        self.read_range(&range)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let read = || -> Result<LogState<TypeConfig>, StoreError> {
            let last_purged_log_id = self.meta::<LogId<NodeId>>(KEY_LAST_PURGED)?;
            let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        };
        read().map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let batch = self
            .vote_batch(vote)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.write_synced(batch)
            .await
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.meta(KEY_VOTE)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    /// Not synced: a lost committed index is re-learned from the leader, and
    /// the next synced log write makes it durable anyway.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.save_committed_unsynced(&committed)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.committed.set(committed.map(|c| c.index));
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        self.stored_committed()
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let written = match self.encode_entries(entries) {
            // Report done only once the batch is fsynced: openraft counts
            // this node towards the quorum on that signal.
            Ok(batch) => self.write_synced(batch).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        tracing::debug!(%log_id, "truncating log from here on");
        let batch = self
            .truncate_batch(log_id.index)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.write_synced(batch)
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        tracing::debug!(%log_id, "purging log up to here");
        let batch = self
            .purge_batch(&log_id)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.write_synced(batch)
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::testing::{log_id, StoreBuilder, Suite};
    use openraft::EntryPayload;
    use tempfile::TempDir;

    use super::*;
    use crate::state_machine::StateMachine;
    use crate::test_support::{open_stores, KvApp};
    use crate::types::Payload;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
        async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
            let dir = tempfile::tempdir().unwrap();
            let (log, sm, _db) = open_stores(dir.path(), KvApp::new()).await;
            Ok((dir, log, sm))
        }
    }

    /// openraft's own storage compliance suite: log state, membership
    /// recovery, purge/truncate edge cases, apply, snapshot transfer.
    #[test]
    fn passes_openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Normal(Payload(format!("put k{index} v{index}").into_bytes())),
        }
    }

    fn indices(entries: &[Entry<TypeConfig>]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[tokio::test]
    async fn log_vote_and_purge_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _sm, _db) = open_stores(dir.path(), KvApp::new()).await;
            log.blocking_append((1..=10).map(entry)).await.unwrap();
            let got = log.try_get_log_entries(3..7).await.unwrap();
            assert_eq!(indices(&got), vec![3, 4, 5, 6]);
            assert_eq!(got[0].payload, entry(3).payload);
            assert_eq!(
                indices(&log.try_get_log_entries(9..).await.unwrap()),
                vec![9, 10]
            );

            log.truncate(log_id(1, 1, 8)).await.unwrap();
            log.purge(log_id(1, 1, 2)).await.unwrap();
            log.save_vote(&Vote::new(5, 2)).await.unwrap();
            log.save_committed(Some(log_id(1, 1, 6))).await.unwrap();
            assert_eq!(log.committed.get(), Some(6));
        }
        // Every handle dropped: the database is closed and reopened.
        let (mut log, _sm, _db) = open_stores(dir.path(), KvApp::new()).await;
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 2)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 7)));
        assert_eq!(
            indices(&log.try_get_log_entries(0..100).await.unwrap()),
            vec![3, 4, 5, 6, 7]
        );
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(5, 2)));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 1, 6)));
        assert_eq!(log.committed.get(), Some(6));

        // Purging everything leaves the purge point as the last log id.
        log.purge(log_id(1, 1, 7)).await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 7)));
        assert!(log.try_get_log_entries(0..100).await.unwrap().is_empty());

        // Appending continues after the purge point.
        log.blocking_append([entry(8)]).await.unwrap();
        assert_eq!(
            indices(&log.try_get_log_entries(..).await.unwrap()),
            vec![8]
        );
    }

    #[tokio::test]
    async fn corrupt_log_record_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm, db) = open_stores(dir.path(), KvApp::new()).await;
        log.blocking_append((1..=3).map(entry)).await.unwrap();
        let cf = db.cf_handle(CF_RAFT_LOG).unwrap();
        db.put_cf(cf, index_key(2), b"not json").unwrap();
        assert!(log.try_get_log_entries(1..4).await.is_err());
        // An entry stored under the wrong index is caught too.
        let misplaced = serde_json::to_vec(&entry(3)).unwrap();
        db.put_cf(cf, index_key(2), misplaced).unwrap();
        assert!(log.try_get_log_entries(2..3).await.is_err());
    }
}
