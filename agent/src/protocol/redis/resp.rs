//! An incremental RESP2/RESP3 decoder for one direction of a connection
//! (<https://redis.io/docs/latest/develop/reference/protocol-spec/>).
//!
//! It never buffers a value's payload: bulk strings are skipped by their length, also through
//! uncaptured bytes, and only the first bytes of the elements of the top-level aggregate (the
//! command and its arguments, a reply's first elements) are kept, bounded. Lines (headers,
//! simple strings, inline commands) are buffered up to [`MAX_LINE_BYTES`].

/// Longest line kept (a simple string, an error, an inline command); the rest is scanned.
pub const MAX_LINE_BYTES: usize = 4096;
/// Deepest nesting of aggregates accepted.
pub const MAX_DEPTH: usize = 32;

/// One decoded top-level value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Timestamp of the syscall that carried its first byte, and of the one with its last.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Its size on the wire.
    pub bytes: u64,
    /// Its RESP type byte (attributes before it skipped); `b' '` for an inline command.
    pub kind: u8,
    /// The top-level aggregate's length (a scalar: 1).
    pub len: u64,
    /// The first bytes of the aggregate's elements (a scalar: its text), as many as fit.
    pub elems: Vec<Vec<u8>>,
    /// Part of it was not captured.
    pub truncated: bool,
}

/// What a chunk produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Message(Message),
    /// The framing fell into uncaptured bytes: what was seen of the message in progress, if
    /// any. Later messages of the syscall were not seen; the decoder skips to the next syscall
    /// that starts like a message.
    Lost(Option<Message>),
    /// Not RESP: the decoder skips to the next syscall that starts like a message.
    Malformed(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    remaining: u64,
    /// An attribute map (`|`): its completion does not complete a value.
    attribute: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Line,
    /// In a bulk payload: `remaining` bytes with its CRLF; its content is kept in element
    /// `keep` if any.
    Bulk {
        remaining: u64,
        keep: Option<usize>,
    },
    /// Discarding syscalls until one starts like a message.
    Skip,
}

/// How much of each message's elements to keep.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    pub elems: usize,
    pub elem_bytes: usize,
    pub total_bytes: usize,
}

pub struct Decoder {
    request: bool,
    keep: Keep,
    state: State,
    line: Vec<u8>,
    line_overflow: bool,
    stack: Vec<Frame>,
    msg: Option<Message>,
    kept_bytes: usize,
}

impl Decoder {
    /// A decoder of requests (arrays of bulk strings, inline commands) or of replies.
    pub fn new(request: bool, keep: Keep) -> Self {
        Decoder {
            request,
            keep,
            state: State::Line,
            line: Vec::new(),
            line_overflow: false,
            stack: Vec::new(),
            msg: None,
            kept_bytes: 0,
        }
    }

    /// A message is half read.
    pub fn in_message(&self) -> bool {
        self.msg.is_some()
    }

    /// Buffered bytes (for the tests' bound checks).
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.line.capacity() + self.msg.as_ref().map_or(0, |m| m.elems.len())
    }

    /// Events were lost: skip to the next syscall that starts like a message.
    pub fn gap(&mut self) {
        self.reset();
        self.state = State::Skip;
    }

    /// What was seen of the message in progress, marked truncated; the decoder is reset.
    pub fn take_partial(&mut self) -> Option<Message> {
        let m = self.msg.take().map(|mut m| {
            m.truncated = true;
            m
        });
        self.reset();
        m
    }

    fn reset(&mut self) {
        self.state = State::Line;
        self.line.clear();
        self.line_overflow = false;
        self.stack.clear();
        self.msg = None;
        self.kept_bytes = 0;
    }

    /// Decodes one syscall: `payload` its captured prefix, `unknown` the bytes after it.
    pub fn feed(&mut self, ts: u64, payload: &[u8], unknown: u64, out: &mut Vec<Event>) {
        if self.state == State::Skip {
            if !self.plausible(payload) {
                return;
            }
            self.state = State::Line;
        }
        let mut rest = payload;
        while !rest.is_empty() {
            if self.msg.is_none() {
                self.msg = Some(Message {
                    start_ns: ts,
                    ..Message::default()
                });
            }
            let n = match self.step(ts, rest, out) {
                Ok(n) => n,
                Err(reason) => {
                    self.reset();
                    self.state = State::Skip;
                    out.push(Event::Malformed(reason));
                    return;
                }
            };
            rest = rest.get(n..).unwrap_or(&[]);
        }
        if unknown > 0 {
            self.unknown_tail(ts, unknown, out);
        }
    }

    fn unknown_tail(&mut self, ts: u64, unknown: u64, out: &mut Vec<Event>) {
        if let State::Bulk { remaining, .. } = self.state {
            let n = remaining.min(unknown);
            if let Some(m) = &mut self.msg {
                m.bytes += n;
                m.truncated = true;
            }
            if n < remaining {
                self.state = State::Bulk {
                    remaining: remaining - n,
                    keep: None,
                };
                return;
            }
            self.state = State::Line;
            self.value_done(ts, out);
            if n == unknown {
                return;
            }
        }
        // The tail holds a line, or whole messages, unseen.
        let partial = self.take_partial();
        self.state = State::Skip;
        out.push(Event::Lost(partial));
    }

    /// Consumes bytes of `rest` (at least one); completes values and messages.
    fn step(&mut self, ts: u64, rest: &[u8], out: &mut Vec<Event>) -> Result<usize, &'static str> {
        match self.state {
            State::Skip => Ok(rest.len()),
            State::Bulk { remaining, keep } => {
                let n = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(rest.len());
                // The content is the part before the final CRLF.
                let content = usize::try_from(remaining.saturating_sub(2))
                    .unwrap_or(usize::MAX)
                    .min(n);
                if let Some(i) = keep {
                    self.keep_bytes(i, rest.get(..content).unwrap_or(&[]));
                }
                if let Some(m) = &mut self.msg {
                    m.bytes += n as u64;
                }
                // The CRLF ending the payload, where it falls in this chunk.
                for (i, want) in [(2u64, b'\r'), (1, b'\n')] {
                    let at = usize::try_from(remaining - i.min(remaining)).unwrap_or(usize::MAX);
                    if remaining >= i && at < n && rest.get(at) != Some(&want) {
                        return Err("bad_bulk_end");
                    }
                }
                let left = remaining - n as u64;
                if left == 0 {
                    self.state = State::Line;
                    self.value_done(ts, out);
                } else {
                    self.state = State::Bulk {
                        remaining: left,
                        keep,
                    };
                }
                Ok(n)
            }
            State::Line => {
                let (take, end) = match memchr::memchr(b'\n', rest) {
                    Some(i) => (i + 1, true),
                    None => (rest.len(), false),
                };
                let room = MAX_LINE_BYTES.saturating_sub(self.line.len());
                let part = rest.get(..take).unwrap_or(&[]);
                if part.len() > room {
                    self.line_overflow = true;
                }
                self.line
                    .extend_from_slice(part.get(..room.min(part.len())).unwrap_or(&[]));
                if let Some(m) = &mut self.msg {
                    m.bytes += take as u64;
                }
                if !end {
                    // A header line is short: a long one is not RESP.
                    if self.line_overflow && !self.inline_start() {
                        return Err("line_too_long");
                    }
                    return Ok(take);
                }
                let line = std::mem::take(&mut self.line);
                let overflow = std::mem::replace(&mut self.line_overflow, false);
                let result = self.line_done(ts, &line, overflow, out);
                self.line = line;
                self.line.clear();
                result.map(|()| take)
            }
        }
    }

    /// Whether the line being read is an inline command (a request not starting with `*`).
    fn inline_start(&self) -> bool {
        self.request && self.stack.is_empty() && self.line.first().is_some_and(|b| *b != b'*')
    }

    fn line_done(
        &mut self,
        ts: u64,
        line: &[u8],
        overflow: bool,
        out: &mut Vec<Event>,
    ) -> Result<(), &'static str> {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let top = self.stack.is_empty();
        if self.request && top && body.first() != Some(&b'*') {
            return self.inline(ts, body, out);
        }
        let body = body.strip_suffix(b"\r").ok_or("bad_line_end")?;
        if overflow {
            return Err("line_too_long");
        }
        let (&kind, text) = body.split_first().ok_or("empty_line")?;
        if self.request && !top && kind != b'$' {
            return Err("bad_request");
        }
        // The index of the element this value is, in the top-level aggregate.
        let elem = match self.stack.as_slice() {
            [f] if !f.attribute => self
                .msg
                .as_ref()
                .and_then(|m| usize::try_from(m.len - f.remaining).ok()),
            _ => None,
        };
        if top
            && kind != b'|'
            && let Some(m) = &mut self.msg
        {
            m.kind = kind;
            m.len = 1;
        }
        match kind {
            b'+' | b'-' | b':' | b',' | b'(' => {
                self.keep_scalar(top, elem, text);
                self.value_done(ts, out);
            }
            b'_' if text.is_empty() => {
                self.keep_scalar(top, elem, b"");
                self.value_done(ts, out);
            }
            b'#' if text == b"t" || text == b"f" => {
                self.keep_scalar(top, elem, text);
                self.value_done(ts, out);
            }
            b'$' | b'=' | b'!' => match length(text)? {
                None => {
                    self.keep_scalar(top, elem, b"");
                    self.value_done(ts, out);
                }
                Some(len) => {
                    let keep = if top { Some(0) } else { elem };
                    if let Some(i) = keep {
                        self.new_elem(i);
                    }
                    self.state = State::Bulk {
                        remaining: len.saturating_add(2),
                        keep,
                    };
                }
            },
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let pairs = matches!(kind, b'%' | b'|');
                let count = match length(text)? {
                    None => 0,
                    Some(n) if pairs => n.checked_mul(2).ok_or("bad_length")?,
                    Some(n) => n,
                };
                if top
                    && kind != b'|'
                    && let Some(m) = &mut self.msg
                {
                    m.len = count;
                }
                if let Some(i) = elem {
                    self.new_elem(i);
                }
                if count == 0 {
                    if kind != b'|' {
                        self.value_done(ts, out);
                    }
                    return Ok(());
                }
                if self.stack.len() >= MAX_DEPTH {
                    return Err("too_deep");
                }
                self.stack.push(Frame {
                    remaining: count,
                    attribute: kind == b'|',
                });
            }
            _ => {
                return Err(if self.request {
                    "bad_request"
                } else {
                    "bad_reply"
                });
            }
        }
        Ok(())
    }

    /// An inline command: words separated by spaces, ending with LF (CRLF).
    fn inline(&mut self, ts: u64, body: &[u8], out: &mut Vec<Event>) -> Result<(), &'static str> {
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if body.iter().any(|b| b.is_ascii_control() && *b != b'\t') {
            return Err("bad_request");
        }
        let mut len = 0u64;
        for (i, word) in body
            .split(|b| *b == b' ' || *b == b'\t')
            .filter(|w| !w.is_empty())
            .enumerate()
        {
            len += 1;
            self.new_elem(i);
            self.keep_bytes(i, word);
        }
        if len == 0 {
            // Redis ignores empty lines between inline commands.
            self.msg = None;
            self.kept_bytes = 0;
            return Ok(());
        }
        if let Some(m) = &mut self.msg {
            m.kind = b' ';
            m.len = len;
        }
        self.value_done(ts, out);
        Ok(())
    }

    fn keep_scalar(&mut self, top: bool, elem: Option<usize>, text: &[u8]) {
        if let Some(i) = if top { Some(0) } else { elem } {
            self.new_elem(i);
            self.keep_bytes(i, text);
        }
    }

    fn new_elem(&mut self, i: usize) {
        if let Some(m) = &mut self.msg
            && i == m.elems.len()
            && i < self.keep.elems
            && self.kept_bytes < self.keep.total_bytes
        {
            m.elems.push(Vec::new());
        }
    }

    fn keep_bytes(&mut self, i: usize, bytes: &[u8]) {
        let Some(m) = &mut self.msg else { return };
        let Some(e) = m.elems.get_mut(i) else { return };
        let room = self
            .keep
            .elem_bytes
            .saturating_sub(e.len())
            .min(self.keep.total_bytes.saturating_sub(self.kept_bytes));
        let n = room.min(bytes.len());
        e.extend_from_slice(bytes.get(..n).unwrap_or(&[]));
        self.kept_bytes += n;
    }

    /// A value ended: completes the aggregates it ends, and the message.
    fn value_done(&mut self, ts: u64, out: &mut Vec<Event>) {
        loop {
            let Some(frame) = self.stack.last_mut() else {
                if let Some(mut m) = self.msg.take() {
                    m.end_ns = ts;
                    out.push(Event::Message(m));
                }
                self.kept_bytes = 0;
                return;
            };
            frame.remaining -= 1;
            if frame.remaining > 0 {
                return;
            }
            let attribute = frame.attribute;
            self.stack.pop();
            if attribute {
                // The attributed value follows; what the attribute held is not it.
                if self.stack.is_empty()
                    && let Some(m) = &mut self.msg
                {
                    m.elems.clear();
                    self.kept_bytes = 0;
                }
                return;
            }
        }
    }

    /// Whether a syscall's bytes start like a message of this direction.
    fn plausible(&self, bytes: &[u8]) -> bool {
        if self.request {
            super::request_start(bytes) != super::Verdict::No
        } else {
            super::reply_start(bytes) != super::Verdict::No
        }
    }
}

/// A length: digits, or `-1` (null: `None`).
fn length(text: &[u8]) -> Result<Option<u64>, &'static str> {
    if text == b"-1" {
        return Ok(None);
    }
    if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
        return Err("bad_length");
    }
    let mut n = 0u64;
    for d in text {
        n = n * 10 + u64::from(d - b'0');
    }
    Ok(Some(n))
}
