//! The RocksDB database shared by the Raft log and the state machine, and the
//! contract between the state machine and the application it runs.
//!
//! One database, one write-ahead log: the log store's fsync also makes every
//! earlier state-machine write durable, so the state machine itself writes
//! without sync and is never ahead of a durable log.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, DB};

/// Raft log entries, keyed by big-endian log index so key order is log order.
pub(crate) const CF_RAFT_LOG: &str = "raft_log";
/// Vote, committed log id, last purged log id, current snapshot pointer.
pub(crate) const CF_RAFT_META: &str = "raft_meta";
/// Last applied log id and last membership, written in the same batch as the
/// application's writes so they can never disagree.
pub(crate) const CF_SM_META: &str = "sm_meta";

/// Column families the application may not claim.
pub(crate) const RESERVED_CFS: [&str; 4] = ["default", CF_RAFT_LOG, CF_RAFT_META, CF_SM_META];

/// Errors from the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("unknown column family {0:?}")]
    UnknownColumnFamily(String),
    #[error("column family {0:?} is reserved for the Raft layer")]
    ReservedColumnFamily(String),
    #[error("corrupt record in {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("background task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Halted(#[from] ApplyHalt),
}

/// Why apply stopped at an entry instead of applying it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("apply halted at log index {log_index}: {reason}")]
pub struct ApplyHalt {
    pub log_index: u64,
    pub reason: String,
}

/// Key/value pairs in key order.
pub type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// One key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Runs blocking storage work (RocksDB, fsync, file I/O) off the async
/// worker threads.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) => Err(StoreError::Task(join.to_string())),
    }
}

/// Opens (creating if needed) the node's database with the Raft column
/// families and the application's.
pub(crate) fn open_db(path: &Path, app_cfs: &[&str]) -> Result<DB, StoreError> {
    for name in app_cfs {
        if RESERVED_CFS.contains(name) {
            return Err(StoreError::ReservedColumnFamily((*name).to_string()));
        }
    }
    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    // Recover the longest consistent prefix of the WAL after a crash: the
    // state machine's unsynced writes then never outlive an earlier log write.
    db_opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
    let names = [CF_RAFT_LOG, CF_RAFT_META, CF_SM_META]
        .into_iter()
        .chain(app_cfs.iter().copied());
    let descriptors = names
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()))
        .collect::<Vec<_>>();
    Ok(DB::open_cf_descriptors(&db_opts, path, descriptors)?)
}

/// Looks up a column family handle; every name used here was created by
/// [`open_db`], so a miss means the database was opened differently.
pub(crate) fn cf_handle<'a>(
    db: &'a DB,
    name: &str,
) -> Result<&'a rocksdb::ColumnFamily, StoreError> {
    db.cf_handle(name)
        .ok_or_else(|| StoreError::UnknownColumnFamily(name.to_string()))
}

/// What the application above Raft implements: how committed payloads change
/// its state.
pub trait StateMachineApp: Send + Sync + 'static {
    /// Column families the application owns. They are created when the
    /// database opens and are carried whole in snapshots.
    fn column_families(&self) -> &'static [&'static str];

    /// Applies one committed payload and returns the reply for the client
    /// that proposed it.
    ///
    /// Must be deterministic: the same state and payload give the same writes
    /// and reply on every replica. No clocks, no randomness, no I/O except
    /// through `txn`. Invalid payloads are answered with an error reply, never
    /// a panic.
    ///
    /// `Err` is for an entry this build cannot apply at all (one written in a
    /// newer format): answering it would make this replica differ from those
    /// that can, and skipping it would too. The state machine then writes
    /// nothing of the batch and stops with a storage error, which stops this
    /// node's Raft; it resumes from the same entry once upgraded.
    fn apply(
        &self,
        txn: &mut Txn<'_>,
        log_index: u64,
        payload: &[u8],
    ) -> Result<Vec<u8>, ApplyHalt>;

    /// Called after the writes of every `apply` since the previous call are
    /// committed to the database, so readers now see them.
    fn committed(&self);

    /// Called after a snapshot replaced the application's whole state.
    fn snapshot_installed(&self);
}

/// The writes of one batch of entries, applied atomically, with reads that
/// see the batch's own earlier writes.
pub struct Txn<'a> {
    db: &'a DB,
    overlay: BTreeMap<(String, Vec<u8>), Option<Vec<u8>>>,
    batch: WriteBatch,
    /// Keys read from the database (not the overlay), so tests can bound
    /// what an operation costs.
    keys_read: Cell<u64>,
}

impl<'a> Txn<'a> {
    pub fn new(db: &'a DB) -> Self {
        Txn {
            db,
            overlay: BTreeMap::new(),
            batch: WriteBatch::default(),
            keys_read: Cell::new(0),
        }
    }

    /// How many keys this transaction has read from the database so far
    /// (point reads and keys stepped over by scans and seeks).
    pub fn keys_read(&self) -> u64 {
        self.keys_read.get()
    }

    fn count_read(&self) {
        self.keys_read.set(self.keys_read.get() + 1);
    }

    pub fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(pending) = self.overlay.get(&(cf.to_string(), key.to_vec())) {
            return Ok(pending.clone());
        }
        let handle = self.cf(cf)?;
        self.count_read();
        Ok(self.db.get_cf(handle, key)?)
    }

    pub fn put(&mut self, cf: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let handle = self.cf(cf)?;
        self.batch.put_cf(handle, key, value);
        self.overlay
            .insert((cf.to_string(), key.to_vec()), Some(value.to_vec()));
        Ok(())
    }

    pub fn delete(&mut self, cf: &str, key: &[u8]) -> Result<(), StoreError> {
        let handle = self.cf(cf)?;
        self.batch.delete_cf(handle, key);
        self.overlay.insert((cf.to_string(), key.to_vec()), None);
        Ok(())
    }

    /// Every live key starting with `prefix`, in key order, as this batch
    /// would leave them, stopping after `limit` entries.
    pub fn scan_prefix(
        &self,
        cf: &str,
        prefix: &[u8],
        limit: usize,
    ) -> Result<KeyValues, StoreError> {
        let handle = self.cf(cf)?;
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for item in self
            .db
            .iterator_cf(handle, IteratorMode::From(prefix, Direction::Forward))
        {
            let (key, value) = item?;
            self.count_read();
            if !key.starts_with(prefix) {
                break;
            }
            merged.insert(key.to_vec(), Some(value.to_vec()));
            // Overlay deletions may hide some of these, so read a little past
            // the limit only when the overlay touches this range.
            if merged.len() > limit + self.overlay.len() {
                break;
            }
        }
        let lower = (cf.to_string(), prefix.to_vec());
        for ((pending_cf, key), value) in self.overlay.range(lower..) {
            if pending_cf != cf || !key.starts_with(prefix) {
                break;
            }
            merged.insert(key.clone(), value.clone());
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .take(limit)
            .collect())
    }

    /// The first live key `k` with `from <= k` among the keys starting with
    /// `prefix`, and its value, as this batch would leave them. One seek:
    /// the database keys stepped over are only those this batch rewrote.
    pub fn first_at_or_after(
        &self,
        cf: &str,
        prefix: &[u8],
        from: &[u8],
    ) -> Result<Option<KeyValue>, StoreError> {
        let start = from.max(prefix);
        let handle = self.cf(cf)?;
        let mut stored = None;
        for item in self
            .db
            .iterator_cf(handle, IteratorMode::From(start, Direction::Forward))
        {
            let (key, value) = item?;
            self.count_read();
            if !key.starts_with(prefix) {
                break;
            }
            // A key the batch touched is answered by the overlay below.
            if !self.overlay.contains_key(&(cf.to_string(), key.to_vec())) {
                stored = Some((key.to_vec(), value.to_vec()));
                break;
            }
        }
        let mut pending = None;
        for ((pending_cf, key), value) in self.overlay.range((cf.to_string(), start.to_vec())..) {
            if pending_cf != cf || !key.starts_with(prefix) {
                break;
            }
            if let Some(value) = value {
                pending = Some((key.clone(), value.clone()));
                break;
            }
        }
        Ok(match (stored, pending) {
            (Some(s), Some(p)) => Some(if p.0 < s.0 { p } else { s }),
            (s, p) => s.or(p),
        })
    }

    /// The last live key `k` with `k <= upto` among the keys starting with
    /// `prefix`, and its value, as this batch would leave them.
    pub fn last_at_or_before(
        &self,
        cf: &str,
        prefix: &[u8],
        upto: &[u8],
    ) -> Result<Option<KeyValue>, StoreError> {
        if upto < prefix {
            return Ok(None);
        }
        let handle = self.cf(cf)?;
        let mut stored = None;
        for item in self
            .db
            .iterator_cf(handle, IteratorMode::From(upto, Direction::Reverse))
        {
            let (key, value) = item?;
            self.count_read();
            if !key.starts_with(prefix) {
                break;
            }
            if !self.overlay.contains_key(&(cf.to_string(), key.to_vec())) {
                stored = Some((key.to_vec(), value.to_vec()));
                break;
            }
        }
        let mut pending = None;
        let bounds = (cf.to_string(), prefix.to_vec())..=(cf.to_string(), upto.to_vec());
        for ((_, key), value) in self.overlay.range(bounds).rev() {
            if !key.starts_with(prefix) {
                // Keys between the prefix and `upto` that do not start with
                // the prefix sort after every key that does.
                continue;
            }
            if let Some(value) = value {
                pending = Some((key.clone(), value.clone()));
                break;
            }
        }
        Ok(match (stored, pending) {
            (Some(s), Some(p)) => Some(if p.0 > s.0 { p } else { s }),
            (s, p) => s.or(p),
        })
    }

    /// Calls `f` with every live key and value of `cf` as this batch would
    /// leave them, in no promised order. For one-off recomputations over the
    /// whole column family, never per entry.
    pub fn for_each(&self, cf: &str, mut f: impl FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        let handle = self.cf(cf)?;
        for item in self.db.iterator_cf(handle, IteratorMode::Start) {
            let (key, value) = item?;
            if !self.overlay.contains_key(&(cf.to_string(), key.to_vec())) {
                f(&key, &value);
            }
        }
        let lower = (cf.to_string(), Vec::new());
        for ((pending_cf, key), value) in self.overlay.range(lower..) {
            if pending_cf != cf {
                break;
            }
            if let Some(value) = value {
                f(key, value);
            }
        }
        Ok(())
    }

    /// Writes from the state machine itself (applied index, membership).
    pub(crate) fn batch_mut(&mut self) -> &mut WriteBatch {
        &mut self.batch
    }

    /// The batch of writes, for the state machine to commit (and for an
    /// application's tests, standing in for it).
    pub fn into_batch(self) -> WriteBatch {
        self.batch
    }

    pub(crate) fn db(&self) -> &'a DB {
        self.db
    }

    /// The application reaches only its own column families: a stray write
    /// into the log or the applied index would corrupt Raft's state.
    fn cf(&self, name: &str) -> Result<&'a rocksdb::ColumnFamily, StoreError> {
        if RESERVED_CFS.contains(&name) {
            return Err(StoreError::ReservedColumnFamily(name.to_string()));
        }
        cf_handle(self.db, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_cannot_reach_raft_column_families() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            open_db(dir.path(), &["apps", CF_RAFT_LOG]),
            Err(StoreError::ReservedColumnFamily(_))
        ));
        let db = open_db(dir.path(), &["apps"]).unwrap();
        let mut txn = Txn::new(&db);
        for cf in RESERVED_CFS {
            assert!(txn.put(cf, b"k", b"v").is_err(), "{cf}");
            assert!(txn.get(cf, b"k").is_err(), "{cf}");
        }
        txn.put("apps", b"a/1", b"one").unwrap();
        txn.put("apps", b"a/2", b"two").unwrap();
        txn.delete("apps", b"a/1").unwrap();
        // Reads see the transaction's own writes before they are committed.
        assert_eq!(txn.get("apps", b"a/2").unwrap(), Some(b"two".to_vec()));
        assert_eq!(txn.get("apps", b"a/1").unwrap(), None);
        assert_eq!(
            txn.scan_prefix("apps", b"a/", 10).unwrap(),
            vec![(b"a/2".to_vec(), b"two".to_vec())]
        );
        assert_eq!(
            db.get_cf(db.cf_handle("apps").unwrap(), b"a/2").unwrap(),
            None
        );
        let mut seen = Vec::new();
        txn.for_each("apps", |k, v| seen.push((k.to_vec(), v.to_vec())))
            .unwrap();
        assert_eq!(seen, vec![(b"a/2".to_vec(), b"two".to_vec())]);
        db.write(txn.into_batch()).unwrap();
        assert_eq!(
            db.get_cf(db.cf_handle("apps").unwrap(), b"a/2").unwrap(),
            Some(b"two".to_vec())
        );
    }

    #[test]
    fn seeks_within_a_prefix_see_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path(), &["apps"]).unwrap();
        let mut txn = Txn::new(&db);
        for key in [&b"a/2"[..], b"a/4", b"a/6", b"b/1", b"0"] {
            txn.put("apps", key, key).unwrap();
        }
        db.write(txn.into_batch()).unwrap();
        let mut txn = Txn::new(&db);
        let first = |txn: &Txn<'_>, from: &[u8]| {
            txn.first_at_or_after("apps", b"a/", from)
                .unwrap()
                .map(|(k, _)| k)
        };
        let last = |txn: &Txn<'_>, upto: &[u8]| {
            txn.last_at_or_before("apps", b"a/", upto)
                .unwrap()
                .map(|(k, _)| k)
        };
        assert_eq!(first(&txn, b"a/"), Some(b"a/2".to_vec()));
        assert_eq!(first(&txn, b""), Some(b"a/2".to_vec()));
        assert_eq!(first(&txn, b"a/3"), Some(b"a/4".to_vec()));
        assert_eq!(first(&txn, b"a/7"), None, "b/1 is outside the prefix");
        assert_eq!(last(&txn, b"a/5"), Some(b"a/4".to_vec()));
        assert_eq!(last(&txn, b"a/2"), Some(b"a/2".to_vec()));
        assert_eq!(last(&txn, b"a/1"), None, "0 is outside the prefix");
        assert_eq!(last(&txn, b"a/\xff"), Some(b"a/6".to_vec()));
        assert_eq!(last(&txn, b"0"), None);
        // The batch's own writes and deletes count, before they are written.
        txn.delete("apps", b"a/4").unwrap();
        txn.put("apps", b"a/3", b"new").unwrap();
        txn.put("apps", b"a/5", b"five").unwrap();
        txn.delete("apps", b"a/6").unwrap();
        txn.put("apps", b"a/2", b"two").unwrap();
        assert_eq!(
            txn.first_at_or_after("apps", b"a/", b"a/").unwrap(),
            Some((b"a/2".to_vec(), b"two".to_vec()))
        );
        assert_eq!(first(&txn, b"a/4"), Some(b"a/5".to_vec()));
        assert_eq!(first(&txn, b"a/6"), None);
        assert_eq!(last(&txn, b"a/4"), Some(b"a/3".to_vec()));
        assert_eq!(last(&txn, b"a/\xff"), Some(b"a/5".to_vec()));
        assert_eq!(
            txn.last_at_or_before("apps", b"a/", b"a/2").unwrap(),
            Some((b"a/2".to_vec(), b"two".to_vec()))
        );
        txn.delete("apps", b"a/2").unwrap();
        txn.delete("apps", b"a/3").unwrap();
        txn.delete("apps", b"a/5").unwrap();
        assert_eq!(first(&txn, b""), None);
        assert_eq!(last(&txn, b"a/\xff"), None);
        // Reads are counted: a seek reads a few keys, not the column family.
        let before = txn.keys_read();
        first(&txn, b"a/");
        assert!(
            txn.keys_read() - before <= 4,
            "{}",
            txn.keys_read() - before
        );
    }
}
