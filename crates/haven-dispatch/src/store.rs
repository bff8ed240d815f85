//! The dispatch storage port. A running dispatch row is its own durable timer: `wake_at_ms`
//! says when a worker must look at it again, `lease_until_ms` that one is looking now.

use haven_platform::events::OutboxEvent;
use haven_platform::page::PageRequest;
use haven_platform::store::StoreResult;

/// A dispatch as stored. The steps (addresses, content) are sealed in `steps_ct`.
#[derive(Debug, Clone)]
pub struct DispatchRow {
    pub id: String,
    pub account_id: String,
    /// `running`, `succeeded`, `failed`, `cancelled`.
    pub status: String,
    /// The contact whose key seals the steps, when the first recipient is one.
    pub contact_id: Option<String>,
    pub steps_ct: Vec<u8>,
    pub step_count: i64,
    pub current_step: i64,
    /// Set once the current step's message was accepted.
    pub current_message_id: Option<String>,
    pub step_started_at_ms: Option<i64>,
    pub step_deadline_ms: Option<i64>,
    /// The reply that ends the current step: channel, the account's sender, the patient.
    pub watch_channel: Option<String>,
    pub watch_sender: Option<String>,
    pub watch_peer_bidx: Option<Vec<u8>>,
    pub wake_at_ms: i64,
    pub outcome: Option<String>,
    pub created_by: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub final_at_ms: Option<i64>,
}

/// One step's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRow {
    pub dispatch_id: String,
    pub step_index: i64,
    pub channel: String,
    /// Chosen when the dispatch is created, so that a step retried after a crash sends the
    /// same message (which is then found, not sent again).
    pub message_id: String,
    /// `pending`, `waiting`, `succeeded`, `failed`, `timed_out`, `skipped`, `cancelled`.
    pub status: String,
    pub reason: Option<String>,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
}

/// What a worker decided about a leased dispatch, written in one transaction with its steps'
/// changes and events, only if the dispatch is still running (a cancel wins).
#[derive(Debug, Clone)]
pub struct Advance {
    pub row: DispatchRow,
    /// When the worker started looking: a nudge after it means "look again at once".
    pub looked_at_ms: i64,
    pub steps: Vec<StepRow>,
    pub events: Vec<OutboxEvent>,
}

#[async_trait::async_trait]
pub trait DispatchStore: Send + Sync {
    async fn insert_dispatch(&self, row: &DispatchRow, steps: &[StepRow]) -> StoreResult<()>;
    async fn get_dispatch(&self, id: &str) -> StoreResult<Option<DispatchRow>>;
    async fn dispatch_steps(&self, id: &str) -> StoreResult<Vec<StepRow>>;
    async fn list_dispatches(
        &self,
        account_id: &str,
        status: Option<&str>,
        page: &PageRequest,
    ) -> StoreResult<Vec<DispatchRow>>;
    /// Leases up to `limit` running dispatches that are due, until `lease_until_ms`.
    async fn claim_dispatches(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<DispatchRow>>;
    /// Applies a worker's decision; false when the dispatch is no longer running.
    async fn advance_dispatch(&self, a: &Advance) -> StoreResult<bool>;
    /// Cancels a running dispatch and its open steps, with the event; false when it had
    /// ended already.
    async fn cancel_dispatch(&self, id: &str, at_ms: i64, event: &OutboxEvent)
    -> StoreResult<bool>;
    /// Makes the running dispatches waiting on these messages due now.
    async fn nudge_messages(&self, message_ids: &[String], now_ms: i64) -> StoreResult<u64>;
    /// Makes the running dispatches waiting for this reply due now.
    async fn nudge_reply(
        &self,
        account_id: &str,
        channel: &str,
        sender_id: &str,
        peer_bidx: &[u8],
        now_ms: i64,
    ) -> StoreResult<u64>;
}
