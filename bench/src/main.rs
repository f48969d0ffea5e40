//! `pgbaton-bench switchover|host-loss|pg-crash [--rounds N] [--pgbaton PATH] [--port-base P] [--etcd URL]`
//!
//! Brings up a 3-member local cluster with the real `pgbaton` binary (default settings),
//! runs a continuous writer (one INSERT per commit, over TCP to whichever member accepts
//! writes, like an application with target_session_attrs=read-write), and in each round:
//! - `switchover`: asks for a switchover (back and forth);
//! - `host-loss`: kill -9 of the leader's agent and postmaster together (a lost host); a
//!   standby takes over by itself; the killed member is restarted (`pgbaton up`) and rejoins
//!   before the next round;
//! - `pg-crash`: kill -9 of the leader's postmaster only; its agent restarts it in place.
//!
//! Reports the window during which no commit succeeded (the longest gap between consecutive
//! acknowledged commits around the event), and the acknowledged commits missing at the end.
//! Replication is asynchronous: on a lost host, commits the primary acknowledged but had not
//! yet sent are lost (bounded by failover.max_lag_bytes); they are counted, not hidden.
//! Prints a Markdown table.

use anyhow::{bail, Context, Result};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod chaos;
mod cost;
mod idle;
mod store_load;

struct Cluster {
    bin: String,
    /// `up --etcd URL`: the cluster's state in this etcd instead of the embedded store.
    etcd: Option<String>,
    /// `up --synchronous MODE`.
    synchronous: Option<String>,
    dir: std::path::PathBuf,
    /// Keep the directory (logs) for a look after a failure.
    keep: bool,
}

impl Cluster {
    fn pgbaton(&self, args: &[&str]) -> Result<String> {
        let cfg = self.dir.join("pgbaton.toml");
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&cfg)
            .args(args)
            .output()
            .context("run pgbaton")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("pgbaton {args:?} failed:\n{text}");
        }
        Ok(text)
    }
}

impl Cluster {
    /// `pgbaton up` on the directory: builds the cluster, or restarts missing agents.
    fn up(&self, port_base: u16) -> Result<()> {
        let out = Command::new(&self.bin)
            .args([
                "up",
                "--nodes",
                "3",
                "--port-base",
                &port_base.to_string(),
                "--database",
                "bench",
                "--timeout",
                "120",
                // In the clear: the writers' tokio-postgres clients speak no TLS (the figures
                // are PostgreSQL's and pgbaton's, not TLS's).
                "--no-tls",
                "--dir",
            ])
            .arg(&self.dir)
            .args(self.etcd.iter().flat_map(|e| ["--etcd", e.as_str()]))
            .args(
                self.synchronous
                    .iter()
                    .flat_map(|m| ["--synchronous", m.as_str()]),
            )
            .output()?;
        if !out.status.success() {
            bail!(
                "pgbaton up failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn list(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.pgbaton(&["list", "--json"])?)?)
    }

    fn leader(&self) -> Result<String> {
        self.list()?["leader"]
            .as_str()
            .map(String::from)
            .context("no leader")
    }

    /// The first line of a pid file under the cluster's directory.
    fn pid_in(&self, rel: &str) -> Result<i32> {
        let p = self.dir.join(rel);
        let text = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("no pid in {}", p.display()))
    }

    /// A running primary holding the lease and two streaming standbys (bounded).
    async fn wait_healthy(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(l) = self.list() {
                let ms = l["members"].as_array().cloned().unwrap_or_default();
                let primaries = ms
                    .iter()
                    .filter(|m| m["role"] == "primary" && m["state"] == "running")
                    .count();
                let streaming = ms.iter().filter(|m| m["state"] == "streaming").count();
                // In synchronous modes, also a standby the store's record proves (until
                // then no standby may take over, and a round would measure that wait).
                let sync_ok = self.synchronous.as_deref().is_none_or(|m| m == "off")
                    || l["synchronous"]["failover_possible"] == true;
                if !l["leader"].is_null() && primaries == 1 && streaming == 2 && sync_ok {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the cluster was not healthy again within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The direct children of `pid` (from /proc).
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// SIGKILL every process and wait (up to 5 s) until each is gone or a zombie, as on a host
/// that is really lost: a process still exiting right after `kill` looked alive to the `up`
/// that followed, which then did not start that agent again (a round "not healthy" in the
/// chaos campaign that was the bench's own doing).
fn kill9_all(pids: &[i32]) {
    let mut cmd = Command::new("kill");
    cmd.arg("-9");
    for p in pids {
        cmd.arg(p.to_string());
    }
    let _ = cmd.stderr(std::process::Stdio::null()).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| !exited(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Processes whose working directory is `dir` (PostgreSQL's postmaster and backends run in
/// their data directory).
fn running_in(dir: &std::path::Path) -> Vec<i32> {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return vec![];
    };
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == dir) && !exited(*pid)
        })
        .collect()
}

/// A lost host: `pids` (the agent and its watchdog, the postmaster and its children) and
/// then, until none is left, every process still running in `data_dir`: a backend forked
/// between listing the postmaster's children and killing it survived as an orphan (a lost
/// host keeps nothing running, and an orphan holds PostgreSQL's shared memory).
fn lose_host(pids: &[i32], data_dir: &std::path::Path) {
    kill9_all(pids);
    for _ in 0..20 {
        let rest = running_in(data_dir);
        if rest.is_empty() {
            return;
        }
        kill9_all(&rest);
    }
}

/// The process is gone, or a zombie that only waits to be reaped.
fn exited(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
    })
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.keep {
            let _ = Command::new(&self.bin)
                .args(["down", "--dir"])
                .arg(&self.dir)
                .output();
            eprintln!("kept {} for a look", self.dir.display());
            return;
        }
        let _ = Command::new(&self.bin)
            .args(["down", "--purge", "--dir"])
            .arg(&self.dir)
            .output();
        #[expect(
            clippy::disallowed_methods,
            reason = "the benchmark's own scratch cluster"
        )]
        let _ = std::fs::remove_dir_all(self.dir.parent().unwrap_or(&self.dir));
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One acknowledged commit: its id and when the acknowledgement arrived.
type Acks = Arc<Mutex<Vec<(u64, Instant)>>>;

async fn writer(dsn: String, acks: Acks, stop: Arc<AtomicBool>) {
    let mut id = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let client = match tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                client
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while !stop.load(Ordering::Relaxed) {
            id += 1;
            match client
                .execute("INSERT INTO bench_w VALUES ($1)", &[&(id as i64)])
                .await
            {
                Ok(_) => acks.lock().unwrap().push((id, Instant::now())),
                Err(_) => break, // reconnect: maybe to another member
            }
        }
    }
}

/// A number given as `name VALUE`, or `default`; a value that is no number names its flag.
fn number<T>(args: &[String], name: &str, default: T) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
    {
        None => Ok(default),
        Some(v) => v
            .parse()
            .with_context(|| format!("{name} {v}: expected a whole number")),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().unwrap_or_default();
    if ![
        "switchover",
        "host-loss",
        "pg-crash",
        "chaos",
        "cost",
        "idle",
        "store-load",
        "etcd-rate",
    ]
    .contains(&mode.as_str())
    {
        bail!("usage: pgbaton-bench switchover|host-loss|pg-crash|chaos [--rounds N] [--synchronous off|on|quorum] [--pgbaton PATH] [--port-base P] [--etcd URL [--etcd-pid PID]] [--seed N]\n       pgbaton-bench cost [--seconds S] [--pgbaton PATH] [--port-base P]\n       pgbaton-bench idle --etcd URL [--seconds S] [--settle S] [--pgbaton PATH] [--port-base P]\n       pgbaton-bench store-load --clusters N --etcd URL [--etcd-pid PID] [--seconds S]\n       pgbaton-bench etcd-rate --etcd URL [--seconds S]");
    }
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let rounds: usize = number(&args, "--rounds", 6)?;
    let bin = flag("--pgbaton").unwrap_or_else(|| "target/release/pgbaton".into());
    let port_base: u16 = number(&args, "--port-base", 26432)?;

    if mode == "etcd-rate" {
        let etcd = flag("--etcd").context("etcd-rate measures an etcd: give --etcd URL")?;
        let seconds = number(&args, "--seconds", 60)?;
        return idle::etcd_rate(&etcd, seconds).await;
    }
    if mode == "store-load" {
        let etcd = flag("--etcd").context("store-load measures an etcd: give --etcd URL")?;
        let clusters = number(&args, "--clusters", 10)?;
        let seconds = number(&args, "--seconds", 60)?;
        let pid = flag("--etcd-pid").map(|s| s.parse()).transpose()?;
        return store_load::run(&etcd, clusters, seconds, pid).await;
    }
    if mode == "cost" {
        let seconds = number(&args, "--seconds", 20)?;
        return cost::run(&bin, port_base, seconds).await;
    }
    let root = std::env::temp_dir().join(format!("pgbaton-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut c = Cluster {
        bin: bin.clone(),
        etcd: flag("--etcd"),
        synchronous: flag("--synchronous"),
        dir: root.join("c"),
        keep: true,
    };
    c.up(port_base)?;
    if mode == "idle" {
        let etcd = c
            .etcd
            .clone()
            .context("idle measures an etcd: give --etcd URL")?;
        let seconds = number(&args, "--seconds", 60)?;
        let settle = number(&args, "--settle", 5)?;
        let r = idle::run(&c, &etcd, seconds, settle).await;
        c.keep = r.is_err() || std::env::var_os("PGBATON_BENCH_KEEP").is_some();
        return r;
    }
    if mode == "chaos" {
        let opts = chaos::Options {
            rounds,
            port_base,
            etcd_pid: flag("--etcd-pid").map(|s| s.parse()).transpose()?,
            seed: number(&args, "--seed", 1)?,
        };
        let r = chaos::run(&c, &opts).await;
        // A failed campaign, or a round not healthy again: the logs are kept for a look.
        c.keep =
            r.as_ref().map_or(true, |n| *n > 0) || std::env::var_os("PGBATON_BENCH_KEEP").is_some();
        return r.map(|_| ());
    }
    // A login role for the writer; only a SCRAM verifier crosses the command line.
    let pw = format!("bench-{}", std::process::id());
    let verifier = postgres_protocol::password::scram_sha_256(pw.as_bytes());
    c.pgbaton(&["psql", "--", "-X", "-q", "-d", "bench", "-c", &format!(
        "CREATE ROLE bench LOGIN PASSWORD '{verifier}'; CREATE TABLE bench_w (id bigint primary key); GRANT ALL ON bench_w TO bench"
    )])?;
    let dsn = format!(
        "host=127.0.0.1,127.0.0.1,127.0.0.1 port={},{},{} user=bench password={pw} dbname=bench \
         target_session_attrs=read-write connect_timeout=2",
        port_base,
        port_base + 1,
        port_base + 2
    );
    let acks: Acks = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let w = tokio::spawn(writer(dsn.clone(), acks.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let started = Instant::now();
    eprintln!("started at {:?}", std::time::SystemTime::now());
    let mut windows_ms = Vec::new();
    let mut durations_ms = Vec::new();
    for r in 0..rounds {
        let leader = c.leader()?;
        let t0 = Instant::now();
        match mode.as_str() {
            "switchover" => {
                let to = if leader == "n1" { "n2" } else { "n1" };
                c.pgbaton(&["switchover", "--to", to])?;
                durations_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            "host-loss" => {
                // Everything on the "host" at once: the agent and its fence watchdog, the
                // postmaster and every backend (a backend outlives a killed postmaster for a
                // moment and could still acknowledge a commit; a lost host would not).
                let agent = c.pid_in(&format!("{leader}/agent.pid"))?;
                let pm = c.pid_in(&format!("{leader}/data/postmaster.pid"))?;
                let mut pids = vec![agent, pm];
                pids.extend(children(agent));
                pids.extend(children(pm));
                lose_host(&pids, &c.dir.join(&leader).join("data"));
            }
            _ => {
                let pm = c.pid_in(&format!("{leader}/data/postmaster.pid"))?;
                let mut pids = vec![pm];
                pids.extend(children(pm));
                kill9_all(&pids);
            }
        }
        // Until writes are acknowledged again (bounded). Counted from a moment after the
        // event: a reply the killed primary had already sent can still arrive just after the
        // kill, and taking it for recovery restarted the lost member 2 s later, so the round
        // measured that member taking its lease back rather than a failover.
        let after = Instant::now() + Duration::from_millis(100);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !acks.lock().unwrap().iter().any(|(_, t)| *t > after) {
            if Instant::now() > deadline {
                bail!("round {r}: no write acknowledged within 120 s of the event");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        if mode == "host-loss" {
            c.up(port_base)?; // the lost member's agent again: it rejoins
        }
        c.wait_healthy(Duration::from_secs(120)).await?;
        // The longest gap between consecutive acknowledged commits from the request on.
        let a = acks.lock().unwrap();
        let times: Vec<Instant> = a
            .iter()
            .map(|(_, t)| *t)
            .filter(|t| *t >= t0 - Duration::from_millis(100))
            .collect();
        let gap = times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        windows_ms.push(gap.as_secs_f64() * 1000.0);
        eprintln!(
            "round {r}: {} ms without an acknowledged write (event at {:?} after the start)",
            gap.as_millis(),
            t0.duration_since(started)
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(10), w).await;

    // Every acknowledged id must be on the final primary.
    let ids = c.pgbaton(&[
        "psql",
        "--",
        "-X",
        "-At",
        "-d",
        "bench",
        "-c",
        "SELECT id FROM bench_w",
    ])?;
    let present: std::collections::HashSet<u64> =
        ids.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let acked = acks.lock().unwrap().clone();
    let lost = acked.iter().filter(|(id, _)| !present.contains(id)).count();

    let n = windows_ms.len();
    let max = windows_ms.iter().cloned().fold(0.0, f64::max);
    let what = match mode.as_str() {
        "switchover" => "switchovers",
        "host-loss" => "lost primary hosts (agent + postmaster kill -9)",
        _ => "primary PostgreSQL crashes (postmaster kill -9)",
    };
    let store = if c.etcd.is_some() {
        "etcd"
    } else {
        "embedded store"
    };
    println!("| measure ({n} {what}, 3 members, {store}, continuous writer) | result |");
    println!("| --- | --- |");
    println!(
        "| writes unavailable | median {:.0} ms, max {:.0} ms |",
        median(&mut windows_ms.clone()),
        max
    );
    if !durations_ms.is_empty() {
        println!(
            "| `pgbaton switchover` command, request to settled cluster | median {:.0} ms |",
            median(&mut durations_ms)
        );
    }
    println!("| acknowledged commits | {} |", acked.len());
    println!("| acknowledged commits lost | {lost} |");
    if lost > 0 && mode != "host-loss" {
        bail!("{lost} acknowledged commits were lost");
    }
    // PGBATON_BENCH_KEEP=1 keeps the directory (agents' logs) for a look.
    c.keep = std::env::var_os("PGBATON_BENCH_KEEP").is_some();
    Ok(())
}
