//! Real third-party peers for the channel tests, started on 127.0.0.1 and stopped on drop:
//! an SMSC (node-smpp, `tests/js/smsc.js`), an SMTP relay (aiosmtpd,
//! `tests/py/smtp_server.py`), and Postfix as a queueing relay that sends real delivery
//! status notifications.

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

    /// Sends a delivery receipt for a message id this SMSC never issued (as if meant for
    /// another system) to every bound session; returns the answer.
    pub async fn foreign_receipt(&self, message_id: &str) -> Value {
        let r = self
            .http
            .post(self.url("/receipt"))
            .json(&serde_json::json!({ "message_id": message_id }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("smsc /receipt: {e}"));
        r.json()
            .await
            .unwrap_or_else(|e| panic!("smsc /receipt: {e}"))
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
        Self::spawn(true)
    }

    /// Plaintext, no AUTH: a recipient's mail server behind Postfix.
    pub fn start_plain() -> SmtpRelay {
        Self::spawn(false)
    }

    fn spawn(secure: bool) -> SmtpRelay {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let cert = test_cert(dir.path());
        let mut cmd = Command::new(python());
        cmd.arg(repo_root().join("tests/py/smtp_server.py"))
            .args(["--port", "0"]);
        if secure {
            cmd.args(["--require-starttls", "--auth", "relay:relay-secret"])
                .arg("--cert")
                .arg(&cert.cert)
                .arg("--key")
                .arg(&cert.key);
        }
        let mut child = cmd
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

/// A free TCP port on 127.0.0.1 (bound and released: another process could take it first,
/// which the tests accept).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    l.local_addr().unwrap_or_else(|e| panic!("{e}")).port()
}

/// `program` as root: directly when the tests run as root, else through `sudo -n`
/// (Postfix's master must start as root to drop to the postfix user).
fn as_root(program: &str) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", program]);
        c
    }
}

const POSTFIX: &str = "/usr/sbin/postfix";

/// A private Postfix instance (Debian's `postfix`, run from its own configuration and queue
/// directory): takes mail from Haven with STARTTLS on `port`, relays it to `next_hop`, and
/// mails delivery status notifications for `bounce_domain` to `bounce_port` (Haven's
/// bounce listener), with opportunistic STARTTLS.
pub struct Postfix {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
    pub cert: TestCert,
}

impl Postfix {
    pub fn start(next_hop: u16, bounce_domain: &str, bounce_port: u16) -> Postfix {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path();
        // Postfix's daemons run as the postfix user: it must reach the queue.
        std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        let cert = test_cert(root);
        for d in ["conf", "queue", "data"] {
            std::fs::create_dir(root.join(d)).unwrap_or_else(|e| panic!("{e}"));
        }
        let chown = as_root("chown")
            .arg("postfix")
            .arg(root.join("data"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            chown,
            "chown postfix: is Postfix installed (scripts/test installs it)?"
        );
        let port = free_port();
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {root}/queue\n\
             data_directory = {root}/data\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             inet_protocols = ipv4\n\
             inet_interfaces = loopback-only\n\
             myhostname = relay.test\n\
             mydestination =\n\
             mynetworks = 127.0.0.0/8\n\
             relayhost = [127.0.0.1]:{next_hop}\n\
             smtpd_relay_restrictions = permit_mynetworks, reject\n\
             transport_maps = inline:{{{bounce_domain}=smtp:[127.0.0.1]:{bounce_port}}}\n\
             alias_maps =\n\
             local_recipient_maps =\n\
             maillog_file_prefixes = {root}\n\
             maillog_file = {root}/maillog\n\
             smtpd_tls_security_level = may\n\
             smtpd_tls_cert_file = {cert}\n\
             smtpd_tls_key_file = {key}\n\
             smtp_tls_security_level = may\n\
             smtp_tls_loglevel = 1\n\
             delay_warning_time = 0\n\
             minimal_backoff_time = 1s\n\
             maximal_backoff_time = 2s\n\
             queue_run_delay = 1s\n\
             smtp_connection_cache_on_demand = no\n",
            root = root.display(),
            cert = cert.cert.display(),
            key = cert.key.display(),
        );
        std::fs::write(root.join("conf/main.cf"), main_cf).unwrap_or_else(|e| panic!("{e}"));
        let master_cf = format!(
            "127.0.0.1:{port} inet n - n - - smtpd\n\
             pickup unix n - n 60 1 pickup\n\
             cleanup unix n - n - 0 cleanup\n\
             qmgr unix n - n 300 1 qmgr\n\
             tlsmgr unix - - n 1000? 1 tlsmgr\n\
             rewrite unix - - n - - trivial-rewrite\n\
             bounce unix - - n - 0 bounce\n\
             defer unix - - n - 0 bounce\n\
             trace unix - - n - 0 bounce\n\
             verify unix - - n - 1 verify\n\
             flush unix n - n 1000? 0 flush\n\
             proxymap unix - - n - - proxymap\n\
             smtp unix - - n - - smtp\n\
             relay unix - - n - - smtp\n\
             showq unix n - n - - showq\n\
             error unix - - n - - error\n\
             retry unix - - n - - error\n\
             discard unix - - n - - discard\n\
             anvil unix - - n - 1 anvil\n\
             scache unix - - n - 1 scache\n\
             postlog unix-dgram n - n - 1 postlogd\n"
        );
        std::fs::write(root.join("conf/master.cf"), master_cf).unwrap_or_else(|e| panic!("{e}"));
        let child = as_root(POSTFIX)
            .arg("-c")
            .arg(root.join("conf"))
            .arg("start-fg")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("postfix: {e}"));
        let p = Postfix {
            child,
            dir,
            port,
            cert,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Postfix did not start: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// Sends mail for `domain` to `127.0.0.1:port` from now on (`transport_maps`, then a
    /// reload): for a peer that binds its port after Postfix started.
    pub fn route(&self, domain: &str, port: u16) {
        let conf = self.dir.path().join("conf");
        let main_cf =
            std::fs::read_to_string(conf.join("main.cf")).unwrap_or_else(|e| panic!("{e}"));
        let routed: String = main_cf
            .lines()
            .map(|l| {
                if l.starts_with("transport_maps =") {
                    format!("transport_maps = inline:{{{domain}=smtp:[127.0.0.1]:{port}}}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(conf.join("main.cf"), routed).unwrap_or_else(|e| panic!("{e}"));
        let reloaded = as_root(POSTFIX)
            .arg("-c")
            .arg(&conf)
            .arg("reload")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success());
        assert!(reloaded, "postfix reload: {}", self.log());
    }

    /// Postfix's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// `[email.smtp]` for Haven: STARTTLS, trusting this instance's certificate.
    pub fn config(&self) -> String {
        format!(
            "[email.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\nca_file = \"{}\"\ntimeout_seconds = 10\n",
            self.port,
            self.cert.cert.display()
        )
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = as_root(POSTFIX)
            .arg("-c")
            .arg(self.dir.path().join("conf"))
            .arg("abort")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
