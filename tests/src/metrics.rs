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
