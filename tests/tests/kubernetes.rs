//! Kubernetes metadata, end to end: processes placed in cgroups shaped like the ones kubelet
//! (systemd driver, containerd) makes, in network namespaces with the pods' IPs, and a fake API
//! server (`kube_api.py`) serving recorded list and watch responses for those pods
//! (`tests/fixtures/kube/`). The agent is pointed at it with `--kube-api-url`; metrics and spans
//! must carry the pods', namespaces' and workloads' names.
//!
//! The cluster of the fixtures (`tests/fixtures/kube/cluster/`):
//! - node-a (this node): `api-7d9f8b6c5d-x2x9k` (Deployment api through ReplicaSet
//!   api-7d9f8b6c5d, 10.244.1.12, serves on 8080), `web-0` (StatefulSet web, 10.244.1.20),
//!   `fluent-bit-8hx2m` (DaemonSet fluent-bit, namespace logging), `report-29395680-q7x5z` (Job
//!   report-29395680 of CronJob report), `debug` (a bare pod), all in namespace shop unless
//!   said otherwise;
//! - node-b: `payments-6c9d7b5f4-mz8vq` (Deployment payments, namespace payments, 10.244.2.7),
//!   coredns, and `kube-proxy-7xk9p` (a host-network pod: its pod IP is node-b's own address
//!   172.18.0.4): only in the cluster-wide pod list;
//! - Services: `catalog` (ClusterIP 10.96.12.34:80, no pod behind it in the fixtures), `api`
//!   (10.96.40.10:80 -> the api pods' 8080), kubernetes, kube-dns.
//!
//! The network: one bridge in a namespace of its own (the node's pod network); every pod, and
//! every stand-in for something that is not on this node, is a namespace with a veth on it and
//! its addresses in 10.0.0.0/8 (on-link: ARP reaches every other host on the bridge). Nothing
//! routes out of those namespaces. A ClusterIP is DNAT in the client's namespace, as kube-proxy
//! does; a pod of another node is an address whose packets a namespace DNATs to a server the
//! agent cannot tie to that address, as a packet to another node looks from this one.
//!
//! Every process of a test has an executable name of its own (a copy of the Python interpreter
//! named `<something>-bin`) and no `OTEL_SERVICE_NAME`: its service name is its workload's
//! when the agent knows its pod, its executable's otherwise, and checks on either are exact.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use meshtap_tests::metrics::{GRAPH_REQUESTS, HTTP_CLIENT_DURATION, HTTP_SERVER_DURATION, count};
use meshtap_tests::netns::ip;
use meshtap_tests::process::{python, run_command};
use meshtap_tests::{
    Agent, Metrics, NetNs, Script, ScriptChild, TempDir, http, serial, workspace_root,
};
use serde_json::{Value, json};

/// How long one test program may run.
const RUN: Duration = Duration::from_secs(60);
/// How long a program may take to report that it listens.
const STARTUP: Duration = Duration::from_secs(10);
/// How long the agent may take to turn traffic into metrics.
const SETTLE: Duration = Duration::from_secs(20);
/// How long the agent may take to list (or relist) the API, retries included.
const SYNC: Duration = Duration::from_secs(30);
/// How long spans may take to reach the collector.
const EXPORT: Duration = Duration::from_secs(40);
/// After the expected values held: long enough for a late duplicate to show (a service-graph
/// half whose partner never comes is counted alone after 2 s).
const QUIET: Duration = Duration::from_secs(4);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);

const NODE: &str = "node-a";
const OBJECTS: &str = "meshtap_kubernetes_objects";
const API_ERRORS: &str = "meshtap_kubernetes_api_errors_total";
const REJECTED: &str = "meshtap_kubernetes_cache_rejected_total";
/// The watched resources, as the self-metrics label them.
const RESOURCES: [&str; 4] = ["node_pods", "pods", "services", "replicasets"];
/// What the agent's ClusterRole allows it: get, list and watch on these. Nothing else.
const RBAC_RESOURCES: [&str; 5] = [
    "pods",
    "replicasets",
    "services",
    "endpointslices",
    "namespaces",
];

// ---------------------------------------------------------------------------------------------
// Fixtures

fn fixtures() -> PathBuf {
    workspace_root().join("tests/fixtures/kube")
}

/// Every object of the JSON files (Lists or single objects) of a fixture directory.
fn read_objects(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for f in files {
        let doc: Value = serde_json::from_slice(
            &fs::read(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display())),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if doc["kind"] == "List" {
            objects.extend(doc["items"].as_array().expect("items").iter().cloned());
        } else {
            objects.push(doc);
        }
    }
    objects
}

fn change_file(name: &str) -> Value {
    let path = fixtures().join("changes").join(format!("{name}.json"));
    serde_json::from_slice(&fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What a test needs of a recorded pod.
#[derive(Clone, Debug)]
struct PodFixture {
    name: String,
    namespace: String,
    uid: String,
    container_id: String,
    ip: Ipv4Addr,
    qos: String,
    object: Value,
}

impl PodFixture {
    fn from(object: &Value) -> Self {
        let s = |v: &Value| {
            v.as_str()
                .unwrap_or_else(|| panic!("{v} in {object}"))
                .to_owned()
        };
        let id = s(&object["status"]["containerStatuses"][0]["containerID"]);
        Self {
            name: s(&object["metadata"]["name"]),
            namespace: s(&object["metadata"]["namespace"]),
            uid: s(&object["metadata"]["uid"]),
            container_id: id
                .strip_prefix("containerd://")
                .unwrap_or_else(|| panic!("containerd id {id}"))
                .to_owned(),
            ip: s(&object["status"]["podIP"]).parse().expect("podIP"),
            qos: s(&object["status"]["qosClass"]).to_lowercase(),
            object: object.clone(),
        }
    }
}

/// The recorded cluster (`fixtures/kube/cluster`).
struct Cluster {
    objects: Vec<Value>,
}

impl Cluster {
    fn load() -> Self {
        Self {
            objects: read_objects(&fixtures().join("cluster")),
        }
    }

    fn of_kind(&self, kind: &str) -> impl Iterator<Item = &Value> {
        self.objects.iter().filter(move |o| o["kind"] == kind)
    }

    fn pod(&self, name: &str) -> PodFixture {
        PodFixture::from(
            self.of_kind("Pod")
                .find(|p| p["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("no pod {name} in the fixtures")),
        )
    }

    /// What `meshtap_kubernetes_objects` shows once the agent has listed this cluster.
    fn expected_objects(&self) -> Vec<(&'static str, f64)> {
        let pods = self.of_kind("Pod").count();
        let node = self
            .of_kind("Pod")
            .filter(|p| p["spec"]["nodeName"] == NODE)
            .count();
        vec![
            ("node_pods", node as f64),
            ("pods", pods as f64),
            ("services", self.of_kind("Service").count() as f64),
            ("replicasets", self.of_kind("ReplicaSet").count() as f64),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// Cgroups shaped like kubelet's

/// The cgroup v2 hierarchy: the first `cgroup2` mount of /proc/self/mountinfo (a hybrid host
/// mounts it at /sys/fs/cgroup/unified, a unified one at /sys/fs/cgroup).
fn cgroup2_root() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next() != Some("cgroup2") {
                return None;
            }
            left.split_whitespace().nth(4).map(PathBuf::from)
        })
        .expect("no cgroup2 mount in /proc/self/mountinfo: these tests need cgroup v2")
}

/// Cgroup directories made for the test's containers; on drop every process still in one is
/// moved to the root cgroup and the directories are removed, deepest first.
struct Cgroups {
    root: PathBuf,
    created: Vec<PathBuf>,
}

impl Cgroups {
    fn new() -> Self {
        Self {
            root: cgroup2_root(),
            created: Vec::new(),
        }
    }

    /// The container's cgroup as kubelet's systemd cgroup driver and containerd make it:
    /// `<root>/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice/
    /// cri-containerd-<id>.scope` (Guaranteed pods sit right under kubepods.slice), with the
    /// dashes of the pod uid turned into underscores, as systemd slices name them.
    fn container(&mut self, pod: &PodFixture) -> PathBuf {
        let uid = pod.uid.replace('-', "_");
        let mut dir = self.root.join("kubepods.slice");
        let pod_slice = if pod.qos == "guaranteed" {
            format!("kubepods-pod{uid}.slice")
        } else {
            dir = dir.join(format!("kubepods-{}.slice", pod.qos));
            format!("kubepods-{}-pod{uid}.slice", pod.qos)
        };
        let dir = dir
            .join(pod_slice)
            .join(format!("cri-containerd-{}.scope", pod.container_id));
        self.make(&dir);
        dir
    }

    /// The same with kubelet's cgroupfs driver: `<root>/kubepods/<qos>/pod<uid>/<id>`
    /// (Guaranteed: `<root>/kubepods/pod<uid>/<id>`).
    fn container_cgroupfs(&mut self, pod: &PodFixture) -> PathBuf {
        let mut dir = self.root.join("kubepods");
        if pod.qos != "guaranteed" {
            dir = dir.join(&pod.qos);
        }
        let dir = dir.join(format!("pod{}", pod.uid)).join(&pod.container_id);
        self.make(&dir);
        dir
    }

    fn make(&mut self, dir: &Path) {
        let mut missing = Vec::new();
        let mut d = dir.to_path_buf();
        while !d.exists() {
            missing.push(d.clone());
            d = d.parent().expect("below the cgroup root").to_path_buf();
        }
        for d in missing.into_iter().rev() {
            fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
            self.created.push(d);
        }
    }

    /// Empties `dir` (its processes go to the root cgroup) and removes it, as the runtime does
    /// when a container is gone.
    fn remove(&mut self, dir: &Path) {
        self.evacuate(dir);
        if let Err(e) = fs::remove_dir(dir) {
            panic!("rmdir {}: {e}", dir.display());
        }
        self.created.retain(|d| d != dir);
    }

    fn evacuate(&self, dir: &Path) {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            let _ = fs::write(self.root.join("cgroup.procs"), pid);
        }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            self.evacuate(dir);
            if let Err(e) = fs::remove_dir(dir) {
                eprintln!("cleanup: rmdir {}: {e}", dir.display());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The pod network

/// One bridge, in a namespace of its own, with every host of the test on it.
struct Fabric {
    bridge: NetNs,
    next: u32,
}

/// A network namespace on the [`Fabric`]: `eth0` with its addresses (prefix /8, so every other
/// 10.x address is on-link, and so is 172.16.0.0/12).
struct Sandbox {
    ns: NetNs,
}

impl Fabric {
    fn new() -> Self {
        let bridge = NetNs::create(&format!("mtk-{}-node", std::process::id()));
        bridge.ip(&["link", "add", "br0", "type", "bridge"]);
        bridge.ip(&["link", "set", "br0", "up"]);
        Self { bridge, next: 0 }
    }

    fn host(&mut self, what: &str, addrs: &[Ipv4Addr]) -> Sandbox {
        self.next += 1;
        let ns = NetNs::create(&format!("mtk-{}-{what}", std::process::id()));
        let port = format!("mtkv{}", self.next);
        ip(&[
            "link",
            "add",
            &port,
            "netns",
            self.bridge.name(),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]);
        self.bridge
            .ip(&["link", "set", &port, "master", "br0", "up"]);
        for a in addrs {
            ns.ip(&["addr", "add", &format!("{a}/8"), "dev", "eth0"]);
        }
        ns.ip(&["link", "set", "eth0", "up"]);
        // The nodes' own addresses (172.18.0.0/16 in the fixtures) are on the bridge too.
        ns.ip(&["route", "add", "172.16.0.0/12", "dev", "eth0"]);
        Sandbox { ns }
    }
}

impl Sandbox {
    fn iptables(&self, args: &[&str]) {
        let out = run_command(self.ns.command("iptables").args(args), RUN);
        assert!(
            out.status.success(),
            "iptables {} in {}: {}{}",
            args.join(" "),
            self.ns.name(),
            out.stdout,
            out.stderr
        );
    }

    /// Connections this namespace opens to `from` go to `to` (kube-proxy's DNAT of a ClusterIP).
    fn dnat_outgoing(&self, from: SocketAddrV4, to: SocketAddrV4) {
        self.dnat("OUTPUT", from, to);
    }

    /// Connections that arrive for `from` go to `to`.
    fn dnat_incoming(&self, from: SocketAddrV4, to: SocketAddrV4) {
        self.dnat("PREROUTING", from, to);
    }

    /// Connections arriving for `to` appear to come from `source`.
    fn snat_incoming(&self, to: SocketAddrV4, source: Ipv4Addr) {
        self.iptables(&[
            "-t",
            "nat",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "-d",
            &to.ip().to_string(),
            "--dport",
            &to.port().to_string(),
            "-j",
            "SNAT",
            "--to-source",
            &source.to_string(),
        ]);
    }

    fn dnat(&self, chain: &str, from: SocketAddrV4, to: SocketAddrV4) {
        self.iptables(&[
            "-t",
            "nat",
            "-A",
            chain,
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
        ]);
    }
}

// ---------------------------------------------------------------------------------------------
// The fake API server

/// `kube_api.py`, serving the recorded cluster.
struct KubeApi {
    _child: ScriptChild,
    port: u16,
    control_port: u16,
}

impl KubeApi {
    fn start(extra: &[&str]) -> Self {
        let mut script = Script::new("kube_api.py", "mt-kube-api")
            .opt("--fixtures", fixtures().join("cluster").display())
            .opt("--bookmark-seconds", 1);
        for a in extra {
            script = script.arg(a);
        }
        let mut child = script.spawn();
        let v = child.expect_event("listening", STARTUP);
        let port = |k: &str| u16::try_from(v[k].as_u64().expect(k)).expect("port");
        Self {
            port: port("port"),
            control_port: port("control_port"),
            _child: child,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn control(&self, method: &str, path: &str, body: &Value) -> Value {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.control_port));
        let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to the fake API's control port: {e}"));
        s.set_read_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
        let body = serde_json::to_vec(body).expect("json");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .and_then(|()| s.write_all(&body))
        .unwrap_or_else(|e| panic!("{method} {path} to the fake API: {e}"));
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .unwrap_or_else(|e| panic!("{method} {path} to the fake API: {e}"));
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
        assert!(
            head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
            "{method} {path} to the fake API: {head}\n{body}"
        );
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body}"))
    }

    /// Adds or changes objects (a List, or one object).
    fn apply(&self, objects: &Value) {
        self.control("POST", "/apply", objects);
    }

    fn delete_pod(&self, namespace: &str, name: &str, graceful: bool) {
        self.control(
            "POST",
            "/delete",
            &json!({"resource": "pods", "namespace": namespace, "name": name, "graceful": graceful}),
        );
    }

    /// Closes the listener and every connection: the API is unreachable until [`Self::serve`].
    fn stop(&self) {
        assert_eq!(
            self.control("POST", "/stop", &json!({})),
            json!({"stopped": true})
        );
    }

    /// Serves again on the same port; `compact`: every resourceVersion handed out so far is
    /// too old (watches resuming from one get 410 Gone and must relist).
    fn serve(&self, compact: bool) {
        let out = self.control("POST", "/start", &json!({ "compact": compact }));
        assert_eq!(out["started"], true, "{out}");
        assert_eq!(out["port"], self.port, "{out}");
    }

    /// The API requests received so far.
    fn requests(&self) -> Vec<Value> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.control_port));
        let r = http::get(addr, "/requests?since=0", HTTP_TIMEOUT).expect("GET /requests");
        serde_json::from_slice::<Vec<Value>>(&r.body).expect("requests JSON")
    }
}

/// Every request the agent made is a GET (list, watch or get) of a resource its ClusterRole
/// allows, and its pods of this node are asked for with the node's field selector.
fn assert_least_privilege(api: &KubeApi) {
    let requests = api.requests();
    assert!(!requests.is_empty(), "the agent made no API request");
    let bad: Vec<&Value> = requests
        .iter()
        .filter(|r| {
            r["method"] != "GET"
                || !["list", "watch", "get"].contains(&r["verb"].as_str().unwrap_or_default())
                || !RBAC_RESOURCES.contains(&r["resource"].as_str().unwrap_or_default())
        })
        .collect();
    assert!(
        bad.is_empty(),
        "requests outside get/list/watch on {RBAC_RESOURCES:?}: {bad:#?}"
    );
    let selector = format!("spec.nodeName={NODE}");
    for verb in ["list", "watch"] {
        assert!(
            requests.iter().any(|r| r["resource"] == "pods"
                && r["verb"] == verb
                && r["query"]["fieldSelector"] == selector.as_str()),
            "no {verb} of pods with fieldSelector {selector}: {requests:#?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The collector

fn spec_path() -> String {
    if let Ok(p) = std::env::var("MESHTAP_ZIPKIN_SPEC") {
        return p;
    }
    let path = workspace_root().join("../shared/spec/zipkin2-api.yaml");
    assert!(path.is_file(), "no Zipkin spec at {}", path.display());
    path.to_string_lossy().into_owned()
}

/// `zipkin_collector.py --strict`, every span it accepts appended to a file.
struct Collector {
    _child: ScriptChild,
    port: u16,
    out: String,
    _dir: TempDir,
}

impl Collector {
    fn start() -> Self {
        let dir = TempDir::new("k8s-collector");
        let out = dir.file("spans.jsonl");
        let mut child = Script::new("trace_collector.py", "mtk-collector")
            .opt("--out", &out)
            .opt("--spec", spec_path())
            .arg("--strict")
            .spawn();
        let v = child.expect_event("listening", STARTUP);
        Self {
            port: u16::try_from(v["port"].as_u64().expect("port")).expect("port"),
            _child: child,
            out,
            _dir: dir,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/api/v2/spans", self.port)
    }

    fn spans(&self) -> Vec<Value> {
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("collector line {l}: {e}")))
            .collect()
    }

    /// Waits until exactly `n` spans of `services` arrived (panics on more, or on a timeout),
    /// then waits [`QUIET`] and checks that nothing was added.
    fn wait_spans(&self, agent: &Agent, services: &[&str], n: usize) -> Vec<Value> {
        let of = || -> Vec<Value> {
            self.spans()
                .into_iter()
                .filter(|s| services.contains(&service(s)))
                .collect()
        };
        let deadline = Instant::now() + EXPORT;
        loop {
            let got = of();
            assert!(
                got.len() <= n,
                "the collector got {} spans of {services:?}, expected {n}:\n{}",
                got.len(),
                describe_spans(&got)
            );
            if got.len() == n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the collector got {} spans of {services:?} within {EXPORT:?}, expected {n}:\n{}\n\
                 the agent's trace store has {} of them; its span counters:\n{}",
                got.len(),
                describe_spans(&got),
                stored_spans(agent, services),
                span_counters(agent)
            );
            thread::sleep(POLL);
        }
        thread::sleep(QUIET);
        let got = of();
        assert_eq!(
            got.len(),
            n,
            "spans of {services:?} kept arriving:\n{}",
            describe_spans(&got)
        );
        got
    }
}

/// How many spans of `services` the agent's own trace store holds.
fn stored_spans(agent: &Agent, services: &[&str]) -> usize {
    let mut n = 0;
    for svc in services {
        let r = agent.get(&format!("/api/v2/traces?serviceName={svc}&limit=100000"));
        let traces: Vec<Vec<Value>> = serde_json::from_slice(&r.body).unwrap_or_default();
        n += traces
            .iter()
            .flatten()
            .filter(|s| service(s) == *svc)
            .count();
    }
    n
}

/// The agent's span self-metrics, for failure reports.
fn span_counters(agent: &Agent) -> String {
    let m = agent.metrics();
    [
        "meshtap_spans_exported_total",
        "meshtap_spans_dropped_total",
        "meshtap_spans_pending",
        "meshtap_spans_unlinked",
        "meshtap_spans_not_sampled_total",
        "meshtap_trace_store_spans",
        "meshtap_events_lost_total",
    ]
    .iter()
    .map(|n| m.describe(n))
    .collect::<Vec<_>>()
    .join("\n")
}

fn service(span: &Value) -> &str {
    span["localEndpoint"]["serviceName"]
        .as_str()
        .unwrap_or_default()
}

fn remote_service(span: &Value) -> &str {
    span["remoteEndpoint"]["serviceName"]
        .as_str()
        .unwrap_or_default()
}

fn kind(span: &Value) -> &str {
    span["kind"].as_str().unwrap_or_default()
}

fn describe_spans(spans: &[Value]) -> String {
    let mut lines: Vec<String> = spans
        .iter()
        .map(|s| {
            format!(
                "  {} {} {} -> {:?} tags={}",
                s["id"],
                kind(s),
                service(s),
                s["remoteEndpoint"]["serviceName"],
                s["tags"]
            )
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

/// Every span of `spans` of `(service, kind)` carries exactly `tags` (k8s.* tags: those listed
/// and no other) and names `remote` as its remote service; returns how many there are.
fn assert_span_names(
    spans: &[Value],
    svc: &str,
    k: &str,
    tags: &[(&str, &str)],
    remote: &str,
) -> usize {
    let mine: Vec<&Value> = spans
        .iter()
        .filter(|s| service(s) == svc && kind(s) == k)
        .collect();
    for s in &mine {
        let k8s: BTreeMap<&str, &str> = s["tags"]
            .as_object()
            .map(|t| {
                t.iter()
                    .filter(|(key, _)| key.starts_with("k8s."))
                    .map(|(key, v)| (key.as_str(), v.as_str().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let want: BTreeMap<&str, &str> = tags.iter().copied().collect();
        assert_eq!(
            k8s,
            want,
            "k8s tags of a {k} span of {svc}: {s}\nall:\n{}",
            describe_spans(spans)
        );
        assert_eq!(
            remote_service(s),
            remote,
            "remote service of a {k} span of {svc}: {s}"
        );
    }
    mine.len()
}

/// The SERVER spans of `server` called by `client` are the children of `client`'s CLIENT
/// spans (same trace, parentId = the CLIENT span's id): one trace per request. Returns how many.
fn assert_linked(spans: &[Value], client: &str, server: &str) -> usize {
    let clients: BTreeMap<&str, &Value> = spans
        .iter()
        .filter(|s| service(s) == client && kind(s) == "CLIENT")
        .map(|s| (s["id"].as_str().unwrap_or_default(), s))
        .collect();
    let mut n = 0;
    for s in spans
        .iter()
        .filter(|s| service(s) == server && kind(s) == "SERVER" && remote_service(s) == client)
    {
        let parent = s["parentId"].as_str().and_then(|p| clients.get(p));
        assert!(
            parent.is_some_and(|c| c["traceId"] == s["traceId"]),
            "a SERVER span of {server} is not the child of a CLIENT span of {client}: {s}\nall:\n{}",
            describe_spans(spans)
        );
        n += 1;
    }
    n
}

// ---------------------------------------------------------------------------------------------
// Test programs

/// Copies of the Python interpreter under names of the test's choosing: a process's executable
/// name is its service name when the agent knows nothing better.
struct Bins {
    dir: TempDir,
}

impl Bins {
    fn new() -> Self {
        Self {
            dir: TempDir::new("k8s-bin"),
        }
    }

    fn python(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if !path.exists() {
            let real = fs::canonicalize(python()).expect("resolve the Python interpreter");
            fs::copy(&real, &path)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", real.display(), path.display()));
        }
        path
    }
}

/// Where a program runs: a namespace, a container's cgroup (if any), an executable name.
struct Place<'a> {
    host: &'a Sandbox,
    cgroup: Option<&'a Path>,
    exe: PathBuf,
}

fn place<'a>(host: &'a Sandbox, cgroup: Option<&'a Path>, exe: PathBuf) -> Place<'a> {
    Place { host, cgroup, exe }
}

impl Place<'_> {
    fn script(&self, file: &'static str, comm: &str) -> Script {
        let mut s = Script::new(file, comm)
            .in_netns(&self.host.ns)
            .interpreter(&self.exe);
        if let Some(cg) = self.cgroup {
            s = s.in_cgroup(cg);
        }
        s
    }
}

/// `trace_service.py`.
struct Server {
    child: ScriptChild,
    exe: String,
}

impl Server {
    /// Serves on `bind`:`port` (pods bind 0.0.0.0).
    fn start(place: &Place<'_>, comm: &str, bind: Ipv4Addr, port: u16) -> Self {
        let mut child = place
            .script("trace_service.py", comm)
            .opt("--bind", bind)
            .opt("--port", port)
            .spawn();
        let v = child.expect_event("listening", STARTUP);
        Self {
            exe: v["exe"].as_str().expect("exe").to_owned(),
            child,
        }
    }

    /// Stops the server; returns how many requests it served.
    fn finish(mut self) -> usize {
        self.child.send_line("stop");
        let done = self.child.finish(RUN);
        done["requests"].as_array().expect("requests").len()
    }
}

/// Runs `trace_client.py` to completion: `n` GETs to `dest` (half on one keep-alive connection,
/// half on connections of their own); asserts every one got a 200.
fn requests(place: &Place<'_>, comm: &str, dest: SocketAddrV4, n: usize) {
    let done = place
        .script("trace_client.py", comm)
        .opt("--host", dest.ip())
        .opt("--port", dest.port())
        .opt("--count", n)
        .opt("--connection", "mixed")
        .run(RUN);
    let statuses: Vec<&Value> = done["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .map(|r| &r["status"])
        .collect();
    assert_eq!(statuses.len(), n, "{done}");
    assert!(statuses.iter().all(|s| **s == 200), "{done}");
}

// ---------------------------------------------------------------------------------------------
// The agent and its metrics

fn start_agent(api: &KubeApi, collector: Option<&Collector>) -> Agent {
    let url = api.url();
    let mut args = vec![
        "--kube-api-url",
        url.as_str(),
        "--node-name",
        NODE,
        "--kube-retry-max-seconds",
        "1",
        "--trace-store-spans",
        "200000",
    ];
    let endpoint = collector.map(Collector::endpoint);
    if let Some(e) = &endpoint {
        args.extend([
            "--zipkin-endpoint",
            e.as_str(),
            "--zipkin-flush-ms",
            "200",
            "--zipkin-queue-spans",
            "200000",
        ]);
    }
    Agent::start(&args)
}

/// Waits until the agent's caches hold `expected` objects per resource.
fn wait_synced(agent: &Agent, expected: &[(&str, f64)]) -> Metrics {
    agent.wait_until(
        SYNC,
        |m| {
            expected
                .iter()
                .all(|(r, n)| m.value(OBJECTS, &[("resource", r)]) == *n)
        },
        |m| {
            format!(
                "the agent's caches never held {expected:?}:\n{}\n{}\nlog:\n{}",
                m.describe(OBJECTS),
                m.describe(API_ERRORS),
                agent.log()
            )
        },
    )
}

/// `expected` with the counts of some resources moved by the given amounts.
fn adjust(expected: &[(&'static str, f64)], by: &[(&str, f64)]) -> Vec<(&'static str, f64)> {
    expected
        .iter()
        .map(|(r, n)| {
            let d: f64 = by.iter().filter(|(b, _)| b == r).map(|(_, d)| d).sum();
            (*r, n + d)
        })
        .collect()
}

fn api_errors(m: &Metrics) -> f64 {
    m.value(API_ERRORS, &[])
}

/// Owned label pairs, borrowed for the queries.
struct L(Vec<(String, String)>);

impl L {
    fn new(pairs: &[(&str, &str)]) -> Self {
        Self(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn with(mut self, k: &str, v: &str) -> Self {
        self.0.push((k.to_owned(), v.to_owned()));
        self
    }

    fn pairs(&self) -> Vec<(&str, &str)> {
        self.0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

/// One expected value.
struct Expect {
    name: String,
    labels: L,
    value: f64,
}

fn expect(name: impl Into<String>, labels: L, value: usize) -> Expect {
    Expect {
        name: name.into(),
        labels,
        value: value as f64,
    }
}

fn mismatches(m: &Metrics, checks: &[Expect]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| m.value(&c.name, &c.labels.pairs()) != c.value)
        .map(|c| {
            format!(
                "{}{:?} = {}, expected {}",
                c.name,
                c.labels.0,
                m.value(&c.name, &c.labels.pairs()),
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
    let problems = mismatches(m, checks);
    format!(
        "{} of {} checks fail:\n  {}\nseries:\n{}\n{}\n{}\n{}",
        problems.len(),
        checks.len(),
        problems.join("\n  "),
        series.join("\n"),
        m.describe(OBJECTS),
        m.describe(API_ERRORS),
        m.describe("meshtap_events_lost_total"),
    )
}

/// Waits until every check holds in one scrape, then checks again after [`QUIET`] (nothing is
/// counted late or twice).
fn assert_settled(agent: &Agent, checks: &[Expect]) -> Metrics {
    agent.wait_until(
        SETTLE,
        |m| mismatches(m, checks).is_empty(),
        |m| report(m, checks),
    );
    thread::sleep(QUIET);
    let m = agent.metrics();
    assert!(
        mismatches(&m, checks).is_empty(),
        "the values held, then changed: {}",
        report(&m, checks)
    );
    m
}

/// The series of `name` with `labels` carry no Kubernetes label at all.
fn assert_no_k8s_labels(m: &Metrics, name: &str, labels: &[(&str, &str)]) {
    let with: Vec<String> = m
        .matching(name, labels)
        .filter(|s| {
            s.labels.keys().any(|k| {
                k.starts_with("k8s_") || k == "client_namespace" || k == "server_namespace"
            })
        })
        .map(ToString::to_string)
        .collect();
    assert!(
        with.is_empty(),
        "series of {name}{labels:?} with Kubernetes labels:\n{}",
        with.join("\n")
    );
}

fn server_series(service: &str, pod: &PodFixture, workload: (&str, &str)) -> L {
    L::new(&[
        ("service_name", service),
        ("k8s_namespace_name", &pod.namespace),
        ("k8s_pod_name", &pod.name),
        workload,
    ])
}

fn client_series(service: &str, pod: &PodFixture, workload: (&str, &str), dest: SocketAddrV4) -> L {
    server_series(service, pod, workload)
        .with("server_address", &dest.ip().to_string())
        .with("server_port", &dest.port().to_string())
}

fn graph(client: &str, server: &str, client_ns: &str, server_ns: &str) -> L {
    L::new(&[
        ("client", client),
        ("server", server),
        ("client_namespace", client_ns),
        ("server_namespace", server_ns),
    ])
}

const TCP_OPENED: &str = "meshtap_tcp_connections_opened_total";

/// Connections `requests` opens for `n` requests (`--connection mixed`): one keep-alive
/// connection for the first half, one each for the rest.
fn mixed_connections(n: usize) -> usize {
    usize::from(n / 2 > 0) + n - n / 2
}

/// An L4 edge (`meshtap_tcp_*`) as `role` sees it, with the namespaces of its ends when given.
fn tcp_edge(
    (client, client_ns): (&str, Option<&str>),
    (server, server_ns): (&str, Option<&str>),
    port: u16,
    role: &str,
) -> L {
    let mut l = L::new(&[
        ("client", client),
        ("server", server),
        ("server_port", &port.to_string()),
        ("role", role),
    ]);
    if let Some(ns) = client_ns {
        l = l.with("client_namespace", ns);
    }
    if let Some(ns) = server_ns {
        l = l.with("server_namespace", ns);
    }
    l
}

/// `n` requests from the `web` StatefulSet pod to the `api` Deployment pod (both in `shop`, on
/// this node) through `dest`: the server series, the client series and the graph edge.
fn web_to_api(node: &Node, dest: SocketAddrV4, n: usize) -> Vec<Expect> {
    let (apod, web) = (node.api(), node.web());
    vec![
        expect(
            count(HTTP_SERVER_DURATION),
            server_series("api", &apod, ("k8s_deployment_name", "api")),
            n,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            client_series("web", &web, ("k8s_statefulset_name", "web"), dest),
            n,
        ),
        expect(GRAPH_REQUESTS, graph("web", "api", "shop", "shop"), n),
    ]
}

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

// ---------------------------------------------------------------------------------------------
// A node with the recorded pods

/// The pods of node-a that a test runs, in their namespaces and cgroups. Field order is drop
/// order: processes go first, then namespaces, then cgroups.
struct Node {
    api_server: Option<Server>,
    fabric: Fabric,
    api_host: Option<Sandbox>,
    web_host: Sandbox,
    cgroups: Cgroups,
    api_cg: Option<PathBuf>,
    web_cg: PathBuf,
    bins: Bins,
    cluster: Cluster,
}

/// The api pod's port.
const API_PORT: u16 = 8080;

/// How kubelet lays out the cgroups of containers.
#[derive(Clone, Copy)]
enum Driver {
    Systemd,
    Cgroupfs,
}

impl Node {
    /// web-0 and the api pod, the api server running; kubelet's systemd cgroup driver.
    fn new() -> Self {
        Self::with_driver(Driver::Systemd)
    }

    fn with_driver(driver: Driver) -> Self {
        let cluster = Cluster::load();
        let (api, web) = (cluster.pod("api-7d9f8b6c5d-x2x9k"), cluster.pod("web-0"));
        let mut fabric = Fabric::new();
        let mut cgroups = Cgroups::new();
        let api_host = fabric.host("api", &[api.ip]);
        let web_host = fabric.host("web", &[web.ip]);
        let (api_cg, web_cg) = match driver {
            Driver::Systemd => (cgroups.container(&api), cgroups.container(&web)),
            Driver::Cgroupfs => (
                cgroups.container_cgroupfs(&api),
                cgroups.container_cgroupfs(&web),
            ),
        };
        let bins = Bins::new();
        let api_server = Server::start(
            &Place {
                host: &api_host,
                cgroup: Some(&api_cg),
                exe: bins.python("api-bin"),
            },
            "mtk-api",
            Ipv4Addr::UNSPECIFIED,
            API_PORT,
        );
        assert_eq!(api_server.exe, "api-bin");
        Self {
            api_server: Some(api_server),
            fabric,
            api_host: Some(api_host),
            web_host,
            cgroups,
            api_cg: Some(api_cg),
            web_cg,
            bins,
            cluster,
        }
    }

    fn api(&self) -> PodFixture {
        self.cluster.pod("api-7d9f8b6c5d-x2x9k")
    }

    fn web(&self) -> PodFixture {
        self.cluster.pod("web-0")
    }

    fn api_addr(&self) -> SocketAddrV4 {
        addr(self.api().ip, API_PORT)
    }

    /// web-0's client (executable web-bin).
    fn web_place(&self) -> Place<'_> {
        Place {
            host: &self.web_host,
            cgroup: Some(&self.web_cg),
            exe: self.bins.python("web-bin"),
        }
    }

    /// `n` requests from web-0 to `dest`.
    fn web_requests(&self, dest: SocketAddrV4, n: usize) {
        requests(&self.web_place(), "mtk-web", dest, n);
    }
}

/// A pod of node-b, as this node sees it: its address is in a namespace that DNATs every
/// connection to it to another address of the namespace, where a process in no pod's cgroup
/// serves, bound to that address only, and SNATs it so that the server sees another client
/// address. The agent sees that server, but nothing ties it to the pod's address or to the
/// client: from here the pod is remote, as a pod of another node is.
struct RemotePod {
    server: Server,
    _host: Sandbox,
}

impl RemotePod {
    /// The pod at `pod_ip`:`port`, served from `elsewhere`:`port` by a process whose executable
    /// is `exe`.
    fn start(node: &mut Node, pod_ip: Ipv4Addr, port: u16, elsewhere: Ipv4Addr, exe: &str) -> Self {
        let host = node.fabric.host(exe, &[pod_ip, elsewhere]);
        host.dnat_incoming(addr(pod_ip, port), addr(elsewhere, port));
        // And from the pod's address: the server sees neither the client's address nor the
        // one it connected to, so nothing on this node pairs the two ends (as with a server on
        // another node, whose half of the connection this node never observes).
        host.snat_incoming(addr(elsewhere, port), pod_ip);
        let server = Server::start(
            &place(&host, None, node.bins.python(exe)),
            &format!("mtk-{exe}"),
            elsewhere,
            port,
        );
        Self {
            server,
            _host: host,
        }
    }

    /// The payments pod of node-b.
    fn payments(node: &mut Node, pod: &PodFixture) -> Self {
        Self::start(
            node,
            pod.ip,
            8080,
            Ipv4Addr::new(10, 250, 0, 7),
            "node-b-bin",
        )
    }
}

// ---------------------------------------------------------------------------------------------
// 0. The fake API server itself

/// `kube_api.py` answers lists, watches, 410s and its control interface the way the checks of
/// `kube_api_check.py` expect of a kube-apiserver; the tests below rely on it.
#[test]
fn fake_api_server_answers_like_kube_apiserver() {
    let done = Script::new("kube_api_check.py", "mtk-api-check")
        .opt("--fixtures", fixtures().join("cluster").display())
        .run(RUN);
    assert!(
        done["checks"].as_u64().is_some_and(|n| n >= 90),
        "checks: {done}"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Pods of this node named by their workloads

const N: usize = 20;

/// Five pods of node-a call the api pod: metrics and spans carry each pod's namespace, pod
/// name and workload (Deployment through its ReplicaSet, StatefulSet, DaemonSet, CronJob
/// through its Job, none for a bare pod, whose service is its pod name); the service graph
/// uses workload names with both namespaces. The API serves pages of 2 objects (a real server
/// may return fewer items than the limit, with a continue token): the agent must follow them.
#[test]
fn pods_on_this_node_are_named_by_their_workloads() {
    let _serial = serial();
    let api = KubeApi::start(&["--max-page", "2"]);
    let collector = Collector::start();
    let mut node = Node::new();
    let cluster = Cluster::load();
    let (fluent, report_pod, debug) = (
        cluster.pod("fluent-bit-8hx2m"),
        cluster.pod("report-29395680-q7x5z"),
        cluster.pod("debug"),
    );
    let fluent_host = node.fabric.host("fluent", &[fluent.ip]);
    let report_host = node.fabric.host("report", &[report_pod.ip]);
    let debug_host = node.fabric.host("debug", &[debug.ip]);
    let fluent_cg = node.cgroups.container(&fluent);
    let report_cg = node.cgroups.container(&report_pod);
    let debug_cg = node.cgroups.container(&debug);

    let agent = start_agent(&api, Some(&collector));
    wait_synced(&agent, &cluster.expected_objects());

    let dest = node.api_addr();
    let counts = [("web", N), ("fluent-bit", 7), ("report", 5), ("debug", 3)];
    node.web_requests(dest, counts[0].1);
    for (host, cg, exe, comm, n) in [
        (
            &fluent_host,
            &fluent_cg,
            "fluent-bin",
            "mtk-fluent",
            counts[1].1,
        ),
        (
            &report_host,
            &report_cg,
            "report-bin",
            "mtk-report",
            counts[2].1,
        ),
        (
            &debug_host,
            &debug_cg,
            "debug-bin",
            "mtk-debug",
            counts[3].1,
        ),
    ] {
        requests(&place(host, Some(cg), node.bins.python(exe)), comm, dest, n);
    }
    let total: usize = counts.iter().map(|(_, n)| n).sum();

    let (apod, web) = (node.api(), node.web());
    let deployment = ("k8s_deployment_name", "api");
    let duration_server = count(HTTP_SERVER_DURATION);
    let duration_client = count(HTTP_CLIENT_DURATION);
    let checks = vec![
        expect(
            &duration_server,
            server_series("api", &apod, deployment),
            total,
        ),
        expect(
            &duration_client,
            client_series("web", &web, ("k8s_statefulset_name", "web"), dest),
            counts[0].1,
        ),
        expect(
            &duration_client,
            client_series(
                "fluent-bit",
                &fluent,
                ("k8s_daemonset_name", "fluent-bit"),
                dest,
            ),
            counts[1].1,
        ),
        expect(
            &duration_client,
            client_series("report", &report_pod, ("k8s_cronjob_name", "report"), dest),
            counts[2].1,
        ),
        expect(
            &duration_client,
            L::new(&[
                ("service_name", "debug"),
                ("k8s_namespace_name", "shop"),
                ("k8s_pod_name", "debug"),
            ]),
            counts[3].1,
        ),
        expect(
            GRAPH_REQUESTS,
            graph("web", "api", "shop", "shop"),
            counts[0].1,
        ),
        expect(
            GRAPH_REQUESTS,
            graph("fluent-bit", "api", "logging", "shop"),
            counts[1].1,
        ),
        expect(
            GRAPH_REQUESTS,
            graph("report", "api", "shop", "shop"),
            counts[2].1,
        ),
        expect(
            GRAPH_REQUESTS,
            graph("debug", "api", "shop", "shop"),
            counts[3].1,
        ),
        // Nothing under the executables' names: every exchange was attributed.
        expect(&duration_server, L::new(&[("service_name", "api-bin")]), 0),
        expect(GRAPH_REQUESTS, L::new(&[("server", "api-bin")]), 0),
        expect(GRAPH_REQUESTS, L::new(&[("client", "web-bin")]), 0),
        // L4 edges by workload and namespace, from both ends, not by command name or pod IP.
        expect(TCP_OPENED, L::new(&[("server", "mtk-api")]), 0),
        expect(TCP_OPENED, L::new(&[("server", &apod.ip.to_string())]), 0),
    ];
    let mut checks = checks;
    for (client, ns, n) in [
        ("web", "shop", counts[0].1),
        ("fluent-bit", "logging", counts[1].1),
        ("report", "shop", counts[2].1),
        ("debug", "shop", counts[3].1),
    ] {
        for role in ["client", "server"] {
            checks.push(expect(
                TCP_OPENED,
                tcp_edge((client, Some(ns)), ("api", Some("shop")), dest.port(), role),
                mixed_connections(n),
            ));
        }
    }
    let m = assert_settled(&agent, &checks);
    // A bare pod has no workload label; the api pod's series has exactly one workload label.
    for s in m.matching(&duration_client, &[("service_name", "debug")]) {
        let workload: Vec<&String> = s
            .labels
            .keys()
            .filter(|k| k.starts_with("k8s_") && k.ends_with("_name"))
            .filter(|k| *k != "k8s_namespace_name" && *k != "k8s_pod_name")
            .collect();
        assert!(workload.is_empty(), "bare pod with a workload label: {s}");
    }
    for s in m.matching(&duration_server, &[("service_name", "api")]) {
        for other in [
            "k8s_replicaset_name",
            "k8s_statefulset_name",
            "k8s_daemonset_name",
            "k8s_job_name",
            "k8s_cronjob_name",
        ] {
            assert!(
                !s.labels.contains_key(other),
                "api's series has {other}: {s}"
            );
        }
    }
    for r in RESOURCES {
        assert_eq!(
            m.value(API_ERRORS, &[("resource", r)]),
            0.0,
            "{r}: {}",
            m.describe(API_ERRORS)
        );
        assert_eq!(
            m.value(REJECTED, &[("resource", r)]),
            0.0,
            "{r}: {}",
            m.describe(REJECTED)
        );
    }

    // Spans: one CLIENT and one SERVER span per request, each with its pod's names.
    let services = ["web", "api", "fluent-bit", "report", "debug"];
    let spans = collector.wait_spans(&agent, &services, 2 * total);
    let ns_pod = |p: &PodFixture| {
        [
            ("k8s.namespace.name", p.namespace.clone()),
            ("k8s.pod.name", p.name.clone()),
        ]
    };
    let tags = |p: &PodFixture, extra: Option<(&'static str, &'static str)>| {
        let mut t: Vec<(&'static str, String)> = ns_pod(p).to_vec();
        if let Some((k, v)) = extra {
            t.push((k, v.to_owned()));
        }
        t
    };
    let cases = [
        (
            "web",
            web.clone(),
            Some(("k8s.statefulset.name", "web")),
            counts[0].1,
        ),
        (
            "fluent-bit",
            fluent.clone(),
            Some(("k8s.daemonset.name", "fluent-bit")),
            counts[1].1,
        ),
        (
            "report",
            report_pod.clone(),
            Some(("k8s.cronjob.name", "report")),
            counts[2].1,
        ),
        ("debug", debug.clone(), None, counts[3].1),
    ];
    let mut servers = 0;
    for (svc, pod, workload, n) in &cases {
        let t = tags(pod, *workload);
        let t: Vec<(&str, &str)> = t.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            assert_span_names(&spans, svc, "CLIENT", &t, "api"),
            *n,
            "CLIENT spans of {svc}:\n{}",
            describe_spans(&spans)
        );
        // The server's spans name this client as their remote service.
        let server_spans: Vec<Value> = spans
            .iter()
            .filter(|s| kind(s) == "SERVER" && remote_service(s) == *svc)
            .cloned()
            .collect();
        let t = tags(&apod, Some(("k8s.deployment.name", "api")));
        let t: Vec<(&str, &str)> = t.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let from_svc = assert_span_names(&server_spans, "api", "SERVER", &t, svc);
        assert_eq!(
            from_svc,
            *n,
            "SERVER spans of api from {svc}:\n{}",
            describe_spans(&spans)
        );
        servers += from_svc;
    }
    assert_eq!(servers, total, "SERVER spans:\n{}", describe_spans(&spans));
    for (svc, _, _, n) in &cases {
        assert_eq!(
            assert_linked(&spans, svc, "api"),
            *n,
            "linked spans of {svc}"
        );
    }

    assert_least_privilege(&api);
    // The agent followed the continue tokens of the short pages.
    assert!(
        api.requests()
            .iter()
            .any(|r| r["verb"] == "list" && r["query"]["continue"].is_string()),
        "the agent never asked for a second page"
    );
    assert_eq!(node.api_server.take().expect("server").finish(), total);
}

/// The same names when kubelet uses its cgroupfs driver (`/kubepods/<qos>/pod<uid>/<id>`).
#[test]
fn pods_are_named_with_the_cgroupfs_driver_too() {
    let _serial = serial();
    let api = KubeApi::start(&[]);
    let node = Node::with_driver(Driver::Cgroupfs);
    let cluster = Cluster::load();
    let agent = start_agent(&api, None);
    wait_synced(&agent, &cluster.expected_objects());
    let dest = node.api_addr();
    node.web_requests(dest, N);
    assert_settled(&agent, &web_to_api(&node, dest, N));
}

/// A client that made its requests and exited while the agent was stopped (SIGSTOP): when the
/// agent reads the events, /proc/<pid> is gone, and only the cgroup id the kernel recorded
/// (resolved under the cgroup v2 hierarchy) tells its container, hence its pod.
#[test]
fn a_process_gone_before_the_agent_looked_is_named_by_its_cgroup() {
    let _serial = serial();
    let api = KubeApi::start(&[]);
    let node = Node::new();
    let cluster = Cluster::load();
    let agent = start_agent(&api, None);
    wait_synced(&agent, &cluster.expected_objects());
    let dest = node.api_addr();
    agent.signal(libc::SIGSTOP);
    let resume = scopeguard(|| agent.signal(libc::SIGCONT));
    node.web_requests(dest, 10);
    drop(resume);
    let mut checks = web_to_api(&node, dest, 10);
    checks.push(expect(
        count(HTTP_CLIENT_DURATION),
        L::new(&[("service_name", "web-bin")]),
        0,
    ));
    assert_settled(&agent, &checks);
}

/// Runs `f` when dropped (also while a failing test unwinds).
fn scopeguard<F: FnMut()>(f: F) -> impl Drop {
    struct Guard<F: FnMut()>(F);
    impl<F: FnMut()> Drop for Guard<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    Guard(f)
}

// ---------------------------------------------------------------------------------------------
// 2. Peers that are not processes of this node

/// web-0 calls a pod of node-b (its address reaches a server that the agent cannot tie to it,
/// as from another node) and the ClusterIP of a Service with no pod on this node (DNAT, as
/// kube-proxy does): the client's metrics, spans and service-graph edges name the other pod's
/// workload and namespace, and the Service.
#[test]
fn remote_pods_and_cluster_ips_are_named() {
    let _serial = serial();
    let api = KubeApi::start(&[]);
    let collector = Collector::start();
    let mut node = Node::new();
    let cluster = Cluster::load();
    let payments = cluster.pod("payments-6c9d7b5f4-mz8vq");
    let payments_addr = addr(payments.ip, 8080);
    let catalog_ip: Ipv4Addr = "10.96.12.34".parse().expect("ip");
    let catalog_addr = addr(catalog_ip, 80);
    // node-b: the pod's address, DNAT to an address of no pod where a plain process serves.
    let remote = RemotePod::payments(&mut node, &payments);
    // kube-proxy of node-b: a host-network pod, whose "pod IP" is node-b's own address. It does
    // not own that address: what serves there is the node, not the pod.
    let proxy = cluster.pod("kube-proxy-7xk9p");
    assert_eq!(proxy.object["spec"]["hostNetwork"], true);
    let node_b_addr = addr(proxy.ip, 10256);
    let node_b = RemotePod::start(
        &mut node,
        proxy.ip,
        10256,
        Ipv4Addr::new(10, 250, 0, 8),
        "kubelet-bin",
    );
    // The catalog Service's backend: not a pod of the fixtures, not in a pod's cgroup.
    let backend_ip = Ipv4Addr::new(10, 250, 0, 12);
    let backend_host = node.fabric.host("catalog", &[backend_ip]);
    node.web_host
        .dnat_outgoing(catalog_addr, addr(backend_ip, 8080));
    // Seen from another address by the backend, like a backend on another node: this node
    // observes only the client's half. (A backend on this node, paired with its client, is
    // cluster_ip_to_a_pod_of_this_node_counts_each_request_once.)
    backend_host.snat_incoming(addr(backend_ip, 8080), backend_ip);
    let backend = Server::start(
        &Place {
            host: &backend_host,
            cgroup: None,
            exe: node.bins.python("catalog-bin"),
        },
        "mtk-catalog",
        Ipv4Addr::UNSPECIFIED,
        8080,
    );

    let agent = start_agent(&api, Some(&collector));
    wait_synced(&agent, &cluster.expected_objects());
    let (n_pay, n_cat, n_node) = (N, 11, 6);
    node.web_requests(payments_addr, n_pay);
    node.web_requests(catalog_addr, n_cat);
    node.web_requests(node_b_addr, n_node);

    let web = node.web();
    let sts = ("k8s_statefulset_name", "web");
    let client = count(HTTP_CLIENT_DURATION);
    let checks = vec![
        expect(
            &client,
            client_series("web", &web, sts, payments_addr),
            n_pay,
        ),
        expect(
            &client,
            client_series("web", &web, sts, catalog_addr),
            n_cat,
        ),
        expect(
            GRAPH_REQUESTS,
            graph("web", "payments", "shop", "payments"),
            n_pay,
        ),
        expect(
            GRAPH_REQUESTS,
            graph("web", "catalog", "shop", "shop"),
            n_cat,
        ),
        // Not the addresses, not the executables behind the DNAT.
        expect(
            GRAPH_REQUESTS,
            L::new(&[("client", "web"), ("server", &payments.ip.to_string())]),
            0,
        ),
        expect(
            GRAPH_REQUESTS,
            L::new(&[("client", "web"), ("server", "10.96.12.34")]),
            0,
        ),
        // The host-network pod does not name its node's address.
        expect(
            &client,
            client_series("web", &web, sts, node_b_addr),
            n_node,
        ),
        expect(
            GRAPH_REQUESTS,
            L::new(&[("client", "web"), ("server", &proxy.ip.to_string())]),
            n_node,
        ),
        expect(
            GRAPH_REQUESTS,
            L::new(&[("client", "web"), ("server", "kube-proxy")]),
            0,
        ),
        // L4 edges name the remote pod and the Service too; the node's address stays an address.
        expect(
            TCP_OPENED,
            tcp_edge(
                ("web", Some("shop")),
                ("payments", Some("payments")),
                payments_addr.port(),
                "client",
            ),
            mixed_connections(n_pay),
        ),
        expect(
            TCP_OPENED,
            tcp_edge(
                ("web", Some("shop")),
                ("catalog", Some("shop")),
                catalog_addr.port(),
                "client",
            ),
            mixed_connections(n_cat),
        ),
        expect(
            TCP_OPENED,
            tcp_edge(
                ("web", Some("shop")),
                (&proxy.ip.to_string(), None),
                node_b_addr.port(),
                "client",
            ),
            mixed_connections(n_node),
        ),
        expect(
            TCP_OPENED,
            L::new(&[("server", &payments.ip.to_string())]),
            0,
        ),
        expect(TCP_OPENED, L::new(&[("server", "10.96.12.34")]), 0),
    ];
    let m = assert_settled(&agent, &checks);
    let node_ip = proxy.ip.to_string();
    for series in m.matching(TCP_OPENED, &[("server", &node_ip)]) {
        assert!(
            !series.labels.contains_key("server_namespace"),
            "the node's address has a namespace: {series}"
        );
    }
    for series in m.matching(GRAPH_REQUESTS, &[("server", &node_ip)]) {
        assert!(
            !series.labels.contains_key("server_namespace"),
            "the node's address has a namespace: {series}"
        );
    }

    let spans = collector.wait_spans(&agent, &["web"], n_pay + n_cat + n_node);
    let tags = [
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "web-0"),
        ("k8s.statefulset.name", "web"),
    ];
    let to = |remote: &str| -> Vec<Value> {
        spans
            .iter()
            .filter(|s| remote_service(s) == remote)
            .cloned()
            .collect()
    };
    assert_eq!(
        assert_span_names(&to("payments"), "web", "CLIENT", &tags, "payments"),
        n_pay,
        "{}",
        describe_spans(&spans)
    );
    assert_eq!(
        assert_span_names(&to("catalog"), "web", "CLIENT", &tags, "catalog"),
        n_cat,
        "{}",
        describe_spans(&spans)
    );
    let to_node: Vec<&Value> = spans
        .iter()
        .filter(|s| s["remoteEndpoint"]["ipv4"] == proxy.ip.to_string().as_str())
        .collect();
    assert_eq!(to_node.len(), n_node, "{}", describe_spans(&spans));
    for s in to_node {
        assert_ne!(remote_service(s), "kube-proxy", "{s}");
    }
    assert_eq!(remote.server.finish(), n_pay);
    assert_eq!(backend.finish(), n_cat);
    assert_eq!(node_b.server.finish(), n_node);
}

/// web-0 calls the api Service's ClusterIP, which kube-proxy's DNAT sends to the api pod on
/// this same node. Both ends are observed (the client towards 10.96.40.10:80, the server on
/// 10.244.1.12:8080): each request is still one request on the service graph and one trace
/// (the server's span the child of the client's), and the client's spans name the Service.
#[test]
fn cluster_ip_to_a_pod_of_this_node_counts_each_request_once() {
    let _serial = serial();
    let api = KubeApi::start(&[]);
    let collector = Collector::start();
    let node = Node::new();
    let cluster = Cluster::load();
    let service_addr = addr("10.96.40.10".parse().expect("ip"), 80);
    node.web_host.dnat_outgoing(service_addr, node.api_addr());

    let agent = start_agent(&api, Some(&collector));
    wait_synced(&agent, &cluster.expected_objects());
    node.web_requests(service_addr, N);

    let mut checks = web_to_api(&node, service_addr, N);
    checks.push(expect(GRAPH_REQUESTS, L::new(&[("client", "web")]), N));
    assert_settled(&agent, &checks);
    let spans = collector.wait_spans(&agent, &["web", "api"], 2 * N);
    let apod = node.api();
    let client_tags = [
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "web-0"),
        ("k8s.statefulset.name", "web"),
    ];
    assert_eq!(
        assert_span_names(&spans, "web", "CLIENT", &client_tags, "api"),
        N,
        "{}",
        describe_spans(&spans)
    );
    let server_tags = [
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", apod.name.as_str()),
        ("k8s.deployment.name", "api"),
    ];
    assert_eq!(
        assert_span_names(&spans, "api", "SERVER", &server_tags, "web"),
        N,
        "{}",
        describe_spans(&spans)
    );
    // One trace per request: the server's span is the child of the client's, across the DNAT.
    assert_eq!(assert_linked(&spans, "web", "api"), N);
}

// ---------------------------------------------------------------------------------------------
// 3. Recycled IPs

/// The pod of node-b that owns 10.244.2.7 is replaced by another workload's pod with the same
/// IP, in the order a real cluster may show it: the old pod terminating, the new pod running
/// with the IP, then the old pod's deletion. Traffic before goes to payments, traffic after to
/// fraud, exactly; the late deletion of the old pod does not unname the IP.
#[test]
fn a_recycled_remote_ip_names_the_new_pod() {
    let _serial = serial();
    let api = KubeApi::start(&[]);
    let collector = Collector::start();
    let mut node = Node::new();
    let cluster = Cluster::load();
    let payments = cluster.pod("payments-6c9d7b5f4-mz8vq");
    let remote_addr = addr(payments.ip, 8080);
    let remote = RemotePod::payments(&mut node, &payments);
    let agent = start_agent(&api, Some(&collector));
    let expected = cluster.expected_objects();
    wait_synced(&agent, &expected);

    let (n1, n2) = (N, 13);
    node.web_requests(remote_addr, n1);
    let web = node.web();
    let sts = ("k8s_statefulset_name", "web");
    let before = vec![
        expect(
            GRAPH_REQUESTS,
            graph("web", "payments", "shop", "payments"),
            n1,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            client_series("web", &web, sts, remote_addr),
            n1,
        ),
    ];
    assert_settled(&agent, &before);

    // As a real cluster may show it: payments is deleted (terminating, still Running), its
    // containers stop and the CNI frees its IP, fraud gets the IP and runs, then kubelet's
    // status update of payments (containers terminated, phase Succeeded, podIP still there)
    // and the deletion arrive.
    let mut terminating = payments.object.clone();
    terminating["metadata"]["deletionTimestamp"] = json!("2026-11-25T16:22:30Z");
    terminating["metadata"]["deletionGracePeriodSeconds"] = json!(30);
    api.apply(&terminating);
    api.apply(&change_file("fraud"));
    let with_fraud = adjust(&expected, &[("pods", 1.0), ("replicasets", 1.0)]);
    wait_synced(&agent, &with_fraud);
    let mut finished = terminating.clone();
    finished["status"]["phase"] = json!("Succeeded");
    let status = &mut finished["status"]["containerStatuses"][0];
    status["ready"] = json!(false);
    status["started"] = json!(false);
    status["state"] = json!({"terminated": {
        "containerID": status["containerID"].clone(),
        "exitCode": 0,
        "finishedAt": "2026-11-25T16:22:31Z",
        "reason": "Completed",
        "startedAt": "2026-11-20T09:14:07Z",
    }});
    api.apply(&finished);
    api.delete_pod(&payments.namespace, &payments.name, false);
    let after_delete = adjust(&expected, &[("replicasets", 1.0)]);
    wait_synced(&agent, &after_delete);

    node.web_requests(remote_addr, n2);
    let after = vec![
        expect(
            GRAPH_REQUESTS,
            graph("web", "payments", "shop", "payments"),
            n1,
        ),
        expect(
            GRAPH_REQUESTS,
            graph("web", "fraud", "shop", "payments"),
            n2,
        ),
        expect(
            count(HTTP_CLIENT_DURATION),
            client_series("web", &web, sts, remote_addr),
            n1 + n2,
        ),
        expect(
            GRAPH_REQUESTS,
            L::new(&[("client", "web"), ("server", &payments.ip.to_string())]),
            0,
        ),
        // The L4 edges too: the connections opened after the IP changed hands name fraud.
        expect(
            TCP_OPENED,
            tcp_edge(
                ("web", Some("shop")),
                ("payments", Some("payments")),
                remote_addr.port(),
                "client",
            ),
            mixed_connections(n1),
        ),
        expect(
            TCP_OPENED,
            tcp_edge(
                ("web", Some("shop")),
                ("fraud", Some("payments")),
                remote_addr.port(),
                "client",
            ),
            mixed_connections(n2),
        ),
    ];
    assert_settled(&agent, &after);
    let spans = collector.wait_spans(&agent, &["web"], n1 + n2);
    let tags = [
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "web-0"),
        ("k8s.statefulset.name", "web"),
    ];
    for (remote_name, n) in [("payments", n1), ("fraud", n2)] {
        let to: Vec<Value> = spans
            .iter()
            .filter(|s| remote_service(s) == remote_name)
            .cloned()
            .collect();
        assert_eq!(
            assert_span_names(&to, "web", "CLIENT", &tags, remote_name),
            n,
            "{}",
            describe_spans(&spans)
        );
    }
    assert_eq!(remote.server.finish(), n1 + n2);
}

/// The api pod of this node is deleted (gracefully: terminating, containers stopped, gone), its
/// container and sandbox go away, and a pod of another Deployment gets its IP and a new
/// container: the server's metrics and spans and web's edges name api before and search after.
#[test]
fn a_recycled_local_ip_names_the_new_pod() {
    let _serial = serial();
    let api = KubeApi::start(&[]);
    let collector = Collector::start();
    let mut node = Node::new();
    let cluster = Cluster::load();
    let agent = start_agent(&api, Some(&collector));
    let expected = cluster.expected_objects();
    wait_synced(&agent, &expected);
    let (apod, web) = (node.api(), node.web());
    let dest = node.api_addr();
    let (n1, n2) = (N, 9);
    node.web_requests(dest, n1);
    let deployment = ("k8s_deployment_name", "api");
    assert_settled(
        &agent,
        &[
            expect(
                count(HTTP_SERVER_DURATION),
                server_series("api", &apod, deployment),
                n1,
            ),
            expect(GRAPH_REQUESTS, graph("web", "api", "shop", "shop"), n1),
        ],
    );

    // kubelet stops the container, the runtime removes its cgroup and the sandbox, the API
    // deletes the pod.
    assert_eq!(node.api_server.take().expect("server").finish(), n1);
    let old_cg = node.api_cg.take().expect("cgroup");
    node.cgroups.remove(&old_cg);
    drop(node.api_host.take());
    api.delete_pod(&apod.namespace, &apod.name, true);
    let fewer = adjust(&expected, &[("pods", -1.0), ("node_pods", -1.0)]);
    wait_synced(&agent, &fewer);

    // The new pod: another Deployment, the same IP, a new container.
    let change = change_file("search");
    let search_obj = change["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|o| o["kind"] == "Pod")
        .expect("a pod")
        .clone();
    let search = PodFixture::from(&search_obj);
    assert_eq!(search.ip, apod.ip, "the fixture recycles the api pod's IP");
    let search_host = node.fabric.host("search", &[search.ip]);
    // The new sandbox has a new MAC address: web forgets the old one at once (a real node's
    // CNI or the new pod's first packets do that; here it would take the ARP cache's timeout).
    node.web_host.ns.ip(&["neigh", "flush", "all"]);
    let search_cg = node.cgroups.container(&search);
    api.apply(&change);
    let back = adjust(&expected, &[("replicasets", 1.0)]);
    wait_synced(&agent, &back);
    let search_server = Server::start(
        &Place {
            host: &search_host,
            cgroup: Some(&search_cg),
            exe: node.bins.python("search-bin"),
        },
        "mtk-search",
        Ipv4Addr::UNSPECIFIED,
        API_PORT,
    );
    node.web_requests(dest, n2);

    let checks = vec![
        expect(
            count(HTTP_SERVER_DURATION),
            server_series("api", &apod, deployment),
            n1,
        ),
        expect(
            count(HTTP_SERVER_DURATION),
            server_series("search", &search, ("k8s_deployment_name", "search")),
            n2,
        ),
        expect(GRAPH_REQUESTS, graph("web", "api", "shop", "shop"), n1),
        expect(GRAPH_REQUESTS, graph("web", "search", "shop", "shop"), n2),
        expect(
            count(HTTP_CLIENT_DURATION),
            client_series("web", &web, ("k8s_statefulset_name", "web"), dest),
            n1 + n2,
        ),
        expect(
            count(HTTP_SERVER_DURATION),
            L::new(&[("service_name", "search-bin")]),
            0,
        ),
    ];
    assert_settled(&agent, &checks);
    let spans = collector.wait_spans(&agent, &["web", "api", "search"], 2 * (n1 + n2));
    let server_tags = |p: &PodFixture, d: &'static str| {
        vec![
            ("k8s.namespace.name", p.namespace.clone()),
            ("k8s.pod.name", p.name.clone()),
            ("k8s.deployment.name", d.to_owned()),
        ]
    };
    for (svc, pod, n) in [("api", &apod, n1), ("search", &search, n2)] {
        let t = server_tags(pod, if svc == "api" { "api" } else { "search" });
        let t: Vec<(&str, &str)> = t.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            assert_span_names(&spans, svc, "SERVER", &t, "web"),
            n,
            "{}",
            describe_spans(&spans)
        );
        let to: Vec<Value> = spans
            .iter()
            .filter(|s| remote_service(s) == svc)
            .cloned()
            .collect();
        let client_tags = [
            ("k8s.namespace.name", "shop"),
            ("k8s.pod.name", "web-0"),
            ("k8s.statefulset.name", "web"),
        ];
        assert_eq!(
            assert_span_names(&to, "web", "CLIENT", &client_tags, svc),
            n,
            "{}",
            describe_spans(&spans)
        );
    }
    assert_eq!(search_server.finish(), n2);
}

// ---------------------------------------------------------------------------------------------
// 4. The API server down

fn assert_ready(agent: &Agent, when: &str) {
    let r = agent.get("/readyz");
    assert_eq!(r.status, 200, "/readyz {when}: {}", r.text());
}

/// The API is unreachable when the agent starts: the agent is ready anyway, counts the errors
/// of every watch, and names processes by their executables. The API comes up: new traffic of
/// the same server process is named by its pod. The API goes away during operation: the agent
/// stays ready, counts errors and keeps the names it has. The API comes back after the cluster
/// changed while it was away, and with its history gone (the agent must relist): a deleted pod
/// is gone from the caches, and the IP it had names the pod that has it now.
#[test]
fn api_server_down_at_start_and_during_operation() {
    let _serial = serial();
    let api = KubeApi::start(&["--start-stopped"]);
    let mut node = Node::new();
    let cluster = Cluster::load();
    let payments = cluster.pod("payments-6c9d7b5f4-mz8vq");
    let remote_addr = addr(payments.ip, 8080);
    let remote = RemotePod::payments(&mut node, &payments);
    let agent = start_agent(&api, None);
    assert_ready(&agent, "with the API down");
    // How many errors depends on how often the back-off retried by now: a lower bound is all
    // that is known. Every watch must have failed at least once.
    agent.wait_until(
        SYNC,
        |m| {
            RESOURCES
                .iter()
                .all(|r| m.value(API_ERRORS, &[("resource", r)]) > 0.0)
        },
        |m| {
            format!(
                "not every watch counted an error:\n{}",
                m.describe(API_ERRORS)
            )
        },
    );
    assert_ready(&agent, "after API errors");

    // Down: process names.
    let dest = node.api_addr();
    let (n1, n2, n3, n4, n5) = (N, 12, 8, 6, 10);
    node.web_requests(dest, n1);
    let exe_server = L::new(&[("service_name", "api-bin")]);
    let exe_client = L::new(&[
        ("service_name", "web-bin"),
        ("server_address", "10.244.1.12"),
    ]);
    let m = assert_settled(
        &agent,
        &[
            expect(
                count(HTTP_SERVER_DURATION),
                L::new(&[("service_name", "api-bin")]),
                n1,
            ),
            expect(
                count(HTTP_CLIENT_DURATION),
                L::new(&[("service_name", "web-bin")]),
                n1,
            ),
            expect(
                GRAPH_REQUESTS,
                L::new(&[("client", "web-bin"), ("server", "api-bin")]),
                n1,
            ),
            expect(
                count(HTTP_SERVER_DURATION),
                L::new(&[("service_name", "api")]),
                0,
            ),
        ],
    );
    assert_no_k8s_labels(&m, &count(HTTP_SERVER_DURATION), &exe_server.pairs());
    assert_no_k8s_labels(&m, &count(HTTP_CLIENT_DURATION), &exe_client.pairs());
    assert_no_k8s_labels(&m, GRAPH_REQUESTS, &[("client", "web-bin")]);
    for r in RESOURCES {
        assert_eq!(
            m.value(OBJECTS, &[("resource", r)]),
            0.0,
            "{}",
            m.describe(OBJECTS)
        );
    }

    // Up: the same server process, named by its pod from now on.
    api.serve(false);
    let expected = cluster.expected_objects();
    wait_synced(&agent, &expected);
    node.web_requests(dest, n2);
    let (apod, web) = (node.api(), node.web());
    let deployment = ("k8s_deployment_name", "api");
    let sts = ("k8s_statefulset_name", "web");
    let named = |n_api: usize| {
        vec![
            expect(
                count(HTTP_SERVER_DURATION),
                server_series("api", &apod, deployment),
                n_api,
            ),
            expect(
                count(HTTP_CLIENT_DURATION),
                client_series("web", &web, sts, dest),
                n_api,
            ),
            expect(GRAPH_REQUESTS, graph("web", "api", "shop", "shop"), n_api),
            expect(
                count(HTTP_SERVER_DURATION),
                L::new(&[("service_name", "api-bin")]),
                n1,
            ),
            expect(
                GRAPH_REQUESTS,
                L::new(&[("client", "web-bin"), ("server", "api-bin")]),
                n1,
            ),
        ]
    };
    assert_settled(&agent, &named(n2));
    node.web_requests(remote_addr, n3);
    let to_payments = expect(
        GRAPH_REQUESTS,
        graph("web", "payments", "shop", "payments"),
        n3,
    );
    assert_settled(&agent, &[to_payments]);

    // Down again: ready, errors counted, names kept.
    let errors_before = api_errors(&agent.metrics());
    api.stop();
    agent.wait_until(
        SYNC,
        |m| api_errors(m) > errors_before,
        |m| {
            format!(
                "no API error counted after the API went away (before: {errors_before}):\n{}",
                m.describe(API_ERRORS)
            )
        },
    );
    assert_ready(&agent, "with the API gone");
    node.web_requests(dest, n4);
    assert_settled(&agent, &named(n2 + n4));
    assert_ready(&agent, "with the API gone, after traffic");

    // Meanwhile the cluster changes: payments is replaced by fraud (same IP), debug is deleted.
    api.delete_pod(&payments.namespace, &payments.name, true);
    api.apply(&change_file("fraud"));
    api.delete_pod("shop", "debug", true);
    // Back, with its history compacted away: the agent relists.
    let mark = api.requests().len();
    api.serve(true);
    // -payments +fraud -debug; +fraud's ReplicaSet.
    let changed = adjust(
        &expected,
        &[("node_pods", -1.0), ("pods", -1.0), ("replicasets", 1.0)],
    );
    wait_synced(&agent, &changed);
    node.web_requests(remote_addr, n5);
    assert_settled(
        &agent,
        &[
            expect(
                GRAPH_REQUESTS,
                graph("web", "payments", "shop", "payments"),
                n3,
            ),
            expect(
                GRAPH_REQUESTS,
                graph("web", "fraud", "shop", "payments"),
                n5,
            ),
            expect(GRAPH_REQUESTS, graph("web", "api", "shop", "shop"), n2 + n4),
        ],
    );
    assert_ready(&agent, "after the API came back");
    // The watches resumed from a version the API no longer has, and the agent listed again:
    // both pod lists (this node's, the cluster's) were asked for after the restart.
    let since: Vec<Value> = api.requests().split_off(mark);
    for selector in [Some(format!("spec.nodeName={NODE}")), None] {
        assert!(
            since.iter().any(|r| r["resource"] == "pods"
                && r["verb"] == "list"
                && r["query"]["fieldSelector"].as_str() == selector.as_deref()),
            "no list of pods (fieldSelector {selector:?}) after the API came back: {since:#?}"
        );
    }
    assert_least_privilege(&api);
    assert_eq!(remote.server.finish(), n3 + n5);
    assert_eq!(
        node.api_server.take().expect("server").finish(),
        n1 + n2 + n4
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Bounded caches

/// A pod of node-c made from the recorded coredns pod: `load-<i>`, its own uid, container
/// and IP.
fn load_pod(cluster: &Cluster, i: usize) -> Value {
    let mut pod = cluster.pod("coredns-76f75df574-2xkqj").object;
    pod["metadata"]["name"] = json!(format!("load-{i:03}"));
    pod["metadata"]["namespace"] = json!("load");
    pod["metadata"]["uid"] = json!(format!("6b1f0c2e-5a7d-4e3b-9c8f-{i:012x}"));
    pod["metadata"]["generateName"] = json!("load-");
    pod["spec"]["nodeName"] = json!("node-c");
    let ip = format!("10.246.{}.{}", i / 200, i % 200 + 10);
    pod["status"]["podIP"] = json!(ip);
    pod["status"]["podIPs"] = json!([{ "ip": ip }]);
    pod["status"]["containerStatuses"][0]["containerID"] = json!(format!("containerd://{i:064x}"));
    pod
}

/// With `--kube-cache-entries 100` and more pods than that in the cluster, the cluster-wide
/// pod cache holds 100 and counts the others, at the list and at every later ADDED that does
/// not fit; a deletion makes room again. The other caches are not affected.
#[test]
fn caches_are_bounded() {
    let _serial = serial();
    let cluster = Cluster::load();
    let api = KubeApi::start(&[]);
    let extra = 100;
    let items: Vec<Value> = (0..extra).map(|i| load_pod(&cluster, i)).collect();
    api.apply(&json!({"apiVersion": "v1", "kind": "List", "items": items}));
    let pods = cluster.of_kind("Pod").count() + extra;
    let url = api.url();
    let agent = Agent::start(&[
        "--kube-api-url",
        &url,
        "--node-name",
        NODE,
        "--kube-retry-max-seconds",
        "1",
        "--kube-cache-entries",
        "100",
    ]);
    let mut capped = cluster.expected_objects();
    for e in &mut capped {
        if e.0 == "pods" {
            e.1 = 100.0;
        }
    }
    let m = wait_synced(&agent, &capped);
    let rejected = |m: &Metrics, r: &str| m.value(REJECTED, &[("resource", r)]);
    assert_eq!(
        rejected(&m, "pods"),
        (pods - 100) as f64,
        "{}",
        m.describe(REJECTED)
    );
    for r in ["node_pods", "services", "replicasets"] {
        assert_eq!(rejected(&m, r), 0.0, "{}", m.describe(REJECTED));
    }
    // One more pod: it does not fit.
    api.apply(&load_pod(&cluster, extra));
    let m = agent.wait_until(
        SYNC,
        |m| rejected(m, "pods") == (pods + 1 - 100) as f64,
        |m| {
            format!(
                "the ADDED pod beyond the bound was not counted:\n{}",
                m.describe(REJECTED)
            )
        },
    );
    assert_eq!(m.value(OBJECTS, &[("resource", "pods")]), 100.0);
    // A stored pod goes (the list is in namespace/name order: kube-system's come first), and
    // the next one fits.
    api.delete_pod("kube-system", "coredns-76f75df574-2xkqj", false);
    wait_synced(&agent, &adjust(&capped, &[("pods", -1.0)]));
    api.apply(&load_pod(&cluster, extra + 1));
    let m = wait_synced(&agent, &capped);
    assert_eq!(
        rejected(&m, "pods"),
        (pods + 1 - 100) as f64,
        "{}",
        m.describe(REJECTED)
    );
    for r in RESOURCES {
        assert_eq!(
            m.value(API_ERRORS, &[("resource", r)]),
            0.0,
            "{}",
            m.describe(API_ERRORS)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Outside Kubernetes

/// Without `--kube-api-url` and without KUBERNETES_SERVICE_HOST the agent does not use
/// Kubernetes: processes in kubelet-shaped cgroups are named by their executables, no series
/// has a Kubernetes label, and with `--kubernetes off` even a given API URL is never called.
#[test]
fn outside_kubernetes_nothing_of_it_is_used() {
    let _serial = serial();
    assert!(
        std::env::var_os("KUBERNETES_SERVICE_HOST").is_none(),
        "the tests run outside a pod"
    );
    let api = KubeApi::start(&[]);
    let node = Node::new();
    let url = api.url();
    let agent = Agent::start(&["--kubernetes", "off", "--kube-api-url", &url]);
    let dest = node.api_addr();
    node.web_requests(dest, N);
    let m = assert_settled(
        &agent,
        &[
            expect(
                count(HTTP_SERVER_DURATION),
                L::new(&[("service_name", "api-bin")]),
                N,
            ),
            expect(
                count(HTTP_CLIENT_DURATION),
                L::new(&[("service_name", "web-bin")]),
                N,
            ),
            expect(
                GRAPH_REQUESTS,
                L::new(&[("client", "web-bin"), ("server", "api-bin")]),
                N,
            ),
        ],
    );
    for name in [
        count(HTTP_SERVER_DURATION),
        count(HTTP_CLIENT_DURATION),
        GRAPH_REQUESTS.to_owned(),
    ] {
        assert_no_k8s_labels(&m, &name, &[]);
    }
    assert!(
        api.requests().is_empty(),
        "the agent called the API with --kubernetes off: {:#?}",
        api.requests()
    );
    drop(agent);
    // Auto (the default) without an API URL and outside a pod is off too: nothing to pass.
    let agent = Agent::start(&["--node-name", NODE]);
    node.web_requests(dest, 4);
    let m = assert_settled(
        &agent,
        &[expect(
            count(HTTP_SERVER_DURATION),
            L::new(&[("service_name", "api-bin")]),
            4,
        )],
    );
    assert_no_k8s_labels(&m, &count(HTTP_SERVER_DURATION), &[]);
}
