//! Storage adapters: SQLite (embedded default) and PostgreSQL (several nodes), behind the
//! domain's own ports. One set of statements serves both (see `sql`), and one conformance suite
//! tests both.

mod audit;
mod bulk;
mod checkpoint;
mod direct;
mod dispatch;
mod inline;
mod messages;
mod pgpoint;
mod pgtls;
mod rows;
mod settle;
mod sql;
mod usage;
mod vault;
mod verify;
mod webhooks;
mod writer;

pub use audit::BufferedAudit;

use haven_identity::model::{Account, AccountStatus, ApiKey, SigningKeyRecord};
use haven_identity::store::IdentityStore;
use haven_platform::config::SqliteSynchronous;
use haven_platform::events::OutboxEvent;
use haven_platform::page::PageRequest;
use haven_platform::store::{
    HealthCheck, IdempotencyBegin, IdempotencyClaim, IdempotencyStore, StoreError, StoreResult,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous as Sync_,
};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn backend(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        return StoreError::Conflict;
    }
    StoreError::Backend(e.to_string())
}

/// The store selected by the database URL.
#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
    pub sqlite_synchronous: SqliteSynchronous,
}

impl Store {
    /// Connects and applies pending migrations. Refuses a database that a newer Haven migrated
    /// (migrations only run forward).
    pub async fn open(url: &str, opts: &StoreOptions) -> StoreResult<Self> {
        let store = Self::open_unmigrated(url, opts).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects without running migrations (for `haven migrate`, which reports what it applied).
    pub async fn open_unmigrated(url: &str, opts: &StoreOptions) -> StoreResult<Self> {
        Ok(
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                Store::Postgres(PgStore::connect(url, opts).await?)
            } else {
                Store::Sqlite(SqliteStore::connect(url, opts).await?)
            },
        )
    }

    pub async fn migrate(&self) -> StoreResult<Vec<i64>> {
        let migrator = match self {
            Store::Sqlite(_) => sqlx::migrate!("./migrations/sqlite"),
            Store::Postgres(_) => sqlx::migrate!("./migrations/postgres"),
        };
        let before = self.applied_versions().await.unwrap_or_default();
        let result = match self {
            Store::Sqlite(s) => migrator.run(&mut *s.wc().await?).await,
            Store::Postgres(p) => migrator.run(&p.pool).await,
        };
        result.map_err(|e| StoreError::Backend(format!("migration failed: {e}")))?;
        let after = self.applied_versions().await?;
        Ok(after.into_iter().filter(|v| !before.contains(v)).collect())
    }

    async fn applied_versions(&self) -> StoreResult<Vec<i64>> {
        let q = "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version";
        let rows: Vec<(i64,)> = match self {
            Store::Sqlite(s) => sqlx::query_as(q).fetch_all(&mut *s.rc().await?).await,
            Store::Postgres(p) => sqlx::query_as(q).fetch_all(&p.pool).await,
        }
        .map_err(backend)?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    pub fn identity(&self) -> Arc<dyn IdentityStore> {
        match self {
            Store::Sqlite(s) => Arc::new(s.clone()),
            Store::Postgres(p) => Arc::new(p.clone()),
        }
    }

    pub fn idempotency(&self) -> Arc<dyn IdempotencyStore> {
        match self {
            Store::Sqlite(s) => Arc::new(s.clone()),
            Store::Postgres(p) => Arc::new(p.clone()),
        }
    }

    pub fn health(&self) -> Arc<dyn HealthCheck> {
        match self {
            Store::Sqlite(s) => Arc::new(s.clone()),
            Store::Postgres(p) => Arc::new(p.clone()),
        }
    }

    pub fn vault(&self) -> Arc<dyn haven_vault::VaultStore> {
        match self {
            Store::Sqlite(s) => Arc::new(s.clone()),
            Store::Postgres(p) => Arc::new(p.clone()),
        }
    }

    pub fn contacts(&self) -> Arc<dyn haven_contacts::ContactStore> {
        match self {
            Store::Sqlite(s) => Arc::new(s.clone()),
            Store::Postgres(p) => Arc::new(p.clone()),
        }
    }

    pub fn webhooks(&self) -> Arc<dyn haven_webhooks::WebhookStore> {
        match self {
            Store::Sqlite(s) => Arc::new(s.clone()),
            Store::Postgres(p) => Arc::new(p.clone()),
        }
    }

    pub fn messages(&self) -> Arc<dyn haven_messaging::MessageStore> {
        match self {
            Store::Sqlite(s) => Arc::new(s.clone()),
            Store::Postgres(p) => Arc::new(p.clone()),
        }
    }

    pub fn dispatch(&self) -> Arc<dyn haven_dispatch::DispatchStore> {
        match self {
            Store::Sqlite(s) => Arc::new(s.clone()),
            Store::Postgres(p) => Arc::new(p.clone()),
        }
    }

    pub fn usage(&self) -> Arc<dyn haven_reports::store::UsageStore> {
        match self {
            Store::Sqlite(s) => Arc::new(s.clone()),
            Store::Postgres(p) => Arc::new(p.clone()),
        }
    }

    pub fn verify(&self) -> Arc<dyn haven_verify::VerifyStore> {
        match self {
            Store::Sqlite(s) => Arc::new(s.clone()),
            Store::Postgres(p) => Arc::new(p.clone()),
        }
    }

    pub fn factors(&self) -> Arc<dyn haven_verify::factors::FactorStore> {
        match self {
            Store::Sqlite(s) => Arc::new(s.clone()),
            Store::Postgres(p) => Arc::new(p.clone()),
        }
    }

    pub fn audit(&self) -> Arc<dyn haven_audit::AuditStore> {
        match self {
            Store::Sqlite(s) => Arc::new(s.clone()),
            Store::Postgres(p) => Arc::new(p.clone()),
        }
    }

    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => {
                if let Some(conn) = s.writer.close().await {
                    let _ = sqlx::Connection::close(conn).await;
                }
                s.reader.close().await;
            }
            Store::Postgres(p) => p.pool.close().await,
        }
    }
}

/// SQLite in WAL mode: one writer connection (SQLite allows one writer at a time; a single
/// connection avoids lock contention entirely) and a pool of readers.
///
/// The writer is a plain connection behind an async lock rather than a pool of one: a pool
/// hands its connection back by spawning a task that pings it first, so every hand-off between
/// the several group-commit writers cost a trip through the request runtime's queue and one
/// through SQLite's thread while everyone else waited. The lock hands it straight to the next
/// waiter. (A transaction dropped half-way still rolls back: sqlx queues the rollback on the
/// connection, ahead of the next holder's first statement.)
///
/// Foreground writers (what a request waits for: accepted messages, API changes, durable audit
/// events) go before the background writers waiting at that moment (the sending loops' claims,
/// outcomes, receipts; webhook and dispatch claims; queued audit events), so an accepting
/// request's group commit waits only for the transaction in progress (see `writer`).
#[derive(Clone)]
pub struct SqliteStore {
    writer: Arc<writer::PriorityLock<SqliteConnection>>,
    /// The group commits of accepted messages, of send outcomes and receipts, and of audit
    /// events: each transaction in one hand-off to a thread of its own (see `direct`), which
    /// takes the same writer lock.
    direct: Arc<direct::DirectWriter>,
    reader: Arc<ReadPool>,
    inline: Arc<inline::InlineReaders>,
}

/// The SQLite write connection while someone holds it. When it goes back, how long it was held
/// is recorded (`haven_sqlite_writer_hold_seconds{writer}`), beside how long it was waited for
/// (`haven_sqlite_writer_wait_seconds{writer}`): the tail of every group commit is made of
/// these.
pub(crate) struct WriteConn<'a> {
    conn: writer::Held<'a, SqliteConnection>,
    since: std::time::Instant,
    writer: &'static str,
}

impl Drop for WriteConn<'_> {
    fn drop(&mut self) {
        metrics::histogram!("haven_sqlite_writer_hold_seconds", "writer" => self.writer)
            .record(self.since.elapsed().as_secs_f64());
    }
}

impl std::ops::Deref for WriteConn<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

/// SQLite's read connections: plain connections handed out and taken back on the spot.
///
/// sqlx's pool gives a connection back by spawning a task that pings it first: one more trip
/// through the runtime's queue and one through the connection's thread for every read. A
/// connection to a local file cannot have gone away, and one whose query was dropped half-way
/// is still consistent: its thread finishes the command before it takes the next one, and
/// readers never open transactions. (The hottest reads skip sqlx altogether: see `inline`.)
pub(crate) struct ReadPool {
    permits: tokio::sync::Semaphore,
    idle: std::sync::Mutex<Vec<SqliteConnection>>,
}

impl ReadPool {
    async fn acquire(&self) -> StoreResult<ReadConn<'_>> {
        let permit = tokio::time::timeout(WRITER_WAIT, self.permits.acquire())
            .await
            .map_err(|_| StoreError::Backend("timed out waiting for an SQLite reader".into()))?
            .map_err(|_| StoreError::Backend("the SQLite readers are closed".into()))?;
        let conn = self
            .idle
            .lock()
            .map_err(|_| StoreError::Backend("the SQLite reader list is poisoned".into()))?
            .pop()
            .ok_or_else(|| StoreError::Backend("no idle SQLite reader under a permit".into()))?;
        Ok(ReadConn {
            conn: Some(conn),
            pool: self,
            _permit: permit,
        })
    }

    async fn close(&self) {
        self.permits.close();
        let conns = match self.idle.lock() {
            Ok(mut idle) => std::mem::take(&mut *idle),
            Err(_) => return,
        };
        for c in conns {
            let _ = sqlx::Connection::close(c).await;
        }
    }
}

/// A reader while someone holds it; it goes back when dropped.
pub(crate) struct ReadConn<'a> {
    conn: Option<SqliteConnection>,
    pool: &'a ReadPool,
    // Dropped after `drop` below has put the connection back, so a permit always finds one.
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Drop for ReadConn<'_> {
    fn drop(&mut self) {
        if let (Some(c), Ok(mut idle)) = (self.conn.take(), self.pool.idle.lock()) {
            idle.push(c);
        }
    }
}

impl std::ops::Deref for ReadConn<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        // Present from acquire until drop.
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("reader taken"))
    }
}

impl std::ops::DerefMut for ReadConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("reader taken"))
    }
}

/// How long a SQLite connection waits for a lock another connection holds.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepared statements kept per connection. The group commits' set-based statements come in a
/// few sizes each (see `bulk`), so the writer uses a few hundred texts; with sqlx's default of
/// 100 they pushed each other out and were parsed again and again.
const STATEMENT_CACHE: usize = 1024;

/// How long a writer waits for the SQLite write connection before giving up (sqlx's pool
/// default acquire timeout, which the pool of one used to apply).
const WRITER_WAIT: Duration = Duration::from_secs(30);

impl SqliteStore {
    async fn connect(url: &str, opts: &StoreOptions) -> StoreResult<Self> {
        let sync = match opts.sqlite_synchronous {
            SqliteSynchronous::Full => Sync_::Full,
            SqliteSynchronous::Normal => Sync_::Normal,
        };
        let base = SqliteConnectOptions::from_str(url)
            .map_err(backend)?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sync)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .pragma("temp_store", "memory")
            // Deleted content (a destroyed subject key) is overwritten, not left in free pages.
            .pragma("secure_delete", "ON")
            .statement_cache_capacity(STATEMENT_CACHE);
        // The writer never checkpoints: the commit that crosses SQLite's threshold (1,000 pages)
        // would copy the WAL into the database and sync it while every other writer waits.
        let writer = sqlx::ConnectOptions::connect(
            &base
                .clone()
                .create_if_missing(true)
                .pragma("wal_autocheckpoint", "0"),
        )
        .await
        .map_err(backend)?;
        let checkpointer = sqlx::ConnectOptions::connect(&base)
            .await
            .map_err(backend)?;
        let writer = Arc::new(writer::PriorityLock::new(writer));
        tokio::spawn(checkpoint::run(
            checkpointer,
            Arc::downgrade(&writer),
            checkpoint::Policy::default(),
        ));
        let direct = Arc::new(direct::DirectWriter::open(
            base.get_filename(),
            opts.sqlite_synchronous,
            Arc::clone(&writer),
            WRITER_WAIT,
        )?);
        let inline = Arc::new(inline::InlineReaders::new(base.get_filename().to_owned()));
        let readers = base.read_only(true);
        let mut idle = Vec::new();
        for _ in 0..opts.max_connections.max(2) {
            idle.push(
                sqlx::ConnectOptions::connect(&readers)
                    .await
                    .map_err(backend)?,
            );
        }
        let reader = Arc::new(ReadPool {
            permits: tokio::sync::Semaphore::new(idle.len()),
            idle: std::sync::Mutex::new(idle),
        });
        Ok(Self {
            writer,
            direct,
            reader,
            inline,
        })
    }
    /// A read connection, once one is free.
    async fn rc(&self) -> StoreResult<ReadConn<'_>> {
        self.reader.acquire().await
    }
    /// The write connection, after the holder and the foreground writers who asked earlier
    /// (and a background writer only once it has waited its longest; see `writer`).
    async fn wc(&self) -> StoreResult<WriteConn<'_>> {
        self.wc_as("foreground").await
    }
    /// [`Self::wc`], with the writer's purpose as the metrics' `writer` label.
    async fn wc_as(&self, writer: &'static str) -> StoreResult<WriteConn<'_>> {
        self.take_writer(writer, writer::Class::Foreground).await
    }
    async fn take_writer(
        &self,
        writer: &'static str,
        class: writer::Class,
    ) -> StoreResult<WriteConn<'_>> {
        let asked = std::time::Instant::now();
        let conn = tokio::time::timeout(WRITER_WAIT, self.writer.lock(class))
            .await
            .map_err(|_| {
                StoreError::Backend("timed out waiting for the SQLite write connection".into())
            })?
            .map_err(|_| StoreError::Backend("the store is closed".into()))?;
        let since = std::time::Instant::now();
        metrics::histogram!("haven_sqlite_writer_wait_seconds", "writer" => writer)
            .record(since.duration_since(asked).as_secs_f64());
        Ok(WriteConn {
            conn,
            since,
            writer,
        })
    }
    /// The write connection for a background writer: after the foreground writers waiting.
    async fn wc_bg(&self) -> StoreResult<WriteConn<'_>> {
        self.wc_bg_as("background").await
    }
    /// [`Self::wc_bg`], with the writer's purpose as the metrics' `writer` label.
    async fn wc_bg_as(&self, writer: &'static str) -> StoreResult<WriteConn<'_>> {
        self.take_writer(writer, writer::Class::Background).await
    }
}

/// PostgreSQL: one pool; concurrency control is the database's. The point reads behind every
/// send skip the pool's round trips (see `pgpoint`).
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    point: Arc<pgpoint::PointReaders>,
    gathered: Arc<Gathered>,
}

/// The point reads every send makes, each kind gathered across concurrent sends.
struct Gathered {
    consents: Arc<pgpoint::Gather<messages::ConsentKey, Vec<haven_messaging::store::ConsentRow>>>,
    contacts_by_phone: Arc<pgpoint::Gather<vault::ContactKey, Vec<haven_contacts::ContactRow>>>,
    contacts_by_email: Arc<pgpoint::Gather<vault::ContactKey, Vec<haven_contacts::ContactRow>>>,
    subject_keys: Arc<pgpoint::Gather<String, Option<haven_vault::SubjectKeyRecord>>>,
}

impl PgStore {
    async fn connect(url: &str, opts: &StoreOptions) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(url).map_err(backend)?;
        let tls = pgtls::policy(url, std::env::var("PGSSLMODE").ok().as_deref(), &options);
        if let Some(w) = &tls.warning {
            tracing::warn!("{w}");
        }
        let options = options
            .ssl_mode(tls.mode)
            .application_name("haven")
            .statement_cache_capacity(STATEMENT_CACHE);
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(backend)?;
        let point = Arc::new(pgpoint::PointReaders::new(
            options,
            point_readers(opts.max_connections),
        ));
        let gathered = Arc::new(Gathered {
            consents: messages::gather_consents(Arc::clone(&point)),
            contacts_by_phone: vault::gather_contacts(
                "contacts_by_phone",
                sql::CONTACTS_BY_PHONE_GATHERED,
                Arc::clone(&point),
            ),
            contacts_by_email: vault::gather_contacts(
                "contacts_by_email",
                sql::CONTACTS_BY_EMAIL_GATHERED,
                Arc::clone(&point),
            ),
            subject_keys: vault::gather_subject_keys(Arc::clone(&point)),
        });
        Ok(Self {
            pool,
            point,
            gathered,
        })
    }
    /// A connection for reads.
    async fn rc(&self) -> StoreResult<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        self.pool.acquire().await.map_err(backend)
    }
    /// A connection for writes (the same pool as reads: PostgreSQL orders writers itself).
    async fn wc(&self) -> StoreResult<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        self.pool.acquire().await.map_err(backend)
    }
    /// The same for background writers (PostgreSQL has no single writer to queue for).
    async fn wc_bg(&self) -> StoreResult<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        self.wc().await
    }
    /// The same; the purpose labels only SQLite's writer metrics.
    async fn wc_as(
        &self,
        _writer: &'static str,
    ) -> StoreResult<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        self.wc().await
    }
    /// The same; the purpose labels only SQLite's writer metrics.
    async fn wc_bg_as(
        &self,
        _writer: &'static str,
    ) -> StoreResult<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        self.wc().await
    }
}

fn json_list(items: impl IntoIterator<Item = String>) -> String {
    serde_json::to_string(&items.into_iter().collect::<Vec<_>>())
        .unwrap_or_else(|_| "[]".to_owned())
}

/// How many plain connections serve PostgreSQL point reads, beside the pool of
/// `database.max_connections`: half as many, at least two.
pub fn point_readers(max_connections: u32) -> usize {
    (max_connections as usize / 2).max(2)
}

impl SqliteStore {
    pub(crate) const PH: bulk::Ph = bulk::Ph::Question;
}

impl PgStore {
    pub(crate) const PH: bulk::Ph = bulk::Ph::Dollar;
}

/// Outbox events, from a row source `{rows}` (see `settle::rows_statement`), each row its data
/// alone (`payload`, with `envelope = 0`: see migration `event_data`). An event that no
/// enabled endpoint listens to is written already fanned out (see `push_events`). The accounts
/// listened to (those with an enabled endpoint, and their subaccounts) are one uncorrelated
/// subquery, which both stores evaluate once per statement (PostgreSQL as a hashed subplan,
/// SQLite as an ephemeral index), not once per event.
pub(crate) const INSERT_EVENTS_ROWS: &str = "INSERT INTO webhook_events (id, account_id, event_type, \
     payload, envelope, created_at_ms, fanned_out) SELECT v.column1, v.column2, v.column3, \
     v.column4, 0, v.column5, CASE WHEN v.column2 IN (SELECT e.account_id FROM webhook_endpoints e \
     WHERE e.status = 'enabled' UNION ALL SELECT a.id FROM webhook_endpoints e \
     JOIN accounts a ON a.parent_id = e.account_id WHERE e.status = 'enabled') \
     THEN 0 ELSE 1 END FROM {rows}";

/// The same method bodies for both backends; only the pools differ.
macro_rules! impl_stores {
    ($store:ty, $db:ty) => {
        impl $store {
            /// Writes outbox events inside the caller's transaction. An event of an account
            /// that no enabled endpoint listens to (neither its own nor its master's) is
            /// written already fanned out: it stays in the event log (`GET /v1/webhooks/events`)
            /// but the fan-out never has to read it or mark it, which on PostgreSQL is a
            /// non-HOT update of the row (`fanned_out` is the predicate of the index that
            /// finds the unfanned ones). The check runs in the same statement, so an endpoint
            /// committed before the event's statement began is always seen, whichever node
            /// created it: an endpoint gets the events that happen after it is enabled.
            pub(crate) async fn push_events(
                tx: &mut sqlx::Transaction<'_, $db>,
                events: &[OutboxEvent],
            ) -> StoreResult<()> {
                settle::push_events(&mut settle::SqlxTx(tx), events).await
            }
        }

        #[async_trait::async_trait]
        impl IdentityStore for $store {
            async fn bootstrap(&self, root: &Account, key: &ApiKey) -> StoreResult<bool> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                let inserted = sqlx::query(sql::BOOTSTRAP_ROOT)
                    .bind(&root.id)
                    .bind(&root.name)
                    .bind(root.status.as_str())
                    .bind(root.created_at_ms)
                    .bind(root.updated_at_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                if inserted == 0 {
                    tx.rollback().await.map_err(backend)?;
                    return Ok(false);
                }
                rows::bind_key(sqlx::query(sql::INSERT_KEY), key)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                Ok(true)
            }

            async fn root_account(&self) -> StoreResult<Option<Account>> {
                let row = sqlx::query(sql::ROOT_ACCOUNT)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| rows::account(&r)).transpose()
            }

            async fn insert_account(&self, a: &Account, events: &[OutboxEvent]) -> StoreResult<()> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                sqlx::query(sql::INSERT_ACCOUNT)
                    .bind(&a.id)
                    .bind(a.parent_id.as_deref())
                    .bind(&a.name)
                    .bind(a.status.as_str())
                    .bind(a.created_at_ms)
                    .bind(a.updated_at_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                Self::push_events(&mut tx, events).await?;
                tx.commit().await.map_err(backend)?;
                Ok(())
            }

            async fn get_account(&self, id: &str) -> StoreResult<Option<Account>> {
                let row = sqlx::query(sql::GET_ACCOUNT)
                    .bind(id)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| rows::account(&r)).transpose()
            }

            async fn list_accounts(
                &self,
                viewer: &str,
                page: &PageRequest,
            ) -> StoreResult<Vec<Account>> {
                let rows = sqlx::query(sql::LIST_ACCOUNTS)
                    .bind(viewer)
                    .bind(page.after.as_deref().unwrap_or(""))
                    .bind(page.fetch_limit())
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(rows::account).collect()
            }

            async fn list_all_accounts(&self, page: &PageRequest) -> StoreResult<Vec<Account>> {
                let rows = sqlx::query(sql::LIST_ALL_ACCOUNTS)
                    .bind(page.after.as_deref().unwrap_or(""))
                    .bind(page.fetch_limit())
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(rows::account).collect()
            }

            async fn update_account(
                &self,
                id: &str,
                name: Option<&str>,
                status: Option<AccountStatus>,
                now_ms: i64,
                events: &[OutboxEvent],
            ) -> StoreResult<Option<Account>> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                let row = sqlx::query(sql::UPDATE_ACCOUNT)
                    .bind(name)
                    .bind(status.map(AccountStatus::as_str))
                    .bind(now_ms)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
                let account = row.map(|r| rows::account(&r)).transpose()?;
                if account.is_some() {
                    Self::push_events(&mut tx, events).await?;
                }
                tx.commit().await.map_err(backend)?;
                Ok(account)
            }

            async fn insert_key(&self, key: &ApiKey, events: &[OutboxEvent]) -> StoreResult<()> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                rows::bind_key(sqlx::query(sql::INSERT_KEY), key)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                Self::push_events(&mut tx, events).await?;
                tx.commit().await.map_err(backend)?;
                Ok(())
            }

            async fn get_key(&self, id: &str) -> StoreResult<Option<ApiKey>> {
                let row = sqlx::query(sql::GET_KEY)
                    .bind(id)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| rows::key(&r)).transpose()
            }

            async fn list_keys(
                &self,
                account_id: &str,
                page: &PageRequest,
            ) -> StoreResult<Vec<ApiKey>> {
                let rows = sqlx::query(sql::LIST_KEYS)
                    .bind(account_id)
                    .bind(page.after.as_deref().unwrap_or(""))
                    .bind(page.fetch_limit())
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(rows::key).collect()
            }

            async fn rotate_key(
                &self,
                id: &str,
                new_hash: &[u8],
                previous: Option<(&[u8], i64)>,
                now_ms: i64,
                events: &[OutboxEvent],
            ) -> StoreResult<Option<ApiKey>> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                let row = sqlx::query(sql::ROTATE_KEY)
                    .bind(new_hash)
                    .bind(previous.map(|p| p.0))
                    .bind(previous.map(|p| p.1))
                    .bind(now_ms)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
                let key = row.map(|r| rows::key(&r)).transpose()?;
                if key.is_some() {
                    Self::push_events(&mut tx, events).await?;
                }
                tx.commit().await.map_err(backend)?;
                Ok(key)
            }

            async fn revoke_key(
                &self,
                id: &str,
                now_ms: i64,
                events: &[OutboxEvent],
            ) -> StoreResult<Option<ApiKey>> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                let row = sqlx::query(sql::REVOKE_KEY)
                    .bind(now_ms)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
                let key = row.map(|r| rows::key(&r)).transpose()?;
                if key.is_some() {
                    Self::push_events(&mut tx, events).await?;
                }
                tx.commit().await.map_err(backend)?;
                Ok(key)
            }

            async fn touch_key(&self, id: &str, at_ms: i64) -> StoreResult<()> {
                sqlx::query(sql::TOUCH_KEY)
                    .bind(at_ms)
                    .bind(id)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(())
            }

            async fn record_auth_failure(
                &self,
                subject: &str,
                now_ms: i64,
                window_ms: i64,
                threshold: i64,
                lockout_ms: i64,
            ) -> StoreResult<Option<i64>> {
                let locked: (Option<i64>,) = sqlx::query_as(sql::RECORD_FAILURE)
                    .bind(subject)
                    .bind(now_ms)
                    .bind(threshold)
                    .bind(lockout_ms)
                    .bind(window_ms)
                    .fetch_one(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(locked.0.filter(|until| *until > now_ms))
            }

            async fn locked_until(
                &self,
                subjects: &[String],
                now_ms: i64,
            ) -> StoreResult<Option<i64>> {
                let row: (Option<i64>,) = match subjects {
                    [] => return Ok(None),
                    [one] => {
                        sqlx::query_as(sql::LOCKED_UNTIL_1)
                            .bind(one)
                            .bind(now_ms)
                            .fetch_one(&mut *self.rc().await?)
                            .await
                    }
                    [a, b, ..] => {
                        sqlx::query_as(sql::LOCKED_UNTIL_2)
                            .bind(a)
                            .bind(b)
                            .bind(now_ms)
                            .fetch_one(&mut *self.rc().await?)
                            .await
                    }
                }
                .map_err(backend)?;
                Ok(row.0)
            }

            async fn revoke_token(&self, jti: &str, expires_at_ms: i64) -> StoreResult<()> {
                sqlx::query(sql::REVOKE_TOKEN)
                    .bind(jti)
                    .bind(expires_at_ms)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(())
            }

            async fn is_token_revoked(&self, jti: &str) -> StoreResult<bool> {
                let row = sqlx::query(sql::TOKEN_REVOKED)
                    .bind(jti)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                Ok(row.is_some())
            }

            async fn purge_expired(&self, now_ms: i64) -> StoreResult<u64> {
                let mut n = sqlx::query(sql::PURGE_TOKENS)
                    .bind(now_ms)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                // Failure windows are never longer than a day.
                n += sqlx::query(sql::PURGE_FAILURES)
                    .bind(now_ms - 86_400_000)
                    .bind(now_ms)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                n += sqlx::query(sql::PURGE_IDEMPOTENCY)
                    .bind(now_ms)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                Ok(n)
            }

            async fn list_signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
                let rows: Vec<(String, Vec<u8>, Vec<u8>, i64)> =
                    sqlx::query_as(sql::LIST_SIGNING_KEYS)
                        .fetch_all(&mut *self.rc().await?)
                        .await
                        .map_err(backend)?;
                Ok(rows
                    .into_iter()
                    .map(
                        |(kid, public_key, sealed_private_key, created_at_ms)| SigningKeyRecord {
                            kid,
                            public_key,
                            sealed_private_key,
                            created_at_ms,
                        },
                    )
                    .collect())
            }

            async fn insert_signing_key(&self, k: &SigningKeyRecord) -> StoreResult<()> {
                sqlx::query(sql::INSERT_SIGNING_KEY)
                    .bind(&k.kid)
                    .bind(&k.public_key)
                    .bind(&k.sealed_private_key)
                    .bind(k.created_at_ms)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(())
            }

            async fn get_system_secret(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
                let row: Option<(Vec<u8>,)> = sqlx::query_as(sql::GET_SYSTEM_SECRET)
                    .bind(name)
                    .fetch_optional(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(row.map(|r| r.0))
            }

            async fn put_system_secret(
                &self,
                name: &str,
                sealed: &[u8],
                now_ms: i64,
            ) -> StoreResult<bool> {
                let n = sqlx::query(sql::PUT_SYSTEM_SECRET)
                    .bind(name)
                    .bind(sealed)
                    .bind(now_ms)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                Ok(n == 1)
            }
        }

        #[async_trait::async_trait]
        impl IdempotencyStore for $store {
            async fn begin(&self, c: &IdempotencyClaim) -> StoreResult<IdempotencyBegin> {
                // Two tries: the second after clearing an expired claim under the same key.
                for _ in 0..2 {
                    let claimed = sqlx::query(sql::IDEM_CLAIM)
                        .bind(&c.account_id)
                        .bind(&c.key)
                        .bind(&c.fingerprint)
                        .bind(c.now_ms)
                        .bind(c.expires_ms)
                        .execute(&mut *self.wc().await?)
                        .await
                        .map_err(backend)?
                        .rows_affected();
                    if claimed == 1 {
                        return Ok(IdempotencyBegin::Claimed);
                    }
                    let row: Option<(Vec<u8>, Option<i64>, Option<Vec<u8>>, i64, i64)> =
                        sqlx::query_as(sql::IDEM_GET)
                            .bind(&c.account_id)
                            .bind(&c.key)
                            .fetch_optional(&mut *self.wc().await?)
                            .await
                            .map_err(backend)?;
                    let Some((fingerprint, status, body, expires, created)) = row else {
                        continue;
                    };
                    let abandoned = status.is_none() && created < c.stale_before_ms;
                    if expires <= c.now_ms || abandoned {
                        sqlx::query(sql::IDEM_DELETE_EXPIRED)
                            .bind(&c.account_id)
                            .bind(&c.key)
                            .bind(c.now_ms)
                            .bind(c.stale_before_ms)
                            .execute(&mut *self.wc().await?)
                            .await
                            .map_err(backend)?;
                        continue;
                    }
                    if fingerprint != c.fingerprint {
                        return Ok(IdempotencyBegin::Mismatch);
                    }
                    return Ok(match status {
                        None => IdempotencyBegin::InProgress,
                        Some(s) => IdempotencyBegin::Replay {
                            status: u16::try_from(s).unwrap_or(500),
                            body: body.unwrap_or_default(),
                        },
                    });
                }
                Ok(IdempotencyBegin::InProgress)
            }

            async fn complete(
                &self,
                c: &IdempotencyClaim,
                status: u16,
                body: &[u8],
            ) -> StoreResult<()> {
                sqlx::query(sql::IDEM_COMPLETE)
                    .bind(i64::from(status))
                    .bind(body)
                    .bind(&c.account_id)
                    .bind(&c.key)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(())
            }

            async fn abandon(&self, c: &IdempotencyClaim) -> StoreResult<()> {
                sqlx::query(sql::IDEM_ABANDON)
                    .bind(&c.account_id)
                    .bind(&c.key)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl HealthCheck for $store {
            async fn ping(&self) -> StoreResult<()> {
                sqlx::query(sql::PING)
                    .execute(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                Ok(())
            }
        }
    };
}

impl_stores!(SqliteStore, sqlx::Sqlite);
impl_stores!(PgStore, sqlx::Postgres);
