//! `/v1/templates` (reviewed wording with `{{slots}}`) and `/v1/messaging-policy` (first
//! contact by template only, allowed link domains, quiet hours).

use super::PageParams;
use crate::extract::{ApiJson, ApiPath, ApiQuery, Auth};
use crate::problem::{Problem, ProblemBody};
use crate::{AppState, idempotency};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use haven_messaging::{MessagingPolicy, NewTemplate, QuietHours, Template};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateView {
    #[schema(example = "tpl_01jd3k2m4n5p6q7r8s9t0v1w2x")]
    pub id: String,
    pub account_id: String,
    #[schema(example = "appointment reminder")]
    pub name: String,
    #[schema(example = "sms")]
    pub channel: &'static str,
    #[schema(example = "en")]
    pub locale: Option<String>,
    pub subject: Option<String>,
    #[schema(example = "Hello {{name}}, your appointment is on {{date}}. Reply YES to confirm.")]
    pub text: String,
    pub html: Option<String>,
    /// Every slot the template has; a send must give a value for each.
    pub parameters: Vec<String>,
    /// `pending` (submitted, not yet usable), `approved` or `rejected`.
    #[schema(example = "pending")]
    pub status: &'static str,
    /// The reviewer's note (the reason, on rejection).
    pub review_note: Option<String>,
    /// The credential that reviewed it.
    pub reviewed_by: Option<String>,
    pub created_at: String,
    pub reviewed_at: Option<String>,
}

impl From<Template> for TemplateView {
    fn from(t: Template) -> Self {
        Self {
            id: t.id,
            account_id: t.account_id,
            name: t.name,
            channel: t.channel.as_str(),
            locale: t.locale,
            subject: t.subject,
            text: t.text,
            html: t.html,
            parameters: t.parameters,
            status: t.status.as_str(),
            review_note: t.review_note,
            reviewed_by: t.reviewed_by,
            created_at: haven_platform::clock::to_rfc3339(t.created_at_ms),
            reviewed_at: super::rfc3339(t.reviewed_at_ms),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateList {
    pub items: Vec<TemplateView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTemplate {
    /// One line, up to 100 characters.
    #[schema(example = "appointment reminder")]
    pub name: String,
    /// `sms` or `email`.
    #[schema(example = "sms")]
    pub channel: String,
    /// A language tag such as `en` or `es-MX`.
    pub locale: Option<String>,
    /// Email only, required there.
    pub subject: Option<String>,
    /// The wording, with `{{slot}}` parameters (`a-z`, `0-9`, `_`).
    #[schema(example = "Hello {{name}}, your appointment is on {{date}}. Reply YES to confirm.")]
    pub text: String,
    /// Email only.
    pub html: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewTemplate {
    /// Why (kept with the template; no PHI).
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TemplateListQuery {
    /// `pending`, `approved` or `rejected`.
    pub status: Option<String>,
    pub page_size: Option<u32>,
    pub cursor: Option<String>,
}

/// Submit a template for review. It is `pending` until a credential with `templates:admin`
/// approves it; only approved templates can be sent.
#[utoipa::path(post, path = "/v1/templates", tag = "templates", request_body = CreateTemplate,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe.")),
    responses((status = 201, description = "Submitted", body = TemplateView), (status = 401, description = "Not authenticated", body = ProblemBody),
        (status = 403, description = "Needs templates:write", body = ProblemBody), (status = 422, description = "Invalid", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn create_template(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    headers: HeaderMap,
    body: ApiJson<CreateTemplate>,
) -> Result<Response, Problem> {
    let b = body.value;
    let t = NewTemplate {
        name: b.name,
        channel: b.channel,
        locale: b.locale,
        subject: b.subject,
        text: b.text,
        html: b.html,
    };
    let meta = auth.meta();
    idempotency::once(
        &st,
        &auth.principal.account_id,
        &headers,
        "POST /v1/templates",
        &body.raw,
        StatusCode::CREATED,
        async {
            Ok(TemplateView::from(
                st.messaging
                    .create_template(&auth.principal, &meta, t)
                    .await?,
            ))
        },
    )
    .await
}

/// List the account's templates.
#[utoipa::path(get, path = "/v1/templates", tag = "templates", params(TemplateListQuery),
    responses((status = 200, description = "OK", body = TemplateList), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Needs templates:read", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_templates(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiQuery(q): ApiQuery<TemplateListQuery>,
) -> Result<Json<TemplateList>, Problem> {
    let page = PageParams {
        page_size: q.page_size,
        cursor: q.cursor,
    }
    .parse()?;
    let page = st
        .messaging
        .list_templates(&auth.principal, q.status.as_deref(), &page)
        .await?;
    Ok(Json(TemplateList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Get a template.
#[utoipa::path(get, path = "/v1/templates/{template_id}", tag = "templates", params(("template_id" = String, Path)),
    responses((status = 200, description = "OK", body = TemplateView), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_template(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TemplateView>, Problem> {
    Ok(Json(
        st.messaging
            .get_template(&auth.principal, &id)
            .await?
            .into(),
    ))
}

/// Delete a template: it can no longer be sent (messages already sent keep their text).
#[utoipa::path(delete, path = "/v1/templates/{template_id}", tag = "templates", params(("template_id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn delete_template(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, Problem> {
    st.messaging
        .delete_template(&auth.principal, &auth.meta(), &id)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn review(
    st: &AppState,
    auth: &Auth,
    id: &str,
    approve: bool,
    body: ReviewTemplate,
) -> Result<Json<TemplateView>, Problem> {
    Ok(Json(
        st.messaging
            .review_template(&auth.principal, &auth.meta(), id, approve, body.reason)
            .await?
            .into(),
    ))
}

/// Approve a pending template (needs `templates:admin`). Emits `template.approved`.
#[utoipa::path(post, path = "/v1/templates/{template_id}/approve", tag = "templates", params(("template_id" = String, Path)), request_body = ReviewTemplate,
    responses((status = 200, description = "Approved", body = TemplateView), (status = 403, description = "Needs templates:admin", body = ProblemBody),
        (status = 404, description = "Not found (or not yours)", body = ProblemBody), (status = 409, description = "Reviewed already", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn approve_template(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    body: ApiJson<ReviewTemplate>,
) -> Result<Json<TemplateView>, Problem> {
    review(&st, &auth, &id, true, body.value).await
}

/// Reject a pending template (needs `templates:admin`). Emits `template.rejected`.
#[utoipa::path(post, path = "/v1/templates/{template_id}/reject", tag = "templates", params(("template_id" = String, Path)), request_body = ReviewTemplate,
    responses((status = 200, description = "Rejected", body = TemplateView), (status = 403, description = "Needs templates:admin", body = ProblemBody),
        (status = 404, description = "Not found (or not yours)", body = ProblemBody), (status = 409, description = "Reviewed already", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn reject_template(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    body: ApiJson<ReviewTemplate>,
) -> Result<Json<TemplateView>, Problem> {
    review(&st, &auth, &id, false, body.value).await
}

/// Quiet hours: non-urgent messages accepted between `start` and `end` (the recipient's local
/// time) are held until `end`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursBody {
    #[schema(example = "21:00")]
    pub start: String,
    #[schema(example = "08:00")]
    pub end: String,
    /// The IANA time zone used when a message gives none for its recipient.
    #[schema(example = "America/New_York")]
    pub timezone: String,
}

/// An account's messaging policy.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    /// Free text only to recipients the account exchanged messages with before; the first
    /// message to anyone else must use an approved template.
    #[serde(default)]
    pub require_template_for_first_contact: bool,
    /// Every link in a message must point to one of these domains or their subdomains; `[]`
    /// allows no links; absent or null: links are not restricted.
    #[schema(example = json!(["clinic.example.org"]))]
    pub link_domains: Option<Vec<String>>,
    pub quiet_hours: Option<QuietHoursBody>,
}

impl From<MessagingPolicy> for PolicyBody {
    fn from(p: MessagingPolicy) -> Self {
        Self {
            require_template_for_first_contact: p.require_template_for_first_contact,
            link_domains: p.link_domains,
            quiet_hours: p.quiet_hours.map(|q| QuietHoursBody {
                start: q.start,
                end: q.end,
                timezone: q.timezone,
            }),
        }
    }
}

/// The account's messaging policy.
#[utoipa::path(get, path = "/v1/messaging-policy", tag = "messages",
    responses((status = 200, description = "OK", body = PolicyBody), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Needs messages:read", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_policy(
    State(st): State<Arc<AppState>>,
    auth: Auth,
) -> Result<Json<PolicyBody>, Problem> {
    Ok(Json(st.messaging.policy(&auth.principal).await?.into()))
}

/// Replace the account's messaging policy (needs `messages:admin`). It applies to messages
/// accepted from then on (on other nodes within 5 seconds).
#[utoipa::path(put, path = "/v1/messaging-policy", tag = "messages", request_body = PolicyBody,
    responses((status = 200, description = "Replaced", body = PolicyBody), (status = 401, description = "Not authenticated", body = ProblemBody),
        (status = 403, description = "Needs messages:admin", body = ProblemBody), (status = 422, description = "Invalid", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn put_policy(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    body: ApiJson<PolicyBody>,
) -> Result<Json<PolicyBody>, Problem> {
    let b = body.value;
    let policy = MessagingPolicy {
        require_template_for_first_contact: b.require_template_for_first_contact,
        link_domains: b.link_domains,
        quiet_hours: b.quiet_hours.map(|q| QuietHours {
            start: q.start,
            end: q.end,
            timezone: q.timezone,
        }),
    };
    Ok(Json(
        st.messaging
            .set_policy(&auth.principal, &auth.meta(), policy)
            .await?
            .into(),
    ))
}
