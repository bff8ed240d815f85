//! OAuth 2.0 client credentials against a third-party client library (Python's authlib and
//! PyJWT), token revocation and introspection, JWT forgeries, and signing key rotation.

use crate::both_backends;
use crate::common::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Method;
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

both_backends!(
    third_party_client_gets_and_uses_tokens,
    forged_and_expired_tokens_are_refused,
    signing_keys_rotate_with_overlap
);

fn authlib(
    s: &Server,
    kid: &str,
    secret: &str,
    scope: Option<&str>,
    method: &str,
) -> Result<serde_json::Value, String> {
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("tests/py/oauth_client.py"))
        .args(["--base-url", &s.base, "--ca-file"])
        .arg(s.dir.join("tls/cert.pem"))
        .args([
            "--client-id",
            kid,
            "--client-secret",
            secret,
            "--auth-method",
            method,
            "--audience",
            "haven",
        ]);
    if let Some(sc) = scope {
        cmd.args(["--scope", sc]);
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

async fn third_party_client_gets_and_uses_tokens(backend: Backend) {
    let s = Server::start(backend).await;
    let acc = s.admin.account_id.clone();
    let (kid, secret) = create_key(&s, &acc, &["accounts:read", "keys:read"]).await;
    for method in ["client_secret_basic", "client_secret_post"] {
        // Requested scopes are narrowed to the grant: audit:read is not the client's.
        let got = authlib(&s, &kid, &secret, Some("accounts:read audit:read"), method)
            .unwrap_or_else(|e| panic!("authlib ({method}): {e}"));
        assert_eq!(got["scope"], "accounts:read");
        assert_eq!(
            got["token_type"]
                .as_str()
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("bearer")
        );
        assert_eq!(got["expires_in"], 900);
        assert_eq!(got["header"]["alg"], "EdDSA");
        assert_eq!(got["claims"]["client_id"], kid);
        assert_eq!(got["claims"]["acc"], acc);
        assert_eq!(
            got["claims"]["iss"],
            format!("https://localhost:{}", s.port)
        );
        let token = got["access_token"].as_str().unwrap_or_default().to_owned();
        // The token works, with exactly the granted scope.
        let (st, _) = send(s.bearer(Method::GET, &format!("/v1/accounts/{acc}"), &token)).await;
        assert_eq!(st, 200);
        expect_problem(
            s.bearer(Method::GET, &format!("/v1/accounts/{acc}/keys"), &token),
            403,
            "insufficient-scope",
        )
        .await;
        // Introspection (RFC 7662), then revocation (RFC 7009).
        let (_, intro) = send(
            s.client
                .post(s.url("/oauth2/introspect"))
                .basic_auth(&kid, Some(&secret))
                .form(&[("token", token.as_str())]),
        )
        .await;
        assert_eq!(
            (intro["active"].as_bool(), intro["scope"].as_str()),
            (Some(true), Some("accounts:read")),
            "{intro}"
        );
        let (st, _) = send(
            s.client
                .post(s.url("/oauth2/revoke"))
                .basic_auth(&kid, Some(&secret))
                .form(&[
                    ("token", token.as_str()),
                    ("token_type_hint", "access_token"),
                ]),
        )
        .await;
        assert_eq!(st, 200);
        expect_problem(
            s.bearer(Method::GET, &format!("/v1/accounts/{acc}"), &token),
            401,
            "unauthenticated",
        )
        .await;
        let (_, intro) = send(
            s.client
                .post(s.url("/oauth2/introspect"))
                .basic_auth(&kid, Some(&secret))
                .form(&[("token", token.as_str())]),
        )
        .await;
        assert_eq!(intro, json!({"active": false}));
    }
    // No scope requested: the whole grant.
    let all =
        authlib(&s, &kid, &secret, None, "client_secret_basic").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all["scope"], "accounts:read keys:read");
    // Nothing grantable, or unknown: invalid_scope. Wrong secret: invalid_client with a challenge.
    for scope in ["audit:read", "nonsense:everything"] {
        let (st, e) = send(
            s.client
                .post(s.url("/oauth2/token"))
                .basic_auth(&kid, Some(&secret))
                .form(&[("grant_type", "client_credentials"), ("scope", scope)]),
        )
        .await;
        assert_eq!(
            (st.as_u16(), e["error"].as_str()),
            (400, Some("invalid_scope"))
        );
    }
    let res = s
        .client
        .post(s.url("/oauth2/token"))
        .basic_auth(&kid, Some("hks_wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), 401);
    assert!(res.headers().get("www-authenticate").is_some());
    let e: serde_json::Value = res.json().await.unwrap_or_default();
    assert_eq!(e["error"], "invalid_client");
    assert!(authlib(&s, &kid, "hks_wrong", None, "client_secret_basic").is_err());
    // Both methods at once is refused.
    let (st, e) = send(
        s.client
            .post(s.url("/oauth2/token"))
            .basic_auth(&kid, Some(&secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", kid.as_str()),
                ("client_secret", secret.as_str()),
            ]),
    )
    .await;
    assert_eq!(
        (st.as_u16(), e["error"].as_str()),
        (400, Some("invalid_request"))
    );
    // Revoking the key ends its tokens too.
    let t =
        authlib(&s, &kid, &secret, None, "client_secret_basic").unwrap_or_else(|e| panic!("{e}"));
    let token = t["access_token"].as_str().unwrap_or_default();
    let res = s
        .admin(Method::DELETE, &format!("/v1/accounts/{acc}/keys/{kid}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), 204);
    expect_problem(
        s.bearer(Method::GET, &format!("/v1/accounts/{acc}"), token),
        401,
        "unauthenticated",
    )
    .await;
    // Metadata names every endpoint.
    let (_, meta) = send(
        s.client
            .get(s.url("/.well-known/oauth-authorization-server")),
    )
    .await;
    for field in [
        "token_endpoint",
        "jwks_uri",
        "revocation_endpoint",
        "introspection_endpoint",
    ] {
        assert!(
            meta[field].as_str().unwrap_or("").starts_with("https://"),
            "{field}: {meta}"
        );
    }
    assert_eq!(meta["grant_types_supported"], json!(["client_credentials"]));
}

/// The server's current signing key, unsealed with the master key from the data directory, so
/// that the test can mint tokens the server's signature check accepts and probe every other
/// check.
async fn real_signing_key(s: &Server) -> haven_crypto::jwt::SigningKey {
    let rows: Vec<(String, Vec<u8>, i64)> = match s.backend {
        Backend::Sqlite => {
            use sqlx::Connection;
            let mut c = sqlx::SqliteConnection::connect(&s.database_url)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            sqlx::query_as("SELECT kid, sealed_private_key, created_at_ms FROM signing_keys")
                .fetch_all(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }
        Backend::Postgres => {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&s.database_url)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            sqlx::query_as("SELECT kid, sealed_private_key, created_at_ms FROM signing_keys")
                .fetch_all(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    let (kid, sealed, _) = rows
        .into_iter()
        .max_by_key(|r| r.2)
        .unwrap_or_else(|| panic!("no signing key"));
    let master = haven_crypto::ring::MasterKeys::from_file(&s.dir.join("master.key"))
        .unwrap_or_else(|e| panic!("{e}"));
    let pkcs8 = haven_crypto::ring::KeyProvider::unwrap(
        &master,
        &format!("haven:signing-key:{kid}"),
        &sealed,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    haven_crypto::jwt::SigningKey::from_pkcs8(kid, &pkcs8).unwrap_or_else(|e| panic!("{e}"))
}

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap_or_default())
}

async fn forged_and_expired_tokens_are_refused(backend: Backend) {
    let mut s = Server::start(backend).await;
    let acc = s.admin.account_id.clone();
    let path = format!("/v1/accounts/{acc}");
    let (st, t) = send(
        s.client
            .post(s.url("/oauth2/token"))
            .basic_auth(&s.admin.key_id, Some(&s.admin.secret))
            .form(&[("grant_type", "client_credentials")]),
    )
    .await;
    assert_eq!(st, 200);
    let good = t["access_token"].as_str().unwrap_or_default().to_owned();
    let (st, _) = send(s.bearer(Method::GET, &path, &good)).await;
    assert_eq!(st, 200);
    let parts: Vec<&str> = good.split('.').collect();
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap_or_default())
            .unwrap_or_default();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap_or_default())
            .unwrap_or_default();
    let kid = header["kid"].as_str().unwrap_or_default().to_owned();

    let mut forgeries: Vec<(&str, String)> = Vec::new();
    forgeries.push((
        "alg none",
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "at+jwt", "kid": kid})),
            parts[1]
        ),
    ));
    // HS256 keyed with the public key: the classic algorithm-confusion attack.
    let jwks: serde_json::Value = send(s.client.get(s.url("/.well-known/jwks.json"))).await.1;
    let public = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().unwrap_or_default())
        .unwrap_or_default();
    let hs_input = format!(
        "{}.{}",
        b64(&json!({"alg": "HS256", "typ": "at+jwt", "kid": kid})),
        parts[1]
    );
    let tag = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &public),
        hs_input.as_bytes(),
    );
    forgeries.push((
        "HS256 with the public key",
        format!("{hs_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref())),
    ));
    let mut elevated = claims.clone();
    elevated["acc"] = json!("acc_01m80pvp8jdzcfk0qy3ypc2c0m");
    forgeries.push((
        "tampered claims",
        format!("{}.{}.{}", parts[0], b64(&elevated), parts[2]),
    ));
    let (stranger, _) =
        haven_crypto::jwt::SigningKey::generate(kid.clone()).unwrap_or_else(|e| panic!("{e}"));
    forgeries.push((
        "signed by another key under our kid",
        stranger.sign(&claims).unwrap_or_default(),
    ));
    let (unknown, _) = haven_crypto::jwt::SigningKey::generate("sig_unknown".into())
        .unwrap_or_else(|e| panic!("{e}"));
    forgeries.push(("unknown kid", unknown.sign(&claims).unwrap_or_default()));
    forgeries.push(("truncated", parts[..2].join(".")));

    // Signed with the real key, but with bad claims.
    let real = real_signing_key(&s).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let with = |k: &str, v: serde_json::Value| {
        let mut c = claims.clone();
        c[k] = v;
        real.sign(&c).unwrap_or_default()
    };
    let control = with("jti", json!("tok_control"));
    let (st, _) = send(s.bearer(Method::GET, &path, &control)).await;
    assert_eq!(
        st, 200,
        "a token signed with the real key and sound claims must pass: the forgeries below test the claims"
    );
    forgeries.push(("expired", with("exp", json!(now - 10))));
    forgeries.push(("wrong issuer", with("iss", json!("https://evil.example"))));
    forgeries.push(("wrong audience", with("aud", json!("someone-else"))));
    forgeries.push(("not yet valid", with("nbf", json!(now + 3600))));
    forgeries.push((
        "unknown client",
        with("client_id", json!("hk_01m80pvp8jqmqq9hqne08e0a9m")),
    ));
    forgeries.push((
        "client of another account",
        with("acc", json!("acc_01m80pvp8jdzcfk0qy3ypc2c0m")),
    ));
    for (what, token) in &forgeries {
        let res = s
            .bearer(Method::GET, &path, token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(res.status(), 401, "{what} was not refused");
    }
    s.stop_flushed();
    assert!(
        !s.stderr().contains("\"level\":\"ERROR\""),
        "{}",
        s.stderr()
    );
}

async fn signing_keys_rotate_with_overlap(backend: Backend) {
    let s = Server::start(backend).await;
    let acc = s.admin.account_id.clone();
    let get_token = || async {
        let (_, t) = send(
            s.client
                .post(s.url("/oauth2/token"))
                .basic_auth(&s.admin.key_id, Some(&s.admin.secret))
                .form(&[("grant_type", "client_credentials")]),
        )
        .await;
        t["access_token"].as_str().unwrap_or_default().to_owned()
    };
    let kid_of = |t: &str| {
        let h: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(t.split('.').next().unwrap_or(""))
                .unwrap_or_default(),
        )
        .unwrap_or_default();
        h["kid"].as_str().unwrap_or_default().to_owned()
    };
    let old = get_token().await;
    let old_kid = kid_of(&old);
    // The operator rotates while the server runs (another process, same database).
    let out = haven_cli(&s.dir, &s.database_url, &["keys", "rotate-signing"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_kid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(new_kid.starts_with("sig_") && new_kid != old_kid);
    // Within the refresh period both keys are published and the new one signs.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, jwks) = send(s.client.get(s.url("/.well-known/jwks.json"))).await;
        let kids: Vec<String> = jwks["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k["kid"].as_str().map(str::to_owned))
            .collect();
        if kids.contains(&new_kid) {
            assert!(
                kids.contains(&old_kid),
                "the old key must stay published while its tokens live: {kids:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new key never appeared: {kids:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let new = get_token().await;
    assert_eq!(kid_of(&new), new_kid);
    for t in [&old, &new] {
        let (st, _) = send(s.bearer(Method::GET, &format!("/v1/accounts/{acc}"), t)).await;
        assert_eq!(st, 200);
    }
    // A third-party verifier accepts the new token against the published set.
    let got = authlib(
        &s,
        &s.admin.key_id,
        &s.admin.secret,
        Some("accounts:read"),
        "client_secret_basic",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got["header"]["kid"], new_kid);
}
