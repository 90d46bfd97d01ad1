//! Golden tests: real PostgreSQL conversations ([`fixtures`]) replayed whole, one byte per
//! syscall, and with the capture limit simulated (payload = first N bytes of each syscall,
//! bytes = its full length), from both sides, against exact expected exchanges.

#[path = "fixtures.rs"]
mod fixtures;

use super::*;
use crate::protocol::{Attributes as Any, Parser as _, ProtocolAttributes};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Whole,
    Bytewise,
    Capture(usize),
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// A fixture as syscalls: (from the client, ts, bytes); ts = 10 × (index + 1).
fn ios(fixture: &[(char, &str)]) -> Vec<(bool, u64, Vec<u8>)> {
    fixture
        .iter()
        .enumerate()
        .map(|(i, (d, h))| (*d == 'C', 10 * (i as u64 + 1), hex(h)))
        .collect()
}

struct Run {
    exchanges: Vec<Exchange>,
    errors: Vec<&'static str>,
    parser: Parser,
}

fn replay(side: Side, ios: &[(bool, u64, Vec<u8>)], close: Option<u64>, mode: Mode) -> Run {
    let mut parser = Parser::new(side);
    let mut exchanges = Vec::new();
    let mut errors = Vec::new();
    let front = side.request_direction();
    let back = match front {
        Direction::Egress => Direction::Ingress,
        Direction::Ingress => Direction::Egress,
    };
    for (from_client, ts, bytes) in ios {
        let dir = if *from_client { front } else { back };
        let mut feed = |payload: &[u8], n: usize| {
            if let Err(e) = parser.feed(dir, *ts, payload, n as u64, &mut exchanges) {
                errors.push(e.reason);
            }
        };
        match mode {
            Mode::Whole => feed(bytes, bytes.len()),
            Mode::Bytewise => bytes.chunks(1).for_each(|b| feed(b, 1)),
            Mode::Capture(n) => feed(bytes.get(..n).unwrap_or(bytes), bytes.len()),
        }
        let (ops, body) = parser.buffered();
        assert!(ops <= MAX_PENDING && body <= 2 * frame::MAX_STARTUP_BYTES as usize);
        assert!(parser.statements.len() <= MAX_STATEMENTS);
        assert!(parser.portals.len() <= MAX_STATEMENTS);
    }
    if let Some(ts) = close {
        let in_flight = parser.in_flight();
        let before = exchanges.len();
        parser.close(ts, &mut exchanges);
        assert!(in_flight || exchanges.len() == before, "in_flight said no");
        assert!(!parser.in_flight());
    }
    Run {
        exchanges,
        errors,
        parser,
    }
}

/// `span name | status | outcome | start-end | query` (`!` after the outcome: truncated).
fn summary(x: &Exchange) -> String {
    let Any::Postgresql(a) = &x.attributes else {
        panic!("not a PostgreSQL exchange: {x:?}");
    };
    format!(
        "{} | {} | {:?}{} | {}-{} | {}",
        a.span_name(),
        a.status_code.as_deref().unwrap_or("-"),
        x.outcome,
        if x.truncated { "!" } else { "" },
        x.start_ns,
        x.end_ns,
        a.query.as_deref().unwrap_or("-"),
    )
}

fn summaries(run: &Run) -> Vec<String> {
    run.exchanges.iter().map(summary).collect()
}

/// Replays in the modes that see every byte, from both sides: the same exchanges, no error.
fn check(fixture: &[(char, &str)], want: &[&str]) -> Vec<Exchange> {
    let ios = ios(fixture);
    let mut first = None;
    for side in [Side::Server, Side::Client] {
        for mode in [Mode::Whole, Mode::Bytewise, Mode::Capture(4096)] {
            let run = replay(side, &ios, Some(1_000_000), mode);
            assert_eq!(summaries(&run), want, "{side:?} {mode:?}");
            assert_eq!(run.errors, Vec::<&str>::new(), "{side:?} {mode:?}");
            first.get_or_insert(run.exchanges);
        }
        // Small captures: never more exchanges than requests, no panic, bounded.
        for n in [0, 1, 5, 16, 64, 256] {
            let run = replay(side, &ios, Some(1_000_000), Mode::Capture(n));
            assert!(
                run.exchanges.len() <= want.len(),
                "{side:?} {n}: {:?}",
                summaries(&run)
            );
        }
    }
    first.unwrap_or_default()
}

#[test]
fn psql_session_with_ssl_refused_error_empty_query_and_copy() {
    let xs = check(
        fixtures::PSQL_SESSION,
        &[
            "SELECT | - | Ok | 50-60 | SELECT 1",
            "INSERT t | - | Ok | 70-80 | INSERT INTO t VALUES (1, 'a;b')",
            "SELECT nope | 42P01 | ServerError | 90-100 | SELECT * FROM nope",
            "SELECT | - | Ok | 120-130 | SELECT 2",
            "SELECT t | - | Ok | 140-150 | SELECT name FROM t WHERE id = 1",
            "UNKNOWN | - | Ok | 160-170 | -",
            "COPY t | - | Ok | 180-210 | COPY t FROM STDIN",
            "COPY t | - | Ok | 220-230 | COPY t TO STDOUT",
        ],
    );
    let Any::Postgresql(a) = &xs[0].attributes else {
        unreachable!()
    };
    assert_eq!(a.namespace.as_deref(), Some("postgres"));
    assert_eq!(xs[2].error_type(), "42P01");
    assert!(xs[2].failed(Side::Server) && xs[2].failed(Side::Client));
    // Q message 14 bytes; T (34) + D (12) + C (14).
    assert_eq!((xs[0].request_bytes, xs[0].response_bytes), (15, 60));
    // COPY FROM STDIN: the Q, then CopyData and CopyDone.
    assert_eq!(xs[6].request_bytes, 24 + 16 + 5);
}

#[test]
fn several_statements_in_one_query_stop_at_the_error() {
    check(
        fixtures::PSQL_MULTI,
        &[
            "SELECT | - | Ok | 50-60 | SELECT 1",
            "SELECT nope | 42P01 | ServerError | 50-60 | SELECT * FROM nope",
        ],
    );
}

const PGBENCH: [&str; 7] = [
    "BEGIN",
    "UPDATE pgbench_accounts",
    "SELECT pgbench_accounts",
    "UPDATE pgbench_tellers",
    "UPDATE pgbench_branches",
    "INSERT pgbench_history",
    "END",
];

fn names(xs: &[Exchange]) -> Vec<String> {
    xs.iter().map(|x| x.attributes.span_name()).collect()
}

#[test]
fn pgbench_extended_one_exchange_per_execute() {
    let ios = ios(fixtures::PGBENCH_EXTENDED);
    for side in [Side::Server, Side::Client] {
        for mode in [Mode::Whole, Mode::Bytewise, Mode::Capture(1024)] {
            let run = replay(side, &ios, Some(1_000_000), mode);
            assert_eq!(names(&run.exchanges), PGBENCH, "{side:?} {mode:?}");
            assert!(run.exchanges.iter().all(|x| x.outcome == Outcome::Ok));
            assert_eq!(run.errors, Vec::<&str>::new());
        }
    }
    let run = replay(Side::Client, &ios, None, Mode::Whole);
    let select = &run.exchanges[2];
    let Any::Postgresql(a) = &select.attributes else {
        unreachable!()
    };
    assert_eq!(
        a.query.as_deref(),
        Some("SELECT abalance FROM pgbench_accounts WHERE aid = $1;")
    );
    assert!(!select.truncated);
}

#[test]
fn pgbench_prepared_named_statements() {
    let ios = ios(fixtures::PGBENCH_PREPARED);
    for side in [Side::Server, Side::Client] {
        for mode in [Mode::Whole, Mode::Bytewise, Mode::Capture(1024)] {
            let run = replay(side, &ios, Some(1_000_000), mode);
            assert_eq!(names(&run.exchanges), PGBENCH, "{side:?} {mode:?}");
            assert!(run.exchanges.iter().all(|x| x.outcome == Outcome::Ok));
            assert_eq!(run.errors, Vec::<&str>::new());
            assert_eq!(run.parser.statements.len(), 7);
        }
    }
}

#[test]
fn pipelined_executes_after_an_error_are_not_answered() {
    check(
        fixtures::PGBENCH_PIPELINE_ERROR,
        &[
            "SELECT | - | Ok | 50-60 | SELECT 1;",
            "SELECT nope | 42P01 | ServerError | 50-60 | SELECT * FROM nope;",
            "SELECT | - | NoResponse | 50-60 | SELECT 2;",
        ],
    );
}

// Hand-built messages for the cases the fixtures do not cover.

fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn query(q: &str) -> Vec<u8> {
    msg(b'Q', &[q.as_bytes(), b"\0"].concat())
}

fn complete(tag: &str) -> Vec<u8> {
    msg(b'C', &[tag.as_bytes(), b"\0"].concat())
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn row(n: usize) -> Vec<u8> {
    let mut body = vec![0, 1];
    body.extend_from_slice(&(n as u32).to_be_bytes());
    body.extend(std::iter::repeat_n(b'x', n));
    msg(b'D', &body)
}

fn startup() -> Vec<u8> {
    let body = b"\0\x03\0\0user\0alice\0database\0shop\0\0";
    let mut m = (body.len() as u32 + 4).to_be_bytes().to_vec();
    m.extend_from_slice(body);
    m
}

#[test]
fn tls_accepted_stops_parsing() {
    for answer in [b'S', b'G'] {
        let code = if answer == b'S' {
            "04d2162f"
        } else {
            "04d21630"
        };
        let ios = vec![
            (true, 1, hex(&format!("00000008{code}"))),
            (false, 2, vec![answer]),
            (true, 3, vec![0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5]),
        ];
        let run = replay(Side::Server, &ios, Some(4), Mode::Whole);
        assert!(run.exchanges.is_empty());
        assert_eq!(run.errors, vec!["tls"]);
        assert!(run.parser.is_dead());
    }
}

/// `sslmode=require` with the TLS library probed: after `S` the parser is fed the connection's
/// plaintext (the ciphertext never reaches it), which starts with the `StartupMessage`.
#[test]
fn tls_accepted_then_plaintext_from_the_library_is_parsed() {
    for side in [Side::Client, Side::Server] {
        let ios = vec![
            (true, 1, hex("0000000804d2162f")),
            (false, 2, vec![b'S']),
            (true, 3, startup()),
            (false, 4, [msg(b'R', &[0; 4]), ready()].concat()),
            (true, 5, query("SELECT 1")),
            (false, 6, [row(1), complete("SELECT 1"), ready()].concat()),
        ];
        let run = replay(side, &ios, None, Mode::Whole);
        assert!(run.errors.is_empty(), "{:?}", run.errors);
        assert_eq!(summaries(&run).len(), 1, "{:?}", summaries(&run));
        assert!(!run.parser.is_dead());
    }
}

#[test]
fn database_defaults_to_the_user_and_long_queries_are_cut() {
    let long = format!("SELECT * FROM orders WHERE note = '{}'", "y".repeat(3000));
    let ios = vec![
        (true, 1, startup()),
        (false, 2, [msg(b'R', &[0; 4]), ready()].concat()),
        (true, 3, query(&long)),
        (false, 4, [complete("SELECT 0"), ready()].concat()),
    ];
    for mode in [Mode::Whole, Mode::Capture(1024), Mode::Capture(100)] {
        let run = replay(Side::Client, &ios, None, mode);
        assert_eq!(run.exchanges.len(), 1, "{mode:?}");
        let x = &run.exchanges[0];
        let Any::Postgresql(a) = &x.attributes else {
            unreachable!()
        };
        assert_eq!(a.span_name(), "SELECT orders");
        assert_eq!(a.namespace.as_deref(), Some("shop"));
        assert!(x.truncated);
        assert!(a.query.as_ref().unwrap().len() <= db::MAX_QUERY_BYTES);
        assert_eq!(x.request_bytes, long.len() as u64 + 6);
    }
}

#[test]
fn an_error_without_sqlstate_and_sqlcommenter_context() {
    let q = "SELECT 1 /*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/";
    let ios = vec![
        (true, 1, query(q)),
        (
            false,
            2,
            [msg(b'E', b"SERROR\0Mboom\0\0"), ready()].concat(),
        ),
    ];
    let run = replay(Side::Server, &ios, None, Mode::Whole);
    assert_eq!(run.exchanges.len(), 1);
    assert_eq!(run.exchanges[0].outcome, Outcome::ServerError);
    assert_eq!(run.exchanges[0].error_type(), "error");
    assert!(matches!(
        run.exchanges[0].context,
        crate::protocol::context::Found::Valid(_)
    ));
}

#[test]
fn notices_notifications_and_parameter_status_are_not_exchanges() {
    let ios = vec![
        (true, 1, query("LISTEN c")),
        (
            false,
            2,
            [
                msg(b'N', b"SNOTICE\0C00000\0Mhi\0\0"),
                complete("LISTEN"),
                ready(),
            ]
            .concat(),
        ),
        (false, 3, msg(b'A', b"\0\0\0\x01c\0payload\0")),
        (false, 4, msg(b'S', b"TimeZone\0UTC\0")),
    ];
    let run = replay(Side::Client, &ios, Some(5), Mode::Whole);
    assert_eq!(summaries(&run), ["LISTEN | - | Ok | 1-2 | LISTEN c"]);
}

#[test]
fn a_lost_response_framing_completes_its_request_truncated_at_the_resync() {
    // A result bigger than the capture: its rows' headers fall into uncaptured bytes.
    let rows: Vec<u8> = (0..40).flat_map(|_| row(100)).collect();
    let mut first = msg(b'T', &[0, 1, b'a', 0]);
    first.extend_from_slice(&rows[..3000]);
    let mut last = rows[3000..].to_vec();
    last.extend([complete("SELECT 40"), ready()].concat());
    let ios = vec![
        (true, 1, query("SELECT a FROM big")),
        (false, 2, first),
        (false, 3, last),
        (true, 4, query("SELECT 1")),
        (false, 5, [complete("SELECT 1"), ready()].concat()),
    ];
    let run = replay(Side::Server, &ios, Some(6), Mode::Capture(512));
    assert_eq!(
        summaries(&run),
        [
            "SELECT big | - | Ok! | 1-3 | SELECT a FROM big",
            "SELECT | - | Ok | 4-5 | SELECT 1",
        ]
    );
    assert_eq!(run.errors, ["header_not_captured"]);
    // Whole, the same two, neither truncated.
    let run = replay(Side::Server, &ios, Some(6), Mode::Whole);
    assert_eq!(
        summaries(&run),
        [
            "SELECT big | - | Ok | 1-3 | SELECT a FROM big",
            "SELECT | - | Ok | 4-5 | SELECT 1",
        ]
    );
    // The connection closes while lost: completed at the last server syscall.
    let run = replay(Side::Server, &ios[..3], Some(6), Mode::Capture(512));
    assert_eq!(
        summaries(&run),
        ["SELECT big | - | Ok! | 1-3 | SELECT a FROM big"]
    );
}

#[test]
fn a_connection_found_mid_stream_pairs_from_a_plausible_boundary() {
    let ios = [
        // The tail of an answer to a request never seen (the session detects nothing in it).
        (false, 1, b"xx\x00\x00".to_vec()),
        (true, 2, query("SELECT 1")),
        (false, 3, b"\x00garbage".to_vec()),
        (false, 4, [complete("SELECT 1"), ready()].concat()),
        (true, 5, query("UPDATE t SET a = 1")),
        (false, 6, [complete("UPDATE 1"), ready()].concat()),
    ];
    assert_eq!(
        detect(Side::Server, Direction::Egress, &ios[0].2, false),
        Verdict::No
    );
    let run = replay(Side::Server, &ios[1..], Some(7), Mode::Whole);
    assert_eq!(
        summaries(&run),
        [
            "SELECT | - | Ok | 2-4 | SELECT 1",
            "UPDATE t | - | Ok | 5-6 | UPDATE t SET a = 1",
        ]
    );
    assert_eq!(
        detect(Side::Server, Direction::Ingress, &ios[1].2, false),
        Verdict::Yes
    );
    assert_eq!(
        detect(Side::Server, Direction::Egress, &ios[3].2, false),
        Verdict::No
    );
}

#[test]
fn close_answers_requests_in_flight_as_no_response() {
    let ios = vec![
        (true, 1, query("SELECT pg_sleep(10); SELECT 2")),
        (
            true,
            2,
            [
                msg(b'P', b"s1\0UPDATE t SET a = $1\0\0\0"),
                msg(b'B', b"\0s1\0\0\0\0\0\0\0"),
                msg(b'E', b"\0\0\0\0\0"),
                msg(b'S', b""),
            ]
            .concat(),
        ),
    ];
    let run = replay(Side::Client, &ios, Some(9), Mode::Whole);
    assert_eq!(
        summaries(&run),
        [
            "SELECT | - | NoResponse | 1-9 | SELECT pg_sleep(10)",
            "UPDATE t | - | NoResponse | 2-9 | UPDATE t SET a = $1",
        ]
    );
}

#[test]
fn statements_split_outside_quotes_and_comments() {
    assert_eq!(
        split_statements("SELECT 'a;b'; -- c;\n SELECT \"x;\" ; /* ; */ ;SELECT $f$;$f$;"),
        ["SELECT 'a;b'", "-- c;\n SELECT \"x;\"", "SELECT $f$;$f$"]
    );
    assert_eq!(split_statements(" ; ;"), Vec::<&str>::new());
    assert_eq!(
        split_statements("SELECT $1; SELECT '"),
        ["SELECT $1", "SELECT '"]
    );
}

#[test]
fn detection() {
    use Direction::{Egress, Ingress};
    let d = |side, dir, b: &[u8]| detect(side, dir, b, false);
    assert_eq!(d(Side::Server, Ingress, &startup()), Verdict::Yes);
    assert_eq!(d(Side::Client, Egress, &startup()), Verdict::Yes);
    assert_eq!(d(Side::Client, Ingress, &startup()), Verdict::No);
    assert_eq!(
        d(Side::Server, Ingress, &hex("0000000804d2162f")),
        Verdict::Yes
    );
    assert_eq!(
        d(Side::Server, Ingress, &hex("0000000804d21630")),
        Verdict::Yes
    );
    assert_eq!(
        d(
            Side::Server,
            Ingress,
            &hex("0000001004d2162e0000000100000002")
        ),
        Verdict::Yes
    );
    assert_eq!(d(Side::Server, Ingress, &hex("000000")), Verdict::Prefix);
    assert_eq!(d(Side::Server, Ingress, &hex("00000008")), Verdict::Prefix);
    assert_eq!(
        d(Side::Server, Ingress, &hex("0000000804d21631")),
        Verdict::No
    );
    assert_eq!(
        d(Side::Server, Ingress, &hex("0000000904d2162f")),
        Verdict::No
    );
    assert_eq!(
        d(Side::Server, Ingress, &hex("0100000804d2162f")),
        Verdict::No
    );
    assert_eq!(d(Side::Server, Ingress, &query("SELECT 1")), Verdict::Yes);
    assert_eq!(d(Side::Server, Ingress, b"QUIT\r\n"), Verdict::No);
    assert_eq!(d(Side::Server, Ingress, b"GET / HTTP/1.1\r\n"), Verdict::No);
    assert_eq!(
        d(Side::Server, Ingress, b"\x16\x03\x01\x02\x00\x01"),
        Verdict::No
    );
    assert_eq!(
        d(Side::Server, Ingress, b"*1\r\n$4\r\nPING\r\n"),
        Verdict::No
    );
    // A MySQL COM_QUERY of 0x51 bytes: sequence 0 makes a length of 3.
    assert_eq!(
        d(Side::Server, Ingress, b"\x51\0\0\0\x03select"),
        Verdict::No
    );
}

#[test]
fn random_input_never_panics_and_stays_bounded() {
    // xorshift: deterministic noise, with startup-like and typed-like prefixes mixed in.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..300 {
        let side = if round % 2 == 0 {
            Side::Server
        } else {
            Side::Client
        };
        let mut ios = Vec::new();
        if round % 3 == 0 {
            ios.push((true, 0, startup()));
        }
        for i in 0..40 {
            let len = (next() % 300) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next() % 4 == 0 {
                let kinds = b"QPBDESCZTDCE12nsGHdc";
                let k = kinds[(next() % kinds.len() as u64) as usize];
                bytes.splice(0..0, msg(k, &bytes.clone()[..len.min(20)]));
            }
            ios.push((next() % 2 == 0, i, bytes));
        }
        let mode = match round % 4 {
            0 => Mode::Whole,
            1 => Mode::Bytewise,
            2 => Mode::Capture(7),
            _ => Mode::Capture(64),
        };
        let run = replay(side, &ios, Some(1000), mode);
        for x in &run.exchanges {
            assert!(x.start_ns <= x.end_ns);
            let _ = summary(x);
        }
    }
}
