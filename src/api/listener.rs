//! The API's HTTPS listener: accepts TCP connections, caps them, runs the
//! TLS handshake and HTTP/1.1 or HTTP/2 on each, and drains them on shutdown.
//!
//! Every open connection costs a file descriptor and some memory, so nothing
//! a client does, or fails to do, keeps one open without bound:
//! - a connection over the listener's cap, or over its source's cap, is
//!   closed as soon as it is accepted; the accept loop never waits for room;
//! - the TLS handshake must finish within the handshake timeout;
//! - the first request bytes must arrive within the header timeout of the
//!   handshake, and each HTTP/1 request head within the header timeout of
//!   when the server starts waiting for it (hyper's header read timeout,
//!   which therefore also ends an HTTP/1 keep-alive connection left idle
//!   that long);
//! - a connection that reads and writes nothing for the idle timeout is
//!   closed (an HTTP/2 connection between streams, a client that stopped
//!   reading a response).
//!
//! Every request carries its peer address as
//! `axum::extract::ConnectInfo<SocketAddr>`.
//!
//! It is a [`Service`]: shutdown, as for every listener, stops the accept
//! loop, asks every connection to finish gracefully, and closes whatever is
//! still open after the drain timeout.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use nix::sys::resource::{getrlimit, rlim_t, setrlimit, Resource};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::service::{Service, ServiceError, Shutdown};

/// File descriptors kept for everything but API connections: RocksDB's
/// files, peer RPC connections, the other listeners, logs.
pub const FD_RESERVE: rlim_t = 1024;

/// How long the accept loop pauses after an error that is not about one
/// connection (out of file descriptors, out of memory) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// At most one log line per this interval for each kind of refusal or
/// accept error; the lines count what was not logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The listener's limits, from the `--api-*` settings.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once, TLS handshakes included.
    pub max_connections: usize,
    /// Connections open at once from one source (an IPv4 address or an IPv6
    /// /64). Never more than `max_connections`.
    pub max_connections_per_source: usize,
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long shutdown lets open connections finish.
    pub drain_timeout: Duration,
}

impl Limits {
    pub fn from_settings(
        settings: &crate::config::ServerSettings,
        drain_timeout: Duration,
    ) -> Self {
        Limits {
            max_connections: settings.api_max_connections,
            max_connections_per_source: settings.api_max_connections_per_source,
            handshake_timeout: Duration::from_millis(settings.api_handshake_timeout_ms),
            header_timeout: Duration::from_millis(settings.api_header_timeout_ms),
            idle_timeout: Duration::from_millis(settings.api_idle_timeout_ms),
            drain_timeout,
        }
    }

    /// Raises the soft open-files limit to the hard one, then lowers the
    /// connection cap if it and [`FD_RESERVE`] do not fit under the limit,
    /// saying so in one warning line.
    pub fn fit_open_files_limit(mut self) -> Self {
        let open_files = match raise_open_files_limit() {
            Ok(limit) => limit,
            Err(e) => {
                tracing::warn!(error = %e, "could not raise the open-files limit");
                match getrlimit(Resource::RLIMIT_NOFILE) {
                    Ok((soft, _)) => soft,
                    // Nothing known: leave the cap as configured.
                    Err(_) => return self,
                }
            }
        };
        let fitted = connections_that_fit(self.max_connections, open_files);
        if fitted < self.max_connections {
            tracing::warn!(
                "API connection cap lowered from {} to {fitted}: the open-files limit is \
                 {open_files} and {} descriptors are kept for RocksDB, peer RPC and the other \
                 listeners; raise the hard limit (ulimit -Hn, LimitNOFILE= under systemd)",
                self.max_connections,
                FD_RESERVE.min(open_files / 2),
            );
            self.max_connections = fitted;
        }
        self
    }
}

/// Why the open-files limit could not be read or raised.
#[derive(Debug, thiserror::Error)]
pub enum FdLimitError {
    #[error("reading the open-files limit: {0}")]
    Read(#[source] nix::errno::Errno),
    #[error("raising the open-files limit from {soft} to {hard}: {source}")]
    Raise {
        soft: rlim_t,
        hard: rlim_t,
        #[source]
        source: nix::errno::Errno,
    },
}

/// Raises this process's soft limit on open files to its hard limit and
/// returns the limit now in force.
pub fn raise_open_files_limit() -> Result<rlim_t, FdLimitError> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(FdLimitError::Read)?;
    if soft >= hard {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|source| FdLimitError::Raise {
        soft,
        hard,
        source,
    })?;
    Ok(hard)
}

/// The connection cap that fits under `open_files` descriptors once the
/// reserve is kept (half the limit at most, so a tiny limit still serves).
pub fn connections_that_fit(requested: usize, open_files: rlim_t) -> usize {
    let reserve = FD_RESERVE.min(open_files / 2);
    let room = usize::try_from(open_files - reserve).unwrap_or(usize::MAX);
    requested.min(room).max(1)
}

/// The HTTPS API listener.
pub struct Listener {
    tcp: TcpListener,
    connections: Arc<Semaphore>,
    sources: Arc<Sources>,
    shared: Arc<Shared>,
}

/// What every connection task needs.
struct Shared {
    tls: TlsAcceptor,
    http: auto::Builder<TokioExecutor>,
    router: Router,
    limits: Limits,
}

impl Listener {
    pub fn new(
        tcp: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        router: Router,
        mut limits: Limits,
    ) -> Self {
        limits.max_connections = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        limits.max_connections_per_source = limits
            .max_connections_per_source
            .clamp(1, limits.max_connections);
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        // No HTTP/2 keep-alive pings: they would count as activity and keep
        // an idle connection open forever.
        http.http2().timer(TokioTimer::new());
        Listener {
            tcp,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            sources: Arc::new(Sources::new(limits.max_connections_per_source)),
            shared: Arc::new(Shared {
                tls: TlsAcceptor::from(tls),
                http,
                router,
                limits,
            }),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The limits in force (the caps after clamping).
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Accepts and serves connections until `shutdown` fires, then drains
    /// them.
    async fn serve(self, mut shutdown: Shutdown) {
        let mut open = JoinSet::new();
        let mut over_total = Throttle::default();
        let mut over_source = Throttle::default();
        let mut accept_failed = Throttle::default();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.requested() => break,
                Some(ended) = open.join_next(), if !open.is_empty() => {
                    if let Err(e) = ended {
                        if e.is_panic() {
                            tracing::error!(error = %e, "an API connection task panicked");
                        }
                    }
                }
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                            if let Some(count) = over_total.hit() {
                                tracing::warn!(
                                    refused = count,
                                    cap = self.shared.limits.max_connections,
                                    "API connections refused: the listener is at its cap"
                                );
                            }
                            continue;
                        };
                        let Some(slot) = Sources::take(&self.sources, peer.ip()) else {
                            if let Some(count) = over_source.hit() {
                                tracing::debug!(
                                    refused = count,
                                    source = %peer.ip(),
                                    cap = self.shared.limits.max_connections_per_source,
                                    "API connections refused: a source is at its cap"
                                );
                            }
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        open.spawn(serve_connection(
                            self.shared.clone(),
                            stream,
                            peer,
                            (permit, slot),
                            shutdown.clone(),
                        ));
                    }
                    // The peer gave up before we accepted: nothing to wait for.
                    Err(e) if is_per_connection(&e) => {}
                    Err(e) => {
                        if let Some(count) = accept_failed.hit() {
                            tracing::warn!(
                                error = %e,
                                failures = count,
                                "accepting API connections failed; pausing briefly"
                            );
                        }
                        tokio::select! {
                            _ = shutdown.requested() => break,
                            _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        }
                    }
                },
            }
        }
        drop(self.tcp);
        drain(open, self.shared.limits.drain_timeout).await;
    }
}

impl Service for Listener {
    fn name(&self) -> &'static str {
        "API"
    }

    async fn run(self, shutdown: Shutdown) -> Result<(), ServiceError> {
        self.serve(shutdown).await;
        Ok(())
    }
}

/// Waits for open connections to finish, closing the rest after `wait`.
async fn drain(mut open: JoinSet<()>, wait: Duration) {
    let finished =
        tokio::time::timeout(wait, async { while open.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        tracing::warn!(
            open = open.len(),
            "API connections did not finish in time; closing them"
        );
        open.shutdown().await;
    }
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// One connection, from the TLS handshake to its end. `_held` is its place
/// under both caps, given back when this returns.
async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    _held: (OwnedSemaphorePermit, SourceSlot),
    mut shutdown: Shutdown,
) {
    let limits = &shared.limits;
    let handshake = tokio::time::timeout(limits.handshake_timeout, shared.tls.accept(stream));
    let tls = tokio::select! {
        done = handshake => match done {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "API TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "API TLS handshake timed out");
                return;
            }
        },
        _ = shutdown.requested() => return,
    };

    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: tls,
        activity: activity.clone(),
    });
    let router = shared.router.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    let connection = shared.http.serve_connection(io, service);
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "API connection ended");
                }
                return;
            }
            _ = shutdown.requested(), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = activity.expired(limits.header_timeout, limits.idle_timeout) => {
                tracing::debug!(%peer, "API connection idle; closing it");
                return;
            }
        }
    }
}

/// When a connection last read or wrote a byte (above TLS), measured from
/// the end of its handshake.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    read_any: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            read_any: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        self.touch_at(Instant::now());
    }

    fn touch_at(&self, now: Instant) {
        let since_start = now.saturating_duration_since(self.start);
        let ms = u64::try_from(since_start.as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn deadline(&self, first_bytes: Duration, idle: Duration) -> Instant {
        if !self.read_any.load(Ordering::Relaxed) {
            return self.start + first_bytes;
        }
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }

    /// Resolves once the connection has read nothing within `first_bytes`
    /// of its start, or has read and written nothing for `idle`.
    async fn expired(&self, first_bytes: Duration, idle: Duration) {
        loop {
            let now = Instant::now();
            let deadline = self.deadline(first_bytes, idle);
            if now >= deadline {
                return;
            }
            // The deadline only moves later, except when the first bytes
            // arrive: then it becomes their time plus `idle`, which is never
            // before `now + idle`.
            tokio::time::sleep_until(deadline.min(now + idle)).await;
        }
    }
}

/// An I/O stream that records its activity.
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read_any.store(true, Ordering::Relaxed);
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Open connections per source. An entry exists only while its source has a
/// connection open, and every open connection also holds a place under the
/// listener's cap, so the map never has more entries than that cap.
struct Sources {
    per_source: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl Sources {
    fn new(per_source: usize) -> Self {
        Sources {
            per_source,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A place for one more connection from `ip`, or `None` at the cap.
    fn take(this: &Arc<Sources>, ip: IpAddr) -> Option<SourceSlot> {
        let source = source_of(ip);
        let mut open = this.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(source).or_insert(0);
        if *count >= this.per_source {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            sources: this.clone(),
            source,
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One connection's place under its source's cap.
struct SourceSlot {
    sources: Arc<Sources>,
    source: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self
            .sources
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// The source a connection is counted under: its IPv4 address (also when
/// IPv4-mapped), or the /64 of its IPv6 address, since one host commonly
/// holds a whole /64.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !(u128::from(u64::MAX));
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// Rate-limits one kind of log line.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    unlogged: u64,
}

impl Throttle {
    /// Counts one event; returns how many to report if a line is due now.
    fn hit(&mut self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    fn hit_at(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self.last.is_some_and(|last| now < last + LOG_EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_under_the_open_files_limit() {
        assert_eq!(connections_that_fit(4096, 65_536), 4096);
        assert_eq!(connections_that_fit(4096, 5_120), 4096);
        assert_eq!(connections_that_fit(4096, 4_096), 3072);
        // The stock soft limit: half of it stays in reserve.
        assert_eq!(connections_that_fit(4096, 1_024), 512);
        assert_eq!(connections_that_fit(4096, 1), 1);
        assert_eq!(connections_that_fit(4096, 0), 1);
    }

    #[test]
    fn sources_are_addresses_or_ipv6_slash_64s() {
        let check = |ip: &str, source: &str| {
            assert_eq!(
                source_of(ip.parse().unwrap()),
                source.parse::<IpAddr>().unwrap(),
                "{ip}"
            );
        };
        check("192.0.2.7", "192.0.2.7");
        check("::ffff:192.0.2.7", "192.0.2.7");
        check("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::");
        check("2001:db8:1:2:ffff::1", "2001:db8:1:2::");
        check("::1", "::");
    }

    #[test]
    fn per_source_slots_are_counted_and_given_back() {
        let sources = Arc::new(Sources::new(2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = Sources::take(&sources, a).unwrap();
        let second = Sources::take(&sources, a).unwrap();
        assert!(Sources::take(&sources, a).is_none());
        let other = Sources::take(&sources, b).unwrap();
        assert_eq!(sources.len(), 2);
        drop(first);
        let third = Sources::take(&sources, a).unwrap();
        drop((second, third, other));
        // Sources with nothing open leave the map.
        assert_eq!(sources.len(), 0);
    }

    #[test]
    fn throttled_lines_count_what_they_skipped() {
        let start = Instant::now();
        let mut throttle = Throttle::default();
        assert_eq!(throttle.hit_at(start), Some(1));
        assert_eq!(throttle.hit_at(start), None);
        assert_eq!(throttle.hit_at(start + LOG_EVERY / 2), None);
        assert_eq!(throttle.hit_at(start + LOG_EVERY), Some(3));
        assert_eq!(throttle.hit_at(start + LOG_EVERY), None);
    }

    #[tokio::test]
    async fn activity_deadlines() {
        let first = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        let activity = Activity::new();
        let start = activity.start;
        // Nothing read yet: the first bytes are due within `first`, whatever
        // was written.
        assert_eq!(activity.deadline(first, idle), start + first);
        activity.touch_at(start + Duration::from_secs(5));
        assert_eq!(activity.deadline(first, idle), start + first);
        // Once something was read: `idle` after the last byte either way.
        activity.read_any.store(true, Ordering::Relaxed);
        activity.touch_at(start + Duration::from_secs(7));
        assert_eq!(
            activity.deadline(first, idle),
            start + Duration::from_secs(7) + idle
        );
        // Expiry itself, with short times.
        let activity = Activity::new();
        let short = Duration::from_millis(50);
        tokio::time::timeout(Duration::from_secs(5), activity.expired(short, idle))
            .await
            .expect("no first bytes: expired");
        activity.read_any.store(true, Ordering::Relaxed);
        activity.touch();
        tokio::time::timeout(Duration::from_secs(5), activity.expired(first, short))
            .await
            .expect("idle: expired");
        // The first bytes arrive while the watch waits for them, with a
        // first-bytes time far longer than `idle`.
        let activity = Arc::new(Activity::new());
        let watch = {
            let activity = activity.clone();
            tokio::spawn(async move { activity.expired(Duration::from_secs(600), short).await })
        };
        tokio::time::sleep(short / 2).await;
        activity.read_any.store(true, Ordering::Relaxed);
        activity.touch();
        tokio::time::timeout(Duration::from_secs(5), watch)
            .await
            .expect("idle after the first bytes: expired")
            .unwrap();
    }

    /// A served request sees the peer address it came from.
    #[tokio::test]
    async fn requests_carry_the_peer_address() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let identity = crate::tls::load_or_create(dir.path(), "cradle-node-1", &[]).unwrap();
        let router = Router::new().route(
            "/peer",
            axum::routing::get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                peer.to_string()
            }),
        );
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let limits = Limits {
            max_connections: 8,
            max_connections_per_source: 4,
            handshake_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(1),
        };
        let listener = Listener::new(
            tcp,
            Arc::new(identity.server_config().unwrap()),
            router,
            limits,
        );
        let (stop, shutdown) = Shutdown::new();
        let served = tokio::spawn(listener.run(shutdown));

        let from: IpAddr = "127.0.0.2".parse().unwrap();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(crate::tls::client_config_for_ca(&identity.ca_pem).unwrap())
            .local_address(from)
            .build()
            .unwrap();
        let seen = client
            .get(format!("https://127.0.0.1:{}/peer", addr.port()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let seen: SocketAddr = seen.parse().unwrap();
        assert_eq!(seen.ip(), from);

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the listener drains")
            .unwrap()
            .unwrap();
    }
}
