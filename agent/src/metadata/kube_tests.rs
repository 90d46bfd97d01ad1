use super::*;

/// A pod as the API returns it (trimmed to the fields the index reads, plus some it ignores).
fn pod(
    ns: &str,
    name: &str,
    uid: &str,
    owner: Option<(&str, &str)>,
    ip: &str,
    container: &str,
) -> Pod {
    let owners = match owner {
        Some((kind, owner_name)) => serde_json::json!([{
            "apiVersion": "apps/v1", "kind": kind, "name": owner_name,
            "uid": "5b0f4c8e-0000-4000-8000-000000000001", "controller": true,
            "blockOwnerDeletion": true
        }]),
        None => serde_json::json!([]),
    };
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "uid": uid, "resourceVersion": "1234",
            "labels": {"app": "x", "pod-template-hash": "7d9f8b6c5d"},
            "ownerReferences": owners
        },
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "app:1"}]},
        "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "containerStatuses": [{
                "name": "app", "ready": true, "restartCount": 0, "image": "app:1",
                "imageID": "docker.io/library/app@sha256:00", "started": true,
                "containerID": format!("containerd://{container}"),
                "state": {"running": {"startedAt": "2026-11-25T10:00:00Z"}},
                "lastState": {}
            }]
        }
    }))
    .unwrap()
}

fn replicaset(ns: &str, name: &str, deployment: Option<&str>) -> ReplicaSet {
    let owners = match deployment {
        Some(d) => serde_json::json!([{
            "apiVersion": "apps/v1", "kind": "Deployment", "name": d,
            "uid": "5b0f4c8e-0000-4000-8000-000000000002", "controller": true
        }]),
        None => serde_json::json!([]),
    };
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name, "namespace": ns, "uid": "rs-uid", "ownerReferences": owners},
        "spec": {"selector": {"matchLabels": {"app": "x"}}}
    }))
    .unwrap()
}

fn service(ns: &str, name: &str, ip: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "uid": "svc-uid"},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": 80}]}
    }))
    .unwrap()
}

const C1: &str = "a3f1c0de0123456789abcdef0123456789abcdef0123456789abcdef01234567";
const C2: &str = "b3f1c0de0123456789abcdef0123456789abcdef0123456789abcdef01234567";

fn list<K>(index: &mut Index, apply: Apply<K>, objects: Vec<K>) -> (usize, u64) {
    apply(index, watcher::Event::Init, 100);
    for o in objects {
        apply(index, watcher::Event::InitApply(o), 100);
    }
    apply(index, watcher::Event::InitDone, 100)
}

fn shared(index: Index) -> KubeIndex {
    KubeIndex {
        inner: Arc::new(RwLock::new(index)),
    }
}

#[test]
fn workloads_from_owners() {
    let mut index = Index::default();
    list(
        &mut index,
        apply_replicasets,
        vec![
            replicaset("shop", "api-7d9f8b6c5d", Some("api")),
            replicaset("shop", "lone-7d9f8b6c5d", None),
        ],
    );
    let rs = &index.replicasets;
    let name = |p: Pod| workload(&p, rs);
    assert_eq!(
        name(pod(
            "shop",
            "api-7d9f8b6c5d-x2x9k",
            "u1",
            Some(("ReplicaSet", "api-7d9f8b6c5d")),
            "10.0.0.1",
            C1
        )),
        Some((WorkloadKind::Deployment, "api".to_string()))
    );
    // A ReplicaSet not seen yet: the pod-template-hash suffix names the Deployment.
    assert_eq!(
        name(pod(
            "shop",
            "web-7d9f8b6c5d-abcde",
            "u2",
            Some(("ReplicaSet", "web-7d9f8b6c5d")),
            "10.0.0.2",
            C1
        )),
        Some((WorkloadKind::Deployment, "web".to_string()))
    );
    // A ReplicaSet known to have no Deployment.
    assert_eq!(
        name(pod(
            "shop",
            "lone-7d9f8b6c5d-q",
            "u3",
            Some(("ReplicaSet", "lone-7d9f8b6c5d")),
            "10.0.0.3",
            C1
        )),
        Some((WorkloadKind::ReplicaSet, "lone-7d9f8b6c5d".to_string()))
    );
    assert_eq!(
        name(pod(
            "shop",
            "db-0",
            "u4",
            Some(("StatefulSet", "db")),
            "10.0.0.4",
            C1
        )),
        Some((WorkloadKind::StatefulSet, "db".to_string()))
    );
    assert_eq!(
        name(pod(
            "kube-system",
            "proxy-x",
            "u5",
            Some(("DaemonSet", "proxy")),
            "10.0.0.5",
            C1
        )),
        Some((WorkloadKind::DaemonSet, "proxy".to_string()))
    );
    assert_eq!(
        name(pod(
            "batch",
            "report-29400000-abcde",
            "u6",
            Some(("Job", "report-29400000")),
            "10.0.0.6",
            C1
        )),
        Some((WorkloadKind::CronJob, "report".to_string()))
    );
    assert_eq!(
        name(pod(
            "batch",
            "migrate-xyz",
            "u7",
            Some(("Job", "migrate")),
            "10.0.0.7",
            C1
        )),
        Some((WorkloadKind::Job, "migrate".to_string()))
    );
    assert_eq!(name(pod("shop", "debug", "u8", None, "10.0.0.8", C1)), None);
}

#[test]
fn containers_map_to_local_pods_and_follow_changes() {
    let mut index = Index::default();
    let (count, rejected) = list(
        &mut index,
        apply_node_pods,
        vec![pod(
            "shop",
            "api-1",
            "uid-1",
            Some(("StatefulSet", "api")),
            "10.0.0.1",
            C1,
        )],
    );
    assert_eq!((count, rejected), (1, 0));
    let kube = shared(index);
    let found = kube.pod(Some(C1), None).unwrap();
    assert_eq!(
        (found.namespace.as_str(), found.name.as_str()),
        ("shop", "api-1")
    );
    assert_eq!(kube.pod(None, Some("uid-1")).unwrap().name, "api-1");
    assert!(kube.pod(Some(C2), None).is_none());

    // The container restarts with a new id: the old id no longer names the pod.
    let mut index = Arc::try_unwrap(kube.inner)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap();
    apply_node_pods(
        &mut index,
        watcher::Event::Apply(pod(
            "shop",
            "api-1",
            "uid-1",
            Some(("StatefulSet", "api")),
            "10.0.0.1",
            C2,
        )),
        100,
    );
    assert!(!index.containers.contains_key(C1));
    assert_eq!(index.containers[C2].name, "api-1");
    let (count, _) = apply_node_pods(
        &mut index,
        watcher::Event::Delete(pod("shop", "api-1", "uid-1", None, "10.0.0.1", C2)),
        100,
    );
    assert_eq!(count, 0);
    assert!(index.containers.is_empty());
}

#[test]
fn a_recycled_ip_names_the_new_pod_only() {
    let ip: IpAddr = "10.244.1.20".parse().unwrap();
    let mut index = Index::default();
    list(
        &mut index,
        apply_pods,
        vec![pod(
            "shop",
            "old",
            "uid-old",
            Some(("StatefulSet", "old")),
            "10.244.1.20",
            C1,
        )],
    );
    assert_eq!(index.pod_ips[&ip].name, "old");
    // The new pod is seen before the old one's deletion: the deletion must not release it.
    apply_pods(
        &mut index,
        watcher::Event::Apply(pod(
            "shop",
            "new",
            "uid-new",
            Some(("StatefulSet", "new")),
            "10.244.1.20",
            C2,
        )),
        100,
    );
    apply_pods(
        &mut index,
        watcher::Event::Delete(pod("shop", "old", "uid-old", None, "10.244.1.20", C1)),
        100,
    );
    assert_eq!(index.pod_ips[&ip].name, "new");
    // Deleted, then the IP is free.
    apply_pods(
        &mut index,
        watcher::Event::Delete(pod("shop", "new", "uid-new", None, "10.244.1.20", C2)),
        100,
    );
    assert!(index.pod_ips.is_empty());

    // A finished pod gives its IP up at once.
    let mut done = pod(
        "batch",
        "job-x",
        "uid-job",
        Some(("Job", "x")),
        "10.244.1.21",
        C1,
    );
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    apply_pods(&mut index, watcher::Event::Apply(done), 100);
    assert!(index.pod_ips.is_empty());
}

#[test]
fn a_relist_forgets_what_was_deleted_meanwhile() {
    let mut index = Index::default();
    list(
        &mut index,
        apply_pods,
        vec![
            pod("a", "p1", "u1", None, "10.0.0.1", C1),
            pod("a", "p2", "u2", None, "10.0.0.2", C2),
        ],
    );
    assert_eq!(index.pod_ips.len(), 2);
    // The API was away; p1 was deleted and p3 added meanwhile.
    let (count, _) = list(
        &mut index,
        apply_pods,
        vec![
            pod("a", "p2", "u2", None, "10.0.0.2", C2),
            pod("a", "p3", "u3", None, "10.0.0.3", C1),
        ],
    );
    assert_eq!(count, 2);
    let kube = shared(index);
    assert!(kube.peer("10.0.0.1".parse().unwrap()).is_none());
    assert_eq!(kube.peer("10.0.0.3".parse().unwrap()).unwrap().name(), "p3");
}

#[test]
fn services_by_cluster_ip_and_bounded_caches() {
    let mut index = Index::default();
    list(
        &mut index,
        apply_services,
        vec![
            service("shop", "api", "10.96.0.10"),
            service("shop", "headless", "None"),
        ],
    );
    let ip: IpAddr = "10.96.0.10".parse().unwrap();
    assert_eq!(index.service_ips.len(), 1);
    apply_services(
        &mut index,
        watcher::Event::Delete(service("shop", "api", "10.96.0.10")),
        100,
    );
    assert!(!index.service_ips.contains_key(&ip));

    // Beyond the bound, objects are counted, not stored.
    let mut index = Index::default();
    apply_pods(&mut index, watcher::Event::Init, 2);
    let mut rejected = 0;
    for i in 0..5 {
        let (_, r) = apply_pods(
            &mut index,
            watcher::Event::InitApply(pod(
                "a",
                &format!("p{i}"),
                &format!("u{i}"),
                None,
                &format!("10.0.1.{i}"),
                C1,
            )),
            2,
        );
        rejected += r;
    }
    let (count, _) = apply_pods(&mut index, watcher::Event::InitDone, 2);
    assert_eq!(count, 2);
    let (count, r) = apply_pods(
        &mut index,
        watcher::Event::Apply(pod("a", "q", "v", None, "10.0.2.1", C1)),
        2,
    );
    assert_eq!((count, r), (2, 1));
    assert_eq!(rejected, 3);
}

#[test]
fn backoff_doubles_to_its_ceiling_and_resets() {
    let mut b = Doubling::new(Duration::from_secs(4));
    let delays: Vec<Duration> = (0..6).map(|_| b.next().unwrap()).collect();
    // Each delay is within 25% under its nominal value: 0.5, 1, 2, 4, 4, 4 s.
    for (d, nominal) in delays.iter().zip([0.5, 1.0, 2.0, 4.0, 4.0, 4.0]) {
        let s = d.as_secs_f64();
        assert!(s <= nominal && s >= nominal * 0.75, "{s} vs {nominal}");
    }
    b.reset();
    assert!(b.next().unwrap() <= Duration::from_millis(500));
}

/// A meshtap agent pod on `node` at `ip`, and a pod of an application there.
fn on_node(pod_json: Pod, node: &str, agent: bool) -> Pod {
    let mut v = serde_json::to_value(pod_json).unwrap();
    v["spec"]["nodeName"] = node.into();
    if agent {
        v["metadata"]["labels"] = serde_json::json!({
            "app.kubernetes.io/name": "meshtap", "app.kubernetes.io/component": "agent"
        });
    }
    serde_json::from_value(v).unwrap()
}

#[test]
fn the_agent_serving_a_pod_is_the_one_of_its_node() {
    let mut index = Index {
        node_name: Some("node-a".into()),
        ..Index::default()
    };
    let pods = vec![
        on_node(
            pod("meshtap", "meshtap-a", "ua", None, "10.1.0.2", "ca"),
            "node-a",
            true,
        ),
        on_node(
            pod("meshtap", "meshtap-b", "ub", None, "10.2.0.2", "cb"),
            "node-b",
            true,
        ),
        on_node(
            pod("shop", "web-1", "u1", None, "10.1.0.9", "c1"),
            "node-a",
            false,
        ),
        on_node(
            pod("shop", "api-1", "u2", None, "10.2.0.9", "c2"),
            "node-b",
            false,
        ),
        on_node(
            pod("shop", "db-1", "u3", None, "10.3.0.9", "c3"),
            "node-c",
            false,
        ),
    ];
    list(&mut index, apply_pods, pods);
    let index = shared(index);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(index.agents(), 2);
    assert_eq!(index.agent_serving(ip("10.2.0.9")), Some(ip("10.2.0.2")));
    assert_eq!(index.agent_serving(ip("10.2.0.2")), Some(ip("10.2.0.2")));
    assert_eq!(index.agent_serving(ip("10.1.0.9")), None, "this node's own");
    assert_eq!(
        index.agent_serving(ip("10.3.0.9")),
        None,
        "no agent on node-c"
    );
    assert_eq!(index.agent_serving(ip("10.9.9.9")), None, "not a pod");
    // The agent of node-b replaced (a rollout), then deleted.
    apply_pods(
        &mut index.write(),
        watcher::Event::Apply(on_node(
            pod("meshtap", "meshtap-b2", "ub2", None, "10.2.0.3", "cb2"),
            "node-b",
            true,
        )),
        100,
    );
    apply_pods(
        &mut index.write(),
        watcher::Event::Delete(on_node(
            pod("meshtap", "meshtap-b", "ub", None, "10.2.0.2", "cb"),
            "node-b",
            true,
        )),
        100,
    );
    assert_eq!(index.agent_serving(ip("10.2.0.9")), Some(ip("10.2.0.3")));
    apply_pods(
        &mut index.write(),
        watcher::Event::Delete(on_node(
            pod("meshtap", "meshtap-b2", "ub2", None, "10.2.0.3", "cb2"),
            "node-b",
            true,
        )),
        100,
    );
    assert_eq!(index.agent_serving(ip("10.2.0.9")), None);
}
