//! The usage ledger's storage port. Records are written by the domains that send (in the
//! transaction of the send); this port only reads them.

use haven_platform::store::StoreResult;
use haven_platform::usage::UsageRecord;

/// Which records: one account's, in an id range (a time range: ids are made at the record's
/// time), optionally of one product, channel and country.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageFilter {
    pub account_id: String,
    /// Strictly after this id (a cursor, or just below the first instant of the range).
    pub after_id: String,
    /// Strictly before this id (the first instant after the range).
    pub before_id: String,
    pub product: Option<String>,
    pub channel: Option<String>,
    pub country: Option<String>,
}

/// One group of a summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageTotal {
    pub product: String,
    pub channel: String,
    pub country: Option<String>,
    pub currency: Option<String>,
    pub records: i64,
    pub units: i64,
    /// Sum of the priced records' prices, in millionths of `currency`.
    pub price_micros: Option<i64>,
    /// Records the rate card had no price for.
    pub unpriced_records: i64,
}

#[async_trait::async_trait]
pub trait UsageStore: Send + Sync {
    /// Up to `limit` records in id order.
    async fn list_usage(&self, filter: &UsageFilter, limit: i64) -> StoreResult<Vec<UsageRecord>>;
    /// Totals by product, channel, country and currency, in that order.
    async fn summarize_usage(&self, filter: &UsageFilter) -> StoreResult<Vec<UsageTotal>>;
}
