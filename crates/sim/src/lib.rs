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
//!   watchdog deadline moves to `fence_deadline_ms(t0_of_the_round, shortest promise)`.
//! - **Timing changes** (`Retime`, from a random stream of their own): a node's agent asks
//!   for another lease TTL from its next loop for a while, as a change of `timing.ttl_ms` in
//!   the cluster's config reaches the members one by one; the store keeps each lease for the
//!   TTL its request asked for, and the fence follows that request's TTL.
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
//! Among the faults: switchover, promote, rejoin, reinit, restart, reload, remove, checked
//! by `ops::check` as the CLI does before they are posted. A run that ends with a switchover still within its own
//! deadline is not judged for convergence (`op_pending_at_end`).
//!
//! # Not modelled
//! The lease keeper of long steps, bootstrap (runs start
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
use pgbaton_core::sync::{SyncMode, SyncNames, SyncRecord, WalSender};
use pgbaton_exec::PlanEnd;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

mod agent;
mod checks;
mod config;
mod exec;
mod faults;
mod io;
mod outcome;
mod store;
mod summary;
mod world;

pub use config::{Fault, FaultKind, SimConfig};
pub use outcome::{Outcome, Promotion, Stats, Violation};
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
    /// The last stop was a clean (fast) shutdown, with a shutdown checkpoint; a crash, a
    /// fence or a lost node leaves none.
    clean_stop: bool,
    /// `synchronous_standby_names` (kept in postgresql.auto.conf: it survives restarts and
    /// is copied by a clone).
    sync_names: SyncNames,
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
    /// The asker's TTL when the round began.
    ttl: u64,
    asked: usize,
    yes: usize,
    /// The shortest promise a member gave (ms).
    promised: u64,
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
    /// The executor's memory when the running plan began (for reports while it runs).
    mem: Memory,
    /// The view the last plan was decided on (shared with the plan's task).
    last_view: Option<std::rc::Rc<ClusterView>>,
    /// The last plan changed nothing (`decide::quiet_plan`): what it was decided on, to
    /// publish without observing again, as the agent does.
    quiet: Option<(pgbaton_core::decide::Quiet, PgRun)>,
    loop_started: u64,
    parked: Option<Step>,
    fs: Option<FsRound>,
    /// When this member's report in the store was last known current (the agent's
    /// `Publisher::checked_ms`), and the write in flight that will make it so.
    checked_ms: u64,
    writing: Option<u64>,
    /// The time of the last report written, and when the member last said it is alive.
    written_ms: u64,
    alive_ms: u64,
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
    view_late: u32,
    lag: u64,
    /// PostgreSQL is frozen (SIGSTOP of every process): how many freezes, and the instance
    /// (PostgreSQL epoch) they froze; a new instance after a stop is not frozen.
    pg_frozen: u32,
    frozen_pg_epoch: u64,
    /// The watchdog fenced this PostgreSQL epoch: it must never acknowledge again.
    fenced_epoch: Option<u64>,
    /// Planted old fence: the postmaster was killed while frozen, its backends live on.
    zombie: bool,
    /// The lease TTL this node's agent asks for (`SimConfig::ttl_ms`, or a `Retime`
    /// fault's); it reaches the executor at the agent's next loop.
    ttl_ms: u64,
}

impl Agent {
    /// What the agent remembers: its executor's memory, or while a plan runs (the task owns
    /// the executor) the memory it began with.
    fn memory(&self) -> &Memory {
        self.exec.as_ref().map_or(&self.mem, |e| &e.mem)
    }
}

impl Node {
    /// The node's mailbox and the state its executor shares with the world.
    fn io(&self) -> std::sync::MutexGuard<'_, io::NodeIo> {
        self.io.lock().unwrap_or_else(|e| e.into_inner())
    }

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
        /// The member also says it is alive (`Store::member_alive` before the write).
        alive: bool,
    },
    /// The loop's report was not due (unchanged while the cluster rests): the member only
    /// says it is alive (`alive`: unless it holds the lease, as the agent does).
    Alive {
        member: String,
        alive: bool,
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
    /// A synchronous barrier's wait is over: is it reached?
    Barrier {
        id: u64,
        target: u64,
        names: SyncNames,
    },
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
        /// Yes, with how long the member promised not to take the lease (ms).
        promise: Option<u64>,
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
    /// The synchronous set's record, as stored (JSON text).
    sync: Option<String>,
    /// When each member last said it is alive (`Store::member_alive`).
    alive: BTreeMap<String, u64>,
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
    /// Per branch: the highest LSN a client got an acknowledgement for (a commit is
    /// acknowledged once the standbys `synchronous_standby_names` asks for flushed it; at
    /// once when it names none).
    acked: Vec<u64>,
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
