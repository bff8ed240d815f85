//! Templates, the messaging policy (first contact by template, link allowlist, quiet hours)
//! and Dispatch (fail-over from SMS to email until the patient confirms), end to end: the real
//! binary, node-smpp as the SMSC, aiosmtpd as the relay, webhooks verified with the
//! `standardwebhooks` library, and a dispatch's timer surviving a kill -9.

use crate::both_backends;
use crate::common::{Backend, Server, create_key, expect_problem, send};
use crate::messages::{get_message, post_message, register, start, wait_status};
use crate::peers::{Smsc, SmtpRelay};
use crate::webhooks::{Receiver, accepted, endpoint};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

both_backends!(
    templates_links_and_first_contact,
    quiet_hours_hold_what_is_not_urgent,
    dispatch_fails_over_until_confirmed,
    a_dispatch_timer_survives_kill_9,
);

async fn template(s: &Server, body: Value) -> Value {
    let (st, t) = send(s.admin(Method::POST, "/v1/templates").json(&body)).await;
    assert_eq!(st, 201, "{t}");
    assert_eq!(t["status"], "pending", "{t}");
    t
}

async fn approve(s: &Server, id: &str) -> Value {
    let (st, t) = send(
        s.admin(Method::POST, &format!("/v1/templates/{id}/approve"))
            .json(&json!({ "reason": "wording checked by compliance" })),
    )
    .await;
    assert_eq!(st, 200, "{t}");
    t
}

async fn put_policy(s: &Server, policy: Value) -> Value {
    let (st, p) = send(s.admin(Method::PUT, "/v1/messaging-policy").json(&policy)).await;
    assert_eq!(st, 200, "{p}");
    p
}

/// Waits until the SMSC holds a message whose text satisfies `want`.
async fn smsc_text(smsc: &Smsc, secs: u64, want: impl Fn(&str) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = smsc.messages().await;
        if let Some(m) = got
            .iter()
            .find(|m| want(m["text"].as_str().unwrap_or_default()))
        {
            return m.clone();
        }
        assert!(Instant::now() < deadline, "not at the SMSC: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn templates_links_and_first_contact(backend: Backend) {
    let smsc = Smsc::start();
    let (mut s, _cfg) = start(backend, &smsc.config("primary"), &[]).await;
    register(&s, "sms", "+14155550199").await;
    smsc.wait_bound().await;

    let t = template(
        &s,
        json!({ "name": "reminder", "channel": "sms", "locale": "en",
                "text": "Hello {{name}}, your appointment is on {{date}}. Details: https://portal.clinic.example.org/a" }),
    )
    .await;
    assert_eq!(t["parameters"], json!(["date", "name"]), "{t}");
    let tid = t["id"].as_str().unwrap_or_default().to_owned();
    let with_template = |to: &str, params: Value| {
        json!({ "channel": "sms", "to": to, "from": "+14155550199",
                "template": { "id": tid, "parameters": params } })
    };
    let params = json!({ "name": "Pat MARKER-TPL-1", "date": "Dec 3" });

    // Pending templates cannot be sent; writers cannot approve; bad slots are refused.
    expect_problem(
        s.admin(Method::POST, "/v1/messages")
            .json(&with_template("+14155550100", params.clone())),
        422,
        "template-not-approved",
    )
    .await;
    let (wk, ws) = create_key(&s, &s.admin.account_id, &["templates:write"]).await;
    expect_problem(
        s.as_key(
            Method::POST,
            &format!("/v1/templates/{tid}/approve"),
            &wk,
            &ws,
        )
        .json(&json!({})),
        403,
        "insufficient-scope",
    )
    .await;
    let bad = expect_problem(
        s.admin(Method::POST, "/v1/templates")
            .json(&json!({ "name": "x", "channel": "sms", "text": "Hi {{Name" })),
        422,
        "validation-failed",
    )
    .await;
    assert_eq!(bad["errors"][0]["field"], "text", "{bad}");

    let approved = approve(&s, &tid).await;
    assert_eq!(approved["status"], "approved");
    assert!(approved["reviewed_by"].is_string(), "{approved}");
    expect_problem(
        s.admin(Method::POST, &format!("/v1/templates/{tid}/reject"))
            .json(&json!({})),
        409,
        "template-reviewed",
    )
    .await;
    let (_, list) = send(s.admin(Method::GET, "/v1/templates?status=approved")).await;
    assert_eq!(list["items"][0]["id"], tid.as_str(), "{list}");

    // The account asks for templates at first contact and links to its own domain only.
    let bad = expect_problem(
        s.admin(Method::PUT, "/v1/messaging-policy").json(&json!({
            "link_domains": ["not a domain"],
            "quiet_hours": { "start": "25:00", "end": "08:00", "timezone": "Mars/Base" } })),
        422,
        "validation-failed",
    )
    .await;
    assert_eq!(bad["errors"].as_array().map(Vec::len), Some(3), "{bad}");
    let p = put_policy(
        &s,
        json!({ "require_template_for_first_contact": true,
                "link_domains": ["Clinic.Example.org"] }),
    )
    .await;
    assert_eq!(p["link_domains"], json!(["clinic.example.org"]), "{p}");
    let (_, got) = send(s.admin(Method::GET, "/v1/messaging-policy")).await;
    assert_eq!(got, p);

    let free = |to: &str, text: &str| json!({ "channel": "sms", "to": to, "from": "+14155550199", "text": text });
    expect_problem(
        s.admin(Method::POST, "/v1/messages")
            .json(&free("+14155550100", "Hi, free text first")),
        422,
        "template-required",
    )
    .await;
    let missing = expect_problem(
        s.admin(Method::POST, "/v1/messages")
            .json(&with_template("+14155550100", json!({ "name": "Pat" }))),
        422,
        "validation-failed",
    )
    .await;
    assert_eq!(
        missing["errors"][0]["field"], "template.parameters.date",
        "{missing}"
    );
    let m = post_message(&s, with_template("+14155550100", params)).await;
    assert_eq!(m["template_id"], tid.as_str(), "{m}");
    let rendered = "Hello Pat MARKER-TPL-1, your appointment is on Dec 3. Details: https://portal.clinic.example.org/a";
    assert_eq!(m["text"], rendered, "{m}");
    let id = m["id"].as_str().unwrap_or_default().to_owned();
    wait_status(&s, &id, &["delivered"], 30).await;
    smsc_text(&smsc, 10, |t| t == rendered).await;

    // Now that they have talked, free text goes; links still only to the clinic.
    let ok = post_message(
        &s,
        free(
            "+14155550100",
            "See https://clinic.example.org/x or www.portal.clinic.example.org",
        ),
    )
    .await;
    assert!(ok["template_id"].is_null(), "{ok}");
    for (text, host) in [
        ("Pay now at bit.ly/xyz", "bit.ly"),
        (
            "Log in: https://clinic.example.org.evil.com/",
            "clinic.example.org.evil.com",
        ),
        (
            "Visit evilclinic.example.org/login",
            "evilclinic.example.org",
        ),
    ] {
        let p = expect_problem(
            s.admin(Method::POST, "/v1/messages")
                .json(&free("+14155550100", text)),
            422,
            "link-not-allowed",
        )
        .await;
        assert!(
            p["detail"].as_str().unwrap_or_default().contains(host),
            "{p}"
        );
    }
    // A parameter cannot smuggle a link past the allowlist either.
    expect_problem(
        s.admin(Method::POST, "/v1/messages").json(&with_template(
            "+14155550100",
            json!({ "name": "https://evil.example.com/", "date": "x" }),
        )),
        422,
        "link-not-allowed",
    )
    .await;

    // Another account cannot see or use the template.
    let sub = crate::common::create_subaccount(&s, "Radiology").await;
    let (k, ks) = create_key(&s, &sub, &["templates:admin", "messages:write"]).await;
    expect_problem(
        s.as_key(Method::GET, &format!("/v1/templates/{tid}"), &k, &ks),
        404,
        "not-found",
    )
    .await;
    expect_problem(
        s.as_key(
            Method::POST,
            &format!("/v1/templates/{tid}/approve"),
            &k,
            &ks,
        )
        .json(&json!({})),
        404,
        "not-found",
    )
    .await;

    // Deleted templates cannot be sent.
    let (st, _) = send(s.admin(Method::DELETE, &format!("/v1/templates/{tid}"))).await;
    assert_eq!(st, 204);
    let gone = expect_problem(
        s.admin(Method::POST, "/v1/messages").json(&with_template(
            "+14155550101",
            json!({ "name": "a", "date": "b" }),
        )),
        422,
        "validation-failed",
    )
    .await;
    assert_eq!(gone["errors"][0]["field"], "template.id", "{gone}");

    let logs = s.stopped_logs();
    assert!(!logs.contains("MARKER-TPL"), "parameters never logged");
}

fn hhmm(minutes_of_day: i64) -> String {
    let m = minutes_of_day.rem_euclid(24 * 60);
    format!("{:02}:{:02}", m / 60, m % 60)
}

async fn quiet_hours_hold_what_is_not_urgent(backend: Backend) {
    let smsc = Smsc::start();
    let (s, _cfg) = start(backend, &smsc.config("primary"), &[]).await;
    register(&s, "sms", "+14155550199").await;
    smsc.wait_bound().await;
    // Quiet from an hour ago to an hour from now, in UTC.
    let now_s = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
    .unwrap_or(0);
    let minute = (now_s / 60) % (24 * 60);
    put_policy(
        &s,
        json!({ "quiet_hours": { "start": hhmm(minute - 60), "end": hhmm(minute + 60), "timezone": "UTC" } }),
    )
    .await;
    let msg = |text: &str, extra: Value| {
        let mut m =
            json!({ "channel": "sms", "to": "+14155550100", "from": "+14155550199", "text": text });
        if let (Some(m), Some(e)) = (m.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        m
    };
    let held = post_message(&s, msg("held till morning", json!({}))).await;
    let until = held["send_after"].as_str().unwrap_or_default().to_owned();
    assert!(!until.is_empty(), "{held}");
    let urgent = post_message(&s, msg("urgent: your code", json!({ "urgent": true }))).await;
    assert!(urgent["send_after"].is_null(), "{urgent}");
    // Nine hours ahead of UTC is outside the window.
    let tokyo = post_message(
        &s,
        msg(
            "for a patient in Tokyo",
            json!({ "timezone": "Asia/Tokyo" }),
        ),
    )
    .await;
    assert!(tokyo["send_after"].is_null(), "{tokyo}");
    expect_problem(
        s.admin(Method::POST, "/v1/messages")
            .json(&msg("x", json!({ "timezone": "Nowhere/Land" }))),
        422,
        "validation-failed",
    )
    .await;

    for m in [&urgent, &tokyo] {
        wait_status(&s, m["id"].as_str().unwrap_or_default(), &["delivered"], 30).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let h = get_message(&s, held["id"].as_str().unwrap_or_default()).await;
    assert_eq!(h["status"], "accepted", "held, not sent: {h}");
    assert_eq!(h["send_after"], until.as_str(), "{h}");
    assert!(
        h["expires_at"].as_str().unwrap_or_default() > until.as_str(),
        "the time to live counts from the end of quiet hours: {h}"
    );
    let texts: Vec<String> = smsc
        .messages()
        .await
        .iter()
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .collect();
    assert!(!texts.iter().any(|t| t == "held till morning"), "{texts:?}");
}

fn dispatch_events(log: &[Value], id: &str) -> Vec<String> {
    let mut v: Vec<(String, String)> = accepted(log)
        .values()
        .filter(|l| l["data"]["dispatch_id"] == id)
        .map(|l| {
            (
                l["timestamp"].as_str().unwrap_or_default().to_owned(),
                l["type"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, t)| t).collect()
}

async fn start_dispatch(s: &Server, body: Value) -> Value {
    let (st, d) = send(s.admin(Method::POST, "/v1/dispatch").json(&body)).await;
    assert_eq!(st, 202, "{d}");
    assert_eq!(d["status"], "running", "{d}");
    d
}

async fn wait_dispatch(s: &Server, id: &str, want: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (st, d) = send(s.admin(Method::GET, &format!("/v1/dispatch/{id}"))).await;
        assert_eq!(st, 200, "{d}");
        if d["status"] == want {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "dispatch {id} never reached {want}: {d}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sms_then_email(to_sms: &str, to_mail: &str, marker: &str, timeout: u64) -> Value {
    json!({ "steps": [
        { "message": { "channel": "sms", "to": to_sms, "from": "+14155550199",
                       "text": format!("Appointment tomorrow {marker}. Reply YES to confirm.") },
          "until": { "replied": "YES" }, "timeout_seconds": timeout },
        { "message": { "channel": "email", "to": to_mail, "from": "clinic@example.org",
                       "subject": format!("Your appointment {marker}"), "text": "Please confirm by phone." },
          "until": "delivered" }
    ]})
}

async fn dispatch_fails_over_until_confirmed(backend: Backend) {
    let smsc = Smsc::start();
    let relay = SmtpRelay::start();
    let r = Receiver::start();
    let toml = format!("{}{}", smsc.config("primary"), relay.config());
    // No recheck within the test: every step reacts to its message's change or the reply.
    let (mut s, _cfg) = start(
        backend,
        &toml,
        &[("HAVEN_DISPATCH__RECHECK_SECONDS", "600")],
    )
    .await;
    let (_, secret) = endpoint(&s, &r.url(), json!(["dispatch.*"])).await;
    r.set("secrets", &secret);
    register(&s, "sms", "+14155550199").await;
    register(&s, "email", "clinic@example.org").await;
    smsc.wait_bound().await;

    // Bad workflows are refused whole, with every problem named.
    let bad = expect_problem(
        s.admin(Method::POST, "/v1/dispatch").json(&json!({ "steps": [
            { "message": { "channel": "sms", "to": "+14155550100", "from": "+14155550199", "text": "x" },
              "until": "read" },
            { "message": { "channel": "sms", "to": "nope", "from": "+14155550199", "text": "y" } }
        ]})),
        422,
        "validation-failed",
    )
    .await;
    let fields: Vec<&str> = bad["errors"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["field"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        fields,
        ["steps[0].until", "steps[0].timeout_seconds"],
        "{bad}"
    );
    let bad = expect_problem(
        s.admin(Method::POST, "/v1/dispatch").json(&json!({ "steps": [
            { "message": { "channel": "sms", "to": "nope", "from": "+14155550199", "text": "y" } }
        ]})),
        422,
        "validation-failed",
    )
    .await;
    assert_eq!(bad["errors"][0]["field"], "steps[0].message.to", "{bad}");
    expect_problem(
        s.admin(Method::POST, "/v1/dispatch").json(&json!({ "steps": [
            { "message": { "channel": "sms", "to": "+14155550100", "from": "+14155550000", "text": "y" } }
        ]})),
        422,
        "sender-not-registered",
    )
    .await;
    let (k, ks) = create_key(&s, &s.admin.account_id, &["dispatch:write"]).await;
    expect_problem(
        s.as_key(Method::POST, "/v1/dispatch", &k, &ks)
            .json(&sms_then_email("+14155550100", "pat@example.org", "x", 5)),
        403,
        "insufficient-scope",
    )
    .await;

    // 1. No answer to the SMS: after its timeout the email goes, and its delivery ends it.
    let a = start_dispatch(
        &s,
        sms_then_email("+14155550100", "pat@example.org", "MARKER-DSP-A", 2),
    )
    .await;
    let aid = a["id"].as_str().unwrap_or_default().to_owned();
    smsc_text(&smsc, 20, |t| t.contains("MARKER-DSP-A")).await;
    let done = wait_dispatch(&s, &aid, "succeeded", 30).await;
    assert_eq!(done["outcome"], "delivered", "{done}");
    assert_eq!(done["steps"][0]["status"], "timed_out", "{done}");
    assert_eq!(done["steps"][1]["status"], "succeeded", "{done}");
    assert_eq!(
        done["steps"][0]["until"],
        json!({ "replied": ["YES"] }),
        "{done}"
    );
    let mail = relay.mail();
    assert!(
        mail.iter()
            .any(|m| m["subject"] == "Your appointment MARKER-DSP-A"),
        "{mail:?}"
    );
    let email_id = done["steps"][1]["message_id"].as_str().unwrap_or_default();
    let em = get_message(&s, email_id).await;
    assert_eq!(em["channel"], "email", "{em}");

    // 2. The patient answers "yes please": the dispatch ends at once, no email is sent.
    let b = start_dispatch(
        &s,
        sms_then_email("+14155550101", "pat2@example.org", "MARKER-DSP-B", 120),
    )
    .await;
    let bid = b["id"].as_str().unwrap_or_default().to_owned();
    smsc_text(&smsc, 20, |t| t.contains("MARKER-DSP-B")).await;
    // A reply that is not YES does not end it.
    smsc.mo("+14155550101", "+14155550199", "what time?").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, d) = send(s.admin(Method::GET, &format!("/v1/dispatch/{bid}"))).await;
    assert_eq!(d["status"], "running", "{d}");
    let t0 = Instant::now();
    smsc.mo("+14155550101", "+14155550199", "yes please").await;
    let done = wait_dispatch(&s, &bid, "succeeded", 20).await;
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the reply ended the dispatch at once, not at a recheck"
    );
    assert_eq!(done["outcome"], "replied YES", "{done}");
    assert_eq!(done["steps"][1]["status"], "cancelled", "{done}");
    assert!(done["steps"][1]["message_id"].is_null(), "{done}");
    assert!(
        !relay
            .mail()
            .iter()
            .any(|m| m["subject"] == "Your appointment MARKER-DSP-B"),
        "no email once confirmed"
    );

    // 3. Cancelled while waiting: nothing further is sent; a second cancel is a conflict.
    let c = start_dispatch(
        &s,
        sms_then_email("+14155550102", "pat3@example.org", "MARKER-DSP-C", 2),
    )
    .await;
    let cid = c["id"].as_str().unwrap_or_default().to_owned();
    smsc_text(&smsc, 20, |t| t.contains("MARKER-DSP-C")).await;
    let (st, cancelled) = send(s.admin(Method::POST, &format!("/v1/dispatch/{cid}/cancel"))).await;
    assert_eq!(st, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    expect_problem(
        s.admin(Method::POST, &format!("/v1/dispatch/{cid}/cancel")),
        409,
        "dispatch-ended",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !relay
            .mail()
            .iter()
            .any(|m| m["subject"] == "Your appointment MARKER-DSP-C"),
        "no email after cancel"
    );

    // 4. An opted-out patient: the SMS step is skipped and the email goes at once.
    smsc.mo("+14155550103", "+14155550199", "STOP").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, c) = send(
            s.admin(Method::POST, "/v1/consents/search")
                .json(&json!({ "channel": "sms", "address": "+14155550103" })),
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
    let d = start_dispatch(
        &s,
        sms_then_email("+14155550103", "pat4@example.org", "MARKER-DSP-D", 600),
    )
    .await;
    let did = d["id"].as_str().unwrap_or_default().to_owned();
    let done = wait_dispatch(&s, &did, "succeeded", 30).await;
    assert_eq!(done["steps"][0]["status"], "skipped", "{done}");
    assert_eq!(done["steps"][0]["reason"], "recipient_opted_out", "{done}");

    // Events, verified by the standardwebhooks library; they carry ids only.
    let log = r
        .wait_for("dispatch events", 30, |log| {
            dispatch_events(log, &aid).contains(&"dispatch.succeeded".to_owned())
                && dispatch_events(log, &bid).contains(&"dispatch.succeeded".to_owned())
                && dispatch_events(log, &cid).contains(&"dispatch.cancelled".to_owned())
        })
        .await;
    assert!(log.iter().all(|l| l["verified"] == true), "{log:?}");
    let ea = dispatch_events(&log, &aid);
    assert_eq!(
        ea.iter().filter(|t| *t == "dispatch.step_started").count(),
        2,
        "{ea:?}"
    );
    let text = serde_json::to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("MARKER") && !text.contains("4155550100"),
        "{text}"
    );

    // Tenancy: another account sees none of it.
    let sub = crate::common::create_subaccount(&s, "Oncology").await;
    let (k, ks) = create_key(&s, &sub, &["dispatch:write"]).await;
    expect_problem(
        s.as_key(Method::GET, &format!("/v1/dispatch/{aid}"), &k, &ks),
        404,
        "not-found",
    )
    .await;
    expect_problem(
        s.as_key(Method::POST, &format!("/v1/dispatch/{bid}/cancel"), &k, &ks),
        404,
        "not-found",
    )
    .await;
    let (_, list) = send(s.as_key(Method::GET, "/v1/dispatch", &k, &ks)).await;
    assert_eq!(list["items"], json!([]), "{list}");
    let (_, list) = send(s.admin(Method::GET, "/v1/dispatch?status=succeeded")).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(3), "{list}");

    // The steps are sealed at rest and never logged.
    let raw = crate::encryption::raw_database(&s).await;
    let raw = String::from_utf8_lossy(&raw);
    assert!(
        !raw.contains("MARKER-DSP"),
        "dispatch steps stored in the clear"
    );
    let logs = s.stopped_logs();
    assert!(!logs.contains("MARKER-DSP"), "in the logs");
}

async fn a_dispatch_timer_survives_kill_9(backend: Backend) {
    let smsc = Smsc::start();
    let relay = SmtpRelay::start();
    let toml = format!("{}{}", smsc.config("primary"), relay.config());
    let (mut s, _cfg) = start(backend, &toml, &[]).await;
    register(&s, "sms", "+14155550199").await;
    register(&s, "email", "clinic@example.org").await;
    smsc.wait_bound().await;
    let d = start_dispatch(
        &s,
        sms_then_email("+14155550100", "pat@example.org", "MARKER-DSP-K", 4),
    )
    .await;
    let id = d["id"].as_str().unwrap_or_default().to_owned();
    smsc_text(&smsc, 20, |t| t.contains("MARKER-DSP-K")).await;
    // Power cut while the step waits; down past its timeout.
    s.kill9();
    tokio::time::sleep(Duration::from_secs(5)).await;
    s.restart().await;
    let done = wait_dispatch(&s, &id, "succeeded", 40).await;
    assert_eq!(done["steps"][0]["status"], "timed_out", "{done}");
    let mails: Vec<Value> = relay
        .mail()
        .into_iter()
        .filter(|m| m["subject"] == "Your appointment MARKER-DSP-K")
        .collect();
    assert_eq!(mails.len(), 1, "the email went once: {mails:?}");
    // The SMS step was not sent again by the dispatch (same message id after the restart).
    let sms_id = done["steps"][0]["message_id"].as_str().unwrap_or_default();
    let (_, list) = send(s.admin(Method::GET, "/v1/messages?channel=sms")).await;
    let n = list["items"]
        .as_array()
        .map(|a| a.iter().filter(|m| m["id"] == sms_id).count())
        .unwrap_or(0);
    assert_eq!(n, 1, "{list}");
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(1),
        "one SMS message for the dispatch: {list}"
    );
}
