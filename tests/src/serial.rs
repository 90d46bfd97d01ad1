//! One test at a time: a re-entrant, process-wide lock.
//!
//! Re-entrant because a test takes it for its whole body and [`crate::Agent::start`] takes it
//! again (so that a test which forgets to call [`serial()`] is still serialised from the moment
//! it starts an agent).

use std::cell::Cell;
use std::sync::{Mutex, MutexGuard, PoisonError};

static LOCK: Mutex<()> = Mutex::new(());

thread_local! {
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Holds the process-wide test lock while alive.
pub struct Serial {
    _guard: Option<MutexGuard<'static, ()>>,
}

/// Takes the process-wide test lock (or nests in it if this thread holds it already).
pub fn serial() -> Serial {
    let depth = DEPTH.with(Cell::get);
    let guard = if depth == 0 {
        // A test that panicked while holding the lock poisoned it; its guards have cleaned up
        // during unwinding, so the next test can go on.
        Some(LOCK.lock().unwrap_or_else(PoisonError::into_inner))
    } else {
        None
    };
    DEPTH.with(|d| d.set(depth + 1));
    Serial { _guard: guard }
}

impl Drop for Serial {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get() - 1));
    }
}
