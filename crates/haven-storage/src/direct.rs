//! Whole SQLite write transactions in one hand-off.
//!
//! sqlx runs every statement of a transaction as a round trip to its connection's thread:
//! `BEGIN`, each statement and `COMMIT` are each a hand-over and a wake-up of the waiting task.
//! The writer is held through all of them, and on two busy cores the wake-ups, not SQLite, were
//! most of the time the one write connection was held: SQLite's own thread used about 40 % of
//! the time the writer was held under the SMS benchmark. Here a transaction is a closure run
//! start to finish on a thread of its own, on a rusqlite connection to the same file: one
//! hand-off in, one wake-up out.
//!
//! Only the hot group commits run here: accepted messages, the sending loop's settle (send
//! outcomes with the receipts that came meanwhile) and audit appends. The caller holds the
//! store's writer lock (the same priority lock as the sqlx write connection) until the job's
//! answer is back, so the two write connections never write at once. Those callers are
//! background tasks that are never cancelled; were one dropped mid-job, the lock would go to
//! the next writer early and that writer would wait in SQLite's busy handler, still correct.

use haven_platform::config::SqliteSynchronous;
use haven_platform::store::{StoreError, StoreResult};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Prepared statements kept: the group commits' set-based texts come in a few sizes each.
const STATEMENTS: usize = 256;

pub(crate) fn backend(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && (f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
    {
        return StoreError::Conflict;
    }
    StoreError::Backend(e.to_string())
}

/// The thread that runs write transactions, and its connection.
pub(crate) struct DirectWriter {
    jobs: mpsc::Sender<Job>,
}

impl DirectWriter {
    /// Opens a write connection to the database at `path` (already created; statements are
    /// prepared when first used, after the migrations) on a thread of its own, set up as the
    /// sqlx write connection is.
    pub(crate) fn open(path: &Path, sync: SqliteSynchronous) -> StoreResult<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(backend)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(backend)?;
        let sync = match sync {
            SqliteSynchronous::Full => "FULL",
            SqliteSynchronous::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY; \
             PRAGMA secure_delete = ON; PRAGMA wal_autocheckpoint = 0;"
        ))
        .map_err(backend)?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS);
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("haven-sqlite-writer".to_owned())
            .spawn(move || {
                let mut conn = conn;
                // Ends when the store (every sender) is dropped.
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the SQLite writer: {e}")))?;
        Ok(Self { jobs })
    }

    /// Runs `f` in one `BEGIN IMMEDIATE … COMMIT` on the writer thread (rolled back if it
    /// fails). The caller holds the writer lock until this returns.
    pub(crate) async fn transaction<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> StoreResult<R> + Send + 'static,
    ) -> StoreResult<R> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |conn: &mut Connection| {
            let _ = done.send(in_transaction(conn, f));
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Backend("the SQLite writer thread stopped".into()))?;
        result
            .await
            .map_err(|_| StoreError::Backend("the SQLite writer thread stopped".into()))?
    }
}

/// `BEGIN IMMEDIATE`, `f`, then `COMMIT`, or `ROLLBACK` when either fails. By hand, not
/// rusqlite's `Transaction`, so that `f` gets the connection itself (`&mut`, which can be
/// held across the never-waiting futures of `settle::Direct`).
fn in_transaction<R>(
    conn: &mut Connection,
    f: impl FnOnce(&mut Connection) -> StoreResult<R>,
) -> StoreResult<R> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(backend)?;
    let r = f(conn).and_then(|r| conn.execute_batch("COMMIT").map_err(backend).map(|()| r));
    if r.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn count(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn a_failed_transaction_leaves_nothing_and_the_next_one_runs() {
        let dir = std::env::temp_dir().join(format!("haven-direct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER PRIMARY KEY);")
            .unwrap();
        let w = DirectWriter::open(&path, SqliteSynchronous::Full).unwrap();
        let insert = |x: i64| {
            move |c: &mut Connection| -> StoreResult<()> {
                c.execute("INSERT INTO t (x) VALUES (?1)", [x])
                    .map(|_| ())
                    .map_err(backend)
            }
        };
        w.transaction(insert(1)).await.unwrap();
        // The second insert breaks the key: the first of the same transaction is rolled back.
        let failed = w
            .transaction(move |c| {
                insert(2)(c)?;
                insert(1)(c)
            })
            .await;
        assert!(matches!(failed, Err(StoreError::Conflict)), "{failed:?}");
        assert_eq!(count(&path), 1);
        w.transaction(insert(3)).await.unwrap();
        assert_eq!(count(&path), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
