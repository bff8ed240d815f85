//! The vault's storage port.

use haven_platform::store::StoreResult;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPurpose {
    /// Encrypts account-level data and wraps subject keys; rotates on a schedule.
    Data,
    /// Keys the blind indexes; never rotates (an index must stay comparable).
    Index,
}

impl KeyPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Index => "index",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "data" => Some(Self::Data),
            "index" => Some(Self::Index),
            _ => None,
        }
    }
}

/// An account key as stored: wrapped by the master key ring.
#[derive(Debug, Clone)]
pub struct AccountKeyRecord {
    /// `dk_…` (data) or `ik_…` (index).
    pub id: String,
    pub account_id: String,
    pub purpose: KeyPurpose,
    pub wrapped: Vec<u8>,
    pub created_at_ms: i64,
    /// Set when a newer key took over: this one only decrypts.
    pub retired_at_ms: Option<i64>,
}

/// A data subject's key as stored: wrapped by one of its account's data keys. Deleting the row
/// is the erasure.
#[derive(Debug, Clone)]
pub struct SubjectKeyRecord {
    pub subject_id: String,
    pub account_id: String,
    /// `sk_…`, written beside every ciphertext made with the key.
    pub key_id: String,
    pub data_key_id: String,
    pub wrapped: Vec<u8>,
    pub created_at_ms: i64,
}

/// Kinds of material wrapped directly by the master key ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrappedKind {
    /// `system_secrets` (the API-key pepper, the audit signing key).
    System,
    /// OAuth token signing keys.
    SigningKey,
    /// Account data and index keys.
    AccountKey,
}

impl WrappedKind {
    /// The associated data the material is wrapped under: the place it belongs to.
    pub fn context(self, id: &str) -> String {
        match self {
            Self::System => format!("haven:system:{id}"),
            Self::SigningKey => format!("haven:signing-key:{id}"),
            Self::AccountKey => format!("haven:account-key:{id}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WrappedItem {
    pub kind: WrappedKind,
    pub id: String,
    pub wrapped: Vec<u8>,
}

#[async_trait::async_trait]
pub trait VaultStore: Send + Sync {
    async fn active_account_key(
        &self,
        account_id: &str,
        purpose: KeyPurpose,
    ) -> StoreResult<Option<AccountKeyRecord>>;
    async fn get_account_key(&self, id: &str) -> StoreResult<Option<AccountKeyRecord>>;
    /// Inserts `key` as the account's active key of its purpose, retiring `retire` in the same
    /// transaction. Returns false (changing nothing) if another node got there first: `retire`
    /// was no longer active, or (with no `retire`) an active key already exists.
    async fn insert_account_key(
        &self,
        key: &AccountKeyRecord,
        retire: Option<&str>,
    ) -> StoreResult<bool>;
    /// Active data keys created before `before_ms`, oldest first.
    async fn data_keys_due(&self, before_ms: i64, limit: i64)
    -> StoreResult<Vec<AccountKeyRecord>>;

    async fn insert_subject_key(&self, key: &SubjectKeyRecord) -> StoreResult<()>;
    async fn get_subject_key(&self, subject_id: &str) -> StoreResult<Option<SubjectKeyRecord>>;
    /// Destroys the key. Returns whether it existed.
    async fn delete_subject_key(&self, subject_id: &str) -> StoreResult<bool>;

    /// Everything the master key ring wraps.
    async fn list_master_wrapped(&self) -> StoreResult<Vec<WrappedItem>>;
    /// Replaces `item.wrapped` by `rewrapped` if it is still `item.wrapped`.
    async fn replace_master_wrapped(
        &self,
        item: &WrappedItem,
        rewrapped: &[u8],
    ) -> StoreResult<bool>;
}
