//! The HTTP/2 parser on frames built here byte by byte (RFC 9113 layouts, HPACK per RFC 7541),
//! observed from both sides. The real implementations (nghttp2, grpcio, grpc-js, nginx, curl)
//! are driven by the integration tests.

use super::*;
use crate::protocol::{Exchange, Outcome, Parser as _, context::Found};

const GET: u8 = 0x82;
const SCHEME_HTTP: u8 = 0x86;
const STATUS_200: u8 = 0x88;
const STATUS_404: u8 = 0x8d;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A literal field without indexing, new name.
fn lit(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0x00, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

/// A literal field with incremental indexing, new name.
fn lit_indexed(name: &str, value: &str) -> Vec<u8> {
    let mut b = lit(name, value);
    b[0] = 0x40;
    b
}

/// A literal field without indexing whose name is static index `index` (< 15).
fn lit_name(index: u8, value: &str) -> Vec<u8> {
    let mut b = vec![index, value.len() as u8];
    b.extend_from_slice(value.as_bytes());
    b
}

fn headers(stream: u32, end_stream: bool, block: &[u8]) -> Vec<u8> {
    let flags = frame::flag::END_HEADERS
        | if end_stream {
            frame::flag::END_STREAM
        } else {
            0
        };
    frame(frame::kind::HEADERS, flags, stream, block)
}

fn data(stream: u32, end_stream: bool, body: &[u8]) -> Vec<u8> {
    frame(
        frame::kind::DATA,
        if end_stream {
            frame::flag::END_STREAM
        } else {
            0
        },
        stream,
        body,
    )
}

fn request(path: &str) -> Vec<u8> {
    let mut b = vec![GET, SCHEME_HTTP];
    b.extend(lit_name(4, path));
    b.extend(lit_name(1, "h"));
    b
}

fn grpc_request(path: &str) -> Vec<u8> {
    let mut b = vec![0x83, SCHEME_HTTP];
    b.extend(lit_name(4, path));
    b.extend(lit("content-type", "application/grpc"));
    b
}

fn settings() -> Vec<u8> {
    frame(frame::kind::SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100])
}

/// Feeds (direction, time, bytes) to a parser on `side`, each chunk whole; closes at the end
/// if `close`.
fn run(
    side: Side,
    chunks: &[(Direction, u64, Vec<u8>)],
    close: bool,
) -> (Vec<Exchange>, Vec<(&'static str, u64)>) {
    let mut p = Parser::new(side);
    let mut out = Vec::new();
    for (dir, ts, bytes) in chunks {
        p.feed(*dir, *ts, bytes, bytes.len() as u64, &mut out)
            .unwrap();
    }
    if close {
        p.close(1_000, &mut out);
    }
    let mut errors = Vec::new();
    p.take_errors(&mut |r, n| errors.push((r, n)));
    (out, errors)
}

fn preface_and(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut b = PREFACE.to_vec();
    b.extend(settings());
    for f in frames {
        b.extend_from_slice(f);
    }
    b
}

fn http(ex: &Exchange) -> &http1::Attributes {
    match &ex.attributes {
        crate::protocol::Attributes::Http1(a) => a,
        other => panic!("not HTTP: {other:?}"),
    }
}

fn grpc(ex: &Exchange) -> &Attributes {
    match &ex.attributes {
        crate::protocol::Attributes::Http2(a) => a,
        other => panic!("not gRPC: {other:?}"),
    }
}

use Direction::{Egress, Ingress};

#[test]
fn detects_the_preface_where_the_role_puts_it() {
    assert_eq!(detect(Side::Server, Ingress, PREFACE, false), Verdict::Yes);
    assert_eq!(
        detect(Side::Client, Egress, &PREFACE[..5], false),
        Verdict::Prefix
    );
    assert_eq!(detect(Side::Client, Ingress, PREFACE, false), Verdict::No);
    // Frames, only on a connection found mid-stream.
    let frames = [settings(), headers(1, true, &[STATUS_200])].concat();
    assert_eq!(
        detect(Side::Client, Ingress, &frames[9 + 6..], false),
        Verdict::No
    );
    assert_eq!(
        detect(Side::Client, Ingress, &frames[9 + 6..], true),
        Verdict::Yes
    );
    // The server's SETTINGS, written before it read the client's preface.
    assert_eq!(detect(Side::Server, Egress, &frames, false), Verdict::Yes);
    assert_eq!(
        detect(Side::Server, Egress, &frames[..12], false),
        Verdict::No
    );
    assert_eq!(
        detect(Side::Client, Ingress, b"GET / HTTP/1.1\r\n\r\n", true),
        Verdict::No
    );
    assert_eq!(detect(Side::Client, Ingress, &[0; 9], true), Verdict::No);
}

#[test]
fn one_request_from_both_sides() {
    let req = preface_and(&[headers(1, true, &request("/a/1?x=y"))]);
    let resp = [
        settings(),
        headers(1, false, &[STATUS_200]),
        data(1, true, b"hello"),
    ]
    .concat();
    for side in [Side::Client, Side::Server] {
        let (rq, rs) = match side {
            Side::Client => (Egress, Ingress),
            Side::Server => (Ingress, Egress),
        };
        let (out, errors) = run(
            side,
            &[(rq, 10, req.clone()), (rs, 25, resp.clone())],
            false,
        );
        assert_eq!(errors, vec![]);
        assert_eq!(out.len(), 1, "{side:?}");
        let ex = &out[0];
        assert_eq!((ex.start_ns, ex.end_ns, ex.outcome), (10, 25, Outcome::Ok));
        assert_eq!(ex.response_bytes, 5);
        let a = http(ex);
        assert_eq!((a.method.as_ref(), a.path.as_str()), ("GET", "/a/1"));
        assert_eq!((a.status, a.version), (Some(200), http1::Version::Http2));
    }
}

#[test]
fn a_server_seen_writing_its_settings_first_knows_its_tables() {
    let resp = [settings(), headers(1, true, &[STATUS_200])].concat();
    let mut block = request("/first");
    block.extend(lit_indexed("x-k", "v"));
    let req = preface_and(&[headers(1, true, &block)]);
    let (out, errors) = run(
        Side::Server,
        &[
            (Egress, 1, settings()),
            (Ingress, 2, req),
            (Egress, 3, resp),
        ],
        false,
    );
    assert_eq!(errors, vec![]);
    assert_eq!(out.len(), 1);
}

#[test]
fn many_streams_in_flight_answered_out_of_order() {
    let req = preface_and(&[
        headers(1, true, &request("/one")),
        headers(3, true, &request("/two")),
        headers(5, true, &request("/three")),
    ]);
    let resp1 = [
        headers(5, true, &[STATUS_404]),
        headers(1, false, &[STATUS_200]),
    ]
    .concat();
    let resp2 = [data(1, true, b"x"), headers(3, true, &[0x8e])].concat();
    let (out, errors) = run(
        Side::Client,
        &[(Egress, 1, req), (Ingress, 2, resp1), (Ingress, 3, resp2)],
        false,
    );
    assert_eq!(errors, vec![]);
    let got: Vec<_> = out
        .iter()
        .map(|e| (http(e).path.as_str(), http(e).status, e.outcome, e.end_ns))
        .collect();
    assert_eq!(
        got,
        vec![
            ("/three", Some(404), Outcome::ClientError, 2),
            ("/one", Some(200), Outcome::Ok, 3),
            ("/two", Some(500), Outcome::ServerError, 3),
        ]
    );
}

#[test]
fn frames_split_byte_by_byte_give_the_same_exchanges() {
    let req = preface_and(&[headers(1, true, &request("/split"))]);
    let resp = [headers(1, false, &[STATUS_200]), data(1, true, b"body")].concat();
    let mut chunks = Vec::new();
    for (i, b) in req.iter().enumerate() {
        chunks.push((Egress, i as u64, vec![*b]));
    }
    for (i, b) in resp.iter().enumerate() {
        chunks.push((Ingress, 1000 + i as u64, vec![*b]));
    }
    let (out, errors) = run(Side::Client, &chunks, false);
    assert_eq!(errors, vec![]);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].start_ns,
        24 + 15,
        "the syscall of the HEADERS frame's first byte"
    );
    assert_eq!(out[0].end_ns, 1000 + resp.len() as u64 - 1);
    assert_eq!(http(&out[0]).path, "/split");
}

#[test]
fn a_body_beyond_the_capture_is_skipped_by_count() {
    let mut p = Parser::new(Side::Client);
    let mut out = Vec::new();
    let req = preface_and(&[headers(1, true, &request("/big"))]);
    p.feed(Egress, 1, &req, req.len() as u64, &mut out).unwrap();
    // HEADERS + a 10,000-byte DATA frame in one read, of which 100 bytes were captured, then
    // the next read ends the stream.
    let body = vec![b'z'; 10_000];
    let resp = [headers(1, false, &[STATUS_200]), data(1, false, &body)].concat();
    p.feed(Ingress, 2, &resp[..100], resp.len() as u64, &mut out)
        .unwrap();
    let end = data(1, true, b"");
    p.feed(Ingress, 3, &end, end.len() as u64, &mut out)
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].response_bytes, out[0].end_ns), (10_000, 3));
    let mut errors = Vec::new();
    p.take_errors(&mut |r, n| errors.push((r, n)));
    assert_eq!(errors, vec![]);
}

#[test]
fn a_header_block_beyond_the_capture_is_lost_and_counted_and_nothing_is_invented() {
    let mut p = Parser::new(Side::Server);
    let mut out = Vec::new();
    // Request 1 inserts a field into the table; its HEADERS frame is cut by the capture.
    let mut block = request("/one");
    block.extend(lit_indexed("x-tenant", "acme"));
    let req = preface_and(&[headers(1, true, &block)]);
    let cut = req.len() - 3;
    p.feed(Ingress, 1, &req[..cut], req.len() as u64, &mut out)
        .unwrap();
    // Request 3 refers to the inserted field (index 62): unknown, so the request is not used.
    let mut block3 = request("/three");
    block3.push(0xbe);
    let r3 = headers(3, true, &block3);
    p.feed(Ingress, 2, &r3, r3.len() as u64, &mut out).unwrap();
    // Request 5 needs no table state: decoded.
    let r5 = headers(5, true, &request("/five"));
    p.feed(Ingress, 3, &r5, r5.len() as u64, &mut out).unwrap();
    let resp = [
        headers(1, true, &[STATUS_200]),
        headers(3, true, &[STATUS_200]),
        headers(5, true, &[STATUS_200]),
    ]
    .concat();
    p.feed(Egress, 4, &resp, resp.len() as u64, &mut out)
        .unwrap();
    let paths: Vec<_> = out.iter().map(|e| http(e).path.as_str()).collect();
    assert_eq!(paths, vec!["/five"]);
    let mut errors = Vec::new();
    p.take_errors(&mut |r, n| errors.push((r, n)));
    errors.sort();
    assert_eq!(
        errors,
        vec![
            (reason::HEADER_BLOCK_LOST, 1),
            (reason::HPACK_UNKNOWN_INDEX, 1),
            (reason::STREAM_NOT_SEEN, 1),
        ]
    );
}

#[test]
fn grpc_status_from_trailers_trailers_only_and_resets() {
    let req = preface_and(&[
        headers(1, false, &grpc_request("/shop.Cart/Add")),
        data(1, true, &[0, 0, 0, 0, 2, 8, 1]),
        headers(3, true, &grpc_request("/shop.Cart/Missing")),
        {
            let mut b = grpc_request("/shop.Cart/Slow");
            b.extend(lit("grpc-timeout", "5n"));
            headers(5, true, &b)
        },
        headers(7, true, &grpc_request("/shop.Cart/Gone")),
    ]);
    let mut trailers = lit("grpc-status", "5");
    trailers.extend(lit("grpc-message", "no such item"));
    let mut trailers_only = vec![STATUS_200];
    trailers_only.extend(lit("grpc-status", "12"));
    let resp = [
        headers(1, false, &[STATUS_200]),
        data(1, false, &[0, 0, 0, 0, 0]),
        headers(1, true, &trailers),
        headers(3, true, &trailers_only),
        headers(7, true, &[STATUS_404]),
    ]
    .concat();
    let rst = frame(frame::kind::RST_STREAM, 0, 5, &[0, 0, 0, 8]);
    let (out, errors) = run(
        Side::Client,
        &[(Egress, 10, req), (Ingress, 20, resp), (Egress, 30, rst)],
        false,
    );
    assert_eq!(errors, vec![]);
    let got: Vec<_> = out
        .iter()
        .map(|e| {
            let g = grpc(e);
            (g.service.as_str(), g.method.as_str(), g.status, e.outcome)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("shop.Cart", "Add", Some(5), Outcome::ClientError),
            ("shop.Cart", "Missing", Some(12), Outcome::ServerError),
            // A 404 without grpc-status: UNIMPLEMENTED, per the gRPC HTTP mapping.
            ("shop.Cart", "Gone", Some(12), Outcome::ServerError),
            // Cancelled after its 5 ns deadline: DEADLINE_EXCEEDED.
            ("shop.Cart", "Slow", Some(4), Outcome::ServerError),
        ]
    );
    assert_eq!(out[0].request_bytes, 7);
    use crate::protocol::ProtocolAttributes as _;
    assert_eq!(grpc(&out[0]).span_name(), "shop.Cart/Add");
}

#[test]
fn close_goaway_and_a_reset_before_the_response() {
    let req = preface_and(&[
        headers(1, true, &request("/a")),
        headers(3, true, &request("/b")),
        headers(5, true, &request("/c")),
        headers(7, true, &request("/d")),
    ]);
    // The server processed up to stream 3 and resets stream 1.
    let resp = [
        frame(frame::kind::RST_STREAM, 0, 1, &[0, 0, 0, 2]),
        frame(frame::kind::GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0]),
    ]
    .concat();
    let (out, errors) = run(Side::Server, &[(Ingress, 1, req), (Egress, 2, resp)], true);
    assert_eq!(errors, vec![]);
    let got: Vec<_> = out
        .iter()
        .map(|e| (http(e).path.as_str(), e.outcome, e.end_ns))
        .collect();
    assert_eq!(
        got,
        vec![
            ("/a", Outcome::NoResponse, 2),
            // Past the GOAWAY's last stream, in either order.
            got[1],
            got[2],
            ("/b", Outcome::NoResponse, 1_000),
        ]
    );
    let mut refused: Vec<_> = got[1..3].iter().map(|g| (g.0, g.1, g.2)).collect();
    refused.sort_by_key(|r| r.0);
    assert_eq!(
        refused,
        vec![
            ("/c", Outcome::NoResponse, 2),
            ("/d", Outcome::NoResponse, 2)
        ]
    );
}

#[test]
fn continuation_padding_priority_and_trace_context() {
    let mut block = request("/ctx");
    block.extend(lit(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ));
    let (first, rest) = block.split_at(5);
    // HEADERS with PADDED and PRIORITY, then a CONTINUATION ending the block.
    let mut payload = vec![3u8];
    payload.extend_from_slice(&[0, 0, 0, 0, 16]);
    payload.extend_from_slice(first);
    payload.extend_from_slice(&[0, 0, 0]);
    let h = frame(
        frame::kind::HEADERS,
        frame::flag::END_STREAM | frame::flag::PADDED | frame::flag::PRIORITY,
        1,
        &payload,
    );
    let c = frame(frame::kind::CONTINUATION, frame::flag::END_HEADERS, 1, rest);
    let req = preface_and(&[h, c]);
    let mut padded = vec![4u8];
    padded.extend_from_slice(b"hi");
    padded.extend_from_slice(&[0; 4]);
    let resp = [
        headers(1, false, &[STATUS_200]),
        frame(
            frame::kind::DATA,
            frame::flag::END_STREAM | frame::flag::PADDED,
            1,
            &padded,
        ),
    ]
    .concat();
    let (out, errors) = run(Side::Client, &[(Egress, 1, req), (Ingress, 2, resp)], false);
    assert_eq!(errors, vec![]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].response_bytes, 2);
    let Found::Valid(ctx) = &out[0].context else {
        panic!("{:?}", out[0].context)
    };
    assert_eq!(ctx.span_id, "b7ad6b7169203331");
}

#[test]
fn midstream_connection_uses_only_what_decodes() {
    // No preface: the parser starts with unknown tables.
    let frames = [
        headers(9, true, &request("/static")),
        headers(11, true, &[GET, SCHEME_HTTP, 0xc0, 0xbe]),
    ]
    .concat();
    let resp = [
        headers(7, true, &[STATUS_200]),
        headers(9, true, &[STATUS_200]),
        headers(11, true, &[STATUS_200]),
    ]
    .concat();
    let (out, errors) = run(
        Side::Server,
        &[(Ingress, 1, frames), (Egress, 2, resp)],
        false,
    );
    let paths: Vec<_> = out.iter().map(|e| http(e).path.as_str()).collect();
    assert_eq!(paths, vec!["/static"]);
    let mut errors = errors;
    errors.sort();
    assert_eq!(
        errors,
        vec![
            (reason::HPACK_UNKNOWN_INDEX, 1),
            (reason::STREAM_NOT_SEEN, 1)
        ]
    );
}

#[test]
fn lost_events_drop_open_streams_at_close_instead_of_inventing_no_response() {
    let mut p = Parser::new(Side::Client);
    let mut out = Vec::new();
    let req = preface_and(&[headers(1, true, &request("/x"))]);
    p.feed(Egress, 1, &req, req.len() as u64, &mut out).unwrap();
    p.gap(Ingress);
    p.close(5, &mut out);
    assert!(out.is_empty());
    let mut errors = Vec::new();
    p.take_errors(&mut |r, n| errors.push((r, n)));
    assert_eq!(errors, vec![(reason::STREAM_END_LOST, 1)]);
}

#[test]
fn garbage_never_panics() {
    // Deterministic pseudo-random bytes after a preface, in random cuts, both directions.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..200 {
        let mut p = Parser::new(if round % 2 == 0 {
            Side::Client
        } else {
            Side::Server
        });
        let mut out = Vec::new();
        let first = preface_and(&[]);
        let dir = if round % 2 == 0 { Egress } else { Ingress };
        p.feed(dir, 0, &first, first.len() as u64, &mut out)
            .unwrap();
        for i in 0..50 {
            let len = (next() % 64) as usize;
            let mut chunk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 3 == 0 {
                chunk = [headers(1 + 2 * i as u32, false, &chunk), chunk].concat();
            }
            let bytes = chunk.len() as u64 + next() % 3 * 100;
            let d = if next() % 2 == 0 { Egress } else { Ingress };
            let _ = p.feed(d, i, &chunk, bytes, &mut out);
        }
        p.close(99, &mut out);
    }
}

#[test]
fn h2c_upgrade_hands_the_request_to_http2_as_stream_one() {
    use crate::{
        metrics::Registry,
        protocol::session::{Session, SessionMetrics},
    };
    for side in [Side::Client, Side::Server] {
        let (rq, rs) = match side {
            Side::Client => (Egress, Ingress),
            Side::Server => (Ingress, Egress),
        };
        let mut metrics = SessionMetrics::new(&Registry::default());
        let mut session = Session::new(side, false);
        let mut out = Vec::new();
        let mut feed = |session: &mut Session, dir, ts, bytes: &[u8], out: &mut Vec<Exchange>| {
            session.data(dir, ts, None, bytes, bytes.len() as u64, &mut metrics, out)
        };
        let upgrade = b"GET /up HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n";
        feed(&mut session, rq, 10, upgrade, &mut out);
        // The 101 and the server's SETTINGS in one write.
        let mut switch =
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                .to_vec();
        switch.extend(settings());
        feed(&mut session, rs, 20, &switch, &mut out);
        let req = preface_and(&[headers(3, true, &request("/next"))]);
        feed(&mut session, rq, 30, &req, &mut out);
        let resp = [
            headers(1, false, &[STATUS_200]),
            data(1, true, b"upgraded"),
            headers(3, true, &[STATUS_404]),
        ]
        .concat();
        feed(&mut session, rs, 40, &resp, &mut out);
        let got: Vec<_> = out
            .iter()
            .map(|e| {
                (
                    http(e).path.as_str(),
                    http(e).status,
                    http(e).version,
                    e.start_ns,
                    e.end_ns,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("/up", Some(200), http1::Version::Http2, 10, 40),
                ("/next", Some(404), http1::Version::Http2, 30, 40),
            ],
            "{side:?}"
        );
        assert!(matches!(out[0].context, Found::Valid(_)));
    }
}

#[test]
fn trailers_after_a_reset_are_not_a_missed_stream() {
    let mut b = grpc_request("/shop.Cart/Slow");
    b.extend(lit("grpc-timeout", "5n"));
    let req = preface_and(&[headers(1, true, &b)]);
    let rst = frame(frame::kind::RST_STREAM, 0, 1, &[0, 0, 0, 8]);
    let mut trailers_only = vec![STATUS_200];
    trailers_only.extend(lit("grpc-status", "4"));
    let late = headers(1, true, &trailers_only);
    let (out, errors) = run(
        Side::Client,
        &[(Egress, 1, req), (Egress, 50, rst), (Ingress, 51, late)],
        false,
    );
    assert_eq!(errors, vec![]);
    assert_eq!(out.len(), 1);
    assert_eq!(grpc(&out[0]).status, Some(4));
}

#[test]
fn server_push_is_decoded_for_the_table_and_is_no_exchange() {
    let req = preface_and(&[headers(1, true, &request("/page"))]);
    // PUSH_PROMISE on stream 1 for stream 2 (its block inserts into the table), the pushed
    // response on stream 2, then stream 1's response using the inserted entry.
    let mut promised = vec![0, 0, 0, 2];
    promised.extend(request("/style.css"));
    promised.extend(lit_indexed("x-pushed", "yes"));
    let resp = [
        frame(
            frame::kind::PUSH_PROMISE,
            frame::flag::END_HEADERS,
            1,
            &promised,
        ),
        headers(2, false, &[STATUS_200]),
        data(2, true, b"css"),
        headers(1, true, &[STATUS_200, 0xbe]),
    ]
    .concat();
    let (out, errors) = run(Side::Client, &[(Egress, 1, req), (Ingress, 2, resp)], false);
    assert_eq!(errors, vec![]);
    let paths: Vec<_> = out.iter().map(|e| http(e).path.as_str()).collect();
    assert_eq!(paths, vec!["/page"]);
}
