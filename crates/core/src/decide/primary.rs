//! A primary's data directory: keep leading, restart in place, hand over, or rejoin the
//! leader as a former primary (pg_rewind when it diverged).

use super::*;

pub(super) fn decide_primary_data(
    view: &ClusterView,
    local: &LocalView,
    now_ms: u64,
) -> Vec<Action> {
    let me = local.name.as_str();
    let lease = view.leader.as_ref().filter(|l| l.expires_ms > now_ms);
    let i_lead = lease.is_some_and(|l| l.member == me);
    if let Some(l) = lease.filter(|l| l.member != me) {
        // A former primary while another member leads: it must not run writable; once
        // stopped, it rejoins the leader as a standby (pg_rewind when it diverged).
        return match local.pg {
            PgRun::Primary | PgRun::NotAnswering => vec![Action::Stop {
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
    }) && !matches!(local.pg, PgRun::Primary);
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
        let mut others =
            failover::other_candidates(&view.members, me, &last, &local.policy, now_ms);
        // With a synchronous set recorded, only a member it proves can take over: hand
        // over to nobody else (pinned simulator test
        // `a_primary_hands_over_only_to_a_standby_the_synchronous_set_proves`).
        if let Some(r) = view.sync.as_ref() {
            others.retain(|c| !r.is_blocked() && r.has(&c.name));
        }
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
        // The lease is free, but on a stale view (read before a stall) nobody's timeline
        // can be trusted: read again first, whatever PostgreSQL does. A primary still
        // running keeps its armed fence meanwhile, and its next loop's view is fresh (this
        // loop's report is due: no leader). Stopping it instead would end a primary the
        // failsafe kept serving through a store outage; taking the lease would restart
        // an agent frozen with its PostgreSQL on the old timeline after another member
        // was promoted (review findings; pinned by
        // `a_former_primary_does_not_take_the_lease_on_a_stale_view_whatever_postgresql_does`).
        if let Some(reason) = stale_view(view, local, now_ms) {
            return vec![Action::Wait { reason }];
        }
        // A former primary takes it back only if nobody moved on to a newer timeline and
        // nobody promised a live primary not to.
        if let Some(reason) = former_primary_hold(view, local, now_ms) {
            if matches!(local.pg, PgRun::Primary | PgRun::NotAnswering) {
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
        PgRun::Primary => {
            let mut actions = vec![lease_action];
            actions.extend(slot_plan(view, local, now_ms));
            actions.extend(sync_action(view, local, now_ms));
            actions
        }
        PgRun::Standby { .. } => {
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
pub(super) fn former_primary_hold(
    view: &ClusterView,
    local: &LocalView,
    now_ms: u64,
) -> Option<String> {
    let me = local.name.as_str();
    if let Some(reason) = op_hold(view, now_ms) {
        return Some(reason);
    }
    // (A stale view was held back before this is asked: `decide_primary_data`.)
    if let Some(reason) = failsafe_hold(local, now_ms) {
        return Some(reason);
    }
    // Another member recorded the synchronous set after this one led: it took the lease
    // and may have acknowledged commits this data lacks, even if its report never reached
    // the store (pinned simulator test
    // `a_former_primary_does_not_take_back_a_lease_another_leader_recorded_after_it`).
    if let Some(r) = view.sync.as_ref().filter(|r| r.leader != me) {
        return Some(format!(
            "{} recorded the synchronous set after this member led: it may have acknowledged \
             commits this former primary lacks; waiting for it (pgbaton promote --force {me} \
             accepts the loss)",
            r.leader
        ));
    }
    // The synchronous set's record names this member as the last to lead: every promotion
    // since would have recorded its own first, so no newer timeline can hold acknowledged
    // commits (its own pg_control may still show the old timeline after a promotion cut
    // short: found by `pgbaton-bench chaos`, the new primary lost right after promoting).
    let recorded_leader = view.sync.as_ref().is_some_and(|r| r.leader == me);
    if let (Some(newest), Some(mine), false) = (
        failover::newest_timeline(&view.members, me),
        local.timeline,
        recorded_leader,
    ) {
        if newest > mine {
            return Some(format!(
                "another member is on timeline {newest}, newer than this former primary's {mine}: \
                 waiting for a leader to rejoin"
            ));
        }
    }
    None
}

/// A free lease is taken only on a fresh view: this member's own last report (published,
/// or found unchanged, at the end of its previous loop, before this view was read: `seen`,
/// which the agent sets for itself) must be younger than the lease TTL. An agent stalled between reading the view and deciding (SIGSTOP, a long pause)
/// would otherwise act on members' timelines and positions from before the stall, and take
/// the lease back on an old timeline (pinned simulator test
/// `stale_view_retakes_the_lease_on_an_old_timeline`).
pub(super) fn stale_view(view: &ClusterView, local: &LocalView, now_ms: u64) -> Option<String> {
    let mine = view.member(&local.name)?;
    let age = now_ms.saturating_sub(mine.seen());
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
pub(super) fn rewind_source(view: &ClusterView, me: &str) -> Result<Upstream, String> {
    let up = ready_upstream(view, me)?;
    match view.member(&up.member) {
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
pub(super) fn rejoin_leader(view: &ClusterView, local: &LocalView) -> Vec<Action> {
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
