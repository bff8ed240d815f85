//! `/v1/audit`: the tamper-evident audit log — events, inclusion proofs, signed tree heads and
//! consistency proofs (RFC 6962 §2.1). Needs `audit:read`.

use super::PageParams;
use crate::AppState;
use crate::extract::{ApiPath, ApiQuery, Auth};
use crate::problem::{Problem, ProblemBody, ProblemType};
use axum::Json;
use axum::extract::State;
use haven_audit::{AuditError, EventQuery, StoredEvent, b64};
use haven_identity::{AuthMethod, Principal, Right, Scope};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

const AUDIT_READ: Scope = Scope::new("audit", Right::Read);

impl From<AuditError> for Problem {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::NotFound => Problem::new(ProblemType::NotFound, "No such event."),
            AuditError::Invalid(why) => {
                Problem::new(ProblemType::ValidationFailed, format!("{why}."))
            }
            AuditError::Store(e) => Problem::internal(&e),
            AuditError::Crypto(e) => Problem::internal(&e),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Actor {
    pub account_id: Option<String>,
    pub credential_id: Option<String>,
    /// `api_key`, `bearer` or `cli`.
    pub auth_method: Option<String>,
    pub source_addr: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventView {
    #[schema(example = "evt_01jd3k2m4n5p6q7r8s9t0v1w2x")]
    pub id: String,
    /// Position in the Merkle tree (0-based).
    pub leaf_index: u64,
    pub time: String,
    #[schema(example = "key.created")]
    pub action: String,
    /// `success` or `failure`.
    pub outcome: String,
    pub actor: Actor,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    /// Why a failure failed (`bad_secret`, `revoked`, `locked_out`…).
    pub reason: Option<String>,
    pub request_id: Option<String>,
}

impl From<StoredEvent> for AuditEventView {
    fn from(e: StoredEvent) -> Self {
        Self {
            id: e.id,
            leaf_index: e.leaf_index,
            time: haven_platform::clock::to_rfc3339(e.at_ms),
            action: e.action,
            outcome: e.outcome,
            actor: Actor {
                account_id: e.account_id,
                credential_id: e.credential_id,
                auth_method: e.auth_method,
                source_addr: e.source_addr,
                user_agent: e.user_agent,
            },
            resource_type: e.resource_type,
            resource_id: e.resource_id,
            reason: e.reason,
            request_id: e.request_id,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventList {
    pub items: Vec<AuditEventView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventFilters {
    /// The acting account (the caller's or one of its subaccounts).
    pub account_id: Option<String>,
    pub credential_id: Option<String>,
    /// For example `auth.api_key`, `key.revoked`.
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    /// `success` or `failure`.
    pub outcome: Option<String>,
    /// RFC 3339; events at or after.
    pub since: Option<String>,
    /// RFC 3339; events before.
    pub until: Option<String>,
    pub page_size: Option<u32>,
    pub cursor: Option<String>,
}

/// The root account is the operator's own: its credentials see the whole log, including system
/// events and failures that name no account. Every other account sees its own tree.
fn sees_everything(st: &AppState, p: &Principal) -> bool {
    p.method == AuthMethod::Operator || p.account_id == st.root_account_id
}

fn visible_to(st: &AppState, p: &Principal) -> Option<String> {
    (!sees_everything(st, p)).then(|| p.account_id.clone())
}

/// Whether the caller may see an event: its own account's or a subaccount's.
async fn may_see(st: &AppState, p: &Principal, e: &StoredEvent) -> Result<bool, Problem> {
    if sees_everything(st, p) {
        return Ok(true);
    }
    let Some(account) = &e.account_id else {
        return Ok(false);
    };
    // Tenancy alone decides; the caller's scopes (audit:read was checked) do not.
    st.identity
        .may_manage(p, account)
        .await
        .map_err(Problem::from)
}

/// List audit events, oldest first.
#[utoipa::path(get, path = "/v1/audit/events", tag = "audit", params(EventFilters),
    responses((status = 200, description = "OK", body = AuditEventList), (status = 400, description = "Malformed request", body = ProblemBody),
        (status = 401, description = "Not authenticated", body = ProblemBody), (status = 403, description = "Authenticated but not allowed", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_events(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiQuery(f): ApiQuery<EventFilters>,
) -> Result<Json<AuditEventList>, Problem> {
    auth.principal.require(AUDIT_READ)?;
    let page = PageParams {
        page_size: f.page_size,
        cursor: f.cursor.clone(),
    }
    .parse()?;
    let time = |field: &str, v: &Option<String>| -> Result<Option<i64>, Problem> {
        v.as_deref()
            .map(|s| {
                haven_platform::clock::parse_rfc3339(s).ok_or_else(|| {
                    Problem::new(
                        ProblemType::MalformedRequest,
                        format!("{field} must be an RFC 3339 timestamp."),
                    )
                })
            })
            .transpose()
    };
    let q = EventQuery {
        visible_to: visible_to(&st, &auth.principal),
        account_id: f.account_id,
        credential_id: f.credential_id,
        action: f.action,
        resource_type: f.resource_type,
        resource_id: f.resource_id,
        outcome: f.outcome,
        since_ms: time("since", &f.since)?,
        until_ms: time("until", &f.until)?,
    };
    let rows = st
        .audit
        .store()
        .list(&q, &page)
        .await
        .map_err(|e| Problem::internal(&e))?;
    let page = haven_platform::page::Page::from_rows(
        rows.into_iter()
            .map(|r| (format!("i{}", r.leaf_index), r))
            .collect(),
        &page,
        |(k, _)| k.as_str(),
    );
    Ok(Json(AuditEventList {
        items: page.items.into_iter().map(|(_, e)| e.into()).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InclusionProofView {
    pub event_id: String,
    pub leaf_index: u64,
    pub tree_size: u64,
    /// Base64 of the exact bytes hashed as SHA-256(0x00 ‖ leaf).
    pub leaf: String,
    /// Base64 SHA-256 hashes, from the leaf's sibling up (RFC 6962 §2.1.1).
    pub audit_path: Vec<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProofParams {
    /// The tree size to prove against (default: the latest signed tree head).
    pub tree_size: Option<u64>,
}

/// An event's inclusion proof.
#[utoipa::path(get, path = "/v1/audit/events/{event_id}/proof", tag = "audit", params(("event_id" = String, Path), ProofParams),
    responses((status = 200, description = "OK", body = InclusionProofView), (status = 401, description = "Not authenticated", body = ProblemBody),
        (status = 404, description = "Not found (or not yours)", body = ProblemBody), (status = 422, description = "Valid JSON that breaks a rule", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn event_proof(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiPath(event_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ProofParams>,
) -> Result<Json<InclusionProofView>, Problem> {
    auth.principal.require(AUDIT_READ)?;
    if !haven_platform::id::is_valid("evt", &event_id) {
        return Err(AuditError::NotFound.into());
    }
    let event = st
        .audit
        .store()
        .event(&event_id)
        .await
        .map_err(|e| Problem::internal(&e))?
        .ok_or(AuditError::NotFound)?;
    if !may_see(&st, &auth.principal, &event).await? {
        return Err(AuditError::NotFound.into());
    }
    let proof = st.audit.inclusion(event, q.tree_size).await?;
    let leaf = b64(&proof.event.leaf());
    Ok(Json(InclusionProofView {
        event_id: proof.event.id,
        leaf_index: proof.event.leaf_index,
        tree_size: proof.tree_size,
        leaf,
        audit_path: proof.audit_path.iter().map(|h| b64(h)).collect(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TreeHeadView {
    pub tree_size: u64,
    /// Milliseconds since the Unix epoch, as signed.
    pub timestamp: i64,
    pub root_hash: String,
    /// Base64 Ed25519 signature over the RFC 6962 §3.5 TreeHeadSignature serialization:
    /// 0x00 (v1) ‖ 0x01 (tree_hash) ‖ timestamp (u64 BE) ‖ tree_size (u64 BE) ‖ root_hash.
    pub signature: String,
    /// Base64 of the raw 32-byte Ed25519 public key.
    pub public_key: String,
    #[schema(example = "Ed25519")]
    pub signature_algorithm: &'static str,
}

/// The latest signed tree head.
#[utoipa::path(get, path = "/v1/audit/tree-head", tag = "audit",
    responses((status = 200, description = "OK", body = TreeHeadView), (status = 401, description = "Not authenticated", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn tree_head(
    State(st): State<Arc<AppState>>,
    auth: Auth,
) -> Result<Json<TreeHeadView>, Problem> {
    auth.principal.require(AUDIT_READ)?;
    let h = st.audit.tree_head().await?;
    Ok(Json(TreeHeadView {
        tree_size: h.tree_size,
        timestamp: h.timestamp_ms,
        root_hash: b64(&h.root_hash),
        signature: b64(&h.signature),
        public_key: b64(&st.audit.public_key()),
        signature_algorithm: "Ed25519",
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyParams {
    pub first: u64,
    pub second: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConsistencyView {
    pub first: u64,
    pub second: u64,
    /// Base64 hashes (RFC 6962 §2.1.2 PROOF(first, D[second])).
    pub consistency: Vec<String>,
}

/// A consistency proof between two tree sizes.
#[utoipa::path(get, path = "/v1/audit/consistency", tag = "audit", params(ConsistencyParams),
    responses((status = 200, description = "OK", body = ConsistencyView), (status = 400, description = "Malformed request", body = ProblemBody),
        (status = 401, description = "Not authenticated", body = ProblemBody), (status = 422, description = "Valid JSON that breaks a rule", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn consistency(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ConsistencyParams>,
) -> Result<Json<ConsistencyView>, Problem> {
    auth.principal.require(AUDIT_READ)?;
    let proof = st.audit.consistency(q.first, q.second).await?;
    Ok(Json(ConsistencyView {
        first: q.first,
        second: q.second,
        consistency: proof.iter().map(|h| b64(h)).collect(),
    }))
}
