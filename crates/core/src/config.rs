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

use crate::sync::{SyncMode, SyncSettings};

mod backup;
mod error;
mod parse;
mod store;
mod toml_errors;
mod validate;

pub use backup::{
    is_lsn, is_timestamp, BackupConfig, BackupEngine, BackupServerConfig, BootstrapConfig,
    BootstrapMethod,
};
pub use error::*;
pub use store::{EtcdAccess, StoreConfig};

use toml_errors::*;
pub use validate::check_parameter;
pub(crate) use validate::lit;
use validate::*;

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
    /// The `[backup]` table: pgBackRest backups and WAL archive. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupConfig>,
    /// The `[bootstrap]` table: the first member restores a backup instead of initdb.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapConfig>,
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
    /// Never a synchronous standby; so, while synchronous replication is on, never
    /// promoted automatically. Default false.
    pub nosync: bool,
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
            nosync: false,
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
    /// `backrest-push` with `[backup]`,
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
    /// `[postgresql.tls]`: TLS on every network connection. Default none (`sslmode=prefer`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<PgTlsConfig>,
}

/// `[postgresql.tls]`: the server speaks TLS (`ssl = on`), pg_hba has only `hostssl` network
/// lines (a connection without TLS finds no line and is refused), and this member's own
/// connections to others (replication, pg_basebackup, pg_rewind) verify the server against
/// `ca_file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgTlsConfig {
    /// This member's certificate (PEM). It must name the host others connect to
    /// (`connect_host`) unless `verify = "verify-ca"`.
    pub cert_file: PathBuf,
    /// Its private key (PEM): owned by the OS user, mode 0600.
    pub key_file: PathBuf,
    /// The certificate authority that signed every member's certificate.
    pub ca_file: PathBuf,
    /// How a member checks the server it connects to: `verify-full` (default: signed by the
    /// CA and naming the host) or `verify-ca` (signed by the CA; for names that do not match).
    #[serde(default)]
    pub verify: TlsVerify,
}

/// libpq's `sslmode` for a member's connections to another member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TlsVerify {
    #[default]
    #[serde(rename = "verify-full")]
    VerifyFull,
    #[serde(rename = "verify-ca")]
    VerifyCa,
}

impl TlsVerify {
    pub fn sslmode(self) -> &'static str {
        match self {
            TlsVerify::VerifyFull => "verify-full",
            TlsVerify::VerifyCa => "verify-ca",
        }
    }
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
            tls: None,
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
    pub(crate) fn toml_literal(&self) -> String {
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
    /// `off` (asynchronous), `on` (`FIRST n`: each commit waits for n named standbys) or
    /// `quorum` (`ANY n`: for any n of the eligible standbys). Default `off`.
    pub synchronous: SyncMode,
    /// How many standbys acknowledge each commit (n above). Default 1.
    pub synchronous_node_count: u32,
    /// With too few eligible standbys: `true` commits wait until one is back; `false` (the
    /// default) the primary runs asynchronously, says so, and no standby is promoted
    /// automatically until one is synchronous again.
    pub synchronous_strict: bool,
    /// A standby further behind the primary than this is not synchronous (replaced by one
    /// that is closer). Default: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_lag_on_syncnode_bytes: Option<u64>,
}

impl ReplicationConfig {
    /// The settings the leader applies.
    pub fn sync_settings(&self) -> SyncSettings {
        SyncSettings {
            mode: self.synchronous,
            node_count: self.synchronous_node_count,
            strict: self.synchronous_strict,
            max_lag_bytes: self.max_lag_on_syncnode_bytes,
        }
    }
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            user: "replicator".to_string(),
            password_file: None,
            password_env: None,
            synchronous: SyncMode::Off,
            synchronous_node_count: 1,
            synchronous_strict: false,
            max_lag_on_syncnode_bytes: None,
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
    /// TLS for the API (`[api.tls]`): it serves https only, and the agent's own requests to
    /// other members (failsafe) verify them against `ca_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ApiTlsConfig>,
}

/// The `[api.tls]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTlsConfig {
    /// The API's certificate (PEM), naming the host in `api_url`; also this member's client
    /// certificate towards the other members' APIs.
    pub cert_file: PathBuf,
    /// Its private key (PEM; the agent's user's own, 0600).
    pub key_file: PathBuf,
    /// The CA (PEM) the other members' API certificates are checked against (and clients'
    /// certificates, with `verify_client`).
    pub ca_file: PathBuf,
    /// Require a client certificate signed by `ca_file` from every client. Default false:
    /// mutating requests are guarded by the token or basic authentication either way.
    #[serde(default)]
    pub verify_client: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8008".to_string(),
            connect_url: None,
            auth_token_file: None,
            auth_username: None,
            auth_password_file: None,
            tls: None,
        }
    }
}

/// The `[timing]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimingConfig {
    /// Interval of the agent's main loop. Default 500; 100..=60000.
    pub loop_interval_ms: u64,
    /// Leader lease TTL. Default 2500; at least 3 × `loop_interval_ms`, at most 3600000. On
    /// etcd, whole seconds: [`NodeConfig::from_toml_str`] rounds it down
    /// ([`StoreConfig::lease_ttl_ms`]).
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
    /// How the CLI reaches the agents' APIs when they serve TLS (`[api]`).
    #[serde(default, skip_serializing_if = "ClientApi::is_empty")]
    pub api: ClientApi,
}

/// The `[api]` table of a client config: the CA the members' API certificates are checked
/// against, and a client certificate for APIs that require one.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientApi {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl ClientApi {
    pub fn is_empty(&self) -> bool {
        *self == ClientApi::default()
    }
}

#[cfg(test)]
mod tests;
