//! The `haven` command line: version, config check/show, init, migrate, operator commands.

use crate::common::*;
use reqwest::Method;
use std::process::Command;
use std::time::{Duration, Instant};

fn run(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(bin());
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn version_and_config_check() {
    let out = run(&["version"], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("haven "));

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = 1\n[server]\nlisten = \"nowhere\"\nbody_limit_bytes = 10\n[auth]\ncredential_cache_ms = 5000\n[databse]\nurl = \"x\"\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let out = run(
        &["config", "check", "--config", bad.to_str().unwrap_or("")],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for p in ["listen", "server.listen", "databse"] {
        assert!(
            err.contains(&format!("- {p}:")),
            "{p} not reported in:\n{err}"
        );
    }
    // Environment problems are reported too, and typed values from the environment work.
    let out = run(
        &["config", "check"],
        &[
            ("HAVEN_SERVER__BODY_LIMIT_BYTES", "lots"),
            ("HAVEN_AUTH__LOCKOUT_SECONDS", "60"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.body_limit_bytes"));

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[server]\nlisten = \"127.0.0.1:9443\"\n[database]\nurl = \"postgres://haven:s3cret-pw@db.internal/haven\"\n").unwrap_or_else(|e| panic!("{e}"));
    let out = run(
        &["config", "check", "--config", good.to_str().unwrap_or("")],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &["config", "show", "--config", good.to_str().unwrap_or("")],
        &[],
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("127.0.0.1:9443"));
    assert!(
        !shown.contains("s3cret-pw"),
        "config show leaked a secret:\n{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_migrate_and_operator_commands() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path().join("data");
    let url = format!("sqlite://{}", dir.join("haven.db").display());
    // `migrate` on an empty database reports what it applied; run again, nothing.
    let out = haven_cli(&dir, &url, &["migrate"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("up to date") && !said.contains("(0 migration"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = haven_cli(&dir, &url, &["migrate"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("(0 migration(s) applied now)"));
    let out = haven_cli(&dir, &url, &["init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hks_"));
    let first = std::fs::read_to_string(dir.join("bootstrap-admin.json")).unwrap_or_default();
    // A second init changes nothing and shows no secret.
    let out = haven_cli(&dir, &url, &["init"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hks_"));
    assert_eq!(
        std::fs::read_to_string(dir.join("bootstrap-admin.json")).unwrap_or_default(),
        first
    );
    let out = haven_cli(&dir, &url, &["migrate"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("up to date"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = haven_cli(
        &dir,
        &url,
        &["accounts", "create", "--name", "Second Hospital"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tenant: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let tenant_id = tenant["id"].as_str().unwrap_or_default().to_owned();
    assert!(
        tenant["parent_account_id"].is_null(),
        "a new master account: {tenant}"
    );
    let out = haven_cli(
        &dir,
        &url,
        &[
            "keys",
            "create",
            "--account",
            &tenant_id,
            "--name",
            "ops",
            "--scope",
            "accounts:admin",
            "--scope",
            "keys:admin",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let (kid, secret) = (
        key["id"].as_str().unwrap_or_default().to_owned(),
        key["secret"].as_str().unwrap_or_default().to_owned(),
    );

    // The server sees what the CLI made, and the CLI's changes reach the running server.
    let s = Server::start_with(
        Backend::Sqlite,
        Options {
            data_dir: Some(dir.clone()),
            database_url: Some(url.clone()),
            ..Options::default()
        },
    )
    .await;
    let path = format!("/v1/accounts/{tenant_id}");
    let (st, _) = send(s.as_key(Method::GET, &path, &kid, &secret)).await;
    assert_eq!(st, 200);
    // The new tenant is isolated from the first one.
    let root: serde_json::Value = serde_json::from_str(&first).unwrap_or_default();
    expect_problem(
        s.as_key(
            Method::GET,
            &format!("/v1/accounts/{}", root["account_id"].as_str().unwrap_or("")),
            &kid,
            &secret,
        ),
        404,
        "not-found",
    )
    .await;
    let out = haven_cli(&dir, &url, &["accounts", "suspend", &tenant_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    loop {
        if send(s.as_key(Method::GET, &path, &kid, &secret)).await.0 == 401 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "suspension by the CLI did not reach the server within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = haven_cli(&dir, &url, &["accounts", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("suspended"));
    let out = haven_cli(
        &dir,
        &url,
        &["keys", "revoke", "--account", &tenant_id, &kid],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revoked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = haven_cli(
        &dir,
        &url,
        &[
            "keys",
            "create",
            "--account",
            &tenant_id,
            "--name",
            "x",
            "--scope",
            "bogus:scope",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scope"));
}
