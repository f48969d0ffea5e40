//! Finding the PostgreSQL binaries.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Programs pgbaton runs; all must be in the bin directory.
pub const REQUIRED: &[&str] = &[
    "postgres",
    "initdb",
    "pg_ctl",
    "pg_basebackup",
    "pg_controldata",
    "psql",
];

/// The directory holding a PostgreSQL installation's programs.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    /// Use `configured` when given; else `pg_config --bindir`; else the newest
    /// `/usr/lib/postgresql/*/bin`. An error says what was tried and what to install.
    pub fn find(configured: Option<&Path>) -> Result<Binaries> {
        if let Some(dir) = configured {
            return Self::check(dir).with_context(|| {
                format!(
                    "postgresql.bin_dir = {:?} does not hold a usable PostgreSQL installation",
                    dir
                )
            });
        }
        let mut tried = Vec::new();
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            if out.status.success() {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                match Self::check(&dir) {
                    Ok(b) => return Ok(b),
                    Err(e) => tried.push(format!("pg_config --bindir: {e:#}")),
                }
            }
        } else {
            tried.push("pg_config: not on PATH".to_string());
        }
        if let Some(dir) = newest_debian_bindir(Path::new("/usr/lib/postgresql")) {
            match Self::check(&dir) {
                Ok(b) => return Ok(b),
                Err(e) => tried.push(format!("{}: {e:#}", dir.display())),
            }
        } else {
            tried.push("/usr/lib/postgresql/*/bin: none".to_string());
        }
        bail!(
            "no PostgreSQL binaries found ({}). Install them (Debian/Ubuntu: apt-get install postgresql-15) \
             or set postgresql.bin_dir in the node config",
            tried.join("; ")
        )
    }

    fn check(dir: &Path) -> Result<Binaries> {
        let missing: Vec<&str> = REQUIRED
            .iter()
            .copied()
            .filter(|p| !dir.join(p).is_file())
            .collect();
        if !missing.is_empty() {
            bail!("missing {} in {}", missing.join(", "), dir.display());
        }
        Ok(Binaries {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self, program: &str) -> PathBuf {
        self.dir.join(program)
    }

    /// The major version (`15`) from `postgres --version`.
    pub fn major_version(&self) -> Result<u32> {
        let out = Command::new(self.path("postgres"))
            .arg("--version")
            .output()
            .with_context(|| format!("run {} --version", self.path("postgres").display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_major(&text)
            .with_context(|| format!("unrecognised postgres --version output: {text:?}"))
    }
}

fn parse_major(version_output: &str) -> Option<u32> {
    // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    let v = version_output.split_whitespace().nth(2)?;
    v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The newest `<root>/<major>/bin` that exists.
fn newest_debian_bindir(root: &Path) -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.is_dir().then_some((major, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_major() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 16beta1"), Some(16));
        assert_eq!(parse_major("garbage"), None);
    }

    #[test]
    fn picks_newest_bindir() {
        let t = tempfile::tempdir().unwrap();
        for v in ["9", "13", "15", "notaversion"] {
            std::fs::create_dir_all(t.path().join(v).join("bin")).unwrap();
        }
        std::fs::create_dir_all(t.path().join("17")).unwrap(); // no bin: skipped
        assert_eq!(
            newest_debian_bindir(t.path()),
            Some(t.path().join("15").join("bin"))
        );
    }

    #[test]
    fn configured_dir_without_binaries_is_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        let e = Binaries::find(Some(t.path())).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("postgresql.bin_dir") && msg.contains("missing postgres"),
            "{msg}"
        );
    }
}
