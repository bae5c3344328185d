//! The one shape every network service of a node takes, and the one
//! shutdown that stops the services and the node's background tasks.
//!
//! # Shape
//!
//! A service (the HTTPS API and peer RPC today; DHCP, proxyDHCP, TFTP and
//! boot HTTP next) is started by `server::start` in two steps:
//!
//! 1. **Bind**, before Raft opens: [`bind_tcp`] or [`bind_udp`] returns the
//!    socket or a [`BindError`] naming the service and the address
//!    (`binding the API listener on 0.0.0.0:8443: Address in use`). A port
//!    conflict ends the start before anything runs, so nothing needs undoing.
//! 2. **Run**: the bound socket, inside a type implementing [`Service`], goes
//!    to [`Services::spawn`]. `run` serves until its [`Shutdown`] fires,
//!    with a cap on the work it does at once (connections for TCP, packets in
//!    flight for UDP: a [`Limit`]); then it stops taking work and drains what
//!    it holds within its own bound, which is under [`Services`]' bound.
//!
//! Background tasks (the store's batcher, the leader's reconciler and token
//! purge) go to [`Services::spawn_task`]: they get a [`Shutdown`] of the
//! same kind and are awaited with the same bound.
//!
//! [`Services::shutdown`] is the one way to stop: it fires in two stages, so
//! that requests still draining can finish their writes:
//! 1. services stop taking work and drain (bounded by the drain time);
//! 2. background tasks stop (the batcher answers the batch in flight),
//!    bounded again.
//!
//! Whatever is still running after a stage's bound is aborted and named in a
//! warning. A start that fails half-way calls the same shutdown, so nothing
//! it started is left running. A service whose `run` returns an error is
//! reported through [`Services::failed`]: `cradle server` then stops the
//! node and exits non-zero with the reason.
//!
//! # A UDP service (DHCP, proxyDHCP, TFTP)
//!
//! A datagram service binds with [`bind_udp`] before Raft starts and runs as
//! a [`UdpService`]: one receive loop per socket, each datagram handed to a
//! [`Datagrams`] handler on a task of its own while the [`Limit`] has room
//! and dropped otherwise (DHCP and TFTP clients retransmit, so a dropped
//! packet under overload is the protocol's own back-pressure, not a loss).
//! The handler reads replicated state through the store's snapshot view; it
//! must not block the runtime (anything heavy goes to `spawn_blocking`).
//!
//! ```ignore
//! let socket = service::bind_udp("DHCP", settings.dhcp_listen).await?; // before Raft
//! // ... Raft opens, the store starts ...
//! services.spawn(UdpService::new("DHCP", socket, Arc::new(dhcp::Responder::new(store)), limit));
//! ```
//!
//! A service that needs more than "answer the sender" (DHCP's broadcast
//! replies on the interface a request came in on, TFTP's transfer sockets)
//! implements [`Service`] itself on the same pattern: bind first, a
//! [`Limit`], a `select!` on [`Shutdown::requested`], a bounded drain.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// A socket that could not be bound, with the service and the address.
#[derive(Debug, thiserror::Error)]
#[error("binding the {service} listener on {addr}: {source}")]
pub struct BindError {
    pub service: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds a TCP listener for `service` (a name for messages: "API").
pub async fn bind_tcp(service: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError {
        service,
        addr,
        source,
    })
}

/// Binds a UDP socket for `service`.
pub async fn bind_udp(service: &'static str, addr: SocketAddr) -> Result<UdpSocket, BindError> {
    UdpSocket::bind(addr).await.map_err(|source| BindError {
        service,
        addr,
        source,
    })
}

/// Why a service stopped on its own.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServiceError(pub String);

impl From<std::io::Error> for ServiceError {
    fn from(e: std::io::Error) -> Self {
        ServiceError(e.to_string())
    }
}

/// The stop signal a service or task receives. Cloned freely; every clone
/// sees the same signal.
#[derive(Debug, Clone)]
pub struct Shutdown {
    stop: watch::Receiver<bool>,
}

impl Shutdown {
    /// A signal that never fires until `sender` sends `true` (or is gone).
    pub fn new() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown { stop: rx })
    }

    /// Resolves once shutdown is requested, or the signal's owner is gone
    /// (which can only mean the node is stopping).
    pub async fn requested(&mut self) {
        let _ = self.stop.wait_for(|stop| *stop).await;
    }

    pub fn is_requested(&self) -> bool {
        *self.stop.borrow()
    }
}

/// A cap on work in progress (connections, requests, packets in flight).
#[derive(Debug, Clone)]
pub struct Limit {
    permits: Arc<Semaphore>,
    max: usize,
    wait: Duration,
}

/// Refused by a [`Limit`]: `max` pieces of work were in progress for the
/// whole wait.
#[derive(Debug, Clone, thiserror::Error)]
#[error("busy: {max} already in progress")]
pub struct Busy {
    pub max: usize,
}

impl Limit {
    /// At most `max` at once (at least 1); [`Limit::acquire`] waits up to
    /// `wait` for room.
    pub fn new(max: usize, wait: Duration) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Limit {
            permits: Arc::new(Semaphore::new(max)),
            max,
            wait,
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Room for one more, now or never (UDP: drop the datagram).
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Room for one more, waiting briefly for it.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, Busy> {
        let busy = Busy { max: self.max };
        match tokio::time::timeout(self.wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // Closed never happens (nothing closes it); timed out is busy.
            Ok(Err(_)) | Err(_) => Err(busy),
        }
    }
}

/// A network service: owns its bound socket(s) and serves until told to
/// stop. See the module doc for the shape.
pub trait Service: Send + 'static {
    /// For logs and errors: "API", "peer RPC", "DHCP".
    fn name(&self) -> &'static str;

    /// Serves until `shutdown` fires, then drains within the service's own
    /// bound. An error means the service cannot go on: the node stops.
    fn run(self, shutdown: Shutdown) -> impl Future<Output = Result<(), ServiceError>> + Send;
}

/// A service or task that stopped on its own with an error.
#[derive(Debug, Clone)]
pub struct Failure {
    pub name: &'static str,
    pub error: String,
}

/// One stage of shutdown: its signal, its tasks and their names.
struct Stage {
    stop: watch::Sender<bool>,
    shutdown: Shutdown,
    tasks: JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Stage {
    fn new() -> Self {
        let (stop, shutdown) = Shutdown::new();
        Stage {
            stop,
            shutdown,
            tasks: JoinSet::new(),
            names: HashMap::new(),
        }
    }

    fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Fires the signal and waits up to `bound`; aborts the rest. Returns
    /// the names of what had to be aborted.
    async fn stop(&mut self, bound: Duration) -> Vec<&'static str> {
        let _ = self.stop.send(true);
        let finished = tokio::time::timeout(bound, async {
            while let Some(done) = self.tasks.join_next_with_id().await {
                let id = match &done {
                    Ok((id, ())) => *id,
                    Err(e) => e.id(),
                };
                let name = self.names.remove(&id).unwrap_or("a task");
                if let Err(e) = done {
                    if e.is_panic() {
                        tracing::error!(task = name, "panicked while stopping");
                    }
                }
            }
        })
        .await;
        if finished.is_ok() {
            return Vec::new();
        }
        let mut late: Vec<&'static str> = self.names.drain().map(|(_, name)| name).collect();
        late.sort_unstable();
        tracing::warn!(?late, ?bound, "did not stop in time; aborting");
        self.tasks.shutdown().await;
        late
    }
}

/// Every service and background task of a node, and their shutdown.
pub struct Services {
    serving: Stage,
    background: Stage,
    drain: Duration,
    failures: mpsc::UnboundedSender<Failure>,
    failed: mpsc::UnboundedReceiver<Failure>,
}

impl Services {
    /// `drain`: how long each stage of shutdown may take.
    pub fn new(drain: Duration) -> Self {
        let (failures, failed) = mpsc::unbounded_channel();
        Services {
            serving: Stage::new(),
            background: Stage::new(),
            drain,
            failures,
            failed,
        }
    }

    /// Runs `service` until shutdown's first stage.
    pub fn spawn<S: Service>(&mut self, service: S) {
        let name = service.name();
        let shutdown = self.serving.shutdown.clone();
        let failures = self.failures.clone();
        self.serving.spawn(name, async move {
            if let Err(e) = service.run(shutdown.clone()).await {
                tracing::error!(service = name, error = %e, "service failed");
                let _ = failures.send(Failure {
                    name,
                    error: e.to_string(),
                });
            } else if !shutdown.is_requested() {
                let _ = failures.send(Failure {
                    name,
                    error: "stopped on its own".into(),
                });
            }
        });
    }

    /// Runs a background task until shutdown's second stage, after the
    /// services have drained. The task must return once its [`Shutdown`]
    /// fires.
    pub fn spawn_task<F, Fut>(&mut self, name: &'static str, task: F)
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let task = task(self.background.shutdown.clone());
        self.background.spawn(name, task);
    }

    /// Resolves when a service stops on its own (an error, or its loop
    /// ended), with which and why. Pending forever while all is well.
    pub async fn failed(&mut self) -> Failure {
        match self.failed.recv().await {
            Some(failure) => failure,
            // Unreachable while `self` holds a sender; wait forever.
            None => std::future::pending().await,
        }
    }

    /// Stops the services (they drain), then the background tasks, each
    /// stage within the drain bound. Returns what had to be aborted.
    pub async fn shutdown(mut self) -> Vec<&'static str> {
        let mut late = self.serving.stop(self.drain).await;
        late.extend(self.background.stop(self.drain).await);
        late
    }
}

/// What a [`UdpService`] does with one datagram.
pub trait Datagrams: Send + Sync + 'static {
    /// The answer to `packet` from `from`, if any, sent back to `from`.
    /// Runs on the runtime: never blocks.
    fn answer(
        &self,
        packet: &[u8],
        from: SocketAddr,
    ) -> impl Future<Output = Option<Vec<u8>>> + Send;
}

/// Largest datagram read (a full Ethernet frame's payload and more).
pub const MAX_DATAGRAM_BYTES: usize = 2048;

/// A datagram service answering each packet to its sender, with at most
/// `limit` packets in flight (more are dropped) and a bounded drain.
pub struct UdpService<H> {
    name: &'static str,
    socket: Arc<UdpSocket>,
    handler: Arc<H>,
    limit: Limit,
    drain: Duration,
}

impl<H: Datagrams> UdpService<H> {
    pub fn new(
        name: &'static str,
        socket: UdpSocket,
        handler: Arc<H>,
        limit: Limit,
        drain: Duration,
    ) -> Self {
        UdpService {
            name,
            socket: Arc::new(socket),
            handler,
            limit,
            drain,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

impl<H: Datagrams> Service for UdpService<H> {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn run(self, mut shutdown: Shutdown) -> Result<(), ServiceError> {
        let mut in_flight = JoinSet::new();
        let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
        let mut dropped = 0u64;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.requested() => break,
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                received = self.socket.recv_from(&mut buf) => {
                    let (len, from) = match received {
                        Ok(received) => received,
                        // ICMP errors from earlier sends surface here on
                        // Linux; they are about one peer, not the socket.
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                        Err(e) => return Err(e.into()),
                    };
                    let Some(permit) = self.limit.try_acquire() else {
                        dropped += 1;
                        if dropped.is_power_of_two() {
                            tracing::warn!(service = self.name, dropped, "datagrams dropped: at the in-flight cap");
                        }
                        continue;
                    };
                    let packet = buf[..len].to_vec();
                    let (socket, handler) = (self.socket.clone(), self.handler.clone());
                    in_flight.spawn(async move {
                        if let Some(reply) = handler.answer(&packet, from).await {
                            let _ = socket.send_to(&reply, from).await;
                        }
                        drop(permit);
                    });
                }
            }
        }
        let drained = tokio::time::timeout(self.drain, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            in_flight.shutdown().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Echo;

    impl Datagrams for Echo {
        async fn answer(&self, packet: &[u8], _from: SocketAddr) -> Option<Vec<u8>> {
            Some(packet.to_vec())
        }
    }

    #[tokio::test]
    async fn a_taken_port_names_the_service_and_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind_tcp("API", addr).await.unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("API") && text.contains(&addr.to_string()),
            "{text}"
        );
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind_udp("DHCP", addr).await.unwrap_err();
        assert!(e.to_string().contains(&format!("DHCP listener on {addr}")));
    }

    #[tokio::test]
    async fn a_udp_service_answers_and_stops_on_shutdown() {
        let socket = bind_udp("echo", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let service = UdpService::new(
            "echo",
            socket,
            Arc::new(Echo),
            Limit::new(4, Duration::ZERO),
            Duration::from_secs(1),
        );
        let addr = service.local_addr().unwrap();
        let mut services = Services::new(Duration::from_secs(5));
        services.spawn(service);

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(b"ping", addr).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert_eq!(&buf[..n], b"ping");

        assert!(services.shutdown().await.is_empty());
        // The socket is closed: the port can be bound again.
        bind_udp("echo", addr).await.unwrap();
    }

    #[tokio::test]
    async fn services_drain_before_background_tasks_stop() {
        let mut services = Services::new(Duration::from_secs(5));
        let service_done = Arc::new(AtomicBool::new(false));
        let seen_by_task = Arc::new(AtomicBool::new(false));

        struct Slow(Arc<AtomicBool>);
        impl Service for Slow {
            fn name(&self) -> &'static str {
                "slow"
            }
            async fn run(self, mut shutdown: Shutdown) -> Result<(), ServiceError> {
                shutdown.requested().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.0.store(true, Ordering::SeqCst);
                Ok(())
            }
        }
        services.spawn(Slow(service_done.clone()));
        let (done, seen) = (service_done.clone(), seen_by_task.clone());
        services.spawn_task("task", move |mut shutdown| async move {
            shutdown.requested().await;
            seen.store(done.load(Ordering::SeqCst), Ordering::SeqCst);
        });
        assert!(services.shutdown().await.is_empty());
        assert!(service_done.load(Ordering::SeqCst));
        assert!(
            seen_by_task.load(Ordering::SeqCst),
            "the background task was stopped before the service had drained"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn what_ignores_shutdown_is_aborted_after_the_bound() {
        let mut services = Services::new(Duration::from_secs(3));
        services.spawn_task("stubborn", |_shutdown| std::future::pending::<()>());
        services.spawn_task("polite", |mut shutdown| async move {
            shutdown.requested().await;
        });
        let started = tokio::time::Instant::now();
        assert_eq!(services.shutdown().await, vec!["stubborn"]);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test]
    async fn a_service_that_fails_is_reported() {
        struct Broken;
        impl Service for Broken {
            fn name(&self) -> &'static str {
                "broken"
            }
            async fn run(self, _shutdown: Shutdown) -> Result<(), ServiceError> {
                Err(ServiceError("socket gone".into()))
            }
        }
        let mut services = Services::new(Duration::from_secs(1));
        services.spawn(Broken);
        let failure = tokio::time::timeout(Duration::from_secs(5), services.failed())
            .await
            .expect("reported");
        assert_eq!(failure.name, "broken");
        assert_eq!(failure.error, "socket gone");
        services.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_waits_briefly_then_refuses() {
        let limit = Limit::new(1, Duration::from_millis(100));
        let held = limit.acquire().await.unwrap();
        assert!(limit.try_acquire().is_none());
        let started = tokio::time::Instant::now();
        assert_eq!(limit.acquire().await.unwrap_err().max, 1);
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        drop(held);
        assert!(limit.acquire().await.is_ok());
    }
}
