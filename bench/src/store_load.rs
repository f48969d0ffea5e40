//! `pgbaton-bench store-load --clusters N --etcd URL [--etcd-pid PID] [--seconds S]`: the
//! store traffic of N idle 3-member clusters on one etcd, made by the real store code
//! (`EtcdStore` as an agent opens it, `pgbaton_core::publish::due`) with PostgreSQL faked:
//! each agent loops every 500 ms as the agent does: it reads its kept view, takes or renews
//! the leader lease, says it is alive when it does not lead, and writes its (unchanging)
//! report when due. After a warm-up, etcd's counters before and after S seconds give the
//! requests, revisions and database growth; /proc gives etcd's CPU; the agents time their
//! own store calls (p50, p99 over all; by kind of call also p99.9 and the maximum) and
//! their own CPU (when it nears its cores, their latencies are their own queueing).

use super::idle::Scrape;
use anyhow::{Context, Result};
use pgbaton_core::model::{Lsn, MemberState, MemberStatus, Role};
use pgbaton_store::Store;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LOOP: Duration = Duration::from_millis(500);
const TTL_MS: u64 = 2_000;
const WARM_UP: Duration = Duration::from_secs(20);

/// Latencies of the agents' store calls (µs) by kind, while measuring.
type Samples = Arc<Mutex<Option<[Vec<u32>; KINDS.len()]>>>;

/// The kinds of store call an idle agent makes.
const KINDS: [&str; 4] = [
    "leader keep-alive",
    "leader acquire",
    "alive keep-alive",
    "report put",
];

async fn timed<T>(samples: &Samples, kind: usize, call: impl std::future::Future<Output = T>) -> T {
    let t = Instant::now();
    let r = call.await;
    if let Some(v) = samples.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        v[kind].push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
    }
    r
}

/// One fake agent: the store side of the agent's loop, forever.
async fn agent(endpoint: String, cluster: String, name: String, samples: Samples) {
    let store = pgbaton_store::etcd::EtcdStore::new(&[endpoint], &cluster).watching();
    let alive_ttl = pgbaton_core::publish::alive_ttl_ms(TTL_MS);
    let mut alive_at = 0u64;
    let mut tick = tokio::time::interval(LOOP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(view) = store.view().await else {
            continue;
        };
        let now = pgbaton_store::now_ms();
        let holder = view.leader.as_ref().map(|l| l.member.clone());
        let leading = match holder.as_deref() {
            Some(h) if h == name => timed(&samples, 0, store.leader_renew(&name, TTL_MS))
                .await
                .unwrap_or(false),
            Some(_) => false,
            None => timed(&samples, 1, store.leader_acquire(&name, TTL_MS))
                .await
                .unwrap_or(false),
        };
        if !leading
            && now.saturating_sub(alive_at) >= alive_ttl / 2
            && timed(&samples, 2, store.member_alive(&name, alive_ttl))
                .await
                .is_ok()
        {
            alive_at = now;
        }
        let (role, state) = if leading {
            (Role::Primary, MemberStatus::Running)
        } else {
            (Role::Standby, MemberStatus::Streaming)
        };
        let report = MemberState {
            lsn: Some(Lsn(0x400_0000)),
            receive_lsn: (!leading).then_some(Lsn(0x400_0000)),
            upstream: holder.filter(|h| *h != name),
            ..MemberState::sample(&name, role, state, now)
        };
        if pgbaton_core::publish::due(&view, &report, now) {
            let _ = timed(&samples, 3, store.member_put(&report)).await;
        }
    }
}

/// CPU ticks (utime + stime) of a process.
fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn percentile(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    f64::from(v[i]) / 1000.0
}

pub async fn run(etcd: &str, clusters: usize, seconds: u64, etcd_pid: Option<i32>) -> Result<()> {
    let samples: Samples = Arc::new(Mutex::new(None));
    let run_id = std::process::id();
    let mut tasks = vec![];
    for c in 0..clusters {
        for m in 1..=3 {
            tasks.push(tokio::spawn(agent(
                etcd.to_string(),
                format!("load-{run_id}-{c}"),
                format!("n{m}"),
                samples.clone(),
            )));
        }
        // Spread the agents' loops over the interval, as independent agents would be.
        tokio::time::sleep(LOOP / (clusters as u32).max(1)).await;
    }
    tokio::time::sleep(WARM_UP).await;
    let before = Scrape::take(etcd).await.context("read etcd's counters")?;
    let cpu0 = etcd_pid.and_then(cpu_ticks);
    let me = std::process::id() as i32;
    let own0 = cpu_ticks(me);
    *samples.lock().unwrap_or_else(|e| e.into_inner()) = Some(Default::default());
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let by_kind = samples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default();
    for (kind, v) in KINDS.iter().zip(&by_kind) {
        let mut v = v.clone();
        if !v.is_empty() {
            eprintln!(
                "{kind}: {} calls, p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
                v.len(),
                percentile(&mut v, 0.5),
                percentile(&mut v, 0.99),
                percentile(&mut v, 0.999),
                percentile(&mut v, 1.0)
            );
        }
    }
    let mut lat: Vec<u32> = by_kind.concat();
    let after = Scrape::take(etcd).await?;
    let cpu1 = etcd_pid.and_then(cpu_ticks);
    let own1 = cpu_ticks(me);
    let secs = t0.elapsed().as_secs_f64();
    for t in tasks {
        t.abort();
    }
    let requests = after.requests() - before.requests();
    let revisions = after.sum("etcd_debugging_mvcc_current_revision", "")
        - before.sum("etcd_debugging_mvcc_current_revision", "");
    let growth = after.sum("etcd_mvcc_db_total_size_in_bytes", "")
        - before.sum("etcd_mvcc_db_total_size_in_bytes", "");
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => format!("{:.1} %", (b - a) as f64 / 100.0 / secs * 100.0),
        _ => "(give --etcd-pid)".into(),
    };
    // The agents' side: when it nears the cores it runs on, their latencies are its queueing.
    if let (Some(a), Some(b)) = (own0, own1) {
        eprintln!(
            "the {} fake agents used {:.1} % of a core",
            clusters * 3,
            (b - a) as f64 / 100.0 / secs * 100.0
        );
    }
    println!(
        "| {clusters} clusters ({} agents), {secs:.0} s | {:.0} | {:.2} | {:.0} kB | {cpu} | {:.1} ms | {:.1} ms |",
        clusters * 3,
        requests / secs,
        revisions / secs,
        growth / secs * 3600.0 / 1024.0,
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
    );
    Ok(())
}
