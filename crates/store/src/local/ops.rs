//! The operation: one key holding the current operation's JSON. Posting and updating are
//! compare-and-sets on its id and phase, in a `BEGIN IMMEDIATE` transaction.

use super::{get_row, put_row, Db, KEY_OP};
use crate::Result;
use anyhow::Context;
use pgbaton_core::model::{OpPhase, Operation};

impl Db {
    pub(super) fn read_op(&self) -> Result<Option<Operation>> {
        let row = self.with_conn("reading the current operation", |conn| {
            get_row(conn, &self.cluster, KEY_OP)
        })?;
        row.map(|(json, _)| self.parse_op(&json)).transpose()
    }

    /// The operation stored as `json`, or an error that names the store and the key.
    pub(super) fn parse_op(&self, json: &str) -> Result<Operation> {
        serde_json::from_str(json).with_context(|| {
            format!(
                "{}: the value of key {KEY_OP} is not valid JSON of an operation",
                self.describe()
            )
        })
    }

    pub(super) fn post_op(&self, op: &Operation) -> Result<bool> {
        let json = serde_json::to_string(op)
            .with_context(|| format!("serializing operation {}", op.id))?;
        self.in_tx_any("posting an operation", |tx| {
            if let Some((current, _)) = get_row(tx, &self.cluster, KEY_OP)? {
                if !self.op_head(&current)?.phase.finished() {
                    return Ok(false);
                }
            }
            put_row(tx, &self.cluster, KEY_OP, &json)?;
            Ok(true)
        })
    }

    pub(super) fn update_op(&self, id: &str, phase: OpPhase, new: &Operation) -> Result<bool> {
        let json = serde_json::to_string(new)
            .with_context(|| format!("serializing operation {}", new.id))?;
        self.in_tx_any("updating the current operation", |tx| {
            let Some((current, _)) = get_row(tx, &self.cluster, KEY_OP)? else {
                return Ok(false);
            };
            let head = self.op_head(&current)?;
            if head.id != id || head.phase != phase {
                return Ok(false);
            }
            put_row(tx, &self.cluster, KEY_OP, &json)?;
            Ok(true)
        })
    }

    ///
    /// Only these two fields are read, so an operation of a kind this build does not know
    /// still takes part in the compare-and-set.
    fn op_head(&self, json: &str) -> Result<OpHead> {
        serde_json::from_str(json).with_context(|| {
            format!(
                "{}: the value of key {KEY_OP} is not valid JSON of an operation",
                self.describe()
            )
        })
    }
}

/// The fields of a stored operation that its compare-and-sets look at.
#[derive(serde::Deserialize)]
struct OpHead {
    id: String,
    phase: OpPhase,
}
