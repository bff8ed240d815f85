//! Verify: a one-time code to a patient's phone or mailbox, tried channel after channel.
//!
//! - **Codes** are digits from the operating system's CSPRNG (rejection-sampled, so every
//!   digit is uniform), stored only as a keyed hash (HMAC-SHA-256 under the account's index
//!   key, bound to the verification), compared in constant time, used once.
//! - **Attempts** are taken atomically before a code is compared, so parallel guesses cannot
//!   exceed the limit; the last wrong one fails the verification.
//! - **Channels**: each step of the workflow sends a new code through the messaging pipeline
//!   (the previous code stops working); the next step follows after `channel_timeout` or on
//!   request. The hash of a step's code is stored before its message, and the message has an
//!   id chosen at creation: a step retried after a crash either finds its message (whose code
//!   is the stored one) or sends a fresh code under a fresh hash.
//! - **Messages** are Haven's own localized wording with the brand and a warning never to
//!   share the code, and the autofill line on SMS; the code is masked in every read of the
//!   message and removed from it once a carrier took it.

pub mod factors;
pub mod guard;
pub mod store;
pub mod texts;

pub use guard::VerifyPolicy;
use haven_channel::ChannelKind;
use haven_identity::{FieldError, IdentityError, Principal, RequestMeta, Right, Scope};
use haven_messaging::batch::Batcher;
use haven_messaging::{Messaging, MessagingError, SendRequest};
use haven_platform::audit::{AuditAction, AuditEvent, AuditSink, Outcome};
use haven_platform::clock::{duration_ms as ms, now_ms};
use haven_platform::events::{EventHook, OutboxEvent};
use haven_platform::id::new_id;
use haven_platform::store::StoreError;
use haven_vault::{FieldRef, Vault};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use store::Velocity;
pub use store::{Attempt, BlockedPrefix, VerificationRow, VerifyStepRow, VerifyStore};
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

pub const VERIFICATION_PREFIX: &str = "ver";
const WRITE: Scope = Scope::new("verify", Right::Write);
const READ: Scope = Scope::new("verify", Right::Read);
const ADMIN: Scope = Scope::new("verify", Right::Admin);
const TABLE: &str = "verifications";
const MAX_STEPS: usize = 3;
const MAX_BRAND: usize = 30;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    #[error("not found")]
    NotFound,
    /// The verification is no longer pending (completed, failed, expired, cancelled,
    /// superseded).
    #[error("the verification has ended ({0})")]
    Ended(String),
    #[error("the code has expired")]
    Expired,
    #[error("wrong code")]
    WrongCode { attempts_remaining: i64 },
    #[error("no further channel")]
    NoNextChannel,
    #[error("busy")]
    Busy,
    #[error("too many verifications to this recipient")]
    TooMany { retry_after: Duration },
    #[error("the factor is locked after too many wrong codes")]
    FactorLocked { retry_after: Duration },
    #[error("the code was used already")]
    CodeReused,
    /// The destination is refused: premium rate, a high-risk range, a blocked prefix, or a
    /// country outside the account's allowlist.
    #[error("codes are not sent to this destination ({0})")]
    DestinationNotAllowed(&'static str),
    /// The pumping guard blocked the destination's prefix.
    #[error("the destination prefix {0} is blocked")]
    DestinationBlocked(String),
    #[error(transparent)]
    Messaging(#[from] MessagingError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Vault(#[from] haven_vault::VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type VerifyResult<T> = Result<T, VerifyError>;

#[derive(Debug, Clone)]
pub struct VerifySettings {
    /// Wrong codes before a verification fails.
    pub max_attempts: i64,
    /// Verifications an account may start to one recipient per `recipient_window`.
    pub per_recipient: i64,
    pub recipient_window: Duration,
    /// Verifications per end-user IP address and per destination prefix in that window.
    pub per_ip: i64,
    pub per_prefix: i64,
    /// SMS pumping: over this window, a prefix with at least `pumping_min_sends` codes sent
    /// of which fewer than `pumping_min_conversion` were used is blocked. Verifications still
    /// pending and younger than `pumping_grace` are not counted yet.
    pub pumping_window: Duration,
    pub pumping_min_sends: i64,
    pub pumping_min_conversion: f64,
    pub pumping_grace: Duration,
    pub lease: Duration,
    pub poll: Duration,
}

impl Default for VerifySettings {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            per_recipient: 5,
            recipient_window: Duration::from_secs(600),
            per_ip: 10,
            per_prefix: 100,
            pumping_window: Duration::from_secs(3600),
            pumping_min_sends: 20,
            pumping_min_conversion: 0.2,
            pumping_grace: Duration::from_secs(120),
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(500),
        }
    }
}

/// One channel of a workflow, as the API takes it (and as it is sealed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Channel {
    pub channel: String,
    pub to: String,
    /// A sender registered to the account on that channel.
    pub from: String,
}

/// A verification as asked for.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub brand: String,
    pub workflow: Vec<Channel>,
    pub locale: Option<String>,
    pub code_length: Option<u32>,
    pub expiry_seconds: Option<u64>,
    pub channel_timeout_seconds: Option<u64>,
    /// The app's domain, for the SMS autofill line (`@domain #code`).
    pub app_domain: Option<String>,
    /// The end user's IP address, when the app passes it (per-IP velocity limit).
    pub client_ip: Option<String>,
}

/// A verification as shown (no addresses, no code).
#[derive(Debug, Clone)]
pub struct Verification {
    pub id: String,
    pub account_id: String,
    pub status: String,
    pub brand: String,
    pub locale: String,
    pub code_length: i64,
    pub current_step: i64,
    pub steps: Vec<VerifyStepRow>,
    pub attempts: i64,
    pub max_attempts: i64,
    pub expires_at_ms: i64,
    pub next_step_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub final_at_ms: Option<i64>,
}

pub struct Verifier {
    /// Group commit of new verifications and of their first step's outcome: one transaction
    /// per batch of concurrent starts.
    inserter: Batcher<store::NewVerification>,
    finisher: Batcher<store::Progress>,
    store: Arc<dyn VerifyStore>,
    messaging: Arc<Messaging>,
    vault: Arc<Vault>,
    audit: Arc<dyn AuditSink>,
    settings: VerifySettings,
    wake: Notify,
    event_hook: EventHook,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier")
    }
}

fn field<'a>(account_id: &'a str, id: &'a str) -> FieldRef<'a> {
    FieldRef {
        account_id,
        table: TABLE,
        column: "workflow",
        row_id: id,
    }
}

/// A code of `len` uniform digits from the CSPRNG.
pub fn new_code(len: usize) -> Result<String, haven_crypto::CryptoError> {
    let mut code = String::with_capacity(len);
    while code.len() < len {
        for b in haven_crypto::random_bytes::<16>()? {
            // 250 = 25 × 10: bytes above it would favour the low digits.
            if b < 250 && code.len() < len {
                code.push(char::from(b'0' + b % 10));
            }
        }
    }
    Ok(code)
}

fn event(event_type: &'static str, row: &VerificationRow, extra: serde_json::Value) -> OutboxEvent {
    let mut data = json!({ "verification_id": row.id, "status": row.status });
    if let (Some(d), Some(e)) = (data.as_object_mut(), extra.as_object()) {
        d.extend(e.clone());
    }
    OutboxEvent::new(event_type, &row.account_id, data)
}

fn domain_ok(d: &str) -> bool {
    d.len() <= 253
        && d.split('.').count() >= 2
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl Verifier {
    pub fn new(
        store: Arc<dyn VerifyStore>,
        messaging: Arc<Messaging>,
        vault: Arc<Vault>,
        audit: Arc<dyn AuditSink>,
        settings: VerifySettings,
    ) -> Arc<Self> {
        let s = Arc::clone(&store);
        let inserter = Batcher::spawn(
            "verifications",
            256,
            move |items: Vec<store::NewVerification>| {
                let s = Arc::clone(&s);
                async move { s.insert_verifications(&items).await }
            },
        );
        let s = Arc::clone(&store);
        let finisher = Batcher::spawn(
            "verification_progress",
            256,
            move |items: Vec<store::Progress>| {
                let s = Arc::clone(&s);
                async move { s.save_progress(&items).await }
            },
        );
        Arc::new(Self {
            inserter,
            finisher,
            store,
            messaging,
            vault,
            audit,
            settings,
            wake: Notify::new(),
            event_hook: EventHook::default(),
        })
    }

    pub fn on_events(&self, hook: Arc<dyn Fn() + Send + Sync>) {
        self.event_hook.set(hook);
    }

    fn events_written(&self) {
        self.event_hook.fire();
    }

    async fn audit(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        action: AuditAction,
        outcome: Outcome,
        id: &str,
    ) {
        self.audit
            .record(AuditEvent::new(action, outcome, p.actor(meta)).resource("verification", id))
            .await;
    }

    async fn code_hash(&self, account_id: &str, id: &str, code: &str) -> VerifyResult<Vec<u8>> {
        Ok(self
            .vault
            .blind_index(account_id, "verify:code", &format!("{id}:{code}"))
            .await?)
    }

    /// Checks a start request into its parts, every problem at once.
    fn validate(req: &StartRequest) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let brand = req.brand.trim();
        if brand.is_empty()
            || brand.chars().count() > MAX_BRAND
            || brand.chars().any(|c| c.is_control())
        {
            errors.push(FieldError::new(
                "brand",
                format!("must be 1 to {MAX_BRAND} characters on one line"),
            ));
        }
        if req.workflow.is_empty() || req.workflow.len() > MAX_STEPS {
            errors.push(FieldError::new(
                "workflow",
                format!("must have 1 to {MAX_STEPS} channels"),
            ));
        }
        if let Some(n) = req.code_length
            && !(4..=10).contains(&n)
        {
            errors.push(FieldError::new("code_length", "must be between 4 and 10"));
        }
        if let Some(e) = req.expiry_seconds
            && !(60..=3600).contains(&e)
        {
            errors.push(FieldError::new(
                "expiry_seconds",
                "must be between 60 and 3600",
            ));
        }
        if let Some(t) = req.channel_timeout_seconds
            && !(15..=900).contains(&t)
        {
            errors.push(FieldError::new(
                "channel_timeout_seconds",
                "must be between 15 and 900",
            ));
        }
        if req.workflow.len() > 1
            && req.channel_timeout_seconds.unwrap_or(60) >= req.expiry_seconds.unwrap_or(300)
        {
            errors.push(FieldError::new(
                "channel_timeout_seconds",
                "must be shorter than expiry_seconds, or the code expires before the next channel",
            ));
        }
        if let Some(l) = &req.locale
            && (l.is_empty()
                || l.len() > 35
                || !l
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            errors.push(FieldError::new(
                "locale",
                "must be a language tag such as en or es-MX",
            ));
        }
        if let Some(d) = &req.app_domain
            && !domain_ok(d)
        {
            errors.push(FieldError::new(
                "app_domain",
                "must be a domain name such as app.clinic.example.org",
            ));
        }
        if let Some(ip) = &req.client_ip
            && ip.parse::<std::net::IpAddr>().is_err()
        {
            errors.push(FieldError::new(
                "client_ip",
                "must be an IPv4 or IPv6 address",
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The account's Verify policy.
    async fn policy_of(&self, account_id: &str) -> VerifyResult<VerifyPolicy> {
        match self.store.get_verify_policy(account_id).await? {
            Some(raw) => Ok(serde_json::from_str(&raw)
                .map_err(|_| StoreError::Backend("stored verify policy is not readable".into()))?),
            None => Ok(VerifyPolicy::default()),
        }
    }

    pub async fn policy(&self, p: &Principal) -> VerifyResult<VerifyPolicy> {
        p.require(READ)?;
        self.policy_of(&p.account_id).await
    }

    pub async fn set_policy(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        policy: VerifyPolicy,
    ) -> VerifyResult<VerifyPolicy> {
        p.require(ADMIN)?;
        let policy = policy.parse().map_err(VerifyError::Invalid)?;
        let raw = serde_json::to_string(&policy)
            .map_err(|_| StoreError::Backend("policy not serializable".into()))?;
        self.store
            .put_verify_policy(&p.account_id, &raw, now_ms())
            .await?;
        self.audit(
            p,
            meta,
            AuditAction::VerifyPolicyChanged,
            Outcome::Success,
            &p.account_id,
        )
        .await;
        Ok(policy)
    }

    pub async fn blocked_prefixes(&self, p: &Principal) -> VerifyResult<Vec<BlockedPrefix>> {
        p.require(READ)?;
        Ok(self.store.list_blocked_prefixes(&p.account_id).await?)
    }

    /// Lifts a pumping block; the prefix's statistics start again from now.
    pub async fn unblock(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        prefix: &str,
    ) -> VerifyResult<()> {
        p.require(ADMIN)?;
        let prefix = if prefix.starts_with('+') {
            prefix.to_owned()
        } else {
            format!("+{prefix}")
        };
        let e = OutboxEvent::new(
            "verify.prefix_unblocked",
            &p.account_id,
            json!({ "prefix": prefix }),
        );
        if !self
            .store
            .unblock_prefix(&p.account_id, &prefix, now_ms(), &e)
            .await?
        {
            return Err(VerifyError::NotFound);
        }
        self.events_written();
        self.audit(
            p,
            meta,
            AuditAction::VerifyPrefixUnblocked,
            Outcome::Success,
            &prefix,
        )
        .await;
        Ok(())
    }

    /// The fraud guard: refuses a destination, or counts it against the velocity limits and
    /// the pumping statistics. Returns the prefix the verification is counted under.
    async fn guard(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        workflow: &[Channel],
        client_ip_bidx: Option<&[u8]>,
    ) -> VerifyResult<Option<String>> {
        let account = p.account_id.as_str();
        let policy = self.policy_of(account).await?;
        let mut dest_prefix = None;
        for ch in workflow.iter().filter(|c| c.channel == "sms") {
            let d = guard::classify(&ch.to);
            if let Some(reason) = policy.refusal(&ch.to, &d) {
                metrics::counter!("haven_verify_refused_total", "reason" => reason).increment(1);
                self.audit(
                    p,
                    meta,
                    AuditAction::VerifyBlocked,
                    Outcome::Failure,
                    reason,
                )
                .await;
                return Err(VerifyError::DestinationNotAllowed(reason));
            }
            if dest_prefix.is_none() {
                dest_prefix = Some(d.prefix);
            }
        }
        let now = now_ms();
        let since = now - ms(self.settings.recipient_window);
        let limited = |what: &'static str| {
            metrics::counter!("haven_verify_refused_total", "reason" => what).increment(1);
            VerifyError::TooMany {
                retry_after: self.settings.recipient_window / 2,
            }
        };
        if let Some(ip) = client_ip_bidx
            && self
                .store
                .count_velocity(account, Velocity::ClientIp(ip), since)
                .await?
                >= self.settings.per_ip
        {
            self.audit(
                p,
                meta,
                AuditAction::VerifyBlocked,
                Outcome::Failure,
                "client_ip_rate",
            )
            .await;
            return Err(limited("client_ip_rate"));
        }
        let Some(prefix) = dest_prefix else {
            return Ok(None);
        };
        if self
            .store
            .count_velocity(account, Velocity::Prefix(&prefix), since)
            .await?
            >= self.settings.per_prefix
        {
            self.audit(
                p,
                meta,
                AuditAction::VerifyBlocked,
                Outcome::Failure,
                "prefix_rate",
            )
            .await;
            return Err(limited("prefix_rate"));
        }
        let blocked = self.store.blocked_prefix(account, &prefix).await?;
        if blocked.as_ref().is_some_and(|b| b.status == "blocked") {
            metrics::counter!("haven_verify_refused_total", "reason" => "prefix_blocked")
                .increment(1);
            self.audit(
                p,
                meta,
                AuditAction::VerifyBlocked,
                Outcome::Failure,
                &prefix,
            )
            .await;
            return Err(VerifyError::DestinationBlocked(prefix));
        }
        let since = (now - ms(self.settings.pumping_window))
            .max(blocked.and_then(|b| b.unblocked_at_ms).unwrap_or(0));
        let (sends, conversions) = self
            .store
            .prefix_stats(
                account,
                &prefix,
                since,
                now - ms(self.settings.pumping_grace),
            )
            .await?;
        if guard::pumped(
            sends,
            conversions,
            self.settings.pumping_min_sends,
            self.settings.pumping_min_conversion,
        ) {
            let row = BlockedPrefix {
                account_id: account.to_owned(),
                prefix: prefix.clone(),
                status: "blocked".into(),
                sends,
                conversions,
                blocked_at_ms: now,
                unblocked_at_ms: None,
            };
            let e = OutboxEvent::new(
                "verify.prefix_blocked",
                account,
                json!({ "prefix": prefix, "sends": sends, "conversions": conversions }),
            );
            self.store.block_prefix(&row, &e).await?;
            self.events_written();
            tracing::warn!(%prefix, sends, conversions, "SMS pumping suspected: prefix blocked");
            metrics::counter!("haven_verify_prefixes_blocked_total").increment(1);
            self.audit(
                p,
                meta,
                AuditAction::VerifyBlocked,
                Outcome::Failure,
                &prefix,
            )
            .await;
            return Err(VerifyError::DestinationBlocked(prefix));
        }
        Ok(Some(prefix))
    }

    /// The message a step sends: Haven's localized text with the code.
    fn message(row: &VerificationRow, ch: &Channel, code: &str) -> SendRequest {
        let expiry = u64::try_from(row.expiry_ms / 1000).unwrap_or(300);
        let email = ch.channel == "email";
        SendRequest {
            channel: ch.channel.clone(),
            to: ch.to.clone(),
            from: ch.from.clone(),
            subject: email.then(|| texts::subject(&row.locale, &row.brand)),
            text: Some(if email {
                texts::body(&row.locale, &row.brand, code, expiry)
            } else {
                texts::sms(
                    &row.locale,
                    &row.brand,
                    code,
                    expiry,
                    row.app_domain.as_deref(),
                )
            }),
            ttl_seconds: Some(expiry.max(haven_messaging::model::MIN_TTL_SECONDS)),
            receipt: Some(true),
            urgent: Some(true),
            system_template: Some("haven:verify.code".into()),
            secret: Some(code.to_owned()),
            ..Default::default()
        }
    }

    /// Starts a verification: the first channel's code is on its way when this returns.
    pub async fn start(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        req: StartRequest,
    ) -> VerifyResult<Verification> {
        p.require(WRITE)?;
        Self::validate(&req).map_err(VerifyError::Invalid)?;
        let code_length = i64::from(req.code_length.unwrap_or(6));
        let expiry_ms = i64::try_from(req.expiry_seconds.unwrap_or(300)).unwrap_or(300) * 1000;
        let locale = req.locale.clone().unwrap_or_else(|| "en".into());
        // Every channel is checked now, with the text it will carry.
        let mut errors = Vec::new();
        let mut workflow = Vec::with_capacity(req.workflow.len());
        for (i, ch) in req.workflow.iter().enumerate() {
            let probe = SendRequest {
                channel: ch.channel.clone(),
                to: ch.to.clone(),
                from: ch.from.clone(),
                subject: (ch.channel == "email").then(|| texts::subject(&locale, &req.brand)),
                text: Some(texts::sms(
                    &locale,
                    &req.brand,
                    "000000",
                    300,
                    req.app_domain.as_deref(),
                )),
                system_template: Some("haven:verify.code".into()),
                ..Default::default()
            };
            match self.messaging.prepare(&p.account_id, probe).await {
                Ok((v, _)) => workflow.push(Channel {
                    channel: v.channel.as_str().to_owned(),
                    to: v.to,
                    from: v.from,
                }),
                Err(MessagingError::Invalid(es)) => {
                    for e in es {
                        errors.push(FieldError::new(
                            format!("workflow[{i}].{}", e.field),
                            e.message,
                        ));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !errors.is_empty() {
            return Err(VerifyError::Invalid(errors));
        }
        let first = workflow
            .first()
            .cloned()
            .ok_or_else(|| VerifyError::Invalid(vec![FieldError::new("workflow", "is empty")]))?;
        let kind = ChannelKind::parse(&first.channel)
            .ok_or_else(|| StoreError::Backend("channel".into()))?;
        let recipient_bidx = self
            .messaging
            .peer_index(&p.account_id, kind, &first.to)
            .await?;
        let client_ip_bidx = match &req.client_ip {
            Some(ip) => Some(
                self.vault
                    .blind_index(&p.account_id, "verify:client_ip", ip)
                    .await?,
            ),
            None => None,
        };
        let dest_prefix = self
            .guard(p, meta, &workflow, client_ip_bidx.as_deref())
            .await?;
        let now = now_ms();
        let recent = self
            .store
            .count_velocity(
                &p.account_id,
                Velocity::Recipient(&recipient_bidx),
                now - ms(self.settings.recipient_window),
            )
            .await?;
        if recent >= self.settings.per_recipient {
            metrics::counter!("haven_verify_refused_total", "reason" => "recipient_rate")
                .increment(1);
            self.audit(
                p,
                meta,
                AuditAction::VerifyBlocked,
                Outcome::Failure,
                "recipient_rate",
            )
            .await;
            return Err(VerifyError::TooMany {
                retry_after: self.settings.recipient_window / 2,
            });
        }
        let id = new_id(VERIFICATION_PREFIX);
        let plain = serde_json::to_vec(&workflow)
            .map_err(|_| StoreError::Backend("workflow not serializable".into()))?;
        let (contact_id, workflow_ct) = self
            .messaging
            .seal_about(&field(&p.account_id, &id), kind, &first.to, &plain)
            .await?;
        let timeout_ms =
            i64::try_from(req.channel_timeout_seconds.unwrap_or(60)).unwrap_or(60) * 1000;
        let mut row = VerificationRow {
            id: id.clone(),
            account_id: p.account_id.clone(),
            status: "pending".into(),
            brand: req.brand.trim().to_owned(),
            locale,
            code_length,
            app_domain: req.app_domain.clone(),
            workflow_ct,
            contact_id,
            recipient_bidx,
            dest_prefix,
            client_ip_bidx,
            step_count: i64::try_from(workflow.len()).unwrap_or(1),
            current_step: 0,
            code_hash: None,
            attempts: 0,
            max_attempts: self.settings.max_attempts,
            expiry_ms,
            channel_timeout_ms: timeout_ms,
            next_step_at_ms: None,
            expires_at_ms: now + expiry_ms,
            wake_at_ms: now + ms(self.settings.lease),
            created_by: Some(p.credential_id.clone()),
            created_at_ms: now,
            updated_at_ms: now,
            final_at_ms: None,
        };
        let mut steps: Vec<VerifyStepRow> = workflow
            .iter()
            .enumerate()
            .map(|(i, c)| VerifyStepRow {
                verification_id: id.clone(),
                step_index: i64::try_from(i).unwrap_or(0),
                channel: c.channel.clone(),
                message_id: new_id(haven_messaging::model::MESSAGE_PREFIX),
                status: "pending".into(),
                reason: None,
                sent_at_ms: None,
            })
            .collect();
        // The row is stored with its first code's hash, leased to this request until that
        // code is out.
        let first_code = self.stage_code(&mut row, &mut steps, 0).await?;
        let (account, by) = (p.account_id.clone(), id.clone());
        self.inserter
            .submit(store::NewVerification {
                row: row.clone(),
                steps: steps.clone(),
                superseded_event: Box::new(move |old| {
                    OutboxEvent::new(
                        "verify.superseded",
                        &account,
                        json!({ "verification_id": old, "status": "superseded", "by": by }),
                    )
                }),
            })
            .await?;
        let mut events = Vec::new();
        let sent = self
            .send_from(
                &mut row,
                &mut steps,
                &workflow,
                0,
                Some(first_code),
                &mut events,
            )
            .await;
        self.finisher
            .submit(store::Progress {
                row: row.clone(),
                steps: steps.clone(),
                events,
            })
            .await?;
        self.events_written();
        self.wake.notify_one();
        self.audit(p, meta, AuditAction::VerifyStarted, Outcome::Success, &id)
            .await;
        metrics::counter!("haven_verify_started_total").increment(1);
        match sent {
            Err(e) => Err(e),
            Ok(()) => Ok(self.view(&row, steps)),
        }
    }

    /// Sends the code of step `from` (or, when a step cannot be sent, the next one). On
    /// return the row and steps say what happened; the caller saves them. Errs with the
    /// last step's error when no step could be sent (the verification then failed).
    async fn send_from(
        &self,
        row: &mut VerificationRow,
        steps: &mut [VerifyStepRow],
        workflow: &[Channel],
        from: usize,
        mut prepared: Option<String>,
        events: &mut Vec<OutboxEvent>,
    ) -> VerifyResult<()> {
        let mut last_err = None;
        for i in from..workflow.len() {
            let Some(step) = steps.get(i).cloned() else {
                break;
            };
            row.current_step = i64::try_from(i).unwrap_or(0);
            // A step left `sending` by a crash whose message was stored: that message carries
            // the code whose hash the row holds.
            if step.status == "sending"
                && self
                    .messaging
                    .delivery_state(&row.account_id, &step.message_id)
                    .await?
                    .is_some()
            {
                self.sent(row, steps, workflow.len(), i, events);
                return Ok(());
            }
            // The hash is stored first (the lease kept): a message only ever carries the
            // stored code. A new verification stored its first code's hash with itself.
            let code = match prepared.take() {
                Some(code) => code,
                None => {
                    let code = self.stage_code(row, steps, i).await?;
                    if !self
                        .store
                        .save_verification(row, steps, &[], row.wake_at_ms)
                        .await?
                    {
                        return Err(VerifyError::Ended("no longer pending".into()));
                    }
                    code
                }
            };
            let msg = Self::message(row, &workflow[i], &code);
            match self
                .messaging
                .send_step(
                    &row.account_id,
                    row.created_by.clone(),
                    &row.id,
                    &step.message_id,
                    msg,
                )
                .await
            {
                Ok(_) => {
                    self.sent(row, steps, workflow.len(), i, events);
                    return Ok(());
                }
                Err(e) if !e.is_transient() => {
                    tracing::info!(verification_id = %row.id, step = i, reason = e.reason(), "verify step skipped");
                    if let Some(s) = steps.get_mut(i) {
                        s.status = "skipped".into();
                        s.reason = Some(e.reason().into());
                    }
                    last_err = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Nothing could be sent.
        let at = now_ms();
        row.status = "failed".into();
        row.final_at_ms = Some(at);
        row.code_hash = None;
        row.next_step_at_ms = None;
        events.push(event(
            "verify.failed",
            row,
            json!({ "reason": "no_channel_could_be_sent" }),
        ));
        Err(last_err.map_or(VerifyError::NoNextChannel, VerifyError::Messaging))
    }

    /// Chooses step `i`'s code: its hash goes into the row, the step becomes `sending` and the
    /// row stays leased. The caller stores the row before the message goes.
    async fn stage_code(
        &self,
        row: &mut VerificationRow,
        steps: &mut [VerifyStepRow],
        i: usize,
    ) -> VerifyResult<String> {
        let code = new_code(usize::try_from(row.code_length).unwrap_or(6))
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let now = now_ms();
        row.current_step = i64::try_from(i).unwrap_or(0);
        row.code_hash = Some(self.code_hash(&row.account_id, &row.id, &code).await?);
        row.expires_at_ms = now + row.expiry_ms;
        row.wake_at_ms = now + ms(self.settings.lease);
        if let Some(s) = steps.get_mut(i) {
            s.status = "sending".into();
        }
        Ok(code)
    }

    /// Records that step `i`'s code is on its way, and when to look next.
    fn sent(
        &self,
        row: &mut VerificationRow,
        steps: &mut [VerifyStepRow],
        count: usize,
        i: usize,
        events: &mut Vec<OutboxEvent>,
    ) {
        let at = now_ms();
        let Some(s) = steps.get_mut(i) else { return };
        s.status = "sent".into();
        s.sent_at_ms = Some(at);
        let (channel, message_id) = (s.channel.clone(), s.message_id.clone());
        row.next_step_at_ms = (i + 1 < count).then(|| at + row.channel_timeout_ms);
        row.wake_at_ms = row
            .next_step_at_ms
            .map_or(row.expires_at_ms, |n| n.min(row.expires_at_ms));
        events.push(event(
            "verify.code_sent",
            row,
            json!({ "step": i, "channel": channel, "message_id": message_id }),
        ));
        metrics::counter!("haven_verify_codes_sent_total", "channel" => channel).increment(1);
    }

    async fn workflow(&self, row: &VerificationRow) -> VerifyResult<Option<Vec<Channel>>> {
        let Some(raw) = self
            .messaging
            .open_about(
                &field(&row.account_id, &row.id),
                row.contact_id.as_deref(),
                &row.workflow_ct,
            )
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_slice(&raw).map_err(|_| {
            StoreError::Backend("stored verification workflow is not readable".into())
        })?))
    }

    fn view(&self, row: &VerificationRow, steps: Vec<VerifyStepRow>) -> Verification {
        Verification {
            id: row.id.clone(),
            account_id: row.account_id.clone(),
            status: row.status.clone(),
            brand: row.brand.clone(),
            locale: row.locale.clone(),
            code_length: row.code_length,
            current_step: row.current_step,
            steps,
            attempts: row.attempts,
            max_attempts: row.max_attempts,
            expires_at_ms: row.expires_at_ms,
            next_step_at_ms: row.next_step_at_ms.filter(|_| row.status == "pending"),
            created_at_ms: row.created_at_ms,
            final_at_ms: row.final_at_ms,
        }
    }

    async fn owned(&self, p: &Principal, id: &str) -> VerifyResult<VerificationRow> {
        if !haven_identity::is_id(VERIFICATION_PREFIX, id) {
            return Err(VerifyError::NotFound);
        }
        match self.store.get_verification(id).await? {
            Some(r) if r.account_id == p.account_id => Ok(r),
            _ => Err(VerifyError::NotFound),
        }
    }

    async fn current(&self, id: &str) -> VerifyResult<Verification> {
        let row = self
            .store
            .get_verification(id)
            .await?
            .ok_or(VerifyError::NotFound)?;
        let steps = self.store.verification_steps(id).await?;
        Ok(self.view(&row, steps))
    }

    pub async fn get(&self, p: &Principal, id: &str) -> VerifyResult<Verification> {
        p.require(READ)?;
        let row = self.owned(p, id).await?;
        let steps = self.store.verification_steps(id).await?;
        Ok(self.view(&row, steps))
    }

    /// Checks a code. Each check takes one attempt before the code is compared.
    pub async fn check(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        id: &str,
        code: &str,
    ) -> VerifyResult<Verification> {
        p.require(WRITE)?;
        let row = self.owned(p, id).await?;
        if row.status != "pending" {
            return Err(VerifyError::Ended(row.status));
        }
        let len = usize::try_from(row.code_length).unwrap_or(6);
        if code.len() != len || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VerifyError::Invalid(vec![FieldError::new(
                "code",
                format!("must be {len} digits"),
            )]));
        }
        let Some(attempt) = self.store.take_attempt(id).await? else {
            let now = self.store.get_verification(id).await?.map(|r| r.status);
            return Err(VerifyError::Ended(now.unwrap_or_else(|| "failed".into())));
        };
        let now = now_ms();
        let mut ended = row.clone();
        if now >= attempt.expires_at_ms {
            ended.status = "expired".into();
            let e = event("verify.expired", &ended, json!({}));
            if self
                .store
                .end_verification(id, None, "expired", now, &e)
                .await?
            {
                self.events_written();
            }
            self.audit(p, meta, AuditAction::VerifyChecked, Outcome::Failure, id)
                .await;
            return Err(VerifyError::Expired);
        }
        let given = self.code_hash(&row.account_id, id, code).await?;
        let matches = attempt
            .code_hash
            .as_deref()
            .is_some_and(|h| bool::from(h.ct_eq(given.as_slice())));
        if matches {
            ended.status = "completed".into();
            let e = event(
                "verify.succeeded",
                &ended,
                json!({ "attempts": attempt.attempts }),
            );
            if self
                .store
                .end_verification(id, Some(&given), "completed", now, &e)
                .await?
            {
                self.events_written();
                self.audit(p, meta, AuditAction::VerifyChecked, Outcome::Success, id)
                    .await;
                metrics::counter!("haven_verify_checks_total", "result" => "success").increment(1);
                return self.current(id).await;
            }
            // Another check used it first, or a new code replaced it meanwhile.
            let now_status = self.store.get_verification(id).await?.map(|r| r.status);
            return Err(VerifyError::Ended(now_status.unwrap_or_default()));
        }
        metrics::counter!("haven_verify_checks_total", "result" => "wrong").increment(1);
        self.audit(p, meta, AuditAction::VerifyChecked, Outcome::Failure, id)
            .await;
        let remaining = (attempt.max_attempts - attempt.attempts).max(0);
        if remaining == 0 {
            ended.status = "failed".into();
            let e = event(
                "verify.failed",
                &ended,
                json!({ "reason": "too_many_attempts" }),
            );
            if self
                .store
                .end_verification(id, None, "failed", now, &e)
                .await?
            {
                self.events_written();
            }
        }
        Err(VerifyError::WrongCode {
            attempts_remaining: remaining,
        })
    }

    pub async fn cancel(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        id: &str,
    ) -> VerifyResult<Verification> {
        p.require(WRITE)?;
        let mut row = self.owned(p, id).await?;
        if row.status != "pending" {
            return Err(VerifyError::Ended(row.status));
        }
        row.status = "cancelled".into();
        let e = event("verify.cancelled", &row, json!({}));
        if !self
            .store
            .end_verification(id, None, "cancelled", now_ms(), &e)
            .await?
        {
            let now = self.store.get_verification(id).await?.map(|r| r.status);
            return Err(VerifyError::Ended(now.unwrap_or_default()));
        }
        self.events_written();
        self.audit(p, meta, AuditAction::VerifyCancelled, Outcome::Success, id)
            .await;
        self.current(id).await
    }

    /// Sends a new code through the next channel now (the current code stops working).
    pub async fn next(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        id: &str,
    ) -> VerifyResult<Verification> {
        p.require(WRITE)?;
        let row = self.owned(p, id).await?;
        if row.status != "pending" {
            return Err(VerifyError::Ended(row.status));
        }
        if row.current_step + 1 >= row.step_count {
            return Err(VerifyError::NoNextChannel);
        }
        let now = now_ms();
        let Some(mut row) = self
            .store
            .lease_verification(id, now, now + ms(self.settings.lease))
            .await?
        else {
            return Err(VerifyError::Busy);
        };
        let from = usize::try_from(row.current_step + 1).unwrap_or(usize::MAX);
        let result = self.advance_to(&mut row, from).await;
        self.audit(
            p,
            meta,
            AuditAction::VerifyNextChannel,
            Outcome::Success,
            id,
        )
        .await;
        result?;
        self.current(id).await
    }

    /// Sends from step `from` on a leased row and saves what happened.
    async fn advance_to(&self, row: &mut VerificationRow, from: usize) -> VerifyResult<()> {
        let mut steps = self.store.verification_steps(&row.id).await?;
        let Some(workflow) = self.workflow(row).await? else {
            row.status = "failed".into();
            row.final_at_ms = Some(now_ms());
            let e = event("verify.failed", row, json!({ "reason": "erased" }));
            self.store.save_verification(row, &steps, &[e], 0).await?;
            self.events_written();
            return Ok(());
        };
        let mut events = Vec::new();
        let sent = self
            .send_from(row, &mut steps, &workflow, from, None, &mut events)
            .await;
        row.updated_at_ms = now_ms();
        self.store
            .save_verification(row, &steps, &events, 0)
            .await?;
        self.events_written();
        match sent {
            Ok(()) | Err(VerifyError::Messaging(_)) | Err(VerifyError::NoNextChannel) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// This node's worker: moves due verifications to their next channel, and expires them.
    pub async fn run(self: Arc<Self>) {
        loop {
            let now = now_ms();
            let rows = match self
                .store
                .claim_verifications(now, now + ms(self.settings.lease), 64)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming due verifications failed");
                    Vec::new()
                }
            };
            let n = rows.len();
            for mut row in rows {
                let id = row.id.clone();
                let now = now_ms();
                let steps = self.store.verification_steps(&id).await.unwrap_or_default();
                // A step left `sending` by a crash: resume it.
                let resume = steps
                    .get(usize::try_from(row.current_step).unwrap_or(usize::MAX))
                    .is_some_and(|s| s.status == "sending");
                let result = if resume {
                    let from = usize::try_from(row.current_step).unwrap_or(0);
                    self.advance_to(&mut row, from).await
                } else if row.next_step_at_ms.is_some_and(|t| now >= t)
                    && row.current_step + 1 < row.step_count
                {
                    let from = usize::try_from(row.current_step + 1).unwrap_or(usize::MAX);
                    self.advance_to(&mut row, from).await
                } else if now >= row.expires_at_ms {
                    row.status = "expired".into();
                    row.final_at_ms = Some(now);
                    row.code_hash = None;
                    let e = event("verify.expired", &row, json!({}));
                    self.store
                        .save_verification(&row, &[], &[e], 0)
                        .await
                        .map(|_| self.events_written())
                        .map_err(VerifyError::from)
                } else {
                    row.wake_at_ms = row
                        .next_step_at_ms
                        .map_or(row.expires_at_ms, |t| t.min(row.expires_at_ms));
                    self.store
                        .save_verification(&row, &[], &[], 0)
                        .await
                        .map(|_| ())
                        .map_err(VerifyError::from)
                };
                if let Err(e) = result {
                    tracing::warn!(verification_id = %id, error = %e, "advancing a verification failed");
                }
            }
            if n < 64 {
                let _ = tokio::time::timeout(self.settings.poll, self.wake.notified()).await;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_digits_of_the_length_asked_and_vary() {
        let mut seen = std::collections::HashSet::new();
        for len in 4..=10 {
            let c = new_code(len).unwrap();
            assert_eq!(c.len(), len);
            assert!(c.bytes().all(|b| b.is_ascii_digit()));
        }
        for _ in 0..200 {
            seen.insert(new_code(6).unwrap());
        }
        assert!(seen.len() > 190, "codes repeat: {}", seen.len());
        // Every digit appears, roughly uniformly, over many codes.
        let mut counts = [0u32; 10];
        for _ in 0..2000 {
            for b in new_code(10).unwrap().bytes() {
                counts[usize::from(b - b'0')] += 1;
            }
        }
        assert!(
            counts.iter().all(|c| (1600..2400).contains(c)),
            "{counts:?}"
        );
    }
}
