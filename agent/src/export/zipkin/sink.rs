//! Delivery of spans to a Zipkin collector: a bounded queue filled without ever blocking, and
//! one task that batches (by size and by time), optionally gzips, and POSTs JSON arrays to
//! `/api/v2/spans`, retrying with capped, jittered exponential backoff.
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
//! While a batch is retried nothing else is sent, so the queue fills up to its bound and then
//! drops: memory stays bounded whatever the collector does.

use std::{
    hash::{BuildHasher, Hasher},
    io::Write as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::http::{HeaderValue, Request, StatusCode, Uri, header};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};

use super::{model::Span, name};

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
        SinkConfig {
            endpoint: "http://127.0.0.1:9411/api/v2/spans".to_string(),
            queue_spans: 10_000,
            batch_spans: 500,
            flush_interval: Duration::from_secs(1),
            gzip: true,
            request_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            max_retries: 8,
            max_retry_time: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("invalid zipkin endpoint {url:?}: {source}")]
    Uri {
        url: String,
        #[source]
        source: axum::http::uri::InvalidUri,
    },
    #[error("invalid zipkin endpoint {url:?}: {reason}")]
    Endpoint { url: String, reason: &'static str },
}

/// Why a span was not exported; also the `reason` label of `meshtap_spans_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    #[error("the span breaks the zipkin spec")]
    Invalid = 0,
    #[error("the span queue is full")]
    QueueFull = 1,
    #[error("the collector rejected the batch")]
    Rejected = 2,
    #[error("the collector could not be reached in the retry budget")]
    RetriesExhausted = 3,
    #[error("the sink is shutting down")]
    Shutdown = 4,
}

impl DropReason {
    /// Indexed by discriminant.
    pub const ALL: [DropReason; 5] = [
        DropReason::Invalid,
        DropReason::QueueFull,
        DropReason::Rejected,
        DropReason::RetriesExhausted,
        DropReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Invalid => "invalid",
            DropReason::QueueFull => "queue_full",
            DropReason::Rejected => "rejected",
            DropReason::RetriesExhausted => "retries_exhausted",
            DropReason::Shutdown => "shutdown",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// The sink's counters. Create one, [`register`](Self::register) it, hand it to
/// [`ZipkinSink::start`].
#[derive(Clone, Default)]
pub struct ZipkinMetrics {
    pub exported: Counter,
    pub dropped: Family<ReasonLabels, Counter>,
    /// Spans offered and not yet exported or dropped (queued or in flight).
    pub pending: Gauge,
}

impl ZipkinMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            name::SPANS_EXPORTED,
            "Spans a Zipkin collector accepted",
            self.exported.clone(),
        );
        registry.register(
            name::SPANS_DROPPED,
            "Spans not exported, by reason (invalid, queue_full, rejected, retries_exhausted, shutdown)",
            self.dropped.clone(),
        );
        registry.register(
            name::SPANS_PENDING,
            "Spans queued for or being sent to the Zipkin collector",
            self.pending.clone(),
        );
    }

    /// The counter of one reason, created at once so that every reason shows as 0 from the
    /// start and the hot path never touches the family's lock.
    fn counter(&self, reason: DropReason) -> Counter {
        self.dropped.get_or_create_owned(&ReasonLabels {
            reason: reason.as_str().to_string(),
        })
    }
}

/// Counters resolved once.
#[derive(Clone)]
struct Counters {
    exported: Counter,
    dropped: [Counter; DropReason::ALL.len()],
    pending: Gauge,
}

impl Counters {
    fn new(metrics: &ZipkinMetrics) -> Self {
        Counters {
            exported: metrics.exported.clone(),
            dropped: DropReason::ALL.map(|r| metrics.counter(r)),
            pending: metrics.pending.clone(),
        }
    }

    fn count_drop(&self, reason: DropReason, n: usize) {
        self.dropped[reason as usize].inc_by(n as u64);
    }
}

struct Shared {
    tx: mpsc::Sender<Span>,
    counters: Counters,
    /// `Some(deadline)` once `flush_and_stop` was called.
    stop: watch::Sender<Option<Instant>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A handle on the delivery task; cheap to clone. Dropping every handle lets the task send
/// what is queued (with the usual retries) and end.
#[derive(Clone)]
pub struct ZipkinSink {
    shared: Arc<Shared>,
}

impl ZipkinSink {
    /// Starts the delivery task on the current tokio runtime. Fails only on a bad endpoint.
    pub fn start(config: SinkConfig, metrics: &ZipkinMetrics) -> Result<Self, SinkError> {
        let target = Target::parse(&config.endpoint)?;
        let (tx, rx) = mpsc::channel(config.queue_spans.max(1));
        let (stop, stop_rx) = watch::channel(None);
        let shared = Arc::new(Shared {
            tx,
            counters: Counters::new(metrics),
            stop,
            task: Mutex::new(None),
        });
        let task = Delivery {
            config,
            client: Client::new(target),
            counters: shared.counters.clone(),
            stop: stop_rx,
        };
        let handle = tokio::spawn(task.run(rx));
        *shared.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(ZipkinSink { shared })
    }

    /// Queues `span` for delivery; never blocks nor waits. The span is normalized first
    /// ([`Span::normalize`]). On `Err` the span was dropped and counted.
    pub fn offer(&self, mut span: Span) -> Result<(), DropReason> {
        span.normalize();
        let result = if span.validate().is_err() {
            Err(DropReason::Invalid)
        } else {
            match self.shared.tx.try_send(span) {
                Ok(()) => {
                    // The task may have settled the span already: `pending` can dip below
                    // 0 for a moment, never for long.
                    self.shared.counters.pending.inc();
                    Ok(())
                }
                Err(mpsc::error::TrySendError::Full(_)) => Err(DropReason::QueueFull),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(DropReason::Shutdown),
            }
        };
        if let Err(reason) = result {
            self.shared.counters.count_drop(reason, 1);
        }
        result
    }

    /// Stops accepting spans and tries to deliver what is queued until `timeout` has passed
    /// (batches are sent at once; retries go on within the deadline); whatever is left then is
    /// counted as dropped (`shutdown`). Returns when the task has ended. Calling it again, or
    /// from another handle, returns at once.
    pub async fn flush_and_stop(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        self.shared.stop.send_if_modified(|d| {
            if d.is_none() {
                *d = Some(deadline);
                true
            } else {
                false
            }
        });
        let handle = self
            .shared
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(mut handle) = handle else { return };
        // The task honours the deadline itself; the grace covers a resolver stuck in
        // getaddrinfo, which no timeout can interrupt.
        let grace = Duration::from_secs(1);
        if tokio::time::timeout_at(deadline + grace, &mut handle)
            .await
            .is_err()
        {
            handle.abort();
            let _ = handle.await;
            // Nothing changes the number any more: the task is gone and the queue's receiver
            // with it (offers now fail as closed).
            let left = self.shared.counters.pending.set(0).max(0) as usize;
            self.shared.counters.count_drop(DropReason::Shutdown, left);
            log::warn!("zipkin sink did not stop in time: {left} spans dropped");
        }
    }
}

/// Where the spans go.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    /// For `connect`: a name or an address, without IPv6 brackets.
    host: String,
    port: u16,
    /// The `Host` header.
    authority: HeaderValue,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, SinkError> {
        let bad = |reason| SinkError::Endpoint {
            url: url.to_string(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|source| SinkError::Uri {
            url: url.to_string(),
            source,
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(bad("https is not supported; use http")),
            _ => return Err(bad("it must start with http://")),
        }
        let authority = uri.authority().ok_or_else(|| bad("it has no host"))?;
        let host = authority.host();
        if host.is_empty() {
            return Err(bad("it has no host"));
        }
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the url are not supported"));
        }
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("" | "/") => "/api/v2/spans".to_string(),
            Some(p) => p.to_string(),
        };
        Ok(Target {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: uri.port_u16().unwrap_or(80),
            authority: HeaderValue::from_str(authority.as_str())
                .map_err(|_| bad("its host is not a valid header value"))?,
            path,
        })
    }
}

#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("http: {0}")]
    Http(#[source] hyper::Error),
    #[error("cannot build the request: {0}")]
    Request(#[source] axum::http::Error),
    #[error("no answer within the request timeout")]
    Timeout,
}

/// What a collector answered.
struct Answer {
    status: StatusCode,
    retry_after: Option<Duration>,
}

/// One HTTP/1.1 connection to the collector, kept alive between batches and opened again when
/// it breaks.
struct Client {
    target: Target,
    conn: Option<SendRequest<Full<Bytes>>>,
}

/// Response bodies are read (so that the connection can be reused) up to this much.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

impl Client {
    fn new(target: Target) -> Self {
        Client { target, conn: None }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, PostError> {
        let stream = tokio::net::TcpStream::connect((self.target.host.as_str(), self.target.port))
            .await
            .map_err(PostError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(PostError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!("zipkin collector connection ended: {e}");
            }
        });
        Ok(sender)
    }

    /// One POST within `timeout`. A kept-alive connection that turns out closed is replaced
    /// once at no cost to the retry budget: idle collectors close connections.
    async fn post(
        &mut self,
        body: Bytes,
        gzip: bool,
        timeout: Duration,
    ) -> Result<Answer, PostError> {
        tokio::time::timeout(timeout, async {
            let reused = self.conn.is_some();
            match self.post_once(body.clone(), gzip).await {
                Err(PostError::Http(e)) if reused && !e.is_timeout() => {
                    log::debug!("zipkin collector connection broke ({e}); reconnecting");
                    self.post_once(body, gzip).await
                }
                r => r,
            }
        })
        .await
        .map_err(|_| PostError::Timeout)?
    }

    async fn post_once(&mut self, body: Bytes, gzip: bool) -> Result<Answer, PostError> {
        // Taken out: if anything fails or the future is dropped on timeout, the connection goes.
        let mut sender = match self.conn.take() {
            Some(s) => s,
            None => self.connect().await?,
        };
        if sender.ready().await.is_err() {
            sender = self.connect().await?;
        }
        let mut request = Request::post(self.target.path.as_str())
            .header(header::HOST, self.target.authority.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("meshtap/", env!("CARGO_PKG_VERSION")),
            );
        if gzip {
            request = request.header(header::CONTENT_ENCODING, "gzip");
        }
        let request = request.body(Full::new(body)).map_err(PostError::Request)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(PostError::Http)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BODY)
            .collect()
            .await;
        match body {
            Ok(body) => {
                if !status.is_success() {
                    let text = body.to_bytes();
                    let text = String::from_utf8_lossy(&text[..text.len().min(200)]);
                    log::debug!("zipkin collector answered {status}: {}", text.trim());
                }
                self.conn = Some(sender);
            }
            Err(e) => log::debug!("zipkin collector response body unreadable: {e}"),
        }
        Ok(Answer {
            status,
            retry_after,
        })
    }
}

/// What to do after an answer.
enum Verdict {
    Exported,
    Retry(Option<Duration>),
    Rejected,
}

fn verdict(answer: Result<Answer, PostError>) -> (Verdict, String) {
    match answer {
        Ok(a) if a.status.is_success() => (Verdict::Exported, String::new()),
        Ok(a)
            if a.status.is_server_error()
                || a.status == StatusCode::TOO_MANY_REQUESTS
                || a.status == StatusCode::REQUEST_TIMEOUT =>
        {
            (
                Verdict::Retry(a.retry_after),
                format!("status {}", a.status),
            )
        }
        Ok(a) => (Verdict::Rejected, format!("status {}", a.status)),
        Err(e) => (Verdict::Retry(None), e.to_string()),
    }
}

/// The wait before retry number `retry` (1-based): `initial * 2^(retry-1)` capped at `max`,
/// then "equal jitter" (a uniform value in its upper half) so that agents restarted together
/// do not retry in lockstep. `random` is any uniformly distributed number.
fn backoff(initial: Duration, max: Duration, retry: u32, random: u64) -> Duration {
    let factor = 1u32 << retry.saturating_sub(1).min(20);
    let full = initial.saturating_mul(factor).min(max);
    let half = full / 2;
    let spread = u64::try_from(full.saturating_sub(half).as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(random % spread.saturating_add(1))
}

fn random_u64() -> u64 {
    // RandomState is seeded from the OS once per process and perturbed per instance: enough
    // for jitter, and no dependency.
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// Resolves when the watched value changes; never, once no handle is left to change it.
async fn stop_changed(stop: &mut watch::Receiver<Option<Instant>>) {
    if stop.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

struct Delivery {
    config: SinkConfig,
    client: Client,
    counters: Counters,
    stop: watch::Receiver<Option<Instant>>,
}

impl Delivery {
    fn deadline(&self) -> Option<Instant> {
        *self.stop.borrow()
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Span>) {
        let max = self.config.batch_spans.max(1);
        let mut batch = Vec::with_capacity(max);
        'running: while self.deadline().is_none() {
            tokio::select! {
                n = rx.recv_many(&mut batch, max) => {
                    if n == 0 {
                        break 'running; // every handle dropped, queue empty
                    }
                }
                () = stop_changed(&mut self.stop) => break 'running,
            }
            let flush_at = Instant::now() + self.config.flush_interval;
            while batch.len() < max && self.deadline().is_none() {
                let room = max - batch.len();
                tokio::select! {
                    n = rx.recv_many(&mut batch, room) => {
                        if n == 0 {
                            break;
                        }
                    }
                    () = tokio::time::sleep_until(flush_at) => break,
                    () = stop_changed(&mut self.stop) => break,
                }
            }
            self.deliver(&mut batch).await;
        }
        // Draining: no new spans; what is queued goes out at once, within the deadline.
        rx.close();
        loop {
            if !batch.is_empty() {
                self.deliver(&mut batch).await;
            }
            let n = rx.recv_many(&mut batch, max).await;
            if n == 0 {
                break;
            }
        }
    }

    fn settle(&self, batch: &mut Vec<Span>, outcome: Result<(), DropReason>) {
        let n = batch.len();
        match outcome {
            Ok(()) => {
                self.counters.exported.inc_by(n as u64);
            }
            Err(reason) => self.counters.count_drop(reason, n),
        }
        self.counters.pending.dec_by(n as i64);
        batch.clear();
    }

    /// Sends `batch` until it is accepted, rejected, out of retries or past the stop deadline;
    /// counts it, and leaves it empty.
    async fn deliver(&mut self, batch: &mut Vec<Span>) {
        let n = batch.len();
        let body = match encode(batch, self.config.gzip) {
            Ok(body) => body,
            Err(e) => {
                log::warn!("cannot encode {n} spans: {e}");
                return self.settle(batch, Err(DropReason::Invalid));
            }
        };
        let first = Instant::now();
        let mut retries = 0u32;
        loop {
            let deadline = self.deadline();
            let now = Instant::now();
            let mut timeout = self.config.request_timeout;
            if let Some(d) = deadline {
                if now >= d {
                    return self.settle(batch, Err(DropReason::Shutdown));
                }
                timeout = timeout.min(d - now);
            }
            let answer = self
                .client
                .post(body.clone(), self.config.gzip, timeout)
                .await;
            let (verdict, what) = verdict(answer);
            let retry_after = match verdict {
                Verdict::Exported => return self.settle(batch, Ok(())),
                Verdict::Rejected => {
                    log::warn!("zipkin collector rejected {n} spans ({what}); not retrying");
                    return self.settle(batch, Err(DropReason::Rejected));
                }
                Verdict::Retry(after) => after,
            };
            retries += 1;
            let wait = backoff(
                self.config.backoff_initial,
                self.config.backoff_max,
                retries,
                random_u64(),
            )
            .max(retry_after.unwrap_or_default().min(self.config.backoff_max));
            if retries > self.config.max_retries
                || first.elapsed() + wait > self.config.max_retry_time
            {
                log::warn!(
                    "zipkin collector unavailable ({what}): {n} spans dropped after {} attempts",
                    retries
                );
                return self.settle(batch, Err(DropReason::RetriesExhausted));
            }
            log::debug!("zipkin post failed ({what}); retry {retries} in {wait:?}");
            let mut wake = Instant::now() + wait;
            if let Some(d) = deadline {
                wake = wake.min(d);
            }
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                // A stop shortens the wait to its deadline: loop to recompute it.
                () = stop_changed(&mut self.stop) => {}
            }
        }
    }
}

/// The JSON array, gzipped if asked.
fn encode(spans: &[Span], gzip: bool) -> Result<Bytes, std::io::Error> {
    let json = serde_json::to_vec(spans)?;
    if !gzip {
        return Ok(Bytes::from(json));
    }
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(json.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(&json)?;
    Ok(Bytes::from(encoder.finish()?))
}

#[cfg(test)]
#[path = "sink_tests.rs"]
mod tests;
