//! What an agent remembers from one loop to the next, and how it folds that memory into the
//! decision's `LocalView`.
//!
//! The agent (`crates/agent`) and the simulator (`crates/sim`) both keep exactly this type,
//! updated by the same executor (`crates/exec`), so the simulator checks the memory the agent
//! really keeps, not a copy of it. Pure: time is an argument.

use crate::config::NodeConfig;
use crate::decide::{orphan_slots, ClusterView, DataDir, LocalView, PgRun};
use crate::failover::{Failsafe, Policy};
use crate::model::{Lsn, MemberStatus, SlotInfo};
use crate::sync::{SyncNames, WalSender};
use std::collections::BTreeMap;

/// The agent's memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// PostgreSQL was seen running, and nobody asked it to stop.
    pub expect_running: bool,
    /// PostgreSQL stopped without being asked to, and has not been started since.
    pub crashed: bool,
    /// How many times PostgreSQL was started again after it stopped by itself.
    pub restarts: u64,
    /// This agent holds the leader lease (as far as its last lease action knows).
    pub held_lease: bool,
    /// This member was removed from the cluster: the agent exits without publishing again.
    pub removed: bool,
    /// Since when (wall-clock ms) this member's primary PostgreSQL has been down without
    /// being asked to (restart in place, then hand over after
    /// `timing.primary_restart_timeout_ms`).
    pub crashed_since_ms: Option<u64>,
    /// Why the last automatic rejoin could not rewind (not retried until the agent restarts).
    pub rejoin_failed: Option<String>,
    /// Since when this standby's WAL receiver has not been streaming (kept while stopped).
    pub not_streaming_since_ms: Option<u64>,
    /// When each orphan slot (pgbaton-named, no member) was first seen on this primary.
    pub orphans_since: BTreeMap<String, u64>,
    /// Since when no leader lease has been seen.
    pub leaderless_since_ms: Option<u64>,
}

/// What a probe of the running PostgreSQL said (absent while it does not answer).
#[derive(Clone, Debug, Default)]
pub struct Probed {
    pub lsn: Option<Lsn>,
    pub receive_lsn: Option<Lsn>,
    pub timeline: Option<u32>,
    pub slots: Vec<SlotInfo>,
    /// The WAL receiver streams.
    pub streaming: bool,
    /// Primary: `synchronous_standby_names`.
    pub sync_names: SyncNames,
    /// Primary: `pg_stat_replication`.
    pub senders: Vec<WalSender>,
}

/// The settings the local view carries, from the node's config.
#[derive(Clone, Debug)]
pub struct ViewSettings {
    pub policy: Policy,
    pub orphan_grace_ms: u64,
}

impl ViewSettings {
    pub fn from_config(cfg: &NodeConfig) -> ViewSettings {
        ViewSettings {
            policy: Policy::from_config(cfg),
            orphan_grace_ms: cfg.timing.orphan_slot_grace_ms,
        }
    }
}

/// The loop's quick pace: while an operation is in flight, and just after the lease went.
pub const QUICK_LOOP_MS: u64 = 100;

/// How long after a loop starts the next one does. The configured interval, but
/// [`QUICK_LOOP_MS`] while an operation is in flight (each step waits on another member's
/// last step) and for two TTLs after this member saw the lease go: a candidate then waits on
/// reports made since (its own, and in the synchronous modes the set's), and at the normal
/// pace each such step cost a whole loop (synchronous failover took 0.5-1 s longer than
/// asynchronous). Both states are short, so the extra store reads are few.
pub fn loop_pace_ms(
    view: &ClusterView,
    mem: &Memory,
    now_ms: u64,
    loop_ms: u64,
    ttl_ms: u64,
) -> u64 {
    let op_in_flight = view.op.as_ref().is_some_and(|op| op.in_flight(now_ms));
    let lease_just_went = mem
        .leaderless_since_ms
        .is_some_and(|t| now_ms.saturating_sub(t) < 2 * ttl_ms);
    if op_in_flight || lease_just_went {
        loop_ms.min(QUICK_LOOP_MS)
    } else {
        loop_ms
    }
}

impl Memory {
    /// No postmaster runs. `true`: it stopped without being asked to (a crash or a kill),
    /// seen for the first time.
    pub fn postmaster_gone(&mut self) -> bool {
        let crash = self.expect_running;
        if crash {
            self.expect_running = false;
            self.crashed = true;
        }
        crash
    }

    /// PostgreSQL answered a probe: from now on a stop nobody asked for is a crash.
    pub fn answered(&mut self) {
        self.expect_running = true;
    }

    /// Stopping PostgreSQL on purpose (not a crash).
    pub fn stopping(&mut self) {
        self.expect_running = false;
    }

    /// A start begins: a new wait for the WAL receiver to stream.
    pub fn starting(&mut self) {
        self.not_streaming_since_ms = None;
    }

    /// PostgreSQL started. `true`: it had stopped by itself (a restart after a crash).
    pub fn started(&mut self) -> bool {
        let was_crash = self.crashed;
        if was_crash {
            self.restarts += 1;
        }
        self.crashed = false;
        self.expect_running = true;
        was_crash
    }

    /// A start failed. A primary that does not start counts as down since `now` (the
    /// hand-over to a standby after `timing.primary_restart_timeout_ms`).
    pub fn start_failed(&mut self, standby: bool, now_ms: u64) {
        if !standby {
            self.crashed_since_ms.get_or_insert(now_ms);
        }
    }

    /// The local view for the decision: the observation, and this memory updated by it
    /// (since when a primary has been down, since when a standby has not streamed, since
    /// when each orphan slot has been seen).
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per agent kind, named"
    )]
    pub fn fold(
        &mut self,
        name: &str,
        view: &ClusterView,
        data: DataDir,
        pg: PgRun,
        probed: Option<&Probed>,
        settings: &ViewSettings,
        failsafe: Option<Failsafe>,
        now_ms: u64,
    ) -> LocalView {
        let running = pg.running();
        match (&pg, &data) {
            (PgRun::Primary, _) => self.crashed_since_ms = None,
            (_, DataDir::Initialized { standby: false, .. }) if self.crashed => {
                self.crashed_since_ms.get_or_insert(now_ms);
            }
            (_, DataDir::Initialized { standby: true, .. }) | (_, DataDir::Empty) => {
                self.crashed_since_ms = None
            }
            _ => {}
        }
        let streaming = probed.is_some_and(|p| p.streaming);
        match &pg {
            PgRun::Standby { .. } if !streaming => {
                self.not_streaming_since_ms.get_or_insert(now_ms);
            }
            PgRun::Primary | PgRun::Standby { .. } => self.not_streaming_since_ms = None,
            _ => {}
        }
        if view.leader.as_ref().is_some_and(|l| l.expires_ms > now_ms) {
            self.leaderless_since_ms = None;
        } else {
            self.leaderless_since_ms.get_or_insert(now_ms);
        }
        let mut local = LocalView::new(name, data, pg);
        local.not_streaming_since_ms = self.not_streaming_since_ms;
        local.leaderless_since_ms = self.leaderless_since_ms;
        local.orphan_grace_ms = settings.orphan_grace_ms;
        local.policy = settings.policy.clone();
        local.crashed_since_ms = self.crashed_since_ms;
        local.rejoin_failed = self.rejoin_failed.clone();
        local.failsafe = failsafe.filter(|f| f.leader != name);
        if let Some(p) = probed.filter(|_| running) {
            local.lsn = p.lsn;
            local.receive_lsn = p.receive_lsn;
            local.timeline = p.timeline;
            local.slots = p.slots.clone();
            local.sync_names = p.sync_names.clone();
            local.senders = p.senders.clone();
            let (orphans, _) = orphan_slots(&view.member_slot_names(), &p.slots);
            self.orphans_since.retain(|k, _| orphans.contains(k));
            for o in orphans {
                self.orphans_since.entry(o).or_insert(now_ms);
            }
        }
        local.orphans_since = self.orphans_since.clone();
        local
    }

    /// The status to publish for what the loop saw.
    pub fn status(&self, local: &LocalView, streaming: bool) -> MemberStatus {
        match &local.pg {
            PgRun::Primary => MemberStatus::Running,
            PgRun::Standby { .. } if streaming => MemberStatus::Streaming,
            PgRun::Standby { .. } => MemberStatus::Replaying,
            PgRun::NotAnswering => MemberStatus::Starting,
            PgRun::Stopped if self.crashed => MemberStatus::Crashed,
            PgRun::Stopped if local.data == DataDir::Empty => MemberStatus::WaitingForPrimary,
            PgRun::Stopped => MemberStatus::Stopped,
        }
    }

    /// This member's primary has been down past the restart timeout: it hands over.
    pub fn handed_over(&self, now_ms: u64, restart_timeout_ms: u64) -> bool {
        self.crashed_since_ms
            .is_some_and(|since| now_ms.saturating_sub(since) >= restart_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ViewSettings {
        ViewSettings {
            policy: Policy::default(),
            orphan_grace_ms: 1000,
        }
    }

    /// Fold with an empty view, the test settings and no failsafe promise.
    fn fold(
        m: &mut Memory,
        name: &str,
        data: DataDir,
        pg: PgRun,
        probed: Option<&Probed>,
        now: u64,
    ) -> LocalView {
        m.fold(
            name,
            &ClusterView::default(),
            data,
            pg,
            probed,
            &settings(),
            None,
            now,
        )
    }

    fn primary_data() -> DataDir {
        DataDir::Initialized {
            system_id: "1".into(),
            standby: false,
        }
    }

    #[test]
    fn a_crash_is_a_stop_nobody_asked_for() {
        let mut m = Memory::default();
        assert!(!m.postmaster_gone(), "never seen running: not a crash");
        m.answered();
        m.stopping();
        assert!(!m.postmaster_gone(), "asked to stop: not a crash");
        m.answered();
        assert!(m.postmaster_gone());
        assert!(m.crashed);
        assert!(!m.postmaster_gone(), "seen once");
        assert!(m.started(), "the next start is a restart after a crash");
        assert_eq!(m.restarts, 1);
        assert!(!m.crashed);
    }

    #[test]
    fn a_crashed_primary_is_down_since_first_seen_and_hands_over_after_the_timeout() {
        let mut m = Memory::default();
        m.answered();
        m.postmaster_gone();
        let l = fold(&mut m, "n1", primary_data(), PgRun::Stopped, None, 10);
        assert_eq!(l.crashed_since_ms, Some(10));
        let l = fold(&mut m, "n1", primary_data(), PgRun::Stopped, None, 50);
        assert_eq!(l.crashed_since_ms, Some(10), "kept, not moved");
        assert!(!m.handed_over(109, 100));
        assert!(m.handed_over(110, 100));
        let writable = PgRun::Primary;
        let l = fold(&mut m, "n1", primary_data(), writable, None, 60);
        assert_eq!(l.crashed_since_ms, None, "back as a writable primary");
    }

    #[test]
    fn a_standby_not_streaming_is_timed_from_first_seen_and_kept_while_stopped() {
        let mut m = Memory::default();
        let data = DataDir::Initialized {
            system_id: "1".into(),
            standby: true,
        };
        let standby = PgRun::Standby { upstream: None };
        let quiet = Probed::default();
        let l = fold(&mut m, "n2", data.clone(), standby.clone(), Some(&quiet), 5);
        assert_eq!(l.not_streaming_since_ms, Some(5));
        let l = fold(&mut m, "n2", data.clone(), PgRun::Stopped, None, 9);
        assert_eq!(l.not_streaming_since_ms, Some(5), "kept while stopped");
        m.starting();
        let streams = Probed {
            streaming: true,
            ..Default::default()
        };
        let l = fold(&mut m, "n2", data, standby, Some(&streams), 12);
        assert_eq!(l.not_streaming_since_ms, None);
    }

    #[test]
    fn a_promise_given_to_this_member_itself_is_no_promise() {
        let mut m = Memory::default();
        let f = Failsafe {
            leader: "n1".into(),
            until_ms: 100,
        };
        let v = ClusterView::default();
        let l = m.fold(
            "n1",
            &v,
            primary_data(),
            PgRun::Stopped,
            None,
            &settings(),
            Some(f.clone()),
            1,
        );
        assert!(l.failsafe.is_none());
        let l = m.fold(
            "n2",
            &v,
            primary_data(),
            PgRun::Stopped,
            None,
            &settings(),
            Some(f),
            1,
        );
        assert!(l.failsafe.is_some());
    }
}
