//! gRPC request metrics, OpenTelemetry's RPC conventions in Prometheus form:
//! `rpc_server_duration_seconds` and `rpc_client_duration_seconds` per service name, RPC
//! service, method and gRPC status code (client side: and server address and port), with the
//! pod's `k8s_*` labels in Kubernetes. Label sets are bounded (`metrics::series`); past the
//! bound the method is folded into `__overflow__`.
//!
//! Plain HTTP/2 exchanges carry HTTP attributes and are counted by the HTTP metrics.

use std::sync::Arc;

use prometheus_client::{encoding::EncodeLabelSet, metrics::histogram::Histogram};

use super::Attributes;
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
    pub const SERVER_DURATION: &str = "rpc_server_duration_seconds";
    pub const CLIENT_DURATION: &str = "rpc_client_duration_seconds";
}

/// `rpc_server_duration_seconds` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub service_name: Arc<str>,
    pub rpc_system: &'static str,
    pub rpc_service: String,
    pub rpc_method: String,
    /// Empty when the call had no answer.
    pub rpc_grpc_status_code: String,
    #[prometheus(flatten)]
    pub k8s: K8sLabels,
}

/// `rpc_client_duration_seconds` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    pub service_name: Arc<str>,
    pub rpc_system: &'static str,
    pub rpc_service: String,
    pub rpc_method: String,
    pub rpc_grpc_status_code: String,
    pub server_address: Arc<str>,
    pub server_port: u16,
    #[prometheus(flatten)]
    pub k8s: K8sLabels,
}

/// A call's labels, borrowed, for looking a series up.
#[derive(Hash)]
pub struct View<'a> {
    service_name: &'a str,
    rpc_service: &'a str,
    rpc_method: &'a str,
    status: &'a str,
    /// Client side only.
    server: Option<(&'a str, u16)>,
    pod: Option<&'a PodMeta>,
}

impl SeriesKey for ServerLabels {
    type View<'a> = View<'a>;

    fn view(&self) -> View<'_> {
        View {
            service_name: &self.service_name,
            rpc_service: &self.rpc_service,
            rpc_method: &self.rpc_method,
            status: &self.rpc_grpc_status_code,
            server: None,
            pod: self.k8s.0.as_deref(),
        }
    }

    fn matches(&self, v: &View<'_>) -> bool {
        v.server.is_none()
            && same_str(&self.service_name, v.service_name)
            && same_str(&self.rpc_service, v.rpc_service)
            && same_str(&self.rpc_method, v.rpc_method)
            && same_str(&self.rpc_grpc_status_code, v.status)
            && same_pod(self.k8s.0.as_deref(), v.pod)
    }
}

impl SeriesKey for ClientLabels {
    type View<'a> = View<'a>;

    fn view(&self) -> View<'_> {
        View {
            service_name: &self.service_name,
            rpc_service: &self.rpc_service,
            rpc_method: &self.rpc_method,
            status: &self.rpc_grpc_status_code,
            server: Some((&self.server_address, self.server_port)),
            pod: self.k8s.0.as_deref(),
        }
    }

    fn matches(&self, v: &View<'_>) -> bool {
        v.server
            .is_some_and(|(a, p)| p == self.server_port && same_str(&self.server_address, a))
            && same_str(&self.service_name, v.service_name)
            && same_str(&self.rpc_service, v.rpc_service)
            && same_str(&self.rpc_method, v.rpc_method)
            && same_str(&self.rpc_grpc_status_code, v.status)
            && same_pod(self.k8s.0.as_deref(), v.pod)
    }
}

/// The gRPC families and their bounded label sets.
pub struct Red {
    server_duration: Histograms<ServerLabels>,
    client_duration: Histograms<ClientLabels>,
    server_series: SeriesGuard<ServerLabels, Option<Histogram>>,
    client_series: SeriesGuard<ClientLabels, Option<Histogram>>,
    /// The status label of the call being observed: one buffer, reused.
    status: String,
}

fn observe<L: Clone + std::hash::Hash + Eq + SeriesKey>(
    family: &Histograms<L>,
    admitted: Admitted<'_, L, Option<Histogram>>,
    seconds: f64,
) {
    match admitted {
        Admitted::Series(labels, handle) => handle
            .get_or_insert_with(|| family.get_or_create(labels).clone())
            .observe(seconds),
        Admitted::Overflow(labels) => family.get_or_create(&labels).observe(seconds),
    }
}

impl RedMetrics for Red {
    type Attributes = Attributes;

    fn new(registry: &Registry, settings: &RedSettings) -> Self {
        let durations = Buckets::new(&settings.duration_buckets);
        let red = Red {
            server_duration: Histograms::new_with_constructor(durations.clone()),
            client_duration: Histograms::new_with_constructor(durations),
            server_series: SeriesGuard::new(
                settings.max_series,
                registry.overflow_counter(name::SERVER_DURATION),
            ),
            client_series: SeriesGuard::new(
                settings.max_series,
                registry.overflow_counter(name::CLIENT_DURATION),
            ),
            status: String::new(),
        };
        registry.register(
            name::SERVER_DURATION,
            "Duration of gRPC calls served, first request byte read to last response byte written",
            red.server_duration.clone(),
        );
        registry.register(
            name::CLIENT_DURATION,
            "Duration of gRPC calls made, first request byte written to last response byte read",
            red.client_duration.clone(),
        );
        red
    }

    fn observe(&mut self, ex: &Exchange, a: &Attributes, at: &Observation) {
        let seconds = ex.end_ns.saturating_sub(ex.start_ns) as f64 / 1e9;
        self.status.clear();
        if let Some(s) = a.status {
            use std::fmt::Write;
            let _ = write!(self.status, "{s}");
        }
        let pod = at.pod.map(|p| &**p);
        match at.side {
            Side::Server => {
                let view = View {
                    service_name: at.service,
                    rpc_service: &a.service,
                    rpc_method: &a.method,
                    status: &self.status,
                    server: None,
                    pod,
                };
                let admitted = self.server_series.admit(
                    view,
                    at.now_ns,
                    || ServerLabels {
                        service_name: at.service.clone(),
                        rpc_system: "grpc",
                        rpc_service: a.service.clone(),
                        rpc_method: a.method.clone(),
                        rpc_grpc_status_code: self.status.clone(),
                        k8s: K8sLabels(at.pod.cloned()),
                    },
                    |l| ServerLabels {
                        rpc_method: OVERFLOW.to_string(),
                        ..l
                    },
                );
                observe(&self.server_duration, admitted, seconds);
            }
            Side::Client => {
                let formatted;
                let server_address: &str = match at.server_address {
                    Some(ip) => ip,
                    None => {
                        formatted = at.server.ip().to_string();
                        &formatted
                    }
                };
                let view = View {
                    service_name: at.service,
                    rpc_service: &a.service,
                    rpc_method: &a.method,
                    status: &self.status,
                    server: Some((server_address, at.server.port())),
                    pod,
                };
                let admitted = self.client_series.admit(
                    view,
                    at.now_ns,
                    || ClientLabels {
                        service_name: at.service.clone(),
                        rpc_system: "grpc",
                        rpc_service: a.service.clone(),
                        rpc_method: a.method.clone(),
                        rpc_grpc_status_code: self.status.clone(),
                        server_address: at
                            .server_address
                            .cloned()
                            .unwrap_or_else(|| server_address.into()),
                        server_port: at.server.port(),
                        k8s: K8sLabels(at.pod.cloned()),
                    },
                    |l| ClientLabels {
                        rpc_method: OVERFLOW.to_string(),
                        ..l
                    },
                );
                observe(&self.client_duration, admitted, seconds);
            }
        }
    }

    fn expire(&mut self, now_ns: u64, ttl_ns: u64, registry: &Registry) {
        let stale = self.server_series.expire(now_ns, ttl_ns);
        for l in &stale {
            self.server_duration.remove(l);
        }
        registry.count_expired(name::SERVER_DURATION, stale.len() as u64);
        let stale = self.client_series.expire(now_ns, ttl_ns);
        for l in &stale {
            self.client_duration.remove(l);
        }
        registry.count_expired(name::CLIENT_DURATION, stale.len() as u64);
    }
}
