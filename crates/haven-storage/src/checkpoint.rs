//! The SQLite WAL checkpointer: copies the log back into the database file in the background,
//! and makes the log start over when a steady load never leaves SQLite a moment to do it.

use crate::writer;
use sqlx::sqlite::SqliteConnection;
use std::time::Duration;

/// When and how the checkpointer works. [`Policy::default`] is what the server runs; tests
/// shrink it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// How often the WAL is copied back, on a connection of its own. Often, so that each copy,
    /// and the sync of the database file that ends it, stays small: a copy of 500 ms of writes
    /// under the SMS benchmark ended in a 20–50 ms sync that slowed the writer's own syncs
    /// meanwhile. When nothing was written, a pass copies and syncs nothing.
    pub every: Duration,
    /// WAL frames (pages) past which the checkpointer makes the log start over.
    pub restart_frames: i64,
    /// Before a forced restart takes the writer's lock, the checkpointer catches up without it:
    /// `PASSIVE` again, at most `catch_up_passes` times, until fewer than this many frames came
    /// in since the pass before. The restart then copies and syncs only those while writers wait.
    pub catch_up_frames: i64,
    pub catch_up_passes: usize,
    /// The longest a forced restart waits, holding every writer back, for the last readers to
    /// leave the log before it gives up until the next pass.
    pub restart_wait: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            every: Duration::from_millis(100),
            // 256 MiB of 4 KiB pages: the most the WAL file grows to.
            restart_frames: 65_536,
            catch_up_frames: 128,
            catch_up_passes: 4,
            restart_wait: Duration::from_millis(50),
        }
    }
}

/// One `PASSIVE` checkpoint: the WAL's length in frames and how many of them are copied back.
async fn passive(conn: &mut SqliteConnection) -> sqlx::Result<(i64, i64)> {
    let started = std::time::Instant::now();
    let (_, log, done) = sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(conn)
        .await?;
    metrics::histogram!("haven_sqlite_checkpoint_seconds").record(started.elapsed().as_secs_f64());
    Ok((log, done))
}

/// A `RESTART` checkpoint on the write connection, waiting at most `wait` for readers to leave
/// the log (a reader that began before the log was copied back must end first). Past that it
/// gives up, so that writers are never held back for longer; the next pass tries again.
/// Whether the log will start over.
async fn restart(conn: &mut SqliteConnection, wait: Duration) -> bool {
    let set = |ms: u128| format!("PRAGMA busy_timeout = {ms}");
    if sqlx::query(sqlx::AssertSqlSafe(set(wait.as_millis())))
        .execute(&mut *conn)
        .await
        .is_err()
    {
        return false;
    }
    let done = sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(RESTART)")
        .fetch_one(&mut *conn)
        .await;
    if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(set(crate::BUSY_TIMEOUT.as_millis())))
        .execute(&mut *conn)
        .await
    {
        tracing::warn!(error = %e, "restoring the writer's busy timeout failed");
    }
    // The first column is 1 when the checkpoint could not finish (a reader stayed).
    matches!(done, Ok((0, _, _)))
}

/// Checkpoints the WAL in the background (`PASSIVE`: it copies what no reader still needs and
/// never blocks the writer or a reader), so that no commit pays for it. The loop ends with the
/// store (the last handle on its writer dropped); SQLite checkpoints once more when the last
/// connection closes.
///
/// SQLite starts the log over by itself when a writer begins after a complete checkpoint with
/// no reader in the log; a steady load of readers may never leave such a moment. Past
/// `restart_frames` the loop makes one: it first catches up without the lock (see
/// [`Policy::catch_up_frames`]), then runs a `RESTART` checkpoint on the write connection
/// itself as a background writer, so writers queue on the writer's lock and start the moment it
/// ends (on another connection they met SQLite's write lock and slept in its busy handler, 1,
/// 2, 5, 10 … 100 ms). Without the catch-up the restart copied everything written since the last
/// pass and took 25–70 ms under the SMS benchmark, every request in flight waiting behind it;
/// with it, 2–8 ms. `RESTART`, not `TRUNCATE`: the file keeps its size and is written over from
/// the start; cutting 256 MiB off it took 135 ms here.
pub(crate) async fn run(
    mut conn: SqliteConnection,
    store: std::sync::Weak<writer::PriorityLock<SqliteConnection>>,
    policy: Policy,
) {
    let mut tick = tokio::time::interval(policy.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if store.upgrade().is_none_or(|w| w.is_closed()) {
            let _ = sqlx::Connection::close(conn).await;
            return;
        }
        match passive(&mut conn).await {
            Ok((mut log, mut done)) => {
                // The WAL starts over only at a moment when no reader is in it, which a steady
                // load may not leave: past a bound, make one (writers wait meanwhile), after
                // catching up so that little is left to copy while they do.
                if log >= policy.restart_frames {
                    for _ in 0..policy.catch_up_passes {
                        let Ok((l, d)) = passive(&mut conn).await else {
                            break;
                        };
                        let fresh = l - log;
                        (log, done) = (l, d);
                        if fresh < policy.catch_up_frames && log - done < policy.catch_up_frames {
                            break;
                        }
                    }
                }
                if log >= policy.restart_frames
                    && log - done < policy.catch_up_frames
                    && let Some(writer) = store.upgrade()
                    && let Ok(mut held) = writer.lock(writer::Class::Background).await
                {
                    let started = std::time::Instant::now();
                    let restarted = restart(&mut held, policy.restart_wait).await;
                    drop(held);
                    metrics::histogram!("haven_sqlite_wal_restart_seconds")
                        .record(started.elapsed().as_secs_f64());
                    let result = if restarted { "restarted" } else { "busy" };
                    metrics::counter!("haven_sqlite_wal_restarts_total", "result" => result)
                        .increment(1);
                }
                metrics::gauge!("haven_sqlite_wal_frames").set(log.max(0) as f64);
                metrics::gauge!("haven_sqlite_wal_frames_pending").set((log - done).max(0) as f64);
            }
            Err(e) => {
                if sqlx::Connection::ping(&mut conn).await.is_err() {
                    return;
                }
                tracing::warn!(error = %e, "SQLite checkpoint failed; retrying");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sqlx::ConnectOptions;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Readers that always hold a snapshot in the log (two of them, overlapping) keep SQLite
    /// from ever starting the log over by itself while a writer appends; only the forced
    /// restart bounds the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_starts_over_under_a_steady_load_of_readers() {
        let dir = std::env::temp_dir().join(format!("haven-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        for f in ["t.db", "t.db-wal", "t.db-shm"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let base = SqliteConnectOptions::new()
            .filename(&path)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let mut w = base
            .clone()
            .create_if_missing(true)
            .pragma("wal_autocheckpoint", "0")
            .connect()
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER PRIMARY KEY, pad BLOB NOT NULL)")
            .execute(&mut w)
            .await
            .unwrap();
        let writer = Arc::new(writer::PriorityLock::new(w));
        let policy = Policy {
            every: Duration::from_millis(10),
            restart_frames: 200,
            catch_up_frames: 16,
            catch_up_passes: 4,
            restart_wait: Duration::from_millis(50),
        };
        let checkpointer = base.connect().await.unwrap();
        tokio::spawn(run(checkpointer, Arc::downgrade(&writer), policy));

        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2u64)
            .map(|n| {
                let (stop, path) = (stop.clone(), path.clone());
                std::thread::spawn(move || {
                    let c = rusqlite::Connection::open(&path).unwrap();
                    c.busy_timeout(Duration::from_secs(10)).unwrap();
                    std::thread::sleep(Duration::from_micros(500 * n));
                    while !stop.load(Ordering::Relaxed) {
                        c.execute_batch("BEGIN").unwrap();
                        let _: i64 = c
                            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                            .unwrap();
                        std::thread::sleep(Duration::from_millis(1));
                        c.execute_batch("COMMIT").unwrap();
                    }
                })
            })
            .collect();

        // 1,500 commits of at least one 4 KiB page each: about 1,500 frames, seven times the
        // bound.
        let pad = vec![7u8; 4000];
        let mut wal_max = 0;
        for x in 0..1500i64 {
            let mut held = writer.lock(writer::Class::Foreground).await.unwrap();
            sqlx::query("INSERT INTO t (x, pad) VALUES (?1, ?2)")
                .bind(x)
                .bind(&pad)
                .execute(&mut *held)
                .await
                .unwrap();
            drop(held);
            wal_max = wal_max.max(std::fs::metadata(dir.join("t.db-wal")).map_or(0, |m| m.len()));
            if x % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        let frames = wal_max / 4120;
        assert!(
            frames < 1000,
            "the log grew to {frames} frames: it never started over"
        );
        let rows: (i64,) = sqlx::query_as("SELECT count(*) FROM t")
            .fetch_one(&mut *writer.lock(writer::Class::Foreground).await.unwrap())
            .await
            .unwrap();
        assert_eq!(rows.0, 1500);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
