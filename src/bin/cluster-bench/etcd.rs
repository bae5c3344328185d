//! Debian's `etcd` (package `etcd-server`) as the bench's reference: members
//! as child processes on loopback (one address each, 127.0.1.x), TLS between
//! members (mutual, certificates from a CA made here with rcgen) and to
//! clients, fsync as shipped. Clients talk to its gRPC gateway (`/v3/...`,
//! JSON over HTTPS), so the bench needs no gRPC client of its own.

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use base64::Engine as _;
use serde_json::{json, Value};

/// Longest a member may take to answer after a spawn or restart.
const START_LIMIT: Duration = Duration::from_secs(60);
const POLL_TIMEOUT: Duration = Duration::from_millis(1000);
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Per-request timeout: above etcd's own 5 s request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most members: one loopback address each.
const MAX_MEMBERS: usize = 16;

/// Raft timing given to etcd; `None` fields keep etcd's defaults
/// (heartbeat 100 ms, election timeout 1000 ms).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub heartbeat_ms: Option<u64>,
    pub election_ms: Option<u64>,
}

struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    data_dir: PathBuf,
    log_path: PathBuf,
    /// etcd's member id (decimal, as the gateway prints it).
    id: Option<String>,
    child: Option<Child>,
}

impl Member {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read(&self.log_path).unwrap_or_default();
        let start = log.len().saturating_sub(2_000);
        String::from_utf8_lossy(&log[start..]).into_owned()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An etcd cluster of child processes.
pub struct Etcd {
    exe: PathBuf,
    timing: Timing,
    members: Vec<Member>,
    tls_dir: PathBuf,
    initial_cluster: String,
    pub http: reqwest::Client,
}

impl Etcd {
    /// Starts `n` members under `root` and waits for a leader.
    pub async fn start(exe: &Path, root: &Path, n: usize, timing: Timing) -> anyhow::Result<Etcd> {
        if n == 0 || n > MAX_MEMBERS {
            bail!("an etcd cluster of {n} members");
        }
        std::fs::create_dir_all(root)?;
        let tls_dir = root.join("tls");
        std::fs::create_dir_all(&tls_dir)?;
        let (ca_pem, ca_key_pem) = cradle::tls::generate_ca("etcd bench CA")?;
        std::fs::write(tls_dir.join("ca.pem"), &ca_pem)?;
        let mut members = Vec::new();
        for i in 0..n {
            let ip = Ipv4Addr::new(127, 0, 1, 2 + u8::try_from(i)?);
            let port = || -> anyhow::Result<u16> {
                Ok(std::net::TcpListener::bind((ip, 0))
                    .with_context(|| format!("binding {ip}"))?
                    .local_addr()?
                    .port())
            };
            let name = format!("m{i}");
            let key = rcgen::KeyPair::generate()?;
            let params = cradle::tls::server_cert_params(&name, &[ip.to_string()])?;
            let cert = cradle::tls::sign_with_ca(&ca_pem, &ca_key_pem, params, &key)?;
            std::fs::write(tls_dir.join(format!("{name}.pem")), cert)?;
            std::fs::write(tls_dir.join(format!("{name}-key.pem")), key.serialize_pem())?;
            let dir = root.join(&name);
            std::fs::create_dir_all(&dir)?;
            members.push(Member {
                name,
                client: SocketAddr::from((ip, port()?)),
                peer: SocketAddr::from((ip, port()?)),
                data_dir: dir.join("data"),
                log_path: dir.join("log"),
                id: None,
                child: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=https://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let config = cradle::tls::client_config_for_ca(&ca_pem)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .pool_max_idle_per_host(1024)
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        let mut etcd = Etcd {
            exe: exe.to_path_buf(),
            timing,
            members,
            tls_dir,
            initial_cluster,
            http,
        };
        for i in 0..n {
            etcd.spawn(i)?;
        }
        for i in 0..n {
            etcd.wait_ready(i).await?;
        }
        etcd.wait_leader(START_LIMIT).await?;
        Ok(etcd)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &self.members[i];
        let tls = |name: &str| self.tls_dir.join(name).display().to_string();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log_path)?;
        let mut command = Command::new(&self.exe);
        command
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", m.data_dir.display()))
            .arg(format!("--listen-client-urls=https://{}", m.client))
            .arg(format!("--advertise-client-urls=https://{}", m.client))
            .arg(format!("--listen-peer-urls=https://{}", m.peer))
            .arg(format!("--initial-advertise-peer-urls=https://{}", m.peer))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=cradle-bench")
            .arg(format!("--cert-file={}", tls(&format!("{}.pem", m.name))))
            .arg(format!(
                "--key-file={}",
                tls(&format!("{}-key.pem", m.name))
            ))
            .arg(format!(
                "--peer-cert-file={}",
                tls(&format!("{}.pem", m.name))
            ))
            .arg(format!(
                "--peer-key-file={}",
                tls(&format!("{}-key.pem", m.name))
            ))
            .arg(format!("--peer-trusted-ca-file={}", tls("ca.pem")))
            .arg("--peer-client-cert-auth")
            .arg("--logger=zap")
            .arg("--log-level=error");
        if let Some(ms) = self.timing.heartbeat_ms {
            command.arg(format!("--heartbeat-interval={ms}"));
        }
        if let Some(ms) = self.timing.election_ms {
            command.arg(format!("--election-timeout={ms}"));
        }
        // No ETCD_* variable of the bench's environment leaks in.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD") {
                command.env_remove(name);
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    pub fn client_url(&self, i: usize, path: &str) -> String {
        format!("https://{}{path}", self.members[i].client)
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .collect()
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// `POST /v3/maintenance/status` on member `i`.
    pub async fn status(&self, i: usize) -> Option<Value> {
        let response = self
            .http
            .post(self.client_url(i, "/v3/maintenance/status"))
            .json(&json!({}))
            .timeout(POLL_TIMEOUT)
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// Waits until member `i` answers its status; records its id.
    async fn wait_ready(&mut self, i: usize) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.members[i].child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.members[i].child = None;
                    bail!(
                        "etcd member {i} exited with {status}; log:\n{}",
                        self.members[i].log_tail()
                    );
                }
            }
            if let Some(status) = self.status(i).await {
                if let Some(id) = status["header"]["member_id"].as_str() {
                    self.members[i].id = Some(id.to_string());
                    return Ok(());
                }
            }
            if started.elapsed() > START_LIMIT {
                bail!(
                    "etcd member {i} not answering within {START_LIMIT:?}; log:\n{}",
                    self.members[i].log_tail()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The slot and term of the leader every running member names.
    pub async fn wait_leader(&self, limit: Duration) -> anyhow::Result<(usize, u64)> {
        let started = Instant::now();
        loop {
            let mut named = Vec::new();
            let mut term = 0;
            for i in self.running() {
                let status = self.status(i).await;
                named.push(
                    status
                        .as_ref()
                        .and_then(|s| s["leader"].as_str().map(str::to_string)),
                );
                term = term.max(status.as_ref().map_or(0, raft_term));
            }
            if let Some(Some(leader)) = named.first() {
                if named.iter().all(|n| n.as_ref() == Some(leader)) {
                    let slot = self
                        .members
                        .iter()
                        .position(|m| m.id.as_deref() == Some(leader.as_str()));
                    if let Some(slot) = slot.filter(|&s| self.members[s].child.is_some()) {
                        return Ok((slot, term));
                    }
                }
            }
            if started.elapsed() > limit {
                bail!("no agreed etcd leader within {limit:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Whether member `i` names a leader other than `old` in a term after
    /// `term` (etcd reports a member's leader, not its own role).
    pub async fn new_leader_seen(&self, i: usize, old: usize, term: u64) -> bool {
        let Some(status) = self.status(i).await else {
            return false;
        };
        let leader = status["leader"].as_str();
        let old_id = self.members[old].id.as_deref();
        leader.is_some() && leader != Some("0") && leader != old_id && raft_term(&status) > term
    }

    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Restarts member `i` on its data dir and waits until it names a leader.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.spawn(i)?;
        self.wait_ready(i).await?;
        loop {
            let leader = self.status(i).await.and_then(|s| {
                s["leader"]
                    .as_str()
                    .filter(|l| *l != "0")
                    .map(str::to_string)
            });
            if leader.is_some() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > START_LIMIT {
                bail!("restarted etcd member {i} found no leader within {START_LIMIT:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

fn raft_term(status: &Value) -> u64 {
    let term = ["raft_term", "raftTerm"]
        .iter()
        .map(|k| &status[*k])
        .find(|t| !t.is_null())
        .unwrap_or(&status["header"]["raft_term"]);
    term.as_str()
        .and_then(|t| t.parse().ok())
        .or_else(|| term.as_u64())
        .unwrap_or(0)
}

/// The body of `POST /v3/kv/put` for `key` with a value of `value_bytes`.
pub fn put_body(key: &str, value_bytes: usize) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    json!({
        "key": b64.encode(key),
        "value": b64.encode(vec![b'x'; value_bytes]),
    })
}
