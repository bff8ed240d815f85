//! Reassembly of concatenated mobile-originated messages, keyed by (source, destination,
//! reference, total). Bounded: sets older than the timeout are dropped, and when `max_sets`
//! partial sets are held the oldest is evicted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::encoding;

/// Identifies one concatenated message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SetKey {
    pub from: String,
    pub to: String,
    pub reference: u16,
    pub total: u8,
}

struct Partial {
    parts: Vec<Option<(u8, Vec<u8>)>>,
    first_seen: Instant,
}

/// All parts of one message, in order, as (data_coding, payload).
#[derive(Debug, Clone)]
pub struct Completed {
    pub key: SetKey,
    pub parts: Vec<(u8, Vec<u8>)>,
}

impl Completed {
    /// The text: payloads joined before decoding when they share a `data_coding` (so an
    /// escape or surrogate pair split by a careless sender still decodes), else part by part.
    pub fn text(&self) -> String {
        let first = self.parts.first().map(|p| p.0);
        if self.parts.iter().all(|p| Some(p.0) == first) {
            let joined: Vec<u8> = self
                .parts
                .iter()
                .flat_map(|p| p.1.iter().copied())
                .collect();
            encoding::decode_text(first.unwrap_or(0), &joined)
        } else {
            self.parts
                .iter()
                .map(|(dc, b)| encoding::decode_text(*dc, b))
                .collect()
        }
    }
}

/// What adding a part did.
#[derive(Debug)]
pub enum Added {
    /// Stored; more parts are missing.
    Pending,
    /// This part completed the set (now removed from the buffer).
    Complete(Completed),
    /// The part's numbers are impossible (seq 0 or above total): dropped.
    Invalid,
}

/// The buffer of partial sets.
pub struct Reassembler {
    sets: HashMap<SetKey, Partial>,
    max_sets: usize,
    timeout: Duration,
}

impl Reassembler {
    /// A buffer holding at most `max_sets` partial sets, each for at most `timeout`.
    pub fn new(max_sets: usize, timeout: Duration) -> Self {
        Reassembler {
            sets: HashMap::new(),
            max_sets: max_sets.max(1),
            timeout,
        }
    }

    /// Partial sets currently held.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Drop sets older than the timeout; returns how many went.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.sets.len();
        let timeout = self.timeout;
        self.sets
            .retain(|_, p| now.saturating_duration_since(p.first_seen) < timeout);
        before - self.sets.len()
    }

    fn make_room(&mut self) {
        while self.sets.len() >= self.max_sets {
            let oldest = self
                .sets
                .iter()
                .min_by_key(|(_, p)| p.first_seen)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.sets.remove(&k);
                }
                None => break,
            }
        }
    }

    /// Add part `seq` (1-based) of the set `key`.
    pub fn add(
        &mut self,
        key: SetKey,
        seq: u8,
        data_coding: u8,
        payload: Vec<u8>,
        now: Instant,
    ) -> Added {
        let total = usize::from(key.total);
        let idx = usize::from(seq);
        if idx == 0 || idx > total {
            return Added::Invalid;
        }
        self.expire(now);
        if !self.sets.contains_key(&key) {
            self.make_room();
        }
        let set = self.sets.entry(key.clone()).or_insert_with(|| Partial {
            parts: vec![None; total],
            first_seen: now,
        });
        if let Some(slot) = set.parts.get_mut(idx - 1) {
            *slot = Some((data_coding, payload));
        }
        if set.parts.iter().all(Option::is_some) {
            let parts = self
                .sets
                .remove(&key)
                .map(|p| p.parts.into_iter().flatten().collect())
                .unwrap_or_default();
            return Added::Complete(Completed { key, parts });
        }
        Added::Pending
    }

    /// Put a completed set back (storing it failed). The set stays whole in the buffer, so
    /// the SMSC's redelivery of any of its parts (the one that was refused) completes it again;
    /// if none comes, it expires like any partial set.
    pub fn restore(&mut self, completed: Completed, now: Instant) {
        let total = usize::from(completed.key.total);
        if !self.sets.contains_key(&completed.key) {
            self.make_room();
        }
        let set = self.sets.entry(completed.key).or_insert_with(|| Partial {
            parts: vec![None; total],
            first_seen: now,
        });
        for (slot, part) in set.parts.iter_mut().zip(completed.parts) {
            if slot.is_none() {
                *slot = Some(part);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn key(r: u16, total: u8) -> SetKey {
        SetKey {
            from: "+1".into(),
            to: "+2".into(),
            reference: r,
            total,
        }
    }

    #[test]
    fn out_of_order_and_restore() {
        let now = Instant::now();
        let mut r = Reassembler::new(8, Duration::from_secs(60));
        assert!(matches!(
            r.add(key(1, 3), 3, 0, b"c".to_vec(), now),
            Added::Pending
        ));
        assert!(matches!(
            r.add(key(1, 3), 1, 0, b"a".to_vec(), now),
            Added::Pending
        ));
        let Added::Complete(c) = r.add(key(1, 3), 2, 0, b"b".to_vec(), now) else {
            panic!("not complete")
        };
        assert_eq!(c.text(), "abc");
        assert!(r.is_empty());
        r.restore(c, now);
        assert_eq!(r.len(), 1);
        let Added::Complete(c) = r.add(key(1, 3), 2, 0, b"b".to_vec(), now) else {
            panic!("not complete after redelivery")
        };
        assert_eq!(c.text(), "abc");
        assert!(matches!(
            r.add(key(1, 3), 4, 0, vec![], now),
            Added::Invalid
        ));
        assert!(matches!(
            r.add(key(1, 3), 0, 0, vec![], now),
            Added::Invalid
        ));
    }

    #[test]
    fn bounded_and_expiring() {
        let now = Instant::now();
        let mut r = Reassembler::new(2, Duration::from_secs(10));
        r.add(key(1, 2), 1, 0, vec![], now);
        r.add(key(2, 2), 1, 0, vec![], now + Duration::from_secs(1));
        r.add(key(3, 2), 1, 0, vec![], now + Duration::from_secs(2));
        assert_eq!(r.len(), 2);
        // key 1 was evicted: its second part alone does not complete
        assert!(matches!(
            r.add(key(1, 2), 2, 0, vec![], now + Duration::from_secs(3)),
            Added::Pending
        ));
        assert_eq!(r.expire(now + Duration::from_secs(100)), 2);
    }

    #[test]
    fn mixed_coding_and_split_surrogates() {
        // a surrogate pair split across parts by the sender still decodes when joined
        let c = Completed {
            key: key(1, 2),
            parts: vec![(8, vec![0xD8, 0x3D]), (8, vec![0xDE, 0x00])],
        };
        assert_eq!(c.text(), "😀");
        let c = Completed {
            key: key(1, 2),
            parts: vec![(0, vec![0x41]), (8, vec![0x03, 0xA9])],
        };
        assert_eq!(c.text(), "AΩ");
    }
}
