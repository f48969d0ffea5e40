//! Text that PostgreSQL and libpq read, rendered from the config: the `pgbaton.conf`
//! include, `pg_hba.conf`, `pg_ident.conf`, connection strings, passfile lines.

use crate::config::{BackupConfig, NodeConfig};
use std::fmt::Write;
use std::path::Path;

/// Name of the configuration include pgbaton owns inside the data directory.
pub const INCLUDE_FILE: &str = "pgbaton.conf";
/// The line appended to `postgresql.conf` so that pgbaton's include takes effect.
pub const INCLUDE_LINE: &str =
    "include_if_exists = 'pgbaton.conf'\t# added by pgbaton: keep it last";
/// Name of the ident map for local superuser access.
pub const IDENT_MAP: &str = "pgbaton";

/// Where a standby streams from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub member: String,
    pub host: String,
    pub port: u16,
}

/// Quote a value for postgresql.conf: single quotes, with `'` and `\` doubled.
pub fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Quote a value for a libpq connection string when it needs it.
pub fn conninfo_value(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| !c.is_whitespace() && c != '\'' && c != '\\')
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// A libpq connection string from key/value pairs.
pub fn conninfo(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", conninfo_value(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How this member's connections to another member use TLS: with `[postgresql.tls]`,
/// `sslmode=verify-full` (or `verify-ca`) against its CA; otherwise `prefer`.
pub fn ssl_params(cfg: &NodeConfig) -> Vec<(&'static str, String)> {
    match &cfg.postgresql.tls {
        Some(t) => vec![
            ("sslmode", t.verify.sslmode().to_string()),
            ("sslrootcert", t.ca_file.to_string_lossy().into_owned()),
        ],
        None => vec![("sslmode", "prefer".to_string())],
    }
}

/// A connection string to another member: `pairs`, then [`ssl_params`].
pub fn member_conninfo(cfg: &NodeConfig, pairs: &[(&str, &str)]) -> String {
    let ssl = ssl_params(cfg);
    let mut all: Vec<(&str, &str)> = pairs.to_vec();
    all.extend(ssl.iter().map(|(k, v)| (*k, v.as_str())));
    conninfo(&all)
}

/// `primary_conninfo` for a standby of `up`: the password comes from the passfile, never inline.
pub fn primary_conninfo(cfg: &NodeConfig, up: &Upstream) -> String {
    let port = up.port.to_string();
    let passfile = cfg.pgpass_path();
    member_conninfo(
        cfg,
        &[
            ("host", &up.host),
            ("port", &port),
            ("user", &cfg.replication.user),
            ("passfile", &passfile.to_string_lossy()),
            ("application_name", &cfg.name),
            ("connect_timeout", "5"),
        ],
    )
}

/// One line of a libpq passfile (`host:port:database:user:password`), with `:` and `\` escaped.
pub fn pgpass_line(host: &str, port: &str, database: &str, user: &str, password: &str) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    format!(
        "{}:{}:{}:{}:{}\n",
        esc(host),
        esc(port),
        esc(database),
        esc(user),
        esc(password)
    )
}

/// The passfile a member keeps: the replication password for any host, for replication
/// connections and for the `replication` pseudo-database pg_basebackup uses.
pub fn pgpass(user: &str, password: &str) -> String {
    pgpass_line("*", "*", "*", user, password)
}

/// The pgbaton executable PostgreSQL runs for archiving (`postgresql.pgbaton_bin`, filled in
/// by the agent with its own executable when not set).
fn pgbaton_bin(cfg: &NodeConfig) -> String {
    cfg.postgresql
        .pgbaton_bin
        .as_deref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pgbaton".into())
}

/// The archive_command: `pgbaton wal-push` (fsynced, never overwrites; an identical file
/// already there is a success). Paths are validated to hold no quote.
pub fn archive_command(cfg: &NodeConfig, dir: &Path) -> String {
    format!(
        "'{}' wal-push --dir '{}' '%p' '%f'",
        pgbaton_bin(cfg),
        dir.to_string_lossy()
    )
}

/// The restore_command: `pgbaton wal-fetch` (a standby beyond its slot, pg_rewind).
pub fn restore_command(cfg: &NodeConfig, dir: &Path) -> String {
    format!(
        "'{}' wal-fetch --dir '{}' '%f' '%p'",
        pgbaton_bin(cfg),
        dir.to_string_lossy()
    )
}

/// `pgbackrest --config=F --stanza=S <args>`, for PostgreSQL's archive and restore
/// commands. Paths are validated to hold no quote.
pub fn backrest_command(cfg: &NodeConfig, b: &BackupConfig, args: &str) -> String {
    format!(
        "'{}' '--config={}' '--stanza={}' {args}",
        b.bin.to_string_lossy(),
        cfg.pgbackrest_conf().to_string_lossy(),
        b.stanza_or(&cfg.cluster)
    )
}

/// The archive_command with pgBackRest: `pgbaton backrest-push`, which runs `archive-push`
/// under a lock in the repository (see `pgbaton_pg::backrest::push_locked`).
pub fn backrest_push_command(cfg: &NodeConfig, b: &BackupConfig) -> String {
    format!(
        "'{}' backrest-push --bin '{}' --config '{}' --stanza '{}' --lock '{}' '%p'",
        pgbaton_bin(cfg),
        b.bin.to_string_lossy(),
        cfg.pgbackrest_conf().to_string_lossy(),
        b.stanza_or(&cfg.cluster),
        b.repo_path
            .join(".pgbaton-archive-push.lock")
            .to_string_lossy()
    )
}

/// The pgBackRest config file pgbaton writes for a member (`<base_dir>/pgbackrest.conf`):
/// the repository, this member's PostgreSQL as pg1, logs and locks beside it.
pub fn pgbackrest_conf(cfg: &NodeConfig, b: &BackupConfig) -> String {
    pgbackrest_conf_for(
        cfg,
        &b.repo_path,
        b.stanza_or(&cfg.cluster),
        b.retention_full,
    )
}

/// The same for any repository and stanza (`[bootstrap]` restores from another cluster's).
pub fn pgbackrest_conf_for(
    cfg: &NodeConfig,
    repo: &Path,
    stanza: &str,
    retention_full: u32,
) -> String {
    let base = cfg.pgbackrest_dir();
    let mut s = String::from(
        "# Written by pgbaton before each start: edit [backup] in node.toml instead.\n[global]\n",
    );
    let mut set = |k: &str, v: &str| {
        let _ = writeln!(s, "{k}={v}");
    };
    set("repo1-path", &repo.to_string_lossy());
    set("repo1-retention-full", &retention_full.to_string());
    set("log-path", &base.join("log").to_string_lossy());
    set("lock-path", &base.join("lock").to_string_lossy());
    set("spool-path", &base.join("spool").to_string_lossy());
    // Every member archives (archive_mode = always): pgBackRest refuses that unless told.
    // A segment pushed twice is checked by its checksum, so a standby never overwrites
    // what the primary archived (see `pgbaton_conf`).
    set("archive-mode-check", "n");
    set("start-fast", "y");
    set("compress-type", "lz4");
    set("log-level-console", "warn");
    set("log-level-file", "info");
    let _ = writeln!(s, "\n[{stanza}]");
    let mut set = |k: &str, v: &str| {
        let _ = writeln!(s, "{k}={v}");
    };
    set("pg1-path", &cfg.data_dir.to_string_lossy());
    set("pg1-port", &cfg.postgresql.port.to_string());
    set("pg1-socket-path", &cfg.socket_dir().to_string_lossy());
    set("pg1-user", &cfg.postgresql.superuser);
    s
}

/// The config of pgBackRest's TLS server (`[backup.server]`, with `[postgresql.tls]`): it
/// serves the member's certificate, and lets in a client only with a certificate of the
/// member's CA whose common name is one of `clients` (the cluster's members), for the
/// stanza only. `None` without both tables.
pub fn pgbackrest_server_conf(cfg: &NodeConfig, clients: &[&str]) -> Option<String> {
    let (b, tls) = (cfg.backup.as_ref()?, cfg.postgresql.tls.as_ref()?);
    let server = b.server.as_ref()?;
    let base = cfg.pgbackrest_dir();
    let mut s = String::from(
        "# Written by pgbaton: edit [backup.server] in node.toml instead.\n[global]\n",
    );
    let mut set = |k: &str, v: &str| {
        let _ = writeln!(s, "{k}={v}");
    };
    set("tls-server-address", &server.listen_or(&cfg.postgresql));
    set("tls-server-port", &server.port.to_string());
    set("tls-server-cert-file", &tls.cert_file.to_string_lossy());
    set("tls-server-key-file", &tls.key_file.to_string_lossy());
    set("tls-server-ca-file", &tls.ca_file.to_string_lossy());
    let stanza = b.stanza_or(&cfg.cluster);
    for c in clients {
        set("tls-server-auth", &format!("{c}={stanza}"));
    }
    set("log-path", &base.join("log").to_string_lossy());
    set("lock-path", &base.join("lock").to_string_lossy());
    set("log-level-console", "warn");
    set("log-level-file", "info");
    Some(s)
}

/// `pgbaton.conf`: every setting pgbaton owns, rewritten before each start.
/// `upstream` is `Some` for a standby (primary_conninfo and slot), `None` for a primary.
pub fn pgbaton_conf(cfg: &NodeConfig, upstream: Option<&Upstream>) -> String {
    let pg = &cfg.postgresql;
    let mut s = String::new();
    let mut set = |k: &str, v: String| {
        let _ = writeln!(s, "{k} = {v}");
    };
    // The cluster's parameters first (`pgbaton edit-config`): every line after them wins,
    // so neither a record written past the checks can change what pgbaton owns, and the
    // node's own parameters (last) override the cluster's.
    set(
        "include_if_exists",
        conf_quote(crate::cluster_config::CLUSTER_FILE),
    );
    set("listen_addresses", conf_quote(&pg.listen_host));
    set("port", pg.port.to_string());
    set(
        "unix_socket_directories",
        conf_quote(&cfg.socket_dir().to_string_lossy()),
    );
    set("password_encryption", conf_quote("scram-sha-256"));
    if let Some(t) = &pg.tls {
        // PostgreSQL reads these files again at every reload: new certificates need no
        // restart (the agent reloads when they change).
        set("ssl", "on".into());
        set("ssl_cert_file", conf_quote(&t.cert_file.to_string_lossy()));
        set("ssl_key_file", conf_quote(&t.key_file.to_string_lossy()));
        set("ssl_ca_file", conf_quote(&t.ca_file.to_string_lossy()));
        set("ssl_min_protocol_version", conf_quote("TLSv1.2"));
    }
    set("wal_level", "replica".into());
    set("hot_standby", "on".into());
    set("hot_standby_feedback", "on".into());
    set("max_wal_senders", pg.max_wal_senders.to_string());
    set(
        "max_replication_slots",
        pg.max_replication_slots.to_string(),
    );
    set(
        "max_slot_wal_keep_size",
        conf_quote(&pg.max_slot_wal_keep_size),
    );
    // pg_rewind needs either data checksums (set at initdb) or wal_log_hints; keep both so a
    // cluster made without checksums elsewhere can still be rewound.
    set("wal_log_hints", "on".into());
    set("recovery_target_timeline", conf_quote("latest"));
    // A standby whose upstream went away retries after this (PostgreSQL's default is 5 s):
    // with synchronous replication, commits wait for it to reconnect after a primary's
    // restart in place (measured with `pgbaton-bench chaos`: 3-7 s write gaps at 5 s).
    set("wal_retrieve_retry_interval", conf_quote("1s"));
    match (&pg.archive_dir, &cfg.backup) {
        (Some(dir), _) => {
            // Every member archives what it has: a segment the primary completed but had
            // not archived when it died is archived by the standbys that received it.
            set("archive_mode", "always".into());
            set("archive_command", conf_quote(&archive_command(cfg, dir)));
            set("restore_command", conf_quote(&restore_command(cfg, dir)));
        }
        (None, Some(b)) => {
            // The same with pgBackRest: it takes a segment already in the repository with
            // the same checksum as a success and refuses a different one (never
            // overwrites), as wal-push does; `archive-mode-check=n` in its config allows
            // `always` (see `pgbackrest_conf`), and pushes take turns under a lock in the
            // repository (`backrest_push_command`).
            set("archive_mode", "always".into());
            set(
                "archive_command",
                conf_quote(&backrest_push_command(cfg, b)),
            );
            set(
                "restore_command",
                conf_quote(&backrest_command(cfg, b, "archive-get '%f' '%p'")),
            );
        }
        (None, None) => set("archive_mode", "off".into()),
    }
    match upstream {
        Some(up) => {
            set("primary_conninfo", conf_quote(&primary_conninfo(cfg, up)));
            set(
                "primary_slot_name",
                conf_quote(&crate::model::slot_name_for(&cfg.name)),
            );
        }
        None => {
            set("primary_conninfo", "''".into());
            set("primary_slot_name", "''".into());
        }
    }
    for (k, v) in &pg.parameters {
        set(k, v.render());
    }
    format!(
        "# Managed by pgbaton for member {} of cluster {}: rewritten at every start.\n\
         # Put your own settings in [postgresql.parameters] of the node config.\n{s}",
        cfg.name, cfg.cluster
    )
}

/// `pg_hba.conf`. Local socket: the superuser by peer authentication through the `pgbaton`
/// ident map, everyone else by password. Network: scram-sha-256 only, from the configured
/// networks; replication only for the replication user. Never `trust`. With
/// `[postgresql.tls]` the network lines are `hostssl`: a connection without TLS matches no
/// line and is refused.
pub fn pg_hba(cfg: &NodeConfig) -> String {
    let pg = &cfg.postgresql;
    let host = if pg.tls.is_some() {
        "hostssl"
    } else {
        "host   "
    };
    let mut s = format!(
        "# Managed by pgbaton: rewritten at every start. No line here uses trust.\n\
         # TYPE  DATABASE     USER         ADDRESS                  METHOD\n\
         local   all          {su:<12} peer map={IDENT_MAP}\n\
         local   all          all          scram-sha-256\n",
        su = pg.superuser
    );
    for net in &pg.allowed_networks {
        let _ = writeln!(
            s,
            "{host} replication  {:<12} {net:<24} scram-sha-256",
            cfg.replication.user
        );
    }
    for net in &pg.allowed_networks {
        let _ = writeln!(
            s,
            "{host} all          all          {net:<24} scram-sha-256"
        );
    }
    s
}

/// `pg_ident.conf`: the OS user PostgreSQL runs as may log in locally as the superuser.
pub fn pg_ident(os_user: &str, superuser: &str) -> String {
    format!(
        "# Managed by pgbaton: rewritten at every start.\n\
         # MAPNAME  SYSTEM-USERNAME  PG-USERNAME\n\
         {IDENT_MAP}    {os_user}    {superuser}\n"
    )
}

/// Quote an SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quote an SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;

    fn cfg() -> NodeConfig {
        NodeConfig::from_toml_str(
            r#"
cluster = "demo"
name = "n2"
data_dir = "/srv/pg/n2/data"
[postgresql]
port = 6000
archive_dir = "/srv/archive"
allowed_networks = ["10.0.0.0/8"]
[postgresql.parameters]
work_mem = "8MB"
[store]
kind = "local"
path = "/srv/pg/store.db"
"#,
            Path::new("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn pgbackrest_archives_and_restores() {
        let mut c = cfg();
        c.postgresql.archive_dir = None;
        c.backup = Some(
            NodeConfig::from_toml_str(
                "cluster = \"demo\"\nname = \"n2\"\ndata_dir = \"/srv/pg/n2/data\"\n[store]\nkind = \"local\"\npath = \"/s.db\"\n[backup]\nengine = \"pgbackrest\"\nrepo_path = \"/srv/repo\"\nretention_full = 3\n",
                Path::new("b.toml"),
            )
            .unwrap()
            .backup
            .unwrap(),
        );
        let conf = pgbaton_conf(&c, None);
        assert!(conf.contains("archive_mode = always"), "{conf}");
        assert!(
            conf.contains("archive_command = '''pgbaton'' backrest-push --bin ''/usr/bin/pgbackrest'' --config ''/srv/pg/n2/pgbackrest.conf'' --stanza ''demo'' --lock ''/srv/repo/.pgbaton-archive-push.lock'' ''%p'''"),
            "{conf}"
        );
        assert!(conf.contains("archive-get ''%f'' ''%p'''"), "{conf}");
        let br = pgbackrest_conf(&c, c.backup.as_ref().unwrap());
        for line in [
            "[global]",
            "repo1-path=/srv/repo",
            "repo1-retention-full=3",
            "archive-mode-check=n",
            "lock-path=/srv/pg/n2/pgbackrest/lock",
            "[demo]",
            "pg1-path=/srv/pg/n2/data",
            "pg1-port=6000",
            "pg1-socket-path=/srv/pg/n2/run",
        ] {
            assert!(br.lines().any(|l| l == line), "{line} not in\n{br}");
        }
    }

    #[test]
    fn the_backup_server_lets_in_the_members_for_the_stanza() {
        let c = NodeConfig::from_toml_str(
            "cluster = \"demo\"\nname = \"n2\"\ndata_dir = \"/srv/pg/n2/data\"\n[store]\nkind = \"local\"\npath = \"/s.db\"\n\
             [postgresql]\nlisten_host = \"10.0.0.2\"\n[postgresql.tls]\ncert_file = \"/t/n2.crt\"\nkey_file = \"/t/n2.key\"\nca_file = \"/t/ca.crt\"\n\
             [backup]\nengine = \"pgbackrest\"\nrepo_path = \"/srv/repo\"\n[backup.server]\nhost = \"db2.example.com\"\nport = 8500\n",
            Path::new("b.toml"),
        )
        .unwrap();
        let conf = pgbackrest_server_conf(&c, &["n1", "n3"]).unwrap();
        for line in [
            "tls-server-address=10.0.0.2",
            "tls-server-port=8500",
            "tls-server-cert-file=/t/n2.crt",
            "tls-server-key-file=/t/n2.key",
            "tls-server-ca-file=/t/ca.crt",
            "tls-server-auth=n1=demo",
            "tls-server-auth=n3=demo",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line} not in\n{conf}");
        }
        let mut no_server = c.clone();
        no_server.backup.as_mut().unwrap().server = None;
        assert_eq!(pgbackrest_server_conf(&no_server, &["n1"]), None);
    }

    #[test]
    fn hba_has_no_trust_and_uses_scram_on_network_lines() {
        let hba = pg_hba(&cfg());
        assert!(!hba
            .lines()
            .any(|l| !l.starts_with('#') && l.contains("trust")));
        let host: Vec<_> = hba.lines().filter(|l| l.starts_with("host")).collect();
        assert_eq!(host.len(), 2);
        assert!(host
            .iter()
            .all(|l| l.ends_with("scram-sha-256") && l.contains("10.0.0.0/8")));
        assert!(host[0].contains("replication") && host[0].contains("replicator"));
    }

    #[test]
    fn standby_conf_uses_passfile_and_slot() {
        let c = cfg();
        let up = Upstream {
            member: "n1".into(),
            host: "127.0.0.1".into(),
            port: 5999,
        };
        let conf = pgbaton_conf(&c, Some(&up));
        assert!(conf.contains("primary_slot_name = 'pgbaton_n2'"));
        let line = conf
            .lines()
            .find(|l| l.starts_with("primary_conninfo"))
            .unwrap();
        assert!(line.contains("passfile=/srv/pg/n2/pgpass"), "{line}");
        assert!(!line.contains("password="), "{line}");
        assert!(line.contains("port=5999") && line.contains("application_name=n2"));
        assert!(conf.contains("archive_mode = always"), "{conf}");
        assert!(
            conf.contains(
                "archive_command = '''pgbaton'' wal-push --dir ''/srv/archive'' ''%p'' ''%f'''"
            ),
            "{conf}"
        );
        assert!(
            conf.contains(
                "restore_command = '''pgbaton'' wal-fetch --dir ''/srv/archive'' ''%f'' ''%p'''"
            ),
            "{conf}"
        );
        let mut c2 = c.clone();
        c2.postgresql.pgbaton_bin = Some("/opt/pgbaton/bin/pgbaton".into());
        assert!(pgbaton_conf(&c2, Some(&up)).contains("'''/opt/pgbaton/bin/pgbaton'' wal-push"));
        assert!(conf.contains("work_mem = '8MB'"));
        assert!(conf.contains("port = 6000"));
    }

    #[test]
    fn primary_conf_clears_conninfo() {
        let conf = pgbaton_conf(&cfg(), None);
        assert!(conf.contains("primary_conninfo = ''"));
        assert!(conf.contains("wal_level = replica"));
    }

    #[test]
    fn quoting() {
        assert_eq!(conf_quote("it's"), "'it''s'");
        assert_eq!(conninfo_value("a b"), "'a b'");
        assert_eq!(conninfo_value("x'y"), "'x\\'y'");
        assert_eq!(
            pgpass_line("h", "5432", "*", "u", "p:w\\d"),
            "h:5432:*:u:p\\:w\\\\d\n"
        );
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("a'b"), "'a''b'");
    }
}
