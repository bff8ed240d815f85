//! PostgreSQL point reads without the pool's round trips.
//!
//! Every send reads three rows (the recipient's consent, its contact by blind index, the
//! contact's key). Through sqlx's pool each of those costs two more round trips than the query:
//! a ping when the connection is checked out (`test_before_acquire`) and another, in a spawned
//! task, when it is given back. On loopback a round trip is cheap in time but not in CPU: each
//! wakes a PostgreSQL backend and a Haven worker, on the same two cores as everything else.
//!
//! These readers are plain connections kept in a list, handed out one caller at a time:
//! - a connection goes back to the list only after its query succeeded or failed in the
//!   database (a clean protocol state); a caller cancelled mid-query drops it instead;
//! - a lost connection (an I/O, TLS or protocol error, or PostgreSQL's "terminating
//!   connection" / connection-exception codes) is dropped with every idle one (a restarted
//!   server broke them all), and the read is tried once more on a fresh connection, so a
//!   database restart costs a reconnect, not a failed request;
//! - at most `size` connections exist, opened on demand.

use haven_platform::store::{StoreError, StoreResult};
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use std::sync::Mutex;
use tokio::sync::{Semaphore, SemaphorePermit};

pub(crate) struct PointReaders {
    options: PgConnectOptions,
    permits: Semaphore,
    idle: Mutex<Vec<PgConnection>>,
}

/// A connection lent to one caller. Dropped without [`PointConn::release`], the connection is
/// closed rather than returned: its protocol state is unknown.
pub(crate) struct PointConn<'a> {
    conn: Option<PgConnection>,
    readers: &'a PointReaders,
    _permit: SemaphorePermit<'a>,
}

impl PointConn<'_> {
    pub(crate) fn conn(&mut self) -> StoreResult<&mut PgConnection> {
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::Backend("point reader already released".into()))
    }

    pub(crate) fn release(mut self) {
        if let Some(c) = self.conn.take()
            && let Ok(mut idle) = self.readers.idle.lock()
        {
            idle.push(c);
        }
    }
}

/// Whether `e` means the connection is gone (rather than that the statement failed).
pub(crate) fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        // 08: connection exception; 57P01..57P03: admin shutdown, crash shutdown, cannot connect now.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P0")),
        _ => false,
    }
}

impl PointReaders {
    pub(crate) fn new(options: PgConnectOptions, size: usize) -> Self {
        Self {
            // Every statement here is a keyed lookup whose best plan does not depend on the key.
            // Left to choose, PostgreSQL re-plans a gathered read at every call: a custom plan
            // sees the array's real length (a few keys) and so looks cheaper than the generic
            // plan's guess (ten), although both are the same index probes. Planning was 90 % of
            // such a statement's time (pg_stat_statements, track_planning).
            options: options.options([("plan_cache_mode", "force_generic_plan")]),
            permits: Semaphore::new(size.max(1)),
            idle: Mutex::new(Vec::new()),
        }
    }

    pub(crate) async fn get(&self) -> StoreResult<PointConn<'_>> {
        let permit =
            tokio::time::timeout(std::time::Duration::from_secs(10), self.permits.acquire())
                .await
                .map_err(|_| {
                    StoreError::Backend("timed out waiting for a PostgreSQL reader".into())
                })?
                .map_err(|_| StoreError::Backend("the store is closed".into()))?;
        let idle = self.idle.lock().ok().and_then(|mut i| i.pop());
        let conn = match idle {
            Some(c) => c,
            None => self.options.connect().await.map_err(crate::backend)?,
        };
        Ok(PointConn {
            conn: Some(conn),
            readers: self,
            _permit: permit,
        })
    }

    fn forget_idle(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    /// After a lost connection: drops every idle one (a restarted server broke them all) and
    /// says whether the read may be tried once more.
    pub(crate) fn lost(&self, retried: bool) -> bool {
        self.forget_idle();
        if !retried {
            metrics::counter!("haven_pg_reader_reconnects_total").increment(1);
        }
        !retried
    }
}

/// Runs a read on a point reader: `point_read!(self.point, |c| future)`, where the future
/// borrows `c: &mut PgConnection` and gives `Result<T, sqlx::Error>`. Tried once more on a
/// fresh connection when the first was lost. (A macro, not a method taking an async closure:
/// such a method's future cannot be shown to be `Send` for every borrow.)
macro_rules! point_read {
    ($readers:expr, |$c:ident| $read:expr) => {{
        let readers: &$crate::pgpoint::PointReaders = &$readers;
        let mut retried = false;
        loop {
            let mut guard = readers.get().await?;
            let $c = guard.conn()?;
            match $read.await {
                Ok(v) => {
                    guard.release();
                    break Ok::<_, haven_platform::store::StoreError>(v);
                }
                Err(e) if $crate::pgpoint::connection_lost(&e) => {
                    drop(guard);
                    if !readers.lost(retried) {
                        break Err($crate::backend(e));
                    }
                    retried = true;
                }
                Err(e) => {
                    guard.release();
                    break Err($crate::backend(e));
                }
            }
        }
    }};
}
pub(crate) use point_read;

/// One caller's key and where its answer goes.
type Waiter<K, V> = (K, tokio::sync::oneshot::Sender<StoreResult<V>>);

/// Reads every waiting key in one statement; answers in the keys' order, one per key.
pub(crate) type GatherFn<K, V> = Box<
    dyn Fn(Vec<K>) -> std::pin::Pin<Box<dyn Future<Output = StoreResult<Vec<V>>> + Send>>
        + Send
        + Sync,
>;

/// Keys one gathered statement takes at most.
pub(crate) const GATHER_MAX: usize = 256;

/// Point reads of one kind from concurrent callers, gathered into one statement: the read
/// counterpart of a group commit. A statement's fixed cost in PostgreSQL (its transaction,
/// snapshot, portal and round trip) is many times what finding one row by an index costs, and
/// every send makes the same few point reads, so under load most of what they cost is that
/// fixed part. Here a caller queues its key; when no statement of this kind is running, a task
/// starts one for every key queued so far, answers each caller, and goes on while keys are
/// waiting. An idle server reads at once; a busy one reads many keys per statement.
///
/// A caller's read starts after it queued its key, so it sees every write committed before it
/// asked, as a read of its own would.
pub(crate) struct Gather<K, V> {
    kind: &'static str,
    read: GatherFn<K, V>,
    queue: Mutex<Vec<Waiter<K, V>>>,
    running: std::sync::atomic::AtomicBool,
}

impl<K: Send + 'static, V: Send + 'static> Gather<K, V> {
    /// `kind` labels the metrics.
    pub(crate) fn new(kind: &'static str, read: GatherFn<K, V>) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            kind,
            read,
            queue: Mutex::new(Vec::new()),
            running: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Reads `key` in the next gathered statement.
    pub(crate) async fn get(self: &std::sync::Arc<Self>, key: K) -> StoreResult<V> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue
            .lock()
            .map_err(|_| StoreError::Backend("gathered reads poisoned".into()))?
            .push((key, tx));
        self.start();
        rx.await
            .map_err(|_| StoreError::Backend("a gathered read was abandoned".into()))?
    }

    /// Starts a task to drain the queue unless one is running.
    fn start(self: &std::sync::Arc<Self>) -> bool {
        use std::sync::atomic::Ordering;
        if self
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let me = std::sync::Arc::clone(self);
        tokio::spawn(async move {
            let guard = Running(&me);
            me.drain().await;
            drop(guard);
        });
        true
    }

    fn take(&self) -> Vec<Waiter<K, V>> {
        match self.queue.lock() {
            Ok(mut q) => {
                let n = q.len().min(GATHER_MAX);
                q.drain(..n).collect()
            }
            Err(_) => Vec::new(),
        }
    }

    fn queued(&self) -> bool {
        self.queue.lock().map(|q| !q.is_empty()).unwrap_or(false)
    }

    async fn drain(self: &std::sync::Arc<Self>) {
        use std::sync::atomic::Ordering;
        loop {
            // Let the tasks that are ready to run go first: under load they are requests on
            // their way to the same read, and each one queued now joins this statement instead
            // of paying for one of its own. One pass of the scheduler, no timer: an idle
            // server reads at once. In the SMS benchmark on PostgreSQL this took a statement
            // from about 4 keys to about 14, and the round trips to the database down by half.
            tokio::task::yield_now().await;
            let batch = self.take();
            if batch.is_empty() {
                self.running.store(false, Ordering::Release);
                // A caller that queued between the take and the store saw this task running
                // and left its key to it: go on if nobody else has started meanwhile.
                if self.queued()
                    && self
                        .running
                        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    continue;
                }
                return;
            }
            metrics::histogram!("haven_pg_gathered_read_keys", "kind" => self.kind)
                .record(batch.len() as f64);
            let (keys, waiters): (Vec<K>, Vec<_>) = batch.into_iter().unzip();
            let n = keys.len();
            match (self.read)(keys).await {
                Ok(values) if values.len() == n => {
                    for (tx, v) in waiters.into_iter().zip(values) {
                        let _ = tx.send(Ok(v));
                    }
                }
                Ok(values) => {
                    let e = format!("a gathered read gave {} answers for {n} keys", values.len());
                    for tx in waiters {
                        let _ = tx.send(Err(StoreError::Backend(e.clone())));
                    }
                }
                Err(e) => {
                    let e = e.to_string();
                    for tx in waiters {
                        let _ = tx.send(Err(StoreError::Backend(e.clone())));
                    }
                }
            }
        }
    }
}

/// Marks the drain as stopped however its task ends (a panic in a read included), so that the
/// next caller starts another instead of waiting for nobody.
struct Running<'a, K: Send + 'static, V: Send + 'static>(&'a std::sync::Arc<Gather<K, V>>);

impl<K: Send + 'static, V: Send + 'static> Drop for Running<'_, K, V> {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        if std::thread::panicking() {
            // The panicking read's callers were answered by their dropped senders; callers
            // queued since then get a new drain.
            self.0.running.store(false, Ordering::Release);
            if self.0.queued() {
                self.0.start();
            }
        }
    }
}

/// Unique keys of a batch, and for each caller the index of its key among them: callers
/// asking the same thing at once (one recipient of many sends) share one row of the statement.
pub(crate) fn unique_keys<K: Clone + Eq + std::hash::Hash>(keys: &[K]) -> (Vec<K>, Vec<usize>) {
    let mut seen: std::collections::HashMap<&K, usize> = std::collections::HashMap::new();
    let mut unique = Vec::new();
    let mut slot = Vec::with_capacity(keys.len());
    for k in keys {
        let i = *seen.entry(k).or_insert_with(|| {
            unique.push(k.clone());
            unique.len() - 1
        });
        slot.push(i);
    }
    (unique, slot)
}

/// The answer slot of a gathered statement's row: `i` is the place (from 1) that `WITH
/// ORDINALITY` gave its key among the statement's keys.
pub(crate) fn place<'a, T>(found: &'a mut [T], i: i64, kind: &str) -> StoreResult<&'a mut T> {
    usize::try_from(i - 1)
        .ok()
        .and_then(|i| found.get_mut(i))
        .ok_or_else(|| StoreError::Backend(format!("gathered {kind}: a row for no key")))
}

/// Every caller's answer: the answer found for its key (see [`unique_keys`]).
pub(crate) fn answers<T: Clone>(found: &[T], slot: Vec<usize>) -> StoreResult<Vec<T>> {
    slot.into_iter()
        .map(|i| {
            found
                .get(i)
                .cloned()
                .ok_or_else(|| StoreError::Backend("a gathered read lost a key".into()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A gather whose statement doubles each key after a short wait, noting each batch's size;
    /// key 13 fails its batch, key 99 panics in it.
    fn doubling(batches: Arc<Mutex<Vec<usize>>>) -> Arc<Gather<u64, u64>> {
        Gather::new(
            "test",
            Box::new(move |keys: Vec<u64>| {
                let batches = Arc::clone(&batches);
                Box::pin(async move {
                    batches.lock().unwrap().push(keys.len());
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    if keys.contains(&99) {
                        panic!("a read that panics");
                    }
                    if keys.contains(&13) {
                        return Err(StoreError::Backend("no thirteen".into()));
                    }
                    Ok(keys.iter().map(|k| k * 2).collect())
                })
            }),
        )
    }

    /// Callers that become ready just after the first one started the statement's task still
    /// share its statement: the task lets them queue their keys before it takes the batch.
    #[tokio::test(flavor = "current_thread")]
    async fn callers_woken_with_the_first_share_its_statement() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let g = doubling(Arc::clone(&batches));
        let go = Arc::new(tokio::sync::Notify::new());
        let mut tasks = tokio::task::JoinSet::new();
        // (Keys 13 and 99 fail in `doubling`.)
        for k in 21..=40u64 {
            let (g, go) = (Arc::clone(&g), Arc::clone(&go));
            tasks.spawn(async move {
                go.notified().await;
                g.get(k).await.unwrap()
            });
        }
        // Every waiter is registered with the notification before the first caller runs.
        tokio::task::yield_now().await;
        let first = {
            let (g, go) = (Arc::clone(&g), Arc::clone(&go));
            tokio::spawn(async move {
                let read = g.get(0);
                tokio::pin!(read);
                // The first poll queues key 0 and spawns the statement's task; the others are
                // woken after it, so they run after that task in the scheduler's queue.
                let pending = std::future::poll_fn(|cx| {
                    std::task::Poll::Ready(read.as_mut().poll(cx).is_pending())
                })
                .await;
                assert!(pending);
                go.notify_waiters();
                read.await.unwrap()
            })
        };
        assert_eq!(first.await.unwrap(), 0);
        let mut answers: Vec<u64> = tasks.join_all().await;
        answers.sort_unstable();
        assert_eq!(answers, (21..=40).map(|k| k * 2).collect::<Vec<_>>());
        assert_eq!(*batches.lock().unwrap(), vec![21]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_caller_gets_its_own_answer_and_waiting_keys_share_a_statement() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let g = doubling(Arc::clone(&batches));
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..2000u64 {
            let g = Arc::clone(&g);
            tasks.spawn(async move { (k, g.get(1000 + k % 500).await.unwrap()) });
        }
        while let Some(done) = tasks.join_next().await {
            let (k, v) = done.unwrap();
            assert_eq!(v, (1000 + k % 500) * 2);
        }
        let batches = batches.lock().unwrap().clone();
        assert_eq!(batches.iter().sum::<usize>(), 2000, "each key read once");
        assert!(batches.iter().all(|&n| n <= GATHER_MAX));
        assert!(
            batches.len() < 200,
            "keys were gathered: {} statements",
            batches.len()
        );
        // Idle again: a lone key is read at once, in a statement of its own.
        assert_eq!(g.get(7).await.unwrap(), 14);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_or_panicking_statement_fails_its_callers_and_the_next_ones_are_read() {
        let g = doubling(Arc::new(Mutex::new(Vec::new())));
        let failed = Arc::new(AtomicUsize::new(0));
        for bad in [13u64, 99] {
            let mut tasks = tokio::task::JoinSet::new();
            for k in [bad, 1, 2, 3] {
                let (g, failed) = (Arc::clone(&g), Arc::clone(&failed));
                tasks.spawn(async move {
                    match g.get(k).await {
                        Ok(v) => assert_eq!(v, k * 2),
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.unwrap();
            }
            // Whatever shared the bad key's statement failed with it; the rest were read.
            assert!(failed.load(Ordering::Relaxed) >= 1);
            // And the gather still works.
            assert_eq!(g.get(21).await.unwrap(), 42);
            failed.store(0, Ordering::Relaxed);
        }
    }

    /// The point readers plan each statement once (see `PointReaders::new`). Runs on
    /// PostgreSQL when `HAVEN_TEST_DATABASE_URL` is set (the README's test command sets it).
    #[tokio::test]
    async fn point_readers_keep_generic_plans() {
        let Ok(url) = std::env::var("HAVEN_TEST_DATABASE_URL") else {
            return;
        };
        let readers = PointReaders::new(url.parse().unwrap(), 2);
        let mut guard = readers.get().await.unwrap();
        let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
            .fetch_one(guard.conn().unwrap())
            .await
            .unwrap();
        guard.release();
        assert_eq!(mode, "force_generic_plan");
    }
}
