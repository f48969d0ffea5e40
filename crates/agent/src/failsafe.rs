//! Failsafe: a primary that cannot reach the store asks every other member to confirm it.
//!
//! The one-lock rule lives here: a member's answer to a primary (`confirm`, for the API)
//! and its own taking of the lease (`begin_acquire`, for the executor) are decided under
//! the same lock of the shared state, so a member never both promises a live primary and
//! takes the lease (pinned simulator test `agent_restart_forgets_its_failsafe_promise` is
//! the related restart case).

use super::*;
use pgbaton_core::failover::Failsafe;

/// About to take the leader lease: refuse while a promise to a live primary holds;
/// otherwise, from now on, confirm no primary until a view of the store says who leads.
pub(crate) fn begin_acquire(
    shared: &api::SharedState,
    me: &str,
    now: u64,
) -> std::result::Result<(), String> {
    let mut sh = shared.write().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = sh
        .failsafe
        .as_ref()
        .filter(|f| f.leader != me && f.active(now))
    {
        return Err(format!(
            "not taking the leader lease: {} was confirmed as a live primary (failsafe)",
            f.leader
        ));
    }
    sh.leading_or_acquiring = true;
    Ok(())
}

/// A primary asks this member to confirm it: yes binds this member not to take the lease
/// for one TTL; a member that holds the lease or is taking it says no (the reason).
pub(crate) fn confirm(
    shared: &api::SharedState,
    me: &str,
    leader: &str,
    now: u64,
) -> std::result::Result<Failsafe, String> {
    let mut sh = shared.write().unwrap_or_else(|e| e.into_inner());
    if sh.leading_or_acquiring {
        return Err(format!(
            "{me} holds the leader lease or is taking it: it does not confirm {leader}"
        ));
    }
    let until_ms = now + sh.ttl_ms;
    if sh
        .failsafe
        .as_ref()
        .is_none_or(|f| f.leader != leader || !f.active(now))
    {
        warn!(
            "failsafe: confirmed {leader} as a live primary; not taking the leader lease for {} ms",
            sh.ttl_ms
        );
    }
    let promise = Failsafe {
        leader: leader.to_string(),
        until_ms,
    };
    sh.failsafe = Some(promise.clone());
    Ok(promise)
}

impl Agent {
    /// The store did not answer. A primary with failsafe on asks every other member to
    /// confirm it over the API; when all do, it keeps serving (the watchdog is armed as if
    /// the lease had been renewed when the round started). Otherwise the watchdog fences it
    /// at the deadline of its last renewal.
    pub(crate) async fn store_unreachable(&mut self) {
        if !self.cfg.failover.failsafe || !self.exec.mem.held_lease {
            return;
        }
        if fence::postmaster_of(&self.cfg.data_dir).is_none()
            || self.exec.pg.probe.as_ref().is_none_or(|p| p.in_recovery)
        {
            return;
        }
        let Some(view) = self
            .shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .view
            .clone()
        else {
            return;
        };
        let me = self.cfg.name.clone();
        let t0 = Instant::now();
        let mut asks = tokio::task::JoinSet::new();
        for m in view.members.iter().filter(|m| m.name != me) {
            let mut req = self
                .http
                .post(format!("{}/failsafe", m.api_url.trim_end_matches('/')))
                .json(&serde_json::json!({ "leader": me }));
            if let Some(t) = &self.auth.token {
                req = req.bearer_auth(t);
            } else if let Some((u, p)) = &self.auth.basic {
                req = req.basic_auth(u, Some(p));
            }
            let name = m.name.clone();
            asks.spawn(async move {
                let r = req.send().await;
                let ok = r.as_ref().is_ok_and(|r| r.status().is_success());
                let why = match r {
                    Ok(r) => format!("answered {}", r.status()),
                    Err(e) => format!("unreachable ({e})"),
                };
                (name, ok, why)
            });
        }
        let mut refused = vec![];
        let mut n = 0;
        while let Some(r) = asks.join_next().await {
            n += 1;
            match r {
                Ok((_, true, _)) => {}
                Ok((name, false, why)) => refused.push(format!("{name} {why}")),
                Err(e) => refused.push(format!("a check failed: {e}")),
            }
        }
        let confirmed = refused.is_empty();
        {
            let mut sh = self.shared.write().unwrap_or_else(|e| e.into_inner());
            sh.failsafe_rounds += 1;
            sh.failsafe_confirmed += confirmed as u64;
        }
        if confirmed {
            match pgbaton_exec::Host::arm(&mut self.exec.host, t0) {
                Ok(()) => {
                    let msg = format!(
                        "failsafe: the store is unreachable; all {n} other members confirm this primary, so it keeps serving"
                    );
                    if self.last_failsafe.as_deref() != Some(msg.as_str()) {
                        warn!("{msg}");
                    }
                    self.last_failsafe = Some(msg.clone());
                    self.exec.message = Some(msg);
                }
                Err(e) => error!("{e:#}"),
            }
        } else {
            let msg = format!(
                "failsafe: the store is unreachable and not every member confirms this primary ({}): \
                 it fences itself when its lease runs out",
                refused.join("; ")
            );
            if self.last_failsafe.as_deref() != Some(msg.as_str()) {
                warn!("{msg}");
            }
            self.last_failsafe = Some(msg.clone());
            self.exec.message = Some(msg);
        }
    }
}
