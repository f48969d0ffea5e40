//! A standby's decision: follow the leader, take a free lease as the best candidate (unless
//! a failsafe promise or another hold says no), rejoin when it stopped streaming.

use super::*;

/// This member promised a live primary (failsafe) not to take the lease: why not to.
pub(super) fn failsafe_hold(local: &LocalView, now_ms: u64) -> Option<String> {
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
pub(super) fn failover_hold(view: &ClusterView, local: &LocalView, now_ms: u64) -> Option<String> {
    let me = local.name.as_str();
    if let Some(reason) = op_hold(view, now_ms) {
        return Some(reason);
    }
    if let Some(reason) = stale_view(view, local, now_ms) {
        return Some(reason);
    }
    if let Some(reason) = unreadable_hold(view) {
        return Some(reason);
    }
    // (Not one that will not take it back: another member recorded the synchronous set
    // after it led.)
    if let Some(p) = failover::returning_primary(&view.members, &local.name, &local.policy, now_ms)
        .filter(|p| view.sync.as_ref().is_none_or(|r| r.leader == p.name))
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
    if let Some(record) = view.sync.as_ref() {
        if let Some(why) = sync_proof_refused(view, local, record, mine.lsn, now_ms) {
            return Some(why);
        }
        // Only the synchronous set's members are candidates: one outside it may lack
        // acknowledged commits, however far it received.
        all.retain(|c| record.has(&c.name));
    }
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

/// A member record nobody can read may be the last primary's (the bar candidates are held
/// to) or a better candidate's: no automatic takeover until it is readable again or the
/// member is removed (review finding: the failover bar was silently skipped).
fn unreadable_hold(view: &ClusterView) -> Option<String> {
    let names: Vec<&str> = view.unreadable.iter().filter_map(|u| u.member()).collect();
    (!names.is_empty()).then(|| {
        format!(
            "the store holds member records this version cannot read ({}): no automatic \
             failover until they are readable again or removed (`pgbaton promote` decides by hand)",
            names.join(", ")
        )
    })
}

/// The synchronous set's record does not prove this member has every acknowledged commit:
/// why. Only reports made after this member saw the lease gone count (so after the old
/// primary's fence: nothing was acknowledged after them).
pub(super) fn sync_proof_refused(
    view: &ClusterView,
    local: &LocalView,
    record: &SyncRecord,
    mine: Lsn,
    now_ms: u64,
) -> Option<String> {
    // After the lease went, and after any failsafe promise this member gave the old
    // primary ran out: that primary may have acknowledged commits until then (pinned
    // simulator test `a_quorum_candidate_counts_only_reports_made_after_the_fence`).
    let since = local
        .leaderless_since_ms
        .unwrap_or(now_ms)
        .max(local.failsafe.as_ref().map_or(0, |f| f.until_ms));
    let fresh: Vec<(String, Lsn)> = view
        .members
        .iter()
        .filter(|m| m.name != local.name && m.updated_ms >= since)
        .filter(|m| failover::live_standby(m, now_ms, local.policy.ttl_ms))
        .filter_map(|m| Some((m.name.clone(), m.receive_lsn.max(m.lsn)?)))
        .collect();
    crate::sync::proof_refused(record, &local.name, mine, &fresh)
}

pub(super) fn stuck_standby(view: &ClusterView, local: &LocalView, now_ms: u64) -> Option<u64> {
    view.leader.as_ref().filter(|l| l.member != local.name)?;
    let since = local.not_streaming_since_ms?;
    let stuck = now_ms.saturating_sub(since);
    (stuck >= STUCK_STANDBY_TTLS * local.policy.ttl_ms).then_some(stuck)
}

pub(super) fn decide_standby(
    view: &ClusterView,
    local: &LocalView,
    me: &str,
    now_ms: u64,
) -> Vec<Action> {
    let stuck = stuck_standby(view, local, now_ms);
    match &local.pg {
        PgRun::Stopped if stuck.is_some() => rejoin_leader(view, local),
        PgRun::Standby { upstream: Some(up) }
            if stuck.is_some() && view.leader.as_ref().is_some_and(|l| l.member == *up) =>
        {
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
        PgRun::Standby { .. } if view.leader.as_ref().is_some_and(|l| l.member == me) => {
            // This standby holds the lease (a promotion that did not finish): promote.
            vec![Action::RenewLease, Action::Promote]
        }
        PgRun::Standby { .. } if view.leader.is_none() => {
            match failover_hold(view, local, now_ms) {
                Some(reason) => vec![Action::Wait { reason }],
                None => vec![Action::AcquireLease, Action::Promote],
            }
        }
        PgRun::Standby { upstream } => {
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
        PgRun::Primary => match view.leader.as_ref() {
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
