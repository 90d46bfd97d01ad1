//! Traces across nodes without trace headers: three "nodes" on this machine (network
//! namespaces joined by veth pairs and routing), one agent per node scoped to it (`--netns`),
//! the agents told of each other (`--peer`, over https: `--tls-cert`, `--peer-ca`; node 1's
//! agent with a self-signed certificate pinned in `--peer-ca`, the others' signed by a CA in
//! it) and requiring a token (`--token-file`).
//!
//! client (node 1) -> frontend (node 2) -> backend (node 3), `trace_service.py` and
//! `trace_client.py`, no trace header anywhere: each request must be one trace of four spans,
//! the client's CLIENT span, the frontend's SERVER and CLIENT spans and the backend's SERVER
//! span, each the child of the one before, exported to one collector by the three agents.
//! Then a virtual IP in front of the backend (DNAT on the frontend's node, as kube-proxy does
//! for a ClusterIP); the backend's agent stopped; an agent with a wrong token; the frontend's
//! agent stopped. Then the same three nodes with `--peers-from-kubernetes` instead of `--peer`:
//! the agents find each other through the (fake) Kubernetes API.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    process::Command,
};

use meshtap_tests::{
    Agent, NetNs, TempDir,
    kube::KubeApi,
    netns::ip,
    process::{RUN, STARTUP, Script, ScriptChild, port_of, run_command},
    serial,
    spans::{by_trace, describe, id, one, parent},
    traces::agent_args,
    zipkin::Collector,
};
use serde_json::{Value, json};

const N1_12: Ipv4Addr = Ipv4Addr::new(10, 211, 12, 1);
const N2_12: Ipv4Addr = Ipv4Addr::new(10, 211, 12, 2);
const N2_23: Ipv4Addr = Ipv4Addr::new(10, 211, 23, 2);
const N3_23: Ipv4Addr = Ipv4Addr::new(10, 211, 23, 3);
/// The backend's virtual address (a ClusterIP): DNAT to the backend on node 2.
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);

/// Three network namespaces: 1 and 2 on one link, 2 and 3 on another, 2 routing between them.
struct Nodes {
    ns: [NetNs; 3],
}

impl Nodes {
    fn build() -> Self {
        let pid = std::process::id() % 100_000;
        let ns = [1, 2, 3].map(|i| NetNs::create(&format!("mtx{pid}-{i}")));
        for (a, b, ifa, ifb, addr_a, addr_b) in [
            (&ns[0], &ns[1], "mtx12a", "mtx12b", N1_12, N2_12),
            (&ns[1], &ns[2], "mtx23a", "mtx23b", N2_23, N3_23),
        ] {
            let _ = Command::new("ip").args(["link", "del", ifa]).output();
            ip(&[
                "link",
                "add",
                ifa,
                "netns",
                a.name(),
                "type",
                "veth",
                "peer",
                "name",
                ifb,
                "netns",
                b.name(),
            ]);
            a.ip(&["addr", "add", &format!("{addr_a}/24"), "dev", ifa]);
            b.ip(&["addr", "add", &format!("{addr_b}/24"), "dev", ifb]);
            a.ip(&["link", "set", ifa, "up"]);
            b.ip(&["link", "set", ifb, "up"]);
        }
        ns[0].ip(&["route", "add", "10.211.23.0/24", "via", &N2_12.to_string()]);
        ns[2].ip(&["route", "add", "10.211.12.0/24", "via", &N2_23.to_string()]);
        let out = run_command(
            ns[1]
                .command("sysctl")
                .args(["-q", "-w", "net.ipv4.ip_forward=1"]),
            RUN,
        );
        assert!(out.status.success(), "ip_forward: {}", out.stderr);
        Nodes { ns }
    }

    fn path(&self, i: usize) -> String {
        format!("/run/netns/{}", self.ns[i].name())
    }
}

/// The agents' common settings: the token file, their certificates, the CA file they check
/// each other with, and the peer of each node's addresses.
struct Setup {
    dir: TempDir,
    /// Each agent's certificate and key: node 1's self-signed (`openssl req -x509`, a CA
    /// certificate, trusted by being in `--peer-ca` as it is), nodes 2 and 3's signed by a CA
    /// (as cert-manager issues them: trusted by chaining to the CA in `--peer-ca`).
    certs: [(String, String); 3],
    /// `--peer-ca`: node 1's certificate and the CA.
    peer_ca: String,
    token: String,
    wrong_token: String,
    /// Each node's agent address, fixed before they start (each names the others).
    listen: [String; 3],
    collector: Collector,
}

fn openssl(args: &[&str]) {
    let out = run_command(Command::new("openssl").args(args), RUN);
    assert!(out.status.success(), "openssl {args:?}: {}", out.stderr);
}

/// A new P-256 key and self-signed certificate for 127.0.0.1 (`openssl req -x509`'s
/// defaults: a CA certificate).
fn self_signed(dir: &TempDir, name: &str) -> (String, String) {
    let (cert, key) = (
        dir.file(&format!("{name}.crt")),
        dir.file(&format!("{name}.key")),
    );
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        &format!("/CN={name}"),
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-keyout",
        &key,
        "-out",
        &cert,
    ]);
    (cert, key)
}

/// A server certificate for 127.0.0.1 signed by the CA `ca`.
fn signed_by(dir: &TempDir, ca: &(String, String), name: &str) -> (String, String) {
    let (cert, key, csr) = (
        dir.file(&format!("{name}.crt")),
        dir.file(&format!("{name}.key")),
        dir.file(&format!("{name}.csr")),
    );
    let ext = dir.file(&format!("{name}.ext"));
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1\n",
    )
    .expect("extensions");
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca.0,
        "-CAkey",
        &ca.1,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    (cert, key)
}

impl Setup {
    fn new() -> Self {
        let dir = TempDir::new("cross-node");
        let token = dir.file("token");
        std::fs::write(&token, "s3cret-token-for-the-agents\n").expect("token");
        let ca = self_signed(&dir, "meshtap-ca");
        let certs = [
            self_signed(&dir, "agent-1"),
            signed_by(&dir, &ca, "agent-2"),
            signed_by(&dir, &ca, "agent-3"),
        ];
        let peer_ca = dir.file("peer-ca.pem");
        let pem = [&certs[0].0, &ca.0]
            .map(|f| std::fs::read_to_string(f).expect("certificate"))
            .concat();
        std::fs::write(&peer_ca, pem).expect("peer CA file");
        let wrong_token = dir.file("wrong-token");
        std::fs::write(&wrong_token, "not-the-token\n").expect("token");
        let listen = [0, 1, 2].map(|_| format!("127.0.0.1:{}", meshtap_tests::free_port()));
        Setup {
            dir,
            certs,
            peer_ca,
            token,
            wrong_token,
            listen,
            collector: Collector::start("xn-coll", &[]),
        }
    }

    /// The agent of node `i` (0-based), with `token` as its token file.
    fn agent(&self, nodes: &Nodes, i: usize, token: &str) -> Agent {
        let peers = [
            format!("{N1_12}/32=https://{}", self.listen[0]),
            format!("{N2_12}/32=https://{}", self.listen[1]),
            format!("{N2_23}/32=https://{}", self.listen[1]),
            format!("{N3_23}/32=https://{}", self.listen[2]),
        ];
        let netns = nodes.path(i);
        let mut args = agent_args(
            &self.collector.endpoint(),
            &[
                ("--listen", &self.listen[i]),
                ("--netns", &netns),
                ("--token-file", token),
                ("--tls-cert", &self.certs[i].0),
                ("--tls-key", &self.certs[i].1),
                ("--peer-ca", &self.peer_ca),
            ],
        );
        for p in &peers {
            args.push("--peer".into());
            args.push(p.clone());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = &self.dir;
        Agent::start(&refs)
    }
}

/// A `trace_service.py` in node `node`, named `name`, calling `backend` for each request.
fn service(
    nodes: &Nodes,
    node: usize,
    name: &str,
    bind: Ipv4Addr,
    backend: Option<String>,
) -> (ScriptChild, u16) {
    let mut script = Script::new("trace_service.py", &format!("{name}-p"))
        .in_netns(&nodes.ns[node])
        .env("OTEL_SERVICE_NAME", name)
        .opt("--bind", bind);
    if let Some(b) = backend {
        script = script.opt("--backend", b);
    }
    let mut child = script.spawn();
    let port = port_of(&child.expect_event("listening", STARTUP));
    (child, port)
}

/// `count` requests from node 1 to the frontend at `frontend_port`, half on one keep-alive
/// connection, half on a connection each.
fn run_client(nodes: &Nodes, name: &str, frontend_port: u16, count: usize) {
    let done = Script::new("trace_client.py", &format!("{name}-p"))
        .in_netns(&nodes.ns[0])
        .env("OTEL_SERVICE_NAME", name)
        .opt("--host", N2_12)
        .opt("--port", frontend_port)
        .opt("--count", count)
        .opt("--connection", "mixed")
        .run(RUN);
    let requests = done["requests"].as_array().expect("requests");
    assert_eq!(requests.len(), count, "client: {done}");
    assert!(
        requests.iter().all(|r| r["status"] == 200),
        "client: {done}"
    );
}

/// A client, a frontend and a backend, named after `tag`; the frontend calls `via` (the
/// backend's address) or the backend directly. Runs `count` requests; returns the names.
fn chain(nodes: &Nodes, tag: &str, count: usize, via: Option<SocketAddrV4>) -> [String; 3] {
    let names = [
        format!("{tag}-client"),
        format!("{tag}-front"),
        format!("{tag}-back"),
    ];
    let (backend, backend_port) = service(nodes, 2, &names[2], N3_23, None);
    let target = match via {
        Some(vip) => {
            dnat(&nodes.ns[1], vip, SocketAddrV4::new(N3_23, backend_port));
            vip.to_string()
        }
        None => format!("{N3_23}:{backend_port}"),
    };
    let (frontend, frontend_port) = service(nodes, 1, &names[1], N2_12, Some(target));
    run_client(nodes, &names[0], frontend_port, count);
    for child in [frontend, backend] {
        child.kill();
    }
    names
}

/// Connections node `ns` opens to `from` go to `to` (kube-proxy's DNAT of a ClusterIP). The
/// virtual address needs a route before the DNAT (a node's default route gives it one).
fn dnat(ns: &NetNs, from: SocketAddrV4, to: SocketAddrV4) {
    ns.ip(&[
        "route",
        "add",
        &format!("{}/32", from.ip()),
        "dev",
        "mtx23a",
    ]);
    let out = run_command(
        ns.command("iptables").args([
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            &from.ip().to_string(),
            "--dport",
            &from.port().to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &to.to_string(),
        ]),
        RUN,
    );
    assert!(
        out.status.success(),
        "iptables: {}{}",
        out.stdout,
        out.stderr
    );
}

/// The agents' cross-node metrics, for a failure's message.
fn link_metrics(agents: &[&Agent]) -> String {
    let mut out = String::new();
    for (i, a) in agents.iter().enumerate() {
        for line in a.metrics_text().lines() {
            if !line.starts_with('#') && (line.contains("_peer_") || line.contains("linked")) {
                out.push_str(&format!("agent {}: {line}\n", i + 1));
            }
        }
    }
    out
}

/// Every request one trace of four spans, each the child of the one before.
fn assert_linked_chains(spans: &[Value], names: &[String; 3], count: usize, agents: &[&Agent]) {
    let traces = by_trace(spans);
    assert_eq!(
        traces.len(),
        count,
        "one trace per request:\n{}\n{}",
        describe(spans),
        link_metrics(agents)
    );
    for spans in traces.values() {
        assert_eq!(spans.len(), 4, "four spans:\n{}", describe(spans));
        let client = one(spans, &names[0], "CLIENT");
        let front = one(spans, &names[1], "SERVER");
        let call = one(spans, &names[1], "CLIENT");
        let back = one(spans, &names[2], "SERVER");
        assert_eq!(parent(client), None, "{}", describe(spans));
        assert_eq!(parent(front), Some(id(client)), "{}", describe(spans));
        assert_eq!(parent(call), Some(id(front)), "{}", describe(spans));
        assert_eq!(parent(back), Some(id(call)), "{}", describe(spans));
    }
}

fn names_of(names: &[String; 3]) -> [&str; 3] {
    [&names[0], &names[1], &names[2]].map(String::as_str)
}

const LINKED: &str = "meshtap_spans_linked_remote_total";
const UNLINKED: &str = "meshtap_spans_unlinked_total";
const PEER_REQUESTS: &str = "meshtap_peer_requests_total";

#[test]
fn traces_cross_three_nodes_through_their_agents() {
    let _serial = serial();
    let nodes = Nodes::build();
    let setup = Setup::new();
    let a1 = setup.agent(&nodes, 0, &setup.token);
    let a2 = setup.agent(&nodes, 1, &setup.token);
    let a3 = setup.agent(&nodes, 2, &setup.token);
    let c = &setup.collector;

    // 1. Keep-alive and new connections: every request one trace across the three nodes.
    let n = 20;
    let names = chain(&nodes, "xn", n, None);
    let spans = c.wait_spans(&names_of(&names), 4 * n);
    assert_linked_chains(&spans, &names, n, &[&a1, &a2, &a3]);
    assert_eq!(
        a2.value(LINKED, &[]),
        n as f64,
        "frontend SERVER spans linked to node 1"
    );
    assert_eq!(
        a3.value(LINKED, &[]),
        n as f64,
        "backend SERVER spans linked to node 2"
    );
    for a in [&a1, &a2, &a3] {
        assert_eq!(
            a.value(UNLINKED, &[]),
            0.0,
            "{}",
            a.metrics().describe(UNLINKED)
        );
    }

    // 2. Through a virtual IP in front of the backend (DNAT on node 2, like a ClusterIP).
    let n = 10;
    let names = chain(&nodes, "xnvip", n, Some(VIP));
    let spans = c.wait_spans(&names_of(&names), 4 * n);
    assert_linked_chains(&spans, &names, n, &[&a1, &a2, &a3]);
    assert_eq!(a3.value(LINKED, &[]), 30.0);

    // 3. The backend's agent stopped: the other spans are still linked, nothing blocks.
    drop(a3);
    let n = 10;
    let names = chain(&nodes, "xnnob", n, None);
    let spans = c.wait_spans(&names_of(&names), 3 * n);
    let traces = by_trace(&spans);
    assert_eq!(traces.len(), n, "{}", describe(&spans));
    for spans in traces.values() {
        let client = one(spans, &names[0], "CLIENT");
        let front = one(spans, &names[1], "SERVER");
        let call = one(spans, &names[1], "CLIENT");
        assert_eq!(parent(front), Some(id(client)), "{}", describe(spans));
        assert_eq!(parent(call), Some(id(front)), "{}", describe(spans));
    }
    assert_eq!(a2.value(LINKED, &[]), 40.0);

    // 4. An agent with a wrong token: refused (401) and counted on both sides, its SERVER
    // spans roots, counted.
    let a3 = setup.agent(&nodes, 2, &setup.wrong_token);
    let n = 10;
    let names = chain(&nodes, "xntok", n, None);
    let spans = c.wait_spans(&names_of(&names), 4 * n);
    let backend: Vec<&Value> = spans
        .iter()
        .filter(|s| meshtap_tests::spans::service(s) == names[2])
        .collect();
    assert!(
        backend.iter().all(|s| parent(s).is_none()),
        "no context given for a wrong token:\n{}",
        describe(&spans)
    );
    let refused = a3.value(PEER_REQUESTS, &[("outcome", "unauthorized")]);
    assert!(refused > 0.0, "{}", a3.metrics().describe(PEER_REQUESTS));
    assert_eq!(a3.value(PEER_REQUESTS, &[("outcome", "ok")]), 0.0);
    assert_eq!(
        a2.value("meshtap_endpoint_unauthorized_total", &[]),
        refused,
        "every refused lookup counted by the agent that refused it"
    );
    assert_eq!(a3.value(UNLINKED, &[("reason", "remote")]), n as f64);
    assert_eq!(a3.value(LINKED, &[]), 0.0);
    drop(a3);

    // 5. The frontend's agent stopped: the backend's SERVER spans wait their time, then are
    // roots, counted; the failed lookups are counted.
    let a3 = setup.agent(&nodes, 2, &setup.token);
    drop(a2);
    let n = 10;
    let names = chain(&nodes, "xnnof", n, None);
    let spans = c.wait_spans(&[names[0].as_str(), names[2].as_str()], 2 * n);
    assert!(
        spans.iter().all(|s| parent(s).is_none()),
        "{}",
        describe(&spans)
    );
    assert_eq!(a3.value(UNLINKED, &[("reason", "remote")]), n as f64);
    assert!(
        a3.value(PEER_REQUESTS, &[("outcome", "connect")]) > 0.0,
        "{}",
        a3.metrics().describe(PEER_REQUESTS)
    );
    drop(a1);
}

/// A pod of the fake API: `name` on `node` with the addresses `ips`, running; with the labels of
/// meshtap's agent pods when `agent`.
fn pod(name: &str, node: &str, ips: &[&str], agent: bool) -> Value {
    let labels = if agent {
        json!({"app.kubernetes.io/name": "meshtap", "app.kubernetes.io/component": "agent"})
    } else {
        json!({"app": name})
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "xk", "uid": format!("uid-{name}"), "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "example/main:1"}]},
        "status": {
            "phase": "Running",
            "podIP": ips[0],
            "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
        },
    })
}

/// `--peers-from-kubernetes` instead of `--peer`: the agents find each other through the API,
/// pod IP -> its node -> the meshtap agent pod of that node, asked on their own `--listen`
/// port. The three agents listen on 127.0.0.11, .12 and .13 (one port), their pods' addresses
/// in the fake API; the client, frontend and backend are pods of the nodes 1, 2 and 3.
#[test]
fn the_agents_find_each_other_through_kubernetes() {
    let _serial = serial();
    let nodes = Nodes::build();
    let api = KubeApi::start(&[]);
    let node = |i: usize| format!("xk-node-{}", i + 1);
    let agent_ip = |i: usize| format!("127.0.0.{}", 11 + i);
    let mut items = vec![
        pod("xk-client", &node(0), &[&N1_12.to_string()], false),
        pod(
            "xk-front",
            &node(1),
            &[&N2_12.to_string(), &N2_23.to_string()],
            false,
        ),
        pod("xk-back", &node(2), &[&N3_23.to_string()], false),
    ];
    for i in 0..3 {
        items.push(pod(
            &format!("meshtap-{}", i + 1),
            &node(i),
            &[&agent_ip(i)],
            true,
        ));
    }
    let n_pods = items.len();
    api.apply(&json!({"apiVersion": "v1", "kind": "List", "items": items}));

    let dir = TempDir::new("cross-node-kube");
    let token = dir.file("token");
    std::fs::write(&token, "s3cret-token-for-the-agents\n").expect("token");
    let collector = Collector::start("xk-coll", &[]);
    let port = meshtap_tests::free_port();
    let url = api.url();
    let agents: Vec<Agent> = (0..3)
        .map(|i| {
            let args = agent_args(
                &collector.endpoint(),
                &[
                    ("--listen", &format!("{}:{port}", agent_ip(i))),
                    ("--netns", &nodes.path(i)),
                    ("--token-file", &token),
                    ("--kube-api-url", &url),
                    ("--node-name", &node(i)),
                    ("--kube-retry-max-seconds", "1"),
                    ("--peers-from-kubernetes", "true"),
                ],
            );
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            Agent::start(&refs)
        })
        .collect();
    // Every agent knows the pods added above (and the fixtures' own) before the traffic.
    for a in &agents {
        a.wait_until(
            RUN,
            |m| {
                m.matching("meshtap_kubernetes_objects", &[]).any(|s| {
                    s.labels.get("resource").is_some_and(|r| r.contains("pod"))
                        && s.value >= n_pods as f64
                })
            },
            |m| m.describe("meshtap_kubernetes_objects"),
        );
    }

    let n = 20;
    let names = chain(&nodes, "xk", n, None);
    let spans = collector.wait_spans(&names_of(&names), 4 * n);
    let refs: Vec<&Agent> = agents.iter().collect();
    assert_linked_chains(&spans, &names, n, &refs);
    assert_eq!(agents[1].value(LINKED, &[]), n as f64);
    assert_eq!(agents[2].value(LINKED, &[]), n as f64);
    for a in &agents {
        assert_eq!(
            a.value(UNLINKED, &[]),
            0.0,
            "{}",
            a.metrics().describe(UNLINKED)
        );
    }
    // Each asked the agent of the client's node, found by its pod's address, over http.
    for (asker, asked) in [(1, 0), (2, 1)] {
        let peer = format!("http://{}:{port}", agent_ip(asked));
        assert!(
            agents[asker].value(PEER_REQUESTS, &[("peer", &peer), ("outcome", "ok")]) > 0.0,
            "{}",
            agents[asker].metrics().describe(PEER_REQUESTS)
        );
    }
}
