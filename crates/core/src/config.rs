//! pgbaton's TOML configuration: types, defaults, parsing and validation.
//!
//! Two files exist:
//!
//! * the node config ([`NodeConfig`]), read by the agent running next to one PostgreSQL
//!   instance;
//! * the client config ([`ClientConfig`]), taken by every other CLI command with `-c`
//!   (just enough to find the cluster's store).
//!
//! Everything here is pure: the caller reads the file and passes its text together with
//! its path (used only in error messages). Defaults that depend on other keys (socket dir,
//! pgpass file, API URL, ...) are left as `None` in the parsed structs and resolved by the
//! accessor methods on [`NodeConfig`], so that a config written back with
//! [`NodeConfig::to_toml_string`] stays as short as the user wrote it.
//!
//! Every error is a [`ConfigError`] naming the file, the key, the bad value and what was
//! expected.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// The configuration of one node: one PostgreSQL instance and the agent managing it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Name of the cluster this node belongs to (the same on every node).
    pub cluster: String,
    /// Name of this node, unique within the cluster.
    pub name: String,
    /// PostgreSQL data directory (absolute).
    pub data_dir: PathBuf,
    /// OS user PostgreSQL runs as when pgbaton is started as root (resolved outside core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_user: Option<String>,
    /// The `[postgresql]` table.
    #[serde(default)]
    pub postgresql: PostgresqlConfig,
    /// The `[replication]` table.
    #[serde(default)]
    pub replication: ReplicationConfig,
    /// The `[api]` table.
    #[serde(default)]
    pub api: ApiConfig,
    /// The `[store]` table: where the cluster state and leader lease live.
    pub store: StoreConfig,
    /// The `[timing]` table.
    #[serde(default)]
    pub timing: TimingConfig,
    /// The `[tags]` table: what this member is for.
    #[serde(default)]
    pub tags: TagsConfig,
    /// The `[failover]` table: when a standby may be promoted automatically.
    #[serde(default)]
    pub failover: FailoverConfig,
}

/// The `[failover]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailoverConfig {
    /// A standby further behind the last known primary position than this many bytes is never
    /// promoted automatically. Default 1048576 (1 MiB, as Patroni's `maximum_lag_on_failover`).
    pub max_lag_bytes: u64,
    /// While the store is unreachable, a primary that every other member confirms over the
    /// agents' API keeps running instead of fencing itself (Patroni's failsafe mode).
    /// Needs API credentials (`api.auth_token_file`). Default true.
    pub failsafe: bool,
    /// When a former primary cannot be rewound, re-clone it automatically (its data directory
    /// is replaced). Default false: it waits for `pgbaton reinit`.
    pub reclone_on_rewind_failure: bool,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            max_lag_bytes: 1_048_576,
            failsafe: true,
            reclone_on_rewind_failure: false,
        }
    }
}

/// The `[tags]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TagsConfig {
    /// Never make this member the primary automatically. Default false.
    pub nofailover: bool,
    /// Keep this member out of read load balancing: `/replica` answers 503. Default false.
    pub noloadbalance: bool,
    /// Preference among failover candidates (higher first; 0 = never). Default 1.
    #[serde(default = "one")]
    pub failover_priority: u32,
}

fn one() -> u32 {
    1
}

impl Default for TagsConfig {
    fn default() -> Self {
        TagsConfig {
            nofailover: false,
            noloadbalance: false,
            failover_priority: 1,
        }
    }
}

/// The `[postgresql]` table: how to run and reach the PostgreSQL instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresqlConfig {
    /// Directory holding `postgres`, `pg_ctl`, ...; `None`: found at runtime (outside core).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bin_dir: Option<PathBuf>,
    /// Address PostgreSQL listens on (becomes `listen_addresses`). Default `127.0.0.1`.
    pub listen_host: String,
    /// Address the other nodes use to reach this PostgreSQL. Default: `listen_host`;
    /// required when `listen_host` is a wildcard (`0.0.0.0`, `::`, `*`) or a list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_host: Option<String>,
    /// TCP port. Default 5432.
    pub port: u16,
    /// Unix socket directory. Default `<base_dir>/run` (see [`NodeConfig::socket_dir`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_dir: Option<PathBuf>,
    /// Superuser role. Default `postgres`.
    pub superuser: String,
    /// pgpass file pgbaton maintains. Default `<base_dir>/pgpass`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgpass: Option<PathBuf>,
    /// PostgreSQL's log file. Default `<base_dir>/postgres.log`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_file: Option<PathBuf>,
    /// WAL archive directory; `None` means archiving is off. Every member archives into it
    /// (`archive_mode = always`, through `pgbaton wal-push`) and restores from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_dir: Option<PathBuf>,
    /// The pgbaton executable PostgreSQL runs to archive and restore WAL (`wal-push`,
    /// `wal-fetch`). Default: the agent's own executable. The OS user must be able to run it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgbaton_bin: Option<PathBuf>,
    /// CIDRs allowed to connect (written as pg_hba `host` lines).
    /// Default `["127.0.0.1/32", "::1/128"]`.
    pub allowed_networks: Vec<String>,
    /// Databases to create at bootstrap. Default none.
    pub databases: Vec<String>,
    /// `max_wal_senders`. Default 10.
    pub max_wal_senders: u32,
    /// `max_replication_slots`. Default 10.
    pub max_replication_slots: u32,
    /// `max_slot_wal_keep_size`, a PostgreSQL size (`1GB`, `512MB`, `-1`). Default `1GB`.
    pub max_slot_wal_keep_size: String,
    /// Extra `postgresql.conf` parameters. Default none.
    pub parameters: BTreeMap<String, ParamValue>,
}

impl Default for PostgresqlConfig {
    fn default() -> Self {
        PostgresqlConfig {
            bin_dir: None,
            listen_host: "127.0.0.1".to_string(),
            connect_host: None,
            port: 5432,
            socket_dir: None,
            superuser: "postgres".to_string(),
            pgpass: None,
            log_file: None,
            archive_dir: None,
            pgbaton_bin: None,
            allowed_networks: vec!["127.0.0.1/32".to_string(), "::1/128".to_string()],
            databases: Vec::new(),
            max_wal_senders: 10,
            max_replication_slots: 10,
            max_slot_wal_keep_size: "1GB".to_string(),
            parameters: BTreeMap::new(),
        }
    }
}

/// The value of an extra `postgresql.conf` parameter, as written in TOML.
///
/// Serialized untagged (a plain TOML boolean, integer, float or string). Deserialization
/// is hand-written only to give a clearer error than serde's untagged enums do.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// `on` / `off`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating point number.
    Float(f64),
    /// A string (rendered single-quoted).
    Str(String),
}

impl ParamValue {
    /// The value as a `postgresql.conf` literal: booleans `on`/`off`, numbers as they are,
    /// strings single-quoted with `'` and `\` doubled (`it's` gives `'it''s'`).
    pub fn render(&self) -> String {
        match self {
            ParamValue::Bool(true) => "on".to_string(),
            ParamValue::Bool(false) => "off".to_string(),
            ParamValue::Int(i) => i.to_string(),
            ParamValue::Float(f) => f.to_string(),
            ParamValue::Str(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''")),
        }
    }

    /// The value as a TOML literal, for error messages.
    fn toml_literal(&self) -> String {
        match self {
            ParamValue::Bool(b) => b.to_string(),
            ParamValue::Int(i) => i.to_string(),
            ParamValue::Float(f) => f.to_string(),
            ParamValue::Str(s) => lit(s),
        }
    }
}

impl<'de> Deserialize<'de> for ParamValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ParamVisitor;
        impl Visitor<'_> for ParamVisitor {
            type Value = ParamValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean, integer, float or string")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ParamValue, E> {
                Ok(ParamValue::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ParamValue, E> {
                Ok(ParamValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ParamValue, E> {
                i64::try_from(v)
                    .map(ParamValue::Int)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ParamValue, E> {
                Ok(ParamValue::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ParamValue, E> {
                Ok(ParamValue::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<ParamValue, E> {
                Ok(ParamValue::Str(v))
            }
        }
        d.deserialize_any(ParamVisitor)
    }
}

/// The `[replication]` table: the role standbys connect as.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Replication role. Default `replicator`.
    pub user: String,
    /// File holding the replication password (at most one of this and `password_env`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Name of an environment variable holding the replication password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            user: "replicator".to_string(),
            password_file: None,
            password_env: None,
        }
    }
}

/// The `[api]` table: the agent's HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Socket address to listen on. Default `127.0.0.1:8008`.
    pub listen: String,
    /// URL others use to reach the API. Default `http://<listen>` (see [`NodeConfig::api_url`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_url: Option<String>,
    /// A file (0600) holding a token: mutating requests must send `Authorization: Bearer <token>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token_file: Option<PathBuf>,
    /// Basic authentication for mutating requests: this user name, with the password in
    /// `auth_password_file`. Either or both of token and basic may be set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_password_file: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8008".to_string(),
            connect_url: None,
            auth_token_file: None,
            auth_username: None,
            auth_password_file: None,
        }
    }
}

/// The `[store]` table: where the cluster state and the leader lease are kept.
/// Selected by `kind = "local"` or `kind = "etcd"`.
///
/// Serialized as an internally tagged enum (`kind = "..."` next to the variant's keys).
/// Deserialization is hand-written (through `RawStore`) rather than derived: serde's
/// internally tagged enums buffer the table and so lose the position and name of a
/// badly typed key; this way every error names its key and line, and unknown keys
/// (including the other kind's keys) are still rejected.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StoreConfig {
    /// A SQLite file shared by all nodes on one host (absolute path).
    Local {
        /// Path of the SQLite file.
        path: PathBuf,
    },
    /// An etcd cluster.
    Etcd {
        /// Client URLs, each `http://host:port` or `https://host:port`.
        endpoints: Vec<String>,
    },
}

/// Everything a `[store]` table may contain, before it is checked against its `kind`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    kind: StoreKind,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    endpoints: Option<Vec<String>>,
}

/// The `kind` of a `[store]`.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    Local,
    Etcd,
}

impl<'de> Deserialize<'de> for StoreConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Errors use serde's standard wording so that they are reported like derived ones.
        let raw = RawStore::deserialize(d)?;
        match raw.kind {
            StoreKind::Local => {
                if raw.endpoints.is_some() {
                    return Err(de::Error::unknown_field("endpoints", &["kind", "path"]));
                }
                let path = raw.path.ok_or_else(|| de::Error::missing_field("path"))?;
                Ok(StoreConfig::Local { path })
            }
            StoreKind::Etcd => {
                if raw.path.is_some() {
                    return Err(de::Error::unknown_field("path", &["kind", "endpoints"]));
                }
                let endpoints = raw
                    .endpoints
                    .ok_or_else(|| de::Error::missing_field("endpoints"))?;
                Ok(StoreConfig::Etcd { endpoints })
            }
        }
    }
}

/// The `[timing]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimingConfig {
    /// Interval of the agent's main loop. Default 500; 100..=60000.
    pub loop_interval_ms: u64,
    /// Leader lease TTL. Default 2500; at least 3 × `loop_interval_ms`, at most 3600000.
    pub ttl_ms: u64,
    /// The primary fences itself (stops PostgreSQL) this long before its lease could expire
    /// for anyone else, counted from the start of its last successful renewal. Default 500;
    /// at least 100, and `ttl_ms - fence_margin_ms` must leave room for two renewals
    /// (2 × `loop_interval_ms`).
    pub fence_margin_ms: u64,
    /// How long the leader tries to bring its crashed PostgreSQL back in place before it
    /// hands the lease to a standby. Default 30000; 1000..=3600000.
    pub primary_restart_timeout_ms: u64,
    /// How long to wait for PostgreSQL to start. Default 60000; at least 1000.
    pub start_timeout_ms: u64,
    /// How long the primary keeps a pgbaton-named slot that belongs to no member before it
    /// drops it. Default 300000 (5 min); 0..=604800000 (a week).
    pub orphan_slot_grace_ms: u64,
}

impl Default for TimingConfig {
    fn default() -> Self {
        TimingConfig {
            loop_interval_ms: 500,
            ttl_ms: 2_500,
            fence_margin_ms: 500,
            primary_restart_timeout_ms: 30_000,
            start_timeout_ms: 60_000,
            orphan_slot_grace_ms: 300_000,
        }
    }
}

/// The config every other CLI command takes with -c (written by `pgbaton up` to DIR/pgbaton.toml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Name of the cluster.
    pub cluster: String,
    /// Where the cluster state lives.
    pub store: StoreConfig,
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// A bad config: which file, which key, what value and what was expected.
///
/// Displayed as ``{file}: key `{key}`: bad value {value}: expected {expected}`` (without
/// the file part when `file` is `None`). For errors found by the TOML parser, `expected`
/// ends with the line and column, e.g. `(line 5, column 1)`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigError {
    /// The config file, when known.
    pub file: Option<PathBuf>,
    /// Dotted key, e.g. `postgresql.port`.
    pub key: String,
    /// The offending value as written (a TOML literal), or `(unknown key)`, `(missing)`,
    /// `(not set)`.
    pub value: String,
    /// What would have been accepted.
    pub expected: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        write!(
            f,
            "key `{}`: bad value {}: expected {}",
            self.key, self.value, self.expected
        )
    }
}

impl ConfigError {
    fn new(key: impl Into<String>, value: impl Into<String>, expected: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            key: key.into(),
            value: value.into(),
            expected: expected.into(),
        }
    }

    fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_path_buf());
        self
    }
}

// ---------------------------------------------------------------------------------------
// Parsing, serializing, resolved defaults
// ---------------------------------------------------------------------------------------

impl NodeConfig {
    /// Parse and validate. `file` is only used in error messages.
    pub fn from_toml_str(text: &str, file: &Path) -> Result<NodeConfig, ConfigError> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| toml_error(&e, text, file))?;
        config.validate().map_err(|e| e.in_file(file))?;
        Ok(config)
    }

    /// Check every rule: names, absolute paths, hosts and ports, role and database names,
    /// networks, replication limits, extra parameters (not one pgbaton manages), API
    /// address, store and timing ranges. Stops at the first error, which has `file: None`
    /// ([`from_toml_str`](Self::from_toml_str) fills it in).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_name("cluster", &self.cluster)?;
        check_name("name", &self.name)?;
        check_abs_path("data_dir", &self.data_dir)?;
        if let Some(user) = &self.os_user {
            if user.is_empty()
                || user.starts_with('-')
                || user
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '/')
            {
                return Err(ConfigError::new(
                    "os_user",
                    lit(user),
                    "an OS user name (not empty, no whitespace, ':' or '/')",
                ));
            }
        }
        self.postgresql.validate()?;
        self.replication.validate(&self.postgresql)?;
        self.api.validate()?;
        self.store.validate()?;
        self.timing.validate()
    }

    /// The config as TOML text; parses back with [`NodeConfig::from_toml_str`] to an equal
    /// config. Options that are `None` are left out.
    ///
    /// # Panics
    /// If a path is not valid UTF-8 (impossible for a config that came from TOML text).
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).expect("a NodeConfig is always representable in TOML")
    }

    /// The directory holding the data directory; base of the default file locations.
    /// (`data_dir` itself if it has no parent.)
    pub fn base_dir(&self) -> PathBuf {
        self.data_dir
            .parent()
            .unwrap_or(&self.data_dir)
            .to_path_buf()
    }

    /// `postgresql.socket_dir`, default `<base_dir>/run`.
    pub fn socket_dir(&self) -> PathBuf {
        self.postgresql
            .socket_dir
            .clone()
            .unwrap_or_else(|| self.base_dir().join("run"))
    }

    /// `postgresql.pgpass`, default `<base_dir>/pgpass`.
    pub fn pgpass_path(&self) -> PathBuf {
        self.postgresql
            .pgpass
            .clone()
            .unwrap_or_else(|| self.base_dir().join("pgpass"))
    }

    /// `postgresql.log_file`, default `<base_dir>/postgres.log`.
    pub fn log_file(&self) -> PathBuf {
        self.postgresql
            .log_file
            .clone()
            .unwrap_or_else(|| self.base_dir().join("postgres.log"))
    }

    /// The host others use to reach this PostgreSQL: `postgresql.connect_host`, default
    /// `postgresql.listen_host`.
    pub fn connect_host(&self) -> String {
        self.postgresql
            .connect_host
            .clone()
            .unwrap_or_else(|| self.postgresql.listen_host.clone())
    }

    /// The URL others use to reach this node's API: `api.connect_url`, default
    /// `http://<api.listen>`, with the IP replaced by [`connect_host`](Self::connect_host)
    /// when `api.listen` is a wildcard (`0.0.0.0` / `::`).
    pub fn api_url(&self) -> String {
        if let Some(url) = &self.api.connect_url {
            return url.clone();
        }
        match self.api.listen.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_unspecified() => {
                let host = self.connect_host();
                if host.parse::<Ipv6Addr>().is_ok() {
                    format!("http://[{host}]:{}", addr.port())
                } else {
                    format!("http://{host}:{}", addr.port())
                }
            }
            Ok(addr) => format!("http://{addr}"),
            // Only reachable when `validate` was not called.
            Err(_) => format!("http://{}", self.api.listen),
        }
    }
}

impl ClientConfig {
    /// Parse and validate. `file` is only used in error messages.
    pub fn from_toml_str(text: &str, file: &Path) -> Result<ClientConfig, ConfigError> {
        let config: ClientConfig = toml::from_str(text).map_err(|e| toml_error(&e, text, file))?;
        config.validate().map_err(|e| e.in_file(file))?;
        Ok(config)
    }

    /// Check the cluster name and the store. Errors carry `file: None`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_name("cluster", &self.cluster)?;
        self.store.validate()
    }

    /// The config as TOML text.
    ///
    /// # Panics
    /// If the store path is not valid UTF-8.
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).expect("a ClientConfig is always representable in TOML")
    }
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

/// postgresql.conf parameters pgbaton sets itself, with the config key to use instead
/// (`None`: nothing to configure, pgbaton decides).
const MANAGED_PARAMETERS: &[(&str, Option<&str>)] = &[
    ("listen_addresses", Some("postgresql.listen_host")),
    ("port", Some("postgresql.port")),
    ("unix_socket_directories", Some("postgresql.socket_dir")),
    ("hba_file", None),
    ("ident_file", None),
    ("config_file", None),
    ("data_directory", None),
    ("wal_level", None),
    ("hot_standby", None),
    ("max_wal_senders", Some("postgresql.max_wal_senders")),
    (
        "max_replication_slots",
        Some("postgresql.max_replication_slots"),
    ),
    (
        "max_slot_wal_keep_size",
        Some("postgresql.max_slot_wal_keep_size"),
    ),
    ("primary_conninfo", None),
    ("primary_slot_name", None),
    ("archive_mode", Some("postgresql.archive_dir")),
    ("archive_command", Some("postgresql.archive_dir")),
    ("restore_command", Some("postgresql.archive_dir")),
    ("wal_log_hints", None),
    ("password_encryption", None),
];

/// Databases that always exist and must not be listed in `postgresql.databases`.
const BUILTIN_DATABASES: &[&str] = &["postgres", "template0", "template1"];

impl PostgresqlConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, path) in [
            ("postgresql.bin_dir", &self.bin_dir),
            ("postgresql.socket_dir", &self.socket_dir),
            ("postgresql.pgpass", &self.pgpass),
            ("postgresql.log_file", &self.log_file),
            ("postgresql.archive_dir", &self.archive_dir),
            ("postgresql.pgbaton_bin", &self.pgbaton_bin),
        ] {
            if let Some(path) = path {
                check_abs_path(key, path)?;
            }
        }
        // Both end up single-quoted in the archive and restore commands (a shell line).
        for (key, path) in [
            ("postgresql.archive_dir", &self.archive_dir),
            ("postgresql.pgbaton_bin", &self.pgbaton_bin),
        ] {
            if let Some(p) = path.as_deref().and_then(|p| p.to_str().or(Some("\0"))) {
                if p.chars().any(|c| c.is_control() || c == '\'') {
                    return Err(ConfigError::new(
                        key,
                        lit(p),
                        "a UTF-8 path without quotes or control characters (it goes into a shell command)",
                    ));
                }
            }
        }

        // listen_host: any host, IP, `*` or comma-separated list; it ends up quoted in
        // postgresql.conf, so no quotes, backslashes or control characters.
        let host_expected = "a host name, IP address, '*' or a comma-separated list of them";
        if self.listen_host.trim().is_empty() || !is_safe_host_text(&self.listen_host) {
            return Err(ConfigError::new(
                "postgresql.listen_host",
                lit(&self.listen_host),
                host_expected,
            ));
        }
        match &self.connect_host {
            Some(host) => {
                if host.trim().is_empty()
                    || !is_safe_host_text(host)
                    || host.contains(',')
                    || host == "*"
                {
                    return Err(ConfigError::new(
                        "postgresql.connect_host",
                        lit(host),
                        "one host name or IP address other nodes can reach this PostgreSQL at",
                    ));
                }
            }
            None => {
                let listen = self.listen_host.trim();
                let wildcard =
                    listen == "*" || listen.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified());
                if wildcard || listen.contains(',') {
                    return Err(ConfigError::new(
                        "postgresql.connect_host",
                        "(not set)",
                        format!(
                            "a host name or IP address other nodes can reach this PostgreSQL at \
                             (required because listen_host is {})",
                            lit(&self.listen_host)
                        ),
                    ));
                }
            }
        }
        if self.port == 0 {
            return Err(ConfigError::new(
                "postgresql.port",
                "0",
                "a TCP port, 1..=65535",
            ));
        }

        check_identifier("postgresql.superuser", &self.superuser)?;

        if self.allowed_networks.is_empty() {
            return Err(ConfigError::new(
                "postgresql.allowed_networks",
                "[]",
                "at least one network in CIDR notation, like \"10.0.0.0/8\"",
            ));
        }
        for net in &self.allowed_networks {
            if !is_cidr(net) {
                return Err(ConfigError::new(
                    "postgresql.allowed_networks",
                    lit(net),
                    "a network in CIDR notation: \"a.b.c.d/n\" (n <= 32) or an IPv6 \"x::y/n\" (n <= 128)",
                ));
            }
        }

        for (i, db) in self.databases.iter().enumerate() {
            check_identifier("postgresql.databases", db)?;
            if BUILTIN_DATABASES.contains(&db.as_str()) {
                return Err(ConfigError::new(
                    "postgresql.databases",
                    lit(db),
                    "a database name other than postgres, template0 and template1 (they always exist)",
                ));
            }
            if self.databases[..i].contains(db) {
                return Err(ConfigError::new(
                    "postgresql.databases",
                    lit(db),
                    "each database listed only once",
                ));
            }
        }

        if self.max_wal_senders < 2 {
            return Err(ConfigError::new(
                "postgresql.max_wal_senders",
                self.max_wal_senders.to_string(),
                "at least 2 (room for a standby and a base backup)",
            ));
        }
        if self.max_replication_slots < 1 {
            return Err(ConfigError::new(
                "postgresql.max_replication_slots",
                self.max_replication_slots.to_string(),
                "at least 1",
            ));
        }
        if !is_pg_size(&self.max_slot_wal_keep_size) {
            return Err(ConfigError::new(
                "postgresql.max_slot_wal_keep_size",
                lit(&self.max_slot_wal_keep_size),
                "a size: an integer with an optional unit kB, MB, GB or TB (like \"1GB\"), or \"-1\" for no limit",
            ));
        }

        for (name, value) in &self.parameters {
            check_parameter(name, value)?;
        }
        Ok(())
    }
}

/// One entry of `postgresql.parameters`.
fn check_parameter(name: &str, value: &ParamValue) -> Result<(), ConfigError> {
    let key = format!("postgresql.parameters.{name}");
    let mut chars = name.chars();
    let valid_name = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    if !valid_name {
        return Err(ConfigError::new(
            "postgresql.parameters",
            lit(name),
            "parameter names of lowercase letters, digits, '_' and '.', starting with a letter or '_'",
        ));
    }
    let managed = MANAGED_PARAMETERS
        .iter()
        .find(|(p, _)| *p == name)
        .map(|(_, use_key)| *use_key);
    let managed = managed.or_else(|| name.starts_with("recovery_target").then_some(None));
    if let Some(use_key) = managed {
        let expected = match use_key {
            Some(k) => format!("a parameter pgbaton does not manage (set `{k}` instead)"),
            None => format!("a parameter pgbaton does not manage (`{name}` is managed by pgbaton)"),
        };
        return Err(ConfigError::new(key, value.toml_literal(), expected));
    }
    match value {
        ParamValue::Str(s) if s.contains(['\n', '\r', '\0']) => Err(ConfigError::new(
            key,
            value.toml_literal(),
            "a string without newlines or NUL characters",
        )),
        ParamValue::Float(f) if !f.is_finite() => Err(ConfigError::new(
            key,
            value.toml_literal(),
            "a finite number",
        )),
        _ => Ok(()),
    }
}

impl ReplicationConfig {
    fn validate(&self, pg: &PostgresqlConfig) -> Result<(), ConfigError> {
        check_identifier("replication.user", &self.user)?;
        if self.user == pg.superuser {
            return Err(ConfigError::new(
                "replication.user",
                lit(&self.user),
                format!(
                    "a role other than postgresql.superuser ({})",
                    lit(&pg.superuser)
                ),
            ));
        }
        if let Some(path) = &self.password_file {
            check_abs_path("replication.password_file", path)?;
        }
        if let Some(var) = &self.password_env {
            if self.password_file.is_some() {
                return Err(ConfigError::new(
                    "replication.password_env",
                    lit(var),
                    "only one of password_file and password_env",
                ));
            }
            let mut chars = var.chars();
            let valid = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(ConfigError::new(
                    "replication.password_env",
                    lit(var),
                    "an environment variable name: letters, digits and '_', not starting with a digit",
                ));
            }
        }
        Ok(())
    }
}

impl ApiConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::new(
                "api.listen",
                lit(&self.listen),
                "an IP address and port, like \"127.0.0.1:8008\" or \"[::]:8008\"",
            ));
        }
        if let Some(url) = &self.connect_url {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            if !rest.is_some_and(|r| !r.is_empty() && !r.contains(char::is_whitespace)) {
                return Err(ConfigError::new(
                    "api.connect_url",
                    lit(url),
                    "a URL starting with http:// or https://",
                ));
            }
        }
        if let Some(p) = &self.auth_token_file {
            check_abs_path("api.auth_token_file", p)?;
        }
        if let Some(p) = &self.auth_password_file {
            check_abs_path("api.auth_password_file", p)?;
        }
        match (&self.auth_username, &self.auth_password_file) {
            (Some(u), None) => {
                return Err(ConfigError::new(
                    "api.auth_password_file",
                    "(not set)".to_string(),
                    format!("a password file for api.auth_username = {}", lit(u)),
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "api.auth_username",
                    "(not set)".to_string(),
                    "a user name for api.auth_password_file",
                ))
            }
            (Some(u), Some(_)) if u.is_empty() || u.contains(':') => {
                return Err(ConfigError::new(
                    "api.auth_username",
                    lit(u),
                    "a non-empty user name without ':'",
                ))
            }
            _ => {}
        }
        Ok(())
    }
}

impl StoreConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        match self {
            StoreConfig::Local { path } => check_abs_path("store.path", path),
            StoreConfig::Etcd { endpoints } => {
                if endpoints.is_empty() {
                    return Err(ConfigError::new(
                        "store.endpoints",
                        "[]",
                        "at least one etcd endpoint, like \"http://10.0.0.1:2379\"",
                    ));
                }
                for ep in endpoints {
                    if !is_http_endpoint(ep) {
                        return Err(ConfigError::new(
                            "store.endpoints",
                            lit(ep),
                            "an etcd endpoint \"http://host:port\" or \"https://host:port\"",
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

impl TimingConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(100..=60_000).contains(&self.loop_interval_ms) {
            return Err(ConfigError::new(
                "timing.loop_interval_ms",
                self.loop_interval_ms.to_string(),
                "a number of milliseconds in 100..=60000",
            ));
        }
        let min_ttl = 3 * self.loop_interval_ms;
        if self.ttl_ms < min_ttl || self.ttl_ms > 3_600_000 {
            return Err(ConfigError::new(
                "timing.ttl_ms",
                self.ttl_ms.to_string(),
                format!(
                    "a number of milliseconds, at least 3 × timing.loop_interval_ms ({min_ttl}) \
                     and at most 3600000"
                ),
            ));
        }
        if self.fence_margin_ms < 100 || self.fence_margin_ms >= self.ttl_ms {
            return Err(ConfigError::new(
                "timing.fence_margin_ms",
                self.fence_margin_ms.to_string(),
                format!(
                    "a number of milliseconds, at least 100 and below timing.ttl_ms ({})",
                    self.ttl_ms
                ),
            ));
        }
        let room = 2 * self.loop_interval_ms;
        if self.ttl_ms - self.fence_margin_ms < room {
            return Err(ConfigError::new(
                "timing.fence_margin_ms",
                self.fence_margin_ms.to_string(),
                format!(
                    "at most timing.ttl_ms - 2 × timing.loop_interval_ms ({}): the primary must \
                     get two chances to renew its lease before it fences itself",
                    self.ttl_ms.saturating_sub(room)
                ),
            ));
        }
        if !(1000..=3_600_000).contains(&self.primary_restart_timeout_ms) {
            return Err(ConfigError::new(
                "timing.primary_restart_timeout_ms",
                self.primary_restart_timeout_ms.to_string(),
                "a number of milliseconds in 1000..=3600000",
            ));
        }
        if self.start_timeout_ms < 1000 {
            return Err(ConfigError::new(
                "timing.start_timeout_ms",
                self.start_timeout_ms.to_string(),
                "a number of milliseconds, at least 1000",
            ));
        }
        if self.orphan_slot_grace_ms > 604_800_000 {
            return Err(ConfigError::new(
                "timing.orphan_slot_grace_ms",
                self.orphan_slot_grace_ms.to_string(),
                "a number of milliseconds, at most 604800000 (a week)",
            ));
        }
        Ok(())
    }
}

/// A string as a TOML-ish quoted literal, for error messages.
fn lit(s: &str) -> String {
    format!("{s:?}")
}

/// Cluster and node names: 1..=63 of `[A-Za-z0-9_.-]`, starting with a letter or digit.
fn check_name(key: &str, value: &str) -> Result<(), ConfigError> {
    let valid = (1..=63).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            lit(value),
            "1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit",
        ))
    }
}

/// A plain PostgreSQL identifier: `[a-z_][a-z0-9_]{0,62}`.
fn check_identifier(key: &str, value: &str) -> Result<(), ConfigError> {
    let valid = (1..=63).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            lit(value),
            "a plain PostgreSQL identifier: 1 to 63 lowercase letters, digits or '_', not starting with a digit",
        ))
    }
}

fn check_abs_path(key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            lit(&path.to_string_lossy()),
            "an absolute path",
        ))
    }
}

/// Host text that can go inside a single-quoted postgresql.conf value and a conninfo.
fn is_safe_host_text(s: &str) -> bool {
    !s.chars()
        .any(|c| c.is_control() || matches!(c, '\'' | '"' | '\\'))
}

/// `a.b.c.d/n` with n <= 32, or an IPv6 address `/n` with n <= 128.
fn is_cidr(s: &str) -> bool {
    let Some((ip, prefix)) = s.split_once('/') else {
        return false;
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return false;
    };
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let max = if ip.is_ipv4() { 32 } else { 128 };
    prefix.parse::<u32>().is_ok_and(|n| n <= max)
}

/// A PostgreSQL size: `-1`, or an integer with an optional unit kB, MB, GB or TB.
fn is_pg_size(s: &str) -> bool {
    if s == "-1" {
        return true;
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    !number.is_empty()
        && number.parse::<i32>().is_ok()
        && matches!(unit, "" | "kB" | "MB" | "GB" | "TB")
}

/// `http://host:port` or `https://host:port` (host: a name, IPv4 or `[IPv6]`; no path).
fn is_http_endpoint(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
    else {
        return false;
    };
    let (host_ok, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        match bracketed.split_once("]:") {
            Some((host, port)) => (host.parse::<Ipv6Addr>().is_ok(), port),
            None => return false,
        }
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (
                !host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')),
                port,
            ),
            None => return false,
        }
    };
    host_ok
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p != 0)
}

// ---------------------------------------------------------------------------------------
// Turning toml's errors into ConfigErrors
// ---------------------------------------------------------------------------------------

/// Convert an error from the TOML parser / serde into a [`ConfigError`].
///
/// toml reports a message and a byte span but not the key path, so the path is recovered
/// by a light scan of the text up to the span ([`key_context`]). The message's line and
/// column are appended to `expected`.
fn toml_error(err: &toml::de::Error, text: &str, file: &Path) -> ConfigError {
    // toml_edit's messages may span several lines; keep ours on one.
    let message = err
        .message()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let span = err.span();
    let ctx = span
        .as_ref()
        .map(|s| key_context(text, s.start))
        .unwrap_or_default();
    let location = match &span {
        Some(s) => {
            let (line, column) = line_col(text, s.start);
            format!(" (line {line}, column {column})")
        }
        None => String::new(),
    };
    // The path of the table / key the span is in, plus `field` for errors about a field
    // of that table.
    let field_key = |field: &str| {
        let mut path = ctx.value_of.clone().unwrap_or_else(|| ctx.table.clone());
        path.push(field.to_string());
        path.join(".")
    };
    let value_key = || {
        let path = ctx.value_of.clone().unwrap_or_else(|| ctx.table.clone());
        if path.is_empty() {
            "(top level)".to_string()
        } else {
            path.join(".")
        }
    };
    // The literal text of the span when it is short and on one line.
    let span_text = span
        .as_ref()
        .and_then(|s| text.get(s.clone()))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.contains('\n') && t.len() <= 80);
    // The whole line the span starts on, quoted.
    let offending_line = || match &span {
        Some(s) => {
            let (line, _) = line_col(text, s.start);
            let line_text = text.lines().nth(line - 1).unwrap_or("").trim();
            if line_text.is_empty() {
                "(empty line)".to_string()
            } else {
                format!("`{line_text}`")
            }
        }
        None => "(unknown)".to_string(),
    };

    let error = if let Some((field, rest)) = backquoted_after(&message, "unknown field ") {
        // serde says "expected one of `a`, `b`", "expected `a` or `b`", "expected `a`"
        // or "there are no fields".
        let known = rest.trim_start_matches(',').trim();
        let known = match known.strip_prefix("expected ") {
            Some(list) => format!(
                "one of the known keys: {}",
                list.trim_start_matches("one of ")
            ),
            None => "no keys here".to_string(),
        };
        ConfigError::new(
            field_key(field),
            "(unknown key)",
            format!("{known}{location}"),
        )
    } else if let Some((field, _)) = backquoted_after(&message, "missing field ") {
        // A key missing at the top level is reported at line 1: not worth showing.
        let key = field_key(field);
        let location = if key.contains('.') {
            location.as_str()
        } else {
            ""
        };
        ConfigError::new(
            key,
            "(missing)",
            format!("this required key to be set{location}"),
        )
    } else if let Some((variant, rest)) = backquoted_after(&message, "unknown variant ") {
        let expected = rest.trim_start_matches(',').trim();
        let expected = expected.strip_prefix("expected ").unwrap_or(expected);
        ConfigError::new(value_key(), lit(variant), format!("{expected}{location}"))
    } else if let Some((unexpected, expected)) =
        ["invalid type: ", "invalid value: ", "invalid length "]
            .iter()
            .find_map(|prefix| message.strip_prefix(prefix))
            .and_then(|rest| rest.split_once(", expected "))
    {
        let value = span_text.map_or_else(|| plain_words(unexpected), str::to_string);
        ConfigError::new(
            value_key(),
            value,
            format!("{}{location}", plain_words(expected)),
        )
    } else if let Some((key, _)) = backquoted_after(&message, "duplicate key ") {
        ConfigError::new(
            field_key(key),
            offending_line(),
            format!("each key set only once{location}"),
        )
    } else {
        // TOML syntax errors and anything else: show the offending line as the value.
        ConfigError::new(
            value_key(),
            offending_line(),
            format!("valid TOML: {message}{location}"),
        )
    };
    error.in_file(file)
}

/// Serde's type names in plain words (`u16` -> `an integer in 0..=65535`).
fn plain_words(serde_text: &str) -> String {
    let text = serde_text.trim();
    let plain = match text {
        "u16" => "an integer in 0..=65535",
        "u32" => "a non-negative integer up to 4294967295",
        "u64" => "a non-negative integer",
        "i64" => "an integer",
        "a sequence" | "sequence" => "an array",
        "a map" | "map" => "a table",
        "path string" => "a path string",
        _ if text.starts_with("struct ") => "a table",
        _ => text,
    };
    plain.to_string()
}

/// If `message` contains `prefix` followed by a back-quoted word, that word and the rest.
fn backquoted_after<'a>(message: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let start = message.find(prefix)? + prefix.len();
    let rest = message[start..].strip_prefix('`')?;
    let end = rest.find('`')?;
    Some((&rest[..end], &rest[end + 1..]))
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Where a byte offset falls in a TOML document, as far as [`key_context`] can tell.
#[derive(Debug, Default, Clone, PartialEq)]
struct KeyContext {
    /// Path of the table the offset is in (from `[headers]`, inline tables, dotted keys).
    table: Vec<String>,
    /// Full path of the key whose value contains the offset, if the offset is in a value.
    value_of: Option<Vec<String>>,
}

/// An open inline table or array while scanning, with the key path (relative to the
/// current `[header]`) it is the value of.
enum Open {
    Table(Vec<String>),
    Array(Vec<String>),
}

/// Split a (possibly dotted, possibly quoted) TOML key into its parts.
fn split_key(raw: &str) -> Vec<String> {
    raw.split('.')
        .map(|part| {
            part.trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .to_string()
        })
        .filter(|part| !part.is_empty())
        .collect()
}

/// Best-effort scan of `text` up to byte `offset` to find which table / key it is in.
///
/// This is a small TOML lexer: it knows headers, `key = value`, dotted keys, inline tables,
/// arrays, strings and comments, which is all a config file uses. It is only used to name
/// keys in error messages, so being approximate on exotic input is acceptable.
fn key_context(text: &str, offset: usize) -> KeyContext {
    let bytes = text.as_bytes();
    let end = offset.min(bytes.len());
    let mut header: Vec<String> = Vec::new();
    let mut open: Vec<Open> = Vec::new();
    // Start of the key being read, and the key (relative path) whose value we are in.
    let mut key_start = 0;
    let mut value_of: Option<Vec<String>> = None;
    // Path of the innermost inline table (relative to the header).
    let table_rel = |open: &[Open]| match open.last() {
        Some(Open::Table(path)) => path.clone(),
        _ => Vec::new(),
    };

    let mut i = 0;
    // Also look at the byte at `offset` when it opens a `[header]`: serde reports errors
    // about a table at its header.
    while i < end || (i == end && bytes.get(i) == Some(&b'[')) {
        let in_key = value_of.is_none() && !matches!(open.last(), Some(Open::Array(_)));
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            quote @ (b'"' | b'\'') => {
                i = skip_string(bytes, i, quote);
                continue;
            }
            b'\n' if open.is_empty() => {
                key_start = i + 1;
                value_of = None;
            }
            b'[' if in_key && open.is_empty() && text[key_start..i].trim().is_empty() => {
                // A `[table]` or `[[array]]` header: the rest of the line.
                let line_end = text[i..].find('\n').map_or(text.len(), |n| i + n);
                let name = text[i..line_end].trim_start_matches('[');
                header = split_key(name.split(']').next().unwrap_or(""));
                if offset <= line_end {
                    return KeyContext {
                        table: header,
                        value_of: None,
                    };
                }
                i = line_end;
                continue;
            }
            b'[' | b'{' if !in_key => {
                let path = match (&value_of, open.last()) {
                    (Some(path), _) | (None, Some(Open::Array(path))) => path.clone(),
                    _ => Vec::new(),
                };
                if bytes[i] == b'[' {
                    open.push(Open::Array(path));
                } else {
                    open.push(Open::Table(path));
                    value_of = None;
                    key_start = i + 1;
                }
            }
            b']' if matches!(open.last(), Some(Open::Array(_))) => {
                open.pop();
            }
            b'}' => {
                if let Some(Open::Table(path)) = open.pop() {
                    value_of = Some(path);
                }
            }
            b',' if matches!(open.last(), Some(Open::Table(_))) => {
                value_of = None;
                key_start = i + 1;
            }
            b'=' if in_key => {
                let mut path = table_rel(&open);
                path.extend(split_key(&text[key_start..i]));
                value_of = Some(path);
            }
            _ => {}
        }
        i += 1;
    }

    let in_key = value_of.is_none() && !matches!(open.last(), Some(Open::Array(_)));
    let mut table = header.clone();
    table.extend(table_rel(&open));
    if in_key {
        // A dotted key being read (`postgresql.prot`): its prefix is a table.
        let partial = text.get(key_start..end).unwrap_or("");
        let mut parts = split_key(partial);
        if !partial.trim_end().ends_with('.') {
            parts.pop();
        }
        table.extend(parts);
        KeyContext {
            table,
            value_of: None,
        }
    } else {
        let rel = match (value_of, open.last()) {
            (Some(path), _) => path,
            (None, Some(Open::Array(path))) => path.clone(),
            _ => Vec::new(),
        };
        let mut full = header;
        full.extend(rel);
        KeyContext {
            table,
            value_of: Some(full),
        }
    }
}

/// Index just after the string starting at `start` (basic, literal or multi-line).
fn skip_string(bytes: &[u8], start: usize, quote: u8) -> usize {
    let escapes = quote == b'"';
    if bytes[start..].starts_with(&[quote, quote, quote]) {
        let mut i = start + 3;
        while i < bytes.len() {
            if escapes && bytes[i] == b'\\' {
                i += 2;
            } else if bytes[i..].starts_with(&[quote, quote, quote]) {
                i += 3;
                // Up to two more quotes may belong to the content (`""""x"""""`).
                while i < bytes.len() && bytes[i] == quote {
                    i += 1;
                }
                return i;
            } else {
                i += 1;
            }
        }
        bytes.len()
    } else {
        let mut i = start + 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if escapes => i += 2,
                b'\n' => return i,
                b if b == quote => return i + 1,
                _ => i += 1,
            }
        }
        bytes.len()
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

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
endpoints = ["http://10.0.0.1:2379", "https://etcd.example:2379", "http://[fd00::1]:2379"]

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
                    "http://10.0.0.1:2379".into(),
                    "https://etcd.example:2379".into(),
                    "http://[fd00::1]:2379".into()
                ]
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
        c.api.connect_url = Some("https://db1.example/pgbaton".into());
        assert_eq!(c.api_url(), "https://db1.example/pgbaton");
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
        let e = parse_err(
            &MINIMAL.replace("name = \"node1\"", "name = \"node1\"\npostgresql.prot = 1"),
        );
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
        for good in ["a", "0", "node-1.a_b", &"a".repeat(63)] {
            assert_valid(|c| c.name = good.into());
        }
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
        assert_valid(|c| c.api.connect_url = Some("https://db1:8008".into()));
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
            move |c: &mut NodeConfig| c.store = StoreConfig::Etcd { endpoints }
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
            "https://etcd-1.example:2379",
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
        let e =
            ClientConfig::from_toml_str(&text.replace("path = ", "paht = \"/a\"\npath = "), file)
                .unwrap_err();
        assert_eq!(e.key, "store.paht");
        let e = ClientConfig::from_toml_str(&text.replace("\"main\"", "\"\""), file).unwrap_err();
        assert_eq!(e.key, "cluster");
        let e = ClientConfig::from_toml_str(
            &text.replace("\"/srv/pg/state.db\"", "\"state.db\""),
            file,
        )
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
}
