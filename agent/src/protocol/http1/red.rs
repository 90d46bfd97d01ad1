//! HTTP request metrics, with the OpenTelemetry semantic-convention names in Prometheus form
//! (the names Beyla and OpenTelemetry eBPF Instrumentation export): duration and body sizes per
//! service, method, status and route (server side) or server address (client side), with the
//! pod's `k8s_*` labels in Kubernetes. Label sets are bounded (`metrics::series`).

use std::{borrow::Cow, sync::Arc};

use prometheus_client::{encoding::EncodeLabelSet, metrics::histogram::Histogram};

use super::{Attributes, route::route_into};
use crate::{
    metadata::pod::{K8sLabels, PodMeta, same_pod},
    metrics::{
        Buckets, Histograms, OVERFLOW, Registry,
        series::{Admitted, SeriesGuard, SeriesKey, same_str},
    },
    protocol::{Exchange, Observation, RedMetrics, RedSettings, Side},
};

/// Metric names.
pub mod name {
    pub const SERVER_DURATION: &str = "http_server_request_duration_seconds";
    pub const SERVER_REQUEST_BODY: &str = "http_server_request_body_size_bytes";
    pub const SERVER_RESPONSE_BODY: &str = "http_server_response_body_size_bytes";
    pub const CLIENT_DURATION: &str = "http_client_request_duration_seconds";
    pub const CLIENT_REQUEST_BODY: &str = "http_client_request_body_size_bytes";
    pub const CLIENT_RESPONSE_BODY: &str = "http_client_response_body_size_bytes";
}

/// Body-size buckets, bytes: 0 (no body) then powers of four up to 64 MiB.
const BODY_BUCKETS: [f64; 12] = [
    0.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    67108864.0,
];

/// `http_server_*` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub service_name: Arc<str>,
    pub http_request_method: Cow<'static, str>,
    pub http_response_status_code: Cow<'static, str>,
    pub http_route: String,
    /// `1.0`, `1.1` or `2` (empty, so absent, when the request line was cut before it).
    pub network_protocol_version: &'static str,
    #[prometheus(flatten)]
    pub k8s: K8sLabels,
}

/// `http_client_*` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    pub service_name: Arc<str>,
    pub http_request_method: Cow<'static, str>,
    pub http_response_status_code: Cow<'static, str>,
    /// Shared with the connection, which formats its peer's address once.
    pub server_address: Arc<str>,
    pub server_port: u16,
    pub network_protocol_version: &'static str,
    #[prometheus(flatten)]
    pub k8s: K8sLabels,
}

/// `ServerLabels` borrowed, for looking a series up (`SeriesKey`).
#[derive(Hash)]
pub struct ServerView<'a> {
    service_name: &'a str,
    method: &'a str,
    status: &'a str,
    route: &'a str,
    version: &'static str,
    pod: Option<&'a PodMeta>,
}

impl SeriesKey for ServerLabels {
    type View<'a> = ServerView<'a>;

    fn view(&self) -> ServerView<'_> {
        ServerView {
            service_name: &self.service_name,
            method: &self.http_request_method,
            status: &self.http_response_status_code,
            route: &self.http_route,
            version: self.network_protocol_version,
            pod: self.k8s.0.as_deref(),
        }
    }

    fn matches(&self, v: &ServerView<'_>) -> bool {
        same_str(&self.service_name, v.service_name)
            && same_str(&self.http_request_method, v.method)
            && same_str(&self.http_response_status_code, v.status)
            && same_str(&self.http_route, v.route)
            && self.network_protocol_version == v.version
            && same_pod(self.k8s.0.as_deref(), v.pod)
    }
}

/// `ClientLabels` borrowed, for looking a series up (`SeriesKey`).
#[derive(Hash)]
pub struct ClientView<'a> {
    service_name: &'a str,
    method: &'a str,
    status: &'a str,
    server_address: &'a str,
    server_port: u16,
    version: &'static str,
    pod: Option<&'a PodMeta>,
}

impl SeriesKey for ClientLabels {
    type View<'a> = ClientView<'a>;

    fn view(&self) -> ClientView<'_> {
        ClientView {
            service_name: &self.service_name,
            method: &self.http_request_method,
            status: &self.http_response_status_code,
            server_address: &self.server_address,
            server_port: self.server_port,
            version: self.network_protocol_version,
            pod: self.k8s.0.as_deref(),
        }
    }

    fn matches(&self, v: &ClientView<'_>) -> bool {
        self.server_port == v.server_port
            && self.network_protocol_version == v.version
            && same_str(&self.service_name, v.service_name)
            && same_str(&self.http_request_method, v.method)
            && same_str(&self.http_response_status_code, v.status)
            && same_str(&self.server_address, v.server_address)
            && same_pod(self.k8s.0.as_deref(), v.pod)
    }
}

/// The HTTP families and their bounded label sets.
pub struct Red {
    server_duration: Histograms<ServerLabels>,
    server_request_body: Histograms<ServerLabels>,
    server_response_body: Histograms<ServerLabels>,
    client_duration: Histograms<ClientLabels>,
    client_request_body: Histograms<ClientLabels>,
    client_response_body: Histograms<ClientLabels>,
    server_series: SeriesGuard<ServerLabels, Option<[Histogram; 3]>>,
    client_series: SeriesGuard<ClientLabels, Option<[Histogram; 3]>>,
    /// The route of the exchange being observed: one buffer, reused.
    route: String,
}

impl RedMetrics for Red {
    type Attributes = Attributes;

    fn new(registry: &Registry, settings: &RedSettings) -> Self {
        let durations = Buckets::new(&settings.duration_buckets);
        let bodies = Buckets::new(&BODY_BUCKETS);
        let red = Red {
            server_duration: Histograms::new_with_constructor(durations.clone()),
            server_request_body: Histograms::new_with_constructor(bodies.clone()),
            server_response_body: Histograms::new_with_constructor(bodies.clone()),
            client_duration: Histograms::new_with_constructor(durations),
            client_request_body: Histograms::new_with_constructor(bodies.clone()),
            client_response_body: Histograms::new_with_constructor(bodies),
            server_series: SeriesGuard::new(
                settings.max_series,
                registry.overflow_counter(name::SERVER_DURATION),
            ),
            client_series: SeriesGuard::new(
                settings.max_series,
                registry.overflow_counter(name::CLIENT_DURATION),
            ),
            route: String::new(),
        };
        registry.register(
            name::SERVER_DURATION,
            "Duration of HTTP server requests, first request byte read to last response byte written",
            red.server_duration.clone(),
        );
        registry.register(
            name::SERVER_REQUEST_BODY,
            "Size of HTTP server request bodies",
            red.server_request_body.clone(),
        );
        registry.register(
            name::SERVER_RESPONSE_BODY,
            "Size of HTTP server response bodies",
            red.server_response_body.clone(),
        );
        registry.register(
            name::CLIENT_DURATION,
            "Duration of HTTP client requests, first request byte written to last response byte read",
            red.client_duration.clone(),
        );
        registry.register(
            name::CLIENT_REQUEST_BODY,
            "Size of HTTP client request bodies",
            red.client_request_body.clone(),
        );
        registry.register(
            name::CLIENT_RESPONSE_BODY,
            "Size of HTTP client response bodies",
            red.client_response_body.clone(),
        );
        red
    }

    fn observe(&mut self, ex: &Exchange, a: &Attributes, at: &Observation) {
        let seconds = ex.end_ns.saturating_sub(ex.start_ns) as f64 / 1e9;
        let values = [seconds, ex.request_bytes as f64, ex.response_bytes as f64];
        let status = status_label(a.status);
        match at.side {
            Side::Server => {
                route_into(&a.path, &mut self.route);
                let view = ServerView {
                    service_name: at.service,
                    method: &a.method,
                    status: &status,
                    route: &self.route,
                    version: a.version.label(),
                    pod: at.pod.map(|p| &**p),
                };
                let admitted = self.server_series.admit(
                    view,
                    at.now_ns,
                    || ServerLabels {
                        service_name: at.service.clone(),
                        http_request_method: a.method.clone(),
                        http_response_status_code: status.clone(),
                        http_route: self.route.clone(),
                        network_protocol_version: a.version.label(),
                        k8s: K8sLabels(at.pod.cloned()),
                    },
                    |l| ServerLabels {
                        http_route: OVERFLOW.to_string(),
                        ..l
                    },
                );
                observe(
                    [
                        &self.server_duration,
                        &self.server_request_body,
                        &self.server_response_body,
                    ],
                    admitted,
                    values,
                );
            }
            Side::Client => {
                // Formatted once per connection by the connection table; here only for an
                // observation made without it.
                let formatted;
                let server_address: &str = match at.server_address {
                    Some(ip) => ip,
                    None => {
                        formatted = at.server.ip().to_string();
                        &formatted
                    }
                };
                let view = ClientView {
                    service_name: at.service,
                    method: &a.method,
                    status: &status,
                    server_address,
                    server_port: at.server.port(),
                    version: a.version.label(),
                    pod: at.pod.map(|p| &**p),
                };
                let admitted = self.client_series.admit(
                    view,
                    at.now_ns,
                    || ClientLabels {
                        service_name: at.service.clone(),
                        http_request_method: a.method.clone(),
                        http_response_status_code: status.clone(),
                        server_address: at
                            .server_address
                            .cloned()
                            .unwrap_or_else(|| server_address.into()),
                        server_port: at.server.port(),
                        network_protocol_version: a.version.label(),
                        k8s: K8sLabels(at.pod.cloned()),
                    },
                    |l| ClientLabels {
                        server_address: OVERFLOW.into(),
                        ..l
                    },
                );
                observe(
                    [
                        &self.client_duration,
                        &self.client_request_body,
                        &self.client_response_body,
                    ],
                    admitted,
                    values,
                );
            }
        }
    }

    fn expire(&mut self, now_ns: u64, ttl_ns: u64, registry: &Registry) {
        let stale = self.server_series.expire(now_ns, ttl_ns);
        for l in &stale {
            for family in [
                &self.server_duration,
                &self.server_request_body,
                &self.server_response_body,
            ] {
                family.remove(l);
            }
        }
        registry.count_expired(name::SERVER_DURATION, stale.len() as u64);
        let stale = self.client_series.expire(now_ns, ttl_ns);
        for l in &stale {
            for family in [
                &self.client_duration,
                &self.client_request_body,
                &self.client_response_body,
            ] {
                family.remove(l);
            }
        }
        registry.count_expired(name::CLIENT_DURATION, stale.len() as u64);
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
        metadata::pod::WorkloadKind,
        metrics::DEFAULT_DURATION_BUCKETS,
        protocol::{Outcome, context::Found},
    };

    fn exchange(status: Option<u16>, path: &str) -> (Exchange, Attributes) {
        let a = Attributes {
            method: "GET".into(),
            version: crate::protocol::http1::Version::Http11,
            path: path.into(),
            status,
        };
        let ex = Exchange {
            start_ns: 1_000_000_000,
            end_ns: 1_010_000_000,
            outcome: if status.is_some() {
                Outcome::Ok
            } else {
                Outcome::NoResponse
            },
            truncated: false,
            request_bytes: 0,
            response_bytes: 3,
            context: Found::None,
            attributes: crate::protocol::Attributes::Http1(a.clone()),
        };
        (ex, a)
    }

    fn red(max_series: usize) -> (Registry, Red) {
        let registry = Registry::default();
        let red = Red::new(
            &registry,
            &RedSettings {
                duration_buckets: DEFAULT_DURATION_BUCKETS.to_vec(),
                max_series,
            },
        );
        (registry, red)
    }

    fn sample(registry: &Registry, prefix: &str, labels: &str) -> f64 {
        registry
            .encode()
            .lines()
            .filter(|l| l.starts_with(prefix) && l.contains(labels))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    }

    fn observe_server(red: &mut Red, service: &Arc<str>, pod: Option<&Arc<PodMeta>>, path: &str) {
        let (ex, a) = exchange(Some(200), path);
        red.observe(
            &ex,
            &a,
            &Observation {
                side: Side::Server,
                service,
                pod,
                server_address: None,
                server: "10.0.0.2:8080".parse().unwrap(),
                now_ns: 1,
            },
        );
    }

    #[test]
    fn series_are_found_by_their_values_not_their_allocations() {
        let (registry, mut red) = red(100);
        let pod = |name: &str| {
            Arc::new(PodMeta {
                namespace: "shop".into(),
                name: name.into(),
                uid: format!("uid-{name}"),
                workload: Some((WorkloadKind::Deployment, "backend".into())),
            })
        };
        // Every name is made anew: equal names in distinct allocations are one series.
        for (name, path) in [
            ("web-1", "/users/1"),
            ("web-1", "/users/2"),
            ("web-2", "/users/3"),
        ] {
            let service: Arc<str> = "backend".into();
            observe_server(&mut red, &service, Some(&pod(name)), path);
        }
        let series = |pod: &str| {
            sample(
                &registry,
                "http_server_request_duration_seconds_count",
                &format!(
                    r#"http_route="/users/*",network_protocol_version="1.1",k8s_namespace_name="shop",k8s_pod_name="{pod}""#
                ),
            )
        };
        assert_eq!(series("web-1"), 2.0);
        assert_eq!(series("web-2"), 1.0);
        assert_eq!(red.server_series.len(), 2);
    }

    #[test]
    fn a_client_without_response_has_an_empty_status() {
        let (registry, mut red) = red(100);
        let (ex, a) = exchange(None, "/x");
        let service: Arc<str> = "frontend".into();
        let ip: Arc<str> = "10.0.0.2".into();
        red.observe(
            &ex,
            &a,
            &Observation {
                side: Side::Client,
                service: &service,
                pod: None,
                server_address: Some(&ip),
                server: "10.0.0.2:8080".parse().unwrap(),
                now_ns: 1,
            },
        );
        assert_eq!(
            sample(
                &registry,
                "http_client_request_duration_seconds_count",
                r#"service_name="frontend",http_request_method="GET",http_response_status_code="",server_address="10.0.0.2",server_port="8080""#
            ),
            1.0
        );
    }

    #[test]
    fn cap_overflows_routes_and_expiry_removes_series() {
        let (registry, mut red) = red(2);
        let service: Arc<str> = "backend".into();
        for p in ["/a", "/b", "/c", "/d"] {
            observe_server(&mut red, &service, None, p);
        }
        assert_eq!(
            sample(
                &registry,
                "http_server_request_duration_seconds_count",
                r#"http_route="__overflow__""#
            ),
            2.0
        );
        assert_eq!(
            sample(
                &registry,
                "meshtap_metric_series_overflow_total",
                r#"metric="http_server_request_duration_seconds""#
            ),
            2.0
        );
        red.expire(100, 5, &registry);
        assert_eq!(
            sample(
                &registry,
                "http_server_request_duration_seconds_count",
                r#"http_route="/a""#
            ),
            0.0
        );
        assert_eq!(
            sample(
                &registry,
                "meshtap_metric_series_expired_total",
                r#"metric="http_server_request_duration_seconds""#
            ),
            2.0
        );
    }
}
