//! Golden tests: MySQL protocol bytes captured from MariaDB 10.11 (Debian 12) and its clients
//! (PyMySQL, mysql-connector-python with server-side prepared statements, the `mariadb` CLI),
//! replayed whole, one byte per syscall, and with the capture limit simulated (payload = first
//! N bytes of each syscall, bytes = its full length), from both sides, against exact expected
//! exchanges. A few fixtures the test clients do not produce (`CLIENT_DEPRECATE_EOF`, TLS,
//! compression, packets over 16 MiB) are built from the protocol documentation.

use super::*;
use crate::protocol::{Attributes, Parser as _};

/// One syscall: client-to-server or server-to-client, timestamp, bytes moved.
use crate::protocol::replay::{Io, Mode, q, r};

/// The modes in which every fixture below is seen whole enough to give the same exchanges.
const MODES: [Mode; 4] = [
    Mode::Whole,
    Mode::Bytewise,
    Mode::Capture(256),
    Mode::Capture(4096),
];

/// `system OPERATION collection outcome[ code] ns=namespace start-end`.
fn summary(x: &Exchange) -> String {
    let Attributes::Mysql(a) = &x.attributes else {
        panic!("not MySQL: {x:?}");
    };
    let code = a
        .status_code
        .as_ref()
        .map_or_else(String::new, |c| format!(" {c}"));
    format!(
        "{} {} {} {:?}{code} ns={} {}-{}{}",
        a.system.name(),
        a.operation,
        a.collection.as_deref().unwrap_or("-"),
        x.outcome,
        a.namespace.as_deref().unwrap_or("-"),
        x.start_ns,
        x.end_ns,
        if x.truncated { " truncated" } else { "" },
    )
}

struct Run {
    exchanges: Vec<Exchange>,
    errors: Vec<&'static str>,
    parser: Parser,
}

fn replay(side: Side, ios: &[Io], close: Option<u64>, mode: Mode) -> Run {
    let mut parser = Parser::new(side);
    let mut exchanges = Vec::new();
    let mut errors = Vec::new();
    let request_dir = side.request_direction();
    let response_dir = match request_dir {
        Direction::Egress => Direction::Ingress,
        Direction::Ingress => Direction::Egress,
    };
    for io in ios {
        let (dir, ts, bytes) = match io {
            Io::Req(ts, b) => (request_dir, *ts, b.as_slice()),
            Io::Resp(ts, b) => (response_dir, *ts, b.as_slice()),
        };
        let mut feed = |payload: &[u8], n: usize| {
            if let Err(e) = parser.feed(dir, ts, payload, n as u64, &mut exchanges) {
                errors.push(e.reason);
            }
        };
        match mode {
            Mode::Whole => feed(bytes, bytes.len()),
            Mode::Bytewise => {
                for b in bytes.chunks(1) {
                    feed(b, 1);
                }
            }
            Mode::Capture(n) => feed(bytes.get(..n).unwrap_or(bytes), bytes.len()),
        }
        let (head, pending, statements) = parser.buffered();
        assert!(head <= COMMAND_KEEP && pending <= MAX_PENDING && statements <= MAX_STATEMENTS);
    }
    if let Some(ts) = close {
        let in_flight = parser.in_flight();
        let before = exchanges.len();
        parser.close(ts, &mut exchanges);
        assert!(
            in_flight || exchanges.len() == before,
            "in_flight said no: {exchanges:?}"
        );
        assert!(!parser.in_flight(), "in flight after close");
    }
    Run {
        exchanges,
        errors,
        parser,
    }
}

fn summaries(run: &Run) -> Vec<String> {
    run.exchanges.iter().map(summary).collect()
}

/// Replays `ios` in every mode of [`MODES`], from both sides, and compares with `expect`.
fn check(ios: &[Io], close: Option<u64>, expect: &[&str]) {
    for side in [Side::Server, Side::Client] {
        for mode in MODES {
            let run = replay(side, ios, close, mode);
            assert_eq!(
                summaries(&run),
                expect,
                "{side:?} {mode:?} errors: {:?}",
                run.errors
            );
            assert!(run.errors.is_empty(), "{side:?} {mode:?}: {:?}", run.errors);
        }
    }
}

fn attributes(x: &Exchange) -> &DbAttributes {
    let Attributes::Mysql(a) = &x.attributes else {
        panic!("not MySQL: {x:?}");
    };
    a
}
/// pymysql_session
fn pymysql_session() -> Vec<Io> {
    vec![
        r(10, b"d\x00\x00\x00\x0a5.5.5-10.11.19-MariaDB-0+deb12u1\x00\x0a\x00\x00\x00Se%'3g3d\x00\xfe\xf7\x08\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00~n0>'Gr)p{;Q\x00mysql_native_password\x00"),
        q(20, b"y\x00\x00\x01\x0d\xa2:\x00\xff\xff\xff\x00-\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00root\x00\x00mysql\x00mysql_native_password\x006\x0c_client_name\x07pymysql\x0f_client_version\x051.2.4\x04_pid\x0525488"),
        r(30, b"\x07\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00"),
        q(40, b"\x12\x00\x00\x00\x03SET NAMES utf8mb4"),
        r(50, b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00"),
        q(60, b"#\x00\x00\x00\x03CREATE DATABASE IF NOT EXISTS shop"),
        r(70, b"\x07\x00\x00\x01\x00\x01\x00\x02\x00\x00\x00"),
        q(80, b"\x09\x00\x00\x00\x03USE shop"),
        r(90, b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00"),
        q(100, b"a\x00\x00\x00\x03CREATE TABLE IF NOT EXISTS orders (id INT PRIMARY KEY AUTO_INCREMENT, item VARCHAR(32), qty INT)"),
        r(110, b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00"),
        q(120, b"3\x00\x00\x00\x03INSERT INTO orders (item, qty) VALUES ('apple', 3)"),
        r(130, b"\x07\x00\x00\x01\x00\x01\x01\x02\x00\x00\x00"),
        q(140, b"*\x00\x00\x00\x03SELECT id, item FROM orders WHERE qty > 1"),
        r(150, b"\x01\x00\x00\x01\x02*\x00\x00\x02\x03def\x04shop\x06orders\x06orders\x02id\x02id\x0c?\x00\x0b\x00\x00\x00\x03\x03B\x00\x00\x00.\x00\x00\x03\x03def\x04shop\x06orders\x06orders\x04item\x04item\x0c-\x00\x80\x00\x00\x00\xfd\x00\x00\x00\x00\x00\x05\x00\x00\x04\xfe\x00\x00\"\x00\x08\x00\x00\x05\x011\x05apple\x05\x00\x00\x06\xfe\x00\x00\"\x00"),
        q(160, b"\x13\x00\x00\x00\x03SELECT * FROM nope"),
        r(170, b"(\x00\x00\x01\xffz\x04#42S02Table 'shop.nope' doesn't exist"),
        q(180, b"\x01\x00\x00\x00\x0e"),
        r(190, b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00"),
        q(200, b"\x06\x00\x00\x00\x02mysql"),
        r(210, b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00"),
        q(220, b"\x01\x00\x00\x00\x01"),
    ]
}
/// connector_prepared
fn connector_prepared() -> Vec<Io> {
    vec![
        r(10, b"d\x00\x00\x00\x0a5.5.5-10.11.19-MariaDB-0+deb12u1\x00\x0b\x00\x00\x00aOGVY<`N\x00\xfe\xf7\x08\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00H]xh}];KIiY`\x00mysql_native_password\x00"),
        q(20, b"\xd0\x00\x00\x01\x0d\xa2;\x00\x00\x00\x00@-\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00root\x00\x00shop\x00mysql_native_password\x00\x8e\x04_pid\x0525488\x09_platform\x06x86_64\x0c_source_host\x02vm\x0c_client_name\x16mysql-connector-python\x0f_client_license\x07GPL-2.0\x0f_client_version\x0726.10.0\x03_os\x09Debian-12"),
        r(30, b"\x07\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00"),
        q(40, b"1\x00\x00\x00\x03SET NAMES 'utf8mb4' COLLATE 'utf8mb4_general_ci'"),
        r(50, b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00"),
        q(60, b"\x1f\x00\x00\x00\x03SET @@session.autocommit = OFF"),
        r(70, b"\x07\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00"),
        q(80, b"\x01\x00\x00\x00\x0e"),
        r(90, b"\x07\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00"),
        q(100, b"*\x00\x00\x00\x16SELECT item, qty FROM orders WHERE id = ?"),
        r(110, b"\x0c\x00\x00\x01\x00\x01\x00\x00\x00\x02\x00\x01\x00\x00\x00\x00\x17\x00\x00\x02\x03def\x00\x00\x00\x01?\x00\x0c?\x00\x00\x00\x00\x00\x06\x80\x00\x00\x00\x00\x05\x00\x00\x03\xfe\x00\x00\x00\x00.\x00\x00\x04\x03def\x04shop\x06orders\x06orders\x04item\x04item\x0c-\x00\x80\x00\x00\x00\xfd\x00\x00\x00\x00\x00,\x00\x00\x05\x03def\x04shop\x06orders\x06orders\x03qty\x03qty\x0c?\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00\x05\x00\x00\x06\xfe\x00\x00\x00\x00"),
        q(120, b"\x05\x00\x00\x00\x1a\x01\x00\x00\x00"),
        r(130, b"\x07\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00"),
        q(140, b"\x0f\x00\x00\x00\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01\x01\x80\x01"),
        r(150, b"\x01\x00\x00\x01\x02.\x00\x00\x02\x03def\x04shop\x06orders\x06orders\x04item\x04item\x0c-\x00\x80\x00\x00\x00\xfd\x00\x00\x00\x00\x00,\x00\x00\x03\x03def\x04shop\x06orders\x06orders\x03qty\x03qty\x0c?\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00\x05\x00\x00\x04\xfe\x00\x00\x01\x00\x0c\x00\x00\x05\x00\x00\x05apple\x03\x00\x00\x00\x05\x00\x00\x06\xfe\x00\x00\x01\x00"),
        q(160, b"\x05\x00\x00\x00\x19\x01\x00\x00\x00"),
        q(170, b"-\x00\x00\x00\x16INSERT INTO orders (item, qty) VALUES (?, ?)"),
        r(180, b"\x0c\x00\x00\x01\x00\x02\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x17\x00\x00\x02\x03def\x00\x00\x00\x01?\x00\x0c?\x00\x00\x00\x00\x00\x06\x80\x00\x00\x00\x00\x17\x00\x00\x03\x03def\x00\x00\x00\x01?\x00\x0c?\x00\x00\x00\x00\x00\x06\x80\x00\x00\x00\x00\x05\x00\x00\x04\xfe\x00\x00\x01\x00"),
        q(190, b"\x05\x00\x00\x00\x1a\x02\x00\x00\x00"),
        r(200, b"\x07\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00"),
        q(210, b"\x16\x00\x00\x00\x17\x02\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01\xfe\x00\x01\x80\x04pear\x02"),
        r(220, b"\x07\x00\x00\x01\x00\x01\x02\x01\x00\x00\x00"),
        q(230, b"\x05\x00\x00\x00\x19\x02\x00\x00\x00\x01\x00\x00\x00\x01"),
    ]
}
/// mariadb_cli
fn mariadb_cli() -> Vec<Io> {
    vec![
        r(10, b"d\x00\x00\x00\x0a5.5.5-10.11.19-MariaDB-0+deb12u1\x00\x07\x00\x00\x00L&s7V,s%\x00\xfe\xf7\x08\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00XnC?Se#z_MER\x00mysql_native_password\x00"),
        q(20, b"\xc1\x00\x00\x01\x8c\xa2\xbf\x00\x00\x00\x10\x00!\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00root\x00\x00shop\x00mysql_native_password\x00\x7f\x03_os\x05Linux\x0c_client_name\x0alibmariadb\x04_pid\x0511205\x0f_client_version\x063.3.20\x09_platform\x06x86_64\x0cprogram_name\x05mysql\x0c_server_host\x09127.0.0.1"),
        r(30, b"\x10\x00\x00\x02\x00\x00\x00\x02@\x00\x00\x00\x07\x01\x05\x04shop"),
        q(40, b"\x16\x00\x00\x00\x03SELECT id FROM orders"),
        r(50, b"\x02\x00\x00\x01\x01\x01+\x00\x00\x02\x03def\x04shop\x06orders\x06orders\x02id\x02id\x00\x0c?\x00\x0b\x00\x00\x00\x03\x03B\x00\x00\x00\x05\x00\x00\x03\xfe\x00\x00\"\x00\x02\x00\x00\x04\x011\x05\x00\x00\x05\xfe\x00\x00\"\x00"),
        q(60, b"\x0e\x00\x00\x00\x03SELECT 1, 'x'"),
        r(70, b"\x02\x00\x00\x01\x02\x01\x18\x00\x00\x02\x03def\x00\x00\x00\x011\x00\x00\x0c?\x00\x01\x00\x00\x00\x03\x81\x00\x00\x00\x00\x18\x00\x00\x03\x03def\x00\x00\x00\x01x\x00\x00\x0c!\x00\x03\x00\x00\x00\xfd\x01\x00'\x00\x00\x05\x00\x00\x04\xfe\x00\x00\x02\x00\x04\x00\x00\x05\x011\x01x\x05\x00\x00\x06\xfe\x00\x00\x02\x00"),
        q(80, b"!\x00\x00\x00\x03DELETE FROM orders WHERE id = 99"),
        r(90, b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00"),
        q(100, b"\x01\x00\x00\x00\x01"),
    ]
}
/// multi_statement
fn multi_statement() -> Vec<Io> {
    vec![
        r(10, b"d\x00\x00\x00\x0a5.5.5-10.11.19-MariaDB-0+deb12u1\x00\x08\x00\x00\x00n\\bXpMlX\x00\xfe\xf7\x08\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00U$OA725R~Co*\x00mysql_native_password\x00"),
        q(20, b"x\x00\x00\x01\x0d\xa2;\x00\xff\xff\xff\x00-\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00root\x00\x00shop\x00mysql_native_password\x006\x0c_client_name\x07pymysql\x0f_client_version\x051.2.4\x04_pid\x0511235"),
        r(30, b"\x07\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00"),
        q(40, b"\x12\x00\x00\x00\x03SET NAMES utf8mb4"),
        r(50, b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00"),
        q(60, b"S\x00\x00\x00\x03UPDATE orders SET qty = 4 WHERE id = 1; SELECT qty FROM orders; SELECT * FROM nope"),
        r(70, b"0\x00\x00\x01\x00\x01\x00\x0a\x00\x00\x00(Rows matched: 1  Changed: 1  Warnings: 0"),
        r(80, b"\x01\x00\x00\x02\x01,\x00\x00\x03\x03def\x04shop\x06orders\x06orders\x03qty\x03qty\x0c?\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00\x05\x00\x00\x04\xfe\x00\x00*\x00\x02\x00\x00\x05\x014\x05\x00\x00\x06\xfe\x00\x00*\x00"),
        r(90, b"(\x00\x00\x07\xffz\x04#42S02Table 'shop.nope' doesn't exist"),
        q(100, b"\x01\x00\x00\x00\x01"),
    ]
}

const PYMYSQL: [&str; 9] = [
    "mariadb SET - Ok ns=mysql 40-50",
    "mariadb CREATE - Ok ns=mysql 60-70",
    "mariadb USE - Ok ns=shop 80-90",
    "mariadb CREATE orders Ok ns=shop 100-110",
    "mariadb INSERT orders Ok ns=shop 120-130",
    "mariadb SELECT orders Ok ns=shop 140-150",
    "mariadb SELECT nope ServerError 1146 ns=shop 160-170",
    "mariadb PING - Ok ns=shop 180-190",
    "mariadb INIT_DB - Ok ns=mysql 200-210",
];

#[test]
fn text_protocol_queries_errors_ping_and_init_db() {
    check(&pymysql_session(), Some(1000), &PYMYSQL);
    let run = replay(Side::Client, &pymysql_session(), None, Mode::Whole);
    let select = &run.exchanges[5];
    assert_eq!(
        (
            select.request_bytes,
            select.response_bytes,
            select.truncated
        ),
        (46, 131, false)
    );
    assert_eq!(
        attributes(select).query.as_deref(),
        Some("SELECT id, item FROM orders WHERE qty > 1")
    );
    let error = &run.exchanges[6];
    assert_eq!(error.error_type(), "1146");
    assert!(error.failed(Side::Server) && error.failed(Side::Client));
    // COM_QUIT is not an exchange, and nothing awaits a response.
    assert!(!run.parser.in_flight());
}

#[test]
fn capture_limits_use_what_was_seen() {
    for side in [Side::Server, Side::Client] {
        // A result set longer than the capture ends, truncated, before the next command.
        let run = replay(side, &pymysql_session(), Some(1000), Mode::Capture(64));
        let mut want = PYMYSQL.map(String::from).to_vec();
        want[3] += " truncated"; // the CREATE TABLE statement is longer than 64 bytes
        want[5] += " truncated";
        assert_eq!(summaries(&run), want, "{side:?}");
        assert!(run.errors.is_empty(), "{:?}", run.errors);
        // The bytes moved are counted all the same.
        assert_eq!(run.exchanges[5].response_bytes, 131);
        assert_eq!(run.exchanges[3].request_bytes, 101);
        // A greeting whose version string was not captured: nothing is parsed, nothing invented.
        let run = replay(side, &pymysql_session(), Some(1000), Mode::Capture(16));
        assert!(run.exchanges.is_empty());
        assert_eq!(run.errors, ["handshake_not_captured"]);
        assert!(run.parser.is_dead());
        let run = replay(side, &pymysql_session(), Some(1000), Mode::Capture(0));
        assert!(run.exchanges.is_empty());
    }
}

#[test]
fn prepared_statements_execute_their_text() {
    let want = [
        "mariadb SET - Ok ns=shop 40-50",
        "mariadb SET - Ok ns=shop 60-70",
        "mariadb PING - Ok ns=shop 80-90",
        "mariadb PREPARE orders Ok ns=shop 100-110",
        "mariadb STMT_RESET - Ok ns=shop 120-130",
        "mariadb SELECT orders Ok ns=shop 140-150",
        // COM_STMT_CLOSE at 160 has no response: not an exchange.
        "mariadb PREPARE orders Ok ns=shop 170-180",
        "mariadb STMT_RESET - Ok ns=shop 190-200",
        "mariadb INSERT orders Ok ns=shop 210-220",
    ];
    check(&connector_prepared(), Some(1000), &want);
    let run = replay(Side::Server, &connector_prepared(), None, Mode::Whole);
    assert_eq!(
        attributes(&run.exchanges[5]).query.as_deref(),
        Some("SELECT item, qty FROM orders WHERE id = ?")
    );
    assert_eq!(
        attributes(&run.exchanges[8]).query.as_deref(),
        Some("INSERT INTO orders (item, qty) VALUES (?, ?)")
    );
    // COM_STMT_CLOSE and COM_QUIT in one write: both statements are forgotten.
    assert_eq!(run.parser.buffered(), (0, 0, 0));
    assert!(!run.parser.in_flight());
}

#[test]
fn an_unknown_statement_executes_as_execute() {
    let mut ios = connector_prepared();
    // Drop the PREPARE of statement 1 and its response: its EXECUTE names an unknown id.
    ios.remove(10);
    ios.remove(9);
    let run = replay(Side::Client, &ios, None, Mode::Whole);
    let got = summaries(&run);
    assert!(
        got.contains(&"mariadb EXECUTE - Ok ns=shop 140-150".to_owned()),
        "{got:?}"
    );
}

#[test]
fn mariadb_metadata_cache_capability() {
    check(
        &mariadb_cli(),
        Some(1000),
        &[
            "mariadb SELECT orders Ok ns=shop 40-50",
            "mariadb SELECT - Ok ns=shop 60-70",
            "mariadb DELETE orders Ok ns=shop 80-90",
        ],
    );
}

#[test]
fn multiple_result_sets_are_one_exchange() {
    // UPDATE; SELECT; SELECT from a missing table: OK with SERVER_MORE_RESULTS_EXISTS, a result
    // set whose EOF has it too, then the ERR of the third statement.
    check(
        &multi_statement(),
        Some(1000),
        &[
            "mariadb SET - Ok ns=shop 40-50",
            "mariadb UPDATE orders ServerError 1146 ns=shop 60-90",
        ],
    );
}

/// A MySQL 8 greeting (capabilities with `CLIENT_DEPRECATE_EOF`, the version without MariaDB),
/// a HandshakeResponse41 with `CLIENT_DEPRECATE_EOF` and `CLIENT_CONNECT_WITH_DB` (`app`).
fn mysql8_handshake(client_caps: u32) -> Vec<Io> {
    let mut greeting = vec![PROTOCOL_V10];
    greeting.extend_from_slice(b"8.0.36\0");
    greeting.extend_from_slice(&7u32.to_le_bytes()); // connection id
    greeting.extend_from_slice(b"abcdefgh\0"); // auth data part 1, filler
    greeting.extend_from_slice(&0xFFFFu16.to_le_bytes()); // capabilities, low
    greeting.extend_from_slice(&[0xFF, 0x02, 0x00]); // character set, status
    greeting.extend_from_slice(&0xDFFFu16.to_le_bytes()); // capabilities, high
    greeting.push(21);
    greeting.extend_from_slice(&[0; 10]);
    greeting.extend_from_slice(b"ijklmnopqrst\0caching_sha2_password\0");
    let mut response = client_caps.to_le_bytes().to_vec();
    response.extend_from_slice(&(1u32 << 24).to_le_bytes());
    response.push(0xFF);
    response.extend_from_slice(&[0; 23]);
    response.extend_from_slice(b"app_user\0");
    response.push(0); // empty auth response (CLIENT_SECURE_CONNECTION)
    response.extend_from_slice(b"app\0caching_sha2_password\0");
    vec![
        r(10, packet(0, &greeting)),
        q(20, packet(1, &response)),
        r(30, packet(2, b"\x01\x03")), // fast auth success
        r(31, packet(3, b"\x00\x00\x00\x02\x00\x00\x00")),
    ]
}

fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut p = len.to_le_bytes()[..3].to_vec();
    p.push(seq);
    p.extend_from_slice(payload);
    p
}

fn packets(first_seq: u8, payloads: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        out.extend(packet(first_seq + i as u8, p));
    }
    out
}

/// `CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_CONNECT_WITH_DB |
/// CLIENT_PLUGIN_AUTH | CLIENT_DEPRECATE_EOF | CLIENT_MULTI_RESULTS`.
const MYSQL8_CLIENT: u32 = 0x0200 | 0x8000 | 0x0008 | (1 << 19) | (1 << 24) | (1 << 17);

#[test]
fn deprecate_eof_result_sets_end_with_ok() {
    let column = b"\x03def\x03app\x01t\x01t\x01a\x01a\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00";
    let mut ios = mysql8_handshake(MYSQL8_CLIENT);
    ios.extend([
        q(40, packet(0, b"\x03SELECT a FROM t")),
        // Column count, one definition, no EOF; two rows; OK with 0xFE header.
        r(
            50,
            packets(
                1,
                &[
                    b"\x01",
                    column,
                    b"\x011",
                    b"\x012",
                    b"\xfe\x00\x00\x02\x00\x00\x00",
                ],
            ),
        ),
        // A procedure: a result set with SERVER_MORE_RESULTS_EXISTS, then the final OK.
        q(60, packet(0, b"\x03CALL p()")),
        r(
            70,
            packets(
                1,
                &[b"\x01", column, b"\x011", b"\xfe\x00\x00\x0a\x00\x00\x00"],
            ),
        ),
        r(71, packet(5, b"\x00\x00\x00\x02\x00\x00\x00")),
        // A prepared statement with one parameter and one column: no EOFs.
        q(80, packet(0, b"\x16SELECT a FROM t WHERE a = ?")),
        r(
            90,
            packets(
                1,
                &[
                    b"\x00\x05\x00\x00\x00\x01\x00\x01\x00\x00\x00\x00",
                    column,
                    column,
                ],
            ),
        ),
        q(
            100,
            packet(
                0,
                b"\x17\x05\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01\x03\x00\x07\x00\x00\x00",
            ),
        ),
        r(
            110,
            packets(
                1,
                &[
                    b"\x01",
                    column,
                    b"\x00\x00\x07\x00\x00\x00",
                    b"\xfe\x00\x00\x02\x00\x00\x00",
                ],
            ),
        ),
        // An error inside the rows.
        q(120, packet(0, b"\x03SELECT a FROM t")),
        r(130, packets(1, &[b"\x01", column, b"\x011"])),
        r(
            131,
            packet(4, b"\xff\x25\x05#HY000Query execution was interrupted"),
        ),
    ]);
    check(
        &ios,
        Some(1000),
        &[
            "mysql SELECT t Ok ns=app 40-50",
            "mysql CALL - Ok ns=app 60-71",
            "mysql PREPARE t Ok ns=app 80-90",
            "mysql SELECT t Ok ns=app 100-110",
            "mysql SELECT t ServerError 1317 ns=app 120-131",
        ],
    );
}

#[test]
fn tls_and_compression_are_not_parsed() {
    // An SSLRequest: capabilities with CLIENT_SSL, then the TLS handshake.
    let mut ios = mysql8_handshake(MYSQL8_CLIENT);
    ios.truncate(1);
    let mut ssl = (MYSQL8_CLIENT | 0x0800).to_le_bytes().to_vec();
    ssl.extend_from_slice(&[0, 0, 0, 1, 0xFF]);
    ssl.extend_from_slice(&[0; 23]);
    ios.push(q(20, packet(1, &ssl)));
    ios.push(q(30, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"));
    for mode in MODES {
        let run = replay(Side::Client, &ios, Some(100), mode);
        assert!(run.exchanges.is_empty());
        assert_eq!(run.errors, ["tls"], "{mode:?}");
        assert!(run.parser.is_dead());
    }
    // CLIENT_COMPRESS: the packets after the handshake are compressed.
    let mut ios = mysql8_handshake(MYSQL8_CLIENT | 0x20);
    ios.push(q(
        40,
        b"\x13\x00\x00\x00\x00\x00\x00\x0f\x00\x00\x00\x03SELECT 1",
    ));
    let run = replay(Side::Server, &ios, Some(100), Mode::Whole);
    assert!(run.exchanges.is_empty());
    assert_eq!(run.errors, ["compressed"]);
    assert!(run.parser.is_dead());
}

#[test]
fn packets_over_16_mib_continue() {
    // A 20 MiB INSERT: a packet of 0xFFFFFF bytes, then one of the rest; each syscall moves
    // 1 MiB, of which the first 256 bytes, then `captured` bytes, are captured.
    const TOTAL: u64 = 20 << 20;
    let text = b"\x03INSERT INTO blobs VALUES ('";
    let second = (TOTAL - 0xFF_FFFF).to_le_bytes();
    let header2 = [second[0], second[1], second[2], 1];
    let wire = TOTAL + 8;
    let byte_at = |at: u64| -> u8 {
        match at {
            0..=2 => 0xFF,
            3 => 0,
            4.. if at - 4 < text.len() as u64 => text[(at - 4) as usize],
            _ if (0xFF_FFFF + 4..0xFF_FFFF + 8).contains(&at) => {
                header2[(at - 0xFF_FFFF - 4) as usize]
            }
            _ => b'x',
        }
    };
    for captured in [16u64, 2] {
        let mut p = Parser::new(Side::Server);
        let mut out = Vec::new();
        for io in mysql8_handshake(MYSQL8_CLIENT) {
            let (dir, ts, b) = match io {
                Io::Req(ts, b) => (Direction::Ingress, ts, b),
                Io::Resp(ts, b) => (Direction::Egress, ts, b),
            };
            p.feed(dir, ts, &b, b.len() as u64, &mut out).unwrap();
        }
        let mut sent = 0u64;
        let mut ts = 100;
        while sent < wire {
            let n = (1u64 << 20).min(wire - sent);
            let keep = if sent == 0 { 256 } else { captured };
            let payload: Vec<u8> = (sent..sent + keep.min(n)).map(byte_at).collect();
            p.feed(Direction::Ingress, ts, &payload, n, &mut out)
                .unwrap();
            sent += n;
            ts += 1;
        }
        p.feed(
            Direction::Egress,
            500,
            &packet(2, b"\x00\x01\x00\x02\x00\x00\x00"),
            11,
            &mut out,
        )
        .unwrap();
        // With 2 bytes captured the second header is not: the framing is lost, the bytes are
        // counted all the same, and the server's answer ends the exchange.
        assert_eq!(out.len(), 1, "{out:?}");
        let x = &out[0];
        assert_eq!(summary(x), "mysql INSERT blobs Ok ns=app 100-500 truncated");
        assert_eq!(x.request_bytes, wire, "captured {captured}");
    }

    // The same with the second header captured (each syscall one packet): exact, and a row
    // over 16 MiB whose continuation starts with 0xFE is not taken for the end of the rows.
    let mut p = Parser::new(Side::Client);
    let mut out = Vec::new();
    for io in mysql8_handshake(MYSQL8_CLIENT & !(1 << 24)) {
        let (dir, ts, b) = match io {
            Io::Req(ts, b) => (Direction::Egress, ts, b),
            Io::Resp(ts, b) => (Direction::Ingress, ts, b),
        };
        p.feed(dir, ts, &b, b.len() as u64, &mut out).unwrap();
    }
    let first: Vec<u8> = (0..256).map(byte_at).collect();
    p.feed(Direction::Egress, 100, &first, 0xFF_FFFF + 4, &mut out)
        .unwrap();
    let rest = [0x10, 0, 0, 1, b'x'];
    p.feed(Direction::Egress, 101, &rest, 0x10 + 4, &mut out)
        .unwrap();
    let column = b"\x03def\x03app\x01t\x01t\x01a\x01a\x0c\x3f\x00\x0b\x00\x00\x00\xfc\x00\x00\x00";
    let head = packets(2, &[b"\x01", column, b"\xfe\x00\x00\x02\x00"]);
    p.feed(Direction::Ingress, 200, &head, head.len() as u64, &mut out)
        .unwrap();
    let row = [0xFF, 0xFF, 0xFF, 5, 0xFE];
    p.feed(Direction::Ingress, 201, &row, 0xFF_FFFF + 4, &mut out)
        .unwrap();
    // The continuation: 5 bytes starting with 0xFE, like an EOF, but not one.
    let cont = packet(6, b"\xfe\x00\x00\x02\x00");
    p.feed(Direction::Ingress, 202, &cont, cont.len() as u64, &mut out)
        .unwrap();
    assert!(out.is_empty(), "{out:?}");
    let eof = packet(7, b"\xfe\x00\x00\x02\x00");
    p.feed(Direction::Ingress, 203, &eof, eof.len() as u64, &mut out)
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(
        summary(&out[0]),
        "mysql INSERT blobs Ok ns=app 100-203 truncated"
    );
    assert_eq!(out[0].request_bytes, 0xFF_FFFF + 4 + 0x10 + 4);
}

#[test]
fn a_close_answers_what_awaits_a_response() {
    let mut ios = pymysql_session();
    ios.truncate(14); // up to the SELECT whose result set is not seen
    let run = replay(Side::Client, &ios, Some(999), Mode::Whole);
    assert_eq!(
        summaries(&run).last().map(String::as_str),
        Some("mariadb SELECT orders NoResponse ns=shop 140-999")
    );
    // Closed in the middle of a result set: what was seen, truncated.
    let mut ios = pymysql_session();
    ios.truncate(14);
    let Io::Resp(_, result) = &pymysql_session()[14] else {
        panic!("not a response");
    };
    ios.push(r(150, &result[..60]));
    let run = replay(Side::Server, &ios, Some(999), Mode::Whole);
    assert_eq!(
        summaries(&run).last().map(String::as_str),
        Some("mariadb SELECT orders Ok ns=shop 140-150 truncated")
    );
    // A command written in part when the connection closed.
    let mut ios = pymysql_session();
    ios.truncate(13);
    let Io::Req(_, query) = &pymysql_session()[13] else {
        panic!("not a request");
    };
    ios.push(q(140, &query[..20]));
    let run = replay(Side::Client, &ios, Some(999), Mode::Whole);
    assert_eq!(
        summaries(&run).last().map(String::as_str),
        Some("mariadb SELECT - NoResponse ns=shop 140-999 truncated")
    );
}

#[test]
fn after_lost_events_nothing_is_invented() {
    for lost in [Direction::Ingress, Direction::Egress] {
        let ios = pymysql_session();
        let mut p = Parser::new(Side::Server);
        let mut out = Vec::new();
        for (i, io) in ios.iter().enumerate() {
            let (dir, ts, b) = match io {
                Io::Req(ts, b) => (Direction::Ingress, *ts, b),
                Io::Resp(ts, b) => (Direction::Egress, *ts, b),
            };
            // The SELECT's result set (or the SELECT itself) is lost.
            let skipped = if lost == Direction::Egress { 14 } else { 13 };
            if i == skipped {
                p.gap(dir);
                continue;
            }
            let _ = p.feed(dir, ts, b, b.len() as u64, &mut out);
        }
        let got: Vec<String> = out.iter().map(summary).collect();
        let mut want: Vec<String> = PYMYSQL.map(String::from).to_vec();
        want.remove(5);
        assert_eq!(got, want, "lost {lost:?}");
    }
}

#[test]
fn detection_is_the_greeting_on_the_server_to_client_direction() {
    use Direction::{Egress, Ingress};
    let Io::Resp(_, greeting) = &pymysql_session()[0] else {
        panic!("not the greeting");
    };
    let Io::Req(_, query) = &pymysql_session()[3] else {
        panic!("not a query");
    };
    let Io::Resp(_, ok) = &pymysql_session()[4] else {
        panic!("not an OK");
    };
    let cases: &[(Side, Direction, &[u8], Verdict)] = &[
        (Side::Server, Egress, greeting, Verdict::Yes),
        (Side::Client, Ingress, greeting, Verdict::Yes),
        (Side::Server, Egress, &greeting[..40], Verdict::Yes),
        (Side::Server, Egress, &greeting[..20], Verdict::Prefix),
        (Side::Server, Egress, &greeting[..4], Verdict::Prefix),
        (Side::Server, Egress, &greeting[..2], Verdict::Prefix),
        // The greeting in the request direction; mid-stream commands and responses.
        (Side::Server, Ingress, greeting, Verdict::No),
        (Side::Client, Egress, greeting, Verdict::No),
        (Side::Server, Ingress, query, Verdict::No),
        (Side::Client, Ingress, ok, Verdict::No),
        (Side::Server, Egress, b"HTTP/1.1 200 OK\r\n", Verdict::No),
        (
            Side::Server,
            Egress,
            b"SSH-2.0-OpenSSH_9.2\r\n",
            Verdict::No,
        ),
        (Side::Server, Egress, b"+OK\r\n", Verdict::No),
        (
            Side::Server,
            Egress,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc",
            Verdict::No,
        ),
        (
            Side::Server,
            Egress,
            b"\x20\x00\x00\x00\x0a\x35\x2e\x37\x01\x00",
            Verdict::No,
        ),
    ];
    for (side, dir, bytes, want) in cases {
        assert_eq!(
            detect(*side, *dir, bytes, false),
            *want,
            "{side:?} {dir:?} {bytes:?}"
        );
    }
    // The registry finds it after HTTP/1.
    assert_eq!(
        crate::protocol::detect(Side::Client, Ingress, greeting, false),
        crate::protocol::Detection::Found(crate::protocol::Protocol::Mysql)
    );
}

#[test]
fn a_mid_stream_connection_is_never_parsed() {
    use crate::metrics::Registry;
    use crate::protocol::session::{Session, SessionMetrics};
    let mut m = SessionMetrics::new(&Registry::default());
    let mut s = Session::new(Side::Server, true);
    let mut out = Vec::new();
    for (i, io) in pymysql_session().iter().enumerate().skip(3) {
        let (dir, ts, b) = match io {
            Io::Req(ts, b) => (Direction::Ingress, *ts, b),
            Io::Resp(ts, b) => (Direction::Egress, *ts, b),
        };
        s.data(dir, ts, Some(i as u64), b, b.len() as u64, &mut m, &mut out);
    }
    s.close(1000, &mut m, &mut out);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn pipelined_commands_pair_in_order() {
    let mut ios = mysql8_handshake(MYSQL8_CLIENT);
    ios.extend([
        q(
            40,
            [
                packet(0, b"\x0e"),
                packet(0, b"\x19\x09\x00\x00\x00"), // COM_STMT_CLOSE: no response
                packet(0, b"\x03DELETE FROM t WHERE a = 1"),
                packet(0, b"\x03DELETE FROM u"),
            ]
            .concat(),
        ),
        r(50, packet(1, b"\x00\x00\x00\x02\x00\x00\x00")),
        r(60, packet(1, b"\x00\x01\x00\x02\x00\x00\x00")),
        r(
            70,
            packet(1, b"\xff\x7a\x04#42S02Table 'app.u' doesn't exist"),
        ),
    ]);
    check(
        &ios,
        Some(1000),
        &[
            "mysql PING - Ok ns=app 40-50",
            "mysql DELETE t Ok ns=app 40-60",
            "mysql DELETE u ServerError 1146 ns=app 40-70",
        ],
    );
}

#[test]
fn garbage_after_the_handshake_is_bounded_and_never_panics() {
    // A xorshift generator: deterministic random bytes.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..300 {
        let side = if round % 2 == 0 {
            Side::Server
        } else {
            Side::Client
        };
        let mut p = Parser::new(side);
        let mut out = Vec::new();
        let prefix = if round % 3 == 0 {
            Vec::new()
        } else {
            pymysql_session()
        };
        let mut ios = prefix;
        ios.truncate((next() % 16) as usize);
        for i in 0..40 {
            let len = (next() % 300) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            ios.push(if next() % 2 == 0 {
                q(1000 + i, bytes)
            } else {
                r(1000 + i, bytes)
            });
        }
        for io in &ios {
            let (dir, ts, b) = match io {
                Io::Req(ts, b) => (side.request_direction(), *ts, b),
                Io::Resp(ts, b) => (
                    match side.request_direction() {
                        Direction::Egress => Direction::Ingress,
                        Direction::Ingress => Direction::Egress,
                    },
                    *ts,
                    b,
                ),
            };
            let bytes = b.len() as u64 + next() % 3 * (next() % 100_000);
            let _ = p.feed(dir, ts, b, bytes, &mut out);
            if next() % 50 == 0 {
                p.gap(dir);
            }
            let (head, pending, statements) = p.buffered();
            assert!(head <= COMMAND_KEEP && pending <= MAX_PENDING && statements <= MAX_STATEMENTS);
        }
        p.close(10_000, &mut out);
        assert!(!p.in_flight());
    }
}

#[test]
fn statements_and_pending_commands_are_bounded() {
    let mut ios = mysql8_handshake(MYSQL8_CLIENT);
    for i in 0..200u32 {
        let ts = 100 + u64::from(i) * 2;
        ios.push(q(
            ts,
            packet(0, format!("\x16SELECT {i} FROM t").as_bytes()),
        ));
        let mut ok = vec![0u8];
        ok.extend_from_slice(&i.to_le_bytes());
        ok.extend_from_slice(&[0; 7]);
        ios.push(r(ts + 1, packet(1, &ok)));
    }
    let run = replay(Side::Server, &ios, None, Mode::Whole);
    assert_eq!(run.exchanges.len(), 200);
    assert_eq!(run.parser.buffered().2, MAX_STATEMENTS);
    // The newest statements are remembered, the oldest forgotten.
    assert!(run.parser.statement(199).is_some() && run.parser.statement(0).is_none());

    let mut ios = mysql8_handshake(MYSQL8_CLIENT);
    ios.push(q(100, packet(0, b"\x0e").repeat(MAX_PENDING + 5)));
    let run = replay(Side::Server, &ios, None, Mode::Whole);
    assert_eq!(run.parser.buffered().1, MAX_PENDING);
    assert_eq!(run.errors, ["too_many_pending"]);
}
