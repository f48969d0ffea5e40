//! The cluster's configuration, kept in the store under `config`: the PostgreSQL parameters
//! every member applies (`pgbaton edit-config`, the API's `PUT /config`). A change replaces
//! the record by compare-and-set on its text and raises its version, so of two concurrent
//! edits one loses and says so.
//!
//! Precedence: a member's own `[postgresql.parameters]` (node.toml) override the cluster's,
//! and the settings pgbaton owns cannot be set in either. PostgreSQL itself applies the
//! order: `pgbaton.conf` includes the cluster's file ([`CLUSTER_FILE`]) before the node's
//! lines, and the last line for a parameter wins.

pub mod own;
mod settings;
#[cfg(test)]
mod tests;

pub use settings::{Applies, Catalogue, Setting, VarType};

use crate::config::{check_parameter, ConfigError, ParamValue};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The file in the data directory holding the cluster's parameters, written by the agent.
pub const CLUSTER_FILE: &str = "pgbaton.cluster.conf";

/// The store's `config` record.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// 0 for a cluster never configured (no record); each change adds one.
    pub version: u64,
    #[serde(default)]
    pub parameters: BTreeMap<String, ParamValue>,
    /// pgbaton's own cluster-wide settings (`own::KEYS`), by their node.toml key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, ParamValue>,
    /// When the last change was made (wall-clock ms) and by whom (`user@host` or the API).
    #[serde(default)]
    pub updated_ms: u64,
    #[serde(default)]
    pub by: String,
}

impl ClusterConfig {
    /// The record as stored. A record pgbaton cannot read is an error naming the way out:
    /// the agents keep the parameters they last applied.
    pub fn parse(text: &str) -> Result<ClusterConfig, String> {
        serde_json::from_str(text).map_err(|e| {
            format!(
                "the cluster's config record in the store cannot be read ({e}); \
                 replace it with `pgbaton edit-config --force --file FILE`"
            )
        })
    }

    /// The record's text for the store (JSON, one line).
    pub fn text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The record that replaces this one with `new`'s parameters and settings.
    pub fn next(&self, new: Contents, now_ms: u64, by: &str) -> Self {
        ClusterConfig {
            version: self.version + 1,
            parameters: new.parameters,
            settings: new.settings,
            updated_ms: now_ms,
            by: by.to_string(),
        }
    }

    /// What an edit changes: its parameters and settings.
    pub fn contents(&self) -> Contents {
        Contents {
            parameters: self.parameters.clone(),
            settings: self.settings.clone(),
        }
    }
}

/// What an editor gives: PostgreSQL parameters, and pgbaton's settings by their key.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Contents {
    #[serde(default)]
    pub parameters: BTreeMap<String, ParamValue>,
    #[serde(default)]
    pub settings: BTreeMap<String, ParamValue>,
}

impl Contents {
    /// `--set KEY=VALUE` applied: a setting of pgbaton's, or a parameter.
    pub fn set(&mut self, arg: &str) -> Result<(), ConfigError> {
        let (key, value) = parse_set(arg)?;
        if own::is_own(&key) {
            self.settings.insert(key.clone(), own::check(&key, &value)?);
        } else {
            self.parameters.insert(key, value);
        }
        Ok(())
    }

    /// `--unset KEY`: `Ok(false)` when it was not set.
    pub fn unset(&mut self, key: &str) -> Result<bool, ConfigError> {
        let k = config_key(key)?;
        Ok(self.settings.remove(&k).is_some() || self.parameters.remove(&k).is_some())
    }
}

/// `pgbaton.cluster.conf`: the cluster's parameters as PostgreSQL reads them.
pub fn render_file(cfg: Option<&ClusterConfig>) -> String {
    let mut s = String::from(
        "# Managed by pgbaton: the cluster's parameters (`pgbaton edit-config`).\n\
         # A member's own [postgresql.parameters] override them.\n",
    );
    if let Some(c) = cfg {
        s.push_str(&format!("# version {}\n", c.version));
        for (k, v) in &c.parameters {
            s.push_str(&format!("{k} = {}\n", v.render()));
        }
    }
    s
}

/// Where a member's value of a parameter comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The store's record (`edit-config`).
    Cluster,
    /// The member's node.toml `[postgresql.parameters]`.
    Node,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Cluster => "cluster (edit-config)",
            Source::Node => "node.toml",
        })
    }
}

/// One parameter as a member runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Effective {
    pub name: String,
    pub value: ParamValue,
    pub source: Source,
    /// The cluster's value the node's hides, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<ParamValue>,
}

/// pgbaton's settings a member decides with: the store's, else its node.toml's.
pub fn effective_settings(
    cluster: &BTreeMap<String, ParamValue>,
    node: &crate::config::NodeConfig,
) -> Vec<Effective> {
    own::node_values(node)
        .into_iter()
        .map(|(k, node_value)| match cluster.get(&k) {
            Some(v) => Effective {
                name: k,
                value: v.clone(),
                source: Source::Cluster,
                overrides: Some(node_value),
            },
            None => Effective {
                name: k,
                value: node_value,
                source: Source::Node,
                overrides: None,
            },
        })
        .collect()
}

/// The parameters a member runs with: the cluster's, then its own over them.
pub fn effective(
    cluster: &BTreeMap<String, ParamValue>,
    node: &BTreeMap<String, ParamValue>,
) -> Vec<Effective> {
    let mut out: BTreeMap<&str, Effective> = BTreeMap::new();
    for (k, v) in cluster {
        out.insert(
            k,
            Effective {
                name: k.clone(),
                value: v.clone(),
                source: Source::Cluster,
                overrides: None,
            },
        );
    }
    for (k, v) in node {
        let overrides = cluster.get(k).cloned();
        out.insert(
            k,
            Effective {
                name: k.clone(),
                value: v.clone(),
                source: Source::Node,
                overrides,
            },
        );
    }
    out.into_values().collect()
}

/// One parameter's change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub name: String,
    pub old: Option<ParamValue>,
    pub new: Option<ParamValue>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.old, &self.new) {
            (None, Some(n)) => write!(f, "+ {} = {}", self.name, n.render()),
            (Some(o), None) => write!(f, "- {} = {}", self.name, o.render()),
            (Some(o), Some(n)) => {
                write!(f, "~ {} = {} (was {})", self.name, n.render(), o.render())
            }
            (None, None) => write!(f, "  {}", self.name),
        }
    }
}

/// What changes from `old` to `new`, by name.
pub fn diff(old: &BTreeMap<String, ParamValue>, new: &BTreeMap<String, ParamValue>) -> Vec<Change> {
    let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| old.get(*n) != new.get(*n))
        .map(|n| Change {
            name: n.clone(),
            old: old.get(n).cloned(),
            new: new.get(n).cloned(),
        })
        .collect()
}

/// The prefix a key given as `postgresql.parameters.NAME` may carry.
const PARAMETERS_PREFIX: &str = "postgresql.parameters.";

/// `--set NAME=VALUE` (or `postgresql.parameters.NAME=VALUE`): the value is a string, as
/// PostgreSQL reads every value (`'64MB'`, `'on'`, `'100'`).
pub fn parse_set(arg: &str) -> Result<(String, ParamValue), ConfigError> {
    let Some((key, value)) = arg.split_once('=') else {
        return Err(ConfigError::new(
            "--set",
            crate::config::lit(arg),
            "NAME=VALUE, like work_mem=64MB",
        ));
    };
    let name = config_key(key.trim())?;
    Ok((name, ParamValue::Str(value.trim().to_string())))
}

/// A key as the operator wrote it: a parameter name, with or without
/// `postgresql.parameters.`, or one of pgbaton's settings the store holds (`own::KEYS`).
/// Another of pgbaton's keys is refused (it stays in node.toml); `ext.name` is an
/// extension's parameter.
pub fn config_key(key: &str) -> Result<String, ConfigError> {
    let name = key.strip_prefix(PARAMETERS_PREFIX).unwrap_or(key);
    if own::is_own(name) {
        return Ok(name.to_string());
    }
    let pgbaton = [
        "postgresql.",
        "replication.",
        "timing.",
        "failover.",
        "tags.",
        "api.",
        "store.",
        "backup.",
    ];
    if pgbaton.iter().any(|p| name.starts_with(p)) {
        return Err(ConfigError::new(
            key,
            "(a pgbaton setting)",
            format!(
                "a PostgreSQL parameter or one of {}: pgbaton's other settings stay in each member's node.toml",
                own::KEYS.join(", ")
            ),
        ));
    }
    Ok(name.to_string())
}

/// The document `edit-config` opens in the editor: TOML, as node.toml's tables.
pub fn to_document(c: &ClusterConfig) -> String {
    let mut s = format!(
        "# The cluster's configuration (version {}). Save and quit to apply.\n\
         # [postgresql.parameters]: every member's PostgreSQL; a member's own node.toml\n\
         # [postgresql.parameters] override these.\n\
         # [replication] synchronous, synchronous_node_count, synchronous_strict and\n\
         # [failover] max_lag_bytes and [timing] loop_interval_ms, ttl_ms, fence_margin_ms,\n\
         # primary_restart_timeout_ms, start_timeout_ms, orphan_slot_grace_ms: pgbaton's\n\
         # cluster-wide settings; set here, they win over every node.toml.\n\n\
         [postgresql.parameters]\n",
        c.version
    );
    for (k, v) in &c.parameters {
        s.push_str(&format!("{} = {}\n", toml_key(k), toml_value(v)));
    }
    for table in ["replication", "failover", "timing"] {
        let prefix = format!("{table}.");
        let keys: Vec<(&String, &ParamValue)> = c
            .settings
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .collect();
        if !keys.is_empty() {
            s.push_str(&format!("\n[{table}]\n"));
            for (k, v) in keys {
                s.push_str(&format!("{} = {}\n", &k[prefix.len()..], toml_value(v)));
            }
        }
    }
    s
}

fn toml_value(v: &ParamValue) -> String {
    match v {
        ParamValue::Str(s) => toml::Value::String(s.clone()).to_string(),
        // `1.0`, not `1`: read back as a float, not an integer (no change where none is).
        ParamValue::Float(f) if f.fract() == 0.0 => format!("{f:.1}"),
        other => other.toml_literal(),
    }
}

/// A parameter name as a TOML key: an extension's `ext.name` quoted, else it would read
/// back as a table.
fn toml_key(k: &str) -> String {
    if k.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        toml::Value::String(k.to_string()).to_string()
    }
}

/// Parameters `pgbaton.conf` sets after the cluster's file (a cluster value would be
/// overridden, so it is refused rather than silently ignored), with where to set them.
const SET_AFTER_THE_CLUSTER: &[(&str, &str)] = &[
    (
        "hot_standby_feedback",
        "a member's node.toml [postgresql.parameters]",
    ),
    (
        "wal_retrieve_retry_interval",
        "a member's node.toml [postgresql.parameters]",
    ),
    ("ssl", "[postgresql.tls] of each member's node.toml"),
    (
        "ssl_cert_file",
        "[postgresql.tls] of each member's node.toml",
    ),
    (
        "ssl_key_file",
        "[postgresql.tls] of each member's node.toml",
    ),
    ("ssl_ca_file", "[postgresql.tls] of each member's node.toml"),
    (
        "ssl_min_protocol_version",
        "a member's node.toml [postgresql.parameters]",
    ),
];

fn check_cluster_wide(k: &str, v: &ParamValue) -> Result<(), ConfigError> {
    check_parameter(k, v)?;
    match SET_AFTER_THE_CLUSTER.iter().find(|(name, _)| *name == k) {
        Some((_, instead)) => Err(ConfigError::new(
            format!("postgresql.parameters.{k}"),
            v.toml_literal(),
            format!("a parameter pgbaton.conf does not set after the cluster's file (it sets {k} itself): set it in {instead}"),
        )),
        None => Ok(()),
    }
}

/// The editor's document read back: `[postgresql.parameters]`, and pgbaton's settings in
/// `[replication]`, `[failover]` and `[timing]`, each checked.
pub fn from_document(text: &str) -> Result<Contents, ConfigError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(default)]
        postgresql: Pg,
        #[serde(default)]
        replication: BTreeMap<String, ParamValue>,
        #[serde(default)]
        failover: BTreeMap<String, ParamValue>,
        #[serde(default)]
        timing: BTreeMap<String, ParamValue>,
    }
    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Pg {
        #[serde(default)]
        parameters: BTreeMap<String, ParamValue>,
    }
    let doc: Doc = toml::from_str(text).map_err(|e| {
        ConfigError::new(
            "(document)",
            "(not readable)",
            format!(
                "a TOML document with [postgresql.parameters], [replication], [failover] and [timing] tables: {}",
                e.message()
            ),
        )
    })?;
    for (k, v) in &doc.postgresql.parameters {
        check_cluster_wide(k, v)?;
    }
    let mut settings = BTreeMap::new();
    for (table, entries) in [
        ("replication", doc.replication),
        ("failover", doc.failover),
        ("timing", doc.timing),
    ] {
        for (k, v) in entries {
            let key = format!("{table}.{k}");
            settings.insert(key.clone(), own::check(&key, &v)?);
        }
    }
    Ok(Contents {
        parameters: doc.postgresql.parameters,
        settings,
    })
}

/// Check a whole new set of parameters and settings before anything is stored: the
/// parameters against the running PostgreSQL's catalogue, the settings against the
/// cluster (`eligible`: standbys that may be synchronous). Returns what changes, and how
/// each change takes effect (pgbaton's settings at every member's next loop: `Reload`).
pub fn check_all(
    catalogue: &Catalogue,
    old: &ClusterConfig,
    new: &Contents,
    node: &crate::config::NodeConfig,
    eligible: usize,
) -> Result<Vec<(Change, Applies)>, ConfigError> {
    for (k, v) in &new.parameters {
        check_cluster_wide(k, v)?;
        catalogue.check(k, v)?;
    }
    for (k, v) in &new.settings {
        own::check(k, v)?;
    }
    own::check_against(&new.settings, node, eligible)?;
    let params = diff(&old.parameters, &new.parameters).into_iter().map(|c| {
        let applies = catalogue.applies(&c.name);
        (c, applies)
    });
    let settings = diff(&old.settings, &new.settings)
        .into_iter()
        .map(|c| (c, Applies::Reload));
    Ok(params.chain(settings).collect())
}
