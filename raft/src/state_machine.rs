//! The replicated state machine: applies committed entries through the
//! [`StateMachineApp`], and builds, stores and installs snapshots.
//!
//! State lives in RocksDB: the application's column families plus `sm_meta`
//! (last applied log id, last membership), which is written in the same
//! batch as the application's writes. Applies are not synced; the log
//! store's next synced write covers them (one WAL), and after a crash the
//! state machine is never ahead of the durable log.
//!
//! Snapshots are files in `<data_dir>/snapshots` (format in
//! [`crate::snapshot`]); `raft_meta` points at the current one so it
//! survives a restart. Installing writes an "installing" marker first, so a
//! crash half-way through is finished from the file on the next open.
//!
//! Readers take their views through [`Readers`]: a snapshot install replaces
//! the application's state in several write batches (bounded memory), and
//! holds the write side of `Readers`' lock for all of them, so a view (a
//! RocksDB snapshot taken under the read side) shows the state either before
//! or after the install, never a mix.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use rocksdb::{Direction, IteratorMode, SnapshotWithThreadMode, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::snapshot::{self, SnapshotHeader, SnapshotReader, SnapshotWriter};
use crate::store::{
    blocking, cf_handle, StateMachineApp, StoreError, Txn, CF_RAFT_META, CF_SM_META, RESERVED_CFS,
};
use crate::types::{NodeId, NodeInfo, Reply, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, NodeInfo>;

const KEY_LAST_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
/// Present while a snapshot install is in progress; names the file.
const KEY_INSTALLING: &[u8] = b"installing";
/// In `raft_meta`: the current snapshot's meta and file name.
const KEY_CURRENT_SNAPSHOT: &[u8] = b"current_snapshot";

/// Writes of one install batch are flushed once they reach this size, so a
/// huge snapshot does not sit in memory as one batch. Readers still never see
/// a half-installed state: see [`Readers`].
const INSTALL_BATCH_BYTES: usize = 64 << 20;

/// How readers get consistent views of the committed state.
///
/// A view is one RocksDB snapshot, taken under the read side of `install`;
/// a snapshot install holds the write side while it replaces the state, so
/// no view can begin half-way through one. Applies need no lock: each is one
/// atomic write batch. The read side is held only for the instant a RocksDB
/// snapshot takes, so readers wait only while an install is loading (rare: a
/// follower that fell behind the leader's log).
pub(crate) struct Readers {
    db: Arc<DB>,
    install: RwLock<()>,
    /// Snapshot installs completed since this process opened the database.
    epoch: AtomicU64,
    /// Told the new epoch after each install, so watchers can reload.
    installed: tokio::sync::watch::Sender<u64>,
}

impl Readers {
    pub(crate) fn new(db: Arc<DB>) -> Self {
        Readers {
            db,
            install: RwLock::new(()),
            epoch: AtomicU64::new(0),
            installed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// A RocksDB snapshot that is not half of an install, and the install
    /// epoch it belongs to.
    fn snapshot(&self) -> (SnapshotWithThreadMode<'_, DB>, u64) {
        let _read = self.install.read().unwrap_or_else(|p| p.into_inner());
        (self.db.snapshot(), self.epoch.load(Ordering::Acquire))
    }

    /// A consistent view of the committed state as of now.
    pub(crate) fn view(&self) -> Result<ReadView<'_>, StoreError> {
        let (snapshot, install_epoch) = self.snapshot();
        let sm_cf = cf_handle(&self.db, CF_SM_META)?;
        let applied: Option<LogId<NodeId>> = match snapshot.get_cf(sm_cf, KEY_LAST_APPLIED)? {
            Some(bytes) => from_json(&bytes, "last applied log id")?,
            None => None,
        };
        Ok(ReadView {
            db: &self.db,
            snapshot,
            applied_index: applied.map_or(0, |l| l.index),
            install_epoch,
        })
    }

    /// Runs `load` (which replaces the state) with readers held off, then
    /// tells watchers a new state was installed.
    fn installing<T>(&self, load: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let result = {
            let _write = self.install.write().unwrap_or_else(|p| p.into_inner());
            let result = load();
            // Bumped even when the load failed half-way: what readers see
            // now may differ from what they saw before.
            self.epoch.fetch_add(1, Ordering::AcqRel);
            result
        };
        self.installed
            .send_replace(self.epoch.load(Ordering::Acquire));
        result
    }

    pub(crate) fn subscribe_installs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.installed.subscribe()
    }
}

/// One consistent view of the committed state: every read through it sees
/// the same RocksDB snapshot. Reaches only the application's column
/// families.
pub struct ReadView<'a> {
    db: &'a DB,
    snapshot: SnapshotWithThreadMode<'a, DB>,
    applied_index: u64,
    install_epoch: u64,
}

/// Key/value pairs read through a [`ReadView`].
pub type ViewItem = Result<(Box<[u8]>, Box<[u8]>), StoreError>;

impl<'a> ReadView<'a> {
    /// The log index of the last entry applied in this view (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Snapshot installs this process had seen when the view was taken: two
    /// views with different epochs may be from unrelated histories (a
    /// watcher reloads instead of continuing).
    pub fn install_epoch(&self) -> u64 {
        self.install_epoch
    }

    fn cf(&self, name: &str) -> Result<&'a rocksdb::ColumnFamily, StoreError> {
        if RESERVED_CFS.contains(&name) {
            return Err(StoreError::ReservedColumnFamily(name.to_string()));
        }
        cf_handle(self.db, name)
    }

    pub fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.snapshot.get_cf(self.cf(cf)?, key)?)
    }

    /// Keys from `start` on, in key order (`forward`) or from `start` back.
    pub fn iter_from(
        &self,
        cf: &str,
        start: &[u8],
        forward: bool,
    ) -> Result<impl Iterator<Item = ViewItem> + '_, StoreError> {
        let direction = if forward {
            Direction::Forward
        } else {
            Direction::Reverse
        };
        let handle = self.cf(cf)?;
        Ok(self
            .snapshot
            .iterator_cf(handle, IteratorMode::From(start, direction))
            .map(|item| item.map_err(StoreError::from)))
    }

    /// Keys from the first (`forward`) or the last.
    pub fn iter_all(
        &self,
        cf: &str,
        forward: bool,
    ) -> Result<impl Iterator<Item = ViewItem> + '_, StoreError> {
        let mode = if forward {
            IteratorMode::Start
        } else {
            IteratorMode::End
        };
        let handle = self.cf(cf)?;
        Ok(self
            .snapshot
            .iterator_cf(handle, mode)
            .map(|item| item.map_err(StoreError::from)))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CurrentSnapshot {
    meta: SnapshotMeta<NodeId, NodeInfo>,
    /// File name inside the snapshot directory.
    file: String,
}

/// What the state machine, its snapshot builders and install share.
struct Shared {
    db: Arc<DB>,
    app: Arc<dyn StateMachineApp>,
    dir: PathBuf,
    readers: Arc<Readers>,
    /// [`INSTALL_BATCH_BYTES`]; smaller in tests, to make installs span
    /// several batches.
    install_batch_bytes: usize,
    /// Serializes updates of the current-snapshot pointer and the removal of
    /// old snapshot files between the builder task and install. Only held on
    /// blocking threads.
    pointer_lock: Mutex<()>,
    /// Makes snapshot ids and file names unique within this process.
    seq: AtomicU64,
}

/// The state machine handed to openraft.
pub(crate) struct StateMachine {
    shared: Arc<Shared>,
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
}

fn sm_err(verb: ErrorVerb, e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        verb,
        AnyError::error(e.to_string()),
    )
    .into()
}

fn snap_err(
    meta: Option<&SnapshotMeta<NodeId, NodeInfo>>,
    verb: ErrorVerb,
    e: impl ToString,
) -> StorageError<NodeId> {
    let subject = ErrorSubject::Snapshot(meta.map(|m| m.signature()));
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        what: "state machine metadata",
        detail: e.to_string(),
    })
}

fn from_json<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

fn now_millis() -> u128 {
    // Only used to make snapshot ids unique across restarts, never in apply.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

impl Shared {
    fn read_applied(&self) -> Result<(Option<LogId<NodeId>>, Membership), StoreError> {
        let cf = cf_handle(&self.db, CF_SM_META)?;
        let last_applied = match self.db.get_cf(cf, KEY_LAST_APPLIED)? {
            Some(bytes) => from_json(&bytes, "last applied log id")?,
            None => None,
        };
        let membership = match self.db.get_cf(cf, KEY_MEMBERSHIP)? {
            Some(bytes) => from_json(&bytes, "last membership")?,
            None => Membership::default(),
        };
        Ok((last_applied, membership))
    }

    fn current(&self) -> Result<Option<CurrentSnapshot>, StoreError> {
        let cf = cf_handle(&self.db, CF_RAFT_META)?;
        match self.db.get_cf(cf, KEY_CURRENT_SNAPSHOT)? {
            Some(bytes) => Ok(Some(from_json(&bytes, "current snapshot pointer")?)),
            None => Ok(None),
        }
    }

    /// A fresh, unique file stem for a snapshot covering `last`.
    fn file_stem(&self, last: Option<&LogId<NodeId>>) -> String {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let index = last.map_or(0, |l| l.index);
        format!("snap-{index:020}-{}-{seq}", now_millis())
    }

    /// Removes snapshot files other than `keep` (a file name). Files still
    /// being written (`.tmp`) are removed only when `include_partial`, i.e.
    /// at open, when no build or install can be running.
    fn remove_other_files(
        &self,
        keep: Option<&str>,
        include_partial: bool,
    ) -> Result<(), StoreError> {
        for dirent in fs::read_dir(&self.dir)? {
            let dirent = dirent?;
            let name = dirent.file_name();
            let Some(name) = name.to_str() else { continue };
            if keep == Some(name) || !(include_partial || name.ends_with(".snap")) {
                continue;
            }
            snapshot::remove_if_exists(&dirent.path())?;
        }
        Ok(())
    }

    /// Builds a snapshot from a consistent RocksDB snapshot and makes it
    /// current unless a newer one already is. Blocking.
    fn build(&self) -> Result<(SnapshotMeta<NodeId, NodeInfo>, fs::File), StoreError> {
        // Not during an install: a half-installed state would be sent on as
        // a snapshot under the old applied index.
        let (view, _) = self.readers.snapshot();
        let sm_cf = cf_handle(&self.db, CF_SM_META)?;
        // Read the applied position from the same view as the data, so the
        // snapshot's meta matches its contents exactly.
        let last_applied: Option<LogId<NodeId>> = match view.get_cf(sm_cf, KEY_LAST_APPLIED)? {
            Some(bytes) => from_json(&bytes, "last applied log id")?,
            None => None,
        };
        let membership: Membership = match view.get_cf(sm_cf, KEY_MEMBERSHIP)? {
            Some(bytes) => from_json(&bytes, "last membership")?,
            None => Membership::default(),
        };
        let stem = self.file_stem(last_applied.as_ref());
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id: stem.clone(),
        };
        let cfs = self.app.column_families();
        let header = SnapshotHeader {
            meta: meta.clone(),
            cfs: cfs.iter().map(|s| s.to_string()).collect(),
        };
        let tmp = self.dir.join(format!("{stem}.tmp"));
        let mut writer = SnapshotWriter::create(&tmp, &header)?;
        for (cf_index, name) in cfs.iter().enumerate() {
            let cf = cf_handle(&self.db, name)?;
            for item in view.iterator_cf(cf, IteratorMode::Start) {
                let (key, value) = item?;
                writer.record(cf_index, &key, &value)?;
            }
        }
        let records = writer.finish()?;
        drop(view);
        // Opened before it can be renamed or removed: the caller streams
        // from this handle whatever happens to the name.
        let handle = fs::File::open(&tmp)?;
        tracing::info!(snapshot = %stem, records, "built snapshot");

        let _guard = self.pointer_lock.lock().unwrap_or_else(|p| p.into_inner());
        let newer_exists = self
            .current()?
            .is_some_and(|c| c.meta.last_log_id > meta.last_log_id);
        if newer_exists {
            // An install overtook this build; the handle stays usable.
            snapshot::remove_if_exists(&tmp)?;
        } else {
            let file = format!("{stem}.snap");
            fs::rename(&tmp, self.dir.join(&file))?;
            snapshot::sync_dir(&self.dir)?;
            self.set_current(&CurrentSnapshot {
                meta: meta.clone(),
                file: file.clone(),
            })?;
            self.remove_other_files(Some(&file), false)?;
        }
        Ok((meta, handle))
    }

    fn set_current(&self, current: &CurrentSnapshot) -> Result<(), StoreError> {
        let cf = cf_handle(&self.db, CF_RAFT_META)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, KEY_CURRENT_SNAPSHOT, json(current)?);
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// Saves a received snapshot, makes it current and loads it into the
    /// database. Blocking.
    fn install(
        &self,
        mut received: fs::File,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
    ) -> Result<(), StoreError> {
        let stem = self.file_stem(meta.last_log_id.as_ref());
        let tmp = self.dir.join(format!("{stem}.tmp"));
        let checked = snapshot::copy_to(&mut received, &tmp).and_then(|_| snapshot::verify(&tmp));
        drop(received);
        let header = match checked {
            Ok(header) => header,
            Err(e) => {
                // A bad transfer leaves nothing behind; the leader retries.
                snapshot::remove_if_exists(&tmp)?;
                return Err(e);
            }
        };
        if header.meta.snapshot_id != meta.snapshot_id
            || header.meta.last_log_id != meta.last_log_id
        {
            snapshot::remove_if_exists(&tmp)?;
            return Err(StoreError::Corrupt {
                what: "snapshot file",
                detail: format!(
                    "file is snapshot {} up to {:?}, expected {} up to {:?}",
                    header.meta.snapshot_id,
                    header.meta.last_log_id,
                    meta.snapshot_id,
                    meta.last_log_id
                ),
            });
        }
        let file = format!("{stem}.snap");
        let reader = {
            let _guard = self.pointer_lock.lock().unwrap_or_else(|p| p.into_inner());
            let path = self.dir.join(&file);
            fs::rename(&tmp, &path)?;
            snapshot::sync_dir(&self.dir)?;
            let reader = SnapshotReader::open(&path)?;
            // Pointer and marker go in one synced batch: from here on a
            // crash finishes this install on the next open.
            let mut batch = WriteBatch::default();
            let current = CurrentSnapshot {
                meta: meta.clone(),
                file: file.clone(),
            };
            batch.put_cf(
                cf_handle(&self.db, CF_RAFT_META)?,
                KEY_CURRENT_SNAPSHOT,
                json(&current)?,
            );
            batch.put_cf(
                cf_handle(&self.db, CF_SM_META)?,
                KEY_INSTALLING,
                file.as_bytes(),
            );
            self.db.write_opt(batch, &synced())?;
            self.remove_other_files(Some(&file), false)?;
            reader
        };
        self.readers.installing(|| self.load(reader))
    }

    /// Replaces the application's column families and `sm_meta` with the
    /// snapshot's contents and clears the installing marker. Blocking.
    fn load(&self, mut reader: SnapshotReader) -> Result<(), StoreError> {
        let header = reader.header.clone();
        let local_cfs = self.app.column_families();
        // Map the file's column family positions to local handles; an
        // unknown name means the sender runs a different schema.
        let mut handles = Vec::with_capacity(header.cfs.len());
        for name in &header.cfs {
            if !local_cfs.contains(&name.as_str()) {
                return Err(StoreError::UnknownColumnFamily(name.clone()));
            }
            handles.push(cf_handle(&self.db, name)?);
        }

        let mut batch = WriteBatch::default();
        for name in local_cfs {
            let cf = cf_handle(&self.db, name)?;
            let first = self
                .db
                .iterator_cf(cf, IteratorMode::Start)
                .next()
                .transpose()?;
            let last = self
                .db
                .iterator_cf(cf, IteratorMode::End)
                .next()
                .transpose()?;
            if let (Some((first, _)), Some((last, _))) = (first, last) {
                // delete_range excludes its end key.
                batch.delete_range_cf(cf, &first, &last);
                batch.delete_cf(cf, &last);
            }
        }
        while let Some(record) = reader.next_record()? {
            let cf = handles
                .get(record.cf_index)
                .ok_or_else(|| StoreError::Corrupt {
                    what: "snapshot file",
                    detail: format!("column family index {}", record.cf_index),
                })?;
            batch.put_cf(*cf, &record.key, &record.value);
            if batch.size_in_bytes() >= self.install_batch_bytes {
                self.db.write(std::mem::take(&mut batch))?;
            }
        }
        let sm_cf = cf_handle(&self.db, CF_SM_META)?;
        batch.put_cf(sm_cf, KEY_LAST_APPLIED, json(&header.meta.last_log_id)?);
        batch.put_cf(sm_cf, KEY_MEMBERSHIP, json(&header.meta.last_membership)?);
        batch.delete_cf(sm_cf, KEY_INSTALLING);
        // Not synced: until this batch is durable the marker is, and the
        // install is redone on open.
        self.db.write(batch)?;
        Ok(())
    }
}

impl StateMachine {
    /// Opens the state machine over `db`, keeping snapshot files in `dir`,
    /// and finishes an install that a crash interrupted.
    pub(crate) async fn open(
        db: Arc<DB>,
        app: Arc<dyn StateMachineApp>,
        dir: PathBuf,
    ) -> Result<Self, StoreError> {
        let shared = Arc::new(Shared {
            readers: Arc::new(Readers::new(db.clone())),
            install_batch_bytes: INSTALL_BATCH_BYTES,
            db,
            app,
            dir,
            pointer_lock: Mutex::new(()),
            seq: AtomicU64::new(0),
        });
        let opened = shared.clone();
        let (last_applied, membership, reinstalled) = blocking(move || {
            fs::create_dir_all(&opened.dir)?;
            let current = opened.current()?;
            // Leftovers of interrupted builds or receives.
            opened.remove_other_files(current.as_ref().map(|c| c.file.as_str()), true)?;
            let sm_cf = cf_handle(&opened.db, CF_SM_META)?;
            let mut reinstalled = false;
            if let Some(file) = opened.db.get_cf(sm_cf, KEY_INSTALLING)? {
                let file = String::from_utf8_lossy(&file).into_owned();
                tracing::warn!(%file, "finishing a snapshot install interrupted by a crash");
                let path = opened.dir.join(&file);
                snapshot::verify(&path)?;
                let reader = SnapshotReader::open(&path)?;
                opened.readers.installing(|| opened.load(reader))?;
                reinstalled = true;
            }
            let (last_applied, membership) = opened.read_applied()?;
            Ok((last_applied, membership, reinstalled))
        })
        .await?;
        if reinstalled {
            shared.app.snapshot_installed();
        }
        Ok(StateMachine {
            shared,
            last_applied,
            membership,
        })
    }
}

impl StateMachine {
    /// How readers take consistent views of this state machine's state.
    pub(crate) fn readers(&self) -> Arc<Readers> {
        self.shared.readers.clone()
    }
}

/// Builds snapshots on openraft's builder task.
pub(crate) struct SnapshotBuilder {
    shared: Arc<Shared>,
}

async fn open_snapshot(
    meta: SnapshotMeta<NodeId, NodeInfo>,
    path: &Path,
) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| snap_err(Some(&meta), ErrorVerb::Read, e))?;
    Ok(Snapshot {
        meta,
        snapshot: Box::new(file),
    })
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let shared = self.shared.clone();
        let (meta, file) = blocking(move || shared.build())
            .await
            .map_err(|e| snap_err(None, ErrorVerb::Write, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Reply>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let shared = self.shared.clone();
        let mut membership = self.membership.clone();
        let (replies, last_applied, membership) = blocking(move || {
            let db: &DB = &shared.db;
            let mut txn = Txn::new(db);
            let mut replies = Vec::with_capacity(entries.len());
            let mut last_applied = None;
            let mut membership_changed = false;
            for entry in entries {
                last_applied = Some(entry.log_id);
                let reply = match entry.payload {
                    EntryPayload::Blank => Vec::new(),
                    EntryPayload::Normal(payload) => {
                        match shared.app.apply(&mut txn, entry.log_id.index, &payload.0) {
                            Ok(reply) => reply,
                            Err(halt) => {
                                // Nothing of this batch is written: the node
                                // stays at the entry before, and resumes from
                                // it once it runs a build that can read it.
                                tracing::error!(
                                    log_index = halt.log_index,
                                    reason = %halt.reason,
                                    "state machine halted: this entry cannot be applied by this build"
                                );
                                return Err(StoreError::Halted(halt));
                            }
                        }
                    }
                    EntryPayload::Membership(m) => {
                        membership = StoredMembership::new(Some(entry.log_id), m);
                        membership_changed = true;
                        Vec::new()
                    }
                };
                replies.push(Reply(reply));
            }
            let sm_cf = cf_handle(db, CF_SM_META)?;
            txn.batch_mut()
                .put_cf(sm_cf, KEY_LAST_APPLIED, json(&last_applied)?);
            if membership_changed {
                txn.batch_mut()
                    .put_cf(sm_cf, KEY_MEMBERSHIP, json(&membership)?);
            }
            // One write for the whole batch of entries, unsynced (see the
            // module doc).
            let db = txn.db();
            db.write(txn.into_batch())?;
            Ok((replies, last_applied, membership))
        })
        .await
        .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        self.last_applied = last_applied;
        self.membership = membership;
        self.shared.app.committed();
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<tokio::fs::File>> {
        let seq = self.shared.seq.fetch_add(1, Ordering::Relaxed);
        let path = self.shared.dir.join(format!("incoming-{seq}.part"));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| snap_err(None, ErrorVerb::Write, e))?;
        // Unlinked at once: the handle keeps the data, and an abandoned or
        // crashed transfer leaves nothing behind. Install copies it out.
        tokio::fs::remove_file(&path)
            .await
            .map_err(|e| snap_err(None, ErrorVerb::Write, e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<tokio::fs::File>,
    ) -> StorageResult<()> {
        tracing::info!(snapshot = %meta.snapshot_id, last = ?meta.last_log_id, "installing snapshot");
        let received = snapshot.into_std().await;
        let shared = self.shared.clone();
        let owned_meta = meta.clone();
        blocking(move || shared.install(received, &owned_meta))
            .await
            .map_err(|e| snap_err(Some(meta), ErrorVerb::Write, e))?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.shared.app.snapshot_installed();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let shared = self.shared.clone();
        let current = blocking(move || shared.current())
            .await
            .map_err(|e| snap_err(None, ErrorVerb::Read, e))?;
        let Some(current) = current else {
            return Ok(None);
        };
        let path = self.shared.dir.join(&current.file);
        match tokio::fs::metadata(&path).await {
            Ok(_) => open_snapshot(current.meta, &path).await.map(Some),
            Err(e) => {
                // The state machine can always build a new one; losing the
                // file costs time, not data.
                tracing::warn!(file = %path.display(), error = %e, "current snapshot file is missing");
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::testing::log_id;
    use openraft::Membership;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::test_support::{dump, get, open_stores, KvApp, CF_COUNTERS, CF_KV};
    use crate::types::Payload;

    fn normal(index: u64, cmd: &str) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Normal(Payload(cmd.as_bytes().to_vec())),
        }
    }

    fn membership(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1, 2])], None)),
        }
    }

    fn texts(replies: &[Reply]) -> Vec<String> {
        replies
            .iter()
            .map(|r| String::from_utf8(r.0.clone()).unwrap())
            .collect()
    }

    /// Streams a snapshot into a receiving handle the way openraft's chunked
    /// transport does, then installs it.
    async fn transfer(
        snapshot: Snapshot<TypeConfig>,
        target: &mut StateMachine,
        corrupt_at: Option<usize>,
    ) -> StorageResult<()> {
        let mut bytes = Vec::new();
        let mut source = snapshot.snapshot;
        source.read_to_end(&mut bytes).await.unwrap();
        if let Some(at) = corrupt_at {
            bytes[at] ^= 0x55;
        }
        let mut receiving = target.begin_receiving_snapshot().await?;
        for chunk in bytes.chunks(100) {
            receiving.write_all(chunk).await.unwrap();
        }
        receiving.shutdown().await.unwrap();
        target.install_snapshot(&snapshot.meta, receiving).await
    }

    #[tokio::test]
    async fn applies_entries_and_persists_applied_state() {
        let dir = tempfile::tempdir().unwrap();
        let app = KvApp::new();
        {
            let (_log, mut sm, db) = open_stores(dir.path(), app.clone()).await;
            let replies = sm
                .apply(vec![
                    membership(1),
                    normal(2, "put x 1"),
                    normal(3, "put x 2"),
                    normal(4, "incr c"),
                    Entry {
                        log_id: log_id(1, 1, 5),
                        payload: EntryPayload::Blank,
                    },
                    normal(6, "incr c"),
                    normal(7, "bogus"),
                ])
                .await
                .unwrap();
            assert_eq!(texts(&replies), ["", "", "1", "1", "", "2", "error"]);
            assert_eq!(get(&db, CF_KV, "x").as_deref(), Some("2"));
            assert_eq!(get(&db, CF_COUNTERS, "c").as_deref(), Some("2"));
            // Entries of one call share a transaction: reads see earlier
            // writes of the same batch.
            assert_eq!(get(&db, CF_KV, "last-incr/c").as_deref(), Some("6"));
            assert_eq!(app.committed_calls.load(Ordering::SeqCst), 1);
            let (applied, members) = sm.applied_state().await.unwrap();
            assert_eq!(applied, Some(log_id(1, 1, 7)));
            assert_eq!(members.log_id(), &Some(log_id(1, 1, 1)));
        }
        let (_log, mut sm, _db) = open_stores(dir.path(), KvApp::new()).await;
        let (applied, members) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 1, 7)));
        assert_eq!(members.log_id(), &Some(log_id(1, 1, 1)));
        assert_eq!(
            members.membership().voter_ids().collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[tokio::test]
    async fn an_entry_the_app_cannot_apply_halts_and_writes_nothing_of_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm, db) = open_stores(dir.path(), KvApp::new()).await;
        sm.apply(vec![normal(1, "put x 1")]).await.unwrap();
        let error = sm
            .apply(vec![
                normal(2, "put x 2"),
                normal(3, "halt"),
                normal(4, "put y 1"),
            ])
            .await
            .unwrap_err();
        assert!(error.to_string().contains("log index 3"), "{error}");
        // Neither the entry before the halt in the same batch nor the applied
        // index moved: the node resumes from entry 2.
        assert_eq!(get(&db, CF_KV, "x").as_deref(), Some("1"));
        assert_eq!(get(&db, CF_KV, "y"), None);
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 1, 1)));
    }

    #[tokio::test]
    async fn snapshot_installs_the_same_state_and_survives_restart() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (_log_a, mut sm_a, db_a) = open_stores(dir_a.path(), KvApp::new()).await;
        let mut entries = vec![membership(1)];
        for i in 2..300 {
            let cmd = if i % 3 == 0 {
                format!("incr n{}", i % 11)
            } else {
                format!("put key{i} {}", "v".repeat(i as usize))
            };
            entries.push(normal(i, &cmd));
        }
        sm_a.apply(entries).await.unwrap();
        let snapshot = sm_a
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1, 299)));
        let current = sm_a.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snapshot.meta);

        // The target has state of its own that the snapshot must replace.
        let app_b = KvApp::new();
        let (_log_b, mut sm_b, db_b) = open_stores(dir_b.path(), app_b.clone()).await;
        // Stale keys first, last and in between in key order, in both
        // column families.
        sm_b.apply(vec![
            normal(1, "put a-stale yes"),
            normal(2, "put key5 old"),
            normal(3, "put m-stale yes"),
            normal(4, "put stale yes"),
            normal(5, "incr zz-stale"),
            normal(6, "incr a-stale"),
            normal(7, "incr n5"),
        ])
        .await
        .unwrap();
        transfer(snapshot, &mut sm_b, None).await.unwrap();
        assert_eq!(app_b.installed(), 1);
        assert_eq!(get(&db_b, CF_KV, "stale"), None);
        assert_eq!(dump(&db_b), dump(&db_a));
        assert_eq!(
            sm_b.applied_state().await.unwrap(),
            sm_a.applied_state().await.unwrap()
        );
        let meta = sm_b.get_current_snapshot().await.unwrap().unwrap().meta;
        assert_eq!(meta, current.meta);

        // Applying continues on top of the installed state.
        sm_b.apply(vec![normal(300, "incr n0")]).await.unwrap();
        drop((sm_b, db_b, _log_b));

        // After a restart the snapshot is still current and readable.
        let (_log_b, mut sm_b, db_b) = open_stores(dir_b.path(), KvApp::new()).await;
        let again = sm_b.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(again.meta, current.meta);
        let mut bytes = Vec::new();
        let mut data = again.snapshot;
        data.read_to_end(&mut bytes).await.unwrap();
        assert!(bytes.starts_with(b"CRDLSNP1"));
        assert_eq!(
            sm_b.applied_state().await.unwrap().0,
            Some(log_id(1, 1, 300))
        );
        assert_ne!(get(&db_b, CF_COUNTERS, "n0"), get(&db_a, CF_COUNTERS, "n0"));
        // Only the current snapshot file is kept.
        assert_eq!(
            fs::read_dir(dir_b.path().join("snapshots"))
                .unwrap()
                .count(),
            1
        );
    }

    #[tokio::test]
    async fn corrupt_snapshot_is_rejected_and_changes_nothing() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (_log_a, mut sm_a, _db_a) = open_stores(dir_a.path(), KvApp::new()).await;
        sm_a.apply((1..50).map(|i| normal(i, &format!("put k{i} v{i}"))))
            .await
            .unwrap();
        let app_b = KvApp::new();
        let (_log_b, mut sm_b, db_b) = open_stores(dir_b.path(), app_b.clone()).await;
        sm_b.apply(vec![normal(1, "put mine 1")]).await.unwrap();
        let before = dump(&db_b);
        let applied_before = sm_b.applied_state().await.unwrap();

        let snapshot = sm_a
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert!(transfer(snapshot, &mut sm_b, Some(400)).await.is_err());
        assert_eq!(dump(&db_b), before);
        assert_eq!(sm_b.applied_state().await.unwrap(), applied_before);
        assert_eq!(app_b.installed(), 0);
        assert!(sm_b.get_current_snapshot().await.unwrap().is_none());
        assert_eq!(
            fs::read_dir(dir_b.path().join("snapshots"))
                .unwrap()
                .count(),
            0
        );
    }

    /// Every value a view shows in the kv column family, by generation
    /// (the value's prefix), and how many keys it has.
    fn generations(view: &ReadView<'_>) -> (BTreeSet<String>, usize) {
        let mut seen = BTreeSet::new();
        let mut keys = 0;
        for item in view.iter_all(CF_KV, true).unwrap() {
            let (_, value) = item.unwrap();
            let text = String::from_utf8(value.to_vec()).unwrap();
            seen.insert(text.split('-').next().unwrap_or_default().to_string());
            keys += 1;
        }
        (seen, keys)
    }

    #[tokio::test]
    async fn readers_see_the_state_before_or_after_an_install_never_a_mix() {
        const KEYS: u64 = 2_000;
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let pad = "x".repeat(100);
        let (_log_a, mut sm_a, _db_a) = open_stores(dir_a.path(), KvApp::new()).await;
        sm_a.apply((1..=KEYS).map(|i| normal(i, &format!("put k{i:05} new-{pad}"))))
            .await
            .unwrap();
        let snapshot = sm_a
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        // The target holds an older state of the same keys, plus keys the
        // snapshot does not have: a mix would show both generations, or the
        // wrong number of keys.
        let (_log_b, mut sm_b, _db_b) = open_stores(dir_b.path(), KvApp::new()).await;
        sm_b.apply((1..=KEYS + 50).map(|i| normal(i, &format!("put k{i:05} old-{pad}"))))
            .await
            .unwrap();
        // Many small batches, so an install takes many writes.
        Arc::get_mut(&mut sm_b.shared).unwrap().install_batch_bytes = 4 << 10;
        let readers = sm_b.readers();
        let mut installs = readers.subscribe_installs();
        let epoch_before = readers.view().unwrap().install_epoch();

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let started = Arc::new(std::sync::Barrier::new(2));
        let reader = {
            let (readers, stop, started) = (readers.clone(), stop.clone(), started.clone());
            std::thread::spawn(move || {
                started.wait();
                let mut views = Vec::new();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                // Bounded in count and time; stops once the install is done.
                for _ in 0..100_000 {
                    if stop.load(Ordering::SeqCst) || std::time::Instant::now() > deadline {
                        break;
                    }
                    let view = readers.view().unwrap();
                    let (seen, keys) = generations(&view);
                    views.push((seen, keys, view.applied_index(), view.install_epoch()));
                }
                views
            })
        };
        started.wait();
        transfer(snapshot, &mut sm_b, None).await.unwrap();
        stop.store(true, Ordering::SeqCst);
        let views = reader.join().unwrap();

        let old = (BTreeSet::from(["old".to_string()]), (KEYS + 50) as usize);
        let new = (BTreeSet::from(["new".to_string()]), KEYS as usize);
        assert!(!views.is_empty());
        for (seen, keys, applied, epoch) in &views {
            let state = (seen.clone(), *keys);
            assert!(
                state == old || state == new,
                "a view saw {seen:?} over {keys} keys"
            );
            // The applied index and the install epoch come from the same
            // view as the data.
            if state == old {
                assert_eq!((*applied, *epoch), (KEYS + 50, epoch_before));
            } else {
                assert_eq!((*applied, *epoch), (KEYS, epoch_before + 1));
            }
        }
        let view = readers.view().unwrap();
        assert_eq!(generations(&view), new);
        assert!(installs.has_changed().unwrap());
        assert_eq!(*installs.borrow_and_update(), epoch_before + 1);
    }

    #[tokio::test]
    async fn install_interrupted_by_a_crash_is_finished_on_open() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (_log_a, mut sm_a, db_a) = open_stores(dir_a.path(), KvApp::new()).await;
        sm_a.apply((1..40).map(|i| normal(i, &format!("put k{i} v{i}"))))
            .await
            .unwrap();
        let snapshot = sm_a
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        {
            let (_log_b, mut sm_b, db_b) = open_stores(dir_b.path(), KvApp::new()).await;
            transfer(snapshot, &mut sm_b, None).await.unwrap();
            // Recreate what a crash half-way through loading leaves: the
            // marker set, some records missing, the old applied index.
            let current = sm_b.shared.current().unwrap().unwrap();
            let sm_cf = db_b.cf_handle(CF_SM_META).unwrap();
            let kv = db_b.cf_handle(CF_KV).unwrap();
            db_b.put_cf(sm_cf, KEY_INSTALLING, current.file.as_bytes())
                .unwrap();
            db_b.put_cf(
                sm_cf,
                KEY_LAST_APPLIED,
                json(&Some(log_id(1, 1, 3))).unwrap(),
            )
            .unwrap();
            db_b.delete_cf(kv, b"k7").unwrap();
            db_b.put_cf(kv, b"leftover", b"x").unwrap();
        }
        let app = KvApp::new();
        let (_log_b, mut sm_b, db_b) = open_stores(dir_b.path(), app.clone()).await;
        assert_eq!(app.installed(), 1);
        assert_eq!(dump(&db_b), dump(&db_a));
        assert_eq!(
            sm_b.applied_state().await.unwrap().0,
            Some(log_id(1, 1, 39))
        );
        let sm_cf = db_b.cf_handle(CF_SM_META).unwrap();
        assert_eq!(db_b.get_cf(sm_cf, KEY_INSTALLING).unwrap(), None);
    }
}
