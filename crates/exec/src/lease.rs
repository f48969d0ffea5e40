//! The leader lease: take, renew, release, and giving it up.

use super::*;

impl<P: Postgres, H: Host> Executor<P, H> {
    pub(crate) async fn claim_initialize(&mut self, value: &str) -> Step {
        let won = self.store.initialize_claim(value).await?;
        if won {
            info!("claimed the cluster's initialize key ({value})");
        }
        Ok(if won { Flow::Continue } else { Flow::Stop })
    }

    pub(crate) async fn acquire_lease(&mut self) -> Step {
        if let Err(why) = self.host.begin_acquire() {
            self.message = Some(why);
            return Ok(Flow::Stop);
        }
        let (t0, ttl_ms) = (self.host.instant(), self.settings.ttl_ms);
        self.tighten(t0, ttl_ms)?;
        // On an error the outcome is unknown: the host keeps refusing failsafe
        // confirmations until a view of the store says who leads.
        let won = self
            .store
            .leader_acquire(&self.settings.name, ttl_ms)
            .await
            .map_err(|e| e.context("take the leader lease"))?;
        self.lease_outcome(won, t0, ttl_ms, "acquired the leader lease")?;
        if !won {
            self.message = Some("another member holds the leader lease".into());
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }

    pub(crate) async fn renew_lease(&mut self) -> Step {
        let (t0, ttl_ms) = (self.host.instant(), self.settings.ttl_ms);
        self.tighten(t0, ttl_ms)?;
        let kept = match self.store.leader_renew(&self.settings.name, ttl_ms).await {
            Ok(k) => k,
            Err(e) => {
                return Err(StepError::StoreUnreachable(
                    e.context("renew the leader lease"),
                ))
            }
        };
        let was_held = self.mem.held_lease;
        self.lease_outcome(kept, t0, ttl_ms, "holds the leader lease again (renewed)")?;
        if !kept {
            if was_held {
                warn!("lost the leader lease");
            }
            self.message = Some("lost the leader lease".into());
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }

    /// The view shows another member holding an unexpired lease: this member no longer
    /// leads, whatever it last knew. A lease that went while this agent could not renew it
    /// (frozen, cut off) ends with no refused renewal, and no later plan has a lease action
    /// to say so: a member that still thought it led kept no liveness (it showed as
    /// unreachable while it streamed, and no failover or synchronous set counted it) and
    /// kept its fence armed (found by a CI failure of the integration test
    /// `a_frozen_leader_agent_is_fenced_before_anyone_is_promoted`; the simulator's
    /// convergence check now requires it). The fence goes only with PostgreSQL: disarmed
    /// here once nothing runs, otherwise by `stop_action` after the plan stops it.
    pub(crate) async fn forget_a_lease_another_holds(&mut self, view: &ClusterView) {
        if !self.mem.held_lease {
            return;
        }
        let now = self.host.now_ms();
        let Some(holder) = view
            .leader
            .as_ref()
            .filter(|l| l.member != self.settings.name && l.expires_ms > now)
        else {
            return;
        };
        if !self.pg.running().await {
            // Until the fence made sure no process is left, this member still counts as
            // the one that led: the next plan tries again, and nothing else disarms.
            let why = "the leader lease went to another member";
            if let Err(e) = self.pg.fence(why).await {
                warn!("{e:#}: the fence stays armed (tried again at the next loop)");
                return;
            }
            self.host.disarm();
        }
        warn!(
            "{} holds the leader lease: this member no longer leads (its lease went while it \
             could not renew it)",
            holder.member
        );
        self.mem.held_lease = false;
        self.host.set_leading(false);
    }

    /// A lease request that started at `t0` and asked for `ttl_ms` came back: arm the
    /// fence when it is held.
    fn lease_outcome(&mut self, held: bool, t0: H::Instant, ttl_ms: u64, took: &str) -> Step {
        if held {
            self.arm(t0, ttl_ms)?;
            if !self.mem.held_lease {
                info!("{took}");
            }
        }
        self.host.set_leading(held);
        self.mem.held_lease = held;
        Ok(Flow::Continue)
    }

    /// Before every lease request: a fence armed for longer than this request's lease would
    /// last (the TTL was lowered) is pulled in first (`Host::tighten`, which never moves it
    /// later, so it is asked every time rather than tracking what the fence counts on:
    /// failsafe rounds and the keepers arm it too). Pinned simulator test
    /// `a_shorter_renewal_whose_answer_is_lost_outlives_the_fence`.
    fn tighten(&mut self, t0: H::Instant, ttl_ms: u64) -> std::result::Result<(), StepError> {
        self.host
            .tighten(t0, ttl_ms)
            .map_err(|e| StepError::Fatal(format!("{e:#}")))
    }

    /// Arm the watchdog for a request that started at `t0` and asked the store for
    /// `ttl_ms` (the TTL may change between loops: the fence follows the one asked for);
    /// without a live fence this member must not run a primary.
    pub(crate) fn arm(
        &mut self,
        t0: H::Instant,
        ttl_ms: u64,
    ) -> std::result::Result<(), StepError> {
        self.host
            .arm(t0, ttl_ms)
            .map_err(|e| StepError::Fatal(format!("{e:#}")))
    }

    pub(crate) async fn release_lease(&mut self, reason: &str) -> Step {
        self.give_up_lease(reason).await?;
        Ok(Flow::Continue)
    }

    /// Give the lease up: only once PostgreSQL no longer runs, and no backend of a
    /// postmaster that died alone is left to finish a commit. Then the fence has nothing
    /// left to guard and is disarmed.
    pub async fn give_up_lease(&mut self, reason: &str) -> Result<()> {
        if self.pg.running().await {
            anyhow::bail!("not releasing the leader lease: PostgreSQL still runs");
        }
        self.pg.fence("releasing the leader lease").await?;
        if self.store.leader_release(&self.settings.name).await? {
            warn!("released the leader lease: {reason}");
        }
        self.mem.held_lease = false;
        self.host.set_leading(false);
        self.host.disarm();
        Ok(())
    }
}
