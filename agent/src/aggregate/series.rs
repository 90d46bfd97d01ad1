//! Bounded label cardinality: a cap on the label sets of a metric family (beyond it,
//! observations fold into one overflow label set and are counted) and expiry of label sets
//! not updated for a while.

use std::hash::Hash;

use crate::fast::Map;

use prometheus_client::metrics::counter::Counter;

/// Admits label sets into a family up to `cap`, remembering when each was last used.
pub struct SeriesGuard<L> {
    last_used: Map<L, u64>,
    cap: usize,
    /// `meshtap_metric_series_overflow_total{metric}` for this family.
    overflow: Counter,
}

impl<L: Clone + Hash + Eq> SeriesGuard<L> {
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
    pub fn admit(&mut self, labels: L, now_ns: u64, fold: impl FnOnce(L) -> L) -> L {
        if let Some(t) = self.last_used.get_mut(&labels) {
            *t = now_ns;
            return labels;
        }
        if self.last_used.len() < self.cap {
            self.last_used.insert(labels.clone(), now_ns);
            return labels;
        }
        self.overflow.inc();
        fold(labels)
    }

    /// Forgets the label sets not used since `now_ns - ttl_ns` and returns them, so that the
    /// caller removes them from its families.
    pub fn expire(&mut self, now_ns: u64, ttl_ns: u64) -> Vec<L> {
        let cutoff = now_ns.saturating_sub(ttl_ns);
        let stale: Vec<L> = self
            .last_used
            .iter()
            .filter(|(_, t)| **t < cutoff)
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
        let mut guard = SeriesGuard::new(2, overflow.clone());
        let fold = |_: String| "__overflow__".to_string();
        assert_eq!(guard.admit("a".into(), 1, fold), "a");
        assert_eq!(guard.admit("b".into(), 2, fold), "b");
        assert_eq!(guard.admit("c".into(), 3, fold), "__overflow__");
        assert_eq!(guard.admit("a".into(), 10, fold), "a");
        assert_eq!(overflow.get(), 1);
        let expired = guard.expire(12, 5);
        assert_eq!(expired, vec!["b".to_string()]);
        assert_eq!(guard.len(), 1);
        assert_eq!(guard.admit("c".into(), 13, fold), "c");
    }
}
