//! The interim audit log: events appended to `audit_events` with group commit. The trust core
//! replaces the table with a tamper-evident log behind the same `AuditSink` interface.

use crate::{PgStore, SqliteStore, backend, sql};
use haven_platform::audit::{AuditEvent, AuditSink};
use haven_platform::store::StoreResult;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Largest batch written in one transaction.
const MAX_BATCH: usize = 1000;
/// How long queued (not waited-for) events may wait for companions before they are written.
const LINGER: Duration = Duration::from_millis(5);
/// Events waiting for the writer before `record`/`enqueue` wait for room (back-pressure).
const QUEUE: usize = 16_384;

#[async_trait::async_trait]
pub trait AuditWriter: Send + Sync {
    /// Appends the events in one transaction.
    async fn append(&self, events: &[AuditEvent]) -> StoreResult<()>;
}

// Nearly every item is an event; boxing it would add an allocation per event on the hot path.
#[allow(clippy::large_enum_variant)]
enum Item {
    Event(AuditEvent, Option<oneshot::Sender<()>>),
    Flush(oneshot::Sender<()>),
}

/// Batches events from every request into one transaction per batch, so that appending costs a
/// commit per batch rather than per event.
#[derive(Clone)]
pub struct BufferedAudit {
    tx: mpsc::Sender<Item>,
}

impl BufferedAudit {
    pub fn start(writer: Arc<dyn AuditWriter>) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Item>(QUEUE);
        let task = tokio::spawn(async move {
            let mut events = Vec::with_capacity(MAX_BATCH);
            let mut waiters = Vec::new();
            while let Some(first) = rx.recv().await {
                accept(first, &mut events, &mut waiters);
                // Queued events linger briefly so that one commit carries many (far fewer
                // wake-ups of the database thread under load); a caller waiting for durability
                // ends the linger at once.
                let deadline = tokio::time::Instant::now() + LINGER;
                while events.len() < MAX_BATCH && waiters.is_empty() {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(item)) => accept(item, &mut events, &mut waiters),
                        Ok(None) | Err(_) => break,
                    }
                }
                while events.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(item) => accept(item, &mut events, &mut waiters),
                        Err(_) => break,
                    }
                }
                if !events.is_empty() {
                    write_until_done(writer.as_ref(), &events).await;
                    events.clear();
                }
                for w in waiters.drain(..) {
                    let _ = w.send(());
                }
            }
        });
        (Self { tx }, task)
    }

    /// Returns once everything queued before it is stored.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Item::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn accept(item: Item, events: &mut Vec<AuditEvent>, waiters: &mut Vec<oneshot::Sender<()>>) {
    match item {
        Item::Event(e, w) => {
            events.push(e);
            waiters.extend(w);
        }
        Item::Flush(w) => waiters.push(w),
    }
}

/// Audit events are never dropped: a failing database is retried with backoff, and the queue
/// filling up meanwhile slows requests down (back-pressure) instead.
async fn write_until_done(writer: &dyn AuditWriter, events: &[AuditEvent]) {
    let mut delay = Duration::from_millis(50);
    loop {
        match writer.append(events).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %e, events = events.len(), "appending audit events failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[async_trait::async_trait]
impl AuditSink for BufferedAudit {
    async fn record(&self, event: AuditEvent) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Item::Event(event, Some(tx))).await.is_ok() {
            let _ = rx.await;
        } else {
            tracing::error!("audit writer has stopped; event not recorded");
        }
    }

    async fn enqueue(&self, event: AuditEvent) {
        if self.tx.send(Item::Event(event, None)).await.is_err() {
            tracing::error!("audit writer has stopped; event not recorded");
        }
    }
}

macro_rules! impl_writer {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl AuditWriter for $store {
            async fn append(&self, events: &[AuditEvent]) -> StoreResult<()> {
                let mut tx = self.w().begin().await.map_err(backend)?;
                for chunk in events.chunks(500) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(sql::AUDIT_INSERT_PREFIX);
                    qb.push_values(chunk, |mut b, e| {
                        b.push_bind(e.at_ms)
                            .push_bind(e.action.as_str())
                            .push_bind(e.outcome.as_str())
                            .push_bind(e.actor.account_id.clone())
                            .push_bind(e.actor.credential_id.clone())
                            .push_bind(e.actor.auth_method)
                            .push_bind(e.actor.source_addr.map(|a| a.to_string()))
                            .push_bind(e.actor.user_agent.clone())
                            .push_bind(e.resource_type)
                            .push_bind(e.resource_id.clone())
                            .push_bind(e.reason)
                            .push_bind(e.actor.request_id.clone());
                    });
                    qb.build().execute(&mut *tx).await.map_err(backend)?;
                }
                tx.commit().await.map_err(backend)?;
                Ok(())
            }
        }
    };
}

impl_writer!(SqliteStore, sqlx::Sqlite);
impl_writer!(PgStore, sqlx::Postgres);
