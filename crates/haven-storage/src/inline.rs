//! SQLite point reads run on the calling thread.
//!
//! sqlx runs every SQLite statement on a thread of its own per connection: the request's
//! runtime thread hands the statement over, sleeps, and is woken with the rows. On a small
//! virtual machine those two wake-ups cost far more than the read (an indexed lookup of a page
//! already in memory takes microseconds). Together with SQLite planning one of them again on
//! every use (see `sql` on `LIMIT`), the point reads behind each accepted message (the
//! recipient's consent, the contact by blind index, the contact's key) took a third of the CPU
//! time per message. The reads here run on the caller's thread instead, on read-only
//! connections of their own (WAL mode lets them read beside the one writer).
//!
//! Only short reads by a unique or selective index belong here: a read blocks its runtime
//! thread while it runs. Scans, pages of lists and everything that writes stay on sqlx.

use haven_platform::store::{StoreError, StoreResult};
use rusqlite::{Connection, OpenFlags};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// Idle connections kept; more are opened when more threads read at once (at most one per
/// runtime thread, since a read never yields) and closed again when they come back.
const KEEP_IDLE: usize = 16;
/// Prepared statements kept per connection (a handful of texts are read this way).
const STATEMENTS: usize = 32;

pub(crate) struct InlineReaders {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl InlineReaders {
    /// Readers of the database file at `path` (opened on first use).
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn open(&self) -> StoreResult<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(backend)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(backend)?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS);
        Ok(conn)
    }

    /// Runs `f` on an idle reader (or a new one) on this thread.
    pub(crate) fn read<R>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> StoreResult<R> {
        let conn = match self.idle.lock() {
            Ok(mut idle) => idle.pop(),
            Err(_) => None,
        };
        let conn = match conn {
            Some(c) => c,
            None => self.open()?,
        };
        // Timed: a read blocks its runtime thread, and with it whatever task waits in that
        // thread's queue (see `haven_sqlite_inline_read_seconds` in docs/configuration.md).
        let started = std::time::Instant::now();
        let out = f(&conn).map_err(backend);
        metrics::histogram!("haven_sqlite_inline_read_seconds")
            .record(started.elapsed().as_secs_f64());
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < KEEP_IDLE
        {
            idle.push(conn);
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_another_connection_committed_and_refuses_to_write() {
        let dir = std::env::temp_dir().join(format!("haven-inline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        let w = Connection::open(&path).unwrap();
        w.pragma_update(None, "journal_mode", "wal").unwrap();
        w.execute_batch(
            "CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER); INSERT INTO t VALUES ('a', 1);",
        )
        .unwrap();
        let r = InlineReaders::new(path.clone());
        let get = |r: &InlineReaders| {
            r.read(|c| {
                c.prepare_cached("SELECT v FROM t WHERE k = $1")?
                    .query_row(["a"], |row| row.get::<_, i64>(0))
            })
            .unwrap()
        };
        assert_eq!(get(&r), 1);
        w.execute("UPDATE t SET v = 2 WHERE k = 'a'", []).unwrap();
        assert_eq!(get(&r), 2, "a reused reader sees the latest commit");
        let wrote = r.read(|c| c.execute("UPDATE t SET v = 3", []));
        assert!(wrote.is_err(), "readers are read-only");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Why the statements in `sql` write `LIMIT ($n + 0)`: SQLite (3.47 and later) reads the
    /// value bound to a bare `LIMIT $n` while planning, and so plans the statement again every
    /// time a value is bound to it: a cached statement is then parsed afresh on every use.
    #[test]
    fn a_bare_limit_parameter_replans_on_every_binding() {
        use rusqlite::StatementStatus;
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE t (id TEXT PRIMARY KEY, a TEXT NOT NULL, b BLOB);
             CREATE INDEX t_by_a ON t (a, id);",
        )
        .unwrap();
        let replans = |sql: &str| {
            let mut s = c.prepare(sql).unwrap();
            for n in 1..=5i64 {
                let mut rows = s.query(rusqlite::params!["x", n]).unwrap();
                while rows.next().unwrap().is_some() {}
            }
            s.get_status(StatementStatus::RePrepare)
        };
        assert_eq!(
            replans("SELECT id FROM t WHERE a = $1 ORDER BY id LIMIT $2"),
            5
        );
        assert_eq!(
            replans("SELECT id FROM t WHERE a = $1 ORDER BY id LIMIT ($2 + 0)"),
            0
        );
    }
}
