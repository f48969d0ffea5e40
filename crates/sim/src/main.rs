//! `pgbaton-sim --seed N [--trace]` replays one seed; `pgbaton-sim --sweep START COUNT`
//! sweeps seeds. Options: `--nodes N` (2 to 9), `--no-watchdog`, `--no-failsafe`,
//! `--watchdog-late MS`, `--threads N`, `--synchronous off|on|quorum` (with
//! `--sync-count N`, `--sync-strict`), and the knobs `usage` lists.

use pgbaton_core::sync::SyncMode;
use pgbaton_sim::{run, sweep, SimConfig};
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: pgbaton-sim --seed N [--trace]\n       pgbaton-sim --sweep START COUNT [--threads N]\n\
         options: --nodes N (2-9) --no-operations --no-watchdog --no-failsafe --no-failsafe-hold --no-stopped-position --no-pg-faults --old-fence --no-watchdog-respawn --watchdog-late MS --no-retime --old-failsafe-promise --no-tighten\n\
         synchronous replication: --synchronous off|on|quorum --sync-count N --sync-strict"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cfg = SimConfig::default();
    let mut seed = None;
    let mut sweep_range = None;
    let mut threads = 2usize;
    let mut i = 0;
    let num = |i: usize| -> Option<u64> { args.get(i)?.parse().ok() };
    while i < args.len() {
        match args[i].as_str() {
            "--seed" => {
                seed = num(i + 1);
                i += 1;
            }
            "--sweep" => {
                sweep_range = num(i + 1).zip(num(i + 2));
                i += 2;
            }
            "--threads" => {
                threads = num(i + 1).unwrap_or(2) as usize;
                i += 1;
            }
            "--trace" => cfg.trace = true,
            "--nodes" => {
                match num(i + 1).filter(|n| (2..=9).contains(n)) {
                    Some(n) => cfg.nodes = n as usize,
                    None => return usage(),
                }
                i += 1;
            }
            "--no-watchdog" => cfg.watchdog = false,
            "--no-failsafe" => cfg.failsafe = false,
            "--no-failsafe-hold" => cfg.failsafe_hold_after_start = false,
            "--no-stopped-position" => cfg.publish_stopped_position = false,
            "--no-pg-faults" => cfg.pg_faults = false,
            "--no-operations" => cfg.operations = false,
            "--old-fence" => cfg.fence_kills_frozen = false,
            "--no-retime" => cfg.retime = false,
            "--old-failsafe-promise" => cfg.failsafe_shortest_promise = false,
            "--no-tighten" => cfg.tighten_before_shorter_ttl = false,
            "--no-watchdog-respawn" => cfg.watchdog_respawn = false,
            "--synchronous" => {
                cfg.sync.mode = match args.get(i + 1).map(String::as_str) {
                    Some("off") => SyncMode::Off,
                    Some("on") => SyncMode::On,
                    Some("quorum") => SyncMode::Quorum,
                    _ => return usage(),
                };
                i += 1;
            }
            "--sync-count" => {
                match num(i + 1).filter(|n| (1..=8).contains(n)) {
                    Some(n) => cfg.sync.node_count = n as u32,
                    None => return usage(),
                }
                i += 1;
            }
            "--sync-strict" => cfg.sync.strict = true,
            "--watchdog-late" => {
                cfg.watchdog_late_ms = num(i + 1).unwrap_or(0);
                i += 1;
            }
            _ => return usage(),
        }
        i += 1;
    }
    if let Some(seed) = seed {
        let o = run(seed, &cfg);
        for line in &o.trace {
            println!("{line}");
        }
        println!("seed {seed}: {:?}", o.stats);
        for p in &o.promotions {
            println!("promotion: {p:?}");
        }
        if o.ok() {
            println!("seed {seed}: ok");
            ExitCode::SUCCESS
        } else {
            for v in &o.violations {
                println!("VIOLATION at {} ms: {}: {}", v.t_ms, v.kind, v.detail);
            }
            ExitCode::FAILURE
        }
    } else if let Some((start, count)) = sweep_range {
        let t = std::time::Instant::now();
        let s = sweep(start, count, &cfg, threads);
        print!("{s}");
        println!("in {:.1} s", t.elapsed().as_secs_f64());
        if s.failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            let shown: Vec<String> = s.failed.iter().take(20).map(|s| s.to_string()).collect();
            println!("failing seeds: {}", shown.join(" "));
            println!(
                "replay: cargo run -p pgbaton-sim -- --seed {} --trace",
                s.failed[0]
            );
            ExitCode::FAILURE
        }
    } else {
        usage()
    }
}
