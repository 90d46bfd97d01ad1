//! Every metric the agent exports: names in one place, registered once, encoded by the endpoint.

use std::sync::Mutex;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
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
    pub const EVENTS: &str = "meshtap_events";
    pub const EVENTS_LOST: &str = "meshtap_events_lost";
    pub const DECODE_ERRORS: &str = "meshtap_decode_errors";
    pub const CONNECTIONS_TRACKED: &str = "meshtap_connections_tracked";
    pub const MAP_INSERT_FAILURES: &str = "meshtap_map_insert_failures";
    pub const MAP_ENTRIES: &str = "meshtap_map_entries";
    pub const RETRANSMITS_UNTRACKED: &str = "meshtap_retransmits_untracked";
    pub const SERIES_OVERFLOW: &str = "meshtap_metric_series_overflow";
    pub const PROGRAMS_ATTACHED: &str = "meshtap_programs_attached";
}

/// Label value that replaces a label set beyond the series cap.
pub const OVERFLOW: &str = "__overflow__";

/// An edge between two TCP endpoints as seen by one side. `client`/`server` are process names for
/// processes on this node and IP addresses otherwise; never a client's ephemeral port.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct EdgeLabels {
    pub client: String,
    pub server: String,
    pub server_port: String,
    pub role: String,
}

impl EdgeLabels {
    pub fn overflow(role: &str) -> Self {
        EdgeLabels {
            client: OVERFLOW.to_string(),
            server: OVERFLOW.to_string(),
            server_port: OVERFLOW.to_string(),
            role: role.to_string(),
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
    pub series_overflow: Family<MetricLabels, Counter>,
    pub programs_attached: Gauge,
    /// Last kernel counter values seen, so kernel totals become counter increments.
    kernel_seen: Mutex<Vec<u64>>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
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
            series_overflow: Family::default(),
            programs_attached: Gauge::default(),
            kernel_seen: Mutex::new(Vec::new()),
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
            name::SERIES_OVERFLOW,
            "Observations folded into the __overflow__ series because a metric reached its series cap",
            m.series_overflow.clone(),
        );
        registry.register(
            name::PROGRAMS_ATTACHED,
            "eBPF programs attached",
            m.programs_attached.clone(),
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
        let mut out = String::new();
        // Encoding into a String cannot fail: fmt::Write for String is infallible.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
