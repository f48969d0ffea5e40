//! The cluster's config record: one key, replaced only by compare-and-set on its text.

use super::{get_row, Cached, Db, KEY_CONFIG};
use crate::Result;
use rusqlite::params;

impl Db {
    pub(super) fn config_get(&self) -> Result<Option<String>> {
        self.with_conn("reading the cluster's config", |conn| {
            Ok(get_row(conn, &self.cluster, KEY_CONFIG)?.map(|(v, _)| v))
        })
    }

    pub(super) fn config_cas(&self, expected: Option<&str>, new: &str) -> Result<bool> {
        self.in_tx("writing the cluster's config", |tx| {
            let current = get_row(tx, &self.cluster, KEY_CONFIG)?.map(|(v, _)| v);
            if current.as_deref() != expected {
                return Ok(false);
            }
            tx.exec_c(
                "INSERT INTO kv (cluster, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (cluster, key) DO UPDATE SET value = excluded.value",
                params![self.cluster, KEY_CONFIG, new],
            )?;
            Ok(true)
        })
    }
}
