//! Failover and the leader's steps with a synchronous set recorded.
use super::*;
use crate::sync::{SyncMode, SyncSettings};

fn record(members: &[&str], quorum: u32) -> SyncRecord {
    SyncRecord {
        leader: "n1".into(),
        members: members.iter().map(|s| s.to_string()).collect(),
        quorum,
    }
}

fn with_sync(mut v: ClusterView, r: SyncRecord) -> ClusterView {
    v.sync_text = Some(format!("{r:?}"));
    v.sync = Some(r);
    v
}

/// n2 saw the lease gone before every report in the view was made.
fn candidate(name: &str, lsn: u64) -> LocalView {
    let mut l = standby_at(name, lsn);
    l.leaderless_since_ms = Some(NOW - 500);
    l
}

fn takes_over(a: &[Action], me: &str) -> bool {
    a == [
        Action::AcquireLease,
        Action::WriteSyncSet {
            record: SyncRecord::blocked(me),
            barrier: false,
        },
        Action::Promote,
    ]
}

#[test]
fn only_a_member_of_the_synchronous_set_takes_over_and_blocks_the_set_first() {
    // n3 received more, but only n2 acknowledged commits (FIRST 1 (n2)).
    let v = with_sync(after_primary_loss(1000, 900, 1000), record(&["n2"], 1));
    let a = decide(&v, &candidate("n2", 900), NOW);
    assert!(takes_over(&a, "n2"), "{a:?}");
    let a = decide(&v, &candidate("n3", 1000), NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("not in the synchronous set")),
        "{a:?}"
    );
}

#[test]
fn a_promoted_standby_clears_the_list_it_inherited_unless_strict() {
    // Its data directory carries the old primary's list, naming the member just lost.
    let v = with_sync(after_primary_loss(1000, 900, 1000), record(&["n2"], 1));
    let mut l = candidate("n2", 900);
    l.policy.sync = SyncSettings {
        mode: SyncMode::On,
        ..Default::default()
    };
    l.sync_names = SyncNames::parse("FIRST 1 (\"n1\")");
    let a = decide(&v, &l, NOW);
    assert_eq!(
        a,
        [
            Action::AcquireLease,
            Action::WriteSyncSet {
                record: SyncRecord::blocked("n2"),
                barrier: false,
            },
            Action::Promote,
            Action::SetSyncNames {
                names: SyncNames::Off
            },
        ]
    );
    l.policy.sync.strict = true;
    assert!(
        takes_over(&decide(&v, &l, NOW), "n2"),
        "strict keeps waiting"
    );
}

#[test]
fn an_unreadable_member_record_holds_automatic_failover() {
    // It may be the last primary's (the bar candidates are held to) or a better candidate's.
    let mut v = after_primary_loss(1000, 1000, 1000);
    v.unreadable.push(crate::model::UnreadableRecord {
        key: "members/n4".into(),
        why: "newer".into(),
    });
    let a = decide(&v, &candidate("n2", 1000), NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("cannot read") && reason.contains("n4")),
        "{a:?}"
    );
    // An unreadable operation record alone does not hold it.
    v.unreadable[0].key = "op".into();
    let a = decide(&v, &candidate("n2", 1000), NOW);
    assert!(a.contains(&Action::Promote), "{a:?}");
}

#[test]
fn a_blocked_set_lets_no_standby_take_over() {
    let v = with_sync(
        after_primary_loss(1000, 1000, 1000),
        SyncRecord::blocked("n1"),
    );
    for n in ["n2", "n3"] {
        let a = decide(&v, &candidate(n, 1000), NOW);
        assert!(
            matches!(&a[..], [Action::Wait { reason }] if reason.contains("proves no standby")),
            "{a:?}"
        );
    }
}

#[test]
fn quorum_counts_only_reports_made_after_the_lease_went() {
    // ANY 1 (n2, n3): a candidate must see both and be the most advanced.
    let mut v = with_sync(
        after_primary_loss(1000, 1000, 990),
        record(&["n2", "n3"], 2),
    );
    let mut n3 = candidate("n3", 990);
    n3.leaderless_since_ms = Some(NOW - 500);
    // n2's report predates the lease's end: n3 waits for the next one.
    v.members[1].updated_ms = NOW - 600;
    let a = decide(&v, &n3, NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("sees 1 of the 2")),
        "{a:?}"
    );
    // Fresh, and more advanced: n2 is the one.
    v.members[1].updated_ms = NOW - 100;
    let a = decide(&v, &n3, NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("n2 of the synchronous set has more WAL")),
        "{a:?}"
    );
    v.members[2].updated_ms = NOW - 100;
    let a = decide(&v, &candidate("n2", 1000), NOW);
    assert!(takes_over(&a, "n2"), "{a:?}");
}

#[test]
fn an_unforced_promote_is_held_to_the_synchronous_set() {
    let v = with_op(
        with_sync(after_primary_loss(1000, 1000, 1000), record(&["n2"], 1)),
        OpKind::Promote {
            member: "n3".into(),
            force: false,
        },
        OpPhase::Requested,
    );
    // Not a member: refused at once (waiting would not change it).
    let a = decide(&v, &candidate("n3", 1000), NOW);
    assert!(
        matches!(&a[..], [Action::FinishOp { ok: false, message, .. }] if message.contains("not in the synchronous set")),
        "{a:?}"
    );
    let mut v = v;
    if let Some(op) = v.op.as_mut() {
        op.kind = OpKind::Promote {
            member: "n3".into(),
            force: true,
        };
    }
    let a = decide(&v, &candidate("n3", 1000), NOW);
    assert!(
        a.contains(&Action::Promote)
            && a.contains(&Action::WriteSyncSet {
                record: SyncRecord::blocked("n3"),
                barrier: false
            }),
        "{a:?}"
    );
}

#[test]
fn the_leader_sets_its_synchronous_standbys_up_step_by_step() {
    let mut p = ms("n1", &["pgbaton_n2"]);
    p.role = Role::Primary;
    let s2 = MemberState {
        role: Role::Standby,
        ..ms("n2", &[])
    };
    let v = view(Some("42"), Some("n1"), vec![p, s2]);
    let mut l = local("n1", init(false), PgRun::Primary);
    l.lsn = Some(Lsn(1000));
    l.policy.sync = SyncSettings {
        mode: SyncMode::On,
        ..SyncSettings::default()
    };
    l.senders = vec![crate::sync::WalSender {
        name: "n2".into(),
        streaming: true,
        flush: Some(Lsn(1000)),
        priority: 0,
    }];
    let step = |v: &ClusterView, l: &LocalView| decide(v, l, NOW).last().cloned().unwrap();
    // No record: a blocked one of its own first.
    assert_eq!(
        step(&v, &l),
        Action::WriteSyncSet {
            record: SyncRecord::blocked("n1"),
            barrier: false
        }
    );
    // Then the record widened to the new list, then the list, then the exact record after
    // a barrier commit.
    let v = with_sync(v, SyncRecord::blocked("n1"));
    let a = step(&v, &l);
    assert!(
        matches!(&a, Action::WriteSyncSet { record, barrier: false } if record.has("n2") && record.is_blocked()),
        "{a:?}"
    );
    let v = with_sync(
        v,
        SyncRecord {
            members: vec!["n2".into()],
            quorum: 2,
            ..SyncRecord::blocked("n1")
        },
    );
    let a = step(&v, &l);
    assert_eq!(a.to_string(), r#"SetSyncNames(FIRST 1 ("n2"))"#);
    l.sync_names = SyncNames::parse(r#"FIRST 1 ("n2")"#);
    let a = step(&v, &l);
    assert_eq!(
        a,
        Action::WriteSyncSet {
            record: SyncRecord {
                members: vec!["n2".into()],
                quorum: 1,
                ..SyncRecord::blocked("n1")
            },
            barrier: true
        }
    );
    // Every plan holds the lease before it touches the set.
    assert!(check_plan(&[Action::ClearSyncSet]).is_err());
}

#[test]
fn the_recorded_leader_takes_its_lease_back_whatever_its_pg_control_says() {
    // n3 took the lease and recorded the set, and was lost while promoting: its pg_control
    // still says timeline 1 while n2, the primary before it, reports timeline 2.
    let mut n2 = ms("n2", &[]);
    n2.role = Role::Primary;
    n2.timeline = Some(2);
    n2.state = crate::model::MemberStatus::Stopped;
    let mut v = view(Some("42"), None, vec![n2, ms("n3", &[])]);
    v = with_sync(v, SyncRecord::blocked("n3"));
    let mut l = local("n3", init(false), PgRun::Stopped);
    l.timeline = Some(1);
    let a = decide(&v, &l, NOW);
    assert_eq!(
        a,
        [Action::AcquireLease, Action::Start { upstream: None }],
        "{a:?}"
    );
    // n2, the former primary, waits for it.
    let mut l2 = local("n2", init(false), PgRun::Stopped);
    l2.timeline = Some(2);
    let a = decide(&v, &l2, NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("n3 recorded the synchronous set")),
        "{a:?}"
    );
}
