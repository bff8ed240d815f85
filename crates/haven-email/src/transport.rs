//! Connections to the relay: opening (TCP, TLS, EHLO, AUTH), pooling, and what their
//! failures mean.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::DEFAULT_MECHANISMS;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::{
    Extension, MailBodyParameter, MailParameter, RcptParameter,
};
use lettre::transport::smtp::response::Response;
use tokio::sync::Semaphore;

use crate::config::{Prepared, PreparedTls};
use crate::message::sanitize_reason;

/// How long a pooled connection may sit unused before it is closed instead of reused.
/// Relays drop idle clients after a few minutes (Postfix: 300 s); staying well under that
/// avoids reusing a connection the relay is about to close.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where in the exchange a failure happened: it decides what a 5xx means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Connecting, TLS, EHLO, AUTH: nothing about this message yet.
    Connect,
    /// `MAIL`, `RCPT`, `DATA` and the content: the relay judges this message.
    Transaction,
}

/// A failure, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The relay refused this message for good (5xx during the transaction).
    Rejected { code: String, reason: String },
    /// Retry later. `class` is a short fixed word for statuses and logs.
    Transient {
        class: &'static str,
        reason: String,
        /// Worth a warning for the operator (certificate, STARTTLS, AUTH).
        operator: bool,
    },
}

/// Reads a lettre error. Never includes addresses: reply texts go through
/// [`sanitize_reason`], and lettre's own texts carry none.
pub(crate) fn classify(e: &SmtpError, phase: Phase) -> Failure {
    if let Some(code) = e.status() {
        let code = code.to_string();
        let text = std::error::Error::source(e)
            .map(|t| sanitize_reason(&t.to_string()))
            .unwrap_or_default();
        if e.is_permanent() && phase == Phase::Transaction && !is_config_code(&code) {
            return Failure::Rejected { code, reason: text };
        }
        let (class, operator) = if phase == Phase::Connect {
            if matches!(code.as_str(), "530" | "534" | "535" | "538" | "454") {
                ("auth", true)
            } else {
                ("relay_refused", e.is_permanent())
            }
        } else if is_config_code(&code) {
            ("relay_policy", true)
        } else {
            ("smtp_4xx", false)
        };
        return Failure::Transient {
            class,
            reason: format!("relay answered {code} {text}")
                .trim_end()
                .to_owned(),
            operator,
        };
    }

    if let Some(tls) = find_rustls_error(e) {
        let cert = matches!(
            tls,
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::UnsupportedNameType
        );
        return Failure::Transient {
            class: if cert { "tls_certificate" } else { "tls" },
            reason: format!("TLS handshake failed: {tls}"),
            operator: true,
        };
    }
    if e.is_tls() {
        return Failure::Transient {
            class: "tls",
            reason: format!("TLS failed: {}", sanitize_reason(&e.to_string())),
            operator: true,
        };
    }
    if e.is_timeout() {
        return Failure::Transient {
            class: "timeout",
            reason: "the relay did not answer in time".to_owned(),
            operator: false,
        };
    }
    let text = e.to_string();
    if e.is_client() && text.contains("STARTTLS") {
        // A relay that stops offering STARTTLS is misconfigured, or someone strips it.
        return Failure::Transient {
            class: "starttls_unavailable",
            reason: "the relay does not offer STARTTLS; nothing was sent".to_owned(),
            operator: true,
        };
    }
    if e.is_client() && text.contains("authentication mechanism") {
        return Failure::Transient {
            class: "auth",
            reason: "the relay offers no AUTH mechanism we support (PLAIN, LOGIN); is TLS on?"
                .to_owned(),
            operator: true,
        };
    }
    if e.is_client() && text.contains("SMTPUTF8") {
        return Failure::Rejected {
            code: "smtputf8_unsupported".to_owned(),
            reason: "the relay cannot take non-ASCII addresses (no SMTPUTF8)".to_owned(),
        };
    }
    let class = if phase == Phase::Connect {
        "connect"
    } else {
        "network"
    };
    Failure::Transient {
        class,
        reason: sanitize_reason(&error_text(e)),
        operator: false,
    }
}

/// 5xx replies that are about the relay's setup, not about this message: auth or TLS
/// required (530), bad sequence (503), auth failures (534, 535, 538).
fn is_config_code(code: &str) -> bool {
    matches!(code, "503" | "530" | "534" | "535" | "538")
}

fn error_text(e: &SmtpError) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        source = s.source();
    }
    out
}

/// The rustls error behind a failed handshake, if any. tokio-rustls wraps it in an
/// `io::Error`, whose `source()` skips the wrapped error, so look inside explicitly.
fn find_rustls_error(e: &SmtpError) -> Option<&rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = err.downcast_ref::<io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(tls);
        }
        cur = err.source();
    }
    None
}

struct Idle {
    conn: Open,
    since: Instant,
}

/// A connection and whether its relay offers DSN (RFC 3461); only asked when the send
/// wants delivery status notifications.
struct Open {
    conn: AsyncSmtpConnection,
    dsn: bool,
}

/// What to ask of a relay that offers DSN: the `ENVID` (the Haven message id), `RET=HDRS`
/// (a report returns the headers, never the body), and `NOTIFY`.
#[derive(Debug, Clone)]
pub(crate) struct DsnRequest {
    pub envelope_id: String,
    /// `FAILURE`, or `SUCCESS,FAILURE` when the message asked for a receipt.
    pub notify: &'static str,
}

/// Open connections to one relay. A connection is taken out while it is used and goes back
/// only after a transaction that completed (`250` after `DATA`); one whose send failed,
/// timed out or was cancelled is dropped, so a half-finished transaction is never reused.
pub(crate) struct Pool {
    idle: Mutex<Vec<Idle>>,
    /// At most `pool_size` connections in use at once.
    permits: Semaphore,
    max_idle: usize,
}

impl Pool {
    pub(crate) fn new(size: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.min(Semaphore::MAX_PERMITS)),
            max_idle: size,
        }
    }

    fn take_idle(&self) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Expired ones first: close them in the background.
        let (fresh, stale): (Vec<Idle>, Vec<Idle>) = idle
            .drain(..)
            .partition(|i| i.since.elapsed() < IDLE_TIMEOUT);
        *idle = fresh;
        for s in stale {
            close_politely(s.conn.conn);
        }
        idle.pop()
    }

    fn put_back(&self, conn: Open) {
        if conn.conn.has_broken() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        } else {
            drop(idle);
            close_politely(conn.conn);
        }
    }

    /// Closes every idle connection with `QUIT`.
    pub(crate) async fn close_idle(&self) {
        let conns: Vec<Idle> = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.drain(..).collect()
        };
        for mut i in conns {
            let _ = tokio::time::timeout(Duration::from_secs(2), i.conn.conn.abort()).await;
        }
    }

    /// Sends one message: a pooled connection that still answers `NOOP`, or a new one.
    /// The caller bounds the whole call with its timeout; dropping the future drops the
    /// connection in use.
    pub(crate) async fn send(
        &self,
        cfg: &Prepared,
        envelope: &Envelope,
        bytes: &[u8],
        dsn: Option<&DsnRequest>,
    ) -> Result<Response, Failure> {
        let Ok(_permit) = self.permits.acquire().await else {
            // The semaphore is never closed.
            return Err(Failure::Transient {
                class: "closed",
                reason: "the connection pool is closed".to_owned(),
                operator: false,
            });
        };
        let mut conn = loop {
            match self.take_idle() {
                Some(mut idle) => {
                    if idle.conn.conn.test_connected().await {
                        break idle.conn;
                    }
                    // The relay closed it meanwhile: drop it, try the next.
                }
                None => {
                    break open(cfg, dsn.is_some())
                        .await
                        .map_err(|e| classify(&e, Phase::Connect))?;
                }
            }
        };
        let response = match dsn.filter(|_| conn.dsn) {
            Some(dsn) => transact_with_dsn(&mut conn.conn, envelope, bytes, dsn).await?,
            None => conn
                .conn
                .send(envelope, bytes)
                .await
                .map_err(|e| classify(&e, Phase::Transaction))?,
        };
        self.put_back(conn);
        Ok(response)
    }
}

/// QUIT in the background, bounded; the runtime may be gone (then just drop).
fn close_politely(mut conn: AsyncSmtpConnection) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.abort()).await;
        });
    }
}

/// One mail transaction with DSN parameters (lettre's `send` has no way to add them):
/// `MAIL FROM:<…> RET=HDRS ENVID=…`, `RCPT TO:<…> NOTIFY=…`, then the content; with
/// lettre's own checks for non-ASCII addresses and content. A failed command closes the
/// connection, as lettre does.
async fn transact_with_dsn(
    conn: &mut AsyncSmtpConnection,
    envelope: &Envelope,
    bytes: &[u8],
    dsn: &DsnRequest,
) -> Result<Response, Failure> {
    let info = conn.server_info();
    let mut mail = Vec::new();
    let non_ascii = envelope
        .from()
        .is_some_and(|a| !AsRef::<str>::as_ref(a).is_ascii())
        || envelope
            .to()
            .iter()
            .any(|a| !AsRef::<str>::as_ref(a).is_ascii());
    if non_ascii {
        if !info.supports_feature(Extension::SmtpUtfEight) {
            return Err(Failure::Rejected {
                code: "smtputf8_unsupported".to_owned(),
                reason: "the relay cannot take non-ASCII addresses (no SMTPUTF8)".to_owned(),
            });
        }
        mail.push(MailParameter::SmtpUtfEight);
    }
    if !bytes.is_ascii() {
        if !info.supports_feature(Extension::EightBitMime) {
            return Err(Failure::Rejected {
                code: "8bitmime_unsupported".to_owned(),
                reason: "the relay cannot take 8-bit content (no 8BITMIME)".to_owned(),
            });
        }
        mail.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    mail.push(MailParameter::Other {
        keyword: "RET".to_owned(),
        value: Some("HDRS".to_owned()),
    });
    mail.push(MailParameter::Other {
        keyword: "ENVID".to_owned(),
        value: Some(xtext(&dsn.envelope_id)),
    });
    let result = async {
        conn.command(Mail::new(envelope.from().cloned(), mail))
            .await?;
        for to in envelope.to() {
            let notify = vec![RcptParameter::Other {
                keyword: "NOTIFY".to_owned(),
                value: Some(dsn.notify.to_owned()),
            }];
            conn.command(Rcpt::new(to.clone(), notify)).await?;
        }
        conn.command(Data).await?;
        conn.message(bytes).await
    }
    .await;
    match result {
        Ok(r) => Ok(r),
        Err(e) => {
            conn.abort().await;
            Err(classify(&e, Phase::Transaction))
        }
    }
}

/// RFC 3461 xtext: `+XX` for `+`, `=`, controls, space and non-ASCII.
fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Whether an `EHLO` reply lists the `DSN` keyword.
fn offers_dsn(reply: &Response) -> bool {
    reply.message().any(|line| {
        line.split_whitespace()
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case("DSN"))
    })
}

/// [`connect`], and when DSNs are wanted, a second `EHLO` to see whether the relay offers
/// them (lettre keeps only the extensions it knows).
async fn open(cfg: &Prepared, want_dsn: bool) -> Result<Open, SmtpError> {
    let mut conn = connect(cfg).await?;
    let dsn = if want_dsn {
        match conn.command(Ehlo::new(cfg.client_id.clone())).await {
            Ok(reply) => offers_dsn(&reply),
            Err(e) => {
                conn.abort().await;
                return Err(e);
            }
        }
    } else {
        false
    };
    Ok(Open { conn, dsn })
}

/// TCP (+ TLS for implicit), EHLO, STARTTLS (required: no plaintext fallback), AUTH.
async fn connect(cfg: &Prepared) -> Result<AsyncSmtpConnection, SmtpError> {
    let implicit = match &cfg.tls {
        PreparedTls::Implicit(p) => Some(p.clone()),
        _ => None,
    };
    let mut conn = AsyncSmtpConnection::connect_tokio1(
        (cfg.host.as_str(), cfg.port),
        Some(cfg.timeout),
        &cfg.client_id,
        implicit,
        None,
    )
    .await?;
    if let PreparedTls::StartTls(params) = &cfg.tls {
        // Fails with a client error when the relay does not offer STARTTLS; only EHLO
        // went out in plaintext.
        conn.starttls(params.clone(), &cfg.client_id).await?;
    }
    if let Some(credentials) = &cfg.credentials {
        conn.auth(DEFAULT_MECHANISMS, credentials).await?;
    }
    Ok(conn)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn xtext_encodes_what_it_must() {
        assert_eq!(xtext("msg_01abc"), "msg_01abc");
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(xtext("é"), "+C3+A9");
    }

    #[test]
    fn config_codes_are_not_rejections() {
        for c in ["503", "530", "535"] {
            assert!(is_config_code(c));
        }
        assert!(!is_config_code("550"));
        assert!(!is_config_code("554"));
    }
}
