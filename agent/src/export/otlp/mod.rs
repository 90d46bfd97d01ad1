//! Spans to an OpenTelemetry collector: OTLP/HTTP with protobuf bodies (`POST /v1/traces`),
//! built from the agent's own spans (`trace::span::Span`).
//!
//! (span assembly) -> `SpanExporter::export` on `sink::OtlpSink` -> `export::delivery` (queue,
//! batches) -> `model::request` -> collector
//!
//! - `config`: the exporter's settings (`--otlp-*`), validated;
//! - `model`: spans into an `ExportTraceServiceRequest`, one `ResourceSpans` per process;
//! - `sink`: the OTLP wire (content type, which answers are retried, partial success) over the
//!   delivery every span sink shares, and its self-metrics.

pub mod config;
pub mod model;
pub mod sink;

/// Metric names (without the `_total` suffix prometheus-client appends to counters).
pub mod name {
    pub const SPANS_EXPORTED: &str = "meshtap_otlp_spans_exported";
    pub const SPANS_DROPPED: &str = "meshtap_otlp_spans_dropped";
    pub const SPANS_PENDING: &str = "meshtap_otlp_spans_pending";
}
