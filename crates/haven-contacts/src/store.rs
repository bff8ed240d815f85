//! The contacts storage port. Rows hold only ciphertexts and blind indexes.

use haven_platform::page::PageRequest;
use haven_platform::store::StoreResult;

#[derive(Debug, Clone, Default)]
pub struct ContactRow {
    pub id: String,
    pub account_id: String,
    pub reference_bidx: Option<Vec<u8>>,
    pub phone_bidx: Option<Vec<u8>>,
    pub email_bidx: Option<Vec<u8>>,
    pub reference_ct: Option<Vec<u8>>,
    pub name_ct: Option<Vec<u8>>,
    pub phone_ct: Option<Vec<u8>>,
    pub email_ct: Option<Vec<u8>>,
    pub attributes_ct: Option<Vec<u8>>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub erased_at_ms: Option<i64>,
}

/// Blind indexes to match (all given must match).
#[derive(Debug, Clone, Default)]
pub struct IndexFilter {
    pub reference: Option<Vec<u8>>,
    pub phone: Option<Vec<u8>>,
    pub email: Option<Vec<u8>>,
}

#[async_trait::async_trait]
pub trait ContactStore: Send + Sync {
    /// `Conflict` if the account already has a contact with the same reference.
    async fn insert_contact(&self, row: &ContactRow) -> StoreResult<()>;
    async fn get_contact(&self, id: &str) -> StoreResult<Option<ContactRow>>;
    async fn list_contacts(
        &self,
        account_id: &str,
        filter: &IndexFilter,
        page: &PageRequest,
    ) -> StoreResult<Vec<ContactRow>>;
    /// Replaces the sealed fields and indexes of a contact that is not erased. Returns whether
    /// it was. `Conflict` on a reference clash.
    async fn update_contact(&self, row: &ContactRow) -> StoreResult<bool>;
    /// Drops every ciphertext and index of the contact and marks it erased (once).
    async fn mark_contact_erased(&self, id: &str, now_ms: i64) -> StoreResult<Option<ContactRow>>;
}
