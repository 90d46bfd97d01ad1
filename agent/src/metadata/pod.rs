//! What names a pod, a Service and the Kubernetes object at the other end of a connection, and
//! how a pod becomes metric labels: plain types, kept apart from the API watches (`kube`) so
//! that every stage (and the parsers' fuzz target) can use them.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};

use crate::metrics::encode_label;

/// The pod of the observing process, as OpenTelemetry's `k8s.*` resource attributes in
/// Prometheus form: `k8s_namespace_name`, `k8s_pod_name` and the workload's label
/// (`k8s_deployment_name`, ...). No labels at all outside Kubernetes.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct K8sLabels(pub Option<Arc<PodMeta>>);

impl EncodeLabelSet for K8sLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> std::fmt::Result {
        let Some(pod) = &self.0 else {
            return Ok(());
        };
        encode_label(encoder, "k8s_namespace_name", &pod.namespace)?;
        encode_label(encoder, "k8s_pod_name", &pod.name)?;
        if let Some((kind, name)) = &pod.workload {
            encode_label(encoder, kind.label(), name)?;
        }
        Ok(())
    }
}

/// Whether two pods are the same: the same allocation, or equal names (a series lookup compares
/// label sets made from the very names it is looked up with).
#[inline]
pub fn same_pod(a: Option<&PodMeta>, b: Option<&PodMeta>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => std::ptr::eq(a, b) || a == b,
        _ => false,
    }
}

/// The controller that runs a pod, as OpenTelemetry names it (`k8s.<kind>.name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
}

impl WorkloadKind {
    /// The Prometheus label (`k8s_deployment_name`, ...).
    pub fn label(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "k8s_deployment_name",
            WorkloadKind::ReplicaSet => "k8s_replicaset_name",
            WorkloadKind::StatefulSet => "k8s_statefulset_name",
            WorkloadKind::DaemonSet => "k8s_daemonset_name",
            WorkloadKind::Job => "k8s_job_name",
            WorkloadKind::CronJob => "k8s_cronjob_name",
        }
    }

    /// The span tag (`k8s.deployment.name`, ...).
    pub fn tag(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "k8s.deployment.name",
            WorkloadKind::ReplicaSet => "k8s.replicaset.name",
            WorkloadKind::StatefulSet => "k8s.statefulset.name",
            WorkloadKind::DaemonSet => "k8s.daemonset.name",
            WorkloadKind::Job => "k8s.job.name",
            WorkloadKind::CronJob => "k8s.cronjob.name",
        }
    }
}

/// What names a pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub workload: Option<(WorkloadKind, String)>,
}

impl PodMeta {
    /// The default service name: the workload's name, or the pod's for a bare pod.
    pub fn service_name(&self) -> &str {
        self.workload
            .as_ref()
            .map(|(_, name)| name.as_str())
            .unwrap_or(&self.name)
    }
}

/// A Service, named through its ClusterIP.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceMeta {
    pub namespace: String,
    pub name: String,
}

/// The Kubernetes object at the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    Pod(Arc<PodMeta>),
    Service(Arc<ServiceMeta>),
}

impl Peer {
    pub fn name(&self) -> &str {
        match self {
            Peer::Pod(p) => p.service_name(),
            Peer::Service(s) => &s.name,
        }
    }

    pub fn namespace(&self) -> &str {
        match self {
            Peer::Pod(p) => &p.namespace,
            Peer::Service(s) => &s.namespace,
        }
    }
}
