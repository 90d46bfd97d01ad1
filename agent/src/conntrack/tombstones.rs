//! A bounded memory of recently closed things.

use std::collections::VecDeque;

use crate::fast::Map;

/// A bounded memory of recently closed things, by key, forgotten after `TTL_NS`.
pub struct Tombstones<K, V> {
    by_key: Map<K, (V, u64)>,
    order: VecDeque<(K, u64)>,
}

impl<K, V> Default for Tombstones<K, V> {
    fn default() -> Self {
        Tombstones {
            by_key: Map::default(),
            order: VecDeque::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Copy, V> Tombstones<K, V> {
    const CAPACITY: usize = 16384;
    /// Shorter than TCP_TIMEWAIT_LEN (60 s), during which a closed endpoint cannot be reused.
    const TTL_NS: u64 = 30_000_000_000;

    pub fn insert(&mut self, key: K, value: V, ts_ns: u64) {
        self.expire(ts_ns, Self::CAPACITY - 1);
        self.by_key.insert(key, (value, ts_ns));
        self.order.push_back((key, ts_ns));
    }

    /// Forgets the entries older than the TTL at `now_ns`, and the oldest beyond `keep`.
    pub fn expire(&mut self, now_ns: u64, keep: usize) {
        while self.order.len() > keep
            || self
                .order
                .front()
                .is_some_and(|(_, t)| now_ns.saturating_sub(*t) > Self::TTL_NS)
        {
            let Some((old, t)) = self.order.pop_front() else {
                break;
            };
            if self.by_key.get(&old).is_some_and(|e| e.1 == t) {
                self.by_key.remove(&old);
            }
        }
    }

    pub fn get(&self, key: &K, now_ns: u64) -> Option<&V> {
        let (value, ts) = self.by_key.get(key)?;
        (now_ns.saturating_sub(*ts) <= Self::TTL_NS).then_some(value)
    }
}
