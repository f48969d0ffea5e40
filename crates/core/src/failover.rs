//! Automatic failover, pure: who may take a free lease, when the primary fences itself, and
//! what a failsafe confirmation promises.
//!
//! The safety argument, in three rules that `decide`, the agent and the simulator share:
//!
//! 1. **The lease is the right to write.** Taking and renewing it are compare-and-sets in the
//!    store; a member runs a writable primary only after one succeeded.
//! 2. **The fence wins the race.** A renewal that *starts* at `t0` keeps the lease until at
//!    least `t0 + ttl` for everyone else (the store counts from when it handles the request,
//!    which is later). The holder fences itself — PostgreSQL is stopped by a watchdog process
//!    that runs apart from the agent, so a frozen agent is fenced too — at
//!    [`fence_deadline_ms`]`(t0) = t0 + ttl - fence_margin`, unless a later renewal moved the
//!    deadline. Config validation keeps `fence_margin >= 100 ms` and room for two renewals.
//! 3. **Failsafe promises.** While the store is unreachable, the primary asks every other
//!    member over the agents' API to confirm it. A member that confirms at `r >= t0`
//!    promises not to take the lease before `r + ttl` ([`Failsafe::until_ms`]); when all
//!    confirm, the primary may move its fence deadline to `t0 + ttl - margin` as if it had
//!    renewed. A member that holds the lease, or is taking it, refuses to confirm.

use crate::model::{Lsn, MemberState, MemberStatus, Role};

/// The settings the failover decision needs (from `[timing]`, `[failover]` and `[tags]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub ttl_ms: u64,
    /// The agents' loop interval: a member that reported within two of them is alive.
    pub loop_interval_ms: u64,
    pub max_lag_bytes: u64,
    /// This member's `tags.nofailover`.
    pub nofailover: bool,
    /// This member's `tags.failover_priority`.
    pub failover_priority: u32,
    pub primary_restart_timeout_ms: u64,
    pub reclone_on_rewind_failure: bool,
    /// `[replication]`'s synchronous settings (applied by the leader).
    pub sync: crate::sync::SyncSettings,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            ttl_ms: 2_500,
            loop_interval_ms: 500,
            max_lag_bytes: 1_048_576,
            nofailover: false,
            failover_priority: 1,
            primary_restart_timeout_ms: 30_000,
            reclone_on_rewind_failure: false,
            sync: Default::default(),
        }
    }
}

impl Policy {
    pub fn from_config(cfg: &crate::config::NodeConfig) -> Policy {
        Policy {
            ttl_ms: cfg.timing.ttl_ms,
            loop_interval_ms: cfg.timing.loop_interval_ms,
            max_lag_bytes: cfg.failover.max_lag_bytes,
            nofailover: cfg.tags.nofailover,
            failover_priority: cfg.tags.failover_priority,
            primary_restart_timeout_ms: cfg.timing.primary_restart_timeout_ms,
            reclone_on_rewind_failure: cfg.failover.reclone_on_rewind_failure,
            sync: cfg.replication.sync_settings(),
        }
    }

    /// The timing a member runs with now (node.toml's, or the cluster's config over it).
    pub fn set_timing(&mut self, t: &crate::config::TimingConfig) {
        self.ttl_ms = t.ttl_ms;
        self.loop_interval_ms = t.loop_interval_ms;
        self.primary_restart_timeout_ms = t.primary_restart_timeout_ms;
    }
}

/// When the holder of a lease whose last successful renewal started at `renew_started_ms`
/// must have stopped accepting writes.
pub fn fence_deadline_ms(renew_started_ms: u64, ttl_ms: u64, fence_margin_ms: u64) -> u64 {
    renew_started_ms + ttl_ms.saturating_sub(fence_margin_ms)
}

/// A failsafe confirmation this member gave: `leader` is alive and serving, and this member
/// will not take the lease before `until_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failsafe {
    pub leader: String,
    pub until_ms: u64,
}

impl Failsafe {
    /// Does the promise still hold at `now_ms` (against anyone but `leader`)?
    pub fn active(&self, now_ms: u64) -> bool {
        now_ms < self.until_ms
    }
}

/// The failsafe handshake's one rule, owned by one type: a member never both promises a
/// live primary not to take the lease and takes it. The agent keeps one under one lock,
/// shared by its executor (`begin_acquire`) and its API (`confirm`); the simulator keeps one
/// per node. Fields are private so that nothing else can break the rule.
#[derive(Clone, Debug, Default)]
pub struct FailsafeGate {
    /// This member holds the leader lease, or is in the middle of taking it: it confirms
    /// no other primary.
    leading_or_acquiring: bool,
    /// The promise this member last gave a primary.
    promise: Option<Failsafe>,
    /// What this member last saw of the store: the member that holds or last held the
    /// lease, and whether its latest read failed. Failsafe is for a store nobody reaches: a
    /// member that reads the store vouches for no primary (that primary should fence itself
    /// and a standby take over through the store), and only the lease's last holder is
    /// vouched for (any other name was a way to hold off failover).
    last_leader: Option<String>,
    store_failing: bool,
}

impl FailsafeGate {
    /// A gate that already holds a promise (a restarted agent may have given one just
    /// before; pinned simulator test `agent_restart_forgets_its_failsafe_promise`).
    pub fn holding(promise: Failsafe) -> FailsafeGate {
        FailsafeGate {
            promise: Some(promise),
            ..Default::default()
        }
    }

    /// A read of the store succeeded; `leader` is the lease holder it showed (none: the
    /// last holder seen stays the one vouched for).
    pub fn store_read(&mut self, leader: Option<&str>) {
        if let Some(l) = leader {
            self.last_leader = Some(l.to_string());
        }
        self.store_failing = false;
    }

    /// A read of the store failed.
    pub fn store_failed(&mut self) {
        self.store_failing = true;
    }

    /// The latest read of the store failed: a failsafe question needs no fresh read.
    pub fn store_failing(&self) -> bool {
        self.store_failing
    }

    /// About to take the leader lease: refused (with the reason) while a promise to another
    /// live primary holds; otherwise, from now on, no primary is confirmed until
    /// `set_leading` says this member does not lead.
    pub fn begin_acquire(&mut self, me: &str, now_ms: u64) -> Result<(), String> {
        if let Some(f) = self
            .promise
            .as_ref()
            .filter(|f| f.leader != me && f.active(now_ms))
        {
            return Err(format!(
                "not taking the leader lease: {} was confirmed as a live primary (failsafe)",
                f.leader
            ));
        }
        self.leading_or_acquiring = true;
        Ok(())
    }

    /// A primary asks this member to confirm it: yes binds this member not to take the
    /// lease for `ttl_ms`; a member that leads or is taking the lease says no (the reason).
    /// `Ok((promise, new))`: `new` when this is not a renewal of a promise still active.
    /// Refused too for a member that is not the lease's last holder as this member saw it,
    /// and when `store_reachable`: the asker finds out by reading the store afresh (bounded)
    /// unless its latest read failed already. A loop's read alone could not tell: the
    /// member's last read may have succeeded a moment before the store went.
    pub fn confirm(
        &mut self,
        me: &str,
        leader: &str,
        ttl_ms: u64,
        store_reachable: bool,
        now_ms: u64,
    ) -> Result<(Failsafe, bool), String> {
        if self.leading_or_acquiring {
            return Err(format!(
                "{me} holds the leader lease or is taking it: it does not confirm {leader}"
            ));
        }
        match self.last_leader.as_deref() {
            Some(l) if l == leader => {}
            Some(l) => {
                return Err(format!(
                    "{leader} does not hold the leader lease ({l} holds or last held it, as {me} \
                     last read the store): {me} does not confirm it"
                ))
            }
            None => {
                return Err(format!(
                    "{me} has not read the store since it started, so it cannot tell whether \
                     {leader} holds the leader lease: it does not confirm it"
                ))
            }
        }
        if store_reachable {
            return Err(format!(
                "{me} reads the store: failsafe is for a store nobody reaches, so {leader} \
                 should renew its lease there or fence itself"
            ));
        }
        let new = self
            .promise
            .as_ref()
            .is_none_or(|f| f.leader != leader || !f.active(now_ms));
        let promise = Failsafe {
            leader: leader.to_string(),
            until_ms: now_ms + ttl_ms,
        };
        self.promise = Some(promise.clone());
        Ok((promise, new))
    }

    pub fn set_leading(&mut self, leading: bool) {
        self.leading_or_acquiring = leading;
    }

    pub fn leading(&self) -> bool {
        self.leading_or_acquiring
    }

    /// The promise this member gave another member (for the decision's `LocalView`).
    pub fn promise_to_other(&self, me: &str) -> Option<Failsafe> {
        self.promise.clone().filter(|f| f.leader != me)
    }

    /// The promise holds at `now_ms` (metrics).
    pub fn promised(&self, now_ms: u64) -> bool {
        self.promise.as_ref().is_some_and(|f| f.active(now_ms))
    }
}

/// A member that could be promoted: its position and preference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    /// How much WAL it has: max(received, replayed).
    pub lsn: Lsn,
    pub priority: u32,
}

/// What is known of the last primary (from its last report): the bar candidates are held to.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LastPrimary {
    pub name: Option<String>,
    pub timeline: Option<u32>,
    pub lsn: Option<Lsn>,
}

/// The last primary: among members reporting the primary role, the one on the newest timeline
/// (then the most advanced), excluding `except` (the member deciding, when it is a standby).
pub fn last_primary(members: &[MemberState], except: &str) -> LastPrimary {
    members
        .iter()
        .filter(|m| m.role == Role::Primary && m.name != except)
        .max_by_key(|m| (m.timeline, m.lsn, m.updated_ms))
        .map(|m| LastPrimary {
            name: Some(m.name.clone()),
            timeline: m.timeline,
            lsn: m.lsn,
        })
        .unwrap_or_default()
}

/// The last primary, when its agent is alive (it reported within two loops) and it has not
/// handed over: it takes the free lease back itself (a whole cluster restarted, a store
/// outage ended), so standbys leave it to it. A dead or frozen agent's report is about a TTL
/// old when its lease runs out, so a lost primary is not waited for.
pub fn returning_primary<'a>(
    members: &'a [MemberState],
    except: &str,
    policy: &Policy,
    now_ms: u64,
) -> Option<&'a MemberState> {
    let last = last_primary(members, except).name?;
    members.iter().find(|m| {
        m.name == last
            && !m.handed_over
            && m.state != MemberStatus::Failed
            && now_ms.saturating_sub(m.updated_ms) <= 2 * policy.loop_interval_ms
    })
}

/// The newest timeline any member reports (except `except`).
pub fn newest_timeline(members: &[MemberState], except: &str) -> Option<u32> {
    members
        .iter()
        .filter(|m| m.name != except)
        .filter_map(|m| m.timeline)
        .max()
}

/// Can a standby at `lsn` on `timeline`, with these tags, be promoted automatically?
/// `Err` = why not.
pub fn eligible(
    name: &str,
    nofailover: bool,
    priority: u32,
    timeline: Option<u32>,
    lsn: Option<Lsn>,
    last: &LastPrimary,
    max_lag_bytes: u64,
) -> Result<Candidate, String> {
    if nofailover {
        return Err(format!("{name} has tags.nofailover"));
    }
    if priority == 0 {
        return Err(format!("{name} has tags.failover_priority = 0"));
    }
    if let (Some(last_tl), Some(tl)) = (last.timeline, timeline) {
        if tl < last_tl {
            return Err(format!(
                "{name} is on timeline {tl}, behind the last primary's timeline {last_tl}"
            ));
        }
    }
    let Some(lsn) = lsn else {
        return Err(format!("{name} has not reported its WAL position"));
    };
    if let Some(last_lsn) = last.lsn {
        let behind = lsn.bytes_until(last_lsn);
        if behind > max_lag_bytes {
            return Err(format!(
                "{name} is {behind} bytes behind the last primary position {last_lsn}, more than \
                 failover.max_lag_bytes ({max_lag_bytes})"
            ));
        }
    }
    Ok(Candidate {
        name: name.to_string(),
        lsn,
        priority,
    })
}

/// Is this member report a running standby that was seen alive (`MemberState::seen`)
/// within `fresh_ms` of `now_ms`?
pub fn live_standby(m: &MemberState, now_ms: u64, fresh_ms: u64) -> bool {
    m.role == Role::Standby
        && matches!(m.state, MemberStatus::Streaming | MemberStatus::Replaying)
        && now_ms.saturating_sub(m.seen()) <= fresh_ms
}

/// Eligible candidates among the other members' reports (not `except`), best first.
pub fn other_candidates(
    members: &[MemberState],
    except: &str,
    last: &LastPrimary,
    policy: &Policy,
    now_ms: u64,
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = members
        .iter()
        .filter(|m| m.name != except && live_standby(m, now_ms, policy.ttl_ms))
        .filter_map(|m| {
            eligible(
                &m.name,
                m.nofailover,
                m.failover_priority,
                m.timeline,
                m.receive_lsn.max(m.lsn),
                last,
                policy.max_lag_bytes,
            )
            .ok()
        })
        .collect();
    rank(&mut out);
    out
}

/// Best first: most WAL, then highest priority, then name (so every member agrees).
pub fn rank(c: &mut [Candidate]) {
    c.sort_by(|a, b| {
        b.lsn
            .cmp(&a.lsn)
            .then(b.priority.cmp(&a.priority))
            .then(a.name.cmp(&b.name))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_never_both_promises_a_primary_and_takes_the_lease() {
        let mut g = FailsafeGate::default();
        g.store_read(Some("n1"));
        g.store_failed();
        let (p, new) = g.confirm("n2", "n1", 100, false, 10).unwrap();
        assert!(new);
        assert_eq!(p.until_ms, 110);
        assert!(g.begin_acquire("n2", 50).is_err(), "promised: no lease");
        assert!(g.begin_acquire("n2", 110).is_ok(), "the promise ran out");
        assert!(
            g.confirm("n2", "n1", 100, false, 111).is_err(),
            "taking it: no promise"
        );
        g.set_leading(false);
        let (_, new) = g.confirm("n2", "n1", 100, false, 112).unwrap();
        assert!(new, "the old promise had run out");
        let (_, new) = g.confirm("n2", "n1", 100, false, 113).unwrap();
        assert!(!new, "a renewal of an active promise");
        assert!(FailsafeGate::holding(p).begin_acquire("n2", 50).is_err());
    }

    #[test]
    fn failsafe_vouches_only_for_the_last_lease_holder_while_the_store_is_out_of_reach() {
        let mut g = FailsafeGate::default();
        let e = g.confirm("n2", "n1", 2500, false, 1_000).unwrap_err();
        assert!(e.contains("has not read the store"), "{e}");
        g.store_read(Some("n1"));
        // The store answers this member: no promise (the primary should renew there).
        let e = g.confirm("n2", "n1", 2500, true, 1_200).unwrap_err();
        assert!(e.contains("reads the store"), "{e}");
        // It does not: n1 is vouched for, nobody else.
        g.store_failed();
        assert!(g.store_failing());
        let e = g.confirm("n2", "n3", 2500, false, 1_300).unwrap_err();
        assert!(e.contains("n1 holds or last held it"), "{e}");
        assert!(g.confirm("n2", "n1", 2500, false, 1_300).is_ok());
        // A lease seen free keeps the last holder.
        g.store_read(None);
        assert!(!g.store_failing());
        assert!(g.confirm("n2", "n1", 2500, false, 1_600).is_ok());
    }

    fn standby(name: &str, lsn: u64, updated: u64) -> MemberState {
        MemberState {
            lsn: Some(Lsn(lsn)),
            ..MemberState::sample(name, Role::Standby, MemberStatus::Streaming, updated)
        }
    }

    #[test]
    fn the_fence_comes_before_the_lease_can_expire() {
        assert_eq!(fence_deadline_ms(1000, 2500, 500), 3000);
        assert!(fence_deadline_ms(1000, 2500, 500) < 1000 + 2500);
    }

    #[test]
    fn ranking_prefers_wal_then_priority_then_name() {
        let mut c = vec![
            Candidate {
                name: "c".into(),
                lsn: Lsn(10),
                priority: 1,
            },
            Candidate {
                name: "b".into(),
                lsn: Lsn(20),
                priority: 1,
            },
            Candidate {
                name: "a".into(),
                lsn: Lsn(10),
                priority: 5,
            },
            Candidate {
                name: "d".into(),
                lsn: Lsn(10),
                priority: 1,
            },
        ];
        rank(&mut c);
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["b", "a", "c", "d"]);
    }

    #[test]
    fn eligibility_rules() {
        let last = LastPrimary {
            name: Some("p".into()),
            timeline: Some(2),
            lsn: Some(Lsn(10_000_000)),
        };
        let ok = |tl, lsn| eligible("s", false, 1, Some(tl), Some(Lsn(lsn)), &last, 1_000_000);
        assert!(ok(2, 9_500_000).is_ok());
        assert!(ok(3, 9_500_000).is_ok());
        let e = ok(1, 10_000_000).unwrap_err();
        assert!(e.contains("timeline 1"), "{e}");
        let e = ok(2, 8_000_000).unwrap_err();
        assert!(e.contains("max_lag_bytes"), "{e}");
        let e = eligible("s", true, 1, Some(2), Some(Lsn(1)), &last, 1).unwrap_err();
        assert!(e.contains("nofailover"), "{e}");
        let e = eligible("s", false, 0, Some(2), Some(Lsn(1)), &last, 1).unwrap_err();
        assert!(e.contains("priority"), "{e}");
        let e = eligible("s", false, 1, Some(2), None, &last, 1).unwrap_err();
        assert!(e.contains("not reported"), "{e}");
        // Nothing known of a last primary: only the tags and a known position count.
        assert!(eligible(
            "s",
            false,
            1,
            None,
            Some(Lsn(0)),
            &LastPrimary::default(),
            0
        )
        .is_ok());
    }

    #[test]
    fn stale_and_unhealthy_reports_are_not_candidates() {
        let now = 100_000;
        let p = Policy::default();
        let mut crashed = standby("c", 50, now);
        crashed.state = MemberStatus::Crashed;
        let members = vec![
            standby("a", 40, now - 100),
            standby("b", 60, now - p.ttl_ms - 1), // stale: its agent is gone
            crashed,
            MemberState {
                nofailover: true,
                ..standby("d", 70, now)
            },
            standby("me", 99, now),
        ];
        let got = other_candidates(&members, "me", &LastPrimary::default(), &p, now);
        let names: Vec<&str> = got.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a"]);
    }

    #[test]
    fn last_primary_is_on_the_newest_timeline() {
        let mut old = MemberState::sample("old", Role::Primary, MemberStatus::Running, 5);
        old.timeline = Some(1);
        old.lsn = Some(Lsn(900));
        let mut new = MemberState::sample("new", Role::Primary, MemberStatus::Running, 1);
        new.timeline = Some(2);
        new.lsn = Some(Lsn(800));
        let lp = last_primary(&[old, new.clone()], "x");
        assert_eq!(lp.name.as_deref(), Some("new"));
        assert_eq!(lp.lsn, Some(Lsn(800)));
        assert_eq!(last_primary(&[new], "new"), LastPrimary::default());
    }
}
