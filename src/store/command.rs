//! The replicated commands and their replies: the only way state changes.
//!
//! A command is proposed by the node that received the request, carried in
//! the Raft log, and applied by `apply` on every replica. Commands carry
//! everything that is not deterministic (times, random secrets, password
//! hashes), so applying them is.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cluster::state::{ClusterNode, JoinToken};
use crate::error_code::{self as code, Code};
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
#[serde(from = "WireRejection", into = "WireRejection")]
#[error("{code}: {message}")]
pub struct Rejection {
    pub code: &'static Code,
    pub message: String,
    pub field: Option<String>,
}

impl Rejection {
    pub fn new(code: &'static Code, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

/// A rejection as it travels in a reply: the code by name.
#[derive(Serialize, Deserialize)]
struct WireRejection {
    code: String,
    message: String,
    field: Option<String>,
}

impl From<Rejection> for WireRejection {
    fn from(r: Rejection) -> Self {
        WireRejection {
            code: r.code.name().to_string(),
            message: r.message,
            field: r.field,
        }
    }
}

/// A newer leader may reject with a code this version does not define: the
/// command was still refused (nothing changed), so the reply stays a
/// rejection, as `internal` with the original code kept in the message.
impl From<WireRejection> for Rejection {
    fn from(w: WireRejection) -> Self {
        match Code::from_name(&w.code) {
            Some(code) => Rejection {
                code,
                message: w.message,
                field: w.field,
            },
            None => Rejection {
                code: code::INTERNAL,
                message: format!(
                    "rejected with {:?}, a code this node does not know: {}",
                    w.code, w.message
                ),
                field: w.field,
            },
        }
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
                Reply::Rejected(Rejection::new(code::NOT_FOUND, "gone").at("name")),
            ],
        };
        let bytes = serde_json::to_vec(&reply).unwrap();
        assert_eq!(serde_json::from_slice::<Reply>(&bytes).unwrap(), reply);
    }

    #[test]
    fn a_rejection_travels_by_code_name() {
        let rejection = Rejection::new(code::MISSING_REFERENCE, "no such profile").at("profiles");
        let bytes = serde_json::to_vec(&rejection).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&bytes).unwrap(),
            json!({"code": "missing_reference", "message": "no such profile", "field": "profiles"})
        );
        // A code from a newer version is still a refusal, never a success.
        let newer: Rejection = serde_json::from_value(
            json!({"code": "from_the_future", "message": "m", "field": null}),
        )
        .unwrap();
        assert_eq!(newer.code, code::INTERNAL);
        assert!(newer.message.contains("from_the_future"), "{newer:?}");
    }

    #[test]
    fn garbage_payloads_do_not_decode() {
        for garbage in [&b""[..], b"{}", b"{\"op\":\"explode\"}", b"\xff", b"[1]"] {
            assert!(serde_json::from_slice::<Command>(garbage).is_err());
        }
    }
}
