//! Messages: registered senders, and the durable pipeline that carries a message from the API
//! to a carrier over any [`haven_channel::Channel`] and reports what happened to it.
//!
//! - **Accepting** a message seals its addresses and content (under the patient's own key when
//!   the recipient is a known contact, else under the account's data key) and stores it, in a
//!   group commit, before the API answers `202`. The message row is the queue.
//! - **Sending** ([`pipeline`]): workers lease due messages, hand them to their channel, and
//!   record the outcome with the event it causes. A crash mid-send leaves the lease to run out
//!   and the message is sent again: delivery is at least once.
//! - **Receipts and inbound messages** come back through [`InboundSink`]: stored before the
//!   carrier is acknowledged, matched to their message by a reconciler.

pub mod batch;
pub mod consent;
mod country;
pub mod limiter;
pub mod model;
pub mod pipeline;
pub mod policy;
pub mod store;
pub mod templates;

use batch::Batcher;
pub use consent::{Consent, ConsentRequest, KeywordSettings, Purpose};
use haven_channel::{Channel, ChannelKind};
use haven_contacts::{AddressKind, Contacts, ContactsError};
use haven_identity::{FieldError, IdentityError, Principal, RequestMeta, Right, Scope};
use haven_platform::audit::{AuditAction, AuditEvent, AuditSink, Outcome as AuditOutcome};
use haven_platform::clock::{duration_ms, now_ms};
use haven_platform::events::{EventHook, OutboxEvent};
use haven_platform::id::new_id;
use haven_platform::page::{Page, PageRequest};
use haven_platform::store::StoreError;
use haven_vault::{FieldRef, SubjectKey, Vault, VaultError};
use limiter::RateLimiter;
pub use model::{
    Content, Direction, Message, MessageQuery, MessageStatus, SendRequest, Sender, ValidSend,
};
pub use policy::{MessagingPolicy, QuietHours};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
pub use store::{
    MessageFilter, MessageRow, MessageStore, PartRow, ReceiptRow, SenderRow, TemplateRow,
};
pub use templates::{NewTemplate, Template, TemplateStatus};
use tokio::sync::Notify;

const READ: Scope = Scope::new("messages", Right::Read);
const WRITE: Scope = Scope::new("messages", Right::Write);
const SENDERS_READ: Scope = Scope::new("senders", Right::Read);
const SENDERS_WRITE: Scope = Scope::new("senders", Right::Write);
const TABLE: &str = "messages";

#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    #[error("not found")]
    NotFound,
    #[error("the sender is not registered to this account")]
    SenderNotRegistered,
    #[error("the address is registered already")]
    SenderTaken,
    #[error("no {0} channel is configured on this server")]
    ChannelUnavailable(ChannelKind),
    #[error("the recipient opted out")]
    OptedOut,
    #[error("marketing needs the recipient's recorded opt-in")]
    ConsentRequired,
    #[error("over the account's send rate")]
    RateLimited { retry_after: Duration },
    #[error("the template is not approved")]
    TemplateNotApproved,
    #[error("the template was reviewed already")]
    TemplateReviewed,
    #[error("a first message to this recipient must use an approved template")]
    TemplateRequired,
    #[error("a link points outside the account's allowed domains")]
    LinkNotAllowed(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Contacts(#[from] ContactsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MessagingError {
    /// Whether sending the same message again could succeed: only the server's own faults
    /// (store, keys) pass; refusals (consent, sender, policy, channel) stay refusals.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Store(_) | Self::Vault(_) | Self::Contacts(_))
    }

    /// A stable, PHI-free name for why a message was not sent, as workflows record it.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::OptedOut => "recipient_opted_out",
            Self::ConsentRequired => "consent_required",
            Self::TemplateRequired => "template_required",
            Self::TemplateNotApproved => "template_not_approved",
            Self::LinkNotAllowed(_) => "link_not_allowed",
            Self::SenderNotRegistered => "sender_not_registered",
            Self::ChannelUnavailable(_) => "channel_unavailable",
            Self::Invalid(_) => "invalid_message",
            _ => "not_sent",
        }
    }
}

pub type MessagingResult<T> = Result<T, MessagingError>;

#[derive(Debug, Clone)]
pub struct MessagingSettings {
    /// Messages per second an account may send (0: no limit), and the burst above it.
    pub rate_per_second: u32,
    pub burst: u32,
    /// How long a worker holds a message it is sending; another node sends it after that.
    pub lease: Duration,
    /// Sends in flight per node.
    pub concurrency: usize,
    /// Largest group commit.
    pub batch_max: usize,
    /// The longest wait between two tries of a message a carrier could not take.
    pub retry_max: Duration,
    /// How often to look for due messages written by other nodes.
    pub poll: Duration,
    /// Inbound keywords (STOP, START, HELP) and their answers.
    pub keywords: KeywordSettings,
    /// The operator's rate card, which prices each usage record.
    pub rates: haven_platform::usage::UsageConfig,
}

impl Default for MessagingSettings {
    fn default() -> Self {
        Self {
            rate_per_second: 500,
            burst: 1_000,
            lease: Duration::from_secs(30),
            concurrency: 256,
            batch_max: 512,
            retry_max: Duration::from_secs(60),
            poll: Duration::from_millis(500),
            keywords: KeywordSettings::default(),
            rates: haven_platform::usage::UsageConfig::default(),
        }
    }
}

/// The key a message is sealed under.
pub(crate) enum SealKey {
    Account,
    Subject(SubjectKey),
}

pub(crate) fn field<'a>(account_id: &'a str, id: &'a str, column: &'static str) -> FieldRef<'a> {
    FieldRef {
        account_id,
        table: TABLE,
        column,
        row_id: id,
    }
}

/// (channel, address) → its owner (or none) and when that was read.
type SenderCache = HashMap<(String, String), (Option<SenderRow>, std::time::Instant)>;

/// What the sending loop and the channels' receipts hand to the one background writer.
pub(crate) enum Settle {
    Outcome(store::Outcome),
    Receipt(ReceiptRow),
}

/// A receipt is settled with its own submit's outcome, from wherever either is in the queue:
/// the store then writes the message once, already delivered, instead of writing it
/// submitted and changing it again in a later batch (see [`MessageStore::settle`]). The
/// receipt usually comes a moment after the outcome; under load the task recording the outcome
/// can also be scheduled after the receipt is queued, and then the outcome is pulled forward
/// instead. The key is the part's carrier id on its route.
struct ReceiptWithSubmit;

impl batch::Join<Settle> for ReceiptWithSubmit {
    type Key = (String, String);
    fn keys(&self, item: &Settle, keys: &mut Vec<(String, String)>) {
        match item {
            Settle::Outcome(store::Outcome::Submitted {
                route,
                provider_ids,
                ..
            }) => keys.extend(provider_ids.iter().map(|p| (route.clone(), p.clone()))),
            Settle::Outcome(_) => {}
            Settle::Receipt(r) => keys.push((r.route.clone(), r.provider_id.clone())),
        }
    }
}

pub struct Messaging {
    pub(crate) store: Arc<dyn MessageStore>,
    pub(crate) vault: Arc<Vault>,
    pub(crate) contacts: Arc<Contacts>,
    pub(crate) audit: Arc<dyn AuditSink>,
    pub(crate) keywords: KeywordSettings,
    pub(crate) settings: MessagingSettings,
    channels: RwLock<HashMap<ChannelKind, Arc<dyn Channel>>>,
    limiter: RateLimiter,
    pub(crate) writer: Batcher<(MessageRow, Option<OutboxEvent>)>,
    /// Send outcomes and arriving receipts, settled together (see [`MessageStore::settle`]):
    /// a receipt comes after its submit's outcome was queued, so it finds the part that
    /// outcome writes in the same transaction or an earlier one, and is applied at once
    /// rather than stored and tried again.
    pub(crate) settle_writer: Batcher<Settle>,
    pub(crate) wake_sender: Notify,
    /// Messages this node accepted, due at once and leased to itself on insert: they go
    /// straight to the sending loop instead of being claimed back from the store. Set by the
    /// sending loop when it starts (a process that does not send leases nothing).
    pub(crate) handoff: std::sync::OnceLock<tokio::sync::mpsc::Sender<MessageRow>>,
    event_hook: EventHook,
    /// Who owns an address, as last read: (channel, address) → owner and when read.
    sender_cache: std::sync::Mutex<SenderCache>,
    /// Each account's messaging policy, as last read.
    pub(crate) policy_cache:
        std::sync::Mutex<HashMap<String, (MessagingPolicy, std::time::Instant)>>,
    observer: RwLock<Option<Arc<dyn MessageObserver>>>,
}

/// Told what happens to messages once it is stored, so that workflows (Dispatch) react at
/// once. Best effort: a workflow also re-checks on its own schedule, so a notice lost in a
/// crash only delays it.
#[async_trait::async_trait]
pub trait MessageObserver: Send + Sync {
    /// These messages changed status (submitted, delivered, failed…).
    async fn messages_changed(&self, message_ids: &[String]);
    /// A patient (by the blind index of their address) wrote to one of the account's senders.
    async fn reply_received(
        &self,
        account_id: &str,
        channel: ChannelKind,
        sender_id: &str,
        peer_bidx: &[u8],
    );
}

/// A message sent as a step of a workflow, with what identifies a reply to it.
#[derive(Debug, Clone)]
pub struct StepSent {
    pub message: Message,
    pub sender_id: String,
    pub peer_bidx: Vec<u8>,
}

/// What a workflow needs to know about one of its messages.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryState {
    pub status: MessageStatus,
    pub channel: ChannelKind,
    /// Whether `delivered` can ever be reported: SMS with a receipt asked for. Email (SMTP
    /// reports no delivery) and SMS without receipts end at `submitted`.
    pub reports_delivery: bool,
}

/// How long a node trusts what it read about an address's owner. A sender removed on another
/// node stops working here within this time (on this node, at once).
pub const SENDER_CACHE_TTL: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Messaging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Messaging")
    }
}

/// Background batches as long as the store wants them (short on SQLite's one writer), never
/// longer than `batch_max`; a full one is followed at once by the next, so this bounds no
/// throughput.
fn background_limit(store: &dyn MessageStore, batch_max: usize) -> usize {
    store
        .background_batch_max()
        .map_or(batch_max, |m| batch_max.min(m))
}

fn text(bytes: Vec<u8>) -> MessagingResult<String> {
    String::from_utf8(bytes).map_err(|_| MessagingError::Vault(VaultError::Integrity("not text")))
}

impl Messaging {
    /// Must be called inside a Tokio runtime: it starts the group-commit writers.
    pub fn new(
        store: Arc<dyn MessageStore>,
        vault: Arc<Vault>,
        contacts: Arc<Contacts>,
        audit: Arc<dyn AuditSink>,
        settings: MessagingSettings,
    ) -> Arc<Self> {
        let max = settings.batch_max;
        let s = store.clone();
        let writer = Batcher::spawn_topped(
            "messages",
            max,
            move |rows: Vec<(MessageRow, Option<OutboxEvent>)>, more| {
                let s = s.clone();
                async move { s.insert_messages(rows, Box::new(move || more.take())).await }
            },
        );
        let background_max = background_limit(store.as_ref(), max);
        Arc::new_cyclic(|me: &std::sync::Weak<Self>| {
            let settle_writer = {
                let s = store.clone();
                let me = me.clone();
                Batcher::spawn_joined(
                    "settle",
                    background_max,
                    pipeline::BACKGROUND_PACE,
                    ReceiptWithSubmit,
                    move |items: Vec<Settle>| {
                        let s = s.clone();
                        let me = me.clone();
                        async move {
                            let mut outcomes = Vec::new();
                            let mut receipts = Vec::new();
                            for item in items {
                                match item {
                                    Settle::Outcome(o) => outcomes.push(o),
                                    Settle::Receipt(r) => receipts.push(r),
                                }
                            }
                            let settled = s.settle(outcomes, receipts, &pipeline::decide).await?;
                            if let Some(me) = me.upgrade() {
                                me.settled(settled).await;
                            }
                            Ok(())
                        }
                    },
                )
            };
            Self::build(
                store,
                vault,
                contacts,
                audit,
                settings,
                writer,
                settle_writer,
            )
        })
    }

    fn build(
        store: Arc<dyn MessageStore>,
        vault: Arc<Vault>,
        contacts: Arc<Contacts>,
        audit: Arc<dyn AuditSink>,
        settings: MessagingSettings,
        writer: Batcher<(MessageRow, Option<OutboxEvent>)>,
        settle_writer: Batcher<Settle>,
    ) -> Self {
        Self {
            limiter: RateLimiter::new(settings.rate_per_second, settings.burst),
            keywords: settings.keywords.clone(),
            store,
            vault,
            contacts,
            audit,
            settings,
            channels: RwLock::new(HashMap::new()),
            writer,
            settle_writer,
            wake_sender: Notify::new(),
            handoff: std::sync::OnceLock::new(),
            event_hook: EventHook::default(),
            sender_cache: std::sync::Mutex::new(HashMap::new()),
            policy_cache: std::sync::Mutex::new(HashMap::new()),
            observer: RwLock::new(None),
        }
    }

    /// The most rows per background write (see [`background_limit`]).
    pub(crate) fn background_batch_max(&self) -> usize {
        background_limit(self.store.as_ref(), self.settings.batch_max)
    }

    /// Makes a channel available for sending.
    pub fn attach_channel(&self, channel: Arc<dyn Channel>) {
        let mut map = self.channels.write().unwrap_or_else(|p| p.into_inner());
        map.insert(channel.kind(), channel);
    }

    pub fn channel(&self, kind: ChannelKind) -> Option<Arc<dyn Channel>> {
        let map = self.channels.read().unwrap_or_else(|p| p.into_inner());
        map.get(&kind).cloned()
    }

    /// Called after events are written, so this node's webhook worker wakes at once.
    pub fn on_events(&self, hook: Arc<dyn Fn() + Send + Sync>) {
        self.event_hook.set(hook);
    }

    /// Registers the observer of message changes (Dispatch).
    pub fn observe(&self, observer: Arc<dyn MessageObserver>) {
        *self.observer.write().unwrap_or_else(|p| p.into_inner()) = Some(observer);
    }

    pub(crate) fn observer(&self) -> Option<Arc<dyn MessageObserver>> {
        self.observer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) async fn changed(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        if let Some(o) = self.observer() {
            o.messages_changed(ids).await;
        }
    }

    pub(crate) fn events_written(&self) {
        self.event_hook.fire();
    }

    /// After receipts were applied: counts them, wakes the webhook sender for the status
    /// changes and tells workflows.
    pub(crate) async fn settled(&self, settled: store::Settled) {
        for (result, n) in [
            ("applied", settled.applied),
            ("waiting", settled.waiting),
            ("retried", settled.retried),
            ("dropped", settled.dropped),
        ] {
            if n > 0 {
                metrics::counter!("haven_receipts_total", "result" => result)
                    .increment(u64::try_from(n).unwrap_or(u64::MAX));
            }
        }
        if settled.folded > 0 {
            metrics::counter!("haven_receipts_folded_total")
                .increment(u64::try_from(settled.folded).unwrap_or(u64::MAX));
        }
        if settled.events > 0 {
            self.events_written();
        }
        self.changed(&settled.changed).await;
    }

    async fn audit(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        action: AuditAction,
        kind: &'static str,
        id: &str,
        queued: bool,
    ) {
        let e = AuditEvent::new(action, AuditOutcome::Success, p.actor(meta)).resource(kind, id);
        if queued {
            self.audit.enqueue(e).await;
        } else {
            self.audit.record(e).await;
        }
    }

    // ---------------------------------------------------------------- senders --

    /// The owner of an address, through a short per-node cache (every send and every inbound
    /// message asks).
    pub(crate) async fn sender_of(
        &self,
        channel: ChannelKind,
        address: &str,
    ) -> MessagingResult<Option<SenderRow>> {
        let key = (channel.as_str().to_owned(), address.to_owned());
        if let Ok(cache) = self.sender_cache.lock()
            && let Some((row, at)) = cache.get(&key)
            && at.elapsed() < SENDER_CACHE_TTL
        {
            return Ok(row.clone());
        }
        let row = self.store.sender_by_address(&key.0, &key.1).await?;
        if let Ok(mut cache) = self.sender_cache.lock() {
            if cache.len() > 50_000 {
                cache.clear();
            }
            cache.insert(key, (row.clone(), std::time::Instant::now()));
        }
        Ok(row)
    }

    fn forget_sender(&self, channel: &str, address: &str) {
        if let Ok(mut cache) = self.sender_cache.lock() {
            cache.remove(&(channel.to_owned(), address.to_owned()));
        }
    }

    fn sender_view(row: &SenderRow) -> MessagingResult<Sender> {
        Ok(Sender {
            id: row.id.clone(),
            account_id: row.account_id.clone(),
            channel: ChannelKind::parse(&row.channel)
                .ok_or_else(|| StoreError::Backend("stored channel is not readable".into()))?,
            address: row.address.clone(),
            created_at_ms: row.created_at_ms,
        })
    }

    /// Registers a number, alphanumeric id or email address as the account's sender.
    pub async fn register_sender(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        channel: &str,
        address: &str,
    ) -> MessagingResult<Sender> {
        p.require(SENDERS_WRITE)?;
        let mut errors = Vec::new();
        let kind = model::channel("channel", channel, &mut errors);
        let address = match kind {
            Some(k) => model::sender_address(k, "address", address, &mut errors),
            None => String::new(),
        };
        let Some(kind) = kind.filter(|_| errors.is_empty()) else {
            return Err(MessagingError::Invalid(errors));
        };
        let row = SenderRow {
            id: new_id(model::SENDER_PREFIX),
            account_id: p.account_id.clone(),
            channel: kind.as_str().to_owned(),
            address,
            created_at_ms: now_ms(),
        };
        match self.store.insert_sender(&row).await {
            Err(StoreError::Conflict) => return Err(MessagingError::SenderTaken),
            other => other?,
        }
        self.forget_sender(&row.channel, &row.address);
        self.audit(
            p,
            meta,
            AuditAction::SenderRegistered,
            "sender",
            &row.id,
            false,
        )
        .await;
        Self::sender_view(&row)
    }

    async fn owned_sender(&self, p: &Principal, id: &str) -> MessagingResult<SenderRow> {
        if !haven_identity::is_id(model::SENDER_PREFIX, id) {
            return Err(MessagingError::NotFound);
        }
        match self.store.get_sender(id).await? {
            Some(s) if s.account_id == p.account_id => Ok(s),
            _ => Err(MessagingError::NotFound),
        }
    }

    pub async fn get_sender(&self, p: &Principal, id: &str) -> MessagingResult<Sender> {
        p.require(SENDERS_READ)?;
        Self::sender_view(&self.owned_sender(p, id).await?)
    }

    pub async fn list_senders(
        &self,
        p: &Principal,
        page: &PageRequest,
    ) -> MessagingResult<Page<Sender>> {
        p.require(SENDERS_READ)?;
        let rows = self.store.list_senders(&p.account_id, page).await?;
        let page = Page::from_rows(rows, page, |r| &r.id);
        Ok(Page {
            items: page
                .items
                .iter()
                .map(Self::sender_view)
                .collect::<MessagingResult<_>>()?,
            next_cursor: page.next_cursor,
        })
    }

    /// Removes a sender: messages can no longer be sent from it, and inbound messages to it
    /// are no longer routed to the account.
    pub async fn delete_sender(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        id: &str,
    ) -> MessagingResult<()> {
        p.require(SENDERS_WRITE)?;
        let row = self.owned_sender(p, id).await?;
        self.store.delete_sender(&row.id).await?;
        self.forget_sender(&row.channel, &row.address);
        self.audit(
            p,
            meta,
            AuditAction::SenderRemoved,
            "sender",
            &row.id,
            false,
        )
        .await;
        Ok(())
    }

    // --------------------------------------------------------------- messages --

    pub(crate) async fn seal_key(
        &self,
        account_id: &str,
        kind: ChannelKind,
        patient: &str,
    ) -> MessagingResult<(Option<String>, SealKey)> {
        let k = match kind {
            ChannelKind::Sms => AddressKind::Phone,
            ChannelKind::Email => AddressKind::Email,
        };
        Ok(
            match self
                .contacts
                .key_for_address(account_id, k, patient)
                .await?
            {
                Some((id, key)) => (Some(id), SealKey::Subject(key)),
                None => (None, SealKey::Account),
            },
        )
    }

    pub(crate) async fn seal(
        &self,
        key: &SealKey,
        f: &FieldRef<'_>,
        plaintext: &[u8],
    ) -> MessagingResult<Vec<u8>> {
        Ok(match key {
            SealKey::Account => self.vault.seal_for_account(f, plaintext).await?,
            SealKey::Subject(k) => k.seal(f, plaintext)?,
        })
    }

    pub(crate) async fn open(
        &self,
        key: &SealKey,
        f: &FieldRef<'_>,
        ciphertext: &[u8],
    ) -> MessagingResult<Vec<u8>> {
        Ok(match key {
            SealKey::Account => self.vault.open_for_account(f, ciphertext).await?,
            SealKey::Subject(k) => k.open(f, ciphertext)?,
        })
    }

    /// The key a stored message is sealed under; `None` when the patient was erased.
    pub(crate) async fn key_of(&self, row: &MessageRow) -> MessagingResult<Option<SealKey>> {
        match &row.contact_id {
            None => Ok(Some(SealKey::Account)),
            Some(c) => match self.contacts.key_of(&row.account_id, c).await {
                Ok(k) => Ok(Some(SealKey::Subject(k))),
                Err(ContactsError::Erased) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Accepts a message for sending: checked, sealed and durably stored when this returns.
    pub async fn send(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        req: SendRequest,
    ) -> MessagingResult<Message> {
        p.require(WRITE)?;
        let (v, sender) = self.prepare(&p.account_id, req).await?;
        let id = new_id(model::MESSAGE_PREFIX);
        let (m, _) = self
            .accept(
                &p.account_id,
                Some(p.credential_id.clone()),
                id,
                &v,
                &sender,
                None,
            )
            .await?;
        self.audit(p, meta, AuditAction::MessageSent, "message", &m.id, true)
            .await;
        Ok(m)
    }

    /// Checks a send request as far as it can be checked before the moment of sending: the
    /// template filled in, every field, the channel, the sender, the links. Consent, first
    /// contact, quiet hours and the rate are checked when it is accepted.
    pub async fn prepare(
        &self,
        account_id: &str,
        mut req: SendRequest,
    ) -> MessagingResult<(ValidSend, SenderRow)> {
        self.apply_template(account_id, &mut req).await?;
        let v = model::validate_send(req).map_err(MessagingError::Invalid)?;
        if self.channel(v.channel).is_none() {
            return Err(MessagingError::ChannelUnavailable(v.channel));
        }
        let sender = match self.sender_of(v.channel, &v.from).await? {
            Some(s) if s.account_id == account_id => s,
            _ => return Err(MessagingError::SenderNotRegistered),
        };
        let policy = self.policy_of(account_id).await?;
        let c = &v.content;
        let texts = [
            Some(c.text.as_str()),
            c.subject.as_deref(),
            c.html.as_deref(),
        ];
        let texts: Vec<&str> = texts.into_iter().flatten().collect();
        if let Some(host) = policy.forbidden_link(&texts) {
            metrics::counter!("haven_messages_refused_total", "reason" => "link").increment(1);
            return Err(MessagingError::LinkNotAllowed(host));
        }
        Ok((v, sender))
    }

    /// Stores a prepared message under `id` once consent, first contact and the account's
    /// rate allow it; holds it until quiet hours end unless it is urgent. A workflow's step is
    /// not rate limited: the workflow was accepted already, and a step cannot be answered 429.
    async fn accept(
        &self,
        account_id: &str,
        created_by: Option<String>,
        id: String,
        v: &ValidSend,
        sender: &SenderRow,
        workflow_id: Option<&str>,
    ) -> MessagingResult<(Message, Vec<u8>)> {
        let bidx = self.address_index(account_id, v.channel, &v.to).await?;
        self.check_consent(account_id, v.channel, &bidx, v.purpose)
            .await?;
        let policy = self.policy_of(account_id).await?;
        if policy.require_template_for_first_contact
            && v.template_id.is_none()
            && !self
                .store
                .has_exchanged(account_id, v.channel.as_str(), &bidx)
                .await?
        {
            metrics::counter!("haven_messages_refused_total", "reason" => "first_contact")
                .increment(1);
            return Err(MessagingError::TemplateRequired);
        }
        if workflow_id.is_none()
            && let Err(retry_after) = self.limiter.check(account_id)
        {
            metrics::counter!("haven_messages_rate_limited_total").increment(1);
            return Err(MessagingError::RateLimited { retry_after });
        }
        let mut row = self.sealed_row(account_id, created_by, id, v).await?;
        row.sender_id = Some(sender.id.clone());
        row.peer_bidx = Some(bidx.clone());
        row.workflow_id = workflow_id.map(str::to_owned);
        if !v.urgent
            && let Some(until) = policy.hold_until(row.created_at_ms, v.timezone.as_deref())
        {
            let ttl = row.expires_at_ms - row.created_at_ms;
            row.next_attempt_at_ms = until;
            row.expires_at_ms = until.saturating_add(ttl);
            metrics::counter!("haven_messages_held_total", "reason" => "quiet_hours").increment(1);
        }
        // Due now and room in this node's queue: lease it to this node in the same insert and
        // hand it over, sparing the sending loop a claim (a write) per message. The place is
        // reserved first, so a row leased here is always handed over once stored.
        let now = now_ms();
        let handoff = match self.handoff.get() {
            Some(queue) if row.next_attempt_at_ms <= now => queue.clone().try_reserve_owned().ok(),
            _ => None,
        };
        if handoff.is_some() {
            row.lease_until_ms = now.saturating_add(duration_ms(self.settings.lease));
        }
        // How long acceptance waits for its group commit: most of an accepting request's
        // time, and where its latency tail comes from when the one writer is busy.
        let waited = std::time::Instant::now();
        self.writer.submit((row.clone(), None)).await?;
        metrics::histogram!("haven_message_commit_wait_seconds")
            .record(waited.elapsed().as_secs_f64());
        metrics::counter!("haven_messages_accepted_total", "channel" => v.channel.as_str())
            .increment(1);
        let message = Message {
            send_after_ms: held_until(&row),
            id: row.id.clone(),
            account_id: row.account_id.clone(),
            direction: Direction::Outbound,
            channel: v.channel,
            status: MessageStatus::Accepted,
            to: Some(v.to.clone()),
            from: Some(v.from.clone()),
            content: Some(v.content.masked()),
            client_ref: v.client_ref.clone(),
            contact_id: row.contact_id.clone(),
            erased: false,
            parts: 0,
            attempts: 0,
            error_code: None,
            error_reason: None,
            created_at_ms: row.created_at_ms,
            updated_at_ms: row.updated_at_ms,
            submitted_at_ms: None,
            final_at_ms: None,
            expires_at_ms: row.expires_at_ms,
        };
        match handoff {
            Some(place) => {
                place.send(row);
            }
            None => self.wake_sender.notify_one(),
        }
        Ok((message, bidx))
    }

    /// Sends one step of workflow `workflow_id` as message `id`, exactly once however often
    /// it is asked (a step retried after a crash finds its message stored and sends nothing
    /// new). The workflow hears of the message's changes through the [`MessageObserver`].
    pub async fn send_step(
        &self,
        account_id: &str,
        created_by: Option<String>,
        workflow_id: &str,
        id: &str,
        req: SendRequest,
    ) -> MessagingResult<StepSent> {
        if let Some(row) = self.store.get_message(id).await? {
            return Ok(StepSent {
                message: self.view(&row).await?,
                sender_id: row.sender_id.unwrap_or_default(),
                peer_bidx: row.peer_bidx.unwrap_or_default(),
            });
        }
        let (v, sender) = self.prepare(account_id, req).await?;
        let (message, peer_bidx) = self
            .accept(
                account_id,
                created_by,
                id.to_owned(),
                &v,
                &sender,
                Some(workflow_id),
            )
            .await?;
        Ok(StepSent {
            message,
            sender_id: sender.id,
            peer_bidx,
        })
    }

    /// Where one of an account's messages stands; `None` when there is no such message.
    pub async fn delivery_state(
        &self,
        account_id: &str,
        id: &str,
    ) -> MessagingResult<Option<DeliveryState>> {
        let Some(row) = self.store.get_message(id).await? else {
            return Ok(None);
        };
        if row.account_id != account_id {
            return Ok(None);
        }
        let bad = || StoreError::Backend("stored message is not readable".into());
        let channel = ChannelKind::parse(&row.channel).ok_or_else(bad)?;
        Ok(Some(DeliveryState {
            status: MessageStatus::parse(&row.status).ok_or_else(bad)?,
            channel,
            reports_delivery: channel == ChannelKind::Sms && row.want_receipt,
        }))
    }

    /// The texts a patient sent to one of the account's senders since `since_ms`, oldest
    /// first (erased ones are gone).
    pub async fn replies_since(
        &self,
        account_id: &str,
        channel: ChannelKind,
        sender_id: &str,
        peer_bidx: &[u8],
        since_ms: i64,
    ) -> MessagingResult<Vec<String>> {
        let rows = self
            .store
            .inbound_from(
                account_id,
                channel.as_str(),
                sender_id,
                peer_bidx,
                since_ms,
                50,
            )
            .await?;
        let mut texts = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some((_, _, content)) = self.open_row(row).await? {
                texts.push(content.text);
            }
        }
        Ok(texts)
    }

    /// Seals data about a patient (a workflow's steps) under the patient's own key when the
    /// address belongs to a contact, else under the account's data key. Returns the contact.
    pub async fn seal_about(
        &self,
        f: &FieldRef<'_>,
        kind: ChannelKind,
        patient: &str,
        plaintext: &[u8],
    ) -> MessagingResult<(Option<String>, Vec<u8>)> {
        let (contact_id, key) = self.seal_key(f.account_id, kind, patient).await?;
        Ok((contact_id, self.seal(&key, f, plaintext).await?))
    }

    /// Opens what [`Messaging::seal_about`] sealed; `None` once the patient was erased.
    pub async fn open_about(
        &self,
        f: &FieldRef<'_>,
        contact_id: Option<&str>,
        ciphertext: &[u8],
    ) -> MessagingResult<Option<Vec<u8>>> {
        let key = match contact_id {
            None => SealKey::Account,
            Some(c) => match self.contacts.key_of(f.account_id, c).await {
                Ok(k) => SealKey::Subject(k),
                Err(ContactsError::Erased) => return Ok(None),
                Err(e) => return Err(e.into()),
            },
        };
        Ok(Some(self.open(&key, f, ciphertext).await?))
    }

    /// The blind index a patient's address has on a channel (as workflows watch for it).
    pub async fn peer_index(
        &self,
        account_id: &str,
        kind: ChannelKind,
        address: &str,
    ) -> MessagingResult<Vec<u8>> {
        self.address_index(account_id, kind, address).await
    }

    pub(crate) async fn sealed_row(
        &self,
        account: &str,
        created_by: Option<String>,
        id: String,
        v: &ValidSend,
    ) -> MessagingResult<MessageRow> {
        let (contact_id, key) = self.seal_key(account, v.channel, &v.to).await?;
        let content = serde_json::to_vec(&v.content)
            .map_err(|_| MessagingError::Vault(VaultError::Integrity("content")))?;
        let (client_ref_ct, client_ref_bidx) = match &v.client_ref {
            Some(r) => (
                Some(
                    self.vault
                        .seal_for_account(&field(account, &id, "client_ref"), r.as_bytes())
                        .await?,
                ),
                Some(self.vault.blind_index(account, "client_ref", r).await?),
            ),
            None => (None, None),
        };
        let now = now_ms();
        let ttl_ms = i64::try_from(v.ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
        Ok(MessageRow {
            to_ct: self
                .seal(&key, &field(account, &id, "to"), v.to.as_bytes())
                .await?,
            from_ct: self
                .seal(&key, &field(account, &id, "from"), v.from.as_bytes())
                .await?,
            content_ct: self
                .seal(&key, &field(account, &id, "content"), &content)
                .await?,
            id,
            account_id: account.to_owned(),
            direction: Direction::Outbound.as_str().to_owned(),
            channel: v.channel.as_str().to_owned(),
            status: MessageStatus::Accepted.as_str().to_owned(),
            sender_id: None,
            contact_id,
            client_ref_ct,
            client_ref_bidx,
            peer_bidx: None,
            workflow_id: None,
            want_receipt: v.receipt,
            parts: 0,
            route: None,
            error_code: None,
            error_reason: None,
            attempts: 0,
            next_attempt_at_ms: now,
            lease_until_ms: 0,
            expires_at_ms: now.saturating_add(ttl_ms),
            created_by,
            created_at_ms: now,
            updated_at_ms: now,
            submitted_at_ms: None,
            final_at_ms: None,
        })
    }

    /// A stored message's addresses and content, opened; `None` when the patient was erased.
    pub(crate) async fn open_row(
        &self,
        row: &MessageRow,
    ) -> MessagingResult<Option<(String, String, Content)>> {
        let Some(key) = self.key_of(row).await? else {
            return Ok(None);
        };
        let a = row.account_id.as_str();
        let to = text(
            self.open(&key, &field(a, &row.id, "to"), &row.to_ct)
                .await?,
        )?;
        let from = text(
            self.open(&key, &field(a, &row.id, "from"), &row.from_ct)
                .await?,
        )?;
        let raw = self
            .open(&key, &field(a, &row.id, "content"), &row.content_ct)
            .await?;
        let content: Content = serde_json::from_slice(&raw)
            .map_err(|_| MessagingError::Vault(VaultError::Integrity("content")))?;
        Ok(Some((to, from, content)))
    }

    /// A stored message opened for its account.
    pub(crate) async fn view(&self, row: &MessageRow) -> MessagingResult<Message> {
        let bad = || StoreError::Backend("stored message is not readable".into());
        let channel = ChannelKind::parse(&row.channel).ok_or_else(bad)?;
        let direction = Direction::parse(&row.direction).ok_or_else(bad)?;
        let status = MessageStatus::parse(&row.status).ok_or_else(bad)?;
        let a = row.account_id.as_str();
        let opened = self.open_row(row).await?;
        let erased = opened.is_none();
        let (to, from, content) = match opened {
            Some((to, from, content)) => (Some(to), Some(from), Some(content.masked())),
            None => (None, None, None),
        };
        let client_ref = match &row.client_ref_ct {
            Some(ct) => Some(text(
                self.vault
                    .open_for_account(&field(a, &row.id, "client_ref"), ct)
                    .await?,
            )?),
            None => None,
        };
        Ok(Message {
            id: row.id.clone(),
            account_id: row.account_id.clone(),
            direction,
            channel,
            status,
            to,
            from,
            content,
            client_ref,
            contact_id: row.contact_id.clone(),
            erased,
            parts: row.parts,
            attempts: row.attempts,
            error_code: row.error_code.clone(),
            error_reason: row.error_reason.clone(),
            created_at_ms: row.created_at_ms,
            updated_at_ms: row.updated_at_ms,
            submitted_at_ms: row.submitted_at_ms,
            final_at_ms: row.final_at_ms,
            expires_at_ms: row.expires_at_ms,
            send_after_ms: held_until(row),
        })
    }

    pub async fn get(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        id: &str,
    ) -> MessagingResult<Message> {
        p.require(READ)?;
        if !haven_identity::is_id(model::MESSAGE_PREFIX, id) {
            return Err(MessagingError::NotFound);
        }
        let row = match self.store.get_message(id).await? {
            Some(r) if r.account_id == p.account_id => r,
            _ => return Err(MessagingError::NotFound),
        };
        let m = self.view(&row).await?;
        self.audit(p, meta, AuditAction::MessageRead, "message", id, true)
            .await;
        Ok(m)
    }

    pub async fn list(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        q: &MessageQuery,
        page: &PageRequest,
    ) -> MessagingResult<Page<Message>> {
        p.require(READ)?;
        let mut errors = Vec::new();
        let mut filter = MessageFilter::default();
        if let Some(s) = &q.status {
            if MessageStatus::parse(s).is_none() {
                errors.push(FieldError::new(
                    "status",
                    "must be one of: accepted, submitted, delivered, failed, expired, rejected, received",
                ));
            }
            filter.status = Some(s.clone());
        }
        if let Some(c) = &q.channel {
            model::channel("channel", c, &mut errors);
            filter.channel = Some(c.clone());
        }
        if let Some(d) = &q.direction {
            if Direction::parse(d).is_none() {
                errors.push(FieldError::new("direction", "must be outbound or inbound"));
            }
            filter.direction = Some(d.clone());
        }
        if !errors.is_empty() {
            return Err(MessagingError::Invalid(errors));
        }
        if let Some(r) = &q.client_ref {
            filter.client_ref_bidx = Some(
                self.vault
                    .blind_index(&p.account_id, "client_ref", r)
                    .await?,
            );
        }
        let rows = self
            .store
            .list_messages(&p.account_id, &filter, page)
            .await?;
        let page = Page::from_rows(rows, page, |r| &r.id);
        let mut items = Vec::with_capacity(page.items.len());
        for row in &page.items {
            items.push(self.view(row).await?);
            self.audit(p, meta, AuditAction::MessageRead, "message", &row.id, true)
                .await;
        }
        Ok(Page {
            items,
            next_cursor: page.next_cursor,
        })
    }
}

/// When a message waits for quiet hours to end: still accepted, never tried, and due later
/// than it was accepted.
fn held_until(row: &MessageRow) -> Option<i64> {
    (row.status == MessageStatus::Accepted.as_str()
        && row.attempts == 0
        && row.next_attempt_at_ms > row.created_at_ms + 1_000)
        .then_some(row.next_attempt_at_ms)
}

/// The thin payload of a `message.*` event: ids and states, never content or addresses.
pub(crate) fn message_event(
    event_type: &'static str,
    account_id: &str,
    message_id: &str,
    channel: &str,
    status: &str,
    error_code: Option<&str>,
) -> OutboxEvent {
    /// The data of every `message.*` event.
    #[derive(serde::Serialize)]
    struct Data<'a> {
        message_id: &'a str,
        channel: &'a str,
        status: &'a str,
        error_code: Option<&'a str>,
    }
    OutboxEvent::new(
        event_type,
        account_id,
        Data {
            message_id,
            channel,
            status,
            error_code,
        },
    )
}
