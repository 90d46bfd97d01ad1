//! The OTLP sink against an in-process receiver (axum on a loopback socket) that plays a script
//! of answers, then 200; it decodes every body (gzip, then protobuf) like a collector would.
//! Intervals are milliseconds so that the tests stay fast without a paused clock (which real
//! sockets do not follow).

use std::{
    collections::VecDeque,
    io::Read as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prometheus_client::registry::Registry;
use prost::Message as _;
use tokio::time::Instant;

use super::*;
use crate::export::{delivery::Target, otlp::model::tests::span};

/// One canned answer.
#[derive(Clone, Copy)]
struct Reply {
    status: u16,
    retry_after: Option<&'static str>,
    /// `partial_success.rejected_spans` of a 200.
    refused: i64,
}

const OK: Reply = Reply {
    status: 200,
    retry_after: None,
    refused: 0,
};

fn status(status: u16) -> Reply {
    Reply { status, ..OK }
}

/// A POST the receiver decoded.
struct Post {
    at: Instant,
    path: String,
    content_type: String,
    gzipped: bool,
    request: ExportTraceServiceRequest,
}

struct Receiver {
    /// Played in order, then `otherwise` for every further POST.
    script: Mutex<VecDeque<Reply>>,
    otherwise: Reply,
    posts: Mutex<Vec<Post>>,
}

impl Receiver {
    fn posts(&self) -> usize {
        self.posts.lock().unwrap().len()
    }

    /// The span ids of the POSTs answered 2xx, in order.
    fn accepted_ids(&self, accepted: impl Fn(usize) -> bool) -> Vec<u64> {
        let posts = self.posts.lock().unwrap();
        posts
            .iter()
            .enumerate()
            .filter(|(i, _)| accepted(*i))
            .flat_map(|(_, p)| p.request.resource_spans.iter())
            .flat_map(|rs| rs.scope_spans.iter())
            .flat_map(|ss| ss.spans.iter())
            .map(|s| u64::from_be_bytes(s.span_id.clone().try_into().unwrap()))
            .collect()
    }
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let gzipped = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v == "gzip");
    let mut raw = body.to_vec();
    if gzipped {
        raw.clear();
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut raw)
            .is_err()
        {
            return (StatusCode::BAD_REQUEST, "bad gzip").into_response();
        }
    }
    let Ok(request) = ExportTraceServiceRequest::decode(raw.as_slice()) else {
        return (StatusCode::BAD_REQUEST, "bad protobuf").into_response();
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    receiver.posts.lock().unwrap().push(Post {
        at: Instant::now(),
        path: uri.path().to_string(),
        content_type,
        gzipped,
        request,
    });
    let reply = receiver
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(receiver.otherwise);
    let mut response = if reply.status == 200 {
        let partial = (reply.refused > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: reply.refused,
            error_message: "refused as told".into(),
        });
        ExportTraceServiceResponse {
            partial_success: partial,
        }
        .encode_to_vec()
        .into_response()
    } else {
        StatusCode::from_u16(reply.status).unwrap().into_response()
    };
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap();
    if let Some(after) = reply.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, after.parse().unwrap());
    }
    response
}

async fn receiver(script: &[Reply], otherwise: Reply) -> (SocketAddr, Arc<Receiver>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = Arc::new(Receiver {
        script: Mutex::new(script.iter().copied().collect()),
        otherwise,
        posts: Mutex::new(Vec::new()),
    });
    let app = Router::new()
        .route("/v1/traces", post(receive))
        .route("/custom/traces", post(receive))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, receiver)
}

/// Batches of 10 within 20 ms, no gzip, retries within milliseconds.
fn fast(addr: SocketAddr) -> OtlpConfig {
    let mut config = OtlpConfig::new(format!("http://{addr}"));
    let d = &mut config.delivery;
    d.queue_spans = 1000;
    d.batch_spans = 10;
    d.flush_interval = Duration::from_millis(20);
    d.gzip = false;
    d.request_timeout = Duration::from_secs(2);
    d.retry.backoff_initial = Duration::from_millis(2);
    d.retry.backoff_max = Duration::from_millis(20);
    d.retry.max_retries = 5;
    d.retry.max_retry_time = Duration::from_secs(10);
    config
}

/// Offers spans `range`; how many were queued.
fn offer(sink: &OtlpSink, range: std::ops::Range<u64>) -> usize {
    range.filter(|i| sink.offer(span(*i)).is_ok()).count()
}

fn dropped(m: &OtlpMetrics, reason: DropReason) -> u64 {
    m.counter(reason).get()
}

/// Exported plus dropped for any reason.
fn settled(m: &OtlpMetrics) -> u64 {
    m.exported.get() + DropReason::ALL.iter().map(|r| dropped(m, *r)).sum::<u64>()
}

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < give_up, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn ids(range: std::ops::Range<u64>) -> Vec<u64> {
    range.map(|i| span(i).span_id).collect()
}

#[tokio::test]
async fn a_503_with_retry_after_then_200_loses_nothing() {
    let busy = Reply {
        retry_after: Some("0"),
        ..status(503)
    };
    let (addr, receiver) = receiver(&[busy, busy], OK).await;
    let metrics = OtlpMetrics::default();
    let sink = OtlpSink::start(&fast(addr), &metrics).unwrap();
    assert_eq!(offer(&sink, 0..25), 25);
    eventually("every span exported", || metrics.exported.get() == 25).await;
    sink.flush_and_stop(Duration::from_secs(2)).await;
    // The first batch twice refused, then taken; the two others at once.
    assert_eq!(receiver.posts(), 5);
    assert_eq!(receiver.accepted_ids(|i| i >= 2), ids(0..25));
    assert_eq!(settled(&metrics), 25);
    assert_eq!(metrics.pending.get(), 0);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let later = Reply {
        retry_after: Some("1"),
        ..status(503)
    };
    let (addr, receiver) = receiver(&[later], OK).await;
    let mut config = fast(addr);
    config.delivery.retry.backoff_max = Duration::from_secs(5);
    let metrics = OtlpMetrics::default();
    let sink = OtlpSink::start(&config, &metrics).unwrap();
    assert_eq!(offer(&sink, 0..3), 3);
    eventually("the retry", || receiver.posts() == 2).await;
    let waited = {
        let posts = receiver.posts.lock().unwrap();
        posts[1].at - posts[0].at
    };
    // Not before the receiver said: a lower bound, whatever the machine's load.
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    eventually("the export", || metrics.exported.get() == 3).await;
}

#[tokio::test]
async fn retries_429_server_errors_and_connection_errors_only() {
    for code in [429, 500, 502, 504] {
        let (addr, receiver) = receiver(&[status(code)], OK).await;
        let metrics = OtlpMetrics::default();
        let sink = OtlpSink::start(&fast(addr), &metrics).unwrap();
        assert_eq!(offer(&sink, 0..10), 10);
        eventually("the export", || metrics.exported.get() == 10).await;
        assert_eq!(receiver.posts(), 2, "{code}");
    }
    // Every other status is final: the request itself cannot succeed.
    for code in [400, 404, 413, 501, 505] {
        let (addr, receiver) = receiver(&[], status(code)).await;
        let metrics = OtlpMetrics::default();
        let sink = OtlpSink::start(&fast(addr), &metrics).unwrap();
        assert_eq!(offer(&sink, 0..15), 15);
        eventually("the rejections", || settled(&metrics) == 15).await;
        assert_eq!(dropped(&metrics, DropReason::Rejected), 15, "{code}");
        assert_eq!(receiver.posts(), 2, "{code}: one POST per batch, no retry");
        assert_eq!(metrics.exported.get(), 0);
    }
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let mut config = fast(closed);
    config.delivery.retry.max_retries = 2;
    let metrics = OtlpMetrics::default();
    let sink = OtlpSink::start(&config, &metrics).unwrap();
    assert_eq!(offer(&sink, 0..4), 4);
    eventually("the give-up", || settled(&metrics) == 4).await;
    assert_eq!(dropped(&metrics, DropReason::RetriesExhausted), 4);
}

/// A receiver that keeps answering 503: the queue fills to its bound and drops the rest, a stop
/// counts what is left, and every span is counted once.
#[tokio::test]
async fn queue_full_and_shutdown_account_for_every_span() {
    let (addr, receiver) = receiver(&[], status(503)).await;
    let mut config = fast(addr);
    config.delivery.queue_spans = 10;
    config.delivery.batch_spans = 5;
    config.delivery.retry.max_retries = u32::MAX;
    config.delivery.retry.max_retry_time = Duration::from_secs(3600);
    let metrics = OtlpMetrics::default();
    let sink = OtlpSink::start(&config, &metrics).unwrap();
    assert_eq!(offer(&sink, 0..5), 5);
    eventually("the first POST", || receiver.posts() >= 1).await;
    // The task is retrying its batch of 5 and takes nothing: 10 fit, 10 do not.
    assert_eq!(offer(&sink, 5..25), 10);
    assert_eq!(dropped(&metrics, DropReason::QueueFull), 10);
    assert_eq!(metrics.pending.get(), 15);
    sink.flush_and_stop(Duration::from_millis(100)).await;
    assert_eq!(dropped(&metrics, DropReason::Shutdown), 15);
    assert_eq!(metrics.pending.get(), 0);
    assert_eq!(settled(&metrics), 25);
    assert_eq!(sink.offer(span(99)), Err(DropReason::Shutdown));
}

#[tokio::test]
async fn gzipped_protobuf_to_v1_traces() {
    let (addr, receiver) = receiver(&[], OK).await;
    let mut config = fast(addr);
    config.delivery.gzip = true;
    let metrics = OtlpMetrics::default();
    let sink = OtlpSink::start(&config, &metrics).unwrap();
    assert_eq!(offer(&sink, 0..30), 30);
    sink.flush_and_stop(Duration::from_secs(2)).await;
    assert_eq!(metrics.exported.get(), 30);
    assert_eq!(receiver.accepted_ids(|_| true), ids(0..30));
    let posts = receiver.posts.lock().unwrap();
    assert_eq!(posts.len(), 3);
    for p in posts.iter() {
        assert!(p.gzipped);
        assert_eq!(p.path, "/v1/traces");
        assert_eq!(p.content_type, "application/x-protobuf");
        assert_eq!(p.request.resource_spans.len(), 1, "one process");
    }
}

#[tokio::test]
async fn plain_bodies_to_the_endpoints_own_path() {
    let (addr, receiver) = receiver(&[], OK).await;
    let mut config = fast(addr);
    config.endpoint = format!("http://{addr}/custom/traces");
    let metrics = OtlpMetrics::default();
    let sink = OtlpSink::start(&config, &metrics).unwrap();
    assert_eq!(offer(&sink, 0..3), 3);
    sink.flush_and_stop(Duration::from_secs(2)).await;
    let posts = receiver.posts.lock().unwrap();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].path, "/custom/traces");
    assert!(!posts[0].gzipped);
}

#[tokio::test]
async fn spans_refused_in_a_partial_success_are_rejected_drops() {
    let partial = Reply { refused: 2, ..OK };
    let (addr, _receiver) = receiver(&[partial], OK).await;
    let metrics = OtlpMetrics::default();
    let sink = OtlpSink::start(&fast(addr), &metrics).unwrap();
    assert_eq!(offer(&sink, 0..20), 20);
    sink.flush_and_stop(Duration::from_secs(2)).await;
    assert_eq!(metrics.exported.get(), 18);
    assert_eq!(dropped(&metrics, DropReason::Rejected), 2);
    assert_eq!(settled(&metrics), 20);
}

#[tokio::test]
async fn takes_spans_as_a_span_exporter() {
    let (addr, receiver) = receiver(&[], OK).await;
    let metrics = OtlpMetrics::default();
    let sink = OtlpSink::start(&fast(addr), &metrics).unwrap();
    let mut exporter: Box<dyn SpanExporter> = Box::new(sink.clone());
    assert_eq!(exporter.name(), "otlp");
    exporter.export(&(0..4).map(span).collect::<Vec<_>>());
    sink.flush_and_stop(Duration::from_secs(2)).await;
    assert_eq!(receiver.accepted_ids(|_| true), ids(0..4));
}

#[tokio::test]
async fn registers_its_metrics() {
    let metrics = OtlpMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    metrics.exported.inc_by(2);
    let _ = dropped(&metrics, DropReason::Rejected);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "meshtap_otlp_spans_exported_total 2\n",
        "meshtap_otlp_spans_pending 0\n",
        "meshtap_otlp_spans_dropped_total{reason=\"rejected\"} 0\n",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

#[test]
fn endpoint_paths() {
    let path = |url: &str| Target::<Otlp>::parse(url).unwrap().path;
    assert_eq!(path("http://otel-collector:4318"), "/v1/traces");
    assert_eq!(path("http://otel-collector:4318/"), "/v1/traces");
    assert_eq!(path("http://gw/otlp/v1/traces"), "/otlp/v1/traces");
    let t = Target::<Otlp>::parse("http://[::1]:4318").unwrap();
    assert_eq!((t.host.as_str(), t.port), ("::1", 4318));
    let err = Target::<Otlp>::parse("https://c:4318").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid otlp endpoint \"https://c:4318\": https is not supported; use http"
    );
}
