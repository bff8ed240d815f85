//! Dispatch: a message that fails over from channel to channel until the patient confirms.
//!
//! A dispatch is an ordered list of steps, each a message and a condition (delivered, replied,
//! replied with a keyword) with a time to wait for it. A worker on every node leases due
//! dispatches and advances them: it sends the current step's message through the messaging
//! pipeline (under a message id chosen at creation, so a step retried after a crash never
//! sends twice), then looks at the message and the patient's replies until the condition is
//! met (the dispatch succeeded), the message failed or the time ran out (the next step, or
//! the dispatch failed). The dispatch row is its own durable timer; the messaging pipeline
//! nudges it when its message changes or a reply arrives, and it re-checks on its own every
//! `recheck` in case a nudge was lost.

pub mod model;
pub mod store;

use haven_channel::ChannelKind;
use haven_identity::{FieldError, IdentityError, Principal, RequestMeta, Right, Scope};
use haven_messaging::{MessageObserver, MessageStatus, Messaging, MessagingError};
use haven_platform::audit::{AuditAction, AuditEvent, AuditSink, Outcome};
use haven_platform::clock::{duration_ms as ms, now_ms};
use haven_platform::events::{EventHook, OutboxEvent};
use haven_platform::id::new_id;
use haven_platform::page::{Page, PageRequest};
use haven_platform::store::StoreError;
use haven_vault::FieldRef;
pub use model::{Dispatch, DispatchStatus, Step, StepRequest, StepView, Until};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
pub use store::{Advance, DispatchRow, DispatchStore, StepRow};
use tokio::sync::Notify;

const READ: Scope = Scope::new("dispatch", Right::Read);
const WRITE: Scope = Scope::new("dispatch", Right::Write);
const TABLE: &str = "dispatches";

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    #[error("not found")]
    NotFound,
    #[error("the dispatch has ended")]
    Ended,
    #[error(transparent)]
    Messaging(#[from] MessagingError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Vault(#[from] haven_vault::VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type DispatchResult<T> = Result<T, DispatchError>;

#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// How long a worker holds a dispatch it is advancing.
    pub lease: Duration,
    /// The longest a waiting step goes unexamined (a lost nudge costs at most this).
    pub recheck: Duration,
    /// How often to look for dispatches other nodes made due.
    pub poll: Duration,
    pub batch: i64,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            recheck: Duration::from_secs(30),
            poll: Duration::from_millis(500),
            batch: 64,
        }
    }
}

pub struct Dispatcher {
    store: Arc<dyn DispatchStore>,
    messaging: Arc<Messaging>,
    audit: Arc<dyn AuditSink>,
    settings: DispatchSettings,
    wake: Notify,
    event_hook: EventHook,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dispatcher")
    }
}

fn field<'a>(account_id: &'a str, id: &'a str) -> FieldRef<'a> {
    FieldRef {
        account_id,
        table: TABLE,
        column: "steps",
        row_id: id,
    }
}

fn dispatch_event(
    event_type: &'static str,
    row: &DispatchRow,
    step: i64,
    message_id: Option<&str>,
    outcome: Option<&str>,
) -> OutboxEvent {
    OutboxEvent::new(
        event_type,
        &row.account_id,
        json!({
            "dispatch_id": row.id,
            "status": row.status,
            "step": step,
            "message_id": message_id,
            "outcome": outcome,
        }),
    )
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn DispatchStore>,
        messaging: Arc<Messaging>,
        audit: Arc<dyn AuditSink>,
        settings: DispatchSettings,
    ) -> Arc<Self> {
        let d = Arc::new(Self {
            store,
            messaging: Arc::clone(&messaging),
            audit,
            settings,
            wake: Notify::new(),
            event_hook: EventHook::default(),
        });
        messaging.observe(Arc::new(Nudger(Arc::downgrade(&d))));
        d
    }

    /// Called after events are written, so this node's webhook worker wakes at once.
    pub fn on_events(&self, hook: Arc<dyn Fn() + Send + Sync>) {
        self.event_hook.set(hook);
    }

    fn events_written(&self) {
        self.event_hook.fire();
    }

    async fn audit(&self, p: &Principal, meta: &RequestMeta, action: AuditAction, id: &str) {
        let e = AuditEvent::new(action, Outcome::Success, p.actor(meta)).resource("dispatch", id);
        if action == AuditAction::DispatchRead {
            self.audit.enqueue(e).await;
        } else {
            self.audit.record(e).await;
        }
    }

    /// Starts a workflow. Every step's message is checked now (fields, template, channel,
    /// sender, links); consent, first contact and quiet hours are checked when the step runs.
    pub async fn create(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        steps: Vec<StepRequest>,
    ) -> DispatchResult<Dispatch> {
        p.require(WRITE)?;
        p.require(Scope::new("messages", Right::Write))?;
        let steps = model::validate_steps(steps).map_err(DispatchError::Invalid)?;
        let mut errors = Vec::new();
        let mut first_to = None;
        let mut channels = Vec::with_capacity(steps.len());
        for (i, s) in steps.iter().enumerate() {
            match self
                .messaging
                .prepare(&p.account_id, s.message.clone())
                .await
            {
                Ok((v, _)) => {
                    if first_to.is_none() {
                        first_to = Some((v.channel, v.to.clone()));
                    }
                    if matches!(s.until, Until::Replied | Until::RepliedWith(_))
                        && v.channel == ChannelKind::Email
                    {
                        errors.push(FieldError::new(
                            format!("steps[{i}].until"),
                            "replies are received on SMS only (email has no inbound mailbox yet)",
                        ));
                    }
                    channels.push(v.channel);
                }
                Err(MessagingError::Invalid(es)) => {
                    for e in es {
                        errors.push(FieldError::new(
                            format!("steps[{i}].message.{}", e.field),
                            e.message,
                        ));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        let Some((kind, to)) = first_to.filter(|_| errors.is_empty()) else {
            return Err(DispatchError::Invalid(errors));
        };
        let id = new_id(model::DISPATCH_PREFIX);
        let plain = serde_json::to_vec(&steps)
            .map_err(|_| StoreError::Backend("steps not serializable".into()))?;
        let (contact_id, steps_ct) = self
            .messaging
            .seal_about(&field(&p.account_id, &id), kind, &to, &plain)
            .await?;
        let now = now_ms();
        let row = DispatchRow {
            id: id.clone(),
            account_id: p.account_id.clone(),
            status: DispatchStatus::Running.as_str().to_owned(),
            contact_id,
            steps_ct,
            step_count: i64::try_from(steps.len()).unwrap_or(1),
            current_step: 0,
            current_message_id: None,
            step_started_at_ms: None,
            step_deadline_ms: None,
            watch_channel: None,
            watch_sender: None,
            watch_peer_bidx: None,
            wake_at_ms: now,
            outcome: None,
            created_by: Some(p.credential_id.clone()),
            created_at_ms: now,
            updated_at_ms: now,
            final_at_ms: None,
        };
        let step_rows: Vec<StepRow> = channels
            .iter()
            .enumerate()
            .map(|(i, c)| StepRow {
                dispatch_id: id.clone(),
                step_index: i64::try_from(i).unwrap_or(0),
                channel: c.as_str().to_owned(),
                message_id: new_id(haven_messaging::model::MESSAGE_PREFIX),
                status: "pending".to_owned(),
                reason: None,
                started_at_ms: None,
                ended_at_ms: None,
            })
            .collect();
        self.store.insert_dispatch(&row, &step_rows).await?;
        metrics::counter!("haven_dispatches_started_total").increment(1);
        self.wake.notify_one();
        self.audit(p, meta, AuditAction::DispatchStarted, &id).await;
        Ok(self.view(&row, &step_rows, Some(&steps)))
    }

    fn view(&self, row: &DispatchRow, steps: &[StepRow], specs: Option<&[Step]>) -> Dispatch {
        Dispatch {
            id: row.id.clone(),
            account_id: row.account_id.clone(),
            status: DispatchStatus::parse(&row.status).unwrap_or(DispatchStatus::Failed),
            current_step: row.current_step,
            steps: steps
                .iter()
                .map(|s| {
                    let spec = specs.and_then(|sp| sp.get(usize::try_from(s.step_index).ok()?));
                    StepView {
                        index: s.step_index,
                        channel: s.channel.clone(),
                        until: spec.map(|sp| sp.until.clone()),
                        timeout_seconds: spec.and_then(|sp| sp.timeout_seconds),
                        message_id: s.started_at_ms.is_some().then(|| s.message_id.clone()),
                        status: s.status.clone(),
                        reason: s.reason.clone(),
                        started_at_ms: s.started_at_ms,
                        ended_at_ms: s.ended_at_ms,
                    }
                })
                .collect(),
            outcome: row.outcome.clone(),
            erased: specs.is_none(),
            created_at_ms: row.created_at_ms,
            updated_at_ms: row.updated_at_ms,
            final_at_ms: row.final_at_ms,
        }
    }

    /// The steps of a stored dispatch; `None` once the patient was erased.
    async fn open_steps(&self, row: &DispatchRow) -> DispatchResult<Option<Vec<Step>>> {
        let Some(raw) = self
            .messaging
            .open_about(
                &field(&row.account_id, &row.id),
                row.contact_id.as_deref(),
                &row.steps_ct,
            )
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_slice(&raw).map_err(|_| {
            StoreError::Backend("stored dispatch steps are not readable".into())
        })?))
    }

    async fn owned(&self, p: &Principal, id: &str) -> DispatchResult<DispatchRow> {
        if !haven_identity::is_id(model::DISPATCH_PREFIX, id) {
            return Err(DispatchError::NotFound);
        }
        match self.store.get_dispatch(id).await? {
            Some(r) if r.account_id == p.account_id => Ok(r),
            _ => Err(DispatchError::NotFound),
        }
    }

    async fn full_view(&self, row: &DispatchRow) -> DispatchResult<Dispatch> {
        let steps = self.store.dispatch_steps(&row.id).await?;
        let specs = self.open_steps(row).await?;
        Ok(self.view(row, &steps, specs.as_deref()))
    }

    pub async fn get(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        id: &str,
    ) -> DispatchResult<Dispatch> {
        p.require(READ)?;
        let row = self.owned(p, id).await?;
        let d = self.full_view(&row).await?;
        self.audit(p, meta, AuditAction::DispatchRead, id).await;
        Ok(d)
    }

    pub async fn list(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        status: Option<&str>,
        page: &PageRequest,
    ) -> DispatchResult<Page<Dispatch>> {
        p.require(READ)?;
        if let Some(s) = status
            && DispatchStatus::parse(s).is_none()
        {
            return Err(DispatchError::Invalid(vec![FieldError::new(
                "status",
                "must be one of: running, succeeded, failed, cancelled",
            )]));
        }
        let rows = self
            .store
            .list_dispatches(&p.account_id, status, page)
            .await?;
        let page = Page::from_rows(rows, page, |r| &r.id);
        let mut items = Vec::with_capacity(page.items.len());
        for row in &page.items {
            items.push(self.full_view(row).await?);
            self.audit(p, meta, AuditAction::DispatchRead, &row.id)
                .await;
        }
        Ok(Page {
            items,
            next_cursor: page.next_cursor,
        })
    }

    /// Stops a running dispatch: no further step is sent. A message already accepted for
    /// the current step is not recalled.
    pub async fn cancel(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        id: &str,
    ) -> DispatchResult<Dispatch> {
        p.require(WRITE)?;
        let mut row = self.owned(p, id).await?;
        let now = now_ms();
        row.status = DispatchStatus::Cancelled.as_str().to_owned();
        let event = dispatch_event(
            "dispatch.cancelled",
            &row,
            row.current_step,
            row.current_message_id.as_deref(),
            Some("cancelled"),
        );
        if !self.store.cancel_dispatch(id, now, &event).await? {
            return Err(DispatchError::Ended);
        }
        self.events_written();
        self.audit(p, meta, AuditAction::DispatchCancelled, id)
            .await;
        let row = self.owned(p, id).await?;
        self.full_view(&row).await
    }

    // ------------------------------------------------------------------ worker --

    /// This node's worker: leases due dispatches and advances them. Runs until dropped.
    pub async fn run(self: Arc<Self>) {
        loop {
            let now = now_ms();
            let claimed = match self
                .store
                .claim_dispatches(now, now + ms(self.settings.lease), self.settings.batch)
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming due dispatches failed");
                    Vec::new()
                }
            };
            let n = claimed.len();
            for row in claimed {
                let id = row.id.clone();
                match self.advance(row).await {
                    Ok(a) => match self.store.advance_dispatch(&a).await {
                        Ok(true) => {
                            if !a.events.is_empty() {
                                self.events_written();
                            }
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(dispatch_id = %id, error = %e, "recording a dispatch step failed")
                        }
                    },
                    // The lease runs out and the dispatch is looked at again.
                    Err(e) => {
                        tracing::warn!(dispatch_id = %id, error = %e, "advancing a dispatch failed")
                    }
                }
            }
            if i64::try_from(n).unwrap_or(0) < self.settings.batch {
                let _ = tokio::time::timeout(self.settings.poll, self.wake.notified()).await;
            }
        }
    }

    /// Decides what happens next to a leased dispatch.
    async fn advance(&self, mut row: DispatchRow) -> DispatchResult<Advance> {
        let looked_at = now_ms();
        let mut steps = self.store.dispatch_steps(&row.id).await?;
        let mut events = Vec::new();
        let Some(specs) = self.open_steps(&row).await? else {
            // The patient was erased: nothing more can be sent.
            self.finish(
                &mut row,
                &mut steps,
                DispatchStatus::Failed,
                "erased",
                looked_at,
                &mut events,
            );
            return Ok(Advance {
                row,
                looked_at_ms: looked_at,
                steps,
                events,
            });
        };
        // At most one pass per step: skipped steps fall through to the next at once.
        for _ in 0..=specs.len() {
            let i = usize::try_from(row.current_step).unwrap_or(usize::MAX);
            let (Some(spec), Some(step)) = (specs.get(i), steps.get(i).cloned()) else {
                self.finish(
                    &mut row,
                    &mut steps,
                    DispatchStatus::Failed,
                    "steps_exhausted",
                    looked_at,
                    &mut events,
                );
                break;
            };
            let now = now_ms();
            if row.current_message_id.is_none() {
                match self
                    .messaging
                    .send_step(
                        &row.account_id,
                        row.created_by.clone(),
                        &row.id,
                        &step.message_id,
                        spec.message.clone(),
                    )
                    .await
                {
                    Ok(sent) => {
                        row.current_message_id = Some(sent.message.id.clone());
                        row.step_started_at_ms = Some(now);
                        // A message held by quiet hours has its whole timeout after it goes.
                        let goes_at = sent.message.send_after_ms.unwrap_or(now).max(now);
                        row.step_deadline_ms = spec
                            .timeout_seconds
                            .map(|t| goes_at + i64::try_from(t).unwrap_or(0) * 1000);
                        let watch = matches!(spec.until, Until::Replied | Until::RepliedWith(_));
                        row.watch_channel = watch.then(|| sent.message.channel.as_str().to_owned());
                        row.watch_sender = watch.then(|| sent.sender_id.clone());
                        row.watch_peer_bidx = watch.then(|| sent.peer_bidx.clone());
                        row.wake_at_ms = self.next_look(&row, now);
                        set_step(&mut steps, i, "waiting", None, Some(now), None);
                        events.push(dispatch_event(
                            "dispatch.step_started",
                            &row,
                            row.current_step,
                            Some(&sent.message.id),
                            None,
                        ));
                        metrics::counter!("haven_dispatch_steps_total", "channel" => step.channel.clone()).increment(1);
                        break;
                    }
                    Err(e) if !e.is_transient() => {
                        tracing::info!(dispatch_id = %row.id, step = i, reason = e.reason(), "dispatch step skipped");
                        set_step(
                            &mut steps,
                            i,
                            "skipped",
                            Some(e.reason().to_owned()),
                            None,
                            Some(now),
                        );
                        if !self.next_step(
                            &mut row,
                            &mut steps,
                            "last_step_skipped",
                            now,
                            &mut events,
                        ) {
                            break;
                        }
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            // The step's message is out: is the condition met, did it fail, is time up?
            let message_id = row.current_message_id.clone().unwrap_or_default();
            let state = self
                .messaging
                .delivery_state(&row.account_id, &message_id)
                .await?;
            let met = match &spec.until {
                Until::Delivered => state.is_some_and(|s| {
                    s.status == MessageStatus::Delivered
                        || (!s.reports_delivery && s.status == MessageStatus::Submitted)
                }),
                until => {
                    let (Some(ch), Some(sender), Some(peer)) = (
                        row.watch_channel.as_deref().and_then(ChannelKind::parse),
                        row.watch_sender.clone(),
                        row.watch_peer_bidx.clone(),
                    ) else {
                        return Err(
                            StoreError::Backend("dispatch watch is incomplete".into()).into()
                        );
                    };
                    let since = row.step_started_at_ms.unwrap_or(row.created_at_ms);
                    self.messaging
                        .replies_since(&row.account_id, ch, &sender, &peer, since)
                        .await?
                        .iter()
                        .any(|t| until.accepts_reply(t))
                }
            };
            if met {
                set_step(&mut steps, i, "succeeded", None, None, Some(now));
                self.finish(
                    &mut row,
                    &mut steps,
                    DispatchStatus::Succeeded,
                    &spec.until.describe(),
                    now,
                    &mut events,
                );
                break;
            }
            let failed = state.map_or(Some("message_missing".to_owned()), |s| {
                matches!(
                    s.status,
                    MessageStatus::Failed | MessageStatus::Expired | MessageStatus::Rejected
                )
                .then(|| format!("message_{}", s.status.as_str()))
            });
            let timed_out = row.step_deadline_ms.is_some_and(|d| now >= d);
            if let Some(reason) = failed {
                set_step(&mut steps, i, "failed", Some(reason), None, Some(now));
            } else if timed_out {
                set_step(&mut steps, i, "timed_out", None, None, Some(now));
            } else {
                row.wake_at_ms = self.next_look(&row, now);
                break;
            }
            if !self.next_step(&mut row, &mut steps, "last_step_failed", now, &mut events) {
                break;
            }
        }
        row.updated_at_ms = now_ms();
        Ok(Advance {
            row,
            looked_at_ms: looked_at,
            steps,
            events,
        })
    }

    /// The next time to look at a waiting step: its deadline, or the recheck, whichever first.
    fn next_look(&self, row: &DispatchRow, now: i64) -> i64 {
        let recheck = now + ms(self.settings.recheck);
        row.step_deadline_ms.map_or(recheck, |d| d.min(recheck))
    }

    /// Moves to the next step; when there is none the dispatch failed. Returns whether there
    /// is a step to run.
    fn next_step(
        &self,
        row: &mut DispatchRow,
        steps: &mut [StepRow],
        exhausted: &str,
        now: i64,
        events: &mut Vec<OutboxEvent>,
    ) -> bool {
        if row.current_step + 1 >= row.step_count {
            self.finish(row, steps, DispatchStatus::Failed, exhausted, now, events);
            return false;
        }
        row.current_step += 1;
        row.current_message_id = None;
        row.step_started_at_ms = None;
        row.step_deadline_ms = None;
        row.watch_channel = None;
        row.watch_sender = None;
        row.watch_peer_bidx = None;
        row.wake_at_ms = now;
        true
    }

    fn finish(
        &self,
        row: &mut DispatchRow,
        steps: &mut [StepRow],
        status: DispatchStatus,
        outcome: &str,
        now: i64,
        events: &mut Vec<OutboxEvent>,
    ) {
        row.status = status.as_str().to_owned();
        row.outcome = Some(outcome.to_owned());
        row.final_at_ms = Some(now);
        row.watch_channel = None;
        row.watch_sender = None;
        row.watch_peer_bidx = None;
        for s in steps.iter_mut().filter(|s| s.status == "pending") {
            s.status = "cancelled".into();
        }
        let event_type = match status {
            DispatchStatus::Succeeded => "dispatch.succeeded",
            DispatchStatus::Cancelled => "dispatch.cancelled",
            _ => "dispatch.failed",
        };
        metrics::counter!("haven_dispatches_finished_total", "status" => status.as_str())
            .increment(1);
        events.push(dispatch_event(
            event_type,
            row,
            row.current_step,
            row.current_message_id.as_deref(),
            Some(outcome),
        ));
    }

    async fn nudge_messages(&self, ids: &[String]) {
        match self.store.nudge_messages(ids, now_ms()).await {
            Ok(n) if n > 0 => self.wake.notify_one(),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "nudging dispatches failed"),
        }
    }

    async fn nudge_reply(
        &self,
        account_id: &str,
        channel: ChannelKind,
        sender_id: &str,
        peer: &[u8],
    ) {
        match self
            .store
            .nudge_reply(account_id, channel.as_str(), sender_id, peer, now_ms())
            .await
        {
            Ok(n) if n > 0 => self.wake.notify_one(),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "nudging dispatches failed"),
        }
    }
}

fn set_step(
    steps: &mut [StepRow],
    i: usize,
    status: &str,
    reason: Option<String>,
    started: Option<i64>,
    ended: Option<i64>,
) {
    if let Some(s) = steps.get_mut(i) {
        s.status = status.to_owned();
        if reason.is_some() {
            s.reason = reason;
        }
        if started.is_some() {
            s.started_at_ms = started;
        }
        if ended.is_some() {
            s.ended_at_ms = ended;
        }
    }
}

/// The messaging pipeline's observer: wakes the dispatches a change concerns. Holds the
/// dispatcher weakly, so that dropping the dispatcher stops it.
struct Nudger(std::sync::Weak<Dispatcher>);

#[async_trait::async_trait]
impl MessageObserver for Nudger {
    async fn messages_changed(&self, message_ids: &[String]) {
        if let Some(d) = self.0.upgrade() {
            d.nudge_messages(message_ids).await;
        }
    }

    async fn reply_received(
        &self,
        account_id: &str,
        channel: ChannelKind,
        sender_id: &str,
        peer_bidx: &[u8],
    ) {
        if let Some(d) = self.0.upgrade() {
            d.nudge_reply(account_id, channel, sender_id, peer_bidx)
                .await;
        }
    }
}
