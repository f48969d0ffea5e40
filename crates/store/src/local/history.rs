//! The history: one row per entry, keyed `history/<20-digit sequence number>` so that key
//! order is append order, trimmed to the last [`HISTORY_KEEP`] entries as it grows.

use super::{put_row, Cached, Db, HISTORY_END, HISTORY_PREFIX};
use crate::{Result, HISTORY_KEEP};
use anyhow::{anyhow, Context};
use pgbaton_core::model::HistoryEntry;
use rusqlite::params;

impl Db {
    pub(super) fn append_history(&self, entry: &HistoryEntry) -> Result<()> {
        let json = serde_json::to_string(entry).context("serializing a history entry")?;
        self.in_tx_any("appending to the history", |tx| {
            // Zero-padded numbers order as their keys do: the largest key is the last entry.
            let last: Option<String> = tx.row_c(
                "SELECT max(key) FROM kv WHERE cluster = ?1 AND key >= ?2 AND key < ?3",
                params![self.cluster, HISTORY_PREFIX, HISTORY_END],
                |r| r.get(0),
            )?;
            let last = match last {
                None => 0,
                Some(key) => history_seq(&key).ok_or_else(|| {
                    anyhow!("history key {key:?} is not {HISTORY_PREFIX}<20 digits>")
                })?,
            };
            let seq = last
                .checked_add(1)
                .ok_or_else(|| anyhow!("the history sequence is exhausted"))?;
            put_row(tx, &self.cluster, &history_key(seq), &json)?;
            // Keep the entries seq - HISTORY_KEEP + 1 ..= seq.
            if let Some(oldest_dropped) = seq.checked_sub(HISTORY_KEEP as u64) {
                tx.exec_c(
                    "DELETE FROM kv WHERE cluster = ?1 AND key >= ?2 AND key <= ?3",
                    params![self.cluster, HISTORY_PREFIX, history_key(oldest_dropped)],
                )?;
            }
            Ok(())
        })
    }

    pub(super) fn read_history(&self, limit: usize) -> Result<Vec<HistoryEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows: Vec<(String, String)> = self.with_conn("reading the history", |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT key, value FROM kv WHERE cluster = ?1 AND key >= ?2 AND key < ?3
                 ORDER BY key DESC LIMIT ?4",
            )?;
            let rows = stmt
                .query_map(
                    params![self.cluster, HISTORY_PREFIX, HISTORY_END, limit],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        rows.reverse();
        rows.into_iter()
            .map(|(key, json)| {
                serde_json::from_str(&json).with_context(|| {
                    format!(
                        "{}: the value of {key} is not valid JSON of a history entry",
                        self.describe()
                    )
                })
            })
            .collect()
    }
}

pub(super) fn history_key(seq: u64) -> String {
    format!("{HISTORY_PREFIX}{seq:020}")
}

/// The sequence number of a history key.
pub(super) fn history_seq(key: &str) -> Option<u64> {
    let digits = key.strip_prefix(HISTORY_PREFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}
