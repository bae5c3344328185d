//! How a node starts and stops: listening sockets bound before Raft (a port
//! conflict fails fast, naming the address, and leaves nothing running), a
//! failed start stops what it started, and SIGTERM drains within the bound
//! and exits 0.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, free_port, Client, ADMIN_PASSWORD};

/// Well within the time a start takes to elect a leader and bootstrap: a
/// start refused for a port must not get that far.
const FAST_EXIT: Duration = Duration::from_secs(10);

fn spawn_server(data_dir: &Path, api: SocketAddr, rpc: SocketAddr) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cradle"))
        .arg("server")
        .env("CRADLE_DATA_DIR", data_dir)
        .env("CRADLE_API_LISTEN", api.to_string())
        .env("CRADLE_DHCP_OFF", "true")
        .env("CRADLE_RPC_LISTEN", rpc.to_string())
        .env("CRADLE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("CRADLE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cradle server")
}

/// Waits for `child` to exit within `limit`; kills it and fails otherwise.
fn wait_exit(child: &mut Child, limit: Duration) -> (ExitStatus, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (status, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cradle server did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut Child) -> String {
    use std::io::Read as _;
    let mut text = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut text);
    }
    text
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A port already taken, for the API or for peer RPC: `cradle server`
/// exits non-zero at once, saying which listener and which address, and
/// never opened Raft (no database in the data dir).
#[test]
fn a_taken_port_fails_the_start_fast_with_the_address() {
    for which in ["API", "peer RPC"] {
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_addr = taken.local_addr().unwrap();
        let free = loopback(free_port());
        let (api, rpc) = match which {
            "API" => (taken_addr, free),
            _ => (free, taken_addr),
        };
        let mut child = spawn_server(dir.path(), api, rpc);
        let (status, took) = wait_exit(&mut child, FAST_EXIT);
        let stderr = stderr_of(&mut child);
        assert!(!status.success(), "{which}: exit status {status}");
        assert!(
            stderr.contains(&format!("binding the {which} listener on {taken_addr}")),
            "{which}: the error names the listener and address: {stderr}"
        );
        assert!(
            !dir.path().join("raft").exists(),
            "{which}: Raft was opened before the sockets were bound"
        );
        assert!(took < FAST_EXIT, "{which}: took {took:?}");
        drop(taken);
    }
}

/// `cradle join` on a taken port fails before it contacts the cluster, so
/// a join token is never spent on a node that cannot start.
#[test]
fn a_join_on_a_taken_port_fails_before_joining() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = taken.local_addr().unwrap();
    // Nothing listens there: reaching it would fail differently.
    let nowhere = format!("https://127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_cradle"))
        .args(["join", "--token", "abc.def", "--ca-hash"])
        .arg(format!("sha256:{}", "0".repeat(64)))
        .arg(&nowhere)
        .env("CRADLE_DATA_DIR", dir.path())
        .env("CRADLE_API_LISTEN", api.to_string())
        .env("CRADLE_DHCP_OFF", "true")
        .env("CRADLE_RPC_LISTEN", loopback(free_port()).to_string())
        .env("CRADLE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cradle join");
    let (status, _) = wait_exit(&mut child, FAST_EXIT);
    let stderr = stderr_of(&mut child);
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("binding the API listener on {api}")),
        "{stderr}"
    );
    assert!(!dir.path().join(cradle::cluster::IDENTITY_FILE).exists());
}

/// In-process: the start returns the error, and the socket it had already
/// bound (peer RPC) is free again.
#[tokio::test]
async fn a_refused_start_leaves_no_socket_bound() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = taken.local_addr().unwrap();
    let rpc_port = free_port();
    let settings = common::settings(dir.path(), api.port(), rpc_port);
    let error = match cradle::server::start(settings).await {
        Ok(_) => panic!("started on a taken port"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains(&api.to_string()), "{error}");
    assert!(!dir.path().join("raft").exists());
    std::net::TcpListener::bind(loopback(rpc_port)).expect("the RPC port is free again");
}

/// A start that fails after Raft and peer RPC are running (here:
/// `cluster.json` cannot be written) stops them before returning: the RPC
/// port is free again, and the database can be opened again by a new start
/// in the same process (it would be locked if the first node still ran).
#[tokio::test]
async fn a_start_failing_after_raft_stops_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file's temporary copy goes: the write fails.
    let obstacle = dir.path().join("cluster.json.tmp");
    std::fs::create_dir_all(obstacle.join("x")).unwrap();
    let rpc_port = free_port();
    let api_port = free_port();
    let settings = common::settings(dir.path(), api_port, rpc_port);
    let started = Instant::now();
    let error = match cradle::server::start(settings).await {
        Ok(_) => panic!("started although cluster.json cannot be written"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("cluster.json"), "{error}");
    assert!(dir.path().join("raft").exists(), "Raft had started");
    assert!(started.elapsed() < Duration::from_secs(30));
    std::net::TcpListener::bind(loopback(rpc_port)).expect("peer RPC stopped");
    std::net::TcpListener::bind(loopback(api_port)).expect("the API port is free");

    std::fs::remove_dir_all(&obstacle).unwrap();
    let running = cradle::server::start(common::settings(dir.path(), 0, 0))
        .await
        .expect("the same data dir opens again");
    let client = Client::for_node(running.api_addr, dir.path())
        .login("admin", ADMIN_PASSWORD)
        .await;
    client.get("/api/v1/status").await.expect(200);
    running.shutdown().await;
}

/// SIGTERM with a client holding an event stream open: the node drains
/// (the stream is closed at the end of the API's drain time) and exits 0
/// within the shutdown bound.
#[tokio::test]
async fn sigterm_drains_within_the_bound_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let api = loopback(free_port());
    let mut child = spawn_server(dir.path(), api, loopback(free_port()));
    let client = wait_ready(api, dir.path(), Duration::from_secs(60)).await;
    let stream = client
        .http
        .get(client.url("/api/v1/events"))
        .bearer_auth(client.token.clone().unwrap_or_default())
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("the event stream opens");
    assert!(stream.status().is_success());

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    // Three stages (services, background tasks, Raft), each bounded.
    let bound = cradle::server::SHUTDOWN_WAIT * 3;
    let (status, took) = tokio::task::spawn_blocking(move || {
        let exited = wait_exit(&mut child, bound + Duration::from_secs(5));
        let stderr = stderr_of(&mut child);
        (exited, stderr)
    })
    .await
    .map(|(exited, stderr)| {
        assert!(exited.0.success(), "exit {}: {stderr}", exited.0);
        exited
    })
    .unwrap();
    assert!(status.success());
    assert!(took <= bound, "took {took:?}, bound {bound:?}");
    drop(stream);
}

/// A logged-in client once the node at `api` answers.
async fn wait_ready(api: SocketAddr, data_dir: &Path, limit: Duration) -> Client {
    let started = Instant::now();
    while started.elapsed() < limit {
        if data_dir.join(cradle::tls::CA_CERT_FILE).exists() {
            let client = Client::for_node(api, data_dir);
            let answered = client
                .http
                .get(client.url("/api/v1/ca"))
                .timeout(Duration::from_millis(500))
                .send()
                .await;
            if answered.is_ok_and(|r| r.status().is_success()) {
                return client.login("admin", ADMIN_PASSWORD).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("node at {api} not ready within {limit:?}");
}
