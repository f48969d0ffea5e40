//! When an agent writes its member's report to the store. Every write is an etcd revision
//! (and ~1.4 kB of etcd's database until compaction), so an idle cluster writes almost
//! nothing: a report is written when what it says changes, every loop while the cluster is
//! in motion, and otherwise at a slow heartbeat (for the lag figures). Between writes the
//! member's liveness is kept without writes (`Store::member_alive`, `MemberState::seen`).

use crate::decide::ClusterView;
use crate::model::MemberState;

/// The longest a live member goes without writing its report.
pub const HEARTBEAT_MS: u64 = 60_000;

/// The liveness TTL for a lease TTL: twice it, so that one missed half-TTL confirmation
/// leaves the member alive. A member whose agent died counts as alive this long.
pub fn alive_ttl_ms(lease_ttl_ms: u64) -> u64 {
    2 * lease_ttl_ms
}

/// The cluster is in motion: no unexpired leader, or an operation in flight. Failover and
/// operations then read reports made after an instant (`updated_ms`: a quorum candidate
/// counts only reports made after the lease went, a switchover waits for its target's), so
/// every member reports every loop.
pub fn in_motion(view: &ClusterView, now_ms: u64) -> bool {
    view.leader.as_ref().is_none_or(|l| l.expires_ms <= now_ms)
        || view.op.as_ref().is_some_and(|o| o.in_flight(now_ms))
}

/// The `seen_ms` an agent gives its own record in a view it decides on: `checked_ms`, when
/// it last knew its report current, but only when the view holds the last report it wrote
/// (`written_ms`; the record's `updated_ms` is at least that). A view without it is behind
/// the store (a watch that lags, a stall): the record then counts by its report's age
/// alone (0), which ages while the cluster is in motion and every loop writes, so
/// `stale_view` refuses the free lease on it.
pub fn own_seen_ms(record_updated_ms: u64, written_ms: u64, checked_ms: u64) -> u64 {
    if record_updated_ms >= written_ms {
        checked_ms
    } else {
        0
    }
}

/// Whether `new` must be written, given the view (which holds the report the store has).
pub fn due(view: &ClusterView, new: &MemberState, now_ms: u64) -> bool {
    let Some(stored) = view.member(&new.name) else {
        return true;
    };
    in_motion(view, now_ms)
        || stored.content() != new.content()
        || now_ms.saturating_sub(stored.updated_ms) >= HEARTBEAT_MS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        ArchiveStatus, Leader, Lsn, MemberStatus, OpKind, OpPhase, Operation, Role,
    };

    const NOW: u64 = 1_000_000;

    fn view(members: Vec<MemberState>) -> ClusterView {
        ClusterView {
            leader: Some(Leader {
                member: "n1".into(),
                expires_ms: NOW + 2_000,
            }),
            members,
            ..Default::default()
        }
    }

    fn standby(updated_ms: u64) -> MemberState {
        MemberState {
            lsn: Some(Lsn(100)),
            ..MemberState::sample("n2", Role::Standby, MemberStatus::Streaming, updated_ms)
        }
    }

    #[test]
    fn an_unchanged_report_is_written_only_at_the_heartbeat_while_the_cluster_rests() {
        let stored = standby(NOW - 10_000);
        let v = view(vec![stored.clone()]);
        let same = MemberState {
            updated_ms: NOW,
            seen_ms: NOW,
            // Ages move without a change of state.
            archive: Some(ArchiveStatus {
                oldest_waiting_s: Some(7),
                ..Default::default()
            }),
            ..stored.clone()
        };
        let v = ClusterView {
            members: vec![MemberState {
                archive: Some(ArchiveStatus {
                    oldest_waiting_s: Some(3),
                    ..Default::default()
                }),
                ..stored.clone()
            }],
            ..v
        };
        assert!(!due(&v, &same, NOW), "nothing new: not written");
        assert!(due(&v, &same, NOW - 10_000 + HEARTBEAT_MS), "the heartbeat");
        let moved = MemberState {
            lsn: Some(Lsn(200)),
            ..same.clone()
        };
        assert!(due(&v, &moved, NOW), "a new position is written");
        let other_state = MemberState {
            state: MemberStatus::Replaying,
            ..same.clone()
        };
        assert!(due(&v, &other_state, NOW), "a new state is written");
    }

    #[test]
    fn an_agents_own_record_counts_as_current_only_when_the_view_holds_its_last_write() {
        // The view holds the last write (or a later one): known current when last checked.
        assert_eq!(own_seen_ms(5_000, 5_000, 9_000), 9_000);
        assert_eq!(own_seen_ms(6_000, 5_000, 9_000), 9_000);
        // The view is behind the last write: only the record's own time counts.
        assert_eq!(own_seen_ms(4_000, 5_000, 9_000), 0);
        // Nothing written yet by this agent (a restart): as last checked (0 = unknown).
        assert_eq!(own_seen_ms(4_000, 0, 0), 0);
    }

    #[test]
    fn every_report_is_written_while_the_cluster_is_in_motion_or_unknown() {
        let stored = standby(NOW - 1_000);
        let same = MemberState {
            updated_ms: NOW,
            ..stored.clone()
        };
        // Not in the store yet (registration, or removed by someone).
        assert!(due(&view(vec![]), &same, NOW));
        // No leader, or its lease ran out.
        let leaderless = ClusterView {
            leader: None,
            ..view(vec![stored.clone()])
        };
        assert!(due(&leaderless, &same, NOW));
        let expired = ClusterView {
            leader: Some(Leader {
                member: "n1".into(),
                expires_ms: NOW,
            }),
            ..view(vec![stored.clone()])
        };
        assert!(due(&expired, &same, NOW));
        // An operation in flight; a finished one does not count.
        let mut op = Operation::new(
            "op1".into(),
            OpKind::Rejoin {
                member: "n2".into(),
            },
            NOW,
        );
        let busy = ClusterView {
            op: Some(op.clone()),
            ..view(vec![stored.clone()])
        };
        assert!(due(&busy, &same, NOW));
        op.phase = OpPhase::Done;
        let done = ClusterView {
            op: Some(op),
            ..view(vec![stored.clone()])
        };
        assert!(!due(&done, &same, NOW));
    }
}
