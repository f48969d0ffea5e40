//! The agent's loop and its pacing: observe, decide, act, publish; and its shutdown.

use super::*;

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
            cfg: Arc::new(self.cfg.clone()),
            auth: self.auth.clone(),
        });
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                error!("the agent's API stopped: {e}");
            }
        });
        self.write_pgpass()?;
        let interval = Duration::from_millis(self.cfg.timing.loop_interval_ms);
        tokio::pin!(shutdown);
        let result = loop {
            let started = Instant::now();
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                r = self.iteration() => if let Err(e) = r {
                    if e.downcast_ref::<Fatal>().is_some() {
                        break Err(e);
                    }
                    // The same error every loop (a store outage, say) is logged once, not
                    // twice a second; the member's message keeps saying it.
                    let text = format!("{e:#}");
                    if self.last_error.as_deref() != Some(text.as_str()) {
                        error!("{text}");
                    }
                    self.last_error = Some(text.clone());
                    if self.message.as_deref().is_none_or(|m| !m.starts_with("failsafe")) {
                        self.message = Some(text);
                    }
                    let _ = self.publish(None).await;
                } else {
                    self.last_error = None;
                    self.last_failsafe = None;
                },
            }
            if self.removed {
                info!("removed from the cluster: the agent exits");
                return Ok(());
            }
            // While an operation is in flight, every step waits on another member's last
            // step: loop at 10 Hz so that, for example, a switchover candidate notices the
            // old primary's clean stop at once. Operations are rare and short.
            let op_in_flight = self
                .shared
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .view
                .as_ref()
                .and_then(|v| v.op.as_ref())
                .is_some_and(|op| !op.phase.finished());
            let pace = if op_in_flight {
                interval.min(OP_LOOP_INTERVAL)
            } else {
                interval
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
            let held = self.held_lease;
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
        self.shutdown(result.is_err()).await;
        result
    }

    pub(crate) async fn shutdown(&mut self, failed: bool) {
        if !failed {
            info!("shutting down: stopping PostgreSQL (fast mode)");
            self.expect_running = false;
            let _ = self.publish_status(MemberStatus::Stopping, None).await;
            self.client = None;
            let timeout = Duration::from_millis(self.cfg.timing.start_timeout_ms);
            if let Err(e) = server::stop(&self.bins, &self.cfg.data_dir, timeout).await {
                error!("stopping PostgreSQL: {e:#}");
            }
        }
        // Release the lease only once PostgreSQL no longer runs writable (and no backend
        // of a postmaster that died is left to finish a commit).
        if server::postmaster_pid(&self.cfg.data_dir).is_none()
            && fence::fence(&self.cfg.data_dir, "releasing the leader lease").is_ok()
        {
            match self.store.leader_release(&self.cfg.name).await {
                Ok(true) => info!("released the leader lease"),
                Ok(false) => {}
                Err(e) => warn!("releasing the leader lease: {e:#}"),
            }
            // Nothing left to fence: the watchdog goes with the agent.
            if let Some(w) = self.watchdog.take() {
                // Through the lock: a keeper task just aborted may still hold a clone.
                w.lock().unwrap_or_else(|e| e.into_inner()).exit();
            }
        }
        let status = if failed {
            MemberStatus::Failed
        } else {
            MemberStatus::Stopped
        };
        let _ = self.publish_status(status, None).await;
        info!("agent stopped");
    }

    pub(crate) async fn iteration(&mut self) -> Result<()> {
        self.shared
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .last_loop = Some(Instant::now());
        let view = match self
            .bounded("read the cluster from the store", self.cluster_view())
            .await
        {
            Ok(v) => v,
            Err(e) => {
                self.store_unreachable().await;
                return Err(e);
            }
        };
        {
            let mut sh = self.shared.write().unwrap_or_else(|e| e.into_inner());
            let leads = view
                .leader
                .as_ref()
                .is_some_and(|l| l.member == self.cfg.name && l.expires_ms > now_ms());
            sh.leading_or_acquiring = leads;
        }
        let (data, timeline) = datadir::inspect_with_timeline(&self.bins, &self.cfg.data_dir)?;
        let pg = self.observe_pg(&view).await;
        let mut local = self.local_view(&view, data, pg);
        if local.timeline.is_none() {
            local.timeline = timeline;
        }
        let actions = decide(&view, &local, now_ms());
        self.message = None;
        let mut actions = actions.into_iter();
        while let Some(action) = actions.next() {
            let what = format!("{action:?}");
            let may_fail_op = matches!(
                action,
                Action::Promote
                    | Action::Rejoin { .. }
                    | Action::Reinit { .. }
                    | Action::Restart { .. }
                    | Action::Reload
            );
            match self.execute(action, &view, &local).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) if e.downcast_ref::<Fatal>().is_some() => {
                    self.message = Some(e.to_string());
                    error!("{e}");
                    let _ = self.publish_status(MemberStatus::Failed, None).await;
                    return Err(e);
                }
                Err(e) => {
                    error!("{e:#}");
                    self.message = Some(format!("{e:#}"));
                    // An operation whose step failed for good is finished as failed, with
                    // the reason, instead of being retried forever.
                    if may_fail_op {
                        if let Some(Action::FinishOp { op, .. }) =
                            actions.find(|a| matches!(a, Action::FinishOp { .. }))
                        {
                            let msg = format!("{e:#}");
                            warn!("{what} failed: the operation {} fails", op.id);
                            let _ = self.finish_op(&op, false, &msg).await;
                        }
                    }
                    break;
                }
            }
            if self.removed {
                return Ok(());
            }
        }
        if self.removed {
            // Deregistered: publishing again would register it anew.
            return Ok(());
        }
        // Publish what is true now, after the actions.
        let view = self
            .bounded("read the cluster from the store", self.cluster_view())
            .await?;
        let data = datadir::inspect(&self.bins, &self.cfg.data_dir)?;
        let pg = self.observe_pg(&view).await;
        let local = self.local_view(&view, data, pg);
        let status = self.status_of(&local);
        let leading_primary = self.held_lease && status == MemberStatus::Running;
        self.archive
            .refresh(&self.cfg, self.client.as_ref(), leading_primary)
            .await;
        {
            let mut sh = self.shared.write().unwrap_or_else(|e| e.into_inner());
            sh.replay_lag_ms = self.probe.as_ref().and_then(|p| p.replay_lag_ms);
            sh.view = Some(view);
            if let Some(t) = sh.last_loop {
                sh.last_loop_duration = t.elapsed();
            }
        }
        self.publish_full(&local, status, None).await
    }
}
