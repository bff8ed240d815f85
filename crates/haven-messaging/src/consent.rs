//! Consent and opt-out: records per recipient address, channel and purpose, checked before
//! every send, and the inbound keywords (STOP, START, HELP and their translations) that change
//! them and are answered automatically.

use crate::store::ConsentRow;
use crate::{Messaging, MessagingError, MessagingResult};
use haven_channel::ChannelKind;
use haven_identity::{FieldError, Principal, RequestMeta, Right, Scope};
use haven_platform::audit::{AuditAction, AuditEvent, Outcome};
use haven_platform::clock::now_ms;
use haven_platform::events::OutboxEvent;
use serde_json::json;

const WRITE: Scope = Scope::new("messages", Right::Write);
const READ: Scope = Scope::new("messages", Right::Read);
const MAX_SOURCE: usize = 200;

/// Why a message is sent. Transactional messages (reminders, codes, results) go unless the
/// recipient opted out; marketing needs a recorded opt-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Transactional,
    Marketing,
}

impl Purpose {
    pub const ALL: &'static [Purpose] = &[Purpose::Transactional, Purpose::Marketing];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transactional => "transactional",
            Self::Marketing => "marketing",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|p| p.as_str() == s)
    }
}

/// Inbound keywords and the answers to them, per language. A message whose whole text is one
/// of the words (any case, surrounding spaces and punctuation ignored) is a keyword.
#[derive(Debug, Clone)]
pub struct KeywordSettings {
    pub stop: Vec<String>,
    pub start: Vec<String>,
    pub help: Vec<String>,
    pub stop_reply: String,
    pub start_reply: String,
    pub help_reply: String,
}

impl Default for KeywordSettings {
    fn default() -> Self {
        let v = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect();
        Self {
            stop: v(&[
                "STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "ARRET",
                "ARRÊT", "BAJA", "ALTO",
            ]),
            start: v(&["START", "UNSTOP", "SUBSCRIBE", "DEMARRER", "ALTA"]),
            help: v(&["HELP", "INFO", "AIDE", "AYUDA"]),
            stop_reply: "You are unsubscribed and will get no more messages from this number. Reply START to subscribe again.".into(),
            start_reply: "You are subscribed again. Reply STOP to unsubscribe.".into(),
            help_reply: "Reply STOP to unsubscribe, START to subscribe again. For help, contact your care team.".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    Stop,
    Start,
    Help,
}

/// The keyword a message is, if any.
pub fn keyword(text: &str, k: &KeywordSettings) -> Option<Keyword> {
    let word = text
        .trim()
        .trim_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace())
        .to_uppercase();
    if word.is_empty() || word.contains(char::is_whitespace) {
        return None;
    }
    let is = |list: &[String]| list.iter().any(|w| w.to_uppercase() == word);
    if is(&k.stop) {
        Some(Keyword::Stop)
    } else if is(&k.start) {
        Some(Keyword::Start)
    } else if is(&k.help) {
        Some(Keyword::Help)
    } else {
        None
    }
}

/// A consent record as shown.
#[derive(Debug, Clone)]
pub struct Consent {
    pub channel: ChannelKind,
    pub purpose: Purpose,
    pub opted_in: bool,
    pub method: String,
    pub source: Option<String>,
    pub updated_at_ms: i64,
}

/// A consent change asked for through the API.
#[derive(Debug, Clone)]
pub struct ConsentRequest {
    pub channel: String,
    pub address: String,
    pub purpose: String,
    /// `opted_in` or `opted_out`.
    pub status: String,
    pub method: Option<String>,
    pub source: Option<String>,
}

const METHODS: &[&str] = &["api", "web_form", "paper", "verbal", "keyword", "import"];

fn consent_event(account_id: &str, r: &ConsentRow, message_id: Option<&str>) -> OutboxEvent {
    OutboxEvent::new(
        "consent.changed",
        account_id,
        json!({
            "channel": r.channel,
            "purpose": r.purpose,
            "status": r.status,
            "method": r.method,
            "message_id": message_id,
        }),
    )
}

fn view(r: &ConsentRow) -> MessagingResult<Consent> {
    let bad =
        || haven_platform::store::StoreError::Backend("stored consent is not readable".into());
    Ok(Consent {
        channel: ChannelKind::parse(&r.channel).ok_or_else(bad)?,
        purpose: Purpose::parse(&r.purpose).ok_or_else(bad)?,
        opted_in: r.status == "opted_in",
        method: r.method.clone(),
        source: r.source.clone(),
        updated_at_ms: r.updated_at_ms,
    })
}

impl Messaging {
    pub(crate) async fn address_index(
        &self,
        account_id: &str,
        kind: ChannelKind,
        address: &str,
    ) -> MessagingResult<Vec<u8>> {
        let field = match kind {
            ChannelKind::Sms => "consent:sms",
            ChannelKind::Email => "consent:email",
        };
        let value = match kind {
            ChannelKind::Email => address.to_lowercase(),
            ChannelKind::Sms => address.to_owned(),
        };
        Ok(self.vault.blind_index(account_id, field, &value).await?)
    }

    /// Refuses a send the recipient has not consented to.
    pub(crate) async fn check_consent(
        &self,
        account_id: &str,
        kind: ChannelKind,
        bidx: &[u8],
        purpose: Purpose,
    ) -> MessagingResult<()> {
        let records = self
            .store
            .consents_for(account_id, kind.as_str(), bidx)
            .await?;
        let status = |p: Purpose| {
            records
                .iter()
                .find(|r| r.purpose == p.as_str())
                .map(|r| r.status.as_str())
        };
        if status(purpose) == Some("opted_out")
            || status(Purpose::Transactional) == Some("opted_out")
        {
            metrics::counter!("haven_messages_refused_total", "reason" => "opted_out").increment(1);
            return Err(MessagingError::OptedOut);
        }
        if purpose == Purpose::Marketing && status(Purpose::Marketing) != Some("opted_in") {
            metrics::counter!("haven_messages_refused_total", "reason" => "no_consent")
                .increment(1);
            return Err(MessagingError::ConsentRequired);
        }
        Ok(())
    }

    /// Records an opt-in or opt-out (from a web form, on paper, by phone…).
    pub async fn record_consent(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        req: ConsentRequest,
    ) -> MessagingResult<Vec<Consent>> {
        p.require(WRITE)?;
        let mut errors = Vec::new();
        let kind = crate::model::channel("channel", &req.channel, &mut errors);
        let address = kind
            .map(|k| crate::model::recipient(k, "address", &req.address, &mut errors))
            .unwrap_or_default();
        let purpose = Purpose::parse(&req.purpose);
        if purpose.is_none() {
            errors.push(FieldError::new(
                "purpose",
                "must be transactional or marketing",
            ));
        }
        if !["opted_in", "opted_out"].contains(&req.status.as_str()) {
            errors.push(FieldError::new("status", "must be opted_in or opted_out"));
        }
        let method = req.method.unwrap_or_else(|| "api".to_owned());
        if !METHODS.contains(&method.as_str()) {
            errors.push(FieldError::new(
                "method",
                format!("must be one of: {}", METHODS.join(", ")),
            ));
        }
        if req
            .source
            .as_ref()
            .is_some_and(|s| s.chars().count() > MAX_SOURCE || s.contains(['\r', '\n']))
        {
            errors.push(FieldError::new(
                "source",
                format!("must be one line of at most {MAX_SOURCE} characters"),
            ));
        }
        let (Some(kind), Some(purpose)) = (kind, purpose) else {
            return Err(MessagingError::Invalid(errors));
        };
        if !errors.is_empty() {
            return Err(MessagingError::Invalid(errors));
        }
        let bidx = self.address_index(&p.account_id, kind, &address).await?;
        let row = ConsentRow {
            account_id: p.account_id.clone(),
            channel: kind.as_str().to_owned(),
            address_bidx: bidx.clone(),
            purpose: purpose.as_str().to_owned(),
            status: req.status,
            method,
            source: req.source,
            updated_at_ms: now_ms(),
        };
        let event = consent_event(&p.account_id, &row, None);
        self.store
            .upsert_consents(std::slice::from_ref(&row), &[event])
            .await?;
        self.events_written();
        self.audit
            .record(
                AuditEvent::new(
                    AuditAction::ConsentRecorded,
                    Outcome::Success,
                    p.actor(meta),
                )
                .resource("consent", kind.as_str()),
            )
            .await;
        self.consents_of(&p.account_id, kind, &bidx).await
    }

    async fn consents_of(
        &self,
        account_id: &str,
        kind: ChannelKind,
        bidx: &[u8],
    ) -> MessagingResult<Vec<Consent>> {
        self.store
            .consents_for(account_id, kind.as_str(), bidx)
            .await?
            .iter()
            .map(view)
            .collect()
    }

    /// The consent records of one address.
    pub async fn consents(
        &self,
        p: &Principal,
        channel: &str,
        address: &str,
    ) -> MessagingResult<Vec<Consent>> {
        p.require(READ)?;
        let mut errors = Vec::new();
        let kind = crate::model::channel("channel", channel, &mut errors);
        let address = kind
            .map(|k| crate::model::recipient(k, "address", address, &mut errors))
            .unwrap_or_default();
        let Some(kind) = kind.filter(|_| errors.is_empty()) else {
            return Err(MessagingError::Invalid(errors));
        };
        let bidx = self.address_index(&p.account_id, kind, &address).await?;
        self.consents_of(&p.account_id, kind, &bidx).await
    }

    /// Acts on a keyword received from `patient` at the account's `sender` address: updates
    /// consent and answers from the same address.
    pub(crate) async fn on_keyword(
        &self,
        account_id: &str,
        kind: ChannelKind,
        sender_address: &str,
        patient: &str,
        word: Keyword,
        inbound_id: &str,
    ) -> MessagingResult<()> {
        let k = &self.keywords;
        let now = now_ms();
        let bidx = self.address_index(account_id, kind, patient).await?;
        let row = |purpose: Purpose, status: &str| ConsentRow {
            account_id: account_id.to_owned(),
            channel: kind.as_str().to_owned(),
            address_bidx: bidx.clone(),
            purpose: purpose.as_str().to_owned(),
            status: status.to_owned(),
            method: "keyword".to_owned(),
            source: Some(format!("inbound {inbound_id}")),
            updated_at_ms: now,
        };
        let (rows, reply) = match word {
            Keyword::Stop => (
                vec![
                    row(Purpose::Transactional, "opted_out"),
                    row(Purpose::Marketing, "opted_out"),
                ],
                &k.stop_reply,
            ),
            // START lifts the opt-out; marketing still needs its own opt-in.
            Keyword::Start => (
                vec![row(Purpose::Transactional, "opted_in")],
                &k.start_reply,
            ),
            Keyword::Help => (Vec::new(), &k.help_reply),
        };
        if !rows.is_empty() {
            let events: Vec<_> = rows
                .iter()
                .map(|r| consent_event(account_id, r, Some(inbound_id)))
                .collect();
            self.store.upsert_consents(&rows, &events).await?;
            metrics::counter!("haven_consent_keywords_total", "keyword" => format!("{word:?}").to_lowercase())
                .increment(1);
        }
        if !reply.trim().is_empty() {
            self.auto_reply(account_id, kind, sender_address, patient, reply)
                .await?;
        }
        self.events_written();
        Ok(())
    }

    /// An answer Haven sends by itself (keywords): queued like any message, from the address
    /// the patient wrote to, never refused for consent (it confirms the opt-out).
    async fn auto_reply(
        &self,
        account_id: &str,
        kind: ChannelKind,
        from: &str,
        to: &str,
        text: &str,
    ) -> MessagingResult<()> {
        let v = crate::model::ValidSend {
            channel: kind,
            to: to.to_owned(),
            from: from.to_owned(),
            content: crate::model::Content {
                subject: (kind == ChannelKind::Email).then(|| "Your subscription".to_owned()),
                text: text.to_owned(),
                html: None,
                template_id: None,
                secret: None,
            },
            client_ref: None,
            ttl_seconds: crate::model::DEFAULT_TTL_SECONDS,
            receipt: true,
            purpose: Purpose::Transactional,
            template_id: None,
            // It answers the patient at once, whatever the hour: they just wrote.
            urgent: true,
            timezone: None,
        };
        let id = haven_platform::id::new_id(crate::model::MESSAGE_PREFIX);
        let mut row = self.sealed_row(account_id, None, id, &v).await?;
        row.peer_bidx = Some(self.address_index(account_id, kind, to).await?);
        self.writer.submit((row, None)).await?;
        self.wake_sender.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_whole_messages_in_any_case() {
        let k = KeywordSettings::default();
        assert_eq!(keyword(" stop ", &k), Some(Keyword::Stop));
        assert_eq!(keyword("Stop.", &k), Some(Keyword::Stop));
        assert_eq!(keyword("arrêt", &k), Some(Keyword::Stop));
        assert_eq!(keyword("START", &k), Some(Keyword::Start));
        assert_eq!(keyword("help!", &k), Some(Keyword::Help));
        assert_eq!(keyword("please stop texting", &k), None);
        assert_eq!(keyword("YES", &k), None);
        assert_eq!(keyword("", &k), None);
    }

    #[test]
    fn purposes_round_trip() {
        for p in Purpose::ALL {
            assert_eq!(Purpose::parse(p.as_str()), Some(*p));
        }
    }
}
