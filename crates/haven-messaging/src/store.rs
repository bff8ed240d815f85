//! The messaging storage port. Message rows hold only ciphertexts for addresses and content;
//! the rows themselves are the delivery queue (status `accepted` with a due time and a lease).

use haven_platform::events::OutboxEvent;
use haven_platform::page::PageRequest;
use haven_platform::store::StoreResult;
use haven_platform::usage::UsageRecord;

/// A registered sender: a number or an alphanumeric id (SMS), an address (email). Senders are
/// the organisation's own identifiers, not PHI; they are stored in clear so that inbound
/// messages can be routed to the account that owns the number they were sent to.
#[derive(Debug, Clone)]
pub struct SenderRow {
    pub id: String,
    pub account_id: String,
    pub channel: String,
    pub address: String,
    pub created_at_ms: i64,
}

/// A message as stored.
#[derive(Debug, Clone)]
pub struct MessageRow {
    pub id: String,
    pub account_id: String,
    /// `outbound` or `inbound`.
    pub direction: String,
    pub channel: String,
    pub status: String,
    pub sender_id: Option<String>,
    /// The contact whose key seals the message, when the patient is a known contact.
    pub contact_id: Option<String>,
    pub to_ct: Vec<u8>,
    pub from_ct: Vec<u8>,
    pub content_ct: Vec<u8>,
    pub client_ref_ct: Option<Vec<u8>>,
    pub client_ref_bidx: Option<Vec<u8>>,
    /// Blind index of the patient's address (`to` outbound, `from` inbound).
    pub peer_bidx: Option<Vec<u8>>,
    /// The workflow (a dispatch) this message is a step of; its changes are reported to it.
    pub workflow_id: Option<String>,
    pub want_receipt: bool,
    pub parts: i64,
    pub route: Option<String>,
    pub error_code: Option<String>,
    pub error_reason: Option<String>,
    pub attempts: i64,
    pub next_attempt_at_ms: i64,
    /// Until when a sending worker holds it. Written on insert (a node that accepts a message
    /// it can send at once leases it to itself, see `pipeline`), then only by the claims and
    /// outcomes; reads do not load it and leave it 0.
    pub lease_until_ms: i64,
    pub expires_at_ms: i64,
    /// The credential that sent it (outbound).
    pub created_by: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub submitted_at_ms: Option<i64>,
    pub final_at_ms: Option<i64>,
}

/// What to match when listing.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    pub status: Option<String>,
    pub channel: Option<String>,
    pub direction: Option<String>,
    pub client_ref_bidx: Option<Vec<u8>>,
}

/// One part of a submitted message, as a carrier identified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRow {
    pub message_id: String,
    pub part_index: i64,
    pub route: String,
    pub provider_id: String,
    /// `submitted`, or a receipt state (`delivered`, `failed`, …).
    pub state: String,
    pub error_code: Option<String>,
}

/// A delivery receipt as received, to be matched to its part.
#[derive(Debug, Clone)]
pub struct ReceiptRow {
    pub route: String,
    pub provider_id: String,
    pub state: String,
    pub error_code: Option<String>,
    pub at_ms: i64,
    pub received_at_ms: i64,
}

/// What a send attempt came to, recorded with the event it causes.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The carrier took it: status `submitted`, parts recorded.
    Submitted {
        message_id: String,
        route: String,
        provider_ids: Vec<String>,
        at_ms: i64,
        event: OutboxEvent,
        /// The content to keep from now on (a one-time secret masked), if it changes.
        content_ct: Option<Vec<u8>>,
        /// What the send is billed as; stored with the change to `submitted`, once.
        usage: Box<UsageRecord>,
    },
    /// Not sent; try again at `next_attempt_at_ms`.
    Retry {
        message_id: String,
        attempts: i64,
        next_attempt_at_ms: i64,
        reason: String,
    },
    /// A final status without parts (`rejected`, `expired`, `failed`).
    Final {
        message_id: String,
        status: String,
        error_code: Option<String>,
        reason: Option<String>,
        at_ms: i64,
        event: OutboxEvent,
        content_ct: Option<Vec<u8>>,
    },
}

/// What one settling transaction did with receipts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// Receipts matched to their part and applied (a duplicate of a final state included).
    pub applied: usize,
    /// Of those, receipts settled with their submit's outcome: the message written once.
    pub folded: usize,
    /// Receipts whose part is not recorded (yet): stored, to be tried again later.
    pub waiting: usize,
    /// Stored receipts tried again that still found no part (tried later again).
    pub retried: usize,
    /// Stored receipts dropped: still no part after the longest wait.
    pub dropped: usize,
    /// Message status changes written, each with its event.
    pub events: usize,
    /// The workflow messages whose status changed.
    pub changed: Vec<String>,
}

impl Settled {
    /// Stored receipts looked at by a retry (for pacing: a full batch means more are due).
    pub fn looked_at(&self) -> usize {
        self.applied + self.retried + self.dropped
    }
}

/// The core of a message a receipt decides about.
#[derive(Debug, Clone)]
pub struct ReceiptTarget {
    pub message_id: String,
    pub account_id: String,
    pub channel: String,
    pub status: String,
    pub parts: Vec<PartRow>,
}

/// A change of a message's status caused by receipts.
#[derive(Debug, Clone)]
pub struct StatusChange {
    pub status: String,
    pub error_code: Option<String>,
    pub event: OutboxEvent,
}

/// How long a stored receipt that found no part waits before its next try, after `tries`
/// tries: 100 ms, doubling, at most a minute. A receipt that came before its submit was
/// recorded finds it at the first or second try; one that is not ours costs a few lookups
/// a minute until it is dropped.
pub fn receipt_retry_after_ms(tries: i64) -> i64 {
    const FIRST_MS: i64 = 100;
    const MAX_MS: i64 = 60_000;
    let shift = u32::try_from(tries.clamp(0, 20)).unwrap_or(20);
    FIRST_MS.saturating_mul(1_i64 << shift).min(MAX_MS)
}

/// Decides, from a message and the states of all its parts (receipts applied), whether its
/// status changes. Pure domain logic, called by the store inside its transaction.
pub type Decide = dyn Fn(&ReceiptTarget, i64) -> Option<StatusChange> + Send + Sync;

/// A consent record: for one recipient address (as a blind index), channel and purpose.
#[derive(Debug, Clone)]
pub struct ConsentRow {
    pub account_id: String,
    pub channel: String,
    pub address_bidx: Vec<u8>,
    /// `transactional` or `marketing`.
    pub purpose: String,
    /// `opted_in` or `opted_out`.
    pub status: String,
    /// `keyword`, `api`, `web_form`, `paper`, `verbal`.
    pub method: String,
    pub source: Option<String>,
    pub updated_at_ms: i64,
}

/// A message template as stored (clear: the organisation's wording, no PHI).
#[derive(Debug, Clone)]
pub struct TemplateRow {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub channel: String,
    pub locale: Option<String>,
    pub subject: Option<String>,
    pub body: String,
    pub html: Option<String>,
    pub status: String,
    pub review_note: Option<String>,
    pub created_by: Option<String>,
    pub reviewed_by: Option<String>,
    pub created_at_ms: i64,
    pub reviewed_at_ms: Option<i64>,
}

/// The rows accepted since a group commit's batch was taken (see
/// [`MessageStore::insert_messages`]); owned, so that a store may call it on another thread.
pub type TopUpRows = Box<dyn Fn() -> Vec<(MessageRow, Option<OutboxEvent>)> + Send + Sync>;

#[async_trait::async_trait]
pub trait MessageStore: Send + Sync {
    /// The most rows one background write (outcomes with receipts, stored receipts tried
    /// again) should carry, if the store wants them short: a store with one writer, where an
    /// accepting request's commit may wait for the background transaction in progress. `None`:
    /// the batch size.
    fn background_batch_max(&self) -> Option<usize> {
        None
    }
    async fn insert_template(&self, row: &TemplateRow) -> StoreResult<()>;
    async fn get_template(&self, id: &str) -> StoreResult<Option<TemplateRow>>;
    async fn list_templates(
        &self,
        account_id: &str,
        status: Option<&str>,
        page: &PageRequest,
    ) -> StoreResult<Vec<TemplateRow>>;
    /// Records a review (and its event) if the template is still pending; false otherwise.
    async fn review_template(&self, row: &TemplateRow, event: &OutboxEvent) -> StoreResult<bool>;
    async fn delete_template(&self, id: &str) -> StoreResult<bool>;

    /// The account's messaging policy as JSON, if it set one.
    async fn get_policy(&self, account_id: &str) -> StoreResult<Option<String>>;
    async fn put_policy(&self, account_id: &str, policy: &str, at_ms: i64) -> StoreResult<()>;

    /// Whether any message (either direction) with this peer address exists on the channel.
    async fn has_exchanged(
        &self,
        account_id: &str,
        channel: &str,
        peer_bidx: &[u8],
    ) -> StoreResult<bool>;
    /// Inbound messages from a peer to one of the account's senders, received at or after
    /// `since_ms`, oldest first (at most `limit`).
    async fn inbound_from(
        &self,
        account_id: &str,
        channel: &str,
        sender_id: &str,
        peer_bidx: &[u8],
        since_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<MessageRow>>;

    /// Records consent (and the events it causes) in one transaction; the newest record per
    /// purpose wins.
    async fn upsert_consents(&self, rows: &[ConsentRow], events: &[OutboxEvent])
    -> StoreResult<()>;
    async fn consents_for(
        &self,
        account_id: &str,
        channel: &str,
        address_bidx: &[u8],
    ) -> StoreResult<Vec<ConsentRow>>;

    /// `Conflict` when the address is registered already (to any account).
    async fn insert_sender(&self, row: &SenderRow) -> StoreResult<()>;
    async fn get_sender(&self, id: &str) -> StoreResult<Option<SenderRow>>;
    async fn sender_by_address(
        &self,
        channel: &str,
        address: &str,
    ) -> StoreResult<Option<SenderRow>>;
    async fn list_senders(
        &self,
        account_id: &str,
        page: &PageRequest,
    ) -> StoreResult<Vec<SenderRow>>;
    async fn delete_sender(&self, id: &str) -> StoreResult<bool>;

    /// Stores messages (and the events they cause) in one transaction: the group commit.
    /// Owned, so that a store may hand the batch to another thread without copying it.
    /// `more` gives the rows queued since the batch was taken: a store that waits for a write
    /// connection adds them once it has one.
    async fn insert_messages(
        &self,
        rows: Vec<(MessageRow, Option<OutboxEvent>)>,
        more: TopUpRows,
    ) -> StoreResult<()>;
    async fn get_message(&self, id: &str) -> StoreResult<Option<MessageRow>>;
    async fn list_messages(
        &self,
        account_id: &str,
        filter: &MessageFilter,
        page: &PageRequest,
    ) -> StoreResult<Vec<MessageRow>>;

    /// Leases up to `limit` accepted messages that are due, until `lease_until_ms`.
    async fn claim_due(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<MessageRow>>;
    /// Records send outcomes and applies receipts as they arrive, in one transaction.
    /// Outcomes go first (each applies only if the message is still `accepted`), so that a
    /// receipt finds a part recorded in the same batch. Each receipt that finds its part is
    /// applied and `decide` may change the message's status, with the message row locked. A
    /// receipt whose part is not recorded (its submit is still being written, here or on
    /// another node, or the message is not one of ours) is stored for
    /// [`MessageStore::retry_receipts`].
    /// Owned, as in [`MessageStore::insert_messages`].
    async fn settle(
        &self,
        outcomes: Vec<Outcome>,
        receipts: Vec<ReceiptRow>,
        decide: &'static Decide,
    ) -> StoreResult<Settled>;
    /// Tries again up to `limit` stored receipts due at `now_ms`, in one transaction: applied
    /// as in [`MessageStore::settle`] when their part is there now; else tried again later,
    /// after a wait that doubles each time (see [`receipt_retry_after_ms`]), and dropped once
    /// received before `drop_before_ms`.
    async fn retry_receipts(
        &self,
        limit: i64,
        now_ms: i64,
        drop_before_ms: i64,
        decide: &'static Decide,
    ) -> StoreResult<Settled>;
}
