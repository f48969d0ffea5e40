//! A deterministic simulator of a pgbaton cluster, to check that the failover decision
//! (`pgbaton_core::decide`) never yields two writable primaries.
//!
//! One run is a function of `(seed, SimConfig)`: a virtual clock (ms) and a priority queue of
//! events, a seeded splitmix64 RNG, no IO, no threads, no wall clock.
//!
//! # What is modelled
//! - **Agents** (one per node) as `crates/agent` runs them: every `loop_ms` read the cluster
//!   view from the store, observe the local PostgreSQL (folded with the agent's real memory,
//!   `pgbaton_core::memory::Memory`), call the real `decide`, carry the plan out with the
//!   real executor (`pgbaton_exec`, polled by hand through `io.rs`), then publish the
//!   member's state. Every store call and action takes a seeded time, and the other
//!   nodes' events interleave between the steps of one loop: decisions are made on views that
//!   may be stale by the time they are acted on.
//! - **The store**: a leader lease with expiry (CAS acquire / renew / release, expiry counted
//!   from when the store handles the request), members, the pause flag. Requests whose reply
//!   is lost were still applied.
//! - **The watchdog** (per node, apart from the agent): armed with
//!   `fence_deadline_ms(t0, ttl, margin)` by every successful acquire/renew started at `t0`,
//!   it kills a writable PostgreSQL once the deadline passed. It survives agent crashes and
//!   freezes, and dies with the node.
//! - **Failsafe**: an agent that cannot read the store while it believes it holds the lease
//!   and runs writable asks every other member; a member answers yes only when its agent is
//!   alive, not frozen, reachable, neither holds nor is taking the lease, and then promises
//!   not to take the lease for `ttl` (`LocalView::failsafe`, in agent memory). All yes: the
//!   watchdog deadline moves to `fence_deadline_ms(t0_of_the_round)`.
//! - **PostgreSQL** per node: stopped / starting / standby / promoting / writable; WAL as a
//!   branch (timeline) history and an LSN; a client writes 100 bytes/ms to whatever runs
//!   writable; a streaming standby copies its upstream with a small lag when reachable and
//!   its history is a prefix of the upstream's (a standby past the upstream's switch point has
//!   diverged and cannot stream). Promote forks a new branch; rejoin runs "pg_rewind" (fails
//!   with a seeded probability, setting `rejoin_failed`); clone/reinit copy the upstream.
//! - **Faults** (seeded, during `fault_ms`, all healed afterwards): whole-node crash
//!   (PostgreSQL and watchdog die), agent crash (PostgreSQL and watchdog live on), PostgreSQL
//!   crash, node cut off from the store, node cut off from its peers (API and replication),
//!   frozen agent (SIGSTOP: its loop stops mid-step, PostgreSQL and watchdog keep going),
//!   store outage, pause, frozen PostgreSQL (SIGSTOP of the postmaster and every backend: it
//!   acknowledges nothing, and the agent's probe hangs until it thaws or is killed), killed
//!   watchdog (the agent notices at once: it stops a primary's PostgreSQL if the watchdog
//!   was armed and starts a new one, disarmed). A watchdog killed while its agent is dead
//!   or frozen is not modelled: with both gone nothing fences the primary (a kernel watchdog
//!   would); the fault is skipped then.
//!
//! # Checked at every event
//! 1. one writer: never two writable PostgreSQL at the same instant;
//! 2. fence before expiry: when the store grants (or extends) the lease to X, no other node
//!    runs writable;
//! 3. an automatically promoted member is within `max_lag_bytes` of the last LSN a writable
//!    primary published to the store;
//! 4. every plan keeps the lease rules (`decide::check_plan`: one lease action at most,
//!    promote only after taking or renewing the lease);
//! 5. nothing acknowledged after a fence: an instance the watchdog fenced never acknowledges
//!    a write again (the old fence killed only the postmaster, and a backend frozen with it
//!    finished its commit when it thawed: `fence_kills_frozen = false` plants that);
//! 6. convergence: within `settle_ms` after the faults heal, one writable primary holds the
//!    lease and every other node streams from it on its timeline (a node whose rejoin failed,
//!    waiting for a reinit, is allowed and counted).
//!
//! Counted, not asserted: acknowledged writes lost (WAL written on branches that did not
//! survive into the final primary's history), time without any writable primary.
//!
//! # Agent behaviour found by the sweep (now in `crates/agent`), each with a knob
//! `failsafe_hold_after_start` (a restarted agent forgot its failsafe promise: two writers;
//! pinned test `agent_restart_forgets_its_failsafe_promise`) and `publish_stopped_position`
//! (a stopped primary published no LSN/timeline, which removed the `max_lag_bytes` bar;
//! pinned test `stopped_primary_publishes_no_lsn`). Knobs planting old agent behaviour:
//! `fence_kills_frozen`, `watchdog_respawn`.
//!
//! # Counted, not asserted: diverged standbys (`stuck_diverged`)
//! A standby whose WAL went past the promoted member's switch point follows the new primary
//! but cannot stream; `decide` rewinds a standby that has not streamed for three TTLs, and
//! one still left so at the end is counted.
//!
//! # Operator requests
//! Among the faults: switchover, reinit, restart, remove, checked by `ops::check` as the
//! CLI does before they are posted. A run that ends with a switchover still within its own
//! deadline is not judged for convergence (`op_pending_at_end`).
//!
//! # Not modelled
//! Promote, rejoin and reload requests, the lease keeper of long steps, bootstrap (runs start
//! from a built cluster), clock skew between nodes and the store (one virtual clock),
//! synchronous replication, the slot's WAL retention, partial network partitions between two
//! given peers (a cut node is cut from all peers), message reordering within one connection,
//! a `NotAnswering` PostgreSQL other than while starting, disk loss.
//!
//! # Replay
//! `cargo run -p pgbaton-sim -- --seed N --trace` replays one seed and prints its trace;
//! `cargo run -p pgbaton-sim -- --sweep START COUNT` sweeps seeds.

use pgbaton_core::decide::{decide, role_of, Action, ClusterView, DataDir, LocalView, PgRun};
use pgbaton_core::failover::{fence_deadline_ms, Failsafe, FailsafeGate, Policy};
use pgbaton_core::memory::{Memory, Probed, ViewSettings};
use pgbaton_core::model::{
    slot_name_for, HistoryEntry, Leader, Lsn, MemberState, MemberStatus, OpKind, Operation, Rewind,
    SlotEnsured, SlotInfo,
};
use pgbaton_core::render::Upstream;
use pgbaton_exec::PlanEnd;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

mod agent;
mod checks;
mod exec;
mod faults;
mod io;
mod store;
mod summary;
mod world;

pub use summary::{sweep, Summary};

/// Virtual time of the start of a run (ms): far from 0 so that "now - x" never saturates.
pub const START_MS: u64 = 1_000_000;
/// What the client writes to the writable primary: 1 KB every 10 ms.
pub const WRITE_BYTES_PER_MS: u64 = 100;
/// The initial primary's LSN.
const INITIAL_LSN: u64 = 50 << 20;
const SYSTEM_ID: &str = "42";

/// A seeded splitmix64.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0xA24B_AED4_963E_E407) ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    pub fn per_mille(&mut self, p: u32) -> bool {
        self.next_u64() % 1000 < p as u64
    }
}

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
}

/// A fault from `at_ms` (ms after the start) for `dur_ms`.
#[derive(Clone, Debug)]
pub struct Fault {
    pub at_ms: u64,
    pub dur_ms: u64,
    pub node: usize,
    pub kind: FaultKind,
}

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
    pub rewinds: u32,
    pub rejoin_failures: u32,
    pub lost_bytes: u64,
    pub lost_writes: u64,
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

/// Run one seed with seeded random faults (and any scripted ones).
pub fn run(seed: u64, cfg: &SimConfig) -> Outcome {
    let mut sim = Sim::new(seed, cfg);
    sim.main_loop();
    sim.finish()
}

// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    Stopped,
    Starting,
    Standby,
    Promoting,
    Writable,
}

#[derive(Clone, Debug)]
struct Pg {
    run: Run,
    /// Bumped whenever PostgreSQL stops: transitions in flight are dropped.
    epoch: u64,
    standby_signal: bool,
    upstream: Option<usize>,
    /// Ended ancestor branches: (branch id, LSN where it ended).
    hist: Vec<(usize, u64)>,
    branch: usize,
    lsn: u64,
    slots: BTreeSet<String>,
}

impl Pg {
    fn timeline(&self) -> u32 {
        self.hist.len() as u32 + 1
    }
    fn running(&self) -> bool {
        matches!(self.run, Run::Standby | Run::Promoting | Run::Writable)
    }
    /// (branch, end) from the root; the current branch ends at `end_current`.
    fn ancestry(&self, end_current: u64) -> Vec<(usize, u64)> {
        let mut a = self.hist.clone();
        a.push((self.branch, end_current));
        a
    }
}

/// Is `n`'s WAL a prefix of `u`'s history (it can stream from `u`)? Else, where they diverged.
fn divergence(n: &Pg, u: &Pg) -> Result<(), u64> {
    let an = n.ancestry(n.lsn);
    let au = u.ancestry(u64::MAX);
    let k = an.iter().zip(&au).take_while(|(a, b)| a.0 == b.0).count();
    if k == an.len() {
        if n.lsn <= au[k - 1].1 {
            return Ok(());
        }
        return Err(au[k - 1].1);
    }
    if k == 0 {
        return Err(0);
    }
    Err(an[k - 1].1.min(au[k - 1].1))
}

#[derive(Clone, Debug)]
struct FsRound {
    id: u64,
    t0: u64,
    asked: usize,
    yes: usize,
}

/// The executor the agent runs, over the simulated world.
type SimExec = pgbaton_exec::Executor<io::SimPg, io::SimHost>;
/// A plan being carried out: the executor comes back when it ends.
type Task = std::pin::Pin<Box<dyn std::future::Future<Output = (SimExec, PlanEnd)>>>;

/// One agent process: its executor (with its memory) and where its loop is.
#[derive(Default)]
struct Agent {
    epoch: u64,
    /// Absent while a plan runs (the task owns it).
    exec: Option<SimExec>,
    task: Option<Task>,
    /// The executor's memory as last seen (for reports while a plan runs).
    mem: Memory,
    last_view: Option<ClusterView>,
    loop_started: u64,
    parked: Option<Step>,
    fs: Option<FsRound>,
}

struct Node {
    name: String,
    pg: Pg,
    agent: Agent,
    /// The mailbox between this node's executor and the world; the watchdog and the API's
    /// shared state outlive an agent crash, the requests in it do not.
    io: io::Io,
    /// Removed from the cluster (`pgbaton remove`): its agent exited for good.
    removed: bool,
    /// Watchdog deadline, when armed.
    wd: Option<u64>,
    node_down: u32,
    agent_down: u32,
    frozen: u32,
    store_cut: u32,
    peer_cut: u32,
    lag: u64,
    /// PostgreSQL is frozen (SIGSTOP of every process): how many freezes, and the instance
    /// (PostgreSQL epoch) they froze; a new instance after a stop is not frozen.
    pg_frozen: u32,
    frozen_pg_epoch: u64,
    /// The watchdog fenced this PostgreSQL epoch: it must never acknowledge again.
    fenced_epoch: Option<u64>,
    /// Planted old fence: the postmaster was killed while frozen, its backends live on.
    zombie: bool,
}

impl Node {
    /// PostgreSQL acknowledges writes right now.
    fn acks(&self) -> bool {
        self.pg.run == Run::Writable && !self.pg_is_frozen()
    }

    fn pg_is_frozen(&self) -> bool {
        self.pg_frozen > 0 && self.frozen_pg_epoch == self.pg.epoch && self.pg.run != Run::Stopped
    }

    fn agent_alive(&self) -> bool {
        self.node_down == 0 && self.agent_down == 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeaseOp {
    Acquire,
    Renew,
    Release,
}

#[derive(Clone, Debug)]
enum StoreOp {
    Read,
    /// A request of the executor, answered to its mailbox.
    Exec {
        id: u64,
        req: io::StoreReq,
    },
    /// Publish the member's state; `reply`: a request of the executor to answer.
    Put {
        ms: Box<MemberState>,
        reply: Option<u64>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Started,
    Promoted,
}

#[derive(Clone, Debug)]
enum Step {
    LoopStart,
    ViewReply(Option<Box<ClusterView>>),
    /// The reply to an executor's request is due (`via_store`: it comes from the store,
    /// and is lost when the node is cut from it meanwhile).
    Reply {
        id: u64,
        rep: io::Rep,
        via_store: bool,
    },
    /// A long PostgreSQL request finished: did PostgreSQL get where it was asked?
    PgDone {
        id: u64,
        expect: Expect,
    },
    FsCollect(u64),
    Published,
}

#[derive(Clone, Debug)]
enum Ev {
    Step {
        node: usize,
        epoch: u64,
        step: Step,
    },
    StoreApply {
        node: usize,
        epoch: u64,
        op: StoreOp,
        /// When the agent sent the request.
        t0: u64,
    },
    FsAsk {
        asker: usize,
        peer: usize,
        round: u64,
    },
    FsAnswer {
        asker: usize,
        peer: usize,
        round: u64,
        yes: bool,
    },
    PgTransition {
        node: usize,
        pg_epoch: u64,
        to: Run,
    },
    Tick,
    NextFault,
    FaultStart(usize),
    FaultEnd(usize),
}

struct Queued {
    t: u64,
    seq: u64,
    ev: Ev,
}
impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> Ordering {
        (o.t, o.seq).cmp(&(self.t, self.seq)) // min-heap
    }
}

#[derive(Default)]
struct Store {
    lease: Option<Leader>,
    members: BTreeMap<String, MemberState>,
    op: Option<Operation>,
    history: Vec<HistoryEntry>,
    paused: u32,
    down: u32,
}

struct Sim {
    seed: u64,
    cfg: SimConfig,
    rng: Rng,
    now: u64,
    last_advance: u64,
    seq: u64,
    queue: BinaryHeap<Queued>,
    nodes: Vec<Node>,
    store: Store,
    /// Per branch: (start LSN, highest LSN ever written on it).
    branches: Vec<(u64, u64)>,
    faults: Vec<Fault>,
    fs_next: u64,
    last_published_primary_lsn: Option<u64>,
    split: bool,
    gap: u64,
    conv_since: Option<u64>,
    heal_at: u64,
    end_at: u64,
    violations: Vec<Violation>,
    stats: Stats,
    promotions: Vec<Promotion>,
    fences: Vec<(u64, String)>,
    trace: Vec<String>,
    /// Killed-watchdog faults whose (planted, old) agent exited: restarted at their end.
    agent_exits: BTreeSet<usize>,
    /// Operations posted so far (their ids).
    ops_posted: u64,
}

impl Sim {
    // ---- the world ----------------------------------------------------------------------

    // ---- events -------------------------------------------------------------------------

    // ---- the store ----------------------------------------------------------------------

    // ---- the agent ----------------------------------------------------------------------
}

/// A short form of an action for the trace.
fn short(a: &Action) -> String {
    match a {
        Action::Start { upstream } => format!(
            "Start({})",
            upstream.as_ref().map_or("-", |u| u.member.as_str())
        ),
        Action::Follow { upstream } => format!(
            "Follow({})",
            upstream.as_ref().map_or("-", |u| u.member.as_str())
        ),
        Action::Rejoin { upstream } => format!("Rejoin({})", upstream.member),
        Action::Reinit { from } => format!("Reinit({})", from.member),
        Action::Clone { from } => format!("Clone({})", from.member),
        Action::Wait { reason } => format!("Wait({reason})"),
        Action::Stop { reason } => format!("Stop({reason})"),
        Action::ReleaseLease { reason } => format!("ReleaseLease({reason})"),
        Action::EnsureSlots { .. } => "EnsureSlots".into(),
        other => format!("{other:?}"),
    }
}
