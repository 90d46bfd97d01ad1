//! MySQL and MariaDB: the client/server protocol
//! (<https://dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html>), incremental and per
//! direction.
//!
//! Framing: every message is one or more packets, a 3-byte little-endian payload length and a
//! 1-byte sequence id; a payload of exactly 0xFFFFFF bytes continues in the next packet. Each
//! direction is a [`Framer`] that keeps only the head of each packet (a command's text up to
//! [`db::MAX_QUERY_BYTES`], a few bytes of a response packet) and skips the rest by count, so the
//! uncaptured tail of a syscall is skipped exactly as long as it falls inside a packet body.
//!
//! The server speaks first: detection is the HandshakeV10 greeting, written by a server and read
//! by a client. A connection first seen mid-stream never shows one, so it is never parsed:
//! nothing is invented. The client's HandshakeResponse gives the capabilities both ends use
//! (`CLIENT_DEPRECATE_EOF`, MariaDB's metadata cache) and the database; an SSLRequest (the client
//! switches to TLS) or the compressed protocol end parsing, counted as `tls` or `compressed`.
//!
//! Commands and responses pair in order (the protocol is request/response; commands without a
//! response, `COM_STMT_CLOSE`, `COM_STMT_SEND_LONG_DATA` and `COM_QUIT`, are not exchanges).
//! A response is one packet (OK, ERR, EOF) or a result set (column count, column definitions,
//! an EOF unless `CLIENT_DEPRECATE_EOF`, rows, then EOF or OK); `SERVER_MORE_RESULTS_EXISTS` in a
//! terminator's status keeps the exchange open for the next result set. An ERR packet is a
//! server error whose status code is its error number.
//!
//! Where the framing falls into uncaptured bytes (a response longer than the capture, written in
//! one syscall), the response is followed no further: it ends, truncated, with the last response
//! syscall before the client's next command (or the close). After lost events (a gap) every
//! command awaiting its response is dropped: the request direction resynchronises at the next
//! syscall that starts with a command, the response direction at the next one after it.

use std::{borrow::Cow, collections::VecDeque, sync::Arc};

use super::{
    Direction, Exchange, Outcome, Side, Verdict,
    context::Found,
    db::{self, DbAttributes, System},
};

#[cfg(test)]
mod tests;

/// Label value of the protocol in metrics.
pub const NAME: &str = "mysql";

pub type Attributes = super::db::DbAttributes;
pub type Red = super::db::DbRed;

/// Bytes of a packet header: payload length (3, little-endian) and sequence id.
const HEADER_BYTES: usize = 4;
/// A payload of this length continues in the next packet.
const MAX_PAYLOAD: u32 = 0xFF_FFFF;
/// HandshakeV10's protocol version byte.
const PROTOCOL_V10: u8 = 10;
/// Shortest greeting: protocol version, a one-character version string and its NUL, connection
/// id (4), auth data part 1 (8), filler (1), capability flags (2).
const MIN_GREETING: u32 = 18;
/// Longest greeting accepted by detection.
const MAX_GREETING: u32 = 1024;
/// Longest server version string accepted by detection.
const MAX_VERSION_BYTES: usize = 128;
/// Bytes kept of a greeting (version string, capabilities, MariaDB's extended capabilities).
const GREETING_KEEP: usize = 192;
/// Bytes kept of other server packets: enough for an OK, EOF or ERR packet's numbers.
const RESPONSE_KEEP: usize = 64;
/// Bytes kept of a client packet: the command byte and its text.
const COMMAND_KEEP: usize = 1 + db::MAX_QUERY_BYTES;
/// Commands awaiting a response on one connection.
pub const MAX_PENDING: usize = 32;
/// Prepared statements remembered per connection (the oldest is forgotten first).
pub const MAX_STATEMENTS: usize = 64;
/// Errors in a row, without a good response between them, before giving up.
const MAX_CONSECUTIVE_ERRORS: u32 = 8;

/// Capability flags (`CLIENT_*`); MariaDB's extended ones are the upper 32 bits.
mod cap {
    pub const CONNECT_WITH_DB: u64 = 1 << 3;
    pub const COMPRESS: u64 = 1 << 5;
    pub const PROTOCOL_41: u64 = 1 << 9;
    pub const SSL: u64 = 1 << 11;
    pub const SECURE_CONNECTION: u64 = 1 << 15;
    pub const PLUGIN_AUTH_LENENC_DATA: u64 = 1 << 21;
    pub const DEPRECATE_EOF: u64 = 1 << 24;
    pub const OPTIONAL_RESULTSET_METADATA: u64 = 1 << 25;
    pub const ZSTD_COMPRESSION: u64 = 1 << 26;
    /// `CLIENT_MYSQL` (bit 0): clear in a MariaDB server's greeting and client's response when
    /// they carry the extended capabilities.
    pub const MYSQL: u64 = 1;
    pub const MARIADB_CACHE_METADATA: u64 = 1 << (32 + 4);
}

/// Server status flags of OK and EOF packets.
mod status {
    pub const MORE_RESULTS_EXISTS: u16 = 0x0008;
    pub const CURSOR_EXISTS: u16 = 0x0040;
}

/// Command bytes (`COM_*`).
mod com {
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const FIELD_LIST: u8 = 0x04;
    pub const CREATE_DB: u8 = 0x05;
    pub const DROP_DB: u8 = 0x06;
    pub const REFRESH: u8 = 0x07;
    pub const SHUTDOWN: u8 = 0x08;
    pub const STATISTICS: u8 = 0x09;
    pub const PROCESS_INFO: u8 = 0x0A;
    pub const PROCESS_KILL: u8 = 0x0C;
    pub const DEBUG: u8 = 0x0D;
    pub const PING: u8 = 0x0E;
    pub const CHANGE_USER: u8 = 0x11;
    pub const BINLOG_DUMP: u8 = 0x12;
    pub const TABLE_DUMP: u8 = 0x13;
    pub const REGISTER_SLAVE: u8 = 0x15;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1A;
    pub const SET_OPTION: u8 = 0x1B;
    pub const STMT_FETCH: u8 = 0x1C;
    pub const BINLOG_DUMP_GTID: u8 = 0x1E;
    pub const RESET_CONNECTION: u8 = 0x1F;
    /// MariaDB's `COM_STMT_BULK_EXECUTE`: answered like `COM_STMT_EXECUTE`.
    pub const STMT_BULK_EXECUTE: u8 = 0xFA;
}

/// Why the parser stopped or skipped input: the label value of
/// `meshtap_parse_errors_total{protocol="mysql",reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the client switched to TLS")]
    Tls,
    #[error("the compressed protocol was negotiated")]
    Compressed,
    #[error("a pre-4.1 handshake")]
    OldProtocol,
    #[error("a replication stream")]
    Replication,
    #[error("malformed handshake")]
    BadHandshake,
    #[error("the handshake was not captured")]
    HandshakeNotCaptured,
    #[error("unknown command")]
    BadCommand,
    #[error("unexpected sequence id")]
    Sequence,
    #[error("response seen without its command")]
    ResponseWithoutRequest,
    #[error("more than {MAX_PENDING} commands await a response")]
    TooManyPending,
    #[error("too many errors in a row")]
    Garbage,
}

impl ParseError {
    /// Short stable label value.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::Tls => "tls",
            ParseError::Compressed => "compressed",
            ParseError::OldProtocol => "old_protocol",
            ParseError::Replication => "replication",
            ParseError::BadHandshake => "bad_handshake",
            ParseError::HandshakeNotCaptured => "handshake_not_captured",
            ParseError::BadCommand => "bad_command",
            ParseError::Sequence => "sequence",
            ParseError::ResponseWithoutRequest => "response_without_request",
            ParseError::TooManyPending => "too_many_pending",
            ParseError::Garbage => "garbage",
        }
    }
}

impl From<ParseError> for super::ParseError {
    fn from(e: ParseError) -> Self {
        super::ParseError { reason: e.reason() }
    }
}

/// Detection: the server's greeting (HandshakeV10), written by a server, read by a client.
pub fn detect(side: Side, dir: Direction, first: &[u8], _midstream: bool) -> Verdict {
    if dir == side.request_direction() {
        return Verdict::No;
    }
    greeting_verdict(first)
}

/// Does `b` start like a HandshakeV10 packet: a plausible length, sequence id 0, protocol 10, a
/// printable version string starting with a digit and ending with NUL, then (when captured) the
/// connection id, 8 bytes of auth data and a zero filler?
fn greeting_verdict(b: &[u8]) -> Verdict {
    if let Some(len) = b.get(..3) {
        let len = u24(len);
        if !(MIN_GREETING..=MAX_GREETING).contains(&len) {
            return Verdict::No;
        }
    }
    match (b.get(3), b.get(4), b.get(5)) {
        (Some(0), Some(&PROTOCOL_V10), Some(d)) if d.is_ascii_digit() => {}
        (Some(0), Some(&PROTOCOL_V10), None) | (Some(0), None, _) | (None, ..) => {
            return Verdict::Prefix;
        }
        _ => return Verdict::No,
    }
    let version = &b[5..];
    let Some(nul) = version.iter().position(|&c| c == 0) else {
        let printable = version.iter().all(|c| (0x20..0x7f).contains(c));
        return if printable && version.len() <= MAX_VERSION_BYTES {
            Verdict::Prefix
        } else {
            Verdict::No
        };
    };
    if nul > MAX_VERSION_BYTES || !version[..nul].iter().all(|c| (0x20..0x7f).contains(c)) {
        return Verdict::No;
    }
    // Connection id (4) and auth-plugin-data-part-1 (8), then a filler of 0.
    match version.get(nul + 13) {
        Some(0) | None => Verdict::Yes,
        Some(_) => Verdict::No,
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u24(b: &[u8]) -> u32 {
    u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16
}

/// A length-encoded integer at `at`: its value and the bytes it took.
fn lenenc(b: &[u8], at: usize) -> Option<(u64, usize)> {
    let first = *b.get(at)?;
    let n = match first {
        0..=0xFA => return Some((u64::from(first), 1)),
        0xFC => 2,
        0xFD => 3,
        0xFE => 8,
        _ => return None, // 0xFB is NULL, 0xFF undefined
    };
    let bytes = b.get(at + 1..at + 1 + n)?;
    let mut v = 0u64;
    for (i, byte) in bytes.iter().enumerate() {
        v |= u64::from(*byte) << (8 * i);
    }
    Some((v, 1 + n))
}

/// A NUL-terminated string at `at`: its bytes and the position after the NUL.
fn nul_str(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = b.get(at..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    Some((&rest[..end], at + end + 1))
}

/// Text from the wire, at most `max` bytes, cut at a character boundary.
fn text(bytes: &[u8], max: usize) -> String {
    let mut s = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned();
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// One packet as a [`Framer`] saw it.
struct Packet<'a> {
    seq: u8,
    /// Payload length.
    len: u32,
    /// The captured head of the payload (as much as the framer keeps).
    head: &'a [u8],
    /// Part of the kept head was not captured.
    cut: bool,
    /// The payload continues a previous packet of 0xFFFFFF bytes.
    continuation: bool,
    /// Timestamp of the syscall that carried the packet's first byte.
    start_ns: u64,
}

impl Packet<'_> {
    fn wire_bytes(&self) -> u64 {
        u64::from(self.len) + HEADER_BYTES as u64
    }
}

/// One direction's packet framing.
#[derive(Debug, Default)]
struct Framer {
    header: [u8; HEADER_BYTES],
    header_len: usize,
    /// Payload bytes left of the current packet (valid when `header_len == 4`).
    remaining: u32,
    /// The captured head of the current payload.
    head: Vec<u8>,
    keep: usize,
    cut: bool,
    start_ns: u64,
    /// The current packet continues a previous one.
    continuation: bool,
    /// The packet after the current one continues it (its length is 0xFFFFFF).
    continues: bool,
    /// The framing fell into uncaptured or lost bytes: the stream waits for a syscall that
    /// starts with a packet it can trust.
    lost: bool,
}

impl Framer {
    fn reset(&mut self) {
        *self = Framer::default();
    }

    fn len(&self) -> u32 {
        u24(&self.header)
    }

    fn seq(&self) -> u8 {
        self.header[3]
    }

    fn packet(&self) -> Packet<'_> {
        Packet {
            seq: self.seq(),
            len: self.len(),
            head: &self.head,
            cut: self.cut,
            continuation: self.continuation,
            start_ns: self.start_ns,
        }
    }

    /// Ends the current packet: the next one starts at the next byte.
    fn end_packet(&mut self) {
        self.continuation = self.continues;
        self.header_len = 0;
        self.head.clear();
        self.cut = false;
    }
}

/// Which of the connection's two directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    /// Client to server: commands.
    Client,
    /// Server to client: the greeting and responses.
    Server,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the server's greeting.
    Greeting,
    /// Waiting for the client's HandshakeResponse.
    HandshakeResponse,
    /// Authentication: until the server's OK.
    Auth,
    Command,
}

/// How a command is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// OK, ERR or EOF.
    Single,
    /// A string (`COM_STATISTICS`).
    Text,
    /// OK, ERR, LOCAL INFILE or result sets (`COM_QUERY`, `COM_STMT_EXECUTE`).
    ResultSet,
    /// `COM_STMT_PREPARE_OK` and its parameter and column definitions, or ERR.
    Prepare,
    /// Rows until EOF (`COM_STMT_FETCH`, `COM_FIELD_LIST`).
    Rows,
    /// Authentication packets until OK or ERR (`COM_CHANGE_USER`).
    UntilOkErr,
    /// Unknown: consumed until the next command, not an exchange.
    Unknown,
}

/// Where a response is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resp {
    Start,
    /// Column (or parameter) definitions left, and what follows them.
    Definitions {
        left: u64,
        then: AfterDefinitions,
    },
    /// The EOF ending metadata (without `CLIENT_DEPRECATE_EOF`).
    MetadataEof {
        then: AfterDefinitions,
    },
    Rows,
    /// After a LOCAL INFILE request, or in an authentication exchange: until OK or ERR.
    UntilOkErr,
    /// The framing was lost: the response ends unseen, before the next command.
    Lost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterDefinitions {
    Rows,
    /// A prepared statement's column definitions follow its parameter definitions.
    PrepareColumns(u16),
    Done,
}

/// What a response packet did to its exchange.
enum Step {
    More(Resp),
    Done(Outcome, Option<u16>),
}

/// What is known of a prepared statement.
#[derive(Debug, Clone)]
struct Statement {
    id: u32,
    operation: Cow<'static, str>,
    collection: Option<String>,
    query: Option<String>,
}

/// A command awaiting its response.
#[derive(Debug)]
struct Pending {
    answer: Answer,
    start_ns: u64,
    /// Timestamp of the syscall with the latest response byte.
    end_ns: u64,
    request_bytes: u64,
    response_bytes: u64,
    /// A response packet was seen.
    responded: bool,
    /// The sequence id of the response's first packet: one past the command's last packet's
    /// (unknown when the command's framing was lost).
    first_seq: Option<u8>,
    truncated: bool,
    operation: Cow<'static, str>,
    collection: Option<String>,
    query: Option<String>,
    context: Found,
    /// The database a successful `COM_INIT_DB` or `USE` switches to.
    new_namespace: Option<Arc<str>>,
}

/// The registry's parser.
pub struct Parser {
    side: Side,
    phase: Phase,
    client: Framer,
    server: Framer,
    /// The capabilities both ends use (the client's, which are a subset of the server's).
    caps: u64,
    server_caps: u64,
    system: System,
    namespace: Option<Arc<str>>,
    pending: VecDeque<Pending>,
    resp: Resp,
    statements: VecDeque<Statement>,
    /// The sequence id the next packet of a response under way should carry.
    next_server_seq: u8,
    consecutive_errors: u32,
    error: Option<ParseError>,
    dead: bool,
}

impl Parser {
    pub fn new(side: Side) -> Self {
        Parser {
            side,
            phase: Phase::Greeting,
            client: Framer::default(),
            server: Framer::default(),
            caps: 0,
            server_caps: 0,
            system: System::Mysql,
            namespace: None,
            pending: VecDeque::new(),
            resp: Resp::Start,
            statements: VecDeque::new(),
            next_server_seq: 0,
            consecutive_errors: 0,
            error: None,
            dead: false,
        }
    }

    fn report(&mut self, err: ParseError) {
        if self.error.is_none() {
            self.error = Some(err);
        }
    }

    /// Stops parsing for good, counted as `err`.
    fn give_up(&mut self, err: ParseError) {
        self.report(err);
        self.dead = true;
        self.pending.clear();
    }

    fn error_in_a_row(&mut self, err: ParseError) {
        self.report(err);
        self.consecutive_errors += 1;
        if self.consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
            self.give_up(ParseError::Garbage);
        }
    }

    fn stream_of(&self, dir: Direction) -> Stream {
        if dir == self.side.request_direction() {
            Stream::Client
        } else {
            Stream::Server
        }
    }

    fn framer(&mut self, stream: Stream) -> &mut Framer {
        match stream {
            Stream::Client => &mut self.client,
            Stream::Server => &mut self.server,
        }
    }

    /// How much of a packet's payload to keep.
    fn keep(&self, stream: Stream) -> usize {
        match (stream, self.phase) {
            (Stream::Server, Phase::Greeting) => GREETING_KEEP,
            (Stream::Server, _) => RESPONSE_KEEP,
            (Stream::Client, _) => COMMAND_KEEP,
        }
    }

    /// Whether a lost stream may trust a packet header at the start of this syscall.
    fn resync(&self, stream: Stream, payload: &[u8]) -> bool {
        let Some(header) = payload.get(..HEADER_BYTES) else {
            return false;
        };
        let seq = header[3];
        match stream {
            // A command: sequence id 0 and a command byte we know.
            Stream::Client => {
                seq == 0
                    && u24(header) > 0
                    && payload
                        .get(HEADER_BYTES)
                        .is_some_and(|&c| Self::command_known(c))
            }
            // The first packet of the response to a command seen after the loss.
            Stream::Server => self.pending.front().is_some_and(|p| {
                !p.responded && self.resp == Resp::Start && p.first_seq.is_none_or(|s| s == seq)
            }),
        }
    }

    fn command_known(c: u8) -> bool {
        matches!(c, 0x01..=0x09 | 0x0A | 0x0C..=0x0E | 0x11 | 0x16..=0x1C | 0x1F | 0xFA)
    }

    fn feed_stream(
        &mut self,
        stream: Stream,
        ts: u64,
        payload: &[u8],
        bytes: u64,
        out: &mut Vec<Exchange>,
    ) {
        if self.framer(stream).lost {
            if !self.resync(stream, payload) {
                self.unseen(stream, ts, bytes);
                return;
            }
            self.framer(stream).reset();
        }
        let keep = self.keep(stream);
        let mut i = 0;
        while i < payload.len() && !self.dead {
            let f = self.framer(stream);
            if f.header_len < HEADER_BYTES {
                if f.header_len == 0 {
                    f.start_ns = ts;
                    f.keep = keep;
                }
                f.header[f.header_len] = payload[i];
                f.header_len += 1;
                i += 1;
                if f.header_len == HEADER_BYTES {
                    f.remaining = f.len();
                    f.continues = f.remaining == MAX_PAYLOAD;
                    if f.remaining == 0 {
                        self.dispatch(stream, ts, out);
                    }
                }
                continue;
            }
            let n = (f.remaining as usize).min(payload.len() - i);
            let room = f.keep.saturating_sub(f.head.len()).min(n);
            f.head.extend_from_slice(&payload[i..i + room]);
            f.remaining -= n as u32;
            i += n;
            if f.remaining == 0 {
                self.dispatch(stream, ts, out);
            }
        }
        if self.dead {
            return;
        }
        let mut tail = bytes.saturating_sub(payload.len() as u64);
        if tail == 0 {
            return;
        }
        let f = self.framer(stream);
        if f.header_len == HEADER_BYTES {
            let skip = tail.min(u64::from(f.remaining));
            if f.head.len() < f.keep.min(f.len() as usize) {
                f.cut = true;
            }
            f.remaining -= skip as u32;
            tail -= skip;
            if f.remaining == 0 {
                self.dispatch(stream, ts, out);
            }
        }
        if tail > 0 {
            // A packet header fell into the uncaptured bytes.
            self.lose(stream, ts, tail);
        }
    }

    /// The framing of `stream` is lost (from this syscall's uncaptured `tail` on, or after a
    /// gap): its current packet is abandoned.
    fn lose(&mut self, stream: Stream, ts: u64, tail: u64) {
        let f = self.framer(stream);
        f.reset();
        f.lost = true;
        match stream {
            Stream::Server => {
                if self.phase != Phase::Command {
                    // The handshake's numbers are unknown: nothing can be followed.
                    self.dead = true;
                    return;
                }
                if let Some(p) = self.pending.front_mut()
                    && p.responded
                {
                    self.resp = Resp::Lost;
                    p.truncated = true;
                }
                self.unseen(stream, ts, tail);
            }
            Stream::Client => {
                if self.phase != Phase::Command {
                    self.dead = true;
                    return;
                }
                if let Some(p) = self.pending.back_mut() {
                    p.truncated = true;
                    p.first_seq = None;
                }
                self.unseen(stream, ts, tail);
            }
        }
    }

    /// Bytes a lost stream skipped: a lost response's, counted for it; a command's whose
    /// response has not started (the protocol is request/response), counted for it.
    fn unseen(&mut self, stream: Stream, ts: u64, bytes: u64) {
        match stream {
            Stream::Server => {
                if self.resp == Resp::Lost
                    && let Some(p) = self.pending.front_mut()
                {
                    p.response_bytes += bytes;
                    p.end_ns = ts;
                }
            }
            Stream::Client => {
                if let Some(p) = self.pending.back_mut()
                    && !p.responded
                {
                    p.request_bytes += bytes;
                }
            }
        }
    }

    /// A whole packet of `stream` (or all of it that will be seen) was read.
    fn dispatch(&mut self, stream: Stream, ts: u64, out: &mut Vec<Exchange>) {
        let mut f = std::mem::take(self.framer(stream));
        let pkt = f.packet();
        match stream {
            Stream::Client => self.client_packet(&pkt, out),
            Stream::Server => self.server_packet(&pkt, ts, out),
        }
        f.end_packet();
        *self.framer(stream) = f;
    }

    fn client_packet(&mut self, pkt: &Packet, out: &mut Vec<Exchange>) {
        match self.phase {
            Phase::Greeting | Phase::Auth => {}
            Phase::HandshakeResponse => self.handshake_response(pkt),
            Phase::Command => {
                if pkt.continuation || pkt.seq != 0 {
                    // The rest of a long command, LOCAL INFILE data, authentication data.
                    if let Some(p) = self.pending.back_mut() {
                        p.request_bytes += pkt.wire_bytes();
                        p.first_seq = Some(pkt.seq.wrapping_add(1));
                    }
                    return;
                }
                self.command(pkt, out);
            }
        }
    }

    fn server_packet(&mut self, pkt: &Packet, ts: u64, out: &mut Vec<Exchange>) {
        match self.phase {
            Phase::Greeting => self.greeting(pkt),
            Phase::HandshakeResponse | Phase::Auth => match pkt.head.first() {
                Some(0x00) if self.phase == Phase::Auth => {
                    self.phase = Phase::Command;
                }
                // Refused: the server closes the connection.
                Some(0xFF) => self.dead = true,
                _ => {}
            },
            Phase::Command => self.response(pkt, ts, out),
        }
    }

    fn greeting(&mut self, pkt: &Packet) {
        let b = pkt.head;
        if pkt.seq != 0 || b.first() != Some(&PROTOCOL_V10) {
            // An ERR greeting (too many connections, host blocked) or not MySQL after all.
            self.dead = true;
            return;
        }
        let Some((version, at)) = nul_str(b, 1) else {
            self.give_up(if pkt.cut {
                ParseError::HandshakeNotCaptured
            } else {
                ParseError::BadHandshake
            });
            return;
        };
        if version
            .windows(7)
            .any(|w| w.eq_ignore_ascii_case(b"mariadb"))
        {
            self.system = System::Mariadb;
        }
        // Connection id (4), auth data part 1 (8), filler (1), then the capability flags.
        let at = at + 13;
        let low = u16_at(b, at).map_or(0, u64::from);
        // Character set (1), status flags (2), then the upper capability flags.
        let high = u16_at(b, at + 5).map_or(0, u64::from);
        let mut caps = low | high << 16;
        // Auth data length (1), then 6 bytes of filler and MariaDB's extended capabilities
        // (when CLIENT_MYSQL is clear).
        if caps & cap::MYSQL == 0
            && let Some(ext) = u32_at(b, at + 7 + 1 + 6)
        {
            caps |= u64::from(ext) << 32;
        }
        self.server_caps = caps;
        self.phase = Phase::HandshakeResponse;
    }

    fn handshake_response(&mut self, pkt: &Packet) {
        let b = pkt.head;
        let Some(low) = u16_at(b, 0) else {
            self.give_up(if pkt.cut {
                ParseError::HandshakeNotCaptured
            } else {
                ParseError::BadHandshake
            });
            return;
        };
        if u64::from(low) & cap::PROTOCOL_41 == 0 {
            self.give_up(ParseError::OldProtocol);
            return;
        }
        let Some(mut caps) = u32_at(b, 0).map(u64::from) else {
            self.give_up(ParseError::BadHandshake);
            return;
        };
        if caps & cap::SSL != 0 {
            // An SSLRequest: the TLS handshake follows.
            self.give_up(ParseError::Tls);
            return;
        }
        if caps & (cap::COMPRESS | cap::ZSTD_COMPRESSION) != 0 {
            self.give_up(ParseError::Compressed);
            return;
        }
        // Max packet size (4), character set (1), filler (19), MariaDB's extended capabilities
        // (4, when CLIENT_MYSQL is clear), then the user name.
        if caps & cap::MYSQL == 0
            && let Some(ext) = u32_at(b, 28)
        {
            caps |= u64::from(ext) << 32;
        }
        self.caps = caps & (self.server_caps | 0xFFFF_FFFF);
        self.phase = Phase::Auth;
        if caps & cap::CONNECT_WITH_DB != 0
            && let Some(db) = self.handshake_database(b, caps)
        {
            self.namespace = Some(db);
        }
    }

    /// The database of a HandshakeResponse41 (`CLIENT_CONNECT_WITH_DB`), after the user name
    /// and the auth response.
    fn handshake_database(&self, b: &[u8], caps: u64) -> Option<Arc<str>> {
        let (_user, at) = nul_str(b, 32)?;
        let at = if caps & cap::PLUGIN_AUTH_LENENC_DATA != 0 {
            let (n, w) = lenenc(b, at)?;
            at + w + usize::try_from(n).ok()?
        } else if caps & cap::SECURE_CONNECTION != 0 {
            at + 1 + usize::from(*b.get(at)?)
        } else {
            nul_str(b, at)?.1
        };
        let (db, _) = nul_str(b, at)?;
        (!db.is_empty()).then(|| Arc::from(text(db, db::MAX_COLLECTION_BYTES)))
    }

    fn statement(&self, id: u32) -> Option<&Statement> {
        self.statements.iter().find(|s| s.id == id)
    }

    fn command(&mut self, pkt: &Packet, out: &mut Vec<Exchange>) {
        // A response that ended unseen (its framing was lost) ended before this command.
        if self.resp == Resp::Lost
            || self
                .pending
                .front()
                .is_some_and(|p| p.answer == Answer::Unknown)
        {
            let end = self.pending.front().map_or(pkt.start_ns, |p| p.end_ns);
            self.finish(Outcome::Ok, None, end, out);
        }
        let Some(&c) = pkt.head.first() else {
            self.error_in_a_row(ParseError::BadCommand);
            return;
        };
        let body = &pkt.head[1..];
        let mut pending = Pending {
            answer: Answer::Single,
            start_ns: pkt.start_ns,
            end_ns: pkt.start_ns,
            request_bytes: pkt.wire_bytes(),
            response_bytes: 0,
            responded: false,
            first_seq: Some(pkt.seq.wrapping_add(1)),
            truncated: pkt.cut,
            operation: Cow::Borrowed(""),
            collection: None,
            query: None,
            context: Found::None,
            new_namespace: None,
        };
        let op = |s: &'static str| Cow::Borrowed(s);
        match c {
            com::QUIT | com::STMT_SEND_LONG_DATA => return,
            com::STMT_CLOSE => {
                if let Some(id) = u32_at(body, 0) {
                    self.statements.retain(|s| s.id != id);
                }
                return;
            }
            com::BINLOG_DUMP | com::BINLOG_DUMP_GTID | com::TABLE_DUMP => {
                self.give_up(ParseError::Replication);
                return;
            }
            com::QUERY | com::STMT_PREPARE => {
                let query = text(body, db::MAX_QUERY_BYTES);
                let (operation, collection) = db::sql_summary(&query);
                if operation == "USE" {
                    pending.new_namespace = use_target(&query);
                }
                pending.context = db::comment_context(&query);
                if c == com::QUERY {
                    pending.answer = Answer::ResultSet;
                    pending.operation = operation;
                } else {
                    pending.answer = Answer::Prepare;
                    pending.operation = op("PREPARE");
                }
                pending.collection = collection;
                pending.query = Some(query);
            }
            com::STMT_EXECUTE | com::STMT_BULK_EXECUTE | com::STMT_FETCH => {
                let known = u32_at(body, 0).and_then(|id| self.statement(id));
                pending.answer = if c == com::STMT_FETCH {
                    Answer::Rows
                } else {
                    Answer::ResultSet
                };
                if let Some(s) = known {
                    pending.operation = if c == com::STMT_FETCH {
                        op("FETCH")
                    } else {
                        s.operation.clone()
                    };
                    pending.collection = s.collection.clone();
                    pending.query = s.query.clone();
                } else {
                    pending.operation = op(if c == com::STMT_FETCH {
                        "FETCH"
                    } else {
                        "EXECUTE"
                    });
                }
            }
            com::INIT_DB => {
                pending.operation = op("INIT_DB");
                if !body.is_empty() {
                    pending.new_namespace = Some(Arc::from(text(body, db::MAX_COLLECTION_BYTES)));
                }
            }
            com::PING => pending.operation = op("PING"),
            com::STMT_RESET => pending.operation = op("STMT_RESET"),
            com::SET_OPTION => pending.operation = op("SET_OPTION"),
            com::RESET_CONNECTION => pending.operation = op("RESET_CONNECTION"),
            com::REFRESH => pending.operation = op("REFRESH"),
            com::SHUTDOWN => pending.operation = op("SHUTDOWN"),
            com::PROCESS_KILL => pending.operation = op("PROCESS_KILL"),
            com::DEBUG => pending.operation = op("DEBUG"),
            com::CREATE_DB => pending.operation = op("CREATE_DB"),
            com::DROP_DB => pending.operation = op("DROP_DB"),
            com::REGISTER_SLAVE => pending.operation = op("REGISTER_SLAVE"),
            com::STATISTICS => {
                pending.answer = Answer::Text;
                pending.operation = op("STATISTICS");
            }
            com::FIELD_LIST => {
                pending.answer = Answer::Rows;
                pending.operation = op("FIELD_LIST");
            }
            com::PROCESS_INFO => {
                pending.answer = Answer::ResultSet;
                pending.operation = op("PROCESS_INFO");
            }
            com::CHANGE_USER => {
                pending.answer = Answer::UntilOkErr;
                pending.operation = op("CHANGE_USER");
            }
            _ => {
                self.error_in_a_row(ParseError::BadCommand);
                pending.answer = Answer::Unknown;
            }
        }
        if self.pending.len() >= MAX_PENDING {
            self.report(ParseError::TooManyPending);
            return;
        }
        self.pending.push_back(pending);
    }

    fn response(&mut self, pkt: &Packet, ts: u64, out: &mut Vec<Exchange>) {
        let expected = match self.pending.front() {
            Some(p) if !p.responded => p.first_seq,
            _ => Some(self.next_server_seq),
        };
        if expected.is_some_and(|s| s != pkt.seq) {
            self.error_in_a_row(ParseError::Sequence);
        }
        self.next_server_seq = pkt.seq.wrapping_add(1);
        let resp = self.resp;
        let caps = self.caps;
        let Some(head) = self.pending.front_mut() else {
            self.error_in_a_row(ParseError::ResponseWithoutRequest);
            return;
        };
        head.response_bytes += pkt.wire_bytes();
        head.end_ns = ts;
        head.responded = true;
        head.truncated |= pkt.cut;
        if pkt.continuation || head.answer == Answer::Unknown || resp == Resp::Lost {
            return;
        }
        let answer = head.answer;
        let step = step(answer, resp, pkt, caps);
        if answer == Answer::Prepare
            && resp == Resp::Start
            && pkt.head.first() == Some(&0x00)
            && let Some(id) = u32_at(pkt.head, 1)
        {
            let statement = Statement {
                id,
                operation: head
                    .query
                    .as_deref()
                    .map_or(Cow::Borrowed("EXECUTE"), |q| db::sql_summary(q).0),
                collection: head.collection.clone(),
                query: head.query.clone(),
            };
            self.statements.retain(|s| s.id != id);
            if self.statements.len() >= MAX_STATEMENTS {
                self.statements.pop_front();
            }
            self.statements.push_back(statement);
        }
        match step {
            Step::More(next) => self.resp = next,
            Step::Done(outcome, code) => {
                self.consecutive_errors = 0;
                self.finish(outcome, code, ts, out);
            }
        }
    }

    /// The oldest command's exchange is complete.
    fn finish(
        &mut self,
        outcome: Outcome,
        code: Option<u16>,
        end_ns: u64,
        out: &mut Vec<Exchange>,
    ) {
        self.resp = Resp::Start;
        let Some(p) = self.pending.pop_front() else {
            return;
        };
        if p.answer == Answer::Unknown {
            return;
        }
        if outcome == Outcome::Ok
            && let Some(ns) = p.new_namespace
        {
            self.namespace = Some(ns);
        }
        out.push(Exchange {
            start_ns: p.start_ns,
            end_ns,
            outcome,
            truncated: p.truncated,
            request_bytes: p.request_bytes,
            response_bytes: p.response_bytes,
            context: p.context,
            attributes: super::Attributes::Mysql(DbAttributes {
                system: self.system,
                namespace: self.namespace.clone(),
                operation: p.operation,
                collection: p.collection,
                query: p.query,
                status_code: code.map(|c| Cow::Owned(c.to_string())),
            }),
        });
    }

    fn partial_command(&mut self, out: &mut Vec<Exchange>) {
        let f = &self.client;
        if self.phase == Phase::Command
            && f.header_len == HEADER_BYTES
            && f.seq() == 0
            && !f.continuation
            && !f.head.is_empty()
        {
            let mut f = std::mem::take(&mut self.client);
            f.cut = true;
            self.command(&f.packet(), out);
        }
    }
}

/// The database of `USE db`.
fn use_target(query: &str) -> Option<Arc<str>> {
    let rest = query.trim_start().get(3..)?.trim();
    let name = rest
        .split(|c: char| c.is_whitespace() || c == ';')
        .next()?
        .trim_matches('`');
    (!name.is_empty() && name.len() <= db::MAX_COLLECTION_BYTES).then(|| Arc::from(name))
}

/// The status flags of an OK packet (header 0x00, or 0xFE ending rows with
/// `CLIENT_DEPRECATE_EOF`): after the affected rows and the last insert id.
fn ok_status(b: &[u8]) -> Option<u16> {
    let (_, w1) = lenenc(b, 1)?;
    let (_, w2) = lenenc(b, 1 + w1)?;
    u16_at(b, 1 + w1 + w2)
}

/// The status flags of an EOF packet: after the warning count.
fn eof_status(b: &[u8]) -> Option<u16> {
    u16_at(b, 3)
}

/// Whether a packet starting with 0xFE ends rows: an EOF packet is shorter than 9 bytes; with
/// `CLIENT_DEPRECATE_EOF` an OK packet (any length a packet can have); a row starting with 0xFE
/// (a string longer than 2^24) is a packet of 0xFFFFFF bytes.
fn is_terminator(pkt: &Packet, caps: u64) -> bool {
    pkt.head.first() == Some(&0xFE)
        && if caps & cap::DEPRECATE_EOF != 0 {
            pkt.len < MAX_PAYLOAD
        } else {
            pkt.len < 9
        }
}

fn terminator_status(pkt: &Packet, caps: u64) -> u16 {
    let flags = if caps & cap::DEPRECATE_EOF != 0 {
        ok_status(pkt.head)
    } else {
        eof_status(pkt.head)
    };
    flags.unwrap_or(0)
}

/// An ERR packet's error number; `None` for MariaDB's progress reports (error 0xFFFF), which
/// are not errors.
fn err_code(pkt: &Packet) -> Option<Option<u16>> {
    match u16_at(pkt.head, 1) {
        Some(0xFFFF) => None,
        code => Some(code),
    }
}

/// What the response packet `pkt` does, in state `resp` of a command answered as `answer`.
fn step(answer: Answer, resp: Resp, pkt: &Packet, caps: u64) -> Step {
    let first = pkt.head.first().copied();
    if first == Some(0xFF) && !matches!(resp, Resp::Definitions { .. }) && answer != Answer::Text {
        return match err_code(pkt) {
            None => Step::More(resp),
            Some(code) => Step::Done(Outcome::ServerError, code),
        };
    }
    let deprecate_eof = caps & cap::DEPRECATE_EOF != 0;
    let after = |then: AfterDefinitions| match then {
        AfterDefinitions::Rows => Step::More(Resp::Rows),
        AfterDefinitions::PrepareColumns(0) | AfterDefinitions::Done => {
            Step::Done(Outcome::Ok, None)
        }
        AfterDefinitions::PrepareColumns(n) => Step::More(Resp::Definitions {
            left: u64::from(n),
            then: AfterDefinitions::Done,
        }),
    };
    let definitions = |left: u64, then| {
        if left > 0 {
            Step::More(Resp::Definitions { left, then })
        } else if deprecate_eof {
            after(then)
        } else {
            Step::More(Resp::MetadataEof { then })
        }
    };
    let rows_end = |pkt: &Packet| {
        if terminator_status(pkt, caps) & status::MORE_RESULTS_EXISTS != 0 {
            Step::More(Resp::Start)
        } else {
            Step::Done(Outcome::Ok, None)
        }
    };
    match resp {
        Resp::Start => match answer {
            Answer::Single | Answer::Text | Answer::Unknown => Step::Done(Outcome::Ok, None),
            Answer::UntilOkErr => match first {
                Some(0x00) => Step::Done(Outcome::Ok, None),
                _ => Step::More(Resp::UntilOkErr),
            },
            Answer::Rows => step(answer, Resp::Rows, pkt, caps),
            Answer::Prepare => {
                if first != Some(0x00) {
                    return Step::Done(Outcome::Ok, None);
                }
                // COM_STMT_PREPARE_OK: id (4), columns (2), parameters (2), filler (1),
                // warnings (2), and with optional metadata whether it follows (1).
                let columns = u16_at(pkt.head, 5).unwrap_or(0);
                let params = u16_at(pkt.head, 7).unwrap_or(0);
                if caps & cap::OPTIONAL_RESULTSET_METADATA != 0 && pkt.head.get(12) == Some(&0) {
                    return Step::Done(Outcome::Ok, None);
                }
                if params > 0 {
                    definitions(u64::from(params), AfterDefinitions::PrepareColumns(columns))
                } else if columns > 0 {
                    definitions(u64::from(columns), AfterDefinitions::Done)
                } else {
                    Step::Done(Outcome::Ok, None)
                }
            }
            Answer::ResultSet => match first {
                Some(0x00) => {
                    if ok_status(pkt.head).unwrap_or(0) & status::MORE_RESULTS_EXISTS != 0 {
                        Step::More(Resp::Start)
                    } else {
                        Step::Done(Outcome::Ok, None)
                    }
                }
                // LOCAL INFILE: the client sends the file, the server answers OK or ERR.
                Some(0xFB) => Step::More(Resp::UntilOkErr),
                Some(0xFE) if pkt.len < 9 => Step::Done(Outcome::Ok, None),
                _ => {
                    let Some((columns, w)) = lenenc(pkt.head, 0) else {
                        // The column count was not captured: the rest cannot be followed.
                        return Step::More(Resp::Lost);
                    };
                    let metadata_follows = if caps
                        & (cap::MARIADB_CACHE_METADATA | cap::OPTIONAL_RESULTSET_METADATA)
                        != 0
                    {
                        pkt.head.get(w) != Some(&0)
                    } else {
                        true
                    };
                    let left = if metadata_follows { columns } else { 0 };
                    definitions(left, AfterDefinitions::Rows)
                }
            },
        },
        Resp::Definitions { left, then } => definitions(left - 1, then),
        Resp::MetadataEof { then } => {
            if answer == Answer::ResultSet
                && eof_status(pkt.head).unwrap_or(0) & status::CURSOR_EXISTS != 0
            {
                // A cursor: rows come with COM_STMT_FETCH.
                return Step::Done(Outcome::Ok, None);
            }
            after(then)
        }
        Resp::Rows => {
            if is_terminator(pkt, caps) {
                rows_end(pkt)
            } else {
                Step::More(Resp::Rows)
            }
        }
        Resp::UntilOkErr => match first {
            Some(0x00) => Step::Done(Outcome::Ok, None),
            _ => Step::More(Resp::UntilOkErr),
        },
        Resp::Lost => Step::More(Resp::Lost),
    }
}

impl super::Parser for Parser {
    fn feed(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        payload: &[u8],
        bytes: u64,
        out: &mut Vec<Exchange>,
    ) -> Result<(), super::ParseError> {
        if !self.dead {
            let stream = self.stream_of(dir);
            self.feed_stream(stream, ts_ns, payload, bytes.max(payload.len() as u64), out);
        }
        match self.error.take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    fn gap(&mut self, dir: Direction) {
        if self.dead {
            return;
        }
        if self.phase != Phase::Command {
            // The handshake's capabilities may be among what was lost.
            self.dead = true;
            return;
        }
        // Never invent: what awaited a response is dropped, and both directions wait for the
        // next command to resynchronise.
        self.pending.clear();
        self.resp = Resp::Start;
        let stream = self.stream_of(dir);
        for s in [Stream::Client, Stream::Server] {
            if s == stream || s == Stream::Server {
                let f = self.framer(s);
                f.reset();
                f.lost = true;
            }
        }
    }

    fn close(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        if !self.dead {
            self.partial_command(out);
            while let Some(p) = self.pending.front() {
                if p.responded {
                    // Cut short in the middle of its response.
                    let end = p.end_ns;
                    if let Some(p) = self.pending.front_mut() {
                        p.truncated = true;
                    }
                    self.finish(Outcome::Ok, None, end, out);
                } else {
                    self.finish(Outcome::NoResponse, None, ts_ns, out);
                }
            }
        }
        self.pending.clear();
        self.dead = true;
    }

    fn in_flight(&self) -> bool {
        !self.dead
            && (self.pending.iter().any(|p| p.answer != Answer::Unknown)
                || (self.phase == Phase::Command
                    && self.client.header_len == HEADER_BYTES
                    && self.client.seq() == 0
                    && !self.client.continuation))
    }

    fn is_dead(&self) -> bool {
        self.dead
    }
}

#[cfg(test)]
impl Parser {
    /// Bytes buffered and commands pending, for the bounds checks of the tests.
    fn buffered(&self) -> (usize, usize, usize) {
        (
            self.client.head.len().max(self.server.head.len()),
            self.pending.len(),
            self.statements.len(),
        )
    }
}
