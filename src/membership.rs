//! The leader's membership reconciler and peer admission: what turns the
//! node registry (replicated in the store, records in [`crate::cluster::state`])
//! into Raft membership, and keeps removed nodes out of peer RPC.
//!
//! The reconciler runs on every node and acts on the leader only:
//! registered nodes are added as learners, caught-up learners are promoted
//! while there are fewer than [`MAX_VOTERS`] voters, removed nodes leave the
//! membership. Peer admission checks every peer call's certificate against
//! the registry.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cradle_raft::{NodeInfo, PeerAdmission, RaftRole};
use tokio::task::JoinSet;

use crate::cluster::state;
use crate::service::Shutdown;
use crate::store::{Store, WeakStore};

/// Beyond this many voters, new nodes stay learners (they still serve
/// everything): more voters make every commit slower and add no safety a
/// provisioning cluster needs.
pub const MAX_VOTERS: usize = 5;
/// How often the leader compares the registry with the Raft membership.
const RECONCILE_EVERY: Duration = Duration::from_millis(300);
/// A learner this close to the leader's log is caught up.
const CAUGHT_UP_LAG: u64 = 64;

/// Admits peers whose certificate names a node that has not been removed.
/// Until the store exists (the first moments of start-up) every certificate
/// the TLS handshake accepted (signed by the cluster CA) is admitted.
///
/// The store is held weakly: the Raft node holds this check, and a strong
/// store would keep the node (and its database) alive after shutdown.
pub fn peer_admission(store: Arc<OnceLock<WeakStore>>) -> PeerAdmission {
    // Certificates are parsed once: every heartbeat and append is checked.
    let names: Mutex<HashMap<Vec<u8>, Option<u64>>> = Mutex::default();
    PeerAdmission(Arc::new(move |der: &[u8]| {
        let Some(store) = store.get() else {
            return true;
        };
        let Some(store) = store.upgrade() else {
            // The node is stopping.
            return false;
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
///
/// Learner adds run as tasks of their own (a node that is not up yet can
/// take a while to answer), owned here: on shutdown they are stopped with the
/// loop, and a later leader adds them again from the registry.
pub async fn reconcile_forever(store: Store, mut shutdown: Shutdown) {
    let busy: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let mut adds = JoinSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = shutdown.requested() => break,
        }
        while adds.try_join_next().is_some() {}
        if let Err(e) = reconcile_once(&store, &busy, &mut adds).await {
            tracing::debug!(error = %e, "membership reconcile");
        }
    }
    adds.shutdown().await;
}

async fn reconcile_once(
    store: &Store,
    busy: &Arc<Mutex<HashSet<u64>>>,
    adds: &mut JoinSet<()>,
) -> anyhow::Result<()> {
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
        adds.spawn(async move {
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
