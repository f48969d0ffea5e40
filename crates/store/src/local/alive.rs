//! Members' liveness: a row `alive/<member>` holding when the member's agent last said it
//! is alive, expiring a TTL after that. Reading the members fills in `seen_ms` from it: now
//! while the row has not expired, as etcd's lease does (review finding: the time of the last
//! confirmation aged past the windows that ask whether a member is alive between two
//! confirmations).

use super::{to_i64, Cached, Db};
use crate::Result;
use rusqlite::params;
use std::collections::BTreeMap;

pub(super) const ALIVE_PREFIX: &str = "alive/";

impl Db {
    pub(super) fn member_alive(&self, member: &str, ttl_ms: u64) -> Result<()> {
        let now = self.now();
        self.with_conn("recording that a member is alive", |conn| {
            conn.exec_c(
                "INSERT INTO kv (cluster, key, value, expires_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (cluster, key) DO UPDATE
                 SET value = excluded.value, expires_ms = excluded.expires_ms",
                params![
                    self.cluster,
                    format!("{ALIVE_PREFIX}{member}"),
                    now.to_string(),
                    now.saturating_add(to_i64(ttl_ms))
                ],
            )?;
            Ok(())
        })
    }

    /// The members alive now (seen now).
    pub(super) fn alive(&self) -> Result<BTreeMap<String, u64>> {
        let now = self.now();
        self.with_conn("reading which members are alive", |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT key, value FROM kv
                 WHERE cluster = ?1 AND substr(key, 1, length(?2)) = ?2 AND expires_ms > ?3",
            )?;
            let rows = stmt
                .query_map(params![self.cluster, ALIVE_PREFIX, now], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let seen = u64::try_from(now).unwrap_or(0);
            Ok(rows
                .into_iter()
                .map(|(key, _)| (key[ALIVE_PREFIX.len()..].to_string(), seen))
                .collect())
        })
    }

    pub(super) fn forget_alive(&self, member: &str) -> Result<()> {
        self.with_conn("forgetting a member's liveness", |conn| {
            conn.exec_c(
                "DELETE FROM kv WHERE cluster = ?1 AND key = ?2",
                params![self.cluster, format!("{ALIVE_PREFIX}{member}")],
            )?;
            Ok(())
        })
    }
}
