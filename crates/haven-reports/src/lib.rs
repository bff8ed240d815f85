//! Reports: the usage ledger read back. Every message a carrier took is one usage record
//! (written by the messaging pipeline in the transaction that marks it `submitted`); this
//! crate lists them and sums them, for one account or one of its subaccounts.

pub mod store;

use haven_identity::{FieldError, Identity, IdentityError, Principal, RequestMeta, Right, Scope};
use haven_platform::audit::{AuditAction, AuditEvent, AuditSink, Outcome};
use haven_platform::clock::{now_ms, parse_rfc3339};
use haven_platform::id::id_floor;
use haven_platform::page::{Page, PageRequest};
use haven_platform::store::StoreError;
use haven_platform::usage::{PRODUCTS, UsageRecord};
use std::sync::Arc;
use store::{UsageFilter, UsageStore, UsageTotal};

const READ: Scope = Scope::new("reports", Right::Read);
const ID_PREFIX: &str = "usg";

#[derive(Debug, thiserror::Error)]
pub enum ReportsError {
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type ReportsResult<T> = Result<T, ReportsError>;

/// What to report on. Times are RFC 3339; `since` is inclusive, `until` exclusive.
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    /// The caller's account (the default) or one of its subaccounts.
    pub account_id: Option<String>,
    pub product: Option<String>,
    pub channel: Option<String>,
    pub country: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
}

/// Totals over a period.
#[derive(Debug, Clone)]
pub struct UsageSummary {
    pub account_id: String,
    pub since_ms: i64,
    pub until_ms: i64,
    pub totals: Vec<UsageTotal>,
}

pub struct Reports {
    store: Arc<dyn UsageStore>,
    identity: Arc<Identity>,
    audit: Arc<dyn AuditSink>,
}

impl std::fmt::Debug for Reports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reports")
    }
}

/// A checked query: whose records, and the id range of its period.
struct Scoped {
    filter: UsageFilter,
    since_ms: i64,
    until_ms: i64,
}

impl Reports {
    pub fn new(
        store: Arc<dyn UsageStore>,
        identity: Arc<Identity>,
        audit: Arc<dyn AuditSink>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            identity,
            audit,
        })
    }

    async fn scoped(&self, p: &Principal, q: UsageQuery) -> ReportsResult<Scoped> {
        p.require(READ)?;
        let mut errors = Vec::new();
        let time = |field: &str, v: &Option<String>, errors: &mut Vec<FieldError>| match v {
            None => None,
            Some(s) => {
                let t = parse_rfc3339(s).filter(|t| *t >= 0);
                if t.is_none() {
                    errors.push(FieldError::new(
                        field,
                        "must be an RFC 3339 time such as 2026-12-01T00:00:00Z",
                    ));
                }
                t
            }
        };
        let since_ms = time("since", &q.since, &mut errors).unwrap_or(0);
        let until_ms = time("until", &q.until, &mut errors).unwrap_or_else(|| now_ms() + 1);
        // Only a range given in full can be backwards; `since` in the future is just empty.
        if errors.is_empty() && q.since.is_some() && q.until.is_some() && since_ms >= until_ms {
            errors.push(FieldError::new("until", "must be later than since"));
        }
        if let Some(pr) = &q.product
            && !PRODUCTS.contains(&pr.as_str())
        {
            errors.push(FieldError::new(
                "product",
                format!("must be one of: {}", PRODUCTS.join(", ")),
            ));
        }
        if let Some(c) = &q.channel
            && !matches!(c.as_str(), "sms" | "email")
        {
            errors.push(FieldError::new("channel", "must be one of: sms, email"));
        }
        if let Some(c) = &q.country
            && !(c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()))
        {
            errors.push(FieldError::new(
                "country",
                "must be an ISO 3166-1 alpha-2 code such as US",
            ));
        }
        if !errors.is_empty() {
            return Err(ReportsError::Invalid(errors));
        }
        let account_id = match q.account_id {
            None => p.account_id.clone(),
            Some(a) if a == p.account_id => a,
            // Another account: only a direct subaccount, and a 404 for anything else.
            Some(a) => self.identity.visible_account(p, &a).await?.id,
        };
        // Just below the first id of `since`'s millisecond: ids are never all zeros.
        let floor = id_floor(ID_PREFIX, since_ms);
        Ok(Scoped {
            filter: UsageFilter {
                account_id,
                after_id: floor[..floor.len() - 1].to_owned(),
                before_id: id_floor(ID_PREFIX, until_ms),
                product: q.product,
                channel: q.channel,
                country: q.country,
            },
            since_ms,
            until_ms,
        })
    }

    async fn audit(&self, p: &Principal, meta: &RequestMeta, account_id: &str) {
        let e = AuditEvent::new(AuditAction::UsageRead, Outcome::Success, p.actor(meta))
            .resource("account", account_id);
        self.audit.enqueue(e).await;
    }

    /// The records of a period, oldest first.
    pub async fn list_usage(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        q: UsageQuery,
        page: &PageRequest,
    ) -> ReportsResult<Page<UsageRecord>> {
        let mut s = self.scoped(p, q).await?;
        if let Some(after) = &page.after
            && *after > s.filter.after_id
        {
            s.filter.after_id.clone_from(after);
        }
        let rows = self.store.list_usage(&s.filter, page.fetch_limit()).await?;
        self.audit(p, meta, &s.filter.account_id).await;
        Ok(Page::from_rows(rows, page, |r| &r.id))
    }

    /// The totals of a period by product, channel, country and currency.
    pub async fn summarize_usage(
        &self,
        p: &Principal,
        meta: &RequestMeta,
        q: UsageQuery,
    ) -> ReportsResult<UsageSummary> {
        let s = self.scoped(p, q).await?;
        let totals = self.store.summarize_usage(&s.filter).await?;
        self.audit(p, meta, &s.filter.account_id).await;
        Ok(UsageSummary {
            account_id: s.filter.account_id,
            since_ms: s.since_ms,
            until_ms: s.until_ms,
            totals,
        })
    }
}
