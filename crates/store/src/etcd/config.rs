//! The cluster's config record: one key, replaced only by a transaction that compares its
//! value with the one the writer read.

use super::EtcdStore;
use crate::Result;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};

impl EtcdStore {
    pub(super) async fn config_text(&self) -> Result<Option<String>> {
        match self.get_one("read the cluster's config", "config").await? {
            Some(kv) => Ok(Some(self.text(&kv)?)),
            None => Ok(None),
        }
    }

    pub(super) async fn config_replace(&self, expected: Option<&str>, new: &str) -> Result<bool> {
        let key = self.key("config");
        let same = match expected {
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Some(v) => Compare::value(key.clone(), CompareOp::Equal, v),
        };
        let txn = Txn::new()
            .when([same])
            .and_then([TxnOp::put(key, new, None)]);
        Ok(self
            .txn("write the cluster's config", txn)
            .await?
            .succeeded())
    }
}
