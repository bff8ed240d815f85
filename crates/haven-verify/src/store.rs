//! The Verify storage port. A pending verification row is its own durable timer (`wake_at_ms`,
//! leased by the worker that moves it to its next channel or expires it). Codes are kept only
//! as keyed hashes.

use haven_platform::events::OutboxEvent;
use haven_platform::store::StoreResult;

#[derive(Debug, Clone)]
pub struct VerificationRow {
    pub id: String,
    pub account_id: String,
    /// `pending`, `completed`, `failed`, `expired`, `cancelled`, `superseded`.
    pub status: String,
    pub brand: String,
    pub locale: String,
    pub code_length: i64,
    pub app_domain: Option<String>,
    /// The channels and addresses, sealed (PHI).
    pub workflow_ct: Vec<u8>,
    pub contact_id: Option<String>,
    /// Blind index of the first recipient: one pending verification per recipient, and the
    /// per-recipient limit.
    pub recipient_bidx: Vec<u8>,
    pub dest_prefix: Option<String>,
    pub client_ip_bidx: Option<Vec<u8>>,
    pub step_count: i64,
    pub current_step: i64,
    /// Keyed hash of the current code (the one the latest message carries).
    pub code_hash: Option<Vec<u8>>,
    pub attempts: i64,
    pub max_attempts: i64,
    pub expiry_ms: i64,
    pub channel_timeout_ms: i64,
    /// When the next channel is tried, if there is one.
    pub next_step_at_ms: Option<i64>,
    /// When the current code stops working.
    pub expires_at_ms: i64,
    pub wake_at_ms: i64,
    pub created_by: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub final_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyStepRow {
    pub verification_id: String,
    pub step_index: i64,
    pub channel: String,
    /// Chosen when the verification is created, so a step retried after a crash finds its
    /// message instead of sending another.
    pub message_id: String,
    /// `pending`, `sending` (code chosen, message being stored), `sent`, `skipped`.
    pub status: String,
    pub reason: Option<String>,
    pub sent_at_ms: Option<i64>,
}

/// What a check found when it took an attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub attempts: i64,
    pub max_attempts: i64,
    pub code_hash: Option<Vec<u8>>,
    pub expires_at_ms: i64,
}

/// A prefix the pumping guard blocked.
#[derive(Debug, Clone)]
pub struct BlockedPrefix {
    pub account_id: String,
    pub prefix: String,
    /// `blocked` or `unblocked`.
    pub status: String,
    pub sends: i64,
    pub conversions: i64,
    pub blocked_at_ms: i64,
    pub unblocked_at_ms: Option<i64>,
}

/// Which verifications a velocity count covers.
#[derive(Debug, Clone, Copy)]
pub enum Velocity<'a> {
    /// To one recipient (the blind index of the first channel's address).
    Recipient(&'a [u8]),
    Prefix(&'a str),
    ClientIp(&'a [u8]),
}

/// A new verification for the group-commit writer: the row, its steps, and the event each
/// verification it supersedes causes.
pub struct NewVerification {
    pub row: VerificationRow,
    pub steps: Vec<VerifyStepRow>,
    pub superseded_event: Box<dyn Fn(&str) -> OutboxEvent + Send + Sync>,
}

/// A leaseholder's progress for the group-commit writer (applied only while pending).
#[derive(Debug, Clone)]
pub struct Progress {
    pub row: VerificationRow,
    pub steps: Vec<VerifyStepRow>,
    pub events: Vec<OutboxEvent>,
}

#[async_trait::async_trait]
pub trait VerifyStore: Send + Sync {
    /// Inserts new verifications (each leased until its `wake_at_ms`) and their steps in one
    /// transaction; pending verifications to the same recipient of the account become
    /// `superseded` (their codes stop working), with their events.
    async fn insert_verifications(&self, items: &[NewVerification]) -> StoreResult<()>;
    /// Saves the progress of several verifications in one transaction, releasing their
    /// leases; each applies only while its verification is pending.
    async fn save_progress(&self, items: &[Progress]) -> StoreResult<()>;
    async fn get_verify_policy(&self, account_id: &str) -> StoreResult<Option<String>>;
    async fn put_verify_policy(
        &self,
        account_id: &str,
        policy: &str,
        at_ms: i64,
    ) -> StoreResult<()>;
    /// Verifications the account started since then, to a recipient or a prefix, or from an
    /// end user's IP.
    async fn count_velocity(
        &self,
        account_id: &str,
        by: Velocity<'_>,
        since_ms: i64,
    ) -> StoreResult<i64>;
    /// (sends, conversions) to a prefix since `since_ms`, leaving out pending verifications
    /// younger than `young_after_ms` (not yet a sign of anything).
    async fn prefix_stats(
        &self,
        account_id: &str,
        prefix: &str,
        since_ms: i64,
        young_after_ms: i64,
    ) -> StoreResult<(i64, i64)>;
    async fn blocked_prefix(
        &self,
        account_id: &str,
        prefix: &str,
    ) -> StoreResult<Option<BlockedPrefix>>;
    async fn list_blocked_prefixes(&self, account_id: &str) -> StoreResult<Vec<BlockedPrefix>>;
    /// Blocks (or blocks again) a prefix, with its event.
    async fn block_prefix(&self, row: &BlockedPrefix, event: &OutboxEvent) -> StoreResult<()>;
    /// Unblocks a blocked prefix, with its event; false when it was not blocked.
    async fn unblock_prefix(
        &self,
        account_id: &str,
        prefix: &str,
        at_ms: i64,
        event: &OutboxEvent,
    ) -> StoreResult<bool>;

    async fn get_verification(&self, id: &str) -> StoreResult<Option<VerificationRow>>;
    async fn verification_steps(&self, id: &str) -> StoreResult<Vec<VerifyStepRow>>;
    /// Leases up to `limit` pending verifications that are due.
    async fn claim_verifications(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<VerificationRow>>;
    /// Leases one pending verification (to move it to its next channel on request); `None`
    /// when it is not pending or another node holds it.
    async fn lease_verification(
        &self,
        id: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> StoreResult<Option<VerificationRow>>;
    /// Writes the leaseholder's progress (row, changed steps, events) and sets the lease to
    /// `lease_until_ms` (0 releases it), only while the verification is still pending; false
    /// otherwise.
    async fn save_verification(
        &self,
        row: &VerificationRow,
        steps: &[VerifyStepRow],
        events: &[OutboxEvent],
        lease_until_ms: i64,
    ) -> StoreResult<bool>;
    /// Takes one attempt if any is left on a pending verification.
    async fn take_attempt(&self, id: &str) -> StoreResult<Option<Attempt>>;
    /// Ends a pending verification with `status` (when `code_hash` is given, only if it is
    /// still the current code: a code is used once), with its event; false otherwise.
    async fn end_verification(
        &self,
        id: &str,
        code_hash: Option<&[u8]>,
        status: &str,
        at_ms: i64,
        event: &OutboxEvent,
    ) -> StoreResult<bool>;
}
