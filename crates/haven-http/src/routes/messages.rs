//! `/v1/messages` and `/v1/senders`: send SMS and email, follow their delivery, read replies.
//! Addresses and content are PHI: stored only encrypted, every read audited.

use super::{PageParams, rfc3339};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Auth};
use crate::problem::{Problem, ProblemBody};
use crate::{AppState, idempotency};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use haven_messaging::{Message, MessageQuery, SendRequest, Sender};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    #[schema(example = "msg_01jd3k2m4n5p6q7r8s9t0v1w2x")]
    pub id: String,
    pub account_id: String,
    /// `outbound` or `inbound`.
    #[schema(example = "outbound")]
    pub direction: &'static str,
    /// `sms` or `email`.
    #[schema(example = "sms")]
    pub channel: &'static str,
    /// `accepted` → `submitted` → `delivered` | `failed` | `expired` | `rejected`; inbound
    /// messages are `received`.
    #[schema(example = "accepted")]
    pub status: &'static str,
    #[schema(example = "+14155550100")]
    pub to: Option<String>,
    #[schema(example = "+14155550199")]
    pub from: Option<String>,
    pub subject: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
    pub client_ref: Option<String>,
    /// The contact the message is to (or from), when the address matched one; the message is
    /// then encrypted under that patient's own key.
    pub contact_id: Option<String>,
    /// True once the patient's key was destroyed: addresses and content are gone.
    pub erased: bool,
    /// Segments (SMS) the carrier took.
    pub parts: i64,
    pub attempts: i64,
    /// The carrier's error code on failure or rejection.
    pub error_code: Option<String>,
    pub error_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub submitted_at: Option<String>,
    pub final_at: Option<String>,
    /// Outbound: when Haven stops trying (the time to live).
    pub expires_at: Option<String>,
    /// The approved template the content was rendered from.
    pub template_id: Option<String>,
    /// Held by the account's quiet hours until then (the time to live counts from then).
    pub send_after: Option<String>,
}

impl From<Message> for MessageView {
    fn from(m: Message) -> Self {
        let (subject, text, html, template_id) = match m.content {
            Some(c) => (c.subject, Some(c.text), c.html, c.template_id),
            None => (None, None, None, None),
        };
        let outbound = m.direction == haven_messaging::Direction::Outbound;
        Self {
            id: m.id,
            account_id: m.account_id,
            direction: m.direction.as_str(),
            channel: m.channel.as_str(),
            status: m.status.as_str(),
            to: m.to,
            from: m.from,
            subject,
            text,
            html,
            client_ref: m.client_ref,
            contact_id: m.contact_id,
            erased: m.erased,
            parts: m.parts,
            attempts: m.attempts,
            error_code: m.error_code,
            error_reason: m.error_reason,
            created_at: haven_platform::clock::to_rfc3339(m.created_at_ms),
            updated_at: haven_platform::clock::to_rfc3339(m.updated_at_ms),
            submitted_at: rfc3339(m.submitted_at_ms),
            final_at: rfc3339(m.final_at_ms),
            expires_at: rfc3339(outbound.then_some(m.expires_at_ms)),
            template_id,
            send_after: rfc3339(m.send_after_ms),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageList {
    pub items: Vec<MessageView>,
    pub next_cursor: Option<String>,
}

/// A message to send. Its `Debug` shows the channel only: the rest is PHI.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// `sms` or `email`.
    #[schema(example = "sms")]
    pub channel: String,
    /// E.164 for SMS; an address for email.
    #[schema(example = "+14155550100")]
    pub to: String,
    /// A sender registered to the account for this channel.
    #[schema(example = "+14155550199")]
    pub from: String,
    /// Email only; required there.
    pub subject: Option<String>,
    /// The text: up to 1,600 characters for SMS (split into segments as needed, GSM 03.38 or
    /// UCS-2 chosen per message); up to 256 KiB for email. Required unless `template` is given.
    #[schema(example = "Your appointment is tomorrow at 10:00. Reply YES to confirm.")]
    pub text: Option<String>,
    /// Email only: an HTML alternative to `text`.
    pub html: Option<String>,
    /// Your own reference, up to 100 characters, returned with the message and filterable.
    pub client_ref: Option<String>,
    /// How long Haven keeps trying to hand the message to a carrier, and how long the carrier
    /// may keep trying: 60 to 604800 seconds (default 86400).
    pub ttl_seconds: Option<u64>,
    /// Ask the carrier for a delivery receipt. SMS: default true. Email: default false; true
    /// asks the relay for a success notice (DSN) when bounce handling is configured.
    pub receipt: Option<bool>,
    /// `transactional` (default: reminders, codes, results; sent unless the recipient opted
    /// out) or `marketing` (needs the recipient's recorded opt-in).
    #[schema(example = "transactional")]
    pub purpose: Option<String>,
    /// An approved template of the account instead of `text`, `subject` and `html`.
    pub template: Option<TemplateUse>,
    /// Urgent messages (codes, care alerts) are sent during the account's quiet hours.
    pub urgent: Option<bool>,
    /// The recipient's IANA time zone, for quiet hours; default: the policy's.
    #[schema(example = "America/Chicago")]
    pub timezone: Option<String>,
}

impl std::fmt::Debug for SendMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendMessage")
            .field("channel", &self.channel)
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

/// Which template to send, and its parameters. Its `Debug` leaves the parameters out.
#[derive(Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateUse {
    #[schema(example = "tpl_01jd3k2m4n5p6q7r8s9t0v1w2x")]
    pub id: String,
    /// A value for every `{{slot}}` of the template (up to 500 characters each); in HTML they
    /// are escaped.
    #[serde(default)]
    pub parameters: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for TemplateUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateUse")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SendMessage {
    pub fn into_request(self) -> SendRequest {
        let (template_id, parameters) = match self.template {
            Some(t) => (Some(t.id), Some(t.parameters)),
            None => (None, None),
        };
        SendRequest {
            channel: self.channel,
            to: self.to,
            from: self.from,
            subject: self.subject,
            text: self.text,
            html: self.html,
            client_ref: self.client_ref,
            ttl_seconds: self.ttl_seconds,
            receipt: self.receipt,
            purpose: self.purpose,
            template_id,
            parameters,
            urgent: self.urgent,
            timezone: self.timezone,
            system_template: None,
            secret: None,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MessageListQuery {
    /// `accepted`, `submitted`, `delivered`, `failed`, `expired`, `rejected` or `received`.
    pub status: Option<String>,
    /// `sms` or `email`.
    pub channel: Option<String>,
    /// `outbound` or `inbound`.
    pub direction: Option<String>,
    /// Exact match on your reference.
    pub client_ref: Option<String>,
    pub page_size: Option<u32>,
    pub cursor: Option<String>,
}

/// Send a message. `202` means it is durably stored and will be sent: it survives restarts
/// and carrier outages and is retried until its time to live runs out. Status changes arrive
/// as `message.*` webhooks.
#[utoipa::path(post, path = "/v1/messages", tag = "messages", request_body = SendMessage,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: a replay returns the first response and sends nothing.")),
    responses((status = 202, description = "Accepted", body = MessageView), (status = 400, description = "Malformed request", body = ProblemBody), (status = 401, description = "Not authenticated", body = ProblemBody),
        (status = 403, description = "Needs messages:write", body = ProblemBody), (status = 422, description = "Invalid, unregistered sender, or channel not configured", body = ProblemBody),
        (status = 429, description = "Over the account's send rate (see Retry-After); nothing accepted", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn send_message(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    headers: HeaderMap,
    body: ApiJson<SendMessage>,
) -> Result<Response, Problem> {
    let req = body.value.into_request();
    let meta = auth.meta();
    idempotency::once(
        &st,
        &auth.principal.account_id,
        &headers,
        "POST /v1/messages",
        &body.raw,
        StatusCode::ACCEPTED,
        async {
            Ok(MessageView::from(
                st.messaging.send(&auth.principal, &meta, req).await?,
            ))
        },
    )
    .await
}

/// List the account's messages, newest last, optionally filtered.
#[utoipa::path(get, path = "/v1/messages", tag = "messages", params(MessageListQuery),
    responses((status = 200, description = "OK", body = MessageList), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Needs messages:read", body = ProblemBody),
        (status = 422, description = "Unknown filter value", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_messages(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiQuery(q): ApiQuery<MessageListQuery>,
) -> Result<Json<MessageList>, Problem> {
    let page = PageParams {
        page_size: q.page_size,
        cursor: q.cursor,
    }
    .parse()?;
    let query = MessageQuery {
        status: q.status,
        channel: q.channel,
        direction: q.direction,
        client_ref: q.client_ref,
    };
    let page = st
        .messaging
        .list(&auth.principal, &auth.meta(), &query, &page)
        .await?;
    Ok(Json(MessageList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Get a message, outbound or inbound.
#[utoipa::path(get, path = "/v1/messages/{message_id}", tag = "messages", params(("message_id" = String, Path)),
    responses((status = 200, description = "OK", body = MessageView), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_message(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<MessageView>, Problem> {
    Ok(Json(
        st.messaging
            .get(&auth.principal, &auth.meta(), &id)
            .await?
            .into(),
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SenderView {
    #[schema(example = "snd_01jd3k2m4n5p6q7r8s9t0v1w2x")]
    pub id: String,
    pub account_id: String,
    #[schema(example = "sms")]
    pub channel: &'static str,
    /// E.164 number, alphanumeric sender id, or email address.
    #[schema(example = "+14155550199")]
    pub address: String,
    pub created_at: String,
}

impl From<Sender> for SenderView {
    fn from(s: Sender) -> Self {
        Self {
            id: s.id,
            account_id: s.account_id,
            channel: s.channel.as_str(),
            address: s.address,
            created_at: haven_platform::clock::to_rfc3339(s.created_at_ms),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SenderList {
    pub items: Vec<SenderView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSender {
    /// `sms` or `email`.
    #[schema(example = "sms")]
    pub channel: String,
    /// For SMS an E.164 number or an alphanumeric sender id (1 to 11 characters); for email
    /// an address.
    #[schema(example = "+14155550199")]
    pub address: String,
}

/// Register a sender. A number or address belongs to one account: inbound messages to it are
/// routed to that account.
#[utoipa::path(post, path = "/v1/senders", tag = "senders", request_body = CreateSender,
    responses((status = 201, description = "Registered", body = SenderView), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Needs senders:write", body = ProblemBody),
        (status = 409, description = "Registered already", body = ProblemBody), (status = 422, description = "Valid JSON that breaks a rule", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn create_sender(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    body: ApiJson<CreateSender>,
) -> Result<Response, Problem> {
    let b = body.value;
    let s = st
        .messaging
        .register_sender(&auth.principal, &auth.meta(), &b.channel, &b.address)
        .await?;
    Ok((StatusCode::CREATED, Json(SenderView::from(s))).into_response())
}

/// List the account's senders.
#[utoipa::path(get, path = "/v1/senders", tag = "senders", params(PageParams),
    responses((status = 200, description = "OK", body = SenderList), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Needs senders:read", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_senders(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Json<SenderList>, Problem> {
    let page = st
        .messaging
        .list_senders(&auth.principal, &q.parse()?)
        .await?;
    Ok(Json(SenderList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Get a sender.
#[utoipa::path(get, path = "/v1/senders/{sender_id}", tag = "senders", params(("sender_id" = String, Path)),
    responses((status = 200, description = "OK", body = SenderView), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_sender(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SenderView>, Problem> {
    Ok(Json(
        st.messaging.get_sender(&auth.principal, &id).await?.into(),
    ))
}

/// Remove a sender: nothing more can be sent from it, and inbound messages to it are no
/// longer routed to the account.
#[utoipa::path(delete, path = "/v1/senders/{sender_id}", tag = "senders", params(("sender_id" = String, Path)),
    responses((status = 204, description = "Removed"), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn delete_sender(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, Problem> {
    st.messaging
        .delete_sender(&auth.principal, &auth.meta(), &id)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConsentView {
    #[schema(example = "sms")]
    pub channel: &'static str,
    /// `transactional` or `marketing`.
    #[schema(example = "marketing")]
    pub purpose: &'static str,
    /// `opted_in` or `opted_out`.
    #[schema(example = "opted_in")]
    pub status: &'static str,
    /// How it was given: `api`, `web_form`, `paper`, `verbal`, `import`, or `keyword` (a STOP
    /// or START reply).
    pub method: String,
    /// Where it came from (a form version, a document reference); for keywords, the inbound
    /// message.
    pub source: Option<String>,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConsentList {
    pub items: Vec<ConsentView>,
}

fn consent_list(items: Vec<haven_messaging::Consent>) -> ConsentList {
    ConsentList {
        items: items
            .into_iter()
            .map(|c| ConsentView {
                channel: c.channel.as_str(),
                purpose: c.purpose.as_str(),
                status: if c.opted_in { "opted_in" } else { "opted_out" },
                method: c.method,
                source: c.source,
                updated_at: haven_platform::clock::to_rfc3339(c.updated_at_ms),
            })
            .collect(),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordConsent {
    /// `sms` or `email`.
    #[schema(example = "sms")]
    pub channel: String,
    /// The recipient: E.164 for SMS, an address for email. Stored only as a keyed blind index.
    #[schema(example = "+14155550100")]
    pub address: String,
    /// `transactional` or `marketing`.
    #[schema(example = "marketing")]
    pub purpose: String,
    /// `opted_in` or `opted_out`.
    #[schema(example = "opted_in")]
    pub status: String,
    /// `api` (default), `web_form`, `paper`, `verbal`, `import`.
    pub method: Option<String>,
    /// One line, up to 200 characters, without PHI: where the consent was given.
    #[schema(example = "patient portal sign-up form v3")]
    pub source: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchConsents {
    #[schema(example = "sms")]
    pub channel: String,
    #[schema(example = "+14155550100")]
    pub address: String,
}

/// Record a recipient's opt-in or opt-out for a purpose. Returns every record of the address
/// on that channel.
#[utoipa::path(post, path = "/v1/consents", tag = "messages", request_body = RecordConsent,
    responses((status = 200, description = "Recorded", body = ConsentList), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Needs messages:write", body = ProblemBody),
        (status = 422, description = "Valid JSON that breaks a rule", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn record_consent(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    body: ApiJson<RecordConsent>,
) -> Result<Json<ConsentList>, Problem> {
    let b = body.value;
    let req = haven_messaging::ConsentRequest {
        channel: b.channel,
        address: b.address,
        purpose: b.purpose,
        status: b.status,
        method: b.method,
        source: b.source,
    };
    Ok(Json(consent_list(
        st.messaging
            .record_consent(&auth.principal, &auth.meta(), req)
            .await?,
    )))
}

/// The consent records of one address (looked up in the body, so the address stays out of
/// URLs and logs).
#[utoipa::path(post, path = "/v1/consents/search", tag = "messages", request_body = SearchConsents,
    responses((status = 200, description = "OK", body = ConsentList), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Needs messages:read", body = ProblemBody),
        (status = 422, description = "Valid JSON that breaks a rule", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn search_consents(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    body: ApiJson<SearchConsents>,
) -> Result<Json<ConsentList>, Problem> {
    let b = body.value;
    Ok(Json(consent_list(
        st.messaging
            .consents(&auth.principal, &b.channel, &b.address)
            .await?,
    )))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_phi() {
        let m: SendMessage = serde_json::from_value(serde_json::json!({
            "channel": "sms", "to": "+14155550100", "from": "+14155550199",
            "text": "MARKER-TEXT", "client_ref": "MARKER-REF",
            "template": {"id": "tpl_1", "parameters": {"name": "MARKER-NAME"}}
        }))
        .unwrap();
        let shown = format!("{m:?}");
        assert!(shown.contains("sms") && shown.contains("tpl_1"), "{shown}");
        for phi in ["4155550100", "MARKER"] {
            assert!(!shown.contains(phi), "{shown}");
        }
    }
}
