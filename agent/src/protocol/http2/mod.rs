//! HTTP/2 (RFC 9113) and gRPC over it: every stream one exchange.
//!
//! Per direction a [`frame::Framer`] cuts the captured bytes into frames (a frame split over many
//! syscalls, many frames in one, a frame longer than the capture) and an [`hpack::Decoder`]
//! keeps that direction's header table. Header blocks (HEADERS or PUSH_PROMISE, then
//! CONTINUATION) are decoded whole; one not seen whole is *lost*: its stream yields nothing and
//! the table's state becomes partly unknown (see `hpack`), so later fields that refer to it
//! decode as unknown and are never guessed.
//!
//! A stream's exchange starts with the request's first HEADERS and ends with the response's
//! END_STREAM (trailers included), a RST_STREAM from either side, a GOAWAY that excludes it,
//! or the connection's close (no response). A request whose `:method`/`:path` (or a response
//! whose `:status`, or a gRPC call's status) decoded as unknown yields no exchange: it is
//! counted in `meshtap_parse_errors_total{protocol="http2",reason}` instead, like every other
//! frame or header block the parser could not use.
//!
//! gRPC (content-type `application/grpc*`) exchanges carry [`Attributes`]: service, method and
//! status (from the trailers, a Trailers-Only response, the HTTP status or the RST_STREAM code,
//! as the gRPC spec maps them). Plain HTTP/2 exchanges carry HTTP attributes
//! ([`super::http1::Attributes`], version 2) and go into the HTTP metrics.

pub mod frame;
pub mod hpack;
pub mod huffman;
pub mod red;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use super::{Direction, Side, Verdict, http1};
use crate::fast::Map;
use frame::{FrameHeader, Framer, kind};
use hpack::{Decoder, Text};

pub use red::Red;

/// Label value of the protocol in metrics.
pub const NAME: &str = "http2";

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Streams tracked at once per connection; past it the oldest is dropped (counted).
pub const MAX_STREAMS: usize = 1024;
/// Ended streams remembered, so that their late frames are not taken for missed streams.
const RECENTLY_FINISHED: usize = 256;
/// Largest header block (HEADERS + CONTINUATION fragments) buffered; a larger one is lost.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Longest `:path` kept.
const MAX_PATH_BYTES: usize = http1::MAX_PATH_BYTES;

/// RST_STREAM and GOAWAY error codes (RFC 9113 §7) the gRPC mapping names.
mod code {
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
    pub const INADEQUATE_SECURITY: u32 = 0xc;
}

/// gRPC status codes (grpc/doc/statuscodes.md) used here by name.
pub mod grpc_status {
    pub const OK: u16 = 0;
    pub const CANCELLED: u16 = 1;
    pub const UNKNOWN: u16 = 2;
    pub const DEADLINE_EXCEEDED: u16 = 4;
    pub const PERMISSION_DENIED: u16 = 7;
    pub const RESOURCE_EXHAUSTED: u16 = 8;
    pub const UNIMPLEMENTED: u16 = 12;
    pub const INTERNAL: u16 = 13;
    pub const UNAVAILABLE: u16 = 14;
    pub const DATA_LOSS: u16 = 15;
    pub const UNAUTHENTICATED: u16 = 16;

    /// The codes OpenTelemetry's RPC conventions count as server errors.
    pub fn is_server_error(code: u16) -> bool {
        matches!(
            code,
            UNKNOWN | DEADLINE_EXCEEDED | UNIMPLEMENTED | INTERNAL | UNAVAILABLE | DATA_LOSS
        )
    }
}

/// Why something seen on an HTTP/2 connection yielded nothing: label values of
/// `meshtap_parse_errors_total{protocol="http2",reason}`.
pub mod reason {
    /// A header block not seen whole (beyond the capture, or in lost events).
    pub const HEADER_BLOCK_LOST: &str = "header_block_lost";
    /// A field the exchange needs refers to header-table state this observer did not see.
    pub const HPACK_UNKNOWN_INDEX: &str = "hpack_unknown_index";
    /// Frame boundaries fell into uncaptured bytes or lost events: frames skipped until a
    /// syscall starts with a plausible frame again.
    pub const FRAMING_LOST: &str = "framing_lost";
    /// A frame that breaks RFC 9113 (bad length for its type, CONTINUATION out of place...).
    pub const BAD_FRAME: &str = "bad_frame";
    /// A request without `:method` or `:path`, or a response without `:status`.
    pub const MISSING_PSEUDO_HEADER: &str = "missing_pseudo_header";
    /// A stream whose request was not seen (opened before the observer, or lost).
    pub const STREAM_NOT_SEEN: &str = "stream_not_seen";
    /// More than [`super::MAX_STREAMS`] streams open at once: the oldest was dropped.
    pub const TOO_MANY_STREAMS: &str = "too_many_streams";
    /// A stream whose end may have been lost (events lost while it was open): dropped at the
    /// close rather than reported as unanswered.
    pub const STREAM_END_LOST: &str = "stream_end_lost";
    pub const HEADER_BLOCK_TOO_LARGE: &str = "header_block_too_large";
}

/// Index of a direction in per-direction arrays.
fn di(dir: Direction) -> usize {
    match dir {
        Direction::Egress => 0,
        Direction::Ingress => 1,
    }
}

/// Detection: the client connection preface, where the observer's role puts it (read by a
/// server, written by a client), or the server's (its first SETTINGS frame, written before it
/// reads the client's). A connection found mid-stream is recognised by frames that
/// tile its first chunk exactly ([`frame::plausible_frames`]).
pub fn detect(side: Side, dir: Direction, first: &[u8], midstream: bool) -> Verdict {
    if dir == side.request_direction() {
        let n = first.len().min(PREFACE.len());
        if first[..n] == PREFACE[..n] {
            return if n == PREFACE.len() {
                Verdict::Yes
            } else {
                Verdict::Prefix
            };
        }
    }
    // A server writes its SETTINGS as soon as it accepts, often before it reads the client's
    // preface: the server connection preface (§3.4) tells the connection as well.
    if dir != side.request_direction() && frame::starts_with_settings(first) {
        return Verdict::Yes;
    }
    if midstream && frame::plausible_frames(first) {
        return Verdict::Yes;
    }
    Verdict::No
}

/// What a gRPC exchange adds to the neutral fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// `package.Service`, from `:path` `/package.Service/Method`.
    pub service: String,
    pub method: String,
    /// The gRPC status code (0 to 16; other values are kept as sent).
    pub status: Option<u16>,
}

impl super::ProtocolAttributes for Attributes {
    fn span_name_into(&self, out: &mut String) {
        out.push_str(&self.service);
        out.push('/');
        out.push_str(&self.method);
    }

    fn span_attributes(
        &self,
        _options: &super::SpanOptions,
        out: &mut Vec<crate::semconv::Attribute>,
    ) {
        use crate::semconv::{Value, key};
        out.push((key::RPC_SYSTEM, Value::Str(Cow::Borrowed("grpc"))));
        out.push((
            key::RPC_SERVICE,
            Value::Str(Cow::Owned(self.service.clone())),
        ));
        out.push((key::RPC_METHOD, Value::Str(Cow::Owned(self.method.clone()))));
        if let Some(status) = self.status {
            out.push((key::RPC_GRPC_STATUS_CODE, Value::Int(i64::from(status))));
        }
        out.push((
            key::NETWORK_PROTOCOL_VERSION,
            Value::Str(Cow::Borrowed("2")),
        ));
    }

    fn error_type(&self) -> Cow<'static, str> {
        match self.status {
            Some(s) => Cow::Owned(s.to_string()),
            None => Cow::Borrowed("no response"),
        }
    }
}

/// What the observer knows of one stream.
#[derive(Debug, Default)]
struct Stream {
    start_ns: u64,
    method: Option<Cow<'static, str>>,
    path: Option<String>,
    grpc: bool,
    /// gRPC `grpc-timeout`, ns.
    timeout_ns: Option<u64>,
    /// Allowlisted request headers: the trace context.
    headers: Vec<(&'static str, String)>,
    /// A request field the exchange needs decoded as unknown.
    request_unknown: bool,
    status: Option<u16>,
    response_unknown: bool,
    grpc_status: Option<u16>,
    grpc_status_unknown: bool,
    /// Response HEADERS seen (a final status, not 1xx).
    responded: bool,
    request_bytes: u64,
    response_bytes: u64,
    /// Events were lost while the stream was open: its end may have passed unseen.
    uncertain: bool,
    /// Something of it was not seen whole (a body beyond the capture is not this).
    truncated: bool,
}

/// A header block being assembled from HEADERS/PUSH_PROMISE and CONTINUATION frames.
struct Block {
    stream: u32,
    /// PUSH_PROMISE: decoded for the table's sake, its fields unused.
    push: bool,
    end_stream: bool,
    /// Time of the syscall that carried the block's first byte.
    ts_ns: u64,
    fragments: Vec<u8>,
    lost: bool,
}

/// One direction: framing, header table, the block being assembled.
struct Half {
    framer: Framer,
    hpack: Decoder,
    block: Option<Block>,
}

/// The registry's parser: one per connection side.
pub struct Parser {
    side: Side,
    halves: [Half; 2],
    streams: Map<u32, Stream>,
    /// Stream ids in the order their requests were seen, for the bound.
    order: std::collections::VecDeque<u32>,
    /// Streams that ended lately (a reset, a GOAWAY) and may still get frames.
    finished: std::collections::VecDeque<u32>,
    /// Counts of what yielded nothing, by reason, until [`super::Parser::take_errors`].
    errors: Vec<(&'static str, u64)>,
    closed: bool,
    /// A chunk was fed: whether the connection's start (the preface) was seen is settled.
    started: bool,
    /// The decoded field values of one header block: one buffer, reused.
    fields: Vec<(FieldName, FieldValue)>,
}

/// A header name the parser uses, or another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldName {
    Method,
    Path,
    Status,
    ContentType,
    GrpcStatus,
    GrpcTimeout,
    /// An allowlisted trace-context header.
    Context(&'static str),
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FieldValue {
    Known(String),
    Unknown,
}

fn field_name(name: &[u8]) -> Option<FieldName> {
    Some(match name {
        b":method" => FieldName::Method,
        b":path" => FieldName::Path,
        b":status" => FieldName::Status,
        b"content-type" => FieldName::ContentType,
        b"grpc-status" => FieldName::GrpcStatus,
        b"grpc-timeout" => FieldName::GrpcTimeout,
        _ => {
            let kept = http1::HEADER_ALLOWLIST
                .iter()
                .find(|k| k.as_bytes() == name)?;
            FieldName::Context(kept)
        }
    })
}

impl Parser {
    pub fn new(side: Side) -> Self {
        Self::with_state(side, true)
    }

    /// A parser for a connection whose start was seen (`known`) or found mid-stream.
    pub fn with_state(side: Side, known: bool) -> Self {
        let half = |preface: bool| Half {
            framer: Framer::new(preface, known),
            hpack: Decoder::new(known),
            block: None,
        };
        // The preface precedes the client's frames, on a connection seen from its start.
        let client_writes = side.request_direction();
        let halves = [
            half(known && client_writes == Direction::Egress),
            half(known && client_writes == Direction::Ingress),
        ];
        Parser {
            side,
            halves,
            streams: Map::default(),
            order: std::collections::VecDeque::new(),
            finished: std::collections::VecDeque::new(),
            errors: Vec::new(),
            closed: false,
            started: false,
            fields: Vec::new(),
        }
    }

    /// The parser of a connection upgraded from HTTP/1.1 (`Upgrade: h2c`, RFC 7540 §3.2): the
    /// upgraded request is stream 1, its response comes in HTTP/2; the client's preface
    /// follows the 101.
    pub fn upgraded(side: Side, up: http1::H2cUpgrade) -> Self {
        let mut p = Self::with_state(side, true);
        p.started = true;
        let mut headers = up.headers;
        headers.truncate(16);
        let stream = Stream {
            start_ns: up.start_ns,
            method: Some(up.method),
            path: Some(up.path),
            headers,
            request_bytes: up.request_body_bytes,
            ..Stream::default()
        };
        p.streams.insert(1, stream);
        p.order.push_back(1);
        p
    }

    fn count(&mut self, reason: &'static str) {
        match self.errors.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.errors.push((reason, 1)),
        }
    }

    /// Direction of requests (client to server) for this observer.
    fn is_request(&self, dir: Direction) -> bool {
        dir == self.side.request_direction()
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one frame's fields, as the framer reported them"
    )]
    fn on_frame(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        first_ts: u64,
        header: FrameHeader,
        payload: &[u8],
        complete: bool,
        out: &mut Vec<super::Exchange>,
    ) {
        let d = di(dir);
        // A header block in progress accepts only its CONTINUATION frames (§6.10).
        if self.halves[d].block.is_some() && header.kind != kind::CONTINUATION {
            self.count(reason::BAD_FRAME);
            self.lose_block(d);
        }
        match header.kind {
            kind::DATA => self.on_data(dir, ts_ns, header, payload, complete, out),
            kind::HEADERS | kind::PUSH_PROMISE => {
                let push = header.kind == kind::PUSH_PROMISE;
                let fragment = if complete {
                    frame::header_fragment(&header, payload)
                } else {
                    None
                };
                let lost = fragment.is_none();
                if complete && lost {
                    self.count(reason::BAD_FRAME);
                }
                let block = Block {
                    stream: header.stream,
                    push,
                    end_stream: !push && header.flags & frame::flag::END_STREAM != 0,
                    ts_ns: first_ts,
                    fragments: fragment.map(<[u8]>::to_vec).unwrap_or_default(),
                    lost,
                };
                self.halves[d].block = Some(block);
                if header.flags & frame::flag::END_HEADERS != 0 {
                    self.end_block(dir, ts_ns, out);
                }
            }
            kind::CONTINUATION => {
                let Some(block) = self.halves[d].block.as_mut() else {
                    self.count(reason::BAD_FRAME);
                    self.halves[d].hpack.lose_state();
                    return;
                };
                if block.stream != header.stream {
                    self.count(reason::BAD_FRAME);
                    self.lose_block(d);
                    return;
                }
                if !complete {
                    block.lost = true;
                } else if block.fragments.len() + payload.len() > MAX_HEADER_BLOCK {
                    block.lost = true;
                    block.fragments.clear();
                    self.count(reason::HEADER_BLOCK_TOO_LARGE);
                } else if !block.lost {
                    block.fragments.extend_from_slice(payload);
                }
                if header.flags & frame::flag::END_HEADERS != 0 {
                    self.end_block(dir, ts_ns, out);
                }
            }
            kind::RST_STREAM => {
                let code = complete
                    .then(|| payload.get(..4))
                    .flatten()
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                self.on_reset(header.stream, code, ts_ns, out);
            }
            kind::SETTINGS if header.flags & frame::flag::ACK == 0 && complete => {
                // The sender's decoder announces its table limit: it bounds the size updates of
                // the other direction's encoder.
                for s in payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([s[0], s[1]]);
                    let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                    match id {
                        frame::setting::HEADER_TABLE_SIZE => {
                            self.halves[1 - d].hpack.set_settings_limit(value)
                        }
                        frame::setting::MAX_FRAME_SIZE => {
                            self.halves[1 - d].framer.set_max_frame_size(value)
                        }
                        _ => {}
                    }
                }
            }
            kind::GOAWAY => {
                if complete && let Some(b) = payload.get(..4) {
                    let last = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff;
                    self.on_goaway(dir, last, ts_ns, out);
                }
            }
            // PRIORITY, PING, WINDOW_UPDATE and unknown types carry nothing exchanges need.
            _ => {}
        }
    }

    fn on_data(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        header: FrameHeader,
        payload: &[u8],
        complete: bool,
        out: &mut Vec<super::Exchange>,
    ) {
        let is_request = self.is_request(dir);
        // Padding (§6.1): the pad length is the payload's first byte.
        let padding = if header.flags & frame::flag::PADDED != 0 {
            payload.first().map_or(1, |p| 1 + u64::from(*p))
        } else {
            0
        };
        let body = u64::from(header.length).saturating_sub(padding);
        let Some(stream) = self.streams.get_mut(&header.stream) else {
            return;
        };
        if is_request {
            stream.request_bytes += body;
        } else {
            stream.response_bytes += body;
        }
        let _ = complete;
        if header.flags & frame::flag::END_STREAM != 0 && !is_request {
            self.finish(header.stream, ts_ns, out);
        }
    }

    /// Forgets the block in progress of half `d`: its fields are unknown, and so is the table.
    fn lose_block(&mut self, d: usize) {
        if let Some(block) = self.halves[d].block.take() {
            self.count(reason::HEADER_BLOCK_LOST);
            if let Some(s) = self.streams.get_mut(&block.stream) {
                s.truncated = true;
                s.uncertain = true;
            }
        }
        self.halves[d].hpack.lose_state();
    }

    fn end_block(&mut self, dir: Direction, ts_ns: u64, out: &mut Vec<super::Exchange>) {
        let d = di(dir);
        let Some(block) = self.halves[d].block.take() else {
            return;
        };
        if block.lost {
            self.halves[d].block = Some(block);
            self.lose_block(d);
            return;
        }
        let mut fields = std::mem::take(&mut self.fields);
        fields.clear();
        let decoded = self.halves[d]
            .hpack
            .decode(&block.fragments, |name, value| {
                let name = match name {
                    Text::Known(n) => match field_name(n) {
                        Some(n) => n,
                        None => return,
                    },
                    Text::Unknown => FieldName::Unknown,
                };
                let value = match value {
                    Text::Known(v) => FieldValue::Known(String::from_utf8_lossy(v).into_owned()),
                    Text::Unknown => FieldValue::Unknown,
                };
                fields.push((name, value));
            });
        if let Err(e) = decoded {
            self.count(e.reason());
            self.fields = fields;
            if let Some(s) = self.streams.get_mut(&block.stream) {
                s.uncertain = true;
            }
            return;
        }
        if !block.push {
            if self.is_request(dir) {
                self.request_headers(&block, &fields, out);
            } else {
                self.response_headers(&block, &fields, ts_ns, out);
            }
        }
        self.fields = fields;
    }

    fn request_headers(
        &mut self,
        block: &Block,
        fields: &[(FieldName, FieldValue)],
        _out: &mut [super::Exchange],
    ) {
        if let Some(stream) = self.streams.get_mut(&block.stream) {
            // Trailers of the request (§8.1): nothing the exchange needs.
            let _ = stream;
            return;
        }
        let unknown_field = fields.iter().any(|(n, _)| *n == FieldName::Unknown);
        let mut s = Stream {
            start_ns: block.ts_ns,
            ..Stream::default()
        };
        for (name, value) in fields {
            let FieldValue::Known(v) = value else {
                s.request_unknown |= matches!(
                    name,
                    FieldName::Method | FieldName::Path | FieldName::ContentType
                );
                continue;
            };
            match name {
                FieldName::Method => s.method = Some(http1::method_name(v)),
                FieldName::Path => s.path = Some(path_of(v)),
                FieldName::ContentType => s.grpc = v.starts_with("application/grpc"),
                FieldName::GrpcTimeout => s.timeout_ns = grpc_timeout_ns(v),
                FieldName::Context(k) if s.headers.len() < 16 => {
                    let mut v = v.clone();
                    truncate_at_char(&mut v, http1::MAX_HEADER_VALUE_BYTES);
                    s.headers.push((k, v));
                }
                _ => {}
            }
        }
        // An unknown name may hide content-type (gRPC or not), unless that was decoded: a
        // request has one. (Pseudo-header fields come first and once, RFC 9113 §8.3: unknown
        // ones leave `:method` or `:path` missing.)
        let content_type_known = fields
            .iter()
            .any(|(n, v)| *n == FieldName::ContentType && matches!(v, FieldValue::Known(_)));
        if unknown_field && (!content_type_known || s.method.is_none() || s.path.is_none()) {
            s.request_unknown = true;
        }
        if (s.method.is_none() || s.path.is_none()) && !s.request_unknown {
            self.count(reason::MISSING_PSEUDO_HEADER);
            return;
        }
        if self.streams.len() >= MAX_STREAMS
            && let Some(old) = self.order.pop_front()
        {
            self.streams.remove(&old);
            self.count(reason::TOO_MANY_STREAMS);
        }
        self.order.push_back(block.stream);
        self.streams.insert(block.stream, s);
    }

    fn response_headers(
        &mut self,
        block: &Block,
        fields: &[(FieldName, FieldValue)],
        ts_ns: u64,
        out: &mut Vec<super::Exchange>,
    ) {
        let Some(stream) = self.streams.get_mut(&block.stream) else {
            // Trailers after a reset, or an answer after the GOAWAY that ended the stream: not
            // a stream this observer missed.
            // A pushed response (an even, server-initiated stream, §8.4) is not a request the
            // client made: not counted either.
            if block.stream % 2 == 1 && !self.finished.contains(&block.stream) {
                self.count(reason::STREAM_NOT_SEEN);
            }
            return;
        };
        let unknown_field = fields.iter().any(|(n, _)| *n == FieldName::Unknown);
        let mut missing_status = false;
        let mut status = None;
        let mut status_unknown = false;
        for (name, value) in fields {
            match (name, value) {
                (FieldName::Status, FieldValue::Known(v)) => status = v.parse::<u16>().ok(),
                (FieldName::Status, FieldValue::Unknown) => status_unknown = true,
                (FieldName::GrpcStatus, FieldValue::Known(v)) => {
                    stream.grpc_status = v.trim().parse::<u16>().ok();
                    stream.grpc_status_unknown = stream.grpc_status.is_none();
                }
                (FieldName::GrpcStatus, FieldValue::Unknown) => stream.grpc_status_unknown = true,
                _ => {}
            }
        }
        if !stream.responded {
            match status {
                // Informational (1xx): a final response follows (§8.1).
                Some(s) if s < 200 => return,
                Some(s) => {
                    stream.status = Some(s);
                    stream.responded = true;
                }
                None => {
                    stream.responded = true;
                    stream.response_unknown = true;
                    if !status_unknown && !unknown_field {
                        missing_status = true;
                    }
                }
            }
        }
        // The trailers, or a Trailers-Only response, may hide grpc-status behind an unknown
        // field.
        if stream.grpc && stream.grpc_status.is_none() && unknown_field {
            stream.grpc_status_unknown = true;
        }
        if missing_status {
            self.count(reason::MISSING_PSEUDO_HEADER);
        }
        if block.end_stream {
            self.finish(block.stream, ts_ns, out);
        }
    }

    fn on_reset(
        &mut self,
        stream_id: u32,
        code: Option<u32>,
        ts_ns: u64,
        out: &mut Vec<super::Exchange>,
    ) {
        let Some(stream) = self.streams.get_mut(&stream_id) else {
            return;
        };
        if stream.grpc && stream.grpc_status.is_none() && !stream.grpc_status_unknown {
            let elapsed = ts_ns.saturating_sub(stream.start_ns);
            stream.grpc_status = Some(match code {
                Some(code::CANCEL) if stream.timeout_ns.is_some_and(|t| elapsed >= t) => {
                    grpc_status::DEADLINE_EXCEEDED
                }
                Some(code::CANCEL) => grpc_status::CANCELLED,
                Some(code::REFUSED_STREAM) => grpc_status::UNAVAILABLE,
                Some(code::ENHANCE_YOUR_CALM) => grpc_status::RESOURCE_EXHAUSTED,
                Some(code::INADEQUATE_SECURITY) => grpc_status::PERMISSION_DENIED,
                _ => grpc_status::INTERNAL,
            });
        } else if !stream.responded {
            // Reset before any response: unanswered.
            stream.status = None;
        } else {
            stream.truncated = true;
        }
        self.finish(stream_id, ts_ns, out);
    }

    /// GOAWAY sent in `dir` with the sender's last processed stream: the peer's streams past it
    /// were never processed (§6.8).
    fn on_goaway(&mut self, dir: Direction, last: u32, ts_ns: u64, out: &mut Vec<super::Exchange>) {
        // Only a server's GOAWAY speaks of the client's (request) streams.
        if self.is_request(dir) {
            return;
        }
        let refused: Vec<u32> = self
            .streams
            .keys()
            .copied()
            .filter(|id| *id > last)
            .collect();
        for id in refused {
            if let Some(s) = self.streams.get_mut(&id) {
                s.responded = false;
                s.status = None;
            }
            self.finish(id, ts_ns, out);
        }
    }

    /// The stream ended: its exchange, if everything it needs was decoded.
    fn finish(&mut self, id: u32, end_ns: u64, out: &mut Vec<super::Exchange>) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        if self.finished.len() >= RECENTLY_FINISHED {
            self.finished.pop_front();
        }
        self.finished.push_back(id);
        if let Some(i) = self.order.iter().position(|x| *x == id) {
            self.order.remove(i);
        }
        if s.request_unknown || s.response_unknown || (s.grpc && s.grpc_status_unknown) {
            self.count(reason::HPACK_UNKNOWN_INDEX);
            return;
        }
        let (Some(method), Some(path)) = (s.method, s.path) else {
            return;
        };
        let answered = s.responded;
        let (outcome, attributes) = if s.grpc {
            let status = if answered || s.grpc_status.is_some() {
                Some(
                    s.grpc_status
                        .unwrap_or_else(|| grpc_from_http(s.status.unwrap_or(200))),
                )
            } else {
                None
            };
            let outcome = match status {
                None => super::Outcome::NoResponse,
                Some(grpc_status::OK) => super::Outcome::Ok,
                Some(c) if grpc_status::is_server_error(c) => super::Outcome::ServerError,
                Some(_) => super::Outcome::ClientError,
            };
            let (service, method) = grpc_names(&path);
            (
                outcome,
                super::Attributes::Http2(Attributes {
                    service,
                    method,
                    status,
                }),
            )
        } else {
            let status = if answered { s.status } else { None };
            let outcome = match status {
                None => super::Outcome::NoResponse,
                Some(c) if c >= 500 => super::Outcome::ServerError,
                Some(c) if c >= 400 => super::Outcome::ClientError,
                Some(_) => super::Outcome::Ok,
            };
            (
                outcome,
                super::Attributes::Http1(http1::Attributes {
                    method,
                    path,
                    status,
                    version: http1::Version::Http2,
                }),
            )
        };
        let context = if s.headers.is_empty() {
            super::context::Found::None
        } else {
            super::context::extract(&s.headers)
        };
        out.push(super::Exchange {
            start_ns: s.start_ns,
            end_ns,
            outcome,
            truncated: s.truncated,
            request_bytes: s.request_bytes,
            response_bytes: s.response_bytes,
            context,
            attributes,
        });
    }

    /// Events were lost in `dir`, or its framing was: every open stream may have missed its
    /// end, and the table its insertions.
    fn lost(&mut self, d: usize) {
        if self.halves[d].block.is_some() {
            self.lose_block(d);
        }
        self.halves[d].hpack.lose_state();
        for s in self.streams.values_mut() {
            s.uncertain = true;
        }
    }
}

/// `/package.Service/Method` -> (`package.Service`, `Method`); anything else is kept whole as
/// the service with an empty method.
fn grpc_names(path: &str) -> (String, String) {
    let p = path.strip_prefix('/').unwrap_or(path);
    match p.rsplit_once('/') {
        Some((service, method)) if !service.is_empty() && !method.is_empty() => {
            (service.to_string(), method.to_string())
        }
        _ => (p.to_string(), String::new()),
    }
}

/// The gRPC status of a response without one, from its HTTP status
/// (grpc/doc/http-grpc-status-mapping.md).
fn grpc_from_http(status: u16) -> u16 {
    match status {
        400 => grpc_status::INTERNAL,
        401 => grpc_status::UNAUTHENTICATED,
        403 => grpc_status::PERMISSION_DENIED,
        404 => grpc_status::UNIMPLEMENTED,
        429 | 502 | 503 | 504 => grpc_status::UNAVAILABLE,
        // A 200 without grpc-status: the server ended the call without its status.
        200 => grpc_status::INTERNAL,
        _ => grpc_status::UNKNOWN,
    }
}

/// `grpc-timeout`: up to eight digits and a unit (H, M, S, m, u, n), in ns.
fn grpc_timeout_ns(v: &str) -> Option<u64> {
    let v = v.trim();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let scale: u64 = match unit {
        "H" => 3_600_000_000_000,
        "M" => 60_000_000_000,
        "S" => 1_000_000_000,
        "m" => 1_000_000,
        "u" => 1_000,
        "n" => 1,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// The path without query or fragment, at most [`MAX_PATH_BYTES`].
fn path_of(v: &str) -> String {
    let end = v.find(['?', '#']).unwrap_or(v.len());
    let mut p = v[..end].to_string();
    if p.is_empty() {
        p.push('/');
    }
    truncate_at_char(&mut p, MAX_PATH_BYTES);
    p
}

fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
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
        if self.closed {
            return Ok(());
        }
        let (payload, uncaptured) = super::captured(payload, bytes);
        if !self.started {
            self.started = true;
            // Detected from its preface, or from frames on a connection found mid-stream: then
            // both header tables hold state this observer did not see.
            let n = payload.len().min(PREFACE.len());
            let preface = self.is_request(dir) && n > 0 && payload[..n] == PREFACE[..n];
            let server_preface = !self.is_request(dir) && frame::starts_with_settings(payload);
            if !preface && !server_preface {
                *self = Self::with_state(self.side, false);
                self.started = true;
            }
        }
        let d = di(dir);
        let mut frames = std::mem::take(&mut self.halves[d].framer);
        let mut lost_framing = false;
        let mut bad_frame = false;
        frames.feed(ts_ns, payload, uncaptured, |event| match event {
            frame::Event::Frame {
                header,
                payload,
                complete,
                first_ts,
            } => self.on_frame(dir, ts_ns, first_ts, header, payload, complete, out),
            frame::Event::Lost => lost_framing = true,
            frame::Event::BadFrame => bad_frame = true,
        });
        self.halves[d].framer = frames;
        if lost_framing || bad_frame {
            self.count(if bad_frame {
                reason::BAD_FRAME
            } else {
                reason::FRAMING_LOST
            });
            self.lost(d);
        }
        Ok(())
    }

    fn gap(&mut self, dir: Direction) {
        let d = di(dir);
        self.halves[d].framer.lose();
        self.lost(d);
    }

    fn close(&mut self, ts_ns: u64, out: &mut Vec<super::Exchange>) {
        if self.closed {
            return;
        }
        self.closed = true;
        let open: Vec<u32> = self.order.iter().copied().collect();
        for id in open {
            let uncertain = self.streams.get(&id).is_some_and(|s| s.uncertain);
            if uncertain {
                self.streams.remove(&id);
                self.count(reason::STREAM_END_LOST);
                continue;
            }
            if let Some(s) = self.streams.get_mut(&id)
                && s.responded
            {
                // The response started but never ended.
                s.truncated = true;
            }
            self.finish(id, ts_ns, out);
        }
        self.order.clear();
    }

    fn in_flight(&self) -> bool {
        !self.streams.is_empty()
    }

    fn is_dead(&self) -> bool {
        self.closed
    }

    fn take_errors(&mut self, count: &mut dyn FnMut(&'static str, u64)) {
        for (reason, n) in self.errors.drain(..) {
            count(reason, n);
        }
    }
}
