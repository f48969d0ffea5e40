//! What the agent sees: the cluster view from the store, the local PostgreSQL, and the
//! agent's own memory folded into the decision's `LocalView`.

use super::*;
use pgbaton_core::memory::{Probed, ViewSettings};

impl Agent {
    /// The local view for the decision, from what the last probe saw, folded with the
    /// agent's memory (`Memory::fold`, shared with the simulator).
    pub(crate) fn local_view(&mut self, view: &ClusterView, data: DataDir, pg: PgRun) -> LocalView {
        let probed = self.exec.pg.probe.as_ref().map(probed);
        let failsafe = self
            .shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .failsafe
            .promise_to_other(&self.cfg.name);
        let mut settings = ViewSettings::from_config(&self.cfg);
        // The cluster's config holds pgbaton's cluster-wide settings over node.toml's.
        pgbaton_core::cluster_config::own::overlay(
            &self.exec.pg.cluster_conf.settings,
            &mut settings.policy,
        );
        let t = host::timing(&self.shared);
        settings.policy.set_timing(&t);
        settings.orphan_grace_ms = t.orphan_slot_grace_ms;
        self.exec.mem.fold(
            &self.cfg.name,
            view,
            data,
            pg,
            probed.as_ref(),
            &settings,
            failsafe,
            now_ms(),
        )
    }

    pub(crate) async fn observe_pg(&mut self, view: &ClusterView) -> PgRun {
        let pg = &mut self.exec.pg;
        if server::postmaster_pid(&self.cfg.data_dir).is_none() {
            pg.client = None;
            pg.probe = None;
            if self.exec.mem.postmaster_gone() {
                warn!(
                    "PostgreSQL stopped without being asked to (crash or kill): starting it again"
                );
            }
            return PgRun::Stopped;
        }
        if pg.client.as_ref().is_none_or(|c| c.is_closed()) {
            pg.client = sql::connect(&self.cfg, "postgres")
                .await
                .ok()
                .map(sql::Session::new);
        }
        let Some(client) = &pg.client else {
            return PgRun::NotAnswering;
        };
        match sql::probe(client).await {
            Ok(p) => {
                let run = if p.in_recovery {
                    PgRun::Standby {
                        upstream: upstream_member(&p, view),
                    }
                } else {
                    PgRun::Primary
                };
                pg.probe = Some(p);
                self.exec.mem.answered();
                run
            }
            Err(_) => {
                pg.client = None;
                pg.probe = None;
                PgRun::NotAnswering
            }
        }
    }

    /// The WAL receiver streams (by the last probe).
    pub(crate) fn streaming(&self) -> bool {
        self.exec
            .pg
            .probe
            .as_ref()
            .is_some_and(|p| p.receiver_status.as_deref() == Some("streaming"))
    }

    pub(crate) fn status_of(&self, local: &LocalView) -> MemberStatus {
        self.exec.mem.status(local, self.streaming())
    }
}

/// What the decision needs of a probe.
fn probed(p: &Probe) -> Probed {
    Probed {
        lsn: p.lsn,
        receive_lsn: p.receive_lsn,
        timeline: p.timeline,
        slots: p.slots.clone(),
        streaming: p.receiver_status.as_deref() == Some("streaming"),
        sync_names: p.sync_names.clone(),
        senders: p.senders.clone(),
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
