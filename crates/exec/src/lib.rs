//! The executor: carrying out the decision's actions.
//!
//! `decide` (in `pgbaton-core`) says what to do; [`Executor::run_plan`] does it, in order,
//! stopping at the first action that waits, loses a compare-and-set or fails. It talks to
//! the outside through three narrow interfaces only:
//! - [`pgbaton_store::Store`]: the cluster's store;
//! - [`Postgres`]: the local PostgreSQL instance (start, stop, promote, rewind, clone...);
//! - [`Host`]: the rest of the node (clocks, the fence watchdog, the API's shared state).
//!
//! The agent (`crates/agent`) implements them over real processes; the simulator
//! (`crates/sim`) over its fake world, polling this very code with virtual time. So the
//! simulator checks the agent's executor and memory ([`pgbaton_core::memory::Memory`]),
//! not a copy of them.
//!
//! Architecture invariant: nothing here decides. Every action is idempotent; PostgreSQL is
//! stopped (and no process of the instance left) before the lease is released, and the
//! watchdog is disarmed only once PostgreSQL is stopped.

use async_trait::async_trait;
use pgbaton_core::decide::{Action, ClusterView, DataDir, LocalView};
use pgbaton_core::memory::Memory;
use pgbaton_core::model::{Lsn, MemberStatus, Rewind, SlotEnsured};
use pgbaton_core::render::Upstream;
use pgbaton_core::sync::SyncNames;
use pgbaton_store::Store;
use std::sync::Arc;
use tracing::{error, info, warn};

/// Return a failed step with a formatted reason (`anyhow::bail!` for steps).
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err(StepError::Failed(anyhow::anyhow!($($arg)*)))
    };
}

mod lease;
mod ops;
mod pg;
mod slots;
mod sync;

pub type Result<T> = anyhow::Result<T>;

/// The local PostgreSQL instance, as the executor commands it.
#[async_trait]
pub trait Postgres: Send {
    /// A postmaster runs for the data directory.
    async fn running(&mut self) -> bool;
    /// A SQL connection to the running PostgreSQL is up (slots and promotion need one).
    fn connected(&self) -> bool;
    /// What every start and rejoin needs first (the port free, the directories, the
    /// passfile). Its errors are the node's, never a failed rewind's.
    async fn prepare(&mut self) -> Result<()>;
    /// Write pgbaton's configuration (a standby of `upstream`, or a primary) and start.
    async fn start(&mut self, standby: bool, upstream: Option<&Upstream>) -> Result<()>;
    /// Stop (fast mode); a stopped PostgreSQL is a success.
    async fn stop(&mut self) -> Result<()>;
    /// After a clean stop: the shutdown checkpoint's position (refused unless pg_control
    /// says the instance was shut down cleanly).
    async fn shutdown_checkpoint(&mut self) -> Result<Lsn>;
    /// End every process of the instance that is still there (backends of a postmaster
    /// that died alone); `why` goes into the log.
    async fn fence(&mut self, why: &str) -> Result<()>;
    /// Promote, configure as a primary, and checkpoint on the new timeline before
    /// returning (pg_rewind reads a source's timeline from its last checkpoint).
    async fn promote(&mut self) -> Result<()>;
    /// Point a running standby at `upstream` (configuration rewrite and reload).
    async fn follow(&mut self, upstream: Option<&Upstream>) -> Result<()>;
    async fn reload(&mut self) -> Result<()>;
    /// pg_rewind from `upstream` when the data diverged (the instance is stopped).
    async fn rewind(&mut self, upstream: &Upstream) -> Result<Rewind>;
    /// Why the last start of this standby could not stream, when it is that its upstream
    /// had removed the WAL it asked for (and no archive gave it): rewinding cannot help.
    fn upstream_wal_gone(&self) -> Option<String> {
        None
    }
    /// pg_basebackup from `from` (into a scratch directory swapped in when `replace`).
    async fn clone_from(&mut self, from: &Upstream, replace: bool) -> Result<()>;
    /// initdb when the data directory is empty.
    async fn initdb_if_empty(&mut self, data: &DataDir) -> Result<()>;
    /// On the new primary: the replication role and the configured databases. Returns the
    /// system identifier.
    async fn init_cluster(&mut self) -> Result<String>;
    async fn ensure_slot(&mut self, name: &str) -> Result<SlotEnsured>;
    /// `true`: it existed and was dropped.
    async fn drop_slot(&mut self, name: &str) -> Result<bool>;
    async fn advance_slot(&mut self, name: &str, lsn: Lsn) -> Result<()>;
    /// The running instance's timeline and position, when it answers.
    async fn position(&mut self) -> (Option<u32>, Option<Lsn>);
    /// Delete the data directory (`pgbaton remove --purge`: the operator asked for it).
    async fn purge(&mut self) -> Result<()>;
    /// Primary: `synchronous_standby_names` as it is now.
    async fn sync_names(&mut self) -> Result<SyncNames>;
    /// Primary: set `synchronous_standby_names` and return once every process that
    /// decides for commits loaded it.
    async fn set_sync_names(&mut self, names: &SyncNames) -> Result<()>;
    /// Primary: return once `names.acks()` of the listed standbys flushed everything the
    /// primary had flushed when called.
    async fn sync_barrier(&mut self, names: &SyncNames) -> Result<()>;
}

/// The node around PostgreSQL: clocks, the fence watchdog, the state the API shares.
#[async_trait]
pub trait Host: Send {
    /// A point in monotonic time (when a lease request started).
    type Instant: Copy + Send + Sync;
    /// Wall-clock ms (the store's leases and history are in wall-clock time).
    fn now_ms(&self) -> u64;
    fn instant(&self) -> Self::Instant;
    /// A lease request that started at `t0` and asked the store for `ttl_ms` succeeded:
    /// arm the watchdog for `t0 + ttl_ms - fence_margin`. An error means no live fence:
    /// PostgreSQL was ended and the agent must exit.
    fn arm(&mut self, t0: Self::Instant, ttl_ms: u64) -> Result<()>;
    /// About to ask the store at `t0` for a lease of `ttl_ms`: pull an armed fence in to
    /// `t0 + ttl_ms - fence_margin` when that is earlier (the TTL was lowered), never later. A request that changes the store but whose answer is lost
    /// leaves the lease that short, and the fence must not outlive it. An error means no
    /// live fence, as for `arm`.
    fn tighten(&mut self, t0: Self::Instant, ttl_ms: u64) -> Result<()>;
    fn disarm(&mut self);
    /// About to take the leader lease: atomically with the API's failsafe handler, refuse
    /// (naming the primary) when this member promised a live primary not to take it, and
    /// otherwise promise nothing more until a view says who leads.
    fn begin_acquire(&mut self) -> std::result::Result<(), String>;
    /// This member leads (or not) as far as the API's failsafe handler is concerned.
    fn set_leading(&mut self, leading: bool);
    /// Count a promotion (metrics).
    fn promoted(&mut self);
    /// Keep renewing the lease while a long step runs; stops when the guard is dropped.
    fn keep_lease(&mut self) -> Option<Box<dyn Send>>;
    /// Publish the member's state during a long step (starting, bootstrapping).
    async fn publish_status(&mut self, status: MemberStatus, message: Option<&str>, mem: &Memory);
}

/// Go on with the plan, or stop it here (a wait, a lost compare-and-set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Why an action did not complete.
#[derive(Debug)]
pub enum StepError {
    /// A condition the agent must not resolve by itself: it reports it and exits.
    Fatal(String),
    /// The store did not answer a lease renewal (a primary then runs a failsafe round).
    StoreUnreachable(anyhow::Error),
    Failed(anyhow::Error),
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::Fatal(why) => f.write_str(why),
            StepError::StoreUnreachable(e) | StepError::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

impl From<anyhow::Error> for StepError {
    fn from(e: anyhow::Error) -> Self {
        StepError::Failed(e)
    }
}

pub type Step = std::result::Result<Flow, StepError>;

/// How a plan ended.
#[derive(Debug)]
pub enum PlanEnd {
    /// Every action ran, or one stopped the plan (a wait, a lost compare-and-set).
    Ran,
    /// An action failed (logged; the message says why).
    Failed(StepError),
    /// This member was removed from the cluster: the agent exits without publishing.
    Removed,
}

/// What the executor needs of the node's config.
#[derive(Clone, Debug)]
pub struct Settings {
    pub name: String,
    /// The TTL the next lease request asks for; the agent's loop changes it between plans
    /// when the cluster's timing changes.
    pub ttl_ms: u64,
}

pub struct Executor<P, H> {
    pub settings: Settings,
    pub store: Arc<dyn Store>,
    pub pg: P,
    pub host: H,
    pub mem: Memory,
    /// What this loop wants the operator to know (what it waits for, the last error).
    pub message: Option<String>,
    /// The last wait logged (a wait is logged when it changes, not every loop).
    last_wait: Option<String>,
}

impl<P: Postgres, H: Host> Executor<P, H> {
    pub fn new(settings: Settings, store: Arc<dyn Store>, pg: P, host: H) -> Self {
        Executor {
            settings,
            store,
            pg,
            host,
            mem: Memory::default(),
            message: None,
            last_wait: None,
        }
    }

    /// Run the plan in order; stop at the first action that stops it or fails. An
    /// operation whose step failed for good is finished as failed, with the reason, instead
    /// of being retried forever.
    pub async fn run_plan(
        &mut self,
        plan: Vec<Action>,
        view: &ClusterView,
        local: &LocalView,
    ) -> PlanEnd {
        self.message = None;
        self.forget_a_lease_another_holds(view).await;
        if !plan.iter().any(|a| matches!(a, Action::Wait { .. })) {
            self.last_wait = None;
        }
        let mut plan = plan.into_iter();
        while let Some(action) = plan.next() {
            // Formatted only when debug logging is on.
            tracing::debug!(%action, "carrying out");
            // Named only when its failure fails the operation (formatting every action
            // would cost the simulator's sweep for nothing).
            let what = may_fail_op(&action).then(|| action.to_string());
            match self.execute(action, view, local).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stop) => break,
                Err(StepError::Fatal(why)) => {
                    error!("{why}");
                    self.message = Some(why.clone());
                    return PlanEnd::Failed(StepError::Fatal(why));
                }
                Err(e) => {
                    let text = e.to_string();
                    error!("{text}");
                    self.message = Some(text.clone());
                    if let Some(what) = what {
                        if let Some(Action::FinishOp { op, .. }) =
                            plan.find(|a| matches!(a, Action::FinishOp { .. }))
                        {
                            warn!("{what} failed: the operation {} fails", op.id);
                            if let Err(e) = self.finish_op(&op, false, &text).await {
                                warn!("finish operation {} as failed: {e:#}", op.id);
                            }
                        }
                    }
                    return PlanEnd::Failed(e);
                }
            }
            if self.mem.removed {
                return PlanEnd::Removed;
            }
        }
        if self.mem.removed {
            return PlanEnd::Removed;
        }
        PlanEnd::Ran
    }

    /// Run one action.
    pub async fn execute(&mut self, action: Action, view: &ClusterView, local: &LocalView) -> Step {
        match action {
            Action::ClaimInitialize { value } => self.claim_initialize(&value).await,
            Action::Bootstrap => self.bootstrap(&local.data).await,
            Action::AcquireLease => self.acquire_lease().await,
            Action::RenewLease => self.renew_lease().await,
            Action::ReleaseLease { reason } => self.release_lease(&reason).await,
            Action::Clone { from } => self.clone_from(&from, false).await,
            Action::Start { upstream } => self.start_action(local, upstream.as_ref()).await,
            Action::Follow { upstream } => self.follow(upstream.as_ref()).await,
            Action::Stop { reason } => self.stop_action(&reason).await,
            Action::EnsureSlots { names } => self.ensure_slots(names).await,
            Action::DropSlots { names } => self.drop_slots(names).await,
            Action::AdvanceSlots { targets } => self.advance_slots(targets).await,
            Action::Promote => self.promote(view).await,
            Action::WriteSyncSet { record, barrier } => {
                self.write_sync_set(view, &record, barrier).await
            }
            Action::ClearSyncSet => self.clear_sync_set(view).await,
            Action::SetSyncNames { names } => self.set_sync_names(&names, local).await,
            Action::Rejoin { upstream } => self.rejoin(&upstream).await,
            Action::Restart { upstream } => self.restart(local, upstream.as_ref()).await,
            Action::Reload => self.reload().await,
            Action::Reinit { from } => self.reinit(&from).await,
            Action::RemoveSelf { op, purge } => self.remove_self(&op, purge).await,
            Action::StopForSwitchover { op } => self.stop_for_switchover(&op).await,
            Action::AdvanceOp { op, phase, message } => self.advance_op(&op, phase, message).await,
            Action::FinishOp { op, ok, message } => {
                self.finish_op(&op, ok, &message).await?;
                Ok(Flow::Continue)
            }
            Action::Wait { reason } => {
                if self.last_wait.as_ref() != Some(&reason) {
                    info!("waiting: {reason}");
                    self.last_wait = Some(reason.clone());
                }
                self.message = Some(reason);
                Ok(Flow::Stop)
            }
            Action::Fail { reason } => Err(StepError::Fatal(reason)),
        }
    }
}

/// Steps of an operation that can fail for good (the operation then fails with the reason).
fn may_fail_op(action: &Action) -> bool {
    matches!(
        action,
        Action::Promote
            | Action::Rejoin { .. }
            | Action::Reinit { .. }
            | Action::Restart { .. }
            | Action::Reload
    )
}

/// A standby's data directory (`standby.signal`).
fn is_standby(local: &LocalView) -> bool {
    matches!(local.data, DataDir::Initialized { standby: true, .. })
}
