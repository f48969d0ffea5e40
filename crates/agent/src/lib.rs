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
pub mod backup;
mod backup_schedule;
mod backup_server;
mod cluster_conf;
mod failsafe;
pub mod fence;
mod host;
mod local_pg;
mod observe;
mod preflight;
pub mod process;
mod publish;
mod restore;
mod timing;
mod tls_watch;
pub mod watchdog;

use anyhow::{bail, Context, Result};
use pgbaton_core::config::NodeConfig;
use pgbaton_core::decide::{decide, role_of, Action, ClusterView, DataDir, LocalView, PgRun};
use pgbaton_core::model::{slot_name_for, MemberState, MemberStatus, Progress};
use pgbaton_core::render::{self, Upstream};
use pgbaton_pg::clone::CloneSpec;
use pgbaton_pg::files::{self, PasswordSource};
use pgbaton_pg::sql::Probe;
use pgbaton_pg::{datadir, server, sql, Binaries};
use pgbaton_store::{now_ms, Store};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

pub use preflight::{
    default_password_file, load_api_auth, load_password, port_taken, preflight, resolve_data_dir,
    resolve_pgbaton_bin, store_timeout, Checked,
};
pub use process::{become_os_user, Identity};

/// The agent's executor: the one `crates/sim` drives too, over the real PostgreSQL here.
type Exec = pgbaton_exec::Executor<local_pg::LocalPg, host::AgentHost>;

pub struct Agent {
    cfg: Arc<NodeConfig>,
    bins: Binaries,
    store: Arc<dyn Store>,
    shared: api::SharedState,
    /// Carries out the decision; holds the agent's memory and the PostgreSQL connection.
    exec: Exec,
    publisher: publish::Publisher,
    auth: api::Auth,
    /// The last loop error and failsafe outcome logged (each is logged when it changes).
    last_error: Option<String>,
    last_failsafe: Option<String>,
    /// The unreadable store records last logged (logged again only when they change).
    last_unreadable: String,
    /// Why the cluster's timing is not run with here (logged when it changes).
    timing_refused: Option<String>,
    /// The bound on each store call (`preflight::Checked::store_limit_ms`).
    store_limit_ms: Arc<std::sync::atomic::AtomicU64>,
    tls: tls_watch::TlsWatch,
    /// The client for the other members' APIs (replaced when the API's TLS files change).
    http: Arc<RwLock<reqwest::Client>>,
    /// The API's TLS (`[api.tls]`), read at start and again when its files change.
    api_tls: Option<api::serve::SharedAcceptor>,
    api_tls_watch: tls_watch::TlsWatch,
    archive: archive_watch::ArchiveWatch,
    /// The backups this agent runs (API and schedule) and when the schedule last looked.
    backups: backup::Jobs,
    schedule: backup_schedule::Schedule,
    /// pgBackRest's TLS server (`[backup.server]`), the agent's child.
    backup_server: backup_server::BackupServer,
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
            store_limit_ms,
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
            lease_ttl_ms = cfg.timing.ttl_ms,
            "agent starting{}",
            if ident.dropped_from_root { format!(" (started as root, running as OS user {})", ident.user) } else { String::new() }
        );
        // A failsafe promise lives in the agent's memory: this agent may have given one just
        // before it restarted, so it honours one for a TTL from its start (pinned
        // simulator test `agent_restart_forgets_its_failsafe_promise`: a restarted standby
        // promoted beside the primary it had confirmed).
        let failsafe = if cfg.failover.failsafe {
            pgbaton_core::failover::FailsafeGate::holding(pgbaton_core::failover::Failsafe {
                leader: "(a primary this agent may have confirmed before it restarted)".into(),
                until_ms: now_ms() + cfg.timing.ttl_ms,
            })
        } else {
            Default::default()
        };
        let shared = Arc::new(RwLock::new(api::Shared {
            timing: cfg.timing,
            promise_ms: cfg.timing.ttl_ms,
            failsafe,
            ..Default::default()
        }));
        if cfg.failover.failsafe && auth.token.is_none() && auth.basic.is_none() {
            warn!(
                "failover.failsafe is on but the API has no credentials (api.auth_token_file): \
                 members cannot confirm the primary during a store outage, so it will fence itself"
            );
        }
        // No redirects; with [api.tls], https only, the other members checked against the CA.
        let http = Arc::new(RwLock::new(api::tls::client(
            cfg.api.tls.as_ref(),
            Duration::from_millis(cfg.timing.loop_interval_ms.clamp(100, 1000)),
        )?));
        let api_tls = cfg
            .api
            .tls
            .as_ref()
            .map(api::tls::acceptor)
            .transpose()?
            .map(|a| Arc::new(RwLock::new(a)));
        let cfg = Arc::new(cfg);
        let publisher = publish::Publisher {
            cfg: cfg.clone(),
            bins: bins.clone(),
            store: store.clone(),
            shared: shared.clone(),
            os_user: ident.user.clone(),
            checked_ms: Default::default(),
            alive_ms: Default::default(),
            written_ms: Default::default(),
        };
        let pg = local_pg::LocalPg {
            cfg: cfg.clone(),
            bins: bins.clone(),
            os_user: ident.user.clone(),
            password,
            client: None,
            probe: None,
            publisher: publisher.clone(),
            handed_over: false,
            cluster_conf: Default::default(),
            reload_owed: false,
        };
        let host = host::AgentHost {
            cfg: cfg.clone(),
            store: store.clone(),
            shared: shared.clone(),
            watchdog: watchdog.map(|w| Arc::new(std::sync::Mutex::new(w))),
            publisher: publisher.clone(),
        };
        let settings = pgbaton_exec::Settings {
            name: cfg.name.clone(),
            ttl_ms: cfg.timing.ttl_ms,
        };
        let exec = pgbaton_exec::Executor::new(settings, store.clone(), pg, host);
        Ok((
            Agent {
                cfg,
                bins,
                store,
                shared,
                exec,
                publisher,
                auth,
                last_error: None,
                last_failsafe: None,
                last_unreadable: String::new(),
                timing_refused: None,
                store_limit_ms,
                tls: Default::default(),
                http,
                api_tls,
                api_tls_watch: Default::default(),
                archive: Default::default(),
                backups: Default::default(),
                schedule: Default::default(),
                backup_server: Default::default(),
            },
            listener,
        ))
    }
}
