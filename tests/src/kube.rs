//! The Kubernetes tests' node, cluster and API (`tests/tests/kubernetes_*.rs`).
//!
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

pub mod api;
pub mod cgroups;
pub mod expect;
pub mod fixtures;
pub mod net;
pub mod node;
pub mod spans;

use std::time::Duration;

pub use api::{KubeApi, assert_least_privilege};
pub use cgroups::Cgroups;
pub use expect::{
    Expect, L, TCP_OPENED, assert_no_k8s_labels, assert_settled, client_series, expect, graph,
    mixed_connections, server_series, tcp_edge, web_to_api,
};
pub use fixtures::{Cluster, PodFixture, change_file, fixtures};
pub use net::{Fabric, Sandbox, addr};
pub use node::{API_PORT, Bins, Driver, Node, Place, RemotePod, Server, place, requests};
pub use spans::{
    Collector, assert_linked, assert_span_names, describe_spans, kind, remote_service, service,
};

use crate::agent::Agent;
use crate::prom::Metrics;

/// How long the agent may take to turn traffic into metrics.
pub const SETTLE: Duration = Duration::from_secs(20);
/// How long the agent may take to list (or relist) the API, retries included.
pub const SYNC: Duration = Duration::from_secs(30);
/// After the expected values held: long enough for a late duplicate to show (a service-graph
/// half whose partner never comes is counted alone after 2 s).
pub const QUIET: Duration = Duration::from_secs(4);

pub const NODE: &str = "node-a";
pub const OBJECTS: &str = "meshtap_kubernetes_objects";
pub const API_ERRORS: &str = "meshtap_kubernetes_api_errors_total";
pub const REJECTED: &str = "meshtap_kubernetes_cache_rejected_total";
/// The watched resources, as the self-metrics label them.
pub const RESOURCES: [&str; 4] = ["node_pods", "pods", "services", "replicasets"];
/// What the agent's ClusterRole allows it: get, list and watch on these. Nothing else.
pub const RBAC_RESOURCES: [&str; 5] = [
    "pods",
    "replicasets",
    "services",
    "endpointslices",
    "namespaces",
];

/// Requests per scenario, where a test has no reason to send another number.
pub const N: usize = 20;

// ---------------------------------------------------------------------------------------------
// The agent

pub fn start_agent(api: &KubeApi, collector: Option<&Collector>) -> Agent {
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
pub fn wait_synced(agent: &Agent, expected: &[(&str, f64)]) -> Metrics {
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
pub fn adjust(expected: &[(&'static str, f64)], by: &[(&str, f64)]) -> Vec<(&'static str, f64)> {
    expected
        .iter()
        .map(|(r, n)| {
            let d: f64 = by.iter().filter(|(b, _)| b == r).map(|(_, d)| d).sum();
            (*r, n + d)
        })
        .collect()
}

pub fn api_errors(m: &Metrics) -> f64 {
    m.value(API_ERRORS, &[])
}
