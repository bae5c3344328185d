//! Cradle: a highly available, clustered network-boot appliance.
//!
//! # Layout
//! - [`config`]: every `cradle server` setting (flag, `CRADLE_*` variable,
//!   default, doc) in one place.
//! - [`model`]: the object kinds (machines, profiles, params, bootenvs,
//!   templates, subnets, reservations, leases, users, tokens, prefs), their
//!   validation, and param resolution.
//! - [`store`]: the replicated state: commands through Raft, the
//!   deterministic apply, indexes, list queries, the change feed.
//! - [`error_code`]: every stable error code, with its HTTP status and
//!   description, defined once.
//! - [`auth`]: password hashing (on a bounded pool), bearer tokens, scopes.
//! - [`clock`]: the wall clock, read in one place.
//! - [`tls`]: the CA, server certificates, rustls configurations.
//! - [`api`]: the HTTPS REST API, the only module that knows HTTP.
//! - [`client`]: the HTTPS client of the API (CA pinning, bounded
//!   responses, paging, the event stream), for the CLI and for joining.
//! - [`cli`]: the `cradle` client verbs.
//! - [`cluster`]: membership records and identity: node identity, join
//!   tokens, the node registry, the joining side of the join protocol.
//! - [`membership`]: on top of the store: the leader's membership reconciler
//!   and peer admission.
//! - [`service`]: the one shape of every listener (bind before Raft, run with
//!   a cap, one shutdown with a bounded drain) and of the background tasks.
//! - [`server`]: wiring a node together and shutting it down.
//! - [`testkit`]: a cluster of child processes on loopback (kill, pause,
//!   restart, cut and heal, wait for a leader, compare digests) for the
//!   integration tests and the cluster benchmark; no node code uses it.
//!
//! Consensus lives in the separate `cradle-raft` crate (`raft/`), the only
//! code that knows about openraft.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dhcp;
pub mod error_code;
pub mod membership;
pub mod metrics;
pub mod model;
pub mod server;
pub mod service;
pub mod store;
pub mod testkit;
pub mod tls;
