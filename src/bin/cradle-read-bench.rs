//! `cradle-read-bench`: what heavy lists cost the rest of a node, printed,
//! not asserted.
//!
//! Runs one node in this process on its own tokio runtime (as `cradle
//! server` would), with a UDP echo task on that same runtime standing in for
//! a DHCP reply. Creates `--machines` machines through the HTTPS API, then
//! measures the latency of `GET /api/v1/status` and of a UDP round trip to
//! the echo task, first with nothing else running, then while `--listers`
//! clients each list `GET /api/v1/machines?sort=name&limit=100` in a loop.
//!
//! The clients run on a runtime of their own, so what is measured is the
//! node's runtime, not the load generator's (both share the machine's CPUs).
//!
//! ```text
//! cargo run --bin cradle-read-bench -- --machines 100000
//! cargo run --bin cradle-read-bench -- --machines 2000 --phase-secs 2   # a quick run
//! ```

#[path = "shared/measure.rs"]
#[allow(dead_code)]
mod measure;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use cradle::service;
use measure::percentile;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Measure status and UDP latency on one node while heavy lists run")]
struct Args {
    /// Machines in the store before measuring.
    #[arg(long, default_value_t = 100_000)]
    machines: u32,
    /// Concurrent clients creating the machines.
    #[arg(long, default_value_t = 64)]
    create_clients: u32,
    /// Concurrent clients listing `?sort=name&limit=100` during the load.
    #[arg(long, default_value_t = 16)]
    listers: u32,
    /// Seconds measured before the load and again during it.
    #[arg(long, default_value_t = 10)]
    phase_secs: u64,
    /// Worker threads of the node's runtime (0: one per CPU, as `cradle
    /// server` runs).
    #[arg(long, default_value_t = 0)]
    server_threads: usize,
    /// Keep the data dir here instead of a temporary one; a second run on
    /// the same dir skips the creates it finds done.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

const PASSWORD: &str = "read-bench-admin-password";
/// Between two status probes, and between two UDP probes.
const PROBE_EVERY: Duration = Duration::from_millis(10);
/// A probe that takes longer counts as this long (and as lost, for UDP).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the listers get to finish the list in hand once measuring ends.
const LISTERS_STOP: Duration = Duration::from_secs(5);
/// How long the node gets to stop at the end.
const NODE_STOP: Duration = Duration::from_secs(15);

/// Datagrams echoed in flight at once.
const ECHO_IN_FLIGHT: usize = 64;

/// Answers every datagram with itself.
struct Echo;

impl service::Datagrams for Echo {
    async fn answer(&self, packet: &[u8], _from: SocketAddr) -> Option<Vec<u8>> {
        Some(packet.to_vec())
    }
}

/// The node's runtime, with the node and the echo service on it.
struct Node {
    api_addr: SocketAddr,
    echo_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    fn start(data_dir: &Path, threads: usize) -> anyhow::Result<Node> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all().thread_name("node");
        if threads > 0 {
            builder.worker_threads(threads);
        }
        let runtime = builder.build()?;
        let settings = settings(data_dir);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let running = match cradle::server::start(settings).await {
                    Ok(running) => running,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("{e:#}")));
                        return;
                    }
                };
                // The stand-in for DHCP, run the way DHCP will be: a
                // `UdpService` on the node's runtime.
                let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
                let echo = match service::bind_udp("echo", any).await {
                    Ok(echo) => echo,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                let echo = service::UdpService::new(
                    "echo",
                    echo,
                    Arc::new(Echo),
                    service::Limit::new(ECHO_IN_FLIGHT, Duration::ZERO),
                    Duration::from_secs(1),
                );
                let echo_addr = echo.local_addr().ok();
                let mut services = service::Services::new(Duration::from_secs(5));
                services.spawn(echo);
                let _ = ready_tx.send(
                    echo_addr
                        .map(|echo| (running.api_addr, echo))
                        .context("echo socket address"),
                );
                let _ = stopped.await;
                services.shutdown().await;
                running.shutdown().await;
            });
        });
        let (api_addr, echo_addr) = ready_rx
            .recv()
            .context("the node's runtime ended before the node started")??;
        Ok(Node {
            api_addr,
            echo_addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

fn settings(data_dir: &Path) -> cradle::config::ServerSettings {
    #[derive(clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: cradle::config::ServerArgs,
    }
    let data = data_dir.display().to_string();
    Wrapper::parse_from([
        "cradle-read-bench",
        "--data-dir",
        &data,
        "--api-listen",
        "127.0.0.1:0",
        "--rpc-listen",
        "127.0.0.1:0",
        "--admin-password",
        PASSWORD,
        "--dhcp-off",
    ])
    .args
    .into_settings()
}

fn http_client(data_dir: &Path) -> anyhow::Result<reqwest::Client> {
    let ca = std::fs::read_to_string(data_dir.join(cradle::tls::CA_CERT_FILE))?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(cradle::tls::client_config_for_ca(&ca)?)
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(60))
        .build()?)
}

async fn login(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let response = http
        .post(format!("{base}/api/v1/auth/token"))
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("login failed: {}", response.status());
    }
    let grant: Value = response.json().await?;
    Ok(grant["token"].as_str().context("no token")?.to_string())
}

fn machine(n: u32) -> Value {
    json!({
        "name": format!("read-bench-{n:07}"),
        "hardware_addrs": [format!("02:01:{:02x}:{:02x}:{:02x}:{:02x}", n >> 24, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)],
        "params": {"rack": format!("r{}", n % 40)},
    })
}

/// Creates machines `0..count` unless the last one already exists (a kept
/// data dir). Returns how many were created.
async fn create(
    http: &reqwest::Client,
    base: &Arc<String>,
    token: &Arc<String>,
    count: u32,
    clients: u32,
) -> anyhow::Result<u32> {
    if count == 0 {
        return Ok(0);
    }
    let last = format!(
        "{base}/api/v1/machines?name=read-bench-{:07}&limit=1",
        count - 1
    );
    let found: Vec<Value> = http
        .get(last)
        .bearer_auth(token.as_str())
        .send()
        .await?
        .json()
        .await?;
    if !found.is_empty() {
        return Ok(0);
    }
    let next = Arc::new(AtomicU32::new(0));
    let created = Arc::new(AtomicU32::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..clients.max(1) {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        let (next, created) = (next.clone(), created.clone());
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return Ok::<(), anyhow::Error>(());
                }
                let response = http
                    .post(format!("{base}/api/v1/machines"))
                    .bearer_auth(token.as_str())
                    .json(&machine(n))
                    .send()
                    .await?;
                match response.status().as_u16() {
                    200..=299 => {
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                    // Left by an earlier, interrupted run on a kept dir.
                    409 => {}
                    status => bail!("creating machine {n}: {status}"),
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(created.load(Ordering::Relaxed))
}

/// Probes until `until`: status requests one after another, and UDP round
/// trips one after another, each paced by [`PROBE_EVERY`].
async fn probe(
    http: reqwest::Client,
    base: Arc<String>,
    token: Arc<String>,
    echo: SocketAddr,
    until: Instant,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, u32)> {
    let status = {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < until {
                let sent = Instant::now();
                let ok = tokio::time::timeout(PROBE_TIMEOUT, async {
                    http.get(format!("{base}/api/v1/status"))
                        .bearer_auth(token.as_str())
                        .send()
                        .await
                        .map(|r| r.status().is_success())
                })
                .await;
                // A probe that timed out counts as the timeout; one that
                // failed means the bench is broken.
                if let Ok(answered) = &ok {
                    if !matches!(answered, Ok(true)) {
                        bail!("status probe failed: {answered:?}");
                    }
                }
                latencies.push(sent.elapsed().min(PROBE_TIMEOUT));
                tokio::time::sleep(PROBE_EVERY).await;
            }
            Ok(latencies)
        })
    };
    let udp = tokio::spawn(async move {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        socket.connect(echo).await?;
        let mut latencies = Vec::new();
        let mut lost = 0u32;
        let mut buf = [0u8; 64];
        let mut seq = 0u64;
        while Instant::now() < until {
            seq += 1;
            let sent = Instant::now();
            socket.send(&seq.to_be_bytes()).await?;
            let answered = tokio::time::timeout(PROBE_TIMEOUT, async {
                loop {
                    let n = socket.recv(&mut buf).await?;
                    // A late answer to an earlier probe is not this one's.
                    if n == 8 && buf[..8] == seq.to_be_bytes() {
                        return Ok::<(), std::io::Error>(());
                    }
                }
            })
            .await;
            match answered {
                Ok(result) => result?,
                Err(_) => lost += 1,
            }
            latencies.push(sent.elapsed().min(PROBE_TIMEOUT));
            tokio::time::sleep(PROBE_EVERY).await;
        }
        Ok::<_, anyhow::Error>((latencies, lost))
    });
    let mut status = status.await??;
    let (mut udp, lost) = udp.await??;
    status.sort();
    udp.sort();
    Ok((status, udp, lost))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    cradle::tls::install_crypto_provider();
    let temp = tempfile::tempdir()?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&data_dir)?;
    let mut node = Node::start(&data_dir, args.server_threads)?;
    let base = Arc::new(format!("https://{}", node.api_addr));
    let http = http_client(&data_dir)?;
    let token = Arc::new(login(&http, &base).await?);
    println!(
        "cradle-read-bench: {} machines, {} listers of ?sort=name&limit=100, {} s per phase",
        args.machines, args.listers, args.phase_secs
    );

    let started = Instant::now();
    let created = create(&http, &base, &token, args.machines, args.create_clients).await?;
    println!(
        "create: {created} machines in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let phase = Duration::from_secs(args.phase_secs.max(1));
    let (status_before, udp_before, lost_before) = probe(
        http.clone(),
        base.clone(),
        token.clone(),
        node.echo_addr,
        Instant::now() + phase,
    )
    .await?;

    let running = Arc::new(AtomicBool::new(true));
    let lists = Arc::new(AtomicU32::new(0));
    let refused = Arc::new(AtomicU32::new(0));
    let list_latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut listers = tokio::task::JoinSet::new();
    for _ in 0..args.listers {
        let (http, base, token, running) =
            (http.clone(), base.clone(), token.clone(), running.clone());
        let (lists, refused, list_latencies) =
            (lists.clone(), refused.clone(), list_latencies.clone());
        listers.spawn(async move {
            while running.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let response = http
                    .get(format!("{base}/api/v1/machines?sort=name&limit=100"))
                    .bearer_auth(token.as_str())
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lists.fetch_add(1, Ordering::Relaxed);
                    }
                    // Over the node's limit: `503 busy`, as designed.
                    Ok(r) if r.status().as_u16() == 503 => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        bail!("list failed: {status} {body}");
                    }
                    Err(e) => bail!("list failed: {e}"),
                }
                if let Ok(mut latencies) = list_latencies.lock() {
                    latencies.push(sent.elapsed());
                }
            }
            Ok(())
        });
    }
    // Let the listers get going before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let load_started = Instant::now();
    let (status_during, udp_during, lost_during) = probe(
        http.clone(),
        base.clone(),
        token.clone(),
        node.echo_addr,
        Instant::now() + phase,
    )
    .await?;
    let load_secs = load_started.elapsed().as_secs_f64() + 0.5;
    running.store(false, Ordering::Relaxed);
    let joined = tokio::time::timeout(LISTERS_STOP, async {
        while let Some(done) = listers.join_next().await {
            done??;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await;
    let unfinished = listers.len();
    match joined {
        Ok(result) => result?,
        Err(_) => listers.abort_all(),
    }
    let mut list_latencies = list_latencies.lock().map(|l| l.clone()).unwrap_or_default();
    list_latencies.sort();
    let (lists, refused) = (
        lists.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    let rss_mib = measure::process_rss_mib(std::process::id());

    let p = |v: &[Duration], q: f64| ms(percentile(v, q));
    println!(
        "lists during load: {lists} ok ({:.1}/s), {refused} refused busy, {unfinished} unfinished at the end; \
         list p50 {:.1} ms, p99 {:.1} ms",
        f64::from(lists) / load_secs,
        p(&list_latencies, 0.50),
        p(&list_latencies, 0.99),
    );
    println!("process RSS after the load: {rss_mib:.0} MiB");
    println!(
        "status p50 before {:.1} ms, during {:.1} ms; udp echo p50 before {:.2} ms, during {:.2} ms",
        p(&status_before, 0.50),
        p(&status_during, 0.50),
        p(&udp_before, 0.50),
        p(&udp_during, 0.50),
    );
    println!(
        "status p99 before {:.1} ms, during {:.1} ms; udp echo p99 before {:.2} ms, during {:.2} ms",
        p(&status_before, 0.99),
        p(&status_during, 0.99),
        p(&udp_before, 0.99),
        p(&udp_during, 0.99),
    );
    println!(
        "probes: status {} before, {} during; udp {} before ({lost_before} lost), {} during ({lost_during} lost)",
        status_before.len(),
        status_during.len(),
        udp_before.len(),
        udp_during.len(),
    );
    println!(
        "read-bench: status p99 during load {:.0} ms (target < 20 ms)",
        p(&status_during, 0.99)
    );
    // A node still busy with lists it cannot interrupt is left to the exit.
    let (stopped_tx, stopped_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        node.stop();
        let _ = stopped_tx.send(());
    });
    if stopped_rx.recv_timeout(NODE_STOP).is_err() {
        println!("the node did not stop within {NODE_STOP:?}; exiting anyway");
        std::process::exit(0);
    }
    Ok(())
}
