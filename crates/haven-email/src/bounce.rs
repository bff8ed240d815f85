//! Asynchronous bounces: a per-message envelope sender (VERP) that names the Haven message
//! and carries a keyed tag, the reader of delivery status notifications (RFC 3464), and the
//! SMTP listener the relay hands them to.
//!
//! The relay takes a message with `250` and fails later (the recipient's server refused it,
//! the mailbox is full, the queue lifetime ran out). It then mails a DSN to the envelope
//! sender. With bounces configured that sender is `bounce+<message id>.<tag>@<domain>`,
//! the domain is routed to this listener, and the DSN becomes a
//! [`ChannelEvent::Receipt`] for the message it names.
//!
//! The tag is the first 80 bits of HMAC-SHA-256 of the message id under a server key, so
//! nobody can fail a message by mailing a forged bounce for its id: an address without the
//! right tag is refused at `RCPT` (`550 5.1.1`), compared in constant time.
//!
//! Nothing of a DSN is stored or logged: only the action and the status code (`5.1.1`) of
//! the message's recipient are read. The recipient address, the diagnostic text and the
//! returned headers (which repeat the subject) are dropped.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use haven_channel::{ChannelEvent, ChannelKind, InboundSink, ReceiptState};
use mail_parser::{MessageParser, MimeHeaders};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// The metric counting DSNs and refused bounce mail by outcome.
pub const BOUNCES_METRIC: &str = "haven_email_bounces_total";

const LOCAL_PREFIX: &str = "bounce+";
const TAG_BYTES: usize = 10;
const MAX_ID_LEN: usize = 64;
/// Longest command line taken (RFC 5321 asks for 512; parameters make real ones longer).
const MAX_LINE: usize = 4096;
/// Recipients in one transaction.
const MAX_RCPT: usize = 100;
/// Silence allowed between two commands or two chunks of data (RFC 5321 §4.5.3.2 asks for
/// minutes; a relay is a machine that answers at once).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest one connection may stay open.
const SESSION_LIMIT: Duration = Duration::from_secs(600);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes and checks the per-message envelope senders.
#[derive(Clone)]
pub struct BounceAddresses {
    key: hmac::Key,
    domain: String,
}

impl std::fmt::Debug for BounceAddresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BounceAddresses")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl BounceAddresses {
    /// `key` is the server's bounce key (32 random bytes, the same on every node);
    /// `domain` the envelope sender domain.
    pub fn new(key: &[u8; 32], domain: &str) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn tag(&self, message_id: &str) -> [u8; TAG_BYTES] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"haven-bounce\0");
        ctx.update(message_id.as_bytes());
        let full = ctx.sign();
        let mut out = [0u8; TAG_BYTES];
        out.copy_from_slice(&full.as_ref()[..TAG_BYTES]);
        out
    }

    /// The envelope sender for `message_id`.
    pub fn address(&self, message_id: &str) -> String {
        format!(
            "{LOCAL_PREFIX}{message_id}.{}@{}",
            hex::encode(self.tag(message_id)),
            self.domain
        )
    }

    /// The message id an address made by [`Self::address`] names, or `None` for any other
    /// address (another domain, no tag, a wrong tag). Case-insensitive: relays may fold it.
    pub fn message_id(&self, address: &str) -> Option<String> {
        let address = address.trim().trim_start_matches('<').trim_end_matches('>');
        let (local, domain) = address.rsplit_once('@')?;
        if !domain
            .trim_end_matches('.')
            .eq_ignore_ascii_case(&self.domain)
        {
            return None;
        }
        let local = local.to_ascii_lowercase();
        let rest = local.strip_prefix(LOCAL_PREFIX)?;
        let (id, tag) = rest.rsplit_once('.')?;
        let id_ok = !id.is_empty()
            && id.len() <= MAX_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !id_ok || tag.len() != TAG_BYTES * 2 {
            return None;
        }
        let given = hex::decode(tag).ok()?;
        if bool::from(given.ct_eq(&self.tag(id))) {
            Some(id.to_owned())
        } else {
            None
        }
    }
}

/// What a DSN says about one recipient (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    Failed,
    Delayed,
    Delivered,
    Relayed,
    Expanded,
}

/// The parts of a DSN Haven reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dsn {
    /// One entry per recipient block: its action and status code (`5.1.1`).
    pub recipients: Vec<(DsnAction, Option<String>)>,
}

impl Dsn {
    /// The report's verdict on the message (each Haven email has one recipient): a failure
    /// first, then a delivery; `None` when it only says "delayed".
    pub fn receipt(&self) -> Option<(ReceiptState, Option<String>)> {
        if let Some((_, status)) = self
            .recipients
            .iter()
            .find(|(a, _)| *a == DsnAction::Failed)
        {
            // 4.4.7: the relay gave up when the message's lifetime in its queue ran out.
            let state = if status.as_deref() == Some("4.4.7") {
                ReceiptState::Expired
            } else {
                ReceiptState::Failed
            };
            return Some((state, status.clone()));
        }
        if self
            .recipients
            .iter()
            .any(|(a, _)| matches!(a, DsnAction::Delivered | DsnAction::Relayed))
        {
            return Some((ReceiptState::Delivered, None));
        }
        None
    }
}

/// Reads a delivery status notification: a `multipart/report` with
/// `report-type=delivery-status` whose `message/delivery-status` (or RFC 6533's
/// `message/global-delivery-status`) part has at least one recipient block with a known
/// `Action`. `None` for anything else (an auto-reply, a bounce in free text).
pub fn parse_dsn(raw: &[u8]) -> Option<Dsn> {
    let message = MessageParser::default().parse(raw)?;
    let top = message.content_type()?;
    if !top.ctype().eq_ignore_ascii_case("multipart")
        || !top.subtype()?.eq_ignore_ascii_case("report")
        || !top
            .attribute("report-type")?
            .eq_ignore_ascii_case("delivery-status")
    {
        return None;
    }
    let status = message.parts.iter().find(|p| {
        p.content_type().is_some_and(|c| {
            c.ctype().eq_ignore_ascii_case("message")
                && c.subtype().is_some_and(|s| {
                    s.eq_ignore_ascii_case("delivery-status")
                        || s.eq_ignore_ascii_case("global-delivery-status")
                })
        })
    })?;
    let text = String::from_utf8_lossy(status.contents());
    let recipients = parse_status_fields(&text);
    if recipients.is_empty() {
        None
    } else {
        Some(Dsn { recipients })
    }
}

/// The recipient blocks of a `message/delivery-status` body: header-style fields, folded
/// lines joined, blocks separated by blank lines; the first block is per-message.
fn parse_status_fields(text: &str) -> Vec<(DsnAction, Option<String>)> {
    let mut blocks: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in text.lines() {
        if line.trim().is_empty() {
            if blocks.last().is_some_and(|b| !b.is_empty()) {
                blocks.push(Vec::new());
            }
            continue;
        }
        let Some(block) = blocks.last_mut() else {
            continue;
        };
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = block.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            block.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    blocks
        .iter()
        .skip(1)
        .filter_map(|fields| {
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| strip_comment(v))
            };
            let action = match field("action")?.to_ascii_lowercase().as_str() {
                "failed" => DsnAction::Failed,
                "delayed" => DsnAction::Delayed,
                "delivered" => DsnAction::Delivered,
                "relayed" => DsnAction::Relayed,
                "expanded" => DsnAction::Expanded,
                _ => return None,
            };
            let status = field("status").filter(|s| is_status_code(s));
            Some((action, status))
        })
        .collect()
}

/// The value before any `(comment)`, as one token.
fn strip_comment(v: &str) -> String {
    v.split('(')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// `class.subject.detail` (RFC 3463): class 2, 4 or 5, then 1 to 3 and 1 to 3 digits.
fn is_status_code(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

/// How the bounce listener runs.
#[derive(Clone)]
pub struct BounceListenerConfig {
    /// The email route the bounces are for (receipts name it).
    pub route: String,
    pub listen: SocketAddr,
    pub allow_from: Vec<ipnet::IpNet>,
    /// Offered as `STARTTLS` when set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Refuse `MAIL` before `STARTTLS`. Needs `tls`.
    pub require_tls: bool,
    pub max_message_bytes: usize,
    pub max_connections: usize,
    /// The name in the greeting and the `EHLO` reply.
    pub hostname: String,
}

impl std::fmt::Debug for BounceListenerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BounceListenerConfig")
            .field("route", &self.route)
            .field("listen", &self.listen)
            .field("require_tls", &self.require_tls)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BounceListenerError {
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("require_tls needs a TLS certificate")]
    TlsMissing,
}

/// The running listener; dropping it stops accepting (sessions in progress finish).
#[derive(Debug)]
pub struct BounceListener {
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BounceListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BounceListener {
    /// Binds `cfg.listen` and serves until dropped. Must run inside a tokio runtime.
    pub fn start(
        cfg: BounceListenerConfig,
        addresses: BounceAddresses,
        sink: Arc<dyn InboundSink>,
    ) -> Result<Self, BounceListenerError> {
        if cfg.require_tls && cfg.tls.is_none() {
            return Err(BounceListenerError::TlsMissing);
        }
        let std_listener = std::net::TcpListener::bind(cfg.listen)
            .map_err(|e| BounceListenerError::Bind(cfg.listen, e))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| BounceListenerError::Bind(cfg.listen, e))?;
        let local = std_listener
            .local_addr()
            .map_err(|e| BounceListenerError::Bind(cfg.listen, e))?;
        let listener = TcpListener::from_std(std_listener)
            .map_err(|e| BounceListenerError::Bind(cfg.listen, e))?;
        let shared = Arc::new(Shared {
            acceptor: cfg.tls.clone().map(TlsAcceptor::from),
            cfg,
            addresses,
            sink,
        });
        let task = tokio::spawn(accept_loop(listener, shared));
        Ok(Self { local, task })
    }

    /// Where it listens (the port when `listen` asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

struct Shared {
    cfg: BounceListenerConfig,
    acceptor: Option<TlsAcceptor>,
    addresses: BounceAddresses,
    sink: Arc<dyn InboundSink>,
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(shared.cfg.max_connections.max(1)));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "bounce listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            let route = shared.cfg.route.clone();
            match tokio::time::timeout(SESSION_LIMIT, session(stream, peer, &shared)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(route, peer = %peer.ip(), error = %e, "bounce session ended")
                }
                Err(_) => {
                    tracing::info!(route, peer = %peer.ip(), "bounce session cut at its time limit")
                }
            }
        });
    }
}

fn allowed(allow: &[ipnet::IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    allow.iter().any(|n| n.contains(&ip))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Conn = BufReader<Pin<Box<dyn Io>>>;

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer was silent too long")]
    Timeout,
    #[error("closed by the peer")]
    Closed,
    #[error("a line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("commands pipelined into STARTTLS")]
    Injection,
}

async fn reply(conn: &mut Conn, text: &str) -> Result<(), SessionError> {
    let w = conn.get_mut();
    w.write_all(text.as_bytes()).await?;
    w.write_all(b"\r\n").await?;
    w.flush().await?;
    Ok(())
}

/// One line without its CRLF, at most `max` bytes (longer ones are an error), within
/// [`READ_TIMEOUT`].
async fn read_line(conn: &mut Conn, max: usize) -> Result<Vec<u8>, SessionError> {
    let mut line = Vec::new();
    loop {
        let buf = match tokio::time::timeout(READ_TIMEOUT, conn.fill_buf()).await {
            Ok(r) => r?,
            Err(_) => return Err(SessionError::Timeout),
        };
        if buf.is_empty() {
            return Err(SessionError::Closed);
        }
        let (take, done) = match memchr_newline(buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max + 2 {
            return Err(SessionError::LineTooLong);
        }
        line.extend_from_slice(&buf[..take]);
        conn.consume(take);
        if done {
            while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                line.pop();
            }
            return Ok(line);
        }
    }
}

fn memchr_newline(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|b| *b == b'\n')
}

struct Transaction {
    /// The messages the envelope recipients name.
    messages: Vec<String>,
}

async fn session(stream: TcpStream, peer: SocketAddr, shared: &Shared) -> Result<(), SessionError> {
    let cfg = &shared.cfg;
    let route = cfg.route.as_str();
    let io: Pin<Box<dyn Io>> = Box::pin(stream);
    let mut conn: Conn = BufReader::new(io);
    if !allowed(&cfg.allow_from, peer.ip()) {
        tracing::warn!(route, peer = %peer.ip(), "bounce listener: connection from an address not in email.bounces.allow_from refused");
        metrics::counter!(BOUNCES_METRIC, "outcome" => "refused_peer").increment(1);
        reply(&mut conn, "554 5.7.1 Not allowed to send to this host").await?;
        return Ok(());
    }
    reply(
        &mut conn,
        &format!("220 {} ESMTP Haven bounce receiver", cfg.hostname),
    )
    .await?;
    let mut tls = false;
    let mut greeted = false;
    let mut tx: Option<Transaction> = None;
    loop {
        let line = match read_line(&mut conn, MAX_LINE).await {
            Ok(l) => l,
            Err(SessionError::LineTooLong) => {
                let _ = reply(&mut conn, "500 5.5.2 Line too long").await;
                return Err(SessionError::LineTooLong);
            }
            Err(e) => return Err(e),
        };
        let line = String::from_utf8_lossy(&line);
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.trim()),
            None => (line.trim().to_ascii_uppercase(), ""),
        };
        match verb.as_str() {
            "EHLO" => {
                greeted = true;
                tx = None;
                let mut lines = vec![cfg.hostname.clone()];
                lines.push(format!("SIZE {}", cfg.max_message_bytes));
                lines.push("8BITMIME".to_owned());
                lines.push("ENHANCEDSTATUSCODES".to_owned());
                if shared.acceptor.is_some() && !tls {
                    lines.push("STARTTLS".to_owned());
                }
                let n = lines.len();
                let text = lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| format!("250{}{l}", if i + 1 == n { ' ' } else { '-' }))
                    .collect::<Vec<_>>()
                    .join("\r\n");
                reply(&mut conn, &text).await?;
            }
            "HELO" => {
                greeted = true;
                tx = None;
                reply(&mut conn, &format!("250 {}", cfg.hostname)).await?;
            }
            "STARTTLS" => {
                let Some(acceptor) = shared.acceptor.clone().filter(|_| !tls) else {
                    reply(&mut conn, "502 5.5.1 STARTTLS not available").await?;
                    continue;
                };
                if !conn.buffer().is_empty() {
                    // Plaintext sent after STARTTLS would be taken as if it came encrypted.
                    return Err(SessionError::Injection);
                }
                reply(&mut conn, "220 2.0.0 Ready to start TLS").await?;
                let inner = conn.into_inner();
                let stream =
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(inner)).await
                    {
                        Ok(r) => r?,
                        Err(_) => return Err(SessionError::Timeout),
                    };
                let io: Pin<Box<dyn Io>> = Box::pin(stream);
                conn = BufReader::new(io);
                tls = true;
                greeted = false;
                tx = None;
            }
            "MAIL" => {
                if !greeted {
                    reply(&mut conn, "503 5.5.1 Say EHLO first").await?;
                } else if cfg.require_tls && !tls {
                    reply(&mut conn, "530 5.7.0 Must issue a STARTTLS command first").await?;
                } else if tx.is_some() {
                    reply(&mut conn, "503 5.5.1 Nested MAIL command").await?;
                } else if !arg.to_ascii_uppercase().starts_with("FROM:") {
                    reply(&mut conn, "501 5.5.4 Syntax: MAIL FROM:<address>").await?;
                } else {
                    tx = Some(Transaction {
                        messages: Vec::new(),
                    });
                    reply(&mut conn, "250 2.1.0 Ok").await?;
                }
            }
            "RCPT" => {
                let Some(t) = tx.as_mut() else {
                    reply(&mut conn, "503 5.5.1 Need MAIL first").await?;
                    continue;
                };
                let Some(address) = arg
                    .get(..3)
                    .filter(|p| p.eq_ignore_ascii_case("TO:"))
                    .and_then(|_| arg.get(3..))
                    .map(|a| a.split_whitespace().next().unwrap_or_default())
                else {
                    reply(&mut conn, "501 5.5.4 Syntax: RCPT TO:<address>").await?;
                    continue;
                };
                if t.messages.len() >= MAX_RCPT {
                    reply(&mut conn, "452 4.5.3 Too many recipients").await?;
                } else if let Some(id) = shared.addresses.message_id(address) {
                    t.messages.push(id);
                    reply(&mut conn, "250 2.1.5 Ok").await?;
                } else {
                    metrics::counter!(BOUNCES_METRIC, "outcome" => "refused_address").increment(1);
                    tracing::info!(route, peer = %peer.ip(), "bounce listener: mail for an address Haven did not make refused");
                    reply(&mut conn, "550 5.1.1 No such bounce address").await?;
                }
            }
            "DATA" => {
                let Some(t) = tx.take() else {
                    reply(&mut conn, "503 5.5.1 Need MAIL first").await?;
                    continue;
                };
                if t.messages.is_empty() {
                    reply(&mut conn, "554 5.5.1 No valid recipients").await?;
                    continue;
                }
                reply(&mut conn, "354 End data with <CR><LF>.<CR><LF>").await?;
                let body = read_data(&mut conn, cfg.max_message_bytes).await?;
                let Some(body) = body else {
                    reply(&mut conn, "552 5.3.4 Message too big").await?;
                    continue;
                };
                let answer = take_report(shared, &t.messages, &body).await;
                reply(&mut conn, answer).await?;
            }
            "RSET" => {
                tx = None;
                reply(&mut conn, "250 2.0.0 Ok").await?;
            }
            "NOOP" => reply(&mut conn, "250 2.0.0 Ok").await?,
            "VRFY" => reply(&mut conn, "252 2.5.2 Cannot VRFY").await?,
            "QUIT" => {
                reply(&mut conn, "221 2.0.0 Bye").await?;
                return Ok(());
            }
            _ => reply(&mut conn, "502 5.5.2 Command not recognized").await?,
        }
    }
}

/// The message content up to the lone `.`, dot-unstuffed, or `None` when it exceeded `max`
/// (read to its end anyway, so the session stays in step).
async fn read_data(conn: &mut Conn, max: usize) -> Result<Option<Vec<u8>>, SessionError> {
    let mut body = Vec::new();
    let mut too_big = false;
    loop {
        // A data line is at most 1000 bytes (RFC 5321 §4.5.3.1.6); take some slack.
        let line = read_line(conn, 16 * 1024).await?;
        if line == b"." {
            return Ok(if too_big { None } else { Some(body) });
        }
        let line = line.strip_prefix(b".").unwrap_or(&line);
        if body.len() + line.len() + 2 > max {
            too_big = true;
            body.clear();
        }
        if !too_big {
            body.extend_from_slice(line);
            body.extend_from_slice(b"\r\n");
        }
    }
}

/// Reads the report and hands each named message its receipt; the reply for `DATA`.
async fn take_report(shared: &Shared, messages: &[String], body: &[u8]) -> &'static str {
    let route = shared.cfg.route.as_str();
    let Some(dsn) = parse_dsn(body) else {
        // An auto-reply or a free-text bounce: taken and dropped (refusing it would only
        // make the relay bounce the bounce).
        metrics::counter!(BOUNCES_METRIC, "outcome" => "ignored").increment(1);
        tracing::info!(
            route,
            messages = messages.len(),
            "mail to a bounce address that is not a delivery status notification dropped"
        );
        return "250 2.0.0 Ok: not a delivery status notification, dropped";
    };
    let Some((state, status)) = dsn.receipt() else {
        metrics::counter!(BOUNCES_METRIC, "outcome" => "delayed").increment(1);
        return "250 2.0.0 Ok: noted";
    };
    let at_ms = now_ms();
    for id in messages {
        let event = ChannelEvent::Receipt {
            channel: ChannelKind::Email,
            route: route.to_owned(),
            provider_id: id.clone(),
            state,
            error_code: status.clone(),
            at_ms,
        };
        if let Err(e) = shared.sink.receive(event).await {
            tracing::warn!(route, message_id = %id, error = %e, "bounce report could not be stored; the relay will retry");
            metrics::counter!(BOUNCES_METRIC, "outcome" => "error").increment(1);
            return "451 4.3.0 Could not store the report, try again later";
        }
        tracing::info!(route, message_id = %id, state = ?state, status = status.as_deref().unwrap_or_default(), "delivery status notification received");
    }
    let outcome = match state {
        ReceiptState::Delivered => "delivered",
        ReceiptState::Expired => "expired",
        _ => "failed",
    };
    metrics::counter!(BOUNCES_METRIC, "outcome" => outcome).increment(messages.len() as u64);
    "250 2.0.0 Ok: report taken"
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn addrs() -> BounceAddresses {
        BounceAddresses::new(&[7u8; 32], "Bounces.Clinic.Example.")
    }

    #[test]
    fn addresses_round_trip_and_forgeries_fail() {
        let a = addrs();
        let addr = a.address("msg_01abc");
        assert!(addr.starts_with("bounce+msg_01abc."));
        assert!(addr.ends_with("@bounces.clinic.example"));
        assert_eq!(a.message_id(&addr).as_deref(), Some("msg_01abc"));
        assert_eq!(
            a.message_id(&format!("<{}>", addr.to_ascii_uppercase()))
                .as_deref(),
            Some("msg_01abc")
        );
        // Another message's tag, another key, another domain, no tag.
        let other = a.address("msg_01abd");
        let (_, tag) = other.split_once('.').unwrap();
        assert_eq!(a.message_id(&format!("bounce+msg_01abc.{tag}")), None);
        let b = BounceAddresses::new(&[8u8; 32], "bounces.clinic.example");
        assert_eq!(b.message_id(&addr), None);
        assert_eq!(a.message_id(&addr.replace("clinic", "other")), None);
        assert_eq!(
            a.message_id("bounce+msg_01abc@bounces.clinic.example"),
            None
        );
        assert_eq!(a.message_id("postmaster@bounces.clinic.example"), None);
        assert_eq!(a.message_id(""), None);
    }

    const POSTFIX_DSN: &str = "From: Mail Delivery System <MAILER-DAEMON@relay.test>\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status;\r\n\
\tboundary=\"B1\"\r\n\
\r\n\
--B1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
<pat@example.net>: host said: 550 5.1.1 User unknown\r\n\
\r\n\
--B1\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; relay.test\r\n\
Original-Envelope-Id: msg_123\r\n\
\r\n\
Final-Recipient: rfc822; pat@example.net\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Diagnostic-Code: smtp; 550 5.1.1 <pat@example.net>: Recipient address rejected:\r\n\
    User unknown\r\n\
\r\n\
--B1\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
Subject: MARKER\r\n\
\r\n\
--B1--\r\n";

    #[test]
    fn reads_a_failure_report() {
        let dsn = parse_dsn(POSTFIX_DSN.as_bytes()).unwrap();
        assert_eq!(
            dsn.recipients,
            vec![(DsnAction::Failed, Some("5.1.1".into()))]
        );
        assert_eq!(
            dsn.receipt(),
            Some((ReceiptState::Failed, Some("5.1.1".into())))
        );
    }

    #[test]
    fn actions_map_to_receipts() {
        let with = |action: &str, status: &str| {
            let raw = POSTFIX_DSN
                .replace("Action: failed", &format!("Action: {action} (comment)"))
                .replace("Status: 5.1.1", &format!("Status: {status}"));
            parse_dsn(raw.as_bytes()).map(|d| d.receipt())
        };
        assert_eq!(
            with("relayed", "2.0.0"),
            Some(Some((ReceiptState::Delivered, None)))
        );
        assert_eq!(
            with("Delivered", "2.0.0"),
            Some(Some((ReceiptState::Delivered, None)))
        );
        assert_eq!(with("delayed", "4.4.1"), Some(None));
        assert_eq!(
            with("failed", "4.4.7"),
            Some(Some((ReceiptState::Expired, Some("4.4.7".into()))))
        );
        // A status that is not a code is dropped, the action stays.
        assert_eq!(
            with("failed", "x.y.z"),
            Some(Some((ReceiptState::Failed, None)))
        );
        assert_eq!(with("exploded", "5.0.0"), None);
    }

    #[test]
    fn other_mail_is_not_a_report() {
        assert_eq!(
            parse_dsn(b"Subject: Out of office\r\n\r\nback soon\r\n"),
            None
        );
        let no_type = POSTFIX_DSN.replace("report-type=delivery-status;", "");
        assert_eq!(parse_dsn(no_type.as_bytes()), None);
        assert_eq!(parse_dsn(b""), None);
        assert_eq!(parse_dsn(&[0xff, 0xfe, 0x00]), None);
    }

    #[test]
    fn allow_list_matches_mapped_addresses() {
        let allow: Vec<ipnet::IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        assert!(allowed(&allow, "127.0.0.1".parse().unwrap()));
        assert!(allowed(&allow, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(!allowed(&allow, "10.0.0.1".parse().unwrap()));
        assert!(!allowed(&allow, "::1".parse().unwrap()));
    }

    #[test]
    fn status_codes() {
        assert!(is_status_code("5.1.1"));
        assert!(is_status_code("4.4.7"));
        assert!(is_status_code("2.0.0"));
        assert!(!is_status_code("6.1.1"));
        assert!(!is_status_code("5.1"));
        assert!(!is_status_code("5.1.1234"));
    }
}
