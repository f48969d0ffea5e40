//! What a run simulates: the cluster's settings, the faults, and knobs that plant old
//! behaviour (to test the tests).

use pgbaton_core::sync::SyncSettings;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub nodes: usize,
    /// Seeded faults start within this window (ms after the start) and all end by its end.
    pub fault_ms: u64,
    /// After the faults heal, the cluster must have converged within this bound.
    pub settle_ms: u64,
    pub loop_ms: u64,
    pub ttl_ms: u64,
    pub fence_margin_ms: u64,
    pub primary_restart_timeout_ms: u64,
    pub max_lag_bytes: u64,
    pub reclone_on_rewind_failure: bool,
    /// Probability (per mille) that a needed pg_rewind fails.
    pub rewind_fail_per_mille: u32,
    /// Seeded random faults (off: only `SimConfig::script` faults).
    pub random_faults: bool,
    /// Explicit faults (scenario tests), in addition to the random ones.
    pub script: Vec<Fault>,
    /// Per-node replication lag in bytes (default: seeded, 0..=4096).
    pub lag_bytes: Option<Vec<u64>>,
    /// The watchdog kills a writable PostgreSQL past its deadline (off: test the tests).
    pub watchdog: bool,
    /// Planted bug knob: the watchdog fires this late.
    pub watchdog_late_ms: u64,
    /// Failsafe rounds during store unavailability (off: test the tests).
    pub failsafe: bool,
    /// While its PostgreSQL is stopped, the agent keeps publishing the timeline and LSN it
    /// last published (instead of none, which removed the `max_lag_bytes` and timeline bars
    /// from the failover decision); `crates/agent` does (see the
    /// pinned test `stopped_primary_publishes_no_lsn`.
    pub publish_stopped_position: bool,
    /// A (re)started agent holds itself to a failsafe promise for `ttl_ms`: a promise given
    /// before an agent crash lives in agent memory and would be forgotten (two writers).
    /// `crates/agent` holds it (pinned test `agent_restart_forgets_its_failsafe_promise`).
    pub failsafe_hold_after_start: bool,
    /// Frozen PostgreSQL and killed-watchdog faults among the random ones (off: the fault
    /// mix the pinned seeds of earlier bugs were found with).
    pub pg_faults: bool,
    /// The fence kills every process of a frozen instance. Off plants the old fence, which
    /// killed only the postmaster: frozen backends thaw and acknowledge their commits.
    pub fence_kills_frozen: bool,
    /// An agent whose watchdog died stops a primary's PostgreSQL and starts a new one. Off
    /// plants the old agent, which exited and left PostgreSQL running unfenced.
    pub watchdog_respawn: bool,
    /// pg_rewind that cannot connect to its source says so (`Rewind::SourceUnreachable`)
    /// and the rejoin is retried. Off plants the old agent, which took it for a failed
    /// rewind and waited for a reinit for good (pinned test
    /// `an_unreachable_rewind_source_is_retried`).
    pub rewind_unreachable_is_retried: bool,
    /// Operator requests (switchover, reinit, restart, remove) among the random faults,
    /// checked as the CLI checks them (`ops::check`) before they are posted.
    pub operations: bool,
    /// The cluster's timing changes while it runs (`pgbaton edit-config --set
    /// timing.ttl_ms=...`): seeded `Retime` faults, drawn apart from the other faults (their
    /// own random stream, so the other faults of a seed stay as they were), give one node
    /// another lease TTL for a while; every member applies a change at its own next loop.
    pub retime: bool,
    /// A failsafe round extends the fence by the shortest promise a member gave, not by
    /// the primary's own TTL. Off plants the old agent, which used its own TTL: with TTLs
    /// that differ (a change that has reached some members only), a member's promise ran
    /// out before the primary's fence.
    pub failsafe_shortest_promise: bool,
    /// Before asking for a lease shorter than the armed fence counts on, the executor pulls
    /// the fence in (`Host::tighten`). Off plants the executor before it: a renewal for a
    /// lowered TTL that the store applied but whose answer was lost left the fence at the
    /// old, later deadline, past the shorter lease.
    pub tighten_before_shorter_ttl: bool,
    /// Synchronous replication, as every node's `[replication]` says.
    pub sync: SyncSettings,
    /// Record a human-readable trace in the outcome.
    pub trace: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 3,
            fault_ms: 90_000,
            settle_ms: 30_000,
            loop_ms: 500,
            ttl_ms: 2_500,
            fence_margin_ms: 500,
            primary_restart_timeout_ms: 30_000,
            max_lag_bytes: 1_048_576,
            reclone_on_rewind_failure: false,
            rewind_fail_per_mille: 100,
            random_faults: true,
            script: vec![],
            lag_bytes: None,
            watchdog: true,
            watchdog_late_ms: 0,
            failsafe: true,
            publish_stopped_position: true,
            failsafe_hold_after_start: true,
            pg_faults: true,
            fence_kills_frozen: true,
            watchdog_respawn: true,
            rewind_unreachable_is_retried: true,
            operations: true,
            retime: true,
            failsafe_shortest_promise: true,
            tighten_before_shorter_ttl: true,
            sync: SyncSettings::default(),
            trace: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The whole node: PostgreSQL, agent and watchdog die; restarted at the end.
    NodeCrash,
    /// The agent process only; restarted at the end.
    AgentCrash,
    /// PostgreSQL dies (immediate); the agent is expected to notice.
    PgCrash,
    /// The node cannot reach the store.
    StoreCut,
    /// The node cannot reach its peers (agent API and replication).
    PeerCut,
    /// The node's view of the cluster arrives late (its watch lags behind the store): each
    /// view it reads is up to a TTL old when its loop gets it.
    LateView,
    /// The agent is SIGSTOPped.
    Freeze,
    /// The store is down for everyone.
    StoreOutage,
    /// The operator pauses the cluster.
    Pause,
    /// PostgreSQL is SIGSTOPped, postmaster and backends (a VM pause, a storage stall).
    PgFreeze,
    /// The fence watchdog is SIGKILLed (the duration matters only to the planted old agent,
    /// which exits: it is restarted at the end).
    WatchdogKill,
    /// The operator asks for a switchover to this node (from whoever leads).
    Switchover,
    /// The operator asks for this node to be re-cloned (`pgbaton reinit`).
    Reinit,
    /// The operator asks for this node's PostgreSQL to be restarted.
    Restart,
    /// The operator removes this node from the cluster for good (`pgbaton remove`).
    Remove,
    /// The operator promotes this node (`pgbaton promote`, without `--force`).
    Promote,
    /// The operator asks this node to rejoin the primary (`pgbaton rejoin`).
    Rejoin,
    /// The operator asks this node's PostgreSQL to reload its configuration.
    Reload,
    /// The node runs with this lease TTL (ms) for a while (a timing change in the
    /// cluster's config, as the member applies it), then with the configured one again.
    Retime(u64),
}

/// A fault from `at_ms` (ms after the start) for `dur_ms`.
#[derive(Clone, Debug)]
pub struct Fault {
    pub at_ms: u64,
    pub dur_ms: u64,
    pub node: usize,
    pub kind: FaultKind,
}
