//! Request counts, failures and durations over the last 1, 5 or 15 minutes, per key, for the
//! built-in web page (`export::web`): the agent's own aggregates, without a Prometheus.
//!
//! Time is cut into steps of [`STEP_NS`]; each key keeps one cell per step in which it saw
//! something (requests, failures, a duration histogram over the configured duration buckets),
//! for [`STEPS`] steps. A window of `w` minutes sums the cells of the last `w * 60 / 15` whole
//! steps and of the step in progress: it covers between `w` minutes and `w` minutes and 15
//! seconds. Percentiles are estimated from the buckets the way Prometheus' `histogram_quantile`
//! does, so they agree with a Grafana panel over the same window and buckets.
//!
//! Bounded: at most `max_keys` keys; an observation of a new key beyond that is turned away and
//! counted (`meshtap_window_rejected_total{table}`). A key with no cell left is removed.
//! Memory: a cell is about `32 + 4 * (buckets + 1)` bytes, so at most `max_keys * STEPS` of
//! them (with the 14 default buckets and 4,096 keys, 23 MB, reached only when every key sees
//! traffic in every 15-second step for 15 minutes); a key seen once holds one cell.

use std::{collections::VecDeque, hash::Hash, sync::Arc};

use hashbrown::{Equivalent, hash_map::Entry};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

use crate::metrics::Registry;

/// Hashed as `fast` hashes the per-event maps (this layer cannot import it). hashbrown's, for
/// lookups by a borrowed view of a key (`Equivalent`): an observation of a known key builds no
/// owned key.
type Map<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;

/// Length of one time step.
pub const STEP_NS: u64 = 15_000_000_000;
/// Steps kept: 15 minutes and the step in progress.
pub const STEPS: u64 = 15 * 60 * 1_000_000_000 / STEP_NS + 1;
/// The windows the API offers, in minutes.
pub const WINDOWS_MIN: [u64; 3] = [1, 5, 15];

/// Metric names (without the `_total` suffix prometheus-client appends to counters).
pub mod name {
    pub const REJECTED: &str = "meshtap_window_rejected";
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: &'static str,
}

/// The counter of observations turned away by full tables, registered once.
pub fn rejected_counter(registry: &Registry, table: &'static str) -> Counter {
    let family: Family<TableLabels, Counter> = registry.family(
        name::REJECTED,
        "Observations the web page's windowed aggregates turned away because their table was full (a new key beyond its limit)",
        Family::default,
    );
    family.get_or_create_owned(&TableLabels { table })
}

struct Cell {
    step: u64,
    requests: u32,
    failed: u32,
    /// Non-cumulative counts per bucket: `buckets[i]` holds durations `<= bounds[i]` and above
    /// the bound before; the last one those above every bound.
    buckets: Box<[u32]>,
}

/// What a key saw in a window.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub requests: u64,
    pub failed: u64,
    /// Estimated from the duration buckets; `None` without any duration.
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

/// A bounded table of keys, each with its cells of the last 15 minutes.
pub struct Windowed<K> {
    bounds: Arc<[f64]>,
    series: Map<K, VecDeque<Cell>>,
    max_keys: usize,
    rejected: Counter,
    /// Monotonic ns of the first observation: a window never reaches before it.
    started_ns: Option<u64>,
    /// The step up to which cells were last dropped.
    expired_step: u64,
}

impl<K: Hash + Eq + Clone> Windowed<K> {
    pub fn new(duration_buckets: &[f64], max_keys: usize, rejected: Counter) -> Self {
        Windowed {
            bounds: duration_buckets.into(),
            series: Map::default(),
            max_keys,
            rejected,
            started_ns: None,
            expired_step: 0,
        }
    }

    /// Counts one request of `key` at `now_ns`, with its duration when it has one.
    pub fn record(&mut self, key: K, now_ns: u64, seconds: Option<f64>, failed: bool) {
        self.started_ns.get_or_insert(now_ns);
        let room = self.series.len() < self.max_keys;
        let cells = match self.series.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) if room => e.insert(VecDeque::new()),
            Entry::Vacant(_) => {
                self.rejected.inc();
                return;
            }
        };
        add(cells, &self.bounds, now_ns, seconds, failed);
    }

    /// [`Self::record`] of the key `view` is a borrowed form of (same hash, [`Equivalent`]),
    /// made owned by `make` only when it is new.
    pub fn record_by<Q: Hash + Equivalent<K> + ?Sized>(
        &mut self,
        view: &Q,
        make: impl FnOnce() -> K,
        now_ns: u64,
        seconds: Option<f64>,
        failed: bool,
    ) {
        self.started_ns.get_or_insert(now_ns);
        if let Some(cells) = self.series.get_mut(view) {
            add(cells, &self.bounds, now_ns, seconds, failed);
        } else if self.series.len() < self.max_keys {
            let mut cells = VecDeque::new();
            add(&mut cells, &self.bounds, now_ns, seconds, failed);
            self.series.insert(make(), cells);
        } else {
            self.rejected.inc();
        }
    }

    /// Drops the cells older than 15 minutes, and the keys left without any. Cheap when called
    /// again within one step.
    pub fn expire(&mut self, now_ns: u64) {
        let oldest = (now_ns / STEP_NS).saturating_sub(STEPS - 1);
        if oldest <= self.expired_step {
            return;
        }
        self.expired_step = oldest;
        self.series.retain(|_, cells| {
            while cells.front().is_some_and(|c| c.step < oldest) {
                cells.pop_front();
            }
            !cells.is_empty()
        });
    }

    /// The first step a window of `minutes` covers at `now_ns`, and the seconds it covers
    /// (never before the first observation).
    pub fn span(&self, now_ns: u64, minutes: u64) -> (u64, f64) {
        let first = (now_ns / STEP_NS).saturating_sub(minutes * 60 * 1_000_000_000 / STEP_NS);
        let start = (first * STEP_NS).max(self.started_ns.unwrap_or(now_ns));
        (first, (now_ns.saturating_sub(start) as f64 / 1e9).max(1.0))
    }

    /// Every key with something in the window of `minutes` at `now_ns`.
    pub fn summaries(&self, now_ns: u64, minutes: u64) -> Vec<(K, Summary)> {
        self.grouped(now_ns, minutes, |k| Some(k.clone()))
    }

    /// What the window of `minutes` at `now_ns` holds, summed over the keys `group` maps to
    /// one group (`None`: left out). Durations are merged bucket by bucket before the
    /// percentiles are estimated.
    pub fn grouped<G: Hash + Eq>(
        &self,
        now_ns: u64,
        minutes: u64,
        group: impl Fn(&K) -> Option<G>,
    ) -> Vec<(G, Summary)> {
        let (first, _) = self.span(now_ns, minutes);
        let mut sums: Map<G, (u64, u64, Vec<u64>)> = Map::default();
        for (key, cells) in &self.series {
            let mut in_window = cells
                .iter()
                .rev()
                .take_while(|c| c.step >= first)
                .peekable();
            if in_window.peek().is_none() {
                continue;
            }
            let Some(g) = group(key) else { continue };
            let (requests, failed, buckets) = sums
                .entry(g)
                .or_insert_with(|| (0, 0, vec![0; self.bounds.len() + 1]));
            for c in in_window {
                *requests += u64::from(c.requests);
                *failed += u64::from(c.failed);
                for (sum, &n) in buckets.iter_mut().zip(c.buckets.iter()) {
                    *sum += u64::from(n);
                }
            }
        }
        sums.into_iter()
            .map(|(g, (requests, failed, buckets))| {
                (
                    g,
                    Summary {
                        requests,
                        failed,
                        p50_seconds: quantile(0.5, &self.bounds, &buckets),
                        p99_seconds: quantile(0.99, &self.bounds, &buckets),
                    },
                )
            })
            .collect()
    }
}

/// Counts one request in a key's cells: in the cell of `now_ns`'s step, made if it is not the
/// newest.
fn add(
    cells: &mut VecDeque<Cell>,
    bounds: &[f64],
    now_ns: u64,
    seconds: Option<f64>,
    failed: bool,
) {
    let step = now_ns / STEP_NS;
    // Events arrive in about monotonic order; one a little late goes to the newest cell.
    if cells.back().is_none_or(|c| c.step < step) {
        cells.push_back(Cell {
            step,
            requests: 0,
            failed: 0,
            buckets: vec![0; bounds.len() + 1].into_boxed_slice(),
        });
    }
    let Some(cell) = cells.back_mut() else {
        return;
    };
    cell.requests = cell.requests.saturating_add(1);
    if failed {
        cell.failed = cell.failed.saturating_add(1);
    }
    if let Some(s) = seconds {
        let i = bounds.partition_point(|&b| b < s);
        cell.buckets[i] = cell.buckets[i].saturating_add(1);
    }
}

/// The `q` quantile of durations counted per bucket, as Prometheus' `histogram_quantile`
/// estimates it: linear within the bucket that holds it (from 0 for the first), the highest
/// finite bound when it falls above every bound.
pub fn quantile(q: f64, bounds: &[f64], buckets: &[u64]) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        let upto = below + n;
        if n > 0 && upto as f64 >= rank {
            let Some(&upper) = bounds.get(i) else {
                return bounds.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            return Some(lower + (upper - lower) * (rank - below as f64) / n as f64);
        }
        below = upto;
    }
    bounds.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn table(max_keys: usize) -> (Windowed<&'static str>, Counter) {
        let rejected = Counter::default();
        (
            Windowed::new(&[0.1, 0.2, 0.4], max_keys, rejected.clone()),
            rejected,
        )
    }

    #[test]
    fn windows_cover_whole_steps_and_the_one_in_progress() {
        let (mut w, _) = table(10);
        let t0 = 1000 * S;
        // One request a minute for 20 minutes, the last one at t0 + 19 min.
        for m in 0..20 {
            w.record("a", t0 + m * 60 * S, Some(0.15), m % 2 == 0);
        }
        // 14 s into the step in progress (2145 s..2160 s).
        let now = t0 + 19 * 60 * S + 14 * S;
        let get = |w: &Windowed<&str>, minutes| {
            let s = w.summaries(now, minutes);
            assert_eq!(s.len(), 1);
            s[0].1.requests
        };
        assert_eq!(get(&w, 1), 1);
        assert_eq!(get(&w, 5), 5);
        // 60 whole steps and the step in progress: from 1245 s, the requests at minutes 5..=19.
        assert_eq!(get(&w, 15), 15);
        w.expire(now);
        assert_eq!(get(&w, 15), 15);
        // The cells of minutes 0..=4 are gone, and with them nothing else.
        assert_eq!(w.series[&"a"].len(), 15);
    }

    #[test]
    fn failures_and_percentiles() {
        let (mut w, _) = table(10);
        for i in 0..100 {
            let s = if i < 50 { 0.05 } else { 0.3 };
            w.record("a", 10 * S, Some(s), i >= 90);
        }
        // A connect failure: a failed request without a duration.
        w.record("a", 10 * S, None, true);
        let s = &w.summaries(11 * S, 1)[0].1;
        assert_eq!((s.requests, s.failed), (101, 11));
        // Rank 50 of 100 durations: the last of the first bucket (0, 0.1].
        assert_eq!(s.p50_seconds, Some(0.1));
        // Rank 99: in (0.2, 0.4], 49 of its 50.
        assert!((s.p99_seconds.unwrap() - (0.2 + 0.2 * 49.0 / 50.0)).abs() < 1e-9);
    }

    #[test]
    fn quantile_as_histogram_quantile() {
        let bounds = [1.0, 2.0];
        assert_eq!(quantile(0.5, &bounds, &[0, 0, 0]), None);
        assert_eq!(quantile(0.5, &bounds, &[2, 0, 0]), Some(0.5));
        assert_eq!(quantile(0.5, &bounds, &[0, 2, 0]), Some(1.5));
        // Above every bound: the highest finite bound.
        assert_eq!(quantile(0.99, &bounds, &[1, 0, 9]), Some(2.0));
    }

    #[test]
    fn keys_beyond_the_limit_are_counted_and_turned_away() {
        let (mut w, rejected) = table(2);
        for key in ["a", "b", "c", "a", "c"] {
            w.record(key, S, Some(0.1), false);
        }
        assert_eq!(w.series.len(), 2);
        assert_eq!(rejected.get(), 2);
        // Once "a" expired, "c" has room.
        w.expire(S + STEPS * STEP_NS);
        assert!(w.series.is_empty());
        w.record("c", S + STEPS * STEP_NS, None, false);
        assert_eq!(w.series.len(), 1);
    }

    #[test]
    fn span_starts_at_the_first_observation() {
        let (mut w, _) = table(2);
        w.record("a", 100 * S, None, false);
        assert_eq!(w.span(130 * S, 5).1, 30.0);
        // Long after: the whole window, plus the step in progress (here 10 s into it).
        let now = 10_000 * S;
        assert_eq!(w.span(now, 1).1, 70.0);
    }
}
