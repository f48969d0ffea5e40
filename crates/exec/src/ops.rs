//! Bootstrap, and the steps of operations that touch the store: removing this member, the
//! old primary's part of a switchover, moving an operation on and finishing it.

use super::*;
use pgbaton_core::decide::claim_value;
use pgbaton_core::model::{HistoryEntry, OpPhase, Operation};

impl<P: Postgres, H: Host> Executor<P, H> {
    /// initdb (when empty), take the lease, start as primary, create roles and databases,
    /// then replace the claim with the system identifier. Resumable after a crash.
    pub(crate) async fn bootstrap(&mut self, data: &DataDir) -> Step {
        let me = self.settings.name.clone();
        self.message = Some("initializing a new cluster".into());
        self.host
            .publish_status(
                MemberStatus::Bootstrapping,
                self.message.as_deref(),
                &self.mem,
            )
            .await;
        self.pg.initdb_if_empty(data).await?;
        // Only the lease holder may run a writable primary: take the lease first.
        let t0 = self.host.instant();
        let ttl_ms = self.settings.ttl_ms;
        if !self.store.leader_acquire(&me, ttl_ms).await? {
            fail!("cannot bootstrap: another member holds the leader lease");
        }
        self.arm(t0, ttl_ms)?;
        self.mem.held_lease = true;
        self.host.set_leading(true);
        let _keeper = self.keeper();
        if !self.pg.running().await {
            self.start(false, None).await?;
        }
        let system_id = self.pg.init_cluster().await?;
        if !self
            .store
            .initialize_replace(&claim_value(&me), &system_id)
            .await?
        {
            fail!(
                "the cluster's initialize key changed under this bootstrap; not publishing the identity"
            );
        }
        info!("bootstrapped the cluster: system identifier {system_id}");
        self.message = None;
        Ok(Flow::Continue)
    }

    /// Stop PostgreSQL, deregister, delete the data directory when asked; the agent exits.
    pub(crate) async fn remove_self(&mut self, op: &Operation, purge: bool) -> Step {
        let me = self.settings.name.clone();
        info!(
            "removing this member from the cluster{}",
            if purge {
                " and deleting its data (--purge)"
            } else {
                ""
            }
        );
        self.stop_pg().await?;
        self.store.member_delete(&me).await?;
        if purge {
            self.pg.purge().await?;
        }
        let msg =
            format!("{me} stopped and deregistered; waiting for the primary to drop its slot");
        let now = self.host.now_ms();
        self.store
            .op_update(
                &op.id,
                op.phase,
                &op.at(OpPhase::Deregistered, Some(msg), now),
            )
            .await?;
        self.mem.removed = true;
        Ok(Flow::Stop)
    }

    /// Switchover, on the old primary: stop cleanly, record the shutdown checkpoint in the
    /// operation (phase `demoted`), release the lease.
    pub(crate) async fn stop_for_switchover(&mut self, op: &Operation) -> Step {
        let me = self.settings.name.clone();
        info!("switchover: stopping PostgreSQL cleanly (shutdown checkpoint)");
        self.stop_pg().await?;
        let lsn = self.pg.shutdown_checkpoint().await?;
        let now = self.host.now_ms();
        let mut next = op.at(
            OpPhase::Demoted,
            Some(format!("{me} stopped cleanly at {lsn}")),
            now,
        );
        next.checkpoint_lsn = Some(lsn);
        if !self.store.op_update(&op.id, op.phase, &next).await? {
            fail!("the switchover request changed while stopping");
        }
        self.give_up_lease(&format!("switchover: shutdown checkpoint {lsn}"))
            .await?;
        Ok(Flow::Continue)
    }

    pub(crate) async fn advance_op(
        &mut self,
        op: &Operation,
        phase: OpPhase,
        message: String,
    ) -> Step {
        info!("operation {}: {message}", op.id);
        let now = self.host.now_ms();
        let moved = self
            .store
            .op_update(&op.id, op.phase, &op.at(phase, Some(message), now))
            .await?;
        Ok(if moved { Flow::Continue } else { Flow::Stop })
    }

    /// Finish an operation (done or failed) and write it into the history.
    pub(crate) async fn finish_op(
        &mut self,
        op: &Operation,
        ok: bool,
        message: &str,
    ) -> Result<()> {
        let phase = if ok { OpPhase::Done } else { OpPhase::Failed };
        let now = self.host.now_ms();
        if !self
            .store
            .op_update(
                &op.id,
                op.phase,
                &op.at(phase, Some(message.to_string()), now),
            )
            .await?
        {
            return Ok(()); // someone else finished it
        }
        if ok {
            info!("operation {} done: {message}", op.id);
        } else {
            warn!("operation {} failed: {message}", op.id);
        }
        let (timeline, lsn) = self.cluster_position().await?;
        self.store
            .history_append(&HistoryEntry {
                time_ms: now,
                operation: op.kind.name().to_string(),
                members: op.kind.members(),
                result: if ok { "done" } else { "failed" }.to_string(),
                timeline,
                lsn,
                message: Some(message.to_string()),
            })
            .await
    }

    /// The cluster's position: the leader's, probed afresh when this member leads (a
    /// promotion just changed it), else the leader's last report.
    async fn cluster_position(&mut self) -> Result<(Option<u32>, Option<Lsn>)> {
        let leader = self.store.leader_get().await?.map(|l| l.member);
        Ok(match leader {
            Some(l) if l == self.settings.name => self.pg.position().await,
            Some(l) => match self.store.member_get(&l).await? {
                Some(m) => (m.timeline, m.lsn),
                None => (None, None),
            },
            None => (None, None),
        })
    }
}
