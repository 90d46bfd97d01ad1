//! The connection table's metrics: per-edge TCP counters (opens, closes, failures, bytes,
//! retransmits, connect time) and the table's own size.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
};

use std::sync::{Arc, Mutex};

use crate::metrics::{
    EdgeNamespaces, OVERFLOW, Registry,
    window::{Windowed, rejected_counter},
};

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
    pub const CONNECTIONS_TRACKED: &str = "meshtap_connections_tracked";
    pub const TLS_PLAINTEXT_UNTRACKED: &str = "meshtap_tls_plaintext_untracked_events";
    pub const EVENTS_HELD: &str = "meshtap_data_events_held";
    pub const EVENTS_HELD_OVERFLOW: &str = "meshtap_data_events_held_overflow";
    /// How the series cap names the edge families.
    pub const TCP_SERIES: &str = "meshtap_tcp";
}

/// An edge between two TCP endpoints as seen by one side. `client`/`server` are the service
/// names of processes on this node and IP addresses otherwise; never a client's ephemeral port.
/// In Kubernetes an end in a pod is named by its workload, and a remote address by the pod that
/// owns it or the Service whose ClusterIP it is, with `client_namespace`/`server_namespace`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct EdgeLabels {
    pub client: String,
    pub server: String,
    pub server_port: String,
    pub role: String,
    #[prometheus(flatten)]
    pub namespaces: EdgeNamespaces,
}

impl EdgeLabels {
    pub fn overflow(role: &str) -> Self {
        EdgeLabels {
            client: OVERFLOW.to_string(),
            server: OVERFLOW.to_string(),
            server_port: OVERFLOW.to_string(),
            role: role.to_string(),
            namespaces: EdgeNamespaces::default(),
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
    pub namespaces: EdgeNamespaces,
}

fn connect_histogram() -> Histogram {
    // 50 µs .. ~6.5 s: loopback connects take tens of µs, cross-region ones hundreds of ms.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00005, 2.0, 18,
    ))
}

pub type ConnectHistograms = Family<EdgeLabels, Histogram, fn() -> Histogram>;

/// Connect-time buckets of [`connect_histogram`], for the windowed table.
fn connect_buckets() -> Vec<f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 18).collect()
}

/// Edges the web page's windowed table of TCP connections keeps at most.
pub const MAX_LIVE_EDGES: usize = 4096;

/// TCP connections of every edge and role over the last minutes (opened: a request, failed
/// connects: a failed one, with the connect time), shared with the web page that reads it.
pub type L4Table = Arc<Mutex<Windowed<EdgeLabels>>>;

/// The L4 families.
pub struct L4Metrics {
    pub opened: Family<EdgeLabels, Counter>,
    pub closed: Family<EdgeLabels, Counter>,
    pub failed: Family<FailedLabels, Counter>,
    pub active: Family<EdgeLabels, Gauge>,
    pub sent: Family<EdgeLabels, Counter>,
    pub received: Family<EdgeLabels, Counter>,
    pub retransmits: Family<EdgeLabels, Counter>,
    pub connect_duration: ConnectHistograms,
    pub connections_tracked: Gauge,
    /// `meshtap_map_insert_failures_total{map="agent_connections"}`: connections the full
    /// table turned away (the family is the kernel side's, see `ebpf::telemetry`).
    pub table_full: Counter,
    /// The connections of the last minutes, for the web page's map.
    pub live: L4Table,
    /// TLS plaintext events of connections not in the table (turned away, or their open event
    /// lost and no syscall event since): not parsed.
    pub tls_plaintext_untracked: Counter,
    /// `meshtap_data_events_held_total` / `_overflow_total` (see `ConnTable::parse`).
    pub events_held: Counter,
    pub events_held_overflow: Counter,
}

impl L4Metrics {
    pub fn new(registry: &Registry, table_full: Counter) -> Self {
        let m = L4Metrics {
            opened: Family::default(),
            closed: Family::default(),
            failed: Family::default(),
            active: Family::default(),
            sent: Family::default(),
            received: Family::default(),
            retransmits: Family::default(),
            connect_duration: Family::new_with_constructor(connect_histogram),
            connections_tracked: Gauge::default(),
            table_full,
            live: Arc::new(Mutex::new(Windowed::new(
                &connect_buckets(),
                MAX_LIVE_EDGES,
                rejected_counter(registry, "tcp_edges"),
            ))),
            tls_plaintext_untracked: Counter::default(),
            events_held: Counter::default(),
            events_held_overflow: Counter::default(),
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
            name::CONNECTIONS_TRACKED,
            "Connections in the agent's connection table",
            m.connections_tracked.clone(),
        );
        registry.register(
            name::TLS_PLAINTEXT_UNTRACKED,
            "TLS plaintext events of connections the agent's table does not hold (turned away by the full table, or first seen through their plaintext): not parsed",
            m.tls_plaintext_untracked.clone(),
        );
        registry.register(
            name::EVENTS_HELD,
            "Data events of a connection that came while another thread's syscall on it was still arriving in chunks (HTTP/2 is captured whole, a chunk per event): held, then parsed after that syscall's last chunk, in the byte stream's order",
            m.events_held.clone(),
        );
        registry.register(
            name::EVENTS_HELD_OVERFLOW,
            "Times more than 16 data events on a connection (1,024 in all) waited for a chunked syscall's last chunk (it was lost): those held were parsed in arrival order",
            m.events_held_overflow.clone(),
        );
        m
    }
}
