//! The vault's and the contacts' storage, for both backends.

use crate::pgpoint::{self, Gather, PointReaders};
use crate::{PgStore, SqliteStore, backend, sql};
use haven_contacts::{ContactRow, ContactStore, IndexFilter};
use haven_platform::page::PageRequest;
use haven_platform::store::{StoreError, StoreResult};
use haven_vault::{
    AccountKeyRecord, KeyPurpose, SubjectKeyRecord, VaultStore, WrappedItem, WrappedKind,
};
use sqlx::Row;
use std::sync::Arc;

fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("stored {what} is not readable"))
}

macro_rules! impl_vault_store {
    ($store:ty, $row:ty) => {
        impl $store {
            fn account_key_row(r: &$row) -> StoreResult<AccountKeyRecord> {
                let purpose: String = r.try_get("purpose").map_err(backend)?;
                Ok(AccountKeyRecord {
                    id: r.try_get("id").map_err(backend)?,
                    account_id: r.try_get("account_id").map_err(backend)?,
                    purpose: KeyPurpose::parse(&purpose).ok_or_else(|| corrupt("key purpose"))?,
                    wrapped: r.try_get("wrapped").map_err(backend)?,
                    created_at_ms: r.try_get("created_at_ms").map_err(backend)?,
                    retired_at_ms: r.try_get("retired_at_ms").map_err(backend)?,
                })
            }

            fn contact_row(r: &$row) -> StoreResult<ContactRow> {
                Ok(ContactRow {
                    id: r.try_get("id").map_err(backend)?,
                    account_id: r.try_get("account_id").map_err(backend)?,
                    reference_bidx: r.try_get("reference_bidx").map_err(backend)?,
                    phone_bidx: r.try_get("phone_bidx").map_err(backend)?,
                    email_bidx: r.try_get("email_bidx").map_err(backend)?,
                    reference_ct: r.try_get("reference_ct").map_err(backend)?,
                    name_ct: r.try_get("name_ct").map_err(backend)?,
                    phone_ct: r.try_get("phone_ct").map_err(backend)?,
                    email_ct: r.try_get("email_ct").map_err(backend)?,
                    attributes_ct: r.try_get("attributes_ct").map_err(backend)?,
                    created_at_ms: r.try_get("created_at_ms").map_err(backend)?,
                    updated_at_ms: r.try_get("updated_at_ms").map_err(backend)?,
                    erased_at_ms: r.try_get("erased_at_ms").map_err(backend)?,
                })
            }
        }

        #[async_trait::async_trait]
        impl VaultStore for $store {
            async fn active_account_key(
                &self,
                account_id: &str,
                purpose: KeyPurpose,
            ) -> StoreResult<Option<AccountKeyRecord>> {
                let row = sqlx::query(sql::ACTIVE_ACCOUNT_KEY)
                    .bind(account_id)
                    .bind(purpose.as_str())
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| Self::account_key_row(&r)).transpose()
            }

            async fn get_account_key(&self, id: &str) -> StoreResult<Option<AccountKeyRecord>> {
                let row = sqlx::query(sql::GET_ACCOUNT_KEY)
                    .bind(id)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| Self::account_key_row(&r)).transpose()
            }

            async fn insert_account_key(
                &self,
                key: &AccountKeyRecord,
                retire: Option<&str>,
            ) -> StoreResult<bool> {
                let mut wc = self.wc().await?;
                let mut tx = sqlx::Connection::begin(&mut *wc).await.map_err(backend)?;
                if let Some(old) = retire {
                    let n = sqlx::query(sql::RETIRE_ACCOUNT_KEY)
                        .bind(key.created_at_ms)
                        .bind(old)
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?
                        .rows_affected();
                    if n == 0 {
                        tx.rollback().await.map_err(backend)?;
                        return Ok(false);
                    }
                }
                let n = sqlx::query(sql::INSERT_ACCOUNT_KEY)
                    .bind(&key.id)
                    .bind(&key.account_id)
                    .bind(key.purpose.as_str())
                    .bind(&key.wrapped)
                    .bind(key.created_at_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                if n == 0 {
                    tx.rollback().await.map_err(backend)?;
                    return Ok(false);
                }
                tx.commit().await.map_err(backend)?;
                Ok(true)
            }

            async fn data_keys_due(
                &self,
                before_ms: i64,
                limit: i64,
            ) -> StoreResult<Vec<AccountKeyRecord>> {
                let rows = sqlx::query(sql::DATA_KEYS_DUE)
                    .bind(before_ms)
                    .bind(limit)
                    .fetch_all(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                rows.iter().map(Self::account_key_row).collect()
            }

            async fn insert_subject_key(&self, k: &SubjectKeyRecord) -> StoreResult<()> {
                sqlx::query(sql::INSERT_SUBJECT_KEY)
                    .bind(&k.subject_id)
                    .bind(&k.account_id)
                    .bind(&k.key_id)
                    .bind(&k.data_key_id)
                    .bind(&k.wrapped)
                    .bind(k.created_at_ms)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(())
            }

            async fn get_subject_key(
                &self,
                subject_id: &str,
            ) -> StoreResult<Option<SubjectKeyRecord>> {
                self.read_subject_key(subject_id).await
            }

            async fn delete_subject_key(&self, subject_id: &str) -> StoreResult<bool> {
                let n = sqlx::query(sql::DELETE_SUBJECT_KEY)
                    .bind(subject_id)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                self.after_shred().await;
                Ok(n > 0)
            }

            async fn list_master_wrapped(&self) -> StoreResult<Vec<WrappedItem>> {
                let mut out = Vec::new();
                for (q, kind) in [
                    (sql::WRAPPED_SYSTEM, WrappedKind::System),
                    (sql::WRAPPED_SIGNING, WrappedKind::SigningKey),
                    (sql::WRAPPED_ACCOUNT, WrappedKind::AccountKey),
                ] {
                    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(q)
                        .fetch_all(&mut *self.rc().await?)
                        .await
                        .map_err(backend)?;
                    out.extend(rows.into_iter().map(|(id, wrapped)| WrappedItem {
                        kind,
                        id,
                        wrapped,
                    }));
                }
                Ok(out)
            }

            async fn replace_master_wrapped(
                &self,
                item: &WrappedItem,
                rewrapped: &[u8],
            ) -> StoreResult<bool> {
                let q = match item.kind {
                    WrappedKind::System => sql::REWRAP_SYSTEM,
                    WrappedKind::SigningKey => sql::REWRAP_SIGNING,
                    WrappedKind::AccountKey => sql::REWRAP_ACCOUNT,
                };
                let n = sqlx::query(q)
                    .bind(rewrapped)
                    .bind(&item.id)
                    .bind(&item.wrapped)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                Ok(n > 0)
            }
        }

        #[async_trait::async_trait]
        impl ContactStore for $store {
            async fn insert_contact(&self, c: &ContactRow) -> StoreResult<()> {
                sqlx::query(sql::INSERT_CONTACT)
                    .bind(&c.id)
                    .bind(&c.account_id)
                    .bind(&c.reference_bidx)
                    .bind(&c.phone_bidx)
                    .bind(&c.email_bidx)
                    .bind(&c.reference_ct)
                    .bind(&c.name_ct)
                    .bind(&c.phone_ct)
                    .bind(&c.email_ct)
                    .bind(&c.attributes_ct)
                    .bind(c.created_at_ms)
                    .bind(c.updated_at_ms)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                Ok(())
            }

            async fn get_contact(&self, id: &str) -> StoreResult<Option<ContactRow>> {
                let row = sqlx::query(sql::GET_CONTACT)
                    .bind(id)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| Self::contact_row(&r)).transpose()
            }

            async fn list_contacts(
                &self,
                account_id: &str,
                filter: &IndexFilter,
                page: &PageRequest,
            ) -> StoreResult<Vec<ContactRow>> {
                self.read_contacts(account_id, filter, page).await
            }

            async fn update_contact(&self, c: &ContactRow) -> StoreResult<bool> {
                let n = sqlx::query(sql::UPDATE_CONTACT)
                    .bind(&c.reference_bidx)
                    .bind(&c.phone_bidx)
                    .bind(&c.email_bidx)
                    .bind(&c.reference_ct)
                    .bind(&c.name_ct)
                    .bind(&c.phone_ct)
                    .bind(&c.email_ct)
                    .bind(&c.attributes_ct)
                    .bind(c.updated_at_ms)
                    .bind(&c.id)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?
                    .rows_affected();
                Ok(n > 0)
            }

            async fn mark_contact_erased(
                &self,
                id: &str,
                now_ms: i64,
            ) -> StoreResult<Option<ContactRow>> {
                sqlx::query(sql::ERASE_CONTACT)
                    .bind(now_ms)
                    .bind(id)
                    .execute(&mut *self.wc().await?)
                    .await
                    .map_err(backend)?;
                self.after_shred().await;
                let row = sqlx::query(sql::GET_CONTACT)
                    .bind(id)
                    .fetch_optional(&mut *self.rc().await?)
                    .await
                    .map_err(backend)?;
                row.map(|r| Self::contact_row(&r)).transpose()
            }
        }
    };
}

impl SqliteStore {
    /// With `secure_delete` the freed pages are zeroed in the database file; checkpointing
    /// moves them out of the write-ahead log as well, so a file copy taken after an erasure
    /// holds no trace of the key.
    async fn after_shred(&self) {
        let done = match self.wc().await {
            Ok(mut wc) => sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut *wc)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "checkpoint after an erasure failed");
        }
    }
}

impl PgStore {
    /// PostgreSQL keeps dead tuples until vacuum reclaims them; ask for it now.
    async fn after_shred(&self) {
        for statement in ["VACUUM subject_keys", "VACUUM contacts"] {
            if let Err(e) = sqlx::query(statement).execute(&self.pool).await {
                tracing::warn!(error = %e, "vacuum after an erasure failed");
            }
        }
    }
}

impl_vault_store!(SqliteStore, sqlx::sqlite::SqliteRow);

fn inline_subject_key(r: &rusqlite::Row<'_>) -> rusqlite::Result<SubjectKeyRecord> {
    Ok(SubjectKeyRecord {
        subject_id: r.get("subject_id")?,
        account_id: r.get("account_id")?,
        key_id: r.get("key_id")?,
        data_key_id: r.get("data_key_id")?,
        wrapped: r.get("wrapped")?,
        created_at_ms: r.get("created_at_ms")?,
    })
}

fn inline_contact(r: &rusqlite::Row<'_>) -> rusqlite::Result<ContactRow> {
    Ok(ContactRow {
        id: r.get("id")?,
        account_id: r.get("account_id")?,
        reference_bidx: r.get("reference_bidx")?,
        phone_bidx: r.get("phone_bidx")?,
        email_bidx: r.get("email_bidx")?,
        reference_ct: r.get("reference_ct")?,
        name_ct: r.get("name_ct")?,
        phone_ct: r.get("phone_ct")?,
        email_ct: r.get("email_ct")?,
        attributes_ct: r.get("attributes_ct")?,
        created_at_ms: r.get("created_at_ms")?,
        updated_at_ms: r.get("updated_at_ms")?,
        erased_at_ms: r.get("erased_at_ms")?,
    })
}

/// The statement for a filter: by one blind index when only one is given (every send looks its
/// recipient up so), and the one bound to it; otherwise the general text.
fn contacts_query(filter: &IndexFilter) -> (&'static str, Option<&[u8]>) {
    match (&filter.reference, &filter.phone, &filter.email) {
        (Some(r), None, None) => (sql::LIST_CONTACTS_BY_REFERENCE, Some(r)),
        (None, Some(p), None) => (sql::LIST_CONTACTS_BY_PHONE, Some(p)),
        (None, None, Some(e)) => (sql::LIST_CONTACTS_BY_EMAIL, Some(e)),
        _ => (sql::LIST_CONTACTS, None),
    }
}

/// A lookup by one blind index for at most one contact (what every send does): the point
/// reads on either backend take these, and their statement and index.
fn point_lookup<'a>(
    filter: &'a IndexFilter,
    page: &PageRequest,
) -> Option<(&'static str, &'a [u8])> {
    match contacts_query(filter) {
        (text, Some(index)) if page.size <= 1 => Some((text, index)),
        _ => None,
    }
}

macro_rules! read_contacts_sqlx {
    ($self:ident, $account_id:ident, $filter:ident, $page:ident) => {{
        let after = $page.after.as_deref().unwrap_or("");
        let q = match contacts_query($filter) {
            (text, Some(index)) => sqlx::query(text).bind($account_id).bind(after).bind(index),
            (text, None) => sqlx::query(text)
                .bind($account_id)
                .bind(after)
                .bind(&$filter.reference)
                .bind(&$filter.phone)
                .bind(&$filter.email),
        };
        let rows = q
            .bind($page.fetch_limit())
            .fetch_all(&mut *$self.rc().await?)
            .await
            .map_err(backend)?;
        rows.iter().map(Self::contact_row).collect()
    }};
}

impl SqliteStore {
    async fn read_subject_key(&self, subject_id: &str) -> StoreResult<Option<SubjectKeyRecord>> {
        self.inline.read(|c| {
            use rusqlite::OptionalExtension;
            c.prepare_cached(sql::GET_SUBJECT_KEY)?
                .query_row([subject_id], inline_subject_key)
                .optional()
        })
    }

    /// A lookup by one blind index (every send does one, and finds one contact or none) runs
    /// on the caller's thread (see `inline`); pages of the list stay on sqlx.
    async fn read_contacts(
        &self,
        account_id: &str,
        filter: &IndexFilter,
        page: &PageRequest,
    ) -> StoreResult<Vec<ContactRow>> {
        if let Some((text, index)) = point_lookup(filter, page) {
            return self.inline.read(|c| {
                c.prepare_cached(text)?
                    .query_map(
                        rusqlite::params![
                            account_id,
                            page.after.as_deref().unwrap_or(""),
                            index,
                            page.fetch_limit()
                        ],
                        inline_contact,
                    )?
                    .collect()
            });
        }
        read_contacts_sqlx!(self, account_id, filter, page)
    }
}

impl PgStore {
    /// The key of a contact every send to them opens, read with the other sends' in one
    /// statement.
    async fn read_subject_key(&self, subject_id: &str) -> StoreResult<Option<SubjectKeyRecord>> {
        self.gathered.subject_keys.get(subject_id.to_owned()).await
    }

    /// A lookup by one blind index (every send does one) goes to the point readers; pages of
    /// the list stay on the pool.
    async fn read_contacts(
        &self,
        account_id: &str,
        filter: &IndexFilter,
        page: &PageRequest,
    ) -> StoreResult<Vec<ContactRow>> {
        // What every send asks (the first contact with this phone number or address) is
        // read with the other sends' in one statement.
        if page.size == 1 && page.after.is_none() {
            let gather = match (&filter.reference, &filter.phone, &filter.email) {
                (None, Some(b), None) => Some((&self.gathered.contacts_by_phone, b)),
                (None, None, Some(b)) => Some((&self.gathered.contacts_by_email, b)),
                _ => None,
            };
            if let Some((gather, bidx)) = gather {
                return gather.get((account_id.to_owned(), bidx.clone())).await;
            }
        }
        if let Some((text, index)) = point_lookup(filter, page) {
            let after = page.after.as_deref().unwrap_or("");
            let limit = page.fetch_limit();
            let rows = crate::pgpoint::point_read!(self.point, |c| {
                sqlx::query(text)
                    .bind(account_id)
                    .bind(after)
                    .bind(index)
                    .bind(limit)
                    .fetch_all(c)
            })?;
            return rows.iter().map(Self::contact_row).collect();
        }
        read_contacts_sqlx!(self, account_id, filter, page)
    }
}
impl_vault_store!(PgStore, sqlx::postgres::PgRow);

fn subject_key_row(r: &sqlx::postgres::PgRow) -> StoreResult<SubjectKeyRecord> {
    Ok(SubjectKeyRecord {
        subject_id: r.try_get("subject_id").map_err(backend)?,
        account_id: r.try_get("account_id").map_err(backend)?,
        key_id: r.try_get("key_id").map_err(backend)?,
        data_key_id: r.try_get("data_key_id").map_err(backend)?,
        wrapped: r.try_get("wrapped").map_err(backend)?,
        created_at_ms: r.try_get("created_at_ms").map_err(backend)?,
    })
}

/// Subject keys for many subjects in one statement (`None` for one that has none: erased).
pub(crate) fn gather_subject_keys(
    point: Arc<PointReaders>,
) -> Arc<Gather<String, Option<SubjectKeyRecord>>> {
    Gather::new(
        "subject_keys",
        Box::new(move |keys: Vec<String>| {
            let point = Arc::clone(&point);
            Box::pin(async move {
                let (unique, slot) = pgpoint::unique_keys(&keys);
                let rows = pgpoint::point_read!(*point, |c| {
                    sqlx::query(sql::SUBJECT_KEYS_GATHERED)
                        .bind(&unique)
                        .fetch_all(c)
                })?;
                let mut found: Vec<Option<SubjectKeyRecord>> = vec![None; unique.len()];
                for r in &rows {
                    let i: i64 = r.try_get("i").map_err(backend)?;
                    *pgpoint::place(&mut found, i, "subject keys")? = Some(subject_key_row(r)?);
                }
                pgpoint::answers(&found, slot)
            })
        }),
    )
}

/// An account and a contact blind index (of a phone number or an email address).
pub(crate) type ContactKey = (String, Vec<u8>);

/// For many (account, index) keys in one statement: the first two contacts of each by id, as
/// `LIST_CONTACTS_BY_PHONE` or `_BY_EMAIL` with a page of one and no cursor give them. `text`
/// is `CONTACTS_BY_PHONE_GATHERED` or `CONTACTS_BY_EMAIL_GATHERED`.
pub(crate) fn gather_contacts(
    kind: &'static str,
    text: &'static str,
    point: Arc<PointReaders>,
) -> Arc<Gather<ContactKey, Vec<ContactRow>>> {
    Gather::new(
        kind,
        Box::new(move |keys: Vec<ContactKey>| {
            let point = Arc::clone(&point);
            Box::pin(async move {
                let (unique, slot) = pgpoint::unique_keys(&keys);
                let (accounts, bidxs): (Vec<String>, Vec<Vec<u8>>) = unique.into_iter().unzip();
                let rows = pgpoint::point_read!(*point, |c| {
                    sqlx::query(text).bind(&accounts).bind(&bidxs).fetch_all(c)
                })?;
                let mut found: Vec<Vec<ContactRow>> = vec![Vec::new(); accounts.len()];
                for r in &rows {
                    let i: i64 = r.try_get("i").map_err(backend)?;
                    pgpoint::place(&mut found, i, "contacts")?.push(PgStore::contact_row(r)?);
                }
                pgpoint::answers(&found, slot)
            })
        }),
    )
}
