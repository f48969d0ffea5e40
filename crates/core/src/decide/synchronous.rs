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
