//! The usage ledger, for both backends: appended inside the transaction of the send it
//! counts (`push_usage`), read by the Reports API.

use crate::{PgStore, SqliteStore, backend};
use haven_platform::store::StoreResult;
use haven_platform::usage::UsageRecord;
use haven_reports::store::{UsageFilter, UsageStore, UsageTotal};
use sqlx::Row;

const LIST_USAGE: &str = "SELECT id, account_id, product, channel, resource_id, reference_id, country, units, unit, \
     unit_price_micros, currency, created_at_ms FROM usage_records WHERE account_id = $1 AND id > $2 AND id < $3 \
     AND ($4 IS NULL OR product = $4) AND ($5 IS NULL OR channel = $5) AND ($6 IS NULL OR country = $6) \
     ORDER BY id LIMIT ($7 + 0)";
const SUMMARIZE_USAGE: &str = "SELECT product, channel, country, currency, COUNT(*) AS records, \
     CAST(SUM(units) AS BIGINT) AS units, CAST(SUM(units * unit_price_micros) AS BIGINT) AS price_micros, \
     CAST(COUNT(*) - COUNT(unit_price_micros) AS BIGINT) AS unpriced FROM usage_records \
     WHERE account_id = $1 AND id > $2 AND id < $3 \
     AND ($4 IS NULL OR product = $4) AND ($5 IS NULL OR channel = $5) AND ($6 IS NULL OR country = $6) \
     GROUP BY product, channel, country, currency ORDER BY product, channel, country, currency";

/// Usage records, from a row source `{rows}` (see `settle::rows_statement`); a second record
/// for the same resource is ignored. (`WHERE true` tells SQLite's parser that `ON` begins the
/// upsert, not a join constraint.)
pub(crate) const INSERT_USAGE_ROWS: &str = "INSERT INTO usage_records (id, account_id, product, \
     channel, resource_id, reference_id, country, units, unit, unit_price_micros, currency, \
     created_at_ms) SELECT * FROM {rows} WHERE true ON CONFLICT (resource_id) DO NOTHING";

macro_rules! impl_usage_store {
    ($store:ty, $db:ty, $row:ty) => {
        impl $store {
            fn usage_row(r: &$row) -> StoreResult<UsageRecord> {
                Ok(UsageRecord {
                    id: r.try_get("id").map_err(backend)?,
                    account_id: r.try_get("account_id").map_err(backend)?,
                    product: r.try_get("product").map_err(backend)?,
                    channel: r.try_get("channel").map_err(backend)?,
                    resource_id: r.try_get("resource_id").map_err(backend)?,
                    reference_id: r.try_get("reference_id").map_err(backend)?,
                    country: r.try_get("country").map_err(backend)?,
                    units: r.try_get("units").map_err(backend)?,
                    unit: r.try_get("unit").map_err(backend)?,
                    unit_price_micros: r.try_get("unit_price_micros").map_err(backend)?,
                    currency: r.try_get("currency").map_err(backend)?,
                    created_at_ms: r.try_get("created_at_ms").map_err(backend)?,
                })
            }
        }

        #[async_trait::async_trait]
        impl UsageStore for $store {
            async fn list_usage(
                &self,
                f: &UsageFilter,
                limit: i64,
            ) -> StoreResult<Vec<UsageRecord>> {
                let rows = sqlx::query(LIST_USAGE)
                    .bind(&f.account_id)
                    .bind(&f.after_id)
                    .bind(&f.before_id)
                    .bind(&f.product)
                    .bind(&f.channel)
                    .bind(&f.country)
                    .bind(limit)
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(Self::usage_row).collect()
            }

            async fn summarize_usage(&self, f: &UsageFilter) -> StoreResult<Vec<UsageTotal>> {
                let rows = sqlx::query(SUMMARIZE_USAGE)
                    .bind(&f.account_id)
                    .bind(&f.after_id)
                    .bind(&f.before_id)
                    .bind(&f.product)
                    .bind(&f.channel)
                    .bind(&f.country)
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter()
                    .map(|r| {
                        Ok(UsageTotal {
                            product: r.try_get("product").map_err(backend)?,
                            channel: r.try_get("channel").map_err(backend)?,
                            country: r.try_get("country").map_err(backend)?,
                            currency: r.try_get("currency").map_err(backend)?,
                            records: r.try_get("records").map_err(backend)?,
                            units: r
                                .try_get::<Option<i64>, _>("units")
                                .map_err(backend)?
                                .unwrap_or(0),
                            price_micros: r.try_get("price_micros").map_err(backend)?,
                            unpriced_records: r.try_get("unpriced").map_err(backend)?,
                        })
                    })
                    .collect()
            }
        }
    };
}

impl_usage_store!(SqliteStore, sqlx::Sqlite, sqlx::sqlite::SqliteRow);
impl_usage_store!(PgStore, sqlx::Postgres, sqlx::postgres::PgRow);
