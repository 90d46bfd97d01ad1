//! Bounded label cardinality: a cap on the label sets of a metric family (beyond it,
//! observations fold into one overflow label set and are counted) and expiry of label sets
//! not updated for a while.

use std::hash::{BuildHasher, Hash};

use hashbrown::hash_table::{Entry, HashTable};

use prometheus_client::metrics::counter::Counter;

/// `a == b`, without reading the bytes when both are the same string (a label set made from
/// the very names it is looked up with): the bytes of a series' labels are likely out of cache.
#[inline]
pub fn same_str(a: &str, b: &str) -> bool {
    a.len() == b.len() && (std::ptr::eq(a.as_ptr(), b.as_ptr()) || a == b)
}

/// A label set that can be looked up by a borrowed view of it: an observation of a series
/// already known builds nothing (no owned strings, no reference counts to take and drop).
pub trait SeriesKey {
    /// The label set's values, borrowed. It must hash alike for a label set and for its view.
    type View<'a>: Hash
    where
        Self: 'a;
    fn view(&self) -> Self::View<'_>;
    /// Whether this label set has exactly the values of `view`.
    fn matches(&self, view: &Self::View<'_>) -> bool;
}

/// Admits label sets into a family up to `cap`, remembering when each was last used, with the
/// caller's state of each series (`H`: typically its metric handles, so that an observation
/// need not look its label set up in every family again).
pub struct SeriesGuard<L, H = ()> {
    /// (label set, last used, state). A table rather than a map so that an observation hashes
    /// its label set once, whether it is known or new.
    last_used: HashTable<(L, u64, H)>,
    hasher: foldhash::fast::RandomState,
    cap: usize,
    /// `meshtap_metric_series_overflow_total{metric}` for this family.
    overflow: Counter,
}

/// What `SeriesGuard::admit` decided.
pub enum Admitted<'a, L, H> {
    /// A known or newly admitted label set, with its state (`H::default()` when new).
    Series(&'a L, &'a mut H),
    /// Over the cap: the overflow label set to record under.
    Overflow(L),
}

impl<L: SeriesKey, H: Default> SeriesGuard<L, H> {
    pub fn new(cap: usize, overflow: Counter) -> Self {
        SeriesGuard {
            last_used: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            cap,
            overflow,
        }
    }

    /// The label set to record `view` under at `now_ns`: the known label set, or `make()` (the
    /// owned form of `view`) if there is room, otherwise `fold(make())` (which must always map
    /// to the same few overflow sets), counted as an overflow. Overflow sets do not count
    /// against the cap.
    pub fn admit<'k>(
        &mut self,
        view: L::View<'k>,
        now_ns: u64,
        make: impl FnOnce() -> L,
        fold: impl FnOnce(L) -> L,
    ) -> Admitted<'_, L, H> {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(&view);
        let len = self.last_used.len();
        match self.last_used.entry(
            hash,
            |(l, _, _)| l.matches(&view),
            |(l, _, _)| hasher.hash_one(l.view()),
        ) {
            Entry::Occupied(entry) => {
                let (labels, used, state) = entry.into_mut();
                *used = now_ns;
                Admitted::Series(labels, state)
            }
            Entry::Vacant(_) if len >= self.cap => {
                self.overflow.inc();
                Admitted::Overflow(fold(make()))
            }
            Entry::Vacant(entry) => {
                let (labels, _, state) = entry.insert((make(), now_ns, H::default())).into_mut();
                Admitted::Series(labels, state)
            }
        }
    }

    /// Forgets the label sets not used since `now_ns - ttl_ns` and returns them, so that the
    /// caller removes them from its families.
    pub fn expire(&mut self, now_ns: u64, ttl_ns: u64) -> Vec<L> {
        let cutoff = now_ns.saturating_sub(ttl_ns);
        self.last_used
            .extract_if(|(_, used, _)| *used < cutoff)
            .map(|(l, _, _)| l)
            .collect()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.last_used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl SeriesKey for String {
        type View<'a> = &'a str;
        fn view(&self) -> &str {
            self
        }
        fn matches(&self, view: &&str) -> bool {
            self == view
        }
    }

    #[test]
    fn cap_folds_and_counts_and_expiry_frees_room() {
        let overflow = Counter::default();
        let mut guard: SeriesGuard<String, u32> = SeriesGuard::new(2, overflow.clone());
        let fold = |_: String| "__overflow__".to_string();
        // Admits, and counts uses in the series' state.
        let admit = |guard: &mut SeriesGuard<String, u32>, l: &str, t: u64| -> String {
            match guard.admit(l, t, || l.to_string(), fold) {
                Admitted::Series(l, uses) => {
                    *uses += 1;
                    format!("{l}:{uses}")
                }
                Admitted::Overflow(l) => l,
            }
        };
        assert_eq!(admit(&mut guard, "a", 1), "a:1");
        assert_eq!(admit(&mut guard, "b", 2), "b:1");
        assert_eq!(admit(&mut guard, "c", 3), "__overflow__");
        assert_eq!(admit(&mut guard, "a", 10), "a:2");
        assert_eq!(overflow.get(), 1);
        let expired = guard.expire(12, 5);
        assert_eq!(expired, vec!["b".to_string()]);
        assert_eq!(guard.len(), 1);
        assert_eq!(admit(&mut guard, "c", 13), "c:1");
        assert_eq!(admit(&mut guard, "b", 14), "__overflow__");
    }
}
