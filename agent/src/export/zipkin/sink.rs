//! Delivery of spans to a Zipkin collector: JSON arrays POSTed to `/api/v2/spans` by the
//! shared delivery task (`export::delivery`: a bounded queue filled without ever blocking,
//! batches by size and by time, gzip, capped and jittered exponential backoff).
//!
//! Every span offered ends up counted exactly once: in `meshtap_spans_exported_total` when a
//! collector accepted it (2xx), or in `meshtap_spans_dropped_total{reason}`:
//! - `invalid`: it breaks the spec even after [`Span::normalize`] (a bad id); sending it
//!   would make the collector reject the whole batch;
//! - `queue_full`: the queue was at its bound (collector slow, dead or retrying);
//! - `rejected`: the collector answered a 4xx other than 408 and 429: retrying cannot help;
//! - `retries_exhausted`: connection errors, timeouts, 5xx, 408 or 429 for longer than the
//!   retry budget (`max_retries` attempts or `max_retry_time`);
//! - `shutdown`: still queued or in flight when [`ZipkinSink::flush_and_stop`]'s deadline
//!   passed, or offered after it was called.
//!
//! Until then a span is pending: queued or in flight (`meshtap_spans_pending`).

use std::time::Duration;

use axum::http::StatusCode;

use super::{model::Span, name};
use crate::export::delivery::{self, DeliveryConfig, MetricNames, RetryBudget, Sink, Wire};
pub use crate::export::delivery::{DropReason, EndpointError as SinkError};

// What `sink_tests.rs` takes from here besides the sink itself.
#[cfg(test)]
use {
    crate::export::delivery::backoff, prometheus_client::registry::Registry, tokio::time::Instant,
};
#[cfg(test)]
type Target = delivery::Target<Zipkin>;

/// Sink settings. Defaults in [`SinkConfig::default`].
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// `http://host[:port][/path]`; an empty path means `/api/v2/spans`. No TLS.
    pub endpoint: String,
    /// Spans waiting to be sent, at most; beyond, offers are dropped (`queue_full`).
    pub queue_spans: usize,
    /// Spans in one POST, at most.
    pub batch_spans: usize,
    /// How long the first span of a batch waits for others before the batch is sent.
    pub flush_interval: Duration,
    /// Compress bodies (`Content-Encoding: gzip`).
    pub gzip: bool,
    /// Connect + send + response, for one attempt.
    pub request_timeout: Duration,
    /// Wait before the first retry; doubled on each further one, up to `backoff_max`, then
    /// jittered down by up to half.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Retries of one batch after its first attempt, at most.
    pub max_retries: u32,
    /// Time from a batch's first attempt after which it is not retried any more.
    pub max_retry_time: Duration,
}

impl Default for SinkConfig {
    fn default() -> Self {
        let d = DeliveryConfig::default();
        SinkConfig {
            endpoint: "http://127.0.0.1:9411/api/v2/spans".to_string(),
            queue_spans: d.queue_spans,
            batch_spans: d.batch_spans,
            flush_interval: d.flush_interval,
            gzip: d.gzip,
            request_timeout: d.request_timeout,
            backoff_initial: d.retry.backoff_initial,
            backoff_max: d.retry.backoff_max,
            max_retries: d.retry.max_retries,
            max_retry_time: d.retry.max_retry_time,
        }
    }
}

impl SinkConfig {
    fn delivery(&self) -> DeliveryConfig {
        DeliveryConfig {
            queue_spans: self.queue_spans,
            batch_spans: self.batch_spans,
            flush_interval: self.flush_interval,
            gzip: self.gzip,
            request_timeout: self.request_timeout,
            retry: RetryBudget {
                backoff_initial: self.backoff_initial,
                backoff_max: self.backoff_max,
                max_retries: self.max_retries,
                max_retry_time: self.max_retry_time,
            },
        }
    }
}

/// Zipkin v2 JSON (`ListOfSpans`) over HTTP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Zipkin;

impl Wire for Zipkin {
    type Item = Span;
    const NAME: &'static str = "zipkin";
    const DEFAULT_PATH: &'static str = "/api/v2/spans";
    const CONTENT_TYPE: &'static str = "application/json";
    const METRICS: MetricNames = MetricNames {
        exported: name::SPANS_EXPORTED,
        exported_help: "Spans a Zipkin collector accepted",
        dropped: name::SPANS_DROPPED,
        dropped_help: "Spans not exported, by reason (invalid, queue_full, rejected, retries_exhausted, shutdown)",
        pending: name::SPANS_PENDING,
        pending_help: "Spans queued for or being sent to the Zipkin collector",
    };

    /// 5xx, 429 and 408: the collector may take the batch later.
    fn retryable(status: StatusCode) -> bool {
        status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
    }

    fn encode(spans: &[Span]) -> Result<Vec<u8>, std::io::Error> {
        Ok(serde_json::to_vec(spans)?)
    }
}

/// The sink's counters. Create one, [`register`](delivery::SinkMetrics::register) it, hand it
/// to [`ZipkinSink::start`].
pub type ZipkinMetrics = delivery::SinkMetrics<Zipkin>;

/// A handle on the delivery task; cheap to clone. Dropping every handle lets the task send
/// what is queued (with the usual retries) and end.
#[derive(Clone)]
pub struct ZipkinSink {
    sink: Sink<Zipkin>,
}

impl ZipkinSink {
    /// Starts the delivery task on the current tokio runtime. Fails only on a bad endpoint.
    pub fn start(config: SinkConfig, metrics: &ZipkinMetrics) -> Result<Self, SinkError> {
        let sink = Sink::start(&config.endpoint, config.delivery(), metrics)?;
        Ok(ZipkinSink { sink })
    }

    /// Queues `span` for delivery; never blocks nor waits. The span is normalized first
    /// ([`Span::normalize`]). On `Err` the span was dropped and counted.
    pub fn offer(&self, mut span: Span) -> Result<(), DropReason> {
        span.normalize();
        if span.validate().is_err() {
            return Err(self.sink.refuse(DropReason::Invalid));
        }
        self.sink.offer(span)
    }

    /// Stops accepting spans and tries to deliver what is queued until `timeout` has passed;
    /// whatever is left then is counted as dropped (`shutdown`). See [`Sink::flush_and_stop`].
    pub async fn flush_and_stop(&self, timeout: Duration) {
        self.sink.flush_and_stop(timeout).await;
    }
}

#[cfg(test)]
#[path = "sink_tests.rs"]
mod tests;
