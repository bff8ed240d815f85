//! Haven's cryptography, behind small types: the master key and sealing with it, keyed hashing of
//! random secrets, Ed25519-signed JWTs, and the self-signed TLS certificate. Everything uses
//! aws-lc-rs.

pub mod aead;
pub mod jwt;
pub mod keys;
pub mod otp;
pub mod ring;
pub mod tls;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the system random number generator failed")]
    Random,
    #[error("key material is malformed: {0}")]
    BadKey(&'static str),
    #[error("sealed data failed authentication (wrong key, or copied from elsewhere)")]
    Unseal,
    #[error("certificate generation failed: {0}")]
    Certificate(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| CryptoError::Random)?;
    Ok(out)
}

/// `prefix` followed by 256 random bits in base64url: the shape of every Haven secret.
pub fn random_secret(prefix: &str) -> Result<String, CryptoError> {
    let bytes = random_bytes::<32>()?;
    Ok(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// SHA-256, for fingerprints that are not secrets (idempotency, cache keys of non-secret input).
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let d = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
