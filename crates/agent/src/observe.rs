//! What the agent sees: the cluster view from the store, the local PostgreSQL, and the
//! agent's own memory folded into the decision's `LocalView`.

use super::*;

impl Agent {
    pub(crate) async fn cluster_view(&self) -> Result<ClusterView> {
        pgbaton_store::read_view(&*self.store).await
    }

    /// The local view for the decision, from what the last probe saw; keeps track of when
    /// each orphan slot was first seen (for the grace period before it is dropped).
    pub(crate) fn local_view(&mut self, view: &ClusterView, data: DataDir, pg: PgRun) -> LocalView {
        let running = matches!(pg, PgRun::Running { .. });
        let now = now_ms();
        // A primary's PostgreSQL that went down by itself: since when (restart in place,
        // then hand over after timing.primary_restart_timeout_ms).
        match (&pg, &data) {
            (
                PgRun::Running {
                    in_recovery: false, ..
                },
                _,
            ) => self.crashed_since_ms = None,
            (_, DataDir::Initialized { standby: false, .. }) if self.crashed => {
                self.crashed_since_ms.get_or_insert(now);
            }
            (_, DataDir::Initialized { standby: true, .. }) | (_, DataDir::Empty) => {
                self.crashed_since_ms = None
            }
            _ => {}
        }
        let streaming = self
            .probe
            .as_ref()
            .is_some_and(|p| p.receiver_status.as_deref() == Some("streaming"));
        match &pg {
            PgRun::Running {
                in_recovery: true, ..
            } if !streaming => {
                self.not_streaming_since_ms.get_or_insert(now);
            }
            PgRun::Running { .. } => self.not_streaming_since_ms = None,
            _ => {}
        }
        let mut local = LocalView::new(&self.cfg.name, data, pg);
        local.not_streaming_since_ms = self.not_streaming_since_ms;
        local.orphan_grace_ms = self.cfg.timing.orphan_slot_grace_ms;
        local.policy = pgbaton_core::failover::Policy::from_config(&self.cfg);
        local.crashed_since_ms = self.crashed_since_ms;
        local.rejoin_failed = self.rejoin_failed.clone();
        local.failsafe = self
            .shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .failsafe
            .clone()
            .filter(|f| f.leader != self.cfg.name);
        if let Some(p) = self.probe.as_ref().filter(|_| running) {
            local.lsn = p.lsn;
            local.receive_lsn = p.receive_lsn;
            local.timeline = p.timeline;
            local.slots = p.slots.clone();
            let (orphans, _) = pgbaton_core::decide::orphan_slots(&view.members, &p.slots);
            self.orphans_since.retain(|k, _| orphans.contains(k));
            for o in orphans {
                self.orphans_since.entry(o).or_insert(now);
            }
        }
        local.orphans_since = self.orphans_since.clone();
        local
    }

    pub(crate) async fn observe_pg(&mut self, view: &ClusterView) -> PgRun {
        if server::postmaster_pid(&self.cfg.data_dir).is_none() {
            self.client = None;
            self.probe = None;
            if self.expect_running {
                self.expect_running = false;
                self.crashed = true;
                warn!(
                    "PostgreSQL stopped without being asked to (crash or kill): starting it again"
                );
            }
            return PgRun::Stopped;
        }
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = sql::connect(&self.cfg, "postgres").await.ok();
        }
        let Some(client) = &self.client else {
            return PgRun::NotAnswering;
        };
        match sql::probe(client).await {
            Ok(p) => {
                let upstream = p.in_recovery.then(|| upstream_member(&p, view)).flatten();
                let run = PgRun::Running {
                    in_recovery: p.in_recovery,
                    upstream,
                };
                self.probe = Some(p);
                self.expect_running = true;
                run
            }
            Err(_) => {
                self.client = None;
                self.probe = None;
                PgRun::NotAnswering
            }
        }
    }

    pub(crate) fn status_of(&self, local: &LocalView) -> MemberStatus {
        match &local.pg {
            PgRun::Running {
                in_recovery: false, ..
            } => MemberStatus::Running,
            PgRun::Running {
                in_recovery: true, ..
            } => {
                match self
                    .probe
                    .as_ref()
                    .and_then(|p| p.receiver_status.as_deref())
                {
                    Some("streaming") => MemberStatus::Streaming,
                    _ => MemberStatus::Replaying,
                }
            }
            PgRun::NotAnswering => MemberStatus::Starting,
            PgRun::Stopped if self.crashed => MemberStatus::Crashed,
            PgRun::Stopped if local.data == DataDir::Empty => MemberStatus::WaitingForPrimary,
            PgRun::Stopped => MemberStatus::Stopped,
        }
    }
}

/// The member a standby's `primary_conninfo` points at, matched by host and port.
pub(crate) fn upstream_member(p: &Probe, view: &ClusterView) -> Option<String> {
    let (host, port) = p
        .receiver_sender
        .clone()
        .or_else(|| conninfo_host_port(&p.primary_conninfo))?;
    view.members
        .iter()
        .find(|m| m.host == host && m.port == port)
        .map(|m| m.name.clone())
}

/// host and port of a simple `key=value` connection string (as pgbaton renders them).
pub(crate) fn conninfo_host_port(conninfo: &str) -> Option<(String, u16)> {
    let mut host = None;
    let mut port = None;
    for kv in conninfo.split_whitespace() {
        match kv.split_once('=') {
            Some(("host", v)) => host = Some(v.trim_matches('\'').to_string()),
            Some(("port", v)) => port = v.trim_matches('\'').parse().ok(),
            _ => {}
        }
    }
    Some((host?, port.unwrap_or(5432)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_parsing() {
        assert_eq!(
            conninfo_host_port("host=127.0.0.1 port=5433 user=replicator passfile=/x"),
            Some(("127.0.0.1".into(), 5433))
        );
        assert_eq!(conninfo_host_port("user=x"), None);
    }
}
