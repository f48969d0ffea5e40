//! The node around PostgreSQL as the executor sees it (`pgbaton_exec::Host`): the clocks,
//! the fence watchdog, the lease keeper and the state the API shares.

use super::*;
use publish::Publisher;

pub(crate) type SharedWatchdog = Arc<std::sync::Mutex<watchdog::Watchdog>>;

pub(crate) struct AgentHost {
    pub cfg: Arc<NodeConfig>,
    pub store: Arc<dyn Store>,
    pub shared: api::SharedState,
    /// The fence watchdog (absent only where fencing is not needed: tests of the API).
    pub watchdog: Option<SharedWatchdog>,
    pub publisher: Publisher,
}

#[async_trait::async_trait]
impl pgbaton_exec::Host for AgentHost {
    type Instant = Instant;

    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }

    fn arm(&mut self, t0: Instant, ttl_ms: u64) -> Result<()> {
        arm_watchdog(self.watchdog.as_ref(), &self.shared, &self.cfg, t0, ttl_ms)
    }

    fn tighten(&mut self, t0: Instant, ttl_ms: u64) -> Result<()> {
        tighten_watchdog(self.watchdog.as_ref(), &self.shared, &self.cfg, t0, ttl_ms)
    }

    fn disarm(&mut self) {
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

    fn begin_acquire(&mut self) -> std::result::Result<(), String> {
        self.shared
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .failsafe
            .begin_acquire(&self.cfg.name, now_ms())
    }

    fn set_leading(&mut self, leading: bool) {
        self.shared
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .failsafe
            .set_leading(leading);
    }

    fn promoted(&mut self) {
        self.shared
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .promotions += 1;
    }

    fn keep_lease(&mut self) -> Option<Box<dyn Send>> {
        Some(Box::new(keeper(
            self.store.clone(),
            self.watchdog.clone(),
            self.shared.clone(),
            self.cfg.clone(),
        )))
    }

    async fn publish_status(
        &mut self,
        status: MemberStatus,
        message: Option<&str>,
        mem: &pgbaton_core::memory::Memory,
    ) {
        let timeout = timing(&self.shared).primary_restart_timeout_ms;
        let handed_over = mem.handed_over(now_ms(), timeout);
        if let Err(e) = self
            .publisher
            .status(status, None, message, handed_over)
            .await
        {
            warn!("{e:#}");
        }
    }
}

/// Keep renewing the lease (and arming the watchdog) while a long step runs (starting,
/// promoting): the loop does not come round to renew meanwhile. Stops when dropped, or
/// when a renewal is refused (the watchdog then fences at the last deadline).
fn keeper(
    store: Arc<dyn Store>,
    watchdog: Option<SharedWatchdog>,
    shared: api::SharedState,
    cfg: Arc<NodeConfig>,
) -> KeeperGuard {
    let task = tokio::spawn(async move {
        loop {
            // The loop, which alone changes the timing, waits for this long step.
            let t = timing(&shared);
            let limit = store_timeout(t.loop_interval_ms);
            tokio::time::sleep(Duration::from_millis(t.loop_interval_ms)).await;
            let t0 = Instant::now();
            // Never later, so always safe: a lowered TTL pulls the fence in before asking.
            if let Err(e) = tighten_watchdog(watchdog.as_ref(), &shared, &cfg, t0, t.ttl_ms) {
                error!("{e:#}");
                return;
            }
            match tokio::time::timeout(limit, store.leader_renew(&cfg.name, t.ttl_ms)).await {
                Ok(Ok(true)) => {
                    if let Err(e) = arm_watchdog(watchdog.as_ref(), &shared, &cfg, t0, t.ttl_ms) {
                        error!("{e:#}");
                        return;
                    }
                }
                Ok(Ok(false)) => {
                    warn!("lost the leader lease during a long step");
                    return;
                }
                Ok(Err(e)) => warn!("renewing the leader lease during a long step: {e:#}"),
                Err(_) => {
                    warn!("renewing the leader lease during a long step: the store did not answer")
                }
            }
        }
    });
    KeeperGuard(task)
}

/// Stops the lease keeper task when dropped.
pub(crate) struct KeeperGuard(tokio::task::JoinHandle<()>);

impl Drop for KeeperGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The timing the agent runs with now (`api::Shared::timing`).
pub(crate) fn timing(shared: &api::SharedState) -> pgbaton_core::config::TimingConfig {
    shared.read().unwrap_or_else(|e| e.into_inner()).timing
}

/// `t0 + ttl_ms - fence_margin`, by the margin the agent runs with. The timing is held to
/// the fence rule before it is run with (node.toml's at load, the cluster's in
/// `own::timing`); a failsafe promise shorter than the margin (members with other node.toml
/// TTLs) leaves no window, and fences at once: the safe way.
fn fence_deadline(shared: &api::SharedState, t0: Instant, ttl_ms: u64) -> Instant {
    let margin = timing(shared).fence_margin_ms;
    t0 + Duration::from_millis(ttl_ms.saturating_sub(margin))
}

/// A lease request for `ttl_ms` is about to start at `t0`: the fence, when armed, moves in
/// to `t0 + ttl_ms - fence_margin` if that is earlier (`pgbaton_exec::Host::tighten`).
pub(crate) fn tighten_watchdog(
    watchdog: Option<&SharedWatchdog>,
    shared: &api::SharedState,
    cfg: &NodeConfig,
    t0: Instant,
    ttl_ms: u64,
) -> Result<()> {
    let deadline = fence_deadline(shared, t0, ttl_ms);
    let armed = shared
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .fence_deadline;
    match armed {
        Some(d) if deadline < d => arm_watchdog(watchdog, shared, cfg, t0, ttl_ms),
        _ => Ok(()),
    }
}

/// A renewal (or acquisition, or a failsafe round) that started at `t0` and held the lease
/// for `ttl_ms` (the TTL asked of the store, or the shortest failsafe promise) succeeded:
/// the watchdog fences at `t0 + ttl_ms - fence_margin` unless armed again before. Without
/// a live fence PostgreSQL is ended and the error says the agent must exit.
pub(crate) fn arm_watchdog(
    watchdog: Option<&SharedWatchdog>,
    shared: &api::SharedState,
    cfg: &NodeConfig,
    t0: Instant,
    ttl_ms: u64,
) -> Result<()> {
    let Some(w) = watchdog else { return Ok(()) };
    let deadline = fence_deadline(shared, t0, ttl_ms);
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
            anyhow::anyhow!(
                "{e:#}: without its fence watchdog this member must not run a primary; \
                 PostgreSQL was stopped and the agent exits"
            )
        })
}
