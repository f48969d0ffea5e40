//! pgbaton's own cluster-wide settings the store may hold. Unlike PostgreSQL parameters,
//! these mean something only for the whole cluster (only the leader applies the synchronous
//! mode; every candidate is held to the same lag bar), so once set in the store they win
//! over every member's node.toml, whose value they keep until then: Patroni's dynamic
//! configuration works the same way for its own settings. They apply at each member's next
//! loop, with no restart.
//!
//! The timing settings (`timing.*`) are held to the fence rule as a whole, with node.toml's
//! values for the keys the record leaves out ([`timing`]): at edit time by the member that
//! takes the edit, and again by every member before it runs with them (a member whose own
//! node.toml makes the mix break the rule keeps the timing it has, and says so). A changed
//! TTL is safe at any renewal: the fence is armed for the TTL that renewal asked the store
//! for (`pgbaton_exec::Host::arm`), and a failsafe round for the shortest promise a member
//! gave.

use crate::config::{ConfigError, NodeConfig, ParamValue, StoreConfig, TimingConfig};
use crate::failover::Policy;
use crate::sync::SyncMode;
use std::collections::BTreeMap;

/// The keys, as in node.toml.
pub const KEYS: &[&str] = &[
    "failover.max_lag_bytes",
    "replication.synchronous",
    "replication.synchronous_node_count",
    "replication.synchronous_strict",
    "timing.fence_margin_ms",
    "timing.loop_interval_ms",
    "timing.orphan_slot_grace_ms",
    "timing.primary_restart_timeout_ms",
    "timing.start_timeout_ms",
    "timing.ttl_ms",
];

/// The most synchronous standbys node.toml allows too.
const MAX_SYNC_NODES: i64 = 64;

/// Is `key` one of pgbaton's settings the store may hold?
pub fn is_own(key: &str) -> bool {
    KEYS.contains(&key)
}

/// A setting's value as given (`--set` gives strings), checked and in its TOML type.
pub fn check(key: &str, value: &ParamValue) -> Result<ParamValue, ConfigError> {
    let bad = |expected: &str| ConfigError::new(key, value.toml_literal(), expected);
    let text = match value {
        ParamValue::Str(s) => s.trim().to_ascii_lowercase(),
        ParamValue::Bool(b) => b.to_string(),
        ParamValue::Int(i) => i.to_string(),
        ParamValue::Float(f) => f.to_string(),
    };
    match key {
        "replication.synchronous" => match text.as_str() {
            "off" | "on" | "quorum" => Ok(ParamValue::Str(text)),
            _ => Err(bad("off, on or quorum")),
        },
        "replication.synchronous_strict" => match text.as_str() {
            "true" | "on" | "yes" => Ok(ParamValue::Bool(true)),
            "false" | "off" | "no" => Ok(ParamValue::Bool(false)),
            _ => Err(bad("true or false")),
        },
        "replication.synchronous_node_count" => match text.parse::<i64>() {
            Ok(n) if (1..=MAX_SYNC_NODES).contains(&n) => Ok(ParamValue::Int(n)),
            _ => Err(bad(&format!("a number of standbys from 1 to {MAX_SYNC_NODES}"))),
        },
        "failover.max_lag_bytes" => match text.parse::<i64>() {
            Ok(n) if n >= 0 => Ok(ParamValue::Int(n)),
            _ => Err(bad("a number of bytes, 0 or more")),
        },
        k if k.starts_with("timing.") && KEYS.contains(&k) => match millis(&text) {
            Some(n) => Ok(ParamValue::Int(n)),
            None => Err(bad(
                "a number of milliseconds (2500, or with a unit: 2500ms, 3s, 1min)",
            )),
        },
        _ => Err(ConfigError::new(
            key,
            value.toml_literal(),
            format!(
                "a setting the cluster's config holds: {} (the others stay in each member's node.toml)",
                KEYS.join(", ")
            ),
        )),
    }
}

/// A duration in milliseconds: a plain number, or one with `ms`, `s` or `min`.
fn millis(text: &str) -> Option<i64> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = match text[digits.len()..].trim() {
        "" | "ms" => 1,
        "s" => 1000,
        "min" => 60_000,
        _ => return None,
    };
    let n: i64 = digits.trim().parse().ok().filter(|n| *n >= 0)?;
    n.checked_mul(unit)
}

/// The timing a member runs with: its node.toml's, with the record's `timing.*` over it,
/// held to the fence rule ([`TimingConfig`]'s checks). On etcd a TTL from the record must
/// be whole seconds (etcd's lease precision): refused rather than rounded, so what is shown
/// is what runs.
pub fn timing(
    settings: &BTreeMap<String, ParamValue>,
    node: &NodeConfig,
) -> Result<TimingConfig, ConfigError> {
    let mut t = node.timing;
    for (k, v) in settings.iter().filter(|(k, _)| k.starts_with("timing.")) {
        let ParamValue::Int(n) = check(k, v)? else {
            continue;
        };
        let n = u64::try_from(n).unwrap_or(0);
        match k.as_str() {
            "timing.fence_margin_ms" => t.fence_margin_ms = n,
            "timing.loop_interval_ms" => t.loop_interval_ms = n,
            "timing.orphan_slot_grace_ms" => t.orphan_slot_grace_ms = n,
            "timing.primary_restart_timeout_ms" => t.primary_restart_timeout_ms = n,
            "timing.start_timeout_ms" => t.start_timeout_ms = n,
            "timing.ttl_ms" => {
                if matches!(node.store, StoreConfig::Etcd { .. }) && n % 1000 != 0 {
                    return Err(ConfigError::new(
                        k,
                        n.to_string(),
                        "whole seconds on etcd (a lease's TTL is counted in seconds): 2000, 3000...",
                    ));
                }
                t.ttl_ms = n
            }
            _ => {}
        }
    }
    t.validate()?;
    Ok(t)
}

/// The settings checked against the cluster: synchronous standbys it can have
/// (`eligible`: members that may be synchronous, the primary aside).
pub fn check_against(
    settings: &BTreeMap<String, ParamValue>,
    node: &NodeConfig,
    eligible: usize,
) -> Result<(), ConfigError> {
    timing(settings, node)?;
    let mut policy = Policy::from_config(node);
    overlay(settings, &mut policy);
    let s = &policy.sync;
    if s.mode != SyncMode::Off && s.node_count as usize > eligible {
        return Err(ConfigError::new(
            "replication.synchronous_node_count",
            s.node_count.to_string(),
            format!(
                "at most the standbys that can be synchronous: {eligible} (members without tags.nosync, the primary aside)"
            ),
        ));
    }
    Ok(())
}

/// The store's settings over the node's: what the member decides with.
pub fn overlay(settings: &BTreeMap<String, ParamValue>, policy: &mut Policy) {
    for (k, v) in settings {
        // Checked when stored; a value that does not parse changes nothing.
        let Ok(v) = check(k, v) else { continue };
        match (k.as_str(), v) {
            ("replication.synchronous", ParamValue::Str(m)) => {
                policy.sync.mode = match m.as_str() {
                    "on" => SyncMode::On,
                    "quorum" => SyncMode::Quorum,
                    _ => SyncMode::Off,
                }
            }
            ("replication.synchronous_strict", ParamValue::Bool(b)) => policy.sync.strict = b,
            ("replication.synchronous_node_count", ParamValue::Int(n)) => {
                policy.sync.node_count = u32::try_from(n).unwrap_or(1)
            }
            ("failover.max_lag_bytes", ParamValue::Int(n)) => {
                policy.max_lag_bytes = u64::try_from(n).unwrap_or(0)
            }
            _ => {}
        }
    }
}

/// The node's own value of each setting, for `show-config --member`.
pub fn node_values(node: &NodeConfig) -> BTreeMap<String, ParamValue> {
    let r = &node.replication;
    let t = &node.timing;
    let ms = |n: u64| ParamValue::Int(i64::try_from(n).unwrap_or(i64::MAX));
    let mut values = BTreeMap::from([
        (
            "failover.max_lag_bytes".to_string(),
            ParamValue::Int(i64::try_from(node.failover.max_lag_bytes).unwrap_or(i64::MAX)),
        ),
        (
            "replication.synchronous".to_string(),
            ParamValue::Str(r.synchronous.as_str().to_string()),
        ),
        (
            "replication.synchronous_node_count".to_string(),
            ParamValue::Int(i64::from(r.synchronous_node_count)),
        ),
        (
            "replication.synchronous_strict".to_string(),
            ParamValue::Bool(r.synchronous_strict),
        ),
    ]);
    for (k, v) in [
        ("fence_margin_ms", t.fence_margin_ms),
        ("loop_interval_ms", t.loop_interval_ms),
        ("orphan_slot_grace_ms", t.orphan_slot_grace_ms),
        ("primary_restart_timeout_ms", t.primary_restart_timeout_ms),
        ("start_timeout_ms", t.start_timeout_ms),
        ("ttl_ms", t.ttl_ms),
    ] {
        values.insert(format!("timing.{k}"), ms(v));
    }
    values
}
