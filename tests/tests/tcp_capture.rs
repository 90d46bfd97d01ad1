//! TCP capture, end to end: the real agent binary, the real kernel, real sockets.
//!
//! Topologies: loopback, and two network namespaces joined by a veth pair (server in `a`,
//! clients in `b`) over IPv4 and IPv6; the agent always runs in the root namespace. Every test
//! program names itself (`comm`, and the same service name, `OTEL_SERVICE_NAME`) uniquely, and
//! every assertion filters on those names, so other traffic on the machine does not matter.
//! Numbers are exact: the scripts report the sums of their own syscall return values and the
//! metrics must equal them.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use meshtap_tests::metrics::{
    ACTIVE, CLOSED, CONNECT_DURATION_BUCKET, CONNECT_DURATION_COUNT, CONNECTIONS_TRACKED, EVENTS,
    EVENTS_LOST, FAILED, MAP_ENTRIES, OPENED, RECEIVED, SENT,
};
use meshtap_tests::{
    Agent, Check, Connection, Metrics, SETTLE, Script, ScriptChild, VethPair, bpf, free_port,
    serial,
};
use serde_json::Value;

/// How long one test program may run.
const RUN: Duration = Duration::from_secs(60);
/// How long a test program may take to start and report it is listening / connected.
const STARTUP: Duration = Duration::from_secs(10);

/// Where the server and the clients run.
#[derive(Clone, Copy)]
enum Net<'a> {
    Loopback,
    /// Server in `a`, clients in `b`, over IPv4.
    V4(&'a VethPair),
    /// Server in `a`, clients in `b`, over IPv6.
    V6(&'a VethPair),
}

impl Net<'_> {
    fn server_ip(self) -> String {
        match self {
            Net::Loopback => "127.0.0.1".to_owned(),
            Net::V4(p) => p.a.v4.to_string(),
            Net::V6(p) => p.a.v6.to_string(),
        }
    }

    fn server(self, comm: &str) -> Script {
        let script = Script::server(comm).named().opt("--bind", self.server_ip());
        match self {
            Net::Loopback => script,
            Net::V4(p) | Net::V6(p) => script.in_netns(&p.a.ns),
        }
    }

    fn client(self, comm: &str, port: u16) -> Script {
        let script = Script::client(comm)
            .named()
            .opt("--host", self.server_ip())
            .opt("--port", port);
        match self {
            Net::Loopback => script,
            Net::V4(p) | Net::V6(p) => script.in_netns(&p.b.ns),
        }
    }
}

fn listening_port(server: &mut ScriptChild) -> u16 {
    let v = server.expect_event("listening", STARTUP);
    u16::try_from(num(&v, "port")).expect("port fits u16")
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("script result has no number {key:?}: {v}"))
}

/// Labels of one L4 edge as seen by `role`.
fn edge<'a>(
    client: &'a str,
    server: &'a str,
    port: &'a str,
    role: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("client", client),
        ("server", server),
        ("server_port", port),
        ("role", role),
    ]
}

/// Waits until both roles of the edge have `n` connections opened and closed, then checks
/// the counters, the gauge and the connect histogram from one scrape.
fn assert_connections(agent: &Agent, cli: &str, srv: &str, port: u16, n: u64) -> Metrics {
    let port = port.to_string();
    let as_client = edge(cli, srv, &port, "client");
    let as_server = edge(cli, srv, &port, "server");
    let n = n as f64;
    for labels in [&as_client, &as_server] {
        agent.wait_for(OPENED, labels, n, SETTLE);
        agent.wait_for(CLOSED, labels, n, SETTLE);
        agent.wait_for(ACTIVE, labels, 0.0, SETTLE);
    }
    let by_client = [("client", cli)];
    let inf_client = [("client", cli), ("role", "client"), ("le", "+Inf")];
    let m = agent.metrics();
    m.assert_values(&[
        (OPENED, &as_client, n),
        (OPENED, &as_server, n),
        (CLOSED, &as_client, n),
        (CLOSED, &as_server, n),
        (ACTIVE, &as_client, 0.0),
        (ACTIVE, &as_server, 0.0),
        // Nothing of this client's was counted under other labels (a wrong server name or
        // port, role "unknown", ...).
        (OPENED, &by_client, 2.0 * n),
        (CLOSED, &by_client, 2.0 * n),
        (FAILED, &by_client, 0.0),
        (CONNECT_DURATION_COUNT, &as_client, n),
        (CONNECT_DURATION_BUCKET, &inf_client, n),
    ]);
    m
}

/// Waits for and checks the exact byte counters of one edge, both roles.
fn assert_bytes(
    agent: &Agent,
    (cli, srv, port): (&str, &str, u16),
    client: &Value,
    server: &Value,
) -> Metrics {
    let port = port.to_string();
    let as_client = edge(cli, srv, &port, "client");
    let as_server = edge(cli, srv, &port, "server");
    let (c_sent, c_recv) = (num(client, "sent") as f64, num(client, "received") as f64);
    let (s_sent, s_recv) = (num(server, "sent") as f64, num(server, "received") as f64);
    agent.wait_for(SENT, &as_client, c_sent, SETTLE);
    agent.wait_for(RECEIVED, &as_client, c_recv, SETTLE);
    agent.wait_for(SENT, &as_server, s_sent, SETTLE);
    agent.wait_for(RECEIVED, &as_server, s_recv, SETTLE);
    let by_client = [("client", cli)];
    let m = agent.metrics();
    m.assert_values(&[
        (SENT, &as_client, c_sent),
        (RECEIVED, &as_client, c_recv),
        (SENT, &as_server, s_sent),
        (RECEIVED, &as_server, s_recv),
        (SENT, &by_client, c_sent + s_sent),
        (RECEIVED, &by_client, c_recv + s_recv),
    ]);
    m
}

fn short_lived_connections(net: Net<'_>, cli: &str, srv: &str) {
    const N: u64 = 500;
    let agent = Agent::start(&[]);
    let mut server = net
        .server(srv)
        .opt("--mode", "drain")
        .opt("--count", N)
        .spawn();
    let port = listening_port(&mut server);
    let client = net
        .client(cli, port)
        .opt("--mode", "connect-close")
        .opt("--count", N)
        .run(RUN);
    let server = server.finish(RUN);
    assert_eq!(num(&client, "opened"), N);
    assert_eq!(num(&server, "accepted"), N);
    let m = assert_connections(&agent, cli, srv, port, N);
    let by_client = [("client", cli)];
    m.assert_values(&[(SENT, &by_client, 0.0), (RECEIVED, &by_client, 0.0)]);
}

#[test]
fn short_lived_connections_loopback() {
    let _serial = serial();
    short_lived_connections(Net::Loopback, "mt-cli-short-lo", "mt-srv-short-lo");
}

#[test]
fn short_lived_connections_veth_ipv4() {
    let _serial = serial();
    let pair = VethPair::new();
    short_lived_connections(Net::V4(&pair), "mt-cli-short-v4", "mt-srv-short-v4");
}

#[test]
fn bytes_are_exact_for_large_and_vectored_transfers() {
    const MIB4: u64 = 4 * 1024 * 1024;
    const DOWNLOAD: u64 = MIB4 + 4321;
    // tcp_client.py / tcp_server.py `sendmsg32` sends 32 iovecs of 97, 194, ... 3104 bytes.
    const IOV32: u64 = 97 * 32 * 33 / 2;
    let _serial = serial();
    let pair = VethPair::new();
    let net = Net::V4(&pair);
    let agent = Agent::start(&[]);

    // 4 MiB up with write(2) in 16 KiB pieces, 4 MiB + 4321 down with send(2) in 32 KiB
    // pieces, read back with read(2) / recv(2): hundreds of syscalls each way.
    let (cli, srv) = ("mt-cli-bulk", "mt-srv-bulk");
    let mut server = net
        .server(srv)
        .opt("--mode", "transfer")
        .opt("--download", DOWNLOAD)
        .opt("--send-api", "send")
        .opt("--recv-api", "read")
        .opt("--chunk", 32768)
        .spawn();
    let port = listening_port(&mut server);
    let client = net
        .client(cli, port)
        .opt("--mode", "transfer")
        .opt("--upload", MIB4)
        .opt("--send-api", "write")
        .opt("--recv-api", "recv")
        .opt("--chunk", 16384)
        .run(RUN);
    let server = server.finish(RUN);
    assert_eq!(
        (num(&client, "sent"), num(&client, "received")),
        (MIB4, DOWNLOAD)
    );
    assert_eq!(
        (num(&server, "sent"), num(&server, "received")),
        (DOWNLOAD, MIB4)
    );
    assert!(num(&client, "send_calls") >= 256 && num(&server, "send_calls") >= 128);
    assert_connections(&agent, cli, srv, port, 1);
    assert_bytes(&agent, (cli, srv, port), &client, &server);

    // sendmsg(2) with 32 iovecs each way (twice up, three times down), received with
    // recvmsg(2) into two buffers.
    let (cli, srv) = ("mt-cli-iov", "mt-srv-iov");
    let mut server = net
        .server(srv)
        .opt("--mode", "transfer")
        .opt("--download", 3 * IOV32)
        .opt("--send-api", "sendmsg32")
        .opt("--recv-api", "recvmsg")
        .spawn();
    let port = listening_port(&mut server);
    let client = net
        .client(cli, port)
        .opt("--mode", "transfer")
        .opt("--upload", 2 * IOV32)
        .opt("--send-api", "sendmsg32")
        .opt("--recv-api", "recvmsg")
        .run(RUN);
    let server = server.finish(RUN);
    assert_eq!(
        (num(&client, "sent"), num(&client, "received")),
        (2 * IOV32, 3 * IOV32)
    );
    assert_eq!(
        (num(&server, "sent"), num(&server, "received")),
        (3 * IOV32, 2 * IOV32)
    );
    // Each sendmsg carried all 32 iovecs.
    assert_eq!(
        (num(&client, "send_calls"), num(&server, "send_calls")),
        (2, 3)
    );
    assert_connections(&agent, cli, srv, port, 1);
    assert_bytes(&agent, (cli, srv, port), &client, &server);
}

/// One keep-alive connection on loopback with `RR_ROUNDS` round trips of `RR_REQUEST` bytes
/// out and `RR_RESPONSE` back. `meanwhile` runs once the server listens, until both ends are
/// done (its guard is dropped then). Returns the port and both ends' byte counts, checked.
fn round_trips<G>(cli: &str, srv: &str, meanwhile: impl FnOnce() -> G) -> (u16, Value, Value) {
    const RR_ROUNDS: u64 = 2000;
    const RR_REQUEST: u64 = 100;
    const RR_RESPONSE: u64 = 300;
    let net = Net::Loopback;
    let mut server = net
        .server(srv)
        .opt("--mode", "rr")
        .opt("--request", RR_REQUEST)
        .opt("--response", RR_RESPONSE)
        .spawn();
    let port = listening_port(&mut server);
    let guard = meanwhile();
    let client = net
        .client(cli, port)
        .opt("--mode", "rr")
        .opt("--rounds", RR_ROUNDS)
        .opt("--request", RR_REQUEST)
        .opt("--response", RR_RESPONSE)
        .run(RUN);
    let server = server.finish(RUN);
    drop(guard);
    assert_eq!(num(&client, "sent"), RR_ROUNDS * RR_REQUEST);
    assert_eq!(num(&client, "received"), RR_ROUNDS * RR_RESPONSE);
    assert_eq!(num(&server, "sent"), RR_ROUNDS * RR_RESPONSE);
    assert_eq!(num(&server, "received"), RR_ROUNDS * RR_REQUEST);
    (port, client, server)
}

/// Stops the agent (SIGSTOP) until dropped, so that it cannot drain its ring buffer.
struct Stopped<'a>(&'a Agent);

impl<'a> Stopped<'a> {
    fn new(agent: &'a Agent) -> Self {
        agent.signal(libc::SIGSTOP);
        Stopped(agent)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.0.signal(libc::SIGCONT);
    }
}

#[test]
fn keepalive_connection_with_2000_round_trips() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let (cli, srv) = ("mt-cli-keepalv", "mt-srv-keepalv");
    let (port, client, server) = round_trips(cli, srv, || ());
    assert_connections(&agent, cli, srv, port, 1);
    assert_bytes(&agent, (cli, srv, port), &client, &server);
}

/// A peek (`recv(MSG_PEEK)`: recvfrom(2) or recvmsg(2) with the flag) returns bytes that stay
/// queued for the next read: counted and parsed by that read, not by the peek. A server that
/// peeks before each read (recvfrom) and a client that does (recvmsg), 200 round trips: the
/// exact bytes their own reads returned. Then an HTTP server that peeks at each request before
/// reading it, driven by one curl with 12 keep-alive requests: 12 requests on each side, what
/// one end sent is what the other received.
#[test]
fn peeks_are_neither_counted_nor_parsed() {
    const ROUNDS: u64 = 200;
    let _serial = serial();
    let agent = Agent::start(&[]);
    let (cli, srv) = ("mt-cli-peek", "mt-srv-peek");
    let net = Net::Loopback;
    let mut server = net
        .server(srv)
        .opt("--mode", "rr")
        .opt("--request", 100)
        .opt("--response", 300)
        .opt("--recv-api", "peek-recv")
        .spawn();
    let port = listening_port(&mut server);
    let client = net
        .client(cli, port)
        .opt("--mode", "rr")
        .opt("--rounds", ROUNDS)
        .opt("--request", 100)
        .opt("--response", 300)
        .opt("--recv-api", "peek-recvmsg")
        .run(RUN);
    let server = server.finish(RUN);
    assert_eq!(
        (num(&client, "received"), num(&server, "received")),
        (ROUNDS * 300, ROUNDS * 100)
    );
    assert_connections(&agent, cli, srv, port, 1);
    assert_bytes(&agent, (cli, srv, port), &client, &server);

    let srv = "mt-http-peek";
    let mut server = Script::new("http_backend.py", srv)
        .named()
        .env("OTEL_SERVICE_NAME", srv)
        .opt("--bind", "127.0.0.1")
        .arg("--peek")
        .spawn();
    let port = listening_port(&mut server);
    let mut curl = std::process::Command::new("curl");
    curl.args(["-s", "-w", "%{http_code}\\n"]);
    for i in 0..12 {
        curl.args([
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{port}/api/users/{i}"),
        ]);
    }
    let out = meshtap_tests::process::run_command(&mut curl, RUN);
    assert_eq!(
        out.stdout.lines().filter(|l| *l == "200").count(),
        12,
        "curl: {}{}",
        out.stdout,
        out.stderr
    );
    server.send_line("done");
    let done = server.finish(RUN);
    assert_eq!(done["served"]["GET 200"].as_u64(), Some(12), "{done}");
    let server_series = [
        ("service_name", srv),
        ("http_request_method", "GET"),
        ("http_route", "/api/users/*"),
        ("http_response_status_code", "200"),
    ];
    let requests = meshtap_tests::metrics::count(meshtap_tests::metrics::HTTP_SERVER_DURATION);
    agent.wait_for(&requests, &server_series, 12.0, SETTLE);
    let port = port.to_string();
    let (as_client, as_server) = (
        edge("curl", srv, &port, "client"),
        edge("curl", srv, &port, "server"),
    );
    let client_requests =
        meshtap_tests::metrics::count(meshtap_tests::metrics::HTTP_CLIENT_DURATION);
    let client_series = [
        ("service_name", "curl"),
        ("server_port", port.as_str()),
        ("http_response_status_code", "200"),
    ];
    agent.wait_for(&client_requests, &client_series, 12.0, SETTLE);
    let m = agent.metrics();
    m.assert_values(&[
        (&requests, &server_series, 12.0),
        (&requests, &[("service_name", srv)], 12.0),
        (&client_requests, &client_series, 12.0),
        (
            &client_requests,
            &[("service_name", "curl"), ("server_port", port.as_str())],
            12.0,
        ),
        (RECEIVED, &as_server, m.value(SENT, &as_client)),
        (RECEIVED, &as_client, m.value(SENT, &as_server)),
    ]);
    assert!(m.value(SENT, &as_client) > 0.0, "{}", m.describe(SENT));
}

/// `count` connects to `host:port` where nothing listens: all must fail with ECONNREFUSED, be
/// counted as failed (reason refused, server label = the peer's IP since no process is
/// there) and never as opened.
fn assert_refused(
    agent: &Agent,
    client: Script,
    cli: &str,
    server_ip: &str,
    port: u16,
    count: u64,
) {
    let result = client
        .opt("--mode", "refused")
        .opt("--count", count)
        .run(RUN);
    assert_eq!(
        result["errnos"],
        serde_json::json!({ "ECONNREFUSED": count })
    );
    let port = port.to_string();
    let refused = [
        ("client", cli),
        ("server", server_ip),
        ("server_port", port.as_str()),
        ("role", "client"),
        ("reason", "refused"),
    ];
    let by_client = [("client", cli)];
    agent.wait_for(FAILED, &refused, count as f64, SETTLE);
    agent.metrics().assert_values(&[
        (FAILED, &refused, count as f64),
        (FAILED, &by_client, count as f64),
        (OPENED, &by_client, 0.0),
        (CLOSED, &by_client, 0.0),
        (ACTIVE, &by_client, 0.0),
    ]);
}

#[test]
fn refused_connects_are_counted_as_failed() {
    const N: u64 = 20;
    let _serial = serial();
    let pair = VethPair::new();
    let agent = Agent::start(&[]);

    let port = free_port();
    let cli = "mt-cli-refus-lo";
    let client = Net::Loopback.client(cli, port);
    assert_refused(&agent, client, cli, "127.0.0.1", port, N);

    // Nothing listens in the fresh namespace `a`; its kernel answers the SYN with a RST.
    let port = 5099;
    let cli = "mt-cli-refus-v4";
    let client = Net::V4(&pair).client(cli, port);
    assert_refused(&agent, client, cli, &pair.a.v4.to_string(), port, N);
}

#[test]
fn ipv6_across_veth() {
    const RUNS: u64 = 3;
    const UPLOAD: u64 = 5555;
    const DOWNLOAD: u64 = 7777;
    let _serial = serial();
    let pair = VethPair::new();
    let net = Net::V6(&pair);
    let agent = Agent::start(&[]);

    let (cli, srv) = ("mt-cli-v6", "mt-srv-v6");
    let mut server = net
        .server(srv)
        .opt("--mode", "transfer")
        .opt("--count", RUNS)
        .opt("--download", DOWNLOAD)
        .spawn();
    let port = listening_port(&mut server);
    let mut client_totals = serde_json::json!({ "sent": 0, "received": 0 });
    for _ in 0..RUNS {
        let c = net
            .client(cli, port)
            .opt("--mode", "transfer")
            .opt("--upload", UPLOAD)
            .run(RUN);
        for key in ["sent", "received"] {
            client_totals[key] = (num(&client_totals, key) + num(&c, key)).into();
        }
    }
    let server = server.finish(RUN);
    assert_eq!(num(&client_totals, "sent"), RUNS * UPLOAD);
    assert_eq!(num(&server, "sent"), RUNS * DOWNLOAD);
    assert_connections(&agent, cli, srv, port, RUNS);
    assert_bytes(&agent, (cli, srv, port), &client_totals, &server);

    // A refused IPv6 connect: the server end is no process, so its label is the IPv6 address.
    let cli_refused = "mt-cli-v6-refus";
    let client = net.client(cli_refused, 5099);
    assert_refused(&agent, client, cli_refused, &pair.a.v6.to_string(), 5099, 5);

    // Connections held open: the table formats IPv6 endpoints as [addr]:port.
    let (cli, srv) = ("mt-cli-v6-hold", "mt-srv-v6-hold");
    let mut server = net.server(srv).opt("--mode", "hold").spawn();
    let port = listening_port(&mut server);
    let mut client = net
        .client(cli, port)
        .opt("--mode", "hold")
        .opt("--upload", 64)
        .spawn();
    let held = client.expect_event("connected", STARTUP);
    let accepted = server.expect_event("accepted", STARTUP);
    let local = held["conns"][0]["local"]
        .as_str()
        .expect("local")
        .to_owned();
    let remote = held["conns"][0]["remote"]
        .as_str()
        .expect("remote")
        .to_owned();
    assert!(local.starts_with(&format!("[{}]:", pair.b.v6)), "{local}");
    assert_eq!(remote, format!("[{}]:{port}", pair.a.v6));
    assert_eq!(accepted["local"], remote.as_str());
    assert_eq!(accepted["remote"], local.as_str());
    let expected = [
        ("client", client.pid(), cli, &local, &remote),
        ("server", server.pid(), srv, &remote, &local),
    ];
    agent.wait_for_connections("both ends of the IPv6 connection", SETTLE, |table| {
        expected.iter().all(|(role, pid, comm, l, r)| {
            find(table, role, l, r).is_some_and(|c| c.pid == *pid && c.comm == *comm)
        })
    });
    client.send_line("close");
    client.finish(RUN);
    server.finish(RUN);
}

#[test]
fn ipv4_mapped_addresses_are_reported_as_ipv4() {
    let _serial = serial();
    let pair = VethPair::new();
    let agent = Agent::start(&[]);
    let (cli, srv) = ("mt-cli-mapped", "mt-srv-mapped");
    // A dual-stack IPv6 listener on `::` in `a`; the client connects over IPv4.
    let mut server = Script::server(srv)
        .named()
        .in_netns(&pair.a.ns)
        .opt("--bind", "::")
        .arg("--dual-stack")
        .opt("--mode", "hold")
        .spawn();
    let port = listening_port(&mut server);
    let mut client = Net::V4(&pair)
        .client(cli, port)
        .opt("--mode", "hold")
        .opt("--upload", 10)
        .spawn();
    let held = client.expect_event("connected", STARTUP);
    let accepted = server.expect_event("accepted", STARTUP);
    let local = held["conns"][0]["local"]
        .as_str()
        .expect("local")
        .to_owned();
    let server_local = format!("{}:{port}", pair.a.v4);
    // The server's socket sees ::ffff:10.200.X.1 / ::ffff:10.200.X.2.
    assert!(
        accepted["local"]
            .as_str()
            .is_some_and(|l| l.starts_with("[::ffff:")),
        "{accepted}"
    );
    let table =
        agent.wait_for_connections("the server end of the mapped connection", SETTLE, |t| {
            find(t, "server", &server_local, &local).is_some()
        });
    let c = find(&table, "server", &server_local, &local).expect("found above");
    assert_eq!((c.pid, c.comm.as_str()), (server.pid(), srv), "{c:?}");
    client.send_line("close");
    client.finish(RUN);
    server.finish(RUN);
    let port = port.to_string();
    agent.wait_for(RECEIVED, &edge(cli, srv, &port, "server"), 10.0, SETTLE);
}

fn find<'a>(
    table: &'a [Connection],
    role: &str,
    local: &str,
    remote: &str,
) -> Option<&'a Connection> {
    table
        .iter()
        .find(|c| c.role == role && c.local == local && c.remote == remote)
}

#[test]
fn connections_are_attributed_to_both_processes() {
    const HELD: u64 = 3;
    const UPLOAD: u64 = 1000;
    let _serial = serial();
    let pair = VethPair::new();
    let net = Net::V4(&pair);
    let agent = Agent::start(&[]);
    let (cli, srv) = ("mt-cli-attr", "mt-srv-attr");
    let mut server = net
        .server(srv)
        .opt("--mode", "hold")
        .opt("--count", HELD)
        .spawn();
    let port = listening_port(&mut server);
    let mut client = net
        .client(cli, port)
        .opt("--mode", "hold")
        .opt("--count", HELD)
        .opt("--upload", UPLOAD)
        .spawn();
    let held = client.expect_event("connected", STARTUP);
    for _ in 0..HELD {
        server.expect_event("accepted", STARTUP);
    }
    let conns: Vec<(String, String)> = held["conns"]
        .as_array()
        .expect("conns")
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().expect("address").to_owned();
            (s("local"), s("remote"))
        })
        .collect();
    assert_eq!(conns.len(), HELD as usize);
    let (client_pid, server_pid) = (client.pid(), server.pid());
    let all_seen = |table: &[Connection]| {
        conns.iter().all(|(l, r)| {
            let c = find(table, "client", l, r);
            let s = find(table, "server", r, l);
            c.is_some_and(|c| c.bytes_sent == UPLOAD)
                && s.is_some_and(|s| s.bytes_received == UPLOAD)
        })
    };
    let table = agent.wait_for_connections("both ends of the 3 held connections", SETTLE, all_seen);
    let mut problems = Vec::new();
    for (l, r) in &conns {
        let c = find(&table, "client", l, r).expect("checked above");
        let s = find(&table, "server", r, l).expect("checked above");
        if (c.pid, c.comm.as_str(), c.bytes_received) != (client_pid, cli, 0) {
            problems.push(format!(
                "client end: want pid {client_pid} comm {cli}: {c:?}"
            ));
        }
        if (s.pid, s.comm.as_str(), s.bytes_sent) != (server_pid, srv, 0) {
            problems.push(format!(
                "server end: want pid {server_pid} comm {srv}: {s:?}"
            ));
        }
    }
    let ids: BTreeSet<u64> = table.iter().map(|c| c.id).collect();
    if ids.len() != table.len() {
        problems.push("connection ids are not unique".to_owned());
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    client.send_line("close");
    client.finish(RUN);
    server.finish(RUN);
    agent.wait_for_connections("the held connections to leave the table", SETTLE, |table| {
        conns.iter().all(|(l, r)| {
            find(table, "client", l, r).is_none() && find(table, "server", r, l).is_none()
        })
    });
    let port = port.to_string();
    agent.wait_for(ACTIVE, &edge(cli, srv, &port, "client"), 0.0, SETTLE);
    agent.wait_for(
        CLOSED,
        &edge(cli, srv, &port, "server"),
        HELD as f64,
        SETTLE,
    );
}

#[test]
fn reused_pid_is_attributed_to_the_new_process() {
    let _serial = serial();
    let net = Net::Loopback;
    let agent = Agent::start(&[]);
    let srv = "mt-reuse-srv";
    let (comm_a, comm_b) = ("mt-reuse-a", "mt-reuse-b");
    let (upload_a, upload_b) = (11_u64, 23_u64);
    let mut server = net
        .server(srv)
        .opt("--mode", "drain")
        .opt("--count", 2)
        .spawn();
    let port = listening_port(&mut server);

    let hold = |comm: &str, upload: u64| {
        net.client(comm, port)
            .opt("--mode", "hold")
            .opt("--upload", upload)
    };
    let client_entry = |pid: u32, comm: &str| {
        let what = format!("pid {pid} ({comm}) in the table");
        let table = agent.wait_for_connections(&what, SETTLE, |t| {
            t.iter()
                .any(|c| c.role == "client" && c.pid == pid && c.comm == comm)
        });
        table
            .into_iter()
            .find(|c| c.role == "client" && c.pid == pid && c.comm == comm)
            .expect("found above")
    };

    // A holds a connection, then exits.
    let mut a = hold(comm_a, upload_a).spawn();
    let pid = a.pid();
    a.expect_event("connected", STARTUP);
    let entry_a = client_entry(pid, comm_a);
    a.send_line("close");
    a.finish(RUN);
    agent.wait_for_connections("A's connection to leave the table", SETTLE, |t| {
        !t.iter().any(|c| c.pid == pid)
    });

    // B gets A's pid, then connects.
    let mut b = hold(comm_b, upload_b)
        .arg("--wait-go")
        .spawn_with_pid(pid, 1000)
        .unwrap_or_else(|| panic!("could not make a new process get pid {pid}"));
    b.expect_event("ready", STARTUP);
    b.send_line("go");
    b.expect_event("connected", STARTUP);
    let entry_b = client_entry(pid, comm_b);
    assert_ne!(
        entry_a.start_time_ns, entry_b.start_time_ns,
        "same start_time_ns for two processes with pid {pid}: {entry_a:?} {entry_b:?}"
    );
    b.send_line("close");
    b.finish(RUN);
    server.finish(RUN);

    let port = port.to_string();
    let a_client = edge(comm_a, srv, &port, "client");
    let b_client = edge(comm_b, srv, &port, "client");
    let a_server = edge(comm_a, srv, &port, "server");
    let b_server = edge(comm_b, srv, &port, "server");
    agent.wait_for(CLOSED, &b_server, 1.0, SETTLE);
    agent.wait_for(RECEIVED, &b_server, upload_b as f64, SETTLE);
    agent.metrics().assert_values(&[
        (OPENED, &a_client, 1.0),
        (OPENED, &b_client, 1.0),
        (OPENED, &a_server, 1.0),
        (OPENED, &b_server, 1.0),
        (SENT, &a_client, upload_a as f64),
        (SENT, &b_client, upload_b as f64),
        (RECEIVED, &a_server, upload_a as f64),
        (RECEIVED, &b_server, upload_b as f64),
    ]);
}

/// The agent's own bookkeeping: tracked connections and the entries of its kernel maps.
fn bookkeeping(m: &Metrics) -> [f64; 3] {
    [
        m.value(CONNECTIONS_TRACKED, &[]),
        m.value(MAP_ENTRIES, &[("map", "conns")]),
        m.value(MAP_ENTRIES, &[("map", "connect_args")]),
    ]
}

/// [`bookkeeping`] on a quiet node: the smallest value seen over 11 s (the map gauges are
/// counted every 10 s, and a reading may include the scrape's own connection).
fn bookkeeping_baseline(agent: &Agent) -> [f64; 3] {
    let mut baseline = [f64::INFINITY; 3];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(11) {
        let now = bookkeeping(&agent.metrics());
        for (b, v) in baseline.iter_mut().zip(now) {
            *b = b.min(v);
        }
        thread::sleep(Duration::from_millis(200));
    }
    baseline
}

/// The kernel map's entry count is exact: 600 loopback connections held open are 1,200 more
/// tracked sockets (both ends), in the kernel map as in the agent's table.
#[test]
fn map_entries_count_the_connections_held_open() {
    const K: u64 = 600;
    let _serial = serial();
    let net = Net::Loopback;
    let agent = Agent::start(&[]);
    let baseline = bookkeeping_baseline(&agent);
    let (cli, srv) = ("mt-cli-count", "mt-srv-count");
    let mut server = net
        .server(srv)
        .opt("--mode", "hold")
        .opt("--count", K)
        .spawn();
    let port = listening_port(&mut server);
    let mut client = net
        .client(cli, port)
        .opt("--mode", "hold")
        .opt("--count", K)
        .spawn();
    client.expect_event("connected", STARTUP);
    let held = K as f64 * 2.0;
    let expected = [baseline[0] + held, baseline[1] + held, baseline[2]];
    agent.wait_until(
        Duration::from_secs(25),
        |m| bookkeeping(m) == expected,
        |m| {
            format!(
                "[tracked, conns, connect_args] = {:?}, expected {expected:?} (baseline {baseline:?})\n{}",
                bookkeeping(m),
                m.describe(MAP_ENTRIES),
            )
        },
    );
    client.send_line("close");
    client.finish(RUN);
    server.finish(RUN);
}

#[test]
fn no_leaks_after_20000_connections() {
    const N: u64 = 20_000;
    let _serial = serial();
    let net = Net::Loopback;
    let agent = Agent::start(&[]);
    let baseline = bookkeeping_baseline(&agent);
    let m = agent.metrics();
    for name in [CONNECTIONS_TRACKED, MAP_ENTRIES] {
        assert!(
            m.samples.iter().any(|s| s.name == name),
            "no {name} series:\n{}",
            m.describe(name)
        );
    }

    let (cli, srv) = ("mt-cli-leak", "mt-srv-leak");
    let mut server = net
        .server(srv)
        .opt("--mode", "close")
        .opt("--count", N)
        .spawn();
    let port = listening_port(&mut server);
    let begun = Instant::now();
    let client = net
        .client(cli, port)
        .opt("--mode", "connect-eof")
        .opt("--count", N)
        .run(Duration::from_secs(120));
    server.finish(RUN);
    eprintln!("{N} connections in {:?}", begun.elapsed());
    assert_eq!(num(&client, "opened"), N);

    agent.wait_until(
        Duration::from_secs(25),
        |m| bookkeeping(m) == baseline,
        |m| {
            format!(
                "[tracked, conns, connect_args] = {:?}, baseline {baseline:?}\n{}\n{}\n{}\n\
                 connections still tracked:\n{:#?}",
                bookkeeping(m),
                m.describe(CONNECTIONS_TRACKED),
                m.describe(MAP_ENTRIES),
                m.describe(EVENTS_LOST),
                agent.connections()
            )
        },
    );
    let lost = agent.metrics().describe(EVENTS_LOST);
    let m = agent.metrics();
    let port = port.to_string();
    let as_client = edge(cli, srv, &port, "client");
    let as_server = edge(cli, srv, &port, "server");
    let n = N as f64;
    let checks: [Check<'_>; 6] = [
        (OPENED, &as_client, n),
        (CLOSED, &as_client, n),
        (OPENED, &as_server, n),
        (CLOSED, &as_server, n),
        (ACTIVE, &as_client, 0.0),
        (ACTIVE, &as_server, 0.0),
    ];
    eprintln!("events lost during the run:\n{lost}");
    m.assert_values(&checks);
}

#[test]
fn lost_events_are_accounted_for() {
    const BURST: u64 = 2000;
    let _serial = serial();
    let agent = Agent::start(&["--ring-buffer-bytes", "4096"]);
    let kind = [("kind", "conn_fail")];
    let seen_plus_lost = |m: &Metrics| m.value(EVENTS, &kind) + m.value(EVENTS_LOST, &kind);
    let before = agent.metrics();
    let port = free_port();
    let client = Net::Loopback
        .client("mt-cli-loss", port)
        .opt("--mode", "refused")
        .opt("--count", BURST);

    // The stopped agent cannot drain its 4 KiB ring buffer: most of the burst must be dropped
    // in the kernel, and counted.
    let result = {
        let _stopped = Stopped::new(&agent);
        client.run(RUN)
    };
    assert_eq!(
        result["errnos"],
        serde_json::json!({ "ECONNREFUSED": BURST })
    );

    let expected = seen_plus_lost(&before) + BURST as f64;
    agent.wait_until(
        Duration::from_secs(15),
        |m| seen_plus_lost(m) == expected,
        |m| {
            format!(
                "conn_fail seen + lost = {}, expected {expected} (before: seen {} lost {})\n{}\n{}",
                seen_plus_lost(m),
                before.value(EVENTS, &kind),
                before.value(EVENTS_LOST, &kind),
                m.describe(EVENTS),
                m.describe(EVENTS_LOST)
            )
        },
    );
    // Settled: still exact a moment later.
    thread::sleep(Duration::from_secs(1));
    let m = agent.metrics();
    assert_eq!(seen_plus_lost(&m), expected, "{}", m.describe(EVENTS_LOST));
    let lost = m.value(EVENTS_LOST, &kind) - before.value(EVENTS_LOST, &kind);
    assert!(
        lost > 0.0,
        "a {BURST}-event burst into a 4 KiB ring buffer of a stopped agent lost nothing:\n{}",
        m.describe(EVENTS_LOST)
    );
}

/// A stopped agent's small ring buffer fills with data events; the part kept for connection
/// events still takes the opens and closes, whose per-connection totals keep the byte counters
/// exact while the lost data events are counted.
#[test]
fn bytes_stay_exact_when_data_events_are_lost() {
    let _serial = serial();
    // 64 KiB: 4 KiB of it kept for connection events; 2000 round trips are 8000 data events.
    let agent = Agent::start(&["--ring-buffer-bytes", "65536"]);
    let (cli, srv) = ("mt-cli-datalost", "mt-srv-datalost");
    let data = [("kind", "data")];
    let closes = [("kind", "conn_close")];
    let before = agent.metrics();
    let (port, client, server) = round_trips(cli, srv, || Stopped::new(&agent));
    assert_connections(&agent, cli, srv, port, 1);
    assert_bytes(&agent, (cli, srv, port), &client, &server);
    let lost = |m: &Metrics, kind: &[(&str, &str)]| m.value(EVENTS_LOST, kind);
    // The kernel's loss counters are read once a second.
    agent.wait_until(
        Duration::from_secs(5),
        |m| lost(m, &data) > lost(&before, &data),
        |m| {
            format!(
                "2000 round trips into a 64 KiB ring buffer of a stopped agent lost no data \
                 event:\n{}\n{}",
                m.describe(EVENTS_LOST),
                m.describe(EVENTS)
            )
        },
    );
    let m = agent.metrics();
    assert_eq!(
        lost(&m, &closes),
        lost(&before, &closes),
        "a close was lost: {}",
        m.describe(EVENTS_LOST)
    );
}

fn wait_for_set(what: &str, before: &BTreeSet<u64>, current: impl Fn() -> BTreeSet<u64>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = current();
        if now == *before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} after the agent exited differ from before it started: \
             added {:?}, removed {:?}",
            now.difference(before).collect::<Vec<_>>(),
            before.difference(&now).collect::<Vec<_>>()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn prog_ids() -> BTreeSet<u64> {
    bpf::ids("prog").into_keys().collect()
}

fn link_ids() -> BTreeSet<u64> {
    bpf::ids("link").into_keys().collect()
}

#[test]
fn shutdown_detaches_every_program() {
    let _serial = serial();
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let progs_before = bpf::ids("prog");
        let links_before = link_ids();
        let maps_before: BTreeSet<u64> = bpf::ids("map").into_keys().collect();
        let pins_before = bpf::pins();

        let agent = Agent::start(&[]);
        assert_eq!(agent.get("/healthz").status, 200);
        assert_eq!(agent.get("/readyz").status, 200);
        let ours: Vec<String> = bpf::ids("prog")
            .into_iter()
            .filter(|(id, _)| !progs_before.contains_key(id))
            .map(|(id, name)| format!("{id}:{name}"))
            .collect();
        assert!(
            !ours.is_empty(),
            "the ready agent has no BPF program loaded"
        );
        let maps_ours: BTreeSet<u64> = bpf::ids("map")
            .into_keys()
            .filter(|id| !maps_before.contains(id))
            .collect();

        let exited = agent.stop_with(signal);
        assert!(
            exited.status.is_some_and(|s| s.success()),
            "signal {signal}: the agent ended with {:?}\n{}",
            exited.status,
            exited.stderr
        );
        let progs_before: BTreeSet<u64> = progs_before.into_keys().collect();
        wait_for_set(
            &format!("BPF programs (agent had {ours:?})"),
            &progs_before,
            prog_ids,
        );
        wait_for_set("BPF links", &links_before, link_ids);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left: Vec<u64> = bpf::ids("map")
                .into_keys()
                .filter(|id| maps_ours.contains(id))
                .collect();
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the agent's maps {left:?} outlive it"
            );
            thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(bpf::pins(), pins_before, "bpffs pins changed");
    }
}

const TLS_SKIPPED: &str = "meshtap_tls_payload_skipped_events_total";

/// A real TLS connection (python's ssl over plain sockets, both ends in one process, every raw
/// send and recv counted): its bytes are exact, and after each end's first data event (the
/// ClientHello, written by one, read by the other) the kernel copies no payload: exactly one
/// skipped event per further syscall of either end. The counter is node-wide; nothing else
/// on a test machine speaks TLS.
#[test]
fn tls_connections_are_counted_without_copying_their_payload() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let before = agent.value(TLS_SKIPPED, &[]);
    let comm = "mt-tls-pair";
    let done = Script::new("tls_pair.py", comm)
        .named()
        .opt("--rounds", 200)
        .opt("--request", 300)
        .opt("--response", 5000)
        .run(RUN);
    let (client, server) = (&done["client"], &done["server"]);
    let calls = |end: &Value| num(end, "send_calls") + num(end, "recv_calls");
    assert!(calls(client) >= 400 && calls(server) >= 400, "{done}");
    let port = num(server, "port") as u16;
    assert_bytes(&agent, (comm, comm, port), client, server);
    let skipped = (calls(client) - 1 + calls(server) - 1) as f64;
    agent.wait_for(TLS_SKIPPED, &[], before + skipped, SETTLE);
}

/// Every program the agent loads (attach list of agent/src/ebpf/mod.rs, and the TLS uprobes of
/// agent/src/ebpf/tls.rs, loaded when TLS plaintext is on: the default).
const PROGRAMS: [&str; 31] = [
    "data_continue",
    "go_tls_handshake_enter",
    "go_tls_read_enter",
    "go_tls_return",
    "go_tls_write_enter",
    "inet_sock_set_state",
    "inet_sock_set_state_backup",
    "sched_process_exit",
    "sys_enter_connect",
    "sys_exit_accept",
    "sys_exit_connect",
    "sys_exit_read",
    "sys_exit_readv",
    "sys_exit_recvfrom",
    "sys_exit_recvmsg",
    "sys_exit_sendfile64",
    "sys_exit_sendmsg",
    "sys_exit_sendto",
    "sys_exit_write",
    "sys_exit_writev",
    "tcp_retransmit_skb",
    "tcp_retransmit_skb_backup",
    "tls_continue",
    "tls_free_enter",
    "tls_handshake_enter",
    "tls_read_enter",
    "tls_read_ex_enter",
    "tls_return",
    "tls_write_enter",
    "tls_write_ex2_enter",
    "tls_write_ex_enter",
];

const PROGRAM_MISSES: &str = "meshtap_ebpf_program_misses_total";
const PROGRAM_RUNS: &str = "meshtap_ebpf_program_runs_total";
const PROGRAM_RUN_SECONDS: &str = "meshtap_ebpf_program_run_seconds_total";

/// The programs named in the series of `metric`, sorted.
fn programs_in(m: &Metrics, metric: &str) -> Vec<String> {
    let mut names: Vec<String> = m
        .matching(metric, &[])
        .filter_map(|s| s.labels.get("program").cloned())
        .collect();
    names.sort();
    names
}

/// The kernel's own counters of each program: skipped runs always, runs and run time with
/// `--ebpf-stats`. The programs run for every process on the node, so their runs are at least
/// the test's own syscalls (2,000 round trips; the scripts count their `send` and `recv`
/// calls), not exactly those. Without `--ebpf-stats` (and the sysctl off) the same traffic
/// leaves them at 0.
#[test]
fn program_costs_are_exported() {
    let _serial = serial();
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .expect("read kernel.bpf_stats_enabled");
    let expected: Vec<String> = {
        let mut v: Vec<String> = PROGRAMS.iter().map(|p| p.to_string()).collect();
        v.sort();
        v
    };
    for stats in [true, false] {
        let flag = if stats { "true" } else { "false" };
        let agent = Agent::start(&["--ebpf-stats", flag]);
        let (cli, srv) = ("mt-cli-progstat", "mt-srv-progstat");
        let (_, client, server) = round_trips(cli, srv, || ());
        // Python's send and recv are the sendto and recvfrom syscalls.
        let calls = |key: &str| (num(&client, key) + num(&server, key)) as f64;
        let ours = [
            ("sys_exit_sendto", calls("send_calls")),
            ("sys_exit_recvfrom", calls("recv_calls")),
        ];
        assert!(ours.iter().all(|(_, n)| *n >= 4000.0), "{ours:?}");
        // The counters are read once a second.
        let m = agent.wait_until(
            Duration::from_secs(10),
            |m| {
                programs_in(m, PROGRAM_RUN_SECONDS).len() == PROGRAMS.len()
                    && (!stats
                        || ours
                            .iter()
                            .all(|(p, n)| m.value(PROGRAM_RUNS, &[("program", p)]) >= *n))
            },
            |m| {
                format!(
                    "program counters after the round trips:\n{}\n{}",
                    m.describe(PROGRAM_RUNS),
                    m.describe(PROGRAM_RUN_SECONDS)
                )
            },
        );
        for metric in [PROGRAM_MISSES, PROGRAM_RUNS, PROGRAM_RUN_SECONDS] {
            assert_eq!(programs_in(&m, metric), expected, "{metric}");
        }
        for (call, calls) in ours {
            let runs = m.value(PROGRAM_RUNS, &[("program", call)]);
            let seconds = m.value(PROGRAM_RUN_SECONDS, &[("program", call)]);
            if stats {
                assert!(runs >= calls, "{call}: {runs} runs, expected >= {calls}");
                // Some 100 ns to a few us a run.
                assert!(
                    seconds > runs * 1e-8 && seconds < runs * 1e-4,
                    "{call}: {seconds} s over {runs} runs"
                );
            } else if sysctl.trim() == "0" {
                assert_eq!((runs, seconds), (0.0, 0.0), "{call} without --ebpf-stats");
            }
        }
    }
}

/// UDP datagrams and Unix stream traffic go through the same syscalls as TCP data; the agent
/// counts none of it. The same process then makes one TCP connection (to itself), counted
/// exactly: one connection per end and its bytes, nothing more under its name.
#[test]
fn udp_and_unix_socket_traffic_is_not_counted() {
    let _serial = serial();
    let comm = "mt-othersocks";
    let agent = Agent::start(&[]);
    let done = Script::new("other_sockets.py", comm)
        .named()
        .opt("--rounds", 200)
        .opt("--size", 700)
        .opt("--tcp-bytes", 12_345)
        .run(RUN);
    // 200 rounds of three datagrams and of four Unix writes, 700 bytes each.
    assert_eq!(num(&done, "udp_sent"), 3 * 200 * 700);
    assert_eq!(num(&done, "unix_received"), 4 * 200 * 700);
    let port = u16::try_from(num(&done, "port")).expect("port fits u16");
    let client = serde_json::json!({
        "sent": num(&done, "client_sent"),
        "received": num(&done, "client_received"),
    });
    let server = serde_json::json!({
        "sent": num(&done, "server_sent"),
        "received": num(&done, "server_received"),
    });
    assert_eq!(num(&client, "sent"), 12_345);
    // One connection, both ends, and nothing else opened under this name (assert_connections
    // checks the totals by client name); its bytes are the TCP bytes only.
    assert_connections(&agent, comm, comm, port, 1);
    assert_bytes(&agent, (comm, comm, port), &client, &server);
}

#[test]
fn promtool_accepts_the_exposition() {
    let _serial = serial();
    let net = Net::Loopback;
    let agent = Agent::start(&[]);
    // Traffic first, so that every family (counters, gauge, histogram) has series.
    let (cli, srv) = ("mt-cli-promtool", "mt-srv-promtool");
    let mut server = net
        .server(srv)
        .opt("--mode", "transfer")
        .opt("--download", 100)
        .spawn();
    let port = listening_port(&mut server);
    net.client(cli, port)
        .opt("--mode", "transfer")
        .opt("--upload", 100)
        .run(RUN);
    server.finish(RUN);
    net.client(cli, free_port())
        .opt("--mode", "refused")
        .run(RUN);
    agent.wait_for(FAILED, &[("client", cli)], 1.0, SETTLE);
    agent.wait_for(CLOSED, &[("client", cli)], 2.0, SETTLE);

    let body = agent.metrics_text();
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run promtool: {e} (apt-get install prometheus)"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics ({}):\n{report}\n--- exposition ---\n{body}",
        out.status
    );
}

#[test]
fn invalid_configuration_is_rejected() {
    let _serial = serial();
    let timeout = Duration::from_secs(30);
    let mut problems = Vec::new();
    let mut check = |case: &str, args: &[&str], needle: &str, one_line: bool| {
        let exited = Agent::run_to_exit(args, timeout);
        let lines = exited.stderr_lines();
        let ok = match exited.status {
            None => false,
            Some(s) => !s.success(),
        } && exited.stderr.contains(needle)
            && (!one_line || lines.len() == 1);
        if !ok {
            problems.push(format!(
                "{case}: want a non-zero exit and {} naming {needle:?}; got {} and:\n{}",
                if one_line { "one line" } else { "a message" },
                exited.status.map_or_else(
                    || format!("still running after {timeout:?}"),
                    |s| s.to_string()
                ),
                exited.stderr
            ));
        }
    };

    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    check(
        "--listen on a port in use",
        &["--listen", &addr],
        &addr,
        true,
    );
    check(
        "--capture-bytes 999999",
        &["--capture-bytes", "999999"],
        "--capture-bytes",
        true,
    );

    let dir = std::env::temp_dir().join(format!("meshtap-test-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create config dir");
    struct RemoveDir(std::path::PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = RemoveDir(dir.clone());
    for (case, text, needle) in [
        (
            "unknown key",
            "capture_bytes = 512\nbogus_key = 1\n",
            "bogus_key",
        ),
        (
            "value of the wrong type",
            "capture_bytes = \"lots\"\n",
            "capture_bytes",
        ),
        (
            "ring buffer not a power of two",
            "ring_buffer_bytes = 5000\n",
            "ring_buffer_bytes",
        ),
    ] {
        // A neutral file name: the message must name the key, not merely echo the path.
        let path = dir.join("agent.toml");
        std::fs::write(&path, text).expect("write config");
        let path = path.to_string_lossy().into_owned();
        check(
            &format!("config file, {case}"),
            &["--config", &path],
            needle,
            false,
        );
    }
    drop(taken);
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}
