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
            options,
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
