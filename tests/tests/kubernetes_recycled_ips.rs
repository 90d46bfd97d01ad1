//! Kubernetes metadata, recycled IPs: when a pod's IP passes to another pod (of another node,
//! or of this one), traffic before names the old pod and traffic after the new one, exactly.
//!
//! The cluster of the fixtures, the network and the executables the scenarios use are described
//! in [`meshtap_tests::kube`].

use std::net::Ipv4Addr;

use meshtap_tests::kube::{
    API_PORT, Cluster, Collector, KubeApi, L, N, Node, Place, PodFixture, RemotePod, Server,
    TCP_OPENED, addr, adjust, assert_settled, assert_span_names, change_file, client_series,
    describe_spans, expect, graph, mixed_connections, remote_service, server_series, start_agent,
    tcp_edge, wait_synced,
};
use meshtap_tests::metrics::{GRAPH_REQUESTS, HTTP_CLIENT_DURATION, HTTP_SERVER_DURATION, count};
use meshtap_tests::serial;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Recycled IPs

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
