//! The dispatch storage, for both backends. A running dispatch row is its own durable timer.

use crate::{PgStore, SqliteStore, backend, sql};
use haven_dispatch::store::{Advance, DispatchRow, DispatchStore, StepRow};
use haven_platform::events::OutboxEvent;
use haven_platform::page::PageRequest;
use haven_platform::store::StoreResult;
use sqlx::Row;

macro_rules! impl_dispatch_store {
    ($store:ty, $row:ty, $claim:expr, $nudge:expr) => {
        impl $store {
            fn dispatch_row(r: &$row) -> StoreResult<DispatchRow> {
                Ok(DispatchRow {
                    id: r.try_get("id").map_err(backend)?,
                    account_id: r.try_get("account_id").map_err(backend)?,
                    status: r.try_get("status").map_err(backend)?,
                    contact_id: r.try_get("contact_id").map_err(backend)?,
                    steps_ct: r.try_get("steps_ct").map_err(backend)?,
                    step_count: r.try_get("step_count").map_err(backend)?,
                    current_step: r.try_get("current_step").map_err(backend)?,
                    current_message_id: r.try_get("current_message_id").map_err(backend)?,
                    step_started_at_ms: r.try_get("step_started_at_ms").map_err(backend)?,
                    step_deadline_ms: r.try_get("step_deadline_ms").map_err(backend)?,
                    watch_channel: r.try_get("watch_channel").map_err(backend)?,
                    watch_sender: r.try_get("watch_sender").map_err(backend)?,
                    watch_peer_bidx: r.try_get("watch_peer_bidx").map_err(backend)?,
                    wake_at_ms: r.try_get("wake_at_ms").map_err(backend)?,
                    outcome: r.try_get("outcome").map_err(backend)?,
                    created_by: r.try_get("created_by").map_err(backend)?,
                    created_at_ms: r.try_get("created_at_ms").map_err(backend)?,
                    updated_at_ms: r.try_get("updated_at_ms").map_err(backend)?,
                    final_at_ms: r.try_get("final_at_ms").map_err(backend)?,
                })
            }

            fn step_row(r: &$row) -> StoreResult<StepRow> {
                Ok(StepRow {
                    dispatch_id: r.try_get("dispatch_id").map_err(backend)?,
                    step_index: r.try_get("step_index").map_err(backend)?,
                    channel: r.try_get("channel").map_err(backend)?,
                    message_id: r.try_get("message_id").map_err(backend)?,
                    status: r.try_get("status").map_err(backend)?,
                    reason: r.try_get("reason").map_err(backend)?,
                    started_at_ms: r.try_get("started_at_ms").map_err(backend)?,
                    ended_at_ms: r.try_get("ended_at_ms").map_err(backend)?,
                })
            }
        }

        #[async_trait::async_trait]
        impl DispatchStore for $store {
            async fn insert_dispatch(&self, d: &DispatchRow, steps: &[StepRow]) -> StoreResult<()> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                sqlx::query(sql::INSERT_DISPATCH)
                    .bind(&d.id)
                    .bind(&d.account_id)
                    .bind(&d.status)
                    .bind(&d.contact_id)
                    .bind(&d.steps_ct)
                    .bind(d.step_count)
                    .bind(d.current_step)
                    .bind(&d.current_message_id)
                    .bind(d.step_started_at_ms)
                    .bind(d.step_deadline_ms)
                    .bind(&d.watch_channel)
                    .bind(&d.watch_sender)
                    .bind(&d.watch_peer_bidx)
                    .bind(d.wake_at_ms)
                    .bind(&d.outcome)
                    .bind(&d.created_by)
                    .bind(d.created_at_ms)
                    .bind(d.updated_at_ms)
                    .bind(d.final_at_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                for s in steps {
                    sqlx::query(sql::INSERT_DISPATCH_STEP)
                        .bind(&s.dispatch_id)
                        .bind(s.step_index)
                        .bind(&s.channel)
                        .bind(&s.message_id)
                        .bind(&s.status)
                        .bind(&s.reason)
                        .bind(s.started_at_ms)
                        .bind(s.ended_at_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                }
                tx.commit().await.map_err(backend)
            }

            async fn get_dispatch(&self, id: &str) -> StoreResult<Option<DispatchRow>> {
                let row = sqlx::query(sql::GET_DISPATCH)
                    .bind(id)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| Self::dispatch_row(&r)).transpose()
            }

            async fn dispatch_steps(&self, id: &str) -> StoreResult<Vec<StepRow>> {
                let rows = sqlx::query(sql::DISPATCH_STEPS)
                    .bind(id)
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(Self::step_row).collect()
            }

            async fn list_dispatches(
                &self,
                account_id: &str,
                status: Option<&str>,
                page: &PageRequest,
            ) -> StoreResult<Vec<DispatchRow>> {
                let rows = sqlx::query(sql::LIST_DISPATCHES)
                    .bind(account_id)
                    .bind(status)
                    .bind(page.after.as_deref().unwrap_or(""))
                    .bind(page.fetch_limit())
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(Self::dispatch_row).collect()
            }

            async fn claim_dispatches(
                &self,
                now_ms: i64,
                lease_until_ms: i64,
                limit: i64,
            ) -> StoreResult<Vec<DispatchRow>> {
                let rows = sqlx::query($claim)
                    .bind(lease_until_ms)
                    .bind(now_ms)
                    .bind(limit)
                    .fetch_all(&mut *self.wc_bg().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(Self::dispatch_row).collect()
            }

            async fn advance_dispatch(&self, a: &Advance) -> StoreResult<bool> {
                let d = &a.row;
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                let done = sqlx::query(sql::ADVANCE_DISPATCH)
                    .bind(&d.status)
                    .bind(d.current_step)
                    .bind(&d.current_message_id)
                    .bind(d.step_started_at_ms)
                    .bind(d.step_deadline_ms)
                    .bind(&d.watch_channel)
                    .bind(&d.watch_sender)
                    .bind(&d.watch_peer_bidx)
                    .bind(a.looked_at_ms)
                    .bind(d.wake_at_ms)
                    .bind(&d.outcome)
                    .bind(d.final_at_ms)
                    .bind(d.updated_at_ms)
                    .bind(&d.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                for s in &a.steps {
                    sqlx::query(sql::UPDATE_DISPATCH_STEP)
                        .bind(&s.status)
                        .bind(&s.reason)
                        .bind(s.started_at_ms)
                        .bind(s.ended_at_ms)
                        .bind(&s.dispatch_id)
                        .bind(s.step_index)
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                }
                Self::push_events(&mut tx, &a.events).await?;
                tx.commit().await.map_err(backend)?;
                Ok(true)
            }

            async fn cancel_dispatch(
                &self,
                id: &str,
                at_ms: i64,
                event: &OutboxEvent,
            ) -> StoreResult<bool> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                let done = sqlx::query(sql::CANCEL_DISPATCH)
                    .bind(at_ms)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                sqlx::query(sql::CANCEL_DISPATCH_STEPS)
                    .bind(at_ms)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                Self::push_events(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(backend)?;
                Ok(true)
            }

            async fn nudge_messages(&self, ids: &[String], now_ms: i64) -> StoreResult<u64> {
                let list = serde_json::to_string(ids)
                    .map_err(|e| haven_platform::store::StoreError::Backend(e.to_string()))?;
                let r = sqlx::query($nudge)
                    .bind(now_ms)
                    .bind(list)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(r.rows_affected())
            }

            async fn nudge_reply(
                &self,
                account_id: &str,
                channel: &str,
                sender_id: &str,
                peer_bidx: &[u8],
                now_ms: i64,
            ) -> StoreResult<u64> {
                let r = sqlx::query(sql::NUDGE_REPLY)
                    .bind(now_ms)
                    .bind(account_id)
                    .bind(channel)
                    .bind(sender_id)
                    .bind(peer_bidx)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(r.rows_affected())
            }
        }
    };
}

impl_dispatch_store!(
    SqliteStore,
    sqlx::sqlite::SqliteRow,
    sql::CLAIM_DISPATCHES_SQLITE,
    sql::NUDGE_MESSAGES_SQLITE
);
impl_dispatch_store!(
    PgStore,
    sqlx::postgres::PgRow,
    sql::CLAIM_DISPATCHES_PG,
    sql::NUDGE_MESSAGES_PG
);
