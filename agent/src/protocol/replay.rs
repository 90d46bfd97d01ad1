//! Test fixtures every parser's golden tests share: one syscall of a recorded conversation, and
//! the ways a conversation is replayed (whole, a byte per syscall, with a capture limit).

/// One syscall of a fixture: request or response direction, timestamp, bytes moved.
#[derive(Clone)]
pub enum Io {
    Req(u64, Vec<u8>),
    Resp(u64, Vec<u8>),
}

/// A request-direction syscall.
pub fn q(ts: u64, bytes: impl AsRef<[u8]>) -> Io {
    Io::Req(ts, bytes.as_ref().to_vec())
}

/// A response-direction syscall.
pub fn r(ts: u64, bytes: impl AsRef<[u8]>) -> Io {
    Io::Resp(ts, bytes.as_ref().to_vec())
}

/// How a fixture is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Whole,
    /// Every byte is its own syscall.
    Bytewise,
    /// Only the first N bytes of each syscall are captured.
    Capture(usize),
}
