//! Opaque, prefixed, time-ordered identifiers (`acc_…`, `hk_…`, `req_…`).
//!
//! The body is 26 lowercase Crockford base32 characters: 48 bits of milliseconds then 80 random
//! bits, so ids sort by creation time (cursor pagination orders by id) and cannot be guessed.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
pub const BODY_LEN: usize = 26;

/// A new id with the given prefix, e.g. `new_id("acc")` → `acc_01jd…`.
pub fn new_id(prefix: &str) -> String {
    new_id_at(prefix, crate::clock::now_ms())
}

/// A new id whose time part is `ms`, for a record whose id must sort by its own timestamp.
pub fn new_id_at(prefix: &str, ms: i64) -> String {
    let mut raw = [0u8; 16];
    random_bytes(&mut raw[6..]);
    encode(prefix, ms, raw)
}

/// Random bytes for ids, drawn from the system CSPRNG a block at a time: every request makes at
/// least two ids (its request id and its audit event's), and a CSPRNG call per id (which mixes
/// in fresh hardware entropy each time) cost more than the rest of id making. The block lives
/// only in this thread and each byte is handed out once. Ids must be unguessable, not secret;
/// secrets (API key secrets, keys) never come from here.
fn random_bytes(out: &mut [u8]) {
    const BLOCK: usize = 4000;
    struct Pool {
        bytes: [u8; BLOCK],
        used: usize,
    }
    thread_local! {
        static POOL: std::cell::RefCell<Pool> = const {
            std::cell::RefCell::new(Pool { bytes: [0; BLOCK], used: BLOCK })
        };
    }
    // The system CSPRNG failing is unrecoverable for a security product; falling back to zeros
    // would create guessable ids, so abort loudly instead.
    #[allow(clippy::expect_used)]
    fn fill(buf: &mut [u8]) {
        SystemRandom::new()
            .fill(buf)
            .expect("system random number generator failed");
    }
    if out.len() > BLOCK {
        return fill(out);
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.used + out.len() > BLOCK {
            fill(&mut pool.bytes);
            pool.used = 0;
        }
        let start = pool.used;
        out.copy_from_slice(&pool.bytes[start..start + out.len()]);
        // Handed out once: wipe what was taken.
        pool.bytes[start..start + out.len()].fill(0);
        pool.used += out.len();
    });
}

/// The smallest id with this prefix made at or after `ms`: a time range as an id range.
pub fn id_floor(prefix: &str, ms: i64) -> String {
    encode(prefix, ms, [0u8; 16])
}

fn encode(prefix: &str, ms: i64, mut raw: [u8; 16]) -> String {
    // 48 bits of milliseconds reach the year 10889.
    let ms = u64::try_from(ms.max(0)).unwrap_or(0).min((1 << 48) - 1);
    raw[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    let mut value = u128::from_be_bytes(raw);
    let mut body = [0u8; BODY_LEN];
    for slot in body.iter_mut().rev() {
        *slot = ALPHABET[(value & 0x1f) as usize];
        value >>= 5;
    }
    let mut id = String::with_capacity(prefix.len() + 1 + BODY_LEN);
    id.push_str(prefix);
    id.push('_');
    // Every byte comes from ALPHABET, which is ASCII.
    id.extend(body.iter().map(|b| char::from(*b)));
    id
}

/// Whether `s` is a well-formed id with this prefix. Anything else can never name a resource.
pub fn is_valid(prefix: &str, s: &str) -> bool {
    let Some(body) = s.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) else {
        return false;
    };
    body.len() == BODY_LEN && body.bytes().all(|b| ALPHABET.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_unique_and_ordered() {
        let a = new_id("acc");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id("acc");
        assert!(is_valid("acc", &a));
        assert_ne!(a, b);
        assert!(a < b);
        assert!(!is_valid("hk", &a));
        assert!(!is_valid("acc", "acc_' OR 1=1 --"));
        assert!(!is_valid("acc", "acc_"));
    }

    #[test]
    fn ids_stay_unique_across_pool_refills_and_threads() {
        let make = || (0..2000).map(|_| new_id_at("req", 0)).collect::<Vec<_>>();
        let other = std::thread::spawn(make);
        let mut all = make();
        all.extend(other.join().unwrap_or_default());
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "an id repeated");
        assert_eq!(n, 4000);
    }

    #[test]
    fn a_time_range_is_an_id_range() {
        let t = 1_764_000_000_000;
        let floor = id_floor("usg", t);
        let id = new_id_at("usg", t);
        assert!(is_valid("usg", &floor) && is_valid("usg", &id));
        assert!(floor <= id);
        assert!(id < id_floor("usg", t + 1));
        assert!(id_floor("usg", t - 1) < floor);
    }
}
