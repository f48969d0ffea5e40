//! Tests of `config`.
use super::*;

mod fuzz;

const FILE: &str = "/etc/pgbaton/node1.toml";

const MINIMAL: &str = r#"
cluster = "main"
name = "node1"
data_dir = "/var/lib/pgbaton/node1/data"

[store]
kind = "local"
path = "/var/lib/pgbaton/state.db"
"#;

const FULL: &str = r#"
# A complete node config.
cluster = "prod-1"
name = "db1.example"
data_dir = "/srv/pg/db1/data"
os_user = "postgres"

[postgresql]
bin_dir = "/usr/lib/postgresql/17/bin"
listen_host = "0.0.0.0"
connect_host = "10.0.0.11"
port = 5433
socket_dir = "/srv/pg/db1/sock"
superuser = "admin"
pgpass = "/srv/pg/db1/.pgpass"
log_file = "/var/log/pg/db1.log"
archive_dir = "/srv/pg/archive"
allowed_networks = ["10.0.0.0/16", "fd00::/8", "127.0.0.1/32"]
databases = ["app", "reporting"]
max_wal_senders = 16
max_replication_slots = 8
max_slot_wal_keep_size = "512MB"

[postgresql.parameters]
shared_buffers = "1GB"
max_connections = 200
jit = false
checkpoint_completion_target = 0.9
"auto_explain.log_min_duration" = "250ms"

[replication]
user = "repl"
password_env = "PGBATON_REPL_PASSWORD"

[api]
listen = "0.0.0.0:8009"

[store]
kind = "etcd"
endpoints = ["https://10.0.0.1:2379", "https://etcd.example:2379", "https://[fd00::1]:2379"]
ca_file = "/etc/pgbaton/etcd-ca.crt"
cert_file = "/etc/pgbaton/etcd-client.crt"
key_file = "/etc/pgbaton/etcd-client.key"
username = "pgbaton"
password_file = "/etc/pgbaton/etcd.password"

[timing]
loop_interval_ms = 500
ttl_ms = 5000
start_timeout_ms = 120000
"#;

fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
    NodeConfig::from_toml_str(text, Path::new(FILE))
}

fn minimal() -> NodeConfig {
    parse(MINIMAL).expect("minimal config parses")
}

/// Parse `text`, expect an error, and return it.
fn parse_err(text: &str) -> ConfigError {
    match parse(text) {
        Ok(c) => panic!("expected an error, got {c:#?}"),
        Err(e) => {
            assert_eq!(e.file.as_deref(), Some(Path::new(FILE)), "{e}");
            e
        }
    }
}

/// MINIMAL followed by more tables.
fn with(extra: &str) -> String {
    format!("{MINIMAL}\n{extra}")
}

/// Validate a modified minimal config and return the key of the error.
fn bad_key(modify: impl FnOnce(&mut NodeConfig)) -> String {
    let mut c = minimal();
    modify(&mut c);
    match c.validate() {
        Ok(()) => panic!("expected a validation error for {c:#?}"),
        Err(e) => {
            assert_eq!(e.file, None);
            e.key
        }
    }
}

fn assert_valid(modify: impl FnOnce(&mut NodeConfig)) {
    let mut c = minimal();
    modify(&mut c);
    if let Err(e) = c.validate() {
        panic!("unexpected error: {e}");
    }
}

#[test]
fn minimal_config_has_all_defaults() {
    let c = minimal();
    assert_eq!(c.cluster, "main");
    assert_eq!(c.name, "node1");
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/pgbaton/node1/data"));
    assert_eq!(c.os_user, None);
    assert_eq!(c.postgresql, PostgresqlConfig::default());
    assert_eq!(c.replication, ReplicationConfig::default());
    assert_eq!(c.api, ApiConfig::default());
    assert_eq!(c.timing, TimingConfig::default());
    assert_eq!(
        c.store,
        StoreConfig::Local {
            path: "/var/lib/pgbaton/state.db".into()
        }
    );

    let pg = &c.postgresql;
    assert_eq!(pg.bin_dir, None);
    assert_eq!(pg.listen_host, "127.0.0.1");
    assert_eq!(pg.connect_host, None);
    assert_eq!(pg.port, 5432);
    assert_eq!(pg.superuser, "postgres");
    assert_eq!(pg.archive_dir, None);
    assert_eq!(pg.allowed_networks, ["127.0.0.1/32", "::1/128"]);
    assert!(pg.databases.is_empty());
    assert_eq!(pg.max_wal_senders, 10);
    assert_eq!(pg.max_replication_slots, 10);
    assert_eq!(pg.max_slot_wal_keep_size, "1GB");
    assert!(pg.parameters.is_empty());
    assert_eq!(c.replication.user, "replicator");
    assert_eq!(c.replication.password_file, None);
    assert_eq!(c.replication.password_env, None);
    assert_eq!(c.api.listen, "127.0.0.1:8008");
    assert_eq!(c.api.connect_url, None);
    assert_eq!(c.timing.loop_interval_ms, 500);
    assert_eq!(c.timing.ttl_ms, 2_500);
    assert_eq!(c.timing.fence_margin_ms, 500);
    assert_eq!(c.timing.primary_restart_timeout_ms, 30_000);
    assert_eq!(c.failover, FailoverConfig::default());
    assert_eq!(c.tags, TagsConfig::default());
    assert_eq!(TagsConfig::default().failover_priority, 1);
    assert_eq!(c.failover.max_lag_bytes, 1_048_576);
    assert!(c.failover.failsafe);
    assert!(!c.failover.reclone_on_rewind_failure);
    assert_eq!(c.timing.start_timeout_ms, 60_000);

    // Resolved defaults.
    assert_eq!(c.base_dir(), PathBuf::from("/var/lib/pgbaton/node1"));
    assert_eq!(c.socket_dir(), PathBuf::from("/var/lib/pgbaton/node1/run"));
    assert_eq!(
        c.pgpass_path(),
        PathBuf::from("/var/lib/pgbaton/node1/pgpass")
    );
    assert_eq!(
        c.log_file(),
        PathBuf::from("/var/lib/pgbaton/node1/postgres.log")
    );
    assert_eq!(c.connect_host(), "127.0.0.1");
    assert_eq!(c.api_url(), "http://127.0.0.1:8008");
}

#[test]
fn missing_keys_in_a_table_take_their_defaults() {
    let c = parse(&with(
        "[postgresql]\nport = 6000\n[timing]\nttl_ms = 20000\n",
    ))
    .unwrap();
    assert_eq!(c.postgresql.port, 6000);
    assert_eq!(c.postgresql.superuser, "postgres");
    assert_eq!(c.timing.ttl_ms, 20_000);
    assert_eq!(c.timing.loop_interval_ms, 500);
}

#[test]
fn full_config_parses() {
    let c = parse(FULL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.cluster, "prod-1");
    assert_eq!(c.name, "db1.example");
    assert_eq!(c.os_user.as_deref(), Some("postgres"));
    let pg = &c.postgresql;
    assert_eq!(
        pg.bin_dir,
        Some(PathBuf::from("/usr/lib/postgresql/17/bin"))
    );
    assert_eq!(pg.listen_host, "0.0.0.0");
    assert_eq!(pg.port, 5433);
    assert_eq!(pg.superuser, "admin");
    assert_eq!(pg.archive_dir, Some(PathBuf::from("/srv/pg/archive")));
    assert_eq!(
        pg.allowed_networks,
        ["10.0.0.0/16", "fd00::/8", "127.0.0.1/32"]
    );
    assert_eq!(pg.databases, ["app", "reporting"]);
    assert_eq!(pg.max_wal_senders, 16);
    assert_eq!(pg.max_replication_slots, 8);
    assert_eq!(pg.max_slot_wal_keep_size, "512MB");
    assert_eq!(
        pg.parameters["shared_buffers"],
        ParamValue::Str("1GB".into())
    );
    assert_eq!(pg.parameters["max_connections"], ParamValue::Int(200));
    assert_eq!(pg.parameters["jit"], ParamValue::Bool(false));
    assert_eq!(
        pg.parameters["checkpoint_completion_target"],
        ParamValue::Float(0.9)
    );
    assert_eq!(
        pg.parameters["auto_explain.log_min_duration"],
        ParamValue::Str("250ms".into())
    );
    assert_eq!(c.replication.user, "repl");
    assert_eq!(
        c.replication.password_env.as_deref(),
        Some("PGBATON_REPL_PASSWORD")
    );
    assert_eq!(
        c.store,
        StoreConfig::Etcd {
            endpoints: vec![
                "https://10.0.0.1:2379".into(),
                "https://etcd.example:2379".into(),
                "https://[fd00::1]:2379".into()
            ],
            access: EtcdAccess {
                ca_file: Some("/etc/pgbaton/etcd-ca.crt".into()),
                cert_file: Some("/etc/pgbaton/etcd-client.crt".into()),
                key_file: Some("/etc/pgbaton/etcd-client.key".into()),
                username: Some("pgbaton".into()),
                password_file: Some("/etc/pgbaton/etcd.password".into()),
            }
        }
    );
    assert_eq!(
        c.timing,
        TimingConfig {
            loop_interval_ms: 500,
            ttl_ms: 5000,
            fence_margin_ms: 500,
            primary_restart_timeout_ms: 30_000,
            start_timeout_ms: 120_000,
            orphan_slot_grace_ms: 300_000
        }
    );

    assert_eq!(c.socket_dir(), PathBuf::from("/srv/pg/db1/sock"));
    assert_eq!(c.pgpass_path(), PathBuf::from("/srv/pg/db1/.pgpass"));
    assert_eq!(c.log_file(), PathBuf::from("/var/log/pg/db1.log"));
    assert_eq!(c.connect_host(), "10.0.0.11");
    // api.listen is a wildcard: the URL uses connect_host.
    assert_eq!(c.api_url(), "http://10.0.0.11:8009");
}

#[test]
fn api_url_variants() {
    let mut c = minimal();
    c.api.listen = "[::]:8008".into();
    c.postgresql.connect_host = Some("fd00::5".into());
    assert_eq!(c.api_url(), "http://[fd00::5]:8008");
    c.postgresql.connect_host = Some("db1.example".into());
    assert_eq!(c.api_url(), "http://db1.example:8008");
    c.api.listen = "[fd00::7]:9000".into();
    assert_eq!(c.api_url(), "http://[fd00::7]:9000");
    c.api.connect_url = Some("http://db1.example/pgbaton".into());
    assert_eq!(c.api_url(), "http://db1.example/pgbaton");
}

#[test]
fn base_dir_of_a_root_data_dir() {
    let mut c = minimal();
    c.data_dir = "/".into();
    assert_eq!(c.base_dir(), PathBuf::from("/"));
    c.data_dir = "/data".into();
    assert_eq!(c.socket_dir(), PathBuf::from("/run"));
}

#[test]
fn round_trip_through_toml() {
    for text in [MINIMAL, FULL] {
        let c = parse(text).unwrap();
        let written = c.to_toml_string();
        let back = parse(&written).unwrap_or_else(|e| panic!("{e}\n{written}"));
        assert_eq!(back, c, "{written}");
    }
    // Defaults are written out, None options are not.
    let written = minimal().to_toml_string();
    assert!(written.contains("port = 5432"), "{written}");
    assert!(!written.contains("connect_host"), "{written}");
    assert!(!written.contains("os_user"), "{written}");
    assert!(written.contains("kind = \"local\""), "{written}");
}

#[test]
fn param_value_rendering() {
    assert_eq!(ParamValue::Bool(true).render(), "on");
    assert_eq!(ParamValue::Bool(false).render(), "off");
    assert_eq!(ParamValue::Int(-42).render(), "-42");
    assert_eq!(ParamValue::Float(0.9).render(), "0.9");
    assert_eq!(ParamValue::Float(2.0).render(), "2");
    assert_eq!(ParamValue::Str("1GB".into()).render(), "'1GB'");
    assert_eq!(ParamValue::Str("it's".into()).render(), "'it''s'");
    assert_eq!(ParamValue::Str(r"C:\x".into()).render(), r"'C:\\x'");
    assert_eq!(ParamValue::Str(String::new()).render(), "''");
}

#[test]
fn param_value_of_wrong_type_is_rejected() {
    let e = parse_err(&with(
        "[postgresql.parameters]\nsearch_path = [\"a\", \"b\"]\n",
    ));
    assert_eq!(e.key, "postgresql.parameters.search_path", "{e}");
    assert!(
        e.expected.contains("boolean, integer, float or string"),
        "{e}"
    );
    assert!(e.expected.contains("line 11"), "{e}");
}

// --- unknown keys and TOML errors ---------------------------------------------------

#[test]
fn unknown_top_level_key() {
    let e = parse_err(&MINIMAL.replace("name = \"node1\"", "name = \"node1\"\nnmae = \"x\""));
    assert_eq!(e.key, "nmae", "{e}");
    assert_eq!(e.value, "(unknown key)");
    assert!(e.expected.contains("`data_dir`"), "{e}");
    assert!(e.expected.contains("line 4, column 1"), "{e}");
}

#[test]
fn unknown_key_in_postgresql() {
    let e = parse_err(&with("[postgresql]\nport = 5432\nprot = 5432\n"));
    assert_eq!(e.key, "postgresql.prot", "{e}");
    assert_eq!(e.value, "(unknown key)");
    assert!(e.expected.contains("`listen_host`"), "{e}");
    assert!(e.expected.contains("line 12"), "{e}");
    let shown = e.to_string();
    assert!(shown.contains(FILE) && shown.contains("prot"), "{shown}");
}

#[test]
fn unknown_key_as_dotted_key() {
    let e =
        parse_err(&MINIMAL.replace("name = \"node1\"", "name = \"node1\"\npostgresql.prot = 1"));
    assert_eq!(e.key, "postgresql.prot", "{e}");
}

#[test]
fn unknown_key_in_inline_table() {
    let text = "cluster = \"c\"\nname = \"n\"\ndata_dir = \"/d/data\"\n\
                timing = { ttl_ms = 10000, lop_interval_ms = 5 }\n\
                store = { kind = \"local\", path = \"/s.db\" }\n";
    let e = parse_err(text);
    assert_eq!(e.key, "timing.lop_interval_ms", "{e}");
}

#[test]
fn unknown_key_in_store() {
    let e = parse_err(&MINIMAL.replace("path = ", "pth = \"/x\"\npath = "));
    assert_eq!(e.key, "store.pth", "{e}");
    assert_eq!(e.value, "(unknown key)");
    let e = parse_err(&MINIMAL.replace("path = ", "endpoints = [\"http://a:1\"]\npath = "));
    assert_eq!(e.key, "store.endpoints", "{e}");
    // Inline table form.
    let text = "cluster = \"c\"\nname = \"n\"\ndata_dir = \"/d/data\"\n\
                store = { kind = \"local\", path = \"/s.db\", pth = 1 }\n";
    assert_eq!(parse_err(text).key, "store.pth");
}

#[test]
fn unknown_store_kind() {
    let e = parse_err(&MINIMAL.replace("kind = \"local\"", "kind = \"consul\""));
    assert_eq!(e.key, "store.kind", "{e}");
    assert_eq!(e.value, "\"consul\"");
    assert!(e.expected.contains("local"), "{e}");
}

#[test]
fn missing_required_keys() {
    let e = parse_err(&MINIMAL.replace("name = \"node1\"", ""));
    assert_eq!(e.key, "name", "{e}");
    assert_eq!(e.value, "(missing)");
    let text = MINIMAL.split("[store]").next().unwrap();
    assert_eq!(parse_err(text).key, "store");
    let e = parse_err(&MINIMAL.replace("path = \"/var/lib/pgbaton/state.db\"", ""));
    assert_eq!(e.key, "store.path", "{e}");
    let e = parse_err(&MINIMAL.replace("kind = \"local\"", ""));
    assert_eq!(e.key, "store.kind", "{e}");
}

#[test]
fn wrong_type_names_the_key_and_value() {
    let e = parse_err(&with("[postgresql]\nport = \"abc\"\n"));
    assert_eq!(e.key, "postgresql.port", "{e}");
    assert_eq!(e.value, "\"abc\"");
    assert!(e.expected.starts_with("an integer in 0..=65535"), "{e}");
    let e = parse_err(&with("[postgresql]\nport = 70000\n"));
    assert_eq!(e.key, "postgresql.port", "{e}");
    assert_eq!(e.value, "70000");
    let e = parse_err(&with(
        "[postgresql]\nallowed_networks = [\n  \"10.0.0.0/8\",\n  7,\n]\n",
    ));
    assert_eq!(e.key, "postgresql.allowed_networks", "{e}");
    let e = parse_err(&with("[timing]\nttl_ms = -5 # negative\n"));
    assert_eq!(e.key, "timing.ttl_ms", "{e}");
}

#[test]
fn toml_syntax_error() {
    let e = parse_err(&with("[postgresql]\nport = 54 32\n"));
    assert!(e.expected.starts_with("valid TOML"), "{e}");
    assert!(e.expected.contains("line 11"), "{e}");
    assert!(e.value.contains("port = 54 32"), "{e}");
    assert!(!e.to_string().contains('\n'), "{e}");
}

#[test]
fn error_display() {
    let e = parse_err(&MINIMAL.replace("node1\"", "no de\""));
    let shown = e.to_string();
    assert_eq!(
        shown,
        "/etc/pgbaton/node1.toml: key `name`: bad value \"no de\": expected \
         1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit"
    );
    let no_file = ConfigError { file: None, ..e };
    assert!(no_file
        .to_string()
        .starts_with("key `name`: bad value \"no de\""));
}

// --- validation rules ---------------------------------------------------------------

#[test]
fn names() {
    for bad in ["", "-a", ".a", "a b", "a/b", "é", &"a".repeat(64)] {
        assert_eq!(bad_key(|c| c.cluster = bad.into()), "cluster", "{bad:?}");
        assert_eq!(bad_key(|c| c.name = bad.into()), "name", "{bad:?}");
    }
    for good in ["a", "0", "node-1.a_b", &"a".repeat(55)] {
        assert_valid(|c| c.name = good.into());
    }
    // A member's slot is pgbaton_<name> (at most 63 characters): longer names would be cut.
    assert_eq!(bad_key(|c| c.name = "a".repeat(56)), "name");
    assert_valid(|c| c.cluster = "a".repeat(63));
}

#[test]
fn paths_that_would_break_quoted_settings_are_refused() {
    for bad in ["/srv/it's", "/srv/a\nb", "/srv/../etc"] {
        assert_eq!(bad_key(|c| c.data_dir = bad.into()), "data_dir", "{bad:?}");
        assert_eq!(
            bad_key(|c| c.postgresql.log_file = Some(bad.into())),
            "postgresql.log_file",
            "{bad:?}"
        );
    }
    // A trailing slash or a `.` is the same directory.
    let text = MINIMAL.replace(
        "/var/lib/pgbaton/node1/data",
        "/var/lib/pgbaton/./node1/data/",
    );
    assert_eq!(
        parse(&text).unwrap().data_dir,
        Path::new("/var/lib/pgbaton/node1/data")
    );
}

#[test]
fn paths_must_be_absolute() {
    assert_eq!(bad_key(|c| c.data_dir = "data".into()), "data_dir");
    assert_eq!(bad_key(|c| c.data_dir = "".into()), "data_dir");
    assert_eq!(
        bad_key(|c| c.store = StoreConfig::Local {
            path: "s.db".into()
        }),
        "store.path"
    );
    assert_eq!(
        bad_key(|c| c.postgresql.socket_dir = Some("run".into())),
        "postgresql.socket_dir"
    );
    assert_eq!(
        bad_key(|c| c.postgresql.pgpass = Some("pgpass".into())),
        "postgresql.pgpass"
    );
    assert_eq!(
        bad_key(|c| c.postgresql.log_file = Some("x.log".into())),
        "postgresql.log_file"
    );
    assert_eq!(
        bad_key(|c| c.postgresql.archive_dir = Some("a".into())),
        "postgresql.archive_dir"
    );
    assert_eq!(
        bad_key(|c| c.postgresql.archive_dir = Some("/srv/it's".into())),
        "postgresql.archive_dir"
    );
    assert_eq!(
        bad_key(|c| c.postgresql.archive_dir = Some("/srv/100%".into())),
        "postgresql.archive_dir"
    );
    assert_eq!(
        bad_key(|c| c.postgresql.pgbaton_bin = Some("/usr/bin/pg\nbaton".into())),
        "postgresql.pgbaton_bin"
    );
    assert_eq!(
        bad_key(|c| c.postgresql.pgbaton_bin = Some("pgbaton".into())),
        "postgresql.pgbaton_bin"
    );
    assert_eq!(
        bad_key(|c| c.postgresql.bin_dir = Some("bin".into())),
        "postgresql.bin_dir"
    );
    assert_eq!(
        bad_key(|c| c.replication.password_file = Some("pw".into())),
        "replication.password_file"
    );
    let e = parse_err(&MINIMAL.replace("\"/var/lib/pgbaton/node1/data\"", "\"./data\""));
    assert_eq!(
        (e.key.as_str(), e.value.as_str()),
        ("data_dir", "\"./data\"")
    );
    assert_eq!(e.expected, "an absolute path");
}

#[test]
fn os_user() {
    assert_eq!(bad_key(|c| c.os_user = Some("".into())), "os_user");
    assert_eq!(bad_key(|c| c.os_user = Some("a b".into())), "os_user");
    assert_valid(|c| c.os_user = Some("postgres".into()));
}

#[test]
fn port_and_hosts() {
    assert_eq!(bad_key(|c| c.postgresql.port = 0), "postgresql.port");
    assert_eq!(
        bad_key(|c| c.postgresql.listen_host = "".into()),
        "postgresql.listen_host"
    );
    assert_eq!(
        bad_key(|c| c.postgresql.listen_host = "a'b".into()),
        "postgresql.listen_host"
    );
    for wildcard in ["0.0.0.0", "*", "::", "10.0.0.1,127.0.0.1"] {
        let mut c = minimal();
        c.postgresql.listen_host = wildcard.into();
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "postgresql.connect_host", "{wildcard}");
        assert_eq!(e.value, "(not set)");
        assert!(e.expected.contains("required"), "{e}");
        c.postgresql.connect_host = Some("10.0.0.1".into());
        c.validate().unwrap();
        assert_eq!(c.connect_host(), "10.0.0.1");
    }
    assert_eq!(
        bad_key(|c| c.postgresql.connect_host = Some("".into())),
        "postgresql.connect_host"
    );
    assert_eq!(
        bad_key(|c| c.postgresql.connect_host = Some("*".into())),
        "postgresql.connect_host"
    );
    assert_valid(|c| c.postgresql.listen_host = "db1.example".into());
}

#[test]
fn roles() {
    for bad in ["", "Postgres", "1abc", "a-b", "a b", &"a".repeat(64)] {
        assert_eq!(
            bad_key(|c| c.postgresql.superuser = bad.into()),
            "postgresql.superuser",
            "{bad:?}"
        );
        assert_eq!(
            bad_key(|c| c.replication.user = bad.into()),
            "replication.user",
            "{bad:?}"
        );
    }
    assert_eq!(
        bad_key(|c| c.replication.user = "postgres".into()),
        "replication.user"
    );
    assert_valid(|c| c.replication.user = "_repl_2".into());
}

#[test]
fn databases() {
    for bad in ["postgres", "template0", "template1", "App", "my-db", ""] {
        assert_eq!(
            bad_key(|c| c.postgresql.databases = vec![bad.into()]),
            "postgresql.databases"
        );
    }
    let mut c = minimal();
    c.postgresql.databases = vec!["app".into(), "other".into(), "app".into()];
    let e = c.validate().unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.value.as_str()),
        ("postgresql.databases", "\"app\"")
    );
    assert_valid(|c| c.postgresql.databases = vec!["app".into(), "other".into()]);
}

#[test]
fn allowed_networks() {
    for bad in [
        "all",
        "samenet",
        "samehost",
        "10.0.0.0",
        "10.0.0.0/33",
        "::1/129",
        "10.0.0/8",
        "10.0.0.0/",
        "10.0.0.0/+8",
        "host.example/32",
        "10.0.0.0/8 ",
    ] {
        assert_eq!(
            bad_key(|c| c.postgresql.allowed_networks = vec![bad.into()]),
            "postgresql.allowed_networks",
            "{bad:?}"
        );
    }
    assert_eq!(
        bad_key(|c| c.postgresql.allowed_networks = vec![]),
        "postgresql.allowed_networks"
    );
    assert_valid(|c| {
        c.postgresql.allowed_networks = vec![
            "0.0.0.0/0".into(),
            "10.1.2.3/32".into(),
            "::/0".into(),
            "fe80::1/128".into(),
        ]
    });
}

#[test]
fn replication_limits_and_sizes() {
    assert_eq!(
        bad_key(|c| c.postgresql.max_wal_senders = 1),
        "postgresql.max_wal_senders"
    );
    assert_eq!(
        bad_key(|c| c.postgresql.max_replication_slots = 0),
        "postgresql.max_replication_slots"
    );
    assert_valid(|c| {
        c.postgresql.max_wal_senders = 2;
        c.postgresql.max_replication_slots = 1;
    });
    for bad in [
        "",
        "1G",
        "1 GB",
        "1gb",
        "-2",
        "1.5GB",
        "GB",
        "99999999999",
        "1GB ",
    ] {
        assert_eq!(
            bad_key(|c| c.postgresql.max_slot_wal_keep_size = bad.into()),
            "postgresql.max_slot_wal_keep_size",
            "{bad:?}"
        );
    }
    for good in ["-1", "0", "100", "64kB", "512MB", "1GB", "2TB"] {
        assert_valid(|c| c.postgresql.max_slot_wal_keep_size = good.into());
    }
}

#[test]
fn replication_password() {
    let mut c = minimal();
    c.replication.password_file = Some("/etc/pgbaton/repl.pw".into());
    c.replication.password_env = Some("REPL_PW".into());
    let e = c.validate().unwrap_err();
    assert_eq!(e.key, "replication.password_env");
    assert_eq!(e.expected, "only one of password_file and password_env");
    for bad in ["", "1X", "A-B", "A B"] {
        assert_eq!(
            bad_key(|c| c.replication.password_env = Some(bad.into())),
            "replication.password_env"
        );
    }
    assert_valid(|c| c.replication.password_env = Some("_Repl_PW2".into()));
    assert_valid(|c| c.replication.password_file = Some("/etc/pw".into()));
}

#[test]
fn parameters() {
    fn set(name: &str, value: ParamValue) -> impl FnOnce(&mut NodeConfig) {
        let name = name.to_string();
        move |c: &mut NodeConfig| {
            c.postgresql.parameters.insert(name, value);
        }
    }
    for bad_name in ["", "Work_mem", "9x", "a-b", "a b"] {
        assert_eq!(
            bad_key(set(bad_name, ParamValue::Int(1))),
            "postgresql.parameters",
            "{bad_name:?}"
        );
    }
    for managed in [
        "listen_addresses",
        "port",
        "unix_socket_directories",
        "hba_file",
        "ident_file",
        "config_file",
        "data_directory",
        "wal_level",
        "hot_standby",
        "max_wal_senders",
        "max_replication_slots",
        "max_slot_wal_keep_size",
        "primary_conninfo",
        "primary_slot_name",
        "archive_mode",
        "archive_command",
        "restore_command",
        "recovery_target",
        "recovery_target_time",
        "wal_log_hints",
        "password_encryption",
    ] {
        assert_eq!(
            bad_key(set(managed, ParamValue::Str("x".into()))),
            format!("postgresql.parameters.{managed}")
        );
    }
    let mut c = minimal();
    c.postgresql
        .parameters
        .insert("listen_addresses".into(), ParamValue::Str("*".into()));
    let e = c.validate().unwrap_err();
    assert!(e.expected.contains("postgresql.listen_host"), "{e}");
    assert_eq!(e.value, "\"*\"");
    let mut c = minimal();
    c.postgresql
        .parameters
        .insert("wal_level".into(), ParamValue::Str("logical".into()));
    assert!(c
        .validate()
        .unwrap_err()
        .expected
        .contains("managed by pgbaton"));
    let mut c = minimal();
    c.postgresql
        .parameters
        .insert("archive_command".into(), ParamValue::Str("cp".into()));
    assert!(c
        .validate()
        .unwrap_err()
        .expected
        .contains("postgresql.archive_dir"));

    for bad_value in ["a\nb", "a\0b", "a\rb"] {
        assert_eq!(
            bad_key(set("application_name", ParamValue::Str(bad_value.into()))),
            "postgresql.parameters.application_name"
        );
    }
    assert_eq!(
        bad_key(set("x.y", ParamValue::Float(f64::NAN))),
        "postgresql.parameters.x.y"
    );
    assert_valid(set(
        "shared_preload_libraries",
        ParamValue::Str("pg_stat_statements".into()),
    ));
    assert_valid(set("pg_stat_statements.max", ParamValue::Int(10000)));

    // Through the parser too.
    let e = parse_err(&with("[postgresql.parameters]\nport = 5433\n"));
    assert_eq!(e.key, "postgresql.parameters.port");
    assert!(e.expected.contains("postgresql.port"), "{e}");
}

#[test]
fn api() {
    for bad in [
        "",
        "localhost:8008",
        "127.0.0.1",
        "127.0.0.1:99999",
        ":8008",
    ] {
        assert_eq!(
            bad_key(|c| c.api.listen = bad.into()),
            "api.listen",
            "{bad:?}"
        );
    }
    for bad in ["", "ftp://x", "http://", "127.0.0.1:8008", "http://a b"] {
        assert_eq!(
            bad_key(|c| c.api.connect_url = Some(bad.into())),
            "api.connect_url",
            "{bad:?}"
        );
    }
    assert_valid(|c| c.api.listen = "[::1]:8008".into());
    assert_valid(|c| c.api.connect_url = Some("http://db1:8008".into()));
    // https:// exactly when the API serves TLS (audit: an https URL passed validation and
    // could never work).
    assert_eq!(
        bad_key(|c| c.api.connect_url = Some("https://db1:8008".into())),
        "api.connect_url"
    );
    let tls = || ApiTlsConfig {
        cert_file: "/etc/pgbaton/db1.crt".into(),
        key_file: "/etc/pgbaton/db1.key".into(),
        ca_file: "/etc/pgbaton/ca.crt".into(),
        verify_client: false,
    };
    assert_valid(|c| {
        c.api.tls = Some(tls());
        c.api.connect_url = Some("https://db1:8008".into());
    });
    assert_eq!(
        bad_key(|c| {
            c.api.tls = Some(tls());
            c.api.connect_url = Some("http://db1:8008".into());
        }),
        "api.connect_url"
    );
    assert_eq!(
        bad_key(|c| c.api.tls = Some(ApiTlsConfig {
            key_file: "db1.key".into(),
            ..tls()
        })),
        "api.tls.key_file"
    );
    let mut c = minimal();
    c.api.tls = Some(tls());
    assert_eq!(c.api_url(), "https://127.0.0.1:8008");
}

#[test]
fn timing() {
    assert_eq!(
        bad_key(|c| c.timing.loop_interval_ms = 99),
        "timing.loop_interval_ms"
    );
    assert_eq!(
        bad_key(|c| {
            c.timing.loop_interval_ms = 60_001;
            c.timing.ttl_ms = 3_600_000;
        }),
        "timing.loop_interval_ms"
    );
    assert_eq!(
        bad_key(|c| {
            c.timing.loop_interval_ms = 1000;
            c.timing.ttl_ms = 2999;
        }),
        "timing.ttl_ms"
    );
    assert_eq!(bad_key(|c| c.timing.ttl_ms = 3_600_001), "timing.ttl_ms");
    assert_eq!(
        bad_key(|c| c.timing.start_timeout_ms = 999),
        "timing.start_timeout_ms"
    );
    assert_eq!(
        bad_key(|c| c.timing.orphan_slot_grace_ms = 604_800_001),
        "timing.orphan_slot_grace_ms"
    );
    assert_valid(|c| {
        c.timing = TimingConfig {
            loop_interval_ms: 100,
            ttl_ms: 300,
            fence_margin_ms: 100,
            primary_restart_timeout_ms: 1000,
            start_timeout_ms: 1000,
            orphan_slot_grace_ms: 0,
        }
    });
    assert_valid(|c| {
        c.timing = TimingConfig {
            loop_interval_ms: 60_000,
            ttl_ms: 3_600_000,
            fence_margin_ms: 3_000_000,
            primary_restart_timeout_ms: 3_600_000,
            start_timeout_ms: 1000,
            orphan_slot_grace_ms: 604_800_000,
        }
    });
    // The fence must win the race against the lease's expiry, with room to renew.
    assert_eq!(
        bad_key(|c| c.timing.fence_margin_ms = 99),
        "timing.fence_margin_ms"
    );
    assert_eq!(
        bad_key(|c| c.timing.fence_margin_ms = c.timing.ttl_ms),
        "timing.fence_margin_ms"
    );
    let e = parse_err(&with(
        "[timing]\nloop_interval_ms = 1000\nttl_ms = 3000\nfence_margin_ms = 1001\n",
    ));
    assert_eq!(e.key, "timing.fence_margin_ms", "{e}");
    assert!(e.expected.contains("1000"), "{e}");
    assert_valid(|c| {
        c.timing.loop_interval_ms = 1000;
        c.timing.ttl_ms = 3000;
        c.timing.fence_margin_ms = 1000;
    });
    assert_eq!(
        bad_key(|c| c.timing.primary_restart_timeout_ms = 999),
        "timing.primary_restart_timeout_ms"
    );
    let e = parse_err(&with("[timing]\nloop_interval_ms = 5000\n"));
    assert_eq!(e.key, "timing.ttl_ms");
    assert!(e.expected.contains("15000"), "{e}");
}

#[test]
fn etcd_endpoints() {
    let etcd = |eps: &[&str]| {
        let endpoints = eps.iter().map(|s| s.to_string()).collect();
        move |c: &mut NodeConfig| {
            c.store = StoreConfig::Etcd {
                endpoints,
                access: EtcdAccess::default(),
            }
        }
    };
    assert_eq!(bad_key(etcd(&[])), "store.endpoints");
    for bad in [
        "10.0.0.1:2379",
        "http://10.0.0.1",
        "http://:2379",
        "http://h:0",
        "http://h:99999",
        "http://h:2379/",
        "grpc://h:2379",
        "http://[zz]:2379",
        "http://a b:1",
    ] {
        assert_eq!(
            bad_key(etcd(&["http://ok:2379", bad])),
            "store.endpoints",
            "{bad:?}"
        );
    }
    assert_valid(etcd(&[
        "http://10.0.0.1:2379",
        "http://etcd-1.example:2379",
        "http://[::1]:2379",
    ]));
    let e = parse_err(&MINIMAL.replace(
        "kind = \"local\"\npath = \"/var/lib/pgbaton/state.db\"",
        "kind = \"etcd\"\nendpoints = [\"etcd:2379\"]",
    ));
    assert_eq!(
        (e.key.as_str(), e.value.as_str()),
        ("store.endpoints", "\"etcd:2379\"")
    );
}

#[test]
fn etcd_tls_and_user() {
    let etcd = |eps: &[&str], access: EtcdAccess| {
        let endpoints = eps.iter().map(|s| s.to_string()).collect();
        move |c: &mut NodeConfig| c.store = StoreConfig::Etcd { endpoints, access }
    };
    let ca = || Some(PathBuf::from("/etc/pgbaton/ca.crt"));
    let tls = EtcdAccess {
        ca_file: ca(),
        ..Default::default()
    };
    assert_valid(etcd(&["https://a:2379", "https://b:2379"], tls.clone()));
    // One scheme for all.
    assert_eq!(
        bad_key(etcd(&["https://a:2379", "http://b:2379"], tls.clone())),
        "store.endpoints"
    );
    // https needs a CA; TLS files need https.
    assert_eq!(
        bad_key(etcd(&["https://a:2379"], EtcdAccess::default())),
        "store.ca_file"
    );
    assert_eq!(
        bad_key(etcd(&["http://a:2379"], tls.clone())),
        "store.endpoints"
    );
    // A certificate goes with its key, a user with its password file.
    let half = EtcdAccess {
        ca_file: ca(),
        cert_file: Some("/etc/pgbaton/c.crt".into()),
        ..Default::default()
    };
    assert_eq!(bad_key(etcd(&["https://a:2379"], half)), "store.key_file");
    let user = EtcdAccess {
        username: Some("pgbaton".into()),
        ..Default::default()
    };
    assert_eq!(
        bad_key(etcd(&["http://a:2379"], user)),
        "store.password_file"
    );
    // A password never goes over plain http (review finding).
    let plain_user = EtcdAccess {
        username: Some("pgbaton".into()),
        password_file: Some("/etc/pgbaton/etcd.password".into()),
        ..Default::default()
    };
    assert_eq!(
        bad_key(etcd(&["http://a:2379"], plain_user)),
        "store.endpoints"
    );
    let relative = EtcdAccess {
        ca_file: Some("ca.crt".into()),
        ..Default::default()
    };
    assert_eq!(
        bad_key(etcd(&["https://a:2379"], relative)),
        "store.ca_file"
    );
    // The etcd keys belong to kind = "etcd" only.
    let e = parse_err(&MINIMAL.replace(
        "path = \"/var/lib/pgbaton/state.db\"",
        "path = \"/var/lib/pgbaton/state.db\"\nca_file = \"/x\"",
    ));
    assert!(e.to_string().contains("ca_file"), "{e}");
}

#[test]
fn etcd_lease_ttl_is_whole_seconds_rounded_down() {
    let on_etcd = |timing: &str| {
        MINIMAL.replace(
            "kind = \"local\"\npath = \"/var/lib/pgbaton/state.db\"",
            &format!("kind = \"etcd\"\nendpoints = [\"http://etcd:2379\"]\n\n[timing]\n{timing}"),
        )
    };
    // The default 2.5 s: a 2 s etcd lease, and the fence counts on 2 s.
    assert_eq!(parse(&on_etcd("")).unwrap().timing.ttl_ms, 2_000);
    assert_eq!(
        parse(&on_etcd("ttl_ms = 3999")).unwrap().timing.ttl_ms,
        3_000
    );
    // The embedded store keeps milliseconds.
    assert_eq!(minimal().timing.ttl_ms, 2_500);
    // Rounded down below the timing rules: refused, saying why.
    let e = parse_err(&on_etcd("ttl_ms = 1900"));
    assert_eq!(e.key, "timing.ttl_ms");
    assert!(e.expected.contains("whole seconds"), "{e}");
}

#[test]
fn client_config_api_tls() {
    let file = Path::new("/srv/pg/pgbaton.toml");
    let base =
        "cluster = \"main\"\n\n[store]\nkind = \"local\"\npath = \"/srv/pg/state.db\"\n\n[api]\n";
    let ok = format!("{base}ca_file = \"/srv/pg/tls/ca.crt\"\n");
    let c = ClientConfig::from_toml_str(&ok, file).unwrap();
    assert_eq!(
        c.api.ca_file.as_deref(),
        Some(Path::new("/srv/pg/tls/ca.crt"))
    );
    let err = |text: String| ClientConfig::from_toml_str(&text, file).unwrap_err().key;
    assert_eq!(err(format!("{base}ca_file = \"ca.crt\"\n")), "api.ca_file");
    assert_eq!(
        err(format!("{base}ca_file = \"/c\"\ncert_file = \"/x.crt\"\n")),
        "api.key_file"
    );
    assert_eq!(
        err(format!(
            "{base}cert_file = \"/x.crt\"\nkey_file = \"/x.key\"\n"
        )),
        "api.ca_file"
    );
}

#[test]
fn client_config() {
    let file = Path::new("/srv/pg/pgbaton.toml");
    let text = "cluster = \"main\"\n\n[store]\nkind = \"local\"\npath = \"/srv/pg/state.db\"\n";
    let c = ClientConfig::from_toml_str(text, file).unwrap();
    assert_eq!(c.cluster, "main");
    assert_eq!(
        c.store,
        StoreConfig::Local {
            path: "/srv/pg/state.db".into()
        }
    );
    assert_eq!(
        ClientConfig::from_toml_str(&c.to_toml_string(), file).unwrap(),
        c
    );

    let e = ClientConfig::from_toml_str(&format!("name = \"x\"\n{text}"), file).unwrap_err();
    assert_eq!(e.key, "name");
    assert_eq!(e.value, "(unknown key)");
    assert_eq!(e.file.as_deref(), Some(file));
    let e = ClientConfig::from_toml_str(&text.replace("path = ", "paht = \"/a\"\npath = "), file)
        .unwrap_err();
    assert_eq!(e.key, "store.paht");
    let e = ClientConfig::from_toml_str(&text.replace("\"main\"", "\"\""), file).unwrap_err();
    assert_eq!(e.key, "cluster");
    let e =
        ClientConfig::from_toml_str(&text.replace("\"/srv/pg/state.db\"", "\"state.db\""), file)
            .unwrap_err();
    assert_eq!(e.key, "store.path");
    assert!(e
        .to_string()
        .starts_with("/srv/pg/pgbaton.toml: key `store.path`: bad value \"state.db\""));
}

#[test]
fn key_context_scan() {
    let text = "a = 1\n[t.u]\nb = { c = [1, { d = \"x,}\" }], e = 2 } # {\nf.g = 3\n";
    let at = |needle: &str| key_context(text, text.find(needle).unwrap());
    assert_eq!(
        at("1\n"),
        KeyContext {
            table: vec![],
            value_of: Some(vec!["a".into()])
        }
    );
    assert_eq!(at("[t.u]").table, ["t", "u"]);
    assert_eq!(at("b =").value_of, None);
    assert_eq!(at("b =").table, ["t", "u"]);
    assert_eq!(at("c =").table, ["t", "u", "b"]);
    assert_eq!(at("1,").value_of.unwrap(), ["t", "u", "b", "c"]);
    assert_eq!(at("d =").table, ["t", "u", "b", "c"]);
    assert_eq!(at("e =").table, ["t", "u", "b"]);
    assert_eq!(at("2 }").value_of.unwrap(), ["t", "u", "b", "e"]);
    assert_eq!(at("g =").table, ["t", "u", "f"]);
    assert_eq!(at("3\n").value_of.unwrap(), ["t", "u", "f", "g"]);
}

#[test]
fn synchronous_settings_parse_and_bad_values_name_the_key() {
    let c = parse(&with(
        "[replication]\nsynchronous = \"quorum\"\nsynchronous_node_count = 2\nsynchronous_strict = true\nmax_lag_on_syncnode_bytes = 1048576\n[tags]\nnosync = true\n",
    ))
    .unwrap();
    let s = c.replication.sync_settings();
    assert_eq!(s.mode, crate::sync::SyncMode::Quorum);
    assert_eq!(
        (s.node_count, s.strict, s.max_lag_bytes),
        (2, true, Some(1 << 20))
    );
    assert!(c.tags.nosync);
    // Defaults: asynchronous, one standby, not strict, no lag limit.
    let d = parse(MINIMAL).unwrap().replication.sync_settings();
    assert_eq!(d, crate::sync::SyncSettings::default());
    let e = parse_err(&with("[replication]\nsynchronous = \"always\"\n")).to_string();
    assert!(e.contains("synchronous") && e.contains("always"), "{e}");
    assert!(e.contains("off") && e.contains("quorum"), "{e}");
    let e = parse_err(&with("[replication]\nmax_lag_on_syncnode_bytes = -1\n")).to_string();
    assert!(
        e.contains("max_lag_on_syncnode_bytes") && e.contains("-1"),
        "{e}"
    );
    let e = parse_err(&with("[replication]\nsynchronous_node_count = 0\n")).to_string();
    assert!(
        e.contains("synchronous_node_count") && e.contains("1 to 64"),
        "{e}"
    );
    let e = parse_err(&with(
        "[postgresql.parameters]\nsynchronous_standby_names = \"*\"\n",
    ))
    .to_string();
    assert!(e.contains("replication.synchronous"), "{e}");
}
