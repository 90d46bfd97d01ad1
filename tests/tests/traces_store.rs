//! Traces, the agent's own store and query API: it serves what was exported, in the spec's
//! shapes (traces, services, span names, dependencies, filters by name, duration, time and
//! limit), and at its admission rate it keeps whole traces and counts the rest.
//!
//! How the numbers are kept exact on a node where everything is observed: see
//! [`meshtap_tests::traces`].

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshtap_tests::serial;
use meshtap_tests::spans::{by_trace, describe, keys, service, tag, text, trace_id};
use meshtap_tests::traces::{
    Service, agent_args, chain, run_client, start_agent, store_matches_collector,
};
use meshtap_tests::zipkin::{Collector, api, validate};
use serde_json::Value;

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("ms fit u64")
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

// ---------------------------------------------------------------------------------------------
// Query API

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

// ---------------------------------------------------------------------------------------------
// The store's admission rate

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
