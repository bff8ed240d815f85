//! Test harness: boots the real `haven` binary on 127.0.0.1 port 0 over HTTPS with a fresh
//! data directory (and, on PostgreSQL, a fresh database), and talks to it as a client would.

#![allow(dead_code)]

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a scenario once per backend.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::common::postgres_url().is_none() { return; }
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    )+};
}

/// The PostgreSQL server to test against. `scripts/test` starts a throwaway one when
/// `HAVEN_TEST_DATABASE_URL` is unset; running `cargo test` directly without it fails the
/// PostgreSQL half loudly unless `HAVEN_TEST_SKIP_POSTGRES=1`.
pub fn postgres_url() -> Option<String> {
    match std::env::var("HAVEN_TEST_DATABASE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var("HAVEN_TEST_SKIP_POSTGRES").as_deref() == Ok("1") => {
            eprintln!("skipping the PostgreSQL run: HAVEN_TEST_SKIP_POSTGRES=1");
            None
        }
        _ => panic!(
            "HAVEN_TEST_DATABASE_URL is not set: run scripts/test (it starts a throwaway PostgreSQL), or set HAVEN_TEST_SKIP_POSTGRES=1"
        ),
    }
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

/// A new, empty PostgreSQL database; dropped with the server.
pub async fn fresh_postgres_database() -> (String, String) {
    use sqlx::Connection;
    let admin_url = postgres_url().unwrap_or_default();
    let name = format!("haven_t_{}", haven_platform_id());
    let mut conn = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("connect {admin_url}: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("create db: {e}"));
    let _ = conn.close().await;
    (with_database(&admin_url, &name), name)
}

fn drop_postgres_database(name: &str) {
    let Some(admin_url) = postgres_url() else {
        return;
    };
    let name = name.to_owned();
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use sqlx::Connection;
            if let Ok(mut c) = sqlx::PgConnection::connect(&admin_url).await {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut c)
                .await;
            }
        });
    })
    .join();
}

fn haven_platform_id() -> String {
    // Lowercase, unique enough for database names.
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", n, std::process::id())
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Admin {
    pub account_id: String,
    pub key_id: String,
    pub secret: String,
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub env: Vec<(String, String)>,
    /// Reuse a data directory (restart); otherwise a fresh one.
    pub data_dir: Option<PathBuf>,
    /// Use this database instead of a fresh one (several nodes, restarts).
    pub database_url: Option<String>,
    /// Serve plain HTTP (server.tls.enabled = false).
    pub plain_http: bool,
}

pub struct Server {
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
    pub dir: PathBuf,
    pub base: String,
    pub port: u16,
    pub client: reqwest::Client,
    pub admin: Admin,
    pub backend: Backend,
    pub database_url: String,
    pg_database: Option<String>,
    opts: Options,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_haven")
}

pub fn client_for(dir: &Path) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy();
    let builder = match std::fs::read(dir.join("tls/cert.pem")) {
        Ok(pem) => builder.tls_certs_only([
            reqwest::Certificate::from_pem(&pem).unwrap_or_else(|e| panic!("cert: {e}"))
        ]),
        Err(_) => builder,
    };
    builder.build().unwrap_or_else(|e| panic!("client: {e}"))
}

impl Server {
    pub async fn start(backend: Backend) -> Server {
        Self::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, opts: Options) -> Server {
        let (tmp, dir) = match &opts.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("haven-e2e-")
                    .tempdir()
                    .unwrap_or_else(|e| panic!("tempdir: {e}"));
                let d = t.path().join("data");
                (Some(t), d)
            }
        };
        let (database_url, pg_database) = match (backend, &opts.database_url) {
            (_, Some(u)) => (u.clone(), None),
            (Backend::Sqlite, None) => {
                (format!("sqlite://{}", dir.join("haven.db").display()), None)
            }
            (Backend::Postgres, None) => {
                let (u, n) = fresh_postgres_database().await;
                (u, Some(n))
            }
        };
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
        let mut server = Server {
            child: None,
            _tmp: tmp,
            dir,
            base: String::new(),
            port: 0,
            client: reqwest::Client::new(),
            admin: Admin {
                account_id: String::new(),
                key_id: String::new(),
                secret: String::new(),
            },
            backend,
            database_url,
            pg_database,
            opts,
        };
        server.launch().await;
        server
    }

    /// Starts `haven serve` on this server's data directory and database and waits until it
    /// listens; picks up the bootstrap credential when the data directory has one.
    async fn launch(&mut self) {
        let dir = self.dir.clone();
        let _ = std::fs::remove_file(dir.join("listen.addr"));
        let log = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .unwrap_or_else(|e| panic!("log: {e}"))
        };
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&dir)
            .args(["--database-url", &self.database_url])
            .env("HAVEN_LOG__LEVEL", "info")
            .env("HAVEN_OAUTH__KEYSET_REFRESH_SECONDS", "1")
            .stdin(Stdio::null())
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"));
        if self.opts.plain_http {
            cmd.env("HAVEN_SERVER__TLS__ENABLED", "false");
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("spawn haven: {e}")));
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(dir.join("listen.addr"))
                && a.ends_with('\n')
            {
                break a.trim().to_owned();
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "haven exited with {status} while starting:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "haven did not start:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("bad addr {addr}"));
        self.base = format!(
            "{}://127.0.0.1:{}",
            if self.opts.plain_http {
                "http"
            } else {
                "https"
            },
            self.port
        );
        self.client = client_for(&dir);
        if let Ok(text) = std::fs::read_to_string(dir.join("bootstrap-admin.json")) {
            self.admin =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("bootstrap file: {e}"));
        }
    }

    /// Stops the server (if running) and starts it again on the same data directory and
    /// database; both stay owned by this server and are cleaned up with it.
    pub async fn restart(&mut self) {
        self.stop();
        self.launch().await;
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default()
    }

    /// Everything the server logged, read after stopping it: log lines are written by a thread
    /// of their own, and a clean stop writes all that is still queued. Tests that search the log
    /// for what must never be there read it this way, so no line escapes them.
    pub fn stopped_logs(&mut self) -> String {
        self.stop_flushed();
        format!("{}{}", self.stderr(), self.stdout())
    }

    /// Stops the server with SIGTERM and checks that it exited cleanly with its last log line
    /// (`stopped`) written: the proof that the queued log lines reached standard error.
    pub fn stop_flushed(&mut self) {
        let status = self.stop();
        assert!(
            status.is_some_and(|s| s.success()),
            "the server did not stop cleanly: {status:?}"
        );
        let err = self.stderr();
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        assert!(
            last.contains("\"stopped\""),
            "the last log line is not the stop line: {last}"
        );
    }

    /// The PostgreSQL database's name, from the URL.
    pub fn database_name(&self) -> String {
        self.database_url
            .rsplit('/')
            .next()
            .and_then(|d| d.split('?').next())
            .unwrap_or_default()
            .to_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The Prometheus exposition at `/metrics`.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .text()
            .await
            .unwrap_or_default()
    }

    /// A request authenticated as the bootstrap admin.
    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .basic_auth(&self.admin.key_id, Some(&self.admin.secret))
    }

    pub fn as_key(&self, method: Method, path: &str, key_id: &str, secret: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .basic_auth(key_id, Some(secret))
    }

    pub fn bearer(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
    }

    /// Stops with SIGTERM and returns the exit status.
    /// SIGKILL: no shutdown, no flush, as in a power cut.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(db) = self.pg_database.take() {
            drop_postgres_database(&db);
        }
    }
}

/// Status and JSON body (Null when empty or not JSON).
pub async fn send(rb: RequestBuilder) -> (StatusCode, Value) {
    let res = rb
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}"));
    let status = res.status();
    let body = res.bytes().await.unwrap_or_default();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Asserts a problem+json response of the given status and type slug.
pub async fn expect_problem(rb: RequestBuilder, status: u16, slug: &str) -> Value {
    let res = rb
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}"));
    let got = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let rid = res
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    assert_eq!(got, status, "expected {status} {slug}, got {got}: {body}");
    assert_eq!(ct, "application/problem+json", "content type of {body}");
    assert_eq!(body["type"], format!("/problems/{slug}"), "{body}");
    assert_eq!(body["status"], status);
    assert_eq!(body["instance"], rid, "instance must be the request id");
    body
}

pub async fn create_subaccount(s: &Server, name: &str) -> String {
    let (st, body) = send(
        s.admin(Method::POST, "/v1/accounts")
            .json(&serde_json::json!({ "name": name })),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    body["id"].as_str().unwrap_or_default().to_owned()
}

/// Creates a key on `account` as the admin; returns (key id, secret).
pub async fn create_key(s: &Server, account: &str, scopes: &[&str]) -> (String, String) {
    let (st, body) = send(
        s.admin(Method::POST, &format!("/v1/accounts/{account}/keys"))
            .json(&serde_json::json!({ "name": "test key", "scopes": scopes })),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    (
        body["id"].as_str().unwrap_or_default().to_owned(),
        body["secret"].as_str().unwrap_or_default().to_owned(),
    )
}

pub const ALL_SCOPES: &[&str] = &[
    "accounts:admin",
    "keys:admin",
    "audit:admin",
    "webhooks:admin",
    "messages:admin",
    "templates:admin",
    "dispatch:admin",
    "reports:admin",
];

/// The Python interpreter of the test venv, where the third-party clients live.
pub fn python() -> String {
    std::env::var("HAVEN_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a command of the Haven binary against a data directory and database.
pub fn haven_cli(dir: &Path, database_url: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(["--data-dir"])
        .arg(dir)
        .args(["--database-url", database_url])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("haven cli: {e}"))
}
