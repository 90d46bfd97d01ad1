//! Arbitrary bytes, split at arbitrary points into syscalls of both directions, with arbitrary
//! capture limits, fed to MySQL parsers of both sides (after a real greeting and handshake, so
//! that the command phase is reached): no panic, bounded output.
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

/// A MariaDB 10.11 greeting and a PyMySQL HandshakeResponse41, then its OK: the command phase.
const GREETING: &[u8] = b"d\x00\x00\x00\x0a5.5.5-10.11.19-MariaDB-0+deb12u1\x00\x0a\x00\x00\x00Se%'3g3d\x00\xfe\xf7\x08\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00~n0>'Gr)p{;Q\x00mysql_native_password\x00";
const RESPONSE: &[u8] = b"y\x00\x00\x01\x0d\xa2:\x00\xff\xff\xff\x00-\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00root\x00\x00mysql\x00mysql_native_password\x006\x0c_client_name\x07pymysql\x0f_client_version\x051.2.4\x04_pid\x0525488";
const AUTH_OK: &[u8] = b"\x07\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00";

fuzz_target!(|data: &[u8]| {
    // The first bytes drive the split: each control byte picks a direction, a length and a
    // capture limit for the next syscall; the rest is the payload stream.
    let (control, stream) = data.split_at(data.len().min(64));
    for side in [Side::Client, Side::Server] {
        let mut parser = protocol::new_parser(Protocol::Mysql, side);
        let _ = protocol::detect(side, Direction::Ingress, stream);
        let _ = protocol::detect(side, Direction::Egress, stream);
        let mut out = Vec::new();
        let (to_server, to_client) = match side {
            Side::Client => (Direction::Egress, Direction::Ingress),
            Side::Server => (Direction::Ingress, Direction::Egress),
        };
        // Half of the inputs start in the command phase.
        if control.first().is_some_and(|c| c & 0x80 != 0) {
            let _ = parser.feed(to_client, 0, GREETING, GREETING.len() as u64, &mut out);
            let _ = parser.feed(to_server, 0, RESPONSE, RESPONSE.len() as u64, &mut out);
            let _ = parser.feed(to_client, 0, AUTH_OK, AUTH_OK.len() as u64, &mut out);
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
            assert!(out.len() <= 256 * 64, "more exchanges than packets");
        }
        parser.close(ts + 1, &mut out);
        assert!(!parser.in_flight());
        for x in &out {
            let protocol::Attributes::Mysql(a) = &x.attributes else {
                panic!("a MySQL parser made another protocol's exchange");
            };
            assert!(a.query.as_ref().is_none_or(|q| q.len() <= protocol::db::MAX_QUERY_BYTES));
            assert!(x.start_ns <= x.end_ns);
            let _ = x.error_type();
            let _ = x.attributes.span_name();
        }
    }
});
