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
        let limit = store_timeout(host::timing(&self.shared).loop_interval_ms);
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
        let http = self.http.read().unwrap_or_else(|e| e.into_inner()).clone();
        let round = ask_members(&self.cfg, &view, &http, &self.auth).await;
        let (n, confirmed) = (round.asked, round.refused.is_empty());
        count_round(&self.shared, confirmed);
        let refused = &round.refused;
        if confirmed {
            let running = host::timing(&self.shared).ttl_ms;
            let ttl_ms = round.binding_ms(running, self.cfg.timing.ttl_ms);
            match pgbaton_exec::Host::arm(&mut self.exec.host, t0, ttl_ms) {
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

/// Count a round (metrics).
fn count_round(shared: &api::SharedState, confirmed: bool) {
    let mut sh = shared.write().unwrap_or_else(|e| e.into_inner());
    sh.failsafe_rounds += 1;
    sh.failsafe_confirmed += confirmed as u64;
}

/// What a failsafe round's question got.
pub(crate) struct Round {
    /// How many members were asked.
    pub asked: usize,
    /// Why each member that did not confirm did not.
    pub refused: Vec<String>,
    /// The shortest promise a confirming member gave (`promise_ms`).
    pub shortest_promise_ms: Option<u64>,
    /// A member of an earlier version confirmed without saying for how long: it promised
    /// for its node.toml TTL, which it does not say either.
    pub unsaid: bool,
}

impl Round {
    /// How long from the round's start its confirmations hold the lease for this primary:
    /// the TTL it runs with, or less when a member promised less (TTLs differ while a change
    /// of the cluster's timing spreads, or between node.toml files). A promise of unsaid
    /// length is taken to be `node_ttl_ms`, this member's node.toml TTL, as before members
    /// said it (the timing could not differ from node.toml's then). Pinned simulator test
    /// `a_failsafe_round_outlives_a_shorter_promise`: a fence extended by the primary's own
    /// TTL outlived a member's promise, which then took the lease: two writers.
    pub(crate) fn binding_ms(&self, running_ttl_ms: u64, node_ttl_ms: u64) -> u64 {
        let unsaid = self.unsaid.then_some(node_ttl_ms);
        [Some(running_ttl_ms), self.shortest_promise_ms, unsaid]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(running_ttl_ms)
    }
}

/// Ask every other member of `view` to confirm this member as the live primary.
async fn ask_members(
    cfg: &NodeConfig,
    view: &ClusterView,
    http: &reqwest::Client,
    auth: &api::Auth,
) -> Round {
    let me = cfg.name.clone();
    let mut asks = tokio::task::JoinSet::new();
    for m in view.members.iter().filter(|m| m.name != me) {
        let mut req = http
            .post(format!("{}/failsafe", m.api_url.trim_end_matches('/')))
            .json(&serde_json::json!({ "leader": me }));
        if let Some(t) = &auth.token {
            req = req.bearer_auth(t);
        } else if let Some((u, p)) = &auth.basic {
            req = req.basic_auth(u, Some(p));
        }
        let name = m.name.clone();
        let ca = cfg.api.tls.as_ref().map(|t| t.ca_file.clone());
        asks.spawn(async move {
            let r = req.send().await;
            let ok = r.as_ref().is_ok_and(|r| r.status().is_success());
            let why = match r {
                Ok(r) if ok => match promise_of(r).await {
                    Ok(p) => return (name, Ok(p)),
                    Err(why) => why,
                },
                Ok(r) => format!("answered {}", r.status()),
                Err(e) => {
                    let text = format!("{:#}", anyhow::Error::from(e));
                    format!(
                        "unreachable ({text}){}",
                        api::tls::ca_hint(&text, ca.as_deref(), "api.tls.ca_file")
                    )
                }
            };
            (name, Err(why))
        });
    }
    let mut round = Round {
        asked: 0,
        refused: vec![],
        shortest_promise_ms: None,
        unsaid: false,
    };
    while let Some(r) = asks.join_next().await {
        round.asked += 1;
        match r {
            Ok((_, Ok(Some(p)))) => {
                round.shortest_promise_ms = Some(round.shortest_promise_ms.map_or(p, |s| s.min(p)))
            }
            Ok((_, Ok(None))) => round.unsaid = true,
            Ok((name, Err(why))) => round.refused.push(format!("{name} {why}")),
            Err(e) => round.refused.push(format!("a check failed: {e}")),
        }
    }
    round
}

/// The `promise_ms` of a confirmation (none from an agent of an earlier version). A body
/// that cannot be read is no confirmation: how long it binds is not known.
async fn promise_of(r: reqwest::Response) -> std::result::Result<Option<u64>, String> {
    let body: serde_json::Value = r
        .json()
        .await
        .map_err(|e| format!("confirmed in an answer that could not be read ({e})"))?;
    match body.get("promise_ms") {
        None => Ok(None),
        Some(p) => p
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("confirmed for {p} ms, not a number of ms")),
    }
}

/// What the failsafe keeper needs, shared with the loop.
pub(crate) struct Keeper {
    pub cfg: Arc<NodeConfig>,
    pub shared: api::SharedState,
    pub http: Arc<RwLock<reqwest::Client>>,
    pub auth: api::Auth,
    /// Arms the fence watchdog for a deadline (the agent's: `host::SharedWatchdog::arm`).
    pub arm: Arc<dyn Fn(Instant) -> Result<()> + Send + Sync>,
}

impl Keeper {
    /// The failsafe by the fence's clock, beside the loop: when half the time between a
    /// renewal and the fence has passed without a new renewal, a leading primary asks the
    /// members itself, whatever the loop is waiting for. The loop's own rounds start only
    /// after one of its store calls is slow, and a renewal that hung left the round less
    /// than a quarter of a second before the fence on a loaded host (CI fenced a healthy
    /// primary during an etcd freeze, twice). A round extends the fence only while the loop
    /// still has it armed and leads (checked under the shared lock the loop's disarm takes).
    pub(crate) async fn run(self) {
        let mut pause = Duration::from_millis(20);
        let mut told = false;
        // How long the last round this keeper confirmed bound the lease (its shortest
        // promise), and the fence deadline it set: while the fence is still that one, a
        // round is due at half of that binding, not of a longer TTL, else every tick would
        // ask again (review finding).
        let mut bound: Option<(u64, Instant)> = None;
        loop {
            tokio::time::sleep(pause).await;
            // The timing the agent runs with now (the cluster's config may change it).
            let t = host::timing(&self.shared);
            let armed = self
                .shared
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .fence_deadline;
            if bound.is_some_and(|(_, set)| armed != Some(set)) {
                bound = None;
            }
            let ttl = bound.map_or(t.ttl_ms, |(b, _)| b.min(t.ttl_ms));
            let window = Duration::from_millis(ttl.saturating_sub(t.fence_margin_ms));
            let tick = Duration::from_millis((t.loop_interval_ms / 5).clamp(20, 200));
            // Asleep until a round could be due, not on every tick: an idle primary renews
            // long before then, and each wake-up costs a healthy agent CPU. Never longer than
            // a quarter of the window, so a deadline armed while asleep is looked at in time.
            let longest = Duration::from_millis(t.loop_interval_ms)
                .min(window / 4)
                .max(tick);
            pause = {
                let sh = self.shared.read().unwrap_or_else(|e| e.into_inner());
                sh.fence_deadline
                    .map(|d| {
                        d.checked_sub(window / 2).map_or(Duration::ZERO, |due| {
                            due.saturating_duration_since(Instant::now())
                        })
                    })
                    .unwrap_or(longest)
                    .clamp(tick, longest)
            };
            let view = {
                let sh = self.shared.read().unwrap_or_else(|e| e.into_inner());
                let due = sh
                    .fence_deadline
                    .is_some_and(|d| d.saturating_duration_since(Instant::now()) < window / 2);
                match (&sh.view, due && sh.failsafe.leading()) {
                    (Some(v), true) if v.unreadable.is_empty() => v.clone(),
                    _ => {
                        told = false;
                        continue;
                    }
                }
            };
            if fence::postmaster_of(&self.cfg.data_dir).is_none() {
                continue;
            }
            let t0 = Instant::now();
            let http = self.http.read().unwrap_or_else(|e| e.into_inner()).clone();
            let round = ask_members(&self.cfg, &view, &http, &self.auth).await;
            count_round(&self.shared, round.refused.is_empty());
            if !round.refused.is_empty() {
                info!(
                    "failsafe: the lease has not been renewed for {} ms and not every member \
                     confirms this primary ({})",
                    (window / 2).as_millis(),
                    round.refused.join("; ")
                );
                continue;
            }
            let binding = round.binding_ms(t.ttl_ms, self.cfg.timing.ttl_ms);
            let deadline = t0 + Duration::from_millis(binding.saturating_sub(t.fence_margin_ms));
            let extended = self.extend(deadline);
            if extended {
                bound = Some((binding, deadline));
            }
            if extended && !told {
                warn!(
                    "failsafe: the lease has not been renewed for {} ms; all {} other members \
                     confirm this primary, so it keeps serving",
                    (window / 2).as_millis(),
                    round.asked
                );
                told = true;
            }
        }
    }

    /// Arm the fence for `deadline` if the loop still has it armed, leads, and had it set
    /// earlier; under the shared lock, so a disarm cannot slip in between.
    fn extend(&self, deadline: Instant) -> bool {
        let mut sh = self.shared.write().unwrap_or_else(|e| e.into_inner());
        let armed = sh.fence_deadline.is_some_and(|d| d < deadline);
        if !armed || !sh.failsafe.leading() {
            return false;
        }
        if let Err(e) = (self.arm)(deadline) {
            error!("failsafe: arming the fence watchdog: {e:#}");
            return false;
        }
        sh.fence_deadline = Some(deadline);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watchdog::tests::fake_instance;
    use pgbaton_core::model::{MemberState, MemberStatus, Role};
    use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};

    /// A member's API that answers /failsafe with the status in `code` (200 confirms) and,
    /// when `promise_ms` is not 0, the promise's length as an agent of this version does.
    async fn member_api(code: Arc<AtomicU16>, promise_ms: Arc<AtomicU64>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/failsafe",
            axum::routing::post(move || {
                let (code, promise_ms) = (code.clone(), promise_ms.clone());
                async move {
                    let status =
                        axum::http::StatusCode::from_u16(code.load(Ordering::SeqCst)).unwrap();
                    let body = match promise_ms.load(Ordering::SeqCst) {
                        0 => serde_json::json!({}),
                        p => serde_json::json!({ "promise_ms": p }),
                    };
                    (status, axum::Json(body))
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    /// A round binds the lease for the shortest of: the TTL this member runs with, every
    /// promise a member said, and node.toml's TTL for a member that did not say.
    #[test]
    fn a_round_binds_for_the_shortest_promise_and_node_tomls_ttl_for_an_unsaid_one() {
        let round = |shortest_promise_ms, unsaid| Round {
            asked: 2,
            refused: vec![],
            shortest_promise_ms,
            unsaid,
        };
        // The cluster's config raised the TTL to 4 s; node.toml says 2.5 s.
        assert_eq!(round(Some(4000), false).binding_ms(4000, 2500), 4000);
        assert_eq!(round(Some(1200), false).binding_ms(4000, 2500), 1200);
        assert_eq!(round(Some(4000), true).binding_ms(4000, 2500), 2500);
        assert_eq!(round(None, true).binding_ms(4000, 2500), 2500);
        assert_eq!(round(Some(6000), false).binding_ms(4000, 2500), 4000);
    }

    /// The keeper extends an armed fence when every member confirms, and only then: not
    /// when one refuses, not when this member does not lead. A confirmation extends it by
    /// the shortest promise a member gave, not by this member's TTL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_keeper_extends_the_fence_only_when_confirmed_and_leading() {
        let scratch = tempfile::tempdir().unwrap();
        let (data, pg) = fake_instance(scratch.path());
        let cfg = Arc::new(
            NodeConfig::from_toml_str(
                &format!(
                    "cluster = \"c\"\nname = \"n1\"\ndata_dir = \"{}\"\n[store]\nkind = \"local\"\npath = \"/x/s.db\"\n",
                    data.display()
                ),
                std::path::Path::new("n1.toml"),
            )
            .unwrap(),
        );
        let code = Arc::new(AtomicU16::new(200));
        // n3 promises for 1.2 s only (another TTL in its node.toml); n2 as an earlier
        // version does (no promise_ms: taken to be this member's TTL, 2.5 s).
        let short = Arc::new(AtomicU64::new(1200));
        let mut members = vec![];
        for name in ["n1", "n2", "n3"] {
            let mut m = MemberState::sample(name, Role::Standby, MemberStatus::Streaming, 0);
            let promise = if name == "n3" {
                short.clone()
            } else {
                Arc::default()
            };
            m.api_url = member_api(code.clone(), promise).await;
            members.push(m);
        }
        let shared: api::SharedState = Arc::default();
        // The fake postmaster ends with the test, also when it fails.
        struct Cleanup(std::process::Child);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _cleanup = Cleanup(pg);
        // The watchdog as the keeper sees it: what it was last armed with.
        let armed_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
        let recorder = armed_at.clone();
        let arm_fn: Arc<dyn Fn(Instant) -> Result<()> + Send + Sync> = Arc::new(move |d| {
            *recorder.lock().unwrap() = Some(d);
            Ok(())
        });
        let arm = |ms: u64| {
            let d = Instant::now() + Duration::from_millis(ms);
            arm_fn(d).unwrap();
            shared.write().unwrap().fence_deadline = Some(d);
            d
        };
        {
            let mut sh = shared.write().unwrap();
            sh.view = Some(ClusterView {
                members,
                ..Default::default()
            });
            sh.failsafe.set_leading(true);
        }
        let first = arm(300);
        let keeper = tokio::spawn(
            Keeper {
                cfg: cfg.clone(),
                shared: shared.clone(),
                http: Arc::new(RwLock::new(reqwest::Client::new())),
                auth: api::Auth::default(),
                arm: arm_fn.clone(),
            }
            .run(),
        );
        let armed = || *armed_at.lock().unwrap();
        let until = |what: &str, f: &dyn Fn() -> bool| {
            let t = Instant::now();
            while !f() {
                assert!(t.elapsed() < Duration::from_secs(10), "never: {what}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        until("the fence extended", &|| armed().is_some_and(|d| d > first));
        assert_eq!(shared.read().unwrap().fence_deadline, armed());
        // By n3's 1.2 s less the 500 ms margin from the round's start, not 2 s.
        let extended = armed().unwrap();
        assert!(
            extended <= Instant::now() + Duration::from_millis(700),
            "the fence was extended past the shortest promise: {:?} from now",
            extended.saturating_duration_since(Instant::now())
        );
        // One member refuses: nothing is extended any more.
        code.store(409, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        let held = arm(300);
        std::thread::sleep(Duration::from_millis(1200));
        assert_eq!(
            armed(),
            Some(held),
            "extended without every member's confirmation"
        );
        // All confirm again, but this member no longer leads: nothing is extended.
        shared.write().unwrap().failsafe.set_leading(false);
        code.store(200, Ordering::SeqCst);
        let held = arm(300);
        std::thread::sleep(Duration::from_millis(1200));
        assert_eq!(
            armed(),
            Some(held),
            "extended for a member that does not lead"
        );
        keeper.abort();
    }
}
