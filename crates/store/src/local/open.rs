//! Opening the store file: checks of its location that say which file and why (SQLite's own
//! errors do not), the connection's setup (busy timeout, WAL, schema) and open errors.

use anyhow::{bail, Context};
use rusqlite::Connection;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a connection waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_millis(5000);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    cluster    TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    expires_ms INTEGER NULL,
    PRIMARY KEY (cluster, key)
);
";

/// Set the connection up and create the schema; returns the journal mode now in effect.
pub(super) fn init_connection(conn: &Connection) -> rusqlite::Result<String> {
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
pub(super) fn check_location(path: &Path) -> anyhow::Result<()> {
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

pub(super) fn open_error(path: &Path, e: rusqlite::Error) -> anyhow::Error {
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
