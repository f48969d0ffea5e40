//! The leader lease: a row whose `expires_ms` is the lease's expiry in wall-clock ms. Every
//! change is a `BEGIN IMMEDIATE` transaction that reads "now" once it holds the write lock.

use super::{get_row, to_i64, Cached, Db, KEY_LEADER, KEY_SYNC};
use crate::Result;
use pgbaton_core::model::Leader;
use rusqlite::params;

impl Db {
    pub(super) fn read_leader(&self) -> Result<Option<Leader>> {
        let now = self.now();
        self.with_conn("reading the leader lease", |conn| {
            Ok(match get_row(conn, &self.cluster, KEY_LEADER)? {
                Some((member, Some(exp))) if exp > now => Some(Leader {
                    member,
                    expires_ms: u64::try_from(exp).unwrap_or(0),
                }),
                _ => None,
            })
        })
    }

    pub(super) fn acquire_leader(&self, member: &str, ttl_ms: u64) -> Result<bool> {
        self.in_tx("acquiring the leader lease", |tx| {
            // "now" is read once the write lock is held, so a lease is never judged by a
            // clock reading older than the last write.
            let now = self.now();
            let free = match get_row(tx, &self.cluster, KEY_LEADER)? {
                None => true,
                Some((holder, exp)) => holder == member || !unexpired(exp, now),
            };
            if free {
                // The holder taking its own lease again never shortens it (see `renew_leader`).
                tx.exec_c(
                    "INSERT INTO kv (cluster, key, value, expires_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (cluster, key) DO UPDATE
                     SET expires_ms = CASE WHEN kv.value = excluded.value AND kv.expires_ms > ?5
                           THEN MAX(kv.expires_ms, excluded.expires_ms)
                           ELSE excluded.expires_ms END,
                         value = excluded.value",
                    params![
                        self.cluster,
                        KEY_LEADER,
                        member,
                        now.saturating_add(to_i64(ttl_ms)),
                        now
                    ],
                )?;
            }
            Ok(free)
        })
    }

    /// A renewal never shortens the lease: a renewal that hung (the blocking call goes on
    /// after its caller gave up) may commit after a later one, and with a TTL lowered since,
    /// it would cut the lease short of the fence the later one armed (review finding). A
    /// lowered TTL so takes hold once the longer lease's expiry has passed.
    pub(super) fn renew_leader(&self, member: &str, ttl_ms: u64) -> Result<bool> {
        self.in_tx("renewing the leader lease", |tx| {
            let now = self.now();
            let n = tx.exec_c(
                "UPDATE kv SET expires_ms = MAX(expires_ms, ?4)
                 WHERE cluster = ?1 AND key = ?2 AND value = ?3
                   AND expires_ms IS NOT NULL AND expires_ms > ?5",
                params![
                    self.cluster,
                    KEY_LEADER,
                    member,
                    now.saturating_add(to_i64(ttl_ms)),
                    now
                ],
            )?;
            Ok(n == 1)
        })
    }

    pub(super) fn release_leader(&self, member: &str) -> Result<bool> {
        self.in_tx("releasing the leader lease", |tx| {
            let now = self.now();
            match get_row(tx, &self.cluster, KEY_LEADER)? {
                Some((holder, exp)) if holder == member => {
                    // An expired lease of ours is deleted too, but was not "held".
                    tx.exec_c(
                        "DELETE FROM kv WHERE cluster = ?1 AND key = ?2",
                        params![self.cluster, KEY_LEADER],
                    )?;
                    Ok(unexpired(exp, now))
                }
                _ => Ok(false),
            }
        })
    }
}

/// Is a lease with this expiry still held at `now`? (Expired = `expires_ms <= now`.)
impl Db {
    /// The synchronous set's compare-and-set: only while `leader` holds the lease.
    pub(super) fn cas_sync(
        &self,
        leader: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<bool> {
        self.in_tx("writing the synchronous set", |tx| {
            let now = self.now();
            let leads = matches!(
                get_row(tx, &self.cluster, KEY_LEADER)?,
                Some((holder, exp)) if holder == leader && unexpired(exp, now)
            );
            let current = get_row(tx, &self.cluster, KEY_SYNC)?.map(|(v, _)| v);
            if !leads || current.as_deref() != expected {
                return Ok(false);
            }
            match new {
                Some(v) => tx.exec_c(
                    "INSERT INTO kv (cluster, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (cluster, key) DO UPDATE SET value = excluded.value",
                    params![self.cluster, KEY_SYNC, v],
                )?,
                None => tx.exec_c(
                    "DELETE FROM kv WHERE cluster = ?1 AND key = ?2",
                    params![self.cluster, KEY_SYNC],
                )?,
            };
            Ok(true)
        })
    }
}

pub(super) fn unexpired(expires_ms: Option<i64>, now: i64) -> bool {
    expires_ms.is_some_and(|e| e > now)
}
