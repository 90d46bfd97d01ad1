// The agent's protocol module and what it stands on, from the agent's sources, and the driver
// every parser target shares. Pasted into each target's crate root with `include!` (the agent's
// modules name each other `crate::...`).

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
#[allow(dead_code, reason = "the targets drive the parsers, not the request metrics")]
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
    reason = "the targets drive the parser API only; sessions and metrics stay unused"
)]
mod protocol;

use protocol::{Direction, Exchange, Parser, Protocol, Side};

/// Arbitrary bytes, split at arbitrary points into syscalls of both directions with arbitrary
/// capture limits and lost events, fed to `protocol`'s parsers of both sides, after what
/// `preamble` feeds them (when the first control byte's top bit is set). No panic, a bounded
/// number of exchanges, nothing in flight after the close, and `check` holds for every exchange.
#[allow(dead_code, reason = "the hpack target drives the decoder directly")]
fn drive(
    protocol: Protocol,
    data: &[u8],
    preamble: impl Fn(Side, &mut dyn Parser, &mut Vec<Exchange>),
    check: impl Fn(&Exchange),
) {
    // The first bytes drive the split: each control byte picks a direction, a length and a
    // capture limit for the next syscall; the rest is the payload stream.
    let (control, stream) = data.split_at(data.len().min(64));
    for side in [Side::Client, Side::Server] {
        let mut parser = protocol::new_parser(protocol, side);
        for midstream in [false, true] {
            let _ = protocol::detect(side, Direction::Ingress, stream, midstream);
            let _ = protocol::detect(side, Direction::Egress, stream, midstream);
        }
        let mut out = Vec::new();
        if control.first().is_some_and(|c| c & 0x80 != 0) {
            preamble(side, parser.as_mut(), &mut out);
        }
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
            assert!(out.len() <= 256 * 64, "more exchanges than bytes could carry");
        }
        parser.close(ts + 1, &mut out);
        parser.take_errors(&mut |_, _| {});
        assert!(!parser.in_flight(), "in flight after the close");
        for x in &out {
            assert!(x.start_ns <= x.end_ns);
            let _ = x.error_type();
            let _ = x.attributes.span_name();
            check(x);
        }
    }
}

/// Nothing to feed before the fuzzed bytes.
#[allow(dead_code, reason = "the targets whose protocol needs no handshake")]
fn no_preamble(_: Side, _: &mut dyn Parser, _: &mut Vec<Exchange>) {}

/// A database exchange's query text is bounded.
#[allow(dead_code, reason = "the database targets")]
fn bounded_query(a: &protocol::db::DbAttributes) {
    assert!(a.query.as_ref().is_none_or(|q| q.len() <= protocol::db::MAX_QUERY_BYTES));
}
