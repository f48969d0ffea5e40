//! Carrying out one action of the decision.

use super::*;

impl Agent {
    /// Run one action. `Ok(false)`: stop this loop's list here (a lost compare-and-set, a wait).
    pub(crate) async fn execute(
        &mut self,
        action: Action,
        view: &ClusterView,
        local: &LocalView,
    ) -> Result<bool> {
        let me = self.cfg.name.clone();
        let ttl = self.cfg.timing.ttl_ms;
        match action {
            Action::ClaimInitialize { value } => {
                let won = self.store.initialize_claim(&value).await?;
                if won {
                    info!("claimed the cluster's initialize key ({value})");
                }
                Ok(won)
            }
            Action::Bootstrap => self.bootstrap(&local.data).await.map(|_| true),
            Action::AcquireLease => {
                {
                    // Atomically with the API's failsafe handler: a member that promised a
                    // live primary not to take the lease does not, and while it takes it,
                    // it promises nothing.
                    let mut sh = self.shared.write().unwrap_or_else(|e| e.into_inner());
                    if let Some(f) = sh
                        .failsafe
                        .as_ref()
                        .filter(|f| f.leader != me && f.active(now_ms()))
                    {
                        self.message = Some(format!(
                            "not taking the leader lease: {} was confirmed as a live primary (failsafe)",
                            f.leader
                        ));
                        return Ok(false);
                    }
                    sh.leading_or_acquiring = true;
                }
                let t0 = Instant::now();
                // On an error the outcome is unknown: keep refusing failsafe confirmations
                // until a view of the store says who leads.
                let won = self
                    .bounded("take the leader lease", self.store.leader_acquire(&me, ttl))
                    .await?;
                if won {
                    self.arm(t0)?;
                }
                self.set_leading(won);
                if won && !self.held_lease {
                    info!("acquired the leader lease");
                } else if !won {
                    self.message = Some("another member holds the leader lease".into());
                }
                self.held_lease = won;
                Ok(won)
            }
            Action::RenewLease => {
                let t0 = Instant::now();
                let kept = match self
                    .bounded("renew the leader lease", self.store.leader_renew(&me, ttl))
                    .await
                {
                    Ok(k) => k,
                    Err(e) => {
                        self.store_unreachable().await;
                        return Err(e);
                    }
                };
                if kept {
                    self.arm(t0)?;
                }
                self.set_leading(kept);
                if !kept {
                    warn!("lost the leader lease");
                    self.message = Some("lost the leader lease".into());
                }
                self.held_lease = kept;
                Ok(kept)
            }
            Action::ReleaseLease { reason } => {
                if server::postmaster_pid(&self.cfg.data_dir).is_some() {
                    bail!("not releasing the leader lease: PostgreSQL still runs");
                }
                // Backends left behind by a postmaster that died (killed alone) can still
                // finish a commit: none may outlive the lease.
                fence::fence(&self.cfg.data_dir, "releasing the leader lease")?;
                if self.store.leader_release(&me).await? {
                    warn!("released the leader lease: {reason}");
                }
                self.held_lease = false;
                self.set_leading(false);
                self.disarm();
                Ok(true)
            }
            Action::Clone { from } => self.clone_from(&from, false).await.map(|_| true),
            Action::Start { upstream } => {
                let standby = matches!(local.data, DataDir::Initialized { standby: true, .. });
                let _keeper = self.keeper();
                let started = self.start(standby, upstream.as_ref()).await;
                if started.is_err() && !standby {
                    // A primary that does not start counts as down since now (the hand-over
                    // to a standby after timing.primary_restart_timeout_ms).
                    self.crashed_since_ms.get_or_insert(now_ms());
                }
                started.map(|_| true)
            }
            Action::Follow { upstream } => {
                files::write_pg_config(&self.cfg, &self.ident.user, true, upstream.as_ref())?;
                server::reload(&self.bins, &self.cfg.data_dir).await?;
                info!(
                    "now following {}",
                    upstream.as_ref().map_or("nobody", |u| u.member.as_str())
                );
                Ok(true)
            }
            Action::Stop { reason } => {
                warn!("stopping PostgreSQL: {reason}");
                self.expect_running = false;
                self.client = None;
                server::stop(
                    &self.bins,
                    &self.cfg.data_dir,
                    Duration::from_millis(self.cfg.timing.start_timeout_ms),
                )
                .await?;
                if !self.held_lease {
                    // No backend of a postmaster that died on its own outlives the fence.
                    fence::fence(&self.cfg.data_dir, "stopping PostgreSQL")?;
                    self.disarm();
                }
                Ok(true)
            }
            Action::EnsureSlots { names } => {
                let Some(client) = &self.client else {
                    return Ok(false);
                };
                for name in names {
                    match sql::ensure_physical_slot(client, &name).await? {
                        sql::SlotEnsured::Existed => {}
                        sql::SlotEnsured::Created => info!("created replication slot {name}"),
                        sql::SlotEnsured::Recreated => warn!(
                            "replication slot {name} had been invalidated (its member fell more \
                             than postgresql.max_slot_wal_keep_size behind): created it again. \
                             The member catches up from the WAL archive when there is one; \
                             without one it needs `pgbaton reinit`"
                        ),
                    }
                }
                Ok(true)
            }
            Action::Wait { reason } => {
                if self
                    .shared
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .member
                    .as_ref()
                    .and_then(|m| m.message.as_ref())
                    != Some(&reason)
                {
                    info!("waiting: {reason}");
                }
                self.message = Some(reason);
                Ok(false)
            }
            Action::Fail { reason } => Err(Fatal(reason).into()),
            Action::DropSlots { names } => {
                let Some(client) = &self.client else {
                    return Ok(false);
                };
                for name in names {
                    // Never a slot pgbaton did not name.
                    if !name.starts_with(pgbaton_core::model::SLOT_PREFIX) {
                        warn!("not dropping slot {name}: pgbaton did not create it");
                        continue;
                    }
                    if sql::drop_slot(client, &name).await? {
                        info!("dropped replication slot {name}");
                    }
                }
                Ok(true)
            }
            Action::AdvanceSlots { targets } => {
                let Some(client) = &self.client else {
                    return Ok(false);
                };
                for (name, lsn) in targets {
                    // Not worth stopping the loop for: the next loop tries again.
                    if let Err(e) = sql::advance_slot(client, &name, lsn).await {
                        warn!("{e:#}");
                    }
                }
                Ok(true)
            }
            Action::Promote => {
                let Some(client) = &self.client else {
                    bail!("no connection to PostgreSQL to promote it")
                };
                info!("promoting PostgreSQL");
                let _keeper = self.keeper();
                sql::promote(
                    client,
                    Duration::from_millis(self.cfg.timing.start_timeout_ms),
                )
                .await?;
                // Now a primary: its own config says so (no primary_conninfo, no standby.signal).
                files::write_pg_config(&self.cfg, &self.ident.user, false, None)?;
                server::reload(&self.bins, &self.cfg.data_dir).await?;
                // pg_rewind judges a source's timeline by its last checkpoint, and after a
                // promotion PostgreSQL checkpoints only later and asynchronously: until then a
                // former primary rejoining it would be "rewound" against the old timeline and
                // fail to start. Checkpoint now, before anyone is told about the promotion.
                let client = self
                    .client
                    .as_ref()
                    .context("no connection to PostgreSQL after promoting")?;
                client
                    .batch_execute("CHECKPOINT")
                    .await
                    .context("checkpoint after promotion")?;
                info!("promoted: PostgreSQL accepts writes (checkpointed on the new timeline)");
                let by_op = view.op.as_ref().is_some_and(|o| !o.phase.finished());
                if !by_op {
                    let old = pgbaton_core::failover::last_primary(&view.members, &me).name;
                    let p = sql::probe(client).await.ok();
                    let msg = format!(
                        "{me} took over automatically{}",
                        old.as_deref()
                            .map(|o| format!(" from {o} (its lease ran out)"))
                            .unwrap_or_default()
                    );
                    warn!("failover: {msg}");
                    let entry = HistoryEntry {
                        time_ms: now_ms(),
                        operation: "failover".into(),
                        members: old.into_iter().chain(std::iter::once(me.clone())).collect(),
                        result: "done".into(),
                        timeline: p.as_ref().and_then(|p| p.timeline),
                        lsn: p.as_ref().and_then(|p| p.lsn),
                        message: Some(msg),
                    };
                    if let Err(e) = self.store.history_append(&entry).await {
                        warn!("record the failover in the history: {e:#}");
                    }
                }
                self.shared
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .promotions += 1;
                Ok(true)
            }
            Action::Rejoin { upstream } => self.rejoin(&upstream).await.map(|_| true),
            Action::Restart { upstream } => {
                info!("restarting PostgreSQL as asked");
                let standby = matches!(local.data, DataDir::Initialized { standby: true, .. });
                let _keeper = self.keeper();
                self.stop_pg().await?;
                self.start(standby, upstream.as_ref()).await.map(|_| true)
            }
            Action::Reload => {
                server::reload(&self.bins, &self.cfg.data_dir).await?;
                info!("PostgreSQL reloaded its configuration as asked");
                Ok(true)
            }
            Action::Reinit { from } => {
                info!("re-cloning from {} as asked (reinit)", from.member);
                self.stop_pg().await?;
                self.clone_from(&from, true).await.map(|_| true)
            }
            Action::RemoveSelf { op, purge } => {
                info!(
                    "removing this member from the cluster{}",
                    if purge {
                        " and deleting its data (--purge)"
                    } else {
                        ""
                    }
                );
                self.stop_pg().await?;
                self.store.member_delete(&me).await?;
                if purge && self.cfg.data_dir.exists() {
                    #[expect(
                        clippy::disallowed_methods,
                        reason = "`pgbaton remove --purge`: the operator asked for it"
                    )]
                    std::fs::remove_dir_all(&self.cfg.data_dir).with_context(|| {
                        format!("delete the data directory {}", self.cfg.data_dir.display())
                    })?;
                    info!("deleted {}", self.cfg.data_dir.display());
                }
                let msg = format!(
                    "{me} stopped and deregistered; waiting for the primary to drop its slot"
                );
                self.store
                    .op_update(
                        &op.id,
                        op.phase,
                        &op.at(OpPhase::Deregistered, Some(msg), now_ms()),
                    )
                    .await?;
                self.removed = true;
                Ok(false)
            }
            Action::StopForSwitchover { op } => {
                info!("switchover: stopping PostgreSQL cleanly (shutdown checkpoint)");
                self.stop_pg().await?;
                let cd = datadir::controldata(&self.bins, &self.cfg.data_dir)?;
                if cd.state != "shut down" {
                    bail!(
                        "after stopping, pg_control says {:?}, not \"shut down\"",
                        cd.state
                    );
                }
                let lsn: pgbaton_core::model::Lsn = cd
                    .checkpoint_lsn
                    .as_deref()
                    .context("pg_controldata shows no checkpoint location")?
                    .parse()?;
                let mut next = op.at(
                    OpPhase::Demoted,
                    Some(format!("{me} stopped cleanly at {lsn}")),
                    now_ms(),
                );
                next.checkpoint_lsn = Some(lsn);
                if !self.store.op_update(&op.id, op.phase, &next).await? {
                    bail!("the switchover request changed while stopping");
                }
                if self.store.leader_release(&me).await? {
                    info!("released the leader lease at shutdown checkpoint {lsn}");
                }
                self.held_lease = false;
                self.set_leading(false);
                self.disarm();
                Ok(true)
            }
            Action::AdvanceOp { op, phase, message } => {
                info!("operation {}: {message}", op.id);
                self.store
                    .op_update(&op.id, op.phase, &op.at(phase, Some(message), now_ms()))
                    .await
            }
            Action::FinishOp { op, ok, message } => {
                self.finish_op(&op, ok, &message).await?;
                Ok(true)
            }
        }
    }
}
