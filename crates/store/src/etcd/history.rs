//! The history: one key per entry, `history/<20-digit sequence number>`, and the counter
//! `history_seq`. An append is one transaction that bumps the counter (compare-and-set on
//! its revision), puts the entry and deletes those beyond the last [`HISTORY_KEEP`].

use super::client::backoff;
use super::{EtcdStore, CAS_ATTEMPTS};
use crate::{Result, Store, HISTORY_KEEP};
use anyhow::{anyhow, Context};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use pgbaton_core::model::HistoryEntry;

pub(super) fn history_key_suffix(seq: u64) -> String {
    format!("history/{seq:020}")
}

impl EtcdStore {
    pub(super) async fn append_history(&self, entry: &HistoryEntry) -> Result<()> {
        const ACTION: &str = "append to the history";
        let json = serde_json::to_string(entry).context("serializing a history entry")?;
        let seq_key = self.key("history_seq");
        // The counter as last seen: (value, mod_revision); None = absent.
        let mut seen: Option<(u64, i64)> = match self.get_one(ACTION, "history_seq").await? {
            None => None,
            Some(kv) => Some(self.parse_seq(&kv)?),
        };
        for attempt in 0..CAS_ATTEMPTS {
            let (last, cmp) = match seen {
                None => (
                    0,
                    Compare::create_revision(seq_key.clone(), CompareOp::Equal, 0),
                ),
                Some((last, rev)) => (
                    last,
                    Compare::mod_revision(seq_key.clone(), CompareOp::Equal, rev),
                ),
            };
            let seq = last
                .checked_add(1)
                .ok_or_else(|| anyhow!("the history sequence is exhausted"))?;
            let mut ops = vec![
                TxnOp::put(seq_key.clone(), seq.to_string(), None),
                TxnOp::put(self.key(&history_key_suffix(seq)), json.clone(), None),
            ];
            // Keep the entries seq - HISTORY_KEEP + 1 ..= seq.
            if let Some(first_kept) = seq.checked_sub(HISTORY_KEEP as u64 - 1) {
                if first_kept > 1 {
                    ops.push(TxnOp::delete(
                        self.key(&history_key_suffix(0)),
                        Some(
                            DeleteOptions::new()
                                .with_range(self.key(&history_key_suffix(first_kept))),
                        ),
                    ));
                }
            }
            let txn = Txn::new()
                .when([cmp])
                .and_then(ops)
                .or_else([TxnOp::get(seq_key.clone(), None)]);
            let resp = self.txn(ACTION, txn).await?;
            if resp.succeeded() {
                return Ok(());
            }
            // Lost to another appender: the failure branch read the counter's new value.
            seen = None;
            for r in resp.op_responses() {
                if let TxnOpResponse::Get(g) = r {
                    if let Some(kv) = g.kvs().first() {
                        seen = Some(self.parse_seq(kv)?);
                    }
                }
            }
            backoff(attempt).await;
        }
        Err(self.conflict(ACTION))
    }

    pub(super) async fn read_history(&self, limit: usize) -> Result<Vec<HistoryEntry>> {
        if limit == 0 {
            return Ok(vec![]);
        }
        let (start, end) = (self.key("history/"), self.key("history0"));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut resp = self
            .call("read the history", |mut c| {
                let (start, end) = (start.clone(), end.clone());
                async move {
                    let opts = GetOptions::new()
                        .with_range(end)
                        .with_sort(SortTarget::Key, SortOrder::Descend)
                        .with_limit(limit);
                    c.get(start, Some(opts)).await
                }
            })
            .await?;
        let mut kvs = resp.take_kvs();
        kvs.reverse();
        kvs.iter()
            .map(|kv| self.parse(kv, "a history entry"))
            .collect()
    }

    /// The value and mod_revision of the `history_seq` key.
    fn parse_seq(&self, kv: &KeyValue) -> Result<(u64, i64)> {
        let text = self.text(kv)?;
        let seq = text.parse::<u64>().map_err(|_| {
            anyhow!(
                "{}: the value of key {} is not a number: {text:?}",
                self.describe(),
                String::from_utf8_lossy(kv.key())
            )
        })?;
        Ok((seq, kv.mod_revision()))
    }
}
