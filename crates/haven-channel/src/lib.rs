//! The channel interface. A channel takes one outbound message and hands it to a carrier
//! (an SMSC over SMPP, a relay over SMTP, …), and reports what comes back later (delivery
//! receipts, mobile-originated messages, bounces) through an [`InboundSink`].
//!
//! The contract that makes the pipeline durable:
//! - [`Channel::send`] returns only once the carrier has taken the message (`submit_sm_resp`,
//!   SMTP `250` after `DATA`), or with an error that says whether a retry can help.
//! - A channel calls [`InboundSink::receive`] and acknowledges the carrier only after it
//!   returned `Ok` (the event is stored); on `Err` it asks the carrier to redeliver (SMPP
//!   `ESME_RX_T_APPN`), so nothing reported is lost when Haven stops mid-way.
//! - `Outbound::message_id` is stable across retries; channels whose protocol can carry it
//!   (email's `Message-ID`) use it so receivers can de-duplicate.
//!
//! Nothing here is logged with message content or addresses: both are PHI.

use std::fmt;
use std::time::Duration;

/// Which kind of channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    Sms,
    Email,
}

impl ChannelKind {
    pub const ALL: &'static [ChannelKind] = &[ChannelKind::Sms, ChannelKind::Email];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Sms => "sms",
            ChannelKind::Email => "email",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message to send. Addresses are already validated by the messaging domain (E.164 for
/// SMS, an address for email).
#[derive(Clone)]
pub struct Outbound {
    /// `msg_…`: stable across retries of the same message.
    pub message_id: String,
    pub account_id: String,
    pub to: String,
    pub from: String,
    /// Email only.
    pub subject: Option<String>,
    pub text: String,
    /// Email only.
    pub html: Option<String>,
    /// Ask the carrier for a delivery receipt.
    pub want_receipt: bool,
    /// Milliseconds since the epoch after which the carrier should give up (SMPP validity).
    pub expires_at_ms: Option<i64>,
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Addresses and content are PHI: never in Debug output.
        f.debug_struct("Outbound")
            .field("message_id", &self.message_id)
            .field("account_id", &self.account_id)
            .finish_non_exhaustive()
    }
}

/// What a carrier answered when it took a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The route (SMSC connection name, relay name) that took it.
    pub route: String,
    /// The carrier's id for each part, in order (one for email; one per SMS segment).
    pub provider_ids: Vec<String>,
}

/// Why a send did not go through.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// Nothing took the message; a later try may succeed (no route bound, throttled, timeout,
    /// temporary carrier error). The message stays queued.
    #[error("temporary failure: {reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The carrier refused this message for good (invalid destination, rejected sender, 5xx).
    #[error("rejected ({code}): {reason}")]
    Rejected { code: String, reason: String },
}

/// The carrier's final (or intermediate) word on a message it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptState {
    /// Still on its way (SMPP `ENROUTE`, `ACCEPTD`); not final.
    EnRoute,
    Delivered,
    /// The carrier gave up before it could deliver (SMPP `EXPIRED`).
    Expired,
    /// Could not be delivered (SMPP `UNDELIV`, `DELETED`, email bounce).
    Failed,
    /// Refused by the carrier or the handset's network (SMPP `REJECTD`).
    Rejected,
    /// The carrier does not know (SMPP `UNKNOWN`).
    Unknown,
}

impl ReceiptState {
    pub fn is_final(self) -> bool {
        !matches!(self, ReceiptState::EnRoute | ReceiptState::Unknown)
    }
}

/// Something a carrier reported.
#[derive(Clone)]
pub enum ChannelEvent {
    /// A delivery receipt for a part the carrier took earlier.
    Receipt {
        channel: ChannelKind,
        route: String,
        /// As returned in [`Submitted::provider_ids`].
        provider_id: String,
        state: ReceiptState,
        /// The carrier's error code, as it gave it (SMPP `err:` field, SMTP reply code).
        error_code: Option<String>,
        at_ms: i64,
    },
    /// A message from a patient (mobile-originated SMS, a reply email), reassembled when it
    /// came in several parts.
    Inbound {
        channel: ChannelKind,
        route: String,
        from: String,
        to: String,
        text: String,
        at_ms: i64,
    },
}

impl fmt::Debug for ChannelEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelEvent::Receipt {
                channel,
                route,
                provider_id,
                state,
                error_code,
                at_ms,
            } => f
                .debug_struct("Receipt")
                .field("channel", channel)
                .field("route", route)
                .field("provider_id", provider_id)
                .field("state", state)
                .field("error_code", error_code)
                .field("at_ms", at_ms)
                .finish(),
            ChannelEvent::Inbound {
                channel,
                route,
                at_ms,
                ..
            } => f
                .debug_struct("Inbound")
                .field("channel", channel)
                .field("route", route)
                .field("at_ms", at_ms)
                .finish_non_exhaustive(),
        }
    }
}

/// Where a channel hands what carriers report. `Ok` means stored durably.
#[async_trait::async_trait]
pub trait InboundSink: Send + Sync {
    async fn receive(&self, event: ChannelEvent) -> Result<(), SinkError>;
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("could not store the event: {0}")]
pub struct SinkError(pub String);

/// The state of one carrier connection, for `/v1/…/status` pages and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteStatus {
    pub name: String,
    pub connected: bool,
    pub in_flight: usize,
    pub detail: Option<String>,
}

/// A delivery channel.
#[async_trait::async_trait]
pub trait Channel: Send + Sync {
    fn kind(&self) -> ChannelKind;

    /// Hand one message to a carrier. See the crate docs for the contract.
    async fn send(&self, message: &Outbound) -> Result<Submitted, SendError>;

    /// The carrier connections and their state.
    fn routes(&self) -> Vec<RouteStatus>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in ChannelKind::ALL {
            assert_eq!(ChannelKind::parse(k.as_str()), Some(*k));
        }
        assert_eq!(ChannelKind::parse("fax"), None);
    }

    #[test]
    fn debug_never_shows_content() {
        let m = Outbound {
            message_id: "msg_1".into(),
            account_id: "acc_1".into(),
            to: "+14155550100".into(),
            from: "+14155550199".into(),
            subject: None,
            text: "MARKER-TEXT".into(),
            html: None,
            want_receipt: true,
            expires_at_ms: None,
        };
        let s = format!("{m:?}");
        assert!(!s.contains("MARKER") && !s.contains("4155550100"));
        let e = ChannelEvent::Inbound {
            channel: ChannelKind::Sms,
            route: "r".into(),
            from: "+14155550100".into(),
            to: "+1".into(),
            text: "MARKER".into(),
            at_ms: 0,
        };
        assert!(!format!("{e:?}").contains("MARKER"));
    }

    #[test]
    fn finality() {
        assert!(ReceiptState::Delivered.is_final());
        assert!(!ReceiptState::EnRoute.is_final());
    }
}
