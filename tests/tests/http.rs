//! HTTP/1.x, end to end: the real agent binary and kernel, real nginx, curl, wrk and Prometheus,
//! and raw-socket Python programs that write exactly the bytes a case needs.
//!
//! Every number asserted is a truth the test knows independently of the agent: what curl, wrk
//! and the scripts report they did, what nginx logged. The Python programs name their services
//! uniquely (`OTEL_SERVICE_NAME`); curl, wrk and nginx go by their executable names, so their
//! checks are narrowed by route or port (see [`SHARED_NAMES`]). Assertions filter on those
//! labels, so the test's own scrapes of the agent (also HTTP, also observed) do not matter, nor
//! does most traffic of other suites running on the same machine. Node-wide counters without
//! such labels are asserted exactly only when the node was quiet (see the junk and cap tests).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::thread;
use std::time::Duration;

use meshtap_tests::metrics::{
    EXCHANGES, GRAPH_CLIENT_SECONDS, GRAPH_FAILED, GRAPH_REQUESTS, GRAPH_SERVER_SECONDS,
    HTTP_CLIENT_DURATION, HTTP_CLIENT_REQUEST_BODY, HTTP_CLIENT_RESPONSE_BODY,
    HTTP_SERVER_DURATION, HTTP_SERVER_REQUEST_BODY, HTTP_SERVER_RESPONSE_BODY, OVERFLOW,
    PROTOCOL_DETECTED, SERIES_OVERFLOW, bucket, count, sum,
};
use meshtap_tests::process::run_command;
use meshtap_tests::prometheus::promtool_check;
use meshtap_tests::{
    Agent, Metrics, NetNs, Nginx, NginxConfig, Prometheus, Scraper, Script, ScriptChild, VethPair,
    free_port, serial,
};
use serde_json::Value;

/// How long one client program may run.
const RUN: Duration = Duration::from_secs(60);
/// How long a program may take to start and report it is listening.
const STARTUP: Duration = Duration::from_secs(10);
/// How long the agent may take to turn what a test did into metrics.
const SETTLE: Duration = Duration::from_secs(20);
/// Same, after a load run of a hundred thousand exchanges or more.
const SETTLE_LOAD: Duration = Duration::from_secs(60);

const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";

// ---------------------------------------------------------------------------------------------
// Expected values

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// `http_server_*` labels; `None` leaves a label out (matches any value).
fn server_series(
    service: &str,
    method: Option<&str>,
    route: Option<&str>,
    status: Option<&str>,
) -> Labels {
    let mut l = labels(&[("service_name", service)]);
    for (key, value) in [
        ("http_request_method", method),
        ("http_route", route),
        ("http_response_status_code", status),
    ] {
        if let Some(v) = value {
            l.push((key.to_owned(), v.to_owned()));
        }
    }
    l
}

/// `http_client_*` labels; `None` leaves a label out.
fn client_series(
    service: &str,
    method: Option<&str>,
    status: Option<&str>,
    dest: SocketAddr,
) -> Labels {
    let mut l = labels(&[
        ("service_name", service),
        ("server_address", &dest.ip().to_string()),
        ("server_port", &dest.port().to_string()),
    ]);
    for (key, value) in [
        ("http_request_method", method),
        ("http_response_status_code", status),
    ] {
        if let Some(v) = value {
            l.push((key.to_owned(), v.to_owned()));
        }
    }
    l
}

/// Service-graph edge labels.
fn edge(client: &str, server: &str, connection_type: &str) -> Labels {
    labels(&[
        ("client", client),
        ("server", server),
        ("connection_type", connection_type),
    ])
}

fn with(mut l: Labels, key: &str, value: &str) -> Labels {
    l.push((key.to_owned(), value.to_owned()));
    l
}

/// One expected value: the sum of the series of `name` carrying all of `labels`.
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

/// Everything a failure report shows: the mismatches, every series of the families involved,
/// and the agent's loss and parse-error counters (which explain most wrong counts).
fn report(m: &Metrics, checks: &[Expect]) -> String {
    let problems = mismatches(m, checks);
    let mut names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let series: Vec<String> = names.iter().map(|n| m.describe(n)).collect();
    let lost = m.value("meshtap_events_lost_total", &[]);
    let lost_note = if lost > 0.0 {
        format!(
            "NOTE: the agent lost {lost} events (node-wide, see below): with events lost no \
             count can be exact; is the machine overloaded (other suites or benchmarks)?\n"
        )
    } else {
        String::new()
    };
    format!(
        "{lost_note}{} of {} checks fail:\n  {}\nseries:\n{}\nagent loss / parse errors:\n{}\n{}",
        problems.len(),
        checks.len(),
        problems.join("\n  "),
        series.join("\n"),
        m.describe("meshtap_events_lost_total"),
        m.describe("meshtap_parse_errors_total"),
    )
}

/// Waits until every check holds in one scrape, then checks again a moment later (nothing is
/// counted late or twice). Returns the last scrape.
fn assert_settled(agent: &Agent, checks: &[Expect], timeout: Duration) -> Metrics {
    agent.wait_until(
        timeout,
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

/// The distinct label sets of `name` (histogram `_count` series) that carry `labels`.
fn series_count(m: &Metrics, name: &str, labels: &Labels) -> usize {
    let borrowed: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    m.matching(name, &borrowed).count()
}

/// The checks of one set of identical exchanges seen from both sides: the duration counts, the
/// body-size counts and sums on both sides. Body-size histograms observe every exchange (0 for
/// a message without a body).
struct Both<'a> {
    server: &'a Labels,
    client: &'a Labels,
    n: u64,
    request_body: u64,
    response_body: u64,
}

fn both_sides(b: &Both<'_>) -> Vec<Expect> {
    let n = b.n as f64;
    let (req, resp) = (b.request_body as f64, b.response_body as f64);
    vec![
        expect(count(HTTP_SERVER_DURATION), b.server, n),
        expect(count(HTTP_SERVER_REQUEST_BODY), b.server, n),
        expect(sum(HTTP_SERVER_REQUEST_BODY), b.server, req),
        expect(count(HTTP_SERVER_RESPONSE_BODY), b.server, n),
        expect(sum(HTTP_SERVER_RESPONSE_BODY), b.server, resp),
        expect(count(HTTP_CLIENT_DURATION), b.client, n),
        expect(count(HTTP_CLIENT_REQUEST_BODY), b.client, n),
        expect(sum(HTTP_CLIENT_REQUEST_BODY), b.client, req),
        expect(count(HTTP_CLIENT_RESPONSE_BODY), b.client, n),
        expect(sum(HTTP_CLIENT_RESPONSE_BODY), b.client, resp),
    ]
}

/// Service names that every run of these programs on the node shares. A check on one of them
/// that no route or port narrows down would also count other test suites running at the same
/// time on a shared machine (a benchmark's nginx and wrk): such checks are left out.
const SHARED_NAMES: [&str; 3] = ["nginx", "curl", "wrk"];

/// The service-graph checks of an edge whose two ends are processes on this node: each
/// exchange counted once, with one server-side and one client-side duration.
fn local_edge(client: &str, server: &str, total: u64, failed: u64) -> Vec<Expect> {
    let e = edge(client, server, "");
    let (total, failed) = (total as f64, failed as f64);
    let mut checks = vec![
        expect(GRAPH_REQUESTS, &e, total),
        expect(GRAPH_FAILED, &e, failed),
        expect(count(GRAPH_SERVER_SECONDS), &e, total),
        expect(count(GRAPH_CLIENT_SECONDS), &e, total),
        expect(
            GRAPH_REQUESTS,
            &labels(&[("client", client), ("server", server)]),
            total,
        ),
    ];
    // Neither end counted as talking to a virtual node (a peer not seen as a process).
    for (end, name) in [("server", server), ("client", client)] {
        if !SHARED_NAMES.contains(&name) {
            checks.push(expect(
                GRAPH_REQUESTS,
                &labels(&[(end, name), ("connection_type", "virtual_node")]),
                0.0,
            ));
        }
    }
    checks
}

// ---------------------------------------------------------------------------------------------
// Programs

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("script result has no number {key:?}: {v}"))
}

fn listening_port(server: &mut ScriptChild) -> u16 {
    let v = server.expect_event("listening", STARTUP);
    u16::try_from(num(&v, "port")).expect("port fits u16")
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `http_raw.py` serving on 127.0.0.1 as service `service` (also its comm, at most 15 bytes).
fn raw_server(service: &str, port: u16) -> (ScriptChild, SocketAddr) {
    let mut child = Script::new("http_raw.py", service)
        .env(OTEL_SERVICE_NAME, service)
        .arg("server")
        .opt("--bind", "127.0.0.1")
        .opt("--port", port)
        .spawn();
    let port = listening_port(&mut child);
    (child, localhost(port))
}

/// An `http_raw.py` client of `dest` as service `service`, in `mode`.
fn raw_client(service: &str, dest: SocketAddr, mode: &str) -> Script {
    Script::new("http_raw.py", service)
        .env(OTEL_SERVICE_NAME, service)
        .arg("client")
        .opt("--host", dest.ip())
        .opt("--port", dest.port())
        .opt("--mode", mode)
}

/// The `statuses` a client script reported, as status -> count.
fn statuses(done: &Value) -> BTreeMap<String, u64> {
    done["statuses"]
        .as_object()
        .expect("statuses")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().expect("count")))
        .collect()
}

/// Where nginx and its clients run.
#[derive(Clone, Copy)]
enum Net<'a> {
    Loopback,
    /// nginx in `a`, clients in `b`.
    Veth(&'a VethPair),
}

impl<'a> Net<'a> {
    fn listen(self) -> SocketAddr {
        match self {
            Net::Loopback => localhost(free_port()),
            Net::Veth(p) => SocketAddr::new(IpAddr::V4(p.a.v4), 18080),
        }
    }

    fn server_ns(self) -> Option<&'a NetNs> {
        match self {
            Net::Loopback => None,
            Net::Veth(p) => Some(&p.a.ns),
        }
    }

    fn client_command(self, program: &str) -> Command {
        match self {
            Net::Loopback => Command::new(program),
            Net::Veth(p) => p.b.ns.command(program),
        }
    }
}

/// One `curl` process fetching every URL in turn (reusing its connection where the server keeps
/// it open), with `extra` options for all of them. Returns (status, body bytes, curl's own
/// `time_total` in seconds) per URL.
fn curl_timed(net: Net<'_>, urls: &[String], extra: &[&str]) -> Vec<(u16, u64, f64)> {
    let mut cmd = net.client_command("curl");
    cmd.args([
        "-s",
        "--max-time",
        "60",
        "-w",
        "%{http_code} %{size_download} %{time_total}\\n",
    ])
    .args(extra);
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
    let results: Vec<(u16, u64, f64)> = out
        .stdout
        .lines()
        .map(|l| {
            let mut fields = l.split(' ');
            let mut next = || fields.next().expect("curl -w line has 3 fields");
            (
                next().parse().expect("http_code"),
                next().parse().expect("size_download"),
                next().parse().expect("time_total"),
            )
        })
        .collect();
    assert_eq!(results.len(), urls.len(), "curl output:\n{}", out.stdout);
    results
}

/// [`curl_timed`] without the timings.
fn curl(net: Net<'_>, urls: &[String], extra: &[&str]) -> Vec<(u16, u64)> {
    curl_timed(net, urls, extra)
        .into_iter()
        .map(|(code, size, _)| (code, size))
        .collect()
}

/// Per status: (responses, body bytes) of curl's results.
fn by_status(results: &[(u16, u64)]) -> BTreeMap<u16, (u64, u64)> {
    let mut out = BTreeMap::new();
    for (code, size) in results {
        let e = out.entry(*code).or_insert((0, 0));
        e.0 += 1;
        e.1 += size;
    }
    out
}

/// `wrk -t1 -c4 -d2s url`: the number of responses wrk completed ("N requests in").
fn wrk(net: Net<'_>, url: &str) -> u64 {
    let mut cmd = net.client_command("wrk");
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
            let l = l.trim();
            let (n, rest) = l.split_once(' ')?;
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

// ---------------------------------------------------------------------------------------------
// 1. nginx serving static responses, driven by curl and wrk

fn nginx_static(net: Net<'_>) {
    let agent = Agent::start(&[]);
    let listen = net.listen();
    let nginx = Nginx::start(NginxConfig::new(listen).access_log(), net.server_ns());
    let base = format!("http://{listen}");

    // curl: one process, keep-alive; nginx closes the connection after a 500.
    let plan = [("/ok", 10), ("/missing", 7), ("/ok", 10), ("/boom", 3)];
    let urls: Vec<String> = plan
        .iter()
        .flat_map(|(path, n)| {
            let base = &base;
            (0..*n).map(move |_| format!("{base}{path}"))
        })
        .collect();
    let results = by_status(&curl(net, &urls, &[]));
    let (ok, missing, boom) = (results[&200], results[&404], results[&500]);
    assert_eq!(
        (results.len(), ok.0, missing.0, boom.0),
        (3, 20, 7, 3),
        "curl's statuses: {results:?}"
    );
    assert_eq!(ok.1, 60, "/ok answers ok\\n");
    let mut checks = Vec::new();
    for (route, status, (n, bytes)) in [
        ("/ok", "200", ok),
        ("/missing", "404", missing),
        ("/boom", "500", boom),
    ] {
        checks.extend(both_sides(&Both {
            server: &server_series("nginx", Some("GET"), Some(route), Some(status)),
            client: &client_series("curl", Some("GET"), Some(status), listen),
            n,
            request_body: 0,
            response_body: bytes,
        }));
    }
    // Nothing of curl's under other labels (a service-wide total of "nginx" would also count
    // every other nginx on the node: the per-route checks above pin this one's).
    checks.push(expect(
        count(HTTP_CLIENT_DURATION),
        &client_series("curl", None, None, listen),
        30.0,
    ));
    checks.extend(local_edge("curl", "nginx", 30, 3));
    assert_settled(&agent, &checks, SETTLE);

    // wrk: its own count of completed responses, and nginx's access log of what it served. A
    // request in flight when wrk stops was answered by nginx (logged 200) but never read by
    // wrk: the client side saw no response (status "", a failed request on the graph).
    let completed = wrk(net, &format!("{base}/ok"));
    let log = settled_access_log(&nginx);
    let logged = |s: &str| log.get(s).copied().unwrap_or(0);
    assert_eq!(
        (logged("404"), logged("500")),
        (7, 3),
        "nginx access log: {log:?}"
    );
    let served = logged("200") - 20;
    let abandoned = logged("499");
    assert!(
        served >= completed && served - completed <= 4,
        "wrk completed {completed}, nginx served {served} (log {log:?}): more in flight than \
         wrk's 4 connections"
    );
    let unanswered = served - completed + abandoned;
    eprintln!(
        "wrk: {completed} completed; nginx: {served} served, {abandoned} abandoned (499); \
         {unanswered} unanswered on the client side"
    );
    let wrk_client = |status: &str| client_series("wrk", Some("GET"), Some(status), listen);
    // nginx's /ok series now include wrk's requests: replaced below.
    checks.retain(|c| {
        !c.labels
            .contains(&("http_route".to_owned(), "/ok".to_owned()))
    });
    checks.extend([
        expect(
            count(HTTP_SERVER_DURATION),
            &server_series("nginx", Some("GET"), Some("/ok"), Some("200")),
            (20 + served) as f64,
        ),
        expect(
            sum(HTTP_SERVER_RESPONSE_BODY),
            &server_series("nginx", Some("GET"), Some("/ok"), Some("200")),
            (3 * (20 + served)) as f64,
        ),
        expect(
            count(HTTP_SERVER_DURATION),
            &server_series("nginx", Some("GET"), Some("/ok"), Some("")),
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
            (3 * completed) as f64,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &wrk_client(""),
            unanswered as f64,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &client_series("wrk", None, None, listen),
            (completed + unanswered) as f64,
        ),
    ]);
    checks.extend(local_edge("wrk", "nginx", served + abandoned, unanswered));
    assert_settled(&agent, &checks, SETTLE_LOAD);
    nginx.stop();
}

#[test]
fn nginx_static_on_loopback() {
    let _serial = serial();
    nginx_static(Net::Loopback);
}

#[test]
fn nginx_static_across_namespaces() {
    let _serial = serial();
    let pair = VethPair::new();
    nginx_static(Net::Veth(&pair));
}

// ---------------------------------------------------------------------------------------------
// 2. nginx as a reverse proxy to a Python backend

fn backend(service: &str) -> (ScriptChild, SocketAddr) {
    let mut child = Script::new("http_backend.py", service)
        .env(OTEL_SERVICE_NAME, service)
        .opt("--bind", "127.0.0.1")
        .spawn();
    let port = listening_port(&mut child);
    (child, localhost(port))
}

#[test]
fn nginx_reverse_proxy_to_a_python_backend() {
    const USERS: u64 = 12;
    const FAILS: u64 = 4;
    const SLOW: u64 = 3;
    const POSTS: u64 = 5;
    const POST_BODY: u64 = 1000;
    let _serial = serial();
    let agent = Agent::start(&[]);
    let (mut backend, backend_addr) = backend("backend");
    let front = localhost(free_port());
    let nginx = Nginx::start(NginxConfig::new(front).backend(backend_addr), None);
    let base = format!("http://{front}");

    let mut urls: Vec<String> = (0..USERS)
        .map(|i| format!("{base}/api/users/{}", 1000 + i))
        .collect();
    urls.extend((0..FAILS).map(|_| format!("{base}/api/fail")));
    urls.extend((0..SLOW).map(|_| format!("{base}/api/slow")));
    let gets = by_status(&curl(Net::Loopback, &urls, &[]));
    let body = "p".repeat(POST_BODY as usize);
    let post_urls: Vec<String> = (0..POSTS).map(|_| format!("{base}/api/users/77")).collect();
    let posts = by_status(&curl(Net::Loopback, &post_urls, &["--data-binary", &body]));
    backend.send_line("quit");
    let served = backend.finish(RUN);
    assert_eq!(
        served["served"],
        serde_json::json!({"GET 200": USERS + SLOW, "GET 500": FAILS, "POST 200": POSTS}),
        "{served}"
    );
    assert_eq!(num(&served, "request_body"), POSTS * POST_BODY);
    // Bodies: `user 1000\n`.. (10 bytes), `fail\n`, `slow\n`, `user 77\n`.
    let (users_bytes, fail_bytes, slow_bytes, post_bytes) =
        (USERS * 10, FAILS * 5, SLOW * 5, POSTS * 8);
    assert_eq!(gets[&200], (USERS + SLOW, users_bytes + slow_bytes));
    assert_eq!(gets[&500], (FAILS, fail_bytes));
    assert_eq!(posts[&200], (POSTS, post_bytes));
    assert_eq!(
        num(&served, "response_body"),
        users_bytes + fail_bytes + slow_bytes + post_bytes
    );

    let total = USERS + FAILS + SLOW + POSTS;
    let mut checks = Vec::new();
    // Both hops: curl -> nginx (front) and nginx -> backend.
    for (cli, srv, dest) in [("curl", "nginx", front), ("nginx", "backend", backend_addr)] {
        for (method, route, status, n, req, resp) in [
            ("GET", "/api/users/*", "200", USERS, 0, users_bytes),
            ("GET", "/api/fail", "500", FAILS, 0, fail_bytes),
            ("GET", "/api/slow", "200", SLOW, 0, slow_bytes),
            (
                "POST",
                "/api/users/*",
                "200",
                POSTS,
                POSTS * POST_BODY,
                post_bytes,
            ),
        ] {
            let s = server_series(srv, Some(method), Some(route), Some(status));
            checks.extend([
                expect(count(HTTP_SERVER_DURATION), &s, n as f64),
                expect(sum(HTTP_SERVER_REQUEST_BODY), &s, req as f64),
                expect(sum(HTTP_SERVER_RESPONSE_BODY), &s, resp as f64),
            ]);
        }
        if srv == "backend" {
            // Nothing under other labels. (Not checked for "nginx": every nginx on the node is
            // "nginx", and the per-route checks above pin this one's requests.)
            checks.push(expect(
                count(HTTP_SERVER_DURATION),
                &server_series(srv, None, None, None),
                total as f64,
            ));
        }
        checks.extend([
            expect(
                count(HTTP_CLIENT_DURATION),
                &client_series(cli, Some("GET"), Some("200"), dest),
                (USERS + SLOW) as f64,
            ),
            expect(
                count(HTTP_CLIENT_DURATION),
                &client_series(cli, Some("GET"), Some("500"), dest),
                FAILS as f64,
            ),
            expect(
                count(HTTP_CLIENT_DURATION),
                &client_series(cli, Some("POST"), Some("200"), dest),
                POSTS as f64,
            ),
            expect(
                count(HTTP_CLIENT_DURATION),
                &client_series(cli, None, None, dest),
                total as f64,
            ),
            expect(
                sum(HTTP_CLIENT_REQUEST_BODY),
                &client_series(cli, None, None, dest),
                (POSTS * POST_BODY) as f64,
            ),
            expect(
                sum(HTTP_CLIENT_RESPONSE_BODY),
                &client_series(cli, None, None, dest),
                (users_bytes + fail_bytes + slow_bytes + post_bytes) as f64,
            ),
        ]);
        checks.extend(local_edge(cli, srv, total, FAILS));
        // The backend sleeps 100 ms: none of the slow requests is faster than 0.1 s, all are
        // below 0.25 s (default OpenTelemetry buckets).
        let slow = server_series(srv, Some("GET"), Some("/api/slow"), Some("200"));
        checks.extend([
            expect(
                bucket(HTTP_SERVER_DURATION),
                &with(slow.clone(), "le", "0.1"),
                0.0,
            ),
            expect(
                bucket(HTTP_SERVER_DURATION),
                &with(slow, "le", "0.25"),
                SLOW as f64,
            ),
        ]);
    }
    assert_settled(&agent, &checks, SETTLE);
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 3. Durations land in the right bucket

#[test]
fn slow_backend_lands_in_the_right_bucket() {
    const N: u64 = 10;
    const ROUNDS: usize = 5;
    let _serial = serial();
    let agent = Agent::start(&["--duration-buckets", "0.05,0.1,0.105,0.2"]);
    // The bucket is a known truth when curl itself saw every exchange within 105 ms: the
    // agent's client-side duration (first request byte written .. last response byte read)
    // lies inside curl's time_total, the server-side one inside the client-side one, and both
    // span the backend's 100 ms sleep. On a loaded machine a round can take longer: then it is
    // set aside and another round runs against a new backend (its own series).
    let mut rounds = Vec::new();
    let clean = (0..ROUNDS).find_map(|round| {
        let service = format!("mt-slow-{round}");
        let (mut backend, dest) = backend(&service);
        let urls: Vec<String> = (0..N).map(|_| format!("http://{dest}/api/slow")).collect();
        let results = curl_timed(Net::Loopback, &urls, &[]);
        backend.send_line("quit");
        backend.finish(RUN);
        assert!(
            results
                .iter()
                .all(|(code, size, _)| (*code, *size) == (200, 5)),
            "{results:?}"
        );
        let times: Vec<f64> = results.iter().map(|r| r.2).collect();
        let slowest = times.iter().copied().fold(0.0, f64::max);
        rounds.push(times);
        (slowest <= 0.105).then_some((service, dest))
    });
    let (service, dest) = clean.unwrap_or_else(|| {
        panic!("in none of {ROUNDS} rounds did curl see all {N} requests within 105 ms: {rounds:?}")
    });

    let srv = server_series(&service, Some("GET"), Some("/api/slow"), Some("200"));
    let cli = client_series("curl", Some("GET"), Some("200"), dest);
    let mut checks = Vec::new();
    for (family, l) in [(HTTP_SERVER_DURATION, &srv), (HTTP_CLIENT_DURATION, &cli)] {
        checks.extend([
            expect(count(family), l, N as f64),
            expect(bucket(family), &with(l.clone(), "le", "0.05"), 0.0),
            expect(bucket(family), &with(l.clone(), "le", "0.1"), 0.0),
            expect(bucket(family), &with(l.clone(), "le", "0.105"), N as f64),
            expect(bucket(family), &with(l.clone(), "le", "0.2"), N as f64),
            expect(bucket(family), &with(l.clone(), "le", "+Inf"), N as f64),
        ]);
    }
    checks.extend(local_edge("curl", &service, N, 0));
    let m = assert_settled(&agent, &checks, SETTLE);
    for (family, l) in [(HTTP_SERVER_DURATION, &srv), (HTTP_CLIENT_DURATION, &cli)] {
        let mean = value_of(&m, &sum(family), l) / value_of(&m, &count(family), l);
        assert!(
            (mean - 0.1).abs() <= 0.005,
            "{family}: mean {mean} s is not within 5 ms of 0.1 s\n{}",
            m.describe(&sum(family))
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Raw sockets: framing the agent must follow exactly

#[test]
fn pipelined_requests_in_one_write() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let (_server, dest) = raw_server("mt-pipe-srv", 0);
    let paths = [
        "/status/200",
        "/status/404",
        "/bytes/7",
        "/status/201",
        "/status/500",
        "/status/200",
        "/status/503",
        "/bytes/300",
    ];
    let done = raw_client("mt-pipe-cli", dest, "pipeline")
        .opt("--paths", paths.join(","))
        .run(RUN);
    assert_eq!(num(&done, "responses"), paths.len() as u64, "{done}");
    let want: BTreeMap<String, u64> = [("200", 4), ("201", 1), ("404", 1), ("500", 1), ("503", 1)]
        .iter()
        .map(|(s, n)| ((*s).to_owned(), *n))
        .collect();
    assert_eq!(statuses(&done), want);
    // `status NNN\n` is 11 bytes.
    assert_eq!(num(&done, "response_body"), 6 * 11 + 7 + 300);

    let mut checks = Vec::new();
    for (route, status, n, body) in [
        ("/status/*", "200", 2, 22),
        ("/status/*", "201", 1, 11),
        ("/status/*", "404", 1, 11),
        ("/status/*", "500", 1, 11),
        ("/status/*", "503", 1, 11),
        ("/bytes/*", "200", 2, 307),
    ] {
        let s = server_series("mt-pipe-srv", Some("GET"), Some(route), Some(status));
        checks.extend([
            expect(count(HTTP_SERVER_DURATION), &s, n as f64),
            expect(sum(HTTP_SERVER_RESPONSE_BODY), &s, body as f64),
        ]);
    }
    for (status, n) in &want {
        checks.push(expect(
            count(HTTP_CLIENT_DURATION),
            &client_series("mt-pipe-cli", Some("GET"), Some(status), dest),
            *n as f64,
        ));
    }
    checks.extend([
        expect(
            sum(HTTP_CLIENT_RESPONSE_BODY),
            &client_series("mt-pipe-cli", None, None, dest),
            (6 * 11 + 7 + 300) as f64,
        ),
        expect(
            count(HTTP_SERVER_DURATION),
            &server_series("mt-pipe-srv", None, None, None),
            8.0,
        ),
    ]);
    checks.extend(local_edge("mt-pipe-cli", "mt-pipe-srv", 8, 2));
    assert_settled(&agent, &checks, SETTLE);
}

#[test]
fn request_written_one_byte_at_a_time() {
    const REQUEST_BODY: u64 = 20;
    const RESPONSE_BODY: u64 = 50;
    let _serial = serial();
    let agent = Agent::start(&[]);
    let (_server, dest) = raw_server("mt-drib-srv", 0);
    let done = raw_client("mt-drib-cli", dest, "dribble")
        .opt("--path", format!("/dribble/{RESPONSE_BODY}"))
        .opt("--body", REQUEST_BODY)
        .run(RUN);
    assert_eq!(
        (
            num(&done, "responses"),
            num(&done, "request_body"),
            num(&done, "response_body")
        ),
        (1, REQUEST_BODY, RESPONSE_BODY),
        "{done}"
    );
    let mut checks = both_sides(&Both {
        server: &server_series("mt-drib-srv", Some("POST"), Some("/dribble/*"), Some("200")),
        client: &client_series("mt-drib-cli", Some("POST"), Some("200"), dest),
        n: 1,
        request_body: REQUEST_BODY,
        response_body: RESPONSE_BODY,
    });
    checks.extend(local_edge("mt-drib-cli", "mt-drib-srv", 1, 0));
    assert_settled(&agent, &checks, SETTLE);
}

#[test]
fn chunked_response_of_10_mib() {
    const TOTAL: u64 = 10 * 1024 * 1024;
    let _serial = serial();
    let agent = Agent::start(&[]);
    let (_server, dest) = raw_server("mt-chunk-srv", 0);
    // The server writes each 64 KiB chunk (size line first) in its own write; the client reads
    // 1 KiB at a time, the agent's default capture, so every chunk-size line is captured.
    let done = raw_client("mt-chunk-cli", dest, "chunked")
        .opt("--path", format!("/chunked/{TOTAL}/65536"))
        .opt("--recv", 1024)
        .run(RUN);
    assert_eq!(num(&done, "response_body"), TOTAL, "{done}");
    let mut checks = both_sides(&Both {
        server: &server_series(
            "mt-chunk-srv",
            Some("GET"),
            Some("/chunked/*/*"),
            Some("200"),
        ),
        client: &client_series("mt-chunk-cli", Some("GET"), Some("200"), dest),
        n: 1,
        request_body: 0,
        response_body: TOTAL,
    });
    checks.extend(local_edge("mt-chunk-cli", "mt-chunk-srv", 1, 0));
    assert_settled(&agent, &checks, SETTLE);
}

#[test]
fn ten_thousand_requests_on_one_keepalive_connection() {
    const N: u64 = 10_000;
    let _serial = serial();
    let agent = Agent::start(&[]);
    let (_server, dest) = raw_server("mt-ka-srv", 0);
    let done = raw_client("mt-ka-cli", dest, "seq")
        .opt("--paths", "/bytes/3")
        .opt("--repeat", N)
        .run(RUN);
    assert_eq!(
        (num(&done, "responses"), num(&done, "connections")),
        (N, 1),
        "{done}"
    );
    let mut checks = both_sides(&Both {
        server: &server_series("mt-ka-srv", Some("GET"), Some("/bytes/*"), Some("200")),
        client: &client_series("mt-ka-cli", Some("GET"), Some("200"), dest),
        n: N,
        request_body: 0,
        response_body: 3 * N,
    });
    checks.extend(local_edge("mt-ka-cli", "mt-ka-srv", N, 0));
    assert_settled(&agent, &checks, SETTLE);
}

/// Does any HTTP or service-graph series carry one of `names` as a label value?
fn http_series_naming<'a>(m: &'a Metrics, names: &[&str]) -> Vec<&'a meshtap_tests::Sample> {
    m.samples
        .iter()
        .filter(|s| s.name.starts_with("http_") || s.name.starts_with("traces_service_graph"))
        .filter(|s| s.labels.values().any(|v| names.contains(&v.as_str())))
        .collect()
}

#[test]
fn binary_and_tls_bytes_on_an_http_port_are_not_http() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let (srv, rnd, tls) = ("mt-junk-srv", "mt-junk-rnd", "mt-junk-tls");
    let (_server, dest) = raw_server(srv, 0);
    // The port speaks HTTP: a real exchange first, from another client.
    let ok = raw_client("mt-junk-ok", dest, "seq")
        .opt("--paths", "/bytes/1")
        .run(RUN);
    assert_eq!(num(&ok, "responses"), 1);
    agent.wait_for(
        &count(HTTP_SERVER_DURATION),
        &[("service_name", srv)],
        1.0,
        SETTLE,
    );

    // Node-wide counters over one keep-alive connection: its own detection is counted once
    // (primed here), and each completed scrape adds exactly one client exchange.
    let mut scraper = Scraper::connect(agent.addr());
    scraper.metrics();
    thread::sleep(Duration::from_secs(1));
    let before = scraper.metrics();
    for (name, kind, seed) in [(rnd, "random", 7), (tls, "tls", 8)] {
        let done = raw_client(name, dest, "junk")
            .opt("--kind", kind)
            .opt("--size", 4096)
            .opt("--seed", seed)
            .run(RUN);
        assert_eq!(num(&done, "junk_bytes"), 4096);
    }
    thread::sleep(Duration::from_secs(3));
    let after = scraper.metrics();
    let http = [("protocol", "http")];
    let detected = after.value(PROTOCOL_DETECTED, &http) - before.value(PROTOCOL_DETECTED, &http);
    let exchanges = after.value(EXCHANGES, &http) - before.value(EXCHANGES, &http);
    // Every exchange lands in exactly one duration histogram: what the histograms of the whole
    // node gained tells whether anything but our scrape was exchanged meanwhile.
    let observed = |m: &Metrics| {
        m.value(&count(HTTP_SERVER_DURATION), &[]) + m.value(&count(HTTP_CLIENT_DURATION), &[])
    };
    let in_series = observed(&after) - observed(&before);
    let named = http_series_naming(&after, &[srv, rnd, tls]);
    let server_total = after.value(&count(HTTP_SERVER_DURATION), &[("service_name", srv)]);
    let mut problems = Vec::new();
    if in_series == 1.0 {
        // A quiet node: nothing but the scrape before the junk.
        if detected != 0.0 {
            problems.push(format!(
                "{detected} connections detected as HTTP during the junk (0 expected)"
            ));
        }
        if exchanges != 1.0 {
            problems.push(format!(
                "{exchanges} HTTP exchanges during the junk (1 expected: the scrape before it)"
            ));
        }
    } else {
        eprintln!(
            "other HTTP traffic on the node during the junk ({in_series} exchanges): the \
             node-wide detection count ({detected}) is not asserted"
        );
    }
    if server_total != 1.0 {
        problems.push(format!(
            "{srv} has {server_total} server exchanges, 1 expected"
        ));
    }
    if named
        .iter()
        .any(|s| s.labels.values().any(|v| v == rnd || v == tls))
    {
        problems.push("HTTP series name the junk clients".to_owned());
    }
    let named: Vec<String> = named.iter().map(ToString::to_string).collect();
    assert!(
        problems.is_empty(),
        "{}\nHTTP series of {srv}/{rnd}/{tls}:\n  {}\n{}\n{}\n{}",
        problems.join("\n"),
        named.join("\n  "),
        after.describe(PROTOCOL_DETECTED),
        after.describe(EXCHANGES),
        after.describe("meshtap_parse_errors_total"),
    );
}

#[test]
fn agent_started_mid_stream_counts_only_what_it_saw() {
    const WARM: u64 = 5;
    const THEN: u64 = 7;
    let _serial = serial();
    let (srv, cli) = ("mt-mid-srv", "mt-mid-cli");
    let (mut server, dest) = raw_server(srv, 0);
    // WARM requests, then GET /wait, whose answer the server holds back until told.
    // Held alive once done: the agent names the client from /proc, which a process that has
    // exited no longer shows (the agent may only get to it after the last request).
    let mut client = raw_client(cli, dest, "midstream")
        .opt("--path", "/bytes/4")
        .opt("--warm", WARM)
        .opt("--then", THEN)
        .arg("--hold")
        .spawn();
    client.expect_event("waiting", STARTUP);
    let agent = Agent::start(&[]);
    // The /wait request was read before the agent started; its response goes out now.
    server.send_line("go");
    let done = client.expect_event("done", RUN);
    assert_eq!(num(&done, "responses"), WARM + 1 + THEN, "{done}");
    let mut checks = both_sides(&Both {
        server: &server_series(srv, Some("GET"), Some("/bytes/*"), Some("200")),
        client: &client_series(cli, Some("GET"), Some("200"), dest),
        n: THEN,
        request_body: 0,
        response_body: 4 * THEN,
    });
    checks.extend([
        // Nothing else: not the /wait exchange, not a response without its request.
        expect(
            count(HTTP_SERVER_DURATION),
            &server_series(srv, None, None, None),
            THEN as f64,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &labels(&[("service_name", cli)]),
            THEN as f64,
        ),
    ]);
    checks.extend(local_edge(cli, srv, THEN, 0));
    assert_settled(&agent, &checks, SETTLE);
    client.kill();
}

#[test]
fn requests_without_response_fail_on_the_client_side() {
    const N: u64 = 3;
    let _serial = serial();
    let agent = Agent::start(&[]);
    let (srv, cli) = ("mt-nr-srv", "mt-nr-cli");
    let (server, dest) = raw_server(srv, 0);
    let done = raw_client(cli, dest, "noresp").opt("--count", N).run(RUN);
    assert_eq!(
        (num(&done, "requests"), num(&done, "responses")),
        (N, 0),
        "{done}"
    );
    let mut checks = vec![
        expect(
            count(HTTP_SERVER_DURATION),
            &server_series(srv, Some("GET"), Some("/close"), Some("")),
            N as f64,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &client_series(cli, Some("GET"), Some(""), dest),
            N as f64,
        ),
    ];
    // No response: failed per the client's rule (the server's rule, 5xx, does not apply).
    checks.extend(local_edge(cli, srv, N, N));
    assert_settled(&agent, &checks, SETTLE);

    // The destination is known to speak HTTP: connects refused there are failed requests of an
    // edge to a virtual node (nothing listens, so the server is the address).
    server.kill();
    let url = format!("http://{dest}/bytes/1");
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        &url,
        "-o",
        "/dev/null",
        &url,
    ]);
    let out = run_command(&mut cmd, RUN);
    assert_eq!(
        out.status.code(),
        Some(7),
        "curl: refused expected: {out:?}"
    );
    let refused = edge("curl", &dest.ip().to_string(), "virtual_node");
    checks.extend([
        expect(GRAPH_REQUESTS, &refused, 2.0),
        expect(GRAPH_FAILED, &refused, 2.0),
        expect(
            "meshtap_tcp_connections_failed_total",
            &labels(&[("client", "curl")]),
            2.0,
        ),
    ]);
    assert_settled(&agent, &checks, SETTLE);
}

/// A client that writes its request and closes at once: nginx reads the request and writes
/// its response to a socket whose peer is gone. On loopback the peer's RST is processed while
/// nginx is still in `writev`, so the socket reaches TCP_CLOSE before the write returns: the
/// response's bytes come after the close and must still complete the server's exchange.
#[test]
fn responses_written_after_the_client_hung_up_are_served() {
    const N: u64 = 300;
    let _serial = serial();
    let agent = Agent::start(&[]);
    let listen = Net::Loopback.listen();
    let nginx = Nginx::start(NginxConfig::new(listen).access_log(), None);
    let cli = "mt-hup-cli";
    let done = raw_client(cli, listen, "hangup")
        .opt("--path", "/ok")
        .opt("--count", N)
        .run(RUN);
    assert_eq!(num(&done, "requests"), N, "{done}");
    // nginx wrote every response whole (the write succeeds; the RST comes after).
    let log = settled_access_log(&nginx);
    assert_eq!(
        log,
        BTreeMap::from([("200".to_owned(), N)]),
        "nginx access log"
    );
    let server = |status: &str| server_series("nginx", Some("GET"), Some("/ok"), Some(status));
    let mut checks = vec![
        expect(count(HTTP_SERVER_DURATION), &server("200"), N as f64),
        expect(
            sum(HTTP_SERVER_RESPONSE_BODY),
            &server("200"),
            (3 * N) as f64,
        ),
        expect(count(HTTP_SERVER_DURATION), &server(""), 0.0),
        // The client read nothing: every request failed on its side.
        expect(
            count(HTTP_CLIENT_DURATION),
            &client_series(cli, Some("GET"), Some(""), listen),
            N as f64,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &client_series(cli, None, None, listen),
            N as f64,
        ),
        expect("meshtap_close_waits_cut_short_total", &labels(&[]), 0.0),
    ];
    checks.extend(local_edge(cli, "nginx", N, N));
    assert_settled(&agent, &checks, SETTLE);
    nginx.stop();
}

/// nginx closes each connection after one request (`keepalive_requests 1`); the client writes a
/// second request on it anyway, after nginx's FIN arrived. The write draws nginx's RST, which on
/// loopback closes the client's socket before the write returns: the request comes after the
/// close and must still count, as a request that got no response.
#[test]
fn a_request_on_a_connection_the_server_closed_fails() {
    const N: u64 = 100;
    let _serial = serial();
    let agent = Agent::start(&[]);
    let listen = Net::Loopback.listen();
    let nginx = Nginx::start(
        NginxConfig::new(listen).access_log().keepalive_requests(1),
        None,
    );
    let cli = "mt-reuse-cli";
    let done = raw_client(cli, listen, "reuse")
        .opt("--path", "/ok")
        .opt("--count", N)
        .run(RUN);
    assert_eq!(
        (
            num(&done, "requests"),
            num(&done, "responses"),
            num(&done, "unsent"),
            num(&done, "unanswered")
        ),
        (2 * N, N, 0, N),
        "{done}"
    );
    let log = settled_access_log(&nginx);
    assert_eq!(
        log,
        BTreeMap::from([("200".to_owned(), N)]),
        "nginx access log"
    );
    let client = |status: &str| client_series(cli, Some("GET"), Some(status), listen);
    let mut checks = vec![
        expect(count(HTTP_CLIENT_DURATION), &client("200"), N as f64),
        expect(count(HTTP_CLIENT_DURATION), &client(""), N as f64),
        expect(
            count(HTTP_CLIENT_DURATION),
            &client_series(cli, None, None, listen),
            (2 * N) as f64,
        ),
        expect(
            count(HTTP_SERVER_DURATION),
            &server_series("nginx", None, None, None),
            N as f64,
        ),
        expect(
            count(HTTP_SERVER_DURATION),
            &server_series("nginx", Some("GET"), Some("/ok"), Some("200")),
            N as f64,
        ),
        expect("meshtap_close_waits_cut_short_total", &labels(&[]), 0.0),
    ];
    // The second requests have no server side: counted alone on the edge, as failed.
    let e = edge(cli, "nginx", "");
    checks.extend([
        expect(GRAPH_REQUESTS, &e, (2 * N) as f64),
        expect(GRAPH_FAILED, &e, N as f64),
        expect(count(GRAPH_SERVER_SECONDS), &e, N as f64),
        expect(count(GRAPH_CLIENT_SECONDS), &e, (2 * N) as f64),
    ]);
    assert_settled(&agent, &checks, SETTLE);
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 5. Bounded cardinality

#[test]
fn hundred_thousand_user_ids_are_one_route() {
    const N: u64 = 100_000;
    let _serial = serial();
    let agent = Agent::start(&[]);
    let (srv, cli) = ("mt-ids-srv", "mt-ids-cli");
    let (_server, dest) = raw_server(srv, 0);
    let done = raw_client(cli, dest, "batches")
        .opt("--prefix", "/users/")
        .opt("--count", N)
        .opt("--batch", 20)
        .run(RUN);
    assert_eq!(num(&done, "responses"), N, "{done}");
    let mut checks = both_sides(&Both {
        server: &server_series(srv, Some("GET"), Some("/users/*"), Some("200")),
        client: &client_series(cli, Some("GET"), Some("200"), dest),
        n: N,
        request_body: 0,
        response_body: 2 * N,
    });
    checks.extend(local_edge(cli, srv, N, 0));
    let m = assert_settled(&agent, &checks, SETTLE_LOAD);
    let by_service = server_series(srv, None, None, None);
    assert_eq!(
        series_count(&m, &count(HTTP_SERVER_DURATION), &by_service),
        1,
        "{}",
        m.describe(&count(HTTP_SERVER_DURATION))
    );
}

/// `/rAA`, `/rAB`, ...: routes of letters only, which no rule collapses.
fn letter_route(i: usize) -> String {
    let letter = |n: usize| char::from(b'a' + u8::try_from(n % 26).expect("< 26"));
    format!("/r{}{}", letter(i / 26), letter(i))
}

#[test]
fn series_beyond_the_cap_fold_into_overflow() {
    const CAP: usize = 20;
    const ROUTES: usize = 100;
    const EACH: u64 = 3;
    let _serial = serial();
    let agent = Agent::start(&["--max-series", &CAP.to_string()]);
    let (srv, cli) = ("mt-cap-srv", "mt-cap-cli");
    let (_server, dest) = raw_server(srv, 0);
    let routes: Vec<String> = (0..ROUTES).map(letter_route).collect();
    // In order: each route EACH times, one route after the other.
    let done = raw_client(cli, dest, "seq")
        .opt("--paths", routes.join(","))
        .opt("--repeat", EACH)
        .run(RUN);
    let total = ROUTES as u64 * EACH;
    assert_eq!(num(&done, "responses"), total, "{done}");
    let name = count(HTTP_SERVER_DURATION);
    agent.wait_for(&name, &[("service_name", srv)], total as f64, SETTLE);
    thread::sleep(Duration::from_millis(1500));
    let m = agent.metrics();

    // The first CAP label sets of the family, in arrival order, are admitted. On a quiet node
    // they are this server's first CAP routes; label sets of other servers on the node (another
    // test suite running at the same time) take their place in the order they came.
    let admitted: Vec<&meshtap_tests::Sample> = m
        .samples
        .iter()
        .filter(|s| {
            s.name == name && s.labels.get("http_route").map(String::as_str) != Some(OVERFLOW)
        })
        .collect();
    let foreign: Vec<String> = admitted
        .iter()
        .filter(|s| s.labels.get("service_name").map(String::as_str) != Some(srv))
        .map(ToString::to_string)
        .collect();
    let mine = CAP.saturating_sub(foreign.len());
    let folded = ((ROUTES - mine) as u64 * EACH) as f64;
    let mut checks: Vec<Expect> = routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let n = if i < mine { EACH as f64 } else { 0.0 };
            expect(&name, &server_series(srv, None, Some(r), None), n)
        })
        .collect();
    checks.push(expect(
        &name,
        &server_series(srv, Some("GET"), Some(OVERFLOW), Some("200")),
        folded,
    ));
    let all_folded: f64 = m
        .samples
        .iter()
        .filter(|s| {
            s.name == name && s.labels.get("http_route").map(String::as_str) == Some(OVERFLOW)
        })
        .map(|s| s.value)
        .sum();
    // Each folded observation counted once, under the family's name.
    checks.push(expect(
        SERIES_OVERFLOW,
        &labels(&[("metric", HTTP_SERVER_DURATION)]),
        all_folded,
    ));
    let problems = mismatches(&m, &checks);
    assert!(
        problems.is_empty() && admitted.len() == CAP && all_folded >= folded,
        "{} label sets admitted (cap {CAP}), {} of them other servers':\n  {}\n{}",
        admitted.len(),
        foreign.len(),
        foreign.join("\n  "),
        report(&m, &checks)
    );
    if foreign.is_empty() {
        assert_eq!(
            (mine, all_folded),
            (CAP, folded),
            "a quiet node: this server's first {CAP} routes admitted, the rest folded"
        );
    } else {
        eprintln!(
            "{} label sets of other servers on the node took part of the cap:\n  {}",
            foreign.len(),
            foreign.join("\n  ")
        );
    }
}

#[test]
fn idle_series_expire_after_the_ttl() {
    let _serial = serial();
    let agent = Agent::start(&["--series-ttl-secs", "2"]);
    let (srv, cli) = ("mt-ttl-srv", "mt-ttl-cli");
    let (_server, dest) = raw_server(srv, 0);
    let run = |n: u64| {
        raw_client(cli, dest, "seq")
            .opt("--paths", "/ttl-a")
            .opt("--repeat", n)
            .run(RUN)
    };
    run(3);
    let srv_labels = server_series(srv, Some("GET"), Some("/ttl-a"), Some("200"));
    let cli_labels = client_series(cli, Some("GET"), Some("200"), dest);
    let checks = |n: f64| {
        vec![
            expect(count(HTTP_SERVER_DURATION), &srv_labels, n),
            expect(count(HTTP_CLIENT_DURATION), &cli_labels, n),
        ]
    };
    agent.wait_until(
        SETTLE,
        |m| mismatches(m, &checks(3.0)).is_empty(),
        |m| report(m, &checks(3.0)),
    );
    // Gone within the TTL plus the agent's sweep period.
    let gone = |m: &Metrics| http_series_naming(m, &[srv, cli]).is_empty();
    agent.wait_until(Duration::from_secs(15), gone, |m| {
        let left: Vec<String> = http_series_naming(m, &[srv, cli])
            .iter()
            .map(ToString::to_string)
            .collect();
        format!(
            "series still there 15 s after a 2 s TTL:\n  {}",
            left.join("\n  ")
        )
    });
    // The connection-level series of the edge go too, once no connection of it is open or
    // remembered (a closed one for up to 30 s, for late reads) and the TTL passed: the agent
    // looks every 10 s.
    let tcp_series = |m: &Metrics| -> Vec<String> {
        m.samples
            .iter()
            .filter(|s| s.name.starts_with("meshtap_tcp_"))
            .filter(|s| s.labels.get("client").is_some_and(|c| c == cli))
            .map(ToString::to_string)
            .collect()
    };
    assert!(
        !tcp_series(&agent.metrics()).is_empty(),
        "the edge's connection series are there before they expire"
    );
    agent.wait_until(
        Duration::from_secs(60),
        |m| tcp_series(m).is_empty(),
        |m| {
            format!(
                "connection series still there 60 s after a 2 s TTL:\n  {}",
                tcp_series(m).join("\n  ")
            )
        },
    );
    // Back, counted from zero.
    run(2);
    agent.wait_until(
        SETTLE,
        |m| mismatches(m, &checks(2.0)).is_empty(),
        |m| report(m, &checks(2.0)),
    );
    agent.wait_for(
        "meshtap_tcp_connections_opened_total",
        &[("client", cli), ("server", srv), ("role", "client")],
        1.0,
        SETTLE,
    );
}

// ---------------------------------------------------------------------------------------------
// Service names

#[test]
fn service_names_from_flags_beat_the_environment() {
    let _serial = serial();
    let front = localhost(free_port());
    let raw_port = free_port();
    let agent = Agent::start(&[
        "--service-port",
        &format!("{}=frontend", front.port()),
        "--service-port",
        &format!("{raw_port}=mt-port-name"),
        "--service-name",
        "curl=mt-curl",
    ]);
    let nginx = Nginx::start(NginxConfig::new(front), None);
    let urls: Vec<String> = (0..4).map(|_| format!("http://{front}/ok")).collect();
    assert_eq!(by_status(&curl(Net::Loopback, &urls, &[]))[&200], (4, 12));
    // OTEL_SERVICE_NAME says mt-env-name, the port mapping wins.
    let (_server, dest) = raw_server("mt-env-name", raw_port);
    let done = raw_client("mt-named-cli", dest, "seq")
        .opt("--paths", "/x")
        .opt("--repeat", 5)
        .run(RUN);
    assert_eq!(num(&done, "responses"), 5);
    let mut checks = vec![
        expect(
            count(HTTP_SERVER_DURATION),
            &server_series("frontend", Some("GET"), Some("/ok"), Some("200")),
            4.0,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &client_series("mt-curl", Some("GET"), Some("200"), front),
            4.0,
        ),
        expect(
            count(HTTP_SERVER_DURATION),
            &server_series("mt-port-name", Some("GET"), Some("/x"), Some("200")),
            5.0,
        ),
        expect(
            count(HTTP_SERVER_DURATION),
            &server_series("mt-env-name", None, None, None),
            0.0,
        ),
        // Not under the executable names.
        expect(
            count(HTTP_CLIENT_DURATION),
            &client_series("curl", None, None, front),
            0.0,
        ),
        expect(
            GRAPH_REQUESTS,
            &labels(&[("client", "curl"), ("server", "frontend")]),
            0.0,
        ),
        expect(
            GRAPH_REQUESTS,
            &labels(&[("client", "mt-curl"), ("server", "nginx")]),
            0.0,
        ),
    ];
    checks.extend(local_edge("mt-curl", "frontend", 4, 0));
    checks.extend(local_edge("mt-named-cli", "mt-port-name", 5, 0));
    assert_settled(&agent, &checks, SETTLE);
    nginx.stop();
}

/// Processes that make one request and exit (cron jobs, CLIs, health checks) go by their
/// `OTEL_SERVICE_NAME`, not by their command name: each process's first connection wakes the
/// agent at once, which reads `/proc/<pid>/environ` before the process is gone. A batched wake-up
/// (or the reader's 20 ms poll) came after most of them had exited.
#[test]
fn one_request_processes_go_by_their_environment_name() {
    const N: u64 = 20;
    let _serial = serial();
    let agent = Agent::start(&[]);
    let (srv, cli) = ("mt-oneshot-srv", "mt-oneshot-cli");
    let (_server, dest) = raw_server(srv, 0);
    let url = format!("http://{dest}/oneshot");
    for _ in 0..N {
        // `python3 -c`: its comm is `python3`, not the service name. It exits as soon as it has
        // the response.
        let out = run_command(
            Command::new("python3")
                .env(OTEL_SERVICE_NAME, cli)
                .arg("-c")
                .arg(
                    "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).status)",
                )
                .arg(&url),
            RUN,
        );
        assert!(out.status.success(), "{}", out.stderr);
        assert_eq!(out.stdout.trim(), "200");
    }
    let mut checks = vec![
        expect(
            count(HTTP_CLIENT_DURATION),
            &client_series(cli, Some("GET"), Some("200"), dest),
            N as f64,
        ),
        // Every request of the server's, and all of them from the named client.
        expect(GRAPH_REQUESTS, &labels(&[("server", srv)]), N as f64),
    ];
    checks.extend(local_edge(cli, srv, N, 0));
    assert_settled(&agent, &checks, SETTLE);
}

// ---------------------------------------------------------------------------------------------
// 6. A real Prometheus, and promtool

#[test]
fn prometheus_scrapes_the_exact_totals() {
    const N: u64 = 50;
    let _serial = serial();
    let agent = Agent::start(&[]);
    let (srv, cli) = ("mt-prom-srv", "mt-prom-cli");
    let (_server, dest) = raw_server(srv, 0);
    let done = raw_client(cli, dest, "seq")
        .opt("--paths", "/status/200,/status/500")
        .opt("--repeat", N / 2)
        .run(RUN);
    assert_eq!(num(&done, "responses"), N);
    let mut checks = vec![expect(
        count(HTTP_SERVER_DURATION),
        &server_series(srv, None, None, None),
        N as f64,
    )];
    checks.extend(local_edge(cli, srv, N, N / 2));
    assert_settled(&agent, &checks, SETTLE);

    let prometheus = Prometheus::start(agent.addr());
    let timeout = Duration::from_secs(60);
    prometheus.wait_for(
        &format!(
            "sum({}{{service_name=\"{srv}\"}})",
            count(HTTP_SERVER_DURATION)
        ),
        N as f64,
        timeout,
    );
    prometheus.wait_for(
        &format!(
            "sum({}{{service_name=\"{srv}\",http_response_status_code=\"500\"}})",
            count(HTTP_SERVER_DURATION)
        ),
        (N / 2) as f64,
        timeout,
    );
    prometheus.wait_for(
        &format!("sum({GRAPH_FAILED}{{client=\"{cli}\",server=\"{srv}\"}})"),
        (N / 2) as f64,
        timeout,
    );

    let body = agent.metrics_text();
    for family in [HTTP_SERVER_DURATION, HTTP_CLIENT_DURATION, GRAPH_REQUESTS] {
        assert!(body.contains(family), "no {family} in the exposition");
    }
    if let Err(report) = promtool_check(&body) {
        panic!("{report}\n--- exposition ---\n{body}");
    }
}
