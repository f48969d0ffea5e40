//! Tests of `decide`.
use super::*;

#[test]
fn plans_that_break_the_lease_rules_are_refused() {
    assert!(check_plan(&[Action::AcquireLease, Action::Promote]).is_ok());
    assert!(check_plan(&[Action::RenewLease, Action::Promote]).is_ok());
    assert!(check_plan(&[Action::Promote]).is_err());
    assert!(check_plan(&[Action::Promote, Action::AcquireLease]).is_err());
    assert!(check_plan(&[Action::RenewLease, Action::AcquireLease]).is_err());
    assert!(check_plan(&[
        Action::RenewLease,
        Action::ReleaseLease { reason: "x".into() }
    ])
    .is_err());
}
use crate::model::MemberStatus;

mod display;
mod sync;

const NOW: u64 = 1_000_000;

fn ms(name: &str, slots: &[&str]) -> MemberState {
    MemberState {
        system_id: Some("42".into()),
        slots: slots
            .iter()
            .map(|s| SlotInfo {
                name: s.to_string(),
                active: false,
                restart_lsn: None,
                retained_bytes: None,
            })
            .collect(),
        ..MemberState::sample(name, Role::Unknown, MemberStatus::Running, NOW)
    }
}

#[test]
fn a_restart_never_starts_a_former_primary_without_the_lease_as_a_primary() {
    let restart = |leader: &str| {
        with_op(
            view(Some("42"), Some(leader), vec![ms("n1", &[]), ms("n3", &[])]),
            OpKind::Restart {
                member: "n3".into(),
            },
            OpPhase::Requested,
        )
    };
    // Asked while n3 led, carried out after n1 took over: refused, not started writable.
    let a = decide(
        &restart("n1"),
        &local("n3", init(false), PgRun::Stopped),
        NOW,
    );
    assert!(
        matches!(&a[..], [Action::FinishOp { ok: false, .. }]),
        "{a:?}"
    );
    // The lease holder restarts in place; a standby restarts as a standby.
    let a = decide(
        &restart("n3"),
        &local("n3", init(false), PRIMARY_RUNNING),
        NOW,
    );
    assert!(
        matches!(
            &a[..],
            [
                Action::RenewLease,
                Action::Restart { .. },
                Action::FinishOp { ok: true, .. }
            ]
        ),
        "the lease holder renews (arms its watchdog, starts the keeper) first: {a:?}"
    );
    let a = decide(
        &restart("n1"),
        &local("n3", init(true), STANDBY_RUNNING),
        NOW,
    );
    assert!(
        a.iter().any(|a| matches!(a, Action::Restart { .. })),
        "{a:?}"
    );
}

fn view(init: Option<&str>, leader: Option<&str>, members: Vec<MemberState>) -> ClusterView {
    ClusterView {
        initialize: init.map(Identity::parse),
        leader: leader.map(|m| Leader {
            member: m.into(),
            expires_ms: NOW + 10_000,
        }),
        members,
        ..ClusterView::default()
    }
}

fn local(name: &str, data: DataDir, pg: PgRun) -> LocalView {
    LocalView::new(name, data, pg)
}

fn with_op(mut v: ClusterView, kind: OpKind, phase: OpPhase) -> ClusterView {
    let mut op = Operation::new("op1".into(), kind, NOW);
    op.phase = phase;
    v.op = Some(op);
    v
}

const STANDBY_RUNNING: PgRun = PgRun::Standby { upstream: None };
const PRIMARY_RUNNING: PgRun = PgRun::Primary;

#[test]
fn promote_waits_for_the_old_lease_then_takes_it_and_promotes() {
    let v = with_op(
        view(Some("42"), Some("n1"), vec![ms("n1", &[])]),
        OpKind::Promote {
            member: "n2".into(),
            force: false,
        },
        OpPhase::Requested,
    );
    let a = decide(&v, &local("n2", init(true), STANDBY_RUNNING), NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("lease of n1")),
        "{a:?}"
    );
    let v = with_op(
        view(Some("42"), None, vec![ms("n1", &[])]),
        OpKind::Promote {
            member: "n2".into(),
            force: false,
        },
        OpPhase::Requested,
    );
    let mut n2 = local("n2", init(true), STANDBY_RUNNING);
    n2.lsn = Some(Lsn(5_000_000));
    let a = decide(&v, &n2, NOW);
    assert!(
        matches!(
            &a[..],
            [
                Action::AcquireLease,
                Action::Promote,
                Action::FinishOp { ok: true, .. }
            ]
        ),
        "{a:?}"
    );
    // Posted in time, carried out after the member fell behind the last primary's position:
    // refused unless the request was forced.
    let mut behind = v.clone();
    behind.members[0].role = Role::Primary;
    behind.members[0].lsn = Some(Lsn(5_000_000 + 2 * 1_048_576));
    let a = decide(&behind, &n2, NOW);
    assert!(
        matches!(&a[..], [Action::FinishOp { ok: false, message, .. }] if message.contains("--force")),
        "{a:?}"
    );
    if let Some(op) = behind.op.as_mut() {
        op.kind = OpKind::Promote {
            member: "n2".into(),
            force: true,
        };
    }
    let a = decide(&behind, &n2, NOW);
    assert!(matches!(&a[..], [Action::AcquireLease, ..]), "{a:?}");
    // Another standby is not affected by the request.
    let a = decide(&v, &local("n3", init(true), STANDBY_RUNNING), NOW);
    assert!(
        !a.contains(&Action::AcquireLease) && !a.contains(&Action::Promote),
        "{a:?}"
    );
}

#[test]
fn standbys_follow_a_new_leader_only_once_their_slot_is_there() {
    let v = view(Some("42"), Some("n2"), vec![ms("n2", &[])]);
    let pg = PgRun::Standby {
        upstream: Some("n1".into()),
    };
    let a = decide(&v, &local("n3", init(true), pg.clone()), NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("pgbaton_n3")),
        "{a:?}"
    );
    let v = view(Some("42"), Some("n2"), vec![ms("n2", &["pgbaton_n3"])]);
    let a = decide(&v, &local("n3", init(true), pg), NOW);
    assert!(
        matches!(&a[..], [Action::Follow { upstream: Some(u) }] if u.member == "n2"),
        "{a:?}"
    );
}

#[test]
fn former_primary_rejoins_by_itself_or_when_asked() {
    let v = view(Some("42"), Some("n2"), vec![ms("n2", &[])]);
    let a = decide(&v, &local("n1", init(false), PgRun::Stopped), NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("pgbaton_n1")),
        "{a:?}"
    );
    // n2 holds the lease and has n1's slot, but has not reported itself as a running
    // primary yet (its promotion's CHECKPOINT comes first): no rewind against it yet.
    let mut v = view(Some("42"), Some("n2"), vec![ms("n2", &["pgbaton_n1"])]);
    let a = decide(&v, &local("n1", init(false), PgRun::Stopped), NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("running primary")),
        "{a:?}"
    );
    v.members[0].role = Role::Primary;
    let a = decide(&v, &local("n1", init(false), PgRun::Stopped), NOW);
    assert!(
        matches!(&a[..], [Action::Rejoin { upstream }] if upstream.member == "n2"),
        "{a:?}"
    );
    // A rewind that failed is not retried, and nothing is wiped unless the config says so.
    let mut l = local("n1", init(false), PgRun::Stopped);
    l.rejoin_failed = Some("pg_rewind: could not find common ancestor".into());
    let a = decide(&v, &l, NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("pgbaton reinit n1")),
        "{a:?}"
    );
    l.policy.reclone_on_rewind_failure = true;
    let a = decide(&v, &l, NOW);
    assert!(
        matches!(&a[..], [Action::Reinit { from }] if from.member == "n2"),
        "{a:?}"
    );
    // Paused: no automatic rejoin.
    let mut paused = v.clone();
    paused.paused = true;
    let a = decide(&paused, &local("n1", init(false), PgRun::Stopped), NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("rejoining")),
        "{a:?}"
    );
    let v = with_op(
        v,
        OpKind::Rejoin {
            member: "n1".into(),
        },
        OpPhase::Requested,
    );
    let a = decide(&v, &local("n1", init(false), PRIMARY_RUNNING), NOW);
    assert!(matches!(&a[..], [Action::Stop { .. }]), "{a:?}");
    let a = decide(&v, &local("n1", init(false), PgRun::Stopped), NOW);
    assert!(
        matches!(&a[..], [Action::Rejoin { upstream }, Action::FinishOp { ok: true, .. }] if upstream.member == "n2"),
        "{a:?}"
    );
}

#[test]
fn remove_stops_the_member_then_the_leader_drops_its_slot() {
    let v = with_op(
        view(Some("42"), Some("n1"), vec![ms("n1", &[]), ms("n3", &[])]),
        OpKind::Remove {
            member: "n3".into(),
            purge: true,
        },
        OpPhase::Requested,
    );
    let a = decide(&v, &local("n3", init(true), STANDBY_RUNNING), NOW);
    assert!(
        matches!(&a[..], [Action::RemoveSelf { purge: true, .. }]),
        "{a:?}"
    );
    let v = with_op(
        view(Some("42"), Some("n1"), vec![ms("n1", &[])]),
        OpKind::Remove {
            member: "n3".into(),
            purge: true,
        },
        OpPhase::Deregistered,
    );
    let a = decide(&v, &local("n1", init(false), PRIMARY_RUNNING), NOW);
    assert_eq!(
        a[0],
        Action::DropSlots {
            names: vec!["pgbaton_n3".into()]
        }
    );
    assert!(matches!(a[1], Action::FinishOp { ok: true, .. }));
}

#[test]
fn orphan_slots_of_ours_are_dropped_after_the_grace_period_and_foreign_ones_never() {
    let v = view(Some("42"), Some("n1"), vec![ms("n1", &[]), ms("n2", &[])]);
    let slot = |n: &str, active: bool| SlotInfo {
        name: n.into(),
        active,
        restart_lsn: None,
        retained_bytes: Some(1),
    };
    let mut l = local("n1", init(false), PRIMARY_RUNNING);
    l.slots = vec![
        slot("pgbaton_n2", true),
        slot("pgbaton_gone", false),
        slot("backup_tool", false),
    ];
    l.orphan_grace_ms = 1000;
    l.orphans_since.insert("pgbaton_gone".into(), NOW - 500);
    let a = decide(&v, &l, NOW);
    assert!(
        !a.iter().any(|x| matches!(x, Action::DropSlots { .. })),
        "dropped within the grace period: {a:?}"
    );
    l.orphans_since.insert("pgbaton_gone".into(), NOW - 1000);
    let a = decide(&v, &l, NOW);
    assert!(
        a.contains(&Action::DropSlots {
            names: vec!["pgbaton_gone".into()]
        }),
        "{a:?}"
    );
    let (ours, foreign) = orphan_slots(&v.member_slot_names(), &l.slots);
    assert_eq!(
        (ours, foreign),
        (
            vec!["pgbaton_gone".to_string()],
            vec!["backup_tool".to_string()]
        )
    );
}

#[test]
fn a_paused_cluster_takes_no_automatic_action_but_keeps_its_lease_and_operations() {
    let mut v = view(Some("42"), Some("n1"), vec![ms("n1", &[]), ms("n2", &[])]);
    v.paused = true;
    // A crashed standby is not restarted.
    let a = decide(&v, &local("n2", init(true), PgRun::Stopped), NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("paused") && reason.contains("starting")),
        "{a:?}"
    );
    // The primary keeps renewing its lease and its slots.
    let a = decide(&v, &local("n1", init(false), PRIMARY_RUNNING), NOW);
    assert!(
        a.contains(&Action::RenewLease)
            && a.iter().any(|x| matches!(x, Action::EnsureSlots { .. })),
        "{a:?}"
    );
    // A stopped primary does not take the lease or start.
    let mut v2 = v.clone();
    v2.leader = None;
    let a = decide(&v2, &local("n1", init(false), PgRun::Stopped), NOW);
    assert!(
        !a.contains(&Action::AcquireLease) && !a.iter().any(|x| matches!(x, Action::Start { .. })),
        "{a:?}"
    );
    // An empty member does not clone.
    let a = decide(&v, &local("n3", DataDir::Empty, PgRun::Stopped), NOW);
    assert!(
        !a.iter().any(|x| matches!(x, Action::Clone { .. })),
        "{a:?}"
    );
    // Operations still run.
    let v3 = with_op(
        v.clone(),
        OpKind::Reinit {
            member: "n2".into(),
        },
        OpPhase::Requested,
    );
    let mut v3 = v3;
    v3.members[0].slots = vec![SlotInfo {
        name: "pgbaton_n2".into(),
        active: true,
        restart_lsn: None,
        retained_bytes: None,
    }];
    let a = decide(&v3, &local("n2", init(true), STANDBY_RUNNING), NOW);
    assert!(
        matches!(&a[..], [Action::Reinit { .. }, Action::FinishOp { .. }]),
        "{a:?}"
    );
    // The one-writer stop still happens.
    let mut v4 = view(Some("42"), Some("n2"), vec![ms("n2", &[])]);
    v4.paused = true;
    let a = decide(&v4, &local("n1", init(false), PRIMARY_RUNNING), NOW);
    assert!(matches!(&a[..], [Action::Stop { .. }]), "{a:?}");
}

#[test]
fn a_scheduled_switchover_waits_for_its_time_and_is_checked_again_then() {
    let so = OpKind::Switchover {
        from: "n1".into(),
        to: "n2".into(),
    };
    let mut n1 = ms("n1", &["pgbaton_n2"]);
    (n1.role, n1.lsn, n1.seen_ms) = (Role::Primary, Some(Lsn(1000)), NOW);
    let mut n2 = ms("n2", &[]);
    (n2.role, n2.state, n2.lsn, n2.seen_ms) =
        (Role::Standby, MemberStatus::Streaming, Some(Lsn(1000)), NOW);
    let mut v = with_op(
        view(Some("42"), Some("n1"), vec![n1, n2]),
        so,
        OpPhase::Requested,
    );
    let at = NOW + 60_000;
    v.op.as_mut().unwrap().not_before_ms = Some(at);
    let primary = local("n1", init(false), PRIMARY_RUNNING);
    // Before its time nobody acts on it: the primary goes on as usual.
    let a = decide(&v, &primary, NOW);
    assert!(
        !a.iter().any(|x| matches!(
            x,
            Action::StopForSwitchover { .. } | Action::FinishOp { .. }
        )),
        "{a:?}"
    );
    assert!(
        !crate::publish::in_motion(&v, NOW),
        "a scheduled operation is not motion"
    );
    // At its time, the cluster as it is then: n2 streams, so the primary stops for it.
    let mut then = v.clone();
    then.leader.as_mut().unwrap().expires_ms = at + 10_000;
    for m in &mut then.members {
        (m.seen_ms, m.updated_ms) = (at, at);
    }
    let a = decide(&then, &primary, at);
    assert!(
        matches!(&a[..], [Action::StopForSwitchover { .. }]),
        "{a:?}"
    );
    // n2 stopped streaming meanwhile: the leader ends it, saying why.
    then.members[1].state = MemberStatus::Stopped;
    let a = decide(&then, &primary, at);
    match &a[..] {
        [Action::FinishOp {
            ok: false, message, ..
        }] => {
            assert!(
                message.starts_with("at its scheduled time: n2 is not a streaming standby"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn switchover_runs_its_phases() {
    let so = OpKind::Switchover {
        from: "n1".into(),
        to: "n2".into(),
    };
    let members = vec![ms("n1", &["pgbaton_n2"]), ms("n2", &["pgbaton_n1"])];
    // Requested: the old primary stops cleanly.
    let v = with_op(
        view(Some("42"), Some("n1"), members.clone()),
        so.clone(),
        OpPhase::Requested,
    );
    let a = decide(&v, &local("n1", init(false), PRIMARY_RUNNING), NOW);
    assert!(
        matches!(&a[..], [Action::StopForSwitchover { .. }]),
        "{a:?}"
    );
    // A leader whose PostgreSQL crashed cannot stop cleanly: the switchover fails at once.
    let a = decide(&v, &local("n1", init(false), PgRun::Stopped), NOW);
    assert!(
        matches!(&a[..], [Action::FinishOp { ok: false, .. }]),
        "{a:?}"
    );
    // Demoted: the old primary must not take the lease back; the candidate waits for the LSN.
    let mut v = with_op(
        view(Some("42"), None, members.clone()),
        so.clone(),
        OpPhase::Demoted,
    );
    v.op.as_mut().unwrap().checkpoint_lsn = Some(Lsn(500));
    let a = decide(&v, &local("n1", init(false), PgRun::Stopped), NOW);
    assert!(matches!(&a[..], [Action::Wait { .. }]), "{a:?}");
    let mut c = local("n2", init(true), STANDBY_RUNNING);
    c.lsn = Some(Lsn(400));
    assert!(matches!(&decide(&v, &c, NOW)[..], [Action::Wait { .. }]));
    c.lsn = Some(Lsn(600));
    let a = decide(&v, &c, NOW);
    assert!(
        matches!(
            &a[..],
            [
                Action::AcquireLease,
                Action::Promote,
                Action::AdvanceOp {
                    phase: OpPhase::Promoted,
                    ..
                }
            ]
        ),
        "{a:?}"
    );
    // Promoted, then its agent restarted before moving the operation on: it moves on, and
    // keeps its lease (or, stopped meanwhile, takes it and starts as the new primary).
    let mut held = v.clone();
    held.leader = Some(Leader {
        member: "n2".into(),
        expires_ms: NOW + 1000,
    });
    let a = decide(&held, &local("n2", init(false), PRIMARY_RUNNING), NOW);
    assert!(
        matches!(
            &a[..],
            [
                Action::RenewLease,
                Action::AdvanceOp {
                    phase: OpPhase::Promoted,
                    ..
                }
            ]
        ),
        "{a:?}"
    );
    let a = decide(&v, &local("n2", init(false), PgRun::Stopped), NOW);
    assert!(
        matches!(
            &a[..],
            [
                Action::AcquireLease,
                Action::Start { upstream: None },
                Action::AdvanceOp { .. }
            ]
        ),
        "{a:?}"
    );
    // The target stopped reporting: the old primary does not wait out the whole timeout.
    let mut quiet = v.clone();
    for m in &mut quiet.members {
        m.updated_ms = NOW - 10_000;
    }
    quiet.op.as_mut().unwrap().updated_ms = NOW - 10_000;
    let a = decide(&quiet, &local("n1", init(false), PgRun::Stopped), NOW);
    assert!(
        matches!(&a[..], [Action::FinishOp { ok: false, .. }]),
        "{a:?}"
    );
    let a = decide(&v, &local("n1", init(false), PgRun::Stopped), NOW);
    assert!(
        matches!(&a[..], [Action::Wait { .. }]),
        "a target that reports is waited for: {a:?}"
    );
    // Too slow: it fails, and the old primary resumes by the usual rules afterwards.
    c.lsn = Some(Lsn(400));
    let a = decide(&v, &c, NOW + SWITCHOVER_TIMEOUT_MS + 1);
    assert!(
        matches!(&a[..], [Action::FinishOp { ok: false, .. }]),
        "{a:?}"
    );
    // Promoted: the old primary rejoins under the new one.
    let v = with_op(view(Some("42"), Some("n2"), members), so, OpPhase::Promoted);
    let a = decide(&v, &local("n1", init(false), PgRun::Stopped), NOW);
    assert!(
        matches!(&a[..], [Action::Rejoin { upstream }, Action::FinishOp { ok: true, .. }] if upstream.member == "n2"),
        "{a:?}"
    );
    // Already a standby (finishing failed after the rejoin): it finishes the operation.
    let a = decide(&v, &local("n1", init(true), STANDBY_RUNNING), NOW);
    assert!(
        matches!(&a[..], [Action::FinishOp { ok: true, .. }]),
        "{a:?}"
    );
    // The new primary lost right after: no leader to rejoin, and yet the operation does
    // not stay in flight for good (it would refuse every later one).
    let mut v = with_op(
        view(Some("42"), None, vec![]),
        v.op.unwrap().kind,
        OpPhase::Promoted,
    );
    let a = decide(&v, &local("n1", init(false), PgRun::Stopped), NOW);
    assert!(matches!(&a[..], [Action::Wait { .. }]), "{a:?}");
    v.op.as_mut().unwrap().updated_ms = NOW - SWITCHOVER_TIMEOUT_MS - 10_001;
    let a = decide(&v, &local("n1", init(false), PgRun::Stopped), NOW);
    assert!(
        matches!(&a[..], [Action::FinishOp { ok: true, .. }]),
        "{a:?}"
    );
}

fn init(standby: bool) -> DataDir {
    DataDir::Initialized {
        system_id: "42".into(),
        standby,
    }
}

#[test]
fn empty_store_empty_dir_claims_and_bootstraps() {
    let a = decide(
        &view(None, None, vec![]),
        &local("n1", DataDir::Empty, PgRun::Stopped),
        NOW,
    );
    assert_eq!(
        a,
        vec![
            Action::ClaimInitialize {
                value: "claimed:n1".into()
            },
            Action::Bootstrap
        ]
    );
}

/// A store that lost its keys while a member with data is alive: a member with an empty
/// data directory waits for it instead of bootstrapping a cluster of its own (with
/// `[bootstrap]`, an old point in time under the same system identifier). A member whose
/// report is stale does not count.
#[test]
fn an_empty_member_never_bootstraps_while_a_member_with_data_is_alive() {
    let mut n2 = MemberState::sample("n2", Role::Unknown, MemberStatus::Stopped, NOW);
    n2.system_id = Some("42".into());
    let a = decide(
        &view(None, None, vec![n2.clone()]),
        &local("n1", DataDir::Empty, PgRun::Stopped),
        NOW,
    );
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("member n2 has data")),
        "{a:?}"
    );
    n2.updated_ms = NOW - crate::ops::STALE_MS - 1;
    let a = decide(
        &view(None, None, vec![n2]),
        &local("n1", DataDir::Empty, PgRun::Stopped),
        NOW,
    );
    assert_eq!(a.len(), 2, "{a:?}");
    assert!(matches!(a[1], Action::Bootstrap), "{a:?}");
}

#[test]
fn interrupted_bootstrap_resumes() {
    let v = view(Some("claimed:n1"), None, vec![]);
    assert_eq!(
        decide(&v, &local("n1", DataDir::Empty, PgRun::Stopped), NOW),
        vec![Action::Bootstrap]
    );
    assert_eq!(
        decide(&v, &local("n1", init(false), PgRun::Stopped), NOW),
        vec![Action::Bootstrap]
    );
}

#[test]
fn another_members_bootstrap_is_waited_for() {
    let v = view(Some("claimed:n1"), None, vec![]);
    let a = decide(&v, &local("n2", DataDir::Empty, PgRun::Stopped), NOW);
    assert!(matches!(&a[..], [Action::Wait { reason }] if reason.contains("n1 is bootstrapping")));
}

#[test]
fn clone_waits_for_slot_then_clones() {
    let v = view(Some("42"), Some("n1"), vec![ms("n1", &[]), ms("n2", &[])]);
    let a = decide(&v, &local("n2", DataDir::Empty, PgRun::Stopped), NOW);
    assert!(matches!(&a[..], [Action::Wait { reason }] if reason.contains("pgbaton_n2")));
    let v = view(
        Some("42"),
        Some("n1"),
        vec![ms("n1", &["pgbaton_n2"]), ms("n2", &[])],
    );
    let a = decide(&v, &local("n2", DataDir::Empty, PgRun::Stopped), NOW);
    assert_eq!(
        a,
        vec![Action::Clone {
            from: Upstream {
                member: "n1".into(),
                host: "127.0.0.1".into(),
                port: 5432
            }
        }]
    );
}

#[test]
fn no_leader_means_nothing_to_clone_from() {
    let v = view(Some("42"), None, vec![ms("n1", &[])]);
    let a = decide(&v, &local("n2", DataDir::Empty, PgRun::Stopped), NOW);
    assert!(matches!(&a[..], [Action::Wait { .. }]));
}

#[test]
fn expired_lease_counts_as_free() {
    let mut v = view(Some("42"), Some("n1"), vec![ms("n1", &["pgbaton_n2"])]);
    v.leader.as_mut().unwrap().expires_ms = NOW;
    let a = decide(&v, &local("n2", DataDir::Empty, PgRun::Stopped), NOW);
    assert!(matches!(&a[..], [Action::Wait { .. }]));
}

#[test]
fn foreign_system_id_is_a_failure_and_nothing_else() {
    let v = view(Some("42"), Some("n1"), vec![ms("n1", &[])]);
    let d = DataDir::Initialized {
        system_id: "7".into(),
        standby: true,
    };
    let a = decide(&v, &local("n2", d, PgRun::Stopped), NOW);
    assert!(matches!(&a[..], [Action::Fail { reason }] if reason.contains("another cluster")));
    let a = decide(
        &v,
        &local("n2", DataDir::Foreign("x".into()), PgRun::Stopped),
        NOW,
    );
    assert!(matches!(&a[..], [Action::Fail { .. }]));
}

#[test]
fn malformed_identity_is_a_system_id_nobody_matches_and_says_so() {
    // Text in the initialize key that is neither a claim nor a system identifier: no
    // member bootstraps, clones, starts or keeps leading against it; each fails with why.
    for text in ["claimed:", "not-a-sysid", ""] {
        let v = view(Some(text), Some("n1"), vec![ms("n1", &["pgbaton_n2"])]);
        assert_eq!(v.initialize, Some(Identity::Malformed(text.into())));
        for (name, data, pg) in [
            ("n1", init(false), PRIMARY_RUNNING),
            ("n2", init(true), PgRun::Stopped),
            ("n2", DataDir::Empty, PgRun::Stopped),
        ] {
            let a = decide(&v, &local(name, data, pg), NOW);
            assert!(
                matches!(&a[..], [Action::Fail { reason }]
                    if reason.contains(&format!("initialize key holds {text:?}"))),
                "{text:?} {name}: {a:?}"
            );
        }
    }
    // A data directory that is not PostgreSQL's is still reported as that first.
    let v = view(Some("junk"), None, vec![]);
    let a = decide(
        &v,
        &local("n1", DataDir::Foreign("x".into()), PgRun::Stopped),
        NOW,
    );
    assert!(matches!(&a[..], [Action::Fail { reason }] if reason.contains("not a PostgreSQL")));
}

#[test]
fn primary_data_takes_lease_then_starts() {
    let v = view(Some("42"), None, vec![]);
    let a = decide(&v, &local("n1", init(false), PgRun::Stopped), NOW);
    assert_eq!(
        a,
        vec![Action::AcquireLease, Action::Start { upstream: None }]
    );
}

#[test]
fn running_leader_renews_and_keeps_slots_for_every_other_member() {
    let v = view(
        Some("42"),
        Some("n1"),
        vec![ms("n1", &[]), ms("n2", &[]), ms("n3", &[])],
    );
    let a = decide(&v, &local("n1", init(false), PgRun::Primary), NOW);
    assert_eq!(
        a,
        vec![
            Action::RenewLease,
            Action::EnsureSlots {
                names: vec!["pgbaton_n2".into(), "pgbaton_n3".into()]
            }
        ]
    );
}

#[test]
fn former_primary_never_runs_writable_beside_the_leader() {
    let v = view(Some("42"), Some("n2"), vec![ms("n2", &[])]);
    let a = decide(&v, &local("n1", init(false), PgRun::Primary), NOW);
    assert!(matches!(&a[..], [Action::Stop { .. }]));
    let a = decide(&v, &local("n1", init(false), PgRun::Stopped), NOW);
    assert!(matches!(&a[..], [Action::Wait { .. }]));
}

#[test]
fn a_standby_that_is_not_running_or_knows_no_position_never_takes_the_lease() {
    let v = view(Some("42"), None, vec![]);
    for pg in [PgRun::Stopped, STANDBY_RUNNING, PgRun::NotAnswering] {
        let a = decide(&v, &local("n2", init(true), pg), NOW);
        assert!(!a.contains(&Action::AcquireLease), "{a:?}");
    }
}

/// n1 was the primary (timeline 1, at `primary_lsn`) and its lease expired; n2 and n3
/// stream at the given positions.
fn after_primary_loss(primary_lsn: u64, n2: u64, n3: u64) -> ClusterView {
    let mut p = ms("n1", &["pgbaton_n2", "pgbaton_n3"]);
    p.role = Role::Primary;
    p.lsn = Some(Lsn(primary_lsn));
    p.updated_ms = NOW - 3_000;
    let st = |name: &str, lsn: u64| MemberState {
        role: Role::Standby,
        state: MemberStatus::Streaming,
        lsn: Some(Lsn(lsn)),
        ..ms(name, &[])
    };
    let mut v = view(Some("42"), None, vec![p, st("n2", n2), st("n3", n3)]);
    v.leader = Some(Leader {
        member: "n1".into(),
        expires_ms: NOW - 1,
    });
    v
}

fn standby_at(name: &str, lsn: u64) -> LocalView {
    let mut l = local(name, init(true), STANDBY_RUNNING);
    l.lsn = Some(Lsn(lsn));
    l.timeline = Some(1);
    l
}

#[test]
fn a_scheduled_switchover_whose_primary_died_before_its_time_holds_no_failover_back() {
    let so = OpKind::Switchover {
        from: "n1".into(),
        to: "n3".into(),
    };
    let mut v = with_op(after_primary_loss(1000, 1000, 900), so, OpPhase::Requested);
    v.op.as_mut().unwrap().not_before_ms = Some(NOW - 500);
    let a = decide(&v, &standby_at("n2", 1000), NOW);
    assert_eq!(a, [Action::AcquireLease, Action::Promote]);
    // The same request once acted on (its primary stopped for it) holds failover back.
    v.op.as_mut().unwrap().phase = OpPhase::Demoted;
    let a = decide(&v, &standby_at("n2", 1000), NOW);
    assert!(!a.contains(&Action::AcquireLease), "{a:?}");
}

#[test]
fn the_most_advanced_standby_takes_the_expired_lease_and_promotes() {
    let v = after_primary_loss(1000, 1000, 900);
    let a = decide(&v, &standby_at("n2", 1000), NOW);
    assert_eq!(a, [Action::AcquireLease, Action::Promote]);
    let a = decide(&v, &standby_at("n3", 900), NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("n2 is a better")),
        "{a:?}"
    );
    // Its own position counts as it is now, not as last published.
    let a = decide(&v, &standby_at("n3", 1100), NOW);
    assert_eq!(a, [Action::AcquireLease, Action::Promote]);
    // Equal positions: priority, then name.
    let v = after_primary_loss(1000, 1000, 1000);
    let a = decide(&v, &standby_at("n2", 1000), NOW);
    assert_eq!(a, [Action::AcquireLease, Action::Promote]);
    let mut n3 = standby_at("n3", 1000);
    n3.policy.failover_priority = 5;
    assert_eq!(
        decide(&v, &n3, NOW),
        [Action::AcquireLease, Action::Promote]
    );
}

#[test]
fn failover_skips_candidates_that_are_gone_tagged_or_too_far_behind() {
    // n2 is more advanced but its agent stopped reporting: n3 takes over.
    let mut v = after_primary_loss(1000, 1000, 900);
    v.members[1].updated_ms = NOW - 10_000;
    assert_eq!(
        decide(&v, &standby_at("n3", 900), NOW),
        [Action::AcquireLease, Action::Promote]
    );
    // n2 has nofailover: n3 takes over; n2 itself waits and says why.
    let mut v = after_primary_loss(1000, 1000, 900);
    v.members[1].nofailover = true;
    assert_eq!(
        decide(&v, &standby_at("n3", 900), NOW),
        [Action::AcquireLease, Action::Promote]
    );
    let mut n2 = standby_at("n2", 1000);
    n2.policy.nofailover = true;
    let a = decide(&v, &n2, NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("nofailover")),
        "{a:?}"
    );
    // Everyone further behind the last primary than max_lag_bytes: nobody is promoted.
    let v = after_primary_loss(10_000_000, 100, 90);
    for (name, lsn) in [("n2", 100), ("n3", 90)] {
        let a = decide(&v, &standby_at(name, lsn), NOW);
        assert!(
            matches!(&a[..], [Action::Wait { reason }] if reason.contains("max_lag_bytes")),
            "{a:?}"
        );
    }
    // A standby still on an older timeline than the last primary's is not a candidate.
    let mut v = after_primary_loss(1000, 1000, 900);
    v.members[0].timeline = Some(2);
    let a = decide(&v, &standby_at("n2", 1000), NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("timeline 1")),
        "{a:?}"
    );
}

#[test]
fn failover_waits_for_pause_operations_and_failsafe_promises() {
    let mut v = after_primary_loss(1000, 1000, 900);
    v.paused = true;
    let a = decide(&v, &standby_at("n2", 1000), NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("paused") && reason.contains("promoting")),
        "{a:?}"
    );
    // A promote of n3 in flight: n2 leaves the lease to it.
    let v = with_op(
        after_primary_loss(1000, 1000, 1000),
        OpKind::Promote {
            member: "n3".into(),
            force: false,
        },
        OpPhase::Requested,
    );
    let a = decide(&v, &standby_at("n2", 1000), NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("in flight")),
        "{a:?}"
    );
    assert_eq!(
        decide(&v, &standby_at("n3", 1000), NOW)[..2],
        [Action::AcquireLease, Action::Promote]
    );
    // A failsafe promise to n1 holds until it runs out.
    let v = after_primary_loss(1000, 1000, 900);
    let mut n2 = standby_at("n2", 1000);
    n2.failsafe = Some(Failsafe {
        leader: "n1".into(),
        until_ms: NOW + 1,
    });
    let a = decide(&v, &n2, NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("failsafe")),
        "{a:?}"
    );
    assert_eq!(
        decide(&v, &n2, NOW + 1),
        [Action::AcquireLease, Action::Promote]
    );
}

#[test]
fn a_standby_that_does_not_stream_from_the_leader_is_rejoined_with_pg_rewind() {
    let mut v = view(Some("42"), Some("n2"), vec![ms("n2", &["pgbaton_n3"])]);
    v.members[0].role = Role::Primary;
    let following = PgRun::Standby {
        upstream: Some("n2".into()),
    };
    let mut n3 = local("n3", init(true), following);
    n3.not_streaming_since_ms = Some(NOW - 1_000);
    assert!(
        !decide(&v, &n3, NOW)
            .iter()
            .any(|a| matches!(a, Action::Stop { .. })),
        "stopped before it was stuck"
    );
    n3.not_streaming_since_ms = Some(NOW - STUCK_STANDBY_TTLS * n3.policy.ttl_ms);
    let a = decide(&v, &n3, NOW);
    assert!(
        matches!(&a[..], [Action::Stop { reason }] if reason.contains("pg_rewind")),
        "{a:?}"
    );
    n3.pg = PgRun::Stopped;
    let a = decide(&v, &n3, NOW);
    assert!(
        matches!(&a[..], [Action::Rejoin { upstream }] if upstream.member == "n2"),
        "{a:?}"
    );
    // Not streaming only for a short while: just started.
    n3.not_streaming_since_ms = Some(NOW - 100);
    let a = decide(&v, &n3, NOW);
    assert!(matches!(&a[..], [Action::Start { .. }]), "{a:?}");
}

#[test]
fn standbys_leave_a_free_lease_to_a_former_primary_whose_agent_is_alive() {
    // The whole cluster restarted: n1's agent reports (PostgreSQL stopped) every loop.
    let mut v = after_primary_loss(1000, 1000, 900);
    v.members[0].state = MemberStatus::Stopped;
    v.members[0].updated_ms = NOW - 100;
    let a = decide(&v, &standby_at("n2", 1000), NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("former primary n1 is alive")),
        "{a:?}"
    );
    // It gave up restarting its PostgreSQL and handed over: the best standby takes over.
    v.members[0].handed_over = true;
    assert_eq!(
        decide(&v, &standby_at("n2", 1000), NOW),
        [Action::AcquireLease, Action::Promote]
    );
    // Its agent is gone (the report is older than two loops): no waiting for it.
    v.members[0].handed_over = false;
    v.members[0].updated_ms = NOW - 1_001;
    assert_eq!(
        decide(&v, &standby_at("n2", 1000), NOW),
        [Action::AcquireLease, Action::Promote]
    );
}

#[test]
fn a_standby_holding_the_lease_finishes_its_promotion() {
    let v = view(Some("42"), Some("n2"), vec![ms("n2", &[])]);
    let a = decide(&v, &standby_at("n2", 10), NOW);
    assert_eq!(a, [Action::RenewLease, Action::Promote]);
}

#[test]
fn a_crashed_leader_restarts_in_place_then_hands_over() {
    let mut v = after_primary_loss(1000, 1000, 900);
    v.leader = Some(Leader {
        member: "n1".into(),
        expires_ms: NOW + 2_000,
    });
    let mut n1 = local("n1", init(false), PgRun::Stopped);
    n1.timeline = Some(1);
    n1.crashed_since_ms = Some(NOW - 1_000);
    let a = decide(&v, &n1, NOW);
    assert_eq!(a, [Action::RenewLease, Action::Start { upstream: None }]);
    // Down for longer than primary_restart_timeout_ms: the lease goes to a standby.
    n1.crashed_since_ms = Some(NOW - n1.policy.primary_restart_timeout_ms);
    let a = decide(&v, &n1, NOW);
    assert!(
        matches!(&a[..], [Action::ReleaseLease { reason }, Action::Wait { .. }] if reason.contains("n2 can take over")),
        "{a:?}"
    );
    // Stuck starting: stopped first.
    n1.pg = PgRun::NotAnswering;
    let a = decide(&v, &n1, NOW);
    assert!(
        matches!(
            &a[..],
            [
                Action::Stop { .. },
                Action::ReleaseLease { .. },
                Action::Wait { .. }
            ]
        ),
        "{a:?}"
    );
    // Once released, it does not take the lease back while a standby can.
    n1.pg = PgRun::Stopped;
    v.leader = None;
    let a = decide(&v, &n1, NOW);
    assert!(matches!(&a[..], [Action::Wait { .. }]), "{a:?}");
    // No standby could take over: keep trying in place.
    for m in &mut v.members[1..] {
        m.state = MemberStatus::Crashed;
    }
    // ...but not on a stale view: its own report in it is older than the TTL.
    let a = decide(&v, &n1, NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("stale")),
        "{a:?}"
    );
    v.members[0].updated_ms = NOW - 100;
    let a = decide(&v, &n1, NOW);
    assert_eq!(a, [Action::AcquireLease, Action::Start { upstream: None }]);
}

/// An agent frozen after reading the view decides on the view from before the freeze, where
/// its own lease has lapsed and nobody is on a newer timeline yet; its PostgreSQL may have
/// been fenced mid-probe (not answering) or, frozen with it, still run. It must not take
/// the free lease on that view, nor stop a primary for it: it reads again.
#[test]
fn a_former_primary_does_not_take_the_lease_on_a_stale_view_whatever_postgresql_does() {
    let mut v = view(Some("42"), None, vec![ms("n1", &[]), ms("n2", &[])]);
    for pg in [PgRun::NotAnswering, PgRun::Primary, PgRun::Stopped] {
        v.members[0].updated_ms = NOW - 10_000;
        let n1 = local("n1", init(false), pg.clone());
        let a = decide(&v, &n1, NOW);
        assert!(
            matches!(&a[..], [Action::Wait { reason }] if reason.contains("stale")),
            "{pg:?}: {a:?}"
        );
        // Fresh, the same view lets it take the lease back (the compare-and-set decides).
        v.members[0].updated_ms = NOW - 100;
        let a = decide(&v, &n1, NOW);
        assert_eq!(a[0], Action::AcquireLease, "{pg:?}: {a:?}");
    }
}

#[test]
fn a_former_primary_does_not_take_a_free_lease_behind_a_newer_timeline() {
    let mut n2 = ms("n2", &[]);
    n2.role = Role::Primary;
    n2.timeline = Some(2);
    let v = view(Some("42"), None, vec![n2]);
    let mut n1 = local("n1", init(false), PgRun::Stopped);
    n1.timeline = Some(1);
    let a = decide(&v, &n1, NOW);
    assert!(
        matches!(&a[..], [Action::Wait { reason }] if reason.contains("timeline 2")),
        "{a:?}"
    );
    n1.pg = PRIMARY_RUNNING;
    let a = decide(&v, &n1, NOW);
    assert!(matches!(&a[..], [Action::Stop { .. }]), "{a:?}");
    n1.timeline = Some(2);
    let a = decide(&v, &n1, NOW);
    assert_eq!(a[0], Action::AcquireLease);
}

#[test]
fn stopped_standby_starts_following_the_leader() {
    let v = view(Some("42"), Some("n1"), vec![ms("n1", &[])]);
    let a = decide(&v, &local("n2", init(true), PgRun::Stopped), NOW);
    assert_eq!(
        a,
        vec![Action::Start {
            upstream: Some(Upstream {
                member: "n1".into(),
                host: "127.0.0.1".into(),
                port: 5432
            })
        }]
    );
}

#[test]
fn streaming_standby_follows_a_new_leader() {
    let v = view(Some("42"), Some("n3"), vec![ms("n3", &["pgbaton_n2"])]);
    let pg = PgRun::Standby {
        upstream: Some("n1".into()),
    };
    let a = decide(&v, &local("n2", init(true), pg), NOW);
    assert!(matches!(&a[..], [Action::Follow { upstream: Some(u) }] if u.member == "n3"));
    let pg = PgRun::Standby {
        upstream: Some("n3".into()),
    };
    // Following: it keeps a slot for every other member (here n3), for a failover.
    assert_eq!(
        decide(&v, &local("n2", init(true), pg.clone()), NOW),
        [Action::EnsureSlots {
            names: vec!["pgbaton_n3".into()]
        }]
    );
    // Not a failover candidate: nothing to keep.
    let mut l = local("n2", init(true), pg);
    l.policy.nofailover = true;
    assert!(decide(&v, &l, NOW).is_empty());
}

#[test]
fn a_failover_candidate_advances_its_slots_to_the_members_positions() {
    let mut n3 = ms("n3", &["pgbaton_n2"]);
    n3.lsn = Some(Lsn(5_000));
    let mut n1 = ms("n1", &[]);
    n1.lsn = Some(Lsn(900));
    let v = view(Some("42"), Some("n3"), vec![n1, ms("n2", &[]), n3]);
    let mut n2 = local(
        "n2",
        init(true),
        PgRun::Standby {
            upstream: Some("n3".into()),
        },
    );
    n2.lsn = Some(Lsn(4_000));
    let slot = |name: &str, restart: u64| SlotInfo {
        name: name.into(),
        active: false,
        restart_lsn: Some(Lsn(restart)),
        retained_bytes: None,
    };
    n2.slots = vec![slot("pgbaton_n1", 100), slot("pgbaton_n3", 4_000)];
    let a = decide(&v, &n2, NOW);
    assert_eq!(
        a.last(),
        Some(&Action::AdvanceSlots {
            // n1's to where n1 is; n3's not beyond n2's own position (it is there).
            targets: vec![("pgbaton_n1".into(), Lsn(900))]
        }),
        "{a:?}"
    );
}

#[test]
fn lost_store_identity_is_reclaimed_by_the_primary_only() {
    let v = view(None, None, vec![]);
    let a = decide(&v, &local("n1", init(false), PgRun::Stopped), NOW);
    assert_eq!(a, vec![Action::ClaimInitialize { value: "42".into() }]);
    let a = decide(&v, &local("n2", init(true), PgRun::Stopped), NOW);
    assert!(matches!(&a[..], [Action::Wait { .. }]));
}
