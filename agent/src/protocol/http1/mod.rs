//! HTTP/1.0 and HTTP/1.1 (RFC 9112), incremental and per direction.
//!
//! Each direction is a [`Stream`]: a small state machine that buffers only the header block
//! (at most [`MAX_HEADER_BLOCK_BYTES`], parsed with `httparse`) and skips bodies by count.
//! Requests are queued in a bounded FIFO when their header block is parsed; each final
//! response pairs with the oldest queued request (RFC 9112 §9.3.2: responses to pipelined
//! requests come in request order).
//!
//! Uncaptured bytes (`bytes - payload.len()` of a syscall) passed on the wire unseen:
//! - in a Content-Length body they are counted exactly;
//! - in a chunked body, chunk data is counted exactly while the framing stays within captured
//!   bytes; once a chunk-size line or CRLF falls into uncaptured bytes the framing is *lost*:
//!   every later byte counts as body (framing included, "bytes observed on the wire") until
//!   either the captured bytes show the last chunk `\r\n0\r\n\r\n` ending the syscall (or
//!   followed by a plausible next message), or a later syscall starts with a plausible
//!   message start, or the connection closes;
//! - in a header block they make the message *truncated*: if the start line was captured the
//!   message is still used (method, path, status, the complete allowlisted header lines) and
//!   assumed to end with that syscall; later syscalls are skipped until one starts like a
//!   message;
//! - at a message boundary they hide a whole message start: a placeholder keeps request and
//!   response pairing aligned, and the stream skips to the next syscall that starts like a
//!   message.
//!
//! After a framing error the stream discards the rest of the syscall and resynchronises at
//! the first later syscall that starts with a known method (or `HTTP/1.`): writers start
//! messages at syscall boundaries in practice.

use std::{borrow::Cow, collections::VecDeque, mem::MaybeUninit};

pub mod red;
pub mod route;

use super::{Direction, Side, Verdict};

pub use red::Red;

/// Label value of the protocol in metrics.
pub const NAME: &str = "http";

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

/// The HTTP version of an exchange, as `network.protocol.version` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    Http10,
    Http11,
    Http2,
    /// The request line was cut before its version.
    Unknown,
}

impl Version {
    /// The label and tag value: `1.0`, `1.1`, `2`, or empty when unknown.
    pub fn label(self) -> &'static str {
        match self {
            Version::Http10 => "1.0",
            Version::Http11 => "1.1",
            Version::Http2 => "2",
            Version::Unknown => "",
        }
    }
}

/// How an HTTP exchange was seen.
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

/// One HTTP request and its response, as the parser sees them (turned into the neutral
/// [`super::Exchange`] by [`Parser`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpExchange {
    /// Timestamp (monotonic ns) of the syscall that carried the first request byte.
    pub start_ns: u64,
    /// Timestamp of the syscall that carried the last response byte, or the close time when
    /// there was no response.
    pub end_ns: u64,
    /// The standard methods are static strings (see [`method_name`]): no allocation.
    pub method: Cow<'static, str>,
    pub version: Version,
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

/// Request header fields copied into [`HttpExchange::headers`]: the trace context formats the
/// spans honour (W3C Trace Context and B3). Lowercase. Every other field is skipped without a
/// copy.
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

/// Longest header value kept in [`HttpExchange::headers`].
pub const MAX_HEADER_VALUE_BYTES: usize = 256;
/// Longest path kept in [`HttpExchange::path`]; longer paths are cut at a character boundary.
pub const MAX_PATH_BYTES: usize = 1024;
/// Largest header block buffered per direction.
pub const MAX_HEADER_BLOCK_BYTES: usize = 16 * 1024;
/// Most requests awaiting a response on one connection (pipelining).
pub const MAX_PENDING_REQUESTS: usize = 1024;

/// Why the parser rejected its input. Each variant has a stable [`reason`](Self::reason), the
/// label value of `meshtap_parse_errors_total{protocol="http",reason}`.
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

impl From<ParseError> for super::ParseError {
    fn from(e: ParseError) -> Self {
        super::ParseError { reason: e.reason() }
    }
}

/// What an HTTP exchange adds to the neutral fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub method: Cow<'static, str>,
    pub version: Version,
    /// Raw path (see [`HttpExchange::path`]); metrics and span names use its route.
    pub path: String,
    pub status: Option<u16>,
}

impl super::ProtocolAttributes for Attributes {
    fn span_name_into(&self, out: &mut String) {
        let start = out.len();
        out.push_str(&self.method);
        out.push(' ');
        route::route_append(&self.path, out);
        match out.get_mut(start..) {
            Some(name) if name.is_ascii() => name.make_ascii_lowercase(),
            _ => {
                let name = out.get(start..).unwrap_or_default().to_lowercase();
                out.truncate(start);
                out.push_str(&name);
            }
        }
    }

    fn span_attributes(
        &self,
        _options: &super::SpanOptions,
        out: &mut Vec<crate::semconv::Attribute>,
    ) {
        use crate::semconv::{Value, key};
        out.push((key::HTTP_REQUEST_METHOD, Value::Str(self.method.clone())));
        out.push((
            key::HTTP_ROUTE,
            Value::Str(Cow::Owned(route::route(&self.path))),
        ));
        out.push((key::URL_PATH, Value::Str(Cow::Owned(self.path.clone()))));
        if self.version != Version::Unknown {
            out.push((
                key::NETWORK_PROTOCOL_VERSION,
                Value::Str(Cow::Borrowed(self.version.label())),
            ));
        }
        if let Some(status) = self.status {
            out.push((
                key::HTTP_RESPONSE_STATUS_CODE,
                Value::Int(i64::from(status)),
            ));
        }
    }

    fn error_type(&self) -> Cow<'static, str> {
        match self.status {
            Some(status) => Cow::Owned(status.to_string()),
            None => Cow::Borrowed("no response"),
        }
    }
}

impl HttpExchange {
    /// The neutral exchange: the outcome from the status class, the trace context from the
    /// kept headers.
    pub fn into_exchange(self) -> super::Exchange {
        let outcome = match self.status {
            None => super::Outcome::NoResponse,
            Some(s) if s >= 500 => super::Outcome::ServerError,
            Some(s) if s >= 400 => super::Outcome::ClientError,
            Some(_) => super::Outcome::Ok,
        };
        let context = if self.headers.is_empty() {
            super::context::Found::None
        } else {
            super::context::extract(&self.headers)
        };
        super::Exchange {
            start_ns: self.start_ns,
            end_ns: self.end_ns,
            outcome,
            truncated: self.outcome == Outcome::Truncated,
            request_bytes: self.request_body_bytes,
            response_bytes: self.response_body_bytes,
            context,
            attributes: super::Attributes::Http1(Attributes {
                method: self.method,
                version: self.version,
                path: self.path,
                status: self.status,
            }),
        }
    }
}

/// Detection: does the chunk start like a request (read by a server, written by a client) or a
/// response (the other way)?
pub fn detect(side: Side, dir: Direction, first_payload: &[u8], _midstream: bool) -> Verdict {
    let is_request = dir == side.request_direction();
    match plausible_start(is_request, first_payload) {
        Plausible::Yes => Verdict::Yes,
        Plausible::Prefix => Verdict::Prefix,
        Plausible::No => Verdict::No,
    }
}

/// The registry's parser: [`Http1Parser`] with its exchanges made neutral.
pub struct Parser {
    http: Http1Parser,
}

std::thread_local! {
    /// The exchanges of one call, before conversion: one buffer per thread, reused (one per
    /// connection would keep its capacity on every idle connection).
    static SCRATCH: std::cell::Cell<Vec<HttpExchange>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` with the thread's scratch buffer, then moves what it produced to `out`.
fn with_scratch<R>(
    out: &mut Vec<super::Exchange>,
    f: impl FnOnce(&mut Vec<HttpExchange>) -> R,
) -> R {
    let mut scratch = SCRATCH.take();
    let result = f(&mut scratch);
    out.extend(scratch.drain(..).map(HttpExchange::into_exchange));
    SCRATCH.set(scratch);
    result
}

impl Parser {
    pub fn new(side: Side) -> Self {
        Parser {
            http: Http1Parser::new(side),
        }
    }
}

impl super::Parser for Parser {
    fn feed(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        payload: &[u8],
        bytes: u64,
        out: &mut Vec<super::Exchange>,
    ) -> Result<(), super::ParseError> {
        let http = &mut self.http;
        with_scratch(out, |scratch| {
            http.feed(dir, ts_ns, payload, bytes, scratch)
        })
        .map_err(Into::into)
    }

    fn gap(&mut self, dir: Direction) {
        self.http.gap(dir);
    }

    fn close(&mut self, ts_ns: u64, out: &mut Vec<super::Exchange>) {
        let http = &mut self.http;
        with_scratch(out, |scratch| http.close(ts_ns, scratch));
    }

    fn in_flight(&self) -> bool {
        self.http.in_flight()
    }

    fn is_dead(&self) -> bool {
        self.http.is_dead()
    }

    fn rest(&self) -> Option<super::Rest> {
        self.http.rest()
    }

    fn resume(&mut self, rest: super::Rest) {
        self.http.resume(rest);
    }

    fn take_upgrade(&mut self) -> Option<super::Upgrade> {
        let up = self.http.upgrade.take()?;
        let side = self.http.side;
        Some(super::Upgrade {
            protocol: super::Protocol::Http2,
            rest: up.rest.clone(),
            rest_uncaptured: up.rest_uncaptured,
            parser: Box::new(super::http2::Parser::upgraded(side, *up)),
        })
    }
}

/// Methods that mark a plausible request start for detection and resynchronisation (RFC 9110
/// §9.1 plus PATCH, RFC 5789). Within a stream already known to be HTTP any token is accepted.
const KNOWN_METHODS: [&[u8]; 9] = [
    b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE",
];
/// Header fields parsed per message; more is an error.
const MAX_HEADERS: usize = 128;
/// Allowlisted header fields kept per request (duplicates included).
const MAX_KEPT_HEADERS: usize = 16;
/// Longest method token accepted in a stream.
const MAX_METHOD_BYTES: usize = 32;
/// Longest chunk extension (RFC 9112 §7.1.1) skipped before the framing is called bad.
const MAX_CHUNK_EXT_BYTES: u64 = 4096;
/// Longest trailer section (RFC 9112 §7.1.2).
const MAX_TRAILER_BYTES: u64 = MAX_HEADER_BLOCK_BYTES as u64;
/// Framing errors in a row, without a good header block between them, before giving up.
const MAX_CONSECUTIVE_ERRORS: u32 = 8;
/// The end of a chunked body without trailers: the CRLF ending the last data chunk, then the
/// last-chunk and the empty trailer section (RFC 9112 §7.1).
const LAST_CHUNK: &[u8] = b"\r\n0\r\n\r\n";
/// Bytes of the start-line prefix checked as they arrive, to reject garbage early instead of
/// buffering a whole header block of it.
const EARLY_CHECK_BYTES: usize = MAX_METHOD_BYTES + 2;

/// Whether bytes look like the start of an HTTP/1 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plausible {
    Yes,
    /// A strict prefix of a plausible start: more bytes are needed to tell.
    Prefix,
    No,
}

/// Does `bytes` start like a request (a known method, a space, a request-target and, when
/// those bytes are there, ` HTTP/1.`) or a response (`HTTP/1.` and a digit)?
fn plausible_start(is_request: bool, bytes: &[u8]) -> Plausible {
    if is_request {
        let mut prefix = false;
        for method in KNOWN_METHODS {
            let n = method.len();
            match bytes.get(..n) {
                Some(head) if head == method => match bytes.get(n) {
                    Some(b' ') => match plausible_target(method, bytes.get(n + 1..).unwrap_or(&[]))
                    {
                        Plausible::Yes => return Plausible::Yes,
                        Plausible::Prefix => prefix = true,
                        Plausible::No => {}
                    },
                    None => prefix = true,
                    _ => {}
                },
                Some(_) => {}
                None => prefix |= method.starts_with(bytes),
            }
        }
        if prefix {
            Plausible::Prefix
        } else {
            Plausible::No
        }
    } else {
        const VERSION: &[u8] = b"HTTP/1.";
        match bytes.get(..VERSION.len()) {
            Some(head) if head == VERSION => match bytes.get(VERSION.len()) {
                Some(d) if d.is_ascii_digit() => Plausible::Yes,
                Some(_) => Plausible::No,
                None => Plausible::Prefix,
            },
            Some(_) => Plausible::No,
            None if VERSION.starts_with(bytes) => Plausible::Prefix,
            None => Plausible::No,
        }
    }
}

/// Does `bytes` start like a request-target (RFC 9112 §3.2: origin form `/...`, asterisk form
/// `*`, absolute form `scheme://...`, authority form `host:port` for CONNECT) followed by
/// ` HTTP/1.`, as far as the bytes go? Not a Redis inline `GET key`, nor a `get key` of
/// Memcached's text protocol.
fn plausible_target(method: &[u8], bytes: &[u8]) -> Plausible {
    let Some(&first) = bytes.first() else {
        return Plausible::Prefix;
    };
    let target = bytes.iter().take_while(|b| b.is_ascii_graphic()).count();
    let form_ok = match first {
        b'/' | b'*' => true,
        _ if method == b"CONNECT" => true,
        b if b.is_ascii_alphabetic() => {
            // A scheme (RFC 3986 §3.1), then `://`.
            let scheme = bytes
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
                .count();
            let sep = bytes.get(scheme..).unwrap_or(&[]);
            let want: &[u8] = b"://";
            match sep.get(..want.len()) {
                Some(s) => s == want,
                None if want.starts_with(sep) => return Plausible::Prefix,
                None => false,
            }
        }
        _ => false,
    };
    if !form_ok {
        return Plausible::No;
    }
    let after = bytes.get(target..).unwrap_or(&[]);
    let Some((&sep, version)) = after.split_first() else {
        return Plausible::Yes;
    };
    const VERSION: &[u8] = b"HTTP/1.";
    let n = version.len().min(VERSION.len());
    if sep == b' ' && version.get(..n) == VERSION.get(..n) {
        Plausible::Yes
    } else {
        Plausible::No
    }
}

/// `token` characters (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks the first bytes of a header block as they arrive: a request starts with a method
/// token and a space, a response with `HTTP/1.` and a digit (RFC 9112 §3, §4).
fn early_check(role: Role, head: &[u8]) -> Result<(), ParseError> {
    let prefix = head.get(..EARLY_CHECK_BYTES).unwrap_or(head);
    match role {
        Role::Request => {
            let token = prefix.iter().take_while(|&&b| is_tchar(b)).count();
            match prefix.get(token) {
                None if token <= MAX_METHOD_BYTES => Ok(()),
                Some(b' ') if (1..=MAX_METHOD_BYTES).contains(&token) => {
                    match prefix.get(token + 1) {
                        Some(t) if !t.is_ascii_graphic() => Err(ParseError::BadRequestLine),
                        _ => Ok(()),
                    }
                }
                _ => Err(ParseError::BadRequestLine),
            }
        }
        Role::Response => match plausible_start(false, prefix) {
            Plausible::No => Err(ParseError::BadStatusLine),
            Plausible::Yes | Plausible::Prefix => Ok(()),
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Request,
    Response,
}

/// A request awaiting its response.
#[derive(Debug)]
struct Pending {
    seq: u64,
    start_ns: u64,
    /// `None` for a placeholder: a request whose start line was not captured. Its response
    /// is consumed without producing an exchange, which keeps the pairing aligned.
    line: Option<RequestLine>,
    headers: Vec<(&'static str, String)>,
    body_bytes: u64,
    truncated: bool,
    /// The request asked to upgrade to HTTP/2 (`Upgrade: h2c`, RFC 7540 §3.2).
    h2c: bool,
}

/// Requests awaiting their response, oldest first. The first is held inline: a keep-alive
/// connection has one request at a time, so only pipelining allocates, and a connection with
/// nothing awaiting a response holds no buffer (a `VecDeque` keeps the capacity of 4 it took
/// for its first request, 448 bytes per connection).
#[derive(Debug, Default)]
struct PendingQueue {
    first: Option<Pending>,
    /// The requests after `first`; empty whenever `first` is `None`.
    rest: VecDeque<Pending>,
}

impl PendingQueue {
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn push_back(&mut self, pending: Pending) {
        if self.first.is_none() {
            self.first = Some(pending);
        } else {
            self.rest.push_back(pending);
        }
    }

    fn pop_front(&mut self) -> Option<Pending> {
        let front = self.first.take();
        self.first = self.rest.pop_front();
        if self.first.is_none() && self.rest.capacity() > 0 {
            // Nothing awaits a response any more: give pipelining's buffer back. (Not when
            // only `rest` empties: a steady pipeline of two would allocate per request.)
            self.rest = VecDeque::new();
        }
        front
    }

    fn back(&self) -> Option<&Pending> {
        self.rest.back().or(self.first.as_ref())
    }

    fn back_mut(&mut self) -> Option<&mut Pending> {
        match self.rest.back_mut() {
            Some(p) => Some(p),
            None => self.first.as_mut(),
        }
    }

    fn clear(&mut self) {
        self.first = None;
        self.rest = VecDeque::new();
    }

    fn drain(&mut self) -> impl Iterator<Item = Pending> {
        let rest = std::mem::take(&mut self.rest);
        self.first.take().into_iter().chain(rest)
    }
}

#[derive(Debug)]
struct RequestLine {
    method: Cow<'static, str>,
    version: Version,
    path: String,
}

impl RequestLine {
    fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    fn is_connect(&self) -> bool {
        self.method == "CONNECT"
    }
}

/// The response whose body is being read.
#[derive(Debug)]
struct Response {
    /// `None` when the response had no request to pair with.
    request: Option<Pending>,
    status: u16,
    body_bytes: u64,
    truncated: bool,
}

/// How the current message body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Length {
        remaining: u64,
    },
    Chunked(Chunk),
    /// Chunked framing fell into uncaptured bytes; `matched` bytes of [`LAST_CHUNK`] seen.
    Lost {
        matched: usize,
    },
    UntilClose,
}

/// Position inside a chunked body (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size {
        value: u64,
        digits: u8,
    },
    Ext {
        value: u64,
        len: u64,
    },
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// In the trailer section: `line` bytes of the current field line, `total` of all.
    Trailer {
        line: u64,
        total: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between messages.
    Idle,
    /// Buffering a header block.
    Head,
    Body(Body),
    /// Discarding syscalls until one starts like a message.
    Skip,
}

/// One direction of the connection.
#[derive(Debug)]
struct Stream {
    state: State,
    head: Vec<u8>,
    head_start_ns: u64,
    /// Where to resume looking for the end of the header block.
    scan_from: usize,
    /// Timestamp of the last syscall seen in this direction.
    last_ts: u64,
    /// Whether the last syscall ended with uncaptured bytes.
    prev_tail_unknown: bool,
    /// Sequence number of the request whose body is being read (request stream only).
    msg_seq: u64,
    /// The request being read sent `Expect: 100-continue` (RFC 9110 §10.1.1).
    expect_continue: bool,
}

impl Stream {
    fn new() -> Self {
        Stream {
            state: State::Idle,
            head: Vec::new(),
            head_start_ns: 0,
            scan_from: 0,
            last_ts: 0,
            prev_tail_unknown: false,
            msg_seq: 0,
            expect_continue: false,
        }
    }

    fn clear_head(&mut self) {
        self.head.clear();
        self.scan_from = 0;
        if self.head.capacity() > 4096 {
            self.head.shrink_to(1024);
        }
    }

    /// Appends captured header bytes, growing the buffer to at most the limit.
    fn push_head(&mut self, bytes: &[u8]) {
        let needed = self.head.len().saturating_add(bytes.len());
        if needed > self.head.capacity() {
            let want = needed
                .max(self.head.capacity().saturating_mul(2))
                .clamp(256, MAX_HEADER_BLOCK_BYTES);
            self.head
                .reserve_exact(want.saturating_sub(self.head.len()));
        }
        self.head.extend_from_slice(bytes);
    }

    /// Finds the end of the header block (the empty line, RFC 9112 §2.1; a bare LF is
    /// accepted as a line terminator, §2.2) in bytes not scanned yet.
    fn find_head_end(&mut self) -> bool {
        // A terminator may straddle the bytes scanned before: start two bytes back.
        let found = head_ends(&self.head, self.scan_from.saturating_sub(2));
        self.scan_from = self.head.len();
        found
    }
}

/// Whether `head` holds the end of a header block (an empty line) at or after `from`.
fn head_ends(head: &[u8], from: usize) -> bool {
    memchr::memchr_iter(b'\n', head.get(from..).unwrap_or(&[])).any(|i| {
        let next = head.get(from + i + 1..).unwrap_or(&[]);
        next.starts_with(b"\n") || next.starts_with(b"\r\n")
    })
}

/// A parsed head, request or response, and its length.
type ParsedHead = (Result<RequestHead, ResponseHead>, usize);

/// Parses a complete header block of `role`; `None` if httparse wants more bytes.
fn parse_head(role: Role, head: &[u8]) -> Result<Option<ParsedHead>, ParseError> {
    match role {
        Role::Request => parse_request_head(head).map(|p| match p {
            Parsed::Complete { head, len } => Some((Ok(head), len)),
            Parsed::Partial => None,
        }),
        Role::Response => parse_response_head(head).map(|p| match p {
            Parsed::Complete { head, len } => Some((Err(head), len)),
            Parsed::Partial => None,
        }),
    }
}

/// What a parsed header block says about framing.
#[derive(Debug, Default)]
struct Framing {
    content_length: Option<u64>,
    /// The last transfer coding listed, lowercased, when Transfer-Encoding is present.
    transfer_coding: Option<String>,
    expect_continue: bool,
}

impl Framing {
    fn from_headers(headers: &[httparse::Header<'_>]) -> Result<Self, ParseError> {
        let mut framing = Framing::default();
        for h in headers {
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = parse_content_length(h.value)?;
                // RFC 9112 §6.3 item 5: differing lengths are an unrecoverable error.
                if framing.content_length.is_some_and(|m| m != n) {
                    return Err(ParseError::BadHeader);
                }
                framing.content_length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = h
                    .value
                    .split(|&b| b == b',')
                    .map(trim_ows)
                    .rfind(|c| !c.is_empty());
                if let Some(coding) = last {
                    framing.transfer_coding = Some(String::from_utf8_lossy(coding).to_lowercase());
                }
            } else if h.name.eq_ignore_ascii_case("expect") {
                framing.expect_continue = trim_ows(h.value).eq_ignore_ascii_case(b"100-continue");
            }
        }
        Ok(framing)
    }

    fn is_chunked(&self) -> Option<bool> {
        self.transfer_coding.as_deref().map(|c| c == "chunked")
    }
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    let rest = bytes.get(start..).unwrap_or(&[]);
    let end = rest.len()
        - rest
            .iter()
            .rev()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
    rest.get(..end).unwrap_or(&[])
}

/// Content-Length is `1*DIGIT`; a list of identical values is accepted (RFC 9112 §6.3 item 5,
/// RFC 9110 §8.6).
fn parse_content_length(value: &[u8]) -> Result<u64, ParseError> {
    let mut length = None;
    for part in value.split(|&b| b == b',').map(trim_ows) {
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return Err(ParseError::BadHeader);
        }
        let n = std::str::from_utf8(part)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(ParseError::BadHeader)?;
        if length.is_some_and(|m| m != n) {
            return Err(ParseError::BadHeader);
        }
        length = Some(n);
    }
    length.ok_or(ParseError::BadHeader)
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn truncate_str(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The path of a request target (RFC 9112 §3.2): origin-form without query and fragment, the
/// path of an absolute-form target, `*` for the asterisk form, `/` for the authority form
/// and an empty path.
fn request_path(target: &str) -> String {
    let rest = match target.find("://") {
        Some(i)
            if !target.starts_with('/')
                && target.get(..i).is_some_and(|s| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                }) =>
        {
            let after = target.get(i + 3..).unwrap_or("");
            match after.find(['/', '?', '#']) {
                Some(j) if after.get(j..j + 1) == Some("/") => after.get(j..).unwrap_or("/"),
                _ => "/",
            }
        }
        _ => target,
    };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let path = rest.get(..end).unwrap_or("");
    let path = if path.starts_with('/') || path == "*" {
        path
    } else {
        "/"
    };
    truncate_str(path.to_owned(), MAX_PATH_BYTES)
}

/// Whether a field name starting with `first` can be in [`HEADER_ALLOWLIST`].
const fn may_be_allowlisted(first: u8) -> bool {
    matches!(first.to_ascii_lowercase(), b't' | b'b' | b'x')
}

// A name added to the allowlist with another first letter must be added above too.
const _: () = {
    let mut i = 0;
    while i < HEADER_ALLOWLIST.len() {
        assert!(may_be_allowlisted(HEADER_ALLOWLIST[i].as_bytes()[0]));
        i += 1;
    }
};

fn allowlisted(name: &str, value: &[u8], kept: &mut Vec<(&'static str, String)>) {
    // Most fields are turned away on their first byte.
    if !name
        .as_bytes()
        .first()
        .is_some_and(|&b| may_be_allowlisted(b))
    {
        return;
    }
    if kept.len() < MAX_KEPT_HEADERS
        && let Some(known) = HEADER_ALLOWLIST
            .iter()
            .find(|k| k.eq_ignore_ascii_case(name))
    {
        let cut = value.get(..MAX_HEADER_VALUE_BYTES).unwrap_or(value);
        let value = truncate_str(
            String::from_utf8_lossy(cut).into_owned(),
            MAX_HEADER_VALUE_BYTES,
        );
        kept.push((known, value));
    }
}

/// Lenient header-block parsing: an observer should count what the peers accepted.
fn httparse_config() -> httparse::ParserConfig {
    let mut config = httparse::ParserConfig::default();
    config
        .allow_obsolete_multiline_headers_in_responses(true)
        .allow_spaces_after_header_name_in_responses(true)
        .ignore_invalid_headers_in_responses(true)
        .ignore_invalid_headers_in_requests(true);
    config
}

fn map_httparse(role: Role, err: httparse::Error) -> ParseError {
    match err {
        httparse::Error::TooManyHeaders => ParseError::TooManyHeaders { limit: MAX_HEADERS },
        httparse::Error::HeaderName | httparse::Error::HeaderValue => ParseError::BadHeader,
        httparse::Error::Status => ParseError::BadStatusLine,
        httparse::Error::NewLine | httparse::Error::Token | httparse::Error::Version => {
            match role {
                Role::Request => ParseError::BadRequestLine,
                Role::Response => ParseError::BadStatusLine,
            }
        }
    }
}

/// A parsed request header block.
struct RequestHead {
    line: RequestLine,
    headers: Vec<(&'static str, String)>,
    h2c: bool,
    framing: Result<Framing, ParseError>,
}

/// A parsed response header block.
struct ResponseHead {
    status: u16,
    framing: Result<Framing, ParseError>,
}

enum Parsed<T> {
    Complete { head: T, len: usize },
    Partial,
}

fn parse_request_head(buf: &[u8]) -> Result<Parsed<RequestHead>, ParseError> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match httparse_config().parse_request_with_uninit_headers(&mut req, buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => {
            let (Some(method), Some(target)) = (req.method, req.path) else {
                return Err(ParseError::BadRequestLine);
            };
            let mut kept = Vec::new();
            let mut h2c = false;
            for h in req.headers.iter() {
                allowlisted(h.name, h.value, &mut kept);
                h2c |= h.name.eq_ignore_ascii_case("upgrade")
                    && h.value
                        .split(|&b| b == b',')
                        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c"));
            }
            Ok(Parsed::Complete {
                head: RequestHead {
                    line: RequestLine {
                        method: method_name(method),
                        version: match req.version {
                            Some(0) => Version::Http10,
                            Some(1) => Version::Http11,
                            _ => Version::Unknown,
                        },
                        path: request_path(target),
                    },
                    headers: kept,
                    h2c,
                    framing: Framing::from_headers(req.headers),
                },
                len,
            })
        }
        Ok(httparse::Status::Partial) => Ok(Parsed::Partial),
        Err(e) => Err(map_httparse(Role::Request, e)),
    }
}

fn parse_response_head(buf: &[u8]) -> Result<Parsed<ResponseHead>, ParseError> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    match httparse_config().parse_response_with_uninit_headers(&mut resp, buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => {
            let Some(status) = resp.code else {
                return Err(ParseError::BadStatusLine);
            };
            Ok(Parsed::Complete {
                head: ResponseHead {
                    status,
                    framing: Framing::from_headers(resp.headers),
                },
                len,
            })
        }
        Ok(httparse::Status::Partial) => Ok(Parsed::Partial),
        Err(e) => Err(map_httparse(Role::Response, e)),
    }
}

/// Method and target of a request line cut short by the capture: both must be complete.
fn partial_request_line(head: &[u8]) -> Option<RequestLine> {
    let sp = head.iter().position(|&b| b == b' ')?;
    let method = head.get(..sp)?;
    if method.is_empty() || method.len() > MAX_METHOD_BYTES || !method.iter().all(|&b| is_tchar(b))
    {
        return None;
    }
    let rest = head.get(sp + 1..)?;
    // The path is complete once a delimiter or the start of the query is captured.
    let end = rest
        .iter()
        .position(|&b| matches!(b, b' ' | b'\r' | b'\n' | b'?' | b'#'))?;
    let target = rest.get(..end)?;
    if target.is_empty() || !target.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    let after = rest.get(end..).unwrap_or_default();
    let version = if after.starts_with(b" HTTP/1.1") {
        Version::Http11
    } else if after.starts_with(b" HTTP/1.0") {
        Version::Http10
    } else {
        Version::Unknown
    };
    Some(RequestLine {
        method: method_name(&String::from_utf8_lossy(method)),
        version,
        path: request_path(&String::from_utf8_lossy(target)),
    })
}

/// Allowlisted fields among the complete field lines of a cut header block.
fn partial_headers(head: &[u8]) -> Vec<(&'static str, String)> {
    let mut kept = Vec::new();
    let mut lines = head.split(|&b| b == b'\n');
    lines.next(); // the start line
    let complete = head.iter().filter(|&&b| b == b'\n').count();
    for line in lines.take(complete.saturating_sub(1)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(colon) = line.iter().position(|&b| b == b':')
            && let (Some(name), Some(value)) = (line.get(..colon), line.get(colon + 1..))
            && let Ok(name) = std::str::from_utf8(name)
        {
            allowlisted(name, trim_ows(value), &mut kept);
        }
    }
    kept
}

/// Status code of a status line cut short by the capture: `HTTP/1.x NNN` (RFC 9112 §4).
fn partial_status(head: &[u8]) -> Option<u16> {
    if plausible_start(false, head) != Plausible::Yes || head.get(8) != Some(&b' ') {
        return None;
    }
    let digits = head.get(9..12)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    match head.get(12) {
        None | Some(b' ' | b'\r' | b'\n') => {}
        Some(_) => return None,
    }
    digits.iter().try_fold(0u16, |acc, d| {
        acc.checked_mul(10)?.checked_add(u16::from(d - b'0'))
    })
}

/// Next number of matched bytes of [`LAST_CHUNK`] after `matched` bytes and then `b`.
fn advance_last_chunk(matched: usize, b: u8) -> usize {
    let mut k = (matched + 1).min(LAST_CHUNK.len());
    while k > 0 {
        // Longest prefix of LAST_CHUNK that is a suffix of LAST_CHUNK[..matched] + b.
        let start = matched + 1 - k;
        if LAST_CHUNK.get(k - 1) == Some(&b)
            && LAST_CHUNK.get(start..matched) == LAST_CHUNK.get(..k - 1)
        {
            return k;
        }
        k -= 1;
    }
    0
}

fn hex_digit(b: u8) -> Option<u64> {
    char::from(b).to_digit(16).map(u64::from)
}

/// Feeds captured bytes through the chunked framing. Returns the bytes consumed, the chunk
/// data among them (also when the framing then broke), and whether the body (trailer
/// section included) ended.
fn consume_chunked(chunk: &mut Chunk, bytes: &[u8]) -> (usize, u64, Result<bool, ParseError>) {
    let mut data = 0u64;
    let mut i = 0;
    let result = chunked_steps(chunk, bytes, &mut i, &mut data);
    (i, data, result)
}

fn chunked_steps(
    chunk: &mut Chunk,
    bytes: &[u8],
    pos: &mut usize,
    data: &mut u64,
) -> Result<bool, ParseError> {
    let after_size = |value: u64| {
        if value == 0 {
            Chunk::Trailer { line: 0, total: 0 }
        } else {
            Chunk::Data { remaining: value }
        }
    };
    let i = pos;
    while *i < bytes.len() {
        if let Chunk::Data { remaining } = chunk {
            let left = (bytes.len() - *i) as u64;
            let n = (*remaining).min(left);
            *remaining -= n;
            *data += n;
            // n <= bytes.len() - i, so the sum stays within bytes.len().
            *i += usize::try_from(n)
                .unwrap_or(usize::MAX)
                .min(bytes.len() - *i);
            if *remaining == 0 {
                *chunk = Chunk::DataCr;
            }
            continue;
        }
        let Some(&b) = bytes.get(*i) else { break };
        *i += 1;
        *chunk = match *chunk {
            Chunk::Size { value, digits } => match (hex_digit(b), b) {
                (Some(d), _) if digits < 16 => Chunk::Size {
                    value: (value << 4) | d,
                    digits: digits + 1,
                },
                (Some(_), _) => return Err(ParseError::BadChunk),
                (None, _) if digits == 0 => return Err(ParseError::BadChunk),
                (None, b';' | b' ' | b'\t') => Chunk::Ext { value, len: 0 },
                (None, b'\r') => Chunk::SizeLf { value },
                (None, b'\n') => after_size(value),
                (None, _) => return Err(ParseError::BadChunk),
            },
            Chunk::Ext { value, len } => match b {
                b'\n' => after_size(value),
                _ if len >= MAX_CHUNK_EXT_BYTES => return Err(ParseError::BadChunk),
                _ => Chunk::Ext {
                    value,
                    len: len + 1,
                },
            },
            Chunk::SizeLf { value } => match b {
                b'\n' => after_size(value),
                _ => return Err(ParseError::BadChunk),
            },
            Chunk::DataCr => match b {
                b'\r' => Chunk::DataLf,
                b'\n' => Chunk::Size {
                    value: 0,
                    digits: 0,
                },
                _ => return Err(ParseError::BadChunk),
            },
            Chunk::DataLf => match b {
                b'\n' => Chunk::Size {
                    value: 0,
                    digits: 0,
                },
                _ => return Err(ParseError::BadChunk),
            },
            Chunk::Trailer { line, total } => match b {
                b'\n' if line == 0 => return Ok(true),
                b'\n' => Chunk::Trailer { line: 0, total },
                b'\r' => Chunk::Trailer { line, total },
                _ if total >= MAX_TRAILER_BYTES => return Err(ParseError::BadChunk),
                _ => Chunk::Trailer {
                    line: line + 1,
                    total: total + 1,
                },
            },
            // Handled above.
            Chunk::Data { .. } => *chunk,
        };
    }
    Ok(false)
}

/// HTTP/1.x parser of one connection.
#[derive(Debug)]
pub struct Http1Parser {
    side: Side,
    req: Stream,
    resp: Stream,
    pending: PendingQueue,
    response: Option<Response>,
    next_seq: u64,
    consecutive_errors: u32,
    /// First error of the current `feed` call.
    error: Option<ParseError>,
    dead: bool,
    /// The connection switched to HTTP/2 (h2c): what the HTTP/2 parser takes over.
    /// Boxed: set once in a connection's life, if ever (kept out of every parser's size).
    upgrade: Option<Box<H2cUpgrade>>,
}

/// An `Upgrade: h2c` request answered `101`: it becomes HTTP/2 stream 1, and the bytes of the
/// 101's syscall after its header block are already HTTP/2 (the server's SETTINGS).
#[derive(Debug)]
pub struct H2cUpgrade {
    pub start_ns: u64,
    pub method: Cow<'static, str>,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub request_body_bytes: u64,
    pub rest: Vec<u8>,
    pub rest_uncaptured: u64,
}

impl Http1Parser {
    pub fn new(side: Side) -> Self {
        Http1Parser {
            side,
            req: Stream::new(),
            resp: Stream::new(),
            pending: PendingQueue::default(),
            response: None,
            next_seq: 0,
            consecutive_errors: 0,
            error: None,
            dead: false,
            upgrade: None,
        }
    }

    fn stream(&mut self, role: Role) -> &mut Stream {
        match role {
            Role::Request => &mut self.req,
            Role::Response => &mut self.resp,
        }
    }

    /// Keeps the first error of a `feed` call.
    fn report(&mut self, err: ParseError) {
        self.error.get_or_insert(err);
    }

    /// A framing error: drop the header block and skip to the next message start.
    /// A response whose body framing broke still has a known status: it ends as truncated.
    fn framing_error(&mut self, role: Role, err: ParseError, out: &mut Vec<HttpExchange>) {
        self.report(err);
        let stream = self.stream(role);
        stream.clear_head();
        stream.state = State::Skip;
        if role == Role::Response {
            let ts = self.resp.last_ts;
            self.finish_response(ts, true, out);
        }
        self.consecutive_errors += 1;
        if self.consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
            self.give_up();
        }
    }

    fn give_up(&mut self) {
        self.dead = true;
        self.pending.clear();
        self.response = None;
        self.req.clear_head();
        self.resp.clear_head();
    }

    fn push_pending(&mut self, pending: Pending) -> bool {
        if self.pending.len() >= MAX_PENDING_REQUESTS {
            self.report(ParseError::TooManyPending {
                limit: MAX_PENDING_REQUESTS,
            });
            self.give_up();
            return false;
        }
        self.pending.push_back(pending);
        true
    }

    fn new_pending(
        &mut self,
        start_ns: u64,
        line: Option<RequestLine>,
        headers: Vec<(&'static str, String)>,
        truncated: bool,
    ) -> Pending {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.req.msg_seq = seq;
        Pending {
            seq,
            start_ns,
            line,
            headers,
            body_bytes: 0,
            truncated,
            h2c: false,
        }
    }

    /// Adds body bytes to the message being read in `role`.
    fn credit(&mut self, role: Role, n: u64) {
        match role {
            Role::Request => {
                let seq = self.req.msg_seq;
                let target = match self.pending.back_mut() {
                    Some(p) if p.seq == seq => Some(p),
                    _ => self
                        .response
                        .as_mut()
                        .and_then(|r| r.request.as_mut())
                        .filter(|p| p.seq == seq),
                };
                if let Some(p) = target {
                    p.body_bytes = p.body_bytes.saturating_add(n);
                }
            }
            Role::Response => {
                if let Some(r) = self.response.as_mut() {
                    r.body_bytes = r.body_bytes.saturating_add(n);
                }
            }
        }
    }

    /// Whether the request being read is still waiting for (or pairing with) its response.
    fn request_unanswered(&self) -> bool {
        let seq = self.req.msg_seq;
        self.pending.back().is_some_and(|p| p.seq == seq)
            || self
                .response
                .as_ref()
                .and_then(|r| r.request.as_ref())
                .is_some_and(|p| p.seq == seq)
    }

    /// Emits the exchange of the current response, if it had a request.
    fn finish_response(&mut self, end_ns: u64, truncated: bool, out: &mut Vec<HttpExchange>) {
        let Some(response) = self.response.take() else {
            return;
        };
        let Some(request) = response.request else {
            return;
        };
        let Some(line) = request.line else { return };
        let outcome = if truncated || request.truncated || response.truncated {
            Outcome::Truncated
        } else {
            Outcome::Complete
        };
        out.push(HttpExchange {
            start_ns: request.start_ns,
            end_ns,
            method: line.method,
            version: line.version,
            path: line.path,
            status: Some(response.status),
            request_body_bytes: request.body_bytes,
            response_body_bytes: response.body_bytes,
            headers: request.headers,
            outcome,
        });
    }

    /// The message being read in `role` ended with the syscall at `ts`.
    fn message_done(&mut self, role: Role, ts: u64, out: &mut Vec<HttpExchange>) {
        let stream = self.stream(role);
        stream.state = State::Idle;
        stream.expect_continue = false;
        if role == Role::Response {
            self.finish_response(ts, false, out);
        }
    }

    fn on_request_head(&mut self, head: RequestHead) -> Result<(), ParseError> {
        let start = self.req.head_start_ns;
        let mut pending = self.new_pending(start, Some(head.line), head.headers, false);
        pending.h2c = head.h2c;
        if !self.push_pending(pending) {
            return Ok(());
        }
        let framing = head.framing?;
        self.req.expect_continue = framing.expect_continue;
        // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length (item 3); a request whose
        // final coding is not chunked cannot be delimited (item 4); neither means no body
        // (item 6).
        let body = match (framing.is_chunked(), framing.content_length) {
            (Some(true), _) => Some(Body::Chunked(Chunk::Size {
                value: 0,
                digits: 0,
            })),
            (Some(false), _) => return Err(ParseError::BadHeader),
            (None, Some(n)) if n > 0 => Some(Body::Length { remaining: n }),
            (None, _) => None,
        };
        self.req.state = body.map_or(State::Idle, State::Body);
        Ok(())
    }

    fn on_response_head(
        &mut self,
        ts: u64,
        head: ResponseHead,
        out: &mut Vec<HttpExchange>,
    ) -> Result<(), ParseError> {
        // RFC 9110 §15.2: a 1xx other than 101 is interim; the final response follows.
        if (100..200).contains(&head.status) && head.status != 101 {
            self.resp.state = State::Idle;
            return Ok(());
        }
        let request = self.pending.pop_front();
        if request.is_none() {
            self.report(ParseError::ResponseWithoutRequest);
        }
        let line = request.as_ref().and_then(|p| p.line.as_ref());
        let is_head = line.is_some_and(RequestLine::is_head);
        let tunnel = head.status == 101
            || (line.is_some_and(RequestLine::is_connect) && (200..300).contains(&head.status));
        self.response = Some(Response {
            request,
            status: head.status,
            body_bytes: 0,
            truncated: false,
        });
        let h2c = self
            .response
            .as_ref()
            .and_then(|r| r.request.as_ref())
            .is_some_and(|p| p.h2c && p.line.is_some());
        if head.status == 101
            && h2c
            && let Some(request) = self.response.take().and_then(|r| r.request)
            && let Some(line) = request.line
        {
            // RFC 7540 §3.2: the upgraded request is HTTP/2 stream 1, answered in HTTP/2.
            self.response = None;
            self.upgrade = Some(Box::new(H2cUpgrade {
                start_ns: request.start_ns,
                method: line.method,
                path: line.path,
                headers: request.headers,
                request_body_bytes: request.body_bytes,
                rest: Vec::new(),
                rest_uncaptured: 0,
            }));
            self.give_up();
            return Ok(());
        }
        if tunnel {
            // RFC 9112 §6.3 item 2 and RFC 9110 §15.2.2: after a 2xx to CONNECT or a 101 the
            // connection carries another protocol.
            self.finish_response(ts, false, out);
            self.give_up();
            return Ok(());
        }
        let framing = head.framing?;
        // RFC 9112 §6.3: no body after HEAD, 1xx, 204, 304 (item 1); chunked if it is the
        // final coding, else until close (item 3); Content-Length (item 5); else until close
        // (item 8).
        let body = if is_head || head.status == 204 || head.status == 304 {
            None
        } else {
            match (framing.is_chunked(), framing.content_length) {
                (Some(true), _) => Some(Body::Chunked(Chunk::Size {
                    value: 0,
                    digits: 0,
                })),
                (Some(false), _) => Some(Body::UntilClose),
                (None, Some(0)) => None,
                (None, Some(n)) => Some(Body::Length { remaining: n }),
                (None, None) => Some(Body::UntilClose),
            }
        };
        match body {
            Some(body) => self.resp.state = State::Body(body),
            None => self.message_done(Role::Response, ts, out),
        }
        Ok(())
    }

    /// The header block of `role` continues into uncaptured bytes (or the connection closed
    /// inside it): use what its captured prefix says and assume it ended at `ts`.
    fn truncated_head(&mut self, role: Role, ts: u64, out: &mut Vec<HttpExchange>) {
        let stream = self.stream(role);
        let head = std::mem::take(&mut stream.head);
        let start = stream.head_start_ns;
        stream.state = State::Skip;
        match role {
            Role::Request => {
                let line = partial_request_line(&head);
                let headers = if line.is_some() {
                    partial_headers(&head)
                } else {
                    Vec::new()
                };
                if line.is_none() {
                    self.report(ParseError::StartLineNotCaptured);
                }
                let pending = self.new_pending(start, line, headers, true);
                self.push_pending(pending);
            }
            Role::Response => match partial_status(&head) {
                Some(status) if (100..200).contains(&status) && status != 101 => {}
                Some(status) => {
                    let request = self.pending.pop_front();
                    if request.is_none() {
                        self.report(ParseError::ResponseWithoutRequest);
                    }
                    self.response = Some(Response {
                        request,
                        status,
                        body_bytes: 0,
                        truncated: true,
                    });
                    self.finish_response(ts, true, out);
                    if status == 101 {
                        self.give_up();
                    }
                }
                None => {
                    self.report(ParseError::StartLineNotCaptured);
                    self.pending.pop_front();
                }
            },
        }
        let stream = self.stream(role);
        stream.head = head;
        stream.clear_head();
    }

    /// A message starts in uncaptured bytes of `role`: keep the pairing aligned.
    fn unseen_message(&mut self, role: Role) {
        self.report(ParseError::StartLineNotCaptured);
        match role {
            Role::Request => {
                let start = self.req.last_ts;
                let pending = self.new_pending(start, None, Vec::new(), true);
                self.push_pending(pending);
            }
            Role::Response => {
                self.pending.pop_front();
            }
        }
        self.stream(role).state = State::Skip;
    }

    /// Decisions taken where a syscall starts: resynchronisation and message ends that only
    /// a new message reveals.
    fn syscall_start(
        &mut self,
        role: Role,
        ts: u64,
        payload: &[u8],
        bytes: u64,
        out: &mut Vec<HttpExchange>,
    ) {
        let is_request = role == Role::Request;
        let plausible = plausible_start(is_request, payload);
        let expect_continue_done =
            is_request && self.req.expect_continue && !self.request_unanswered();
        let stream = self.stream(role);
        let prev_ts = stream.last_ts;
        stream.last_ts = ts;
        match stream.state {
            State::Skip => {
                let whole = u64::try_from(payload.len()).is_ok_and(|n| n == bytes);
                if plausible == Plausible::Yes || (plausible == Plausible::Prefix && whole) {
                    stream.state = State::Idle;
                }
            }
            State::Body(Body::Lost { matched }) => {
                if plausible == Plausible::Yes {
                    self.message_done(role, prev_ts, out);
                } else if stream.prev_tail_unknown && matched == 0 {
                    // What preceded was not seen: allow the syscall to start with `0\r\n\r\n`.
                    stream.state = State::Body(Body::Lost { matched: 2 });
                }
            }
            // RFC 9110 §10.1.1: a client that got a final response without `100 Continue`
            // may skip the body; a new request then starts the next syscall.
            State::Body(_)
                if expect_continue_done
                    && (plausible == Plausible::Yes
                        || (plausible == Plausible::Prefix
                            && u64::try_from(payload.len()).is_ok_and(|n| n == bytes))) =>
            {
                stream.state = State::Idle;
                stream.expect_continue = false;
            }
            State::Idle | State::Head | State::Body(_) => {}
        }
    }

    /// Parses captured bytes of one syscall; returns the bytes consumed.
    fn step(
        &mut self,
        role: Role,
        ts: u64,
        rest: &[u8],
        tail_unknown: bool,
        out: &mut Vec<HttpExchange>,
    ) -> Result<usize, ParseError> {
        let state = self.stream(role).state;
        match state {
            State::Skip => Ok(rest.len()),
            State::Idle => {
                // RFC 9112 §2.2: empty lines before a start line are ignored.
                let blank = rest
                    .iter()
                    .take_while(|b| matches!(b, b'\r' | b'\n'))
                    .count();
                if blank < rest.len() {
                    let stream = self.stream(role);
                    stream.state = State::Head;
                    stream.head_start_ns = ts;
                    stream.clear_head();
                }
                Ok(blank)
            }
            State::Head => self.head_step(role, ts, rest, out),
            State::Body(body) => self.body_step(role, ts, body, rest, tail_unknown, out),
        }
    }

    fn head_step(
        &mut self,
        role: Role,
        ts: u64,
        rest: &[u8],
        out: &mut Vec<HttpExchange>,
    ) -> Result<usize, ParseError> {
        let stream = self.stream(role);
        let old = stream.head.len();
        let room = MAX_HEADER_BLOCK_BYTES.saturating_sub(old);
        let take = room.min(rest.len());
        let new = rest.get(..take).unwrap_or(&[]);
        // A head that arrives whole in one syscall (the usual case) is parsed where it lies,
        // without a copy into the stream's buffer, and without looking for its end first:
        // httparse finds it. A head that is not complete is buffered as before, and an error in
        // one counts only once the head is complete, as for a head that arrives in pieces.
        let in_place = if old == 0 {
            early_check(role, new)?;
            match parse_head(role, new) {
                Ok(Some(parsed)) => Some(parsed),
                Err(err) if head_ends(new, 0) => return Err(err),
                Ok(None) | Err(_) => None,
            }
        } else {
            None
        };
        let result = if in_place.is_some() {
            in_place
        } else {
            stream.push_head(new);
            // (A head's first bytes were checked above, before the attempt to parse in place.)
            if old > 0 && old < EARLY_CHECK_BYTES {
                early_check(role, &stream.head)?;
            }
            if !stream.find_head_end() {
                return if stream.head.len() >= MAX_HEADER_BLOCK_BYTES {
                    Err(ParseError::HeaderTooLarge {
                        limit: MAX_HEADER_BLOCK_BYTES,
                    })
                } else {
                    Ok(take)
                };
            }
            let head = std::mem::take(&mut stream.head);
            let result = parse_head(role, &head);
            self.stream(role).head = head;
            result?
        };
        let stream = self.stream(role);
        let Some((parsed, len)) = result else {
            return Ok(take);
        };
        // The block ends within the bytes just added, since it did not end before them.
        let consumed = len
            .checked_sub(old)
            .filter(|&n| n > 0 && n <= take)
            .ok_or(ParseError::BadHeader)?;
        stream.clear_head();
        self.consecutive_errors = 0;
        match parsed {
            Ok(request) => self.on_request_head(request)?,
            Err(response) => self.on_response_head(ts, response, out)?,
        }
        Ok(consumed)
    }

    fn body_step(
        &mut self,
        role: Role,
        ts: u64,
        body: Body,
        rest: &[u8],
        tail_unknown: bool,
        out: &mut Vec<HttpExchange>,
    ) -> Result<usize, ParseError> {
        let len = rest.len() as u64;
        let (consumed, counted, next) = match body {
            Body::Length { remaining } => {
                let n = remaining.min(len);
                let left = remaining - n;
                (n, n, (left > 0).then_some(Body::Length { remaining: left }))
            }
            Body::Chunked(mut chunk) => {
                let (n, data, result) = consume_chunked(&mut chunk, rest);
                self.credit(role, data);
                let done = result?;
                (n as u64, 0, (!done).then_some(Body::Chunked(chunk)))
            }
            Body::Lost { mut matched } => {
                let mut end = None;
                for (i, &b) in rest.iter().enumerate() {
                    matched = advance_last_chunk(matched, b);
                    if matched == LAST_CHUNK.len() {
                        // Accept the last chunk only where a message may end: at the end of a
                        // fully captured syscall, or before a plausible next message.
                        let after = rest.get(i + 1..).unwrap_or(&[]);
                        let ends = if after.is_empty() {
                            !tail_unknown
                        } else {
                            plausible_start(role == Role::Request, after) != Plausible::No
                        };
                        if ends {
                            end = Some(i + 1);
                            break;
                        }
                    }
                }
                match end {
                    Some(n) => (n as u64, n as u64, None),
                    None => (len, len, Some(Body::Lost { matched })),
                }
            }
            Body::UntilClose => (len, len, Some(Body::UntilClose)),
        };
        self.credit(role, counted);
        match next {
            Some(body) => self.stream(role).state = State::Body(body),
            None => self.message_done(role, ts, out),
        }
        Ok(usize::try_from(consumed).unwrap_or(rest.len()))
    }

    /// Accounts for the `unknown` uncaptured bytes that ended a syscall.
    fn unknown_tail(&mut self, role: Role, ts: u64, unknown: u64, out: &mut Vec<HttpExchange>) {
        let state = self.stream(role).state;
        match state {
            State::Skip => {}
            State::Idle => self.unseen_message(role),
            State::Head => self.truncated_head(role, ts, out),
            State::Body(Body::Length { remaining }) => {
                let n = remaining.min(unknown);
                self.credit(role, n);
                if n < remaining {
                    self.stream(role).state = State::Body(Body::Length {
                        remaining: remaining - n,
                    });
                } else {
                    self.message_done(role, ts, out);
                    if unknown > n {
                        self.unseen_message(role);
                    }
                }
            }
            State::Body(Body::Chunked(Chunk::Data { remaining })) if unknown < remaining => {
                self.credit(role, unknown);
                self.stream(role).state = State::Body(Body::Chunked(Chunk::Data {
                    remaining: remaining - unknown,
                }));
            }
            State::Body(Body::Chunked(Chunk::Data { remaining })) if unknown == remaining => {
                self.credit(role, unknown);
                self.stream(role).state = State::Body(Body::Chunked(Chunk::DataCr));
            }
            // The uncaptured tail ends exactly after the chunk's data and its CRLF (or part
            // of it): a writer that sends one chunk per syscall. Framing is still known.
            State::Body(Body::Chunked(Chunk::Data { remaining }))
                if unknown == remaining + 1 || unknown == remaining + 2 =>
            {
                self.credit(role, remaining);
                let next = if unknown == remaining + 1 {
                    Chunk::DataLf
                } else {
                    Chunk::Size {
                        value: 0,
                        digits: 0,
                    }
                };
                self.stream(role).state = State::Body(Body::Chunked(next));
            }
            State::Body(Body::Chunked(Chunk::DataCr)) if unknown <= 2 => {
                let next = if unknown == 1 {
                    Chunk::DataLf
                } else {
                    Chunk::Size {
                        value: 0,
                        digits: 0,
                    }
                };
                self.stream(role).state = State::Body(Body::Chunked(next));
            }
            State::Body(Body::Chunked(Chunk::DataLf)) if unknown == 1 => {
                self.stream(role).state = State::Body(Body::Chunked(Chunk::Size {
                    value: 0,
                    digits: 0,
                }));
            }
            State::Body(Body::Chunked(_) | Body::Lost { .. }) => {
                self.credit(role, unknown);
                self.stream(role).state = State::Body(Body::Lost { matched: 0 });
            }
            State::Body(Body::UntilClose) => self.credit(role, unknown),
        }
    }

    #[cfg(test)]
    fn buffered(&self) -> (usize, usize) {
        (
            self.req.head.capacity().max(self.resp.head.capacity()),
            self.pending.len(),
        )
    }
}

impl Http1Parser {
    pub fn feed(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        payload: &[u8],
        bytes: u64,
        out: &mut Vec<HttpExchange>,
    ) -> Result<(), ParseError> {
        if self.dead {
            return Ok(());
        }
        self.error = None;
        // The captured prefix can never be longer than what the syscall moved.
        let (payload, unknown) = super::captured(payload, bytes);
        let role = if dir == self.side.request_direction() {
            Role::Request
        } else {
            Role::Response
        };
        self.syscall_start(role, ts_ns, payload, bytes, out);
        let mut rest = payload;
        while !rest.is_empty() && !self.dead {
            match self.step(role, ts_ns, rest, unknown > 0, out) {
                Ok(n) => rest = rest.get(n..).unwrap_or(&[]),
                Err(err) => {
                    self.framing_error(role, err, out);
                    break;
                }
            }
        }
        if let Some(upgrade) = self.upgrade.as_mut()
            && upgrade.rest.is_empty()
            && upgrade.rest_uncaptured == 0
        {
            upgrade.rest = rest.to_vec();
            upgrade.rest_uncaptured = unknown;
        }
        if unknown > 0 && !self.dead {
            self.unknown_tail(role, ts_ns, unknown, out);
        }
        self.stream(role).prev_tail_unknown = unknown > 0;
        match self.error.take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    pub fn gap(&mut self, dir: Direction) {
        if self.dead {
            return;
        }
        let role = if dir == self.side.request_direction() {
            Role::Request
        } else {
            Role::Response
        };
        let stream = self.stream(role);
        stream.clear_head();
        stream.state = State::Skip;
        stream.expect_continue = false;
        if role == Role::Response {
            // Responses to any of the queued requests may have been lost: pairing them with
            // later responses would mislabel every exchange after the gap.
            self.response = None;
            self.pending.clear();
        }
    }

    pub fn close(&mut self, ts_ns: u64, out: &mut Vec<HttpExchange>) {
        if self.dead {
            return;
        }
        let last = self.resp.last_ts;
        match self.resp.state {
            // RFC 9112 §6.3 item 8: the close delimits the body.
            State::Body(Body::UntilClose | Body::Lost { .. }) => {
                self.finish_response(last, false, out)
            }
            State::Body(_) => self.finish_response(last, true, out),
            State::Head => self.truncated_head(Role::Response, last, out),
            State::Idle | State::Skip => {}
        }
        if self.req.state == State::Head {
            let last = self.req.last_ts;
            self.truncated_head(Role::Request, last, out);
        }
        for pending in self.pending.drain() {
            let Some(line) = pending.line else { continue };
            out.push(HttpExchange {
                start_ns: pending.start_ns,
                end_ns: ts_ns,
                method: line.method,
                version: line.version,
                path: line.path,
                status: None,
                request_body_bytes: pending.body_bytes,
                response_body_bytes: 0,
                headers: pending.headers,
                outcome: Outcome::NoResponse,
            });
        }
        self.error = None;
        self.give_up();
    }

    pub fn in_flight(&self) -> bool {
        !self.dead
            && (!self.pending.is_empty()
                || self.response.is_some()
                || !matches!(self.resp.state, State::Idle | State::Skip)
                || self.req.state == State::Head)
    }

    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Between messages in both directions, what the next message needs: the request
    /// numbering, the error run, and each stream's last syscall. Nothing else is set then.
    pub fn rest(&self) -> Option<super::Rest> {
        let quiet = |s: &Stream| {
            s.state == State::Idle && s.head.is_empty() && s.scan_from == 0 && !s.expect_continue
        };
        let between = !self.dead
            && self.pending.is_empty()
            && self.response.is_none()
            && self.error.is_none()
            && self.upgrade.is_none()
            && quiet(&self.req)
            && quiet(&self.resp);
        between.then(|| {
            let flags = u64::from(self.consecutive_errors)
                | u64::from(self.req.prev_tail_unknown) << 32
                | u64::from(self.resp.prev_tail_unknown) << 33;
            super::Rest([
                self.next_seq,
                self.req.last_ts,
                self.resp.last_ts,
                self.req.msg_seq,
                flags,
            ])
        })
    }

    /// Takes up from [`Self::rest`]'s words, on a new parser.
    pub fn resume(&mut self, rest: super::Rest) {
        let [next_seq, req_ts, resp_ts, msg_seq, flags] = rest.0;
        self.next_seq = next_seq;
        self.req.last_ts = req_ts;
        self.resp.last_ts = resp_ts;
        self.req.msg_seq = msg_seq;
        self.consecutive_errors = flags as u32;
        self.req.prev_tail_unknown = flags & 1 << 32 != 0;
        self.resp.prev_tail_unknown = flags & 1 << 33 != 0;
    }
}

#[cfg(test)]
mod tests;
