//! Backups with pgBackRest (`[backup]`): the checks at start, the stanza at bootstrap, and
//! the backup job the API starts (one at a time on each agent), from a standby when the
//! primary's files are at hand, else from the primary. pgBackRest reads a few of the
//! primary's files and runs pg_backup_start there: on this host, or through the primary's
//! pgBackRest TLS server (`[backup.server]`, `backup_server.rs`) on another.

use anyhow::{bail, Context, Result};
use pgbaton_core::config::NodeConfig;
use pgbaton_core::decide::ClusterView;
use pgbaton_core::model::{BackupServerInfo, MemberState, MemberStatus, Role};
use pgbaton_pg::backrest::{self, BackRest, BackupType, OtherPg, RepoInfo, TlsServer};
use pgbaton_store::now_ms;
use serde::Serialize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// With `[backup]`: pgBackRest can be run, the repository exists and the OS user can write
/// into it, and it does not hold the stanza of another database. `known_id`: the cluster's
/// system identifier (store or data directory); `None` for a cluster not made yet, which
/// must not find the stanza holding anything. Creates nothing.
pub(crate) async fn preflight(cfg: &NodeConfig, known_id: Option<&str>) -> Result<()> {
    if known_id.is_none() {
        check_bootstrap_source(cfg).await?;
    }
    let Some(br) = BackRest::of(cfg) else {
        return Ok(());
    };
    check_bin(&br.bin, "backup.bin")?;
    check_repo(&br.repo)?;
    check_server(cfg).await?;
    if let Some(owner) =
        pgbaton_pg::backrest::stanza_owner(&br.repo, &br.stanza).filter(|o| *o != cfg.cluster)
    {
        bail!(
            "stanza {} in the pgBackRest repository {} belongs to cluster {owner}, and this is cluster {}: \
             a cluster restored from another keeps its system identifier, so only this tells them apart. \
             Choose another backup.stanza or backup.repo_path",
            br.stanza,
            br.repo.display(),
            cfg.cluster
        );
    }
    // pgBackRest reads its own config: the real one is written before PostgreSQL starts,
    // so ask with a scratch copy (nothing in the node's directories is created yet).
    let (_scratch, probe) = scratch_reader(cfg, &br)?;
    let info = probe.info().await.with_context(|| {
        format!(
            "read the pgBackRest repository {} (backup.repo_path)",
            br.repo.display()
        )
    })?;
    let theirs = info.system_ids.join(", ");
    match known_id {
        _ if info.system_ids.is_empty() => Ok(()),
        Some(id) if info.system_ids.iter().any(|s| s == id) => Ok(()),
        Some(id) => bail!(
            "the pgBackRest repository {} holds stanza {} of another database (system identifier {theirs}; \
             this cluster's is {id}): choose another backup.repo_path or backup.stanza",
            br.repo.display(),
            br.stanza
        ),
        None if pgbaton_pg::backrest::stanza_owner(&br.repo, &br.stanza).as_deref()
            == Some(cfg.cluster.as_str()) =>
        {
            Err(made_already(cfg))
        }
        None => bail!(
            "the pgBackRest repository {} already holds stanza {} (database system identifier {theirs}), \
             and this cluster is not made yet: a new cluster needs a stanza of its own. Choose another \
             backup.stanza or backup.repo_path",
            br.repo.display(),
            br.stanza
        ),
    }
}

/// This cluster's own stanza says it was made, yet the store has no identity for it and
/// this member has no data: a store that lost its keys. Making the cluster again here
/// (initdb, or `[bootstrap]`'s old point in time under the same system identifier) would
/// compete with the members that have the data.
pub(crate) fn made_already(cfg: &NodeConfig) -> anyhow::Error {
    let (repo, stanza) = cfg.backup.as_ref().map_or((Path::new(""), ""), |b| {
        (b.repo_path.as_path(), b.stanza_or(&cfg.cluster))
    });
    anyhow::anyhow!(
        "cluster {} was made already ({} records it as stanza {stanza}'s owner), but the store \
         has no identity for it and this member's data directory is empty: the store lost its \
         keys. This member makes nothing (no initdb, no [bootstrap] restore of an old point in \
         time). Start the members that have their data first, the former primary's first: they \
         re-establish the cluster, and this member then clones",
        cfg.cluster,
        repo.display()
    )
}

/// `[bootstrap]`, for a cluster not made yet: pgBackRest can be run and the repository
/// holds a backup of that stanza. Reads only.
async fn check_bootstrap_source(cfg: &NodeConfig) -> Result<()> {
    let Some(b) = &cfg.bootstrap else {
        return Ok(());
    };
    check_bin(&b.bin, "bootstrap.bin")?;
    if !b.repo_path.is_dir() {
        bail!(
            "bootstrap.repo_path {} does not exist: name the repository holding stanza {}'s backups",
            b.repo_path.display(),
            b.stanza
        );
    }
    let source = BackRest {
        bin: b.bin.clone(),
        conf: Default::default(),
        stanza: b.stanza.clone(),
        repo: b.repo_path.clone(),
        timeout: backrest::long_timeout(cfg),
    };
    let (_scratch, br) = scratch_reader(cfg, &source)?;
    let info = br.info().await.with_context(|| {
        format!(
            "read the pgBackRest repository {} (bootstrap.repo_path)",
            b.repo_path.display()
        )
    })?;
    if !info.backups.iter().any(|x| !x.error) {
        bail!(
            "the pgBackRest repository {} holds no backup of stanza {} ({}): nothing to restore",
            b.repo_path.display(),
            b.stanza,
            info.status
        );
    }
    Ok(())
}

fn check_repo(repo: &Path) -> Result<()> {
    let user = crate::preflight::os_user_name();
    if !repo.is_dir() {
        bail!(
            "the pgBackRest repository {} (backup.repo_path) does not exist: make it (owned by OS user \
             {user}), or mount the shared repository there",
            repo.display()
        );
    }
    let probe = repo.join(format!(".pgbaton-write-check.{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => bail!(
            "OS user {user} cannot write into the pgBackRest repository {} (backup.repo_path): {e}. \
             Give that user the directory (chown) or choose another",
            repo.display()
        ),
    }
}

/// With `[backup.server]`: what runs pgBackRest's TLS server is there (`setpriv`), and its
/// port is free. A server of this agent's previous run dies with it: its port is waited for
/// a few seconds.
async fn check_server(cfg: &NodeConfig) -> Result<()> {
    let Some(s) = cfg.backup.as_ref().and_then(|b| b.server.as_ref()) else {
        return Ok(());
    };
    let setpriv = Path::new(crate::backup_server::SETPRIV);
    if !setpriv.is_file() {
        bail!(
            "[backup.server]: {} (util-linux) is missing: the agent runs pgBackRest's TLS server \
             under it, so that the server dies with the agent. Install util-linux or remove \
             [backup.server]",
            setpriv.display()
        );
    }
    let listen = s.listen_or(&cfg.postgresql);
    for _ in 0..50 {
        if !crate::port_taken(&listen, s.port) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "backup.server.port {}: {listen}:{} is taken by another process; pgBackRest's TLS server \
         needs it. Stop that process or choose another port",
        s.port,
        s.port
    )
}

fn check_bin(bin: &Path, key: &str) -> Result<()> {
    crate::preflight::check_runnable(bin, key, "pgBackRest (Debian's `pgbackrest` package)")
}

/// `br` reading its repository with a config in a temporary directory (logs and locks
/// there too): for a read before anything of the node's is made. Only the repository and
/// the stanza matter for `info`; the data directory named there is never read.
fn scratch_reader(cfg: &NodeConfig, br: &BackRest) -> Result<(tempfile::TempDir, BackRest)> {
    // A fresh directory of this user's (0700), whatever else is in /tmp.
    let dir = tempfile::Builder::new()
        .prefix("pgbaton-pgbackrest.")
        .tempdir()
        .context("make a scratch directory for pgbackrest info")?;
    let path = dir.path().join("pgbackrest.conf");
    let mut c = cfg.clone();
    c.data_dir = dir.path().join("data");
    let text = pgbaton_core::render::pgbackrest_conf_for(&c, &br.repo, &br.stanza, 1);
    pgbaton_pg::files::write_if_changed(&path, &text, 0o600)?;
    let reader = BackRest {
        conf: path,
        ..br.clone()
    };
    Ok((dir, reader))
}

/// The backups this agent ran, for the API.
#[derive(Clone, Default)]
pub struct Jobs(
    Arc<Mutex<JobState>>,
    Arc<tokio::sync::Mutex<Option<(std::time::Instant, RepoInfo)>>>,
);

/// How long the API serves one `pgbackrest info` (a GET is not authenticated: it must not
/// start a process per request).
const INFO_FRESH: Duration = Duration::from_secs(2);

#[derive(Clone, Default, Serialize)]
pub struct JobState {
    pub running: Option<Job>,
    pub last: Option<Finished>,
}

#[derive(Clone, Serialize)]
pub struct Job {
    pub member: String,
    #[serde(rename = "type")]
    pub kind: BackupType,
    /// `standby` or `primary`: where the files are copied from.
    pub from: &'static str,
    pub started_ms: u64,
}

#[derive(Clone, Serialize)]
pub struct Finished {
    #[serde(flatten)]
    pub job: Job,
    pub finished_ms: u64,
    pub ok: bool,
    /// The new backup's label, or what went wrong.
    pub message: String,
}

/// Why a backup cannot start here.
pub enum Refused {
    /// Nothing configured, or this member cannot take it: the CLI says so.
    NotHere(String),
    /// One runs already.
    Busy(Job),
    /// Another member backs up the stanza now (the repository's lock).
    Locked(String),
}

impl Jobs {
    pub fn state(&self) -> JobState {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// `pgbackrest info`, at most one run every `INFO_FRESH` for every caller together
    /// (callers meanwhile wait for the run in flight and share its answer).
    pub async fn info(&self, br: &BackRest) -> Result<RepoInfo> {
        let mut cached = self.1.lock().await;
        if let Some((at, info)) = cached.as_ref() {
            if at.elapsed() < INFO_FRESH {
                return Ok(info.clone());
            }
        }
        let info = br.info().await?;
        *cached = Some((std::time::Instant::now(), info.clone()));
        Ok(info)
    }

    /// Start a backup of this member (in the background); the job as it started.
    pub async fn start(
        &self,
        cfg: &NodeConfig,
        me: Option<&MemberState>,
        view: Option<&ClusterView>,
        kind: BackupType,
    ) -> Result<Job, Refused> {
        let br = BackRest::of(cfg).ok_or_else(|| {
            Refused::NotHere(format!("{} has no [backup] in its config", cfg.name))
        })?;
        if let Some(j) = self.state().running {
            return Err(Refused::Busy(j));
        }
        let me = me.ok_or_else(|| {
            Refused::NotHere("this agent has not looked at its PostgreSQL yet".into())
        })?;
        if !matches!(me.state, MemberStatus::Running | MemberStatus::Streaming) {
            return Err(Refused::NotHere(format!(
                "{} is {}: a backup is taken from a running primary or a streaming standby",
                me.name, me.state
            )));
        }
        let primary = match me.role {
            Role::Primary => None,
            Role::Standby => Some(
                primary_for(cfg, me, view)
                    .await
                    .map_err(|e| Refused::NotHere(format!("{e:#}")))?,
            ),
            Role::Unknown => {
                return Err(Refused::NotHere(format!(
                    "{}'s role is not known yet",
                    me.name
                )))
            }
        };
        // pgBackRest's own backup lock is in each member's lock-path: one in the repository
        // keeps two members from backing up the same stanza at once.
        let repo_lock = repo_backup_lock_bounded(&br).await?;
        let job = Job {
            member: me.name.clone(),
            kind,
            from: if primary.is_some() {
                "standby"
            } else {
                "primary"
            },
            started_ms: now_ms(),
        };
        {
            let Ok(mut s) = self.0.lock() else {
                return Err(Refused::NotHere("the backup state is poisoned".into()));
            };
            if let Some(j) = &s.running {
                return Err(Refused::Busy(j.clone()));
            }
            s.running = Some(job.clone());
        }
        let jobs = self.clone();
        let j = job.clone();
        let through = primary
            .as_ref()
            .and_then(|p| p.via.as_ref())
            .map(|t| format!(", the primary's files through {}:{}", t.host, t.port))
            .unwrap_or_default();
        tokio::spawn(async move {
            info!(
                "{} backup started (from the {}{through})",
                kind.as_str(),
                j.from
            );
            let r = br.backup(kind, primary.as_ref()).await;
            drop(repo_lock);
            // The repository changed: the next GET reads it afresh.
            *jobs.1.lock().await = None;
            let message = match &r {
                Ok(_) => newest_label(&br).await.unwrap_or_else(|| "done".into()),
                Err(e) => format!("{e:#}"),
            };
            match &r {
                Ok(_) => info!("{} backup done: {message}", kind.as_str()),
                Err(_) => warn!("{} backup failed: {message}", kind.as_str()),
            }
            if let Ok(mut s) = jobs.0.lock() {
                s.running = None;
                s.last = Some(Finished {
                    job: j,
                    finished_ms: now_ms(),
                    ok: r.is_ok(),
                    message,
                });
            }
        });
        Ok(job)
    }
}

/// How long taking the repository's lock may take before the backup is refused.
const REPO_LOCK_LIMIT: Duration = Duration::from_secs(10);

/// [`repo_backup_lock`] on a blocking thread, given up after [`REPO_LOCK_LIMIT`]: the
/// repository may be a network mount that hangs, and the agent's loop runs on the same
/// runtime (one worker: a hung open there would stop the lease's renewals).
async fn repo_backup_lock_bounded(
    br: &BackRest,
) -> Result<nix::fcntl::Flock<std::fs::File>, Refused> {
    let owned = br.clone();
    let repo = br.repo.display().to_string();
    let call = tokio::task::spawn_blocking(move || repo_backup_lock(&owned));
    match tokio::time::timeout(REPO_LOCK_LIMIT, call).await {
        Ok(Ok(locked)) => locked,
        Ok(Err(e)) => Err(Refused::NotHere(format!(
            "take the backup lock in {repo}: {e}"
        ))),
        Err(_) => Err(Refused::NotHere(format!(
            "the repository {repo} did not answer within {} s: is its file system mounted and reachable?",
            REPO_LOCK_LIMIT.as_secs()
        ))),
    }
}

/// The repository's backup lock, taken without waiting; held until dropped.
fn repo_backup_lock(br: &BackRest) -> Result<nix::fcntl::Flock<std::fs::File>, Refused> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = br.repo.join(format!(".pgbaton-backup-{}.lock", br.stanza));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Refused::NotHere(format!("open the backup lock {}: {e}", path.display())))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, e)| match e {
            nix::errno::Errno::EWOULDBLOCK => Refused::Locked(format!(
                "another member backs up stanza {} now (it holds {})",
                br.stanza,
                path.display()
            )),
            e => Refused::NotHere(format!("lock {}: {e}", path.display())),
        },
    )
}

async fn newest_label(br: &BackRest) -> Option<String> {
    br.info()
        .await
        .ok()?
        .backups
        .last()
        .map(|b| b.label.clone())
}

/// The primary's files, for a backup from this standby: through the primary's pgBackRest
/// TLS server when it runs one (`[backup.server]`), else on this host.
async fn primary_for(
    cfg: &NodeConfig,
    me: &MemberState,
    view: Option<&ClusterView>,
) -> Result<OtherPg> {
    let view = view.context("no view of the cluster yet")?;
    let leader = view
        .leader
        .as_ref()
        .context("the cluster has no primary now")?;
    let p = view
        .members
        .iter()
        .find(|m| m.name == leader.member)
        .with_context(|| format!("no report from the primary {}", leader.member))?;
    match &p.backup_server {
        Some(s) => primary_via_server(cfg, p, s).await,
        None => primary_here(me, p).await,
    }
}

/// The primary `p` through its pgBackRest TLS server `s`, with this member's certificate.
async fn primary_via_server(
    cfg: &NodeConfig,
    p: &MemberState,
    s: &BackupServerInfo,
) -> Result<OtherPg> {
    let tls = cfg.postgresql.tls.as_ref().with_context(|| {
        format!(
            "{} has no [postgresql.tls]: its certificate is what {}'s pgBackRest TLS server lets in",
            cfg.name, p.name
        )
    })?;
    // pgBackRest tries a server that does not answer for two minutes: say so at once.
    let addr = format!("{}:{}", s.host, s.port);
    match tokio::time::timeout(SERVER_CHECK, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => bail!("{}'s pgBackRest TLS server at {addr}: {e}", p.name),
        Err(_) => bail!(
            "{}'s pgBackRest TLS server at {addr}: no answer within {} s",
            p.name,
            SERVER_CHECK.as_secs()
        ),
    }
    Ok(OtherPg {
        data_dir: s.data_dir.clone().into(),
        port: p.port,
        socket_dir: p.socket_dir.clone().into(),
        user: p.superuser.clone(),
        via: Some(TlsServer {
            host: s.host.clone(),
            port: s.port,
            cert_file: tls.cert_file.clone(),
            key_file: tls.key_file.clone(),
            ca_file: tls.ca_file.clone(),
            config: s.config.clone().map(Into::into),
        }),
    })
}

/// How long the primary's pgBackRest TLS server has to accept a connection.
const SERVER_CHECK: Duration = Duration::from_secs(3);

/// The primary `p`'s files on this host: its socket (from its report) must be here and
/// lead to a primary of the same database.
async fn primary_here(me: &MemberState, p: &MemberState) -> Result<OtherPg> {
    let socket = Path::new(&p.socket_dir);
    let not_here = |why: String| {
        anyhow::anyhow!(
            "the primary {}'s data directory is not at hand on {}'s host ({why}): pgBackRest backs up \
             a standby only with the primary's files on the same host or through the primary's \
             pgBackRest TLS server ([backup.server]). Take the backup on the primary",
            p.name,
            me.name
        )
    };
    if !socket.join(format!(".s.PGSQL.{}", p.port)).exists() {
        return Err(not_here(format!(
            "no socket {}/.s.PGSQL.{}",
            p.socket_dir, p.port
        )));
    }
    let (data_dir, in_recovery, id) = pgbaton_pg::sql::local_instance(socket, p.port, &p.superuser)
        .await
        .map_err(|e| not_here(format!("{e:#}")))?;
    if in_recovery || Some(&id) != me.system_id.as_ref() {
        return Err(not_here(
            "the PostgreSQL at that socket is not this cluster's primary".into(),
        ));
    }
    Ok(OtherPg {
        data_dir,
        port: p.port,
        socket_dir: socket.to_path_buf(),
        user: p.superuser.clone(),
        via: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_repository_lock_is_taken_off_the_worker_and_held_until_dropped() {
        let d = tempfile::tempdir().unwrap();
        let br = BackRest {
            bin: "pgbackrest".into(),
            conf: d.path().join("pgbackrest.conf"),
            stanza: "main".into(),
            repo: d.path().to_path_buf(),
            timeout: Duration::from_secs(60),
        };
        let Ok(held) = repo_backup_lock_bounded(&br).await else {
            panic!("the first lock is taken");
        };
        match repo_backup_lock_bounded(&br).await {
            Err(Refused::Locked(why)) => assert!(why.contains("stanza main"), "{why}"),
            Err(Refused::NotHere(why)) => panic!("refused for another reason: {why}"),
            _ => panic!("a second backup must be refused while the lock is held"),
        }
        drop(held);
        assert!(
            repo_backup_lock_bounded(&br).await.is_ok(),
            "taken again once dropped"
        );
    }
}
