//! The one interface through which every security-relevant action is recorded.
//!
//! Events carry ids only, never PHI or secrets. The trust core (a later crate) implements this
//! with a tamper-evident log; until then the storage crate appends to a plain table.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The typed catalogue of audited actions. The string forms are stable: they are stored and
/// queried by auditors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    AuthApiKey,
    AuthBearer,
    AuthOAuthClient,
    TokenIssued,
    TokenRevoked,
    TokenIntrospected,
    AccountCreated,
    AccountRenamed,
    AccountSuspended,
    AccountReactivated,
    KeyCreated,
    KeyRotated,
    KeyRevoked,
    SigningKeyRotated,
    AdminCommand,
    ContactCreated,
    ContactRead,
    ContactUpdated,
    ContactErased,
    WebhookEndpointCreated,
    WebhookEndpointUpdated,
    WebhookEndpointDeleted,
    WebhookSecretRotated,
    WebhookEventReplayed,
    MasterKeyRotated,
    DataKeyRotated,
    SenderRegistered,
    SenderRemoved,
    MessageSent,
    MessageRead,
    ConsentRecorded,
    TemplateCreated,
    TemplateApproved,
    TemplateRejected,
    TemplateDeleted,
    MessagingPolicyChanged,
    DispatchStarted,
    DispatchRead,
    DispatchCancelled,
    VerifyStarted,
    VerifyChecked,
    VerifyCancelled,
    VerifyNextChannel,
    VerifyBlocked,
    VerifyFactorEnrolled,
    VerifyFactorConfirmed,
    VerifyFactorChecked,
    VerifyFactorRecovered,
    VerifyFactorDeleted,
    VerifyPolicyChanged,
    VerifyPrefixUnblocked,
    UsageRead,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthApiKey => "auth.api_key",
            Self::AuthBearer => "auth.bearer",
            Self::AuthOAuthClient => "auth.oauth_client",
            Self::TokenIssued => "oauth.token_issued",
            Self::TokenRevoked => "oauth.token_revoked",
            Self::TokenIntrospected => "oauth.token_introspected",
            Self::AccountCreated => "account.created",
            Self::AccountRenamed => "account.renamed",
            Self::AccountSuspended => "account.suspended",
            Self::AccountReactivated => "account.reactivated",
            Self::KeyCreated => "key.created",
            Self::KeyRotated => "key.rotated",
            Self::KeyRevoked => "key.revoked",
            Self::SigningKeyRotated => "signing_key.rotated",
            Self::AdminCommand => "admin.command",
            Self::ContactCreated => "contact.created",
            Self::ContactRead => "contact.read",
            Self::ContactUpdated => "contact.updated",
            Self::ContactErased => "contact.erased",
            Self::WebhookEndpointCreated => "webhook_endpoint.created",
            Self::WebhookEndpointUpdated => "webhook_endpoint.updated",
            Self::WebhookEndpointDeleted => "webhook_endpoint.deleted",
            Self::WebhookSecretRotated => "webhook_endpoint.secret_rotated",
            Self::WebhookEventReplayed => "webhook_event.replayed",
            Self::MasterKeyRotated => "master_key.rotated",
            Self::DataKeyRotated => "data_key.rotated",
            Self::SenderRegistered => "sender.registered",
            Self::SenderRemoved => "sender.removed",
            Self::MessageSent => "message.sent",
            Self::MessageRead => "message.read",
            Self::ConsentRecorded => "consent.recorded",
            Self::TemplateCreated => "template.created",
            Self::TemplateApproved => "template.approved",
            Self::TemplateRejected => "template.rejected",
            Self::TemplateDeleted => "template.deleted",
            Self::MessagingPolicyChanged => "messaging_policy.changed",
            Self::DispatchStarted => "dispatch.started",
            Self::DispatchRead => "dispatch.read",
            Self::DispatchCancelled => "dispatch.cancelled",
            Self::VerifyStarted => "verify.started",
            Self::VerifyChecked => "verify.checked",
            Self::VerifyCancelled => "verify.cancelled",
            Self::VerifyNextChannel => "verify.next_channel",
            Self::VerifyBlocked => "verify.blocked",
            Self::VerifyFactorEnrolled => "verify_factor.enrolled",
            Self::VerifyFactorConfirmed => "verify_factor.confirmed",
            Self::VerifyFactorChecked => "verify_factor.checked",
            Self::VerifyFactorRecovered => "verify_factor.recovered",
            Self::VerifyFactorDeleted => "verify_factor.deleted",
            Self::VerifyPolicyChanged => "verify_policy.changed",
            Self::VerifyPrefixUnblocked => "verify.prefix_unblocked",
            Self::UsageRead => "usage.read",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// Who acted: filled from the authenticated principal, or from what was claimed on failure.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    pub account_id: Option<String>,
    pub credential_id: Option<String>,
    /// `api_key`, `bearer`, `oauth_client` or `cli`.
    pub auth_method: Option<&'static str>,
    pub source_addr: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// `evt_…`, assigned when the event is made.
    pub id: String,
    pub at_ms: i64,
    pub action: AuditAction,
    pub outcome: Outcome,
    pub actor: Actor,
    pub resource_type: Option<&'static str>,
    pub resource_id: Option<String>,
    /// A machine-readable reason on failure (`bad_secret`, `revoked`, `locked_out`…), never PHI.
    pub reason: Option<&'static str>,
}

impl AuditEvent {
    pub fn new(action: AuditAction, outcome: Outcome, actor: Actor) -> Self {
        Self {
            id: crate::id::new_id("evt"),
            at_ms: crate::clock::now_ms(),
            action,
            outcome,
            actor,
            resource_type: None,
            resource_id: None,
            reason: None,
        }
    }

    pub fn resource(mut self, kind: &'static str, id: impl Into<String>) -> Self {
        self.resource_type = Some(kind);
        self.resource_id = Some(id.into());
        self
    }

    pub fn reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }
}

/// One request's audit bookkeeping: its successful authentication is held back until the
/// request ends, and recorded then only if the request recorded no event of its own. An event
/// the request records (`message.sent`, `key.created`, a read of a record…) names the same
/// credential, method, address and request id, so it stands for the authentication too, and
/// the log holds one event per request instead of two. Failures are never held back.
///
/// Run the request's future in [`RequestAudit::scope`], then call [`RequestAudit::finish`]. A
/// request dropped half-way (the client went away) still gets its authentication recorded,
/// from `Drop`, on a task of its own.
#[derive(Default)]
pub struct RequestAudit {
    state: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    auth: Option<(Arc<dyn AuditSink>, AuditEvent)>,
    covered: bool,
}

tokio::task_local! {
    static REQUEST_AUDIT: Arc<RequestAudit>;
}

impl RequestAudit {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Runs `fut` as this request: authentications inside it are held back here.
    pub async fn scope<F: std::future::Future>(self: &Arc<Self>, fut: F) -> F::Output {
        REQUEST_AUDIT.scope(Arc::clone(self), fut).await
    }

    /// Records the held-back authentication unless the request recorded an event of its own.
    pub async fn finish(&self) {
        if let Some((sink, event)) = self.uncovered() {
            sink.enqueue(event).await;
        }
    }

    fn uncovered(&self) -> Option<(Arc<dyn AuditSink>, AuditEvent)> {
        let mut held = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let auth = held.auth.take();
        if held.covered { None } else { auth }
    }
}

impl Drop for RequestAudit {
    fn drop(&mut self) {
        if let Some((sink, event)) = self.uncovered() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move { sink.enqueue(event).await });
                }
                Err(_) => tracing::error!(
                    action = event.action.as_str(),
                    "no runtime to record a held-back authentication"
                ),
            }
        }
    }
}

/// Holds back `event`, a successful authentication, in the current request (see
/// [`RequestAudit`]); gives it back, to be recorded now, outside a request.
pub fn hold_authentication(sink: &Arc<dyn AuditSink>, event: AuditEvent) -> Option<AuditEvent> {
    match REQUEST_AUDIT.try_with(Arc::clone) {
        Ok(req) => {
            let mut held = req.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((sink, earlier)) = held.auth.replace((Arc::clone(sink), event)) {
                // A second authentication in one request: the first is recorded as it was.
                drop(held);
                tokio::spawn(async move { sink.enqueue(earlier).await });
            }
            None
        }
        Err(_) => Some(event),
    }
}

/// Called by every [`AuditSink`] for each event it takes: a successful event of the current
/// request's own credential stands for the authentication held back there.
pub fn note_recorded(event: &AuditEvent) {
    if event.outcome != Outcome::Success {
        return;
    }
    let _ = REQUEST_AUDIT.try_with(|req| {
        let mut held = req.state.lock().unwrap_or_else(|p| p.into_inner());
        let same = held.auth.as_ref().is_some_and(|(_, auth)| {
            auth.actor.credential_id.is_some()
                && auth.actor.credential_id == event.actor.credential_id
                && auth.actor.request_id == event.actor.request_id
        });
        if same {
            held.covered = true;
        }
    });
}

/// Appends audit events. Implementations apply back-pressure rather than drop when they fall
/// behind.
#[async_trait::async_trait]
pub trait AuditSink: Send + Sync {
    /// Returns once the event is durably stored (security changes, failures).
    async fn record(&self, event: AuditEvent);
    /// Returns once the event is queued for the next group commit, a few milliseconds away: for
    /// high-volume events (successful authentication) where waiting would slow every request.
    async fn enqueue(&self, event: AuditEvent) {
        self.record(event).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A sink that keeps what it is given, and notes it as the real one does.
    #[derive(Default)]
    struct Kept(Mutex<Vec<AuditEvent>>);

    #[async_trait::async_trait]
    impl AuditSink for Kept {
        async fn record(&self, event: AuditEvent) {
            note_recorded(&event);
            self.0.lock().unwrap().push(event);
        }
    }

    impl Kept {
        fn actions(&self) -> Vec<&'static str> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|e| e.action.as_str())
                .collect()
        }
    }

    fn actor(credential: &str, request: &str) -> Actor {
        Actor {
            account_id: Some("acc_1".into()),
            credential_id: Some(credential.into()),
            auth_method: Some("api_key"),
            source_addr: None,
            user_agent: None,
            request_id: Some(request.into()),
        }
    }

    fn auth(credential: &str, request: &str) -> AuditEvent {
        AuditEvent::new(
            AuditAction::AuthApiKey,
            Outcome::Success,
            actor(credential, request),
        )
    }

    fn renamed(outcome: Outcome, credential: &str) -> AuditEvent {
        AuditEvent::new(
            AuditAction::AccountRenamed,
            outcome,
            actor(credential, "req_1"),
        )
    }

    /// Authenticates inside a request, then records `then` (if any) and ends the request.
    async fn request(kept: &Arc<Kept>, then: Option<AuditEvent>) {
        let sink: Arc<dyn AuditSink> = kept.clone();
        let req = RequestAudit::new();
        req.scope(async {
            assert!(hold_authentication(&sink, auth("key_a", "req_1")).is_none());
            if let Some(e) = then {
                sink.enqueue(e).await;
            }
        })
        .await;
        req.finish().await;
    }

    #[tokio::test]
    async fn a_request_with_its_own_event_is_that_event_alone() {
        let kept = Arc::new(Kept::default());
        request(&kept, Some(renamed(Outcome::Success, "key_a"))).await;
        assert_eq!(kept.actions(), ["account.renamed"]);
    }

    #[tokio::test]
    async fn otherwise_the_authentication_is_recorded_when_the_request_ends() {
        // Nothing else recorded, a failure, or another credential's event: none stands for it.
        let kept = Arc::new(Kept::default());
        request(&kept, None).await;
        assert_eq!(kept.actions(), ["auth.api_key"]);

        let kept = Arc::new(Kept::default());
        request(&kept, Some(renamed(Outcome::Failure, "key_a"))).await;
        assert_eq!(kept.actions(), ["account.renamed", "auth.api_key"]);

        let kept = Arc::new(Kept::default());
        request(&kept, Some(renamed(Outcome::Success, "key_b"))).await;
        assert_eq!(kept.actions(), ["account.renamed", "auth.api_key"]);
    }

    #[tokio::test]
    async fn an_abandoned_request_still_records_its_authentication() {
        let kept = Arc::new(Kept::default());
        let sink: Arc<dyn AuditSink> = kept.clone();
        let req = RequestAudit::new();
        let abandoned = req.scope(async {
            assert!(hold_authentication(&sink, auth("key_a", "req_1")).is_none());
            std::future::pending::<()>().await;
        });
        // Polled once (the authentication is held), then dropped with the request.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(10), abandoned).await;
        drop(req);
        for _ in 0..100 {
            if !kept.actions().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(kept.actions(), ["auth.api_key"]);
    }

    #[tokio::test]
    async fn outside_a_request_nothing_is_held() {
        let kept = Arc::new(Kept::default());
        let sink: Arc<dyn AuditSink> = kept.clone();
        assert!(hold_authentication(&sink, auth("key_a", "req_1")).is_some());
    }
}
