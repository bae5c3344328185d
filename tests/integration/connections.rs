//! The API listener against clients that hold connections: idle and slow
//! connections, floods from one source, the connection caps. Verdicts come
//! from the client's side: was the connection closed, was the other client
//! served. Bounds are generous multiples of the configured timeouts.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::cluster_harness::{Cluster, Options};
use crate::common::{self, Client, ADMIN_PASSWORD};

/// Where the flood comes from.
const FLOOD: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
/// The client that must still be served.
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// How many connections a flood opens.
const FLOOD_SIZE: usize = 1_000;
/// How many connection attempts run at once while flooding.
const FLOOD_BATCH: usize = 50;

/// A node in this process with extra `--api-*` flags.
struct Node {
    running: cradle::server::Running,
    ca_pem: String,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let running = cradle::server::start(common::settings_with(dir.path(), 0, 0, extra))
            .await
            .expect("node starts");
        let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).expect("CA written");
        Node {
            running,
            ca_pem,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.running.api_addr
    }
}

/// This test process holds both ends of every connection.
fn raise_own_open_files_limit() {
    let limit = cradle::api::listener::raise_open_files_limit().expect("open-files limit");
    assert!(
        limit >= 4 * FLOOD_SIZE as u64,
        "these tests need an open-files hard limit of at least {}, have {limit}",
        4 * FLOOD_SIZE
    );
}

async fn tcp_from(source: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(to).await
}

fn connector(ca_pem: &str, alpn: &[&[u8]]) -> TlsConnector {
    let mut config = cradle::tls::client_config_for_ca(ca_pem).expect("client TLS config");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// A TLS connection from `source` with the handshake done.
async fn tls_from(
    connector: &TlsConnector,
    source: IpAddr,
    to: SocketAddr,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(source, to).await?;
    let name = rustls::pki_types::ServerName::from(to.ip());
    tokio::time::timeout(Duration::from_secs(30), connector.connect(name, tcp))
        .await
        .map_err(|_| io::Error::other("handshake timed out"))?
}

/// Opens `count` connections with `open`, [`FLOOD_BATCH`] at a time, and
/// returns those that opened and how many failed.
async fn flood<T, F, Fut>(count: usize, open: F) -> (Vec<T>, usize)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = io::Result<T>>,
{
    let mut opened = Vec::new();
    let mut failed = 0;
    for first in (0..count).step_by(FLOOD_BATCH) {
        let batch = FLOOD_BATCH.min(count - first);
        for result in join_all((0..batch).map(|_| open())).await {
            match result {
                Ok(connection) => opened.push(connection),
                Err(_) => failed += 1,
            }
        }
    }
    (opened, failed)
}

/// Reads (and discards) until the server closes the connection. Returns how
/// long that took, or `None` if it was still open after `limit`.
async fn closed_within<S: AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            // A response, or a TLS session ticket.
            Ok(Ok(_)) => {}
        }
    }
}

/// A client bound to `source` gets `/api/v1/ca` and logs in, within a few
/// seconds.
async fn served_from(source: IpAddr, addr: SocketAddr, ca_pem: &str) {
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(cradle::tls::client_config_for_ca(ca_pem).expect("CA config"))
        .local_address(source)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let client = Client {
        http,
        base: format!("https://{addr}"),
        token: None,
        data_dir: std::path::PathBuf::new(),
        trusts_ca: true,
    };
    let served = async {
        client.get("/api/v1/ca").await.expect(200);
        let client = client.login("admin", ADMIN_PASSWORD).await;
        client.get("/api/v1/auth/whoami").await.expect(200);
    };
    tokio::time::timeout(Duration::from_secs(20), served)
        .await
        .expect("the other client is served within a few seconds");
}

const LONG_TIMEOUTS: [&str; 6] = [
    "--api-handshake-timeout-ms",
    "60000",
    "--api-header-timeout-ms",
    "60000",
    "--api-idle-timeout-ms",
    "60000",
];

/// 1,000 idle TLS connections from one source: it holds its cap and no
/// more, and another source is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tls_flood_from_one_source_leaves_others_served() {
    raise_own_open_files_limit();
    let node = Node::start(&LONG_TIMEOUTS).await;
    let tls = connector(&node.ca_pem, &[]);
    let (held, refused) = flood(FLOOD_SIZE, || tls_from(&tls, FLOOD, node.addr())).await;
    println!(
        "idle TLS flood: {} held, {refused} refused at once",
        held.len()
    );
    // The default per-source cap.
    assert_eq!(held.len(), 128);
    served_from(OTHER, node.addr(), &node.ca_pem).await;
    drop(held);
    node.running.shutdown().await;
}

/// 1,000 TCP connections that never start TLS: another source is served
/// meanwhile, and the server closes every one of them, those over the cap at
/// once and the rest at the handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_flood_without_tls_is_closed() {
    raise_own_open_files_limit();
    let handshake = Duration::from_secs(3);
    let node = Node::start(&["--api-handshake-timeout-ms", "3000"]).await;
    let (mut opened, failed) = flood(FLOOD_SIZE, || tcp_from(FLOOD, node.addr())).await;
    assert_eq!(failed, 0, "the kernel accepts every TCP connection");
    served_from(OTHER, node.addr(), &node.ca_pem).await;

    let bound = handshake * 5;
    let results = join_all(opened.iter_mut().map(|c| closed_within(c, bound))).await;
    let still_open = results.iter().filter(|r| r.is_none()).count();
    let at_once = results
        .iter()
        .filter(|r| r.is_some_and(|after| after < handshake / 2))
        .count();
    println!(
        "TCP flood: {at_once} closed at once, {} at the handshake timeout, {still_open} open",
        FLOOD_SIZE - at_once - still_open
    );
    assert_eq!(
        still_open, 0,
        "connections still open {bound:?} after connecting"
    );
    node.running.shutdown().await;
}

/// A source at its cap: its next connection is closed at once (long before
/// any timeout), another source is served, and a slot given back is
/// available again.
#[tokio::test]
async fn per_source_cap() {
    let cap = 4;
    let mut flags = LONG_TIMEOUTS.to_vec();
    flags.extend(["--api-max-connections-per-source", "4"]);
    let node = Node::start(&flags).await;
    let tls = connector(&node.ca_pem, &[]);
    let mut held = Vec::new();
    for _ in 0..cap {
        held.push(
            tls_from(&tls, FLOOD, node.addr())
                .await
                .expect("under the cap"),
        );
    }
    let mut over = tcp_from(FLOOD, node.addr()).await.expect("TCP connect");
    assert!(
        closed_within(&mut over, Duration::from_secs(10))
            .await
            .is_some(),
        "connection cap+1 from one source is closed at once"
    );
    assert!(tls_from(&tls, FLOOD, node.addr()).await.is_err());
    served_from(OTHER, node.addr(), &node.ca_pem).await;

    // Closing one gives its slot back (once the server has seen the close).
    drop(held.pop());
    let reopened = accepted_again(&tls, FLOOD, node.addr()).await;
    assert!(reopened.is_some(), "a freed slot is usable again");
    drop((held, reopened));
    node.running.shutdown().await;
}

/// The listener's cap: once it is full, a connection from any source is
/// closed at once.
#[tokio::test]
async fn listener_cap() {
    let mut flags = LONG_TIMEOUTS.to_vec();
    flags.extend([
        "--api-max-connections",
        "8",
        "--api-max-connections-per-source",
        "4",
    ]);
    let node = Node::start(&flags).await;
    let tls = connector(&node.ca_pem, &[]);
    let mut held = Vec::new();
    for source in [FLOOD, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))] {
        for _ in 0..4 {
            held.push(
                tls_from(&tls, source, node.addr())
                    .await
                    .expect("under the cap"),
            );
        }
    }
    let mut over = tcp_from(OTHER, node.addr()).await.expect("TCP connect");
    assert!(
        closed_within(&mut over, Duration::from_secs(10))
            .await
            .is_some(),
        "a connection over the listener's cap is closed at once"
    );
    drop(held);
    let probe = accepted_again(&tls, OTHER, node.addr()).await;
    assert!(probe.is_some(), "freed slots are usable again");
    drop(probe);
    served_from(OTHER, node.addr(), &node.ca_pem).await;
    node.running.shutdown().await;
}

/// After connections were closed on the client's side, waits (bounded) until
/// a new one from `source` is accepted and stays open.
async fn accepted_again(
    tls: &TlsConnector,
    source: IpAddr,
    addr: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    for _ in 0..50 {
        if let Ok(mut connection) = tls_from(tls, source, addr).await {
            if closed_within(&mut connection, Duration::from_millis(500))
                .await
                .is_none()
            {
                return Some(connection);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Half a request head, a head dripped byte by byte, and a handshake with
/// nothing after it are all closed at the header timeout, although the idle
/// timeout is far away.
#[tokio::test]
async fn slow_request_heads_are_closed_at_the_header_timeout() {
    let header = Duration::from_secs(2);
    let node = Node::start(&[
        "--api-header-timeout-ms",
        "2000",
        "--api-idle-timeout-ms",
        "600000",
    ])
    .await;
    let tls = connector(&node.ca_pem, &[]);
    let bound = header * 5;

    let mut silent = tls_from(&tls, FLOOD, node.addr()).await.expect("connect");
    let closed = closed_within(&mut silent, bound).await;
    println!("handshake then nothing: closed after {closed:?}");
    assert!(closed.is_some(), "a silent connection stays open");

    let mut half = tls_from(&tls, FLOOD, node.addr()).await.expect("connect");
    half.write_all(b"GET /api/v1/ca HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .expect("write");
    half.flush().await.expect("flush");
    let closed = closed_within(&mut half, bound).await;
    println!("half a request head: closed after {closed:?}");
    assert!(closed.is_some(), "half a request head stays open");

    // One byte every 200 ms: far more often than the idle timeout.
    let dripping = tls_from(&tls, FLOOD, node.addr()).await.expect("connect");
    let (mut reader, mut writer) = tokio::io::split(dripping);
    let watch = tokio::spawn(async move { closed_within(&mut reader, bound).await });
    writer
        .write_all(b"GET /api/v1/ca HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .expect("write");
    writer.flush().await.expect("flush");
    let drip = Duration::from_millis(200);
    let mut dripped = 0;
    for _ in 0..bound.as_millis() / drip.as_millis() {
        if watch.is_finished()
            || writer.write_all(b"a").await.is_err()
            || writer.flush().await.is_err()
        {
            break;
        }
        dripped += 1;
        tokio::time::sleep(drip).await;
    }
    let closed = watch.await.expect("watcher");
    println!("dripped head: closed after {closed:?} and {dripped} bytes");
    assert!(closed.is_some(), "a dripped request head stays open");
    node.running.shutdown().await;
}

/// A connection left idle after a complete request is closed: over HTTP/1 by
/// the header timeout (hyper's wait for the next request head), and by the
/// idle timeout where that is shorter, over HTTP/1 and HTTP/2.
#[tokio::test]
async fn idle_connections_after_a_request_are_closed() {
    let request = b"GET /api/v1/ca HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

    // HTTP/1 keep-alive: the header timeout ends it.
    let header = Duration::from_secs(2);
    let node = Node::start(&[
        "--api-header-timeout-ms",
        "2000",
        "--api-idle-timeout-ms",
        "600000",
    ])
    .await;
    let tls = connector(&node.ca_pem, &[]);
    let mut keep_alive = tls_from(&tls, FLOOD, node.addr()).await.expect("connect");
    keep_alive.write_all(request).await.expect("write");
    keep_alive.flush().await.expect("flush");
    let closed = closed_within(&mut keep_alive, header * 5).await;
    println!("HTTP/1 keep-alive, header timeout 2 s: closed after {closed:?}");
    assert!(closed.is_some(), "an idle keep-alive connection stays open");
    node.running.shutdown().await;

    // The idle timeout, shorter than the header timeout here.
    let idle = Duration::from_secs(2);
    let node = Node::start(&[
        "--api-header-timeout-ms",
        "600000",
        "--api-idle-timeout-ms",
        "2000",
    ])
    .await;
    let tls = connector(&node.ca_pem, &[]);
    let mut keep_alive = tls_from(&tls, FLOOD, node.addr()).await.expect("connect");
    keep_alive.write_all(request).await.expect("write");
    keep_alive.flush().await.expect("flush");
    let closed = closed_within(&mut keep_alive, idle * 5).await;
    println!("HTTP/1 keep-alive, idle timeout 2 s: closed after {closed:?}");
    assert!(closed.is_some(), "an idle keep-alive connection stays open");

    // HTTP/2 has no header timeout: only the idle timeout ends it.
    let h2 = connector(&node.ca_pem, &[b"h2"]);
    let stream = tls_from(&h2, FLOOD, node.addr()).await.expect("connect");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    let driver = tokio::spawn(async move {
        let started = Instant::now();
        let _ = connection.await;
        started.elapsed()
    });
    let request = axum::http::Request::get(format!("https://{}/api/v1/ca", node.addr()))
        .body(())
        .expect("request");
    let mut send = send.ready().await.expect("h2 ready");
    let (response, _) = send.send_request(request, true).expect("send");
    let response = response.await.expect("response");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    // `send` stays alive: the client does not end the connection itself.
    let ended = tokio::time::timeout(idle * 5, driver).await;
    println!("HTTP/2 after a request, idle timeout 2 s: {ended:?}");
    assert!(ended.is_ok(), "an idle HTTP/2 connection stays open");
    drop(send);
    node.running.shutdown().await;
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn max_open_files(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|line| line.starts_with("Max open files"))
                .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default()
}

/// A server started under the stock `ulimit -n 1024` holds 1,000 idle TLS
/// connections from one source (it raises its own limit) and still serves
/// another; prints its memory before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_idle_tls_connections_in_a_child_process() {
    raise_own_open_files_limit();
    let env = [
        ("CRADLE_API_MAX_CONNECTIONS_PER_SOURCE", "2000"),
        ("CRADLE_API_HANDSHAKE_TIMEOUT_MS", "120000"),
        ("CRADLE_API_HEADER_TIMEOUT_MS", "120000"),
        ("CRADLE_API_IDLE_TIMEOUT_MS", "120000"),
    ];
    let node = Cluster::start_with(
        1,
        Options {
            open_files_soft_limit: Some(1024),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: "warn".into(),
            ..Options::default()
        },
    )
    .await;
    let pid = node.nodes[0].pid().expect("running");
    let api_addr = node.nodes[0].api_addr;
    let ca_pem = node.ca_pem.clone();
    // Warm up (connections, a login) before the baseline.
    served_from(OTHER, api_addr, &ca_pem).await;
    let before = vm_rss_kib(pid);

    let tls = connector(&ca_pem, &[]);
    let (held, refused) = flood(FLOOD_SIZE, || tls_from(&tls, FLOOD, api_addr)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = vm_rss_kib(pid);
    assert_eq!(
        (held.len(), refused),
        (FLOOD_SIZE, 0),
        "the server held every connection under its caps"
    );
    served_from(OTHER, api_addr, &ca_pem).await;
    let open = still_open(held).await;
    println!(
        "child server ({}): VmRSS {before} KiB before, {after} KiB with {FLOOD_SIZE} idle TLS \
         connections ({} KiB each); {open} still open after the other client was served",
        max_open_files(pid),
        after.saturating_sub(before) / FLOOD_SIZE as u64,
    );
    assert_eq!(open, FLOOD_SIZE);
    drop(node);
}

/// How many of `connections` are still open (no close within 200 ms).
async fn still_open(mut connections: Vec<TlsStream<TcpStream>>) -> usize {
    let checks = connections
        .iter_mut()
        .map(|c| closed_within(c, Duration::from_millis(200)));
    join_all(checks)
        .await
        .iter()
        .filter(|closed| closed.is_none())
        .count()
}
