//! What every storage adapter reports, whatever the backend.

/// A storage failure. Domain services map `Backend` to a 5xx (the cause goes to the log, never to
/// the response); `Conflict` is a uniqueness clash the caller may turn into a 409.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend failure: {0}")]
    Backend(String),
    #[error("uniqueness conflict")]
    Conflict,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Idempotency of creates (`Idempotency-Key`), shared by every API and every node.
#[async_trait::async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims `key` for this request, or reports what an earlier request with the key did.
    async fn begin(&self, claim: &IdempotencyClaim) -> StoreResult<IdempotencyBegin>;
    /// Stores the response of a claimed request so that replays return it.
    async fn complete(&self, claim: &IdempotencyClaim, status: u16, body: &[u8])
    -> StoreResult<()>;
    /// Releases a claim whose request failed on the server's side, so the client may retry.
    async fn abandon(&self, claim: &IdempotencyClaim) -> StoreResult<()>;
}

#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    pub account_id: String,
    pub key: String,
    /// SHA-256 of method, route and body: the same key with another request is refused.
    pub fingerprint: Vec<u8>,
    pub now_ms: i64,
    pub expires_ms: i64,
    /// A claim still unfinished from before this time belonged to a request that can no longer
    /// be running (it outlived the request time limit: the server crashed mid-request); it may
    /// be taken over.
    pub stale_before_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// First use: run the request.
    Claimed,
    /// Same key, same request, finished: return this response again.
    Replay { status: u16, body: Vec<u8> },
    /// Same key, same request, still running elsewhere.
    InProgress,
    /// Same key, different request.
    Mismatch,
}

/// Readiness of the backing store, for `/readyz`.
#[async_trait::async_trait]
pub trait HealthCheck: Send + Sync {
    async fn ping(&self) -> StoreResult<()>;
}
