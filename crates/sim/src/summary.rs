//! A sweep of many seeds and its summary.

use super::*;

/// Summary over many outcomes, for the sweep.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub runs: u64,
    pub failed: Vec<u64>,
    pub violations: BTreeMap<&'static str, u64>,
    pub events: u64,
    pub faults: u64,
    pub promotions: u64,
    pub fences: u64,
    pub failsafe_rounds: u64,
    pub failsafe_confirmed: u64,
    pub reports_written: u64,
    pub reports_skipped: u64,
    pub rewinds: u64,
    pub rejoin_failures: u64,
    pub waiting_rejoin_failed: u64,
    pub stuck_diverged: u64,
    pub op_pending_at_end: u64,
    pub lost_writes: u64,
    pub max_lost_writes: u64,
    /// Of them, acknowledged to the client (1 KB each).
    pub lost_acked_writes: u64,
    pub unavailable_ms: u64,
    pub max_unavailable_ms: u64,
    pub max_converged_after_ms: u64,
}

impl Summary {
    pub fn add(&mut self, o: &Outcome) {
        self.runs += 1;
        if !o.ok() {
            self.failed.push(o.seed);
        }
        for v in &o.violations {
            *self.violations.entry(v.kind).or_default() += 1;
        }
        let s = &o.stats;
        self.events += s.events;
        self.faults += s.faults as u64;
        self.promotions += s.promotions as u64;
        self.fences += s.fences as u64;
        self.failsafe_rounds += s.failsafe_rounds as u64;
        self.failsafe_confirmed += s.failsafe_confirmed as u64;
        self.reports_written += s.reports_written;
        self.reports_skipped += s.reports_skipped;
        self.rewinds += s.rewinds as u64;
        self.rejoin_failures += s.rejoin_failures as u64;
        self.waiting_rejoin_failed += s.waiting_rejoin_failed as u64;
        self.stuck_diverged += s.stuck_diverged as u64;
        self.op_pending_at_end += s.op_pending_at_end as u64;
        self.lost_writes += s.lost_writes;
        self.max_lost_writes = self.max_lost_writes.max(s.lost_writes);
        self.lost_acked_writes += s.lost_acked_bytes / 1024;
        self.unavailable_ms += s.unavailable_ms;
        self.max_unavailable_ms = self.max_unavailable_ms.max(s.max_unavailable_ms);
        self.max_converged_after_ms = self
            .max_converged_after_ms
            .max(s.converged_after_ms.unwrap_or(0));
    }

    pub fn merge(&mut self, o: Summary) {
        self.runs += o.runs;
        self.failed.extend(o.failed);
        for (k, v) in o.violations {
            *self.violations.entry(k).or_default() += v;
        }
        self.events += o.events;
        self.faults += o.faults;
        self.promotions += o.promotions;
        self.fences += o.fences;
        self.failsafe_rounds += o.failsafe_rounds;
        self.failsafe_confirmed += o.failsafe_confirmed;
        self.reports_written += o.reports_written;
        self.reports_skipped += o.reports_skipped;
        self.rewinds += o.rewinds;
        self.rejoin_failures += o.rejoin_failures;
        self.waiting_rejoin_failed += o.waiting_rejoin_failed;
        self.stuck_diverged += o.stuck_diverged;
        self.op_pending_at_end += o.op_pending_at_end;
        self.lost_writes += o.lost_writes;
        self.max_lost_writes = self.max_lost_writes.max(o.max_lost_writes);
        self.lost_acked_writes += o.lost_acked_writes;
        self.unavailable_ms += o.unavailable_ms;
        self.max_unavailable_ms = self.max_unavailable_ms.max(o.max_unavailable_ms);
        self.max_converged_after_ms = self.max_converged_after_ms.max(o.max_converged_after_ms);
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let runs = self.runs.max(1);
        writeln!(
            f,
            "{} runs, {} failed, {} events, {} faults",
            self.runs,
            self.failed.len(),
            self.events,
            self.faults
        )?;
        writeln!(
            f,
            "promotions {}, watchdog fences {}, failsafe rounds {} ({} confirmed by all), loop reports written {} (not due: {}), rewinds {}, rewind failures {} (nodes left waiting for reinit at the end: {}); standbys left diverged at the end (liveness gap): {}; runs ending with an operation within its deadline: {}",
            self.promotions,
            self.fences,
            self.failsafe_rounds,
            self.failsafe_confirmed,
            self.reports_written,
            self.reports_skipped,
            self.rewinds,
            self.rejoin_failures,
            self.waiting_rejoin_failed,
            self.stuck_diverged,
            self.op_pending_at_end
        )?;
        writeln!(
            f,
            "writes lost (1 KB each): {} total, {:.1} per run, max {} in one run; of them acknowledged to the client: {}",
            self.lost_writes,
            self.lost_writes as f64 / runs as f64,
            self.max_lost_writes,
            self.lost_acked_writes
        )?;
        writeln!(
            f,
            "no writable primary: {:.1} s per run on average, longest window {} ms; slowest convergence after heal {} ms",
            self.unavailable_ms as f64 / runs as f64 / 1000.0,
            self.max_unavailable_ms,
            self.max_converged_after_ms
        )?;
        if !self.violations.is_empty() {
            writeln!(f, "violations: {:?}", self.violations)?;
        }
        Ok(())
    }
}

/// Run seeds `start..start + count` on `threads` threads; the summary of all.
pub fn sweep(start: u64, count: u64, cfg: &SimConfig, threads: usize) -> Summary {
    let threads = threads.max(1) as u64;
    let mut total = Summary::default();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut sum = Summary::default();
                    let mut seed = start + t;
                    while seed < start + count {
                        sum.add(&run(seed, cfg));
                        seed += threads;
                    }
                    sum
                })
            })
            .collect();
        for h in handles {
            total.merge(h.join().expect("a sweep thread panicked"));
        }
    });
    total.failed.sort_unstable();
    total
}
