//! `/v1/accounts/{account_id}/keys`: API keys. Secrets are returned once, at creation and at
//! rotation, and never again.

use super::{PageParams, rfc3339};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Auth};
use crate::problem::{FieldProblem, Problem, ProblemBody, ProblemType};
use crate::{AppState, idempotency};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use haven_identity::{ApiKey, IssuedKey, NewKey};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    /// The key id, also the HTTP Basic user name and the OAuth `client_id`.
    #[schema(example = "hk_01jd3k2m4n5p6q7r8s9t0v1w2x")]
    pub id: String,
    pub account_id: String,
    pub name: String,
    #[schema(example = json!(["messages:write", "keys:read"]))]
    pub scopes: Vec<String>,
    /// Source addresses allowed to use the key; empty: any.
    pub allowed_cidrs: Vec<String>,
    /// `active`, `expired` or `revoked`.
    pub status: &'static str,
    pub expires_at: Option<String>,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
    pub rotated_at: Option<String>,
    /// Until when the secret replaced by the last rotation still works.
    pub previous_secret_expires_at: Option<String>,
}

impl From<ApiKey> for KeyView {
    fn from(k: ApiKey) -> Self {
        let now = haven_platform::clock::now_ms();
        Self {
            status: k.status(now).as_str(),
            id: k.id,
            account_id: k.account_id,
            name: k.name,
            scopes: k.scopes.to_strings(),
            allowed_cidrs: k.allowed_cidrs.iter().map(ToString::to_string).collect(),
            expires_at: rfc3339(k.expires_at_ms),
            created_at: haven_platform::clock::to_rfc3339(k.created_at_ms),
            last_used_at: rfc3339(k.last_used_at_ms),
            revoked_at: rfc3339(k.revoked_at_ms),
            rotated_at: rfc3339(k.rotated_at_ms),
            previous_secret_expires_at: rfc3339(
                k.previous_secret_expires_at_ms.filter(|t| *t > now),
            ),
        }
    }
}

/// A key with its secret: the only time the secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyWithSecret {
    #[serde(flatten)]
    pub key: KeyView,
    /// Shown once; store it in a secret manager. Haven keeps only a keyed hash.
    #[schema(example = "hks_3q2+7w…")]
    pub secret: String,
}

impl From<IssuedKey> for KeyWithSecret {
    fn from(i: IssuedKey) -> Self {
        Self {
            key: i.key.into(),
            secret: i.secret,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub items: Vec<KeyView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    #[schema(example = "appointment reminders")]
    pub name: String,
    /// `api:right` pairs; `admin` implies `write` implies `read`. Only scopes the calling
    /// credential holds can be granted.
    #[schema(example = json!(["messages:write"]))]
    pub scopes: Vec<String>,
    /// CIDR blocks or addresses the key may be used from; empty or absent: any.
    #[serde(default)]
    #[schema(example = json!(["10.20.0.0/16"]))]
    pub allowed_cidrs: Vec<String>,
    /// RFC 3339; absent: the key does not expire.
    pub expires_at: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the current secret keeps working beside the new one (0 to 2592000 s; default 0).
    #[serde(default)]
    pub grace_period_seconds: u64,
}

#[derive(Debug, Deserialize)]
pub struct KeyPath {
    pub account_id: String,
    pub key_id: String,
}

/// Create an API key. The secret is in the response, once.
#[utoipa::path(post, path = "/v1/accounts/{account_id}/keys", tag = "keys", request_body = CreateKey,
    params(("account_id" = String, Path), ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe.")),
    responses((status = 201, description = "Created", body = KeyWithSecret), (status = 400, description = "Malformed request", body = ProblemBody), (status = 401, description = "Not authenticated", body = ProblemBody),
        (status = 403, description = "Authenticated but not allowed", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody), (status = 422, description = "Valid JSON that breaks a rule", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn create_key(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(account_id): ApiPath<String>,
    headers: HeaderMap,
    body: ApiJson<CreateKey>,
) -> Result<Response, Problem> {
    let b = &body.value;
    let req = NewKey::parse(
        &b.name,
        &b.scopes,
        &b.allowed_cidrs,
        b.expires_at.as_deref(),
        haven_platform::clock::now_ms(),
    )
    .map_err(|errs| {
        Problem::new(
            ProblemType::ValidationFailed,
            "One or more fields are invalid.",
        )
        .with_errors(
            errs.into_iter()
                .map(|e| FieldProblem {
                    field: e.field,
                    message: e.message,
                })
                .collect(),
        )
    })?;
    let meta = auth.meta();
    let route = format!("POST /v1/accounts/{account_id}/keys");
    idempotency::once(
        &st,
        &auth.principal.account_id,
        &headers,
        &route,
        &body.raw,
        StatusCode::CREATED,
        async {
            Ok(KeyWithSecret::from(
                st.identity
                    .create_key(&auth.principal, &account_id, req, &meta)
                    .await?,
            ))
        },
    )
    .await
}

/// List an account's keys (without secrets).
#[utoipa::path(get, path = "/v1/accounts/{account_id}/keys", tag = "keys", params(("account_id" = String, Path), PageParams),
    responses((status = 200, description = "OK", body = KeyList), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_keys(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(account_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Json<KeyList>, Problem> {
    let page = st
        .identity
        .list_keys(&auth.principal, &account_id, &q.parse()?)
        .await?;
    Ok(Json(KeyList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Get a key (without its secret).
#[utoipa::path(get, path = "/v1/accounts/{account_id}/keys/{key_id}", tag = "keys",
    params(("account_id" = String, Path), ("key_id" = String, Path)),
    responses((status = 200, description = "OK", body = KeyView), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_key(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(p): ApiPath<KeyPath>,
) -> Result<Json<KeyView>, Problem> {
    Ok(Json(
        st.identity
            .get_key(&auth.principal, &p.account_id, &p.key_id)
            .await?
            .into(),
    ))
}

/// Revoke a key, at once, on every node.
#[utoipa::path(delete, path = "/v1/accounts/{account_id}/keys/{key_id}", tag = "keys",
    params(("account_id" = String, Path), ("key_id" = String, Path)),
    responses((status = 204, description = "Revoked (or already revoked)."), (status = 401, description = "Not authenticated", body = ProblemBody),
        (status = 403, description = "Authenticated but not allowed", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn revoke_key(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(p): ApiPath<KeyPath>,
) -> Result<Response, Problem> {
    st.identity
        .revoke_key(&auth.principal, &p.account_id, &p.key_id, &auth.meta())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Issue a new secret for a key; the old one keeps working for the grace period.
#[utoipa::path(post, path = "/v1/accounts/{account_id}/keys/{key_id}/rotate", tag = "keys", request_body = RotateKey,
    params(("account_id" = String, Path), ("key_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, description = "OK", body = KeyWithSecret), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Authenticated but not allowed", body = ProblemBody),
        (status = 404, description = "Not found (or not yours)", body = ProblemBody), (status = 409, description = "Conflict with the current state", body = ProblemBody), (status = 422, description = "Valid JSON that breaks a rule", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn rotate_key(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(p): ApiPath<KeyPath>,
    headers: HeaderMap,
    body: ApiJson<RotateKey>,
) -> Result<Response, Problem> {
    let meta = auth.meta();
    let route = format!(
        "POST /v1/accounts/{}/keys/{}/rotate",
        p.account_id, p.key_id
    );
    let grace = body.value.grace_period_seconds;
    idempotency::once(
        &st,
        &auth.principal.account_id,
        &headers,
        &route,
        &body.raw,
        StatusCode::OK,
        async {
            Ok(KeyWithSecret::from(
                st.identity
                    .rotate_key(&auth.principal, &p.account_id, &p.key_id, grace, &meta)
                    .await?,
            ))
        },
    )
    .await
}
