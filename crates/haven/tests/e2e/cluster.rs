//! Several `haven serve` processes on one PostgreSQL database: what one node changes, every
//! node enforces within a second; nothing that decides correctness lives in one process.

use crate::common::*;
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};

async fn two_nodes() -> Option<(Server, Server)> {
    postgres_url()?;
    let shared = vec![
        (
            "HAVEN_SERVER__PUBLIC_URL".to_owned(),
            "https://localhost:8443".to_owned(),
        ),
        (
            "HAVEN_AUTH__MAX_FAILURES_PER_KEY".to_owned(),
            "4".to_owned(),
        ),
    ];
    let a = Server::start_with(
        Backend::Postgres,
        Options {
            env: shared.clone(),
            ..Options::default()
        },
    )
    .await;
    let mut env = shared;
    env.push((
        "HAVEN_MASTER_KEY_FILE".to_owned(),
        a.dir.join("master.key").display().to_string(),
    ));
    let mut b = Server::start_with(
        Backend::Postgres,
        Options {
            env,
            database_url: Some(a.database_url.clone()),
            ..Options::default()
        },
    )
    .await;
    // The second node found the database bootstrapped: it made no root and printed no secret.
    assert!(!b.dir.join("bootstrap-admin.json").exists());
    b.admin = a.admin.clone();
    Some((a, b))
}

/// Polls until `check` holds, returning how long it took; fails past `limit`.
async fn within<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_every_node_within_a_second() {
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    let acc = a.admin.account_id.clone();
    let (kid, secret) = create_key(&a, &acc, &["accounts:read"]).await;
    let path = format!("/v1/accounts/{acc}");
    // Warm node B's credential cache, then revoke on node A.
    for _ in 0..5 {
        let (st, _) = send(b.as_key(Method::GET, &path, &kid, &secret)).await;
        assert_eq!(st, 200);
    }
    let res = a
        .admin(Method::DELETE, &format!("/v1/accounts/{acc}/keys/{kid}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), 204);
    let took = within(Duration::from_secs(1), "revocation on node B", || async {
        send(b.as_key(Method::GET, &path, &kid, &secret)).await.0 == 401
    })
    .await;
    eprintln!("key revoked on A was refused by B after {took:?}");

    // A token issued by B works on A (shared signing keys); revoked on B, refused by A.
    let (_, t) = send(
        b.client
            .post(b.url("/oauth2/token"))
            .basic_auth(&b.admin.key_id, Some(&b.admin.secret))
            .form(&[("grant_type", "client_credentials")]),
    )
    .await;
    let token = t["access_token"].as_str().unwrap_or_default().to_owned();
    for _ in 0..3 {
        let (st, _) = send(a.bearer(Method::GET, &path, &token)).await;
        assert_eq!(st, 200);
    }
    let (st, _) = send(
        b.client
            .post(b.url("/oauth2/revoke"))
            .basic_auth(&b.admin.key_id, Some(&b.admin.secret))
            .form(&[("token", token.as_str())]),
    )
    .await;
    assert_eq!(st, 200);
    within(
        Duration::from_secs(1),
        "token revocation on node A",
        || async { send(a.bearer(Method::GET, &path, &token)).await.0 == 401 },
    )
    .await;

    // Suspension on A stops the subaccount's key on B.
    let sub = create_subaccount(&a, "Oncology").await;
    let (sk, ss) = create_key(&a, &sub, &["accounts:read"]).await;
    let sub_path = format!("/v1/accounts/{sub}");
    let (st, _) = send(b.as_key(Method::GET, &sub_path, &sk, &ss)).await;
    assert_eq!(st, 200);
    let (st, _) = send(
        a.admin(Method::PATCH, &sub_path)
            .json(&json!({"status": "suspended"})),
    )
    .await;
    assert_eq!(st, 200);
    within(Duration::from_secs(1), "suspension on node B", || async {
        send(b.as_key(Method::GET, &sub_path, &sk, &ss)).await.0 == 401
    })
    .await;

    // Failed attempts count across nodes: two on each, and the key is locked on both.
    let (lk, ls) = create_key(&a, &acc, &["accounts:read"]).await;
    for node in [&a, &b, &a, &b] {
        expect_problem(
            node.as_key(Method::GET, &path, &lk, "hks_guess"),
            401,
            "unauthenticated",
        )
        .await;
    }
    for node in [&a, &b] {
        let (st, _) = send(node.as_key(Method::GET, &path, &lk, &ls)).await;
        assert_eq!(st, 429);
    }

    // Idempotency keys are shared too: a retry sent to the other node replays.
    let create = |n: &Server| {
        n.admin(Method::POST, "/v1/accounts")
            .header("Idempotency-Key", "cluster-1")
            .json(&json!({"name": "Radiology"}))
    };
    let (_, first) = send(create(&a)).await;
    let res = create(&b).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        res.headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let replay: serde_json::Value = res.json().await.unwrap_or_default();
    assert_eq!(first["id"], replay["id"]);

    // Both nodes appended to one audit tree concurrently: it verifies whole.
    let (dir, url) = (a.dir.clone(), a.database_url.clone());
    let mut a = a;
    let mut b = b;
    a.stop();
    b.stop();
    let out = haven_cli(&dir, &url, &["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_master_key_refuses_to_start() {
    let Some(url) = postgres_url() else { return };
    let _ = url;
    let a = Server::start(Backend::Postgres).await;
    let other = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = haven_cli(
        &other.path().join("data"),
        &a.database_url,
        &["accounts", "list"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("master key does not match"), "{err}");
}

/// How Haven's own connections to the database are encrypted: `(ssl, count)` by `ssl`.
async fn haven_connections_by_tls(url: &str, database: &str) -> Vec<(bool, i64)> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    sqlx::query_as(
        "SELECT s.ssl, count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = $1 AND a.application_name = 'haven' GROUP BY s.ssl ORDER BY s.ssl",
    )
    .bind(database)
    .fetch_all(&mut c)
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A database on this host is reached without TLS unless the URL asks for it (the traffic
/// never leaves the host; see docs/configuration.md); `sslmode` in the URL is obeyed.
#[tokio::test]
async fn a_database_on_this_host_is_reached_without_tls_unless_the_url_asks() {
    let Some(admin_url) = postgres_url() else {
        return;
    };
    let mut s = Server::start(Backend::Postgres).await;
    let database = s.database_name();
    let (status, _) = send(s.admin(Method::GET, "/v1/accounts")).await;
    assert_eq!(status, 200);
    let plain = haven_connections_by_tls(&admin_url, &database).await;
    assert!(
        matches!(plain.as_slice(), [(false, n)] if *n > 0),
        "every connection in clear on loopback: {plain:?}"
    );
    s.stop();

    // When the server offers TLS, `sslmode=require` in the URL is kept.
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut c)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    if ssl != "on" {
        eprintln!("the test server offers no TLS: only the default was checked");
        return;
    }
    let sep = if s.database_url.contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!("{}{sep}sslmode=require", s.database_url);
    let t = Server::start_with(
        Backend::Postgres,
        Options {
            database_url: Some(url),
            env: vec![(
                "HAVEN_MASTER_KEY_FILE".to_owned(),
                s.dir.join("master.key").display().to_string(),
            )],
            ..Options::default()
        },
    )
    .await;
    // The first node's backends may take a moment to go after it stopped.
    within(
        Duration::from_secs(5),
        "every connection over TLS",
        || async {
            let encrypted = haven_connections_by_tls(&admin_url, &database).await;
            matches!(encrypted.as_slice(), [(true, n)] if *n > 0)
        },
    )
    .await;
    drop(t);
}
