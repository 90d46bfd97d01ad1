//! Message framing of one direction of a PostgreSQL connection (protocol 3.0,
//! <https://www.postgresql.org/docs/15/protocol-message-formats.html>): the untyped startup
//! packets (`int32 length, int32 code, ...`), the typed messages (`byte type, int32 length`,
//! the length counting itself but not the type), and the single byte a server answers an
//! SSLRequest or a GSSENCRequest with.
//!
//! Only a bounded prefix of each body is kept (what the parser reads: query texts, names,
//! error fields); the rest is skipped by count, uncaptured bytes included. A message header
//! that falls into uncaptured bytes loses the framing: the stream then skips whole syscalls
//! until one starts with a plausible message boundary (see [`Stream::plausible`]).

/// Largest message length PostgreSQL accepts (`PQ_LARGE_MESSAGE_LIMIT`, 1 GB).
const MAX_MESSAGE_BYTES: u32 = 0x3fff_ffff;
/// Largest startup packet (`MAX_STARTUP_PACKET_LENGTH` in the server).
pub const MAX_STARTUP_BYTES: u32 = 10_000;
/// Largest length accepted when resynchronising after lost framing: a stricter bound, since
/// any byte may be taken for a type there.
const MAX_RESYNC_BYTES: u32 = 1 << 24;

/// `StartupMessage` protocol version 3.0.
pub const PROTOCOL_3: u32 = 196_608;
pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;

/// Type bytes a client sends (frontend messages).
const FRONTEND_TYPES: &[u8] = b"QPBDESCHXdcfpF";
/// Type bytes a server sends (backend messages).
const BACKEND_TYPES: &[u8] = b"RKSZTDCEINA123ntsGHWdcVv";

/// Which end writes the direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Frontend,
    Backend,
}

impl End {
    fn types(self) -> &'static [u8] {
        match self {
            End::Frontend => FRONTEND_TYPES,
            End::Backend => BACKEND_TYPES,
        }
    }
}

/// How the next bytes of the direction are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Frontend, first bytes: a startup packet (first byte 0) or, on a connection found
    /// mid-stream, a typed message.
    Start,
    /// Untyped startup packets (after a refused SSLRequest).
    Startup,
    Typed,
    /// Backend, after an SSLRequest or GSSENCRequest: one byte, `S`/`G` (accepted) or `N`.
    Answer,
}

/// One framed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// An untyped startup packet: its code and the kept prefix of what follows it.
    Startup(Message),
    Typed(Message),
    /// The single-byte answer to an SSLRequest / GSSENCRequest.
    Answer {
        byte: u8,
        ts: u64,
    },
    /// A header fell into uncaptured bytes (or events were lost): what follows is not framed
    /// until a plausible boundary.
    Lost {
        ts: u64,
    },
    /// Framing resumed at the start of a syscall after being lost.
    Resync {
        ts: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Type byte (typed), or 0 (startup).
    pub kind: u8,
    /// Startup code (untyped), or 0.
    pub code: u32,
    /// Kept prefix of the body (after the type and length, and the code of a startup packet).
    pub body: Vec<u8>,
    /// Whole size on the wire, type and length included.
    pub size: u64,
    /// Timestamps of the syscalls that carried its first and last bytes.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Part of the body was not captured (or not kept).
    pub truncated: bool,
}

/// Why the framing failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    BadLength,
    BadType,
    BadStartup,
    HeaderNotCaptured,
}

impl FrameError {
    pub fn reason(self) -> &'static str {
        match self {
            FrameError::BadLength => "bad_length",
            FrameError::BadType => "bad_type",
            FrameError::BadStartup => "bad_startup",
            FrameError::HeaderNotCaptured => "header_not_captured",
        }
    }
}

/// The framing state of one direction.
#[derive(Debug)]
pub struct Stream {
    end: End,
    pub mode: Mode,
    head: [u8; 8],
    head_len: usize,
    /// The message being read, once its header is complete.
    current: Option<Message>,
    /// Body bytes of `current` still to come.
    remaining: u64,
    /// Body bytes kept per type (see [`Stream::new`]).
    keep: fn(u8) -> usize,
    /// The framing is lost: syscalls are skipped until one starts plausibly.
    pub lost: bool,
}

impl Stream {
    pub fn new(end: End, mode: Mode, keep: fn(u8) -> usize) -> Self {
        Stream {
            end,
            mode,
            head: [0; 8],
            head_len: 0,
            current: None,
            remaining: 0,
            keep,
            lost: false,
        }
    }

    /// Bytes buffered (for the bounded-memory tests).
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.current.as_ref().map_or(0, |m| m.body.capacity())
    }

    /// Events were lost: the next syscall starts from scratch.
    pub fn lose(&mut self, ts: u64, out: &mut Vec<Frame>) {
        self.head_len = 0;
        self.current = None;
        self.remaining = 0;
        if !self.lost {
            self.lost = true;
            out.push(Frame::Lost { ts });
        }
    }

    /// Does `bytes` (a syscall's captured prefix) start with a chain of plausible messages of
    /// this direction: a known type and a sane length for every header inside it?
    pub fn plausible(end: End, bytes: &[u8]) -> bool {
        if bytes.len() < 5 {
            return false;
        }
        let mut at = 0usize;
        while let Some(h) = bytes.get(at..at + 5) {
            let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
            if !end.types().contains(&h[0]) || !(4..=MAX_RESYNC_BYTES).contains(&len) {
                return false;
            }
            at += 1 + len as usize;
        }
        true
    }

    /// Frames one syscall: `payload` is the captured prefix of its `bytes`.
    pub fn feed(
        &mut self,
        ts: u64,
        payload: &[u8],
        bytes: u64,
        out: &mut Vec<Frame>,
    ) -> Result<(), FrameError> {
        if self.lost {
            if !Self::plausible(self.end, payload) {
                return Ok(());
            }
            self.lost = false;
            self.mode = Mode::Typed;
            out.push(Frame::Resync { ts });
        }
        let mut result = Ok(());
        let mut rest = payload;
        while !rest.is_empty() {
            if self.current.is_some() {
                let n = (rest.len() as u64).min(self.remaining) as usize;
                let (take, tail) = rest.split_at(n);
                rest = tail;
                self.remaining -= n as u64;
                if let Some(m) = self.current.as_mut() {
                    let keep = (self.keep)(m.kind).saturating_sub(m.body.len()).min(n);
                    m.body.extend_from_slice(&take[..keep]);
                    m.truncated |= keep < n;
                    m.end_ns = ts;
                }
                if self.remaining == 0 {
                    self.finish(out);
                }
                continue;
            }
            if self.mode == Mode::Answer {
                out.push(Frame::Answer { byte: rest[0], ts });
                rest = &rest[1..];
                // `N`: typed messages follow (the parser stops at `S`/`G`: TLS).
                self.mode = Mode::Typed;
                continue;
            }
            if self.mode == Mode::Start {
                self.mode = if rest[0] == 0 {
                    Mode::Startup
                } else {
                    Mode::Typed
                };
            }
            let need = if self.mode == Mode::Startup { 8 } else { 5 };
            let n = (need - self.head_len).min(rest.len());
            self.head[self.head_len..self.head_len + n].copy_from_slice(&rest[..n]);
            self.head_len += n;
            rest = &rest[n..];
            if self.head_len < need {
                break;
            }
            self.head_len = 0;
            match self.header(ts) {
                Ok(()) => {
                    if self.remaining == 0 {
                        self.finish(out);
                    }
                }
                Err(e) => {
                    result = Err(e);
                    self.lose(ts, out);
                    return result;
                }
            }
        }
        let hidden = bytes.saturating_sub(payload.len() as u64);
        if hidden > 0 {
            if self.current.is_some() && self.remaining >= hidden {
                self.remaining -= hidden;
                if let Some(m) = self.current.as_mut() {
                    m.truncated = true;
                    m.end_ns = ts;
                }
                if self.remaining == 0 {
                    self.finish(out);
                }
            } else {
                if let Some(m) = self.current.as_mut() {
                    m.truncated = true;
                    m.end_ns = ts;
                    self.finish(out);
                }
                self.lose(ts, out);
                result = result.and(Err(FrameError::HeaderNotCaptured));
            }
        }
        result
    }

    /// Checks the complete header in `head` and starts its message.
    fn header(&mut self, ts: u64) -> Result<(), FrameError> {
        let h = self.head;
        let (kind, code, len, body) = if self.mode == Mode::Startup {
            let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
            let code = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            if !(8..=MAX_STARTUP_BYTES).contains(&len) {
                return Err(FrameError::BadStartup);
            }
            (0, code, len, len - 8)
        } else {
            let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
            if !self.end.types().contains(&h[0]) {
                return Err(FrameError::BadType);
            }
            if !(4..=MAX_MESSAGE_BYTES).contains(&len) {
                return Err(FrameError::BadLength);
            }
            (h[0], 0, len + 1, len - 4)
        };
        self.remaining = u64::from(body);
        let keep = (self.keep)(kind).min(body as usize);
        self.current = Some(Message {
            kind,
            code,
            body: Vec::with_capacity(keep),
            size: u64::from(len),
            start_ns: ts,
            end_ns: ts,
            truncated: false,
        });
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Frame>) {
        if let Some(m) = self.current.take() {
            if m.kind == 0 && m.code >> 16 == 3 {
                // A StartupMessage (3.x): typed messages follow.
                self.mode = Mode::Typed;
            }
            out.push(if m.kind == 0 {
                Frame::Startup(m)
            } else {
                Frame::Typed(m)
            });
        }
        self.remaining = 0;
    }
}
