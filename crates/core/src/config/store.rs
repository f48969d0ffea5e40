//! The `[store]` table (`kind = "local"` with a SQLite file, or `kind = "etcd"` with its
//! endpoints and how to reach a secured etcd), its hand-written deserialization, and its
//! checks.

use super::*;

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
        /// Client URLs, each `http://host:port` or `https://host:port` (all the same scheme).
        endpoints: Vec<String>,
        /// TLS and authentication (all optional; `https://` endpoints need `ca_file`).
        #[serde(flatten)]
        access: EtcdAccess,
    },
}

/// How an etcd cluster is reached across hosts: TLS (`https://` endpoints, the servers'
/// certificates checked against `ca_file`, optionally a client certificate) and a user
/// (etcd's own authentication). Files are read when the store is opened; the key and the
/// password file must be their reader's own and 0600.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdAccess {
    /// CA certificate (PEM) that signed the etcd servers' certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for etcd's `--client-cert-auth`; with `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM, 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// etcd user (etcd's `auth enable`); with `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding that user's password (0600; trailing newlines stripped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

impl EtcdAccess {
    /// Any TLS file is set.
    pub fn tls(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
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
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
}

/// The keys of an etcd `[store]`, for errors.
const ETCD_KEYS: &[&str] = &[
    "kind",
    "endpoints",
    "ca_file",
    "cert_file",
    "key_file",
    "username",
    "password_file",
];

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
                let etcd_only = [
                    ("endpoints", raw.endpoints.is_some()),
                    ("ca_file", raw.ca_file.is_some()),
                    ("cert_file", raw.cert_file.is_some()),
                    ("key_file", raw.key_file.is_some()),
                    ("username", raw.username.is_some()),
                    ("password_file", raw.password_file.is_some()),
                ];
                if let Some((key, _)) = etcd_only.iter().find(|(_, set)| *set) {
                    return Err(de::Error::unknown_field(key, &["kind", "path"]));
                }
                let path = raw.path.ok_or_else(|| de::Error::missing_field("path"))?;
                Ok(StoreConfig::Local { path })
            }
            StoreKind::Etcd => {
                if raw.path.is_some() {
                    return Err(de::Error::unknown_field("path", ETCD_KEYS));
                }
                let endpoints = raw
                    .endpoints
                    .ok_or_else(|| de::Error::missing_field("endpoints"))?;
                let access = EtcdAccess {
                    ca_file: raw.ca_file,
                    cert_file: raw.cert_file,
                    key_file: raw.key_file,
                    username: raw.username,
                    password_file: raw.password_file,
                };
                Ok(StoreConfig::Etcd { endpoints, access })
            }
        }
    }
}

impl StoreConfig {
    /// The lease TTL this store keeps for a configured `ttl_ms`. etcd leases last whole
    /// seconds, so on etcd the TTL is rounded down to one (never up: a 2.5 s TTL that
    /// became a 3 s etcd lease left a dead primary's lease in place 0.5 s after its fence
    /// fired, and every failover on etcd paid for it). Everything that counts on the TTL (the
    /// fence, failsafe promises, synchronous freshness) uses the rounded value, so the timing
    /// rules are checked on it too. The embedded store keeps milliseconds.
    pub fn lease_ttl_ms(&self, ttl_ms: u64) -> u64 {
        match self {
            StoreConfig::Local { .. } => ttl_ms,
            StoreConfig::Etcd { .. } => ttl_ms / 1000 * 1000,
        }
    }
}

impl StoreConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        match self {
            StoreConfig::Local { path } => check_abs_path("store.path", path),
            StoreConfig::Etcd { endpoints, access } => {
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
                access.validate(endpoints)
            }
        }
    }
}

impl EtcdAccess {
    /// One scheme for every endpoint; `https://` with a CA (and TLS files only with it); a
    /// client certificate with its key; a user with a password file.
    fn validate(&self, endpoints: &[String]) -> Result<(), ConfigError> {
        let https = endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if https != 0 && https != endpoints.len() {
            return Err(ConfigError::new(
                "store.endpoints",
                format!("{endpoints:?}"),
                "endpoints of one scheme: all \"https://\" (TLS) or all \"http://\"",
            ));
        }
        let paths = [
            ("store.ca_file", &self.ca_file),
            ("store.cert_file", &self.cert_file),
            ("store.key_file", &self.key_file),
            ("store.password_file", &self.password_file),
        ];
        for (key, p) in paths {
            if let Some(p) = p {
                check_abs_path(key, p)?;
            }
        }
        if https == 0 && self.tls() {
            return Err(ConfigError::new(
                "store.endpoints",
                format!("{endpoints:?}"),
                "\"https://\" endpoints: store.ca_file, cert_file or key_file is set, and TLS \
                 files with \"http://\" would silently go unused",
            ));
        }
        if https > 0 && self.ca_file.is_none() {
            return Err(ConfigError::new(
                "store.ca_file",
                "(not set)",
                "the CA certificate (PEM) that signed the etcd servers' certificates: \
                 \"https://\" endpoints are verified against it",
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            let (key, missing) = if self.cert_file.is_some() {
                ("store.key_file", "the client certificate's private key")
            } else {
                (
                    "store.cert_file",
                    "the client certificate for store.key_file",
                )
            };
            return Err(ConfigError::new(key, "(not set)", missing));
        }
        if self.username.is_some() != self.password_file.is_some() {
            let (key, missing) = if self.username.is_some() {
                (
                    "store.password_file",
                    "a file holding store.username's password (0600)",
                )
            } else {
                (
                    "store.username",
                    "the etcd user store.password_file is the password of",
                )
            };
            return Err(ConfigError::new(key, "(not set)", missing));
        }
        if self.username.is_some() && https == 0 {
            return Err(ConfigError::new(
                "store.endpoints",
                format!("{endpoints:?}"),
                "\"https://\" endpoints: store.username is set, and etcd's authentication \
                 would send its password in the clear",
            ));
        }
        if let Some(u) = &self.username {
            if u.is_empty() || u.chars().any(|c| c.is_control()) {
                return Err(ConfigError::new(
                    "store.username",
                    lit(u),
                    "an etcd user name (not empty, no control characters)",
                ));
            }
        }
        Ok(())
    }
}
