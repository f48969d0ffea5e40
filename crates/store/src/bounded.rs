//! A store whose every call is bounded in time and named in its error: a store that does not
//! answer (etcd partitioned away, a SQLite file on a hung disk) is an error within the
//! bound, never a hung agent loop or CLI.

use crate::{Result, Store};
use async_trait::async_trait;
use pgbaton_core::model::{HistoryEntry, Leader, MemberState, OpPhase, Operation};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Bounded {
    inner: Arc<dyn Store>,
    /// The bound in ms: shared with whoever may change it (the agent, when the cluster's
    /// config changes its loop interval).
    limit_ms: Arc<AtomicU64>,
}

impl Bounded {
    /// `inner` with each call bounded by `limit`.
    pub fn wrap(inner: Arc<dyn Store>, limit: Duration) -> Arc<dyn Store> {
        let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        Self::wrap_live(inner, Arc::new(AtomicU64::new(ms)))
    }

    /// `inner` with each call bounded by `limit_ms` as it is when the call starts.
    pub fn wrap_live(inner: Arc<dyn Store>, limit_ms: Arc<AtomicU64>) -> Arc<dyn Store> {
        Arc::new(Bounded { inner, limit_ms })
    }

    fn limit(&self) -> Duration {
        Duration::from_millis(self.limit_ms.load(Ordering::Relaxed))
    }

    async fn within<T>(
        &self,
        what: &str,
        limit: Duration,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(limit, call).await {
            Ok(r) => r.map_err(|e| e.context(format!("{what} ({})", self.inner.describe()))),
            Err(_) => anyhow::bail!(
                "{what}: the store ({}) did not answer within {} ms",
                self.inner.describe(),
                limit.as_millis()
            ),
        }
    }
}

#[async_trait]
impl Store for Bounded {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn initialize_get(&self) -> Result<Option<String>> {
        let call = self.inner.initialize_get();
        self.within("read the cluster's identity", self.limit(), call)
            .await
    }
    async fn initialize_claim(&self, value: &str) -> Result<bool> {
        let call = self.inner.initialize_claim(value);
        self.within("claim the cluster's identity", self.limit(), call)
            .await
    }
    async fn initialize_replace(&self, expected: &str, value: &str) -> Result<bool> {
        let call = self.inner.initialize_replace(expected, value);
        self.within("replace the cluster's identity", self.limit(), call)
            .await
    }
    async fn initialize_abandon(&self, expected: &str) -> Result<bool> {
        let call = self.inner.initialize_abandon(expected);
        self.within("abandon the identity claim", self.limit(), call)
            .await
    }

    async fn leader_get(&self) -> Result<Option<Leader>> {
        let call = self.inner.leader_get();
        self.within("read the leader lease", self.limit(), call)
            .await
    }
    async fn leader_acquire(&self, member: &str, ttl_ms: u64) -> Result<bool> {
        let call = self.inner.leader_acquire(member, ttl_ms);
        self.within("take the leader lease", self.limit(), call)
            .await
    }
    async fn leader_renew(&self, member: &str, ttl_ms: u64) -> Result<bool> {
        let call = self.inner.leader_renew(member, ttl_ms);
        self.within("renew the leader lease", self.limit(), call)
            .await
    }
    async fn leader_release(&self, member: &str) -> Result<bool> {
        let call = self.inner.leader_release(member);
        self.within("release the leader lease", self.limit(), call)
            .await
    }
    async fn wait_leader_gone(&self, timeout: Duration) -> Result<bool> {
        // The wait itself may take `timeout`; the bound is on top of it.
        let call = self.inner.wait_leader_gone(timeout);
        self.within(
            "wait for the leader lease to go",
            timeout + self.limit(),
            call,
        )
        .await
    }

    async fn member_put(&self, state: &MemberState) -> Result<()> {
        let call = self.inner.member_put(state);
        self.within("publish the member's state", self.limit(), call)
            .await
    }
    async fn member_get(&self, name: &str) -> Result<Option<MemberState>> {
        let call = self.inner.member_get(name);
        self.within("read a member", self.limit(), call).await
    }
    async fn members_read(&self) -> Result<crate::MembersRead> {
        let call = self.inner.members_read();
        self.within("read the members", self.limit(), call).await
    }
    async fn member_delete(&self, name: &str) -> Result<bool> {
        let call = self.inner.member_delete(name);
        self.within("remove a member", self.limit(), call).await
    }

    async fn op_get(&self) -> Result<Option<Operation>> {
        let call = self.inner.op_get();
        self.within("read the operation", self.limit(), call).await
    }
    async fn op_post(&self, op: &Operation) -> Result<bool> {
        let call = self.inner.op_post(op);
        self.within("post an operation", self.limit(), call).await
    }
    async fn op_update(&self, id: &str, phase: OpPhase, new: &Operation) -> Result<bool> {
        let call = self.inner.op_update(id, phase, new);
        self.within("update the operation", self.limit(), call)
            .await
    }

    async fn history_append(&self, entry: &HistoryEntry) -> Result<()> {
        let call = self.inner.history_append(entry);
        self.within("append to the history", self.limit(), call)
            .await
    }
    async fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>> {
        let call = self.inner.history(limit);
        self.within("read the history", self.limit(), call).await
    }

    async fn paused(&self) -> Result<bool> {
        let call = self.inner.paused();
        self.within("read the pause flag", self.limit(), call).await
    }
    async fn set_paused(&self, paused: bool) -> Result<()> {
        let call = self.inner.set_paused(paused);
        self.within("set the pause flag", self.limit(), call).await
    }
    async fn config_get(&self) -> Result<Option<String>> {
        let call = self.inner.config_get();
        self.within("read the cluster's config", self.limit(), call)
            .await
    }
    async fn config_cas(&self, expected: Option<&str>, new: &str) -> Result<bool> {
        let call = self.inner.config_cas(expected, new);
        self.within("write the cluster's config", self.limit(), call)
            .await
    }

    async fn sync_get(&self) -> Result<Option<String>> {
        let call = self.inner.sync_get();
        self.within("read the synchronous set", self.limit(), call)
            .await
    }
    async fn sync_cas(
        &self,
        leader: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<bool> {
        let call = self.inner.sync_cas(leader, expected, new);
        self.within("write the synchronous set", self.limit(), call)
            .await
    }

    async fn member_alive(&self, member: &str, ttl_ms: u64) -> Result<()> {
        let call = self.inner.member_alive(member, ttl_ms);
        self.within("say the member is alive", self.limit(), call)
            .await
    }

    async fn view(&self) -> Result<pgbaton_core::decide::ClusterView> {
        let call = self.inner.view();
        self.within("read the cluster", self.limit(), call).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that never answers.
    struct Hung;
    #[async_trait]
    impl Store for Hung {
        fn describe(&self) -> String {
            "a hung store".into()
        }
        async fn initialize_get(&self) -> Result<Option<String>> {
            std::future::pending().await
        }
        async fn initialize_claim(&self, _: &str) -> Result<bool> {
            std::future::pending().await
        }
        async fn initialize_replace(&self, _: &str, _: &str) -> Result<bool> {
            std::future::pending().await
        }
        async fn initialize_abandon(&self, _: &str) -> Result<bool> {
            std::future::pending().await
        }
        async fn leader_get(&self) -> Result<Option<Leader>> {
            std::future::pending().await
        }
        async fn leader_acquire(&self, _: &str, _: u64) -> Result<bool> {
            std::future::pending().await
        }
        async fn leader_renew(&self, _: &str, _: u64) -> Result<bool> {
            std::future::pending().await
        }
        async fn leader_release(&self, _: &str) -> Result<bool> {
            std::future::pending().await
        }
        async fn wait_leader_gone(&self, _: Duration) -> Result<bool> {
            std::future::pending().await
        }
        async fn member_put(&self, _: &MemberState) -> Result<()> {
            std::future::pending().await
        }
        async fn member_get(&self, _: &str) -> Result<Option<MemberState>> {
            std::future::pending().await
        }
        async fn members_read(&self) -> Result<crate::MembersRead> {
            std::future::pending().await
        }
        async fn member_delete(&self, _: &str) -> Result<bool> {
            std::future::pending().await
        }
        async fn op_get(&self) -> Result<Option<Operation>> {
            std::future::pending().await
        }
        async fn op_post(&self, _: &Operation) -> Result<bool> {
            std::future::pending().await
        }
        async fn op_update(&self, _: &str, _: OpPhase, _: &Operation) -> Result<bool> {
            std::future::pending().await
        }
        async fn history_append(&self, _: &HistoryEntry) -> Result<()> {
            std::future::pending().await
        }
        async fn history(&self, _: usize) -> Result<Vec<HistoryEntry>> {
            std::future::pending().await
        }
        async fn paused(&self) -> Result<bool> {
            std::future::pending().await
        }
        async fn set_paused(&self, _: bool) -> Result<()> {
            std::future::pending().await
        }
        async fn sync_get(&self) -> Result<Option<String>> {
            std::future::pending().await
        }
        async fn sync_cas(&self, _: &str, _: Option<&str>, _: Option<&str>) -> Result<bool> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn every_call_of_a_hung_store_ends_within_the_bound_with_its_name() {
        let s = Bounded::wrap(Arc::new(Hung), Duration::from_millis(20));
        let m = MemberState::sample(
            "n1",
            pgbaton_core::model::Role::Primary,
            pgbaton_core::model::MemberStatus::Running,
            0,
        );
        let errs = vec![
            s.initialize_get().await.unwrap_err(),
            s.leader_renew("n1", 1000).await.unwrap_err(),
            s.member_put(&m).await.unwrap_err(),
            s.members().await.unwrap_err(),
            s.paused().await.unwrap_err(),
            s.wait_leader_gone(Duration::from_millis(10))
                .await
                .unwrap_err(),
        ];
        for e in errs {
            let t = e.to_string();
            assert!(t.contains("a hung store") && t.contains("within"), "{t}");
        }
        let t = s.leader_renew("n1", 1000).await.unwrap_err().to_string();
        assert!(t.starts_with("renew the leader lease"), "{t}");
    }
}
