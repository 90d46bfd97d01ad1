//! Exchanges as the node observed them, and the one place where the two observed ends of one
//! exchange are paired.
//!
//! The connection table turns each exchange a session completes into an [`Observed`] end (the
//! exchange, the side that observed it, the names of both ends of its connection) and hands it
//! to an [`ExchangeSink`] that the app composes. When both ends of a connection are processes on
//! this node, every exchange is observed twice: [`Pairing`] puts the client's and the server's
//! observations of one request together (requests of one connection are answered in order; both
//! ends read the same trace context), so that the service graph counts it once and the server's
//! span is the client's child.

use std::{collections::VecDeque, net::SocketAddr, sync::Arc};

use prometheus_client::{
    encoding::EncodeLabelSet, metrics::counter::Counter, metrics::family::Family,
};

use crate::{
    fast::Map,
    metadata::kube::{Peer, PodMeta},
    metrics::Registry,
    protocol::{Exchange, Side, context::Found},
};

/// What the connection table knows of the two ends of a connection, shared by all its
/// exchanges: one reference count per exchange instead of one per name.
#[derive(Clone, Debug)]
pub struct ExchangeNames {
    /// The observing process's service name, and its executable.
    pub service: Arc<str>,
    pub executable: Arc<str>,
    /// The other end's service name when it is a process on this node.
    pub peer_service: Option<Arc<str>>,
    /// In Kubernetes: the observing process's pod, and the pod or Service at the other end.
    pub pod: Option<Arc<PodMeta>>,
    pub peer_k8s: Option<Peer>,
    /// The server's address as text, formatted once per connection (client side only).
    pub server_ip: Option<Arc<str>>,
}

impl ExchangeNames {
    /// The other end's name: the local process's service name, else its workload (or Service)
    /// in Kubernetes.
    pub fn peer_name(&self) -> Option<&str> {
        self.peer_service
            .as_deref()
            .or_else(|| self.peer_k8s.as_ref().map(|p| p.name()))
    }
}

/// One end of an exchange, as a process on this node observed it.
#[derive(Debug, Clone)]
pub struct Observed {
    pub exchange: Exchange,
    pub side: Side,
    /// The names of both ends, shared with the connection's other exchanges.
    pub names: Arc<ExchangeNames>,
    pub pid: u32,
    /// The thread that read the request (server) or wrote it (client).
    pub tid: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// (client address, server address): the same key from both ends of a connection (the
    /// server's as the client saw it, before any NAT).
    pub connection: (SocketAddr, SocketAddr),
    /// Whether the process holds a server connection now (see `trace::assembly`).
    pub in_server_process: bool,
    /// What both ends of the connection compute alike for this request, on any node (see
    /// [`RequestKey`]); `None` unless cross-node linking is on, or when not known.
    pub key: Option<RequestKey>,
    /// Arrival time, monotonic ns.
    pub now_ns: u64,
}

/// A request as both ends of its connection name it, wherever they run: the client's address
/// and port, the TCP sequence number of the first byte of the syscall that carried the
/// request's first byte (the client's write, the server's read: the same number at both ends,
/// through destination NAT such as a Kubernetes ClusterIP, since the client's end and the
/// sequence space are unchanged), and the request's rank among those starting in that syscall
/// (pipelined requests). Two ends that split the byte stream differently (a server reading the
/// tail of one request and the head of the next at once) compute different keys: no link, never
/// a wrong one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RequestKey {
    pub client: SocketAddr,
    pub seq: u32,
    pub ordinal: u16,
}

impl Observed {
    /// The server's address, as both ends key it.
    pub fn server(&self) -> SocketAddr {
        self.connection.1
    }
}

/// A connect that failed: a failed request on the service graph when the destination is known
/// to speak a parsed protocol.
#[derive(Debug, Clone)]
pub struct ConnectFailure {
    pub client_service: Arc<str>,
    pub server: SocketAddr,
    /// The local process listening there, if any.
    pub server_service: Option<Arc<str>>,
    pub now_ns: u64,
}

/// Where the connection table sends what it observed. Composed by the app: request metrics,
/// pairing, the service graph, the tracer.
pub trait ExchangeSink: Send {
    fn exchange(&mut self, observed: Observed);
    fn connect_failed(&mut self, failure: ConnectFailure);
    /// Periodic work at `now_ns` (event time): waits that are over, series expiry.
    fn tick(&mut self, now_ns: u64);
}

/// The two ends of one exchange, or one end alone.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "moved once from the pairing to its consumers; boxing would allocate per exchange"
)]
pub enum Paired {
    Both {
        client: Observed,
        server: Observed,
    },
    Alone {
        end: Observed,
        /// Its other end is a process on this node, but did not come (lost events, a side the
        /// parser could not follow, or more than the pairing holds).
        partner_expected: bool,
    },
}

/// How long one end waits for the other.
pub const PAIR_WAIT_NS: u64 = 2_000_000_000;
/// Ends waiting for their partner, at most; beyond, they go on alone at once.
pub const MAX_WAITING: usize = 65536;

/// Metric names (without the `_total` suffix prometheus-client appends to counters).
pub mod name {
    pub const UNPAIRED: &str = "meshtap_exchanges_unpaired";
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnpairedLabels {
    pub reason: &'static str,
}

#[derive(Default)]
struct Waiting {
    clients: VecDeque<Observed>,
    servers: VecDeque<Observed>,
}

/// Pairs the client's and the server's observations of each exchange of a node-local
/// connection.
pub struct Pairing {
    waiting: Map<(SocketAddr, SocketAddr), Waiting>,
    count: usize,
    /// `meshtap_exchanges_unpaired_total{reason}`.
    timed_out: Counter,
    skipped: Counter,
    full: Counter,
}

impl Pairing {
    pub fn new(registry: &Registry) -> Self {
        let family: Family<UnpairedLabels, Counter> = Family::default();
        registry.register(
            name::UNPAIRED,
            "Exchanges observed by both ends on this node whose other end never paired with them, by reason (timeout: it did not come within 2 s; skipped: a later exchange of the connection paired first; full: more than 65536 were waiting)",
            family.clone(),
        );
        let counter = |reason| family.get_or_create_owned(&UnpairedLabels { reason });
        Pairing {
            waiting: Map::default(),
            count: 0,
            timed_out: counter("timeout"),
            skipped: counter("skipped"),
            full: counter("full"),
        }
    }

    /// Adds one end; appends what is paired (or can wait no longer) to `out`.
    pub fn add(&mut self, end: Observed, out: &mut Vec<Paired>) {
        if end.names.peer_service.is_none() {
            // The other end is not a process on this node: nothing to wait for.
            out.push(Paired::Alone {
                end,
                partner_expected: false,
            });
            return;
        }
        let key = end.connection;
        let waiting = self.waiting.entry(key).or_default();
        let others = match end.side {
            Side::Server => &mut waiting.clients,
            Side::Client => &mut waiting.servers,
        };
        // The oldest end of the other side that can be this one's: both read the same context.
        // Older ones that cannot are ends whose partner was lost (requests are answered in
        // order): they go on alone.
        match others
            .iter()
            .position(|o| same_request(&o.exchange.context, &end.exchange.context))
        {
            Some(at) => {
                for lost in others.drain(..at) {
                    self.skipped.inc();
                    out.push(Paired::Alone {
                        end: lost,
                        partner_expected: true,
                    });
                }
                let other = others.pop_front();
                self.count -= at + 1;
                if waiting.clients.is_empty() && waiting.servers.is_empty() {
                    self.waiting.remove(&key);
                }
                if let Some(other) = other {
                    out.push(match end.side {
                        Side::Server => Paired::Both {
                            client: other,
                            server: end,
                        },
                        Side::Client => Paired::Both {
                            client: end,
                            server: other,
                        },
                    });
                }
            }
            None if self.count >= MAX_WAITING => {
                if waiting.clients.is_empty() && waiting.servers.is_empty() {
                    self.waiting.remove(&key);
                }
                self.full.inc();
                out.push(Paired::Alone {
                    end,
                    partner_expected: true,
                });
            }
            None => {
                match end.side {
                    Side::Server => waiting.servers.push_back(end),
                    Side::Client => waiting.clients.push_back(end),
                }
                self.count += 1;
            }
        }
    }

    /// Ends that waited `PAIR_WAIT_NS` go on alone.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Paired>) {
        let mut alone = 0;
        let before = out.len();
        self.waiting.retain(|_, w| {
            for queue in [&mut w.clients, &mut w.servers] {
                while queue
                    .front()
                    .is_some_and(|e| now_ns.saturating_sub(e.now_ns) > PAIR_WAIT_NS)
                {
                    if let Some(end) = queue.pop_front() {
                        alone += 1;
                        out.push(Paired::Alone {
                            end,
                            partner_expected: true,
                        });
                    }
                }
            }
            !(w.clients.is_empty() && w.servers.is_empty())
        });
        // Emitted in arrival order, as they would have been one by one.
        out[before..].sort_by_key(|p| match p {
            Paired::Alone { end, .. } => end.now_ns,
            Paired::Both { client, .. } => client.now_ns,
        });
        self.count -= alone;
        if alone > 0 {
            self.timed_out.inc_by(alone as u64);
        }
    }
}

/// Whether two observations can be the ends of one request: they read the same context, or
/// none (a malformed one counts as none).
fn same_request(a: &Found, b: &Found) -> bool {
    match (a, b) {
        (Found::Valid(x), Found::Valid(y)) => x.trace_id == y.trace_id && x.span_id == y.span_id,
        (Found::Valid(_), _) | (_, Found::Valid(_)) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Attributes, Outcome, http1};

    fn end(side: Side, peer: Option<&str>, context: Found, now_ns: u64) -> Observed {
        Observed {
            exchange: Exchange {
                start_ns: 1,
                end_ns: 2,
                outcome: Outcome::Ok,
                truncated: false,
                request_bytes: 0,
                response_bytes: 0,
                context,
                attributes: Attributes::Http1(http1::Attributes {
                    method: "GET".into(),
                    version: http1::Version::Http11,
                    path: "/".into(),
                    status: Some(200),
                }),
            },
            side,
            names: Arc::new(ExchangeNames {
                service: "me".into(),
                executable: "me".into(),
                peer_service: peer.map(Into::into),
                pod: None,
                peer_k8s: None,
                server_ip: None,
            }),
            pid: 1,
            tid: 1,
            local: "10.0.0.1:5000".parse().unwrap(),
            remote: "10.0.0.2:80".parse().unwrap(),
            connection: (
                "10.0.0.1:5000".parse().unwrap(),
                "10.0.0.2:80".parse().unwrap(),
            ),
            in_server_process: false,
            key: None,
            now_ns,
        }
    }

    fn ctx(span: &str) -> Found {
        crate::protocol::context::extract(&[(
            "traceparent",
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{span}-01"),
        )])
    }

    fn kinds(out: &[Paired]) -> Vec<&'static str> {
        out.iter()
            .map(|p| match p {
                Paired::Both { .. } => "both",
                Paired::Alone {
                    partner_expected: true,
                    ..
                } => "lost",
                Paired::Alone { .. } => "alone",
            })
            .collect()
    }

    #[test]
    fn ends_pair_in_either_order_and_remote_ones_go_alone() {
        let mut p = Pairing::new(&Registry::default());
        let mut out = Vec::new();
        p.add(end(Side::Server, Some("c"), Found::None, 1), &mut out);
        assert!(out.is_empty());
        p.add(end(Side::Client, Some("s"), Found::None, 2), &mut out);
        p.add(end(Side::Client, Some("s"), Found::None, 3), &mut out);
        p.add(end(Side::Server, Some("c"), Found::None, 4), &mut out);
        p.add(end(Side::Client, None, Found::None, 5), &mut out);
        assert_eq!(kinds(&out), ["both", "both", "alone"]);
        assert_eq!(p.count, 0);
        assert!(p.waiting.is_empty());
    }

    #[test]
    fn different_contexts_never_pair_and_older_unmatched_ends_go_on_alone() {
        let registry = Registry::default();
        let mut p = Pairing::new(&registry);
        let mut out = Vec::new();
        p.add(
            end(Side::Server, Some("c"), ctx("00f067aa0ba902b7"), 1),
            &mut out,
        );
        p.add(
            end(Side::Server, Some("c"), ctx("00f067aa0ba902b8"), 2),
            &mut out,
        );
        p.add(
            end(Side::Client, Some("s"), ctx("00f067aa0ba902b8"), 3),
            &mut out,
        );
        assert_eq!(kinds(&out), ["lost", "both"]);
        assert_eq!(p.skipped.get(), 1);
        // No match at all: the queue stays as it is until the wait ends.
        out.clear();
        p.add(
            end(Side::Server, Some("c"), ctx("00f067aa0ba902b9"), 4),
            &mut out,
        );
        p.add(end(Side::Client, Some("s"), Found::None, 5), &mut out);
        assert!(out.is_empty());
        p.tick(5 + PAIR_WAIT_NS, &mut out);
        assert_eq!(kinds(&out), ["lost"]);
        p.tick(6 + PAIR_WAIT_NS, &mut out);
        assert_eq!(kinds(&out), ["lost", "lost"]);
        assert_eq!(p.timed_out.get(), 2);
        assert_eq!(p.count, 0);
    }
}
