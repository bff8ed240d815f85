//! The messaging domain's types and the rules a request must meet.

use haven_channel::ChannelKind;
use haven_contacts::model as contact_rules;
use haven_identity::FieldError;
use serde::{Deserialize, Serialize};

pub const MESSAGE_PREFIX: &str = "msg";
pub const SENDER_PREFIX: &str = "snd";

/// Longest SMS text accepted (about 24 UCS-2 or 11 GSM segments).
pub const MAX_SMS_TEXT: usize = 1_600;
pub const MAX_EMAIL_TEXT: usize = 256 * 1024;
pub const MAX_EMAIL_HTML: usize = 512 * 1024;
pub const MAX_SUBJECT: usize = 250;
pub const MAX_CLIENT_REF: usize = 100;
pub const MIN_TTL_SECONDS: u64 = 60;
pub const MAX_TTL_SECONDS: u64 = 7 * 86_400;
pub const DEFAULT_TTL_SECONDS: u64 = 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "outbound" => Some(Self::Outbound),
            "inbound" => Some(Self::Inbound),
            _ => None,
        }
    }
}

/// accepted → submitted → delivered | failed | expired | rejected; inbound messages are
/// `received`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageStatus {
    Accepted,
    Submitted,
    Delivered,
    Failed,
    Expired,
    Rejected,
    Received,
}

impl MessageStatus {
    pub const ALL: &'static [Self] = &[
        Self::Accepted,
        Self::Submitted,
        Self::Delivered,
        Self::Failed,
        Self::Expired,
        Self::Rejected,
        Self::Received,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Submitted => "submitted",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Rejected => "rejected",
            Self::Received => "received",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.as_str() == s)
    }
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Delivered | Self::Failed | Self::Expired | Self::Rejected | Self::Received
        )
    }
    /// The event a change to this status emits.
    pub fn event_type(self) -> Option<&'static str> {
        match self {
            Self::Submitted => Some("message.submitted"),
            Self::Delivered => Some("message.delivered"),
            Self::Failed => Some("message.failed"),
            Self::Expired => Some("message.expired"),
            Self::Rejected => Some("message.rejected"),
            Self::Received => Some("message.inbound"),
            Self::Accepted => None,
        }
    }
}

/// What is sealed as a message's content.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Content {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// The approved template this was rendered from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    /// A one-time secret in the text (a verification code): never shown through the API, and
    /// removed from the stored content once a carrier took the message (or it ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// What replaces a one-time secret wherever it would be shown or kept.
pub const SECRET_MASK: &str = "••••••";

impl Content {
    /// The content with its secret masked (and no longer marked secret).
    pub fn masked(&self) -> Content {
        let Some(secret) = self.secret.as_deref().filter(|s| !s.is_empty()) else {
            return self.clone();
        };
        let mask = |t: &str| t.replace(secret, SECRET_MASK);
        Content {
            subject: self.subject.as_deref().map(mask),
            text: mask(&self.text),
            html: self.html.as_deref().map(mask),
            template_id: self.template_id.clone(),
            secret: None,
        }
    }
}

/// A send request as the API received it (and as a workflow keeps it, sealed, until its step).
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct SendRequest {
    pub channel: String,
    pub to: String,
    pub from: String,
    pub subject: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
    pub client_ref: Option<String>,
    pub ttl_seconds: Option<u64>,
    pub receipt: Option<bool>,
    /// `transactional` (default) or `marketing`.
    pub purpose: Option<String>,
    /// An approved template instead of `text` (and `subject`, `html`), with its parameters.
    pub template_id: Option<String>,
    pub parameters: Option<std::collections::BTreeMap<String, String>>,
    /// Urgent messages (codes, care alerts) are sent during the account's quiet hours.
    pub urgent: Option<bool>,
    /// The recipient's IANA time zone, for quiet hours (else the policy's own).
    pub timezone: Option<String>,
    /// Set by Haven's own services, never from the API: content Haven wrote itself (a
    /// verification code's localized text), which counts as an approved template.
    #[serde(default)]
    pub system_template: Option<String>,
    /// Set by Haven's own services: the one-time secret the text carries.
    #[serde(default)]
    pub secret: Option<String>,
}

impl std::fmt::Debug for SendRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendRequest")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

/// A send request that passed every rule: addresses normalized.
#[derive(Clone)]
pub struct ValidSend {
    pub channel: ChannelKind,
    pub to: String,
    pub from: String,
    pub content: Content,
    pub client_ref: Option<String>,
    pub ttl_seconds: u64,
    pub receipt: bool,
    pub purpose: crate::consent::Purpose,
    /// The approved template the content was rendered from.
    pub template_id: Option<String>,
    pub urgent: bool,
    /// The recipient's time zone as given (checked against the time zone database).
    pub timezone: Option<String>,
}

impl std::fmt::Debug for ValidSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidSend")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

fn no_line_breaks(field: &str, v: &str, errors: &mut Vec<FieldError>) {
    if v.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
        errors.push(FieldError::new(field, "must be one line"));
    }
}

/// A channel name the API accepts.
pub fn channel(field: &str, raw: &str, errors: &mut Vec<FieldError>) -> Option<ChannelKind> {
    let k = ChannelKind::parse(raw);
    if k.is_none() {
        errors.push(FieldError::new(field, "must be one of: sms, email"));
    }
    k
}

/// An SMS sender: an E.164 number, or an alphanumeric sender id of 1 to 11 characters
/// (letters, digits, space) with at least one letter.
pub fn sms_sender(field: &str, raw: &str, errors: &mut Vec<FieldError>) -> String {
    let v = raw.trim();
    if v.starts_with('+') {
        return contact_rules::phone_number(field, v, errors);
    }
    let ok = (1..=11).contains(&v.chars().count())
        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ')
        && v.chars().any(|c| c.is_ascii_alphabetic());
    if !ok {
        errors.push(FieldError::new(
            field,
            "must be an E.164 number or an alphanumeric sender id of at most 11 characters",
        ));
    }
    v.to_owned()
}

/// A sender address for a channel, normalized.
pub fn sender_address(
    kind: ChannelKind,
    field: &str,
    raw: &str,
    errors: &mut Vec<FieldError>,
) -> String {
    match kind {
        ChannelKind::Sms => sms_sender(field, raw, errors),
        ChannelKind::Email => contact_rules::email(field, raw, errors),
    }
}

/// A recipient address for a channel, normalized.
pub fn recipient(
    kind: ChannelKind,
    field: &str,
    raw: &str,
    errors: &mut Vec<FieldError>,
) -> String {
    match kind {
        ChannelKind::Sms => contact_rules::phone_number(field, raw, errors),
        ChannelKind::Email => contact_rules::email(field, raw, errors),
    }
}

/// Checks a send request. Registration of the sender is checked by the service.
pub fn validate_send(req: SendRequest) -> Result<ValidSend, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Some(kind) = channel("channel", &req.channel, &mut errors) else {
        return Err(errors);
    };
    let to = recipient(kind, "to", &req.to, &mut errors);
    let from = sender_address(kind, "from", &req.from, &mut errors);
    let text = req.text.unwrap_or_default();
    match kind {
        ChannelKind::Sms => {
            if text.is_empty() {
                errors.push(FieldError::new("text", "is required"));
            } else if text.chars().count() > MAX_SMS_TEXT {
                errors.push(FieldError::new(
                    "text",
                    format!("must be at most {MAX_SMS_TEXT} characters"),
                ));
            }
            if req.subject.is_some() {
                errors.push(FieldError::new("subject", "is for email only"));
            }
            if req.html.is_some() {
                errors.push(FieldError::new("html", "is for email only"));
            }
        }
        ChannelKind::Email => {
            match &req.subject {
                None => errors.push(FieldError::new("subject", "is required for email")),
                Some(s) if s.trim().is_empty() => {
                    errors.push(FieldError::new("subject", "must not be empty"))
                }
                Some(s) if s.chars().count() > MAX_SUBJECT => errors.push(FieldError::new(
                    "subject",
                    format!("must be at most {MAX_SUBJECT} characters"),
                )),
                Some(s) => no_line_breaks("subject", s, &mut errors),
            }
            if text.is_empty() {
                errors.push(FieldError::new("text", "is required"));
            } else if text.len() > MAX_EMAIL_TEXT {
                errors.push(FieldError::new(
                    "text",
                    format!("must be at most {MAX_EMAIL_TEXT} bytes"),
                ));
            }
            if req.html.as_ref().is_some_and(|h| h.len() > MAX_EMAIL_HTML) {
                errors.push(FieldError::new(
                    "html",
                    format!("must be at most {MAX_EMAIL_HTML} bytes"),
                ));
            }
        }
    }
    if text.contains('\0') {
        errors.push(FieldError::new("text", "must not contain NUL characters"));
    }
    if let Some(r) = &req.client_ref {
        if r.is_empty() || r.chars().count() > MAX_CLIENT_REF {
            errors.push(FieldError::new(
                "client_ref",
                format!("must be 1 to {MAX_CLIENT_REF} characters"),
            ));
        }
        no_line_breaks("client_ref", r, &mut errors);
    }
    let ttl = req.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
    if !(MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&ttl) {
        errors.push(FieldError::new(
            "ttl_seconds",
            format!("must be between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS}"),
        ));
    }
    let purpose = match req.purpose.as_deref() {
        None => crate::consent::Purpose::Transactional,
        Some(p) => crate::consent::Purpose::parse(p).unwrap_or_else(|| {
            errors.push(FieldError::new(
                "purpose",
                "must be transactional or marketing",
            ));
            crate::consent::Purpose::Transactional
        }),
    };
    if let Some(tz) = &req.timezone
        && crate::policy::time_zone(tz).is_none()
    {
        errors.push(FieldError::new(
            "timezone",
            "must be an IANA time zone such as America/New_York",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ValidSend {
        template_id: req
            .template_id
            .clone()
            .or_else(|| req.system_template.clone()),
        urgent: req.urgent.unwrap_or(false),
        timezone: req.timezone,
        purpose,
        channel: kind,
        to,
        from,
        content: Content {
            subject: req.subject,
            text,
            html: req.html,
            template_id: req
                .template_id
                .clone()
                .or_else(|| req.system_template.clone()),
            secret: req.secret,
        },
        client_ref: req.client_ref,
        ttl_seconds: ttl,
        // Email success notices double the relay's mail: only when asked for.
        receipt: req.receipt.unwrap_or(kind == ChannelKind::Sms),
    })
}

/// A registered sender.
#[derive(Debug, Clone)]
pub struct Sender {
    pub id: String,
    pub account_id: String,
    pub channel: ChannelKind,
    pub address: String,
    pub created_at_ms: i64,
}

/// A message as shown to its account. Content fields are `None` once the patient's key was
/// destroyed (`erased`).
#[derive(Clone)]
pub struct Message {
    pub id: String,
    pub account_id: String,
    pub direction: Direction,
    pub channel: ChannelKind,
    pub status: MessageStatus,
    pub to: Option<String>,
    pub from: Option<String>,
    pub content: Option<Content>,
    pub client_ref: Option<String>,
    pub contact_id: Option<String>,
    pub erased: bool,
    pub parts: i64,
    pub attempts: i64,
    pub error_code: Option<String>,
    pub error_reason: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub submitted_at_ms: Option<i64>,
    pub final_at_ms: Option<i64>,
    pub expires_at_ms: i64,
    /// Held (quiet hours) until then.
    pub send_after_ms: Option<i64>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Filters for listing.
#[derive(Debug, Clone, Default)]
pub struct MessageQuery {
    pub status: Option<String>,
    pub channel: Option<String>,
    pub direction: Option<String>,
    pub client_ref: Option<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sms(to: &str, from: &str, text: &str) -> SendRequest {
        SendRequest {
            channel: "sms".into(),
            to: to.into(),
            from: from.into(),
            text: Some(text.into()),
            ..Default::default()
        }
    }

    #[test]
    fn sms_rules() {
        assert!(validate_send(sms("+14155550100", "+14155550199", "hi")).is_ok());
        assert!(validate_send(sms("+14155550100", "CLINIC", "hi")).is_ok());
        let e = validate_send(sms("0155", "TOO LONG SENDER", "")).unwrap_err();
        let fields: Vec<_> = e.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["to", "from", "text"]);
        let long = "x".repeat(MAX_SMS_TEXT + 1);
        assert!(validate_send(sms("+14155550100", "CLINIC", &long)).is_err());
    }

    #[test]
    fn email_rules() {
        let mut r = SendRequest {
            channel: "email".into(),
            to: "Pat@Example.ORG".into(),
            from: "clinic@example.org".into(),
            text: Some("hello".into()),
            ..Default::default()
        };
        assert!(validate_send(r.clone()).is_err(), "subject required");
        r.subject = Some("Reminder\r\nBcc: x@y.z".into());
        assert!(
            validate_send(r.clone()).is_err(),
            "header injection refused"
        );
        r.subject = Some("Reminder".into());
        let v = validate_send(r.clone()).unwrap();
        assert_eq!(v.to, "Pat@example.org");
        assert!(
            !v.receipt,
            "email asks for success notices only when told to"
        );
        r.receipt = Some(true);
        assert!(validate_send(r).unwrap().receipt);
        assert_eq!(v.ttl_seconds, DEFAULT_TTL_SECONDS);
    }

    #[test]
    fn unknown_channel_and_ttl() {
        let mut r = sms("+14155550100", "CLINIC", "hi");
        r.ttl_seconds = Some(5);
        assert_eq!(validate_send(r).unwrap_err()[0].field, "ttl_seconds");
        let mut r = sms("+14155550100", "CLINIC", "hi");
        r.channel = "pigeon".into();
        assert_eq!(validate_send(r).unwrap_err()[0].field, "channel");
    }

    #[test]
    fn statuses_round_trip() {
        for s in MessageStatus::ALL {
            assert_eq!(MessageStatus::parse(s.as_str()), Some(*s));
        }
    }
}
