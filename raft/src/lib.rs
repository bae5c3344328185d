//! Cradle's consensus layer.
//!
//! Architecture invariant: this is the only crate that knows about openraft. The
//! application above it (the `cradle` crate) sees opaque command payloads, a
//! [`StateMachineApp`] it implements to apply them, and a [`RaftNode`] handle to
//! submit them.
//!
//! # Layout
//! - [`types`]: the openraft type configuration (`TypeConfig`), node identity.
//! - [`store`]: one RocksDB database holding the Raft log, vote, the state
//!   machine's metadata and the application's column families; [`Txn`], the
//!   read-your-writes overlay in which one `apply` call's entries are applied
//!   atomically.
//! - `log_store`: openraft's `RaftLogStorage` over RocksDB; every append, vote,
//!   truncate and purge is fsynced before it is reported done.
//! - `state_machine`: openraft's `RaftStateMachine`; applies entries through
//!   the [`StateMachineApp`], builds and installs snapshots; [`ReadView`], a
//!   consistent view of the state that never shows a half-installed snapshot.
//! - `forward`: what a member hands the leader (writes, read-index requests,
//!   membership changes), with a deadline, and how the leader carries it out.
//! - `prevote`: the pre-vote rule that keeps a node that cannot reach a
//!   majority, or whose peers still hear a leader, from starting elections.
//! - `network`: the tonic client (one cached channel per peer) and the gRPC
//!   service for AppendEntries, Vote, chunked InstallSnapshot, Forward and
//!   PreVote. Messages travel serde-encoded inside `proto/raft.proto`'s
//!   `Payload`; [`PeerTls`] configures mutual TLS.
//! - `snapshot`: the snapshot file format (header, length-prefixed records,
//!   SHA-256 trailer), shared by building, sending and installing.
//! - `node`: [`RaftNode`], the handle the application uses, its
//!   [`NodeConfig`], status report and errors.
//!
//! On disk, `<data_dir>/db` is the RocksDB database and `<data_dir>/snapshots`
//! holds the current snapshot file.

#![forbid(unsafe_code)]

pub mod store;
pub mod types;

mod forward;
mod log_store;
mod network;
mod node;
mod prevote;
mod snapshot;
mod state_machine;

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod test_support;

pub use network::{PeerAdmission, PeerTls};
pub use node::{MemberStatus, NodeConfig, NodeError, RaftNode, RaftRole, RaftStatus, WriteError};
pub use state_machine::{ReadView, ViewItem};
pub use store::{ApplyHalt, StateMachineApp, StoreError, Txn};
pub use types::{NodeId, NodeInfo};

/// Generated protobuf/gRPC code for `proto/raft.proto`.
pub mod proto {
    tonic::include_proto!("cradle.raft.v1");
}
