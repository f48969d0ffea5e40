//! `pgbaton-bench switchover [--rounds N] [--pgbaton PATH]`
//!
//! Brings up a 3-member local cluster with the real `pgbaton` binary, runs a continuous
//! writer (one INSERT per commit, over TCP to whichever member accepts writes, like an
//! application with target_session_attrs=read-write), asks for switchovers back and forth,
//! and reports for each the window during which no commit succeeded, and the acknowledged
//! commits missing at the end. Prints a Markdown table.

use anyhow::{bail, Context, Result};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Cluster {
    bin: String,
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("switchover") {
        bail!("usage: pgbaton-bench switchover [--rounds N] [--pgbaton PATH] [--port-base P]");
    }
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let rounds: usize = flag("--rounds")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(6);
    let bin = flag("--pgbaton").unwrap_or_else(|| "target/release/pgbaton".into());
    let port_base: u16 = flag("--port-base")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(26432);

    let root = std::env::temp_dir().join(format!("pgbaton-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut c = Cluster {
        bin: bin.clone(),
        dir: root.join("c"),
        keep: true,
    };
    let out = Command::new(&bin)
        .args([
            "up",
            "--nodes",
            "3",
            "--port-base",
            &port_base.to_string(),
            "--database",
            "bench",
            "--dir",
        ])
        .arg(&c.dir)
        .output()?;
    if !out.status.success() {
        bail!(
            "pgbaton up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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

    let mut windows_ms = Vec::new();
    let mut durations_ms = Vec::new();
    for r in 0..rounds {
        let to = if r % 2 == 0 { "n2" } else { "n1" };
        let t0 = Instant::now();
        c.pgbaton(&["switchover", "--to", to])?;
        let t1 = Instant::now();
        durations_ms.push((t1 - t0).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_secs(2)).await;
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
    println!("| measure ({n} switchovers, 3 members, continuous writer) | result |");
    println!("| --- | --- |");
    println!(
        "| writes unavailable during a switchover | median {:.0} ms, max {:.0} ms |",
        median(&mut windows_ms.clone()),
        max
    );
    println!(
        "| `pgbaton switchover` command, request to settled cluster | median {:.0} ms |",
        median(&mut durations_ms)
    );
    println!("| acknowledged commits | {} |", acked.len());
    println!("| acknowledged commits lost | {lost} |");
    if lost > 0 {
        bail!("{lost} acknowledged commits were lost");
    }
    c.keep = false;
    Ok(())
}
