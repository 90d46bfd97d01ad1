//! Traces, linking: the spans of one request through client -> frontend -> backend form one
//! trace, with B3, with W3C and without any header (the agent infers the parents from the
//! connection and the thread); a proxy that passes its caller's context through unchanged gets
//! spans of its own, and the store serves each trace as the collector received it.
//!
//! How the numbers are kept exact on a node where everything is observed: see
//! [`meshtap_tests::traces`].

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use meshtap_tests::metrics::{HTTP_CLIENT_DURATION, HTTP_SERVER_DURATION, count};
use meshtap_tests::process::{RUN, STARTUP, port_of, run_command};
use meshtap_tests::spans::{describe, flag, id, kind, parent, service, trace_id};
use meshtap_tests::traces::{chain, chain_traces, header, requests, store_matches_collector};
use meshtap_tests::zipkin::{EXPORT, POLL, QUIET, api, validate};
use meshtap_tests::{Agent, Script, free_port, serial};
use serde_json::Value;

/// How long a metric may take to show what the requests did (close waits, pairing).
const SETTLE_METRICS: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Three tiers: client -> frontend -> backend

const CHAIN: usize = 5;

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
// A proxy

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
