//! `/v1/webhooks`: endpoints, the events sent to them, deliveries and attempts, replay.

use super::{PageParams, rfc3339};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Auth};
use crate::problem::{FieldProblem, Problem, ProblemBody, ProblemType};
use crate::{AppState, idempotency};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use haven_webhooks::{
    AttemptRow, DeliveryRow, DeliveryStatus, Endpoint, EndpointPatch, EndpointStatus, EventRow,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointView {
    #[schema(example = "whe_01jd3k2m4n5p6q7r8s9t0v1w2x")]
    pub id: String,
    pub account_id: String,
    #[schema(example = "https://hooks.example.org/haven")]
    pub url: String,
    #[schema(example = json!(["key.*", "account.suspended"]))]
    pub event_types: Vec<String>,
    /// `enabled` or `disabled`.
    pub status: &'static str,
    /// While set, deliveries are signed with the previous secret too.
    pub previous_secret_expires_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Endpoint> for EndpointView {
    fn from(e: Endpoint) -> Self {
        Self {
            id: e.id,
            account_id: e.account_id,
            url: e.url,
            event_types: e.event_types,
            status: e.status.as_str(),
            previous_secret_expires_at: rfc3339(e.previous_secret_expires_at_ms),
            created_at: haven_platform::clock::to_rfc3339(e.created_at_ms),
            updated_at: haven_platform::clock::to_rfc3339(e.updated_at_ms),
        }
    }
}

/// An endpoint with its signing secret: shown at creation and rotation only.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointWithSecret {
    #[serde(flatten)]
    pub endpoint: EndpointView,
    /// `whsec_` + base64: verify `webhook-signature` with it (Standard Webhooks).
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointList {
    pub items: Vec<EndpointView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// HTTPS; private, loopback, link-local and metadata addresses are refused (checked again
    /// on every delivery, after DNS) unless allowlisted by the operator.
    pub url: String,
    /// Event types, `group.*`, or `*`.
    pub event_types: Vec<String>,
    /// `enabled` (default) or `disabled`.
    pub status: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub status: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// How long the old secret keeps signing beside the new one (0 to 604800; default 86400).
    pub grace_period_seconds: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    #[schema(example = "evt_01jd3k2m4n5p6q7r8s9t0v1w2x")]
    pub id: String,
    #[schema(example = "key.created")]
    pub r#type: String,
    pub account_id: String,
    pub created_at: String,
    /// The exact JSON body delivered.
    #[schema(value_type = Object)]
    pub payload: Value,
}

impl From<EventRow> for EventView {
    fn from(e: EventRow) -> Self {
        Self {
            payload: serde_json::from_str(&e.payload).unwrap_or(Value::Null),
            id: e.id,
            r#type: e.event_type,
            account_id: e.account_id,
            created_at: haven_platform::clock::to_rfc3339(e.created_at_ms),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    #[schema(example = "whd_01jd3k2m4n5p6q7r8s9t0v1w2x")]
    pub id: String,
    pub event_id: String,
    pub endpoint_id: String,
    /// `pending`, `succeeded` or `dead` (dead-lettered: every attempt failed).
    pub status: &'static str,
    pub attempts: i64,
    pub next_attempt_at: Option<String>,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub completed_at: Option<String>,
}

impl From<DeliveryRow> for DeliveryView {
    fn from(d: DeliveryRow) -> Self {
        Self {
            next_attempt_at: (d.status == DeliveryStatus::Pending)
                .then(|| haven_platform::clock::to_rfc3339(d.next_attempt_at_ms)),
            id: d.id,
            event_id: d.event_id,
            endpoint_id: d.endpoint_id,
            status: d.status.as_str(),
            attempts: d.attempts,
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            created_at: haven_platform::clock::to_rfc3339(d.created_at_ms),
            completed_at: rfc3339(d.completed_at_ms),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventDetailView {
    #[serde(flatten)]
    pub event: EventView,
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub items: Vec<EventView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub items: Vec<DeliveryView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    pub delivery_id: String,
    pub endpoint_id: String,
    /// 1 for the first attempt of the delivery.
    pub attempt: i64,
    pub at: String,
    /// The receiver's HTTP status; absent when no response came.
    pub status_code: Option<i64>,
    /// Why the attempt failed without a response (timeout, refused target…).
    pub error: Option<String>,
    pub duration_ms: i64,
}

impl From<AttemptRow> for AttemptView {
    fn from(a: AttemptRow) -> Self {
        Self {
            delivery_id: a.delivery_id,
            endpoint_id: a.endpoint_id,
            attempt: a.attempt,
            at: haven_platform::clock::to_rfc3339(a.at_ms),
            status_code: a.status_code,
            error: a.error,
            duration_ms: a.duration_ms,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptList {
    pub items: Vec<AttemptView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// Only to this endpoint; default: every endpoint of the caller subscribed to the type.
    pub endpoint_id: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// `pending`, `succeeded` or `dead`.
    pub status: Option<String>,
    pub page_size: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventTypes {
    pub items: Vec<&'static str>,
}

fn status_field(raw: Option<&str>) -> Result<Option<EndpointStatus>, Problem> {
    raw.map(|s| {
        EndpointStatus::parse(s).ok_or_else(|| {
            Problem::new(
                ProblemType::ValidationFailed,
                "One or more fields are invalid.",
            )
            .with_errors(vec![FieldProblem {
                field: "status".into(),
                message: "must be enabled or disabled".into(),
            }])
        })
    })
    .transpose()
}

/// Register an endpoint. The response holds its signing secret, shown once.
#[utoipa::path(post, path = "/v1/webhooks/endpoints", tag = "webhooks", request_body = CreateEndpoint,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: a replay returns the first response.")),
    responses((status = 201, description = "Created", body = EndpointWithSecret), (status = 400, description = "Malformed request", body = ProblemBody),
        (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Needs webhooks:write", body = ProblemBody),
        (status = 422, description = "Invalid, or a forbidden target", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn create_endpoint(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    headers: HeaderMap,
    body: ApiJson<CreateEndpoint>,
) -> Result<Response, Problem> {
    let b = body.value;
    let status = status_field(b.status.as_deref())?.unwrap_or(EndpointStatus::Enabled);
    let meta = auth.meta();
    idempotency::once(
        &st,
        &auth.principal.account_id,
        &headers,
        "POST /v1/webhooks/endpoints",
        &body.raw,
        StatusCode::CREATED,
        async {
            let (endpoint, secret) = st
                .webhooks
                .create_endpoint(&auth.principal, &meta, &b.url, b.event_types, status)
                .await?;
            Ok(EndpointWithSecret {
                endpoint: endpoint.into(),
                secret,
            })
        },
    )
    .await
}

/// List the account's endpoints.
#[utoipa::path(get, path = "/v1/webhooks/endpoints", tag = "webhooks", params(PageParams),
    responses((status = 200, description = "OK", body = EndpointList), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Needs webhooks:read", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_endpoints(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Json<EndpointList>, Problem> {
    let page = st
        .webhooks
        .list_endpoints(&auth.principal, &q.parse()?)
        .await?;
    Ok(Json(EndpointList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Get an endpoint.
#[utoipa::path(get, path = "/v1/webhooks/endpoints/{endpoint_id}", tag = "webhooks", params(("endpoint_id" = String, Path)),
    responses((status = 200, description = "OK", body = EndpointView), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_endpoint(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<EndpointView>, Problem> {
    Ok(Json(
        st.webhooks.get_endpoint(&auth.principal, &id).await?.into(),
    ))
}

/// Change an endpoint's URL, event types or status.
#[utoipa::path(patch, path = "/v1/webhooks/endpoints/{endpoint_id}", tag = "webhooks", request_body = UpdateEndpoint, params(("endpoint_id" = String, Path)),
    responses((status = 200, description = "OK", body = EndpointView), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody),
        (status = 422, description = "Invalid, or a forbidden target", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn update_endpoint(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    body: ApiJson<UpdateEndpoint>,
) -> Result<Json<EndpointView>, Problem> {
    let b = body.value;
    let patch = EndpointPatch {
        url: b.url,
        event_types: b.event_types,
        status: status_field(b.status.as_deref())?,
    };
    Ok(Json(
        st.webhooks
            .update_endpoint(&auth.principal, &auth.meta(), &id, patch)
            .await?
            .into(),
    ))
}

/// Delete an endpoint; its pending deliveries are dead-lettered.
#[utoipa::path(delete, path = "/v1/webhooks/endpoints/{endpoint_id}", tag = "webhooks", params(("endpoint_id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn delete_endpoint(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, Problem> {
    st.webhooks
        .delete_endpoint(&auth.principal, &auth.meta(), &id)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Replace the signing secret; the old one keeps signing beside it for the grace period, so
/// deliveries carry two signatures meanwhile.
#[utoipa::path(post, path = "/v1/webhooks/endpoints/{endpoint_id}/rotate-secret", tag = "webhooks", request_body = RotateSecret, params(("endpoint_id" = String, Path)),
    responses((status = 200, description = "Rotated", body = EndpointWithSecret), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody),
        (status = 422, description = "Valid JSON that breaks a rule", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn rotate_secret(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    body: ApiJson<RotateSecret>,
) -> Result<Json<EndpointWithSecret>, Problem> {
    let grace = body.value.grace_period_seconds.unwrap_or(86_400);
    let (endpoint, secret) = st
        .webhooks
        .rotate_secret(&auth.principal, &auth.meta(), &id, grace)
        .await?;
    Ok(Json(EndpointWithSecret {
        endpoint: endpoint.into(),
        secret,
    }))
}

/// The event types endpoints can subscribe to.
#[utoipa::path(get, path = "/v1/webhooks/event-types", tag = "webhooks",
    responses((status = 200, description = "OK", body = EventTypes), (status = 401, description = "Not authenticated", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn event_types(_auth: Auth) -> Json<EventTypes> {
    Json(EventTypes {
        items: haven_platform::events::EVENT_TYPES.to_vec(),
    })
}

/// Events of the account and of its subaccounts, oldest first.
#[utoipa::path(get, path = "/v1/webhooks/events", tag = "webhooks", params(PageParams),
    responses((status = 200, description = "OK", body = EventList), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Needs webhooks:read", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_webhook_events(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Json<EventList>, Problem> {
    let page = st
        .webhooks
        .list_events(&auth.principal, &q.parse()?)
        .await?;
    Ok(Json(EventList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// An event with its deliveries to the caller's endpoints.
#[utoipa::path(get, path = "/v1/webhooks/events/{event_id}", tag = "webhooks", params(("event_id" = String, Path)),
    responses((status = 200, description = "OK", body = EventDetailView), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_webhook_event(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<EventDetailView>, Problem> {
    let d = st.webhooks.get_event(&auth.principal, &id).await?;
    Ok(Json(EventDetailView {
        event: d.event.into(),
        deliveries: d.deliveries.into_iter().map(Into::into).collect(),
    }))
}

/// Every delivery attempt of an event, oldest first.
#[utoipa::path(get, path = "/v1/webhooks/events/{event_id}/attempts", tag = "webhooks", params(("event_id" = String, Path)),
    responses((status = 200, description = "OK", body = AttemptList), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_attempts(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<AttemptList>, Problem> {
    Ok(Json(AttemptList {
        items: st
            .webhooks
            .attempts(&auth.principal, &id)
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    }))
}

/// Send an event again (dead-lettered or not). Same `webhook-id`: receivers de-duplicate.
#[utoipa::path(post, path = "/v1/webhooks/events/{event_id}/replay", tag = "webhooks", request_body = Replay, params(("event_id" = String, Path)),
    responses((status = 202, description = "Queued", body = DeliveryList), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn replay_event(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    body: ApiJson<Replay>,
) -> Result<(StatusCode, Json<DeliveryList>), Problem> {
    let rows = st
        .webhooks
        .replay(
            &auth.principal,
            &auth.meta(),
            &id,
            body.value.endpoint_id.as_deref(),
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(DeliveryList {
            items: rows.into_iter().map(Into::into).collect(),
            next_cursor: None,
        }),
    ))
}

/// Deliveries to the account's endpoints; `?status=dead` is the dead-letter queue.
#[utoipa::path(get, path = "/v1/webhooks/deliveries", tag = "webhooks", params(DeliveryQuery),
    responses((status = 200, description = "OK", body = DeliveryList), (status = 400, description = "Malformed request", body = ProblemBody), (status = 401, description = "Not authenticated", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_deliveries(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiQuery(q): ApiQuery<DeliveryQuery>,
) -> Result<Json<DeliveryList>, Problem> {
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| {
            Problem::new(
                ProblemType::MalformedRequest,
                "status must be pending, succeeded or dead.",
            )
        })?),
    };
    let page = PageParams {
        page_size: q.page_size,
        cursor: q.cursor,
    }
    .parse()?;
    let page = st
        .webhooks
        .list_deliveries(&auth.principal, status, &page)
        .await?;
    Ok(Json(DeliveryList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}
