//! Verify end to end: codes read from the real SMSC (node-smpp) and the real SMTP relay
//! (aiosmtpd), checked through the API; brute force, replay, parallel guessing, supersession,
//! per-recipient limits, expiry and channel fail-over on a timer that survives kill -9.

use crate::both_backends;
use crate::common::{Backend, Server, expect_problem, send};
use crate::messages::{get_message, register, start, wait_status};
use crate::peers::{Smsc, SmtpRelay};
use crate::webhooks::{Receiver, accepted, endpoint};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

both_backends!(
    a_code_arrives_and_works_once,
    guessing_is_bounded,
    channels_fail_over_on_time_through_kill_9,
    totp_factors_with_pyotp_as_the_app,
    the_fraud_guard_refuses_and_blocks_pumping,
);

/// The digits after `marker` in `text`.
fn code_after(text: &str, marker: &str) -> Option<String> {
    let at = text.find(marker)? + marker.len();
    let digits: String = text[at..]
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    (!digits.is_empty()).then_some(digits)
}

/// Waits for an SMS to `to` at the SMSC beyond the first `skip`, and returns its text.
async fn sms_to(smsc: &Smsc, to: &str, skip: usize, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got: Vec<Value> = smsc
            .messages()
            .await
            .into_iter()
            .filter(|m| m["to"].as_str().is_some_and(|t| t.ends_with(&to[1..])))
            .collect();
        if let Some(m) = got.get(skip) {
            return m["text"].as_str().unwrap_or_default().to_owned();
        }
        assert!(Instant::now() < deadline, "no SMS {skip} to {to}: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn mail_to(relay: &SmtpRelay, to: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(m) = relay
            .mail()
            .into_iter()
            .find(|m| m["rcpt_tos"] == json!([to]))
        {
            return m;
        }
        assert!(Instant::now() < deadline, "no mail to {to}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_verify(s: &Server, body: Value) -> Value {
    let (st, v) = send(s.admin(Method::POST, "/v1/verify").json(&body)).await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["status"], "pending", "{v}");
    v
}

async fn check(s: &Server, id: &str, code: &str) -> (u16, Value) {
    let (st, b) = send(
        s.admin(Method::POST, &format!("/v1/verify/{id}/check"))
            .json(&json!({ "code": code })),
    )
    .await;
    (st.as_u16(), b)
}

async fn peers(
    backend: Backend,
    env: &[(&str, &str)],
) -> (Smsc, SmtpRelay, Server, tempfile::TempDir) {
    let smsc = Smsc::start();
    let relay = SmtpRelay::start();
    let toml = format!("{}{}", smsc.config("primary"), relay.config());
    let (s, cfg) = start(backend, &toml, env).await;
    register(&s, "sms", "+14155550199").await;
    register(&s, "email", "clinic@example.org").await;
    smsc.wait_bound().await;
    (smsc, relay, s, cfg)
}

fn sms_email(to: &str, mail: &str) -> Value {
    json!([
        { "channel": "sms", "to": to, "from": "+14155550199" },
        { "channel": "email", "to": mail, "from": "clinic@example.org" }
    ])
}

async fn a_code_arrives_and_works_once(backend: Backend) {
    let (smsc, relay, mut s, _cfg) = peers(backend, &[]).await;
    let r = Receiver::start();
    let (_, secret) = endpoint(&s, &r.url(), json!(["verify.*"])).await;
    r.set("secrets", &secret);

    let bad = expect_problem(
        s.admin(Method::POST, "/v1/verify").json(&json!({
            "brand": "", "workflow": [], "code_length": 3, "expiry_seconds": 5,
            "app_domain": "not a domain" })),
        422,
        "validation-failed",
    )
    .await;
    assert!(bad["errors"].as_array().map_or(0, Vec::len) >= 5, "{bad}");

    let v = start_verify(
        &s,
        json!({ "brand": "Clínica Sol", "locale": "es-MX", "code_length": 8,
                "app_domain": "app.clinic.example.org",
                "workflow": sms_email("+14155550100", "pat@example.org") }),
    )
    .await;
    let id = v["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(v["steps"][0]["status"], "sent", "{v}");
    assert_eq!(v["code_length"], 8);
    assert!(v["next_channel_at"].is_string(), "{v}");

    // The SMS as the handset gets it: Spanish, the brand, the warning, the autofill line.
    let text = sms_to(&smsc, "+14155550100", 0, 20).await;
    let code = code_after(&text, "código de verificación es").unwrap_or_default();
    assert_eq!(code.len(), 8, "{text}");
    assert!(
        text.contains("Clínica Sol") && text.contains("No compartas"),
        "{text}"
    );
    assert!(
        text.ends_with(&format!("\n\n@app.clinic.example.org #{code}")),
        "{text}"
    );

    // The message's API view never shows the code.
    let mid = v["steps"][0]["message_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let m = wait_status(&s, &mid, &["delivered"], 30).await;
    let shown = m["text"].as_str().unwrap_or_default();
    assert!(!shown.contains(&code) && shown.contains("••••••"), "{m}");

    // A malformed code takes no attempt; a wrong one does.
    expect_problem(
        s.admin(Method::POST, &format!("/v1/verify/{id}/check"))
            .json(&json!({ "code": "12ab" })),
        422,
        "validation-failed",
    )
    .await;
    let wrong = if code == "00000000" {
        "11111111"
    } else {
        "00000000"
    };
    let (st, p) = check(&s, &id, wrong).await;
    assert_eq!(st, 422, "{p}");
    assert_eq!(p["type"], "/problems/code-mismatch", "{p}");
    assert_eq!(p["attempts_remaining"], 4, "{p}");

    // The next channel now: a new code by email; the SMS code stops working.
    let (st, n) = send(s.admin(Method::POST, &format!("/v1/verify/{id}/next"))).await;
    assert_eq!(st, 200, "{n}");
    assert_eq!(n["current_step"], 1, "{n}");
    let mail = mail_to(&relay, "pat@example.org", 20).await;
    assert_eq!(
        mail["subject"], "Tu código de verificación de Clínica Sol",
        "{mail}"
    );
    let body = mail["text"].as_str().unwrap_or_default();
    let code2 = code_after(body, "código de verificación es").unwrap_or_default();
    assert_eq!(code2.len(), 8, "{body}");
    assert!(!body.contains('@'), "no autofill line in email: {body}");
    if code2 != code {
        let (st, p) = check(&s, &id, &code).await;
        assert_eq!(
            (st, p["type"].as_str()),
            (422, Some("/problems/code-mismatch")),
            "{p}"
        );
    }
    expect_problem(
        s.admin(Method::POST, &format!("/v1/verify/{id}/next")),
        409,
        "no-next-channel",
    )
    .await;

    let (st, ok) = check(&s, &id, &code2).await;
    assert_eq!(st, 200, "{ok}");
    assert_eq!(ok["status"], "completed", "{ok}");
    // A code works once.
    let (st, again) = check(&s, &id, &code2).await;
    assert_eq!(
        (st, again["type"].as_str()),
        (409, Some("/problems/verification-ended")),
        "{again}"
    );
    let (_, got) = send(s.admin(Method::GET, &format!("/v1/verify/{id}"))).await;
    assert_eq!(got["status"], "completed", "{got}");
    assert_eq!(got["attempts"], 3, "{got}");

    let log = r
        .wait_for("verify events", 30, |log| {
            accepted(log)
                .values()
                .any(|l| l["type"] == "verify.succeeded" && l["data"]["verification_id"] == id)
        })
        .await;
    assert!(log.iter().all(|l| l["verified"] == true), "{log:?}");
    let sent = accepted(&log)
        .values()
        .filter(|l| l["type"] == "verify.code_sent" && l["data"]["verification_id"] == id)
        .count();
    assert_eq!(sent, 2, "{log:?}");

    // The codes are nowhere at rest (hashes only; the messages masked) nor in the logs.
    let email_mid = got["steps"][1]["message_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    wait_status(&s, &email_mid, &["submitted"], 30).await;
    let raw = crate::encryption::raw_database(&s).await;
    let raw = String::from_utf8_lossy(&raw);
    for c in [&code, &code2] {
        assert!(!raw.contains(c.as_str()), "code {c} stored in the clear");
    }
    let em = get_message(&s, &email_mid).await;
    assert!(
        !em["text"].as_str().unwrap_or_default().contains(&code2),
        "{em}"
    );

    // Another account cannot see or check it.
    let sub = crate::common::create_subaccount(&s, "Dermatology").await;
    let (k, ks) = crate::common::create_key(&s, &sub, &["verify:write"]).await;
    expect_problem(
        s.as_key(Method::POST, &format!("/v1/verify/{id}/check"), &k, &ks)
            .json(&json!({ "code": code2 })),
        404,
        "not-found",
    )
    .await;

    // Read last: stopping the server flushes its log.
    let logs = s.stopped_logs();
    let events = serde_json::to_string(&log).unwrap_or_default();
    for c in [&code, &code2] {
        assert!(!logs.contains(c.as_str()), "code in the logs");
        assert!(!events.contains(c.as_str()), "code in an event");
    }
}

async fn guessing_is_bounded(backend: Backend) {
    let (smsc, _relay, s, _cfg) = peers(backend, &[("HAVEN_VERIFY__PER_RECIPIENT", "4")]).await;
    let one = |to: &str| json!({ "brand": "Clinic", "workflow": [{ "channel": "sms", "to": to, "from": "+14155550199" }] });

    // Five wrong codes fail it; then even the right code is refused.
    let v = start_verify(&s, one("+14155550110")).await;
    let id = v["id"].as_str().unwrap_or_default().to_owned();
    let text = sms_to(&smsc, "+14155550110", 0, 20).await;
    let code = code_after(&text, "verification code is").unwrap_or_default();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for left in (0..5).rev() {
        let (st, p) = check(&s, &id, wrong).await;
        assert_eq!(
            (st, p["attempts_remaining"].as_i64()),
            (422, Some(left)),
            "{p}"
        );
    }
    let (st, p) = check(&s, &id, &code).await;
    assert_eq!(
        (st, p["type"].as_str()),
        (409, Some("/problems/verification-ended")),
        "{p}"
    );
    let (_, got) = send(s.admin(Method::GET, &format!("/v1/verify/{id}"))).await;
    assert_eq!(got["status"], "failed", "{got}");

    // Twenty guesses at once: exactly five are judged, the rest are refused.
    let v = start_verify(&s, one("+14155550111")).await;
    let id = v["id"].as_str().unwrap_or_default().to_owned();
    let text = sms_to(&smsc, "+14155550111", 0, 20).await;
    let code = code_after(&text, "verification code is").unwrap_or_default();
    let guesses: Vec<String> = (0..20)
        .map(|i| format!("{:06}", (i * 7919 + 13) % 1_000_000))
        .filter(|g| *g != code)
        .take(20)
        .collect();
    let tasks: Vec<_> = guesses
        .iter()
        .map(|g| {
            let rb = s
                .admin(Method::POST, &format!("/v1/verify/{id}/check"))
                .json(&json!({ "code": g }));
            tokio::spawn(async move { send(rb).await })
        })
        .collect();
    let mut judged = 0;
    for t in tasks {
        let (st, p) = t.await.unwrap_or_else(|e| panic!("{e}"));
        match st.as_u16() {
            422 => judged += 1,
            409 => {}
            other => panic!("unexpected {other}: {p}"),
        }
    }
    assert_eq!(judged, 5, "only the allowed attempts were compared");

    // A new verification to the same patient supersedes the pending one.
    let a = start_verify(&s, one("+14155550112")).await;
    let aid = a["id"].as_str().unwrap_or_default().to_owned();
    let text = sms_to(&smsc, "+14155550112", 0, 20).await;
    let code_a = code_after(&text, "verification code is").unwrap_or_default();
    let b = start_verify(&s, one("+14155550112")).await;
    let bid = b["id"].as_str().unwrap_or_default().to_owned();
    let (st, p) = check(&s, &aid, &code_a).await;
    assert_eq!(
        (st, p["type"].as_str()),
        (409, Some("/problems/verification-ended")),
        "{p}"
    );
    let (_, got) = send(s.admin(Method::GET, &format!("/v1/verify/{aid}"))).await;
    assert_eq!(got["status"], "superseded", "{got}");
    let text = sms_to(&smsc, "+14155550112", 1, 20).await;
    let code_b = code_after(&text, "verification code is").unwrap_or_default();
    let (st, ok) = check(&s, &bid, &code_b).await;
    assert_eq!(st, 200, "{ok}");

    // Per recipient: the limit (4 here) counts every start in the window.
    for _ in 0..2 {
        start_verify(&s, one("+14155550112")).await;
    }
    let (st, p) = send(
        s.admin(Method::POST, "/v1/verify")
            .json(&one("+14155550112")),
    )
    .await;
    assert_eq!(st, 429, "{p}");
    assert_eq!(p["type"], "/problems/verify-rate-limited", "{p}");

    // An opted-out patient gets nothing; with a second channel, that one is used.
    smsc.mo("+14155550113", "+14155550199", "STOP").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, c) = send(
            s.admin(Method::POST, "/v1/consents/search")
                .json(&json!({ "channel": "sms", "address": "+14155550113" })),
        )
        .await;
        if c["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["status"] == "opted_out"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "STOP never recorded: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    expect_problem(
        s.admin(Method::POST, "/v1/verify")
            .json(&one("+14155550113")),
        422,
        "recipient-opted-out",
    )
    .await;
    let v = start_verify(
        &s,
        json!({ "brand": "Clinic", "workflow": sms_email("+14155550113", "optout@example.org") }),
    )
    .await;
    assert_eq!(v["steps"][0]["status"], "skipped", "{v}");
    assert_eq!(v["steps"][0]["reason"], "recipient_opted_out", "{v}");
    assert_eq!(v["steps"][1]["status"], "sent", "{v}");
    assert_eq!(v["current_step"], 1, "{v}");
}

async fn channels_fail_over_on_time_through_kill_9(backend: Backend) {
    let (smsc, relay, mut s, _cfg) = peers(backend, &[]).await;
    // A: SMS, then email after 15 s. B: one channel, its code expires after 60 s.
    let a = start_verify(
        &s,
        json!({ "brand": "Clinic", "channel_timeout_seconds": 15, "expiry_seconds": 120,
                "workflow": sms_email("+14155550120", "late@example.org") }),
    )
    .await;
    let aid = a["id"].as_str().unwrap_or_default().to_owned();
    let b = start_verify(
        &s,
        json!({ "brand": "Clinic", "expiry_seconds": 60,
                "workflow": [{ "channel": "sms", "to": "+14155550121", "from": "+14155550199" }] }),
    )
    .await;
    let bid = b["id"].as_str().unwrap_or_default().to_owned();
    let text_b = sms_to(&smsc, "+14155550121", 0, 20).await;
    let code_b = code_after(&text_b, "verification code is").unwrap_or_default();
    sms_to(&smsc, "+14155550120", 0, 20).await;
    // A power cut while both wait.
    s.kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.restart().await;
    let t0 = Instant::now();
    let mail = mail_to(&relay, "late@example.org", 40).await;
    let body = mail["text"].as_str().unwrap_or_default();
    let code_a = code_after(body, "verification code is").unwrap_or_default();
    assert_eq!(code_a.len(), 6, "{body}");
    let (st, ok) = check(&s, &aid, &code_a).await;
    assert_eq!(st, 200, "{ok}");
    assert_eq!(ok["steps"][1]["status"], "sent", "{ok}");
    // B expires on time (checked after its expiry, not before it).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, got) = send(s.admin(Method::GET, &format!("/v1/verify/{bid}"))).await;
        if got["status"] == "expired" {
            break;
        }
        assert!(Instant::now() < deadline, "never expired: {got}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (st, p) = check(&s, &bid, &code_b).await;
    assert_eq!(
        (st, p["type"].as_str()),
        (409, Some("/problems/verification-ended")),
        "{p}"
    );
    assert!(t0.elapsed() < Duration::from_secs(120));
}

/// Codes pyotp (a third-party TOTP implementation, as the user's app) shows for the URI, one
/// step before now, now, and one step after.
fn pyotp_codes(uri: &str) -> Vec<String> {
    let out = std::process::Command::new(crate::common::python())
        .args([
            "-c",
            "import json, sys, time, pyotp\n\
             t = pyotp.parse_uri(sys.argv[1]); n = time.time()\n\
             print(json.dumps([t.at(n - 30), t.at(n), t.at(n + 30)]))",
            uri,
        ])
        .output()
        .unwrap_or_else(|e| panic!("pyotp: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("pyotp output: {e}"))
}

async fn factor_post(s: &Server, id: &str, action: &str, body: Value) -> (u16, Value) {
    let (st, b) = send(
        s.admin(Method::POST, &format!("/v1/verify/factors/{id}/{action}"))
            .json(&body),
    )
    .await;
    (st.as_u16(), b)
}

async fn totp_factors_with_pyotp_as_the_app(backend: Backend) {
    let (mut s, _cfg) = start(
        backend,
        "",
        &[("HAVEN_VERIFY__FACTOR_LOCKOUT_SECONDS", "2")],
    )
    .await;
    expect_problem(
        s.admin(Method::POST, "/v1/verify/factors")
            .json(&json!({ "user_ref": "", "issuer": "A:B", "digits": 9 })),
        422,
        "validation-failed",
    )
    .await;
    let (st, e) = send(s.admin(Method::POST, "/v1/verify/factors").json(&json!({
        "user_ref": "patient-MARKER-4211", "issuer": "Clínica Sol", "label": "pat@example.org" })))
    .await;
    assert_eq!(st, 201, "{e}");
    let id = e["factor"]["id"].as_str().unwrap_or_default().to_owned();
    let secret = e["secret"].as_str().unwrap_or_default().to_owned();
    let uri = e["otpauth_uri"].as_str().unwrap_or_default().to_owned();
    assert_eq!(e["factor"]["status"], "unconfirmed", "{e}");
    assert_eq!(secret.len(), 32, "160-bit seed in base32: {e}");
    assert!(
        uri.starts_with("otpauth://totp/Cl%C3%ADnica%20Sol:pat%40example.org?"),
        "{uri}"
    );
    assert!(uri.contains(&format!("secret={secret}")), "{uri}");
    let svg = e["qr_svg"].as_str().unwrap_or_default();
    assert!(svg.contains("<svg") && svg.contains("</svg>"), "{svg}");

    let codes = pyotp_codes(&uri);
    // Not usable before it is confirmed.
    let (st, p) = factor_post(&s, &id, "check", json!({ "code": codes[1] })).await;
    assert_eq!(st, 409, "{p}");
    let (st, c) = factor_post(&s, &id, "confirm", json!({ "code": codes[1] })).await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["factor"]["status"], "active", "{c}");
    let recovery: Vec<String> = c["recovery_codes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(recovery.len(), 10, "{c}");

    // A code works once; so does the next step's (clock drift), and older ones never again.
    let (st, p) = factor_post(&s, &id, "check", json!({ "code": codes[1] })).await;
    assert_eq!(
        (st, p["type"].as_str()),
        (409, Some("/problems/code-reused")),
        "{p}"
    );
    let (st, ok) = factor_post(&s, &id, "check", json!({ "code": codes[2] })).await;
    assert_eq!(st, 200, "{ok}");
    for c in [&codes[2], &codes[0]] {
        let (st, p) = factor_post(&s, &id, "check", json!({ "code": c })).await;
        assert_eq!(
            (st, p["type"].as_str()),
            (409, Some("/problems/code-reused")),
            "{p}"
        );
    }

    // Wrong codes lock it; the lock lifts by itself.
    let wrong = (0..10)
        .map(|i| format!("{i}{i}{i}{i}{i}{i}"))
        .find(|w| !codes.contains(w))
        .unwrap_or_default();
    for left in (1..5).rev() {
        let (st, p) = factor_post(&s, &id, "check", json!({ "code": wrong })).await;
        assert_eq!(
            (st, p["attempts_remaining"].as_i64()),
            (422, Some(left)),
            "{p}"
        );
    }
    let (st, p) = factor_post(&s, &id, "check", json!({ "code": wrong })).await;
    assert_eq!(
        (st, p["type"].as_str()),
        (429, Some("/problems/factor-locked")),
        "{p}"
    );
    let (st, p) = factor_post(&s, &id, "recover", json!({ "recovery_code": recovery[0] })).await;
    assert_eq!(st, 429, "locked for recovery codes too: {p}");
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Recovery codes: any case and grouping, each once.
    let (st, ok) = factor_post(
        &s,
        &id,
        "recover",
        json!({ "recovery_code": recovery[0].to_lowercase().replace('-', " ") }),
    )
    .await;
    assert_eq!(st, 200, "{ok}");
    assert_eq!(ok["recovery_codes_left"], 9, "{ok}");
    let (st, p) = factor_post(&s, &id, "recover", json!({ "recovery_code": recovery[0] })).await;
    assert_eq!(
        (st, p["type"].as_str()),
        (422, Some("/problems/code-mismatch")),
        "{p}"
    );

    let (_, list) = send(s.admin(
        Method::GET,
        "/v1/verify/factors?user_ref=patient-MARKER-4211",
    ))
    .await;
    assert_eq!(list["items"][0]["id"], id.as_str(), "{list}");
    let (_, list) = send(s.admin(Method::GET, "/v1/verify/factors?user_ref=someone-else")).await;
    assert_eq!(list["items"], json!([]), "{list}");

    // Another account cannot see or use it.
    let sub = crate::common::create_subaccount(&s, "Neurology").await;
    let (k, ks) = crate::common::create_key(&s, &sub, &["verify:write"]).await;
    expect_problem(
        s.as_key(
            Method::POST,
            &format!("/v1/verify/factors/{id}/check"),
            &k,
            &ks,
        )
        .json(&json!({ "code": codes[1] })),
        404,
        "not-found",
    )
    .await;

    // The seed and the user reference are sealed at rest; nothing reaches the logs.
    let raw = crate::encryption::raw_database(&s).await;
    let raw = String::from_utf8_lossy(&raw);
    assert!(
        !raw.contains(&secret) && !raw.contains("MARKER-4211"),
        "stored in the clear"
    );
    for r in &recovery {
        assert!(
            !raw.contains(r.as_str()),
            "recovery code stored in the clear"
        );
    }
    let (st, _) = send(s.admin(Method::DELETE, &format!("/v1/verify/factors/{id}"))).await;
    assert_eq!(st, 204);
    expect_problem(
        s.admin(Method::GET, &format!("/v1/verify/factors/{id}")),
        404,
        "not-found",
    )
    .await;

    // Read last: stopping the server flushes its log.
    let logs = s.stopped_logs();
    assert!(
        !logs.contains(&secret) && !logs.contains("MARKER-4211"),
        "in the logs"
    );
}

async fn refused(s: &Server, v: Value, slug: &str) -> String {
    let p = expect_problem(s.admin(Method::POST, "/v1/verify").json(&v), 422, slug).await;
    p["detail"].as_str().unwrap_or_default().to_owned()
}

async fn the_fraud_guard_refuses_and_blocks_pumping(backend: Backend) {
    let (smsc, _relay, s, _cfg) = peers(
        backend,
        &[
            ("HAVEN_VERIFY__PUMPING_GRACE_SECONDS", "0"),
            ("HAVEN_VERIFY__PUMPING_MIN_SENDS", "8"),
            ("HAVEN_VERIFY__PER_IP", "3"),
        ],
    )
    .await;
    let to = |n: &str| json!({ "brand": "Clinic", "workflow": [{ "channel": "sms", "to": n, "from": "+14155550199" }] });

    // Where codes may go.
    expect_problem(
        s.admin(Method::PUT, "/v1/verify/policy")
            .json(&json!({ "allowed_countries": ["USA"], "blocked_prefixes": ["1415"] })),
        422,
        "validation-failed",
    )
    .await;
    let (st, p) = send(s.admin(Method::PUT, "/v1/verify/policy").json(&json!({
        "allowed_countries": ["us", "CA", "GB"], "blocked_prefixes": ["+1415777"] })))
    .await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["allowed_countries"], json!(["CA", "GB", "US"]), "{p}");
    for (number, reason) in [
        ("+19005550100", "premium_rate"),
        ("+449098790123", "premium_rate"),
        ("+881612345678", "high_risk_range"),
        ("+33612345678", "country_not_allowed"),
        ("+14157770100", "blocked_prefix"),
    ] {
        let detail = refused(&s, to(number), "destination-not-allowed").await;
        assert!(detail.contains(reason), "{number}: {detail}");
    }

    // Per end-user IP address.
    for i in 0..3 {
        let mut v = to(&format!("+1312555010{i}"));
        v["client_ip"] = json!("203.0.113.7");
        start_verify(&s, v).await;
    }
    let mut v = to("+13125550109");
    v["client_ip"] = json!("203.0.113.7");
    let (st, p) = send(s.admin(Method::POST, "/v1/verify").json(&v)).await;
    assert_eq!(
        (st.as_u16(), p["type"].as_str()),
        (429, Some("/problems/verify-rate-limited")),
        "{p}"
    );
    v["client_ip"] = json!("198.51.100.20");
    start_verify(&s, v).await;

    // A prefix whose codes are used stays open.
    for i in 0..9 {
        let n = format!("+1617555010{i}");
        let v = start_verify(&s, to(&n)).await;
        let id = v["id"].as_str().unwrap_or_default().to_owned();
        let text = sms_to(&smsc, &n, 0, 20).await;
        let code = code_after(&text, "verification code is").unwrap_or_default();
        let (st, ok) = check(&s, &id, &code).await;
        assert_eq!(st, 200, "{ok}");
    }
    // A burst to one prefix where no code is ever used: blocked once the sample is big enough.
    for i in 0..8 {
        start_verify(&s, to(&format!("+1212555010{i}"))).await;
    }
    let detail = refused(&s, to("+12125550108"), "destination-blocked").await;
    assert!(detail.contains("+121255"), "{detail}");
    let (_, list) = send(s.admin(Method::GET, "/v1/verify/blocked-prefixes")).await;
    assert_eq!(list["items"][0]["prefix"], "+121255", "{list}");
    assert_eq!(list["items"][0]["status"], "blocked", "{list}");
    assert_eq!(list["items"][0]["sends"], 8, "{list}");
    assert_eq!(list["items"][0]["conversions"], 0, "{list}");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    refused(&s, to("+12125550199"), "destination-blocked").await;

    // Only an admin of the account lifts it; then the prefix starts afresh.
    let (k, ks) = crate::common::create_key(&s, &s.admin.account_id, &["verify:write"]).await;
    expect_problem(
        s.as_key(
            Method::DELETE,
            "/v1/verify/blocked-prefixes/121255",
            &k,
            &ks,
        ),
        403,
        "insufficient-scope",
    )
    .await;
    let (st, _) = send(s.admin(Method::DELETE, "/v1/verify/blocked-prefixes/121255")).await;
    assert_eq!(st, 204);
    expect_problem(
        s.admin(Method::DELETE, "/v1/verify/blocked-prefixes/121255"),
        404,
        "not-found",
    )
    .await;
    start_verify(&s, to("+12125550108")).await;
    let (_, list) = send(s.admin(Method::GET, "/v1/verify/blocked-prefixes")).await;
    assert_eq!(list["items"][0]["status"], "unblocked", "{list}");

    // Every refusal and block is in the audit log.
    let (st, audit) = send(s.admin(
        Method::GET,
        "/v1/audit/events?action=verify.blocked&page_size=100",
    ))
    .await;
    assert_eq!(st, 200, "{audit}");
    let n = audit["items"].as_array().map_or(0, Vec::len);
    assert!(n >= 8, "refusals audited: {audit}");
}
