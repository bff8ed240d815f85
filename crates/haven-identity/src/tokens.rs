//! JWT access tokens and the shared, rotating set of Ed25519 signing keys.
//!
//! Signing keys live in the database (private halves sealed under the master key), so every
//! node signs and verifies with the same set. The newest key signs; an older key stays published
//! in the JWKS, and accepted, until every token it could have signed has expired.

use crate::model::{SIGNING_KEY_PREFIX, SigningKeyRecord, TOKEN_PREFIX};
use crate::store::IdentityStore;
use crate::{IdentityError, IdentityResult, ScopeSet};
use haven_crypto::jwt::{self, SigningKey};
use haven_crypto::ring::KeyProvider;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, RwLock};

/// A token may be used this long after its nominal `nbf`/`iat` disagree with our clock.
const CLOCK_SKEW_MS: i64 = 60_000;
/// An old signing key stays published this much longer than the longest token it signed.
const RETIRE_MARGIN_MS: i64 = 5 * 60_000;
/// A node asks the database for an unknown `kid` at most this often.
const UNKNOWN_KID_REFRESH_MS: i64 = 1_000;

#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    pub ttl_seconds: u64,
    pub rotation_ms: i64,
}

/// The claims of a Haven access token (RFC 9068 profile).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
    /// The account the client belongs to.
    pub acc: String,
}

#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub access_token: String,
    pub token_id: String,
    pub expires_in: u64,
    pub scope: String,
}

struct LoadedKey {
    signer: Arc<SigningKey>,
    public: Vec<u8>,
    created_at_ms: i64,
}

#[derive(Default)]
struct KeySet {
    /// Newest first.
    keys: Vec<LoadedKey>,
}

impl KeySet {
    /// Keys that verify tokens and appear in the JWKS: the newest, and each older one until its
    /// successor has been signing for longer than a token lives.
    fn published(&self, now_ms: i64, ttl_ms: i64) -> impl Iterator<Item = &LoadedKey> {
        self.keys.iter().enumerate().filter_map(move |(i, k)| {
            if i == 0 {
                return Some(k);
            }
            let successor_since = self.keys[i - 1].created_at_ms;
            (now_ms < successor_since + ttl_ms + RETIRE_MARGIN_MS).then_some(k)
        })
    }
}

pub struct TokenService {
    store: Arc<dyn IdentityStore>,
    master: Arc<dyn KeyProvider>,
    settings: TokenSettings,
    set: RwLock<Arc<KeySet>>,
    last_forced_refresh_ms: Mutex<i64>,
}

impl TokenService {
    pub(crate) async fn open(
        store: Arc<dyn IdentityStore>,
        master: Arc<dyn KeyProvider>,
        settings: TokenSettings,
    ) -> IdentityResult<Self> {
        let svc = Self {
            store,
            master,
            settings,
            set: RwLock::new(Arc::new(KeySet::default())),
            last_forced_refresh_ms: Mutex::new(0),
        };
        svc.refresh().await?;
        svc.rotate_if_due(haven_platform::clock::now_ms()).await?;
        Ok(svc)
    }

    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.settings.ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX / 4)
    }

    fn current(&self) -> Arc<KeySet> {
        match self.set.read() {
            Ok(s) => Arc::clone(&s),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reloads the key set from the database.
    pub async fn refresh(&self) -> IdentityResult<()> {
        let mut records = self.store.list_signing_keys().await?;
        records.sort_by(|a, b| {
            b.created_at_ms
                .cmp(&a.created_at_ms)
                .then_with(|| b.kid.cmp(&a.kid))
        });
        let mut keys = Vec::with_capacity(records.len());
        for r in records {
            let pkcs8 = self.master.unwrap(
                &format!("haven:signing-key:{}", r.kid),
                &r.sealed_private_key,
            )?;
            let signer = SigningKey::from_pkcs8(r.kid.clone(), &pkcs8)?;
            keys.push(LoadedKey {
                public: signer.public_key(),
                signer: Arc::new(signer),
                created_at_ms: r.created_at_ms,
            });
        }
        let fresh = Arc::new(KeySet { keys });
        match self.set.write() {
            Ok(mut s) => *s = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    /// Makes a new signing key when there is none or the newest is older than the rotation
    /// period. Returns the new key's id.
    pub async fn rotate_if_due(&self, now_ms: i64) -> IdentityResult<Option<String>> {
        let due = self
            .current()
            .keys
            .first()
            .is_none_or(|k| now_ms - k.created_at_ms >= self.settings.rotation_ms);
        if due {
            self.rotate(now_ms).await.map(Some)
        } else {
            Ok(None)
        }
    }

    /// Makes a new signing key now; it signs from the next token on. Returns its id.
    pub async fn rotate(&self, now_ms: i64) -> IdentityResult<String> {
        let kid = haven_platform::id::new_id(SIGNING_KEY_PREFIX);
        let (signer, pkcs8) = SigningKey::generate(kid.clone())?;
        let sealed = self
            .master
            .wrap(&format!("haven:signing-key:{kid}"), &pkcs8)?;
        self.store
            .insert_signing_key(&SigningKeyRecord {
                kid: kid.clone(),
                public_key: signer.public_key(),
                sealed_private_key: sealed,
                created_at_ms: now_ms,
            })
            .await?;
        self.refresh().await?;
        Ok(kid)
    }

    /// The published keys as a JWK Set (RFC 7517).
    pub fn jwks(&self) -> serde_json::Value {
        let set = self.current();
        let now = haven_platform::clock::now_ms();
        let keys: Vec<serde_json::Value> = set
            .published(now, self.ttl_ms())
            .map(|k| jwt::public_jwk(k.signer.kid(), &k.public))
            .collect();
        serde_json::json!({ "keys": keys })
    }

    pub(crate) fn issue(
        &self,
        account_id: &str,
        client_id: &str,
        scopes: &ScopeSet,
        now_ms: i64,
    ) -> IdentityResult<IssuedToken> {
        let set = self.current();
        let key = set
            .keys
            .first()
            .ok_or(IdentityError::Conflict("no signing key is loaded"))?;
        let now_s = now_ms / 1000;
        let jti = haven_platform::id::new_id(TOKEN_PREFIX);
        let ttl = i64::try_from(self.settings.ttl_seconds).unwrap_or(900);
        let claims = AccessClaims {
            iss: self.settings.issuer.clone(),
            sub: client_id.to_owned(),
            aud: self.settings.audience.clone(),
            exp: now_s + ttl,
            iat: now_s,
            nbf: now_s,
            jti: jti.clone(),
            client_id: client_id.to_owned(),
            scope: scopes.to_oauth(),
            acc: account_id.to_owned(),
        };
        let access_token = key.signer.sign(&claims)?;
        Ok(IssuedToken {
            access_token,
            token_id: jti,
            expires_in: self.settings.ttl_seconds,
            scope: claims.scope,
        })
    }

    /// Verifies signature and claims; on failure returns the reason recorded in the audit log.
    pub async fn verify(&self, token: &str, now_ms: i64) -> Result<AccessClaims, &'static str> {
        let unverified = jwt::parse(token).map_err(|e| match e {
            jwt::JwtError::Algorithm => "algorithm_not_accepted",
            _ => "malformed_token",
        })?;
        let kid = unverified.header.kid.as_str();
        let mut public = self.public_key(kid, now_ms);
        if public.is_none() && self.may_force_refresh(now_ms) {
            // Another node may have rotated: look once more, at most once a second.
            if self.refresh().await.is_ok() {
                public = self.public_key(kid, now_ms);
            }
        }
        let public = public.ok_or("unknown_kid")?;
        let claims: AccessClaims = unverified.verify(&public).map_err(|_| "bad_signature")?;
        if claims.iss != self.settings.issuer {
            return Err("wrong_issuer");
        }
        if claims.aud != self.settings.audience {
            return Err("wrong_audience");
        }
        if claims.exp.saturating_mul(1000) <= now_ms {
            return Err("expired");
        }
        if claims.nbf.saturating_mul(1000) > now_ms + CLOCK_SKEW_MS
            || claims.iat.saturating_mul(1000) > now_ms + CLOCK_SKEW_MS
        {
            return Err("not_yet_valid");
        }
        Ok(claims)
    }

    fn public_key(&self, kid: &str, now_ms: i64) -> Option<Vec<u8>> {
        let set = self.current();
        set.published(now_ms, self.ttl_ms())
            .find(|k| k.signer.kid() == kid)
            .map(|k| k.public.clone())
    }

    fn may_force_refresh(&self, now_ms: i64) -> bool {
        match self.last_forced_refresh_ms.lock() {
            Ok(mut last) if now_ms - *last >= UNKNOWN_KID_REFRESH_MS => {
                *last = now_ms;
                true
            }
            _ => false,
        }
    }
}
