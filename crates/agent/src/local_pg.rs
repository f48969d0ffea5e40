//! The local PostgreSQL instance as the executor commands it (`pgbaton_exec::Postgres`),
//! over pg_ctl, SQL, pg_rewind and pg_basebackup.

use super::*;
use crate::cluster_conf::ClusterConf;
use pgbaton_core::model::{Lsn, Rewind, SlotEnsured};
use pgbaton_core::sync::SyncNames;
use pgbaton_pg::backrest::BackRest;
use pgbaton_pg::syncrep;
use publish::Publisher;

pub(crate) struct LocalPg {
    pub cfg: Arc<NodeConfig>,
    pub bins: Binaries,
    pub os_user: String,
    pub password: String,
    /// The connection the probe and the SQL steps use (dropped when PostgreSQL stops).
    pub client: Option<sql::Session>,
    /// The last probe that succeeded.
    pub probe: Option<Probe>,
    /// For a clone's progress.
    pub publisher: Publisher,
    /// What the progress reports say of a hand-over (set from the agent's memory each loop).
    pub handed_over: bool,
    /// The cluster's parameters from the store, and the restarts they wait for.
    pub cluster_conf: ClusterConf,
    /// The cluster's file changed and PostgreSQL has not been reloaded since.
    pub reload_owed: bool,
}

impl LocalPg {
    /// The cluster's parameters as the store's view holds them: the file written and
    /// PostgreSQL reloaded when they changed, and its pending restarts read when due.
    pub(crate) async fn apply_cluster_conf(&mut self, text: Option<&str>) {
        let now = now_ms();
        self.cluster_conf.update(text);
        match self.cluster_conf.write(&self.cfg, now) {
            Ok(changed) => self.reload_owed |= changed,
            Err(e) => warn!(
                "write {}: {e:#}",
                pgbaton_core::cluster_config::CLUSTER_FILE
            ),
        }
        // pg_ctl reload needs no connection (the first loop after the agent starts has
        // none yet); owed until it succeeds, or until a start reads the file anyway.
        if self.reload_owed && server::postmaster_pid(&self.cfg.data_dir).is_some() {
            match server::reload(&self.bins, &self.cfg.data_dir).await {
                Ok(()) => self.reload_owed = false,
                Err(e) => warn!("reload after the cluster's parameters changed: {e:#}"),
            }
        }
        if let Some(c) = &self.client {
            self.cluster_conf.check(c, now).await;
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(crate::host::timing(&self.publisher.shared).start_timeout_ms)
    }

    fn client(&self) -> Result<&sql::Session> {
        self.client
            .as_ref()
            .context("no connection to the local PostgreSQL")
    }

    pub(crate) fn write_pgpass(&self) -> Result<()> {
        files::write_if_changed(
            &self.cfg.pgpass_path(),
            &render::pgpass(&self.cfg.replication.user, &self.password),
            0o600,
        )
        .with_context(|| format!("write the passfile {}", self.cfg.pgpass_path().display()))?;
        Ok(())
    }

    /// What every start needs: the port free, the socket and archive directories, the
    /// passfile.
    fn prepare_start(&self) -> Result<()> {
        let pg = &self.cfg.postgresql;
        if port_taken(&pg.listen_host, pg.port) {
            bail!(
                "port {} on {} is already in use by another program: PostgreSQL cannot listen there. \
                 Stop that program or choose another postgresql.port",
                pg.port,
                pg.listen_host
            );
        }
        files::ensure_dir(&self.cfg.socket_dir(), 0o700)?;
        if let Some(dir) = &pg.archive_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("create the WAL archive directory {}", dir.display()))?;
        }
        BackRest::write_conf(&self.cfg)?;
        self.write_pgpass()
    }

    /// pg_basebackup, publishing its progress.
    async fn base_backup(&mut self, from: &Upstream, replace: bool) -> Result<()> {
        let slot = slot_name_for(&self.cfg.name);
        info!(
            "cloning from {} ({}:{}) with pg_basebackup, slot {slot}",
            from.member, from.host, from.port
        );
        let (tx, mut rx) = tokio::sync::watch::channel::<Option<Progress>>(None);
        let passfile = self.cfg.pgpass_path();
        let ssl = render::ssl_params(&self.cfg);
        let spec = CloneSpec {
            host: &from.host,
            port: from.port,
            user: &self.cfg.replication.user,
            passfile: &passfile,
            slot: &slot,
            application_name: &self.cfg.name,
            data_dir: &self.cfg.data_dir,
            replace,
            ssl: &ssl,
        };
        let started = Instant::now();
        let clone = pgbaton_pg::clone::clone(&self.bins, &spec, &tx);
        tokio::pin!(clone);
        let message = format!("cloning from {}", from.member);
        let mut last_logged_pct = 0u64;
        let result = loop {
            tokio::select! {
                r = &mut clone => break r,
                changed = rx.changed() => {
                    if changed.is_err() { continue; }
                    let Some(p) = *rx.borrow_and_update() else { continue };
                    let pct = (p.done_kb * 100).checked_div(p.total_kb).unwrap_or(0);
                    if pct >= last_logged_pct + 25 {
                        last_logged_pct = pct;
                        info!("base backup {pct}% ({} of {} kB)", p.done_kb, p.total_kb);
                    }
                    let status = MemberStatus::Cloning;
                    let handed_over = self.handed_over;
                    if let Err(e) = self.publisher.status(status, Some(p), Some(&message), handed_over).await {
                        warn!("{e:#}");
                    }
                }
            }
        };
        result.map_err(|e| tls_hint(&self.cfg, &from.host, e))?;
        // The clone may end before its last progress report was handled: log it here (the
        // completed 100% line was missing from a loaded test run).
        if let Some(p) = *rx.borrow() {
            let pct = (p.done_kb * 100).checked_div(p.total_kb).unwrap_or(0);
            if pct > last_logged_pct {
                info!("base backup {pct}% ({} of {} kB)", p.done_kb, p.total_kb);
            }
        }
        info!(
            "base backup done in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// A connection that failed TLS verification: say which file and setting are involved.
fn tls_hint(cfg: &NodeConfig, host: &str, e: anyhow::Error) -> anyhow::Error {
    let text = format!("{e:#}");
    match &cfg.postgresql.tls {
        Some(t) if text.contains("certificate") || text.contains("SSL") => e.context(format!(
            "TLS to {host} failed: the server's certificate must be signed by the CA in {} \
             (postgresql.tls.ca_file){}",
            t.ca_file.display(),
            if t.verify == pgbaton_core::config::TlsVerify::VerifyFull {
                format!(" and name {host} (verify-full; verify = \"verify-ca\" skips the name)")
            } else {
                String::new()
            }
        )),
        _ => e,
    }
}

#[async_trait::async_trait]
impl pgbaton_exec::Postgres for LocalPg {
    async fn running(&mut self) -> bool {
        server::postmaster_pid(&self.cfg.data_dir).is_some()
    }

    fn connected(&self) -> bool {
        self.client.is_some()
    }

    async fn prepare(&mut self) -> Result<()> {
        self.prepare_start()
    }

    async fn start(&mut self, standby: bool, upstream: Option<&Upstream>) -> Result<()> {
        files::write_pg_config(&self.cfg, &self.os_user, standby, upstream)?;
        // The data directory may be new (a clone, a restore): the cluster's file again.
        self.cluster_conf.forget_written();
        self.cluster_conf.write(&self.cfg, now_ms())?;
        let log = self.cfg.log_file();
        server::start(&self.bins, &self.cfg.data_dir, &log, self.timeout()).await?;
        self.client = None;
        self.reload_owed = false;
        self.cluster_conf.forget_server();
        Ok(())
    }

    async fn stop(&mut self) -> Result<()> {
        self.client = None;
        self.probe = None;
        self.cluster_conf.forget_server();
        server::stop(&self.bins, &self.cfg.data_dir, self.timeout()).await
    }

    async fn shutdown_checkpoint(&mut self) -> Result<Lsn> {
        let cd = datadir::controldata(&self.bins, &self.cfg.data_dir)?;
        if cd.state != "shut down" {
            bail!(
                "after stopping, pg_control says {:?}, not \"shut down\"",
                cd.state
            );
        }
        cd.checkpoint_lsn
            .as_deref()
            .context("pg_controldata shows no checkpoint location")?
            .parse()
            .context("the checkpoint location in pg_control")
    }

    async fn fence(&mut self, why: &str) -> Result<()> {
        // On a blocking thread: the fence waits for PostgreSQL's processes to exit (up to
        // seconds), and the agent's other tasks (the API, `/failsafe` answers) share its one
        // worker.
        let (dir, why) = (self.cfg.data_dir.clone(), why.to_string());
        tokio::task::spawn_blocking(move || fence::fence(&dir, &why))
            .await
            .context("the fence's thread ended abnormally")?
    }

    async fn promote(&mut self) -> Result<()> {
        sql::promote(self.client()?, self.timeout()).await?;
        // Now a primary: its own config says so (no primary_conninfo, no standby.signal).
        files::write_pg_config(&self.cfg, &self.os_user, false, None)?;
        server::reload(&self.bins, &self.cfg.data_dir).await?;
        // pg_rewind judges a source's timeline by its last checkpoint, and after a
        // promotion PostgreSQL checkpoints only later and asynchronously: until then a
        // former primary rejoining it would be "rewound" against the old timeline and
        // fail to start. Checkpoint now, before anyone is told about the promotion.
        self.client()
            .context("no connection to PostgreSQL after promoting")?
            .batch_execute("CHECKPOINT")
            .await
            .context("checkpoint after promotion")
    }

    async fn follow(&mut self, upstream: Option<&Upstream>) -> Result<()> {
        files::write_pg_config(&self.cfg, &self.os_user, true, upstream)?;
        server::reload(&self.bins, &self.cfg.data_dir).await
    }

    async fn reload(&mut self) -> Result<()> {
        server::reload(&self.bins, &self.cfg.data_dir).await
    }

    async fn rewind(&mut self, upstream: &Upstream) -> Result<Rewind> {
        let port = upstream.port.to_string();
        let passfile = self.cfg.pgpass_path();
        let source = render::member_conninfo(
            &self.cfg,
            &[
                ("host", &upstream.host),
                ("port", &port),
                ("user", &self.cfg.replication.user),
                ("dbname", "postgres"),
                ("passfile", &passfile.to_string_lossy()),
                ("connect_timeout", "10"),
            ],
        );
        let from_archive = self.cfg.postgresql.archive_dir.is_some() || self.cfg.backup.is_some();
        pgbaton_pg::rewind::rewind_if_diverged(
            &self.bins,
            &self.cfg.data_dir,
            &source,
            from_archive,
        )
        .await
        .map_err(|e| tls_hint(&self.cfg, &upstream.host, e))
    }

    fn upstream_wal_gone(&self) -> Option<String> {
        server::upstream_wal_gone(&self.cfg.log_file())
    }

    async fn clone_from(&mut self, from: &Upstream, replace: bool) -> Result<()> {
        self.prepare_start()?;
        if let Some(parent) = self.cfg.data_dir.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        if self.cfg.backup.as_ref().is_some_and(|b| b.restore_replicas) {
            match self.restore_from_repo(replace).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => warn!("restore from the pgBackRest repository failed, copying the primary with pg_basebackup instead: {e:#}"),
            }
        }
        self.base_backup(from, replace).await
    }

    async fn initdb_if_empty(&mut self, data: &DataDir) -> Result<()> {
        if *data != DataDir::Empty {
            return Ok(());
        }
        if self.cfg.bootstrap.is_some() {
            return self.restore_for_bootstrap().await;
        }
        files::ensure_dir(&self.cfg.data_dir, 0o700)?;
        info!(
            "initdb {} (data checksums, scram-sha-256)",
            self.cfg.data_dir.display()
        );
        server::initdb(
            &self.bins,
            &self.cfg.data_dir,
            &self.cfg.postgresql.superuser,
        )
        .await
    }

    async fn init_cluster(&mut self) -> Result<String> {
        let client = sql::connect(&self.cfg, "postgres").await?;
        if self.cfg.bootstrap.is_some() {
            self.finish_recovery(&client).await?;
        }
        sql::ensure_replication_role(&client, &self.cfg.replication.user, &self.password).await?;
        for db in sql::ensure_databases(&client, &self.cfg.postgresql.databases).await? {
            info!("created database {db}");
        }
        if let Some(br) = BackRest::of(&self.cfg) {
            br.stanza_create(&self.cfg.cluster)
                .await
                .context("create the pgBackRest stanza")?;
            info!(
                "pgBackRest stanza {} ready in {}",
                br.stanza,
                br.repo.display()
            );
        }
        Ok(sql::probe(&sql::Session::new(client)).await?.system_id)
    }

    async fn ensure_slot(&mut self, name: &str) -> Result<SlotEnsured> {
        // This loop's probe already shows it holding WAL: no query. A slot invalidated for
        // removed WAL has no restart_lsn and is looked at (and made again) below. Not from
        // PostgreSQL 18 on, whose idle_replication_slot_timeout invalidates a slot and
        // keeps its restart_lsn (review finding).
        let held = self.probe.as_ref().is_some_and(|p| {
            slots_shortcut(p)
                && p.slots
                    .iter()
                    .any(|s| s.name == name && s.restart_lsn.is_some())
        });
        if held {
            return Ok(SlotEnsured::Existed);
        }
        sql::ensure_physical_slot(self.client()?, name).await
    }

    async fn drop_slot(&mut self, name: &str) -> Result<bool> {
        sql::drop_slot(self.client()?, name).await
    }

    async fn advance_slot(&mut self, name: &str, lsn: Lsn) -> Result<()> {
        sql::advance_slot(self.client()?, name, lsn).await
    }

    async fn position(&mut self) -> (Option<u32>, Option<Lsn>) {
        match &self.client {
            Some(c) => match sql::probe(c).await {
                Ok(p) => (p.timeline, p.lsn),
                Err(_) => (None, None),
            },
            None => (None, None),
        }
    }

    async fn purge(&mut self) -> Result<()> {
        if !self.cfg.data_dir.exists() {
            return Ok(());
        }
        #[expect(
            clippy::disallowed_methods,
            reason = "`pgbaton remove --purge`: the operator asked for it"
        )]
        tokio::fs::remove_dir_all(&self.cfg.data_dir)
            .await
            .with_context(|| {
                format!("delete the data directory {}", self.cfg.data_dir.display())
            })?;
        info!("deleted {}", self.cfg.data_dir.display());
        Ok(())
    }

    async fn sync_names(&mut self) -> Result<SyncNames> {
        syncrep::current(self.client()?).await
    }

    async fn set_sync_names(&mut self, names: &SyncNames) -> Result<()> {
        syncrep::set_names(self.client()?, &self.cfg, names).await
    }

    async fn sync_barrier(&mut self, names: &SyncNames) -> Result<()> {
        let at = syncrep::barrier(self.client()?, names).await?;
        tracing::debug!("synchronous barrier: the listed standbys flushed {at}");
        Ok(())
    }
}

/// The major version in `server_version` ("15.18 (Debian 15.18-0+deb12u1)" is 15).
/// A slot the probe shows with a restart position is taken as it is (before PostgreSQL 18).
pub(crate) fn slots_shortcut(p: &sql::Probe) -> bool {
    major_version(&p.version).is_some_and(|v| v < 18)
}

fn major_version(version: &str) -> Option<u32> {
    version.split(['.', ' ']).next()?.parse().ok()
}

#[cfg(test)]
mod version_tests {
    #[test]
    fn the_major_version_is_read_from_server_version() {
        assert_eq!(
            super::major_version("15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(super::major_version("18beta1"), None);
        assert_eq!(super::major_version("18.1"), Some(18));
    }
}
