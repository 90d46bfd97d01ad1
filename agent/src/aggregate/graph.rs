//! The service graph (Tempo's names): one request per exchange between two services, with the
//! server's and the client's durations, from the paired ends (`exchange::Pairing`).
//!
//! Both ends observed on this node: one request with both durations (`connection_type=""`).
//! One end only: its duration alone; the other end named by its process, its workload or
//! Service in Kubernetes, or its address (`connection_type="virtual_node"` when it is not a
//! process on this node).

use std::{
    borrow::Cow,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
};

use crate::{
    exchange::{ConnectFailure, Observed, Paired},
    fast::Set,
    metrics::{
        Buckets, EdgeNamespaces, Histograms, OVERFLOW, Registry,
        series::{Admitted, SeriesGuard, SeriesKey, same_str},
        window::{Windowed, rejected_counter},
    },
    protocol::Side,
};

/// Metric names (without the `_total` suffix prometheus-client appends to counters).
pub mod name {
    pub const REQUESTS: &str = "traces_service_graph_request";
    pub const FAILED: &str = "traces_service_graph_request_failed";
    pub const SERVER_SECONDS: &str = "traces_service_graph_request_server_seconds";
    pub const CLIENT_SECONDS: &str = "traces_service_graph_request_client_seconds";
    /// How the series cap and expiry name this family.
    pub const SERIES: &str = "traces_service_graph_request_total";
}

/// Edges the web page's windowed table keeps at most.
pub const MAX_LIVE_EDGES: usize = 4096;

/// An edge of the web page's service map: the labels of its `traces_service_graph_*` series
/// without the namespaces.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct EdgeKey {
    pub client: Arc<str>,
    pub server: Arc<str>,
    pub connection_type: &'static str,
}

/// An [`EdgeKey`] borrowed (hashed alike), compared by address first: the names of an edge are
/// most often the very strings its key was made from.
#[derive(Hash)]
struct EdgeView<'a> {
    client: &'a str,
    server: &'a str,
    connection_type: &'static str,
}

impl hashbrown::Equivalent<EdgeKey> for EdgeView<'_> {
    fn equivalent(&self, key: &EdgeKey) -> bool {
        same_str(self.client, &key.client)
            && same_str(self.server, &key.server)
            && self.connection_type == key.connection_type
    }
}

/// The requests of every edge over the last minutes, shared with the endpoint that reads it.
pub type EdgeTable = Arc<Mutex<Windowed<EdgeKey>>>;

/// Destinations known to speak a parsed protocol (for counting connect failures), at most.
const MAX_DESTINATIONS: usize = 16384;

/// Service-graph edge labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GraphLabels {
    pub client: Arc<str>,
    pub server: Arc<str>,
    pub connection_type: Cow<'static, str>,
    #[prometheus(flatten)]
    pub namespaces: EdgeNamespaces,
}

/// `GraphLabels` borrowed, for looking a series up (`SeriesKey`).
#[derive(Hash)]
pub struct GraphView<'a> {
    client: &'a str,
    server: &'a str,
    connection_type: &'a str,
    client_namespace: Option<&'a str>,
    server_namespace: Option<&'a str>,
}

impl SeriesKey for GraphLabels {
    type View<'a> = GraphView<'a>;

    fn view(&self) -> GraphView<'_> {
        GraphView {
            client: &self.client,
            server: &self.server,
            connection_type: &self.connection_type,
            client_namespace: self.namespaces.client.as_deref(),
            server_namespace: self.namespaces.server.as_deref(),
        }
    }

    fn matches(&self, v: &GraphView<'_>) -> bool {
        same_str(&self.client, v.client)
            && same_str(&self.server, v.server)
            && same_str(&self.connection_type, v.connection_type)
            && self.namespaces.client.as_deref() == v.client_namespace
            && self.namespaces.server.as_deref() == v.server_namespace
    }
}

/// The service-graph metrics of one edge, each created when first needed (an edge that never
/// failed has no `_failed` series).
#[derive(Default)]
struct GraphHandles {
    requests: Option<Counter>,
    failed: Option<Counter>,
    server_seconds: Option<Histogram>,
    client_seconds: Option<Histogram>,
}

/// One end's view of a service-graph request.
struct Half {
    client: Arc<str>,
    server: Arc<str>,
    namespaces: EdgeNamespaces,
    seconds: f64,
    failed: bool,
}

impl Half {
    fn of(end: &Observed) -> Half {
        let names = &end.names;
        // The other end's name: the local process's service name, else its workload (or
        // Service) in Kubernetes, else its address.
        let peer_name = |ip: std::net::IpAddr| -> Arc<str> {
            names
                .peer_service
                .clone()
                .or_else(|| names.peer_k8s.as_ref().map(|p| p.name().into()))
                .unwrap_or_else(|| ip.to_string().into())
        };
        let own_ns = names.pod.as_ref().map(|p| p.namespace.clone());
        let peer_ns = names.peer_k8s.as_ref().map(|p| p.namespace().to_string());
        let (client, server, namespaces) = match end.side {
            Side::Server => (
                peer_name(end.connection.0.ip()),
                names.service.clone(),
                EdgeNamespaces {
                    client: peer_ns,
                    server: own_ns,
                },
            ),
            Side::Client => (
                names.service.clone(),
                peer_name(end.connection.1.ip()),
                EdgeNamespaces {
                    client: own_ns,
                    server: peer_ns,
                },
            ),
        };
        let ex = &end.exchange;
        Half {
            client,
            server,
            namespaces,
            seconds: ex.end_ns.saturating_sub(ex.start_ns) as f64 / 1e9,
            failed: ex.failed(end.side),
        }
    }
}

pub struct ServiceGraph {
    requests: Family<GraphLabels, Counter>,
    failed: Family<GraphLabels, Counter>,
    server_seconds: Histograms<GraphLabels>,
    client_seconds: Histograms<GraphLabels>,
    series: SeriesGuard<GraphLabels, GraphHandles>,
    /// Servers seen answering a parsed protocol.
    destinations: Set<SocketAddr>,
    /// Each request again, by time, for the web page: the same counts as the series.
    live: EdgeTable,
}

impl ServiceGraph {
    pub fn new(registry: &Registry, duration_buckets: &[f64], max_series: usize) -> Self {
        let durations = Buckets::new(duration_buckets);
        let g = ServiceGraph {
            requests: Family::default(),
            failed: Family::default(),
            server_seconds: Histograms::new_with_constructor(durations.clone()),
            client_seconds: Histograms::new_with_constructor(durations),
            series: SeriesGuard::new(max_series, registry.overflow_counter(name::SERIES)),
            destinations: Set::default(),
            live: Arc::new(Mutex::new(Windowed::new(
                duration_buckets,
                MAX_LIVE_EDGES,
                rejected_counter(registry, "edges"),
            ))),
        };
        registry.register(
            name::REQUESTS,
            "Requests between two services (each exchange once)",
            g.requests.clone(),
        );
        registry.register(
            name::FAILED,
            "Failed requests between two services",
            g.failed.clone(),
        );
        registry.register(
            name::SERVER_SECONDS,
            "Request duration between two services, as seen by the server",
            g.server_seconds.clone(),
        );
        registry.register(
            name::CLIENT_SECONDS,
            "Request duration between two services, as seen by the client",
            g.client_seconds.clone(),
        );
        g
    }

    /// The edges' requests over the last minutes.
    pub fn live(&self) -> EdgeTable {
        self.live.clone()
    }

    /// Counts one request.
    pub fn observe(&mut self, paired: &Paired, now_ns: u64) {
        match paired {
            Paired::Both { client, server } => {
                self.destination(client.server());
                let (c, s) = (Half::of(client), Half::of(server));
                let namespaces = EdgeNamespaces {
                    client: c.namespaces.client.or(s.namespaces.client),
                    server: s.namespaces.server.or(c.namespaces.server),
                };
                self.record(
                    &c.client,
                    &s.server,
                    &namespaces,
                    "",
                    Some(s.seconds),
                    Some(c.seconds),
                    c.failed || s.failed,
                    now_ns,
                );
            }
            Paired::Alone {
                end,
                partner_expected,
            } => {
                if end.side == Side::Client {
                    self.destination(end.server());
                }
                let h = Half::of(end);
                let (server_s, client_s) = match end.side {
                    Side::Server => (Some(h.seconds), None),
                    Side::Client => (None, Some(h.seconds)),
                };
                let connection_type = if *partner_expected {
                    ""
                } else {
                    "virtual_node"
                };
                self.record(
                    &h.client,
                    &h.server,
                    &h.namespaces,
                    connection_type,
                    server_s,
                    client_s,
                    h.failed,
                    now_ns,
                );
            }
        }
    }

    fn destination(&mut self, server: SocketAddr) {
        if self.destinations.len() < MAX_DESTINATIONS {
            self.destinations.insert(server);
        }
    }

    /// A connect failed: when its destination is known to speak a parsed protocol, that is a
    /// failed request on the graph.
    pub fn connect_failed(&mut self, f: &ConnectFailure) {
        if !self.destinations.contains(&f.server) {
            return;
        }
        let server_name = f
            .server_service
            .clone()
            .unwrap_or_else(|| f.server.ip().to_string().into());
        let connection_type = if f.server_service.is_some() {
            ""
        } else {
            "virtual_node"
        };
        self.record(
            &f.client_service,
            &server_name,
            &EdgeNamespaces::default(),
            connection_type,
            None,
            None,
            true,
            f.now_ns,
        );
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call per service-graph observation shape"
    )]
    fn record(
        &mut self,
        client: &Arc<str>,
        server: &Arc<str>,
        namespaces: &EdgeNamespaces,
        connection_type: &'static str,
        server_seconds: Option<f64>,
        client_seconds: Option<f64>,
        failed: bool,
        now_ns: u64,
    ) {
        let view = GraphView {
            client,
            server,
            connection_type,
            client_namespace: namespaces.client.as_deref(),
            server_namespace: namespaces.server.as_deref(),
        };
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record_by(
                &EdgeView {
                    client,
                    server,
                    connection_type,
                },
                || EdgeKey {
                    client: client.clone(),
                    server: server.clone(),
                    connection_type,
                },
                now_ns,
                server_seconds.or(client_seconds),
                failed,
            );
        let admitted = self.series.admit(
            view,
            now_ns,
            || GraphLabels {
                client: client.clone(),
                server: server.clone(),
                connection_type: Cow::Borrowed(connection_type),
                namespaces: namespaces.clone(),
            },
            |l| GraphLabels {
                client: OVERFLOW.into(),
                server: OVERFLOW.into(),
                namespaces: EdgeNamespaces::default(),
                ..l
            },
        );
        let mut overflow = GraphHandles::default();
        let overflow_labels;
        let (labels, handles) = match admitted {
            Admitted::Series(labels, handles) => (labels, handles),
            Admitted::Overflow(labels) => {
                overflow_labels = labels;
                (&overflow_labels, &mut overflow)
            }
        };
        handles
            .requests
            .get_or_insert_with(|| self.requests.get_or_create(labels).clone())
            .inc();
        if failed {
            handles
                .failed
                .get_or_insert_with(|| self.failed.get_or_create(labels).clone())
                .inc();
        }
        if let Some(s) = server_seconds {
            handles
                .server_seconds
                .get_or_insert_with(|| self.server_seconds.get_or_create(labels).clone())
                .observe(s);
        }
        if let Some(s) = client_seconds {
            handles
                .client_seconds
                .get_or_insert_with(|| self.client_seconds.get_or_create(labels).clone())
                .observe(s);
        }
    }

    /// Removes the edges not updated for `ttl_ns`.
    pub fn expire(&mut self, now_ns: u64, ttl_ns: u64, registry: &Registry) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expire(now_ns);
        let stale = self.series.expire(now_ns, ttl_ns);
        for l in &stale {
            self.requests.remove(l);
            self.failed.remove(l);
            self.server_seconds.remove(l);
            self.client_seconds.remove(l);
        }
        registry.count_expired(name::SERIES, stale.len() as u64);
    }
}
