//! The `local` backend: one SQLite file shared by the agents (and the CLI) of one machine.
//!
//! Every process opens its own connection to the file. The database runs in WAL mode with a
//! busy timeout, and every compare-and-set runs in a `BEGIN IMMEDIATE` transaction: the write
//! lock is taken before the current value is read, so two processes racing for the same key
//! are serialized and cannot both win.
//!
//! One table holds everything, scoped by cluster name:
//!
//! | key              | value                        | expires_ms            |
//! |------------------|------------------------------|-----------------------|
//! | `initialize`     | `claimed:<member>` or sysid  | NULL                  |
//! | `leader`         | member name                  | lease expiry (wall ms)|
//! | `members/<name>` | JSON of `MemberState`        | NULL                  |
//! | `op`             | JSON of `Operation`          | NULL                  |
//! | `history/<seq>`  | JSON of `HistoryEntry`       | NULL                  |
//!
//! `<seq>` is a 20-digit zero-padded sequence number, so key order is append order. An
//! appender computes it (the largest one + 1) inside its `BEGIN IMMEDIATE` transaction, so
//! appenders in several processes never take the same number, and it trims the history to
//! the last [`HISTORY_KEEP`](crate::HISTORY_KEEP) entries in the same transaction.
//!
//! Each call runs on tokio's blocking threads (`LocalStore::blocking`): a call that waits on
//! SQLite's lock (another process holds it, up to the busy timeout) then blocks no runtime
//! thread, and a caller's bound (`Bounded`) can give up on it. Run inline, such a call held
//! the agent's loop past every bound, so a primary could not run its failsafe round during
//! an outage of the file (chaos campaign finding).
//!
//! Its modules: `open` (checking the file's location, WAL mode, the schema), `lease`, `ops`
//! and `history` (their compare-and-sets); the initialize key, members and the pause flag
//! are single statements, kept here.

use crate::{Result, Store};
use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use pgbaton_core::model::{HistoryEntry, Leader, MemberState, OpPhase, Operation};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

mod alive;
mod cached;
mod config;
mod history;
mod lease;
mod open;
mod ops;
mod view;

use cached::Cached;
use open::{check_location, init_connection, open_error};

const KEY_INITIALIZE: &str = "initialize";
const KEY_LEADER: &str = "leader";
const MEMBER_PREFIX: &str = "members/";
const KEY_OP: &str = "op";
const KEY_PAUSED: &str = "paused";
const KEY_SYNC: &str = "sync";
const KEY_CONFIG: &str = "config";
const HISTORY_PREFIX: &str = "history/";
/// The first key after every `history/...` key (`'0'` follows `'/'`): history keys are the
/// range `HISTORY_PREFIX <= key < HISTORY_END`, which the primary key index serves.
const HISTORY_END: &str = "history0";

/// The source of "now" (wall-clock ms since the Unix epoch) for lease arithmetic.
type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A [`Store`] kept in one SQLite file, for one cluster.
///
/// Several `LocalStore`s (in one process or several) may use the same file at once; each
/// holds its own connection.
pub struct LocalStore {
    db: Arc<Db>,
}

/// The connection and what its calls need; its methods are synchronous.
struct Db {
    path: PathBuf,
    cluster: String,
    conn: Mutex<Connection>,
    clock: Clock,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("path", &self.db.path)
            .field("cluster", &self.db.cluster)
            .finish_non_exhaustive()
    }
}

impl LocalStore {
    /// Open (creating if missing) the SQLite store at `path`, for the cluster named `cluster`.
    ///
    /// The directory holding `path` must exist; the file and its schema are created if they
    /// do not.
    pub fn open(path: &Path, cluster: &str) -> anyhow::Result<LocalStore> {
        check_location(path)?;
        let conn = Connection::open(path).map_err(|e| open_error(path, e))?;
        let mode = init_connection(&conn).map_err(|e| open_error(path, e))?;
        conn.set_prepared_statement_cache_capacity(cached::CACHE_CAPACITY);
        if !mode.eq_ignore_ascii_case("wal") {
            bail!(
                "store file {}: could not switch its journal to WAL mode (it stays {mode:?}); \
                 is it on a file system without shared memory support?",
                path.display()
            );
        }
        let db = Db {
            path: path.to_path_buf(),
            cluster: cluster.to_string(),
            conn: Mutex::new(conn),
            clock: Arc::new(crate::now_ms),
        };
        Ok(LocalStore { db: Arc::new(db) })
    }

    /// Replace the clock used for lease arithmetic (tests use it to make time pass).
    ///
    /// # Panics
    /// When a call of this store is still running (it is meant right after `open`).
    #[doc(hidden)]
    pub fn with_clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Arc::get_mut(&mut self.db)
            .expect("with_clock right after open")
            .clock = Arc::new(clock);
        self
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.db.path
    }

    /// The cluster this store's keys belong to.
    pub fn cluster(&self) -> &str {
        &self.db.cluster
    }

    /// Run `f` on the database on a blocking thread (inline where no tokio runtime runs).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        if tokio::runtime::Handle::try_current().is_err() {
            return f(&db);
        }
        let describe = db.describe();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| anyhow!("{describe}: the call ended abnormally: {e}"))?
    }
}

impl Db {
    fn describe(&self) -> String {
        format!("sqlite file {}", self.path.display())
    }

    fn now(&self) -> i64 {
        to_i64((self.clock)())
    }

    /// Run `f` on the connection, adding context that names the store and the operation.
    fn with_conn<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| anyhow!("{}: connection lock poisoned by a panic", self.describe()))?;
        f(&mut conn).with_context(|| format!("{}: {what} failed", self.describe()))
    }

    /// Run `f` in a `BEGIN IMMEDIATE` transaction, committing on success.
    fn in_tx<T>(
        &self,
        what: &str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        self.with_conn(what, |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// Like [`in_tx`](Self::in_tx), for a body that fails with more than SQLite errors (a
    /// stored value that does not parse). Nothing is committed when `f` fails.
    fn in_tx_any<T>(
        &self,
        what: &str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| anyhow!("{}: connection lock poisoned by a panic", self.describe()))?;
        let run = |conn: &mut Connection| -> Result<T> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        };
        run(&mut conn).with_context(|| format!("{}: {what} failed", self.describe()))
    }
}

/// Insert or replace a key that does not expire.
fn put_row(conn: &Connection, cluster: &str, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.exec_c(
        "INSERT INTO kv (cluster, key, value, expires_ms) VALUES (?1, ?2, ?3, NULL)
         ON CONFLICT (cluster, key) DO UPDATE
         SET value = excluded.value, expires_ms = NULL",
        params![cluster, key, value],
    )?;
    Ok(())
}

/// Read one key's `(value, expires_ms)`.
fn get_row(
    conn: &Connection,
    cluster: &str,
    key: &str,
) -> rusqlite::Result<Option<(String, Option<i64>)>> {
    conn.row_c(
        "SELECT value, expires_ms FROM kv WHERE cluster = ?1 AND key = ?2",
        params![cluster, key],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn member_key(name: &str) -> String {
    format!("{MEMBER_PREFIX}{name}")
}

/// The calls, synchronous; `LocalStore`'s `Store` methods run them on blocking threads.
impl Db {
    fn initialize_get(&self) -> Result<Option<String>> {
        self.with_conn("reading the initialize key", |conn| {
            Ok(get_row(conn, &self.cluster, KEY_INITIALIZE)?.map(|(v, _)| v))
        })
    }

    fn initialize_claim(&self, value: &str) -> Result<bool> {
        self.in_tx("claiming the initialize key", |tx| {
            let n = tx.exec_c(
                "INSERT OR IGNORE INTO kv (cluster, key, value, expires_ms) VALUES (?1, ?2, ?3, NULL)",
                params![self.cluster, KEY_INITIALIZE, value],
            )?;
            Ok(n == 1)
        })
    }

    fn initialize_replace(&self, expected: &str, value: &str) -> Result<bool> {
        self.in_tx("replacing the initialize key", |tx| {
            let n = tx.exec_c(
                "UPDATE kv SET value = ?4 WHERE cluster = ?1 AND key = ?2 AND value = ?3",
                params![self.cluster, KEY_INITIALIZE, expected, value],
            )?;
            Ok(n == 1)
        })
    }

    fn initialize_abandon(&self, expected: &str) -> Result<bool> {
        self.in_tx("abandoning the initialize key", |tx| {
            let n = tx.exec_c(
                "DELETE FROM kv WHERE cluster = ?1 AND key = ?2 AND value = ?3",
                params![self.cluster, KEY_INITIALIZE, expected],
            )?;
            Ok(n == 1)
        })
    }

    fn leader_get(&self) -> Result<Option<Leader>> {
        self.read_leader()
    }

    fn leader_acquire(&self, member: &str, ttl_ms: u64) -> Result<bool> {
        self.acquire_leader(member, ttl_ms)
    }

    fn leader_renew(&self, member: &str, ttl_ms: u64) -> Result<bool> {
        self.renew_leader(member, ttl_ms)
    }

    fn leader_release(&self, member: &str) -> Result<bool> {
        self.release_leader(member)
    }

    fn member_put(&self, state: &MemberState) -> Result<()> {
        let json = serde_json::to_string(state)
            .with_context(|| format!("serializing the state of member {}", state.name))?;
        self.with_conn("publishing a member's state", |conn| {
            conn.exec_c(
                "INSERT INTO kv (cluster, key, value, expires_ms) VALUES (?1, ?2, ?3, NULL)
                 ON CONFLICT (cluster, key) DO UPDATE
                 SET value = excluded.value, expires_ms = NULL",
                params![self.cluster, member_key(&state.name), json],
            )?;
            Ok(())
        })
    }

    fn member_get(&self, name: &str) -> Result<Option<MemberState>> {
        let key = member_key(name);
        let row = self.with_conn("reading a member's state", |conn| {
            get_row(conn, &self.cluster, &key)
        })?;
        row.map(|(json, _)| {
            serde_json::from_str(&json).with_context(|| {
                format!(
                    "{}: the state of member {name} is not valid JSON of a member",
                    self.describe()
                )
            })
        })
        .transpose()
    }

    fn members_read(&self) -> Result<crate::MembersRead> {
        let rows: Vec<(String, String)> = self.with_conn("listing members", |conn| {
            // Keys are compared with substr rather than LIKE: member names may hold % or _.
            let mut stmt = conn.prepare_cached(
                "SELECT key, value FROM kv
                 WHERE cluster = ?1 AND substr(key, 1, length(?2)) = ?2
                 ORDER BY key",
            )?;
            let rows = stmt
                .query_map(params![self.cluster, MEMBER_PREFIX], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        let records = rows
            .into_iter()
            .map(|(key, json)| (key[MEMBER_PREFIX.len()..].to_string(), json))
            .collect();
        let mut read = crate::MembersRead::from_records(records, &self.describe());
        let alive = self.alive()?;
        for m in &mut read.members {
            m.seen_ms = alive.get(&m.name).copied().unwrap_or(0);
        }
        Ok(read)
    }

    fn member_delete(&self, name: &str) -> Result<bool> {
        let key = member_key(name);
        self.forget_alive(name)?;
        self.in_tx("deleting a member", |tx| {
            let n = tx.exec_c(
                "DELETE FROM kv WHERE cluster = ?1 AND key = ?2",
                params![self.cluster, key],
            )?;
            Ok(n == 1)
        })
    }

    fn op_get(&self) -> Result<Option<Operation>> {
        self.read_op()
    }

    fn op_post(&self, op: &Operation) -> Result<bool> {
        self.post_op(op)
    }

    fn op_update(&self, id: &str, phase: OpPhase, new: &Operation) -> Result<bool> {
        self.update_op(id, phase, new)
    }

    fn history_append(&self, entry: &HistoryEntry) -> Result<()> {
        self.append_history(entry)
    }

    fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>> {
        self.read_history(limit)
    }

    fn sync_get(&self) -> Result<Option<String>> {
        self.with_conn("reading the synchronous set", |conn| {
            Ok(get_row(conn, &self.cluster, KEY_SYNC)?.map(|(v, _)| v))
        })
    }

    fn sync_cas(&self, leader: &str, expected: Option<&str>, new: Option<&str>) -> Result<bool> {
        self.cas_sync(leader, expected, new)
    }

    fn paused(&self) -> Result<bool> {
        let row = self.with_conn("reading the pause flag", |conn| {
            get_row(conn, &self.cluster, KEY_PAUSED)
        })?;
        Ok(row.is_some_and(|(v, _)| v == "true"))
    }

    fn set_paused(&self, paused: bool) -> Result<()> {
        self.with_conn("setting the pause flag", |conn| {
            if paused {
                conn.exec_c(
                    "INSERT INTO kv (cluster, key, value, expires_ms) VALUES (?1, ?2, 'true', NULL)
                     ON CONFLICT (cluster, key) DO UPDATE SET value = 'true', expires_ms = NULL",
                    params![self.cluster, KEY_PAUSED],
                )?;
            } else {
                conn.exec_c(
                    "DELETE FROM kv WHERE cluster = ?1 AND key = ?2",
                    params![self.cluster, KEY_PAUSED],
                )?;
            }
            Ok(())
        })
    }
}

#[async_trait]
impl Store for LocalStore {
    fn describe(&self) -> String {
        self.db.describe()
    }

    async fn initialize_get(&self) -> Result<Option<String>> {
        self.blocking(|db| db.initialize_get()).await
    }

    async fn initialize_claim(&self, value: &str) -> Result<bool> {
        let value = value.to_string();
        self.blocking(move |db| db.initialize_claim(&value)).await
    }

    async fn initialize_replace(&self, expected: &str, value: &str) -> Result<bool> {
        let (expected, value) = (expected.to_string(), value.to_string());
        self.blocking(move |db| db.initialize_replace(&expected, &value))
            .await
    }

    async fn initialize_abandon(&self, expected: &str) -> Result<bool> {
        let expected = expected.to_string();
        self.blocking(move |db| db.initialize_abandon(&expected))
            .await
    }

    async fn leader_get(&self) -> Result<Option<Leader>> {
        self.blocking(|db| db.leader_get()).await
    }

    async fn leader_acquire(&self, member: &str, ttl_ms: u64) -> Result<bool> {
        let member = member.to_string();
        self.blocking(move |db| db.leader_acquire(&member, ttl_ms))
            .await
    }

    async fn leader_renew(&self, member: &str, ttl_ms: u64) -> Result<bool> {
        let member = member.to_string();
        self.blocking(move |db| db.leader_renew(&member, ttl_ms))
            .await
    }

    async fn leader_release(&self, member: &str) -> Result<bool> {
        let member = member.to_string();
        self.blocking(move |db| db.leader_release(&member)).await
    }

    async fn sync_get(&self) -> Result<Option<String>> {
        self.blocking(|db| db.sync_get()).await
    }

    async fn sync_cas(
        &self,
        leader: &str,
        expected: Option<&str>,
        value: Option<&str>,
    ) -> Result<bool> {
        let leader = leader.to_string();
        let expected = expected.map(str::to_string);
        let value = value.map(str::to_string);
        self.blocking(move |db| db.sync_cas(&leader, expected.as_deref(), value.as_deref()))
            .await
    }

    async fn member_put(&self, state: &MemberState) -> Result<()> {
        let state = state.clone();
        self.blocking(move |db| db.member_put(&state)).await
    }

    async fn member_get(&self, name: &str) -> Result<Option<MemberState>> {
        let name = name.to_string();
        self.blocking(move |db| db.member_get(&name)).await
    }

    async fn members_read(&self) -> Result<crate::MembersRead> {
        self.blocking(|db| db.members_read()).await
    }

    async fn member_delete(&self, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.blocking(move |db| db.member_delete(&name)).await
    }

    async fn member_alive(&self, member: &str, ttl_ms: u64) -> Result<()> {
        let member = member.to_string();
        self.blocking(move |db| db.member_alive(&member, ttl_ms))
            .await
    }

    async fn op_get(&self) -> Result<Option<Operation>> {
        self.blocking(|db| db.op_get()).await
    }

    async fn op_post(&self, op: &Operation) -> Result<bool> {
        let op = op.clone();
        self.blocking(move |db| db.op_post(&op)).await
    }

    async fn op_update(&self, id: &str, phase: OpPhase, new: &Operation) -> Result<bool> {
        let (id, new) = (id.to_string(), new.clone());
        self.blocking(move |db| db.op_update(&id, phase, &new))
            .await
    }

    async fn history_append(&self, entry: &HistoryEntry) -> Result<()> {
        let entry = entry.clone();
        self.blocking(move |db| db.history_append(&entry)).await
    }

    async fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>> {
        self.blocking(move |db| db.history(limit)).await
    }

    async fn paused(&self) -> Result<bool> {
        self.blocking(|db| db.paused()).await
    }

    async fn config_get(&self) -> Result<Option<String>> {
        self.blocking(|db| db.config_get()).await
    }

    async fn config_cas(&self, expected: Option<&str>, new: &str) -> Result<bool> {
        let (expected, new) = (expected.map(str::to_string), new.to_string());
        self.blocking(move |db| db.config_cas(expected.as_deref(), &new))
            .await
    }

    /// The keys read in one statement on one blocking thread: one snapshot, one hand-off.
    async fn view(&self) -> Result<pgbaton_core::decide::ClusterView> {
        self.blocking(|db| db.read_view()).await
    }

    async fn set_paused(&self, paused: bool) -> Result<()> {
        self.blocking(move |db| db.set_paused(paused)).await
    }
}

#[cfg(test)]
mod tests {
    use super::history::{history_key, history_seq};
    use super::*;

    #[test]
    fn open_names_missing_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("nope").join("store.db");
        let err = LocalStore::open(&path, "c").unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert!(
            err.contains(&tmp.path().join("nope").display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn open_rejects_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let err = LocalStore::open(tmp.path(), "c").unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
    }

    #[test]
    fn open_rejects_a_non_database_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("store.db");
        std::fs::write(&path, b"this is not an sqlite database, not at all, no").unwrap();
        let err = format!("{:#}", LocalStore::open(&path, "c").unwrap_err());
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn open_uses_wal() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("store.db");
        let s = LocalStore::open(&path, "c").unwrap();
        let mode: String =
            s.db.with_conn("t", |c| {
                c.query_row("PRAGMA journal_mode", [], |r| r.get(0))
            })
            .unwrap();
        assert_eq!(mode.to_lowercase(), "wal");
        assert_eq!(s.describe(), format!("sqlite file {}", path.display()));
    }

    #[test]
    fn history_keys_order_as_numbers() {
        assert_eq!(history_key(7), "history/00000000000000000007");
        assert_eq!(history_key(u64::MAX).len(), HISTORY_PREFIX.len() + 20);
        assert!(history_key(9) < history_key(10));
        assert!(history_key(u64::MAX).as_str() < HISTORY_END);
        assert!(HISTORY_PREFIX < HISTORY_END);
        for seq in [1, 42, u64::MAX] {
            assert_eq!(history_seq(&history_key(seq)), Some(seq));
        }
        assert_eq!(history_seq("history/12"), None);
        assert_eq!(history_seq("members/00000000000000000001"), None);
    }

    #[test]
    fn a_corrupt_operation_is_reported_not_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let s = LocalStore::open(&tmp.path().join("store.db"), "c").unwrap();
        s.db.with_conn("t", |c| put_row(c, "c", KEY_OP, "{not json"))
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let op = Operation::new(
            "op1".to_string(),
            pgbaton_core::model::OpKind::Reinit {
                member: "n2".to_string(),
            },
            1,
        );
        let err = format!("{:#}", rt.block_on(s.op_post(&op)).unwrap_err());
        assert!(err.contains("not valid JSON of an operation"), "{err}");
        assert!(rt.block_on(s.op_get()).is_err());
        let err = format!(
            "{:#}",
            rt.block_on(s.op_update("op1", OpPhase::Requested, &op))
                .unwrap_err()
        );
        assert!(err.contains("not valid JSON of an operation"), "{err}");
        let raw =
            s.db.with_conn("t", |c| get_row(c, "c", KEY_OP))
                .unwrap()
                .unwrap()
                .0;
        assert_eq!(raw, "{not json");
    }
}
