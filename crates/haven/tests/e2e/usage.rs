//! The usage ledger end to end: every message the real SMSC (node-smpp) or the real SMTP
//! relay (aiosmtpd) took is one record, priced from the rate card in the configuration,
//! listed, filtered, paged and summed through `/v1/usage`; tenants see only their own.

use crate::both_backends;
use crate::common::{Backend, Server, create_key, create_subaccount, expect_problem, send};
use crate::messages::{post_message, register, start, wait_status};
use crate::peers::{Smsc, SmtpRelay};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

both_backends!(every_send_is_one_priced_usage_record);

/// Every usage record visible with `query` (`&`-joined parameters), through every page.
pub(crate) async fn all_usage(s: &Server, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/v1/usage?page_size=200&{query}{cursor}");
        let (st, page) = send(s.admin(Method::GET, &path)).await;
        assert_eq!(st, 200, "{path}: {page}");
        out.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return out,
        }
    }
}

const RATES: &str = r#"
[usage]
currency = "USD"

[[usage.rates]]
channel = "sms"
price = "0.05"

[[usage.rates]]
channel = "sms"
country = "US"
price = "0.0079"
"#;

fn by_resource<'a>(records: &'a [Value], id: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["resource_id"] == id)
        .unwrap_or_else(|| panic!("no usage record for {id}: {records:?}"))
}

async fn every_send_is_one_priced_usage_record(backend: Backend) {
    let smsc = Smsc::start();
    let relay = SmtpRelay::start();
    let toml = format!("{}{}{RATES}", smsc.config("primary"), relay.config());
    let (s, _cfg) = start(backend, &toml, &[]).await;
    register(&s, "sms", "+14155550199").await;
    register(&s, "email", "clinic@example.org").await;
    smsc.wait_bound().await;

    let us = post_message(
        &s,
        json!({"channel": "sms", "to": "+14155550100", "from": "+14155550199",
               "text": "Your appointment is tomorrow at 9"}),
    )
    .await;
    // 200 GSM characters: two concatenated segments.
    let gb = post_message(
        &s,
        json!({"channel": "sms", "to": "+447400123456", "from": "+14155550199",
               "text": "x".repeat(200)}),
    )
    .await;
    let mail = post_message(
        &s,
        json!({"channel": "email", "to": "pat@example.org", "from": "clinic@example.org",
               "subject": "Reminder", "text": "See you tomorrow"}),
    )
    .await;
    let (st, v) = send(s.admin(Method::POST, "/v1/verify").json(&json!({
        "brand": "Clinic",
        "workflow": [{"channel": "sms", "to": "+14155550111", "from": "+14155550199"}]
    })))
    .await;
    assert_eq!(st, 202, "{v}");
    let ver = v["id"].as_str().unwrap_or_default().to_owned();
    for m in [&us, &gb, &mail] {
        wait_status(
            &s,
            m["id"].as_str().unwrap_or_default(),
            &["submitted", "delivered"],
            30,
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let records = loop {
        let r = all_usage(&s, "").await;
        if r.len() >= 4 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "usage records never arrived: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(records.len(), 4, "{records:?}");

    let r = by_resource(&records, us["id"].as_str().unwrap_or_default());
    assert_eq!(r["product"], "messages");
    assert_eq!(r["channel"], "sms");
    assert_eq!(r["country"], "US");
    assert_eq!(r["units"], 1);
    assert_eq!(r["unit"], "sms_segment");
    assert_eq!(r["unit_price"], "0.0079", "the country's rate wins: {r}");
    assert_eq!(r["price"], "0.0079");
    assert_eq!(r["currency"], "USD");
    assert_eq!(r["account_id"], s.admin.account_id.as_str());
    assert!(r["reference_id"].is_null());
    assert!(r["id"].as_str().is_some_and(|i| i.starts_with("usg_")));
    // No address of the patient in the record, only the country.
    assert!(!r.to_string().contains("4155550100"), "{r}");

    let r = by_resource(&records, gb["id"].as_str().unwrap_or_default());
    assert_eq!(r["country"], "GB");
    assert_eq!(r["units"], 2, "two segments: {r}");
    assert_eq!(r["unit_price"], "0.05", "the channel's default rate: {r}");
    assert_eq!(r["price"], "0.10");

    let r = by_resource(&records, mail["id"].as_str().unwrap_or_default());
    assert_eq!(r["channel"], "email");
    assert_eq!(r["unit"], "email");
    assert_eq!(r["units"], 1);
    assert!(
        r["country"].is_null() && r["price"].is_null() && r["currency"].is_null(),
        "{r}"
    );

    let verify: Vec<&Value> = records
        .iter()
        .filter(|r| r["product"] == "verify")
        .collect();
    assert_eq!(verify.len(), 1, "{records:?}");
    assert_eq!(verify[0]["reference_id"], ver.as_str());
    assert_eq!(verify[0]["country"], "US");
    let (_, vv) = send(s.admin(Method::GET, &format!("/v1/verify/{ver}"))).await;
    assert_eq!(
        verify[0]["resource_id"], vv["steps"][0]["message_id"],
        "{vv}"
    );

    // Oldest first, and paging a record at a time gives the same list.
    let ids: Vec<&str> = records.iter().filter_map(|r| r["id"].as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted);
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let (_, p) = send(s.admin(Method::GET, &format!("/v1/usage?page_size=1{cursor}"))).await;
        let items = p["items"].as_array().cloned().unwrap_or_default();
        assert!(items.len() <= 1);
        paged.extend(
            items
                .iter()
                .filter_map(|i| i["id"].as_str().map(str::to_owned)),
        );
        match p["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(paged, ids);

    // Filters.
    assert_eq!(all_usage(&s, "product=verify&").await.len(), 1);
    assert_eq!(all_usage(&s, "country=GB&").await.len(), 1);
    assert_eq!(all_usage(&s, "channel=email&").await.len(), 1);
    assert_eq!(all_usage(&s, "since=2999-01-01T00:00:00Z&").await.len(), 0);
    assert_eq!(all_usage(&s, "until=2000-01-01T00:00:00Z&").await.len(), 0);
    let first = records[0]["created_at"].as_str().unwrap_or_default();
    assert_eq!(
        all_usage(&s, &format!("since={first}&")).await.len(),
        4,
        "since is inclusive"
    );
    assert_eq!(
        all_usage(&s, &format!("until={first}&")).await.len(),
        0,
        "until is exclusive"
    );

    // Totals.
    let (st, sum) = send(s.admin(Method::GET, "/v1/usage/summary")).await;
    assert_eq!(st, 200, "{sum}");
    let lines = sum["totals"].as_array().cloned().unwrap_or_default();
    assert_eq!(lines.len(), 4, "{sum}");
    let line = |product: &str, channel: &str, country: Value| {
        lines
            .iter()
            .find(|l| l["product"] == product && l["channel"] == channel && l["country"] == country)
            .cloned()
            .unwrap_or_else(|| panic!("no {product}/{channel}/{country} line: {sum}"))
    };
    let l = line("messages", "sms", json!("GB"));
    assert_eq!(
        (l["records"].clone(), l["units"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(l["price"], "0.10");
    assert_eq!(l["currency"], "USD");
    let l = line("messages", "email", Value::Null);
    assert_eq!(l["unpriced_records"], 1);
    assert!(l["price"].is_null(), "{l}");
    let l = line("verify", "sms", json!("US"));
    assert_eq!(l["price"], "0.0079");
    let (_, sum) = send(s.admin(Method::GET, "/v1/usage/summary?product=verify")).await;
    assert_eq!(sum["totals"].as_array().map(Vec::len), Some(1), "{sum}");

    // Bad filters are field problems, never a 500.
    let bad = expect_problem(
        s.admin(
            Method::GET,
            "/v1/usage?product=fax&channel=pigeon&country=usa&since=yesterday",
        ),
        422,
        "validation-failed",
    )
    .await;
    let fields: Vec<&str> = bad["errors"]
        .as_array()
        .map(|e| e.iter().filter_map(|x| x["field"].as_str()).collect())
        .unwrap_or_default();
    for f in ["product", "channel", "country", "since"] {
        assert!(fields.contains(&f), "{f} missing in {bad}");
    }
    expect_problem(
        s.admin(
            Method::GET,
            "/v1/usage/summary?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
        ),
        422,
        "validation-failed",
    )
    .await;

    // Tenants: a subaccount sees its own (empty) ledger and 404 for its parent's; the parent
    // may read the subaccount's; a key without reports:read is refused.
    let sub = create_subaccount(&s, "Cardiology").await;
    let (k, secret) = create_key(&s, &sub, &["reports:read"]).await;
    let (st, own) = send(s.as_key(Method::GET, "/v1/usage", &k, &secret)).await;
    assert_eq!(st, 200, "{own}");
    assert_eq!(own["items"], json!([]));
    let master = s.admin.account_id.clone();
    for path in [
        format!("/v1/usage?account_id={master}"),
        format!("/v1/usage/summary?account_id={master}"),
        "/v1/usage?account_id=acc_nonsense".to_owned(),
    ] {
        expect_problem(s.as_key(Method::GET, &path, &k, &secret), 404, "not-found").await;
    }
    let (st, theirs) = send(s.admin(Method::GET, &format!("/v1/usage?account_id={sub}"))).await;
    assert_eq!(st, 200, "{theirs}");
    assert_eq!(theirs["items"], json!([]));
    let (k2, secret2) = create_key(&s, &sub, &["messages:read"]).await;
    expect_problem(
        s.as_key(Method::GET, "/v1/usage", &k2, &secret2),
        403,
        "insufficient-scope",
    )
    .await;
    drop(relay);
    drop(smsc);
}
