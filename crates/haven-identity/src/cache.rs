//! A short-lived cache of verified credentials, so that the hot path of an authenticated request
//! does not touch the database. Entries live at most `ttl` (≤ 1 s, enforced by configuration),
//! which bounds how late a revocation made on another node takes effect here; changes made on
//! this node clear the cache at once.

use crate::Principal;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const SHARDS: usize = 16;
/// Per shard; past it the shard is emptied (cheap, and a full cache means we are under an
/// unusual load of distinct credentials anyway).
const MAX_ENTRIES_PER_SHARD: usize = 4096;

type Digest = [u8; 32];

struct Entry {
    principal: Arc<Principal>,
    expires_ms: i64,
}

pub struct CredentialCache {
    ttl_ms: i64,
    shards: Vec<Mutex<HashMap<Digest, Entry>>>,
}

impl CredentialCache {
    pub fn new(ttl_ms: u64) -> Self {
        Self {
            ttl_ms: i64::try_from(ttl_ms).unwrap_or(1000),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, d: &Digest) -> &Mutex<HashMap<Digest, Entry>> {
        &self.shards[usize::from(d[0]) % SHARDS]
    }

    pub fn get(&self, d: &Digest, now_ms: i64) -> Option<Arc<Principal>> {
        if self.ttl_ms == 0 {
            return None;
        }
        let shard = self.shard(d).lock().ok()?;
        shard
            .get(d)
            .filter(|e| e.expires_ms > now_ms)
            .map(|e| Arc::clone(&e.principal))
    }

    /// Caches until `now + ttl`, or `not_after` if sooner (a token's expiry).
    pub fn insert(
        &self,
        d: Digest,
        principal: Arc<Principal>,
        now_ms: i64,
        not_after_ms: Option<i64>,
    ) {
        if self.ttl_ms == 0 {
            return;
        }
        let mut expires_ms = now_ms + self.ttl_ms;
        if let Some(n) = not_after_ms {
            expires_ms = expires_ms.min(n);
        }
        if let Ok(mut shard) = self.shard(&d).lock() {
            if shard.len() >= MAX_ENTRIES_PER_SHARD {
                shard.clear();
            }
            shard.insert(
                d,
                Entry {
                    principal,
                    expires_ms,
                },
            );
        }
    }

    /// Forgets everything: after any change to keys, accounts or tokens on this node.
    pub fn clear(&self) {
        for s in &self.shards {
            if let Ok(mut s) = s.lock() {
                s.clear();
            }
        }
    }
}
