//! The master key (key-encryption key), sealing under it, and the keyed hash of API secrets.

use crate::CryptoError;
use aws_lc_rs::aead::{AES_256_GCM, LessSafeKey, UnboundKey};
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// 256-bit key that wraps every other key Haven stores. Never printed, never stored in the
/// database; only a short id derived from it is recorded beside what it sealed.
pub struct MasterKey {
    key: LessSafeKey,
    id: String,
    tag: [u8; 8],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    pub fn from_bytes(raw: &[u8]) -> Result<Self, CryptoError> {
        if raw.len() != 32 {
            return Err(CryptoError::BadKey("master key must be 32 bytes"));
        }
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, raw).map_err(|_| CryptoError::BadKey("aes key"))?,
        );
        // The id names the key without revealing it: HMAC of a constant under the key.
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, raw),
            b"haven master key id",
        );
        let id = format!("mk_{}", hex_prefix(tag.as_ref(), 8));
        let mut short = [0u8; 8];
        short.copy_from_slice(&tag.as_ref()[..8]);
        Ok(Self {
            key,
            id,
            tag: short,
        })
    }

    /// Parses the base64 form used in key files and `HAVEN_MASTER_KEY`.
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let raw = STANDARD
            .decode(text.trim())
            .map_err(|_| CryptoError::BadKey("master key is not base64"))?;
        Self::from_bytes(&raw)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The 8 bytes the id is made of; written in front of what the key wraps (see `ring`).
    pub(crate) fn tag(&self) -> &[u8; 8] {
        &self.tag
    }

    /// AES-256-GCM with a random nonce; `context` is bound as associated data, so sealed bytes
    /// moved to another place (another row, another purpose) fail to open.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        crate::aead::seal(&self.key, context.as_bytes(), plaintext)
    }

    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        crate::aead::open(&self.key, context.as_bytes(), sealed)
    }
}

/// Writes a file readable only by its owner, failing if it already exists.
pub fn write_private_file(path: &Path, content: &[u8]) -> Result<(), CryptoError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content)?;
    f.sync_all()?;
    Ok(())
}

fn hex_prefix(bytes: &[u8], n: usize) -> String {
    bytes.iter().take(n).map(|b| format!("{b:02x}")).collect()
}

/// Keyed hash of high-entropy random secrets (API key secrets). A fast keyed hash is right here:
/// the secrets have 256 bits of entropy, so slowness buys nothing, and the key (the "pepper",
/// itself sealed under the master key in the database) means a stolen database alone cannot
/// even test a guess.
#[derive(Clone)]
pub struct SecretHasher {
    key: hmac::Key,
}

impl fmt::Debug for SecretHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHasher")
    }
}

impl SecretHasher {
    pub fn new(pepper: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, pepper),
        }
    }

    pub fn hash(&self, secret: &str) -> Vec<u8> {
        hmac::sign(&self.key, secret.as_bytes()).as_ref().to_vec()
    }

    /// Constant-time comparison against a stored hash.
    pub fn verify(&self, secret: &str, stored: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let computed = self.hash(secret);
        computed.len() == stored.len() && bool::from(computed.as_slice().ct_eq(stored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_binds_context() {
        let k = MasterKey::from_bytes(&[7u8; 32]).unwrap_or_else(|e| panic!("{e}"));
        let sealed = k.seal("row:1", b"hello").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            k.open("row:1", &sealed).ok().as_deref(),
            Some(&b"hello"[..])
        );
        assert!(k.open("row:2", &sealed).is_err());
        let other = MasterKey::from_bytes(&[8u8; 32]).unwrap_or_else(|e| panic!("{e}"));
        assert!(other.open("row:1", &sealed).is_err());
        assert_ne!(k.id(), other.id());
    }

    #[test]
    fn hasher_verifies_only_the_secret() {
        let h = SecretHasher::new(b"pepper");
        let stored = h.hash("hks_secret");
        assert!(h.verify("hks_secret", &stored));
        assert!(!h.verify("hks_secreT", &stored));
        assert!(!SecretHasher::new(b"other").verify("hks_secret", &stored));
    }
}
