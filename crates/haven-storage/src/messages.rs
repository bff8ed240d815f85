//! The messaging storage, for both backends. Message rows are the delivery queue.

use crate::{PgStore, SqliteStore, backend, bulk, sql};
use haven_messaging::store::{
    ConsentRow, Decide, MessageFilter, MessageRow, MessageStore, Outcome, PartRow, ReceiptRow,
    ReceiptTarget, SenderRow, Settled, TemplateRow, receipt_retry_after_ms,
};
use haven_platform::events::OutboxEvent;
use haven_platform::page::PageRequest;
use haven_platform::store::StoreResult;
use sqlx::Row;

/// Part states no receipt changes any more.
const FINAL_PART_STATES: &[&str] = &["delivered", "failed", "expired", "rejected"];

/// One stored receipt matched to its part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Receipt<'a> {
    id: i64,
    route: &'a str,
    provider_id: &'a str,
    state: &'a str,
    error_code: Option<&'a str>,
}

/// What a batch of receipts leaves each part at, as `(route, provider_id, state,
/// error_code)`: the receipts of one part applied in the order they came (by id), where a
/// final state is never replaced by a later one. The same rule guards the stored state.
fn fold_receipts<'a>(
    receipts: impl Iterator<Item = Receipt<'a>>,
) -> Vec<(&'a str, &'a str, &'a str, Option<&'a str>)> {
    let mut by_part: Vec<Receipt<'a>> = receipts.collect();
    by_part.sort_by_key(|r| (r.route, r.provider_id, r.id));
    let mut effective: Vec<(&str, &str, &str, Option<&str>)> = Vec::new();
    for m in by_part {
        match effective.last_mut() {
            Some(e) if e.0 == m.route && e.1 == m.provider_id => {
                if !FINAL_PART_STATES.contains(&e.2) {
                    e.2 = m.state;
                    e.3 = m.error_code;
                }
            }
            _ => effective.push((m.route, m.provider_id, m.state, m.error_code)),
        }
    }
    effective
}

/// A receipt matched to its message's part, to be applied. `seq` orders one part's receipts
/// as they came: stored ones by id, then the ones arriving now (from [`ARRIVING_SEQ`]).
struct Matched {
    seq: i64,
    /// Its row in `channel_receipts`, when it was stored.
    stored_id: Option<i64>,
    state: String,
    error_code: Option<String>,
    message_id: String,
    route: String,
    provider_id: String,
}

/// Receipts arriving now come after every stored one.
const ARRIVING_SEQ: i64 = i64::MAX / 2;

macro_rules! impl_message_store {
    ($store:ty, $db:ty, $row:ty, $claim:expr, $due_receipts:expr, $lock:expr, $background_max:expr) => {
        impl $store {
            fn sender_row(r: &$row) -> StoreResult<SenderRow> {
                Ok(SenderRow {
                    id: r.try_get("id").map_err(backend)?,
                    account_id: r.try_get("account_id").map_err(backend)?,
                    channel: r.try_get("channel").map_err(backend)?,
                    address: r.try_get("address").map_err(backend)?,
                    created_at_ms: r.try_get("created_at_ms").map_err(backend)?,
                })
            }

            fn message_row(r: &$row) -> StoreResult<MessageRow> {
                Ok(MessageRow {
                    id: r.try_get("id").map_err(backend)?,
                    account_id: r.try_get("account_id").map_err(backend)?,
                    direction: r.try_get("direction").map_err(backend)?,
                    channel: r.try_get("channel").map_err(backend)?,
                    status: r.try_get("status").map_err(backend)?,
                    sender_id: r.try_get("sender_id").map_err(backend)?,
                    contact_id: r.try_get("contact_id").map_err(backend)?,
                    to_ct: r.try_get("to_ct").map_err(backend)?,
                    from_ct: r.try_get("from_ct").map_err(backend)?,
                    content_ct: r.try_get("content_ct").map_err(backend)?,
                    client_ref_ct: r.try_get("client_ref_ct").map_err(backend)?,
                    client_ref_bidx: r.try_get("client_ref_bidx").map_err(backend)?,
                    peer_bidx: r.try_get("peer_bidx").map_err(backend)?,
                    workflow_id: r.try_get("workflow_id").map_err(backend)?,
                    want_receipt: r.try_get("want_receipt").map_err(backend)?,
                    parts: r.try_get("parts").map_err(backend)?,
                    route: r.try_get("route").map_err(backend)?,
                    error_code: r.try_get("error_code").map_err(backend)?,
                    error_reason: r.try_get("error_reason").map_err(backend)?,
                    attempts: r.try_get("attempts").map_err(backend)?,
                    next_attempt_at_ms: r.try_get("next_attempt_at_ms").map_err(backend)?,
                    lease_until_ms: 0,
                    expires_at_ms: r.try_get("expires_at_ms").map_err(backend)?,
                    created_by: r.try_get("created_by").map_err(backend)?,
                    created_at_ms: r.try_get("created_at_ms").map_err(backend)?,
                    updated_at_ms: r.try_get("updated_at_ms").map_err(backend)?,
                    submitted_at_ms: r.try_get("submitted_at_ms").map_err(backend)?,
                    final_at_ms: r.try_get("final_at_ms").map_err(backend)?,
                })
            }

            fn template_row(r: &$row) -> StoreResult<TemplateRow> {
                Ok(TemplateRow {
                    id: r.try_get("id").map_err(backend)?,
                    account_id: r.try_get("account_id").map_err(backend)?,
                    name: r.try_get("name").map_err(backend)?,
                    channel: r.try_get("channel").map_err(backend)?,
                    locale: r.try_get("locale").map_err(backend)?,
                    subject: r.try_get("subject").map_err(backend)?,
                    body: r.try_get("body").map_err(backend)?,
                    html: r.try_get("html").map_err(backend)?,
                    status: r.try_get("status").map_err(backend)?,
                    review_note: r.try_get("review_note").map_err(backend)?,
                    created_by: r.try_get("created_by").map_err(backend)?,
                    reviewed_by: r.try_get("reviewed_by").map_err(backend)?,
                    created_at_ms: r.try_get("created_at_ms").map_err(backend)?,
                    reviewed_at_ms: r.try_get("reviewed_at_ms").map_err(backend)?,
                })
            }

            fn part_row(r: &$row) -> StoreResult<PartRow> {
                Ok(PartRow {
                    message_id: r.try_get("message_id").map_err(backend)?,
                    part_index: r.try_get("part_index").map_err(backend)?,
                    route: r.try_get("route").map_err(backend)?,
                    provider_id: r.try_get("provider_id").map_err(backend)?,
                    state: r.try_get("state").map_err(backend)?,
                    error_code: r.try_get("error_code").map_err(backend)?,
                })
            }

            /// Records send outcomes in `tx` (see [`MessageStore::settle`]).
            async fn write_outcomes(
                tx: &mut sqlx::Transaction<'_, $db>,
                outcomes: &[Outcome],
            ) -> StoreResult<()> {
                let mut events = Vec::new();
                let mut submitted = Vec::new();
                for o in outcomes {
                    match o {
                        Outcome::Submitted { .. } => submitted.push(o),
                        Outcome::Retry {
                            message_id,
                            attempts,
                            next_attempt_at_ms,
                            reason,
                        } => {
                            sqlx::query(sql::RETRY_MESSAGE)
                                .bind(attempts)
                                .bind(next_attempt_at_ms)
                                .bind(reason)
                                .bind(haven_platform::clock::now_ms())
                                .bind(message_id)
                                .execute(&mut **tx)
                                .await
                                .map_err(backend)?;
                        }
                        Outcome::Final {
                            message_id,
                            status,
                            error_code,
                            reason,
                            at_ms,
                            event,
                            content_ct,
                        } => {
                            let done = sqlx::query(sql::FINAL_MESSAGE)
                                .bind(status)
                                .bind(error_code)
                                .bind(reason)
                                .bind(at_ms)
                                .bind(content_ct)
                                .bind(message_id)
                                .execute(&mut **tx)
                                .await
                                .map_err(backend)?;
                            if done.rows_affected() > 0 {
                                events.push(event.clone());
                            }
                        }
                    }
                }
                // Sends the carrier took, set-based: the messages still `accepted` become
                // `submitted` (the others were settled meanwhile and keep their state), and
                // only those get their parts, their usage record and their event.
                let mut done = std::collections::HashSet::new();
                for r in bulk::chunks(submitted.len()) {
                    let text = format!(
                        "UPDATE messages SET status = 'submitted', route = v.column2, parts = v.column3, \
                         attempts = attempts + 1, submitted_at_ms = v.column4, updated_at_ms = v.column4, \
                         lease_until_ms = 0, due_at_ms = NULL, error_reason = NULL, \
                         content_ct = COALESCE(v.column5, messages.content_ct) \
                         FROM (VALUES {}) AS v WHERE messages.id = v.column1 AND messages.status = 'accepted' \
                         RETURNING messages.id",
                        bulk::values(Self::PH, r.len(), 5, 1, "")
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(text));
                    for o in &submitted[r] {
                        if let Outcome::Submitted {
                            message_id,
                            route,
                            provider_ids,
                            at_ms,
                            content_ct,
                            ..
                        } = o
                        {
                            q = q
                                .bind(message_id)
                                .bind(route)
                                .bind(i64::try_from(provider_ids.len()).unwrap_or(i64::MAX))
                                .bind(at_ms)
                                .bind(content_ct);
                        }
                    }
                    for row in q.fetch_all(&mut **tx).await.map_err(backend)? {
                        done.insert(row.try_get::<String, _>(0).map_err(backend)?);
                    }
                }
                let mut parts = Vec::new();
                let mut usage = Vec::new();
                for o in submitted {
                    if let Outcome::Submitted {
                        message_id,
                        route,
                        provider_ids,
                        at_ms,
                        event,
                        usage: u,
                        ..
                    } = o
                        && done.contains(message_id)
                    {
                        for (i, pid) in provider_ids.iter().enumerate() {
                            parts.push((message_id, i64::try_from(i).unwrap_or(i64::MAX), route, pid, *at_ms));
                        }
                        usage.push(u.as_ref());
                        events.push(event.clone());
                    }
                }
                // No parts to clear first: parts are written only here, in the transaction that
                // moves the message out of `accepted`, and nothing moves a message back; a second
                // send of it (an overlapping lease) fails the status check above and writes none.
                for r in bulk::chunks(parts.len()) {
                    let text = format!(
                        "INSERT INTO message_parts (message_id, part_index, route, provider_id, updated_at_ms, state) \
                         VALUES {}",
                        bulk::values(Self::PH, r.len(), 5, 1, ", 'submitted'")
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(text));
                    for (m, i, route, pid, at) in &parts[r] {
                        q = q.bind(*m).bind(*i).bind(*route).bind(*pid).bind(*at);
                    }
                    q.execute(&mut **tx).await.map_err(backend)?;
                }
                Self::push_usage(tx, &usage).await?;
                Self::push_events(tx, &events).await?;
                Ok(())
            }

            /// Applies receipts matched to their parts, in `tx`: locks their messages, moves
            /// the parts on, lets `decide` change each message's status and writes the events.
            /// Stored receipts among them are deleted. Returns the status changes written and
            /// the workflow messages among them.
            async fn apply_matched(
                tx: &mut sqlx::Transaction<'_, $db>,
                mut matched: Vec<Matched>,
                now: i64,
                decide: &Decide,
            ) -> StoreResult<(usize, Vec<String>)> {
                if matched.is_empty() {
                    return Ok((0, Vec::new()));
                }
                // Lock messages in one order on every node, so two reconcilers cannot deadlock.
                matched.sort_by(|a, b| a.message_id.cmp(&b.message_id).then(a.seq.cmp(&b.seq)));
                let mut mids: Vec<&str> = matched.iter().map(|m| m.message_id.as_str()).collect();
                mids.dedup();
                let mut heads = Vec::new();
                for r in bulk::chunks(mids.len()) {
                    let text = format!(
                        "SELECT id, account_id, channel, status, workflow_id, parts FROM messages WHERE id IN ({}) \
                         ORDER BY id{}",
                        bulk::list(Self::PH, r.len(), 1),
                        $lock
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(text));
                    for id in &mids[r] {
                        q = q.bind(*id);
                    }
                    heads.extend(q.fetch_all(&mut **tx).await.map_err(backend)?);
                }
                // Each part's receipts applied in the order they came, as one update: a
                // final state is never replaced by a later, non-final one.
                let effective = fold_receipts(matched.iter().map(|m| Receipt {
                    id: m.seq,
                    route: &m.route,
                    provider_id: &m.provider_id,
                    state: &m.state,
                    error_code: m.error_code.as_deref(),
                }));
                // The parts it changed come back: a message of one part whose part changed
                // needs no second read of its parts below.
                let mut parts: std::collections::HashMap<String, Vec<PartRow>> =
                    std::collections::HashMap::new();
                for r in bulk::chunks(effective.len()) {
                    let text = format!(
                        "UPDATE message_parts SET state = v.column3, error_code = v.column4, updated_at_ms = {} \
                         FROM (VALUES {}) AS v WHERE message_parts.route = v.column1 \
                         AND message_parts.provider_id = v.column2 \
                         AND message_parts.state NOT IN ('delivered', 'failed', 'expired', 'rejected') \
                         RETURNING message_parts.message_id, message_parts.part_index, message_parts.route, \
                         message_parts.provider_id, message_parts.state, message_parts.error_code",
                        Self::PH.at(1),
                        bulk::values(Self::PH, r.len(), 4, 2, "")
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(text)).bind(now);
                    for (route, pid, state, code) in &effective[r] {
                        q = q.bind(*route).bind(*pid).bind(*state).bind(*code);
                    }
                    for row in q.fetch_all(&mut **tx).await.map_err(backend)? {
                        let p = Self::part_row(&row)?;
                        parts.entry(p.message_id.clone()).or_default().push(p);
                    }
                }
                let stored: Vec<i64> = matched.iter().filter_map(|m| m.stored_id).collect();
                Self::delete_receipts(tx, &stored).await?;
                let live: Vec<String> = heads
                    .iter()
                    .map(|h| h.try_get::<String, _>("id").map_err(backend))
                    .collect::<StoreResult<_>>()?;
                // Every other message's parts are read whole (the ones updated above again, so
                // that none is counted twice).
                let mut unread = Vec::new();
                for (h, mid) in heads.iter().zip(&live) {
                    let count: i64 = h.try_get("parts").map_err(backend)?;
                    let known = parts.get(mid).map_or(0, Vec::len);
                    if count != 1 || known != 1 {
                        parts.remove(mid);
                        unread.push(mid);
                    }
                }
                for r in bulk::chunks(unread.len()) {
                    let text = format!(
                        "SELECT message_id, part_index, route, provider_id, state, error_code FROM message_parts \
                         WHERE message_id IN ({}) ORDER BY message_id, part_index",
                        bulk::list(Self::PH, r.len(), 1)
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(text));
                    for id in &unread[r] {
                        q = q.bind(*id);
                    }
                    for row in q.fetch_all(&mut **tx).await.map_err(backend)? {
                        let p = Self::part_row(&row)?;
                        parts.entry(p.message_id.clone()).or_default().push(p);
                    }
                }
                // Decide each message from all its parts; apply the changes set-based, only
                // to messages still `submitted`.
                let mut changes = Vec::new();
                for (h, mid) in heads.iter().zip(&live) {
                    let target = ReceiptTarget {
                        message_id: mid.clone(),
                        account_id: h.try_get("account_id").map_err(backend)?,
                        channel: h.try_get("channel").map_err(backend)?,
                        status: h.try_get("status").map_err(backend)?,
                        parts: parts.remove(mid).unwrap_or_default(),
                    };
                    if let Some(change) = decide(&target, now) {
                        let workflow: Option<String> =
                            h.try_get("workflow_id").map_err(backend)?;
                        changes.push((mid, change, workflow.is_some()));
                    }
                }
                let mut events = Vec::new();
                let mut changed = Vec::new();
                let mut applied = std::collections::HashSet::new();
                for r in bulk::chunks(changes.len()) {
                    let text = format!(
                        "UPDATE messages SET status = v.column2, error_code = v.column3, final_at_ms = {}, \
                         updated_at_ms = {} FROM (VALUES {}) AS v WHERE messages.id = v.column1 \
                         AND messages.status = 'submitted' RETURNING messages.id",
                        Self::PH.at(1),
                        Self::PH.at(2),
                        bulk::values(Self::PH, r.len(), 3, 3, "")
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(text)).bind(now).bind(now);
                    for (mid, change, _) in &changes[r] {
                        q = q.bind(*mid).bind(&change.status).bind(&change.error_code);
                    }
                    for row in q.fetch_all(&mut **tx).await.map_err(backend)? {
                        applied.insert(row.try_get::<String, _>(0).map_err(backend)?);
                    }
                }
                for (mid, change, workflow) in changes {
                    if applied.contains(mid) {
                        events.push(change.event);
                        if workflow {
                            changed.push(mid.clone());
                        }
                    }
                }
                Self::push_events(tx, &events).await?;
                Ok((events.len(), changed))
            }

            async fn delete_receipts(
                tx: &mut sqlx::Transaction<'_, $db>,
                ids: &[i64],
            ) -> StoreResult<()> {
                for r in bulk::chunks(ids.len()) {
                    let text = format!(
                        "DELETE FROM channel_receipts WHERE id IN ({})",
                        bulk::list(Self::PH, r.len(), 1)
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(text));
                    for id in &ids[r] {
                        q = q.bind(*id);
                    }
                    q.execute(&mut **tx).await.map_err(backend)?;
                }
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl MessageStore for $store {
            fn background_batch_max(&self) -> Option<usize> {
                $background_max
            }

            fn settle_together(&self) -> bool {
                // One writer is what makes short batches worth asking for.
                $background_max.is_some()
            }

            async fn insert_template(&self, t: &TemplateRow) -> StoreResult<()> {
                sqlx::query(sql::INSERT_TEMPLATE)
                    .bind(&t.id)
                    .bind(&t.account_id)
                    .bind(&t.name)
                    .bind(&t.channel)
                    .bind(&t.locale)
                    .bind(&t.subject)
                    .bind(&t.body)
                    .bind(&t.html)
                    .bind(&t.status)
                    .bind(&t.review_note)
                    .bind(&t.created_by)
                    .bind(&t.reviewed_by)
                    .bind(t.created_at_ms)
                    .bind(t.reviewed_at_ms)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(())
            }

            async fn get_template(&self, id: &str) -> StoreResult<Option<TemplateRow>> {
                let row = sqlx::query(sql::GET_TEMPLATE)
                    .bind(id)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| Self::template_row(&r)).transpose()
            }

            async fn list_templates(
                &self,
                account_id: &str,
                status: Option<&str>,
                page: &PageRequest,
            ) -> StoreResult<Vec<TemplateRow>> {
                let rows = sqlx::query(sql::LIST_TEMPLATES)
                    .bind(account_id)
                    .bind(status)
                    .bind(page.after.as_deref().unwrap_or(""))
                    .bind(page.fetch_limit())
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(Self::template_row).collect()
            }

            async fn review_template(
                &self,
                t: &TemplateRow,
                event: &OutboxEvent,
            ) -> StoreResult<bool> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                let done = sqlx::query(sql::REVIEW_TEMPLATE)
                    .bind(&t.status)
                    .bind(&t.review_note)
                    .bind(&t.reviewed_by)
                    .bind(t.reviewed_at_ms)
                    .bind(&t.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                Self::push_events(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(backend)?;
                Ok(true)
            }

            async fn delete_template(&self, id: &str) -> StoreResult<bool> {
                let r = sqlx::query(sql::DELETE_TEMPLATE)
                    .bind(id)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(r.rows_affected() > 0)
            }

            async fn get_policy(&self, account_id: &str) -> StoreResult<Option<String>> {
                let row = sqlx::query(sql::GET_POLICY)
                    .bind(account_id)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| r.try_get("policy").map_err(backend))
                    .transpose()
            }

            async fn put_policy(
                &self,
                account_id: &str,
                policy: &str,
                at_ms: i64,
            ) -> StoreResult<()> {
                sqlx::query(sql::PUT_POLICY)
                    .bind(account_id)
                    .bind(policy)
                    .bind(at_ms)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(())
            }

            async fn has_exchanged(
                &self,
                account_id: &str,
                channel: &str,
                peer_bidx: &[u8],
            ) -> StoreResult<bool> {
                let row = sqlx::query(sql::HAS_EXCHANGED)
                    .bind(account_id)
                    .bind(channel)
                    .bind(peer_bidx)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                Ok(row.is_some())
            }

            async fn inbound_from(
                &self,
                account_id: &str,
                channel: &str,
                sender_id: &str,
                peer_bidx: &[u8],
                since_ms: i64,
                limit: i64,
            ) -> StoreResult<Vec<MessageRow>> {
                let rows = sqlx::query(sql::INBOUND_FROM)
                    .bind(account_id)
                    .bind(channel)
                    .bind(peer_bidx)
                    .bind(sender_id)
                    .bind(since_ms)
                    .bind(limit)
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(Self::message_row).collect()
            }

            async fn upsert_consents(
                &self,
                rows: &[ConsentRow],
                events: &[OutboxEvent],
            ) -> StoreResult<()> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                for c in rows {
                    sqlx::query(sql::UPSERT_CONSENT)
                        .bind(&c.account_id)
                        .bind(&c.channel)
                        .bind(&c.address_bidx)
                        .bind(&c.purpose)
                        .bind(&c.status)
                        .bind(&c.method)
                        .bind(&c.source)
                        .bind(c.updated_at_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                }
                Self::push_events(&mut tx, events).await?;
                tx.commit().await.map_err(backend)
            }

            async fn consents_for(
                &self,
                account_id: &str,
                channel: &str,
                address_bidx: &[u8],
            ) -> StoreResult<Vec<ConsentRow>> {
                self.read_consents(account_id, channel, address_bidx).await
            }

            async fn insert_sender(&self, row: &SenderRow) -> StoreResult<()> {
                sqlx::query(sql::INSERT_SENDER)
                    .bind(&row.id)
                    .bind(&row.account_id)
                    .bind(&row.channel)
                    .bind(&row.address)
                    .bind(row.created_at_ms)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(())
            }

            async fn get_sender(&self, id: &str) -> StoreResult<Option<SenderRow>> {
                let row = sqlx::query(sql::GET_SENDER)
                    .bind(id)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| Self::sender_row(&r)).transpose()
            }

            async fn sender_by_address(
                &self,
                channel: &str,
                address: &str,
            ) -> StoreResult<Option<SenderRow>> {
                let row = sqlx::query(sql::SENDER_BY_ADDRESS)
                    .bind(channel)
                    .bind(address)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| Self::sender_row(&r)).transpose()
            }

            async fn list_senders(
                &self,
                account_id: &str,
                page: &PageRequest,
            ) -> StoreResult<Vec<SenderRow>> {
                let rows = sqlx::query(sql::LIST_SENDERS)
                    .bind(account_id)
                    .bind(page.after.as_deref().unwrap_or(""))
                    .bind(page.fetch_limit())
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(Self::sender_row).collect()
            }

            async fn delete_sender(&self, id: &str) -> StoreResult<bool> {
                let r = sqlx::query(sql::DELETE_SENDER)
                    .bind(id)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(r.rows_affected() > 0)
            }

            async fn insert_messages(
                &self,
                rows: &[(MessageRow, Option<OutboxEvent>)],
            ) -> StoreResult<()> {
                let mut wc = self.wc_as("messages").await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                for r in bulk::chunks(rows.len()) {
                    let text = format!(
                        "INSERT INTO messages ({}, lease_until_ms, due_at_ms) VALUES {}",
                        sql::MESSAGE_COLS,
                        bulk::values(Self::PH, r.len(), 29, 1, "")
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(text));
                    for (m, _) in &rows[r] {
                        q = q
                            .bind(&m.id)
                            .bind(&m.account_id)
                            .bind(&m.direction)
                            .bind(&m.channel)
                            .bind(&m.status)
                            .bind(&m.sender_id)
                            .bind(&m.contact_id)
                            .bind(&m.to_ct)
                            .bind(&m.from_ct)
                            .bind(&m.content_ct)
                            .bind(&m.client_ref_ct)
                            .bind(&m.client_ref_bidx)
                            .bind(m.want_receipt)
                            .bind(m.parts)
                            .bind(&m.route)
                            .bind(&m.error_code)
                            .bind(&m.error_reason)
                            .bind(m.attempts)
                            .bind(m.next_attempt_at_ms)
                            .bind(m.expires_at_ms)
                            .bind(&m.created_by)
                            .bind(m.created_at_ms)
                            .bind(m.updated_at_ms)
                            .bind(m.submitted_at_ms)
                            .bind(m.final_at_ms)
                            .bind(&m.peer_bidx)
                            .bind(&m.workflow_id)
                            .bind(m.lease_until_ms)
                            // In the sending queue while `accepted` (see migration 0014).
                            .bind((m.status == "accepted").then_some(m.next_attempt_at_ms));
                    }
                    q.execute(&mut *tx).await.map_err(backend)?;
                }
                let events: Vec<OutboxEvent> =
                    rows.iter().filter_map(|(_, e)| e.clone()).collect();
                Self::push_events(&mut tx, &events).await?;
                tx.commit().await.map_err(backend)
            }

            async fn get_message(&self, id: &str) -> StoreResult<Option<MessageRow>> {
                let row = sqlx::query(sql::GET_MESSAGE)
                    .bind(id)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| Self::message_row(&r)).transpose()
            }

            async fn list_messages(
                &self,
                account_id: &str,
                f: &MessageFilter,
                page: &PageRequest,
            ) -> StoreResult<Vec<MessageRow>> {
                let rows = sqlx::query(sql::LIST_MESSAGES)
                    .bind(account_id)
                    .bind(&f.status)
                    .bind(&f.channel)
                    .bind(&f.direction)
                    .bind(&f.client_ref_bidx)
                    .bind(page.after.as_deref().unwrap_or(""))
                    .bind(page.fetch_limit())
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(Self::message_row).collect()
            }

            async fn claim_due(
                &self,
                now_ms: i64,
                lease_until_ms: i64,
                limit: i64,
            ) -> StoreResult<Vec<MessageRow>> {
                let rows = sqlx::query($claim)
                    .bind(lease_until_ms)
                    .bind(now_ms)
                    .bind(limit)
                    .fetch_all(&mut *self.wc_bg_as("claims").await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(Self::message_row).collect()
            }

            async fn settle(
                &self,
                outcomes: &[Outcome],
                receipts: &[ReceiptRow],
                decide: &Decide,
            ) -> StoreResult<Settled> {
                // No two of these transactions (on any nodes) can wait for each other: the rows
                // an outcome locks are messages still `accepted` and leased to this node, which
                // no receipt elsewhere can match yet (a receipt finds a message only through
                // parts already committed); the messages receipts lock are locked in id order
                // (see `apply_matched`), here as in `retry_receipts`.
                let mut wc = self.wc_bg_as("settle").await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                Self::write_outcomes(&mut tx, outcomes).await?;
                let mut settled = Settled::default();
                if !receipts.is_empty() {
                    let now = haven_platform::clock::now_ms();
                    // Which parts are recorded: one probe of the (route, provider_id) index per
                    // receipt, parts written just above included.
                    let mut found: std::collections::HashMap<(String, String), String> =
                        std::collections::HashMap::new();
                    for r in bulk::chunks(receipts.len()) {
                        let text = format!(
                            "SELECT p.route, p.provider_id, p.message_id FROM (VALUES {}) AS v \
                             JOIN message_parts p ON p.route = v.column1 AND p.provider_id = v.column2",
                            bulk::values(Self::PH, r.len(), 2, 1, "")
                        );
                        let mut q = sqlx::query(sqlx::AssertSqlSafe(text));
                        for row in &receipts[r] {
                            q = q.bind(&row.route).bind(&row.provider_id);
                        }
                        for row in q.fetch_all(&mut *tx).await.map_err(backend)? {
                            found.insert(
                                (
                                    row.try_get("route").map_err(backend)?,
                                    row.try_get("provider_id").map_err(backend)?,
                                ),
                                row.try_get("message_id").map_err(backend)?,
                            );
                        }
                    }
                    let mut matched = Vec::new();
                    let mut waiting = Vec::new();
                    for (i, row) in receipts.iter().enumerate() {
                        match found.get(&(row.route.clone(), row.provider_id.clone())) {
                            Some(mid) => matched.push(Matched {
                                // After every stored receipt: these came last.
                                seq: ARRIVING_SEQ.saturating_add(i64::try_from(i).unwrap_or(0)),
                                stored_id: None,
                                state: row.state.clone(),
                                error_code: row.error_code.clone(),
                                message_id: mid.clone(),
                                route: row.route.clone(),
                                provider_id: row.provider_id.clone(),
                            }),
                            None => waiting.push(row),
                        }
                    }
                    let next_try = now.saturating_add(receipt_retry_after_ms(0));
                    for r in bulk::chunks(waiting.len()) {
                        let text = format!(
                            "INSERT INTO channel_receipts (route, provider_id, state, error_code, at_ms, \
                             received_at_ms, next_try_ms, tries) VALUES {}",
                            bulk::values(Self::PH, r.len(), 7, 1, ", 0")
                        );
                        let mut q = sqlx::query(sqlx::AssertSqlSafe(text));
                        for row in &waiting[r] {
                            q = q
                                .bind(&row.route)
                                .bind(&row.provider_id)
                                .bind(&row.state)
                                .bind(&row.error_code)
                                .bind(row.at_ms)
                                .bind(row.received_at_ms)
                                .bind(next_try);
                        }
                        q.execute(&mut *tx).await.map_err(backend)?;
                    }
                    settled.applied = matched.len();
                    settled.waiting = waiting.len();
                    let (events, changed) = Self::apply_matched(&mut tx, matched, now, decide).await?;
                    settled.events = events;
                    settled.changed = changed;
                }
                tx.commit().await.map_err(backend)?;
                Ok(settled)
            }

            async fn retry_receipts(
                &self,
                limit: i64,
                now_ms: i64,
                drop_before_ms: i64,
                decide: &Decide,
            ) -> StoreResult<Settled> {
                // Nearly always none is due: a read says so without taking the writer.
                let due: Option<i64> = sqlx::query_scalar(sql::RECEIPT_DUE)
                    .bind(now_ms)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                if due.is_none() {
                    return Ok(Settled::default());
                }
                let mut wc = self.wc_bg_as("receipts").await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                let rows = sqlx::query($due_receipts)
                    .bind(now_ms)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(backend)?;
                let mut matched = Vec::new();
                let mut dropped = Vec::new();
                let mut later: Vec<(i64, i64, i64)> = Vec::new();
                for r in &rows {
                    let id: i64 = r.try_get("id").map_err(backend)?;
                    let message_id: Option<String> = r.try_get("message_id").map_err(backend)?;
                    match message_id {
                        Some(message_id) => matched.push(Matched {
                            seq: id,
                            stored_id: Some(id),
                            state: r.try_get("state").map_err(backend)?,
                            error_code: r.try_get("error_code").map_err(backend)?,
                            message_id,
                            route: r.try_get("route").map_err(backend)?,
                            provider_id: r.try_get("provider_id").map_err(backend)?,
                        }),
                        None => {
                            let received: i64 = r.try_get("received_at_ms").map_err(backend)?;
                            let tries: i64 = r.try_get("tries").map_err(backend)?;
                            if received < drop_before_ms {
                                dropped.push(id);
                            } else {
                                let tries = tries.saturating_add(1);
                                later.push((id, tries, now_ms.saturating_add(receipt_retry_after_ms(tries))));
                            }
                        }
                    }
                }
                Self::delete_receipts(&mut tx, &dropped).await?;
                for r in bulk::chunks(later.len()) {
                    let text = format!(
                        "UPDATE channel_receipts SET tries = v.column2, next_try_ms = v.column3 \
                         FROM (VALUES {}) AS v WHERE channel_receipts.id = v.column1",
                        bulk::values(Self::PH, r.len(), 3, 1, "")
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(text));
                    for (id, tries, next) in &later[r] {
                        q = q.bind(*id).bind(*tries).bind(*next);
                    }
                    q.execute(&mut *tx).await.map_err(backend)?;
                }
                let mut settled = Settled {
                    applied: matched.len(),
                    retried: later.len(),
                    dropped: dropped.len(),
                    ..Settled::default()
                };
                let (events, changed) = Self::apply_matched(&mut tx, matched, now_ms, decide).await?;
                settled.events = events;
                settled.changed = changed;
                tx.commit().await.map_err(backend)?;
                Ok(settled)
            }
        }
    };
}

impl_message_store!(
    SqliteStore,
    sqlx::Sqlite,
    sqlx::sqlite::SqliteRow,
    sql::CLAIM_MESSAGES_SQLITE,
    sql::DUE_RECEIPTS_SQLITE,
    "",
    // A few milliseconds on the one writer (see `SqliteStore`).
    Some(128)
);
impl_message_store!(
    PgStore,
    sqlx::Postgres,
    sqlx::postgres::PgRow,
    sql::CLAIM_MESSAGES_PG,
    sql::DUE_RECEIPTS_PG,
    " FOR UPDATE",
    None::<usize>
);

impl SqliteStore {
    /// Every send asks: on the caller's thread (see `inline`).
    async fn read_consents(
        &self,
        account_id: &str,
        channel: &str,
        address_bidx: &[u8],
    ) -> StoreResult<Vec<ConsentRow>> {
        self.inline.read(|c| {
            c.prepare_cached(sql::CONSENTS_FOR)?
                .query_map(rusqlite::params![account_id, channel, address_bidx], |r| {
                    Ok(ConsentRow {
                        account_id: r.get("account_id")?,
                        channel: r.get("channel")?,
                        address_bidx: r.get("address_bidx")?,
                        purpose: r.get("purpose")?,
                        status: r.get("status")?,
                        method: r.get("method")?,
                        source: r.get("source")?,
                        updated_at_ms: r.get("updated_at_ms")?,
                    })
                })?
                .collect()
        })
    }
}

impl PgStore {
    async fn read_consents(
        &self,
        account_id: &str,
        channel: &str,
        address_bidx: &[u8],
    ) -> StoreResult<Vec<ConsentRow>> {
        let rows = crate::pgpoint::point_read!(self.point, |c| {
            sqlx::query(sql::CONSENTS_FOR)
                .bind(account_id)
                .bind(channel)
                .bind(address_bidx)
                .fetch_all(c)
        })?;
        rows.iter()
            .map(|r| {
                Ok(ConsentRow {
                    account_id: r.try_get("account_id").map_err(backend)?,
                    channel: r.try_get("channel").map_err(backend)?,
                    address_bidx: r.try_get("address_bidx").map_err(backend)?,
                    purpose: r.try_get("purpose").map_err(backend)?,
                    status: r.try_get("status").map_err(backend)?,
                    method: r.try_get("method").map_err(backend)?,
                    source: r.try_get("source").map_err(backend)?,
                    updated_at_ms: r.try_get("updated_at_ms").map_err(backend)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r<'a>(id: i64, pid: &'a str, state: &'a str) -> Receipt<'a> {
        Receipt {
            id,
            route: "smsc",
            provider_id: pid,
            state,
            error_code: (state == "failed").then_some("088"),
        }
    }

    #[test]
    fn receipts_fold_in_arrival_order_and_finals_stay() {
        let got = fold_receipts(
            [
                r(4, "b", "enroute"),
                r(1, "a", "enroute"),
                r(3, "a", "enroute"),
                r(2, "a", "delivered"),
                r(5, "b", "failed"),
                r(6, "c", "enroute"),
            ]
            .into_iter(),
        );
        assert_eq!(
            got,
            vec![
                // enroute, then delivered: a later enroute does not undo it.
                ("smsc", "a", "delivered", None),
                ("smsc", "b", "failed", Some("088")),
                ("smsc", "c", "enroute", None),
            ]
        );
    }
}
