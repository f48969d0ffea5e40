//! The synchronous set's record: one key, changed only by a transaction that also checks
//! the writer still holds the leader key (same revision as just read, so not expired and
//! not taken since).

use super::EtcdStore;
use crate::Result;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};

impl EtcdStore {
    pub(super) async fn sync_text(&self) -> Result<Option<String>> {
        match self.get_one("read the synchronous set", "sync").await? {
            Some(kv) => Ok(Some(self.text(&kv)?)),
            None => Ok(None),
        }
    }

    pub(super) async fn sync_replace(
        &self,
        leader: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<bool> {
        let action = "write the synchronous set";
        let Some(lease) = self.held_by(action, leader).await? else {
            return Ok(false);
        };
        let key = self.key("sync");
        let held =
            Compare::mod_revision(self.key("leader"), CompareOp::Equal, lease.mod_revision());
        let same = match expected {
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Some(v) => Compare::value(key.clone(), CompareOp::Equal, v),
        };
        let change = match new {
            Some(v) => TxnOp::put(key, v, None),
            None => TxnOp::delete(key, None),
        };
        let txn = Txn::new().when([held, same]).and_then([change]);
        Ok(self.txn(action, txn).await?.succeeded())
    }
}
