//! The TCP sequence numbers of a connection's request-carrying syscalls, kept until the
//! exchanges that started in them complete: what [`crate::exchange::RequestKey`] is made of.
//!
//! The session hands exchanges over with the timestamp of the syscall that carried their first
//! request byte (`Exchange::start_ns`); each request-direction syscall is remembered here by that
//! timestamp with the sequence number of its first byte. Requests of one connection complete in
//! the order they started (one at a time, or pipelined), so an exchange that completes also
//! ends the marks before its own: the queue stays at a mark or two on a keep-alive connection.
//! A request whose body spans many syscalls adds one mark each: past [`MAX_MARKS`] new marks are
//! not kept (the oldest, where an exchange in flight started, must stay), and a request that
//! starts in a syscall not kept gets no key (its span is linked across nodes by nothing else).

use std::collections::VecDeque;

/// Marks kept per connection at most.
pub const MAX_MARKS: usize = 32;

#[derive(Clone, Copy, Debug)]
struct Mark {
    ts_ns: u64,
    seq: u32,
    /// Exchanges that started in this syscall so far.
    started: u16,
}

#[derive(Debug, Default)]
pub struct RequestMarks {
    marks: VecDeque<Mark>,
}

impl RequestMarks {
    /// A request-direction syscall at `ts_ns` whose first byte has TCP sequence number `seq`.
    pub fn push(&mut self, ts_ns: u64, seq: u32) {
        if self.marks.len() < MAX_MARKS {
            self.marks.push_back(Mark {
                ts_ns,
                seq,
                started: 0,
            });
        }
    }

    /// The sequence number of the syscall at `start_ns` and the exchange's rank among those
    /// that started in it, for an exchange that completed; forgets the earlier syscalls.
    /// `ordered`: the connection's exchanges complete in the order they started (not an HTTP/2
    /// connection): only then is the rank known, and the earlier marks done with.
    pub fn key(&mut self, start_ns: u64, ordered: bool) -> Option<(u32, u16)> {
        if !ordered {
            return None;
        }
        while self.marks.front().is_some_and(|m| m.ts_ns < start_ns) {
            self.marks.pop_front();
        }
        let mark = self.marks.front_mut().filter(|m| m.ts_ns == start_ns)?;
        let rank = mark.started;
        mark.started = mark.started.saturating_add(1);
        Some((mark.seq, rank))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.marks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_per_syscall() {
        let mut m = RequestMarks::default();
        m.push(10, 1000);
        assert_eq!(m.key(10, true), Some((1000, 0)));
        m.push(20, 1100);
        assert_eq!(m.key(20, true), Some((1100, 0)));
        assert_eq!(m.len(), 1, "the done mark went with the next exchange");
    }

    #[test]
    fn pipelined_requests_in_one_syscall_are_ranked() {
        let mut m = RequestMarks::default();
        m.push(10, 1000);
        assert_eq!(m.key(10, true), Some((1000, 0)));
        assert_eq!(m.key(10, true), Some((1000, 1)));
        assert_eq!(m.key(10, true), Some((1000, 2)));
    }

    #[test]
    fn a_long_body_keeps_its_first_mark_and_an_unknown_start_has_no_key() {
        let mut m = RequestMarks::default();
        for i in 0..100u64 {
            m.push(10 + i, 1000 + i as u32 * 10);
        }
        assert_eq!(m.len(), MAX_MARKS);
        assert_eq!(m.key(10, true), Some((1000, 0)));
        // The next request started in a syscall that was not kept.
        assert_eq!(m.key(200, true), None);
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn multiplexed_exchanges_get_no_key() {
        let mut m = RequestMarks::default();
        m.push(10, 1000);
        assert_eq!(m.key(10, false), None);
        assert_eq!(m.len(), 1);
    }
}
