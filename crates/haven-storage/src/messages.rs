//! The messaging storage, for both backends. Message rows are the delivery queue.

use crate::pgpoint::{self, Gather, PointReaders};
use crate::settle::{self, SqlxTx};
use crate::writer::Class;
use crate::{PgStore, SqliteStore, backend, bulk, direct, sql};
use haven_messaging::store::{
    ConsentRow, Decide, MessageFilter, MessageRow, MessageStore, Outcome, ReceiptRow, SenderRow,
    Settled, TemplateRow, TopUpRows, receipt_retry_after_ms,
};
use haven_platform::events::OutboxEvent;
use haven_platform::page::PageRequest;
use haven_platform::store::StoreResult;
use sqlx::Row;
use std::sync::Arc;

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
        }

        #[async_trait::async_trait]
        impl MessageStore for $store {
            fn background_batch_max(&self) -> Option<usize> {
                $background_max
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
                rows: Vec<(MessageRow, Option<OutboxEvent>)>,
                more: TopUpRows,
            ) -> StoreResult<()> {
                self.insert_message_rows(rows, more).await
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
                outcomes: Vec<Outcome>,
                receipts: Vec<ReceiptRow>,
                decide: &'static Decide,
            ) -> StoreResult<Settled> {
                self.settle_sends(outcomes, receipts, decide).await
            }

            async fn retry_receipts(
                &self,
                limit: i64,
                now_ms: i64,
                drop_before_ms: i64,
                decide: &'static Decide,
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
                        Some(message_id) => matched.push(settle::Matched {
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
                                later.push((
                                    id,
                                    tries,
                                    now_ms.saturating_add(receipt_retry_after_ms(tries)),
                                ));
                            }
                        }
                    }
                }
                settle::delete_receipts(&mut SqlxTx(&mut tx), &dropped).await?;
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
                let (events, changed) =
                    settle::apply_matched(&mut SqlxTx(&mut tx), matched, now_ms, decide).await?;
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

impl PgStore {
    /// No two of these transactions (on any nodes) can wait for each other: the rows an outcome
    /// locks are messages still `accepted` and leased to this node, which no receipt elsewhere
    /// can match yet (a receipt finds a message only through parts already committed); the
    /// messages receipts lock are locked in id order (see `settle::apply_matched`), here as in
    /// `retry_receipts`.
    async fn settle_sends(
        &self,
        outcomes: Vec<Outcome>,
        receipts: Vec<ReceiptRow>,
        decide: &'static Decide,
    ) -> StoreResult<Settled> {
        let mut wc = self.wc_bg_as("settle").await?;
        let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
        let settled = settle::settle(&mut SqlxTx(&mut tx), &outcomes, &receipts, decide).await?;
        tx.commit().await.map_err(backend)?;
        Ok(settled)
    }

    async fn insert_message_rows(
        &self,
        mut rows: Vec<(MessageRow, Option<OutboxEvent>)>,
        more: TopUpRows,
    ) -> StoreResult<()> {
        let mut wc = self.wc_as("messages").await?;
        // The requests that are ready to run now are mostly sends on their way to this queue:
        // one pass of the scheduler lets them queue their rows, which the top-up then takes
        // into this statement instead of the next one (in the SMS benchmark, batches of about
        // 16 rows instead of 11, so a third fewer commits).
        tokio::task::yield_now().await;
        rows.extend(more());
        if rows.iter().all(|(_, e)| e.is_none()) {
            // One statement is atomic by itself: a batch without events (acceptance raises
            // none) is one round trip, not BEGIN, INSERT and COMMIT.
            return insert_messages_pg(&mut wc, &rows).await;
        }
        let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
        insert_messages_pg(&mut tx, &rows).await?;
        let events: Vec<OutboxEvent> = rows.into_iter().filter_map(|(_, e)| e).collect();
        Self::push_events(&mut tx, &events).await?;
        tx.commit().await.map_err(backend)
    }
}

/// Inserts `rows` into `messages` in one statement whatever their number: each column bound
/// as one array and unnested, so that the statement's text (and its prepared plan) is the same
/// for every batch, where a `VALUES` list would need one text per row count.
async fn insert_messages_pg(
    conn: &mut sqlx::PgConnection,
    rows: &[(MessageRow, Option<OutboxEvent>)],
) -> StoreResult<()> {
    fn col<'a, T>(
        rows: &'a [(MessageRow, Option<OutboxEvent>)],
        f: impl Fn(&'a MessageRow) -> T,
    ) -> Vec<T> {
        rows.iter().map(|(m, _)| f(m)).collect()
    }
    sqlx::query(sql::INSERT_MESSAGES_PG)
        .bind(col(rows, |m| m.id.as_str()))
        .bind(col(rows, |m| m.account_id.as_str()))
        .bind(col(rows, |m| m.direction.as_str()))
        .bind(col(rows, |m| m.channel.as_str()))
        .bind(col(rows, |m| m.status.as_str()))
        .bind(col(rows, |m| m.sender_id.as_deref()))
        .bind(col(rows, |m| m.contact_id.as_deref()))
        .bind(col(rows, |m| m.to_ct.as_slice()))
        .bind(col(rows, |m| m.from_ct.as_slice()))
        .bind(col(rows, |m| m.content_ct.as_slice()))
        .bind(col(rows, |m| m.client_ref_ct.as_deref()))
        .bind(col(rows, |m| m.client_ref_bidx.as_deref()))
        .bind(col(rows, |m| m.want_receipt))
        .bind(col(rows, |m| m.parts))
        .bind(col(rows, |m| m.route.as_deref()))
        .bind(col(rows, |m| m.error_code.as_deref()))
        .bind(col(rows, |m| m.error_reason.as_deref()))
        .bind(col(rows, |m| m.attempts))
        .bind(col(rows, |m| m.next_attempt_at_ms))
        .bind(col(rows, |m| m.expires_at_ms))
        .bind(col(rows, |m| m.created_by.as_deref()))
        .bind(col(rows, |m| m.created_at_ms))
        .bind(col(rows, |m| m.updated_at_ms))
        .bind(col(rows, |m| m.submitted_at_ms))
        .bind(col(rows, |m| m.final_at_ms))
        .bind(col(rows, |m| m.peer_bidx.as_deref()))
        .bind(col(rows, |m| m.workflow_id.as_deref()))
        .bind(col(rows, |m| m.lease_until_ms))
        // In the sending queue while `accepted` (see migration 0014).
        .bind(col(rows, queue_due))
        .execute(conn)
        .await
        .map_err(backend)?;
    Ok(())
}

/// When a message may next be claimed from the sending queue (`due_at_ms`, see migration
/// 0014): while `accepted`, its next attempt or the end of the lease it was inserted with,
/// whichever is later; out of the queue otherwise. A message this node leased to itself on
/// accepting it (handed straight to its sending loop) is not due until that lease runs out, so
/// the claim's index scan (`due_at_ms <= now`) does not walk the messages in flight.
fn queue_due(m: &MessageRow) -> Option<i64> {
    (m.status == "accepted").then_some(m.next_attempt_at_ms.max(m.lease_until_ms))
}

impl SqliteStore {
    /// The whole settle in one hand-off to the writer thread (see `direct`), a background
    /// transaction there.
    async fn settle_sends(
        &self,
        outcomes: Vec<Outcome>,
        receipts: Vec<ReceiptRow>,
        decide: &'static Decide,
    ) -> StoreResult<Settled> {
        self.direct
            .transaction(Class::Background, "settle", move |conn| {
                settle::run_ready(settle::settle(
                    &mut settle::Direct(conn),
                    &outcomes,
                    &receipts,
                    decide,
                ))
            })
            .await
    }

    /// One group commit of accepted messages: the whole transaction in one hand-off to the
    /// writer thread (see `direct`), a foreground transaction there.
    async fn insert_message_rows(
        &self,
        mut rows: Vec<(MessageRow, Option<OutboxEvent>)>,
        more: TopUpRows,
    ) -> StoreResult<()> {
        self.direct
            .transaction(Class::Foreground, "messages", move |tx| {
                use rusqlite::types::ToSql;
                // What was accepted while this waited for the writer goes in the same commit.
                rows.extend(more());
                for r in bulk::chunks(rows.len()) {
                    let text = format!(
                        "INSERT INTO messages ({}, lease_until_ms, due_at_ms) VALUES {}",
                        sql::MESSAGE_COLS,
                        bulk::values(Self::PH, r.len(), 29, 1, "")
                    );
                    let due: Vec<Option<i64>> =
                        rows[r.clone()].iter().map(|(m, _)| queue_due(m)).collect();
                    let mut params: Vec<&dyn ToSql> = Vec::with_capacity(r.len() * 29);
                    for ((m, _), due) in rows[r].iter().zip(&due) {
                        params.extend_from_slice(&[
                            &m.id as &dyn ToSql,
                            &m.account_id,
                            &m.direction,
                            &m.channel,
                            &m.status,
                            &m.sender_id,
                            &m.contact_id,
                            &m.to_ct,
                            &m.from_ct,
                            &m.content_ct,
                            &m.client_ref_ct,
                            &m.client_ref_bidx,
                            &m.want_receipt,
                            &m.parts,
                            &m.route,
                            &m.error_code,
                            &m.error_reason,
                            &m.attempts,
                            &m.next_attempt_at_ms,
                            &m.expires_at_ms,
                            &m.created_by,
                            &m.created_at_ms,
                            &m.updated_at_ms,
                            &m.submitted_at_ms,
                            &m.final_at_ms,
                            &m.peer_bidx,
                            &m.workflow_id,
                            &m.lease_until_ms,
                            // In the sending queue while `accepted` (see migration 0014).
                            due,
                        ]);
                    }
                    tx.prepare_cached(&text)
                        .and_then(|mut st| st.execute(params.as_slice()))
                        .map_err(direct::backend)?;
                }
                let events: Vec<OutboxEvent> = rows.into_iter().filter_map(|(_, e)| e).collect();
                settle::run_ready(settle::push_events(&mut settle::Direct(tx), &events))
            })
            .await
    }
}

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
    /// A recipient's consent records, read with the other sends' in one statement.
    async fn read_consents(
        &self,
        account_id: &str,
        channel: &str,
        address_bidx: &[u8],
    ) -> StoreResult<Vec<ConsentRow>> {
        self.gathered
            .consents
            .get((
                account_id.to_owned(),
                channel.to_owned(),
                address_bidx.to_vec(),
            ))
            .await
    }
}

/// A recipient: account, channel, address blind index.
pub(crate) type ConsentKey = (String, String, Vec<u8>);

/// Consent records for many recipients in one statement, each recipient's in purpose order
/// (as `CONSENTS_FOR` gives them).
pub(crate) fn gather_consents(
    point: Arc<PointReaders>,
) -> Arc<Gather<ConsentKey, Vec<ConsentRow>>> {
    Gather::new(
        "consents",
        Box::new(move |keys: Vec<ConsentKey>| {
            let point = Arc::clone(&point);
            Box::pin(async move {
                let (unique, slot) = pgpoint::unique_keys(&keys);
                let mut accounts = Vec::with_capacity(unique.len());
                let mut channels = Vec::with_capacity(unique.len());
                let mut bidxs = Vec::with_capacity(unique.len());
                for (a, c, b) in unique.iter().cloned() {
                    accounts.push(a);
                    channels.push(c);
                    bidxs.push(b);
                }
                let rows = pgpoint::point_read!(*point, |c| {
                    sqlx::query(sql::CONSENTS_GATHERED)
                        .bind(&accounts)
                        .bind(&channels)
                        .bind(&bidxs)
                        .fetch_all(c)
                })?;
                let mut found: Vec<Vec<ConsentRow>> = vec![Vec::new(); unique.len()];
                for r in &rows {
                    let i: i64 = r.try_get("i").map_err(backend)?;
                    let row = ConsentRow {
                        account_id: r.try_get("account_id").map_err(backend)?,
                        channel: r.try_get("channel").map_err(backend)?,
                        address_bidx: r.try_get("address_bidx").map_err(backend)?,
                        purpose: r.try_get("purpose").map_err(backend)?,
                        status: r.try_get("status").map_err(backend)?,
                        method: r.try_get("method").map_err(backend)?,
                        source: r.try_get("source").map_err(backend)?,
                        updated_at_ms: r.try_get("updated_at_ms").map_err(backend)?,
                    };
                    pgpoint::place(&mut found, i, "consents")?.push(row);
                }
                pgpoint::answers(&found, slot)
            })
        }),
    )
}
