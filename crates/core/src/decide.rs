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
//! - a former primary takes a free lease only when no member reports a newer timeline, and not
//!   when it gave up restarting its PostgreSQL;
//! - a former primary whose PostgreSQL is stopped rejoins the leader by itself (pg_rewind when
//!   it diverged); it is re-cloned only when `failover.reclone_on_rewind_failure` says so;
//! - a data directory of another cluster is never touched: the member fails with the reason;
//! - a data directory is never wiped unless an operation asked for it (reinit, remove --purge);
//! - a standby moves to a new upstream only once its slot exists there;
//! - slots pgbaton did not name are never dropped.

use crate::failover::{self, Failsafe, Policy};
use crate::model::{
    slot_name_for, Leader, Lsn, MemberState, OpKind, OpPhase, Operation, Role, SlotInfo,
    SLOT_PREFIX,
};
use crate::ops::{PROMOTE_LEASE_WAIT_MS, SWITCHOVER_TIMEOUT_MS};
use crate::render::Upstream;
use std::collections::BTreeMap;

/// What the store says about the cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    /// The `initialize` key: `claimed:<member>` during bootstrap, then the system identifier.
    pub initialize: Option<String>,
    /// The unexpired leader lease, if any.
    pub leader: Option<Leader>,
    pub members: Vec<MemberState>,
    /// The current operation (in flight or finished).
    pub op: Option<Operation>,
    /// The operator paused the cluster: no automatic action (operations still run).
    pub paused: bool,
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
    /// Running and answering SQL.
    Running {
        in_recovery: bool,
        /// Standby only: the upstream its configuration points at (member name), if any.
        upstream: Option<String>,
    },
    /// A postmaster runs but does not answer SQL (starting up, shutting down, overloaded).
    NotAnswering,
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
    format!("claimed:{member}")
}

fn member<'a>(view: &'a ClusterView, name: &str) -> Option<&'a MemberState> {
    view.members.iter().find(|m| m.name == name)
}

/// The leader as an upstream to stream from, when it has published where it is.
fn leader_upstream(view: &ClusterView, me: &str) -> Option<Upstream> {
    let l = view.leader.as_ref()?;
    if l.member == me {
        return None;
    }
    let m = member(view, &l.member)?;
    Some(Upstream {
        member: m.name.clone(),
        host: m.host.clone(),
        port: m.port,
    })
}

/// Does `upstream` report a slot for `me`?
fn has_my_slot(view: &ClusterView, upstream: &str, me: &str) -> bool {
    let slot = slot_name_for(me);
    member(view, upstream).is_some_and(|m| m.slots.iter().any(|s| s.name == slot))
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
pub fn orphan_slots(members: &[MemberState], slots: &[SlotInfo]) -> (Vec<String>, Vec<String>) {
    let wanted: Vec<String> = members.iter().map(|m| slot_name_for(&m.name)).collect();
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

/// The operation in flight, if any.
fn in_flight(view: &ClusterView) -> Option<&Operation> {
    view.op.as_ref().filter(|o| !o.phase.finished())
}

/// The decision for one loop. `now_ms` is wall-clock ms (lease expiry is compared with it).
pub fn decide(view: &ClusterView, local: &LocalView, now_ms: u64) -> Vec<Action> {
    let plan = decide_unchecked(view, local, now_ms);
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
    // The cluster's identity, once bootstrap has published it.
    let cluster_sysid = view
        .initialize
        .as_deref()
        .filter(|v| !v.starts_with("claimed:"));

    match &local.data {
        DataDir::Foreign(what) => {
            return vec![Action::Fail {
                reason: format!(
                "the data directory is not empty and is not a PostgreSQL data directory ({what}); \
                     pgbaton will not touch it: move it away or point data_dir elsewhere"
            ),
            }]
        }
        DataDir::Initialized { system_id, .. } if cluster_sysid.is_some_and(|s| s != system_id) => {
            return vec![Action::Fail {
                reason: format!(
                    "the data directory belongs to another cluster (system identifier {system_id}, \
                     this cluster's is {}); pgbaton will not touch it: move it away, or re-clone \
                     this member explicitly",
                    cluster_sysid.unwrap_or_default()
                ),
            }]
        }
        _ => {}
    }
    if let Some(op) = in_flight(view) {
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
    let my_claim = claim_value(me);
    match &local.data {
        DataDir::Foreign(_) => unreachable!("handled above"),
        DataDir::Empty => match view.initialize.as_deref() {
            None => vec![
                Action::ClaimInitialize { value: my_claim },
                Action::Bootstrap,
            ],
            Some(v) if v == my_claim => vec![Action::Bootstrap],
            Some(v) if v.starts_with("claimed:") => vec![Action::Wait {
                reason: format!(
                    "member {} is bootstrapping the cluster",
                    &v["claimed:".len()..]
                ),
            }],
            Some(_) => match ready_upstream(view, me) {
                Ok(up) => vec![Action::Clone { from: up }],
                Err(reason) => vec![Action::Wait { reason }],
            },
        },
        DataDir::Initialized { system_id, standby } => {
            if view.initialize.as_deref() == Some(my_claim.as_str()) {
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

/// What an operation in flight asks of this member; `None` = nothing special, decide as usual.
fn decide_op(
    op: &Operation,
    view: &ClusterView,
    local: &LocalView,
    now_ms: u64,
) -> Option<Vec<Action>> {
    let me = local.name.as_str();
    let i_lead = view
        .leader
        .as_ref()
        .is_some_and(|l| l.member == me && l.expires_ms > now_ms);
    let other_leader = view
        .leader
        .as_ref()
        .filter(|l| l.member != me && l.expires_ms > now_ms);
    let finish = |ok: bool, message: String| Action::FinishOp {
        op: op.clone(),
        ok,
        message,
    };
    let running_standby = matches!(
        local.pg,
        PgRun::Running {
            in_recovery: true,
            ..
        }
    );
    let running_primary = matches!(
        local.pg,
        PgRun::Running {
            in_recovery: false,
            ..
        }
    );
    match (&op.kind, op.phase) {
        (OpKind::Promote { member }, OpPhase::Requested) if member == me => {
            Some(if running_primary && i_lead {
                vec![finish(true, format!("{me} is the primary"))]
            } else if let Some(l) = other_leader {
                if now_ms.saturating_sub(op.created_ms) > PROMOTE_LEASE_WAIT_MS {
                    vec![finish(
                    false,
                    format!(
                        "{} still renews the leader lease after {} s: its agent is alive, so it is not down. \
                         Use `pgbaton switchover --to {me}` for a planned change",
                        l.member,
                        PROMOTE_LEASE_WAIT_MS / 1000
                    ),
                )]
                } else {
                    vec![Action::Wait {
                        reason: format!("waiting for the lease of {} to expire", l.member),
                    }]
                }
            } else if running_standby {
                vec![
                    Action::AcquireLease,
                    Action::Promote,
                    finish(true, format!("{me} promoted: it accepts writes")),
                ]
            } else {
                return None; // start it as a standby first
            })
        }
        (OpKind::Rejoin { member }, OpPhase::Requested) if member == me => {
            if matches!(local.data, DataDir::Initialized { standby: true, .. }) {
                return Some(vec![finish(true, format!("{me} is a standby"))]);
            }
            if other_leader.is_none() {
                return Some(vec![finish(
                    false,
                    "no primary holds the leader lease: nothing to rejoin".into(),
                )]);
            }
            Some(match (&local.pg, rewind_source(view, me)) {
                (_, Err(reason)) => vec![Action::Wait { reason }],
                (PgRun::Stopped, Ok(up)) => {
                    let msg = format!("{me} rejoined as a standby of {}", up.member);
                    vec![Action::Rejoin { upstream: up }, finish(true, msg)]
                }
                (_, Ok(up)) => vec![Action::Stop {
                    reason: format!("rejoining as a standby of {}", up.member),
                }],
            })
        }
        (OpKind::Reinit { member }, OpPhase::Requested) if member == me => Some(if i_lead {
            vec![finish(
                false,
                format!("{me} is the primary: only a standby can be re-cloned"),
            )]
        } else {
            match ready_upstream(view, me) {
                Ok(up) => {
                    let msg = format!("{me} re-cloned from {}", up.member);
                    vec![Action::Reinit { from: up }, finish(true, msg)]
                }
                Err(reason) => vec![Action::Wait { reason }],
            }
        }),
        (OpKind::Restart { member }, OpPhase::Requested) if member == me => {
            let upstream = if matches!(local.data, DataDir::Initialized { standby: true, .. }) {
                ready_upstream(view, me)
                    .ok()
                    .or_else(|| leader_upstream(view, me))
            } else {
                None
            };
            Some(vec![
                Action::Restart { upstream },
                finish(true, format!("{me}'s PostgreSQL restarted")),
            ])
        }
        (OpKind::Reload { member }, OpPhase::Requested) if member == me => Some(vec![
            Action::Reload,
            finish(
                true,
                format!("{me}'s PostgreSQL reloaded its configuration"),
            ),
        ]),
        (OpKind::Remove { member, purge }, OpPhase::Requested) if member == me => Some(if i_lead {
            vec![finish(
                false,
                format!("{me} is the primary: switch over before removing it"),
            )]
        } else {
            vec![Action::RemoveSelf {
                op: op.clone(),
                purge: *purge,
            }]
        }),
        (OpKind::Remove { member, .. }, OpPhase::Deregistered) if i_lead => {
            let slot = slot_name_for(member);
            let msg = format!("{member} removed; its slot {slot} dropped");
            Some(vec![
                Action::DropSlots { names: vec![slot] },
                finish(true, msg),
            ])
        }
        (OpKind::Switchover { from, .. }, OpPhase::Requested) if from == me => Some(if i_lead {
            vec![Action::StopForSwitchover { op: op.clone() }]
        } else {
            vec![finish(
                false,
                format!("{me} no longer holds the leader lease"),
            )]
        }),
        (OpKind::Switchover { from, to }, OpPhase::Demoted) => {
            let waited_ms = now_ms.saturating_sub(op.updated_ms);
            let target = op.checkpoint_lsn.unwrap_or_default();
            if to == me {
                if local.lsn.is_some_and(|l| l >= target) && running_standby {
                    return Some(vec![
                        Action::AcquireLease,
                        Action::Promote,
                        Action::AdvanceOp {
                            op: op.clone(),
                            phase: OpPhase::Promoted,
                            message: format!("{me} promoted"),
                        },
                    ]);
                }
                if waited_ms > SWITCHOVER_TIMEOUT_MS {
                    return Some(vec![finish(
                        false,
                        format!(
                            "{me} did not reach the old primary's shutdown checkpoint {target} within {} s \
                             (it is at {}); {from} resumes as primary",
                            SWITCHOVER_TIMEOUT_MS / 1000,
                            local.lsn.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into())
                        ),
                    )]);
                }
                return Some(vec![Action::Wait {
                    reason: format!("replaying up to {from}'s shutdown checkpoint {target}"),
                }]);
            }
            if from == me {
                if waited_ms > SWITCHOVER_TIMEOUT_MS + 10_000 {
                    return Some(vec![finish(
                        false,
                        format!("{to} did not take over; {me} resumes as primary"),
                    )]);
                }
                return Some(vec![Action::Wait {
                    reason: format!("waiting for {to} to take over"),
                }]);
            }
            None
        }
        (OpKind::Switchover { from, to }, OpPhase::Promoted) if from == me => {
            Some(match (&local.pg, ready_upstream(view, me)) {
                (_, Err(reason)) => vec![Action::Wait { reason }],
                (PgRun::Stopped, Ok(up)) => {
                    vec![
                        Action::Rejoin { upstream: up },
                        finish(true, format!("switched over from {from} to {to}")),
                    ]
                }
                (_, Ok(up)) => vec![Action::Stop {
                    reason: format!("rejoining as a standby of {}", up.member),
                }],
            })
        }
        _ => None,
    }
}

/// A promote or switchover in flight, recently updated: it decides who leads next, so no
/// member takes the lease on its own meanwhile. One stuck for longer is ignored.
fn holding_op(view: &ClusterView, now_ms: u64) -> Option<&Operation> {
    in_flight(view).filter(|op| {
        matches!(op.kind, OpKind::Promote { .. } | OpKind::Switchover { .. })
            && now_ms.saturating_sub(op.updated_ms) <= SWITCHOVER_TIMEOUT_MS + 10_000
    })
}

/// A promote or switchover in flight decides who leads next: why not to take the lease.
fn op_hold(view: &ClusterView, now_ms: u64) -> Option<String> {
    holding_op(view, now_ms).map(|op| {
        format!(
            "operation {} ({}) is in flight: not taking the lease meanwhile",
            op.id,
            op.kind.name()
        )
    })
}

/// This member promised a live primary (failsafe) not to take the lease: why not to.
fn failsafe_hold(local: &LocalView, now_ms: u64) -> Option<String> {
    let f = local.failsafe.as_ref().filter(|f| f.active(now_ms))?;
    Some(format!(
        "{} confirmed over the API that it still serves as primary (failsafe): not taking \
         the lease for {} ms",
        f.leader,
        f.until_ms.saturating_sub(now_ms)
    ))
}

/// Why this standby should not take the free lease now, if anything holds it back: an
/// operation in flight, a failsafe promise, or a better candidate.
fn failover_hold(view: &ClusterView, local: &LocalView, now_ms: u64) -> Option<String> {
    let me = local.name.as_str();
    if let Some(reason) = op_hold(view, now_ms) {
        return Some(reason);
    }
    if let Some(reason) = stale_view(view, local, now_ms) {
        return Some(reason);
    }
    if let Some(p) = failover::returning_primary(&view.members, &local.name, &local.policy, now_ms)
    {
        return Some(format!(
            "the former primary {} is alive ({}): it takes the lease back",
            p.name, p.state
        ));
    }
    if let Some(reason) = failsafe_hold(local, now_ms) {
        return Some(reason);
    }
    let last = failover::last_primary(&view.members, me);
    let pol = &local.policy;
    let mine = match failover::eligible(
        me,
        pol.nofailover,
        pol.failover_priority,
        local.timeline,
        local.receive_lsn.max(local.lsn),
        &last,
        pol.max_lag_bytes,
    ) {
        Ok(c) => c,
        Err(why) => return Some(format!("not a failover candidate: {why}")),
    };
    let mut all = failover::other_candidates(&view.members, me, &last, pol, now_ms);
    all.push(mine);
    failover::rank(&mut all);
    match all.first() {
        Some(best) if best.name != me => Some(format!(
            "{} is a better failover candidate (at {}, priority {})",
            best.name, best.lsn, best.priority
        )),
        _ => None,
    }
}

/// A standby that has not streamed for this many lease TTLs while a leader runs is
/// rejoined with pg_rewind: it may have WAL the new primary's timeline does not have (it was
/// ahead of the member that was promoted), and PostgreSQL then never streams by itself.
pub const STUCK_STANDBY_TTLS: u64 = 3;

fn stuck_standby(view: &ClusterView, local: &LocalView, now_ms: u64) -> Option<u64> {
    view.leader.as_ref().filter(|l| l.member != local.name)?;
    let since = local.not_streaming_since_ms?;
    let stuck = now_ms.saturating_sub(since);
    (stuck >= STUCK_STANDBY_TTLS * local.policy.ttl_ms).then_some(stuck)
}

fn decide_standby(view: &ClusterView, local: &LocalView, me: &str, now_ms: u64) -> Vec<Action> {
    let stuck = stuck_standby(view, local, now_ms);
    match &local.pg {
        PgRun::Stopped if stuck.is_some() => rejoin_leader(view, local),
        PgRun::Running {
            in_recovery: true,
            upstream: Some(up),
        } if stuck.is_some() && view.leader.as_ref().is_some_and(|l| l.member == *up) => {
            vec![Action::Stop {
                reason: format!(
                    "not streaming from {up} for {} s (diverged from its timeline?): stopping to rejoin it with pg_rewind",
                    stuck.unwrap_or_default() / 1000
                ),
            }]
        }
        PgRun::Stopped => vec![Action::Start {
            upstream: ready_upstream(view, me)
                .ok()
                .or_else(|| leader_upstream(view, me)),
        }],
        PgRun::NotAnswering => vec![Action::Wait {
            reason: "PostgreSQL is starting or busy".into(),
        }],
        PgRun::Running {
            in_recovery: true, ..
        } if view.leader.as_ref().is_some_and(|l| l.member == me) => {
            // This standby holds the lease (a promotion that did not finish): promote.
            vec![Action::RenewLease, Action::Promote]
        }
        PgRun::Running {
            in_recovery: true, ..
        } if view.leader.is_none() => match failover_hold(view, local, now_ms) {
            Some(reason) => vec![Action::Wait { reason }],
            None => vec![Action::AcquireLease, Action::Promote],
        },
        PgRun::Running {
            in_recovery: true,
            upstream,
        } => {
            // Follow the leader when it is known and differs from what we stream from, once
            // our slot exists there.
            match leader_upstream(view, me) {
                Some(u) if upstream.as_deref() != Some(u.member.as_str()) => {
                    match ready_upstream(view, me) {
                        Ok(u) => vec![Action::Follow { upstream: Some(u) }],
                        Err(reason) => vec![Action::Wait { reason }],
                    }
                }
                // Following the leader. A standby that may be promoted keeps a slot for
                // every other member, advanced to where that member is, so that after a
                // failover each of them finds the WAL it needs (invariant 5).
                _ if !local.policy.nofailover && local.policy.failover_priority > 0 => {
                    let mut actions = slot_plan(view, local, now_ms);
                    let targets = slot_advances(view, local);
                    if !targets.is_empty() {
                        actions.push(Action::AdvanceSlots { targets });
                    }
                    actions
                }
                _ => vec![],
            }
        }
        PgRun::Running {
            in_recovery: false, ..
        } => match view.leader.as_ref() {
            // standby.signal is there but PostgreSQL runs writable: someone promoted it by
            // hand. It must not stay writable beside the leader.
            Some(l) if l.member != me => vec![Action::Stop {
                reason: format!(
                    "PostgreSQL runs writable while {} holds the leader lease",
                    l.member
                ),
            }],
            _ => vec![Action::Wait {
                reason: "PostgreSQL runs writable on a standby's data directory".into(),
            }],
        },
    }
}

fn decide_primary_data(view: &ClusterView, local: &LocalView, now_ms: u64) -> Vec<Action> {
    let me = local.name.as_str();
    let lease = view.leader.as_ref().filter(|l| l.expires_ms > now_ms);
    let i_lead = lease.is_some_and(|l| l.member == me);
    if let Some(l) = lease.filter(|l| l.member != me) {
        // A former primary while another member leads: it must not run writable; once
        // stopped, it rejoins the leader as a standby (pg_rewind when it diverged).
        return match local.pg {
            PgRun::Running {
                in_recovery: false, ..
            }
            | PgRun::NotAnswering => vec![Action::Stop {
                reason: format!(
                    "{} holds the leader lease; this member's data is a former primary's",
                    l.member
                ),
            }],
            _ => rejoin_leader(view, local),
        };
    }
    // PostgreSQL has been down for too long despite restarts: hand over to a standby, if one
    // can take over (otherwise keep trying: a primary that may come back beats none).
    let gave_up = local.crashed_since_ms.is_some_and(|since| {
        now_ms.saturating_sub(since) >= local.policy.primary_restart_timeout_ms
    }) && !matches!(
        local.pg,
        PgRun::Running {
            in_recovery: false,
            ..
        }
    );
    if gave_up {
        let last = failover::LastPrimary {
            name: Some(me.to_string()),
            timeline: local.timeline,
            lsn: view
                .members
                .iter()
                .find(|m| m.name == me)
                .and_then(|m| m.lsn),
        };
        let others = failover::other_candidates(&view.members, me, &last, &local.policy, now_ms);
        if let Some(best) = others.first() {
            let why = format!(
                "PostgreSQL has not come back within timing.primary_restart_timeout_ms ({} ms)",
                local.policy.primary_restart_timeout_ms
            );
            let mut actions = vec![];
            if local.pg != PgRun::Stopped {
                actions.push(Action::Stop {
                    reason: why.clone(),
                });
            }
            if i_lead {
                actions.push(Action::ReleaseLease {
                    reason: format!("{why}: {} can take over", best.name),
                });
            }
            actions.push(Action::Wait {
                reason: format!("{why}: waiting for {} to take over", best.name),
            });
            return actions;
        }
    }
    let lease_action = if i_lead {
        Action::RenewLease
    } else {
        // The lease is free: a former primary takes it back only if nobody moved on to a
        // newer timeline and nobody promised a live primary not to.
        if let Some(reason) = former_primary_hold(view, local, now_ms) {
            if matches!(
                local.pg,
                PgRun::Running {
                    in_recovery: false,
                    ..
                } | PgRun::NotAnswering
            ) {
                // Writable without the lease, and not to take it back: stop (one writer).
                return vec![Action::Stop { reason }];
            }
            return vec![Action::Wait { reason }];
        }
        Action::AcquireLease
    };
    match local.pg {
        PgRun::Stopped => vec![lease_action, Action::Start { upstream: None }],
        PgRun::NotAnswering => vec![
            lease_action,
            Action::Wait {
                reason: "PostgreSQL is starting or busy".into(),
            },
        ],
        PgRun::Running {
            in_recovery: false, ..
        } => {
            let mut actions = vec![lease_action];
            actions.extend(slot_plan(view, local, now_ms));
            actions
        }
        PgRun::Running {
            in_recovery: true, ..
        } => {
            // A primary's data dir running in recovery: it is still finishing crash recovery.
            vec![
                lease_action,
                Action::Wait {
                    reason: "PostgreSQL is in recovery".into(),
                },
            ]
        }
    }
}

/// Why a member with a former primary's data must not take the free lease, if anything
/// holds it back.
fn former_primary_hold(view: &ClusterView, local: &LocalView, now_ms: u64) -> Option<String> {
    let me = local.name.as_str();
    if let Some(reason) = op_hold(view, now_ms) {
        return Some(reason);
    }
    // (A primary still running writable, e.g. after a store outage, takes its lease back
    // rather than stopping: the compare-and-set keeps that safe.)
    if let Some(reason) = stale_view(view, local, now_ms).filter(|_| {
        matches!(
            local.pg,
            PgRun::Stopped
                | PgRun::Running {
                    in_recovery: true,
                    ..
                }
        )
    }) {
        return Some(reason);
    }
    if let Some(reason) = failsafe_hold(local, now_ms) {
        return Some(reason);
    }
    if let (Some(newest), Some(mine)) =
        (failover::newest_timeline(&view.members, me), local.timeline)
    {
        if newest > mine {
            return Some(format!(
                "another member is on timeline {newest}, newer than this former primary's {mine}: \
                 waiting for a leader to rejoin"
            ));
        }
    }
    None
}

/// A free lease is taken only on a fresh view: this member's own last report (published at
/// the end of its previous loop, before this view was read) must be younger than the lease
/// TTL. An agent stalled between reading the view and deciding (SIGSTOP, a long pause)
/// would otherwise act on members' timelines and positions from before the stall, and take
/// the lease back on an old timeline (simulator seed 13610).
fn stale_view(view: &ClusterView, local: &LocalView, now_ms: u64) -> Option<String> {
    let mine = member(view, &local.name)?;
    let age = now_ms.saturating_sub(mine.updated_ms);
    (age > local.policy.ttl_ms).then(|| {
        format!(
            "this view of the cluster is stale (this member's own report in it is {age} ms old): \
             not taking the lease before reading it again"
        )
    })
}

/// The leader as a source to rewind from: ready (address, slot) and reporting itself as a
/// running primary, which it does only after its post-promotion CHECKPOINT (pg_rewind reads
/// the source's timeline from its last checkpoint). A failover candidate has everyone's
/// slots before it is promoted, so the slot alone does not say the promotion is complete.
fn rewind_source(view: &ClusterView, me: &str) -> Result<Upstream, String> {
    let up = ready_upstream(view, me)?;
    match member(view, &up.member) {
        Some(m) if m.role == Role::Primary && m.state == crate::model::MemberStatus::Running => {
            Ok(up)
        }
        _ => Err(format!(
            "waiting for {} to report itself as a running primary",
            up.member
        )),
    }
}

/// A former primary, PostgreSQL stopped, while another member leads: rejoin it.
fn rejoin_leader(view: &ClusterView, local: &LocalView) -> Vec<Action> {
    let me = local.name.as_str();
    let up = match rewind_source(view, me) {
        Ok(up) => up,
        Err(reason) => return vec![Action::Wait { reason }],
    };
    match &local.rejoin_failed {
        None => vec![Action::Rejoin { upstream: up }],
        Some(_) if local.policy.reclone_on_rewind_failure => vec![Action::Reinit { from: up }],
        Some(why) => vec![Action::Wait {
            reason: format!(
                "rejoining {} failed ({why}); pgbaton does not wipe data on its own: \
                 `pgbaton reinit {me}` re-clones it (or set failover.reclone_on_rewind_failure)",
                up.member
            ),
        }],
    }
}

/// Slots of this standby to move forward: each other member's slot, to that member's last
/// reported position (never beyond this standby's own, never backwards).
fn slot_advances(view: &ClusterView, local: &LocalView) -> Vec<(String, Lsn)> {
    let mine = local.lsn.unwrap_or_default();
    view.members
        .iter()
        .filter(|m| m.name != local.name)
        .filter_map(|m| {
            let name = slot_name_for(&m.name);
            let slot = local.slots.iter().find(|s| s.name == name)?;
            let target = m.lsn?.min(mine);
            (slot.restart_lsn.is_some_and(|r| r < target)).then_some((name, target))
        })
        .collect()
}

/// The leader's slots (and a failover candidate's): one per other member; pgbaton-named orphans dropped after the grace
/// period (never while active); foreign slots left alone.
fn slot_plan(view: &ClusterView, local: &LocalView, now_ms: u64) -> Vec<Action> {
    let me = local.name.as_str();
    let names: Vec<String> = view
        .members
        .iter()
        .filter(|m| m.name != me)
        .map(|m| slot_name_for(&m.name))
        .collect();
    let mut actions = vec![Action::EnsureSlots { names }];
    let (orphans, _foreign) = orphan_slots(&view.members, &local.slots);
    let expired: Vec<String> = orphans
        .into_iter()
        .filter(|name| {
            let active = local.slots.iter().any(|s| &s.name == name && s.active);
            let since = local.orphans_since.get(name).copied().unwrap_or(now_ms);
            !active && now_ms.saturating_sub(since) >= local.orphan_grace_ms
        })
        .collect();
    if !expired.is_empty() {
        actions.push(Action::DropSlots { names: expired });
    }
    actions
}

/// The role a member has, as seen from its data and PostgreSQL (for publishing).
pub fn role_of(local: &LocalView) -> Role {
    match (&local.pg, &local.data) {
        (PgRun::Running { in_recovery, .. }, _) => {
            if *in_recovery {
                Role::Standby
            } else {
                Role::Primary
            }
        }
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
#[path = "decide_tests.rs"]
mod tests;
