//! `/v1/accounts`: the caller's account and its subaccounts.

use super::{PageParams, rfc3339};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Auth};
use crate::problem::{FieldProblem, Problem, ProblemBody, ProblemType};
use crate::{AppState, idempotency};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use haven_identity::{Account, AccountPatch, AccountStatus, DisplayName};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountView {
    #[schema(example = "acc_01jd3k2m4n5p6q7r8s9t0v1w2x")]
    pub id: String,
    /// The master account of a subaccount; absent on a master account.
    pub parent_account_id: Option<String>,
    pub name: String,
    #[schema(example = "active")]
    pub status: &'static str,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Account> for AccountView {
    fn from(a: Account) -> Self {
        Self {
            id: a.id,
            parent_account_id: a.parent_id,
            name: a.name,
            status: a.status.as_str(),
            created_at: haven_platform::clock::to_rfc3339(a.created_at_ms),
            updated_at: rfc3339(Some(a.updated_at_ms)).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountList {
    pub items: Vec<AccountView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// The department's name, 1 to 100 characters.
    #[schema(example = "Cardiology")]
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccount {
    pub name: Option<String>,
    /// `active` or `suspended`. Suspending stops every credential of the account (and of its
    /// subaccounts) at once; needs `accounts:admin`.
    #[schema(example = "suspended")]
    pub status: Option<String>,
}

/// Create a subaccount of the caller's account.
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", request_body = CreateAccount,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: a replay returns the first response.")),
    responses((status = 201, description = "Created", body = AccountView), (status = 400, description = "Malformed request", body = ProblemBody), (status = 401, description = "Not authenticated", body = ProblemBody),
        (status = 403, description = "Authenticated but not allowed", body = ProblemBody), (status = 422, description = "Valid JSON that breaks a rule", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn create_account(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    headers: HeaderMap,
    body: ApiJson<CreateAccount>,
) -> Result<Response, Problem> {
    let name = DisplayName::parse("name", &body.value.name)
        .map_err(|e| Problem::from(haven_identity::IdentityError::Invalid(vec![e])))?;
    let meta = auth.meta();
    idempotency::once(
        &st,
        &auth.principal.account_id,
        &headers,
        "POST /v1/accounts",
        &body.raw,
        StatusCode::CREATED,
        async {
            Ok(AccountView::from(
                st.identity
                    .create_subaccount(&auth.principal, name, &meta)
                    .await?,
            ))
        },
    )
    .await
}

/// List the caller's account and its subaccounts.
#[utoipa::path(get, path = "/v1/accounts", tag = "accounts", params(PageParams),
    responses((status = 200, description = "OK", body = AccountList), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Authenticated but not allowed", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_accounts(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Json<AccountList>, Problem> {
    let page = st
        .identity
        .list_accounts(&auth.principal, &q.parse()?)
        .await?;
    Ok(Json(AccountList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Get an account.
#[utoipa::path(get, path = "/v1/accounts/{account_id}", tag = "accounts",
    params(("account_id" = String, Path, description = "The caller's account or one of its subaccounts.")),
    responses((status = 200, description = "OK", body = AccountView), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_account(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(account_id): ApiPath<String>,
) -> Result<Json<AccountView>, Problem> {
    Ok(Json(
        st.identity
            .get_account(&auth.principal, &account_id)
            .await?
            .into(),
    ))
}

/// Rename, suspend or reactivate a subaccount.
#[utoipa::path(patch, path = "/v1/accounts/{account_id}", tag = "accounts", request_body = UpdateAccount,
    params(("account_id" = String, Path)),
    responses((status = 200, description = "OK", body = AccountView), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Authenticated but not allowed", body = ProblemBody),
        (status = 404, description = "Not found (or not yours)", body = ProblemBody), (status = 422, description = "Valid JSON that breaks a rule", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn update_account(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(account_id): ApiPath<String>,
    body: ApiJson<UpdateAccount>,
) -> Result<Json<AccountView>, Problem> {
    let mut errors = Vec::new();
    let name = match body
        .value
        .name
        .as_deref()
        .map(|n| DisplayName::parse("name", n))
    {
        Some(Err(e)) => {
            errors.push(FieldProblem {
                field: e.field,
                message: e.message,
            });
            None
        }
        Some(Ok(n)) => Some(n),
        None => None,
    };
    let status = match body.value.status.as_deref() {
        None => None,
        Some(s) => match AccountStatus::parse(s) {
            Some(s) => Some(s),
            None => {
                errors.push(FieldProblem {
                    field: "status".into(),
                    message: "must be active or suspended".into(),
                });
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(Problem::new(
            ProblemType::ValidationFailed,
            "One or more fields are invalid.",
        )
        .with_errors(errors));
    }
    let account = st
        .identity
        .update_account(
            &auth.principal,
            &account_id,
            AccountPatch { name, status },
            &auth.meta(),
        )
        .await?;
    Ok(Json(account.into()))
}
