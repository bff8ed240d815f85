//! SMS over SMPP 3.4: Haven acts as an ESME towards one or more SMSCs.
//!
//! - [`pdu`]: the wire codec (hostile-input safe, capped at [`pdu::MAX_PDU_LEN`]).
//! - [`encoding`]: GSM 03.38 / UCS-2, segmentation, concatenation UDHs.
//! - [`receipt`]: delivery receipt parsing.
//! - [`session`] and [`client`]: one SMSC connection ([`Smsc`]), kept bound, with a window,
//!   a throughput limit, enquire_link and reconnects.
//! - [`SmsChannel`]: several SMSCs behind [`haven_channel::Channel`], routed by destination
//!   prefix with failover.
//!
//! ## Delivery semantics
//!
//! `send` is **at-least-once**. A message is split into parts and each part is submitted in
//! order. If part *k > 1* fails transiently after earlier parts were taken, `send` returns
//! [`SendError::Transient`] and the caller retries the *whole* message later, so the handset
//! may see the earlier parts twice (under a new concatenation reference). A submit whose
//! response timed out may also have been taken by the SMSC. Before giving up on a later part
//! that was throttled (`ESME_RTHROTTLED`, `ESME_RMSGQFUL`), `send` retries it on the same
//! route with a short backoff inside the send deadline, which makes that case rare.
//!
//! A *first* part refused with `ESME_RTHROTTLED` is not retried inside `send`: the next
//! matching route is tried, and when none takes it, `send` returns `Transient` with a
//! `retry_after` of one second.
//!
//! Inbound: receipts and single-part messages are acknowledged (`deliver_sm_resp`) only
//! after [`InboundSink::receive`] returned `Ok`, else with `ESME_RX_T_APPN` so the SMSC
//! redelivers. For concatenated messages, the parts before the last are acknowledged when
//! buffered (in memory, up to `mo_reassembly_timeout`); the part that completes the message
//! is acknowledged only once the whole text is stored, and when storing fails the parts stay
//! buffered so the redelivered part completes it again.
//!
//! Nothing is logged with addresses or message text (PHI), nor the bind password.
//!
//! ## Metrics (via the `metrics` facade)
//!
//! - `haven_smpp_submits_total{route, outcome}` (counter), one per submit_sm: `outcome` is
//!   `ok`, `rejected`, `throttled`, `timeout`, `not_bound`, `connection_lost` or `transient`.
//! - `haven_smpp_connected{route}` (gauge): 1 while bound.
//! - `haven_smpp_in_flight{route}` (gauge): submits awaiting their response.
//!
//! ## Tests
//!
//! `tests/smsc.rs` drives `tests/js/smsc.js`, an SMSC simulator on node-smpp (see its header
//! for the CLI and control API); `tests/peer.rs` uses a scripted misbehaving peer;
//! `tests/props.rs` holds the property tests of the codec and encodings.

pub mod client;
pub mod encoding;
pub mod pdu;
pub mod reassembly;
pub mod receipt;
pub mod session;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use haven_channel::{
    Channel, ChannelKind, InboundSink, Outbound, RouteStatus, SendError, Submitted,
};
use tokio::time::Instant;

pub use client::{Backoff, ConfigError, Smsc, SmscConfig};
pub use pdu::BindType;
pub use session::RequestError;

use pdu::{Sm, status};

/// Channel-wide settings.
#[derive(Debug, Clone)]
pub struct ChannelOptions {
    /// The longest one `send` may take, waits for window slots and the throughput limit
    /// included (default 30 s). Callers may also drop the future earlier: everything is
    /// cancel-safe.
    pub send_timeout: Duration,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            send_timeout: Duration::from_secs(30),
        }
    }
}

/// SMS over one or more SMSC connections.
pub struct SmsChannel {
    smscs: Vec<Smsc>,
    options: ChannelOptions,
    next_ref: AtomicU32,
}

impl std::fmt::Debug for SmsChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsChannel")
            .field("routes", &self.smscs)
            .finish_non_exhaustive()
    }
}

impl SmsChannel {
    /// Start a connection task per SMSC (needs a Tokio runtime) with default options.
    /// Configs are used as given: validate them first with [`SmscConfig::validate`].
    pub fn start(configs: Vec<SmscConfig>, sink: Arc<dyn InboundSink>) -> SmsChannel {
        Self::start_with_options(configs, sink, ChannelOptions::default())
    }

    /// [`SmsChannel::start`] with explicit options.
    pub fn start_with_options(
        configs: Vec<SmscConfig>,
        sink: Arc<dyn InboundSink>,
        options: ChannelOptions,
    ) -> SmsChannel {
        let smscs = configs
            .into_iter()
            .map(|c| Smsc::start(c, sink.clone()))
            .collect();
        SmsChannel {
            smscs,
            options,
            next_ref: AtomicU32::new(u32::try_from(client::random_u64() & 0xFF).unwrap_or(0)),
        }
    }

    /// The connections, in configuration order.
    pub fn smscs(&self) -> &[Smsc] {
        &self.smscs
    }

    /// Whether at least one route can take submits now.
    pub fn any_bound(&self) -> bool {
        self.smscs.iter().any(Smsc::can_submit)
    }

    /// Unbind every connection and stop (bounded by each route's `response_timeout`).
    pub async fn shutdown(&self) {
        // Signal every route first so they unbind in parallel, then wait for each.
        for s in &self.smscs {
            s.begin_shutdown();
        }
        for s in &self.smscs {
            s.shutdown().await;
        }
    }

    /// Validate a set of route configurations: each one ([`SmscConfig::validate`]) and that
    /// route names are unique.
    pub fn validate(configs: &[SmscConfig]) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for c in configs {
            c.validate()?;
            if !seen.insert(c.name.as_str()) {
                return Err(ConfigError {
                    route: c.name.clone(),
                    problem: "route names must be unique".into(),
                });
            }
        }
        Ok(())
    }

    /// The routes serving `to`, best first: longest matching prefix, then configuration
    /// order; routes without prefixes come last.
    pub fn routes_for(&self, to: &str) -> Vec<&Smsc> {
        let dest = to.trim_start_matches('+');
        let mut scored: Vec<(i64, usize, &Smsc)> = self
            .smscs
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let p = &s.config().prefixes;
                if p.is_empty() {
                    return Some((-1, i, s));
                }
                p.iter()
                    .map(|p| p.trim_start_matches('+'))
                    .filter(|p| !p.is_empty() && dest.starts_with(p))
                    .map(|p| i64::try_from(p.len()).unwrap_or(i64::MAX))
                    .max()
                    .map(|len| (len, i, s))
            })
            .collect();
        scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.into_iter().map(|(_, _, s)| s).collect()
    }

    fn next_reference(&self) -> u8 {
        (self.next_ref.fetch_add(1, Ordering::Relaxed) & 0xFF) as u8
    }

    async fn send_via(
        &self,
        smsc: &Smsc,
        parts: &[Sm],
        deadline: Instant,
    ) -> Result<Vec<String>, PartFailure> {
        let mut ids = Vec::with_capacity(parts.len());
        for (i, sm) in parts.iter().enumerate() {
            let mut delay = Duration::from_millis(100);
            let id = loop {
                match smsc.submit(sm.clone(), deadline).await {
                    Ok(id) => break id,
                    Err(RequestError::Status(
                        s @ (status::ESME_RTHROTTLED | status::ESME_RMSGQFUL),
                    )) if i > 0 && Instant::now() + delay < deadline => {
                        tracing::debug!(route = %smsc.name(), part = i + 1,
                            status = %status::describe(s), "later part throttled; retrying on the same route");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(1));
                    }
                    Err(e) => return Err(PartFailure { index: i, error: e }),
                }
            };
            ids.push(id);
        }
        Ok(ids)
    }
}

struct PartFailure {
    index: usize,
    error: RequestError,
}

/// How a sender address goes on the wire: (ton, npi, address).
fn source_address(from: &str, cfg: &SmscConfig) -> Result<(u8, u8, String), SendError> {
    let reject = |reason: &str| SendError::Rejected {
        code: "INVALID_SOURCE".into(),
        reason: reason.into(),
    };
    if from.is_empty() {
        return Ok((0, 0, String::new()));
    }
    let digits = from.strip_prefix('+').unwrap_or(from);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if digits.len() > 20 {
            return Err(reject("the sender number is too long"));
        }
        return Ok((cfg.source_ton, cfg.source_npi, digits.to_string()));
    }
    if !from.is_ascii() || from.chars().any(|c| c.is_ascii_control()) || from.len() > 11 {
        return Err(reject(
            "an alphanumeric sender must be at most 11 printable ASCII characters",
        ));
    }
    Ok((5, 0, from.to_string()))
}

fn dest_address(to: &str, cfg: &SmscConfig) -> Result<(u8, u8, String), SendError> {
    let digits = to.strip_prefix('+').unwrap_or(to);
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SendError::Rejected {
            code: "INVALID_DESTINATION".into(),
            reason: "the destination is not an E.164 number".into(),
        });
    }
    Ok((cfg.dest_ton, cfg.dest_npi, digits.to_string()))
}

/// `expires_at_ms` as an absolute SMPP time (`YYMMDDhhmmsstnnp`, UTC: `…t00+`).
pub fn smpp_absolute_time(epoch_ms: i64) -> Option<String> {
    let nanos = i128::from(epoch_ms) * 1_000_000;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
    Some(format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}{}00+",
        t.year().rem_euclid(100),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond() / 100
    ))
}

fn epoch_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Build the submit_sm PDUs for a message on one route.
fn build_parts(message: &Outbound, cfg: &SmscConfig, reference: u8) -> Result<Vec<Sm>, SendError> {
    let seg = encoding::segment(&message.text).map_err(|e| SendError::Rejected {
        code: "MESSAGE_TOO_LONG".into(),
        reason: e.to_string(),
    })?;
    let (s_ton, s_npi, source) = source_address(&message.from, cfg)?;
    let (d_ton, d_npi, dest) = dest_address(&message.to, cfg)?;
    let validity_period = match message.expires_at_ms {
        None => String::new(),
        Some(at) => {
            if at <= epoch_ms_now() {
                return Err(SendError::Rejected {
                    code: "EXPIRED".into(),
                    reason: "the message expired before it could be sent".into(),
                });
            }
            smpp_absolute_time(at).unwrap_or_default()
        }
    };
    let data_coding = seg.alphabet.data_coding();
    Ok(encoding::build_short_messages(&seg, reference)
        .into_iter()
        .map(|(esm_bits, short_message)| Sm {
            service_type: cfg.service_type.clone(),
            source_addr_ton: s_ton,
            source_addr_npi: s_npi,
            source_addr: source.clone(),
            dest_addr_ton: d_ton,
            dest_addr_npi: d_npi,
            destination_addr: dest.clone(),
            esm_class: esm_bits,
            registered_delivery: u8::from(message.want_receipt),
            validity_period: validity_period.clone(),
            data_coding,
            short_message,
            ..Default::default()
        })
        .collect())
}

#[async_trait::async_trait]
impl Channel for SmsChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Sms
    }

    async fn send(&self, message: &Outbound) -> Result<Submitted, SendError> {
        let deadline = client::after(self.options.send_timeout);
        let routes = self.routes_for(&message.to);
        if routes.is_empty() {
            return Err(SendError::Rejected {
                code: "NO_ROUTE".into(),
                reason: "no SMSC route serves this destination".into(),
            });
        }
        let reference = self.next_reference();
        let mut reasons: Vec<String> = Vec::new();
        let mut throttled = false;
        for smsc in routes {
            if !smsc.can_submit() {
                reasons.push(format!("{}: not bound", smsc.name()));
                continue;
            }
            let parts = build_parts(message, smsc.config(), reference)?;
            match self.send_via(smsc, &parts, deadline).await {
                Ok(provider_ids) => {
                    tracing::debug!(route = %smsc.name(), message_id = %message.message_id,
                        parts = provider_ids.len(), "SMS submitted");
                    return Ok(Submitted {
                        route: smsc.name().to_string(),
                        provider_ids,
                    });
                }
                Err(PartFailure { index, error }) => {
                    if !error.is_transient() {
                        let code = match &error {
                            RequestError::Status(s) => status::code(*s),
                            _ => "ENCODE".into(),
                        };
                        tracing::info!(route = %smsc.name(), message_id = %message.message_id,
                            part = index + 1, error = %error, "SMS rejected");
                        return Err(SendError::Rejected {
                            code,
                            reason: format!("{}: {error}", smsc.name()),
                        });
                    }
                    if index > 0 {
                        tracing::warn!(route = %smsc.name(), message_id = %message.message_id,
                            part = index + 1, error = %error,
                            "later part failed after earlier parts went; the whole message will be retried");
                        return Err(SendError::Transient {
                            reason: format!(
                                "{}: part {} of {} failed: {error}",
                                smsc.name(),
                                index + 1,
                                parts.len()
                            ),
                            retry_after: None,
                        });
                    }
                    throttled |= matches!(
                        error,
                        RequestError::Status(status::ESME_RTHROTTLED | status::ESME_RMSGQFUL)
                    );
                    tracing::info!(route = %smsc.name(), message_id = %message.message_id,
                        error = %error, "route failed transiently; trying the next");
                    reasons.push(format!("{}: {error}", smsc.name()));
                    if Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        Err(SendError::Transient {
            reason: if reasons.is_empty() {
                "no route took the message".into()
            } else {
                reasons.join("; ")
            },
            retry_after: throttled.then_some(Duration::from_secs(1)),
        })
    }

    fn routes(&self) -> Vec<RouteStatus> {
        self.smscs.iter().map(Smsc::status).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn absolute_time_format() {
        // 2024-05-01T12:34:56.789Z
        assert_eq!(
            smpp_absolute_time(1_714_566_896_789).as_deref(),
            Some("240501123456700+")
        );
        assert_eq!(smpp_absolute_time(0).as_deref(), Some("700101000000000+"));
    }

    #[test]
    fn addresses() {
        let cfg = SmscConfig::default();
        assert_eq!(
            source_address("+14155550199", &cfg).unwrap(),
            (1, 1, "14155550199".into())
        );
        assert_eq!(
            source_address("Clinic", &cfg).unwrap(),
            (5, 0, "Clinic".into())
        );
        assert!(source_address("A very long clinic name", &cfg).is_err());
        assert_eq!(source_address("", &cfg).unwrap(), (0, 0, String::new()));
        assert_eq!(
            dest_address("+447700900123", &cfg).unwrap(),
            (1, 1, "447700900123".into())
        );
        assert!(dest_address("+44 7700", &cfg).is_err());
    }

    struct NullSink;
    #[async_trait::async_trait]
    impl InboundSink for NullSink {
        async fn receive(
            &self,
            _e: haven_channel::ChannelEvent,
        ) -> Result<(), haven_channel::SinkError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn routing_order() {
        let mk = |name: &str, prefixes: &[&str]| SmscConfig {
            name: name.into(),
            // nothing listens here: connects fail fast and retry in the background
            host: "127.0.0.1".into(),
            port: 1,
            prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let ch = SmsChannel::start(
            vec![
                mk("any", &[]),
                mk("na", &["+1"]),
                mk("ca-sk", &["+1306", "+1639"]),
                mk("uk", &["44"]),
                mk("na2", &["+1"]),
            ],
            Arc::new(NullSink),
        );
        let names = |to: &str| -> Vec<String> {
            ch.routes_for(to)
                .iter()
                .map(|s| s.name().to_string())
                .collect()
        };
        assert_eq!(names("+13065550100"), ["ca-sk", "na", "na2", "any"]);
        assert_eq!(names("+14155550100"), ["na", "na2", "any"]);
        assert_eq!(names("+447700900123"), ["uk", "any"]);
        assert_eq!(names("+33123456789"), ["any"]);
        let out = Outbound {
            message_id: "msg_1".into(),
            account_id: "acc_1".into(),
            to: "+14155550100".into(),
            from: "+14155550199".into(),
            subject: None,
            text: "hi".into(),
            html: None,
            want_receipt: false,
            expires_at_ms: None,
        };
        match ch.send(&out).await {
            Err(SendError::Transient { reason, .. }) => assert!(reason.contains("not bound")),
            other => panic!("{other:?}"),
        }
        assert_eq!(ch.routes().len(), 5);
        let mut cfgs = vec![mk("x", &[]), mk("y", &["+1"])];
        for c in &mut cfgs {
            c.system_id = "haven".into();
        }
        assert!(SmsChannel::validate(&cfgs).is_ok());
        cfgs[1].name = "x".into();
        assert!(SmsChannel::validate(&cfgs).is_err());
        assert!(ch.routes().iter().all(|r| !r.connected));
        ch.shutdown().await;
    }
}
