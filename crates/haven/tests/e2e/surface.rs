//! The HTTP surface: the OpenAPI document (validated by a third-party validator and checked
//! against the routes), problem pages, health, readiness, metrics, logs and plain HTTP.

use crate::both_backends;
use crate::common::*;
use reqwest::Method;
use std::process::Command;

both_backends!(openapi_is_valid_and_complete, health_metrics_and_logs);

/// Every operation the server must document.
const EXPECTED: &[&str] = &[
    "POST /v1/accounts",
    "GET /v1/accounts",
    "GET /v1/accounts/{account_id}",
    "PATCH /v1/accounts/{account_id}",
    "POST /v1/accounts/{account_id}/keys",
    "GET /v1/accounts/{account_id}/keys",
    "GET /v1/accounts/{account_id}/keys/{key_id}",
    "DELETE /v1/accounts/{account_id}/keys/{key_id}",
    "POST /v1/accounts/{account_id}/keys/{key_id}/rotate",
    "GET /v1/audit/events",
    "GET /v1/audit/events/{event_id}/proof",
    "GET /v1/audit/tree-head",
    "GET /v1/audit/consistency",
    "POST /oauth2/token",
    "POST /oauth2/revoke",
    "POST /oauth2/introspect",
    "GET /.well-known/oauth-authorization-server",
    "GET /.well-known/jwks.json",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /v1/openapi.json",
    "GET /problems/{slug}",
];

async fn openapi_is_valid_and_complete(backend: Backend) {
    let s = Server::start(backend).await;
    let out = Command::new(python())
        .arg(repo_root().join("tests/py/validate_openapi.py"))
        .args(["--url", &s.url("/v1/openapi.json"), "--ca-file"])
        .arg(s.dir.join("tls/cert.pem"))
        .output()
        .unwrap_or_else(|e| panic!("python: {e}"));
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(report["valid"], true);
    assert!(report["openapi"].as_str().unwrap_or("").starts_with("3.1"));
    let documented: Vec<String> = report["paths"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect();
    for op in EXPECTED {
        assert!(
            documented.iter().any(|d| d == op),
            "{op} is not documented; documented: {documented:?}"
        );
    }
    // And every documented operation is routed: no 404 "no such route", no 405.
    let sub = create_subaccount(&s, "probe").await;
    let (key, _) = create_key(&s, &sub, &["accounts:read"]).await;
    for op in &documented {
        let (method, path) = op.split_once(' ').unwrap_or(("GET", op));
        let concrete = path
            .replace("{account_id}", &sub)
            .replace("{key_id}", &key)
            .replace("{slug}", "not-found")
            .replace("{event_id}", "evt_00000000000000000000000000");
        let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
        let res = s
            .admin(method, &concrete)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let status = res.status().as_u16();
        let body: serde_json::Value = res.json().await.unwrap_or_default();
        assert_ne!(status, 405, "{op} is documented but not routed");
        assert_ne!(
            body["type"], "/problems/no-such-route",
            "{op} is documented but not routed"
        );
        assert!(status < 500, "{op} answered {status}");
    }
    // Error types are documented and each is served as a page.
    for slug in [
        "validation-failed",
        "unauthenticated",
        "not-found",
        "unknown-field",
        "auth-locked-out",
        "internal-error",
    ] {
        let res = s
            .client
            .get(s.url(&format!("/problems/{slug}")))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(res.status(), 200);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap_or("")
                .starts_with("text/html")
        );
        assert!(
            res.text()
                .await
                .unwrap_or_default()
                .contains(&format!("/problems/{slug}"))
        );
    }
    expect_problem(
        s.client.get(s.url("/problems/no-such-problem")),
        404,
        "not-found",
    )
    .await;
}

async fn health_metrics_and_logs(backend: Backend) {
    let mut s = Server::start(backend).await;
    let (st, h) = send(s.client.get(s.url("/healthz"))).await;
    assert_eq!((st.as_u16(), h["status"].as_str()), (200, Some("ok")));
    let (st, r) = send(s.client.get(s.url("/readyz"))).await;
    assert_eq!((st.as_u16(), r["status"].as_str()), (200, Some("ready")));
    let _ = send(s.admin(Method::GET, "/v1/accounts")).await;
    let metrics = s.metrics().await;
    assert!(metrics.contains("haven_http_requests_total"), "{metrics}");
    assert!(metrics.contains("route=\"/v1/accounts\""), "{metrics}");
    // The lag probes wake every 10 ms; each has counted by now, in the buckets it was given.
    let mut seen = String::new();
    for _ in 0..40 {
        seen = s.metrics().await;
        if [
            "haven_runtime_lag_seconds_count",
            "haven_thread_lag_seconds_count",
        ]
        .iter()
        .all(|n| seen.contains(n))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for name in [
        "haven_runtime_lag_seconds_bucket{le=\"0.001\"}",
        "haven_thread_lag_seconds_bucket{le=\"2.5\"}",
    ] {
        assert!(seen.contains(name), "{name} missing:\n{seen}");
    }
    if backend == Backend::Sqlite {
        // Start-up wrote through the one writer (bootstrap, audit), so both are there, as
        // cumulative histograms (not summaries, whose window forgets a stall).
        for name in [
            "haven_sqlite_writer_wait_seconds_count{writer=\"foreground\"}",
            "haven_sqlite_writer_hold_seconds_bucket{writer=\"foreground\",le=\"0.001\"}",
        ] {
            assert!(metrics.contains(name), "{name} missing:\n{metrics}");
        }
        // The WAL is checkpointed in the background, every 500 ms, and not by the writer.
        let mut seen = String::new();
        for _ in 0..40 {
            seen = s.metrics().await;
            if seen.contains("haven_sqlite_checkpoint_seconds_count") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        for name in [
            "haven_sqlite_checkpoint_seconds_count",
            "haven_sqlite_wal_frames ",
            "haven_sqlite_wal_frames_pending ",
        ] {
            assert!(seen.contains(name), "{name} missing:\n{seen}");
        }
    }
    // Logs are JSON lines, with the request id and route, and without secrets (read after a
    // stop, which writes every queued line).
    s.stop_flushed();
    let log = s.stderr();
    let access: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["target"] == "haven::access")
        .collect();
    assert!(!access.is_empty(), "no access log lines in:\n{log}");
    assert!(access.iter().any(|l| l["route"] == "/v1/accounts"
        && l["request_id"].as_str().unwrap_or("").starts_with("req_")));
    for line in log.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON log line: {line}"
        );
    }
    assert!(!log.contains(&s.admin.secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_only_when_configured_and_warned() {
    let s = Server::start_with(
        Backend::Sqlite,
        Options {
            plain_http: true,
            ..Options::default()
        },
    )
    .await;
    assert!(s.stderr().contains("TLS IS DISABLED"), "{}", s.stderr());
    let (st, _) =
        send(reqwest::Client::new().get(format!("http://127.0.0.1:{}/healthz", s.port))).await;
    assert_eq!(st, 200);
}
