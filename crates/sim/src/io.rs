//! How the real executor (`pgbaton_exec`) reaches the simulated world.
//!
//! Each node's executor gets a store, a PostgreSQL and a host whose every call puts a
//! request into the node's mailbox and returns a future that is ready once the simulator has
//! put the reply there. The simulator polls the executor's future by hand (no runtime, no
//! threads): when it is pending, it takes the request out, carries it out in the fake world
//! with a seeded latency, and polls again when the reply is due. Calls that take no time
//! (the clocks, arming the watchdog, the API's shared state) read and write the mailbox
//! directly.

use pgbaton_core::decide::DataDir;
use pgbaton_core::failover::{fence_deadline_ms, FailsafeGate};
use pgbaton_core::memory::Memory;
use pgbaton_core::model::{
    HistoryEntry, Leader, Lsn, MemberState, MemberStatus, OpPhase, Operation, Rewind, SlotEnsured,
};
use pgbaton_core::render::Upstream;
use pgbaton_core::sync::SyncNames;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// A request to the store.
#[derive(Clone, Debug)]
pub(crate) enum StoreReq {
    /// Bootstrap is not simulated: these are answered with an error.
    InitializeClaim,
    InitializeReplace,
    LeaderGet,
    /// Take or renew the lease, for this TTL (ms).
    Acquire(u64),
    Renew(u64),
    Release,
    MemberGet(String),
    MemberDelete(String),
    OpUpdate {
        id: String,
        phase: OpPhase,
        new: Box<Operation>,
    },
    HistoryAppend(Box<HistoryEntry>),
    SyncGet,
    SyncCas {
        expected: Option<String>,
        new: Option<String>,
    },
}

/// A request to the local PostgreSQL.
#[derive(Clone, Debug)]
pub(crate) enum PgReq {
    Running,
    Start {
        standby: bool,
        upstream: Option<Upstream>,
    },
    Stop,
    ShutdownCheckpoint,
    Fence,
    Promote,
    Follow(Option<Upstream>),
    Reload,
    Rewind(Upstream),
    Clone {
        from: Upstream,
    },
    InitdbIfEmpty,
    InitCluster,
    EnsureSlot(String),
    DropSlot(String),
    AdvanceSlot,
    Position,
    Purge,
    SyncNames,
    SetSyncNames(SyncNames),
    SyncBarrier(SyncNames),
}

#[derive(Clone, Debug)]
pub(crate) enum Req {
    Store(StoreReq),
    Pg(PgReq),
    /// Publish the member's state with this status (during a long step).
    Publish(MemberStatus),
}

/// A reply's value.
#[derive(Clone, Debug)]
pub(crate) enum Val {
    Unit,
    Bool(bool),
    Lsn(Lsn),
    Rewind(Rewind),
    Slot(SlotEnsured),
    Leader(Option<Leader>),
    Member(Option<Box<MemberState>>),
    Position(Option<u32>, Option<Lsn>),
    Names(SyncNames),
    Text(Option<String>),
}

pub(crate) type Rep = Result<Val, String>;

/// One node's mailbox, shared by its executor's store, PostgreSQL and host, and the
/// simulator.
#[derive(Debug, Default)]
pub(crate) struct NodeIo {
    /// Virtual time, set by the simulator before each poll.
    pub now: u64,
    next_id: u64,
    pub requests: Vec<(u64, Req)>,
    pub replies: BTreeMap<u64, Rep>,
    /// What the executor did to the watchdog during the last poll: `Some(deadline)`
    /// armed, `None` disarmed (the last change wins; every armed deadline is in `armed`).
    pub wd_change: Option<Option<u64>>,
    pub armed: Vec<u64>,
    /// The executor asked to pull the fence in to this deadline if earlier (`Host::tighten`).
    pub tighten: Option<u64>,
    /// The agent API's failsafe gate (agent memory): the promise it gave a primary, and
    /// whether it leads or is taking the lease.
    pub failsafe: FailsafeGate,
    /// The agent holds a SQL connection to its running PostgreSQL.
    pub connected: bool,
}

pub(crate) type Io = Arc<Mutex<NodeIo>>;

fn lock(io: &Io) -> std::sync::MutexGuard<'_, NodeIo> {
    io.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request in flight: ready when the simulator put its reply in the mailbox.
struct Call {
    io: Io,
    id: u64,
}

impl Future for Call {
    type Output = Rep;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Rep> {
        match lock(&self.io).replies.remove(&self.id) {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }
}

fn call(io: &Io, req: Req) -> Call {
    let mut m = lock(io);
    m.next_id += 1;
    let id = m.next_id;
    m.requests.push((id, req));
    Call { io: io.clone(), id }
}

fn unexpected<T>(v: Val) -> anyhow::Result<T> {
    anyhow::bail!("simulator: unexpected reply {v:?}")
}

async fn ask(io: &Io, req: Req) -> anyhow::Result<Val> {
    call(io, req).await.map_err(|e| anyhow::anyhow!(e))
}

async fn unit(io: &Io, req: Req) -> anyhow::Result<()> {
    match ask(io, req).await? {
        Val::Unit => Ok(()),
        v => unexpected(v),
    }
}

async fn boolean(io: &Io, req: Req) -> anyhow::Result<bool> {
    match ask(io, req).await? {
        Val::Bool(b) => Ok(b),
        v => unexpected(v),
    }
}

/// The store as the executor sees it.
pub(crate) struct SimStore {
    pub io: Io,
    pub name: String,
}

#[async_trait::async_trait]
impl pgbaton_store::Store for SimStore {
    fn describe(&self) -> String {
        "the simulated store".into()
    }
    async fn initialize_get(&self) -> anyhow::Result<Option<String>> {
        anyhow::bail!("not simulated")
    }
    async fn initialize_claim(&self, value: &str) -> anyhow::Result<bool> {
        let _ = value;
        boolean(&self.io, Req::Store(StoreReq::InitializeClaim)).await
    }
    async fn initialize_replace(&self, _: &str, _: &str) -> anyhow::Result<bool> {
        boolean(&self.io, Req::Store(StoreReq::InitializeReplace)).await
    }
    async fn initialize_abandon(&self, _: &str) -> anyhow::Result<bool> {
        anyhow::bail!("not simulated")
    }
    async fn leader_get(&self) -> anyhow::Result<Option<Leader>> {
        match ask(&self.io, Req::Store(StoreReq::LeaderGet)).await? {
            Val::Leader(l) => Ok(l),
            v => unexpected(v),
        }
    }
    async fn leader_acquire(&self, member: &str, ttl_ms: u64) -> anyhow::Result<bool> {
        debug_assert_eq!(member, self.name);
        boolean(&self.io, Req::Store(StoreReq::Acquire(ttl_ms))).await
    }
    async fn leader_renew(&self, member: &str, ttl_ms: u64) -> anyhow::Result<bool> {
        debug_assert_eq!(member, self.name);
        boolean(&self.io, Req::Store(StoreReq::Renew(ttl_ms))).await
    }
    async fn leader_release(&self, member: &str) -> anyhow::Result<bool> {
        debug_assert_eq!(member, self.name);
        boolean(&self.io, Req::Store(StoreReq::Release)).await
    }
    async fn member_put(&self, _: &MemberState) -> anyhow::Result<()> {
        anyhow::bail!("not simulated: the simulator's loop publishes")
    }
    async fn member_get(&self, name: &str) -> anyhow::Result<Option<MemberState>> {
        match ask(&self.io, Req::Store(StoreReq::MemberGet(name.into()))).await? {
            Val::Member(m) => Ok(m.map(|m| *m)),
            v => unexpected(v),
        }
    }
    async fn members_read(&self) -> anyhow::Result<pgbaton_store::MembersRead> {
        anyhow::bail!("not simulated")
    }
    async fn member_delete(&self, name: &str) -> anyhow::Result<bool> {
        boolean(&self.io, Req::Store(StoreReq::MemberDelete(name.into()))).await
    }
    async fn op_get(&self) -> anyhow::Result<Option<Operation>> {
        anyhow::bail!("not simulated")
    }
    async fn op_post(&self, _: &Operation) -> anyhow::Result<bool> {
        anyhow::bail!("not simulated")
    }
    async fn op_update(&self, id: &str, phase: OpPhase, new: &Operation) -> anyhow::Result<bool> {
        let r = StoreReq::OpUpdate {
            id: id.into(),
            phase,
            new: Box::new(new.clone()),
        };
        boolean(&self.io, Req::Store(r)).await
    }
    async fn history_append(&self, entry: &HistoryEntry) -> anyhow::Result<()> {
        let r = StoreReq::HistoryAppend(Box::new(entry.clone()));
        unit(&self.io, Req::Store(r)).await
    }
    async fn history(&self, _: usize) -> anyhow::Result<Vec<HistoryEntry>> {
        anyhow::bail!("not simulated")
    }
    async fn paused(&self) -> anyhow::Result<bool> {
        anyhow::bail!("not simulated")
    }
    async fn set_paused(&self, _: bool) -> anyhow::Result<()> {
        anyhow::bail!("not simulated")
    }
    async fn sync_get(&self) -> anyhow::Result<Option<String>> {
        match ask(&self.io, Req::Store(StoreReq::SyncGet)).await? {
            Val::Text(t) => Ok(t),
            v => unexpected(v),
        }
    }
    async fn sync_cas(
        &self,
        leader: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> anyhow::Result<bool> {
        debug_assert_eq!(leader, self.name);
        let r = StoreReq::SyncCas {
            expected: expected.map(str::to_string),
            new: new.map(str::to_string),
        };
        boolean(&self.io, Req::Store(r)).await
    }
}

/// The local PostgreSQL as the executor sees it.
pub(crate) struct SimPg {
    pub io: Io,
}

#[async_trait::async_trait]
impl pgbaton_exec::Postgres for SimPg {
    async fn running(&mut self) -> bool {
        boolean(&self.io, Req::Pg(PgReq::Running))
            .await
            .unwrap_or(true)
    }
    fn connected(&self) -> bool {
        lock(&self.io).connected
    }
    /// The simulated node has no ports or directories to get ready.
    async fn prepare(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    async fn start(&mut self, standby: bool, upstream: Option<&Upstream>) -> anyhow::Result<()> {
        let upstream = upstream.cloned();
        unit(&self.io, Req::Pg(PgReq::Start { standby, upstream })).await
    }
    async fn stop(&mut self) -> anyhow::Result<()> {
        unit(&self.io, Req::Pg(PgReq::Stop)).await
    }
    async fn shutdown_checkpoint(&mut self) -> anyhow::Result<Lsn> {
        match ask(&self.io, Req::Pg(PgReq::ShutdownCheckpoint)).await? {
            Val::Lsn(l) => Ok(l),
            v => unexpected(v),
        }
    }
    async fn fence(&mut self, _: &str) -> anyhow::Result<()> {
        unit(&self.io, Req::Pg(PgReq::Fence)).await
    }
    async fn promote(&mut self) -> anyhow::Result<()> {
        unit(&self.io, Req::Pg(PgReq::Promote)).await
    }
    async fn follow(&mut self, upstream: Option<&Upstream>) -> anyhow::Result<()> {
        unit(&self.io, Req::Pg(PgReq::Follow(upstream.cloned()))).await
    }
    async fn reload(&mut self) -> anyhow::Result<()> {
        unit(&self.io, Req::Pg(PgReq::Reload)).await
    }
    async fn rewind(&mut self, upstream: &Upstream) -> anyhow::Result<Rewind> {
        match ask(&self.io, Req::Pg(PgReq::Rewind(upstream.clone()))).await? {
            Val::Rewind(r) => Ok(r),
            v => unexpected(v),
        }
    }
    async fn clone_from(&mut self, from: &Upstream, _replace: bool) -> anyhow::Result<()> {
        let from = from.clone();
        unit(&self.io, Req::Pg(PgReq::Clone { from })).await
    }
    async fn initdb_if_empty(&mut self, data: &DataDir) -> anyhow::Result<()> {
        if *data != DataDir::Empty {
            return Ok(());
        }
        unit(&self.io, Req::Pg(PgReq::InitdbIfEmpty)).await
    }
    async fn init_cluster(&mut self) -> anyhow::Result<String> {
        let v = ask(&self.io, Req::Pg(PgReq::InitCluster)).await?;
        unexpected(v)
    }
    async fn ensure_slot(&mut self, name: &str) -> anyhow::Result<SlotEnsured> {
        match ask(&self.io, Req::Pg(PgReq::EnsureSlot(name.into()))).await? {
            Val::Slot(s) => Ok(s),
            v => unexpected(v),
        }
    }
    async fn drop_slot(&mut self, name: &str) -> anyhow::Result<bool> {
        boolean(&self.io, Req::Pg(PgReq::DropSlot(name.into()))).await
    }
    async fn advance_slot(&mut self, _: &str, _: Lsn) -> anyhow::Result<()> {
        unit(&self.io, Req::Pg(PgReq::AdvanceSlot)).await
    }
    async fn position(&mut self) -> (Option<u32>, Option<Lsn>) {
        match ask(&self.io, Req::Pg(PgReq::Position)).await {
            Ok(Val::Position(t, l)) => (t, l),
            _ => (None, None),
        }
    }
    async fn purge(&mut self) -> anyhow::Result<()> {
        unit(&self.io, Req::Pg(PgReq::Purge)).await
    }
    async fn sync_names(&mut self) -> anyhow::Result<SyncNames> {
        match ask(&self.io, Req::Pg(PgReq::SyncNames)).await? {
            Val::Names(n) => Ok(n),
            v => unexpected(v),
        }
    }
    async fn set_sync_names(&mut self, names: &SyncNames) -> anyhow::Result<()> {
        unit(&self.io, Req::Pg(PgReq::SetSyncNames(names.clone()))).await
    }
    async fn sync_barrier(&mut self, names: &SyncNames) -> anyhow::Result<()> {
        unit(&self.io, Req::Pg(PgReq::SyncBarrier(names.clone()))).await
    }
}

/// The node around PostgreSQL as the executor sees it.
pub(crate) struct SimHost {
    pub io: Io,
    pub name: String,
    pub fence_margin_ms: u64,
    /// Off plants the old executor, which did not pull the fence in before asking for a
    /// shorter lease (`SimConfig::tighten_before_shorter_ttl`).
    pub tighten: bool,
}

#[async_trait::async_trait]
impl pgbaton_exec::Host for SimHost {
    type Instant = u64;
    fn now_ms(&self) -> u64 {
        lock(&self.io).now
    }
    fn instant(&self) -> u64 {
        lock(&self.io).now
    }
    fn arm(&mut self, t0: u64, ttl_ms: u64) -> anyhow::Result<()> {
        let d = fence_deadline_ms(t0, ttl_ms, self.fence_margin_ms);
        let mut m = lock(&self.io);
        m.wd_change = Some(Some(d));
        m.armed.push(d);
        Ok(())
    }
    fn tighten(&mut self, t0: u64, ttl_ms: u64) -> anyhow::Result<()> {
        if self.tighten {
            let d = fence_deadline_ms(t0, ttl_ms, self.fence_margin_ms);
            let mut m = lock(&self.io);
            m.tighten = Some(m.tighten.map_or(d, |t| t.min(d)));
        }
        Ok(())
    }
    fn disarm(&mut self) {
        lock(&self.io).wd_change = Some(None);
    }
    fn begin_acquire(&mut self) -> Result<(), String> {
        let mut m = lock(&self.io);
        let now = m.now;
        m.failsafe.begin_acquire(&self.name, now)
    }
    fn set_leading(&mut self, leading: bool) {
        lock(&self.io).failsafe.set_leading(leading);
    }
    fn promoted(&mut self) {}
    /// Not simulated: the simulated long steps are shorter than a lease.
    fn keep_lease(&mut self) -> Option<Box<dyn Send>> {
        None
    }
    async fn publish_status(&mut self, status: MemberStatus, _: Option<&str>, _: &Memory) {
        let _ = ask(&self.io, Req::Publish(status)).await;
    }
}
