//! `cradle server`: binds every listener, opens the replicated store,
//! bootstraps a new cluster on first start, and runs every service and
//! background task in one tokio runtime until told to stop.
//!
//! Every listener is started here, the same way (see [`crate::service`]):
//! bound before Raft opens, so a port conflict fails the start at once with
//! the address; run under [`Services`], so one shutdown drains them all
//! within a bound, then stops the background tasks, then Raft. A start that
//! fails half-way stops whatever it had started before returning the error.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use cradle_raft::{NodeConfig, NodeInfo, PeerTls, RaftNode};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use crate::api::{self, AppState};
use crate::auth;
use crate::cluster::info::ClusterInfo;
use crate::cluster::{state::node_common_name, state::ClusterNode, Identity};
use crate::config::ServerSettings;
use crate::dhcp;
use crate::membership;
use crate::service::{self, Failure, Service, ServiceError, Services, Shutdown};
use crate::store::record::BootstrapAdmin;
use crate::store::{apply::CradleApp, Command, Store, WeakStore};
use crate::tls;

/// Capacity of the in-process event channel; slower subscribers catch up
/// from the stored feed.
const EVENT_CHANNEL: usize = 4_096;
/// How long each stage of shutdown (services, then background tasks) may
/// take, and then Raft: a node cut off from its peers still stops within
/// three times this.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// How long the API listener lets open connections finish on shutdown:
/// under `SHUTDOWN_WAIT`, so it closes the rest itself before being stopped.
const API_DRAIN_WAIT: Duration = Duration::from_secs(4);
/// How long first start waits for the one-voter cluster to elect itself.
const FIRST_LEADER_WAIT: Duration = Duration::from_secs(30);

/// A running node, for `main` and for tests that run nodes in-process.
pub struct Running {
    pub store: Store,
    pub api_addr: SocketAddr,
    pub rpc_addr: SocketAddr,
    pub ca_fingerprint: String,
    /// Set on the first start only, when the password was generated.
    pub generated_admin_password: Option<String>,
    services: Services,
}

impl Running {
    /// Stops every service (they drain), then the background tasks, then the
    /// Raft node, waiting a bounded time for each.
    pub async fn shutdown(self) {
        stop(self.services, self.store.raft()).await;
    }

    /// Resolves if a service stops on its own (its socket failed, Raft
    /// stopped under the peer RPC server): the node cannot serve as it
    /// should and is to be stopped.
    pub async fn failed(&mut self) -> Failure {
        self.services.failed().await
    }
}

/// Stops `services`, then Raft, each within its bound.
async fn stop(services: Services, raft: &RaftNode) {
    let aborted = services.shutdown().await;
    if !aborted.is_empty() {
        tracing::warn!(?aborted, "stopped without draining");
    }
    match tokio::time::timeout(SHUTDOWN_WAIT, raft.shutdown()).await {
        Ok(Err(e)) => tracing::warn!(error = %e, "raft shutdown"),
        Err(_) => tracing::warn!("raft did not stop in time"),
        Ok(Ok(())) => {}
    }
}

/// The peer RPC server (Raft messages and forwarded writes) as a service.
/// Only members get past its mutual TLS and peer admission.
struct PeerRpc {
    raft: Arc<RaftNode>,
    listener: TcpListener,
}

impl Service for PeerRpc {
    fn name(&self) -> &'static str {
        "peer RPC"
    }

    async fn run(self, mut shutdown: Shutdown) -> Result<(), ServiceError> {
        self.raft
            .serve_rpc(self.listener, async move { shutdown.requested().await })
            .await
            .map_err(|e| ServiceError(e.to_string()))
    }
}

/// Every listening socket of a node, bound before anything else starts
/// (before `cradle join` spends its token, too).
pub struct Bound {
    api: TcpListener,
    rpc: TcpListener,
    dhcp: dhcp::start::Bound,
}

impl Bound {
    pub async fn bind(settings: &ServerSettings) -> anyhow::Result<Bound> {
        Ok(Bound {
            api: service::bind_tcp("API", settings.api_listen).await?,
            rpc: service::bind_tcp("peer RPC", settings.rpc_listen).await?,
            dhcp: dhcp::start::Bound::bind(settings).await?,
        })
    }
}

/// Starts a node: listening sockets, TLS material, Raft, bootstrap, then
/// every service and background task.
pub async fn start(settings: ServerSettings) -> anyhow::Result<Running> {
    // First, so that a port conflict is the first and only thing reported.
    let bound = Bound::bind(&settings).await?;
    start_bound(settings, bound).await
}

/// [`start`] on sockets already bound.
pub async fn start_bound(settings: ServerSettings, bound: Bound) -> anyhow::Result<Running> {
    tls::install_crypto_provider();
    // Before anything opens files: API connections, RocksDB and peer RPC
    // share this process's open-files limit.
    let api_limits =
        api::listener::Limits::from_settings(&settings, API_DRAIN_WAIT).fit_open_files_limit();
    let settings = Arc::new(settings);
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;

    let identity = match Identity::load(&settings.data_dir)? {
        Some(identity) => identity,
        // An empty data dir and no join: this node founds a new cluster.
        None => Identity {
            node_id: settings.node_id,
            founder: true,
        },
    };
    let mut sans = settings.tls_san.clone();
    sans.push(settings.advertised_host());
    // The cluster CA and this node's certificate: peer mutual TLS always
    // uses them; the API uses them unless the operator brings their own.
    let node_tls = tls::load_or_create(
        &settings.data_dir,
        &node_common_name(identity.node_id),
        &sans,
    )?;
    identity.save(&settings.data_dir)?;
    let api_tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => tls::load_files(cert, key, None)?,
        _ => node_tls.clone(),
    };
    let ca_fingerprint = api_tls.ca_fingerprint()?;
    let read = |name: &str| std::fs::read(settings.data_dir.join(name));
    let peer_tls = PeerTls {
        ca_pem: node_tls.ca_pem.clone().into_bytes(),
        cert_pem: read(tls::SERVER_CERT_FILE)?,
        key_pem: read(tls::SERVER_KEY_FILE)?,
        server_name: None,
    };
    let api_server_tls = Arc::new(api_tls.server_config()?);

    let rpc_addr = bound.rpc.local_addr()?;
    let api_addr = bound.api.local_addr()?;
    let host = settings.advertised_host();

    let (events, _) = broadcast::channel(EVENT_CHANNEL);
    if let Some(retention) = settings.event_retention {
        // A per-node value here made replicas keep different events: it is
        // replicated state now, and this setting is ignored.
        tracing::warn!(
            retention,
            "--event-retention / CRADLE_EVENT_RETENTION is ignored: event retention is the \
             cluster-wide `event_retention` pref (PATCH /api/v1/prefs/prefs); remove the setting"
        );
    }
    let app = Arc::new(CradleApp::new(events.clone()));
    let store_slot: Arc<OnceLock<WeakStore>> = Arc::default();
    let node_info = NodeInfo {
        rpc_addr: settings.advertised_rpc_addr(rpc_addr.port()),
        api_addr: format!("{host}:{}", api_addr.port()),
    };
    let mut node_config = NodeConfig::new(
        identity.node_id,
        settings.data_dir.join("raft"),
        node_info.clone(),
    );
    node_config.heartbeat_ms = settings.heartbeat_ms;
    node_config.election_min_ms = settings.election_min_ms;
    node_config.election_max_ms = settings.election_max_ms;
    node_config.snapshot_every_entries = settings.snapshot_every;
    node_config.no_leader_wait_ms = settings.no_leader_wait_ms;
    node_config.peer_tls = Some(peer_tls);
    // Peer connections leave from the address peers are told, so a
    // multi-homed host (or a test's per-node loopback address) is seen by
    // its peers as itself.
    if !settings.rpc_listen.ip().is_unspecified() {
        node_config.peer_source_ip = Some(settings.rpc_listen.ip());
    }
    node_config.peer_admission = Some(membership::peer_admission(store_slot.clone()));
    let raft = Arc::new(
        RaftNode::open(node_config, app)
            .await
            .context("opening the Raft node")?,
    );

    // From here on, a failure stops what was started before it returns.
    let mut services = Services::new(SHUTDOWN_WAIT);
    services.spawn(PeerRpc {
        raft: raft.clone(),
        listener: bound.rpc,
    });
    let (store, batcher) = Store::new(raft.clone(), events);
    let store = store.with_write_timeout(Duration::from_millis(settings.write_timeout_ms));
    services.spawn_task("store batcher", |shutdown| batcher.run(shutdown));
    let _ = store_slot.set(store.downgrade());
    let ready = async {
        if identity.founder && !raft.is_initialized().await {
            tracing::info!("empty data dir: initializing a one-voter cluster");
            raft.initialize_single()
                .await
                .context("initializing the cluster")?;
        }
        let generated_admin_password = if identity.founder {
            bootstrap(&store, &settings, identity.node_id, node_info).await?
        } else {
            None
        };
        // Once bootstrapped, so a script that waits for the file finds a
        // cluster it can log in to. Written again on a later start if it went
        // missing.
        if identity.founder && !ClusterInfo::exists(&settings.data_dir) {
            ClusterInfo::new(&ca_fingerprint, &host, api_addr.port(), identity.node_id)
                .write(&settings.data_dir)
                .context("writing cluster.json")?;
        }
        anyhow::Ok(generated_admin_password)
    };
    let generated_admin_password = match ready.await {
        Ok(password) => password,
        Err(e) => {
            stop(services, &raft).await;
            return Err(e);
        }
    };

    {
        let store = store.clone();
        services.spawn_task("membership reconciler", |shutdown| {
            membership::reconcile_forever(store, shutdown)
        });
    }
    {
        let store = store.clone();
        let node_id = identity.node_id;
        services.spawn_task("log format registration", move |shutdown| {
            membership::register_log_format(store, node_id, shutdown)
        });
    }
    {
        let store = store.clone();
        let node_id = identity.node_id;
        let clock = settings.clock.clone();
        services.spawn_task("expired token purge", move |shutdown| {
            purge_expired_tokens_forever(store, node_id, clock, shutdown)
        });
    }
    let state = AppState::new(store.clone(), settings.clone(), api_tls.ca_pem.clone());
    dhcp::start::spawn(
        &mut services,
        bound.dhcp,
        &store,
        &settings,
        identity.node_id,
        state.metrics.dhcp.clone(),
    );
    services.spawn(api::listener::Listener::new(
        bound.api,
        api_server_tls,
        api::router(state),
        api_limits,
    ));
    tracing::info!(%api_addr, %rpc_addr, ca = %ca_fingerprint, "cradle serving");
    Ok(Running {
        store,
        api_addr,
        rpc_addr,
        ca_fingerprint,
        generated_admin_password,
        services,
    })
}

/// How often the leader looks for expired token records.
const TOKEN_PURGE_EVERY: Duration = Duration::from_secs(60);
/// Records one purge command deletes; the next round takes the rest.
const TOKEN_PURGE_BATCH: u32 = 256;
/// Purge rounds back to back while each fills its batch, before waiting.
const TOKEN_PURGE_ROUNDS: usize = 16;

/// On the leader, proposes the deletion of expired token records every
/// [`TOKEN_PURGE_EVERY`], so logins do not leave records forever. Only the
/// leader proposes, so members do not race each other with the same purge.
async fn purge_expired_tokens_forever(
    store: Store,
    node_id: u64,
    clock: crate::clock::Clock,
    mut shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TOKEN_PURGE_EVERY) => {}
            _ = shutdown.requested() => return,
        }
        if store.raft().status().current_leader != Some(node_id) {
            continue;
        }
        for _ in 0..TOKEN_PURGE_ROUNDS {
            match store
                .purge_expired_tokens(clock.unix_now(), TOKEN_PURGE_BATCH)
                .await
            {
                Ok(purged) if purged >= u64::from(TOKEN_PURGE_BATCH) => continue,
                Ok(0) => break,
                Ok(purged) => {
                    tracing::debug!(purged, "expired token records purged");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purging expired token records");
                    break;
                }
            }
        }
    }
}

/// On a cluster's first start, creates the admin user and the token signing
/// key through the log. Returns the admin password if it was generated.
async fn bootstrap(
    store: &Store,
    settings: &ServerSettings,
    node_id: u64,
    info: NodeInfo,
) -> anyhow::Result<Option<String>> {
    let deadline = tokio::time::Instant::now() + FIRST_LEADER_WAIT;
    loop {
        if store.is_bootstrapped()? {
            return Ok(None);
        }
        // Only the node that created the cluster proposes; a joining node
        // receives the bootstrap through the log.
        if store.raft().status().current_leader == Some(node_id) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("no leader elected within {FIRST_LEADER_WAIT:?}; cannot bootstrap");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (password, generated) = match &settings.admin_password {
        Some(p) if !p.is_empty() => (p.clone(), None),
        _ => {
            let p = auth::random_secret(12);
            (p.clone(), Some(p))
        }
    };
    let password_hash =
        tokio::task::spawn_blocking(move || auth::hash_password(&password)).await??;
    let admin = BootstrapAdmin {
        name: "admin".into(),
        description: "Created on first start".into(),
        password_hash,
    };
    let read = |name: &str| std::fs::read_to_string(settings.data_dir.join(name));
    let founder = ClusterNode {
        id: node_id,
        rpc_addr: info.rpc_addr,
        api_addr: info.api_addr,
        joined_at_unix: settings.clock.unix_now(),
        removed: false,
        log_format: crate::store::frames::NEWEST_FORMAT,
    };
    store
        .submit(
            Command::Bootstrap {
                admin,
                signing_key: auth::random_secret(32),
                ca_cert_pem: read(tls::CA_CERT_FILE)?,
                ca_key_pem: read(tls::CA_KEY_FILE)
                    .context("the founding node's CA key is missing from the data dir")?,
                founder,
            },
            store.write_deadline(),
        )
        .await
        .context("bootstrapping the cluster")?;
    Ok(generated)
}
