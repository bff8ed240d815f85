//! `Idempotency-Key` on creates: a replay returns the first response; the same key with another
//! request is refused. Claims are shared by every node through the store.

use crate::AppState;
use crate::problem::{Problem, ProblemType};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use haven_platform::store::{IdempotencyBegin, IdempotencyClaim};
use haven_vault::FieldRef;
use serde::Serialize;

/// How long a key is remembered.
const RETENTION_MS: i64 = 24 * 3600 * 1000;

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn field<'a>(account_id: &'a str, key: &'a str) -> FieldRef<'a> {
    FieldRef {
        account_id,
        table: "idempotency_keys",
        column: "body",
        row_id: key,
    }
}

/// Runs `create` at most once per `Idempotency-Key` (per account). Only successful responses
/// are remembered: a refused request may be corrected and retried under the same key.
pub async fn once<T, F>(
    state: &AppState,
    account_id: &str,
    headers: &HeaderMap,
    route: &str,
    raw_body: &[u8],
    status: StatusCode,
    create: F,
) -> Result<Response, Problem>
where
    T: Serialize,
    F: Future<Output = Result<T, Problem>>,
{
    let Some(key) = headers.get("idempotency-key") else {
        let value = create.await?;
        return Ok(json_response(
            status,
            serde_json::to_vec(&value).map_err(|e| Problem::internal(&e))?,
        ));
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            Problem::new(
                ProblemType::MalformedRequest,
                "Idempotency-Key must be 1 to 255 visible ASCII characters.",
            )
        })?;
    let now = haven_platform::clock::now_ms();
    let claim = IdempotencyClaim {
        account_id: account_id.to_owned(),
        key: key.to_owned(),
        fingerprint: haven_crypto::sha256(&[route.as_bytes(), b"\0", raw_body]).to_vec(),
        now_ms: now,
        expires_ms: now + RETENTION_MS,
        // Past the request time limit (plus a margin) no request can still hold the claim.
        stale_before_ms: now
            - i64::try_from(state.settings.request_timeout.as_millis()).unwrap_or(i64::MAX / 4)
            - 5_000,
    };
    let store = &state.idempotency;
    match store
        .begin(&claim)
        .await
        .map_err(|e| Problem::internal(&e))?
    {
        IdempotencyBegin::Claimed => {}
        IdempotencyBegin::Replay { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            // Bodies are stored sealed (they may hold PHI or a new key's secret); a body stored
            // before sealing existed is plain JSON.
            let body = if body.first() == Some(&b'{') {
                body
            } else {
                state
                    .vault
                    .open_for_account(&field(account_id, key), &body)
                    .await?
            };
            let mut res = json_response(status, body);
            res.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(res);
        }
        IdempotencyBegin::InProgress => {
            return Err(Problem::new(
                ProblemType::IdempotencyKeyInUse,
                "A request with this Idempotency-Key is in progress.",
            ));
        }
        IdempotencyBegin::Mismatch => {
            return Err(Problem::new(
                ProblemType::IdempotencyKeyReused,
                "This Idempotency-Key was used for a different request.",
            ));
        }
    }
    match create.await {
        Ok(value) => {
            let body = serde_json::to_vec(&value).map_err(|e| Problem::internal(&e))?;
            let sealed = state
                .vault
                .seal_for_account(&field(account_id, key), &body)
                .await?;
            store
                .complete(&claim, status.as_u16(), &sealed)
                .await
                .map_err(|e| Problem::internal(&e))?;
            Ok(json_response(status, body))
        }
        Err(problem) => {
            if let Err(e) = store.abandon(&claim).await {
                tracing::error!(error = %e, "releasing an idempotency claim failed");
            }
            Err(problem)
        }
    }
}
