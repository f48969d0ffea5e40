//! Actions on the local PostgreSQL: start, stop, promote, follow, restart, reload, and
//! making it a standby again (rejoin, clone, reinit).

use super::*;
use pgbaton_core::model::HistoryEntry;

impl<P: Postgres, H: Host> Executor<P, H> {
    pub(crate) async fn start_action(
        &mut self,
        local: &LocalView,
        upstream: Option<&Upstream>,
    ) -> Step {
        let standby = is_standby(local);
        let _keeper = self.keeper();
        if let Err(e) = self.start(standby, upstream).await {
            let now = self.host.now_ms();
            self.mem.start_failed(standby, now);
            return Err(e.into());
        }
        Ok(Flow::Continue)
    }

    /// Start PostgreSQL in its role.
    pub(crate) async fn start(&mut self, standby: bool, upstream: Option<&Upstream>) -> Result<()> {
        self.pg.prepare().await?;
        // A new start begins a new wait for the WAL receiver to stream.
        self.mem.starting();
        self.host
            .publish_status(MemberStatus::Starting, self.message.as_deref(), &self.mem)
            .await;
        self.pg.start(standby, upstream).await?;
        let role = if standby { "standby" } else { "primary" };
        if self.mem.started() {
            info!(
                restarts = self.mem.restarts,
                "restarted PostgreSQL as {role} after it stopped unexpectedly"
            );
        } else {
            info!(
                "started PostgreSQL as {role}{}",
                upstream
                    .map(|u| format!(" following {} ({}:{})", u.member, u.host, u.port))
                    .unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The lease keeper, while this member holds the lease.
    pub(crate) fn keeper(&mut self) -> Option<Box<dyn Send>> {
        if self.mem.held_lease {
            self.host.keep_lease()
        } else {
            None
        }
    }

    /// Stop PostgreSQL on purpose (not a crash).
    pub(crate) async fn stop_pg(&mut self) -> Result<()> {
        self.mem.stopping();
        self.pg.stop().await
    }

    pub(crate) async fn stop_action(&mut self, reason: &str) -> Step {
        warn!("stopping PostgreSQL: {reason}");
        self.stop_pg().await?;
        if !self.mem.held_lease {
            // No backend of a postmaster that died on its own outlives the fence.
            self.pg.fence("stopping PostgreSQL").await?;
            self.host.disarm();
        }
        Ok(Flow::Continue)
    }

    pub(crate) async fn follow(&mut self, upstream: Option<&Upstream>) -> Step {
        self.pg.follow(upstream).await?;
        info!(
            "now following {}",
            upstream.map_or("nobody", |u| u.member.as_str())
        );
        Ok(Flow::Continue)
    }

    pub(crate) async fn promote(&mut self, view: &ClusterView) -> Step {
        if !self.pg.connected() {
            fail!("no connection to PostgreSQL to promote it");
        }
        info!("promoting PostgreSQL");
        let _keeper = self.keeper();
        self.pg.promote().await?;
        info!("promoted: PostgreSQL accepts writes (checkpointed on the new timeline)");
        let now = self.host.now_ms();
        let by_op = view.op.as_ref().is_some_and(|o| o.in_flight(now));
        if !by_op {
            self.record_failover(view).await;
        }
        self.host.promoted();
        Ok(Flow::Continue)
    }

    /// An automatic promotion goes into the history as a failover.
    async fn record_failover(&mut self, view: &ClusterView) {
        let me = self.settings.name.clone();
        let old = pgbaton_core::failover::last_primary(&view.members, &me).name;
        let (timeline, lsn) = self.pg.position().await;
        let msg = format!(
            "{me} took over automatically{}",
            old.as_deref()
                .map(|o| format!(" from {o} (its lease ran out)"))
                .unwrap_or_default()
        );
        warn!("failover: {msg}");
        let entry = HistoryEntry {
            time_ms: self.host.now_ms(),
            operation: "failover".into(),
            members: old.into_iter().chain(std::iter::once(me)).collect(),
            result: "done".into(),
            timeline,
            lsn,
            message: Some(msg),
        };
        if let Err(e) = self.store.history_append(&entry).await {
            warn!("record the failover in the history: {e:#}");
        }
    }

    pub(crate) async fn restart(&mut self, local: &LocalView, upstream: Option<&Upstream>) -> Step {
        info!("restarting PostgreSQL as asked");
        let _keeper = self.keeper();
        self.stop_pg().await?;
        self.start(is_standby(local), upstream).await?;
        Ok(Flow::Continue)
    }

    pub(crate) async fn reload(&mut self) -> Step {
        self.pg.reload().await?;
        info!("PostgreSQL reloaded its configuration as asked");
        Ok(Flow::Continue)
    }

    /// Make this former primary (PostgreSQL stopped) a standby of `upstream`: pg_rewind it
    /// when it diverged, then configure and start it.
    pub(crate) async fn rejoin(&mut self, upstream: &Upstream) -> Step {
        self.pg.prepare().await?;
        info!(
            "rejoining as a standby of {}: asking pg_rewind whether the timelines diverged",
            upstream.member
        );
        match self.pg.rewind(upstream).await {
            Ok(Rewind::NotNeeded) => {
                info!("no rewind needed: the data had not diverged");
                if let Some(why) = self.pg.upstream_wal_gone() {
                    // Starting it again would only fail the same way, every few seconds.
                    self.mem.rejoin_failed = Some(format!(
                        "its upstream no longer has the WAL it needs: {why}"
                    ));
                    fail!(
                        "{} cannot stream: its upstream {} no longer has the WAL it needs and no \
                         archive gave it ({why}); `pgbaton reinit {}` makes a fresh copy",
                        self.settings.name,
                        upstream.member,
                        self.settings.name
                    )
                }
            }
            Ok(Rewind::Rewound { diverged_at }) => info!(
                "rewound: the data had diverged from {} at {diverged_at}",
                upstream.member
            ),
            // Not a failed rewind: tried again on a later loop (pinned simulator test
            // `an_unreachable_rewind_source_is_retried`).
            // A wait, not a failure: it must not fail the operation it is a step of either.
            Ok(Rewind::SourceUnreachable(why)) => {
                self.message = Some(format!("cannot rejoin {} yet: {why}", upstream.member));
                return Ok(Flow::Stop);
            }
            Err(e) => {
                self.mem.rejoin_failed = Some(format!("{e:#}"));
                fail!(
                    "{e:#}. The data directory cannot be rewound; re-clone it with `pgbaton reinit {}` \
                     (pgbaton does not wipe it on its own)",
                    self.settings.name
                )
            }
        }
        self.start(true, Some(upstream)).await?;
        Ok(Flow::Continue)
    }

    pub(crate) async fn clone_from(&mut self, from: &Upstream, replace: bool) -> Step {
        self.message = Some(format!("cloning from {}", from.member));
        self.pg.clone_from(from, replace).await?;
        self.message = None;
        // A fresh copy: what made an earlier rejoin fail is gone with the old data.
        self.mem.rejoin_failed = None;
        self.start(true, Some(from)).await?;
        Ok(Flow::Continue)
    }

    pub(crate) async fn reinit(&mut self, from: &Upstream) -> Step {
        info!("re-cloning from {} as asked (reinit)", from.member);
        self.stop_pg().await?;
        self.clone_from(from, true).await
    }
}
