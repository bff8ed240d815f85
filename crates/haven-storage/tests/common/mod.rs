//! The stores the storage tests run against: a fresh SQLite file, and a fresh database on the
//! PostgreSQL of `HAVEN_TEST_DATABASE_URL` when it is set (the README's test command always
//! sets it).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use haven_identity::model::{Account, AccountStatus};
use haven_platform::config::SqliteSynchronous;
use haven_storage::{Store, StoreOptions};

pub struct Db {
    pub store: Store,
    pub url: String,
    pub cleanup: Box<dyn FnOnce() + Send>,
}

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

pub fn opts() -> StoreOptions {
    StoreOptions {
        max_connections: 4,
        sqlite_synchronous: SqliteSynchronous::Full,
    }
}

pub async fn sqlite() -> Db {
    let dir = std::env::temp_dir().join(unique("haven-settle"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("haven.db").display());
    let store = Store::open(&url, &opts()).await.unwrap();
    Db {
        store,
        url,
        cleanup: Box::new(move || {
            let _ = std::fs::remove_dir_all(dir);
        }),
    }
}

/// A fresh database on the PostgreSQL of `HAVEN_TEST_DATABASE_URL`, or `None` without one.
pub async fn postgres() -> Option<Db> {
    use sqlx::Connection;
    let admin = std::env::var("HAVEN_TEST_DATABASE_URL").ok()?;
    let name = unique("haven_settle");
    let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut c)
        .await
        .unwrap();
    let (base, query) = admin
        .split_once('?')
        .map_or((admin.as_str(), None), |(b, q)| (b, Some(q)));
    let root = base.rsplit_once('/').map_or(base, |(r, _)| r);
    let url = match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    };
    let store = Store::open(&url, &opts()).await.unwrap();
    Some(Db {
        store,
        url,
        cleanup: Box::new(move || {
            // Its own runtime: the test's is ending.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut c)
                        .await;
                    }
                });
            })
            .join();
        }),
    })
}

/// A new active account.
pub async fn account(store: &Store) -> String {
    let id = haven_platform::id::new_id("acc");
    let now = haven_platform::clock::now_ms();
    store
        .identity()
        .insert_account(
            &Account {
                id: id.clone(),
                parent_id: None,
                name: "Clinic".into(),
                status: AccountStatus::Active,
                created_at_ms: now,
                updated_at_ms: now,
            },
            &[],
        )
        .await
        .unwrap();
    id
}
