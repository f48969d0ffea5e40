//! Synchronous replication in the decision: a new primary blocks the old leader's record
//! first, and the leader's next step toward its list (`crate::sync::plan`) as an action.

use super::*;

/// A member about to run a writable primary where the recorded synchronous set is another
/// leader's first records a blocked set of its own (compare-and-set, under the lease it just
/// took): until it has set up its own synchronous standbys, its commits are covered by no
/// record, so no standby may take over on the old record's word.
pub(super) fn take_over_sync_set(
    view: &ClusterView,
    me: &str,
    mut plan: Vec<Action>,
) -> Vec<Action> {
    if view.sync.as_ref().is_none_or(|r| r.leader == me) {
        return plan;
    }
    let becomes_primary = |a: &Action| {
        matches!(
            a,
            Action::Promote | Action::Start { upstream: None } | Action::Bootstrap
        )
    };
    if let Some(i) = plan.iter().position(becomes_primary) {
        let leased = plan[..i]
            .iter()
            .any(|a| matches!(a, Action::AcquireLease | Action::RenewLease));
        if leased {
            plan.insert(
                i,
                Action::WriteSyncSet {
                    record: SyncRecord::blocked(me),
                    barrier: false,
                },
            );
        }
    }
    plan
}

/// A standby promoted in a synchronous mode starts with the list its data directory
/// carries (copied from an earlier primary by pg_basebackup or pg_rewind: ALTER SYSTEM is
/// not replicated), which may name the member just lost. Its first commits then waited for
/// that member until the leader set its own list a loop or two later: host-loss failover
/// took 0.5-0.9 s longer than asynchronous. When not strict, the list is cleared right
/// after the promotion (nothing waits, which the set's invariant always allows; the record
/// is blocked, so nobody is proven until the leader sets up its own standbys). Strict
/// keeps commits waiting, as it promises.
pub(super) fn clear_inherited_names(
    view: &ClusterView,
    local: &LocalView,
    mut plan: Vec<Action>,
) -> Vec<Action> {
    let sync = &local.policy.sync;
    // Its own record, still proving someone (it led before): the executor would refuse a
    // list that record does not cover; the leader's planner takes it from there.
    let own_live_record = view
        .sync
        .as_ref()
        .is_some_and(|r| r.leader == local.name && !r.is_blocked());
    if sync.mode == crate::sync::SyncMode::Off
        || sync.strict
        || local.sync_names == SyncNames::Off
        || own_live_record
    {
        return plan;
    }
    if let Some(i) = plan.iter().position(|a| matches!(a, Action::Promote)) {
        plan.insert(
            i + 1,
            Action::SetSyncNames {
                names: SyncNames::Off,
            },
        );
    }
    plan
}

/// The leader's next synchronous-replication step, as an action.
pub(super) fn sync_action(view: &ClusterView, local: &LocalView, now_ms: u64) -> Option<Action> {
    let step = crate::sync::plan(&crate::sync::SyncInputs {
        me: &local.name,
        settings: &local.policy.sync,
        record: view.sync.as_ref(),
        names: &local.sync_names,
        senders: &local.senders,
        members: &view.members,
        lsn: local.lsn,
        now_ms,
        fresh_ms: local.policy.ttl_ms,
    })?;
    Some(match step {
        SyncStep::Record { record, barrier } => Action::WriteSyncSet { record, barrier },
        SyncStep::Names(names) => Action::SetSyncNames { names },
        SyncStep::Clear => Action::ClearSyncSet,
    })
}
