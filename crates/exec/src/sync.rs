//! The leader's synchronous-set steps. The decision plans them (`pgbaton_core::sync`);
//! here each is checked once more against what the store and PostgreSQL say right now
//! (the safety rule as an assertion in code), then carried out.

use super::*;
use pgbaton_core::model::HistoryEntry;
use pgbaton_core::sync::{SyncNames, SyncRecord};

impl<P: Postgres, H: Host> Executor<P, H> {
    /// Write the record (compare-and-set on the text the view read, won only while this
    /// member holds the lease). Relaxing it (`barrier`) first proves every commit
    /// acknowledged so far is on the standbys PostgreSQL's current list names, and refuses
    /// a record that would not cover that list.
    pub(crate) async fn write_sync_set(
        &mut self,
        view: &ClusterView,
        record: &SyncRecord,
        barrier: bool,
    ) -> Step {
        if barrier {
            let names = self.pg.sync_names().await?;
            if !record.covers(&names) {
                fail!(
                    "refusing to record the synchronous set {record:?}: it does not cover \
                     PostgreSQL's synchronous_standby_names ({names})"
                );
            }
            self.pg.sync_barrier(&names).await?;
        }
        let text = pgbaton_store::sync_record_text(record);
        let me = self.settings.name.clone();
        if !self
            .store
            .sync_cas(&me, view.sync_text.as_deref(), Some(&text))
            .await?
        {
            info!("the synchronous set changed in the store meanwhile (or the lease went): deciding again");
            return Ok(Flow::Stop);
        }
        info!("synchronous set recorded: {}", record.describe());
        Ok(Flow::Continue)
    }

    /// Synchronous replication was turned off: delete the record (PostgreSQL's list is
    /// emptied next; until then it only makes commits wait longer).
    pub(crate) async fn clear_sync_set(&mut self, view: &ClusterView) -> Step {
        let me = self.settings.name.clone();
        if !self
            .store
            .sync_cas(&me, view.sync_text.as_deref(), None)
            .await?
        {
            return Ok(Flow::Stop);
        }
        info!("synchronous replication off: the synchronous set is no longer recorded");
        self.record_sync_change(
            "synchronous replication turned off: failover may lose the last commits",
        )
        .await;
        Ok(Flow::Continue)
    }

    /// Set PostgreSQL's list, after checking that the record in the store (read afresh)
    /// covers it: a standby enters the record before PostgreSQL waits on it.
    pub(crate) async fn set_sync_names(&mut self, names: &SyncNames, local: &LocalView) -> Step {
        let stored = self.store.sync_get().await?;
        if let Some(text) = stored.as_deref() {
            let record = pgbaton_store::parse_sync_record(text);
            if !record.covers(names) {
                fail!(
                    "refusing to set synchronous_standby_names to '{names}': the recorded \
                     synchronous set {record:?} does not cover it"
                );
            }
        }
        let before = local.sync_names.clone();
        self.pg.set_sync_names(names).await?;
        let mode = local.policy.sync.mode;
        let msg = match names {
            SyncNames::Off if stored.is_some() => format!(
                "synchronous replication ({mode}) degraded: no eligible standby, commits no \
                 longer wait (no standby is promoted automatically until one is synchronous again)"
            ),
            SyncNames::Off => "commits no longer wait for a standby".to_string(),
            _ => format!("synchronous standbys ({mode}): {names}"),
        };
        if *names == SyncNames::Off && stored.is_some() {
            warn!("{msg}");
        } else {
            info!("{msg} (was '{before}')");
        }
        self.record_sync_change(&msg).await;
        Ok(Flow::Continue)
    }

    async fn record_sync_change(&mut self, msg: &str) {
        let (timeline, lsn) = self.pg.position().await;
        let entry = HistoryEntry {
            time_ms: self.host.now_ms(),
            operation: "synchronous".into(),
            members: vec![self.settings.name.clone()],
            result: "done".into(),
            timeline,
            lsn,
            message: Some(msg.to_string()),
        };
        if let Err(e) = self.store.history_append(&entry).await {
            warn!("record the synchronous set's change in the history: {e:#}");
        }
    }
}
