//! `cradle-cluster-bench`: cluster figures, printed beside their targets,
//! not asserted.
//!
//! Runs `cradle` (the binary next to this one) as child processes on
//! loopback through `cradle::testkit::Cluster`, one address per node
//! (127.0.0.2, 127.0.0.3, …), and Debian's `etcd` (package `etcd-server`)
//! the same way as the reference, and measures through each one's HTTPS API:
//! 1. write throughput of 1 and 3 nodes with the same concurrent clients
//!    spread over all nodes, Cradle (machine creates) and etcd (puts of a
//!    value the size of a machine record), and their ratio;
//! 2. the write-unavailability gap after SIGKILL of the leader, over
//!    repeated kills (the killed node restarts and rejoins each time), for
//!    Cradle, for etcd at its defaults and for etcd at Cradle's timing;
//! 3. the write gap after SIGSTOP of the leader (a frozen leader);
//! 4. the elections a healed partition causes (a follower cut off, then
//!    back);
//! 5. the time for a new node to join and catch up with N machines.
//!
//! `cargo build --release --bin cradle --bin cradle-cluster-bench &&
//! target/release/cradle-cluster-bench` (etcd from `packaging/install-deps.sh`).

#[path = "cluster-bench/etcd.rs"]
mod etcd;
#[path = "shared/measure.rs"]
mod measure;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use cradle::testkit::{Cluster, Options};
use measure::percentile;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Measure a Cradle cluster on loopback through its HTTPS API, beside etcd")]
struct Args {
    /// Machines the cluster holds when a new node joins (part 5).
    #[arg(long, default_value_t = 100_000)]
    machines: u32,
    /// Writes for each throughput run (part 1).
    #[arg(long, default_value_t = 20_000)]
    throughput_machines: u32,
    /// Concurrent clients for the throughput runs and the bulk load.
    #[arg(long, default_value_t = 64)]
    clients: u32,
    /// Leader kills per system (part 2).
    #[arg(long, default_value_t = 10)]
    kills: u32,
    /// Concurrent clients writing during kills and pauses.
    #[arg(long, default_value_t = 12)]
    gap_clients: u32,
    /// Leader pauses (part 3).
    #[arg(long, default_value_t = 5)]
    pauses: u32,
    /// How long each pause lasts.
    #[arg(long, default_value_t = 5)]
    pause_secs: u64,
    /// Partitions healed (part 4).
    #[arg(long, default_value_t = 3)]
    heals: u32,
    /// How long a follower stays cut off each time.
    #[arg(long, default_value_t = 10)]
    cut_secs: u64,
    /// The etcd server binary; the comparison is skipped if it is missing.
    #[arg(long, default_value = "etcd")]
    etcd: PathBuf,
    /// Bytes of each etcd value: about a machine record.
    #[arg(long, default_value_t = 1024)]
    etcd_value_bytes: usize,
    /// Keep the nodes' directories here instead of a temporary one.
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// Longest an election may take.
const LEADER_LIMIT: Duration = Duration::from_secs(30);
/// Longest writes may stay unavailable after a fault before the run gives up.
const GAP_LIMIT: Duration = Duration::from_secs(30);
/// Longest the measured join (part 5) may take before the run gives up.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(600);
/// Longest a restarted node may take to catch up.
const RESTART_LIMIT: Duration = Duration::from_secs(60);
/// Longest convergence after a heal may take.
const CONVERGE_LIMIT: Duration = Duration::from_secs(60);
/// Per-write timeout: above both servers' no-leader waits.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Writes flow this long before each fault.
const SETTLE: Duration = Duration::from_millis(500);
/// After a heal, a returning node has this long to cause an election
/// before the terms are read (many election timeouts).
const AFTER_HEAL: Duration = Duration::from_secs(3);

/// Cradle's default Raft timing, given to etcd for the second comparison.
/// etcd needs its election timeout at least five heartbeats, so its
/// heartbeat is 60 ms where Cradle's is 100 ms.
const CRADLE_HEARTBEAT_MS: u64 = 100;
const CRADLE_ELECTION_MIN_MS: u64 = 300;
const ETCD_AT_CRADLE_TIMING: etcd::Timing = etcd::Timing {
    heartbeat_ms: Some(60),
    election_ms: Some(CRADLE_ELECTION_MIN_MS),
};

/// Targets printed beside the figures.
const TARGET_RATIO: f64 = 0.7;
const TARGET_MEDIAN_GAP_SECS: f64 = 1.5;
const TARGET_JOIN_SECS: f64 = 10.0;
const TARGET_VS_ETCD_WRITES: f64 = 1.0;
const TARGET_VS_ETCD_GAP: f64 = 1.0;
const TARGET_HEAL_ELECTIONS: u64 = 0;

/// A machine named and addressed by the bench phase and a counter, so no
/// two phases collide.
fn machine_body(phase: u8, n: u32) -> Value {
    let [a, b, c, d] = n.to_be_bytes();
    json!({
        "name": format!("p{phase}-{n}"),
        "hardware_addrs": [format!("02:{phase:02x}:{a:02x}:{b:02x}:{c:02x}:{d:02x}")],
        "params": {"rack": format!("r{}", n % 40)},
    })
}

/// What a load writes to: one HTTPS POST per write, client `c` sending to
/// `urls[c % urls.len()]`.
#[derive(Clone)]
struct Writer {
    http: reqwest::Client,
    urls: Vec<String>,
    bearer: Option<String>,
    body: Arc<dyn Fn(u32) -> Value + Send + Sync>,
}

impl Writer {
    fn cradle(cluster: &Cluster, targets: &[usize], phase: u8) -> Writer {
        Writer {
            http: cluster.http().clone(),
            urls: targets
                .iter()
                .map(|&i| cluster.url(i, "/api/v1/machines"))
                .collect(),
            bearer: Some(cluster.token.clone()),
            body: Arc::new(move |n| machine_body(phase, n)),
        }
    }

    fn etcd(etcd: &etcd::Etcd, targets: &[usize], phase: u8, value_bytes: usize) -> Writer {
        Writer {
            http: etcd.http.clone(),
            urls: targets
                .iter()
                .map(|&i| etcd.client_url(i, "/v3/kv/put"))
                .collect(),
            bearer: None,
            body: Arc::new(move |n| etcd::put_body(&format!("/bench/{phase}/{n}"), value_bytes)),
        }
    }

    /// Sends write `n` as client `c`; whether it was acknowledged.
    async fn write(&self, c: usize, n: u32) -> bool {
        let mut request = self
            .http
            .post(&self.urls[c % self.urls.len()])
            .timeout(WRITE_TIMEOUT)
            .json(&(self.body)(n));
        if let Some(token) = &self.bearer {
            request = request.bearer_auth(token);
        }
        match request.send().await {
            Ok(response) => response.status().is_success(),
            Err(_) => false,
        }
    }
}

struct Load {
    ok: u64,
    failed: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Load {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// `count` writes with `clients` concurrent clients.
async fn write_many(writer: &Writer, count: u32, clients: u32) -> anyhow::Result<Load> {
    let next = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for c in 0..clients as usize {
        let (writer, next) = (writer.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0u64;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    break;
                }
                let sent = Instant::now();
                if writer.write(c, n).await {
                    latencies.push(sent.elapsed());
                } else {
                    failed += 1;
                }
            }
            (latencies, failed)
        }));
    }
    let mut load = Load {
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for worker in workers {
        let (latencies, failed) = worker.await?;
        load.ok += latencies.len() as u64;
        load.failed += failed;
        load.latencies.extend(latencies);
    }
    load.elapsed = started.elapsed();
    load.latencies.sort();
    Ok(load)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "meets target"
    } else {
        "MISSES target"
    }
}

fn cpu_secs(pids: &[Option<u32>]) -> Vec<f64> {
    pids.iter()
        .map(|pid| pid.map_or(0.0, measure::process_cpu_secs))
        .collect()
}

/// What one throughput run measured.
struct Throughput {
    rate: f64,
    /// Server CPU per acknowledged write, in microseconds, for each node.
    cpu_us_per_node: Vec<f64>,
}

/// Part 1 for one system: prints writes/s and CPU per write.
async fn throughput(
    label: &str,
    writer: &Writer,
    pids: &[Option<u32>],
    args: &Args,
) -> anyhow::Result<Throughput> {
    let before = cpu_secs(pids);
    let load = write_many(writer, args.throughput_machines, args.clients).await?;
    let after = cpu_secs(pids);
    let per_write = |cpu: f64| cpu * 1e6 / (load.ok.max(1) as f64);
    let cpu_us_per_node: Vec<f64> = after
        .iter()
        .zip(&before)
        .map(|(a, b)| per_write(a - b))
        .collect();
    println!(
        "  {label}: {} ok, {} failed in {:.2} s = {:.0} writes/s; latency p50 {:.1} ms, p99 {:.1} ms; server CPU {:.0} us per write (all nodes)",
        load.ok,
        load.failed,
        load.elapsed.as_secs_f64(),
        load.rate(),
        ms(percentile(&load.latencies, 0.50)),
        ms(percentile(&load.latencies, 0.99)),
        cpu_us_per_node.iter().sum::<f64>(),
    );
    if cpu_us_per_node.len() > 1 {
        let shown: Vec<String> = cpu_us_per_node
            .iter()
            .map(|us| format!("{us:.0}"))
            .collect();
        println!(
            "           server CPU per write by node (us): {}",
            shown.join(", ")
        );
        let rss: Vec<String> = pids
            .iter()
            .map(|pid| format!("{:.0}", pid.map_or(f64::NAN, measure::process_rss_mib)))
            .collect();
        println!("           RSS by node (MiB): {}", rss.join(", "));
    }
    Ok(Throughput {
        rate: load.rate(),
        cpu_us_per_node,
    })
}

type AckLog = Arc<Mutex<Vec<(Instant, Instant)>>>;

/// Writers that record `(sent, done)` of every acknowledged write until
/// stopped; each is bounded by `limit` whatever happens.
struct Background {
    stop: Arc<AtomicBool>,
    acks: AckLog,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    fn start(writer: &Writer, clients: u32, limit: Duration) -> Background {
        let next = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let acks: AckLog = Arc::default();
        let mut tasks = Vec::new();
        for c in 0..clients as usize {
            let (writer, next, stop, acks) =
                (writer.clone(), next.clone(), stop.clone(), acks.clone());
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let sent = Instant::now();
                    if writer.write(c, n).await {
                        acks.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((sent, Instant::now()));
                    } else {
                        // A dead node refuses at once: do not spin on it.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }
        Background { stop, acks, tasks }
    }

    /// The first acknowledgement of a write sent at or after `since`, and
    /// the last acknowledgement completed before it.
    fn first_ack_after(&self, since: Instant) -> (Option<Instant>, Option<Instant>) {
        let acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        let first = acks
            .iter()
            .filter(|(sent, _)| *sent >= since)
            .map(|(_, done)| *done)
            .min();
        let last_before = acks
            .iter()
            .map(|(_, done)| *done)
            .filter(|done| *done < since)
            .max();
        (first, last_before)
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = tokio::time::timeout(WRITE_TIMEOUT + Duration::from_secs(5), task).await;
        }
    }
}

/// What the fault loops need of a replicated system.
trait System {
    fn running(&self) -> Vec<usize>;
    fn writer(&self, targets: &[usize], phase: u8) -> Writer;
    /// The agreed leader's slot and term.
    async fn leader(&self) -> anyhow::Result<(usize, u64)>;
    /// Whether node `i` sees a new leader (not `old`) in a term after `term`.
    async fn new_leader_seen(&self, i: usize, old: usize, term: u64) -> bool;
    fn kill(&mut self, i: usize);
    /// Restarts node `i` and waits until it follows and has caught up.
    async fn restart(&mut self, i: usize) -> anyhow::Result<Duration>;
}

impl System for Cluster {
    fn running(&self) -> Vec<usize> {
        Cluster::running(self)
    }

    fn writer(&self, targets: &[usize], phase: u8) -> Writer {
        Writer::cradle(self, targets, phase)
    }

    async fn leader(&self) -> anyhow::Result<(usize, u64)> {
        let (slot, status) = self.wait_leader_status(LEADER_LIMIT).await?;
        Ok((slot, status["term"].as_u64().unwrap_or(0)))
    }

    async fn new_leader_seen(&self, i: usize, _old: usize, term: u64) -> bool {
        self.try_status(i)
            .await
            .is_some_and(|s| s["role"] == "leader" && s["term"].as_u64().unwrap_or(0) > term)
    }

    fn kill(&mut self, i: usize) {
        Cluster::kill(self, i);
    }

    async fn restart(&mut self, i: usize) -> anyhow::Result<Duration> {
        let started = Instant::now();
        Cluster::restart(self, i).await?;
        self.wait_caught_up(i, RESTART_LIMIT).await?;
        Ok(started.elapsed())
    }
}

/// etcd and the value size its writes carry.
struct EtcdSystem {
    etcd: etcd::Etcd,
    value_bytes: usize,
}

impl System for EtcdSystem {
    fn running(&self) -> Vec<usize> {
        self.etcd.running()
    }

    fn writer(&self, targets: &[usize], phase: u8) -> Writer {
        Writer::etcd(&self.etcd, targets, phase, self.value_bytes)
    }

    async fn leader(&self) -> anyhow::Result<(usize, u64)> {
        self.etcd.wait_leader(LEADER_LIMIT).await
    }

    async fn new_leader_seen(&self, i: usize, old: usize, term: u64) -> bool {
        self.etcd.new_leader_seen(i, old, term).await
    }

    fn kill(&mut self, i: usize) {
        self.etcd.kill(i);
    }

    async fn restart(&mut self, i: usize) -> anyhow::Result<Duration> {
        self.etcd.restart(i).await
    }
}

/// Part 2 for one system: kills the leader `kills` times under continuous
/// writes to every node; returns the sorted gaps.
async fn kill_gaps<S: System>(
    system: &mut S,
    label: &str,
    phase: u8,
    args: &Args,
) -> anyhow::Result<Vec<Duration>> {
    let nodes = system.running();
    // Every kill cycle is bounded, so this bounds the writers too.
    let limit = (GAP_LIMIT + RESTART_LIMIT * 2) * args.kills.max(1);
    let background = Background::start(&system.writer(&nodes, phase), args.gap_clients, limit);
    let mut gaps = Vec::new();
    let mut elections = Vec::new();
    let mut silences = Vec::new();
    let mut restarts = Vec::new();
    let result: anyhow::Result<()> = async {
        for kill in 0..args.kills {
            tokio::time::sleep(SETTLE).await;
            let (leader, old_term) = system.leader().await?;
            let survivors: Vec<usize> = system
                .running()
                .into_iter()
                .filter(|&i| i != leader)
                .collect();
            let killed_at = Instant::now();
            system.kill(leader);
            // Until both are seen: a survivor reports a new leader of a
            // later term, and a write sent after the kill is acknowledged.
            let mut elected_at = None;
            let (first_ack, last_before) = loop {
                if elected_at.is_none() {
                    for &i in &survivors {
                        if system.new_leader_seen(i, leader, old_term).await {
                            elected_at = Some(Instant::now());
                        }
                    }
                }
                if let (Some(first), last_before) = background.first_ack_after(killed_at) {
                    if elected_at.is_some() {
                        break (first, last_before);
                    }
                }
                if killed_at.elapsed() > GAP_LIMIT {
                    let election = match elected_at {
                        Some(_) => "a leader was elected",
                        None => "no leader was elected",
                    };
                    bail!(
                        "{label}, kill {kill}: within {GAP_LIMIT:?}, {election} and no write sent after the kill was acknowledged"
                    );
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            let gap = first_ack - killed_at;
            let silence = first_ack - last_before.unwrap_or(killed_at);
            let election = elected_at.map_or(gap, |at| at - killed_at);
            let took = system.restart(leader).await?;
            println!(
                "  {label} kill {:>2}: node {leader}; new leader seen after {:.0} ms; first write sent after the kill acknowledged after {:.0} ms ({:.0} ms without any acknowledgement); restarted and caught up in {:.2} s",
                kill + 1,
                ms(election),
                ms(gap),
                ms(silence),
                took.as_secs_f64()
            );
            elections.push(election);
            gaps.push(gap);
            silences.push(silence);
            restarts.push(took);
        }
        Ok(())
    }
    .await;
    background.stop().await;
    result?;
    gaps.sort();
    elections.sort();
    silences.sort();
    restarts.sort();
    let median = percentile(&gaps, 0.5);
    println!(
        "  {label}: gap after SIGKILL of the leader over {} kills: median {:.0} ms, max {:.0} ms (target: median < {:.1} s: {}); without any acknowledgement: median {:.0} ms, max {:.0} ms; new leader seen: median {:.0} ms, max {:.0} ms; restart to caught up: median {:.2} s",
        gaps.len(),
        ms(median),
        ms(gaps.last().copied().unwrap_or_default()),
        TARGET_MEDIAN_GAP_SECS,
        verdict(median.as_secs_f64() < TARGET_MEDIAN_GAP_SECS),
        ms(percentile(&silences, 0.5)),
        ms(silences.last().copied().unwrap_or_default()),
        ms(percentile(&elections, 0.5)),
        ms(elections.last().copied().unwrap_or_default()),
        percentile(&restarts, 0.5).as_secs_f64(),
    );
    Ok(gaps)
}

/// Part 3: SIGSTOP of the leader for `pause_secs` under continuous writes
/// to every node, `pauses` times; returns the sorted gaps.
async fn pause_gaps(cluster: &mut Cluster, args: &Args) -> anyhow::Result<Vec<Duration>> {
    let nodes = cluster.running();
    let pause = Duration::from_secs(args.pause_secs);
    let limit = (GAP_LIMIT + pause + RESTART_LIMIT) * args.pauses.max(1);
    let background =
        Background::start(&Writer::cradle(cluster, &nodes, 5), args.gap_clients, limit);
    let mut gaps = Vec::new();
    let result: anyhow::Result<()> = async {
        for round in 0..args.pauses {
            tokio::time::sleep(SETTLE).await;
            let (leader, old_term) = System::leader(cluster).await?;
            let survivors: Vec<usize> = nodes.iter().copied().filter(|&i| i != leader).collect();
            let paused_at = Instant::now();
            cluster.pause(leader)?;
            let mut elected_at = None;
            let mut resumed = false;
            let first_ack = loop {
                if elected_at.is_none() {
                    for &i in &survivors {
                        if cluster.new_leader_seen(i, leader, old_term).await {
                            elected_at = Some(Instant::now());
                        }
                    }
                }
                if let (Some(first), _) = background.first_ack_after(paused_at) {
                    break first;
                }
                if !resumed && paused_at.elapsed() >= pause {
                    cluster.resume(leader)?;
                    resumed = true;
                }
                if paused_at.elapsed() > GAP_LIMIT + pause {
                    if !resumed {
                        cluster.resume(leader)?;
                    }
                    bail!("pause {round}: no write sent after the pause acknowledged within {:?}", GAP_LIMIT + pause);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            let gap = first_ack - paused_at;
            // The pause lasts its full time even when writes came back.
            let left = pause.saturating_sub(paused_at.elapsed());
            tokio::time::sleep(left).await;
            if !resumed {
                cluster.resume(leader)?;
            }
            cluster.wait_caught_up(leader, RESTART_LIMIT).await?;
            println!(
                "  pause {:>2}: node {leader} stopped {} s; new leader seen after {}; first write sent after the stop acknowledged after {:.0} ms",
                round + 1,
                args.pause_secs,
                elected_at.map_or("never".to_string(), |at| format!("{:.0} ms", ms(at - paused_at))),
                ms(gap),
            );
            gaps.push(gap);
        }
        Ok(())
    }
    .await;
    background.stop().await;
    // Never leave a node stopped behind a failed round.
    for i in cluster.running() {
        if cluster.nodes[i].is_paused() {
            let _ = cluster.resume(i);
        }
    }
    result?;
    gaps.sort();
    Ok(gaps)
}

/// Part 4: cuts a follower off for `cut_secs`, heals, and counts the term
/// changes (elections) the majority saw, `heals` times; returns them.
async fn heal_elections(exe: &Path, root: &Path, args: &Args) -> anyhow::Result<Vec<u64>> {
    let options = Options {
        relay: true,
        exe: Some(exe.to_path_buf()),
        root: Some(root.to_path_buf()),
        ..Options::default()
    };
    let cluster = build_cluster(3, options).await?;
    let mut counts = Vec::new();
    for round in 0..args.heals {
        let (leader, status) = cluster.wait_leader_status(LEADER_LIMIT).await?;
        let term_before = status["term"].as_u64().unwrap_or(0);
        let follower = (0..3).find(|&i| i != leader).context("no follower")?;
        let follower_term_before = cluster
            .try_status(follower)
            .await
            .and_then(|s| s["term"].as_u64());
        cluster.cut(follower)?;
        tokio::time::sleep(Duration::from_secs(args.cut_secs)).await;
        let cut_term = cluster
            .try_status(follower)
            .await
            .and_then(|s| s["term"].as_u64());
        let cut_rise = match (follower_term_before, cut_term) {
            (Some(before), Some(after)) => after.saturating_sub(before).to_string(),
            _ => "?".to_string(),
        };
        cluster.heal(follower)?;
        cluster.wait_converged(CONVERGE_LIMIT).await?;
        tokio::time::sleep(AFTER_HEAL).await;
        let (new_leader, status) = cluster.wait_leader_status(LEADER_LIMIT).await?;
        let term_after = status["term"].as_u64().unwrap_or(0);
        let elections = term_after.saturating_sub(term_before);
        println!(
            "  heal {:>2}: node {follower} cut off {} s (its term rose by {cut_rise} meanwhile); after the heal: {elections} election(s), leader {}",
            round + 1,
            args.cut_secs,
            if new_leader == leader {
                "unchanged".to_string()
            } else {
                format!("moved from node {leader} to node {new_leader}")
            },
        );
        counts.push(elections);
    }
    Ok(counts)
}

async fn build_cluster(nodes: usize, options: Options) -> anyhow::Result<Cluster> {
    let started = Instant::now();
    let cluster = Cluster::start(nodes, options).await?;
    println!(
        "  ({nodes}-node cluster formed in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(cluster)
}

async fn build_etcd(
    exe: &Path,
    root: &Path,
    nodes: usize,
    timing: etcd::Timing,
    value_bytes: usize,
) -> anyhow::Result<EtcdSystem> {
    let started = Instant::now();
    let etcd = etcd::Etcd::start(exe, root, nodes, timing).await?;
    println!(
        "  ({nodes}-member etcd cluster formed in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(EtcdSystem { etcd, value_bytes })
}

fn pids(cluster: &Cluster) -> Vec<Option<u32>> {
    cluster.nodes.iter().map(|n| n.pid()).collect()
}

fn etcd_pids(etcd: &EtcdSystem) -> Vec<Option<u32>> {
    (0..etcd.etcd.running().len())
        .map(|i| etcd.etcd.pid(i))
        .collect()
}

/// The etcd binary, if it can be run.
fn find_etcd(configured: &Path) -> Option<PathBuf> {
    let ok = std::process::Command::new(configured)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| configured.to_path_buf())
}

/// The size of the JSON record Cradle serves for one machine of the
/// throughput runs.
async fn machine_record_bytes(cluster: &Cluster) -> Option<usize> {
    let response = cluster
        .http()
        .get(cluster.url(0, "/api/v1/machines?limit=1"))
        .bearer_auth(&cluster.token)
        .send()
        .await
        .ok()?;
    let list: Vec<Value> = response.json().await.ok()?;
    serde_json::to_vec(list.first()?).ok().map(|v| v.len())
}

fn ratio_line(what: &str, ratio: Option<f64>, target: &str, ok: impl Fn(f64) -> bool) -> String {
    match ratio {
        Some(r) => format!("{what} = {r:.2} ({target}: {})", verdict(ok(r))),
        None => format!("{what}: not measured (no etcd)"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    cradle::tls::install_crypto_provider();
    let exe = std::env::current_exe()?
        .parent()
        .context("bench binary has no directory")?
        .join("cradle");
    if !exe.exists() {
        bail!(
            "{} is missing: build it too (cargo build --release --bin cradle)",
            exe.display()
        );
    }
    let temp = tempfile::tempdir()?;
    let root = args
        .work_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let options = |dir: &str| Options {
        exe: Some(exe.clone()),
        root: Some(root.join(dir)),
        ..Options::default()
    };
    let etcd_exe = find_etcd(&args.etcd);
    println!(
        "cradle-cluster-bench: {} clients; {} writes per throughput run; {} leader kills; {} pauses of {} s; {} heals after {} s cut off; join with {} machines; etcd {}; all nodes on this machine's loopback, sharing its {} cores with the load generator",
        args.clients,
        args.throughput_machines,
        args.kills,
        args.pauses,
        args.pause_secs,
        args.heals,
        args.cut_secs,
        args.machines,
        match &etcd_exe {
            Some(path) => format!("{} with {} B values", path.display(), args.etcd_value_bytes),
            None => format!("not found at {} (install etcd-server)", args.etcd.display()),
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    println!("1. write throughput");
    let single = build_cluster(1, options("single")).await?;
    let one = throughput(
        "Cradle 1 node ",
        &Writer::cradle(&single, &[0], 1),
        &pids(&single),
        &args,
    )
    .await?;
    if let Some(bytes) = machine_record_bytes(&single).await {
        println!("           (one machine record as served: {bytes} B of JSON)");
    }
    drop(single);
    let _ = std::fs::remove_dir_all(root.join("single"));
    let mut cluster = build_cluster(3, options("three")).await?;
    let targets = cluster.running();
    let three = throughput(
        "Cradle 3 nodes",
        &Writer::cradle(&cluster, &targets, 2),
        &pids(&cluster),
        &args,
    )
    .await?;
    let ratio = three.rate / one.rate;
    println!(
        "  3 nodes / 1 node = {ratio:.2} (target >= {TARGET_RATIO}: {})",
        verdict(ratio >= TARGET_RATIO)
    );
    // Here every node shares this machine's cores. On one machine per node
    // each is bounded by its own CPU: the busiest node bounds the cluster.
    let one_us = one.cpu_us_per_node.iter().sum::<f64>();
    let busiest_us = three.cpu_us_per_node.iter().cloned().fold(0.0, f64::max);
    if one_us > 0.0 && busiest_us > 0.0 {
        println!(
            "  CPU-bound estimate with one machine per node: 3 nodes / 1 node = {:.2} (1-node CPU per create / busiest 3-node member's)",
            one_us / busiest_us
        );
    }
    let mut etcd_rates = None;
    let mut etcd_three = None;
    if let Some(etcd_exe) = &etcd_exe {
        let single = build_etcd(
            etcd_exe,
            &root.join("etcd-single"),
            1,
            etcd::Timing::default(),
            args.etcd_value_bytes,
        )
        .await?;
        let etcd_one = throughput(
            "etcd 1 member ",
            &single.writer(&[0], 1),
            &etcd_pids(&single),
            &args,
        )
        .await?;
        drop(single);
        let three = build_etcd(
            etcd_exe,
            &root.join("etcd-three"),
            3,
            etcd::Timing::default(),
            args.etcd_value_bytes,
        )
        .await?;
        let etcd_3 = throughput(
            "etcd 3 members",
            &three.writer(&three.running(), 2),
            &etcd_pids(&three),
            &args,
        )
        .await?;
        etcd_rates = Some((etcd_one.rate, etcd_3.rate));
        etcd_three = Some(three);
    }
    println!(
        "  writes/s Cradle / etcd: {}; {}",
        ratio_line(
            "1 node",
            etcd_rates.map(|(e1, _)| one.rate / e1),
            &format!("target >= {TARGET_VS_ETCD_WRITES:.1}"),
            |r| r >= TARGET_VS_ETCD_WRITES
        ),
        ratio_line(
            "3 nodes",
            etcd_rates.map(|(_, e3)| three.rate / e3),
            &format!("target >= {TARGET_VS_ETCD_WRITES:.1}"),
            |r| r >= TARGET_VS_ETCD_WRITES
        ),
    );

    println!("2. write gap after SIGKILL of the leader");
    let cradle_gaps = kill_gaps(&mut cluster, "Cradle", 3, &args).await?;
    let mut etcd_medians = None;
    if let (Some(etcd_exe), Some(mut defaults)) = (&etcd_exe, etcd_three.take()) {
        let at_defaults = kill_gaps(&mut defaults, "etcd defaults", 3, &args).await?;
        drop(defaults);
        let mut tuned = build_etcd(
            etcd_exe,
            &root.join("etcd-tuned"),
            3,
            ETCD_AT_CRADLE_TIMING,
            args.etcd_value_bytes,
        )
        .await?;
        let at_cradle = kill_gaps(&mut tuned, "etcd at Cradle's timing", 3, &args).await?;
        etcd_medians = Some((percentile(&at_defaults, 0.5), percentile(&at_cradle, 0.5)));
    }
    let cradle_median = percentile(&cradle_gaps, 0.5);
    let gap_ratio = |etcd: Duration| {
        (etcd > Duration::ZERO).then(|| cradle_median.as_secs_f64() / etcd.as_secs_f64())
    };
    println!(
        "  kill gap (median) Cradle / etcd: {}; {}",
        ratio_line(
            "vs etcd at its defaults (heartbeat 100 ms, election 1000 ms)",
            etcd_medians.and_then(|(d, _)| gap_ratio(d)),
            &format!("target <= {TARGET_VS_ETCD_GAP:.1}"),
            |r| r <= TARGET_VS_ETCD_GAP
        ),
        ratio_line(
            &format!(
                "vs etcd at Cradle's timing (election {CRADLE_ELECTION_MIN_MS} ms; heartbeat {} ms for Cradle's {CRADLE_HEARTBEAT_MS} ms)",
                ETCD_AT_CRADLE_TIMING.heartbeat_ms.unwrap_or(0)
            ),
            etcd_medians.and_then(|(_, c)| gap_ratio(c)),
            &format!("target <= {TARGET_VS_ETCD_GAP:.1}"),
            |r| r <= TARGET_VS_ETCD_GAP
        ),
    );

    println!("3. write gap after SIGSTOP of the leader");
    let pauses = pause_gaps(&mut cluster, &args).await?;
    let median = percentile(&pauses, 0.5);
    println!(
        "  gap after SIGSTOP of the leader for {} s over {} pauses: median {:.0} ms, max {:.0} ms (target: median < {TARGET_MEDIAN_GAP_SECS:.1} s: {})",
        args.pause_secs,
        pauses.len(),
        ms(median),
        ms(pauses.last().copied().unwrap_or_default()),
        verdict(median.as_secs_f64() < TARGET_MEDIAN_GAP_SECS),
    );

    println!("4. elections caused by a healed partition");
    let heals = heal_elections(&exe, &root.join("heal"), &args).await?;
    let total: u64 = heals.iter().sum();
    let worst = heals.iter().copied().max().unwrap_or(0);
    println!(
        "  elections after healing a follower cut off for {} s: {total} over {} heals, at most {worst} per heal (target {TARGET_HEAL_ELECTIONS}: {})",
        args.cut_secs,
        heals.len(),
        verdict(worst == TARGET_HEAL_ELECTIONS),
    );

    println!("5. a new node joins and catches up");
    let leader_slot = cluster.wait_leader(LEADER_LIMIT).await?;
    let have = cluster.count_all(leader_slot, "machines").await?;
    let wanted = args.machines as usize;
    if have < wanted {
        let started = Instant::now();
        let targets = cluster.running();
        let load = write_many(
            &Writer::cradle(&cluster, &targets, 4),
            u32::try_from(wanted - have)?,
            args.clients,
        )
        .await?;
        println!(
            "  (loaded {} more machines in {:.1} s, {} failed)",
            load.ok,
            started.elapsed().as_secs_f64(),
            load.failed
        );
    }
    let leader_slot = cluster.wait_leader(LEADER_LIMIT).await?;
    let held = cluster.count_all(leader_slot, "machines").await?;
    let leader_slot = cluster.wait_leader(LEADER_LIMIT).await?;
    let token = cluster.create_join_token(leader_slot, 3600, 1).await?;
    let slot = cluster.add_slot()?;
    let times = cluster.join_with(slot, &token, CATCH_UP_LIMIT).await?;
    let on_new = cluster.count_all(slot, "machines").await?;
    println!(
        "  join with {held} machines: voter after {:.2} s, caught up (applied the leader's commit index) after {:.2} s (target < {TARGET_JOIN_SECS:.0} s: {}); the new node lists {on_new} machines",
        times.to_member.as_secs_f64(),
        times.caught_up.as_secs_f64(),
        verdict(times.caught_up.as_secs_f64() < TARGET_JOIN_SECS),
    );
    Ok(())
}
