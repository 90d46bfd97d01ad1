//! L7 protocols: payload prefixes of a connection's read/write syscalls in, one protocol-neutral
//! [`Exchange`] per request/response pair out.
//!
//! Input model: for each TCP connection one side is observed (the "observer", client or server
//! role). Every read/write syscall becomes a chunk with the exact byte count it moved (`bytes`)
//! and only the first `min(bytes, capture)` bytes of it (`payload`). The uncaptured tail did
//! pass on the wire, so parsers skip it by count and resynchronise when framing falls into it.
//! Events of one connection arrive in order; lost events are signalled with [`Parser::gap`].
//! A connection's [`session::Session`] detects its protocol and drives its parser.
//!
//! Every parser is fed attacker-controlled bytes: none may panic, and every buffer is bounded.
//!
//! **Adding a protocol** is a folder `protocol/<name>/` and one line in [`registry!`] below. The
//! folder's `mod.rs` provides:
//! - `NAME`: its label value in `meshtap_protocol_detected_total{protocol}` and the like;
//! - `fn detect(side: Side, dir: Direction, first: &[u8], midstream: bool) -> Verdict`: a
//!   cheap look at the first bytes of a connection (any port); `midstream` when the connection
//!   was open before the agent, so that its first bytes seen may be any message's;
//! - `struct Parser` with `fn new(side: Side) -> Self`, implementing [`Parser`];
//! - `struct Attributes`, implementing [`ProtocolAttributes`]: what its exchanges carry beyond
//!   the neutral fields, and their span name, span attributes and error type;
//! - `struct Red`, implementing [`RedMetrics`]: its request metrics (families, labels, series
//!   bounds), fed with each exchange.
//!
//! Nothing outside the folder changes: the session, the pairing of both ends, the service graph,
//! span assembly and every exporter work on the neutral [`Exchange`].

pub mod context;
pub mod db;
pub mod http1;
pub mod http2;
pub mod memcached;
pub mod mysql;
pub mod postgres;
pub mod redis;
#[cfg(test)]
pub mod replay;
pub mod session;

use std::{borrow::Cow, net::SocketAddr, sync::Arc};

pub use crate::event::Direction;
use crate::{metadata::pod::PodMeta, metrics::Registry, semconv::Attribute};

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

/// How an exchange ended, as its protocol's parser decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered, successfully.
    Ok,
    /// Answered with an error the protocol blames on the request (HTTP 4xx).
    ClientError,
    /// Answered with an error the protocol blames on the server (HTTP 5xx).
    ServerError,
    /// The connection closed (or was reset) before a response was seen.
    NoResponse,
}

impl Outcome {
    /// Whether the exchange failed, seen from `side` (OpenTelemetry's rule for RPCs): a server
    /// failed when it answered with a server error; a client failed also when no answer came.
    pub fn failed(self, side: Side) -> bool {
        match side {
            Side::Server => self == Outcome::ServerError,
            Side::Client => matches!(self, Outcome::ServerError | Outcome::NoResponse),
        }
    }
}

/// One request and its response, whatever the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// Timestamp (monotonic ns) of the syscall that carried the first request byte.
    pub start_ns: u64,
    /// Timestamp of the syscall that carried the last response byte, or the close time when
    /// there was no response.
    pub end_ns: u64,
    pub outcome: Outcome,
    /// A message was not seen whole (its head did not fit the capture, or the connection closed
    /// in its body): what the protocol names is known, sizes are best effort.
    pub truncated: bool,
    /// Payload sizes of the request and the response (HTTP: the bodies).
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// The trace context the request carried (W3C `traceparent`, B3), if any.
    pub context: context::Found,
    /// What the protocol adds.
    pub attributes: Attributes,
}

impl Exchange {
    /// Whether it failed, seen from `side` (see [`Outcome::failed`]).
    pub fn failed(&self, side: Side) -> bool {
        self.outcome.failed(side)
    }

    /// Whether its connection carries many exchanges at once (HTTP/2 streams): then the
    /// thread that did its I/O serves other requests in the same time window, and a request
    /// made by that thread cannot be tied to this one by time.
    pub fn multiplexed(&self) -> bool {
        match &self.attributes {
            Attributes::Http2(_) => true,
            Attributes::Http1(a) => a.version == http1::Version::Http2,
            _ => false,
        }
    }

    /// What went wrong, low-cardinality: `no response`, or the protocol's error type (an HTTP
    /// status code, a SQLSTATE...).
    pub fn error_type(&self) -> Cow<'static, str> {
        match self.outcome {
            Outcome::NoResponse => Cow::Borrowed("no response"),
            _ => self.attributes.error_type(),
        }
    }
}

/// Why a parser rejected its input: the protocol's stable reason, the label value of
/// `meshtap_parse_errors_total{protocol,reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ParseError {
    pub reason: &'static str,
}

/// A chunk's captured prefix, never longer than what the syscall moved, and the count of bytes
/// that moved uncaptured (skipped by count: they passed on the wire unseen).
pub fn captured(payload: &[u8], bytes: u64) -> (&[u8], u64) {
    let payload = payload
        .get(
            ..usize::try_from(bytes)
                .unwrap_or(usize::MAX)
                .min(payload.len()),
        )
        .unwrap_or(&[]);
    (payload, bytes.saturating_sub(payload.len() as u64))
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

    /// Hands over what the parser counted since the last call, by
    /// `meshtap_parse_errors_total` reason, for a parser that can meet more than one problem
    /// per chunk (the error [`feed`](Self::feed) returns is one).
    fn take_errors(&mut self, _count: &mut dyn FnMut(&'static str, u64)) {}

    /// The connection switched protocols in the chunk just fed (HTTP/1.1 `Upgrade: h2c`): the
    /// parser that takes over, and the rest of that chunk, which is already its.
    fn take_upgrade(&mut self) -> Option<Upgrade> {
        None
    }

    /// Between messages: the few words this parser needs to go on, so that a connection does
    /// not hold a parser while it is idle. The session then drops the parser and makes it again
    /// at the connection's next byte ([`new_parser`], then [`resume`](Self::resume)). `None`
    /// (the default) while anything is in flight, or for a parser that does not rest.
    fn rest(&self) -> Option<Rest> {
        None
    }

    /// Takes up, on a new parser, from what [`rest`](Self::rest) returned.
    fn resume(&mut self, _rest: Rest) {}
}

/// What a parser between messages keeps (see [`Parser::rest`]), in words only it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rest(pub [u64; 5]);

/// A parser handing its connection over to another protocol's.
pub struct Upgrade {
    pub protocol: Protocol,
    pub parser: Box<dyn Parser>,
    /// The chunk's captured bytes after the switch, and how many more moved uncaptured.
    pub rest: Vec<u8>,
    pub rest_uncaptured: u64,
}

/// What one protocol's detector says of a connection's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Yes,
    /// A strict prefix of a plausible start: more bytes are needed to tell.
    Prefix,
    No,
}

/// What the first captured bytes of a connection say about its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    Found(Protocol),
    /// Not a protocol with a parser (TLS, binary, or text of another protocol).
    Unknown,
    /// Too few bytes to tell: try again with the next chunk.
    NeedMore,
}

/// What spans may carry, as configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanOptions {
    /// `db.query.text`: off, sanitized (the default) or raw (`--db-query-text`).
    pub db_query_text: db::QueryText,
}

/// What a protocol's exchanges carry beyond the neutral fields, for spans and logs.
pub trait ProtocolAttributes {
    /// Appends the low-cardinality span name (`get /users/*`, `SELECT orders`) to `out`: the
    /// caller reuses its buffer (the web page's table names every exchange).
    fn span_name_into(&self, out: &mut String);
    /// The span name, owned (the tests' golden checks).
    #[cfg(test)]
    fn span_name(&self) -> String {
        let mut name = String::new();
        self.span_name_into(&mut name);
        name
    }
    /// Span attributes, semantic-convention keys, in a stable order.
    fn span_attributes(&self, options: &SpanOptions, out: &mut Vec<Attribute>);
    /// The error type of a failed exchange that was answered (see [`Exchange::error_type`]).
    fn error_type(&self) -> Cow<'static, str>;
}

/// What a request metric needs to know of an exchange besides the exchange itself: the
/// observing process's names and the server's address.
pub struct Observation<'a> {
    pub side: Side,
    pub service: &'a Arc<str>,
    pub pod: Option<&'a Arc<PodMeta>>,
    /// The server's address as text, when the caller formatted it already.
    pub server_address: Option<&'a Arc<str>>,
    pub server: SocketAddr,
    pub now_ns: u64,
}

/// Settings every protocol's request metrics share.
#[derive(Clone, Debug)]
pub struct RedSettings {
    pub duration_buckets: Vec<f64>,
    /// Label sets per family before overflow.
    pub max_series: usize,
}

/// A protocol's request metrics: rate, errors and duration of its exchanges.
pub trait RedMetrics {
    type Attributes;
    /// Declares and registers the protocol's families.
    fn new(registry: &Registry, settings: &RedSettings) -> Self;
    fn observe(&mut self, exchange: &Exchange, attributes: &Self::Attributes, at: &Observation);
    /// Removes the label sets not updated since `now_ns - ttl_ns`, counting them.
    fn expire(&mut self, now_ns: u64, ttl_ns: u64, registry: &Registry);
}

/// The protocol registry: one line per protocol, its enum variant and its folder, in
/// detection order. Everything that names protocols is generated from it.
macro_rules! registry {
    ($($variant:ident => $module:ident),+ $(,)?) => {
        /// The L7 protocols with a parser.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Protocol {
            $($variant),+
        }

        impl Protocol {
            pub const ALL: &'static [Protocol] = &[$(Protocol::$variant),+];

            /// Label value of the protocol in metrics.
            pub fn name(self) -> &'static str {
                match self {
                    $(Protocol::$variant => $module::NAME),+
                }
            }
        }

        /// The protocol-specific part of an exchange.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Attributes {
            $($variant($module::Attributes)),+
        }

        impl Attributes {
            fn as_dyn(&self) -> &dyn ProtocolAttributes {
                match self {
                    $(Attributes::$variant(a) => a),+
                }
            }

            pub fn span_name(&self) -> String {
                let mut name = String::new();
                self.span_name_into(&mut name);
                name
            }

            pub fn span_name_into(&self, out: &mut String) {
                self.as_dyn().span_name_into(out)
            }

            /// The protocol these attributes are of.
            pub fn protocol(&self) -> Protocol {
                match self {
                    $(Attributes::$variant(_) => Protocol::$variant),+
                }
            }

            pub fn span_attributes(&self, options: &SpanOptions, out: &mut Vec<Attribute>) {
                self.as_dyn().span_attributes(options, out)
            }

            pub fn error_type(&self) -> Cow<'static, str> {
                self.as_dyn().error_type()
            }
        }

        /// Cheap protocol detection from the first payload seen on a connection: the first
        /// protocol (in registry order) that says yes; `NeedMore` while one might.
        pub fn detect(
            side: Side,
            dir: Direction,
            first_payload: &[u8],
            midstream: bool,
        ) -> Detection {
            if first_payload.is_empty() {
                return Detection::NeedMore;
            }
            let mut need_more = false;
            $(
                match $module::detect(side, dir, first_payload, midstream) {
                    Verdict::Yes => return Detection::Found(Protocol::$variant),
                    Verdict::Prefix => need_more = true,
                    Verdict::No => {}
                }
            )+
            if need_more { Detection::NeedMore } else { Detection::Unknown }
        }

        /// A parser for `protocol`, observing the `side` role of a connection.
        pub fn new_parser(protocol: Protocol, side: Side) -> Box<dyn Parser> {
            match protocol {
                $(Protocol::$variant => Box::new($module::Parser::new(side))),+
            }
        }

        /// Every protocol's request metrics.
        pub struct Red {
            $($module: $module::Red),+
        }

        impl Red {
            pub fn new(registry: &Registry, settings: &RedSettings) -> Self {
                Red {
                    $($module: <$module::Red as RedMetrics>::new(registry, settings)),+
                }
            }

            pub fn observe(&mut self, exchange: &Exchange, at: &Observation) {
                match &exchange.attributes {
                    $(Attributes::$variant(a) => self.$module.observe(exchange, a, at)),+
                }
            }

            pub fn expire(&mut self, now_ns: u64, ttl_ns: u64, registry: &Registry) {
                $(self.$module.expire(now_ns, ttl_ns, registry);)+
            }
        }
    };
}

registry! {
    // Add a protocol below: `Variant => folder`.
    Http1 => http1,
    Http2 => http2,
    Postgresql => postgres,
    Mysql => mysql,
    // Before Redis: its inline commands include lowercase `get k`, Memcached's protocol.
    Memcached => memcached,
    Redis => redis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_requests_responses_and_binary() {
        use Direction::{Egress, Ingress};
        use Side::{Client, Server};
        const HTTP1: Detection = Detection::Found(Protocol::Http1);
        const REDIS: Detection = Detection::Found(Protocol::Redis);
        const MEMCACHED: Detection = Detection::Found(Protocol::Memcached);
        let cases: &[(Side, Direction, &[u8], Detection)] = &[
            (Server, Ingress, b"GET / HTTP/1.1\r\n", HTTP1),
            (Server, Ingress, b"GET /x", HTTP1),
            (Client, Egress, b"POST /api HTTP/1.1\r\n", HTTP1),
            (Client, Egress, b"OPTIONS * HTTP/1.1\r\n", HTTP1),
            (Client, Egress, b"CONNECT h:443 HTTP/1.1\r\n", HTTP1),
            (Server, Egress, b"HTTP/1.1 200 OK\r\n", HTTP1),
            (Client, Ingress, b"HTTP/1.0 404 Not Found\r\n", HTTP1),
            (Server, Ingress, b"GE", Detection::NeedMore),
            (Server, Ingress, b"GET ", Detection::NeedMore),
            (Client, Ingress, b"HTTP/", Detection::NeedMore),
            (Server, Ingress, b"", Detection::NeedMore),
            // Not HTTP; a Redis inline command until its line ends.
            (Server, Ingress, b"GET  /", Detection::NeedMore),
            (Server, Ingress, b"GET  /\x01", Detection::Unknown),
            // Methods are case-sensitive: this is not HTTP, but an inline command's words.
            (Server, Ingress, b"get / HTTP/1.1\r\n", MEMCACHED),
            (Server, Ingress, b"set k 0 0 1\r\nx\r\n", MEMCACHED),
            (Client, Ingress, b"VALUE k 0 1\r\n", MEMCACHED),
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
                Detection::Found(Protocol::Http2),
            ),
            (Client, Egress, b"PRI * HTTP/2.0\r\n", Detection::NeedMore),
            // The preface is the client's: a client does not read it.
            (
                Client,
                Ingress,
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                Detection::Unknown,
            ),
            (Server, Ingress, b"*1\r\n$4\r\nPING\r\n", REDIS),
            (Client, Egress, b"*3\r\n$3\r\nSET\r\n", REDIS),
            (Client, Egress, b"*1\r", Detection::NeedMore),
            (Server, Ingress, b"*x\r\n", Detection::Unknown),
            // An inline Redis GET is not an HTTP request; an HTTP one stays HTTP.
            (Server, Ingress, b"GET user:1\r\n", REDIS),
            (Server, Ingress, b"GET /user:1 HTTP/1.1\r\n", HTTP1),
            (Server, Ingress, b"GET http://h/ HTTP/1.1\r\n", HTTP1),
            (Server, Ingress, b"PING\r\n", REDIS),
            (Server, Ingress, b"GET / FTP\r\n", REDIS),
            (Client, Ingress, b"+OK\r\n", REDIS),
            (Client, Ingress, b"-ERR unknown command\r\n", REDIS),
            (Client, Ingress, b"$5\r\nhello\r\n", REDIS),
            (
                Client,
                Ingress,
                b"+OK POP3 server ready\r\n",
                Detection::Unknown,
            ),
            (Client, Ingress, b"-err\r\n", Detection::Unknown),
            // A PostgreSQL SSLRequest.
            (
                Server,
                Ingress,
                b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
                Detection::Found(Protocol::Postgresql),
            ),
            (Server, Ingress, b"\x00\x00\x00", Detection::NeedMore),
            (Server, Ingress, b"\x00\x01\x00\x08", Detection::Unknown),
            // Wrong direction for the role: a server does not read responses.
            (Server, Ingress, b"HTTP/1.1 200 OK\r\n", Detection::Unknown),
            (Client, Ingress, b"GET / HTTP/1.1\r\n", Detection::Unknown),
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
    fn failed_is_decided_by_outcome_and_side() {
        use Outcome::*;
        for (outcome, server, client) in [
            (Ok, false, false),
            (ClientError, false, false),
            (ServerError, true, true),
            (NoResponse, false, true),
        ] {
            assert_eq!(outcome.failed(Side::Server), server, "{outcome:?}");
            assert_eq!(outcome.failed(Side::Client), client, "{outcome:?}");
        }
    }

    #[test]
    fn protocol_names() {
        assert_eq!(Protocol::Http1.name(), "http");
        assert_eq!(Protocol::Http2.name(), "http2");
        assert_eq!(Protocol::Postgresql.name(), "postgresql");
        assert_eq!(Protocol::Mysql.name(), "mysql");
        assert_eq!(Protocol::Redis.name(), "redis");
        assert_eq!(Protocol::Memcached.name(), "memcached");
        assert_eq!(
            Protocol::ALL,
            &[
                Protocol::Http1,
                Protocol::Http2,
                Protocol::Postgresql,
                Protocol::Mysql,
                Protocol::Memcached,
                Protocol::Redis
            ]
        );
    }
}
