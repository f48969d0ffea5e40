//! Statements through the connection's cache: an idle agent runs the same dozen statements
//! every loop, and SQLite's parser was a fifth of its CPU when each was prepared anew.

use rusqlite::{Connection, Params, Row};

/// Room for every statement of this store (about 25), so none is evicted and parsed again.
pub(super) const CACHE_CAPACITY: usize = 64;

pub(super) trait Cached {
    /// [`Connection::execute`] with the prepared statement kept.
    fn exec_c<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    /// [`Connection::query_row`] with the prepared statement kept.
    fn row_c<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec_c<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row_c<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}
