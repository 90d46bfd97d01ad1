//! Scope by network namespace (`--netns`): several agents on one kernel, each the "node" of its
//! own namespaces.
//!
//! Two namespaces `a` and `b` joined by a veth pair: `curl` in `a` calls a Python HTTP server in
//! `b`. Three agents run at the same time, each with its own `--listen`: one scoped to `a`, one
//! to `b`, one to a third namespace where nothing happens; a fourth, unscoped, shows that every
//! flow below is there to be seen. Meanwhile `curl` in the root namespace calls a server on the
//! root namespace's loopback. Every number is a truth the test knows: curl's own request and
//! response sizes, the server's count of what it served.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use meshtap_tests::metrics::{
    EVENTS, HTTP_CLIENT_DURATION, HTTP_SERVER_DURATION, OPENED, RECEIVED, SENT, count,
};
use meshtap_tests::process::{RUN, STARTUP, run_command};
use meshtap_tests::{Agent, Metrics, NetNs, SETTLE, Script, ScriptChild, VethPair, serial};
use serde_json::{Value, json};

/// Requests from `a` to `b`: one curl process over one keep-alive connection, then another.
const KEEP_ALIVE: u64 = 20;
const SECOND: u64 = 5;
const N: u64 = KEEP_ALIVE + SECOND;
/// Requests in the root namespace, over loopback.
const M: u64 = 7;

/// The file `ip netns add` made for `ns`.
fn netns_file(ns: &NetNs) -> String {
    format!("/run/netns/{}", ns.name())
}

/// `http_backend.py` as service `service`, listening on `ip` (in `ns`, if given).
fn backend(service: &str, ip: IpAddr, ns: Option<&NetNs>) -> (ScriptChild, SocketAddr) {
    let mut script = Script::new("http_backend.py", service)
        .env("OTEL_SERVICE_NAME", service)
        .opt("--bind", ip);
    if let Some(ns) = ns {
        script = script.in_netns(ns);
    }
    let mut child = script.spawn();
    let v = child.expect_event("listening", STARTUP);
    let port = u16::try_from(v["port"].as_u64().expect("port")).expect("port fits u16");
    (child, SocketAddr::new(ip, port))
}

/// What one curl process sent and received, by its own account.
#[derive(Default, Debug, Clone, Copy)]
struct Curl {
    requests: u64,
    /// `size_request`: the request bytes curl wrote.
    sent: u64,
    /// `size_header + size_download`: the response bytes curl read.
    received: u64,
}

impl std::ops::Add for Curl {
    type Output = Curl;
    fn add(self, o: Curl) -> Curl {
        Curl {
            requests: self.requests + o.requests,
            sent: self.sent + o.sent,
            received: self.received + o.received,
        }
    }
}

/// One curl process (in `ns`, if given) fetching `/api/users/<i>` from `dest` `n` times, over
/// one keep-alive connection; every answer must be a 200.
fn curl(ns: Option<&NetNs>, dest: SocketAddr, n: u64) -> Curl {
    let mut cmd = match ns {
        Some(ns) => ns.command("curl"),
        None => std::process::Command::new("curl"),
    };
    cmd.args([
        "-s",
        "--max-time",
        "60",
        "-w",
        "%{http_code} %{size_request} %{size_header} %{size_download}\\n",
    ]);
    for i in 0..n {
        cmd.args(["-o", "/dev/null", &format!("http://{dest}/api/users/{i}")]);
    }
    let out = run_command(&mut cmd, RUN);
    assert!(
        out.status.success(),
        "curl failed ({}): {}{}",
        out.status,
        out.stdout,
        out.stderr
    );
    let mut total = Curl::default();
    for line in out.stdout.lines() {
        let f: Vec<u64> = line
            .split(' ')
            .map(|x| x.parse().expect("curl -w field"))
            .collect();
        assert_eq!(f[0], 200, "curl output:\n{}", out.stdout);
        total = total
            + Curl {
                requests: 1,
                sent: f[1],
                received: f[2] + f[3],
            };
    }
    assert_eq!(total.requests, n, "curl output:\n{}", out.stdout);
    total
}

/// Stops a backend and checks that it served exactly `n` GETs, all 200.
fn finish_backend(mut child: ScriptChild, n: u64) {
    child.send_line("quit");
    let done: Value = child.finish(RUN);
    assert_eq!(done["served"], json!({"GET 200": n}), "{done}");
}

fn all_zero(m: &Metrics, checks: &[(&str, &[(&str, &str)])]) -> Vec<String> {
    checks
        .iter()
        .filter(|(name, labels)| m.value(name, labels) != 0.0)
        .map(|(name, labels)| {
            format!(
                "{name}{labels:?} = {}, expected 0\n{}",
                m.value(name, labels),
                m.describe(name)
            )
        })
        .collect()
}

#[test]
fn agents_scoped_to_namespaces_each_see_only_their_own() {
    let _serial = serial();
    let pair = VethPair::new();
    let idle = NetNs::create(&format!("meshtap-{}-idle", std::process::id()));
    let (a_ip, b_ip) = (pair.a.v4.to_string(), pair.b.v4.to_string());
    // Servers first: each scoped agent finds the listeners that exist when it starts, and must
    // index only those of its own namespaces.
    let (server_b, dest_b) = backend("mt-ns-backend", IpAddr::V4(pair.b.v4), Some(&pair.b.ns));
    let (server_root, dest_root) = backend("mt-ns-root", IpAddr::from([127, 0, 0, 1]), None);

    let scoped = |ns: &NetNs| Agent::start(&["--netns", &netns_file(ns)]);
    let agent_a = scoped(&pair.a.ns);
    let agent_b = scoped(&pair.b.ns);
    let agent_idle = scoped(&idle);
    let node = Agent::start(&[]);

    let from_a =
        curl(Some(&pair.a.ns), dest_b, KEEP_ALIVE) + curl(Some(&pair.a.ns), dest_b, SECOND);
    curl(None, dest_root, M);
    finish_backend(server_b, N);
    finish_backend(server_root, M);
    let port_b = dest_b.port().to_string();
    let port_root = dest_root.port().to_string();

    // The unscoped agent sees both flows, each from both ends.
    node.wait_for(
        &count(HTTP_SERVER_DURATION),
        &[("service_name", "mt-ns-backend")],
        N as f64,
        SETTLE,
    );
    node.wait_for(
        &count(HTTP_SERVER_DURATION),
        &[("service_name", "mt-ns-root")],
        M as f64,
        SETTLE,
    );
    node.wait_for(
        &count(HTTP_CLIENT_DURATION),
        &[("service_name", "curl"), ("server_port", &port_root)],
        M as f64,
        SETTLE,
    );

    // Agent a: curl's N requests to a remote server (b is not its node: the server is named
    // by its address), with curl's exact bytes, and nothing else at all.
    let client_edge = [
        ("client", "curl"),
        ("server", b_ip.as_str()),
        ("server_port", port_b.as_str()),
        ("role", "client"),
    ];
    agent_a.wait_for(SENT, &client_edge, from_a.sent as f64, SETTLE);
    agent_a.wait_for(RECEIVED, &client_edge, from_a.received as f64, SETTLE);
    agent_a.wait_for(
        &count(HTTP_CLIENT_DURATION),
        &[
            ("service_name", "curl"),
            ("server_address", b_ip.as_str()),
            ("server_port", port_b.as_str()),
            ("http_response_status_code", "200"),
        ],
        N as f64,
        SETTLE,
    );

    // Agent b: the server's N requests from a remote client, the same bytes the other way.
    let server_edge = [
        ("client", a_ip.as_str()),
        ("server", "mt-ns-backend"),
        ("server_port", port_b.as_str()),
        ("role", "server"),
    ];
    agent_b.wait_for(SENT, &server_edge, from_a.received as f64, SETTLE);
    agent_b.wait_for(RECEIVED, &server_edge, from_a.sent as f64, SETTLE);
    agent_b.wait_for(
        &count(HTTP_SERVER_DURATION),
        &[
            ("service_name", "mt-ns-backend"),
            ("http_response_status_code", "200"),
        ],
        N as f64,
        SETTLE,
    );

    // Everything has settled on every agent: now the totals, unfiltered, are exact. Each
    // scoped agent saw its own side of the two connections from a to b and nothing of the
    // root namespace's flow (nor of the test's scrapes of the agents, also root namespace).
    // The idle namespace's agent saw no event at all.
    let a = agent_a.metrics();
    let b = agent_b.metrics();
    let idle_m = agent_idle.metrics();
    let mut problems = Vec::new();
    for (who, m, checks) in [
        (
            "a",
            &a,
            vec![
                (count(HTTP_CLIENT_DURATION), vec![], N as f64),
                (OPENED.to_owned(), vec![("role", "client")], 2.0),
                (OPENED.to_owned(), vec![], 2.0),
                (SENT.to_owned(), vec![], from_a.sent as f64),
                (RECEIVED.to_owned(), vec![], from_a.received as f64),
            ],
        ),
        (
            "b",
            &b,
            vec![
                (count(HTTP_SERVER_DURATION), vec![], N as f64),
                (OPENED.to_owned(), vec![("role", "server")], 2.0),
                (OPENED.to_owned(), vec![], 2.0),
                (SENT.to_owned(), vec![], from_a.received as f64),
                (RECEIVED.to_owned(), vec![], from_a.sent as f64),
            ],
        ),
    ] {
        for (name, labels, want) in checks {
            let got = m.value(&name, &labels);
            if got != want {
                problems.push(format!(
                    "agent {who}: {name}{labels:?} = {got}, expected {want}\n{}",
                    m.describe(&name)
                ));
            }
        }
    }
    let no_server: &[(&str, &[(&str, &str)])] = &[(&count(HTTP_SERVER_DURATION), &[])];
    problems.extend(
        all_zero(&a, no_server)
            .into_iter()
            .map(|p| format!("agent a: {p}")),
    );
    let no_client: &[(&str, &[(&str, &str)])] = &[(&count(HTTP_CLIENT_DURATION), &[])];
    problems.extend(
        all_zero(&b, no_client)
            .into_iter()
            .map(|p| format!("agent b: {p}")),
    );
    let nothing: &[(&str, &[(&str, &str)])] = &[
        (EVENTS, &[]),
        (OPENED, &[]),
        (SENT, &[]),
        (&count(HTTP_CLIENT_DURATION), &[]),
        (&count(HTTP_SERVER_DURATION), &[]),
    ];
    problems.extend(
        all_zero(&idle_m, nothing)
            .into_iter()
            .map(|p| format!("agent idle: {p}")),
    );
    let idle_conns = agent_idle.connections();
    if !idle_conns.is_empty() {
        problems.push(format!("agent idle tracks connections: {idle_conns:?}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// A connection from `a` to `b` opened before the agents started: each end is found at its
/// first read or write (a socket opened before the agent) by the agent of its own namespace
/// only, and the idle namespace's agent sees nothing of it.
#[test]
fn a_connection_opened_before_the_agents_is_seen_only_from_its_namespaces() {
    const WARM: u64 = 4;
    const THEN: u64 = 6;
    let _serial = serial();
    let pair = VethPair::new();
    let idle = NetNs::create(&format!("meshtap-{}-idle", std::process::id()));
    let (srv, cli) = ("mt-ns-mid-srv", "mt-ns-mid-cli");
    let mut server = Script::new("http_raw.py", srv)
        .env("OTEL_SERVICE_NAME", srv)
        .in_netns(&pair.b.ns)
        .arg("server")
        .opt("--bind", pair.b.v4)
        .opt("--port", 0)
        .spawn();
    let v = server.expect_event("listening", STARTUP);
    let port = v["port"].as_u64().expect("port").to_string();
    // WARM requests, then GET /wait, answered once the agents run; the client is held alive
    // once done, so that its /proc entry can still name it.
    let mut client = Script::new("http_raw.py", cli)
        .env("OTEL_SERVICE_NAME", cli)
        .in_netns(&pair.a.ns)
        .arg("client")
        .opt("--host", pair.b.v4)
        .opt("--port", &port)
        .opt("--mode", "midstream")
        .opt("--path", "/bytes/4")
        .opt("--warm", WARM)
        .opt("--then", THEN)
        .arg("--hold")
        .spawn();
    client.expect_event("waiting", STARTUP);

    let scoped = |ns: &NetNs| Agent::start(&["--netns", &netns_file(ns)]);
    let agent_a = scoped(&pair.a.ns);
    let agent_b = scoped(&pair.b.ns);
    let agent_idle = scoped(&idle);
    server.send_line("go");
    let done = client.expect_event("done", RUN);
    assert_eq!(done["responses"].as_u64(), Some(WARM + 1 + THEN), "{done}");

    agent_a.wait_for(
        &count(HTTP_CLIENT_DURATION),
        &[("service_name", cli), ("server_port", &port)],
        THEN as f64,
        SETTLE,
    );
    agent_b.wait_for(
        &count(HTTP_SERVER_DURATION),
        &[("service_name", srv)],
        THEN as f64,
        SETTLE,
    );
    let (a, b, idle_m) = (agent_a.metrics(), agent_b.metrics(), agent_idle.metrics());
    let mut problems = Vec::new();
    for (who, m, name, want) in [
        ("a", &a, count(HTTP_CLIENT_DURATION), THEN),
        ("a", &a, count(HTTP_SERVER_DURATION), 0),
        ("b", &b, count(HTTP_SERVER_DURATION), THEN),
        ("b", &b, count(HTTP_CLIENT_DURATION), 0),
        ("idle", &idle_m, EVENTS.to_owned(), 0),
        ("idle", &idle_m, count(HTTP_CLIENT_DURATION), 0),
        ("idle", &idle_m, count(HTTP_SERVER_DURATION), 0),
    ] {
        let got = m.value(&name, &[]);
        if got != want as f64 {
            problems.push(format!(
                "agent {who}: {name} = {got}, expected {want}\n{}",
                m.describe(&name)
            ));
        }
    }
    let idle_conns = agent_idle.connections();
    if !idle_conns.is_empty() {
        problems.push(format!("agent idle tracks connections: {idle_conns:?}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    client.kill();
}

#[test]
fn a_path_that_is_not_a_network_namespace_is_one_line_error() {
    let _serial = serial();
    let timeout = Duration::from_secs(30);
    for (path, why) in [
        ("/run/netns/meshtap-no-such-namespace", "cannot open it"),
        ("/etc/hostname", "not a namespace file"),
        ("/proc/self/ns/mnt", "not of a network namespace"),
    ] {
        let exited = Agent::run_to_exit(&["--netns", path], timeout);
        let lines = exited.stderr_lines();
        assert!(
            exited.status.is_some_and(|s| !s.success())
                && lines.len() == 1
                && lines[0].contains(&format!("--netns) = {path}: "))
                && lines[0].contains(why)
                && lines[0].contains("/run/netns/<name>"),
            "--netns {path}: want a non-zero exit and one line saying {why:?} and what to \
             give; got {:?} and:\n{}",
            exited.status,
            exited.stderr
        );
    }
}
