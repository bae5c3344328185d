//! Cluster membership: who the members are and how one becomes one.
//!
//! This module owns the node's identity on disk (`node.json`), what a
//! founding node tells scripts (`info`: `cluster.json`), join tokens
//! and the node registry (`state`), and the joining side of the join
//! protocol (`join`). It does not use the store (the store applies its
//! records): what runs on top of the store, the leader's reconciler and peer
//! admission, is in [`crate::membership`].
//!
//! The cluster CA's key is replicated state (a `meta` record), so every
//! voter can sign a joining node's certificate and losing any one node loses
//! no ability to admit new ones. The API never serves it; only nodes, which
//! hold the replicated state anyway, can read it.

pub mod info;
pub mod join;
pub mod state;

use std::path::Path;

use serde::{Deserialize, Serialize};

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
