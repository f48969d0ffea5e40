//! Sweep seeds through the simulator: no invariant may break for any of them.
//! Asynchronous: seeds 0..N (N = env `PGBATON_SIM_SEEDS`, default 10000); synchronous on
//! and quorum: seeds 0..M each (M = env `PGBATON_SIM_SYNC_SEEDS`, default 3000).

use pgbaton_core::sync::SyncMode;
use pgbaton_sim::{sweep, SimConfig};

// Half of a sweep's time went to glibc's malloc and free (cloned views and strings):
// mimalloc is markedly faster at that, and the sweep runs in every `cargo test`.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn seeds(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sweep_mode(mode: SyncMode, n: u64) {
    let threads = std::thread::available_parallelism().map_or(2, |p| p.get());
    let started = std::time::Instant::now();
    let mut cfg = SimConfig::default();
    cfg.sync.mode = mode;
    let s = sweep(0, n, &cfg, threads);
    println!("{mode}: {s}in {:.1} s", started.elapsed().as_secs_f64());
    if !s.failed.is_empty() {
        let shown: Vec<String> = s.failed.iter().take(50).map(|x| x.to_string()).collect();
        panic!(
            "{} of {n} seeds broke an invariant (synchronous {mode}): {}\nreplay one with: cargo run -p pgbaton-sim -- --seed {} --synchronous {mode} --trace",
            s.failed.len(),
            shown.join(" "),
            s.failed[0]
        );
    }
}

#[test]
fn sweep_seeds() {
    sweep_mode(SyncMode::Off, seeds("PGBATON_SIM_SEEDS", 10_000));
}

#[test]
fn sweep_seeds_synchronous_on() {
    sweep_mode(SyncMode::On, seeds("PGBATON_SIM_SYNC_SEEDS", 3_000));
}

#[test]
fn sweep_seeds_synchronous_quorum() {
    sweep_mode(SyncMode::Quorum, seeds("PGBATON_SIM_SYNC_SEEDS", 3_000));
}
