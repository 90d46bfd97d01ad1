//! Arbitrary bytes, split at arbitrary points into syscalls of both directions, with arbitrary
//! capture limits, fed to Memcached parsers (text protocol; binary detected) of both sides: no
//! panic, buffers bounded.
#![no_main]

// The protocol module and what it stands on, from the agent's sources.
#[path = "../../agent/src/event.rs"]
#[allow(
    dead_code,
    unfulfilled_lint_expectations,
    reason = "decoding is not fuzzed here; the parsers use its Direction"
)]
mod event;
#[path = "../../agent/src/fast.rs"]
#[allow(dead_code, reason = "the sessions' maps only")]
mod fast;
#[path = "../../agent/src/metrics/mod.rs"]
#[allow(dead_code, reason = "the target drives the parsers, not the request metrics")]
mod metrics;
#[path = "../../agent/src/semconv.rs"]
#[allow(dead_code, reason = "span attributes are not built here")]
mod semconv;
#[path = "../../agent/src/metadata/pod.rs"]
#[allow(dead_code, reason = "pod names only reach the request metrics")]
mod pod;
/// `crate::metadata::pod`, as the agent's modules name it.
mod metadata {
    pub(crate) use crate::pod;
}
#[path = "../../agent/src/protocol/mod.rs"]
#[allow(
    dead_code,
    reason = "the target drives the parser API only; sessions and metrics stay unused"
)]
mod protocol;

use libfuzzer_sys::fuzz_target;
use protocol::{Direction, Protocol, Side};

fuzz_target!(|data: &[u8]| {
    // The first bytes drive the split: each control byte picks a direction, a length and a
    // capture limit for the next syscall; the rest is the payload stream.
    let (control, stream) = data.split_at(data.len().min(64));
    for side in [Side::Client, Side::Server] {
        let mut parser = protocol::new_parser(Protocol::Memcached, side);
        let _ = protocol::detect(side, Direction::Ingress, stream);
        let _ = protocol::detect(side, Direction::Egress, stream);
        let mut out = Vec::new();
        let mut rest = stream;
        let mut ts = 0;
        for &c in control.iter().cycle().take(256) {
            if rest.is_empty() {
                break;
            }
            ts += 1;
            let dir = if c & 1 == 0 {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            let len = usize::from(c >> 1).max(1).min(rest.len());
            let (chunk, tail) = rest.split_at(len);
            rest = tail;
            let capture = match c >> 6 {
                0 => chunk.len(),
                1 => 0,
                2 => 16,
                _ => 1,
            };
            let uncaptured = if c & 0x20 != 0 {
                u64::from(c) * 4096
            } else {
                0
            };
            match c % 31 {
                0 => parser.gap(dir),
                _ => {
                    let payload = &chunk[..capture.min(chunk.len())];
                    let _ =
                        parser.feed(dir, ts, payload, chunk.len() as u64 + uncaptured, &mut out);
                }
            }
        }
        parser.close(ts + 1, &mut out);
        for x in &out {
            let protocol::Attributes::Memcached(a) = &x.attributes else {
                panic!("a Memcached parser made another protocol's exchange");
            };
            assert!(a.db.query.as_ref().is_none_or(|q| q.len() <= protocol::db::MAX_QUERY_BYTES));
            assert!(x.start_ns <= x.end_ns);
            let _ = x.error_type();
        }
    }
});
