//! Failsafe: a primary that cannot reach the store asks every other member to confirm it.
//!
//! The one-lock rule is `pgbaton_core::failover::FailsafeGate`, kept in the API's shared
//! state: the API's `/failsafe` (`confirm`) and the executor (`begin_acquire`, through the
//! host) use it under that one lock.

use super::*;

/// What the loop's read of the store is called in errors.
const READ_WHAT: &str = "read the cluster from the store";

impl Agent {
    /// Read the cluster view, bounded by [`store_timeout`]. When the read is slow (half that
    /// bound), a leading primary starts its failsafe round at once, beside the read, rather
    /// than after the read has timed out: its fence fires `ttl - fence_margin` after its last
    /// renewal began (1.5 s by default on etcd), and a loop's wait, a timed-out read and the
    /// members' own store probes left under 300 ms of that, so a loaded host fenced a healthy
    /// primary during an etcd freeze (CI, `a_frozen_etcd_does_not_demote_a_healthy_primary`).
    /// A confirmation while the store is merely slow is as safe as one while it is gone:
    /// every member confirms only when it cannot write there itself, and then promises not
    /// to take the lease. Returns the read and whether a round ran.
    pub(crate) async fn read_view_or_failsafe(&mut self) -> (Result<ClusterView>, bool) {
        let store = self.store.clone();
        let limit = store_timeout(&self.cfg);
        let read = async move {
            match tokio::time::timeout(limit, pgbaton_store::read_view(&*store)).await {
                Ok(r) => r.context(READ_WHAT),
                // Only a read that got no answer is `StoreDown` (the loop then publishes
                // nothing more); an answer that is an error is published as usual.
                Err(_) => Err(crate::agent_loop::StoreDown(anyhow::anyhow!(
                    "{READ_WHAT}: the store ({}) did not answer within {} ms",
                    store.describe(),
                    limit.as_millis()
                ))
                .into()),
            }
        };
        tokio::pin!(read);
        if !self.cfg.failover.failsafe || !self.exec.mem.held_lease {
            return (read.await, false);
        }
        tokio::select! {
            r = &mut read => return (r, false),
            _ = tokio::time::sleep(limit / 2) => {}
        }
        let cause = format!(
            "the store has not answered for {} ms",
            (limit / 2).as_millis()
        );
        let (r, ()) = tokio::join!(&mut read, self.failsafe_round(&cause, true));
        (r, true)
    }

    /// The store did not answer. A primary with failsafe on asks every other member to
    /// confirm it over the API; when all do, it keeps serving (the watchdog is armed as if
    /// the lease had been renewed when the round started). Otherwise the watchdog fences it
    /// at the deadline of its last renewal.
    pub(crate) async fn store_unreachable(&mut self) {
        self.failsafe_round("the store is unreachable", false).await
    }

    /// One failsafe round (see `store_unreachable`); `cause` says why, in its messages.
    /// `early`: the store is only slow so far, and may still answer: a refusal then is
    /// logged at info and left out of the member's message (review finding: a slow but
    /// working store logged "it fences itself" at warn on every loop).
    async fn failsafe_round(&mut self, cause: &str, early: bool) {
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
        // A member whose record cannot be read cannot be asked (its address is in the
        // record), and an unasked member may take the lease: no confirmation then.
        let unreadable: Vec<&str> = view.unreadable.iter().filter_map(|u| u.member()).collect();
        if !unreadable.is_empty() {
            let msg = format!(
                "failsafe: {cause} and the records of {} could not be read, so they cannot \
                 be asked: this primary fences itself when its lease runs out",
                unreadable.join(", ")
            );
            if self.last_failsafe.as_deref() != Some(msg.as_str()) {
                warn!("{msg}");
            }
            self.last_failsafe = Some(msg.clone());
            self.exec.message = Some(msg);
            return;
        }
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
            let ca = self.cfg.api.tls.as_ref().map(|t| t.ca_file.clone());
            asks.spawn(async move {
                let r = req.send().await;
                let ok = r.as_ref().is_ok_and(|r| r.status().is_success());
                let why = match r {
                    Ok(r) => format!("answered {}", r.status()),
                    Err(e) => {
                        let text = format!("{:#}", anyhow::Error::from(e));
                        format!(
                            "unreachable ({text}){}",
                            api::tls::ca_hint(&text, ca.as_deref(), "api.tls.ca_file")
                        )
                    }
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
                        "failsafe: {cause}; all {n} other members confirm this primary, so it keeps serving"
                    );
                    if self.last_failsafe.as_deref() != Some(msg.as_str()) {
                        warn!("{msg}");
                    }
                    self.last_failsafe = Some(msg.clone());
                    self.exec.message = Some(msg);
                }
                Err(e) => error!("{e:#}"),
            }
        } else if early {
            info!(
                "failsafe: {cause} and not every member confirms this primary ({}); waiting \
                 for the store's answer",
                refused.join("; ")
            );
        } else {
            let msg = format!(
                "failsafe: {cause} and not every member confirms this primary ({}): it fences \
                 itself when its lease runs out",
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
