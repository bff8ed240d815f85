//! Extractors that turn an HTTP request into domain input, answering every failure with a
//! problem: authentication, JSON bodies, query strings and path ids.

use crate::AppState;
use crate::problem::{FieldProblem, Problem, ProblemType};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, header, request::Parts};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use haven_identity::{Principal, RequestMeta};
use serde::de::DeserializeOwned;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

/// Set by the request middleware: who is calling from where.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub request_id: String,
    pub source: Option<IpAddr>,
    pub user_agent: Option<String>,
    /// Filled by authentication, read by the access log: (account id, credential id).
    pub principal: Arc<OnceLock<(String, String)>>,
}

impl RequestCtx {
    pub fn meta(&self) -> RequestMeta {
        RequestMeta {
            source: self.source,
            user_agent: self.user_agent.clone(),
            request_id: Some(self.request_id.clone()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestCtx {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts
            .extensions
            .get::<RequestCtx>()
            .cloned()
            .ok_or_else(|| Problem::internal(&"request context missing"))
    }
}

/// The caller's credentials from `Authorization`: `Basic` API key or `Bearer` access token.
pub enum Credentials {
    Basic { id: String, secret: String },
    Bearer(String),
}

const MAX_AUTH_HEADER: usize = 8192;

pub fn credentials(headers: &HeaderMap) -> Result<Option<Credentials>, Problem> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || {
        Problem::new(
            ProblemType::Unauthenticated,
            "The Authorization header is malformed.",
        )
    };
    if value.len() > MAX_AUTH_HEADER {
        return Err(malformed());
    }
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, rest) = value.split_once(' ').ok_or_else(malformed)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = STANDARD.decode(rest).map_err(|_| malformed())?;
        let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
        let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
        Ok(Some(Credentials::Basic {
            id: id.to_owned(),
            secret: secret.to_owned(),
        }))
    } else if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Err(malformed());
        }
        Ok(Some(Credentials::Bearer(rest.to_owned())))
    } else {
        Err(malformed())
    }
}

/// An authenticated request: the principal and what is known of the request.
pub struct Auth {
    pub principal: Arc<Principal>,
    pub ctx: RequestCtx,
}

impl Auth {
    pub fn meta(&self) -> RequestMeta {
        self.ctx.meta()
    }
}

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Problem> {
        let ctx = RequestCtx::from_request_parts(parts, state).await?;
        let meta = ctx.meta();
        let principal = match credentials(&parts.headers)? {
            None => {
                return Err(Problem::new(
                    ProblemType::Unauthenticated,
                    "This operation requires credentials.",
                ));
            }
            Some(Credentials::Basic { id, secret }) => {
                state
                    .identity
                    .authenticate_api_key(&id, &secret, &meta)
                    .await?
            }
            Some(Credentials::Bearer(token)) => {
                state.identity.authenticate_bearer(&token, &meta).await?
            }
        };
        let _ = ctx.principal.set((
            principal.account_id.clone(),
            principal.credential_id.clone(),
        ));
        Ok(Self { principal, ctx })
    }
}

/// A JSON body: `application/json`, within the size limit, every field known.
pub struct ApiJson<T> {
    pub value: T,
    /// The exact bytes received, for idempotency fingerprints.
    pub raw: Bytes,
}

pub async fn read_body(req: Request, limit: usize) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(
            ProblemType::PayloadTooLarge,
            format!("The request body exceeds {limit} bytes."),
        )
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large());
    }
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| too_large())
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for ApiJson<T> {
    type Rejection = Problem;
    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Problem> {
        let empty_ok = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v == "0")
            && media_type(req.headers()).is_none();
        if !empty_ok && media_type(req.headers()).as_deref() != Some("application/json") {
            return Err(Problem::new(
                ProblemType::UnsupportedMediaType,
                "Send the body as Content-Type: application/json.",
            ));
        }
        let raw = read_body(req, state.settings.body_limit).await?;
        let value = parse_json(if raw.is_empty() { b"{}" } else { &raw })?;
        Ok(Self { value, raw })
    }
}

/// Parses JSON, naming the offending field on failure.
pub fn parse_json<T: DeserializeOwned>(raw: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    let value = serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let msg = inner.to_string();
                let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
                if msg.starts_with("unknown field") {
                    let field = msg.split('`').nth(1).unwrap_or("").to_owned();
                    // The path already ends at the unknown field.
                    let field = if path == "." || path.is_empty() {
                        field
                    } else {
                        path
                    };
                    Problem::new(
                        ProblemType::UnknownField,
                        format!("The body contains an unknown field: {field}."),
                    )
                    .with_errors(vec![FieldProblem {
                        field,
                        message: "unknown field".to_owned(),
                    }])
                } else {
                    let field = if path == "." { String::new() } else { path };
                    Problem::new(
                        ProblemType::ValidationFailed,
                        "A field has the wrong type or is missing.",
                    )
                    .with_errors(vec![FieldProblem {
                        field,
                        message: msg,
                    }])
                }
            }
            _ => Problem::new(
                ProblemType::InvalidJson,
                "The body is not well-formed JSON.",
            ),
        }
    })?;
    de.end().map_err(|_| {
        Problem::new(
            ProblemType::InvalidJson,
            "The body has data after the JSON value.",
        )
    })?;
    Ok(value)
}

/// Query parameters, every one known.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(q).map(ApiQuery).map_err(|e| {
            Problem::new(
                ProblemType::MalformedRequest,
                format!("Invalid query string: {e}."),
            )
        })
    }
}

/// Path parameters; a path that does not parse names nothing, so it is "not found".
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|_| Problem::new(ProblemType::NotFound, "No such resource."))
    }
}
