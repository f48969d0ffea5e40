//! The per-node agent: observe -> decide -> act, at a fixed pace.
//!
//! Each loop takes a snapshot of the local node (data directory, PostgreSQL) and of the
//! store (identity, lease, members), asks `pgbaton_core::decide::decide` what to do, runs
//! those actions in order (stopping at the first that fails or loses a compare-and-set),
//! and publishes the member's state. Every action is idempotent, so a crash mid-action and
//! a retry on the next loop are safe.
//!
//! Architecture invariant: no decision is made here. Where the agent "chooses", it is
//! executing an action the core returned; new behaviour belongs in `decide` first.

pub mod api;
mod archive_watch;
pub mod fence;
pub mod process;
pub mod watchdog;

use anyhow::{bail, Context, Result};
use pgbaton_core::config::NodeConfig;
use pgbaton_core::decide::{
    claim_value, decide, role_of, Action, ClusterView, DataDir, LocalView, PgRun,
};
use pgbaton_core::model::{
    slot_name_for, HistoryEntry, MemberState, MemberStatus, OpPhase, Progress,
};
use pgbaton_core::render::{self, Upstream};
use pgbaton_pg::clone::CloneSpec;
use pgbaton_pg::files::{self, PasswordSource};
use pgbaton_pg::sql::Probe;
use pgbaton_pg::{datadir, server, sql, Binaries};
use pgbaton_store::{now_ms, Store};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

pub use process::{become_os_user, Identity};

/// The loop's pace while an operation is in flight.
pub const OP_LOOP_INTERVAL: Duration = Duration::from_millis(100);

/// A condition the agent must not resolve by itself: it reports it and exits.
#[derive(Debug)]
pub struct Fatal(pub String);
impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Fatal {}

/// Where the password lives when the config names no source: generated (0600) on first use.
pub fn default_password_file(cfg: &NodeConfig) -> std::path::PathBuf {
    cfg.base_dir().join("replication.password")
}

/// Read the replication password from where the config says; when it says nothing, from
/// the default file if it exists. `None`: it is to be generated (creating nothing here).
pub fn load_password(cfg: &NodeConfig) -> Result<Option<String>> {
    match (
        &cfg.replication.password_file,
        &cfg.replication.password_env,
    ) {
        (Some(f), _) => files::read_password(PasswordSource::File(f)).map(Some),
        (None, Some(v)) => files::read_password(PasswordSource::Env(v)).map(Some),
        (None, None) => {
            let f = default_password_file(cfg);
            if f.exists() {
                files::read_password(PasswordSource::File(&f)).map(Some)
            } else {
                Ok(None)
            }
        }
    }
}

/// Is `port` on `host` taken by someone? (PostgreSQL would fail later with a log line.)
pub fn port_taken(host: &str, port: u16) -> bool {
    let host = match host.split(',').next().map(str::trim) {
        Some("*") | Some("") | None => "0.0.0.0",
        Some(h) => h,
    };
    match std::net::TcpListener::bind((host, port)) {
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::AddrInUse,
    }
}

pub struct Agent {
    cfg: NodeConfig,
    bins: Binaries,
    store: Arc<dyn Store>,
    ident: Identity,
    password: String,
    shared: api::SharedState,
    client: Option<tokio_postgres::Client>,
    probe: Option<Probe>,
    /// What this loop wants the operator to know (what it waits for, the last error).
    message: Option<String>,
    /// PostgreSQL was seen running, and nobody asked it to stop.
    expect_running: bool,
    crashed: bool,
    restarts: u64,
    held_lease: bool,
    /// When each orphan slot (pgbaton-named, no member) was first seen on this primary.
    orphans_since: std::collections::BTreeMap<String, u64>,
    /// This member was removed from the cluster: the agent exits without publishing again.
    removed: bool,
    auth: api::Auth,
    /// The fence watchdog (absent only where fencing is not needed: tests of the API).
    watchdog: Option<Arc<std::sync::Mutex<watchdog::Watchdog>>>,
    /// Since when this member's primary PostgreSQL has been down without being asked to.
    crashed_since_ms: Option<u64>,
    /// Why the last automatic rejoin could not rewind (not retried until the agent restarts).
    rejoin_failed: Option<String>,
    /// Since when this standby's WAL receiver has not been streaming (kept while stopped).
    not_streaming_since_ms: Option<u64>,
    /// The last loop error and failsafe outcome logged (each is logged when it changes).
    last_error: Option<String>,
    last_failsafe: Option<String>,
    http: reqwest::Client,
    archive: archive_watch::ArchiveWatch,
}

/// What the preflight found, for the agent to use.
pub struct Checked {
    pub bins: Binaries,
    pub major: u32,
    /// `None`: none configured and none generated yet.
    pub password: Option<String>,
    pub store: Arc<dyn Store>,
    /// Credentials the API asks of mutating requests.
    pub auth: api::Auth,
}

/// Read the API credentials the config names (as the OS user: the files are 0600).
pub fn load_api_auth(cfg: &NodeConfig) -> Result<api::Auth> {
    let read = |p: &std::path::Path, key: &str| -> Result<String> {
        let s =
            std::fs::read_to_string(p).with_context(|| format!("read {} ({key})", p.display()))?;
        let s = s.trim_end_matches(['\n', '\r']).to_string();
        if s.is_empty() {
            bail!("{} ({key}) is empty", p.display());
        }
        Ok(s)
    };
    let token = cfg
        .api
        .auth_token_file
        .as_deref()
        .map(|p| read(p, "api.auth_token_file"))
        .transpose()?;
    let basic = match (&cfg.api.auth_username, &cfg.api.auth_password_file) {
        (Some(u), Some(p)) => Some((u.clone(), read(p, "api.auth_password_file")?)),
        _ => None,
    };
    Ok(api::Auth { token, basic })
}

/// Everything that can be wrong before the first loop, checked without creating anything
/// in the node's directories: binaries, the password, the store, the data directory against
/// the cluster's identity, the ports. Each failure names what is wrong and what to do.
/// Synchronous: it runs before the runtime exists (as root, under the OS user's identity).
pub fn preflight(cfg: &NodeConfig) -> Result<Checked> {
    let bins = Binaries::find(cfg.postgresql.bin_dir.as_deref())?;
    let major = bins.major_version()?;
    let password = load_password(cfg)?;
    let store = pgbaton_store::open(&cfg.store, &cfg.cluster)
        .with_context(|| format!("open the store for cluster {}", cfg.cluster))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // At start the store may still be coming up (or connecting): a longer bound than a
    // loop's, once.
    let initialize = rt
        .block_on(
            pgbaton_store::Bounded::wrap(store.clone(), PREFLIGHT_STORE_TIMEOUT).initialize_get(),
        )
        .context("read the cluster's identity from the store")?;
    // Every call the agent (and its API) makes from now on is bounded by construction.
    let store = pgbaton_store::Bounded::wrap(store, store_timeout(cfg));
    let data = datadir::inspect(&bins, &cfg.data_dir)?;
    let local = LocalView::new(&cfg.name, data, PgRun::Stopped);
    let view = ClusterView {
        initialize,
        ..Default::default()
    };
    if let Some(Action::Fail { reason }) = decide(&view, &local, 0)
        .into_iter()
        .find(|a| matches!(a, Action::Fail { .. }))
    {
        bail!("{}: {reason}", cfg.data_dir.display());
    }
    let pg = &cfg.postgresql;
    if server::postmaster_pid(&cfg.data_dir).is_none() && port_taken(&pg.listen_host, pg.port) {
        bail!(
            "port {} on {} (postgresql.port) is already in use by another program: stop it or choose another port",
            pg.port,
            pg.listen_host
        );
    }
    if let Ok(addr) = cfg.api.listen.parse::<std::net::SocketAddr>() {
        if std::net::TcpListener::bind(addr).is_err() {
            bail!(
                "cannot listen on {} for the agent's API (api.listen): another agent or program uses it? \
                 choose another address or port",
                cfg.api.listen
            );
        }
    }
    check_archive(cfg)?;
    let auth = load_api_auth(cfg)?;
    Ok(Checked {
        bins,
        major,
        password,
        store,
        auth,
    })
}

/// How long the agent waits for the store at start.
const PREFLIGHT_STORE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a store call may take before the store counts as unreachable.
pub fn store_timeout(cfg: &NodeConfig) -> Duration {
    Duration::from_millis(cfg.timing.loop_interval_ms.clamp(500, 2000))
}

/// PostgreSQL archives and restores WAL by running pgbaton (`wal-push`, `wal-fetch`): this
/// very executable unless `postgresql.pgbaton_bin` says otherwise.
pub fn resolve_pgbaton_bin(cfg: &mut NodeConfig) -> Result<()> {
    if cfg.postgresql.archive_dir.is_some() && cfg.postgresql.pgbaton_bin.is_none() {
        let exe = std::env::current_exe().context("find pgbaton's own executable")?;
        cfg.postgresql.pgbaton_bin = Some(exe);
    }
    Ok(())
}

/// With an archive: the OS user (whose identity the preflight runs under) can run the
/// pgbaton executable and write into the archive directory. Creates nothing.
fn check_archive(cfg: &NodeConfig) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(dir) = &cfg.postgresql.archive_dir else {
        return Ok(());
    };
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "(this user)".into());
    let bin = cfg
        .postgresql
        .pgbaton_bin
        .as_deref()
        .context("postgresql.pgbaton_bin is not resolved")?;
    let runnable = std::fs::metadata(bin)
        .map_err(|e| e.to_string())
        .and_then(|m| {
            (m.is_file() && m.permissions().mode() & 0o111 != 0)
                .then_some(())
                .ok_or_else(|| "not an executable file".to_string())
        });
    if let Err(why) = runnable {
        bail!(
            "PostgreSQL archives WAL by running {} as OS user {user}, who cannot run it ({why}): \
             install pgbaton where that user can (e.g. /usr/local/bin) or set postgresql.pgbaton_bin",
            bin.display()
        );
    }
    if dir.exists() {
        let probe = dir.join(format!(".pgbaton-write-check.{}", std::process::id()));
        let wrote = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe);
        match wrote {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
            }
            Err(e) => bail!(
                "OS user {user} cannot write into the WAL archive directory {} \
                 (postgresql.archive_dir): {e}. Give that user the directory (chown) or choose another",
                dir.display()
            ),
        }
    }
    Ok(())
}

impl Agent {
    /// Bind the API and log what the agent runs with.
    pub async fn new(
        cfg: NodeConfig,
        ident: Identity,
        checked: Checked,
        watchdog: Option<watchdog::Watchdog>,
    ) -> Result<(Agent, tokio::net::TcpListener)> {
        let Checked {
            bins,
            major,
            password,
            store,
            auth,
        } = checked;
        let password = match password {
            Some(p) => p,
            None => {
                let f = default_password_file(&cfg);
                let p = files::read_or_generate_password_file(&f)?;
                info!(
                    "generated the replication password into {} (0600)",
                    f.display()
                );
                p
            }
        };
        let listener = tokio::net::TcpListener::bind(&cfg.api.listen).await.with_context(|| {
            format!(
                "listen on {} for the agent's API (api.listen): is another agent or program using it? \
                 choose another address or port",
                cfg.api.listen
            )
        })?;
        info!(
            member = %cfg.name, cluster = %cfg.cluster, pg_major = major, bin_dir = %bins.dir.display(),
            store = %store.describe(), api = %cfg.api.listen, os_user = %ident.user,
            "agent starting{}",
            if ident.dropped_from_root { format!(" (started as root, running as OS user {})", ident.user) } else { String::new() }
        );
        // A failsafe promise lives in the agent's memory: this agent may have given one just
        // before it restarted, so it honours one for a TTL from its start (simulator, seed
        // 3918: a restarted standby promoted beside the primary it had confirmed).
        let failsafe = cfg
            .failover
            .failsafe
            .then(|| pgbaton_core::failover::Failsafe {
                leader: "(a primary this agent may have confirmed before it restarted)".into(),
                until_ms: now_ms() + cfg.timing.ttl_ms,
            });
        let shared = Arc::new(RwLock::new(api::Shared {
            loop_interval: Duration::from_millis(cfg.timing.loop_interval_ms),
            ttl_ms: cfg.timing.ttl_ms,
            failsafe,
            ..Default::default()
        }));
        if cfg.failover.failsafe && auth.token.is_none() && auth.basic.is_none() {
            warn!(
                "failover.failsafe is on but the API has no credentials (api.auth_token_file): \
                 members cannot confirm the primary during a store outage, so it will fence itself"
            );
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(
                cfg.timing.loop_interval_ms.clamp(100, 1000),
            ))
            .build()
            .context("build the HTTP client for failsafe checks")?;
        Ok((
            Agent {
                cfg,
                bins,
                store,
                ident,
                password,
                shared,
                client: None,
                probe: None,
                message: None,
                expect_running: false,
                crashed: false,
                restarts: 0,
                held_lease: false,
                orphans_since: Default::default(),
                removed: false,
                auth,
                watchdog: watchdog.map(|w| Arc::new(std::sync::Mutex::new(w))),
                crashed_since_ms: None,
                rejoin_failed: None,
                not_streaming_since_ms: None,
                last_error: None,
                last_failsafe: None,
                http,
                archive: Default::default(),
            },
            listener,
        ))
    }

    fn store_timeout(&self) -> Duration {
        store_timeout(&self.cfg)
    }

    /// Several store calls as one step (each is bounded by the store itself), bounded by
    /// [`store_timeout`] as a whole and named.
    async fn bounded<T>(&self, what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
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
    fn arm(&self, t0: Instant) -> Result<()> {
        arm_watchdog(self.watchdog.as_ref(), &self.shared, &self.cfg, t0)
    }

    fn disarm(&self) {
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

    fn set_leading(&self, leading: bool) {
        self.shared
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .leading_or_acquiring = leading;
    }

    /// Keep renewing the lease (and arming the watchdog) while a long step runs (starting,
    /// promoting): the loop does not come round to renew meanwhile. Stops when dropped, or
    /// when a renewal is refused (the watchdog then fences at the last deadline).
    fn keeper(&self) -> Option<KeeperGuard> {
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

    /// The store did not answer. A primary with failsafe on asks every other member to
    /// confirm it over the API; when all do, it keeps serving (the watchdog is armed as if
    /// the lease had been renewed when the round started). Otherwise the watchdog fences it
    /// at the deadline of its last renewal.
    async fn store_unreachable(&mut self) {
        if !self.cfg.failover.failsafe || !self.held_lease {
            return;
        }
        if fence::postmaster_of(&self.cfg.data_dir).is_none()
            || self.probe.as_ref().is_none_or(|p| p.in_recovery)
        {
            return;
        }
        let Some(view) = self
            .shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .view
            .clone()
        else {
            return;
        };
        let me = self.cfg.name.clone();
        let t0 = Instant::now();
        let mut asks = tokio::task::JoinSet::new();
        for m in view.members.iter().filter(|m| m.name != me) {
            let mut req = self
                .http
                .post(format!("{}/failsafe", m.api_url.trim_end_matches('/')))
                .json(&serde_json::json!({ "leader": me }));
            if let Some(t) = &self.auth.token {
                req = req.bearer_auth(t);
            } else if let Some((u, p)) = &self.auth.basic {
                req = req.basic_auth(u, Some(p));
            }
            let name = m.name.clone();
            asks.spawn(async move {
                let r = req.send().await;
                let ok = r.as_ref().is_ok_and(|r| r.status().is_success());
                let why = match r {
                    Ok(r) => format!("answered {}", r.status()),
                    Err(e) => format!("unreachable ({e})"),
                };
                (name, ok, why)
            });
        }
        let mut refused = vec![];
        let mut n = 0;
        while let Some(r) = asks.join_next().await {
            n += 1;
            match r {
                Ok((_, true, _)) => {}
                Ok((name, false, why)) => refused.push(format!("{name} {why}")),
                Err(e) => refused.push(format!("a check failed: {e}")),
            }
        }
        let confirmed = refused.is_empty();
        {
            let mut sh = self.shared.write().unwrap_or_else(|e| e.into_inner());
            sh.failsafe_rounds += 1;
            sh.failsafe_confirmed += confirmed as u64;
        }
        if confirmed {
            match self.arm(t0) {
                Ok(()) => {
                    let msg = format!(
                        "failsafe: the store is unreachable; all {n} other members confirm this primary, so it keeps serving"
                    );
                    if self.last_failsafe.as_deref() != Some(msg.as_str()) {
                        warn!("{msg}");
                    }
                    self.last_failsafe = Some(msg.clone());
                    self.message = Some(msg);
                }
                Err(e) => error!("{e:#}"),
            }
        } else {
            let msg = format!(
                "failsafe: the store is unreachable and not every member confirms this primary ({}): \
                 it fences itself when its lease runs out",
                refused.join("; ")
            );
            if self.last_failsafe.as_deref() != Some(msg.as_str()) {
                warn!("{msg}");
            }
            self.last_failsafe = Some(msg.clone());
            self.message = Some(msg);
        }
    }

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

    async fn shutdown(&mut self, failed: bool) {
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
                if let Ok(w) = Arc::try_unwrap(w) {
                    w.into_inner().unwrap_or_else(|e| e.into_inner()).exit();
                }
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

    async fn cluster_view(&self) -> Result<ClusterView> {
        Ok(ClusterView {
            initialize: self.store.initialize_get().await?,
            leader: self.store.leader_get().await?,
            members: self.store.members().await?,
            op: self.store.op_get().await?,
            paused: self.store.paused().await?,
        })
    }

    /// The local view for the decision, from what the last probe saw; keeps track of when
    /// each orphan slot was first seen (for the grace period before it is dropped).
    fn local_view(&mut self, view: &ClusterView, data: DataDir, pg: PgRun) -> LocalView {
        let running = matches!(pg, PgRun::Running { .. });
        let now = now_ms();
        // A primary's PostgreSQL that went down by itself: since when (restart in place,
        // then hand over after timing.primary_restart_timeout_ms).
        match (&pg, &data) {
            (
                PgRun::Running {
                    in_recovery: false, ..
                },
                _,
            ) => self.crashed_since_ms = None,
            (_, DataDir::Initialized { standby: false, .. }) if self.crashed => {
                self.crashed_since_ms.get_or_insert(now);
            }
            (_, DataDir::Initialized { standby: true, .. }) | (_, DataDir::Empty) => {
                self.crashed_since_ms = None
            }
            _ => {}
        }
        let streaming = self
            .probe
            .as_ref()
            .is_some_and(|p| p.receiver_status.as_deref() == Some("streaming"));
        match &pg {
            PgRun::Running {
                in_recovery: true, ..
            } if !streaming => {
                self.not_streaming_since_ms.get_or_insert(now);
            }
            PgRun::Running { .. } => self.not_streaming_since_ms = None,
            _ => {}
        }
        let mut local = LocalView::new(&self.cfg.name, data, pg);
        local.not_streaming_since_ms = self.not_streaming_since_ms;
        local.orphan_grace_ms = self.cfg.timing.orphan_slot_grace_ms;
        local.policy = pgbaton_core::failover::Policy::from_config(&self.cfg);
        local.crashed_since_ms = self.crashed_since_ms;
        local.rejoin_failed = self.rejoin_failed.clone();
        local.failsafe = self
            .shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .failsafe
            .clone()
            .filter(|f| f.leader != self.cfg.name);
        if let Some(p) = self.probe.as_ref().filter(|_| running) {
            local.lsn = p.lsn;
            local.receive_lsn = p.receive_lsn;
            local.timeline = p.timeline;
            local.slots = p.slots.clone();
            let (orphans, _) = pgbaton_core::decide::orphan_slots(&view.members, &p.slots);
            self.orphans_since.retain(|k, _| orphans.contains(k));
            for o in orphans {
                self.orphans_since.entry(o).or_insert(now);
            }
        }
        local.orphans_since = self.orphans_since.clone();
        local
    }

    async fn observe_pg(&mut self, view: &ClusterView) -> PgRun {
        if server::postmaster_pid(&self.cfg.data_dir).is_none() {
            self.client = None;
            self.probe = None;
            if self.expect_running {
                self.expect_running = false;
                self.crashed = true;
                warn!(
                    "PostgreSQL stopped without being asked to (crash or kill): starting it again"
                );
            }
            return PgRun::Stopped;
        }
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = sql::connect(&self.cfg, "postgres").await.ok();
        }
        let Some(client) = &self.client else {
            return PgRun::NotAnswering;
        };
        match sql::probe(client).await {
            Ok(p) => {
                let upstream = p.in_recovery.then(|| upstream_member(&p, view)).flatten();
                let run = PgRun::Running {
                    in_recovery: p.in_recovery,
                    upstream,
                };
                self.probe = Some(p);
                self.expect_running = true;
                run
            }
            Err(_) => {
                self.client = None;
                self.probe = None;
                PgRun::NotAnswering
            }
        }
    }

    async fn iteration(&mut self) -> Result<()> {
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

    fn status_of(&self, local: &LocalView) -> MemberStatus {
        match &local.pg {
            PgRun::Running {
                in_recovery: false, ..
            } => MemberStatus::Running,
            PgRun::Running {
                in_recovery: true, ..
            } => {
                match self
                    .probe
                    .as_ref()
                    .and_then(|p| p.receiver_status.as_deref())
                {
                    Some("streaming") => MemberStatus::Streaming,
                    _ => MemberStatus::Replaying,
                }
            }
            PgRun::NotAnswering => MemberStatus::Starting,
            PgRun::Stopped if self.crashed => MemberStatus::Crashed,
            PgRun::Stopped if local.data == DataDir::Empty => MemberStatus::WaitingForPrimary,
            PgRun::Stopped => MemberStatus::Stopped,
        }
    }

    /// Run one action. `Ok(false)`: stop this loop's list here (a lost compare-and-set, a wait).
    async fn execute(
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

    /// Stop PostgreSQL on purpose (not a crash).
    async fn stop_pg(&mut self) -> Result<()> {
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
    async fn finish_op(
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
    async fn rejoin(&mut self, upstream: &Upstream) -> Result<()> {
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

    fn write_pgpass(&self) -> Result<()> {
        files::write_if_changed(
            &self.cfg.pgpass_path(),
            &render::pgpass(&self.cfg.replication.user, &self.password),
            0o600,
        )
        .with_context(|| format!("write the passfile {}", self.cfg.pgpass_path().display()))?;
        Ok(())
    }

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
        self.write_pgpass()
    }

    async fn start(&mut self, standby: bool, upstream: Option<&Upstream>) -> Result<()> {
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

    async fn bootstrap(&mut self, data: &DataDir) -> Result<()> {
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

    async fn clone_from(&mut self, from: &Upstream, replace: bool) -> Result<()> {
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

    /// A cheap look at the node (no SQL) for publishing outside the loop's observation.
    fn glance(&self) -> LocalView {
        let data = datadir::inspect(&self.bins, &self.cfg.data_dir).unwrap_or(DataDir::Empty);
        let pg = if server::postmaster_pid(&self.cfg.data_dir).is_some() {
            PgRun::NotAnswering
        } else {
            PgRun::Stopped
        };
        LocalView::new(&self.cfg.name, data, pg)
    }

    /// Publish with an explicit status (during a long action, at shutdown).
    async fn publish_status(&self, status: MemberStatus, progress: Option<Progress>) -> Result<()> {
        self.publish_full(&self.glance(), status, progress).await
    }

    /// Publish with the status the node's state implies.
    async fn publish(&self, progress: Option<Progress>) -> Result<()> {
        let local = self.glance();
        let status = self.status_of(&local);
        self.publish_full(&local, status, progress).await
    }

    async fn publish_full(
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
        // (simulator, seed 912: a stopped primary that published none let a standby 1.3 MB
        // behind be promoted).
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

/// Stops the lease keeper task when dropped.
struct KeeperGuard(tokio::task::JoinHandle<()>);
impl Drop for KeeperGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn arm_watchdog(
    watchdog: Option<&Arc<std::sync::Mutex<watchdog::Watchdog>>>,
    shared: &api::SharedState,
    cfg: &NodeConfig,
    t0: Instant,
) -> Result<()> {
    let Some(w) = watchdog else { return Ok(()) };
    let window =
        Duration::from_millis(cfg.timing.ttl_ms.saturating_sub(cfg.timing.fence_margin_ms));
    let remaining = window.saturating_sub(t0.elapsed());
    shared
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .fence_deadline = Some(Instant::now() + remaining);
    w.lock()
        .unwrap_or_else(|e| e.into_inner())
        .arm(remaining)
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

/// The member a standby's `primary_conninfo` points at, matched by host and port.
fn upstream_member(p: &Probe, view: &ClusterView) -> Option<String> {
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
fn conninfo_host_port(conninfo: &str) -> Option<(String, u16)> {
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

    #[test]
    fn taken_port_is_detected() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(port_taken("127.0.0.1", port));
        drop(l);
        // Another test thread forking right now holds the socket until its child execs.
        let t = Instant::now();
        while port_taken("127.0.0.1", port) {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "a freed port still taken"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
