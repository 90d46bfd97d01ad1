//! Decoding ring-buffer records into owned events. Records are bytes from the kernel: every
//! length is checked and an unknown or short record is an error, never a panic.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use meshtap_common::{
    AF_INET, AF_INET6, ConnEvent, DataEventHeader, EventHeader, Identity, Tuple, kind,
};

/// The process (and thread) an event belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub tgid: u32,
    pub tid: u32,
    /// Start time of the process, ns since boot: with `tgid` a unique process identity.
    pub start_ns: u64,
    pub cgroup_id: u64,
    pub comm: Comm,
}

/// A task's command name. The kernel's is at most 15 bytes: kept inline when it is UTF-8 (no
/// allocation per event), else as its lossy conversion.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Comm {
    Inline { len: u8, bytes: [u8; 15] },
    Lossy(Arc<str>),
}

impl Comm {
    pub fn as_str(&self) -> &str {
        match self {
            // `bytes[..len]` was checked to be UTF-8 when the value was made.
            Comm::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Comm::Lossy(s) => s,
        }
    }
}

impl From<&str> for Comm {
    fn from(s: &str) -> Self {
        let mut bytes = [0u8; 15];
        match bytes.get_mut(..s.len()) {
            Some(prefix) => {
                prefix.copy_from_slice(s.as_bytes());
                Comm::Inline {
                    len: s.len() as u8,
                    bytes,
                }
            }
            None => Comm::Lossy(s.into()),
        }
    }
}

impl From<String> for Comm {
    fn from(s: String) -> Self {
        Comm::from(s.as_str())
    }
}

impl std::ops::Deref for Comm {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The role of the observing process on a connection, as the kernel saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// It connected.
    Client,
    /// It accepted.
    Server,
    /// Neither was seen (a connection open before the agent started): inferred later from the
    /// listeners.
    Unknown,
}

impl Role {
    fn from_kernel(role: u8) -> Self {
        match role {
            meshtap_common::role::CLIENT => Role::Client,
            meshtap_common::role::SERVER => Role::Server,
            _ => Role::Unknown,
        }
    }
}

/// Which way a data event's bytes moved, seen from the observing process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The process wrote the bytes.
    Egress,
    /// The process read the bytes.
    Ingress,
}

impl Direction {
    fn from_kernel(direction: u8) -> Self {
        if direction == meshtap_common::direction::EGRESS {
            Direction::Egress
        } else {
            Direction::Ingress
        }
    }
}

/// Fields every event has.
#[derive(Debug, Clone)]
pub struct Meta {
    pub ts_ns: u64,
    pub conn_id: u64,
    pub sk: u64,
    pub role: Role,
    /// The connection was already open when the kernel side first saw it.
    pub pre_existing: bool,
    /// The connection's TLS library is probed: its syscall data events carry ciphertext (bytes
    /// only), its plaintext comes in [`Event::Data`] events whose `syscall` is a TLS call
    /// ([`is_plaintext`]).
    pub tls_probed: bool,
    pub netns: u32,
    pub process: Process,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

#[derive(Debug, Clone)]
pub enum Event {
    ConnOpen {
        meta: Meta,
        connect_ns: u64,
    },
    ConnFail {
        meta: Meta,
        errno: u32,
    },
    ConnClose {
        meta: Meta,
        totals: ConnTotals,
    },
    Data {
        meta: Meta,
        /// Bytes the syscall moved; 0 in a continuation event (the first event counted them).
        bytes: u64,
        /// Bytes the parser is to take this event for: what the syscall moved from this
        /// event's first byte, or only the captured ones when more events of the same
        /// syscall follow (HTTP/2 connections are captured whole, in chunks).
        parse_bytes: u64,
        seq: u64,
        /// TCP sequence number of the syscall's first byte on the wire (the same at both ends
        /// of the connection); 0 when unknown (plaintext events, continuations).
        tcp_seq: u32,
        direction: Direction,
        syscall: u8,
        /// The captured prefix, in the payload buffer of the event's [`Batch`].
        payload: PayloadRange,
        /// More events carrying this syscall's following bytes come next (an HTTP/2 syscall
        /// is sent in chunks, each its own ring record: another thread's event on the same
        /// socket can come between them).
        more: bool,
    },
    Retransmit {
        meta: Meta,
    },
    Listen {
        meta: Meta,
    },
    ListenClose {
        meta: Meta,
    },
}

/// Whether a data event's `syscall` says it carries the plaintext of a TLS library call (not
/// bytes on the wire: the ciphertext's syscall events count those).
pub fn is_plaintext(syscall: u8) -> bool {
    matches!(
        syscall,
        meshtap_common::syscall::TLS_READ | meshtap_common::syscall::TLS_WRITE
    )
}

/// The kernel's exact per-connection totals, delivered with the close event.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnTotals {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub data_events: u64,
    pub data_events_lost: u64,
    pub retransmits: u64,
}

impl Event {
    pub fn meta(&self) -> &Meta {
        match self {
            Event::ConnOpen { meta, .. }
            | Event::ConnFail { meta, .. }
            | Event::ConnClose { meta, .. }
            | Event::Data { meta, .. }
            | Event::Retransmit { meta }
            | Event::Listen { meta }
            | Event::ListenClose { meta } => meta,
        }
    }

    pub fn kind(&self) -> u8 {
        match self {
            Event::ConnOpen { .. } => kind::CONN_OPEN,
            Event::ConnFail { .. } => kind::CONN_FAIL,
            Event::ConnClose { .. } => kind::CONN_CLOSE,
            Event::Data { .. } => kind::DATA,
            Event::Retransmit { .. } => kind::RETRANSMIT,
            Event::Listen { .. } => kind::LISTEN,
            Event::ListenClose { .. } => kind::LISTEN_CLOSE,
        }
    }
}

/// Where a data event's captured bytes are in its batch's payload buffer: one buffer per batch
/// rather than an allocation per event (which the reader thread made and the processing thread
/// freed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PayloadRange {
    start: u32,
    len: u32,
}

impl PayloadRange {
    /// The whole of `buffer` (for events built by hand, with their payload alone).
    #[cfg(test)]
    pub fn whole(buffer: &[u8]) -> Self {
        PayloadRange {
            start: 0,
            len: u32::try_from(buffer.len()).unwrap_or(u32::MAX),
        }
    }

    /// The bytes of this range in `buffer`; empty if `buffer` is not the one it was made for.
    pub fn of<'a>(&self, buffer: &'a [u8]) -> &'a [u8] {
        let start = self.start as usize;
        buffer
            .get(start..start + self.len as usize)
            .unwrap_or_default()
    }
}

/// Decoded events and the captured payloads their data events point into.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<Event>,
    pub payloads: Vec<u8>,
}

impl Batch {
    pub fn with_capacity(events: usize, payload_bytes: usize) -> Self {
        Batch {
            events: Vec::with_capacity(events),
            payloads: Vec::with_capacity(payload_bytes),
        }
    }

    /// Decodes one ring-buffer record into the batch.
    pub fn push_record(&mut self, record: &[u8]) -> Result<(), DecodeError> {
        let event = decode(record, &mut self.payloads)?;
        self.events.push(event);
        Ok(())
    }
}

/// Label value of each event kind in `meshtap_events_total{kind}`.
pub fn kind_name(k: u8) -> &'static str {
    match k {
        kind::CONN_OPEN => "conn_open",
        kind::CONN_FAIL => "conn_fail",
        kind::CONN_CLOSE => "conn_close",
        kind::DATA => "data",
        kind::RETRANSMIT => "retransmit",
        kind::LISTEN => "listen",
        kind::LISTEN_CLOSE => "listen_close",
        _ => "unknown",
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {needed} its kind needs")]
    Short { len: usize, needed: usize },
    #[error("unknown event kind {kind}")]
    UnknownKind { kind: u8 },
    #[error("data event claims {captured} payload bytes but carries {available}")]
    PayloadLength { captured: usize, available: usize },
    #[error("the batch's payload buffer is full (4 GiB)")]
    BatchFull,
}

/// Reads a `T` from the start of `bytes` (unaligned: ring-buffer records are 8-byte aligned, but
/// we do not rely on it).
fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    let needed = size_of::<T>();
    if bytes.len() < needed {
        return Err(DecodeError::Short {
            len: bytes.len(),
            needed,
        });
    }
    // SAFETY: the length was checked above and `T` is one of the `#[repr(C)]` integer-only
    // records from meshtap-common, for which every bit pattern is valid.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record; a data event's captured bytes are appended to `payloads`.
pub fn decode(bytes: &[u8], payloads: &mut Vec<u8>) -> Result<Event, DecodeError> {
    let header: EventHeader = read(bytes)?;
    let meta = meta(&header);
    match header.kind {
        kind::CONN_OPEN
        | kind::CONN_FAIL
        | kind::CONN_CLOSE
        | kind::RETRANSMIT
        | kind::LISTEN
        | kind::LISTEN_CLOSE => {
            let ev: ConnEvent = read(bytes)?;
            Ok(match header.kind {
                kind::CONN_OPEN => Event::ConnOpen {
                    meta,
                    connect_ns: ev.duration_ns,
                },
                kind::CONN_FAIL => Event::ConnFail {
                    meta,
                    errno: ev.errno,
                },
                kind::CONN_CLOSE => Event::ConnClose {
                    meta,
                    totals: ConnTotals {
                        bytes_sent: ev.bytes_sent,
                        bytes_received: ev.bytes_received,
                        data_events: ev.data_events,
                        data_events_lost: ev.data_events_lost,
                        retransmits: ev.retransmits,
                    },
                },
                kind::RETRANSMIT => Event::Retransmit { meta },
                kind::LISTEN => Event::Listen { meta },
                _ => Event::ListenClose { meta },
            })
        }
        kind::DATA => {
            let head: DataEventHeader = read(bytes)?;
            let start = size_of::<DataEventHeader>();
            let captured = head.captured as usize;
            let available = bytes.len() - start;
            if captured > available {
                return Err(DecodeError::PayloadLength {
                    captured,
                    available,
                });
            }
            let payload = PayloadRange {
                start: u32::try_from(payloads.len()).map_err(|_| DecodeError::BatchFull)?,
                len: captured as u32,
            };
            payloads.extend_from_slice(&bytes[start..start + captured]);
            let event_flags = head.header.flags;
            let continuation = event_flags & meshtap_common::flags::CONTINUATION != 0;
            let more = event_flags & meshtap_common::flags::MORE != 0;
            Ok(Event::Data {
                meta,
                bytes: if continuation { 0 } else { head.bytes },
                parse_bytes: if more { captured as u64 } else { head.bytes },
                seq: head.seq,
                tcp_seq: if continuation { 0 } else { head.tcp_seq },
                direction: Direction::from_kernel(head.direction),
                syscall: head.syscall,
                payload,
                more,
            })
        }
        other => Err(DecodeError::UnknownKind { kind: other }),
    }
}

fn meta(h: &EventHeader) -> Meta {
    let (local, remote) = addrs(&h.tuple);
    Meta {
        ts_ns: h.ts_ns,
        conn_id: h.conn_id,
        sk: h.sk,
        role: Role::from_kernel(h.role),
        pre_existing: h.flags & meshtap_common::flags::PRE_EXISTING != 0,
        tls_probed: h.flags & meshtap_common::flags::TLS_PROBED != 0,
        netns: h.netns,
        process: process(&h.who),
        local,
        remote,
    }
}

pub fn comm_str(comm: &[u8; 16]) -> Comm {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    match std::str::from_utf8(&comm[..end]) {
        Ok(s) => Comm::from(s),
        Err(_) => Comm::Lossy(String::from_utf8_lossy(&comm[..end]).into()),
    }
}

fn process(who: &Identity) -> Process {
    Process {
        tgid: who.tgid,
        tid: who.tid,
        start_ns: who.start_ns,
        cgroup_id: who.cgroup_id,
        comm: comm_str(&who.comm),
    }
}

/// The tuple as socket addresses; IPv4-mapped IPv6 (`::ffff:a.b.c.d`) becomes IPv4.
pub fn addrs(t: &Tuple) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::new(ip(t.family, &t.local_addr), t.local_port),
        SocketAddr::new(ip(t.family, &t.remote_addr), t.remote_port),
    )
}

fn ip(family: u16, raw: &[u8; 16]) -> IpAddr {
    match family {
        AF_INET6 => {
            let v6 = Ipv6Addr::from(*raw);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        AF_INET => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtap_common::{DataEvent, MAX_CAPTURE, direction, role};

    fn header(k: u8) -> EventHeader {
        let mut tuple = Tuple {
            local_addr: [0; 16],
            remote_addr: [0; 16],
            local_port: 8080,
            remote_port: 40000,
            family: AF_INET6,
            _pad: 0,
        };
        // ::ffff:10.0.0.1
        tuple.local_addr[10] = 0xff;
        tuple.local_addr[11] = 0xff;
        tuple.local_addr[12..].copy_from_slice(&[10, 0, 0, 1]);
        tuple.remote_addr[15] = 1; // ::1
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        EventHeader {
            kind: k,
            role: role::SERVER,
            flags: 0,
            _pad: 0,
            netns: 7,
            ts_ns: 1,
            conn_id: 9,
            sk: 0xffff,
            who: Identity {
                tgid: 10,
                tid: 11,
                start_ns: 12,
                cgroup_id: 13,
                comm,
            },
            tuple,
        }
    }

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: T is a plain #[repr(C)] integer record; reading its bytes is always valid.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn comm_is_inline_when_utf8_and_lossy_otherwise() {
        let mut raw = [0u8; 16];
        raw[..15].copy_from_slice(b"fifteen-bytes-x");
        let c = comm_str(&raw);
        assert!(matches!(c, Comm::Inline { len: 15, .. }));
        assert_eq!(c, "fifteen-bytes-x");
        // A multi-byte character cut by the kernel's 15-byte limit.
        let mut raw = [0u8; 16];
        raw[..15].copy_from_slice(b"abcdefghijklmn\xc3");
        let c = comm_str(&raw);
        assert!(matches!(c, Comm::Lossy(_)));
        assert_eq!(c, "abcdefghijklmn\u{fffd}");
        assert_eq!(comm_str(&[0u8; 16]), "");
        assert_eq!(Comm::from("é").to_string(), "é");
    }

    #[test]
    fn decodes_data_with_payload_and_mapped_addresses() {
        let mut ev = DataEvent {
            head: DataEventHeader {
                header: header(kind::DATA),
                bytes: 5000,
                seq: 3,
                captured: 4,
                direction: direction::INGRESS,
                syscall: 0,
                library: 0,
                tcp_seq: 0,
                _pad: 0,
            },
            payload: [0; MAX_CAPTURE],
        };
        ev.payload[..4].copy_from_slice(b"GET ");
        let all = bytes_of(&ev);
        let record = &all[..size_of::<DataEventHeader>() + 4];
        let mut payloads = b"earlier".to_vec();
        match decode(record, &mut payloads).unwrap() {
            Event::Data {
                meta,
                bytes,
                payload,
                ..
            } => {
                assert_eq!(bytes, 5000);
                assert_eq!(payload.of(&payloads), b"GET ");
                assert_eq!(payloads, b"earlierGET ");
                assert_eq!(meta.local.to_string(), "10.0.0.1:8080");
                assert_eq!(meta.remote.to_string(), "[::1]:40000");
                assert_eq!(meta.process.comm, "curl");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_short_and_lying_records() {
        let h = bytes_of(&header(kind::CONN_OPEN));
        let mut payloads = Vec::new();
        assert!(matches!(
            decode(&h[..10], &mut payloads),
            Err(DecodeError::Short { .. })
        ));
        assert!(matches!(
            decode(&h, &mut payloads),
            Err(DecodeError::Short { .. })
        ));
        let mut d = bytes_of(&DataEventHeader {
            header: header(kind::DATA),
            bytes: 1,
            seq: 0,
            captured: 100,
            direction: 0,
            syscall: 0,
            library: 0,
            tcp_seq: 0,
            _pad: 0,
        });
        assert!(matches!(
            decode(&d, &mut payloads),
            Err(DecodeError::PayloadLength { .. })
        ));
        d[0] = 200;
        assert!(matches!(
            decode(&d, &mut payloads),
            Err(DecodeError::UnknownKind { kind: 200 })
        ));
        assert!(
            payloads.is_empty(),
            "nothing appended for a rejected record"
        );
    }
}
