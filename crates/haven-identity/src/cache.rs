//! Short-lived caches that keep the hot path of an authenticated request off the database:
//! verified credentials and account records. Entries live at most `ttl` (≤ 1 s, enforced by
//! configuration), which bounds how late a change made on another node takes effect here;
//! changes made on this node clear the caches at once.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

const SHARDS: usize = 16;
/// Per shard; past it the shard is emptied (cheap, and a full cache means an unusual load of
/// distinct keys anyway).
const MAX_ENTRIES_PER_SHARD: usize = 4096;

struct Entry<V> {
    value: V,
    expires_ms: i64,
}

pub struct TtlCache<K, V> {
    ttl_ms: i64,
    shards: Vec<Mutex<HashMap<K, Entry<V>>>>,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    pub fn new(ttl_ms: u64) -> Self {
        Self {
            ttl_ms: i64::try_from(ttl_ms).unwrap_or(1000),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key: &K) -> &Mutex<HashMap<K, Entry<V>>> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(key);
        &self.shards[(h as usize) % SHARDS]
    }

    pub fn get(&self, key: &K, now_ms: i64) -> Option<V> {
        if self.ttl_ms == 0 {
            return None;
        }
        let shard = self.shard(key).lock().ok()?;
        shard
            .get(key)
            .filter(|e| e.expires_ms > now_ms)
            .map(|e| e.value.clone())
    }

    /// Caches until `now + ttl`, or `not_after` if sooner (a token's expiry).
    pub fn insert(&self, key: K, value: V, now_ms: i64, not_after_ms: Option<i64>) {
        if self.ttl_ms == 0 {
            return;
        }
        let mut expires_ms = now_ms + self.ttl_ms;
        if let Some(n) = not_after_ms {
            expires_ms = expires_ms.min(n);
        }
        if let Ok(mut shard) = self.shard(&key).lock() {
            if shard.len() >= MAX_ENTRIES_PER_SHARD {
                shard.clear();
            }
            shard.insert(key, Entry { value, expires_ms });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_clear() {
        let c: TtlCache<String, u32> = TtlCache::new(500);
        c.insert("a".into(), 1, 1000, None);
        c.insert("b".into(), 2, 1000, Some(1200));
        assert_eq!(c.get(&"a".into(), 1499), Some(1));
        assert_eq!(c.get(&"a".into(), 1500), None);
        assert_eq!(c.get(&"b".into(), 1199), Some(2));
        assert_eq!(c.get(&"b".into(), 1200), None);
        c.insert("a".into(), 1, 2000, None);
        c.clear();
        assert_eq!(c.get(&"a".into(), 2001), None);
        let off: TtlCache<String, u32> = TtlCache::new(0);
        off.insert("a".into(), 1, 0, None);
        assert_eq!(off.get(&"a".into(), 0), None);
    }
}
