//! AES-256-GCM as Haven uses it everywhere: a random 96-bit nonce in front of the ciphertext,
//! and associated data that names where the bytes belong. Data keys and blind-index keys.

use crate::CryptoError;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use std::fmt;

/// `nonce ‖ ciphertext ‖ tag`.
pub(crate) fn seal(
    key: &LessSafeKey,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let nonce_bytes = crate::random_bytes::<NONCE_LEN>()?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(plaintext);
    let mut body = out.split_off(NONCE_LEN);
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce_bytes),
        Aad::from(aad),
        &mut body,
    )
    .map_err(|_| CryptoError::Unseal)?;
    out.extend_from_slice(&body);
    Ok(out)
}

pub(crate) fn open(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(CryptoError::Unseal);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Unseal)?;
    let mut body = body.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(aad), &mut body)
        .map_err(|_| CryptoError::Unseal)?;
    Ok(plain.to_vec())
}

fn aes_key(raw: &[u8]) -> Result<LessSafeKey, CryptoError> {
    if raw.len() != 32 {
        return Err(CryptoError::BadKey("data keys are 32 bytes"));
    }
    Ok(LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, raw).map_err(|_| CryptoError::BadKey("aes key"))?,
    ))
}

/// A 256-bit AES-GCM key that encrypts data (an account's data key, or a data subject's key).
/// It is stored only wrapped by the key above it.
pub struct DataKey {
    key: LessSafeKey,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey")
    }
}

impl DataKey {
    /// A fresh random key and its raw bytes (to be wrapped, then dropped).
    pub fn generate() -> Result<(Self, [u8; 32]), CryptoError> {
        let raw = crate::random_bytes::<32>()?;
        Ok((Self::from_bytes(&raw)?, raw))
    }

    pub fn from_bytes(raw: &[u8]) -> Result<Self, CryptoError> {
        Ok(Self { key: aes_key(raw)? })
    }

    /// Encrypts with `aad` bound: the same bytes under other associated data do not open.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        seal(&self.key, aad, plaintext)
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open(&self.key, aad, sealed)
    }
}

/// A keyed blind index: HMAC-SHA-256 of a normalized value under an account's index key, so a
/// field can be found by equality without being stored in the clear, and equal values in two
/// accounts do not match.
#[derive(Clone)]
pub struct BlindIndexKey {
    key: hmac::Key,
}

impl fmt::Debug for BlindIndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindIndexKey")
    }
}

impl BlindIndexKey {
    pub fn from_bytes(raw: &[u8]) -> Result<Self, CryptoError> {
        if raw.len() != 32 {
            return Err(CryptoError::BadKey("index keys are 32 bytes"));
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, raw),
        })
    }

    /// The index of `value` for the field `field` (the field is mixed in, so a phone number and
    /// a reference with the same text do not share an index).
    pub fn index(&self, field: &str, value: &str) -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(field.as_bytes());
        ctx.update(&[0]);
        ctx.update(value.as_bytes());
        ctx.sign().as_ref().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_key_binds_associated_data() {
        let (k, raw) = DataKey::generate().unwrap_or_else(|e| panic!("{e}"));
        let sealed = k
            .seal(b"contacts|name|con_1", b"Ada")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!sealed.windows(3).any(|w| w == b"Ada"));
        let again = DataKey::from_bytes(&raw).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            again.open(b"contacts|name|con_1", &sealed).ok().as_deref(),
            Some(&b"Ada"[..])
        );
        assert!(again.open(b"contacts|name|con_2", &sealed).is_err());
        assert!(again.open(b"contacts|email|con_1", &sealed).is_err());
        let (other, _) = DataKey::generate().unwrap_or_else(|e| panic!("{e}"));
        assert!(other.open(b"contacts|name|con_1", &sealed).is_err());
    }

    #[test]
    fn blind_index_is_keyed_and_field_separated() {
        let a = BlindIndexKey::from_bytes(&[1; 32]).unwrap_or_else(|e| panic!("{e}"));
        let b = BlindIndexKey::from_bytes(&[2; 32]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            a.index("phone", "+15551234567"),
            a.index("phone", "+15551234567")
        );
        assert_ne!(
            a.index("phone", "+15551234567"),
            b.index("phone", "+15551234567")
        );
        assert_ne!(a.index("phone", "x"), a.index("reference", "x"));
    }
}
