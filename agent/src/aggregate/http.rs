//! HTTP exchanges into RED metrics (OpenTelemetry names) and the service graph (Tempo names).
//!
//! When both ends of a connection are processes on this node, each exchange is observed twice,
//! once per side. The service graph counts it once: the two observations of the same
//! connection are paired in order (HTTP/1.x answers in request order), giving one request with
//! the server's and the client's durations. An observation whose partner does not arrive within
//! `PAIR_WAIT_NS` (lost events, a side the parser could not follow) is counted alone.

use std::{borrow::Cow, collections::VecDeque, net::SocketAddr, sync::Arc};

use prometheus_client::metrics::{counter::Counter, histogram::Histogram};

use crate::{
    aggregate::{
        ExchangeNames,
        series::{Admitted, SeriesGuard, SeriesKey},
    },
    fast::{Map, Set},
    metrics::{
        GraphLabels, GraphNamespaces, GraphView, Histograms, HttpClientLabels, HttpClientView,
        HttpServerLabels, HttpServerView, K8sLabels, MetricLabels, Metrics, OVERFLOW,
        ParseErrorLabels, ProtocolLabels, name,
    },
    protocol::{Exchange, Protocol, Side, route::route_into},
};

/// How long one side's observation waits for the other side's.
const PAIR_WAIT_NS: u64 = 2_000_000_000;
/// Observations waiting for a partner, at most; beyond, they are counted alone at once.
const MAX_PENDING: usize = 65536;
/// Destinations known to speak HTTP (for counting connect failures), at most.
const MAX_HTTP_DESTINATIONS: usize = 16384;

/// An exchange with what the connection table knows about its two ends.
pub struct ExchangeRecord {
    pub exchange: Exchange,
    /// The side that observed it.
    pub side: Side,
    /// The names of both ends, shared with the connection's other exchanges.
    pub names: Arc<ExchangeNames>,
    /// The client's and the server's addresses: the same key from both sides.
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// One side's contribution to a service-graph request.
struct Half {
    client: Arc<str>,
    server: Arc<str>,
    namespaces: GraphNamespaces,
    seconds: f64,
    failed: bool,
    at_ns: u64,
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

#[derive(Default)]
struct Pending {
    from_client: VecDeque<Half>,
    from_server: VecDeque<Half>,
}

pub struct HttpAggregator {
    metrics: Arc<Metrics>,
    server_series: SeriesGuard<HttpServerLabels, Option<[Histogram; 3]>>,
    client_series: SeriesGuard<HttpClientLabels, Option<[Histogram; 3]>>,
    graph_series: SeriesGuard<GraphLabels, GraphHandles>,
    /// `meshtap_exchanges_total{protocol}` handles (a few protocols, never expired).
    exchanges: Map<Protocol, Counter>,
    pending: Map<(SocketAddr, SocketAddr), Pending>,
    pending_count: usize,
    http_destinations: Set<SocketAddr>,
    series_ttl_ns: u64,
    /// The route of the exchange being observed: one buffer, reused.
    route: String,
}

fn overflow_counter(
    metrics: &Metrics,
    family: &str,
) -> prometheus_client::metrics::counter::Counter {
    metrics.series_overflow.get_or_create_owned(&MetricLabels {
        metric: family.to_string(),
    })
}

impl HttpAggregator {
    pub fn new(metrics: Arc<Metrics>, max_series: usize, series_ttl_ns: u64) -> Self {
        HttpAggregator {
            server_series: SeriesGuard::new(
                max_series,
                overflow_counter(&metrics, name::HTTP_SERVER_DURATION),
            ),
            client_series: SeriesGuard::new(
                max_series,
                overflow_counter(&metrics, name::HTTP_CLIENT_DURATION),
            ),
            graph_series: SeriesGuard::new(
                max_series,
                overflow_counter(&metrics, "traces_service_graph_request_total"),
            ),
            metrics,
            exchanges: Map::default(),
            pending: Map::default(),
            pending_count: 0,
            http_destinations: Set::default(),
            series_ttl_ns,
            route: String::new(),
        }
    }

    pub fn detected(&self, protocol: &str) {
        self.metrics
            .http
            .protocol_detected
            .get_or_create(&ProtocolLabels {
                protocol: protocol.to_string(),
            })
            .inc();
    }

    pub fn parse_error(&self, protocol: &str, reason: &str) {
        self.metrics
            .http
            .parse_errors
            .get_or_create(&ParseErrorLabels {
                protocol: protocol.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn observe(&mut self, record: &ExchangeRecord, now_ns: u64) {
        let ex = &record.exchange;
        let h = &self.metrics.http;
        self.exchanges
            .entry(ex.protocol)
            .or_insert_with(|| {
                h.exchanges
                    .get_or_create(&ProtocolLabels {
                        protocol: ex.protocol.name().to_string(),
                    })
                    .clone()
            })
            .inc();
        let seconds = ex.end_ns.saturating_sub(ex.start_ns) as f64 / 1e9;
        let status = status_label(ex.status);
        let failed = match record.side {
            Side::Server => ex.status.is_some_and(|s| s >= 500),
            Side::Client => ex.status.is_none_or(|s| s >= 500),
        };
        match record.side {
            Side::Server => {
                route_into(&ex.path, &mut self.route);
                let view = HttpServerView {
                    service_name: &record.names.service,
                    method: &ex.method,
                    status: &status,
                    route: &self.route,
                    pod: record.names.pod.as_deref(),
                };
                let admitted = self.server_series.admit(
                    view,
                    now_ns,
                    || HttpServerLabels {
                        service_name: record.names.service.clone(),
                        http_request_method: ex.method.clone(),
                        http_response_status_code: status.clone(),
                        http_route: self.route.clone(),
                        k8s: K8sLabels(record.names.pod.clone()),
                    },
                    |l| HttpServerLabels {
                        http_route: OVERFLOW.to_string(),
                        ..l
                    },
                );
                observe(
                    [
                        &h.server_duration,
                        &h.server_request_body,
                        &h.server_response_body,
                    ],
                    admitted,
                    [
                        seconds,
                        ex.request_body_bytes as f64,
                        ex.response_body_bytes as f64,
                    ],
                );
            }
            Side::Client => {
                if self.http_destinations.len() < MAX_HTTP_DESTINATIONS {
                    self.http_destinations.insert(record.server);
                }
                // Formatted once per connection by the connection table; here only for a
                // record made without it.
                let formatted;
                let server_address: &str = match &record.names.server_ip {
                    Some(ip) => ip,
                    None => {
                        formatted = record.server.ip().to_string();
                        &formatted
                    }
                };
                let view = HttpClientView {
                    service_name: &record.names.service,
                    method: &ex.method,
                    status: &status,
                    server_address,
                    server_port: record.server.port(),
                    pod: record.names.pod.as_deref(),
                };
                let admitted = self.client_series.admit(
                    view,
                    now_ns,
                    || HttpClientLabels {
                        service_name: record.names.service.clone(),
                        http_request_method: ex.method.clone(),
                        http_response_status_code: status.clone(),
                        server_address: record
                            .names
                            .server_ip
                            .clone()
                            .unwrap_or_else(|| server_address.into()),
                        server_port: record.server.port(),
                        k8s: K8sLabels(record.names.pod.clone()),
                    },
                    |l| HttpClientLabels {
                        server_address: OVERFLOW.into(),
                        ..l
                    },
                );
                observe(
                    [
                        &h.client_duration,
                        &h.client_request_body,
                        &h.client_response_body,
                    ],
                    admitted,
                    [
                        seconds,
                        ex.request_body_bytes as f64,
                        ex.response_body_bytes as f64,
                    ],
                );
            }
        }

        // The other end's name: the local process's service name, else its workload (or
        // Service) in Kubernetes, else its address.
        let peer_name = |ip: std::net::IpAddr| {
            record
                .names
                .peer_service
                .clone()
                .or_else(|| record.names.peer_k8s.as_ref().map(|p| p.name().into()))
                .unwrap_or_else(|| ip.to_string().into())
        };
        let own_ns = record.names.pod.as_ref().map(|p| p.namespace.clone());
        let peer_ns = record
            .names
            .peer_k8s
            .as_ref()
            .map(|p| p.namespace().to_string());
        let (client, server, namespaces) = match record.side {
            Side::Server => (
                peer_name(record.client.ip()),
                record.names.service.clone(),
                GraphNamespaces {
                    client: peer_ns,
                    server: own_ns,
                },
            ),
            Side::Client => (
                record.names.service.clone(),
                peer_name(record.server.ip()),
                GraphNamespaces {
                    client: own_ns,
                    server: peer_ns,
                },
            ),
        };
        let half = Half {
            client,
            server,
            namespaces,
            seconds,
            failed,
            at_ns: now_ns,
        };
        if record.names.peer_service.is_none() {
            let (server_s, client_s) = match record.side {
                Side::Server => (Some(half.seconds), None),
                Side::Client => (None, Some(half.seconds)),
            };
            self.graph(
                &half.client,
                &half.server,
                &half.namespaces,
                "virtual_node",
                server_s,
                client_s,
                failed,
                now_ns,
            );
            return;
        }
        let key = (record.client, record.server);
        let pending = self.pending.entry(key).or_default();
        let partner = match record.side {
            Side::Server => pending.from_client.pop_front(),
            Side::Client => pending.from_server.pop_front(),
        };
        match partner {
            Some(other) => {
                self.pending_count -= 1;
                if pending.from_client.is_empty() && pending.from_server.is_empty() {
                    self.pending.remove(&key);
                }
                let (from_client, from_server) = match record.side {
                    Side::Server => (other, half),
                    Side::Client => (half, other),
                };
                let namespaces = GraphNamespaces {
                    client: from_client
                        .namespaces
                        .client
                        .clone()
                        .or_else(|| from_server.namespaces.client.clone()),
                    server: from_server
                        .namespaces
                        .server
                        .clone()
                        .or_else(|| from_client.namespaces.server.clone()),
                };
                self.graph(
                    &from_client.client,
                    &from_server.server,
                    &namespaces,
                    "",
                    Some(from_server.seconds),
                    Some(from_client.seconds),
                    from_client.failed || from_server.failed,
                    now_ns,
                );
            }
            None if self.pending_count >= MAX_PENDING => {
                let (server_s, client_s) = match record.side {
                    Side::Server => (Some(half.seconds), None),
                    Side::Client => (None, Some(half.seconds)),
                };
                self.graph(
                    &half.client,
                    &half.server,
                    &half.namespaces,
                    "",
                    server_s,
                    client_s,
                    failed,
                    now_ns,
                );
            }
            None => {
                match record.side {
                    Side::Server => pending.from_server.push_back(half),
                    Side::Client => pending.from_client.push_back(half),
                }
                self.pending_count += 1;
            }
        }
    }

    /// A connect to `server` failed: when `server` is known to speak HTTP, that is a failed
    /// request on the service graph.
    pub fn connect_failed(
        &mut self,
        client: &Arc<str>,
        server: SocketAddr,
        peer: Option<&Arc<str>>,
        now_ns: u64,
    ) {
        if !self.http_destinations.contains(&server) {
            return;
        }
        let server_name = peer
            .cloned()
            .unwrap_or_else(|| server.ip().to_string().into());
        let connection_type = if peer.is_some() { "" } else { "virtual_node" };
        self.graph(
            client,
            &server_name,
            &GraphNamespaces::default(),
            connection_type,
            None,
            None,
            true,
            now_ns,
        );
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call per service-graph observation shape"
    )]
    fn graph(
        &mut self,
        client: &Arc<str>,
        server: &Arc<str>,
        namespaces: &GraphNamespaces,
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
        let admitted = self.graph_series.admit(
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
                namespaces: GraphNamespaces::default(),
                ..l
            },
        );
        let h = &self.metrics.http;
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
            .get_or_insert_with(|| h.graph_requests.get_or_create(labels).clone())
            .inc();
        if failed {
            handles
                .failed
                .get_or_insert_with(|| h.graph_failed.get_or_create(labels).clone())
                .inc();
        }
        if let Some(s) = server_seconds {
            handles
                .server_seconds
                .get_or_insert_with(|| h.graph_server_seconds.get_or_create(labels).clone())
                .observe(s);
        }
        if let Some(s) = client_seconds {
            handles
                .client_seconds
                .get_or_insert_with(|| h.graph_client_seconds.get_or_create(labels).clone())
                .observe(s);
        }
    }

    /// Periodic work: count observations whose partner never came, and expire idle series.
    pub fn tick(&mut self, now_ns: u64) {
        let mut alone = Vec::new();
        self.pending.retain(|_, p| {
            while p
                .from_client
                .front()
                .is_some_and(|h| now_ns.saturating_sub(h.at_ns) > PAIR_WAIT_NS)
            {
                if let Some(h) = p.from_client.pop_front() {
                    alone.push((h, Side::Client));
                }
            }
            while p
                .from_server
                .front()
                .is_some_and(|h| now_ns.saturating_sub(h.at_ns) > PAIR_WAIT_NS)
            {
                if let Some(h) = p.from_server.pop_front() {
                    alone.push((h, Side::Server));
                }
            }
            !(p.from_client.is_empty() && p.from_server.is_empty())
        });
        self.pending_count -= alone.len();
        for (h, side) in alone {
            let (server_s, client_s) = match side {
                Side::Server => (Some(h.seconds), None),
                Side::Client => (None, Some(h.seconds)),
            };
            self.graph(
                &h.client,
                &h.server,
                &h.namespaces,
                "",
                server_s,
                client_s,
                h.failed,
                now_ns,
            );
        }
        self.expire(now_ns);
    }

    fn expire(&mut self, now_ns: u64) {
        let h = &self.metrics.http;
        let expired = |family: &str, n: usize| {
            if n > 0 {
                h.series_expired
                    .get_or_create(&MetricLabels {
                        metric: family.to_string(),
                    })
                    .inc_by(n as u64);
            }
        };
        let stale = self.server_series.expire(now_ns, self.series_ttl_ns);
        for l in &stale {
            for family in [
                &h.server_duration,
                &h.server_request_body,
                &h.server_response_body,
            ] {
                family.remove(l);
            }
        }
        expired(name::HTTP_SERVER_DURATION, stale.len());
        let stale = self.client_series.expire(now_ns, self.series_ttl_ns);
        for l in &stale {
            for family in [
                &h.client_duration,
                &h.client_request_body,
                &h.client_response_body,
            ] {
                family.remove(l);
            }
        }
        expired(name::HTTP_CLIENT_DURATION, stale.len());
        let stale = self.graph_series.expire(now_ns, self.series_ttl_ns);
        for l in &stale {
            h.graph_requests.remove(l);
            h.graph_failed.remove(l);
            h.graph_server_seconds.remove(l);
            h.graph_client_seconds.remove(l);
        }
        expired("traces_service_graph_request_total", stale.len());
    }
}

/// `http_response_status_code`: "" without a response; the common codes are static strings.
fn status_label(status: Option<u16>) -> Cow<'static, str> {
    const COMMON: [(u16, &str); 16] = [
        (200, "200"),
        (201, "201"),
        (202, "202"),
        (204, "204"),
        (301, "301"),
        (302, "302"),
        (304, "304"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (429, "429"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    match status {
        None => Cow::Borrowed(""),
        Some(code) => match COMMON.iter().find(|(c, _)| *c == code) {
            Some((_, s)) => Cow::Borrowed(s),
            None => Cow::Owned(code.to_string()),
        },
    }
}

/// Duration, request body and response body of one exchange under one label set: through the
/// series' cached handles, created on its first observation.
fn observe<L: Clone + std::hash::Hash + Eq + SeriesKey>(
    families: [&Histograms<L>; 3],
    admitted: Admitted<'_, L, Option<[Histogram; 3]>>,
    values: [f64; 3],
) {
    match admitted {
        Admitted::Series(labels, handles) => {
            let handles =
                handles.get_or_insert_with(|| families.map(|f| f.get_or_create(labels).clone()));
            for (histogram, value) in handles.iter().zip(values) {
                histogram.observe(value);
            }
        }
        Admitted::Overflow(labels) => {
            for (family, value) in families.into_iter().zip(values) {
                family.get_or_create(&labels).observe(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        metadata::kube::{PodMeta, WorkloadKind},
        protocol::{Outcome, Protocol},
    };

    fn exchange(status: Option<u16>, path: &str, ms: u64) -> Exchange {
        Exchange {
            protocol: Protocol::Http1,
            start_ns: 1_000_000_000,
            end_ns: 1_000_000_000 + ms * 1_000_000,
            method: "GET".into(),
            path: path.into(),
            status,
            request_body_bytes: 0,
            response_body_bytes: 3,
            headers: vec![],
            outcome: Outcome::Complete,
        }
    }

    fn record(side: Side, status: Option<u16>, peer: Option<&str>) -> ExchangeRecord {
        ExchangeRecord {
            exchange: exchange(status, "/users/42?x=1", 10),
            side,
            names: Arc::new(ExchangeNames {
                service: match side {
                    Side::Server => "backend".into(),
                    Side::Client => "frontend".into(),
                },
                executable: "python3".into(),
                peer_service: peer.map(Into::into),
                pod: None,
                peer_k8s: None,
                // As the connection table sets it: on the client side only.
                server_ip: (side == Side::Client).then(|| "10.0.0.2".into()),
            }),
            client: "10.0.0.1:5000".parse().unwrap(),
            server: "10.0.0.2:8080".parse().unwrap(),
        }
    }

    fn sample(metrics: &Metrics, prefix: &str, labels: &str) -> f64 {
        metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with(prefix) && l.contains(labels))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    }

    #[test]
    fn both_sides_on_node_count_once_on_the_graph() {
        let metrics = Arc::new(Metrics::default());
        let mut agg = HttpAggregator::new(metrics.clone(), 100, u64::MAX);
        for _ in 0..3 {
            agg.observe(&record(Side::Server, Some(500), Some("frontend")), 1);
            agg.observe(&record(Side::Client, Some(500), Some("backend")), 2);
        }
        let edge = r#"client="frontend",server="backend",connection_type="""#;
        assert_eq!(
            sample(&metrics, "traces_service_graph_request_total", edge),
            3.0
        );
        assert_eq!(
            sample(&metrics, "traces_service_graph_request_failed_total", edge),
            3.0
        );
        assert_eq!(
            sample(
                &metrics,
                "traces_service_graph_request_server_seconds_count",
                edge
            ),
            3.0
        );
        assert_eq!(
            sample(
                &metrics,
                "traces_service_graph_request_client_seconds_count",
                edge
            ),
            3.0
        );
        assert_eq!(
            sample(
                &metrics,
                "http_server_request_duration_seconds_count",
                r#"http_route="/users/*""#
            ),
            3.0
        );
    }

    #[test]
    fn series_are_found_by_their_values_not_their_allocations() {
        let metrics = Arc::new(Metrics::default());
        let mut agg = HttpAggregator::new(metrics.clone(), 100, u64::MAX);
        let pod = |name: &str| {
            Arc::new(PodMeta {
                namespace: "shop".into(),
                name: name.into(),
                uid: format!("uid-{name}"),
                workload: Some((WorkloadKind::Deployment, "backend".into())),
            })
        };
        // Every record is made anew: equal names in distinct allocations are one series.
        for (name, path) in [
            ("web-1", "/users/1"),
            ("web-1", "/users/2"),
            ("web-2", "/users/3"),
        ] {
            let mut r = record(Side::Server, Some(200), None);
            r.exchange.path = path.into();
            let mut names = ExchangeNames::clone(&r.names);
            names.pod = Some(pod(name));
            r.names = Arc::new(names);
            agg.observe(&r, 1);
        }
        let series = |pod: &str| {
            sample(
                &metrics,
                "http_server_request_duration_seconds_count",
                &format!(r#"http_route="/users/*",k8s_namespace_name="shop",k8s_pod_name="{pod}""#),
            )
        };
        assert_eq!(series("web-1"), 2.0);
        assert_eq!(series("web-2"), 1.0);
        assert_eq!(agg.server_series.len(), 2);
    }

    #[test]
    fn unpaired_and_remote_observations_count_alone() {
        let metrics = Arc::new(Metrics::default());
        let mut agg = HttpAggregator::new(metrics.clone(), 100, u64::MAX);
        agg.observe(&record(Side::Client, None, None), 1);
        agg.observe(&record(Side::Server, Some(200), Some("frontend")), 1);
        agg.tick(10 * PAIR_WAIT_NS);
        assert_eq!(
            sample(
                &metrics,
                "traces_service_graph_request_failed_total",
                r#"client="frontend",server="10.0.0.2",connection_type="virtual_node""#
            ),
            1.0
        );
        assert_eq!(
            sample(
                &metrics,
                "traces_service_graph_request_total",
                r#"client="frontend",server="backend",connection_type="""#
            ),
            1.0
        );
        // The client saw no response: status "" on the client metrics.
        assert_eq!(
            sample(
                &metrics,
                "http_client_request_duration_seconds_count",
                r#"http_response_status_code="""#
            ),
            1.0
        );
    }

    #[test]
    fn cap_overflows_routes_and_expiry_removes_series() {
        let metrics = Arc::new(Metrics::default());
        let mut agg = HttpAggregator::new(metrics.clone(), 2, 5);
        for p in ["/a", "/b", "/c", "/d"] {
            let mut r = record(Side::Server, Some(200), None);
            r.exchange.path = p.into();
            agg.observe(&r, 1);
        }
        assert_eq!(
            sample(
                &metrics,
                "http_server_request_duration_seconds_count",
                r#"http_route="__overflow__""#
            ),
            2.0
        );
        assert_eq!(
            sample(
                &metrics,
                "meshtap_metric_series_overflow_total",
                r#"metric="http_server_request_duration_seconds""#
            ),
            2.0
        );
        agg.tick(100);
        assert_eq!(
            sample(
                &metrics,
                "http_server_request_duration_seconds_count",
                r#"http_route="/a""#
            ),
            0.0
        );
    }
}
