//! Contacts: the data subjects of an account. Each contact has its own key (see `haven-vault`);
//! its fields are stored only encrypted under it, bound to their row and column, with keyed
//! blind indexes for the reference, phone number and email. Erasing a contact destroys its key.

pub mod model;
pub mod store;

use haven_identity::{FieldError, IdentityError, Principal, RequestMeta, Right, Scope};
use haven_platform::audit::{AuditAction, AuditEvent, AuditSink, Outcome};
use haven_platform::clock::now_ms;
use haven_platform::page::{Page, PageRequest};
use haven_platform::store::StoreError;
use haven_vault::{FieldRef, SubjectKey, Vault, VaultError};
pub use model::{Contact, ContactFields, ContactPatch, ContactSearch, ContactStatus};
use serde_json::{Map, Value};
use std::sync::Arc;
pub use store::{ContactRow, ContactStore, IndexFilter};

const READ: Scope = Scope::new("contacts", Right::Read);
const WRITE: Scope = Scope::new("contacts", Right::Write);
const ADMIN: Scope = Scope::new("contacts", Right::Admin);
const TABLE: &str = "contacts";
const RESOURCE: &str = "contact";

#[derive(Debug, thiserror::Error)]
pub enum ContactsError {
    #[error("invalid contact")]
    Invalid(Vec<FieldError>),
    #[error("no such contact")]
    NotFound,
    #[error("the account already has a contact with this reference")]
    DuplicateReference,
    #[error("the contact was erased")]
    Erased,
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Vault(VaultError),
    #[error(transparent)]
    Store(StoreError),
}

impl From<VaultError> for ContactsError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Erased => Self::Erased,
            other => Self::Vault(other),
        }
    }
}

impl From<StoreError> for ContactsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self::DuplicateReference,
            other => Self::Store(other),
        }
    }
}

pub type ContactsResult<T> = Result<T, ContactsError>;

/// Which address of a contact to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    Phone,
    Email,
}

pub struct Contacts {
    store: Arc<dyn ContactStore>,
    vault: Arc<Vault>,
    audit: Arc<dyn AuditSink>,
}

impl std::fmt::Debug for Contacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Contacts")
    }
}

fn field<'a>(row: &'a ContactRow, column: &'static str) -> FieldRef<'a> {
    FieldRef {
        account_id: &row.account_id,
        table: TABLE,
        column,
        row_id: &row.id,
    }
}

fn erased(row: &ContactRow) -> Contact {
    Contact {
        id: row.id.clone(),
        account_id: row.account_id.clone(),
        status: ContactStatus::Erased,
        reference: None,
        name: None,
        phone_number: None,
        email: None,
        attributes: None,
        created_at_ms: row.created_at_ms,
        updated_at_ms: row.updated_at_ms,
        erased_at_ms: row.erased_at_ms.or(Some(row.updated_at_ms)),
    }
}

fn text(bytes: Vec<u8>) -> ContactsResult<String> {
    String::from_utf8(bytes).map_err(|_| ContactsError::Vault(VaultError::Integrity("not text")))
}

impl Contacts {
    pub fn new(store: Arc<dyn ContactStore>, vault: Arc<Vault>, audit: Arc<dyn AuditSink>) -> Self {
        Self {
            store,
            vault,
            audit,
        }
    }

    async fn audit(
        &self,
        who: &Principal,
        meta: &RequestMeta,
        action: AuditAction,
        id: &str,
        queued: bool,
    ) {
        let e = AuditEvent::new(action, Outcome::Success, who.actor(meta)).resource(RESOURCE, id);
        if queued {
            self.audit.enqueue(e).await;
        } else {
            self.audit.record(e).await;
        }
    }

    /// The contact of the account with this phone number or email, and its key: for other
    /// domains that seal data about the patient under the patient's own key (messages to and
    /// from them). Not audited as a read: no PHI leaves the service. `value` must be
    /// normalized (E.164, or an address as [`model::email`] returns it).
    pub async fn key_for_address(
        &self,
        account_id: &str,
        kind: AddressKind,
        value: &str,
    ) -> ContactsResult<Option<(String, SubjectKey)>> {
        let mut filter = IndexFilter::default();
        match kind {
            AddressKind::Phone => {
                filter.phone = Some(
                    self.vault
                        .blind_index(account_id, "phone_number", value)
                        .await?,
                )
            }
            AddressKind::Email => {
                filter.email = Some(
                    self.vault
                        .blind_index(account_id, "email", &model::email_index_value(value))
                        .await?,
                )
            }
        }
        let page = PageRequest {
            size: 1,
            after: None,
        };
        let rows = self.store.list_contacts(account_id, &filter, &page).await?;
        let Some(row) = rows.into_iter().find(|r| r.erased_at_ms.is_none()) else {
            return Ok(None);
        };
        match self.vault.subject(account_id, &row.id).await {
            Ok(key) => Ok(Some((row.id, key))),
            Err(VaultError::Erased) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The key of a contact, to open what was sealed under it; `Erased` once destroyed.
    pub async fn key_of(&self, account_id: &str, contact_id: &str) -> ContactsResult<SubjectKey> {
        Ok(self.vault.subject(account_id, contact_id).await?)
    }

    /// Validates a creation request.
    pub fn parse_new(
        reference: &str,
        name: Option<&str>,
        phone: Option<&str>,
        email: Option<&str>,
        attributes: Option<Map<String, Value>>,
    ) -> ContactsResult<ContactFields> {
        let mut errors = Vec::new();
        let fields = ContactFields {
            reference: model::reference("reference", reference, &mut errors),
            name: name.map(|n| model::name("name", n, &mut errors)),
            phone_number: phone.map(|p| model::phone_number("phone_number", p, &mut errors)),
            email: email.map(|e| model::email("email", e, &mut errors)),
            attributes: attributes.map(|a| model::attributes("attributes", a, &mut errors)),
        };
        if errors.is_empty() {
            Ok(fields)
        } else {
            Err(ContactsError::Invalid(errors))
        }
    }

    /// Validates a change.
    pub fn parse_patch(patch: ContactPatch) -> ContactsResult<ContactPatch> {
        let mut errors = Vec::new();
        let out = ContactPatch {
            reference: patch
                .reference
                .map(|r| model::reference("reference", &r, &mut errors)),
            name: patch
                .name
                .map(|n| n.map(|n| model::name("name", &n, &mut errors))),
            phone_number: patch
                .phone_number
                .map(|p| p.map(|p| model::phone_number("phone_number", &p, &mut errors))),
            email: patch
                .email
                .map(|e| e.map(|e| model::email("email", &e, &mut errors))),
            attributes: patch
                .attributes
                .map(|a| a.map(|a| model::attributes("attributes", a, &mut errors))),
        };
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(ContactsError::Invalid(errors))
        }
    }

    async fn seal_into(
        &self,
        row: &mut ContactRow,
        key: &SubjectKey,
        f: &ContactFields,
    ) -> ContactsResult<()> {
        let account = row.account_id.clone();
        let seal = |column: &'static str, v: &[u8]| key.seal(&field(row, column), v);
        let reference_ct = Some(seal("reference", f.reference.as_bytes())?);
        let name_ct = f
            .name
            .as_deref()
            .map(|v| seal("name", v.as_bytes()))
            .transpose()?;
        let phone_ct = f
            .phone_number
            .as_deref()
            .map(|v| seal("phone_number", v.as_bytes()))
            .transpose()?;
        let email_ct = f
            .email
            .as_deref()
            .map(|v| seal("email", v.as_bytes()))
            .transpose()?;
        let attributes_ct = match &f.attributes {
            Some(a) => Some(seal(
                "attributes",
                &serde_json::to_vec(a).map_err(|_| VaultError::Integrity("attributes"))?,
            )?),
            None => None,
        };
        row.reference_ct = reference_ct;
        row.name_ct = name_ct;
        row.phone_ct = phone_ct;
        row.email_ct = email_ct;
        row.attributes_ct = attributes_ct;
        row.reference_bidx = Some(
            self.vault
                .blind_index(&account, "reference", &f.reference)
                .await?,
        );
        row.phone_bidx = match &f.phone_number {
            Some(p) => Some(self.vault.blind_index(&account, "phone_number", p).await?),
            None => None,
        };
        row.email_bidx = match &f.email {
            Some(e) => Some(
                self.vault
                    .blind_index(&account, "email", &model::email_index_value(e))
                    .await?,
            ),
            None => None,
        };
        Ok(())
    }

    fn decrypt(&self, row: &ContactRow, key: &SubjectKey) -> ContactsResult<ContactFields> {
        let open = |column: &'static str, ct: &Option<Vec<u8>>| -> ContactsResult<Option<String>> {
            ct.as_ref()
                .map(|c| {
                    key.open(&field(row, column), c)
                        .map_err(ContactsError::from)
                        .and_then(text)
                })
                .transpose()
        };
        let attributes = match &row.attributes_ct {
            Some(c) => Some(
                serde_json::from_slice::<Map<String, Value>>(
                    &key.open(&field(row, "attributes"), c)?,
                )
                .map_err(|_| ContactsError::Vault(VaultError::Integrity("attributes")))?,
            ),
            None => None,
        };
        Ok(ContactFields {
            reference: open("reference", &row.reference_ct)?.unwrap_or_default(),
            name: open("name", &row.name_ct)?,
            phone_number: open("phone_number", &row.phone_ct)?,
            email: open("email", &row.email_ct)?,
            attributes,
        })
    }

    /// The contact as shown: decrypted, or erased if its key is gone.
    async fn view(&self, row: &ContactRow) -> ContactsResult<Contact> {
        if row.erased_at_ms.is_some() {
            return Ok(erased(row));
        }
        let key = match self.vault.subject(&row.account_id, &row.id).await {
            Ok(k) => k,
            // The key was destroyed but the erasure did not finish (a crash between the two
            // steps): finish it now.
            Err(VaultError::Erased) => {
                let done = self.store.mark_contact_erased(&row.id, now_ms()).await?;
                return Ok(erased(done.as_ref().unwrap_or(row)));
            }
            Err(e) => return Err(e.into()),
        };
        let f = self.decrypt(row, &key)?;
        Ok(Contact {
            id: row.id.clone(),
            account_id: row.account_id.clone(),
            status: ContactStatus::Active,
            reference: Some(f.reference),
            name: f.name,
            phone_number: f.phone_number,
            email: f.email,
            attributes: f.attributes,
            created_at_ms: row.created_at_ms,
            updated_at_ms: row.updated_at_ms,
            erased_at_ms: None,
        })
    }

    async fn owned(&self, who: &Principal, id: &str) -> ContactsResult<ContactRow> {
        if !haven_identity::is_id(model::CONTACT_PREFIX, id) {
            return Err(ContactsError::NotFound);
        }
        match self.store.get_contact(id).await? {
            Some(row) if row.account_id == who.account_id => Ok(row),
            _ => Err(ContactsError::NotFound),
        }
    }

    pub async fn create(
        &self,
        who: &Principal,
        meta: &RequestMeta,
        fields: ContactFields,
    ) -> ContactsResult<Contact> {
        who.require(WRITE)?;
        let now = now_ms();
        let mut row = ContactRow {
            id: haven_platform::id::new_id(model::CONTACT_PREFIX),
            account_id: who.account_id.clone(),
            created_at_ms: now,
            updated_at_ms: now,
            ..ContactRow::default()
        };
        let key = self.vault.create_subject(&row.account_id, &row.id).await?;
        self.seal_into(&mut row, &key, &fields).await?;
        if let Err(e) = self.store.insert_contact(&row).await {
            // Leave no key behind for a contact that was never stored.
            if let Err(cleanup) = self.vault.erase_subject(&row.id).await {
                tracing::warn!(error = %cleanup, "removing the key of an unstored contact failed");
            }
            return Err(e.into());
        }
        self.audit(who, meta, AuditAction::ContactCreated, &row.id, false)
            .await;
        Ok(Contact {
            id: row.id,
            account_id: row.account_id,
            status: ContactStatus::Active,
            reference: Some(fields.reference),
            name: fields.name,
            phone_number: fields.phone_number,
            email: fields.email,
            attributes: fields.attributes,
            created_at_ms: now,
            updated_at_ms: now,
            erased_at_ms: None,
        })
    }

    pub async fn get(
        &self,
        who: &Principal,
        meta: &RequestMeta,
        id: &str,
    ) -> ContactsResult<Contact> {
        who.require(READ)?;
        let row = self.owned(who, id).await?;
        let contact = self.view(&row).await?;
        self.audit(who, meta, AuditAction::ContactRead, id, true)
            .await;
        Ok(contact)
    }

    /// The account's contacts, optionally matched by equality on reference, phone or email.
    pub async fn list(
        &self,
        who: &Principal,
        meta: &RequestMeta,
        search: &ContactSearch,
        page: &PageRequest,
    ) -> ContactsResult<Page<Contact>> {
        who.require(READ)?;
        let account = &who.account_id;
        let mut errors = Vec::new();
        let mut filter = IndexFilter::default();
        if let Some(r) = &search.reference {
            let v = model::reference("reference", r, &mut errors);
            filter.reference = Some(self.vault.blind_index(account, "reference", &v).await?);
        }
        if let Some(p) = &search.phone_number {
            let v = model::phone_number("phone_number", p, &mut errors);
            filter.phone = Some(self.vault.blind_index(account, "phone_number", &v).await?);
        }
        if let Some(e) = &search.email {
            let v = model::email_index_value(&model::email("email", e, &mut errors));
            filter.email = Some(self.vault.blind_index(account, "email", &v).await?);
        }
        if !errors.is_empty() {
            return Err(ContactsError::Invalid(errors));
        }
        let rows = self.store.list_contacts(account, &filter, page).await?;
        let page = Page::from_rows(rows, page, |r| &r.id);
        let mut items = Vec::with_capacity(page.items.len());
        for row in &page.items {
            items.push(self.view(row).await?);
            self.audit(who, meta, AuditAction::ContactRead, &row.id, true)
                .await;
        }
        Ok(Page {
            items,
            next_cursor: page.next_cursor,
        })
    }

    pub async fn update(
        &self,
        who: &Principal,
        meta: &RequestMeta,
        id: &str,
        patch: ContactPatch,
    ) -> ContactsResult<Contact> {
        who.require(WRITE)?;
        let mut row = self.owned(who, id).await?;
        if row.erased_at_ms.is_some() {
            return Err(ContactsError::Erased);
        }
        let key = self.vault.subject(&row.account_id, &row.id).await?;
        let mut f = self.decrypt(&row, &key)?;
        if let Some(r) = patch.reference {
            f.reference = r;
        }
        if let Some(n) = patch.name {
            f.name = n;
        }
        if let Some(p) = patch.phone_number {
            f.phone_number = p;
        }
        if let Some(e) = patch.email {
            f.email = e;
        }
        if let Some(a) = patch.attributes {
            f.attributes = a;
        }
        self.seal_into(&mut row, &key, &f).await?;
        row.updated_at_ms = now_ms();
        if !self.store.update_contact(&row).await? {
            return Err(ContactsError::Erased);
        }
        self.audit(who, meta, AuditAction::ContactUpdated, id, false)
            .await;
        self.view(&row).await
    }

    /// Erasure (GDPR art. 17): destroys the contact's key first, so that from this moment its
    /// data is unreadable wherever a copy exists, then drops the ciphertexts and indexes.
    /// Erasing an erased contact changes nothing.
    pub async fn erase(
        &self,
        who: &Principal,
        meta: &RequestMeta,
        id: &str,
    ) -> ContactsResult<Contact> {
        who.require(ADMIN)?;
        let row = self.owned(who, id).await?;
        if row.erased_at_ms.is_some() {
            return Ok(erased(&row));
        }
        self.vault.erase_subject(&row.id).await?;
        let done = self.store.mark_contact_erased(&row.id, now_ms()).await?;
        self.audit(who, meta, AuditAction::ContactErased, id, false)
            .await;
        Ok(erased(done.as_ref().unwrap_or(&row)))
    }
}
