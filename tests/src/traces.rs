//! The programs and the agent of the trace tests (`tests/tests/traces_*.rs`).
//!
//! Tracing, end to end: HTTP exchanges between real processes become Zipkin v2 spans, joined
//! into traces, POSTed to a collector (`zipkin_collector.py`, validating every body against the
//! official spec, see [`crate::zipkin`]) and served by the agent's own query API.
//!
//! The agent observes the whole node: the test's own scrapes of `/metrics`, the collector
//! receiving the agent's POSTs, and whatever else runs on the machine are HTTP exchanges too, so
//! they become spans as well. Two ways keep the numbers exact:
//! - every test program has a service name (`OTEL_SERVICE_NAME`) unique to its test, and span
//!   checks look at those services only;
//! - node-wide counters (`meshtap_spans_exported_total`, drops) are checked exactly where the
//!   agent runs with `--sampling-ratio 0` and the test's requests carry a B3 debug context
//!   (`X-B3-Flags: 1`): debug traces are kept whatever the ratio, every other exchange on the
//!   node (scrapes, the collector's own traffic, other programs) is not sampled, so the test's
//!   spans are the only ones offered to the sink.
//!
//! Spans wait up to 2 s for their parent before they are emitted; the waits allow for it.

use serde_json::Value;

use crate::agent::Agent;
use crate::process::{RUN, STARTUP, Script, ScriptChild, port_of};
use crate::spans::{assert_inside, by_trace, describe, one, remote_service, sorted, tag, text};
use crate::zipkin::{Collector, api, validate};

pub const EXPORTED: &str = "meshtap_spans_exported_total";

/// A `trace_service.py` with its `listening` event.
pub struct Service {
    child: ScriptChild,
    pub port: u16,
    pub exe: String,
    pub pid: u32,
}

impl Service {
    /// `comm` names the process, `name` is its `OTEL_SERVICE_NAME`; `backend`: the port of a
    /// service on 127.0.0.1 it calls from the thread serving each request.
    pub fn start(comm: &str, name: &str, backend: Option<u16>, propagate: &str) -> Self {
        let mut script = Script::new("trace_service.py", comm)
            .env("OTEL_SERVICE_NAME", name)
            .opt("--bind", "127.0.0.1")
            .opt("--propagate", propagate);
        if let Some(port) = backend {
            script = script.opt("--backend", format!("127.0.0.1:{port}"));
        }
        let mut child = script.spawn();
        let v = child.expect_event("listening", STARTUP);
        Self {
            pid: child.pid(),
            port: port_of(&v),
            exe: v["exe"].as_str().expect("exe").to_owned(),
            child,
        }
    }

    /// Stops the service; returns the requests it served.
    pub fn finish(mut self) -> Vec<Value> {
        self.child.send_line("stop");
        let done = self.child.finish(RUN);
        done["requests"].as_array().expect("requests").clone()
    }
}

/// Runs `trace_client.py` to completion: `count` GETs of `/item/<i>` (or `--path`) to
/// 127.0.0.1:`port`. Returns its `done` event (`requests`, `exe`, `pid`).
pub fn run_client(comm: &str, name: &str, port: u16, count: usize, opts: &[(&str, &str)]) -> Value {
    let mut script = Script::new("trace_client.py", comm)
        .env("OTEL_SERVICE_NAME", name)
        .opt("--host", "127.0.0.1")
        .opt("--port", port)
        .opt("--count", count);
    for (k, v) in opts {
        script = script.opt(k, v);
    }
    let done = script.run(RUN);
    let requests = done["requests"].as_array().expect("requests");
    assert_eq!(requests.len(), count, "client requests: {done}");
    done
}

/// The requests of a client's `done` event.
pub fn requests(done: &Value) -> &Vec<Value> {
    done["requests"].as_array().expect("requests")
}

/// A header the client sent with `request`.
pub fn header<'a>(request: &'a Value, name: &str) -> &'a str {
    request["headers"][name]
        .as_str()
        .unwrap_or_else(|| panic!("request without {name}: {request}"))
}

/// Wall-clock seconds (a Python `time.time()`) as epoch µs.
pub fn micros(seconds: &Value) -> u64 {
    let s = seconds.as_f64().expect("a time.time() value");
    (s * 1e6).round() as u64
}

/// The agent's arguments: export to `endpoint` with short batching delays and a queue and a
/// store big enough that other traffic on the node cannot push the test's spans out; each
/// `(flag, value)` of `overrides` replaces or adds one.
pub fn agent_args(endpoint: &str, overrides: &[(&str, &str)]) -> Vec<String> {
    let mut args: Vec<(String, String)> = [
        ("--zipkin-endpoint", endpoint),
        ("--zipkin-flush-ms", "200"),
        ("--zipkin-queue-spans", "200000"),
        ("--trace-store-spans", "200000"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for (k, v) in overrides {
        match args.iter_mut().find(|(a, _)| a == k) {
            Some(slot) => slot.1 = (*v).to_owned(),
            None => args.push(((*k).to_owned(), (*v).to_owned())),
        }
    }
    args.into_iter().flat_map(|(k, v)| [k, v]).collect()
}

pub fn start_agent(args: &[String]) -> Agent {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start(&refs)
}

// ---------------------------------------------------------------------------------------------
// Three tiers: client -> frontend -> backend

pub struct Chain {
    pub client: Value,
    pub frontend_requests: Vec<Value>,
    /// Spans of the three services the collector received.
    pub spans: Vec<Value>,
    pub agent: Agent,
    _collector: Collector,
    pub services: [String; 3],
}

/// Runs `count` requests through client -> frontend -> backend, each service propagating
/// `propagate` (`none`, `b3`, `w3c`); `client_opts` adds client options. Waits for the
/// 4 × `count` spans at the collector.
pub fn chain(tag: &str, propagate: &str, count: usize, client_opts: &[(&str, &str)]) -> Chain {
    let collector = Collector::start(&format!("{tag}-coll"), &[]);
    let agent = start_agent(&agent_args(&collector.endpoint(), &[]));
    let services = [
        format!("{tag}-client"),
        "frontend".to_owned(),
        "backend".to_owned(),
    ];
    let backend = Service::start(&format!("{tag}-be"), "backend", None, propagate);
    let frontend = Service::start(
        &format!("{tag}-fe"),
        "frontend",
        Some(backend.port),
        propagate,
    );
    let mut opts = vec![("--propagate", propagate), ("--path", "/checkout")];
    opts.extend_from_slice(client_opts);
    let client = run_client(
        &format!("{tag}-cli"),
        &services[0],
        frontend.port,
        count,
        &opts,
    );
    let frontend_requests = frontend.finish();
    backend.finish();
    let names: Vec<&str> = services.iter().map(String::as_str).collect();
    let spans = collector.wait_spans(&names, 4 * count);
    let stats = collector.stats();
    assert_eq!(stats["rejected_posts"], 0, "collector: {stats}");
    Chain {
        client,
        frontend_requests,
        spans,
        agent,
        _collector: collector,
        services,
    }
}

/// The four spans of each request: (client CLIENT, frontend SERVER, frontend CLIENT, backend
/// SERVER), checked for one trace id, kinds, service names, remote services and time windows.
pub fn chain_traces(c: &Chain) -> Vec<[Value; 4]> {
    let traces = by_trace(&c.spans);
    let n = requests(&c.client).len();
    assert_eq!(
        traces.len(),
        n,
        "one trace per request, 4 spans each:\n{}",
        describe(&c.spans)
    );
    let cli = c.services[0].as_str();
    let mut out = Vec::new();
    for spans in traces.values() {
        assert_eq!(spans.len(), 4, "a trace of 4 spans:\n{}", describe(spans));
        let a = one(spans, cli, "CLIENT").clone();
        let b = one(spans, "frontend", "SERVER").clone();
        let d = one(spans, "frontend", "CLIENT").clone();
        let e = one(spans, "backend", "SERVER").clone();
        assert_eq!(remote_service(&a), Some("frontend"), "{a}");
        assert_eq!(remote_service(&b), Some(cli), "{b}");
        assert_eq!(remote_service(&d), Some("backend"), "{d}");
        assert_eq!(remote_service(&e), Some("frontend"), "{e}");
        for (span, route) in [
            (&a, "/checkout/*"),
            (&b, "/checkout/*"),
            (&d, "/stock/checkout/*"),
            (&e, "/stock/checkout/*"),
        ] {
            assert_eq!(text(span, "name"), format!("get {route}"), "{span}");
            assert_eq!(tag(span, "http.status_code"), Some("200"), "{span}");
        }
        assert_inside(&b, &a, "frontend SERVER in client CLIENT", spans);
        assert_inside(&d, &b, "frontend CLIENT in frontend SERVER", spans);
        assert_inside(&e, &d, "backend SERVER in frontend CLIENT", spans);
        out.push([a, b, d, e]);
    }
    out
}

/// The store has each trace exactly as the collector received it, found through
/// `/api/v2/traces?serviceName=frontend` and fetched with `/api/v2/trace/{id}`.
pub fn store_matches_collector(c: &Chain) {
    let listed = api(&c.agent, "/api/v2/traces?serviceName=frontend&limit=1000");
    validate(&listed, "ListOfTraces", "/api/v2/traces");
    let listed: Vec<Value> = listed
        .as_array()
        .expect("traces")
        .iter()
        .flat_map(|t| t.as_array().expect("trace").clone())
        .collect();
    assert_eq!(
        sorted(listed.clone()),
        sorted(c.spans.clone()),
        "/api/v2/traces?serviceName=frontend differs from what the collector got"
    );
    for (id, spans) in by_trace(&c.spans) {
        let trace = api(&c.agent, &format!("/api/v2/trace/{id}"));
        validate(&trace, "Trace", "/api/v2/trace/{id}");
        let trace = trace.as_array().expect("trace").clone();
        assert_eq!(
            sorted(trace),
            sorted(spans),
            "/api/v2/trace/{id} differs from the collector's"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Applications with a tracer of their own: the OpenTelemetry Python SDK (`otel_service.py`)

/// `otel_service.py serve`: an application instrumented with the OpenTelemetry SDK, its
/// propagator `w3c`, `b3` or `b3multi`.
pub struct OtelService {
    child: ScriptChild,
    pub port: u16,
}

impl OtelService {
    /// `name` is its `OTEL_SERVICE_NAME` (its SDK's and meshtap's name for it); `backend`: the
    /// port of a service on 127.0.0.1 it calls from the thread serving each request.
    pub fn start(comm: &str, name: &str, backend: Option<u16>, propagator: &str) -> Self {
        let mut script = Script::new("otel_service.py", comm)
            .env("OTEL_SERVICE_NAME", name)
            .arg("serve")
            .opt("--bind", "127.0.0.1")
            .opt("--propagator", propagator);
        if let Some(port) = backend {
            script = script.opt("--backend", format!("127.0.0.1:{port}"));
        }
        let mut child = script.spawn();
        let v = child.expect_event("listening", STARTUP);
        Self {
            port: port_of(&v),
            child,
        }
    }

    /// Stops it; returns the spans its SDK exported, in Zipkin v2's shape.
    pub fn finish(mut self) -> Vec<Value> {
        self.child.send_line("stop");
        let done = self.child.finish(RUN);
        done["spans"].as_array().expect("spans").clone()
    }
}

/// Runs `otel_service.py client`: `count` GETs of `path/<i>` to 127.0.0.1:`port`, each in a
/// CLIENT span that starts a trace. Returns the spans its SDK exported.
pub fn run_otel_client(
    comm: &str,
    name: &str,
    port: u16,
    count: usize,
    path: &str,
    propagator: &str,
) -> Vec<Value> {
    let done = Script::new("otel_service.py", comm)
        .env("OTEL_SERVICE_NAME", name)
        .arg("client")
        .opt("--port", port)
        .opt("--count", count)
        .opt("--path", path)
        .opt("--propagator", propagator)
        .run(RUN);
    let statuses = done["statuses"].as_array().expect("statuses");
    assert_eq!(statuses.len(), count, "{done}");
    assert!(statuses.iter().all(|s| s == 200), "{done}");
    done["spans"].as_array().expect("spans").clone()
}

/// Whether a span came from an application's SDK (`otel_service.py` marks them), not from
/// meshtap.
pub fn from_sdk(span: &Value) -> bool {
    span["sdk"].as_bool().unwrap_or(false)
}

/// The union of the applications' spans (`sdk`) and meshtap's (`meshtap`) is, for each of the
/// `requests`, exactly one trace: `requests` trace ids, each one an SDK's trace, each trace made
/// of exactly the `expected` spans ((service, kind, from an SDK), in any order), and every
/// `parentId` in it naming a span of the same trace.
pub fn assert_one_trace_per_request(
    sdk: &[Value],
    meshtap: &[Value],
    requests: usize,
    expected: &[(&str, &str, bool)],
) {
    assert_traces(sdk, meshtap, requests, &[expected]);
}

/// The union of `sdk` and `meshtap` is, for each of the `requests`, one trace of each of the
/// `shapes` (the spans of a trace: (service, kind, from an SDK), in any order): `requests` ×
/// `shapes.len()` traces, each an SDK's trace id, each shape found `requests` times, and every
/// `parentId` naming a span of the same trace.
pub fn assert_traces(
    sdk: &[Value],
    meshtap: &[Value],
    requests: usize,
    shapes: &[&[(&str, &str, bool)]],
) {
    let union: Vec<Value> = sdk.iter().chain(meshtap).cloned().collect();
    let all = describe(&union);
    let traces = by_trace(&union);
    assert_eq!(
        traces.len(),
        requests * shapes.len(),
        "{} trace(s) per request:\n{all}",
        shapes.len()
    );
    let sdk_traces: std::collections::BTreeSet<&str> =
        sdk.iter().map(crate::spans::trace_id).collect();
    let shapes: Vec<Vec<(&str, &str, bool)>> = shapes
        .iter()
        .map(|s| {
            let mut s = s.to_vec();
            s.sort_unstable();
            s
        })
        .collect();
    let mut found = vec![0; shapes.len()];
    for (trace, spans) in &traces {
        assert!(
            sdk_traces.contains(trace.as_str()),
            "trace {trace} is none of the applications':\n{all}"
        );
        let mut got: Vec<(&str, &str, bool)> = spans
            .iter()
            .map(|s| (crate::spans::service(s), crate::spans::kind(s), from_sdk(s)))
            .collect();
        got.sort_unstable();
        let Some(at) = shapes.iter().position(|s| *s == got) else {
            panic!("trace {trace} is none of {shapes:?}:\n{}", describe(spans));
        };
        found[at] += 1;
        let ids: std::collections::BTreeSet<&str> = spans.iter().map(crate::spans::id).collect();
        for s in spans {
            if let Some(p) = crate::spans::parent(s) {
                assert!(
                    ids.contains(p),
                    "trace {trace}: parent {p} of {s} is not in it:\n{}",
                    describe(spans)
                );
            }
        }
    }
    assert!(
        found.iter().all(|n| *n == requests),
        "each shape {requests} times: {found:?}\n{all}"
    );
}
