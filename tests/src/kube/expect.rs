//! Expected series and the waits that check them.

use std::net::SocketAddrV4;
use std::thread;

use super::fixtures::PodFixture;
use super::node::Node;
use super::{API_ERRORS, OBJECTS, QUIET, SETTLE};
use crate::agent::Agent;
use crate::metrics::{GRAPH_REQUESTS, HTTP_CLIENT_DURATION, HTTP_SERVER_DURATION, count};
use crate::prom::Metrics;

/// Owned label pairs, borrowed for the queries.
pub struct L(Vec<(String, String)>);

impl L {
    pub fn new(pairs: &[(&str, &str)]) -> Self {
        Self(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    pub fn with(mut self, k: &str, v: &str) -> Self {
        self.0.push((k.to_owned(), v.to_owned()));
        self
    }

    pub fn pairs(&self) -> Vec<(&str, &str)> {
        self.0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

/// One expected value.
pub struct Expect {
    name: String,
    labels: L,
    value: f64,
}

pub fn expect(name: impl Into<String>, labels: L, value: usize) -> Expect {
    Expect {
        name: name.into(),
        labels,
        value: value as f64,
    }
}

pub fn mismatches(m: &Metrics, checks: &[Expect]) -> Vec<String> {
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

pub fn report(m: &Metrics, checks: &[Expect]) -> String {
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
pub fn assert_settled(agent: &Agent, checks: &[Expect]) -> Metrics {
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
pub fn assert_no_k8s_labels(m: &Metrics, name: &str, labels: &[(&str, &str)]) {
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

pub fn server_series(service: &str, pod: &PodFixture, workload: (&str, &str)) -> L {
    L::new(&[
        ("service_name", service),
        ("k8s_namespace_name", &pod.namespace),
        ("k8s_pod_name", &pod.name),
        workload,
    ])
}

pub fn client_series(
    service: &str,
    pod: &PodFixture,
    workload: (&str, &str),
    dest: SocketAddrV4,
) -> L {
    server_series(service, pod, workload)
        .with("server_address", &dest.ip().to_string())
        .with("server_port", &dest.port().to_string())
}

pub fn graph(client: &str, server: &str, client_ns: &str, server_ns: &str) -> L {
    L::new(&[
        ("client", client),
        ("server", server),
        ("client_namespace", client_ns),
        ("server_namespace", server_ns),
    ])
}

pub const TCP_OPENED: &str = "meshtap_tcp_connections_opened_total";

/// Connections `requests` opens for `n` requests (`--connection mixed`): one keep-alive
/// connection for the first half, one each for the rest.
pub fn mixed_connections(n: usize) -> usize {
    usize::from(n / 2 > 0) + n - n / 2
}

/// An L4 edge (`meshtap_tcp_*`) as `role` sees it, with the namespaces of its ends when given.
pub fn tcp_edge(
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
pub fn web_to_api(node: &Node, dest: SocketAddrV4, n: usize) -> Vec<Expect> {
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
