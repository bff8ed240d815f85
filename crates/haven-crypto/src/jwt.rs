//! Compact JWS with exactly one algorithm, EdDSA (Ed25519). Accepting a single algorithm chosen
//! by the server, never by the token, rules out `alg: none` and algorithm-confusion attacks.

use crate::CryptoError;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

pub const ALG: &str = "EdDSA";
/// RFC 9068 media type of JWT access tokens.
pub const TYP: &str = "at+jwt";
/// Longest token we will look at; anything larger is not ours.
pub const MAX_TOKEN_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a compact JWS")]
    Malformed,
    #[error("algorithm or type not accepted")]
    Algorithm,
    #[error("signature does not verify")]
    Signature,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub alg: String,
    pub typ: String,
    pub kid: String,
}

/// An Ed25519 key that signs access tokens.
pub struct SigningKey {
    kid: String,
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.kid)
    }
}

impl SigningKey {
    /// A fresh key and its PKCS#8 document (to be sealed before it is stored).
    pub fn generate(kid: String) -> Result<(Self, Vec<u8>), CryptoError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| CryptoError::Random)?;
        let pkcs8 = doc.as_ref().to_vec();
        Ok((Self::from_pkcs8(kid, &pkcs8)?, pkcs8))
    }

    pub fn from_pkcs8(kid: String, pkcs8: &[u8]) -> Result<Self, CryptoError> {
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| CryptoError::BadKey("ed25519 pkcs8"))?;
        Ok(Self { kid, pair })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// Signs arbitrary bytes (tree heads).
    pub fn sign_raw(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }

    /// Signs `claims` as `header.payload.signature`.
    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<String, CryptoError> {
        let header = Header {
            alg: ALG.to_owned(),
            typ: TYP.to_owned(),
            kid: self.kid.clone(),
        };
        let h = serde_json::to_vec(&header).map_err(|_| CryptoError::BadKey("header"))?;
        let c = serde_json::to_vec(claims).map_err(|_| CryptoError::BadKey("claims"))?;
        let mut token = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(h),
            URL_SAFE_NO_PAD.encode(c)
        );
        let sig = self.pair.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
        Ok(token)
    }
}

/// The public JWK (RFC 8037) of an Ed25519 key.
pub fn public_jwk(kid: &str, public_key: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(public_key),
        "kid": kid,
        "alg": ALG,
        "use": "sig",
    })
}

/// A token split and its header checked, before the key is looked up by `kid`.
#[derive(Debug)]
pub struct Unverified<'a> {
    pub header: Header,
    signed: &'a str,
    payload: &'a str,
    signature: Vec<u8>,
}

/// Parses the header strictly: our algorithm and type only, a `kid` present.
pub fn parse(token: &str) -> Result<Unverified<'_>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header_raw = URL_SAFE_NO_PAD.decode(h).map_err(|_| JwtError::Malformed)?;
    let header: Header = serde_json::from_slice(&header_raw).map_err(|_| JwtError::Algorithm)?;
    if header.alg != ALG || !header.typ.eq_ignore_ascii_case(TYP) || header.kid.is_empty() {
        return Err(JwtError::Algorithm);
    }
    let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwtError::Malformed)?;
    let signed = &token[..h.len() + 1 + p.len()];
    Ok(Unverified {
        header,
        signed,
        payload: p,
        signature,
    })
}

impl Unverified<'_> {
    /// Verifies the signature with `public_key` and decodes the claims.
    pub fn verify<C: DeserializeOwned>(&self, public_key: &[u8]) -> Result<C, JwtError> {
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(self.signed.as_bytes(), &self.signature)
            .map_err(|_| JwtError::Signature)?;
        let raw = URL_SAFE_NO_PAD
            .decode(self.payload)
            .map_err(|_| JwtError::Malformed)?;
        serde_json::from_slice(&raw).map_err(|_| JwtError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Claims {
        sub: String,
    }

    #[test]
    fn sign_and_verify() {
        let (key, pkcs8) = SigningKey::generate("k1".into()).unwrap_or_else(|e| panic!("{e}"));
        let token = key
            .sign(&Claims { sub: "hk_1".into() })
            .unwrap_or_else(|e| panic!("{e}"));
        let u = parse(&token).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(u.header.kid, "k1");
        let c: Claims = u
            .verify(&key.public_key())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.sub, "hk_1");
        let again = SigningKey::from_pkcs8("k1".into(), &pkcs8).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.public_key(), key.public_key());
        let (other, _) = SigningKey::generate("k2".into()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            u.verify::<Claims>(&other.public_key()).err(),
            Some(JwtError::Signature)
        );
    }

    #[test]
    fn refuses_other_algorithms_and_tampering() {
        let (key, _) = SigningKey::generate("k1".into()).unwrap_or_else(|e| panic!("{e}"));
        let token = key
            .sign(&Claims { sub: "hk_1".into() })
            .unwrap_or_else(|e| panic!("{e}"));
        let parts: Vec<&str> = token.split('.').collect();
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#),
            parts[1]
        );
        assert_eq!(parse(&none).err(), Some(JwtError::Algorithm));
        let hs = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"at+jwt","kid":"k1"}"#),
            parts[1],
            parts[2]
        );
        assert_eq!(parse(&hs).err(), Some(JwtError::Algorithm));
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(br#"{"sub":"hk_admin"}"#),
            parts[2]
        );
        let u = parse(&forged).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            u.verify::<Claims>(&key.public_key()).err(),
            Some(JwtError::Signature)
        );
        assert_eq!(parse("a.b").err(), Some(JwtError::Malformed));
        assert_eq!(parse("a.b.c.d").err(), Some(JwtError::Malformed));
    }
}
