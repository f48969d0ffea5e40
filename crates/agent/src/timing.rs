//! The timing the agent runs with: node.toml's `[timing]`, with the cluster's config
//! (`timing.*`, `pgbaton edit-config`) over it, applied at the start of each loop.
//!
//! A change is safe at any loop boundary: before each lease request the fence is pulled in
//! to what that request's lease allows (`pgbaton_exec::Host::tighten`: a lowered TTL), a
//! request that succeeded arms it for the TTL it asked the store for (`Host::arm`), and a
//! failsafe round for the shortest promise a member gave. The loop alone changes it, between plans, so a plan runs with
//! one timing throughout; the bound on each store call (`preflight::store_timeout`) follows
//! the loop interval. What is not changed while the agent runs: how long this member's own
//! failsafe promises last (node.toml's TTL: `api::Shared::promise_ms`), and the API
//! client's timeout and the failsafe store probe sized to fit inside it (node.toml's loop
//! interval on both sides of a failsafe question).

use super::*;
use pgbaton_core::cluster_config::own;
use pgbaton_core::config::TimingConfig;

impl Agent {
    /// Run with the cluster's timing when it changed and this member may: a mix of the
    /// record and this node's node.toml that breaks the fence rule is not run with (the
    /// timing it has stays, and the agent logs why).
    pub(crate) fn apply_timing(&mut self) {
        let wanted = own::timing(&self.exec.pg.cluster_conf.settings, &self.cfg);
        let current = host::timing(&self.shared);
        match wanted {
            Ok(t) if t != current => {
                info!(
                    "timing changed (the cluster's config): {}",
                    changes(&current, &t)
                );
                self.shared
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .timing = t;
                self.exec.settings.ttl_ms = t.ttl_ms;
                let limit = store_timeout(t.loop_interval_ms).as_millis() as u64;
                self.store_limit_ms
                    .store(limit, std::sync::atomic::Ordering::Relaxed);
                self.timing_refused = None;
            }
            Ok(_) => self.timing_refused = None,
            Err(e) => {
                let why = format!(
                    "the cluster's timing is not run with on this member, which keeps its \
                     own: {e}"
                );
                if self.timing_refused.as_deref() != Some(why.as_str()) {
                    warn!("{why}");
                }
                self.timing_refused = Some(why);
            }
        }
    }
}

/// What changed, as `ttl_ms 2500 -> 4000, loop_interval_ms 500 -> 1000`.
fn changes(old: &TimingConfig, new: &TimingConfig) -> String {
    let pairs = [
        (
            "loop_interval_ms",
            old.loop_interval_ms,
            new.loop_interval_ms,
        ),
        ("ttl_ms", old.ttl_ms, new.ttl_ms),
        ("fence_margin_ms", old.fence_margin_ms, new.fence_margin_ms),
        (
            "primary_restart_timeout_ms",
            old.primary_restart_timeout_ms,
            new.primary_restart_timeout_ms,
        ),
        (
            "start_timeout_ms",
            old.start_timeout_ms,
            new.start_timeout_ms,
        ),
        (
            "orphan_slot_grace_ms",
            old.orphan_slot_grace_ms,
            new.orphan_slot_grace_ms,
        ),
    ];
    pairs
        .iter()
        .filter(|(_, a, b)| a != b)
        .map(|(k, a, b)| format!("{k} {a} -> {b}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_names_what_changed_only() {
        let old = TimingConfig::default();
        let new = TimingConfig {
            ttl_ms: 4000,
            loop_interval_ms: 1000,
            ..old
        };
        assert_eq!(
            changes(&old, &new),
            "loop_interval_ms 500 -> 1000, ttl_ms 2500 -> 4000"
        );
    }
}
