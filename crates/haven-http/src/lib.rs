//! The HTTP face of Haven: routes, extractors, problem+json, idempotency, OpenAPI, and the
//! request middleware (request ids, security headers, metrics, access log). Handlers only
//! translate between HTTP and the domain services.

pub mod extract;
pub mod idempotency;
pub mod problem;
mod request_metrics;
pub mod routes;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use extract::RequestCtx;
use haven_identity::Identity;
use haven_platform::Secret;
use haven_platform::store::{HealthCheck, IdempotencyStore};
use ipnet::IpNet;
use metrics_exporter_prometheus::PrometheusHandle;
use problem::{Problem, ProblemType};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The TCP peer of a connection, inserted by the server's accept loop.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub body_limit: usize,
    pub request_timeout: Duration,
    pub tls: bool,
    /// `Strict-Transport-Security`, made once at start; `None` when serving plain HTTP.
    pub hsts: Option<HeaderValue>,
    pub trusted_proxies: Vec<IpNet>,
    pub public_url: String,
    pub metrics_token: Option<Secret<String>>,
}

pub struct AppState {
    pub identity: Arc<Identity>,
    pub vault: Arc<haven_vault::Vault>,
    pub contacts: Arc<haven_contacts::Contacts>,
    pub webhooks: Arc<haven_webhooks::Webhooks>,
    pub messaging: Arc<haven_messaging::Messaging>,
    pub dispatch: Arc<haven_dispatch::Dispatcher>,
    pub verify: Arc<haven_verify::Verifier>,
    pub factors: Arc<haven_verify::factors::Factors>,
    pub reports: Arc<haven_reports::Reports>,
    pub audit: Arc<haven_audit::AuditLog>,
    /// The operator's account, made at bootstrap.
    pub root_account_id: String,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub health: Arc<dyn HealthCheck>,
    pub metrics: Option<PrometheusHandle>,
    pub settings: HttpSettings,
    /// Cleared when shutdown begins, so that load balancers stop sending traffic.
    pub ready: AtomicBool,
    pub openapi_json: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Haven",
        description = "Self-hosted communications APIs for healthcare. Authenticate with an API key (HTTP Basic, key id and secret) or an OAuth 2.0 access token (Bearer). Errors are RFC 9457 problem details.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "accounts", description = "Accounts and subaccounts (departments)"),
        (name = "keys", description = "API keys"),
        (name = "oauth", description = "OAuth 2.0 client credentials"),
        (name = "contacts", description = "Data subjects (patients and other contacts), encrypted under per-subject keys"),
        (name = "messages", description = "SMS and email: send, track delivery, receive replies"),
        (name = "senders", description = "Numbers, sender ids and addresses an account sends from"),
        (name = "templates", description = "Message templates with an approval state"),
        (name = "verify", description = "One-time codes over SMS and email with fail-over between channels"),
        (name = "reports", description = "The usage ledger: one record per message a carrier took, priced from the operator's rate card"),
        (name = "dispatch", description = "Workflows that fail a message over from channel to channel until the patient confirms"),
        (name = "webhooks", description = "Signed webhooks (Standard Webhooks) with a durable outbox, retries and replay"),
        (name = "audit", description = "The tamper-evident audit log (RFC 6962 Merkle tree)"),
        (name = "system", description = "Health, metrics and documentation"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.bearer_format = Some("JWT".to_owned());
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
    }
}

/// Every route with its documentation; the two cannot drift apart.
fn api() -> OpenApiRouter<Arc<AppState>> {
    use routes::{
        accounts, audit, contacts, dispatch, factors, keys, messages, oauth, reports, system,
        templates, verify, webhooks,
    };
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(accounts::create_account, accounts::list_accounts))
        .routes(routes!(accounts::get_account, accounts::update_account))
        .routes(routes!(keys::create_key, keys::list_keys))
        .routes(routes!(keys::get_key, keys::revoke_key))
        .routes(routes!(keys::rotate_key))
        .routes(routes!(contacts::create_contact, contacts::list_contacts))
        .routes(routes!(contacts::search_contacts))
        .routes(routes!(contacts::get_contact, contacts::update_contact))
        .routes(routes!(contacts::erase_contact))
        .routes(routes!(messages::send_message, messages::list_messages))
        .routes(routes!(messages::get_message))
        .routes(routes!(messages::create_sender, messages::list_senders))
        .routes(routes!(messages::get_sender, messages::delete_sender))
        .routes(routes!(messages::record_consent))
        .routes(routes!(messages::search_consents))
        .routes(routes!(
            templates::create_template,
            templates::list_templates
        ))
        .routes(routes!(templates::get_template, templates::delete_template))
        .routes(routes!(templates::approve_template))
        .routes(routes!(templates::reject_template))
        .routes(routes!(templates::get_policy, templates::put_policy))
        .routes(routes!(
            dispatch::create_dispatch,
            dispatch::list_dispatches
        ))
        .routes(routes!(dispatch::get_dispatch))
        .routes(routes!(dispatch::cancel_dispatch))
        .routes(routes!(verify::start_verification))
        .routes(routes!(verify::get_verification))
        .routes(routes!(verify::check_code))
        .routes(routes!(verify::cancel_verification))
        .routes(routes!(verify::next_channel))
        .routes(routes!(
            verify::get_verify_policy,
            verify::put_verify_policy
        ))
        .routes(routes!(verify::list_blocked_prefixes))
        .routes(routes!(verify::unblock_prefix))
        .routes(routes!(factors::enrol_factor, factors::list_factors))
        .routes(routes!(factors::get_factor, factors::delete_factor))
        .routes(routes!(factors::confirm_factor))
        .routes(routes!(factors::check_factor))
        .routes(routes!(factors::recover_factor))
        .routes(routes!(reports::list_usage))
        .routes(routes!(reports::usage_summary))
        .routes(routes!(webhooks::create_endpoint, webhooks::list_endpoints))
        .routes(routes!(
            webhooks::get_endpoint,
            webhooks::update_endpoint,
            webhooks::delete_endpoint
        ))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::event_types))
        .routes(routes!(webhooks::list_webhook_events))
        .routes(routes!(webhooks::get_webhook_event))
        .routes(routes!(webhooks::list_attempts))
        .routes(routes!(webhooks::replay_event))
        .routes(routes!(webhooks::list_deliveries))
        .routes(routes!(audit::list_events))
        .routes(routes!(audit::event_proof))
        .routes(routes!(audit::tree_head))
        .routes(routes!(audit::consistency))
        .routes(routes!(oauth::token))
        .routes(routes!(oauth::revoke))
        .routes(routes!(oauth::introspect))
        .routes(routes!(oauth::metadata))
        .routes(routes!(oauth::jwks))
        .routes(routes!(system::healthz))
        .routes(routes!(system::readyz))
        .routes(routes!(system::metrics))
        .routes(routes!(system::openapi))
        .routes(routes!(system::problem_page))
}

/// The OpenAPI document as served.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = api().split_for_parts();
    let components = doc.components.get_or_insert_with(Default::default);
    components
        .schemas
        .entry("ProblemBody".to_owned())
        .or_insert_with(|| {
            utoipa::openapi::RefOr::T(
                <problem::ProblemBody as utoipa::PartialSchema>::schema().into(),
            )
        });
    doc
}

/// Builds the application. `state.openapi_json` should hold [`openapi_document`] rendered.
pub fn app(state: Arc<AppState>) -> axum::Router {
    let (router, _) = api().split_for_parts();
    router
        .fallback(routes::system::no_such_route)
        .method_not_allowed_fallback(routes::system::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            context,
        ))
        .with_state(state)
}

/// The source address: the TCP peer, or, when the peer is a trusted proxy, the last address in
/// `X-Forwarded-For` that is not itself a trusted proxy.
fn source_address(req: &Request, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip())?;
    if trusted.is_empty() || !trusted.iter().any(|n| n.contains(&peer)) {
        return Some(peer);
    }
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let mut hops: Vec<IpAddr> = forwarded
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    while let Some(hop) = hops.pop() {
        if !trusted.iter().any(|n| n.contains(&hop)) {
            return Some(hop);
        }
    }
    Some(peer)
}

/// Request ids, source address, a time limit, security headers, metrics and the access log.
async fn context(State(st): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = haven_platform::id::new_id("req");
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.chars()
                .filter(|c| !c.is_control())
                .take(256)
                .collect::<String>()
        });
    let principal = Arc::new(OnceLock::new());
    let ctx = RequestCtx {
        request_id: request_id.clone(),
        source: source_address(&req, &st.settings.trusted_proxies),
        user_agent,
        principal: Arc::clone(&principal),
    };
    req.extensions_mut().insert(ctx);
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let timeout = st.settings.request_timeout;
    let audit = haven_platform::audit::RequestAudit::new();
    let mut res = problem::REQUEST_ID
        .scope(
            request_id.clone(),
            audit.scope(async move {
                match tokio::time::timeout(timeout, next.run(req)).await {
                    Ok(res) => res,
                    Err(_) => Problem::new(
                        ProblemType::ServiceUnavailable,
                        "The request took too long.",
                    )
                    .into_response(),
                }
            }),
        )
        .await;
    audit.finish().await;
    let status = res.status().as_u16();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-request-id", v);
    }
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
    if let Some(v) = &st.settings.hsts {
        h.insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
    }
    let elapsed = started.elapsed();
    let route_label = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    request_metrics::record(&method, route_label, status, elapsed.as_secs_f64());
    let (account, credential) = principal.get().cloned().unwrap_or_default();
    tracing::info!(
        target: "haven::access",
        request_id = %request_id,
        method = %method,
        route = %route_label,
        status,
        latency_us = elapsed.as_micros() as u64,
        account_id = %account,
        credential_id = %credential,
        "request"
    );
    res
}
