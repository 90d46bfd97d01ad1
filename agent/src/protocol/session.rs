//! The L7 session of one connection side: detecting its protocol from the first bytes, then
//! feeding its parser; the bytes held while too few arrived to tell; the gap after lost events;
//! and, once the connection closed, the wait for bytes moved after the close ([`CloseWaits`]).
//!
//! The connection table hands each chunk to the connection's session and passes the exchanges
//! it returns on; it knows nothing of protocols.

use std::collections::VecDeque;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

use super::{Detection, Direction, Exchange, Parser, Protocol, Rest, Side, detect, new_parser};
use crate::{fast::Map, metrics::Registry};

/// Metric names (without the `_total` suffix prometheus-client appends to counters).
pub mod name {
    pub const PROTOCOL_DETECTED: &str = "meshtap_protocol_detected";
    pub const PARSE_ERRORS: &str = "meshtap_parse_errors";
    pub const EXCHANGES: &str = "meshtap_exchanges";
    pub const CLOSE_WAITS_CUT_SHORT: &str = "meshtap_close_waits_cut_short";
}

/// Chunks to look at before deciding a connection speaks no protocol we know: one for a
/// connection seen from its start, more for one first seen mid-stream (its first chunk may be
/// the middle of a body).
const DETECT_CHUNKS: u32 = 1;
const DETECT_CHUNKS_MIDSTREAM: u32 = 64;
/// Bytes held back while too few arrived to tell the protocol.
const DETECT_HOLD_BYTES: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ParseErrorLabels {
    pub protocol: String,
    pub reason: String,
}

/// What sessions count, by protocol.
#[derive(Clone)]
pub struct SessionMetrics {
    detected: Family<ProtocolLabels, Counter>,
    parse_errors: Family<ParseErrorLabels, Counter>,
    exchanges: Family<ProtocolLabels, Counter>,
    /// `meshtap_exchanges_total{protocol}` handles, by `Protocol::ALL` index, made at first use.
    exchange_counters: Vec<Option<Counter>>,
    pub close_waits_cut_short: Counter,
}

impl SessionMetrics {
    pub fn new(registry: &Registry) -> Self {
        let m = SessionMetrics {
            detected: Family::default(),
            parse_errors: Family::default(),
            exchanges: Family::default(),
            exchange_counters: vec![None; Protocol::ALL.len()],
            close_waits_cut_short: Counter::default(),
        };
        registry.register(
            name::PROTOCOL_DETECTED,
            "Connection sides whose payload was detected as a protocol",
            m.detected.clone(),
        );
        registry.register(
            name::PARSE_ERRORS,
            "Malformed or unparseable messages, by protocol and reason",
            m.parse_errors.clone(),
        );
        registry.register(
            name::EXCHANGES,
            "Request/response exchanges produced, by protocol (each observed side counts)",
            m.exchanges.clone(),
        );
        registry.register(
            name::CLOSE_WAITS_CUT_SHORT,
            "Closed connections whose wait for bytes moved after the close was cut short: more than 4096 waiting at once",
            m.close_waits_cut_short.clone(),
        );
        m
    }

    fn detected(&self, protocol: Protocol) {
        self.detected
            .get_or_create(&ProtocolLabels {
                protocol: protocol.name().to_string(),
            })
            .inc();
    }

    fn parse_error(&self, protocol: Protocol, reason: &str) {
        self.parse_errors(protocol, reason, 1);
    }

    fn parse_errors(&self, protocol: Protocol, reason: &str, n: u64) {
        self.parse_errors
            .get_or_create(&ParseErrorLabels {
                protocol: protocol.name().to_string(),
                reason: reason.to_string(),
            })
            .inc_by(n);
    }

    fn exchanges(&mut self, protocol: Protocol, n: usize) {
        if n == 0 {
            return;
        }
        let i = Protocol::ALL
            .iter()
            .position(|p| *p == protocol)
            .unwrap_or(0);
        let family = &self.exchanges;
        if let Some(slot) = self.exchange_counters.get_mut(i) {
            slot.get_or_insert_with(|| {
                family
                    .get_or_create(&ProtocolLabels {
                        protocol: protocol.name().to_string(),
                    })
                    .clone()
            })
            .inc_by(n as u64);
        }
    }
}

enum State {
    /// Not detected yet: `chunks` payload chunks seen, and the bytes of the latest ones if
    /// they were too short to tell (a request written a byte at a time).
    Detecting {
        chunks: u32,
        held: Vec<u8>,
        held_dir: Option<Direction>,
        held_ts: u64,
    },
    Parsing(Protocol, Box<dyn Parser>),
    /// A parser between messages, dropped until the connection's next byte: an idle
    /// connection holds these few words, not a parser (see [`Parser::rest`]).
    Resting(Protocol, Rest),
    /// Not a protocol we parse, or the parser gave up.
    Ignored,
}

/// One connection side's protocol state.
pub struct Session {
    side: Side,
    /// Seen mid-stream (open before the agent): detection looks further.
    pre_existing: bool,
    state: State,
    /// Sequence number the next data event should carry (gaps mean lost events).
    next_seq: u64,
}

impl Session {
    pub fn new(side: Side, pre_existing: bool) -> Self {
        Session {
            side,
            pre_existing,
            state: State::Detecting {
                chunks: 0,
                held: Vec::new(),
                held_dir: None,
                held_ts: 0,
            },
            next_seq: 0,
        }
    }

    /// Whether a parser is running, and so whether a close should wait for late bytes: `None`
    /// without a parser, else whether an exchange is in flight.
    pub fn close_wait(&self) -> Option<bool> {
        match &self.state {
            State::Parsing(_, p) => Some(p.in_flight()),
            State::Resting(..) => Some(false),
            _ => None,
        }
    }

    /// The event numbered `seq` was taken out of order (held, to be parsed later without a
    /// number): the next one is not a gap for missing it.
    pub fn seq_seen(&mut self, seq: u64) {
        if seq == self.next_seq {
            self.next_seq = seq + 1;
        }
    }

    /// Protocol detection and parsing of one data chunk; `seq` is the kernel's number of the
    /// event when it has one. Appends the exchanges it completes to `out`.
    #[expect(
        clippy::too_many_arguments,
        reason = "one chunk's fields, as the kernel reported them"
    )]
    pub fn data(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        seq: Option<u64>,
        payload: &[u8],
        bytes: u64,
        metrics: &mut SessionMetrics,
        out: &mut Vec<Exchange>,
    ) {
        let gap = seq.is_some_and(|seq| seq != self.next_seq);
        if let Some(seq) = seq {
            self.next_seq = seq + 1;
        }
        // Bytes of chunks too short to tell, replayed to the parser once detected.
        let mut replay: Option<(u64, Vec<u8>)> = None;
        if let State::Detecting {
            chunks,
            held,
            held_dir,
            held_ts,
        } = &mut self.state
        {
            *chunks += 1;
            let limit = if self.pre_existing {
                DETECT_CHUNKS_MIDSTREAM
            } else {
                DETECT_CHUNKS
            };
            if *held_dir != Some(dir) {
                held.clear();
            }
            let mut candidate = std::mem::take(held);
            let first_ts = if candidate.is_empty() {
                ts_ns
            } else {
                *held_ts
            };
            candidate.extend_from_slice(payload);
            match detect(self.side, dir, &candidate, self.pre_existing) {
                Detection::Found(protocol) => {
                    metrics.detected(protocol);
                    let earlier = candidate.len() - payload.len();
                    if earlier > 0 {
                        candidate.truncate(earlier);
                        replay = Some((first_ts, candidate));
                    }
                    self.state = State::Parsing(protocol, new_parser(protocol, self.side));
                }
                Detection::NeedMore
                    if payload.len() as u64 == bytes && candidate.len() <= DETECT_HOLD_BYTES =>
                {
                    *held = candidate;
                    *held_dir = Some(dir);
                    *held_ts = first_ts;
                    return;
                }
                _ if *chunks >= limit => {
                    self.state = State::Ignored;
                    return;
                }
                _ => return,
            }
        }
        if let State::Resting(protocol, rest) = self.state {
            let mut parser = new_parser(protocol, self.side);
            parser.resume(rest);
            self.state = State::Parsing(protocol, parser);
        }
        let State::Parsing(protocol, parser) = &mut self.state else {
            return;
        };
        let protocol = *protocol;
        if gap {
            parser.gap(dir);
        }
        let before = out.len();
        if let Some((ts, held)) = replay
            && let Err(err) = parser.feed(dir, ts, &held, held.len() as u64, out)
        {
            metrics.parse_error(protocol, err.reason);
        }
        if let Err(err) = parser.feed(dir, ts_ns, payload, bytes, out) {
            metrics.parse_error(protocol, err.reason);
        }
        parser.take_errors(&mut |reason, n| metrics.parse_errors(protocol, reason, n));
        if let Some(upgrade) = parser.take_upgrade() {
            metrics.detected(upgrade.protocol);
            let mut next = upgrade.parser;
            let rest_bytes = upgrade.rest.len() as u64 + upgrade.rest_uncaptured;
            let at = out.len();
            metrics.exchanges(protocol, at - before);
            if rest_bytes > 0
                && let Err(err) = next.feed(dir, ts_ns, &upgrade.rest, rest_bytes, out)
            {
                metrics.parse_error(upgrade.protocol, err.reason);
            }
            next.take_errors(&mut |reason, n| metrics.parse_errors(upgrade.protocol, reason, n));
            metrics.exchanges(upgrade.protocol, out.len() - at);
            self.state = State::Parsing(upgrade.protocol, next);
            return;
        }
        metrics.exchanges(protocol, out.len() - before);
        if parser.is_dead() {
            self.state = State::Ignored;
        } else if let Some(rest) = parser.rest() {
            self.state = State::Resting(protocol, rest);
        }
    }

    /// A TLS library's plaintext follows (see `conntrack`): it is numbered from 0, and what was
    /// seen before it was a handshake. A running parser keeps its state (a protocol that
    /// negotiated TLS in plaintext continues in it); otherwise detection starts afresh.
    pub fn plaintext_begins(&mut self) {
        self.next_seq = 0;
        if !matches!(self.state, State::Parsing(..) | State::Resting(..)) {
            self.state = State::Detecting {
                chunks: 0,
                held: Vec::new(),
                held_dir: None,
                held_ts: 0,
            };
        }
    }

    /// The connection closed at `closed_ns`: what the close completes.
    pub fn close(&mut self, closed_ns: u64, metrics: &mut SessionMetrics, out: &mut Vec<Exchange>) {
        if let State::Parsing(protocol, parser) = &mut self.state {
            let before = out.len();
            parser.close(closed_ns, out);
            parser.take_errors(&mut |reason, n| metrics.parse_errors(*protocol, reason, n));
            metrics.exchanges(*protocol, out.len() - before);
        }
        self.state = State::Ignored;
    }
}

/// How long (event time) a connection that closed with an exchange in flight keeps its session
/// for the bytes its process moves after TCP_CLOSE (see [`CloseWaits`]).
pub const CLOSE_WAIT_NS: u64 = 500_000_000;
/// The same for a connection that closed between exchanges: long enough for the write in which
/// the close happened to return.
pub const CLOSE_WAIT_IDLE_NS: u64 = 20_000_000;
/// Connections waiting so at once; past it the oldest ends its wait early, counted in
/// `meshtap_close_waits_cut_short_total`.
pub const CLOSE_WAIT_MAX: usize = 4096;

/// Closed connections whose session waits a while before the close completes what it has: bytes
/// can move after the close. A process writing to a peer that already closed gets the peer's
/// RST while still in `write` (on loopback and veth the peer's answer is processed on the way
/// out), so the write's data event, sent when the syscall returns, follows the close event: a
/// server's response to a client that hung up, or a client's request on a keep-alive connection
/// the server had just closed (a failed request). And a process may read what was queued before
/// the close. With an exchange in flight the wait is `CLOSE_WAIT_NS`, else `CLOSE_WAIT_IDLE_NS`.
///
/// Keyed by socket address (`sk`): after TCP_CLOSE the kernel reports late bytes on the socket
/// without a connection id. `T` is the caller's connection, with its session.
pub struct CloseWaits<T> {
    waiting: Map<u64, Waiting<T>>,
    /// `waiting` in close order, per wait (in flight, idle): (socket, connection id, end of
    /// the wait). A socket's address can be reused by a later connection, whose close replaces
    /// the entry: entries no longer in `waiting` are skipped.
    order: [VecDeque<(u64, u64, u64)>; 2],
}

/// A closed connection waiting for late bytes.
pub struct Waiting<T> {
    pub conn: T,
    pub id: u64,
    pub closed_ns: u64,
}

impl<T> Default for CloseWaits<T> {
    fn default() -> Self {
        CloseWaits {
            waiting: Map::default(),
            order: [VecDeque::new(), VecDeque::new()],
        }
    }
}

impl<T> CloseWaits<T> {
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Whether the connection of socket `sk` is waiting.
    pub fn contains(&self, sk: u64) -> bool {
        self.waiting.contains_key(&sk)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether no entry, stale or not, is left in the close order.
    #[cfg(test)]
    pub fn order_is_empty(&self) -> bool {
        self.order.iter().all(VecDeque::is_empty)
    }

    /// Starts the wait of connection `id` on socket `sk`. Returns the waits this one ends: an
    /// earlier connection on the same socket, and the oldest ones past [`CLOSE_WAIT_MAX`]
    /// (counted in `cut_short`).
    pub fn start(
        &mut self,
        sk: u64,
        id: u64,
        conn: T,
        closed_ns: u64,
        in_flight: bool,
        cut_short: &Counter,
    ) -> Vec<Waiting<T>> {
        let mut ended = Vec::new();
        if let Some(earlier) = self.waiting.remove(&sk) {
            // The socket's address was reused by a connection that closed in turn.
            ended.push(earlier);
        }
        // Past the limit, the idle waits end first: they hold nothing yet.
        while self.waiting.len() >= CLOSE_WAIT_MAX {
            let Some((sk, id, _)) = self.order[1]
                .pop_front()
                .or_else(|| self.order[0].pop_front())
            else {
                break;
            };
            if let Some(w) = self.take_of(sk, id) {
                cut_short.inc();
                ended.push(w);
            }
        }
        let (order, wait_ns) = if in_flight {
            (0, CLOSE_WAIT_NS)
        } else {
            (1, CLOSE_WAIT_IDLE_NS)
        };
        self.order[order].push_back((sk, id, closed_ns + wait_ns));
        self.waiting.insert(
            sk,
            Waiting {
                conn,
                id,
                closed_ns,
            },
        );
        ended
    }

    /// The waits that are over at `now_ns`, in close order.
    pub fn due(&mut self, now_ns: u64) -> Vec<Waiting<T>> {
        let mut ended = Vec::new();
        for order in 0..2 {
            while let Some(&(sk, id, until_ns)) = self.order[order].front() {
                if until_ns > now_ns {
                    break;
                }
                self.order[order].pop_front();
                if let Some(w) = self.take_of(sk, id) {
                    ended.push(w);
                }
            }
        }
        ended
    }

    /// Takes whichever connection waits on socket `sk` (to feed it late bytes, or because the
    /// socket was reused); [`put_back`](Self::put_back) resumes its wait as it was.
    pub fn take(&mut self, sk: u64) -> Option<Waiting<T>> {
        if self.waiting.is_empty() {
            return None;
        }
        self.waiting.remove(&sk)
    }

    /// Resumes a wait taken with [`take`](Self::take): its place in the order was kept.
    pub fn put_back(&mut self, sk: u64, waiting: Waiting<T>) {
        self.waiting.insert(sk, waiting);
    }

    /// Takes connection `id` on socket `sk`, if it is still the one waiting there.
    fn take_of(&mut self, sk: u64, id: u64) -> Option<Waiting<T>> {
        if self.waiting.get(&sk).is_none_or(|w| w.id != id) {
            return None;
        }
        self.waiting.remove(&sk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Outcome;

    fn metrics() -> SessionMetrics {
        SessionMetrics::new(&Registry::default())
    }

    #[test]
    fn a_request_written_a_byte_at_a_time_is_held_then_replayed() {
        let mut m = metrics();
        let mut s = Session::new(Side::Server, false);
        let mut out = Vec::new();
        let req = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        for (i, b) in req.iter().enumerate() {
            s.data(
                Direction::Ingress,
                10 + i as u64,
                Some(i as u64),
                std::slice::from_ref(b),
                1,
                &mut m,
                &mut out,
            );
        }
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        s.data(
            Direction::Egress,
            100,
            Some(req.len() as u64),
            resp,
            resp.len() as u64,
            &mut m,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].start_ns, out[0].end_ns), (10, 100));
        assert_eq!(out[0].outcome, Outcome::Ok);
    }

    #[test]
    fn binary_bytes_are_ignored_and_a_close_completes_nothing() {
        let mut m = metrics();
        let mut s = Session::new(Side::Server, false);
        let mut out = Vec::new();
        s.data(
            Direction::Ingress,
            1,
            Some(0),
            b"\x16\x03\x01\x02",
            4,
            &mut m,
            &mut out,
        );
        assert_eq!(s.close_wait(), None);
        s.close(2, &mut m, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_close_answers_a_request_in_flight_as_no_response() {
        let mut m = metrics();
        let mut s = Session::new(Side::Client, false);
        let mut out = Vec::new();
        let req = b"GET /a HTTP/1.1\r\n\r\n";
        s.data(
            Direction::Egress,
            1,
            Some(0),
            req,
            req.len() as u64,
            &mut m,
            &mut out,
        );
        assert_eq!(s.close_wait(), Some(true));
        s.close(5, &mut m, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].outcome, Outcome::NoResponse);
        assert!(out[0].failed(Side::Client));
    }

    #[test]
    fn waits_end_in_order_and_are_bounded() {
        let cut = Counter::default();
        let mut w: CloseWaits<u32> = CloseWaits::default();
        assert!(w.start(1, 10, 1, 0, true, &cut).is_empty());
        assert!(w.start(2, 20, 2, 0, false, &cut).is_empty());
        // The idle one is due first.
        let due: Vec<u32> = w
            .due(CLOSE_WAIT_IDLE_NS)
            .into_iter()
            .map(|w| w.conn)
            .collect();
        assert_eq!(due, vec![2]);
        // A connection taken for late bytes and put back keeps its wait.
        let taken = w.take(1).unwrap();
        w.put_back(1, taken);
        // A reused socket ends the old wait.
        let ended: Vec<u32> = w
            .start(1, 11, 3, 1, true, &cut)
            .into_iter()
            .map(|w| w.conn)
            .collect();
        assert_eq!(ended, vec![1]);
        // The stale order entry of id 10 is skipped.
        assert!(w.due(CLOSE_WAIT_NS).is_empty());
        assert_eq!(w.due(CLOSE_WAIT_NS + 1).len(), 1);
        for i in 0..CLOSE_WAIT_MAX as u64 + 1 {
            w.start(100 + i, i, 0, 10, true, &cut);
        }
        assert_eq!(cut.get(), 1);
    }
}
