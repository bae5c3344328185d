//! A tiny key-value application and helpers shared by this crate's tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rocksdb::{IteratorMode, DB};

use crate::store::{ApplyHalt, StateMachineApp, Txn};

pub(crate) const CF_KV: &str = "kv";
pub(crate) const CF_COUNTERS: &str = "counters";

/// Commands (UTF-8): `put <key> <value>` replies with the previous value;
/// `incr <key>` replies with the new count; anything else replies `error`.
#[derive(Default)]
pub(crate) struct KvApp {
    pub committed_calls: AtomicU64,
    pub snapshots_installed: AtomicU64,
}

impl KvApp {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(KvApp::default())
    }

    pub(crate) fn installed(&self) -> u64 {
        self.snapshots_installed.load(Ordering::SeqCst)
    }
}

impl StateMachineApp for KvApp {
    fn column_families(&self) -> &'static [&'static str] {
        &[CF_KV, CF_COUNTERS]
    }

    fn apply(
        &self,
        txn: &mut Txn<'_>,
        log_index: u64,
        payload: &[u8],
    ) -> Result<Vec<u8>, ApplyHalt> {
        let text = String::from_utf8_lossy(payload);
        let parts: Vec<&str> = text.splitn(3, ' ').collect();
        let result = match parts.as_slice() {
            ["put", key, value] => txn.get(CF_KV, key.as_bytes()).and_then(|previous| {
                txn.put(CF_KV, key.as_bytes(), value.as_bytes())?;
                Ok(previous.unwrap_or_default())
            }),
            ["incr", key] => txn.get(CF_COUNTERS, key.as_bytes()).and_then(|current| {
                let current = current
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                let next = (current + 1).to_string();
                txn.put(CF_COUNTERS, key.as_bytes(), next.as_bytes())?;
                // Also record which log index last touched it, so replicas
                // can be compared byte for byte.
                txn.put(
                    CF_KV,
                    format!("last-incr/{key}").as_bytes(),
                    log_index.to_string().as_bytes(),
                )?;
                Ok(next.into_bytes())
            }),
            // Stands in for an entry of a format this build cannot read.
            ["halt"] => {
                return Err(ApplyHalt {
                    log_index,
                    reason: "unknown entry".into(),
                })
            }
            _ => Ok(b"error".to_vec()),
        };
        Ok(result.unwrap_or_else(|e| format!("error: {e}").into_bytes()))
    }

    fn committed(&self) {
        self.committed_calls.fetch_add(1, Ordering::SeqCst);
    }

    fn snapshot_installed(&self) {
        self.snapshots_installed.fetch_add(1, Ordering::SeqCst);
    }
}

/// Every key/value of the application's column families.
pub(crate) fn dump(db: &DB) -> BTreeMap<(String, Vec<u8>), Vec<u8>> {
    let mut out = BTreeMap::new();
    for name in [CF_KV, CF_COUNTERS] {
        let cf = db.cf_handle(name).unwrap();
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.unwrap();
            out.insert((name.to_string(), k.to_vec()), v.to_vec());
        }
    }
    out
}

pub(crate) fn get(db: &DB, cf: &str, key: &str) -> Option<String> {
    let cf = db.cf_handle(cf).unwrap();
    db.get_cf(cf, key.as_bytes())
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
}

/// Opens the log store and state machine over a fresh or existing
/// directory, as a node would.
pub(crate) async fn open_stores(
    dir: &std::path::Path,
    app: Arc<KvApp>,
) -> (
    crate::log_store::LogStore,
    crate::state_machine::StateMachine,
    Arc<DB>,
) {
    let cfs = app.column_families();
    let db = Arc::new(crate::store::open_db(&dir.join("db"), cfs).unwrap());
    let log = crate::log_store::LogStore::new(db.clone(), Default::default()).unwrap();
    let sm = crate::state_machine::StateMachine::open(db.clone(), app, dir.join("snapshots"))
        .await
        .unwrap();
    (log, sm, db)
}
