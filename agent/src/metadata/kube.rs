//! Kubernetes names: which pod a container belongs to, which workload runs a pod, which pod (or
//! Service) owns a remote IP now.
//!
//! Four watches (LIST then WATCH, relisting when the API says the history is gone) keep a
//! shared index current: this node's pods (field selector on the node name; they carry the
//! container ids), every pod (the IP index), Services (ClusterIPs) and ReplicaSets (a
//! ReplicaSet's Deployment). Each watch retries with a doubling back-off when the API fails,
//! counting the failure; the agent runs on process names meanwhile. Each cache is bounded.
//!
//! A pod's IP is released when the pod is deleted or finishes, and only if it still belongs to
//! that pod: a recycled IP never shows the pod that had it before.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    core::v1::{Pod, Service},
};
use kube::{
    Api, Client, ResourceExt,
    runtime::{utils::Backoff, watcher},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};

pub use super::pod::{Peer, PodMeta, ServiceMeta, WorkloadKind};
use crate::metrics::Registry;

/// Metric names (without the `_total` suffix prometheus-client appends to counters).
pub mod name {
    pub const KUBE_API_ERRORS: &str = "meshtap_kubernetes_api_errors";
    pub const KUBE_OBJECTS: &str = "meshtap_kubernetes_objects";
    pub const KUBE_CACHE_REJECTED: &str = "meshtap_kubernetes_cache_rejected";
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

/// Health of the Kubernetes metadata watches, by resource.
#[derive(Clone, Default)]
pub struct KubeMetrics {
    pub api_errors: Family<ResourceLabels, Counter>,
    pub objects: Family<ResourceLabels, Gauge>,
    pub cache_rejected: Family<ResourceLabels, Counter>,
}

impl KubeMetrics {
    pub fn new(registry: &Registry) -> Self {
        let m = KubeMetrics::default();
        registry.register(
            name::KUBE_API_ERRORS,
            "Failed Kubernetes API list/watch calls, by resource (retried with back-off; names fall back to process names meanwhile)",
            m.api_errors.clone(),
        );
        registry.register(
            name::KUBE_OBJECTS,
            "Kubernetes objects in the agent's caches, by resource",
            m.objects.clone(),
        );
        registry.register(
            name::KUBE_CACHE_REJECTED,
            "Kubernetes objects not cached because the cache was full (--kube-cache-entries), by resource",
            m.cache_rejected.clone(),
        );
        m
    }
}

/// A pod of this node and its containers.
struct LocalPod {
    meta: Arc<PodMeta>,
    containers: Vec<String>,
}

/// A pod anywhere in the cluster and the IPs it owns.
struct ClusterPod {
    meta: Arc<PodMeta>,
    ips: Vec<IpAddr>,
    /// The node it runs on.
    node: Option<Arc<str>>,
    /// A meshtap agent (the DaemonSet's labels, [`AGENT_LABELS`]), running: its address.
    agent: Option<IpAddr>,
}

/// The labels of meshtap's own agent pods (deploy/daemonset.yaml): how an agent finds the
/// agent of another node to link traces across nodes.
pub const AGENT_LABELS: [(&str, &str); 2] = [
    ("app.kubernetes.io/name", "meshtap"),
    ("app.kubernetes.io/component", "agent"),
];

impl ClusterPod {
    fn new(pod: &Pod, meta: PodMeta) -> Self {
        ClusterPod {
            meta: Arc::new(meta),
            ips: pod_ips(pod),
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .map(Into::into),
            agent: agent_ip(pod),
        }
    }
}

/// The address of a running meshtap agent pod.
fn agent_ip(pod: &Pod) -> Option<IpAddr> {
    let labels = pod.metadata.labels.as_ref()?;
    if !AGENT_LABELS
        .iter()
        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
    {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    status.pod_ip.as_deref()?.parse().ok()
}

#[derive(Default)]
struct Index {
    local: HashMap<String, LocalPod>,
    local_init: Option<HashMap<String, LocalPod>>,
    containers: HashMap<String, Arc<PodMeta>>,
    pods: HashMap<String, ClusterPod>,
    pods_init: Option<HashMap<String, ClusterPod>>,
    pod_ips: HashMap<IpAddr, Arc<PodMeta>>,
    services: HashMap<(String, String), ServiceEntry>,
    services_init: Option<HashMap<(String, String), ServiceEntry>>,
    service_ips: HashMap<IpAddr, Arc<ServiceMeta>>,
    /// (namespace, ReplicaSet) -> its Deployment, if any.
    replicasets: HashMap<(String, String), Option<String>>,
    replicasets_init: Option<HashMap<(String, String), Option<String>>>,
    /// node -> (the uid of the meshtap agent pod there, its address).
    agents: HashMap<Arc<str>, (String, IpAddr)>,
    /// This node (its own agent is not a peer).
    node_name: Option<Arc<str>>,
}

/// The shared index: written by the watches, read by the processing stage.
#[derive(Clone, Default)]
pub struct KubeIndex {
    inner: Arc<RwLock<Index>>,
}

impl KubeIndex {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The pod of this node running container `container_id`, or the pod with `pod_uid`.
    pub fn pod(&self, container_id: Option<&str>, pod_uid: Option<&str>) -> Option<Arc<PodMeta>> {
        let index = self.read();
        container_id
            .and_then(|id| index.containers.get(id).cloned())
            .or_else(|| pod_uid.and_then(|uid| index.local.get(uid).map(|p| p.meta.clone())))
    }

    /// The address of the meshtap agent of the node where the pod owning `ip` runs, unless
    /// that is this node.
    pub fn agent_serving(&self, ip: IpAddr) -> Option<IpAddr> {
        let index = self.read();
        let uid = &index.pod_ips.get(&ip)?.uid;
        let node = index.pods.get(uid)?.node.as_ref()?;
        if index.node_name.as_ref() == Some(node) {
            return None;
        }
        index.agents.get(node).map(|(_, ip)| *ip)
    }

    /// Meshtap agent pods known, one per node.
    #[cfg(test)]
    pub fn agents(&self) -> usize {
        self.read().agents.len()
    }

    /// The pod that owns `ip` now, or the Service whose ClusterIP it is.
    pub fn peer(&self, ip: IpAddr) -> Option<Peer> {
        let index = self.read();
        index
            .pod_ips
            .get(&ip)
            .map(|p| Peer::Pod(p.clone()))
            .or_else(|| index.service_ips.get(&ip).map(|s| Peer::Service(s.clone())))
    }
}

/// Where the API is and how hard to try.
#[derive(Clone, Debug)]
pub struct KubeSettings {
    /// None: the in-cluster service account.
    pub api_url: Option<String>,
    pub node_name: String,
    pub retry_max: Duration,
    pub cache_entries: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "Kubernetes metadata is on but the in-cluster configuration is unusable ({0}); run in a pod with a service account, pass --kube-api-url, or --kubernetes off"
    )]
    InCluster(String),
    #[error("invalid --kube-api-url {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot build the Kubernetes client: {0}")]
    Client(String),
}

/// Builds the client and starts the four watches on the current tokio runtime.
pub fn start(
    settings: KubeSettings,
    index: KubeIndex,
    metrics: KubeMetrics,
) -> Result<(), KubeError> {
    index.write().node_name = Some(settings.node_name.as_str().into());
    let config = match &settings.api_url {
        Some(url) => {
            let uri = url.parse::<hyper::Uri>().map_err(|e| KubeError::Url {
                url: url.clone(),
                reason: e.to_string(),
            })?;
            kube::Config::new(uri)
        }
        None => kube::Config::incluster().map_err(|e| KubeError::InCluster(e.to_string()))?,
    };
    let client = Client::try_from(config).map_err(|e| KubeError::Client(e.to_string()))?;
    let node_pods =
        watcher::Config::default().fields(&format!("spec.nodeName={}", settings.node_name));
    spawn_watch(
        Api::<Pod>::all(client.clone()),
        node_pods,
        "node_pods",
        &settings,
        &index,
        &metrics,
        apply_node_pods,
    );
    spawn_watch(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default(),
        "pods",
        &settings,
        &index,
        &metrics,
        apply_pods,
    );
    spawn_watch(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        "services",
        &settings,
        &index,
        &metrics,
        apply_services,
    );
    spawn_watch(
        Api::<ReplicaSet>::all(client),
        watcher::Config::default(),
        "replicasets",
        &settings,
        &index,
        &metrics,
        apply_replicasets,
    );
    log::info!(
        "Kubernetes metadata: watching pods of node {} at {}",
        settings.node_name,
        settings
            .api_url
            .as_deref()
            .unwrap_or("the in-cluster API server")
    );
    Ok(())
}

/// What one watch does with its events: (index, event, cache bound) -> (objects cached now,
/// objects turned away by the bound).
type Apply<K> = fn(&mut Index, watcher::Event<K>, usize) -> (usize, u64);

fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    resource: &'static str,
    settings: &KubeSettings,
    index: &KubeIndex,
    metrics: &KubeMetrics,
    apply: Apply<K>,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let labels = ResourceLabels {
        resource: resource.to_string(),
    };
    let errors = metrics.api_errors.get_or_create_owned(&labels);
    let objects = metrics.objects.get_or_create_owned(&labels);
    let rejected = metrics.cache_rejected.get_or_create_owned(&labels);
    let index = index.clone();
    let mut backoff = Doubling::new(settings.retry_max);
    let cap = settings.cache_entries;
    tokio::spawn(async move {
        // The back-off is applied here rather than with `StreamBackoff`: the watcher yields
        // `Init` before each (re)list attempt, and that must not count as a success.
        let mut stream = watcher(api, config).boxed();
        let mut failing = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    if !matches!(event, watcher::Event::Init) {
                        backoff.reset();
                        if failing {
                            log::info!("Kubernetes API: watching {resource} again");
                            failing = false;
                        }
                    }
                    let (count, turned_away) = apply(&mut index.write(), event, cap);
                    objects.set(count as i64);
                    if turned_away > 0 {
                        rejected.inc_by(turned_away);
                    }
                }
                Err(e) => {
                    errors.inc();
                    if !failing {
                        log::warn!(
                            "Kubernetes API: watching {resource} failed ({e}); names fall back to processes' until it answers, retrying"
                        );
                        failing = true;
                    } else {
                        log::debug!("Kubernetes API: watching {resource} failed again: {e}");
                    }
                    if let Some(delay) = backoff.next() {
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
    });
}

/// Retry delays: 0.5 s doubling up to a ceiling, with up to 25% jitter so that the agents of
/// a cluster do not retry in step. Reset after a success.
struct Doubling {
    next: Duration,
    max: Duration,
    seed: u64,
}

impl Doubling {
    const FIRST: Duration = Duration::from_millis(500);

    fn new(max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        Doubling {
            next: Self::FIRST.min(max),
            max,
            seed,
        }
    }
}

impl Iterator for Doubling {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // xorshift: jitter needs no quality, only variety between nodes.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = delay.mul_f64((self.seed % 1000) as f64 / 4000.0);
        Some(delay.saturating_sub(jitter))
    }
}

impl Backoff for Doubling {
    fn reset(&mut self) {
        self.next = Self::FIRST.min(self.max);
    }
}

/// A pod's workload from its controller reference.
fn workload(
    pod: &Pod,
    replicasets: &HashMap<(String, String), Option<String>>,
) -> Option<(WorkloadKind, String)> {
    let owners = pod.metadata.owner_references.as_ref()?;
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())?;
    let namespace = pod.namespace().unwrap_or_default();
    match owner.kind.as_str() {
        "ReplicaSet" => {
            if let Some(known) = replicasets.get(&(namespace, owner.name.clone())) {
                return Some(match known {
                    Some(deployment) => (WorkloadKind::Deployment, deployment.clone()),
                    None => (WorkloadKind::ReplicaSet, owner.name.clone()),
                });
            }
            // Not seen yet: a Deployment names its ReplicaSets `<deployment>-<pod-template-hash>`.
            let hash = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"));
            match hash.and_then(|h| owner.name.strip_suffix(h.as_str())?.strip_suffix('-')) {
                Some(deployment) if !deployment.is_empty() => {
                    Some((WorkloadKind::Deployment, deployment.to_string()))
                }
                _ => Some((WorkloadKind::ReplicaSet, owner.name.clone())),
            }
        }
        "StatefulSet" => Some((WorkloadKind::StatefulSet, owner.name.clone())),
        "DaemonSet" => Some((WorkloadKind::DaemonSet, owner.name.clone())),
        "Job" => Some(match cronjob_of(&owner.name) {
            Some(cronjob) => (WorkloadKind::CronJob, cronjob.to_string()),
            None => (WorkloadKind::Job, owner.name.clone()),
        }),
        _ => None,
    }
}

/// A CronJob names its Jobs `<cronjob>-<scheduled time in minutes since the epoch>`.
fn cronjob_of(job: &str) -> Option<&str> {
    let (prefix, suffix) = job.rsplit_once('-')?;
    (suffix.len() >= 8 && suffix.bytes().all(|b| b.is_ascii_digit()) && !prefix.is_empty())
        .then_some(prefix)
}

fn pod_meta(pod: &Pod, replicasets: &HashMap<(String, String), Option<String>>) -> Option<PodMeta> {
    Some(PodMeta {
        namespace: pod.metadata.namespace.clone()?,
        name: pod.metadata.name.clone()?,
        uid: pod.metadata.uid.clone()?,
        workload: workload(pod, replicasets),
    })
}

/// Container ids of a pod, without the `<runtime>://` prefix.
fn container_ids(pod: &Pod) -> Vec<String> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    [
        status.container_statuses.as_ref(),
        status.init_container_statuses.as_ref(),
        status.ephemeral_container_statuses.as_ref(),
    ]
    .into_iter()
    .flatten()
    .flatten()
    .filter_map(|c| c.container_id.as_deref())
    .filter_map(|id| id.rsplit_once("://").map(|(_, id)| id.to_string()))
    .filter(|id| !id.is_empty())
    .collect()
}

/// The IPs a pod owns: none when it shares the node's network or has finished (its IP may
/// already belong to another pod).
fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return Vec::new();
    }
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Vec::new();
    }
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    ips
}

fn apply_node_pods(index: &mut Index, event: watcher::Event<Pod>, cap: usize) -> (usize, u64) {
    let mut rejected = 0;
    let entry = |index: &Index, pod: &Pod| {
        pod_meta(pod, &index.replicasets).map(|meta| LocalPod {
            meta: Arc::new(meta),
            containers: container_ids(pod),
        })
    };
    match event {
        watcher::Event::Init => index.local_init = Some(HashMap::new()),
        watcher::Event::InitApply(pod) => {
            if let Some(local) = entry(index, &pod)
                && let Some(init) = &mut index.local_init
            {
                if init.len() < cap {
                    init.insert(local.meta.uid.clone(), local);
                } else {
                    rejected += 1;
                }
            }
        }
        watcher::Event::InitDone => {
            if let Some(init) = index.local_init.take() {
                index.local = init;
                index.containers = index
                    .local
                    .values()
                    .flat_map(|p| p.containers.iter().map(|c| (c.clone(), p.meta.clone())))
                    .collect();
            }
        }
        watcher::Event::Apply(pod) => {
            if let Some(local) = entry(index, &pod) {
                let uid = local.meta.uid.clone();
                if let Some(old) = index.local.remove(&uid) {
                    for c in old.containers {
                        index.containers.remove(&c);
                    }
                }
                if index.local.len() < cap {
                    for c in &local.containers {
                        index.containers.insert(c.clone(), local.meta.clone());
                    }
                    index.local.insert(uid, local);
                } else {
                    rejected += 1;
                }
            }
        }
        watcher::Event::Delete(pod) => {
            if let Some(old) = pod
                .metadata
                .uid
                .as_ref()
                .and_then(|u| index.local.remove(u))
            {
                for c in old.containers {
                    index.containers.remove(&c);
                }
            }
        }
    }
    (index.local.len(), rejected)
}

/// Gives `ip` to `meta` unless a newer-listed owner holds it (during a relist, the later pod in
/// the list wins; live events always win: they are newer than anything held).
fn release_ips(pod_ips: &mut HashMap<IpAddr, Arc<PodMeta>>, uid: &str, ips: &[IpAddr]) {
    for ip in ips {
        if pod_ips.get(ip).is_some_and(|p| p.uid == uid) {
            pod_ips.remove(ip);
        }
    }
}

fn release_agent(
    agents: &mut HashMap<Arc<str>, (String, IpAddr)>,
    uid: &str,
    node: Option<&Arc<str>>,
) {
    if let Some(node) = node
        && agents.get(node).is_some_and(|(u, _)| u == uid)
    {
        agents.remove(node);
    }
}

fn apply_pods(index: &mut Index, event: watcher::Event<Pod>, cap: usize) -> (usize, u64) {
    let mut rejected = 0;
    match event {
        watcher::Event::Init => index.pods_init = Some(HashMap::new()),
        watcher::Event::InitApply(pod) => {
            if let Some(meta) = pod_meta(&pod, &index.replicasets)
                && let Some(init) = &mut index.pods_init
            {
                if init.len() < cap {
                    init.insert(meta.uid.clone(), ClusterPod::new(&pod, meta));
                } else {
                    rejected += 1;
                }
            }
        }
        watcher::Event::InitDone => {
            if let Some(init) = index.pods_init.take() {
                index.pods = init;
                index.pod_ips = index
                    .pods
                    .values()
                    .flat_map(|p| p.ips.iter().map(|ip| (*ip, p.meta.clone())))
                    .collect();
                index.agents = index
                    .pods
                    .values()
                    .filter_map(|p| Some((p.node.clone()?, (p.meta.uid.clone(), p.agent?))))
                    .collect();
            }
        }
        watcher::Event::Apply(pod) => {
            if let Some(meta) = pod_meta(&pod, &index.replicasets) {
                let uid = meta.uid.clone();
                if let Some(old) = index.pods.remove(&uid) {
                    release_ips(&mut index.pod_ips, &uid, &old.ips);
                    release_agent(&mut index.agents, &uid, old.node.as_ref());
                }
                if index.pods.len() < cap {
                    let pod = ClusterPod::new(&pod, meta);
                    for ip in &pod.ips {
                        index.pod_ips.insert(*ip, pod.meta.clone());
                    }
                    if let (Some(node), Some(ip)) = (&pod.node, pod.agent) {
                        index.agents.insert(node.clone(), (uid.clone(), ip));
                    }
                    index.pods.insert(uid, pod);
                } else {
                    rejected += 1;
                }
            }
        }
        watcher::Event::Delete(pod) => {
            if let Some(uid) = pod.metadata.uid.as_deref()
                && let Some(old) = index.pods.remove(uid)
            {
                release_ips(&mut index.pod_ips, uid, &old.ips);
                release_agent(&mut index.agents, uid, old.node.as_ref());
            }
        }
    }
    (index.pods.len(), rejected)
}

type ServiceEntry = (Arc<ServiceMeta>, Vec<IpAddr>);

fn service_entry(service: &Service) -> Option<((String, String), ServiceEntry)> {
    let namespace = service.metadata.namespace.clone()?;
    let name = service.metadata.name.clone()?;
    let spec = service.spec.as_ref()?;
    let mut ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    let meta = Arc::new(ServiceMeta {
        namespace: namespace.clone(),
        name: name.clone(),
    });
    Some(((namespace, name), (meta, ips)))
}

fn apply_services(index: &mut Index, event: watcher::Event<Service>, cap: usize) -> (usize, u64) {
    let mut rejected = 0;
    let remove = |index: &mut Index, key: &(String, String)| {
        if let Some((meta, ips)) = index.services.remove(key) {
            for ip in ips {
                if index
                    .service_ips
                    .get(&ip)
                    .is_some_and(|s| Arc::ptr_eq(s, &meta))
                {
                    index.service_ips.remove(&ip);
                }
            }
        }
    };
    match event {
        watcher::Event::Init => index.services_init = Some(HashMap::new()),
        watcher::Event::InitApply(service) => {
            if let Some((key, entry)) = service_entry(&service)
                && let Some(init) = &mut index.services_init
            {
                if init.len() < cap {
                    init.insert(key, entry);
                } else {
                    rejected += 1;
                }
            }
        }
        watcher::Event::InitDone => {
            if let Some(init) = index.services_init.take() {
                index.services = init;
                index.service_ips = index
                    .services
                    .values()
                    .flat_map(|(meta, ips)| ips.iter().map(|ip| (*ip, meta.clone())))
                    .collect();
            }
        }
        watcher::Event::Apply(service) => {
            if let Some((key, (meta, ips))) = service_entry(&service) {
                remove(index, &key);
                if index.services.len() < cap {
                    for ip in &ips {
                        index.service_ips.insert(*ip, meta.clone());
                    }
                    index.services.insert(key, (meta, ips));
                } else {
                    rejected += 1;
                }
            }
        }
        watcher::Event::Delete(service) => {
            if let Some((key, _)) = service_entry(&service) {
                remove(index, &key);
            }
        }
    }
    (index.services.len(), rejected)
}

fn replicaset_entry(rs: &ReplicaSet) -> Option<((String, String), Option<String>)> {
    let key = (rs.metadata.namespace.clone()?, rs.metadata.name.clone()?);
    let deployment = rs
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "Deployment" && o.controller == Some(true))
        .map(|o| o.name.clone());
    Some((key, deployment))
}

fn apply_replicasets(
    index: &mut Index,
    event: watcher::Event<ReplicaSet>,
    cap: usize,
) -> (usize, u64) {
    let mut rejected = 0;
    match event {
        watcher::Event::Init => index.replicasets_init = Some(HashMap::new()),
        watcher::Event::InitApply(rs) => {
            if let Some((key, deployment)) = replicaset_entry(&rs)
                && let Some(init) = &mut index.replicasets_init
            {
                if init.len() < cap {
                    init.insert(key, deployment);
                } else {
                    rejected += 1;
                }
            }
        }
        watcher::Event::InitDone => {
            if let Some(init) = index.replicasets_init.take() {
                index.replicasets = init;
            }
        }
        watcher::Event::Apply(rs) => {
            if let Some((key, deployment)) = replicaset_entry(&rs) {
                if index.replicasets.len() < cap || index.replicasets.contains_key(&key) {
                    index.replicasets.insert(key, deployment);
                } else {
                    rejected += 1;
                }
            }
        }
        watcher::Event::Delete(rs) => {
            if let Some((key, _)) = replicaset_entry(&rs) {
                index.replicasets.remove(&key);
            }
        }
    }
    (index.replicasets.len(), rejected)
}

#[cfg(test)]
#[path = "kube_tests.rs"]
mod tests;
