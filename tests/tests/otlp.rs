//! OTLP traces, end to end, beside Zipkin: real HTTP exchanges between real processes, the agent
//! exporting with `--zipkin-endpoint` and `--otlp-endpoint` at once. The OTLP receiver
//! (`otlp_collector.py`) decodes every request with the OpenTelemetry project's own Python
//! classes (PyPI `opentelemetry-proto`), not with the agent's encoder, and answers 503 (with
//! `Retry-After: 1`) to its first requests; the Zipkin collector (`zipkin_collector.py`)
//! validates every body against the official spec.
//!
//! Exact numbers: the agent runs with `--sampling-ratio 0` and every request of the test carries
//! a sampled W3C context, so the test's exchanges are the only ones whose spans are kept on the
//! node (scrapes and the collectors' own traffic carry none): N requests between two processes
//! of this node make exactly 2N spans (CLIENT and SERVER) in each export, and the agent's
//! exported counters are exactly 2N.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use meshtap_tests::{Agent, Script, ScriptChild, TempDir, http, serial};
use serde_json::Value;

/// Requests; every `ERROR_EVERY`th is answered 503 by the service.
const N: usize = 40;
const ERROR_EVERY: usize = 5;
/// POSTs the OTLP receiver refuses (503, `Retry-After: 1`) before it takes any.
const REFUSED_POSTS: u64 = 2;
/// The test programs' service names (`OTEL_SERVICE_NAME`), lowercase as Zipkin writes them.
const CLIENT: &str = "otlp-t-client";
const SERVER: &str = "otlp-t-service";
const STARTUP: Duration = Duration::from_secs(10);
const RUN: Duration = Duration::from_secs(60);
/// The 2 s link wait, batching, two refused POSTs with their Retry-After.
const EXPORT: Duration = Duration::from_secs(40);
/// After the expected spans arrived: long enough for a late or duplicate span to show up.
const QUIET: Duration = Duration::from_secs(3);

/// A collector script writing what it accepts to a JSON-lines file.
struct Receiver {
    child: ScriptChild,
    port: u16,
    out: String,
    _dir: TempDir,
}

impl Receiver {
    fn start(script: Script, dir: TempDir) -> Self {
        let out = dir.file("spans.jsonl");
        let mut child = script.opt("--out", &out).spawn();
        let listening = child.expect_event("listening", STARTUP);
        let port = listening["port"].as_u64().expect("port");
        Self {
            child,
            port: u16::try_from(port).expect("port fits u16"),
            out,
            _dir: dir,
        }
    }

    /// The accepted spans (a line still being written is left for the next call).
    fn spans(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {l}: {e}", self.out)))
            .collect()
    }

    fn stats(&self) -> Value {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let r = http::get(addr, "/stats", Duration::from_secs(10)).expect("GET /stats");
        serde_json::from_slice(&r.body).expect("stats JSON")
    }

    /// Waits for exactly `n` spans that `mine` keeps, then [`QUIET`] for any more.
    fn wait(&self, what: &str, n: usize, mine: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + EXPORT;
        let got = loop {
            let got: Vec<Value> = self.spans().into_iter().filter(&mine).collect();
            assert!(got.len() <= n, "{what}: {} spans, expected {n}", got.len());
            if got.len() == n {
                break got;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {} spans of {n} within {EXPORT:?}; receiver stats {}",
                got.len(),
                self.stats()
            );
            thread::sleep(Duration::from_millis(100));
        };
        thread::sleep(QUIET);
        let again = self.spans().into_iter().filter(&mine).count();
        assert_eq!(again, n, "{what}: spans kept arriving");
        got
    }
}

/// The identity and timing of one span, in units both exports can be brought to: ids as
/// lower-hex (trace ids 32 characters), epoch µs, error or not.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Shape {
    trace_id: String,
    span_id: String,
    parent_id: String,
    kind: String,
    start_us: u64,
    duration_us: u64,
    error: bool,
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

fn zipkin_shape(s: &Value) -> Shape {
    Shape {
        trace_id: format!("{:0>32}", str_of(s, "traceId")),
        span_id: str_of(s, "id").to_owned(),
        parent_id: str_of(s, "parentId").to_owned(),
        kind: str_of(s, "kind").to_owned(),
        start_us: s["timestamp"].as_u64().expect("timestamp"),
        duration_us: s["duration"].as_u64().expect("duration"),
        error: s["tags"].get("error").is_some(),
    }
}

fn otlp_shape(s: &Value) -> Shape {
    let ns = |key: &str| s[key].as_u64().unwrap_or_else(|| panic!("{key} in {s}"));
    let (start, end) = (ns("start_time_unix_nano"), ns("end_time_unix_nano"));
    Shape {
        trace_id: str_of(s, "trace_id").to_owned(),
        span_id: str_of(s, "span_id").to_owned(),
        parent_id: str_of(s, "parent_span_id").to_owned(),
        kind: str_of(s, "kind").to_owned(),
        start_us: start / 1000,
        duration_us: (end - start) / 1000,
        error: s["status"]["code"] == "ERROR",
    }
}

/// `(type, value)` of the attribute `key` of a flattened OTLP span or resource.
fn attribute<'a>(attributes: &'a Value, key: &str) -> (&'a str, &'a Value) {
    let a = &attributes[key];
    assert!(a.is_object(), "no attribute {key} in {attributes}");
    (a["type"].as_str().unwrap_or_default(), &a["value"])
}

#[test]
fn otlp_and_zipkin_carry_the_same_spans_and_a_503_loses_nothing() {
    let _serial = serial();
    let spec = meshtap_tests::workspace_root().join("../shared/spec/zipkin2-api.yaml");
    let zipkin = Receiver::start(
        Script::new("trace_collector.py", "otlp-t-zipkin")
            .opt("--spec", spec.display())
            .arg("--strict"),
        TempDir::new("otlp-zipkin"),
    );
    let otlp = Receiver::start(
        Script::new("otlp_collector.py", "otlp-t-otlp")
            .opt("--fail-first", REFUSED_POSTS)
            .opt("--retry-after", 1),
        TempDir::new("otlp-otlp"),
    );
    let zipkin_url = format!("http://127.0.0.1:{}/api/v2/spans", zipkin.port);
    // No path: the agent POSTs to /v1/traces.
    let otlp_url = format!("http://127.0.0.1:{}", otlp.port);
    let agent = Agent::start(&[
        "--sampling-ratio",
        "0",
        "--zipkin-endpoint",
        &zipkin_url,
        "--zipkin-flush-ms",
        "200",
        "--otlp-endpoint",
        &otlp_url,
        "--otlp-flush-ms",
        "200",
        "--otlp-batch-spans",
        "16",
    ]);

    let mut service = Script::new("trace_service.py", "otlp-t-svc")
        .env("OTEL_SERVICE_NAME", SERVER)
        .opt("--bind", "127.0.0.1")
        .spawn();
    let listening = service.expect_event("listening", STARTUP);
    let port = listening["port"].as_u64().expect("port");
    let service_pid = u64::from(service.pid());
    let client = Script::new("trace_client.py", "otlp-t-cli")
        .env("OTEL_SERVICE_NAME", CLIENT)
        .opt("--host", "127.0.0.1")
        .opt("--port", port)
        .opt("--count", N)
        .opt("--connection", "mixed")
        .opt("--propagate", "w3c")
        .opt("--query", "status=503")
        .opt("--query-every", ERROR_EVERY)
        .run(RUN);
    let requests = client["requests"].as_array().expect("requests");
    assert_eq!(requests.len(), N, "{client}");
    let client_pid = client["pid"].as_u64().expect("pid");
    service.send_line("stop");
    service.finish(RUN);

    let services = [CLIENT, SERVER];
    let zipkin_spans = zipkin.wait("zipkin", 2 * N, |s| {
        services.contains(
            &s["localEndpoint"]["serviceName"]
                .as_str()
                .unwrap_or_default(),
        )
    });
    let otlp_spans = otlp.wait("otlp", 2 * N, |s| {
        services.contains(
            &s["resource"]["service.name"]["value"]
                .as_str()
                .unwrap_or_default(),
        )
    });

    // The same spans: ids, parents, kinds, times and statuses.
    let from_zipkin: BTreeSet<Shape> = zipkin_spans.iter().map(zipkin_shape).collect();
    let from_otlp: BTreeSet<Shape> = otlp_spans.iter().map(otlp_shape).collect();
    assert_eq!(from_zipkin.len(), 2 * N, "distinct Zipkin spans");
    assert_eq!(from_otlp.len(), 2 * N, "distinct OTLP spans");
    let only_zipkin: Vec<&Shape> = from_zipkin.difference(&from_otlp).collect();
    let only_otlp: Vec<&Shape> = from_otlp.difference(&from_zipkin).collect();
    assert!(
        only_zipkin.is_empty() && only_otlp.is_empty(),
        "only in Zipkin: {only_zipkin:#?}\nonly in OTLP: {only_otlp:#?}"
    );
    let errors = from_otlp.iter().filter(|s| s.error).count();
    assert_eq!(errors, 2 * N / ERROR_EVERY, "both ends of every 503");

    // Each request's CLIENT span has the id its traceparent carried; its SERVER span is its
    // child.
    for request in requests {
        let tp = request["headers"]["traceparent"]
            .as_str()
            .expect("traceparent");
        let (trace_id, span_id) = (&tp[3..35], &tp[36..52]);
        let client_span = from_otlp
            .iter()
            .find(|s| s.kind == "CLIENT" && s.span_id == span_id)
            .unwrap_or_else(|| panic!("no CLIENT span {span_id} for {request}"));
        assert_eq!(client_span.trace_id, trace_id);
        assert!(
            from_otlp
                .iter()
                .any(|s| s.kind == "SERVER" && s.parent_id == span_id && s.trace_id == trace_id),
            "no SERVER child of {span_id}"
        );
    }

    // Resources, scope and typed semantic-convention attributes.
    for s in &otlp_spans {
        let kind = str_of(s, "kind");
        let (service, pid) = match kind {
            "CLIENT" => (CLIENT, client_pid),
            "SERVER" => (SERVER, service_pid),
            other => panic!("kind {other}: {s}"),
        };
        let resource = &s["resource"];
        assert_eq!(
            attribute(resource, "service.name"),
            ("string", &service.into())
        );
        assert_eq!(attribute(resource, "process.pid"), ("int", &pid.into()));
        assert_eq!(attribute(resource, "process.executable.name").0, "string");
        assert_eq!(s["scope"]["name"], "meshtap", "{s}");
        let a = &s["attributes"];
        let (status_type, status) = attribute(a, "http.response.status_code");
        assert_eq!(status_type, "int", "{s}");
        let path = attribute(a, "url.path");
        assert_eq!(path.0, "string");
        assert!(
            path.1.as_str().is_some_and(|p| p.starts_with("/item/")),
            "{s}"
        );
        assert_eq!(
            attribute(a, "http.request.method"),
            ("string", &"GET".into())
        );
        assert_eq!(attribute(a, "http.route"), ("string", &"/item/*".into()));
        assert_eq!(
            attribute(a, "server.address"),
            ("string", &"127.0.0.1".into())
        );
        assert_eq!(attribute(a, "server.port"), ("int", &port.into()));
        assert_eq!(
            attribute(a, "network.peer.address"),
            ("string", &"127.0.0.1".into())
        );
        assert_eq!(attribute(a, "network.peer.port").0, "int");
        if kind == "SERVER" {
            assert_eq!(
                attribute(a, "client.address"),
                ("string", &"127.0.0.1".into())
            );
            assert_eq!(attribute(a, "client.port").0, "int");
        }
        if status == 503 {
            assert_eq!(attribute(a, "error.type"), ("string", &"503".into()));
            assert_eq!(s["status"]["message"], "503", "{s}");
        } else {
            assert_eq!(status, 200, "{s}");
            assert!(a.get("error.type").is_none(), "{s}");
            assert_eq!(s["status"]["code"], "UNSET", "{s}");
        }
    }

    // Nothing lost through the 503s: the agent's counters are what the receivers took.
    let exported = (2 * N) as f64;
    let m = agent.wait_for("meshtap_otlp_spans_exported_total", &[], exported, EXPORT);
    assert_eq!(m.value("meshtap_otlp_spans_dropped_total", &[]), 0.0);
    assert_eq!(m.value("meshtap_otlp_spans_pending", &[]), 0.0);
    assert_eq!(m.value("meshtap_spans_exported_total", &[]), exported);
    assert_eq!(m.value("meshtap_spans_dropped_total", &[]), 0.0);
    let stats = otlp.stats();
    assert_eq!(stats["accepted_spans"], 2 * N, "{stats}");
    assert_eq!(stats["failed_posts"], REFUSED_POSTS, "{stats}");
    assert_eq!(stats["rejected_posts"], 0, "{stats}");
    assert_eq!(
        stats["gzipped_posts"], stats["posts"],
        "gzip by default: {stats}"
    );
    assert_eq!(
        stats["content_types"],
        serde_json::json!(["application/x-protobuf"])
    );
    let stats = zipkin.stats();
    assert_eq!(stats["accepted_spans"], 2 * N, "{stats}");
    assert_eq!(stats["rejected_posts"], 0, "{stats}");
    drop(agent);
    for receiver in [zipkin, otlp] {
        let mut child = receiver.child;
        child.send_line("stop");
        child.finish(RUN);
    }
}
