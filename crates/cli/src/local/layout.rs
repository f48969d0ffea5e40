//! Where everything of a local cluster goes in DIR (see the table in `local`), and writing
//! files there owned by PostgreSQL's OS user.

use crate::cluster::load_node_config;
use anyhow::{Context, Result};
use nix::unistd::User;
use pgbaton_core::config::NodeConfig;
use std::path::{Path, PathBuf};

/// The name of the marker `up` leaves in DIR.
pub(super) const MARKER: &str = ".pgbaton-up";

pub(super) struct Layout {
    pub(super) dir: PathBuf,
}

impl Layout {
    pub(super) fn new(dir: &Path) -> Result<Layout> {
        let dir = std::path::absolute(dir).with_context(|| format!("resolve {}", dir.display()))?;
        Ok(Layout { dir })
    }
    pub(super) fn client_config(&self) -> PathBuf {
        self.dir.join("pgbaton.toml")
    }
    pub(super) fn node_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    pub(super) fn node_config(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("node.toml")
    }
    pub(super) fn agent_log(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("agent.log")
    }
    /// `up --tls`: the CA and the members' certificates.
    pub(super) fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }
    pub(super) fn agent_pid(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("agent.pid")
    }

    /// Written by `up` before anything else: `down --purge` deletes only directories that
    /// carry it, and only the entries `up` makes ([`made_by_up`](Self::made_by_up)).
    pub(super) fn marker(&self) -> PathBuf {
        self.dir.join(MARKER)
    }

    /// What `up` makes in DIR for these members: the only entries `down --purge` deletes.
    pub(super) fn made_by_up(&self, members: &[String]) -> Vec<PathBuf> {
        let files = [
            "pgbaton.toml",
            "store.db",
            "store.db-wal",
            "store.db-shm",
            "store.db-journal",
            "replication.password",
            "api.token",
            "archive",
            "bin",
            "tls",
        ];
        files
            .iter()
            .map(|f| self.dir.join(f))
            .chain(members.iter().map(|m| self.node_dir(m)))
            .collect()
    }

    /// The members of an existing cluster directory, in order (n1, n2, ...).
    pub(super) fn nodes(&self) -> Result<Vec<NodeConfig>> {
        let mut found: Vec<(u32, NodeConfig)> = Vec::new();
        for e in
            std::fs::read_dir(&self.dir).with_context(|| format!("read {}", self.dir.display()))?
        {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(num) = name.strip_prefix('n').and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let cfg_path = self.node_config(&name);
            if cfg_path.exists() {
                found.push((num, load_node_config(&cfg_path)?));
            }
        }
        found.sort_by_key(|(n, _)| *n);
        Ok(found.into_iter().map(|(_, c)| c).collect())
    }
}

fn chown_to(user: &User, path: &Path) -> Result<()> {
    nix::unistd::chown(path, Some(user.uid), Some(user.gid))
        .with_context(|| format!("chown {}", path.display()))
}

pub(super) fn write_owned(user: &User, path: &Path, contents: &str, mode: u32) -> Result<()> {
    pgbaton_pg::files::write_if_changed(path, contents, mode)?;
    chown_to(user, path)
}
