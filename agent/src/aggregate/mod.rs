//! From exchanges to metrics and spans: per-service RED histograms and the service graph, with
//! bounded label cardinality; trace context and trace assembly.
pub mod admission;
pub mod context;
pub mod http;
pub mod series;
pub mod spans;
pub mod traces;

use std::sync::Arc;

use crate::metadata::kube::{Peer, PodMeta};

/// What the connection table knows of the two ends of a connection, shared by all its
/// exchanges: one reference count per exchange instead of one per name.
#[derive(Clone, Debug)]
pub struct ExchangeNames {
    /// The observing process's service name, and its executable.
    pub service: Arc<str>,
    pub executable: Arc<str>,
    /// The other end's service name when it is a process on this node.
    pub peer_service: Option<Arc<str>>,
    /// In Kubernetes: the observing process's pod, and the pod or Service at the other end.
    pub pod: Option<Arc<PodMeta>>,
    pub peer_k8s: Option<Peer>,
    /// The server's address as text, formatted once per connection (client side only).
    pub server_ip: Option<Arc<str>>,
}

impl ExchangeNames {
    /// Whether `self` holds exactly these names (the same allocations, compared by address).
    pub fn is(
        &self,
        service: &Arc<str>,
        executable: &Arc<str>,
        peer_service: Option<&Arc<str>>,
        pod: Option<&Arc<PodMeta>>,
        peer_k8s: Option<&Peer>,
        server_ip: Option<&Arc<str>>,
    ) -> bool {
        fn same<T: ?Sized>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
            match (a, b) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
        }
        let same_peer = match (self.peer_k8s.as_ref(), peer_k8s) {
            (None, None) => true,
            (Some(Peer::Pod(a)), Some(Peer::Pod(b))) => Arc::ptr_eq(a, b),
            (Some(Peer::Service(a)), Some(Peer::Service(b))) => Arc::ptr_eq(a, b),
            _ => false,
        };
        Arc::ptr_eq(&self.service, service)
            && Arc::ptr_eq(&self.executable, executable)
            && same(self.peer_service.as_ref(), peer_service)
            && same(self.pod.as_ref(), pod)
            && same(self.server_ip.as_ref(), server_ip)
            && same_peer
    }
}
