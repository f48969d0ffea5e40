//! What a run found: invariant violations, promotions and counts.

use crate::Fault;

#[derive(Clone, Debug)]
pub struct Violation {
    /// ms after the start.
    pub t_ms: u64,
    pub kind: &'static str,
    pub detail: String,
}

#[derive(Clone, Debug)]
pub struct Promotion {
    pub t_ms: u64,
    pub node: String,
    pub lsn: u64,
    pub timeline: u32,
    /// The other live standbys' LSNs at that instant.
    pub others: Vec<(String, u64)>,
    /// The last LSN a writable primary published, if any.
    pub last_published_primary_lsn: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub events: u64,
    pub faults: u32,
    pub promotions: u32,
    /// Watchdog kills of a writable PostgreSQL.
    pub fences: u32,
    pub failsafe_rounds: u32,
    pub failsafe_confirmed: u32,
    /// Loop reports written, and not written because nothing changed while the cluster
    /// rested (`pgbaton_core::publish::due`).
    pub reports_written: u64,
    pub reports_skipped: u64,
    pub rewinds: u32,
    pub rejoin_failures: u32,
    pub lost_bytes: u64,
    pub lost_writes: u64,
    /// Of the lost bytes, those a client had an acknowledgement for (in synchronous modes,
    /// any is a violation).
    pub lost_acked_bytes: u64,
    /// Total time without a writable primary.
    pub unavailable_ms: u64,
    /// Longest stretch without a writable primary.
    pub max_unavailable_ms: u64,
    /// How long after the heal the cluster converged (None: it did not).
    pub converged_after_ms: Option<u64>,
    /// Nodes waiting after a failed rejoin (allowed by invariant 4).
    pub waiting_rejoin_failed: u32,
    /// Standbys left at the end following the primary with WAL that diverged from its
    /// history (a less advanced standby was promoted): `decide` never rewinds a standby,
    /// so they never stream again. A liveness gap, counted, not asserted.
    pub stuck_diverged: u32,
    /// Runs that ended with a switchover or promote still within its own deadline (a
    /// switchover to a member that died meanwhile waits `SWITCHOVER_TIMEOUT_MS` before the
    /// old primary resumes): convergence is not judged then.
    pub op_pending_at_end: u32,
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub seed: u64,
    pub violations: Vec<Violation>,
    pub stats: Stats,
    pub promotions: Vec<Promotion>,
    /// Watchdog kills: (ms after the start, node).
    pub fences: Vec<(u64, String)>,
    pub faults: Vec<Fault>,
    /// The writable primary at the end, if exactly one.
    pub final_primary: Option<String>,
    /// Filled when `SimConfig::trace`.
    pub trace: Vec<String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}
