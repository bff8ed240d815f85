//! The webhooks' storage, for both backends.

use crate::{PgStore, SqliteStore, backend, sql};
use haven_platform::events::OutboxEvent;
use haven_platform::page::PageRequest;
use haven_platform::store::{StoreError, StoreResult};
use haven_webhooks::{
    AttemptOutcome, AttemptRow, DeliveryRow, DeliveryStatus, EndpointRow, EndpointStatus, EventRow,
    WebhookStore,
};
use sqlx::Row;

fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("stored {what} is not readable"))
}

fn types_json(types: &[String]) -> String {
    serde_json::to_string(types).unwrap_or_else(|_| "[]".to_owned())
}

fn types_parse(raw: &str) -> StoreResult<Vec<String>> {
    serde_json::from_str(raw).map_err(|_| corrupt("event types"))
}

macro_rules! impl_webhook_store {
    ($store:ty, $db:ty, $row:ty, $claim:expr) => {
        impl $store {
            async fn push_deliveries(
                tx: &mut sqlx::Transaction<'_, $db>,
                deliveries: &[DeliveryRow],
            ) -> StoreResult<()> {
                for d in deliveries {
                    sqlx::query(sql::INSERT_DELIVERY)
                        .bind(&d.id)
                        .bind(&d.event_id)
                        .bind(&d.endpoint_id)
                        .bind(&d.account_id)
                        .bind(d.next_attempt_at_ms)
                        .bind(d.created_at_ms)
                        .execute(&mut **tx)
                        .await
                        .map_err(backend)?;
                }
                Ok(())
            }

            fn endpoint_row(r: &$row) -> StoreResult<EndpointRow> {
                let status: String = r.try_get("status").map_err(backend)?;
                let types: String = r.try_get("event_types").map_err(backend)?;
                Ok(EndpointRow {
                    id: r.try_get("id").map_err(backend)?,
                    account_id: r.try_get("account_id").map_err(backend)?,
                    url_ct: r.try_get("url_ct").map_err(backend)?,
                    event_types: types_parse(&types)?,
                    status: EndpointStatus::parse(&status)
                        .ok_or_else(|| corrupt("endpoint status"))?,
                    secret_ct: r.try_get("secret_ct").map_err(backend)?,
                    previous_secret_ct: r.try_get("previous_secret_ct").map_err(backend)?,
                    previous_secret_expires_at_ms: r
                        .try_get("previous_secret_expires_at_ms")
                        .map_err(backend)?,
                    created_at_ms: r.try_get("created_at_ms").map_err(backend)?,
                    updated_at_ms: r.try_get("updated_at_ms").map_err(backend)?,
                })
            }

            /// The row's body: stored whole by earlier versions, else built around its data.
            fn event_row(r: &$row) -> StoreResult<EventRow> {
                let id: String = r.try_get("id").map_err(backend)?;
                let account_id: String = r.try_get("account_id").map_err(backend)?;
                let event_type: String = r.try_get("event_type").map_err(backend)?;
                let stored: String = r.try_get("payload").map_err(backend)?;
                let envelope: i64 = r.try_get("envelope").map_err(backend)?;
                let created_at_ms: i64 = r.try_get("created_at_ms").map_err(backend)?;
                let payload = if envelope == 0 {
                    haven_platform::events::body(
                        &id,
                        &event_type,
                        created_at_ms,
                        &account_id,
                        &stored,
                    )
                } else {
                    stored
                };
                Ok(EventRow {
                    id,
                    account_id,
                    event_type,
                    payload,
                    created_at_ms,
                })
            }

            fn delivery_row(r: &$row) -> StoreResult<DeliveryRow> {
                let status: String = r.try_get("status").map_err(backend)?;
                Ok(DeliveryRow {
                    id: r.try_get("id").map_err(backend)?,
                    event_id: r.try_get("event_id").map_err(backend)?,
                    endpoint_id: r.try_get("endpoint_id").map_err(backend)?,
                    account_id: r.try_get("account_id").map_err(backend)?,
                    status: DeliveryStatus::parse(&status)
                        .ok_or_else(|| corrupt("delivery status"))?,
                    attempts: r.try_get("attempts").map_err(backend)?,
                    next_attempt_at_ms: r.try_get("next_attempt_at_ms").map_err(backend)?,
                    last_status_code: r.try_get("last_status_code").map_err(backend)?,
                    last_error: r.try_get("last_error").map_err(backend)?,
                    created_at_ms: r.try_get("created_at_ms").map_err(backend)?,
                    completed_at_ms: r.try_get("completed_at_ms").map_err(backend)?,
                })
            }
        }

        #[async_trait::async_trait]
        impl WebhookStore for $store {
            async fn insert_endpoint(
                &self,
                e: &EndpointRow,
                events: &[OutboxEvent],
            ) -> StoreResult<()> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                sqlx::query(sql::INSERT_ENDPOINT)
                    .bind(&e.id)
                    .bind(&e.account_id)
                    .bind(&e.url_ct)
                    .bind(types_json(&e.event_types))
                    .bind(e.status.as_str())
                    .bind(&e.secret_ct)
                    .bind(&e.previous_secret_ct)
                    .bind(e.previous_secret_expires_at_ms)
                    .bind(e.created_at_ms)
                    .bind(e.updated_at_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                Self::push_events(&mut tx, events).await?;
                tx.commit().await.map_err(backend)
            }

            async fn get_endpoint(&self, id: &str) -> StoreResult<Option<EndpointRow>> {
                let row = sqlx::query(sql::GET_ENDPOINT)
                    .bind(id)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| Self::endpoint_row(&r)).transpose()
            }

            async fn list_endpoints(
                &self,
                account_id: &str,
                page: &PageRequest,
            ) -> StoreResult<Vec<EndpointRow>> {
                let rows = sqlx::query(sql::LIST_ENDPOINTS)
                    .bind(account_id)
                    .bind(page.after.as_deref().unwrap_or(""))
                    .bind(page.fetch_limit())
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(Self::endpoint_row).collect()
            }

            async fn update_endpoint(
                &self,
                e: &EndpointRow,
                events: &[OutboxEvent],
            ) -> StoreResult<bool> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                let n = sqlx::query(sql::UPDATE_ENDPOINT)
                    .bind(&e.url_ct)
                    .bind(types_json(&e.event_types))
                    .bind(e.status.as_str())
                    .bind(&e.secret_ct)
                    .bind(&e.previous_secret_ct)
                    .bind(e.previous_secret_expires_at_ms)
                    .bind(e.updated_at_ms)
                    .bind(&e.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                if n == 0 {
                    tx.rollback().await.map_err(backend)?;
                    return Ok(false);
                }
                Self::push_events(&mut tx, events).await?;
                tx.commit().await.map_err(backend)?;
                Ok(true)
            }

            async fn delete_endpoint(
                &self,
                id: &str,
                now_ms: i64,
                events: &[OutboxEvent],
            ) -> StoreResult<bool> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                let n = sqlx::query(sql::DELETE_ENDPOINT)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                if n == 0 {
                    tx.rollback().await.map_err(backend)?;
                    return Ok(false);
                }
                sqlx::query(sql::KILL_ENDPOINT_DELIVERIES)
                    .bind(now_ms)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                Self::push_events(&mut tx, events).await?;
                tx.commit().await.map_err(backend)?;
                Ok(true)
            }

            async fn insert_events(&self, events: &[OutboxEvent]) -> StoreResult<()> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                Self::push_events(&mut tx, events).await?;
                tx.commit().await.map_err(backend)
            }

            async fn parent_of(&self, account_id: &str) -> StoreResult<Option<String>> {
                let row: Option<(Option<String>,)> = sqlx::query_as(sql::PARENT_OF)
                    .bind(account_id)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                Ok(row.and_then(|r| r.0))
            }

            async fn unfanned_events(&self, limit: i64) -> StoreResult<Vec<EventRow>> {
                let rows = sqlx::query(sql::UNFANNED_EVENTS)
                    .bind(limit)
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(Self::event_row).collect()
            }

            async fn endpoints_for(
                &self,
                account_id: &str,
            ) -> StoreResult<Vec<(String, String, Vec<String>)>> {
                let rows: Vec<(String, String, String)> = sqlx::query_as(sql::ENDPOINTS_FOR)
                    .bind(account_id)
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.into_iter()
                    .map(|(id, acc, types)| Ok((id, acc, types_parse(&types)?)))
                    .collect()
            }

            async fn fan_out(
                &self,
                event_ids: &[String],
                deliveries: &[DeliveryRow],
            ) -> StoreResult<()> {
                let mut wc = self.wc_bg_as("webhooks").await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                Self::push_deliveries(&mut tx, deliveries).await?;
                for r in crate::bulk::chunks(event_ids.len()) {
                    let text = format!(
                        "UPDATE webhook_events SET fanned_out = 1 WHERE id IN ({})",
                        crate::bulk::list(Self::PH, r.len(), 1)
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(text));
                    for id in &event_ids[r] {
                        q = q.bind(id);
                    }
                    q.execute(&mut *tx).await.map_err(backend)?;
                }
                tx.commit().await.map_err(backend)
            }

            async fn claim_due(
                &self,
                now_ms: i64,
                lease_until_ms: i64,
                limit: i64,
            ) -> StoreResult<Vec<DeliveryRow>> {
                let rows = sqlx::query($claim)
                    .bind(lease_until_ms)
                    .bind(now_ms)
                    .bind(limit)
                    .fetch_all(&mut *self.wc_bg_as("webhooks").await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(Self::delivery_row).collect()
            }

            async fn get_event(&self, id: &str) -> StoreResult<Option<EventRow>> {
                let row = sqlx::query(sql::GET_EVENT)
                    .bind(id)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| Self::event_row(&r)).transpose()
            }

            async fn record_attempt(
                &self,
                a: &AttemptRow,
                outcome: AttemptOutcome,
            ) -> StoreResult<()> {
                let (status, next, done) = match outcome {
                    AttemptOutcome::Succeeded => ("succeeded", a.at_ms, Some(a.at_ms)),
                    AttemptOutcome::Retry { at_ms } => ("pending", at_ms, None),
                    AttemptOutcome::Dead => ("dead", a.at_ms, Some(a.at_ms)),
                };
                let mut wc = self.wc_bg_as("webhooks").await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                sqlx::query(sql::INSERT_ATTEMPT)
                    .bind(&a.delivery_id)
                    .bind(a.attempt)
                    .bind(&a.event_id)
                    .bind(&a.endpoint_id)
                    .bind(a.at_ms)
                    .bind(a.status_code)
                    .bind(&a.error)
                    .bind(a.duration_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                sqlx::query(sql::FINISH_DELIVERY)
                    .bind(status)
                    .bind(a.attempt)
                    .bind(next)
                    .bind(a.status_code)
                    .bind(&a.error)
                    .bind(done)
                    .bind(&a.delivery_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                tx.commit().await.map_err(backend)
            }

            async fn insert_deliveries(&self, deliveries: &[DeliveryRow]) -> StoreResult<()> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                Self::push_deliveries(&mut tx, deliveries).await?;
                tx.commit().await.map_err(backend)
            }

            async fn list_events(
                &self,
                account_id: &str,
                page: &PageRequest,
            ) -> StoreResult<Vec<EventRow>> {
                let rows = sqlx::query(sql::LIST_EVENTS)
                    .bind(account_id)
                    .bind(page.after.as_deref().unwrap_or(""))
                    .bind(page.fetch_limit())
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(Self::event_row).collect()
            }

            async fn deliveries_of_event(&self, event_id: &str) -> StoreResult<Vec<DeliveryRow>> {
                let rows = sqlx::query(sql::DELIVERIES_OF_EVENT)
                    .bind(event_id)
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(Self::delivery_row).collect()
            }

            async fn list_deliveries(
                &self,
                account_id: &str,
                status: Option<DeliveryStatus>,
                page: &PageRequest,
            ) -> StoreResult<Vec<DeliveryRow>> {
                let rows = sqlx::query(sql::LIST_DELIVERIES)
                    .bind(account_id)
                    .bind(status.map(DeliveryStatus::as_str))
                    .bind(page.after.as_deref().unwrap_or(""))
                    .bind(page.fetch_limit())
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(Self::delivery_row).collect()
            }

            async fn attempts_of_event(&self, event_id: &str) -> StoreResult<Vec<AttemptRow>> {
                let rows = sqlx::query(sql::ATTEMPTS_OF_EVENT)
                    .bind(event_id)
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter()
                    .map(|r| {
                        Ok(AttemptRow {
                            delivery_id: r.try_get("delivery_id").map_err(backend)?,
                            attempt: r.try_get("attempt").map_err(backend)?,
                            event_id: r.try_get("event_id").map_err(backend)?,
                            endpoint_id: r.try_get("endpoint_id").map_err(backend)?,
                            at_ms: r.try_get("at_ms").map_err(backend)?,
                            status_code: r.try_get("status_code").map_err(backend)?,
                            error: r.try_get("error").map_err(backend)?,
                            duration_ms: r.try_get("duration_ms").map_err(backend)?,
                        })
                    })
                    .collect()
            }
        }
    };
}

impl_webhook_store!(
    SqliteStore,
    sqlx::Sqlite,
    sqlx::sqlite::SqliteRow,
    sql::CLAIM_DUE_SQLITE
);
impl_webhook_store!(
    PgStore,
    sqlx::Postgres,
    sqlx::postgres::PgRow,
    sql::CLAIM_DUE_PG
);
