//! The cluster's own replicated records: join tokens and the node registry.
//! They live in the `cluster` column family, beside (not among) the API's
//! object kinds, and change only through the store's commands.

use crate::error_code::{self as code, Code};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A join token as stored: only a hash of its secret. The API shows
/// `api::cluster::JoinTokenView`, which has no place for the hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub id: String,
    /// Hex SHA-256 of the secret half; the secret itself is never stored.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub secret_sha256: String,
    pub created_at_unix: u64,
    pub expires_at_unix: u64,
    pub uses_left: u32,
    pub revoked: bool,
    #[serde(default)]
    pub description: String,
}

/// Why a join token does not admit a node. The same check runs on the node
/// that receives the join (before anything is proposed) and in apply
/// (against committed state), so both answer with the same codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefusal {
    #[error("the join token is not valid for this cluster")]
    Invalid,
    #[error("the join token has been revoked")]
    Revoked,
    #[error("the join token has expired")]
    Expired,
    #[error("the join token has no uses left")]
    UsedUp,
}

impl JoinRefusal {
    /// The stable error code.
    pub fn code(self) -> &'static Code {
        match self {
            JoinRefusal::Invalid => code::INVALID_JOIN_TOKEN,
            JoinRefusal::Revoked => code::JOIN_TOKEN_REVOKED,
            JoinRefusal::Expired => code::JOIN_TOKEN_EXPIRED,
            JoinRefusal::UsedUp => code::JOIN_TOKEN_USED_UP,
        }
    }
}

/// Whether `token` (as found by its id, if at all) admits a node presenting
/// a secret hashing to `secret_sha256` at `now_unix`.
pub fn check_join_token(
    token: Option<&JoinToken>,
    secret_sha256: &str,
    now_unix: u64,
) -> Result<(), JoinRefusal> {
    use subtle::ConstantTimeEq as _;
    let token = token.ok_or(JoinRefusal::Invalid)?;
    // Compared in constant time: the hash is of a secret.
    let same: bool = token
        .secret_sha256
        .as_bytes()
        .ct_eq(secret_sha256.as_bytes())
        .into();
    if !same {
        return Err(JoinRefusal::Invalid);
    }
    if token.revoked {
        return Err(JoinRefusal::Revoked);
    }
    if now_unix >= token.expires_at_unix {
        return Err(JoinRefusal::Expired);
    }
    if token.uses_left == 0 {
        return Err(JoinRefusal::UsedUp);
    }
    Ok(())
}

/// A member the cluster knows of, whatever its Raft role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    pub id: u64,
    pub rpc_addr: String,
    pub api_addr: String,
    pub joined_at_unix: u64,
    /// Removed members stay listed so their certificates stay refused.
    pub removed: bool,
    /// The newest log entry format the node's build reads, as it last
    /// registered it (`Command::SetNodeFormat`). Records from before formats
    /// existed, and nodes that have not registered yet, are format 1: a
    /// proposer then writes nothing they cannot read.
    #[serde(default = "first_log_format")]
    pub log_format: u32,
}

/// The log entry format of records written before formats were registered
/// (the store's `frames::FORMAT_V1`; a test there keeps the two equal, so
/// this module needs nothing from the store).
pub const FIRST_LOG_FORMAT: u32 = 1;

fn first_log_format() -> u32 {
    FIRST_LOG_FORMAT
}

/// Length of a token id and of its secret, in hex digits.
pub const TOKEN_ID_HEX: usize = 12;
pub const TOKEN_SECRET_HEX: usize = 32;

/// Splits `<id>.<secret>`, checking the shape only.
pub fn parse_join_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.trim().split_once('.')?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, TOKEN_ID_HEX) && hex(secret, TOKEN_SECRET_HEX)).then_some((id, secret))
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The common name a node certificate carries: `cradle-node-<id>`.
pub fn node_common_name(id: u64) -> String {
    format!("cradle-node-{id}")
}

pub fn node_id_from_common_name(cn: &str) -> Option<u64> {
    cn.strip_prefix("cradle-node-")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_token_shapes() {
        let good = format!(
            "{}.{}",
            "a".repeat(TOKEN_ID_HEX),
            "0".repeat(TOKEN_SECRET_HEX)
        );
        assert!(parse_join_token(&good).is_some());
        for bad in [
            "",
            ".",
            "abc",
            "abc.def",
            &format!(
                "{}.{}",
                "g".repeat(TOKEN_ID_HEX),
                "0".repeat(TOKEN_SECRET_HEX)
            ),
            &format!(
                "{}{}",
                "a".repeat(TOKEN_ID_HEX),
                "0".repeat(TOKEN_SECRET_HEX)
            ),
            &format!(
                "{}.{}.x",
                "a".repeat(TOKEN_ID_HEX),
                "0".repeat(TOKEN_SECRET_HEX)
            ),
        ] {
            assert!(parse_join_token(bad).is_none(), "{bad:?}");
        }
        assert_eq!(node_id_from_common_name(&node_common_name(7)), Some(7));
        assert_eq!(node_id_from_common_name("cradle node"), None);
    }
}
