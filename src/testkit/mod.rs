//! Test and benchmark support: a Cradle cluster of child processes on
//! loopback ([`Cluster`]) that the integration tests and
//! `cradle-cluster-bench` share.
//!
//! It lives in the library (not under `tests/`) so the bench binary can use
//! it too; nothing in a node's own code path calls it. Every wait here is
//! bounded and ends in an [`Error`] that quotes the node's log; every child
//! process is killed (SIGKILL, by its handle, never by name) when its
//! [`Node`] is dropped.

mod cluster;
mod relay;

pub use cluster::{
    join_args, parse_join_token, Cluster, Digests, JoinTimes, JoinToken, Node, Options,
    ADMIN_PASSWORD, CONVERGE_LIMIT, JOIN_LIMIT, LEADER_LIMIT, START_LIMIT,
};
pub use relay::Relays;

/// Why a cluster operation failed: what was waited for and what was seen,
/// with the node's log tail where one is involved.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

impl Error {
    pub fn new(message: impl Into<String>) -> Error {
        Error(message.into())
    }
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Error {
        Error(format!("HTTP: {e}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error(format!("I/O: {e}"))
    }
}
