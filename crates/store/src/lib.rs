//! The store through which the agents of a cluster coordinate.
//!
//! Every mutation that decides who may do what (who bootstraps, who leads) is a
//! compare-and-set, so two agents racing for it cannot both win. Backends: `local`
//! (one SQLite file shared by the agents of a machine) and `etcd` (an etcd v3 cluster), both
//! held to the same contract (see `tests/contract.rs`).
//!
//! Keys are scoped by cluster name, so one store can hold several clusters.

use async_trait::async_trait;
use pgbaton_core::config::StoreConfig;
use pgbaton_core::decide::ClusterView;
use pgbaton_core::model::{
    HistoryEntry, Identity, Leader, MemberState, OpPhase, Operation, UnreadableRecord,
};
use pgbaton_core::sync::SyncRecord;
use std::sync::Arc;

pub use bounded::Bounded;

pub mod bounded;
pub mod etcd;
pub mod local;
pub mod secret;

pub type Result<T> = anyhow::Result<T>;

/// How many history entries a store keeps per cluster; older ones are dropped as new ones
/// are appended.
pub const HISTORY_KEEP: usize = 1000;

#[async_trait]
pub trait Store: Send + Sync {
    /// A short human description ("sqlite file /x/store.db") for logs and errors.
    fn describe(&self) -> String;

    // ---- cluster identity: the `initialize` key --------------------------------------
    /// The value of the cluster's `initialize` key: a claim `"claimed:<member>"` while the
    /// first member bootstraps, then the database system identifier.
    async fn initialize_get(&self) -> Result<Option<String>>;
    /// Create the `initialize` key holding `value` if it does not exist. `true` = created.
    async fn initialize_claim(&self, value: &str) -> Result<bool>;
    /// Replace the key's value with `value` if it currently holds `expected`. `true` = replaced.
    async fn initialize_replace(&self, expected: &str, value: &str) -> Result<bool>;
    /// Delete the key if it holds `expected` (a bootstrap that failed gives up its claim).
    async fn initialize_abandon(&self, expected: &str) -> Result<bool>;

    // ---- the leader lease --------------------------------------------------------------
    /// The current holder, if the lease has not expired.
    async fn leader_get(&self) -> Result<Option<Leader>>;
    /// Take the lease for `member` for `ttl_ms` if nobody holds an unexpired one (or `member`
    /// already does, in which case it is extended). `true` = `member` holds it now.
    async fn leader_acquire(&self, member: &str, ttl_ms: u64) -> Result<bool>;
    /// Extend the lease by `ttl_ms` from now if `member` holds it and it has not expired.
    /// `false` = it was lost (expired or taken): the caller must stop acting as leader.
    async fn leader_renew(&self, member: &str, ttl_ms: u64) -> Result<bool>;
    /// Give the lease up if `member` holds it. `true` = it was held and is now released.
    async fn leader_release(&self, member: &str) -> Result<bool>;
    /// Wait up to `timeout` for the leader lease to go (released, or expired where the store
    /// deletes it by itself). `true` = it went before the timeout. Backends that cannot
    /// watch just wait out the timeout (the agent also wakes at a known lease's expiry).
    async fn wait_leader_gone(&self, timeout: std::time::Duration) -> Result<bool> {
        tokio::time::sleep(timeout).await;
        Ok(false)
    }

    // ---- the synchronous set -------------------------------------------------------------
    /// The synchronous set's record as stored (JSON text; see `pgbaton_core::sync`).
    async fn sync_get(&self) -> Result<Option<String>>;
    /// Replace the record (`None` = delete it) if it currently holds `expected` (`None` =
    /// absent) **and** `leader` holds an unexpired leader lease: a leader that lost its
    /// lease can never change the set. `true` = replaced.
    async fn sync_cas(
        &self,
        leader: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<bool>;

    // ---- the cluster's configuration -----------------------------------------------------
    /// The cluster's config record as stored (JSON text; see
    /// `pgbaton_core::cluster_config`).
    async fn config_get(&self) -> Result<Option<String>> {
        Ok(None)
    }
    /// Replace the record with `new` if it currently holds `expected` (`None` = absent).
    /// `true` = replaced; `false` = someone changed it since it was read.
    async fn config_cas(&self, _expected: Option<&str>, _new: &str) -> Result<bool> {
        anyhow::bail!("{} keeps no cluster config", self.describe())
    }

    // ---- members -----------------------------------------------------------------------
    /// Publish (insert or replace) a member's state. Registration persists until deleted.
    async fn member_put(&self, state: &MemberState) -> Result<()>;
    async fn member_get(&self, name: &str) -> Result<Option<MemberState>>;
    /// All registered members whose records can be read, sorted by name, and the records
    /// that cannot (left out, never an error: one bad record must not stop every agent).
    async fn members_read(&self) -> Result<MembersRead>;
    /// The readable members, sorted by name.
    async fn members(&self) -> Result<Vec<MemberState>> {
        Ok(self.members_read().await?.members)
    }
    /// Deregister a member (and forget its liveness). `true` = it existed.
    async fn member_delete(&self, name: &str) -> Result<bool>;
    /// Say this member's agent is alive, for `ttl_ms` from now, without writing its report
    /// (etcd: a lease kept alive with `alive/<member>` attached; SQLite: a row). Reading
    /// the members fills in `MemberState::seen_ms` from it. An agent calls it every half
    /// TTL while its loop runs. The default keeps nothing (the member is seen by its
    /// reports alone).
    async fn member_alive(&self, _member: &str, _ttl_ms: u64) -> Result<()> {
        Ok(())
    }

    // ---- operations: at most one in flight per cluster ---------------------------------
    /// The cluster's current operation (in flight, or the last finished one), if any.
    async fn op_get(&self) -> Result<Option<Operation>>;
    /// Post `op` if no operation is in flight (there is none, or the current one's phase is
    /// finished). `true` = posted; `false` = another operation is in flight (unchanged).
    async fn op_post(&self, op: &Operation) -> Result<bool>;
    /// Replace the current operation with `new` if the current one has id `id` and phase
    /// `phase` (compare-and-set on both). `true` = replaced.
    async fn op_update(&self, id: &str, phase: OpPhase, new: &Operation) -> Result<bool>;

    // ---- history ------------------------------------------------------------------------
    /// Append an entry to the cluster's history (kept in the order appended). Only the last
    /// [`HISTORY_KEEP`] entries are kept.
    async fn history_append(&self, entry: &HistoryEntry) -> Result<()>;
    /// The last `limit` entries, oldest first.
    async fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>>;

    // ---- pause ---------------------------------------------------------------------------
    /// Whether the cluster is paused (agents take no automatic action).
    async fn paused(&self) -> Result<bool>;
    /// Pause or resume the cluster.
    async fn set_paused(&self, paused: bool) -> Result<()>;

    // ---- the whole cluster ---------------------------------------------------------------
    /// The cluster as one view (see [`read_view`]). By default read key by key; etcd reads
    /// it in one request, or answers from the watch it keeps when opened for an agent
    /// ([`open_watching`]).
    async fn view(&self) -> Result<ClusterView> {
        read_view_keys(self).await
    }
}

/// The cluster as the store holds it: the identity (parsed from the `initialize` key's
/// text), the leader lease, the members, the operation, the pause flag. The agents decide
/// on it; the CLI and the API show and check it.
pub async fn read_view(store: &dyn Store) -> Result<ClusterView> {
    store.view().await
}

/// The operation as read, or none with the record reported as unreadable when the store
/// answered with text pgbaton cannot decode (one bad record must not stop every agent).
pub(crate) fn op_or_unreadable(
    op: Result<Option<Operation>>,
    unreadable: &mut Vec<UnreadableRecord>,
) -> Result<Option<Operation>> {
    match op {
        Ok(op) => Ok(op),
        Err(e) if is_decode_error(&e) => {
            unreadable.push(UnreadableRecord {
                key: "op".into(),
                why: format!(
                    "{e:#}: the operation record is left out (no new operation can be posted \
                     until it is rewritten or removed)"
                ),
            });
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// [`read_view`] key by key, with one request per key.
pub async fn read_view_keys<S: Store + ?Sized>(store: &S) -> Result<ClusterView> {
    view_of_parts(ViewParts {
        sync_text: store.sync_get().await?,
        config_text: store.config_get().await?,
        members: store.members_read().await?,
        op: store.op_get().await,
        leader: store.leader_get().await?,
        initialize: store.initialize_get().await?,
        paused: store.paused().await?,
    })
}

/// The keys of a view as read, before they are decoded into one.
pub(crate) struct ViewParts {
    pub sync_text: Option<String>,
    pub config_text: Option<String>,
    pub members: MembersRead,
    pub op: Result<Option<Operation>>,
    pub leader: Option<Leader>,
    pub initialize: Option<String>,
    pub paused: bool,
}

/// One view from its keys: a malformed operation is reported, the lease holder seen now.
pub(crate) fn view_of_parts(p: ViewParts) -> Result<ClusterView> {
    let mut members = p.members;
    let op = op_or_unreadable(p.op, &mut members.unreadable)?;
    mark_leader_seen(&mut members.members, p.leader.as_ref(), now_ms());
    Ok(ClusterView {
        sync: p.sync_text.as_deref().map(parse_sync_record),
        sync_text: p.sync_text,
        config_text: p.config_text,
        initialize: p.initialize.as_deref().map(Identity::parse),
        leader: p.leader,
        members: members.members,
        unreadable: members.unreadable,
        op,
        paused: p.paused,
    })
}

/// The lease holder is alive by its lease: seen now, at `now_ms`, when it has not expired.
pub(crate) fn mark_leader_seen(members: &mut [MemberState], leader: Option<&Leader>, now_ms: u64) {
    if let Some(l) = leader.filter(|l| l.expires_ms > now_ms) {
        if let Some(m) = members.iter_mut().find(|m| m.name == l.member) {
            m.seen_ms = m.seen_ms.max(now_ms);
        }
    }
}

/// The store answered, with text pgbaton cannot decode (as opposed to not answering).
fn is_decode_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<serde_json::Error>())
}

/// The members' records as read: see [`Store::members_read`].
#[derive(Debug, Default)]
pub struct MembersRead {
    pub members: Vec<MemberState>,
    pub unreadable: Vec<UnreadableRecord>,
}

impl MembersRead {
    /// Sort out records `(member name, JSON text)`: each one read, or kept as unreadable
    /// with the reason (`where_` names the store, for the message).
    pub fn from_records(records: Vec<(String, String)>, where_: &str) -> MembersRead {
        let mut out = MembersRead::default();
        for (member, text) in records {
            match serde_json::from_str::<MemberState>(&text) {
                Ok(m) => out.members.push(m),
                Err(e) => out.unreadable.push(UnreadableRecord {
                    why: format!(
                        "{where_}: the record of member {member} is not one this version of \
                         pgbaton can read ({e}); it is left out until it is rewritten (by that \
                         member's agent, or `pgbaton remove {member}`)"
                    ),
                    key: format!("members/{member}"),
                }),
            }
        }
        out.members.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// The synchronous set's record from its stored text. Text pgbaton cannot read proves
/// nobody: it is read as a blocked record (no standby takes over on its word).
pub fn parse_sync_record(text: &str) -> SyncRecord {
    serde_json::from_str(text).unwrap_or_else(|_| SyncRecord::blocked("(unreadable record)"))
}

/// The synchronous set's record as the store keeps it.
pub fn sync_record_text(record: &SyncRecord) -> String {
    serde_json::to_string(record).unwrap_or_default()
}

/// Pause or resume a cluster, and record the change in its history. Returns whether the
/// cluster was paused before.
pub async fn pause_and_record(store: &dyn Store, paused: bool, by: &str) -> Result<bool> {
    let was = store.paused().await?;
    store.set_paused(paused).await?;
    if was != paused {
        store
            .history_append(&pgbaton_core::model::HistoryEntry {
                time_ms: now_ms(),
                operation: if paused { "pause" } else { "resume" }.to_string(),
                members: vec![],
                result: "done".into(),
                timeline: None,
                lsn: None,
                message: Some(format!(
                    "{} ({by})",
                    if paused {
                        "agents take no automatic action"
                    } else {
                        "agents act again"
                    }
                )),
            })
            .await?;
    }
    Ok(was)
}

/// Open the store a config names, for `cluster`.
pub fn open(cfg: &StoreConfig, cluster: &str) -> Result<Arc<dyn Store>> {
    match cfg {
        StoreConfig::Local { path } => Ok(Arc::new(local::LocalStore::open(path, cluster)?)),
        StoreConfig::Etcd { endpoints, access } => Ok(Arc::new(etcd::EtcdStore::with_access(
            endpoints, cluster, access,
        )?)),
    }
}

/// Open the store for an agent, which reads the whole cluster every loop: etcd then keeps
/// the view from a watch on the cluster's keys (no request per loop) instead of reading it.
pub fn open_watching(cfg: &StoreConfig, cluster: &str) -> Result<Arc<dyn Store>> {
    match cfg {
        StoreConfig::Local { .. } => open(cfg, cluster),
        StoreConfig::Etcd { endpoints, access } => Ok(Arc::new(
            etcd::EtcdStore::with_access(endpoints, cluster, access)?.watching(),
        )),
    }
}

/// Wall-clock ms since the Unix epoch (the store is shared between processes, so leases
/// are kept in wall-clock time).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_view_parses_the_identity_and_reads_every_key() {
        let tmp = tempfile::tempdir().unwrap();
        let s = local::LocalStore::open(&tmp.path().join("store.db"), "c").unwrap();
        assert_eq!(read_view(&s).await.unwrap().initialize, None);
        assert!(s.initialize_claim("claimed:n1").await.unwrap());
        assert_eq!(
            read_view(&s).await.unwrap().initialize,
            Some(Identity::claim("n1"))
        );
        assert!(s.initialize_replace("claimed:n1", "42").await.unwrap());
        assert!(s.leader_acquire("n1", 10_000).await.unwrap());
        s.set_paused(true).await.unwrap();
        let v = read_view(&s).await.unwrap();
        assert_eq!(v.initialize, Some(Identity::SystemId("42".into())));
        assert_eq!(v.leader.map(|l| l.member).as_deref(), Some("n1"));
        assert!(v.paused);
        // Text pgbaton did not write is read as what it is, not an error.
        assert!(s.initialize_replace("42", "junk").await.unwrap());
        assert_eq!(
            read_view(&s).await.unwrap().initialize,
            Some(Identity::Malformed("junk".into()))
        );
    }
}
