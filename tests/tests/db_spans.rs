//! Spans across a web service and its databases: a Python service (`db_service.py`, a
//! ThreadingHTTPServer) answers each `GET /order/<id>` after one PostgreSQL query (pg8000, the
//! id a literal in the SQL text) and one Redis command (redis-py, the id in the key), both made
//! by the thread serving the request on connections opened at start. Every request becomes one
//! trace: the client's CLIENT span, the service's SERVER span, under it exactly the two
//! database CLIENT spans (the thread rule), under each the database's SERVER span (both ends on
//! this node). No id from the requests appears in any span or `/metrics` label: the query
//! text is sanitized. A SQL comment carrying a `traceparent` (sqlcommenter) puts the
//! PostgreSQL SERVER span in that trace.
//!
//! One PostgreSQL, one redis-server and one agent for the binary: one test runs the scenarios
//! in order.

use std::time::{Duration, Instant};

use meshtap_tests::db::{Postgres, redis_server, run};
use meshtap_tests::metrics::{HTTP_CLIENT_DURATION, HTTP_SERVER_DURATION, count};
use meshtap_tests::process::{STARTUP, port_of};
use meshtap_tests::spans::{
    assert_inside, by_trace, describe, id, kind, one, parent, service, tag, text,
};
use meshtap_tests::traces::{header, requests, run_client};
use meshtap_tests::zipkin::api;
use meshtap_tests::{Agent, Metrics, Script, free_port, serial};
use serde_json::Value;

/// Requests, one trace each.
const N: u64 = 20;
/// The first order id: ids have eight digits, above any pid (`pid_max` is at most 2^22) and any
/// port, so that finding one in a span or a label can only mean a leaked literal.
const FIRST: u64 = 31_400_000;

const CLIENT: &str = "dbsp-client";
const SERVICE: &str = "dbsp-service";
const PG: &str = "dbsp-pg";
const REDIS: &str = "dbsp-redis";

const DB_CLIENT: &str = "db_client_operation_duration_seconds_count";
const DB_SERVER: &str = "db_server_operation_duration_seconds_count";
const SETTLE: Duration = Duration::from_secs(30);
/// What the service sends PostgreSQL, its literal replaced.
const SELECT_TEXT: &str = "SELECT id, item FROM orders WHERE id = ?";

/// `(family, labels, expected sum)`.
type Check = (String, Vec<(&'static str, &'static str)>, f64);

/// The service's SELECTs and GETs on the client series, the databases' on the server series,
/// the HTTP requests on both sides.
fn checks(requests: f64, selects: f64, gets: f64) -> Vec<Check> {
    let pg = ("db_system_name", "postgresql");
    let redis = ("db_system_name", "redis");
    let select = [
        ("db_operation_name", "SELECT"),
        ("db_collection_name", "orders"),
        ("error_type", ""),
    ];
    let get = [
        ("db_operation_name", "GET"),
        ("db_collection_name", ""),
        ("error_type", ""),
    ];
    let mut out = Vec::new();
    for (family, pg_service, redis_service) in
        [(DB_CLIENT, SERVICE, SERVICE), (DB_SERVER, PG, REDIS)]
    {
        let family = family.to_owned();
        let mut labels = vec![("service_name", pg_service), pg];
        out.push((family.clone(), labels.clone(), selects));
        labels.extend(select);
        out.push((family.clone(), labels, selects));
        let mut labels = vec![("service_name", redis_service), redis];
        out.push((family.clone(), labels.clone(), gets));
        labels.extend(get);
        out.push((family, labels, gets));
    }
    out.push((
        count(HTTP_SERVER_DURATION),
        vec![("service_name", SERVICE)],
        requests,
    ));
    out.push((
        count(HTTP_CLIENT_DURATION),
        vec![("service_name", CLIENT)],
        requests,
    ));
    out
}

fn mismatches(m: &Metrics, checks: &[Check]) -> Vec<String> {
    checks
        .iter()
        .filter(|(name, labels, want)| m.value(name, labels) != *want)
        .map(|(name, labels, want)| {
            format!(
                "{name}{labels:?} = {}, expected {want}",
                m.value(name, labels)
            )
        })
        .collect()
}

fn wait_metrics(agent: &Agent, checks: &[Check]) -> Metrics {
    agent.wait_until(
        SETTLE,
        |m| mismatches(m, checks).is_empty(),
        |m| {
            format!(
                "{}\n{}\n{}\n{}\n{}\n{}",
                mismatches(m, checks).join("\n"),
                m.describe(DB_CLIENT),
                m.describe(DB_SERVER),
                m.describe(&count(HTTP_SERVER_DURATION)),
                m.describe(&count(HTTP_CLIENT_DURATION)),
                m.describe("meshtap_parse_errors_total"),
            )
        },
    )
}

/// The spans of every trace in the store that has a span of `svc`.
fn spans_of(agent: &Agent, svc: &str) -> Vec<Value> {
    api(
        agent,
        &format!("/api/v2/traces?serviceName={svc}&limit=1000"),
    )
    .as_array()
    .expect("traces")
    .iter()
    .flat_map(|t| t.as_array().expect("trace").clone())
    .collect()
}

/// The spans whose parent is `of`.
fn children<'a>(spans: &'a [Value], of: &Value) -> Vec<&'a Value> {
    spans.iter().filter(|s| parent(s) == Some(id(of))).collect()
}

/// Checks one request's trace (span names as Zipkin has them: lower case): what is wrong, while it is incomplete or not as expected.
fn check_trace(spans: &[Value]) -> Result<(), String> {
    let err = |what: &str| Err(format!("{what}:\n{}", describe(spans)));
    if spans.len() != 6 {
        return err("a trace of 6 spans expected");
    }
    let roots: Vec<&Value> = spans.iter().filter(|s| parent(s).is_none()).collect();
    let [root] = roots[..] else {
        return err("one root expected");
    };
    if (service(root), kind(root), text(root, "name")) != (CLIENT, "CLIENT", "get /order/*") {
        return err("the root is not the client's CLIENT span");
    }
    let under_root = children(spans, root);
    let [server] = under_root[..] else {
        return err("one child of the client's span expected");
    };
    if (service(server), kind(server), text(server, "name")) != (SERVICE, "SERVER", "get /order/*")
    {
        return err("the client's child is not the service's SERVER span");
    }
    let calls = children(spans, server);
    if calls.len() != 2 {
        return err("two children of the service's SERVER span expected");
    }
    for (system, name, query, db) in [
        ("postgresql", "select orders", SELECT_TEXT, PG),
        ("redis", "get", "GET ?", REDIS),
    ] {
        let found: Vec<&&Value> = calls
            .iter()
            .filter(|s| tag(s, "db.system.name") == Some(system))
            .collect();
        let [call] = found[..] else {
            return err(&format!("one {system} call under the SERVER span expected"));
        };
        if (service(call), kind(call), text(call, "name")) != (SERVICE, "CLIENT", name)
            || tag(call, "db.query.text") != Some(query)
        {
            return err(&format!(
                "the {system} call is not the service's CLIENT {name}"
            ));
        }
        let below = children(spans, call);
        let [served] = below[..] else {
            return err(&format!("one child of the {system} CLIENT span expected"));
        };
        if (service(served), kind(served), text(served, "name")) != (db, "SERVER", name)
            || tag(served, "db.system.name") != Some(system)
            || tag(served, "db.query.text") != Some(query)
        {
            return err(&format!(
                "the {system} CLIENT span's child is not {db}'s SERVER {name}"
            ));
        }
    }
    Ok(())
}

/// Waits until the store holds exactly `N` traces of the service, each complete.
fn wait_traces(agent: &Agent) -> Vec<Value> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let spans = spans_of(agent, SERVICE);
        let traces = by_trace(&spans);
        let problems: Vec<String> = traces
            .values()
            .filter_map(|t| check_trace(t).err())
            .collect();
        if traces.len() == N as usize && problems.is_empty() {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "{} traces of {SERVICE}, expected {N}; {} not as expected:\n{}\nall spans:\n{}\nunlinked: {}",
            traces.len(),
            problems.len(),
            problems.join("\n\n"),
            describe(&spans),
            agent.value("meshtap_spans_unlinked_total", &[]),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the store has trace `trace` with `n` spans; its spans.
fn wait_trace(agent: &Agent, trace: &str, n: usize) -> Vec<Value> {
    let path = format!("/api/v2/trace/{trace}");
    let deadline = Instant::now() + SETTLE;
    loop {
        let r = agent.get(&path);
        let spans: Vec<Value> = if r.status == 200 {
            serde_json::from_slice::<Value>(&r.body)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        if spans.len() == n {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace}: {} spans, expected {n}:\n{}\nunlinked: {}",
            spans.len(),
            describe(&spans),
            agent.value("meshtap_spans_unlinked_total", &[]),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// No order id in any span's name or tag value, nor in any label of `/metrics`.
fn assert_no_literal(spans: &[Value], m: &Metrics, ids: &[String]) {
    for s in spans {
        let mut texts = vec![text(s, "name").to_owned()];
        if let Some(tags) = s["tags"].as_object() {
            texts.extend(tags.iter().map(|(k, v)| format!("{k}={v}")));
        }
        for t in &texts {
            if let Some(leak) = ids.iter().find(|id| t.contains(id.as_str())) {
                panic!("order id {leak} in a span: {t}\n{s}");
            }
        }
    }
    for sample in &m.samples {
        for (k, v) in &sample.labels {
            if let Some(leak) = ids.iter().find(|id| v.contains(id.as_str())) {
                panic!("order id {leak} in a label {k}: {sample}");
            }
        }
    }
}

#[test]
fn a_web_service_querying_postgres_and_redis_per_request() {
    let _serial = serial();
    let pg = Postgres::start();
    let redis_port = free_port();
    let _redis = redis_server(redis_port);
    // The table, before the agent watches (one row more for the sqlcommenter request).
    run(pg.client("psql").args([
        "-X",
        "-q",
        "-c",
        &format!(
            "CREATE TABLE orders (id bigint PRIMARY KEY, item text); \
             INSERT INTO orders SELECT g, 'book' FROM generate_series({FIRST}, {}) g",
            FIRST + N
        ),
    ]));
    let service_ports = [format!("{}={PG}", pg.port), format!("{redis_port}={REDIS}")];
    let agent = Agent::start(&[
        "--service-port",
        &service_ports[0],
        "--service-port",
        &service_ports[1],
        "--trace-store-spans",
        "200000",
        "--trace-store-rate",
        "0",
    ]);
    let mut svc = Script::new("db_service.py", "dbsp-service")
        .named()
        .opt("--bind", "127.0.0.1")
        .opt("--pg-port", pg.port)
        .opt("--redis-port", redis_port)
        .env("PYTHONWARNINGS", "ignore")
        .spawn();
    let port = port_of(&svc.expect_event("listening", STARTUP));

    // Half the requests on one keep-alive connection (one server thread), the others on a
    // connection (and a thread) each.
    let first = FIRST.to_string();
    let done = run_client(
        // The client's comm is its service name: a one-request client may be gone before the
        // agent reads its environment, and then goes by its comm (see the README's service_name).
        CLIENT,
        CLIENT,
        port,
        N as usize,
        &[
            ("--path", "/order"),
            ("--first", &first),
            ("--connection", "mixed"),
        ],
    );
    for r in done["requests"].as_array().expect("requests") {
        assert_eq!(r["status"], 200, "{r}");
    }
    let ids: Vec<String> = (FIRST..FIRST + N + 1).map(|i| i.to_string()).collect();

    let m = wait_metrics(&agent, &checks(N as f64, N as f64, N as f64));
    let spans = wait_traces(&agent);
    let mut all = spans.clone();
    for db in [PG, REDIS] {
        all.extend(spans_of(&agent, db));
    }
    assert_no_literal(&all, &m, &ids);
    for (span, parent_span) in by_trace(&spans).values().flat_map(|t| {
        t.iter()
            .filter_map(|s| {
                Some((
                    s.clone(),
                    t.iter().find(|p| parent(s) == Some(id(p)))?.clone(),
                ))
            })
            .collect::<Vec<_>>()
    }) {
        assert_inside(&span, &parent_span, "a child inside its parent", &spans);
    }

    // sqlcommenter: a request carrying a W3C traceparent; the service puts its trace, with a
    // span id of its own, in a comment of its SELECT, as a W3C tracer does in a header. One
    // trace: the client's CLIENT span; the service's SERVER span, a new child of it; the
    // service's PostgreSQL CLIENT span with the comment's span id, a child of the SERVER span
    // (same thread); the PostgreSQL SERVER span, a new child of the comment's span id.
    let next = (FIRST + N).to_string();
    let done = run_client(
        // The client's comm is its service name: a one-request client may be gone before the
        // agent reads its environment, and then goes by its comm (see the README's service_name).
        CLIENT,
        CLIENT,
        port,
        1,
        &[
            ("--path", "/commented"),
            ("--first", &next),
            ("--propagate", "w3c"),
        ],
    );
    let sent: Vec<String> = header(&requests(&done)[0], "traceparent")
        .split('-')
        .map(str::to_owned)
        .collect();
    let (trace, caller) = (sent[1].as_str(), sent[2].as_str());
    let commented = wait_trace(&agent, trace, 4);
    let m = wait_metrics(&agent, &checks(N as f64 + 1.0, N as f64 + 1.0, N as f64));
    let mut all = spans_of(&agent, SERVICE);
    all.extend(spans_of(&agent, PG));
    assert_no_literal(&all, &m, &ids);

    svc.send_line("stop");
    let served = svc.finish(Duration::from_secs(30));
    let outgoing = served["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .find_map(|r| r["outgoing"].as_str())
        .unwrap_or_else(|| panic!("the service put no traceparent in a comment: {served}"));
    let comment_span = outgoing.split('-').nth(2).expect("a traceparent's span id");
    let client_span = one(&commented, CLIENT, "CLIENT");
    let server = one(&commented, SERVICE, "SERVER");
    let query = one(&commented, SERVICE, "CLIENT");
    let db = one(&commented, PG, "SERVER");
    let all = describe(&commented);
    assert_eq!(id(client_span), caller, "{all}");
    assert_eq!(parent(client_span), None, "{all}");
    assert_eq!(parent(server), Some(caller), "{all}");
    assert_eq!(id(query), comment_span, "{all}");
    assert_eq!(parent(query), Some(id(server)), "{all}");
    assert_eq!(text(query, "name"), "select orders", "{all}");
    // Comments go with the literals.
    assert_eq!(tag(query, "db.query.text"), Some(SELECT_TEXT), "{all}");
    assert_eq!(parent(db), Some(comment_span), "{all}");
    assert_ne!(id(db), comment_span, "{all}");
    assert_eq!(text(db, "name"), "select orders", "{all}");
}
