//! Golden tests: bytes captured from memcached 1.6.18 (raw sockets), replayed whole, one byte
//! per syscall, and with the capture limit simulated, from both sides.

use super::*;
use crate::protocol::Parser as _;

use crate::protocol::replay::{Io, Mode, q, r};

const MODES: [Mode; 3] = [Mode::Whole, Mode::Bytewise, Mode::Capture(1024)];

fn attrs(x: &Exchange) -> &Attributes {
    match &x.attributes {
        crate::protocol::Attributes::Memcached(a) => a,
        other => panic!("not Memcached: {other:?}"),
    }
}

/// `op query outcome[:status] [hits/misses] req=N resp=N [truncated] start-end`.
fn summary(x: &Exchange) -> String {
    let a = attrs(x);
    let mut s = format!(
        "{} {:?} {:?}",
        a.db.operation,
        a.db.query.as_deref().unwrap_or(""),
        x.outcome
    );
    if let Some(code) = &a.db.status_code {
        s += &format!(":{code}");
    }
    if let (Some(h), Some(m)) = (a.hits, a.misses) {
        s += &format!(" {h}/{m}");
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
    let response_dir = reply_dir(side);
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
        assert!(pending <= MAX_PENDING && buffered <= 2 * MAX_LINE_BYTES + 64);
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

fn check(ios: &[Io], close: Option<u64>, expect: &[&str]) {
    for side in [Side::Server, Side::Client] {
        for mode in MODES {
            let run = replay(side, ios, close, mode);
            let got: Vec<String> = run.exchanges.iter().map(summary).collect();
            assert_eq!(got, expect, "{side:?} {mode:?} errors {:?}", run.errors);
            assert!(run.errors.is_empty(), "{side:?} {mode:?}: {:?}", run.errors);
        }
    }
}

#[test]
fn storage_retrieval_hits_and_misses() {
    let ios = [
        q(1, b"set k1 0 0 5\r\nhello\r\n"),
        r(2, b"STORED\r\n"),
        q(3, b"get k1 k2 k3\r\n"),
        r(4, b"VALUE k1 0 5\r\nhello\r\nEND\r\n"),
        q(5, b"gets k1\r\n"),
        r(6, b"VALUE k1 0 5 1\r\nhello\r\nEND\r\n"),
        q(7, b"get nothing\r\n"),
        r(8, b"END\r\n"),
    ];
    check(
        &ios,
        None,
        &[
            "set \"set k1 0 0 5\" Ok req=21 resp=8 1-2",
            "get \"get k1 k2 k3\" Ok 1/2 req=14 resp=26 3-4",
            "gets \"gets k1\" Ok 1/0 req=9 resp=28 5-6",
            "get \"get nothing\" Ok 0/1 req=13 resp=5 7-8",
        ],
    );
}

#[test]
fn noreply_pipelining_counters_and_errors() {
    let ios = [
        q(
            1,
            b"add k1 0 0 1 noreply\r\nx\r\nincr n 1\r\nset n 0 0 1\r\n5\r\nincr n 10\r\ndecr n 100\r\n",
        ),
        r(2, b"NOT_FOUND\r\nSTORED\r\n15\r\n0\r\n"),
        q(3, b"delete k2\r\ntouch k1 100\r\nbogus\r\nset k 0 0 z\r\n"),
        r(
            4,
            b"NOT_FOUND\r\nTOUCHED\r\nERROR\r\nCLIENT_ERROR bad command line format\r\n",
        ),
        q(5, b"version\r\nflush_all\r\n"),
        r(6, b"VERSION 1.6.18\r\nOK\r\n"),
        q(7, b"get k\r\n"),
        r(8, b"SERVER_ERROR out of memory\r\n"),
    ];
    check(
        &ios,
        None,
        &[
            "add \"add k1 0 0 1 noreply\" Ok req=25 resp=0 1-1",
            "incr \"incr n 1\" Ok req=10 resp=11 1-2",
            "set \"set n 0 0 1\" Ok req=16 resp=8 1-2",
            "incr \"incr n 10\" Ok req=11 resp=4 1-2",
            "decr \"decr n 100\" Ok req=12 resp=3 1-2",
            "delete \"delete k2\" Ok req=11 resp=11 3-4",
            "touch \"touch k1 100\" Ok req=14 resp=9 3-4",
            "bogus \"bogus\" ClientError:ERROR req=7 resp=7 3-4",
            "set \"set k 0 0 z\" ClientError:CLIENT_ERROR req=13 resp=38 3-4",
            "version \"version\" Ok req=9 resp=16 5-6",
            "flush_all \"flush_all\" Ok req=11 resp=4 5-6",
            "get \"get k\" ServerError:SERVER_ERROR req=7 resp=28 7-8",
        ],
    );
}

#[test]
fn meta_commands_and_quiet_mode() {
    let ios = [
        q(
            1,
            b"mg k1 v\r\nmg k9 v\r\nms k2 2 T0\r\nhi\r\nmd k2 q\r\nmg k9 v q\r\nmn\r\nma n\r\nme k1\r\n",
        ),
        r(
            2,
            b"VA 5\r\nhello\r\nEN\r\nHD\r\nMN\r\nHD\r\nME k1 exp=-99 la=1 cas=1 fetch=yes cls=1 size=66\r\n",
        ),
    ];
    check(
        &ios,
        None,
        &[
            "mg \"mg k1 v\" Ok 1/0 req=9 resp=13 1-2",
            "mg \"mg k9 v\" Ok 0/1 req=9 resp=4 1-2",
            "ms \"ms k2 2 T0\" Ok req=16 resp=4 1-2",
            "md \"md k2 q\" Ok req=9 resp=0 1-2",
            "mg \"mg k9 v q\" Ok 0/1 req=11 resp=0 1-2",
            "mn \"mn\" Ok req=4 resp=4 1-2",
            "ma \"ma n\" Ok req=6 resp=4 1-2",
            "me \"me k1\" Ok req=7 resp=50 1-2",
        ],
    );
}

#[test]
fn stats_is_one_exchange_until_end() {
    let ios = [
        q(1, b"stats slabs\r\n"),
        r(
            2,
            b"STAT 1:chunk_size 96\r\nSTAT 1:chunks_per_page 10922\r\nSTAT active_slabs 1\r\n",
        ),
        r(3, b"STAT total_malloced 1048576\r\nEND\r\n"),
        q(4, b"stats\r\n"),
    ];
    check(
        &ios,
        Some(9),
        &[
            "stats \"stats slabs\" Ok req=13 resp=107 1-3",
            "stats \"stats\" NoResponse req=7 resp=0 4-9",
        ],
    );
}

#[test]
fn values_beyond_the_capture_are_skipped_by_count() {
    let value = "v".repeat(3000);
    let set = format!("set big 0 0 3000\r\n{value}\r\n");
    let got = format!("VALUE big 0 3000\r\n{value}\r\nEND\r\n");
    let ios = [
        q(1, set.as_bytes()),
        r(2, b"STORED\r\n"),
        q(3, b"get big\r\n"),
        r(4, got.as_bytes()),
        q(5, b"delete big\r\n"),
        r(6, b"DELETED\r\n"),
    ];
    for side in [Side::Server, Side::Client] {
        let run = replay(side, &ios, None, Mode::Capture(256));
        let got: Vec<String> = run.exchanges.iter().map(summary).collect();
        assert!(run.errors.is_empty(), "{:?}", run.errors);
        assert_eq!(
            got,
            [
                "set \"set big 0 0 3000\" Ok req=3020 resp=8 truncated 1-2",
                // The END beyond the capture was not seen: the hit was.
                "get \"get big\" Ok 1/0 req=9 resp=3025 truncated 3-4",
                "delete \"delete big\" Ok req=12 resp=9 5-6",
            ]
        );
    }
}

#[test]
fn binary_protocol_is_detected_and_not_parsed() {
    // A binary GET of "k": magic, opcode 0, key length 1, body length 1.
    let get = b"\x80\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00k";
    assert_eq!(
        detect(Side::Server, Direction::Ingress, get, false),
        Verdict::Yes
    );
    assert_eq!(
        detect(Side::Client, Direction::Ingress, b"\x81\x00\x00\x00", false),
        Verdict::Prefix
    );
    let mut p = Parser::new(Side::Server);
    let mut out = Vec::new();
    let err = p
        .feed(Direction::Ingress, 1, get, get.len() as u64, &mut out)
        .unwrap_err();
    assert_eq!(err.reason, "binary_protocol");
    assert!(p.is_dead() && out.is_empty());
}

#[test]
fn detection() {
    use Direction::{Egress, Ingress};
    let cases: &[(Side, Direction, &[u8], Verdict)] = &[
        (Side::Server, Ingress, b"get k1 k2\r\n", Verdict::Yes),
        (
            Side::Server,
            Ingress,
            b"set k 0 0 5\r\nhello\r\n",
            Verdict::Yes,
        ),
        (Side::Server, Ingress, b"set k 0 0\r\n", Verdict::No),
        (Side::Server, Ingress, b"set k a b c\r\n", Verdict::No),
        (Side::Client, Egress, b"ge", Verdict::Prefix),
        (Side::Client, Egress, b"version\r\n", Verdict::Yes),
        (Side::Client, Egress, b"mn\r\n", Verdict::Yes),
        (Side::Client, Egress, b"GET k\r\n", Verdict::No),
        (Side::Client, Egress, b"*1\r\n$4\r\nPING\r\n", Verdict::No),
        (Side::Client, Egress, b"get / HTTP/1.1\r\n", Verdict::Yes),
        (Side::Client, Ingress, b"VALUE k 0 1\r\n", Verdict::Yes),
        (Side::Client, Ingress, b"END\r\n", Verdict::Yes),
        (Side::Client, Ingress, b"STOR", Verdict::Prefix),
        (Side::Client, Ingress, b"OK\r\n", Verdict::No),
        (Side::Client, Ingress, b"+OK\r\n", Verdict::No),
        (Side::Client, Ingress, b"HTTP/1.1 200 OK\r\n", Verdict::No),
        (Side::Server, Ingress, b"\x80\xff", Verdict::No),
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

#[test]
fn random_input_never_panics_and_stays_bounded() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for side in [Side::Client, Side::Server] {
        let mut p = Parser::new(side);
        let mut out = Vec::new();
        let long = format!("get {}\r\n", "k ".repeat(50_000));
        let _ = p.feed(
            Direction::Ingress,
            0,
            long.as_bytes(),
            long.len() as u64,
            &mut out,
        );
        let _ = p.feed(
            Direction::Egress,
            0,
            long.as_bytes(),
            long.len() as u64,
            &mut out,
        );
        for ts in 0..20_000u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let words: [&[u8]; 12] = [
                b"get ",
                b"set k 0 0 3\r\n",
                b"VALUE k 0 9\r\n",
                b"END\r\n",
                b"\r\n",
                b"abc",
                b"99999999999 ",
                b"noreply",
                b"mg k q\r\n",
                b"MN\r\n",
                b"VA 2\r\n",
                b"stats\r\n",
            ];
            let chunk: Vec<u8> = (0..(seed % 5))
                .flat_map(|i| words[((seed >> (8 * i)) % 12) as usize].iter().copied())
                .collect();
            let dir = if seed & 1 == 0 {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            let extra = if seed & 0x100 != 0 { seed % 3000 } else { 0 };
            let _ = p.feed(dir, ts, &chunk, chunk.len() as u64 + extra, &mut out);
            let (pending, buffered) = p.buffered();
            assert!(pending <= MAX_PENDING && buffered <= 2 * MAX_LINE_BYTES + 64);
        }
        p.close(99_999, &mut out);
        for x in &out {
            assert!(x.start_ns <= x.end_ns);
            let _ = attrs(x).span_name();
        }
    }
}
