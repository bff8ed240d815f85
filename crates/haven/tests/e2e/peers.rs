//! Real third-party peers for the channel tests, started on 127.0.0.1 and stopped on drop:
//! an SMSC (node-smpp, `tests/js/smsc.js`) and an SMTP relay (aiosmtpd,
//! `tests/py/smtp_server.py`).

use crate::common::{python, repo_root};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Reads the `{"ready":true,…}` line a peer prints once it listens.
fn ready_line(child: &mut Child, what: &str) -> Value {
    let out = child
        .stdout
        .take()
        .unwrap_or_else(|| panic!("{what}: no stdout"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{what} did not start"));
    let v: Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{what}: {e}: {line:?}"));
    assert_eq!(v["ready"], true, "{what}: {v}");
    v
}

fn node_modules() {
    let js = repo_root().join("tests/js");
    if js.join("node_modules/smpp").is_dir() {
        return;
    }
    let ok = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(&js)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "npm ci in tests/js failed");
}

/// The SMSC simulator.
pub struct Smsc {
    child: Child,
    pub port: u16,
    pub control_port: u16,
    http: reqwest::Client,
}

impl Smsc {
    pub fn start() -> Smsc {
        Self::start_on(0)
    }

    /// On a given SMPP port (to restart it where Haven expects it).
    pub fn start_on(port: u16) -> Smsc {
        Self::spawn(port, None)
    }

    /// Also appends every submit to `record` before answering it, so that what the SMSC took
    /// is known even when it is killed.
    pub fn start_recording(port: u16, record: &Path) -> Smsc {
        Self::spawn(port, Some(record))
    }

    fn spawn(port: u16, record: Option<&Path>) -> Smsc {
        node_modules();
        let mut cmd = Command::new("node");
        if let Some(r) = record {
            cmd.arg(repo_root().join("tests/js/smsc.js"))
                .arg("--record")
                .arg(r);
        } else {
            cmd.arg(repo_root().join("tests/js/smsc.js"));
        }
        let mut child = cmd
            .args(["--port", &port.to_string(), "--control-port", "0"])
            .args(["--system-id", "haven", "--password", "smppsec", "--quiet"])
            .args(["--dlr-delay-ms", "20"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("node smsc.js: {e}"));
        let v = ready_line(&mut child, "the SMSC");
        let num = |k: &str| {
            v[k].as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or_else(|| panic!("{k}"))
        };
        Smsc {
            port: num("port"),
            control_port: num("control_port"),
            child,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap_or_else(|e| panic!("{e}")),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.control_port)
    }

    pub async fn messages(&self) -> Vec<Value> {
        let r = self
            .http
            .get(self.url("/messages"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("smsc /messages: {e}"));
        r.json::<Vec<Value>>()
            .await
            .unwrap_or_else(|e| panic!("smsc /messages: {e}"))
    }

    pub async fn stats(&self) -> Value {
        let r = self
            .http
            .get(self.url("/stats"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("smsc /stats: {e}"));
        r.json()
            .await
            .unwrap_or_else(|e| panic!("smsc /stats: {e}"))
    }

    /// Sends a mobile-originated message to every bound session; returns the answer.
    pub async fn mo(&self, from: &str, to: &str, text: &str) -> Value {
        let r = self
            .http
            .post(self.url("/mo"))
            .json(&serde_json::json!({ "from": from, "to": to, "text": text }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("smsc /mo: {e}"));
        r.json().await.unwrap_or_else(|e| panic!("smsc /mo: {e}"))
    }

    /// Waits until Haven is bound.
    pub async fn wait_bound(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.stats().await["bound_sessions"].as_u64().unwrap_or(0) > 0 {
                return;
            }
            assert!(Instant::now() < deadline, "Haven never bound to the SMSC");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The `[[sms.smsc]]` table for Haven's configuration.
    pub fn config(&self, name: &str) -> String {
        format!(
            "[[sms.smsc]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {}\nsystem_id = \"haven\"\npassword = \"smppsec\"\nwindow = 50\nenquire_link_seconds = 5\n",
            self.port
        )
    }
}

impl Drop for Smsc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM files.
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn test_cert(dir: &Path) -> TestCert {
    let (pem, key_pem) =
        haven_crypto::tls::self_signed_localhost().unwrap_or_else(|e| panic!("cert: {e}"));
    let cert = dir.join("relay-cert.pem");
    let key = dir.join("relay-key.pem");
    std::fs::write(&cert, pem).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&key, key_pem).unwrap_or_else(|e| panic!("{e}"));
    TestCert { cert, key }
}

/// The SMTP relay (aiosmtpd) with STARTTLS required and AUTH.
pub struct SmtpRelay {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub cert: TestCert,
}

impl SmtpRelay {
    pub fn start() -> SmtpRelay {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let cert = test_cert(dir.path());
        let mut child = Command::new(python())
            .arg(repo_root().join("tests/py/smtp_server.py"))
            .args([
                "--port",
                "0",
                "--require-starttls",
                "--auth",
                "relay:relay-secret",
            ])
            .arg("--cert")
            .arg(&cert.cert)
            .arg("--key")
            .arg(&cert.key)
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("smtp_server.py: {e}"));
        let v = ready_line(&mut child, "the SMTP relay");
        let port = v["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("port"));
        SmtpRelay {
            child,
            port,
            dir,
            cert,
        }
    }

    /// `accept`, `tempfail` or `reject`.
    pub fn mode(&self, mode: &str) {
        std::fs::write(self.dir.path().join("mode"), mode).unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn mail(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("mail.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn config(&self) -> String {
        format!(
            "[email.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\nca_file = \"{}\"\nusername = \"relay\"\npassword = \"relay-secret\"\ntimeout_seconds = 10\n",
            self.port,
            self.cert.cert.display()
        )
    }
}

impl Drop for SmtpRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
