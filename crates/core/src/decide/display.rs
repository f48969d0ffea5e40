//! Actions in a line: `AcquireLease`, `Start(standby of n2)`, `FinishOp(switchover-1 done)`.
//! For logs, traces and table-driven tests; the `Debug` form holds every field.

use super::Action;
use crate::model::Lsn;
use crate::render::Upstream;
use std::fmt;

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::ClaimInitialize { value } => write!(f, "ClaimInitialize({value})"),
            Action::Bootstrap => f.write_str("Bootstrap"),
            Action::AcquireLease => f.write_str("AcquireLease"),
            Action::RenewLease => f.write_str("RenewLease"),
            Action::ReleaseLease { reason } => write!(f, "ReleaseLease({reason})"),
            Action::Clone { from } => write!(f, "Clone(from {})", from.member),
            Action::Start { upstream } => write!(f, "Start({})", role(upstream.as_ref())),
            Action::Follow { upstream } => match upstream {
                Some(up) => write!(f, "Follow({})", up.member),
                None => f.write_str("Follow(no upstream)"),
            },
            Action::Stop { reason } => write!(f, "Stop({reason})"),
            Action::EnsureSlots { names } => write!(f, "EnsureSlots({})", names.join(", ")),
            Action::DropSlots { names } => write!(f, "DropSlots({})", names.join(", ")),
            Action::AdvanceSlots { targets } => {
                write!(f, "AdvanceSlots({})", slot_targets(targets))
            }
            Action::Promote => f.write_str("Promote"),
            Action::WriteSyncSet { record, barrier } => write!(
                f,
                "WriteSyncSet({}{})",
                if record.is_blocked() {
                    "blocked".to_string()
                } else {
                    format!("{} of {}", record.quorum, record.members.join(", "))
                },
                if *barrier {
                    ", after a barrier commit"
                } else {
                    ""
                }
            ),
            Action::ClearSyncSet => f.write_str("ClearSyncSet"),
            Action::SetSyncNames { names } => write!(f, "SetSyncNames({names})"),
            Action::Rejoin { upstream } => write!(f, "Rejoin({})", upstream.member),
            Action::Reinit { from } => write!(f, "Reinit(from {})", from.member),
            Action::Restart { upstream } => write!(f, "Restart({})", role(upstream.as_ref())),
            Action::Reload => f.write_str("Reload"),
            Action::RemoveSelf { op, purge } => write!(
                f,
                "RemoveSelf(op {}{})",
                op.id,
                if *purge { ", purge" } else { "" }
            ),
            Action::StopForSwitchover { op } => write!(f, "StopForSwitchover(op {})", op.id),
            Action::AdvanceOp { op, phase, .. } => {
                write!(f, "AdvanceOp(op {} {})", op.id, phase_name(*phase))
            }
            Action::FinishOp { op, ok, .. } => write!(
                f,
                "FinishOp(op {} {})",
                op.id,
                if *ok { "done" } else { "failed" }
            ),
            Action::Wait { reason } => write!(f, "Wait({reason})"),
            Action::Fail { reason } => write!(f, "Fail({reason})"),
        }
    }
}

/// Whom PostgreSQL follows when it starts: `standby of <member>`, or `no upstream` (a
/// primary, or a standby while no leader is known: the data directory says which).
fn role(upstream: Option<&Upstream>) -> String {
    match upstream {
        Some(up) => format!("standby of {}", up.member),
        None => "no upstream".to_string(),
    }
}

fn slot_targets(targets: &[(String, Lsn)]) -> String {
    let parts: Vec<String> = targets
        .iter()
        .map(|(slot, lsn)| format!("{slot} to {lsn}"))
        .collect();
    parts.join(", ")
}

/// An operation's phase as the store spells it (`demoted`).
fn phase_name(phase: crate::model::OpPhase) -> String {
    format!("{phase:?}").to_lowercase()
}
