//! The audit log's storage, and the group-commit writer that feeds it from every request.

use crate::{PgStore, SqliteStore, backend, sql};
use haven_audit::merkle::{Hash, NodeKey};
use haven_audit::{AuditStore, EventQuery, StoredEvent, TreeHead};
use haven_platform::audit::{AuditEvent, AuditSink};
use haven_platform::page::PageRequest;
use haven_platform::store::{StoreError, StoreResult};
use sqlx::Row;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Largest batch written in one transaction.
const MAX_BATCH: usize = 4096;
/// How long queued (not waited-for) events may wait for companions before they are written.
const LINGER: Duration = Duration::from_millis(5);
/// Batches of queued events start at least this far apart: under load each append carries
/// more events and the one write connection is free more often for the changes callers wait
/// on. A caller waiting for durability ends the wait at once.
const PACE: Duration = Duration::from_millis(50);
/// Events waiting for the writer before `record`/`enqueue` wait for room (back-pressure).
const QUEUE: usize = 32_768;

// Nearly every item is an event; boxing it would add an allocation per event on the hot path.
#[allow(clippy::large_enum_variant)]
enum Item {
    Event(AuditEvent, Option<oneshot::Sender<()>>),
    Flush(oneshot::Sender<()>),
}

/// Batches events from every request into one append (one transaction) per batch.
#[derive(Clone)]
pub struct BufferedAudit {
    tx: mpsc::Sender<Item>,
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

impl BufferedAudit {
    pub fn start(store: Arc<dyn AuditStore>) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Item>(QUEUE);
        let task = tokio::spawn(async move {
            let mut events = Vec::with_capacity(MAX_BATCH);
            let mut waiters = Vec::new();
            let mut last_write = tokio::time::Instant::now() - PACE;
            while let Some(first) = rx.recv().await {
                accept(first, &mut events, &mut waiters);
                // Queued events linger so that one commit carries many (at least LINGER, and
                // until PACE after the last write began); a caller waiting for durability ends
                // the linger at once.
                let deadline = (tokio::time::Instant::now() + LINGER).max(last_write + PACE);
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
                    last_write = tokio::time::Instant::now();
                    // In slices the store can take in one short transaction each; each slice
                    // is retried until it is stored before the next one goes.
                    for slice in events.chunks(store.max_append().max(1)) {
                        write_until_done(store.as_ref(), slice, !waiters.is_empty()).await;
                    }
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

/// Audit events are never dropped: a failing database is retried with backoff, and the queue
/// filling up meanwhile slows requests down (back-pressure) instead.
async fn write_until_done(store: &dyn AuditStore, events: &[AuditEvent], waited_for: bool) {
    let mut delay = Duration::from_millis(50);
    loop {
        let started = std::time::Instant::now();
        match store.append(events, waited_for).await {
            Ok(_) => {
                metrics::histogram!("haven_audit_append_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("haven_audit_batch_events").record(events.len() as f64);
                metrics::counter!("haven_audit_events_total").increment(events.len() as u64);
                return;
            }
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
        haven_platform::audit::note_recorded(&event);
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Item::Event(event, Some(tx))).await.is_ok() {
            let _ = rx.await;
        } else {
            tracing::error!("audit writer has stopped; event not recorded");
        }
    }

    async fn enqueue(&self, event: AuditEvent) {
        haven_platform::audit::note_recorded(&event);
        if self.tx.send(Item::Event(event, None)).await.is_err() {
            tracing::error!("audit writer has stopped; event not recorded");
        }
    }
}

fn to_hash(v: Vec<u8>) -> StoreResult<Hash> {
    v.try_into()
        .map_err(|_| StoreError::Backend("stored audit hash is not 32 bytes".into()))
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn event_row<R: Row>(r: &R) -> StoreResult<StoredEvent>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Vec<u8>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(StoredEvent {
        leaf_index: u(r.try_get("leaf_index").map_err(backend)?),
        id: r.try_get("event_id").map_err(backend)?,
        at_ms: r.try_get("at_ms").map_err(backend)?,
        action: r.try_get("action").map_err(backend)?,
        outcome: r.try_get("outcome").map_err(backend)?,
        account_id: r.try_get("account_id").map_err(backend)?,
        credential_id: r.try_get("credential_id").map_err(backend)?,
        auth_method: r.try_get("auth_method").map_err(backend)?,
        source_addr: r.try_get("source_addr").map_err(backend)?,
        user_agent: r.try_get("user_agent").map_err(backend)?,
        resource_type: r.try_get("resource_type").map_err(backend)?,
        resource_id: r.try_get("resource_id").map_err(backend)?,
        reason: r.try_get("reason").map_err(backend)?,
        request_id: r.try_get("request_id").map_err(backend)?,
    })
}

macro_rules! impl_audit_store {
    ($store:ty, $db:ty, $max_append:expr) => {
        impl $store {
            async fn fetch_nodes<'e, E>(
                exec: E,
                keys: &[NodeKey],
            ) -> StoreResult<HashMap<NodeKey, Hash>>
            where
                E: sqlx::Executor<'e, Database = $db>,
            {
                let mut out = HashMap::with_capacity(keys.len());
                if keys.is_empty() {
                    return Ok(out);
                }
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT level, idx, hash FROM audit_nodes WHERE ",
                );
                for (n, (level, idx)) in keys.iter().enumerate() {
                    if n > 0 {
                        qb.push(" OR ");
                    }
                    qb.push("(level = ")
                        .push_bind(i64::from(*level))
                        .push(" AND idx = ")
                        .push_bind(i(*idx))
                        .push(")");
                }
                let rows: Vec<(i64, i64, Vec<u8>)> =
                    qb.build_query_as().fetch_all(exec).await.map_err(backend)?;
                for (level, idx, hash) in rows {
                    out.insert((u8::try_from(level).unwrap_or(0), u(idx)), to_hash(hash)?);
                }
                Ok(out)
            }
        }

        #[async_trait::async_trait]
        impl AuditStore for $store {
            async fn append(&self, events: &[AuditEvent], waited_for: bool) -> StoreResult<u64> {
                self.append_events(events, waited_for).await
            }

            fn max_append(&self) -> usize {
                $max_append
            }

            async fn tree_size(&self) -> StoreResult<u64> {
                let (n,): (i64,) = sqlx::query_as(sql::AUDIT_SIZE)
                    .fetch_one(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(u(n))
            }

            async fn nodes(&self, keys: &[NodeKey]) -> StoreResult<HashMap<NodeKey, Hash>> {
                let mut out = HashMap::new();
                for chunk in keys.chunks(400) {
                    out.extend(Self::fetch_nodes(&mut *self.wc().await?, chunk).await?);
                }
                Ok(out)
            }

            async fn latest_tree_head(&self) -> StoreResult<Option<TreeHead>> {
                let row: Option<(i64, i64, Vec<u8>, Vec<u8>)> =
                    sqlx::query_as(sql::AUDIT_LATEST_HEAD)
                        .fetch_optional(&mut *self.wc().await?)
                        .await
                        .map_err(backend)?;
                row.map(|(s, t, r, sig)| {
                    Ok(TreeHead {
                        tree_size: u(s),
                        timestamp_ms: t,
                        root_hash: to_hash(r)?,
                        signature: sig,
                    })
                })
                .transpose()
            }

            async fn tree_heads(&self) -> StoreResult<Vec<TreeHead>> {
                let rows: Vec<(i64, i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(sql::AUDIT_HEADS)
                    .fetch_all(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                rows.into_iter()
                    .map(|(s, t, r, sig)| {
                        Ok(TreeHead {
                            tree_size: u(s),
                            timestamp_ms: t,
                            root_hash: to_hash(r)?,
                            signature: sig,
                        })
                    })
                    .collect()
            }

            async fn insert_tree_head(&self, h: &TreeHead) -> StoreResult<()> {
                sqlx::query(sql::AUDIT_INSERT_HEAD)
                    .bind(i(h.tree_size))
                    .bind(h.timestamp_ms)
                    .bind(h.root_hash.to_vec())
                    .bind(&h.signature)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(())
            }

            async fn event(&self, id: &str) -> StoreResult<Option<StoredEvent>> {
                let row = sqlx::query(sql::AUDIT_EVENT)
                    .bind(id)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| event_row(&r)).transpose()
            }

            async fn list(
                &self,
                q: &EventQuery,
                page: &PageRequest,
            ) -> StoreResult<Vec<StoredEvent>> {
                let after: i64 = page
                    .after
                    .as_deref()
                    .and_then(|a| a.strip_prefix("i"))
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(-1);
                let mut qb = sqlx::QueryBuilder::<$db>::new(sql::AUDIT_SELECT);
                qb.push(" WHERE leaf_index > ").push_bind(after);
                if let Some(v) = &q.visible_to {
                    qb.push(" AND account_id IN (SELECT id FROM accounts WHERE id = ")
                        .push_bind(v.clone())
                        .push(" OR parent_id = ")
                        .push_bind(v.clone())
                        .push(")");
                }
                let filters: [(&str, &Option<String>); 6] = [
                    ("account_id", &q.account_id),
                    ("credential_id", &q.credential_id),
                    ("action", &q.action),
                    ("resource_type", &q.resource_type),
                    ("resource_id", &q.resource_id),
                    ("outcome", &q.outcome),
                ];
                for (column, value) in filters {
                    if let Some(v) = value {
                        qb.push(format!(" AND {column} = ")).push_bind(v.clone());
                    }
                }
                if let Some(s) = q.since_ms {
                    qb.push(" AND at_ms >= ").push_bind(s);
                }
                if let Some(s) = q.until_ms {
                    qb.push(" AND at_ms < ").push_bind(s);
                }
                // `(n + 0)`, not a bare parameter: see `sql`'s note on LIMIT.
                qb.push(" ORDER BY leaf_index LIMIT (")
                    .push_bind(page.fetch_limit())
                    .push(" + 0)");
                let rows = qb
                    .build()
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(event_row).collect()
            }

            async fn scan(&self, start: u64, limit: u32) -> StoreResult<Vec<StoredEvent>> {
                let rows = sqlx::query(sql::AUDIT_SCAN)
                    .bind(i(start))
                    .bind(i64::from(limit))
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(event_row).collect()
            }

            async fn get_system_secret(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
                haven_identity::store::IdentityStore::get_system_secret(self, name).await
            }

            async fn leaf_hashes(&self, start: u64, end: u64) -> StoreResult<Vec<Hash>> {
                let rows: Vec<(Vec<u8>,)> = sqlx::query_as(sql::AUDIT_LEAF_HASHES)
                    .bind(i(start))
                    .bind(i(end))
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.into_iter().map(|r| to_hash(r.0)).collect()
            }

            async fn pruned_below(&self) -> StoreResult<u64> {
                let (n,): (i64,) = sqlx::query_as(sql::AUDIT_PRUNED_BELOW)
                    .fetch_one(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                Ok(u(n))
            }

            async fn prune(&self, before_ms: i64) -> StoreResult<(u64, u64)> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                let (boundary,): (i64,) = sqlx::query_as(sql::AUDIT_PRUNE_BOUNDARY)
                    .bind(before_ms)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(backend)?;
                let deleted = sqlx::query(sql::AUDIT_PRUNE)
                    .bind(boundary)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                sqlx::query(sql::AUDIT_SET_PRUNED)
                    .bind(boundary)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                Ok((u(boundary), deleted))
            }

            async fn put_system_secret(
                &self,
                name: &str,
                sealed: &[u8],
                now_ms: i64,
            ) -> StoreResult<bool> {
                haven_identity::store::IdentityStore::put_system_secret(self, name, sealed, now_ms)
                    .await
            }
        }
    };
}

impl SqliteStore {
    /// The whole append, tree nodes and leaf hashes included, in one hand-off to the writer
    /// thread (see `direct`): a foreground transaction there when a caller waits for it.
    async fn append_events(&self, events: &[AuditEvent], waited_for: bool) -> StoreResult<u64> {
        let (class, writer) = if waited_for {
            (crate::writer::Class::Foreground, "audit")
        } else {
            (crate::writer::Class::Background, "audit_queued")
        };
        let events = events.to_vec();
        self.direct
            .transaction(class, writer, move |c| {
                let db = crate::direct::backend;
                let size: i64 = c.query_row(sql::AUDIT_SIZE, [], |r| r.get(0)).map_err(db)?;
                let size = u(size);
                let keys = haven_audit::merkle::frontier(size);
                let reads = haven_audit::merkle::plan_reads(&keys);
                let mut frontier = HashMap::with_capacity(keys.len());
                if !reads.nodes.is_empty() {
                    let text = format!(
                        "SELECT level, idx, hash FROM audit_nodes WHERE {}",
                        vec!["(level = ? AND idx = ?)"; reads.nodes.len()].join(" OR ")
                    );
                    let params: Vec<i64> = reads
                        .nodes
                        .iter()
                        .flat_map(|(level, idx)| [i64::from(*level), i(*idx)])
                        .collect();
                    let mut st = c.prepare_cached(&text).map_err(db)?;
                    let mut rows = st.query(rusqlite::params_from_iter(params)).map_err(db)?;
                    while let Some(r) = rows.next().map_err(db)? {
                        let level: i64 = r.get(0).map_err(db)?;
                        let idx: i64 = r.get(1).map_err(db)?;
                        let hash: Vec<u8> = r.get(2).map_err(db)?;
                        frontier.insert((u8::try_from(level).unwrap_or(0), u(idx)), to_hash(hash)?);
                    }
                }
                let mut leaves = Vec::with_capacity(reads.leaves.len());
                for (start, end) in &reads.leaves {
                    let mut st = c.prepare_cached(sql::AUDIT_LEAF_HASHES).map_err(db)?;
                    let mut rows = st.query([i(*start), i(*end)]).map_err(db)?;
                    let mut hashes = Vec::new();
                    while let Some(r) = rows.next().map_err(db)? {
                        hashes.push(to_hash(r.get(0).map_err(db)?)?);
                    }
                    leaves.push(hashes);
                }
                haven_audit::merkle::derive_into(&mut frontier, &keys, &reads, &leaves);
                let (stored, nodes) = haven_audit::plan_append(size, &frontier, &events)?;
                let new_size = size + stored.len() as u64;
                // Power-of-two chunks: a few statement texts, each prepared once and cached.
                for r in crate::bulk::chunks(stored.len()) {
                    let text = format!(
                        "{}VALUES {}",
                        sql::AUDIT_INSERT_PREFIX,
                        crate::bulk::values(crate::bulk::Ph::Question, r.len(), 14, 1, "")
                    );
                    let indexes: Vec<i64> =
                        stored[r.clone()].iter().map(|e| i(e.leaf_index)).collect();
                    let mut params: Vec<&dyn rusqlite::types::ToSql> =
                        Vec::with_capacity(r.len() * 14);
                    for (e, index) in stored[r].iter().zip(&indexes) {
                        params.extend_from_slice(&[
                            index as &dyn rusqlite::types::ToSql,
                            &e.id,
                            &e.at_ms,
                            &e.action,
                            &e.outcome,
                            &e.account_id,
                            &e.credential_id,
                            &e.auth_method,
                            &e.source_addr,
                            &e.user_agent,
                            &e.resource_type,
                            &e.resource_id,
                            &e.reason,
                            &e.request_id,
                        ]);
                    }
                    c.prepare_cached(&text)
                        .and_then(|mut st| st.execute(params.as_slice()))
                        .map_err(db)?;
                }
                for r in crate::bulk::chunks(nodes.len()) {
                    let text = format!(
                        "INSERT INTO audit_nodes (level, idx, hash) VALUES {}",
                        crate::bulk::values(crate::bulk::Ph::Question, r.len(), 3, 1, "")
                    );
                    let keys: Vec<(i64, i64)> = nodes[r.clone()]
                        .iter()
                        .map(|((level, idx), _)| (i64::from(*level), i(*idx)))
                        .collect();
                    let mut params: Vec<&dyn rusqlite::types::ToSql> =
                        Vec::with_capacity(r.len() * 3);
                    for ((level, idx), (_, hash)) in keys.iter().zip(&nodes[r]) {
                        params.extend_from_slice(&[
                            level as &dyn rusqlite::types::ToSql,
                            idx,
                            hash,
                        ]);
                    }
                    c.prepare_cached(&text)
                        .and_then(|mut st| st.execute(params.as_slice()))
                        .map_err(db)?;
                }
                c.execute(sql::AUDIT_SET_SIZE, [i(new_size)]).map_err(db)?;
                Ok(new_size)
            })
            .await
    }
}

impl PgStore {
    async fn append_events(&self, events: &[AuditEvent], waited_for: bool) -> StoreResult<u64> {
        let mut wc = if waited_for {
            self.wc_as("audit").await?
        } else {
            self.wc_bg_as("audit_queued").await?
        };
        let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
        // Serializes appends: the state row is locked until commit (PostgreSQL); SQLite
        // has one writer.
        let (size,): (i64,) = sqlx::query_as(sql::AUDIT_SIZE_FOR_UPDATE)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let size = u(size);
        let keys = haven_audit::merkle::frontier(size);
        let reads = haven_audit::merkle::plan_reads(&keys);
        let mut frontier = Self::fetch_nodes(&mut *tx, &reads.nodes).await?;
        let mut leaves = Vec::with_capacity(reads.leaves.len());
        for (start, end) in &reads.leaves {
            let rows: Vec<(Vec<u8>,)> = sqlx::query_as(sql::AUDIT_LEAF_HASHES)
                .bind(i(*start))
                .bind(i(*end))
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?;
            leaves.push(
                rows.into_iter()
                    .map(|r| to_hash(r.0))
                    .collect::<StoreResult<Vec<_>>>()?,
            );
        }
        haven_audit::merkle::derive_into(&mut frontier, &keys, &reads, &leaves);
        let (stored, nodes) = haven_audit::plan_append(size, &frontier, events)?;
        let new_size = size + stored.len() as u64;
        Self::insert_leaves(&mut tx, stored, &nodes).await?;
        sqlx::query(sql::AUDIT_SET_SIZE)
            .bind(i(new_size))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(new_size)
    }

    /// One `INSERT … SELECT FROM UNNEST(arrays)` per table: a single prepared statement whatever
    /// the batch size (multi-row VALUES with thousands of parameters is re-planned every time).
    async fn insert_leaves(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        stored: Vec<StoredEvent>,
        nodes: &[(NodeKey, Hash)],
    ) -> StoreResult<()> {
        let col = |f: fn(&StoredEvent) -> Option<String>| {
            stored.iter().map(f).collect::<Vec<Option<String>>>()
        };
        sqlx::query(sql::AUDIT_INSERT_UNNEST)
            .bind(stored.iter().map(|e| i(e.leaf_index)).collect::<Vec<i64>>())
            .bind(stored.iter().map(|e| e.id.clone()).collect::<Vec<String>>())
            .bind(stored.iter().map(|e| e.at_ms).collect::<Vec<i64>>())
            .bind(
                stored
                    .iter()
                    .map(|e| e.action.clone())
                    .collect::<Vec<String>>(),
            )
            .bind(
                stored
                    .iter()
                    .map(|e| e.outcome.clone())
                    .collect::<Vec<String>>(),
            )
            .bind(col(|e| e.account_id.clone()))
            .bind(col(|e| e.credential_id.clone()))
            .bind(col(|e| e.auth_method.clone()))
            .bind(col(|e| e.source_addr.clone()))
            .bind(col(|e| e.user_agent.clone()))
            .bind(col(|e| e.resource_type.clone()))
            .bind(col(|e| e.resource_id.clone()))
            .bind(col(|e| e.reason.clone()))
            .bind(col(|e| e.request_id.clone()))
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        sqlx::query(sql::AUDIT_NODES_UNNEST)
            .bind(
                nodes
                    .iter()
                    .map(|((l, _), _)| i64::from(*l))
                    .collect::<Vec<i64>>(),
            )
            .bind(nodes.iter().map(|((_, x), _)| i(*x)).collect::<Vec<i64>>())
            .bind(
                nodes
                    .iter()
                    .map(|(_, h)| h.to_vec())
                    .collect::<Vec<Vec<u8>>>(),
            )
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

/// Events per SQLite audit transaction: a few milliseconds on the one writer, which an
/// accepting request's commit may have to wait for.
const SQLITE_MAX_APPEND: usize = 256;

impl_audit_store!(SqliteStore, sqlx::Sqlite, SQLITE_MAX_APPEND);
impl_audit_store!(PgStore, sqlx::Postgres, MAX_BATCH);
