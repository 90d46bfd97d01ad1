//! Redis and Memcached, end to end: the real agent and kernel, Debian's `redis-server` and
//! `memcached` in temporary directories on loopback, driven by `redis-benchmark` (pipelined),
//! redis-py (MULTI/EXEC, error replies, SELECT, a subscriber) and pymemcache (plus the raw
//! commands it does not send: an unknown command, a malformed one, meta commands).
//!
//! One test function runs every scenario against one agent and one server of each (CI time),
//! then checks exact counts per operation and error type on both the client and the server
//! series, the exchanges counted node-wide, and spans through the built-in store's Zipkin API.
//! Every number is what the clients did, as the servers' own statistics confirm
//! (`INFO commandstats` for redis-benchmark: exactly N per command and two `CONFIG GET`).

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use meshtap_tests::db::{memcached, redis_server};
use meshtap_tests::metrics::{EXCHANGES, PARSE_ERRORS};
use meshtap_tests::process::run_command;
use meshtap_tests::zipkin::api;
use meshtap_tests::{Agent, Metrics, Script, free_port};
use serde_json::Value;

const CLIENT: &str = "db_client_operation_duration_seconds_count";
const SERVER: &str = "db_server_operation_duration_seconds_count";
const SETTLE: Duration = Duration::from_secs(30);
const RUN: Duration = Duration::from_secs(120);

/// redis-benchmark's requests per command: a multiple of its pipeline depth (16), so that it
/// sends exactly this many (it counts requests by whole pipelines).
const BENCH_N: u32 = 1600;
const MESSAGES: u32 = 7;

const REDIS_SERVICE: &str = "redis-itest";
const MEMCACHED_SERVICE: &str = "memcached-itest";
const REDIS_CLIENT: &str = "rd-client";
const MEMCACHED_CLIENT: &str = "mc-client";

/// `INFO commandstats` of the Redis server: calls per command (`set`, `config|get`...).
fn commandstats(port: u16) -> String {
    let out = run_command(
        Command::new("redis-cli").args(["-p", &port.to_string(), "info", "commandstats"]),
        Duration::from_secs(10),
    );
    out.stdout
}

/// One expected count: the sum of the series of `name` carrying all of `labels`.
struct Expect {
    name: &'static str,
    labels: Vec<(&'static str, String)>,
    value: f64,
}

fn op(
    name: &'static str,
    service: &str,
    system: &str,
    operation: &str,
    error: &str,
    value: u32,
) -> Expect {
    Expect {
        name,
        labels: vec![
            ("service_name", service.to_owned()),
            ("db_system_name", system.to_owned()),
            ("db_operation_name", operation.to_owned()),
            ("db_collection_name", String::new()),
            ("error_type", error.to_owned()),
        ],
        value: f64::from(value),
    }
}

fn value(m: &Metrics, e: &Expect) -> f64 {
    let labels: Vec<(&str, &str)> = e.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    m.value(e.name, &labels)
}

fn mismatches(m: &Metrics, checks: &[Expect]) -> Vec<String> {
    checks
        .iter()
        .filter(|e| value(m, e) != e.value)
        .map(|e| {
            format!(
                "{}{:?} = {}, expected {}",
                e.name,
                e.labels,
                value(m, e),
                e.value
            )
        })
        .collect()
}

fn report(m: &Metrics, checks: &[Expect]) -> String {
    format!(
        "{}\nseries:\n{}\n{}\n{}\n{}\nlost: {}",
        mismatches(m, checks).join("\n"),
        m.describe(CLIENT),
        m.describe(SERVER),
        m.describe(EXCHANGES),
        m.describe(PARSE_ERRORS),
        m.describe("meshtap_events_lost_total"),
    )
}

/// Waits until every check holds, then checks again a moment later (nothing counted late).
fn assert_settled(agent: &Agent, checks: &[Expect]) -> Metrics {
    agent.wait_until(
        SETTLE,
        |m| mismatches(m, checks).is_empty(),
        |m| report(m, checks),
    );
    thread::sleep(Duration::from_millis(1500));
    let m = agent.metrics();
    assert!(
        mismatches(&m, checks).is_empty(),
        "the values held, then changed: {}",
        report(&m, checks)
    );
    m
}

/// The spans of `service` in the store.
fn spans_of(agent: &Agent, service: &str) -> Vec<Value> {
    let doc = api(
        agent,
        &format!("/api/v2/traces?serviceName={service}&limit=1000"),
    );
    doc.as_array()
        .expect("traces")
        .iter()
        .flat_map(|t| t.as_array().expect("trace").clone())
        .collect()
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["tags"][key].as_str()
}

/// The one span of `service`'s side `kind` named `name` (case-insensitive) whose tags include
/// `with`.
fn find_span<'a>(
    spans: &'a [Value],
    service: &str,
    kind: &str,
    name: &str,
    with: &[(&str, &str)],
) -> &'a Value {
    let found: Vec<&Value> = spans
        .iter()
        .filter(|s| {
            s["kind"] == kind
                && s["localEndpoint"]["serviceName"] == service
                && s["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
                && with.iter().all(|(k, v)| tag(s, k) == Some(v))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{kind} spans of {service} named {name} with {with:?}: {}",
        serde_json::to_string_pretty(&spans).unwrap_or_default()
    );
    found[0]
}

#[test]
fn redis_and_memcached_exact_counts_and_spans() {
    for (bin, package) in [("redis-server", "redis-server"), ("memcached", "memcached")] {
        assert!(
            Path::new("/usr/bin").join(bin).exists(),
            "{bin} missing: apt-get install {package} (cargo xtask setup)"
        );
    }
    let redis_port = free_port();
    let memcached_port = free_port();
    let redis = redis_server(redis_port);
    let memcached = memcached(memcached_port);
    let service_ports = [
        format!("{redis_port}={REDIS_SERVICE}"),
        format!("{memcached_port}={MEMCACHED_SERVICE}"),
    ];
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

    // redis-benchmark: pipelines of 16, N of each command.
    let bench = run_command(
        Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &redis_port.to_string()])
            .args(["-n", &BENCH_N.to_string(), "-P", "16"])
            .args(["-t", "set,get,lpush,incr", "-q"]),
        RUN,
    );
    assert!(bench.status.success(), "redis-benchmark: {}", bench.stderr);
    let stats = commandstats(redis_port);
    for cmd in ["set", "get", "lpush", "incr"] {
        assert!(
            stats.contains(&format!("cmdstat_{cmd}:calls={BENCH_N},")),
            "redis-benchmark did not send {BENCH_N} {cmd}: {stats}"
        );
    }
    assert!(stats.contains("cmdstat_config|get:calls=2,"), "{stats}");

    // redis-py: MULTI/EXEC, errors, SELECT, a subscriber.
    let done = Script::new("cache_client.py", REDIS_CLIENT)
        .named()
        .arg("redis")
        .arg(redis_port)
        .arg(MESSAGES)
        .env("PYTHONWARNINGS", "ignore")
        .run(RUN);
    assert_eq!(done["received"], MESSAGES, "{done}");

    // pymemcache, and the raw commands.
    Script::new("cache_client.py", MEMCACHED_CLIENT)
        .named()
        .arg("memcached")
        .arg(memcached_port)
        .env("PYTHONWARNINGS", "ignore")
        .run(RUN);

    let mut checks = Vec::new();
    let n = BENCH_N;
    // (operation, error type, from redis-benchmark, from redis-py)
    let redis_ops: [(&str, &str, u32, u32); 12] = [
        ("SET", "", n, 2),
        ("GET", "", n, 1),
        ("LPUSH", "", n, 1),
        ("LPUSH", "WRONGTYPE", 0, 1),
        ("INCR", "", n, 0),
        ("INCRBY", "", 0, 1),
        ("INCRBY", "ERR", 0, 1),
        ("CONFIG", "", 2, 0),
        ("MULTI", "", 0, 1),
        ("EXEC", "", 0, 1),
        ("SELECT", "", 0, 1),
        ("PUBLISH", "", 0, MESSAGES),
    ];
    let pubsub_ops = [("SUBSCRIBE", "", 0, 1), ("UNSUBSCRIBE", "", 0, 1)];
    let mut redis_total = 0;
    for &(operation, error, bench, py) in redis_ops.iter().chain(&pubsub_ops) {
        let r = "redis";
        checks.push(op(CLIENT, "redis-benchmark", r, operation, error, bench));
        checks.push(op(CLIENT, REDIS_CLIENT, r, operation, error, py));
        checks.push(op(SERVER, REDIS_SERVICE, r, operation, error, bench + py));
        redis_total += bench + py;
    }
    // pymemcache's commands, as sent; `set` counts the five noreply ones, the stored `n` and the
    // malformed one (a client error is not a failure: no error type).
    let memcached_ops: [(&str, u32); 12] = [
        ("set", 7),
        ("get", 3),
        ("add", 1),
        ("incr", 2),
        ("decr", 1),
        ("delete", 1),
        ("touch", 1),
        ("stats", 1),
        ("version", 2),
        ("bogus", 1),
        ("mg", 2),
        ("mn", 1),
    ];
    let mut memcached_total = 0;
    for &(operation, count) in &memcached_ops {
        let m = "memcached";
        checks.push(op(CLIENT, MEMCACHED_CLIENT, m, operation, "", count));
        checks.push(op(SERVER, MEMCACHED_SERVICE, m, operation, "", count));
        memcached_total += count;
    }
    // The test's own `redis-cli info commandstats`.
    checks.push(op(CLIENT, "redis-cli", "redis", "INFO", "", 1));
    redis_total += 1;
    // Every exchange is seen on both sides; messages published to the subscriber are none.
    for (protocol, total) in [("redis", redis_total), ("memcached", memcached_total)] {
        checks.push(Expect {
            name: EXCHANGES,
            labels: vec![("protocol", protocol.to_owned())],
            value: f64::from(2 * total),
        });
        checks.push(Expect {
            name: PARSE_ERRORS,
            labels: vec![("protocol", protocol.to_owned())],
            value: 0.0,
        });
    }
    let m = assert_settled(&agent, &checks);
    // Nothing else: every series of the two clients and servers is one of the above.
    for (family, service, ops) in [
        (CLIENT, REDIS_CLIENT, redis_ops.len() + pubsub_ops.len()),
        (SERVER, MEMCACHED_SERVICE, memcached_ops.len()),
    ] {
        let series = m.matching(family, &[("service_name", service)]).count();
        assert!(
            series <= ops,
            "{family} of {service}: {}",
            m.describe(family)
        );
    }

    // Spans: sanitized commands, the database index, errors, hits and misses.
    let spans = spans_of(&agent, REDIS_CLIENT);
    let set = find_span(
        &spans,
        REDIS_CLIENT,
        "CLIENT",
        "SET",
        &[("db.namespace", "3"), ("db.query.text", "SET ? ?")],
    );
    assert_eq!(tag(set, "db.system.name"), Some("redis"));
    assert_eq!(tag(set, "db.operation.name"), Some("SET"));
    find_span(
        &spans,
        REDIS_CLIENT,
        "CLIENT",
        "GET",
        &[("db.namespace", "3"), ("db.query.text", "GET ?")],
    );
    let wrong = find_span(
        &spans,
        REDIS_CLIENT,
        "CLIENT",
        "LPUSH",
        &[("db.response.status_code", "WRONGTYPE")],
    );
    assert_eq!(tag(wrong, "error"), Some("WRONGTYPE"), "{wrong}");
    let text = serde_json::to_string(&spans).unwrap_or_default();
    assert!(
        !text.contains("secret-value"),
        "a literal in a span: {text}"
    );

    let spans = spans_of(&agent, MEMCACHED_CLIENT);
    find_span(
        &spans,
        MEMCACHED_CLIENT,
        "CLIENT",
        "get",
        &[
            ("db.system.name", "memcached"),
            ("db.query.text", "get ? ? ? ? ?"),
            ("db.memcached.hits", "3"),
            ("db.memcached.misses", "2"),
        ],
    );
    find_span(
        &spans,
        MEMCACHED_CLIENT,
        "CLIENT",
        "set",
        &[("db.response.status_code", "CLIENT_ERROR")],
    );
    drop(agent);
    drop(redis);
    drop(memcached);
}
