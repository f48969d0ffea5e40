//! Replication slots on the local PostgreSQL.

use super::*;
use pgbaton_core::model::SLOT_PREFIX;

impl<P: Postgres, H: Host> Executor<P, H> {
    pub(crate) async fn ensure_slots(&mut self, names: Vec<String>) -> Step {
        if !self.pg.connected() {
            return Ok(Flow::Stop);
        }
        for name in names {
            match self.pg.ensure_slot(&name).await? {
                SlotEnsured::Existed => {}
                SlotEnsured::Created => info!("created replication slot {name}"),
                SlotEnsured::Recreated => warn!(
                    "replication slot {name} had been invalidated (its member fell more \
                     than postgresql.max_slot_wal_keep_size behind): created it again. \
                     The member catches up from the WAL archive when there is one; \
                     without one it needs `pgbaton reinit`"
                ),
            }
        }
        Ok(Flow::Continue)
    }

    pub(crate) async fn drop_slots(&mut self, names: Vec<String>) -> Step {
        if !self.pg.connected() {
            return Ok(Flow::Stop);
        }
        for name in names {
            // Never a slot pgbaton did not name.
            if !name.starts_with(SLOT_PREFIX) {
                warn!("not dropping slot {name}: pgbaton did not create it");
                continue;
            }
            if self.pg.drop_slot(&name).await? {
                info!("dropped replication slot {name}");
            }
        }
        Ok(Flow::Continue)
    }

    pub(crate) async fn advance_slots(&mut self, targets: Vec<(String, Lsn)>) -> Step {
        if !self.pg.connected() {
            return Ok(Flow::Stop);
        }
        for (name, lsn) in targets {
            // Not worth stopping the loop for: the next loop tries again.
            if let Err(e) = self.pg.advance_slot(&name, lsn).await {
                warn!("{e:#}");
            }
        }
        Ok(Flow::Continue)
    }
}
