//! Every metric the agent exports: names in one place, registered once, encoded by the endpoint.

use std::{
    borrow::Cow,
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, LabelSetEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{aggregate::series::SeriesKey, metadata::kube::PodMeta};

/// Metric names (without the `_total` suffix prometheus-client appends to counters).
pub mod name {
    pub const TCP_OPENED: &str = "meshtap_tcp_connections_opened";
    pub const TCP_CLOSED: &str = "meshtap_tcp_connections_closed";
    pub const TCP_FAILED: &str = "meshtap_tcp_connections_failed";
    pub const TCP_ACTIVE: &str = "meshtap_tcp_active_connections";
    pub const TCP_SENT: &str = "meshtap_tcp_sent_bytes";
    pub const TCP_RECEIVED: &str = "meshtap_tcp_received_bytes";
    pub const TCP_RETRANSMITS: &str = "meshtap_tcp_retransmits";
    pub const TCP_CONNECT_DURATION: &str = "meshtap_tcp_connect_duration_seconds";
    pub const EVENTS: &str = "meshtap_events";
    pub const EVENTS_LOST: &str = "meshtap_events_lost";
    pub const DECODE_ERRORS: &str = "meshtap_decode_errors";
    pub const CONNECTIONS_TRACKED: &str = "meshtap_connections_tracked";
    pub const MAP_INSERT_FAILURES: &str = "meshtap_map_insert_failures";
    pub const MAP_ENTRIES: &str = "meshtap_map_entries";
    pub const RETRANSMITS_UNTRACKED: &str = "meshtap_retransmits_untracked";
    pub const TLS_PAYLOAD_SKIPPED: &str = "meshtap_tls_payload_skipped_events";
    pub const CLOSE_WAITS_CUT_SHORT: &str = "meshtap_close_waits_cut_short";
    pub const SERIES_OVERFLOW: &str = "meshtap_metric_series_overflow";
    pub const PROGRAMS_ATTACHED: &str = "meshtap_programs_attached";
    pub const PROGRAM_MISSES: &str = "meshtap_ebpf_program_misses";
    pub const PROGRAM_RUNS: &str = "meshtap_ebpf_program_runs";
    pub const PROGRAM_RUN_SECONDS: &str = "meshtap_ebpf_program_run_seconds";
    pub const PROTOCOL_DETECTED: &str = "meshtap_protocol_detected";
    pub const PARSE_ERRORS: &str = "meshtap_parse_errors";
    pub const EXCHANGES: &str = "meshtap_exchanges";
    pub const SERIES_EXPIRED: &str = "meshtap_metric_series_expired";
    // OpenTelemetry semantic conventions for HTTP, in Prometheus form (as Beyla exports them).
    pub const HTTP_SERVER_DURATION: &str = "http_server_request_duration_seconds";
    pub const HTTP_SERVER_REQUEST_BODY: &str = "http_server_request_body_size_bytes";
    pub const HTTP_SERVER_RESPONSE_BODY: &str = "http_server_response_body_size_bytes";
    pub const HTTP_CLIENT_DURATION: &str = "http_client_request_duration_seconds";
    pub const HTTP_CLIENT_REQUEST_BODY: &str = "http_client_request_body_size_bytes";
    pub const HTTP_CLIENT_RESPONSE_BODY: &str = "http_client_response_body_size_bytes";
    // Tempo's service-graph names.
    pub const GRAPH_REQUESTS: &str = "traces_service_graph_request";
    pub const GRAPH_FAILED: &str = "traces_service_graph_request_failed";
    pub const GRAPH_SERVER_SECONDS: &str = "traces_service_graph_request_server_seconds";
    pub const GRAPH_CLIENT_SECONDS: &str = "traces_service_graph_request_client_seconds";
    pub const SPANS_UNLINKED: &str = "meshtap_spans_unlinked";
    pub const TRACE_CONTEXT_INVALID: &str = "meshtap_trace_context_invalid";
    pub const SPANS_NOT_SAMPLED: &str = "meshtap_spans_not_sampled";
    pub const STORE_DECLINED: &str = "meshtap_trace_store_declined_spans";
    pub const KUBE_API_ERRORS: &str = "meshtap_kubernetes_api_errors";
    pub const KUBE_OBJECTS: &str = "meshtap_kubernetes_objects";
    pub const KUBE_CACHE_REJECTED: &str = "meshtap_kubernetes_cache_rejected";
}

/// OpenTelemetry's default explicit bucket boundaries for durations, in seconds.
pub const DEFAULT_DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Body-size buckets, bytes: 0 (no body) then powers of four up to 64 MiB.
const BODY_BUCKETS: [f64; 12] = [
    0.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    67108864.0,
];

/// Builds histograms with a fixed set of buckets (a nameable `MetricConstructor`).
#[derive(Clone)]
pub struct Buckets(std::sync::Arc<Vec<f64>>);

impl prometheus_client::metrics::family::MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

pub type Histograms<L> = Family<L, Histogram, Buckets>;

/// Writes one `name="value"` label.
fn encode_label(encoder: &mut LabelSetEncoder, name: &str, value: &str) -> std::fmt::Result {
    use prometheus_client::encoding::EncodeLabel;
    (name, value).encode(encoder.encode_label())
}

/// The pod of the observing process, as OpenTelemetry's `k8s.*` resource attributes in
/// Prometheus form: `k8s_namespace_name`, `k8s_pod_name` and the workload's label
/// (`k8s_deployment_name`, ...). No labels at all outside Kubernetes.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct K8sLabels(pub Option<Arc<crate::metadata::kube::PodMeta>>);

impl EncodeLabelSet for K8sLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> std::fmt::Result {
        let Some(pod) = &self.0 else {
            return Ok(());
        };
        encode_label(encoder, "k8s_namespace_name", &pod.namespace)?;
        encode_label(encoder, "k8s_pod_name", &pod.name)?;
        if let Some((kind, name)) = &pod.workload {
            encode_label(encoder, kind.label(), name)?;
        }
        Ok(())
    }
}

/// `http_server_*` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpServerLabels {
    pub service_name: Arc<str>,
    pub http_request_method: Cow<'static, str>,
    pub http_response_status_code: Cow<'static, str>,
    pub http_route: String,
    #[prometheus(flatten)]
    pub k8s: K8sLabels,
}

/// `http_client_*` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpClientLabels {
    pub service_name: Arc<str>,
    pub http_request_method: Cow<'static, str>,
    pub http_response_status_code: Cow<'static, str>,
    /// Shared with the connection, which formats its peer's address once.
    pub server_address: Arc<str>,
    pub server_port: u16,
    #[prometheus(flatten)]
    pub k8s: K8sLabels,
}

/// `a == b`, without reading the bytes when both are the same string (a label set made from
/// the very names it is looked up with): the bytes of a series' labels are likely out of cache.
#[inline]
fn same_str(a: &str, b: &str) -> bool {
    a.len() == b.len() && (std::ptr::eq(a.as_ptr(), b.as_ptr()) || a == b)
}

/// The same for a pod: the same allocation, or equal names.
#[inline]
fn same_pod(a: Option<&PodMeta>, b: Option<&PodMeta>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => std::ptr::eq(a, b) || a == b,
        _ => false,
    }
}

/// `HttpServerLabels` borrowed, for looking a series up (`SeriesKey`).
#[derive(Hash)]
pub struct HttpServerView<'a> {
    pub service_name: &'a str,
    pub method: &'a str,
    pub status: &'a str,
    pub route: &'a str,
    pub pod: Option<&'a PodMeta>,
}

impl SeriesKey for HttpServerLabels {
    type View<'a> = HttpServerView<'a>;

    fn view(&self) -> HttpServerView<'_> {
        HttpServerView {
            service_name: &self.service_name,
            method: &self.http_request_method,
            status: &self.http_response_status_code,
            route: &self.http_route,
            pod: self.k8s.0.as_deref(),
        }
    }

    fn matches(&self, v: &HttpServerView<'_>) -> bool {
        same_str(&self.service_name, v.service_name)
            && same_str(&self.http_request_method, v.method)
            && same_str(&self.http_response_status_code, v.status)
            && same_str(&self.http_route, v.route)
            && same_pod(self.k8s.0.as_deref(), v.pod)
    }
}

/// `HttpClientLabels` borrowed, for looking a series up (`SeriesKey`).
#[derive(Hash)]
pub struct HttpClientView<'a> {
    pub service_name: &'a str,
    pub method: &'a str,
    pub status: &'a str,
    pub server_address: &'a str,
    pub server_port: u16,
    pub pod: Option<&'a PodMeta>,
}

impl SeriesKey for HttpClientLabels {
    type View<'a> = HttpClientView<'a>;

    fn view(&self) -> HttpClientView<'_> {
        HttpClientView {
            service_name: &self.service_name,
            method: &self.http_request_method,
            status: &self.http_response_status_code,
            server_address: &self.server_address,
            server_port: self.server_port,
            pod: self.k8s.0.as_deref(),
        }
    }

    fn matches(&self, v: &HttpClientView<'_>) -> bool {
        self.server_port == v.server_port
            && same_str(&self.service_name, v.service_name)
            && same_str(&self.http_request_method, v.method)
            && same_str(&self.http_response_status_code, v.status)
            && same_str(&self.server_address, v.server_address)
            && same_pod(self.k8s.0.as_deref(), v.pod)
    }
}

/// The namespaces of an edge's two ends, when known (`client_namespace`, `server_namespace`;
/// absent otherwise).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct GraphNamespaces {
    pub client: Option<String>,
    pub server: Option<String>,
}

impl EncodeLabelSet for GraphNamespaces {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> std::fmt::Result {
        if let Some(ns) = &self.client {
            encode_label(encoder, "client_namespace", ns)?;
        }
        if let Some(ns) = &self.server {
            encode_label(encoder, "server_namespace", ns)?;
        }
        Ok(())
    }
}

/// Service-graph edge labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GraphLabels {
    pub client: Arc<str>,
    pub server: Arc<str>,
    pub connection_type: Cow<'static, str>,
    #[prometheus(flatten)]
    pub namespaces: GraphNamespaces,
}

/// `GraphLabels` borrowed, for looking a series up (`SeriesKey`).
#[derive(Hash)]
pub struct GraphView<'a> {
    pub client: &'a str,
    pub server: &'a str,
    pub connection_type: &'a str,
    pub client_namespace: Option<&'a str>,
    pub server_namespace: Option<&'a str>,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

/// Health of the Kubernetes metadata watches, by resource.
#[derive(Clone, Default)]
pub struct KubeMetrics {
    pub api_errors: Family<ResourceLabels, Counter>,
    pub objects: Family<ResourceLabels, Gauge>,
    pub cache_rejected: Family<ResourceLabels, Counter>,
}

impl KubeMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            name::KUBE_API_ERRORS,
            "Failed Kubernetes API list/watch calls, by resource (retried with back-off; names fall back to process names meanwhile)",
            self.api_errors.clone(),
        );
        registry.register(
            name::KUBE_OBJECTS,
            "Kubernetes objects in the agent's caches, by resource",
            self.objects.clone(),
        );
        registry.register(
            name::KUBE_CACHE_REJECTED,
            "Kubernetes objects not cached because the cache was full (--kube-cache-entries), by resource",
            self.cache_rejected.clone(),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ParseErrorLabels {
    pub protocol: String,
    pub reason: String,
}

/// The L7 families.
pub struct HttpFamilies {
    pub server_duration: Histograms<HttpServerLabels>,
    pub server_request_body: Histograms<HttpServerLabels>,
    pub server_response_body: Histograms<HttpServerLabels>,
    pub client_duration: Histograms<HttpClientLabels>,
    pub client_request_body: Histograms<HttpClientLabels>,
    pub client_response_body: Histograms<HttpClientLabels>,
    pub graph_requests: Family<GraphLabels, Counter>,
    pub graph_failed: Family<GraphLabels, Counter>,
    pub graph_server_seconds: Histograms<GraphLabels>,
    pub graph_client_seconds: Histograms<GraphLabels>,
    pub protocol_detected: Family<ProtocolLabels, Counter>,
    pub parse_errors: Family<ParseErrorLabels, Counter>,
    pub exchanges: Family<ProtocolLabels, Counter>,
    pub series_expired: Family<MetricLabels, Counter>,
}

impl HttpFamilies {
    fn new(registry: &mut Registry, duration_buckets: &[f64]) -> Self {
        let durations = Buckets(std::sync::Arc::new(duration_buckets.to_vec()));
        let bodies = Buckets(std::sync::Arc::new(BODY_BUCKETS.to_vec()));
        let f = HttpFamilies {
            server_duration: Family::new_with_constructor(durations.clone()),
            server_request_body: Family::new_with_constructor(bodies.clone()),
            server_response_body: Family::new_with_constructor(bodies.clone()),
            client_duration: Family::new_with_constructor(durations.clone()),
            client_request_body: Family::new_with_constructor(bodies.clone()),
            client_response_body: Family::new_with_constructor(bodies),
            graph_requests: Family::default(),
            graph_failed: Family::default(),
            graph_server_seconds: Family::new_with_constructor(durations.clone()),
            graph_client_seconds: Family::new_with_constructor(durations),
            protocol_detected: Family::default(),
            parse_errors: Family::default(),
            exchanges: Family::default(),
            series_expired: Family::default(),
        };
        registry.register(
            name::HTTP_SERVER_DURATION,
            "Duration of HTTP server requests, first request byte read to last response byte written",
            f.server_duration.clone(),
        );
        registry.register(
            name::HTTP_SERVER_REQUEST_BODY,
            "Size of HTTP server request bodies",
            f.server_request_body.clone(),
        );
        registry.register(
            name::HTTP_SERVER_RESPONSE_BODY,
            "Size of HTTP server response bodies",
            f.server_response_body.clone(),
        );
        registry.register(
            name::HTTP_CLIENT_DURATION,
            "Duration of HTTP client requests, first request byte written to last response byte read",
            f.client_duration.clone(),
        );
        registry.register(
            name::HTTP_CLIENT_REQUEST_BODY,
            "Size of HTTP client request bodies",
            f.client_request_body.clone(),
        );
        registry.register(
            name::HTTP_CLIENT_RESPONSE_BODY,
            "Size of HTTP client response bodies",
            f.client_response_body.clone(),
        );
        registry.register(
            name::GRAPH_REQUESTS,
            "Requests between two services (each exchange once)",
            f.graph_requests.clone(),
        );
        registry.register(
            name::GRAPH_FAILED,
            "Failed requests between two services",
            f.graph_failed.clone(),
        );
        registry.register(
            name::GRAPH_SERVER_SECONDS,
            "Request duration between two services, as seen by the server",
            f.graph_server_seconds.clone(),
        );
        registry.register(
            name::GRAPH_CLIENT_SECONDS,
            "Request duration between two services, as seen by the client",
            f.graph_client_seconds.clone(),
        );
        registry.register(
            name::PROTOCOL_DETECTED,
            "Connection sides whose payload was detected as a protocol",
            f.protocol_detected.clone(),
        );
        registry.register(
            name::PARSE_ERRORS,
            "Malformed or unparseable messages, by protocol and reason",
            f.parse_errors.clone(),
        );
        registry.register(
            name::EXCHANGES,
            "Request/response exchanges produced, by protocol (each observed side counts)",
            f.exchanges.clone(),
        );
        registry.register(
            name::SERIES_EXPIRED,
            "Label sets removed because they were not updated for --series-ttl-secs",
            f.series_expired.clone(),
        );
        f
    }
}

/// Label value that replaces a label set beyond the series cap.
pub const OVERFLOW: &str = "__overflow__";

/// An edge between two TCP endpoints as seen by one side. `client`/`server` are process names for
/// processes on this node and IP addresses otherwise; never a client's ephemeral port. In
/// Kubernetes an end in a pod is named by its workload, and a remote address by the pod that
/// owns it or the Service whose ClusterIP it is, with `client_namespace`/`server_namespace`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct EdgeLabels {
    pub client: String,
    pub server: String,
    pub server_port: String,
    pub role: String,
    #[prometheus(flatten)]
    pub namespaces: GraphNamespaces,
}

impl EdgeLabels {
    pub fn overflow(role: &str) -> Self {
        EdgeLabels {
            client: OVERFLOW.to_string(),
            server: OVERFLOW.to_string(),
            server_port: OVERFLOW.to_string(),
            role: role.to_string(),
            namespaces: GraphNamespaces::default(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailedLabels {
    pub client: String,
    pub server: String,
    pub server_port: String,
    pub role: String,
    pub reason: String,
    #[prometheus(flatten)]
    pub namespaces: GraphNamespaces,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LostLabels {
    pub stage: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabels {
    pub program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetricLabels {
    pub metric: String,
}

fn connect_histogram() -> Histogram {
    // 50 µs .. ~6.5 s: loopback connects take tens of µs, cross-region ones hundreds of ms.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00005, 2.0, 18,
    ))
}

pub type ConnectHistograms = Family<EdgeLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    pub registry: Registry,
    pub opened: Family<EdgeLabels, Counter>,
    pub closed: Family<EdgeLabels, Counter>,
    pub failed: Family<FailedLabels, Counter>,
    pub active: Family<EdgeLabels, Gauge>,
    pub sent: Family<EdgeLabels, Counter>,
    pub received: Family<EdgeLabels, Counter>,
    pub retransmits: Family<EdgeLabels, Counter>,
    pub connect_duration: ConnectHistograms,
    pub events: Family<KindLabels, Counter>,
    pub events_lost: Family<LostLabels, Counter>,
    pub decode_errors: Counter,
    pub connections_tracked: Gauge,
    pub map_insert_failures: Family<MapLabels, Counter>,
    pub map_entries: Family<MapLabels, Gauge>,
    pub retransmits_untracked: Counter,
    pub tls_payload_skipped: Counter,
    pub close_waits_cut_short: Counter,
    pub series_overflow: Family<MetricLabels, Counter>,
    pub programs_attached: Gauge,
    pub program_misses: Family<ProgramLabels, Counter>,
    pub program_runs: Family<ProgramLabels, Counter>,
    pub program_run_seconds: Family<ProgramLabels, Counter<f64, AtomicU64>>,
    pub http: HttpFamilies,
    pub zipkin: crate::export::zipkin::sink::ZipkinMetrics,
    pub store: crate::export::zipkin::store::StoreMetrics,
    pub traces: crate::aggregate::traces::TraceCounters,
    pub kube: KubeMetrics,
    /// Last kernel counter values seen, so kernel totals become counter increments.
    kernel_seen: Mutex<Vec<u64>>,
    /// Length of the last encoding: the next one starts at about that capacity instead of
    /// doubling its way up (a scrape of a high-cardinality node is megabytes).
    last_encoded_len: std::sync::atomic::AtomicUsize,
}

impl Metrics {
    pub fn new(duration_buckets: &[f64]) -> Self {
        let mut registry = Registry::default();
        let http = HttpFamilies::new(&mut registry, duration_buckets);
        let zipkin = crate::export::zipkin::sink::ZipkinMetrics::default();
        zipkin.register(&mut registry);
        let store = crate::export::zipkin::store::StoreMetrics::default();
        store.register(&mut registry);
        let traces = crate::aggregate::traces::TraceCounters::default();
        let kube = KubeMetrics::default();
        kube.register(&mut registry);
        registry.register(
            name::SPANS_UNLINKED,
            "Spans whose parent was expected but not found (async runtimes, worker pools, parents slower than the link window)",
            traces.unlinked.clone(),
        );
        registry.register(
            name::TRACE_CONTEXT_INVALID,
            "Requests whose traceparent or B3 headers were malformed (ignored: the span starts a new trace)",
            traces.context_invalid.clone(),
        );
        registry.register(
            name::SPANS_NOT_SAMPLED,
            "Spans not kept: their trace context said not sampled, or the sampling ratio left them out",
            traces.not_sampled.clone(),
        );
        registry.register(
            name::STORE_DECLINED,
            "Sampled spans the built-in trace store did not take: their trace came above its admission rate (--trace-store-rate); a collector still gets them",
            traces.store_declined.clone(),
        );
        let m = Metrics {
            http,
            zipkin,
            store,
            traces,
            kube,
            opened: Family::default(),
            closed: Family::default(),
            failed: Family::default(),
            active: Family::default(),
            sent: Family::default(),
            received: Family::default(),
            retransmits: Family::default(),
            connect_duration: Family::new_with_constructor(connect_histogram),
            events: Family::default(),
            events_lost: Family::default(),
            decode_errors: Counter::default(),
            connections_tracked: Gauge::default(),
            map_insert_failures: Family::default(),
            map_entries: Family::default(),
            retransmits_untracked: Counter::default(),
            tls_payload_skipped: Counter::default(),
            close_waits_cut_short: Counter::default(),
            series_overflow: Family::default(),
            programs_attached: Gauge::default(),
            program_misses: Family::default(),
            program_runs: Family::default(),
            program_run_seconds: Family::default(),
            kernel_seen: Mutex::new(Vec::new()),
            last_encoded_len: std::sync::atomic::AtomicUsize::new(0),
            registry: Registry::default(),
        };
        registry.register(
            name::TCP_OPENED,
            "TCP connections opened (client: connect reached ESTABLISHED; server: accepted)",
            m.opened.clone(),
        );
        registry.register(
            name::TCP_CLOSED,
            "TCP connections that reached TCP_CLOSE, including ones open before the agent started",
            m.closed.clone(),
        );
        registry.register(
            name::TCP_FAILED,
            "TCP connect attempts that failed, by reason",
            m.failed.clone(),
        );
        registry.register(
            name::TCP_ACTIVE,
            "TCP connections currently open",
            m.active.clone(),
        );
        registry.register(
            name::TCP_SENT,
            "Bytes written to TCP sockets by the observing side",
            m.sent.clone(),
        );
        registry.register(
            name::TCP_RECEIVED,
            "Bytes read from TCP sockets by the observing side",
            m.received.clone(),
        );
        registry.register(
            name::TCP_RETRANSMITS,
            "TCP segments retransmitted",
            m.retransmits.clone(),
        );
        registry.register(
            name::TCP_CONNECT_DURATION,
            "Time from SYN sent to connection established, as seen by the client",
            m.connect_duration.clone(),
        );
        registry.register(
            name::EVENTS,
            "Kernel events delivered to the agent, by kind",
            m.events.clone(),
        );
        registry.register(
            name::EVENTS_LOST,
            "Events lost, by stage (kernel: ring buffer full; userspace_queue: processing queue full) and kind",
            m.events_lost.clone(),
        );
        registry.register(
            name::DECODE_ERRORS,
            "Ring-buffer records that could not be decoded",
            m.decode_errors.clone(),
        );
        registry.register(
            name::CONNECTIONS_TRACKED,
            "Connections in the agent's connection table",
            m.connections_tracked.clone(),
        );
        registry.register(
            name::MAP_INSERT_FAILURES,
            "Failed inserts into kernel maps (map full or out of memory), by map",
            m.map_insert_failures.clone(),
        );
        registry.register(
            name::MAP_ENTRIES,
            "Entries in kernel maps, by map",
            m.map_entries.clone(),
        );
        registry.register(
            name::RETRANSMITS_UNTRACKED,
            "Retransmits on sockets the agent does not track (opened before it, idle since)",
            m.retransmits_untracked.clone(),
        );
        registry.register(
            name::TLS_PAYLOAD_SKIPPED,
            "Data events of TLS connections the kernel sent without payload: after the first TLS record nothing can be parsed, so nothing is copied (their bytes are still counted)",
            m.tls_payload_skipped.clone(),
        );
        registry.register(
            name::CLOSE_WAITS_CUT_SHORT,
            "Closed connections whose wait for bytes moved after the close was cut short: more than 4096 waiting at once",
            m.close_waits_cut_short.clone(),
        );
        registry.register(
            name::SERIES_OVERFLOW,
            "Observations folded into the __overflow__ series because a metric reached its series cap",
            m.series_overflow.clone(),
        );
        registry.register(
            name::PROGRAMS_ATTACHED,
            "eBPF programs attached",
            m.programs_attached.clone(),
        );
        registry.register(
            name::PROGRAM_MISSES,
            "Runs of an eBPF program the kernel skipped because a BPF program was already running on that CPU (its recursion_misses): the events of those runs were not seen. inet_sock_set_state and inet_sock_set_state_backup, tcp_retransmit_skb and tcp_retransmit_skb_backup each handle what the other skipped",
            m.program_misses.clone(),
        );
        registry.register(
            name::PROGRAM_RUNS,
            "Runs of an eBPF program, counted only while BPF run-time statistics are on (--ebpf-stats, or sysctl kernel.bpf_stats_enabled=1)",
            m.program_runs.clone(),
        );
        registry.register(
            name::PROGRAM_RUN_SECONDS,
            "Time spent in an eBPF program, counted only while BPF run-time statistics are on (--ebpf-stats, or sysctl kernel.bpf_stats_enabled=1)",
            m.program_run_seconds.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Adds the growth of a monotonically increasing kernel counter (slot `index`) to `counter`.
    pub fn kernel_counter(&self, index: usize, total: u64, counter: &Counter) {
        let mut seen = self.kernel_seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() <= index {
            seen.resize(index + 1, 0);
        }
        let delta = total.saturating_sub(seen[index]);
        seen[index] = total;
        if delta > 0 {
            counter.inc_by(delta);
        }
    }

    pub fn encode(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let last = self.last_encoded_len.load(Relaxed);
        let mut out = String::with_capacity(last + last / 8);
        // Encoding into a String cannot fail: fmt::Write for String is infallible.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        self.last_encoded_len.store(out.len(), Relaxed);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(&DEFAULT_DURATION_BUCKETS)
    }
}
