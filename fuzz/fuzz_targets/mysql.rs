//! Arbitrary bytes, split at arbitrary points into syscalls of both directions, with arbitrary
//! capture limits, fed to MySQL parsers of both sides (half of them after a real greeting and
//! handshake, so that the command phase is reached): no panic, bounded output.
#![no_main]

include!("agent.rs");

use libfuzzer_sys::fuzz_target;

/// A MariaDB 10.11 greeting and a PyMySQL HandshakeResponse41, then its OK: the command phase.
const GREETING: &[u8] = b"d\x00\x00\x00\x0a5.5.5-10.11.19-MariaDB-0+deb12u1\x00\x0a\x00\x00\x00Se%'3g3d\x00\xfe\xf7\x08\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00~n0>'Gr)p{;Q\x00mysql_native_password\x00";
const RESPONSE: &[u8] = b"y\x00\x00\x01\x0d\xa2:\x00\xff\xff\xff\x00-\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00root\x00\x00mysql\x00mysql_native_password\x006\x0c_client_name\x07pymysql\x0f_client_version\x051.2.4\x04_pid\x0525488";
const AUTH_OK: &[u8] = b"\x07\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00";

/// The handshake, so that the fuzzed bytes reach the command phase.
fn handshake(side: Side, parser: &mut dyn Parser, out: &mut Vec<Exchange>) {
    let (to_server, to_client) = match side {
        Side::Client => (Direction::Egress, Direction::Ingress),
        Side::Server => (Direction::Ingress, Direction::Egress),
    };
    let _ = parser.feed(to_client, 0, GREETING, GREETING.len() as u64, out);
    let _ = parser.feed(to_server, 0, RESPONSE, RESPONSE.len() as u64, out);
    let _ = parser.feed(to_client, 0, AUTH_OK, AUTH_OK.len() as u64, out);
}

fuzz_target!(|data: &[u8]| {
    drive(Protocol::Mysql, data, handshake, |x| {
        let protocol::Attributes::Mysql(a) = &x.attributes else {
            panic!("a MySQL parser made another protocol's exchange");
        };
        bounded_query(a);
    });
});
