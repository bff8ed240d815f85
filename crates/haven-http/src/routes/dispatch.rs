//! `/v1/dispatch`: a message that fails over from channel to channel until the patient
//! confirms.

use super::PageParams;
use super::messages::SendMessage;
use crate::extract::{ApiJson, ApiPath, ApiQuery, Auth};
use crate::problem::{Problem, ProblemBody};
use crate::{AppState, idempotency};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use haven_dispatch::{Dispatch, StepRequest, Until};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DispatchStepBody {
    /// The message of this step, as for `POST /v1/messages`.
    pub message: SendMessage,
    /// What ends the workflow here: `"delivered"` (the default; on email, the relay taking
    /// the message), `"replied"` (any reply, SMS), or `{"replied": "YES"}` /
    /// `{"replied": ["YES", "Y"]}` (a reply whose first word is one of these, any case).
    /// `"read"` is refused: neither SMPP nor SMTP reports reads.
    #[schema(value_type = Object, example = json!({"replied": "YES"}))]
    pub until: Option<serde_json::Value>,
    /// How long to wait for `until` before the next step (1 to 604800 s). Required on every
    /// step but the last; on the last, the default is to wait for its message's final status.
    #[schema(example = 600)]
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDispatch {
    /// 1 to 5 steps, tried in order.
    pub steps: Vec<DispatchStepBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DispatchStepView {
    pub index: i64,
    #[schema(example = "sms")]
    pub channel: String,
    /// The condition, as given (`null` once the patient was erased).
    #[schema(value_type = Object)]
    pub until: Option<serde_json::Value>,
    pub timeout_seconds: Option<u64>,
    /// The step's message (`GET /v1/messages/{id}`), once sent.
    pub message_id: Option<String>,
    /// `pending`, `waiting`, `succeeded`, `failed` (its message failed), `timed_out`,
    /// `skipped` (could not be sent: see `reason`), `cancelled`.
    #[schema(example = "waiting")]
    pub status: String,
    /// Why a step was skipped or failed, such as `recipient_opted_out` or `message_failed`.
    pub reason: Option<String>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DispatchView {
    #[schema(example = "dsp_01jd3k2m4n5p6q7r8s9t0v1w2x")]
    pub id: String,
    pub account_id: String,
    /// `running`, `succeeded`, `failed` or `cancelled`.
    #[schema(example = "running")]
    pub status: &'static str,
    pub current_step: i64,
    pub steps: Vec<DispatchStepView>,
    /// How it ended: the condition met (`delivered`, `replied YES`), `steps_exhausted`,
    /// `last_step_failed`, `last_step_skipped`, `cancelled`, `erased`.
    pub outcome: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub final_at: Option<String>,
}

fn until_json(u: &Until) -> serde_json::Value {
    match u {
        Until::Delivered => "delivered".into(),
        Until::Replied => "replied".into(),
        Until::RepliedWith(w) => serde_json::json!({ "replied": w }),
    }
}

impl From<Dispatch> for DispatchView {
    fn from(d: Dispatch) -> Self {
        Self {
            id: d.id,
            account_id: d.account_id,
            status: d.status.as_str(),
            current_step: d.current_step,
            steps: d
                .steps
                .into_iter()
                .map(|s| DispatchStepView {
                    index: s.index,
                    channel: s.channel,
                    until: s.until.as_ref().map(until_json),
                    timeout_seconds: s.timeout_seconds,
                    message_id: s.message_id,
                    status: s.status,
                    reason: s.reason,
                    started_at: super::rfc3339(s.started_at_ms),
                    ended_at: super::rfc3339(s.ended_at_ms),
                })
                .collect(),
            outcome: d.outcome,
            created_at: haven_platform::clock::to_rfc3339(d.created_at_ms),
            updated_at: haven_platform::clock::to_rfc3339(d.updated_at_ms),
            final_at: super::rfc3339(d.final_at_ms),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DispatchList {
    pub items: Vec<DispatchView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DispatchListQuery {
    /// `running`, `succeeded`, `failed` or `cancelled`.
    pub status: Option<String>,
    pub page_size: Option<u32>,
    pub cursor: Option<String>,
}

/// Start a workflow: step 1's message is sent at once; when its condition is not met within
/// its timeout (or its message fails), the next step's is sent. Timers are durable: the
/// workflow survives restarts and resumes on time. Needs `dispatch:write` and
/// `messages:write`. Progress arrives as `dispatch.*` webhooks.
#[utoipa::path(post, path = "/v1/dispatch", tag = "dispatch", request_body = CreateDispatch,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: a replay returns the first response and starts nothing.")),
    responses((status = 202, description = "Started", body = DispatchView), (status = 401, description = "Not authenticated", body = ProblemBody),
        (status = 403, description = "Needs dispatch:write and messages:write", body = ProblemBody), (status = 422, description = "Invalid step, unregistered sender, channel not configured", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn create_dispatch(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    headers: HeaderMap,
    body: ApiJson<CreateDispatch>,
) -> Result<Response, Problem> {
    let steps = body
        .value
        .steps
        .into_iter()
        .map(|s| StepRequest {
            message: s.message.into_request(),
            until: s.until,
            timeout_seconds: s.timeout_seconds,
        })
        .collect();
    let meta = auth.meta();
    idempotency::once(
        &st,
        &auth.principal.account_id,
        &headers,
        "POST /v1/dispatch",
        &body.raw,
        StatusCode::ACCEPTED,
        async {
            Ok(DispatchView::from(
                st.dispatch.create(&auth.principal, &meta, steps).await?,
            ))
        },
    )
    .await
}

/// List the account's dispatches.
#[utoipa::path(get, path = "/v1/dispatch", tag = "dispatch", params(DispatchListQuery),
    responses((status = 200, description = "OK", body = DispatchList), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Needs dispatch:read", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_dispatches(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiQuery(q): ApiQuery<DispatchListQuery>,
) -> Result<Json<DispatchList>, Problem> {
    let page = PageParams {
        page_size: q.page_size,
        cursor: q.cursor,
    }
    .parse()?;
    let page = st
        .dispatch
        .list(&auth.principal, &auth.meta(), q.status.as_deref(), &page)
        .await?;
    Ok(Json(DispatchList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Get a dispatch and its steps.
#[utoipa::path(get, path = "/v1/dispatch/{dispatch_id}", tag = "dispatch", params(("dispatch_id" = String, Path)),
    responses((status = 200, description = "OK", body = DispatchView), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_dispatch(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DispatchView>, Problem> {
    Ok(Json(
        st.dispatch
            .get(&auth.principal, &auth.meta(), &id)
            .await?
            .into(),
    ))
}

/// Cancel a running dispatch: no further step is sent (a message already accepted for the
/// current step is not recalled).
#[utoipa::path(post, path = "/v1/dispatch/{dispatch_id}/cancel", tag = "dispatch", params(("dispatch_id" = String, Path)),
    responses((status = 200, description = "Cancelled", body = DispatchView), (status = 401, description = "Not authenticated", body = ProblemBody),
        (status = 404, description = "Not found (or not yours)", body = ProblemBody), (status = 409, description = "Ended already", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn cancel_dispatch(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DispatchView>, Problem> {
    Ok(Json(
        st.dispatch
            .cancel(&auth.principal, &auth.meta(), &id)
            .await?
            .into(),
    ))
}
