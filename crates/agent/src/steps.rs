//! The long steps actions are made of: start, stop, bootstrap, clone, rejoin, finishing an
//! operation.

use super::*;

impl Agent {
    /// Stop PostgreSQL on purpose (not a crash).
    pub(crate) async fn stop_pg(&mut self) -> Result<()> {
        self.expect_running = false;
        self.client = None;
        self.probe = None;
        server::stop(
            &self.bins,
            &self.cfg.data_dir,
            Duration::from_millis(self.cfg.timing.start_timeout_ms),
        )
        .await
    }

    /// Finish an operation (done or failed) and write it into the history.
    pub(crate) async fn finish_op(
        &self,
        op: &pgbaton_core::model::Operation,
        ok: bool,
        message: &str,
    ) -> Result<()> {
        let phase = if ok { OpPhase::Done } else { OpPhase::Failed };
        if !self
            .store
            .op_update(
                &op.id,
                op.phase,
                &op.at(phase, Some(message.to_string()), now_ms()),
            )
            .await?
        {
            return Ok(()); // someone else finished it
        }
        if ok {
            info!("operation {} done: {message}", op.id);
        } else {
            warn!("operation {} failed: {message}", op.id);
        }
        // The cluster's position when it finished: the leader's, probed afresh when this
        // member leads (a promotion just changed it), else the leader's last report.
        let leader_name = self.store.leader_get().await?.map(|l| l.member);
        let (timeline, lsn) = match (&self.client, leader_name.as_deref()) {
            (Some(client), Some(l)) if l == self.cfg.name => match sql::probe(client).await {
                Ok(p) => (p.timeline, p.lsn),
                Err(_) => (None, None),
            },
            (_, Some(l)) => match self.store.member_get(l).await? {
                Some(m) => (m.timeline, m.lsn),
                None => (None, None),
            },
            _ => (None, None),
        };
        self.store
            .history_append(&HistoryEntry {
                time_ms: now_ms(),
                operation: op.kind.name().to_string(),
                members: op.kind.members(),
                result: if ok { "done" } else { "failed" }.to_string(),
                timeline,
                lsn,
                message: Some(message.to_string()),
            })
            .await
    }

    /// Make this former primary (PostgreSQL stopped) a standby of `upstream`: pg_rewind it
    /// when it diverged, then configure and start it.
    pub(crate) async fn rejoin(&mut self, upstream: &Upstream) -> Result<()> {
        self.prepare_start()?;
        let port = upstream.port.to_string();
        let passfile = self.cfg.pgpass_path();
        let source = render::conninfo(&[
            ("host", &upstream.host),
            ("port", &port),
            ("user", &self.cfg.replication.user),
            ("dbname", "postgres"),
            ("passfile", &passfile.to_string_lossy()),
            ("connect_timeout", "10"),
        ]);
        info!(
            "rejoining as a standby of {}: asking pg_rewind whether the timelines diverged",
            upstream.member
        );
        let from_archive = self.cfg.postgresql.archive_dir.is_some();
        match pgbaton_pg::rewind::rewind_if_diverged(
            &self.bins,
            &self.cfg.data_dir,
            &source,
            from_archive,
        )
        .await
        {
            Ok(pgbaton_pg::rewind::Rewind::NotNeeded) => {
                info!("no rewind needed: the data had not diverged")
            }
            Ok(pgbaton_pg::rewind::Rewind::Rewound { diverged_at }) => {
                info!(
                    "rewound: the data had diverged from {} at {diverged_at}",
                    upstream.member
                )
            }
            Err(e) => {
                self.rejoin_failed = Some(format!("{e:#}"));
                bail!(
                    "{e:#}. The data directory cannot be rewound; re-clone it with `pgbaton reinit {}` \
                     (pgbaton does not wipe it on its own)",
                    self.cfg.name
                )
            }
        }
        self.start(true, Some(upstream)).await
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

    pub(crate) fn prepare_start(&self) -> Result<()> {
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
        self.write_pgpass()
    }

    pub(crate) async fn start(&mut self, standby: bool, upstream: Option<&Upstream>) -> Result<()> {
        self.prepare_start()?;
        // A new start begins a new wait for the WAL receiver to stream.
        self.not_streaming_since_ms = None;
        files::write_pg_config(&self.cfg, &self.ident.user, standby, upstream)?;
        let role = if standby { "standby" } else { "primary" };
        let _ = self.publish_status(MemberStatus::Starting, None).await;
        server::start(
            &self.bins,
            &self.cfg.data_dir,
            &self.cfg.log_file(),
            Duration::from_millis(self.cfg.timing.start_timeout_ms),
        )
        .await?;
        if self.crashed {
            self.restarts += 1;
            info!(
                restarts = self.restarts,
                "restarted PostgreSQL as {role} after it stopped unexpectedly"
            );
        } else {
            info!(
                "started PostgreSQL as {role}{}",
                upstream
                    .map(|u| format!(" following {} ({}:{})", u.member, u.host, u.port))
                    .unwrap_or_default()
            );
        }
        self.crashed = false;
        self.expect_running = true;
        self.client = None;
        Ok(())
    }

    pub(crate) async fn bootstrap(&mut self, data: &DataDir) -> Result<()> {
        let me = self.cfg.name.clone();
        self.message = Some("initializing a new cluster".into());
        let _ = self.publish_status(MemberStatus::Bootstrapping, None).await;
        if *data == DataDir::Empty {
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
            .await?;
        }
        // Only the lease holder may run a writable primary: take the lease first.
        let t0 = Instant::now();
        if !self
            .store
            .leader_acquire(&me, self.cfg.timing.ttl_ms)
            .await?
        {
            bail!("cannot bootstrap: another member holds the leader lease");
        }
        self.arm(t0)?;
        self.held_lease = true;
        self.set_leading(true);
        let _keeper = self.keeper();
        if server::postmaster_pid(&self.cfg.data_dir).is_none() {
            self.start(false, None).await?;
        }
        let client = sql::connect(&self.cfg, "postgres").await?;
        sql::ensure_replication_role(&client, &self.cfg.replication.user, &self.password).await?;
        for db in sql::ensure_databases(&client, &self.cfg.postgresql.databases).await? {
            info!("created database {db}");
        }
        let probe = sql::probe(&client).await?;
        if !self
            .store
            .initialize_replace(&claim_value(&me), &probe.system_id)
            .await?
        {
            bail!("the cluster's initialize key changed under this bootstrap; not publishing the identity");
        }
        info!(
            "bootstrapped cluster {}: system identifier {}",
            self.cfg.cluster, probe.system_id
        );
        self.message = None;
        Ok(())
    }

    pub(crate) async fn clone_from(&mut self, from: &Upstream, replace: bool) -> Result<()> {
        self.prepare_start()?;
        if let Some(parent) = self.cfg.data_dir.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        let slot = slot_name_for(&self.cfg.name);
        info!(
            "cloning from {} ({}:{}) with pg_basebackup, slot {slot}",
            from.member, from.host, from.port
        );
        self.message = Some(format!("cloning from {}", from.member));
        let (tx, mut rx) = tokio::sync::watch::channel::<Option<Progress>>(None);
        let passfile = self.cfg.pgpass_path();
        let (user, name, data_dir, bins) = (
            self.cfg.replication.user.clone(),
            self.cfg.name.clone(),
            self.cfg.data_dir.clone(),
            self.bins.clone(),
        );
        let spec = CloneSpec {
            host: &from.host,
            port: from.port,
            user: &user,
            passfile: &passfile,
            slot: &slot,
            application_name: &name,
            data_dir: &data_dir,
            replace,
        };
        let started = Instant::now();
        let clone = pgbaton_pg::clone::clone(&bins, &spec, &tx);
        tokio::pin!(clone);
        let mut last_logged_pct = 0u64;
        let result = loop {
            tokio::select! {
                r = &mut clone => break r,
                changed = rx.changed() => {
                    if changed.is_err() { continue; }
                    let p = *rx.borrow_and_update();
                    if let Some(p) = p {
                        let pct = (p.done_kb * 100).checked_div(p.total_kb).unwrap_or(0);
                        if pct >= last_logged_pct + 25 {
                            last_logged_pct = pct;
                            info!("base backup {pct}% ({} of {} kB)", p.done_kb, p.total_kb);
                        }
                        let _ = self.publish_status(MemberStatus::Cloning, Some(p)).await;
                    }
                }
            }
        };
        result?;
        info!(
            "base backup done in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        self.message = None;
        self.start(true, Some(from)).await
    }
}
