//! Messages end to end: the real binary sending SMS to a node-smpp SMSC and email through an
//! aiosmtpd relay with STARTTLS, receipts and replies coming back, webhooks verified with the
//! `standardwebhooks` library, and every accepted message arriving through a kill -9 of Haven
//! and a restart of the SMSC mid-load.

use crate::both_backends;
use crate::common::{Backend, Options, Server, create_key, expect_problem, send};
use crate::peers::{Smsc, SmtpRelay};
use crate::webhooks::{Receiver, accepted, endpoint};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

both_backends!(
    sms_is_sent_receipted_and_answered,
    email_goes_through_a_starttls_relay,
    every_accepted_sms_arrives_through_crashes_and_outages,
    senders_scopes_and_rate_limits,
    consent_keywords_and_opt_outs,
);

/// A server whose configuration file holds `toml`; the file lives as long as the guard.
pub(crate) async fn start(
    backend: Backend,
    toml: &str,
    env: &[(&str, &str)],
) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("haven.toml");
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("{e}"));
    let mut all = vec![
        ("HAVEN_CONFIG".to_owned(), path.display().to_string()),
        (
            "HAVEN_WEBHOOKS__ALLOW_TARGETS".to_owned(),
            "127.0.0.1/32".to_owned(),
        ),
        (
            "HAVEN_WEBHOOKS__RETRY_SCHEDULE_SECONDS".to_owned(),
            "1,1,1".to_owned(),
        ),
    ];
    all.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let s = Server::start_with(
        backend,
        Options {
            env: all,
            ..Options::default()
        },
    )
    .await;
    (s, dir)
}

pub(crate) async fn register(s: &Server, channel: &str, address: &str) -> Value {
    let (st, b) = send(
        s.admin(Method::POST, "/v1/senders")
            .json(&json!({ "channel": channel, "address": address })),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    b
}

pub(crate) async fn post_message(s: &Server, body: Value) -> Value {
    let (st, b) = send(s.admin(Method::POST, "/v1/messages").json(&body)).await;
    assert_eq!(st, 202, "{b}");
    assert_eq!(b["status"], "accepted", "{b}");
    b
}

pub(crate) async fn get_message(s: &Server, id: &str) -> Value {
    let (st, b) = send(s.admin(Method::GET, &format!("/v1/messages/{id}"))).await;
    assert_eq!(st, 200, "{b}");
    b
}

/// Polls a message until its status is one of `want`.
pub(crate) async fn wait_status(s: &Server, id: &str, want: &[&str], secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let m = get_message(s, id).await;
        if want.iter().any(|w| m["status"] == *w) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "message {id} never reached {want:?}: {m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn events_for(log: &[Value], id: &str) -> Vec<String> {
    accepted(log)
        .values()
        .filter(|l| l["data"]["message_id"] == id)
        .map(|l| l["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn sms_is_sent_receipted_and_answered(backend: Backend) {
    let smsc = Smsc::start();
    let r = Receiver::start();
    let (mut s, _cfg) = start(backend, &smsc.config("primary"), &[]).await;
    let (_, secret) = endpoint(&s, &r.url(), json!(["message.*"])).await;
    r.set("secrets", &secret);
    register(&s, "sms", "+14155550199").await;
    let (st, contact) = send(s.admin(Method::POST, "/v1/contacts").json(&json!({
        "reference": "MRN-1", "phone_number": "+1 415 555 0100"
    })))
    .await;
    assert_eq!(st, 201, "{contact}");
    smsc.wait_bound().await;
    // A receipt for a message Haven never sent (the SMSC's mistake, or meant for another
    // system): acknowledged, kept and tried again later, and it holds up no other receipt.
    let ack = smsc.foreign_receipt("F0REIGN00001").await;
    assert_eq!(ack["statuses"], json!([0]), "{ack}");

    // A short GSM text to a known patient: sealed under the patient's key, receipted.
    let short = "Reminder MARKER-SMS-7731: cardiology tomorrow 10:00. Reply YES to confirm.";
    let m1 = post_message(
        &s,
        json!({ "channel": "sms", "to": "+14155550100", "from": "+14155550199",
                "text": short, "client_ref": "appt-1" }),
    )
    .await;
    assert_eq!(m1["contact_id"], contact["id"], "{m1}");
    let id1 = m1["id"].as_str().unwrap_or_default().to_owned();
    // A long UCS-2 text: three or more concatenated segments, reassembled by the SMSC.
    let long = "Ελληνικά και emoji 😀 — ραντεβού αύριο. ".repeat(5);
    let m2 = post_message(
        &s,
        json!({ "channel": "sms", "to": "+14155550101", "from": "+14155550199", "text": long }),
    )
    .await;
    let id2 = m2["id"].as_str().unwrap_or_default().to_owned();
    // The carrier fails one and refuses another.
    let m3 = post_message(
        &s,
        json!({ "channel": "sms", "to": "+14155550666", "from": "+14155550199", "text": "x" }),
    )
    .await;
    let m4 = post_message(
        &s,
        json!({ "channel": "sms", "to": "+14155550777", "from": "+14155550199", "text": "y" }),
    )
    .await;
    let id3 = m3["id"].as_str().unwrap_or_default().to_owned();
    let id4 = m4["id"].as_str().unwrap_or_default().to_owned();

    let d1 = wait_status(&s, &id1, &["delivered"], 30).await;
    assert_eq!(d1["text"], short);
    assert_eq!(d1["client_ref"], "appt-1");
    assert_eq!(d1["parts"], 1);
    let d2 = wait_status(&s, &id2, &["delivered"], 30).await;
    assert!(d2["parts"].as_i64().unwrap_or(0) >= 3, "{d2}");
    let f3 = wait_status(&s, &id3, &["failed"], 30).await;
    assert!(f3["error_code"].is_string(), "{f3}");
    let f4 = wait_status(&s, &id4, &["rejected"], 30).await;
    assert!(
        f4["error_code"]
            .as_str()
            .unwrap_or("")
            .to_ascii_lowercase()
            .contains('b'),
        "ESME_RINVDSTADR (0x0B) expected: {f4}"
    );

    // What the SMSC received, decoded by node-smpp.
    let got = smsc.messages().await;
    let texts: Vec<&str> = got.iter().filter_map(|m| m["text"].as_str()).collect();
    assert!(texts.contains(&short), "{got:?}");
    assert!(
        texts.contains(&long.as_str()),
        "the long text reassembled: {got:?}"
    );
    let first = got
        .iter()
        .find(|m| m["text"] == short)
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        first["registered_delivery"], 1,
        "receipts requested: {first}"
    );

    // A reply from the patient, and a message to a number nobody registered.
    let ack = smsc
        .mo("+14155550100", "+14155550199", "YES MARKER-MO-5521")
        .await;
    assert_eq!(ack["statuses"], json!([0]), "{ack}");
    let ack = smsc.mo("+14155550100", "+14155550000", "to nobody").await;
    assert_eq!(
        ack["statuses"],
        json!([0]),
        "acknowledged, not stored: {ack}"
    );

    let log = r
        .wait_for("message events", 30, |log| {
            events_for(log, &id1).contains(&"message.delivered".to_owned())
                && events_for(log, &id3).contains(&"message.failed".to_owned())
                && events_for(log, &id4).contains(&"message.rejected".to_owned())
                && accepted(log)
                    .values()
                    .any(|l| l["type"] == "message.inbound")
        })
        .await;
    assert!(log.iter().all(|l| l["verified"] == true), "{log:?}");
    // Each was sent straight from acceptance (leased to this node on insert), not claimed.
    let handed = metric(&s, "haven_messages_handoff_total{result=\"sent\"}").await;
    assert!(handed >= 4.0, "{handed} messages handed over");
    // Each acceptance's wait for its group commit is measured.
    let waits = metric(&s, "haven_message_commit_wait_seconds_count").await;
    assert!(
        waits >= handed,
        "{waits} commit waits for {handed} messages"
    );
    // Receipts: at least one for each part of the delivered and failed messages applied; the
    // foreign one stored and tried again (after 100 ms, then 200 ms, …), never applied.
    let applied = metric(&s, "haven_receipts_total{result=\"applied\"}").await;
    assert!(applied >= 5.0, "{applied} receipts applied");
    assert!(metric(&s, "haven_receipts_total{result=\"waiting\"}").await >= 1.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&s, "haven_receipts_total{result=\"retried\"}").await < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the stored receipt was not tried again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e1 = events_for(&log, &id1);
    assert!(e1.contains(&"message.submitted".to_owned()), "{e1:?}");
    let inbound = accepted(&log)
        .values()
        .find(|l| l["type"] == "message.inbound")
        .cloned()
        .unwrap_or(Value::Null);
    let text = serde_json::to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("MARKER") && !text.contains("4155550100"),
        "events carry ids, never content or numbers"
    );
    let in_id = inbound["data"]["message_id"].as_str().unwrap_or_default();
    let reply = get_message(&s, in_id).await;
    assert_eq!(reply["direction"], "inbound");
    assert_eq!(reply["status"], "received");
    assert_eq!(reply["text"], "YES MARKER-MO-5521");
    assert_eq!(reply["from"], "+14155550100");
    assert_eq!(reply["to"], "+14155550199");
    assert_eq!(reply["contact_id"], contact["id"], "{reply}");

    let (_, list) = send(s.admin(Method::GET, "/v1/messages?direction=inbound")).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    let (_, list) = send(s.admin(Method::GET, "/v1/messages?client_ref=appt-1")).await;
    assert_eq!(list["items"][0]["id"], id1.as_str(), "{list}");
    let (_, list) = send(s.admin(Method::GET, "/v1/messages?status=rejected")).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    expect_problem(
        s.admin(Method::GET, "/v1/messages?status=lost"),
        422,
        "validation-failed",
    )
    .await;

    // Content and numbers are stored only encrypted and never logged.
    let raw = crate::encryption::raw_database(&s).await;
    let raw = String::from_utf8_lossy(&raw);
    for marker in ["MARKER-SMS-7731", "MARKER-MO-5521", "ραντεβού", "appt-1"] {
        assert!(!raw.contains(marker), "{marker} stored in the clear");
    }
    // Erasing the patient erases their messages too: the key is gone.
    let cid = contact["id"].as_str().unwrap_or_default();
    let (st, _) = send(s.admin(Method::POST, &format!("/v1/contacts/{cid}/erase"))).await;
    assert_eq!(st, 200);
    let gone = get_message(&s, &id1).await;
    assert_eq!(gone["erased"], true, "{gone}");
    assert!(gone["text"].is_null() && gone["to"].is_null(), "{gone}");
    let other = get_message(&s, &id2).await;
    assert_eq!(
        other["text"],
        long.as_str(),
        "other patients' messages stay"
    );

    // On SQLite the sends' point reads ran on the runtime threads, and were timed there.
    if backend == Backend::Sqlite {
        let metrics = s.metrics().await;
        let name = "haven_sqlite_inline_read_seconds_bucket{le=\"0.00005\"}";
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }

    // Read last: stopping the server flushes its log.
    let logs = s.stopped_logs();
    for marker in ["MARKER", "4155550100", "ραντεβού"] {
        assert!(!logs.contains(marker), "{marker} in the logs");
    }
}

async fn email_goes_through_a_starttls_relay(backend: Backend) {
    let relay = SmtpRelay::start();
    let (s, _cfg) = start(
        backend,
        &relay.config(),
        &[("HAVEN_MESSAGES__RETRY_MAX_SECONDS", "1")],
    )
    .await;
    register(&s, "email", "clinic@example.org").await;
    let m = post_message(
        &s,
        json!({ "channel": "email", "to": "pat@example.org", "from": "clinic@example.org",
                "subject": "Your results MARKER-MAIL-1", "text": "Plain MARKER-MAIL-2",
                "html": "<p>Rich MARKER-MAIL-3</p>" }),
    )
    .await;
    let id = m["id"].as_str().unwrap_or_default().to_owned();
    let done = wait_status(&s, &id, &["submitted"], 30).await;
    assert_eq!(done["parts"], 1, "{done}");
    let mail = relay.mail();
    assert_eq!(mail.len(), 1, "{mail:?}");
    let got = &mail[0];
    assert_eq!(got["tls"], true, "STARTTLS was used: {got}");
    assert_eq!(got["auth_user"], "relay", "{got}");
    assert_eq!(got["rcpt_tos"], json!(["pat@example.org"]));
    assert_eq!(got["subject"], "Your results MARKER-MAIL-1");
    assert!(
        got["text"]
            .as_str()
            .unwrap_or("")
            .contains("Plain MARKER-MAIL-2"),
        "{got}"
    );
    assert!(
        got["html"]
            .as_str()
            .unwrap_or("")
            .contains("Rich MARKER-MAIL-3"),
        "{got}"
    );
    assert_eq!(got["x_haven_message_id"], id.as_str(), "{got}");

    // A permanent refusal is final; a temporary one is retried until the relay accepts.
    relay.mode("reject");
    let m = post_message(
        &s,
        json!({ "channel": "email", "to": "gone@example.org", "from": "clinic@example.org",
                "subject": "s", "text": "t" }),
    )
    .await;
    let id = m["id"].as_str().unwrap_or_default().to_owned();
    let r = wait_status(&s, &id, &["rejected"], 30).await;
    assert_eq!(r["error_code"], "550", "{r}");
    relay.mode("tempfail");
    let m = post_message(
        &s,
        json!({ "channel": "email", "to": "later@example.org", "from": "clinic@example.org",
                "subject": "s", "text": "retry me" }),
    )
    .await;
    let id = m["id"].as_str().unwrap_or_default().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = get_message(&s, &id).await;
        assert_eq!(m["status"], "accepted", "{m}");
        if m["attempts"].as_i64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "never retried: {m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    relay.mode("accept");
    wait_status(&s, &id, &["submitted"], 30).await;
    let mail = relay.mail();
    assert!(
        mail.iter()
            .any(|m| m["text"].as_str().unwrap_or("").contains("retry me"))
    );
    let raw = crate::encryption::raw_database(&s).await;
    let raw = String::from_utf8_lossy(&raw);
    assert!(!raw.contains("MARKER-MAIL") && !raw.contains("pat@example.org"));
}

/// Sends `n` messages from a background task through whichever address the server has now,
/// recording the text of every one answered `202`.
fn load(
    target: Arc<Mutex<(String, reqwest::Client)>>,
    auth: (String, String),
    sender: usize,
    n: usize,
    accepted: Arc<Mutex<BTreeMap<String, String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 0;
        while i < n {
            let Ok((url, client)) = target.lock().map(|g| g.clone()) else {
                return;
            };
            let text = format!("load {sender}-{i:05}");
            let res = client
                .post(format!("{url}/v1/messages"))
                .basic_auth(&auth.0, Some(&auth.1))
                .timeout(Duration::from_secs(5))
                .json(&json!({ "channel": "sms", "to": "+14155550100",
                               "from": "+14155550199", "text": text }))
                .send()
                .await;
            match res {
                Ok(r) if r.status() == 202 => {
                    let b: Value = r.json().await.unwrap_or(Value::Null);
                    let id = b["id"].as_str().unwrap_or_default().to_owned();
                    if let Ok(mut a) = accepted.lock() {
                        a.insert(id, text);
                    }
                    i += 1;
                }
                // Down, restarting, or throttled: not accepted, so try again.
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
}

fn count(m: &Arc<Mutex<BTreeMap<String, String>>>) -> usize {
    m.lock().map(|a| a.len()).unwrap_or(0)
}

pub(crate) async fn until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn every_accepted_sms_arrives_through_crashes_and_outages(backend: Backend) {
    let record = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let record_file = record.path().join("submits.jsonl");
    let mut smsc = Smsc::start_recording(0, &record_file);
    let port = smsc.port;
    let (mut s, _cfg) = start(
        backend,
        &smsc.config("primary"),
        &[
            ("HAVEN_MESSAGES__LEASE_SECONDS", "3"),
            ("HAVEN_MESSAGES__RETRY_MAX_SECONDS", "1"),
        ],
    )
    .await;
    register(&s, "sms", "+14155550199").await;
    smsc.wait_bound().await;
    let accepted_ids = Arc::new(Mutex::new(BTreeMap::new()));
    let target = Arc::new(Mutex::new((s.base.clone(), s.client.clone())));
    let auth = (s.admin.key_id.clone(), s.admin.secret.clone());
    let (senders, each) = (4, 100);
    let loaders: Vec<_> = (0..senders)
        .map(|k| {
            load(
                Arc::clone(&target),
                auth.clone(),
                k,
                each,
                Arc::clone(&accepted_ids),
            )
        })
        .collect();

    // Haven dies mid-load with accepted messages still queued, and comes back.
    until("a first third accepted", 60, || count(&accepted_ids) >= 100).await;
    s.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.restart().await;
    if let Ok(mut t) = target.lock() {
        *t = (s.base.clone(), s.client.clone());
    }
    // The SMSC dies mid-load and comes back on the same port.
    until("two thirds accepted", 60, || count(&accepted_ids) >= 250).await;
    smsc.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let smsc = Smsc::start_recording(port, &record_file);
    for l in loaders {
        tokio::time::timeout(Duration::from_secs(120), l)
            .await
            .unwrap_or_else(|_| panic!("the load never finished"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let accepted_texts: BTreeSet<String> = accepted_ids
        .lock()
        .map(|a| a.values().cloned().collect())
        .unwrap_or_default();
    assert_eq!(accepted_texts.len(), senders * each);

    // Every accepted message reaches the SMSC, at least once.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (arrived, submits) = loop {
        let lines = std::fs::read_to_string(&record_file).unwrap_or_default();
        let texts: Vec<String> = lines
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["text"].as_str().map(str::to_owned))
            .collect();
        let arrived: BTreeSet<String> = texts.iter().cloned().collect();
        if accepted_texts.is_subset(&arrived) {
            break (arrived, texts.len());
        }
        assert!(
            Instant::now() < deadline,
            "{} accepted messages never reached the SMSC",
            accepted_texts.difference(&arrived).count()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "{} accepted, {} distinct arrived, {} submits (duplicates are at-least-once retries)",
        accepted_texts.len(),
        arrived.len(),
        submits
    );
    // Nothing stays queued: every message was handed over.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, list) = send(s.admin(Method::GET, "/v1/messages?status=accepted")).await;
        if list["items"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(Instant::now() < deadline, "messages left queued: {list}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Each message is billed exactly once, however often it was submitted.
    let billed = crate::usage::all_usage(&s, "").await;
    let billed_ids: Vec<String> = billed
        .iter()
        .map(|u| u["resource_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let distinct: BTreeSet<&String> = billed_ids.iter().collect();
    assert_eq!(distinct.len(), billed_ids.len(), "a message billed twice");
    let accepted_msgs: BTreeSet<String> = accepted_ids
        .lock()
        .map(|a| a.keys().cloned().collect())
        .unwrap_or_default();
    let billed_set: BTreeSet<String> = distinct.into_iter().cloned().collect();
    let unbilled: Vec<&String> = accepted_msgs.difference(&billed_set).collect();
    assert!(
        unbilled.is_empty(),
        "accepted but never billed: {unbilled:?}"
    );
    // A message can be stored while its 202 is lost to the kill; billed, it was really sent.
    for extra in billed_set.difference(&accepted_msgs) {
        let m = get_message(&s, extra).await;
        assert!(
            m["status"] == "submitted" || m["status"] == "delivered",
            "billed but not sent: {m}"
        );
    }
    drop(smsc);
}

async fn senders_scopes_and_rate_limits(backend: Backend) {
    let smsc = Smsc::start();
    let (s, _cfg) = start(
        backend,
        &smsc.config("primary"),
        &[
            ("HAVEN_MESSAGES__RATE_PER_SECOND", "1"),
            ("HAVEN_MESSAGES__BURST", "2"),
        ],
    )
    .await;
    // Sending from an address nobody registered is refused: anti-smishing.
    expect_problem(
        s.admin(Method::POST, "/v1/messages").json(&json!({
            "channel": "sms", "to": "+14155550100", "from": "+14155550199", "text": "hi" })),
        422,
        "sender-not-registered",
    )
    .await;
    let snd = register(&s, "sms", "+14155550199").await;
    expect_problem(
        s.admin(Method::POST, "/v1/senders")
            .json(&json!({ "channel": "sms", "address": "+1 415 555 0199" })),
        409,
        "sender-taken",
    )
    .await;
    expect_problem(
        s.admin(Method::POST, "/v1/senders")
            .json(&json!({ "channel": "fax", "address": "x" })),
        422,
        "validation-failed",
    )
    .await;
    // Another department cannot use this number, nor see it.
    let sub = crate::common::create_subaccount(&s, "Dermatology").await;
    let (kid, ksecret) = create_key(&s, &sub, &["messages:write", "senders:read"]).await;
    expect_problem(
        s.as_key(Method::POST, "/v1/messages", &kid, &ksecret)
            .json(&json!({
            "channel": "sms", "to": "+14155550100", "from": "+14155550199", "text": "hi" })),
        422,
        "sender-not-registered",
    )
    .await;
    let sid = snd["id"].as_str().unwrap_or_default();
    expect_problem(
        s.as_key(Method::GET, &format!("/v1/senders/{sid}"), &kid, &ksecret),
        404,
        "not-found",
    )
    .await;
    let (st, theirs) = send(s.as_key(Method::GET, "/v1/messages", &kid, &ksecret)).await;
    assert_eq!(st, 200);
    assert_eq!(
        theirs["items"],
        json!([]),
        "another department's messages are invisible"
    );
    let (rid, rsecret) = create_key(&s, &sub, &["senders:read"]).await;
    expect_problem(
        s.as_key(Method::GET, "/v1/messages", &rid, &rsecret),
        403,
        "insufficient-scope",
    )
    .await;
    // No email relay is configured on this server.
    register(&s, "email", "clinic@example.org").await;
    expect_problem(
        s.admin(Method::POST, "/v1/messages").json(&json!({
            "channel": "email", "to": "p@example.org", "from": "clinic@example.org",
            "subject": "s", "text": "t" })),
        422,
        "channel-unavailable",
    )
    .await;
    // Bad input, each with its stable problem type.
    expect_problem(
        s.admin(Method::POST, "/v1/messages").json(&json!({
            "channel": "sms", "to": "0155", "from": "+14155550199", "text": "" })),
        422,
        "validation-failed",
    )
    .await;
    expect_problem(
        s.admin(Method::POST, "/v1/messages").json(&json!({
            "channel": "sms", "to": "+14155550100", "from": "+14155550199", "text": "hi",
            "priority": "high" })),
        400,
        "unknown-field",
    )
    .await;
    // Over the account's rate: 429 with Retry-After, and nothing accepted.
    let body =
        json!({ "channel": "sms", "to": "+14155550100", "from": "+14155550199", "text": "r" });
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let res = s
            .admin(Method::POST, "/v1/messages")
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        statuses.push(res.status().as_u16());
        if res.status() == 429 {
            retry_after = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
        }
    }
    assert_eq!(statuses[..2], [202, 202], "{statuses:?}");
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    assert!(retry_after.is_some_and(|s| s >= 1), "Retry-After");
    let (_, list) = send(s.admin(Method::GET, "/v1/messages")).await;
    let n = list["items"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(n, statuses.iter().filter(|s| **s == 202).count());
    // Removing the sender stops sends from it.
    let (st, _) = send(s.admin(Method::DELETE, &format!("/v1/senders/{sid}"))).await;
    assert_eq!(st, 204);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    expect_problem(
        s.admin(Method::POST, "/v1/messages").json(&body),
        422,
        "sender-not-registered",
    )
    .await;
}

/// Waits until the SMSC has received a message to `to` whose text contains `needle`.
async fn smsc_got(smsc: &Smsc, to: &str, needle: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = smsc.messages().await;
        if let Some(m) = got.iter().find(|m| {
            m["to"].as_str().unwrap_or("").ends_with(to)
                && m["text"].as_str().unwrap_or("").contains(needle)
        }) {
            return m.clone();
        }
        assert!(Instant::now() < deadline, "no {needle:?} to {to}: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn consent_keywords_and_opt_outs(backend: Backend) {
    let smsc = Smsc::start();
    let r = Receiver::start();
    let (s, _cfg) = start(
        backend,
        &format!(
            "[messages]\nhelp_reply = \"Cardiology: call 555-0100. Reply STOP to opt out.\"\n\n{}",
            smsc.config("primary")
        ),
        &[],
    )
    .await;
    let (_, secret) = endpoint(&s, &r.url(), json!(["consent.*"])).await;
    r.set("secrets", &secret);
    register(&s, "sms", "+14155550199").await;
    smsc.wait_bound().await;
    let sms = |to: &str, purpose: &str| {
        json!({ "channel": "sms", "to": to, "from": "+14155550199",
                "text": "Flu shots are available", "purpose": purpose })
    };
    // Transactional goes by default; marketing needs a recorded opt-in.
    post_message(&s, sms("+14155550100", "transactional")).await;
    expect_problem(
        s.admin(Method::POST, "/v1/messages")
            .json(&sms("+14155550101", "marketing")),
        422,
        "consent-required",
    )
    .await;
    let (st, rec) = send(s.admin(Method::POST, "/v1/consents").json(&json!({
        "channel": "sms", "address": "+1 415 555 0101", "purpose": "marketing",
        "status": "opted_in", "method": "web_form", "source": "portal sign-up v3" })))
    .await;
    assert_eq!(st, 200, "{rec}");
    assert_eq!(rec["items"][0]["status"], "opted_in", "{rec}");
    post_message(&s, sms("+14155550101", "marketing")).await;

    // STOP from the patient: opted out of everything, answered, and refused from then on.
    let ack = smsc.mo("+14155550100", "+14155550199", "Stop").await;
    assert_eq!(ack["statuses"], json!([0]), "{ack}");
    smsc_got(&smsc, "14155550100", "unsubscribed").await;
    let refused = expect_problem(
        s.admin(Method::POST, "/v1/messages")
            .json(&sms("+14155550100", "transactional")),
        422,
        "recipient-opted-out",
    )
    .await;
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| !d.contains("4155550100"))
    );
    let (_, list) = send(s.admin(Method::POST, "/v1/consents/search").json(&json!({
        "channel": "sms", "address": "+14155550100" })))
    .await;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 2, "{list}");
    assert!(
        items
            .iter()
            .all(|c| c["status"] == "opted_out" && c["method"] == "keyword"),
        "{list}"
    );
    // Another department's consent records are its own.
    let sub = crate::common::create_subaccount(&s, "Oncology").await;
    let (kid, ks) = create_key(&s, &sub, &["messages:read"]).await;
    let (_, theirs) = send(
        s.as_key(Method::POST, "/v1/consents/search", &kid, &ks)
            .json(&json!({ "channel": "sms", "address": "+14155550100" })),
    )
    .await;
    assert_eq!(theirs["items"], json!([]), "{theirs}");

    // HELP is answered with the configured text; START lifts the opt-out.
    smsc.mo("+14155550100", "+14155550199", "help").await;
    smsc_got(&smsc, "14155550100", "call 555-0100").await;
    smsc.mo("+14155550100", "+14155550199", "START").await;
    smsc_got(&smsc, "14155550100", "subscribed again").await;
    post_message(&s, sms("+14155550100", "transactional")).await;
    // ...but not marketing, which still needs its own opt-in.
    expect_problem(
        s.admin(Method::POST, "/v1/messages")
            .json(&sms("+14155550100", "marketing")),
        422,
        "recipient-opted-out",
    )
    .await;
    let log = r
        .wait_for("consent events", 30, |log| accepted(log).len() >= 4)
        .await;
    assert!(log.iter().all(|l| l["verified"] == true), "{log:?}");
    let text = serde_json::to_string(&log).unwrap_or_default();
    assert!(!text.contains("4155550100"), "no numbers in events");
    expect_problem(
        s.admin(Method::POST, "/v1/consents").json(&json!({
            "channel": "sms", "address": "+14155550100", "purpose": "spam", "status": "maybe" })),
        422,
        "validation-failed",
    )
    .await;
}

/// PostgreSQL restarting or failing over severs every connection Haven holds. The next sends
/// are accepted all the same (the point readers and the pool reconnect instead of failing the
/// request), and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn severed_postgresql_connections_cost_no_send() {
    use sqlx::Connection;
    let Some(admin_url) = crate::common::postgres_url() else {
        return;
    };
    let smsc = Smsc::start();
    let (s, _cfg) = start(Backend::Postgres, &smsc.config("primary"), &[]).await;
    register(&s, "sms", "+14155550199").await;
    let (st, contact) = send(s.admin(Method::POST, "/v1/contacts").json(&json!({
        "reference": "MRN-PG-1", "phone_number": "+14155550100"
    })))
    .await;
    assert_eq!(st, 201, "{contact}");
    smsc.wait_bound().await;
    let body = json!({ "channel": "sms", "to": "+14155550100", "from": "+14155550199",
                       "text": "Your results are ready." });
    let first = post_message(&s, body.clone()).await;
    assert_eq!(first["contact_id"], contact["id"], "{first}");
    wait_status(
        &s,
        first["id"].as_str().unwrap_or_default(),
        &["delivered"],
        30,
    )
    .await;

    let db = s.database_name();
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&db)
    .fetch_all(&mut admin)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(pids.len() >= 2, "haven holds connections: {pids:?}");
    for pid in &pids {
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                .bind(&pids)
                .fetch_one(&mut admin)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} backends still there");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = admin.close().await;

    let mut ids = Vec::new();
    for _ in 0..5 {
        let m = post_message(&s, body.clone()).await;
        assert_eq!(m["contact_id"], contact["id"], "{m}");
        ids.push(m["id"].as_str().unwrap_or_default().to_owned());
    }
    for id in &ids {
        wait_status(&s, id, &["delivered"], 30).await;
    }
    let reconnects = metric(&s, "haven_pg_reader_reconnects_total").await;
    assert!(reconnects >= 1.0, "the point readers reconnected");
}

/// The sum of a Prometheus metric's samples whose line starts with `prefix` (a name, or a
/// name and the start of its labels).
pub(crate) async fn metric(s: &Server, prefix: &str) -> f64 {
    s.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}
