//! Kubernetes metadata, peers that are not processes of this node: pods of another node, the
//! ClusterIP of a Service (DNAT, as kube-proxy does), a host-network pod, and a ClusterIP whose
//! backend is a pod of this node (each request counted once).
//!
//! The cluster of the fixtures, the network and the executables the scenarios use are described
//! in [`meshtap_tests::kube`].

use std::net::Ipv4Addr;

use meshtap_tests::kube::{
    Cluster, Collector, KubeApi, L, N, Node, Place, RemotePod, Server, TCP_OPENED, addr,
    assert_linked, assert_settled, assert_span_names, client_series, describe_spans, expect, graph,
    mixed_connections, remote_service, start_agent, tcp_edge, wait_synced, web_to_api,
};
use meshtap_tests::metrics::{GRAPH_REQUESTS, HTTP_CLIENT_DURATION, count};
use meshtap_tests::serial;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Peers that are not processes of this node

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
