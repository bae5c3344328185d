//! `Cluster`: a Cradle cluster of child processes on loopback, for the
//! multi-node tests.
//!
//! Node slot `i` listens on its own loopback address, `127.0.0.{i + 2}`, with
//! free ports for the API and the peer RPC, and keeps its data dir, client
//! config dir and log file under one temporary root that is removed on drop.
//! The first node is started with `cradle server` on an empty data dir (a
//! one-voter cluster); every further node with `cradle join`, exactly as the
//! join command the cluster hands out says. A restart is always `cradle
//! server` with the same environment.
//!
//! Every wait is bounded and panics with the node's log tail when its bound
//! runs out; every child is killed (SIGKILL) when its `Node` is dropped.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{Client, Reply, ADMIN_PASSWORD};

/// Longest a node may take from spawn to answering its API.
pub const START_LIMIT: Duration = Duration::from_secs(30);
/// Longest a join may take until the node is a caught-up member.
pub const JOIN_LIMIT: Duration = Duration::from_secs(60);
/// Longest an election may take before `wait_leader` gives up.
pub const LEADER_LIMIT: Duration = Duration::from_secs(20);
/// Longest convergence (every node applied the leader's commit index) may take.
pub const CONVERGE_LIMIT: Duration = Duration::from_secs(30);
/// Per-request timeout of status polls: a poll must not hang a wait.
const POLL_TIMEOUT: Duration = Duration::from_millis(1000);
/// Pause between polls.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Most pages `list_all` reads before deciding the cursor never ends.
const MAX_PAGES: usize = 10_000;
/// Most bytes of a node's log quoted in a failure message.
const LOG_TAIL_BYTES: usize = 4_000;
/// Most nodes: one loopback address per slot, 127.0.0.2 … 127.0.0.250.
const MAX_SLOTS: usize = 249;

/// Raft timing and other settings every node of a cluster gets.
#[derive(Debug, Clone)]
pub struct Options {
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub heartbeat_ms: u64,
    pub no_leader_wait_ms: u64,
}

impl Default for Options {
    /// The server's own defaults.
    fn default() -> Self {
        Options {
            election_min_ms: 300,
            election_max_ms: 600,
            heartbeat_ms: 100,
            no_leader_wait_ms: 5_000,
        }
    }
}

/// One node slot: its addresses and directories, and its process while it runs.
pub struct Node {
    pub slot: usize,
    pub ip: Ipv4Addr,
    pub data_dir: PathBuf,
    /// `CRADLE_CONFIG_DIR` for the client half of `cradle join`, so the
    /// test never touches the user's own config.
    pub config_dir: PathBuf,
    /// The child's stdout and stderr, appended across restarts.
    pub log_path: PathBuf,
    pub api_addr: SocketAddr,
    pub rpc_addr: SocketAddr,
    /// The Raft id, once the node has reported it.
    pub id: Option<u64>,
    child: Option<Child>,
}

impl Node {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` to the child this harness started; false if it is not
    /// running.
    fn signal(&self, signal: nix::sys::signal::Signal) -> bool {
        let Some(child) = &self.child else {
            return false;
        };
        let Ok(pid) = i32::try_from(child.id()) else {
            return false;
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).is_ok()
    }

    /// The exit status if the child has exited on its own.
    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// The end of the node's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read(&self.log_path).unwrap_or_default();
        let start = log.len().saturating_sub(LOG_TAIL_BYTES);
        String::from_utf8_lossy(&log[start..]).into_owned()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A join command as the cluster hands it out, split into `cradle` arguments.
#[derive(Debug, Clone)]
pub struct JoinToken {
    /// The `POST /cluster/tokens` reply.
    pub grant: Value,
    /// `<id>.<secret>`.
    pub token: String,
    /// `sha256:<hex>` from the join command.
    pub ca_hash: String,
    /// `https://<addr>` from the join command.
    pub endpoint: String,
}

impl JoinToken {
    /// `join --token … --ca-hash … <endpoint>`.
    pub fn args(&self) -> Vec<String> {
        join_args(&self.token, &self.ca_hash, &self.endpoint)
    }
}

pub fn join_args(token: &str, ca_hash: &str, endpoint: &str) -> Vec<String> {
    vec![
        "join".into(),
        "--token".into(),
        token.into(),
        "--ca-hash".into(),
        ca_hash.into(),
        endpoint.into(),
    ]
}

/// Nodes as child processes on loopback. Fields drop in order: the nodes
/// (killed) before the directory they live in.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub options: Options,
    /// The cluster CA, as the first node wrote it.
    pub ca_pem: String,
    /// `sha256:<hex>` of the CA.
    pub ca_hash: String,
    /// An admin bearer token, valid on every member.
    pub token: String,
    http: reqwest::Client,
    root: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes with the server's default timing and waits until
    /// all are caught-up voters (up to 5) under one leader.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, Options::default()).await
    }

    pub async fn start_with(n: usize, options: Options) -> Cluster {
        assert!((1..=MAX_SLOTS).contains(&n), "cluster of {n} nodes");
        cradle::tls::install_crypto_provider();
        let root = tempfile::tempdir().expect("tempdir");
        let mut first = new_node(root.path(), 0);
        spawn(&mut first, &options, &["server".to_string()]);
        let ca_pem = wait_ca_file(&mut first, START_LIMIT).await;
        let ca_hash = cradle::tls::fingerprint_pem(&ca_pem).expect("CA fingerprint");
        let config = cradle::tls::client_config_for_ca(&ca_pem).expect("CA config");
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let mut cluster = Cluster {
            nodes: vec![first],
            options,
            ca_pem,
            ca_hash,
            token: String::new(),
            http,
            root,
        };
        cluster.wait_api(0, START_LIMIT).await;
        cluster.token = cluster.login(0, START_LIMIT).await;
        cluster.wait_ready(0, START_LIMIT).await;
        cluster.wait_leader(LEADER_LIMIT).await;
        for _ in 1..n {
            let slot = cluster.add_slot();
            cluster.join(slot).await;
        }
        cluster.wait_converged(CONVERGE_LIMIT).await;
        cluster
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Slots whose process is running.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect()
    }

    /// A fresh slot with its own address, ports and directories; not started.
    pub fn add_slot(&mut self) -> usize {
        let slot = self.nodes.len();
        assert!(slot < MAX_SLOTS, "out of loopback addresses");
        self.nodes.push(new_node(self.root.path(), slot));
        slot
    }

    /// The slot of the node with Raft id `id`.
    pub fn slot_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == Some(id))
    }

    /// A client for slot `i`'s API with the admin token.
    pub fn client(&self, i: usize) -> Client {
        Client {
            http: self.http.clone(),
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

    /// `GET /api/v1/status` on slot `i`, or `None` if it does not answer
    /// 200 within the poll timeout.
    pub async fn try_status(&self, i: usize) -> Option<Value> {
        let client = self.client(i);
        let response = client
            .http
            .get(client.url("/api/v1/status"))
            .bearer_auth(&self.token)
            .timeout(POLL_TIMEOUT)
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// Waits until slot `i` answers `GET /api/v1/ca`; panics if the child
    /// exits first.
    pub async fn wait_api(&mut self, i: usize, limit: Duration) -> Duration {
        let started = Instant::now();
        let client = self.anonymous(i);
        while started.elapsed() < limit {
            if let Some(status) = self.nodes[i].exited() {
                panic!(
                    "node {i} exited with {status} before serving; log:\n{}",
                    self.nodes[i].log_tail()
                );
            }
            if let Ok(response) = client
                .http
                .get(client.url("/api/v1/ca"))
                .timeout(POLL_TIMEOUT)
                .send()
                .await
            {
                if response.status().is_success() {
                    return started.elapsed();
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        panic!(
            "node {i} at {} not serving within {limit:?}; log:\n{}",
            self.nodes[i].api_addr,
            self.nodes[i].log_tail()
        );
    }

    /// Waits until slot `i` answers an authenticated status call and
    /// records its Raft id; returns the status.
    pub async fn wait_ready(&mut self, i: usize, limit: Duration) -> Value {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.nodes[i].exited() {
                panic!(
                    "node {i} exited with {status}; log:\n{}",
                    self.nodes[i].log_tail()
                );
            }
            if let Some(status) = self.try_status(i).await {
                if let Some(id) = status["node_id"].as_u64() {
                    if let Some(other) = self.slot_of(id).filter(|&s| s != i) {
                        panic!("node {i} reports id {id}, which node {other} already has");
                    }
                    self.nodes[i].id = Some(id);
                    return status;
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        panic!(
            "node {i} gave no status within {limit:?}; log:\n{}",
            self.nodes[i].log_tail()
        );
    }

    /// An admin token from slot `i` (a write: it needs a leader).
    pub async fn login(&self, i: usize, limit: Duration) -> String {
        let started = Instant::now();
        let client = self.anonymous(i);
        let mut last = String::new();
        while started.elapsed() < limit {
            match client
                .http
                .post(client.url("/api/v1/auth/token"))
                .basic_auth("admin", Some(ADMIN_PASSWORD))
                .timeout(Duration::from_secs(10))
                .send()
                .await
            {
                Ok(response) if response.status().is_success() => {
                    let grant: Value = response.json().await.expect("token grant");
                    return grant["token"].as_str().expect("token").to_string();
                }
                Ok(response) => last = format!("{}", response.status()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no admin token from node {i} within {limit:?}: {last}");
    }

    /// Waits until every running node reports the same leader, and that
    /// leader reports itself leader; returns the leader's slot.
    pub async fn wait_leader(&self, limit: Duration) -> usize {
        let started = Instant::now();
        let mut last = Vec::new();
        while started.elapsed() < limit {
            let mut statuses = Vec::new();
            for i in self.running() {
                statuses.push((i, self.try_status(i).await));
            }
            if let Some(leader) = agreed_leader(&statuses) {
                if let Some(slot) = self.slot_of(leader) {
                    let is_leader = statuses.iter().any(|(i, s)| {
                        *i == slot && s.as_ref().is_some_and(|s| s["role"] == "leader")
                    });
                    if is_leader {
                        return slot;
                    }
                }
            }
            last = statuses;
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        panic!(
            "no agreed leader within {limit:?}; last statuses: {}",
            brief(&last)
        );
    }

    /// Waits until the running nodes agree on a leader and every one has
    /// applied exactly the leader's commit index (no writes may be in
    /// flight); returns that index. After this, local (stale) reads on every
    /// running node see the same state.
    pub async fn wait_converged(&self, limit: Duration) -> u64 {
        let started = Instant::now();
        let mut last = Vec::new();
        while started.elapsed() < limit {
            let leader = self
                .wait_leader(limit.saturating_sub(started.elapsed()))
                .await;
            let before = self.try_status(leader).await;
            let mut statuses = Vec::new();
            for i in self.running() {
                statuses.push((i, self.try_status(i).await));
            }
            let after = self.try_status(leader).await;
            if let (Some(before), Some(after)) = (before, after) {
                let commit = before["commit_index"].as_u64();
                let same_leader = before["role"] == "leader"
                    && after["role"] == "leader"
                    && before["term"] == after["term"];
                let all_applied = statuses.iter().all(|(_, s)| {
                    s.as_ref().is_some_and(|s| {
                        s["applied_index"].as_u64() == commit && s["leader"] == before["node_id"]
                    })
                });
                let members = member_ids(&before["members"]);
                let all_members = self
                    .running()
                    .iter()
                    .all(|&i| self.nodes[i].id.is_some_and(|id| members.contains(&id)));
                if let Some(commit) = commit {
                    if same_leader
                        && after["commit_index"].as_u64() == Some(commit)
                        && all_applied
                        && all_members
                    {
                        return commit;
                    }
                }
            }
            last = statuses;
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        panic!(
            "running nodes did not converge within {limit:?}; last statuses: {}",
            brief(&last)
        );
    }

    /// `POST /api/v1/cluster/tokens` through slot `via`; checks the reply's
    /// shape and splits its join command.
    /// A `503` (no leader for a moment, on a loaded machine) is retried for
    /// up to [`LEADER_LIMIT`]; anything else but `201` fails the test.
    pub async fn create_join_token(&self, via: usize, ttl_secs: u64, uses: u32) -> JoinToken {
        let started = Instant::now();
        loop {
            let reply = self
                .client(via)
                .post(
                    "/api/v1/cluster/tokens",
                    json!({"ttl_secs": ttl_secs, "uses": uses}),
                )
                .await;
            if reply.status.as_u16() == 503 && started.elapsed() < LEADER_LIMIT {
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
            return parse_join_token(reply.expect(201));
        }
    }

    /// Runs `cradle <args>` as slot `i`'s process (with the slot's
    /// environment) and returns at once.
    pub fn spawn(&mut self, i: usize, args: &[String]) {
        assert!(!self.nodes[i].is_running(), "node {i} is already running");
        spawn(&mut self.nodes[i], &self.options, args);
    }

    /// Runs `cradle <args>` as slot `i` and waits for it to exit, for
    /// commands that must fail (a bad join). Panics if it is still running
    /// after `limit`.
    pub async fn run_to_exit(&mut self, i: usize, args: &[String], limit: Duration) -> ExitStatus {
        self.spawn(i, args);
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.nodes[i].exited() {
                return status;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        let log = self.nodes[i].log_tail();
        self.nodes[i].kill();
        panic!(
            "`cradle {}` still running after {limit:?}; log:\n{log}",
            args.join(" ")
        );
    }

    /// Joins slot `i` with a fresh one-use token from the leader and waits
    /// until it is a caught-up member (a voter while voters are fewer than
    /// 5); returns how long that took from the spawn.
    pub async fn join(&mut self, i: usize) -> Duration {
        let leader = self.wait_leader(LEADER_LIMIT).await;
        let token = self.create_join_token(leader, 3600, 1).await;
        self.join_with(i, &token).await
    }

    /// Joins slot `i` with `token` and waits as [`Cluster::join`] does.
    pub async fn join_with(&mut self, i: usize, token: &JoinToken) -> Duration {
        let leader = self.wait_leader(LEADER_LIMIT).await;
        let voters_before = self
            .try_status(leader)
            .await
            .map(|s| voter_count(&s["members"]))
            .unwrap_or(0);
        let started = Instant::now();
        self.spawn(i, &token.args());
        self.wait_api(i, JOIN_LIMIT).await;
        let status = self
            .wait_ready(i, JOIN_LIMIT.saturating_sub(started.elapsed()))
            .await;
        let id = status["node_id"].as_u64().expect("node_id");
        let want_voter = voters_before < 5;
        self.wait_member(id, want_voter, JOIN_LIMIT.saturating_sub(started.elapsed()))
            .await;
        self.wait_converged(JOIN_LIMIT.saturating_sub(started.elapsed()))
            .await;
        started.elapsed()
    }

    /// Waits until the leader lists `id` as a member (and as a voter if
    /// `voter`).
    pub async fn wait_member(&self, id: u64, voter: bool, limit: Duration) {
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < limit {
            let leader = self
                .wait_leader(limit.saturating_sub(started.elapsed()))
                .await;
            if let Some(status) = self.try_status(leader).await {
                let found = status["members"].as_array().is_some_and(|members| {
                    members
                        .iter()
                        .any(|m| m["id"].as_u64() == Some(id) && (!voter || m["voter"] == true))
                });
                if found {
                    return;
                }
                last = Some(status);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        panic!(
            "node id {id} not a {} within {limit:?}; leader status: {last:?}",
            if voter { "voter" } else { "member" }
        );
    }

    /// SIGKILL slot `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// SIGSTOP slot `i`: the process freezes with its sockets open, as a
    /// node does under a long GC-like pause or a stalled disk. A stopped
    /// child is still killed on drop (SIGKILL ends stopped processes too).
    pub fn pause(&mut self, i: usize) {
        assert!(
            self.nodes[i].signal(nix::sys::signal::Signal::SIGSTOP),
            "node {i} is not running"
        );
    }

    /// SIGCONT slot `i` after [`Cluster::pause`].
    pub fn resume(&mut self, i: usize) {
        assert!(
            self.nodes[i].signal(nix::sys::signal::Signal::SIGCONT),
            "node {i} is not running"
        );
    }

    /// Restarts slot `i` with `cradle server` and the same environment, and
    /// waits until it serves and follows a leader.
    pub async fn restart(&mut self, i: usize) -> Duration {
        let started = Instant::now();
        self.spawn(i, &["server".to_string()]);
        self.wait_api(i, START_LIMIT).await;
        let id = self.nodes[i].id;
        self.wait_ready(i, START_LIMIT.saturating_sub(started.elapsed()))
            .await;
        assert_eq!(self.nodes[i].id, id, "node {i} came back with another id");
        while started.elapsed() < START_LIMIT {
            if let Some(status) = self.try_status(i).await {
                if status["leader"].as_u64().is_some() {
                    return started.elapsed();
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        panic!(
            "restarted node {i} found no leader within {START_LIMIT:?}; log:\n{}",
            self.nodes[i].log_tail()
        );
    }

    /// `GET /api/v1/cluster/nodes` on slot `i`: the members as sorted
    /// `(id, voter, api_addr)`; a node is a voter by its `voter` field or,
    /// without one, by its `role` (`leader` or `voter`, not `removed`).
    pub async fn cluster_nodes(&self, i: usize) -> Vec<(u64, bool, String)> {
        let reply = self
            .client(i)
            .get("/api/v1/cluster/nodes")
            .await
            .expect(200);
        let list = match &reply.body {
            Value::Array(_) => &reply.body,
            Value::Object(o) => o
                .get("nodes")
                .or_else(|| o.get("members"))
                .unwrap_or(&Value::Null),
            _ => &Value::Null,
        };
        let mut members: Vec<(u64, bool, String)> = list
            .as_array()
            .unwrap_or_else(|| panic!("unexpected /cluster/nodes body: {}", reply.body))
            .iter()
            .map(|m| {
                (
                    m["id"].as_u64().expect("member id"),
                    m["voter"].as_bool().unwrap_or_else(|| {
                        m["removed"] != true
                            && matches!(m["role"].as_str(), Some("leader" | "voter"))
                    }),
                    m["api_addr"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        members.sort();
        members
    }

    /// Every object of `kind` in slot `i`'s local (possibly stale) state,
    /// paged by `X-Next-Cursor`.
    pub async fn list_all(&self, i: usize, kind: &str) -> Vec<Value> {
        let client = self.client(i);
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![("limit", "10000".to_string())];
            if let Some(c) = &cursor {
                query.push(("cursor", c.clone()));
            }
            let response = client
                .http
                .request(Method::GET, client.url(&format!("/api/v1/{kind}")))
                .bearer_auth(&self.token)
                .query(&query)
                .send()
                .await
                .unwrap_or_else(|e| panic!("listing {kind} on node {i}: {e}"));
            assert!(
                response.status().is_success(),
                "listing {kind} on node {i}: {}",
                response.status()
            );
            cursor = response
                .headers()
                .get("x-next-cursor")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let page: Vec<Value> = response.json().await.expect("a JSON array");
            all.extend(page);
            if cursor.is_none() {
                return all;
            }
        }
        panic!("listing {kind} on node {i}: more than {MAX_PAGES} pages");
    }
}

/// The slot's addresses and directories; ports are free on its own address.
fn new_node(root: &Path, slot: usize) -> Node {
    let ip = Ipv4Addr::new(127, 0, 0, 2 + u8::try_from(slot).expect("slot fits"));
    let dir = root.join(format!("node{slot}"));
    std::fs::create_dir_all(&dir).expect("node dir");
    Node {
        slot,
        ip,
        data_dir: dir.join("data"),
        config_dir: dir.join("config"),
        log_path: dir.join("log"),
        api_addr: SocketAddr::from((ip, free_port(ip))),
        rpc_addr: SocketAddr::from((ip, free_port(ip))),
        id: None,
        child: None,
    }
}

fn free_port(ip: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("a free port on {ip}: {e}"))
}

/// Starts `cradle <args>` as `node`'s process with its environment; no
/// `CRADLE_*` variable of the test's own environment leaks in.
fn spawn(node: &mut Node, options: &Options, args: &[String]) {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log_path)
        .expect("node log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_cradle"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CRADLE_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .env("CRADLE_DATA_DIR", &node.data_dir)
        .env("CRADLE_CONFIG_DIR", &node.config_dir)
        .env("CRADLE_API_LISTEN", node.api_addr.to_string())
        .env("CRADLE_RPC_LISTEN", node.rpc_addr.to_string())
        .env("CRADLE_ADVERTISE_HOST", node.ip.to_string())
        .env("CRADLE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("CRADLE_LOG", "error")
        .env(
            "CRADLE_ELECTION_MIN_MS",
            options.election_min_ms.to_string(),
        )
        .env(
            "CRADLE_ELECTION_MAX_MS",
            options.election_max_ms.to_string(),
        )
        .env("CRADLE_HEARTBEAT_MS", options.heartbeat_ms.to_string())
        .env(
            "CRADLE_NO_LEADER_WAIT_MS",
            options.no_leader_wait_ms.to_string(),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log);
    node.child = Some(command.spawn().expect("spawn cradle"));
}

/// Waits until the first node has written its CA.
async fn wait_ca_file(node: &mut Node, limit: Duration) -> String {
    let started = Instant::now();
    let path = node.data_dir.join("ca.pem");
    while started.elapsed() < limit {
        if let Some(status) = node.exited() {
            panic!("first node exited with {status}; log:\n{}", node.log_tail());
        }
        if let Ok(pem) = std::fs::read_to_string(&path) {
            if pem.contains("-----END CERTIFICATE-----") {
                return pem;
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("no {} within {limit:?}", path.display());
}

/// Checks a `POST /cluster/tokens` reply and splits its join command.
pub fn parse_join_token(reply: Reply) -> JoinToken {
    let grant = reply.body;
    let token = grant["token"].as_str().expect("token").to_string();
    let id = grant["id"].as_str().expect("id");
    assert!(
        token.starts_with(&format!("{id}.")) && token.len() > id.len() + 1,
        "token {token:?} is not <id>.<secret> for id {id:?}"
    );
    assert!(grant["expires_at_unix"].as_u64().is_some(), "{grant}");
    assert!(grant["uses"].as_u64().is_some(), "{grant}");
    let command = grant["join_command"].as_str().expect("join_command");
    let words: Vec<&str> = command.split_whitespace().collect();
    let find = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|p| words.get(p + 1))
            .map(|w| w.to_string())
            .unwrap_or_else(|| panic!("no {flag} in join command {command:?}"))
    };
    assert_eq!(words.get(..2), Some(&["cradle", "join"][..]), "{command}");
    assert_eq!(find("--token"), token, "{command}");
    let ca_hash = find("--ca-hash");
    assert!(ca_hash.starts_with("sha256:"), "{command}");
    let endpoint = words
        .iter()
        .find(|w| w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no https:// endpoint in {command:?}"))
        .to_string();
    JoinToken {
        grant,
        token,
        ca_hash,
        endpoint,
    }
}

/// The leader every answering node names, if they all name the same one.
fn agreed_leader(statuses: &[(usize, Option<Value>)]) -> Option<u64> {
    let mut leader = None;
    for (_, status) in statuses {
        let named = status.as_ref()?["leader"].as_u64()?;
        if leader.is_some_and(|l| l != named) {
            return None;
        }
        leader = Some(named);
    }
    leader
}

pub fn member_ids(members: &Value) -> Vec<u64> {
    members
        .as_array()
        .map(|ms| ms.iter().filter_map(|m| m["id"].as_u64()).collect())
        .unwrap_or_default()
}

pub fn voter_count(members: &Value) -> usize {
    members
        .as_array()
        .map(|ms| ms.iter().filter(|m| m["voter"] == true).count())
        .unwrap_or(0)
}

/// Statuses in one line each, for failure messages.
fn brief(statuses: &[(usize, Option<Value>)]) -> String {
    statuses
        .iter()
        .map(|(i, s)| match s {
            Some(s) => format!(
                "\n  node {i}: id {} role {} leader {} term {} commit {} applied {} members {}",
                s["node_id"],
                s["role"],
                s["leader"],
                s["term"],
                s["commit_index"],
                s["applied_index"],
                s["members"]
            ),
            None => format!("\n  node {i}: no answer"),
        })
        .collect()
}
