//! Kubernetes metadata, the agent as a client of the API server: the fake server answers like
//! kube-apiserver; the agent copes with the API down at start and during operation (ready
//! anyway, errors counted, names kept, a relist when the history is gone) and bounds its caches.
//!
//! The cluster of the fixtures, the network and the executables the scenarios use are described
//! in [`meshtap_tests::kube`].

use meshtap_tests::kube::{
    API_ERRORS, Cluster, KubeApi, L, N, NODE, Node, OBJECTS, REJECTED, RESOURCES, RemotePod, SYNC,
    addr, adjust, api_errors, assert_least_privilege, assert_no_k8s_labels, assert_settled,
    change_file, client_series, expect, fixtures, graph, server_series, start_agent, wait_synced,
};
use meshtap_tests::metrics::{GRAPH_REQUESTS, HTTP_CLIENT_DURATION, HTTP_SERVER_DURATION, count};
use meshtap_tests::process::RUN;
use meshtap_tests::{Agent, Metrics, Script, serial};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// The fake API server itself

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
// The API server down

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
// Bounded caches

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
