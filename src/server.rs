//! `cradle server`: opens the replicated store, bootstraps a new cluster on
//! first start, and runs every listener in one tokio runtime until told to
//! stop.
//!
//! Shutdown is the same for every listener: one watch channel says "stop",
//! each server drains its connections, then the Raft node shuts down.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use std::sync::OnceLock;

use cradle_raft::{NodeConfig, NodeInfo, PeerTls, RaftNode};
use tokio::sync::{broadcast, watch};

use crate::api::{self, AppState};
use crate::auth;
use crate::cluster::info::ClusterInfo;
use crate::cluster::{self, state::node_common_name, state::ClusterNode, Identity};
use crate::config::ServerSettings;
use crate::model::User;
use crate::store::{apply::CradleApp, Command, Store};
use crate::tls;

/// Capacity of the in-process event channel; slower subscribers catch up
/// from the stored feed.
const EVENT_CHANNEL: usize = 4_096;
/// How long shutdown waits for each listener, and for Raft, to stop.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// How long the API listener lets open connections finish on shutdown:
/// under `SHUTDOWN_WAIT`, so it closes the rest itself before being stopped.
const API_DRAIN_WAIT: Duration = Duration::from_secs(4);
/// How long first start waits for the one-voter cluster to elect itself.
const FIRST_LEADER_WAIT: Duration = Duration::from_secs(30);

/// A running node, for `main` and for tests that run nodes in-process.
pub struct Running {
    pub store: Store,
    pub api_addr: std::net::SocketAddr,
    pub rpc_addr: std::net::SocketAddr,
    pub ca_fingerprint: String,
    /// Set on the first start only, when the password was generated.
    pub generated_admin_password: Option<String>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops every listener and the Raft node, waiting a bounded time for
    /// each: a node cut off from its peers must still stop promptly.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for mut task in self.tasks {
            if tokio::time::timeout(SHUTDOWN_WAIT, &mut task)
                .await
                .is_err()
            {
                tracing::warn!("a listener did not drain in time; stopping it");
                task.abort();
            }
        }
        match tokio::time::timeout(SHUTDOWN_WAIT, self.store.raft().shutdown()).await {
            Ok(Err(e)) => tracing::warn!(error = %e, "raft shutdown"),
            Err(_) => tracing::warn!("raft did not stop in time"),
            Ok(Ok(())) => {}
        }
    }
}

/// Starts a node: TLS material, Raft, bootstrap, API and peer RPC listeners.
pub async fn start(settings: ServerSettings) -> anyhow::Result<Running> {
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

    let rpc_listener = tokio::net::TcpListener::bind(settings.rpc_listen)
        .await
        .with_context(|| format!("binding peer RPC listener {}", settings.rpc_listen))?;
    let api_listener = tokio::net::TcpListener::bind(settings.api_listen)
        .await
        .with_context(|| format!("binding API listener {}", settings.api_listen))?;
    let rpc_addr = rpc_listener.local_addr()?;
    let api_addr = api_listener.local_addr()?;
    let host = settings.advertised_host();

    let (events, _) = broadcast::channel(EVENT_CHANNEL);
    let app = Arc::new(CradleApp::new(events.clone(), settings.event_retention));
    let store_slot: Arc<OnceLock<Store>> = Arc::default();
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
    node_config.peer_admission = Some(cluster::peer_admission(store_slot.clone()));
    let raft = Arc::new(
        RaftNode::open(node_config, app)
            .await
            .context("opening the Raft node")?,
    );

    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    {
        let raft = raft.clone();
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = raft.serve_rpc(rpc_listener, shutdown).await {
                tracing::error!(error = %e, "peer RPC server failed");
            }
        }));
    }

    if identity.founder && !raft.is_initialized().await {
        tracing::info!("empty data dir: initializing a one-voter cluster");
        raft.initialize_single()
            .await
            .context("initializing the cluster")?;
    }
    let store = Store::new(raft.clone(), events);
    let _ = store_slot.set(store.clone());
    let generated_admin_password = if identity.founder {
        bootstrap(&store, &settings, identity.node_id, node_info).await?
    } else {
        None
    };
    // Once bootstrapped, so a script that waits for the file finds a cluster
    // it can log in to. Written again on a later start if it went missing.
    if identity.founder && !ClusterInfo::exists(&settings.data_dir) {
        ClusterInfo::new(&ca_fingerprint, &host, api_addr.port(), identity.node_id)
            .write(&settings.data_dir)?;
    }
    tasks.push(tokio::spawn(cluster::reconcile_forever(
        store.clone(),
        stopped.clone(),
    )));
    tasks.push(tokio::spawn(purge_expired_tokens_forever(
        store.clone(),
        identity.node_id,
        settings.clock.clone(),
        stopped.clone(),
    )));

    let state = AppState::new(store.clone(), settings.clone(), api_tls.ca_pem.clone());
    let router = api::router(state);
    let listener = api::listener::Listener::new(
        api_listener,
        Arc::new(api_tls.server_config()?),
        router,
        api_limits,
    );
    tasks.push(tokio::spawn(listener.run(stopped.clone())));
    tracing::info!(%api_addr, %rpc_addr, ca = %ca_fingerprint, "cradle serving");
    Ok(Running {
        store,
        api_addr,
        rpc_addr,
        ca_fingerprint,
        generated_admin_password,
        stop,
        tasks,
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
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TOKEN_PURGE_EVERY) => {}
            _ = stopped.wait_for(|s| *s) => return,
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
    let admin = User {
        name: "admin".into(),
        description: "Created on first start".into(),
        password_hash,
        admin: true,
        generation: 0,
        revision: 0,
    };
    let read = |name: &str| std::fs::read_to_string(settings.data_dir.join(name));
    let founder = ClusterNode {
        id: node_id,
        rpc_addr: info.rpc_addr,
        api_addr: info.api_addr,
        joined_at_unix: settings.clock.unix_now(),
        removed: false,
    };
    store
        .submit(Command::Bootstrap {
            admin,
            signing_key: auth::random_secret(32),
            ca_cert_pem: read(tls::CA_CERT_FILE)?,
            ca_key_pem: read(tls::CA_KEY_FILE)
                .context("the founding node's CA key is missing from the data dir")?,
            founder,
        })
        .await
        .context("bootstrapping the cluster")?;
    Ok(generated)
}
