//! The `etcd` backend: the cluster's keys in an etcd v3 cluster.
//!
//! Keys live under `/pgbaton/<cluster>/`:
//!
//! | key              | value                                   | lease                  |
//! |------------------|-----------------------------------------|------------------------|
//! | `initialize`     | `claimed:<member>` or sysid             | none                   |
//! | `leader`         | JSON `{"member": .., "expires_ms": ..}` | an etcd lease (the TTL)|
//! | `members/<name>` | JSON of `MemberState`                   | none                   |
//! | `op`             | JSON of `Operation`                     | none                   |
//! | `history/<seq>`  | JSON of `HistoryEntry`                  | none                   |
//! | `history_seq`    | the last history sequence number        | none                   |
//! | `paused`         | `true` (absent = not paused)            | none                   |
//! | `alive/<name>`   | empty: the member's agent is alive      | the member's own lease |
//!
//! Every compare-and-set is one etcd transaction: `create_revision == 0` for "absent",
//! `mod_revision == <seen>` for "unchanged since read", `value == <expected>` for the
//! `initialize` key.
//!
//! The leader lease is an etcd lease: the `leader` key is attached to it and disappears when
//! etcd expires it. Expiry is decided by the etcd server alone, never by this client's
//! clock (agents on different machines have different clocks). The lease is granted once
//! when the lease is taken and then kept alive on one KeepAlive stream (a renewal is one
//! message, no write). [`Store::leader_get`] reports the expiry this client worked out
//! for a lease it keeps alive itself; for another's, the key's presence is what counts
//! (etcd deletes it at expiry) and the expiry reported is at most one TTL away.
//!
//! An agent's store keeps the view from a watch on the cluster's keys (`watch`): its loop
//! reads no key. Without a watch (the CLI), the view is one transaction (`view`).
//!
//! `EtcdStore::new` does not connect: the client is created by the first call that needs it,
//! and dropped and recreated once when a call fails (a client made inside one tokio runtime
//! fails at the transport when used from another; a fresh one works).
//!
//! Its modules: `client` (connecting, one bounded request, reading values), `lease`, `ops`
//! and `history` (their compare-and-sets), `view` (the cluster in one request) and `watch`
//! (the view kept current); the initialize key, members and the pause flag are single
//! requests, kept here.

use crate::{Result, Store};
use anyhow::Context;
use async_trait::async_trait;
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use pgbaton_core::model::{HistoryEntry, Leader, MemberState, OpPhase, Operation};
use std::sync::Arc;
use std::time::Duration;

mod access;
mod alive;
mod client;
mod config;
mod history;
mod lease;
mod ops;
mod sync;
mod view;
mod watch;

/// How many times a compare-and-set that lost to a concurrent writer is tried again.
const CAS_ATTEMPTS: usize = 200;

/// A [`Store`] in an etcd v3 cluster, for one cluster of pgbaton.
pub struct EtcdStore {
    cluster: String,
    prefix: String,
    /// The connection (endpoints, TLS and user, the client), shared with the watch task.
    conn: Arc<client::Conn>,
    /// The expiry (this machine's wall-clock ms) last worked out for a lease this client
    /// granted or kept alive.
    expiry: std::sync::Mutex<Option<(i64, u64)>>,
    /// Set by [`EtcdStore::watching`]: the view kept from a watch, started by the first
    /// [`Store::view`].
    watch: Option<std::sync::OnceLock<watch::Watched>>,
    /// The keep-alive stream of the leader lease this client holds.
    keeper: tokio::sync::Mutex<Option<lease::KeepAlive>>,
    /// The lease this client last attached the leader key to (until it releases it).
    own_lease: std::sync::Mutex<Option<i64>>,
    /// The member's liveness lease (`alive/<member>`), with the TTL (s) it was granted
    /// for, and its keep-alive stream.
    alive_lease: std::sync::Mutex<Option<(i64, i64)>>,
    alive_keeper: tokio::sync::Mutex<Option<lease::KeepAlive>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.conn.endpoints)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// A store for `cluster` in the etcd cluster at `endpoints`, in the clear and without
    /// a user. Does not connect.
    pub fn new(endpoints: &[String], cluster: &str) -> EtcdStore {
        EtcdStore::connecting(endpoints, cluster, access::Secured::default())
    }

    fn connecting(endpoints: &[String], cluster: &str, secured: access::Secured) -> EtcdStore {
        EtcdStore::on(Arc::new(client::Conn::new(endpoints, secured)), cluster)
    }

    /// A store for `cluster` on the connection `conn` (shared).
    fn on(conn: Arc<client::Conn>, cluster: &str) -> EtcdStore {
        EtcdStore {
            cluster: cluster.to_string(),
            prefix: format!("/pgbaton/{cluster}/"),
            conn,
            expiry: std::sync::Mutex::new(None),
            watch: None,
            keeper: Default::default(),
            own_lease: Default::default(),
            alive_lease: Default::default(),
            alive_keeper: Default::default(),
        }
    }

    /// A store reached with `access` (TLS, a user): its files are read now, so that a
    /// missing, unreadable or unsafe file is an error here. Does not connect.
    pub fn with_access(
        endpoints: &[String],
        cluster: &str,
        access: &pgbaton_core::config::EtcdAccess,
    ) -> Result<EtcdStore> {
        let secured = access::Secured::load(access)?;
        Ok(EtcdStore::connecting(endpoints, cluster, secured))
    }

    /// Keep the view from a watch on the cluster's keys (see `watch`): for an agent, which
    /// reads the whole cluster every loop.
    pub fn watching(mut self) -> EtcdStore {
        self.watch = Some(std::sync::OnceLock::new());
        self
    }

    /// The kept view, started on first use; `None` for a store that keeps none.
    fn watched(&self) -> Option<&watch::Watched> {
        self.watch
            .as_ref()
            .map(|cell| cell.get_or_init(|| watch::Watched::start(self)))
    }

    /// How many times the kept view was read afresh, and how many times its watch could
    /// not resume because etcd had compacted the revisions it missed ((0, 0) for a store
    /// that keeps no view).
    pub fn view_counts(&self) -> (u64, u64) {
        self.watch
            .as_ref()
            .and_then(|c| c.get())
            .map_or((0, 0), watch::Watched::counts)
    }

    /// Whether the kept view is current (its watch runs); `false` for a store that keeps
    /// none. When it is not, [`Store::view`] reads etcd.
    pub fn view_current(&self) -> bool {
        self.watch
            .as_ref()
            .and_then(|c| c.get())
            .is_some_and(|w| w.keys().is_some())
    }

    /// Hold the kept view's watch off etcd (`true`) or let it resume from the revision it
    /// reached: tests make it miss revisions this way.
    #[doc(hidden)]
    pub fn hold_watch(&self, held: bool) {
        if let Some(w) = self.watched() {
            w.hold(held);
        }
    }

    /// The cluster this store's keys belong to.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    fn endpoints_text(&self) -> String {
        self.conn.endpoints_text()
    }
}

#[async_trait]
impl Store for EtcdStore {
    fn describe(&self) -> String {
        format!("etcd at {}", self.endpoints_text())
    }

    async fn initialize_get(&self) -> Result<Option<String>> {
        self.get_one("read the initialize key", "initialize")
            .await?
            .map(|kv| self.text(&kv))
            .transpose()
    }

    async fn initialize_claim(&self, value: &str) -> Result<bool> {
        let key = self.key("initialize");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        Ok(self.txn("claim the initialize key", txn).await?.succeeded())
    }

    async fn initialize_replace(&self, expected: &str, value: &str) -> Result<bool> {
        let key = self.key("initialize");
        // A value compare on a missing key fails: a replace never creates the key.
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value, None)]);
        Ok(self
            .txn("replace the initialize key", txn)
            .await?
            .succeeded())
    }

    async fn initialize_abandon(&self, expected: &str) -> Result<bool> {
        let key = self.key("initialize");
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, expected)])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self
            .txn("abandon the initialize key", txn)
            .await?
            .succeeded())
    }

    async fn leader_get(&self) -> Result<Option<Leader>> {
        self.read_leader().await
    }

    async fn leader_acquire(&self, member: &str, ttl_ms: u64) -> Result<bool> {
        self.acquire_leader(member, ttl_ms).await
    }

    async fn leader_renew(&self, member: &str, ttl_ms: u64) -> Result<bool> {
        self.renew_leader(member, ttl_ms).await
    }

    /// A watch on the leader key for deletions (a lease that etcd expired, or a release):
    /// standbys wake at once instead of at their next loop.
    async fn wait_leader_gone(&self, timeout: Duration) -> Result<bool> {
        match self.watched() {
            Some(w) => Ok(w.wait_leader_gone(timeout).await),
            None => self.watch_leader_gone(timeout).await,
        }
    }

    async fn leader_release(&self, member: &str) -> Result<bool> {
        self.release_leader(member).await
    }

    async fn member_put(&self, state: &MemberState) -> Result<()> {
        let json = serde_json::to_string(state)
            .with_context(|| format!("serializing the state of member {}", state.name))?;
        let key = self.key(&format!("members/{}", state.name));
        self.call("publish a member's state", |mut c| {
            let (key, json) = (key.clone(), json.clone());
            async move { c.put(key, json, None).await }
        })
        .await?;
        Ok(())
    }

    async fn member_get(&self, name: &str) -> Result<Option<MemberState>> {
        self.get_one("read a member's state", &format!("members/{name}"))
            .await?
            .map(|kv| self.parse(&kv, "a member"))
            .transpose()
    }

    async fn members_read(&self) -> Result<crate::MembersRead> {
        let prefix = self.key("members/");
        let mut resp = self
            .call("list members", |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let records = resp
            .take_kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let name = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
                (name, String::from_utf8_lossy(kv.value()).into_owned())
            })
            .collect();
        Ok(crate::MembersRead::from_records(records, &self.describe()))
    }

    async fn member_delete(&self, name: &str) -> Result<bool> {
        let key = self.key(&format!("members/{name}"));
        let alive = self.key(&format!("alive/{name}"));
        let txn = Txn::new().and_then([TxnOp::delete(key, None), TxnOp::delete(alive, None)]);
        let resp = self.txn("delete a member", txn).await?;
        Ok(resp
            .op_responses()
            .first()
            .is_some_and(|r| matches!(r, etcd_client::TxnOpResponse::Delete(d) if d.deleted() > 0)))
    }

    async fn member_alive(&self, member: &str, ttl_ms: u64) -> Result<()> {
        self.keep_member_alive(member, ttl_ms).await
    }

    async fn op_get(&self) -> Result<Option<Operation>> {
        self.read_op().await
    }

    async fn op_post(&self, op: &Operation) -> Result<bool> {
        self.post_op(op).await
    }

    async fn op_update(&self, id: &str, phase: OpPhase, new: &Operation) -> Result<bool> {
        self.update_op(id, phase, new).await
    }

    async fn history_append(&self, entry: &HistoryEntry) -> Result<()> {
        self.append_history(entry).await
    }

    async fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>> {
        self.read_history(limit).await
    }

    async fn sync_get(&self) -> Result<Option<String>> {
        self.sync_text().await
    }

    async fn sync_cas(
        &self,
        leader: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<bool> {
        self.sync_replace(leader, expected, new).await
    }

    async fn config_get(&self) -> Result<Option<String>> {
        self.config_text().await
    }

    async fn config_cas(&self, expected: Option<&str>, new: &str) -> Result<bool> {
        self.config_replace(expected, new).await
    }

    async fn paused(&self) -> Result<bool> {
        Ok(self
            .get_one("read the pause flag", "paused")
            .await?
            .is_some_and(|kv| kv.value() == b"true"))
    }

    /// From the kept view when it is current, else in one request.
    async fn view(&self) -> Result<pgbaton_core::decide::ClusterView> {
        if let Some(keys) = self.watched().and_then(watch::Watched::keys) {
            return self.view_of(&keys, crate::now_ms());
        }
        self.read_view_once().await
    }

    async fn set_paused(&self, paused: bool) -> Result<()> {
        let key = self.key("paused");
        if paused {
            self.call("set the pause flag", |mut c| {
                let key = key.clone();
                async move { c.put(key, "true", None).await }
            })
            .await?;
        } else {
            self.call("clear the pause flag", |mut c| {
                let key = key.clone();
                async move { c.delete(key, None).await }
            })
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::history::history_key_suffix;
    use super::lease::lease_secs;
    use super::*;

    #[test]
    fn lease_seconds_round_up() {
        assert_eq!(lease_secs(0), 1);
        assert_eq!(lease_secs(1), 1);
        assert_eq!(lease_secs(1000), 1);
        assert_eq!(lease_secs(1001), 2);
        assert_eq!(lease_secs(4000), 4);
    }

    #[test]
    fn keys_are_scoped_by_cluster() {
        let s = EtcdStore::new(&["http://127.0.0.1:2379".to_string()], "c1");
        assert_eq!(s.key("leader"), "/pgbaton/c1/leader");
        assert_eq!(
            s.key(&history_key_suffix(7)),
            "/pgbaton/c1/history/00000000000000000007"
        );
        assert_eq!(s.describe(), "etcd at http://127.0.0.1:2379");
    }

    #[test]
    fn errors_name_endpoints_and_action() {
        // Nothing listens on port 1: the call fails, and says where and what.
        let s = EtcdStore::new(&["http://127.0.0.1:1".to_string()], "c1");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = format!("{:#}", rt.block_on(s.leader_get()).unwrap_err());
        assert!(err.contains("read the leader key"), "{err}");
        assert!(err.contains("http://127.0.0.1:1"), "{err}");
    }
}
