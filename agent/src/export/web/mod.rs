//! The built-in web page and the JSON API behind it, on the agent's endpoint.
//!
//! `/` is one page (`assets/`, compiled into the binary: no CDN, no request outside the agent)
//! that shows the node's service map, each service's requests by protocol and operation, the
//! traces of the built-in store (through the Zipkin API under `/api/v2`) and the agent's health.
//! Its data comes from `/api/v1/`:
//!
//! - `graph?window=1|5|15`: the service-graph edges of the last minutes
//!   (`aggregate::graph::EdgeTable`) and the nodes they join;
//! - `services?window=`: per service and side, the requests of every protocol
//!   (`aggregate::operations`);
//! - `operations?service=&window=`: one service's requests by protocol, side and operation;
//! - `health`: the agent's own counters of what it lost, turned away or dropped.
//!
//! Every answer is bounded (`limit`, at most [`MAX_LIMIT`] rows, with `truncated` set when rows
//! were left out).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;

use crate::{
    aggregate::{graph::EdgeTable, operations::OperationTable},
    conntrack::metrics::L4Table,
    metrics::{
        Registry,
        window::{Summary, WINDOWS_MIN},
    },
    protocol::Side,
};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Rows a list answers by default, and at most.
pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 5000;
/// How long one reading of the health counters is served again.
const HEALTH_CACHE: Duration = Duration::from_secs(2);

/// The families `/api/v1/health` reports, as the exposition names them.
pub const HEALTH_FAMILIES: &[&str] = &[
    "meshtap_programs_attached",
    "meshtap_events_lost_total",
    "meshtap_decode_errors_total",
    "meshtap_ebpf_program_misses_total",
    "meshtap_map_insert_failures_total",
    "meshtap_connections_tracked",
    "meshtap_close_waits_cut_short_total",
    "meshtap_parse_errors_total",
    "meshtap_exchanges_unpaired_total",
    "meshtap_metric_series_overflow_total",
    "meshtap_window_rejected_total",
    "meshtap_spans_unlinked_total",
    "meshtap_spans_dropped_total",
    "meshtap_otlp_spans_dropped_total",
    "meshtap_trace_store_spans",
    "meshtap_trace_store_traces",
    "meshtap_trace_store_rejected_spans_total",
    "meshtap_trace_store_evicted_spans_total",
    "meshtap_trace_store_declined_spans_total",
    "meshtap_endpoint_unauthorized_total",
    "meshtap_endpoint_tls_handshake_failures_total",
    "meshtap_endpoint_reloads_total",
];

/// The last reading of the health counters, and when it was taken.
type HealthReading = (Instant, Arc<Health>);

#[derive(Clone)]
pub struct WebState {
    pub edges: EdgeTable,
    /// TCP connections per edge: the map draws those without requests apart.
    pub tcp: Option<L4Table>,
    pub operations: OperationTable,
    pub registry: Arc<Registry>,
    /// The monotonic clock the exchanges' times are on (the app owns the clock).
    pub now_ns: fn() -> u64,
    health: Arc<Mutex<Option<HealthReading>>>,
}

impl WebState {
    pub fn new(
        edges: EdgeTable,
        operations: OperationTable,
        registry: Arc<Registry>,
        now_ns: fn() -> u64,
    ) -> Self {
        WebState {
            edges,
            tcp: None,
            operations,
            registry,
            now_ns,
            health: Arc::new(Mutex::new(None)),
        }
    }
}

impl WebState {
    pub fn with_tcp(self, tcp: L4Table) -> Self {
        WebState {
            tcp: Some(tcp),
            ..self
        }
    }
}

pub fn router(state: WebState) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/api/v1/graph", get(graph))
        .route("/api/v1/services", get(services))
        .route("/api/v1/operations", get(operations))
        .route("/api/v1/health", get(health))
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Nothing but the agent: scripts, styles, images and fetches from this origin only.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self'",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{name} must be {expected}: {value:?}")]
    Malformed {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("missing required parameter {0}")]
    Missing(&'static str),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, format!("{self}\n")).into_response()
    }
}

type Params = Query<HashMap<String, String>>;

/// `window`: 1, 5 or 15 minutes (default 5).
fn window(params: &HashMap<String, String>) -> Result<u64, ApiError> {
    match params.get("window").map(|v| v.trim()) {
        None | Some("") => Ok(5),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|m| WINDOWS_MIN.contains(m))
            .ok_or(ApiError::Malformed {
                name: "window",
                value: v.to_string(),
                expected: "1, 5 or 15 (minutes)",
            }),
    }
}

/// `limit`: 1 to [`MAX_LIMIT`] (default [`DEFAULT_LIMIT`]).
fn limit(params: &HashMap<String, String>) -> Result<usize, ApiError> {
    match params.get("limit").map(|v| v.trim()) {
        None | Some("") => Ok(DEFAULT_LIMIT),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or(ApiError::Malformed {
                name: "limit",
                value: v.to_string(),
                expected: "an integer from 1 to 5000",
            }),
    }
}

/// A summary with its rate over the window's seconds.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Red {
    pub requests: u64,
    pub failed: u64,
    /// Requests per second over the window.
    pub rate: f64,
    /// `failed / requests`, 0 to 1.
    pub error_ratio: f64,
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

impl Red {
    fn of(s: &Summary, seconds: f64) -> Self {
        Red {
            requests: s.requests,
            failed: s.failed,
            rate: s.requests as f64 / seconds,
            error_ratio: if s.requests == 0 {
                0.0
            } else {
                s.failed as f64 / s.requests as f64
            },
            p50_seconds: s.p50_seconds,
            p99_seconds: s.p99_seconds,
        }
    }
}

#[derive(Serialize)]
struct Edge {
    client: String,
    server: String,
    /// `""`: both ends are processes on this node or the other end is expected to be one;
    /// `virtual_node`: the other end is outside the node.
    connection_type: &'static str,
    #[serde(flatten)]
    red: Red,
}

#[derive(Serialize)]
struct Node {
    name: String,
    /// Requests it served (`null`: none in the window).
    server: Option<Red>,
    /// Requests it sent.
    client: Option<Red>,
}

/// A TCP edge without requests between its two ends in the window (nothing parsed on it).
#[derive(Serialize)]
struct TcpEdge {
    client: String,
    server: String,
    server_port: String,
    /// Connections opened, as the client counted them (the server when the client is not on
    /// this node).
    connections: u64,
    /// Connects that failed.
    failed: u64,
    /// Connections per second.
    rate: f64,
    connect_p50_seconds: Option<f64>,
    connect_p99_seconds: Option<f64>,
}

#[derive(Serialize)]
struct Graph {
    window_minutes: u64,
    /// Seconds the window covers (shorter while the agent is younger than the window).
    seconds: f64,
    nodes: Vec<Node>,
    edges: Vec<Edge>,
    tcp_edges: Vec<TcpEdge>,
    /// Edges left out beyond `limit` (the busiest are kept).
    truncated: bool,
}

/// The TCP edges of the window that carried no request the service graph counted.
fn tcp_edges(tcp: &L4Table, now: u64, minutes: u64, l7: &[Edge]) -> Vec<TcpEdge> {
    let table = tcp.lock().unwrap_or_else(|e| e.into_inner());
    let (_, seconds) = table.span(now, minutes);
    let by_role = table.grouped(now, minutes, |k| {
        let l7_pair = l7
            .iter()
            .any(|e| e.client == k.client && e.server == k.server);
        (!l7_pair).then(|| {
            (
                k.client.clone(),
                k.server.clone(),
                k.server_port.clone(),
                k.role == "client",
            )
        })
    });
    drop(table);
    let mut edges: BTreeMap<(String, String, String), (bool, Summary)> = BTreeMap::new();
    for ((client, server, port, client_role), s) in by_role {
        let entry = edges.entry((client, server, port));
        // Both ends on this node count each connection once per role: the client's count wins.
        match entry {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert((client_role, s));
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                if client_role {
                    o.insert((client_role, s));
                }
            }
        }
    }
    edges
        .into_iter()
        .map(|((client, server, server_port), (_, s))| TcpEdge {
            client,
            server,
            server_port,
            connections: s.requests,
            failed: s.failed,
            rate: s.requests as f64 / seconds,
            connect_p50_seconds: s.p50_seconds,
            connect_p99_seconds: s.p99_seconds,
        })
        .collect()
}

/// Sorts by requests (busiest first, then by name) and keeps `limit`.
fn busiest<T>(rows: &mut Vec<T>, limit: usize, key: impl Fn(&T) -> (u64, String)) -> bool {
    rows.sort_by_cached_key(|r| {
        let (n, name) = key(r);
        (std::cmp::Reverse(n), name)
    });
    let truncated = rows.len() > limit;
    rows.truncate(limit);
    truncated
}

async fn graph(State(state): State<WebState>, Query(params): Params) -> Result<Response, ApiError> {
    let minutes = window(&params)?;
    let limit = limit(&params)?;
    let now = (state.now_ns)();
    let table = state.edges.lock().unwrap_or_else(|e| e.into_inner());
    let (_, seconds) = table.span(now, minutes);
    let mut edges: Vec<Edge> = table
        .summaries(now, minutes)
        .into_iter()
        .map(|(k, s)| Edge {
            client: k.client.to_string(),
            server: k.server.to_string(),
            connection_type: k.connection_type,
            red: Red::of(&s, seconds),
        })
        .collect();
    let served = table.grouped(now, minutes, |k| Some(k.server.clone()));
    let sent = table.grouped(now, minutes, |k| Some(k.client.clone()));
    drop(table);
    let mut truncated = busiest(&mut edges, limit, |e| {
        (e.red.requests, format!("{}\u{0}{}", e.client, e.server))
    });
    let mut tcp = match &state.tcp {
        Some(table) => tcp_edges(table, now, minutes, &edges),
        None => Vec::new(),
    };
    truncated |= busiest(&mut tcp, limit, |e| {
        (
            e.connections,
            format!("{}\u{0}{}\u{0}{}", e.client, e.server, e.server_port),
        )
    });
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let ends = edges
        .iter()
        .map(|e| (&e.client, &e.server))
        .chain(tcp.iter().map(|e| (&e.client, &e.server)));
    for (client, server) in ends {
        for name in [client, server] {
            nodes.entry(name.clone()).or_insert_with(|| Node {
                name: name.clone(),
                server: None,
                client: None,
            });
        }
    }
    for (name, s) in served {
        if let Some(n) = nodes.get_mut(&*name) {
            n.server = Some(Red::of(&s, seconds));
        }
    }
    for (name, s) in sent {
        if let Some(n) = nodes.get_mut(&*name) {
            n.client = Some(Red::of(&s, seconds));
        }
    }
    Ok(Json(Graph {
        window_minutes: minutes,
        seconds,
        nodes: nodes.into_values().collect(),
        edges,
        tcp_edges: tcp,
        truncated,
    })
    .into_response())
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Client => "client",
        Side::Server => "server",
    }
}

#[derive(Serialize)]
struct ServiceRow {
    name: String,
    /// Protocols it served or called in the window, sorted.
    protocols: Vec<&'static str>,
    server: Option<Red>,
    client: Option<Red>,
}

#[derive(Serialize)]
struct Services {
    window_minutes: u64,
    seconds: f64,
    services: Vec<ServiceRow>,
    truncated: bool,
}

async fn services(
    State(state): State<WebState>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let minutes = window(&params)?;
    let limit = limit(&params)?;
    let now = (state.now_ns)();
    let table = state.operations.lock().unwrap_or_else(|e| e.into_inner());
    let (_, seconds) = table.span(now, minutes);
    let by_side = table.grouped(now, minutes, |k| Some((k.service.clone(), k.side)));
    let protocols = table.grouped(now, minutes, |k| Some((k.service.clone(), k.protocol)));
    drop(table);
    let mut rows: BTreeMap<Arc<str>, ServiceRow> = BTreeMap::new();
    let row = |rows: &mut BTreeMap<Arc<str>, ServiceRow>, name: &Arc<str>| {
        rows.entry(name.clone()).or_insert_with(|| ServiceRow {
            name: name.to_string(),
            protocols: Vec::new(),
            server: None,
            client: None,
        });
    };
    for ((name, side), s) in by_side {
        row(&mut rows, &name);
        if let Some(r) = rows.get_mut(&name) {
            match side {
                Side::Server => r.server = Some(Red::of(&s, seconds)),
                Side::Client => r.client = Some(Red::of(&s, seconds)),
            }
        }
    }
    for ((name, protocol), _) in protocols {
        if let Some(r) = rows.get_mut(&name) {
            r.protocols.push(protocol);
        }
    }
    let mut services: Vec<ServiceRow> = rows.into_values().collect();
    for s in &mut services {
        s.protocols.sort_unstable();
    }
    let truncated = busiest(&mut services, limit, |s| {
        let n = s.server.as_ref().map_or(0, |r| r.requests)
            + s.client.as_ref().map_or(0, |r| r.requests);
        (n, s.name.clone())
    });
    Ok(Json(Services {
        window_minutes: minutes,
        seconds,
        services,
        truncated,
    })
    .into_response())
}

#[derive(Serialize)]
struct OperationRow {
    protocol: &'static str,
    side: &'static str,
    operation: String,
    #[serde(flatten)]
    red: Red,
}

#[derive(Serialize)]
struct Operations {
    service: String,
    window_minutes: u64,
    seconds: f64,
    operations: Vec<OperationRow>,
    truncated: bool,
}

async fn operations(
    State(state): State<WebState>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let minutes = window(&params)?;
    let limit = limit(&params)?;
    let service = params
        .get("service")
        .filter(|s| !s.is_empty())
        .ok_or(ApiError::Missing("service"))?
        .clone();
    let now = (state.now_ns)();
    let table = state.operations.lock().unwrap_or_else(|e| e.into_inner());
    let (_, seconds) = table.span(now, minutes);
    let rows = table.grouped(now, minutes, |k| {
        (*k.service == *service).then(|| (k.protocol, k.side, k.operation.clone()))
    });
    drop(table);
    let mut operations: Vec<OperationRow> = rows
        .into_iter()
        .map(|((protocol, side, operation), s)| OperationRow {
            protocol,
            side: side_name(side),
            operation: operation.into_string(),
            red: Red::of(&s, seconds),
        })
        .collect();
    let truncated = busiest(&mut operations, limit, |o| {
        (
            o.red.requests,
            format!("{}\u{0}{}\u{0}{}", o.protocol, o.side, o.operation),
        )
    });
    Ok(Json(Operations {
        service,
        window_minutes: minutes,
        seconds,
        operations,
        truncated,
    })
    .into_response())
}

#[derive(Serialize, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub samples: Vec<Sample>,
}

#[derive(Serialize, Debug)]
pub struct Health {
    pub families: Vec<Family>,
}

async fn health(State(state): State<WebState>) -> Response {
    let mut cache = state.health.lock().unwrap_or_else(|e| e.into_inner());
    let health = match &*cache {
        Some((at, h)) if at.elapsed() < HEALTH_CACHE => h.clone(),
        _ => {
            let h = Arc::new(health_of(&state.registry.encode()));
            *cache = Some((Instant::now(), h.clone()));
            h
        }
    };
    drop(cache);
    Json(&*health).into_response()
}

/// The [`HEALTH_FAMILIES`] samples of an exposition (OpenMetrics or text format).
pub fn health_of(exposition: &str) -> Health {
    let mut families: Vec<Family> = HEALTH_FAMILIES
        .iter()
        .map(|&name| Family {
            name,
            samples: Vec::new(),
        })
        .collect();
    for line in exposition.lines() {
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let Some(family) = families.iter_mut().find(|f| f.name == name) else {
            continue;
        };
        let Some((labels, rest)) = parse_labels(&line[name_end..]) else {
            continue;
        };
        let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        family.samples.push(Sample { labels, value });
    }
    Health { families }
}

/// `{a="x",b="y\"z"} rest` -> the labels and `rest`; no braces -> no labels.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let Some(mut rest) = s.strip_prefix('{') else {
        return Some((labels, s));
    };
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.insert(key.to_string(), value);
        rest = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aggregate::{graph::EdgeKey, operations::OperationKey},
        conntrack::metrics::EdgeLabels,
        metrics::{EdgeNamespaces, window::Windowed},
    };
    use axum::{body::Body, http::Request};
    use prometheus_client::metrics::counter::Counter;
    use tower::ServiceExt as _;

    const S: u64 = 1_000_000_000;
    /// The clock of these tests: 100 s after boot.
    fn now() -> u64 {
        100 * S
    }

    fn state() -> WebState {
        let buckets = [0.01, 0.1, 1.0];
        let mut edges = Windowed::new(&buckets, 10, Counter::default());
        let edge = |c: &str, s: &str, t| EdgeKey {
            client: c.into(),
            server: s.into(),
            connection_type: t,
        };
        for i in 0..10 {
            edges.record(edge("front", "api", ""), 90 * S, Some(0.05), i < 2);
        }
        edges.record(
            edge("api", "10.0.0.9", "virtual_node"),
            95 * S,
            Some(0.5),
            false,
        );
        let mut ops = Windowed::new(&buckets, 10, Counter::default());
        let op = |protocol, side, operation: &str| OperationKey {
            service: "api".into(),
            protocol,
            side,
            operation: operation.into(),
        };
        for _ in 0..3 {
            ops.record(
                op("http", Side::Server, "get /users/*"),
                90 * S,
                Some(0.05),
                false,
            );
        }
        ops.record(
            op("postgresql", Side::Client, "SELECT users"),
            91 * S,
            Some(0.005),
            true,
        );
        // A protocol the page has never heard of shows up all the same.
        ops.record(
            op("grpc", Side::Server, "pkg.Svc/Call"),
            92 * S,
            Some(0.05),
            false,
        );
        let mut tcp = Windowed::new(&buckets, 10, Counter::default());
        let l4 = |client: &str, server: &str, role: &str| EdgeLabels {
            client: client.into(),
            server: server.into(),
            server_port: "6000".into(),
            role: role.into(),
            namespaces: EdgeNamespaces::default(),
        };
        // Seen from both ends: counted once. And the edge with requests is not TCP-only.
        for role in ["client", "server"] {
            tcp.record(l4("batch", "store", role), 93 * S, None, false);
            tcp.record(l4("front", "api", role), 93 * S, None, false);
        }
        WebState::new(
            Arc::new(Mutex::new(edges)),
            Arc::new(Mutex::new(ops)),
            Arc::new(Registry::default()),
            now,
        )
        .with_tcp(Arc::new(Mutex::new(tcp)))
    }

    async fn get(uri: &str) -> (StatusCode, serde_json::Value) {
        let response = router(state())
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
        (status, value)
    }

    #[tokio::test]
    async fn graph_edges_nodes_and_tcp_only_edges() {
        let (status, g) = get("/api/v1/graph?window=1").await;
        assert_eq!(status, StatusCode::OK);
        // The agent's first record was at 90 s: the window covers 10 s of it.
        assert_eq!(g["seconds"], 10.0);
        let edges = g["edges"].as_array().unwrap();
        assert_eq!(edges.len(), 2);
        assert_eq!(
            (
                &edges[0]["client"],
                &edges[0]["server"],
                &edges[0]["requests"],
                &edges[0]["failed"]
            ),
            (&"front".into(), &"api".into(), &10.into(), &2.into())
        );
        assert_eq!(edges[0]["rate"], 1.0);
        assert_eq!(edges[0]["error_ratio"], 0.2);
        assert_eq!(edges[1]["connection_type"], "virtual_node");
        let tcp = g["tcp_edges"].as_array().unwrap();
        assert_eq!(tcp.len(), 1, "{tcp:?}");
        assert_eq!(
            (&tcp[0]["client"], &tcp[0]["connections"]),
            (&"batch".into(), &1.into())
        );
        let nodes: Vec<&str> = g["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap())
            .collect();
        assert_eq!(nodes, ["10.0.0.9", "api", "batch", "front", "store"]);
        let api = &g["nodes"][1];
        assert_eq!(
            (&api["server"]["requests"], &api["client"]["requests"]),
            (&10.into(), &1.into())
        );
        let (_, g) = get("/api/v1/graph?window=15&limit=1").await;
        assert_eq!(
            (g["edges"].as_array().unwrap().len(), &g["truncated"]),
            (1, &true.into())
        );
    }

    #[tokio::test]
    async fn services_and_operations_of_every_protocol() {
        let (status, s) = get("/api/v1/services?window=5").await;
        assert_eq!(status, StatusCode::OK);
        let api = &s["services"][0];
        assert_eq!(api["name"], "api");
        assert_eq!(
            api["protocols"],
            serde_json::json!(["grpc", "http", "postgresql"])
        );
        assert_eq!(
            (&api["server"]["requests"], &api["client"]["failed"]),
            (&4.into(), &1.into())
        );
        let (_, o) = get("/api/v1/operations?service=api").await;
        let ops: Vec<(String, u64)> = o["operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    format!(
                        "{} {} {}",
                        o["protocol"].as_str().unwrap(),
                        o["side"].as_str().unwrap(),
                        o["operation"].as_str().unwrap()
                    ),
                    o["requests"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            ops,
            [
                ("http server get /users/*".to_string(), 3),
                ("grpc server pkg.Svc/Call".to_string(), 1),
                ("postgresql client SELECT users".to_string(), 1),
            ]
        );
        assert_eq!(
            get("/api/v1/operations?service=nobody").await.1["operations"],
            serde_json::json!([])
        );
        assert_eq!(get("/api/v1/operations").await.0, StatusCode::BAD_REQUEST);
        assert_eq!(
            get("/api/v1/graph?window=7").await.0,
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_with_their_policy() {
        for (path, kind) in [
            ("/", "text/html"),
            ("/ui/app.js", "text/javascript"),
            ("/ui/style.css", "text/css"),
        ] {
            let response = router(state())
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let header = |h| {
                response
                    .headers()
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            assert!(header(header::CONTENT_TYPE).starts_with(kind), "{path}");
            assert!(
                header(header::CONTENT_SECURITY_POLICY).starts_with("default-src 'self'"),
                "{path}"
            );
        }
        // Nothing on the page names a host: every URL is relative to the agent (the SVG
        // namespace is a name, not a request).
        for asset in [INDEX_HTML, APP_JS, STYLE_CSS] {
            let asset = asset.replace("\"http://www.w3.org/2000/svg\"", "");
            assert!(
                !asset.contains("http://")
                    && !asset.contains("https://")
                    && !asset.contains("//cdn")
            );
        }
    }

    #[test]
    fn health_picks_its_families_and_parses_labels() {
        let text = concat!(
            "# TYPE meshtap_events_lost counter\n",
            "meshtap_events_lost_total{stage=\"kernel\",kind=\"data\"} 3\n",
            "meshtap_events_lost_total{stage=\"userspace_queue\",kind=\"data\"} 0\n",
            "meshtap_programs_attached 25\n",
            "meshtap_metric_series_overflow_total{metric=\"a\\\"b\\nc\"} 1\n",
            "http_server_request_duration_seconds_count{service_name=\"x\"} 9\n",
            "# EOF\n",
        );
        let h = health_of(text);
        let get = |name: &str| {
            h.families
                .iter()
                .find(|f| f.name == name)
                .map(|f| &f.samples)
                .unwrap()
        };
        let lost = get("meshtap_events_lost_total");
        assert_eq!(lost.len(), 2);
        assert_eq!(lost[0].labels["stage"], "kernel");
        assert_eq!(lost[0].value, 3.0);
        assert_eq!(get("meshtap_programs_attached")[0].value, 25.0);
        assert!(get("meshtap_programs_attached")[0].labels.is_empty());
        assert_eq!(
            get("meshtap_metric_series_overflow_total")[0].labels["metric"],
            "a\"b\nc"
        );
        assert!(h.families.iter().all(|f| !f.name.starts_with("http_")));
    }

    #[test]
    fn hostile_label_text_is_skipped() {
        for line in [
            "meshtap_programs_attached{a=\"x 1",
            "meshtap_programs_attached{a",
            "meshtap_programs_attached{a=\"\\",
            "meshtap_programs_attached",
            "meshtap_programs_attached x",
        ] {
            let h = health_of(line);
            assert!(h.families.iter().all(|f| f.samples.is_empty()), "{line}");
        }
    }

    #[test]
    fn parameters_are_bounded() {
        let p = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(window(&HashMap::new()).unwrap(), 5);
        assert_eq!(window(&p("window", "15")).unwrap(), 15);
        assert!(window(&p("window", "2")).is_err());
        assert!(limit(&p("limit", "0")).is_err());
        assert!(limit(&p("limit", "5001")).is_err());
        assert_eq!(limit(&p("limit", "7")).unwrap(), 7);
    }
}
