//! Memcached's text protocol (memcached `doc/protocol.txt`), incremental and per direction.
//!
//! A request is a command line, and for the storage commands (`set`, `add`, `replace`,
//! `append`, `prepend`, `cas`, meta `ms`) a data block skipped by its byte count. Replies come in
//! request order: each answers the oldest queued request. A reply is one line, except for
//! the retrieval commands (`get`, `gets`, `gat`, `gats`: `VALUE` lines with their data blocks,
//! then `END`), `stats` (lines until `END`) and meta `mg` with a value (`VA <size>` and its data
//! block). A command ending in `noreply` expects no reply: its exchange ends with the request.
//! Meta commands in quiet mode (`q` flag) are answered only when they fail or hit; the `mn`
//! that follows them (its `MN`) completes the quiet ones still waiting.
//!
//! `ERROR` and `CLIENT_ERROR ...` are [`Outcome::ClientError`], `SERVER_ERROR ...` an
//! [`Outcome::ServerError`], each with its status code. `NOT_FOUND`, `NOT_STORED`, `EXISTS` are
//! answers, not errors. A retrieval's hits are its `VALUE` lines, its misses the keys without one.
//!
//! The binary protocol (magic byte 0x80 / 0x81) is detected and counted as not parsed
//! (`binary_protocol`): no exchanges.

use std::{borrow::Cow, collections::VecDeque};

use super::{
    Direction, Exchange, Observation, Outcome, ProtocolAttributes, RedMetrics, RedSettings, Side,
    SpanOptions, Verdict,
    db::{self, DbAttributes, DbRed, System},
};
use crate::{
    metrics::Registry,
    semconv::{Attribute, Value},
};

/// Label value of the protocol in metrics.
pub const NAME: &str = "memcached";

/// Most requests awaiting a reply on one connection.
pub const MAX_PENDING: usize = 1024;
/// Longest line kept (a command line's keys beyond it are counted, not kept).
pub const MAX_LINE_BYTES: usize = 2048;
/// Malformed messages in a row before giving up.
const MAX_CONSECUTIVE_ERRORS: u32 = 8;
/// Bytes detection looks at before calling a command line without its end plausible.
const DETECT_LINE_BYTES: usize = 64;

/// Span attribute keys of a retrieval's hits and misses (no semantic convention names them).
pub const HITS: &str = "db.memcached.hits";
pub const MISSES: &str = "db.memcached.misses";

/// What a Memcached exchange adds: the database attributes, and a retrieval's hits and misses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub db: DbAttributes,
    /// Keys found and not found, for `get`/`gets`/`gat`/`gats` and `mg`.
    pub hits: Option<u32>,
    pub misses: Option<u32>,
}

impl ProtocolAttributes for Attributes {
    fn span_name_into(&self, out: &mut String) {
        self.db.span_name_into(out)
    }

    fn span_attributes(&self, options: &SpanOptions, out: &mut Vec<Attribute>) {
        self.db.span_attributes(options, out);
        if let Some(h) = self.hits {
            out.push((HITS, Value::Int(i64::from(h))));
        }
        if let Some(m) = self.misses {
            out.push((MISSES, Value::Int(i64::from(m))));
        }
    }

    fn error_type(&self) -> Cow<'static, str> {
        self.db.error_type()
    }
}

/// The database metrics, fed with the database part of the attributes.
pub struct Red(DbRed);

impl RedMetrics for Red {
    type Attributes = Attributes;

    fn new(registry: &Registry, settings: &RedSettings) -> Self {
        Red(DbRed::new(registry, settings))
    }

    fn observe(&mut self, exchange: &Exchange, attributes: &Attributes, at: &Observation) {
        self.0.observe(exchange, &attributes.db, at);
    }

    fn expire(&mut self, now_ns: u64, ttl_ns: u64, registry: &Registry) {
        self.0.expire(now_ns, ttl_ns, registry);
    }
}

/// Commands, as sent (the protocol is case-sensitive).
const COMMANDS: [&str; 31] = [
    "get",
    "gets",
    "gat",
    "gats",
    "set",
    "add",
    "replace",
    "append",
    "prepend",
    "cas",
    "incr",
    "decr",
    "delete",
    "touch",
    "flush_all",
    "version",
    "stats",
    "verbosity",
    "quit",
    "mg",
    "ms",
    "md",
    "ma",
    "mn",
    "me",
    "cache_memlimit",
    "shutdown",
    "lru_crawler",
    "slabs",
    "watch",
    "misbehave",
];

fn command(word: &[u8]) -> Option<&'static str> {
    COMMANDS.iter().copied().find(|c| c.as_bytes() == word)
}

/// Replies that detection accepts at a connection's start (distinctive ones only: not `OK`,
/// `ERROR` nor the two-letter meta codes).
const DETECT_REPLIES: [&[u8]; 11] = [
    b"VALUE ",
    b"END\r\n",
    b"STORED\r\n",
    b"NOT_STORED\r\n",
    b"NOT_FOUND\r\n",
    b"DELETED\r\n",
    b"TOUCHED\r\n",
    b"EXISTS\r\n",
    b"SERVER_ERROR ",
    b"CLIENT_ERROR ",
    b"VERSION ",
];

/// Detection: a command line (or a binary request) read by a server or written by a client; a
/// distinctive reply (or a binary response) the other way.
pub fn detect(side: Side, dir: Direction, first: &[u8], _midstream: bool) -> Verdict {
    let request = dir == side.request_direction();
    match binary_header(request, first) {
        Verdict::No => {}
        v => return v,
    }
    if request {
        command_line(first)
    } else {
        let mut prefix = false;
        for r in DETECT_REPLIES {
            let n = r.len().min(first.len());
            if first.get(..n) == r.get(..n) {
                if first.len() >= r.len() {
                    return Verdict::Yes;
                }
                prefix = true;
            }
        }
        if prefix { Verdict::Prefix } else { Verdict::No }
    }
}

/// A binary protocol header: magic 0x80 (request) or 0x81 (response), a known opcode, raw data
/// type, and key and extras that fit in the body.
fn binary_header(request: bool, b: &[u8]) -> Verdict {
    let magic = if request { 0x80 } else { 0x81 };
    if b.first() != Some(&magic) {
        return Verdict::No;
    }
    if b.get(1).is_some_and(|op| *op > 0x48) || b.get(5).is_some_and(|t| *t != 0) {
        return Verdict::No;
    }
    let (Some(k), Some(e), Some(body)) = (b.get(2..4), b.get(4), b.get(8..12)) else {
        return Verdict::Prefix;
    };
    let key = u32::from(u16::from_be_bytes([k[0], k[1]]));
    let body = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    if key + u32::from(*e) <= body {
        Verdict::Yes
    } else {
        Verdict::No
    }
}

/// Whether `b` starts like a command line: a command, then a space or the line end, and
/// printable tokens; the numeric fields of the storage commands are numbers.
fn command_line(b: &[u8]) -> Verdict {
    let word = b
        .iter()
        .take_while(|c| c.is_ascii_lowercase() || **c == b'_')
        .count();
    let (name, rest) = b.split_at(word);
    if rest.is_empty() {
        let prefix = COMMANDS
            .iter()
            .any(|c| c.len() > name.len() && c.as_bytes().starts_with(name));
        return if command(name).is_some() || prefix {
            Verdict::Prefix
        } else {
            Verdict::No
        };
    }
    let Some(cmd) = command(name) else {
        return Verdict::No;
    };
    if !matches!(rest.first(), Some(b' ' | b'\r' | b'\n')) {
        return Verdict::No;
    }
    let end = memchr::memchr(b'\n', rest);
    let line = rest.get(..end.unwrap_or(rest.len())).unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line
        .iter()
        .any(|c| !(c.is_ascii_graphic() || *c == b' ' || *c == b'\r'))
    {
        return Verdict::No;
    }
    if end.is_none() {
        return if b.len() >= DETECT_LINE_BYTES {
            Verdict::Yes
        } else {
            Verdict::Prefix
        };
    }
    let tokens: Vec<&[u8]> = line
        .split(|c| *c == b' ')
        .filter(|t| !t.is_empty())
        .collect();
    let numeric = |i: usize| {
        tokens
            .get(i)
            .is_some_and(|t| t.iter().all(u8::is_ascii_digit))
    };
    let ok = match Kind::of(cmd) {
        Kind::Storage { cas } => {
            tokens.len() >= 4 + usize::from(cas) && (1..4 + usize::from(cas)).all(numeric)
        }
        Kind::Retrieval { .. } => !tokens.is_empty(),
        _ => true,
    };
    if ok { Verdict::Yes } else { Verdict::No }
}

/// What a command is, for framing and pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `get`/`gets` (keys from token 1), `gat`/`gats` (keys from token 2).
    Retrieval {
        first_key: u32,
    },
    /// A data block of token 4's length follows the line; `cas` has a unique after it.
    Storage {
        cas: bool,
    },
    /// `ms <key> <datalen>`: a data block of token 2's length.
    MetaSet,
    /// `mg`, `md`, `ma`, `me`, `mn`.
    Meta,
    /// `stats`: lines until `END`.
    Stats,
    Other,
}

impl Kind {
    fn of(cmd: &str) -> Kind {
        match cmd {
            "get" | "gets" => Kind::Retrieval { first_key: 1 },
            "gat" | "gats" => Kind::Retrieval { first_key: 2 },
            "set" | "add" | "replace" | "append" | "prepend" => Kind::Storage { cas: false },
            "cas" => Kind::Storage { cas: true },
            "ms" => Kind::MetaSet,
            "mg" | "md" | "ma" | "me" | "mn" => Kind::Meta,
            "stats" => Kind::Stats,
            _ => Kind::Other,
        }
    }
}

/// A request awaiting its reply.
#[derive(Debug)]
struct Pending {
    start_ns: u64,
    bytes: u64,
    truncated: bool,
    operation: Cow<'static, str>,
    query: String,
    kind: Kind,
    /// Keys a retrieval names.
    keys: u32,
    /// A meta command with the `q` flag: no reply unless it fails or hits.
    quiet: bool,
}

/// A line being read: its first bytes, and its tokens counted all along.
#[derive(Debug, Default)]
struct Line {
    text: Vec<u8>,
    tokens: u32,
    in_token: bool,
    /// Its size so far.
    len: u64,
}

impl Line {
    /// Adds bytes of the line (without the LF).
    fn push(&mut self, bytes: &[u8]) {
        let room = MAX_LINE_BYTES
            .saturating_sub(self.text.len())
            .min(bytes.len());
        self.text
            .extend_from_slice(bytes.get(..room).unwrap_or(&[]));
        for &b in bytes {
            let space = b == b' ' || b == b'\r';
            if !space && !self.in_token {
                self.tokens = self.tokens.saturating_add(1);
            }
            self.in_token = !space;
        }
        self.len += bytes.len() as u64;
    }

    fn clear(&mut self) {
        self.text.clear();
        self.tokens = 0;
        self.in_token = false;
        self.len = 0;
    }

    fn tokens(&self) -> impl Iterator<Item = &[u8]> {
        let text = self.text.strip_suffix(b"\r").unwrap_or(&self.text);
        text.split(|c| *c == b' ').filter(|t| !t.is_empty())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Line,
    /// A data block: `remaining` bytes with its CRLF.
    Data {
        remaining: u64,
    },
    /// Discarding syscalls until one starts like a message.
    Skip,
}

/// The request being read (its line done, its data block pending).
#[derive(Debug)]
struct Request {
    pending: Pending,
    noreply: bool,
}

/// The reply being read.
#[derive(Debug, Default)]
struct Reply {
    started: bool,
    bytes: u64,
    truncated: bool,
    hits: u32,
    /// A miss (`EN`) of a meta get.
    miss: bool,
    status: Option<(Outcome, &'static str)>,
}

/// The registry's parser of one connection side.
pub struct Parser {
    side: Side,
    req_state: State,
    req_line: Line,
    req_start_ns: u64,
    request: Option<Request>,
    resp_state: State,
    resp_line: Line,
    reply: Reply,
    pending: VecDeque<Pending>,
    /// Replies without a request are expected after lost messages, until the next request.
    expect_orphans: bool,
    /// A reply came without a request (and none was expected).
    orphan: bool,
    last_reply_ns: u64,
    consecutive_errors: u32,
    seen_any: bool,
    dead: bool,
}

impl Parser {
    pub fn new(side: Side) -> Self {
        Parser {
            side,
            req_state: State::Line,
            req_line: Line::default(),
            req_start_ns: 0,
            request: None,
            resp_state: State::Line,
            resp_line: Line::default(),
            reply: Reply::default(),
            pending: VecDeque::new(),
            expect_orphans: false,
            orphan: false,
            last_reply_ns: 0,
            consecutive_errors: 0,
            seen_any: false,
            dead: false,
        }
    }

    #[cfg(test)]
    fn buffered(&self) -> (usize, usize) {
        (
            self.pending.len(),
            self.req_line.text.capacity() + self.resp_line.text.capacity(),
        )
    }

    fn error(&mut self, reason: &'static str, first: &mut Option<&'static str>) {
        first.get_or_insert(reason);
        self.consecutive_errors += 1;
        if self.consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
            self.give_up();
        }
    }

    fn give_up(&mut self) {
        self.dead = true;
        self.pending.clear();
        self.request = None;
        self.req_line = Line::default();
        self.resp_line = Line::default();
    }

    // --- requests -----------------------------------------------------------------------------

    fn feed_requests(
        &mut self,
        ts: u64,
        payload: &[u8],
        unknown: u64,
        out: &mut Vec<Exchange>,
        error: &mut Option<&'static str>,
    ) {
        if self.req_state == State::Skip {
            if command_line(payload) == Verdict::No {
                return;
            }
            self.req_state = State::Line;
        }
        let mut rest = payload;
        while !rest.is_empty() && !self.dead {
            match self.req_state {
                State::Skip => return,
                State::Line => {
                    if self.req_line.len == 0 {
                        self.req_start_ns = ts;
                    }
                    let (take, end) = match memchr::memchr(b'\n', rest) {
                        Some(i) => (i + 1, true),
                        None => (rest.len(), false),
                    };
                    self.req_line.push(
                        rest.get(..take.saturating_sub(usize::from(end)))
                            .unwrap_or(&[]),
                    );
                    if end {
                        self.req_line.len += 1;
                    }
                    rest = rest.get(take..).unwrap_or(&[]);
                    if end {
                        self.command_done(ts, false, out, error);
                    }
                }
                State::Data { remaining } => {
                    let n = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(rest.len());
                    rest = rest.get(n..).unwrap_or(&[]);
                    self.request_data(ts, n as u64, remaining, out);
                }
            }
        }
        if unknown == 0 || self.dead {
            return;
        }
        match self.req_state {
            State::Data { remaining } => {
                let n = remaining.min(unknown);
                if let Some(r) = &mut self.request {
                    r.pending.truncated = true;
                }
                self.request_data(ts, n, remaining, out);
                if n < unknown {
                    self.requests_lost();
                }
            }
            State::Line if self.req_line.len > 0 => {
                // The writer sent the command whole: it ends with the syscall (its keys
                // beyond the capture are not counted).
                self.req_line.len += unknown;
                self.command_done(ts, true, out, error);
                if let State::Data { .. } = self.req_state {
                    // Its data block too.
                    self.request_data(ts, 0, 0, out);
                }
            }
            State::Line | State::Skip => self.requests_lost(),
        }
    }

    fn requests_lost(&mut self) {
        self.req_line.clear();
        self.request = None;
        self.req_state = State::Skip;
        self.expect_orphans = true;
    }

    /// `n` bytes of a data block of `remaining` were read (or skipped).
    fn request_data(&mut self, ts: u64, n: u64, remaining: u64, out: &mut Vec<Exchange>) {
        if let Some(r) = &mut self.request {
            r.pending.bytes += n;
        }
        let left = remaining.saturating_sub(n);
        if left > 0 {
            self.req_state = State::Data { remaining: left };
            return;
        }
        self.req_state = State::Line;
        if let Some(r) = self.request.take() {
            self.queue(ts, r, out);
        }
    }

    /// A command line ended.
    fn command_done(
        &mut self,
        ts: u64,
        truncated: bool,
        out: &mut Vec<Exchange>,
        error: &mut Option<&'static str>,
    ) {
        let line = std::mem::take(&mut self.req_line);
        let result = self.parse_command(&line, truncated);
        self.req_line = line;
        let bytes = self.req_line.len;
        let tokens = self.req_line.tokens;
        self.req_line.clear();
        let (mut pending, data, noreply) = match result {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return,
            Err(reason) => {
                self.req_state = State::Skip;
                self.expect_orphans = true;
                self.error(reason, error);
                return;
            }
        };
        pending.start_ns = self.req_start_ns;
        pending.bytes = bytes;
        if let Kind::Retrieval { first_key } = pending.kind {
            pending.keys = tokens.saturating_sub(first_key);
        }
        let request = Request { pending, noreply };
        match data {
            Some(len) => {
                self.request = Some(request);
                self.req_state = State::Data {
                    remaining: len.saturating_add(2),
                };
            }
            None => self.queue(ts, request, out),
        }
    }

    /// The pending request of a command line, the length of its data block, and whether it
    /// expects no reply; `None` for an empty line.
    #[expect(clippy::type_complexity, reason = "one parse result, used once")]
    fn parse_command(
        &self,
        line: &Line,
        truncated: bool,
    ) -> Result<Option<(Pending, Option<u64>, bool)>, &'static str> {
        let mut tokens = line.tokens();
        let Some(word) = tokens.next() else {
            return Ok(None);
        };
        let text = line.text.strip_suffix(b"\r").unwrap_or(&line.text);
        if text.iter().any(|c| c.is_ascii_control()) {
            return Err("bad_command");
        }
        let operation: Cow<'static, str> = match command(word) {
            Some(c) => Cow::Borrowed(c),
            None if word.len() <= db::MAX_OPERATION_BYTES
                && word.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_') =>
            {
                // Answered `ERROR` by the server: still an exchange.
                Cow::Owned(String::from_utf8_lossy(word).into_owned())
            }
            None => return Err("bad_command"),
        };
        let kind = Kind::of(&operation);
        let args: Vec<&[u8]> = line.tokens().skip(1).collect();
        let number = |i: usize| -> Option<u64> {
            let t = args.get(i)?;
            if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(t).ok()?.parse().ok()
        };
        let data = match kind {
            // A length that is not a number: the server answers CLIENT_ERROR, reads no block.
            Kind::Storage { .. } => number(3),
            Kind::MetaSet => number(1),
            _ => None,
        };
        let last = args.last().copied();
        let noreply = last == Some(b"noreply".as_slice());
        let quiet =
            matches!(kind, Kind::Meta | Kind::MetaSet) && args.iter().skip(1).any(|t| *t == b"q");
        let mut query = String::from_utf8_lossy(text).into_owned();
        if query.len() > db::MAX_QUERY_BYTES {
            let mut cut = db::MAX_QUERY_BYTES;
            while !query.is_char_boundary(cut) {
                cut -= 1;
            }
            query.truncate(cut);
        }
        Ok(Some((
            Pending {
                start_ns: 0,
                bytes: 0,
                truncated,
                operation,
                query,
                kind,
                keys: 0,
                quiet,
            },
            data,
            noreply,
        )))
    }

    /// A request was read whole: queued for its reply, or done when it expects none.
    fn queue(&mut self, ts: u64, r: Request, out: &mut Vec<Exchange>) {
        self.consecutive_errors = 0;
        self.expect_orphans = false;
        if r.noreply {
            out.push(exchange(r.pending, ts, &Reply::default(), Outcome::Ok));
            return;
        }
        if r.pending.operation == "quit" {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            return;
        }
        self.pending.push_back(r.pending);
    }

    // --- replies ------------------------------------------------------------------------------

    fn feed_replies(
        &mut self,
        ts: u64,
        payload: &[u8],
        unknown: u64,
        out: &mut Vec<Exchange>,
        error: &mut Option<&'static str>,
    ) {
        self.last_reply_ns = ts;
        if self.resp_state == State::Skip {
            if detect(self.side, reply_dir(self.side), payload, false) == Verdict::No
                && !payload.starts_with(b"ERROR")
                && !payload.first().is_some_and(u8::is_ascii_uppercase)
            {
                return;
            }
            self.resp_state = State::Line;
        }
        let mut rest = payload;
        while !rest.is_empty() && !self.dead {
            match self.resp_state {
                State::Skip => return,
                State::Line => {
                    self.reply.started = true;
                    let (take, end) = match memchr::memchr(b'\n', rest) {
                        Some(i) => (i + 1, true),
                        None => (rest.len(), false),
                    };
                    self.resp_line.push(
                        rest.get(..take.saturating_sub(usize::from(end)))
                            .unwrap_or(&[]),
                    );
                    self.reply.bytes += take as u64;
                    rest = rest.get(take..).unwrap_or(&[]);
                    if end {
                        self.reply_line(ts, out, error);
                    }
                }
                State::Data { remaining } => {
                    let n = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(rest.len());
                    rest = rest.get(n..).unwrap_or(&[]);
                    self.reply_data(ts, n as u64, remaining, out);
                }
            }
        }
        if unknown == 0 || self.dead {
            return;
        }
        let mut unknown = unknown;
        if let State::Data { remaining } = self.resp_state {
            let n = remaining.min(unknown);
            self.reply.truncated = true;
            self.reply_data(ts, n, remaining, out);
            if n == unknown {
                return;
            }
            unknown -= n;
        }
        // The tail holds lines unseen: the reply in progress and every request sent before
        // this syscall are taken as answered by it.
        self.reply.bytes += unknown;
        self.reply.truncated = true;
        while self.pending.front().is_some_and(|p| p.start_ns <= ts) {
            let reply = std::mem::take(&mut self.reply);
            self.answer(ts, reply, out);
        }
        self.reply = Reply::default();
        self.resp_line.clear();
        self.resp_state = State::Skip;
        self.expect_orphans = true;
    }

    fn reply_data(&mut self, ts: u64, n: u64, remaining: u64, out: &mut Vec<Exchange>) {
        self.reply.bytes += n;
        let left = remaining.saturating_sub(n);
        if left > 0 {
            self.resp_state = State::Data { remaining: left };
            return;
        }
        self.resp_state = State::Line;
        // A meta `VA` block ends its reply; a `VALUE` block is followed by more lines.
        let front = self.pending.front().map(|p| p.kind);
        if !matches!(front, Some(Kind::Retrieval { .. })) {
            let reply = std::mem::take(&mut self.reply);
            self.answer(ts, reply, out);
        }
    }

    /// A reply line ended.
    fn reply_line(&mut self, ts: u64, out: &mut Vec<Exchange>, error: &mut Option<&'static str>) {
        let (word, len) = {
            let mut tokens = self.resp_line.tokens();
            let word: [u8; 12] = {
                let mut w = [0u8; 12];
                let t = tokens.next().unwrap_or(&[]);
                if t.len() <= w.len() {
                    w[..t.len()].copy_from_slice(t);
                }
                w
            };
            // `VALUE <key> <flags> <bytes>`, `VA <size> <flags>*`.
            let at = if word.starts_with(b"VALUE\0") { 2 } else { 0 };
            let len = tokens
                .nth(at)
                .and_then(|t| std::str::from_utf8(t).ok())
                .and_then(|t| t.parse::<u64>().ok());
            (word, len)
        };
        self.resp_line.clear();
        let word = word.split(|b| *b == 0).next().unwrap_or(&[]);
        let multi = matches!(
            self.pending.front().map(|p| p.kind),
            Some(Kind::Retrieval { .. } | Kind::Stats)
        );
        let mut done = true;
        match word {
            b"VALUE" => match len {
                Some(len) => {
                    self.reply.hits += 1;
                    self.resp_state = State::Data {
                        remaining: len.saturating_add(2),
                    };
                    done = false;
                }
                None => {
                    self.replies_malformed(error);
                    return;
                }
            },
            b"VA" => {
                self.reply.hits += 1;
                if let Some(len) = len {
                    self.resp_state = State::Data {
                        remaining: len.saturating_add(2),
                    };
                    done = false;
                }
            }
            b"HD" if self.pending.front().is_some_and(|p| p.operation == "mg") => {
                self.reply.hits += 1;
            }
            b"EN" => self.reply.miss = true,
            b"END" => {}
            b"ERROR" => self.reply.status = Some((Outcome::ClientError, "ERROR")),
            b"CLIENT_ERROR" => {
                self.reply.status = Some((Outcome::ClientError, "CLIENT_ERROR"));
            }
            b"SERVER_ERROR" => {
                self.reply.status = Some((Outcome::ServerError, "SERVER_ERROR"));
            }
            b"MN" => {
                // Quiet meta commands before the `mn` that were not answered: done.
                while self
                    .pending
                    .front()
                    .is_some_and(|p| p.quiet && p.operation != "mn")
                {
                    let quiet = Reply {
                        started: true,
                        ..Reply::default()
                    };
                    self.answer(ts, quiet, out);
                }
            }
            _ if multi => done = false,
            _ => {}
        }
        if done {
            let reply = std::mem::take(&mut self.reply);
            self.answer(ts, reply, out);
        }
        if std::mem::take(&mut self.orphan) {
            self.error("response_without_request", error);
        }
    }

    fn replies_malformed(&mut self, error: &mut Option<&'static str>) {
        self.reply = Reply::default();
        self.resp_state = State::Skip;
        self.expect_orphans = true;
        self.error("bad_reply", error);
    }

    /// Pairs a reply with the oldest request.
    fn answer(&mut self, ts: u64, reply: Reply, out: &mut Vec<Exchange>) {
        let Some(p) = self.pending.pop_front() else {
            self.orphan = !self.expect_orphans;
            return;
        };
        self.consecutive_errors = 0;
        let outcome = reply.status.map_or(Outcome::Ok, |(o, _)| o);
        out.push(exchange(p, ts, &reply, outcome));
    }
}

fn reply_dir(side: Side) -> Direction {
    match side.request_direction() {
        Direction::Egress => Direction::Ingress,
        Direction::Ingress => Direction::Egress,
    }
}

fn exchange(p: Pending, end_ns: u64, reply: &Reply, outcome: Outcome) -> Exchange {
    let (hits, misses) = match p.kind {
        Kind::Retrieval { .. } if reply.status.is_none() && reply.started => {
            (Some(reply.hits), Some(p.keys.saturating_sub(reply.hits)))
        }
        Kind::Meta if p.operation == "mg" && reply.status.is_none() && reply.started => {
            let hit = u32::from(!reply.miss && reply.hits > 0);
            (
                Some(hit),
                Some(u32::from(reply.miss || (p.quiet && hit == 0))),
            )
        }
        _ => (None, None),
    };
    Exchange {
        start_ns: p.start_ns,
        end_ns: end_ns.max(p.start_ns),
        outcome,
        truncated: p.truncated || reply.truncated,
        request_bytes: p.bytes,
        response_bytes: reply.bytes,
        context: super::context::Found::None,
        attributes: super::Attributes::Memcached(Attributes {
            db: DbAttributes {
                system: System::Memcached,
                namespace: None,
                operation: p.operation,
                collection: None,
                query: Some(p.query),
                status_code: reply.status.map(|(_, s)| Cow::Borrowed(s)),
            },
            hits,
            misses,
        }),
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
        if self.dead {
            return Ok(());
        }
        let (payload, unknown) = super::captured(payload, bytes);
        let request = dir == self.side.request_direction();
        if !self.seen_any && !payload.is_empty() {
            self.seen_any = true;
            if binary_header(request, payload) != Verdict::No {
                self.give_up();
                return Err(super::ParseError {
                    reason: "binary_protocol",
                });
            }
        }
        let mut error = None;
        if request {
            self.feed_requests(ts_ns, payload, unknown, out, &mut error);
        } else {
            self.feed_replies(ts_ns, payload, unknown, out, &mut error);
        }
        match error {
            Some(reason) => Err(super::ParseError { reason }),
            None => Ok(()),
        }
    }

    fn gap(&mut self, dir: Direction) {
        if self.dead {
            return;
        }
        if dir == self.side.request_direction() {
            self.request = None;
            self.req_line.clear();
            self.req_state = State::Skip;
        } else {
            self.reply = Reply::default();
            self.resp_line.clear();
            self.resp_state = State::Skip;
            self.pending.clear();
        }
        self.expect_orphans = true;
    }

    fn close(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        if self.dead {
            return;
        }
        if self.reply.started && !self.pending.is_empty() {
            let mut reply = std::mem::take(&mut self.reply);
            reply.truncated = true;
            self.answer(self.last_reply_ns, reply, out);
        }
        for p in std::mem::take(&mut self.pending) {
            out.push(exchange(p, ts_ns, &Reply::default(), Outcome::NoResponse));
        }
        self.give_up();
    }

    fn in_flight(&self) -> bool {
        !self.dead && !self.pending.is_empty()
    }

    fn is_dead(&self) -> bool {
        self.dead
    }
}

#[cfg(test)]
mod tests;
