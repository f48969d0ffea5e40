//! The cluster's view in one statement: one snapshot of every key but the history (as
//! etcd's view is one revision), and one round of SQLite's locks instead of seven. An idle
//! agent reads it every loop.

use super::alive::ALIVE_PREFIX;
use super::lease::unexpired;
use super::{
    Db, HISTORY_END, HISTORY_PREFIX, KEY_CONFIG, KEY_INITIALIZE, KEY_LEADER, KEY_OP, KEY_PAUSED,
    KEY_SYNC, MEMBER_PREFIX,
};
use crate::{MembersRead, Result, ViewParts};
use pgbaton_core::decide::ClusterView;
use pgbaton_core::model::Leader;
use rusqlite::params;
use std::collections::BTreeSet;

impl Db {
    pub(super) fn read_view(&self) -> Result<ClusterView> {
        let now = self.now();
        let rows: Vec<(String, String, Option<i64>)> =
            self.with_conn("reading the cluster's view", |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT key, value, expires_ms FROM kv
                     WHERE cluster = ?1 AND (key < ?2 OR key >= ?3) ORDER BY key",
                )?;
                let rows = stmt
                    .query_map(params![self.cluster, HISTORY_PREFIX, HISTORY_END], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })?;
        let mut parts = ViewParts {
            sync_text: None,
            config_text: None,
            members: MembersRead::default(),
            op: Ok(None),
            leader: None,
            initialize: None,
            paused: false,
        };
        let mut records = vec![];
        let mut alive = BTreeSet::new();
        for (key, value, exp) in rows {
            if let Some(member) = key.strip_prefix(MEMBER_PREFIX) {
                records.push((member.to_string(), value));
            } else if let Some(member) = key.strip_prefix(ALIVE_PREFIX) {
                if unexpired(exp, now) {
                    alive.insert(member.to_string());
                }
            } else {
                match key.as_str() {
                    KEY_LEADER if unexpired(exp, now) => {
                        parts.leader = Some(Leader {
                            member: value,
                            expires_ms: exp.map_or(0, |e| u64::try_from(e).unwrap_or(0)),
                        })
                    }
                    KEY_SYNC => parts.sync_text = Some(value),
                    KEY_CONFIG => parts.config_text = Some(value),
                    KEY_OP => parts.op = self.parse_op(&value).map(Some),
                    KEY_INITIALIZE => parts.initialize = Some(value),
                    KEY_PAUSED => parts.paused = value == "true",
                    _ => {}
                }
            }
        }
        parts.members = MembersRead::from_records(records, &self.describe());
        let seen = u64::try_from(now).unwrap_or(0);
        for m in &mut parts.members.members {
            m.seen_ms = if alive.contains(&m.name) { seen } else { 0 };
        }
        crate::view_of_parts(parts)
    }
}
