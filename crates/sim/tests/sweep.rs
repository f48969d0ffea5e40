//! Sweep seeds 0..N (N = env `PGBATON_SIM_SEEDS`, default 10000) through the simulator: no
//! invariant may break for any of them.

use pgbaton_sim::{sweep, SimConfig};

#[test]
fn sweep_seeds() {
    let n: u64 = std::env::var("PGBATON_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let threads = std::thread::available_parallelism().map_or(2, |p| p.get());
    let started = std::time::Instant::now();
    let s = sweep(0, n, &SimConfig::default(), threads);
    println!("{s}in {:.1} s", started.elapsed().as_secs_f64());
    if !s.failed.is_empty() {
        let shown: Vec<String> = s.failed.iter().take(50).map(|x| x.to_string()).collect();
        panic!(
            "{} of {n} seeds broke an invariant: {}\nreplay one with: cargo run -p pgbaton-sim -- --seed {} --trace",
            s.failed.len(),
            shown.join(" "),
            s.failed[0]
        );
    }
}
