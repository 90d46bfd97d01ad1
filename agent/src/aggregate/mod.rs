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
