//! Golden tests: bytes captured from redis-server 7.0 (raw sockets), replayed whole, one byte
//! per syscall, and with the capture limit simulated, from both sides.

use super::*;
use crate::protocol::{Parser as _, ProtocolAttributes, SpanOptions};

use crate::protocol::replay::{Io, Mode, q, r};

const MODES: [Mode; 4] = [
    Mode::Whole,
    Mode::Bytewise,
    Mode::Capture(1024),
    Mode::Capture(4096),
];

fn attrs(x: &Exchange) -> &DbAttributes {
    match &x.attributes {
        crate::protocol::Attributes::Redis(a) => a,
        other => panic!("not Redis: {other:?}"),
    }
}

/// `OP [db=N] query outcome[:status] req=N resp=N [truncated] start-end`.
fn summary(x: &Exchange) -> String {
    let a = attrs(x);
    let mut s = a.operation.to_string();
    if let Some(ns) = &a.namespace {
        s += &format!(" db={ns}");
    }
    s += &format!(" {:?} {:?}", a.query.as_deref().unwrap_or(""), x.outcome);
    if let Some(code) = &a.status_code {
        s += &format!(":{code}");
    }
    s += &format!(" req={} resp={}", x.request_bytes, x.response_bytes);
    if x.truncated {
        s += " truncated";
    }
    s + &format!(" {}-{}", x.start_ns, x.end_ns)
}

struct Run {
    exchanges: Vec<Exchange>,
    errors: Vec<&'static str>,
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
        let (pending, buffered) = parser.buffered();
        assert!(pending <= MAX_PENDING && buffered <= 2 * resp::MAX_LINE_BYTES + 512);
    }
    if let Some(ts) = close {
        let in_flight = parser.in_flight();
        let before = exchanges.len();
        parser.close(ts, &mut exchanges);
        assert!(in_flight || exchanges.len() == before, "in_flight said no");
        assert!(!parser.in_flight());
    }
    Run { exchanges, errors }
}

/// Replays in every mode from both sides; `expect(mode)` is the summaries.
fn check(ios: &[Io], close: Option<u64>, expect: impl Fn(Mode) -> Vec<&'static str>) {
    for side in [Side::Server, Side::Client] {
        for mode in MODES {
            let run = replay(side, ios, close, mode);
            let got: Vec<String> = run.exchanges.iter().map(summary).collect();
            assert_eq!(
                got,
                expect(mode),
                "{side:?} {mode:?} errors {:?}",
                run.errors
            );
            assert!(run.errors.is_empty(), "{side:?} {mode:?}: {:?}", run.errors);
        }
    }
}

#[test]
fn pipelined_commands_then_their_replies() {
    let ios = [
        q(
            10,
            b"*3\r\n$3\r\nSET\r\n$5\r\nuser1\r\n$5\r\nalice\r\n*2\r\n$3\r\nGET\r\n$5\r\nuser1\r\n\
              *2\r\n$3\r\nGET\r\n$7\r\nmissing\r\n*2\r\n$4\r\nINCR\r\n$5\r\nuser1\r\n",
        ),
        r(
            20,
            b"+OK\r\n$5\r\nalice\r\n$-1\r\n-ERR value is not an integer or out of range\r\n",
        ),
    ];
    check(&ios, Some(30), |_| {
        vec![
            "SET \"SET user1 alice\" Ok req=35 resp=5 10-20",
            "GET \"GET user1\" Ok req=24 resp=11 10-20",
            "GET \"GET missing\" Ok req=26 resp=5 10-20",
            "INCR \"INCR user1\" ServerError:ERR req=25 resp=46 10-20",
        ]
    });
}

#[test]
fn multi_exec_each_command_is_an_exchange() {
    let ios = [
        q(1, b"*1\r\n$5\r\nMULTI\r\n"),
        r(2, b"+OK\r\n"),
        q(3, b"*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n"),
        r(4, b"+QUEUED\r\n"),
        q(5, b"*3\r\n$5\r\nLPUSH\r\n$1\r\nl\r\n$1\r\na\r\n"),
        r(6, b"+QUEUED\r\n"),
        q(7, b"*1\r\n$4\r\nEXEC\r\n"),
        r(
            8,
            b"*2\r\n:1\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
        ),
        // A transaction aborted by an error while queueing.
        q(9, b"*1\r\n$5\r\nMULTI\r\n*2\r\n$6\r\nLRANGE\r\n$1\r\nl\r\n"),
        r(
            10,
            b"+OK\r\n-ERR wrong number of arguments for 'lrange' command\r\n",
        ),
        q(11, b"*1\r\n$4\r\nEXEC\r\n"),
        r(
            12,
            b"-EXECABORT Transaction discarded because of previous errors.\r\n",
        ),
    ];
    check(&ios, None, |_| {
        vec![
            "MULTI \"MULTI\" Ok req=15 resp=5 1-2",
            "INCR \"INCR n\" Ok req=21 resp=9 3-4",
            "LPUSH \"LPUSH l a\" Ok req=29 resp=9 5-6",
            "EXEC \"EXEC\" Ok req=14 resp=76 7-8",
            "MULTI \"MULTI\" Ok req=15 resp=5 9-10",
            "LRANGE \"LRANGE l\" ServerError:ERR req=23 resp=53 9-10",
            "EXEC \"EXEC\" ServerError:EXECABORT req=14 resp=62 11-12",
        ]
    });
}

#[test]
fn resp3_replies_of_every_type_and_select() {
    let hello = b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:3\r\n\
        $2\r\nid\r\n:5\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n";
    let ios = [
        q(1, b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"),
        r(2, hello),
        q(3, b"*2\r\n$7\r\nHGETALL\r\n$1\r\nh\r\n*1\r\n$4\r\nTIME\r\n*1\r\n$4\r\nPING\r\n"),
        // A map, an attribute before an array, a push between replies (client tracking).
        r(
            4,
            b"%1\r\n$1\r\nf\r\n,1.5\r\n|1\r\n+ttl\r\n:3\r\n*2\r\n$10\r\n1700000000\r\n$1\r\n5\r\n\
              >2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n+PONG\r\n",
        ),
        q(5, b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n"),
        r(6, b"+OK\r\n"),
        q(
            7,
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$8\r\nSMEMBERS\r\n*2\r\n$6\r\nEXISTS\r\n$1\r\nk\r\n\
              *1\r\n$3\r\nBIG\r\n*1\r\n$3\r\nVER\r\n*1\r\n$3\r\nERR\r\n",
        ),
        r(
            8,
            b"_\r\n~2\r\n+a\r\n+b\r\n#f\r\n(3492890328409238509324850943850943825024385\r\n\
              =15\r\ntxt:Some string\r\n!21\r\nSYNTAX invalid syntax\r\n",
        ),
    ];
    check(&ios, None, |_| {
        vec![
            "HELLO \"HELLO 3\" Ok req=22 resp=145 1-2",
            "HGETALL \"HGETALL h\" Ok req=24 resp=17 3-4",
            "TIME \"TIME\" Ok req=14 resp=42 3-4",
            "PING \"PING\" Ok req=14 resp=7 3-4",
            "SELECT \"SELECT 2\" Ok req=23 resp=5 5-6",
            "GET db=2 \"GET k\" Ok req=20 resp=3 7-8",
            "SMEMBERS db=2 \"SMEMBERS\" Ok req=18 resp=12 7-8",
            "EXISTS db=2 \"EXISTS k\" Ok req=23 resp=4 7-8",
            "BIG db=2 \"BIG\" Ok req=13 resp=46 7-8",
            "VER db=2 \"VER\" Ok req=13 resp=22 7-8",
            "ERR db=2 \"ERR\" ServerError:SYNTAX req=13 resp=28 7-8",
        ]
    });
}

#[test]
fn pubsub_messages_are_not_exchanges() {
    let ios = [
        q(1, b"*3\r\n$9\r\nSUBSCRIBE\r\n$2\r\nc1\r\n$2\r\nc2\r\n"),
        r(
            2,
            b"*3\r\n$9\r\nsubscribe\r\n$2\r\nc1\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$2\r\nc2\r\n:2\r\n",
        ),
        r(3, b"*3\r\n$7\r\nmessage\r\n$2\r\nc1\r\n$5\r\nhello\r\n"),
        r(4, b"*3\r\n$7\r\nmessage\r\n$2\r\nc2\r\n$3\r\nbye\r\n*3\r\n$7\r\nmessage\r\n$2\r\nc2\r\n$3\r\nbye\r\n"),
        q(5, b"*1\r\n$4\r\nPING\r\n"),
        r(6, b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"),
        q(7, b"*2\r\n$10\r\nPSUBSCRIBE\r\n$2\r\nc*\r\n"),
        r(
            8,
            b"*3\r\n$10\r\npsubscribe\r\n$2\r\nc*\r\n:3\r\n*4\r\n$8\r\npmessage\r\n$2\r\nc*\r\n$2\r\nc1\r\n$1\r\nx\r\n",
        ),
        q(9, b"*1\r\n$11\r\nUNSUBSCRIBE\r\n"),
        r(
            10,
            b"*3\r\n$11\r\nunsubscribe\r\n$2\r\nc1\r\n:2\r\n*3\r\n$11\r\nunsubscribe\r\n$2\r\nc2\r\n:1\r\n",
        ),
        q(11, b"*1\r\n$12\r\nPUNSUBSCRIBE\r\n"),
        r(12, b"*3\r\n$12\r\npunsubscribe\r\n$2\r\nc*\r\n:0\r\n"),
        // Out of subscribed mode: an array starting with "message" is a reply again.
        q(13, b"*4\r\n$6\r\nLRANGE\r\n$1\r\nl\r\n$1\r\n0\r\n$2\r\n-1\r\n"),
        r(14, b"*1\r\n$7\r\nmessage\r\n"),
    ];
    check(&ios, Some(20), |_| {
        vec![
            "SUBSCRIBE \"SUBSCRIBE c1 c2\" Ok req=35 resp=31 1-2",
            "PING \"PING\" Ok req=14 resp=20 5-6",
            "PSUBSCRIBE \"PSUBSCRIBE c*\" Ok req=29 resp=33 7-8",
            "UNSUBSCRIBE \"UNSUBSCRIBE\" Ok req=22 resp=34 9-10",
            "PUNSUBSCRIBE \"PUNSUBSCRIBE\" Ok req=23 resp=35 11-12",
            "LRANGE \"LRANGE l 0 -1\" Ok req=38 resp=17 13-14",
        ]
    });
}

#[test]
fn resp3_push_messages_are_never_replies() {
    let ios = [
        q(1, b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nc1\r\n"),
        r(2, b">3\r\n$9\r\nsubscribe\r\n$2\r\nc1\r\n:1\r\n"),
        r(3, b">3\r\n$7\r\nmessage\r\n$2\r\nc1\r\n$2\r\nhi\r\n"),
        q(4, b"*1\r\n$4\r\nPING\r\n"),
        r(
            5,
            b">3\r\n$7\r\nmessage\r\n$2\r\nc1\r\n$2\r\nhi\r\n+PONG\r\n",
        ),
    ];
    check(&ios, None, |_| {
        vec![
            "SUBSCRIBE \"SUBSCRIBE c1\" Ok req=27 resp=31 1-2",
            "PING \"PING\" Ok req=14 resp=7 4-5",
        ]
    });
}

#[test]
fn inline_commands() {
    let ios = [
        q(1, b"PING\r\n"),
        r(2, b"+PONG\r\n"),
        q(3, b"set  k   v\r\n\r\nget k\n"),
        r(4, b"+OK\r\n$1\r\nv\r\n"),
        q(5, b"CLIENT SETNAME app\r\n"),
        r(6, b"+OK\r\n"),
    ];
    check(&ios, None, |_| {
        vec![
            "PING \"PING\" Ok req=6 resp=7 1-2",
            "SET \"set k v\" Ok req=12 resp=5 3-4",
            "GET \"get k\" Ok req=6 resp=7 3-4",
            "CLIENT \"CLIENT SETNAME app\" Ok req=20 resp=5 5-6",
        ]
    });
}

#[test]
fn values_longer_than_the_capture_are_skipped_by_count() {
    let value = "v".repeat(5000);
    let set = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$5000\r\n{value}\r\n");
    let get = format!("${}\r\n{value}\r\n", value.len());
    let ios = [
        q(1, set.as_bytes()),
        r(2, b"+OK\r\n"),
        q(3, b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n"),
        r(4, get.as_bytes()),
        q(5, b"*1\r\n$4\r\nPING\r\n"),
        r(6, b"+PONG\r\n"),
    ];
    for side in [Side::Client, Side::Server] {
        for mode in [
            Mode::Whole,
            Mode::Bytewise,
            Mode::Capture(1024),
            Mode::Capture(64),
        ] {
            let run = replay(side, &ios, None, mode);
            let got: Vec<String> = run.exchanges.iter().map(summary).collect();
            assert!(run.errors.is_empty(), "{mode:?} {:?}", run.errors);
            let cut = matches!(mode, Mode::Capture(_));
            let t = if cut { " truncated" } else { "" };
            assert_eq!(got.len(), 3, "{mode:?} {got:?}");
            assert!(
                got[0].ends_with(&format!("Ok req=5031 resp=5{t} 1-2")),
                "{got:?}"
            );
            assert_eq!(
                got[1],
                format!("GET \"GET big\" Ok req=22 resp=5009{t} 3-4")
            );
            assert_eq!(got[2], "PING \"PING\" Ok req=14 resp=7 5-6");
            let q = attrs(&run.exchanges[0]).query.as_deref().unwrap_or("");
            assert!(q.starts_with("SET big vvv") && q.len() <= db::MAX_QUERY_BYTES);
        }
    }
}

#[test]
fn pipelined_replies_beyond_the_capture_answer_the_requests_before() {
    // 16 GETs of a 100-byte value, replies in one write of which 64 bytes are captured.
    let value = "x".repeat(100);
    let reqs = "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".repeat(16);
    let replies = format!("$100\r\n{value}\r\n").repeat(16);
    let ios = [
        q(1, reqs.as_bytes()),
        r(2, replies.as_bytes()),
        q(3, b"*1\r\n$4\r\nPING\r\n"),
        r(4, b"+PONG\r\n"),
    ];
    for side in [Side::Client, Side::Server] {
        let mut p = Parser::new(side);
        let (req, resp) = (side.request_direction(), reply_direction(side));
        let mut out = Vec::new();
        for (dir, ts, bytes, capture) in [
            (req, 1, ios[0].bytes(), 1024),
            (resp, 2, ios[1].bytes(), 64),
            (req, 3, ios[2].bytes(), 1024),
            (resp, 4, ios[3].bytes(), 64),
        ] {
            let payload = bytes.get(..capture).unwrap_or(bytes);
            p.feed(dir, ts, payload, bytes.len() as u64, &mut out)
                .unwrap();
        }
        let ops: Vec<String> = out.iter().map(summary).collect();
        assert_eq!(ops.len(), 17, "{ops:?}");
        assert!(
            ops[..16]
                .iter()
                .all(|s| s.starts_with("GET") && s.ends_with("truncated 1-2"))
        );
        assert_eq!(ops[16], "PING \"PING\" Ok req=14 resp=7 3-4");
    }
}

fn reply_direction(side: Side) -> Direction {
    match side.request_direction() {
        Direction::Egress => Direction::Ingress,
        Direction::Ingress => Direction::Egress,
    }
}

impl Io {
    fn bytes(&self) -> &[u8] {
        match self {
            Io::Req(_, b) | Io::Resp(_, b) => b,
        }
    }
}

#[test]
fn a_close_answers_what_is_in_flight_as_no_response() {
    let ios = [
        q(1, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n"),
        r(2, b"$-1\r\n"),
    ];
    check(&ios, Some(5), |_| {
        vec![
            "GET \"GET k\" Ok req=20 resp=5 1-2",
            "PING \"PING\" NoResponse req=14 resp=0 1-5",
        ]
    });
}

#[test]
fn monitor_stream_is_not_replies() {
    let ios = [
        q(1, b"*1\r\n$7\r\nMONITOR\r\n"),
        r(2, b"+OK\r\n"),
        r(
            3,
            b"+1700000000.123456 [0 127.0.0.1:5000] \"GET\" \"k\"\r\n",
        ),
    ];
    check(&ios, Some(4), |_| {
        vec!["MONITOR \"MONITOR\" Ok req=17 resp=5 1-2"]
    });
}

#[test]
fn gaps_resynchronise_without_errors() {
    let mut p = Parser::new(Side::Client);
    let mut out = Vec::new();
    let req = b"*1\r\n$4\r\nPING\r\n";
    p.feed(Direction::Egress, 1, req, req.len() as u64, &mut out)
        .unwrap();
    p.gap(Direction::Ingress);
    // The reply to the lost one, then a new exchange.
    p.feed(Direction::Ingress, 2, b"+PONG\r\n", 7, &mut out)
        .unwrap();
    p.feed(Direction::Egress, 3, req, req.len() as u64, &mut out)
        .unwrap();
    p.feed(Direction::Ingress, 4, b"+PONG\r\n", 7, &mut out)
        .unwrap();
    assert_eq!(
        out.iter().map(summary).collect::<Vec<_>>(),
        ["PING \"PING\" Ok req=14 resp=7 3-4"]
    );
    // A reply nobody asked for, on a connection without loss, is an error.
    let mut p = Parser::new(Side::Client);
    assert_eq!(
        p.feed(Direction::Ingress, 1, b"+PONG\r\n", 7, &mut out)
            .unwrap_err()
            .reason,
        "response_without_request"
    );
}

#[test]
fn malformed_and_random_input_never_panics_and_stays_bounded() {
    let mut p = Parser::new(Side::Server);
    let mut out = Vec::new();
    let err = p
        .feed(Direction::Ingress, 1, b"*2\r\n:1\r\n", 8, &mut out)
        .unwrap_err();
    assert_eq!(err.reason, "bad_request");
    // It resynchronises at the next syscall that starts like a request.
    p.feed(Direction::Ingress, 2, b"*1\r\n$4\r\nPING\r\n", 14, &mut out)
        .unwrap();
    p.feed(Direction::Egress, 3, b"+PONG\r\n", 7, &mut out)
        .unwrap();
    assert_eq!(out.len(), 1);

    // Deep nesting, huge lengths, long lines.
    let deep = "*1\r\n".repeat(100);
    let long = format!("+{}\r\n", "a".repeat(100_000));
    let huge = b"$99999999999999999\r\nabc";
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for side in [Side::Client, Side::Server] {
        let mut p = Parser::new(side);
        let mut out = Vec::new();
        for (i, chunk) in [deep.as_bytes(), long.as_bytes(), huge].iter().enumerate() {
            for dir in [Direction::Ingress, Direction::Egress] {
                let _ = p.feed(dir, i as u64, chunk, chunk.len() as u64, &mut out);
            }
        }
        for ts in 0..20_000u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 64) as usize;
            let alphabet = b"*$+-:\r\n0123456789>%|_#,(=!~ab";
            let chunk: Vec<u8> = (0..len)
                .map(|i| alphabet[((seed >> (i % 60)) as usize + i) % alphabet.len()])
                .collect();
            let dir = if seed & 1 == 0 {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            let extra = if seed & 0x100 != 0 { seed % 5000 } else { 0 };
            let _ = p.feed(dir, ts, &chunk, chunk.len() as u64 + extra, &mut out);
            let (pending, buffered) = p.buffered();
            assert!(pending <= MAX_PENDING && buffered <= 2 * resp::MAX_LINE_BYTES + 512);
        }
        p.close(99_999, &mut out);
        assert!(out.iter().all(|x| x.start_ns <= x.end_ns));
    }
}

#[test]
fn spans_carry_the_command_with_its_arguments_sanitized() {
    let ios = [
        q(
            1,
            b"*3\r\n$3\r\nSET\r\n$6\r\nuser:1\r\n$11\r\nhello world\r\n",
        ),
        r(2, b"+OK\r\n"),
    ];
    let run = replay(Side::Client, &ios, None, Mode::Whole);
    let a = attrs(&run.exchanges[0]);
    assert_eq!(a.span_name(), "SET");
    let mut out = Vec::new();
    a.span_attributes(&SpanOptions::default(), &mut out);
    let text: Vec<String> = out
        .iter()
        .map(|(k, v)| format!("{k}={}", v.to_text()))
        .collect();
    assert!(
        text.contains(&"db.system.name=redis".to_owned()),
        "{text:?}"
    );
    assert!(
        text.contains(&"db.operation.name=SET".to_owned()),
        "{text:?}"
    );
    let query = text
        .iter()
        .find(|t| t.starts_with("db.query.text="))
        .unwrap();
    assert!(query.starts_with("db.query.text=SET ?"), "{query}");
    assert!(
        !query.contains("user") && !query.contains("hello"),
        "{query}"
    );
}

#[test]
fn detection() {
    use Direction::{Egress, Ingress};
    let cases: &[(Side, Direction, &[u8], Verdict)] = &[
        (Side::Server, Ingress, b"*1\r\n$4\r\nPING\r\n", Verdict::Yes),
        (Side::Client, Egress, b"*", Verdict::Prefix),
        (Side::Client, Egress, b"*12", Verdict::Prefix),
        (Side::Client, Egress, b"*1\r\n+", Verdict::No),
        (Side::Server, Ingress, b"PIN", Verdict::Prefix),
        (Side::Server, Ingress, b"ping\n", Verdict::Yes),
        (Side::Server, Ingress, b"GET k", Verdict::Prefix),
        (Side::Server, Ingress, b"GET k\r\n", Verdict::Yes),
        (Side::Server, Ingress, b"FOO k\r\n", Verdict::No),
        (Side::Server, Ingress, b"GETX\r\n", Verdict::No),
        (Side::Server, Ingress, b"\x16\x03\x01", Verdict::No),
        (Side::Client, Ingress, b"+OK\r\n", Verdict::Yes),
        (Side::Client, Ingress, b"+QUEUED", Verdict::Prefix),
        (Side::Client, Ingress, b":12\r\n", Verdict::Yes),
        (Side::Client, Ingress, b"$-1\r\n", Verdict::Yes),
        (Side::Client, Ingress, b"*2\r\n$1\r\n", Verdict::Yes),
        (Side::Client, Ingress, b"%7\r\n", Verdict::Yes),
        (Side::Client, Ingress, b"_\r\n", Verdict::Yes),
        (Side::Client, Ingress, b"#t\r\n", Verdict::Yes),
        (Side::Client, Ingress, b",1.5\r\n", Verdict::Yes),
        (
            Side::Client,
            Ingress,
            b"-WRONGTYPE Operation\r\n",
            Verdict::Yes,
        ),
        (Side::Client, Ingress, b"-wrong\r\n", Verdict::No),
        (Side::Client, Ingress, b"+OK ready\r\n", Verdict::No),
        (Side::Client, Ingress, b"HTTP/1.1 200 OK\r\n", Verdict::No),
        (Side::Client, Ingress, b"VALUE k 0 1\r\n", Verdict::No),
        (Side::Client, Ingress, b"$x\r\n", Verdict::No),
        (Side::Server, Egress, b"+OK\r\n", Verdict::Yes),
    ];
    for (side, dir, bytes, want) in cases {
        assert_eq!(
            detect(*side, *dir, bytes, false),
            *want,
            "{side:?} {dir:?} {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}
