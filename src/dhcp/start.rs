//! How a node brings up DHCP: sockets bound before Raft opens (like every
//! listener), the responder and its services once the store runs, and the
//! leader's reclaim of expired leases.

use std::sync::Arc;
use std::time::Duration;

use super::interfaces::{dhcp_interfaces, Interface};
use super::server::{run_machine_updates, DhcpService, Port, Responder, ResponderConfig};
use super::socket::{lacks_privilege, DhcpSocket};
use crate::config::ServerSettings;
use crate::metrics::DhcpMetrics;
use crate::service::{BindError, Limit, Services, Shutdown};
use crate::store::{Command, Store};

/// Requests handled at once per socket; more are dropped (clients
/// retransmit). Each holds a task and, at most, one proposal.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 4_096;
/// How long the DHCP services let requests in progress finish on shutdown.
const DRAIN: Duration = Duration::from_secs(3);
/// How often the leader reclaims expired leases.
const RECLAIM_EVERY: Duration = Duration::from_secs(10);
/// Leases one reclaim command frees; the next round takes the rest.
const RECLAIM_BATCH: u32 = 512;
/// Reclaim rounds back to back while each fills its batch.
const RECLAIM_ROUNDS: usize = 16;
/// A lease is reclaimed this long after its expiry: the leader's clock may
/// run ahead of the clock of the node that granted it (DESIGN.md 5).
pub const CLOCK_SKEW_MARGIN_SECS: u64 = 30;

/// Why DHCP cannot start as configured.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("--dhcp-interface: {0}")]
    Interfaces(#[from] super::interfaces::InterfaceError),
}

/// The DHCP sockets of a node, bound before Raft opens. Either may be
/// absent: DHCP off, or a port this process may not bind.
#[derive(Default)]
pub struct Bound {
    dhcp: Option<DhcpSocket>,
    proxy: Option<DhcpSocket>,
    interfaces: Vec<Interface>,
}

impl Bound {
    pub async fn bind(settings: &ServerSettings) -> Result<Bound, StartError> {
        if settings.dhcp_off {
            tracing::info!("DHCP is off on this node (--dhcp-off)");
            return Ok(Bound::default());
        }
        let interfaces = dhcp_interfaces(&settings.dhcp_interface)?;
        let dhcp = bind_or_explain("DHCP", settings.dhcp_listen, settings).await?;
        let proxy = match dhcp {
            Some(_) => bind_or_explain("proxyDHCP", settings.proxy_dhcp_listen, settings).await?,
            None => None,
        };
        Ok(Bound {
            dhcp,
            proxy,
            interfaces,
        })
    }

    pub fn dhcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.dhcp.as_ref().and_then(|s| s.local_addr().ok())
    }
}

/// Binds one DHCP socket; a port this process may not bind turns DHCP off
/// on this node with one line saying how to run it, rather than failing
/// the node (a first try as a normal user still gets the API).
async fn bind_or_explain(
    service: &'static str,
    addr: std::net::SocketAddr,
    settings: &ServerSettings,
) -> Result<Option<DhcpSocket>, BindError> {
    match DhcpSocket::bind(service, addr).await {
        Ok(socket) => Ok(Some(socket)),
        Err(e) if lacks_privilege(&e) => {
            tracing::warn!(
                "{service} needs port {}: run as root or with CAP_NET_BIND_SERVICE, or pass \
                 --dhcp-listen 0.0.0.0:1067 --proxy-dhcp-listen 0.0.0.0:14011 \
                 --dhcp-client-port 1068 for a lab; DHCP is off on this node \
                 (the API listens on {})",
                addr.port(),
                settings.api_listen
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Starts the DHCP services on `bound` and the leader's lease reclaim.
pub fn spawn(
    services: &mut Services,
    bound: Bound,
    store: &Store,
    settings: &ServerSettings,
    node_id: u64,
    metrics: DhcpMetrics,
) {
    let Some(dhcp) = bound.dhcp else {
        return;
    };
    let config = ResponderConfig {
        node_id,
        client_port: settings.dhcp_client_port,
        boot_http_port: settings.boot_http_listen.port(),
        takeover_secs: settings.dhcp_takeover_secs,
        decline_secs: settings.dhcp_decline_secs,
        interfaces: bound.interfaces,
    };
    let (responder, updates) = Responder::new(
        store.clone(),
        config,
        metrics.clone(),
        settings.clock.clone(),
    );
    let responder = Arc::new(responder);
    if let Ok(addr) = dhcp.local_addr() {
        tracing::info!(%addr, "DHCP listening");
    }
    services.spawn(DhcpService::new(
        "DHCP",
        dhcp,
        responder.clone(),
        Port::Dhcp,
        Limit::new(MAX_REQUESTS_IN_FLIGHT, Duration::ZERO),
        DRAIN,
        metrics.clone(),
    ));
    if let Some(proxy) = bound.proxy {
        services.spawn(DhcpService::new(
            "proxyDHCP",
            proxy,
            responder,
            Port::Proxy,
            Limit::new(MAX_REQUESTS_IN_FLIGHT, Duration::ZERO),
            DRAIN,
            metrics,
        ));
    }
    {
        let store = store.clone();
        services.spawn_task("DHCP machine updates", move |shutdown| {
            run_machine_updates(store, updates, shutdown)
        });
    }
    {
        let store = store.clone();
        let clock = settings.clock.clone();
        services.spawn_task("expired lease reclaim", move |shutdown| {
            reclaim_forever(store, node_id, clock, shutdown)
        });
    }
    {
        let store = store.clone();
        services.spawn_task("DHCP node liveness", move |shutdown| {
            report_silent_nodes_forever(store, node_id, shutdown)
        });
    }
}

/// How often the leader looks for members that stopped answering.
const LIVENESS_EVERY: Duration = Duration::from_millis(200);
/// A member silent this long (six missed heartbeats at the default 100 ms)
/// is reported down for DHCP.
pub const SILENT_AFTER: Duration = Duration::from_millis(600);

/// On the leader: a voter that has not answered a Raft call for
/// [`SILENT_AFTER`] is reported with `DhcpNodeDown`, so the clients it
/// owned are shared among the others at once instead of waiting for their
/// takeover time. Failure detection, not safety: a wrong report costs
/// duplicate answers until the node commits a lease again. Reported once
/// per silence.
async fn report_silent_nodes_forever(store: Store, node_id: u64, mut shutdown: Shutdown) {
    let mut leading_since: Option<(u64, tokio::time::Instant)> = None;
    let mut reported = std::collections::BTreeSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LIVENESS_EVERY) => {}
            _ = shutdown.requested() => return,
        }
        let status = store.raft().status();
        if status.current_leader != Some(node_id) {
            leading_since = None;
            reported.clear();
            continue;
        }
        let since = match leading_since {
            Some((term, at)) if term == status.term => at,
            _ => {
                let now = tokio::time::Instant::now();
                leading_since = Some((status.term, now));
                now
            }
        };
        let silent_ms = u64::try_from(SILENT_AFTER.as_millis()).unwrap_or(u64::MAX);
        for member in status.members.iter().filter(|m| m.voter && m.id != node_id) {
            let silent = match member.answered_ms_ago {
                Some(ms) => ms >= silent_ms,
                // Never answered this leader: silent once it has led long
                // enough to have heard from it.
                None => since.elapsed() >= SILENT_AFTER,
            };
            if !silent {
                reported.remove(&member.id);
                continue;
            }
            if reported.contains(&member.id) {
                continue;
            }
            let command = Command::DhcpNodeDown { node: member.id };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            match store.submit(command, deadline).await {
                Ok(_) => {
                    reported.insert(member.id);
                    tracing::info!(
                        node = member.id,
                        "node stopped answering: its DHCP clients go to the other nodes"
                    );
                }
                Err(e) => tracing::warn!(node = member.id, error = %e, "reporting a silent node"),
            }
        }
    }
}

/// On the leader, every [`RECLAIM_EVERY`], frees the addresses of leases
/// that expired more than [`CLOCK_SKEW_MARGIN_SECS`] ago. Only the leader
/// proposes, so members do not race each other with the same reclaim.
async fn reclaim_forever(
    store: Store,
    node_id: u64,
    clock: crate::clock::Clock,
    mut shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RECLAIM_EVERY) => {}
            _ = shutdown.requested() => return,
        }
        if store.raft().status().current_leader != Some(node_id) {
            continue;
        }
        for _ in 0..RECLAIM_ROUNDS {
            let command = Command::DhcpReclaim {
                before_unix: clock.unix_now().saturating_sub(CLOCK_SKEW_MARGIN_SECS),
                limit: RECLAIM_BATCH,
            };
            match store.submit(command, store.write_deadline()).await {
                Ok(done) => {
                    let object = done.object.unwrap_or_default();
                    let reclaimed = object["reclaimed"].as_u64().unwrap_or(0);
                    if reclaimed > 0 {
                        tracing::debug!(reclaimed, "expired leases reclaimed");
                    }
                    if object["more"] != serde_json::Value::Bool(true) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reclaiming expired leases");
                    break;
                }
            }
        }
    }
}
