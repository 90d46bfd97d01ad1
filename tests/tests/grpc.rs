//! gRPC, end to end: the real agent and kernel against gRPC implementations nobody here wrote:
//! Python's `grpcio` (the gRPC C core's HTTP/2 transport) and Node's `@grpc/grpc-js` (on Node's
//! own HTTP/2), as servers and clients of each other (`tests/scripts/grpc_app.py`,
//! `tests/scripts/grpc_node.js`: generic handlers, raw-bytes messages, no generated code).
//!
//! Every expected number is what the client library reported for each call (its status code),
//! confirmed by the server's own count of handler invocations. Each call is one exchange per
//! observed side, counted in `rpc_server_duration_seconds` / `rpc_client_duration_seconds` by
//! `rpc_service`, `rpc_method` and `rpc_grpc_status_code`; the service graph counts every call
//! and, as failed, the server-side errors of OpenTelemetry's gRPC conventions (UNKNOWN,
//! DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS).
//!
//! A call past its deadline is the one whose code on the wire is a race (grpcio, checked with
//! strace): the client library reports DEADLINE_EXCEEDED by itself and sends RST_STREAM(CANCEL);
//! the grpcio server, whose own timer (the `grpc-timeout` header) fires at about the same time,
//! writes a Trailers-Only response with `grpc-status: 4` unless the reset reached it first. The
//! gRPC spec maps RST_STREAM(CANCEL) to CANCELLED (1): such a call is counted under 4 or 1, on
//! each side, and nowhere else.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meshtap_tests::h2::{Expect, assert_settled, expect, mismatches, report, stored_spans};
use meshtap_tests::metrics::{
    EXCHANGES, GRAPH_FAILED, GRAPH_REQUESTS, HTTP_CLIENT_DURATION, HTTP_SERVER_DURATION,
    PARSE_ERRORS, PROTOCOL_DETECTED, RPC_CLIENT_DURATION, RPC_SERVER_DURATION, count,
};
use meshtap_tests::process::{RUN, STARTUP, port_of};
use meshtap_tests::spans::{by_trace, describe, id, kind, parent, service, tag, text, trace_id};
use meshtap_tests::{Agent, Metrics, Script, ScriptChild, serial};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(30);
const SERVICE: &str = "meshtap.test.Echo";
const HTTP2: (&str, &str) = ("protocol", "http2");

/// Status codes OpenTelemetry's gRPC conventions count as server errors.
const SERVER_ERRORS: [u64; 6] = [2, 4, 12, 13, 14, 15];
const DEADLINE_EXCEEDED: &str = "4";
const CANCELLED: &str = "1";

fn agent() -> Agent {
    Agent::start(&["--trace-store-spans", "200000", "--trace-store-rate", "0"])
}

/// A gRPC server (`grpc_app.py`, or `grpc_node.py` for grpc-js) named `name`; its port.
fn grpc_server(script: &'static str, name: &str) -> (ScriptChild, u16) {
    let mut child = Script::new(script, name).named().arg("server").spawn();
    let port = port_of(&child.expect_event("listening", STARTUP));
    (child, port)
}

/// A gRPC client (`grpc_app.py` or `grpc_node.py`) named `name` calling 127.0.0.1:`port` with
/// the plan `opts` (see the scripts; an empty value: a flag without one).
fn grpc_client(script: &'static str, name: &str, port: u16, opts: &[(&str, &str)]) -> Script {
    let mut s = Script::new(script, name)
        .named()
        .arg("client")
        .opt("--port", port);
    for (k, v) in opts {
        s = if v.is_empty() { s.arg(k) } else { s.opt(k, v) };
    }
    s
}

/// The server's `done`: handler invocations per method path.
fn stop_server(mut server: ScriptChild) -> BTreeMap<String, u64> {
    server.send_line("stop");
    let done = server.finish(RUN);
    done["served"]
        .as_object()
        .expect("served")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().expect("count")))
        .collect()
}

/// The client's `done` calls: method name (`Unary`) -> status code -> calls.
fn calls(done: &Value) -> BTreeMap<String, BTreeMap<String, u64>> {
    done["calls"]
        .as_object()
        .expect("calls")
        .iter()
        .map(|(path, codes)| {
            let method = path
                .strip_prefix(&format!("/{SERVICE}/"))
                .unwrap_or_else(|| panic!("call path {path}"))
                .to_owned();
            let codes = codes
                .as_object()
                .expect("codes")
                .iter()
                .map(|(c, n)| (c.clone(), n.as_u64().expect("count")))
                .collect();
            (method, codes)
        })
        .collect()
}

fn rpc_labels<'a>(svc: &'a str, method: &'a str, code: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("service_name", svc),
        ("rpc_system", "grpc"),
        ("rpc_service", SERVICE),
        ("rpc_method", method),
        ("rpc_grpc_status_code", code),
    ]
}

/// What a run of calls must show.
#[derive(Default)]
struct Plan {
    /// Exact values.
    exact: Vec<Expect>,
    /// Calls past their deadline: the sum of the series with code 4 and with code 1 (the
    /// labels here leave the code out).
    deadline: Vec<Expect>,
}

/// The checks of `calls` made by `client` to `server` (listening on `port`) on both sides and
/// on the service graph, except for the graph's failed count when deadline calls are in (see
/// [`assert_graph_failed`]).
fn rpc_checks(
    client: &str,
    server: &str,
    port: u16,
    calls: &BTreeMap<String, BTreeMap<String, u64>>,
) -> Plan {
    let port = port.to_string();
    let mut plan = Plan::default();
    let checks = &mut plan.exact;
    let mut total = 0;
    let mut failed = 0;
    let mut deadline = 0;
    for (method, codes) in calls {
        let mut per_method = 0;
        for (code, n) in codes {
            per_method += n;
            if code == DEADLINE_EXCEEDED {
                deadline += n;
                continue;
            }
            assert_ne!(
                code, CANCELLED,
                "no call of these tests is cancelled: {calls:?}"
            );
            if SERVER_ERRORS.contains(&code.parse().expect("numeric code")) {
                failed += n;
            }
            checks.push(expect(
                count(RPC_SERVER_DURATION),
                &rpc_labels(server, method, code),
                *n as f64,
            ));
            let mut c = rpc_labels(client, method, code);
            c.extend([("server_address", "127.0.0.1"), ("server_port", &port)]);
            checks.push(expect(count(RPC_CLIENT_DURATION), &c, *n as f64));
        }
        if let Some(n) = codes.get(DEADLINE_EXCEEDED) {
            // 4 or 1 on each side (see the module documentation): their sum is exact.
            for (family, svc) in [(RPC_SERVER_DURATION, server), (RPC_CLIENT_DURATION, client)] {
                plan.deadline.push(expect(
                    count(family),
                    &[("service_name", svc), ("rpc_method", method)],
                    *n as f64,
                ));
            }
        }
        checks.push(expect(
            count(RPC_SERVER_DURATION),
            &[("service_name", server), ("rpc_method", method)],
            per_method as f64,
        ));
        checks.push(expect(
            count(RPC_CLIENT_DURATION),
            &[
                ("service_name", client),
                ("rpc_method", method),
                ("server_port", &port),
            ],
            per_method as f64,
        ));
        total += per_method;
    }
    checks.extend([
        expect(
            count(RPC_SERVER_DURATION),
            &[("service_name", server)],
            total as f64,
        ),
        expect(
            count(RPC_CLIENT_DURATION),
            &[("service_name", client), ("server_port", &port)],
            total as f64,
        ),
        expect(
            GRAPH_REQUESTS,
            &[("client", client), ("server", server)],
            total as f64,
        ),
        // gRPC is not plain HTTP: nothing of these services in the HTTP families.
        expect(
            count(HTTP_SERVER_DURATION),
            &[("service_name", server)],
            0.0,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &[("service_name", client)],
            0.0,
        ),
    ]);
    if deadline == 0 {
        checks.push(expect(
            GRAPH_FAILED,
            &[("client", client), ("server", server)],
            failed as f64,
        ));
    }
    plan
}

/// The deadline sums of `plan` that do not hold in `m`.
fn deadline_mismatches(m: &Metrics, plan: &Plan) -> Vec<String> {
    plan.deadline
        .iter()
        .filter_map(|c| {
            let labels: Vec<(&str, &str)> = c
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let got: f64 = [DEADLINE_EXCEEDED, CANCELLED]
                .iter()
                .map(|code| {
                    let mut l = labels.clone();
                    l.push(("rpc_grpc_status_code", code));
                    m.value(&c.name, &l)
                })
                .sum();
            (got != c.value).then(|| {
                format!(
                    "{}{:?} with code 4 or 1 = {got}, expected {}",
                    c.name, c.labels, c.value
                )
            })
        })
        .collect()
}

/// Waits until every check of `plan` holds, then checks again a moment later.
fn settle(agent: &Agent, plan: &Plan) -> Metrics {
    let more = [count(RPC_SERVER_DURATION), count(RPC_CLIENT_DURATION)];
    let more: Vec<&str> = more.iter().map(String::as_str).collect();
    agent.wait_until(
        SETTLE,
        |m| deadline_mismatches(m, plan).is_empty() && mismatches(m, &plan.exact).is_empty(),
        |m| {
            format!(
                "{}\n{}",
                deadline_mismatches(m, plan).join("\n"),
                report(m, &plan.exact, &more)
            )
        },
    );
    let m = assert_settled(agent, &plan.exact, SETTLE, &more);
    let late = deadline_mismatches(&m, plan);
    assert!(late.is_empty(), "{}", late.join("\n"));
    m
}

/// The graph's failed count of a run with deadline calls: the explicit server errors plus the
/// deadline calls the server side counted under 4.
fn assert_graph_failed(m: &Metrics, client: &str, server: &str, explicit: u64) {
    let deadline_on_server = m.value(
        &count(RPC_SERVER_DURATION),
        &[
            ("service_name", server),
            ("rpc_grpc_status_code", DEADLINE_EXCEEDED),
        ],
    );
    let failed = m.value(GRAPH_FAILED, &[("client", client), ("server", server)]);
    assert_eq!(
        failed,
        explicit as f64 + deadline_on_server,
        "failed calls on the graph {client} -> {server}: {explicit} server errors plus \
         {deadline_on_server} deadline calls counted 4 on the server side\n{}",
        m.describe(GRAPH_FAILED)
    );
}

/// Every kind of call on one grpcio channel (one connection): unary, server streaming, client
/// streaming, bidirectional, unary calls the server aborts with NOT_FOUND (twice),
/// INVALID_ARGUMENT, INTERNAL, UNIMPLEMENTED, UNAVAILABLE and UNKNOWN, an unregistered method
/// (UNIMPLEMENTED from grpcio itself), calls past their deadline, and 100 concurrent calls.
#[test]
fn grpcio_calls_of_every_kind_exact_counts() {
    const CLIENT: &str = "grpc-py-cli";
    const SERVER: &str = "grpc-py-srv";
    let _serial = serial();
    let agent = agent();
    let (server, port) = grpc_server("grpc_app.py", SERVER);
    let done = grpc_client(
        "grpc_app.py",
        CLIENT,
        port,
        &[
            ("--unary", "20"),
            ("--codes", "5,5,3,13,12,14,2"),
            ("--server-stream", "5"),
            ("--client-stream", "5"),
            ("--bidi", "5"),
            ("--messages", "4"),
            ("--missing", "3"),
            ("--deadline", "2"),
            ("--concurrent", "100"),
        ],
    )
    .run(RUN);
    let calls = calls(&done);
    let served = stop_server(server);
    let code = |m: &str, c: &str| calls.get(m).and_then(|x| x.get(c)).copied().unwrap_or(0);
    assert_eq!(
        (
            code("Unary", "0"),
            code("Unary", "5"),
            code("Unary", "4"),
            code("Missing", "12"),
            code("ServerStream", "0"),
            code("ClientStream", "0"),
            code("Bidi", "0"),
        ),
        (120, 2, 2, 3, 5, 5, 5),
        "the client's calls: {calls:?}"
    );
    let path = |m: &str| format!("/{SERVICE}/{m}");
    assert_eq!(
        (
            served.get(&path("Unary")).copied(),
            served.get(&path("ServerStream")).copied(),
            served.get(&path("ClientStream")).copied(),
            served.get(&path("Bidi")).copied(),
            served.get(&path("Missing")).copied(),
        ),
        (Some(120 + 7 + 2), Some(5), Some(5), Some(5), None),
        "the server's handler invocations"
    );
    let total: u64 = calls.values().flat_map(|c| c.values()).sum();
    let mut plan = rpc_checks(CLIENT, SERVER, port, &calls);
    plan.exact.extend([
        expect(EXCHANGES, &[HTTP2], (2 * total) as f64),
        expect(PROTOCOL_DETECTED, &[HTTP2], 2.0),
        expect(PARSE_ERRORS, &[HTTP2], 0.0),
    ]);
    let m = settle(&agent, &plan);
    // UNIMPLEMENTED from Missing (3) and the codes 13, 12, 14, 2 the handler aborted with.
    assert_graph_failed(&m, CLIENT, SERVER, 3 + 4);
}

/// The gRPC spans of one service and side, waiting until `n` arrived.
fn grpc_spans(agent: &Agent, svc: &str, side: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let spans: Vec<Value> = stored_spans(agent, svc)
            .into_iter()
            .filter(|s| kind(s) == side && service(s) == svc.to_lowercase())
            .collect();
        if spans.len() >= n || Instant::now() >= deadline {
            assert_eq!(
                spans.len(),
                n,
                "{side} spans of {svc}:\n{}",
                describe(&spans)
            );
            return spans;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One span per call per side, named `meshtap.test.Echo/Unary` (Zipkin lower-cases names) with
/// the `rpc.*` tags. A call that carries a W3C `traceparent` (or B3 `x-b3-*`) metadata entry,
/// from grpcio or from grpc-js, has its SERVER span in that trace, a child of the entry's span
/// id. Calls without: no two calls in one trace.
#[test]
fn grpc_spans_follow_traceparent_metadata() {
    const CLIENT: &str = "grpc-span-cli";
    const JS_CLIENT: &str = "grpc-span-js";
    const SERVER: &str = "grpc-span-srv";
    const PLAIN: usize = 10;
    const TRACED: usize = 5;
    const B3: usize = 5;
    const JS_TRACED: usize = 3;
    let _serial = serial();
    let agent = agent();
    let (server, port) = grpc_server("grpc_app.py", SERVER);
    let done = grpc_client(
        "grpc_app.py",
        CLIENT,
        port,
        &[
            ("--unary", &PLAIN.to_string()),
            ("--traced", &TRACED.to_string()),
            ("--b3", &B3.to_string()),
        ],
    )
    .run(RUN);
    // grpc-js Huffman-codes its header values, `traceparent` included.
    let js_done = grpc_client(
        "grpc_node.py",
        JS_CLIENT,
        port,
        &[("--traced", &JS_TRACED.to_string())],
    )
    .run(RUN);
    stop_server(server);
    let n = PLAIN + TRACED + B3;
    let servers = grpc_spans(&agent, SERVER, "SERVER", n + JS_TRACED);
    let clients = grpc_spans(&agent, CLIENT, "CLIENT", n);
    let js_clients = grpc_spans(&agent, JS_CLIENT, "CLIENT", JS_TRACED);
    let mut all = servers.clone();
    all.extend(clients.iter().cloned());
    all.extend(js_clients.iter().cloned());
    let everything = describe(&all);
    for s in &all {
        assert!(
            text(s, "name").eq_ignore_ascii_case(&format!("{SERVICE}/Unary")),
            "span name {:?}\n{everything}",
            text(s, "name")
        );
        for (k, v) in [
            ("rpc.system", "grpc"),
            ("rpc.service", SERVICE),
            ("rpc.method", "Unary"),
            ("rpc.grpc.status_code", "0"),
        ] {
            assert_eq!(tag(s, k), Some(v), "tag {k} of {s}\n{everything}");
        }
    }
    let mut propagated = Vec::new();
    for (key, done) in [("traced", &done), ("b3", &done), ("traced", &js_done)] {
        for call in done[key].as_array().expect("traced calls") {
            let (trace, span) = (
                call["trace"].as_str().expect("trace"),
                call["span"].as_str().expect("span"),
            );
            let found: Vec<&Value> = servers.iter().filter(|s| trace_id(s) == trace).collect();
            assert_eq!(
                found.len(),
                1,
                "one SERVER span in the {key} call's trace {trace}:\n{everything}"
            );
            if key == "b3" {
                // B3 is Zipkin's shared-span model: the SERVER span shares the caller's span
                // id (and, without X-B3-ParentSpanId, has no parent).
                assert_eq!(
                    (id(found[0]), parent(found[0])),
                    (span, None),
                    "the SERVER span of the b3 call shares the caller's span\n{everything}"
                );
            } else {
                assert_eq!(
                    parent(found[0]),
                    Some(span),
                    "the SERVER span of the {key} call is a child of the caller's span\n{everything}"
                );
                assert_ne!(id(found[0]), span, "{everything}");
            }
            propagated.push(trace.to_owned());
        }
    }
    assert_eq!(propagated.len(), TRACED + B3 + JS_TRACED);
    for (trace, spans) in by_trace(&all) {
        let s = spans.iter().filter(|s| kind(s) == "SERVER").count();
        let c = spans.iter().filter(|s| kind(s) == "CLIENT").count();
        assert!(
            s <= 1 && c <= 1,
            "trace {trace} holds more than one call:\n{}",
            describe(&spans)
        );
    }
}

/// Node's @grpc/grpc-js client against the grpcio server, then the grpcio client against a
/// grpc-js server: every kind of call, error codes, an unregistered method, 50 concurrent calls.
#[test]
fn grpc_js_and_grpcio_against_each_other() {
    let _serial = serial();
    let agent = agent();
    let plan: &[(&str, &str)] = &[
        ("--unary", "10"),
        ("--codes", "5,3,13,14"),
        ("--server-stream", "3"),
        ("--client-stream", "3"),
        ("--bidi", "3"),
        ("--messages", "4"),
        ("--missing", "2"),
        ("--concurrent", "50"),
    ];
    let mut all = Plan::default();
    let mut total = 0;
    // (client script, client name, server script, server name)
    let pairs = [
        ("grpc_node.py", "grpc-js-cli", "grpc_app.py", "grpc-py-srv"),
        ("grpc_app.py", "grpc-py-cli", "grpc_node.py", "grpc-js-srv"),
    ];
    for (cli_script, cli, srv_script, srv) in pairs {
        let (server, port) = grpc_server(srv_script, srv);
        let done = grpc_client(cli_script, cli, port, plan).run(RUN);
        let calls = calls(&done);
        let served = stop_server(server);
        let unary = calls["Unary"].values().sum::<u64>();
        assert_eq!(
            (
                unary,
                calls["Missing"].get("12").copied(),
                served.get(&format!("/{SERVICE}/Unary")).copied()
            ),
            (64, Some(2), Some(64)),
            "{cli} -> {srv}: calls {calls:?}, served {served:?}"
        );
        total += calls.values().flat_map(|c| c.values()).sum::<u64>();
        let plan = rpc_checks(cli, srv, port, &calls);
        all.exact.extend(plan.exact);
        all.deadline.extend(plan.deadline);
    }
    all.exact.extend([
        expect(EXCHANGES, &[HTTP2], (2 * total) as f64),
        expect(PROTOCOL_DETECTED, &[HTTP2], 4.0),
        expect(PARSE_ERRORS, &[HTTP2], 0.0),
    ]);
    settle(&agent, &all);
}

/// A grpcio channel open (and used: its HPACK dynamic tables filled) before the agent starts,
/// used again after: the agent never saw the connection preface nor the header blocks that
/// filled the tables (grpcio indexes `:path`, `content-type`, `user-agent`... and refers to them
/// by index from the second call on). It must invent nothing: no series of these services under
/// a method, code or family the calls did not have; each call after the start either counted
/// right or counted as not decoded (`meshtap_parse_errors_total{protocol="http2"}`, reasons
/// `hpack_unknown_index` / `header_block_lost`). A second channel opened after the start (a
/// new connection, preface and all) is counted exactly.
#[test]
fn agent_started_on_an_open_grpc_channel() {
    const CLIENT: &str = "grpc-mid-cli";
    const SERVER: &str = "grpc-mid-srv";
    const K: u64 = 10;
    const FRESH: u64 = 4;
    let _serial = serial();
    let (server, port) = grpc_server("grpc_app.py", SERVER);
    let mut client = grpc_client(
        "grpc_app.py",
        CLIENT,
        port,
        &[
            ("--unary", &K.to_string()),
            ("--fresh", &FRESH.to_string()),
            ("--hold", ""),
        ],
    )
    .spawn();
    client.expect_event("ready", STARTUP);
    let agent = agent();
    client.send_line("go");
    let done = client.finish(RUN);
    let calls = calls(&done);
    assert_eq!(
        (
            calls["Unary"].get("0").copied(),
            calls["ServerStream"].get("0").copied()
        ),
        (Some(2 * K), Some(FRESH)),
        "the client's calls: {calls:?}"
    );
    stop_server(server);

    // The fresh channel: exact.
    let port_s = port.to_string();
    let mut fresh = rpc_labels(CLIENT, "ServerStream", "0");
    fresh.extend([("server_address", "127.0.0.1"), ("server_port", &port_s)]);
    let checks = vec![
        expect(
            count(RPC_SERVER_DURATION),
            &rpc_labels(SERVER, "ServerStream", "0"),
            FRESH as f64,
        ),
        expect(count(RPC_CLIENT_DURATION), &fresh, FRESH as f64),
    ];
    let m = assert_settled(&agent, &checks, SETTLE, &[PARSE_ERRORS]);

    // Nothing invented: every series of these services names only what the calls were.
    let mut wrong = Vec::new();
    for s in &m.samples {
        let svc = s.labels.get("service_name").map(String::as_str);
        if !matches!(svc, Some(CLIENT | SERVER)) {
            continue;
        }
        let label = |k: &str| s.labels.get(k).map_or("", String::as_str);
        if s.name.starts_with("http_") {
            wrong.push(format!("gRPC calls in an HTTP family: {s}"));
        } else if s.name.starts_with("rpc_") {
            let ok = matches!(label("rpc_system"), "grpc")
                && matches!(label("rpc_service"), SERVICE | "")
                && matches!(label("rpc_method"), "Unary" | "ServerStream" | "")
                && matches!(label("rpc_grpc_status_code"), "0" | "");
            if !ok {
                wrong.push(format!("a label no call had: {s}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Counted: the K calls on the old connection, on each of its two sides, exported right or
    // counted as not decoded.
    let unary = |family: &str, svc: &str| {
        m.value(
            &count(family),
            &[("service_name", svc), ("rpc_method", "Unary")],
        )
    };
    let exported = unary(RPC_SERVER_DURATION, SERVER) + unary(RPC_CLIENT_DURATION, CLIENT);
    let undecoded = m.value(PARSE_ERRORS, &[HTTP2, ("reason", "hpack_unknown_index")])
        + m.value(PARSE_ERRORS, &[HTTP2, ("reason", "header_block_lost")]);
    assert!(
        exported <= (2 * K) as f64 && exported + undecoded >= (2 * K) as f64,
        "{K} calls on the connection found open, seen from both ends: {exported} exported, \
         {undecoded} header blocks not decoded\n{}\n{}\n{}",
        m.describe(&count(RPC_SERVER_DURATION)),
        m.describe(&count(RPC_CLIENT_DURATION)),
        m.describe(PARSE_ERRORS)
    );
}
