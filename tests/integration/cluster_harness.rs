//! The multi-node tests' view of [`cradle::testkit::Cluster`]: the same
//! cluster of child processes on loopback, with clients of this test crate
//! and every failure turned into a panic that quotes what was seen.
//!
//! The cluster itself (processes, relays, waits, digests) lives in the
//! library so `cradle-cluster-bench` runs the very same code.

#![allow(dead_code)]

use std::ops::{Deref, DerefMut};
use std::process::ExitStatus;
use std::time::Duration;

use serde_json::Value;

pub use cradle::testkit::{
    join_args, Digests, JoinToken, Options, CONVERGE_LIMIT, JOIN_LIMIT, LEADER_LIMIT, START_LIMIT,
};

use crate::common::Client;

/// Unwraps a testkit result, panicking with its message (which carries the
/// node's log tail where one is involved).
#[track_caller]
fn ok<T>(result: Result<T, cradle::testkit::Error>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

pub struct Cluster(pub cradle::testkit::Cluster);

impl Deref for Cluster {
    type Target = cradle::testkit::Cluster;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Cluster {
    /// Starts `n` nodes with the server's default timing and waits until
    /// all are caught-up voters (up to 5) under one leader.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, Options::default()).await
    }

    pub async fn start_with(n: usize, options: Options) -> Cluster {
        let options = Options {
            exe: Some(
                options
                    .exe
                    .unwrap_or_else(|| env!("CARGO_BIN_EXE_cradle").into()),
            ),
            ..options
        };
        Cluster(ok(cradle::testkit::Cluster::start(n, options).await))
    }

    /// A client for slot `i`'s API with the admin token.
    pub fn client(&self, i: usize) -> Client {
        Client {
            http: self.http().clone(),
            base: format!("https://{}", self.nodes[i].api_addr),
            token: Some(self.token.clone()),
            data_dir: self.nodes[i].data_dir.clone(),
            trusts_ca: true,
        }
    }

    /// The same, without a token.
    pub fn anonymous(&self, i: usize) -> Client {
        Client {
            token: None,
            ..self.client(i)
        }
    }

    pub fn add_slot(&mut self) -> usize {
        ok(self.0.add_slot())
    }

    pub async fn wait_leader(&self, limit: Duration) -> usize {
        ok(self.0.wait_leader(limit).await)
    }

    pub async fn wait_converged(&self, limit: Duration) -> u64 {
        ok(self.0.wait_converged(limit).await)
    }

    /// Converges and asserts every reachable node reports the same state
    /// digest at the converged index.
    pub async fn assert_same_digests(&self, limit: Duration) -> Digests {
        ok(self.0.digests(limit).await)
    }

    pub async fn create_join_token(&self, via: usize, ttl_secs: u64, uses: u32) -> JoinToken {
        ok(self.0.create_join_token(via, ttl_secs, uses).await)
    }

    pub async fn run_to_exit(&mut self, i: usize, args: &[String], limit: Duration) -> ExitStatus {
        ok(self.0.run_to_exit(i, args, limit).await)
    }

    /// Joins slot `i` with a fresh token; returns the time to caught up.
    pub async fn join(&mut self, i: usize) -> Duration {
        ok(self.0.join(i).await).caught_up
    }

    pub async fn join_with(&mut self, i: usize, token: &JoinToken) -> Duration {
        ok(self.0.join_with(i, token, JOIN_LIMIT).await).caught_up
    }

    pub async fn restart(&mut self, i: usize) -> Duration {
        ok(self.0.restart(i).await)
    }

    pub fn pause(&mut self, i: usize) {
        ok(self.0.pause(i))
    }

    pub fn resume(&mut self, i: usize) {
        ok(self.0.resume(i))
    }

    pub fn cut(&self, i: usize) {
        ok(self.0.cut(i))
    }

    pub fn heal(&self, i: usize) {
        ok(self.0.heal(i))
    }

    pub async fn cluster_nodes(&self, i: usize) -> Vec<(u64, bool, String)> {
        ok(self.0.cluster_nodes(i).await)
    }

    pub async fn list_all(&self, i: usize, kind: &str) -> Vec<Value> {
        ok(self.0.list_all(i, kind).await)
    }
}
