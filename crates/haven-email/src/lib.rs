//! Email over SMTP: a [`haven_channel::Channel`] that hands each message to one relay
//! (a "route": the organisation's mail server, a smarthost, a provider's submission
//! endpoint).
//!
//! ```no_run
//! use haven_channel::{Channel as _, Outbound};
//! use haven_email::{EmailChannel, SmtpConfig};
//!
//! async fn send_one(message: &Outbound) -> Result<(), Box<dyn std::error::Error>> {
//!     let mut cfg = SmtpConfig::new("relay", "smtp.example.org");
//!     cfg.username = Some("haven".into());
//!     cfg.password = Some("secret".into());
//!     let channel = EmailChannel::new(cfg)?;
//!     let submitted = channel.send(message).await?;
//!     println!("queued as {:?}", submitted.provider_ids);
//!     Ok(())
//! }
//! ```
//!
//! # What a send does
//! [`EmailChannel::send`](haven_channel::Channel::send) builds the message (see below),
//! takes a pooled connection or opens one (TCP, TLS, `EHLO`, `AUTH`), and runs `MAIL`,
//! `RCPT`, `DATA`. It returns once the relay answered `250` to the content, with
//! [`Submitted::provider_ids`](haven_channel::Submitted) holding the relay's queue id when
//! its reply names one (Postfix `queued as …`, Exim `id=…`, Amazon SES), else the
//! `Message-ID`. The whole send is bounded by [`SmtpConfig::timeout`] (lettre's own
//! timeout covers connecting only).
//!
//! # The message
//! `From`, `To`, `Subject` (empty when the message has none), `Date`; `text` as
//! `text/plain`, or `multipart/alternative` with `html` when that is set; non-ASCII content
//! is encoded (quoted-printable/base64, RFC 2047 words), so any relay takes it.
//! `Message-ID: <{message_id}@{domain of From}>` (or `@haven.local`) is the same on every
//! retry of a message, so receivers can de-duplicate a message that was delivered although
//! its send looked failed (a connection lost after the content went out).
//! `X-Haven-Message-Id: {message_id}` and `Auto-Submitted: auto-generated` (RFC 3834: no
//! autoresponder answers) are added. With [`SmtpConfig::dkim`] the message is DKIM-signed
//! (relaxed/relaxed, covering `From`, `To`, `Subject`, `Date`, `Message-ID`,
//! `MIME-Version`, `Auto-Submitted` and the body; not `Content-Type`, which lettre's
//! signer cannot see).
//!
//! # Errors
//! - A `5xx` reply to `MAIL`, `RCPT` or the content: this relay refuses this message for
//!   good, [`SendError::Rejected`] with the reply code (`"550"`) and the reply text with
//!   every address and anything in angle brackets removed (relays echo the recipient,
//!   which is PHI). Exceptions, which are about the relay's setup and so transient: `503`,
//!   `530`, `534`, `535`, `538`.
//! - A recipient or sender that is not one valid address: `Rejected` with code
//!   `invalid_recipient` / `invalid_sender`; a non-ASCII address for a relay without
//!   `SMTPUTF8`: `smtputf8_unsupported`.
//! - Everything else is [`SendError::Transient`]: `4xx` replies, refused or lost
//!   connections, the timeout, TLS failures (a certificate the trust store does not accept
//!   is logged at `warn` with the route name: the operator has to fix it), a relay that
//!   does not offer `STARTTLS` when it is required (nothing is sent in plaintext then),
//!   `AUTH` failures, and any reply while connecting.
//!
//! # Bounces
//! A `5xx` at `RCPT` or after `DATA` is a bounce reported synchronously, as `Rejected`.
//! A relay that accepts a message and fails to deliver it later mails a delivery status
//! notification (RFC 3464) to the envelope sender. With [`EmailChannel::with_bounces`]
//! that sender is the message's own address under the bounce domain, the relay is asked
//! (when it offers DSN) for failure reports with the headers only (`RET=HDRS`,
//! `NOTIFY=FAILURE`, plus `SUCCESS` for messages that want a receipt), and the
//! [`bounce::BounceListener`] turns each report into a
//! [`ChannelEvent::Receipt`](haven_channel::ChannelEvent) for the message: `failed` (or
//! `expired` for status 4.4.7) with the status code (`5.1.1`), or `delivered` for a
//! `delivered` or `relayed` notice. Without bounces configured, such later failures are
//! not seen.
//!
//! # Connections
//! At most [`SmtpConfig::pool_size`] connections to the relay at once; each is kept open
//! after a completed transaction for the next send (idle ones are checked with `NOOP`
//! before reuse and closed after [`IDLE_TIMEOUT`]). A connection whose send failed, timed
//! out or was cancelled is closed, never reused mid-transaction. Idle connections are
//! only pruned when a send looks for one (there is no background task); the relay closes
//! them on its side meanwhile. [`EmailChannel::shutdown`] says `QUIT` to the idle ones.
//!
//! # TLS
//! rustls with the aws-lc-rs provider; certificates are checked against the system trust
//! store (rustls-platform-verifier) plus [`SmtpConfig::ca_file`] if set, and against
//! [`SmtpConfig::tls_server_name`] or else [`SmtpConfig::host`] (a DNS name or an IP
//! address). TLS 1.2 and 1.3.
//!
//! # What is logged and counted
//! Route names, Haven message ids, reply codes, sanitized reply texts and error classes;
//! never addresses, subjects, bodies or credentials. The counter
//! `haven_smtp_sends_total{route, outcome}` counts sends, `outcome` being `submitted`,
//! `rejected` or `transient`.

pub mod bounce;
mod config;
mod message;
mod transport;

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use haven_channel::{Channel, ChannelKind, Outbound, RouteStatus, SendError, Submitted};

pub use config::{DkimConfig, EmailConfigError, SmtpConfig, SmtpTls};
pub use message::FALLBACK_MESSAGE_ID_DOMAIN;
pub use transport::IDLE_TIMEOUT;

use config::Prepared;
use lettre::address::Envelope;
use message::{BuildError, build, queue_id, sanitize_reason};
use transport::{DsnRequest, Failure, Pool};

/// The metric counting sends by route and outcome.
pub const SENDS_METRIC: &str = "haven_smtp_sends_total";

/// An email channel with one SMTP relay. Cheap to share (`Arc`); sends run concurrently up
/// to [`SmtpConfig::pool_size`].
pub struct EmailChannel {
    cfg: Prepared,
    bounces: Option<bounce::BounceAddresses>,
    pool: Pool,
    in_flight: AtomicUsize,
    state: Mutex<RouteState>,
}

struct RouteState {
    connected: bool,
    detail: Option<String>,
}

impl fmt::Debug for EmailChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailChannel")
            .field("route", &self.cfg.name)
            .field("host", &self.cfg.host)
            .field("port", &self.cfg.port)
            .finish_non_exhaustive()
    }
}

impl EmailChannel {
    /// Validates `cfg` and sets the channel up. Nothing connects yet: the first send does.
    ///
    /// Fails when: `tls` is [`SmtpTls::None`] without `allow_insecure`; the `ca_file`
    /// cannot be read or holds no usable certificate; there is no trust anchor at all
    /// (empty system store and no `ca_file`); the DKIM key is not an RSA (≥ 1024 bits) or
    /// Ed25519 private key, or the selector or domain is not a DNS name; a field is empty,
    /// zero, or only one of `username` and `password` is set; `helo_name` or
    /// `tls_server_name` is not a name.
    pub fn new(cfg: SmtpConfig) -> Result<Self, EmailConfigError> {
        let cfg = cfg.prepare()?;
        Ok(Self {
            pool: Pool::new(cfg.pool_size),
            cfg,
            bounces: None,
            in_flight: AtomicUsize::new(0),
            state: Mutex::new(RouteState {
                connected: true,
                detail: None,
            }),
        })
    }

    /// Sends every message with its own envelope sender from `addresses`
    /// (`bounce+<message id>.<tag>@<domain>`), asks relays that offer DSN for failure
    /// reports (and success reports for messages that want a receipt) with the headers
    /// only, and names each message's part by its Haven id, so the reports the
    /// [`bounce::BounceListener`] reads come back to the message.
    pub fn with_bounces(mut self, addresses: bounce::BounceAddresses) -> Self {
        self.bounces = Some(addresses);
        self
    }

    /// The route name.
    pub fn route(&self) -> &str {
        &self.cfg.name
    }

    /// Says `QUIT` to the idle pooled connections (each bounded to 2 s). Sends in progress
    /// are not interrupted; later sends open new connections.
    pub async fn shutdown(&self) {
        self.pool.close_idle().await;
    }

    async fn try_send(&self, m: &Outbound) -> Result<Submitted, Failure> {
        let built = build(m).map_err(build_failure)?;
        let bytes = match &self.cfg.dkim {
            // RSA signing is milliseconds of CPU: off the async workers.
            Some(dkim) => {
                let dkim = dkim.clone();
                let mut message = built.message;
                tokio::task::spawn_blocking(move || {
                    message.sign(&dkim);
                    message.formatted()
                })
                .await
                .map_err(|_| Failure::Transient {
                    class: "internal",
                    reason: "DKIM signing did not complete".to_owned(),
                    operator: false,
                })?
            }
            None => built.message.formatted(),
        };

        let (envelope, dsn) =
            match &self.bounces {
                Some(b) => {
                    let from = b
                        .address(&m.message_id)
                        .parse()
                        .map_err(|_| Failure::Rejected {
                            code: "invalid_message".to_owned(),
                            reason: "the message id does not make an envelope sender".to_owned(),
                        })?;
                    let envelope = Envelope::new(Some(from), built.envelope.to().to_vec())
                        .map_err(|_| Failure::Rejected {
                            code: "invalid_recipient".to_owned(),
                            reason: "the recipient is not one valid email address".to_owned(),
                        })?;
                    let dsn = DsnRequest {
                        envelope_id: m.message_id.clone(),
                        notify: if m.want_receipt {
                            "SUCCESS,FAILURE"
                        } else {
                            "FAILURE"
                        },
                    };
                    (envelope, Some(dsn))
                }
                None => (built.envelope.clone(), None),
            };
        let send = self.pool.send(&self.cfg, &envelope, &bytes, dsn.as_ref());
        let response = match tokio::time::timeout(self.cfg.timeout, send).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Failure::Transient {
                    class: "timeout",
                    reason: format!(
                        "no complete answer from the relay within {} s",
                        self.cfg.timeout.as_secs_f64()
                    ),
                    operator: false,
                });
            }
        };
        let lines: Vec<&str> = response.message().collect();
        let queue = queue_id(&lines);
        let provider_id = if self.bounces.is_some() {
            // Reports come back naming the Haven message; the relay's queue id is logged.
            if let Some(q) = &queue {
                tracing::debug!(route = %self.cfg.name, message_id = %m.message_id, queue_id = %q, "relay queue id");
            }
            m.message_id.clone()
        } else {
            queue.unwrap_or(built.message_id)
        };
        Ok(Submitted {
            route: self.cfg.name.clone(),
            provider_ids: vec![provider_id],
        })
    }

    fn record(
        &self,
        m: &Outbound,
        result: Result<Submitted, Failure>,
    ) -> Result<Submitted, SendError> {
        let route = self.cfg.name.as_str();
        let (outcome, connected, detail) = match &result {
            Ok(s) => {
                tracing::debug!(
                    route,
                    message_id = %m.message_id,
                    provider_id = s.provider_ids.first().map(String::as_str).unwrap_or_default(),
                    "email handed to the relay"
                );
                ("submitted", true, None)
            }
            Err(Failure::Rejected { code, reason }) => {
                tracing::info!(route, message_id = %m.message_id, code, reason, "email rejected by the relay");
                // One message refused says nothing against the relay itself.
                ("rejected", true, Some(format!("rejected {code}")))
            }
            Err(Failure::Transient {
                class,
                reason,
                operator,
            }) => {
                if *operator {
                    tracing::warn!(route, message_id = %m.message_id, class, reason, "email relay needs attention; will retry");
                } else {
                    tracing::info!(route, message_id = %m.message_id, class, reason, "email send failed; will retry");
                }
                ("transient", false, Some((*class).to_owned()))
            }
        };
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.connected = connected;
            state.detail = detail;
        }
        metrics::counter!(SENDS_METRIC, "route" => route.to_owned(), "outcome" => outcome)
            .increment(1);
        result.map_err(|f| match f {
            Failure::Rejected { code, reason } => SendError::Rejected { code, reason },
            Failure::Transient { reason, .. } => SendError::Transient {
                reason,
                retry_after: None,
            },
        })
    }
}

fn build_failure(e: BuildError) -> Failure {
    let (code, reason) = match e {
        BuildError::Recipient => (
            "invalid_recipient",
            "the recipient is not one valid email address".to_owned(),
        ),
        BuildError::Sender => (
            "invalid_sender",
            "the sender is not one valid email address".to_owned(),
        ),
        BuildError::Message(e) => ("invalid_message", sanitize_reason(&e)),
    };
    Failure::Rejected {
        code: code.to_owned(),
        reason,
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl Channel for EmailChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Email
    }

    async fn send(&self, message: &Outbound) -> Result<Submitted, SendError> {
        let _in_flight = InFlight::new(&self.in_flight);
        let result = self.try_send(message).await;
        self.record(message, result)
    }

    /// One route: `connected` is whether the last send reached the relay (true before the
    /// first send, and after a send the relay rejected for good); `detail` is the class of
    /// the last failure (`timeout`, `connect`, `tls_certificate`, `starttls_unavailable`,
    /// `auth`, `smtp_4xx`, `rejected 550`, …) or `None` after a success.
    fn routes(&self) -> Vec<RouteStatus> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        vec![RouteStatus {
            name: self.cfg.name.clone(),
            connected: state.connected,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            detail: state.detail.clone(),
        }]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn starts_connected_with_one_route() {
        let ch = EmailChannel::new(SmtpConfig::new("relay", "127.0.0.1")).unwrap();
        assert_eq!(ch.kind(), ChannelKind::Email);
        assert_eq!(
            ch.routes(),
            vec![RouteStatus {
                name: "relay".into(),
                connected: true,
                in_flight: 0,
                detail: None
            }]
        );
        assert!(!format!("{ch:?}").contains("password"));
    }

    #[tokio::test]
    async fn invalid_recipient_is_rejected_without_connecting() {
        // Port 9 on localhost: nothing listens; the send must not get that far.
        let mut cfg = SmtpConfig::new("relay", "127.0.0.1");
        cfg.port = 9;
        let ch = EmailChannel::new(cfg).unwrap();
        let m = Outbound {
            message_id: "msg_1".into(),
            account_id: "acc_1".into(),
            to: "not-an-address".into(),
            from: "clinic@example.org".into(),
            subject: None,
            text: "x".into(),
            html: None,
            want_receipt: false,
            expires_at_ms: None,
        };
        match ch.send(&m).await {
            Err(SendError::Rejected { code, reason }) => {
                assert_eq!(code, "invalid_recipient");
                assert!(!reason.contains("not-an-address"));
            }
            other => panic!("{other:?}"),
        }
        assert!(ch.routes()[0].connected);
    }
}
