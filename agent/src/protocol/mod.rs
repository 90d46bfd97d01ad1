//! L7 protocol parsers: payload prefixes of a connection's read/write syscalls in, one
//! [`Exchange`] per request/response pair out.
//!
//! Input model: for each TCP connection one side is observed (the "observer", client or server
//! role). Every read/write syscall becomes a chunk with the exact byte count it moved (`bytes`)
//! and only the first `min(bytes, capture)` bytes of it (`payload`). The uncaptured tail did
//! pass on the wire, so parsers skip it by count and resynchronise when framing falls into it.
//! Events of one connection arrive in order; lost events are signalled with [`Parser::gap`].
//!
//! Every parser is fed attacker-controlled bytes: none may panic, and every buffer is bounded.

use std::borrow::Cow;

mod http1;
pub mod route;

/// Which way a chunk moved, seen from the observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The observer wrote the bytes.
    Egress,
    /// The observer read the bytes.
    Ingress,
}

/// The observer's role on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    /// The direction that carries requests: a server reads them, a client writes them.
    pub fn request_direction(self) -> Direction {
        match self {
            Side::Server => Direction::Ingress,
            Side::Client => Direction::Egress,
        }
    }
}

/// The L7 protocols with a parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.0 and HTTP/1.1 (RFC 9112).
    Http1,
}

impl Protocol {
    /// Label value of the protocol in metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Protocol::Http1 => "http",
        }
    }
}

/// How an exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A request and its final response were both seen whole.
    Complete,
    /// The connection closed (or was reset) before a response was seen.
    NoResponse,
    /// A message was not seen whole: its header block did not fit the capture, or the
    /// connection closed in the middle of its body. Status, method and path are known; body
    /// counts are best effort.
    Truncated,
}

/// A request method as a label and tag value: the methods of RFC 9110 and PATCH (RFC 5789) are
/// static strings, anything else is copied.
pub fn method_name(method: &str) -> Cow<'static, str> {
    const KNOWN: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    match KNOWN.iter().find(|k| **k == method) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(method.to_owned()),
    }
}

/// One request and its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub protocol: Protocol,
    /// Timestamp (monotonic ns) of the syscall that carried the first request byte.
    pub start_ns: u64,
    /// Timestamp of the syscall that carried the last response byte, or the close time when
    /// there was no response.
    pub end_ns: u64,
    /// The standard methods are static strings (see [`method_name`]): no allocation.
    pub method: Cow<'static, str>,
    /// Raw path, without query string or fragment; `/` when absent, the path of an
    /// absolute-form target, `*` for the asterisk form. At most [`MAX_PATH_BYTES`] bytes.
    /// Never use it as a metric label: see [`route::route`].
    pub path: String,
    /// Final status code; `None` when no response was seen.
    pub status: Option<u16>,
    /// Message body length: Content-Length, or the sum of chunk sizes (see [`Outcome`]).
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
    /// Request header fields in [`HEADER_ALLOWLIST`] (the list's lowercase names), values at
    /// most [`MAX_HEADER_VALUE_BYTES`] bytes, in the order they were sent.
    pub headers: Vec<(&'static str, String)>,
    pub outcome: Outcome,
}

/// Request header fields copied into [`Exchange::headers`]: the trace context formats the spans
/// honour (W3C Trace Context and B3). Lowercase. Every other field is skipped without a copy.
pub const HEADER_ALLOWLIST: [&str; 8] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// Longest header value kept in [`Exchange::headers`].
pub const MAX_HEADER_VALUE_BYTES: usize = 256;
/// Longest path kept in [`Exchange::path`]; longer paths are cut at a character boundary.
pub const MAX_PATH_BYTES: usize = 1024;
/// Largest header block buffered per direction.
pub const MAX_HEADER_BLOCK_BYTES: usize = 16 * 1024;
/// Most requests awaiting a response on one connection (pipelining).
pub const MAX_PENDING_REQUESTS: usize = 1024;

/// Why a parser rejected its input. Each variant has a stable [`reason`](Self::reason), the
/// label value of `meshtap_parse_errors_total{protocol,reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed request line")]
    BadRequestLine,
    #[error("malformed status line")]
    BadStatusLine,
    #[error("malformed header field or message framing")]
    BadHeader,
    #[error("malformed chunked transfer coding")]
    BadChunk,
    #[error("more than {limit} requests await a response")]
    TooManyPending { limit: usize },
    #[error("header block longer than {limit} bytes")]
    HeaderTooLarge { limit: usize },
    #[error("more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    #[error("response seen without its request")]
    ResponseWithoutRequest,
    #[error("start line not captured")]
    StartLineNotCaptured,
}

impl ParseError {
    /// Short stable label value.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::BadRequestLine => "bad_request_line",
            ParseError::BadStatusLine => "bad_status_line",
            ParseError::BadHeader => "bad_header",
            ParseError::BadChunk => "bad_chunk",
            ParseError::TooManyPending { .. } => "too_many_pending",
            ParseError::HeaderTooLarge { .. } => "header_too_large",
            ParseError::TooManyHeaders { .. } => "too_many_headers",
            ParseError::ResponseWithoutRequest => "response_without_request",
            ParseError::StartLineNotCaptured => "start_line_not_captured",
        }
    }
}

/// A per-connection, incremental protocol parser.
///
/// Time is an argument: parsers never read a clock.
pub trait Parser: Send {
    /// Feeds one syscall's chunk: `payload` is the captured prefix of the `bytes` the syscall
    /// moved. Appends the exchanges it completes to `out`. An error is returned at most once
    /// per call (the first one); the parser has then resynchronised or, if
    /// [`is_dead`](Self::is_dead), given up and ignores all further input.
    fn feed(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        payload: &[u8],
        bytes: u64,
        out: &mut Vec<Exchange>,
    ) -> Result<(), ParseError>;

    /// Events of `dir` were lost: the parser resynchronises on the next message start.
    fn gap(&mut self, dir: Direction);

    /// The connection closed at `ts_ns`: completes what the close completes (bodies delimited
    /// by the close) and turns requests still awaiting a response into
    /// [`Outcome::NoResponse`] exchanges.
    fn close(&mut self, ts_ns: u64, out: &mut Vec<Exchange>);

    /// True while [`close`](Self::close) would still produce an exchange: a request awaiting
    /// its response, or a message half read.
    fn in_flight(&self) -> bool;

    /// True once the parser will produce nothing more (it gave up, the connection was
    /// upgraded to another protocol, or it was closed): the caller may drop it.
    fn is_dead(&self) -> bool;
}

/// What the first captured bytes of a connection say about its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    Http1,
    /// Not a protocol with a parser (TLS, binary, or text of another protocol).
    Unknown,
    /// Too few bytes to tell: try again with the next chunk.
    NeedMore,
}

/// Cheap protocol detection from the first payload seen on a connection.
pub fn detect(side: Side, dir: Direction, first_payload: &[u8]) -> Detection {
    if first_payload.is_empty() {
        return Detection::NeedMore;
    }
    let is_request = dir == side.request_direction();
    match http1::plausible_start(is_request, first_payload) {
        http1::Plausible::Yes => Detection::Http1,
        http1::Plausible::Prefix => Detection::NeedMore,
        http1::Plausible::No => Detection::Unknown,
    }
}

/// A parser for `protocol`, observing the `side` role of a connection.
pub fn new_parser(protocol: Protocol, side: Side) -> Box<dyn Parser> {
    match protocol {
        Protocol::Http1 => Box::new(http1::Http1Parser::new(side)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_requests_responses_and_binary() {
        use Direction::{Egress, Ingress};
        use Side::{Client, Server};
        let cases: &[(Side, Direction, &[u8], Detection)] = &[
            (Server, Ingress, b"GET / HTTP/1.1\r\n", Detection::Http1),
            (Server, Ingress, b"GET /x", Detection::Http1),
            (Client, Egress, b"POST /api HTTP/1.1\r\n", Detection::Http1),
            (Client, Egress, b"OPTIONS * HTTP/1.1\r\n", Detection::Http1),
            (
                Client,
                Egress,
                b"CONNECT h:443 HTTP/1.1\r\n",
                Detection::Http1,
            ),
            (Server, Egress, b"HTTP/1.1 200 OK\r\n", Detection::Http1),
            (
                Client,
                Ingress,
                b"HTTP/1.0 404 Not Found\r\n",
                Detection::Http1,
            ),
            (Server, Ingress, b"GE", Detection::NeedMore),
            (Server, Ingress, b"GET ", Detection::NeedMore),
            (Client, Ingress, b"HTTP/", Detection::NeedMore),
            (Server, Ingress, b"", Detection::NeedMore),
            (Server, Ingress, b"GET  /", Detection::Unknown),
            (Server, Ingress, b"get / HTTP/1.1", Detection::Unknown),
            (Server, Ingress, b"FOO / HTTP/1.1", Detection::Unknown),
            (Client, Ingress, b"HTTP/2.0 200", Detection::Unknown),
            (
                Server,
                Ingress,
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                Detection::Unknown,
            ),
            (Server, Ingress, b"\x16\x03", Detection::Unknown),
            (
                Server,
                Ingress,
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                Detection::Unknown,
            ),
            (Server, Ingress, b"*1\r\n$4\r\nPING\r\n", Detection::Unknown),
            (
                Server,
                Ingress,
                b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
                Detection::Unknown,
            ),
            // Wrong direction for the role: a server does not read responses.
            (Server, Ingress, b"HTTP/1.1 200 OK\r\n", Detection::Unknown),
            (Client, Ingress, b"GET / HTTP/1.1\r\n", Detection::Unknown),
        ];
        for (side, dir, bytes, want) in cases {
            assert_eq!(
                detect(*side, *dir, bytes),
                *want,
                "{side:?} {dir:?} {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
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
    fn protocol_names() {
        assert_eq!(Protocol::Http1.name(), "http");
    }
}
