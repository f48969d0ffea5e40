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

mod agent_loop;
pub mod api;
mod archive_watch;
mod execute;
mod failsafe;
pub mod fence;
mod lease;
mod observe;
mod preflight;
pub mod process;
mod publish;
mod steps;
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

pub use preflight::{
    default_password_file, load_api_auth, load_password, port_taken, preflight,
    resolve_pgbaton_bin, store_timeout, Checked,
};
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
        // before it restarted, so it honours one for a TTL from its start (pinned
        // simulator test `agent_restart_forgets_its_failsafe_promise`: a restarted standby
        // promoted beside the primary it had confirmed).
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
}
