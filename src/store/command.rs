//! The replicated commands and their replies: the only way state changes.
//!
//! A command is proposed by the node that received the request, carried in
//! the Raft log, and applied by `apply` on every replica. Commands carry
//! everything that is not deterministic (times, random secrets, password
//! hashes), so applying them is.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cluster::state::{ClusterNode, JoinToken};
use crate::model::{ObjectKind, User};

/// One state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// First start: the admin user, the token signing key, the cluster CA
    /// and the founding node. Applied once; later bootstraps are no-ops, so a
    /// retried first start is harmless.
    Bootstrap {
        admin: User,
        signing_key: String,
        ca_cert_pem: String,
        ca_key_pem: String,
        founder: ClusterNode,
    },
    CreateJoinToken {
        token: JoinToken,
    },
    RevokeJoinToken {
        id: String,
    },
    /// Spends one use of a join token and registers a new node, whose id the
    /// reply carries. `now_unix` is the proposer's clock: expiry is judged
    /// by it, the same on every replica.
    Join {
        token_id: String,
        secret_sha256: String,
        now_unix: u64,
        rpc_addr: String,
        api_addr: String,
    },
    /// Marks a node removed; its certificate is refused from then on.
    RemoveNode {
        id: u64,
    },
    Create {
        kind: ObjectKind,
        object: Value,
    },
    /// Replaces the whole object at `key`.
    Replace {
        kind: ObjectKind,
        key: String,
        object: Value,
        if_match: Option<u64>,
    },
    /// RFC 6902 JSON Patch against the object as the API shows it.
    Patch {
        kind: ObjectKind,
        key: String,
        patch: json_patch::Patch,
        if_match: Option<u64>,
    },
    Delete {
        kind: ObjectKind,
        key: String,
        if_match: Option<u64>,
    },
    /// Deletes up to `limit` token records that expired before `now_unix`
    /// (the proposer's clock, so every replica purges the same ones).
    PurgeExpiredTokens {
        now_unix: u64,
        limit: u32,
    },
    /// Many commands in one log entry, written by earlier versions; still
    /// applied, never proposed. Batches are now framed so that each command
    /// decodes on its own (see `frames`).
    Batch {
        commands: Vec<Command>,
    },
}

/// The outcome of one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reply {
    Done {
        revision: u64,
        /// The object as stored (absent for deletes and bootstraps).
        object: Option<Value>,
    },
    Rejected(Rejection),
    Batch {
        replies: Vec<Reply>,
    },
}

/// Why a command changed nothing. `code` is stable; clients match on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

impl Rejection {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Rejection {
            code: code.to_string(),
            message: message.into(),
            field: None,
        }
    }

    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_command_survives_the_log_encoding() {
        let create = Command::Create {
            kind: ObjectKind::Machines,
            object: json!({"name": "m1"}),
        };
        let commands = vec![
            create.clone(),
            Command::Replace {
                kind: ObjectKind::Profiles,
                key: "p".into(),
                object: json!({"name": "p"}),
                if_match: Some(3),
            },
            Command::Patch {
                kind: ObjectKind::Profiles,
                key: "p".into(),
                patch: serde_json::from_value(
                    json!([{"op": "test", "path": "/name", "value": "p"}]),
                )
                .unwrap(),
                if_match: None,
            },
            Command::Delete {
                kind: ObjectKind::Templates,
                key: "t".into(),
                if_match: None,
            },
            Command::Batch {
                commands: vec![create.clone(), create],
            },
        ];
        for command in commands {
            let bytes = serde_json::to_vec(&command).unwrap();
            assert_eq!(serde_json::from_slice::<Command>(&bytes).unwrap(), command);
        }
        let reply = Reply::Batch {
            replies: vec![
                Reply::Done {
                    revision: 1,
                    object: None,
                },
                Reply::Rejected(Rejection::new("not_found", "gone").at("name")),
            ],
        };
        let bytes = serde_json::to_vec(&reply).unwrap();
        assert_eq!(serde_json::from_slice::<Reply>(&bytes).unwrap(), reply);
    }

    #[test]
    fn garbage_payloads_do_not_decode() {
        for garbage in [&b""[..], b"{}", b"{\"op\":\"explode\"}", b"\xff", b"[1]"] {
            assert!(serde_json::from_slice::<Command>(garbage).is_err());
        }
    }
}
