//! `cradle-bench`: load figures for one node, printed, not asserted.
//!
//! Starts `cradle server` (the binary next to this one) on a fresh data dir
//! on loopback, creates machines through the HTTPS API with concurrent
//! clients, and prints creates/s, p50/p99 latency, the server's RSS, the
//! data-dir size, the time to page through every machine, and the time from
//! a restart (after SIGKILL) to serving.

#[path = "shared/measure.rs"]
mod measure;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use measure::percentile;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Measure one Cradle node through its HTTPS API")]
struct Args {
    /// Machines to create.
    #[arg(long, default_value_t = 100_000)]
    machines: u32,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: u32,
    /// Page size when listing everything back.
    #[arg(long, default_value_t = 5_000)]
    page: u32,
    /// Keep the data dir here instead of a temporary one.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

const PASSWORD: &str = "bench-admin-password";

struct Server {
    child: Child,
    data_dir: PathBuf,
    api_port: u16,
    rpc_port: u16,
}

impl Server {
    fn spawn(data_dir: &Path, api_port: u16, rpc_port: u16) -> anyhow::Result<Server> {
        let exe = std::env::current_exe()?
            .parent()
            .context("bench binary has no directory")?
            .join("cradle");
        let child = Command::new(&exe)
            .arg("server")
            .env("CRADLE_DATA_DIR", data_dir)
            .env("CRADLE_API_LISTEN", format!("127.0.0.1:{api_port}"))
            .env("CRADLE_DHCP_OFF", "true")
            .env("CRADLE_RPC_LISTEN", format!("127.0.0.1:{rpc_port}"))
            .env("CRADLE_ADMIN_PASSWORD", PASSWORD)
            .env("CRADLE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        Ok(Server {
            child,
            data_dir: data_dir.to_path_buf(),
            api_port,
            rpc_port,
        })
    }

    fn rss_mib(&self) -> f64 {
        measure::process_rss_mib(self.child.id())
    }

    /// CPU seconds (user + system) the server has used.
    fn cpu_secs(&self) -> f64 {
        measure::process_cpu_secs(self.child.id())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn client(data_dir: &Path) -> anyhow::Result<reqwest::Client> {
    let ca = std::fs::read_to_string(data_dir.join("ca.pem"))?;
    let config = cradle::tls::client_config_for_ca(&ca)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// Waits until the API answers an authenticated list; returns the token.
async fn wait_serving(
    server: &Server,
    limit: Duration,
) -> anyhow::Result<(reqwest::Client, String)> {
    let started = Instant::now();
    let base = format!("https://127.0.0.1:{}", server.api_port);
    loop {
        if started.elapsed() > limit {
            bail!("server not serving within {limit:?}");
        }
        if let Ok(http) = client(&server.data_dir) {
            if let Ok(response) = http
                .post(format!("{base}/api/v1/auth/token"))
                .basic_auth("admin", Some(PASSWORD))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                if response.status().is_success() {
                    let grant: Value = response.json().await?;
                    let token = grant["token"].as_str().context("no token")?.to_string();
                    let list = http
                        .get(format!("{base}/api/v1/machines?limit=1"))
                        .bearer_auth(&token)
                        .send()
                        .await?;
                    if list.status().is_success() {
                        return Ok((http, token));
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    cradle::tls::install_crypto_provider();
    let temp = tempfile::tempdir()?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let mut server = Server::spawn(&data_dir, free_port()?, free_port()?)?;
    let (http, token) = wait_serving(&server, Duration::from_secs(60)).await?;
    let base = Arc::new(format!("https://127.0.0.1:{}", server.api_port));

    println!(
        "cradle-bench: {} machines, {} concurrent clients, one node",
        args.machines, args.clients
    );
    let next = Arc::new(AtomicU32::new(0));
    let cpu_before = server.cpu_secs();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.clients {
        let (http, token, base, next) = (http.clone(), token.clone(), base.clone(), next.clone());
        let total = args.machines;
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0u32;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let body = json!({
                    "name": format!("bench-{n}"),
                    "hardware_addrs": [format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", n >> 24, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)],
                    "params": {"rack": format!("r{}", n % 40)},
                });
                let sent = Instant::now();
                let ok = match http
                    .post(format!("{base}/api/v1/machines"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(response) => response.status().is_success(),
                    Err(_) => false,
                };
                latencies.push(sent.elapsed());
                if !ok {
                    failures += 1;
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for worker in workers {
        let (l, f) = worker.await?;
        latencies.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let created = latencies.len() as u32 - failures;
    println!(
        "create: {created} ok, {failures} failed in {:.2} s = {:.0} creates/s; latency p50 {:.1} ms, p99 {:.1} ms",
        elapsed.as_secs_f64(),
        created as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );
    let server_cpu = server.cpu_secs() - cpu_before;
    println!(
        "server CPU: {:.1} s for the creates = {:.0} us per create ({:.0}% of one core; the load generator shares the machine)",
        server_cpu,
        server_cpu * 1e6 / f64::from(created.max(1)),
        server_cpu * 100.0 / elapsed.as_secs_f64(),
    );
    println!("server RSS after load: {:.1} MiB", server.rss_mib());
    println!(
        "data dir size: {:.1} MiB",
        dir_size(&data_dir) as f64 / (1024.0 * 1024.0)
    );

    let started = Instant::now();
    let mut seen = 0usize;
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/api/v1/machines?limit={}", args.page);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let response = http.get(url).bearer_auth(&token).send().await?;
        if !response.status().is_success() {
            bail!("listing failed: {}", response.status());
        }
        cursor = response
            .headers()
            .get("x-next-cursor")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let page: Vec<Value> = response.json().await?;
        seen += page.len();
        if cursor.is_none() {
            break;
        }
    }
    println!(
        "page through all: {seen} machines in {:.2} s (pages of {})",
        started.elapsed().as_secs_f64(),
        args.page
    );
    println!("server RSS after listing: {:.1} MiB", server.rss_mib());

    let (api_port, rpc_port) = (server.api_port, server.rpc_port);
    server.kill();
    let started = Instant::now();
    let server = Server::spawn(&data_dir, api_port, rpc_port)?;
    wait_serving(&server, Duration::from_secs(120)).await?;
    println!(
        "restart (after SIGKILL) to serving: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    println!("server RSS after restart: {:.1} MiB", server.rss_mib());
    Ok(())
}
