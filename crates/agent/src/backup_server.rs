//! pgBackRest's TLS server (`[backup.server]`): the agent runs `pgbackrest server` as its
//! child, so that a standby on another host can back up while this member is the primary
//! (pgBackRest reads the primary's control files and calls pg_backup_start through it).
//!
//! The config lets in the cluster's members only (`render::pgbackrest_server_conf`): when
//! the members change, or the certificate files do, the server reads it again (SIGHUP). The server
//! dies with the agent (`setpriv --pdeathsig`, util-linux: the workspace forbids the unsafe
//! `pre_exec` a prctl would need): an agent killed with -9 leaves no server holding the
//! port for the next one. A server that exits is started again after a pause,
//! with its last words in the agent's log.

use super::*;
use std::time::Instant;

/// Runs the server with a parent-death signal (it execs pgBackRest in place).
pub(crate) const SETPRIV: &str = "/usr/bin/setpriv";

/// A server that exited is started again after this long.
const RESTART_AFTER: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(crate) struct BackupServer {
    child: Option<tokio::process::Child>,
    /// The config as last written.
    written: Option<String>,
    /// No start before this (after an exit or a failed start).
    not_before: Option<Instant>,
    /// The certificate, key and CA: a renewal is read by a reload too.
    tls: crate::tls_watch::TlsWatch,
}

impl BackupServer {
    /// Once a loop: the config follows the members in `view`, and the server runs.
    pub(crate) fn tick(&mut self, cfg: &NodeConfig, view: &ClusterView) {
        let mut names: Vec<&str> = view.members.iter().map(|m| m.name.as_str()).collect();
        names.push(&cfg.name);
        names.sort_unstable();
        names.dedup();
        let Some(text) = render::pgbackrest_server_conf(cfg, &names) else {
            return;
        };
        let path = conf_path(cfg);
        if self.written.as_deref() != Some(text.as_str()) {
            if let Err(e) = files::write_if_changed(&path, &text, 0o600) {
                warn!("pgBackRest TLS server: write {}: {e:#}", path.display());
                return;
            }
            if self.written.replace(text).is_some() {
                self.reload();
            }
        }
        if let Some(t) = &cfg.postgresql.tls {
            if self.tls.changed(&[&t.cert_file, &t.key_file, &t.ca_file]) {
                info!("TLS files changed: the pgBackRest TLS server reads them again");
                self.reload();
            }
        }
        if self.exited(cfg) {
            self.not_before = Some(Instant::now() + RESTART_AFTER);
        }
        if self.child.is_none() && self.not_before.is_none_or(|t| Instant::now() >= t) {
            self.start(cfg, &path);
        }
    }

    /// The members changed: the server reads its config again.
    fn reload(&self) {
        let Some(pid) = self.child.as_ref().and_then(|c| c.id()) else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP) {
            warn!("pgBackRest TLS server: reload (SIGHUP to {pid}): {e}");
        }
    }

    /// Whether the server exited since the last look (said in the log, with its last
    /// words).
    fn exited(&mut self, cfg: &NodeConfig) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        let status = match child.try_wait() {
            Ok(None) => return false,
            Ok(Some(s)) => s.to_string(),
            Err(e) => format!("cannot be waited for: {e}"),
        };
        self.child = None;
        let said = std::fs::read_to_string(stderr_path(cfg)).unwrap_or_default();
        let last: Vec<&str> = said.lines().rev().take(3).collect();
        warn!(
            "pgBackRest TLS server exited ({status}); starting it again in {} s: {}",
            RESTART_AFTER.as_secs(),
            last.into_iter().rev().collect::<Vec<_>>().join(" ")
        );
        true
    }

    fn start(&mut self, cfg: &NodeConfig, conf: &Path) {
        let (Some(b), Some(s)) = (
            cfg.backup.as_ref(),
            cfg.backup.as_ref().and_then(|b| b.server.as_ref()),
        ) else {
            return;
        };
        let stderr = match std::fs::File::create(stderr_path(cfg)) {
            Ok(f) => f,
            Err(e) => {
                warn!("pgBackRest TLS server: {}: {e}", stderr_path(cfg).display());
                self.not_before = Some(Instant::now() + RESTART_AFTER);
                return;
            }
        };
        let mut cmd = tokio::process::Command::new(SETPRIV);
        cmd.args(["--pdeathsig", "TERM", "--"])
            .arg(&b.bin)
            .arg(format!("--config={}", conf.display()))
            .arg("server")
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        match cmd.spawn() {
            Ok(child) => {
                info!(
                    "pgBackRest TLS server started on {}:{} (pid {})",
                    s.listen_or(&cfg.postgresql),
                    s.port,
                    child.id().unwrap_or(0)
                );
                self.child = Some(child);
                self.not_before = None;
            }
            Err(e) => {
                warn!(
                    "pgBackRest TLS server: could not run {SETPRIV} (util-linux) with {}: {e}",
                    b.bin.display()
                );
                self.not_before = Some(Instant::now() + RESTART_AFTER);
            }
        }
    }
}

/// The server's config file.
pub(crate) fn conf_path(cfg: &NodeConfig) -> PathBuf {
    cfg.base_dir().join("pgbackrest-server.conf")
}

fn stderr_path(cfg: &NodeConfig) -> PathBuf {
    cfg.pgbackrest_dir().join("log").join("server.stderr")
}
