//! First start, accounts and subaccounts, API keys and their lifecycle, idempotency.

use crate::both_backends;
use crate::common::*;
use reqwest::Method;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

both_backends!(
    first_start_and_first_call,
    subaccounts_and_suspension,
    key_lifecycle,
    idempotent_creates,
    restart_keeps_state
);

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0)
}

async fn first_start_and_first_call(backend: Backend) {
    let mut s = Server::start(backend).await;
    // Secrets on disk are readable only by their owner.
    assert_eq!(mode(&s.dir.join("master.key")), 0o600);
    assert_eq!(mode(&s.dir.join("bootstrap-admin.json")), 0o600);
    assert_eq!(mode(&s.dir.join("tls/key.pem")), 0o600);
    assert!(s.admin.key_id.starts_with("hk_") && s.admin.secret.starts_with("hks_"));
    assert!(s.admin.account_id.starts_with("acc_"));
    // The secret is printed once on standard output, and never reaches the log.
    assert!(s.stdout().contains(&s.admin.secret));

    // The self-signed certificate covers localhost and 127.0.0.1, trusted as a CA file.
    for host in ["127.0.0.1", "localhost"] {
        let url = format!(
            "https://{host}:{}/v1/accounts/{}",
            s.port, s.admin.account_id
        );
        let res = s
            .client
            .get(&url)
            .basic_auth(&s.admin.key_id, Some(&s.admin.secret))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(res.status(), 200);
        let h = res.headers();
        assert!(h["x-request-id"].to_str().unwrap_or("").starts_with("req_"));
        assert_eq!(h["cache-control"], "no-store");
        assert!(
            h["strict-transport-security"]
                .to_str()
                .unwrap_or("")
                .starts_with("max-age=")
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        let body: serde_json::Value = res.json().await.unwrap_or_default();
        assert_eq!(body["id"], s.admin.account_id);
        assert_eq!(body["status"], "active");
        assert!(body["parent_account_id"].is_null());
    }
    // Plain HTTP to the TLS port is not served.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", s.port))
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));

    // Read last: stopping the server flushes its log.
    s.stop_flushed();
    assert!(!s.stderr().contains(&s.admin.secret));
}

async fn subaccounts_and_suspension(backend: Backend) {
    let s = Server::start(backend).await;
    let mut ids = Vec::new();
    for name in ["Cardiology", "Oncology", "Radiology"] {
        ids.push(create_subaccount(&s, name).await);
    }
    // Paged list: the master and its three subaccounts, two at a time.
    let (st, p1) = send(s.admin(Method::GET, "/v1/accounts?page_size=2")).await;
    assert_eq!(st, 200);
    assert_eq!(p1["items"].as_array().map(Vec::len), Some(2));
    let cursor = p1["next_cursor"].as_str().unwrap_or_default().to_owned();
    let (_, p2) = send(s.admin(
        Method::GET,
        &format!("/v1/accounts?page_size=2&cursor={cursor}"),
    ))
    .await;
    assert_eq!(p2["items"].as_array().map(Vec::len), Some(2));
    assert!(p2["next_cursor"].is_null());
    let mut seen: Vec<String> = p1["items"]
        .as_array()
        .into_iter()
        .chain(p2["items"].as_array())
        .flatten()
        .map(|a| a["id"].as_str().unwrap_or("").to_owned())
        .collect();
    seen.sort();
    let mut expected = ids.clone();
    expected.push(s.admin.account_id.clone());
    expected.sort();
    assert_eq!(seen, expected);

    let cardio = &ids[0];
    let (kid, secret) = create_key(&s, cardio, &["accounts:admin", "keys:admin"]).await;
    let (st, me) = send(s.as_key(
        Method::GET,
        &format!("/v1/accounts/{cardio}"),
        &kid,
        &secret,
    ))
    .await;
    assert_eq!(st, 200);
    assert_eq!(me["parent_account_id"], s.admin.account_id);
    // A subaccount sees only itself, and cannot create subaccounts or change its own status.
    let (_, list) = send(s.as_key(Method::GET, "/v1/accounts", &kid, &secret)).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    expect_problem(
        s.as_key(Method::POST, "/v1/accounts", &kid, &secret)
            .json(&json!({"name": "x"})),
        403,
        "forbidden",
    )
    .await;
    expect_problem(
        s.as_key(
            Method::PATCH,
            &format!("/v1/accounts/{cardio}"),
            &kid,
            &secret,
        )
        .json(&json!({"status": "suspended"})),
        403,
        "forbidden",
    )
    .await;

    // Rename, then suspend: the subaccount's key stops at once; reactivate: it works again.
    let (st, renamed) = send(
        s.admin(Method::PATCH, &format!("/v1/accounts/{cardio}"))
            .json(&json!({"name": "Cardiology East"})),
    )
    .await;
    assert_eq!(
        (st.as_u16(), renamed["name"].as_str()),
        (200, Some("Cardiology East"))
    );
    let (st, sus) = send(
        s.admin(Method::PATCH, &format!("/v1/accounts/{cardio}"))
            .json(&json!({"status": "suspended"})),
    )
    .await;
    assert_eq!(
        (st.as_u16(), sus["status"].as_str()),
        (200, Some("suspended"))
    );
    expect_problem(
        s.as_key(
            Method::GET,
            &format!("/v1/accounts/{cardio}"),
            &kid,
            &secret,
        ),
        401,
        "unauthenticated",
    )
    .await;
    let (st, _) = send(
        s.admin(Method::PATCH, &format!("/v1/accounts/{cardio}"))
            .json(&json!({"status": "active"})),
    )
    .await;
    assert_eq!(st, 200);
    let (st, _) = send(s.as_key(
        Method::GET,
        &format!("/v1/accounts/{cardio}"),
        &kid,
        &secret,
    ))
    .await;
    assert_eq!(st, 200);
    let body = expect_problem(
        s.admin(Method::PATCH, &format!("/v1/accounts/{cardio}"))
            .json(&json!({"status": "paused", "name": ""})),
        422,
        "validation-failed",
    )
    .await;
    assert_eq!(body["errors"].as_array().map(Vec::len), Some(2), "{body}");
}

async fn key_lifecycle(backend: Backend) {
    let s = Server::start(backend).await;
    let acc = s.admin.account_id.clone();
    let path = format!("/v1/accounts/{acc}/keys");
    let (st, created) = send(s.admin(Method::POST, &path).json(&json!({
        "name": "reminders", "scopes": ["accounts:read"], "allowed_cidrs": ["127.0.0.1", "10.0.0.0/8"],
        "expires_at": "2099-01-01T00:00:00Z"
    })))
    .await;
    assert_eq!(st, 201, "{created}");
    let kid = created["id"].as_str().unwrap_or_default().to_owned();
    let secret = created["secret"].as_str().unwrap_or_default().to_owned();
    assert_eq!(created["scopes"], json!(["accounts:read"]));
    assert_eq!(
        created["allowed_cidrs"],
        json!(["127.0.0.1/32", "10.0.0.0/8"])
    );
    assert_eq!(created["status"], "active");
    // The secret is shown once: reads never include it.
    let (_, read) = send(s.admin(Method::GET, &format!("{path}/{kid}"))).await;
    assert!(read.get("secret").is_none());
    let (_, list) = send(s.admin(Method::GET, &path)).await;
    assert!(list.to_string().find("hks_").is_none());

    // Scopes are enforced, and a key cannot grant what its creator lacks.
    let (st, _) = send(s.as_key(Method::GET, &format!("/v1/accounts/{acc}"), &kid, &secret)).await;
    assert_eq!(st, 200);
    expect_problem(
        s.as_key(Method::GET, &path, &kid, &secret),
        403,
        "insufficient-scope",
    )
    .await;
    let (k2, s2) = create_key(&s, &acc, &["keys:admin"]).await;
    let body = expect_problem(
        s.as_key(Method::POST, &path, &k2, &s2)
            .json(&json!({"name": "escalate", "scopes": ["accounts:admin"]})),
        422,
        "validation-failed",
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "scopes");

    // last_used_at is recorded.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, read) = send(s.admin(Method::GET, &format!("{path}/{kid}"))).await;
    assert!(read["last_used_at"].is_string(), "{read}");

    // An allowlist that excludes loopback refuses the key from here.
    let (st, far) = send(s.admin(Method::POST, &path).json(
        &json!({"name": "far", "scopes": ["accounts:read"], "allowed_cidrs": ["10.9.0.0/16"]}),
    ))
    .await;
    assert_eq!(st, 201);
    expect_problem(
        s.as_key(
            Method::GET,
            &format!("/v1/accounts/{acc}"),
            far["id"].as_str().unwrap_or(""),
            far["secret"].as_str().unwrap_or(""),
        ),
        403,
        "address-not-allowed",
    )
    .await;

    // Rotation with a grace period: both secrets work, then only the new one.
    let (st, rotated) = send(
        s.admin(Method::POST, &format!("{path}/{kid}/rotate"))
            .json(&json!({"grace_period_seconds": 2})),
    )
    .await;
    assert_eq!(st, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap_or_default().to_owned();
    assert_ne!(new_secret, secret);
    assert!(rotated["previous_secret_expires_at"].is_string());
    for sec in [&secret, &new_secret] {
        let (st, _) = send(s.as_key(Method::GET, &format!("/v1/accounts/{acc}"), &kid, sec)).await;
        assert_eq!(st, 200);
    }
    tokio::time::sleep(Duration::from_millis(2600)).await;
    expect_problem(
        s.as_key(Method::GET, &format!("/v1/accounts/{acc}"), &kid, &secret),
        401,
        "unauthenticated",
    )
    .await;
    let (st, _) = send(s.as_key(
        Method::GET,
        &format!("/v1/accounts/{acc}"),
        &kid,
        &new_secret,
    ))
    .await;
    assert_eq!(st, 200);
    // Without a grace period the old secret stops at once.
    let (_, r2) = send(s.admin(Method::POST, &format!("{path}/{kid}/rotate"))).await;
    expect_problem(
        s.as_key(
            Method::GET,
            &format!("/v1/accounts/{acc}"),
            &kid,
            &new_secret,
        ),
        401,
        "unauthenticated",
    )
    .await;
    let newest = r2["secret"].as_str().unwrap_or_default().to_owned();
    expect_problem(
        s.admin(Method::POST, &format!("{path}/{kid}/rotate"))
            .json(&json!({"grace_period_seconds": 99999999})),
        422,
        "validation-failed",
    )
    .await;

    // Revocation is immediate and idempotent; a revoked key cannot be rotated.
    let res = s
        .admin(Method::DELETE, &format!("{path}/{kid}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), 204);
    let res = s
        .admin(Method::DELETE, &format!("{path}/{kid}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), 204);
    expect_problem(
        s.as_key(Method::GET, &format!("/v1/accounts/{acc}"), &kid, &newest),
        401,
        "unauthenticated",
    )
    .await;
    let (_, read) = send(s.admin(Method::GET, &format!("{path}/{kid}"))).await;
    assert_eq!(read["status"], "revoked");
    expect_problem(
        s.admin(Method::POST, &format!("{path}/{kid}/rotate")),
        409,
        "conflict",
    )
    .await;

    // Expiry.
    let soon = time_in(Duration::from_secs(2));
    let (_, short) = send(
        s.admin(Method::POST, &path)
            .json(&json!({"name": "short", "scopes": ["accounts:read"], "expires_at": soon})),
    )
    .await;
    let (sk, ss) = (
        short["id"].as_str().unwrap_or("").to_owned(),
        short["secret"].as_str().unwrap_or("").to_owned(),
    );
    let (st, _) = send(s.as_key(Method::GET, &format!("/v1/accounts/{acc}"), &sk, &ss)).await;
    assert_eq!(st, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    expect_problem(
        s.as_key(Method::GET, &format!("/v1/accounts/{acc}"), &sk, &ss),
        401,
        "unauthenticated",
    )
    .await;
}

pub fn time_in(d: Duration) -> String {
    let t = std::time::SystemTime::now() + d;
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // RFC 3339 by hand, to keep the test independent of the server's time code.
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

async fn idempotent_creates(backend: Backend) {
    let s = Server::start(backend).await;
    let req = || {
        s.admin(Method::POST, "/v1/accounts")
            .header("Idempotency-Key", "create-cardio-1")
            .json(&json!({"name": "Cardiology"}))
    };
    let first = req().send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.status(), 201);
    let first_body: serde_json::Value = first.json().await.unwrap_or_default();
    let again = req().send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.status(), 201);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let again_body: serde_json::Value = again.json().await.unwrap_or_default();
    assert_eq!(first_body, again_body);
    // Same key, different request.
    expect_problem(
        s.admin(Method::POST, "/v1/accounts")
            .header("Idempotency-Key", "create-cardio-1")
            .json(&json!({"name": "Oncology"})),
        422,
        "idempotency-key-reused",
    )
    .await;
    // Only one account was created.
    let (_, list) = send(s.admin(Method::GET, "/v1/accounts")).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
    // A refused request does not burn the key: corrected, it goes through.
    expect_problem(
        s.admin(Method::POST, "/v1/accounts")
            .header("Idempotency-Key", "k2")
            .json(&json!({"name": ""})),
        422,
        "validation-failed",
    )
    .await;
    let (st, _) = send(
        s.admin(Method::POST, "/v1/accounts")
            .header("Idempotency-Key", "k2")
            .json(&json!({"name": "Radiology"})),
    )
    .await;
    assert_eq!(st, 201);
    // Keys are idempotent too: the replay returns the same key and secret.
    let path = format!("/v1/accounts/{}/keys", s.admin.account_id);
    let mk = || {
        s.admin(Method::POST, &path)
            .header("Idempotency-Key", "key-1")
            .json(&json!({"name": "k", "scopes": ["accounts:read"]}))
    };
    let (_, a) = send(mk()).await;
    let (_, b) = send(mk()).await;
    assert_eq!(a["id"], b["id"]);
    expect_problem(
        s.admin(Method::POST, "/v1/accounts")
            .header("Idempotency-Key", "")
            .json(&json!({"name": "x"})),
        400,
        "malformed-request",
    )
    .await;
}

async fn restart_keeps_state(backend: Backend) {
    let mut s = Server::start(backend).await;
    let sub = create_subaccount(&s, "Cardiology").await;
    s.restart().await;
    // No second bootstrap: the root and its key are the same.
    assert_eq!(s.stdout().matches("Created the root account").count(), 1);
    let (st, body) = send(s.admin(Method::GET, &format!("/v1/accounts/{sub}"))).await;
    assert_eq!(
        (st.as_u16(), body["name"].as_str()),
        (200, Some("Cardiology"))
    );
    // A clean stop exits 0.
    assert_eq!(s.stop().map(|st| st.success()), Some(true));
}
