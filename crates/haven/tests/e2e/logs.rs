//! No secret (and no PHI, once there is PHI) reaches a log line at any level: marker strings go
//! through every API while the server logs at `trace`, and the whole log is searched for them.

use crate::both_backends;
use crate::common::*;
use reqwest::Method;
use serde_json::json;

both_backends!(markers_never_reach_the_log);

async fn markers_never_reach_the_log(backend: Backend) {
    let mut s = Server::start_with(
        backend,
        Options {
            env: vec![("HAVEN_LOG__LEVEL".into(), "trace".into())],
            ..Options::default()
        },
    )
    .await;
    const NAME: &str = "MARKER-NAME-7f3a";
    const KEYNAME: &str = "MARKER-KEYNAME-91c2";
    const IDEM: &str = "MARKER-IDEM-55d0";
    const AGENT: &str = "MARKER-AGENT-0b17";
    const WRONG: &str = "hks_MARKER-WRONG-SECRET-c4e8";
    let (_, sub) = send(
        s.admin(Method::POST, "/v1/accounts")
            .header("Idempotency-Key", IDEM)
            .header("user-agent", AGENT)
            .json(&json!({"name": NAME})),
    )
    .await;
    let sub = sub["id"].as_str().unwrap_or_default().to_owned();
    let (_, key) = send(
        s.admin(Method::POST, &format!("/v1/accounts/{sub}/keys"))
            .json(&json!({"name": KEYNAME, "scopes": ["accounts:read", "audit:read"]})),
    )
    .await;
    let (kid, secret) = (
        key["id"].as_str().unwrap_or("").to_owned(),
        key["secret"].as_str().unwrap_or("").to_owned(),
    );
    let (_, rotated) = send(
        s.admin(
            Method::POST,
            &format!("/v1/accounts/{sub}/keys/{kid}/rotate"),
        )
        .json(&json!({"grace_period_seconds": 60})),
    )
    .await;
    let rotated_secret = rotated["secret"].as_str().unwrap_or("").to_owned();
    let _ = send(s.as_key(Method::GET, &format!("/v1/accounts/{sub}"), &kid, &secret)).await;
    let _ = send(s.as_key(Method::GET, &format!("/v1/accounts/{sub}"), &kid, WRONG)).await;
    let _ = send(
        s.client
            .get(s.url("/v1/accounts"))
            .header("authorization", format!("Bearer {WRONG}")),
    )
    .await;
    let (_, t) = send(
        s.client
            .post(s.url("/oauth2/token"))
            .basic_auth(&kid, Some(&rotated_secret))
            .form(&[("grant_type", "client_credentials")]),
    )
    .await;
    let token = t["access_token"].as_str().unwrap_or("").to_owned();
    let _ = send(s.bearer(Method::GET, "/v1/audit/events", &token)).await;
    let _ = send(
        s.client
            .post(s.url("/oauth2/introspect"))
            .basic_auth(&kid, Some(&rotated_secret))
            .form(&[("token", token.as_str())]),
    )
    .await;
    let _ = send(s.client.post(s.url("/oauth2/token")).form(&[
        ("grant_type", "client_credentials"),
        ("client_id", kid.as_str()),
        ("client_secret", WRONG),
    ]))
    .await;
    let _ = send(
        s.client
            .post(s.url("/oauth2/revoke"))
            .basic_auth(&kid, Some(&rotated_secret))
            .form(&[("token", token.as_str())]),
    )
    .await;
    let _ = send(
        s.admin(Method::PATCH, &format!("/v1/accounts/{sub}"))
            .json(&json!({"name": format!("{NAME}-2")})),
    )
    .await;
    let _ = send(s.admin(Method::GET, "/v1/audit/tree-head")).await;
    // PHI through the contacts API, and webhook URLs and secrets.
    const PATIENT: &str = "MARKER-PATIENT-3e1d";
    const MRN: &str = "MARKER-MRN-8a2f";
    const DIAGNOSIS: &str = "MARKER-DIAGNOSIS-c7b9";
    const PHONE: &str = "+14155550142";
    const HOOK: &str = "MARKER-HOOK-PATH-66ae";
    let (_, contact) = send(s.admin(Method::POST, "/v1/contacts").json(&json!({
        "reference": MRN, "name": PATIENT, "phone_number": PHONE,
        "email": "marker-mail-2d4c@example.org", "attributes": { "dx": DIAGNOSIS }
    })))
    .await;
    let cid = contact["id"].as_str().unwrap_or_default().to_owned();
    let _ = send(s.admin(Method::GET, &format!("/v1/contacts/{cid}"))).await;
    let _ = send(
        s.admin(Method::POST, "/v1/contacts/search")
            .json(&json!({ "phone_number": PHONE, "reference": MRN })),
    )
    .await;
    let _ = send(
        s.admin(Method::POST, "/v1/contacts")
            .json(&json!({ "reference": MRN, "phone_number": "MARKER-BADPHONE-1f0e" })),
    )
    .await;
    let _ = send(s.admin(Method::POST, &format!("/v1/contacts/{cid}/erase"))).await;
    let (_, hook) = send(
        s.admin(Method::POST, "/v1/webhooks/endpoints")
            .json(&json!({
                "url": format!("https://hooks.invalid/{HOOK}"), "event_types": ["*"]
            })),
    )
    .await;
    let hook_secret = hook["secret"].as_str().unwrap_or_default().to_owned();
    let _ = send(
        s.admin(Method::POST, "/v1/webhooks/endpoints")
            .json(&json!({
                "url": format!("https://10.0.0.1/{HOOK}"), "event_types": ["*"]
            })),
    )
    .await;
    // Time for the webhook worker to try (and log) its deliveries.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // Stopped first: a clean stop writes every line still queued for the log.
    s.stop_flushed();
    let log = s.stderr();
    assert!(
        log.lines().count() > 100,
        "the server did not log at trace level:\n{log}"
    );
    let master_key = std::fs::read_to_string(s.dir.join("master.key")).unwrap_or_default();
    let mut markers: Vec<(&str, String)> = vec![
        ("account name", NAME.into()),
        ("key name", KEYNAME.into()),
        ("idempotency key", IDEM.into()),
        ("user agent", AGENT.into()),
        ("wrong secret", WRONG.into()),
        ("key secret", secret.clone()),
        ("rotated secret", rotated_secret.clone()),
        ("bootstrap secret", s.admin.secret.clone()),
    ];
    for line in master_key.lines().filter(|l| !l.starts_with('#')) {
        if let Some(b64) = line.split_whitespace().last() {
            markers.push(("master key", b64.to_owned()));
        }
    }
    for (what, m) in [
        ("patient name", PATIENT),
        ("patient reference", MRN),
        ("patient attribute", DIAGNOSIS),
        ("patient phone", PHONE),
        ("patient email", "marker-mail-2d4c"),
        ("invalid phone", "MARKER-BADPHONE-1f0e"),
        ("webhook URL", HOOK),
    ] {
        markers.push((what, m.to_owned()));
    }
    markers.push(("webhook secret", hook_secret.clone()));
    assert!(hook_secret.starts_with("whsec_"), "{hook}");
    // A token is a secret too; its signature part is enough to find it.
    if let Some(sig) = token.rsplit('.').next() {
        markers.push(("access token", sig.to_owned()));
    }
    for (what, marker) in &markers {
        assert!(!marker.is_empty(), "{what} marker is empty");
        if let Some(line) = log.lines().find(|l| l.contains(marker.as_str())) {
            panic!("the {what} reached the log:\n{line}");
        }
    }
    // Standard output holds only the one-time bootstrap notice.
    let out = s.stdout();
    for (what, marker) in &markers[..7] {
        assert!(
            !out.contains(marker.as_str()),
            "the {what} reached standard output"
        );
    }
}
