//! Webhooks end to end: a real receiver verifying with the official `standardwebhooks`
//! library, failing on purpose, going away; the server killed with SIGKILL mid-delivery.

use crate::both_backends;
use crate::common::{
    Backend, Options, Server, create_key, create_subaccount, expect_problem, python, repo_root,
    send,
};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

both_backends!(
    deliveries_are_signed_retried_and_listed,
    dead_letters_are_replayed,
    every_event_arrives_after_a_kill_9,
    a_name_resolving_inward_is_refused_at_delivery,
    an_endpoint_gets_what_happens_after_it,
    events_nobody_listens_to_do_not_make_the_loop_lease,
);

pub(crate) struct Receiver {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Receiver {
    pub(crate) fn start() -> Receiver {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(python())
            .arg(repo_root().join("tests/py/webhook_receiver.py"))
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("receiver: {e}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(dir.path().join("port")) {
                break p.trim().parse().unwrap_or_else(|e| panic!("port: {e}"));
            }
            assert!(Instant::now() < deadline, "the receiver did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        Receiver { child, dir, port }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub(crate) fn set(&self, name: &str, value: &str) {
        let path: PathBuf = self.dir.path().join(name);
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("{e}"));
    }

    pub(crate) fn clear(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.path().join(name));
    }

    /// Requests that have reached the receiver, answered or not.
    pub(crate) fn arrivals(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("arrivals"))
            .ok()
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or(0)
    }

    pub(crate) fn log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("log.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until `done` holds for the log.
    pub(crate) async fn wait_for(
        &self,
        what: &str,
        secs: u64,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let log = self.log();
            if done(&log) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {log:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn options(schedule: &str) -> Options {
    Options {
        env: vec![
            (
                "HAVEN_WEBHOOKS__ALLOW_TARGETS".into(),
                "127.0.0.1/32".into(),
            ),
            (
                "HAVEN_WEBHOOKS__RETRY_SCHEDULE_SECONDS".into(),
                schedule.into(),
            ),
            ("HAVEN_WEBHOOKS__TIMEOUT_SECONDS".into(), "2".into()),
        ],
        ..Options::default()
    }
}

pub(crate) async fn endpoint(s: &Server, url: &str, types: Value) -> (String, String) {
    let (st, e) = send(
        s.admin(Method::POST, "/v1/webhooks/endpoints")
            .json(&json!({ "url": url, "event_types": types })),
    )
    .await;
    assert_eq!(st, 201, "{e}");
    let secret = e["secret"].as_str().unwrap_or_default().to_owned();
    assert!(secret.starts_with("whsec_"), "{e}");
    (e["id"].as_str().unwrap_or_default().to_owned(), secret)
}

/// Replays an event to the account's endpoints of today.
async fn replay(s: &Server, eid: &str) {
    let (st, body) = send(
        s.admin(Method::POST, &format!("/v1/webhooks/events/{eid}/replay"))
            .json(&json!({})),
    )
    .await;
    assert_eq!(st, 202, "{body}");
}

/// Accepted (2xx) deliveries by webhook-id.
pub(crate) fn accepted(log: &[Value]) -> BTreeMap<String, Value> {
    log.iter()
        .filter(|l| l["status"] == 200)
        .map(|l| {
            (
                l["webhook_id"].as_str().unwrap_or_default().to_owned(),
                l.clone(),
            )
        })
        .collect()
}

async fn deliveries_are_signed_retried_and_listed(backend: Backend) {
    let r = Receiver::start();
    r.set("mode", "fail-first 2");
    let s = Server::start_with(backend, options("1,1,1,1")).await;
    let (endpoint_id, secret) = endpoint(&s, &r.url(), json!(["key.*", "account.*"])).await;
    r.set("secrets", &secret);
    // Security changes are events: a subaccount, a key made, rotated and revoked.
    let sub = create_subaccount(&s, "Cardiology").await;
    let (kid, _) = create_key(&s, &sub, &["contacts:read"]).await;
    let (st, _) = send(
        s.admin(
            Method::POST,
            &format!("/v1/accounts/{sub}/keys/{kid}/rotate"),
        )
        .json(&json!({ "grace_period_seconds": 0 })),
    )
    .await;
    assert_eq!(st, 200);
    let (st, _) = send(s.admin(Method::DELETE, &format!("/v1/accounts/{sub}/keys/{kid}"))).await;
    assert_eq!(st, 204);
    let (st, _) = send(
        s.admin(Method::PATCH, &format!("/v1/accounts/{sub}"))
            .json(&json!({ "status": "suspended" })),
    )
    .await;
    assert_eq!(st, 200);
    let want = [
        "account.created",
        "key.created",
        "key.rotated",
        "key.revoked",
        "account.suspended",
    ];
    let log = r
        .wait_for("five events, each after two refusals", 60, |log| {
            let types: BTreeSet<String> = accepted(log)
                .values()
                .map(|l| l["type"].as_str().unwrap_or_default().to_owned())
                .collect();
            want.iter().all(|t| types.contains(*t))
        })
        .await;
    for l in &log {
        assert_eq!(
            l["verified"], true,
            "standardwebhooks refused a signature: {l}"
        );
    }
    for (id, l) in accepted(&log) {
        assert_eq!(l["attempt"], 3, "{id} accepted at attempt {}", l["attempt"]);
    }
    // The API lists the event, its delivery and every attempt.
    let (_, events) = send(s.admin(Method::GET, "/v1/webhooks/events?page_size=200")).await;
    let created = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["type"] == "key.created")
        .unwrap_or_else(|| panic!("no key.created event: {events}"))
        .clone();
    assert_eq!(created["payload"]["data"]["key_id"], kid.as_str());
    assert_eq!(created["account_id"], sub.as_str());
    let eid = created["id"].as_str().unwrap_or_default();
    let (st, detail) = send(s.admin(Method::GET, &format!("/v1/webhooks/events/{eid}"))).await;
    assert_eq!(st, 200);
    assert_eq!(detail["deliveries"][0]["status"], "succeeded", "{detail}");
    assert_eq!(detail["deliveries"][0]["endpoint_id"], endpoint_id.as_str());
    let (_, attempts) =
        send(s.admin(Method::GET, &format!("/v1/webhooks/events/{eid}/attempts"))).await;
    let codes: Vec<_> = attempts["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(
        codes,
        vec![json!(500), json!(500), json!(200)],
        "{attempts}"
    );

    // Secret rotation: during the grace period both secrets sign every delivery.
    let (st, rotated) = send(
        s.admin(
            Method::POST,
            &format!("/v1/webhooks/endpoints/{endpoint_id}/rotate-secret"),
        )
        .json(&json!({ "grace_period_seconds": 3600 })),
    )
    .await;
    assert_eq!(st, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap_or_default().to_owned();
    assert_ne!(new_secret, secret);
    r.set("secrets", &format!("{secret}\n{new_secret}\n"));
    r.set("mode", "ok");
    let acc = s.admin.account_id.clone();
    let (kid2, _) = create_key(&s, &acc, &["contacts:read"]).await;
    let log = r
        .wait_for("a delivery signed by both secrets", 30, |log| {
            log.iter()
                .any(|l| l["type"] == "key.created" && l["status"] == 200 && l["signatures"] == 2)
        })
        .await;
    assert!(log.iter().all(|l| l["verified"] == true));
    assert!(!kid2.is_empty());

    // Other accounts see none of it; an endpoint URL to an internal address is refused.
    let (k, sec) = create_key(&s, &acc, &["webhooks:read"]).await;
    let (_, list) = send(s.as_key(Method::GET, "/v1/webhooks/endpoints", &k, &sec)).await;
    assert_eq!(list["items"][0]["id"], endpoint_id.as_str());
    assert!(list["items"][0].get("secret").is_none());
    let other = create_subaccount(&s, "Other").await;
    let (ok, osec) = create_key(&s, &other, &["webhooks:admin"]).await;
    expect_problem(
        s.as_key(
            Method::GET,
            &format!("/v1/webhooks/endpoints/{endpoint_id}"),
            &ok,
            &osec,
        ),
        404,
        "not-found",
    )
    .await;
    expect_problem(
        s.as_key(
            Method::GET,
            &format!("/v1/webhooks/events/{eid}"),
            &ok,
            &osec,
        ),
        404,
        "not-found",
    )
    .await;
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "https://10.0.0.1/hook",
        "https://[::ffff:192.168.0.1]/hook",
        "http://127.0.0.2/hook",
    ] {
        expect_problem(
            s.admin(Method::POST, "/v1/webhooks/endpoints")
                .json(&json!({ "url": url, "event_types": ["*"] })),
            422,
            "webhook-target-forbidden",
        )
        .await;
    }
    expect_problem(
        s.admin(Method::POST, "/v1/webhooks/endpoints")
            .json(&json!({ "url": r.url(), "event_types": ["key.creatd"] })),
        422,
        "validation-failed",
    )
    .await;
}

async fn dead_letters_are_replayed(backend: Backend) {
    let r = Receiver::start();
    r.set("mode", "fail");
    let s = Server::start_with(backend, options("1,1")).await;
    let (_, secret) = endpoint(&s, &r.url(), json!(["key.created"])).await;
    r.set("secrets", &secret);
    let acc = s.admin.account_id.clone();
    let (kid, _) = create_key(&s, &acc, &["contacts:read"]).await;
    // Three attempts (the first and two retries), then the dead-letter queue.
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let (_, d) = send(s.admin(Method::GET, "/v1/webhooks/deliveries?status=dead")).await;
        if d["items"].as_array().is_some_and(|i| !i.is_empty()) {
            break d["items"][0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "never dead-lettered: {:?}",
            r.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(dead["attempts"], 3, "{dead}");
    assert_eq!(dead["last_status_code"], 500);
    let eid = dead["event_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(r.log().len(), 3);
    // The receiver recovers; the operator replays the dead-lettered event.
    r.set("mode", "ok");
    replay(&s, &eid).await;
    let log = r
        .wait_for("the replayed event", 20, |log| {
            log.iter().any(|l| l["status"] == 200)
        })
        .await;
    let ok = log
        .iter()
        .find(|l| l["status"] == 200)
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        ok["webhook_id"],
        eid.as_str(),
        "a replay keeps the webhook-id"
    );
    assert_eq!(ok["verified"], true);
    // The receiver answers before the server records the attempt: wait for the record.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (detail, statuses) = loop {
        let (_, detail) = send(s.admin(Method::GET, &format!("/v1/webhooks/events/{eid}"))).await;
        let statuses: BTreeSet<String> = detail["deliveries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| d["status"].as_str().unwrap_or_default().to_owned())
            .collect();
        if !statuses.contains("pending") || Instant::now() > deadline {
            break (detail, statuses);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        statuses,
        BTreeSet::from(["dead".to_owned(), "succeeded".to_owned()]),
        "{detail}"
    );
    assert!(!kid.is_empty());
}

async fn every_event_arrives_after_a_kill_9(backend: Backend) {
    let r = Receiver::start();
    // The first five deliveries are answered; every later one is held open, in flight, until the
    // hold is lifted after the kill (and then answered 503, so it never counts as delivered).
    r.set("hold", "5");
    let mut s = Server::start_with(backend, options("1,1,1,1,1,1")).await;
    let (_, secret) = endpoint(&s, &r.url(), json!(["key.created"])).await;
    r.set("secrets", &secret);
    let acc = s.admin.account_id.clone();
    let mut keys = BTreeSet::new();
    for _ in 0..25 {
        keys.insert(create_key(&s, &acc, &["contacts:read"]).await.0);
    }
    // Some deliveries are done, at least one is in flight: pull the plug.
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.arrivals() < 6 {
        assert!(
            Instant::now() < deadline,
            "no delivery was in flight: {:?}",
            r.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.kill9();
    // The receiver counts a request when it arrives and logs it once answered: the answers to
    // the first five may still be on their way to the log (the server is gone, the receiver
    // is not).
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted(&r.log()).len() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = accepted(&r.log()).len();
    assert_eq!(
        before, 5,
        "only the first five are answered before the kill"
    );
    r.clear("hold");
    s.restart().await;
    let (_, events) = send(s.admin(Method::GET, "/v1/webhooks/events?page_size=200")).await;
    let want: BTreeSet<String> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "key.created")
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(want.len(), 25, "every committed event is in the outbox");
    let log = r
        .wait_for("every event after the restart", 90, |log| {
            let got: BTreeSet<String> = accepted(log).into_keys().collect();
            want.is_subset(&got)
        })
        .await;
    assert!(
        log.iter().any(|l| l["held"] == true),
        "a delivery was cut off by the kill: {log:?}"
    );
    assert!(log.iter().all(|l| l["verified"] == true));
}

/// Without an allowlist, a name that resolves to a loopback address passes registration (DNS
/// may change) but every delivery is refused after resolution, before any connection.
async fn a_name_resolving_inward_is_refused_at_delivery(backend: Backend) {
    let r = Receiver::start();
    let s = Server::start(backend).await;
    let url = format!("https://localhost:{}/hook", r.port);
    let (_, secret) = endpoint(&s, &url, json!(["key.created"])).await;
    r.set("secrets", &secret);
    let acc = s.admin.account_id.clone();
    create_key(&s, &acc, &["contacts:read"]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let attempt = loop {
        let (_, events) = send(s.admin(Method::GET, "/v1/webhooks/events?page_size=200")).await;
        let eid = events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["type"] == "key.created")
            .and_then(|e| e["id"].as_str())
            .unwrap_or_default()
            .to_owned();
        if !eid.is_empty() {
            let (_, a) =
                send(s.admin(Method::GET, &format!("/v1/webhooks/events/{eid}/attempts"))).await;
            if let Some(first) = a["items"].as_array().and_then(|i| i.first()) {
                break first.clone();
            }
        }
        assert!(Instant::now() < deadline, "no attempt was recorded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let error = attempt["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused") && error.contains("loopback"),
        "{attempt}"
    );
    assert_eq!(attempt["status_code"], Value::Null);
    assert!(
        r.log().is_empty(),
        "the receiver was reached: {:?}",
        r.log()
    );
}

/// Events are written already fanned out when no endpoint listens (see `push_events`): they stay
/// listed and replayable, an endpoint gets what happens after it is enabled, and a master's
/// endpoint hears its subaccounts.
async fn an_endpoint_gets_what_happens_after_it(backend: Backend) {
    let r = Receiver::start();
    let s = Server::start_with(backend, options("1,1")).await;
    let sub = create_subaccount(&s, "Cardiology").await;
    let (early, _) = create_key(&s, &sub, &["contacts:read"]).await;
    let (_, secret) = endpoint(&s, &r.url(), json!(["key.created"])).await;
    r.set("secrets", &secret);
    let (late, _) = create_key(&s, &sub, &["contacts:read"]).await;
    let log = r
        .wait_for("the subaccount's key after the endpoint", 20, |log| {
            !accepted(log).is_empty()
        })
        .await;
    let mentions = |l: &Value, id: &str| l["data"].to_string().contains(id);
    assert!(
        log.iter().all(|l| mentions(l, &late)),
        "only the key created after the endpoint is delivered: {log:?}"
    );
    // Both are in the event log; the early one was never fanned out, so no delivery exists.
    let (_, events) = send(s.admin(Method::GET, "/v1/webhooks/events?page_size=200")).await;
    let of = |id: &str| -> Value {
        events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["type"] == "key.created" && e.to_string().contains(id))
            .cloned()
            .unwrap_or_else(|| panic!("no key.created event for {id}: {events}"))
    };
    let eid = of(&early)["id"].as_str().unwrap_or_default().to_owned();
    assert!(!of(&late)["id"].as_str().unwrap_or_default().is_empty());
    let (_, detail) = send(s.admin(Method::GET, &format!("/v1/webhooks/events/{eid}"))).await;
    assert_eq!(detail["deliveries"], json!([]), "{detail}");
    // A replay sends it to today's endpoints.
    replay(&s, &eid).await;
    let log = r
        .wait_for("the replayed early event", 20, |log| {
            accepted(log).contains_key(&eid)
        })
        .await;
    assert_eq!(accepted(&log).len(), 2, "{log:?}");
    assert!(log.iter().all(|l| l["verified"] == true));
}

/// Every batch of events wakes the delivery loop, but leasing is a write: with no endpoint
/// listening, the loop leases on its half-second tick, not once per event.
async fn events_nobody_listens_to_do_not_make_the_loop_lease(backend: Backend) {
    let s = Server::start(backend).await;
    let leases = || crate::messages::metric(&s, "haven_webhook_leases_total");
    let before = leases().await;
    let started = Instant::now();
    // Each recorded consent writes a `consent.changed` event and wakes the loop.
    for i in 0..40 {
        let (st, body) = send(s.admin(Method::POST, "/v1/consents").json(&json!({
            "channel": "sms", "address": format!("+1415555{i:04}"), "purpose": "marketing",
            "status": "opted_in", "method": "web_form" })))
        .await;
        assert_eq!(st, 200, "{body}");
    }
    let ticks = started.elapsed().as_secs_f64() / 0.5;
    let made = leases().await - before;
    assert!(
        made <= ticks + 3.0,
        "40 events made the loop lease {made} times in {ticks:.1} ticks"
    );
    // The events themselves are all in the log.
    let (_, events) = send(s.admin(Method::GET, "/v1/webhooks/events?page_size=200")).await;
    let recorded = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "consent.changed")
        .count();
    assert_eq!(recorded, 40, "{events}");
}
