//! Redis: RESP2 and RESP3 (<https://redis.io/docs/latest/develop/reference/protocol-spec/>),
//! and inline commands.
//!
//! Each direction is a [`resp::Decoder`]. A request (an array of bulk strings, or an inline
//! command) is queued; each reply answers the oldest queued request (Redis answers in order,
//! pipelined or not). So MULTI, each queued command (`+QUEUED`) and EXEC are one exchange each,
//! as the server answers them. What is not a reply:
//! - RESP3 push messages (`>`), except the confirmation that answers a (P|S)SUBSCRIBE or
//!   (P|S)UNSUBSCRIBE;
//! - in RESP2's subscribed mode, the `message`/`pmessage`/`smessage` arrays, and the further
//!   confirmations of a command naming several channels (its first answers it);
//! - after MONITOR's `+OK`, the stream of monitored commands.
//!
//! An error reply (`-ERR ...`, RESP3 `!`) is an [`Outcome::ServerError`] whose status code is the
//! error's prefix, its first word (`ERR`, `WRONGTYPE`). `SELECT n` answered `+OK` sets
//! `db.namespace` to `n` for the commands after it.
//!
//! Bulk strings are skipped by count, also through uncaptured bytes. When the framing falls into
//! uncaptured bytes (a tail that holds more than the value in progress), the message in
//! progress is used as seen (truncated), and the direction resynchronises at the next syscall
//! that starts like a message; a reply lost so answers every request queued before that syscall
//! (a server writes the replies of what it read together).

pub mod commands;
pub mod resp;

use std::{borrow::Cow, collections::VecDeque, sync::Arc};

use resp::{Decoder, Event, Keep, Message};

use super::{
    Direction, Exchange, Outcome, Side, Verdict,
    db::{self, DbAttributes, System},
};

pub type Attributes = db::DbAttributes;
pub type Red = db::DbRed;

/// Label value of the protocol in metrics.
pub const NAME: &str = "redis";

/// Most requests awaiting a reply on one connection (pipelining).
pub const MAX_PENDING: usize = 1024;
/// Malformed messages in a row, without a good one between them, before giving up.
const MAX_CONSECUTIVE_ERRORS: u32 = 8;
/// Bytes detection looks at before calling a line without its end an inline command.
const INLINE_DETECT_BYTES: usize = 64;

/// What a request keeps: the command and its arguments, up to the longest query text.
const REQUEST_KEEP: Keep = Keep {
    elems: 256,
    elem_bytes: db::MAX_QUERY_BYTES,
    total_bytes: db::MAX_QUERY_BYTES,
};
/// What a reply keeps: an error's prefix, a pub/sub frame's kind, channel and count.
const REPLY_KEEP: Keep = Keep {
    elems: 3,
    elem_bytes: 40,
    total_bytes: 120,
};

/// Detection: a RESP request (`*<n>\r\n$`) or an inline command (a Redis command word, then a
/// space or the line end) read by a server or written by a client; a RESP reply the other way.
pub fn detect(side: Side, dir: Direction, first: &[u8], _midstream: bool) -> Verdict {
    if dir == side.request_direction() {
        request_start(first)
    } else {
        reply_start(first)
    }
}

/// Whether `bytes` start like a request.
fn request_start(bytes: &[u8]) -> Verdict {
    match bytes.first() {
        None => Verdict::Prefix,
        Some(b'*') => {
            let digits = bytes
                .get(1..)
                .unwrap_or(&[])
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            match (digits, bytes.get(1 + digits..).unwrap_or(&[])) {
                (0, []) => Verdict::Prefix,
                (0, _) | (20.., _) => Verdict::No,
                (_, []) | (_, [b'\r']) | (_, [b'\r', b'\n']) => Verdict::Prefix,
                (_, [b'\r', b'\n', b'$', ..]) => Verdict::Yes,
                _ => Verdict::No,
            }
        }
        Some(_) => inline_start(bytes),
    }
}

/// Whether `bytes` start like an inline command: a command word, then the end of the line or
/// a space and printable arguments up to it.
fn inline_start(bytes: &[u8]) -> Verdict {
    let word = bytes
        .iter()
        .take_while(|b| b.is_ascii_alphabetic() || **b == b'_' || **b == b'-')
        .count();
    let (name, rest) = bytes.split_at(word);
    if rest.is_empty() {
        return if commands::lookup(name).is_some() || commands::prefix_of_command(name) {
            Verdict::Prefix
        } else {
            Verdict::No
        };
    }
    if commands::lookup(name).is_none() {
        return Verdict::No;
    }
    match rest {
        [b'\n', ..] | [b'\r', b'\n', ..] => return Verdict::Yes,
        [b'\r'] => return Verdict::Prefix,
        [b' ', ..] => {}
        _ => return Verdict::No,
    }
    for (i, &b) in rest.iter().enumerate() {
        match b {
            b'\n' => return Verdict::Yes,
            b'\r' if rest.get(i + 1).is_none_or(|n| *n == b'\n') => {}
            b' ' | b'\t' => {}
            b if b.is_ascii_graphic() || b >= 0x80 => {}
            _ => return Verdict::No,
        }
    }
    if bytes.len() >= INLINE_DETECT_BYTES {
        Verdict::Yes
    } else {
        Verdict::Prefix
    }
}

/// Whether `bytes` start like a reply, strictly: a type byte and a well-formed first line (a
/// simple string of one word, an error whose prefix is an uppercase word, a number, a length).
fn reply_start(bytes: &[u8]) -> Verdict {
    let Some((&kind, rest)) = bytes.split_first() else {
        return Verdict::Prefix;
    };
    let Some(end) = rest.iter().position(|b| *b == b'\r') else {
        // No line end yet: plausible while what is there may still be a first line.
        return if rest.len() < 32 && line_ok(kind, rest, true) {
            Verdict::Prefix
        } else {
            Verdict::No
        };
    };
    let (line, after) = rest.split_at(end);
    match after.get(1) {
        None => {
            return if line_ok(kind, line, false) {
                Verdict::Prefix
            } else {
                Verdict::No
            };
        }
        Some(b'\n') => {}
        Some(_) => return Verdict::No,
    }
    if line_ok(kind, line, false) {
        Verdict::Yes
    } else {
        Verdict::No
    }
}

/// Whether `line` (after the type byte, without CRLF) is a well-formed first line of a reply of
/// type `kind`; `partial`: the line may continue.
fn line_ok(kind: u8, line: &[u8], partial: bool) -> bool {
    let number = |l: &[u8], signed: bool| {
        let digits = l.strip_prefix(b"-").filter(|_| signed).unwrap_or(l);
        (partial || !digits.is_empty())
            && digits.len() <= 20
            && digits.iter().all(u8::is_ascii_digit)
    };
    let length = |l: &[u8]| l == b"-1" || (partial && l == b"-") || number(l, false);
    match kind {
        b'+' => {
            (partial || !line.is_empty())
                && line
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(b))
        }
        b'-' => {
            let word = line.iter().take_while(|b| b.is_ascii_uppercase()).count();
            match line.get(word) {
                None => partial || word > 0,
                Some(b' ') => word > 0 && line.iter().all(|b| !b.is_ascii_control()),
                Some(_) => false,
            }
        }
        b':' | b'(' => number(line, true),
        b'$' | b'*' | b'=' | b'!' | b'%' | b'~' | b'|' | b'>' => length(line),
        b'_' => line.is_empty(),
        b'#' => matches!(line, b"t" | b"f") || (partial && line.is_empty()),
        b',' => {
            (partial || !line.is_empty())
                && line
                    .iter()
                    .all(|b| b.is_ascii_digit() || b"-+.eE".contains(b))
                || matches!(line, b"inf" | b"-inf" | b"nan")
        }
        _ => false,
    }
}

/// The pub/sub command families (their confirmations are named in lowercase).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Subscribe,
    Psubscribe,
    Ssubscribe,
    Unsubscribe,
    Punsubscribe,
    Sunsubscribe,
}

impl Family {
    fn of_command(op: &str) -> Option<Family> {
        Some(match op {
            "SUBSCRIBE" => Family::Subscribe,
            "PSUBSCRIBE" => Family::Psubscribe,
            "SSUBSCRIBE" => Family::Ssubscribe,
            "UNSUBSCRIBE" => Family::Unsubscribe,
            "PUNSUBSCRIBE" => Family::Punsubscribe,
            "SUNSUBSCRIBE" => Family::Sunsubscribe,
            _ => return None,
        })
    }

    fn of_confirmation(kind: &[u8]) -> Option<Family> {
        let mut buf = [0u8; 12];
        let lower = buf.get_mut(..kind.len())?;
        lower.copy_from_slice(kind);
        lower.make_ascii_lowercase();
        Some(match &*lower {
            b"subscribe" => Family::Subscribe,
            b"psubscribe" => Family::Psubscribe,
            b"ssubscribe" => Family::Ssubscribe,
            b"unsubscribe" => Family::Unsubscribe,
            b"punsubscribe" => Family::Punsubscribe,
            b"sunsubscribe" => Family::Sunsubscribe,
            _ => return None,
        })
    }
}

/// Whether a pub/sub frame's kind is a published message.
fn is_message(kind: &[u8]) -> bool {
    [&b"message"[..], b"pmessage", b"smessage"]
        .iter()
        .any(|k| k.eq_ignore_ascii_case(kind))
}

/// What a request does to the connection once answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    None,
    /// A pub/sub command and how many channels it names.
    PubSub(Family, u64),
    /// SELECT of a database index.
    Select(u32),
    Monitor,
    Reset,
}

/// A request awaiting its reply.
#[derive(Debug)]
struct Pending {
    seq: u64,
    start_ns: u64,
    bytes: u64,
    truncated: bool,
    operation: Cow<'static, str>,
    query: String,
    namespace: Option<Arc<str>>,
    effect: Effect,
}

/// The registry's parser of one connection side.
pub struct Parser {
    side: Side,
    requests: Decoder,
    replies: Decoder,
    pending: VecDeque<Pending>,
    /// Sequence number of the next request.
    seq: u64,
    /// The first request queued after the last loss of messages.
    resync_seq: u64,
    /// Replies without a request are expected (not errors): messages were lost, and no request
    /// queued since was answered yet.
    expect_orphans: bool,
    /// Timestamp of the last reply syscall.
    last_reply_ns: u64,
    /// The database selected, once SELECT was seen.
    namespace: Option<Arc<str>>,
    /// RESP2 subscribed mode: subscriptions counted by the last confirmation.
    subscribed: bool,
    /// Further confirmations of the last pub/sub command answered (one per channel named).
    confirmations_left: u64,
    monitoring: bool,
    consecutive_errors: u32,
    dead: bool,
    events: Vec<Event>,
}

impl Parser {
    pub fn new(side: Side) -> Self {
        Parser {
            side,
            requests: Decoder::new(true, REQUEST_KEEP),
            replies: Decoder::new(false, REPLY_KEEP),
            pending: VecDeque::new(),
            seq: 0,
            resync_seq: 0,
            expect_orphans: false,
            last_reply_ns: 0,
            namespace: None,
            subscribed: false,
            confirmations_left: 0,
            monitoring: false,
            consecutive_errors: 0,
            dead: false,
            events: Vec::new(),
        }
    }

    /// Requests awaiting a reply, and bytes buffered (for the tests' bound checks).
    #[cfg(test)]
    fn buffered(&self) -> (usize, usize) {
        (
            self.pending.len(),
            self.requests.buffered() + self.replies.buffered(),
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
        self.requests = Decoder::new(
            true,
            Keep {
                elems: 0,
                elem_bytes: 0,
                total_bytes: 0,
            },
        );
        self.replies = Decoder::new(
            false,
            Keep {
                elems: 0,
                elem_bytes: 0,
                total_bytes: 0,
            },
        );
    }

    fn on_request(&mut self, m: Message, error: &mut Option<&'static str>) {
        let Some(command) = m.elems.first().filter(|c| !c.is_empty()) else {
            return;
        };
        if self.monitoring {
            // Its reply is lost in the monitored stream.
            return;
        }
        let operation = operation_name(command);
        let args = m.len.saturating_sub(1);
        let effect = match &*operation {
            "SELECT" => m
                .elems
                .get(1)
                .and_then(|a| std::str::from_utf8(a).ok())
                .and_then(|a| a.parse::<u32>().ok())
                .map_or(Effect::None, Effect::Select),
            "MONITOR" => Effect::Monitor,
            "RESET" => Effect::Reset,
            op => Family::of_command(op).map_or(Effect::None, |f| Effect::PubSub(f, args)),
        };
        if self.pending.len() >= MAX_PENDING {
            self.error("too_many_pending", error);
            return;
        }
        self.pending.push_back(Pending {
            seq: self.seq,
            start_ns: m.start_ns,
            bytes: m.bytes,
            truncated: m.truncated,
            operation,
            query: query_text(&m.elems),
            namespace: self.namespace.clone(),
            effect,
        });
        self.seq += 1;
    }

    fn on_reply(&mut self, m: Message, out: &mut Vec<Exchange>, error: &mut Option<&'static str>) {
        if self.monitoring {
            return;
        }
        let push = m.kind == b'>';
        let front = self.pending.front().map(|p| p.effect);
        let pubsub_context = push || self.subscribed || matches!(front, Some(Effect::PubSub(..)));
        if pubsub_context && matches!(m.kind, b'>' | b'*') {
            let kind = m.elems.first().map_or(&[][..], Vec::as_slice);
            if is_message(kind) {
                return;
            }
            if let Some(family) = Family::of_confirmation(kind) {
                if !push {
                    // The subscriptions left, the confirmation's third element.
                    let count = m.elems.get(2).and_then(|c| std::str::from_utf8(c).ok());
                    self.subscribed = count.and_then(|c| c.parse::<u64>().ok()).unwrap_or(1) > 0;
                }
                match front {
                    Some(Effect::PubSub(f, channels))
                        if f == family && self.confirmations_left == 0 =>
                    {
                        self.confirmations_left = channels.saturating_sub(1);
                        self.answer(m, out);
                    }
                    _ => self.confirmations_left = self.confirmations_left.saturating_sub(1),
                }
                return;
            }
        }
        if push {
            return;
        }
        if self.pending.is_empty() {
            if !self.expect_orphans {
                self.error("response_without_request", error);
            }
            return;
        }
        self.answer(m, out);
    }

    /// Pairs a reply with the oldest request.
    fn answer(&mut self, m: Message, out: &mut Vec<Exchange>) {
        let Some(p) = self.pending.pop_front() else {
            return;
        };
        self.consecutive_errors = 0;
        if p.seq >= self.resync_seq {
            self.expect_orphans = false;
        }
        let failed = matches!(m.kind, b'-' | b'!');
        match p.effect {
            Effect::Select(db) if !failed => self.namespace = Some(Arc::from(db.to_string())),
            Effect::Monitor if !failed => self.monitoring = true,
            Effect::Reset if !failed => {
                self.namespace = None;
                self.subscribed = false;
            }
            _ => {}
        }
        let status_code =
            failed.then(|| error_prefix(m.elems.first().map_or(&[][..], Vec::as_slice)));
        out.push(Exchange {
            start_ns: p.start_ns,
            end_ns: m.end_ns.max(p.start_ns),
            outcome: if failed {
                Outcome::ServerError
            } else {
                Outcome::Ok
            },
            truncated: p.truncated || m.truncated,
            request_bytes: p.bytes,
            response_bytes: m.bytes,
            context: super::context::Found::None,
            attributes: super::Attributes::Redis(DbAttributes {
                system: System::Redis,
                namespace: p.namespace,
                operation: p.operation,
                collection: None,
                query: Some(p.query),
                status_code,
            }),
        });
    }

    /// The framing of the replies fell into uncaptured bytes at `ts`: every request sent before
    /// is taken as answered by what the syscall held.
    fn replies_lost(&mut self, partial: Option<Message>, ts: u64, out: &mut Vec<Exchange>) {
        let mut reply = partial.unwrap_or(Message {
            start_ns: ts,
            end_ns: ts,
            kind: b'+',
            truncated: true,
            ..Message::default()
        });
        reply.end_ns = ts;
        reply.truncated = true;
        let mut first = true;
        while self.pending.front().is_some_and(|p| p.start_ns <= ts) {
            let m = if first {
                first = false;
                reply.clone()
            } else {
                Message {
                    start_ns: ts,
                    end_ns: ts,
                    kind: b'+',
                    truncated: true,
                    ..Message::default()
                }
            };
            self.answer(m, out);
        }
        self.lost();
    }

    /// Messages may have been lost: replies without a request are expected until a request
    /// sent from now on is answered.
    fn lost(&mut self) {
        self.resync_seq = self.seq;
        self.expect_orphans = true;
    }
}

/// `db.operation.name`: the command uppercase (a static string for the commands Redis knows).
fn operation_name(command: &[u8]) -> Cow<'static, str> {
    if let Some(name) = commands::lookup(command) {
        return Cow::Borrowed(name);
    }
    if command.len() <= db::MAX_OPERATION_BYTES && command.iter().all(u8::is_ascii_graphic) {
        let mut name = String::from_utf8_lossy(command).into_owned();
        name.make_ascii_uppercase();
        Cow::Owned(name)
    } else {
        Cow::Borrowed("UNKNOWN")
    }
}

/// The command and its arguments as captured, separated by spaces, bounded.
fn query_text(elems: &[Vec<u8>]) -> String {
    let mut q = String::new();
    for (i, e) in elems.iter().enumerate() {
        if i > 0 {
            q.push(' ');
        }
        q.push_str(&String::from_utf8_lossy(e));
        if q.len() >= db::MAX_QUERY_BYTES {
            let mut cut = db::MAX_QUERY_BYTES;
            while !q.is_char_boundary(cut) {
                cut -= 1;
            }
            q.truncate(cut);
            break;
        }
    }
    q
}

/// The status code of an error reply: its prefix, the first word (`ERR`, `WRONGTYPE`), when it
/// is one (uppercase letters, digits, `_`, `-`, at most 32 bytes); `ERR` otherwise.
fn error_prefix(text: &[u8]) -> Cow<'static, str> {
    const KNOWN: [&str; 16] = [
        "ERR",
        "WRONGTYPE",
        "NOSCRIPT",
        "NOAUTH",
        "WRONGPASS",
        "NOPERM",
        "EXECABORT",
        "BUSY",
        "BUSYKEY",
        "LOADING",
        "READONLY",
        "OOM",
        "MOVED",
        "ASK",
        "CROSSSLOT",
        "NOGROUP",
    ];
    let word = text.split(|b| *b == b' ').next().unwrap_or(&[]);
    if let Some(k) = KNOWN.iter().find(|k| k.as_bytes() == word) {
        return Cow::Borrowed(k);
    }
    if !word.is_empty()
        && word.len() <= 32
        && word
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
    {
        Cow::Owned(String::from_utf8_lossy(word).into_owned())
    } else {
        Cow::Borrowed("ERR")
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
        if !request {
            self.last_reply_ns = ts_ns;
        }
        let mut events = std::mem::take(&mut self.events);
        if request {
            self.requests.feed(ts_ns, payload, unknown, &mut events);
        } else {
            self.replies.feed(ts_ns, payload, unknown, &mut events);
        }
        let mut error = None;
        for event in events.drain(..) {
            if self.dead {
                break;
            }
            match (event, request) {
                (Event::Message(m), true) => self.on_request(m, &mut error),
                (Event::Message(m), false) => self.on_reply(m, out, &mut error),
                (Event::Lost(partial), true) => {
                    if let Some(m) = partial {
                        self.on_request(m, &mut error);
                    }
                    // Requests may be hidden in the tail: their replies would answer later ones.
                    self.lost();
                }
                (Event::Lost(partial), false) => self.replies_lost(partial, ts_ns, out),
                (Event::Malformed(reason), _) => {
                    self.lost();
                    self.error(reason, &mut error);
                }
            }
        }
        self.events = events;
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
            self.requests.gap();
        } else {
            self.replies.gap();
            // Replies to any of the queued requests may have been lost: pairing them with later
            // replies would mislabel every exchange after the gap.
            self.pending.clear();
        }
        self.lost();
    }

    fn close(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        if self.dead {
            return;
        }
        if let Some(partial) = self.replies.take_partial()
            && partial.kind != b'>'
        {
            let end_ns = self.last_reply_ns;
            self.answer(Message { end_ns, ..partial }, out);
        }
        for p in self.pending.drain(..) {
            out.push(Exchange {
                start_ns: p.start_ns,
                end_ns: ts_ns.max(p.start_ns),
                outcome: Outcome::NoResponse,
                truncated: p.truncated,
                request_bytes: p.bytes,
                response_bytes: 0,
                context: super::context::Found::None,
                attributes: super::Attributes::Redis(DbAttributes {
                    system: System::Redis,
                    namespace: p.namespace,
                    operation: p.operation,
                    collection: None,
                    query: Some(p.query),
                    status_code: None,
                }),
            });
        }
        self.give_up();
    }

    fn in_flight(&self) -> bool {
        !self.dead && (!self.pending.is_empty() || self.replies.in_message())
    }

    fn is_dead(&self) -> bool {
        self.dead
    }
}

#[cfg(test)]
mod tests;
