//! `/v1/verify/factors`: TOTP authenticator apps (RFC 6238) enrolled per user of the app.

use super::PageParams;
use crate::AppState;
use crate::extract::{ApiJson, ApiPath, ApiQuery, Auth};
use crate::problem::{Problem, ProblemBody};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use haven_verify::factors::{EnrolRequest, Factor};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Serialize, ToSchema)]
pub struct FactorView {
    #[schema(example = "vfa_01jd3k2m4n5p6q7r8s9t0v1w2x")]
    pub id: String,
    /// Your reference for the user (stored encrypted).
    pub user_ref: Option<String>,
    /// `unconfirmed` (enrolled, no code seen yet) or `active`.
    #[schema(example = "active")]
    pub status: String,
    pub digits: i64,
    pub period_seconds: i64,
    pub created_at: String,
    pub confirmed_at: Option<String>,
    pub last_used_at: Option<String>,
    /// Unused recovery codes (active factors).
    pub recovery_codes_left: Option<i64>,
}

impl From<Factor> for FactorView {
    fn from(f: Factor) -> Self {
        Self {
            id: f.id,
            user_ref: f.user_ref,
            status: f.status,
            digits: f.digits,
            period_seconds: f.period,
            created_at: haven_platform::clock::to_rfc3339(f.created_at_ms),
            confirmed_at: super::rfc3339(f.confirmed_at_ms),
            last_used_at: super::rfc3339(f.last_used_at_ms),
            recovery_codes_left: f.recovery_codes_left,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnrolmentView {
    pub factor: FactorView,
    /// The seed in base32, shown this once (for manual entry).
    pub secret: String,
    /// `otpauth://totp/…`, shown this once.
    pub otpauth_uri: String,
    /// The URI as a QR code, an SVG document, shown this once.
    pub qr_svg: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConfirmedView {
    pub factor: FactorView,
    /// Ten single-use recovery codes, shown this once.
    pub recovery_codes: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FactorList {
    pub items: Vec<FactorView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolFactor {
    /// Your reference for the user (up to 200 characters; stored encrypted, searchable).
    #[schema(example = "patient-4211")]
    pub user_ref: String,
    /// The name the authenticator app shows (your service).
    #[schema(example = "Clinic")]
    pub issuer: String,
    /// Shown under the issuer; default `user_ref`.
    #[schema(example = "pat@example.org")]
    pub label: Option<String>,
    /// 6 (default), 7 or 8.
    pub digits: Option<u32>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FactorCode {
    #[schema(example = "482913")]
    pub code: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoveryCode {
    #[schema(example = "ABCDE-FGHJK")]
    pub recovery_code: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FactorListQuery {
    /// Exact match on your user reference.
    pub user_ref: Option<String>,
    pub page_size: Option<u32>,
    pub cursor: Option<String>,
}

/// Enrol an authenticator app for a user. The seed (as base32, URI and QR code) is shown
/// once; the factor is `unconfirmed` until `…/confirm` sees a first code. Needs `verify:write`.
#[utoipa::path(post, path = "/v1/verify/factors", tag = "verify", request_body = EnrolFactor,
    responses((status = 201, description = "Enrolled", body = EnrolmentView), (status = 401, description = "Not authenticated", body = ProblemBody),
        (status = 403, description = "Needs verify:write", body = ProblemBody), (status = 422, description = "Invalid", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn enrol_factor(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    body: ApiJson<EnrolFactor>,
) -> Result<Response, Problem> {
    let b = body.value;
    let e = st
        .factors
        .enrol(
            &auth.principal,
            &auth.meta(),
            EnrolRequest {
                user_ref: b.user_ref,
                issuer: b.issuer,
                label: b.label,
                digits: b.digits,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(EnrolmentView {
            factor: e.factor.into(),
            secret: e.secret_base32,
            otpauth_uri: e.otpauth_uri,
            qr_svg: e.qr_svg,
        }),
    )
        .into_response())
}

/// List factors, optionally of one user.
#[utoipa::path(get, path = "/v1/verify/factors", tag = "verify", params(FactorListQuery),
    responses((status = 200, description = "OK", body = FactorList), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Needs verify:read", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_factors(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiQuery(q): ApiQuery<FactorListQuery>,
) -> Result<Json<FactorList>, Problem> {
    let page = PageParams {
        page_size: q.page_size,
        cursor: q.cursor,
    }
    .parse()?;
    let page = st
        .factors
        .list(&auth.principal, q.user_ref.as_deref(), &page)
        .await?;
    Ok(Json(FactorList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Get a factor.
#[utoipa::path(get, path = "/v1/verify/factors/{factor_id}", tag = "verify", params(("factor_id" = String, Path)),
    responses((status = 200, description = "OK", body = FactorView), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_factor(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<FactorView>, Problem> {
    Ok(Json(st.factors.get(&auth.principal, &id).await?.into()))
}

/// Remove a factor (the user re-enrols to use an app again).
#[utoipa::path(delete, path = "/v1/verify/factors/{factor_id}", tag = "verify", params(("factor_id" = String, Path)),
    responses((status = 204, description = "Removed"), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn delete_factor(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, Problem> {
    st.factors
        .delete(&auth.principal, &auth.meta(), &id)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Confirm an enrolment with the first code the app shows; answers the ten recovery codes,
/// once.
#[utoipa::path(post, path = "/v1/verify/factors/{factor_id}/confirm", tag = "verify", params(("factor_id" = String, Path)), request_body = FactorCode,
    responses((status = 200, description = "Active", body = ConfirmedView), (status = 404, description = "Not found (or not yours)", body = ProblemBody),
        (status = 409, description = "Confirmed already", body = ProblemBody), (status = 422, description = "Wrong code", body = ProblemBody),
        (status = 429, description = "Locked after wrong codes", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn confirm_factor(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    body: ApiJson<FactorCode>,
) -> Result<Json<ConfirmedView>, Problem> {
    let (f, codes) = st
        .factors
        .confirm(&auth.principal, &auth.meta(), &id, &body.value.code)
        .await?;
    Ok(Json(ConfirmedView {
        factor: f.into(),
        recovery_codes: codes,
    }))
}

/// Check a code from the authenticator app (this step or one either side). A code is
/// accepted once: the same code again is `409 /problems/code-reused`.
#[utoipa::path(post, path = "/v1/verify/factors/{factor_id}/check", tag = "verify", params(("factor_id" = String, Path)), request_body = FactorCode,
    responses((status = 200, description = "Valid", body = FactorView), (status = 404, description = "Not found (or not yours)", body = ProblemBody),
        (status = 409, description = "Code used already, or factor not confirmed", body = ProblemBody), (status = 422, description = "Wrong code", body = ProblemBody),
        (status = 429, description = "Locked after wrong codes", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn check_factor(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    body: ApiJson<FactorCode>,
) -> Result<Json<FactorView>, Problem> {
    Ok(Json(
        st.factors
            .check(&auth.principal, &auth.meta(), &id, &body.value.code)
            .await?
            .into(),
    ))
}

/// Use a recovery code (each works once).
#[utoipa::path(post, path = "/v1/verify/factors/{factor_id}/recover", tag = "verify", params(("factor_id" = String, Path)), request_body = RecoveryCode,
    responses((status = 200, description = "Valid", body = FactorView), (status = 404, description = "Not found (or not yours)", body = ProblemBody),
        (status = 422, description = "Unknown or used code", body = ProblemBody), (status = 429, description = "Locked after wrong codes", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn recover_factor(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    body: ApiJson<RecoveryCode>,
) -> Result<Json<FactorView>, Problem> {
    Ok(Json(
        st.factors
            .recover(
                &auth.principal,
                &auth.meta(),
                &id,
                &body.value.recovery_code,
            )
            .await?
            .into(),
    ))
}
