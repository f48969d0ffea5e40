//! The agent's loop and its pacing: observe, decide, act, publish; and its shutdown.

use super::*;
use pgbaton_core::decide::Quiet;
use pgbaton_exec::{PlanEnd, StepError};

impl Agent {
    /// Run until `shutdown` resolves, then stop PostgreSQL cleanly and release the lease.
    pub async fn run(
        mut self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let app = api::router(api::ApiState {
            shared: self.shared.clone(),
            store: self.store.clone(),
            cfg: self.cfg.clone(),
            auth: self.auth.clone(),
            backups: self.backups.clone(),
        });
        tokio::spawn(api::serve::serve(listener, app, self.api_tls.clone()));
        // The failsafe by the fence's clock, beside the loop (see `failsafe::Keeper`).
        let failsafe_keeper = match (&self.exec.host.watchdog, self.cfg.failover.failsafe) {
            (Some(w), true) => Some(tokio::spawn(
                failsafe::Keeper {
                    cfg: self.cfg.clone(),
                    shared: self.shared.clone(),
                    http: self.http.clone(),
                    auth: self.auth.clone(),
                    arm: {
                        let w = w.clone();
                        Arc::new(move |d| w.lock().unwrap_or_else(|e| e.into_inner()).arm(d))
                    },
                }
                .run(),
            )),
            _ => None,
        };
        self.exec.pg.write_pgpass()?;
        tokio::pin!(shutdown);
        let result = loop {
            let started = Instant::now();
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                r = self.iteration() => if let Err(e) = r {
                    if let Some(fatal) = e.downcast_ref::<FatalExit>() {
                        break Err(anyhow::anyhow!("{}", fatal.0));
                    }
                    // The same error every loop (a store outage, say) is logged once, not
                    // twice a second; the member's message keeps saying it.
                    let text = format!("{e:#}");
                    if self.last_error.as_deref() != Some(text.as_str()) {
                        error!("{text}");
                    }
                    self.last_error = Some(text.clone());
                    if self.exec.message.as_deref().is_none_or(|m| !m.starts_with("failsafe")) {
                        self.exec.message = Some(text);
                    }
                    // Not when the store just failed to answer: publishing would only wait
                    // out another timeout, half a second of the failsafe's budget per loop.
                    if e.downcast_ref::<StoreDown>().is_none() {
                        self.publish_glance(None).await;
                    }
                } else {
                    self.last_error = None;
                    self.last_failsafe = None;
                },
            }
            if self.exec.mem.removed {
                info!("removed from the cluster: the agent exits");
                return Ok(());
            }
            // 10 Hz while an operation is in flight or the lease just went (see
            // `loop_pace_ms`): a switchover candidate notices the old primary's clean stop at
            // once, a failover candidate the reports it waits for.
            let t = host::timing(&self.shared);
            let pace = match &self.shared.read().unwrap_or_else(|e| e.into_inner()).view {
                Some(view) => Duration::from_millis(pgbaton_core::memory::loop_pace_ms(
                    view,
                    &self.exec.mem,
                    now_ms(),
                    t.loop_interval_ms,
                    t.ttl_ms,
                )),
                None => Duration::from_millis(t.loop_interval_ms),
            };
            let mut pause = pace.saturating_sub(started.elapsed());
            // Another member's lease that runs out before the next loop: wake just after it
            // expires, to take over at once (the store has no push for expiry here).
            let now = now_ms();
            if let Some(expires) = self
                .shared
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .view
                .as_ref()
                .and_then(|v| v.leader.as_ref())
                .filter(|l| l.member != self.cfg.name && l.expires_ms > now)
                .map(|l| l.expires_ms)
            {
                pause = pause.min(Duration::from_millis(expires - now + 5));
            }
            // A member that does not lead also wakes when the store says the lease went
            // (etcd: a watch on the leader key), to take over at once.
            let store = self.store.clone();
            let held = self.exec.mem.held_lease;
            let wait = async move {
                if held {
                    tokio::time::sleep(pause).await;
                } else {
                    let _ = store.wait_leader_gone(pause).await;
                }
            };
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                _ = wait => {}
            }
        };
        if let Some(k) = failsafe_keeper {
            k.abort();
        }
        self.shutdown(result.is_err()).await;
        result
    }

    pub(crate) async fn shutdown(&mut self, failed: bool) {
        if !failed {
            info!("shutting down: stopping PostgreSQL (fast mode)");
            self.exec.mem.stopping();
            self.publish_status(MemberStatus::Stopping, None).await;
            if let Err(e) = pgbaton_exec::Postgres::stop(&mut self.exec.pg).await {
                error!("stopping PostgreSQL: {e:#}");
            }
        }
        // Release the lease only once PostgreSQL no longer runs (and no backend of a
        // postmaster that died is left to finish a commit): `give_up_lease` refuses
        // otherwise, and the watchdog then fences at its deadline.
        let gone = match self.exec.give_up_lease("the agent shuts down").await {
            Ok(()) => true,
            Err(e) => {
                if self.exec.mem.held_lease {
                    warn!("releasing the leader lease: {e:#}");
                }
                // A store that did not answer: PostgreSQL may still be gone for good.
                server::postmaster_pid(&self.cfg.data_dir).is_none()
                    && fence::fence(&self.cfg.data_dir, "the agent shuts down").is_ok()
            }
        };
        if gone {
            // Nothing left to fence: the watchdog goes with the agent.
            if let Some(w) = self.exec.host.watchdog.take() {
                // Through the lock: a keeper task just aborted may still hold a clone.
                w.lock().unwrap_or_else(|e| e.into_inner()).exit();
            }
        }
        let status = if failed {
            MemberStatus::Failed
        } else {
            MemberStatus::Stopped
        };
        self.publish_status(status, None).await;
        info!("agent stopped");
    }

    pub(crate) async fn iteration(&mut self) -> Result<()> {
        // Before the store is read: a renewed certificate is needed most in a store outage.
        self.reload_api_tls_on_change();
        self.shared
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .last_loop = Some(Instant::now());
        let mut view = self.read_or_failsafe().await?;
        self.publisher.mark_self(&mut view);
        self.report_unreadable(&view);
        self.exec
            .pg
            .apply_cluster_conf(view.config_text.as_deref())
            .await;
        self.apply_timing();
        self.refuse_slot_collision(&view)?;
        {
            let mut sh = self.shared.write().unwrap_or_else(|e| e.into_inner());
            let now = now_ms();
            let leader = view.leader.as_ref().filter(|l| l.expires_ms > now);
            sh.failsafe
                .set_leading(leader.is_some_and(|l| l.member == self.cfg.name));
            sh.failsafe.store_read(leader.map(|l| l.member.as_str()));
        }
        let (data, timeline) = datadir::inspect_with_timeline(&self.bins, &self.cfg.data_dir)?;
        let pg = self.observe_pg(&view).await;
        let mut local = self.local_view(&view, data, pg);
        if local.timeline.is_none() {
            local.timeline = timeline;
        }
        self.exec.pg.handed_over = self.handed_over();
        let plan = decide(&view, &local, now_ms());
        let shortcut = self
            .exec
            .pg
            .probe
            .as_ref()
            .is_some_and(local_pg::slots_shortcut);
        let quiet = pgbaton_core::decide::quiet_plan(&plan, &local, shortcut);
        let before_plan_ms = now_ms();
        let ran = self.exec.run_plan(plan, &view, &local).await;
        let kept_lease = self.exec.mem.held_lease;
        match ran {
            // Nothing was done to PostgreSQL or its data: what was just observed is still
            // what is true (half of an idle agent's work was a second probe). A renewed
            // lease's new expiry goes into the view without reading it back (the leader's
            // one store read a loop it saved): a TTL from before the plan ran, a lower bound
            // on every store (each counts from when it handled the request), and never the
            // view's older expiry, which a lease replaced for a lowered TTL no longer has
            // (review finding). The API's /primary reads it. A lease that was not kept
            // takes the long way.
            PlanEnd::Ran if quiet == Some(Quiet::Nothing) => {
                return self.publish_loop(view, local).await;
            }
            PlanEnd::Ran if quiet == Some(Quiet::Renewed) && kept_lease => {
                let mut view = view;
                let renewed = before_plan_ms.saturating_add(self.exec.settings.ttl_ms);
                if let Some(l) = view.leader.as_mut().filter(|l| l.member == self.cfg.name) {
                    l.expires_ms = renewed;
                }
                return self.publish_loop(view, local).await;
            }
            PlanEnd::Ran => {}
            PlanEnd::Removed => return Ok(()), // publishing again would register it anew
            PlanEnd::Failed(StepError::Fatal(why)) => {
                self.publish_status(MemberStatus::Failed, None).await;
                return Err(FatalExit(why).into());
            }
            PlanEnd::Failed(StepError::StoreUnreachable(_)) => self.store_unreachable().await,
            PlanEnd::Failed(StepError::Failed(_)) => {}
        }
        // Publish what is true now, after the actions. This read too runs a failsafe round
        // when the store is slow: a freeze right after a renewal left the next round too
        // little of the fence's budget when this read and the publish after it each waited
        // out their bound first (CI, `a_frozen_etcd_does_not_demote_a_healthy_primary`).
        let view = self.read_or_failsafe().await?;
        let data = datadir::inspect(&self.bins, &self.cfg.data_dir)?;
        let pg = self.observe_pg(&view).await;
        let local = self.local_view(&view, data, pg);
        self.publish_loop(view, local).await
    }

    /// The end of a loop: the status the API shows, the archive's, and the member's report
    /// and liveness in the store.
    async fn publish_loop(&mut self, view: ClusterView, local: LocalView) -> Result<()> {
        let status = self.status_of(&local);
        self.reload_on_tls_change().await;
        let leading_primary = self.exec.mem.held_lease && status == MemberStatus::Running;
        self.archive
            .refresh(&self.cfg, self.exec.pg.client.as_deref(), leading_primary)
            .await;
        if leading_primary {
            let me = self.shared.read().ok().and_then(|s| s.member.clone());
            let peers = backup_schedule::Peers {
                http: self.http.read().unwrap_or_else(|e| e.into_inner()).clone(),
                auth: self.auth.clone(),
            };
            self.schedule
                .tick(&self.cfg, &self.backups, me, &view, peers);
        }
        self.backup_server.tick(&self.cfg, &view);
        {
            let mut sh = self.shared.write().unwrap_or_else(|e| e.into_inner());
            sh.replay_lag_ms = self.exec.pg.probe.as_ref().and_then(|p| p.replay_lag_ms);
            sh.view = Some(view.clone());
            if let Some(t) = sh.last_loop {
                sh.last_loop_duration = t.elapsed();
            }
        }
        let message = self.message_with_log_hint(&local);
        let report = publish::Report {
            local: &local,
            status,
            progress: None,
            probe: self.exec.pg.probe.as_ref(),
            message: message.as_deref(),
            handed_over: self.handed_over(),
            archive: self.archive.status.clone(),
            pending_restart: &self.exec.pg.cluster_conf.pending_restart,
        };
        // Both, whatever the other did: a liveness that fails must not keep the report
        // from being written (review finding).
        let alive = self.publisher.keep_alive(self.exec.mem.held_lease).await;
        let published = self
            .publisher
            .publish_if_due(report, &view)
            .await
            .and(alive);
        if published.is_err() {
            // A store that reads but does not write is out of reach too (failsafe).
            self.shared
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .failsafe
                .store_failed();
        }
        published
    }

    /// The message to publish: a PostgreSQL that runs but refuses connections (a standby not
    /// yet consistent), or a standby that does not stream, shows why from its log, else
    /// `list` would say only "starting or busy" for good (a standby whose upstream recycled
    /// the WAL it needs).
    fn message_with_log_hint(&self, local: &LocalView) -> Option<String> {
        let stuck = match local.pg {
            PgRun::NotAnswering => true,
            PgRun::Standby { .. } => local.not_streaming_since_ms.is_some(),
            _ => false,
        };
        let hint = stuck
            .then(|| server::why_not_ready(&self.cfg.log_file(), &self.cfg.name))
            .flatten();
        match (self.exec.message.as_deref(), hint) {
            (Some(m), Some(h)) => Some(format!("{m}: {h}")),
            (m, None) => m.map(str::to_string),
            (None, Some(h)) => Some(h),
        }
    }

    /// Unreadable member records: logged when the set changes, not every loop; a member
    /// that registers under a name whose slot another member has is stopped here.
    fn report_unreadable(&mut self, view: &ClusterView) {
        let text: Vec<&str> = view.unreadable.iter().map(|u| u.why.as_str()).collect();
        let text = text.join("; ");
        if text != self.last_unreadable {
            if !text.is_empty() {
                warn!("{text}");
            }
            self.last_unreadable = text;
        }
    }

    /// Before this member registers: refused when its name maps to another registered
    /// member's replication slot (audit finding). Once registered it is not stopped here: a
    /// running member is never shut down for a name.
    fn refuse_slot_collision(&self, view: &ClusterView) -> Result<()> {
        let me = &self.cfg.name;
        if view.member(me).is_some() {
            return Ok(());
        }
        let names = view
            .members
            .iter()
            .map(|m| m.name.as_str())
            .chain(view.unreadable.iter().filter_map(|u| u.member()));
        match pgbaton_core::model::slot_collision(me, names) {
            Some(other) => Err(FatalExit(format!(
                "member name {me} maps to replication slot {} like the registered member \
                 {other}: they would share one slot. Choose another name (name in {})",
                pgbaton_core::model::slot_name_for(me),
                "node.toml"
            ))
            .into()),
            None => Ok(()),
        }
    }

    fn handed_over(&self) -> bool {
        let timeout = host::timing(&self.shared).primary_restart_timeout_ms;
        self.exec.mem.handed_over(now_ms(), timeout)
    }

    /// Publish what a glance at the node shows (no SQL), with the status that implies.
    /// The loop's read of the store (see `read_view_or_failsafe`). When it fails, the
    /// member is marked as not reaching the store (the API's failsafe answers need it) and a
    /// primary runs its failsafe round, unless it ran one beside the read already.
    async fn read_or_failsafe(&mut self) -> Result<ClusterView> {
        match self.read_view_or_failsafe().await {
            (Ok(v), _) => Ok(v),
            (Err(e), round_ran) => {
                self.shared
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .failsafe
                    .store_failed();
                if !round_ran {
                    self.store_unreachable().await;
                }
                Err(e)
            }
        }
    }

    async fn publish_glance(&self, progress: Option<Progress>) {
        let status = self.status_of(&self.publisher.glance());
        self.publish_status(status, progress).await;
    }

    async fn publish_status(&self, status: MemberStatus, progress: Option<Progress>) {
        let message = self.exec.message.as_deref();
        if let Err(e) = self
            .publisher
            .status(status, progress, message, self.handed_over())
            .await
        {
            warn!("{e:#}");
        }
    }
}

/// The agent must exit: a condition it must not resolve by itself.
#[derive(Debug)]
pub(crate) struct FatalExit(pub String);

impl std::fmt::Display for FatalExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FatalExit {}

/// The loop's read of the store got no answer within its bound (the error says so).
#[derive(Debug)]
pub(crate) struct StoreDown(pub anyhow::Error);

impl std::fmt::Display for StoreDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for StoreDown {}
