//! The operation: one key holding the current operation's JSON. Posting and updating are
//! compare-and-sets on the key's revision, after checking the stored id and phase.

use super::client::backoff;
use super::{EtcdStore, CAS_ATTEMPTS};
use crate::Result;
use anyhow::Context;
use etcd_client::{Compare, CompareOp, KeyValue, Txn, TxnOp};
use pgbaton_core::model::{OpPhase, Operation};

/// The fields of a stored operation that its compare-and-sets look at.
#[derive(serde::Deserialize)]
struct OpHead {
    id: String,
    phase: OpPhase,
}

impl EtcdStore {
    /// The current operation key and its head.
    async fn op_current(&self, action: &str) -> Result<Option<(KeyValue, OpHead)>> {
        match self.get_one(action, "op").await? {
            None => Ok(None),
            Some(kv) => {
                let head: OpHead = self.parse(&kv, "an operation")?;
                Ok(Some((kv, head)))
            }
        }
    }

    /// Put the operation key if it is unchanged since `seen` (`None` = absent).
    async fn op_put_if(&self, action: &str, seen: Option<&KeyValue>, json: &str) -> Result<bool> {
        let key = self.key("op");
        let cmp = match seen {
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Some(kv) => Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision()),
        };
        let txn = Txn::new()
            .when([cmp])
            .and_then([TxnOp::put(key, json, None)]);
        Ok(self.txn(action, txn).await?.succeeded())
    }

    pub(super) async fn read_op(&self) -> Result<Option<Operation>> {
        self.get_one("read the current operation", "op")
            .await?
            .map(|kv| self.parse(&kv, "an operation"))
            .transpose()
    }

    pub(super) async fn post_op(&self, op: &Operation) -> Result<bool> {
        const ACTION: &str = "post an operation";
        let json = serde_json::to_string(op)
            .with_context(|| format!("serializing operation {}", op.id))?;
        for attempt in 0..CAS_ATTEMPTS {
            let current = self.op_current(ACTION).await?;
            if let Some((_, head)) = &current {
                if !head.phase.finished() {
                    return Ok(false);
                }
            }
            if self
                .op_put_if(ACTION, current.as_ref().map(|(kv, _)| kv), &json)
                .await?
            {
                return Ok(true);
            }
            backoff(attempt).await;
        }
        Err(self.conflict(ACTION))
    }

    pub(super) async fn update_op(
        &self,
        id: &str,
        phase: OpPhase,
        new: &Operation,
    ) -> Result<bool> {
        const ACTION: &str = "update the current operation";
        let json = serde_json::to_string(new)
            .with_context(|| format!("serializing operation {}", new.id))?;
        for attempt in 0..CAS_ATTEMPTS {
            let Some((kv, head)) = self.op_current(ACTION).await? else {
                return Ok(false);
            };
            if head.id != id || head.phase != phase {
                return Ok(false);
            }
            if self.op_put_if(ACTION, Some(&kv), &json).await? {
                return Ok(true);
            }
            backoff(attempt).await;
        }
        Err(self.conflict(ACTION))
    }
}
