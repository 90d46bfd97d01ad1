//! OpenTelemetry semantic conventions: the attribute keys the agent writes and their typed
//! values. Protocols name their attributes with these; exporters convert them (Zipkin keeps its
//! own tag names for HTTP, OTLP sends them as they are).

use std::borrow::Cow;

/// A typed attribute value (OpenTelemetry's `AnyValue`, the scalar cases the agent writes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Str(Cow<'static, str>),
    Int(i64),
}

impl Value {
    /// The value as text (Zipkin tags are strings).
    pub fn to_text(&self) -> Cow<'_, str> {
        match self {
            Value::Str(s) => Cow::Borrowed(s),
            Value::Int(i) => Cow::Owned(i.to_string()),
        }
    }
}

/// One attribute: a semantic-convention key and its value.
pub type Attribute = (&'static str, Value);

/// Attribute keys (OpenTelemetry semantic conventions 1.26 and later).
pub mod key {
    pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
    pub const HTTP_ROUTE: &str = "http.route";
    pub const NETWORK_PROTOCOL_VERSION: &str = "network.protocol.version";
    pub const RPC_SYSTEM: &str = "rpc.system";
    pub const RPC_SERVICE: &str = "rpc.service";
    pub const RPC_METHOD: &str = "rpc.method";
    pub const RPC_GRPC_STATUS_CODE: &str = "rpc.grpc.status_code";
    pub const URL_PATH: &str = "url.path";
    pub const SERVER_ADDRESS: &str = "server.address";
    pub const SERVER_PORT: &str = "server.port";
    pub const CLIENT_ADDRESS: &str = "client.address";
    pub const CLIENT_PORT: &str = "client.port";
    pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
    pub const NETWORK_PEER_PORT: &str = "network.peer.port";
    pub const ERROR_TYPE: &str = "error.type";
    pub const SERVICE_NAME: &str = "service.name";
    pub const DB_SYSTEM_NAME: &str = "db.system.name";
    pub const DB_NAMESPACE: &str = "db.namespace";
    pub const DB_OPERATION_NAME: &str = "db.operation.name";
    pub const DB_COLLECTION_NAME: &str = "db.collection.name";
    pub const DB_QUERY_TEXT: &str = "db.query.text";
    pub const DB_RESPONSE_STATUS_CODE: &str = "db.response.status_code";
    pub const PROCESS_PID: &str = "process.pid";
    pub const PROCESS_EXECUTABLE_NAME: &str = "process.executable.name";
    pub const K8S_NAMESPACE_NAME: &str = "k8s.namespace.name";
    pub const K8S_POD_NAME: &str = "k8s.pod.name";
}
