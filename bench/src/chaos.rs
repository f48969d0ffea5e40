//! `pgbaton-bench chaos --rounds N [--synchronous off|on|quorum] [--etcd URL [--etcd-pid PID]]`
//!
//! A fault campaign against a real 3-member cluster. Writers run throughout:
//! - a failover-aware one (`target_session_attrs=read-write`, like an application);
//! - a direct one on every member (its own port, no failover: whoever accepts writes).
//!
//! Every acknowledged INSERT is recorded with the member that answered it
//! (`inet_server_port()`) and when the acknowledgement arrived. Each round, one seeded fault:
//! host loss, PostgreSQL crash, frozen PostgreSQL (5-12 s), frozen agent (5-12 s), the new
//! primary lost right after its promotion, a standby lost, switchover, store outage (5-12 s:
//! the SQLite file write-locked, or etcd SIGSTOPped when `--etcd-pid` is given). Then the
//! lost members are started again and the cluster must be healthy again (in synchronous
//! modes: with a synchronous standby recorded) within 120 s.
//!
//! Per round: the longest write gap, the time back to healthy. At the end: acknowledged
//! commits missing from the final primary, and two-writer moments (a member acknowledged a
//! write between two writes another member acknowledged less than a second apart). The last
//! line reads `chaos: N rounds, L lost, W two-writer moments, U rounds not healthy again`.

use super::{children, kill9_all, lose_host, median, Cluster};
use anyhow::{bail, Context, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Options {
    pub rounds: usize,
    pub port_base: u16,
    /// etcd's process, for store outages on etcd (SIGSTOP/SIGCONT).
    pub etcd_pid: Option<i32>,
    pub seed: u64,
}

/// One acknowledged commit: id, the port of the member that acknowledged it, when.
type Acks = Arc<Mutex<Vec<(u64, u16, Instant)>>>;

const FAULTS: [&str; 8] = [
    "host loss",
    "PostgreSQL crash",
    "frozen PostgreSQL",
    "frozen agent",
    "new primary lost after promotion",
    "standby lost",
    "switchover",
    "store outage",
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Insert ids from `next` through `dsn` until stopped, recording each acknowledgement.
async fn write_loop(dsn: String, next: Arc<AtomicU64>, acks: Acks, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let conn = tokio::time::timeout(
            Duration::from_secs(3),
            tokio_postgres::connect(&dsn, tokio_postgres::NoTls),
        )
        .await;
        let client = match conn {
            Ok(Ok((client, conn))) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                client
            }
            _ => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while !stop.load(Ordering::Relaxed) {
            let id = next.fetch_add(1, Ordering::Relaxed);
            let param = id as i64;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&param];
            let insert = client.query_one(
                "INSERT INTO chaos_w VALUES ($1) RETURNING inet_server_port()",
                &params,
            );
            match tokio::time::timeout(Duration::from_secs(3), insert).await {
                Ok(Ok(row)) => {
                    let port: i32 = row.get(0);
                    acks.lock().unwrap().push((id, port as u16, Instant::now()));
                }
                _ => {
                    // A standby, a lost or frozen member: try again (maybe elsewhere).
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
            }
        }
    }
}

fn member_pid(c: &Cluster, member: &str, file: &str) -> Option<i32> {
    c.pid_in(&format!("{member}/{file}")).ok()
}

fn data_dir(c: &Cluster, member: &str) -> std::path::PathBuf {
    c.dir.join(member).join("data")
}

/// The agent (and its watchdog) and PostgreSQL (postmaster and backends) of `member`.
fn host_pids(c: &Cluster, member: &str) -> Vec<i32> {
    let mut pids = vec![];
    for f in ["agent.pid", "data/postmaster.pid"] {
        if let Some(p) = member_pid(c, member, f) {
            pids.push(p);
            pids.extend(children(p));
        }
    }
    pids
}

fn signal_all(pids: &[i32], sig: &str) {
    let mut cmd = std::process::Command::new("kill");
    cmd.arg(format!("-{sig}"));
    for p in pids {
        cmd.arg(p.to_string());
    }
    // Some of them may have exited already (children of a killed postmaster): not news.
    let _ = cmd.stderr(std::process::Stdio::null()).status();
}

/// Healthy: a leader running the primary, two streaming standbys, and (in synchronous
/// modes) a standby the store's record proves.
fn healthy(c: &Cluster) -> bool {
    let Ok(l) = c.list() else { return false };
    let ms = l["members"].as_array().cloned().unwrap_or_default();
    let primaries = ms
        .iter()
        .filter(|m| m["role"] == "primary" && m["state"] == "running" && m["leader"] == true)
        .count();
    let streaming = ms.iter().filter(|m| m["state"] == "streaming").count();
    let sync_ok = c.synchronous.as_deref().is_none_or(|m| m == "off")
        || l["synchronous"]["failover_possible"] == true;
    primaries == 1 && streaming == 2 && sync_ok
}

async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Hold the SQLite store's write lock for `d` (readers go on; every write waits).
fn lock_sqlite(path: std::path::PathBuf, d: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        if let Ok(conn) = rusqlite::Connection::open(&path) {
            if conn.execute_batch("BEGIN IMMEDIATE").is_ok() {
                std::thread::sleep(d);
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
    })
}

/// Carry out one fault; returns what was done, for the log.
async fn fault(c: &Cluster, o: &Options, kind: usize, rng: &mut Rng) -> Result<String> {
    let leader = c.leader()?;
    let hold = Duration::from_millis(5_000 + rng.below(7_001));
    let standbys: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .filter(|m| **m != leader)
        .map(|m| m.to_string())
        .collect();
    Ok(match kind {
        0 => {
            lose_host(&host_pids(c, &leader), &data_dir(c, &leader));
            format!("{leader}'s host lost")
        }
        1 => {
            let pm = member_pid(c, &leader, "data/postmaster.pid").context("postmaster")?;
            let mut pids = vec![pm];
            pids.extend(children(pm));
            kill9_all(&pids);
            format!("{leader}'s PostgreSQL killed ({} processes)", pids.len())
        }
        2 => {
            let pm = member_pid(c, &leader, "data/postmaster.pid").context("postmaster")?;
            let mut pids = vec![pm];
            signal_all(&pids, "STOP");
            pids.extend(children(pm));
            signal_all(&pids, "STOP");
            tokio::time::sleep(hold).await;
            signal_all(&pids, "CONT");
            format!("{leader}'s PostgreSQL frozen for {hold:?}")
        }
        3 => {
            let agent = member_pid(c, &leader, "agent.pid").context("agent")?;
            signal_all(&[agent], "STOP");
            tokio::time::sleep(hold).await;
            signal_all(&[agent], "CONT");
            format!("{leader}'s agent frozen for {hold:?}")
        }
        4 => {
            lose_host(&host_pids(c, &leader), &data_dir(c, &leader));
            let mut new = None;
            wait_until(Duration::from_secs(30), || {
                new = c.leader().ok().filter(|l| *l != leader);
                new.is_some()
            })
            .await;
            match new {
                Some(n) => {
                    lose_host(&host_pids(c, &n), &data_dir(c, &n));
                    format!("{leader}'s host lost, then {n}'s right after it took over")
                }
                None => format!("{leader}'s host lost; nobody took over within 30 s"),
            }
        }
        5 => {
            let s = &standbys[rng.below(2) as usize];
            lose_host(&host_pids(c, s), &data_dir(c, s));
            format!("standby {s}'s host lost")
        }
        6 => match c.pgbaton(&["switchover"]) {
            Ok(_) => format!("switchover from {leader}"),
            Err(e) => format!("switchover from {leader} refused: {e}"),
        },
        _ => match (&c.etcd, o.etcd_pid) {
            (None, _) => {
                lock_sqlite(c.dir.join("store.db"), hold).join().ok();
                format!("store write-locked for {hold:?}")
            }
            (Some(_), Some(pid)) => {
                signal_all(&[pid], "STOP");
                tokio::time::sleep(hold).await;
                signal_all(&[pid], "CONT");
                format!("etcd frozen for {hold:?}")
            }
            (Some(_), None) => "store outage skipped (no --etcd-pid)".to_string(),
        },
    })
}

/// Two-writer moments: a member's acknowledgement between two acknowledgements of another
/// member less than a second apart.
fn two_writer_moments(acks: &[(u64, u16, Instant)]) -> Vec<(u16, u16, Instant)> {
    let mut sorted: Vec<&(u64, u16, Instant)> = acks.iter().collect();
    sorted.sort_by_key(|a| a.2);
    let mut out = vec![];
    for w in sorted.windows(3) {
        let (a, b, z) = (w[0], w[1], w[2]);
        if a.1 == z.1 && b.1 != a.1 && z.2.duration_since(a.2) < Duration::from_secs(1) {
            out.push((a.1, b.1, b.2));
        }
    }
    out
}

/// Returns how many rounds did not end healthy (the caller keeps the logs then).
pub async fn run(c: &Cluster, o: &Options) -> Result<usize> {
    let mode = c.synchronous.clone().unwrap_or_else(|| "off".into());
    c.pgbaton(&[
        "psql",
        "--",
        "-X",
        "-q",
        "-d",
        "bench",
        "-c",
        "CREATE TABLE chaos_w (id bigint primary key)",
    ])?;
    wait_until(Duration::from_secs(60), || healthy(c)).await;
    let pw = format!("chaos-{}", std::process::id());
    let verifier = postgres_protocol::password::scram_sha_256(pw.as_bytes());
    c.pgbaton(&[
        "psql",
        "--",
        "-X",
        "-q",
        "-d",
        "bench",
        "-c",
        &format!("CREATE ROLE chaos LOGIN PASSWORD '{verifier}'; GRANT ALL ON chaos_w TO chaos"),
    ])?;
    let ports: Vec<u16> = (0..3).map(|i| o.port_base + i).collect();
    let common = format!("user=chaos password={pw} dbname=bench connect_timeout=2");
    let mut dsns = vec![format!(
        "host=127.0.0.1,127.0.0.1,127.0.0.1 port={},{},{} target_session_attrs=read-write {common}",
        ports[0], ports[1], ports[2]
    )];
    dsns.extend(
        ports
            .iter()
            .map(|p| format!("host=127.0.0.1 port={p} {common}")),
    );
    let acks: Acks = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(1));
    // The writers get a runtime (and threads) of their own: the fault steps below block on
    // `pgbaton` commands, and must not delay an acknowledgement's timestamp.
    let writers = {
        let (acks, stop) = (acks.clone(), stop.clone());
        std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let tasks: Vec<_> = dsns
                    .into_iter()
                    .map(|d| tokio::spawn(write_loop(d, next.clone(), acks.clone(), stop.clone())))
                    .collect();
                for t in tasks {
                    let _ = t.await;
                }
            });
            Ok(())
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut rng = Rng(o.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut gaps = vec![];
    let mut back = vec![];
    let mut not_healthy = 0;
    let mut rounds: Vec<(Instant, String)> = vec![];
    println!("| round | fault | write gap | back to healthy |");
    println!("| --- | --- | --- | --- |");
    for r in 0..o.rounds {
        // PGBATON_CHAOS_FAULT=K repeats one kind (0-7, in the order of FAULTS).
        let kind = match std::env::var("PGBATON_CHAOS_FAULT")
            .ok()
            .and_then(|k| k.parse().ok())
        {
            Some(k) if k < FAULTS.len() => k,
            _ => rng.below(FAULTS.len() as u64) as usize,
        };
        let t0 = Instant::now();
        let what = match fault(c, o, kind, &mut rng).await {
            Ok(w) => w,
            Err(e) => format!("{} not carried out: {e:#}", FAULTS[kind]),
        };
        rounds.push((t0, what.clone()));
        let ended = Instant::now();
        // Start what was lost again (only missing agents are started). Healthy again means:
        // a write acknowledged after the fault, and then (reports at least two loops newer
        // than the fault) a healthy cluster.
        let _ = c.up(o.port_base);
        let acked_since = |t: Instant| acks.lock().unwrap().iter().any(|x| x.2 > t);
        let healthy_after = match wait_until(Duration::from_secs(120), || acked_since(ended)).await
        {
            Some(_) => {
                tokio::time::sleep(Duration::from_millis(1_200)).await;
                wait_until(Duration::from_secs(120), || healthy(c)).await
            }
            None => None,
        };
        let took = match healthy_after {
            Some(_) => format!("{:.1} s", ended.elapsed().as_secs_f64()),
            None => {
                not_healthy += 1;
                "NOT HEALTHY within 120 s".into()
            }
        };
        back.push(ended.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let gap = {
            let a = acks.lock().unwrap();
            let mut times: Vec<Instant> = a.iter().map(|x| x.2).filter(|t| *t >= t0).collect();
            times.sort();
            let mut g = times
                .first()
                .map_or(Duration::ZERO, |f| f.duration_since(t0));
            for w in times.windows(2) {
                g = g.max(w[1] - w[0]);
            }
            g
        };
        gaps.push(gap.as_secs_f64() * 1000.0);
        println!("| {r} | {what} | {} ms | {took} |", gap.as_millis());
    }
    stop.store(true, Ordering::Relaxed);
    // Each writer stops within its 3 s statement bound.
    let _ = writers.join();
    wait_until(Duration::from_secs(120), || healthy(c)).await;
    let ids = c.pgbaton(&[
        "psql",
        "--",
        "-X",
        "-At",
        "-d",
        "bench",
        "-c",
        "SELECT id FROM chaos_w",
    ])?;
    let present: std::collections::HashSet<u64> =
        ids.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let acked = acks.lock().unwrap().clone();
    let lost: Vec<&(u64, u16, Instant)> = acked
        .iter()
        .filter(|(id, _, _)| !present.contains(id))
        .collect();
    let round_of = |t: Instant| rounds.iter().rposition(|(t0, _)| *t0 <= t);
    for (id, port, t) in &lost {
        let r = round_of(*t);
        eprintln!(
            "lost: id {id} acknowledged by port {port} in round {r:?} ({})",
            r.map_or("", |r| rounds[r].1.as_str())
        );
    }
    let two = two_writer_moments(&acked);
    for (a, b, t) in &two {
        let r = round_of(*t);
        eprintln!(
            "two writers: port {b} acknowledged between two writes of port {a}, round {r:?} ({})",
            r.map_or("", |r| rounds[r].1.as_str())
        );
    }
    let store = if c.etcd.is_some() {
        "etcd"
    } else {
        "embedded store"
    };
    println!();
    println!(
        "| measure ({} rounds, synchronous {mode}, 3 members, {store}) | result |",
        o.rounds
    );
    println!("| --- | --- |");
    println!(
        "| write gap per round | median {:.0} ms, max {:.0} ms |",
        median(&mut gaps.clone()),
        gaps.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "| fault end to healthy again | median {:.1} s, max {:.1} s |",
        median(&mut back.clone()),
        back.iter().cloned().fold(0.0, f64::max)
    );
    println!("| acknowledged commits | {} |", acked.len());
    println!(
        "chaos: {} rounds, {} lost, {} two-writer moments, {not_healthy} rounds not healthy again",
        o.rounds,
        lost.len(),
        two.len()
    );
    if mode != "off" && !lost.is_empty() {
        bail!(
            "{} acknowledged commits lost in synchronous mode {mode}",
            lost.len()
        );
    }
    if !two.is_empty() {
        bail!("{} two-writer moments", two.len());
    }
    Ok(not_healthy)
}
