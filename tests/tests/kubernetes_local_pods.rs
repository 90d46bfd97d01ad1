//! Kubernetes metadata, pods of this node: the processes of each pod, in cgroups shaped like the
//! ones kubelet makes (systemd driver or cgroupfs, containerd), are named by their pod,
//! namespace and workload in metrics, spans and the service graph, also when the process is
//! gone before the agent looked at it.
//!
//! The cluster of the fixtures, the network and the executables the scenarios use are described
//! in [`meshtap_tests::kube`].

use meshtap_tests::kube::{
    API_ERRORS, Cluster, Collector, Driver, KubeApi, L, N, Node, PodFixture, REJECTED, RESOURCES,
    TCP_OPENED, assert_least_privilege, assert_linked, assert_settled, assert_span_names,
    client_series, describe_spans, expect, graph, kind, mixed_connections, place, remote_service,
    requests, server_series, start_agent, tcp_edge, wait_synced, web_to_api,
};
use meshtap_tests::metrics::{GRAPH_REQUESTS, HTTP_CLIENT_DURATION, HTTP_SERVER_DURATION, count};
use meshtap_tests::serial;
use serde_json::Value;

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
