//! `Display` of every action, as a table.

use super::*;

fn up(member: &str) -> Upstream {
    Upstream {
        member: member.into(),
        host: "127.0.0.1".into(),
        port: 5432,
    }
}

#[test]
fn each_action_reads_in_a_line() {
    let op = Operation::new(
        "switchover-3".into(),
        OpKind::Switchover {
            from: "n1".into(),
            to: "n2".into(),
        },
        NOW,
    );
    let table: Vec<(Action, &str)> = vec![
        (
            Action::ClaimInitialize {
                value: claim_value("n1"),
            },
            "ClaimInitialize(claimed:n1)",
        ),
        (Action::Bootstrap, "Bootstrap"),
        (Action::AcquireLease, "AcquireLease"),
        (Action::RenewLease, "RenewLease"),
        (
            Action::ReleaseLease {
                reason: "PostgreSQL stopped".into(),
            },
            "ReleaseLease(PostgreSQL stopped)",
        ),
        (Action::Clone { from: up("n1") }, "Clone(from n1)"),
        (Action::Start { upstream: None }, "Start(no upstream)"),
        (
            Action::Start {
                upstream: Some(up("n2")),
            },
            "Start(standby of n2)",
        ),
        (
            Action::Follow {
                upstream: Some(up("n3")),
            },
            "Follow(n3)",
        ),
        (Action::Follow { upstream: None }, "Follow(no upstream)"),
        (
            Action::Stop {
                reason: "another member leads".into(),
            },
            "Stop(another member leads)",
        ),
        (
            Action::EnsureSlots {
                names: vec!["pgbaton_n2".into(), "pgbaton_n3".into()],
            },
            "EnsureSlots(pgbaton_n2, pgbaton_n3)",
        ),
        (
            Action::DropSlots {
                names: vec!["pgbaton_old".into()],
            },
            "DropSlots(pgbaton_old)",
        ),
        (
            Action::AdvanceSlots {
                targets: vec![("pgbaton_n1".into(), Lsn(0x3000060))],
            },
            "AdvanceSlots(pgbaton_n1 to 0/3000060)",
        ),
        (Action::Promote, "Promote"),
        (Action::Rejoin { upstream: up("n2") }, "Rejoin(n2)"),
        (Action::Reinit { from: up("n1") }, "Reinit(from n1)"),
        (Action::Restart { upstream: None }, "Restart(no upstream)"),
        (
            Action::Restart {
                upstream: Some(up("n1")),
            },
            "Restart(standby of n1)",
        ),
        (Action::Reload, "Reload"),
        (
            Action::RemoveSelf {
                op: op.clone(),
                purge: true,
            },
            "RemoveSelf(op switchover-3, purge)",
        ),
        (
            Action::RemoveSelf {
                op: op.clone(),
                purge: false,
            },
            "RemoveSelf(op switchover-3)",
        ),
        (
            Action::StopForSwitchover { op: op.clone() },
            "StopForSwitchover(op switchover-3)",
        ),
        (
            Action::AdvanceOp {
                op: op.clone(),
                phase: OpPhase::Demoted,
                message: "stopped cleanly".into(),
            },
            "AdvanceOp(op switchover-3 demoted)",
        ),
        (
            Action::FinishOp {
                op: op.clone(),
                ok: true,
                message: "n2 is the primary".into(),
            },
            "FinishOp(op switchover-3 done)",
        ),
        (
            Action::FinishOp {
                op,
                ok: false,
                message: "timed out".into(),
            },
            "FinishOp(op switchover-3 failed)",
        ),
        (
            Action::Wait {
                reason: "no primary holds the leader lease".into(),
            },
            "Wait(no primary holds the leader lease)",
        ),
        (
            Action::Fail {
                reason: "foreign data directory".into(),
            },
            "Fail(foreign data directory)",
        ),
    ];
    for (action, text) in table {
        assert_eq!(action.to_string(), text, "{action:?}");
    }
}
