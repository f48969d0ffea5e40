//! Publishing the member's state to the store and the API.

use super::*;
use pgbaton_core::model::{ArchiveStatus, SyncReport};
use std::sync::atomic::Ordering;

/// What the agent needs to publish its member's state, also during a long step (a clone's
/// progress, a start).
#[derive(Clone)]
pub(crate) struct Publisher {
    pub cfg: Arc<NodeConfig>,
    pub bins: Binaries,
    pub store: Arc<dyn Store>,
    pub shared: api::SharedState,
    pub os_user: String,
    /// When the member's report in the store was last known to say what is true (written,
    /// or found unchanged): this member's own `seen_ms` in the views it decides on.
    pub checked_ms: Arc<std::sync::atomic::AtomicU64>,
    /// When the store was last told this member is alive.
    pub alive_ms: Arc<std::sync::atomic::AtomicU64>,
    /// The time (`updated_ms`) of the last report this agent wrote.
    pub written_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// One report of the member's state.
pub(crate) struct Report<'a> {
    pub local: &'a LocalView,
    pub status: MemberStatus,
    pub progress: Option<Progress>,
    /// The last probe, when PostgreSQL answered it.
    pub probe: Option<&'a Probe>,
    pub message: Option<&'a str>,
    pub handed_over: bool,
    pub archive: Option<ArchiveStatus>,
    /// The parameters waiting for a restart (`ClusterConf`).
    pub pending_restart: &'a [String],
}

impl Publisher {
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

    /// Publish with an explicit status during a long step or at shutdown (no SQL).
    pub(crate) async fn status(
        &self,
        status: MemberStatus,
        progress: Option<Progress>,
        message: Option<&str>,
        handed_over: bool,
    ) -> Result<()> {
        let local = self.glance();
        let archive = self.shared_member().and_then(|m| m.archive);
        self.publish(Report {
            local: &local,
            status,
            progress,
            probe: None,
            message,
            handed_over,
            archive,
            pending_restart: &[],
        })
        .await
    }

    fn shared_member(&self) -> Option<MemberState> {
        self.shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .member
            .clone()
    }

    /// The position this member published last (kept while PostgreSQL is stopped).
    fn last_position(&self) -> (Option<u32>, Option<pgbaton_core::model::Lsn>) {
        self.shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .view
            .as_ref()
            .and_then(|v| v.members.iter().find(|m| m.name == self.cfg.name))
            .map_or((None, None), |m| (m.timeline, m.lsn))
    }

    /// Write the report.
    pub(crate) async fn publish(&self, r: Report<'_>) -> Result<()> {
        let state = self.state(r);
        self.write(state).await
    }

    /// Write the report when it is due (`pgbaton_core::publish::due`: it says something
    /// new, the cluster is in motion, or the heartbeat); otherwise only the API shows it.
    /// A view that does not hold this agent's last write yet (a lagging watch) cannot say
    /// the store's report is unchanged: the report is written then.
    pub(crate) async fn publish_if_due(&self, r: Report<'_>, view: &ClusterView) -> Result<()> {
        let state = self.state(r);
        let written = self.written_ms.load(Ordering::Relaxed);
        let behind = view
            .member(&self.cfg.name)
            .is_none_or(|m| m.updated_ms < written);
        if behind || pgbaton_core::publish::due(view, &state, now_ms()) {
            return self.write(state).await;
        }
        self.shared
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .member = Some(state);
        self.checked_ms.store(now_ms(), Ordering::Relaxed);
        Ok(())
    }

    /// Say this member is alive, every half liveness TTL (not while it holds the leader
    /// lease: the lease says so).
    pub(crate) async fn keep_alive(&self, leading: bool) -> Result<()> {
        let ttl = pgbaton_core::publish::alive_ttl_ms(crate::host::timing(&self.shared).ttl_ms);
        let now = now_ms();
        if leading || now.saturating_sub(self.alive_ms.load(Ordering::Relaxed)) < ttl / 2 {
            return Ok(());
        }
        self.store
            .member_alive(&self.cfg.name, ttl)
            .await
            .context("say the member is alive in the store")?;
        self.alive_ms.store(now, Ordering::Relaxed);
        Ok(())
    }

    /// This member's own record in `view` as last known current (`checked_ms`), when the
    /// view holds the last report this agent wrote: a view read before a stall is stale by
    /// the stall (see `decide::primary::stale_view`). A view without that report is behind
    /// the store (a watch that lags): its own record keeps only its report's time, which
    /// ages while the agent writes every loop (review finding).
    pub(crate) fn mark_self(&self, view: &mut ClusterView) {
        let checked = self.checked_ms.load(Ordering::Relaxed);
        let written = self.written_ms.load(Ordering::Relaxed);
        if let Some(m) = view.members.iter_mut().find(|m| m.name == self.cfg.name) {
            m.seen_ms = pgbaton_core::publish::own_seen_ms(m.updated_ms, written, checked);
        }
    }

    async fn write(&self, state: MemberState) -> Result<()> {
        self.shared
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .member = Some(state.clone());
        self.store
            .member_put(&state)
            .await
            .context("publish the member's state to the store")?;
        self.checked_ms.store(state.updated_ms, Ordering::Relaxed);
        self.written_ms.store(state.updated_ms, Ordering::Relaxed);
        Ok(())
    }

    fn state(&self, r: Report<'_>) -> MemberState {
        let p = r.probe.filter(|_| r.local.pg.running());
        let system_id = p.map(|p| p.system_id.clone()).or(match &r.local.data {
            DataDir::Initialized { system_id, .. } => Some(system_id.clone()),
            _ => None,
        });
        let upstream = r.local.pg.upstream().map(str::to_string);
        // While PostgreSQL is stopped, the position last published stays published: the
        // failover decision holds candidates to the last primary's position and timeline
        // (pinned simulator test `stopped_primary_publishes_no_lsn`: a stopped primary that
        // published none let a standby 1.3 MB behind be promoted).
        let (timeline, lsn) = match p {
            Some(p) => (p.timeline, p.lsn),
            None => self.last_position(),
        };
        let cfg = &self.cfg;
        MemberState {
            name: cfg.name.clone(),
            role: role_of(r.local),
            state: r.status,
            host: cfg.connect_host(),
            port: cfg.postgresql.port,
            socket_dir: cfg.socket_dir().to_string_lossy().into_owned(),
            os_user: self.os_user.clone(),
            superuser: cfg.postgresql.superuser.clone(),
            api_url: cfg.api_url(),
            timeline,
            lsn,
            receive_lsn: p.and_then(|p| p.receive_lsn),
            system_id,
            upstream,
            slot_name: slot_name_for(&cfg.name),
            slots: p.map(|p| p.slots.clone()).unwrap_or_default(),
            pg_version: p.map(|p| p.version.clone()),
            message: r.message.map(str::to_string),
            progress: r.progress,
            agent_pid: std::process::id(),
            // The probe's time, not the publish's: a report is no more recent than the
            // positions in it (synchronous failover counts only reports made after the
            // old primary's fence).
            updated_ms: p.map_or_else(now_ms, |p| p.at_ms.min(now_ms())),
            nofailover: cfg.tags.nofailover,
            nosync: cfg.tags.nosync,
            synchronous: p.filter(|p| !p.in_recovery).map(|p| SyncReport {
                mode: r.local.policy.sync.mode,
                standby_names: p.sync_names.to_string(),
                strict: r.local.policy.sync.strict,
            }),
            failover_priority: cfg.tags.failover_priority,
            handed_over: r.handed_over,
            archive: r.archive,
            backup_server: backup_server_info(cfg),
            pending_restart: r.pending_restart.to_vec(),
            capabilities: pgbaton_core::model::CAPABILITIES
                .iter()
                .map(|c| c.to_string())
                .collect(),
            seen_ms: 0,
        }
    }
}

/// Its pgBackRest TLS server, as the other members reach it (`[backup.server]`).
fn backup_server_info(cfg: &NodeConfig) -> Option<pgbaton_core::model::BackupServerInfo> {
    let s = cfg.backup.as_ref()?.server.as_ref()?;
    cfg.postgresql.tls.as_ref()?;
    Some(pgbaton_core::model::BackupServerInfo {
        host: s.host_or(&cfg.postgresql),
        port: s.port,
        data_dir: cfg.data_dir.to_string_lossy().into_owned(),
        config: Some(
            crate::backup_server::conf_path(cfg)
                .to_string_lossy()
                .into_owned(),
        ),
    })
}
