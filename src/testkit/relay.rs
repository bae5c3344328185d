//! Relays: a TCP forwarder in front of each node's peer RPC listener, so a
//! test can cut a node off from the others on loopback, without network
//! namespaces or root.
//!
//! A node advertises its relay's address, so every peer connection to it
//! passes through its relay; and a node's own outgoing peer connections
//! leave from its own loopback address (the server binds them to its peer
//! RPC listener's address), so every relay knows whom a connection comes
//! from. Cutting a node then means: its relay drops every connection and
//! refuses new ones, and every other relay does the same for connections
//! from the node's address. Both directions are gone, as in a partition;
//! healing lets new connections through again (the nodes reconnect on their
//! own).
//!
//! The relays run on a runtime of their own, so a busy or blocked test
//! runtime does not stall the cluster's traffic.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::Error;

/// The set of cut node addresses, shared by every relay of a cluster.
#[derive(Default)]
struct Cuts {
    ips: Mutex<HashSet<IpAddr>>,
}

impl Cuts {
    fn blocked(&self, from: IpAddr, to: IpAddr) -> bool {
        let ips = self.ips.lock().unwrap_or_else(|e| e.into_inner());
        ips.contains(&from) || ips.contains(&to)
    }
}

/// Every relay of one cluster, on their own runtime; dropping it stops them.
pub struct Relays {
    runtime: Option<tokio::runtime::Runtime>,
    cuts: Arc<Cuts>,
    /// Bumped on every cut or heal, so open connections re-judge themselves.
    changed: watch::Sender<u64>,
}

impl Relays {
    pub fn new() -> Result<Relays, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("relay")
            .enable_all()
            .build()
            .map_err(|e| Error::new(format!("relay runtime: {e}")))?;
        Ok(Relays {
            runtime: Some(runtime),
            cuts: Arc::default(),
            changed: watch::channel(0).0,
        })
    }

    /// Starts a relay on `node_ip` (a free port) forwarding to `target`, the
    /// node's own peer RPC listener; returns the relay's address.
    pub fn add(&self, node_ip: IpAddr, target: SocketAddr) -> Result<SocketAddr, Error> {
        let listener = std::net::TcpListener::bind((node_ip, 0))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| Error::new(format!("relay listener on {node_ip}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::new(format!("relay address: {e}")))?;
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| Error::new("relays stopped"))?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener)
                .map_err(|e| Error::new(format!("relay listener: {e}")))?
        };
        runtime.spawn(accept_forever(
            listener,
            node_ip,
            target,
            self.cuts.clone(),
            self.changed.subscribe(),
        ));
        Ok(addr)
    }

    /// Cuts the node at `ip` off: drops its peer connections both ways and
    /// refuses new ones until [`Relays::heal`].
    pub fn cut(&self, ip: IpAddr) {
        self.cuts
            .ips
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ip);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Lets the node at `ip` reach and be reached again.
    pub fn heal(&self, ip: IpAddr) {
        self.cuts
            .ips
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn is_cut(&self, ip: IpAddr) -> bool {
        self.cuts.blocked(ip, ip)
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Allowed inside an async context, unlike a plain drop.
            runtime.shutdown_background();
        }
    }
}

async fn accept_forever(
    listener: TcpListener,
    node_ip: IpAddr,
    target: SocketAddr,
    cuts: Arc<Cuts>,
    changed: watch::Receiver<u64>,
) {
    loop {
        let Ok((inbound, peer)) = listener.accept().await else {
            // Out of descriptors for a moment: try again shortly.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        if cuts.blocked(peer.ip(), node_ip) {
            drop(inbound);
            continue;
        }
        tokio::spawn(forward(
            inbound,
            peer.ip(),
            node_ip,
            target,
            cuts.clone(),
            changed.clone(),
        ));
    }
}

/// Copies both ways until either side closes or a cut separates the two.
async fn forward(
    mut inbound: TcpStream,
    from: IpAddr,
    node_ip: IpAddr,
    target: SocketAddr,
    cuts: Arc<Cuts>,
    mut changed: watch::Receiver<u64>,
) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            _ = &mut copy => return,
            result = changed.changed() => {
                if result.is_err() || cuts.blocked(from, node_ip) {
                    // Both streams drop here: the connection is gone.
                    return;
                }
            }
        }
    }
}
