//! The agent's own span: what trace assembly produces and every exporter converts from
//! (`export::zipkin`, `export::otlp`). Ids are numbers, times are nanoseconds since the Unix
//! epoch, attributes are typed and named after the OpenTelemetry semantic conventions; no wire
//! format leaks in here.

use std::{borrow::Cow, net::SocketAddr, sync::Arc};

use crate::metadata::kube::PodMeta;

/// Which end of an RPC the span records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanKind {
    /// The caller's side: the request was written, the response read.
    Client,
    /// The callee's side: the request was read, the response written.
    Server,
}

pub use crate::semconv::Attribute;

/// The process that recorded the span (OpenTelemetry's resource): one per process, shared by
/// all its spans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    /// The resolved service name (see `metadata::service`).
    pub service: Arc<str>,
    pub pid: u32,
    pub executable: Arc<str>,
    /// In Kubernetes: the process's pod (namespace, name, workload).
    pub pod: Option<Arc<PodMeta>>,
}

/// The other end of the span's connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    /// Its service name when it is known (a process on this node, a pod, a Service).
    pub service: Option<Arc<str>>,
    pub addr: SocketAddr,
}

/// Whether the operation failed, as its protocol decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// `error_type`: what failed, low-cardinality (`500`, `no response`, a SQLSTATE...).
    Error {
        error_type: Cow<'static, str>,
    },
}

/// A finished span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_id: Option<u64>,
    pub kind: SpanKind,
    /// Low-cardinality operation name, lowercase (`get /users/*`).
    pub name: String,
    /// Wall-clock nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
    /// Not before `start_unix_ns`.
    pub end_unix_ns: u64,
    pub status: Status,
    pub resource: Resource,
    /// The observing process's own address on the connection.
    pub local: SocketAddr,
    pub remote: Remote,
    /// Protocol attributes (semantic-convention keys), in a stable order.
    pub attributes: Vec<Attribute>,
    /// B3: a SERVER span that shares its CLIENT parent's span id.
    pub shared: bool,
    /// B3 debug flag: force sampling downstream.
    pub debug: bool,
}

impl Span {
    pub fn duration_ns(&self) -> u64 {
        self.end_unix_ns.saturating_sub(self.start_unix_ns)
    }

    /// The value of attribute `key`, if the span has it.
    pub fn attribute(&self, key: &str) -> Option<&crate::semconv::Value> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}
