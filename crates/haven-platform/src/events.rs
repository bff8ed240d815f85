//! Events for webhooks: what a domain writes into the outbox, in the same transaction as the
//! change it reports. Payloads are thin: ids and states, never PHI (receivers fetch details
//! through the API, under their own credentials).

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
    /// The event's own data, as JSON. What is stored: the envelope around it ([`body`]) is
    /// made of the other fields, so it is built when the event is read, not stored twice.
    pub data: String,
}

impl OutboxEvent {
    /// A new event about `account_id`; `data` is any serializable value (a `json!` value, or a
    /// struct of borrowed fields, which is written out without building a JSON tree first:
    /// every message writes two events).
    pub fn new(event_type: &'static str, account_id: &str, data: impl serde::Serialize) -> Self {
        let id = crate::id::new_id("evt");
        let created_at_ms = crate::clock::now_ms();
        let data = serde_json::to_string(&data)
            // A value whose serialization fails (a map with non-string keys) is a bug of the
            // caller's type; the event still goes out, with empty data.
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, event_type, "an event's data could not be written");
                "{}".to_owned()
            });
        Self {
            id,
            account_id: account_id.to_owned(),
            event_type,
            created_at_ms,
            data,
        }
    }

    /// The JSON body delivered (see [`body`]).
    pub fn payload(&self) -> String {
        body(
            &self.id,
            self.event_type,
            self.created_at_ms,
            &self.account_id,
            &self.data,
        )
    }
}

/// An event's JSON body as delivered and listed: the envelope (`id`, `type`, `timestamp`,
/// `account_id`, in that order), then `data`, which must be one JSON value and is copied as
/// it is. The same fields always make the same bytes.
pub fn body(
    id: &str,
    event_type: &str,
    created_at_ms: i64,
    account_id: &str,
    data: &str,
) -> String {
    fn string(out: &mut String, s: &str) {
        // A `&str` always serializes.
        out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned()));
    }
    let mut out = String::with_capacity(96 + id.len() + account_id.len() + data.len());
    out.push_str("{\"id\":");
    string(&mut out, id);
    out.push_str(",\"type\":");
    string(&mut out, event_type);
    out.push_str(",\"timestamp\":");
    string(&mut out, &crate::clock::to_rfc3339(created_at_ms));
    out.push_str(",\"account_id\":");
    string(&mut out, account_id);
    out.push_str(",\"data\":");
    out.push_str(data);
    out.push('}');
    out
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The body as a serializer writes the envelope: what events stored before their data was
    /// stored alone, and what receivers have always been sent.
    #[derive(serde::Serialize)]
    struct Envelope<'a> {
        id: &'a str,
        #[serde(rename = "type")]
        event_type: &'a str,
        timestamp: String,
        account_id: &'a str,
        data: serde_json::Value,
    }

    #[test]
    fn the_body_is_byte_for_byte_the_serialized_envelope() {
        let data =
            json!({ "message_id": "msg_1", "note": "quote \" and \\ and \u{1}", "n": [1, 2] });
        for (id, account) in [("evt_1", "acc_1"), ("evt_\"odd\"", "acc_\u{7f}\n")] {
            let at = 1_796_661_646_256;
            let want = serde_json::to_string(&Envelope {
                id,
                event_type: "message.delivered",
                timestamp: crate::clock::to_rfc3339(at),
                account_id: account,
                data: data.clone(),
            })
            .unwrap();
            let got = body(id, "message.delivered", at, account, &data.to_string());
            assert_eq!(got, want);
        }
    }

    /// A struct of borrowed fields and a `json!` value make the same body: the envelope's
    /// fields, then the data as given.
    #[test]
    fn the_body_is_the_envelope_and_the_data_whatever_its_type() {
        #[derive(serde::Serialize)]
        struct Data<'a> {
            message_id: &'a str,
            error_code: Option<&'a str>,
        }
        let typed = OutboxEvent::new(
            "message.submitted",
            "acc_1",
            Data {
                message_id: "msg_1",
                error_code: None,
            },
        );
        let value = OutboxEvent::new(
            "message.submitted",
            "acc_1",
            json!({ "message_id": "msg_1", "error_code": null }),
        );
        for e in [&typed, &value] {
            let body: serde_json::Value = serde_json::from_str(&e.payload()).unwrap();
            assert_eq!(body["id"], e.id.as_str());
            assert!(e.id.starts_with("evt_"));
            assert_eq!(body["type"], "message.submitted");
            assert_eq!(body["account_id"], "acc_1");
            assert_eq!(
                body["timestamp"],
                crate::clock::to_rfc3339(e.created_at_ms).as_str()
            );
            assert_eq!(
                body["data"],
                json!({ "message_id": "msg_1", "error_code": null })
            );
            assert_eq!(body.as_object().unwrap().len(), 5);
        }
        assert_ne!(typed.id, value.id);
    }
}
