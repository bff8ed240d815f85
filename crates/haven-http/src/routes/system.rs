//! Health, readiness, metrics, the OpenAPI document and the problem-type pages.

use crate::AppState;
use crate::extract::ApiPath;
use crate::problem::{self, Problem, ProblemBody, ProblemType};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: the process is serving.
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, description = "OK", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: the database answers and the server is not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "system", responses((status = 200, description = "OK", body = Health), (status = 503, description = "Not ready", body = ProblemBody)))]
pub async fn readyz(State(st): State<Arc<AppState>>) -> Result<Json<Health>, Problem> {
    if !st.ready.load(Ordering::Relaxed) {
        return Err(Problem::new(
            ProblemType::ServiceUnavailable,
            "The server is shutting down.",
        ));
    }
    match tokio::time::timeout(std::time::Duration::from_secs(2), st.health.ping()).await {
        Ok(Ok(())) => Ok(Json(Health { status: "ready" })),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(Problem::new(
                ProblemType::ServiceUnavailable,
                "The database is unreachable.",
            ))
        }
        Err(_) => Err(Problem::new(
            ProblemType::ServiceUnavailable,
            "The database did not answer in time.",
        )),
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"), (status = 401, description = "Not authenticated", body = ProblemBody), (status = 404, description = "Not found (or not yours)", body = ProblemBody)))]
pub async fn metrics(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let Some(handle) = &st.metrics else {
        return Err(Problem::new(
            ProblemType::NoSuchRoute,
            "Metrics are disabled.",
        ));
    };
    if let Some(token) = &st.settings.metrics_token {
        let expected = format!("Bearer {}", token.expose());
        let given = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        use subtle::ConstantTimeEq;
        if given.len() != expected.len() || !bool::from(given.ct_eq(expected.as_bytes())) {
            return Err(Problem::new(
                ProblemType::Unauthenticated,
                "Metrics require the configured bearer token.",
            ));
        }
    }
    let mut res = handle.render().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(res)
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "system", responses((status = 200, description = "OpenAPI 3.1 document", body = Object)))]
pub async fn openapi(State(st): State<Arc<AppState>>) -> Response {
    let mut res = (StatusCode::OK, st.openapi_json.clone()).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// A problem type's human-readable page.
#[utoipa::path(get, path = "/problems/{slug}", tag = "system", params(("slug" = String, Path)),
    responses((status = 200, description = "HTML page", content_type = "text/html"), (status = 404, description = "Not found (or not yours)", body = ProblemBody)))]
pub async fn problem_page(ApiPath(slug): ApiPath<String>) -> Result<Response, Problem> {
    let kind = ProblemType::from_slug(&slug)
        .ok_or_else(|| Problem::new(ProblemType::NotFound, "No such problem type."))?;
    let mut res = problem::page(kind).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    Ok(res)
}

pub async fn no_such_route() -> Problem {
    Problem::new(
        ProblemType::NoSuchRoute,
        "No operation exists at this path.",
    )
}

pub async fn method_not_allowed() -> Problem {
    Problem::new(
        ProblemType::MethodNotAllowed,
        "This path does not support the HTTP method.",
    )
}
