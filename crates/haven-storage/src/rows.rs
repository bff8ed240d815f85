//! Row ⇄ domain conversions, shared by both backends.

use crate::json_list;
use haven_identity::model::{Account, AccountStatus, ApiKey, ScopeSet, parse_cidr};
use haven_platform::store::{StoreError, StoreResult};
use sqlx::{Database, Row};

fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("stored {what} is not readable"))
}

pub fn account<R: Row>(r: &R) -> StoreResult<Account>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let status: String = r.try_get("status").map_err(crate::backend)?;
    Ok(Account {
        id: r.try_get("id").map_err(crate::backend)?,
        parent_id: r.try_get("parent_id").map_err(crate::backend)?,
        name: r.try_get("name").map_err(crate::backend)?,
        status: AccountStatus::parse(&status).ok_or_else(|| corrupt("account status"))?,
        created_at_ms: r.try_get("created_at_ms").map_err(crate::backend)?,
        updated_at_ms: r.try_get("updated_at_ms").map_err(crate::backend)?,
    })
}

pub fn key<R: Row>(r: &R) -> StoreResult<ApiKey>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Vec<u8>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<Vec<u8>>: sqlx::Decode<'a, R::Database>,
{
    let scopes: String = r.try_get("scopes").map_err(crate::backend)?;
    let scopes: Vec<String> = serde_json::from_str(&scopes).map_err(|_| corrupt("key scopes"))?;
    let cidrs: String = r.try_get("allowed_cidrs").map_err(crate::backend)?;
    let cidrs: Vec<String> = serde_json::from_str(&cidrs).map_err(|_| corrupt("key allowlist"))?;
    Ok(ApiKey {
        id: r.try_get("id").map_err(crate::backend)?,
        account_id: r.try_get("account_id").map_err(crate::backend)?,
        name: r.try_get("name").map_err(crate::backend)?,
        scopes: ScopeSet::from_stored(scopes.iter().map(String::as_str)),
        allowed_cidrs: cidrs
            .iter()
            .map(|c| parse_cidr(c).ok_or_else(|| corrupt("key allowlist")))
            .collect::<Result<_, _>>()?,
        expires_at_ms: r.try_get("expires_at_ms").map_err(crate::backend)?,
        created_at_ms: r.try_get("created_at_ms").map_err(crate::backend)?,
        last_used_at_ms: r.try_get("last_used_at_ms").map_err(crate::backend)?,
        revoked_at_ms: r.try_get("revoked_at_ms").map_err(crate::backend)?,
        rotated_at_ms: r.try_get("rotated_at_ms").map_err(crate::backend)?,
        secret_hash: r.try_get("secret_hash").map_err(crate::backend)?,
        previous_secret_hash: r.try_get("previous_secret_hash").map_err(crate::backend)?,
        previous_secret_expires_at_ms: r
            .try_get("previous_secret_expires_at_ms")
            .map_err(crate::backend)?,
    })
}

pub fn bind_key<'q, DB: Database>(
    q: sqlx::query::Query<'q, DB, <DB as Database>::Arguments>,
    k: &'q ApiKey,
) -> sqlx::query::Query<'q, DB, <DB as Database>::Arguments>
where
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q [u8]: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.bind(k.id.as_str())
        .bind(k.account_id.as_str())
        .bind(k.name.as_str())
        .bind(json_list(k.scopes.to_strings()))
        .bind(json_list(k.allowed_cidrs.iter().map(ToString::to_string)))
        .bind(k.expires_at_ms)
        .bind(k.created_at_ms)
        .bind(k.secret_hash.as_slice())
}
