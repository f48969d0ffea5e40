//! The cluster's parameters (the store's `config` record, `pgbaton edit-config`) on this
//! member: written to `pgbaton.cluster.conf` in the data directory, which `pgbaton.conf`
//! includes before everything else (so what pgbaton owns and the node's own
//! `[postgresql.parameters]` win); PostgreSQL reloaded when the file changed; and the
//! parameters whose new value waits for a restart (`pg_settings.pending_restart`), for the
//! member's report.
//!
//! It runs at the start of each loop, before the decision, and again before each start: a
//! member that starts (or joins the cluster) starts with the cluster's parameters rather
//! than restarting for them.

use pgbaton_core::cluster_config::{self, ClusterConfig, CLUSTER_FILE};
use pgbaton_core::config::NodeConfig;
use pgbaton_core::config::ParamValue;
use pgbaton_pg::{files, sql};
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::{info, warn};

/// After a change, pending restarts are read every loop this long (a reload reaches the
/// backends asynchronously); otherwise every `SLOW_CHECK`.
const FAST_CHECK: Duration = Duration::from_secs(10);
const SLOW_CHECK: Duration = Duration::from_secs(30);

#[derive(Default)]
pub(crate) struct ClusterConf {
    /// The record's text in the store's view.
    text: Option<String>,
    /// Whether the file holds `text` (or `text` cannot be read and was logged).
    written: bool,
    fast_until_ms: u64,
    next_check_ms: u64,
    /// The parameters that wait for a restart, as PostgreSQL last said.
    pub(crate) pending_restart: Vec<String>,
    /// pgbaton's own settings the record holds (they win over node.toml's).
    pub(crate) settings: BTreeMap<String, ParamValue>,
}

impl ClusterConf {
    /// The record as the store's view holds it now (parsed once per change: the loop asks
    /// for its settings every time).
    pub(crate) fn update(&mut self, text: Option<&str>) {
        if self.text.as_deref() != text {
            self.text = text.map(str::to_string);
            self.written = false;
            match text.map(ClusterConfig::parse) {
                None => self.settings.clear(),
                Some(Ok(r)) => self.settings = r.settings,
                // A record that cannot be read changes nothing: the last settings that
                // could be read stay (never fall back to node.toml's synchronous mode on
                // a bad write to the store). `write` says why.
                Some(Err(_)) => {}
            }
        }
    }

    /// The file may have been replaced (a clone, a restore, a reinit): check it again.
    pub(crate) fn forget_written(&mut self) {
        self.written = false;
    }

    /// Write the file when the record changed; `Ok(true)` when its content did (reload
    /// then). Nothing is written into a data directory not made yet: initdb and
    /// pg_basebackup want it empty.
    pub(crate) fn write(&mut self, cfg: &NodeConfig, now_ms: u64) -> anyhow::Result<bool> {
        if self.written || !cfg.data_dir.join("PG_VERSION").is_file() {
            return Ok(false);
        }
        let record = match self.text.as_deref().map(ClusterConfig::parse).transpose() {
            Ok(r) => r,
            Err(why) => {
                // Keep what was applied: never act on a record that cannot be read.
                warn!("{why}");
                self.written = true;
                return Ok(false);
            }
        };
        let record = record.map(keep_checked);
        let path = cfg.data_dir.join(CLUSTER_FILE);
        let text = cluster_config::render_file(record.as_ref());
        let mut changed = files::write_if_changed(&path, &text, 0o600)?;
        changed |= include_in_place(cfg)?;
        // Only once written: a failed write is tried again next loop.
        self.written = true;
        if changed {
            if let Some(r) = &record {
                info!("the cluster's parameters are now version {}", r.version);
            }
            self.recheck(now_ms);
        }
        Ok(changed)
    }

    /// Read pending restarts every loop for a while (after a change).
    pub(crate) fn recheck(&mut self, now_ms: u64) {
        self.fast_until_ms = now_ms + FAST_CHECK.as_millis() as u64;
        self.next_check_ms = 0;
    }

    /// PostgreSQL stopped or started: what it said of itself no longer holds. A fresh start
    /// has nothing pending unless the files changed during it: one read at the next loop
    /// (not a loop-by-loop window, which costs an idle agent its CPU).
    pub(crate) fn forget_server(&mut self) {
        self.pending_restart.clear();
        self.next_check_ms = 0;
    }

    /// Read `pending_restart` when a read is due.
    pub(crate) async fn check(&mut self, client: &tokio_postgres::Client, now_ms: u64) {
        if now_ms < self.next_check_ms {
            return;
        }
        match sql::pending_restart(client).await {
            Ok(p) => {
                if p != self.pending_restart && !p.is_empty() {
                    info!("a restart is pending for: {}", p.join(", "));
                }
                self.pending_restart = p;
            }
            Err(e) => warn!("{e:#}"),
        }
        let every = if now_ms < self.fast_until_ms {
            0
        } else {
            SLOW_CHECK.as_millis() as u64
        };
        self.next_check_ms = now_ms + every;
    }
}

/// `pgbaton.conf` written by an agent of an earlier version (a member upgraded in place,
/// PostgreSQL still running) lacks the include: put it first, as `render::pgbaton_conf`
/// does, so that a reload applies the cluster's parameters without waiting for a start.
fn include_in_place(cfg: &NodeConfig) -> anyhow::Result<bool> {
    let path = cfg.data_dir.join(pgbaton_core::render::INCLUDE_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(false); // written at the next start, with the include
    };
    let line = format!("include_if_exists = '{CLUSTER_FILE}'");
    if text.lines().any(|l| l.trim() == line) {
        return Ok(false);
    }
    files::write_if_changed(&path, &format!("{line}\n{text}"), 0o600)
}

/// A record is checked before it is stored, but the store may hold one written past the
/// checks: a parameter pgbaton owns, or a malformed name or value, is left out (and said).
fn keep_checked(mut r: ClusterConfig) -> ClusterConfig {
    r.parameters
        .retain(|k, v| match pgbaton_core::config::check_parameter(k, v) {
            Ok(()) => true,
            Err(e) => {
                warn!("the cluster's config: {e}: left out");
                false
            }
        });
    r
}
