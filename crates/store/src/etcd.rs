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
//!
//! Every compare-and-set is one etcd transaction: `create_revision == 0` for "absent",
//! `mod_revision == <seen>` for "unchanged since read", `value == <expected>` for the
//! `initialize` key.
//!
//! The leader lease is an etcd lease: the `leader` key is attached to it and disappears when
//! etcd expires it. Expiry is decided by the etcd server alone, never by this client's
//! clock (agents on different machines have different clocks). The `expires_ms` written in
//! the value is informational; [`Store::leader_get`] reports the expiry from the lease's
//! remaining time as etcd tells it (whole seconds, rounded down).
//!
//! `EtcdStore::new` does not connect: the client is created by the first call that needs it,
//! and dropped and recreated once when a call fails (a client made inside one tokio runtime
//! fails at the transport when used from another; a fresh one works).

use crate::{Result, Store, HISTORY_KEEP};
use anyhow::{anyhow, Context};
use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions,
};
use pgbaton_core::model::{HistoryEntry, Leader, MemberState, OpPhase, Operation};
use std::future::Future;
use std::time::Duration;

/// How long connecting to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times a compare-and-set that lost to a concurrent writer is tried again.
const CAS_ATTEMPTS: usize = 200;

/// A [`Store`] in an etcd v3 cluster, for one cluster of pgbaton.
pub struct EtcdStore {
    endpoints: Vec<String>,
    cluster: String,
    prefix: String,
    client: tokio::sync::Mutex<Option<Client>>,
    /// The expiry (this machine's wall-clock ms) last worked out for a lease id: a lease's
    /// expiry is one instant, so every read of the same lease reports the same value.
    expiry: std::sync::Mutex<Option<(i64, u64)>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// The value of the `leader` key.
#[derive(serde::Serialize, serde::Deserialize)]
struct LeaderValue {
    member: String,
    /// The writer's wall-clock estimate of the expiry: informational only.
    expires_ms: u64,
}

/// The fields of a stored operation that its compare-and-sets look at.
#[derive(serde::Deserialize)]
struct OpHead {
    id: String,
    phase: OpPhase,
}

fn history_key_suffix(seq: u64) -> String {
    format!("history/{seq:020}")
}

/// The etcd lease TTL (whole seconds, at least 1) for a lease of `ttl_ms`.
fn lease_secs(ttl_ms: u64) -> i64 {
    i64::try_from(ttl_ms.div_ceil(1000).max(1)).unwrap_or(i64::MAX)
}

impl EtcdStore {
    /// The leader key's entry when `member` holds the lease.
    async fn held_by(&self, action: &str, member: &str) -> Result<Option<KeyValue>> {
        let Some(kv) = self.get_one(action, "leader").await? else {
            return Ok(None);
        };
        let value: LeaderValue = self.parse(&kv, "a leader lease")?;
        Ok((value.member == member).then_some(kv))
    }

    /// A store for `cluster` in the etcd cluster at `endpoints`. Does not connect.
    pub fn new(endpoints: &[String], cluster: &str) -> EtcdStore {
        EtcdStore {
            endpoints: endpoints.to_vec(),
            cluster: cluster.to_string(),
            prefix: format!("/pgbaton/{cluster}/"),
            client: tokio::sync::Mutex::new(None),
            expiry: std::sync::Mutex::new(None),
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
        self.endpoints.join(",")
    }

    /// The current client, connecting if there is none.
    async fn client(&self) -> std::result::Result<Client, String> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        let client = match tokio::time::timeout(
            CONNECT_TIMEOUT + Duration::from_secs(1),
            Client::connect(&self.endpoints, Some(options)),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(format!("cannot connect: {e}")),
            Err(_) => {
                return Err(format!(
                    "cannot connect: no answer within {} s",
                    CONNECT_TIMEOUT.as_secs() + 1
                ))
            }
        };
        *guard = Some(client.clone());
        Ok(client)
    }

    /// Run one request with the client; on failure drop the client and try once more with
    /// a fresh connection. Errors name the action and the endpoints.
    async fn call<T, F, Fut>(&self, action: &str, f: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut last = String::new();
        for _ in 0..2 {
            let outcome = match self.client().await {
                Ok(c) => {
                    match tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), f(c)).await
                    {
                        Ok(Ok(v)) => return Ok(v),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => format!("no answer within {} s", REQUEST_TIMEOUT.as_secs() + 1),
                    }
                }
                Err(e) => e,
            };
            last = outcome;
            *self.client.lock().await = None;
        }
        Err(anyhow!(
            "{action} in etcd at {}: {last}",
            self.endpoints_text()
        ))
    }

    async fn get_one(&self, action: &str, suffix: &str) -> Result<Option<KeyValue>> {
        let key = self.key(suffix);
        let mut resp = self
            .call(action, |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    async fn txn(&self, action: &str, txn: Txn) -> Result<etcd_client::TxnResponse> {
        self.call(action, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    fn text(&self, kv: &KeyValue) -> Result<String> {
        kv.value_str().map(str::to_string).map_err(|_| {
            anyhow!(
                "{}: the value of key {} is not UTF-8",
                self.describe(),
                String::from_utf8_lossy(kv.key())
            )
        })
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, kv: &KeyValue, what: &str) -> Result<T> {
        let text = self.text(kv)?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: the value of key {} is not valid JSON of {what}",
                self.describe(),
                String::from_utf8_lossy(kv.key())
            )
        })
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

    fn conflict(&self, action: &str) -> anyhow::Error {
        anyhow!(
            "{action} in etcd at {}: still conflicting with concurrent writers after {CAS_ATTEMPTS} attempts",
            self.endpoints_text()
        )
    }
}

/// A short pause before trying a lost compare-and-set again, varied so that racers spread.
async fn backoff(attempt: usize) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let cap = 1 + (attempt as u64).min(20);
    tokio::time::sleep(Duration::from_millis(u64::from(nanos) % cap)).await;
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

    async fn leader_acquire(&self, member: &str, ttl_ms: u64) -> Result<bool> {
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

    async fn leader_renew(&self, member: &str, ttl_ms: u64) -> Result<bool> {
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
    async fn wait_leader_gone(&self, timeout: Duration) -> Result<bool> {
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

    async fn leader_release(&self, member: &str) -> Result<bool> {
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

    async fn members(&self) -> Result<Vec<MemberState>> {
        let prefix = self.key("members/");
        let mut resp = self
            .call("list members", |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let mut members = resp
            .take_kvs()
            .iter()
            .map(|kv| self.parse::<MemberState>(kv, "a member"))
            .collect::<Result<Vec<_>>>()?;
        members.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(members)
    }

    async fn member_delete(&self, name: &str) -> Result<bool> {
        let key = self.key(&format!("members/{name}"));
        let resp = self
            .call("delete a member", |mut c| {
                let key = key.clone();
                async move { c.delete(key, None).await }
            })
            .await?;
        Ok(resp.deleted() > 0)
    }

    async fn op_get(&self) -> Result<Option<Operation>> {
        self.get_one("read the current operation", "op")
            .await?
            .map(|kv| self.parse(&kv, "an operation"))
            .transpose()
    }

    async fn op_post(&self, op: &Operation) -> Result<bool> {
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

    async fn op_update(&self, id: &str, phase: OpPhase, new: &Operation) -> Result<bool> {
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

    async fn history_append(&self, entry: &HistoryEntry) -> Result<()> {
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

    async fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>> {
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

    async fn paused(&self) -> Result<bool> {
        Ok(self
            .get_one("read the pause flag", "paused")
            .await?
            .is_some_and(|kv| kv.value() == b"true"))
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

impl EtcdStore {
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

#[cfg(test)]
mod tests {
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
