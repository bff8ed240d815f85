//! The email channel against a real third-party SMTP server: `tests/py/smtp_server.py`
//! (aiosmtpd, with dkimpy verifying DKIM signatures), started per test on 127.0.0.1.
//!
//! The interpreter is `HAVEN_TEST_PYTHON`, else the workspace's `.venv-test/bin/python`
//! when it exists, else `python3`; it needs `tests/py/requirements.txt` installed.
//! `HAVEN_TEST_KEEP_MAIL=PATH` keeps a message whose DKIM signature did not verify (and
//! the published key record as `PATH.txt`) for a look with dkimpy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use haven_channel::{Channel, Outbound, SendError, Submitted};
use haven_email::{DkimConfig, EmailChannel, SmtpConfig, SmtpTls};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData as _,
};
use serde_json::Value;

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(30);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("HAVEN_TEST_PYTHON") {
        return p.into();
    }
    let venv = workspace_root().join(".venv-test/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

/// A test CA and a server certificate for `localhost` and `127.0.0.1` signed by it.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, issuer) = ca("Haven test CA");
        let leaf_key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = params.signed_by(&leaf_key, &issuer).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
        std::fs::write(dir.path().join("server.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), leaf_key.serialize_pem()).unwrap();
        // A second CA that signed nothing the server presents.
        let (other_pem, _) = ca("Some other CA");
        std::fs::write(dir.path().join("other-ca.pem"), other_pem).unwrap();
        Self { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }
    fn cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }
    fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// A running `smtp_server.py`; killed on drop.
struct Relay {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Relay {
    fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut child = Command::new(python())
            .arg(workspace_root().join("tests/py/smtp_server.py"))
            .args(["--port", "0", "--dir"])
            .arg(dir.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", python().display()));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut relay = Self {
            child,
            port: 0,
            dir,
        };
        let line = rx.recv_timeout(WAIT).unwrap_or_default();
        let ready: Value = serde_json::from_str(line.trim()).unwrap_or_else(|_| {
            panic!(
                "smtp_server.py did not get ready (stdout {line:?}); stderr:\n{}",
                relay.stderr()
            )
        });
        assert_eq!(ready["ready"], true);
        relay.port = u16::try_from(ready["port"].as_u64().unwrap()).unwrap();
        relay
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn set_mode(&self, mode: &str) {
        std::fs::write(self.dir.path().join("mode"), mode).unwrap();
    }

    fn mails(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("mail.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn config(&self, pki: &Pki) -> SmtpConfig {
        let mut cfg = SmtpConfig::new("relay", "127.0.0.1");
        cfg.port = self.port;
        cfg.ca_file = Some(pki.ca());
        cfg.timeout = Duration::from_secs(10);
        cfg
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn outbound(id: &str) -> Outbound {
    Outbound {
        message_id: id.to_owned(),
        account_id: "acc_test".to_owned(),
        to: "patient@example.com".to_owned(),
        from: "Example Clinic <clinic@example.org>".to_owned(),
        subject: Some("Appointment réminder".to_owned()),
        text: "Your appointment is on Monday at 10:00.\nReply STOP to opt out.".to_owned(),
        html: Some("<p>Your appointment is on <b>Monday at 10:00</b>.</p><p>Grüße</p>".to_owned()),
        want_receipt: false,
        expires_at_ms: None,
    }
}

async fn send(ch: &EmailChannel, m: &Outbound) -> Result<Submitted, SendError> {
    tokio::time::timeout(WAIT, ch.send(m))
        .await
        .expect("send did not finish in time")
}

fn assert_transient(r: Result<Submitted, SendError>) -> String {
    match r {
        Err(SendError::Transient { reason, .. }) => reason,
        other => panic!("expected a transient error, got {other:?}"),
    }
}

fn detail(ch: &EmailChannel) -> (bool, Option<String>) {
    let r = ch.routes().remove(0);
    (r.connected, r.detail)
}

fn crlf_trim(v: &Value) -> String {
    v.as_str()
        .unwrap_or_default()
        .replace("\r\n", "\n")
        .trim_end()
        .to_owned()
}

#[tokio::test]
async fn starttls_auth_delivers_text_and_html() {
    let pki = Pki::new();
    let relay = Relay::start(&[
        "--cert",
        pki.cert().to_str().unwrap(),
        "--key",
        pki.key().to_str().unwrap(),
        "--require-starttls",
        "--auth",
        "haven:s3cret pass",
    ]);
    let mut cfg = relay.config(&pki);
    cfg.username = Some("haven".into());
    cfg.password = Some("s3cret pass".into());
    let ch = EmailChannel::new(cfg).unwrap();
    let m = outbound("msg_01J0STARTTLS");

    let first = send(&ch, &m).await.unwrap();
    let mails = relay.mails();
    assert_eq!(mails.len(), 1, "stderr: {}", relay.stderr());
    let mail = &mails[0];
    assert_eq!(first.route, "relay");
    assert_eq!(
        first.provider_ids,
        vec![mail["queue_id"].as_str().unwrap().to_owned()]
    );
    assert_eq!(mail["tls"], true);
    assert_eq!(mail["auth_user"], "haven");
    assert_eq!(mail["mail_from"], "clinic@example.org");
    assert_eq!(mail["rcpt_tos"], serde_json::json!(["patient@example.com"]));
    assert_eq!(mail["message_id"], "<msg_01J0STARTTLS@example.org>");
    assert_eq!(mail["x_haven_message_id"], "msg_01J0STARTTLS");
    assert_eq!(mail["subject"], "Appointment réminder");
    assert_eq!(mail["content_type"], "multipart/alternative");
    assert_eq!(crlf_trim(&mail["text"]), m.text);
    assert_eq!(crlf_trim(&mail["html"]), m.html.clone().unwrap());
    assert_eq!(mail["dkim_signature"], false);
    let headers = mail["headers"].as_array().unwrap();
    assert!(
        headers
            .iter()
            .any(|h| h[0] == "Auto-Submitted" && h[1] == "auto-generated"),
        "{headers:?}"
    );
    assert_eq!(detail(&ch), (true, None));

    // A retry of the same message carries the same Message-ID, over the pooled connection.
    let second = send(&ch, &m).await.unwrap();
    let mails = relay.mails();
    assert_eq!(mails.len(), 2);
    assert_eq!(mails[1]["message_id"], mails[0]["message_id"]);
    assert_ne!(second.provider_ids, first.provider_ids, "a new queue id");
    assert_eq!(
        mails[1]["peer_port"], mails[0]["peer_port"],
        "the second send reuses the pooled connection"
    );

    // Text only: a single text/plain part.
    let mut plain = outbound("msg_01J0PLAIN");
    plain.html = None;
    plain.subject = None;
    send(&ch, &plain).await.unwrap();
    let mail = relay.mails().pop().unwrap();
    assert_eq!(mail["content_type"], "text/plain");
    assert_eq!(mail["subject"], "");
    assert_eq!(crlf_trim(&mail["text"]), plain.text);
    assert_eq!(mail["html"], Value::Null);
    ch.shutdown().await;
}

#[tokio::test]
async fn starttls_missing_fails_and_sends_nothing() {
    let pki = Pki::new();
    // No certificate: the server offers no STARTTLS.
    let relay = Relay::start(&[]);
    let ch = EmailChannel::new(relay.config(&pki)).unwrap();
    let reason = assert_transient(send(&ch, &outbound("msg_NOTLS")).await);
    assert!(reason.contains("STARTTLS"), "{reason}");
    assert!(relay.mails().is_empty(), "nothing delivered in plaintext");
    assert_eq!(
        detail(&ch),
        (false, Some("starttls_unavailable".to_owned()))
    );
}

#[tokio::test]
async fn untrusted_certificate_is_transient() {
    let pki = Pki::new();
    let relay = Relay::start(&[
        "--cert",
        pki.cert().to_str().unwrap(),
        "--key",
        pki.key().to_str().unwrap(),
        "--require-starttls",
    ]);
    let mut cfg = relay.config(&pki);
    cfg.ca_file = Some(pki.other_ca());
    let ch = EmailChannel::new(cfg).unwrap();
    let reason = assert_transient(send(&ch, &outbound("msg_BADCA")).await);
    assert!(reason.contains("certificate"), "{reason}");
    assert!(relay.mails().is_empty());
    assert_eq!(detail(&ch), (false, Some("tls_certificate".to_owned())));

    // The right CA but the wrong name is refused as well.
    let mut cfg = relay.config(&pki);
    cfg.tls_server_name = Some("smtp.example.org".into());
    let ch = EmailChannel::new(cfg).unwrap();
    assert_transient(send(&ch, &outbound("msg_BADNAME")).await);
    assert_eq!(detail(&ch), (false, Some("tls_certificate".to_owned())));
    assert!(relay.mails().is_empty());
}

#[tokio::test]
async fn implicit_tls_delivers() {
    let pki = Pki::new();
    let relay = Relay::start(&[
        "--cert",
        pki.cert().to_str().unwrap(),
        "--key",
        pki.key().to_str().unwrap(),
        "--implicit-tls",
        "--auth",
        "haven:pw",
    ]);
    let mut cfg = relay.config(&pki);
    cfg.tls = SmtpTls::Implicit;
    cfg.tls_server_name = Some("localhost".into());
    cfg.username = Some("haven".into());
    cfg.password = Some("pw".into());
    let ch = EmailChannel::new(cfg).unwrap();
    send(&ch, &outbound("msg_IMPLICIT")).await.unwrap();
    let mails = relay.mails();
    assert_eq!(mails.len(), 1, "stderr: {}", relay.stderr());
    assert_eq!(mails[0]["tls"], true);
    assert_eq!(mails[0]["auth_user"], "haven");
    assert_eq!(mails[0]["message_id"], "<msg_IMPLICIT@example.org>");
}

#[tokio::test]
async fn wrong_password_is_transient() {
    let pki = Pki::new();
    let relay = Relay::start(&[
        "--cert",
        pki.cert().to_str().unwrap(),
        "--key",
        pki.key().to_str().unwrap(),
        "--require-starttls",
        "--auth",
        "haven:right",
    ]);
    let mut cfg = relay.config(&pki);
    cfg.username = Some("haven".into());
    cfg.password = Some("wrong".into());
    let ch = EmailChannel::new(cfg).unwrap();
    let reason = assert_transient(send(&ch, &outbound("msg_AUTH")).await);
    assert!(reason.contains("535"), "{reason}");
    assert!(!reason.contains("wrong"), "{reason}");
    assert_eq!(detail(&ch), (false, Some("auth".to_owned())));
    assert!(relay.mails().is_empty());
}

#[tokio::test]
async fn tempfail_is_transient_then_delivered() {
    let pki = Pki::new();
    let relay = Relay::start(&[
        "--cert",
        pki.cert().to_str().unwrap(),
        "--key",
        pki.key().to_str().unwrap(),
    ]);
    let ch = EmailChannel::new(relay.config(&pki)).unwrap();
    let m = outbound("msg_TEMPFAIL");

    relay.set_mode("tempfail");
    let reason = assert_transient(send(&ch, &m).await);
    assert!(reason.contains("451"), "{reason}");
    assert!(!reason.contains("patient"), "{reason}");
    assert_eq!(detail(&ch), (false, Some("smtp_4xx".to_owned())));

    relay.set_mode("tempfail-data");
    let reason = assert_transient(send(&ch, &m).await);
    assert!(reason.contains("451"), "{reason}");
    assert!(relay.mails().is_empty());

    relay.set_mode("accept");
    send(&ch, &m).await.unwrap();
    let mails = relay.mails();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["message_id"], "<msg_TEMPFAIL@example.org>");
    assert_eq!(mails[0]["tls"], true, "STARTTLS is used when offered");
    assert_eq!(detail(&ch), (true, None));
}

#[tokio::test]
async fn reject_is_permanent_without_addresses() {
    let pki = Pki::new();
    let relay = Relay::start(&[
        "--cert",
        pki.cert().to_str().unwrap(),
        "--key",
        pki.key().to_str().unwrap(),
    ]);
    let ch = EmailChannel::new(relay.config(&pki)).unwrap();

    relay.set_mode("reject");
    match send(&ch, &outbound("msg_REJECT")).await {
        Err(SendError::Rejected { code, reason }) => {
            assert_eq!(code, "550");
            assert!(!reason.contains('@'), "{reason}");
            assert!(!reason.contains("patient"), "{reason}");
            assert!(reason.contains("User unknown"), "{reason}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(detail(&ch), (true, Some("rejected 550".to_owned())));

    relay.set_mode("reject-data");
    match send(&ch, &outbound("msg_REJECT2")).await {
        Err(SendError::Rejected { code, .. }) => assert_eq!(code, "554"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(relay.mails().is_empty());

    // The relay still takes the next message.
    relay.set_mode("accept");
    send(&ch, &outbound("msg_AFTER")).await.unwrap();
    assert_eq!(relay.mails().len(), 1);
}

/// Publishes `txt` as the DKIM key record of `sel._domainkey.example.org`.
fn dkim_record(dir: &Path, name: &str, txt: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, txt).unwrap();
    format!("sel._domainkey.example.org={}", path.display())
}

async fn dkim_case(key: &KeyPair, published: &str) -> Value {
    let pki = Pki::new();
    let keys = tempfile::tempdir().unwrap();
    let record = dkim_record(keys.path(), "record.txt", published);
    let relay = Relay::start(&[
        "--cert",
        pki.cert().to_str().unwrap(),
        "--key",
        pki.key().to_str().unwrap(),
        "--dkim-txt",
        &record,
    ]);
    let mut cfg = relay.config(&pki);
    cfg.dkim = Some(DkimConfig {
        selector: "sel".into(),
        domain: "example.org".into(),
        private_key_pem: key.serialize_pem(),
    });
    let ch = EmailChannel::new(cfg).unwrap();
    send(&ch, &outbound("msg_DKIM")).await.unwrap();
    let mut mails = relay.mails();
    assert_eq!(mails.len(), 1, "stderr: {}", relay.stderr());
    let mail = mails.remove(0);
    assert_eq!(mail["dkim_signature"], true);
    let sig = mail["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| {
            h[0].as_str()
                .unwrap()
                .eq_ignore_ascii_case("DKIM-Signature")
        })
        .map(|h| h[1].as_str().unwrap().to_owned())
        .unwrap();
    assert!(
        sig.contains("d=example.org") && sig.contains("s=sel"),
        "{sig}"
    );
    if mail["dkim_verified"] != true {
        eprintln!("relay stderr: {}", relay.stderr());
        if let Ok(keep) = std::env::var("HAVEN_TEST_KEEP_MAIL") {
            let eml = relay
                .dir
                .path()
                .join(format!("{}.eml", mail["queue_id"].as_str().unwrap()));
            std::fs::copy(eml, &keep).unwrap();
            std::fs::write(format!("{keep}.txt"), published).unwrap();
        }
    }
    mail
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn dkim_rsa_signature_verifies() {
    let key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let txt = format!("v=DKIM1; k=rsa; p={}", b64(&key.subject_public_key_info()));
    let mail = dkim_case(&key, &txt).await;
    assert_eq!(mail["dkim_verified"], true);

    // Control: a different published key must fail verification.
    let other = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let wrong = format!(
        "v=DKIM1; k=rsa; p={}",
        b64(&other.subject_public_key_info())
    );
    let mail = dkim_case(&key, &wrong).await;
    assert_eq!(mail["dkim_verified"], false);
}

#[tokio::test]
async fn dkim_ed25519_signature_verifies() {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let txt = format!("v=DKIM1; k=ed25519; p={}", b64(key.public_key_raw()));
    let mail = dkim_case(&key, &txt).await;
    assert_eq!(mail["dkim_verified"], true);
}

#[tokio::test]
async fn stalled_relay_times_out() {
    // Accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            conns.push(sock);
        }
    });
    let mut cfg = SmtpConfig::new("relay", "127.0.0.1");
    cfg.port = port;
    cfg.timeout = Duration::from_millis(800);
    let ch = EmailChannel::new(cfg).unwrap();
    let started = Instant::now();
    let reason = assert_transient(send(&ch, &outbound("msg_STALL")).await);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(700), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(reason.contains("within"), "{reason}");
    assert_eq!(detail(&ch), (false, Some("timeout".to_owned())));
    held.abort();
}

#[tokio::test]
async fn refused_connection_is_transient() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = SmtpConfig::new("relay", "127.0.0.1");
    cfg.port = port;
    let ch = EmailChannel::new(cfg).unwrap();
    assert_transient(send(&ch, &outbound("msg_REFUSED")).await);
    assert_eq!(detail(&ch), (false, Some("connect".to_owned())));
}

#[tokio::test]
async fn plaintext_relay_when_allowed() {
    let relay = Relay::start(&[]);
    let mut cfg = SmtpConfig::new("relay", "127.0.0.1");
    cfg.port = relay.port;
    cfg.tls = SmtpTls::None;
    cfg.allow_insecure = true;
    let ch = EmailChannel::new(cfg).unwrap();
    send(&ch, &outbound("msg_PLAIN")).await.unwrap();
    let mails = relay.mails();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["tls"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_stay_within_the_pool() {
    let pki = Pki::new();
    let relay = Relay::start(&[
        "--cert",
        pki.cert().to_str().unwrap(),
        "--key",
        pki.key().to_str().unwrap(),
        "--require-starttls",
    ]);
    let mut cfg = relay.config(&pki);
    cfg.pool_size = 2;
    let ch = std::sync::Arc::new(EmailChannel::new(cfg).unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let ch = ch.clone();
        tasks.spawn(async move { send(&ch, &outbound(&format!("msg_CONC{i}"))).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    let mails = relay.mails();
    assert_eq!(mails.len(), 8);
    let ports: std::collections::BTreeSet<u64> = mails
        .iter()
        .map(|m| m["peer_port"].as_u64().unwrap())
        .collect();
    assert!(ports.len() <= 2, "at most pool_size connections: {ports:?}");
    let ids: std::collections::BTreeSet<&str> = mails
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 8);
    assert_eq!(ch.routes()[0].in_flight, 0);
}
