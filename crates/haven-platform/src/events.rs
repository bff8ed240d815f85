//! Events for webhooks: what a domain writes into the outbox, in the same transaction as the
//! change it reports. Payloads are thin: ids and states, never PHI (receivers fetch details
//! through the API, under their own credentials).

use serde_json::{Value, json};

/// Every event type an endpoint can subscribe to.
pub const EVENT_TYPES: &[&str] = &[
    "account.created",
    "account.suspended",
    "account.reactivated",
    "key.created",
    "key.rotated",
    "key.revoked",
    "webhook_endpoint.created",
    "webhook_endpoint.updated",
    "webhook_endpoint.deleted",
    "webhook_endpoint.secret_rotated",
    "message.submitted",
    "message.delivered",
    "message.failed",
    "message.expired",
    "message.rejected",
    "message.inbound",
    "consent.changed",
    "template.approved",
    "template.rejected",
    "dispatch.step_started",
    "dispatch.succeeded",
    "dispatch.failed",
    "dispatch.cancelled",
    "verify.code_sent",
    "verify.succeeded",
    "verify.failed",
    "verify.expired",
    "verify.cancelled",
    "verify.superseded",
    "verify.prefix_blocked",
    "verify.prefix_unblocked",
];

#[derive(Debug, Clone)]
pub struct OutboxEvent {
    /// `evt_…`: also the `webhook-id` of every delivery, so receivers de-duplicate on it.
    pub id: String,
    /// The account the event concerns; its master account's endpoints receive it too.
    pub account_id: String,
    pub event_type: &'static str,
    pub created_at_ms: i64,
    /// The JSON body delivered.
    pub payload: String,
}

impl OutboxEvent {
    pub fn new(event_type: &'static str, account_id: &str, data: Value) -> Self {
        let id = crate::id::new_id("evt");
        let created_at_ms = crate::clock::now_ms();
        let payload = json!({
            "id": id,
            "type": event_type,
            "timestamp": crate::clock::to_rfc3339(created_at_ms),
            "account_id": account_id,
            "data": data,
        })
        .to_string();
        Self {
            id,
            account_id: account_id.to_owned(),
            event_type,
            created_at_ms,
            payload,
        }
    }
}

/// What a domain calls after it wrote outbox events, so that this node's webhook worker wakes
/// at once instead of at its next poll. Set once at start-up; calling it unset does nothing.
#[derive(Default)]
pub struct EventHook(std::sync::RwLock<Option<std::sync::Arc<dyn Fn() + Send + Sync>>>);

impl std::fmt::Debug for EventHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventHook")
    }
}

impl EventHook {
    pub fn set(&self, hook: std::sync::Arc<dyn Fn() + Send + Sync>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    pub fn fire(&self) {
        let hook = self.0.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(h) = hook {
            h();
        }
    }
}
