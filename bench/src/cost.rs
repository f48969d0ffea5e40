//! `pgbaton-bench cost [--seconds S]`: what synchronous replication costs, side by side in
//! one run. For each mode (off, on, quorum) a fresh 3-member local cluster, then:
//! - pgbench (TPC-B like, scale 10, 4 clients, 2 threads, S seconds, prepared statements)
//!   over the primary's Unix socket: transactions per second and average latency;
//! - single-row commits, one at a time, from one client: median and 99th percentile.

use super::{median, Cluster};
use anyhow::{bail, Context, Result};
use std::process::Command;
use std::time::{Duration, Instant};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

struct Figures {
    tps: f64,
    latency_ms: f64,
    commit_median_ms: f64,
    commit_p99_ms: f64,
}

/// Run `bin` as the postgres OS user against the primary's socket.
fn as_postgres(c: &Cluster, port: u16, bin: &str, args: &[&str]) -> Result<String> {
    let sock = c.dir.join("n1/run");
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(format!("{PG_BIN}/{bin}"))
        .arg("-h")
        .arg(&sock)
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .with_context(|| format!("run {bin}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{bin} {args:?} failed:\n{text}");
    }
    Ok(text)
}

fn number_after(text: &str, prefix: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_start().starts_with(prefix))?;
    line.split('=')
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

async fn measure(c: &Cluster, port: u16, seconds: u64) -> Result<Figures> {
    as_postgres(c, port, "pgbench", &["-i", "-s", "10", "-q", "bench"])?;
    let secs = seconds.to_string();
    let out = as_postgres(
        c,
        port,
        "pgbench",
        &[
            "-c", "4", "-j", "2", "-T", &secs, "-M", "prepared", "-n", "bench",
        ],
    )?;
    let tps = number_after(&out, "tps").context("pgbench printed no tps")?;
    let latency_ms = number_after(&out, "latency average").context("pgbench printed no latency")?;
    // One commit at a time, timed by the client: 500 inserts in one psql session.
    as_postgres(
        c,
        port,
        "psql",
        &["-X", "-q", "-d", "bench", "-c", "CREATE TABLE one (id int)"],
    )?;
    let script: String = (0..500)
        .map(|i| format!("INSERT INTO one VALUES ({i});\n"))
        .collect();
    let script_file = c.dir.join("one.sql");
    std::fs::write(&script_file, script)?;
    std::fs::set_permissions(
        &script_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    let out = as_postgres(
        c,
        port,
        "psql",
        &[
            "-X",
            "-q",
            "-d",
            "bench",
            "-c",
            "\\timing on",
            "-f",
            script_file.to_str().unwrap_or_default(),
        ],
    )?;
    let mut times: Vec<f64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("Time: "))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    if times.len() < 400 {
        bail!("psql timed {} commits, not 500:\n{out}", times.len());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    Ok(Figures {
        tps,
        latency_ms,
        commit_median_ms: median(&mut times),
        commit_p99_ms: p99,
    })
}

async fn wait_synchronous(c: &Cluster, mode: &str) -> Result<()> {
    let t0 = Instant::now();
    loop {
        if c.list()?["synchronous"]["failover_possible"] == true {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("mode {mode}: no synchronous standby after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(bin: &str, port_base: u16, seconds: u64) -> Result<()> {
    let mut rows = vec![];
    for mode in ["off", "on", "quorum"] {
        let root =
            std::env::temp_dir().join(format!("pgbaton-bench-{}-{mode}", std::process::id()));
        std::fs::create_dir_all(&root)?;
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let c = Cluster {
            bin: bin.to_string(),
            etcd: None,
            synchronous: Some(mode.to_string()),
            dir: root.join("c"),
            keep: false,
        };
        c.up(port_base)?;
        if mode != "off" {
            wait_synchronous(&c, mode).await?;
        }
        let leader = c.leader()?;
        if leader != "n1" {
            bail!("mode {mode}: {leader} leads, not n1");
        }
        let f = measure(&c, port_base, seconds).await?;
        eprintln!(
            "{mode}: {:.0} tps, {:.2} ms average; one commit at a time: median {:.2} ms, p99 {:.2} ms",
            f.tps, f.latency_ms, f.commit_median_ms, f.commit_p99_ms
        );
        rows.push((mode, f));
        drop(c);
    }
    println!("| synchronous | pgbench tps (4 clients, scale 10, {seconds} s) | pgbench latency avg | one commit at a time: median | p99 |");
    println!("| --- | --- | --- | --- | --- |");
    for (mode, f) in rows {
        println!(
            "| {mode} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms |",
            f.tps, f.latency_ms, f.commit_median_ms, f.commit_p99_ms
        );
    }
    Ok(())
}
