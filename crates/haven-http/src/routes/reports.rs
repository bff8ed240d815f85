//! `/v1/usage`: the usage ledger, one record per message a carrier took, and its totals.

use super::PageParams;
use crate::AppState;
use crate::extract::{ApiQuery, Auth};
use crate::problem::{Problem, ProblemBody};
use axum::Json;
use axum::extract::State;
use haven_platform::clock::to_rfc3339;
use haven_platform::usage::{UsageRecord, format_micros};
use haven_reports::UsageQuery;
use haven_reports::store::UsageTotal;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageRecordView {
    #[schema(example = "usg_01jd3k2m4n5p6q7r8s9t0v1w2x")]
    pub id: String,
    pub account_id: String,
    /// The API the send was made through: `messages`, `dispatch` or `verify`.
    #[schema(example = "verify")]
    pub product: String,
    #[schema(example = "sms")]
    pub channel: String,
    /// What was used: the message (`GET /v1/messages/{id}`).
    #[schema(example = "msg_01jd3k2m4n5p6q7r8s9t0v1w2x")]
    pub resource_id: String,
    /// The verification or dispatch the message was sent for.
    pub reference_id: Option<String>,
    /// The destination's country (ISO 3166-1 alpha-2), for phone numbers of a known region.
    #[schema(example = "US")]
    pub country: Option<String>,
    /// How many units: SMS segments the carrier took, or 1 per email.
    #[schema(example = 1)]
    pub units: i64,
    /// `sms_segment` or `email`.
    #[schema(example = "sms_segment")]
    pub unit: String,
    /// The rate card's price of one unit at the time of the send (`null`: no rate).
    #[schema(example = "0.0079")]
    pub unit_price: Option<String>,
    /// `units` × `unit_price`.
    #[schema(example = "0.0079")]
    pub price: Option<String>,
    #[schema(example = "USD")]
    pub currency: Option<String>,
    pub created_at: String,
}

impl From<UsageRecord> for UsageRecordView {
    fn from(r: UsageRecord) -> Self {
        Self {
            price: r.price_micros().map(format_micros),
            unit_price: r.unit_price_micros.map(format_micros),
            created_at: to_rfc3339(r.created_at_ms),
            id: r.id,
            account_id: r.account_id,
            product: r.product,
            channel: r.channel,
            resource_id: r.resource_id,
            reference_id: r.reference_id,
            country: r.country,
            units: r.units,
            unit: r.unit,
            currency: r.currency,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageList {
    pub items: Vec<UsageRecordView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageTotalView {
    pub product: String,
    pub channel: String,
    pub country: Option<String>,
    pub currency: Option<String>,
    /// Messages sent.
    pub records: i64,
    /// Units used (SMS segments, emails).
    pub units: i64,
    /// The sum of the priced records' prices.
    #[schema(example = "12.6400")]
    pub price: Option<String>,
    /// Records the rate card had no price for.
    pub unpriced_records: i64,
}

impl From<UsageTotal> for UsageTotalView {
    fn from(t: UsageTotal) -> Self {
        Self {
            product: t.product,
            channel: t.channel,
            country: t.country,
            currency: t.currency,
            records: t.records,
            units: t.units,
            price: t.price_micros.map(format_micros),
            unpriced_records: t.unpriced_records,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageSummaryView {
    pub account_id: String,
    pub since: String,
    pub until: String,
    /// One line per product, channel, country and currency.
    pub totals: Vec<UsageTotalView>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// One of your subaccounts (default: the caller's own account).
    pub account_id: Option<String>,
    /// `messages`, `dispatch` or `verify`.
    pub product: Option<String>,
    /// `sms` or `email`.
    pub channel: Option<String>,
    /// ISO 3166-1 alpha-2.
    pub country: Option<String>,
    /// RFC 3339, inclusive (default: the beginning).
    pub since: Option<String>,
    /// RFC 3339, exclusive (default: now).
    pub until: Option<String>,
    pub page_size: Option<u32>,
    pub cursor: Option<String>,
}

impl UsageParams {
    fn query(self) -> (UsageQuery, PageParams) {
        (
            UsageQuery {
                account_id: self.account_id,
                product: self.product,
                channel: self.channel,
                country: self.country,
                since: self.since,
                until: self.until,
            },
            PageParams {
                page_size: self.page_size,
                cursor: self.cursor,
            },
        )
    }
}

/// List usage records, oldest first: one per message a carrier took (written in the same
/// transaction as its change to `submitted`, so never counted twice). Needs `reports:read`.
#[utoipa::path(get, path = "/v1/usage", tag = "reports", params(UsageParams),
    responses((status = 200, description = "OK", body = UsageList), (status = 401, description = "Not authenticated", body = ProblemBody),
        (status = 403, description = "Needs reports:read", body = ProblemBody), (status = 404, description = "No such subaccount (or not yours)", body = ProblemBody),
        (status = 422, description = "Invalid filter", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_usage(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiQuery(q): ApiQuery<UsageParams>,
) -> Result<Json<UsageList>, Problem> {
    let (q, page) = q.query();
    let page = page.parse()?;
    let page = st
        .reports
        .list_usage(&auth.principal, &auth.meta(), q, &page)
        .await?;
    Ok(Json(UsageList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SummaryParams {
    /// One of your subaccounts (default: the caller's own account).
    pub account_id: Option<String>,
    pub product: Option<String>,
    pub channel: Option<String>,
    pub country: Option<String>,
    /// RFC 3339, inclusive (default: the beginning).
    pub since: Option<String>,
    /// RFC 3339, exclusive (default: now).
    pub until: Option<String>,
}

/// Usage totals over a period by product, channel, country and currency. Needs
/// `reports:read`.
#[utoipa::path(get, path = "/v1/usage/summary", tag = "reports", params(SummaryParams),
    responses((status = 200, description = "OK", body = UsageSummaryView), (status = 401, description = "Not authenticated", body = ProblemBody),
        (status = 403, description = "Needs reports:read", body = ProblemBody), (status = 404, description = "No such subaccount (or not yours)", body = ProblemBody),
        (status = 422, description = "Invalid filter", body = ProblemBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn usage_summary(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    ApiQuery(q): ApiQuery<SummaryParams>,
) -> Result<Json<UsageSummaryView>, Problem> {
    let q = UsageQuery {
        account_id: q.account_id,
        product: q.product,
        channel: q.channel,
        country: q.country,
        since: q.since,
        until: q.until,
    };
    let s = st
        .reports
        .summarize_usage(&auth.principal, &auth.meta(), q)
        .await?;
    Ok(Json(UsageSummaryView {
        account_id: s.account_id,
        since: to_rfc3339(s.since_ms),
        until: to_rfc3339(s.until_ms),
        totals: s.totals.into_iter().map(Into::into).collect(),
    }))
}
