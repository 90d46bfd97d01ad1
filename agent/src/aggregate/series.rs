//! Bounded label cardinality: a cap on the label sets of a metric family (beyond it,
//! observations fold into one overflow label set and are counted) and expiry of label sets
//! not updated for a while.

use std::hash::Hash;

use crate::fast::Map;

use prometheus_client::metrics::counter::Counter;

/// Admits label sets into a family up to `cap`, remembering when each was last used, with the
/// caller's state of each series (`H`: typically its metric handles, so that an observation
/// need not look its label set up in every family again).
pub struct SeriesGuard<L, H = ()> {
    last_used: Map<L, (u64, H)>,
    cap: usize,
    /// `meshtap_metric_series_overflow_total{metric}` for this family.
    overflow: Counter,
}

/// What `SeriesGuard::admit` decided.
pub enum Admitted<'a, L, H> {
    /// A known or newly admitted label set, with its state (`H::default()` when new).
    Series(L, &'a mut H),
    /// Over the cap: the overflow label set to record under.
    Overflow(L),
}

impl<L: Clone + Hash + Eq, H: Default> SeriesGuard<L, H> {
    pub fn new(cap: usize, overflow: Counter) -> Self {
        SeriesGuard {
            last_used: Map::default(),
            cap,
            overflow,
        }
    }

    /// The label set to record `labels` under at `now_ns`: `labels` itself if it is known or
    /// there is room, otherwise `fold(labels)` (which must always map to the same few overflow
    /// sets), counted as an overflow. Overflow sets do not count against the cap.
    pub fn admit(
        &mut self,
        labels: L,
        now_ns: u64,
        fold: impl FnOnce(L) -> L,
    ) -> Admitted<'_, L, H> {
        if !self.last_used.contains_key(&labels) {
            if self.last_used.len() >= self.cap {
                self.overflow.inc();
                return Admitted::Overflow(fold(labels));
            }
            self.last_used
                .insert(labels.clone(), (now_ns, H::default()));
        }
        match self.last_used.get_mut(&labels) {
            Some((used, state)) => {
                *used = now_ns;
                Admitted::Series(labels, state)
            }
            // Not reached: the label set is in the map at this point.
            None => Admitted::Overflow(labels),
        }
    }

    /// Forgets the label sets not used since `now_ns - ttl_ns` and returns them, so that the
    /// caller removes them from its families.
    pub fn expire(&mut self, now_ns: u64, ttl_ns: u64) -> Vec<L> {
        let cutoff = now_ns.saturating_sub(ttl_ns);
        let stale: Vec<L> = self
            .last_used
            .iter()
            .filter(|(_, (t, _))| *t < cutoff)
            .map(|(l, _)| l.clone())
            .collect();
        for l in &stale {
            self.last_used.remove(l);
        }
        stale
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.last_used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_folds_and_counts_and_expiry_frees_room() {
        let overflow = Counter::default();
        let mut guard: SeriesGuard<String, u32> = SeriesGuard::new(2, overflow.clone());
        let fold = |_: String| "__overflow__".to_string();
        // Admits, and counts uses in the series' state.
        let admit = |guard: &mut SeriesGuard<String, u32>, l: &str, t: u64| -> String {
            match guard.admit(l.into(), t, fold) {
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
