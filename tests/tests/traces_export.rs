//! Traces, delivery: every exchange becomes a CLIENT and a SERVER span that reach a Zipkin
//! collector; a collector answering 503 at first gets everything later; without a collector the
//! drops are counted exactly and nothing else suffers.
//!
//! How the numbers are kept exact on a node where everything is observed: see
//! [`meshtap_tests::traces`].

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::Instant;

use meshtap_tests::metrics::{HTTP_CLIENT_DURATION, HTTP_SERVER_DURATION, count};
use meshtap_tests::spans::{
    assert_inside, by_trace, describe, flag, id, keys, kind, one, parent, remote_service, service,
    tag, text, trace_id, window,
};
use meshtap_tests::traces::{
    EXPORTED, Service, agent_args, header, micros, requests, run_client, start_agent,
};
use meshtap_tests::zipkin::{Collector, EXPORT, POLL, QUIET};
use meshtap_tests::{Agent, Metrics, free_port, serial};
use serde_json::Value;

const DROPPED: &str = "meshtap_spans_dropped_total";
const PENDING: &str = "meshtap_spans_pending";
const DROP_REASONS: [&str; 5] = [
    "invalid",
    "queue_full",
    "rejected",
    "retries_exhausted",
    "shutdown",
];

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
