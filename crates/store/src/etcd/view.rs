//! The whole cluster in one request: the keys under the cluster's prefix but the history,
//! read in one transaction (two ranges, one revision), and turned into a `ClusterView`.
//! The watch task (`watch`) keeps the same keys current and builds the view the same way.

use super::EtcdStore;
use crate::{MembersRead, Result};
use etcd_client::{GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use pgbaton_core::decide::ClusterView;
use pgbaton_core::model::{Identity, Operation};
use std::collections::BTreeMap;

/// The cluster's keys (without the prefix) and their entries, the history left out.
pub(super) type Keys = BTreeMap<String, KeyValue>;

/// Whether a key (without the prefix) belongs in the view: every key but the history,
/// which only `pgbaton history` reads and which may hold a thousand entries.
pub(super) fn in_view(suffix: &str) -> bool {
    !(suffix.starts_with("history/") || suffix == "history_seq")
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    // Prefixes here end in '/' (or a letter): the last byte is never 0xff.
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

impl EtcdStore {
    /// The cluster's keys in one request, and the revision they were read at. The ranges
    /// before and after the history are two reads of one transaction.
    pub(super) async fn read_keys(&self) -> Result<(Keys, i64)> {
        let history = self.key("history");
        let ranges = [
            (self.prefix.clone(), history.clone().into_bytes()),
            (self.key("history~"), prefix_end(&self.prefix)),
        ];
        let txn = Txn::new().and_then(
            ranges
                .iter()
                .map(|(from, to)| {
                    TxnOp::get(from.clone(), Some(GetOptions::new().with_range(to.clone())))
                })
                .collect::<Vec<_>>(),
        );
        let resp = self.txn("read the cluster", txn).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut keys = Keys::new();
        for r in resp.op_responses() {
            if let TxnOpResponse::Get(g) = r {
                for kv in g.kvs() {
                    if let Some(suffix) = self.suffix(kv) {
                        if in_view(&suffix) {
                            keys.insert(suffix, kv.clone());
                        }
                    }
                }
            }
        }
        Ok((keys, revision))
    }

    /// A key's name without the cluster's prefix (`None` for a key of another prefix).
    pub(super) fn suffix(&self, kv: &KeyValue) -> Option<String> {
        let key = std::str::from_utf8(kv.key()).ok()?;
        key.strip_prefix(&self.prefix).map(str::to_string)
    }

    /// The view the keys hold at wall-clock `now_ms`.
    pub(super) fn view_of(&self, keys: &Keys, now_ms: u64) -> Result<ClusterView> {
        let text = |suffix: &str| keys.get(suffix).map(|kv| self.text(kv)).transpose();
        let records = keys
            .range("members/".to_string().."members0".to_string())
            .map(|(k, kv)| {
                let name = k.strip_prefix("members/").unwrap_or(k).to_string();
                (name, String::from_utf8_lossy(kv.value()).into_owned())
            })
            .collect();
        let mut members = MembersRead::from_records(records, &crate::Store::describe(self));
        // A member whose liveness key exists was alive within its lease's TTL: seen now.
        for m in &mut members.members {
            if keys.contains_key(&format!("alive/{}", m.name)) {
                m.seen_ms = now_ms;
            }
        }
        let op: Result<Option<Operation>> = keys
            .get("op")
            .map(|kv| self.parse(kv, "an operation"))
            .transpose();
        let op = crate::op_or_unreadable(op, &mut members.unreadable)?;
        let sync_text = text("sync")?;
        let leader = keys
            .get("leader")
            .map(|kv| self.leader_of(kv, now_ms))
            .transpose()?;
        crate::mark_leader_seen(&mut members.members, leader.as_ref(), now_ms);
        Ok(ClusterView {
            sync: sync_text.as_deref().map(crate::parse_sync_record),
            sync_text,
            config_text: text("config")?,
            initialize: text("initialize")?.as_deref().map(Identity::parse),
            leader,
            members: members.members,
            unreadable: members.unreadable,
            op,
            paused: keys.get("paused").is_some_and(|kv| kv.value() == b"true"),
        })
    }

    /// The view in one request (a store that keeps no watch, or whose watch is down).
    pub(super) async fn read_view_once(&self) -> Result<ClusterView> {
        let (keys, _) = self.read_keys().await?;
        self.view_of(&keys, crate::now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_leaves_the_history_out() {
        assert!(in_view("leader"));
        assert!(in_view("members/n1"));
        assert!(!in_view("history/00000000000000000001"));
        assert!(!in_view("history_seq"));
        assert_eq!(prefix_end("/pgbaton/c1/"), b"/pgbaton/c10".to_vec());
        // Both history keys sort between the two ranges read.
        assert!("history/9" < "history~" && "history_seq" < "history~");
        assert!("history" < "history/9" && "history" < "history_seq");
    }
}
