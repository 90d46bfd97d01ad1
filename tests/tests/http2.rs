//! HTTP/2 without gRPC, end to end: the real agent and kernel against HTTP/2 implementations
//! nobody here wrote. Debian's `nghttpd` (nghttp2) serving a docroot under `h2load` (many
//! streams in flight per connection), nginx with `http2` on a plaintext listener under `nghttp`
//! (many streams on one connection) and `curl --http2-prior-knowledge`, and `curl --http2` (the
//! HTTP/1.1 `Upgrade: h2c` handshake) against `nghttpx`, which upgrades and proxies to nghttpd
//! over HTTP/2.
//!
//! Every number asserted is what the clients and servers report they did: h2load's summary
//! (`requests: N total ... N succeeded`, `status codes: N 2xx ... N 4xx`), nghttp's statistics
//! table, curl's `-w` fields (status, `http_version`, `num_connects`), nginx's and nghttpx's
//! access logs. Plain HTTP/2 goes into the
//! HTTP families with `network_protocol_version="2"`; each stream is one exchange per observed
//! side (`meshtap_exchanges_total{protocol="http2"}`), each connection one detection per side.
//! The test's own scrapes are HTTP/1.1: node-wide `http2` counters are the test's alone.
//!
//! The servers get service names of their own by port (`--service-port`); the clients go by
//! their executable names (`h2load`, `nghttp`, `curl`), narrowed by `server_port`.

use std::collections::BTreeMap;
use std::time::Duration;

use meshtap_tests::h2::{
    self, Daemon, Expect, FILES, MISSING, assert_settled, expect, nghttpd, nghttpx,
    nghttpx_access_log, stored_spans,
};
use meshtap_tests::metrics::{
    EXCHANGES, GRAPH_FAILED, GRAPH_REQUESTS, HTTP_CLIENT_DURATION, HTTP_SERVER_DURATION,
    NETWORK_PROTOCOL_VERSION, PARSE_ERRORS, PROTOCOL_DETECTED, count,
};
use meshtap_tests::spans::{by_trace, describe, kind, service, tag, text};
use meshtap_tests::{Agent, Nginx, NginxConfig, free_port, serial};
use serde_json::Value;

/// How long the agent may take to turn what a test did into metrics.
const SETTLE: Duration = Duration::from_secs(30);

const NGHTTPD: &str = "h2-nghttpd";
const NGINX: &str = "h2-nginx";
const PROXY: &str = "h2-proxy";

const V2: (&str, &str) = (NETWORK_PROTOCOL_VERSION, "2");
const HTTP2: (&str, &str) = ("protocol", "http2");

fn agent(names: &[(u16, &str)]) -> Agent {
    let flags: Vec<String> = names.iter().map(|(p, n)| format!("{p}={n}")).collect();
    let mut args: Vec<&str> = Vec::new();
    for f in &flags {
        args.extend(["--service-port", f.as_str()]);
    }
    // HTTP/2 connections are captured whole, DATA included: h2load's burst of 200 responses of
    // 70 KB is 14 MB through the ring in a few milliseconds, past the default 4 MiB on two busy
    // cores. Sized as the README advises for bulk HTTP/2 (what the default loses is counted:
    // meshtap_events_lost_total, meshtap_http2_capture_continuations_failed_total).
    args.extend([
        "--trace-store-spans",
        "200000",
        "--trace-store-rate",
        "0",
        "--ring-buffer-bytes",
        "33554432",
    ]);
    Agent::start(&args)
}

/// `http_server_*` labels of `service`'s `route` answered with `status` over HTTP/2.
fn server(service: &str, route: &str, status: u16) -> Vec<(String, String)> {
    let status = status.to_string();
    [
        ("service_name", service),
        ("http_request_method", "GET"),
        ("http_route", route),
        ("http_response_status_code", status.as_str()),
        V2,
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// `http_client_*` labels of `service` calling `dest`, answered with `status` over HTTP/2.
fn client(service: &str, dest: &Daemon, status: u16) -> Vec<(String, String)> {
    let (status, port) = (status.to_string(), dest.port().to_string());
    [
        ("service_name", service),
        ("http_request_method", "GET"),
        ("http_response_status_code", status.as_str()),
        ("server_address", "127.0.0.1"),
        ("server_port", port.as_str()),
        V2,
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

fn check(name: &str, labels: Vec<(String, String)>, value: u64) -> Expect {
    Expect {
        name: name.to_owned(),
        labels,
        value: value as f64,
    }
}

fn url(d: &Daemon, path: &str) -> String {
    format!("http://{}{path}", d.addr)
}

/// The node-wide HTTP/2 self-metrics: `streams` exchanges per side, `connections` detections per
/// side, no parse error.
fn self_metrics(streams: u64, connections: u64) -> Vec<Expect> {
    vec![
        expect(EXCHANGES, &[HTTP2], (2 * streams) as f64),
        expect(PROTOCOL_DETECTED, &[HTTP2], (2 * connections) as f64),
        expect(PARSE_ERRORS, &[HTTP2], 0.0),
    ]
}

/// `h2load -n 800 -c 2 -m 16` over three files and a missing path against nghttpd: each client
/// takes the four URLs in turn, so each path gets a quarter of the requests (h2load's status
/// classes confirm: 600 2xx, 200 4xx). Both sides counted per status and route, one exchange per
/// stream per side, one detection per connection per side, every request on the service graph.
#[test]
fn h2load_against_nghttpd_counts_every_stream() {
    const N: u64 = 800;
    const CLIENTS: u32 = 2;
    let _serial = serial();
    let srv = nghttpd();
    let agent = agent(&[(srv.port(), NGHTTPD)]);
    let mut paths: Vec<&str> = FILES.iter().map(|(p, _)| *p).collect();
    paths.push(MISSING);
    let urls: Vec<String> = paths.iter().map(|p| url(&srv, p)).collect();
    let per_path = N / paths.len() as u64;

    let sum = h2::h2load(N, CLIENTS, 16, &urls);
    assert_eq!(
        (sum.total, sum.done, sum.succeeded, sum.errored, sum.timeout),
        (N, N, N - per_path, 0, 0),
        "h2load: {sum:?}"
    );
    assert_eq!(
        sum.classes,
        [N - per_path, 0, per_path, 0],
        "h2load's status classes: {sum:?}"
    );

    let mut checks = Vec::new();
    for path in &paths {
        let status = if *path == MISSING { 404 } else { 200 };
        checks.push(check(
            &count(HTTP_SERVER_DURATION),
            server(NGHTTPD, path, status),
            per_path,
        ));
    }
    checks.extend([
        expect(
            count(HTTP_SERVER_DURATION),
            &[("service_name", NGHTTPD)],
            N as f64,
        ),
        check(
            &count(HTTP_CLIENT_DURATION),
            client("h2load", &srv, 200),
            N - per_path,
        ),
        check(
            &count(HTTP_CLIENT_DURATION),
            client("h2load", &srv, 404),
            per_path,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &[
                ("service_name", "h2load"),
                ("server_port", &srv.port().to_string()),
            ],
            N as f64,
        ),
        expect(
            GRAPH_REQUESTS,
            &[("client", "h2load"), ("server", NGHTTPD)],
            N as f64,
        ),
        expect(
            GRAPH_FAILED,
            &[("client", "h2load"), ("server", NGHTTPD)],
            0.0,
        ),
    ]);
    checks.extend(self_metrics(N, u64::from(CLIENTS)));
    assert_settled(&agent, &checks, SETTLE, &[]);
}

/// Header blocks of 20 KB: `nghttp` sends every request with a 20,000-byte header field, so each
/// header block is a HEADERS frame (with the PRIORITY flag) plus CONTINUATION frames, larger
/// than one frame and than any captured prefix, and nghttpd reads it in 8 KiB syscalls. The
/// field is too large for the 4 KiB dynamic table: inserting it empties the table (RFC 7541
/// §4.4). Every request counted exactly, nothing lost (the header blocks must be captured whole
/// for HPACK to stay in sync).
#[test]
fn header_blocks_in_continuation_frames() {
    let _serial = serial();
    let srv = nghttpd();
    let agent = agent(&[(srv.port(), NGHTTPD)]);
    let big = format!("x-big: {}", "x".repeat(20_000));
    let plan = [(FILES[0].0, 200), (MISSING, 404), (FILES[1].0, 200)];
    let urls: Vec<String> = plan.iter().map(|(p, _)| url(&srv, p)).collect();
    let mut got = h2::nghttp_with(&urls, false, &["-H", &big]);
    got.sort();
    let mut want: Vec<(u16, String)> = plan.iter().map(|(p, s)| (*s, (*p).to_owned())).collect();
    want.sort();
    assert_eq!(got, want, "nghttp");

    let mut checks = Vec::new();
    for (path, status) in plan {
        checks.push(check(
            &count(HTTP_SERVER_DURATION),
            server(NGHTTPD, path, status),
            1,
        ));
    }
    checks.extend([
        check(&count(HTTP_CLIENT_DURATION), client("nghttp", &srv, 200), 2),
        check(&count(HTTP_CLIENT_DURATION), client("nghttp", &srv, 404), 1),
        expect(
            count(HTTP_SERVER_DURATION),
            &[("service_name", NGHTTPD)],
            3.0,
        ),
    ]);
    checks.extend(self_metrics(3, 1));
    assert_settled(&agent, &checks, SETTLE, &[]);
}

/// Padding, priorities and dynamic table size changes: nghttpd pads every frame it sends
/// (`-b 64`: HEADERS and DATA with the PADDED flag), nghttp pads its HEADERS (which also carry
/// the PRIORITY flag), announces SETTINGS_HEADER_TABLE_SIZE 256 (nghttpd's encoder then opens
/// its next header block with a dynamic table size update) and encodes with a 128-byte table
/// (a size update in its own first header block). Six requests on one connection, counted
/// exactly, nothing rejected.
#[test]
fn padded_frames_and_dynamic_table_size_updates() {
    let _serial = serial();
    let srv = h2::nghttpd_with(&["-b", "64"]);
    let agent = agent(&[(srv.port(), NGHTTPD)]);
    let plan = [
        (FILES[0].0, 200),
        (MISSING, 404),
        (FILES[1].0, 200),
        (FILES[2].0, 200),
        (FILES[0].0, 200),
        (MISSING, 404),
    ];
    // Distinct URLs: nghttp fetches a URL once.
    let urls: Vec<String> = plan
        .iter()
        .enumerate()
        .map(|(i, (p, _))| format!("{}?n={i}", url(&srv, p)))
        .collect();
    let got = h2::nghttp_with(
        &urls,
        false,
        &[
            "-b",
            "64",
            "--header-table-size=256",
            "--encoder-header-table-size=128",
        ],
    );
    let mut got: Vec<(u16, String)> = got
        .into_iter()
        .map(|(s, p)| (s, p.split('?').next().unwrap_or_default().to_owned()))
        .collect();
    got.sort();
    let mut want: Vec<(u16, String)> = plan.iter().map(|(p, s)| (*s, (*p).to_owned())).collect();
    want.sort();
    assert_eq!(got, want, "nghttp");

    let mut checks = Vec::new();
    for (path, status, n) in [
        (FILES[0].0, 200, 2),
        (FILES[1].0, 200, 1),
        (FILES[2].0, 200, 1),
        (MISSING, 404, 2),
    ] {
        checks.push(check(
            &count(HTTP_SERVER_DURATION),
            server(NGHTTPD, path, status),
            n,
        ));
    }
    checks.extend([
        check(&count(HTTP_CLIENT_DURATION), client("nghttp", &srv, 200), 4),
        check(&count(HTTP_CLIENT_DURATION), client("nghttp", &srv, 404), 2),
    ]);
    checks.extend(self_metrics(6, 1));
    assert_settled(&agent, &checks, SETTLE, &[]);
}

/// `(route, status) -> requests`.
type Routes = BTreeMap<(String, String), usize>;

fn routes(want: &[(&str, u16)]) -> Routes {
    let mut out = Routes::new();
    for (route, status) in want {
        *out.entry(((*route).to_owned(), status.to_string()))
            .or_default() += 1;
    }
    out
}

/// One span per stream and side, tagged like HTTP/1 spans plus `network.protocol.version=2`:
/// the server's spans are `server_want`, each client's its own list; no two requests in one
/// trace (many streams share a connection).
fn assert_http2_spans(
    agent: &Agent,
    server_service: &str,
    server_want: &Routes,
    clients: &[(&str, Routes)],
) {
    let n: usize = server_want.values().sum();
    let deadline = std::time::Instant::now() + SETTLE;
    let spans = loop {
        let mut spans = stored_spans(agent, server_service);
        for (c, _) in clients {
            spans.extend(stored_spans(agent, c));
        }
        spans.sort_by_key(|s| {
            (
                text(s, "traceId").to_owned(),
                text(s, "id").to_owned(),
                kind(s).to_owned(),
            )
        });
        spans.dedup_by(|a, b| text(a, "id") == text(b, "id") && kind(a) == kind(b));
        let servers = spans.iter().filter(|s| kind(s) == "SERVER").count();
        if servers >= n || std::time::Instant::now() >= deadline {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let all = describe(&spans);
    let sides = std::iter::once(("SERVER", server_service, server_want))
        .chain(clients.iter().map(|(c, want)| ("CLIENT", *c, want)));
    for (side, svc, want) in sides {
        let mine: Vec<&Value> = spans
            .iter()
            .filter(|s| kind(s) == side && service(s) == svc.to_lowercase())
            .collect();
        let mut got = Routes::new();
        for s in &mine {
            assert_eq!(tag(s, "http.method"), Some("GET"), "{side} span {s}\n{all}");
            assert_eq!(
                tag(s, "network.protocol.version"),
                Some("2"),
                "{side} span {s}\n{all}"
            );
            let route = tag(s, "http.path").unwrap_or_default().to_owned();
            assert!(
                text(s, "name").eq_ignore_ascii_case(&format!("get {route}")),
                "{side} span named {:?} for route {route:?}\n{all}",
                text(s, "name")
            );
            *got.entry((
                route,
                tag(s, "http.status_code").unwrap_or_default().to_owned(),
            ))
            .or_default() += 1;
        }
        assert_eq!(
            &got, want,
            "{side} spans of {svc} by (route, status):\n{all}"
        );
    }
    for (trace, t) in by_trace(&spans) {
        let servers = t.iter().filter(|s| kind(s) == "SERVER").count();
        let clients = t.iter().filter(|s| kind(s) == "CLIENT").count();
        let calls: std::collections::BTreeSet<(String, Option<&str>)> = t
            .iter()
            .map(|s| (text(s, "name").to_lowercase(), tag(s, "http.status_code")))
            .collect();
        assert!(
            servers <= 1 && clients <= 1 && calls.len() == 1,
            "trace {trace} holds more than one request:\n{}",
            describe(&t)
        );
    }
}

/// nginx 1.22 with `listen ... http2` (cleartext, prior knowledge only), driven by `nghttp`
/// (eleven requests as concurrent streams on one connection, after its PRIORITY frames on idle
/// streams) and by `curl --http2-prior-knowledge` (three processes, one request each: curl
/// 7.88.1 cannot reuse a prior-knowledge connection, see `h2::curl`). Exact counts per route and
/// status on both sides (nghttp's statistics, curl's `http_code`/`http_version`, nginx's access
/// log agree), the 500s failed on the service graph, one span per stream per side.
#[test]
fn nghttp_and_curl_prior_knowledge_against_nginx_http2() {
    let _serial = serial();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let nginx = Nginx::start(NginxConfig::new(listen).http2().access_log(), None);
    let agent = agent(&[(listen.port(), NGINX)]);
    let statuses = [("/ok", 200), ("/missing", 404), ("/boom", 500)];
    // 5 x 200, 4 x 404, 2 x 500; distinct URLs (nghttp fetches a URL once), one route each.
    let multiplexed: Vec<(&str, u16)> = statuses
        .iter()
        .cycle()
        .take(8)
        .chain([("/ok", 200), ("/ok", 200), ("/missing", 404)].iter())
        .copied()
        .collect();
    let urls: Vec<String> = multiplexed
        .iter()
        .enumerate()
        .map(|(i, (p, _))| format!("http://{listen}{p}?n={i}"))
        .collect();
    let got = h2::nghttp(&urls, false);
    let mut got_statuses: Vec<(String, u16)> = got
        .iter()
        .map(|(s, p)| (p.split('?').next().unwrap_or_default().to_owned(), *s))
        .collect();
    got_statuses.sort();
    let mut want_statuses: Vec<(String, u16)> = multiplexed
        .iter()
        .map(|(p, s)| ((*p).to_owned(), *s))
        .collect();
    want_statuses.sort();
    assert_eq!(got_statuses, want_statuses, "nghttp: {got:?}");
    for (path, status) in statuses {
        let r = h2::curl(
            &[format!("http://{listen}{path}")],
            &["--http2-prior-knowledge"],
        );
        assert_eq!(
            (r[0].status, r[0].version.as_str(), r[0].connects),
            (status, "2", 1),
            "curl: {r:?}"
        );
    }
    let n = |s: u16| multiplexed.iter().filter(|(_, st)| *st == s).count() as u64 + 1;
    let log = nginx.access_log();
    assert_eq!(
        log,
        [("200", n(200)), ("404", n(404)), ("500", n(500))]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect::<BTreeMap<_, _>>(),
        "nginx's access log"
    );

    let port = listen.port().to_string();
    let total = multiplexed.len() as u64 + 3;
    let mut checks = Vec::new();
    for (route, status) in statuses {
        checks.push(check(
            &count(HTTP_SERVER_DURATION),
            server(NGINX, route, status),
            n(status),
        ));
        let s = status.to_string();
        for (svc, calls) in [("nghttp", n(status) - 1), ("curl", 1)] {
            checks.push(expect(
                count(HTTP_CLIENT_DURATION),
                &[
                    ("service_name", svc),
                    ("http_request_method", "GET"),
                    ("http_response_status_code", &s),
                    ("server_address", "127.0.0.1"),
                    ("server_port", &port),
                    V2,
                ],
                calls as f64,
            ));
        }
    }
    checks.extend([
        expect(
            count(HTTP_SERVER_DURATION),
            &[("service_name", NGINX)],
            total as f64,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &[("service_name", "nghttp"), ("server_port", &port)],
            multiplexed.len() as f64,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            &[("service_name", "curl"), ("server_port", &port)],
            3.0,
        ),
        expect(
            GRAPH_REQUESTS,
            &[("client", "nghttp"), ("server", NGINX)],
            multiplexed.len() as f64,
        ),
        expect(
            GRAPH_FAILED,
            &[("client", "nghttp"), ("server", NGINX)],
            (n(500) - 1) as f64,
        ),
        expect(
            GRAPH_REQUESTS,
            &[("client", "curl"), ("server", NGINX)],
            3.0,
        ),
        expect(GRAPH_FAILED, &[("client", "curl"), ("server", NGINX)], 1.0),
    ]);
    // nghttp's connection and curl's three.
    checks.extend(self_metrics(total, 4));
    assert_settled(&agent, &checks, SETTLE, &[]);

    let mut all: Vec<(&str, u16)> = multiplexed.clone();
    all.extend(statuses);
    assert_http2_spans(
        &agent,
        NGINX,
        &routes(&all),
        &[
            ("nghttp", routes(&multiplexed)),
            ("curl", routes(&statuses)),
        ],
    );
    nginx.stop();
}

/// `curl --http2` sends its first request as HTTP/1.1 with `Upgrade: h2c`; nghttpx answers
/// `101 Switching Protocols` and the response on HTTP/2 stream 1 (RFC 7540 §3.2: the upgraded
/// request is stream 1), then the later URLs go as HTTP/2 streams 3, 5, 7 on the same
/// connection (curl: one connect, `http_version` 2 for all; nghttpx's log: the first request
/// line HTTP/1.1, the others HTTP/2). Then `nghttp -u` does the same handshake (another
/// implementation: its later streams come after PRIORITY frames on idle streams). nghttpx
/// proxies each request to nghttpd over HTTP/2. Counted exactly on the three hops' four sides
/// with their statuses, all as HTTP/2; the `101` is no exchange of its own.
#[test]
fn curl_and_nghttp_h2c_upgrade_through_nghttpx() {
    let _serial = serial();
    let backend = nghttpd();
    let proxy = nghttpx(backend.addr);
    let agent = agent(&[(backend.port(), NGHTTPD), (proxy.port(), PROXY)]);
    let (small, page) = (FILES[0].0, FILES[1].0);
    let by_curl = [(small, 200), (MISSING, 404), (page, 200), (small, 200)];
    let urls: Vec<String> = by_curl.iter().map(|(p, _)| url(&proxy, p)).collect();
    let results = h2::curl(&urls, &["--http2"]);
    let got: Vec<u16> = results.iter().map(|r| r.status).collect();
    assert_eq!(got, vec![200, 404, 200, 200], "curl: {results:?}");
    assert!(
        results.iter().all(|r| r.version == "2"),
        "curl: {results:?}"
    );
    assert_eq!(
        results.iter().map(|r| r.connects).sum::<u64>(),
        1,
        "one connection, upgraded: {results:?}"
    );
    let by_nghttp = [(page, 200), (MISSING, 404), (small, 200)];
    let urls: Vec<String> = by_nghttp.iter().map(|(p, _)| url(&proxy, p)).collect();
    let mut got = h2::nghttp(&urls, true);
    got.sort();
    assert_eq!(
        got,
        vec![
            (200, page.to_owned()),
            (200, small.to_owned()),
            (404, MISSING.to_owned())
        ],
        "nghttp -u"
    );
    let log = nghttpx_access_log(&proxy);
    let upgraded: Vec<&(String, u16)> = log.iter().filter(|(p, _)| p == "HTTP/1.1").collect();
    assert_eq!(
        (log.len(), upgraded.len()),
        (7, 2),
        "nghttpx's access log: two upgraded requests (HTTP/1.1), five HTTP/2 ones: {log:?}"
    );

    let mut checks = Vec::new();
    for (route, status, n) in [(small, 200, 3), (MISSING, 404, 2), (page, 200, 2)] {
        for svc in [PROXY, NGHTTPD] {
            checks.push(check(
                &count(HTTP_SERVER_DURATION),
                server(svc, route, status),
                n,
            ));
        }
    }
    for (svc, dest, ok, missing) in [
        ("curl", &proxy, 3, 1),
        ("nghttp", &proxy, 2, 1),
        (PROXY, &backend, 5, 2),
    ] {
        checks.push(check(
            &count(HTTP_CLIENT_DURATION),
            client(svc, dest, 200),
            ok,
        ));
        checks.push(check(
            &count(HTTP_CLIENT_DURATION),
            client(svc, dest, 404),
            missing,
        ));
        checks.push(expect(
            count(HTTP_CLIENT_DURATION),
            &[
                ("service_name", svc),
                ("server_port", &dest.port().to_string()),
            ],
            (ok + missing) as f64,
        ));
    }
    for svc in [PROXY, NGHTTPD] {
        checks.push(expect(
            count(HTTP_SERVER_DURATION),
            &[("service_name", svc)],
            7.0,
        ));
    }
    // The 101 is the handshake, not a response of its own, on any side.
    for family in [HTTP_SERVER_DURATION, HTTP_CLIENT_DURATION] {
        checks.push(expect(
            count(family),
            &[("http_response_status_code", "101")],
            0.0,
        ));
    }
    checks.extend([
        expect(
            GRAPH_REQUESTS,
            &[("client", "curl"), ("server", PROXY)],
            4.0,
        ),
        expect(
            GRAPH_REQUESTS,
            &[("client", "nghttp"), ("server", PROXY)],
            3.0,
        ),
        expect(
            GRAPH_REQUESTS,
            &[("client", PROXY), ("server", NGHTTPD)],
            7.0,
        ),
        // Seven streams on the clients' two connections and seven on nghttpx's to nghttpd,
        // each seen from both ends.
        expect(EXCHANGES, &[HTTP2], 28.0),
        expect(PARSE_ERRORS, &[HTTP2], 0.0),
    ]);
    assert_settled(&agent, &checks, SETTLE, &[]);
}
