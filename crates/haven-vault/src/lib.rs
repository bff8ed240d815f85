//! Encryption at rest, as one service every API uses.
//!
//! The key hierarchy:
//! - the **master key ring** (`haven_crypto::ring::KeyProvider`), outside the database, wraps
//! - each account's **data keys** (`dk_…`, one active, older ones decrypt only; rotated on a
//!   schedule) and its **index key** (`ik_…`, for blind indexes), which wrap or key
//! - each data subject's **subject key** (`sk_…`, a patient or other contact), which encrypts
//!   that subject's fields. Destroying it is the erasure (crypto-shredding).
//!
//! Every ciphertext carries the id of its key and is bound, as associated data, to the account,
//! table, column and row it belongs to: copied anywhere else it fails to decrypt.

pub mod store;

use haven_crypto::CryptoError;
use haven_crypto::aead::{BlindIndexKey, DataKey};
use haven_crypto::ring::KeyProvider;
use haven_platform::id::new_id;
use haven_platform::store::StoreError;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
pub use store::{
    AccountKeyRecord, KeyPurpose, SubjectKeyRecord, VaultStore, WrappedItem, WrappedKind,
};

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The subject's key was destroyed: its data is gone by design.
    #[error("the data subject was erased")]
    Erased,
    /// Stored bytes failed authentication: moved, altered, or under an unknown key.
    #[error("stored ciphertext failed authentication ({0})")]
    Integrity(&'static str),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type VaultResult<T> = Result<T, VaultError>;

/// Where a ciphertext belongs. All four parts are bound to it.
#[derive(Debug, Clone, Copy)]
pub struct FieldRef<'a> {
    pub account_id: &'a str,
    pub table: &'static str,
    pub column: &'static str,
    pub row_id: &'a str,
}

impl FieldRef<'_> {
    fn aad(&self, key_id: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        for part in [
            "haven:field:v1",
            self.account_id,
            self.table,
            self.column,
            self.row_id,
            key_id,
        ] {
            out.extend_from_slice(part.as_bytes());
            out.push(0);
        }
        out
    }
}

const ENVELOPE_V1: u8 = 1;

/// `1 ‖ len(key id) ‖ key id ‖ nonce ‖ ciphertext ‖ tag`.
fn envelope(key_id: &str, sealed: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + key_id.len() + sealed.len());
    out.push(ENVELOPE_V1);
    out.push(u8::try_from(key_id.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(&sealed);
    out
}

fn parse_envelope(bytes: &[u8]) -> VaultResult<(&str, &[u8])> {
    let bad = VaultError::Integrity("malformed envelope");
    let (&version, rest) = bytes.split_first().ok_or(VaultError::Integrity("empty"))?;
    if version != ENVELOPE_V1 {
        return Err(bad);
    }
    let (&len, rest) = rest
        .split_first()
        .ok_or(VaultError::Integrity("truncated"))?;
    let len = usize::from(len);
    if rest.len() < len {
        return Err(bad);
    }
    let (kid, body) = rest.split_at(len);
    let kid = std::str::from_utf8(kid).map_err(|_| VaultError::Integrity("key id"))?;
    Ok((kid, body))
}

/// The key id recorded in a stored ciphertext (for reports; not a secret).
pub fn key_id_of(ciphertext: &[u8]) -> Option<String> {
    parse_envelope(ciphertext).ok().map(|(k, _)| k.to_owned())
}

/// A data subject's key, unwrapped for the length of one operation.
#[derive(Debug)]
pub struct SubjectKey {
    key_id: String,
    key: DataKey,
}

impl SubjectKey {
    pub fn seal(&self, field: &FieldRef<'_>, plaintext: &[u8]) -> VaultResult<Vec<u8>> {
        let sealed = self.key.seal(&field.aad(&self.key_id), plaintext)?;
        Ok(envelope(&self.key_id, sealed))
    }

    pub fn open(&self, field: &FieldRef<'_>, ciphertext: &[u8]) -> VaultResult<Vec<u8>> {
        let (kid, body) = parse_envelope(ciphertext)?;
        if kid != self.key_id {
            return Err(VaultError::Integrity("sealed under another subject key"));
        }
        self.key
            .open(&field.aad(kid), body)
            .map_err(|_| VaultError::Integrity("authentication failed"))
    }
}

#[derive(Debug, Clone)]
pub struct VaultSettings {
    /// Age after which an account's data key is replaced by a new one.
    pub data_key_max_age_ms: i64,
    /// How long a node trusts its cached idea of which data key is active.
    pub active_key_cache_ms: i64,
}

impl Default for VaultSettings {
    fn default() -> Self {
        Self {
            data_key_max_age_ms: 90 * 86_400_000,
            active_key_cache_ms: 60_000,
        }
    }
}

/// What `rewrap_master` did.
#[derive(Debug, Clone, Default)]
pub struct RewrapReport {
    pub total: usize,
    pub rewrapped: usize,
    /// For each master key id, how many items it still wraps after the pass.
    pub usage: Vec<(String, usize)>,
}

pub struct Vault {
    store: Arc<dyn VaultStore>,
    master: Arc<dyn KeyProvider>,
    settings: VaultSettings,
    /// Unwrapped account data keys by id; they never change once made.
    data_keys: RwLock<HashMap<String, Arc<DataKey>>>,
    /// Account id → (active data key id, when learned).
    active: RwLock<HashMap<String, (String, i64)>>,
    index_keys: RwLock<HashMap<String, BlindIndexKey>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault")
    }
}

const CACHE_LIMIT: usize = 100_000;

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

fn subject_aad(account_id: &str, subject_id: &str, key_id: &str, data_key_id: &str) -> Vec<u8> {
    format!("haven:subject-key:v1\0{account_id}\0{subject_id}\0{key_id}\0{data_key_id}")
        .into_bytes()
}

impl Vault {
    pub fn new(
        store: Arc<dyn VaultStore>,
        master: Arc<dyn KeyProvider>,
        settings: VaultSettings,
    ) -> Self {
        Self {
            store,
            master,
            settings,
            data_keys: RwLock::new(HashMap::new()),
            active: RwLock::new(HashMap::new()),
            index_keys: RwLock::new(HashMap::new()),
        }
    }

    pub fn master(&self) -> &Arc<dyn KeyProvider> {
        &self.master
    }

    fn unwrap_account_key(&self, rec: &AccountKeyRecord) -> VaultResult<Vec<u8>> {
        self.master
            .unwrap(&WrappedKind::AccountKey.context(&rec.id), &rec.wrapped)
            .map_err(|e| match e {
                CryptoError::Unseal => {
                    VaultError::Integrity("an account key is not wrapped by any master key held")
                }
                other => other.into(),
            })
    }

    fn new_account_key(
        &self,
        account_id: &str,
        purpose: KeyPurpose,
    ) -> VaultResult<(AccountKeyRecord, [u8; 32])> {
        let raw = haven_crypto::random_bytes::<32>()?;
        let id = new_id(match purpose {
            KeyPurpose::Data => "dk",
            KeyPurpose::Index => "ik",
        });
        let wrapped = self
            .master
            .wrap(&WrappedKind::AccountKey.context(&id), &raw)?;
        Ok((
            AccountKeyRecord {
                id,
                account_id: account_id.to_owned(),
                purpose,
                wrapped,
                created_at_ms: haven_platform::clock::now_ms(),
                retired_at_ms: None,
            },
            raw,
        ))
    }

    async fn data_key_by_id(&self, id: &str) -> VaultResult<Arc<DataKey>> {
        if let Some(k) = read(&self.data_keys).get(id) {
            return Ok(Arc::clone(k));
        }
        let rec = self
            .store
            .get_account_key(id)
            .await?
            .filter(|r| r.purpose == KeyPurpose::Data)
            .ok_or(VaultError::Integrity("unknown data key"))?;
        let key = Arc::new(DataKey::from_bytes(&self.unwrap_account_key(&rec)?)?);
        let mut cache = write(&self.data_keys);
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(id.to_owned(), Arc::clone(&key));
        Ok(key)
    }

    /// The account's active data key, made on first use.
    async fn active_data_key(&self, account_id: &str) -> VaultResult<(String, Arc<DataKey>)> {
        let now = haven_platform::clock::now_ms();
        let cached = read(&self.active)
            .get(account_id)
            .filter(|(_, at)| now - at < self.settings.active_key_cache_ms)
            .map(|(id, _)| id.clone());
        if let Some(id) = cached {
            return Ok((id.clone(), self.data_key_by_id(&id).await?));
        }
        let rec = match self
            .store
            .active_account_key(account_id, KeyPurpose::Data)
            .await?
        {
            Some(r) => r,
            None => {
                let (rec, _) = self.new_account_key(account_id, KeyPurpose::Data)?;
                if !self.store.insert_account_key(&rec, None).await? {
                    // Another node made it first.
                    tracing::debug!("account data key made concurrently; using the stored one");
                }
                self.store
                    .active_account_key(account_id, KeyPurpose::Data)
                    .await?
                    .ok_or(VaultError::Integrity("account data key vanished"))?
            }
        };
        let key = self.data_key_by_id(&rec.id).await?;
        let mut active = write(&self.active);
        if active.len() >= CACHE_LIMIT {
            active.clear();
        }
        active.insert(account_id.to_owned(), (rec.id.clone(), now));
        Ok((rec.id, key))
    }

    /// Encrypts account-level data (not tied to one subject) under the account's active data key.
    pub async fn seal_for_account(
        &self,
        field: &FieldRef<'_>,
        plaintext: &[u8],
    ) -> VaultResult<Vec<u8>> {
        let (kid, key) = self.active_data_key(field.account_id).await?;
        Ok(envelope(&kid, key.seal(&field.aad(&kid), plaintext)?))
    }

    pub async fn open_for_account(
        &self,
        field: &FieldRef<'_>,
        ciphertext: &[u8],
    ) -> VaultResult<Vec<u8>> {
        let (kid, body) = parse_envelope(ciphertext)?;
        let key = self.data_key_by_id(kid).await?;
        key.open(&field.aad(kid), body)
            .map_err(|_| VaultError::Integrity("authentication failed"))
    }

    /// Makes and stores a key for a new data subject.
    pub async fn create_subject(
        &self,
        account_id: &str,
        subject_id: &str,
    ) -> VaultResult<SubjectKey> {
        let (dk_id, dk) = self.active_data_key(account_id).await?;
        let (key, raw) = DataKey::generate()?;
        let key_id = new_id("sk");
        let wrapped = dk.seal(&subject_aad(account_id, subject_id, &key_id, &dk_id), &raw)?;
        self.store
            .insert_subject_key(&SubjectKeyRecord {
                subject_id: subject_id.to_owned(),
                account_id: account_id.to_owned(),
                key_id: key_id.clone(),
                data_key_id: dk_id,
                wrapped,
                created_at_ms: haven_platform::clock::now_ms(),
            })
            .await?;
        Ok(SubjectKey { key_id, key })
    }

    /// The subject's key, or `Erased` once it was destroyed.
    pub async fn subject(&self, account_id: &str, subject_id: &str) -> VaultResult<SubjectKey> {
        let rec = self
            .store
            .get_subject_key(subject_id)
            .await?
            .ok_or(VaultError::Erased)?;
        if rec.account_id != account_id {
            return Err(VaultError::Integrity("subject key of another account"));
        }
        let dk = self.data_key_by_id(&rec.data_key_id).await?;
        let raw = dk
            .open(
                &subject_aad(account_id, subject_id, &rec.key_id, &rec.data_key_id),
                &rec.wrapped,
            )
            .map_err(|_| VaultError::Integrity("subject key failed authentication"))?;
        Ok(SubjectKey {
            key_id: rec.key_id,
            key: DataKey::from_bytes(&raw)?,
        })
    }

    /// Crypto-shredding: destroys the subject's key. Returns whether it still existed.
    pub async fn erase_subject(&self, subject_id: &str) -> VaultResult<bool> {
        Ok(self.store.delete_subject_key(subject_id).await?)
    }

    async fn index_key(&self, account_id: &str) -> VaultResult<BlindIndexKey> {
        if let Some(k) = read(&self.index_keys).get(account_id) {
            return Ok(k.clone());
        }
        let rec = match self
            .store
            .active_account_key(account_id, KeyPurpose::Index)
            .await?
        {
            Some(r) => r,
            None => {
                let (rec, _) = self.new_account_key(account_id, KeyPurpose::Index)?;
                self.store.insert_account_key(&rec, None).await?;
                self.store
                    .active_account_key(account_id, KeyPurpose::Index)
                    .await?
                    .ok_or(VaultError::Integrity("account index key vanished"))?
            }
        };
        let key = BlindIndexKey::from_bytes(&self.unwrap_account_key(&rec)?)?;
        let mut cache = write(&self.index_keys);
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(account_id.to_owned(), key.clone());
        Ok(key)
    }

    /// The keyed blind index of an already normalized value.
    pub async fn blind_index(
        &self,
        account_id: &str,
        field: &str,
        value: &str,
    ) -> VaultResult<Vec<u8>> {
        Ok(self.index_key(account_id).await?.index(field, value))
    }

    /// Replaces the account's data key now. New data uses the new key; the old one stays for
    /// decryption. Returns the new key's id, or `None` if another node rotated it first.
    pub async fn rotate_account(&self, account_id: &str) -> VaultResult<Option<String>> {
        let current = self
            .store
            .active_account_key(account_id, KeyPurpose::Data)
            .await?;
        let (rec, _) = self.new_account_key(account_id, KeyPurpose::Data)?;
        let done = self
            .store
            .insert_account_key(&rec, current.as_ref().map(|c| c.id.as_str()))
            .await?;
        write(&self.active).remove(account_id);
        Ok(done.then_some(rec.id))
    }

    /// The scheduled rotation: every data key older than the configured age is replaced.
    /// Returns how many were.
    pub async fn rotate_due(&self) -> VaultResult<usize> {
        let before = haven_platform::clock::now_ms() - self.settings.data_key_max_age_ms;
        let mut rotated = 0;
        loop {
            let due = self.store.data_keys_due(before, 100).await?;
            if due.is_empty() {
                return Ok(rotated);
            }
            let mut progressed = false;
            for rec in due {
                let (new, _) = self.new_account_key(&rec.account_id, KeyPurpose::Data)?;
                if self.store.insert_account_key(&new, Some(&rec.id)).await? {
                    rotated += 1;
                    progressed = true;
                }
                write(&self.active).remove(&rec.account_id);
            }
            if !progressed {
                return Ok(rotated);
            }
        }
    }

    /// Re-wraps everything the master key ring wraps under its active key, reporting progress
    /// as `(done, total)`. Safe while servers run: each replacement is a compare-and-set.
    pub async fn rewrap_master(
        &self,
        mut progress: impl FnMut(usize, usize),
    ) -> VaultResult<RewrapReport> {
        self.master.refresh()?;
        let active = self.master.active_id();
        let items = self.store.list_master_wrapped().await?;
        let total = items.len();
        let mut rewrapped = 0;
        for (i, item) in items.iter().enumerate() {
            if self.master.wrapped_by(&item.wrapped).as_deref() != Some(active.as_str()) {
                let context = item.kind.context(&item.id);
                let plain = self.master.unwrap(&context, &item.wrapped).map_err(|_| {
                    VaultError::Integrity("an item is not wrapped by any master key held")
                })?;
                let fresh = self.master.wrap(&context, &plain)?;
                if self.store.replace_master_wrapped(item, &fresh).await? {
                    rewrapped += 1;
                }
            }
            progress(i + 1, total);
        }
        Ok(RewrapReport {
            total,
            rewrapped,
            usage: self.master_usage().await?,
        })
    }

    /// How many stored items each master key wraps (`legacy` for items wrapped before key ids
    /// were recorded).
    pub async fn master_usage(&self) -> VaultResult<Vec<(String, usize)>> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for id in self.master.key_ids() {
            counts.insert(id, 0);
        }
        for item in self.store.list_master_wrapped().await? {
            let id = self
                .master
                .wrapped_by(&item.wrapped)
                .unwrap_or_else(|| "legacy".to_owned());
            *counts.entry(id).or_default() += 1;
        }
        let mut out: Vec<_> = counts.into_iter().collect();
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip_and_binding() {
        let (key, _) = DataKey::generate().unwrap_or_else(|e| panic!("{e}"));
        let sk = SubjectKey {
            key_id: "sk_1".into(),
            key,
        };
        let f = FieldRef {
            account_id: "acc_1",
            table: "contacts",
            column: "name",
            row_id: "con_1",
        };
        let ct = sk
            .seal(&f, b"Ada Lovelace")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(key_id_of(&ct).as_deref(), Some("sk_1"));
        assert_eq!(sk.open(&f, &ct).ok().as_deref(), Some(&b"Ada Lovelace"[..]));
        for other in [
            FieldRef {
                row_id: "con_2",
                ..f
            },
            FieldRef {
                column: "email",
                ..f
            },
            FieldRef {
                account_id: "acc_2",
                ..f
            },
            FieldRef {
                table: "messages",
                ..f
            },
        ] {
            assert!(matches!(
                sk.open(&other, &ct),
                Err(VaultError::Integrity(_))
            ));
        }
        let mut tampered = ct.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(sk.open(&f, &tampered).is_err());
        assert!(sk.open(&f, &[]).is_err());
        assert!(sk.open(&f, &[1, 200, 1]).is_err());
    }
}
