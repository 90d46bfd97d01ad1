//! Delivery of spans to an OTLP/HTTP receiver: protobuf `ExportTraceServiceRequest`s POSTed to
//! `/v1/traces` (`Content-Type: application/x-protobuf`, gzip by default) by the delivery task
//! every span sink shares (`export::delivery`: bounded queue, batches by size and time,
//! timeouts, capped jittered backoff honouring `Retry-After`).
//!
//! Every span offered ends up counted exactly once: in `meshtap_otlp_spans_exported_total` when
//! the receiver accepted it, or in `meshtap_otlp_spans_dropped_total{reason}`:
//! - `queue_full`: the queue was at its bound (receiver slow, dead or retrying);
//! - `rejected`: an answer not worth a retry (a 4xx but 429, a 501 or 505), or a 2xx whose
//!   partial success refuses some spans;
//! - `retries_exhausted`: connection errors, timeouts, 429 or other 5xx for longer than the
//!   retry budget;
//! - `shutdown`: still queued or in flight when [`OtlpSink::flush_and_stop`]'s deadline passed,
//!   or offered after it was called;
//! - `invalid`: never, in practice (encoding a batch cannot fail).
//!
//! Until then a span is pending (`meshtap_otlp_spans_pending`).
//! <https://opentelemetry.io/docs/specs/otlp/#otlphttp>

use std::time::Duration;

use axum::http::StatusCode;

use super::{config::OtlpConfig, model, name};
use crate::{
    export::delivery::{DropReason, EndpointError, MetricNames, Sink, SinkMetrics, Wire},
    trace::{SpanExporter, span::Span},
};

/// OTLP/HTTP with protobuf bodies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Otlp;

impl Wire for Otlp {
    /// Spans are queued as they are and converted per batch, on the delivery task.
    type Item = Span;
    const NAME: &'static str = "otlp";
    const DEFAULT_PATH: &'static str = "/v1/traces";
    const CONTENT_TYPE: &'static str = "application/x-protobuf";
    const METRICS: MetricNames = MetricNames {
        exported: name::SPANS_EXPORTED,
        exported_help: "Spans an OTLP receiver accepted",
        dropped: name::SPANS_DROPPED,
        dropped_help: "Spans not exported over OTLP, by reason (invalid, queue_full, rejected, retries_exhausted, shutdown)",
        pending: name::SPANS_PENDING,
        pending_help: "Spans queued for or being sent to the OTLP receiver",
    };

    /// The retryable statuses of the OTLP/HTTP specification ("Retryable Response Codes": 429,
    /// 502, 503, 504), and any other server error but those that say the request itself can
    /// never succeed (501, 505): a receiver that answers 500 while it restarts or sheds load
    /// would otherwise lose the batch.
    fn retryable(status: StatusCode) -> bool {
        let code = status.as_u16();
        code == 429 || ((500..600).contains(&code) && code != 501 && code != 505)
    }

    fn encode(spans: &[Span]) -> Result<Vec<u8>, std::io::Error> {
        Ok(model::encode(spans))
    }

    fn refused_in(body: &[u8], _n: usize) -> usize {
        model::refused_spans(body)
    }
}

/// The exporter's counters. Create one, [`register`](SinkMetrics::register) it, hand it to
/// [`OtlpSink::start`].
pub type OtlpMetrics = SinkMetrics<Otlp>;

/// A handle on the delivery task; cheap to clone. Dropping every handle lets the task send
/// what is queued (with the usual retries) and end.
#[derive(Clone)]
pub struct OtlpSink {
    sink: Sink<Otlp>,
}

impl OtlpSink {
    /// Starts the delivery task on the current tokio runtime. Fails only on a bad endpoint.
    pub fn start(config: &OtlpConfig, metrics: &OtlpMetrics) -> Result<Self, EndpointError> {
        let sink = Sink::start(&config.endpoint, config.delivery.clone(), metrics)?;
        Ok(OtlpSink { sink })
    }

    /// Queues `span`; never blocks nor waits. On `Err` it was dropped and counted.
    pub fn offer(&self, span: Span) -> Result<(), DropReason> {
        self.sink.offer(span)
    }

    /// Stops accepting spans and tries to deliver what is queued until `timeout` has passed;
    /// whatever is left then is counted as dropped (`shutdown`).
    pub async fn flush_and_stop(&self, timeout: Duration) {
        self.sink.flush_and_stop(timeout).await;
    }
}

impl SpanExporter for OtlpSink {
    fn name(&self) -> &'static str {
        Otlp::NAME
    }

    fn export(&mut self, spans: &[Span]) {
        for span in spans {
            // A refused span is counted by the sink (meshtap_otlp_spans_dropped_total).
            let _ = self.offer(span.clone());
        }
    }
}

#[cfg(test)]
#[path = "sink_tests.rs"]
mod tests;
