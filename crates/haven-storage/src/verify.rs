//! The Verify storage, for both backends. A pending verification row is its own durable timer.

use crate::{PgStore, SqliteStore, backend, sql};
use haven_platform::events::OutboxEvent;
use haven_platform::page::PageRequest;
use haven_platform::store::StoreResult;
use haven_verify::factors::{FactorRow, FactorStore};
use haven_verify::store::{
    Attempt, BlockedPrefix, NewVerification, Progress, Velocity, VerificationRow, VerifyStepRow,
    VerifyStore,
};
use sqlx::Row;

macro_rules! impl_verify_store {
    ($store:ty, $db:ty, $row:ty, $claim:expr) => {
        impl $store {
            fn verification_row(r: &$row) -> StoreResult<VerificationRow> {
                Ok(VerificationRow {
                    id: r.try_get("id").map_err(backend)?,
                    account_id: r.try_get("account_id").map_err(backend)?,
                    status: r.try_get("status").map_err(backend)?,
                    brand: r.try_get("brand").map_err(backend)?,
                    locale: r.try_get("locale").map_err(backend)?,
                    code_length: r.try_get("code_length").map_err(backend)?,
                    app_domain: r.try_get("app_domain").map_err(backend)?,
                    workflow_ct: r.try_get("workflow_ct").map_err(backend)?,
                    contact_id: r.try_get("contact_id").map_err(backend)?,
                    recipient_bidx: r.try_get("recipient_bidx").map_err(backend)?,
                    dest_prefix: r.try_get("dest_prefix").map_err(backend)?,
                    client_ip_bidx: r.try_get("client_ip_bidx").map_err(backend)?,
                    step_count: r.try_get("step_count").map_err(backend)?,
                    current_step: r.try_get("current_step").map_err(backend)?,
                    code_hash: r.try_get("code_hash").map_err(backend)?,
                    attempts: r.try_get("attempts").map_err(backend)?,
                    max_attempts: r.try_get("max_attempts").map_err(backend)?,
                    expiry_ms: r.try_get("expiry_ms").map_err(backend)?,
                    channel_timeout_ms: r.try_get("channel_timeout_ms").map_err(backend)?,
                    next_step_at_ms: r.try_get("next_step_at_ms").map_err(backend)?,
                    expires_at_ms: r.try_get("expires_at_ms").map_err(backend)?,
                    wake_at_ms: r.try_get("wake_at_ms").map_err(backend)?,
                    created_by: r.try_get("created_by").map_err(backend)?,
                    created_at_ms: r.try_get("created_at_ms").map_err(backend)?,
                    updated_at_ms: r.try_get("updated_at_ms").map_err(backend)?,
                    final_at_ms: r.try_get("final_at_ms").map_err(backend)?,
                })
            }
        }

        impl $store {
            fn blocked_row(r: &$row) -> StoreResult<BlockedPrefix> {
                Ok(BlockedPrefix {
                    account_id: r.try_get("account_id").map_err(backend)?,
                    prefix: r.try_get("prefix").map_err(backend)?,
                    status: r.try_get("status").map_err(backend)?,
                    sends: r.try_get("sends").map_err(backend)?,
                    conversions: r.try_get("conversions").map_err(backend)?,
                    blocked_at_ms: r.try_get("blocked_at_ms").map_err(backend)?,
                    unblocked_at_ms: r.try_get("unblocked_at_ms").map_err(backend)?,
                })
            }
        }

        impl $store {
            async fn insert_one(
                tx: &mut sqlx::Transaction<'_, $db>,
                v: &VerificationRow,
                steps: &[VerifyStepRow],
                superseded_event: &(dyn Fn(&str) -> OutboxEvent + Send + Sync),
            ) -> StoreResult<Vec<String>> {
                let old = sqlx::query(sql::SUPERSEDE_VERIFICATIONS)
                    .bind(v.created_at_ms)
                    .bind(&v.account_id)
                    .bind(&v.recipient_bidx)
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(backend)?
                    .iter()
                    .map(|r| r.try_get::<String, _>("id").map_err(backend))
                    .collect::<StoreResult<Vec<_>>>()?;
                sqlx::query(sql::INSERT_VERIFICATION)
                    .bind(&v.id)
                    .bind(&v.account_id)
                    .bind(&v.status)
                    .bind(&v.brand)
                    .bind(&v.locale)
                    .bind(v.code_length)
                    .bind(&v.app_domain)
                    .bind(&v.workflow_ct)
                    .bind(&v.contact_id)
                    .bind(&v.recipient_bidx)
                    .bind(v.step_count)
                    .bind(v.current_step)
                    .bind(&v.code_hash)
                    .bind(v.attempts)
                    .bind(v.max_attempts)
                    .bind(v.expiry_ms)
                    .bind(v.channel_timeout_ms)
                    .bind(v.next_step_at_ms)
                    .bind(v.expires_at_ms)
                    .bind(v.wake_at_ms)
                    .bind(&v.created_by)
                    .bind(v.created_at_ms)
                    .bind(v.updated_at_ms)
                    .bind(v.final_at_ms)
                    .bind(&v.dest_prefix)
                    .bind(&v.client_ip_bidx)
                    .execute(&mut **tx)
                    .await
                    .map_err(backend)?;
                for s in steps {
                    sqlx::query(sql::INSERT_VERIFICATION_STEP)
                        .bind(&s.verification_id)
                        .bind(s.step_index)
                        .bind(&s.channel)
                        .bind(&s.message_id)
                        .bind(&s.status)
                        .bind(&s.reason)
                        .bind(s.sent_at_ms)
                        .execute(&mut **tx)
                        .await
                        .map_err(backend)?;
                }
                let events: Vec<OutboxEvent> = old.iter().map(|id| superseded_event(id)).collect();
                Self::push_events(tx, &events).await?;
                Ok(old)
            }

            async fn save_one(
                tx: &mut sqlx::Transaction<'_, $db>,
                v: &VerificationRow,
                steps: &[VerifyStepRow],
                events: &[OutboxEvent],
                lease_until_ms: i64,
            ) -> StoreResult<bool> {
                let done = sqlx::query(sql::SAVE_VERIFICATION)
                    .bind(&v.status)
                    .bind(v.current_step)
                    .bind(&v.code_hash)
                    .bind(v.next_step_at_ms)
                    .bind(v.expires_at_ms)
                    .bind(v.wake_at_ms)
                    .bind(lease_until_ms)
                    .bind(haven_platform::clock::now_ms())
                    .bind(v.final_at_ms)
                    .bind(&v.id)
                    .execute(&mut **tx)
                    .await
                    .map_err(backend)?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                for s in steps {
                    sqlx::query(sql::UPDATE_VERIFICATION_STEP)
                        .bind(&s.status)
                        .bind(&s.reason)
                        .bind(s.sent_at_ms)
                        .bind(&s.verification_id)
                        .bind(s.step_index)
                        .execute(&mut **tx)
                        .await
                        .map_err(backend)?;
                }
                Self::push_events(tx, events).await?;
                Ok(true)
            }
        }

        #[async_trait::async_trait]
        impl VerifyStore for $store {
            async fn insert_verifications(&self, items: &[NewVerification]) -> StoreResult<()> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                for it in items {
                    Self::insert_one(&mut tx, &it.row, &it.steps, it.superseded_event.as_ref())
                        .await?;
                }
                tx.commit().await.map_err(backend)
            }

            async fn save_progress(&self, items: &[Progress]) -> StoreResult<()> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                for it in items {
                    Self::save_one(&mut tx, &it.row, &it.steps, &it.events, 0).await?;
                }
                tx.commit().await.map_err(backend)
            }

            async fn get_verify_policy(&self, account_id: &str) -> StoreResult<Option<String>> {
                let row = sqlx::query(sql::GET_VERIFY_POLICY)
                    .bind(account_id)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| r.try_get("policy").map_err(backend))
                    .transpose()
            }

            async fn put_verify_policy(
                &self,
                account_id: &str,
                policy: &str,
                at_ms: i64,
            ) -> StoreResult<()> {
                sqlx::query(sql::PUT_VERIFY_POLICY)
                    .bind(account_id)
                    .bind(policy)
                    .bind(at_ms)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(())
            }

            async fn count_velocity(
                &self,
                account_id: &str,
                by: Velocity<'_>,
                since_ms: i64,
            ) -> StoreResult<i64> {
                let q = match by {
                    Velocity::Recipient(r) => sqlx::query(sql::COUNT_RECENT_VERIFICATIONS)
                        .bind(account_id)
                        .bind(r.to_vec()),
                    Velocity::Prefix(p) => sqlx::query(sql::COUNT_PREFIX_VELOCITY)
                        .bind(account_id)
                        .bind(p.to_owned()),
                    Velocity::ClientIp(ip) => sqlx::query(sql::COUNT_IP_VELOCITY)
                        .bind(account_id)
                        .bind(ip.to_vec()),
                };
                let row = q
                    .bind(since_ms)
                    .fetch_one(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.try_get("n").map_err(backend)
            }

            async fn prefix_stats(
                &self,
                account_id: &str,
                prefix: &str,
                since_ms: i64,
                young_after_ms: i64,
            ) -> StoreResult<(i64, i64)> {
                let row = sqlx::query(sql::PREFIX_STATS)
                    .bind(account_id)
                    .bind(prefix)
                    .bind(since_ms)
                    .bind(young_after_ms)
                    .fetch_one(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                Ok((
                    row.try_get("sends").map_err(backend)?,
                    row.try_get("conversions").map_err(backend)?,
                ))
            }

            async fn blocked_prefix(
                &self,
                account_id: &str,
                prefix: &str,
            ) -> StoreResult<Option<BlockedPrefix>> {
                let row = sqlx::query(sql::GET_BLOCKED_PREFIX)
                    .bind(account_id)
                    .bind(prefix)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| Self::blocked_row(&r)).transpose()
            }

            async fn list_blocked_prefixes(
                &self,
                account_id: &str,
            ) -> StoreResult<Vec<BlockedPrefix>> {
                let rows = sqlx::query(sql::LIST_BLOCKED_PREFIXES)
                    .bind(account_id)
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(Self::blocked_row).collect()
            }

            async fn block_prefix(
                &self,
                b: &BlockedPrefix,
                event: &OutboxEvent,
            ) -> StoreResult<()> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                sqlx::query(sql::BLOCK_PREFIX)
                    .bind(&b.account_id)
                    .bind(&b.prefix)
                    .bind(b.sends)
                    .bind(b.conversions)
                    .bind(b.blocked_at_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                Self::push_events(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(backend)
            }

            async fn unblock_prefix(
                &self,
                account_id: &str,
                prefix: &str,
                at_ms: i64,
                event: &OutboxEvent,
            ) -> StoreResult<bool> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                let done = sqlx::query(sql::UNBLOCK_PREFIX)
                    .bind(at_ms)
                    .bind(account_id)
                    .bind(prefix)
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

            async fn get_verification(&self, id: &str) -> StoreResult<Option<VerificationRow>> {
                let row = sqlx::query(sql::GET_VERIFICATION)
                    .bind(id)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| Self::verification_row(&r)).transpose()
            }

            async fn verification_steps(&self, id: &str) -> StoreResult<Vec<VerifyStepRow>> {
                let rows = sqlx::query(sql::VERIFICATION_STEPS)
                    .bind(id)
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter()
                    .map(|r| {
                        Ok(VerifyStepRow {
                            verification_id: r.try_get("verification_id").map_err(backend)?,
                            step_index: r.try_get("step_index").map_err(backend)?,
                            channel: r.try_get("channel").map_err(backend)?,
                            message_id: r.try_get("message_id").map_err(backend)?,
                            status: r.try_get("status").map_err(backend)?,
                            reason: r.try_get("reason").map_err(backend)?,
                            sent_at_ms: r.try_get("sent_at_ms").map_err(backend)?,
                        })
                    })
                    .collect()
            }

            async fn claim_verifications(
                &self,
                now_ms: i64,
                lease_until_ms: i64,
                limit: i64,
            ) -> StoreResult<Vec<VerificationRow>> {
                let rows = sqlx::query($claim)
                    .bind(lease_until_ms)
                    .bind(now_ms)
                    .bind(limit)
                    .fetch_all(&mut *self.wc_bg().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(Self::verification_row).collect()
            }

            async fn lease_verification(
                &self,
                id: &str,
                now_ms: i64,
                lease_until_ms: i64,
            ) -> StoreResult<Option<VerificationRow>> {
                let row = sqlx::query(sql::LEASE_VERIFICATION)
                    .bind(lease_until_ms)
                    .bind(id)
                    .bind(now_ms)
                    .fetch_optional(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| Self::verification_row(&r)).transpose()
            }

            async fn save_verification(
                &self,
                v: &VerificationRow,
                steps: &[VerifyStepRow],
                events: &[OutboxEvent],
                lease_until_ms: i64,
            ) -> StoreResult<bool> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                if !Self::save_one(&mut tx, v, steps, events, lease_until_ms).await? {
                    return Ok(false);
                }
                tx.commit().await.map_err(backend)?;
                Ok(true)
            }

            async fn take_attempt(&self, id: &str) -> StoreResult<Option<Attempt>> {
                let row = sqlx::query(sql::TAKE_ATTEMPT)
                    .bind(id)
                    .fetch_optional(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| {
                    Ok(Attempt {
                        attempts: r.try_get("attempts").map_err(backend)?,
                        max_attempts: r.try_get("max_attempts").map_err(backend)?,
                        code_hash: r.try_get("code_hash").map_err(backend)?,
                        expires_at_ms: r.try_get("expires_at_ms").map_err(backend)?,
                    })
                })
                .transpose()
            }

            async fn end_verification(
                &self,
                id: &str,
                code_hash: Option<&[u8]>,
                status: &str,
                at_ms: i64,
                event: &OutboxEvent,
            ) -> StoreResult<bool> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                let done = sqlx::query(sql::END_VERIFICATION)
                    .bind(status)
                    .bind(at_ms)
                    .bind(id)
                    .bind(code_hash)
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
        }
    };
}

impl_verify_store!(
    SqliteStore,
    sqlx::Sqlite,
    sqlx::sqlite::SqliteRow,
    sql::CLAIM_VERIFICATIONS_SQLITE
);
impl_verify_store!(
    PgStore,
    sqlx::Postgres,
    sqlx::postgres::PgRow,
    sql::CLAIM_VERIFICATIONS_PG
);

macro_rules! impl_factor_store {
    ($store:ty, $row:ty) => {
        impl $store {
            fn factor_row(r: &$row) -> StoreResult<FactorRow> {
                Ok(FactorRow {
                    id: r.try_get("id").map_err(backend)?,
                    account_id: r.try_get("account_id").map_err(backend)?,
                    user_ref_ct: r.try_get("user_ref_ct").map_err(backend)?,
                    user_ref_bidx: r.try_get("user_ref_bidx").map_err(backend)?,
                    status: r.try_get("status").map_err(backend)?,
                    seed_ct: r.try_get("seed_ct").map_err(backend)?,
                    digits: r.try_get("digits").map_err(backend)?,
                    period: r.try_get("period").map_err(backend)?,
                    last_step: r.try_get("last_step").map_err(backend)?,
                    failed_attempts: r.try_get("failed_attempts").map_err(backend)?,
                    locked_until_ms: r.try_get("locked_until_ms").map_err(backend)?,
                    created_at_ms: r.try_get("created_at_ms").map_err(backend)?,
                    confirmed_at_ms: r.try_get("confirmed_at_ms").map_err(backend)?,
                    last_used_at_ms: r.try_get("last_used_at_ms").map_err(backend)?,
                })
            }
        }

        #[async_trait::async_trait]
        impl FactorStore for $store {
            async fn insert_factor(&self, f: &FactorRow) -> StoreResult<()> {
                sqlx::query(sql::INSERT_FACTOR)
                    .bind(&f.id)
                    .bind(&f.account_id)
                    .bind(&f.user_ref_ct)
                    .bind(&f.user_ref_bidx)
                    .bind(&f.status)
                    .bind(&f.seed_ct)
                    .bind(f.digits)
                    .bind(f.period)
                    .bind(f.last_step)
                    .bind(f.failed_attempts)
                    .bind(f.locked_until_ms)
                    .bind(f.created_at_ms)
                    .bind(f.confirmed_at_ms)
                    .bind(f.last_used_at_ms)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(())
            }

            async fn get_factor(&self, id: &str) -> StoreResult<Option<FactorRow>> {
                let row = sqlx::query(sql::GET_FACTOR)
                    .bind(id)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| Self::factor_row(&r)).transpose()
            }

            async fn list_factors(
                &self,
                account_id: &str,
                user_ref_bidx: Option<&[u8]>,
                page: &PageRequest,
            ) -> StoreResult<Vec<FactorRow>> {
                let rows = sqlx::query(sql::LIST_FACTORS)
                    .bind(account_id)
                    .bind(user_ref_bidx)
                    .bind(page.after.as_deref().unwrap_or(""))
                    .bind(page.fetch_limit())
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(Self::factor_row).collect()
            }

            async fn delete_factor(&self, id: &str) -> StoreResult<bool> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                sqlx::query(sql::DELETE_FACTOR_CODES)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                let done = sqlx::query(sql::DELETE_FACTOR)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                Ok(done.rows_affected() > 0)
            }

            async fn accept_step(
                &self,
                id: &str,
                step: i64,
                at_ms: i64,
                recovery_hashes: &[Vec<u8>],
            ) -> StoreResult<bool> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                let done = sqlx::query(sql::ACCEPT_STEP)
                    .bind(step)
                    .bind(at_ms)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                for h in recovery_hashes {
                    sqlx::query(sql::INSERT_RECOVERY_CODE)
                        .bind(id)
                        .bind(h)
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                }
                tx.commit().await.map_err(backend)?;
                Ok(true)
            }

            async fn record_failure(
                &self,
                id: &str,
                max: i64,
                lock_until_ms: i64,
            ) -> StoreResult<i64> {
                let row = sqlx::query(sql::RECORD_FACTOR_FAILURE)
                    .bind(max)
                    .bind(lock_until_ms)
                    .bind(id)
                    .fetch_optional(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                match row {
                    Some(r) => r.try_get("failed_attempts").map_err(backend),
                    None => Ok(0),
                }
            }

            async fn use_recovery_code(
                &self,
                id: &str,
                hash: &[u8],
                at_ms: i64,
            ) -> StoreResult<bool> {
                let done = sqlx::query(sql::USE_RECOVERY_CODE)
                    .bind(at_ms)
                    .bind(id)
                    .bind(hash)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(done.rows_affected() > 0)
            }

            async fn recovery_codes_left(&self, id: &str) -> StoreResult<i64> {
                let row = sqlx::query(sql::RECOVERY_CODES_LEFT)
                    .bind(id)
                    .fetch_one(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.try_get("n").map_err(backend)
            }
        }
    };
}

impl_factor_store!(SqliteStore, sqlx::sqlite::SqliteRow);
impl_factor_store!(PgStore, sqlx::postgres::PgRow);
