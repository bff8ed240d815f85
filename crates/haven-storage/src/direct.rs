//! Whole SQLite write transactions in one hand-off, queued on the writer thread.
//!
//! sqlx runs every statement of a transaction as a round trip to its connection's thread:
//! `BEGIN`, each statement and `COMMIT` are each a hand-over and a wake-up of the waiting task.
//! The writer is held through all of them, and on two busy cores the wake-ups, not SQLite, were
//! most of the time the one write connection was held: SQLite's own thread used about 40 % of
//! the time the writer was held under the SMS benchmark. Here a transaction is a closure run
//! start to finish on a thread of its own, on a rusqlite connection to the same file.
//!
//! Only the hot group commits run here: accepted messages, the sending loop's settle (send
//! outcomes with the receipts that came meanwhile) and audit appends. They queue on the thread,
//! not on the writer lock: the thread takes the store's writer lock (the same priority lock as
//! the sqlx write connection, so the two write connections never write at once) and runs the
//! queued transactions back to back, foreground ones first, a background one once it has been
//! passed over for [`writer::MAX_DEFER`]. It lets the lock go as soon as a writer on the sqlx
//! connection (or the checkpointer) waits for it, and when it has nothing left to run. So no
//! async task's wake-up stands between two transactions: a caller's task is woken once its
//! transaction is done, while the next one already runs.
//!
//! Queued transactions share a commit where that delays no caller: each runs in a savepoint of
//! one SQLite transaction (a failing one is rolled back to its savepoint alone), and a
//! background one (a settle, queued audit events) is followed, before the one `COMMIT`, by the
//! foreground ones queued behind it, which would otherwise have waited for its commit and then
//! made their own. A commit (its WAL frames and its disk sync) costs about as much CPU as the
//! group commit of a dozen accepted messages, so fewer of them leave more of two cores to the
//! requests. Foreground transactions never wait for a background one that was not going to run
//! first anyway, and nobody's result is given before the commit that makes it durable.

use crate::writer::{self, Class, PriorityLock};
use haven_platform::config::SqliteSynchronous;
use haven_platform::store::{StoreError, StoreResult};
use rusqlite::{Connection, OpenFlags};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Where a queued transaction runs.
enum Run<'a> {
    /// Inside the open transaction on this connection, in a savepoint of its own.
    In(&'a mut Connection),
    /// Nowhere: the transaction could not begin, with this error.
    Failed(StoreError),
    /// Nowhere: the store is closed.
    Closed,
}

/// What a transaction that ran leaves for the end of the shared transaction: given the
/// outcome of the `COMMIT`, it answers its caller.
type Finish = Box<dyn FnOnce(StoreResult<()>) + Send>;

/// A queued transaction. Returns `None` when it did not run because its caller had given up on
/// it first; a transaction that failed has answered its caller already.
type Job = Box<dyn FnOnce(Run<'_>) -> Option<Finish> + Send>;

/// A job waiting on the writer thread.
struct Queued {
    class: Class,
    /// The writer's purpose, the metrics' `writer` label.
    writer: &'static str,
    asked: Instant,
    job: Job,
}

/// Prepared statements kept: the group commits' set-based texts come in a few sizes each.
const STATEMENTS: usize = 256;

/// The most transactions one commit takes: a bound that the queues never reach in practice
/// (each writer has at most one transaction queued at a time).
const MAX_SHARED: usize = 32;

pub(crate) fn backend(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && (f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
    {
        return StoreError::Conflict;
    }
    StoreError::Backend(e.to_string())
}

fn stopped() -> StoreError {
    StoreError::Backend("the SQLite writer thread stopped".into())
}

/// The thread that runs write transactions, and its connection.
pub(crate) struct DirectWriter {
    jobs: mpsc::Sender<Queued>,
    /// How long a caller waits for its transaction to start before giving up on it.
    max_wait: Duration,
}

/// A queued transaction's state, shared by its caller and the writer thread: whichever moves it
/// out of `QUEUED` first decides whether it runs.
const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

impl DirectWriter {
    /// Opens a write connection to the database at `path` (already created; statements are
    /// prepared when first used, after the migrations) on a thread of its own, set up as the
    /// sqlx write connection is, writing under `lock`.
    pub(crate) fn open<T: Send + 'static>(
        path: &Path,
        sync: SqliteSynchronous,
        lock: Arc<PriorityLock<T>>,
        max_wait: Duration,
    ) -> StoreResult<Self> {
        Self::open_with_max_defer(path, sync, lock, max_wait, writer::MAX_DEFER)
    }

    /// [`Self::open`], with a background transaction passed over for at most `max_defer`.
    fn open_with_max_defer<T: Send + 'static>(
        path: &Path,
        sync: SqliteSynchronous,
        lock: Arc<PriorityLock<T>>,
        max_wait: Duration,
        max_defer: Duration,
    ) -> StoreResult<Self> {
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
        let (jobs, rx) = mpsc::channel::<Queued>();
        std::thread::Builder::new()
            .name("haven-sqlite-writer".to_owned())
            .spawn(move || run(conn, &rx, &lock, max_defer))
            .map_err(|e| StoreError::Backend(format!("cannot start the SQLite writer: {e}")))?;
        Ok(Self { jobs, max_wait })
    }

    /// Runs `f` in one `BEGIN IMMEDIATE … COMMIT` on the writer thread (rolled back if it
    /// fails), in its turn among the queued transactions of `class` (see the module), and
    /// records its wait and hold under `writer`. When it has not started within the writer's
    /// longest wait, it never will, and the caller gets an error; once started, it is waited
    /// for to the end. A caller that stops waiting does not stop a started transaction.
    pub(crate) async fn transaction<R: Send + 'static>(
        &self,
        class: Class,
        writer: &'static str,
        f: impl FnOnce(&mut Connection) -> StoreResult<R> + Send + 'static,
    ) -> StoreResult<R> {
        let (done, mut result) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let job_state = Arc::clone(&state);
        let job: Job = Box::new(move |run: Run<'_>| {
            if job_state
                .compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return None;
            }
            let failed = match run {
                Run::In(conn) => match in_savepoint(conn, f) {
                    Ok(r) => {
                        return Some(Box::new(move |committed: StoreResult<()>| {
                            let _ = done.send(committed.map(|()| r));
                        }));
                    }
                    Err(e) => e,
                },
                Run::Failed(e) => e,
                Run::Closed => StoreError::Backend("the store is closed".into()),
            };
            let _ = done.send(Err(failed));
            Some(Box::new(|_| {}))
        });
        self.jobs
            .send(Queued {
                class,
                writer,
                asked: Instant::now(),
                job,
            })
            .map_err(|_| stopped())?;
        match tokio::time::timeout(self.max_wait, &mut result).await {
            Ok(r) => r.map_err(|_| stopped())?,
            Err(_) => {
                if state
                    .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Err(StoreError::Backend(
                        "timed out waiting for the SQLite write connection".into(),
                    ));
                }
                result.await.map_err(|_| stopped())?
            }
        }
    }
}

/// The writer thread: until the store (every sender) is dropped, runs the queued jobs under the
/// writer lock, keeping the lock between jobs while nobody else waits for it.
fn run<T>(
    mut conn: Connection,
    rx: &mpsc::Receiver<Queued>,
    lock: &PriorityLock<T>,
    max_defer: Duration,
) {
    let mut foreground: VecDeque<Queued> = VecDeque::new();
    let mut background: VecDeque<Queued> = VecDeque::new();
    let mut held = None;
    let queue = |q: Queued, fg: &mut VecDeque<Queued>, bg: &mut VecDeque<Queued>| match q.class {
        Class::Foreground => fg.push_back(q),
        Class::Background => bg.push_back(q),
    };
    loop {
        if foreground.is_empty() && background.is_empty() {
            // Nothing to run: the lock goes back while the thread waits.
            drop(held.take());
            match rx.recv() {
                Ok(q) => queue(q, &mut foreground, &mut background),
                Err(_) => return,
            }
        }
        while let Ok(q) = rx.try_recv() {
            queue(q, &mut foreground, &mut background);
        }
        if held.is_none() {
            // Asked for as the most urgent job queued, and the job chosen once it is granted:
            // what arrived meanwhile may go first.
            let class = if foreground.is_empty() {
                Class::Background
            } else {
                Class::Foreground
            };
            match lock.lock_blocking(class) {
                Ok(h) => held = Some(h),
                Err(writer::LockError::Closed) => {
                    for q in foreground.drain(..).chain(background.drain(..)) {
                        let _ = (q.job)(Run::Closed);
                    }
                    continue;
                }
            }
            while let Ok(q) = rx.try_recv() {
                queue(q, &mut foreground, &mut background);
            }
        }
        let overdue = background
            .front()
            .is_some_and(|q| q.asked.elapsed() >= max_defer);
        let next = if overdue {
            background.pop_front()
        } else {
            foreground.pop_front().or_else(|| background.pop_front())
        };
        let Some(first) = next else { continue };
        shared_transaction(
            &mut conn,
            first,
            rx,
            lock,
            max_defer,
            &mut foreground,
            &mut background,
        );
        if lock.has_waiters() {
            // A writer on the other connection, or the checkpointer, goes next.
            drop(held.take());
        }
    }
}

/// One SQLite transaction: `first`, then what may share its commit (see the module), each in a
/// savepoint of its own, then the `COMMIT`, whose outcome every transaction that ran is given.
fn shared_transaction<T>(
    conn: &mut Connection,
    first: Queued,
    rx: &mpsc::Receiver<Queued>,
    lock: &PriorityLock<T>,
    max_defer: Duration,
    foreground: &mut VecDeque<Queued>,
    background: &mut VecDeque<Queued>,
) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let _ = (first.job)(Run::Failed(backend(e)));
        return;
    }
    let mut finishes: Vec<Finish> = Vec::new();
    let mut in_foreground = first.class == Class::Foreground;
    let mut q = first;
    loop {
        let since = Instant::now();
        // An abandoned transaction (see `DirectWriter::transaction`) is not counted.
        if let Some(finish) = (q.job)(Run::In(conn)) {
            metrics::histogram!("haven_sqlite_writer_wait_seconds", "writer" => q.writer)
                .record(since.duration_since(q.asked).as_secs_f64());
            metrics::histogram!("haven_sqlite_writer_hold_seconds", "writer" => q.writer)
                .record(since.elapsed().as_secs_f64());
            finishes.push(finish);
        }
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back (an I/O error, a full disk): what ran
            // before in it is gone too.
            for finish in finishes {
                finish(Err(StoreError::Backend(
                    "the SQLite transaction was rolled back".into(),
                )));
            }
            return;
        }
        while let Ok(q) = rx.try_recv() {
            match q.class {
                Class::Foreground => foreground.push_back(q),
                Class::Background => background.push_back(q),
            }
        }
        if lock.has_waiters() || finishes.len() >= MAX_SHARED {
            break;
        }
        // After a background transaction: one overdue as well, else the foreground ones
        // queued, else another background one. After a foreground one: foreground ones only,
        // so that no background work ever delays a foreground commit.
        let overdue = background
            .front()
            .is_some_and(|q| q.asked.elapsed() >= max_defer);
        let next = if in_foreground {
            foreground.pop_front()
        } else if overdue {
            background.pop_front()
        } else if let Some(f) = foreground.pop_front() {
            in_foreground = true;
            Some(f)
        } else {
            background.pop_front()
        };
        match next {
            Some(n) => q = n,
            None => break,
        }
    }
    let started = Instant::now();
    let committed = conn.execute_batch("COMMIT").map_err(backend);
    if committed.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    metrics::histogram!("haven_sqlite_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("haven_sqlite_commit_transactions").record(finishes.len() as f64);
    for finish in finishes {
        finish(match &committed {
            Ok(()) => Ok(()),
            Err(StoreError::Backend(m)) => Err(StoreError::Backend(m.clone())),
            Err(StoreError::Conflict) => Err(StoreError::Conflict),
        });
    }
}

/// `f` in a savepoint of the open transaction: released when it succeeds, rolled back to (and
/// nothing of it kept) when it fails. By hand, not rusqlite's `Savepoint`, so that `f` gets the
/// connection itself (`&mut`, which can be held across the never-waiting futures of
/// `settle::Direct`).
fn in_savepoint<R>(
    conn: &mut Connection,
    f: impl FnOnce(&mut Connection) -> StoreResult<R>,
) -> StoreResult<R> {
    conn.execute_batch("SAVEPOINT job").map_err(backend)?;
    let r = f(conn).and_then(|r| {
        conn.execute_batch("RELEASE job")
            .map_err(backend)
            .map(|()| r)
    });
    if r.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
    }
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn count(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    /// A fresh database with one table, and a writer on it under `lock`.
    fn writer(name: &str, lock: &Arc<PriorityLock<()>>) -> (std::path::PathBuf, DirectWriter) {
        writer_deferring(name, lock, Duration::from_secs(60))
    }

    /// [`writer`], passing a background transaction over for at most `max_defer`.
    fn writer_deferring(
        name: &str,
        lock: &Arc<PriorityLock<()>>,
        max_defer: Duration,
    ) -> (std::path::PathBuf, DirectWriter) {
        let dir = std::env::temp_dir().join(format!("haven-direct-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER PRIMARY KEY);")
            .unwrap();
        let w = DirectWriter::open_with_max_defer(
            &path,
            SqliteSynchronous::Full,
            Arc::clone(lock),
            Duration::from_secs(1),
            max_defer,
        )
        .unwrap();
        (dir, w)
    }

    fn insert(x: i64) -> impl FnOnce(&mut Connection) -> StoreResult<()> + Send + 'static {
        move |c: &mut Connection| {
            c.execute("INSERT INTO t (x) VALUES (?1)", [x])
                .map(|_| ())
                .map_err(backend)
        }
    }

    #[tokio::test]
    async fn a_failed_transaction_leaves_nothing_and_the_next_one_runs() {
        let lock = Arc::new(PriorityLock::new(()));
        let (dir, w) = writer("failed", &lock);
        let path = dir.join("t.db");
        let fg = Class::Foreground;
        w.transaction(fg, "test", insert(1)).await.unwrap();
        // The second insert breaks the key: the first of the same transaction is rolled back.
        let failed = w
            .transaction(fg, "test", move |c| {
                insert(2)(c)?;
                insert(1)(c)
            })
            .await;
        assert!(matches!(failed, Err(StoreError::Conflict)), "{failed:?}");
        assert_eq!(count(&path), 1);
        w.transaction(fg, "test", insert(3)).await.unwrap();
        assert_eq!(count(&path), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Under a held lock, queues a background transaction inserting 1 (overdue at once: it goes
    /// first), then the foreground `f` behind it, lets the lock go, and returns the path of the
    /// database and what each returned.
    async fn behind_a_background_insert<R: Send + 'static>(
        name: &str,
        f: impl FnOnce(&mut Connection) -> StoreResult<R> + Send + 'static,
    ) -> (std::path::PathBuf, StoreResult<()>, StoreResult<R>) {
        let lock = Arc::new(PriorityLock::new(()));
        let (dir, w) = writer_deferring(name, &lock, Duration::ZERO);
        let w = Arc::new(w);
        let held = lock.lock(Class::Foreground).await.unwrap();
        let bg = {
            let w = Arc::clone(&w);
            tokio::spawn(async move { w.transaction(Class::Background, "test", insert(1)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let fg = {
            let w = Arc::clone(&w);
            tokio::spawn(async move { w.transaction(Class::Foreground, "test", f).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        (dir, bg.await.unwrap(), fg.await.unwrap())
    }

    /// A background transaction that goes first and the foreground one queued behind it share
    /// one commit: while the foreground one runs, the background one's row is visible to it but
    /// not yet to any other connection, and both are kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_background_transaction_and_the_foreground_ones_behind_it_share_a_commit() {
        let (dir, bg, fg) = behind_a_background_insert("shared", move |c| {
            let own: i64 = c
                .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                .map_err(backend)?;
            insert(2)(c)?;
            // Counted on a connection of its own.
            let others = count(Path::new(c.path().unwrap_or_default()));
            Ok((own, others))
        })
        .await;
        bg.unwrap();
        let (own, others) = fg.unwrap();
        assert_eq!(own, 1, "the background row is not in the same transaction");
        assert_eq!(others, 0, "the background transaction committed on its own");
        assert_eq!(count(&dir.join("t.db")), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// In a shared commit, a transaction that fails is rolled back alone: its caller gets its
    /// error, and the others' rows are committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_transaction_in_a_shared_commit_is_rolled_back_alone() {
        // Its second insert clashes with the background transaction's row.
        let (dir, bg, failed) = behind_a_background_insert("alone", move |c| {
            insert(3)(c)?;
            insert(1)(c)
        })
        .await;
        bg.unwrap();
        assert!(matches!(failed, Err(StoreError::Conflict)), "{failed:?}");
        let kept: Vec<i64> = Connection::open(dir.join("t.db"))
            .unwrap()
            .prepare("SELECT x FROM t ORDER BY x")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(kept, vec![1]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// While the lock is held elsewhere, queued transactions wait; once it is free the
    /// foreground ones go first, whatever order they were queued in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_foreground_transactions_go_before_background_ones() {
        let lock = Arc::new(PriorityLock::new(()));
        let (dir, w) = writer("order", &lock);
        let w = Arc::new(w);
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = lock.lock(Class::Foreground).await.unwrap();
        let mut tasks = Vec::new();
        for (i, class) in [
            Class::Background,
            Class::Background,
            Class::Foreground,
            Class::Foreground,
        ]
        .into_iter()
        .enumerate()
        {
            let (w, order) = (Arc::clone(&w), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                w.transaction(class, "test", move |c| {
                    order.lock().unwrap().push(i);
                    insert(i64::try_from(i).unwrap())(c)
                })
                .await
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(order.lock().unwrap().is_empty(), "ran under a held lock");
        drop(held);
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![2, 3, 0, 1]);
        assert_eq!(count(&dir.join("t.db")), 4);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The thread keeps the lock between its own transactions only while nobody else waits:
    /// a writer on the other connection gets it after the transaction in progress.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_waiting_on_the_lock_goes_between_queued_transactions() {
        let lock = Arc::new(PriorityLock::new(()));
        let (dir, w) = writer("between", &lock);
        let w = Arc::new(w);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (w, order) = (Arc::clone(&w), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                w.transaction(Class::Foreground, "test", move |c| {
                    std::thread::sleep(Duration::from_millis(30));
                    order.lock().unwrap().push(format!("job {i}"));
                    insert(i)(c)
                })
                .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let held = lock.lock(Class::Background).await.unwrap();
        order.lock().unwrap().push("other".to_owned());
        drop(held);
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let order = order.lock().unwrap().clone();
        let at = order.iter().position(|o| o == "other").unwrap();
        assert!(
            at <= 2,
            "the other writer waited for {at} transactions: {order:?}"
        );
        assert_eq!(count(&dir.join("t.db")), 6);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A transaction that cannot start within the longest wait fails, and never runs later.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_that_cannot_start_in_time_fails_and_never_runs() {
        let lock = Arc::new(PriorityLock::new(()));
        let (dir, w) = writer("timeout", &lock);
        let held = lock.lock(Class::Foreground).await.unwrap();
        let r = w.transaction(Class::Foreground, "test", insert(1)).await;
        assert!(
            matches!(&r, Err(StoreError::Backend(m)) if m.contains("timed out")),
            "{r:?}"
        );
        drop(held);
        w.transaction(Class::Foreground, "test", insert(2))
            .await
            .unwrap();
        assert_eq!(count(&dir.join("t.db")), 1, "the abandoned insert ran");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A closed store refuses queued and later transactions instead of leaving them waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_lock_refuses_transactions() {
        let lock = Arc::new(PriorityLock::new(()));
        let (dir, w) = writer("closed", &lock);
        w.transaction(Class::Foreground, "test", insert(1))
            .await
            .unwrap();
        assert!(lock.close().await.is_some());
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            w.transaction(Class::Background, "test", insert(2)),
        )
        .await
        .unwrap();
        assert!(matches!(r, Err(StoreError::Backend(_))), "{r:?}");
        assert_eq!(count(&dir.join("t.db")), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
