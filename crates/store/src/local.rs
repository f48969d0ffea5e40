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
//! the last [`HISTORY_KEEP`] entries in the same transaction.
//!
//! Operations are short local file accesses, so they run inline in the async methods.

use crate::{Result, Store, HISTORY_KEEP};
use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use pgbaton_core::model::{HistoryEntry, Leader, MemberState, OpPhase, Operation};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a connection waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_millis(5000);

const KEY_INITIALIZE: &str = "initialize";
const KEY_LEADER: &str = "leader";
const MEMBER_PREFIX: &str = "members/";
const KEY_OP: &str = "op";
const KEY_PAUSED: &str = "paused";
const HISTORY_PREFIX: &str = "history/";
/// The first key after every `history/...` key (`'0'` follows `'/'`): history keys are the
/// range `HISTORY_PREFIX <= key < HISTORY_END`, which the primary key index serves.
const HISTORY_END: &str = "history0";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    cluster    TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    expires_ms INTEGER NULL,
    PRIMARY KEY (cluster, key)
);
";

/// The source of "now" (wall-clock ms since the Unix epoch) for lease arithmetic.
type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A [`Store`] kept in one SQLite file, for one cluster.
///
/// Several `LocalStore`s (in one process or several) may use the same file at once; each
/// holds its own connection.
pub struct LocalStore {
    path: PathBuf,
    cluster: String,
    conn: Mutex<Connection>,
    clock: Clock,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("path", &self.path)
            .field("cluster", &self.cluster)
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
        if !mode.eq_ignore_ascii_case("wal") {
            bail!(
                "store file {}: could not switch its journal to WAL mode (it stays {mode:?}); \
                 is it on a file system without shared memory support?",
                path.display()
            );
        }
        Ok(LocalStore {
            path: path.to_path_buf(),
            cluster: cluster.to_string(),
            conn: Mutex::new(conn),
            clock: Arc::new(crate::now_ms),
        })
    }

    /// Replace the clock used for lease arithmetic (tests use it to make time pass).
    #[doc(hidden)]
    pub fn with_clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cluster this store's keys belong to.
    pub fn cluster(&self) -> &str {
        &self.cluster
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

    /// The id and phase of the stored operation JSON `json`.
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

/// Insert or replace a key that does not expire.
fn put_row(conn: &Connection, cluster: &str, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO kv (cluster, key, value, expires_ms) VALUES (?1, ?2, ?3, NULL)
         ON CONFLICT (cluster, key) DO UPDATE
         SET value = excluded.value, expires_ms = NULL",
        params![cluster, key, value],
    )?;
    Ok(())
}

fn history_key(seq: u64) -> String {
    format!("{HISTORY_PREFIX}{seq:020}")
}

/// The sequence number of a history key.
fn history_seq(key: &str) -> Option<u64> {
    let digits = key.strip_prefix(HISTORY_PREFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Read one key's `(value, expires_ms)`.
fn get_row(
    conn: &Connection,
    cluster: &str,
    key: &str,
) -> rusqlite::Result<Option<(String, Option<i64>)>> {
    conn.query_row(
        "SELECT value, expires_ms FROM kv WHERE cluster = ?1 AND key = ?2",
        params![cluster, key],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// Is a lease with this expiry still held at `now`? (Expired = `expires_ms <= now`.)
fn unexpired(expires_ms: Option<i64>, now: i64) -> bool {
    expires_ms.is_some_and(|e| e > now)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn member_key(name: &str) -> String {
    format!("{MEMBER_PREFIX}{name}")
}

/// Set the connection up and create the schema; returns the journal mode now in effect.
fn init_connection(conn: &Connection) -> rusqlite::Result<String> {
    // The busy timeout first: switching to WAL and creating the schema may have to wait for
    // another process doing the same.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = retry_busy(|| conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    retry_busy(|| conn.execute_batch(SCHEMA))?;
    Ok(mode)
}

/// Run `f` again while it fails with "database is locked", for up to [`BUSY_TIMEOUT`].
///
/// SQLite does not always call the busy handler: switching a new file's journal mode to WAL
/// while other connections do the same can fail at once with `SQLITE_BUSY` (agents starting
/// together hit this).
fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    loop {
        match f() {
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            out => return out,
        }
    }
}

/// Check before SQLite does (its errors do not say which file or why) that `path` can be
/// a store file: its directory exists and it can be read, written and created.
fn check_location(path: &Path) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!(
            "store directory {} is not a directory: fix store.path ({})",
            dir.display(),
            path.display()
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "store directory {} does not exist: create it or fix store.path ({})",
            dir.display(),
            path.display()
        ),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => bail!(
            "store directory {} is not accessible to {}: {e}",
            dir.display(),
            current_user()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("store directory {}", dir.display()));
        }
    }
    if path.is_dir() {
        bail!(
            "store path {} is a directory; store.path must name a file (e.g. {})",
            path.display(),
            path.join("store.db").display()
        );
    }
    // Opening read-write (creating it if missing: an empty file is a valid SQLite database)
    // tells permission problems apart with an OS error that SQLite would swallow.
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => bail!(
            "store file {} cannot be opened for reading and writing by {}: permission denied \
             (the file and its directory {} must be writable: SQLite keeps its -wal and -shm \
             files next to it)",
            path.display(),
            current_user(),
            dir.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot open store file {}", path.display())),
    }
}

fn open_error(path: &Path, e: rusqlite::Error) -> anyhow::Error {
    let hint = match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly) => format!(
            " (as {}; the file and its directory must be writable: SQLite keeps its -wal and \
             -shm files next to it)",
            current_user()
        ),
        Some(rusqlite::ErrorCode::NotADatabase) => {
            " (the file exists but is not an SQLite database: fix store.path)".to_string()
        }
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => format!(
            " (another process held it locked for more than {} ms)",
            BUSY_TIMEOUT.as_millis()
        ),
        _ => String::new(),
    };
    anyhow::Error::new(e).context(format!("cannot open store file {}{hint}", path.display()))
}

/// "user alice (uid 1000)", as well as can be told without libc.
fn current_user() -> String {
    use std::os::unix::fs::MetadataExt;
    let name = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|s| !s.is_empty());
    // /proc/self is owned by the process's effective user.
    let uid = std::fs::metadata("/proc/self").ok().map(|m| m.uid());
    match (name, uid) {
        (Some(n), Some(u)) => format!("user {n} (uid {u})"),
        (Some(n), None) => format!("user {n}"),
        (None, Some(u)) => format!("uid {u}"),
        (None, None) => "the current user".to_string(),
    }
}

#[async_trait]
impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("sqlite file {}", self.path.display())
    }

    async fn initialize_get(&self) -> Result<Option<String>> {
        self.with_conn("reading the initialize key", |conn| {
            Ok(get_row(conn, &self.cluster, KEY_INITIALIZE)?.map(|(v, _)| v))
        })
    }

    async fn initialize_claim(&self, value: &str) -> Result<bool> {
        self.in_tx("claiming the initialize key", |tx| {
            let n = tx.execute(
                "INSERT OR IGNORE INTO kv (cluster, key, value, expires_ms) VALUES (?1, ?2, ?3, NULL)",
                params![self.cluster, KEY_INITIALIZE, value],
            )?;
            Ok(n == 1)
        })
    }

    async fn initialize_replace(&self, expected: &str, value: &str) -> Result<bool> {
        self.in_tx("replacing the initialize key", |tx| {
            let n = tx.execute(
                "UPDATE kv SET value = ?4 WHERE cluster = ?1 AND key = ?2 AND value = ?3",
                params![self.cluster, KEY_INITIALIZE, expected, value],
            )?;
            Ok(n == 1)
        })
    }

    async fn initialize_abandon(&self, expected: &str) -> Result<bool> {
        self.in_tx("abandoning the initialize key", |tx| {
            let n = tx.execute(
                "DELETE FROM kv WHERE cluster = ?1 AND key = ?2 AND value = ?3",
                params![self.cluster, KEY_INITIALIZE, expected],
            )?;
            Ok(n == 1)
        })
    }

    async fn leader_get(&self) -> Result<Option<Leader>> {
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

    async fn leader_acquire(&self, member: &str, ttl_ms: u64) -> Result<bool> {
        self.in_tx("acquiring the leader lease", |tx| {
            // "now" is read once the write lock is held, so a lease is never judged by a
            // clock reading older than the last write.
            let now = self.now();
            let free = match get_row(tx, &self.cluster, KEY_LEADER)? {
                None => true,
                Some((holder, exp)) => holder == member || !unexpired(exp, now),
            };
            if free {
                tx.execute(
                    "INSERT INTO kv (cluster, key, value, expires_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (cluster, key) DO UPDATE
                     SET value = excluded.value, expires_ms = excluded.expires_ms",
                    params![
                        self.cluster,
                        KEY_LEADER,
                        member,
                        now.saturating_add(to_i64(ttl_ms))
                    ],
                )?;
            }
            Ok(free)
        })
    }

    async fn leader_renew(&self, member: &str, ttl_ms: u64) -> Result<bool> {
        self.in_tx("renewing the leader lease", |tx| {
            let now = self.now();
            let n = tx.execute(
                "UPDATE kv SET expires_ms = ?4
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

    async fn leader_release(&self, member: &str) -> Result<bool> {
        self.in_tx("releasing the leader lease", |tx| {
            let now = self.now();
            match get_row(tx, &self.cluster, KEY_LEADER)? {
                Some((holder, exp)) if holder == member => {
                    // An expired lease of ours is deleted too, but was not "held".
                    tx.execute(
                        "DELETE FROM kv WHERE cluster = ?1 AND key = ?2",
                        params![self.cluster, KEY_LEADER],
                    )?;
                    Ok(unexpired(exp, now))
                }
                _ => Ok(false),
            }
        })
    }

    async fn member_put(&self, state: &MemberState) -> Result<()> {
        let json = serde_json::to_string(state)
            .with_context(|| format!("serializing the state of member {}", state.name))?;
        self.with_conn("publishing a member's state", |conn| {
            conn.execute(
                "INSERT INTO kv (cluster, key, value, expires_ms) VALUES (?1, ?2, ?3, NULL)
                 ON CONFLICT (cluster, key) DO UPDATE
                 SET value = excluded.value, expires_ms = NULL",
                params![self.cluster, member_key(&state.name), json],
            )?;
            Ok(())
        })
    }

    async fn member_get(&self, name: &str) -> Result<Option<MemberState>> {
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

    async fn members(&self) -> Result<Vec<MemberState>> {
        let rows: Vec<(String, String)> = self.with_conn("listing members", |conn| {
            // Keys are compared with substr rather than LIKE: member names may hold % or _.
            let mut stmt = conn.prepare(
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
        let mut members = rows
            .into_iter()
            .map(|(key, json)| {
                serde_json::from_str::<MemberState>(&json).with_context(|| {
                    format!(
                        "{}: the value of {key} is not valid JSON of a member",
                        self.describe()
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // SQLite orders keys bytewise already; sort by the name itself to not depend on it.
        members.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(members)
    }

    async fn member_delete(&self, name: &str) -> Result<bool> {
        let key = member_key(name);
        self.in_tx("deleting a member", |tx| {
            let n = tx.execute(
                "DELETE FROM kv WHERE cluster = ?1 AND key = ?2",
                params![self.cluster, key],
            )?;
            Ok(n == 1)
        })
    }

    async fn op_get(&self) -> Result<Option<Operation>> {
        let row = self.with_conn("reading the current operation", |conn| {
            get_row(conn, &self.cluster, KEY_OP)
        })?;
        row.map(|(json, _)| {
            serde_json::from_str(&json).with_context(|| {
                format!(
                    "{}: the value of key {KEY_OP} is not valid JSON of an operation",
                    self.describe()
                )
            })
        })
        .transpose()
    }

    async fn op_post(&self, op: &Operation) -> Result<bool> {
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

    async fn op_update(&self, id: &str, phase: OpPhase, new: &Operation) -> Result<bool> {
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

    async fn history_append(&self, entry: &HistoryEntry) -> Result<()> {
        let json = serde_json::to_string(entry).context("serializing a history entry")?;
        self.in_tx_any("appending to the history", |tx| {
            // Zero-padded numbers order as their keys do: the largest key is the last entry.
            let last: Option<String> = tx.query_row(
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
                tx.execute(
                    "DELETE FROM kv WHERE cluster = ?1 AND key >= ?2 AND key <= ?3",
                    params![self.cluster, HISTORY_PREFIX, history_key(oldest_dropped)],
                )?;
            }
            Ok(())
        })
    }

    async fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows: Vec<(String, String)> = self.with_conn("reading the history", |conn| {
            let mut stmt = conn.prepare(
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

    async fn paused(&self) -> Result<bool> {
        let row = self.with_conn("reading the pause flag", |conn| {
            get_row(conn, &self.cluster, KEY_PAUSED)
        })?;
        Ok(row.is_some_and(|(v, _)| v == "true"))
    }

    async fn set_paused(&self, paused: bool) -> Result<()> {
        self.with_conn("setting the pause flag", |conn| {
            if paused {
                conn.execute(
                    "INSERT INTO kv (cluster, key, value, expires_ms) VALUES (?1, ?2, 'true', NULL)
                     ON CONFLICT (cluster, key) DO UPDATE SET value = 'true', expires_ms = NULL",
                    params![self.cluster, KEY_PAUSED],
                )?;
            } else {
                conn.execute(
                    "DELETE FROM kv WHERE cluster = ?1 AND key = ?2",
                    params![self.cluster, KEY_PAUSED],
                )?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
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
        let mode: String = s
            .with_conn("t", |c| {
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
        s.with_conn("t", |c| put_row(c, "c", KEY_OP, "{not json"))
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
        let raw = s
            .with_conn("t", |c| get_row(c, "c", KEY_OP))
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(raw, "{not json");
    }
}
