//! PostgreSQL, frontend/backend protocol 3.0
//! (<https://www.postgresql.org/docs/15/protocol-flow.html>), incremental, both directions.
//!
//! [`frame`] cuts each direction into messages, keeping only a bounded prefix of each body.
//! The parser keeps a queue of the client's requests awaiting their answers and pairs each
//! server message with the head of that queue, in order (the server answers in order):
//!
//! - **Startup**: `StartupMessage` gives `db.namespace` (its `database`, else its `user`). An
//!   `SSLRequest`/`GSSENCRequest` answered `N` continues in plaintext; answered `G` the
//!   connection is encrypted: the parser stops (parse error `tls`; the L4 layer still counts
//!   the bytes). Answered `S`, the client's next bytes decide: a TLS record stops the parser
//!   the same way, a `StartupMessage` (the connection's plaintext, read from its TLS library,
//!   see `conntrack`) continues as after `N`. Authentication, `ParameterStatus`,
//!   `BackendKeyData`, `NoticeResponse`, `NotificationResponse` and the `ReadyForQuery` that
//!   ends the startup are not exchanges.
//! - **Simple query** `Q`: one exchange per statement answered by `CommandComplete`,
//!   `EmptyQueryResponse` or `ErrorResponse`. The text is split on `;` outside quotes,
//!   comments and dollar quotes; empty statements are dropped (the server skips them too). The
//!   n-th answer takes the n-th statement; an answer past the split statements (a text longer
//!   than the capture) takes its operation from the `CommandComplete` tag. After an error the
//!   server runs none of the rest: they are no exchanges. All statements of one `Q` start at
//!   the `Q`.
//! - **Extended query**: `Parse` remembers statement name → text, `Bind` portal → statement
//!   (both maps per connection, bounded), `Close` forgets. One exchange per `Execute`, its text
//!   the bound statement's, started at the first message of its group (the `Parse`/`Bind`/
//!   `Describe` sent since the previous `Execute` or `Sync`), answered by `CommandComplete`,
//!   `EmptyQueryResponse`, `PortalSuspended` or `ErrorResponse`. Pipelined Executes before one
//!   `Sync` pair in order. An `ErrorResponse` to a `Parse`/`Bind`/`Describe` is the answer of
//!   the next `Execute` of the pipeline (the statement failed), or an exchange of its own when
//!   none follows (a prepare alone). The server then skips every message until `Sync`: the
//!   later Executes of that pipeline were never run nor answered, and are
//!   [`Outcome::NoResponse`](super::Outcome::NoResponse) (failed for the client, not for the
//!   server).
//! - **COPY** in and out: the `CopyData`/`CopyDone`/`CopyFail` messages count as request or
//!   response bytes of the COPY statement's exchange, which ends at its `CommandComplete`.
//! - `ErrorResponse`: [`Outcome::ServerError`](super::Outcome::ServerError) with its SQLSTATE
//!   (`C` field) as `status_code` (SQLSTATE classes other than `00` are all errors).
//!
//! Uncaptured bytes are skipped by count (a body longer than the capture is cut, and its
//! message marked truncated). A header in uncaptured bytes loses the framing of that direction
//! (parse error `header_not_captured`): syscalls are then skipped until one starts with a chain
//! of plausible messages (known type, sane length). When the server's direction was lost, the
//! requests sent before the loss are completed at the resync (or close) as truncated
//! [`Outcome::Ok`](super::Outcome::Ok) exchanges (of a simple query, only the statement in
//! progress: whether the later ones ran is unknown), ending at the last server syscall before
//! the resync: their answers went by unseen (an error hidden there is missed). When the client's
//! direction was lost, requests in the lost bytes are unknown and their answers are ignored.
//!
//! A connection found mid-stream (its first client bytes a typed `Q` or `P`, not a startup)
//! starts with the server's direction lost: nothing is paired until a plausible boundary, and
//! answers without a request in the queue are dropped, never invented.

pub mod frame;
#[cfg(test)]
mod tests;

use std::{collections::VecDeque, sync::Arc};

use frame::{End, Frame, FrameError, Message, Mode, Stream};

use super::{
    Direction, Exchange, Outcome, Side, Verdict,
    db::{self, DbAttributes, System},
};
use crate::fast::Map;

/// Label value of the protocol in metrics (`db.system.name`).
pub const NAME: &str = "postgresql";

pub type Attributes = DbAttributes;
pub type Red = db::DbRed;

/// Requests awaiting their answers on one connection; past it the parser gives up.
pub const MAX_PENDING: usize = 4096;
/// Statement names and portal names remembered per connection.
pub const MAX_STATEMENTS: usize = 256;
/// Body bytes kept of a message whose text the parser reads.
const KEEP_TEXT: usize = db::MAX_QUERY_BYTES + 128;
/// Body bytes kept of a message whose names or fields the parser reads.
const KEEP_FIELDS: usize = 512;

/// What the client's messages keep.
fn keep_frontend(kind: u8) -> usize {
    match kind {
        0 => frame::MAX_STARTUP_BYTES as usize,
        b'Q' | b'P' => KEEP_TEXT,
        b'B' | b'E' | b'C' => KEEP_FIELDS,
        _ => 0,
    }
}

/// What the server's messages keep.
fn keep_backend(kind: u8) -> usize {
    match kind {
        b'E' => KEEP_FIELDS,
        b'C' => 64,
        _ => 0,
    }
}

/// Detection, on the client's direction only: a startup packet (StartupMessage 3.x,
/// SSLRequest, GSSENCRequest, CancelRequest), or on a connection found mid-stream a `Q` or `P`
/// message with a sane length and text after it.
pub fn detect(side: Side, dir: Direction, first: &[u8], _midstream: bool) -> Verdict {
    if dir != side.request_direction() {
        return Verdict::No;
    }
    match first.first() {
        Some(0) => detect_startup(first),
        Some(b'Q' | b'P') => detect_typed(first),
        _ => Verdict::No,
    }
}

fn detect_startup(first: &[u8]) -> Verdict {
    let Some(h) = first.get(..8) else {
        // Lengths below 10000: the second byte is 0 as well.
        return if first.get(1).is_none_or(|b| *b == 0) {
            Verdict::Prefix
        } else {
            Verdict::No
        };
    };
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let code = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let ok = match code {
        frame::SSL_REQUEST | frame::GSSENC_REQUEST => len == 8,
        frame::CANCEL_REQUEST => len == 16,
        frame::PROTOCOL_3 => (9..=frame::MAX_STARTUP_BYTES).contains(&len),
        _ => false,
    };
    if ok { Verdict::Yes } else { Verdict::No }
}

fn detect_typed(first: &[u8]) -> Verdict {
    let Some(h) = first.get(..6) else {
        return if first.get(1).is_none_or(|b| *b == 0) {
            Verdict::Prefix
        } else {
            Verdict::No
        };
    };
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    if !(6..=1 << 20).contains(&len) {
        return Verdict::No;
    }
    let text = |b: u8| b.is_ascii_graphic() || b.is_ascii_whitespace();
    let ok = match h[0] {
        b'Q' => text(h[5]),
        _ => h[5] == 0 || text(h[5]),
    };
    // A message wholly captured ends its text with a NUL.
    let ends = first
        .get(len as usize)
        .is_none_or(|b| h[0] != b'Q' || *b == 0);
    if ok && ends {
        Verdict::Yes
    } else {
        Verdict::No
    }
}

/// A statement's text as the client sent it (at most [`db::MAX_QUERY_BYTES`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Statement {
    text: Arc<str>,
    /// Cut by the capture or the bound.
    truncated: bool,
}

/// An exchange awaiting its answer.
#[derive(Debug, Clone)]
struct Pending {
    start_ns: u64,
    statement: Option<Statement>,
    request_bytes: u64,
    response_bytes: u64,
    truncated: bool,
}

#[derive(Debug)]
enum OpKind {
    /// A simple query: its statements not answered yet.
    Query {
        statements: VecDeque<Statement>,
        pending: Pending,
    },
    Parse,
    Bind,
    Describe,
    Close,
    Execute(Pending),
    /// `Sync` or `FunctionCall`: answered by `ReadyForQuery`.
    Sync,
}

#[derive(Debug)]
struct Op {
    /// Order number, to tell the requests sent before a loss of the server's framing.
    id: u64,
    ts: u64,
    /// The statement it concerns, if known (Parse, Bind, Describe of a statement).
    statement: Option<Statement>,
    kind: OpKind,
}

/// Why the parser rejected its input (see [`frame::FrameError`] for the framing reasons).
fn error(reason: &'static str) -> super::ParseError {
    super::ParseError { reason }
}

impl From<FrameError> for super::ParseError {
    fn from(e: FrameError) -> Self {
        error(e.reason())
    }
}

/// The PostgreSQL parser of one connection.
pub struct Parser {
    side: Side,
    front: Stream,
    back: Stream,
    ops: VecDeque<Op>,
    next_id: u64,
    statements: Map<Box<str>, Statement>,
    portals: Map<Box<str>, Option<Statement>>,
    namespace: Option<Arc<str>>,
    /// The current extended-query group: start and bytes of the messages since the previous
    /// `Execute` or `Sync`.
    group_start: Option<u64>,
    group_bytes: u64,
    /// Server bytes not yet attributed to an exchange (answers to Parse, Bind...).
    response_bytes: u64,
    /// The server's direction lost its framing: requests with a smaller id were sent before,
    /// and the last server syscall seen since.
    lost_before: Option<u64>,
    lost_end_ns: u64,
    /// The server answered `S` to an `SSLRequest`: the client's next bytes are a TLS record
    /// (the connection is TLS: nothing more to parse) or, when the agent reads the connection's
    /// plaintext from its TLS library, the `StartupMessage`.
    tls_answered: bool,
    dead: bool,
    frames: Vec<Frame>,
}

impl Parser {
    pub fn new(side: Side) -> Self {
        Parser {
            side,
            front: Stream::new(End::Frontend, Mode::Start, keep_frontend),
            back: Stream::new(End::Backend, Mode::Typed, keep_backend),
            ops: VecDeque::new(),
            next_id: 0,
            statements: Map::default(),
            portals: Map::default(),
            namespace: None,
            group_start: None,
            group_bytes: 0,
            response_bytes: 0,
            lost_before: None,
            lost_end_ns: 0,
            tls_answered: false,
            dead: false,
            frames: Vec::new(),
        }
    }

    /// Requests queued and body bytes buffered (for the bounded-memory tests).
    #[cfg(test)]
    fn buffered(&self) -> (usize, usize) {
        (self.ops.len(), self.front.buffered() + self.back.buffered())
    }

    fn exchange(
        &self,
        p: Pending,
        end_ns: u64,
        outcome: Outcome,
        status: Option<String>,
        tag: Option<&[u8]>,
    ) -> Exchange {
        let (operation, collection) = match (&p.statement, tag) {
            (Some(s), _) => db::sql_summary(&s.text),
            (None, Some(tag)) => (db::sql_summary(&String::from_utf8_lossy(cstr(tag))).0, None),
            (None, None) => (db::sql_summary("").0, None),
        };
        let context = p
            .statement
            .as_ref()
            .map_or(super::context::Found::None, |s| {
                db::comment_context(&s.text)
            });
        Exchange {
            start_ns: p.start_ns,
            end_ns: end_ns.max(p.start_ns),
            outcome,
            truncated: p.truncated || p.statement.as_ref().is_some_and(|s| s.truncated),
            request_bytes: p.request_bytes,
            response_bytes: p.response_bytes,
            context,
            attributes: super::Attributes::Postgresql(DbAttributes {
                system: System::Postgresql,
                namespace: self.namespace.clone(),
                operation,
                collection,
                query: p.statement.map(|s| s.text.to_string()),
                status_code: status.map(Into::into),
            }),
        }
    }

    fn push_op(&mut self, ts: u64, statement: Option<Statement>, kind: OpKind) -> bool {
        if self.ops.len() >= MAX_PENDING {
            self.dead = true;
            return false;
        }
        self.ops.push_back(Op {
            id: self.next_id,
            ts,
            statement,
            kind,
        });
        self.next_id += 1;
        true
    }

    /// A client message.
    fn frontend(&mut self, m: Message) -> Result<(), super::ParseError> {
        let ts = m.start_ns;
        match m.kind {
            0 => return self.startup(&m),
            b'Q' => {
                let (text, cut) = text_of(&m.body, m.truncated);
                let statements: VecDeque<Statement> = split_statements(&text)
                    .into_iter()
                    .map(|s| Statement {
                        text: bounded(s).into(),
                        truncated: cut || s.len() > db::MAX_QUERY_BYTES,
                    })
                    .collect();
                let pending = Pending {
                    start_ns: self.group_start.take().unwrap_or(ts),
                    statement: None,
                    request_bytes: m.size + std::mem::take(&mut self.group_bytes),
                    response_bytes: 0,
                    truncated: cut,
                };
                if !self.push_op(
                    ts,
                    None,
                    OpKind::Query {
                        statements,
                        pending,
                    },
                ) {
                    return Err(error("too_many_pending"));
                }
                return Ok(());
            }
            b'd' | b'c' | b'f' => {
                // COPY FROM STDIN data: bytes of the exchange in progress.
                if let Some(p) = self.ops.iter_mut().find_map(|op| op.pending_mut()) {
                    p.request_bytes += m.size;
                    p.truncated |= m.truncated && m.kind != b'd';
                }
                return Ok(());
            }
            b'H' | b'X' | b'p' => return Ok(()),
            _ => {}
        }
        // Extended query.
        if self.group_start.is_none() {
            self.group_start = Some(ts);
        }
        self.group_bytes += m.size;
        let pushed = match m.kind {
            b'P' => {
                let mut fields = m.body.splitn(2, |b| *b == 0);
                let name = fields.next().unwrap_or_default();
                let (text, cut) = text_of(fields.next().unwrap_or_default(), m.truncated);
                let statement = Statement {
                    text: bounded(&text).into(),
                    truncated: cut || text.len() > db::MAX_QUERY_BYTES,
                };
                remember(
                    &mut self.statements,
                    name,
                    statement.clone(),
                    m.truncated && !m.body.contains(&0),
                );
                self.push_op(ts, Some(statement), OpKind::Parse)
            }
            b'B' => {
                let mut fields = m.body.splitn(3, |b| *b == 0);
                let portal = fields.next().unwrap_or_default();
                let name = fields.next();
                let statement = name.and_then(|n| self.statements.get(&*lossy(n)).cloned());
                remember(&mut self.portals, portal, statement.clone(), name.is_none());
                self.push_op(ts, statement, OpKind::Bind)
            }
            b'D' => self.push_op(ts, None, OpKind::Describe),
            b'C' => {
                if let Some((&what, rest)) = m.body.split_first() {
                    let name = lossy(cstr(rest));
                    match what {
                        b'S' => {
                            self.statements.remove(&*name);
                        }
                        b'P' => {
                            self.portals.remove(&*name);
                        }
                        _ => {}
                    }
                }
                self.push_op(ts, None, OpKind::Close)
            }
            b'E' => {
                let portal = lossy(cstr(&m.body));
                let statement = self.portals.get(&*portal).cloned().flatten();
                let pending = Pending {
                    start_ns: self.group_start.take().unwrap_or(ts),
                    statement: statement.clone(),
                    request_bytes: std::mem::take(&mut self.group_bytes),
                    response_bytes: 0,
                    truncated: false,
                };
                self.push_op(ts, statement, OpKind::Execute(pending))
            }
            // Sync, FunctionCall.
            _ => {
                self.group_start = None;
                self.group_bytes = 0;
                self.push_op(ts, None, OpKind::Sync)
            }
        };
        if pushed {
            Ok(())
        } else {
            Err(error("too_many_pending"))
        }
    }

    fn startup(&mut self, m: &Message) -> Result<(), super::ParseError> {
        match m.code {
            frame::SSL_REQUEST | frame::GSSENC_REQUEST => {
                self.back.mode = Mode::Answer;
                Ok(())
            }
            frame::CANCEL_REQUEST => Ok(()),
            code if code >> 16 == 3 => {
                let mut fields = m.body.split(|b| *b == 0);
                let (mut database, mut user) = (None, None);
                while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
                    match k {
                        b"database" if !v.is_empty() => database = Some(lossy(v)),
                        b"user" if !v.is_empty() => user = Some(lossy(v)),
                        _ => {}
                    }
                }
                // The database defaults to the user name.
                self.namespace = database
                    .or(user)
                    .map(|s| Arc::from(&s[..s.len().min(db::MAX_COLLECTION_BYTES)]));
                Ok(())
            }
            _ => {
                self.dead = true;
                Err(error("unsupported_protocol"))
            }
        }
    }

    /// A server message.
    fn backend(&mut self, m: Message, out: &mut Vec<Exchange>) {
        let ts = m.end_ns;
        match m.kind {
            // Asynchronous or startup messages: never an answer.
            b'R' | b'K' | b'S' | b'N' | b'A' | b'v' => {}
            b'1' | b'2' | b'3' | b'n' => {
                self.response_bytes += m.size;
                let pops = match self.ops.front().map(|op| &op.kind) {
                    Some(OpKind::Parse) => m.kind == b'1',
                    Some(OpKind::Bind) => m.kind == b'2',
                    Some(OpKind::Close) => m.kind == b'3',
                    Some(OpKind::Describe) => m.kind == b'n',
                    _ => false,
                };
                if pops {
                    self.ops.pop_front();
                }
            }
            b'T' if matches!(self.ops.front().map(|op| &op.kind), Some(OpKind::Describe)) => {
                self.response_bytes += m.size;
                self.ops.pop_front();
            }
            b'C' | b'I' | b's' => self.complete(m, out),
            b'E' => self.failed(m, out),
            b'Z' => {
                // Ends a simple query or a pipeline: whatever is still queued up to its Sync
                // was skipped by the server.
                while let Some(op) = self.ops.pop_front() {
                    match op.kind {
                        OpKind::Sync | OpKind::Query { .. } => break,
                        OpKind::Execute(p) => {
                            out.push(self.exchange(p, ts, Outcome::NoResponse, None, None));
                        }
                        _ => {}
                    }
                }
                self.response_bytes = 0;
            }
            // Rows, row descriptions, parameter descriptions, COPY: bytes of the exchange
            // in progress.
            _ => self.response_bytes += m.size,
        }
    }

    /// `CommandComplete`, `EmptyQueryResponse`, `PortalSuspended`: the head's answer.
    fn complete(&mut self, m: Message, out: &mut Vec<Exchange>) {
        let ts = m.end_ns;
        let bytes = std::mem::take(&mut self.response_bytes) + m.size;
        let tag = (m.kind == b'C').then_some(m.body.as_slice());
        // Answers to Parse/Bind/Describe/Close came before: the head is the Execute or the
        // Query this completes.
        while let Some(op) = self.ops.front_mut() {
            match &mut op.kind {
                OpKind::Query {
                    statements,
                    pending,
                } => {
                    let mut p = pending.clone();
                    // Bytes of the message go to the first statement only.
                    pending.request_bytes = 0;
                    p.response_bytes += bytes;
                    p.statement = if m.kind == b'I' {
                        None
                    } else {
                        statements.pop_front()
                    };
                    out.push(self.exchange(p, ts, Outcome::Ok, None, tag));
                    return;
                }
                OpKind::Execute(_) => {
                    if let Some(Op {
                        kind: OpKind::Execute(mut p),
                        ..
                    }) = self.ops.pop_front()
                    {
                        p.response_bytes += bytes;
                        out.push(self.exchange(p, ts, Outcome::Ok, None, tag));
                    }
                    return;
                }
                // An answer without its request (the client's bytes were lost): dropped.
                OpKind::Sync => return,
                _ => {
                    self.ops.pop_front();
                }
            }
        }
    }

    /// `ErrorResponse`.
    fn failed(&mut self, m: Message, out: &mut Vec<Exchange>) {
        let ts = m.end_ns;
        let bytes = std::mem::take(&mut self.response_bytes) + m.size;
        let status = sqlstate(&m.body);
        let Some(head) = self.ops.front_mut() else {
            // During the startup (authentication failed, no such database) or a FATAL at a
            // shutdown: not an answer.
            return;
        };
        if let OpKind::Query {
            statements,
            pending,
        } = &mut head.kind
        {
            let mut p = pending.clone();
            p.response_bytes += bytes;
            p.statement = statements.pop_front();
            // The server runs none of the rest of the query string.
            statements.clear();
            out.push(self.exchange(p, ts, Outcome::ServerError, status, None));
            return;
        }
        if matches!(head.kind, OpKind::Sync) {
            // An error at the Sync (a commit that failed): its Executes were answered already.
            return;
        }
        // Extended query: the server skips everything up to the Sync.
        let mut answered = false;
        let mut first: Option<Op> = None;
        while let Some(op) = self.ops.front() {
            if matches!(op.kind, OpKind::Sync | OpKind::Query { .. }) {
                break;
            }
            let Some(op) = self.ops.pop_front() else {
                break;
            };
            match op.kind {
                OpKind::Execute(mut p) if !answered => {
                    answered = true;
                    if let Some(f) = &first {
                        // The error of its Parse/Bind: the statement started there.
                        p.start_ns = p.start_ns.min(f.ts);
                    }
                    p.response_bytes += bytes;
                    out.push(self.exchange(p, ts, Outcome::ServerError, status.clone(), None));
                }
                OpKind::Execute(p) => {
                    out.push(self.exchange(p, ts, Outcome::NoResponse, None, None));
                }
                _ => {
                    if first.is_none() {
                        first = Some(op);
                    }
                }
            }
        }
        if !answered && let Some(op) = first {
            // A Parse, Bind or Describe that failed with no Execute after it.
            let p = Pending {
                start_ns: op.ts,
                statement: op.statement,
                request_bytes: 0,
                response_bytes: bytes,
                truncated: false,
            };
            out.push(self.exchange(p, ts, Outcome::ServerError, status, None));
        }
    }

    /// The server's framing resumed: the requests sent before it was lost were answered in
    /// the lost bytes.
    fn settle_lost(&mut self, out: &mut Vec<Exchange>) {
        let Some(before) = self.lost_before.take() else {
            return;
        };
        let end = self.lost_end_ns;
        while self.ops.front().is_some_and(|op| op.id < before) {
            let Some(op) = self.ops.pop_front() else {
                break;
            };
            match op.kind {
                OpKind::Execute(mut p) => {
                    p.truncated = true;
                    out.push(self.exchange(p, end, Outcome::Ok, None, None));
                }
                OpKind::Query {
                    mut statements,
                    mut pending,
                } => {
                    // The statement in progress; whether the later ones ran is unknown.
                    if let Some(s) = statements.pop_front() {
                        pending.truncated = true;
                        pending.statement = Some(s);
                        out.push(self.exchange(pending, end, Outcome::Ok, None, None));
                    }
                }
                _ => {}
            }
        }
        self.response_bytes = 0;
    }

    fn on_frames(
        &mut self,
        dir_is_front: bool,
        out: &mut Vec<Exchange>,
    ) -> Option<super::ParseError> {
        let mut first_err = None;
        let mut frames = std::mem::take(&mut self.frames);
        for f in frames.drain(..) {
            if self.dead {
                break;
            }
            match f {
                Frame::Startup(m) | Frame::Typed(m) if dir_is_front => {
                    if let Err(e) = self.frontend(m) {
                        first_err.get_or_insert(e);
                    }
                }
                Frame::Startup(_) => {}
                Frame::Typed(m) => self.backend(m, out),
                Frame::Answer { byte, .. } => match byte {
                    b'N' => self.front.mode = Mode::Startup,
                    b'S' => {
                        self.front.mode = Mode::Startup;
                        self.tls_answered = true;
                    }
                    b'G' => {
                        self.dead = true;
                        first_err.get_or_insert(error("tls"));
                    }
                    _ => {
                        self.dead = true;
                        first_err.get_or_insert(error("bad_answer"));
                    }
                },
                Frame::Lost { ts } => {
                    if dir_is_front {
                        self.group_start = None;
                        self.group_bytes = 0;
                    } else if self.lost_before.is_none() {
                        self.lost_before = Some(self.next_id);
                        self.lost_end_ns = ts;
                    }
                }
                Frame::Resync { .. } => {
                    if !dir_is_front {
                        self.settle_lost(out);
                    }
                }
            }
        }
        self.frames = frames;
        first_err
    }
}

impl Op {
    fn pending_mut(&mut self) -> Option<&mut Pending> {
        match &mut self.kind {
            OpKind::Query { pending, .. } | OpKind::Execute(pending) => Some(pending),
            _ => None,
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
        out: &mut Vec<Exchange>,
    ) -> Result<(), super::ParseError> {
        if self.dead {
            return Ok(());
        }
        let front = dir == self.side.request_direction();
        if front && std::mem::take(&mut self.tls_answered) && payload.starts_with(&[0x16, 0x03]) {
            // A TLS handshake record (the ClientHello): its plaintext is not ours to read.
            self.dead = true;
            return Err(error("tls"));
        }
        if front && self.front.mode == Mode::Start && payload.first().is_some_and(|b| *b != 0) {
            // Found mid-stream: the server's answers pair only from a plausible boundary on.
            self.back.lost = true;
        }
        let stream = if front {
            &mut self.front
        } else {
            &mut self.back
        };
        let framed = stream.feed(ts_ns, payload, bytes, &mut self.frames);
        if !front && self.back.lost {
            self.lost_end_ns = ts_ns;
        }
        let parsed = self.on_frames(front, out);
        match (framed, parsed) {
            (Err(e), _) => Err(e.into()),
            (_, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    fn gap(&mut self, dir: Direction) {
        let front = dir == self.side.request_direction();
        let stream = if front {
            &mut self.front
        } else {
            &mut self.back
        };
        // The time of the loss is not known: the last server syscall seen stays the end.
        let ts = self.lost_end_ns;
        stream.lose(ts, &mut self.frames);
        let mut out = Vec::new();
        self.on_frames(front, &mut out);
    }

    fn close(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        self.settle_lost(out);
        while let Some(op) = self.ops.pop_front() {
            match op.kind {
                OpKind::Execute(p) => {
                    out.push(self.exchange(p, ts_ns, Outcome::NoResponse, None, None));
                }
                OpKind::Query {
                    mut statements,
                    mut pending,
                } => {
                    // The statement in progress; the later ones never ran.
                    if let Some(s) = statements.pop_front() {
                        pending.statement = Some(s);
                        out.push(self.exchange(pending, ts_ns, Outcome::NoResponse, None, None));
                    }
                }
                _ => {}
            }
        }
        self.dead = true;
    }

    fn in_flight(&self) -> bool {
        !self.dead
            && self.ops.iter().any(|op| match &op.kind {
                OpKind::Execute(_) => true,
                OpKind::Query { statements, .. } => {
                    !statements.is_empty() || self.lost_before.is_some_and(|b| op.id < b)
                }
                _ => false,
            })
    }

    fn is_dead(&self) -> bool {
        self.dead
    }
}

/// Remembers `name → value` in a bounded map: when full, an arbitrary older entry goes.
/// A `name` cut by the capture is not remembered.
fn remember<V>(map: &mut Map<Box<str>, V>, name: &[u8], value: V, cut: bool) {
    if cut {
        return;
    }
    let name = lossy(name);
    if map.len() >= MAX_STATEMENTS
        && !map.contains_key(&*name)
        && let Some(old) = map.keys().next().cloned()
    {
        map.remove(&old);
    }
    map.insert(name.into(), value);
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The bytes before the first NUL.
fn cstr(b: &[u8]) -> &[u8] {
    b.split(|c| *c == 0).next().unwrap_or_default()
}

/// The NUL-terminated text at the start of `body`, and whether it was cut (no NUL seen).
fn text_of(body: &[u8], truncated: bool) -> (String, bool) {
    match body.iter().position(|b| *b == 0) {
        Some(end) => (lossy(&body[..end]), false),
        None => (lossy(body), truncated || !body.is_empty()),
    }
}

/// At most [`db::MAX_QUERY_BYTES`] of `s`, cut at a character boundary.
fn bounded(s: &str) -> &str {
    let mut end = s.len().min(db::MAX_QUERY_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The SQLSTATE of an ErrorResponse (its `C` field), if captured and well-formed.
fn sqlstate(body: &[u8]) -> Option<String> {
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0)?;
        let value = &tail[..end];
        if code == b'C' {
            return (value.len() == 5 && value.iter().all(u8::is_ascii_alphanumeric))
                .then(|| lossy(value));
        }
        rest = &tail[end + 1..];
    }
    None
}

/// The statements of a simple query string: split on `;` outside quotes (`'...'`,
/// `"..."`, `$tag$...$tag$`) and comments, trimmed, empty ones (blank or comments only)
/// dropped.
fn split_statements(q: &str) -> Vec<&str> {
    let b = q.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    fn push<'a>(s: &'a str, out: &mut Vec<&'a str>) {
        let t = s.trim();
        if !is_blank(t) {
            out.push(t);
        }
    }
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                    .map(|p| i + 1 + p);
                if let Some(e) = tag_end
                    && b[e] == b'$'
                    && !b.get(i + 1).is_some_and(u8::is_ascii_digit)
                {
                    let tag = &b[i..=e];
                    i = e + 1;
                    while i < b.len() && !b[i..].starts_with(tag) {
                        i += 1;
                    }
                    i += tag.len() - 1;
                }
            }
            b';' => {
                push(&q[start..i], &mut out);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < q.len() {
        push(&q[start..], &mut out);
    }
    out
}

/// Whitespace and comments only.
fn is_blank(s: &str) -> bool {
    let mut s = s.trim_start();
    loop {
        if let Some(r) = s.strip_prefix("--") {
            s = r.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(r) = s.strip_prefix("/*") {
            s = r.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else {
            return s.is_empty();
        }
    }
}
