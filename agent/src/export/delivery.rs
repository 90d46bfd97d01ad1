//! What every span sink that POSTs to a collector shares (`zipkin::sink`, `otlp::sink`): a
//! bounded queue filled without ever blocking, and one task that batches (by size and by time),
//! encodes, optionally gzips and POSTs, over one kept-alive HTTP/1.1 connection, retrying with
//! capped, jittered exponential backoff. A sink differs from another only in its [`Wire`]:
//! what it queues, how a batch is encoded, which answers are worth a retry.
//!
//! Every span offered ends up counted exactly once: as exported when a collector accepted it
//! (2xx), or as dropped with a [`DropReason`]. Until then it is pending: queued or in flight.
//! While a batch is retried nothing else is sent, so the queue fills up to its bound and then
//! drops: memory stays bounded whatever the collector does.

use std::{
    hash::{BuildHasher, Hasher},
    io::Write as _,
    marker::PhantomData,
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

/// One exporter's wire format and HTTP conventions, implemented by a zero-sized marker type.
pub trait Wire: Send + Sync + 'static {
    /// What is queued: one span, in the form the encoder takes.
    type Item: Send + 'static;
    /// Lowercase, for logs and errors (`zipkin`, `otlp`).
    const NAME: &'static str;
    /// The path POSTed to when the endpoint URL has none.
    const DEFAULT_PATH: &'static str;
    const CONTENT_TYPE: &'static str;
    /// The sink's self-metrics.
    const METRICS: MetricNames;

    /// Whether a non-2xx answer with this status is worth retrying (else the batch is
    /// dropped as `rejected`).
    fn retryable(status: StatusCode) -> bool;

    /// The request body for `items`, before compression.
    fn encode(items: &[Self::Item]) -> Result<Vec<u8>, std::io::Error>;

    /// How many of the `n` spans of a batch answered with a 2xx the collector says it refused
    /// all the same (OTLP's partial success), read from the response body.
    fn refused_in(_body: &[u8], _n: usize) -> usize {
        0
    }
}

/// Names and help texts of a sink's metrics (counter names without the `_total` suffix
/// prometheus-client appends).
pub struct MetricNames {
    pub exported: &'static str,
    pub exported_help: &'static str,
    pub dropped: &'static str,
    pub dropped_help: &'static str,
    pub pending: &'static str,
    pub pending_help: &'static str,
}

/// How a sink batches, sends and retries; each exporter's config section converts into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryConfig {
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
    pub retry: RetryBudget,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            queue_spans: 10_000,
            batch_spans: 500,
            flush_interval: Duration::from_secs(1),
            gzip: true,
            request_timeout: Duration::from_secs(10),
            retry: RetryBudget::default(),
        }
    }
}

/// How long one batch is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryBudget {
    /// Wait before the first retry; doubled on each further one, up to `backoff_max`, then
    /// jittered down by up to half. A `Retry-After` (seconds) up to `backoff_max` is honoured.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Retries of one batch after its first attempt, at most.
    pub max_retries: u32,
    /// Time from a batch's first attempt after which it is not retried any more.
    pub max_retry_time: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            max_retries: 8,
            max_retry_time: Duration::from_secs(60),
        }
    }
}

/// A collector URL that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid {exporter} endpoint {url:?}: {source}")]
    Uri {
        exporter: &'static str,
        url: String,
        #[source]
        source: axum::http::uri::InvalidUri,
    },
    #[error("invalid {exporter} endpoint {url:?}: {reason}")]
    Endpoint {
        exporter: &'static str,
        url: String,
        reason: &'static str,
    },
}

/// Why a span was not exported; also the `reason` label of the sink's dropped counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    /// It breaks the exporter's format (a bad id), or its batch could not be encoded: sending
    /// it would make the collector reject the whole batch.
    #[error("the span cannot be encoded for the collector")]
    Invalid = 0,
    /// The queue was at its bound (collector slow, dead or retrying).
    #[error("the span queue is full")]
    QueueFull = 1,
    /// The collector answered a status that retrying cannot help (see [`Wire::retryable`]),
    /// or accepted the batch but refused the span (OTLP partial success).
    #[error("the collector rejected the batch")]
    Rejected = 2,
    /// Connection errors, timeouts or retryable answers for longer than the retry budget.
    #[error("the collector could not be reached in the retry budget")]
    RetriesExhausted = 3,
    /// Still queued or in flight when `flush_and_stop`'s deadline passed, or offered after it
    /// was called.
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

/// A sink's counters, named by its [`Wire`]. Create one, [`register`](Self::register) it, hand
/// it to the sink's `start`.
pub struct SinkMetrics<W> {
    pub exported: Counter,
    pub dropped: Family<ReasonLabels, Counter>,
    /// Spans offered and not yet exported or dropped (queued or in flight).
    pub pending: Gauge,
    wire: PhantomData<fn() -> W>,
}

impl<W> Default for SinkMetrics<W> {
    fn default() -> Self {
        SinkMetrics {
            exported: Counter::default(),
            dropped: Family::default(),
            pending: Gauge::default(),
            wire: PhantomData,
        }
    }
}

impl<W> Clone for SinkMetrics<W> {
    fn clone(&self) -> Self {
        SinkMetrics {
            exported: self.exported.clone(),
            dropped: self.dropped.clone(),
            pending: self.pending.clone(),
            wire: PhantomData,
        }
    }
}

impl<W: Wire> SinkMetrics<W> {
    pub fn register(&self, registry: &mut Registry) {
        let names = &W::METRICS;
        registry.register(names.exported, names.exported_help, self.exported.clone());
        registry.register(names.dropped, names.dropped_help, self.dropped.clone());
        registry.register(names.pending, names.pending_help, self.pending.clone());
    }

    /// The counter of one reason, created at once so that every reason shows as 0 from the
    /// start and the hot path never touches the family's lock.
    pub(crate) fn counter(&self, reason: DropReason) -> Counter {
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
    fn new<W: Wire>(metrics: &SinkMetrics<W>) -> Self {
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

struct Shared<W: Wire> {
    tx: mpsc::Sender<W::Item>,
    counters: Counters,
    /// `Some(deadline)` once `flush_and_stop` was called.
    stop: watch::Sender<Option<Instant>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A handle on the delivery task; cheap to clone. Dropping every handle lets the task send
/// what is queued (with the usual retries) and end.
pub struct Sink<W: Wire> {
    shared: Arc<Shared<W>>,
}

impl<W: Wire> Clone for Sink<W> {
    fn clone(&self) -> Self {
        Sink {
            shared: self.shared.clone(),
        }
    }
}

impl<W: Wire> Sink<W> {
    /// Starts the delivery task on the current tokio runtime. Fails only on a bad endpoint.
    pub fn start(
        endpoint: &str,
        config: DeliveryConfig,
        metrics: &SinkMetrics<W>,
    ) -> Result<Self, EndpointError> {
        let target = Target::<W>::parse(endpoint)?;
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
        Ok(Sink { shared })
    }

    /// Queues `item` for delivery; never blocks nor waits. On `Err` it was dropped and
    /// counted.
    pub fn offer(&self, item: W::Item) -> Result<(), DropReason> {
        match self.shared.tx.try_send(item) {
            Ok(()) => {
                // The task may have settled the span already: `pending` can dip below 0 for a
                // moment, never for long.
                self.shared.counters.pending.inc();
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(self.refuse(DropReason::QueueFull)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(self.refuse(DropReason::Shutdown)),
        }
    }

    /// Counts a span dropped before it was queued (e.g. one that breaks the format); returns
    /// `reason`.
    pub fn refuse(&self, reason: DropReason) -> DropReason {
        self.shared.counters.count_drop(reason, 1);
        reason
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
            log::warn!(
                "{} sink did not stop in time: {left} spans dropped",
                W::NAME
            );
        }
    }
}

/// Where the spans go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target<W> {
    /// For `connect`: a name or an address, without IPv6 brackets.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The `Host` header.
    pub(crate) authority: HeaderValue,
    /// The endpoint's path and query, or [`Wire::DEFAULT_PATH`] when it has none.
    pub(crate) path: String,
    wire: PhantomData<fn() -> W>,
}

impl<W: Wire> Target<W> {
    /// `http://host[:port][/path]`. No TLS, no credentials.
    pub fn parse(url: &str) -> Result<Self, EndpointError> {
        let bad = |reason| EndpointError::Endpoint {
            exporter: W::NAME,
            url: url.to_string(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|source| EndpointError::Uri {
            exporter: W::NAME,
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
            None | Some("" | "/") => W::DEFAULT_PATH.to_string(),
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
            wire: PhantomData,
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
    /// As much of the body as was read (see [`MAX_RESPONSE_BODY`]).
    body: Bytes,
}

/// One HTTP/1.1 connection to the collector, kept alive between batches and opened again when
/// it breaks.
struct Client<W> {
    target: Target<W>,
    conn: Option<SendRequest<Full<Bytes>>>,
}

/// Response bodies are read (so that the connection can be reused) up to this much.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

impl<W: Wire> Client<W> {
    fn new(target: Target<W>) -> Self {
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
                log::debug!("{} collector connection ended: {e}", W::NAME);
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
                    log::debug!("{} collector connection broke ({e}); reconnecting", W::NAME);
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
            .header(header::CONTENT_TYPE, W::CONTENT_TYPE)
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
        let body = match body {
            Ok(body) => {
                let body = body.to_bytes();
                if !status.is_success() {
                    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
                    log::debug!("{} collector answered {status}: {}", W::NAME, text.trim());
                }
                self.conn = Some(sender);
                body
            }
            Err(e) => {
                log::debug!("{} collector response body unreadable: {e}", W::NAME);
                Bytes::new()
            }
        };
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }
}

/// What to do after an answer.
enum Verdict {
    /// Accepted; `refused` of the batch's spans were refused all the same.
    Exported {
        refused: usize,
    },
    Retry(Option<Duration>),
    Rejected,
}

fn verdict<W: Wire>(answer: Result<Answer, PostError>, n: usize) -> (Verdict, String) {
    match answer {
        Ok(a) if a.status.is_success() => {
            let refused = W::refused_in(&a.body, n).min(n);
            (Verdict::Exported { refused }, String::new())
        }
        Ok(a) if W::retryable(a.status) => (
            Verdict::Retry(a.retry_after),
            format!("status {}", a.status),
        ),
        Ok(a) => (Verdict::Rejected, format!("status {}", a.status)),
        Err(e) => (Verdict::Retry(None), e.to_string()),
    }
}

/// The wait before retry number `retry` (1-based): `initial * 2^(retry-1)` capped at `max`,
/// then "equal jitter" (a uniform value in its upper half) so that agents restarted together
/// do not retry in lockstep. `random` is any uniformly distributed number.
pub(crate) fn backoff(initial: Duration, max: Duration, retry: u32, random: u64) -> Duration {
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

struct Delivery<W: Wire> {
    config: DeliveryConfig,
    client: Client<W>,
    counters: Counters,
    stop: watch::Receiver<Option<Instant>>,
}

impl<W: Wire> Delivery<W> {
    fn deadline(&self) -> Option<Instant> {
        *self.stop.borrow()
    }

    async fn run(mut self, mut rx: mpsc::Receiver<W::Item>) {
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

    /// Counts the batch: `dropped` of its spans for a reason, the rest exported; empties it.
    fn settle(&self, batch: &mut Vec<W::Item>, dropped: Option<(DropReason, usize)>) {
        let n = batch.len();
        let lost = match dropped {
            Some((reason, k)) if k > 0 => {
                self.counters.count_drop(reason, k);
                k
            }
            _ => 0,
        };
        if n > lost {
            self.counters.exported.inc_by((n - lost) as u64);
        }
        self.counters.pending.dec_by(n as i64);
        batch.clear();
    }

    /// Sends `batch` until it is accepted, rejected, out of retries or past the stop deadline;
    /// counts it, and leaves it empty.
    async fn deliver(&mut self, batch: &mut Vec<W::Item>) {
        let n = batch.len();
        let body = match encode::<W>(batch, self.config.gzip) {
            Ok(body) => body,
            Err(e) => {
                log::warn!("cannot encode {n} spans for {}: {e}", W::NAME);
                return self.settle(batch, Some((DropReason::Invalid, n)));
            }
        };
        let retry = self.config.retry;
        let first = Instant::now();
        let mut retries = 0u32;
        loop {
            let deadline = self.deadline();
            let now = Instant::now();
            let mut timeout = self.config.request_timeout;
            if let Some(d) = deadline {
                if now >= d {
                    return self.settle(batch, Some((DropReason::Shutdown, n)));
                }
                timeout = timeout.min(d - now);
            }
            let answer = self
                .client
                .post(body.clone(), self.config.gzip, timeout)
                .await;
            let (verdict, what) = verdict::<W>(answer, n);
            let retry_after = match verdict {
                Verdict::Exported { refused } => {
                    if refused > 0 {
                        log::warn!(
                            "{} collector accepted a batch of {n} spans but refused {refused}",
                            W::NAME
                        );
                    }
                    return self.settle(batch, Some((DropReason::Rejected, refused)));
                }
                Verdict::Rejected => {
                    log::warn!(
                        "{} collector rejected {n} spans ({what}); not retrying",
                        W::NAME
                    );
                    return self.settle(batch, Some((DropReason::Rejected, n)));
                }
                Verdict::Retry(after) => after,
            };
            retries += 1;
            let wait = backoff(
                retry.backoff_initial,
                retry.backoff_max,
                retries,
                random_u64(),
            )
            .max(retry_after.unwrap_or_default().min(retry.backoff_max));
            if retries > retry.max_retries || first.elapsed() + wait > retry.max_retry_time {
                log::warn!(
                    "{} collector unavailable ({what}): {n} spans dropped after {retries} attempts",
                    W::NAME
                );
                return self.settle(batch, Some((DropReason::RetriesExhausted, n)));
            }
            log::debug!(
                "{} post failed ({what}); retry {retries} in {wait:?}",
                W::NAME
            );
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

/// The batch's body, gzipped if asked.
fn encode<W: Wire>(items: &[W::Item], gzip: bool) -> Result<Bytes, std::io::Error> {
    let raw = W::encode(items)?;
    if !gzip {
        return Ok(Bytes::from(raw));
    }
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(&raw)?;
    Ok(Bytes::from(encoder.finish()?))
}
