//! `pgbaton-bench idle --etcd URL [--seconds S] [--settle S]`: what an idle, healthy 3-member cluster
//! costs its etcd, read from etcd's own counters (`/metrics` on the client URL) before and
//! after S seconds with nothing else running against that etcd:
//! - requests per second by gRPC method (`grpc_server_msg_received_total`: a unary call is
//!   one message, a keep-alive or a watch creation on a stream one message each);
//! - revisions per second (`etcd_debugging_mvcc_current_revision`: one per write that
//!   changed something) and database growth (`etcd_mvcc_db_total_size_in_bytes`);
//! - the agents' CPU (utime + stime from /proc) and resident memory.

use super::Cluster;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// etcd's counters at one instant: metric name with labels -> value.
pub(crate) struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    pub(crate) async fn take(url: &str) -> Result<Scrape> {
        let text = reqwest::get(format!("{url}/metrics"))
            .await
            .with_context(|| format!("read {url}/metrics"))?
            .text()
            .await?;
        let mut out = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some((name, value)) = line.rsplit_once(' ') {
                if let Ok(v) = value.parse::<f64>() {
                    out.insert(name.to_string(), v);
                }
            }
        }
        Ok(Scrape(out))
    }

    /// The sum of every series of `metric` whose labels contain `label` (all when empty).
    pub(crate) fn sum(&self, metric: &str, label: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| {
                (k.as_str() == metric || k.starts_with(&format!("{metric}{{"))) && k.contains(label)
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Messages received, every method.
    pub(crate) fn requests(&self) -> f64 {
        self.methods().values().sum()
    }

    /// The gRPC methods that received messages, by name.
    fn methods(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.0 {
            if let Some(rest) = k.strip_prefix("grpc_server_msg_received_total{") {
                if let Some(m) = rest
                    .split(',')
                    .find_map(|l| l.strip_prefix("grpc_method=\""))
                    .and_then(|m| m.strip_suffix('"').or(Some(m)))
                {
                    *out.entry(m.trim_end_matches(['"', '}']).to_string())
                        .or_insert(0.0) += v;
                }
            }
        }
        out
    }
}

/// CPU ticks (utime + stime) and resident kB of a process.
fn cpu_and_rss(pid: i32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((ticks, rss))
}

/// `settle`: how long to wait once healthy before measuring. PostgreSQL itself writes WAL
/// for a while after a start (a checkpoint, standby snapshots), which members report as it
/// moves: past `checkpoint_timeout` (5 min) an idle cluster is idle.
/// The etcd figures alone, for whatever runs against it (`pgbaton-bench etcd-rate`: how
/// Patroni was measured side by side).
pub async fn etcd_rate(etcd: &str, seconds: u64) -> Result<()> {
    let before = Scrape::take(etcd).await?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = Scrape::take(etcd).await?;
    print_rates(etcd, &before, &after, t0.elapsed().as_secs_f64());
    Ok(())
}

fn print_rates(etcd: &str, before: &Scrape, after: &Scrape, secs: f64) {
    let rate = |m: &str| (after.sum(m, "") - before.sum(m, "")) / secs;
    let (m0, m1) = (before.methods(), after.methods());
    let mut total = 0.0;
    let mut by_method = vec![];
    for (m, v) in &m1 {
        let r = (v - m0.get(m).copied().unwrap_or(0.0)) / secs;
        if r > 0.0005 {
            total += r;
            by_method.push(format!("{m} {r:.2}"));
        }
    }
    println!("etcd {etcd}, {secs:.0} s\n");
    println!("| etcd requests/s | of which | revisions/s | db growth (bytes/s) |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| {total:.2} | {} | {:.2} | {:.0} |",
        by_method.join(", "),
        rate("etcd_debugging_mvcc_current_revision"),
        rate("etcd_mvcc_db_total_size_in_bytes")
    );
}

pub async fn run(c: &Cluster, etcd: &str, seconds: u64, settle: u64) -> Result<()> {
    c.wait_healthy(Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let leader = c.leader()?;
    let agents: Vec<(String, i32)> = ["n1", "n2", "n3"]
        .iter()
        .filter_map(|m| Some((m.to_string(), c.pid_in(&format!("{m}/agent.pid")).ok()?)))
        .collect();
    let before = Scrape::take(etcd).await?;
    let cpu0: Vec<_> = agents.iter().map(|(_, p)| cpu_and_rss(*p)).collect();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = Scrape::take(etcd).await?;
    let cpu1: Vec<_> = agents.iter().map(|(_, p)| cpu_and_rss(*p)).collect();
    let secs = t0.elapsed().as_secs_f64();
    println!("Idle 3-member cluster, from {settle} s after healthy, leader {leader}");
    print_rates(etcd, &before, &after, secs);
    let hz = 100.0; // USER_HZ on Linux
    println!("\n| agent | CPU (% of a core) | RSS (MB) |");
    println!("| --- | --- | --- |");
    for (i, (name, _)) in agents.iter().enumerate() {
        if let (Some((a, _)), Some((b, rss))) = (cpu0[i], cpu1[i]) {
            let pct = (b - a) as f64 / hz / secs * 100.0;
            let role = if *name == leader { " (leader)" } else { "" };
            println!("| {name}{role} | {pct:.2} | {:.1} |", rss as f64 / 1024.0);
        }
    }
    Ok(())
}
