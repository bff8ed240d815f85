//! The storage port of the identity domain. Adapters (SQLite, PostgreSQL) implement it; the
//! domain never sees SQL.

use crate::model::{Account, AccountStatus, ApiKey, SigningKeyRecord};
use haven_platform::events::OutboxEvent;
use haven_platform::page::PageRequest;
use haven_platform::store::StoreResult;

#[async_trait::async_trait]
pub trait IdentityStore: Send + Sync {
    /// Creates the root account and its first key unless a root exists. Safe when several nodes
    /// start at once: exactly one wins. Returns whether this call created them.
    async fn bootstrap(&self, root: &Account, key: &ApiKey) -> StoreResult<bool>;
    async fn root_account(&self) -> StoreResult<Option<Account>>;

    /// Every change that reports events writes them to the webhook outbox in the same
    /// transaction: committed together or not at all.
    async fn insert_account(&self, account: &Account, events: &[OutboxEvent]) -> StoreResult<()>;
    async fn get_account(&self, id: &str) -> StoreResult<Option<Account>>;
    /// The account `viewer` and its direct subaccounts, by id.
    async fn list_accounts(&self, viewer: &str, page: &PageRequest) -> StoreResult<Vec<Account>>;
    /// Every account, by id (operator commands).
    async fn list_all_accounts(&self, page: &PageRequest) -> StoreResult<Vec<Account>>;
    async fn update_account(
        &self,
        id: &str,
        name: Option<&str>,
        status: Option<AccountStatus>,
        now_ms: i64,
        events: &[OutboxEvent],
    ) -> StoreResult<Option<Account>>;

    async fn insert_key(&self, key: &ApiKey, events: &[OutboxEvent]) -> StoreResult<()>;
    async fn get_key(&self, id: &str) -> StoreResult<Option<ApiKey>>;
    async fn list_keys(&self, account_id: &str, page: &PageRequest) -> StoreResult<Vec<ApiKey>>;
    /// Replaces the secret hash unless the key is revoked. Returns the key after the change.
    async fn rotate_key(
        &self,
        id: &str,
        new_hash: &[u8],
        previous: Option<(&[u8], i64)>,
        now_ms: i64,
        events: &[OutboxEvent],
    ) -> StoreResult<Option<ApiKey>>;
    /// Marks the key revoked (idempotent). Returns the key after the change.
    async fn revoke_key(
        &self,
        id: &str,
        now_ms: i64,
        events: &[OutboxEvent],
    ) -> StoreResult<Option<ApiKey>>;
    async fn touch_key(&self, id: &str, at_ms: i64) -> StoreResult<()>;

    /// Counts a failed authentication of `subject` (`key:…` or `addr:…`) in a fixed window and
    /// locks it when `threshold` is reached. Shared by every node. Returns the lock's end if
    /// the subject is now locked.
    async fn record_auth_failure(
        &self,
        subject: &str,
        now_ms: i64,
        window_ms: i64,
        threshold: i64,
        lockout_ms: i64,
    ) -> StoreResult<Option<i64>>;
    /// The latest lock end among `subjects` that is still in the future.
    async fn locked_until(&self, subjects: &[String], now_ms: i64) -> StoreResult<Option<i64>>;

    /// Adds a token id to the shared denylist until the token would have expired anyway.
    async fn revoke_token(&self, jti: &str, expires_at_ms: i64) -> StoreResult<()>;
    async fn is_token_revoked(&self, jti: &str) -> StoreResult<bool>;
    /// Forgets denylist entries and failure counters that can no longer matter.
    async fn purge_expired(&self, now_ms: i64) -> StoreResult<u64>;

    async fn list_signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>>;
    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<()>;

    /// A named secret sealed under the master key (the API-key pepper).
    async fn get_system_secret(&self, name: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Stores it unless one exists; returns whether this call stored it.
    async fn put_system_secret(&self, name: &str, sealed: &[u8], now_ms: i64) -> StoreResult<bool>;
}
