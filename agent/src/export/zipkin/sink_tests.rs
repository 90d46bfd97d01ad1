//! The sink against an in-process collector (axum on a loopback socket) that can fail, reject
//! or stall; intervals are milliseconds so that the tests stay fast without a paused clock
//! (which real sockets do not follow).

use std::{
    io::Read as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    routing::post,
};
use bytes::Bytes;

use super::*;
use crate::export::zipkin::model::{Endpoint, Kind, Span};

#[derive(Default)]
struct Behaviour {
    /// Answer `fail_status` to the first `fail_first` POSTs.
    fail_first: usize,
    fail_status: u16,
    /// Answer this to every POST.
    always: Option<u16>,
    delay: Duration,
}

#[derive(Default)]
struct Seen {
    posts: AtomicUsize,
    gzipped: AtomicUsize,
    batches: Mutex<Vec<Vec<Span>>>,
}

impl Seen {
    fn spans(&self) -> Vec<Span> {
        self.batches
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    fn sizes(&self) -> Vec<usize> {
        self.batches.lock().unwrap().iter().map(Vec::len).collect()
    }
}

type Shared = (Arc<Behaviour>, Arc<Seen>);

async fn collect(
    State((behaviour, seen)): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let n = seen.posts.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(behaviour.delay).await;
    let mut json = body.to_vec();
    if headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v == "gzip")
    {
        seen.gzipped.fetch_add(1, Ordering::SeqCst);
        json.clear();
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut json)
            .is_err()
        {
            return StatusCode::BAD_REQUEST;
        }
    }
    let Ok(spans) = serde_json::from_slice::<Vec<Span>>(&json) else {
        return StatusCode::BAD_REQUEST;
    };
    if let Some(status) = behaviour.always {
        return StatusCode::from_u16(status).unwrap();
    }
    if n < behaviour.fail_first {
        return StatusCode::from_u16(behaviour.fail_status).unwrap();
    }
    seen.batches.lock().unwrap().push(spans);
    StatusCode::ACCEPTED
}

async fn collector(behaviour: Behaviour) -> (SocketAddr, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/api/v2/spans", post(collect))
        .with_state((Arc::new(behaviour), seen.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

fn config(addr: SocketAddr) -> SinkConfig {
    SinkConfig {
        endpoint: format!("http://{addr}/api/v2/spans"),
        queue_spans: 1000,
        batch_spans: 10,
        flush_interval: Duration::from_millis(20),
        gzip: false,
        request_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(2),
        backoff_max: Duration::from_millis(20),
        max_retries: 5,
        max_retry_time: Duration::from_secs(10),
    }
}

fn span(i: u64) -> Span {
    Span {
        trace_id: format!(
            "{:032x}",
            0xabc0_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(i)
        ),
        id: format!("{:016x}", i + 1),
        kind: Some(Kind::Server),
        name: "get /api/users/{id}".into(),
        timestamp: 1_700_000_000_000_000 + i,
        duration: 100 + i,
        local_endpoint: Some(Endpoint::new(
            Some("backend"),
            Some("10.0.0.1:8080".parse().unwrap()),
        )),
        remote_endpoint: Some(Endpoint::new(None, Some("10.0.0.2:40000".parse().unwrap()))),
        ..Span::default()
    }
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

trait Dropped {
    fn dropped(&self, reason: DropReason) -> u64;
}

impl Dropped for ZipkinMetrics {
    fn dropped(&self, reason: DropReason) -> u64 {
        self.counter(reason).get()
    }
}

fn pending(m: &ZipkinMetrics) -> u64 {
    u64::try_from(m.pending.get()).unwrap()
}

fn accounted(m: &ZipkinMetrics) -> u64 {
    m.exported.get() + DropReason::ALL.iter().map(|r| m.dropped(*r)).sum::<u64>()
}

fn offer_all(sink: &ZipkinSink, range: std::ops::Range<u64>) -> usize {
    range.filter(|i| sink.offer(span(*i)).is_ok()).count()
}

#[tokio::test]
async fn batches_by_size_then_flushes_the_rest_on_stop() {
    let (addr, seen) = collector(Behaviour::default()).await;
    let metrics = ZipkinMetrics::default();
    let sink = ZipkinSink::start(
        SinkConfig {
            flush_interval: Duration::from_secs(60),
            ..config(addr)
        },
        &metrics,
    )
    .unwrap();
    assert_eq!(offer_all(&sink, 0..25), 25);
    wait_until("two full batches", || metrics.exported.get() == 20).await;
    assert_eq!(pending(&metrics), 5);
    sink.flush_and_stop(Duration::from_secs(2)).await;
    assert_eq!(seen.sizes(), [10, 10, 5]);
    assert_eq!(metrics.exported.get(), 25);
    assert_eq!(accounted(&metrics), 25);
    assert_eq!(pending(&metrics), 0);
    // Offers after the stop are counted, not queued.
    assert_eq!(sink.offer(span(99)), Err(DropReason::Shutdown));
    assert_eq!(metrics.dropped(DropReason::Shutdown), 1);
    // Idempotent.
    sink.flush_and_stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn batches_by_time_and_delivers_the_exact_spans() {
    let (addr, seen) = collector(Behaviour::default()).await;
    let metrics = ZipkinMetrics::default();
    let sink = ZipkinSink::start(
        SinkConfig {
            batch_spans: 1000,
            ..config(addr)
        },
        &metrics,
    )
    .unwrap();
    let started = Instant::now();
    assert_eq!(offer_all(&sink, 0..3), 3);
    wait_until("the timed flush", || metrics.exported.get() == 3).await;
    assert!(started.elapsed() >= Duration::from_millis(20));
    assert_eq!(seen.sizes(), [3]);
    assert_eq!(seen.spans(), (0..3).map(span).collect::<Vec<_>>());
}

#[tokio::test]
async fn gzips_bodies() {
    let (addr, seen) = collector(Behaviour::default()).await;
    let metrics = ZipkinMetrics::default();
    let sink = ZipkinSink::start(
        SinkConfig {
            gzip: true,
            ..config(addr)
        },
        &metrics,
    )
    .unwrap();
    assert_eq!(offer_all(&sink, 0..30), 30);
    sink.flush_and_stop(Duration::from_secs(2)).await;
    assert_eq!(seen.spans(), (0..30).map(span).collect::<Vec<_>>());
    assert_eq!(seen.gzipped.load(Ordering::SeqCst), 3);
    assert_eq!(metrics.exported.get(), 30);
}

#[tokio::test]
async fn retries_5xx_and_429_until_accepted() {
    for status in [503, 500, 429, 408] {
        let (addr, seen) = collector(Behaviour {
            fail_first: 3,
            fail_status: status,
            ..Behaviour::default()
        })
        .await;
        let metrics = ZipkinMetrics::default();
        let sink = ZipkinSink::start(config(addr), &metrics).unwrap();
        assert_eq!(offer_all(&sink, 0..10), 10);
        wait_until("delivery after retries", || metrics.exported.get() == 10).await;
        assert_eq!(seen.posts.load(Ordering::SeqCst), 4, "status {status}");
        assert_eq!(accounted(&metrics), 10);
    }
}

#[tokio::test]
async fn gives_up_on_other_4xx_at_once() {
    for status in [400, 404, 413] {
        let (addr, seen) = collector(Behaviour {
            always: Some(status),
            ..Behaviour::default()
        })
        .await;
        let metrics = ZipkinMetrics::default();
        let sink = ZipkinSink::start(config(addr), &metrics).unwrap();
        assert_eq!(offer_all(&sink, 0..15), 15);
        wait_until("rejections", || accounted(&metrics) == 15).await;
        assert_eq!(metrics.dropped(DropReason::Rejected), 15);
        assert_eq!(seen.posts.load(Ordering::SeqCst), 2, "status {status}");
        assert_eq!(metrics.exported.get(), 0);
    }
}

#[tokio::test]
async fn exhausts_retries_against_a_closed_port() {
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let metrics = ZipkinMetrics::default();
    let sink = ZipkinSink::start(
        SinkConfig {
            max_retries: 3,
            ..config(closed)
        },
        &metrics,
    )
    .unwrap();
    assert_eq!(offer_all(&sink, 0..20), 20);
    wait_until("give-up", || accounted(&metrics) == 20).await;
    assert_eq!(metrics.dropped(DropReason::RetriesExhausted), 20);
}

#[tokio::test]
async fn exhausts_retries_by_time() {
    let (addr, seen) = collector(Behaviour {
        always: Some(503),
        ..Behaviour::default()
    })
    .await;
    let metrics = ZipkinMetrics::default();
    let sink = ZipkinSink::start(
        SinkConfig {
            max_retries: 1000,
            max_retry_time: Duration::from_millis(100),
            ..config(addr)
        },
        &metrics,
    )
    .unwrap();
    assert_eq!(offer_all(&sink, 0..10), 10);
    wait_until("give-up", || accounted(&metrics) == 10).await;
    assert_eq!(metrics.dropped(DropReason::RetriesExhausted), 10);
    // 100 ms of waits of 1..20 ms: more than a few attempts, far fewer than 1000.
    let posts = seen.posts.load(Ordering::SeqCst);
    assert!((5..100).contains(&posts), "{posts} posts");
}

/// While a batch is retried the queue fills to its bound, then drops; a stop in the middle
/// counts what is left, and every span is accounted for exactly once.
#[tokio::test]
async fn queue_fills_while_retrying_and_stop_accounts_for_everything() {
    let (addr, seen) = collector(Behaviour {
        always: Some(503),
        ..Behaviour::default()
    })
    .await;
    let metrics = ZipkinMetrics::default();
    let sink = ZipkinSink::start(
        SinkConfig {
            queue_spans: 10,
            batch_spans: 5,
            max_retries: 1_000_000,
            max_retry_time: Duration::from_secs(3600),
            ..config(addr)
        },
        &metrics,
    )
    .unwrap();
    assert_eq!(offer_all(&sink, 0..5), 5);
    wait_until("the first attempt", || {
        seen.posts.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert_eq!(pending(&metrics), 5);
    // No await in between: the task cannot take any of these.
    assert_eq!(offer_all(&sink, 5..25), 10);
    assert_eq!(metrics.dropped(DropReason::QueueFull), 10);
    assert_eq!(pending(&metrics), 15);
    let started = Instant::now();
    sink.flush_and_stop(Duration::from_millis(100)).await;
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert_eq!(metrics.dropped(DropReason::Shutdown), 15);
    assert_eq!(metrics.exported.get(), 0);
    assert_eq!(accounted(&metrics), 25);
}

/// A collector that never answers in time costs the caller nothing.
#[tokio::test]
async fn a_stalled_collector_never_blocks_offer() {
    let (addr, seen) = collector(Behaviour {
        delay: Duration::from_secs(30),
        ..Behaviour::default()
    })
    .await;
    let metrics = ZipkinMetrics::default();
    let sink = ZipkinSink::start(
        SinkConfig {
            queue_spans: 100,
            request_timeout: Duration::from_millis(50),
            ..config(addr)
        },
        &metrics,
    )
    .unwrap();
    assert_eq!(offer_all(&sink, 0..10), 10);
    wait_until("a batch in flight", || {
        seen.posts.load(Ordering::SeqCst) == 1
    })
    .await;
    let started = std::time::Instant::now();
    let queued = offer_all(&sink, 10..100_010);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(queued, 100);
    assert_eq!(metrics.dropped(DropReason::QueueFull), 99_900);
    assert_eq!(accounted(&metrics) + pending(&metrics), 100_010);
    sink.flush_and_stop(Duration::from_millis(100)).await;
    assert_eq!(accounted(&metrics), 100_010);
    assert_eq!(metrics.exported.get(), 0);
}

#[tokio::test]
async fn drops_invalid_spans_and_normalizes_the_rest() {
    let (addr, seen) = collector(Behaviour::default()).await;
    let metrics = ZipkinMetrics::default();
    let sink = ZipkinSink::start(config(addr), &metrics).unwrap();
    let mut bad = span(1);
    bad.parent_id = Some("xyz".into());
    assert_eq!(sink.offer(bad), Err(DropReason::Invalid));
    let mut upper = span(2);
    upper.name = "GET /API".into();
    sink.offer(upper).unwrap();
    sink.flush_and_stop(Duration::from_secs(2)).await;
    assert_eq!(metrics.dropped(DropReason::Invalid), 1);
    assert_eq!(seen.spans()[0].name, "get /api");
    assert_eq!(accounted(&metrics), 2);
}

#[tokio::test]
async fn dropping_every_handle_delivers_what_is_queued() {
    let (addr, seen) = collector(Behaviour::default()).await;
    let metrics = ZipkinMetrics::default();
    let sink = ZipkinSink::start(config(addr), &metrics).unwrap();
    assert_eq!(offer_all(&sink, 0..7), 7);
    drop(sink);
    wait_until("delivery", || metrics.exported.get() == 7).await;
    assert_eq!(seen.spans().len(), 7);
}

#[tokio::test]
async fn delivers_consecutive_batches() {
    let (addr, seen) = collector(Behaviour::default()).await;
    let metrics = ZipkinMetrics::default();
    let sink = ZipkinSink::start(config(addr), &metrics).unwrap();
    for round in 1..=5u64 {
        assert_eq!(offer_all(&sink, 0..10), 10);
        wait_until("a batch", || metrics.exported.get() == round * 10).await;
    }
    assert_eq!(seen.posts.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn registers_its_metrics() {
    let metrics = ZipkinMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    metrics.exported.inc_by(3);
    let _ = metrics.dropped(DropReason::QueueFull);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("meshtap_spans_exported_total 3\n"), "{text}");
    assert!(text.contains("meshtap_spans_pending 0\n"), "{text}");
    assert!(
        text.contains("meshtap_spans_dropped_total{reason=\"queue_full\"} 0\n"),
        "{text}"
    );
}

#[test]
fn backoff_doubles_caps_and_jitters_in_the_upper_half() {
    let ms = Duration::from_millis;
    let (i, max) = (ms(100), ms(10_000));
    assert_eq!(backoff(i, max, 1, 0), ms(50));
    assert_eq!(backoff(i, max, 1, 50_000_000), ms(100));
    assert_eq!(backoff(i, max, 1, 50_000_001), ms(50));
    assert_eq!(backoff(i, max, 5, 0), ms(800));
    for r in [1, 12345, u64::MAX / 3, u64::MAX] {
        let d = backoff(i, max, 5, r);
        assert!((ms(800)..=ms(1600)).contains(&d), "{d:?}");
        let d = backoff(i, max, 40, r);
        assert!((ms(5000)..=ms(10_000)).contains(&d), "{d:?}");
        assert!(backoff(i, max, u32::MAX, r) <= max);
    }
    assert_eq!(backoff(Duration::ZERO, max, 3, 7), Duration::ZERO);
    assert!(backoff(Duration::MAX, Duration::MAX, 30, u64::MAX) > ms(0));
}

#[test]
fn endpoints() {
    let t = Target::parse("http://zipkin.tracing:9411/api/v2/spans").unwrap();
    assert_eq!(
        (t.host.as_str(), t.port, t.path.as_str()),
        ("zipkin.tracing", 9411, "/api/v2/spans")
    );
    assert_eq!(t.authority, "zipkin.tracing:9411");
    let t = Target::parse("http://[::1]:9411").unwrap();
    assert_eq!(
        (t.host.as_str(), t.port, t.path.as_str()),
        ("::1", 9411, "/api/v2/spans")
    );
    let t = Target::parse("http://collector/custom?x=1").unwrap();
    assert_eq!((t.port, t.path.as_str()), (80, "/custom?x=1"));
    for bad in [
        "https://zipkin:9411/api/v2/spans",
        "zipkin:9411",
        "/api/v2/spans",
        "http://",
        "http://user:pw@zipkin/",
        "",
        "http://zi pkin/",
    ] {
        assert!(Target::parse(bad).is_err(), "{bad}");
    }
    let err = Target::parse("https://z").unwrap_err().to_string();
    assert_eq!(
        err,
        "invalid zipkin endpoint \"https://z\": https is not supported; use http"
    );
}
