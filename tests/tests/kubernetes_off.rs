//! Kubernetes metadata, off: outside a pod and without an API URL (or with `--kubernetes off`)
//! the agent uses nothing of Kubernetes.
//!
//! The cluster of the fixtures, the network and the executables the scenarios use are described
//! in [`meshtap_tests::kube`].

use meshtap_tests::kube::{
    KubeApi, L, N, NODE, Node, assert_no_k8s_labels, assert_settled, expect,
};
use meshtap_tests::metrics::{GRAPH_REQUESTS, HTTP_CLIENT_DURATION, HTTP_SERVER_DURATION, count};
use meshtap_tests::{Agent, serial};

// ---------------------------------------------------------------------------------------------
// Outside Kubernetes

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
