//! The replicated commands and their replies: the only way state changes.
//!
//! A command is proposed by the node that received the request, carried in
//! the Raft log, and applied by `apply` on every replica. Commands carry
//! everything that is not deterministic (times, random secrets, password
//! hashes), so applying them is.
//!
//! These are the log's types, not the API's: what a command carries is a
//! store record (`record`, `cluster::state`) or an object document that
//! apply validates, and how a command is encoded is fixed by the entry's
//! format (`frames`). The rule for mixed versions: every node registers the
//! newest format it reads ([`Command::SetNodeFormat`]); a proposer writes
//! the newest format every registered node reads ([`entry_format`]); a node
//! that meets an entry of a format it does not read halts apply.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::frames::{FORMAT_V1, FORMAT_V2};
use super::record::BootstrapAdmin;
use crate::cluster::state::{ClusterNode, JoinToken};
use crate::error_code::{self as code, Code};
use crate::model::ObjectKind;

/// One state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// First start: the admin user, the token signing key, the cluster CA
    /// and the founding node. Applied once; later bootstraps are no-ops, so a
    /// retried first start is harmless.
    Bootstrap {
        admin: BootstrapAdmin,
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
    /// A node registers the newest log entry format it reads, when it
    /// starts a build that reads a different one than its record says.
    SetNodeFormat {
        id: u64,
        log_format: u32,
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
    /// DHCPDISCOVER: chooses an address for the client inside apply and
    /// holds it as a short tentative binding (state `offered`, expiring at
    /// `now_unix + offer_secs`); a client that already holds a bound lease
    /// is offered that lease unchanged. Format 2.
    DhcpOffer {
        request: LeaseRequest,
    },
    /// DHCPREQUEST (selecting, init-reboot, renewing, rebinding): binds
    /// `request.requested` (or, when absent, the client's current binding)
    /// until `now_unix + lease_secs`, or is rejected (the server NAKs).
    /// Format 2.
    DhcpBind {
        request: LeaseRequest,
    },
    /// DHCPRELEASE: the client's binding of `address` ends now and the
    /// address is free at once. Format 2.
    DhcpRelease {
        client_id: String,
        address: Ipv4Addr,
        now_unix: u64,
    },
    /// DHCPDECLINE: the address is in use by someone else; it is
    /// quarantined (allocated to no one) until `now_unix + quarantine_secs`,
    /// then reclaimed. Format 2.
    DhcpDecline {
        client_id: String,
        address: Ipv4Addr,
        now_unix: u64,
        quarantine_secs: u32,
    },
    /// The leader's periodic expiry: leases (offered, bound, declined) whose
    /// `expires_at_unix <= before_unix` become expired and their addresses
    /// free, at most `limit` (capped) per command. The proposer passes its
    /// clock minus a clock-skew margin. Format 2.
    DhcpReclaim {
        before_unix: u64,
        limit: u32,
    },
    /// The leader saw `node` stop answering: its records of hearing DHCP
    /// links are forgotten, so its clients are shared among the others at
    /// once (its next committed lease brings them back). Format 2.
    DhcpNodeDown {
        node: u64,
    },
    /// Many commands in one log entry, written by earlier versions; still
    /// applied, never proposed. Batches are now framed so that each command
    /// decodes on its own (see `frames`).
    Batch {
        commands: Vec<Command>,
    },
}

impl Command {
    /// The oldest entry format that can carry this command. A command that
    /// a later format introduces says so here, and is refused while some
    /// registered node cannot read that format.
    pub fn oldest_format(&self) -> u32 {
        match self {
            Command::DhcpOffer { .. }
            | Command::DhcpBind { .. }
            | Command::DhcpRelease { .. }
            | Command::DhcpDecline { .. }
            | Command::DhcpReclaim { .. }
            | Command::DhcpNodeDown { .. } => FORMAT_V2,
            Command::Batch { commands } => commands
                .iter()
                .map(Command::oldest_format)
                .max()
                .unwrap_or(FORMAT_V1),
            _ => FORMAT_V1,
        }
    }
}

/// What a DHCP server asks of the store for one client: everything apply
/// needs to choose and stamp an address, with the proposer's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// The subnet to allocate in (the handler chose it by interface, relay
    /// or link selection).
    pub subnet: String,
    /// Option 61, else htype + chaddr, as hex (any case; `:`/`-` allowed).
    pub client_id: String,
    /// The client's MAC (`aa:bb:cc:dd:ee:ff`), or empty when its hardware
    /// type is not Ethernet; reservations are found by it.
    #[serde(default)]
    pub hardware_addr: String,
    /// The address the client asked for (option 50, or ciaddr when renewing).
    #[serde(default)]
    pub requested: Option<Ipv4Addr>,
    /// The proposer's clock, Unix seconds: every time stamped comes from it.
    pub now_unix: u64,
    /// The node answering the client.
    pub node: u64,
    /// The relay (giaddr) the request came through.
    #[serde(default)]
    pub via: Option<Ipv4Addr>,
    /// Option 12, if the client sent one.
    #[serde(default)]
    pub hostname: Option<String>,
    /// How long an offer holds its address (`DhcpOffer` only; 1 to
    /// `dhcp::MAX_OFFER_SECS`).
    #[serde(default)]
    pub offer_secs: u32,
}

/// The newest entry format every registered node (removed ones aside) reads;
/// `own` (this build's newest) when none is registered yet, as on the
/// founder's first start. Learners count: they apply the log too.
pub fn cluster_format<'a>(nodes: impl IntoIterator<Item = &'a ClusterNode>, own: u32) -> u32 {
    nodes
        .into_iter()
        .filter(|node| !node.removed)
        .map(|node| node.log_format)
        .min()
        .unwrap_or(own)
}

/// The format a proposer writes an entry in: the newest one both this build
/// (`writable`) and every registered node (`cluster_reads`) handle.
pub fn entry_format(cluster_reads: u32, writable: RangeInclusive<u32>) -> Result<u32, Rejection> {
    let format = cluster_reads.min(*writable.end());
    if format < *writable.start() {
        return Err(Rejection::new(
            code::LOG_FORMAT_UNSUPPORTED,
            format!(
                "a registered node reads log entries up to format {cluster_reads}, and this node \
                 writes formats {} to {}: upgrade that node first",
                writable.start(),
                writable.end()
            ),
        ));
    }
    Ok(format)
}

/// Whether `command` can travel in an entry of `format`.
pub fn check_format(command: &Command, format: u32) -> Result<(), Rejection> {
    let needs = command.oldest_format();
    if needs > format {
        return Err(Rejection::new(
            code::LOG_FORMAT_UNSUPPORTED,
            format!(
                "this change needs log entry format {needs}, and some registered node reads \
                 only up to {format}: finish upgrading every node first"
            ),
        ));
    }
    Ok(())
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

    fn node(id: u64, log_format: u32, removed: bool) -> ClusterNode {
        ClusterNode {
            id,
            rpc_addr: String::new(),
            api_addr: String::new(),
            joined_at_unix: 0,
            removed,
            log_format,
        }
    }

    #[test]
    fn proposers_write_the_newest_format_every_registered_node_reads() {
        // A build that writes formats 1 and 2 (2 standing in for a format to
        // come), in a cluster part-way through an upgrade.
        let writable = 1..=2;
        let mixed = [node(1, 2, false), node(2, 1, false), node(3, 2, false)];
        let format = entry_format(cluster_format(&mixed, 2), writable.clone()).unwrap();
        assert_eq!(format, 1);
        // The last node upgraded (and registered so): format 2 from then on.
        let upgraded = [node(1, 2, false), node(2, 2, false), node(3, 2, false)];
        assert_eq!(
            entry_format(cluster_format(&upgraded, 2), writable.clone()),
            Ok(2)
        );
        // A removed node no longer holds the cluster back; a learner does.
        let removed = [node(1, 2, false), node(2, 1, true), node(3, 2, false)];
        assert_eq!(
            entry_format(cluster_format(&removed, 2), writable.clone()),
            Ok(2)
        );
        // Nodes newer than this build: this build's newest.
        let newer = [node(1, 3, false), node(2, 3, false)];
        assert_eq!(entry_format(cluster_format(&newer, 2), writable), Ok(2));
        // Before any node is registered (the founder's bootstrap).
        assert_eq!(cluster_format(&[], 2), 2);
        // A build that no longer writes format 1 refuses rather than write
        // what a registered node cannot read.
        assert_eq!(
            entry_format(cluster_format(&mixed, 3), 2..=3)
                .unwrap_err()
                .code,
            code::LOG_FORMAT_UNSUPPORTED
        );
        // Every command of this build travels in format 1.
        let create = Command::Create {
            kind: ObjectKind::Machines,
            object: json!({}),
        };
        assert!(check_format(&create, FORMAT_V1).is_ok());
        // The DHCP lease commands need format 2: refused while any
        // registered node reads only format 1, alone or in a batch.
        let reclaim = Command::DhcpReclaim {
            before_unix: 1,
            limit: 1,
        };
        assert_eq!(
            check_format(&reclaim, FORMAT_V1).unwrap_err().code,
            code::LOG_FORMAT_UNSUPPORTED
        );
        assert!(check_format(&reclaim, FORMAT_V2).is_ok());
        let batch = Command::Batch {
            commands: vec![create, reclaim],
        };
        assert_eq!(batch.oldest_format(), FORMAT_V2);
    }

    #[test]
    fn registry_records_written_before_formats_are_format_1() {
        let old = r#"{"id":2,"rpc_addr":"a","api_addr":"b","joined_at_unix":5,"removed":false}"#;
        let node: ClusterNode = serde_json::from_str(old).unwrap();
        assert_eq!(node.log_format, FORMAT_V1);
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
