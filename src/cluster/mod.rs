//! Cluster membership: who the members are and how one becomes one.
//!
//! This module owns the node's identity on disk (`node.json`), what a
//! founding node tells scripts (`info`: `cluster.json`), join tokens
//! and the node registry (`state`), the joining side of the join protocol
//! (`join`), the admission of peer certificates, and the leader's reconciler
//! that turns the registry into Raft membership: registered nodes are added
//! as learners, caught-up learners are promoted while there are fewer than
//! [`MAX_VOTERS`] voters, removed nodes leave the membership.
//!
//! The cluster CA's key is replicated state (a `meta` record), so every
//! voter can sign a joining node's certificate and losing any one node loses
//! no ability to admit new ones. The API never serves it; only nodes, which
//! hold the replicated state anyway, can read it.

pub mod info;
pub mod join;
pub mod state;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cradle_raft::{NodeInfo, PeerAdmission, RaftRole};
use serde::{Deserialize, Serialize};

use crate::store::Store;

/// Beyond this many voters, new nodes stay learners (they still serve
/// everything): more voters make every commit slower and add no safety a
/// provisioning cluster needs.
pub const MAX_VOTERS: usize = 5;
/// How often the leader compares the registry with the Raft membership.
const RECONCILE_EVERY: Duration = Duration::from_millis(300);
/// A learner this close to the leader's log is caught up.
const CAUGHT_UP_LAG: u64 = 64;

pub const IDENTITY_FILE: &str = "node.json";

/// What a node knows of itself before it has any replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: u64,
    /// The node that initialized the cluster (and so proposes its bootstrap).
    pub founder: bool,
}

impl Identity {
    pub fn load(data_dir: &Path) -> std::io::Result<Option<Identity>> {
        let path = data_dir.join(IDENTITY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let path = data_dir.join(IDENTITY_FILE);
        let tmp = data_dir.join(format!("{IDENTITY_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, path)
    }
}

/// Admits peers whose certificate names a node that has not been removed.
/// Until the store exists (the first moments of start-up) every certificate
/// the TLS handshake accepted (signed by the cluster CA) is admitted.
pub fn peer_admission(store: Arc<OnceLock<Store>>) -> PeerAdmission {
    // Certificates are parsed once: every heartbeat and append is checked.
    let names: Mutex<HashMap<Vec<u8>, Option<u64>>> = Mutex::default();
    PeerAdmission(Arc::new(move |der: &[u8]| {
        let Some(store) = store.get() else {
            return true;
        };
        let id = match names.lock() {
            Ok(mut names) => {
                if names.len() >= ADMISSION_CACHE {
                    names.clear();
                }
                *names.entry(der.to_vec()).or_insert_with(|| node_id_of(der))
            }
            Err(_) => node_id_of(der),
        };
        let Some(id) = id else {
            return false;
        };
        match store.cluster_node(id) {
            Ok(Some(node)) => !node.removed,
            // Not yet known here: a node that joined after this replica's
            // last applied entry. The CA signed it; admit it.
            Ok(None) => true,
            Err(_) => false,
        }
    }))
}

fn node_id_of(der: &[u8]) -> Option<u64> {
    crate::tls::common_name(der)
        .as_deref()
        .and_then(state::node_id_from_common_name)
}

/// Distinct peer certificates remembered by admission (members are few).
const ADMISSION_CACHE: usize = 256;

/// Runs on every node; acts only while this node leads.
/// How often a node tries to register its log format until it sticks.
const REGISTER_FORMAT_EVERY: Duration = Duration::from_secs(1);

/// Registers the newest log entry format this build reads in the node's
/// registry record, when the record says otherwise (the node was upgraded or
/// downgraded, or joined before formats were registered). Until it is, a
/// proposer writes entries for the format the record names. Returns once the
/// record is right, the node is removed, or on stop.
pub async fn register_log_format(
    store: Store,
    node_id: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let newest = crate::store::frames::NEWEST_FORMAT;
    loop {
        match store.cluster_node(node_id) {
            Ok(Some(node)) if node.removed || node.log_format == newest => return,
            Ok(Some(node)) => {
                let command = crate::store::Command::SetNodeFormat {
                    id: node_id,
                    log_format: newest,
                };
                match store.submit(command).await {
                    Ok(_) => {
                        tracing::info!(
                            from = node.log_format,
                            to = newest,
                            "registered log format"
                        );
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "registering the log format"),
                }
            }
            // Not in this replica's registry yet: its join has not been
            // applied here.
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "reading the node registry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(REGISTER_FORMAT_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

pub async fn reconcile_forever(store: Store, mut stop: tokio::sync::watch::Receiver<bool>) {
    let busy: Arc<Mutex<HashSet<u64>>> = Arc::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = reconcile_once(&store, &busy).await {
            tracing::debug!(error = %e, "membership reconcile");
        }
    }
}

async fn reconcile_once(store: &Store, busy: &Arc<Mutex<HashSet<u64>>>) -> anyhow::Result<()> {
    let raft = store.raft().clone();
    let status = raft.status();
    if status.state != RaftRole::Leader {
        return Ok(());
    }
    let nodes = store.cluster_nodes()?;
    let members: BTreeSet<u64> = status.members.iter().map(|m| m.id).collect();
    let voters: BTreeSet<u64> = status
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    let removed: BTreeSet<u64> = nodes.iter().filter(|n| n.removed).map(|n| n.id).collect();

    // Removed voters leave first: a smaller quorum is never less safe here.
    let remaining: BTreeSet<u64> = voters.difference(&removed).copied().collect();
    if remaining.len() < voters.len() && !remaining.is_empty() {
        tracing::info!(?remaining, "removing nodes from the voters");
        raft.change_membership(remaining).await?;
        return Ok(());
    }

    for node in nodes
        .iter()
        .filter(|n| !n.removed && !members.contains(&n.id))
    {
        let claimed = busy.lock().map(|mut b| b.insert(node.id)).unwrap_or(false);
        if !claimed {
            continue;
        }
        let (raft, busy, id) = (raft.clone(), busy.clone(), node.id);
        let info = NodeInfo {
            rpc_addr: node.rpc_addr.clone(),
            api_addr: node.api_addr.clone(),
        };
        tokio::spawn(async move {
            tracing::info!(node = id, %info, "adding a learner");
            if let Err(e) = raft.add_learner(id, info).await {
                tracing::warn!(node = id, error = %e, "adding a learner");
            }
            if let Ok(mut b) = busy.lock() {
                b.remove(&id);
            }
        });
    }

    if voters.len() < MAX_VOTERS {
        let last = status.last_log_index.unwrap_or(0);
        let ready = status.members.iter().find(|m| {
            !m.voter
                && !removed.contains(&m.id)
                && m.matched_index
                    .is_some_and(|matched| matched + CAUGHT_UP_LAG >= last)
        });
        if let Some(learner) = ready {
            let mut promoted = voters.clone();
            promoted.insert(learner.id);
            tracing::info!(node = learner.id, "promoting a caught-up learner to voter");
            raft.change_membership(promoted).await?;
        }
    }
    Ok(())
}
