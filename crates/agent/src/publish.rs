//! Publishing the member's state to the store and the API.

use super::*;

impl Agent {
    /// A cheap look at the node (no SQL) for publishing outside the loop's observation.
    pub(crate) fn glance(&self) -> LocalView {
        let data = datadir::inspect(&self.bins, &self.cfg.data_dir).unwrap_or(DataDir::Empty);
        let pg = if server::postmaster_pid(&self.cfg.data_dir).is_some() {
            PgRun::NotAnswering
        } else {
            PgRun::Stopped
        };
        LocalView::new(&self.cfg.name, data, pg)
    }

    /// Publish with an explicit status (during a long action, at shutdown).
    pub(crate) async fn publish_status(
        &self,
        status: MemberStatus,
        progress: Option<Progress>,
    ) -> Result<()> {
        self.publish_full(&self.glance(), status, progress).await
    }

    /// Publish with the status the node's state implies.
    pub(crate) async fn publish(&self, progress: Option<Progress>) -> Result<()> {
        let local = self.glance();
        let status = self.status_of(&local);
        self.publish_full(&local, status, progress).await
    }

    pub(crate) async fn publish_full(
        &self,
        local: &LocalView,
        status: MemberStatus,
        progress: Option<Progress>,
    ) -> Result<()> {
        let p = self
            .probe
            .as_ref()
            .filter(|_| matches!(local.pg, PgRun::Running { .. }));
        let role = role_of(local);
        let system_id = p.map(|p| p.system_id.clone()).or(match &local.data {
            DataDir::Initialized { system_id, .. } => Some(system_id.clone()),
            _ => None,
        });
        let upstream = match &local.pg {
            PgRun::Running { upstream, .. } => upstream.clone(),
            _ => None,
        };
        // While PostgreSQL is stopped, the position last published stays published: the
        // failover decision holds candidates to the last primary's position and timeline
        // (pinned simulator test `stopped_primary_publishes_no_lsn`: a stopped primary that
        // published none let a standby 1.3 MB behind be promoted).
        let (timeline, lsn) = match p {
            Some(p) => (p.timeline, p.lsn),
            None => self
                .shared
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .view
                .as_ref()
                .and_then(|v| v.members.iter().find(|m| m.name == self.cfg.name))
                .map_or((None, None), |m| (m.timeline, m.lsn)),
        };
        let state = MemberState {
            name: self.cfg.name.clone(),
            role,
            state: status,
            host: self.cfg.connect_host(),
            port: self.cfg.postgresql.port,
            socket_dir: self.cfg.socket_dir().to_string_lossy().into_owned(),
            os_user: self.ident.user.clone(),
            superuser: self.cfg.postgresql.superuser.clone(),
            api_url: self.cfg.api_url(),
            timeline,
            lsn,
            receive_lsn: p.and_then(|p| p.receive_lsn),
            system_id,
            upstream,
            slot_name: slot_name_for(&self.cfg.name),
            slots: p.map(|p| p.slots.clone()).unwrap_or_default(),
            pg_version: p.map(|p| p.version.clone()),
            message: self.message.clone(),
            progress,
            agent_pid: std::process::id(),
            updated_ms: now_ms(),
            nofailover: self.cfg.tags.nofailover,
            failover_priority: self.cfg.tags.failover_priority,
            handed_over: self.crashed_since_ms.is_some_and(|since| {
                now_ms().saturating_sub(since) >= self.cfg.timing.primary_restart_timeout_ms
            }),
            archive: self.archive.status.clone(),
        };
        self.shared
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .member = Some(state.clone());
        self.bounded(
            "publish the member's state to the store",
            self.store.member_put(&state),
        )
        .await
    }
}
