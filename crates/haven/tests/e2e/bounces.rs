//! Asynchronous email bounces end to end: Haven hands mail to a real Postfix, which relays it
//! to the recipient's server (aiosmtpd) and, when that refuses it, mails a real delivery
//! status notification back to the message's own envelope sender, routed to Haven's bounce
//! listener over STARTTLS. The message turns `failed` with the DSN's status code; a success
//! notice asked for with `receipt: true` makes it `delivered`. Forged bounces, plaintext
//! sessions and mail that is not a report change nothing.

use crate::both_backends;
use crate::common::{Backend, Server, python};
use crate::messages::{get_message, post_message, register, start, until, wait_status};
use crate::peers::{Postfix, SmtpRelay};
use crate::webhooks::{Receiver, accepted, endpoint};
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

both_backends!(bounces_come_back_as_failures_and_receipts);

const DOMAIN: &str = "bounces.haven.test";

/// Talks SMTP to the bounce listener with Python's `smtplib` and prints what it answered.
const CLIENT: &str = r#"
import json, smtplib, ssl, sys
port, mode, rcpt = int(sys.argv[1]), sys.argv[2], sys.argv[3]
body = sys.argv[4] if len(sys.argv) > 4 else "Subject: hi\r\n\r\nhello\r\n"
s = smtplib.SMTP("127.0.0.1", port, timeout=10)
s.ehlo("client.test")
out = {"starttls": s.has_extn("starttls")}
if mode == "tls":
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s.starttls(context=ctx)
    s.ehlo("client.test")
out["mail"] = s.mail("")[0]
if out["mail"] == 250:
    out["rcpt"] = s.rcpt(rcpt)[0]
    if out["rcpt"] == 250:
        code, _ = s.data(body.encode())
        out["data"] = code
s.quit()
print(json.dumps(out))
"#;

fn smtp_client(port: u16, mode: &str, rcpt: &str, body: Option<&str>) -> Value {
    let mut cmd = Command::new(python());
    cmd.args(["-c", CLIENT, &port.to_string(), mode, rcpt]);
    if let Some(b) = body {
        cmd.arg(b);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("python: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"))
}

/// The port that Haven's bounce listener bound, from its start-up log line (written by a
/// background thread: it may reach the file a moment after the server listens).
fn bounce_listener_port(s: &Server) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let port = s
            .stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == "bounce listener started")
            .and_then(|v| v["listen"].as_str()?.rsplit(':').next()?.parse().ok());
        match port {
            Some(p) => return p,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => panic!("no bounce listener in the log: {}", s.stderr()),
        }
    }
}

async fn bounces_come_back_as_failures_and_receipts(backend: Backend) {
    let recipient_server = SmtpRelay::start_plain();
    // Haven's bounce listener binds a port of its own choosing (a port picked in advance
    // can be taken by a parallel test before Haven binds it); Postfix learns it after.
    let postfix = Postfix::start(recipient_server.port, DOMAIN, 9);
    let toml = format!(
        "{}\n[email.bounces]\nlisten = \"127.0.0.1:0\"\ndomain = \"{DOMAIN}\"\n",
        postfix.config()
    );
    let (mut s, _cfg) = start(
        backend,
        &toml,
        &[("HAVEN_MESSAGES__RETRY_MAX_SECONDS", "1")],
    )
    .await;
    let bounce_port = bounce_listener_port(&s);
    postfix.route(DOMAIN, bounce_port);
    let hooks = Receiver::start();
    let (_, secret) = endpoint(&s, &hooks.url(), json!(["message.*"])).await;
    hooks.set("secrets", &secret);
    register(&s, "email", "clinic@example.org").await;

    // 1. The recipient's server refuses the mail after Postfix took it: a real DSN comes
    //    back and the message fails with its status code.
    recipient_server.mode("reject");
    let m = post_message(
        &s,
        json!({ "channel": "email", "to": "gone-BOUNCE-MARKER@example.net",
                "from": "clinic@example.org", "subject": "Results BOUNCE-SUBJECT",
                "text": "BOUNCE-BODY" }),
    )
    .await;
    let failed_id = m["id"].as_str().unwrap_or_default().to_owned();
    let failed = wait_status(&s, &failed_id, &["failed"], 60).await;
    assert_eq!(failed["error_code"], "5.1.1", "{failed}");
    let log = postfix.log();
    assert!(
        log.contains("sender non-delivery notification"),
        "Postfix made the DSN: {log}"
    );
    assert!(
        log.contains(&format!(
            "TLS connection established to 127.0.0.1[127.0.0.1]:{bounce_port}"
        )),
        "the DSN came over STARTTLS: {log}"
    );
    assert!(
        log.contains(&format!("<bounce+{failed_id}.")),
        "the DSN went to the message's own envelope sender: {log}"
    );

    // 2. With a receipt asked for, the recipient's server takes it and Postfix reports
    //    success ("relayed": that server does not do DSN): the message is delivered.
    recipient_server.mode("accept");
    let m = post_message(
        &s,
        json!({ "channel": "email", "to": "pat@example.net", "from": "clinic@example.org",
                "subject": "Reminder", "text": "See you at 10", "receipt": true }),
    )
    .await;
    let delivered_id = m["id"].as_str().unwrap_or_default().to_owned();
    wait_status(&s, &delivered_id, &["delivered"], 60).await;
    let mail = recipient_server.mail();
    let got = mail
        .iter()
        .find(|r| r["x_haven_message_id"] == delivered_id.as_str())
        .unwrap_or_else(|| panic!("{mail:?}"));
    let envelope_sender = got["mail_from"].as_str().unwrap_or_default().to_owned();
    assert!(
        envelope_sender.starts_with(&format!("bounce+{delivered_id}."))
            && envelope_sender.ends_with(&format!("@{DOMAIN}")),
        "{got}"
    );
    assert!(
        got["headers"]
            .as_array()
            .is_some_and(|h| h.iter().any(|p| p[0] == "From"
                && p[1]
                    .as_str()
                    .is_some_and(|v| v.contains("clinic@example.org")))),
        "the From header stays the sender's: {got}"
    );

    // 3. Without a receipt, a mail that arrives asks for no success notice: it stays
    //    submitted (checked after a later message that asked for one came back).
    let m = post_message(
        &s,
        json!({ "channel": "email", "to": "pat@example.net", "from": "clinic@example.org",
                "subject": "Quiet", "text": "no receipt" }),
    )
    .await;
    let quiet_id = m["id"].as_str().unwrap_or_default().to_owned();
    wait_status(&s, &quiet_id, &["submitted"], 30).await;
    until("the quiet mail to arrive", 30, || {
        recipient_server
            .mail()
            .iter()
            .any(|r| r["x_haven_message_id"] == quiet_id.as_str())
    })
    .await;
    let m = post_message(
        &s,
        json!({ "channel": "email", "to": "pat@example.net", "from": "clinic@example.org",
                "subject": "Later", "text": "with receipt", "receipt": true }),
    )
    .await;
    let later_id = m["id"].as_str().unwrap_or_default().to_owned();
    wait_status(&s, &later_id, &["delivered"], 60).await;
    assert_eq!(get_message(&s, &quiet_id).await["status"], "submitted");

    // 4. Forgeries and strays, straight to the listener.
    // Plaintext: STARTTLS is offered and MAIL is refused before it.
    let r = smtp_client(bounce_port, "plain", "x@y.z", None);
    assert_eq!(r["starttls"], true, "{r}");
    assert_eq!(r["mail"], 530, "{r}");
    // A bounce address with a made-up tag for a real message is refused at RCPT.
    let forged = format!("bounce+{quiet_id}.00000000000000000000@{DOMAIN}");
    let r = smtp_client(bounce_port, "tls", &forged, None);
    assert_eq!(r["rcpt"], 550, "{r}");
    let r = smtp_client(bounce_port, "tls", &format!("postmaster@{DOMAIN}"), None);
    assert_eq!(r["rcpt"], 550, "{r}");
    // Mail to a real bounce address that is not a report (an auto-reply) is taken and
    // dropped; a failure report for a message already delivered does not undo it.
    let r = smtp_client(bounce_port, "tls", &envelope_sender, None);
    assert_eq!(r["data"], 250, "{r}");
    let late_failure = "Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\nFinal-Recipient: rfc822; pat@example.net\r\nAction: failed\r\nStatus: 5.2.2\r\n\r\n--b--\r\n";
    let r = smtp_client(bounce_port, "tls", &envelope_sender, Some(late_failure));
    assert_eq!(r["data"], 250, "{r}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get_message(&s, &delivered_id).await["status"], "delivered");
    assert_eq!(get_message(&s, &quiet_id).await["status"], "submitted");

    // Webhooks: the failure and the deliveries were events.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = hooks.log();
        let seen = accepted(&log);
        let has = |id: &str, ty: &str| {
            seen.values()
                .any(|l| l["data"]["message_id"] == id && l["type"] == ty)
        };
        if has(&failed_id, "message.failed") && has(&delivered_id, "message.delivered") {
            let failed_event = seen
                .values()
                .find(|l| {
                    l["data"]["message_id"] == failed_id.as_str() && l["type"] == "message.failed"
                })
                .cloned()
                .unwrap_or_default();
            assert_eq!(
                failed_event["data"]["error_code"], "5.1.1",
                "{failed_event}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "webhook events: {log:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Nothing of the reports reached Haven's logs: not the recipient, subject or body the
    // DSN repeated.
    let logs = s.stopped_logs();
    for marker in ["BOUNCE-MARKER", "BOUNCE-SUBJECT", "BOUNCE-BODY"] {
        assert!(!logs.contains(marker), "{marker} in the logs");
    }
}
