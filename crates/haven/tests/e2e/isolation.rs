//! Tenant isolation, tested from outside: subaccount A's credentials get 404 on every route
//! that names B's resources, with API keys and with bearer tokens alike.

use crate::both_backends;
use crate::common::*;
use reqwest::Method;
use serde_json::json;

both_backends!(subaccounts_cannot_see_each_other);

async fn token(s: &Server, kid: &str, secret: &str) -> String {
    let (st, t) = send(
        s.client
            .post(s.url("/oauth2/token"))
            .basic_auth(kid, Some(secret))
            .form(&[("grant_type", "client_credentials")]),
    )
    .await;
    assert_eq!(st, 200, "{t}");
    t["access_token"].as_str().unwrap_or_default().to_owned()
}

async fn subaccounts_cannot_see_each_other(backend: Backend) {
    let s = Server::start(backend).await;
    let master = s.admin.account_id.clone();
    let a = create_subaccount(&s, "A").await;
    let b = create_subaccount(&s, "B").await;
    let (ka, sa) = create_key(&s, &a, ALL_SCOPES).await;
    let (kb, sb) = create_key(&s, &b, ALL_SCOPES).await;
    let b_token = token(&s, &kb, &sb).await;
    let a_token = token(&s, &ka, &sa).await;
    let (st, tpl) = send(
        s.as_key(Method::POST, "/v1/templates", &kb, &sb)
            .json(&json!({"name": "b", "channel": "sms", "text": "Hello {{name}}"})),
    )
    .await;
    assert_eq!(st, 201, "{tpl}");
    let tpl = tpl["id"].as_str().unwrap_or_default().to_owned();

    let routes: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::GET, format!("/v1/accounts/{b}"), None),
        (
            Method::PATCH,
            format!("/v1/accounts/{b}"),
            Some(json!({"name": "pwned"})),
        ),
        (
            Method::PATCH,
            format!("/v1/accounts/{b}"),
            Some(json!({"status": "suspended"})),
        ),
        (Method::GET, format!("/v1/accounts/{b}/keys"), None),
        (
            Method::POST,
            format!("/v1/accounts/{b}/keys"),
            Some(json!({"name": "x", "scopes": ["accounts:read"]})),
        ),
        (Method::GET, format!("/v1/accounts/{b}/keys/{kb}"), None),
        (
            Method::POST,
            format!("/v1/accounts/{b}/keys/{kb}/rotate"),
            Some(json!({})),
        ),
        (Method::DELETE, format!("/v1/accounts/{b}/keys/{kb}"), None),
        (Method::GET, format!("/v1/templates/{tpl}"), None),
        (
            Method::POST,
            format!("/v1/templates/{tpl}/approve"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/templates/{tpl}/reject"),
            Some(json!({})),
        ),
        (Method::DELETE, format!("/v1/templates/{tpl}"), None),
        // B's key under A's own account path.
        (Method::GET, format!("/v1/accounts/{a}/keys/{kb}"), None),
        (
            Method::POST,
            format!("/v1/accounts/{a}/keys/{kb}/rotate"),
            Some(json!({})),
        ),
        (Method::DELETE, format!("/v1/accounts/{a}/keys/{kb}"), None),
        // The master, A's parent, is not A's to see either.
        (Method::GET, format!("/v1/accounts/{master}"), None),
        (Method::GET, format!("/v1/accounts/{master}/keys"), None),
        // Usage of a sibling or of the parent.
        (Method::GET, format!("/v1/usage?account_id={b}"), None),
        (
            Method::GET,
            format!("/v1/usage/summary?account_id={b}"),
            None,
        ),
        (Method::GET, format!("/v1/usage?account_id={master}"), None),
        (
            Method::GET,
            format!("/v1/accounts/{master}/keys/{}", s.admin.key_id),
            None,
        ),
    ];
    for auth in ["api_key", "bearer"] {
        for (method, path, body) in &routes {
            let rb = match auth {
                "api_key" => s.as_key(method.clone(), path, &ka, &sa),
                _ => s.bearer(method.clone(), path, &a_token),
            };
            let rb = match body {
                Some(b) => rb.json(b),
                None => rb,
            };
            let res = rb.send().await.unwrap_or_else(|e| panic!("{e}"));
            let status = res.status().as_u16();
            let text = res.text().await.unwrap_or_default();
            assert_eq!(
                status, 404,
                "{auth} {method} {path} answered {status}: {text}"
            );
            assert!(text.contains("/problems/not-found"), "{text}");
        }
        // A's list holds A alone.
        let rb = match auth {
            "api_key" => s.as_key(Method::GET, "/v1/accounts", &ka, &sa),
            _ => s.bearer(Method::GET, "/v1/accounts", &a_token),
        };
        let (_, list) = send(rb).await;
        let ids: Vec<&str> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["id"].as_str())
            .collect();
        assert_eq!(ids, vec![a.as_str()]);
    }
    // A cannot introspect or revoke B's token.
    let (_, intro) = send(
        s.client
            .post(s.url("/oauth2/introspect"))
            .basic_auth(&ka, Some(&sa))
            .form(&[("token", b_token.as_str())]),
    )
    .await;
    assert_eq!(intro, json!({"active": false}));
    let (st, _) = send(
        s.client
            .post(s.url("/oauth2/revoke"))
            .basic_auth(&ka, Some(&sa))
            .form(&[("token", b_token.as_str())]),
    )
    .await;
    assert_eq!(st, 200);
    // B is untouched by all of the above.
    let (st, me) = send(s.bearer(Method::GET, &format!("/v1/accounts/{b}"), &b_token)).await;
    assert_eq!(
        (st.as_u16(), me["name"].as_str(), me["status"].as_str()),
        (200, Some("B"), Some("active"))
    );
    let (st, _) = send(s.as_key(
        Method::GET,
        &format!("/v1/accounts/{b}/keys/{kb}"),
        &kb,
        &sb,
    ))
    .await;
    assert_eq!(st, 200);
    // The master acts on a subaccount when the request names it.
    let (st, keys) = send(s.admin(Method::GET, &format!("/v1/accounts/{a}/keys"))).await;
    assert_eq!(st, 200);
    assert_eq!(keys["items"][0]["id"], ka);
    let (_, intro) = send(
        s.client
            .post(s.url("/oauth2/introspect"))
            .basic_auth(&s.admin.key_id, Some(&s.admin.secret))
            .form(&[("token", b_token.as_str())]),
    )
    .await;
    assert_eq!(intro["active"], true);
}
