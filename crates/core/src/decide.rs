//! The agent's decision: a pure function of what the agent sees, returning what to do.
//!
//! `decide(cluster, local, now)` looks at a snapshot of the store (`ClusterView`) and of the
//! local node (`LocalView`) and returns the actions for this loop, in order. The agent runs
//! them in order and stops at the first one that fails or whose compare-and-set is lost;
//! the next loop decides again from a fresh snapshot. Every action is idempotent.
//!
//! Safety rules encoded here:
//! - only the holder of the leader lease runs a writable primary (a running primary that
//!   is not the lease holder while someone else holds it is stopped);
//! - a standby takes a free lease automatically only when it is the best eligible candidate
//!   (most WAL, then `failover_priority`, then name; within `failover.max_lag_bytes` of the
//!   last primary; not behind its timeline; no `nofailover`), when no operation is in flight
//!   and no failsafe promise holds it back (see `failover`);
//! - a former primary takes a free lease only on a fresh view (its own report in it younger
//!   than the TTL, whatever its PostgreSQL does), when no member reports a newer timeline,
//!   and not when it gave up restarting its PostgreSQL;
//! - a former primary whose PostgreSQL is stopped rejoins the leader by itself (pg_rewind when
//!   it diverged); it is re-cloned only when `failover.reclone_on_rewind_failure` says so;
//! - a data directory of another cluster is never touched: the member fails with the reason;
//! - a data directory is never wiped unless an operation asked for it (reinit, remove --purge);
//! - a standby moves to a new upstream only once its slot exists there;
//! - slots pgbaton did not name are never dropped.

use crate::failover::{self, Failsafe, Policy};
use crate::model::{
    slot_name_for, Identity, Leader, Lsn, MemberState, OpKind, OpPhase, Operation, Role, SlotInfo,
    UnreadableRecord, SLOT_PREFIX,
};
use crate::ops::{PROMOTE_LEASE_WAIT_MS, SWITCHOVER_TIMEOUT_MS};
use crate::render::Upstream;
use crate::sync::{SyncNames, SyncRecord, SyncStep, WalSender};
use std::collections::BTreeMap;

mod display;
pub use quiet::{quiet_plan, Quiet};
mod operation;
mod primary;
mod quiet;
mod slots;
mod standby;
mod synchronous;

use operation::*;
use primary::*;
use slots::*;
use standby::*;
use synchronous::*;

/// What the store says about the cluster (`pgbaton_store::read_view` reads it).
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    /// The `initialize` key: claimed by a member during bootstrap, then the system
    /// identifier.
    pub initialize: Option<Identity>,
    /// The unexpired leader lease, if any.
    pub leader: Option<Leader>,
    pub members: Vec<MemberState>,
    /// The current operation (in flight or finished).
    pub op: Option<Operation>,
    /// The operator paused the cluster: no automatic action (operations still run).
    pub paused: bool,
    /// The synchronous set the leader recorded (`None`: asynchronous replication). A record
    /// the store holds but pgbaton cannot read is a blocked one: it proves nobody.
    pub sync: Option<SyncRecord>,
    /// The record's text as stored (the compare-and-set's expected value).
    pub sync_text: Option<String>,
    /// The cluster's config record as stored (`pgbaton_core::cluster_config`), if any.
    pub config_text: Option<String>,
    /// Member records that could not be read: not in `members`.
    pub unreadable: Vec<UnreadableRecord>,
}

impl ClusterView {
    /// The slot names of every registered member, readable or not: the slots kept.
    pub fn member_slot_names(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| m.name.as_str())
            .chain(self.unreadable.iter().filter_map(|u| u.member()))
            .map(slot_name_for)
            .collect()
    }

    /// The registered member named `name`.
    pub fn member(&self, name: &str) -> Option<&MemberState> {
        self.members.iter().find(|m| m.name == name)
    }

    /// The member holding the leader lease (as read: the view holds only an unexpired one).
    pub fn leader_member(&self) -> Option<&MemberState> {
        self.member(&self.leader.as_ref()?.member)
    }
}

/// What is in the data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataDir {
    /// Missing or empty: something may be created in it.
    Empty,
    /// A PostgreSQL data directory.
    Initialized {
        system_id: String,
        /// `standby.signal` is present.
        standby: bool,
    },
    /// Not empty, and not a PostgreSQL data directory pgbaton can read.
    Foreign(String),
}

/// Whether and how the local PostgreSQL runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgRun {
    Stopped,
    /// Running, answering SQL, out of recovery: it accepts writes.
    Primary,
    /// Running, answering SQL, in recovery.
    Standby {
        /// The upstream its configuration points at (member name), if any.
        upstream: Option<String>,
    },
    /// A postmaster runs but does not answer SQL (starting up, shutting down, overloaded).
    NotAnswering,
}

impl PgRun {
    /// Running and answering SQL, as a primary or a standby.
    pub fn running(&self) -> bool {
        matches!(self, PgRun::Primary | PgRun::Standby { .. })
    }

    /// The upstream a running standby's configuration points at.
    pub fn upstream(&self) -> Option<&str> {
        match self {
            PgRun::Standby { upstream } => upstream.as_deref(),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LocalView {
    pub name: String,
    pub data: DataDir,
    pub pg: PgRun,
    /// Primary: current WAL LSN; standby: last replayed (when running).
    pub lsn: Option<Lsn>,
    /// Physical slots on the local PostgreSQL (when running).
    pub slots: Vec<SlotInfo>,
    /// When the agent first saw each orphan slot (pgbaton-named, no member), wall-clock ms.
    pub orphans_since: BTreeMap<String, u64>,
    /// How long an orphan slot is kept before it is dropped.
    pub orphan_grace_ms: u64,
    /// The local timeline (running: from SQL; stopped: from pg_control).
    pub timeline: Option<u32>,
    /// Standby: last WAL position received (when running).
    pub receive_lsn: Option<Lsn>,
    /// Failover settings and this member's tags.
    pub policy: Policy,
    /// A failsafe confirmation this member gave the primary (it must not take the lease).
    pub failsafe: Option<Failsafe>,
    /// Wall-clock ms since this member's primary PostgreSQL has been down (crashed, not asked
    /// to stop) and not yet back as a writable primary.
    pub crashed_since_ms: Option<u64>,
    /// Why the last automatic rejoin failed (pg_rewind could not rewind): not retried.
    pub rejoin_failed: Option<String>,
    /// Standby: since when (wall-clock ms) its WAL receiver has not been streaming; kept
    /// while PostgreSQL is stopped.
    pub not_streaming_since_ms: Option<u64>,
    /// Since when (wall-clock ms) this member has seen no leader lease: reports made after
    /// it were made after the old primary's fence (synchronous failover counts only those).
    pub leaderless_since_ms: Option<u64>,
    /// Primary: its `synchronous_standby_names` (when running).
    pub sync_names: SyncNames,
    /// Primary: its WAL senders (when running).
    pub senders: Vec<WalSender>,
}

impl LocalView {
    /// A view with no SQL-level detail (PostgreSQL stopped or not probed).
    pub fn new(name: &str, data: DataDir, pg: PgRun) -> LocalView {
        LocalView {
            name: name.to_string(),
            data,
            pg,
            lsn: None,
            slots: vec![],
            orphans_since: BTreeMap::new(),
            orphan_grace_ms: 300_000,
            timeline: None,
            receive_lsn: None,
            policy: Policy::default(),
            failsafe: None,
            crashed_since_ms: None,
            rejoin_failed: None,
            not_streaming_since_ms: None,
            leaderless_since_ms: None,
            sync_names: SyncNames::Off,
            senders: vec![],
        }
    }
}

/// One step for the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create the `initialize` key as `value` (compare-and-set: lost if it exists).
    ClaimInitialize { value: String },
    /// initdb (when empty), start as primary, create roles and databases, then replace the
    /// claim with the system identifier. Resumable after a crash.
    Bootstrap,
    /// Take the leader lease (compare-and-set: lost if another member holds it).
    AcquireLease,
    /// Extend the lease (lost if it expired or was taken: then stop acting as leader).
    RenewLease,
    /// Give the lease up (PostgreSQL no longer runs writable here), for the reason given.
    ReleaseLease { reason: String },
    /// pg_basebackup from the primary into the empty data directory, using this member's slot.
    Clone { from: Upstream },
    /// Write pgbaton's config files and start PostgreSQL.
    Start { upstream: Option<Upstream> },
    /// Point a running standby at a new upstream (config rewrite and reload).
    Follow { upstream: Option<Upstream> },
    /// Stop PostgreSQL (fast mode), for the reason given.
    Stop { reason: String },
    /// On the primary: make sure these physical slots exist.
    EnsureSlots { names: Vec<String> },
    /// On the primary: drop these physical slots (only ever pgbaton-named ones).
    DropSlots { names: Vec<String> },
    /// On a standby that may be promoted: move these slots forward to these positions (the
    /// members' last reported ones), so that it keeps the WAL each member needs without
    /// keeping more.
    AdvanceSlots { targets: Vec<(String, Lsn)> },
    /// Promote the running standby and wait until it accepts writes.
    Promote,
    /// Leader: write the synchronous set's record (compare-and-set on the view's text,
    /// only while holding the lease). `barrier`: first have a commit acknowledged under
    /// PostgreSQL's current `synchronous_standby_names`.
    WriteSyncSet { record: SyncRecord, barrier: bool },
    /// Leader: delete the synchronous set's record (synchronous replication turned off).
    ClearSyncSet,
    /// Leader: set `synchronous_standby_names`, reload, and wait until every WAL sender
    /// loaded it. Refused unless the stored record covers the new list.
    SetSyncNames { names: SyncNames },
    /// PostgreSQL is stopped and its data is a former primary's: pg_rewind it from `upstream`
    /// if it diverged, configure it as a standby of `upstream`, start it.
    Rejoin { upstream: Upstream },
    /// Stop, re-clone from `from` into a scratch directory, swap it in, start (asked for).
    Reinit { from: Upstream },
    /// Stop PostgreSQL (fast) and start it again in its role (asked for).
    Restart { upstream: Option<Upstream> },
    /// Make PostgreSQL re-read its configuration files.
    Reload,
    /// Stop PostgreSQL, deregister, delete the data directory when `purge`; the agent exits.
    RemoveSelf { op: Operation, purge: bool },
    /// Switchover, on the old primary: stop cleanly, record the shutdown checkpoint in the
    /// operation (phase `demoted`), release the lease.
    StopForSwitchover { op: Operation },
    /// Move the operation to `phase` (compare-and-set on its id and phase).
    AdvanceOp {
        op: Operation,
        phase: OpPhase,
        message: String,
    },
    /// Finish the operation (done or failed) and record it in the history.
    FinishOp {
        op: Operation,
        ok: bool,
        message: String,
    },
    /// Nothing to do now but wait, for the reason given (shown to the operator).
    Wait { reason: String },
    /// A condition the agent must not resolve by itself: report it, do nothing else.
    Fail { reason: String },
}

/// The claim value a bootstrapping member writes into the `initialize` key.
pub fn claim_value(member: &str) -> String {
    Identity::claim(member).to_string()
}

/// The leader as an upstream to stream from, when it has published where it is.
fn leader_upstream(view: &ClusterView, me: &str) -> Option<Upstream> {
    let l = view.leader.as_ref()?;
    if l.member == me {
        return None;
    }
    let m = view.member(&l.member)?;
    Some(Upstream {
        member: m.name.clone(),
        host: m.host.clone(),
        port: m.port,
    })
}

/// Does `upstream` report a slot for `me`?
fn has_my_slot(view: &ClusterView, upstream: &str, me: &str) -> bool {
    let slot = slot_name_for(me);
    view.member(upstream)
        .is_some_and(|m| m.slots.iter().any(|s| s.name == slot))
}

/// The leader as an upstream, once it has published its address and a slot for `me`;
/// otherwise what to wait for.
fn ready_upstream(view: &ClusterView, me: &str) -> Result<Upstream, String> {
    let Some(l) = view.leader.as_ref().filter(|l| l.member != me) else {
        return Err("no primary holds the leader lease".into());
    };
    let Some(up) = leader_upstream(view, me) else {
        return Err(format!(
            "primary {} has not published its address yet",
            l.member
        ));
    };
    if !has_my_slot(view, &up.member, me) {
        return Err(format!(
            "waiting for primary {} to create replication slot {}",
            up.member,
            slot_name_for(me)
        ));
    }
    Ok(up)
}

/// Slots on the leader that belong to no member: (pgbaton-named, foreign).
pub fn orphan_slots(wanted: &[String], slots: &[SlotInfo]) -> (Vec<String>, Vec<String>) {
    let mut ours = Vec::new();
    let mut foreign = Vec::new();
    for s in slots {
        if wanted.contains(&s.name) {
            continue;
        }
        if s.name.starts_with(SLOT_PREFIX) {
            ours.push(s.name.clone());
        } else {
            foreign.push(s.name.clone());
        }
    }
    (ours, foreign)
}

/// The operation in flight at `now_ms`, if any (a scheduled one only from its time on).
fn in_flight(view: &ClusterView, now_ms: u64) -> Option<&Operation> {
    view.op.as_ref().filter(|o| o.in_flight(now_ms))
}

/// The decision for one loop. `now_ms` is wall-clock ms (lease expiry is compared with it).
pub fn decide(view: &ClusterView, local: &LocalView, now_ms: u64) -> Vec<Action> {
    let plan = take_over_sync_set(view, &local.name, decide_unchecked(view, local, now_ms));
    let plan = clear_inherited_names(view, local, plan);
    debug_assert!(
        check_plan(&plan).is_ok(),
        "{}: {plan:?}",
        check_plan(&plan).unwrap_err()
    );
    plan
}

/// The rules every plan keeps (asserted in debug builds, checked by the simulator at every
/// decision): at most one lease action; `Promote` only after taking or renewing the lease
/// in the same plan, so no member promotes itself without holding it.
pub fn check_plan(plan: &[Action]) -> Result<(), String> {
    let is_lease = |a: &Action| {
        matches!(
            a,
            Action::AcquireLease | Action::RenewLease | Action::ReleaseLease { .. }
        )
    };
    if plan.iter().filter(|a| is_lease(a)).count() > 1 {
        return Err("more than one lease action in one plan".into());
    }
    let sync_write = |a: &Action| {
        matches!(
            a,
            Action::WriteSyncSet { .. } | Action::ClearSyncSet | Action::SetSyncNames { .. }
        )
    };
    if let Some(i) = plan.iter().position(sync_write) {
        let leased = plan[..i]
            .iter()
            .any(|a| matches!(a, Action::AcquireLease | Action::RenewLease));
        if !leased {
            return Err("a synchronous set change without holding the lease".into());
        }
    }
    if let Some(i) = plan.iter().position(|a| matches!(a, Action::Promote)) {
        let leased = plan[..i]
            .iter()
            .any(|a| matches!(a, Action::AcquireLease | Action::RenewLease));
        if !leased {
            return Err("Promote without taking or renewing the lease first".into());
        }
    }
    Ok(())
}

fn decide_unchecked(view: &ClusterView, local: &LocalView, now_ms: u64) -> Vec<Action> {
    // An expired lease is no lease, everywhere below.
    let unexpired;
    let view = if view.leader.as_ref().is_some_and(|l| l.expires_ms <= now_ms) {
        unexpired = ClusterView {
            leader: None,
            ..view.clone()
        };
        &unexpired
    } else {
        view
    };
    match (&local.data, &view.initialize) {
        (DataDir::Foreign(what), _) => {
            return vec![Action::Fail {
                reason: format!(
                "the data directory is not empty and is not a PostgreSQL data directory ({what}); \
                     pgbaton will not touch it: move it away or point data_dir elsewhere"
            ),
            }]
        }
        (DataDir::Initialized { system_id, .. }, Some(Identity::SystemId(ours)))
            if ours != system_id =>
        {
            return vec![Action::Fail {
                reason: format!(
                    "the data directory belongs to another cluster (system identifier {system_id}, \
                     this cluster's is {ours}); pgbaton will not touch it: move it away, or re-clone \
                     this member explicitly",
                ),
            }]
        }
        // A system identifier no data directory has: nothing may start, clone or bootstrap
        // against it.
        (_, Some(Identity::Malformed(text))) => {
            return vec![Action::Fail {
                reason: format!(
                    "the store's initialize key holds {text:?}, which is neither a system \
                     identifier nor a claim (claimed:<member>); pgbaton will not act on a cluster \
                     whose identity it cannot read: put the cluster's system identifier back in \
                     the key"
                ),
            }]
        }
        _ => {}
    }
    if let Some(op) = in_flight(view, now_ms) {
        if let Some(actions) = decide_op(op, view, local, now_ms) {
            return actions;
        }
    }
    let actions = decide_automatic(view, local, now_ms);
    if view.paused {
        return paused(actions);
    }
    actions
}

/// While paused, automatic actions become waits that say what is held back. The lease is
/// still renewed (nobody takes over a paused cluster's primary), slots are still created,
/// a running standby still follows the lease holder (the operator's promote would otherwise
/// leave the others streaming from nobody), and a writable primary beside another leader is
/// still stopped (one writer, always).
fn paused(actions: Vec<Action>) -> Vec<Action> {
    let held: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Start { .. } => Some("starting PostgreSQL"),
            Action::Clone { .. } => Some("cloning"),
            Action::Bootstrap | Action::ClaimInitialize { .. } => Some("bootstrapping"),
            Action::AcquireLease => Some("taking the leader lease"),
            Action::DropSlots { .. } => Some("dropping orphan slots"),
            Action::Promote => Some("promoting"),
            Action::Rejoin { .. } => Some("rejoining"),
            Action::Reinit { .. } => Some("re-cloning"),
            Action::ReleaseLease { .. } => Some("handing the leader lease over"),
            _ => None,
        })
        .map(String::from)
        .collect();
    let mut kept: Vec<Action> = actions
        .into_iter()
        .filter(|a| {
            matches!(
                a,
                Action::RenewLease
                    | Action::EnsureSlots { .. }
                    | Action::Follow { .. }
                    | Action::Stop { .. }
                    | Action::Wait { .. }
                    | Action::Fail { .. }
            )
        })
        .collect();
    if !held.is_empty() {
        kept.push(Action::Wait {
            reason: format!(
                "the cluster is paused (`pgbaton resume` ends it): not {}",
                held.join(", ")
            ),
        });
    }
    kept
}

/// The decision when no operation asks anything of this member.
fn decide_automatic(view: &ClusterView, local: &LocalView, now_ms: u64) -> Vec<Action> {
    let me = local.name.as_str();
    let claimed_by_me = matches!(&view.initialize, Some(Identity::Claimed { by }) if by == me);
    match &local.data {
        DataDir::Foreign(_) => unreachable!("handled above"),
        DataDir::Empty => match &view.initialize {
            None => match member_with_data(view, me, now_ms) {
                // A store that lost its keys: the members with data re-establish the
                // cluster. Bootstrapping here would make a new one (initdb), or, with
                // `[bootstrap]`, restore an old point in time under the same system
                // identifier, which the members with data would then be rewound to.
                Some(other) => vec![Action::Wait {
                    reason: format!(
                        "the store has no cluster identity and member {other} has data: \
                         waiting for it to re-establish the cluster (the former primary does; \
                         when it is lost, promote one standby by hand: pg_ctl promote)"
                    ),
                }],
                None => vec![
                    Action::ClaimInitialize {
                        value: claim_value(me),
                    },
                    Action::Bootstrap,
                ],
            },
            Some(_) if claimed_by_me => vec![Action::Bootstrap],
            Some(Identity::Claimed { by }) => vec![Action::Wait {
                reason: format!("member {by} is bootstrapping the cluster"),
            }],
            // (A malformed identity is refused above; here it would count as a system id.)
            Some(Identity::SystemId(_) | Identity::Malformed(_)) => {
                match ready_upstream(view, me) {
                    Ok(up) => vec![Action::Clone { from: up }],
                    Err(reason) => vec![Action::Wait { reason }],
                }
            }
        },
        DataDir::Initialized { system_id, standby } => {
            if claimed_by_me {
                // Our own bootstrap was interrupted after initdb: resume it.
                return vec![Action::Bootstrap];
            }
            if view.initialize.is_none() {
                // A store that lost its keys (or a data directory brought to a new store):
                // the member whose data is a primary's re-establishes the cluster's identity.
                if *standby {
                    return vec![Action::Wait {
                        reason: "the store has no cluster identity yet; waiting for the primary"
                            .into(),
                    }];
                }
                return vec![Action::ClaimInitialize {
                    value: system_id.clone(),
                }];
            }
            if *standby {
                decide_standby(view, local, me, now_ms)
            } else {
                decide_primary_data(view, local, now_ms)
            }
        }
    }
}

/// Another member, alive by the store, whose report names a system identifier (it has data).
fn member_with_data<'a>(view: &'a ClusterView, me: &str, now_ms: u64) -> Option<&'a str> {
    view.members
        .iter()
        .find(|m| {
            m.name != me
                && m.system_id.is_some()
                && now_ms.saturating_sub(m.seen()) <= crate::ops::STALE_MS
        })
        .map(|m| m.name.as_str())
}

/// A standby that has not streamed for this many lease TTLs while a leader runs is
/// rejoined with pg_rewind: it may have WAL the new primary's timeline does not have (it was
/// ahead of the member that was promoted), and PostgreSQL then never streams by itself.
pub const STUCK_STANDBY_TTLS: u64 = 3;

/// The role a member has, as seen from its data and PostgreSQL (for publishing).
pub fn role_of(local: &LocalView) -> Role {
    match (&local.pg, &local.data) {
        (PgRun::Primary, _) => Role::Primary,
        (PgRun::Standby { .. }, _) => Role::Standby,
        (_, DataDir::Initialized { standby, .. }) => {
            if *standby {
                Role::Standby
            } else {
                Role::Primary
            }
        }
        _ => Role::Unknown,
    }
}

#[cfg(test)]
mod tests;
