//! The leader lease: the `leader` key attached to an etcd lease, which etcd alone expires.
//! Taking, renewing and releasing it are compare-and-sets on the key's revisions; a new
//! etcd lease is granted for each put, and the one it replaces is revoked.

use super::client::backoff;
use super::{EtcdStore, CAS_ATTEMPTS};
use crate::{Result, Store};
use anyhow::{anyhow, Context};
use etcd_client::{
    Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp, WatchFilterType, WatchOptions,
};
use pgbaton_core::model::Leader;
use std::time::Duration;

/// The value of the `leader` key.
#[derive(serde::Serialize, serde::Deserialize)]
struct LeaderValue {
    member: String,
    /// The writer's wall-clock estimate of the expiry: informational only.
    expires_ms: u64,
}

/// The etcd lease TTL (whole seconds, at least 1) for a lease of `ttl_ms`.
pub(super) fn lease_secs(ttl_ms: u64) -> i64 {
    i64::try_from(ttl_ms.div_ceil(1000).max(1)).unwrap_or(i64::MAX)
}

impl EtcdStore {
    /// The leader key's entry when `member` holds the lease.
    pub(super) async fn held_by(&self, action: &str, member: &str) -> Result<Option<KeyValue>> {
        let Some(kv) = self.get_one(action, "leader").await? else {
            return Ok(None);
        };
        let value: LeaderValue = self.parse(&kv, "a leader lease")?;
        Ok((value.member == member).then_some(kv))
    }

    /// Grant a lease of `ttl_ms` (rounded up to whole seconds).
    async fn grant(&self, action: &str, ttl_ms: u64) -> Result<i64> {
        let secs = lease_secs(ttl_ms);
        // etcd starts the lease's time when it handles the grant, after this instant: the
        // lease lasts at least until `before` + the granted TTL (a duration measured by this
        // machine's clock alone, not a comparison with the server's).
        let before = crate::now_ms();
        let resp = self
            .call(
                action,
                |mut c| async move { c.lease_grant(secs, None).await },
            )
            .await?;
        let granted = u64::try_from(resp.ttl()).unwrap_or(0);
        self.remember_expiry(resp.id(), before.saturating_add(granted * 1000));
        Ok(resp.id())
    }

    fn remember_expiry(&self, lease: i64, expires_ms: u64) {
        if let Ok(mut e) = self.expiry.lock() {
            *e = Some((lease, expires_ms));
        }
    }

    fn known_expiry(&self, lease: i64) -> Option<u64> {
        match *self.expiry.lock().ok()? {
            Some((id, exp)) if id == lease => Some(exp),
            _ => None,
        }
    }

    /// Revoke a lease, ignoring failures (it may be gone already; an unrevoked lease with no
    /// key runs out by itself).
    async fn revoke(&self, id: i64) {
        if id != 0 {
            let _ = self
                .call(
                    "revoke a lease",
                    |mut c| async move { c.lease_revoke(id).await },
                )
                .await;
        }
    }

    fn leader_value(member: &str, ttl_ms: u64) -> Result<String> {
        Ok(serde_json::to_string(&LeaderValue {
            member: member.to_string(),
            expires_ms: crate::now_ms().saturating_add(ttl_ms),
        })?)
    }

    /// Put the leader key for `member` with a new lease if it is unchanged since `seen`
    /// (`None` = absent). `true` = put.
    async fn leader_put(
        &self,
        action: &str,
        member: &str,
        ttl_ms: u64,
        seen: Option<&KeyValue>,
    ) -> Result<bool> {
        let key = self.key("leader");
        let value = Self::leader_value(member, ttl_ms)?;
        let lease = self.grant(action, ttl_ms).await?;
        let cmp = match seen {
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Some(kv) => Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision()),
        };
        let txn = Txn::new().when([cmp]).and_then([TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        )]);
        match self.txn(action, txn).await {
            Ok(r) if r.succeeded() => {
                if let Some(old) = seen {
                    self.revoke(old.lease()).await;
                }
                Ok(true)
            }
            Ok(_) => {
                self.revoke(lease).await;
                Ok(false)
            }
            Err(e) => {
                self.revoke(lease).await;
                Err(e)
            }
        }
    }

    pub(super) async fn read_leader(&self) -> Result<Option<Leader>> {
        const ACTION: &str = "read the leader key";
        let Some(kv) = self.get_one(ACTION, "leader").await? else {
            return Ok(None);
        };
        let value: LeaderValue = self.parse(&kv, "a leader lease")?;
        let lease = kv.lease();
        if lease == 0 {
            return Err(anyhow!(
                "{}: the leader key has no etcd lease (it was not written by pgbaton)",
                self.describe()
            ));
        }
        let ttl = self
            .call(
                "read the leader lease's remaining time",
                |mut c| async move { c.lease_time_to_live(lease, None).await },
            )
            .await?;
        // -1: etcd no longer knows the lease (it expired between the two reads).
        if ttl.ttl() < 0 {
            return Ok(None);
        }
        // The lease is held (etcd has not revoked it). Its expiry: as worked out when this
        // client granted it or first saw it; otherwise from the remaining time etcd reports
        // (whole seconds, rounded down: the lease lasts at least that long).
        let expires_ms = match self.known_expiry(lease) {
            Some(e) => e,
            None => {
                let secs = u64::try_from(ttl.ttl()).unwrap_or(0);
                let e = crate::now_ms() + (secs * 1000).max(1);
                self.remember_expiry(lease, e);
                e
            }
        };
        Ok(Some(Leader {
            member: value.member,
            expires_ms,
        }))
    }

    pub(super) async fn acquire_leader(&self, member: &str, ttl_ms: u64) -> Result<bool> {
        const ACTION: &str = "acquire the leader key";
        for attempt in 0..CAS_ATTEMPTS {
            let current = self.get_one(ACTION, "leader").await?;
            if let Some(kv) = &current {
                let value: LeaderValue = self.parse(kv, "a leader lease")?;
                if value.member != member {
                    // Held by another until etcd expires its lease and deletes the key.
                    return Ok(false);
                }
            }
            if self
                .leader_put(ACTION, member, ttl_ms, current.as_ref())
                .await?
            {
                return Ok(true);
            }
            backoff(attempt).await;
        }
        Err(self.conflict(ACTION))
    }

    pub(super) async fn renew_leader(&self, member: &str, ttl_ms: u64) -> Result<bool> {
        const ACTION: &str = "renew the leader key";
        for attempt in 0..CAS_ATTEMPTS {
            let Some(kv) = self.held_by(ACTION, member).await? else {
                return Ok(false);
            };
            if self.leader_put(ACTION, member, ttl_ms, Some(&kv)).await? {
                return Ok(true);
            }
            backoff(attempt).await;
        }
        Err(self.conflict(ACTION))
    }

    /// A watch on the leader key for deletions (a lease that etcd expired, or a release):
    /// standbys wake at once instead of at their next loop.
    pub(super) async fn watch_leader_gone(&self, timeout: Duration) -> Result<bool> {
        let key = self.key("leader");
        let watch = async {
            let mut client = self.client().await.map_err(|e| anyhow!(e))?;
            let options = WatchOptions::new().with_filters([WatchFilterType::NoPut]);
            let mut stream = client.watch(key, Some(options)).await.with_context(|| {
                format!("watch the leader key in etcd at {}", self.endpoints_text())
            })?;
            loop {
                match stream.message().await? {
                    Some(resp) if resp.canceled() => {
                        return Err(anyhow!("etcd canceled the watch on the leader key"))
                    }
                    Some(resp) if !resp.events().is_empty() => return Ok(true),
                    Some(_) => continue, // the watch's creation
                    None => return Err(anyhow!("etcd closed the watch on the leader key")),
                }
            }
        };
        match tokio::time::timeout(timeout, watch).await {
            Ok(Ok(gone)) => Ok(gone),
            Ok(Err(e)) => {
                // Watching failed (etcd unreachable, say): wait out the rest like a loop would.
                tokio::time::sleep(timeout).await;
                Err(e)
            }
            Err(_) => Ok(false),
        }
    }

    pub(super) async fn release_leader(&self, member: &str) -> Result<bool> {
        const ACTION: &str = "release the leader key";
        let key = self.key("leader");
        for attempt in 0..CAS_ATTEMPTS {
            let Some(kv) = self.held_by(ACTION, member).await? else {
                return Ok(false);
            };
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([TxnOp::delete(key.clone(), None)]);
            if self.txn(ACTION, txn).await?.succeeded() {
                self.revoke(kv.lease()).await;
                return Ok(true);
            }
            backoff(attempt).await;
        }
        Err(self.conflict(ACTION))
    }
}
