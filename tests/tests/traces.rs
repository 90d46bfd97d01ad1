//! Tracing, end to end: HTTP exchanges between real processes become Zipkin v2 spans, joined
//! into traces, POSTed to a collector (`zipkin_collector.py`, validating every body against the
//! official spec) and served by the agent's own query API.
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
//! Spans wait up to 2 s for their parent before they are emitted; the waits below allow for it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshtap_tests::metrics::{HTTP_CLIENT_DURATION, HTTP_SERVER_DURATION, count};
use meshtap_tests::process::{python, run_command, scripts_dir};
use meshtap_tests::{Agent, Metrics, Script, ScriptChild, TempDir, free_port, http, serial};
use serde_json::Value;

/// How long one test program may run.
const RUN: Duration = Duration::from_secs(60);
/// How long a program may take to report that it listens.
const STARTUP: Duration = Duration::from_secs(10);
/// How long spans may take to reach the collector: the 2 s link wait, batching, retries.
const EXPORT: Duration = Duration::from_secs(40);
/// After the expected spans arrived: long enough for a late or duplicate span to show up.
const QUIET: Duration = Duration::from_secs(3);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);
/// How long a metric may take to show what the requests did (close waits, pairing).
const SETTLE_METRICS: Duration = Duration::from_secs(10);

const EXPORTED: &str = "meshtap_spans_exported_total";
const DROPPED: &str = "meshtap_spans_dropped_total";
const PENDING: &str = "meshtap_spans_pending";
const NOT_SAMPLED: &str = "meshtap_spans_not_sampled_total";
const CONTEXT_INVALID: &str = "meshtap_trace_context_invalid_total";
const DROP_REASONS: [&str; 5] = [
    "invalid",
    "queue_full",
    "rejected",
    "retries_exhausted",
    "shutdown",
];

// ---------------------------------------------------------------------------------------------
// Programs

/// The Zipkin spec the collector and the validator check against: `$MESHTAP_ZIPKIN_SPEC`, else
/// `<workspace>/../shared/spec/zipkin2-api.yaml`.
fn spec_path() -> String {
    if let Ok(p) = std::env::var("MESHTAP_ZIPKIN_SPEC") {
        return p;
    }
    let path = meshtap_tests::workspace_root().join("../shared/spec/zipkin2-api.yaml");
    assert!(path.is_file(), "no Zipkin spec at {}", path.display());
    path.to_string_lossy().into_owned()
}

/// `zipkin_collector.py --strict --out FILE` (through `trace_collector.py`, for its comm).
struct Collector {
    _child: ScriptChild,
    port: u16,
    out: String,
    _dir: TempDir,
}

impl Collector {
    fn start(comm: &str, extra: &[&str]) -> Self {
        let dir = TempDir::new("collector");
        let out = dir.file("spans.jsonl");
        let mut script = Script::new("trace_collector.py", comm)
            .opt("--out", &out)
            .opt("--spec", spec_path())
            .arg("--strict");
        for a in extra {
            script = script.arg(a);
        }
        let mut child = script.spawn();
        let port = port_of(&child.expect_event("listening", STARTUP));
        Self {
            _child: child,
            port,
            out,
            _dir: dir,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/api/v2/spans", self.port)
    }

    /// `GET /stats`.
    fn stats(&self) -> Value {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let r = http::get(addr, "/stats", HTTP_TIMEOUT)
            .unwrap_or_else(|e| panic!("GET /stats from the collector: {e}"));
        assert_eq!(r.status, 200, "collector /stats: {}", r.text());
        serde_json::from_slice(&r.body).expect("collector /stats JSON")
    }

    /// Every span accepted so far (a line still being written is left for the next call).
    fn spans(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("collector line {l}: {e}")))
            .collect()
    }

    /// The accepted spans whose local service is one of `services`.
    fn spans_of(&self, services: &[&str]) -> Vec<Value> {
        self.spans()
            .into_iter()
            .filter(|s| services.contains(&service(s)))
            .collect()
    }

    /// Waits until exactly `n` spans of `services` arrived (panics on more, or on a timeout),
    /// then waits [`QUIET`] and checks that nothing was added.
    fn wait_spans(&self, services: &[&str], n: usize) -> Vec<Value> {
        let deadline = Instant::now() + EXPORT;
        loop {
            let got = self.spans_of(services);
            assert!(
                got.len() <= n,
                "the collector got {} spans of {services:?}, expected {n}:\n{}",
                got.len(),
                describe(&got)
            );
            if got.len() == n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the collector got {} spans of {services:?} within {EXPORT:?}, expected {n}; \
                 collector stats {}:\n{}",
                got.len(),
                self.stats(),
                describe(&got)
            );
            thread::sleep(POLL);
        }
        thread::sleep(QUIET);
        let got = self.spans_of(services);
        assert_eq!(
            got.len(),
            n,
            "spans of {services:?} kept arriving:\n{}",
            describe(&got)
        );
        got
    }
}

fn port_of(v: &Value) -> u16 {
    u16::try_from(v["port"].as_u64().expect("event has a port")).expect("port fits u16")
}

/// A `trace_service.py` with its `listening` event.
struct Service {
    child: ScriptChild,
    port: u16,
    exe: String,
    pid: u32,
}

impl Service {
    /// `comm` names the process, `name` is its `OTEL_SERVICE_NAME`; `backend`: the port of a
    /// service on 127.0.0.1 it calls from the thread serving each request.
    fn start(comm: &str, name: &str, backend: Option<u16>, propagate: &str) -> Self {
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
    fn finish(mut self) -> Vec<Value> {
        self.child.send_line("stop");
        let done = self.child.finish(RUN);
        done["requests"].as_array().expect("requests").clone()
    }
}

/// Runs `trace_client.py` to completion: `count` GETs of `/item/<i>` (or `--path`) to
/// 127.0.0.1:`port`. Returns its `done` event (`requests`, `exe`, `pid`).
fn run_client(comm: &str, name: &str, port: u16, count: usize, opts: &[(&str, &str)]) -> Value {
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

fn requests(done: &Value) -> &Vec<Value> {
    done["requests"].as_array().expect("requests")
}

/// The agent's arguments: export to `endpoint` with short batching delays and a queue and a
/// store big enough that other traffic on the node cannot push the test's spans out; each
/// `(flag, value)` of `overrides` replaces or adds one.
fn agent_args(endpoint: &str, overrides: &[(&str, &str)]) -> Vec<String> {
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

fn start_agent(args: &[String]) -> Agent {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start(&refs)
}

// ---------------------------------------------------------------------------------------------
// Spans

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

fn service(span: &Value) -> &str {
    span["localEndpoint"]["serviceName"]
        .as_str()
        .unwrap_or_default()
}

fn remote_service(span: &Value) -> Option<&str> {
    span["remoteEndpoint"]["serviceName"].as_str()
}

fn kind(span: &Value) -> &str {
    text(span, "kind")
}

fn id(span: &Value) -> &str {
    text(span, "id")
}

fn trace_id(span: &Value) -> &str {
    text(span, "traceId")
}

fn parent(span: &Value) -> Option<&str> {
    span["parentId"].as_str()
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["tags"][key].as_str()
}

fn flag(span: &Value, key: &str) -> bool {
    span[key].as_bool().unwrap_or(false)
}

/// `timestamp` and `duration`, µs.
fn window(span: &Value) -> (u64, u64) {
    let ts = span["timestamp"].as_u64().expect("span has a timestamp");
    let d = span["duration"].as_u64().expect("span has a duration");
    (ts, ts + d)
}

fn describe(spans: &[Value]) -> String {
    let mut lines: Vec<String> = spans
        .iter()
        .map(|s| {
            format!(
                "  {} {} parent={} {} {:?} {} -> {:?} ts={} d={} debug={} shared={} tags={}",
                trace_id(s),
                id(s),
                parent(s).unwrap_or("-"),
                kind(s),
                text(s, "name"),
                service(s),
                remote_service(s),
                s["timestamp"],
                s["duration"],
                flag(s, "debug"),
                flag(s, "shared"),
                s["tags"]
            )
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

/// The one span of `spans` of `service` and `kind` (panics on none or several).
fn one<'a>(spans: &'a [Value], svc: &str, k: &str) -> &'a Value {
    let found: Vec<&Value> = spans
        .iter()
        .filter(|s| service(s) == svc && kind(s) == k)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {k} span of {svc} in:\n{}",
        describe(spans)
    );
    found[0]
}

/// `child` lies inside `parent`'s time window, give or take 1 ms.
fn assert_inside(child: &Value, parent: &Value, what: &str, all: &[Value]) {
    const SLACK: u64 = 1000;
    let (cs, ce) = window(child);
    let (ps, pe) = window(parent);
    assert!(
        cs + SLACK >= ps && ce <= pe + SLACK,
        "{what}: child window {cs}..{ce} is not inside its parent's {ps}..{pe} (±1 ms):\n{}",
        describe(all)
    );
}

/// Spans grouped by trace id.
fn by_trace(spans: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut traces: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for s in spans {
        traces
            .entry(trace_id(s).to_owned())
            .or_default()
            .push(s.clone());
    }
    traces
}

/// Wall-clock seconds (a Python `time.time()`) as epoch µs.
fn micros(seconds: &Value) -> u64 {
    let s = seconds.as_f64().expect("a time.time() value");
    (s * 1e6).round() as u64
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("ms fit u64")
}

fn header<'a>(request: &'a Value, name: &str) -> &'a str {
    request["headers"][name]
        .as_str()
        .unwrap_or_else(|| panic!("request without {name}: {request}"))
}

/// The checks every span of a client→server exchange of these tests passes.
fn assert_common(span: &Value, route: &str, status: &str, pid: u32, exe: &str, all: &[Value]) {
    let problems: Vec<String> = [
        (text(span, "name") == format!("get {route}"), "name"),
        (tag(span, "http.method") == Some("GET"), "http.method"),
        (tag(span, "http.path") == Some(route), "http.path"),
        (
            tag(span, "http.status_code") == Some(status),
            "http.status_code",
        ),
        (
            tag(span, "process.pid") == Some(pid.to_string().as_str()),
            "process.pid",
        ),
        (
            tag(span, "process.executable.name") == Some(exe),
            "process.executable.name",
        ),
        (
            span["duration"].as_u64().is_some_and(|d| d >= 1),
            "duration",
        ),
        (
            span["localEndpoint"]["ipv4"] == "127.0.0.1",
            "localEndpoint.ipv4",
        ),
        (
            span["remoteEndpoint"]["ipv4"] == "127.0.0.1",
            "remoteEndpoint.ipv4",
        ),
        (
            span["localEndpoint"]["port"]
                .as_u64()
                .is_some_and(|p| p > 0),
            "localEndpoint.port",
        ),
        (
            span["remoteEndpoint"]["port"]
                .as_u64()
                .is_some_and(|p| p > 0),
            "remoteEndpoint.port",
        ),
        (
            (status.starts_with('5')) == tag(span, "error").is_some(),
            "error tag",
        ),
    ]
    .iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, what)| (*what).to_owned())
    .collect();
    assert!(
        problems.is_empty(),
        "span {} ({} of {}) is wrong in {problems:?} (route {route}, status {status}, pid {pid}, \
         exe {exe}): {span}\nall:\n{}",
        id(span),
        kind(span),
        service(span),
        describe(all)
    );
}

// ---------------------------------------------------------------------------------------------
// Metrics

fn dropped_by_reason(m: &Metrics) -> BTreeMap<&'static str, f64> {
    DROP_REASONS
        .iter()
        .map(|r| (*r, m.value(DROPPED, &[("reason", r)])))
        .collect()
}

/// Waits until the agent's exported count equals what the collector accepted, read back to
/// back (no POST in flight between the reads); returns it.
fn exported_matches_collector(agent: &Agent, collector: &Collector) -> f64 {
    let deadline = Instant::now() + EXPORT;
    loop {
        let before = agent.value(EXPORTED, &[]);
        let accepted = collector.stats()["accepted_spans"].as_f64().expect("stats");
        let after = agent.value(EXPORTED, &[]);
        if before == after && after == accepted {
            return after;
        }
        assert!(
            Instant::now() < deadline,
            "{EXPORTED} = {after}, the collector accepted {accepted} spans"
        );
        thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------------
// Query API

/// `GET path` from the agent, asserting 200; the body as JSON.
fn api(agent: &Agent, path: &str) -> Value {
    let r = agent.get(path);
    assert_eq!(
        r.status,
        200,
        "GET {path}: {} (store: {} spans, {} evicted)",
        r.text(),
        agent.value("meshtap_trace_store_spans", &[]),
        agent.value("meshtap_trace_store_evicted_spans_total", &[])
    );
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("GET {path}: bad JSON {e}"))
}

/// Validates `doc` against `definition` of the spec with `zipkin_validate.py --strict`.
fn validate(doc: &Value, definition: &str, what: &str) {
    let dir = TempDir::new("validate");
    let file = dir.file("doc.json");
    std::fs::write(&file, serde_json::to_vec(doc).expect("serialise")).expect("write doc");
    let out = run_command(
        Command::new(python())
            .arg(scripts_dir().join("zipkin_validate.py"))
            .arg(&file)
            .arg(definition)
            .arg("--strict")
            .arg("--spec")
            .arg(spec_path()),
        RUN,
    );
    assert!(
        out.status.success(),
        "{what} is not a valid {definition}: {}{}\n{doc}",
        out.stdout,
        out.stderr
    );
}

fn string_array(doc: &Value, what: &str) -> BTreeSet<String> {
    doc.as_array()
        .unwrap_or_else(|| panic!("{what} is not an array: {doc}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("{what} has a non-string: {doc}"))
                .to_owned()
        })
        .collect()
}

/// `(traceId, id, kind)` of every span.
fn keys(spans: &[Value]) -> BTreeSet<(String, String, String)> {
    spans
        .iter()
        .map(|s| (trace_id(s).to_owned(), id(s).to_owned(), kind(s).to_owned()))
        .collect()
}

fn sorted(mut spans: Vec<Value>) -> Vec<Value> {
    spans.sort_by_key(|s| (trace_id(s).to_owned(), id(s).to_owned(), kind(s).to_owned()));
    spans
}

// ---------------------------------------------------------------------------------------------
// 1. Delivery to a collector answering 202

const N: usize = 50;

/// Plain requests (no trace headers), keep-alive and not: every exchange becomes a CLIENT and a
/// SERVER span, the SERVER one the child of the CLIENT one (same connection), with wall-clock
/// timestamps; the agent's exported count is what the collector accepted.
#[test]
fn plain_requests_reach_the_collector_as_client_server_pairs() {
    let _serial = serial();
    let collector = Collector::start("tr1-coll", &[]);
    let agent = start_agent(&agent_args(&collector.endpoint(), &[]));
    let server = Service::start("tr1-svc", "Tr1-Service", None, "none");
    let port = server.port.to_string();
    let client = run_client(
        "tr1-cli",
        "Tr1-Client",
        server.port,
        N,
        &[("--connection", "mixed")],
    );
    let (srv_pid, srv_exe) = (server.pid, server.exe.clone());
    let mut served = server.finish();
    assert_eq!(served.len(), N);
    served.sort_by(|a, b| {
        a["t_in"]
            .as_f64()
            .partial_cmp(&b["t_in"].as_f64())
            .expect("times")
    });

    let spans = collector.wait_spans(&["tr1-client", "tr1-service"], 2 * N);
    let stats = collector.stats();
    assert_eq!(stats["rejected_posts"], 0, "collector: {stats}");
    assert_eq!(stats["failed_posts"], 0, "collector: {stats}");

    let mut clients: Vec<&Value> = spans.iter().filter(|s| kind(s) == "CLIENT").collect();
    let mut servers: Vec<&Value> = spans.iter().filter(|s| kind(s) == "SERVER").collect();
    assert_eq!(
        (clients.len(), servers.len()),
        (N, N),
        "{}",
        describe(&spans)
    );
    clients.sort_by_key(|s| window(s).0);
    servers.sort_by_key(|s| window(s).0);
    let cli_pid = u32::try_from(client["pid"].as_u64().expect("pid")).expect("pid");
    let cli_exe = client["exe"].as_str().expect("exe");
    let traces = by_trace(&spans);
    assert_eq!(
        traces.len(),
        N,
        "one trace per request:\n{}",
        describe(&spans)
    );
    for (i, (request, (c, s))) in requests(&client)
        .iter()
        .zip(clients.iter().zip(&servers))
        .enumerate()
    {
        assert_common(c, "/item/*", "200", cli_pid, cli_exe, &spans);
        assert_common(s, "/item/*", "200", srv_pid, &srv_exe, &spans);
        assert_eq!(service(c), "tr1-client");
        assert_eq!(service(s), "tr1-service");
        assert_eq!(remote_service(c), Some("tr1-service"), "{c}");
        assert_eq!(remote_service(s), Some("tr1-client"), "{s}");
        assert_eq!(c["remoteEndpoint"]["port"].to_string(), port, "{c}");
        assert_eq!(s["localEndpoint"]["port"].to_string(), port, "{s}");
        assert_eq!(c["localEndpoint"]["port"], s["remoteEndpoint"]["port"]);
        // The SERVER span of an exchange is the child of its CLIENT span.
        assert_eq!(parent(c), None, "request {i}: {c}");
        assert_eq!(parent(s), Some(id(c)), "request {i}:\n{}", describe(&spans));
        assert_eq!(trace_id(s), trace_id(c), "request {i}");
        assert_eq!(traces[trace_id(c)].len(), 2, "request {i}");
        assert!(!flag(c, "shared") && !flag(s, "shared") && !flag(c, "debug"));
        assert_inside(s, c, "server in client", &spans);
        // Wall clock: the CLIENT span starts within 5 ms of when the client wrote the request,
        // the SERVER span within 5 ms of when the server's handler got it (the server reads
        // the request when its thread runs, which on a busy machine may be a while after the
        // client wrote it) and not before the client wrote it.
        assert_eq!(served[i]["path"], request["path"], "served in order");
        let sent = micros(&request["t"]);
        let handled = micros(&served[i]["t_in"]);
        let (c_ts, s_ts) = (window(c).0, window(s).0);
        let off = |a: u64, b: u64| i128::from(a) - i128::from(b);
        assert!(
            c_ts.abs_diff(sent) <= 5000,
            "request {i} written at {sent} µs: CLIENT span at {c_ts} ({} µs off)",
            off(c_ts, sent)
        );
        assert!(
            s_ts.abs_diff(handled) <= 5000 && s_ts + 1000 >= sent && s_ts <= handled + 1000,
            "request {i} written at {sent} µs, handled at {handled}: SERVER span at {s_ts} ({} µs \
             after the write, {} µs after the handler started)",
            off(s_ts, sent),
            off(s_ts, handled)
        );
        let took = micros(&request["t_end"]) - sent;
        assert!(
            window(c).1 - window(c).0 <= took + 1000,
            "request {i}: the client saw {took} µs, its span lasts {}",
            c["duration"]
        );
    }
    let ids: BTreeSet<&str> = spans.iter().map(id).collect();
    assert_eq!(ids.len(), 2 * N, "span ids are unique");

    // What the agent counts as exported is exactly what the collector accepted (node-wide:
    // other traffic is exported too at ratio 1, so drops are checked where it is not, below).
    exported_matches_collector(&agent, &collector);
}

/// With `--sampling-ratio 0` and B3 debug contexts, the test's spans are the only ones offered
/// to the sink: `meshtap_spans_exported_total` is exactly 2N.
#[test]
fn exported_total_is_exactly_two_spans_per_request() {
    let _serial = serial();
    let collector = Collector::start("tr1x-coll", &[]);
    let agent = start_agent(&agent_args(
        &collector.endpoint(),
        &[("--sampling-ratio", "0"), ("--zipkin-batch-spans", "16")],
    ));
    let server = Service::start("tr1x-svc", "tr1x-service", None, "none");
    let client = run_client(
        "tr1x-cli",
        "tr1x-client",
        server.port,
        N,
        &[("--connection", "mixed"), ("--propagate", "b3-debug")],
    );
    let served = server.finish();
    let spans = collector.wait_spans(&["tr1x-client", "tr1x-service"], 2 * N);
    let m = agent.wait_for(EXPORTED, &[], (2 * N) as f64, EXPORT);
    m.assert_values(&[(PENDING, &[], 0.0)]);
    for (reason, v) in dropped_by_reason(&m) {
        assert_eq!(v, 0.0, "{DROPPED}{{reason={reason}}}");
    }
    let stats = collector.stats();
    assert_eq!(stats["accepted_spans"], 2 * N, "collector: {stats}");
    assert_eq!(stats["rejected_posts"], 0, "collector: {stats}");
    // Each request's spans carry its context: the CLIENT span the header's ids, the SERVER span
    // sharing the span id.
    for request in requests(&client) {
        let (t, sid) = (
            header(request, "X-B3-TraceId"),
            header(request, "X-B3-SpanId"),
        );
        let mine: Vec<Value> = spans.iter().filter(|s| id(s) == sid).cloned().collect();
        let c = one(&mine, "tr1x-client", "CLIENT");
        let s = one(&mine, "tr1x-service", "SERVER");
        for span in [c, s] {
            assert_eq!(trace_id(span), t, "{span}");
            assert!(flag(span, "debug"), "debug context: {span}");
            assert_eq!(parent(span), None, "{span}");
        }
        // Wall clock, as in the test above: the CLIENT span vs when the client wrote the
        // request, the SERVER span vs when the server's handler got it.
        let handled = served
            .iter()
            .find(|r| r["incoming"]["x-b3-spanid"] == sid)
            .map(|r| micros(&r["t_in"]))
            .expect("the server's record of the request");
        let sent = micros(&request["t"]);
        let (c_ts, s_ts) = (window(c).0, window(s).0);
        assert!(
            c_ts.abs_diff(sent) <= 5000,
            "CLIENT {c_ts} vs written {sent}: {c}"
        );
        assert!(
            s_ts.abs_diff(handled) <= 5000 && s_ts + 1000 >= sent && s_ts <= handled + 1000,
            "SERVER {s_ts} vs written {sent}, handled {handled}: {s}"
        );
        assert!(flag(s, "shared") && !flag(c, "shared"), "{s}\n{c}");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. A collector failing at first

#[test]
fn collector_answering_503_at_first_gets_everything_later() {
    let _serial = serial();
    let collector = Collector::start("tr2-coll", &["--fail-first", "3"]);
    let agent = start_agent(&agent_args(
        &collector.endpoint(),
        &[
            ("--sampling-ratio", "0"),
            ("--zipkin-batch-spans", "10"),
            ("--zipkin-flush-ms", "100"),
        ],
    ));
    let server = Service::start("tr2-svc", "tr2-service", None, "none");
    run_client(
        "tr2-cli",
        "tr2-client",
        server.port,
        N,
        &[("--propagate", "b3-debug")],
    );
    server.finish();
    let spans = collector.wait_spans(&["tr2-client", "tr2-service"], 2 * N);
    let m = agent.wait_for(EXPORTED, &[], (2 * N) as f64, EXPORT);
    m.assert_values(&[(PENDING, &[], 0.0)]);
    for (reason, v) in dropped_by_reason(&m) {
        assert_eq!(v, 0.0, "{DROPPED}{{reason={reason}}}");
    }
    let stats = collector.stats();
    assert_eq!(stats["failed_posts"], 3, "collector: {stats}");
    assert_eq!(stats["accepted_spans"], 2 * N, "collector: {stats}");
    assert_eq!(stats["rejected_posts"], 0, "collector: {stats}");
    assert_eq!(
        keys(&spans).len(),
        2 * N,
        "no span twice:\n{}",
        describe(&spans)
    );
}

// ---------------------------------------------------------------------------------------------
// 3. No collector at all

#[test]
fn dead_collector_drops_are_counted_exactly_and_nothing_else_suffers() {
    let _serial = serial();
    // Nothing listens there: every POST is refused at once and retried with backoff; the queue
    // of 5 fills while the first batch is retried.
    let endpoint = format!("http://127.0.0.1:{}/api/v2/spans", free_port());
    let agent = start_agent(&agent_args(
        &endpoint,
        &[
            ("--sampling-ratio", "0"),
            ("--zipkin-queue-spans", "5"),
            ("--zipkin-batch-spans", "5"),
            ("--zipkin-timeout-ms", "300"),
            ("--zipkin-flush-ms", "100"),
        ],
    ));
    let server = Service::start("tr3-svc", "tr3-service", None, "none");
    let dest = server.port.to_string();
    run_client(
        "tr3-cli",
        "tr3-client",
        server.port,
        N,
        &[("--propagate", "b3-debug")],
    );
    server.finish();
    let produced = (2 * N) as f64;
    let m = agent.wait_until(
        EXPORT,
        |m| {
            let dropped: f64 = dropped_by_reason(m).values().sum();
            m.value(EXPORTED, &[]) + dropped + m.value(PENDING, &[]) == produced
                && m.value(DROPPED, &[("reason", "queue_full")]) > 0.0
        },
        |m| {
            format!(
                "exported {} + dropped {:?} + pending {} != {produced} produced",
                m.value(EXPORTED, &[]),
                dropped_by_reason(m),
                m.value(PENDING, &[])
            )
        },
    );
    // The books still balance a moment later: nothing counted twice.
    thread::sleep(QUIET);
    let later = agent.metrics();
    let sum = |m: &Metrics| {
        m.value(EXPORTED, &[]) + dropped_by_reason(m).values().sum::<f64>() + m.value(PENDING, &[])
    };
    assert_eq!(sum(&later), produced, "{:?}", dropped_by_reason(&later));
    assert_eq!(later.value(EXPORTED, &[]), 0.0);
    assert!(
        later.value(PENDING, &[]) <= 10.0,
        "pending {} > queue + batch",
        later.value(PENDING, &[])
    );
    for reason in ["invalid", "rejected", "shutdown"] {
        assert_eq!(later.value(DROPPED, &[("reason", reason)]), 0.0, "{reason}");
    }
    drop(m);
    // Still ready, and the HTTP metrics are whole.
    for path in ["/readyz", "/healthz"] {
        assert_eq!(agent.get(path).status, 200, "{path}");
    }
    later.assert_values(&[
        (
            &count(HTTP_SERVER_DURATION),
            &[("service_name", "tr3-service")],
            N as f64,
        ),
        (
            &count(HTTP_CLIENT_DURATION),
            &[("service_name", "tr3-client"), ("server_port", &dest)],
            N as f64,
        ),
    ]);
}

// ---------------------------------------------------------------------------------------------
// 4. Three tiers: client -> frontend -> backend

const CHAIN: usize = 5;

struct Chain {
    client: Value,
    frontend_requests: Vec<Value>,
    /// Spans of the three services the collector received.
    spans: Vec<Value>,
    agent: Agent,
    _collector: Collector,
    services: [String; 3],
}

/// Runs `count` requests through client -> frontend -> backend, each service propagating
/// `propagate` (`none`, `b3`, `w3c`); `client_opts` adds client options. Waits for the
/// 4 × `count` spans at the collector.
fn chain(tag: &str, propagate: &str, count: usize, client_opts: &[(&str, &str)]) -> Chain {
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
fn chain_traces(c: &Chain) -> Vec<[Value; 4]> {
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
fn store_matches_collector(c: &Chain) {
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

#[test]
fn three_tiers_with_b3_propagation() {
    let _serial = serial();
    let c = chain("tr4b", "b3", CHAIN, &[]);
    let sent = requests(&c.client);
    for [a, b, d, e] in chain_traces(&c) {
        // Which request: the client span carries the id the client put in X-B3-SpanId.
        let request = sent
            .iter()
            .find(|r| header(r, "X-B3-SpanId") == id(&a))
            .unwrap_or_else(|| panic!("no request with X-B3-SpanId {}", id(&a)));
        let forwarded = c
            .frontend_requests
            .iter()
            .find(|r| r["incoming"]["x-b3-spanid"] == id(&a))
            .expect("the frontend's record of the request");
        let t = header(request, "X-B3-TraceId");
        let out_id = forwarded["outgoing"]["X-B3-SpanId"].as_str().expect("id");
        let all = [a.clone(), b.clone(), d.clone(), e.clone()];
        for span in &all {
            assert_eq!(trace_id(span), t, "{}", describe(&all));
            assert!(!flag(span, "debug"), "{span}");
        }
        // client CLIENT: the header's span id, no parent (none was sent).
        assert_eq!(parent(&a), None, "{}", describe(&all));
        assert!(!flag(&a, "shared"));
        // frontend SERVER shares it.
        assert_eq!(id(&b), id(&a), "{}", describe(&all));
        assert!(flag(&b, "shared"), "{b}");
        assert_eq!(parent(&b), None, "{}", describe(&all));
        // frontend CLIENT: the id the frontend sent, its parent the incoming span id.
        assert_eq!(id(&d), out_id, "{}", describe(&all));
        assert_eq!(parent(&d), Some(id(&a)), "{}", describe(&all));
        assert!(!flag(&d, "shared"));
        // backend SERVER shares the frontend's outgoing id; parent = X-B3-ParentSpanId.
        assert_eq!(id(&e), out_id, "{}", describe(&all));
        assert!(flag(&e, "shared"), "{e}");
        assert_eq!(parent(&e), Some(id(&a)), "{}", describe(&all));
    }
    store_matches_collector(&c);
}

#[test]
fn three_tiers_with_w3c_propagation() {
    let _serial = serial();
    let c = chain("tr4w", "w3c", CHAIN, &[]);
    let sent = requests(&c.client);
    for [a, b, d, e] in chain_traces(&c) {
        let all = [a.clone(), b.clone(), d.clone(), e.clone()];
        let request = sent
            .iter()
            .find(|r| header(r, "traceparent").split('-').nth(2) == Some(id(&a)))
            .unwrap_or_else(|| panic!("no request whose traceparent has {}", id(&a)));
        let tp: Vec<&str> = header(request, "traceparent").split('-').collect();
        let forwarded = c
            .frontend_requests
            .iter()
            .find(|r| r["incoming"]["traceparent"] == header(request, "traceparent"))
            .expect("the frontend's record of the request");
        let out: Vec<&str> = forwarded["outgoing"]["traceparent"]
            .as_str()
            .expect("outgoing traceparent")
            .split('-')
            .collect();
        for span in &all {
            assert_eq!(trace_id(span), tp[1], "{}", describe(&all));
            assert!(!flag(span, "shared") && !flag(span, "debug"), "{span}");
        }
        // client CLIENT: the traceparent's parent id is its id; nothing above it.
        assert_eq!(parent(&a), None, "{}", describe(&all));
        // frontend SERVER: a new span, child of the caller's.
        assert_ne!(id(&b), id(&a));
        assert_eq!(parent(&b), Some(id(&a)), "{}", describe(&all));
        // frontend CLIENT: the id the frontend sent; its parent inferred (same thread).
        assert_eq!(id(&d), out[2], "{}", describe(&all));
        assert_eq!(parent(&d), Some(id(&b)), "{}", describe(&all));
        // backend SERVER: a new span, child of the frontend's outgoing one.
        assert_ne!(id(&e), id(&d));
        assert_eq!(parent(&e), Some(id(&d)), "{}", describe(&all));
        let ids: BTreeSet<&str> = all.iter().map(id).collect();
        assert_eq!(ids.len(), 4, "{}", describe(&all));
    }
    store_matches_collector(&c);
}

#[test]
fn three_tiers_without_headers() {
    let _serial = serial();
    let c = chain("tr4n", "none", CHAIN, &[]);
    for request in requests(&c.client) {
        assert_eq!(request["headers"], serde_json::json!({}), "no headers sent");
    }
    for r in &c.frontend_requests {
        assert_eq!(r["incoming"], serde_json::json!({}), "{r}");
        assert_eq!(r["outgoing"], serde_json::json!({}), "{r}");
    }
    for [a, b, d, e] in chain_traces(&c) {
        let all = [a.clone(), b.clone(), d.clone(), e.clone()];
        assert_eq!(parent(&a), None, "{}", describe(&all));
        assert_eq!(
            parent(&b),
            Some(id(&a)),
            "same connection\n{}",
            describe(&all)
        );
        assert_eq!(parent(&d), Some(id(&b)), "same thread\n{}", describe(&all));
        assert_eq!(
            parent(&e),
            Some(id(&d)),
            "same connection\n{}",
            describe(&all)
        );
        let ids: BTreeSet<&str> = all.iter().map(id).collect();
        assert_eq!(ids.len(), 4, "{}", describe(&all));
        for span in &all {
            assert!(!flag(span, "shared") && !flag(span, "debug"), "{span}");
        }
    }
    store_matches_collector(&c);
}

// ---------------------------------------------------------------------------------------------
// 5. Query API

#[test]
fn query_api_serves_what_was_exported_and_validates() {
    const K: usize = 6;
    let _serial = serial();
    let before_ms = now_ms();
    thread::sleep(Duration::from_millis(5));
    // Requests 0 and 3 take 80 ms more in the frontend and fail with 500 there.
    let c = chain(
        "tr5",
        "none",
        K,
        &[("--query", "status=500&sleep=80"), ("--query-every", "3")],
    );
    let client = c.services[0].as_str();
    let traces = by_trace(&c.spans);
    assert_eq!(traces.len(), K, "{}", describe(&c.spans));
    let slow: BTreeSet<String> = traces
        .iter()
        .filter(|(_, spans)| {
            spans
                .iter()
                .any(|s| service(s) == "frontend" && tag(s, "error").is_some())
        })
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(slow.len(), 2, "{}", describe(&c.spans));
    let errors = c.spans.iter().filter(|s| tag(s, "error").is_some()).count();
    assert_eq!(
        errors,
        4,
        "the client CLIENT and frontend SERVER spans of 2 requests carry `error`:\n{}",
        describe(&c.spans)
    );

    // /services, /spans: JSON arrays of strings.
    let services = string_array(&api(&c.agent, "/api/v2/services"), "/api/v2/services");
    for s in &c.services {
        assert!(
            services.contains(s),
            "{s} not in /api/v2/services: {services:?}"
        );
    }
    let names = string_array(
        &api(&c.agent, "/api/v2/spans?serviceName=frontend"),
        "/api/v2/spans",
    );
    let expected: BTreeSet<String> = ["get /checkout/*", "get /stock/checkout/*"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(names, expected, "/api/v2/spans?serviceName=frontend");
    let names = string_array(
        &api(&c.agent, "/api/v2/spans?serviceName=Backend"),
        "/api/v2/spans",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["get /stock/checkout/*"],
        "/api/v2/spans?serviceName=Backend"
    );

    store_matches_collector(&c);

    // Every trace of the client, complete.
    let path = format!("/api/v2/traces?serviceName={client}&limit=1000");
    let listed = api(&c.agent, &path);
    validate(&listed, "ListOfTraces", &path);
    let all: Vec<Value> = listed
        .as_array()
        .expect("traces")
        .iter()
        .flat_map(|t| t.as_array().expect("trace").clone())
        .collect();
    assert_eq!(keys(&all), keys(&c.spans), "{path}");

    let trace_ids = |path: &str| -> BTreeSet<String> {
        let doc = api(&c.agent, path);
        validate(&doc, "ListOfTraces", path);
        doc.as_array()
            .expect("traces")
            .iter()
            .map(|t| {
                let ids: BTreeSet<&str> =
                    t.as_array().expect("trace").iter().map(trace_id).collect();
                assert_eq!(ids.len(), 1, "{path}: a trace of several trace ids: {t}");
                ids.into_iter().next().expect("one").to_owned()
            })
            .collect()
    };
    let everything: BTreeSet<String> = traces.keys().cloned().collect();
    let span_name = "get%20/stock/checkout/*";
    assert_eq!(
        trace_ids(&format!(
            "/api/v2/traces?serviceName=backend&spanName={span_name}&limit=100"
        )),
        everything,
        "by span name"
    );
    assert_eq!(
        trace_ids("/api/v2/traces?serviceName=frontend&minDuration=50000&limit=100"),
        slow,
        "minDuration=50000"
    );
    let limited = trace_ids("/api/v2/traces?serviceName=frontend&limit=2");
    assert_eq!(limited.len(), 2, "limit=2: {limited:?}");
    assert!(limited.is_subset(&everything));
    let now = now_ms() + 1000;
    assert_eq!(
        trace_ids(&format!(
            "/api/v2/traces?serviceName=frontend&endTs={now}&lookback=3600000&limit=100"
        )),
        everything,
        "endTs=now"
    );
    assert_eq!(
        trace_ids(&format!(
            "/api/v2/traces?serviceName=frontend&endTs={before_ms}&lookback=3600000&limit=100"
        )),
        BTreeSet::new(),
        "endTs before the run"
    );

    // Dependencies: exact call and error counts between the three services.
    let path = format!("/api/v2/dependencies?endTs={now}&lookback=3600000");
    let links = api(&c.agent, &path);
    validate(&links, "DependencyLinks", &path);
    let mine: BTreeMap<(String, String), (u64, u64)> = links
        .as_array()
        .expect("links")
        .iter()
        .filter(|l| {
            c.services.contains(&text(l, "parent").to_owned())
                || c.services.contains(&text(l, "child").to_owned())
        })
        .map(|l| {
            (
                (text(l, "parent").to_owned(), text(l, "child").to_owned()),
                (
                    l["callCount"].as_u64().expect("callCount"),
                    l["errorCount"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect();
    let expected: BTreeMap<(String, String), (u64, u64)> = [
        ((client.to_owned(), "frontend".to_owned()), (K as u64, 2)),
        (("frontend".to_owned(), "backend".to_owned()), (K as u64, 0)),
    ]
    .into_iter()
    .collect();
    assert_eq!(mine, expected, "{path}: {links}");
    let path = format!("/api/v2/dependencies?endTs={before_ms}&lookback=3600000");
    let links = api(&c.agent, &path);
    validate(&links, "DependencyLinks", &path);
    assert!(
        !links
            .as_array()
            .expect("links")
            .iter()
            .any(|l| text(l, "child") == "frontend"),
        "{path}: {links}"
    );
    let missing = c
        .agent
        .get("/api/v2/trace/0123456789abcdef0123456789abcdef");
    assert_eq!(missing.status, 404, "unknown trace: {}", missing.text());
}

/// 64-bit trace ids (B3 with 16 hex digits, a traceparent whose high half is zero) are written
/// as 16 hex digits, and the store finds the trace under both spellings.
#[test]
fn sixty_four_bit_trace_ids_are_written_with_16_digits() {
    let _serial = serial();
    let collector = Collector::start("tr8-coll", &[]);
    let agent = start_agent(&agent_args(&collector.endpoint(), &[]));
    let server = Service::start("tr8-svc", "tr8-service", None, "none");
    let b3 = run_client(
        "tr8-cli",
        "tr8-client",
        server.port,
        3,
        &[("--propagate", "b3-64")],
    );
    let w3c = run_client(
        "tr8-cli",
        "tr8-client",
        server.port,
        3,
        &[("--propagate", "w3c-64")],
    );
    server.finish();
    let spans = collector.wait_spans(&["tr8-client", "tr8-service"], 12);
    let mut expected: BTreeSet<String> = requests(&b3)
        .iter()
        .map(|r| header(r, "X-B3-TraceId").to_owned())
        .collect();
    expected.extend(requests(&w3c).iter().map(|r| {
        header(r, "traceparent")
            .split('-')
            .nth(1)
            .expect("trace id")[16..]
            .to_owned()
    }));
    let got: BTreeSet<String> = spans.iter().map(|s| trace_id(s).to_owned()).collect();
    assert_eq!(got, expected, "{}", describe(&spans));
    for (short, spans) in by_trace(&spans) {
        assert_eq!(spans.len(), 2);
        for id in [short.clone(), format!("{}{short}", "0".repeat(16))] {
            let trace = api(&agent, &format!("/api/v2/trace/{id}"));
            validate(&trace, "Trace", "/api/v2/trace");
            assert_eq!(
                sorted(trace.as_array().expect("trace").clone()),
                sorted(spans.clone()),
                "/api/v2/trace/{id}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Malformed trace headers

#[test]
fn malformed_trace_headers_are_counted_and_ignored() {
    let _serial = serial();
    let bad = serde_json::json!([
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"},
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01"},
        {"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"},
        {"traceparent": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"},
        {"traceparent": "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        {"b3": "garbage"},
        {"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-x"},
        {"b3": "zz-e457b5a2e4d86bd1"},
        {"X-B3-TraceId": "not-hex-at-all", "X-B3-SpanId": "e457b5a2e4d86bd1"},
        {"X-B3-TraceId": "80f198ee56343ba864fe8b2a57d3eff7"},
    ]);
    let sets = bad.as_array().expect("sets").len();
    let count = 2 * sets;
    let collector = Collector::start("tr6-coll", &[]);
    let agent = start_agent(&agent_args(&collector.endpoint(), &[]));
    let before = agent.value(CONTEXT_INVALID, &[]);
    let server = Service::start("tr6-svc", "tr6-service", None, "none");
    run_client(
        "tr6-cli",
        "tr6-client",
        server.port,
        count,
        &[("--headers-json", &bad.to_string())],
    );
    let served = server.finish();
    assert_eq!(served.len(), count);
    let spans = collector.wait_spans(&["tr6-client", "tr6-service"], 2 * count);
    // Both ends of every request are on this node: each observed side (CLIENT and SERVER span)
    // saw the malformed header once.
    let after = agent.wait_for(CONTEXT_INVALID, &[], before + (2 * count) as f64, EXPORT);
    drop(after);
    let stats = collector.stats();
    assert_eq!(stats["rejected_posts"], 0, "collector: {stats}");
    let bad_ids = [
        "4bf92f3577b34da6a3ce929d0e0e473",
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "80f198ee56343ba864fe8b2a57d3eff7",
        "00000000000000000000000000000000",
    ];
    let traces = by_trace(&spans);
    assert_eq!(
        traces.len(),
        count,
        "a new trace per request:\n{}",
        describe(&spans)
    );
    for spans in traces.values() {
        let c = one(spans, "tr6-client", "CLIENT");
        let s = one(spans, "tr6-service", "SERVER");
        assert!(!bad_ids.contains(&trace_id(c)), "{}", describe(spans));
        assert!(
            !["00f067aa0ba902b7", "e457b5a2e4d86bd1"].contains(&id(c)),
            "{}",
            describe(spans)
        );
        assert_eq!(parent(c), None, "{}", describe(spans));
        assert_eq!(parent(s), Some(id(c)), "{}", describe(spans));
        assert!(
            !flag(s, "shared") && !flag(s, "debug"),
            "{}",
            describe(spans)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Sampling

/// At ratio 0 only debug traces are kept: not requests without context, not contexts that
/// say not sampled.
#[test]
fn ratio_zero_keeps_only_debug_traces() {
    const EACH: usize = 8;
    let _serial = serial();
    let collector = Collector::start("tr7-coll", &[]);
    let agent = start_agent(&agent_args(
        &collector.endpoint(),
        &[("--sampling-ratio", "0")],
    ));
    let server = Service::start("tr7-svc", "tr7-service", None, "none");
    for mode in ["none", "w3c-off", "b3-off"] {
        run_client(
            "tr7-cli",
            "tr7-client",
            server.port,
            EACH,
            &[("--propagate", mode)],
        );
    }
    let debug = run_client(
        "tr7-cli",
        "tr7-client",
        server.port,
        EACH,
        &[("--propagate", "b3-debug")],
    );
    server.finish();
    let spans = collector.wait_spans(&["tr7-client", "tr7-service"], 2 * EACH);
    agent.wait_for(EXPORTED, &[], (2 * EACH) as f64, EXPORT);
    let wanted: BTreeSet<&str> = requests(&debug)
        .iter()
        .map(|r| header(r, "X-B3-TraceId"))
        .collect();
    for s in &spans {
        assert!(flag(s, "debug"), "{}", describe(&spans));
        assert!(wanted.contains(trace_id(s)), "{}", describe(&spans));
    }
    // The store holds the same: nothing of the unsampled requests.
    let listed = api(&agent, "/api/v2/traces?serviceName=tr7-service&limit=1000");
    let listed: Vec<Value> = listed
        .as_array()
        .expect("traces")
        .iter()
        .flat_map(|t| t.as_array().expect("trace").clone())
        .collect();
    assert_eq!(keys(&listed), keys(&spans), "store at ratio 0");
    let m = agent.metrics();
    assert_eq!(m.value(EXPORTED, &[]), (2 * EACH) as f64);
}

// ---------------------------------------------------------------------------------------------
// 8. The store's admission rate

/// At `--trace-store-rate 1` (a burst of 10 traces, then 1 per second) the collector still
/// gets every span, the store keeps at most the burst plus one trace per second of the test,
/// every stored trace is whole (the client's and the server's span), and the spans the store
/// turned away are counted.
#[test]
fn store_keeps_whole_traces_at_its_admission_rate() {
    const COUNT: usize = 40;
    let _serial = serial();
    let collector = Collector::start("tr8-coll", &[]);
    let started = Instant::now();
    let agent = start_agent(&agent_args(
        &collector.endpoint(),
        &[("--trace-store-rate", "1")],
    ));
    let server = Service::start("tr8-svc", "tr8-service", None, "none");
    run_client("tr8-cli", "tr8-client", server.port, COUNT, &[]);
    server.finish();
    let spans = collector.wait_spans(&["tr8-client", "tr8-service"], 2 * COUNT);
    let exported = by_trace(&spans);
    assert_eq!(exported.len(), COUNT, "{}", describe(&spans));
    let seconds = started.elapsed().as_secs() as usize + 1;
    let mut stored = BTreeMap::new();
    for svc in ["tr8-service", "tr8-client"] {
        let path = format!("/api/v2/traces?serviceName={svc}&limit=1000");
        for trace in api(&agent, &path).as_array().expect("traces") {
            let trace = trace.as_array().expect("trace").clone();
            let id = trace_id(&trace[0]).to_owned();
            assert_eq!(
                Some(keys(&trace)),
                exported.get(&id).map(|t| keys(t)),
                "{path}: stored trace {id} is not whole:\n{}",
                describe(&trace)
            );
            stored.insert(id, trace);
        }
    }
    assert!(
        !stored.is_empty() && stored.len() <= 10 + seconds,
        "{} traces stored in {seconds} s at 1 per second after a burst of 10",
        stored.len()
    );
    let declined = agent
        .metrics()
        .value("meshtap_trace_store_declined_spans_total", &[]);
    assert!(
        declined >= (2 * (COUNT - stored.len())) as f64,
        "declined {declined}, stored {} of {COUNT} traces",
        stored.len()
    );
}

/// A context that says not sampled produces no span even at ratio 1.
#[test]
fn unsampled_contexts_produce_no_spans() {
    const EACH: usize = 6;
    let _serial = serial();
    let collector = Collector::start("tr7u-coll", &[]);
    let agent = start_agent(&agent_args(&collector.endpoint(), &[]));
    let before = agent.value(NOT_SAMPLED, &[]);
    let server = Service::start("tr7u-svc", "tr7u-service", None, "none");
    for mode in ["w3c-off", "b3-off"] {
        run_client(
            "tr7u-cli",
            "tr7u-client",
            server.port,
            EACH,
            &[("--propagate", mode)],
        );
    }
    let single = serde_json::json!([
        {"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"},
        {"b3": "a0f198ee56343ba864fe8b2a57d3eff7-a457b5a2e4d86bd1-0-05e3ac9a4f6e3b90"},
    ]);
    run_client(
        "tr7u-cli",
        "tr7u-client",
        server.port,
        EACH,
        &[("--headers-json", &single.to_string())],
    );
    // Control: plain requests, sent last, do become spans.
    let plain = run_client("tr7u-cli", "tr7u-client", server.port, EACH, &[]);
    server.finish();
    let spans = collector.wait_spans(&["tr7u-client", "tr7u-service"], 2 * EACH);
    let first_plain = micros(&requests(&plain)[0]["t"]);
    for s in &spans {
        assert!(
            window(s).0 + 5000 >= first_plain,
            "a span of an unsampled request:\n{}",
            describe(&spans)
        );
    }
    // Every observed side of the 3 × EACH unsampled requests is counted.
    agent.wait_for(NOT_SAMPLED, &[], before + (2 * 3 * EACH) as f64, EXPORT);
}

/// A context that says sampled is honoured whatever the local ratio: `--sampling-ratio` decides
/// for traces that start here ("no spans exported for requests without context").
#[test]
fn sampled_contexts_are_kept_at_ratio_zero() {
    const EACH: usize = 5;
    let _serial = serial();
    let collector = Collector::start("tr7s-coll", &[]);
    let agent = start_agent(&agent_args(
        &collector.endpoint(),
        &[("--sampling-ratio", "0")],
    ));
    let server = Service::start("tr7s-svc", "tr7s-service", None, "none");
    let w3c = run_client(
        "tr7s-cli",
        "tr7s-client",
        server.port,
        EACH,
        &[("--propagate", "w3c")],
    );
    let b3 = run_client(
        "tr7s-cli",
        "tr7s-client",
        server.port,
        EACH,
        &[("--propagate", "b3")],
    );
    server.finish();
    let mut wanted: BTreeSet<String> = requests(&b3)
        .iter()
        .map(|r| header(r, "X-B3-TraceId").to_owned())
        .collect();
    wanted.extend(requests(&w3c).iter().map(|r| {
        header(r, "traceparent")
            .split('-')
            .nth(1)
            .expect("id")
            .to_owned()
    }));
    let spans = collector.wait_spans(&["tr7s-client", "tr7s-service"], 4 * EACH);
    let got: BTreeSet<String> = spans.iter().map(|s| trace_id(s).to_owned()).collect();
    assert_eq!(got, wanted, "{}", describe(&spans));
    agent.wait_for(EXPORTED, &[], (4 * EACH) as f64, EXPORT);
}

/// curl -> nginx -> python backend, nginx passing curl's trace context through unchanged (it
/// is no tracer): W3C `traceparent`, and B3 with a parent span id. nginx's CLIENT span must not
/// take curl's span id (two spans with one id), and the backend's SERVER span is a child of
/// nginx's CLIENT span, not of curl's. Both with a Content-Length response and with one whose
/// body ends at the close (`/api/unsized`): then nginx's upstream exchange completes after the
/// close, once nginx's SERVER span was emitted.
#[test]
fn a_proxy_passing_its_callers_context_through_gets_spans_of_its_own() {
    let _serial = serial();
    let (nginx_name, backend_name) = ("tr-px-nginx", "tr-px-backend");
    let mut backend = Script::new("http_backend.py", "tr-px-backend")
        .env("OTEL_SERVICE_NAME", backend_name)
        .opt("--bind", "127.0.0.1")
        .spawn();
    let backend_port = port_of(&backend.expect_event("listening", STARTUP));
    let front: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let service_port = format!("{}={nginx_name}", front.port());
    let agent = Agent::start(&[
        "--service-port",
        &service_port,
        "--trace-store-rate",
        "0",
        "--trace-store-spans",
        "200000",
    ]);
    let nginx = meshtap_tests::Nginx::start(
        meshtap_tests::NginxConfig::new(front).backend(
            format!("127.0.0.1:{backend_port}")
                .parse()
                .expect("backend addr"),
        ),
        None,
    );
    // (trace id, curl's span id, curl's parent (B3), headers)
    let mut sent: Vec<(String, String, Option<String>, Vec<String>)> = Vec::new();
    for (n, path) in ["/api/users/5", "/api/unsized"].iter().enumerate() {
        let trace = format!("4bf92f3577b34da6a3ce929d0e0e47{n}0");
        let span = format!("00f067aa0ba902b{n}");
        let tp = format!("traceparent: 00-{trace}-{span}-01");
        sent.push((trace, span, None, vec![tp, path.to_string()]));
        let trace = format!("5bf92f3577b34da6a3ce929d0e0e47{n}0");
        let span = format!("10f067aa0ba902b{n}");
        let parent = format!("20f067aa0ba902b{n}");
        let headers = vec![
            format!("X-B3-TraceId: {trace}"),
            format!("X-B3-SpanId: {span}"),
            format!("X-B3-ParentSpanId: {parent}"),
            "X-B3-Sampled: 1".to_string(),
        ];
        let mut with_path = headers;
        with_path.push(path.to_string());
        sent.push((trace, span, Some(parent), with_path));
    }
    for (_, _, _, args) in &sent {
        let (path, headers) = args.split_last().expect("path");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        cmd.arg(format!("http://{front}{path}"));
        let out = run_command(&mut cmd, RUN);
        assert_eq!(out.stdout.trim(), "200", "curl {args:?}: {}", out.stderr);
    }
    // Not found (404) until its first span is stored.
    let fetch = |trace: &str| -> Vec<Value> {
        let path = format!("/api/v2/trace/{trace}");
        if agent.get(&path).status == 404 {
            return Vec::new();
        }
        api(&agent, &path).as_array().cloned().unwrap_or_default()
    };
    let deadline = Instant::now() + EXPORT;
    while sent.iter().any(|(t, ..)| fetch(t).len() < 4) && Instant::now() < deadline {
        thread::sleep(POLL);
    }
    thread::sleep(QUIET);
    for (trace, span, parent_of_curl, args) in &sent {
        let spans = fetch(trace);
        validate(&Value::Array(spans.clone()), "Trace", "/api/v2/trace/{id}");
        assert_eq!(spans.len(), 4, "{args:?}\n{}", describe(&spans));
        let find = |svc: &str, k: &str| {
            spans
                .iter()
                .find(|s| service(s) == svc && kind(s) == k)
                .unwrap_or_else(|| panic!("no {k} span of {svc}\n{}", describe(&spans)))
        };
        let curl = find("curl", "CLIENT");
        let nginx_server = find(nginx_name, "SERVER");
        let nginx_client = find(nginx_name, "CLIENT");
        let backend_server = find(backend_name, "SERVER");
        let all = describe(&spans);
        assert_eq!(id(curl), span, "{all}");
        assert_eq!(parent(curl), parent_of_curl.as_deref(), "{all}");
        let unique: BTreeSet<&str> = spans.iter().map(id).collect();
        if parent_of_curl.is_some() {
            // B3: nginx's SERVER span is the other half of curl's.
            assert_eq!(id(nginx_server), span, "{all}");
            assert!(flag(nginx_server, "shared"), "{all}");
            assert_eq!(unique.len(), 3, "{all}");
        } else {
            assert_eq!(parent(nginx_server), Some(span.as_str()), "{all}");
            assert_eq!(unique.len(), 4, "{all}");
        }
        assert_ne!(id(nginx_client), span, "not curl's id\n{all}");
        assert_eq!(parent(nginx_client), Some(id(nginx_server)), "{all}");
        assert_eq!(parent(backend_server), Some(id(nginx_client)), "{all}");
        assert!(!flag(backend_server, "shared"), "{all}");
        assert!(!unique.is_empty() && id(backend_server) != span, "{all}");
    }
    // The proxy is one service on both of its sides: its calls are `tr-px-nginx`'s, and the
    // service graph has one edge into the backend, each request counted once per side.
    let total = sent.len() as f64;
    agent.wait_for(
        &count(HTTP_CLIENT_DURATION),
        &[
            ("service_name", nginx_name),
            ("http_response_status_code", "200"),
        ],
        total,
        SETTLE_METRICS,
    );
    let m = agent.metrics();
    m.assert_values(&[
        (
            &count(HTTP_CLIENT_DURATION),
            &[("service_name", "nginx")],
            0.0,
        ),
        (
            &count(HTTP_SERVER_DURATION),
            &[
                ("service_name", backend_name),
                ("http_route", "/api/unsized"),
            ],
            total / 2.0,
        ),
        (
            "traces_service_graph_request_total",
            &[("client", nginx_name), ("server", backend_name)],
            total,
        ),
        (
            "traces_service_graph_request_total",
            &[("client", "nginx")],
            0.0,
        ),
    ]);
    drop(nginx);
    backend.send_line("quit");
    backend.finish(RUN);
}
