//! Plans that leave the node as it was observed. The agent decides on one observation and,
//! after acting, observes again so that its report shows the result; when the plan changed
//! nothing, that second probe is skipped (half of an idle agent's work). The simulator
//! follows the same rule.

use super::{Action, LocalView};

/// A plan that changes nothing but the store's lease: see [`quiet_plan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quiet {
    /// Nothing done at all (or only waited).
    Nothing,
    /// The leader lease renewed: the view is read again for the lease's new expiry (the
    /// API's health checks read it).
    Renewed,
}

/// Whether `plan` leaves PostgreSQL and its data directory as `local` shows them. Making
/// sure of slots that the observation shows with a restart position (every loop on the
/// leader and its failover candidates) changes nothing when `slots_shortcut`: the executor
/// then takes them as they are (`exec::Postgres::ensure_slot`; not from PostgreSQL 18 on,
/// whose idle timeout invalidates a slot and keeps its restart position).
pub fn quiet_plan(plan: &[Action], local: &LocalView, slots_shortcut: bool) -> Option<Quiet> {
    let mut quiet = Quiet::Nothing;
    for a in plan {
        match a {
            Action::Wait { .. } => {}
            Action::RenewLease => quiet = Quiet::Renewed,
            Action::EnsureSlots { names }
                if slots_shortcut
                    && names.iter().all(|n| {
                        local
                            .slots
                            .iter()
                            .any(|s| &s.name == n && s.restart_lsn.is_some())
                    }) => {}
            _ => return None,
        }
    }
    Some(quiet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{DataDir, PgRun};
    use crate::model::{Lsn, SlotInfo};

    #[test]
    fn only_waiting_renewing_and_slots_that_exist_are_quiet() {
        let mut local = LocalView::new("n1", DataDir::Empty, PgRun::Primary);
        local.slots = vec![SlotInfo {
            name: "pgbaton_n2".into(),
            active: true,
            restart_lsn: Some(Lsn(1)),
            retained_bytes: Some(0),
        }];
        let wait = Action::Wait { reason: "x".into() };
        let ensure = |n: &str| Action::EnsureSlots {
            names: vec![n.to_string()],
        };
        assert_eq!(quiet_plan(&[], &local, true), Some(Quiet::Nothing));
        assert_eq!(
            quiet_plan(std::slice::from_ref(&wait), &local, true),
            Some(Quiet::Nothing)
        );
        assert_eq!(
            quiet_plan(&[Action::RenewLease, ensure("pgbaton_n2")], &local, true),
            Some(Quiet::Renewed)
        );
        // PostgreSQL 18 on: the executor looks at the slot, and may make it again.
        assert_eq!(
            quiet_plan(&[Action::RenewLease, ensure("pgbaton_n2")], &local, false),
            None
        );
        for loud in [
            ensure("pgbaton_n3"),
            Action::Reload,
            Action::Promote,
            Action::AcquireLease,
            Action::Stop { reason: "x".into() },
            Action::AdvanceSlots { targets: vec![] },
        ] {
            assert_eq!(
                quiet_plan(&[Action::RenewLease, loud.clone()], &local, true),
                None,
                "{loud:?}"
            );
        }
        // A slot without a restart position (invalidated) is made again: not quiet.
        local.slots[0].restart_lsn = None;
        assert_eq!(quiet_plan(&[ensure("pgbaton_n2")], &local, true), None);
    }
}
