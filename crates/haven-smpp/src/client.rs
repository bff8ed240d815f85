//! One SMSC connection ([`Smsc`]): connect (TCP or TLS), bind, keep the link alive with
//! enquire_link, reconnect with exponential backoff and jitter, submit with a window of
//! outstanding requests and a per-connection throughput limit, and hand deliver_sm (receipts
//! and mobile-originated messages) to the [`InboundSink`], acknowledging only what it stored.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use haven_channel::{ChannelEvent, ChannelKind, InboundSink, RouteStatus};
use tokio::io::ReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::encoding;
use crate::pdu::{BindType, Header, Packet, Pdu, Sm, SmResp, TlvList, status};
use crate::reassembly::{Added, Reassembler, SetKey};
use crate::receipt;
use crate::session::{
    self, BindError, BindParams, Connection, FrameReader, RequestError, Transport,
};

/// How to reach and use one SMSC.
#[derive(Clone)]
pub struct SmscConfig {
    /// Route name: shows in logs, metrics, [`RouteStatus`] and `Submitted::route`.
    pub name: String,
    /// SMSC host name or address.
    pub host: String,
    /// SMSC port (2775 by convention; often 3550 with TLS).
    pub port: u16,
    /// ESME identity for the bind (at most 15 characters).
    pub system_id: String,
    /// Never logged (`Debug` redacts it).
    pub password: String,
    /// `system_type` for the bind (at most 12 characters; often empty).
    pub system_type: String,
    /// Transceiver by default. A receiver-only route never takes submits.
    pub bind: BindType,
    /// TLS (via rustls with the aws-lc-rs provider).
    pub tls: bool,
    /// PEM file of trust anchors for TLS; without it, the system's trust store is used.
    pub ca_file: Option<PathBuf>,
    /// Name to verify the SMSC's certificate against; `host` when unset.
    pub tls_server_name: Option<String>,
    /// Outstanding submit_sm at once (default 10).
    pub window: usize,
    /// Per-connection submits per second; unlimited when `None`. When the budget is spent a
    /// submit waits (never fails) unless its deadline would pass first.
    pub max_per_second: Option<u32>,
    /// Send enquire_link after this long without receiving anything (default 30 s).
    pub enquire_link_interval: Duration,
    /// How long to wait for any response, and for connect/bind (default 10 s).
    pub response_timeout: Duration,
    /// Reconnect backoff bounds (default 1 s … 30 s, exponential with jitter).
    pub reconnect_min: Duration,
    /// Upper bound of the reconnect backoff.
    pub reconnect_max: Duration,
    /// TON/NPI for numeric source addresses (default 1/1: international, E.164; the leading
    /// `+` is stripped). Alphanumeric senders always go as TON 5 NPI 0.
    pub source_ton: u8,
    /// NPI for numeric source addresses.
    pub source_npi: u8,
    /// TON/NPI for destinations (default 1/1; the leading `+` is stripped).
    pub dest_ton: u8,
    /// NPI for destinations.
    pub dest_npi: u8,
    /// E.164 prefixes (`"+1"`, `"+44"`) this route serves; empty serves everything, at the
    /// lowest priority.
    pub prefixes: Vec<String>,
    /// `service_type` on submit_sm (default empty: the SMSC's default).
    pub service_type: String,
    /// How long parts of a concatenated inbound message wait for the rest (default 5 min).
    pub mo_reassembly_timeout: Duration,
    /// Most concatenated inbound messages held incomplete at once (default 1024).
    pub mo_max_partial: usize,
    /// `deliver_sm` (receipts, inbound messages) handled at once on this connection, at
    /// least `window` (default 4096). Each waits for its group commit before its answer, so
    /// this bounds the receipts a second the connection takes to this divided by the commit's
    /// wait. Beyond it the SMSC is asked to redeliver (`ESME_RX_T_APPN`).
    pub inbound_window: usize,
}

impl Default for SmscConfig {
    fn default() -> Self {
        SmscConfig {
            name: "smsc".into(),
            host: "127.0.0.1".into(),
            port: 2775,
            system_id: String::new(),
            password: String::new(),
            system_type: String::new(),
            bind: BindType::Transceiver,
            tls: false,
            ca_file: None,
            tls_server_name: None,
            window: 10,
            max_per_second: None,
            enquire_link_interval: Duration::from_secs(30),
            response_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
            source_ton: 1,
            source_npi: 1,
            dest_ton: 1,
            dest_npi: 1,
            prefixes: Vec::new(),
            service_type: String::new(),
            mo_reassembly_timeout: Duration::from_secs(300),
            mo_max_partial: 1024,
            inbound_window: DEFAULT_INBOUND_WINDOW,
        }
    }
}

impl fmt::Debug for SmscConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmscConfig")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("system_id", &self.system_id)
            .field("password", &"<redacted>")
            .field("system_type", &self.system_type)
            .field("bind", &self.bind)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("tls_server_name", &self.tls_server_name)
            .field("window", &self.window)
            .field("max_per_second", &self.max_per_second)
            .field("enquire_link_interval", &self.enquire_link_interval)
            .field("response_timeout", &self.response_timeout)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("prefixes", &self.prefixes)
            .finish_non_exhaustive()
    }
}

/// A configuration mistake found by [`SmscConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SMSC route {route:?}: {problem}")]
pub struct ConfigError {
    /// The route's name.
    pub route: String,
    /// What is wrong.
    pub problem: String,
}

impl SmscConfig {
    /// Check what can be checked without connecting: lengths SMPP allows, non-zero window and
    /// timeouts, sane backoff bounds, prefixes that look like E.164 prefixes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |problem: String| ConfigError {
            route: self.name.clone(),
            problem,
        };
        if self.name.trim().is_empty() {
            return Err(err("the route needs a name".into()));
        }
        if self.host.trim().is_empty() {
            return Err(err("host is empty".into()));
        }
        let ascii_max = |what: &str, v: &str, max: usize| {
            if !v.is_ascii() || v.contains('\0') || v.len() > max {
                Err(err(format!(
                    "{what} must be at most {max} ASCII characters"
                )))
            } else {
                Ok(())
            }
        };
        ascii_max("system_id", &self.system_id, 15)?;
        ascii_max("password", &self.password, 8)?;
        ascii_max("system_type", &self.system_type, 12)?;
        ascii_max("service_type", &self.service_type, 5)?;
        if self.window == 0 {
            return Err(err("window must be at least 1".into()));
        }
        if self.max_per_second == Some(0) {
            return Err(err("max_per_second must be at least 1 (or unset)".into()));
        }
        if self.response_timeout.is_zero() || self.enquire_link_interval.is_zero() {
            return Err(err("timeouts must be above zero".into()));
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return Err(err(
                "reconnect_min must be above zero and at most reconnect_max".into(),
            ));
        }
        for p in &self.prefixes {
            let digits = p.strip_prefix('+').unwrap_or(p);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(format!(
                    "prefix {p:?} is not an E.164 prefix like \"+1\""
                )));
            }
        }
        if self.tls {
            let name = self.tls_server_name.as_deref().unwrap_or(&self.host);
            if rustls_pki_types::ServerName::try_from(name.to_string()).is_err() {
                return Err(err(format!("{name:?} is not a valid TLS server name")));
            }
        }
        Ok(())
    }
}

/// Per-connection token bucket. Waiters reserve a token (the balance may go negative) and
/// sleep until it is theirs, so they are served in order and the rate holds exactly.
struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        // Allow 50 ms worth of burst (at least one) so timer granularity does not cap the rate.
        let burst = (rate * 0.05).max(1.0);
        TokenBucket {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Reserve one token: how long to wait for it, or `None` when that would pass `deadline`
    /// (nothing is reserved then).
    fn reserve(&self, now: Instant, deadline: Instant) -> Option<Duration> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(st.1).as_secs_f64();
        st.0 = (st.0 + elapsed * self.rate).min(self.burst);
        st.1 = now;
        if st.0 >= 1.0 {
            st.0 -= 1.0;
            return Some(Duration::ZERO);
        }
        let wait = Duration::from_secs_f64((1.0 - st.0) / self.rate);
        if now.checked_add(wait).is_none_or(|t| t > deadline) {
            return None;
        }
        st.0 -= 1.0;
        Some(wait)
    }
}

/// `now + d`, saturating (at a year from now) instead of panicking on absurd durations.
pub(crate) fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// A pseudo-random number for jitter and concatenation references (no dependency needed:
/// std's randomly keyed hasher over a counter).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Exponential backoff with "equal jitter": the n-th delay is uniformly within
/// [d/2, d] where d = min(max, min·2ⁿ), and never below `min`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Backoff between `min` and `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// Start over (after a successful bind).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.attempt = self.attempt.saturating_add(1);
        let d = self.min.saturating_mul(factor).min(self.max);
        let half = d / 2;
        let span = u64::try_from((d - half).as_millis()).unwrap_or(u64::MAX);
        let jitter = if span == 0 {
            0
        } else {
            random_u64() % span.saturating_add(1)
        };
        (half + Duration::from_millis(jitter)).clamp(self.min, self.max)
    }
}

/// `deliver_sm` handled at once per connection by default. Receipts come back at the rate
/// submits go out and each waits for the paced settle's commit (50 ms apart, plus the commit)
/// before its answer: at 10,000 receipts a second about 1,000 are in progress. A bound of 500
/// (the submit window) refused more receipts than there were messages, each then sent again
/// by the SMSC a second later. A waiting receipt costs a task and its PDU, a few hundred bytes.
pub const DEFAULT_INBOUND_WINDOW: usize = 4096;

struct Shared {
    config: SmscConfig,
    sink: Arc<dyn InboundSink>,
    conn: Mutex<Option<Arc<Connection>>>,
    window: Arc<Semaphore>,
    bucket: Option<TokenBucket>,
    in_flight: AtomicUsize,
    detail: Mutex<String>,
    shutdown: watch::Sender<bool>,
    reassembly: Mutex<Reassembler>,
    inbound: Arc<Semaphore>,
    inbound_window: usize,
    /// deliver_sm refused since the last warning, and when that was (ms since the epoch).
    refused: AtomicU64,
    refused_warned_ms: AtomicI64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// At most one warning per this long about refused deliver_sm (each is counted).
const REFUSED_WARN_EVERY_MS: i64 = 10_000;

impl Shared {
    /// Counts a deliver_sm refused for want of room; warns at most once per
    /// [`REFUSED_WARN_EVERY_MS`], with how many were refused since the last warning.
    fn refused_inbound(&self) {
        metrics::counter!("haven_smpp_deliver_refused_total", "route" => self.config.name.clone())
            .increment(1);
        self.refused.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let last = self.refused_warned_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= REFUSED_WARN_EVERY_MS
            && self
                .refused_warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let refused = self.refused.swap(0, Ordering::Relaxed);
            tracing::warn!(route = %self.config.name, refused,
                inbound_window = self.inbound_window,
                "deliver_sm refused for want of room (ESME_RX_T_APPN; the SMSC redelivers): raise inbound_window");
        }
    }

    fn current(&self) -> Option<Arc<Connection>> {
        lock(&self.conn).clone().filter(|c| !c.is_closed())
    }

    fn set_detail(&self, d: impl Into<String>) {
        *lock(&self.detail) = d.into();
    }

    fn set_connected(&self, conn: Option<Arc<Connection>>) {
        let up = conn.is_some();
        *lock(&self.conn) = conn;
        metrics::gauge!("haven_smpp_connected", "route" => self.config.name.clone()).set(if up {
            1.0
        } else {
            0.0
        });
    }

    fn in_flight_add(&self, delta: isize) {
        let n = if delta >= 0 {
            self.in_flight
                .fetch_add(delta.unsigned_abs(), Ordering::Relaxed)
                + delta.unsigned_abs()
        } else {
            self.in_flight
                .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed)
                .saturating_sub(delta.unsigned_abs())
        };
        metrics::gauge!("haven_smpp_in_flight", "route" => self.config.name.clone()).set(n as f64);
    }
}

struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn new(s: &'a Shared) -> Self {
        s.in_flight_add(1);
        InFlight(s)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight_add(-1);
    }
}

/// One SMSC connection, kept bound in the background. Dropping it stops the connection
/// (with an unbind); [`Smsc::shutdown`] does the same and waits for it.
pub struct Smsc {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Smsc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Smsc")
            .field("name", &self.shared.config.name)
            .field("bound", &self.is_bound())
            .finish_non_exhaustive()
    }
}

impl Smsc {
    /// Start connecting in the background (needs a Tokio runtime). Events the SMSC reports go
    /// to `sink`. The config is not validated here: call [`SmscConfig::validate`] first.
    pub fn start(config: SmscConfig, sink: Arc<dyn InboundSink>) -> Smsc {
        let window = config.window.max(1);
        let inbound = window.max(config.inbound_window);
        let shared = Arc::new(Shared {
            bucket: config.max_per_second.map(TokenBucket::new),
            reassembly: Mutex::new(Reassembler::new(
                config.mo_max_partial,
                config.mo_reassembly_timeout,
            )),
            config,
            sink,
            conn: Mutex::new(None),
            window: Arc::new(Semaphore::new(window)),
            in_flight: AtomicUsize::new(0),
            detail: Mutex::new("starting".into()),
            shutdown: watch::channel(false).0,
            inbound: Arc::new(Semaphore::new(inbound)),
            inbound_window: inbound,
            refused: AtomicU64::new(0),
            refused_warned_ms: AtomicI64::new(0),
        });
        shared.set_connected(None);
        shared.in_flight_add(0);
        let task = tokio::spawn(supervise(shared.clone()));
        Smsc {
            shared,
            task: Mutex::new(Some(task)),
        }
    }

    /// The route name.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// The configuration.
    pub fn config(&self) -> &SmscConfig {
        &self.shared.config
    }

    /// Whether a session is bound right now.
    pub fn is_bound(&self) -> bool {
        self.shared.current().is_some()
    }

    /// Whether this route can take submits now (bound, and not as a receiver only).
    pub fn can_submit(&self) -> bool {
        self.shared.config.bind.can_submit() && self.is_bound()
    }

    /// Submits waiting for their response.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// State for status pages.
    pub fn status(&self) -> RouteStatus {
        RouteStatus {
            name: self.shared.config.name.clone(),
            connected: self.is_bound(),
            in_flight: self.in_flight(),
            detail: Some(lock(&self.shared.detail).clone()),
        }
    }

    /// Submit one submit_sm and return the SMSC's message id. Waits for a window slot and the
    /// throughput limit, but never past `deadline`; the response wait is the smaller of
    /// `response_timeout` and what is left until `deadline`.
    pub async fn submit(&self, sm: Sm, deadline: Instant) -> Result<String, RequestError> {
        let r = self.submit_inner(sm, deadline).await;
        let outcome = match &r {
            Ok(_) => "ok",
            Err(RequestError::Status(status::ESME_RTHROTTLED | status::ESME_RMSGQFUL)) => {
                "throttled"
            }
            Err(e) if !e.is_transient() => "rejected",
            Err(RequestError::Timeout(_)) => "timeout",
            Err(RequestError::NotBound) => "not_bound",
            Err(RequestError::ConnectionLost) => "connection_lost",
            Err(_) => "transient",
        };
        metrics::counter!(
            "haven_smpp_submits_total",
            "route" => self.shared.config.name.clone(),
            "outcome" => outcome
        )
        .increment(1);
        r
    }

    async fn submit_inner(&self, sm: Sm, deadline: Instant) -> Result<String, RequestError> {
        let s = &self.shared;
        if !s.config.bind.can_submit() || s.current().is_none() {
            return Err(RequestError::NotBound);
        }
        let _permit =
            match tokio::time::timeout_at(deadline, s.window.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => return Err(RequestError::NotBound),
                Err(_) => return Err(RequestError::Timeout("a window slot")),
            };
        if let Some(bucket) = &s.bucket {
            match bucket.reserve(Instant::now(), deadline) {
                Some(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
                Some(_) => {}
                None => return Err(RequestError::Timeout("the throughput limit")),
            }
        }
        let conn = s.current().ok_or(RequestError::NotBound)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(RequestError::Timeout("the send deadline"));
        }
        let _in_flight = InFlight::new(s);
        let packet = conn
            .request(
                Pdu::SubmitSm(Box::new(sm)),
                s.config.response_timeout.min(remaining),
            )
            .await?;
        let st = packet.command_status;
        match packet.pdu {
            Pdu::SubmitSmResp(r) if st == status::ESME_ROK => {
                if r.message_id.is_empty() {
                    tracing::warn!(route = %s.config.name, seq = packet.sequence_number,
                        "submit_sm_resp without a message id: receipts cannot be matched");
                }
                Ok(r.message_id)
            }
            Pdu::SubmitSmResp(_) | Pdu::GenericNack => Err(RequestError::Status(if st == 0 {
                status::ESME_RSYSERR
            } else {
                st
            })),
            other => Err(RequestError::Protocol(format!(
                "{} in answer to submit_sm",
                other.name()
            ))),
        }
    }

    /// Ask the connection to unbind and stop, without waiting.
    pub fn begin_shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// Unbind and stop; waits (bounded by `response_timeout` plus a little) for the unbind.
    pub async fn shutdown(&self) {
        self.begin_shutdown();
        let task = lock(&self.task).take();
        if let Some(mut h) = task {
            let limit = self.shared.config.response_timeout + Duration::from_secs(2);
            if tokio::time::timeout(limit, &mut h).await.is_err() {
                h.abort();
            }
        }
    }
}

impl Drop for Smsc {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}

/// Why connecting or binding failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("connect timed out")]
    Timeout,
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Bind(#[from] BindError),
}

struct Live {
    reader: FrameReader<ReadHalf<Box<dyn Transport>>>,
    conn: Arc<Connection>,
    writer: JoinHandle<()>,
}

fn tls_connector(cfg: &SmscConfig) -> Result<tokio_rustls::TlsConnector, ConnectError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ConnectError::Tls(format!("reading ca_file: {e}")))?;
            for cert in certs {
                let cert = cert.map_err(|e| ConnectError::Tls(format!("ca_file: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ConnectError::Tls(format!("ca_file: {e}")))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(ConnectError::Tls(
            "no trust anchors (set ca_file for a private SMSC)".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn connect_and_bind(shared: &Shared) -> Result<Live, ConnectError> {
    let cfg = &shared.config;
    let tcp = tokio::time::timeout(
        cfg.response_timeout,
        TcpStream::connect((cfg.host.as_str(), cfg.port)),
    )
    .await
    .map_err(|_| ConnectError::Timeout)??;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Transport> = if cfg.tls {
        let connector = tls_connector(cfg)?;
        let name = cfg
            .tls_server_name
            .clone()
            .unwrap_or_else(|| cfg.host.clone());
        let server_name = rustls_pki_types::ServerName::try_from(name)
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        let tls = tokio::time::timeout(cfg.response_timeout, connector.connect(server_name, tcp))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (rd, wr) = tokio::io::split(stream);
    let (conn, writer) = Connection::spawn(cfg.name.clone(), cfg.bind, wr);
    let mut reader = FrameReader::new(rd);
    let params = BindParams {
        bind: cfg.bind,
        system_id: &cfg.system_id,
        password: &cfg.password,
        system_type: &cfg.system_type,
    };
    match session::bind(&conn, &mut reader, &params, cfg.response_timeout).await {
        Ok(smsc_id) => {
            tracing::info!(route = %cfg.name, bind = cfg.bind.as_str(), smsc_system_id = %smsc_id,
                tls = cfg.tls, "SMPP bound");
            Ok(Live {
                reader,
                conn,
                writer,
            })
        }
        Err(e) => {
            conn.close();
            stop_writer(writer).await;
            Err(e.into())
        }
    }
}

async fn supervise(shared: Arc<Shared>) {
    let cfg = &shared.config;
    let mut shutdown = shared.shutdown.subscribe();
    let mut backoff = Backoff::new(cfg.reconnect_min, cfg.reconnect_max);
    loop {
        if *shutdown.borrow() {
            break;
        }
        shared.set_detail(format!("connecting to {}:{}", cfg.host, cfg.port));
        let attempt = tokio::select! {
            r = connect_and_bind(&shared) => r,
            _ = session::until_true(&mut shutdown) => break,
        };
        let last = match attempt {
            Ok(live) => {
                backoff.reset();
                let why = run_session(&shared, live, &mut shutdown).await;
                if *shutdown.borrow() {
                    break;
                }
                tracing::warn!(route = %cfg.name, reason = %why, "SMPP session ended; reconnecting");
                format!("session ended: {why}")
            }
            Err(e) => {
                tracing::warn!(route = %cfg.name, error = %e, "SMPP connect/bind failed");
                format!("connect/bind failed: {e}")
            }
        };
        let delay = backoff.next_delay();
        shared.set_detail(format!("{last}; retrying in {} ms", delay.as_millis()));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = session::until_true(&mut shutdown) => break,
        }
    }
    shared.set_connected(None);
    shared.set_detail("stopped");
}

/// Give the writer a moment to flush (it stops once the connection is closed), then abort it:
/// a peer that stopped reading must not keep the task and socket alive.
async fn stop_writer(mut writer: JoinHandle<()>) {
    if tokio::time::timeout(Duration::from_secs(2), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

async fn wait_task<T>(slot: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match slot {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

async fn run_session(
    shared: &Arc<Shared>,
    live: Live,
    shutdown: &mut watch::Receiver<bool>,
) -> String {
    let Live {
        mut reader,
        conn,
        writer,
    } = live;
    let cfg = &shared.config;
    shared.set_connected(Some(conn.clone()));
    shared.set_detail(format!("bound ({})", cfg.bind.as_str()));
    let mut closed = conn.closed_watch();
    let mut next_probe = after(cfg.enquire_link_interval);
    let mut probe: Option<JoinHandle<Result<Packet, RequestError>>> = None;
    let mut unbind: Option<JoinHandle<Result<Packet, RequestError>>> = None;
    let reason = loop {
        tokio::select! {
            frame = reader.next() => match frame {
                Ok(Some(f)) => {
                    next_probe = after(cfg.enquire_link_interval);
                    if let Some(why) = handle_frame(shared, &conn, f).await {
                        break why;
                    }
                }
                Ok(None) => break "closed by the SMSC".to_string(),
                Err(e) => break e.to_string(),
            },
            _ = tokio::time::sleep_until(next_probe), if probe.is_none() && unbind.is_none() => {
                let c = conn.clone();
                let t = cfg.response_timeout;
                probe = Some(tokio::spawn(async move { c.request(Pdu::EnquireLink, t).await }));
                next_probe = after(cfg.enquire_link_interval);
            }
            r = wait_task(&mut probe) => {
                probe = None;
                match r {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => break format!("enquire_link failed: {e}"),
                    Err(e) => break format!("enquire_link task failed: {e}"),
                }
            }
            r = wait_task(&mut unbind) => {
                unbind = None;
                match r {
                    Ok(Ok(_)) => break "unbound".to_string(),
                    Ok(Err(e)) => break format!("unbind: {e}"),
                    Err(e) => break format!("unbind task failed: {e}"),
                }
            }
            _ = session::until_true(&mut closed) => break "connection closed".to_string(),
            _ = session::until_true(shutdown), if unbind.is_none() => {
                // Stop taking submits, then unbind while still reading (in-flight responses,
                // the unbind_resp).
                shared.set_connected(None);
                shared.set_detail("unbinding");
                let c = conn.clone();
                let t = cfg.response_timeout.min(Duration::from_secs(5));
                unbind = Some(tokio::spawn(async move { c.request(Pdu::Unbind, t).await }));
            }
        }
    };
    {
        let mut cur = lock(&shared.conn);
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn)) {
            *cur = None;
        }
    }
    shared.set_connected(None);
    conn.close();
    if let Some(p) = probe {
        p.abort();
    }
    if let Some(u) = unbind {
        u.abort();
    }
    stop_writer(writer).await;
    tracing::info!(route = %cfg.name, reason = %reason, "SMPP session closed");
    reason
}

/// Answer without waiting; `Some(reason)` when the session must end (the SMSC is not reading).
fn reply_now(conn: &Connection, packet: Packet) -> Option<String> {
    if conn.respond_now(packet) {
        None
    } else {
        Some("the SMSC stopped reading (write queue full)".into())
    }
}

fn nack(conn: &Connection, seq: u32, st: u32) -> Option<String> {
    let mut p = Packet::new(seq, Pdu::GenericNack);
    p.command_status = st;
    reply_now(conn, p)
}

/// Handle one PDU; `Some(reason)` ends the session.
async fn handle_frame(
    shared: &Arc<Shared>,
    conn: &Arc<Connection>,
    frame: Vec<u8>,
) -> Option<String> {
    let route = &shared.config.name;
    let header = match Header::parse(&frame) {
        Ok(h) => h,
        Err(e) => return Some(e.to_string()),
    };
    let seq = header.sequence_number;
    let packet = match Packet::decode(&frame) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(route = %route, command_id = format_args!("0x{:08X}", header.command_id),
                seq, error = %e, "undecodable PDU from the SMSC");
            if header.is_response() {
                conn.fail(seq, RequestError::Protocol(e.to_string()));
                return None;
            }
            return nack(conn, seq, e.status());
        }
    };
    let command_status = packet.command_status;
    match packet.pdu {
        Pdu::EnquireLink => {
            return reply_now(conn, Packet::new(seq, Pdu::EnquireLinkResp));
        }
        Pdu::Unbind => {
            let _ = reply_now(conn, Packet::new(seq, Pdu::UnbindResp));
            return Some("unbound by the SMSC".into());
        }
        Pdu::DeliverSm(sm) => {
            let Ok(permit) = shared.inbound.clone().try_acquire_owned() else {
                // More deliver_sm in progress than we handle at once: the SMSC overran its
                // window. Ask it to redeliver later.
                shared.refused_inbound();
                let mut resp = Packet::new(seq, Pdu::DeliverSmResp(SmResp::default()));
                resp.command_status = status::ESME_RX_T_APPN;
                return reply_now(conn, resp);
            };
            let shared = shared.clone();
            let conn = conn.clone();
            tokio::spawn(async move {
                let st = handle_deliver(&shared, *sm).await;
                let mut resp = Packet::new(seq, Pdu::DeliverSmResp(SmResp::default()));
                resp.command_status = st;
                if conn.respond(resp).await.is_err() {
                    tracing::debug!(route = %shared.config.name, seq,
                        "session closed before deliver_sm_resp; the SMSC will redeliver");
                }
                drop(permit);
            });
        }
        pdu if header.is_response() => {
            let name = pdu.name();
            let p = Packet {
                command_status,
                sequence_number: seq,
                pdu,
            };
            if !conn.complete(p) {
                tracing::debug!(route = %route, seq, command = name,
                    "response nobody waits for (arrived after its timeout?)");
            }
        }
        other => {
            tracing::debug!(route = %route, seq, command = other.name(), "unsupported request; generic_nack");
            return nack(conn, seq, status::ESME_RINVCMDID);
        }
    }
    None
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An SMPP address as Haven shows it: international numbers (TON 1) get a leading `+`.
fn display_addr(ton: u8, addr: &str) -> String {
    if ton == 1 && !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_digit()) {
        format!("+{addr}")
    } else {
        addr.to_string()
    }
}

async fn store(shared: &Shared, event: ChannelEvent) -> u32 {
    match shared.sink.receive(event).await {
        Ok(()) => status::ESME_ROK,
        Err(e) => {
            tracing::warn!(route = %shared.config.name, error = %e,
                "inbound event not stored; asking the SMSC to redeliver");
            status::ESME_RX_T_APPN
        }
    }
}

/// Handle one deliver_sm; returns the status for its deliver_sm_resp.
async fn handle_deliver(shared: &Shared, sm: Sm) -> u32 {
    let route = shared.config.name.clone();
    let at_ms = now_ms();
    if receipt::is_receipt(sm.esm_class) {
        return match receipt::from_deliver_sm(&sm) {
            Some(r) => {
                let event = ChannelEvent::Receipt {
                    channel: ChannelKind::Sms,
                    route,
                    provider_id: r.message_id,
                    state: r.state,
                    error_code: r.error_code,
                    at_ms,
                };
                store(shared, event).await
            }
            None => {
                tracing::warn!(route = %route, "delivery receipt naming no message; acknowledged and dropped");
                status::ESME_ROK
            }
        };
    }
    let from = display_addr(sm.source_addr_ton, &sm.source_addr);
    let to = display_addr(sm.dest_addr_ton, &sm.destination_addr);
    let content = sm.content();
    let (udh_concat, payload) = if sm.has_udh() {
        encoding::split_udh(content)
    } else {
        (None, content)
    };
    let concat = udh_concat.or_else(|| {
        let c = encoding::Concat {
            reference: sm.sar_msg_ref_num()?,
            total: sm.sar_total_segments()?,
            seq: sm.sar_segment_seqnum()?,
        };
        c.is_valid().then_some(c)
    });
    match concat {
        Some(c) if c.total > 1 => {
            let key = SetKey {
                from,
                to,
                reference: c.reference,
                total: c.total,
            };
            let now = std::time::Instant::now();
            let added =
                lock(&shared.reassembly).add(key, c.seq, sm.data_coding, payload.to_vec(), now);
            match added {
                Added::Pending | Added::Invalid => status::ESME_ROK,
                Added::Complete(done) => {
                    let event = ChannelEvent::Inbound {
                        channel: ChannelKind::Sms,
                        route,
                        from: done.key.from.clone(),
                        to: done.key.to.clone(),
                        text: done.text(),
                        at_ms,
                    };
                    let st = store(shared, event).await;
                    if st != status::ESME_ROK {
                        lock(&shared.reassembly).restore(done, std::time::Instant::now());
                    }
                    st
                }
            }
        }
        _ => {
            let event = ChannelEvent::Inbound {
                channel: ChannelKind::Sms,
                route,
                from,
                to,
                text: encoding::decode_text(sm.data_coding, payload),
                at_ms,
            };
            store(shared, event).await
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_bounds() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let mut last_cap = Duration::ZERO;
        for i in 0..12 {
            let d = b.next_delay();
            let cap = Duration::from_secs(1u64 << i.min(5)).min(Duration::from_secs(30));
            assert!(d >= Duration::from_secs(1) && d <= cap, "{i}: {d:?}");
            assert!(d >= cap / 2 || d == Duration::from_secs(1));
            last_cap = cap;
        }
        assert_eq!(last_cap, Duration::from_secs(30));
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_paces_and_respects_deadline() {
        let b = TokenBucket::new(10); // burst 1
        let start = Instant::now();
        let far = start + Duration::from_secs(60);
        assert_eq!(b.reserve(start, far), Some(Duration::ZERO));
        let w = b.reserve(start, far).unwrap();
        assert!(w >= Duration::from_millis(99) && w <= Duration::from_millis(101));
        // a third would wait ~200 ms: not within a 150 ms deadline, and nothing is reserved
        assert_eq!(b.reserve(start, start + Duration::from_millis(150)), None);
        let w = b.reserve(start, far).unwrap();
        assert!(w >= Duration::from_millis(199) && w <= Duration::from_millis(201));
        // after a second, the balance is back to the burst
        let later = start + Duration::from_secs(1);
        assert_eq!(
            b.reserve(later, far + Duration::from_secs(1)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn config_validation() {
        let ok = SmscConfig {
            system_id: "haven".into(),
            password: "secret".into(),
            prefixes: vec!["+1".into(), "44".into()],
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        for bad in [
            SmscConfig {
                password: "123456789".into(),
                ..ok.clone()
            },
            SmscConfig {
                window: 0,
                ..ok.clone()
            },
            SmscConfig {
                prefixes: vec!["+1a".into()],
                ..ok.clone()
            },
            SmscConfig {
                reconnect_min: Duration::from_secs(60),
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(!format!("{ok:?}").contains("secret"));
    }

    #[test]
    fn addresses_for_display() {
        assert_eq!(display_addr(1, "14155550100"), "+14155550100");
        assert_eq!(display_addr(5, "Clinic"), "Clinic");
        assert_eq!(display_addr(0, "12345"), "12345");
    }
}
