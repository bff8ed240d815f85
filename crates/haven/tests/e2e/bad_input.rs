//! Bad input of every kind gets a clear 4xx problem, never a 500, and changes nothing.

use crate::both_backends;
use crate::common::*;
use reqwest::Method;
use serde_json::json;

both_backends!(
    bad_input_is_refused_cleanly,
    failed_authentication_locks_out
);

async fn account_count(s: &Server) -> usize {
    let (_, list) = send(s.admin(Method::GET, "/v1/accounts?page_size=200")).await;
    list["items"].as_array().map(Vec::len).unwrap_or(0)
}

async fn bad_input_is_refused_cleanly(backend: Backend) {
    let mut s = Server::start_with(
        backend,
        Options {
            env: vec![("HAVEN_SERVER__BODY_LIMIT_BYTES".into(), "2048".into())],
            ..Options::default()
        },
    )
    .await;
    let before = account_count(&s).await;
    let acc = s.admin.account_id.clone();
    let post = || s.admin(Method::POST, "/v1/accounts");

    expect_problem(
        post()
            .header("content-type", "application/json")
            .body("{\"name\": "),
        400,
        "invalid-json",
    )
    .await;
    expect_problem(
        post()
            .header("content-type", "application/json")
            .body("{\"name\": \"a\"} trailing"),
        400,
        "invalid-json",
    )
    .await;
    expect_problem(
        post()
            .header("content-type", "application/json")
            .body("[1,2]"),
        422,
        "validation-failed",
    )
    .await;
    expect_problem(
        post()
            .header("content-type", "text/plain")
            .body("{\"name\": \"a\"}"),
        415,
        "unsupported-media-type",
    )
    .await;
    expect_problem(
        post().body("{\"name\": \"a\"}"),
        415,
        "unsupported-media-type",
    )
    .await;
    let big = format!("{{\"name\": \"{}\"}}", "a".repeat(5000));
    expect_problem(
        post().header("content-type", "application/json").body(big),
        413,
        "payload-too-large",
    )
    .await;
    let body = expect_problem(
        post().json(&json!({"name": "a", "admin": true})),
        400,
        "unknown-field",
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "admin");
    let body = expect_problem(post().json(&json!({"name": 42})), 422, "validation-failed").await;
    assert_eq!(body["errors"][0]["field"], "name");
    expect_problem(post().json(&json!({})), 422, "validation-failed").await;
    expect_problem(
        post().json(&json!({"name": "x".repeat(101)})),
        422,
        "validation-failed",
    )
    .await;
    expect_problem(
        post().json(&json!({"name": "bad\u{0000}name"})),
        422,
        "validation-failed",
    )
    .await;
    let body = expect_problem(
        s.admin(Method::POST, &format!("/v1/accounts/{acc}/keys")).json(&json!({"name": "k", "scopes": ["root:everything", "keys:read"], "allowed_cidrs": ["not-a-cidr"], "expires_at": "2001-01-01T00:00:00Z"})),
        422,
        "validation-failed",
    )
    .await;
    assert_eq!(body["errors"].as_array().map(Vec::len), Some(3), "{body}");

    // Injection-shaped strings are data, stored and returned literally.
    let sneaky = "Robert'); DROP TABLE accounts;-- <script>alert(1)</script>";
    let (st, created) = send(post().json(&json!({"name": sneaky}))).await;
    assert_eq!(st, 201);
    assert_eq!(created["name"], sneaky);

    // Ids that cannot exist, in every shape.
    for id in [
        "acc_doesnotexist",
        "acc_' OR '1'='1",
        "..%2F..%2Fetc%2Fpasswd",
        "hk_01m80pvp8jqmqq9hqne08e0a9m",
        &"a".repeat(300),
    ] {
        let path = format!("/v1/accounts/{}", urlencode(id));
        expect_problem(s.admin(Method::GET, &path), 404, "not-found").await;
        expect_problem(
            s.admin(Method::GET, &format!("{path}/keys")),
            404,
            "not-found",
        )
        .await;
        expect_problem(
            s.admin(
                Method::DELETE,
                &format!("/v1/accounts/{acc}/keys/{}", urlencode(id)),
            ),
            404,
            "not-found",
        )
        .await;
    }
    expect_problem(
        s.admin(Method::GET, "/v1/accounts?page_size=abc"),
        400,
        "malformed-request",
    )
    .await;
    expect_problem(
        s.admin(Method::GET, "/v1/accounts?page_size=0"),
        400,
        "malformed-request",
    )
    .await;
    expect_problem(
        s.admin(Method::GET, "/v1/accounts?cursor=%27%20OR%201%3D1"),
        400,
        "malformed-request",
    )
    .await;
    expect_problem(
        s.admin(Method::GET, "/v1/accounts?sort=name"),
        400,
        "malformed-request",
    )
    .await;
    expect_problem(
        s.admin(Method::PUT, "/v1/accounts"),
        405,
        "method-not-allowed",
    )
    .await;
    expect_problem(
        s.admin(Method::GET, "/v1/nothing-here"),
        404,
        "no-such-route",
    )
    .await;

    // Credentials of every wrong kind.
    expect_problem(s.client.get(s.url("/v1/accounts")), 401, "unauthenticated").await;
    expect_problem(
        s.as_key(Method::GET, "/v1/accounts", &s.admin.key_id, "hks_wrong"),
        401,
        "unauthenticated",
    )
    .await;
    expect_problem(
        s.as_key(Method::GET, "/v1/accounts", "hk_' OR 1=1 --", "x"),
        401,
        "unauthenticated",
    )
    .await;
    for header in [
        "Basic",
        "Basic !!!notbase64",
        "Digest abc",
        "Bearer ",
        "Bearer a.b.c",
        &format!("Bearer {}", "x".repeat(9000)),
    ] {
        expect_problem(
            s.client
                .get(s.url("/v1/accounts"))
                .header("authorization", header),
            401,
            "unauthenticated",
        )
        .await;
    }
    let res = s
        .client
        .get(s.url("/v1/accounts"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(res.headers().get("www-authenticate").is_some());

    // OAuth endpoints refuse malformed requests in OAuth's own format.
    let (st, e) = send(
        s.client
            .post(s.url("/oauth2/token"))
            .json(&json!({"grant_type": "client_credentials"})),
    )
    .await;
    assert_eq!(
        (st.as_u16(), e["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (st, e) = send(
        s.client
            .post(s.url("/oauth2/token"))
            .basic_auth(&s.admin.key_id, Some(&s.admin.secret))
            .form(&[("grant_type", "password")]),
    )
    .await;
    assert_eq!(
        (st.as_u16(), e["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let (st, e) = send(
        s.client
            .post(s.url("/oauth2/token"))
            .body("grant_type=client_credentials&grant_type=client_credentials")
            .header("content-type", "application/x-www-form-urlencoded")
            .basic_auth(&s.admin.key_id, Some(&s.admin.secret)),
    )
    .await;
    assert_eq!(
        (st.as_u16(), e["error"].as_str()),
        (400, Some("invalid_request"))
    );

    // Nothing above changed anything but the one literal create.
    assert_eq!(account_count(&s).await, before + 1);
    s.stop_flushed();
    assert!(
        !s.stderr().contains("\"level\":\"ERROR\""),
        "a bad request caused a server error:\n{}",
        s.stderr()
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~%".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn failed_authentication_locks_out(backend: Backend) {
    let s = Server::start_with(
        backend,
        Options {
            env: vec![
                ("HAVEN_AUTH__MAX_FAILURES_PER_KEY".into(), "3".into()),
                ("HAVEN_AUTH__MAX_FAILURES_PER_ADDRESS".into(), "8".into()),
                ("HAVEN_AUTH__CREDENTIAL_CACHE_MS".into(), "0".into()),
            ],
            ..Options::default()
        },
    )
    .await;
    let (kid, secret) = create_key(&s, &s.admin.account_id, &["accounts:read"]).await;
    let path = format!("/v1/accounts/{}", s.admin.account_id);
    for _ in 0..3 {
        expect_problem(
            s.as_key(Method::GET, &path, &kid, "hks_guess"),
            401,
            "unauthenticated",
        )
        .await;
    }
    // Locked: even the right secret is refused until the lockout ends.
    let res = s
        .as_key(Method::GET, &path, &kid, &secret)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), 429);
    let retry: u64 = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(retry > 0 && retry <= 900, "retry-after {retry}");
    let body: serde_json::Value = res.json().await.unwrap_or_default();
    assert_eq!(body["type"], "/problems/auth-locked-out");
    // The token endpoint honours the same lock.
    let (st, _) = send(
        s.client
            .post(s.url("/oauth2/token"))
            .basic_auth(&kid, Some(&secret))
            .form(&[("grant_type", "client_credentials")]),
    )
    .await;
    assert_eq!(st, 429);
    // Other keys from this address still work until the address itself is locked.
    let (st, _) = send(s.admin(Method::GET, &path)).await;
    assert_eq!(st, 200);
    for i in 0..6 {
        let _ = send(s.as_key(Method::GET, &path, &format!("hk_unknown{i}"), "nope")).await;
    }
    let (st, _) = send(s.admin(Method::GET, &path)).await;
    assert_eq!(
        st, 429,
        "the source address should be locked after repeated failures"
    );
}
