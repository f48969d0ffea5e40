//! The steps of an operation in flight (switchover, promote, rejoin, reinit, remove,
//! restart, reload) as they concern this member, and what an operation holds back.

use super::*;

/// What an operation in flight asks of this member; `None` = nothing special, decide as usual.
pub(super) fn decide_op(
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
    let running_standby = matches!(local.pg, PgRun::Standby { .. });
    let running_primary = matches!(local.pg, PgRun::Primary);
    if i_lead {
        if let Some(why) = refused_at_its_time(op, view, now_ms) {
            return Some(vec![finish(false, format!("at its scheduled time: {why}"))]);
        }
    }
    match (&op.kind, op.phase) {
        (OpKind::Promote { member, force }, OpPhase::Requested) if member == me => {
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
                // Checked when posted, and again now: the member may have fallen behind since
                // (pinned simulator test `a_stale_promote_is_held_to_the_failover_lag_bar`).
                let sync_refused = sync_refused(view, local, now_ms).filter(|_| !*force);
                let young = now_ms.saturating_sub(op.created_ms) <= PROMOTE_LEASE_WAIT_MS;
                match sync_refused.or_else(|| behind_the_failover_bar(view, local).filter(|_| !*force)) {
                    // The synchronous set's proof may need the others' next reports.
                    Some(why) if young && proof_pending(view, me) => vec![Action::Wait { reason: why }],
                    Some(why) => vec![finish(
                        false,
                        format!("{why}: promoting it would lose commits (ask again with --force to accept that)"),
                    )],
                    None => vec![
                        Action::AcquireLease,
                        Action::Promote,
                        finish(true, format!("{me} promoted: it accepts writes")),
                    ],
                }
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
        // A former primary without the lease must never start as a primary: a restart asked
        // for while it led, carried out after it lost the lease (its node crashed, another
        // member took over), would make two writers (pinned simulator test
        // `a_stale_restart_never_starts_a_former_primary_as_a_primary`).
        (OpKind::Restart { member }, OpPhase::Requested)
            if member == me
                && !i_lead
                && matches!(local.data, DataDir::Initialized { standby: false, .. }) =>
        {
            Some(vec![finish(
                false,
                format!(
                    "{me} is a former primary that does not hold the leader lease: it rejoins \
                     as a standby by itself; restart it once it streams"
                ),
            )])
        }
        (OpKind::Restart { member }, OpPhase::Requested) if member == me => {
            let upstream = if matches!(local.data, DataDir::Initialized { standby: true, .. }) {
                ready_upstream(view, me)
                    .ok()
                    .or_else(|| leader_upstream(view, me))
            } else {
                None
            };
            let restart = [
                Action::Restart { upstream },
                finish(true, format!("{me}'s PostgreSQL restarted")),
            ];
            // The lease holder renews first: that arms its watchdog (an agent just
            // restarted has not yet) and starts the keeper for the restart, so the lease
            // cannot run out while its primary is down and come back to it taken.
            Some(match i_lead {
                true => std::iter::once(Action::RenewLease).chain(restart).collect(),
                false => restart.to_vec(),
            })
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
        // Only a running primary can stop cleanly at a shutdown checkpoint its candidate then
        // replays to; a crashed one is restarted in place by the usual decision instead.
        (OpKind::Switchover { from, .. }, OpPhase::Requested)
            if from == me && i_lead && !running_primary =>
        {
            Some(vec![finish(
                false,
                format!("{me}'s PostgreSQL is not running: no clean switchover from it"),
            )])
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
                // Promoted already, and its agent restarted before it moved the operation on
                // (pinned simulator test `a_switchover_target_promoted_before_its_agent_crashed_moves_on`):
                // keep the lease and move on, instead of waiting without renewing it.
                let promoted = Action::AdvanceOp {
                    op: op.clone(),
                    phase: OpPhase::Promoted,
                    message: format!("{me} promoted"),
                };
                if running_primary && i_lead {
                    return Some(vec![Action::RenewLease, promoted]);
                }
                // Promoted, then stopped (fenced while its agent was down): it is the new
                // timeline's primary, so it takes the lease and starts as one; the others
                // wait for it (the operation holds failover back).
                let promoted_data =
                    matches!(local.data, DataDir::Initialized { standby: false, .. });
                if promoted_data && local.pg == PgRun::Stopped && view.leader.is_none() {
                    return Some(vec![
                        Action::AcquireLease,
                        Action::Start { upstream: None },
                        promoted,
                    ]);
                }
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
                if local.pg == PgRun::Stopped {
                    // Down (its node restarted): the usual decision starts it as a standby,
                    // so it can replay up to the checkpoint (pinned simulator test
                    // `a_switchover_target_that_restarts_is_started_and_takes_over`).
                    return None;
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
                // The target went quiet (its host was lost right after the request): do not
                // keep the cluster without a primary for the whole timeout. Safe: taking the
                // lease back is still a compare-and-set, and a target that comes back sees a
                // failed operation and does not promote (pinned simulator test
                // `a_switchover_to_a_member_that_is_lost_fails_early`).
                let quiet_ms = 3 * local.policy.ttl_ms;
                let target_quiet = view.members.iter().find(|m| m.name == *to).is_none_or(|m| {
                    now_ms.saturating_sub(m.updated_ms) > quiet_ms
                        && now_ms.saturating_sub(op.updated_ms) > quiet_ms
                });
                if target_quiet && view.leader.is_none() {
                    return Some(vec![finish(
                        false,
                        format!(
                            "{to} has not reported for over {} s; {me} resumes as primary",
                            quiet_ms / 1000
                        ),
                    )]);
                }
                return Some(vec![Action::Wait {
                    reason: format!("waiting for {to} to take over"),
                }]);
            }
            None
        }
        (OpKind::Switchover { from, to }, OpPhase::Promoted) if from == me => {
            let done = format!("switched over from {from} to {to}");
            let waited_ms = now_ms.saturating_sub(op.updated_ms);
            // Already a standby (it rejoined, and finishing failed), or stuck without a
            // leader to rejoin: the switchover itself is done, and an unfinished operation
            // would refuse every later one for good; the automatic rejoin does the rest
            // (pinned simulator test `a_switchover_whose_new_primary_is_lost_still_finishes`).
            let standby = matches!(local.pg, PgRun::Standby { .. });
            if standby || waited_ms > SWITCHOVER_TIMEOUT_MS + 10_000 {
                return Some(vec![finish(true, done)]);
            }
            Some(match (&local.pg, ready_upstream(view, me)) {
                (_, Err(reason)) => vec![Action::Wait { reason }],
                (PgRun::Stopped, Ok(up)) => {
                    vec![Action::Rejoin { upstream: up }, finish(true, done)]
                }
                (_, Ok(up)) => vec![Action::Stop {
                    reason: format!("rejoining as a standby of {}", up.member),
                }],
            })
        }
        _ => None,
    }
}

/// Why this member may not be promoted without `--force`: the bar automatic failover is
/// held to (not behind the last primary's timeline, within `max_lag_bytes` of its last
/// reported position), tags aside.
/// This member is in the synchronous set, and its proof waits only for the others' reports.
fn proof_pending(view: &ClusterView, me: &str) -> bool {
    view.sync
        .as_ref()
        .is_some_and(|r| !r.is_blocked() && r.has(me) && r.quorum > 1)
}

/// The synchronous set does not prove this standby has every acknowledged commit: why.
fn sync_refused(view: &ClusterView, local: &LocalView, now_ms: u64) -> Option<String> {
    let record = view.sync.as_ref()?;
    let mine = local.receive_lsn.max(local.lsn).unwrap_or_default();
    sync_proof_refused(view, local, record, mine, now_ms)
}

fn behind_the_failover_bar(view: &ClusterView, local: &LocalView) -> Option<String> {
    let last = failover::last_primary(&view.members, &local.name);
    failover::eligible(
        &local.name,
        false,
        1,
        local.timeline,
        local.receive_lsn.max(local.lsn),
        &last,
        local.policy.max_lag_bytes,
    )
    .err()
}

/// A scheduled operation not acted on yet is checked again once due, against the cluster
/// as it is then: it was checked when posted, maybe hours before (its candidate may have
/// fallen behind, its member may be gone). The leader ends one now refused.
fn refused_at_its_time(op: &Operation, view: &ClusterView, now_ms: u64) -> Option<String> {
    if op.phase != OpPhase::Requested || op.not_before_ms.is_none() {
        return None;
    }
    let without = ClusterView {
        op: None,
        ..view.clone()
    };
    crate::ops::check(&op.kind, &crate::ops::Snapshot::at(&without, now_ms), false).err()
}

/// A promote or switchover in flight, recently updated: it decides who leads next, so no
/// member takes the lease on its own meanwhile. One stuck for longer is ignored.
pub(super) fn holding_op(view: &ClusterView, now_ms: u64) -> Option<&Operation> {
    // A switchover whose target promoted no longer decides who leads (what is left is the
    // old primary's rejoin): a new primary lost right after it is replaced as usual
    // (pinned simulator test `a_switchover_target_lost_after_promoting_is_replaced`).
    in_flight(view, now_ms).filter(|op| {
        // A scheduled request nobody has acted on yet holds nothing: its primary may have
        // died before its time, and only a leader ends it (`refused_at_its_time`).
        let untouched_schedule = op.phase == OpPhase::Requested && op.not_before_ms.is_some();
        matches!(op.kind, OpKind::Promote { .. } | OpKind::Switchover { .. })
            && !untouched_schedule
            && op.phase != OpPhase::Promoted
            && now_ms.saturating_sub(op.since_ms()) <= SWITCHOVER_TIMEOUT_MS + 10_000
    })
}

/// A promote or switchover in flight decides who leads next: why not to take the lease.
pub(super) fn op_hold(view: &ClusterView, now_ms: u64) -> Option<String> {
    holding_op(view, now_ms).map(|op| {
        format!(
            "operation {} ({}) is in flight: not taking the lease meanwhile",
            op.id,
            op.kind.name()
        )
    })
}
