//! Replication slots: one per member on the primary and on every failover candidate,
//! advanced to each member's last position; orphans dropped after their grace.

use super::*;

/// Slots of this standby to move forward: each other member's slot, to that member's last
/// reported position (never beyond this standby's own, never backwards).
pub(super) fn slot_advances(view: &ClusterView, local: &LocalView) -> Vec<(String, Lsn)> {
    let mine = local.lsn.unwrap_or_default();
    view.members
        .iter()
        .filter(|m| m.name != local.name)
        .filter_map(|m| {
            let name = slot_name_for(&m.name);
            let slot = local.slots.iter().find(|s| s.name == name)?;
            let target = m.lsn?.min(mine);
            (slot.restart_lsn.is_some_and(|r| r < target)).then_some((name, target))
        })
        .collect()
}

/// The leader's slots (and a failover candidate's): one per other member; pgbaton-named orphans dropped after the grace
/// period (never while active); foreign slots left alone.
pub(super) fn slot_plan(view: &ClusterView, local: &LocalView, now_ms: u64) -> Vec<Action> {
    let me = local.name.as_str();
    let names: Vec<String> = view
        .members
        .iter()
        .filter(|m| m.name != me)
        .map(|m| slot_name_for(&m.name))
        .collect();
    let mut actions = vec![Action::EnsureSlots { names }];
    let (orphans, _foreign) = orphan_slots(&view.member_slot_names(), &local.slots);
    let expired: Vec<String> = orphans
        .into_iter()
        .filter(|name| {
            let active = local.slots.iter().any(|s| &s.name == name && s.active);
            let since = local.orphans_since.get(name).copied().unwrap_or(now_ms);
            !active && now_ms.saturating_sub(since) >= local.orphan_grace_ms
        })
        .collect();
    if !expired.is_empty() {
        actions.push(Action::DropSlots { names: expired });
    }
    actions
}
