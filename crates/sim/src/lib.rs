//! A deterministic simulator of a pgbaton cluster, to check that the failover decision
//! (`pgbaton_core::decide`) never yields two writable primaries.
//!
//! One run is a function of `(seed, SimConfig)`: a virtual clock (ms) and a priority queue of
//! events, a seeded splitmix64 RNG, no IO, no threads, no wall clock.
//!
//! # What is modelled
//! - **Agents** (one per node) mirroring `crates/agent`: every `loop_ms` read the cluster view
//!   from the store, observe the local PostgreSQL, call the real `decide`, run the actions in
//!   order (stopping at the first that waits, loses a compare-and-set or fails), then publish
//!   the member's state. Every store call and action takes a seeded time, and the other
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
//! # Agent behaviour this simulator assumes beyond today's `crates/agent`
//! Both found by the sweep, both on by default, each with a knob and a pinned test:
//! `failsafe_hold_after_start` (a restarted agent forgot its failsafe promise: two writers,
//! seed 3918) and `publish_stopped_position` (a stopped primary published no LSN/timeline,
//! which removed the `max_lag_bytes` bar: seed 912).
//!
//! # Known liveness gap (counted as `stuck_diverged`, not asserted)
//! A standby whose WAL went past the promoted member's switch point (a less advanced
//! standby won: the ranking compares a candidate's current LSN with the others' published
//! ones) follows the new primary but can never stream: `decide` never rewinds a standby.
//!
//! # Not modelled
//! Operations (switchover, promote, reinit... requested by the CLI), bootstrap (runs start
//! from a built cluster), clock skew between nodes and the store (one virtual clock),
//! synchronous replication, the slot's WAL retention, partial network partitions between two
//! given peers (a cut node is cut from all peers), message reordering within one connection,
//! a `NotAnswering` PostgreSQL other than while starting, disk loss.
//!
//! # Replay
//! `cargo run -p pgbaton-sim -- --seed N --trace` replays one seed and prints its trace;
//! `cargo run -p pgbaton-sim -- --sweep START COUNT` sweeps seeds.

use pgbaton_core::decide::{decide, role_of, Action, ClusterView, DataDir, LocalView, PgRun};
use pgbaton_core::failover::{fence_deadline_ms, Failsafe, Policy};
use pgbaton_core::model::{slot_name_for, Leader, Lsn, MemberState, MemberStatus, SlotInfo};
use pgbaton_core::render::Upstream;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

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
    /// last published (instead of none). The current `crates/agent` publishes none, which
    /// removes the `max_lag_bytes` and timeline bars from the failover decision: see the
    /// pinned test `stopped_primary_publishes_no_lsn` (seed 912).
    pub publish_stopped_position: bool,
    /// A (re)started agent holds itself to a failsafe promise for `ttl_ms`: a promise given
    /// before an agent crash lives in agent memory and would be forgotten (seeds 1639, 3918,
    /// 8574: two writers). The current `crates/agent` starts without it: see the pinned test
    /// `agent_restart_forgets_its_failsafe_promise`.
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

#[derive(Clone, Debug, Default)]
struct Agent {
    epoch: u64,
    held: bool,
    expect_running: bool,
    crashed: bool,
    crashed_since: Option<u64>,
    rejoin_failed: Option<String>,
    not_streaming_since: Option<u64>,
    failsafe: Option<Failsafe>,
    last_view: Option<ClusterView>,
    actions: Vec<Action>,
    idx: usize,
    loop_started: u64,
    parked: Option<Step>,
    fs: Option<FsRound>,
}

#[derive(Clone, Debug)]
struct Node {
    name: String,
    pg: Pg,
    agent: Agent,
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
    Lease(LeaseOp),
    Put(Box<MemberState>),
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
    LeaseReply {
        op: LeaseOp,
        t0: u64,
        res: Option<bool>,
    },
    /// An action finished: Ok(continue?) or Err(why).
    Done(Result<bool, String>),
    /// A long PostgreSQL action finished: did PostgreSQL get where it was asked?
    PgDone(Expect),
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
}

impl Sim {
    fn new(seed: u64, cfg: &SimConfig) -> Sim {
        let mut rng = Rng::new(seed);
        let t = START_MS;
        let n = cfg.nodes;
        let names: Vec<String> = (0..n).map(|i| format!("n{}", i + 1)).collect();
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let primary = i == 0;
            let lag = match &cfg.lag_bytes {
                Some(l) => l[i],
                None => rng.range(0, 4096),
            };
            let slots = if primary {
                names[1..].iter().map(|m| slot_name_for(m)).collect()
            } else {
                BTreeSet::new()
            };
            nodes.push(Node {
                name: name.clone(),
                pg: Pg {
                    run: if primary { Run::Writable } else { Run::Standby },
                    epoch: 0,
                    standby_signal: !primary,
                    upstream: if primary { None } else { Some(0) },
                    hist: vec![],
                    branch: 0,
                    lsn: INITIAL_LSN - if primary { 0 } else { lag },
                    slots,
                },
                agent: Agent {
                    held: primary,
                    expect_running: true,
                    ..Default::default()
                },
                wd: primary.then(|| fence_deadline_ms(t, cfg.ttl_ms, cfg.fence_margin_ms)),
                node_down: 0,
                agent_down: 0,
                frozen: 0,
                store_cut: 0,
                peer_cut: 0,
                lag,
                pg_frozen: 0,
                frozen_pg_epoch: 0,
                fenced_epoch: None,
                zombie: false,
            });
        }
        let heal_at = t + cfg.fault_ms;
        let mut sim = Sim {
            seed,
            cfg: cfg.clone(),
            rng,
            now: t,
            last_advance: t,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            store: Store {
                lease: Some(Leader {
                    member: names[0].clone(),
                    expires_ms: t + cfg.ttl_ms,
                }),
                ..Default::default()
            },
            branches: vec![(0, INITIAL_LSN)],
            faults: vec![],
            fs_next: 0,
            last_published_primary_lsn: None,
            split: false,
            gap: 0,
            conv_since: None,
            heal_at,
            end_at: heal_at + cfg.settle_ms,
            violations: vec![],
            stats: Stats::default(),
            promotions: vec![],
            fences: vec![],
            trace: vec![],
            agent_exits: BTreeSet::new(),
        };
        for i in 0..n {
            let pgrun = sim.observe(i);
            let ms = sim.member_state(i, &pgrun);
            if i == 0 {
                sim.last_published_primary_lsn = ms.lsn.map(|l| l.0);
            }
            sim.store.members.insert(ms.name.clone(), ms);
            let at = t + sim.rng.range(0, cfg.loop_ms - 1);
            sim.push_at(
                at,
                Ev::Step {
                    node: i,
                    epoch: 0,
                    step: Step::LoopStart,
                },
            );
        }
        sim.push_at(t + cfg.fence_margin_ms, Ev::Tick);
        for f in cfg.script.clone() {
            sim.add_fault(f);
        }
        if cfg.random_faults {
            let first = t + sim.rng.range(2_000, 8_000);
            sim.push_at(first, Ev::NextFault);
        }
        sim
    }

    fn rel(&self, t: u64) -> u64 {
        t - START_MS
    }

    fn log(&mut self, msg: impl FnOnce() -> String) {
        if self.cfg.trace {
            let line = format!("{:>7} {}", self.rel(self.now), msg());
            self.trace.push(line);
        }
    }

    fn violate(&mut self, kind: &'static str, detail: String) {
        let t = self.rel(self.now);
        if self.cfg.trace {
            self.trace
                .push(format!("{t:>7} !!! VIOLATION {kind}: {detail}"));
        }
        self.violations.push(Violation {
            t_ms: t,
            kind,
            detail,
        });
    }

    fn push_at(&mut self, t: u64, ev: Ev) {
        let t = t.max(self.now);
        self.seq += 1;
        self.queue.push(Queued {
            t,
            seq: self.seq,
            ev,
        });
    }

    fn step_at(&mut self, t: u64, node: usize, step: Step) {
        let epoch = self.nodes[node].agent.epoch;
        self.push_at(t, Ev::Step { node, epoch, step });
    }

    fn lat(&mut self) -> u64 {
        self.rng.range(1, 30)
    }

    fn add_fault(&mut self, f: Fault) {
        let i = self.faults.len();
        let at = START_MS + f.at_ms;
        let end = at + f.dur_ms;
        self.faults.push(f);
        self.push_at(at, Ev::FaultStart(i));
        self.push_at(end, Ev::FaultEnd(i));
    }

    fn store_reach(&self, n: usize) -> bool {
        self.store.down == 0 && self.nodes[n].store_cut == 0 && self.nodes[n].node_down == 0
    }

    fn peer_ok(&self, a: usize, b: usize) -> bool {
        let (x, y) = (&self.nodes[a], &self.nodes[b]);
        x.peer_cut == 0 && y.peer_cut == 0 && x.node_down == 0 && y.node_down == 0
    }

    fn idx(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    // ---- the world ----------------------------------------------------------------------

    fn main_loop(&mut self) {
        while let Some(q) = self.queue.pop() {
            if q.t > self.end_at {
                break;
            }
            self.now = q.t;
            self.stats.events += 1;
            self.advance();
            self.watchdogs();
            self.handle(q.ev);
            self.watchdogs();
            self.check();
        }
        self.now = self.end_at;
        self.advance();
        self.watchdogs();
        self.check();
    }

    /// Time passes: the client writes, standbys stream.
    fn advance(&mut self) {
        let dt = self.now - self.last_advance;
        self.last_advance = self.now;
        let mut any_writer = false;
        for n in &mut self.nodes {
            if n.acks() {
                any_writer = true;
                n.pg.lsn += dt * WRITE_BYTES_PER_MS;
                let b = &mut self.branches[n.pg.branch];
                b.1 = b.1.max(n.pg.lsn);
            }
        }
        if any_writer {
            self.gap = 0;
        } else {
            self.gap += dt;
            self.stats.unavailable_ms += dt;
            self.stats.max_unavailable_ms = self.stats.max_unavailable_ms.max(self.gap);
        }
        for i in 0..self.nodes.len() {
            if let Some(u) = self.streams_from(i) {
                let up = self.nodes[u].pg.clone();
                let lag = self.nodes[i].lag;
                let n = &mut self.nodes[i].pg;
                if n.branch != up.branch {
                    n.hist = up.hist.clone();
                    n.branch = up.branch;
                }
                let target = if up.run == Run::Writable {
                    up.lsn.saturating_sub(lag)
                } else {
                    up.lsn
                };
                n.lsn = n.lsn.max(target);
            }
        }
    }

    /// The upstream `i` streams from right now, if it does.
    fn streams_from(&self, i: usize) -> Option<usize> {
        let n = &self.nodes[i];
        if n.pg.run != Run::Standby || n.pg_is_frozen() {
            return None;
        }
        let u = n.pg.upstream?;
        if u == i || !self.peer_ok(i, u) || !self.nodes[u].pg.running() {
            return None;
        }
        divergence(&n.pg, &self.nodes[u].pg).ok().map(|_| u)
    }

    fn watchdogs(&mut self) {
        if !self.cfg.watchdog {
            return;
        }
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if let Some(d) = n.wd {
                if self.now >= d + self.cfg.watchdog_late_ms && n.pg.run == Run::Writable {
                    let epoch = n.pg.epoch;
                    if n.pg_is_frozen() && !self.cfg.fence_kills_frozen {
                        // The old fence: the postmaster dies, the frozen backends do not.
                        self.nodes[i].zombie = true;
                    } else {
                        self.pg_stop(i);
                    }
                    self.nodes[i].fenced_epoch = Some(epoch);
                    self.maybe_resume(i);
                    self.nodes[i].wd = None;
                    self.stats.fences += 1;
                    let name = self.nodes[i].name.clone();
                    self.fences.push((self.rel(self.now), name.clone()));
                    self.log(|| format!("{name}: WATCHDOG kills PostgreSQL (deadline passed)"));
                }
            }
        }
    }

    fn arm(&mut self, i: usize, deadline: u64) {
        self.nodes[i].wd = Some(deadline);
        self.push_at(deadline + self.cfg.watchdog_late_ms, Ev::Tick);
    }

    fn pg_stop(&mut self, i: usize) {
        let pg = &mut self.nodes[i].pg;
        if pg.run != Run::Stopped {
            pg.run = Run::Stopped;
            pg.epoch += 1;
        }
    }

    /// Who acknowledges writes right now (a frozen PostgreSQL acknowledges nothing).
    fn writers(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].acks())
            .collect()
    }

    /// Run an agent step parked while its agent or its PostgreSQL was frozen, once neither
    /// is (a probe of a frozen PostgreSQL returns when it thaws or dies).
    fn maybe_resume(&mut self, n: usize) {
        let node = &self.nodes[n];
        let pg_hangs = node.pg_is_frozen();
        if node.frozen == 0 && !pg_hangs {
            if let Some(step) = self.nodes[n].agent.parked.take() {
                let now = self.now;
                self.step_at(now, n, step);
            }
        }
    }

    fn check(&mut self) {
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if n.acks() && n.fenced_epoch == Some(n.pg.epoch) {
                let name = n.name.clone();
                self.nodes[i].fenced_epoch = None;
                self.violate(
                    "acknowledged-after-fence",
                    format!("{name}'s fenced PostgreSQL acknowledges writes again"),
                );
            }
        }
        let w = self.writers();
        if w.len() > 1 {
            if !self.split {
                self.split = true;
                let names: Vec<String> = w
                    .iter()
                    .map(|&i| {
                        format!(
                            "{} (timeline {})",
                            self.nodes[i].name,
                            self.nodes[i].pg.timeline()
                        )
                    })
                    .collect();
                self.violate(
                    "two-writers",
                    format!("writable at once: {}", names.join(", ")),
                );
            }
        } else {
            self.split = false;
        }
        if self.now >= self.heal_at {
            match self.converged() {
                Ok(_) => {
                    if self.conv_since.is_none() {
                        self.conv_since = Some(self.now);
                        self.log(|| "cluster converged".into());
                    }
                }
                Err(_) => self.conv_since = None,
            }
        }
    }

    /// Ok((nodes waiting after a failed rejoin, diverged standbys)) or why not converged.
    fn converged(&self) -> Result<(u32, u32), String> {
        let w = self.writers();
        let [p] = w[..] else {
            return Err(format!("{} writable primaries", w.len()));
        };
        let pn = &self.nodes[p];
        match &self.store.lease {
            Some(l) if l.member == pn.name && l.expires_ms > self.now => {}
            other => return Err(format!("lease {other:?} is not {}'s", pn.name)),
        }
        let mut waiting = 0;
        let mut diverged = 0;
        for (i, n) in self.nodes.iter().enumerate() {
            if i == p || n.node_down > 0 {
                continue;
            }
            // A former primary, or a standby that had to be rewound, whose pg_rewind failed
            // waits for the operator's reinit (unless re-cloning is allowed).
            if n.agent.rejoin_failed.is_some() && !self.cfg.reclone_on_rewind_failure {
                waiting += 1;
                continue;
            }
            if n.pg.run == Run::Standby
                && n.pg.upstream == Some(p)
                && divergence(&n.pg, &pn.pg).is_err()
            {
                diverged += 1;
                continue;
            }
            if self.streams_from(i) != Some(p) || n.pg.branch != pn.pg.branch {
                return Err(format!(
                    "{} does not stream from {} on its timeline ({:?}, upstream {:?}, timeline {} vs {})",
                    n.name,
                    pn.name,
                    n.pg.run,
                    n.pg.upstream.map(|u| self.nodes[u].name.clone()),
                    n.pg.timeline(),
                    pn.pg.timeline()
                ));
            }
        }
        Ok((waiting, diverged))
    }

    fn finish(mut self) -> Outcome {
        let heal = self.heal_at;
        match self.converged() {
            Ok((waiting, diverged)) => {
                self.stats.waiting_rejoin_failed = waiting;
                self.stats.stuck_diverged = diverged;
                self.stats.converged_after_ms = self.conv_since.map(|t| t.saturating_sub(heal));
            }
            Err(why) => {
                let detail = format!(
                    "not converged {} ms after the faults healed: {why}",
                    self.cfg.settle_ms
                );
                self.violate("no-convergence", detail);
            }
        }
        // Writes lost: WAL written on branches beyond what survives in the final history.
        let w = self.writers();
        let survivor = if w.len() == 1 {
            Some(w[0])
        } else {
            self.store.lease.as_ref().and_then(|l| self.idx(&l.member))
        };
        if let Some(s) = survivor {
            let anc = self.nodes[s].pg.ancestry(self.nodes[s].pg.lsn);
            for (b, &(start, max)) in self.branches.iter().enumerate() {
                let kept = anc
                    .iter()
                    .find(|(ab, _)| *ab == b)
                    .map_or(start, |&(_, end)| end.max(start));
                self.stats.lost_bytes += max.saturating_sub(kept);
            }
        }
        self.stats.lost_writes = self.stats.lost_bytes / 1024;
        self.stats.promotions = self.promotions.len() as u32;
        self.stats.faults = self.faults.len() as u32;
        let final_primary = (w.len() == 1).then(|| self.nodes[w[0]].name.clone());
        Outcome {
            seed: self.seed,
            violations: self.violations,
            stats: self.stats,
            promotions: self.promotions,
            fences: self.fences,
            faults: self.faults,
            final_primary,
            trace: self.trace,
        }
    }

    // ---- events -------------------------------------------------------------------------

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Tick => {}
            Ev::Step { node, epoch, step } => {
                if epoch != self.nodes[node].agent.epoch || !self.nodes[node].agent_alive() {
                    return;
                }
                if self.nodes[node].frozen > 0 {
                    self.nodes[node].agent.parked = Some(step);
                    return;
                }
                self.agent_step(node, step);
            }
            Ev::StoreApply {
                node,
                epoch,
                op,
                t0,
            } => self.store_apply(node, epoch, op, t0),
            Ev::FsAsk { asker, peer, round } => self.fs_ask(asker, peer, round),
            Ev::FsAnswer {
                asker,
                peer,
                round,
                yes,
            } => {
                if !self.peer_ok(asker, peer) {
                    return;
                }
                if let Some(fs) = self.nodes[asker]
                    .agent
                    .fs
                    .as_mut()
                    .filter(|f| f.id == round)
                {
                    if yes {
                        fs.yes += 1;
                    }
                }
            }
            Ev::PgTransition { node, pg_epoch, to } => self.pg_transition(node, pg_epoch, to),
            Ev::NextFault => self.next_fault(),
            Ev::FaultStart(i) => self.fault_start(i),
            Ev::FaultEnd(i) => self.fault_end(i),
        }
    }

    fn next_fault(&mut self) {
        let start = self.now - START_MS;
        if start >= self.cfg.fault_ms {
            return;
        }
        let kinds = [
            (FaultKind::NodeCrash, 3, 1_000, 40_000),
            (FaultKind::AgentCrash, 2, 300, 8_000),
            (FaultKind::PgCrash, 1, 0, 0),
            (FaultKind::StoreCut, 3, 500, 10_000),
            (FaultKind::PeerCut, 2, 500, 20_000),
            (FaultKind::Freeze, 3, 300, 8_000),
            (FaultKind::StoreOutage, 2, 500, 15_000),
            (FaultKind::Pause, 1, 2_000, 10_000),
            (FaultKind::PgFreeze, 2, 5_000, 12_000),
            (FaultKind::WatchdogKill, 2, 3_000, 15_000),
        ];
        let kinds = &kinds[..if self.cfg.pg_faults { 10 } else { 8 }];
        let total: u64 = kinds.iter().map(|k| k.1).sum();
        let mut pick = self.rng.range(0, total - 1);
        let mut chosen = kinds[0];
        for &k in kinds {
            if pick < k.1 {
                chosen = k;
                break;
            }
            pick -= k.1;
        }
        let (kind, _, lo, hi) = chosen;
        // Half the faults hit the current primary, where they hurt.
        let w = self.writers();
        let node = if !w.is_empty() && self.rng.per_mille(500) {
            w[0]
        } else {
            self.rng.range(0, self.nodes.len() as u64 - 1) as usize
        };
        let dur = self
            .rng
            .range(lo, hi)
            .min(self.cfg.fault_ms.saturating_sub(start));
        self.add_fault(Fault {
            at_ms: start,
            dur_ms: dur,
            node,
            kind,
        });
        let gap = self.rng.range(1_000, 15_000);
        self.push_at(self.now + gap, Ev::NextFault);
    }

    fn fault_start(&mut self, i: usize) {
        let f = self.faults[i].clone();
        let n = f.node;
        let name = self.nodes[n].name.clone();
        self.log(|| format!("FAULT {:?} on {name} for {} ms", f.kind, f.dur_ms));
        match f.kind {
            FaultKind::NodeCrash => {
                self.nodes[n].node_down += 1;
                if self.nodes[n].node_down == 1 {
                    self.pg_stop(n);
                    let node = &mut self.nodes[n];
                    node.wd = None;
                    node.agent.epoch += 1;
                    node.agent.parked = None;
                }
            }
            FaultKind::AgentCrash => {
                let was = self.nodes[n].agent_alive();
                self.nodes[n].agent_down += 1;
                if was {
                    self.nodes[n].agent.epoch += 1;
                    self.nodes[n].agent.parked = None;
                }
            }
            FaultKind::PgCrash => self.pg_stop(n),
            FaultKind::StoreCut => self.nodes[n].store_cut += 1,
            FaultKind::PeerCut => self.nodes[n].peer_cut += 1,
            FaultKind::Freeze => self.nodes[n].frozen += 1,
            FaultKind::StoreOutage => self.store.down += 1,
            FaultKind::Pause => self.store.paused += 1,
            FaultKind::PgFreeze => {
                let node = &mut self.nodes[n];
                if node.pg_frozen == 0 {
                    node.frozen_pg_epoch = node.pg.epoch;
                }
                node.pg_frozen += 1;
            }
            FaultKind::WatchdogKill => self.watchdog_killed(i),
        }
    }

    /// The watchdog of the fault's node dies.
    fn watchdog_killed(&mut self, fault: usize) {
        let n = self.faults[fault].node;
        let name = self.nodes[n].name.clone();
        if !self.nodes[n].agent_alive() || self.nodes[n].frozen > 0 {
            self.log(|| format!("{name}: (watchdog kill skipped: its agent is down or frozen)"));
            return;
        }
        if self.cfg.watchdog_respawn {
            if self.nodes[n].wd.take().is_some() {
                self.pg_stop(n);
                self.maybe_resume(n);
                self.log(|| {
                    format!("{name}: watchdog died while armed: PostgreSQL stopped, new watchdog")
                });
            }
        } else {
            // The old agent: arming fails, it exits; PostgreSQL runs on with no fence.
            self.agent_exits.insert(fault);
            let node = &mut self.nodes[n];
            node.wd = None;
            node.agent_down += 1;
            node.agent.epoch += 1;
            node.agent.parked = None;
            self.log(|| {
                format!("{name}: watchdog died: the agent exits, PostgreSQL runs unfenced")
            });
        }
    }

    fn fault_end(&mut self, i: usize) {
        let f = self.faults[i].clone();
        let n = f.node;
        let name = self.nodes[n].name.clone();
        if f.kind != FaultKind::PgCrash {
            self.log(|| format!("HEAL {:?} on {name}", f.kind));
        }
        match f.kind {
            FaultKind::NodeCrash => {
                self.nodes[n].node_down -= 1;
                if self.nodes[n].agent_alive() {
                    self.agent_boot(n);
                }
            }
            FaultKind::AgentCrash => {
                self.nodes[n].agent_down -= 1;
                if self.nodes[n].agent_alive() {
                    self.agent_boot(n);
                }
            }
            FaultKind::PgCrash => {}
            FaultKind::StoreCut => self.nodes[n].store_cut -= 1,
            FaultKind::PeerCut => self.nodes[n].peer_cut -= 1,
            FaultKind::Freeze => {
                self.nodes[n].frozen -= 1;
                self.maybe_resume(n);
            }
            FaultKind::StoreOutage => self.store.down -= 1,
            FaultKind::Pause => self.store.paused -= 1,
            FaultKind::PgFreeze => {
                self.nodes[n].pg_frozen -= 1;
                if self.nodes[n].pg_frozen == 0 && self.nodes[n].zombie {
                    // Thawed backends of a killed postmaster finish their commits, notice
                    // their postmaster is gone, and exit.
                    let pg_epoch = self.nodes[n].pg.epoch;
                    self.push_at(
                        self.now + 50,
                        Ev::PgTransition {
                            node: n,
                            pg_epoch,
                            to: Run::Stopped,
                        },
                    );
                }
                self.maybe_resume(n);
            }
            FaultKind::WatchdogKill => {
                if self.agent_exits.remove(&i) {
                    self.nodes[n].agent_down -= 1;
                    if self.nodes[n].agent_alive() {
                        self.agent_boot(n);
                    }
                }
            }
        }
    }

    /// A fresh agent process: it remembers nothing.
    fn agent_boot(&mut self, n: usize) {
        let epoch = self.nodes[n].agent.epoch + 1;
        let failsafe = self.cfg.failsafe_hold_after_start.then(|| Failsafe {
            leader: "(a promise this agent may have given before it restarted)".into(),
            until_ms: self.now + self.cfg.ttl_ms,
        });
        self.nodes[n].agent = Agent {
            epoch,
            failsafe,
            ..Default::default()
        };
        let at = self.now + self.rng.range(50, 300);
        self.step_at(at, n, Step::LoopStart);
    }

    fn pg_transition(&mut self, n: usize, pg_epoch: u64, to: Run) {
        if self.nodes[n].pg.epoch != pg_epoch || self.nodes[n].node_down > 0 {
            return;
        }
        let from = self.nodes[n].pg.run;
        if to == Run::Stopped && self.nodes[n].zombie {
            self.nodes[n].zombie = false;
            self.pg_stop(n);
        } else if to == Run::Writable && from == Run::Promoting {
            self.promoted(n);
        } else if from == Run::Starting {
            self.nodes[n].pg.run = to;
        }
        let (name, run) = (self.nodes[n].name.clone(), self.nodes[n].pg.run);
        self.log(|| format!("{name}: PostgreSQL {from:?} -> {run:?}"));
    }

    fn promoted(&mut self, n: usize) {
        let b = self.branches.len();
        let pg = &mut self.nodes[n].pg;
        let lsn = pg.lsn;
        pg.hist.push((pg.branch, lsn));
        pg.branch = b;
        pg.run = Run::Writable;
        pg.standby_signal = false;
        pg.upstream = None;
        let timeline = pg.timeline();
        self.branches.push((lsn, lsn));
        let others = (0..self.nodes.len())
            .filter(|&i| i != n && self.nodes[i].pg.run == Run::Standby)
            .map(|i| (self.nodes[i].name.clone(), self.nodes[i].pg.lsn))
            .collect();
        let last = self.last_published_primary_lsn;
        let name = self.nodes[n].name.clone();
        self.log(|| format!("{name}: PROMOTED at {lsn} on timeline {timeline}"));
        if let Some(last) = last {
            if last > lsn + self.cfg.max_lag_bytes {
                self.violate(
                    "promoted-too-far-behind",
                    format!(
                        "{name} promoted at {lsn}, {} bytes behind the last published primary LSN {last} (max_lag_bytes {})",
                        last - lsn,
                        self.cfg.max_lag_bytes
                    ),
                );
            }
        }
        self.promotions.push(Promotion {
            t_ms: self.rel(self.now),
            node: name,
            lsn,
            timeline,
            others,
            last_published_primary_lsn: last,
        });
    }

    // ---- the store ----------------------------------------------------------------------

    fn store_send(&mut self, n: usize, op: StoreOp) {
        let epoch = self.nodes[n].agent.epoch;
        if self.store_reach(n) {
            let (at, t0) = (self.now + self.lat(), self.now);
            self.push_at(
                at,
                Ev::StoreApply {
                    node: n,
                    epoch,
                    op,
                    t0,
                },
            );
        } else {
            let at = self.now + self.rng.range(200, 1_000);
            let step = Self::store_error(op, self.now);
            self.step_at(at, n, step);
        }
    }

    fn store_error(op: StoreOp, t0: u64) -> Step {
        match op {
            StoreOp::Read => Step::ViewReply(None),
            StoreOp::Lease(op) => Step::LeaseReply { op, t0, res: None },
            StoreOp::Put(_) => Step::Published,
        }
    }

    fn store_apply(&mut self, n: usize, epoch: u64, op: StoreOp, t0: u64) {
        // The request is on the wire: the store handles it even if the sender died since.
        let reach = self.store.down == 0 && self.nodes[n].store_cut == 0;
        if !reach {
            let at = self.now + self.rng.range(100, 800);
            let step = Self::store_error(op, t0);
            self.push_at(
                at,
                Ev::Step {
                    node: n,
                    epoch,
                    step,
                },
            );
            return;
        }
        let name = self.nodes[n].name.clone();
        let now = self.now;
        let ttl = self.cfg.ttl_ms;
        let step = match op {
            StoreOp::Read => Step::ViewReply(Some(Box::new(ClusterView {
                initialize: Some(SYSTEM_ID.into()),
                leader: self.store.lease.clone().filter(|l| l.expires_ms > now),
                members: self.store.members.values().cloned().collect(),
                op: None,
                paused: self.store.paused > 0,
            }))),
            StoreOp::Lease(op) => {
                let live = self
                    .store
                    .lease
                    .as_ref()
                    .filter(|l| l.expires_ms > now)
                    .map(|l| l.member.clone());
                let res = match op {
                    LeaseOp::Acquire => live.is_none() || live.as_deref() == Some(&name),
                    LeaseOp::Renew => live.as_deref() == Some(&name),
                    LeaseOp::Release => live.as_deref() == Some(&name),
                };
                if res {
                    if op == LeaseOp::Release {
                        self.store.lease = None;
                    } else {
                        self.store.lease = Some(Leader {
                            member: name.clone(),
                            expires_ms: now + ttl,
                        });
                        // Invariant 2: fence before expiry.
                        for (i, m) in self.nodes.iter().enumerate() {
                            if i != n && m.pg.run == Run::Writable {
                                let d = format!(
                                    "the store granted the lease to {name} ({op:?}) while {} runs writable",
                                    m.name
                                );
                                self.violations.push(Violation {
                                    t_ms: now - START_MS,
                                    kind: "lease-granted-beside-writer",
                                    detail: d.clone(),
                                });
                                if self.cfg.trace {
                                    self.trace.push(format!(
                                        "{:>7} !!! VIOLATION lease-granted-beside-writer: {d}",
                                        now - START_MS
                                    ));
                                }
                                break;
                            }
                        }
                    }
                }
                self.log(|| format!("store: {name} {op:?} -> {res}"));
                Step::LeaseReply {
                    op,
                    t0,
                    res: Some(res),
                }
            }
            StoreOp::Put(ms) => {
                if ms.state == MemberStatus::Running {
                    self.last_published_primary_lsn = ms.lsn.map(|l| l.0);
                }
                self.store.members.insert(ms.name.clone(), *ms);
                Step::Published
            }
        };
        let at = self.now + self.lat();
        self.push_at(
            at,
            Ev::Step {
                node: n,
                epoch,
                step,
            },
        );
    }

    // ---- the agent ----------------------------------------------------------------------

    fn agent_step(&mut self, n: usize, step: Step) {
        // A reply that cannot come back over a cut link is an error (the request may have
        // been applied).
        let step = match step {
            Step::ViewReply(Some(_)) if !self.store_reach(n) => Step::ViewReply(None),
            Step::LeaseReply {
                op,
                t0,
                res: Some(_),
            } if !self.store_reach(n) => Step::LeaseReply { op, t0, res: None },
            s => s,
        };
        match step {
            Step::LoopStart => {
                let a = &mut self.nodes[n].agent;
                a.loop_started = self.now;
                a.actions.clear();
                a.idx = 0;
                self.store_send(n, StoreOp::Read);
            }
            Step::ViewReply(None) => {
                let pg_writable = self.nodes[n].pg.run == Run::Writable;
                let a = &self.nodes[n].agent;
                if self.cfg.failsafe && a.held && pg_writable && a.last_view.is_some() {
                    self.failsafe_round(n);
                } else {
                    let name = self.nodes[n].name.clone();
                    self.log(|| format!("{name}: cannot read the store"));
                    self.loop_end(n);
                }
            }
            Step::ViewReply(Some(view)) if self.nodes[n].pg_is_frozen() => {
                // The probe of a frozen PostgreSQL hangs (no timeout in the agent): the
                // loop waits until it thaws or is killed.
                self.nodes[n].agent.parked = Some(Step::ViewReply(Some(view)));
            }
            Step::ViewReply(Some(view)) => {
                let pgrun = self.observe(n);
                // As the agent does: since when a running standby has not streamed (kept
                // while PostgreSQL is stopped).
                let streams = self.streams_from(n).is_some();
                let now = self.now;
                let a = &mut self.nodes[n].agent;
                match &pgrun {
                    PgRun::Running {
                        in_recovery: true, ..
                    } if !streams => {
                        a.not_streaming_since.get_or_insert(now);
                    }
                    PgRun::Running { .. } => a.not_streaming_since = None,
                    _ => {}
                }
                let local = self.local_view(n, pgrun);
                let actions = decide(&view, &local, self.now);
                // (Debug builds assert this inside decide; release sweeps count it.)
                if let Err(why) = pgbaton_core::decide::check_plan(&actions) {
                    let name = self.nodes[n].name.clone();
                    self.violate("bad-plan", format!("{name}: {why}: {actions:?}"));
                }
                if self.cfg.trace && !actions.is_empty() {
                    let name = self.nodes[n].name.clone();
                    let lease = view
                        .leader
                        .as_ref()
                        .map(|l| format!("{}+{}", l.member, l.expires_ms.saturating_sub(self.now)));
                    let acts = actions.iter().map(short).collect::<Vec<_>>().join(", ");
                    self.log(|| format!("{name}: lease {lease:?} pg {:?} -> [{acts}]", local.pg));
                }
                let a = &mut self.nodes[n].agent;
                a.last_view = Some(*view);
                a.actions = actions;
                a.idx = 0;
                self.exec(n);
            }
            Step::LeaseReply { op, t0, res } => {
                let name = self.nodes[n].name.clone();
                match res {
                    None => {
                        self.log(|| format!("{name}: {op:?} failed (store unreachable)"));
                        self.publish(n);
                    }
                    Some(true) => {
                        if op == LeaseOp::Release {
                            self.nodes[n].agent.held = false;
                            self.nodes[n].wd = None;
                        } else {
                            self.nodes[n].agent.held = true;
                            let d =
                                fence_deadline_ms(t0, self.cfg.ttl_ms, self.cfg.fence_margin_ms);
                            self.arm(n, d);
                        }
                        self.next_action(n);
                    }
                    Some(false) => {
                        self.nodes[n].agent.held = false;
                        if op == LeaseOp::Release {
                            self.nodes[n].wd = None;
                            self.next_action(n);
                        } else {
                            self.log(|| format!("{name}: {op:?} lost"));
                            self.publish(n);
                        }
                    }
                }
            }
            Step::Done(Ok(true)) => self.next_action(n),
            Step::Done(Ok(false)) => self.publish(n),
            Step::Done(Err(e)) => {
                let name = self.nodes[n].name.clone();
                self.log(|| format!("{name}: action failed: {e}"));
                self.publish(n);
            }
            Step::PgDone(expect) => {
                let run = self.nodes[n].pg.run;
                let ok = match expect {
                    Expect::Started => matches!(run, Run::Standby | Run::Writable),
                    Expect::Promoted => run == Run::Writable,
                };
                if ok {
                    if expect == Expect::Started {
                        let a = &mut self.nodes[n].agent;
                        a.expect_running = true;
                        a.crashed = false;
                    }
                    self.next_action(n);
                } else {
                    let name = self.nodes[n].name.clone();
                    self.log(|| format!("{name}: {expect:?} failed: PostgreSQL is {run:?}"));
                    self.publish(n);
                }
            }
            Step::FsCollect(round) => {
                let fs = self.nodes[n].agent.fs.take();
                let name = self.nodes[n].name.clone();
                if let Some(fs) = fs.filter(|f| f.id == round) {
                    let all = fs.yes == fs.asked;
                    if all && self.nodes[n].pg.run == Run::Writable {
                        self.stats.failsafe_confirmed += 1;
                        let d = fence_deadline_ms(fs.t0, self.cfg.ttl_ms, self.cfg.fence_margin_ms);
                        self.arm(n, d);
                        self.log(|| format!("{name}: failsafe: all {} confirmed", fs.asked));
                    } else {
                        self.log(|| format!("{name}: failsafe: {}/{} confirmed", fs.yes, fs.asked));
                    }
                }
                self.loop_end(n);
            }
            Step::Published => self.loop_end(n),
        }
    }

    fn loop_end(&mut self, n: usize) {
        let at = (self.nodes[n].agent.loop_started + self.cfg.loop_ms).max(self.now);
        self.step_at(at, n, Step::LoopStart);
    }

    fn failsafe_round(&mut self, n: usize) {
        self.stats.failsafe_rounds += 1;
        self.fs_next += 1;
        let round = self.fs_next;
        let peers: Vec<usize> = self.nodes[n]
            .agent
            .last_view
            .as_ref()
            .map(|v| {
                v.members
                    .iter()
                    .filter(|m| m.name != self.nodes[n].name)
                    .filter_map(|m| self.idx(&m.name))
                    .collect()
            })
            .unwrap_or_default();
        self.nodes[n].agent.fs = Some(FsRound {
            id: round,
            t0: self.now,
            asked: peers.len(),
            yes: 0,
        });
        for p in peers {
            if self.peer_ok(n, p) {
                let at = self.now + self.lat();
                self.push_at(
                    at,
                    Ev::FsAsk {
                        asker: n,
                        peer: p,
                        round,
                    },
                );
            }
        }
        let at = self.now + 100;
        self.step_at(at, n, Step::FsCollect(round));
    }

    fn fs_ask(&mut self, asker: usize, peer: usize, round: u64) {
        if !self.peer_ok(asker, peer) {
            return;
        }
        let p = &self.nodes[peer];
        let acquiring = p.agent.actions[p.agent.idx.min(p.agent.actions.len())..]
            .contains(&Action::AcquireLease);
        let yes = p.agent_alive() && p.frozen == 0 && !p.agent.held && !acquiring;
        if yes {
            let until = self.now + self.cfg.ttl_ms;
            let leader = self.nodes[asker].name.clone();
            self.nodes[peer].agent.failsafe = Some(Failsafe {
                leader,
                until_ms: until,
            });
        }
        let (a, b) = (
            self.nodes[asker].name.clone(),
            self.nodes[peer].name.clone(),
        );
        self.log(|| {
            format!(
                "{b}: failsafe question from {a}: {}",
                if yes { "yes" } else { "no" }
            )
        });
        let at = self.now + self.lat();
        self.push_at(
            at,
            Ev::FsAnswer {
                asker,
                peer,
                round,
                yes,
            },
        );
    }

    /// What the agent sees of its PostgreSQL (and what it concludes about crashes).
    fn observe(&mut self, n: usize) -> PgRun {
        let now = self.now;
        let node = &mut self.nodes[n];
        let a = &mut node.agent;
        match node.pg.run {
            Run::Stopped => {
                if a.expect_running {
                    a.expect_running = false;
                    a.crashed = true;
                    if !node.pg.standby_signal && a.crashed_since.is_none() {
                        a.crashed_since = Some(now);
                    }
                }
                PgRun::Stopped
            }
            Run::Starting => PgRun::NotAnswering,
            Run::Standby | Run::Promoting => {
                a.expect_running = true;
                PgRun::Running {
                    in_recovery: true,
                    upstream: node.pg.upstream.map(|u| format!("n{}", u + 1)),
                }
            }
            Run::Writable => {
                a.expect_running = true;
                a.crashed_since = None;
                PgRun::Running {
                    in_recovery: false,
                    upstream: None,
                }
            }
        }
    }

    fn policy(&self) -> Policy {
        Policy {
            ttl_ms: self.cfg.ttl_ms,
            loop_interval_ms: self.cfg.loop_ms,
            max_lag_bytes: self.cfg.max_lag_bytes,
            nofailover: false,
            failover_priority: 1,
            primary_restart_timeout_ms: self.cfg.primary_restart_timeout_ms,
            reclone_on_rewind_failure: self.cfg.reclone_on_rewind_failure,
        }
    }

    fn slot_infos(pg: &Pg) -> Vec<SlotInfo> {
        pg.slots
            .iter()
            .map(|s| SlotInfo {
                name: s.clone(),
                active: false,
                restart_lsn: None,
                retained_bytes: None,
            })
            .collect()
    }

    fn local_view(&self, n: usize, pgrun: PgRun) -> LocalView {
        let node = &self.nodes[n];
        let running = matches!(pgrun, PgRun::Running { .. });
        let standby = matches!(
            pgrun,
            PgRun::Running {
                in_recovery: true,
                ..
            }
        );
        let mut l = LocalView::new(
            &node.name,
            DataDir::Initialized {
                system_id: SYSTEM_ID.into(),
                standby: node.pg.standby_signal,
            },
            pgrun,
        );
        if running {
            l.lsn = Some(Lsn(node.pg.lsn));
            l.slots = Self::slot_infos(&node.pg);
        }
        if standby {
            l.receive_lsn = Some(Lsn(node.pg.lsn));
        }
        l.timeline = Some(node.pg.timeline());
        l.policy = self.policy();
        l.failsafe = node.agent.failsafe.clone();
        l.crashed_since_ms = node.agent.crashed_since;
        l.rejoin_failed = node.agent.rejoin_failed.clone();
        l.not_streaming_since_ms = node.agent.not_streaming_since;
        l
    }

    fn member_state(&self, n: usize, pgrun: &PgRun) -> MemberState {
        let node = &self.nodes[n];
        let local = LocalView::new(
            &node.name,
            DataDir::Initialized {
                system_id: SYSTEM_ID.into(),
                standby: node.pg.standby_signal,
            },
            pgrun.clone(),
        );
        let role = role_of(&local);
        let running = matches!(pgrun, PgRun::Running { .. });
        let state = match pgrun {
            PgRun::Running {
                in_recovery: false, ..
            } => MemberStatus::Running,
            PgRun::Running { .. } => {
                if self.streams_from(n).is_some() {
                    MemberStatus::Streaming
                } else {
                    MemberStatus::Replaying
                }
            }
            PgRun::NotAnswering => MemberStatus::Starting,
            PgRun::Stopped if node.agent.crashed => MemberStatus::Crashed,
            PgRun::Stopped => MemberStatus::Stopped,
        };
        let standby = matches!(
            pgrun,
            PgRun::Running {
                in_recovery: true,
                ..
            }
        );
        // The position it published last, kept while PostgreSQL is stopped.
        let (last_tl, last_lsn) = match (self.cfg.publish_stopped_position, running) {
            (true, false) => self
                .store
                .members
                .get(&node.name)
                .map_or((None, None), |m| (m.timeline, m.lsn)),
            _ => (None, None),
        };
        MemberState {
            system_id: Some(SYSTEM_ID.into()),
            timeline: running.then(|| node.pg.timeline()).or(last_tl),
            lsn: running.then_some(Lsn(node.pg.lsn)).or(last_lsn),
            receive_lsn: standby.then_some(Lsn(node.pg.lsn)),
            upstream: match pgrun {
                PgRun::Running { upstream, .. } => upstream.clone(),
                _ => None,
            },
            slots: if running {
                Self::slot_infos(&node.pg)
            } else {
                vec![]
            },
            // As the agent does: a primary down past the restart timeout handed over.
            handed_over: node.agent.crashed_since.is_some_and(|since| {
                self.now.saturating_sub(since) >= self.cfg.primary_restart_timeout_ms
            }),
            ..MemberState::sample(&node.name, role, state, self.now)
        }
    }

    fn next_action(&mut self, n: usize) {
        self.nodes[n].agent.idx += 1;
        self.exec(n);
    }

    fn publish(&mut self, n: usize) {
        let pgrun = self.observe(n);
        let ms = self.member_state(n, &pgrun);
        self.store_send(n, StoreOp::Put(Box::new(ms)));
    }

    fn done_in(&mut self, n: usize, dur: u64, r: Result<bool, String>) {
        let at = self.now + dur;
        self.step_at(at, n, Step::Done(r));
    }

    /// PostgreSQL gets to `to` after `dur`; the agent's action returns then.
    fn pg_after(&mut self, n: usize, dur: u64, to: Run, expect: Expect) {
        let at = self.now + dur;
        let pg_epoch = self.nodes[n].pg.epoch;
        self.push_at(
            at,
            Ev::PgTransition {
                node: n,
                pg_epoch,
                to,
            },
        );
        self.step_at(at, n, Step::PgDone(expect));
    }

    fn upstream_of(&self, up: &Upstream) -> Option<usize> {
        self.idx(&up.member)
    }

    /// Run the current action.
    fn exec(&mut self, n: usize) {
        let a = &self.nodes[n].agent;
        let Some(action) = a.actions.get(a.idx).cloned() else {
            self.publish(n);
            return;
        };
        let name = self.nodes[n].name.clone();
        let lat = self.lat();
        // As the agent does: a (re)start begins a new wait for streaming.
        if matches!(
            action,
            Action::Start { .. }
                | Action::Rejoin { .. }
                | Action::Reinit { .. }
                | Action::Clone { .. }
        ) {
            self.nodes[n].agent.not_streaming_since = None;
        }
        match action {
            Action::AcquireLease => self.store_send(n, StoreOp::Lease(LeaseOp::Acquire)),
            Action::RenewLease => self.store_send(n, StoreOp::Lease(LeaseOp::Renew)),
            Action::ReleaseLease { .. } => {
                if self.nodes[n].pg.run != Run::Stopped {
                    self.done_in(n, lat, Err("not releasing: PostgreSQL still runs".into()));
                } else {
                    self.store_send(n, StoreOp::Lease(LeaseOp::Release));
                }
            }
            Action::Start { upstream } => {
                let up = upstream.as_ref().and_then(|u| self.idx(&u.member));
                let pg = &mut self.nodes[n].pg;
                if pg.run != Run::Stopped {
                    self.done_in(n, lat, Ok(true));
                    return;
                }
                pg.run = Run::Starting;
                let to = if pg.standby_signal {
                    pg.upstream = up;
                    Run::Standby
                } else {
                    pg.upstream = None;
                    Run::Writable
                };
                let dur = self.rng.range(100, 500);
                self.log(|| format!("{name}: starting PostgreSQL as {to:?}"));
                self.pg_after(n, dur, to, Expect::Started);
            }
            Action::Stop { reason } => {
                self.log(|| format!("{name}: stopping PostgreSQL: {reason}"));
                self.pg_stop(n);
                let node = &mut self.nodes[n];
                node.agent.expect_running = false;
                if !node.agent.held {
                    node.wd = None;
                }
                self.done_in(n, lat, Ok(true));
            }
            Action::Promote => match self.nodes[n].pg.run {
                Run::Writable => self.done_in(n, lat, Ok(true)),
                Run::Standby => {
                    self.nodes[n].pg.run = Run::Promoting;
                    let dur = self.rng.range(50, 300);
                    self.log(|| format!("{name}: promoting"));
                    self.pg_after(n, dur, Run::Writable, Expect::Promoted);
                }
                _ => self.done_in(
                    n,
                    lat,
                    Err("no connection to PostgreSQL to promote it".into()),
                ),
            },
            Action::Follow { upstream } => {
                if matches!(self.nodes[n].pg.run, Run::Standby | Run::Promoting) {
                    self.nodes[n].pg.upstream = upstream.as_ref().and_then(|u| self.upstream_of(u));
                    self.done_in(n, lat, Ok(true));
                } else {
                    self.done_in(n, lat, Err("PostgreSQL is not running".into()));
                }
            }
            Action::EnsureSlots { names } => {
                if self.nodes[n].pg.running() {
                    self.nodes[n].pg.slots.extend(names);
                    self.done_in(n, lat, Ok(true));
                } else {
                    self.done_in(n, lat, Ok(false));
                }
            }
            Action::AdvanceSlots { .. } => {
                let ok = self.nodes[n].pg.running();
                self.done_in(n, lat, Ok(ok));
            }
            Action::DropSlots { names } => {
                if self.nodes[n].pg.running() {
                    for s in names {
                        self.nodes[n].pg.slots.remove(&s);
                    }
                    self.done_in(n, lat, Ok(true));
                } else {
                    self.done_in(n, lat, Ok(false));
                }
            }
            Action::Rejoin { upstream } => self.rejoin(n, &upstream),
            Action::Reinit { from } | Action::Clone { from } => self.reclone(n, &from),
            Action::Wait { reason } => {
                self.log(|| format!("{name}: waiting: {reason}"));
                self.publish(n);
            }
            Action::Fail { reason } => {
                self.violate("unexpected-fail", format!("{name}: {reason}"));
                self.publish(n);
            }
            other => {
                self.violate(
                    "unexpected-action",
                    format!("{name}: {other:?} (no operation or bootstrap is simulated)"),
                );
                self.publish(n);
            }
        }
    }

    /// Reachable and running: something pg_rewind / pg_basebackup can connect to.
    fn source_ok(&self, n: usize, u: usize) -> bool {
        u != n && self.peer_ok(n, u) && self.nodes[u].pg.running()
    }

    fn rejoin(&mut self, n: usize, up: &Upstream) {
        let name = self.nodes[n].name.clone();
        let lat = self.lat();
        if self.nodes[n].pg.run != Run::Stopped {
            self.done_in(n, lat, Err("PostgreSQL runs: not rejoining".into()));
            return;
        }
        let Some(u) = self.upstream_of(up).filter(|&u| self.source_ok(n, u)) else {
            let t = self.rng.range(10, 1_000);
            self.done_in(
                n,
                t,
                Err(format!("pg_rewind cannot connect to {}", up.member)),
            );
            return;
        };
        let mut dur = self.rng.range(10, 30);
        if let Err(at) = divergence(&self.nodes[n].pg, &self.nodes[u].pg) {
            if self.rng.per_mille(self.cfg.rewind_fail_per_mille) {
                self.stats.rejoin_failures += 1;
                self.nodes[n].agent.rejoin_failed = Some("pg_rewind could not rewind".into());
                self.done_in(n, 200, Err("pg_rewind failed".into()));
                return;
            }
            self.stats.rewinds += 1;
            let src = self.nodes[u].pg.clone();
            let pg = &mut self.nodes[n].pg;
            pg.hist = src.hist;
            pg.branch = src.branch;
            pg.lsn = at.min(src.lsn);
            dur += self.rng.range(200, 2_000);
            self.log(|| format!("{name}: pg_rewind from {}: back to {at}", up.member));
        }
        let pg = &mut self.nodes[n].pg;
        pg.standby_signal = true;
        pg.upstream = Some(u);
        pg.run = Run::Starting;
        let dur = dur + self.rng.range(100, 500);
        self.pg_after(n, dur, Run::Standby, Expect::Started);
    }

    fn reclone(&mut self, n: usize, from: &Upstream) {
        let lat = self.lat();
        let Some(u) = self.upstream_of(from).filter(|&u| self.source_ok(n, u)) else {
            self.done_in(n, lat, Err(format!("cannot connect to {}", from.member)));
            return;
        };
        self.pg_stop(n);
        self.nodes[n].agent.expect_running = false;
        let src = self.nodes[u].pg.clone();
        let pg = &mut self.nodes[n].pg;
        pg.hist = src.hist;
        pg.branch = src.branch;
        pg.lsn = src.lsn;
        pg.slots.clear();
        pg.standby_signal = true;
        pg.upstream = Some(u);
        pg.run = Run::Starting;
        let dur = self.rng.range(1_000, 3_000);
        self.pg_after(n, dur, Run::Standby, Expect::Started);
    }
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
    pub rewinds: u64,
    pub rejoin_failures: u64,
    pub waiting_rejoin_failed: u64,
    pub stuck_diverged: u64,
    pub lost_writes: u64,
    pub max_lost_writes: u64,
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
        self.rewinds += s.rewinds as u64;
        self.rejoin_failures += s.rejoin_failures as u64;
        self.waiting_rejoin_failed += s.waiting_rejoin_failed as u64;
        self.stuck_diverged += s.stuck_diverged as u64;
        self.lost_writes += s.lost_writes;
        self.max_lost_writes = self.max_lost_writes.max(s.lost_writes);
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
        self.rewinds += o.rewinds;
        self.rejoin_failures += o.rejoin_failures;
        self.waiting_rejoin_failed += o.waiting_rejoin_failed;
        self.stuck_diverged += o.stuck_diverged;
        self.lost_writes += o.lost_writes;
        self.max_lost_writes = self.max_lost_writes.max(o.max_lost_writes);
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
            "promotions {}, watchdog fences {}, failsafe rounds {} ({} confirmed by all), rewinds {}, rewind failures {} (nodes left waiting for reinit at the end: {}); standbys left diverged at the end (liveness gap): {}",
            self.promotions,
            self.fences,
            self.failsafe_rounds,
            self.failsafe_confirmed,
            self.rewinds,
            self.rejoin_failures,
            self.waiting_rejoin_failed,
            self.stuck_diverged
        )?;
        writeln!(
            f,
            "acknowledged writes lost (1 KB each): {} total, {:.1} per run, max {} in one run",
            self.lost_writes,
            self.lost_writes as f64 / runs as f64,
            self.max_lost_writes
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
