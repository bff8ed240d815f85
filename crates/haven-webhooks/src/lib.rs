//! Webhooks: accounts register endpoints for the event types they want; events written to the
//! outbox (in the same transaction as the change they report) are fanned out to deliveries,
//! signed as Standard Webhooks define, sent through the SSRF guard, retried with exponential
//! backoff and jitter, and dead-lettered when the schedule runs out. Any event can be replayed.

pub mod deliver;
pub mod signing;
pub mod store;
pub mod target;

use haven_identity::{FieldError, IdentityError, Principal, RequestMeta, Right, Scope};
use haven_platform::audit::{AuditAction, AuditEvent, AuditSink, Outcome};
use haven_platform::clock::now_ms;
use haven_platform::events::{EVENT_TYPES, OutboxEvent};
use haven_platform::id::new_id;
use haven_platform::page::{Page, PageRequest};
use haven_platform::store::StoreError;
use haven_vault::{FieldRef, Vault, VaultError};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use store::{
    AttemptOutcome, AttemptRow, DeliveryRow, DeliveryStatus, EndpointRow, EndpointStatus, EventRow,
    WebhookStore,
};
pub use target::{TargetError, TargetPolicy};

use tokio::sync::{Notify, Semaphore};

/// An enabled endpoint an event may go to: (endpoint id, its account id, its event types).
type EndpointSubscription = (String, String, Vec<String>);

const READ: Scope = Scope::new("webhooks", Right::Read);
const WRITE: Scope = Scope::new("webhooks", Right::Write);
const TABLE: &str = "webhook_endpoints";
pub const ENDPOINT_PREFIX: &str = "whe";
const MAX_EVENT_TYPES: usize = 50;
/// Longest time a replaced secret keeps signing.
pub const MAX_SECRET_GRACE_SECONDS: u64 = 7 * 86_400;

#[derive(Debug, thiserror::Error)]
pub enum WebhooksError {
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    #[error("target not allowed: {0}")]
    Target(TargetError),
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] haven_crypto::CryptoError),
}

pub type WebhooksResult<T> = Result<T, WebhooksError>;

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub policy: TargetPolicy,
    pub retry_schedule: Vec<Duration>,
    pub timeout: Duration,
    pub concurrency: usize,
}

/// An endpoint as shown (the URL decrypted; secrets never, except once when made).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: String,
    pub account_id: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub status: EndpointStatus,
    pub previous_secret_expires_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Changes to an endpoint; `None` keeps a field.
#[derive(Debug, Clone, Default)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub status: Option<EndpointStatus>,
}

/// An event with the deliveries the viewer may see.
#[derive(Debug, Clone)]
pub struct EventDetail {
    pub event: EventRow,
    pub deliveries: Vec<DeliveryRow>,
}

/// Whether a subscription (`key.created`, `key.*`, `*`) covers an event type.
pub fn subscribed(patterns: &[String], event_type: &str) -> bool {
    patterns.iter().any(|p| {
        p == "*"
            || p == event_type
            || p.strip_suffix(".*")
                .is_some_and(|prefix| event_type.split('.').next() == Some(prefix))
    })
}

fn check_event_types(types: &[String], errors: &mut Vec<FieldError>) {
    if types.is_empty() || types.len() > MAX_EVENT_TYPES {
        errors.push(FieldError::new(
            "event_types",
            format!("must list 1 to {MAX_EVENT_TYPES} event types"),
        ));
    }
    for (i, t) in types.iter().enumerate() {
        let known = t == "*"
            || EVENT_TYPES.contains(&t.as_str())
            || t.strip_suffix(".*").is_some_and(|prefix| {
                EVENT_TYPES
                    .iter()
                    .any(|e| e.split('.').next() == Some(prefix))
            });
        if !known {
            errors.push(FieldError::new(
                format!("event_types[{i}]"),
                "is not an event type (see GET /v1/webhooks/event-types), `group.*` or `*`",
            ));
        }
    }
}

/// The delay before retry `n` (1-based), with up to +20% jitter so that a receiver's recovery
/// is not met by every sender at once. `None`: the schedule is exhausted.
pub fn retry_delay(schedule: &[Duration], n: usize) -> Option<Duration> {
    let base = *schedule.get(n.checked_sub(1)?)?;
    let jitter = haven_crypto::random_bytes::<2>()
        .map(|b| f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX))
        .unwrap_or(0.5);
    Some(base.mul_f64(1.0 + 0.2 * jitter))
}

pub struct Webhooks {
    store: Arc<dyn WebhookStore>,
    vault: Arc<Vault>,
    audit: Arc<dyn AuditSink>,
    settings: WebhookSettings,
    sender: deliver::Sender,
    wake: Notify,
    /// Attempts finished on this node: each frees a place, so the loop leases again.
    finished: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Webhooks")
    }
}

fn field<'a>(account_id: &'a str, id: &'a str, column: &'static str) -> FieldRef<'a> {
    FieldRef {
        account_id,
        table: TABLE,
        column,
        row_id: id,
    }
}

impl Webhooks {
    pub fn new(
        store: Arc<dyn WebhookStore>,
        vault: Arc<Vault>,
        audit: Arc<dyn AuditSink>,
        settings: WebhookSettings,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            sender: deliver::Sender::new(settings.policy.clone(), settings.timeout)?,
            store,
            vault,
            audit,
            settings,
            wake: Notify::new(),
            finished: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Tells this node's worker that new events are waiting (other nodes find them by polling).
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    async fn audit(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        action: AuditAction,
        kind: &'static str,
        id: &str,
    ) {
        self.audit
            .record(AuditEvent::new(action, Outcome::Success, p.actor(meta)).resource(kind, id))
            .await;
    }

    async fn view(&self, row: &EndpointRow) -> WebhooksResult<Endpoint> {
        let url = self
            .vault
            .open_for_account(&field(&row.account_id, &row.id, "url"), &row.url_ct)
            .await?;
        Ok(Endpoint {
            id: row.id.clone(),
            account_id: row.account_id.clone(),
            url: String::from_utf8(url).map_err(|_| VaultError::Integrity("url"))?,
            event_types: row.event_types.clone(),
            status: row.status,
            previous_secret_expires_at_ms: row
                .previous_secret_expires_at_ms
                .filter(|t| *t > now_ms()),
            created_at_ms: row.created_at_ms,
            updated_at_ms: row.updated_at_ms,
        })
    }

    async fn owned(&self, p: &Principal, id: &str) -> WebhooksResult<EndpointRow> {
        if !haven_identity::is_id(ENDPOINT_PREFIX, id) {
            return Err(WebhooksError::NotFound);
        }
        match self.store.get_endpoint(id).await? {
            Some(e) if e.account_id == p.account_id => Ok(e),
            _ => Err(WebhooksError::NotFound),
        }
    }

    fn check_url(&self, url: &str) -> WebhooksResult<()> {
        self.settings
            .policy
            .check_url(url)
            .map(|_| ())
            .map_err(|e| match e {
                TargetError::BadUrl | TargetError::Credentials => {
                    WebhooksError::Invalid(vec![FieldError::new("url", e.to_string())])
                }
                other => WebhooksError::Target(other),
            })
    }

    /// Registers an endpoint; returns it with its signing secret (shown once).
    pub async fn create_endpoint(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        url: &str,
        event_types: Vec<String>,
        status: EndpointStatus,
    ) -> WebhooksResult<(Endpoint, String)> {
        p.require(WRITE)?;
        let mut errors = Vec::new();
        check_event_types(&event_types, &mut errors);
        if !errors.is_empty() {
            return Err(WebhooksError::Invalid(errors));
        }
        self.check_url(url)?;
        let id = new_id(ENDPOINT_PREFIX);
        let secret = signing::new_secret()?;
        let now = now_ms();
        let account = &p.account_id;
        let row = EndpointRow {
            url_ct: self
                .vault
                .seal_for_account(&field(account, &id, "url"), url.as_bytes())
                .await?,
            secret_ct: self
                .vault
                .seal_for_account(&field(account, &id, "secret"), secret.as_bytes())
                .await?,
            id,
            account_id: account.clone(),
            event_types,
            status,
            previous_secret_ct: None,
            previous_secret_expires_at_ms: None,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let event = OutboxEvent::new(
            "webhook_endpoint.created",
            account,
            json!({ "endpoint_id": row.id }),
        );
        self.store.insert_endpoint(&row, &[event]).await?;
        self.notify();
        self.audit(
            p,
            meta,
            AuditAction::WebhookEndpointCreated,
            "webhook_endpoint",
            &row.id,
        )
        .await;
        Ok((self.view(&row).await?, secret))
    }

    pub async fn get_endpoint(&self, p: &Principal, id: &str) -> WebhooksResult<Endpoint> {
        p.require(READ)?;
        self.view(&self.owned(p, id).await?).await
    }

    pub async fn list_endpoints(
        &self,
        p: &Principal,
        page: &PageRequest,
    ) -> WebhooksResult<Page<Endpoint>> {
        p.require(READ)?;
        let rows = self.store.list_endpoints(&p.account_id, page).await?;
        let page = Page::from_rows(rows, page, |r| &r.id);
        let mut items = Vec::with_capacity(page.items.len());
        for r in &page.items {
            items.push(self.view(r).await?);
        }
        Ok(Page {
            items,
            next_cursor: page.next_cursor,
        })
    }

    pub async fn update_endpoint(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        id: &str,
        patch: EndpointPatch,
    ) -> WebhooksResult<Endpoint> {
        p.require(WRITE)?;
        let mut row = self.owned(p, id).await?;
        if let Some(types) = patch.event_types {
            let mut errors = Vec::new();
            check_event_types(&types, &mut errors);
            if !errors.is_empty() {
                return Err(WebhooksError::Invalid(errors));
            }
            row.event_types = types;
        }
        if let Some(url) = &patch.url {
            self.check_url(url)?;
            row.url_ct = self
                .vault
                .seal_for_account(&field(&row.account_id, &row.id, "url"), url.as_bytes())
                .await?;
        }
        if let Some(s) = patch.status {
            row.status = s;
        }
        row.updated_at_ms = now_ms();
        let event = OutboxEvent::new(
            "webhook_endpoint.updated",
            &row.account_id,
            json!({ "endpoint_id": row.id, "status": row.status.as_str() }),
        );
        if !self.store.update_endpoint(&row, &[event]).await? {
            return Err(WebhooksError::NotFound);
        }
        self.notify();
        self.audit(
            p,
            meta,
            AuditAction::WebhookEndpointUpdated,
            "webhook_endpoint",
            id,
        )
        .await;
        self.view(&row).await
    }

    pub async fn delete_endpoint(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        id: &str,
    ) -> WebhooksResult<()> {
        p.require(WRITE)?;
        let row = self.owned(p, id).await?;
        let event = OutboxEvent::new(
            "webhook_endpoint.deleted",
            &row.account_id,
            json!({ "endpoint_id": row.id }),
        );
        if !self.store.delete_endpoint(id, now_ms(), &[event]).await? {
            return Err(WebhooksError::NotFound);
        }
        self.notify();
        self.audit(
            p,
            meta,
            AuditAction::WebhookEndpointDeleted,
            "webhook_endpoint",
            id,
        )
        .await;
        Ok(())
    }

    /// A new signing secret (returned once). The old one keeps signing, beside the new one, for
    /// `grace_seconds`, so receivers can switch without missing a delivery.
    pub async fn rotate_secret(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        id: &str,
        grace_seconds: u64,
    ) -> WebhooksResult<(Endpoint, String)> {
        p.require(WRITE)?;
        if grace_seconds > MAX_SECRET_GRACE_SECONDS {
            return Err(WebhooksError::Invalid(vec![FieldError::new(
                "grace_period_seconds",
                format!("must be at most {MAX_SECRET_GRACE_SECONDS} (7 days)"),
            )]));
        }
        let mut row = self.owned(p, id).await?;
        let now = now_ms();
        let current = self
            .vault
            .open_for_account(&field(&row.account_id, &row.id, "secret"), &row.secret_ct)
            .await?;
        let secret = signing::new_secret()?;
        row.secret_ct = self
            .vault
            .seal_for_account(
                &field(&row.account_id, &row.id, "secret"),
                secret.as_bytes(),
            )
            .await?;
        if grace_seconds > 0 {
            row.previous_secret_ct = Some(
                self.vault
                    .seal_for_account(
                        &field(&row.account_id, &row.id, "previous_secret"),
                        &current,
                    )
                    .await?,
            );
            row.previous_secret_expires_at_ms =
                Some(now + i64::try_from(grace_seconds * 1000).unwrap_or(0));
        } else {
            row.previous_secret_ct = None;
            row.previous_secret_expires_at_ms = None;
        }
        row.updated_at_ms = now;
        let event = OutboxEvent::new(
            "webhook_endpoint.secret_rotated",
            &row.account_id,
            json!({ "endpoint_id": row.id }),
        );
        if !self.store.update_endpoint(&row, &[event]).await? {
            return Err(WebhooksError::NotFound);
        }
        self.notify();
        self.audit(
            p,
            meta,
            AuditAction::WebhookSecretRotated,
            "webhook_endpoint",
            id,
        )
        .await;
        Ok((self.view(&row).await?, secret))
    }

    /// Whether `p` may see events of `account_id`: its own, or a subaccount's.
    async fn sees(&self, p: &Principal, account_id: &str) -> WebhooksResult<bool> {
        Ok(account_id == p.account_id
            || self.store.parent_of(account_id).await?.as_deref() == Some(p.account_id.as_str()))
    }

    pub async fn list_events(
        &self,
        p: &Principal,
        page: &PageRequest,
    ) -> WebhooksResult<Page<EventRow>> {
        p.require(READ)?;
        let rows = self.store.list_events(&p.account_id, page).await?;
        Ok(Page::from_rows(rows, page, |e| &e.id))
    }

    async fn visible_event(&self, p: &Principal, id: &str) -> WebhooksResult<EventRow> {
        if !haven_identity::is_id("evt", id) {
            return Err(WebhooksError::NotFound);
        }
        match self.store.get_event(id).await? {
            Some(e) if self.sees(p, &e.account_id).await? => Ok(e),
            _ => Err(WebhooksError::NotFound),
        }
    }

    /// An event with its deliveries to the caller's endpoints.
    pub async fn get_event(&self, p: &Principal, id: &str) -> WebhooksResult<EventDetail> {
        p.require(READ)?;
        let event = self.visible_event(p, id).await?;
        let deliveries = self
            .store
            .deliveries_of_event(id)
            .await?
            .into_iter()
            .filter(|d| d.account_id == p.account_id)
            .collect();
        Ok(EventDetail { event, deliveries })
    }

    /// Every attempt to deliver the event to the caller's endpoints, oldest first.
    pub async fn attempts(&self, p: &Principal, id: &str) -> WebhooksResult<Vec<AttemptRow>> {
        p.require(READ)?;
        self.visible_event(p, id).await?;
        let mine: Vec<String> = self
            .store
            .deliveries_of_event(id)
            .await?
            .into_iter()
            .filter(|d| d.account_id == p.account_id)
            .map(|d| d.id)
            .collect();
        Ok(self
            .store
            .attempts_of_event(id)
            .await?
            .into_iter()
            .filter(|a| mine.contains(&a.delivery_id))
            .collect())
    }

    pub async fn list_deliveries(
        &self,
        p: &Principal,
        status: Option<DeliveryStatus>,
        page: &PageRequest,
    ) -> WebhooksResult<Page<DeliveryRow>> {
        p.require(READ)?;
        let rows = self
            .store
            .list_deliveries(&p.account_id, status, page)
            .await?;
        Ok(Page::from_rows(rows, page, |d| &d.id))
    }

    /// Sends a past event again (dead-lettered or not) to the caller's endpoints that subscribe
    /// to it, or to one named endpoint. Same `webhook-id`, so receivers that saw it skip it.
    pub async fn replay(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        id: &str,
        endpoint_id: Option<&str>,
    ) -> WebhooksResult<Vec<DeliveryRow>> {
        p.require(WRITE)?;
        let event = self.visible_event(p, id).await?;
        let targets: Vec<String> = match endpoint_id {
            Some(e) => vec![self.owned(p, e).await?.id],
            None => self
                .store
                .endpoints_for(&event.account_id)
                .await?
                .into_iter()
                .filter(|(_, acc, types)| {
                    *acc == p.account_id && subscribed(types, &event.event_type)
                })
                .map(|(id, _, _)| id)
                .collect(),
        };
        let now = now_ms();
        let rows: Vec<DeliveryRow> = targets
            .into_iter()
            .map(|endpoint_id| DeliveryRow {
                id: new_id("whd"),
                event_id: event.id.clone(),
                endpoint_id,
                account_id: p.account_id.clone(),
                status: DeliveryStatus::Pending,
                attempts: 0,
                next_attempt_at_ms: now,
                last_status_code: None,
                last_error: None,
                created_at_ms: now,
                completed_at_ms: None,
            })
            .collect();
        self.store.insert_deliveries(&rows).await?;
        self.notify();
        self.audit(
            p,
            meta,
            AuditAction::WebhookEventReplayed,
            "webhook_event",
            id,
        )
        .await;
        Ok(rows)
    }

    // ----------------------------------------------------------------- delivery worker --

    /// Creates deliveries for events not yet fanned out. Returns how many events it handled.
    pub async fn fan_out(&self) -> WebhooksResult<usize> {
        let events = self.store.unfanned_events(200).await?;
        if events.is_empty() {
            return Ok(0);
        }
        // Endpoints are read once per account in the batch; deliveries and the fanned-out marks
        // of the whole batch are written in one transaction.
        let mut endpoints: HashMap<&str, Vec<EndpointSubscription>> = HashMap::new();
        let mut deliveries: Vec<DeliveryRow> = Vec::new();
        for e in &events {
            if !endpoints.contains_key(e.account_id.as_str()) {
                let found = self.store.endpoints_for(&e.account_id).await?;
                endpoints.insert(e.account_id.as_str(), found);
            }
            let theirs = endpoints
                .get(e.account_id.as_str())
                .map_or(&[][..], Vec::as_slice);
            deliveries.extend(
                theirs
                    .iter()
                    .filter(|(_, _, types)| subscribed(types, &e.event_type))
                    .map(|(endpoint_id, account_id, _)| DeliveryRow {
                        id: new_id("whd"),
                        event_id: e.id.clone(),
                        endpoint_id: endpoint_id.clone(),
                        account_id: account_id.clone(),
                        status: DeliveryStatus::Pending,
                        attempts: 0,
                        next_attempt_at_ms: e.created_at_ms,
                        last_status_code: None,
                        last_error: None,
                        created_at_ms: now_ms(),
                        completed_at_ms: None,
                    }),
            );
        }
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        self.store.fan_out(&ids, &deliveries).await?;
        Ok(events.len())
    }

    fn lease(&self) -> Duration {
        self.settings.timeout * 2 + Duration::from_secs(5)
    }

    /// One attempt of one delivery, recorded.
    async fn attempt(&self, d: DeliveryRow) -> WebhooksResult<()> {
        let started = std::time::Instant::now();
        let at = now_ms();
        let n = d.attempts + 1;
        let endpoint = self.store.get_endpoint(&d.endpoint_id).await?;
        let event = self.store.get_event(&d.event_id).await?;
        let sent = match (endpoint, event) {
            (Some(ep), Some(ev)) if ep.status == EndpointStatus::Enabled => {
                self.send(&ep, &ev, at).await?
            }
            (Some(_), Some(_)) => deliver::Sent::Failed("the endpoint is disabled".into()),
            _ => deliver::Sent::Failed("the endpoint was deleted".into()),
        };
        let (status_code, error) = match &sent {
            deliver::Sent::Status(s) => (Some(i64::from(*s)), None),
            deliver::Sent::Failed(e) => (None, Some(e.clone())),
        };
        let ok = matches!(sent, deliver::Sent::Status(s) if (200..300).contains(&s));
        let outcome = if ok {
            AttemptOutcome::Succeeded
        } else {
            match retry_delay(
                &self.settings.retry_schedule,
                usize::try_from(n).unwrap_or(usize::MAX),
            ) {
                Some(delay) => AttemptOutcome::Retry {
                    at_ms: now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 4),
                },
                None => AttemptOutcome::Dead,
            }
        };
        let result = match outcome {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Retry { .. } => "retry",
            AttemptOutcome::Dead => "dead",
        };
        metrics::counter!("haven_webhook_attempts_total", "result" => result).increment(1);
        if outcome == AttemptOutcome::Dead {
            tracing::warn!(delivery_id = %d.id, event_id = %d.event_id, endpoint_id = %d.endpoint_id, attempts = n, "webhook delivery dead-lettered");
        }
        self.store
            .record_attempt(
                &AttemptRow {
                    delivery_id: d.id,
                    attempt: n,
                    event_id: d.event_id,
                    endpoint_id: d.endpoint_id,
                    at_ms: at,
                    status_code,
                    error,
                    duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
                },
                outcome,
            )
            .await?;
        Ok(())
    }

    async fn send(
        &self,
        ep: &EndpointRow,
        ev: &EventRow,
        at_ms: i64,
    ) -> WebhooksResult<deliver::Sent> {
        let url = self
            .vault
            .open_for_account(&field(&ep.account_id, &ep.id, "url"), &ep.url_ct)
            .await?;
        let url = String::from_utf8(url).map_err(|_| VaultError::Integrity("url"))?;
        let mut keys = Vec::with_capacity(2);
        let secret = self
            .vault
            .open_for_account(&field(&ep.account_id, &ep.id, "secret"), &ep.secret_ct)
            .await?;
        keys.extend(signing::secret_key(&String::from_utf8_lossy(&secret)));
        if let (Some(prev), Some(until)) =
            (&ep.previous_secret_ct, ep.previous_secret_expires_at_ms)
            && until > at_ms
        {
            let prev = self
                .vault
                .open_for_account(&field(&ep.account_id, &ep.id, "previous_secret"), prev)
                .await?;
            keys.extend(signing::secret_key(&String::from_utf8_lossy(&prev)));
        }
        let ts = at_ms / 1000;
        let body = ev.payload.as_bytes().to_vec();
        let headers = [
            ("webhook-id", ev.id.clone()),
            ("webhook-timestamp", ts.to_string()),
            (
                "webhook-signature",
                signing::header(&keys, &ev.id, ts, &body),
            ),
        ];
        Ok(self.sender.send(&url, &headers, body).await)
    }

    /// The delivery loop of this node: fans out new events, leases due deliveries and attempts
    /// them, at most `concurrency` at once. Runs until the task is dropped; a delivery cut off
    /// by a crash is attempted again when its lease runs out.
    ///
    /// Every batch of events anywhere in Haven wakes the loop, mostly events that no endpoint
    /// listens to (written already fanned out). Leasing is a write, so the loop leases only
    /// when there can be something new to lease: its fan-out just made deliveries, an attempt
    /// finished (a place is free), the last lease was full, or [`LEASE_EVERY`] has passed
    /// (deliveries due again after a failure, or fanned out by another node).
    pub async fn run(self: Arc<Self>) {
        use std::sync::atomic::Ordering;
        let permits = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut last_lease: Option<std::time::Instant> = None;
        let mut last_full = false;
        let mut finished_seen = self.finished.load(Ordering::Acquire);
        loop {
            let fanned = match self.fan_out().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook fan-out failed");
                    0
                }
            };
            let free = permits.available_permits();
            let finished = self.finished.load(Ordering::Acquire);
            let lease_now = fanned > 0
                || last_full
                || finished != finished_seen
                || last_lease.is_none_or(|t| t.elapsed() >= LEASE_EVERY);
            let mut claimed = 0;
            if free > 0 && lease_now {
                last_lease = Some(std::time::Instant::now());
                finished_seen = finished;
                let now = now_ms();
                let lease_until =
                    now + i64::try_from(self.lease().as_millis()).unwrap_or(i64::MAX / 4);
                metrics::counter!("haven_webhook_leases_total").increment(1);
                match self
                    .store
                    .claim_due(now, lease_until, i64::try_from(free).unwrap_or(1))
                    .await
                {
                    Ok(due) => {
                        claimed = due.len();
                        last_full = claimed == free;
                        for d in due {
                            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                                return;
                            };
                            let me = Arc::clone(&self);
                            tokio::spawn(async move {
                                let id = d.id.clone();
                                if let Err(e) = me.attempt(d).await {
                                    tracing::warn!(delivery_id = %id, error = %e, "webhook attempt failed to run");
                                }
                                drop(permit);
                                me.finished.fetch_add(1, Ordering::AcqRel);
                                me.wake.notify_one();
                            });
                        }
                    }
                    Err(e) => {
                        last_full = false;
                        tracing::warn!(error = %e, "claiming webhook deliveries failed");
                    }
                }
            }
            if claimed == 0 {
                let _ = tokio::time::timeout(LEASE_EVERY, self.wake.notified()).await;
            }
        }
    }
}

/// How often the delivery loop leases at least, when nothing on this node says there is more.
pub const LEASE_EVERY: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_match_exactly_by_group_or_all() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert!(subscribed(&s(&["key.created"]), "key.created"));
        assert!(!subscribed(&s(&["key.created"]), "key.revoked"));
        assert!(subscribed(&s(&["key.*"]), "key.revoked"));
        assert!(!subscribed(&s(&["key.*"]), "keys.revoked"));
        assert!(subscribed(&s(&["*"]), "account.created"));
        let mut errors = Vec::new();
        check_event_types(&s(&["key.*", "account.created", "*"]), &mut errors);
        assert!(errors.is_empty());
        check_event_types(&s(&["nope.*", "key.creatd"]), &mut errors);
        assert_eq!(errors.len(), 2);
    }

    #[test]
    fn the_default_schedule_retries_for_more_than_a_day() {
        let schedule: Vec<Duration> = [5u64, 300, 1800, 7200, 18_000, 36_000, 36_000, 36_000]
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect();
        let total: Duration = (1..=schedule.len())
            .filter_map(|n| retry_delay(&schedule, n))
            .sum();
        let base: Duration = schedule.iter().sum();
        assert!(base >= Duration::from_secs(24 * 3600));
        assert!(total >= base && total <= base.mul_f64(1.2));
        assert!(retry_delay(&schedule, schedule.len() + 1).is_none());
        assert!(retry_delay(&schedule, 0).is_none());
    }
}
