//! The sending side of the pipeline, the receipt reconciler, and the sink channels report to.

use crate::model::{Content, Direction, MessageStatus};
use crate::store::{Outcome, ReceiptRow, ReceiptTarget, StatusChange};
use crate::{MessageRow, Messaging, MessagingError, MessagingResult, Settle, field, message_event};
use haven_channel::{
    ChannelEvent, ChannelKind, InboundSink, Outbound, ReceiptState, SendError, SinkError,
};
use haven_platform::clock::{duration_ms as ms, now_ms};
use haven_platform::id::{new_id, new_id_at};
use haven_platform::usage::{self, UsageRecord};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The shortest time between two background writes of one kind (claims, outcomes with the
/// receipts that came meanwhile). Nobody waits on them at the API; pacing them makes their batches
/// bigger and leaves the write connection to acceptance more often.
pub const BACKGROUND_PACE: Duration = Duration::from_millis(50);

/// How long an unmatched receipt waits for its part before it is dropped.
const RECEIPT_KEEP_MS: i64 = 24 * 3600 * 1000;

/// How often the store is asked whether a stored receipt is due for another try.
const RECEIPT_RETRY_PACE: Duration = Duration::from_millis(100);

pub fn receipt_state_str(s: ReceiptState) -> &'static str {
    match s {
        ReceiptState::EnRoute => "enroute",
        ReceiptState::Delivered => "delivered",
        ReceiptState::Expired => "expired",
        ReceiptState::Failed => "failed",
        ReceiptState::Rejected => "rejected",
        ReceiptState::Unknown => "unknown",
    }
}

/// What the parts' receipts say about the whole message: delivered once every part is, or the
/// first final failure of any part.
pub fn decide(t: &ReceiptTarget, _now_ms: i64) -> Option<StatusChange> {
    if t.status != MessageStatus::Submitted.as_str() || t.parts.is_empty() {
        return None;
    }
    let failure = t.parts.iter().find_map(|p| {
        let s = match p.state.as_str() {
            "failed" => MessageStatus::Failed,
            "expired" => MessageStatus::Expired,
            "rejected" => MessageStatus::Rejected,
            _ => return None,
        };
        Some((s, p.error_code.clone()))
    });
    let (status, code) = match failure {
        Some(f) => f,
        None if t.parts.iter().all(|p| p.state == "delivered") => (MessageStatus::Delivered, None),
        None => return None,
    };
    let event_type = status.event_type()?;
    Some(StatusChange {
        status: status.as_str().to_owned(),
        error_code: code.clone(),
        event: message_event(
            event_type,
            &t.account_id,
            &t.message_id,
            &t.channel,
            status.as_str(),
            code.as_deref(),
        ),
    })
}

/// The next message handed over by acceptance; never, once there is no queue.
async fn next_handed(
    rx: &mut Option<tokio::sync::mpsc::Receiver<MessageRow>>,
) -> Option<MessageRow> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Exponential backoff from 1 s up to `max`, with up to 20% jitter.
fn backoff(attempts: i64, max: Duration) -> Duration {
    let exp = u32::try_from(attempts.clamp(1, 20) - 1).unwrap_or(0);
    let base = Duration::from_secs(1u64 << exp.min(16)).min(max);
    let jitter = haven_crypto::random_bytes::<2>()
        .map(|b| f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX))
        .unwrap_or(0.5);
    base.mul_f64(1.0 + 0.2 * jitter)
}

impl Messaging {
    /// Opens a queued message into what its channel needs.
    /// Opens a queued message into what its channel needs, and, when it carries a one-time
    /// secret, the content to keep instead once the carrier took it.
    async fn outbound(
        &self,
        row: &MessageRow,
    ) -> MessagingResult<Option<(Outbound, Option<Vec<u8>>)>> {
        let Some((to, from, content)) = self.open_row(row).await? else {
            return Ok(None);
        };
        let redacted = self.redacted(row, &content).await?;
        Ok(Some((
            Outbound {
                message_id: row.id.clone(),
                account_id: row.account_id.clone(),
                to,
                from,
                subject: content.subject,
                text: content.text,
                html: content.html,
                want_receipt: row.want_receipt,
                expires_at_ms: Some(row.expires_at_ms),
            },
            redacted,
        )))
    }

    /// The content sealed again with its secret masked; `None` when it has no secret.
    async fn redacted(
        &self,
        row: &MessageRow,
        content: &Content,
    ) -> MessagingResult<Option<Vec<u8>>> {
        if content.secret.is_none() {
            return Ok(None);
        }
        let Some(key) = self.key_of(row).await? else {
            return Ok(None);
        };
        let plain = serde_json::to_vec(&content.masked())
            .map_err(|_| MessagingError::Vault(haven_vault::VaultError::Integrity("content")))?;
        Ok(Some(
            self.seal(&key, &field(&row.account_id, &row.id, "content"), &plain)
                .await?,
        ))
    }

    /// For a message that ends without being sent: its content with any secret masked.
    async fn redacted_row(&self, row: &MessageRow) -> Option<Vec<u8>> {
        match self.open_row(row).await {
            Ok(Some((_, _, content))) => self.redacted(row, &content).await.ok().flatten(),
            _ => None,
        }
    }

    fn final_outcome(
        row: &MessageRow,
        status: MessageStatus,
        code: Option<String>,
        reason: Option<String>,
    ) -> Outcome {
        let at_ms = now_ms();
        Outcome::Final {
            content_ct: None,
            message_id: row.id.clone(),
            status: status.as_str().to_owned(),
            event: message_event(
                status.event_type().unwrap_or("message.failed"),
                &row.account_id,
                &row.id,
                &row.channel,
                status.as_str(),
                code.as_deref(),
            ),
            error_code: code,
            reason,
            at_ms,
        }
    }

    fn retry_outcome(&self, row: &MessageRow, reason: String, after: Option<Duration>) -> Outcome {
        let attempts = row.attempts + 1;
        let wait = after
            .unwrap_or_else(|| backoff(attempts, self.settings.retry_max))
            .min(self.settings.retry_max);
        Outcome::Retry {
            message_id: row.id.clone(),
            attempts,
            // Past its expiry the next claim expires it.
            next_attempt_at_ms: (now_ms() + ms(wait)).min(row.expires_at_ms),
            reason,
        }
    }

    /// One attempt at one leased message.
    async fn attempt(&self, row: MessageRow) -> Outcome {
        if now_ms() >= row.expires_at_ms {
            let mut o = Self::final_outcome(
                &row,
                MessageStatus::Expired,
                None,
                Some("time to live ran out before a carrier took the message".into()),
            );
            if let Outcome::Final { content_ct, .. } = &mut o {
                *content_ct = self.redacted_row(&row).await;
            }
            return o;
        }
        let Some(kind) = ChannelKind::parse(&row.channel) else {
            return Self::final_outcome(&row, MessageStatus::Failed, None, Some("channel".into()));
        };
        let Some(channel) = self.channel(kind) else {
            return self.retry_outcome(&row, format!("no {kind} channel configured"), None);
        };
        let (out, redacted) = match self.outbound(&row).await {
            Ok(Some(o)) => o,
            Ok(None) => {
                return Self::final_outcome(
                    &row,
                    MessageStatus::Failed,
                    Some("erased".into()),
                    Some("the recipient was erased before the message was sent".into()),
                );
            }
            Err(e) => {
                tracing::error!(message_id = %row.id, error = %e, "queued message is not readable");
                return Self::final_outcome(
                    &row,
                    MessageStatus::Failed,
                    Some("unreadable".into()),
                    Some("the stored message could not be decrypted".into()),
                );
            }
        };
        let country = match kind {
            ChannelKind::Sms => crate::country::country_of(&out.to),
            ChannelKind::Email => None,
        };
        // Stay well inside the lease, so no other node starts the same send.
        let limit = self.settings.lease.mul_f64(0.8);
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(limit, channel.send(&out)).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Transient {
                reason: "the carrier did not answer in time".into(),
                retry_after: None,
            }),
        };
        metrics::histogram!("haven_message_send_seconds", "channel" => kind.as_str())
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(s) => {
                metrics::counter!("haven_messages_submitted_total", "channel" => kind.as_str())
                    .increment(1);
                let at_ms = now_ms();
                let usage = self.usage_record(&row, kind, country, s.provider_ids.len(), at_ms);
                Outcome::Submitted {
                    event: message_event(
                        "message.submitted",
                        &row.account_id,
                        &row.id,
                        &row.channel,
                        MessageStatus::Submitted.as_str(),
                        None,
                    ),
                    message_id: row.id.clone(),
                    route: s.route,
                    provider_ids: s.provider_ids,
                    at_ms,
                    content_ct: redacted,
                    usage,
                }
            }
            Err(SendError::Rejected { code, reason }) => {
                metrics::counter!("haven_messages_rejected_total", "channel" => kind.as_str())
                    .increment(1);
                let mut o =
                    Self::final_outcome(&row, MessageStatus::Rejected, Some(code), Some(reason));
                if let Outcome::Final { content_ct, .. } = &mut o {
                    *content_ct = redacted;
                }
                o
            }
            Err(SendError::Transient {
                reason,
                retry_after,
            }) => {
                metrics::counter!("haven_message_send_retries_total", "channel" => kind.as_str())
                    .increment(1);
                tracing::debug!(message_id = %row.id, %reason, "send will be retried");
                self.retry_outcome(&row, reason, retry_after)
            }
        }
    }

    /// What one send is billed as: SMS by the segments the carrier took, email by message,
    /// priced from the rate card in force now.
    fn usage_record(
        &self,
        row: &MessageRow,
        kind: ChannelKind,
        country: Option<String>,
        parts: usize,
        at_ms: i64,
    ) -> Box<UsageRecord> {
        let (units, unit) = match kind {
            ChannelKind::Sms => (
                i64::try_from(parts.max(1)).unwrap_or(i64::MAX),
                "sms_segment",
            ),
            ChannelKind::Email => (1, "email"),
        };
        let rates = &self.settings.rates;
        let unit_price_micros = rates.unit_price(kind.as_str(), country.as_deref());
        Box::new(UsageRecord {
            id: new_id_at("usg", at_ms),
            account_id: row.account_id.clone(),
            product: usage::product_of(row.workflow_id.as_deref()).to_owned(),
            channel: kind.as_str().to_owned(),
            resource_id: row.id.clone(),
            reference_id: row.workflow_id.clone(),
            country,
            units,
            unit: unit.to_owned(),
            currency: unit_price_micros.and(rates.currency.clone()),
            unit_price_micros,
            created_at_ms: at_ms,
        })
    }

    /// This node's sending loop: sends what this node accepted and leased to itself (handed
    /// over at once), and leases the rest of what is due from the store (retries, held
    /// messages, what other nodes or an earlier run left) at most once per
    /// [`BACKGROUND_PACE`]; at most `concurrency` sends at once. Runs until the task is dropped.
    pub async fn run_sender(self: Arc<Self>) {
        let permits = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        let (queue, rx) = tokio::sync::mpsc::channel(self.settings.concurrency.max(1));
        let mut handed = self.handoff.set(queue).is_ok().then_some(rx);
        // When the next claim may run; `idle` when the last one found less than it asked for
        // (then the next waits for a wake or the poll, not just the pace).
        let mut claim_at = tokio::time::Instant::now();
        let mut earliest = claim_at;
        let mut idle = false;
        loop {
            if permits.available_permits() == 0 {
                // Every permit is taken: wait for one to come back.
                if let Ok(p) = Arc::clone(&permits).acquire_owned().await {
                    drop(p);
                }
                continue;
            }
            if tokio::time::Instant::now() >= claim_at {
                let started = tokio::time::Instant::now();
                let limit = permits.available_permits().min(self.settings.batch_max);
                let claimed = self.claim_and_send(&permits, limit).await;
                idle = claimed < limit;
                // Claims are background writes: at most one per pace, so under load each takes
                // many messages and acceptance gets the write connection in between.
                earliest = started + BACKGROUND_PACE;
                claim_at = if idle {
                    started + self.settings.poll.max(BACKGROUND_PACE)
                } else {
                    earliest
                };
                continue;
            }
            tokio::select! {
                row = next_handed(&mut handed) => match row {
                    Some(row) => self.send_handed(&permits, row).await,
                    None => handed = None,
                },
                () = self.wake_sender.notified(), if idle => {
                    // Something new is due in the store: claim it, but not before the pace.
                    claim_at = earliest;
                    idle = false;
                }
                () = tokio::time::sleep_until(claim_at) => {}
            }
        }
    }

    /// Leases up to `limit` due messages from the store and starts sending each; returns how
    /// many it leased.
    async fn claim_and_send(self: &Arc<Self>, permits: &Arc<Semaphore>, limit: usize) -> usize {
        let now = now_ms();
        let lease_until = now + ms(self.settings.lease);
        let started = std::time::Instant::now();
        let claim = self
            .store
            .claim_due(now, lease_until, i64::try_from(limit).unwrap_or(1))
            .await;
        metrics::histogram!("haven_message_claim_seconds").record(started.elapsed().as_secs_f64());
        match claim {
            Ok(rows) => {
                let claimed = rows.len();
                metrics::histogram!("haven_message_claim_size").record(claimed as f64);
                for row in rows {
                    let Ok(permit) = Arc::clone(permits).acquire_owned().await else {
                        return claimed;
                    };
                    self.start_attempt(row, permit);
                }
                claimed
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming due messages failed");
                0
            }
        }
    }

    /// Starts sending a message this node leased to itself when it accepted it, unless the
    /// lease is too far spent to finish inside it: then it is left for a claim once the
    /// lease runs out, so no two sends of it ever overlap.
    async fn send_handed(self: &Arc<Self>, permits: &Arc<Semaphore>, row: MessageRow) {
        let Ok(permit) = Arc::clone(permits).acquire_owned().await else {
            return;
        };
        let budget = ms(self.settings.lease.mul_f64(0.8));
        if now_ms().saturating_add(budget) > row.lease_until_ms {
            metrics::counter!("haven_messages_handoff_total", "result" => "expired").increment(1);
            return;
        }
        metrics::counter!("haven_messages_handoff_total", "result" => "sent").increment(1);
        self.start_attempt(row, permit);
    }

    /// One send in a task of its own, holding `permit` until its outcome is recorded.
    fn start_attempt(self: &Arc<Self>, row: MessageRow, permit: tokio::sync::OwnedSemaphorePermit) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let id = row.id.clone();
            let workflow = row.workflow_id.is_some();
            let outcome = me.attempt(row).await;
            let wrote_event = !matches!(outcome, Outcome::Retry { .. });
            if let Err(e) = me.settle_writer.submit(Settle::Outcome(outcome)).await {
                // The lease runs out and the message is tried again.
                tracing::warn!(message_id = %id, error = %e, "recording a send outcome failed");
            } else if wrote_event {
                me.events_written();
                if workflow {
                    me.changed(std::slice::from_ref(&id)).await;
                }
            }
            drop(permit);
        });
    }

    /// Tries stored receipts again as they come due: receipts that came before their
    /// submit's outcome was recorded, or that are not ours (see
    /// [`crate::store::receipt_retry_after_ms`]). Runs until the task is dropped.
    pub async fn run_receipts(self: Arc<Self>) {
        loop {
            let limit = self.background_batch_max();
            let started = std::time::Instant::now();
            let now = now_ms();
            let full = match self
                .store
                .retry_receipts(
                    i64::try_from(limit).unwrap_or(128),
                    now,
                    now - RECEIPT_KEEP_MS,
                    &decide,
                )
                .await
            {
                Ok(settled) => {
                    let n = settled.looked_at();
                    if n > 0 {
                        metrics::histogram!("haven_receipt_retry_seconds")
                            .record(started.elapsed().as_secs_f64());
                    }
                    self.settled(settled).await;
                    n >= limit
                }
                Err(e) => {
                    tracing::warn!(error = %e, "trying stored receipts again failed");
                    false
                }
            };
            // A full batch means more are due: the next goes at once.
            if !full {
                tokio::time::sleep_until((started + RECEIPT_RETRY_PACE).into()).await;
            }
        }
    }

    async fn store_inbound(
        &self,
        channel: ChannelKind,
        from: &str,
        to: &str,
        text: &str,
        at_ms: i64,
    ) -> MessagingResult<()> {
        let (from, to) = match channel {
            // Carriers give numbers without the `+` of E.164 (the TON says international).
            ChannelKind::Sms => (e164(from), e164(to)),
            ChannelKind::Email => (from.trim().to_owned(), to.trim().to_owned()),
        };
        let Some(sender) = self.sender_of(channel, &to).await? else {
            metrics::counter!("haven_inbound_unroutable_total", "channel" => channel.as_str())
                .increment(1);
            tracing::info!(%channel, "inbound message to an address no account registered; dropped");
            return Ok(());
        };
        let account = sender.account_id.as_str();
        let id = new_id(crate::model::MESSAGE_PREFIX);
        let (contact_id, key) = self.seal_key(account, channel, &from).await?;
        let peer_bidx = self.address_index(account, channel, &from).await?;
        let content = serde_json::to_vec(&Content {
            subject: None,
            text: text.to_owned(),
            html: None,
            template_id: None,
            secret: None,
        })
        .map_err(|_| MessagingError::Vault(haven_vault::VaultError::Integrity("content")))?;
        let now = now_ms();
        let row = MessageRow {
            to_ct: self
                .seal(&key, &field(account, &id, "to"), to.as_bytes())
                .await?,
            from_ct: self
                .seal(&key, &field(account, &id, "from"), from.as_bytes())
                .await?,
            content_ct: self
                .seal(&key, &field(account, &id, "content"), &content)
                .await?,
            id: id.clone(),
            account_id: account.to_owned(),
            direction: Direction::Inbound.as_str().to_owned(),
            channel: channel.as_str().to_owned(),
            status: MessageStatus::Received.as_str().to_owned(),
            sender_id: Some(sender.id.clone()),
            contact_id,
            client_ref_ct: None,
            client_ref_bidx: None,
            peer_bidx: Some(peer_bidx.clone()),
            workflow_id: None,
            want_receipt: false,
            parts: 1,
            route: None,
            error_code: None,
            error_reason: None,
            attempts: 0,
            next_attempt_at_ms: 0,
            lease_until_ms: 0,
            expires_at_ms: 0,
            created_by: None,
            created_at_ms: at_ms.min(now),
            updated_at_ms: now,
            submitted_at_ms: None,
            final_at_ms: Some(now),
        };
        let event = message_event(
            "message.inbound",
            account,
            &id,
            channel.as_str(),
            MessageStatus::Received.as_str(),
            None,
        );
        self.writer.submit((row, Some(event))).await?;
        metrics::counter!("haven_messages_inbound_total", "channel" => channel.as_str())
            .increment(1);
        self.events_written();
        if let Some(o) = self.observer() {
            o.reply_received(account, channel, &sender.id, &peer_bidx)
                .await;
        }
        if let Some(word) = crate::consent::keyword(text, &self.keywords) {
            self.on_keyword(account, channel, &to, &from, word, &id)
                .await?;
        }
        Ok(())
    }
}

/// A carrier's number as E.164: digits get their `+`; alphanumeric ids stay as they are.
fn e164(raw: &str) -> String {
    let t = raw.trim();
    if !t.starts_with('+') && !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        format!("+{t}")
    } else {
        t.to_owned()
    }
}

#[async_trait::async_trait]
impl InboundSink for Messaging {
    async fn receive(&self, event: ChannelEvent) -> Result<(), SinkError> {
        match event {
            ChannelEvent::Receipt {
                route,
                provider_id,
                state,
                error_code,
                at_ms,
                ..
            } => {
                // Answered (deliver_sm_resp) once applied or stored: never lost.
                self.settle_writer
                    .submit(Settle::Receipt(ReceiptRow {
                        route,
                        provider_id,
                        state: receipt_state_str(state).to_owned(),
                        error_code,
                        at_ms,
                        received_at_ms: now_ms(),
                    }))
                    .await
                    .map_err(|e| SinkError(e.to_string()))
            }
            ChannelEvent::Inbound {
                channel,
                from,
                to,
                text,
                at_ms,
                ..
            } => self
                .store_inbound(channel, &from, &to, &text, at_ms)
                .await
                .map_err(|e| SinkError(e.to_string())),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::PartRow;

    fn target(states: &[(&str, Option<&str>)]) -> ReceiptTarget {
        ReceiptTarget {
            message_id: "msg_1".into(),
            account_id: "acc_1".into(),
            channel: "sms".into(),
            status: "submitted".into(),
            parts: states
                .iter()
                .enumerate()
                .map(|(i, (s, c))| PartRow {
                    message_id: "msg_1".into(),
                    part_index: i as i64,
                    route: "r".into(),
                    provider_id: format!("p{i}"),
                    state: (*s).into(),
                    error_code: c.map(Into::into),
                })
                .collect(),
        }
    }

    #[test]
    fn delivered_only_when_every_part_is() {
        assert!(decide(&target(&[("delivered", None), ("submitted", None)]), 0).is_none());
        let c = decide(&target(&[("delivered", None), ("delivered", None)]), 0).unwrap();
        assert_eq!(c.status, "delivered");
        assert_eq!(c.event.event_type, "message.delivered");
    }

    #[test]
    fn any_failed_part_fails_the_message() {
        let c = decide(&target(&[("delivered", None), ("failed", Some("001"))]), 0).unwrap();
        assert_eq!(
            (c.status.as_str(), c.error_code.as_deref()),
            ("failed", Some("001"))
        );
        assert!(!c.event.payload().contains("+1"), "no addresses in events");
    }

    #[test]
    fn final_messages_do_not_change() {
        let mut t = target(&[("delivered", None)]);
        t.status = "delivered".into();
        assert!(decide(&t, 0).is_none());
    }

    #[test]
    fn numbers_get_their_plus() {
        assert_eq!(e164("14155550100"), "+14155550100");
        assert_eq!(e164("+14155550100"), "+14155550100");
        assert_eq!(e164("CLINIC"), "CLINIC");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = Duration::from_secs(60);
        assert!(backoff(1, max) < Duration::from_secs(2));
        assert!(backoff(3, max) >= Duration::from_secs(4));
        assert!(backoff(30, max) <= max.mul_f64(1.2));
    }
}
