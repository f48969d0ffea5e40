//! Files pgbaton writes: its config include, pg_hba, pg_ident, signal files, the passfile,
//! secrets. Secret files are written 0600 and directories pgbaton creates 0700.

use anyhow::{bail, Context, Result};
use pgbaton_core::config::NodeConfig;
use pgbaton_core::render::{self, Upstream};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Write `contents` to `path` atomically (temp file + rename) with `mode`, only if it differs.
/// Returns whether the file changed.
pub fn write_if_changed(path: &Path, contents: &str, mode: u32) -> Result<bool> {
    if let Ok(old) = std::fs::read_to_string(path) {
        if old == contents {
            let perm = std::fs::metadata(path)?.permissions();
            if perm.mode() & 0o777 != mode {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .with_context(|| format!("chmod {}", path.display()))?;
            }
            return Ok(false);
        }
    }
    let tmp = path.with_extension("pgbaton-tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("write {}", tmp.display()))?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    Ok(true)
}

/// Create a directory (and parents) if missing, and set `mode` on it.
pub fn ensure_dir(path: &Path, mode: u32) -> Result<()> {
    std::fs::create_dir_all(path)
        .with_context(|| format!("create directory {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {:o} {}", mode, path.display()))
}

/// Write pgbaton.conf, pg_hba.conf and pg_ident.conf into the data directory, make sure
/// postgresql.conf includes pgbaton.conf, and set standby.signal for a standby.
/// Returns whether anything changed.
pub fn write_pg_config(
    cfg: &NodeConfig,
    os_user: &str,
    standby: bool,
    upstream: Option<&Upstream>,
) -> Result<bool> {
    let dir = &cfg.data_dir;
    let mut changed = false;
    changed |= write_if_changed(
        &dir.join(render::INCLUDE_FILE),
        &render::pgbaton_conf(cfg, upstream),
        0o600,
    )?;
    changed |= write_if_changed(&dir.join("pg_hba.conf"), &render::pg_hba(cfg), 0o600)?;
    changed |= write_if_changed(
        &dir.join("pg_ident.conf"),
        &render::pg_ident(os_user, &cfg.postgresql.superuser),
        0o600,
    )?;
    let conf_path = dir.join("postgresql.conf");
    let conf = std::fs::read_to_string(&conf_path)
        .with_context(|| format!("read {}", conf_path.display()))?;
    if !conf.lines().any(|l| l.trim() == render::INCLUDE_LINE) {
        let mut new = conf.clone();
        if !new.ends_with('\n') {
            new.push('\n');
        }
        new.push_str(render::INCLUDE_LINE);
        new.push('\n');
        changed |= write_if_changed(&conf_path, &new, 0o600)?;
    }
    let signal = dir.join("standby.signal");
    if standby && !signal.exists() {
        write_if_changed(&signal, "", 0o600)?;
        changed = true;
    } else if !standby && signal.exists() {
        std::fs::remove_file(&signal).with_context(|| format!("remove {}", signal.display()))?;
        changed = true;
    }
    Ok(changed)
}

/// Where the replication password comes from, resolved.
pub enum PasswordSource<'a> {
    File(&'a Path),
    Env(&'a str),
}

// Secret files are read by the store crate's reader (the etcd password and key need it
// too): one check for every secret.
pub use pgbaton_store::secret::read_secret_file;

/// Read the replication password. A file must be its reader's own, 0600 or stricter,
/// readable and non-empty; trailing newlines are stripped. Errors name the file or
/// variable, never the password.
pub fn read_password(src: PasswordSource<'_>) -> Result<String> {
    let (pw, what) = match src {
        PasswordSource::File(p) => {
            let s = read_secret_file(p, "replication.password_file").with_context(|| {
                format!(
                    "the replication password file {} (replication.password_file)",
                    p.display()
                )
            })?;
            (s, format!("password file {}", p.display()))
        }
        PasswordSource::Env(var) => match std::env::var(var) {
            Ok(s) => (s, format!("environment variable {var}")),
            Err(_) => bail!("environment variable {var} (replication.password_env) is not set"),
        },
    };
    let pw = pw.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        bail!("the replication password from {what} is empty");
    }
    if pw.contains('\n') {
        bail!("the replication password from {what} spans several lines");
    }
    Ok(pw)
}

/// A random password of 32 alphanumeric characters from the kernel's generator.
pub fn generate_password() -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut out = String::with_capacity(32);
    let mut f = std::fs::File::open("/dev/urandom").context("open /dev/urandom")?;
    let mut buf = [0u8; 64];
    while out.len() < 32 {
        std::io::Read::read_exact(&mut f, &mut buf)?;
        for b in buf {
            // rejection sampling keeps the distribution uniform
            let limit = 256 - (256 % ALPHABET.len());
            if (b as usize) < limit && out.len() < 32 {
                out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

/// Read the password file, or create it (0600) with a generated password when missing.
pub fn read_or_generate_password_file(path: &Path) -> Result<String> {
    if path.exists() {
        return read_password(PasswordSource::File(path));
    }
    let pw = generate_password()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create password file {}", path.display()))?;
    f.write_all(pw.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(pw)
}

/// The first ancestor of `path` (or `path` itself) that the current process cannot enter,
/// with the reason. `None` = every component can be traversed.
pub fn unreachable_component(path: &Path) -> Option<(std::path::PathBuf, String)> {
    use nix::unistd::{access, AccessFlags};
    let mut p = std::path::PathBuf::new();
    for comp in path.components() {
        p.push(comp);
        if !p.exists() {
            // Missing components are created later; their parent was checked already.
            return None;
        }
        if p.is_dir() {
            if let Err(e) = access(&p, AccessFlags::X_OK) {
                return Some((p, e.desc().to_string()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_are_long_and_distinct() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn password_file_is_created_0600_and_read_back() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("pw");
        let pw = read_or_generate_password_file(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_or_generate_password_file(&p).unwrap(), pw);
    }

    #[test]
    fn bad_password_sources_are_clear_errors() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("nope");
        let e = format!("{:#}", read_password(PasswordSource::File(&p)).unwrap_err());
        assert!(
            e.contains("nope") && e.contains("replication.password_file"),
            "{e}"
        );
        std::fs::write(&p, "s3cret-password\n").unwrap();
        // Readable by others: refused before it is read, saying how to fix it.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = format!("{:#}", read_password(PasswordSource::File(&p)).unwrap_err());
        assert!(e.contains("0644") && e.contains("chmod 600"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_password(PasswordSource::File(&p)).unwrap(),
            "s3cret-password"
        );
        std::fs::write(&p, "\n").unwrap();
        assert!(
            format!("{:#}", read_password(PasswordSource::File(&p)).unwrap_err()).contains("empty")
        );
        let e = format!(
            "{:#}",
            read_password(PasswordSource::Env("PGBATON_TEST_UNSET_VAR_X")).unwrap_err()
        );
        assert!(e.contains("PGBATON_TEST_UNSET_VAR_X"));
    }

    #[test]
    fn write_if_changed_reports_changes_and_sets_mode() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        assert!(write_if_changed(&p, "a", 0o600).unwrap());
        assert!(!write_if_changed(&p, "a", 0o600).unwrap());
        assert!(write_if_changed(&p, "b", 0o600).unwrap());
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
