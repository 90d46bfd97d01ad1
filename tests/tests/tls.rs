//! TLS plaintext through uprobes on the TLS libraries, end to end: the real agent, real nginx
//! with `ssl`, curl and wrk over HTTPS, Python's `ssl` at both ends of a keep-alive connection,
//! a copy of the system's `libssl.so.3` that only a process started after the agent maps,
//! PostgreSQL with `ssl=on` and `psql` with `sslmode=require` (against the same session in
//! plaintext), an executable with OpenSSL linked in, clients on Debian 11's OpenSSL 1.1 and on
//! Debian 13's OpenSSL 3.5 (`SSL_write_ex2`),
//! nginx `ssl http2` with `curl --http2` and nghttpd with `h2load` (ALPN `h2`), Node's `https` at
//! both ends (OpenSSL fed from memory), Go's `net/http` and `crypto/tls` at both ends (a static
//! Go executable built by the test with `golang-go` 1.19, HTTP/1.1 and HTTP/2, and with Go 1.23
//! from Debian 12's backports, HTTP/2), and the agent without CAP_SYS_ADMIN.
//!
//! Every count asserted is a truth the test knows without the agent: what curl, wrk and the
//! Python, Node and Go programs report, what nginx logged. The Python programs have service names of their
//! own (`OTEL_SERVICE_NAME`); nginx, curl and wrk go by their executable names, so their checks
//! are narrowed by a route or a port only this file uses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;
use std::thread;
use std::time::Duration;

use meshtap_tests::db::{PG_BIN, Postgres, run};
use meshtap_tests::metrics::{
    GRAPH_CLIENT_SECONDS, GRAPH_FAILED, GRAPH_REQUESTS, GRAPH_SERVER_SECONDS, HTTP_CLIENT_DURATION,
    HTTP_CLIENT_RESPONSE_BODY, HTTP_SERVER_DURATION, HTTP_SERVER_RESPONSE_BODY, RECEIVED, SENT,
    count, sum,
};
use meshtap_tests::process::run_command;
use meshtap_tests::spans::{id, kind, parent, service, trace_id};
use meshtap_tests::tls::Certificate;
use meshtap_tests::{Agent, Metrics, Nginx, NginxConfig, Script, ScriptChild, TempDir, free_port};
use serde_json::Value;

/// How long one client program may run.
const RUN: Duration = Duration::from_secs(60);
/// How long a program may take to start and report it is listening.
const STARTUP: Duration = Duration::from_secs(10);
/// How long the agent may take to turn what a test did into metrics.
const SETTLE: Duration = Duration::from_secs(20);
/// How long the agent may take to find a new TLS library (it looks every second).
const DISCOVERY: Duration = Duration::from_secs(10);

const LIBRARIES_PROBED: &str = "meshtap_tls_libraries_probed";
const ATTACH_FAILURES: &str = "meshtap_tls_attach_failures_total";
const PLAINTEXT_EVENTS: &str = "meshtap_tls_plaintext_events_total";
const PLAINTEXT_UNTRACKED: &str = "meshtap_tls_plaintext_untracked_events_total";
const SYSTEM_LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";

// ---------------------------------------------------------------------------------------------
// Expected values

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[derive(Clone, Debug)]
struct Expect {
    name: String,
    labels: Labels,
    value: f64,
}

fn expect(name: impl Into<String>, labels: &Labels, value: impl Into<f64>) -> Expect {
    Expect {
        name: name.into(),
        labels: labels.clone(),
        value: value.into(),
    }
}

fn value_of(m: &Metrics, name: &str, labels: &Labels) -> f64 {
    let borrowed: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    m.value(name, &borrowed)
}

fn mismatches(m: &Metrics, checks: &[Expect]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| value_of(m, &c.name, &c.labels) != c.value)
        .map(|c| {
            format!(
                "{}{:?} = {}, expected {}",
                c.name,
                c.labels,
                value_of(m, &c.name, &c.labels),
                c.value
            )
        })
        .collect()
}

fn report(m: &Metrics, checks: &[Expect]) -> String {
    let mut names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let series: Vec<String> = names.iter().map(|n| m.describe(n)).collect();
    format!(
        "{}\nseries:\n{}\n{}\n{}\n{}\n{}",
        mismatches(m, checks).join("\n"),
        series.join("\n"),
        m.describe("meshtap_events_lost_total"),
        m.describe("meshtap_parse_errors_total"),
        m.describe(PLAINTEXT_EVENTS),
        m.describe("meshtap_tls_plaintext_untied_events_total"),
    )
}

/// Waits until every check holds in one scrape, then checks again a moment later (nothing is
/// counted late or twice). Returns the last scrape.
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

fn server_series(service: &str, route: &str, status: &str) -> Labels {
    labels(&[
        ("service_name", service),
        ("http_request_method", "GET"),
        ("http_route", route),
        ("http_response_status_code", status),
    ])
}

fn client_series(service: &str, status: Option<&str>, dest: SocketAddr) -> Labels {
    let mut l = labels(&[
        ("service_name", service),
        ("server_address", &dest.ip().to_string()),
        ("server_port", &dest.port().to_string()),
    ]);
    if let Some(status) = status {
        l.push(("http_response_status_code".into(), status.into()));
    }
    l
}

/// The service-graph checks of an edge whose ends are both processes on this node.
fn local_edge(client: &str, server: &str, total: u64, failed: u64) -> Vec<Expect> {
    let e = labels(&[
        ("client", client),
        ("server", server),
        ("connection_type", ""),
    ]);
    let (total, failed) = (total as f64, failed as f64);
    vec![
        expect(GRAPH_REQUESTS, &e, total),
        expect(GRAPH_FAILED, &e, failed),
        expect(count(GRAPH_SERVER_SECONDS), &e, total),
        expect(count(GRAPH_CLIENT_SECONDS), &e, total),
    ]
}

/// The TCP byte counters of the edge `client` -> `server`:`port`, both roles, as (client sent,
/// server received, server sent, client received).
fn edge_bytes(m: &Metrics, client: &str, server: &str, port: u16) -> (f64, f64, f64, f64) {
    let port = port.to_string();
    let at = |name: &str, role: &str| {
        m.value(
            name,
            &[
                ("client", client),
                ("server", server),
                ("server_port", &port),
                ("role", role),
            ],
        )
    };
    (
        at(SENT, "client"),
        at(RECEIVED, "server"),
        at(SENT, "server"),
        at(RECEIVED, "client"),
    )
}

// ---------------------------------------------------------------------------------------------
// Programs

/// One `curl` process fetching every URL in turn over HTTPS (one keep-alive connection),
/// certificate not checked. Returns (status, body bytes) per URL.
fn curl(urls: &[String]) -> Vec<(u16, u64)> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sk",
        "--max-time",
        "60",
        "-w",
        "%{http_code} %{size_download}\\n",
    ]);
    for url in urls {
        cmd.args(["-o", "/dev/null", url]);
    }
    let out = run_command(&mut cmd, RUN);
    assert!(
        out.status.success(),
        "curl failed ({}): {}{}",
        out.status,
        out.stdout,
        out.stderr
    );
    let results: Vec<(u16, u64)> = out
        .stdout
        .lines()
        .map(|l| {
            let (code, size) = l.split_once(' ').expect("curl -w line has 2 fields");
            (
                code.parse().expect("http_code"),
                size.parse().expect("size_download"),
            )
        })
        .collect();
    assert_eq!(results.len(), urls.len(), "curl output:\n{}", out.stdout);
    results
}

/// `wrk` over HTTPS for 2 s on 4 connections; returns the responses it completed.
fn wrk(url: &str) -> u64 {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c4", "-d2s", url]);
    let out = run_command(&mut cmd, RUN);
    assert!(
        out.status.success(),
        "wrk failed ({}): {}{}",
        out.status,
        out.stdout,
        out.stderr
    );
    eprintln!("{}", out.stdout);
    out.stdout
        .lines()
        .find_map(|l| {
            let (n, rest) = l.trim().split_once(' ')?;
            rest.starts_with("requests in").then(|| n.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no \"N requests in\" line in wrk's output:\n{}", out.stdout))
}

/// Waits until nginx's access log stops growing and returns it (status -> requests).
fn settled_access_log(nginx: &Nginx) -> BTreeMap<String, u64> {
    let mut last = nginx.access_log();
    for _ in 0..50 {
        thread::sleep(Duration::from_millis(200));
        let now = nginx.access_log();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("nginx's access log is still growing after 10 s: {last:?}");
}

/// The Python HTTPS server (`http_backend.py --tls`), named `name`, with `ld_path` as its
/// `LD_LIBRARY_PATH` if given. Returns it and its port.
fn python_server(name: &str, cert: &Certificate, ld_path: Option<&str>) -> (ScriptChild, u16) {
    let mut script = Script::new("http_backend.py", name)
        .named()
        .opt("--bind", "127.0.0.1")
        .opt("--tls", format!("{},{}", cert.cert(), cert.key()));
    if let Some(dir) = ld_path {
        script = script.env("LD_LIBRARY_PATH", dir);
    }
    let mut server = script.spawn();
    let listening = server.expect_event("listening", STARTUP);
    let port = listening["port"].as_u64().expect("port") as u16;
    (server, port)
}

/// The Python HTTPS client (`https_client.py`): `rounds` rounds of `paths` on each of
/// `connections` keep-alive connections. Returns its statuses (status -> responses).
fn python_client(
    name: &str,
    port: u16,
    paths: &str,
    rounds: u32,
    connections: u32,
    ld_path: Option<&str>,
) -> BTreeMap<String, u64> {
    let mut script = Script::new("https_client.py", name)
        .named()
        .opt("--port", port)
        .opt("--paths", paths)
        .opt("--rounds", rounds)
        .opt("--connections", connections);
    if let Some(dir) = ld_path {
        script = script.env("LD_LIBRARY_PATH", dir);
    }
    let done = script.run(RUN);
    done["statuses"]
        .as_object()
        .expect("statuses")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().expect("count")))
        .collect()
}

/// The spans of every trace in the agent's store that has a span of `svc`.
fn spans_of(agent: &Agent, svc: &str) -> Vec<Value> {
    let response = agent.get(&format!("/api/v2/traces?serviceName={svc}&limit=1000"));
    assert_eq!(response.status, 200, "{}", response.text());
    let traces: Value = serde_json::from_str(&response.text()).expect("traces JSON");
    traces
        .as_array()
        .expect("traces")
        .iter()
        .flat_map(|t| t.as_array().expect("trace").clone())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. nginx with `ssl` (its libssl.so.3), curl and wrk over HTTPS

#[test]
fn nginx_https_driven_by_curl_and_wrk() {
    let agent = Agent::start(&[]);
    let m = agent.metrics();
    assert!(
        m.value(LIBRARIES_PROBED, &[("library", "libssl.so.3")]) >= 1.0,
        "the system's libssl.so.3 is probed at start:\n{}\n{}",
        m.describe(LIBRARIES_PROBED),
        agent.log()
    );
    let cert = Certificate::new();
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let nginx = Nginx::start(
        NginxConfig::new(listen)
            .access_log()
            .ok_everywhere()
            .tls(&cert.cert(), &cert.key()),
        None,
    );
    let base = format!("https://{listen}");

    // One curl with 10 + 4 requests on one keep-alive connection, then 3 curls of one each.
    let mut urls: Vec<String> = (0..10).map(|_| format!("{base}/tlsok")).collect();
    urls.extend((0..4).map(|_| format!("{base}/missing")));
    let mut results = curl(&urls);
    for _ in 0..3 {
        results.extend(curl(&[format!("{base}/tlsok")]));
    }
    let ok = results.iter().filter(|r| *r == &(200, 2)).count() as u64;
    let missing = results.iter().filter(|r| r.0 == 404).count() as u64;
    assert_eq!((ok, missing), (13, 4), "curl's results: {results:?}");
    let mut checks = vec![
        expect(
            count(HTTP_SERVER_DURATION),
            &server_series("nginx", "/tlsok", "200"),
            13,
        ),
        expect(
            sum(HTTP_SERVER_RESPONSE_BODY),
            &server_series("nginx", "/tlsok", "200"),
            26,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &client_series("curl", Some("200"), listen),
            13,
        ),
        expect(
            sum(HTTP_CLIENT_RESPONSE_BODY),
            &client_series("curl", Some("200"), listen),
            26,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &client_series("curl", Some("404"), listen),
            4,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &client_series("curl", None, listen),
            17,
        ),
    ];
    checks.extend(local_edge("curl", "nginx", 17, 0));
    let m = assert_settled(&agent, &checks);
    // The ciphertext is counted once per side: what one end sent, the other received. nginx
    // peeks at each new connection's first byte (`recv(fd, buf, 1, MSG_PEEK)` in
    // ngx_http_ssl_handshake, to tell TLS from plain HTTP): a peek is not a read, not counted.
    let (client_sent, server_received, server_sent, client_received) =
        edge_bytes(&m, "curl", "nginx", listen.port());
    assert!(
        client_sent > 0.0 && server_sent > 0.0,
        "{}",
        m.describe(SENT)
    );
    assert_eq!(
        (client_sent, server_sent),
        (server_received, client_received),
        "{}\n{}",
        m.describe(SENT),
        m.describe(RECEIVED)
    );
    assert!(
        m.value(PLAINTEXT_EVENTS, &[("library", "libssl.so.3")]) >= 4.0 * 17.0,
        "each request and response is written and read through libssl:\n{}",
        m.describe(PLAINTEXT_EVENTS)
    );
    assert_eq!(m.value(PLAINTEXT_UNTRACKED, &[]), 0.0);

    // wrk over HTTPS: its own count of completed responses, and nginx's access log. A request
    // in flight when wrk stops was answered by nginx but never read by wrk: status "" on the
    // client side, a failed request on the graph.
    let completed = wrk(&format!("{base}/tlsok"));
    let log = settled_access_log(&nginx);
    let logged = |s: &str| log.get(s).copied().unwrap_or(0);
    assert_eq!(logged("404"), 4, "nginx access log: {log:?}");
    let served = logged("200") - 13;
    let abandoned = logged("499");
    assert!(
        served >= completed && served - completed <= 4,
        "wrk completed {completed}, nginx served {served} (log {log:?})"
    );
    let unanswered = served - completed + abandoned;
    let wrk_client = |status: &str| client_series("wrk", Some(status), listen);
    checks.retain(|c| {
        !c.labels
            .contains(&("http_route".to_owned(), "/tlsok".to_owned()))
    });
    checks.extend([
        expect(
            count(HTTP_SERVER_DURATION),
            &server_series("nginx", "/tlsok", "200"),
            (13 + served) as f64,
        ),
        expect(
            count(HTTP_SERVER_DURATION),
            &server_series("nginx", "/tlsok", ""),
            abandoned as f64,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &wrk_client("200"),
            completed as f64,
        ),
        expect(
            sum(HTTP_CLIENT_RESPONSE_BODY),
            &wrk_client("200"),
            (2 * completed) as f64,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &wrk_client(""),
            unanswered as f64,
        ),
    ]);
    checks.extend(local_edge("wrk", "nginx", served + abandoned, unanswered));
    assert_settled(&agent, &checks);
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 2. Python's ssl at both ends, HTTP/1.1 keep-alive, spans linked across the two ends

#[test]
fn python_https_keepalive_both_ends() {
    // With BPF run-time statistics: the TLS programs' cost is reported like the others'.
    let agent = Agent::start(&["--ebpf-stats", "true"]);
    let cert = Certificate::new();
    let (srv, cli) = ("mt-tls-py-srv", "mt-tls-py-cli");
    let (server, port) = python_server(srv, &cert, None);
    // 2 connections x 5 rounds of 3 requests: 10 each of 200, 500 and 404.
    let statuses = python_client(cli, port, "/api/users/7,/api/fail,/nope", 5, 2, None);
    assert_eq!(
        statuses,
        BTreeMap::from([("200".into(), 10), ("404".into(), 10), ("500".into(), 10)]),
        "client's statuses"
    );
    let dest: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut checks = vec![
        expect(
            count(HTTP_SERVER_DURATION),
            &server_series(srv, "/api/users/*", "200"),
            10,
        ),
        expect(
            sum(HTTP_SERVER_RESPONSE_BODY),
            &server_series(srv, "/api/users/*", "200"),
            70,
        ),
        expect(
            count(HTTP_SERVER_DURATION),
            &server_series(srv, "/api/fail", "500"),
            10,
        ),
        expect(
            count(HTTP_SERVER_DURATION),
            &labels(&[("service_name", srv)]),
            30,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &client_series(cli, Some("200"), dest),
            10,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &client_series(cli, Some("404"), dest),
            10,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &client_series(cli, Some("500"), dest),
            10,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &labels(&[("service_name", cli)]),
            30,
        ),
    ];
    checks.extend(local_edge(cli, srv, 30, 10));
    let m = assert_settled(&agent, &checks);
    let (client_sent, server_received, server_sent, client_received) =
        edge_bytes(&m, cli, srv, port);
    assert!(client_sent > 0.0, "{}", m.describe(SENT));
    assert_eq!(
        (client_sent, server_sent),
        (server_received, client_received)
    );
    // Python writes with SSL_write_ex and reads with SSL_read_ex: 30 requests written by the
    // client and read by the server, 30 responses the other way, at least.
    let m = agent.wait_until(
        Duration::from_secs(5),
        |m| {
            ["tls_write_ex_enter", "tls_read_ex_enter"]
                .iter()
                .all(|p| m.value("meshtap_ebpf_program_runs_total", &[("program", p)]) >= 60.0)
                && m.value(
                    "meshtap_ebpf_program_runs_total",
                    &[("program", "tls_return")],
                ) >= 120.0
        },
        |m| m.describe("meshtap_ebpf_program_runs_total"),
    );
    assert!(
        m.value(
            "meshtap_ebpf_program_run_seconds_total",
            &[("program", "tls_return")]
        ) > 0.0
    );

    // Spans: 30 of each kind, every server span the child of a client span of its trace.
    let spans = spans_of(&agent, srv);
    let of = |svc: &str, k: &str| -> Vec<&Value> {
        spans
            .iter()
            .filter(|s| service(s) == svc && kind(s) == k)
            .collect()
    };
    let (servers, clients) = (of(srv, "SERVER"), of(cli, "CLIENT"));
    assert_eq!(
        (servers.len(), clients.len()),
        (30, 30),
        "{}",
        meshtap_tests::spans::describe(&spans)
    );
    for s in &servers {
        let p = parent(s).unwrap_or_else(|| panic!("server span without parent: {s}"));
        let c = clients
            .iter()
            .find(|c| id(c) == p)
            .unwrap_or_else(|| panic!("server span's parent is not a client span: {s}"));
        assert_eq!(trace_id(c), trace_id(s));
    }
    server.kill();
}

/// The ids of the `perf_event` BPF links (uprobes, here) whose program is one of the TLS
/// programs (`tls_*`), from `bpftool`. One agent runs at a time (`serial`, and the integration
/// lock): they are its.
fn tls_probe_links() -> BTreeSet<u64> {
    let list = |kind: &str| -> Vec<Value> {
        let out = Command::new("bpftool")
            .args(["-j", kind, "list"])
            .output()
            .unwrap_or_else(|e| panic!("bpftool: {e}"));
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    };
    let programs: BTreeSet<u64> = list("prog")
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("tls_")))
        .filter_map(|p| p["id"].as_u64())
        .collect();
    list("link")
        .iter()
        .filter(|l| l["type"] == "perf_event")
        .filter(|l| {
            l["prog_id"]
                .as_u64()
                .is_some_and(|id| programs.contains(&id))
        })
        .filter_map(|l| l["id"].as_u64())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 3. A library file no process mapped when the agent started; the agent leaves no probe behind

#[test]
fn library_loaded_after_start_is_probed_and_released() {
    let agent = Agent::start(&[]);
    let probes_at_start = tls_probe_links();
    let log_at_start = agent.log().lines().count();
    assert!(!probes_at_start.is_empty(), "the system's libssl is probed");
    let library = |m: &Metrics| m.value(LIBRARIES_PROBED, &[("library", "libssl.so.3")]);
    let before = library(&agent.metrics());
    // A copy of the system's libssl: a file (an inode) of its own, which only the processes
    // below map, through LD_LIBRARY_PATH.
    let dir = TempDir::new("libssl-copy");
    std::fs::copy(SYSTEM_LIBSSL, dir.path().join("libssl.so.3")).expect("copy libssl.so.3");
    let ld_path = dir.path().to_string_lossy().into_owned();
    let cert = Certificate::new();
    let (srv, cli) = ("mt-tls-late-srv", "mt-tls-late-cli");
    let (server, port) = python_server(srv, &cert, Some(&ld_path));
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
    assert!(
        maps.contains(&format!("{ld_path}/libssl.so.3")),
        "the server maps the copy:\n{maps}"
    );
    agent.wait_until(
        DISCOVERY,
        |m| library(m) == before + 1.0,
        |m| format!("{}\n{}", m.describe(LIBRARIES_PROBED), agent.log()),
    );
    let statuses = python_client(cli, port, "/api/users/1,/nope", 4, 1, Some(&ld_path));
    assert_eq!(
        statuses,
        BTreeMap::from([("200".into(), 4), ("404".into(), 4)])
    );
    let dest: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut checks = vec![
        expect(
            count(HTTP_SERVER_DURATION),
            &labels(&[("service_name", srv)]),
            8,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &client_series(cli, Some("200"), dest),
            4,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &client_series(cli, Some("404"), dest),
            4,
        ),
    ];
    checks.extend(local_edge(cli, srv, 8, 0));
    assert_settled(&agent, &checks);
    let copy = format!("{ld_path}/libssl.so.3");
    // SSL_read, SSL_write, SSL_read_ex, SSL_write_ex, SSL_do_handshake: entry and return;
    // SSL_free: entry. Each a perf_event link to one of the TLS programs.
    let probes_now = tls_probe_links();
    // The files probed since: the copy, with 11 uprobes, and whatever else started meanwhile
    // on this shared machine (a `cargo`, which links OpenSSL statically, say).
    let log = agent.log();
    let probed_since: Vec<(&str, usize)> = log
        .lines()
        .skip(log_at_start)
        .filter_map(|l| {
            let rest = l.split("TLS plaintext: probing ").nth(1)?;
            let (path, counts) = rest.split_once(" (")?;
            let uprobes = counts.split(", ").nth(1)?.strip_suffix(" uprobes)")?;
            Some((path, uprobes.parse().ok()?))
        })
        .collect();
    assert!(
        probed_since
            .iter()
            .any(|(path, n)| path.ends_with(&copy) && *n == 11),
        "{copy} probed with 11 uprobes:\n{log}"
    );
    assert_eq!(
        probes_now.difference(&probes_at_start).count(),
        probed_since.iter().map(|(_, n)| n).sum::<usize>(),
        "uprobe links of the TLS programs added since {probed_since:?}: before {probes_at_start:?}, now {probes_now:?}"
    );
    let exited = agent.stop_with(libc::SIGTERM);
    assert_eq!(exited.status.and_then(|s| s.code()), Some(0));
    assert!(
        tls_probe_links().is_empty(),
        "uprobe links of TLS programs left after the agent stopped: {:?}",
        tls_probe_links()
    );
    let events = std::fs::read_to_string("/sys/kernel/tracing/uprobe_events").unwrap_or_default();
    assert!(
        !events.contains(&copy),
        "uprobe_events still names {copy}:\n{events}"
    );
    server.kill();
}

// ---------------------------------------------------------------------------------------------
// 4. Without CAP_SYS_ADMIN: one line says so, TLS connections count bytes only

#[test]
fn without_cap_sys_admin_tls_connections_count_bytes_only() {
    // The agent through `capsh --drop=cap_sys_admin` (every other capability of root kept),
    // exec'd so that the agent keeps the wrapper's pid.
    let dir = TempDir::new("capsh");
    let wrapper = dir.path().join("meshtap-no-sys-admin");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec capsh --drop=cap_sys_admin -- -c 'exec \"$0\" \"$@\"' {} \"$@\"\n",
            meshtap_tests::agent::binary().display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&wrapper)
        .status()
        .unwrap();
    let agent = Agent::start_binary(&wrapper, &[]).unwrap_or_else(|e| panic!("{e}"));
    let log = agent.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS plaintext needs CAP_SYS_ADMIN"))
        .collect();
    assert_eq!(lines.len(), 1, "one line says what is missing:\n{log}");
    let m = agent.metrics();
    assert_eq!(
        m.value(ATTACH_FAILURES, &[("reason", "permission")]),
        1.0,
        "{}",
        m.describe(ATTACH_FAILURES)
    );
    assert_eq!(m.value(LIBRARIES_PROBED, &[]), 0.0);

    let cert = Certificate::new();
    let (srv, cli) = ("mt-tls-nocap-s", "mt-tls-nocap-c");
    let (server, port) = python_server(srv, &cert, None);
    let statuses = python_client(cli, port, "/api/users/1", 3, 1, None);
    assert_eq!(statuses, BTreeMap::from([("200".into(), 3)]));
    agent.wait_until(
        SETTLE,
        |m| {
            let (a, b, c, d) = edge_bytes(m, cli, srv, port);
            a > 0.0 && c > 0.0 && (a, c) == (b, d)
        },
        |m| format!("{}\n{}", m.describe(SENT), m.describe(RECEIVED)),
    );
    thread::sleep(Duration::from_millis(1500));
    let m = agent.metrics();
    assert_eq!(
        m.value(
            count(HTTP_SERVER_DURATION).as_str(),
            &[("service_name", srv)]
        ),
        0.0
    );
    assert_eq!(
        m.value(
            count(HTTP_CLIENT_DURATION).as_str(),
            &[("service_name", cli)]
        ),
        0.0
    );
    server.kill();
}

// ---------------------------------------------------------------------------------------------
// 5. PostgreSQL with ssl=on and psql with sslmode=require: both ends through libssl

/// The same psql session twice against one server with `ssl=on`: `sslmode=disable` (plaintext
/// on the wire) and `sslmode=require` (the `SSLRequest`, the server's `S`, then TLS through
/// libssl at both ends). Each client's series are the same exact counts, the server's are both
/// sessions', no parse error, and each connection's bytes are counted once per side.
#[test]
fn postgres_over_tls_counts_every_statement() {
    let pg = Postgres::start_tls();
    run(pg
        .client("psql")
        .args(["-X", "-q", "-c", "CREATE TABLE tlsdb (id int)"]));
    let port = pg.port.to_string();
    let server = "mt-tls-pg";
    let agent = Agent::start(&["--service-port", &format!("{port}={server}")]);
    // psql by a name of its own: a symbolic link, so that its comm is the name too (a process
    // that exits at once may be gone before the agent reads its environment).
    let sessions = [
        ("disable", "mt-pln-psql", "f"),
        ("require", "mt-tls-psql", "t"),
    ];
    for (sslmode, client, ssl) in sessions {
        let link = pg.file(client);
        std::os::unix::fs::symlink(format!("{PG_BIN}/psql"), &link).expect("link psql");
        let conninfo = format!(
            "sslmode={sslmode} gssencmode=disable host=127.0.0.1 port={port} user=postgres \
             dbname=postgres"
        );
        let out = run(Command::new(&link)
            .env("OTEL_SERVICE_NAME", client)
            .args(["-X", "-q", "-t", "-A", "-d", &conninfo])
            .args(["-c", "INSERT INTO tlsdb VALUES (1)"])
            .args(["-c", "SELECT count(*) FROM tlsdb"])
            .args(["-c", "SELECT count(*) FROM tlsdb"])
            .args([
                "-c",
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            ]));
        assert_eq!(
            out.lines().last(),
            Some(ssl),
            "psql's connection with sslmode={sslmode} is TLS: {ssl}: {out}"
        );
    }
    let mut checks = Vec::new();
    let mut ends = vec![("db_server_operation_duration_seconds_count", server, 2)];
    for (_, client, _) in sessions {
        ends.push(("db_client_operation_duration_seconds_count", client, 1));
    }
    for (family, service, sessions) in ends {
        let series = |op: &str, table: &str| {
            labels(&[
                ("service_name", service),
                ("server_port", &port),
                ("db_system_name", "postgresql"),
                ("db_operation_name", op),
                ("db_collection_name", table),
                ("error_type", ""),
            ])
        };
        checks.extend([
            expect(family, &series("INSERT", "tlsdb"), sessions),
            expect(family, &series("SELECT", "tlsdb"), 2 * sessions),
            expect(family, &series("SELECT", "pg_stat_ssl"), sessions),
            expect(family, &labels(&[("service_name", service)]), 4 * sessions),
        ]);
    }
    checks.extend([
        expect(
            "meshtap_protocol_detected_total",
            &labels(&[("protocol", "postgresql")]),
            4,
        ),
        expect(
            "meshtap_exchanges_total",
            &labels(&[("protocol", "postgresql")]),
            16,
        ),
        expect(
            "meshtap_parse_errors_total",
            &labels(&[("protocol", "postgresql")]),
            0,
        ),
    ]);
    let m = assert_settled(&agent, &checks);
    // What one end wrote the other read, but for TLS's close_notify alerts: at the end each
    // end writes one (`SSL_shutdown`: a TLS 1.3 record of 5 header bytes, the 2-byte alert,
    // its content type and a 16-byte tag, 24 bytes) and exits without reading the other's
    // (psql after its Terminate, the backend after reading that Terminate). OpenSSL reads
    // one record at a time, so the backend's last read stops before the client's alert.
    for (sslmode, client, _) in sessions {
        let unread = if sslmode == "require" { 24.0 } else { 0.0 };
        let (client_sent, server_received, server_sent, client_received) =
            edge_bytes(&m, client, server, pg.port);
        assert!(client_sent > 0.0, "{client}: {}", m.describe(SENT));
        assert_eq!(
            (client_sent - unread, server_sent - unread),
            (server_received, client_received),
            "{client}: {}\n{}",
            m.describe(SENT),
            m.describe(RECEIVED)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6. OpenSSL linked statically into an executable (as in Node's): the executable is probed

/// A child process killed and reaped on drop (also while a failing test unwinds).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tests/c/static_https_client.c` against nginx over TLS (the system's libssl.so.3), built
/// with `gcc` and `build` (the OpenSSL to build against) into an executable that `launch` runs
/// as `name` (its comm: the client is done and gone before the agent could read its
/// environment). Once the agent has probed `probed` files named `library` (found by the scan of
/// new processes, once a second, while the client waits for its go), `n` keep-alive requests
/// for `route`: exact series at both ends, the service graph, no plaintext untied, and at
/// least a plaintext event per request and per response through `library`.
fn c_https_client(
    name: &str,
    route: &str,
    n: u64,
    build: &[std::ffi::OsString],
    launch: impl FnOnce(&std::path::Path) -> Command,
    library: &str,
    probed: f64,
) {
    use std::io::{BufRead as _, Write as _};
    let agent = Agent::start(&[]);
    let cert = Certificate::new();
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let nginx = Nginx::start(
        NginxConfig::new(listen)
            .ok_everywhere()
            .tls(&cert.cert(), &cert.key()),
        None,
    );
    let dir = TempDir::new(name);
    let exe = dir.path().join(name);
    let source = meshtap_tests::workspace_root().join("tests/c/static_https_client.c");
    let out = run_command(
        Command::new("gcc")
            .arg("-O1")
            .arg("-o")
            .arg(&exe)
            .arg(&source)
            .args(build),
        RUN,
    );
    assert!(out.status.success(), "gcc: {}{}", out.stdout, out.stderr);
    let mut child = Killed(
        launch(&exe)
            .args([&listen.port().to_string(), route, &n.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the C client"),
    );
    agent.wait_until(
        DISCOVERY,
        |m| m.value(LIBRARIES_PROBED, &[("library", library)]) == probed,
        |m| format!("{}\n{}", m.describe(LIBRARIES_PROBED), agent.log()),
    );
    writeln!(child.0.stdin.take().expect("stdin"), "go").expect("write go");
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the client's result");
    let done: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(
        (done["responses"].as_u64(), done["ok"].as_u64()),
        (Some(n), Some(n)),
        "{line}"
    );
    let mut checks = vec![
        expect(
            count(HTTP_SERVER_DURATION),
            &server_series("nginx", route, "200"),
            n as f64,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &client_series(name, Some("200"), listen),
            n as f64,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &labels(&[("service_name", name)]),
            n as f64,
        ),
        expect("meshtap_tls_plaintext_untied_events_total", &labels(&[]), 0),
    ];
    checks.extend(local_edge(name, "nginx", n, 0));
    let m = assert_settled(&agent, &checks);
    assert!(
        m.value(PLAINTEXT_EVENTS, &[("library", library)]) >= 2.0 * n as f64,
        "{}",
        m.describe(PLAINTEXT_EVENTS)
    );
    nginx.stop();
}

/// OpenSSL linked in (libssl.a and libcrypto.a): SSL_read and SSL_write are in the
/// executable's own symbol table, as in Node's; the executable is probed, by its name.
#[test]
fn statically_linked_openssl_in_an_executable_is_probed() {
    let name = "mt-static-tls";
    let build = [
        "/usr/lib/x86_64-linux-gnu/libssl.a",
        "/usr/lib/x86_64-linux-gnu/libcrypto.a",
        "-lpthread",
        "-ldl",
    ]
    .map(std::ffi::OsString::from);
    c_https_client(
        name,
        "/static",
        7,
        &build,
        |exe| Command::new(exe),
        name,
        1.0,
    );
}

/// Debian 11's OpenSSL 1.1 (`libssl1.1`, `libssl-dev`), unpacked there by `cargo xtask setup`
/// (Debian 12 has OpenSSL 3 only).
const OPENSSL_1_1_DIR: &str = "/usr/local/lib/meshtap/openssl-1.1";

/// The client linked against OpenSSL 1.1's shared libssl.so.1.1 (found through its rpath): the
/// agent finds that library in the running client's mappings.
#[test]
fn openssl_1_1_dynamically_linked_is_probed() {
    let root = std::path::Path::new(OPENSSL_1_1_DIR);
    let lib = root.join("usr/lib/x86_64-linux-gnu");
    assert!(
        lib.join("libssl.so.1.1").is_file(),
        "{} missing: cargo xtask setup unpacks OpenSSL 1.1 there",
        lib.display()
    );
    let mut include = std::ffi::OsString::from("-I");
    include.push(root.join("usr/include"));
    let mut include_arch = std::ffi::OsString::from("-I");
    include_arch.push(root.join("usr/include/x86_64-linux-gnu"));
    let mut rpath = std::ffi::OsString::from("-Wl,-rpath,");
    rpath.push(&lib);
    let build = [
        include,
        include_arch,
        lib.join("libssl.so.1.1").into(),
        lib.join("libcrypto.so.1.1").into(),
        rpath,
    ];
    c_https_client(
        "mt-openssl11",
        "/old",
        9,
        &build,
        |exe| Command::new(exe),
        "libssl.so.1.1",
        1.0,
    );
}

/// Debian 13's OpenSSL 3.5 with Debian 13's C library and loader, unpacked there by `cargo
/// xtask setup`: OpenSSL has `SSL_write_ex2` from 3.3 on (Debian 12's is 3.0).
const OPENSSL_3_5_DIR: &str = "/usr/local/lib/meshtap/openssl-3.5";

/// The client built against the system's OpenSSL 3.0 and run by Debian 13's loader with Debian
/// 13's libraries: it maps OpenSSL 3.5's libssl.so.3 (a file of its own, found in its
/// mappings; the system's, probed at start, has the same name) and writes each request with
/// SSL_write_ex2 (MESHTAP_WRITE_EX2): the client sees its requests only through that probe.
/// The executable is the loader, copied under the client's name.
#[test]
fn ssl_write_ex2_of_openssl_3_5_is_probed() {
    let lib = std::path::Path::new(OPENSSL_3_5_DIR).join("usr/lib/x86_64-linux-gnu");
    let loader = lib.join("ld-linux-x86-64.so.2");
    assert!(
        lib.join("libssl.so.3").is_file() && loader.is_file(),
        "{} missing: cargo xtask setup unpacks OpenSSL 3.5 there",
        lib.display()
    );
    let name = "mt-openssl35";
    let build = ["-lssl", "-lcrypto"].map(std::ffi::OsString::from);
    let launch = |exe: &std::path::Path| {
        let client = exe.with_file_name("https-client");
        std::fs::rename(exe, &client).expect("rename the client");
        std::fs::copy(&loader, exe).expect("copy the loader");
        let mut cmd = Command::new(exe);
        cmd.arg("--library-path")
            .arg(&lib)
            .arg(client)
            .env("MESHTAP_WRITE_EX2", "1");
        cmd
    };
    c_https_client(name, "/ex2", 6, &build, launch, "libssl.so.3", 2.0);
}

// ---------------------------------------------------------------------------------------------
// 7. HTTP/2 over TLS: nginx `ssl http2`, curl `--http2` negotiating ALPN `h2`

/// A header value of `len` bytes that HPACK's Huffman code cannot shorten (`X` is an 8-bit
/// code, RFC 7541 Appendix B): it goes on the wire as long as it is.
fn incompressible(len: usize) -> String {
    "X".repeat(len)
}

/// nginx with `listen ... ssl http2` and curl `--http2` (ALPN `h2`): one curl multiplexing 11
/// requests as concurrent streams of one connection (`--parallel`), and one curl whose 3
/// requests each carry a header block of some 10 KB (three 3,400-byte headers, more than one
/// capture of 4 KiB: the plaintext of an HTTP/2 connection is captured whole, in chunks, as
/// its syscalls are on a plain connection). Exact server and client series with
/// `network_protocol_version="2"`, the service graph, one span per stream per side, and no
/// HTTP/2 parse error.
#[test]
fn nginx_http2_over_tls_driven_by_curl() {
    use meshtap_tests::h2;
    use meshtap_tests::metrics::{EXCHANGES, PARSE_ERRORS, PROTOCOL_DETECTED};
    use meshtap_tests::spans::{by_trace, describe, tag, text};

    let agent = Agent::start(&["--trace-store-rate", "0"]);
    let cert = Certificate::new();
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let nginx = Nginx::start(
        NginxConfig::new(listen)
            .access_log()
            .ok_everywhere()
            .http2()
            .tls(&cert.cert(), &cert.key()),
        None,
    );
    let base = format!("https://{listen}");
    // 6 x 200, 3 x 404, 2 x 500 as concurrent streams of one connection.
    let multiplexed: Vec<(&str, u16)> = [("/h2ok", 200), ("/missing", 404), ("/boom", 500)]
        .iter()
        .cycle()
        .take(8)
        .chain([("/h2ok", 200), ("/h2ok", 200), ("/h2ok", 200)].iter())
        .copied()
        .collect();
    let urls: Vec<String> = multiplexed
        .iter()
        .map(|(p, _)| format!("{base}{p}"))
        .collect();
    let got = h2::curl(&urls, &["-k", "--http2", "--parallel"]);
    let mut got_statuses: Vec<u16> = got.iter().map(|r| r.status).collect();
    got_statuses.sort_unstable();
    let mut want_statuses: Vec<u16> = multiplexed.iter().map(|(_, s)| *s).collect();
    want_statuses.sort_unstable();
    assert_eq!(got_statuses, want_statuses, "curl: {got:?}");
    assert!(
        got.iter().all(|r| r.version == "2") && got.iter().map(|r| r.connects).sum::<u64>() == 1,
        "one HTTP/2 connection: {got:?}"
    );
    // Three requests with a 10 KB header block each, one connection.
    let pad = incompressible(3400);
    let headers: Vec<String> = (1..=3).map(|i| format!("X-Pad-{i}: {pad}")).collect();
    let mut extra = vec!["-k", "--http2"];
    for h in &headers {
        extra.extend(["-H", h.as_str()]);
    }
    let big: Vec<String> = (0..3).map(|_| format!("{base}/h2big")).collect();
    let got = h2::curl(&big, &extra);
    assert!(
        got.iter()
            .all(|r| (r.status, r.version.as_str()) == (200, "2"))
            && got.iter().map(|r| r.connects).sum::<u64>() == 1,
        "curl with large headers: {got:?}"
    );
    let log = settled_access_log(&nginx);
    assert_eq!(
        log,
        BTreeMap::from([("200".into(), 9), ("404".into(), 3), ("500".into(), 2)]),
        "nginx's access log"
    );

    let v2 = |mut l: Labels| {
        l.push(("network_protocol_version".into(), "2".into()));
        l
    };
    let routes = [
        ("/h2ok", "200", 6),
        ("/missing", "404", 3),
        ("/boom", "500", 2),
        ("/h2big", "200", 3),
    ];
    let mut checks = Vec::new();
    for (route, status, n) in routes {
        checks.push(expect(
            count(HTTP_SERVER_DURATION),
            &v2(server_series("nginx", route, status)),
            n,
        ));
    }
    checks.extend([
        expect(
            count(HTTP_SERVER_DURATION),
            &labels(&[("service_name", "nginx")]),
            14,
        ),
        expect(
            sum(HTTP_SERVER_RESPONSE_BODY),
            &v2(server_series("nginx", "/h2ok", "200")),
            12,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &v2(client_series("curl", Some("200"), listen)),
            9,
        ),
        expect(
            sum(HTTP_CLIENT_RESPONSE_BODY),
            &v2(client_series("curl", Some("200"), listen)),
            18,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &v2(client_series("curl", Some("404"), listen)),
            3,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &v2(client_series("curl", Some("500"), listen)),
            2,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &labels(&[("service_name", "curl")]),
            14,
        ),
        expect(EXCHANGES, &labels(&[("protocol", "http2")]), 28),
        expect(PROTOCOL_DETECTED, &labels(&[("protocol", "http2")]), 4),
        expect(PARSE_ERRORS, &labels(&[("protocol", "http2")]), 0),
        expect(
            "meshtap_http2_capture_continuations_failed_total",
            &labels(&[]),
            0,
        ),
        expect(PLAINTEXT_UNTRACKED, &labels(&[]), 0),
    ]);
    checks.extend(local_edge("curl", "nginx", 14, 2));
    let m = assert_settled(&agent, &checks);
    // The ciphertext's bytes, once per side (nginx's peek at each connection's first byte is
    // not a read).
    let (client_sent, server_received, server_sent, client_received) =
        edge_bytes(&m, "curl", "nginx", listen.port());
    assert!(client_sent > 0.0, "{}", m.describe(SENT));
    assert_eq!(
        (client_sent, server_sent),
        (server_received, client_received),
        "{}\n{}",
        m.describe(SENT),
        m.describe(RECEIVED)
    );

    // One span per stream and side, HTTP/2, by (route, status); one request per trace.
    let spans = spans_of(&agent, "nginx");
    let all = describe(&spans);
    for (side, svc) in [("SERVER", "nginx"), ("CLIENT", "curl")] {
        let mut got: BTreeMap<(String, String), u64> = BTreeMap::new();
        for s in spans
            .iter()
            .filter(|s| kind(s) == side && service(s) == svc)
        {
            assert_eq!(
                tag(s, "network.protocol.version"),
                Some("2"),
                "{side} span {s}\n{all}"
            );
            *got.entry((
                tag(s, "http.path").unwrap_or_default().to_owned(),
                tag(s, "http.status_code").unwrap_or_default().to_owned(),
            ))
            .or_default() += 1;
        }
        let want: BTreeMap<(String, String), u64> = routes
            .iter()
            .map(|(r, s, n)| (((*r).to_owned(), (*s).to_owned()), *n as u64))
            .collect();
        assert_eq!(got, want, "{side} spans of {svc}:\n{all}");
    }
    for (trace, t) in by_trace(&spans) {
        let calls: BTreeSet<(String, Option<&str>)> = t
            .iter()
            .map(|s| (text(s, "name").to_lowercase(), tag(s, "http.status_code")))
            .collect();
        assert_eq!(
            calls.len(),
            1,
            "trace {trace} holds more than one request:\n{all}"
        );
    }
    nginx.stop();
}

/// h2load over TLS (ALPN `h2`, libssl) against nghttpd with TLS (libssl): 400 streams on 2
/// connections, 16 at once, over three files (13 bytes, 4 KiB, 70 KB: each 70 KB response is
/// written in TLS calls far larger than one capture) and a missing path. Every stream counted
/// on both sides from the plaintext, exactly as h2load reports, no HTTP/2 parse error, no
/// continuation cut short. The ring is sized as the README advises for bulk HTTP/2.
#[test]
fn h2load_against_nghttpd_over_tls() {
    use meshtap_tests::h2::{self, FILES, MISSING};
    use meshtap_tests::metrics::{EXCHANGES, PARSE_ERRORS, PROTOCOL_DETECTED};
    const N: u64 = 400;
    const CLIENTS: u32 = 2;
    let cert = Certificate::new();
    let srv = h2::nghttpd_tls(&cert.key(), &cert.cert());
    let name = "mt-h2-tls";
    let port = srv.port().to_string();
    let agent = Agent::start(&[
        "--service-port",
        &format!("{port}={name}"),
        "--ring-buffer-bytes",
        "33554432",
    ]);
    let mut paths: Vec<&str> = FILES.iter().map(|(p, _)| *p).collect();
    paths.push(MISSING);
    let urls: Vec<String> = paths
        .iter()
        .map(|p| format!("https://{}{p}", srv.addr))
        .collect();
    let per_path = N / paths.len() as u64;
    let sum = h2::h2load(N, CLIENTS, 16, &urls);
    assert_eq!(
        (sum.total, sum.done, sum.succeeded, sum.errored, sum.timeout),
        (N, N, N - per_path, 0, 0),
        "h2load: {sum:?}"
    );
    assert_eq!(sum.classes, [N - per_path, 0, per_path, 0], "{sum:?}");
    let v2 = |mut l: Labels| {
        l.push(("network_protocol_version".into(), "2".into()));
        l
    };
    let dest = srv.addr;
    let mut checks = Vec::new();
    for path in &paths {
        let status = if *path == MISSING { "404" } else { "200" };
        checks.push(expect(
            count(HTTP_SERVER_DURATION),
            &v2(server_series(name, path, status)),
            per_path as f64,
        ));
    }
    checks.extend([
        expect(
            count(HTTP_SERVER_DURATION),
            &labels(&[("service_name", name)]),
            N as f64,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &v2(client_series("h2load", Some("200"), dest)),
            (N - per_path) as f64,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &v2(client_series("h2load", Some("404"), dest)),
            per_path as f64,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &labels(&[("service_name", "h2load")]),
            N as f64,
        ),
        expect(EXCHANGES, &labels(&[("protocol", "http2")]), (2 * N) as f64),
        expect(
            PROTOCOL_DETECTED,
            &labels(&[("protocol", "http2")]),
            f64::from(2 * CLIENTS),
        ),
        expect(PARSE_ERRORS, &labels(&[("protocol", "http2")]), 0),
        expect(
            "meshtap_http2_capture_continuations_failed_total",
            &labels(&[]),
            0,
        ),
        expect("meshtap_events_lost_total", &labels(&[]), 0),
    ]);
    checks.extend(local_edge("h2load", name, N, 0));
    assert_settled(&agent, &checks);
}

// ---------------------------------------------------------------------------------------------
// 8. Node's `https` at both ends: OpenSSL in /usr/bin/node, fed from memory by TLSWrap

/// `tests/scripts/https_node.js` as `name`, its service name `name` too; stdout and stdin
/// piped (the server stops when a line comes).
fn node_script(name: &str, args: &[&str]) -> Killed {
    Killed(
        Command::new(which("node"))
            .arg(meshtap_tests::process::scripts_dir().join("https_node.js"))
            .arg(name)
            .args(args)
            .env("OTEL_SERVICE_NAME", name)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn node"),
    )
}

/// The path of `program` on PATH.
fn which(program: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{program} not found on PATH (cargo xtask setup)"))
}

/// The next JSON line the script printed.
fn next_line(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> Value {
    let line = lines
        .next()
        .expect("the script printed a line")
        .expect("read the script's line");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// Node's TLSWrap feeds OpenSSL from memory: the socket syscalls happen between the TLS calls,
/// never inside. The agent ties each `SSL` to its connection at the handshake (the server's
/// ClientHello read right before the first call on a new `SSL`; the client's first call on a
/// new `SSL` right before its ClientHello write), then by `SSL *` for every later call, however
/// the event loop interleaves connections: 60 requests at once over 4 keep-alive connections
/// of one client process. Exact series on both ends, the service graph, bytes once per side,
/// every server span the child of a client span, no plaintext untied.
#[test]
fn node_https_server_and_client() {
    use std::io::{BufRead as _, Write as _};
    let agent = Agent::start(&[]);
    let cert = Certificate::new();
    let (srv, cli) = ("mt-node-srv", "mt-node-cli");
    let mut server = node_script(
        srv,
        &["server", "--cert", &cert.cert(), "--key", &cert.key()],
    );
    let mut server_out = std::io::BufReader::new(server.0.stdout.take().expect("stdout")).lines();
    let listening = next_line(&mut server_out);
    let port = listening["port"].as_u64().expect("port") as u16;
    // This machine's Node (20, /usr/bin/node) has OpenSSL linked in: the node executable is
    // found in the running server's mappings (once a second). Debian's own `nodejs`, which
    // `cargo xtask setup` installs where no node is, uses the system's libssl.so.3 instead,
    // probed from the start.
    let node = which("node");
    let ldd = run_command(Command::new("ldd").arg(&node), RUN);
    let library = if ldd.stdout.contains("libssl") {
        "libssl.so.3"
    } else {
        "node"
    };
    agent.wait_until(
        DISCOVERY,
        |m| m.value(LIBRARIES_PROBED, &[("library", library)]) == 1.0,
        |m| format!("{}\n{}", m.describe(LIBRARIES_PROBED), agent.log()),
    );
    let port_s = port.to_string();
    let mut client = node_script(
        cli,
        &[
            "client",
            "--port",
            &port_s,
            "--requests",
            "60",
            "--connections",
            "4",
        ],
    );
    let mut client_out = std::io::BufReader::new(client.0.stdout.take().expect("stdout")).lines();
    let done = next_line(&mut client_out);
    assert_eq!(
        (&done["statuses"], done["connections"].as_u64()),
        (
            &serde_json::json!({"200": 20, "404": 20, "500": 20}),
            Some(4)
        ),
        "{done}"
    );
    writeln!(server.0.stdin.as_mut().expect("stdin"), "stop").expect("stop the server");
    let served = next_line(&mut server_out);
    assert_eq!(
        served["served"],
        serde_json::json!({"200": 20, "404": 20, "500": 20}),
        "{served}"
    );

    let dest: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut checks = sixty_requests(srv, cli, dest, None);
    checks.extend(local_edge(cli, srv, 60, 20));
    let m = assert_settled(&agent, &checks);
    assert!(
        m.value(PLAINTEXT_EVENTS, &[("library", library)]) >= 240.0,
        "each request and response written and read through node's OpenSSL:\n{}",
        m.describe(PLAINTEXT_EVENTS)
    );
    // The ciphertext's bytes, once per side: what one end wrote the other read, but for the
    // server's close_notify alerts (24 bytes each, see the PostgreSQL test), one per
    // connection, written when the client closed its 4 connections (`agent.destroy()`) and
    // never read by it.
    let bytes_match = |m: &Metrics| {
        let (client_sent, server_received, server_sent, client_received) =
            edge_bytes(m, cli, srv, port);
        client_sent > 0.0
            && (client_sent, server_sent - 4.0 * 24.0) == (server_received, client_received)
    };
    agent.wait_until(SETTLE, bytes_match, |m| {
        format!("{}\n{}", m.describe(SENT), m.describe(RECEIVED))
    });

    // Spans: 60 of each kind, every server span the child of a client span of its trace.
    paired_spans(&agent, srv, cli, 60);
}

/// The exact series of the 60 requests the Node and Go clients send (20 each of 200, 404 and
/// 500), at both ends, those with `version` as their `network_protocol_version` when given;
/// no plaintext untied or untracked.
fn sixty_requests(srv: &str, cli: &str, dest: SocketAddr, version: Option<&str>) -> Vec<Expect> {
    let versioned = |mut l: Labels| {
        if let Some(v) = version {
            l.push(("network_protocol_version".into(), v.into()));
        }
        l
    };
    vec![
        expect(
            count(HTTP_SERVER_DURATION),
            &versioned(server_series(srv, "/api/users/*", "200")),
            20,
        ),
        expect(
            sum(HTTP_SERVER_RESPONSE_BODY),
            &versioned(server_series(srv, "/api/users/*", "200")),
            // "user 0\n" .. "user 57\n": 7 bytes for the 4 one-digit ids (0, 3, 6, 9), 8 for
            // the other 16.
            (4 * 7 + 16 * 8) as f64,
        ),
        expect(
            count(HTTP_SERVER_DURATION),
            &versioned(server_series(srv, "/api/fail", "500")),
            20,
        ),
        expect(
            count(HTTP_SERVER_DURATION),
            &labels(&[("service_name", srv)]),
            60,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &versioned(client_series(cli, Some("200"), dest)),
            20,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &versioned(client_series(cli, Some("404"), dest)),
            20,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &versioned(client_series(cli, Some("500"), dest)),
            20,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &labels(&[("service_name", cli)]),
            60,
        ),
        expect("meshtap_tls_plaintext_untied_events_total", &labels(&[]), 0),
        expect(PLAINTEXT_UNTRACKED, &labels(&[]), 0),
    ]
}

/// `n` server spans of `srv` and `n` client spans of `cli`, every server span the child of a
/// client span of its trace, with the same status; returned for more checks.
fn paired_spans(agent: &Agent, srv: &str, cli: &str, n: usize) -> Vec<(Value, Value)> {
    let spans = spans_of(agent, srv);
    let all = meshtap_tests::spans::describe(&spans);
    let of = |svc: &str, k: &str| -> Vec<&Value> {
        spans
            .iter()
            .filter(|s| service(s) == svc && kind(s) == k)
            .collect()
    };
    let (servers, clients) = (of(srv, "SERVER"), of(cli, "CLIENT"));
    assert_eq!((servers.len(), clients.len()), (n, n), "{all}");
    let mut pairs = Vec::with_capacity(n);
    for s in servers {
        let p = parent(s).unwrap_or_else(|| panic!("server span without parent: {s}"));
        let c = clients
            .iter()
            .find(|c| id(c) == p)
            .unwrap_or_else(|| panic!("server span's parent is not a client span: {s}"));
        assert_eq!(trace_id(c), trace_id(s));
        assert_eq!(
            meshtap_tests::spans::tag(c, "http.status_code"),
            meshtap_tests::spans::tag(s, "http.status_code"),
            "a server span under another request's client span:\n{s}\n{c}"
        );
        pairs.push(((*c).clone(), s.clone()));
    }
    pairs
}

// ---------------------------------------------------------------------------------------------
// 9. Go's crypto/tls at both ends: one static Go executable, HTTP/1.1 and HTTP/2 (ALPN `h2`)

/// The Go program (`tests/scripts/https_go.go`, built once per test binary into an executable
/// named `https_go`) with `args`, its service name `name`; stdout and stdin piped (the server
/// stops serving when a line comes). Both programs stay until killed (here, at the end of the
/// test): the agent names a process from /proc when it handles its events, and a process gone
/// by then (a Go client is done within some 50 ms) would go by its executable's name.
fn go_program(exe: &std::path::Path, name: &str, args: &[&str]) -> Killed {
    Killed(
        Command::new(exe)
            .args(args)
            .env("OTEL_SERVICE_NAME", name)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn https_go"),
    )
}

/// Go's `crypto/tls` is Go code in the executable (no OpenSSL, no libc: `CGO_ENABLED=0`), over
/// Go's own netpoller: the agent probes `crypto/tls.(*Conn).Read` and `Write` in the
/// executable's symbol table and ties their plaintext to the connection through the `net.Conn`
/// under the `tls.Conn` (its netFD's socket). Both ends are the same executable file, probed
/// once (library `https_go`, the file's name), the services told apart by `OTEL_SERVICE_NAME`.
/// 60 requests at once over 4 keep-alive connections, one `http.Transport` each: HTTP/1.1
/// (`--http1`: no `h2` offered) or HTTP/2 (ALPN `h2`, every connection's requests concurrent
/// streams, the goroutines of one process interleaving the connections). Exact series on both
/// ends, the service graph, bytes once per side, every server span the child of a client span,
/// no plaintext untied.
fn go_https_server_and_client(exe: &std::path::Path, http2: bool) {
    use meshtap_tests::metrics::{EXCHANGES, PARSE_ERRORS, PROTOCOL_DETECTED};
    use meshtap_tests::spans::tag;
    use std::io::{BufRead as _, Write as _};
    let agent = Agent::start(&[]);
    let cert = Certificate::new();
    let (srv, cli, version, proto) = if http2 {
        ("mt-go-h2-srv", "mt-go-h2-cli", "2", "HTTP/2.0")
    } else {
        ("mt-go-h1-srv", "mt-go-h1-cli", "1.1", "HTTP/1.1")
    };
    let library = "https_go";
    let mode: &[&str] = if http2 { &[] } else { &["--http1"] };
    let (cert_path, key_path) = (cert.cert(), cert.key());
    let mut args = vec!["server", "--cert", &cert_path, "--key", &key_path];
    args.extend(mode);
    let mut server = go_program(exe, srv, &args);
    let mut server_out = std::io::BufReader::new(server.0.stdout.take().expect("stdout")).lines();
    let listening = next_line(&mut server_out);
    let port = listening["port"].as_u64().expect("port") as u16;
    // Found in the running server's mappings (once a second), before the client starts: the
    // client's process maps the same file, already probed.
    agent.wait_until(
        DISCOVERY,
        |m| m.value(LIBRARIES_PROBED, &[("library", library)]) == 1.0,
        |m| format!("{}\n{}", m.describe(LIBRARIES_PROBED), agent.log()),
    );
    let port_s = port.to_string();
    let mut args = vec![
        "client",
        "--port",
        &port_s,
        "--requests",
        "60",
        "--connections",
        "4",
        "--ca",
        &cert_path,
    ];
    args.extend(mode);
    let mut client = go_program(exe, cli, &args);
    let mut client_out = std::io::BufReader::new(client.0.stdout.take().expect("stdout")).lines();
    let done = next_line(&mut client_out);
    let statuses = serde_json::json!({"200": 20, "404": 20, "500": 20});
    assert_eq!(
        (&done["statuses"], done["connections"].as_u64()),
        (&statuses, Some(4)),
        "{done}"
    );
    assert_eq!(
        done["protocols"],
        serde_json::json!({ proto: 60 }),
        "{done}"
    );
    writeln!(server.0.stdin.as_mut().expect("stdin"), "stop").expect("stop the server");
    let served = next_line(&mut server_out);
    // Every connection closed at the server too before it answers: what both ends send at
    // close is on the wire.
    assert_eq!(
        (
            &served["served"],
            &served["protocols"],
            served["connections"].as_u64(),
            served["closed"].as_u64()
        ),
        (
            &statuses,
            &serde_json::json!({ proto: 60 }),
            Some(4),
            Some(4)
        ),
        "{served}"
    );

    let dest: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut checks = sixty_requests(srv, cli, dest, Some(version));
    let mut client_series_of = client_series(cli, Some("200"), dest);
    client_series_of.push(("network_protocol_version".into(), version.into()));
    checks.push(expect(
        sum(HTTP_CLIENT_RESPONSE_BODY),
        &client_series_of,
        (4 * 7 + 16 * 8) as f64,
    ));
    if http2 {
        // Each of the 4 connections detected at both ends, 60 streams at both ends; the test's
        // scrapes are HTTP/1.1, counted under `http`.
        checks.extend([
            expect(PARSE_ERRORS, &labels(&[("protocol", "http2")]), 0),
            expect(EXCHANGES, &labels(&[("protocol", "http2")]), 120),
            expect(PROTOCOL_DETECTED, &labels(&[("protocol", "http2")]), 8),
            expect(
                "meshtap_http2_capture_continuations_failed_total",
                &labels(&[]),
                0,
            ),
        ]);
    }
    checks.extend(local_edge(cli, srv, 60, 20));
    let m = assert_settled(&agent, &checks);
    assert!(
        m.value(PLAINTEXT_EVENTS, &[("library", library)]) >= 240.0,
        "each request and response written and read through Go's crypto/tls:\n{}",
        m.describe(PLAINTEXT_EVENTS)
    );
    // The ciphertext's bytes, once per side. What the client wrote the server read, exactly:
    // the client closes first (its close_notify, 24 bytes under TLS 1.3, see the PostgreSQL
    // test, then its socket), the server reads up to that alert. What the server wrote the
    // client read, but for the server's own close_notify on each connection, sent once it has
    // read the client's: the client has shut its reading side by then (`CloseRead`) and closed
    // its socket, and never reads it. Whether that alert leaves the server at all depends on a
    // race the test cannot see: a client socket closed with bytes it never read (an HTTP/2
    // WINDOW_UPDATE, say) answers with a reset, and a server write after the reset fails, so
    // between 0 and 4 alerts of 24 bytes are on the server's side alone (4 in most runs, 3
    // seen with HTTP/2).
    let bytes_match = |m: &Metrics| {
        let (client_sent, server_received, server_sent, client_received) =
            edge_bytes(m, cli, srv, port);
        let alerts = (server_sent - client_received) / 24.0;
        client_sent > 0.0
            && client_received > 0.0
            && client_sent == server_received
            && alerts.fract() == 0.0
            && (0.0..=4.0).contains(&alerts)
    };
    agent.wait_until(SETTLE, bytes_match, |m| {
        format!("{}\n{}", m.describe(SENT), m.describe(RECEIVED))
    });

    // Spans: 60 of each kind, every server span the child of a client span of its trace (both
    // ends on this node: the same connection, and with HTTP/2 the same stream), each of the
    // protocol version, the same request at both ends (the route, where the client span has
    // one).
    for (c, s) in paired_spans(&agent, srv, cli, 60) {
        for span in [&c, &s] {
            assert_eq!(
                tag(span, "network.protocol.version"),
                Some(version),
                "{span}"
            );
        }
        let (cpath, spath) = (tag(&c, "http.path"), tag(&s, "http.path"));
        assert!(
            cpath.is_none() || cpath == spath,
            "a server span under another request's client span:\n{s}\n{c}"
        );
    }
}

// Each built (once) before its agent starts: the agent sees none of the compiler's work.

#[test]
fn go_https_server_and_client_http1() {
    go_https_server_and_client(meshtap_tests::golang::https_go(), false);
}

#[test]
fn go_https_server_and_client_http2() {
    go_https_server_and_client(meshtap_tests::golang::https_go(), true);
}

/// The same with Go 1.23 (Debian 12's backports), the Go of today's binaries: its symbols
/// (`go:itab.` where 1.19 has `go.itab.`) and its `crypto/tls` code (other `RET`s).
#[test]
fn go_1_23_https_server_and_client_http2() {
    go_https_server_and_client(meshtap_tests::golang::https_go_1_23(), true);
}
