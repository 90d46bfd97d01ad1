//! Golden tests: raw HTTP/1 byte fixtures replayed whole, one byte per syscall, and with the
//! capture limit simulated (payload = first N bytes of each syscall, bytes = its full
//! length), against exact expected exchanges.

use super::*;
use crate::protocol::{Direction, Side};

use crate::protocol::replay::{Io, Mode, q, r};

const MODES: [Mode; 6] = [
    Mode::Whole,
    Mode::Bytewise,
    Mode::Capture(0),
    Mode::Capture(16),
    Mode::Capture(64),
    Mode::Capture(1024),
];

/// `METHOD path status req=N resp=N Outcome start-end`, status `-` when absent.
fn summary(x: &HttpExchange) -> String {
    let status = x.status.map_or_else(|| "-".to_owned(), |s| s.to_string());
    format!(
        "{} {} {} req={} resp={} {:?} {}-{}",
        x.method,
        x.path,
        status,
        x.request_body_bytes,
        x.response_body_bytes,
        x.outcome,
        x.start_ns,
        x.end_ns
    )
}

struct Run {
    exchanges: Vec<HttpExchange>,
    errors: Vec<&'static str>,
    parser: Http1Parser,
}

/// Replays `ios` on one parser, and again resting it whenever it can, as a session does (made
/// again from [`Http1Parser::rest`]'s words at the next syscall): both give the same exchanges
/// and errors.
fn replay(side: Side, ios: &[Io], close: Option<u64>, mode: Mode) -> Run {
    let run = replay_resting(side, ios, close, mode, false);
    let rested = replay_resting(side, ios, close, mode, true);
    assert_eq!(
        (&run.exchanges, &run.errors),
        (&rested.exchanges, &rested.errors),
        "{side:?} {mode:?}: a parser rested between messages differs"
    );
    run
}

fn replay_resting(side: Side, ios: &[Io], close: Option<u64>, mode: Mode, rest: bool) -> Run {
    let mut parser = Http1Parser::new(side);
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
                errors.push(e.reason());
            }
            if rest && let Some(words) = parser.rest() {
                parser = Http1Parser::new(side);
                parser.resume(words);
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
        let (head, pending) = parser.buffered();
        assert!(head <= MAX_HEADER_BLOCK_BYTES && pending <= MAX_PENDING_REQUESTS);
    }
    if let Some(ts) = close {
        // What the agent relies on to keep a closed connection's parser for late bytes: a close
        // that completes an exchange is one `in_flight` announced, and nothing stays in flight.
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

/// Replays `ios` in every mode, from both sides, and compares with `expect(mode)`.
fn check(ios: &[Io], close: Option<u64>, expect: impl Fn(Mode) -> Vec<&'static str>) {
    for side in [Side::Server, Side::Client] {
        for mode in MODES {
            let run = replay(side, ios, close, mode);
            let got: Vec<String> = run.exchanges.iter().map(summary).collect();
            assert_eq!(
                got,
                expect(mode),
                "{side:?} {mode:?} errors: {:?}",
                run.errors
            );
        }
    }
}

fn errors_of(ios: &[Io], close: Option<u64>, mode: Mode) -> Vec<&'static str> {
    replay(Side::Server, ios, close, mode).errors
}

fn keep_alive() -> Vec<Io> {
    vec![
        q(
            10,
            "GET /users/123?x=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8\r\ntraceparent: 00-abc-def-01\r\nAccept: */*\r\n\r\n",
        ),
        r(20, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        q(
            30,
            "POST /api/v1/items HTTP/1.1\r\nHost: example.com\r\nContent-Length: 11\r\n\r\n{\"a\":12345}",
        ),
        r(40, "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
    ]
}

#[test]
fn keep_alive_with_content_length() {
    check(&keep_alive(), None, |mode| match mode {
        Mode::Capture(0) => vec![],
        Mode::Capture(16) => vec!["GET /users/123 200 req=0 resp=0 Truncated 10-20"],
        Mode::Capture(64) => vec![
            "GET /users/123 200 req=0 resp=5 Truncated 10-20",
            "POST /api/v1/items 201 req=0 resp=0 Truncated 30-40",
        ],
        _ => vec![
            "GET /users/123 200 req=0 resp=5 Complete 10-20",
            "POST /api/v1/items 201 req=11 resp=0 Complete 30-40",
        ],
    });
    assert!(errors_of(&keep_alive(), None, Mode::Whole).is_empty());
    assert!(errors_of(&keep_alive(), None, Mode::Bytewise).is_empty());
}

#[test]
fn allowlisted_headers_only() {
    let run = replay(Side::Server, &keep_alive(), None, Mode::Whole);
    assert_eq!(
        run.exchanges[0].headers,
        [("traceparent", "00-abc-def-01".to_owned())]
    );
    // Only the complete lines of a cut header block count: the traceparent line ends at byte
    // 96 of the 111-byte block.
    let run = replay(Side::Server, &keep_alive(), None, Mode::Capture(100));
    assert_eq!(
        run.exchanges[0].headers,
        [("traceparent", "00-abc-def-01".to_owned())]
    );
    let run = replay(Side::Server, &keep_alive(), None, Mode::Capture(90));
    assert_eq!(run.exchanges[0].headers, []);

    let long = "A".repeat(300);
    let ios = [
        q(
            1,
            format!(
                "GET http://example.com/path/x?y=1 HTTP/1.1\r\nHost: example.com\r\nX-B3-TraceId: 463ac35c9f6413ad\r\n\
             b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1\r\nCookie: secret\r\nTraceState: {long}\r\n\r\n"
            ),
        ),
        r(2, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ];
    let run = replay(Side::Client, &ios, None, Mode::Whole);
    assert_eq!(run.exchanges.len(), 1);
    let x = &run.exchanges[0];
    assert_eq!(x.path, "/path/x");
    let names: Vec<&str> = x.headers.iter().map(|(k, _)| *k).collect();
    assert_eq!(names, ["x-b3-traceid", "b3", "tracestate"]);
    assert_eq!(x.headers[0].1, "463ac35c9f6413ad");
    assert_eq!(x.headers[2].1, "A".repeat(MAX_HEADER_VALUE_BYTES));
}

fn pipelined() -> Vec<Io> {
    vec![
        q(
            10,
            "GET /a HTTP/1.1\r\nHost: h\r\n\r\nHEAD /b HTTP/1.1\r\nHost: h\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n",
        ),
        r(
            20,
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc\
             HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n\
             HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        ),
    ]
}

#[test]
fn pipelining_pairs_in_order() {
    check(&pipelined(), Some(99), |mode| match mode {
        Mode::Capture(0) => vec![],
        Mode::Capture(16) => vec!["GET /a 200 req=0 resp=0 Truncated 10-20"],
        // The third response starts in uncaptured bytes: its request ends at the close.
        Mode::Capture(64) => vec![
            "GET /a 200 req=0 resp=3 Complete 10-20",
            "HEAD /b 200 req=0 resp=0 Truncated 10-20",
            "GET /c - req=0 resp=0 NoResponse 10-99",
        ],
        _ => vec![
            "GET /a 200 req=0 resp=3 Complete 10-20",
            "HEAD /b 200 req=0 resp=0 Complete 10-20",
            "GET /c 404 req=0 resp=0 Complete 10-20",
        ],
    });
}

fn chunked() -> Vec<Io> {
    vec![
        q(10, "GET /stream HTTP/1.1\r\nHost: h\r\n\r\n"),
        r(20, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        r(
            21,
            "5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n",
        ),
        r(22, "0\r\nTrailer-X: y\r\n\r\n"),
        q(30, "GET /next HTTP/1.1\r\nHost: h\r\n\r\n"),
        r(40, "HTTP/1.1 204 No Content\r\n\r\n"),
    ]
}

#[test]
fn chunked_body_with_extensions_and_trailers() {
    check(&chunked(), None, |mode| match mode {
        Mode::Capture(0) => vec![],
        Mode::Capture(16) => vec![
            "GET /stream 200 req=0 resp=0 Truncated 10-20",
            "GET /next 204 req=0 resp=0 Truncated 30-40",
        ],
        _ => vec![
            "GET /stream 200 req=0 resp=31 Complete 10-22",
            "GET /next 204 req=0 resp=0 Complete 30-40",
        ],
    });
}

#[test]
fn chunked_request_body() {
    let ios = [
        q(
            10,
            "POST /up HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n",
        ),
        r(20, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ];
    check(&ios, None, |mode| match mode {
        Mode::Capture(0) => vec![],
        Mode::Capture(16) => vec!["POST /up 200 req=0 resp=0 Truncated 10-20"],
        // The chunked framing falls into uncaptured bytes: the rest of the syscall counts.
        Mode::Capture(64) => vec!["POST /up 200 req=19 resp=2 Complete 10-20"],
        _ => vec!["POST /up 200 req=9 resp=2 Complete 10-20"],
    });
}

/// A 10 MiB chunked response written 64 KiB per syscall: with a capture limit the chunk-size
/// lines are not seen, the framing is lost after the first chunk, every later byte counts,
/// and the last chunk `0\r\n\r\n` (its own syscall) ends the body.
#[test]
fn huge_chunked_response_with_capture_limit() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 160;
    let mut ios = vec![
        q(10, "GET /big HTTP/1.1\r\nHost: h\r\n\r\n"),
        r(20, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ];
    let mut data = format!("{CHUNK:x}\r\n").into_bytes();
    data.extend(std::iter::repeat_n(b'x', CHUNK));
    data.extend_from_slice(b"\r\n");
    for i in 0..CHUNKS {
        ios.push(r(21 + i as u64, &data));
    }
    ios.push(r(500, "0\r\n\r\n"));
    ios.push(q(600, "GET /after HTTP/1.1\r\n\r\n"));
    ios.push(r(700, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    // One chunk per syscall: each uncaptured tail ends exactly after a chunk's data and
    // CRLF, so the framing is followed by count and the body size is exact.
    for mode in [
        Mode::Whole,
        Mode::Capture(64),
        Mode::Capture(1024),
        Mode::Capture(16),
    ] {
        let run = replay(Side::Server, &ios, None, mode);
        let got: Vec<String> = run.exchanges.iter().map(summary).collect();
        let want = match mode {
            Mode::Whole => vec![
                format!("GET /big 200 req=0 resp={} Complete 10-500", CHUNK * CHUNKS),
                "GET /after 200 req=0 resp=2 Complete 600-700".to_owned(),
            ],
            Mode::Capture(16) => vec![
                "GET /big 200 req=0 resp=0 Truncated 10-20".to_owned(),
                "GET /after 200 req=0 resp=0 Truncated 600-700".to_owned(),
            ],
            _ => vec![
                format!("GET /big 200 req=0 resp={} Complete 10-500", CHUNK * CHUNKS),
                "GET /after 200 req=0 resp=2 Complete 600-700".to_owned(),
            ],
        };
        assert_eq!(got, want, "{mode:?} {:?}", run.errors);
        assert!(run.errors.is_empty(), "{mode:?} {:?}", run.errors);
    }
}

/// Lost chunked framing without a visible last chunk ends at the next response.
#[test]
fn lost_chunked_framing_ends_at_next_message() {
    let ios = [
        q(10, "GET /a HTTP/1.1\r\n\r\n"),
        r(
            20,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100\r\n",
        ),
        r(21, "x".repeat(0x100) + "\r\n0\r\n\r\n"),
        q(30, "GET /b HTTP/1.1\r\n\r\n"),
        r(40, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n!"),
    ];
    let run = replay(Side::Client, &ios, None, Mode::Capture(64));
    let got: Vec<String> = run.exchanges.iter().map(summary).collect();
    assert_eq!(
        got,
        [
            "GET /a 200 req=0 resp=263 Complete 10-21",
            "GET /b 200 req=0 resp=1 Complete 30-40"
        ]
    );
}

#[test]
fn huge_content_length_body_is_counted_exactly() {
    const SIZE: usize = 10 * 1024 * 1024;
    let mut ios = vec![
        q(10, "PUT /blob HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
        r(
            20,
            format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n"),
        ),
    ];
    let block = vec![b'z'; 64 * 1024];
    for i in 0..SIZE / block.len() {
        ios.push(r(21 + i as u64, &block));
    }
    ios.push(q(1000, "GET /next HTTP/1.1\r\n\r\n"));
    ios.push(r(
        1001,
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
    ));
    let last = 20 + (SIZE / block.len()) as u64;
    for mode in [
        Mode::Whole,
        Mode::Capture(64),
        Mode::Capture(1024),
        Mode::Capture(16),
        Mode::Capture(0),
    ] {
        let run = replay(Side::Client, &ios, None, mode);
        let got: Vec<String> = run.exchanges.iter().map(summary).collect();
        let want = match mode {
            Mode::Capture(0) => vec![],
            Mode::Capture(16) => vec![
                "PUT /blob 200 req=0 resp=0 Truncated 10-20".to_owned(),
                "GET /next 304 req=0 resp=0 Truncated 1000-1001".to_owned(),
            ],
            _ => vec![
                format!("PUT /blob 200 req=3 resp={SIZE} Complete 10-{last}"),
                "GET /next 304 req=0 resp=0 Complete 1000-1001".to_owned(),
            ],
        };
        assert_eq!(got, want, "{mode:?} {:?}", run.errors);
    }
}

fn expect_continue() -> Vec<Io> {
    vec![
        q(
            10,
            "POST /upload HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
        ),
        r(20, "HTTP/1.1 100 Continue\r\n\r\n"),
        q(30, "data"),
        r(40, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        // Refused: the client skips the body and sends its next request.
        q(
            50,
            "PUT /big HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n",
        ),
        r(
            60,
            "HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n",
        ),
        q(70, "GET /after HTTP/1.1\r\n\r\n"),
        r(80, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ]
}

#[test]
fn expect_100_continue() {
    check(&expect_continue(), None, |mode| match mode {
        Mode::Capture(0) => vec![],
        Mode::Capture(16) => vec![
            "POST /upload 200 req=0 resp=0 Truncated 10-40",
            "PUT /big 417 req=0 resp=0 Truncated 50-60",
            "GET /after 200 req=0 resp=0 Truncated 70-80",
        ],
        Mode::Capture(64) => vec![
            "POST /upload 200 req=0 resp=0 Truncated 10-40",
            "PUT /big 417 req=0 resp=0 Complete 50-60",
            "GET /after 200 req=0 resp=0 Complete 70-80",
        ],
        _ => vec![
            "POST /upload 200 req=4 resp=0 Complete 10-40",
            "PUT /big 417 req=0 resp=0 Complete 50-60",
            "GET /after 200 req=0 resp=0 Complete 70-80",
        ],
    });
}

fn upgrade() -> Vec<Io> {
    vec![
        q(10, "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
        r(20, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello".as_slice()),
        q(30, b"\x81\x85garbage\x00\xff".as_slice()),
        r(40, b"\x81\x02hi".as_slice()),
    ]
}

#[test]
fn switching_protocols_stops_the_parser() {
    check(&upgrade(), Some(50), |mode| match mode {
        Mode::Capture(0) => vec![],
        Mode::Capture(16 | 64) => vec!["GET /ws 101 req=0 resp=0 Truncated 10-20"],
        _ => vec!["GET /ws 101 req=0 resp=0 Complete 10-20"],
    });
    for mode in [Mode::Whole, Mode::Bytewise, Mode::Capture(1024)] {
        let run = replay(Side::Server, &upgrade(), None, mode);
        assert!(run.parser.is_dead(), "{mode:?}");
        assert!(run.errors.is_empty(), "{mode:?} {:?}", run.errors);
    }
}

#[test]
fn connect_tunnel_stops_the_parser() {
    let ios = [
        q(
            10,
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        ),
        r(20, "HTTP/1.1 200 Connection Established\r\n\r\n"),
        q(30, b"\x16\x03\x01\x00\x05hello".as_slice()),
    ];
    let run = replay(Side::Client, &ios, Some(40), Mode::Whole);
    let got: Vec<String> = run.exchanges.iter().map(summary).collect();
    assert_eq!(got, ["CONNECT / 200 req=0 resp=0 Complete 10-20"]);
    assert!(run.errors.is_empty() && run.parser.is_dead());
}

fn until_close() -> Vec<Io> {
    vec![
        q(10, "GET /old HTTP/1.0\r\n\r\n"),
        r(
            20,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nsome body",
        ),
        r(25, " and more"),
    ]
}

#[test]
fn body_until_close_completes_at_close() {
    check(&until_close(), Some(30), |mode| match mode {
        Mode::Capture(0) => vec![],
        Mode::Capture(16) => vec!["GET /old 200 req=0 resp=0 Truncated 10-20"],
        _ => vec!["GET /old 200 req=0 resp=18 Complete 10-25"],
    });
    // Nothing before the close.
    let run = replay(Side::Server, &until_close(), None, Mode::Whole);
    assert!(run.exchanges.is_empty());
}

fn pending_at_close() -> Vec<Io> {
    vec![
        q(10, "GET /slow HTTP/1.1\r\n\r\n"),
        q(11, "POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
    ]
}

#[test]
fn close_turns_pending_requests_into_no_response() {
    check(&pending_at_close(), Some(50), |mode| match mode {
        Mode::Capture(0) => vec![],
        Mode::Capture(16) => vec![
            "GET /slow - req=0 resp=0 NoResponse 10-50",
            "POST /x - req=0 resp=0 NoResponse 11-50",
        ],
        _ => vec![
            "GET /slow - req=0 resp=0 NoResponse 10-50",
            "POST /x - req=3 resp=0 NoResponse 11-50",
        ],
    });
}

#[test]
fn close_in_the_middle_of_a_body_truncates() {
    let ios = [
        q(10, "GET /a HTTP/1.1\r\n\r\n"),
        r(20, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
    ];
    let run = replay(Side::Server, &ios, Some(30), Mode::Whole);
    let got: Vec<String> = run.exchanges.iter().map(summary).collect();
    assert_eq!(got, ["GET /a 200 req=0 resp=3 Truncated 10-20"]);
}

fn mid_connection() -> Vec<Io> {
    vec![
        r(20, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        q(30, "GET /a HTTP/1.1\r\n\r\n"),
        r(40, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ]
}

#[test]
fn response_without_request_is_not_an_exchange() {
    check(&mid_connection(), None, |mode| match mode {
        Mode::Capture(0) => vec![],
        Mode::Capture(16) => vec!["GET /a 200 req=0 resp=0 Truncated 30-40"],
        _ => vec!["GET /a 200 req=0 resp=0 Complete 30-40"],
    });
    assert_eq!(
        errors_of(&mid_connection(), None, Mode::Whole),
        ["response_without_request"]
    );
    // Started in the middle of a body: one error, then resynchronised.
    let ios = [
        r(5, "tail of an earlier body"),
        r(6, "more of it"),
        q(30, "GET /a HTTP/1.1\r\n\r\n"),
        r(40, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ];
    let run = replay(Side::Client, &ios, None, Mode::Whole);
    assert_eq!(run.errors, ["bad_status_line"]);
    assert_eq!(run.exchanges.len(), 1);
}

#[test]
fn no_body_statuses_ignore_content_length() {
    let ios = [
        q(10, "GET /a HTTP/1.1\r\n\r\n"),
        r(
            20,
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n",
        ),
        q(30, "GET /b HTTP/1.1\r\n\r\n"),
        r(40, "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n"),
        q(50, "HEAD /c HTTP/1.1\r\n\r\n"),
        r(60, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ];
    check(&ios, None, |mode| match mode {
        Mode::Capture(0) => vec![],
        Mode::Capture(16) => vec![
            "GET /a 304 req=0 resp=0 Truncated 10-20",
            "GET /b 204 req=0 resp=0 Truncated 30-40",
            "HEAD /c 200 req=0 resp=0 Truncated 50-60",
        ],
        _ => vec![
            "GET /a 304 req=0 resp=0 Complete 10-20",
            "GET /b 204 req=0 resp=0 Complete 30-40",
            "HEAD /c 200 req=0 resp=0 Complete 50-60",
        ],
    });
}

#[test]
fn request_line_beyond_capture_still_counts() {
    let cookie = "c".repeat(3000);
    let ios = [
        q(
            10,
            format!(
                "POST /orders/42?id=1 HTTP/1.1\r\nHost: shop\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nCookie: {cookie}\r\nContent-Length: 5\r\n\r\n"
            ),
        ),
        q(11, "hello"),
        r(
            20,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
        ),
        q(30, "GET /next HTTP/1.1\r\n\r\n"),
        r(40, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ];
    let run = replay(Side::Server, &ios, None, Mode::Capture(1024));
    let got: Vec<String> = run.exchanges.iter().map(summary).collect();
    assert_eq!(
        got,
        [
            "POST /orders/42 500 req=0 resp=0 Truncated 10-20",
            "GET /next 200 req=0 resp=0 Complete 30-40"
        ]
    );
    let names: Vec<&str> = run.exchanges[0].headers.iter().map(|(k, _)| *k).collect();
    assert_eq!(names, ["traceparent"]);
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    // Whole, the same request is a plain exchange.
    let run = replay(Side::Server, &ios, None, Mode::Whole);
    let got: Vec<String> = run.exchanges.iter().map(summary).collect();
    assert_eq!(
        got,
        [
            "POST /orders/42 500 req=5 resp=0 Complete 10-20",
            "GET /next 200 req=0 resp=0 Complete 30-40"
        ]
    );
}

#[test]
fn thousands_of_keep_alive_exchanges() {
    const N: u64 = 5000;
    let mut ios = Vec::new();
    for i in 0..N {
        ios.push(q(
            i * 10,
            format!("GET /items/{i} HTTP/1.1\r\nHost: h\r\n\r\n"),
        ));
        ios.push(r(
            i * 10 + 5,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ));
    }
    for mode in [
        Mode::Whole,
        Mode::Bytewise,
        Mode::Capture(1024),
        Mode::Capture(16),
    ] {
        let run = replay(Side::Server, &ios, Some(N * 10), mode);
        assert_eq!(run.exchanges.len() as u64, N, "{mode:?}");
        assert!(run.errors.is_empty(), "{mode:?} {:?}", run.errors);
        for (i, x) in run.exchanges.iter().enumerate() {
            assert_eq!(x.path, format!("/items/{i}"));
            assert_eq!(super::route::route(&x.path), "/items/*");
            assert_eq!(x.status, Some(200));
            assert_eq!((x.start_ns, x.end_ns), (i as u64 * 10, i as u64 * 10 + 5));
        }
        assert_eq!(run.parser.buffered().1, 0);
    }
}

#[test]
fn header_block_too_large_resynchronises() {
    let ios = [
        q(
            10,
            format!(
                "GET /huge HTTP/1.1\r\nX-Big: {}\r\n\r\n",
                "b".repeat(20_000)
            ),
        ),
        r(
            20,
            "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n",
        ),
        q(30, "GET /ok HTTP/1.1\r\n\r\n"),
        r(40, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ];
    for mode in [Mode::Whole, Mode::Bytewise] {
        let run = replay(Side::Server, &ios, None, mode);
        let got: Vec<String> = run.exchanges.iter().map(summary).collect();
        assert_eq!(got, ["GET /ok 200 req=0 resp=0 Complete 30-40"], "{mode:?}");
        assert_eq!(
            run.errors,
            ["header_too_large", "response_without_request"],
            "{mode:?}"
        );
    }
}

#[test]
fn too_many_pending_gives_up() {
    let one = "GET / HTTP/1.1\r\n\r\n";
    let ios = [q(10, one.repeat(MAX_PENDING_REQUESTS + 1))];
    let run = replay(Side::Server, &ios, Some(20), Mode::Whole);
    assert_eq!(run.errors, ["too_many_pending"]);
    assert!(run.parser.is_dead());
    assert!(run.exchanges.is_empty());
}

#[test]
fn bad_chunk_truncates_and_resynchronises() {
    let ios = [
        q(10, "GET /a HTTP/1.1\r\n\r\n"),
        r(
            20,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
        ),
        q(30, "GET /b HTTP/1.1\r\n\r\n"),
        r(40, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"),
    ];
    for mode in [Mode::Whole, Mode::Bytewise] {
        let run = replay(Side::Client, &ios, None, mode);
        let got: Vec<String> = run.exchanges.iter().map(summary).collect();
        assert_eq!(
            got,
            [
                "GET /a 200 req=0 resp=3 Truncated 10-20",
                "GET /b 200 req=0 resp=1 Complete 30-40"
            ],
            "{mode:?}"
        );
        assert_eq!(run.errors, ["bad_chunk"], "{mode:?}");
    }
}

#[test]
fn conflicting_content_length_is_an_error() {
    let ios = [
        q(
            10,
            "POST /a HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        ),
        r(20, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
    ];
    let run = replay(Side::Server, &ios, None, Mode::Whole);
    let got: Vec<String> = run.exchanges.iter().map(summary).collect();
    assert_eq!(got, ["POST /a 400 req=0 resp=0 Complete 10-20"]);
    assert_eq!(run.errors, ["bad_header"]);
    // A list of identical values is one length (RFC 9112 §6.3).
    assert_eq!(parse_content_length(b"5, 5"), Ok(5));
    assert_eq!(parse_content_length(b"5, 6"), Err(ParseError::BadHeader));
    assert_eq!(parse_content_length(b"-1"), Err(ParseError::BadHeader));
    assert_eq!(
        parse_content_length(b"99999999999999999999999"),
        Err(ParseError::BadHeader)
    );
}

#[test]
fn response_gap_drops_unpairable_requests() {
    let mut parser = Http1Parser::new(Side::Server);
    let mut out = Vec::new();
    let ingress = Direction::Ingress;
    let egress = Direction::Egress;
    let a = b"GET /a HTTP/1.1\r\n\r\n";
    parser
        .feed(ingress, 10, a, a.len() as u64, &mut out)
        .unwrap();
    parser.gap(egress); // the response to /a was lost
    let b = b"GET /b HTTP/1.1\r\n\r\n";
    parser
        .feed(ingress, 30, b, b.len() as u64, &mut out)
        .unwrap();
    let resp = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
    parser
        .feed(egress, 40, resp, resp.len() as u64, &mut out)
        .unwrap();
    let got: Vec<String> = out.iter().map(summary).collect();
    assert_eq!(got, ["GET /b 201 req=0 resp=0 Complete 30-40"]);
}

#[test]
fn request_gap_resynchronises_on_next_request() {
    let mut parser = Http1Parser::new(Side::Client);
    let mut out = Vec::new();
    let head = b"POST /a HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123";
    parser
        .feed(Direction::Egress, 10, head, head.len() as u64, &mut out)
        .unwrap();
    parser.gap(Direction::Egress);
    let body_tail = b"rest of the body";
    parser
        .feed(
            Direction::Egress,
            11,
            body_tail,
            body_tail.len() as u64,
            &mut out,
        )
        .unwrap();
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    parser
        .feed(Direction::Ingress, 20, resp, resp.len() as u64, &mut out)
        .unwrap();
    let b = b"GET /b HTTP/1.1\r\n\r\n";
    parser
        .feed(Direction::Egress, 30, b, b.len() as u64, &mut out)
        .unwrap();
    parser
        .feed(Direction::Ingress, 40, resp, resp.len() as u64, &mut out)
        .unwrap();
    let got: Vec<String> = out.iter().map(summary).collect();
    assert_eq!(
        got,
        [
            "POST /a 200 req=4 resp=0 Complete 10-20",
            "GET /b 200 req=0 resp=0 Complete 30-40"
        ]
    );
}

#[test]
fn tls_and_binary_are_never_http() {
    let client_hello =
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x8a\x11\x00\x00GET / HTTP/1.1\r\n\r\n";
    let ios = [
        q(10, client_hello.as_slice()),
        r(20, b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76".as_slice()),
    ];
    // Not Bytewise: one-byte syscalls that spell a request are a request, wherever they are.
    for mode in MODES.into_iter().filter(|&m| m != Mode::Bytewise) {
        let run = replay(Side::Server, &ios, Some(30), mode);
        assert!(run.exchanges.is_empty(), "{mode:?}");
    }
    assert_eq!(
        errors_of(&ios, None, Mode::Whole),
        ["bad_request_line", "bad_status_line"]
    );
}

#[test]
fn request_paths() {
    let cases = [
        ("/a/b?c=d", "/a/b"),
        ("/a#f", "/a"),
        ("http://example.com/x/y?z", "/x/y"),
        ("HTTPS://example.com", "/"),
        ("http://example.com?q=1", "/"),
        ("example.com:443", "/"),
        ("*", "*"),
        ("", "/"),
    ];
    for (target, want) in cases {
        assert_eq!(request_path(target), want, "{target:?}");
    }
    assert_eq!(
        request_path(&format!("/{}", "é".repeat(1000))).len(),
        MAX_PATH_BYTES - 1
    );
}

#[test]
fn partial_start_lines() {
    assert_eq!(partial_status(b"HTTP/1.1 200"), Some(200));
    assert_eq!(partial_status(b"HTTP/1.1 200 OK\r"), Some(200));
    assert_eq!(partial_status(b"HTTP/1.1 20"), None);
    assert_eq!(partial_status(b"HTTP/1.1 2000"), None);
    assert_eq!(partial_status(b"HTTP/1.1 99x"), None);
    let line = partial_request_line(b"DELETE /users/7 HT").map(|l| (l.method, l.path));
    assert_eq!(line, Some(("DELETE".into(), "/users/7".to_owned())));
    assert!(partial_request_line(b"GET /users/12").is_none());
    assert!(partial_request_line(b"GE").is_none());
}

#[test]
fn last_chunk_matcher() {
    let mut m = 0;
    for &b in b"ab\r\n\r\n0\r\n\r\n" {
        m = advance_last_chunk(m, b);
    }
    assert_eq!(m, LAST_CHUNK.len());
    let mut m = 0;
    for &b in b"\r\n0\r\n\rx" {
        m = advance_last_chunk(m, b);
    }
    assert_eq!(m, 0);
}

/// xorshift64*: a tiny deterministic PRNG, enough to pick bytes and split points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// Random bytes, and random mutations of valid traffic, in random syscall sizes with random
/// capture limits, in both directions and for both sides: never a panic, buffers bounded.
#[test]
fn random_input_never_panics_and_stays_bounded() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    for ios in [
        keep_alive(),
        pipelined(),
        chunked(),
        expect_continue(),
        upgrade(),
        until_close(),
        mid_connection(),
    ] {
        for io in ios {
            let (Io::Req(_, b) | Io::Resp(_, b)) = io;
            corpus.push(b);
        }
    }
    let tokens: [&[u8]; 10] = [
        b"\r\n",
        b"\r\n\r\n",
        b"0\r\n\r\n",
        b"HTTP/1.1 ",
        b"GET / HTTP/1.1",
        b"Content-Length: ",
        b"Transfer-Encoding: chunked",
        b"ffffffffffffffff",
        b"99999999999999999999",
        b":",
    ];
    for round in 0..3000 {
        let side = if round % 2 == 0 {
            Side::Server
        } else {
            Side::Client
        };
        let mut parser = Http1Parser::new(side);
        let mut out = Vec::new();
        let mut ts = 0;
        for _ in 0..rng.below(40) {
            let mut bytes: Vec<u8> = match rng.below(3) {
                0 => (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
                1 => corpus[rng.below(corpus.len() as u64) as usize].clone(),
                _ => {
                    let mut v = Vec::new();
                    for _ in 0..rng.below(12) {
                        v.extend_from_slice(tokens[rng.below(tokens.len() as u64) as usize]);
                        if rng.below(2) == 0 {
                            v.extend((0..rng.below(8)).map(|_| rng.next() as u8));
                        }
                    }
                    v
                }
            };
            if !bytes.is_empty() && rng.below(2) == 0 {
                let i = rng.below(bytes.len() as u64) as usize;
                bytes[i] = rng.next() as u8;
            }
            let dir = if rng.below(2) == 0 {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            let capture = [0, 1, 16, 64, 1024, usize::MAX][rng.below(6) as usize];
            let extra = if rng.below(4) == 0 {
                rng.below(1 << 20)
            } else {
                0
            };
            ts += 1;
            match rng.below(8) {
                0 => parser.gap(dir),
                1 => {
                    parser.close(ts, &mut out);
                }
                _ => {
                    let payload = bytes.get(..capture).unwrap_or(&bytes);
                    let _ = parser.feed(dir, ts, payload, bytes.len() as u64 + extra, &mut out);
                }
            }
            let (head, pending) = parser.buffered();
            assert!(head <= MAX_HEADER_BLOCK_BYTES, "head buffer {head}");
            assert!(pending <= MAX_PENDING_REQUESTS);
        }
        parser.close(ts + 1, &mut out);
        for x in &out {
            assert!(x.path.len() <= MAX_PATH_BYTES);
            assert!(
                x.headers
                    .iter()
                    .all(|(_, v)| v.len() <= MAX_HEADER_VALUE_BYTES)
            );
            assert!(x.start_ns <= x.end_ns, "{x:?}");
        }
    }
}

/// A parser given a payload longer than its byte count uses only `bytes` of it.
#[test]
fn payload_longer_than_bytes_is_clamped() {
    let mut parser = Http1Parser::new(Side::Server);
    let mut out = Vec::new();
    let req = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
    parser
        .feed(Direction::Ingress, 1, req, 19, &mut out)
        .unwrap();
    parser.close(2, &mut out);
    let got: Vec<String> = out.iter().map(summary).collect();
    assert_eq!(got, ["GET /a - req=0 resp=0 NoResponse 1-2"]);
    let _: Outcome = out[0].outcome;
}

#[test]
fn reasons_are_distinct_snake_case() {
    let all = [
        ParseError::BadRequestLine,
        ParseError::BadStatusLine,
        ParseError::BadHeader,
        ParseError::BadChunk,
        ParseError::TooManyPending { limit: 1 },
        ParseError::HeaderTooLarge { limit: 1 },
        ParseError::TooManyHeaders { limit: 1 },
        ParseError::ResponseWithoutRequest,
        ParseError::StartLineNotCaptured,
    ];
    let mut seen = std::collections::HashSet::new();
    for e in all {
        let r = e.reason();
        assert!(
            r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{r}"
        );
        assert!(seen.insert(r), "duplicate {r}");
        let msg = e.to_string();
        assert!(msg.starts_with(|c: char| c.is_ascii_lowercase()), "{msg}");
    }
}

#[test]
fn neutral_exchange_outcome_error_type_and_context() {
    use crate::protocol::{Outcome as Neutral, ProtocolAttributes as _, context::Found};
    let x = |status: Option<u16>, headers: Vec<(&'static str, String)>| HttpExchange {
        start_ns: 1,
        end_ns: 2,
        method: "GET".into(),
        version: Version::Http11,
        path: "/users/123".into(),
        status,
        request_body_bytes: 3,
        response_body_bytes: 4,
        headers,
        outcome: Outcome::Complete,
    };
    for (status, want) in [
        (Some(200), Neutral::Ok),
        (Some(304), Neutral::Ok),
        (Some(404), Neutral::ClientError),
        (Some(503), Neutral::ServerError),
        (None, Neutral::NoResponse),
    ] {
        assert_eq!(
            x(status, vec![]).into_exchange().outcome,
            want,
            "{status:?}"
        );
    }
    let n = x(Some(503), vec![]).into_exchange();
    assert_eq!((n.request_bytes, n.response_bytes), (3, 4));
    assert_eq!(n.error_type(), "503");
    assert_eq!(x(None, vec![]).into_exchange().error_type(), "no response");
    let crate::protocol::Attributes::Http1(a) = &n.attributes else {
        panic!("not an HTTP exchange: {n:?}");
    };
    assert_eq!(a.span_name(), "get /users/*");
    // Appended to what the buffer holds (the web page's table reuses one), that part untouched.
    let mut buf = String::from("Kept|");
    a.span_name_into(&mut buf);
    assert_eq!(buf, "Kept|get /users/*");
    let traced = x(
        Some(200),
        vec![(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        )],
    )
    .into_exchange();
    assert!(matches!(traced.context, Found::Valid(_)));
}

/// The queue of requests awaiting a response keeps their order through pipelining, and an idle
/// connection's parser holds no buffer for it afterwards.
#[test]
fn pending_requests_keep_their_order_and_no_buffer_when_idle() {
    let mut p = Http1Parser::new(Side::Server);
    let mut out = Vec::new();
    // Five pipelined requests in one syscall, then their responses one by one.
    let reqs = String::from("GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        + "GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
        + "GET /3 HTTP/1.1\r\nHost: a\r\n\r\n"
        + "GET /4 HTTP/1.1\r\nHost: a\r\n\r\n"
        + "GET /5 HTTP/1.1\r\nHost: a\r\n\r\n";
    p.feed(
        Direction::Ingress,
        1,
        reqs.as_bytes(),
        reqs.len() as u64,
        &mut out,
    )
    .unwrap();
    assert_eq!(p.pending.len(), 5);
    assert!(p.pending.rest.capacity() > 0);
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    for i in 0..5u64 {
        p.feed(Direction::Egress, 2 + i, resp, resp.len() as u64, &mut out)
            .unwrap();
    }
    let paths: Vec<&str> = out.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["/1", "/2", "/3", "/4", "/5"]);
    assert!(p.pending.is_empty());
    assert_eq!(
        p.pending.rest.capacity(),
        0,
        "pipelining's buffer given back"
    );
    // One request at a time (keep-alive without pipelining) allocates nothing for the queue.
    let req = b"GET /6 HTTP/1.1\r\nHost: a\r\n\r\n";
    p.feed(Direction::Ingress, 10, req, req.len() as u64, &mut out)
        .unwrap();
    assert_eq!(p.pending.len(), 1);
    assert_eq!(p.pending.rest.capacity(), 0);
    p.feed(Direction::Egress, 11, resp, resp.len() as u64, &mut out)
        .unwrap();
    assert_eq!(out.last().map(|e| e.path.as_str()), Some("/6"));
    assert!(p.pending.is_empty());
}

#[test]
fn a_parser_rests_between_messages_only() {
    for side in [Side::Server, Side::Client] {
        let request_dir = side.request_direction();
        let response_dir = match request_dir {
            Direction::Egress => Direction::Ingress,
            Direction::Ingress => Direction::Egress,
        };
        let mut p = Http1Parser::new(side);
        let mut out = Vec::new();
        let mut feed = |p: &mut Http1Parser, dir, ts, bytes: &[u8]| {
            p.feed(dir, ts, bytes, bytes.len() as u64, &mut out)
                .expect("valid");
        };
        assert!(
            p.rest().is_some(),
            "{side:?}: a new parser has nothing in flight"
        );
        feed(
            &mut p,
            request_dir,
            10,
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert_eq!(p.rest(), None, "{side:?}: a request awaits its response");
        feed(
            &mut p,
            response_dir,
            20,
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab",
        );
        assert_eq!(p.rest(), None, "{side:?}: half a body");
        feed(&mut p, response_dir, 21, b"cd");
        let words = p.rest().expect("between messages");
        // Made again from its words, the parser numbers the next request on.
        let mut again = Http1Parser::new(side);
        again.resume(words);
        assert_eq!(again.rest(), Some(words));
        feed(
            &mut again,
            request_dir,
            30,
            b"GET /b HTTP/1.1\r\nHost: x\r\n",
        );
        assert_eq!(again.rest(), None, "{side:?}: half a header block");
    }
}
