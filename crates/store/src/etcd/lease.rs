//! The leader lease: the `leader` key attached to an etcd lease, which etcd alone expires.
//! Taking and releasing it are compare-and-sets on the key's revisions; taking it grants a
//! new etcd lease (and revokes the one it replaces). Renewing it is one message on the
//! lease's KeepAlive stream: no write, no new revision. The key can go only with its lease
//! (etcd expired it) or by its holder's release, so a lease that is still alive proves the
//! key is still the holder's.

use super::client::backoff;
use super::{EtcdStore, CAS_ATTEMPTS};
use crate::{Result, Store};
use anyhow::{anyhow, Context};
use etcd_client::{
    Compare, CompareOp, KeyValue, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp,
    WatchFilterType, WatchOptions,
};
use pgbaton_core::model::Leader;
use std::time::Duration;

/// The value of the `leader` key.
#[derive(serde::Serialize, serde::Deserialize)]
struct LeaderValue {
    member: String,
    /// The writer's wall-clock estimate of the first expiry: informational only.
    expires_ms: u64,
    /// The lease's TTL: a reader that sees the key knows the lease lasts at most that long
    /// from now. Absent in keys written before 0.8 (read as 0).
    #[serde(default)]
    ttl_ms: u64,
}

/// The KeepAlive stream of the leader lease this client holds.
pub(super) struct KeepAlive {
    lease: i64,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
    /// A message was sent whose answer was not read (its caller gave up): the next answer
    /// on this stream would be that one, from before the next caller's instant, so the
    /// stream is not used again (review finding: a stale answer armed the fence too late).
    pending: bool,
    /// The connection's generation when the stream was opened: a failure moves the
    /// connection on from that endpoint, and a connection that moved reopens the stream.
    generation: u64,
}

/// How long a reader assumes a lease seen in a key written before `ttl_ms` was (0.8) may
/// still last: a cap on what a view reports, not what keeps the lease (etcd does).
const UNKNOWN_TTL_MS: u64 = 10_000;

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
    pub(super) async fn revoke(&self, id: i64) {
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
            ttl_ms,
        })?)
    }

    /// The leader as a key shows it at wall-clock `now_ms`. The key exists while etcd keeps
    /// its lease. The expiry: as this client worked it out for a lease it keeps alive;
    /// for another's lease, at most one TTL from now (the holder may have just renewed it).
    pub(super) fn leader_of(&self, kv: &KeyValue, now_ms: u64) -> Result<Leader> {
        let value: LeaderValue = self.parse(kv, "a leader lease")?;
        let lease = kv.lease();
        if lease == 0 {
            return Err(anyhow!(
                "{}: the leader key has no etcd lease (it was not written by pgbaton)",
                self.describe()
            ));
        }
        let ttl_ms = match value.ttl_ms {
            0 => UNKNOWN_TTL_MS,
            t => t,
        };
        let expires_ms = self
            .known_expiry(lease)
            .unwrap_or_else(|| now_ms.saturating_add(ttl_ms));
        Ok(Leader {
            member: value.member,
            expires_ms,
        })
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
        // A transaction whose answer was lost is tried again on the next endpoint (`call`),
        // and its compare then fails against its own first, committed attempt: the key is
        // read before the new lease is revoked, else revoking it would delete the key this
        // very call put, under a fence armed for the old lease (review finding). With no
        // answer at all the new lease is left to run out: the key may be on it.
        let committed = match self.txn(action, txn).await {
            Ok(r) if r.succeeded() => true,
            Ok(_) => self
                .get_one(action, "leader")
                .await?
                .is_some_and(|kv| kv.lease() == lease),
            Err(e) => return Err(e),
        };
        if !committed {
            self.revoke(lease).await;
            return Ok(false);
        }
        *self.own_lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
        if let Some(old) = seen.filter(|old| old.lease() != lease) {
            self.revoke(old.lease()).await;
        }
        Ok(true)
    }

    pub(super) async fn read_leader(&self) -> Result<Option<Leader>> {
        self.get_one("read the leader key", "leader")
            .await?
            .map(|kv| self.leader_of(&kv, crate::now_ms()))
            .transpose()
    }

    pub(super) async fn acquire_leader(&self, member: &str, ttl_ms: u64) -> Result<bool> {
        const ACTION: &str = "acquire the leader key";
        for attempt in 0..CAS_ATTEMPTS {
            let current = self.get_one(ACTION, "leader").await?;
            // The holder taking its own lease again never shortens it: an agent restarted
            // with a lowered TTL has no fence armed yet, and the watchdog its predecessor
            // left counts on the longer lease (review finding). Renewals shorten it later,
            // once a fence counts on the shorter one.
            let mut ttl = ttl_ms;
            if let Some(kv) = &current {
                let value: LeaderValue = self.parse(kv, "a leader lease")?;
                if value.member != member {
                    // Held by another until etcd expires its lease and deletes the key.
                    return Ok(false);
                }
                ttl = ttl.max(value.ttl_ms);
            }
            if self
                .leader_put(ACTION, member, ttl, current.as_ref())
                .await?
            {
                return Ok(true);
            }
            backoff(attempt).await;
        }
        Err(self.conflict(ACTION))
    }

    /// One keep-alive of the lease the leader key is attached to, when `member` holds it.
    /// The key is taken from the kept view (no request) only when it is attached to the
    /// lease this client put last: a lease this client replaced may outlive its key (its
    /// revoke can fail). Otherwise, and when the kept view does not confirm the lease (it may
    /// not show this client's own acquisition yet), the key is read from etcd first.
    pub(super) async fn renew_leader(&self, member: &str, ttl_ms: u64) -> Result<bool> {
        const ACTION: &str = "renew the leader key";
        let own = *self.own_lease.lock().unwrap_or_else(|e| e.into_inner());
        let cached = self
            .watched()
            .and_then(super::watch::Watched::keys)
            .and_then(|keys| keys.get("leader").cloned())
            .filter(|kv| Some(kv.lease()) == own);
        if let Some(kv) = cached {
            if self.keep_alive_if_held(&kv, member, ttl_ms).await? {
                return Ok(true);
            }
        }
        match self.get_one(ACTION, "leader").await? {
            Some(kv) => self.keep_alive_if_held(&kv, member, ttl_ms).await,
            None => Ok(false),
        }
    }

    /// Keep the key's lease alive when the key names `member`. `true` = etcd still keeps
    /// it, for at least `ttl_ms` from before the call (and the expiry this client reports
    /// moves on). A lease granted for less (`timing.ttl_ms` raised since) is replaced by one
    /// of `ttl_ms` through the compare-and-set: the caller's fence counts on `ttl_ms`
    /// (review finding). So is one put for another TTL (lowered by the cluster's config):
    /// it is safe to keep, but failover would go on waiting out the old TTL, and readers
    /// take the key's `ttl_ms` for the most the lease can last. (etcd may grant more than
    /// asked, its minimum TTL: compared with what was asked, that is no change.)
    async fn keep_alive_if_held(&self, kv: &KeyValue, member: &str, ttl_ms: u64) -> Result<bool> {
        const ACTION: &str = "renew the leader key";
        let value: LeaderValue = self.parse(kv, "a leader lease")?;
        if value.member != member {
            return Ok(false);
        }
        // etcd extends the lease when it handles the message, after this instant.
        let before = crate::now_ms();
        let ttl = self.keep_alive(kv.lease()).await?;
        if ttl <= 0 {
            // etcd no longer knows the lease: it expired (the key went with it).
            return Ok(false);
        }
        if ttl < lease_secs(ttl_ms) || value.ttl_ms != ttl_ms {
            return self.leader_put(ACTION, member, ttl_ms, Some(kv)).await;
        }
        let granted = u64::try_from(ttl).unwrap_or(0);
        self.remember_expiry(kv.lease(), before.saturating_add(granted * 1000));
        *self.own_lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(kv.lease());
        Ok(true)
    }

    /// Send one keep-alive for `lease` and return the TTL etcd answers (0: the lease is
    /// gone). The stream is opened on first use and again after a failure, or after a
    /// caller gave up waiting for an answer.
    async fn keep_alive(&self, lease: i64) -> Result<i64> {
        self.keep_alive_in(&self.keeper, lease).await
    }

    /// [`Self::keep_alive`] on the stream kept in `slot`.
    pub(super) async fn keep_alive_in(
        &self,
        slot: &tokio::sync::Mutex<Option<KeepAlive>>,
        lease: i64,
    ) -> Result<i64> {
        let mut guard = slot.lock().await;
        // The last keep-alive was given up on (the caller's bound): its endpoint may be gone
        // with its host, so the stream is opened on the next one.
        if let Some(k) = guard.as_ref().filter(|k| k.pending) {
            self.conn.rotate(k.generation);
        }
        let mut last = String::new();
        for _ in 0..2 {
            let moved = |k: &KeepAlive| k.generation != self.conn.generation();
            if guard
                .as_ref()
                .is_none_or(|k| k.lease != lease || k.pending || moved(k))
            {
                *guard = None;
                match self.open_keep_alive(lease).await {
                    Ok(Some(k)) => *guard = Some(k),
                    Ok(None) => return Ok(0),
                    Err(e) => {
                        last = format!("{e:#}");
                        continue;
                    }
                }
            }
            let Some(k) = guard.as_mut() else { continue };
            k.pending = true;
            let answer = tokio::time::timeout(super::client::REQUEST_TIMEOUT, async {
                k.keeper.keep_alive().await?;
                k.stream.message().await
            })
            .await;
            match answer {
                Ok(Ok(Some(resp))) => {
                    k.pending = false;
                    return Ok(resp.ttl().max(0));
                }
                Ok(Ok(None)) => last = "etcd closed the keep-alive stream".into(),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => {
                    last = format!(
                        "no answer within {} s",
                        super::client::REQUEST_TIMEOUT.as_secs()
                    )
                }
            }
            if let Some(k) = guard.take() {
                self.conn.rotate(k.generation);
            }
        }
        Err(anyhow!(
            "keep a lease alive in etcd at {}: {last}",
            self.endpoints_text()
        ))
    }

    /// Open the lease's keep-alive stream (which renews it once); `None`: etcd no longer
    /// knows the lease.
    async fn open_keep_alive(&self, lease: i64) -> Result<Option<KeepAlive>> {
        // The generation before the call: when the call moved on (a failure, then the next
        // endpoint), the stream counts as on the old one and is reopened next time.
        let generation = self.conn.generation();
        let opened = self
            .call(
                "open the leader lease's keep-alive stream",
                |mut c| async move {
                    match c.lease_keep_alive(lease).await {
                        // etcd-client reads the first answer and calls a TTL of 0 this.
                        Err(etcd_client::Error::LeaseKeepAliveError(e))
                            if e == "lease not found" =>
                        {
                            Ok(None)
                        }
                        r => r.map(Some),
                    }
                },
            )
            .await?;
        Ok(opened.map(|(keeper, stream)| KeepAlive {
            generation,
            lease,
            keeper,
            stream,
            pending: false,
        }))
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
                *self.keeper.lock().await = None;
                *self.own_lease.lock().unwrap_or_else(|e| e.into_inner()) = None;
                self.revoke(kv.lease()).await;
                return Ok(true);
            }
            backoff(attempt).await;
        }
        Err(self.conflict(ACTION))
    }
}
