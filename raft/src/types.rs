//! The openraft type configuration and node identity.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's Raft id: unique in the cluster, never reused.
pub type NodeId = u64;

/// Where a member can be reached; replicated in the membership config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Peer RPC address (`host:port`), for Raft traffic and write forwarding.
    pub rpc_addr: String,
    /// HTTPS API address (`host:port`) that clients are given.
    pub api_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rpc={} api={}", self.rpc_addr, self.api_addr)
    }
}

/// An application command, opaque to this crate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload(#[serde(with = "serde_bytes_compat")] pub Vec<u8>);

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "payload({} bytes)", self.0.len())
    }
}

/// The application's answer to a [`Payload`], opaque to this crate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply(#[serde(with = "serde_bytes_compat")] pub Vec<u8>);

openraft::declare_raft_types!(
    /// Cradle's Raft type configuration.
    pub TypeConfig:
        D = Payload,
        R = Reply,
        NodeId = NodeId,
        Node = NodeInfo,
        // Snapshots are files under the data directory, streamed in chunks,
        // so a large state never has to sit in memory whole.
        SnapshotData = tokio::fs::File,
);

/// Serialize byte vectors compactly whatever the serde format (JSON would
/// otherwise write an array of numbers).
mod serde_bytes_compat {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}
