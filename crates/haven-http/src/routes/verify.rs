//! `/v1/verify`: one-time codes over SMS and email, with fail-over between channels.

use crate::extract::{ApiJson, ApiPath, Auth};
use crate::problem::{Problem, ProblemBody};
use crate::{AppState, idempotency};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::response::Response;
use haven_verify::{BlockedPrefix, Channel, StartRequest, Verification, VerifyPolicy};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyChannel {
    /// `sms` or `email`.
    #[schema(example = "sms")]
    pub channel: String,
    /// E.164 for SMS, an address for email.
    #[schema(example = "+14155550100")]
    pub to: String,
    /// A sender registered to the account on that channel.
    #[schema(example = "+14155550199")]
    pub from: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartVerification {
    /// Named in the message, with a warning never to share the code (1 to 30 characters).
    #[schema(example = "Clinic")]
    pub brand: String,
    /// 1 to 3 channels, tried in order: each sends a new code (the previous one stops working)
    /// after `channel_timeout_seconds`, or at once with `POST /v1/verify/{id}/next`.
    pub workflow: Vec<VerifyChannel>,
    /// `en` (default), `es`, `fr`, `de` (regional tags such as `es-MX` use their language;
    /// others fall back to English).
    #[schema(example = "en")]
    pub locale: Option<String>,
    /// 4 to 10 digits (default 6).
    pub code_length: Option<u32>,
    /// How long each code works: 60 to 3600 seconds (default 300).
    pub expiry_seconds: Option<u64>,
    /// Wait before the next channel: 15 to 900 seconds (default 60), shorter than the expiry.
    pub channel_timeout_seconds: Option<u64>,
    /// Your app's domain: the SMS then ends with `@domain #code`, which iOS and Android offer
    /// to fill in on that domain only.
    #[schema(example = "app.clinic.example.org")]
    pub app_domain: Option<String>,
    /// The end user's IP address (the patient's, not your server's): counted against the
    /// per-IP velocity limit. Stored only as a keyed blind index.
    #[schema(example = "203.0.113.7")]
    pub client_ip: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyStepView {
    pub index: i64,
    #[schema(example = "sms")]
    pub channel: String,
    /// `pending`, `sending`, `sent` or `skipped` (see `reason`).
    #[schema(example = "sent")]
    pub status: String,
    pub reason: Option<String>,
    /// The message that carried the code (its text shows the code masked).
    pub message_id: Option<String>,
    pub sent_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerificationView {
    #[schema(example = "ver_01jd3k2m4n5p6q7r8s9t0v1w2x")]
    pub id: String,
    pub account_id: String,
    /// `pending`, `completed`, `failed` (too many wrong codes, or no channel could be sent),
    /// `expired`, `cancelled`, `superseded` (a newer verification to the same recipient).
    #[schema(example = "pending")]
    pub status: String,
    pub brand: String,
    pub locale: String,
    pub code_length: i64,
    pub current_step: i64,
    pub steps: Vec<VerifyStepView>,
    pub attempts: i64,
    pub max_attempts: i64,
    /// When the current code stops working.
    pub expires_at: String,
    /// When the next channel is tried, while pending.
    pub next_channel_at: Option<String>,
    pub created_at: String,
    pub final_at: Option<String>,
}

impl From<Verification> for VerificationView {
    fn from(v: Verification) -> Self {
        Self {
            id: v.id,
            account_id: v.account_id,
            status: v.status,
            brand: v.brand,
            locale: v.locale,
            code_length: v.code_length,
            current_step: v.current_step,
            steps: v
                .steps
                .into_iter()
                .map(|s| VerifyStepView {
                    index: s.step_index,
                    channel: s.channel,
                    message_id: s.sent_at_ms.is_some().then_some(s.message_id),
                    status: s.status,
                    reason: s.reason,
                    sent_at: super::rfc3339(s.sent_at_ms),
                })
                .collect(),
            attempts: v.attempts,
            max_attempts: v.max_attempts,
            expires_at: haven_platform::clock::to_rfc3339(v.expires_at_ms),
            next_channel_at: super::rfc3339(v.next_step_at_ms),
            created_at: haven_platform::clock::to_rfc3339(v.created_at_ms),
            final_at: super::rfc3339(v.final_at_ms),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckCode {
    /// The digits the patient typed.
    #[schema(example = "482913")]
    pub code: String,
}

/// Start a verification: a new code goes out on the first channel. Needs `verify:write`.
/// A pending verification to the same recipient is superseded (its code stops working).
#[utoipa::path(post, path = "/v1/verify", tag = "verify", request_body = StartVerification,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: a replay returns the first response and sends nothing.")),
    responses((status = 202, description = "Started; the code is on its way", body = VerificationView), (status = 401, description = "Not authenticated", body = ProblemBody),
        (status = 403, description = "Needs verify:write", body = ProblemBody), (status = 422, description = "Invalid, unregistered sender, recipient opted out", body = ProblemBody),
        (status = 429, description = "Too many verifications to this recipient (see Retry-After)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn start_verification(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    headers: HeaderMap,
    body: ApiJson<StartVerification>,
) -> Result<Response, Problem> {
    let b = body.value;
    let req = StartRequest {
        brand: b.brand,
        workflow: b
            .workflow
            .into_iter()
            .map(|c| Channel {
                channel: c.channel,
                to: c.to,
                from: c.from,
            })
            .collect(),
        locale: b.locale,
        code_length: b.code_length,
        expiry_seconds: b.expiry_seconds,
        channel_timeout_seconds: b.channel_timeout_seconds,
        app_domain: b.app_domain,
        client_ip: b.client_ip,
    };
    let meta = auth.meta();
    idempotency::once(
        &st,
        &auth.principal.account_id,
        &headers,
        "POST /v1/verify",
        &body.raw,
        StatusCode::ACCEPTED,
        async {
            Ok(VerificationView::from(
                st.verify.start(&auth.principal, &meta, req).await?,
            ))
        },
    )
    .await
}

/// Get a verification.
#[utoipa::path(get, path = "/v1/verify/{verification_id}", tag = "verify", params(("verification_id" = String, Path)),
    responses((status = 200, description = "OK", body = VerificationView), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_verification(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<VerificationView>, Problem> {
    Ok(Json(st.verify.get(&auth.principal, &id).await?.into()))
}

/// Check a code. `200` with `status: completed` when it matches (a code works once); a wrong
/// code is `422 /problems/code-mismatch` with `attempts_remaining`, and the last wrong one
/// fails the verification.
#[utoipa::path(post, path = "/v1/verify/{verification_id}/check", tag = "verify", params(("verification_id" = String, Path)), request_body = CheckCode,
    responses((status = 200, description = "Completed", body = VerificationView), (status = 404, description = "Not found (or not yours)", body = ProblemBody),
        (status = 409, description = "Not pending any more", body = ProblemBody), (status = 410, description = "The code expired", body = ProblemBody),
        (status = 422, description = "Wrong code", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn check_code(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    body: ApiJson<CheckCode>,
) -> Result<Json<VerificationView>, Problem> {
    Ok(Json(
        st.verify
            .check(&auth.principal, &auth.meta(), &id, &body.value.code)
            .await?
            .into(),
    ))
}

/// Cancel a pending verification: its code stops working.
#[utoipa::path(post, path = "/v1/verify/{verification_id}/cancel", tag = "verify", params(("verification_id" = String, Path)),
    responses((status = 200, description = "Cancelled", body = VerificationView), (status = 404, description = "Not found (or not yours)", body = ProblemBody),
        (status = 409, description = "Not pending any more", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn cancel_verification(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<VerificationView>, Problem> {
    Ok(Json(
        st.verify
            .cancel(&auth.principal, &auth.meta(), &id)
            .await?
            .into(),
    ))
}

/// Send a new code through the next channel now (the current code stops working).
#[utoipa::path(post, path = "/v1/verify/{verification_id}/next", tag = "verify", params(("verification_id" = String, Path)),
    responses((status = 200, description = "Sent", body = VerificationView), (status = 404, description = "Not found (or not yours)", body = ProblemBody),
        (status = 409, description = "Not pending, no further channel, or busy", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn next_channel(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<VerificationView>, Problem> {
    Ok(Json(
        st.verify
            .next(&auth.principal, &auth.meta(), &id)
            .await?
            .into(),
    ))
}

/// An account's Verify policy: where SMS codes may go.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyPolicyBody {
    /// When set, SMS codes go only to numbers of these countries (ISO 3166-1 alpha-2).
    #[schema(example = json!(["US", "CA"]))]
    pub allowed_countries: Option<Vec<String>>,
    /// Prefixes refused on top of the built-in ones (premium-rate and shared-cost numbers,
    /// satellite and international networks: +870, +878, +879, +881, +882, +883, +888, +979).
    #[serde(default)]
    #[schema(example = json!(["+4470"]))]
    pub blocked_prefixes: Vec<String>,
}

impl From<VerifyPolicy> for VerifyPolicyBody {
    fn from(p: VerifyPolicy) -> Self {
        Self {
            allowed_countries: p.allowed_countries,
            blocked_prefixes: p.blocked_prefixes,
        }
    }
}

/// The account's Verify policy.
#[utoipa::path(get, path = "/v1/verify/policy", tag = "verify",
    responses((status = 200, description = "OK", body = VerifyPolicyBody), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Needs verify:read", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_verify_policy(
    State(st): State<Arc<AppState>>,
    auth: Auth,
) -> Result<Json<VerifyPolicyBody>, Problem> {
    Ok(Json(st.verify.policy(&auth.principal).await?.into()))
}

/// Replace the account's Verify policy (needs `verify:admin`).
#[utoipa::path(put, path = "/v1/verify/policy", tag = "verify", request_body = VerifyPolicyBody,
    responses((status = 200, description = "Replaced", body = VerifyPolicyBody), (status = 403, description = "Needs verify:admin", body = ProblemBody), (status = 422, description = "Invalid", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn put_verify_policy(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    body: ApiJson<VerifyPolicyBody>,
) -> Result<Json<VerifyPolicyBody>, Problem> {
    let b = body.value;
    Ok(Json(
        st.verify
            .set_policy(
                &auth.principal,
                &auth.meta(),
                VerifyPolicy {
                    allowed_countries: b.allowed_countries,
                    blocked_prefixes: b.blocked_prefixes,
                },
            )
            .await?
            .into(),
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BlockedPrefixView {
    /// `+` and the first six digits.
    #[schema(example = "+447911")]
    pub prefix: String,
    /// `blocked`, or `unblocked` (kept: statistics restart from `unblocked_at`).
    pub status: String,
    /// Codes sent and used in the window that led to the block.
    pub sends: i64,
    pub conversions: i64,
    pub blocked_at: String,
    pub unblocked_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BlockedPrefixList {
    pub items: Vec<BlockedPrefixView>,
}

impl From<BlockedPrefix> for BlockedPrefixView {
    fn from(b: BlockedPrefix) -> Self {
        Self {
            prefix: b.prefix,
            status: b.status,
            sends: b.sends,
            conversions: b.conversions,
            blocked_at: haven_platform::clock::to_rfc3339(b.blocked_at_ms),
            unblocked_at: super::rfc3339(b.unblocked_at_ms),
        }
    }
}

/// Prefixes the SMS-pumping guard blocked (codes sent there were almost never used).
#[utoipa::path(get, path = "/v1/verify/blocked-prefixes", tag = "verify",
    responses((status = 200, description = "OK", body = BlockedPrefixList), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Needs verify:read", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_blocked_prefixes(
    State(st): State<Arc<AppState>>,
    auth: Auth,
) -> Result<Json<BlockedPrefixList>, Problem> {
    Ok(Json(BlockedPrefixList {
        items: st
            .verify
            .blocked_prefixes(&auth.principal)
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    }))
}

/// Unblock a prefix (its digits, without `+`; needs `verify:admin`). Its statistics start
/// again from now, so a new collapse blocks it again.
#[utoipa::path(delete, path = "/v1/verify/blocked-prefixes/{prefix}", tag = "verify", params(("prefix" = String, Path, example = "447911")),
    responses((status = 204, description = "Unblocked"), (status = 403, description = "Needs verify:admin", body = ProblemBody), (status = 404, description = "Not blocked", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn unblock_prefix(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(prefix): ApiPath<String>,
) -> Result<Response, Problem> {
    if prefix.is_empty()
        || prefix.len() > 16
        || !prefix
            .trim_start_matches('+')
            .bytes()
            .all(|b| b.is_ascii_digit())
    {
        return Err(haven_verify::VerifyError::NotFound.into());
    }
    st.verify
        .unblock(&auth.principal, &auth.meta(), &prefix)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
