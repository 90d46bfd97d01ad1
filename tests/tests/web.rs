//! The built-in web page and the Grafana dashboards, end to end: real traffic through nginx to a
//! Python backend, the real agent, the page in Debian's headless Chromium (driven by
//! playwright-core), and a real Prometheus scraping the agent for every dashboard query.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use meshtap_tests::process::{STARTUP, port_of, run_command};
use meshtap_tests::{Agent, Nginx, NginxConfig, Script, ScriptChild, free_port, serial};
use serde_json::Value;

/// Where `cargo xtask setup` installs playwright-core (kept out of the repository).
const BROWSER_MODULES: &str = "/usr/local/lib/meshtap/node/node_modules";
const RUN: Duration = Duration::from_secs(60);

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `http_backend.py` as service `service`.
fn backend(service: &str) -> (ScriptChild, SocketAddr) {
    let mut child = Script::new("http_backend.py", service)
        .env("OTEL_SERVICE_NAME", service)
        .opt("--bind", "127.0.0.1")
        .spawn();
    let v = child.expect_event("listening", Duration::from_secs(10));
    let port = u16::try_from(v["port"].as_u64().expect("port")).expect("port fits u16");
    (child, localhost(port))
}

/// One curl process fetching every URL in turn; the count of each status it got.
fn curl(urls: &[String]) -> BTreeMap<u16, u64> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--max-time",
        "30",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\\n",
    ]);
    for (i, u) in urls.iter().enumerate() {
        if i > 0 {
            cmd.arg("--next").args([
                "-s",
                "--max-time",
                "30",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}\\n",
            ]);
        }
        cmd.arg(u);
    }
    let out = run_command(&mut cmd, RUN);
    assert!(out.status.success(), "curl: {}", out.stderr);
    let mut statuses = BTreeMap::new();
    for line in out.stdout.lines() {
        *statuses
            .entry(line.trim().parse::<u16>().expect("status"))
            .or_default() += 1;
    }
    statuses
}

/// The directory kept after the run for the screenshots: `$CARGO_TARGET_DIR/web` or
/// `target/web`.
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| meshtap_tests::workspace_root().join("target"));
    target.join("web")
}

/// Opens the page; `edges` are (client, server, requests), `tcp` (client, server, connections)
/// for TCP-only edges.
fn browse(agent: &Agent, edges: &[(&str, &str, u64)], tcp: &[(&str, &str, u64)]) -> Value {
    let script = meshtap_tests::process::scripts_dir().join("web_page.js");
    let mut cmd = Command::new("node");
    cmd.env("NODE_PATH", BROWSER_MODULES)
        .env("WEB_TRACE_ROOT", "get /api/slow")
        .arg(script)
        .arg(format!("http://{}", agent.addr()))
        .arg(artifacts());
    for (client, server, n) in tcp {
        cmd.arg(format!("tcp:{client},{server},{n}"));
    }
    for (client, server, n) in edges {
        cmd.arg(format!("{client},{server},{n}"));
    }
    let out = run_command(&mut cmd, Duration::from_secs(180));
    assert!(
        out.status.success(),
        "web_page.js failed ({}):\n{}\n{}",
        out.status,
        out.stderr,
        out.stdout
    );
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

#[test]
fn the_page_shows_the_map_a_waterfall_and_health_of_real_traffic() {
    const USERS: u64 = 10;
    const SLOW: u64 = 2;
    const FAILS: u64 = 3;
    let _serial = serial();
    let agent = Agent::start(&[]);
    let service = "mt-web-backend";
    let (mut backend, backend_addr) = backend(service);
    let front = localhost(free_port());
    let nginx = Nginx::start(NginxConfig::new(front).backend(backend_addr), None);
    let base = format!("http://{front}");
    let mut urls: Vec<String> = (0..USERS)
        .map(|i| format!("{base}/api/users/{}", 100 + i))
        .collect();
    urls.extend((0..SLOW).map(|_| format!("{base}/api/slow")));
    urls.extend((0..FAILS).map(|_| format!("{base}/api/fail")));
    let statuses = curl(&urls);
    assert_eq!(
        statuses,
        BTreeMap::from([(200, USERS + SLOW), (500, FAILS)])
    );
    backend.send_line("quit");
    let served = backend.finish(RUN);
    assert_eq!(
        served["served"],
        serde_json::json!({"GET 200": USERS + SLOW, "GET 500": FAILS}),
        "{served}"
    );
    let total = USERS + SLOW + FAILS;
    // And TCP connections that carry no protocol: three connects a server closes at once.
    const CONNECTS: u64 = 3;
    let (tcp_server, tcp_client) = ("mt-web-tcpsrv", "mt-web-tcpcli");
    let mut server = Script::new("tcp_server.py", tcp_server)
        .named()
        .opt("--bind", "127.0.0.1")
        .opt("--mode", "close")
        .opt("--count", CONNECTS)
        .spawn();
    let listening = server.expect_event("listening", Duration::from_secs(10));
    let done = Script::new("tcp_client.py", tcp_client)
        .named()
        .opt("--host", "127.0.0.1")
        .opt("--port", &listening["port"])
        .opt("--mode", "connect-close")
        .opt("--count", CONNECTS)
        .run(RUN);
    assert_eq!(done["opened"], CONNECTS, "{done}");
    server.finish(RUN);

    let seen = browse(
        &agent,
        &[("curl", "nginx", total), ("nginx", service, total)],
        &[(tcp_client, tcp_server, CONNECTS)],
    );
    nginx.stop();

    // The map: each service, and each edge with the exact count (and failures) of the window.
    let nodes: Vec<&str> = seen["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for name in ["curl", "nginx", service, tcp_client, tcp_server] {
        assert!(
            nodes.contains(&name),
            "no node {name} on the map: {nodes:?}"
        );
    }
    let edge = |client: &str, server: &str| -> &Value {
        seen["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .find(|e| e["client"] == client && e["server"] == server)
            .unwrap_or_else(|| panic!("no edge {client} -> {server}: {}", seen["edges"]))
    };
    for (client, server) in [("curl", "nginx"), ("nginx", service)] {
        let e = edge(client, server);
        assert_eq!(e["requests"], total, "{e}");
        assert_eq!(e["failed"], FAILS, "{e}");
        let label = e["label"].as_str().expect("label");
        assert!(
            label.starts_with(&format!("{total} req · ")) && label.contains(" err · p50 "),
            "{label}"
        );
    }

    // The TCP-only edge, drawn apart, with its exact connection count.
    let tcp: Vec<&Value> = seen["tcp_edges"]
        .as_array()
        .expect("tcp edges")
        .iter()
        .filter(|e| e["client"] == tcp_client && e["server"] == tcp_server)
        .collect();
    assert_eq!(tcp.len(), 1, "{}", seen["tcp_edges"]);
    assert_eq!(tcp[0]["connections"], CONNECTS, "{}", tcp[0]);
    assert_eq!(tcp[0]["port"], listening["port"].to_string(), "{}", tcp[0]);
    // No TCP-only edge where requests were counted.
    assert!(
        seen["tcp_edges"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|e| e["server"] != service && e["server"] != "nginx"),
        "{}",
        seen["tcp_edges"]
    );

    // The list of the edge's slowest traces, slowest first; the slowest of those rooted in a
    // /api/slow request opened.
    let listed = seen["trace_rows"].as_array().expect("trace rows");
    let durations: Vec<u64> = listed
        .iter()
        .filter_map(|r| r["duration"].as_u64())
        .collect();
    assert!(durations.windows(2).all(|w| w[0] >= w[1]), "{durations:?}");
    let chosen = listed
        .iter()
        .find(|r| r["root"] == "get /api/slow")
        .expect("a trace rooted in /api/slow is listed");
    assert_eq!(chosen["id"], seen["trace_id"]);

    // The waterfall of that trace: every span of the trace as the API has it,
    // each row right under its parent's, siblings by start time, and the chain of a request
    // first: curl -> nginx -> nginx's call -> the backend.
    let trace_id = seen["trace_id"].as_str().expect("a trace was opened");
    let api = agent.get(&format!("/api/v2/trace/{trace_id}"));
    assert_eq!(api.status, 200);
    let spans: Vec<Value> = serde_json::from_slice(&api.body).expect("trace JSON");
    let rows = seen["waterfall"].as_array().expect("waterfall");
    let dump = || serde_json::to_string_pretty(&spans).unwrap_or_default();
    let mut row_ids: Vec<&str> = rows.iter().filter_map(|r| r["id"].as_str()).collect();
    let mut api_ids: Vec<&str> = spans.iter().filter_map(|s| s["id"].as_str()).collect();
    row_ids.sort_unstable();
    api_ids.sort_unstable();
    assert_eq!(row_ids, api_ids, "waterfall rows are not the trace's spans");
    let span_of = |id: &str| {
        spans
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("no span {id}"))
    };
    for (i, row) in rows.iter().enumerate() {
        let span = span_of(row["id"].as_str().expect("id"));
        let depth = row["depth"].as_u64().expect("depth");
        match span["parentId"].as_str() {
            Some(parent) if api_ids.contains(&parent) => {
                // The nearest row above one level up is its parent.
                let above = rows[..i]
                    .iter()
                    .rev()
                    .find(|r| r["depth"].as_u64() == Some(depth.wrapping_sub(1)))
                    .unwrap_or_else(|| panic!("row {i} has no parent row: {rows:?}"));
                assert_eq!(above["id"], parent, "row {i}: {rows:?}\n{}", dump());
            }
            _ => assert_eq!(depth, 0, "row {i} is a root: {rows:?}"),
        }
        // Start times never go back among the rows of one parent.
        let sibling = rows[..i]
            .iter()
            .rev()
            .find(|r| r["depth"].as_u64() <= Some(depth))
            .filter(|r| r["depth"].as_u64() == Some(depth));
        if let Some(prev) = sibling {
            let ts =
                |r: &Value| span_of(r["id"].as_str().unwrap_or_default())["timestamp"].as_u64();
            assert!(
                ts(prev) <= ts(row),
                "row {i} starts before its sibling: {}",
                dump()
            );
        }
    }
    let chain: Vec<(&str, &str, u64)> = rows
        .iter()
        .take(4)
        .map(|r| {
            (
                r["service"].as_str().unwrap_or_default(),
                r["kind"].as_str().unwrap_or_default(),
                r["depth"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    assert_eq!(
        chain,
        [
            ("curl", "CLIENT", 0),
            ("nginx", "SERVER", 1),
            ("nginx", "CLIENT", 2),
            (service, "SERVER", 3)
        ],
        "{rows:?}\n{}",
        dump()
    );
    // The backend span of the opened trace's request (the backend sleeps 100 ms on /api/slow):
    // its tags say which request it served.
    let tags: BTreeMap<String, String> = seen["span_tags"]
        .as_array()
        .expect("span tags")
        .iter()
        .map(|kv| {
            (
                kv[0].as_str().unwrap_or_default().to_string(),
                kv[1].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        (
            tags.get("http.path").map(String::as_str),
            tags.get("service").map(String::as_str)
        ),
        (Some("/api/slow"), Some(service)),
        "{tags:?}"
    );

    // The backend's operations, by protocol: the routes it served.
    let ops: BTreeMap<String, u64> = seen["operations"]
        .as_array()
        .expect("operations")
        .iter()
        .map(|o| {
            (
                format!(
                    "{} {}",
                    o["protocol"].as_str().unwrap_or(""),
                    o["operation"].as_str().unwrap_or("")
                ),
                o["requests"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        ops,
        BTreeMap::from([
            ("http get /api/users/*".to_string(), USERS),
            ("http get /api/slow".to_string(), SLOW),
            ("http get /api/fail".to_string(), FAILS),
        ])
    );
    let health: Vec<&str> = seen["health"]
        .as_array()
        .expect("health")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for family in [
        "meshtap_programs_attached",
        "meshtap_events_lost_total",
        "meshtap_metric_series_overflow_total",
        "meshtap_spans_dropped_total",
    ] {
        assert!(
            health.contains(&family),
            "{family} not on the health tab: {health:?}"
        );
    }

    // No console error, and no request anywhere but the agent.
    assert_eq!(seen["console_errors"], serde_json::json!([]));
    let origin = format!("http://{}/", agent.addr());
    let outside: Vec<&str> = seen["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter_map(Value::as_str)
        .filter(|u| !u.starts_with(&origin))
        .collect();
    assert!(
        outside.is_empty(),
        "requests outside the agent: {outside:?}"
    );
    for shot in ["map.png", "trace.png", "services.png", "health.png"] {
        assert!(artifacts().join(shot).is_file(), "no screenshot {shot}");
    }
}

/// Every query of a dashboard (panel targets and variable queries), with Grafana's variables
/// replaced: `(where, PromQL)`.
fn dashboard_queries(path: &std::path::Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let d: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    let substitute = |expr: &str| -> String {
        let mut e = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "5m")
            .replace("$__interval", "15s");
        // Every other variable is a multi-value label matcher whose "All" is `.+`.
        for var in d["templating"]["list"].as_array().into_iter().flatten() {
            if var["type"] == "query" {
                let name = var["name"].as_str().unwrap_or_default();
                e = e.replace(&format!("${name}"), ".+");
            }
        }
        // `$1` is label_replace's capture group, not a variable.
        let left = e
            .match_indices('$')
            .any(|(i, _)| !e[i + 1..].starts_with(|c: char| c.is_ascii_digit()));
        assert!(!left, "{file}: a variable left in {e}");
        e
    };
    let mut queries = Vec::new();
    for var in d["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] == "datasource" {
            assert_eq!(var["query"], "prometheus", "{file}: {var}");
            continue;
        }
        let q = var["definition"].as_str().expect("variable query");
        // label_values(metric, label) as Grafana runs it: the label's values among the series.
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{file}: variable query {q}"));
        let (metric, label) = inner.rsplit_once(',').expect("label_values(metric, label)");
        queries.push((
            format!("{file} variable {}", var["name"]),
            format!(
                "count by ({}) ({})",
                label.trim(),
                substitute(metric.trim())
            ),
        ));
    }
    for panel in d["panels"].as_array().expect("panels") {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{file}: panel {} does not use the datasource variable",
            panel["title"]
        );
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(target["datasource"]["uid"], "${datasource}");
            let expr = target["expr"].as_str().expect("expr");
            queries.push((
                format!("{file} panel {} {}", panel["title"], target["refId"]),
                substitute(expr),
            ));
        }
    }
    queries
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let _serial = serial();
    // A Zipkin collector nobody listens on: the exporter's drop counters exist.
    let zipkin = format!("http://127.0.0.1:{}/api/v2/spans", free_port());
    let agent = Agent::start(&["--zipkin-endpoint", &zipkin]);
    let prometheus = meshtap_tests::Prometheus::start(agent.addr());

    // HTTP through nginx, failures included.
    let service = "mt-dash-backend";
    let (mut backend, backend_addr) = backend(service);
    let front = localhost(free_port());
    let nginx = Nginx::start(NginxConfig::new(front).backend(backend_addr), None);
    let mut urls: Vec<String> = (0..6)
        .map(|i| format!("http://{front}/api/users/{i}"))
        .collect();
    urls.extend((0..2).map(|_| format!("http://{front}/api/fail")));
    assert_eq!(curl(&urls), BTreeMap::from([(200, 6), (500, 2)]));
    // Redis calls, one of them an error.
    let redis_port = free_port();
    let _redis = meshtap_tests::db::redis_server(redis_port);
    for args in [&["SET", "k", "v"][..], &["GET", "k"], &["NO_SUCH_COMMAND"]] {
        let out = run_command(
            Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &redis_port.to_string()])
                .args(args),
            RUN,
        );
        assert!(out.status.success(), "redis-cli {args:?}: {}", out.stderr);
    }
    // gRPC calls on grpcio, OK and with errors (INTERNAL is a server error).
    let mut grpc = Script::new("grpc_app.py", "mt-dash-grpc")
        .named()
        .arg("server")
        .spawn();
    let grpc_port = port_of(&grpc.expect_event("listening", STARTUP));
    Script::new("grpc_app.py", "mt-dash-grpccli")
        .named()
        .arg("client")
        .opt("--port", grpc_port)
        .opt("--unary", 5)
        .opt("--codes", "13,5")
        .run(RUN);
    grpc.send_line("stop");
    grpc.finish(RUN);
    // A refused connect.
    let closed = localhost(free_port());
    let out = run_command(
        Command::new("curl").args(["-s", "--max-time", "5", &format!("http://{closed}/")]),
        RUN,
    );
    assert!(!out.status.success());
    backend.send_line("quit");
    backend.finish(RUN);

    // Counted, and scraped at least twice since (rates need two samples).
    let timeout = Duration::from_secs(60);
    prometheus.wait_for(
        &format!(
            "sum(traces_service_graph_request_total{{client=\"nginx\",server=\"{service}\"}})"
        ),
        8.0,
        timeout,
    );
    prometheus.wait_for(
        "count(db_client_operation_duration_seconds_count{db_system_name=\"redis\"}) > bool 0",
        1.0,
        timeout,
    );
    prometheus.wait_for(
        "sum(rpc_server_duration_seconds_count{service_name=\"mt-dash-grpc\"})",
        7.0,
        timeout,
    );
    std::thread::sleep(Duration::from_secs(3));

    let dir = meshtap_tests::workspace_root().join("deploy/grafana");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in &files {
        for (at, promql) in dashboard_queries(file) {
            checked += 1;
            match prometheus.query_result(&promql) {
                Ok(result) if result.is_empty() => {
                    failures.push(format!("{at}: no data\n    {promql}"))
                }
                Ok(_) => {}
                Err(e) => failures.push(format!("{at}: {e}\n    {promql}")),
            }
        }
    }
    nginx.stop();
    assert!(
        failures.is_empty(),
        "{} of {checked} dashboard queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= 30, "only {checked} queries");
}

/// "Stays usable with 200 services and 10,000 stored traces": 200 services (one process
/// serving 200 ports, each named with `--service-port`) each called once by curl, then 10,000
/// requests to nginx, each its own trace in the built-in store. The page shows
/// every service and every edge with its exact count, the API lists all 200 edges untruncated,
/// the slowest-trace list and a waterfall open, and nothing errs in the console.
#[test]
fn the_page_stays_usable_with_200_services_and_10000_traces() {
    const SERVICES: usize = 200;
    const TRACES: u64 = 10_000;
    let _serial = serial();
    let mut server = Script::new("many_ports.py", "mt-web-many")
        .opt("--count", SERVICES)
        .spawn();
    let ports: Vec<u16> = server.expect_event("listening", STARTUP)["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| u16::try_from(p.as_u64().expect("port")).expect("port fits u16"))
        .collect();
    assert_eq!(ports.len(), SERVICES);
    let names: Vec<String> = (0..SERVICES).map(|i| format!("svc-{i:03}")).collect();
    let flags: Vec<String> = ports
        .iter()
        .zip(&names)
        .map(|(p, n)| format!("{p}={n}"))
        .collect();
    let mut args: Vec<&str> = vec!["--trace-store-spans", "50000", "--trace-store-rate", "0"];
    for f in &flags {
        args.extend(["--service-port", f.as_str()]);
    }
    let agent = Agent::start(&args);

    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}/hello"))
        .collect();
    assert_eq!(curl(&urls), BTreeMap::from([(200, SERVICES as u64)]));
    server.send_line("stop");
    let done = server.finish(RUN);
    assert_eq!(done["served"].as_u64(), Some(SERVICES as u64));
    // 10,000 requests to nginx, curl's URL globbing on keep-alive connections: a trace each.
    let front = localhost(free_port());
    let nginx = Nginx::start(
        NginxConfig::new(front)
            .ok_everywhere()
            .keepalive_requests(100_000),
        None,
    );
    let out = run_command(
        Command::new("curl").args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\\n",
            &format!("http://{front}/item/[1-{TRACES}]"),
        ]),
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "curl: {}", out.stderr);
    assert_eq!(
        out.stdout.lines().filter(|l| l.trim() == "200").count() as u64,
        TRACES
    );

    let mut edges: Vec<(&str, &str, u64)> = names.iter().map(|n| ("curl", n.as_str(), 1)).collect();
    // Last: the page opens the last edge's slowest traces.
    edges.push(("curl", "nginx", TRACES));
    let page = browse(&agent, &edges, &[]);
    let errors = page["console_errors"].as_array().expect("console errors");
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let base = format!("http://{}/", agent.addr());
    for r in page["requests"].as_array().expect("requests") {
        let url = r.as_str().expect("url");
        assert!(url.starts_with(&base), "a request outside the agent: {url}");
    }
    let mut nodes: Vec<&str> = page["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(Value::as_str)
        .filter(|n| matches!(*n, "curl" | "nginx") || n.starts_with("svc-"))
        .collect();
    nodes.sort();
    let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
    want.extend(["curl", "nginx"]);
    want.sort();
    assert_eq!(nodes, want);
    let mut shown: Vec<(String, String, u64)> = page["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            (
                e["client"].as_str().expect("client").to_owned(),
                e["server"].as_str().expect("server").to_owned(),
                e["requests"].as_u64().expect("requests"),
            )
        })
        .filter(|(c, _, _)| c == "curl")
        .collect();
    shown.sort();
    let mut expected: Vec<(String, String, u64)> = edges
        .iter()
        .map(|(c, s, n)| (c.to_string(), s.to_string(), *n))
        .collect();
    expected.sort();
    assert_eq!(shown, expected);
    let traces = page["trace_rows"].as_array().expect("trace rows");
    assert!(!traces.is_empty(), "the slowest traces of curl -> nginx");
    assert_eq!(
        page["waterfall"].as_array().expect("waterfall").len(),
        2,
        "curl's CLIENT span and nginx's SERVER span"
    );

    // The API behind the map: every edge, not truncated.
    let graph: Value = serde_json::from_str(
        &run_command(
            Command::new("curl").args(["-s", &format!("{base}api/v1/graph?window=15")]),
            RUN,
        )
        .stdout,
    )
    .expect("graph JSON");
    assert_eq!(graph["truncated"], Value::Bool(false), "{graph}");
    let api_edges = graph["edges"].as_array().expect("edges");
    let from_curl = api_edges.iter().filter(|e| e["client"] == "curl").count();
    assert_eq!(from_curl, SERVICES + 1, "{graph}");
    nginx.stop();
}
