//! The webhooks storage port.

use haven_platform::events::OutboxEvent;
use haven_platform::page::PageRequest;
use haven_platform::store::StoreResult;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointStatus {
    Enabled,
    Disabled,
}

impl EndpointStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "enabled" => Some(Self::Enabled),
            "disabled" => Some(Self::Disabled),
            _ => None,
        }
    }
}

/// An endpoint as stored: its URL and secrets sealed under the account's data key.
#[derive(Debug, Clone)]
pub struct EndpointRow {
    pub id: String,
    pub account_id: String,
    pub url_ct: Vec<u8>,
    pub event_types: Vec<String>,
    pub status: EndpointStatus,
    pub secret_ct: Vec<u8>,
    pub previous_secret_ct: Option<Vec<u8>>,
    pub previous_secret_expires_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct EventRow {
    pub id: String,
    pub account_id: String,
    pub event_type: String,
    pub payload: String,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    /// Every attempt failed (or the endpoint is gone): dead-lettered, replayable.
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "succeeded" => Some(Self::Succeeded),
            "dead" => Some(Self::Dead),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub id: String,
    pub event_id: String,
    pub endpoint_id: String,
    /// The endpoint's account (which may be the event's account's master).
    pub account_id: String,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub next_attempt_at_ms: i64,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub completed_at_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub delivery_id: String,
    pub attempt: i64,
    pub event_id: String,
    pub endpoint_id: String,
    pub at_ms: i64,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Succeeded,
    Retry { at_ms: i64 },
    Dead,
}

#[async_trait::async_trait]
pub trait WebhookStore: Send + Sync {
    async fn insert_endpoint(&self, e: &EndpointRow, events: &[OutboxEvent]) -> StoreResult<()>;
    async fn get_endpoint(&self, id: &str) -> StoreResult<Option<EndpointRow>>;
    async fn list_endpoints(
        &self,
        account_id: &str,
        page: &PageRequest,
    ) -> StoreResult<Vec<EndpointRow>>;
    async fn update_endpoint(&self, e: &EndpointRow, events: &[OutboxEvent]) -> StoreResult<bool>;
    /// Deletes the endpoint; its pending deliveries are dead-lettered.
    async fn delete_endpoint(
        &self,
        id: &str,
        now_ms: i64,
        events: &[OutboxEvent],
    ) -> StoreResult<bool>;
    /// Events written by another domain outside of a change (reserved for later APIs).
    async fn insert_events(&self, events: &[OutboxEvent]) -> StoreResult<()>;

    /// The master account of `account_id`, if it is a subaccount.
    async fn parent_of(&self, account_id: &str) -> StoreResult<Option<String>>;
    async fn unfanned_events(&self, limit: i64) -> StoreResult<Vec<EventRow>>;
    /// Enabled endpoints of the account and of its master: (id, account id, event types).
    async fn endpoints_for(
        &self,
        account_id: &str,
    ) -> StoreResult<Vec<(String, String, Vec<String>)>>;
    /// Creates the deliveries and marks the events fanned out, atomically (one transaction for
    /// a whole batch of events: most events have no endpoint at all).
    async fn fan_out(&self, event_ids: &[String], deliveries: &[DeliveryRow]) -> StoreResult<()>;
    /// Leases up to `limit` due deliveries until `lease_until_ms`.
    async fn claim_due(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<DeliveryRow>>;
    async fn get_event(&self, id: &str) -> StoreResult<Option<EventRow>>;
    async fn record_attempt(&self, a: &AttemptRow, outcome: AttemptOutcome) -> StoreResult<()>;
    async fn insert_deliveries(&self, deliveries: &[DeliveryRow]) -> StoreResult<()>;

    /// Events of the account and of its subaccounts, newest last.
    async fn list_events(&self, account_id: &str, page: &PageRequest)
    -> StoreResult<Vec<EventRow>>;
    async fn deliveries_of_event(&self, event_id: &str) -> StoreResult<Vec<DeliveryRow>>;
    async fn list_deliveries(
        &self,
        account_id: &str,
        status: Option<DeliveryStatus>,
        page: &PageRequest,
    ) -> StoreResult<Vec<DeliveryRow>>;
    async fn attempts_of_event(&self, event_id: &str) -> StoreResult<Vec<AttemptRow>>;
}
