//! The metric and label names of the agent's contract, in one place.

pub const OPENED: &str = "meshtap_tcp_connections_opened_total";
pub const CLOSED: &str = "meshtap_tcp_connections_closed_total";
pub const FAILED: &str = "meshtap_tcp_connections_failed_total";
pub const ACTIVE: &str = "meshtap_tcp_active_connections";
pub const SENT: &str = "meshtap_tcp_sent_bytes_total";
pub const RECEIVED: &str = "meshtap_tcp_received_bytes_total";
pub const RETRANSMITS: &str = "meshtap_tcp_retransmits_total";
pub const CONNECT_DURATION_COUNT: &str = "meshtap_tcp_connect_duration_seconds_count";
pub const CONNECT_DURATION_BUCKET: &str = "meshtap_tcp_connect_duration_seconds_bucket";

pub const EVENTS: &str = "meshtap_events_total";
pub const EVENTS_LOST: &str = "meshtap_events_lost_total";
pub const CONNECTIONS_TRACKED: &str = "meshtap_connections_tracked";
pub const MAP_INSERT_FAILURES: &str = "meshtap_map_insert_failures_total";
pub const MAP_ENTRIES: &str = "meshtap_map_entries";

pub const ROLE_CLIENT: (&str, &str) = ("role", "client");
pub const ROLE_SERVER: (&str, &str) = ("role", "server");

// HTTP (OpenTelemetry semantic conventions), per observed side. Histograms: append `_count`,
// `_sum` or `_bucket` (see [`count`], [`sum`], [`bucket`]).
pub const HTTP_SERVER_DURATION: &str = "http_server_request_duration_seconds";
pub const HTTP_SERVER_REQUEST_BODY: &str = "http_server_request_body_size_bytes";
pub const HTTP_SERVER_RESPONSE_BODY: &str = "http_server_response_body_size_bytes";
pub const HTTP_CLIENT_DURATION: &str = "http_client_request_duration_seconds";
pub const HTTP_CLIENT_REQUEST_BODY: &str = "http_client_request_body_size_bytes";
pub const HTTP_CLIENT_RESPONSE_BODY: &str = "http_client_response_body_size_bytes";

// gRPC (OpenTelemetry RPC conventions), per observed side. Histograms, like the HTTP ones.
// Labels: `service_name`, `rpc_system` (`grpc`), `rpc_service` (`package.Service`), `rpc_method`,
// `rpc_grpc_status_code` (`0`..`16`); the client side also `server_address`, `server_port`.
pub const RPC_SERVER_DURATION: &str = "rpc_server_duration_seconds";
pub const RPC_CLIENT_DURATION: &str = "rpc_client_duration_seconds";

/// The `network_protocol_version` label of the HTTP families: `1.0`, `1.1` or `2`.
pub const NETWORK_PROTOCOL_VERSION: &str = "network_protocol_version";

// Databases and caches (OpenTelemetry database conventions; agent/src/protocol/db.rs), per
// observed side. Histograms, like the HTTP ones.
pub const DB_SERVER_DURATION: &str = "db_server_operation_duration_seconds";
pub const DB_CLIENT_DURATION: &str = "db_client_operation_duration_seconds";

// Service graph (Tempo's names).
pub const GRAPH_REQUESTS: &str = "traces_service_graph_request_total";
pub const GRAPH_FAILED: &str = "traces_service_graph_request_failed_total";
pub const GRAPH_SERVER_SECONDS: &str = "traces_service_graph_request_server_seconds";
pub const GRAPH_CLIENT_SECONDS: &str = "traces_service_graph_request_client_seconds";

// The agent's own L7 telemetry.
pub const PROTOCOL_DETECTED: &str = "meshtap_protocol_detected_total";
pub const PARSE_ERRORS: &str = "meshtap_parse_errors_total";
pub const EXCHANGES: &str = "meshtap_exchanges_total";
pub const SERIES_OVERFLOW: &str = "meshtap_metric_series_overflow_total";

/// The label value of folded series beyond `--max-series`.
pub const OVERFLOW: &str = "__overflow__";

/// `<histogram>_count`.
pub fn count(histogram: &str) -> String {
    format!("{histogram}_count")
}

/// `<histogram>_sum`.
pub fn sum(histogram: &str) -> String {
    format!("{histogram}_sum")
}

/// `<histogram>_bucket`.
pub fn bucket(histogram: &str) -> String {
    format!("{histogram}_bucket")
}
