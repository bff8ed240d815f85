//! The one interface through which every security-relevant action is recorded.
//!
//! Events carry ids only, never PHI or secrets. The trust core (a later crate) implements this
//! with a tamper-evident log; until then the storage crate appends to a plain table.

use std::net::IpAddr;

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
