//! The leader lease as the agent holds it: arming the fence watchdog after each renewal,
//! the keeper that renews during long steps, and store calls bounded as one step.

use super::*;

impl Agent {
    pub(crate) fn store_timeout(&self) -> Duration {
        store_timeout(&self.cfg)
    }

    /// Several store calls as one step (each is bounded by the store itself), bounded by
    /// [`store_timeout`] as a whole and named.
    pub(crate) async fn bounded<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let limit = self.store_timeout();
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r.with_context(|| what.to_string()),
            Err(_) => bail!(
                "{what}: the store ({}) did not answer within {} ms",
                self.store.describe(),
                limit.as_millis()
            ),
        }
    }

    /// A renewal (or acquisition, or a failsafe round) that started at `t0` succeeded: the
    /// watchdog fences at `t0 + ttl - fence_margin` unless armed again before.
    pub(crate) fn arm(&self, t0: Instant) -> Result<()> {
        arm_watchdog(self.watchdog.as_ref(), &self.shared, &self.cfg, t0)
    }

    pub(crate) fn disarm(&self) {
        self.shared
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .fence_deadline = None;
        if let Some(w) = &self.watchdog {
            if let Err(e) = w.lock().unwrap_or_else(|e| e.into_inner()).disarm() {
                error!("{e:#}");
            }
        }
    }

    pub(crate) fn set_leading(&self, leading: bool) {
        self.shared
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .leading_or_acquiring = leading;
    }

    /// Keep renewing the lease (and arming the watchdog) while a long step runs (starting,
    /// promoting): the loop does not come round to renew meanwhile. Stops when dropped, or
    /// when a renewal is refused (the watchdog then fences at the last deadline).
    pub(crate) fn keeper(&self) -> Option<KeeperGuard> {
        if !self.held_lease {
            return None;
        }
        let store = self.store.clone();
        let watchdog = self.watchdog.clone();
        let shared = self.shared.clone();
        let cfg = self.cfg.clone();
        let limit = self.store_timeout();
        let task = tokio::spawn(async move {
            let every = Duration::from_millis(cfg.timing.loop_interval_ms);
            loop {
                tokio::time::sleep(every).await;
                let t0 = Instant::now();
                match tokio::time::timeout(limit, store.leader_renew(&cfg.name, cfg.timing.ttl_ms))
                    .await
                {
                    Ok(Ok(true)) => {
                        if let Err(e) = arm_watchdog(watchdog.as_ref(), &shared, &cfg, t0) {
                            error!("{e:#}");
                            return;
                        }
                    }
                    Ok(Ok(false)) => {
                        warn!("lost the leader lease during a long step");
                        return;
                    }
                    Ok(Err(e)) => warn!("renewing the leader lease during a long step: {e:#}"),
                    Err(_) => warn!(
                        "renewing the leader lease during a long step: the store did not answer"
                    ),
                }
            }
        });
        Some(KeeperGuard(task))
    }
}

/// Stops the lease keeper task when dropped.
pub(crate) struct KeeperGuard(tokio::task::JoinHandle<()>);

impl Drop for KeeperGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn arm_watchdog(
    watchdog: Option<&Arc<std::sync::Mutex<watchdog::Watchdog>>>,
    shared: &api::SharedState,
    cfg: &NodeConfig,
    t0: Instant,
) -> Result<()> {
    let Some(w) = watchdog else { return Ok(()) };
    let window =
        Duration::from_millis(cfg.timing.ttl_ms.saturating_sub(cfg.timing.fence_margin_ms));
    let deadline = t0 + window;
    shared
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .fence_deadline = Some(deadline);
    w.lock()
        .unwrap_or_else(|e| e.into_inner())
        .arm(deadline)
        .map_err(|e| {
            // No live fence: PostgreSQL must not go on as this member's primary.
            if let Err(f) = fence::fence(&cfg.data_dir, "no fence watchdog can be armed") {
                error!("{f:#}");
            }
            Fatal(format!(
                "{e:#}: without its fence watchdog this member must not run a primary; \
                 PostgreSQL was stopped and the agent exits"
            ))
            .into()
        })
}
