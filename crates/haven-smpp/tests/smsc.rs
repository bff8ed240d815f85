//! Integration tests against a real third-party SMPP implementation: `tests/js/smsc.js`, an
//! SMSC simulator built on node-smpp. Each test starts its own simulator on free ports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use haven_channel::{
    Channel, ChannelEvent, InboundSink, Outbound, ReceiptState, SendError, SinkError,
};
use haven_smpp::{SmsChannel, SmscConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/js")
}

fn ensure_node_modules() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let dir = js_dir();
        if dir.join("node_modules/smpp").is_dir() {
            return;
        }
        let status = Command::new("npm")
            .args(["ci", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .expect("npm is needed to install the SMSC simulator's dependencies");
        assert!(status.success(), "npm ci in tests/js failed");
    });
}

/// A running `smsc.js`; killed on drop.
struct Sim {
    child: Child,
    port: u16,
    control_port: u16,
}

impl Sim {
    fn start(extra: &[&str]) -> Sim {
        ensure_node_modules();
        let mut child = Command::new("node")
            .arg(js_dir().join("smsc.js"))
            .args([
                "--port",
                "0",
                "--control-port",
                "0",
                "--quiet",
                "--dlr-delay-ms",
                "20",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node is needed for the SMSC simulator");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(WAIT) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("smsc.js did not get ready");
            }
        };
        let v: Value = serde_json::from_str(line.trim()).expect("ready line is JSON");
        assert_eq!(v["ready"], true);
        Sim {
            child,
            port: u16::try_from(v["port"].as_u64().unwrap()).unwrap(),
            control_port: u16::try_from(v["control_port"].as_u64().unwrap()).unwrap(),
        }
    }

    async fn http(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let fut = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.control_port))
                .await
                .unwrap();
            let body = body.map(|b| b.to_string()).unwrap_or_default();
            let req = format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut resp = Vec::new();
            s.read_to_end(&mut resp).await.unwrap();
            let text = String::from_utf8(resp).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let code: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
            (code, serde_json::from_str(body).unwrap_or(Value::Null))
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .expect("control API answered")
    }

    async fn get(&self, path: &str) -> Value {
        let (code, v) = self.http("GET", path, None).await;
        assert_eq!(code, 200, "{path}");
        v
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.http("POST", path, Some(body)).await
    }

    async fn messages(&self) -> Vec<Value> {
        self.get("/messages").await.as_array().cloned().unwrap()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Default)]
struct TestSink {
    events: Mutex<Vec<ChannelEvent>>,
    fail: AtomicBool,
    /// While set, each event waits in `receive` (counted in `waiting`) before it is taken.
    hold: AtomicBool,
    waiting: AtomicUsize,
}

#[async_trait::async_trait]
impl InboundSink for TestSink {
    async fn receive(&self, event: ChannelEvent) -> Result<(), SinkError> {
        if self.hold.load(Ordering::SeqCst) {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            while self.hold.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(SinkError("test sink refuses".into()));
        }
        self.events.lock().unwrap().push(event);
        Ok(())
    }
}

impl TestSink {
    fn receipts(&self) -> Vec<(String, ReceiptState, Option<String>, String)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                ChannelEvent::Receipt {
                    provider_id,
                    state,
                    error_code,
                    route,
                    ..
                } => Some((
                    provider_id.clone(),
                    *state,
                    error_code.clone(),
                    route.clone(),
                )),
                _ => None,
            })
            .collect()
    }

    fn inbound(&self) -> Vec<(String, String, String, String)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                ChannelEvent::Inbound {
                    from,
                    to,
                    text,
                    route,
                    ..
                } => Some((from.clone(), to.clone(), text.clone(), route.clone())),
                _ => None,
            })
            .collect()
    }
}

async fn wait_until<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until_async<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config(name: &str, sim: &Sim) -> SmscConfig {
    SmscConfig {
        name: name.into(),
        host: "127.0.0.1".into(),
        port: sim.port,
        system_id: "haven".into(),
        password: "secret".into(),
        response_timeout: Duration::from_secs(5),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(500),
        ..Default::default()
    }
}

fn msg(to: &str, text: &str, want_receipt: bool) -> Outbound {
    Outbound {
        message_id: "msg_test".into(),
        account_id: "acc_test".into(),
        to: to.into(),
        from: "+14155550199".into(),
        subject: None,
        text: text.into(),
        html: None,
        want_receipt,
        expires_at_ms: None,
    }
}

async fn start(configs: Vec<SmscConfig>) -> (SmsChannel, Arc<TestSink>) {
    let sink = Arc::new(TestSink::default());
    let ch = SmsChannel::start(configs, sink.clone());
    wait_until("every route bound", || {
        ch.routes().iter().all(|r| r.connected)
    })
    .await;
    (ch, sink)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_gsm_long_gsm_and_ucs2_exactly() {
    let sim = Sim::start(&[]);
    let (ch, _sink) = start(vec![config("sim", &sim)]).await;
    assert_eq!(sim.get("/stats").await["binds"], 1);

    let short = "Hello from Haven: {appointment} at 10:30 €5 [ok] ~ \\ | ^";
    let long_gsm: String = (0..35).map(|i| format!("line {i:02} ok. ")).collect(); // 420 chars: 3 parts
    let long_ucs2: String = (0..12).map(|i| format!("Γειά σου {i} 😀 ")).collect();
    assert!(long_ucs2.encode_utf16().count() > 134);

    let mut sent = Vec::new();
    for text in [short.to_string(), long_gsm.clone(), long_ucs2.clone()] {
        let r = ch.send(&msg("+14155550100", &text, false)).await.unwrap();
        assert_eq!(r.route, "sim");
        sent.push(r);
    }
    assert_eq!(sent[0].provider_ids.len(), 1);
    assert_eq!(sent[1].provider_ids.len(), 3);
    assert_eq!(sent[2].provider_ids.len(), 3);

    let msgs = sim.messages().await;
    assert_eq!(msgs.len(), 3);
    for (m, (text, dc)) in
        msgs.iter()
            .zip([(short, 0), (long_gsm.as_str(), 0), (long_ucs2.as_str(), 8)])
    {
        assert_eq!(m["text"], text);
        assert_eq!(m["data_coding"], dc);
        assert_eq!(m["to"], "14155550100");
        assert_eq!(m["from"], "14155550199");
        assert_eq!(m["dest_ton"], 1);
        assert_eq!(m["source_npi"], 1);
        assert_eq!(m["registered_delivery"], 0);
    }
    assert_eq!(msgs[0]["esm_class"], 0);
    assert_eq!(msgs[1]["esm_class"].as_u64().unwrap() & 0x40, 0x40);
    for (m, s) in msgs.iter().zip(&sent) {
        let ids: Vec<String> = m["message_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, s.provider_ids);
    }

    // alphanumeric sender and validity period
    let mut m = msg("+14155550100", "hi", false);
    m.from = "Clinic".into();
    m.expires_at_ms = Some(4_102_444_800_000); // 2100-01-01T00:00:00Z
    ch.send(&m).await.unwrap();
    let msgs = sim.messages().await;
    let last = msgs.last().unwrap();
    assert_eq!(last["from"], "Clinic");
    assert_eq!(last["source_ton"], 5);
    assert_eq!(last["source_npi"], 0);
    assert_eq!(last["validity_period"], "000101000000000+");
    ch.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_reach_the_sink_and_correlate() {
    let sim = Sim::start(&[]);
    let (ch, sink) = start(vec![config("sim", &sim)]).await;

    let long: String = "Your results are ready. ".repeat(10);
    let ok = ch.send(&msg("+14155550100", &long, true)).await.unwrap();
    assert_eq!(ok.provider_ids.len(), 2);
    let bad = ch
        .send(&msg("+14155550666", "will fail", true))
        .await
        .unwrap();
    wait_until("three receipts", || sink.receipts().len() == 3).await;
    let receipts = sink.receipts();
    for id in &ok.provider_ids {
        let r = receipts
            .iter()
            .find(|r| &r.0 == id)
            .expect("receipt for part");
        assert_eq!(r.1, ReceiptState::Delivered);
        assert_eq!(r.2.as_deref(), Some("000"));
        assert_eq!(r.3, "sim");
    }
    let r = receipts
        .iter()
        .find(|r| r.0 == bad.provider_ids[0])
        .expect("receipt for the failing message");
    assert_eq!(r.1, ReceiptState::Failed);
    assert_eq!(r.2.as_deref(), Some("001"));
    wait_until_async("the SMSC to see three acknowledged receipts", || async {
        sim.get("/stats").await["receipts_sent"] == 3
    })
    .await;
    ch.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_and_throttled() {
    let sim = Sim::start(&[]);
    let (ch, _sink) = start(vec![config("sim", &sim)]).await;

    match ch.send(&msg("+14155550777", "nope", false)).await {
        Err(SendError::Rejected { code, .. }) => assert_eq!(code, "0x0000000B"),
        other => panic!("expected Rejected, got {other:?}"),
    }

    // The first submit to ...0888 is throttled: send() reports Transient (with retry_after),
    // and the retry goes through.
    match ch.send(&msg("+14155550888", "busy", false)).await {
        Err(SendError::Transient { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(1)))
        }
        other => panic!("expected Transient, got {other:?}"),
    }
    let ok = ch.send(&msg("+14155550888", "busy", false)).await.unwrap();
    assert_eq!(ok.provider_ids.len(), 1);

    // Multi-part: part 1 throttled → Transient; on the retry part 1 goes and part 2 is
    // throttled once, which send() retries on the same route itself.
    let long = "x".repeat(200);
    assert!(matches!(
        ch.send(&msg("+14155550888", &long, false)).await,
        Err(SendError::Transient { .. })
    ));
    let ok = ch.send(&msg("+14155550888", &long, false)).await.unwrap();
    assert_eq!(ok.provider_ids.len(), 2);
    let msgs = sim.messages().await;
    assert_eq!(msgs.last().unwrap()["text"], long.as_str());
    ch.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mobile_originated_messages_are_reassembled() {
    let sim = Sim::start(&[]);
    let (ch, sink) = start(vec![config("sim", &sim)]).await;

    let (code, r) = sim
        .post(
            "/mo",
            json!({"from": "+14155550123", "to": "+14155550199", "text": "Yes, I'll be there @ 10"}),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["statuses"], json!([0]));

    let long_ucs2: String = (0..10).map(|i| format!("Ναι, ευχαριστώ {i} 🙏 ")).collect();
    for concat in ["udh8", "udh16", "sar"] {
        let (code, r) = sim
            .post(
                "/mo",
                json!({"from": "+14155550123", "to": "+14155550199", "text": long_ucs2,
                       "encoding": "ucs2", "concat": concat}),
            )
            .await;
        assert_eq!(code, 200, "{r}");
        let statuses = r["statuses"].as_array().unwrap();
        assert!(statuses.len() >= 3, "{r}");
        assert!(statuses.iter().all(|s| s == 0), "{r}");
    }
    let long_gsm = "All good, see you on Monday. ".repeat(8);
    let (_, r) = sim
        .post(
            "/mo",
            json!({"from": "+14155550123", "to": "+14155550199", "text": long_gsm}),
        )
        .await;
    assert!(r["statuses"].as_array().unwrap().iter().all(|s| s == 0));

    wait_until("five inbound messages", || sink.inbound().len() == 5).await;
    let inbound = sink.inbound();
    assert_eq!(
        inbound[0],
        (
            "+14155550123".to_string(),
            "+14155550199".to_string(),
            "Yes, I'll be there @ 10".to_string(),
            "sim".to_string()
        )
    );
    for m in &inbound[1..4] {
        assert_eq!(m.2, long_ucs2);
    }
    assert_eq!(inbound[4].2, long_gsm);
    ch.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_failure_asks_the_smsc_to_redeliver() {
    let sim = Sim::start(&[]);
    let (ch, sink) = start(vec![config("sim", &sim)]).await;
    sink.fail.store(true, Ordering::SeqCst);

    let (_, r) = sim
        .post(
            "/mo",
            json!({"from": "+14155550123", "to": "+14155550199", "text": "refused"}),
        )
        .await;
    assert_eq!(r["statuses"], json!([0x64]));

    // multi-part: earlier parts are buffered and acknowledged, the completing one is refused
    let long = "z".repeat(320);
    let (_, r) = sim
        .post(
            "/mo",
            json!({"from": "+14155550123", "to": "+14155550199", "text": long}),
        )
        .await;
    // Parts are handled side by side: whichever completes the message is the one refused.
    let mut statuses: Vec<u64> = r["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [0, 0, 0x64]);

    // receipts refused now are redelivered by the SMSC and stored once the sink recovers
    let sent = ch
        .send(&msg("+14155550100", "receipt later", true))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.receipts().is_empty());
    sink.fail.store(false, Ordering::SeqCst);
    wait_until("the redelivered receipt", || {
        sink.receipts().iter().any(|r| r.0 == sent.provider_ids[0])
    })
    .await;
    ch.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_sm_beyond_the_inbound_window_is_refused_for_redelivery() {
    let sim = Sim::start(&[]);
    let mut c = config("sim", &sim);
    c.window = 1;
    c.inbound_window = 2;
    let (ch, sink) = start(vec![c]).await;
    sink.hold.store(true, Ordering::SeqCst);
    let mo = |text: &str| {
        sim.post(
            "/mo",
            json!({"from": "+14155550123", "to": "+14155550199", "text": text}),
        )
    };
    // Two inbound messages fill the window and wait in the sink; a third is refused at once
    // (ESME_RX_T_APPN) without waiting for them; once they are taken there is room again.
    let (one, two, three) = tokio::join!(mo("one"), mo("two"), async {
        wait_until("two deliver_sm waiting in the sink", || {
            sink.waiting.load(Ordering::SeqCst) == 2
        })
        .await;
        let refused = mo("three").await;
        sink.hold.store(false, Ordering::SeqCst);
        refused
    });
    assert_eq!(one.1["statuses"], json!([0]));
    assert_eq!(two.1["statuses"], json!([0]));
    assert_eq!(three.1["statuses"], json!([0x64]));
    assert_eq!(mo("four").await.1["statuses"], json!([0]));
    let mut texts: Vec<String> = sink.inbound().into_iter().map(|m| m.2).collect();
    texts.sort();
    assert_eq!(texts, ["four", "one", "two"]);
    ch.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_smsc_drops_the_connection() {
    let sim = Sim::start(&[]);
    let (ch, _sink) = start(vec![config("sim", &sim)]).await;
    ch.send(&msg("+14155550100", "before", false))
        .await
        .unwrap();

    let (code, _) = sim.post("/drop", json!({})).await;
    assert_eq!(code, 200);
    wait_until_async("a second bind", || async {
        sim.get("/stats").await["binds"] == 2
    })
    .await;
    wait_until("the route bound again", || ch.routes()[0].connected).await;
    ch.send(&msg("+14155550100", "after", false)).await.unwrap();
    let texts: Vec<Value> = sim
        .messages()
        .await
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts, vec![json!("before"), json!("after")]);
    ch.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_prefix_and_fails_over() {
    let mut sim_a = Sim::start(&[]);
    let sim_b = Sim::start(&[]);
    let mut a = config("a", &sim_a);
    a.prefixes = vec!["+1".into()];
    let b = config("b", &sim_b); // no prefixes: everything, lowest priority
    let (ch, _sink) = start(vec![b, a]).await;

    let r = ch.send(&msg("+14155550100", "to a", false)).await.unwrap();
    assert_eq!(r.route, "a");
    let r = ch.send(&msg("+447700900123", "to b", false)).await.unwrap();
    assert_eq!(r.route, "b");

    sim_a.kill();
    wait_until("route a down", || {
        ch.routes().iter().any(|r| r.name == "a" && !r.connected)
    })
    .await;
    let r = ch
        .send(&msg("+14155550100", "failover", false))
        .await
        .unwrap();
    assert_eq!(r.route, "b");
    let texts: Vec<Value> = sim_b
        .messages()
        .await
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts, vec![json!("to b"), json!("failover")]);
    wait_until("route a's detail to show the reconnect loop", || {
        ch.routes().iter().any(|r| {
            r.name == "a" && !r.connected && r.detail.as_deref().unwrap_or("").contains("retrying")
        })
    })
    .await;
    ch.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_never_binds() {
    let sim = Sim::start(&[]);
    let mut cfg = config("sim", &sim);
    cfg.password = "wrong".into();
    let sink = Arc::new(TestSink::default());
    let ch = SmsChannel::start(vec![cfg], sink);
    wait_until("a bind failure in the route detail", || {
        ch.routes()[0]
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("ESME_RBINDFAIL")
    })
    .await;
    assert!(!ch.routes()[0].connected);
    assert!(matches!(
        ch.send(&msg("+14155550100", "x", false)).await,
        Err(SendError::Transient { .. })
    ));
    ch.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_unbinds_and_window_limits_in_flight() {
    let sim = Sim::start(&[]);
    let mut cfg = config("sim", &sim);
    cfg.window = 2;
    cfg.max_per_second = Some(200);
    let (ch, _sink) = start(vec![cfg]).await;
    let ch = Arc::new(ch);

    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            ch.send(&msg("+14155550100", &format!("n{i}"), false)).await
        }));
    }
    let mut max_in_flight = 0;
    while !tasks.iter().all(|t| t.is_finished()) {
        max_in_flight = max_in_flight.max(ch.routes()[0].in_flight);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert!(max_in_flight <= 2, "{max_in_flight}");
    // 40 submits at 200/s (burst 10) take at least ~150 ms
    assert!(started.elapsed() >= Duration::from_millis(140));
    assert_eq!(sim.get("/stats").await["submits"], 40);

    assert_eq!(sim.get("/stats").await["bound_sessions"], 1);
    ch.shutdown().await;
    wait_until_async("the SMSC to see the unbind", || async {
        sim.get("/stats").await["bound_sessions"] == 0
    })
    .await;
    assert!(!ch.routes()[0].connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let ca_path = dir.path().join("ca.pem");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();

    let sim = Sim::start(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    let mut cfg = config("tls", &sim);
    cfg.tls = true;
    cfg.ca_file = Some(ca_path);
    cfg.tls_server_name = Some("localhost".into());
    cfg.validate().unwrap();
    let (ch, _sink) = start(vec![cfg]).await;
    let r = ch
        .send(&msg("+14155550100", "over TLS", false))
        .await
        .unwrap();
    assert_eq!(r.route, "tls");
    assert_eq!(sim.messages().await[0]["text"], "over TLS");
    ch.shutdown().await;
}
