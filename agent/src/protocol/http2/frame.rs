//! HTTP/2 framing (RFC 9113 §4) over captured syscall prefixes.
//!
//! A [`Framer`] follows one direction's frames across syscalls: a frame header split over two
//! reads, many frames in one write, a payload longer than the capture. Of each frame it keeps
//! only what the parser needs (the whole payload of header-block and control frames, the pad
//! length of DATA) and skips the rest by count, so a large body costs nothing. When a frame
//! boundary falls into uncaptured bytes the framing is lost: the framer reports it once and
//! skips syscalls until one starts with plausible frames ([`plausible_frames`]), which is where
//! writers start them in practice.

/// Frame types (§6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags (§6).
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// SETTINGS identifiers (§6.5.2).
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
}

pub const HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's initial value and largest value (§6.5.2).
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
pub const LARGEST_FRAME_SIZE: u32 = (1 << 24) - 1;
/// Payload bytes kept of a frame whose payload the parser reads (header blocks and control
/// frames); a longer one is reported incomplete.
pub const MAX_KEPT_PAYLOAD: u32 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub length: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Self {
        FrameHeader {
            length: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    /// Whether this header could be a real frame: a known type, only its defined flags, the
    /// stream id and length its type requires (§6), the reserved bit clear.
    fn plausible(b: &[u8; HEADER_LEN], max_frame_size: u32) -> bool {
        let h = FrameHeader::parse(b);
        if b[5] & 0x80 != 0 || h.length > max_frame_size {
            return false;
        }
        let on_stream = h.stream != 0;
        match h.kind {
            kind::DATA => on_stream && h.flags & !(flag::END_STREAM | flag::PADDED) == 0,
            kind::HEADERS => {
                on_stream
                    && h.flags
                        & !(flag::END_STREAM | flag::END_HEADERS | flag::PADDED | flag::PRIORITY)
                        == 0
            }
            kind::PRIORITY => on_stream && h.flags == 0 && h.length == 5,
            kind::RST_STREAM => on_stream && h.flags == 0 && h.length == 4,
            kind::SETTINGS => {
                !on_stream
                    && h.flags & !flag::ACK == 0
                    && h.length.is_multiple_of(6)
                    && (h.flags == 0 || h.length == 0)
            }
            kind::PUSH_PROMISE => {
                on_stream && h.flags & !(flag::END_HEADERS | flag::PADDED) == 0 && h.length >= 4
            }
            kind::PING => !on_stream && h.flags & !flag::ACK == 0 && h.length == 8,
            kind::GOAWAY => !on_stream && h.flags == 0 && h.length >= 8,
            kind::WINDOW_UPDATE => h.flags == 0 && h.length == 4,
            kind::CONTINUATION => on_stream && h.flags & !flag::END_HEADERS == 0,
            _ => false,
        }
    }

    /// Whether a header read where a frame was due, on a direction whose framing is known,
    /// can be a frame: the length its type requires, and at most the receiver's maximum.
    /// Lenient where the RFC says to be (§4.1, §5.5): unknown types and undefined flags are
    /// ignored, not errors.
    fn valid_in_sync(b: &[u8; HEADER_LEN], max_frame_size: u32) -> bool {
        let h = FrameHeader::parse(b);
        if h.length > max_frame_size {
            return false;
        }
        match h.kind {
            kind::PRIORITY => h.length == 5,
            kind::RST_STREAM | kind::WINDOW_UPDATE => h.length == 4,
            kind::PING => h.length == 8,
            kind::SETTINGS => h.length.is_multiple_of(6),
            kind::GOAWAY => h.length >= 8,
            kind::PUSH_PROMISE => h.length >= 4,
            _ => true,
        }
    }

    /// Payload bytes the parser reads of this frame.
    fn kept(&self) -> u32 {
        match self.kind {
            kind::HEADERS
            | kind::PUSH_PROMISE
            | kind::CONTINUATION
            | kind::SETTINGS
            | kind::RST_STREAM => self.length.min(MAX_KEPT_PAYLOAD + 1),
            kind::GOAWAY => self.length.min(8),
            kind::DATA if self.flags & flag::PADDED != 0 => self.length.min(1),
            _ => 0,
        }
    }
}

/// Whether `buf` (a syscall's captured bytes) starts with plausible frames: every frame header
/// whose nine bytes it holds is plausible, and there is at least one, followed by a second one
/// or by the end of `buf` exactly (a write of whole frames). Used to detect a connection found
/// mid-stream and to find the framing again after it was lost.
pub fn plausible_frames(buf: &[u8]) -> bool {
    let mut at = 0usize;
    let mut frames = 0;
    while let Some(h) = buf.get(at..at + HEADER_LEN) {
        let h: &[u8; HEADER_LEN] = h.try_into().unwrap_or(&[0xff; HEADER_LEN]);
        if !FrameHeader::plausible(h, LARGEST_FRAME_SIZE) {
            return false;
        }
        frames += 1;
        at += HEADER_LEN + FrameHeader::parse(h).length as usize;
    }
    frames >= 2 || (frames == 1 && at == buf.len())
}

/// Whether `buf` starts with a SETTINGS frame (not an acknowledgement), followed by whole
/// plausible frames: the server connection preface (RFC 9113 §3.4).
pub fn starts_with_settings(buf: &[u8]) -> bool {
    let Some(h) = buf.get(..HEADER_LEN) else {
        return false;
    };
    let h: &[u8; HEADER_LEN] = h.try_into().unwrap_or(&[0xff; HEADER_LEN]);
    let header = FrameHeader::parse(h);
    header.kind == kind::SETTINGS && header.flags == 0 && plausible_frames(buf)
}

/// What the framer reports.
pub enum Event<'a> {
    /// A frame whose payload was consumed: the kept part of it, and whether every kept byte was
    /// captured.
    Frame {
        header: FrameHeader,
        payload: &'a [u8],
        complete: bool,
        /// Time of the syscall that carried the frame's first byte.
        first_ts: u64,
    },
    /// A frame boundary was not seen: framing lost until a syscall starts with frames.
    Lost,
    /// A frame header no peer sends (a length past the maximum, flags its type does not have):
    /// the framing is lost as well.
    BadFrame,
}

#[derive(Default)]
enum State {
    /// `matched` bytes of the client preface seen.
    Preface(usize),
    /// `have` bytes of the next frame header.
    #[default]
    Header,
    /// In a frame's payload: `remaining` bytes of it to come, `keep` of which are kept.
    Payload {
        header: FrameHeader,
        remaining: u32,
        keep: u32,
        complete: bool,
    },
    /// Framing lost: waiting for a syscall that starts with frames.
    Resync,
}

/// One direction's framing state.
#[derive(Default)]
pub struct Framer {
    state: State,
    head: [u8; HEADER_LEN],
    have: usize,
    kept: Vec<u8>,
    /// Time of the syscall that carried the current frame's first byte.
    first_ts: u64,
    /// The largest frame the receiving side announced it accepts.
    max_frame_size: u32,
}

impl Framer {
    /// `preface`: the client preface comes first. `known`: the connection was seen from its
    /// start (else the framer waits for a syscall that starts with frames).
    pub fn new(preface: bool, known: bool) -> Self {
        Framer {
            state: if !known {
                State::Resync
            } else if preface {
                State::Preface(0)
            } else {
                State::Header
            },
            head: [0; HEADER_LEN],
            have: 0,
            kept: Vec::new(),
            first_ts: 0,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
        }
    }

    pub fn set_max_frame_size(&mut self, size: u32) {
        self.max_frame_size = self.max_frame_size.max(size.min(LARGEST_FRAME_SIZE));
    }

    /// Events were lost: the next frame boundary is unknown.
    pub fn lose(&mut self) {
        self.state = State::Resync;
        self.have = 0;
    }

    /// One syscall: its captured prefix, then `uncaptured` bytes that moved unseen.
    pub fn feed(
        &mut self,
        ts_ns: u64,
        mut buf: &[u8],
        uncaptured: u64,
        mut emit: impl FnMut(Event<'_>),
    ) {
        if matches!(self.state, State::Resync) {
            if !plausible_frames(buf) {
                return;
            }
            self.state = State::Header;
            self.have = 0;
        }
        while !buf.is_empty() {
            match &mut self.state {
                State::Preface(matched) => {
                    let want = &super::PREFACE[*matched..];
                    let n = want.len().min(buf.len());
                    if buf[..n] != want[..n] {
                        emit(Event::BadFrame);
                        self.lose();
                        return;
                    }
                    *matched += n;
                    buf = &buf[n..];
                    if *matched == super::PREFACE.len() {
                        self.state = State::Header;
                        self.have = 0;
                    }
                }
                State::Header => {
                    if self.have == 0 {
                        self.first_ts = ts_ns;
                    }
                    let n = (HEADER_LEN - self.have).min(buf.len());
                    self.head[self.have..self.have + n].copy_from_slice(&buf[..n]);
                    self.have += n;
                    buf = &buf[n..];
                    if self.have == HEADER_LEN {
                        self.have = 0;
                        if !FrameHeader::valid_in_sync(&self.head, self.max_frame_size) {
                            emit(Event::BadFrame);
                            self.lose();
                            return;
                        }
                        let header = FrameHeader::parse(&self.head);
                        self.kept.clear();
                        self.state = State::Payload {
                            header,
                            remaining: header.length,
                            keep: header.kept(),
                            complete: header.kept() <= MAX_KEPT_PAYLOAD,
                        };
                        self.finish_if_done(&mut emit);
                    }
                }
                State::Payload {
                    remaining, keep, ..
                } => {
                    let n = (*remaining as usize).min(buf.len());
                    let k = (*keep as usize).min(n);
                    if k > 0 && self.kept.len() < MAX_KEPT_PAYLOAD as usize {
                        self.kept.extend_from_slice(&buf[..k]);
                    }
                    *keep -= k as u32;
                    *remaining -= n as u32;
                    buf = &buf[n..];
                    self.finish_if_done(&mut emit);
                }
                State::Resync => return,
            }
        }
        if uncaptured == 0 {
            return;
        }
        match &mut self.state {
            State::Payload {
                remaining,
                keep,
                complete,
                ..
            } if u64::from(*remaining) >= uncaptured => {
                *remaining -= uncaptured as u32;
                if *keep > 0 {
                    *complete = false;
                    *keep = 0;
                }
                self.finish_if_done(&mut emit);
            }
            State::Resync => {}
            _ => {
                emit(Event::Lost);
                self.lose();
            }
        }
    }

    /// Emits the frame whose payload was consumed, and expects the next header.
    fn finish_if_done(&mut self, emit: &mut impl FnMut(Event<'_>)) {
        if let State::Payload {
            header,
            remaining: 0,
            complete,
            ..
        } = self.state
        {
            self.state = State::Header;
            emit(Event::Frame {
                header,
                payload: &self.kept,
                complete,
                first_ts: self.first_ts,
            });
        }
    }
}

/// The header block fragment of a complete HEADERS or PUSH_PROMISE payload, without padding,
/// priority and promised stream id (§6.2, §6.6); `None` if the payload contradicts its flags.
pub fn header_fragment<'a>(header: &FrameHeader, payload: &'a [u8]) -> Option<&'a [u8]> {
    let mut start = 0usize;
    let mut end = payload.len();
    if header.flags & flag::PADDED != 0 {
        let pad = *payload.first()? as usize;
        start = 1;
        end = end.checked_sub(pad)?;
    }
    if header.kind == kind::HEADERS && header.flags & flag::PRIORITY != 0 {
        start += 5;
    }
    if header.kind == kind::PUSH_PROMISE {
        start += 4;
    }
    payload.get(start..end)
}
