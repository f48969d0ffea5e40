//! Operations the operator asks for: what is refused, and why. Pure: the CLI asks these
//! before it posts a request, and the agents' decision carries the request out.

use crate::decide::ClusterView;
use crate::model::{Leader, Lsn, MemberState, MemberStatus, OpKind, Operation, Role};
use crate::sync::SyncRecord;

/// A member's report older than this is not evidence that it is healthy (agents report
/// every loop, 1 s by default). Only what the operator is told depends on it: the lease
/// compare-and-set is what keeps two primaries from running.
pub const STALE_MS: u64 = 4_000;
/// How long a promote may wait for the old primary's lease to expire. A lease still renewed
/// after that means its agent is alive: the promote fails and says so.
pub const PROMOTE_LEASE_WAIT_MS: u64 = 60_000;
/// A switchover candidate further behind the primary than this is not "caught up".
pub const SWITCHOVER_MAX_LAG_BYTES: u64 = 16 * 1024 * 1024;
/// How long a switchover candidate may take to reach the old primary's shutdown checkpoint.
pub const SWITCHOVER_TIMEOUT_MS: u64 = 60_000;

/// The cluster at an instant, for checking a request: a [`ClusterView`] (borrowed) and the
/// time to judge the lease and the members' reports by.
pub struct Snapshot<'a> {
    pub leader: Option<&'a Leader>,
    pub members: &'a [MemberState],
    pub op: Option<&'a Operation>,
    pub now_ms: u64,
    /// The synchronous set's record, when synchronous replication is on.
    pub sync: Option<&'a SyncRecord>,
}

impl<'a> Snapshot<'a> {
    /// The view as it stands at `now_ms` (wall-clock ms).
    pub fn at(view: &'a ClusterView, now_ms: u64) -> Snapshot<'a> {
        Snapshot {
            leader: view.leader.as_ref(),
            members: &view.members,
            op: view.op.as_ref(),
            now_ms,
            sync: view.sync.as_ref(),
        }
    }

    /// Why `member` is not proven by the synchronous set to have every acknowledged
    /// commit, when one is recorded and it is not.
    fn not_synchronous(&self, member: &str) -> Option<String> {
        let r = self.sync?;
        if r.is_blocked() && r.leader != member {
            return Some(format!(
                "the synchronous set proves no standby has every acknowledged commit ({} runs \
                 asynchronously or has not set its synchronous standbys up)",
                r.leader
            ));
        }
        (!r.is_blocked() && !r.has(member)).then(|| {
            format!(
                "{member} is not a synchronous standby (the synchronous set is {}): it may lack \
                 acknowledged commits",
                r.members.join(", ")
            )
        })
    }

    fn member(&self, name: &str) -> Result<&'a MemberState, String> {
        self.members.iter().find(|m| m.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
            format!("no member named {name} (members: {})", known.join(", "))
        })
    }

    fn fresh(&self, m: &MemberState) -> bool {
        self.now_ms.saturating_sub(m.seen()) <= STALE_MS
    }

    /// The lease holder, when its lease is unexpired at `now_ms`.
    fn lease_holder(&self) -> Option<&'a MemberState> {
        let l = self.leader.filter(|l| l.expires_ms > self.now_ms)?;
        self.members.iter().find(|m| m.name == l.member)
    }

    /// How long the unexpired lease has left, ms.
    pub fn lease_left_ms(&self) -> Option<u64> {
        self.leader
            .filter(|l| l.expires_ms > self.now_ms)
            .map(|l| l.expires_ms - self.now_ms)
    }

    /// A primary that runs, holds the lease and reported recently.
    pub fn healthy_primary(&self) -> Option<&'a MemberState> {
        self.lease_holder().filter(|m| {
            m.role == Role::Primary && m.state == MemberStatus::Running && self.fresh(m)
        })
    }

    fn lsn(m: &MemberState) -> Option<Lsn> {
        m.receive_lsn.max(m.lsn)
    }
}

/// `remove --purge` deletes a member's data: refused when no other member is known to have
/// as much WAL (timeline, then LSN), or when its position is unknown. Audit finding: a
/// member whose lease merely ran out could be purged with the only copy of its last commits.
fn most_advanced_copy(s: &Snapshot, m: &MemberState) -> Result<(), String> {
    let pos = |o: &MemberState| (o.timeline, Snapshot::lsn(o));
    let member = &m.name;
    if pos(m).1.is_none() {
        return Err(format!(
            "{member}'s WAL position is unknown, so its data may be the most advanced copy: \
             --purge would delete it. Remove it without --purge, or pass --force"
        ));
    }
    // Another member's position counts only when its LSN is known: (newer timeline, no
    // LSN) proves nothing about having this member's commits.
    if s.members
        .iter()
        .any(|o| o.name != *member && pos(o).1.is_some() && pos(o) >= pos(m))
    {
        return Ok(());
    }
    Err(format!(
        "{member} has more WAL (timeline {}, {}) than any other member: its data is the most \
         advanced copy, and --purge would delete commits nobody else has. Remove it without \
         --purge, or pass --force",
        m.timeline
            .map(|t| t.to_string())
            .unwrap_or_else(|| "?".into()),
        Snapshot::lsn(m).map(|l| l.to_string()).unwrap_or_default()
    ))
}

/// Refuse a request that would lose data or break the cluster. `Ok` = it may be posted.
/// `force` lets promote pick a member that is not the most advanced, and `remove --purge`
/// delete the most advanced copy.
pub fn check(kind: &OpKind, s: &Snapshot, force: bool) -> Result<(), String> {
    if let Some(op) = s.op.filter(|o| o.scheduled(s.now_ms)) {
        return Err(format!(
            "operation {} ({} of {}) is scheduled for {}: cancel it first (pgbaton cancel)",
            op.id,
            op.kind.name(),
            op.kind.members().join(", "),
            crate::report::utc(op.not_before_ms.unwrap_or(0))
        ));
    }
    if let Some(op) = s.op.filter(|o| !o.phase.finished()) {
        return Err(format!(
            "operation {} ({} of {}) is still in progress: wait for it to finish",
            op.id,
            op.kind.name(),
            op.kind.members().join(", ")
        ));
    }
    match kind {
        OpKind::Promote { member, .. } => {
            let m = s.member(member)?;
            if let Some(p) = s.healthy_primary() {
                let left = s.lease_left_ms().unwrap_or(0);
                let seen = s.now_ms.saturating_sub(p.updated_ms);
                return Err(format!(
                    "the leader lease is still held by {p} (it runs out in {:.1} s unless {p} renews \
                     it; {p} last reported a running primary {:.1} s ago): promoting {member} now \
                     would make two primaries. For a planned change use `pgbaton switchover --to \
                     {member}`; if {p}'s host is gone, its lease runs out within a TTL: `pgbaton \
                     promote {member} --wait` waits for that",
                    left as f64 / 1000.0,
                    seen as f64 / 1000.0,
                    p = p.name
                ));
            }
            if m.role != Role::Standby {
                return Err(format!(
                    "{member} is not a standby (it is {}): only a standby can be promoted",
                    m.role
                ));
            }
            if !matches!(m.state, MemberStatus::Streaming | MemberStatus::Replaying) || !s.fresh(m)
            {
                return Err(format!(
                    "{member} is not a running standby (it is {}): start it first",
                    m.state
                ));
            }
            if let Some(why) = s.not_synchronous(member).filter(|_| !force) {
                return Err(format!(
                    "{why}; promoting it would lose them (ask again with --force to accept that)"
                ));
            }
            if !force {
                // Held to the bar automatic failover is held to: not on an older timeline
                // than the last primary, nor further behind its last reported position than
                // the default `failover.max_lag_bytes` (pinned simulator test
                // `a_manual_promote_is_held_to_the_failover_lag_bar`).
                let last = crate::failover::last_primary(s.members, member);
                let max_lag = crate::failover::Policy::default().max_lag_bytes;
                if let Err(why) = crate::failover::eligible(
                    member,
                    false,
                    1,
                    m.timeline,
                    Snapshot::lsn(m),
                    &last,
                    max_lag,
                ) {
                    return Err(format!(
                        "{why}: promoting it would lose the commits it lacks. Wait for it to catch \
                         up, or pass --force"
                    ));
                }
                let mine = Snapshot::lsn(m);
                for o in s
                    .members
                    .iter()
                    .filter(|o| o.name != *member && o.role == Role::Standby && s.fresh(o))
                {
                    if Snapshot::lsn(o) > mine {
                        return Err(format!(
                            "{} has more WAL ({}) than {member} ({}): promoting {member} would lose what only {} has. \
                             Promote {} instead, or pass --force",
                            o.name,
                            Snapshot::lsn(o).map(|l| l.to_string()).unwrap_or_default(),
                            mine.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into()),
                            o.name,
                            o.name
                        ));
                    }
                }
            }
            Ok(())
        }
        OpKind::Rejoin { member } => {
            let m = s.member(member)?;
            let Some(p) = s.lease_holder() else {
                return Err(
                    "no member holds the leader lease: there is no primary to rejoin".into(),
                );
            };
            if p.name == *member {
                return Err(format!(
                    "{member} is the primary: there is nothing to rejoin"
                ));
            }
            if m.role == Role::Standby {
                return Err(format!("{member} is already a standby"));
            }
            Ok(())
        }
        OpKind::Remove { member, purge } => {
            let m = s.member(member)?;
            if *purge && !force {
                most_advanced_copy(s, m)?;
            }
            if s.leader
                .is_some_and(|l| l.member == *member && l.expires_ms > s.now_ms)
            {
                return Err(format!(
                    "{member} is the primary: removing it would leave the cluster without one. \
                     Switch over first (`pgbaton switchover`), then remove it"
                ));
            }
            // Its report is the cluster's last known primary position, which holds the
            // automatic failover to standbys within `failover.max_lag_bytes` of it: removed
            // before a new primary runs, a standby far behind could be promoted (pinned
            // simulator test `removing_the_lost_primary_keeps_the_failover_lag_bar`).
            let last = crate::failover::last_primary(s.members, "").name;
            if s.healthy_primary().is_none() && last.as_deref() == Some(member.as_str()) {
                return Err(format!(
                    "{member} was the last primary and no new primary runs yet: its last report \
                     is what keeps the failover from promoting a standby too far behind. Wait for \
                     the failover (or `pgbaton promote`), then remove it"
                ));
            }
            Ok(())
        }
        OpKind::Reinit { member } => {
            s.member(member)?;
            let Some(p) = s.healthy_primary() else {
                return Err("no healthy primary to clone from".into());
            };
            if p.name == *member {
                return Err(format!(
                    "{member} is the primary: only a standby can be re-cloned"
                ));
            }
            Ok(())
        }
        OpKind::Restart { member } | OpKind::Reload { member } => {
            let m = s.member(member)?;
            if !s.fresh(m) {
                return Err(format!(
                    "{member}'s agent is not reporting: it cannot act on the request"
                ));
            }
            Ok(())
        }
        OpKind::Switchover { from, to } => {
            let Some(p) = s.healthy_primary() else {
                return Err("no healthy primary to switch over from".into());
            };
            if p.name != *from {
                return Err(format!("{from} is not the primary ({} is)", p.name));
            }
            let c = s.member(to)?;
            if c.name == p.name {
                return Err(format!("{to} is already the primary"));
            }
            if c.role != Role::Standby || c.state != MemberStatus::Streaming || !s.fresh(c) {
                return Err(format!("{to} is not a streaming standby (it is {} {}): it cannot take over without data loss", c.role, c.state));
            }
            let lag = match (c.lsn, p.lsn) {
                (Some(cl), Some(pl)) => cl.bytes_until(pl),
                _ => u64::MAX,
            };
            if let Some(why) = s
                .not_synchronous(to)
                .filter(|_| s.sync.is_some_and(|r| !r.is_blocked()))
            {
                return Err(format!("{why}: switch over to a synchronous standby"));
            }
            if lag > SWITCHOVER_MAX_LAG_BYTES {
                return Err(format!(
                    "{to} is not caught up ({} behind the primary; at most {} MB allowed)",
                    if lag == u64::MAX {
                        "unknown".to_string()
                    } else {
                        format!("{lag} bytes")
                    },
                    SWITCHOVER_MAX_LAG_BYTES / 1024 / 1024
                ));
            }
            Ok(())
        }
    }
}

/// The switchover candidate when none is named: the streaming standby with the most WAL.
pub fn pick_candidate(s: &Snapshot) -> Result<String, String> {
    let p = s
        .healthy_primary()
        .ok_or("no healthy primary to switch over from")?;
    s.members
        .iter()
        .filter(|m| {
            m.name != p.name
                && m.role == Role::Standby
                && m.state == MemberStatus::Streaming
                && s.fresh(m)
                && s.sync.is_none_or(|r| r.is_blocked() || r.has(&m.name))
        })
        .max_by_key(|m| (Snapshot::lsn(m), std::cmp::Reverse(m.name.clone())))
        .map(|m| m.name.clone())
        .ok_or_else(|| {
            "no standby is streaming: nobody can take over without data loss".to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::OpPhase;

    const NOW: u64 = 1_000_000;

    fn m(name: &str, role: Role, state: MemberStatus, lsn: u64) -> MemberState {
        MemberState {
            lsn: Some(Lsn(lsn)),
            system_id: Some("1".into()),
            ..MemberState::sample(name, role, state, NOW)
        }
    }

    fn healthy() -> Vec<MemberState> {
        vec![
            m("n1", Role::Primary, MemberStatus::Running, 1000),
            m("n2", Role::Standby, MemberStatus::Streaming, 1000),
            m("n3", Role::Standby, MemberStatus::Streaming, 900),
        ]
    }

    fn lease(member: &str) -> Leader {
        Leader {
            member: member.into(),
            expires_ms: NOW + 10_000,
        }
    }

    fn snap<'a>(
        leader: Option<&'a Leader>,
        members: &'a [MemberState],
        op: Option<&'a Operation>,
    ) -> Snapshot<'a> {
        Snapshot {
            leader,
            members,
            op,
            now_ms: NOW,
            sync: None,
        }
    }

    #[test]
    fn promote_is_refused_while_a_healthy_primary_runs() {
        let ms = healthy();
        let l = lease("n1");
        let e = check(
            &OpKind::Promote {
                member: "n2".into(),
                force: false,
            },
            &snap(Some(&l), &ms, None),
            false,
        )
        .unwrap_err();
        assert!(e.contains("switchover"), "{e}");
    }

    #[test]
    fn promote_is_allowed_when_the_primary_is_gone_but_not_of_a_laggard() {
        let mut ms = healthy();
        ms[0].state = MemberStatus::Crashed;
        assert!(check(
            &OpKind::Promote {
                member: "n2".into(),
                force: false,
            },
            &snap(None, &ms, None),
            false
        )
        .is_ok());
        let e = check(
            &OpKind::Promote {
                member: "n3".into(),
                force: false,
            },
            &snap(None, &ms, None),
            false,
        )
        .unwrap_err();
        assert!(e.contains("n2 has more WAL"), "{e}");
        assert!(check(
            &OpKind::Promote {
                member: "n3".into(),
                force: false,
            },
            &snap(None, &ms, None),
            true
        )
        .is_ok());
        // Further behind the lost primary's last position than failover allows: refused
        // unless forced, even when it is the most advanced standby.
        let mut ms = healthy();
        ms[0].state = MemberStatus::Crashed;
        ms[0].lsn = Some(Lsn(1000 + 2 * 1_048_576));
        let e = check(
            &OpKind::Promote {
                member: "n2".into(),
                force: false,
            },
            &snap(None, &ms, None),
            false,
        )
        .unwrap_err();
        assert!(
            e.contains("behind the last primary position") && e.contains("--force"),
            "{e}"
        );
        assert!(check(
            &OpKind::Promote {
                member: "n2".into(),
                force: false,
            },
            &snap(None, &ms, None),
            true
        )
        .is_ok());
        // A stale primary report does not count as healthy even with a lease.
        let mut ms = healthy();
        ms[0].updated_ms = NOW - STALE_MS - 1;
        let l = lease("n1");
        assert!(check(
            &OpKind::Promote {
                member: "n2".into(),
                force: false,
            },
            &snap(Some(&l), &ms, None),
            false
        )
        .is_ok());
    }

    #[test]
    fn remove_of_the_primary_is_refused() {
        let ms = healthy();
        let l = lease("n1");
        let e = check(
            &OpKind::Remove {
                member: "n1".into(),
                purge: false,
            },
            &snap(Some(&l), &ms, None),
            false,
        )
        .unwrap_err();
        assert!(e.contains("primary"), "{e}");
        assert!(check(
            &OpKind::Remove {
                member: "n3".into(),
                purge: true
            },
            &snap(Some(&l), &ms, None),
            false
        )
        .is_ok());
        assert!(check(
            &OpKind::Remove {
                member: "n9".into(),
                purge: true
            },
            &snap(Some(&l), &ms, None),
            false
        )
        .unwrap_err()
        .contains("no member named n9"));
    }

    #[test]
    fn purging_the_most_advanced_copy_needs_force() {
        let mut ms = healthy();
        // n1's lease ran out, nobody runs as primary yet; n2 was promoted by force earlier
        // and is behind n1 on the same timeline: n1 is the only copy of its last commits.
        ms[0].role = Role::Standby;
        ms[0].lsn = Some(Lsn(9_000));
        let purge = |m: &str| OpKind::Remove {
            member: m.into(),
            purge: true,
        };
        let e = check(&purge("n1"), &snap(None, &ms, None), false).unwrap_err();
        assert!(
            e.contains("most advanced copy") && e.contains("--force"),
            "{e}"
        );
        assert!(check(&purge("n1"), &snap(None, &ms, None), true).is_ok());
        assert!(check(&purge("n3"), &snap(None, &ms, None), false).is_ok());
        // Without --purge nothing is deleted: allowed.
        let keep = OpKind::Remove {
            member: "n1".into(),
            purge: false,
        };
        assert!(check(&keep, &snap(None, &ms, None), false).is_ok());
        // Another member on a newer timeline whose position is unknown proves nothing.
        let mut unknown = ms.clone();
        for o in &mut unknown[1..] {
            o.timeline = Some(9);
            o.lsn = None;
            o.receive_lsn = None;
        }
        let e = check(&purge("n1"), &snap(None, &unknown, None), false).unwrap_err();
        assert!(e.contains("most advanced copy"), "{e}");
        ms[0].lsn = None;
        ms[0].receive_lsn = None;
        let e = check(&purge("n1"), &snap(None, &ms, None), false).unwrap_err();
        assert!(e.contains("unknown"), "{e}");
    }

    #[test]
    fn switchover_needs_a_streaming_caught_up_candidate() {
        let mut ms = healthy();
        let l = lease("n1");
        let so = |to: &str| OpKind::Switchover {
            from: "n1".into(),
            to: to.into(),
        };
        assert!(check(&so("n2"), &snap(Some(&l), &ms, None), false).is_ok());
        ms[2].state = MemberStatus::Replaying;
        let e = check(&so("n3"), &snap(Some(&l), &ms, None), false).unwrap_err();
        assert!(e.contains("not a streaming standby"), "{e}");
        ms[1].lsn = Some(Lsn(0));
        ms[0].lsn = Some(Lsn(SWITCHOVER_MAX_LAG_BYTES + 1));
        assert!(check(&so("n2"), &snap(Some(&l), &ms, None), false)
            .unwrap_err()
            .contains("not caught up"));
        assert!(check(&so("n1"), &snap(Some(&l), &ms, None), false)
            .unwrap_err()
            .contains("already the primary"));
    }

    #[test]
    fn candidate_is_the_most_advanced_streaming_standby() {
        let ms = healthy();
        let l = lease("n1");
        assert_eq!(pick_candidate(&snap(Some(&l), &ms, None)).unwrap(), "n2");
        let mut ms = healthy();
        ms[1].state = MemberStatus::Replaying;
        ms[2].state = MemberStatus::Replaying;
        assert!(pick_candidate(&snap(Some(&l), &ms, None)).is_err());
    }

    #[test]
    fn one_operation_at_a_time() {
        let ms = healthy();
        let l = lease("n1");
        let op = Operation::new(
            "x".into(),
            OpKind::Reinit {
                member: "n3".into(),
            },
            NOW,
        );
        let e = check(
            &OpKind::Reinit {
                member: "n2".into(),
            },
            &snap(Some(&l), &ms, Some(&op)),
            false,
        )
        .unwrap_err();
        assert!(e.contains("in progress"), "{e}");
        let done = op.at(OpPhase::Done, None, NOW);
        assert!(check(
            &OpKind::Reinit {
                member: "n2".into()
            },
            &snap(Some(&l), &ms, Some(&done)),
            false
        )
        .is_ok());
    }

    #[test]
    fn rejoin_needs_a_primary_and_a_former_primary() {
        let mut ms = healthy();
        ms[0].role = Role::Primary;
        ms[0].state = MemberStatus::Stopped;
        let l = lease("n2");
        ms[1].role = Role::Primary;
        assert!(check(
            &OpKind::Rejoin {
                member: "n1".into()
            },
            &snap(Some(&l), &ms, None),
            false
        )
        .is_ok());
        assert!(check(
            &OpKind::Rejoin {
                member: "n3".into()
            },
            &snap(Some(&l), &ms, None),
            false
        )
        .unwrap_err()
        .contains("already a standby"));
        assert!(check(
            &OpKind::Rejoin {
                member: "n1".into()
            },
            &snap(None, &ms, None),
            false
        )
        .is_err());
    }
}
