//! Before the agent runs: every check that can fail for outside reasons (binaries, store,
//! data directory, ports, credentials, the archive), done as the OS user, creating nothing.

use super::*;

/// Where the password lives when the config names no source: generated (0600) on first use.
pub fn default_password_file(cfg: &NodeConfig) -> std::path::PathBuf {
    cfg.base_dir().join("replication.password")
}

/// Read the replication password from where the config says; when it says nothing, from
/// the default file if it exists. `None`: it is to be generated (creating nothing here).
/// The shortest API token or password accepted.
pub const MIN_SECRET_CHARS: usize = 16;

/// The replication password. From `password_env`, the variable is then removed from this
/// process's environment, so PostgreSQL, its archive command and every other child never
/// inherit it (audit finding). Called before any thread exists (see `become_os_user`).
pub fn load_password(cfg: &NodeConfig) -> Result<Option<String>> {
    let pw = read_configured_password(cfg)?;
    if let Some(var) = &cfg.replication.password_env {
        std::env::remove_var(var);
    }
    Ok(pw)
}

fn read_configured_password(cfg: &NodeConfig) -> Result<Option<String>> {
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

/// What the preflight found, for the agent to use.
pub struct Checked {
    pub bins: Binaries,
    pub major: u32,
    /// `None`: none configured and none generated yet.
    pub password: Option<String>,
    pub store: Arc<dyn Store>,
    /// The bound on each of `store`'s calls, in ms ([`store_timeout`] of the loop interval
    /// the agent runs with: the agent changes it with its timing).
    pub store_limit_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Credentials the API asks of mutating requests.
    pub auth: api::Auth,
}

/// Read the API credentials the config names (as the OS user: the files are 0600).
pub fn load_api_auth(cfg: &NodeConfig) -> Result<api::Auth> {
    let read = |p: &std::path::Path, key: &str| -> Result<String> {
        let s = files::read_secret_file(p, key)?;
        let s = s.trim_end_matches(['\n', '\r']).to_string();
        // A short token or password can be guessed over the network (audit finding).
        if s.chars().count() < MIN_SECRET_CHARS {
            bail!(
                "{} ({key}) holds {} characters: use at least {MIN_SECRET_CHARS} (for example \
                 `head -c 24 /dev/urandom | base64 > {}`)",
                p.display(),
                s.chars().count(),
                p.display()
            );
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
    crate::tls_watch::check_tls_files(cfg)?;
    let store = pgbaton_store::open_watching(&cfg.store, &cfg.cluster)
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
    // Every call the agent (and its API) makes from now on is bounded by construction, by
    // the loop interval it runs with (`timing::apply_timing` changes the bound with it).
    let limit = store_timeout(cfg.timing.loop_interval_ms).as_millis() as u64;
    let store_limit_ms = Arc::new(std::sync::atomic::AtomicU64::new(limit));
    let store = pgbaton_store::Bounded::wrap_live(store, store_limit_ms.clone());
    let data = datadir::inspect(&bins, &cfg.data_dir)?;
    let local = LocalView::new(&cfg.name, data, PgRun::Stopped);
    let view = ClusterView {
        initialize: initialize
            .as_deref()
            .map(pgbaton_core::model::Identity::parse),
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
    let known_id = match (&view.initialize, &local.data) {
        (Some(pgbaton_core::model::Identity::SystemId(id)), _) => Some(id.clone()),
        (_, DataDir::Initialized { system_id, .. }) => Some(system_id.clone()),
        _ => None,
    };
    rt.block_on(crate::backup::preflight(cfg, known_id.as_deref()))?;
    let auth = load_api_auth(cfg)?;
    Ok(Checked {
        bins,
        major,
        password,
        store,
        store_limit_ms,
        auth,
    })
}

/// How long the agent waits for the store at start.
pub(crate) const PREFLIGHT_STORE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a store call may take before the store counts as unreachable.
pub fn store_timeout(loop_interval_ms: u64) -> Duration {
    Duration::from_millis(loop_interval_ms.clamp(500, 2000))
}

/// `data_dir` through symlinks: `reinit` replaces the directory (it works next to it), and
/// through a symlink it replaced the link, not the data (audit finding). The real path is
/// used from here on; when neither it nor its parent exists yet, it stays as configured.
pub fn resolve_data_dir(cfg: &mut NodeConfig) -> Result<()> {
    let d = &cfg.data_dir;
    let real = match std::fs::canonicalize(d) {
        Ok(r) => r,
        Err(_) => match (d.parent().map(std::fs::canonicalize), d.file_name()) {
            (Some(Ok(parent)), Some(name)) => parent.join(name),
            _ => return Ok(()),
        },
    };
    if real != *d {
        eprintln!(
            "data_dir {} is {} (through a symbolic link): using the real path",
            d.display(),
            real.display()
        );
        // The files placed beside data_dir by default stay where the config says they are
        // (the CLI finds the socket from the same config).
        let base = cfg.base_dir();
        let pg = &mut cfg.postgresql;
        pg.socket_dir.get_or_insert_with(|| base.join("run"));
        pg.pgpass.get_or_insert_with(|| base.join("pgpass"));
        pg.log_file.get_or_insert_with(|| base.join("postgres.log"));
        cfg.data_dir = real;
        cfg.validate().context("data_dir's real path")?;
    }
    Ok(())
}

/// PostgreSQL archives and restores WAL by running pgbaton (`wal-push`, `wal-fetch`): this
/// very executable unless `postgresql.pgbaton_bin` says otherwise.
pub fn resolve_pgbaton_bin(cfg: &mut NodeConfig) -> Result<()> {
    let archives = cfg.postgresql.archive_dir.is_some() || cfg.backup.is_some();
    if archives && cfg.postgresql.pgbaton_bin.is_none() {
        let exe = std::env::current_exe().context("find pgbaton's own executable")?;
        cfg.postgresql.pgbaton_bin = Some(exe);
    }
    Ok(())
}

/// The name of the OS user this process runs as (the preflight runs as the OS user).
pub(crate) fn os_user_name() -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "(this user)".into())
}

/// `bin` is an executable file this OS user can run; else an error naming the key.
pub(crate) fn check_runnable(bin: &std::path::Path, key: &str, what: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = std::fs::metadata(bin)
        .map_err(|e| e.to_string())
        .and_then(|m| {
            (m.is_file() && m.permissions().mode() & 0o111 != 0)
                .then_some(())
                .ok_or_else(|| "not an executable file".to_string())
        });
    if let Err(why) = runnable {
        bail!(
            "PostgreSQL archives WAL by running {} ({what}) as OS user {}, who cannot run it ({why}): \
             install it where that user can or set {key}",
            bin.display(),
            os_user_name()
        );
    }
    Ok(())
}

/// With an archive: the OS user (whose identity the preflight runs under) can run the
/// pgbaton executable and write into the archive directory. Creates nothing.
pub(crate) fn check_archive(cfg: &NodeConfig) -> Result<()> {
    if cfg.postgresql.archive_dir.is_none() && cfg.backup.is_none() {
        return Ok(());
    }
    let bin = cfg
        .postgresql
        .pgbaton_bin
        .as_deref()
        .context("postgresql.pgbaton_bin is not resolved")?;
    check_runnable(bin, "postgresql.pgbaton_bin", "pgbaton")?;
    let Some(dir) = &cfg.postgresql.archive_dir else {
        return Ok(());
    };
    let user = os_user_name();
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

#[cfg(test)]
mod tests {
    use super::*;

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
