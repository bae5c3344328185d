//! `Cluster`: Cradle nodes as child processes on loopback.
//!
//! Node slot `i` has its own loopback address, `127.0.0.{i + 2}`, with free
//! ports for the API and the peer RPC, and keeps its data dir, client config
//! dir and log file under one root directory (a temporary one unless the
//! caller names it). The first node is started with `cradle server` on an
//! empty data dir (a one-voter cluster); every further node with `cradle
//! join`, exactly as the join command the cluster hands out says. A restart
//! is always `cradle server` with the same environment.
//!
//! Faults: [`Cluster::kill`] (SIGKILL), [`Cluster::pause`] and
//! [`Cluster::resume`] (SIGSTOP, SIGCONT), [`Cluster::restart`], and, with
//! [`Options::relay`], [`Cluster::cut`] and [`Cluster::heal`] (see
//! [`super::relay`]). Observations: [`Cluster::wait_leader`],
//! [`Cluster::wait_converged`], [`Cluster::digests`].

use std::fs::OpenOptions;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::relay::Relays;
use super::Error;

/// The admin password every cluster is founded with.
pub const ADMIN_PASSWORD: &str = "test-admin-password";
/// Longest a node may take from spawn to answering its API.
pub const START_LIMIT: Duration = Duration::from_secs(60);
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
/// Timeout of every other request the cluster makes (above the server's
/// no-leader wait, so a write that waits out an election gets its answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most pages a listing reads before deciding the cursor never ends.
const MAX_PAGES: usize = 10_000;
/// Objects per page when listing.
const PAGE_LIMIT: usize = 10_000;
/// Most bytes of a node's log quoted in an error.
const LOG_TAIL_BYTES: usize = 4_000;
/// Most nodes: one loopback address per slot, 127.0.0.2 … 127.0.0.250.
const MAX_SLOTS: usize = 249;
/// Most voters the server's reconciler promotes.
const MAX_VOTERS: usize = 5;

/// How the nodes of a cluster run.
#[derive(Debug, Clone)]
pub struct Options {
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub heartbeat_ms: u64,
    pub no_leader_wait_ms: u64,
    /// Put a relay in front of every node's peer RPC, so nodes can be cut
    /// off and healed. Off, the nodes talk directly (no extra hop to
    /// measure).
    pub relay: bool,
    /// The `cradle` binary; `None` looks next to the running executable and
    /// in its parent directory (where cargo puts it for tests and benches).
    pub exe: Option<PathBuf>,
    /// `CRADLE_LOG` of every node.
    pub log: String,
    /// Run each node under this soft open-files limit (`ulimit -Sn`).
    pub open_files_soft_limit: Option<u64>,
    /// Further `CRADLE_*` variables for every node.
    pub env: Vec<(String, String)>,
    /// Keep the nodes' directories here instead of a temporary directory.
    pub root: Option<PathBuf>,
    /// Serve DHCP on this port of each node's own address (proxyDHCP on
    /// the next port). `None`: DHCP off, since port 67 is one per host.
    pub dhcp_port: Option<u16>,
}

impl Default for Options {
    /// The server's own timing, no relays.
    fn default() -> Self {
        Options {
            election_min_ms: 300,
            election_max_ms: 600,
            heartbeat_ms: 100,
            no_leader_wait_ms: 5_000,
            relay: false,
            exe: None,
            log: "error".into(),
            open_files_soft_limit: None,
            env: Vec::new(),
            root: None,
            dhcp_port: None,
        }
    }
}

impl Options {
    fn resolve_exe(&self) -> Result<PathBuf, Error> {
        if let Some(exe) = &self.exe {
            return Ok(exe.clone());
        }
        let current = std::env::current_exe()?;
        let mut dir = current.parent();
        for _ in 0..2 {
            let Some(d) = dir else { break };
            let candidate = d.join("cradle");
            if candidate.is_file() {
                return Ok(candidate);
            }
            dir = d.parent();
        }
        Err(Error::new(format!(
            "no `cradle` binary next to {} (build it: cargo build --bin cradle)",
            current.display()
        )))
    }
}

/// One node slot: its addresses and directories, and its process while it runs.
pub struct Node {
    pub slot: usize,
    pub ip: Ipv4Addr,
    pub data_dir: PathBuf,
    /// `CRADLE_CONFIG_DIR` for the client half of `cradle join`, so nothing
    /// touches the user's own config.
    pub config_dir: PathBuf,
    /// The child's stdout and stderr, appended across restarts.
    pub log_path: PathBuf,
    pub api_addr: SocketAddr,
    /// Where the node's peer RPC listener is bound.
    pub rpc_addr: SocketAddr,
    /// What the node advertises for peer RPC: its relay, or `rpc_addr`.
    pub peer_addr: SocketAddr,
    /// The Raft id, once the node has reported it.
    pub id: Option<u64>,
    child: Option<Child>,
    paused: bool,
}

impl Node {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no shutdown path runs. Works on a paused node too.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// SIGSTOP: the process freezes with its sockets open.
    pub fn pause(&mut self) -> Result<(), Error> {
        self.signal(nix::sys::signal::Signal::SIGSTOP)?;
        self.paused = true;
        Ok(())
    }

    /// SIGCONT after [`Node::pause`].
    pub fn resume(&mut self) -> Result<(), Error> {
        self.signal(nix::sys::signal::Signal::SIGCONT)?;
        self.paused = false;
        Ok(())
    }

    fn signal(&self, signal: nix::sys::signal::Signal) -> Result<(), Error> {
        let pid = self
            .pid()
            .ok_or_else(|| Error::new(format!("node {} is not running", self.slot)))?;
        let pid = i32::try_from(pid).map_err(|_| Error::new(format!("pid {pid}")))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .map_err(|e| Error::new(format!("{signal} to node {}: {e}", self.slot)))
    }

    /// The exit status if the child has exited on its own.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        self.paused = false;
        Some(status)
    }

    /// The end of the node's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read(&self.log_path).unwrap_or_default();
        let start = log.len().saturating_sub(LOG_TAIL_BYTES);
        String::from_utf8_lossy(&log[start..]).into_owned()
    }

    fn exited_error(&mut self, when: &str) -> Result<(), Error> {
        match self.exited() {
            Some(status) => Err(Error::new(format!(
                "node {} exited with {status} {when}; log:\n{}",
                self.slot,
                self.log_tail()
            ))),
            None => Ok(()),
        }
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

/// How long a join took from the spawn of `cradle join`.
#[derive(Debug, Clone, Copy)]
pub struct JoinTimes {
    /// Until the leader lists the node as a voter (or a member, beyond
    /// five voters).
    pub to_member: Duration,
    /// Until every running node applied the leader's commit index.
    pub caught_up: Duration,
}

/// What [`Cluster::digests`] found: every running node reports this digest
/// of its state, covering the log up to this index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub index: u64,
    pub digest: String,
}

/// Nodes as child processes on loopback. Fields drop in order: the nodes
/// (killed) before the relays and the directory they live in.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub options: Options,
    /// The cluster CA, as the first node wrote it.
    pub ca_pem: String,
    /// `sha256:<hex>` of the CA.
    pub ca_hash: String,
    /// An admin bearer token, valid on every member.
    pub token: String,
    exe: PathBuf,
    http: reqwest::Client,
    relays: Option<Relays>,
    root: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `n` nodes and waits until all are caught-up members (voters
    /// up to five) under one leader.
    pub async fn start(n: usize, options: Options) -> Result<Cluster, Error> {
        let mut cluster = Cluster::start_first(options).await?;
        for _ in 1..n {
            let slot = cluster.add_slot()?;
            cluster.join(slot).await?;
        }
        cluster.wait_converged(CONVERGE_LIMIT).await?;
        Ok(cluster)
    }

    /// Starts the first node only, logs in and waits for it to lead.
    pub async fn start_first(options: Options) -> Result<Cluster, Error> {
        crate::tls::install_crypto_provider();
        let exe = options.resolve_exe()?;
        let (root, temp) = match &options.root {
            Some(root) => {
                std::fs::create_dir_all(root)?;
                (root.clone(), None)
            }
            None => {
                let temp = tempfile::tempdir()?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let relays = if options.relay {
            Some(Relays::new()?)
        } else {
            None
        };
        let mut first = new_node(&root, 0, relays.as_ref())?;
        spawn(&exe, &mut first, &options, &["server".to_string()])?;
        let ca_pem = wait_ca_file(&mut first, START_LIMIT).await?;
        let ca_hash = crate::tls::fingerprint_pem(&ca_pem)
            .map_err(|e| Error::new(format!("CA fingerprint: {e}")))?;
        let config = crate::tls::client_config_for_ca(&ca_pem)
            .map_err(|e| Error::new(format!("CA config: {e}")))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .pool_max_idle_per_host(1024)
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        let mut cluster = Cluster {
            nodes: vec![first],
            options,
            ca_pem,
            ca_hash,
            token: String::new(),
            exe,
            http,
            relays,
            root,
            _temp: temp,
        };
        cluster.wait_api(0, START_LIMIT).await?;
        cluster.token = cluster.login(0, START_LIMIT).await?;
        cluster.wait_ready(0, START_LIMIT).await?;
        cluster.wait_leader(LEADER_LIMIT).await?;
        Ok(cluster)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The HTTPS client trusting the cluster CA (no token attached).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `https://<api addr of slot i><path>`.
    pub fn url(&self, i: usize, path: &str) -> String {
        format!("https://{}{path}", self.nodes[i].api_addr)
    }

    /// Slots whose process is running (paused ones included).
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect()
    }

    /// A fresh slot with its own address, ports and directories; not started.
    pub fn add_slot(&mut self) -> Result<usize, Error> {
        let slot = self.nodes.len();
        if slot >= MAX_SLOTS {
            return Err(Error::new("out of loopback addresses"));
        }
        self.nodes
            .push(new_node(&self.root, slot, self.relays.as_ref())?);
        Ok(slot)
    }

    /// The slot of the node with Raft id `id`.
    pub fn slot_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == Some(id))
    }

    /// `GET /api/v1/status` on slot `i`, or `None` if it does not answer
    /// 200 within the poll timeout.
    pub async fn try_status(&self, i: usize) -> Option<Value> {
        let response = self
            .http
            .get(self.url(i, "/api/v1/status"))
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

    /// Waits until slot `i` answers `GET /api/v1/ca`; fails at once if the
    /// child exits.
    pub async fn wait_api(&mut self, i: usize, limit: Duration) -> Result<Duration, Error> {
        let started = Instant::now();
        while started.elapsed() < limit {
            self.nodes[i].exited_error("before serving")?;
            if let Ok(response) = self
                .http
                .get(self.url(i, "/api/v1/ca"))
                .timeout(POLL_TIMEOUT)
                .send()
                .await
            {
                if response.status().is_success() {
                    return Ok(started.elapsed());
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Err(Error::new(format!(
            "node {i} at {} not serving within {limit:?}; log:\n{}",
            self.nodes[i].api_addr,
            self.nodes[i].log_tail()
        )))
    }

    /// Waits until slot `i` answers an authenticated status call and
    /// records its Raft id; returns the status.
    pub async fn wait_ready(&mut self, i: usize, limit: Duration) -> Result<Value, Error> {
        let started = Instant::now();
        while started.elapsed() < limit {
            self.nodes[i].exited_error("")?;
            if let Some(status) = self.try_status(i).await {
                if let Some(id) = status["node_id"].as_u64() {
                    if let Some(other) = self.slot_of(id).filter(|&s| s != i) {
                        return Err(Error::new(format!(
                            "node {i} reports id {id}, which node {other} already has"
                        )));
                    }
                    self.nodes[i].id = Some(id);
                    return Ok(status);
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Err(Error::new(format!(
            "node {i} gave no status within {limit:?}; log:\n{}",
            self.nodes[i].log_tail()
        )))
    }

    /// An admin token from slot `i` (a write: it needs a leader).
    pub async fn login(&self, i: usize, limit: Duration) -> Result<String, Error> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < limit {
            match self
                .http
                .post(self.url(i, "/api/v1/auth/token"))
                .basic_auth("admin", Some(ADMIN_PASSWORD))
                .timeout(Duration::from_secs(10))
                .send()
                .await
            {
                Ok(response) if response.status().is_success() => {
                    let grant: Value = response.json().await?;
                    return grant["token"]
                        .as_str()
                        .map(str::to_string)
                        .ok_or_else(|| Error::new(format!("no token in {grant}")));
                }
                Ok(response) => last = format!("{}", response.status()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::new(format!(
            "no admin token from node {i} within {limit:?}: {last}"
        )))
    }

    /// Running slots that are neither paused nor cut off: the nodes expected
    /// to agree with each other.
    pub fn reachable(&self) -> Vec<usize> {
        self.running()
            .into_iter()
            .filter(|&i| !self.nodes[i].is_paused() && !self.is_cut(i))
            .collect()
    }

    /// Whether slot `i` is cut off.
    pub fn is_cut(&self, i: usize) -> bool {
        self.relays
            .as_ref()
            .is_some_and(|r| r.is_cut(IpAddr::V4(self.nodes[i].ip)))
    }

    /// Statuses of the [reachable](Cluster::reachable) nodes.
    async fn statuses(&self) -> Vec<(usize, Option<Value>)> {
        let mut statuses = Vec::new();
        for i in self.reachable() {
            statuses.push((i, self.try_status(i).await));
        }
        statuses
    }

    /// Waits until every reachable node names the same leader, and
    /// that leader reports itself leader; returns the leader's slot.
    pub async fn wait_leader(&self, limit: Duration) -> Result<usize, Error> {
        self.wait_leader_status(limit).await.map(|(slot, _)| slot)
    }

    /// [`Cluster::wait_leader`], with the leader's status.
    pub async fn wait_leader_status(&self, limit: Duration) -> Result<(usize, Value), Error> {
        let started = Instant::now();
        let mut last = Vec::new();
        while started.elapsed() < limit {
            let statuses = self.statuses().await;
            if let Some(leader) = agreed_leader(&statuses) {
                if let Some(slot) = self.slot_of(leader) {
                    let leader_status = statuses.iter().find_map(|(i, s)| {
                        s.as_ref()
                            .filter(|s| *i == slot && s["role"] == "leader")
                            .cloned()
                    });
                    if let Some(status) = leader_status {
                        return Ok((slot, status));
                    }
                }
            }
            last = statuses;
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Err(Error::new(format!(
            "no agreed leader within {limit:?}; last statuses: {}",
            brief(&last)
        )))
    }

    /// Waits until the running nodes agree on a leader and every one has
    /// applied exactly the leader's commit index (no writes may be in
    /// flight) and no membership change is half done; returns that index.
    /// After this, local (stale) reads on every running node see the same
    /// state.
    pub async fn wait_converged(&self, limit: Duration) -> Result<u64, Error> {
        let started = Instant::now();
        let mut last = Vec::new();
        while started.elapsed() < limit {
            let leader = self
                .wait_leader(limit.saturating_sub(started.elapsed()))
                .await?;
            let before = self.try_status(leader).await;
            let statuses = self.statuses().await;
            let after = self.try_status(leader).await;
            if let (Some(before), Some(after)) = (before, after) {
                let commit = before["commit_index"].as_u64();
                // A joint configuration needs the old voters' majority too:
                // a membership change still under way is not converged.
                let same_leader = before["role"] == "leader"
                    && after["role"] == "leader"
                    && before["term"] == after["term"]
                    && before["membership_joint"] != true
                    && after["membership_joint"] != true;
                let all_applied = statuses.iter().all(|(_, s)| {
                    s.as_ref().is_some_and(|s| {
                        s["applied_index"].as_u64() == commit && s["leader"] == before["node_id"]
                    })
                });
                let members = member_ids(&before["members"]);
                let all_members = statuses
                    .iter()
                    .all(|(i, _)| self.nodes[*i].id.is_some_and(|id| members.contains(&id)));
                if let Some(commit) = commit {
                    if same_leader
                        && after["commit_index"].as_u64() == Some(commit)
                        && all_applied
                        && all_members
                    {
                        return Ok(commit);
                    }
                }
            }
            last = statuses;
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Err(Error::new(format!(
            "running nodes did not converge within {limit:?}; last statuses: {}",
            brief(&last)
        )))
    }

    /// Waits until slot `i` follows the leader and has applied at least the
    /// commit index the leader reports on entry (writes may go on).
    pub async fn wait_caught_up(&self, i: usize, limit: Duration) -> Result<(), Error> {
        let started = Instant::now();
        let (_, leader) = self.wait_leader_status(limit).await?;
        let target = leader["commit_index"].as_u64().unwrap_or(0);
        while started.elapsed() < limit {
            if let Some(status) = self.try_status(i).await {
                if status["leader"] == leader["node_id"]
                    && status["applied_index"].as_u64().unwrap_or(0) >= target
                {
                    return Ok(());
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Err(Error::new(format!(
            "node {i} did not reach index {target} within {limit:?}"
        )))
    }

    /// Converges, then compares every running node's state digest: equal
    /// digests at one index, or an error naming the nodes that differ or
    /// report none. (The digest's index is the last entry that changed
    /// state, so it may trail the converged commit index.)
    pub async fn digests(&self, limit: Duration) -> Result<Digests, Error> {
        let commit = self.wait_converged(limit).await?;
        let mut seen: Vec<(usize, Option<(u64, String)>)> = Vec::new();
        for (i, status) in self.statuses().await {
            let status = status.ok_or_else(|| Error::new(format!("node {i}: no status")))?;
            seen.push((i, state_digest(&status)));
        }
        let shown = || {
            seen.iter()
                .map(|(i, d)| format!("\n  node {i}: {d:?}"))
                .collect::<String>()
        };
        let first = seen.first().and_then(|(_, d)| d.clone());
        let Some((index, digest)) = first else {
            return Err(Error::new(format!("no state digest reported:{}", shown())));
        };
        let agree = seen
            .iter()
            .all(|(_, d)| d.as_ref() == Some(&(index, digest.clone())));
        if !agree || index > commit {
            return Err(Error::new(format!(
                "state digests differ at converged commit index {commit}:{}",
                shown()
            )));
        }
        Ok(Digests { index, digest })
    }

    /// `POST /api/v1/cluster/tokens` through slot `via`; checks the reply's
    /// shape and splits its join command. A `503` (no leader for a moment)
    /// is retried for up to [`LEADER_LIMIT`].
    pub async fn create_join_token(
        &self,
        via: usize,
        ttl_secs: u64,
        uses: u32,
    ) -> Result<JoinToken, Error> {
        let started = Instant::now();
        loop {
            let response = self
                .http
                .post(self.url(via, "/api/v1/cluster/tokens"))
                .bearer_auth(&self.token)
                .json(&json!({"ttl_secs": ttl_secs, "uses": uses}))
                .send()
                .await?;
            let status = response.status().as_u16();
            if status == 503 && started.elapsed() < LEADER_LIMIT {
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if status != 201 {
                return Err(Error::new(format!(
                    "POST /cluster/tokens on node {via}: {status} {body}"
                )));
            }
            return parse_join_token(body);
        }
    }

    /// Runs `cradle <args>` as slot `i`'s process (with the slot's
    /// environment) and returns at once.
    pub fn spawn(&mut self, i: usize, args: &[String]) -> Result<(), Error> {
        if self.nodes[i].is_running() {
            return Err(Error::new(format!("node {i} is already running")));
        }
        spawn(&self.exe, &mut self.nodes[i], &self.options, args)
    }

    /// Runs `cradle <args>` as slot `i` and waits for it to exit, for
    /// commands that must fail (a bad join); kills it and fails if it still
    /// runs after `limit`.
    pub async fn run_to_exit(
        &mut self,
        i: usize,
        args: &[String],
        limit: Duration,
    ) -> Result<ExitStatus, Error> {
        self.spawn(i, args)?;
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.nodes[i].exited() {
                return Ok(status);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        let log = self.nodes[i].log_tail();
        self.nodes[i].kill();
        Err(Error::new(format!(
            "`cradle {}` still running after {limit:?}; log:\n{log}",
            args.join(" ")
        )))
    }

    /// Joins slot `i` with a fresh one-use token from the leader and waits
    /// until it is a caught-up member (a voter while voters are fewer than
    /// five).
    pub async fn join(&mut self, i: usize) -> Result<JoinTimes, Error> {
        let leader = self.wait_leader(LEADER_LIMIT).await?;
        let token = self.create_join_token(leader, 3600, 1).await?;
        self.join_with(i, &token, JOIN_LIMIT).await
    }

    /// Joins slot `i` with `token`, as [`Cluster::join`], within `limit`.
    pub async fn join_with(
        &mut self,
        i: usize,
        token: &JoinToken,
        limit: Duration,
    ) -> Result<JoinTimes, Error> {
        let leader = self.wait_leader(LEADER_LIMIT).await?;
        let voters_before = self
            .try_status(leader)
            .await
            .map(|s| voter_count(&s["members"]))
            .unwrap_or(0);
        let started = Instant::now();
        self.spawn(i, &token.args())?;
        self.wait_api(i, limit).await?;
        let status = self
            .wait_ready(i, limit.saturating_sub(started.elapsed()))
            .await?;
        let id = status["node_id"]
            .as_u64()
            .ok_or_else(|| Error::new(format!("no node_id in {status}")))?;
        let want_voter = voters_before < MAX_VOTERS;
        self.wait_member(id, want_voter, limit.saturating_sub(started.elapsed()))
            .await?;
        let to_member = started.elapsed();
        self.wait_converged(limit.saturating_sub(started.elapsed()))
            .await?;
        Ok(JoinTimes {
            to_member,
            caught_up: started.elapsed(),
        })
    }

    /// Waits until the leader lists `id` as a member (and as a voter if
    /// `voter`).
    pub async fn wait_member(&self, id: u64, voter: bool, limit: Duration) -> Result<(), Error> {
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < limit {
            let (_, status) = self
                .wait_leader_status(limit.saturating_sub(started.elapsed()))
                .await?;
            let found = status["members"].as_array().is_some_and(|members| {
                members
                    .iter()
                    .any(|m| m["id"].as_u64() == Some(id) && (!voter || m["voter"] == true))
            });
            if found {
                return Ok(());
            }
            last = Some(status);
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Err(Error::new(format!(
            "node id {id} not a {} within {limit:?}; leader status: {last:?}",
            if voter { "voter" } else { "member" }
        )))
    }

    /// SIGKILL slot `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// SIGSTOP slot `i`.
    pub fn pause(&mut self, i: usize) -> Result<(), Error> {
        self.nodes[i].pause()
    }

    /// SIGCONT slot `i`.
    pub fn resume(&mut self, i: usize) -> Result<(), Error> {
        self.nodes[i].resume()
    }

    fn relays(&self) -> Result<&Relays, Error> {
        self.relays
            .as_ref()
            .ok_or_else(|| Error::new("cut and heal need Options::relay"))
    }

    /// Cuts slot `i` off from every other node (peer RPC, both ways); its
    /// API stays reachable by clients.
    pub fn cut(&self, i: usize) -> Result<(), Error> {
        self.relays()?.cut(IpAddr::V4(self.nodes[i].ip));
        Ok(())
    }

    /// Undoes [`Cluster::cut`].
    pub fn heal(&self, i: usize) -> Result<(), Error> {
        self.relays()?.heal(IpAddr::V4(self.nodes[i].ip));
        Ok(())
    }

    /// Restarts slot `i` with `cradle server` and the same environment, and
    /// waits until it serves and follows a leader.
    pub async fn restart(&mut self, i: usize) -> Result<Duration, Error> {
        let started = Instant::now();
        self.spawn(i, &["server".to_string()])?;
        self.wait_api(i, START_LIMIT).await?;
        let id = self.nodes[i].id;
        self.wait_ready(i, START_LIMIT.saturating_sub(started.elapsed()))
            .await?;
        if self.nodes[i].id != id {
            return Err(Error::new(format!(
                "node {i} came back with id {:?}, not {id:?}",
                self.nodes[i].id
            )));
        }
        while started.elapsed() < START_LIMIT {
            if let Some(status) = self.try_status(i).await {
                if status["leader"].as_u64().is_some() {
                    return Ok(started.elapsed());
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Err(Error::new(format!(
            "restarted node {i} found no leader within {START_LIMIT:?}; log:\n{}",
            self.nodes[i].log_tail()
        )))
    }

    /// `GET /api/v1/cluster/nodes` on slot `i`: the members as sorted
    /// `(id, voter, api_addr)`; a node is a voter by its `voter` field or,
    /// without one, by its `role` (`leader` or `voter`, not `removed`).
    pub async fn cluster_nodes(&self, i: usize) -> Result<Vec<(u64, bool, String)>, Error> {
        let response = self
            .http
            .get(self.url(i, "/api/v1/cluster/nodes"))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(Error::new(format!(
                "GET /cluster/nodes on node {i}: {status} {body}"
            )));
        }
        let list = match &body {
            Value::Array(_) => &body,
            Value::Object(o) => o
                .get("nodes")
                .or_else(|| o.get("members"))
                .unwrap_or(&Value::Null),
            _ => &Value::Null,
        };
        let list = list
            .as_array()
            .ok_or_else(|| Error::new(format!("unexpected /cluster/nodes body: {body}")))?;
        let mut members = Vec::new();
        for m in list {
            let id = m["id"]
                .as_u64()
                .ok_or_else(|| Error::new(format!("member without id: {m}")))?;
            let voter = m["voter"].as_bool().unwrap_or_else(|| {
                m["removed"] != true && matches!(m["role"].as_str(), Some("leader" | "voter"))
            });
            members.push((id, voter, m["api_addr"].as_str().unwrap_or("").to_string()));
        }
        members.sort();
        Ok(members)
    }

    /// Every object of `kind` in slot `i`'s local (possibly stale) state,
    /// paged by `X-Next-Cursor`.
    pub async fn list_all(&self, i: usize, kind: &str) -> Result<Vec<Value>, Error> {
        let mut all = Vec::new();
        self.for_each_page(i, kind, |page| all.extend(page)).await?;
        Ok(all)
    }

    /// How many objects of `kind` slot `i` holds, without keeping them.
    pub async fn count_all(&self, i: usize, kind: &str) -> Result<usize, Error> {
        let mut count = 0;
        self.for_each_page(i, kind, |page| count += page.len())
            .await?;
        Ok(count)
    }

    async fn for_each_page(
        &self,
        i: usize,
        kind: &str,
        mut f: impl FnMut(Vec<Value>),
    ) -> Result<(), Error> {
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![("limit", PAGE_LIMIT.to_string())];
            if let Some(c) = &cursor {
                query.push(("cursor", c.clone()));
            }
            let response = self
                .http
                .get(self.url(i, &format!("/api/v1/{kind}")))
                .bearer_auth(&self.token)
                .query(&query)
                .send()
                .await?;
            if !response.status().is_success() {
                return Err(Error::new(format!(
                    "listing {kind} on node {i}: {}",
                    response.status()
                )));
            }
            cursor = response
                .headers()
                .get("x-next-cursor")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            f(response.json().await?);
            if cursor.is_none() {
                return Ok(());
            }
        }
        Err(Error::new(format!(
            "listing {kind} on node {i}: more than {MAX_PAGES} pages"
        )))
    }
}

/// The slot's addresses and directories; ports are free on its own address.
fn new_node(root: &Path, slot: usize, relays: Option<&Relays>) -> Result<Node, Error> {
    let last = u8::try_from(slot + 2).map_err(|_| Error::new("slot out of range"))?;
    let ip = Ipv4Addr::new(127, 0, 0, last);
    let dir = root.join(format!("node{slot}"));
    std::fs::create_dir_all(&dir)?;
    let rpc_addr = SocketAddr::from((ip, free_port(ip)?));
    let peer_addr = match relays {
        Some(relays) => relays.add(IpAddr::V4(ip), rpc_addr)?,
        None => rpc_addr,
    };
    Ok(Node {
        slot,
        ip,
        data_dir: dir.join("data"),
        config_dir: dir.join("config"),
        log_path: dir.join("log"),
        api_addr: SocketAddr::from((ip, free_port(ip)?)),
        rpc_addr,
        peer_addr,
        id: None,
        child: None,
        paused: false,
    })
}

fn free_port(ip: Ipv4Addr) -> Result<u16, Error> {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::new(format!("a free port on {ip}: {e}")))
}

/// Starts `cradle <args>` as `node`'s process with its environment; no
/// `CRADLE_*` variable of the caller's own environment leaks in.
fn spawn(exe: &Path, node: &mut Node, options: &Options, args: &[String]) -> Result<(), Error> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log_path)?;
    let mut command = match options.open_files_soft_limit {
        // `exec` keeps the pid, so the handle still names the server.
        Some(limit) => {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(format!(r#"ulimit -Sn {limit} && exec "$0" "$@""#))
                .arg(exe);
            sh
        }
        None => Command::new(exe),
    };
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
        .env(
            "CRADLE_ADVERTISE_RPC_PORT",
            node.peer_addr.port().to_string(),
        )
        .env("CRADLE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("CRADLE_LOG", &options.log)
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
        .envs(options.env.iter().map(|(k, v)| (k, v)))
        // Port 67 is one per host: DHCP only where a test asks for it.
        .envs(match options.dhcp_port {
            Some(port) => vec![
                (
                    "CRADLE_DHCP_LISTEN".to_string(),
                    format!("{}:{port}", node.ip),
                ),
                (
                    "CRADLE_PROXY_DHCP_LISTEN".to_string(),
                    format!("{}:{}", node.ip, port.saturating_add(1)),
                ),
            ],
            None if options.env.iter().any(|(k, _)| k == "CRADLE_DHCP_LISTEN") => vec![],
            None => vec![("CRADLE_DHCP_OFF".to_string(), "true".to_string())],
        })
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    node.child = Some(
        command
            .spawn()
            .map_err(|e| Error::new(format!("starting {}: {e}", exe.display())))?,
    );
    node.paused = false;
    Ok(())
}

/// Waits until the first node has written its CA.
async fn wait_ca_file(node: &mut Node, limit: Duration) -> Result<String, Error> {
    let started = Instant::now();
    let path = node.data_dir.join("ca.pem");
    while started.elapsed() < limit {
        node.exited_error("before writing its CA")?;
        if let Ok(pem) = std::fs::read_to_string(&path) {
            if pem.contains("-----END CERTIFICATE-----") {
                return Ok(pem);
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Err(Error::new(format!(
        "no {} within {limit:?}; log:\n{}",
        path.display(),
        node.log_tail()
    )))
}

/// Checks a `POST /cluster/tokens` reply body and splits its join command.
pub fn parse_join_token(grant: Value) -> Result<JoinToken, Error> {
    let bad = |what: &str| Error::new(format!("join token grant {grant}: {what}"));
    let token = grant["token"].as_str().ok_or_else(|| bad("no token"))?;
    let id = grant["id"].as_str().ok_or_else(|| bad("no id"))?;
    if !(token.starts_with(&format!("{id}.")) && token.len() > id.len() + 1) {
        return Err(bad("token is not <id>.<secret>"));
    }
    if grant["expires_at_unix"].as_u64().is_none() || grant["uses"].as_u64().is_none() {
        return Err(bad("no expires_at_unix or uses"));
    }
    let command = grant["join_command"]
        .as_str()
        .ok_or_else(|| bad("no join_command"))?;
    let words: Vec<&str> = command.split_whitespace().collect();
    let find = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|p| words.get(p + 1))
            .map(|w| w.to_string())
            .ok_or_else(|| bad(&format!("no {flag} in the join command")))
    };
    if words.get(..2) != Some(&["cradle", "join"][..]) {
        return Err(bad("the join command is not `cradle join …`"));
    }
    if find("--token")? != token {
        return Err(bad("the join command carries another token"));
    }
    let ca_hash = find("--ca-hash")?;
    if !ca_hash.starts_with("sha256:") {
        return Err(bad("--ca-hash is not sha256:"));
    }
    let endpoint = words
        .iter()
        .find(|w| w.starts_with("https://"))
        .ok_or_else(|| bad("no https:// endpoint"))?
        .to_string();
    Ok(JoinToken {
        token: token.to_string(),
        ca_hash,
        endpoint,
        grant,
    })
}

/// `(index, digest)` from a status body (`state_digest`, `state_digest_index`).
fn state_digest(status: &Value) -> Option<(u64, String)> {
    let digest = status["state_digest"].as_str()?;
    let index = status["state_digest_index"].as_u64()?;
    Some((index, digest.to_string()))
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

fn member_ids(members: &Value) -> Vec<u64> {
    members
        .as_array()
        .map(|ms| ms.iter().filter_map(|m| m["id"].as_u64()).collect())
        .unwrap_or_default()
}

fn voter_count(members: &Value) -> usize {
    members
        .as_array()
        .map(|ms| ms.iter().filter(|m| m["voter"] == true).count())
        .unwrap_or(0)
}

/// Statuses in one line each, for error messages.
fn brief(statuses: &[(usize, Option<Value>)]) -> String {
    statuses
        .iter()
        .map(|(i, s)| match s {
            Some(s) => format!(
                "\n  node {i}: id {} role {} leader {} term {} commit {} applied {} joint {} members {}",
                s["node_id"],
                s["role"],
                s["leader"],
                s["term"],
                s["commit_index"],
                s["applied_index"],
                s["membership_joint"],
                s["members"]
            ),
            None => format!("\n  node {i}: no answer"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_read_from_the_status() {
        let check = |status: Value, expected: Option<(u64, &str)>| {
            assert_eq!(
                state_digest(&status),
                expected.map(|(i, d)| (i, d.to_string())),
                "{status}"
            );
        };
        check(json!({"applied_index": 7}), None);
        check(
            json!({"applied_index": 7, "state_digest": "ab", "state_digest_index": 6}),
            Some((6, "ab")),
        );
        check(json!({"state_digest": "ab"}), None);
    }

    #[test]
    fn leader_only_when_all_agree() {
        let s = |leader: u64| Some(json!({ "leader": leader }));
        assert_eq!(agreed_leader(&[(0, s(1)), (1, s(1))]), Some(1));
        assert_eq!(agreed_leader(&[(0, s(1)), (1, s(2))]), None);
        assert_eq!(agreed_leader(&[(0, s(1)), (1, None)]), None);
    }
}
