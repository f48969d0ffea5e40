//! Who the agent runs as. PostgreSQL refuses to run as root, so an agent started as root
//! prepares the directories PostgreSQL needs, checks that the unprivileged OS user can
//! reach them, and then becomes that user for good (before any thread is started).

use anyhow::{bail, Context, Result};
use nix::unistd::{Gid, Uid, User};
use pgbaton_core::config::NodeConfig;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The OS identity the agent ended up with.
#[derive(Clone, Debug)]
pub struct Identity {
    pub user: String,
    pub uid: u32,
    /// Set when the agent was started as root and dropped to `user`.
    pub dropped_from_root: bool,
}

/// Look up the OS user PostgreSQL will run as: the configured one, or `postgres` when
/// running as root, or the current user otherwise.
pub fn resolve_user(configured: Option<&str>) -> Result<User> {
    let euid = Uid::effective();
    if euid.is_root() {
        let name = configured.unwrap_or("postgres");
        let user = User::from_name(name)
            .with_context(|| format!("look up OS user {name}"))?
            .with_context(|| {
                format!(
                    "OS user {name} does not exist. PostgreSQL cannot run as root: create the user \
                     (Debian's postgresql package creates `postgres`) or set os_user in the node config"
                )
            })?;
        if user.uid.is_root() {
            bail!("os_user = {name:?} is root, and PostgreSQL refuses to run as root: choose an unprivileged user");
        }
        Ok(user)
    } else {
        let me =
            User::from_uid(euid)?.with_context(|| format!("no passwd entry for uid {euid}"))?;
        if let Some(name) = configured {
            if name != me.name {
                bail!(
                    "os_user = {name:?}, but pgbaton runs as {}: start it as root (it then runs \
                     PostgreSQL as {name}) or set os_user = {:?}",
                    me.name,
                    me.name
                );
            }
        }
        Ok(me)
    }
}

/// Can `uid` (in groups `gids`) traverse (search) directory `dir`, by its mode bits?
fn can_search(meta: &std::fs::Metadata, uid: u32, gids: &[u32]) -> bool {
    let mode = meta.permissions().mode();
    if uid == 0 {
        return true;
    }
    if meta.uid() == uid {
        mode & 0o100 != 0
    } else if gids.contains(&meta.gid()) {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// The first existing directory on the way to `path` that `user` cannot enter.
pub fn blocked_for(user: &User, path: &Path) -> Option<PathBuf> {
    let gids = user_gids(user);
    let mut p = PathBuf::new();
    for comp in path.components() {
        p.push(comp);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => {
                if !can_search(&m, user.uid.as_raw(), &gids) {
                    return Some(p);
                }
            }
            _ => return None,
        }
    }
    None
}

fn user_gids(user: &User) -> Vec<u32> {
    let mut gids = vec![user.gid.as_raw()];
    if let Ok(name) = std::ffi::CString::new(user.name.clone()) {
        if let Ok(groups) = nix::unistd::getgrouplist(&name, user.gid) {
            gids.extend(groups.iter().map(|g| g.as_raw()));
        }
    }
    gids
}

/// Fail with a clear error when `user` cannot reach `path`.
pub fn check_reachable(user: &User, what: &str, path: &Path) -> Result<()> {
    if let Some(b) = blocked_for(user, path) {
        bail!(
            "OS user {} cannot reach the {what} {}: it may not enter {}. Put it somewhere {} can \
             enter (for example under /var/lib/pgbaton or /srv), or open up {}",
            user.name,
            path.display(),
            b.display(),
            user.name,
            b.display()
        );
    }
    Ok(())
}

/// Create `dir` (0700) and its missing parents, owned by `user`.
pub fn create_owned_dir(user: &User, dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut p = dir.to_path_buf();
    while !p.exists() {
        missing.push(p.clone());
        if !p.pop() {
            break;
        }
    }
    for d in missing.iter().rev() {
        std::fs::create_dir(d).with_context(|| format!("create directory {}", d.display()))?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
        nix::unistd::chown(d, Some(user.uid), Some(user.gid))
            .with_context(|| format!("chown {}", d.display()))?;
    }
    Ok(())
}

/// Run `f` with the effective identity of `user` (groups, gid, uid), then return to root.
/// Used as root for checks that must see the file system as the OS user sees it.
pub fn as_user<T>(user: &User, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !Uid::effective().is_root() {
        return f();
    }
    let saved_groups = nix::unistd::getgroups().context("getgroups")?;
    let gids: Vec<Gid> = user_gids(user).into_iter().map(Gid::from_raw).collect();
    nix::unistd::setgroups(&gids).context("setgroups")?;
    // Real and effective ids both become the user's; only the saved ones stay root, so that
    // root can be taken back below. A program started meanwhile (pg_config, postgres
    // --version, pg_controldata) gets the user's ids as real, effective and saved ones (exec
    // copies the effective id into the saved one): with only the effective id changed it
    // started with a real uid of root and could have taken root back (audit finding).
    let (root_u, root_g) = (Uid::from_raw(0), Gid::from_raw(0));
    nix::unistd::setresgid(user.gid, user.gid, root_g).context("setresgid")?;
    nix::unistd::setresuid(user.uid, user.uid, root_u).context("setresuid")?;
    let result = f();
    nix::unistd::setresuid(root_u, root_u, root_u).context("setresuid back to root")?;
    nix::unistd::setresgid(root_g, root_g, root_g).context("setresgid back to root")?;
    nix::unistd::setgroups(&saved_groups).context("restore groups")?;
    result
}

/// Prepare the process for this node. `preflight` runs first, with the OS user's identity,
/// and must check everything that can be wrong (so a refused start creates nothing). Then,
/// as root, the node's directories are created owned by the OS user and privileges are
/// dropped for good. Must run before any thread is started.
pub fn become_os_user<T>(
    cfg: &NodeConfig,
    preflight: impl FnOnce(&Identity) -> Result<T>,
) -> Result<(Identity, T)> {
    let user = resolve_user(cfg.os_user.as_deref())?;
    let paths = [
        ("data directory", cfg.data_dir.clone()),
        ("socket directory", cfg.socket_dir()),
        ("passfile", cfg.pgpass_path()),
        ("PostgreSQL log file", cfg.log_file()),
    ];
    for (what, p) in &paths {
        check_reachable(&user, what, p)?;
    }
    if let pgbaton_core::config::StoreConfig::Local { path } = &cfg.store {
        check_reachable(&user, "store file", path)?;
    }
    let root = Uid::effective().is_root();
    let ident = Identity {
        user: user.name.clone(),
        uid: user.uid.as_raw(),
        dropped_from_root: root,
    };
    let checked = as_user(&user, || preflight(&ident))?;
    if !root {
        return Ok((ident, checked));
    }
    for dir in [cfg.data_dir.clone(), cfg.socket_dir()] {
        create_owned_dir(&user, &dir)?;
    }
    for f in [cfg.log_file(), cfg.pgpass_path()] {
        if let Some(parent) = f.parent() {
            create_owned_dir(&user, parent)?;
        }
    }
    let name = std::ffi::CString::new(user.name.clone())?;
    nix::unistd::initgroups(&name, user.gid).context("set the OS user's groups")?;
    nix::unistd::setgid(user.gid).context("setgid")?;
    nix::unistd::setuid(user.uid).context("setuid")?;
    if Uid::effective().is_root() || nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        bail!("could not drop root privileges");
    }
    // The directory we were started in (say, /root/...) may be closed to the OS user.
    std::env::set_current_dir(cfg.base_dir())
        .with_context(|| format!("enter {}", cfg.base_dir().display()))?;
    std::env::set_var("HOME", &user.dir);
    std::env::set_var("USER", &user.name);
    std::env::set_var("LOGNAME", &user.name);
    Ok((ident, checked))
}
