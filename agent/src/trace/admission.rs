//! Which traces the built-in store takes: all of them up to a burst, then a bounded rate.
//!
//! The store holds `--trace-store-spans` spans. Under load, storing every trace would keep only
//! the last fraction of a second and spend a quarter of the agent's CPU building, inserting and
//! evicting spans nobody will look at. Admitting at most `rate` traces per second (a token
//! bucket of `BURST_SECONDS` seconds' worth) keeps minutes of history at any load, and costs
//! nothing when the trace is declined: its spans are not even built unless a collector wants
//! them. Declined spans are counted (`meshtap_trace_store_declined_spans_total`).
//!
//! The parts of one trace (the tree emitted now, a straggler emitted later) get the same answer:
//! recent decisions are remembered by trace id in a small direct-mapped table.

use std::hash::BuildHasher;

/// Seconds of `rate` a burst may take at once.
pub const BURST_SECONDS: u64 = 10;

/// Decisions remembered (a power of two): at 50,000 traces per second this covers 80 ms, far
/// longer than the parts of one trace are apart.
const RECENT: usize = 4096;

/// One trace, in credit units.
const TRACE: u128 = 1_000_000_000;

pub struct StoreAdmission {
    /// Traces per second; 0 admits every trace.
    rate: u64,
    /// Credit in billionths of a trace: each nanosecond adds `rate`, a trace takes 1e9.
    credit: u128,
    max_credit: u128,
    last_ns: u64,
    /// Trace id hash with its lowest bit replaced by the decision (1 = admitted); 0 = empty.
    recent: Box<[u64]>,
    hasher: foldhash::fast::FixedState,
}

impl StoreAdmission {
    /// `rate` traces per second after a burst of `BURST_SECONDS * rate`; 0 = no limit.
    pub fn new(rate: u64) -> Self {
        let max_credit = u128::from(BURST_SECONDS) * u128::from(rate) * TRACE;
        StoreAdmission {
            rate,
            credit: max_credit,
            max_credit,
            last_ns: 0,
            recent: vec![0; if rate == 0 { 0 } else { RECENT }].into_boxed_slice(),
            hasher: foldhash::fast::FixedState::with_seed(0x6d65_7368_7461_7021),
        }
    }

    /// Whether the store takes the trace `trace_id`, at monotonic time `now_ns`.
    pub fn admit(&mut self, trace_id: u128, now_ns: u64) -> bool {
        if self.rate == 0 {
            return true;
        }
        let h = self.hasher.hash_one(trace_id) | 2;
        let slot = &mut self.recent[(h >> 2) as usize & (RECENT - 1)];
        if *slot & !1 == h & !1 {
            return *slot & 1 == 1;
        }
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        self.credit =
            (self.credit + u128::from(elapsed) * u128::from(self.rate)).min(self.max_credit);
        let admitted = self.credit >= TRACE;
        if admitted {
            self.credit -= TRACE;
        }
        *slot = (h & !1) | u64::from(admitted);
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn id(n: u64) -> u128 {
        u128::from(n) | (7 << 64)
    }

    #[test]
    fn no_limit_admits_everything() {
        let mut a = StoreAdmission::new(0);
        assert!((0..100_000).all(|n| a.admit(id(n), 0)));
    }

    #[test]
    fn burst_then_rate() {
        let mut a = StoreAdmission::new(100);
        // The first call starts with a full bucket: 10 s of 100 per second.
        let t0 = 5 * SEC;
        let burst = (0..5000).filter(|n| a.admit(id(*n), t0)).count();
        assert_eq!(burst, 1000);
        // One second later: 100 more, whatever is offered.
        let next = (5000..10_000).filter(|n| a.admit(id(*n), t0 + SEC)).count();
        assert_eq!(next, 100);
        // Steady offer of 1,000 per second for 10 s: 100 per second go in.
        let mut admitted = 0;
        for s in 0..10 {
            for n in 0..1000 {
                let t = t0 + (1 + s) * SEC + (n + 1) * (SEC / 1000);
                admitted += usize::from(a.admit(id(1_000_000 + s * 1000 + n), t));
            }
        }
        assert_eq!(admitted, 1000);
    }

    #[test]
    fn parts_of_a_trace_get_the_same_answer() {
        let mut a = StoreAdmission::new(1);
        let t = SEC;
        let admitted: Vec<u128> = (0..10).map(id).collect();
        assert!(admitted.iter().all(|i| a.admit(*i, t)));
        assert!(!a.admit(id(99), t), "bucket empty");
        // Later parts, after credit came back: the declined trace stays declined, the admitted
        // ones stay admitted without taking credit.
        let later = t + 3 * SEC;
        assert!(!a.admit(id(99), later));
        assert!(admitted.iter().all(|i| a.admit(*i, later)));
        assert!(
            a.admit(id(100), later),
            "credit was not spent on known traces"
        );
    }

    #[test]
    fn time_going_backwards_takes_no_credit() {
        let mut a = StoreAdmission::new(1);
        let t = 100 * SEC;
        assert_eq!((0..20).filter(|n| a.admit(id(*n), t)).count(), 10);
        assert!(!a.admit(id(50), t - 50 * SEC));
        assert!(!a.admit(id(51), t));
    }
}
