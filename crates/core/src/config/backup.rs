//! The `[backup]` table: pgBackRest as the backup engine and the WAL archive.

use super::*;

/// The `[backup]` table. With it, every member archives WAL into a pgBackRest repository
/// (`archive-push`, `archive_mode = always`) and restores from it (`archive-get`); the
/// stanza is created at bootstrap; `pgbaton backup` and the schedule take backups, from a
/// standby when one streams and the primary's files are at hand (same host, or the
/// primary's pgBackRest TLS server, `[backup.server]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// The backup engine. Only `pgbackrest` (Debian's `pgbackrest` package).
    pub engine: BackupEngine,
    /// The repository (pgBackRest's `repo1-path`). Every member of the cluster writes into
    /// it: on several hosts it is a shared file system (NFS).
    pub repo_path: PathBuf,
    /// The stanza. Default: the cluster's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stanza: Option<String>,
    /// The pgBackRest executable. Default `/usr/bin/pgbackrest`.
    #[serde(default = "default_pgbackrest_bin")]
    pub bin: PathBuf,
    /// Full backups kept (`repo1-retention-full`); older ones, and the WAL only they need,
    /// are expired after each backup. Default 2.
    #[serde(default = "two")]
    pub retention_full: u32,
    /// A full backup is taken when the last one is this many hours old (0: never on its
    /// own). Default 0.
    #[serde(default)]
    pub full_every_hours: u32,
    /// An incremental backup is taken when the last backup of any type is this many hours
    /// old (0: never on its own). Default 0.
    #[serde(default)]
    pub incr_every_hours: u32,
    /// New members and `reinit` restore the latest backup (delta restore) and catch up from
    /// the archive and then by streaming, instead of copying the primary with
    /// pg_basebackup (still the fallback when the repository has no backup or the restore
    /// fails). Default true.
    #[serde(default = "yes")]
    pub restore_replicas: bool,
    /// How long one backup or restore may run before it is stopped, in hours. Default 6.
    #[serde(default = "six")]
    pub timeout_hours: u32,
    /// `[backup.server]`: this member runs pgBackRest's TLS server, through which a standby
    /// on another host backs up while this member is the primary. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<BackupServerConfig>,
}

/// `[backup.server]`: pgBackRest's TLS server (`pgbackrest server`), run by the agent with
/// the member's `[postgresql.tls]` certificate; it lets in the cluster's members only (the
/// CA's certificates whose common name is a member's name), for this stanza only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupServerConfig {
    /// TCP port. Default 8432 (pgBackRest's).
    #[serde(default = "default_server_port")]
    pub port: u16,
    /// The name other members reach it by. pgBackRest (2.45) checks the server's
    /// certificate against DNS names only, never IP addresses: a DNS name that this
    /// member's certificate lists. Default `postgresql.connect_host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The address it listens on. Default `postgresql.listen_host` (`0.0.0.0` for `*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

fn default_server_port() -> u16 {
    8432
}

fn six() -> u32 {
    6
}

fn default_pgbackrest_bin() -> PathBuf {
    PathBuf::from("/usr/bin/pgbackrest")
}

fn two() -> u32 {
    2
}

fn yes() -> bool {
    true
}

/// The backup engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackupEngine {
    #[serde(rename = "pgbackrest")]
    PgBackRest,
}

impl BackupConfig {
    /// The longest a backup or a restore may run.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.timeout_hours) * 3600)
    }

    /// The stanza: `backup.stanza`, default the cluster name.
    pub fn stanza_or<'a>(&'a self, cluster: &'a str) -> &'a str {
        self.stanza.as_deref().unwrap_or(cluster)
    }

    pub(super) fn validate(
        &self,
        pg: &PostgresqlConfig,
        data_dir: &Path,
    ) -> Result<(), ConfigError> {
        // The member's pgbackrest.conf lies beside the data directory and is named in the
        // archive and restore commands.
        check_command_path("data_dir", data_dir)?;
        if pg.archive_dir.is_some() {
            return Err(ConfigError::new(
                "postgresql.archive_dir",
                lit(&pg
                    .archive_dir
                    .as_deref()
                    .unwrap_or(Path::new(""))
                    .to_string_lossy()),
                "not set together with [backup]: pgBackRest archives WAL into its repository \
                 (backup.repo_path); remove one of them",
            ));
        }
        check_command_path("backup.repo_path", &self.repo_path)?;
        check_command_path("backup.bin", &self.bin)?;
        if let Some(s) = &self.stanza {
            check_name("backup.stanza", s)?;
        }
        if self.retention_full == 0 || self.retention_full > 9_999_999 {
            return Err(ConfigError::new(
                "backup.retention_full",
                self.retention_full.to_string(),
                "from 1 to 9999999 full backups",
            ));
        }
        for (key, h) in [
            ("backup.full_every_hours", self.full_every_hours),
            ("backup.incr_every_hours", self.incr_every_hours),
        ] {
            if h > 24 * 366 {
                return Err(ConfigError::new(
                    key,
                    h.to_string(),
                    "hours from 0 (off) to 8784 (a year)",
                ));
            }
        }
        if self.timeout_hours == 0 || self.timeout_hours > 24 * 7 {
            return Err(ConfigError::new(
                "backup.timeout_hours",
                self.timeout_hours.to_string(),
                "hours from 1 to 168 (a week)",
            ));
        }
        if let Some(s) = &self.server {
            s.validate(pg)?;
        }
        Ok(())
    }
}

impl BackupServerConfig {
    /// The name the other members reach the server by.
    pub fn host_or(&self, pg: &PostgresqlConfig) -> String {
        self.host.clone().unwrap_or_else(|| {
            pg.connect_host
                .clone()
                .unwrap_or_else(|| pg.listen_host.clone())
        })
    }

    /// The address the server listens on.
    pub fn listen_or(&self, pg: &PostgresqlConfig) -> String {
        match &self.listen {
            Some(l) => l.clone(),
            None if pg.listen_host.trim() == "*" => "0.0.0.0".into(),
            None => pg.listen_host.trim().to_string(),
        }
    }

    fn validate(&self, pg: &PostgresqlConfig) -> Result<(), ConfigError> {
        if pg.tls.is_none() {
            return Err(ConfigError::new(
                "backup.server",
                "(set)",
                "needs [postgresql.tls]: the server and the members that connect to it \
                 authenticate with the member's certificate",
            ));
        }
        if self.port == 0 || self.port == pg.port {
            return Err(ConfigError::new(
                "backup.server.port",
                self.port.to_string(),
                "a TCP port from 1 to 65535 other than postgresql.port",
            ));
        }
        let host = self.host_or(pg);
        let key = if self.host.is_some() {
            "backup.server.host"
        } else {
            "backup.server.host (not set: postgresql.connect_host or listen_host)"
        };
        let dns = |h: &str| {
            !h.is_empty()
                && h.len() <= 253
                && h.parse::<std::net::IpAddr>().is_err()
                && h.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        };
        if !dns(&host) {
            return Err(ConfigError::new(
                key,
                lit(&host),
                "a DNS name that this member's certificate lists: pgBackRest checks its TLS \
                 server's certificate against DNS names only, never IP addresses",
            ));
        }
        let listen = self.listen_or(pg);
        if listen.is_empty() || listen.contains([',', ' ', '=', '\'']) {
            return Err(ConfigError::new(
                "backup.server.listen",
                lit(&listen),
                "one address to listen on (postgresql.listen_host is a list: name one here)",
            ));
        }
        Ok(())
    }
}

/// The `[bootstrap]` table: how the cluster's first member makes its data directory.
/// Read only when the cluster is made; ignored once it exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapConfig {
    /// `pgbackrest`: restore another cluster's backup (point-in-time recovery) instead of
    /// initdb. That cluster's repository is only read.
    pub method: BootstrapMethod,
    /// The repository to restore from (`repo1-path`).
    pub repo_path: PathBuf,
    /// Its stanza.
    pub stanza: String,
    /// Recover up to just before this time (`2026-12-03 10:00:00+00`) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_time: Option<String>,
    /// ... or up to just before this LSN (`0/3000060`). One of the two is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_lsn: Option<String>,
    /// The pgBackRest executable. Default `/usr/bin/pgbackrest`.
    #[serde(default = "default_pgbackrest_bin")]
    pub bin: PathBuf,
}

/// How the first member makes its data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BootstrapMethod {
    #[serde(rename = "pgbackrest")]
    PgBackRest,
}

impl BootstrapConfig {
    pub(super) fn validate(
        &self,
        backup: Option<&BackupConfig>,
        cluster: &str,
    ) -> Result<(), ConfigError> {
        check_command_path("bootstrap.repo_path", &self.repo_path)?;
        check_command_path("bootstrap.bin", &self.bin)?;
        check_name("bootstrap.stanza", &self.stanza)?;
        if let Some(b) = backup {
            // The new cluster would archive its new timeline into the cluster it came from.
            if b.repo_path == self.repo_path && b.stanza_or(cluster) == self.stanza {
                return Err(ConfigError::new(
                    "backup.stanza",
                    lit(&self.stanza),
                    "another stanza (or repository) than bootstrap's: the restored cluster must not \
                     archive into the one it was restored from",
                ));
            }
        }
        match (&self.target_time, &self.target_lsn) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                "bootstrap.target_lsn",
                lit(self.target_lsn.as_deref().unwrap_or("")),
                "either target_time or target_lsn, not both",
            )),
            (Some(t), None) if !is_timestamp(t) => Err(ConfigError::new(
                "bootstrap.target_time",
                lit(t),
                "a time as PostgreSQL reads it: YYYY-MM-DD HH:MM:SS, optionally with fractions and a \
                 zone (+00, +01:00, UTC)",
            )),
            (None, Some(l)) if !is_lsn(l) => Err(ConfigError::new(
                "bootstrap.target_lsn",
                lit(l),
                "an LSN: two hexadecimal numbers joined by / (0/3000060)",
            )),
            (None, None) => Err(ConfigError::new(
                "bootstrap.target_time",
                "(not set)",
                "target_time or target_lsn: where the point-in-time recovery stops",
            )),
            _ => Ok(()),
        }
    }
}

/// An absolute path that goes into pgbackrest.conf (`key=value` lines) and PostgreSQL's
/// archive and restore commands (a shell line, single-quoted).
fn check_command_path(key: &str, path: &Path) -> Result<(), ConfigError> {
    check_abs_path(key, path)?;
    let p = path.to_str().unwrap_or("\0");
    if p.chars()
        .any(|c| c.is_control() || c == '\'' || c == '%' || c == '=')
    {
        return Err(ConfigError::new(
            key,
            lit(p),
            "a UTF-8 path without quotes, `%`, `=` or control characters",
        ));
    }
    Ok(())
}

/// `X/Y`, both hexadecimal.
pub fn is_lsn(s: &str) -> bool {
    let hex = |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
    s.split_once('/').is_some_and(|(a, b)| hex(a) && hex(b))
}

/// `YYYY-MM-DD HH:MM:SS` with optional fractions and zone: the forms PostgreSQL reads
/// for `recovery_target_time` that a script would write. Checked here so that a typo is
/// refused before anything is restored.
pub fn is_timestamp(s: &str) -> bool {
    if !s.is_ascii() {
        return false;
    }
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    let fixed = b.len() >= 19
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && (b[10] == b' ' || b[10] == b'T')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    let rest = &s[19.min(s.len())..];
    let rest = rest
        .strip_prefix('.')
        .map(|r| r.trim_start_matches(|c: char| c.is_ascii_digit()))
        .unwrap_or(rest)
        .trim();
    let zone_ok = rest.is_empty()
        || rest == "UTC"
        || rest == "Z"
        || ((rest.starts_with('+') || rest.starts_with('-'))
            && rest[1..].chars().all(|c| c.is_ascii_digit() || c == ':')
            && rest.len() <= 6);
    fixed && zone_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Result<NodeConfig, ConfigError> {
        let text = format!(
            "cluster = \"c1\"\nname = \"n1\"\ndata_dir = \"/srv/n1/data\"\n[store]\nkind = \"local\"\npath = \"/srv/store.db\"\n{extra}"
        );
        NodeConfig::from_toml_str(&text, Path::new("node.toml"))
    }

    #[test]
    fn backup_defaults() {
        let c = cfg("[backup]\nengine = \"pgbackrest\"\nrepo_path = \"/srv/repo\"\n").unwrap();
        let b = c.backup.as_ref().unwrap();
        assert_eq!(b.stanza_or(&c.cluster), "c1");
        assert_eq!(b.bin, Path::new("/usr/bin/pgbackrest"));
        assert_eq!(b.retention_full, 2);
        assert!(b.restore_replicas);
        assert_eq!((b.full_every_hours, b.incr_every_hours), (0, 0));
        assert_eq!(b.timeout_hours, 6);
        assert!(b.server.is_none());
        let back = NodeConfig::from_toml_str(&c.to_toml_string(), Path::new("x")).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn backup_errors_name_the_key() {
        for (extra, key) in [
            ("[backup]\nengine = \"barman\"\nrepo_path = \"/r\"\n", "backup.engine"),
            ("[backup]\nengine = \"pgbackrest\"\nrepo_path = \"repo\"\n", "backup.repo_path"),
            ("[backup]\nengine = \"pgbackrest\"\nrepo_path = \"/r'x\"\n", "backup.repo_path"),
            ("[backup]\nengine = \"pgbackrest\"\nrepo_path = \"/r\"\nstanza = \"a b\"\n", "backup.stanza"),
            ("[backup]\nengine = \"pgbackrest\"\nrepo_path = \"/r\"\nretention_full = 0\n", "backup.retention_full"),
            ("[backup]\nengine = \"pgbackrest\"\nrepo_path = \"/r\"\nfull_every_hours = 100000\n", "backup.full_every_hours"),
            (
                "[postgresql]\narchive_dir = \"/a\"\n[backup]\nengine = \"pgbackrest\"\nrepo_path = \"/r\"\n",
                "postgresql.archive_dir",
            ),
        ] {
            let e = cfg(extra).unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
    }

    const TLS: &str = "[postgresql.tls]\ncert_file = \"/t/n1.crt\"\nkey_file = \"/t/n1.key\"\nca_file = \"/t/ca.crt\"\n";

    #[test]
    fn the_backup_server() {
        let c = cfg(&format!(
            "[postgresql]\nlisten_host = \"*\"\nconnect_host = \"db1.example.com\"\n{TLS}\
             [backup]\nengine = \"pgbackrest\"\nrepo_path = \"/r\"\n[backup.server]\n"
        ))
        .unwrap();
        let s = c.backup.as_ref().unwrap().server.as_ref().unwrap();
        assert_eq!(s.port, 8432);
        assert_eq!(s.host_or(&c.postgresql), "db1.example.com");
        assert_eq!(s.listen_or(&c.postgresql), "0.0.0.0");
        let back = NodeConfig::from_toml_str(&c.to_toml_string(), Path::new("x")).unwrap();
        assert_eq!(back, c);
        let base = "[backup]\nengine = \"pgbackrest\"\nrepo_path = \"/r\"\n";
        for (extra, key) in [
            // No certificate to serve and authenticate with.
            (format!("{base}[backup.server]\n"), "[postgresql.tls]"),
            // The default host is listen_host's IP address: pgBackRest cannot check it.
            (
                format!("{TLS}{base}[backup.server]\n"),
                "backup.server.host (not set",
            ),
            (
                format!("{TLS}{base}[backup.server]\nhost = \"10.0.0.1\"\n"),
                "backup.server.host",
            ),
            (
                format!("{TLS}{base}[backup.server]\nhost = \"db 1\"\n"),
                "backup.server.host",
            ),
            (
                format!("{TLS}{base}[backup.server]\nhost = \"db1\"\nport = 5432\n"),
                "backup.server.port",
            ),
            (
                format!("{TLS}{base}timeout_hours = 0\n"),
                "backup.timeout_hours",
            ),
        ] {
            let e = cfg(&extra).unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
    }

    #[test]
    fn bootstrap_from_a_backup() {
        let c = cfg("[bootstrap]\nmethod = \"pgbackrest\"\nrepo_path = \"/old\"\nstanza = \"c0\"\ntarget_time = \"2026-12-03 10:00:00.5+00\"\n").unwrap();
        assert_eq!(
            c.bootstrap.as_ref().unwrap().bin,
            Path::new("/usr/bin/pgbackrest")
        );
        for (extra, key) in [
            ("target_time = \"yesterday\"\n", "bootstrap.target_time"),
            ("target_lsn = \"0/XYZ\"\n", "bootstrap.target_lsn"),
            ("target_time = \"2026-12-03 10:00:00\"\ntarget_lsn = \"0/1\"\n", "bootstrap.target_lsn"),
            ("stanza = \"c0\"\n[backup]\nengine = \"pgbackrest\"\nrepo_path = \"/old\"\nstanza = \"c0\"\n", "backup.stanza"),
        ] {
            let (stanza, extra) = if extra.starts_with("stanza") { ("", extra.to_string()) } else { ("stanza = \"c0\"\n", extra.to_string()) };
            let text = format!("[bootstrap]\nmethod = \"pgbackrest\"\nrepo_path = \"/old\"\n{stanza}{extra}");
            let e = cfg(&text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        assert!(is_lsn("0/3000060") && is_lsn("A/FF") && !is_lsn("3000060") && !is_lsn("0/"));
        for ok in [
            "2026-12-03 10:00:00",
            "2026-12-03T10:00:00Z",
            "2026-12-03 10:00:00.123456+01:00",
            "2026-12-03 10:00:00 UTC",
        ] {
            assert!(is_timestamp(ok), "{ok}");
        }
        for bad in [
            "2026-12-03",
            "10:00:00",
            "2026-12-03 10:00:00 Europe/Paris",
            "now",
        ] {
            assert!(!is_timestamp(bad), "{bad}");
        }
    }
}
