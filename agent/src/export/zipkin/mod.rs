//! Spans to Zipkin: the v2 model, a batching sink that POSTs them to a collector, an in-memory
//! store of recent traces and the v2 query API over it.
//!
//! exchanges -> (aggregate: span assembly) -> `sink::ZipkinSink::offer` -> collector
//!                                          -> `store::TraceStore::insert` -> `api::router`

pub mod api;
pub mod convert;
pub mod model;
pub mod sink;
pub mod store;

/// Metric names (without the `_total` suffix prometheus-client appends to counters).
pub mod name {
    pub const SPANS_EXPORTED: &str = "meshtap_spans_exported";
    pub const SPANS_DROPPED: &str = "meshtap_spans_dropped";
    pub const SPANS_PENDING: &str = "meshtap_spans_pending";
    pub const STORE_SPANS: &str = "meshtap_trace_store_spans";
    pub const STORE_TRACES: &str = "meshtap_trace_store_traces";
    pub const STORE_EVICTED: &str = "meshtap_trace_store_evicted_spans";
    pub const STORE_REJECTED: &str = "meshtap_trace_store_rejected_spans";
}
