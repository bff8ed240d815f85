//! OAuth 2.0 client credentials (RFC 6749 §4.4) with JWT access tokens, revocation (RFC 7009),
//! introspection (RFC 7662), server metadata (RFC 8414) and the JWKS. Errors here use the
//! OAuth error format that standard clients expect, not problem+json.

use crate::AppState;
use crate::extract::{Credentials, RequestCtx, credentials, read_body};
use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use haven_identity::{IdentityError, Principal};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use utoipa::ToSchema;

/// An RFC 6749 §5.2 error.
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthError {
    /// `invalid_request`, `invalid_client`, `invalid_scope`, `unsupported_grant_type`…
    pub error: &'static str,
    pub error_description: String,
    #[serde(skip)]
    status: u16,
    #[serde(skip)]
    basic_challenge: bool,
    #[serde(skip)]
    retry_after: Option<u64>,
}

impl OAuthError {
    fn new(status: u16, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            error,
            error_description: description.into(),
            status,
            basic_challenge: false,
            retry_after: None,
        }
    }
    fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", d)
    }
}

impl From<IdentityError> for OAuthError {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::Unauthenticated => Self {
                basic_challenge: true,
                ..Self::new(401, "invalid_client", "client authentication failed")
            },
            IdentityError::LockedOut {
                retry_after_seconds,
            } => Self {
                retry_after: Some(retry_after_seconds),
                ..Self::new(
                    429,
                    "invalid_client",
                    "too many failed attempts; retry later",
                )
            },
            IdentityError::AddressNotAllowed => Self::new(
                401,
                "invalid_client",
                "source address not allowed for this client",
            ),
            IdentityError::InvalidScope => Self::new(
                400,
                "invalid_scope",
                "requested scopes are unknown or not granted to this client",
            ),
            other => {
                let p = crate::problem::Problem::from(other);
                Self::new(p.kind.status().as_u16(), "server_error", p.detail)
            }
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut res = (status, Json(&self)).into_response();
        let h = res.headers_mut();
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.basic_challenge {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"haven\""),
            );
        }
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        res
    }
}

/// A form body (`application/x-www-form-urlencoded`) with each parameter at most once.
async fn form(
    req: Request,
    limit: usize,
) -> Result<(axum::http::HeaderMap, HashMap<String, String>), OAuthError> {
    let headers = req.headers().clone();
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let body = read_body(req, limit.min(64 * 1024))
        .await
        .map_err(|_| OAuthError::invalid_request("the body is too large"))?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|_| OAuthError::invalid_request("the body is not a valid form"))?;
    let mut map = HashMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        if map.insert(k.clone(), v).is_some() {
            return Err(OAuthError::invalid_request(format!(
                "parameter {k} is repeated"
            )));
        }
    }
    Ok((headers, map))
}

/// RFC 6749 §2.3.1: `client_secret_basic` (id and secret form-urlencoded inside Basic) or
/// `client_secret_post`, never both.
fn client_credentials(
    headers: &axum::http::HeaderMap,
    form: &HashMap<String, String>,
) -> Result<(String, String), OAuthError> {
    let in_form = (form.get("client_id"), form.get("client_secret"));
    let basic = match credentials(headers) {
        Ok(Some(Credentials::Basic { id, secret })) => Some((id, secret)),
        Ok(None) => None,
        _ => return Err(OAuthError::from(IdentityError::Unauthenticated)),
    };
    match (basic, in_form) {
        (Some(_), (Some(_), _) | (_, Some(_))) => Err(OAuthError::invalid_request(
            "use one client authentication method, not two",
        )),
        (Some((id, secret)), _) => {
            let decode = |s: &str| {
                let wrapped = format!("v={s}");
                serde_urlencoded::from_str::<HashMap<String, String>>(&wrapped)
                    .ok()
                    .and_then(|mut m| m.remove("v"))
            };
            Ok((decode(&id).unwrap_or(id), decode(&secret).unwrap_or(secret)))
        }
        (None, (Some(id), Some(secret))) => Ok((id.clone(), secret.clone())),
        _ => Err(OAuthError::from(IdentityError::Unauthenticated)),
    }
}

async fn authenticate_client(
    st: &AppState,
    ctx: &RequestCtx,
    headers: &axum::http::HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Arc<Principal>, OAuthError> {
    let (id, secret) = client_credentials(headers, form)?;
    let p = st
        .identity
        .authenticate_api_key(&id, &secret, &ctx.meta())
        .await?;
    let _ = ctx
        .principal
        .set((p.account_id.clone(), p.credential_id.clone()));
    Ok(p)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    pub expires_in: u64,
    /// The granted scopes: those requested, narrowed to the client's grant.
    pub scope: String,
}

/// The token endpoint (client credentials grant).
#[utoipa::path(post, path = "/oauth2/token", tag = "oauth",
    request_body(content_type = "application/x-www-form-urlencoded", description = "grant_type=client_credentials, optional scope (space-separated); client authentication by HTTP Basic or client_id/client_secret fields."),
    responses((status = 200, description = "OK", body = TokenResponse), (status = 400, description = "Malformed request", body = OAuthError), (status = 401, description = "Not authenticated", body = OAuthError), (status = 429, description = "Too many failed attempts (see Retry-After)", body = OAuthError)))]
pub async fn token(
    State(st): State<Arc<AppState>>,
    ctx: RequestCtx,
    req: Request,
) -> Result<Response, OAuthError> {
    let (headers, form) = form(req, st.settings.body_limit).await?;
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(_) => {
            return Err(OAuthError::new(
                400,
                "unsupported_grant_type",
                "only client_credentials is supported",
            ));
        }
        None => return Err(OAuthError::invalid_request("grant_type is required")),
    }
    let (id, secret) = client_credentials(&headers, &form)?;
    let issued = st
        .identity
        .issue_token(
            &id,
            &secret,
            form.get("scope").map(String::as_str),
            &ctx.meta(),
        )
        .await?;
    let _ = ctx.principal.set((String::new(), id));
    let mut res = Json(TokenResponse {
        access_token: issued.access_token,
        token_type: "Bearer",
        expires_in: issued.expires_in,
        scope: issued.scope,
    })
    .into_response();
    res.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(res)
}

/// Revoke an access token (RFC 7009). Unknown or foreign tokens are answered the same way.
#[utoipa::path(post, path = "/oauth2/revoke", tag = "oauth",
    request_body(content_type = "application/x-www-form-urlencoded", description = "token, optional token_type_hint; client authentication as for /oauth2/token."),
    responses((status = 200, description = "The token is revoked, or was not valid."), (status = 400, description = "Malformed request", body = OAuthError), (status = 401, description = "Not authenticated", body = OAuthError)))]
pub async fn revoke(
    State(st): State<Arc<AppState>>,
    ctx: RequestCtx,
    req: Request,
) -> Result<Response, OAuthError> {
    let (headers, form) = form(req, st.settings.body_limit).await?;
    let client = authenticate_client(&st, &ctx, &headers, &form).await?;
    let token = form
        .get("token")
        .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    st.identity
        .revoke_token(&client, token, &ctx.meta())
        .await?;
    Ok(StatusCode::OK.into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Introspection {
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The account the token acts for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
}

/// Introspect a token (RFC 7662): active only if valid and of the client's account tree.
#[utoipa::path(post, path = "/oauth2/introspect", tag = "oauth",
    request_body(content_type = "application/x-www-form-urlencoded", description = "token; client authentication as for /oauth2/token."),
    responses((status = 200, description = "OK", body = Introspection), (status = 400, description = "Malformed request", body = OAuthError), (status = 401, description = "Not authenticated", body = OAuthError)))]
pub async fn introspect(
    State(st): State<Arc<AppState>>,
    ctx: RequestCtx,
    req: Request,
) -> Result<Response, OAuthError> {
    let (headers, form) = form(req, st.settings.body_limit).await?;
    let client = authenticate_client(&st, &ctx, &headers, &form).await?;
    let token = form
        .get("token")
        .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    let body = match st.identity.introspect(&client, token, &ctx.meta()).await? {
        None => Introspection {
            active: false,
            scope: None,
            client_id: None,
            token_type: None,
            exp: None,
            iat: None,
            nbf: None,
            sub: None,
            aud: None,
            iss: None,
            jti: None,
            account_id: None,
        },
        Some(c) => Introspection {
            active: true,
            scope: Some(c.scope),
            client_id: Some(c.client_id),
            token_type: Some("Bearer"),
            exp: Some(c.exp),
            iat: Some(c.iat),
            nbf: Some(c.nbf),
            sub: Some(c.sub),
            aud: Some(c.aud),
            iss: Some(c.iss),
            jti: Some(c.jti),
            account_id: Some(c.acc),
        },
    };
    Ok(Json(body).into_response())
}

/// Authorization server metadata (RFC 8414).
#[utoipa::path(get, path = "/.well-known/oauth-authorization-server", tag = "oauth",
    responses((status = 200, description = "RFC 8414 metadata", body = Object)))]
pub async fn metadata(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let base = &st.settings.public_url;
    Json(serde_json::json!({
        "issuer": st.identity.tokens().issuer(),
        "token_endpoint": format!("{base}/oauth2/token"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "revocation_endpoint": format!("{base}/oauth2/revoke"),
        "introspection_endpoint": format!("{base}/oauth2/introspect"),
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": ["token"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "token_endpoint_auth_signing_alg_values_supported": ["EdDSA"],
        "scopes_supported": haven_identity::Scope::all_admin().iter().flat_map(|s| {
            let api = s.to_string();
            let api = api.trim_end_matches(":admin").to_owned();
            [format!("{api}:read"), format!("{api}:write"), format!("{api}:admin")]
        }).collect::<Vec<_>>(),
        "service_documentation": format!("{base}/v1/openapi.json"),
    }))
}

/// The public keys that verify access tokens (RFC 7517).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "oauth", responses((status = 200, description = "JWK Set", body = Object)))]
pub async fn jwks(State(st): State<Arc<AppState>>) -> Response {
    let mut res = Json(st.identity.tokens().jwks()).into_response();
    // Verifiers may cache briefly; rotation keeps the old key published long past this.
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    res
}
